//! `keyctl known-hosts HOST`: the `known_hosts` lines of one node, from the host keys it
//! publishes on its own Node object (`docs/host-key-format.md`), for OpenSSH's
//! `KnownHostsCommand ... %H`.
//!
//! Standard output carries only validated `HOST TYPE BASE64` lines, their host field exactly the
//! `%H` ssh passed, so that ssh matches them and nothing else. When the node publishes no valid
//! host key, nothing is printed and the exit status is 1: with `StrictHostKeyChecking yes`, ssh
//! then refuses the unknown host instead of asking to trust it.

use std::io::Write as _;

use anyhow::Context as _;
use nodegate_cluster_client::status;
use nodegate_core::host_keys::{KnownHostsHost, KnownHostsHostError, NodeHostKeys};

use crate::cli::KnownHostsArgs;
use crate::nodes;
use crate::session::Session;

/// What to do on a node that publishes no host keys.
pub const NO_KEYS_HELP: &str = "install the nodegate node package on it and enable nodegate-publish-host-keys.path \
     (systemctl enable --now nodegate-publish-host-keys.path nodegate-publish-host-keys.service), \
     which runs `authorized-keys-cmd publish-host-keys` with the node's own credentials";

/// Why no `known_hosts` lines were printed.
#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    /// The Node does not exist.
    #[error(
        "no node named {node} (from the host name {host:?}); check the name with: kubectl get nodes"
    )]
    UnknownNode {
        /// The Node name.
        node: String,
        /// ssh's `%H`.
        host: String,
    },
    /// The caller may not read the Node.
    #[error(
        "not allowed to read node {node} for its host keys ({message}): known-hosts needs get on nodes, which the ClusterRole nodegate-keyctl-viewer (packaging/rbac/keyctl-viewer.yaml) or nodegate-keyctl-granter gives; ask a cluster admin to bind one to you"
    )]
    Forbidden {
        /// The Node name.
        node: String,
        /// The API server's message.
        message: String,
    },
    /// The Node publishes no host key.
    #[error(
        "node {node} publishes no SSH host keys, so its host key cannot be verified: {NO_KEYS_HELP}"
    )]
    NoKeys {
        /// The Node name.
        node: String,
    },
    /// Everything published is invalid.
    #[error(
        "node {node} publishes no valid SSH host key ({invalid}); refusing to print any: re-run `authorized-keys-cmd publish-host-keys` on the node"
    )]
    OnlyInvalid {
        /// The Node name.
        node: String,
        /// Each invalid annotation and why.
        invalid: String,
    },
}

/// Runs `keyctl known-hosts`.
pub async fn run(session: &Session, args: &KnownHostsArgs) -> anyhow::Result<bool> {
    // ssh's ORDER and ADDRESS queries only rank host key algorithms or check an address; the
    // HOSTNAME query (or a call without --invocation) is the one that must vouch.
    let advisory = matches!(args.invocation.as_deref(), Some("ORDER" | "ADDRESS"));
    match lines(session, args).await {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                .context("cannot write the known_hosts lines to standard output")?;
            Ok(true)
        }
        Err(error)
            if advisory
                && error
                    .downcast_ref::<KnownHostsError>()
                    .is_some_and(KnownHostsError::names_no_keys) =>
        {
            tracing::debug!("{}: {error}", args.host);
            Ok(true)
        }
        Err(error) if advisory && error.downcast_ref::<KnownHostsHostError>().is_some() => {
            tracing::debug!("{}: {error}", args.host);
            Ok(true)
        }
        Err(error) => Err(error),
    }
}

impl KnownHostsError {
    /// Whether this says only that HOST has no usable keys (not that the API failed).
    fn names_no_keys(&self) -> bool {
        matches!(
            self,
            Self::UnknownNode { .. } | Self::NoKeys { .. } | Self::OnlyInvalid { .. }
        )
    }
}

/// The `known_hosts` lines for `args.host`, newline-terminated.
async fn lines(session: &Session, args: &KnownHostsArgs) -> anyhow::Result<String> {
    let host = KnownHostsHost::parse(&args.host, args.domain.as_deref())?;
    let node = host.node().as_str();
    let meta = match session.nodes().get_metadata(node).await {
        Ok(meta) => meta,
        Err(error) if status::is_not_found(&error) => {
            return Err(KnownHostsError::UnknownNode {
                node: node.to_owned(),
                host: args.host.clone(),
            }
            .into());
        }
        Err(error) if status::is_forbidden(&error) => {
            return Err(KnownHostsError::Forbidden {
                node: node.to_owned(),
                message: status::api_status(&error)
                    .map(|s| s.message.clone())
                    .unwrap_or_default(),
            }
            .into());
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("cannot read node {node} for its host keys")));
        }
    };
    let found = NodeHostKeys::scan(nodes::annotations(&meta));
    let invalid: Vec<String> = found
        .invalid
        .iter()
        .map(|i| {
            nodegate_core::grant::escape_for_display(&format!(
                "host-keys.nodegate.dev/{}: {}",
                i.name, i.error
            ))
        })
        .collect();
    if found.is_empty() {
        if invalid.is_empty() {
            return Err(KnownHostsError::NoKeys {
                node: node.to_owned(),
            }
            .into());
        }
        return Err(KnownHostsError::OnlyInvalid {
            node: node.to_owned(),
            invalid: invalid.join("; "),
        }
        .into());
    }
    for problem in &invalid {
        tracing::warn!("node {node}: ignoring an invalid host key annotation: {problem}");
    }
    let mut out = String::new();
    for line in found.known_hosts_lines(&host) {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}
