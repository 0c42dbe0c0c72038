//! `clawpen`: the supervisor binary and its CLI (all of it in the library).

fn main() -> std::process::ExitCode {
    clawpen_supervisor::main()
}
