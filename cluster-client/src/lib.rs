//! Talking to a cluster as the caller: what `keyctl` and `node-exec` (and the tools to come,
//! `keyctl ssh`/`proxy`) share about the Kubernetes API.
//!
//! The name says what the crate is for rather than where it runs: the same code serves an
//! operator's workstation and `keyctl janitor` in a pod, always with the caller's own
//! credentials, so that RBAC decides.
//!
//! What belongs here: anything a tool needs to reach a cluster and to speak about it to people.
//! - [`client`]: the client from `--kubeconfig`/`--context`, kubectl's conventions;
//! - [`identity`]: who the caller is, one answer for every tool;
//! - [`access`]: SelfSubjectAccessReviews, and the advice that names the role to bind (each
//!   tool keeps its own list of permissions and roles);
//! - [`names`]: turning free text (user names, node names) into valid label values and names;
//! - [`status`]: what an API error means (not found, forbidden, conflict...), with kube-core's
//!   `Status` helpers;
//! - [`mod@render`]: an error and its causes as one line, each cause said once;
//! - [`Error`]: the one error type of this crate.
//!
//! What does not: the grant record (`nodegate-core`, which the login path uses without any of
//! kube), and what one tool alone does. The login path (`authorized-keys-cmd`) never depends on
//! this crate. The helper pod lifecycle of `node-exec` is the next thing to move here.

#![forbid(unsafe_code)]

pub mod access;
pub mod client;
pub mod identity;
pub mod names;
pub mod render;
pub mod status;

pub use access::Permission;
pub use client::{ClientOptions, Connection};
pub use render::{describe_error_chain, describe_kube_error, render};

use std::path::PathBuf;

/// Why talking to the cluster failed before any answer could be used.
///
/// The client-setup variants carry their cause as text, once: kube's configuration errors embed
/// their own sources in their messages, so a chain of them would say each cause again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The named kubeconfig file could not be read or parsed.
    #[error("cannot read kubeconfig {path}: {reason}; check --kubeconfig or KUBECONFIG")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The kubeconfig does not yield a usable configuration (missing context, bad certificate...).
    #[error("cannot use kubeconfig: {reason}")]
    Kubeconfig {
        /// What went wrong.
        reason: String,
    },
    /// Neither a kubeconfig nor an in-cluster ServiceAccount was found.
    #[error(
        "no Kubernetes credentials found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a ServiceAccount ({reason})"
    )]
    Infer {
        /// What each source said.
        reason: String,
    },
    /// The client could not be built from the configuration (TLS setup).
    #[error("cannot set up the Kubernetes client: {reason}")]
    Build {
        /// What went wrong.
        reason: String,
    },
    /// A SelfSubjectAccessReview could not be made.
    #[error("cannot ask the API server whether {permission} is allowed")]
    Review {
        /// The permission asked about.
        permission: Box<Permission>,
        /// What went wrong (printed after the message, as its cause).
        #[source]
        source: kube::Error,
    },
}

impl From<kube::config::KubeconfigError> for Error {
    fn from(error: kube::config::KubeconfigError) -> Self {
        Self::Kubeconfig {
            reason: describe_error_chain(&error, &|_| None),
        }
    }
}

impl From<kube::config::InferConfigError> for Error {
    fn from(error: kube::config::InferConfigError) -> Self {
        Self::Infer {
            reason: describe_error_chain(&error, &|_| None),
        }
    }
}
