//! The short-lived helper pod a tool runs on a node (node-exec's today; `keyctl ssh`/`proxy`'s
//! to come): built, access-checked, created, waited for, kept alive by a heartbeat, deleted on
//! every way out, and found by `gc` when a session could not delete it.
//!
//! What differs between tools is a [`Tool`] (its name, labels, annotations and the wording of
//! its remedies), the [`PodRequest`] (host namespaces, security context, image, deadline) plus
//! whatever the tool changes on the built [`Pod`], and a [`Progress`] that shows what happens.
//! Everything else lives here once:
//! - [`mod@spec`]: the pod, pinned to its node and tolerating every taint;
//! - [`mod@access`]: the permissions a helper pod needs, asked about before anything exists;
//! - [`mod@readiness`]: whether a node's kubelet reports, from the Node's structured fields;
//! - [`mod@start`]: waiting for the kubelet, and what its answers mean as errors;
//! - [`mod@lifecycle`]: create, wait, heartbeat, the tool's work, delete on every way out;
//! - [`mod@signals`]: the signals that end a session, caught so that the pod goes first;
//! - [`mod@gc`]: leftovers, by label and by heartbeat age.

pub mod access;
pub mod gc;
pub mod lifecycle;
pub mod readiness;
pub mod signals;
pub mod spec;
pub mod start;

pub use lifecycle::{Ended, Lifecycle, Running, run};
pub use readiness::{NodeReadiness, node_readiness};
pub use signals::Signals;
pub use spec::{HostNamespaces, PodRequest, helper_pod, timestamp};
pub use start::{PodState, Stall, pod_state, wait_running};

#[cfg(doc)]
use k8s_openapi::api::core::v1::Pod;

/// The label every helper pod carries with its tool's name, so that `gc` and operators find
/// them (the well-known label, so that generic tooling shows who made the pod).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// What makes a helper pod one tool's: its names, and the wording of the remedies it offers.
///
/// A `const` in the tool, so that its labels are also constants it (and its tests) can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The tool's name: the value of [`MANAGED_BY_LABEL`], the pods' name prefix and the
    /// container's name (e.g. `node-exec`).
    pub name: &'static str,
    /// Label with the caller's name, made label-safe.
    pub user_label: &'static str,
    /// Label with the node's name, made label-safe.
    pub node_label: &'static str,
    /// Annotation with the caller's full name.
    pub caller_annotation: &'static str,
    /// Annotation saying what the session entered or reached.
    pub target_annotation: &'static str,
    /// Annotation the running tool refreshes; `gc` takes a stale one for a session gone.
    pub heartbeat_annotation: &'static str,
    /// How the tool words its remedies in the errors of this module.
    pub wording: Wording,
}

/// The tool's own remedies, appended to the errors of this module: each names the tool's flags,
/// files and roles, which this crate does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wording {
    /// After "you may not ...": which role to ask for.
    pub denied: &'static str,
    /// After "namespace N not found: ": how to create it or choose another.
    pub namespace_missing: &'static str,
    /// After a failed image pull: how to name another image.
    pub image_pull: &'static str,
    /// After a start timeout: what to raise.
    pub start_timeout: &'static str,
    /// The command that deletes leftovers, e.g. `node-exec gc`.
    pub gc_command: &'static str,
}

/// How the lifecycle tells people what happens: the tool's spinner, or nothing.
pub trait Progress: Send + Sync {
    /// Shows what is happening now.
    fn say(&self, message: String);
    /// Ends the display (before the tool's own output, or before a warning).
    fn finish(&self);
    /// Tells about something that went wrong but does not fail the session (a pod that could
    /// not be deleted).
    fn warn(&self, message: &str);
}

/// A [`Progress`] that shows nothing and writes warnings to the log only.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl Progress for Silent {
    fn say(&self, message: String) {
        tracing::debug!("{message}");
    }

    fn finish(&self) {}

    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}
