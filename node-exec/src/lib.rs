//! node-exec: the fallback when SSH cannot help.
//!
//! `node-exec NODE [-- CMD...]` opens a host shell (or runs one command) on a node, and
//! `node-exec pod/NAME --user USER [-- CMD...]` enters a container as a chosen user. Both create
//! a short-lived privileged helper pod pinned to the node, enter the target's namespaces from it
//! with `nsenter`, and delete the pod on every way out.
//!
//! Modules, in the order a session uses them: [`cli`] and [`config`] (what was asked),
//! [`target`] and [`user`] (validated input), [`access`] (the permissions checked before
//! anything is created), [`helper`] (node-exec's parts of the pod, and the script it runs),
//! [`startup`] (the spinner), [`stream`] (stdin/stdout/TTY over the exec connection),
//! [`session`] (the checks and what is done with the running pod), [`gc`] (the table of
//! leftovers). Talking to the cluster (client, the caller's identity, access reviews, error
//! rendering) and the helper pod's lifecycle (creation, start, heartbeat, deletion on every way
//! out, finding leftovers) are `nodegate-cluster-client`, shared with keyctl.

#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod config;
pub mod gc;
pub mod helper;
pub mod session;
pub mod startup;
pub mod stream;
pub mod target;
pub mod user;

use anyhow::Context as _;
use clap::CommandFactory as _;

/// The exit code for errors of node-exec itself (as opposed to the remote command's own code).
pub const EXIT_FAILURE: u8 = 1;

/// Logs to stderr, quiet unless `RUST_LOG` asks for more.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs what the command line asks for and returns the process exit code.
pub fn run(cli: cli::Cli) -> anyhow::Result<u8> {
    match &cli.command {
        Some(cli::Subcommand::Completions { shell }) => {
            clap_complete::generate(
                *shell,
                &mut cli::Cli::command(),
                "node-exec",
                &mut std::io::stdout(),
            );
            return Ok(0);
        }
        Some(cli::Subcommand::Manpage) => {
            clap_mangen::Man::new(cli::Cli::command())
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            return Ok(0);
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        let settings = config::Settings::resolve(&cli)?;
        match &cli.command {
            Some(cli::Subcommand::Gc(args)) => {
                gc::run(&cli.client_options(), &settings, args).await
            }
            _ => session::run(&cli, &settings).await,
        }
    });
    // A read of stdin may still block a runtime thread; do not wait for it.
    runtime.shutdown_background();
    outcome
}
