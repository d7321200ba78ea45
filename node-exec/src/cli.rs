//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use nodegate_cluster_client::ClientOptions;

/// A host shell on a Kubernetes node, or a container entered as a chosen user, through a
/// short-lived privileged pod: the fallback when SSH cannot help.
///
/// Examples:
///   node-exec node1                              # login shell on node1's host, as root
///   node-exec node1 -- journalctl -u kubelet     # one command; its exit code becomes ours
///   node-exec pod/web-0 -n shop --user 0 -- sh   # enter a container as root (kubectl exec -u)
///   node-exec gc                                 # delete leftover helper pods
#[derive(Debug, clap::Parser)]
#[command(
    name = "node-exec",
    version,
    verbatim_doc_comment,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    /// What to do besides opening a session.
    pub command: Option<Subcommand>,

    /// The node for a host shell (`NODE` or `node/NODE`; a node named like a subcommand, e.g.
    /// `gc`, only as `node/NODE`), or the pod to enter (`pod/NAME`).
    #[arg(value_name = "NODE|pod/NAME", required = true)]
    pub target: Option<String>,

    /// The command to run instead of an interactive shell, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub remote_command: Vec<String>,

    /// Namespace of the pod to enter (default: the kubeconfig context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,

    /// Container of the pod to enter (default: the pod's default container, else its first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,

    /// Run as this user: NAME, UID, NAME:GROUP or UID:GID, resolved in the target's own
    /// /etc/passwd and /etc/group (default: root on a host, the container's own user in a pod).
    #[arg(short = 'u', long)]
    pub user: Option<String>,

    /// The process whose namespaces are "the host" on the node.
    #[arg(long, value_name = "PID", default_value_t = 1)]
    pub host_pid: u32,

    /// Allocate a terminal: auto (when stdin and stdout are terminals), always or never.
    #[arg(long, value_enum, default_value_t = TtyMode::Auto)]
    pub tty: TtyMode,

    /// No spinner or progress messages.
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    /// How the helper pod is made.
    pub helper: HelperArgs,

    /// Kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to use instead of the current one.
    #[arg(long, global = true)]
    pub context: Option<String>,

    /// Settings file (default: ~/.config/nodegate/node-exec.toml, if it exists).
    #[arg(long, global = true, value_name = "FILE", env = "NODE_EXEC_CONFIG")]
    pub config: Option<PathBuf>,
}

impl Cli {
    /// The credentials the caller named.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

/// Flags for the helper pod; each overrides the settings file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HelperArgs {
    /// Helper image; needs sh, awk, nsenter and base64 (busybox has them). For air-gapped
    /// clusters, mirror it and name the mirror here or in the settings file.
    #[arg(long, global = true)]
    pub image: Option<String>,

    /// Image pull policy of the helper pod: Always, IfNotPresent or Never.
    #[arg(long, global = true, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,

    /// Namespace for helper pods (needs Pod Security level privileged).
    #[arg(long, global = true, value_name = "NAMESPACE")]
    pub helper_namespace: Option<String>,

    /// Kubernetes kills the helper pod after this long even if node-exec could not delete it
    /// (e.g. 2h, 30m).
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Option<Duration>,

    /// Give up when the helper pod has not started after this long.
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub start_timeout: Option<Duration>,
}

/// When to allocate a terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TtyMode {
    /// When stdin and stdout are terminals.
    Auto,
    /// Always (the remote side gets a terminal even when ours is not one).
    Always,
    /// Never: plain streams, stdout and stderr kept apart.
    Never,
}

/// Commands besides a session.
#[derive(Debug, clap::Subcommand)]
pub enum Subcommand {
    /// List helper pods left behind (finished, past their deadline, or whose node-exec is gone)
    /// and delete them.
    Gc(GcArgs),
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff).
    #[command(hide = true)]
    Manpage,
}

/// Arguments of `node-exec gc`.
#[derive(Debug, Clone, clap::Args)]
pub struct GcArgs {
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,

    /// A session whose node-exec has not reported for this long is gone.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "3m", value_name = "DURATION")]
    pub stale_after: Duration,

    /// Delete every helper pod, including live sessions.
    #[arg(long)]
    pub all: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn gc_is_a_subcommand_even_after_global_flags() {
        let cli = Cli::try_parse_from([
            "node-exec",
            "--kubeconfig",
            "k",
            "--image",
            "i",
            "gc",
            "--dry-run",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Some(Subcommand::Gc(GcArgs { dry_run: true, .. }))
        ));
        assert_eq!(cli.target, None);
    }

    #[test]
    fn a_session_takes_a_target_and_a_command() {
        let cli = Cli::try_parse_from(["node-exec", "--image", "i", "node1", "--", "id", "-u"])
            .expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.target.as_deref(), Some("node1"));
        assert_eq!(cli.remote_command, ["id", "-u"]);
        // A node named like a subcommand is reached as node/NAME.
        let cli = Cli::try_parse_from(["node-exec", "node/gc"]).expect("parses");
        assert_eq!(cli.target.as_deref(), Some("node/gc"));
        assert!(Cli::try_parse_from(["node-exec"]).is_err());
    }
}
