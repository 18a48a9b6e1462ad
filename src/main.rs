//! `nudge`: the command line. Parses flags and wires the crates; no logic of its own.
mod cli;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("NUDGE_LOG").unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output (`| head`) has what it wanted: not an error.
        Err(e) if e.is::<cli::StdoutClosed>() => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
