//! keyctl: grant, revoke, list and prune SSH keys on Kubernetes Nodes.
//!
//! Every command talks to the API server with the caller's own credentials, so Kubernetes RBAC
//! decides who may grant; writes are preceded by a SelfSubjectAccessReview so that a refusal
//! comes before anything changes, with the role to ask for.
//!
//! Layout: [`cli`] is the command line; [`commands`] holds one module per subcommand;
//! [`nodes`], [`fleet`], [`access`], [`events`], [`patch`] and [`keys`] are what they share;
//! [`rbac`] evaluates RBAC objects for `keyctl audit`, without IO.
//! Talking to the cluster (client, identity, access reviews, error rendering) is
//! `nodegate-cluster-client`, shared with node-exec.

pub mod access;
pub mod cli;
pub mod commands;
pub mod events;
pub mod fleet;
pub mod keys;
pub mod nodes;
pub mod patch;
pub mod rbac;
pub mod session;

use std::io::Write as _;
use std::process::ExitCode;

use clap::CommandFactory as _;

use crate::cli::{Cli, Command};
use crate::session::Session;

/// Runs a parsed command line; the exit code follows `cli::EXIT_CODES`.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let session = || Session::connect(&cli.connection);
    let all_ok = match &cli.command {
        Command::Grant(args) => commands::grant::run(&session().await?, args).await?,
        Command::Revoke(args) => commands::remove::revoke(&session().await?, args).await?,
        Command::List(args) => commands::list::run(&session().await?, args).await?,
        Command::Prune(args) => commands::remove::prune(&session().await?, args).await?,
        Command::Sessions(args) => commands::sessions::run(&session().await?, args).await?,
        Command::Janitor(args) => commands::janitor::run(&session().await?, args).await?,
        Command::Ssh(args) => {
            return Ok(ExitCode::from(
                commands::ssh::run(&cli.connection, args).await?,
            ));
        }
        Command::SshConfig(args) => commands::ssh_config::run(&cli.connection, args).await?,
        Command::KnownHosts(args) => commands::known_hosts::run(&session().await?, args).await?,
        Command::Proxy(args) => commands::proxy::run_and_exit(&cli.connection, args).await,
        Command::Gc(args) => commands::proxy::gc(&session().await?, args).await?,
        Command::Audit(args) => return commands::audit::run(&session().await?, args).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "keyctl",
                &mut std::io::stdout(),
            );
            true
        }
        Command::Manpage => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
            true
        }
    };
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
