//! The command line: what users type, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nodegate_core::AnnotationPrefix;

/// Grant, revoke, list and prune SSH keys on Kubernetes Nodes.
///
/// Grants live on the Node objects, one annotation each; every node's sshd asks
/// authorized-keys-cmd for them at login. keyctl writes them with your own kubeconfig,
/// so Kubernetes RBAC decides who may grant.
#[derive(Debug, Parser)]
#[command(name = "keyctl", version, propagate_version = true)]
#[command(after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Where to connect, as whom.
    #[command(flatten)]
    pub connection: Connection,
}

/// Exit codes, shown in `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  everything asked for was done
  1  something failed; with several nodes, at least one node failed (each is reported)
  2  the command line was not understood
  3  keyctl audit: someone beyond the granters can write grants";

/// kubectl's connection flags, and the annotation prefix shared with every node.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// The annotation prefix grants live under; must match the nodes' configuration.
    #[arg(
        long,
        global = true,
        env = "NODEGATE_PREFIX",
        default_value_t = AnnotationPrefix::default(),
        value_name = "PREFIX"
    )]
    pub prefix: AnnotationPrefix,
    /// How many nodes to work on at the same time.
    #[arg(long, global = true, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=512))]
    pub concurrency: u16,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Grant an SSH key on nodes until an expiry.
    #[command(after_help = "Examples:
  keyctl grant node1 --expires 2h --reason 'disk full'
  keyctl grant -l pool=gpu --expires '2026-12-01 18:00' --key ~/.ssh/id_ed25519.pub --user core
  ssh-add -L | keyctl grant node1 --key - --expires 30m")]
    Grant(GrantArgs),
    /// Revoke grants on nodes, by fingerprint, key file, login user, or all of them.
    #[command(after_help = "Examples:
  keyctl revoke node1 --fingerprint SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s
  keyctl revoke -l pool=gpu --key ~/.ssh/id_ed25519.pub
  keyctl revoke node1 --all")]
    Revoke(RevokeArgs),
    /// List grants: a table, or JSON/YAML for scripts.
    List(ListArgs),
    /// Remove expired grants (from every node unless nodes or a selector are given).
    Prune(PruneArgs),
    /// Who is logged in to nodes through a grant now, and who was, from nodegate-agent's Events.
    #[command(
        after_help = "Reads the Events nodegate-agent records in namespace default on each login and logout
(list events there: the Role nodegate-keyctl-session-viewer, packaging/rbac/keyctl-viewer.yaml,
allows it; reading Nodes: the ClusterRole nodegate-keyctl-viewer).
Events are kept only as long as the API server's --event-ttl (1h by default): sessions that
ended earlier are not shown, and a node whose nodegate-agent is not running shows nothing.
Examples:
  kubectl keyctl sessions node1
  kubectl keyctl sessions -l pool=gpu -o json | jq '.sessions[] | select(.state == \"logged-in\")'"
    )]
    Sessions(SessionsArgs),
    /// Keep watching Nodes and remove grants as they expire (the in-cluster janitor).
    Janitor(JanitorArgs),
    /// Log in to a node in one step: an ephemeral key, granted for the session, then ssh.
    #[command(after_help = "Examples:
  keyctl ssh node1
  keyctl ssh node1 --user core -- journalctl -u kubelet -n 50
  keyctl ssh node1 --key ~/.ssh/id_ed25519 -o ServerAliveInterval=30")]
    Ssh(crate::commands::ssh::SshArgs),
    /// Print a block for ~/.ssh/config, so that plain ssh, scp and sftp reach nodes via keyctl.
    #[command(after_help = "Examples:
  kubectl keyctl ssh-config >> ~/.ssh/config     # then: ssh node1.k8s
  kubectl keyctl --context prod ssh-config --domain prod.k8s
  kubectl keyctl ssh-config --nodes --user core")]
    SshConfig(crate::commands::ssh_config::SshConfigArgs),
    /// Print a node's published SSH host keys as known_hosts lines (for ssh's KnownHostsCommand).
    #[command(
        after_help = "In ~/.ssh/config (ssh runs only absolute paths here, hence /usr/bin/env):
  Host *.k8s
      KnownHostsCommand /usr/bin/env kubectl keyctl known-hosts --domain k8s %H
      StrictHostKeyChecking yes
Prints only the lines of keys the node published (authorized-keys-cmd publish-host-keys),
their host field exactly HOST; exit status 1 and nothing printed when it published none."
    )]
    KnownHosts(KnownHostsArgs),
    /// Connect stdin/stdout to a node's sshd: OpenSSH's ProxyCommand (`%h %p`).
    Proxy(crate::commands::proxy::ProxyArgs),
    /// List and delete helper pods that `keyctl proxy` left behind.
    Gc(crate::commands::proxy::GcArgs),
    /// List everyone who can write grants (and so log in to nodes), from RBAC, and whether the
    /// admission guard holds back those who are not granters.
    #[command(
        after_help = "Reads every ClusterRole and ClusterRoleBinding (the ClusterRole
nodegate-keyctl-auditor, packaging/rbac/keyctl-auditor.yaml, allows it) and the guard's
ValidatingAdmissionPolicy and binding (Kubernetes 1.30+).
Exit status: 0 when only granters can write grants (Kubernetes' own system identities
aside, unless --strict), or the guard holds everyone else back; 3 when someone beyond the
granters can; 1 when RBAC could not be read.
Examples:
  kubectl keyctl audit
  kubectl keyctl audit -o json | jq '.subjects[] | select(.standing == \"beyond-the-granters\")'"
    )]
    Audit(AuditArgs),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Manpage,
}

/// Which nodes a command works on.
#[derive(Debug, Clone, Args)]
pub struct NodeSelection {
    /// Node names.
    #[arg(value_name = "NODE")]
    pub nodes: Vec<String>,
    /// A label selector, as kubectl takes it (`pool=gpu`, `env in (prod),!canary`).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
}

/// `keyctl grant`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The nodes to grant on.
    #[command(flatten)]
    pub target: NodeSelection,
    /// The public key: a .pub file, or `-` for standard input (default: your newest
    /// ~/.ssh/id_*.pub, as ssh-copy-id picks it).
    #[arg(short, long, value_name = "FILE|-")]
    pub key: Option<PathBuf>,
    /// The login user on the node.
    #[arg(short, long, default_value = "root", value_name = "LOGIN")]
    pub user: String,
    /// When the grant ends: a duration (30m, 2h, 1d 12h) or a time (RFC 3339, or
    /// 'YYYY-MM-DD HH:MM' local time).
    #[arg(
        short,
        long,
        value_name = "WHEN",
        required_unless_present = "permanent"
    )]
    pub expires: Option<String>,
    /// Grant without an expiry. Think twice: nobody has to come back to end it.
    #[arg(long, conflicts_with = "expires")]
    pub permanent: bool,
    /// Why; shown by `keyctl list` and recorded in the node's events.
    #[arg(short, long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Check everything (permissions, keys, annotation budget) with the API server, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `keyctl revoke`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).multiple(true).args(["fingerprint", "key", "user", "all"]))]
pub struct RevokeArgs {
    /// The nodes to revoke on.
    #[command(flatten)]
    pub target: NodeSelection,
    /// Revoke the key with this fingerprint (`SHA256:...`, as `ssh-keygen -l` and `keyctl list` show it).
    #[arg(short, long, value_name = "SHA256:...")]
    pub fingerprint: Vec<String>,
    /// Revoke the keys in this .pub file (or `-` for standard input).
    #[arg(short, long, value_name = "FILE|-")]
    pub key: Option<PathBuf>,
    /// Revoke only grants for this login user (with other filters), or all of this user's.
    #[arg(short, long, value_name = "LOGIN")]
    pub user: Option<String>,
    /// Revoke every grant on the nodes.
    #[arg(long, conflicts_with_all = ["fingerprint", "key"])]
    pub all: bool,
    /// Show what would be revoked, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Output formats of `keyctl list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// JSON for scripts.
    Json,
    /// YAML for scripts.
    Yaml,
}

/// `keyctl list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The nodes to list (default: every node).
    #[command(flatten)]
    pub target: NodeSelection,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Only grants for this login user.
    #[arg(short, long, value_name = "LOGIN")]
    pub user: Option<String>,
}

/// `keyctl sessions`.
#[derive(Debug, Args)]
pub struct SessionsArgs {
    /// The nodes to show (default: every node).
    #[command(flatten)]
    pub target: NodeSelection,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// `keyctl prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The nodes to prune (default: every node).
    #[command(flatten)]
    pub target: NodeSelection,
    /// Also remove annotations under the prefix that are not valid grants.
    #[arg(long)]
    pub invalid: bool,
    /// Show what would be removed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `keyctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Also count Kubernetes' own system identities (every node on its own Node, the
    /// kube-controller-manager's controllers) as beyond the granters when the guard is not in
    /// force: without the guard, they can write grants.
    #[arg(long)]
    pub strict: bool,
}

/// `keyctl known-hosts`.
#[derive(Debug, Args)]
pub struct KnownHostsArgs {
    /// The host as ssh looks it up (`%H`): NODE, NODE.DOMAIN, [NODE.DOMAIN]:PORT, or a HostKeyAlias.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// Remove a trailing .DOMAIN from HOST to get the node name (e.g. k8s for node1.k8s).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Why ssh asks (its %I: ORDER, HOSTNAME or ADDRESS). ssh stops at any failure of the
    /// command, and asks for ORDER with the host as typed even when HostKeyAlias is set: with
    /// ORDER or ADDRESS, a HOST that names no node with keys prints nothing and exits 0, and
    /// the HOSTNAME query decides.
    #[arg(long, value_name = "REASON")]
    pub invocation: Option<String>,
}

/// `keyctl janitor`.
#[derive(Debug, Args)]
pub struct JanitorArgs {
    /// Only Nodes matching this label selector.
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// How often to look for grants that have expired since the last change.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub interval: std::time::Duration,
    /// Also remove annotations under the prefix that are not valid grants.
    #[arg(long)]
    pub invalid: bool,
}
