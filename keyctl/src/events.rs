//! The audit trail on each Node: one Kubernetes Event per grant, revoke and prune, so that
//! `kubectl describe node` shows who did what to whose key.

use kube::Resource as _;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
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

/// Publishes grant events as the caller.
#[derive(Clone)]
pub struct AuditTrail {
    recorder: Recorder,
    caller: String,
}

/// Kubernetes' limit on an event note, in bytes.
const MAX_NOTE: usize = 1024;

impl AuditTrail {
    /// A trail whose events say `caller` did it; `instance` tells which keyctl (host or pod).
    pub fn new(client: kube::Client, caller: &str, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
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
        let event = Event {
            type_: EventType::Normal,
            reason: change.reason().to_owned(),
            note: Some(note),
            action: change.action().to_owned(),
            secondary: None,
        };
        // The change itself succeeded; a missing audit event is worth a warning, not a failure.
        if let Err(error) = self.recorder.publish(&event, &node.object_ref(&())).await {
            tracing::warn!(
                "could not record the {} event on node {}: {error}",
                change.reason(),
                node.metadata.name.as_deref().unwrap_or_default()
            );
        }
    }
}
