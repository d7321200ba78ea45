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
//! - [`helper_pod`]: the short-lived helper pod a tool runs on a node (node-exec's, and the
//!   coming `keyctl ssh`/`proxy`'s): created, waited for, kept alive, deleted on every way out,
//!   and found by `gc`; each tool passes its names, spec parts, progress and wording;
//! - [`Error`]: the one error type of this crate.
//!
//! What does not: the grant record (`nodegate-core`, which the login path uses without any of
//! kube), and what one tool alone does. The login path (`authorized-keys-cmd`) never depends on
//! this crate.

#![forbid(unsafe_code)]

pub mod access;
pub mod client;
pub mod helper_pod;
pub mod identity;
pub mod names;
pub mod render;
pub mod status;

pub use access::Permission;
pub use client::{ClientOptions, Connection};
pub use render::{describe_error_chain, describe_kube_error, render};

use std::path::PathBuf;
use std::time::Duration;

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
    /// A helper pod permission is missing (at least one).
    #[error(
        "refused before creating anything: you may not {}. {advice}",
        .missing.join(", nor ")
    )]
    Denied {
        /// Each missing permission, as a phrase ("create pods/exec on pod shop/web-0").
        missing: Vec<String>,
        /// The tool's advice: which role to ask for ([`helper_pod::Wording::denied`]), and
        /// for what the role does not give.
        advice: String,
    },
    /// The helper namespace does not exist.
    #[error("namespace {namespace} not found: {remedy}")]
    HelperNamespaceMissing {
        /// The namespace.
        namespace: String,
        /// The tool's remedy ([`helper_pod::Wording::namespace_missing`]).
        remedy: &'static str,
    },
    /// The API server refused or failed to create the helper pod.
    #[error("creating the helper pod in {namespace}")]
    CreateHelperPod {
        /// The helper namespace.
        namespace: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The node cannot get the helper image.
    #[error("node {node} cannot pull the helper image {image} ({reason}: {message}); {remedy}")]
    HelperImagePull {
        /// The node.
        node: String,
        /// The image.
        image: String,
        /// The kubelet's reason (ErrImagePull, ImagePullBackOff, ...).
        reason: String,
        /// The kubelet's message.
        message: String,
        /// The tool's remedy ([`helper_pod::Wording::image_pull`]).
        remedy: &'static str,
    },
    /// The helper container could not be created or started.
    #[error("the helper pod cannot start its container ({reason}: {message})")]
    HelperContainer {
        /// The kubelet's reason.
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// The helper pod ended (rejected by the kubelet, deadline, or deleted) before it ran.
    #[error("the helper pod ended before it ran: {0}")]
    HelperEnded(String),
    /// The helper pod ended (rejected by the kubelet, e.g. under disk or PID pressure)
    /// after the cluster refused its priority class, which would have let it in.
    #[error(
        "the helper pod ended before it ran: {why}; it ran without priority class {class}, which the cluster refused ({refusal}), and a node under disk or PID pressure rejects pods without it: ask a cluster admin to allow {class} in namespace {namespace}"
    )]
    HelperEndedWithoutPriority {
        /// Why it ended.
        why: String,
        /// The priority class refused.
        class: String,
        /// The API server's refusal of it.
        refusal: String,
        /// The helper namespace.
        namespace: String,
    },
    /// The container runtime keeps failing to create the helper pod's sandbox.
    #[error(
        "the container runtime on {node} cannot create the helper pod's sandbox ({failures} attempts; last: {message}); check the runtime there (e.g. `journalctl -u containerd`), or try ssh"
    )]
    HelperSandbox {
        /// The node.
        node: String,
        /// How often it failed.
        failures: i32,
        /// The last failure's message.
        message: String,
    },
    /// Nothing conclusive happened to the helper pod in time.
    #[error(
        "the helper pod did not start within {} ({}){}",
        humantime::format_duration(*.timeout),
        .stall.describe(node),
        if .stall.may_pass_with_time() { format!("; {remedy}") } else { String::new() }
    )]
    HelperStartTimeout {
        /// The node.
        node: String,
        /// The timeout.
        timeout: Duration,
        /// What held it up.
        stall: helper_pod::start::Stall,
        /// The tool's remedy ([`helper_pod::Wording::start_timeout`]), when more time may help.
        remedy: &'static str,
    },
    /// The API server failed while we watched the helper pod start.
    #[error("watching the helper pod failed: {0}")]
    HelperWatch(#[source] kube::Error),
    /// The helper pod could not be deleted: a warning, since its deadline and `gc` remove it.
    /// The cause is text, once: it is either the API's answer or a timeout.
    #[error(
        "could not delete helper pod {namespace}/{name} ({why}); Kubernetes stops it within {} of its start, and `{gc_command}` deletes it",
        humantime::format_duration(*.deadline)
    )]
    HelperPodLeft {
        /// The helper namespace.
        namespace: String,
        /// The pod.
        name: String,
        /// Why.
        why: String,
        /// The pod's deadline.
        deadline: Duration,
        /// The tool's command for leftovers ([`helper_pod::Wording::gc_command`]).
        gc_command: &'static str,
    },
    /// Helper pods could not be listed.
    #[error("listing helper pods in {namespace}")]
    ListHelperPods {
        /// The helper namespace.
        namespace: String,
        /// What the API server said.
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
