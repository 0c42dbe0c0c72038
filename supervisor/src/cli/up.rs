//! `clawpen up`: everything on one host, on embedded defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clawpen_vmimage::Progress;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::paths::StateDir;
use crate::supervisor::{Supervisor, SupervisorConfig};
use crate::vm::backend::qemu::accel::Accel;

/// Where `cargo xtask console` writes the console's browser assets.
const DEFAULT_SITE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/site");

#[derive(Args)]
pub struct UpArgs {
    /// Supervisor API + console address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Inference service address.
    #[arg(long, default_value = "127.0.0.1:7080")]
    inference_listen: SocketAddr,
    /// Image store (default: STATE_DIR/images).
    #[arg(long, env = "CLAWPEN_IMAGES")]
    images: Option<PathBuf>,
    /// The console's built browser assets (`cargo xtask console`).
    #[arg(long, env = "CLAWPEN_SITE_DIR", default_value = DEFAULT_SITE_DIR)]
    site_dir: PathBuf,
    /// Accelerator: kvm or tcg (default: probe once, remember per host kernel).
    #[arg(long, env = "CLAWPEN_ACCEL")]
    accel: Option<Accel>,
    #[command(flatten)]
    engine: super::inference::EngineArgs,
    /// Generate on another machine's inference service (`clawpen inference
    /// serve --listen ADDR` there), e.g. `http://mac-studio.local:7080`,
    /// instead of in this process. Guests keep their address and keys.
    #[arg(long, env = "CLAWPEN_INFERENCE_URL", conflicts_with = "upstreams")]
    inference_url: Option<String>,
    /// The remote's `--api-key`.
    #[arg(long, env = "CLAWPEN_REMOTE_INFERENCE_KEY", hide_env_values = true)]
    inference_key: Option<String>,
    /// A folder under which VMs may be given shares (repeatable; none: no
    /// sharing at all).
    #[arg(
        long = "share-root",
        env = "CLAWPEN_SHARE_ROOTS",
        value_delimiter = ':'
    )]
    share_roots: Vec<PathBuf>,
    /// Do not create the demo VM.
    #[arg(long)]
    no_demo: bool,
    /// Do not boot any VM (they keep their recorded state).
    #[arg(long)]
    no_start: bool,
    /// Serve the console and API over HTTPS with a self-signed certificate
    /// (kept in STATE_DIR/tls; its fingerprint is printed). Needed for any
    /// `--listen` address other than loopback.
    #[arg(long)]
    tls: bool,
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

pub async fn run(home: Option<PathBuf>, args: UpArgs) -> Result<(), CliError> {
    if !args.listen.ip().is_loopback() && !args.tls {
        return Err(CliError::BadInput(format!(
            "--listen {}: serving the console beyond this machine needs --tls",
            args.listen
        )));
    }
    if crate::egress::FORWARD_IPS.contains(&args.listen.ip()) {
        return Err(CliError::BadInput(format!(
            "--listen {}: forwards into guests listen there (the console's cookie \
             must never reach them); serve the console on another address",
            args.listen
        )));
    }
    let state_dir = StateDir::resolve(home).context("state directory")?;
    let mut engine_config = args.engine.config(&state_dir);
    let remote = super::remote::Remote::from_args(
        args.inference_url.as_deref(),
        args.inference_key,
        &engine_config,
    )
    .map_err(remote_error)?;
    if let Some(remote) = &remote {
        let models = remote.check().await.map_err(remote_error)?;
        remote.apply(&mut engine_config, &models);
        tracing::info!(url = %remote.base, ?models, "inference from a remote service");
    }
    if !args.site_dir.join("pkg").is_dir() {
        tracing::warn!(
            site_dir = %args.site_dir.display(),
            "console assets missing (run `cargo xtask console`): the page will render but not update live"
        );
    }
    let bar = progress_bar();
    let config = SupervisorConfig {
        images_dir: args.images.unwrap_or_else(|| state_dir.images()),
        state_dir,
        site_dir: args.site_dir,
        accel: args.accel,
        share_roots: args.share_roots.clone(),
    };
    let supervisor = Supervisor::open(config, &|p: &Progress| {
        bar.set_message(format!("building test guest: {}", p.step));
        bar.set_length(p.total.unwrap_or(0));
        bar.set_position(p.done);
        bar.tick();
    })
    .await
    .context("starting the supervisor")?;
    bar.finish_and_clear();

    let api_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let inference_listener = tokio::net::TcpListener::bind(args.inference_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.inference_listen))?;
    // Guests reach the inference service at their gateway's fixed address,
    // which the gateway relays to a loopback listener of their own: there
    // every request needs a VM's key, so each one is attributed to its VM.
    let guest_listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot listen for guests' inference requests")?;
    let api_addr = api_listener.local_addr().context("local address")?;
    let inference_addr = inference_listener.local_addr().context("local address")?;
    supervisor
        .egress
        .set_inference_addr(guest_listener.local_addr().context("local address")?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    supervisor
        .vms
        .set_served_model(crate::vm::guest_config::ServedModel::of(&engine_config));
    let service = clawpen_inference::Inference::new(engine_config)
        .context("inference service")?
        .with_keys(supervisor.inference_keys.clone());
    service.check_engines().await.context("inference service")?;
    crate::inference_relay::spawn(
        &service,
        supervisor.events.clone(),
        supervisor.recent_inference.clone(),
    );
    let until_stopped = |mut stop: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    let guests = tokio::spawn(
        service
            .for_guests()
            .serve(guest_listener, until_stopped(stop_rx.clone())),
    );
    let inference = tokio::spawn(service.serve(inference_listener, until_stopped(stop_rx.clone())));
    #[cfg(target_os = "macos")]
    if args.tls {
        return Err(CliError::BadInput(
            "--tls is not in macOS builds yet (its TLS stack's C build is not checked for macOS); \
             put a TLS proxy in front of a loopback --listen"
                .into(),
        ));
    }
    #[cfg(not(target_os = "macos"))]
    let (url, local_url, server) = if args.tls {
        let identity =
            crate::tls::identity(&supervisor.state_dir.root().join("tls"), api_addr.ip())
                .context("TLS certificate")?;
        let listener = crate::tls::TlsListener::new(api_listener, identity.acceptor)
            .context("TLS listener")?;
        // The CLI talks plain HTTP on loopback, as without --tls.
        let local = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("loopback listener for the CLI")?;
        let local_url = format!("http://{}", local.local_addr().context("local address")?);
        let app = supervisor.router(true);
        let local_app = supervisor.router(false);
        let server = tokio::spawn(async move {
            let plain = tokio::spawn(async move { axum::serve(local, local_app).await });
            let served = axum::serve(listener, app).await;
            plain.abort();
            served
        });
        println!(
            "TLS certificate {} (SHA-256 {})",
            identity.cert_path.display(),
            identity.fingerprint
        );
        (format!("https://{api_addr}"), local_url, server)
    } else {
        plain(api_listener, api_addr, supervisor.router(false))
    };
    #[cfg(target_os = "macos")]
    let (url, local_url, server) = plain(api_listener, api_addr, supervisor.router(false));

    if !args.no_demo {
        supervisor.ensure_demo().context("creating the demo VM")?;
    }
    supervisor
        .write_endpoint(&local_url)
        .context("recording the endpoint")?;
    // Until here a Ctrl-C simply ends the process (nothing runs yet, and the
    // image build is crash-safe); from here on it stops the VMs first.
    let shutdown = shutdown_signal()?;
    println!("clawpen is up");
    if let Some(remote) = &remote {
        println!("  models:    {} (remote)", remote.base);
    }
    println!(
        "  console:   {url}/login?token={}",
        supervisor.token.as_str()
    );
    println!("  inference: http://{inference_addr}/v1");
    println!("  state:     {}", supervisor.state_dir.root().display());
    println!("Press Ctrl-C to stop (running VMs are stopped).");
    let vms = supervisor.vms.clone();
    let no_start = args.no_start;
    let starter = tokio::spawn(async move {
        for info in vms.list().into_iter().filter(|_| !no_start) {
            if matches!(info.state, clawpen_api::VmState::Running) {
                continue;
            }
            if let Err(e) = vms.start(&info.spec.name).await {
                tracing::error!(vm = %info.spec.name, error = %e, "start failed");
            }
        }
    });

    shutdown.await;
    tracing::info!("stopping: VMs first");
    starter.abort();
    let _ = stop_tx.send(true);
    supervisor.vms.shutdown().await;
    server.abort();
    let _ = tokio::join!(inference, guests);
    Ok(())
}

fn remote_error(e: super::remote::RemoteError) -> CliError {
    if e.is_bad_input() {
        CliError::BadInput(e.to_string())
    } else {
        CliError::Other(e.into())
    }
}

/// Installs the SIGINT/SIGTERM handlers now and returns a future that ends
/// at the first of them. Installed before the login URL is printed, so a
/// signal that follows it at once still stops the VMs cleanly instead of
/// killing the process with its default action.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

type ServeTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// The console and API over plain HTTP: (URL to print, URL for the CLI, task).
fn plain(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
) -> (String, String, ServeTask) {
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}");
    (url.clone(), url, server)
}
