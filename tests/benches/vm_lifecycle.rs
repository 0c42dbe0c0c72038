//! `cargo bench -p clawpen-tests --bench vm_lifecycle`: boot and reset times of
//! the test guest through the real supervisor API, min/median/max of 5, with
//! the reset/boot ratio measured in the same run. Prints a table.

use std::time::{Duration, Instant};

use clawpen_tests::{temp_home, Up};
use reqwest::Method;

const RUNS: usize = 5;

async fn timed(up: &Up, path: &str) -> Duration {
    let started = Instant::now();
    let resp = up
        .request(Method::POST, path)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    let elapsed = started.elapsed();
    let info: clawpen_api::VmInfo = resp.json().await.expect("json");
    assert_eq!(info.state.label(), "Running", "{path}");
    elapsed
}

fn stats(samples: &mut [Duration]) -> (f64, f64, f64) {
    samples.sort();
    (
        samples[0].as_secs_f64(),
        samples[samples.len() / 2].as_secs_f64(),
        samples[samples.len() - 1].as_secs_f64(),
    )
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let home = temp_home();
    let up = Up::start(home.path(), &["--no-start"]).expect("clawpen up");
    let mut boots = Vec::new();
    for _ in 0..RUNS {
        boots.push(timed(&up, "/vms/demo/start").await);
        let resp = up
            .request(Method::POST, "/vms/demo/stop")
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    timed(&up, "/vms/demo/start").await;
    let mut resets = Vec::new();
    for _ in 0..RUNS {
        resets.push(timed(&up, "/vms/demo/reset").await);
    }
    let boot = stats(&mut boots);
    let reset = stats(&mut resets);
    println!();
    println!(
        "test guest, 256 MiB, 1 vCPU, TCG; API call until the guest's ready marker; {RUNS} runs"
    );
    println!(
        "| {:<18} | {:>8} | {:>8} | {:>8} |",
        "operation", "min s", "median s", "max s"
    );
    println!("|{:-<20}|{:->10}|{:->10}|{:->10}|", "", "", "", "");
    for (name, (min, med, max)) in [("cold boot", boot), ("cold reset", reset)] {
        println!("| {name:<18} | {min:>8.2} | {med:>8.2} | {max:>8.2} |");
    }
    println!(
        "| {:<18} | {:>8.2} | {:>8.2} | {:>8.2} |",
        "reset / boot",
        reset.0 / boot.0,
        reset.1 / boot.1,
        reset.2 / boot.2
    );
}
