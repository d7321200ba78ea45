//! keyctl's entry point; everything else is in the library.

use std::process::ExitCode;

use clap::Parser as _;
use keyctl::cli::Cli;

/// What is logged unless `KEYCTL_LOG` says otherwise. kube's request tracing logs every failed
/// request as an error; keyctl reports each failure itself, once and with context, so those
/// logs would only say it again (`KEYCTL_LOG=debug` shows them).
const DEFAULT_LOG: &str = "warn,keyctl=info,kube_client::client::builder=off";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEYCTL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        // Pod logs and files get plain text; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    match keyctl::run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", nodegate_cluster_client::render(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}
