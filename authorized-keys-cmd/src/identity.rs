//! Who this node is: its credentials (the kubelet's kubeconfig), the Node they name, and a
//! stamp that tells whether the credentials changed since a cached answer was read with them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::config::{KUBECONFIG_SEARCH_PATH, NodeName, Settings, locate_kubeconfig};
use crate::kubeconfig::{KubeconfigError, NodeCredentials};

/// Why the Node to read could not be told.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The configured name is another node's than the certificate's.
    #[error(
        "node_name {configured:?} differs from the client certificate's system:node:{certificate}; a node reads only its own grants: remove node_name or fix the kubeconfig"
    )]
    NameMismatch {
        /// `node_name` from the configuration.
        configured: String,
        /// The name in the certificate.
        certificate: String,
    },
    /// The kubeconfig authenticates with a token, which names no node.
    #[error("the kubeconfig uses a token, which names no node; set node_name")]
    TokenNamesNoNode,
    /// The certificate names no node, or cannot be read.
    #[error(transparent)]
    Certificate(#[from] KubeconfigError),
}

/// Finds and loads the node's kubeconfig.
pub fn load_credentials(settings: &Settings) -> Result<NodeCredentials, KubeconfigError> {
    let path = locate_kubeconfig(settings.kubeconfig.as_deref()).ok_or_else(|| {
        KubeconfigError::NotFound {
            searched: KUBECONFIG_SEARCH_PATH.join(", "),
        }
    })?;
    NodeCredentials::load(&path)
}

/// The node to read: from the client certificate (`system:node:NAME`), or configured. A
/// configured name that differs from the certificate's is refused: it would serve another
/// node's grants on this one.
pub fn node_name(
    settings: &Settings,
    credentials: &NodeCredentials,
) -> Result<NodeName, IdentityError> {
    let from_cert = match credentials.identity() {
        Some(Ok(identity)) => identity.node_name().map_err(IdentityError::from),
        Some(Err(e)) => Err(e.into()),
        None => Err(IdentityError::TokenNamesNoNode),
    };
    match (&settings.node_name, from_cert) {
        (Some(configured), Ok(cert)) if configured != &cert => Err(IdentityError::NameMismatch {
            configured: configured.to_string(),
            certificate: cert.to_string(),
        }),
        (Some(configured), _) => Ok(configured.clone()),
        (None, from_cert) => from_cert,
    }
}

/// Identifies the credentials in use by their kubeconfig file (path, device, inode, size,
/// modification time). A cached answer is fresh only when read with the same, unchanged file:
/// whatever was checked about the node's identity when it was read still holds then.
pub fn credentials_stamp(kubeconfig: &Path) -> Option<String> {
    let m = std::fs::metadata(kubeconfig).ok()?;
    Some(format!(
        "{}|{}:{}:{}:{}.{}",
        kubeconfig.display(),
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ))
}

/// Whether an answer recorded with credentials `recorded` was read with the ones in use `now`.
pub fn same_credentials(recorded: &str, now: Option<&str>) -> bool {
    now.is_some_and(|now| !recorded.is_empty() && recorded == now)
}
