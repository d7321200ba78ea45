//! The audit trail on each Node: one Kubernetes Event per grant, revoke and prune, so that
//! `kubectl describe node` shows who did what to whose key.
//!
//! Events about cluster-scoped objects go to `kube-system`: it is the one namespace every API
//! server version accepts for new-style (events.k8s.io/v1) events about a Node, and
//! `kubectl describe node` finds events in any namespace.

use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::api::{Api, PostParams};
use nodegate_core::Grant;
use nodegate_core::grant::escape_for_display;

use crate::nodes::NodeMeta;

/// The `reportingController` of keyctl's events.
pub const REPORTING_CONTROLLER: &str = "nodegate.dev/keyctl";

/// What happened to a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantChange {
    /// A key was granted.
    Granted,
    /// A key was revoked by someone.
    Revoked,
    /// An expired grant was removed.
    Expired,
    /// An annotation that was not a valid grant was removed.
    InvalidRemoved,
}

impl GrantChange {
    fn reason(self) -> &'static str {
        match self {
            Self::Granted => "SSHKeyGranted",
            Self::Revoked => "SSHKeyRevoked",
            Self::Expired => "SSHKeyExpired",
            Self::InvalidRemoved => "SSHKeyInvalidRemoved",
        }
    }

    fn action(self) -> &'static str {
        match self {
            Self::Granted => "Grant",
            Self::Revoked => "Revoke",
            Self::Expired | Self::InvalidRemoved => "Prune",
        }
    }
}

/// The namespace keyctl's events are written to.
pub const EVENTS_NAMESPACE: &str = "kube-system";

/// Publishes grant events as the caller.
#[derive(Clone)]
pub struct AuditTrail {
    events: Api<Event>,
    instance: String,
    caller: String,
}

/// Kubernetes' limit on an event note, in bytes.
const MAX_NOTE: usize = 1024;

impl AuditTrail {
    /// A trail whose events say `caller` did it; `instance` tells which keyctl (host or pod).
    pub fn new(client: kube::Client, caller: &str, instance: Option<String>) -> Self {
        Self {
            events: Api::namespaced(client, EVENTS_NAMESPACE),
            instance: instance.unwrap_or_else(|| "keyctl".to_owned()),
            caller: caller.to_owned(),
        }
    }

    /// Records a change to a valid grant on `node`.
    pub async fn record(&self, node: &NodeMeta, change: GrantChange, grant: &Grant) {
        let mut note = format!(
            "{} {} {} for login {}",
            self.caller,
            match change {
                GrantChange::Granted => "granted",
                GrantChange::Revoked => "revoked",
                GrantChange::Expired | GrantChange::InvalidRemoved => "removed expired",
            },
            grant.key.fingerprint(),
            grant.user
        );
        if change == GrantChange::Granted {
            note.push_str(&format!(", expiry {}", grant.expiry));
            if let Some(reason) = &grant.reason {
                note.push_str(&format!(
                    ", reason: {}",
                    escape_for_display(reason.as_str())
                ));
            }
        } else {
            note.push_str(&format!(
                " (granted by {})",
                escape_for_display(grant.granted_by.as_str())
            ));
        }
        self.publish(node, change, note).await;
    }

    /// Records the removal of an annotation that was not a valid grant.
    pub async fn record_invalid_removed(&self, node: &NodeMeta, annotation: &str) {
        let note = format!(
            "{} removed invalid grant annotation {}",
            self.caller,
            escape_for_display(annotation)
        );
        self.publish(node, GrantChange::InvalidRemoved, note).await;
    }

    async fn publish(&self, node: &NodeMeta, change: GrantChange, mut note: String) {
        if note.len() > MAX_NOTE {
            let mut end = MAX_NOTE;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        let now = Timestamp::now();
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{node_name}.{:x}", now.as_nanosecond())),
                namespace: Some(EVENTS_NAMESPACE.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Normal".to_owned()),
            reason: Some(change.reason().to_owned()),
            action: Some(change.action().to_owned()),
            note: Some(note),
            regarding: Some(node.object_ref(&())),
            reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
            reporting_instance: Some(self.instance.chars().take(128).collect()),
            ..Event::default()
        };
        // The change itself succeeded; a missing audit event is worth a warning, not a failure.
        if let Err(error) = self.events.create(&PostParams::default(), &event).await {
            tracing::warn!(
                "could not record the {} event on node {node_name}: {}",
                change.reason(),
                nodegate_cluster_client::describe_kube_error(&error)
            );
        }
    }
}
