//! `node-exec`: a host shell on a node, or a container entered as a chosen user, through a
//! short-lived privileged pod. See `docs/node-exec.md`.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = node_exec::cli::Cli::parse();
    node_exec::init_tracing();
    match node_exec::run(cli) {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!(
                "node-exec: {}",
                nodegate_cluster_client::render(error.as_ref())
            );
            std::process::ExitCode::from(node_exec::EXIT_FAILURE)
        }
    }
}
