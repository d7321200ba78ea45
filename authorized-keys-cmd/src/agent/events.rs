//! Logins and logouts through a grant, recorded as Kubernetes Events about the Node, so that
//! `kubectl describe node NODE` shows who logged in, with which key, under whose grant and
//! why, from where, and for how long.
//!
//! The Events are core/v1, in namespace `default`, about the Node, as the kubelet writes its
//! own: every supported version accepts them from a node's credentials (the Node authorizer
//! lets a node write Events), and `kubectl describe node` finds them by the involved object.
//! They are rate-limited per agent ([`RateLimit`]: a burst, then one per interval), so that a
//! flood of logins cannot flood the API server; what is dropped is logged on the node.

use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use nodegate_core::session_events::{self, SessionEventFields};
use serde_json::json;

use crate::api::{self, ApiError};
use crate::config::NodeName;
use crate::kubeconfig::{ClientAuth, NodeCredentials};

/// The namespace the Events go to: where the kubelet writes Node events.
pub const EVENT_NAMESPACE: &str = session_events::NAMESPACE;
/// `source.component` and `reportingComponent` of the Events.
pub const COMPONENT: &str = session_events::COMPONENT;
/// Events allowed at once.
pub const BURST: u32 = 25;
/// One more Event allowed after each interval.
pub const REFILL: Duration = Duration::from_secs(6);
/// Deadline of one Event's POST.
const POST_DEADLINE: Duration = Duration::from_secs(5);
/// Longest message kept: events.k8s.io/v1 allows notes of at most 1 KiB, and a message that
/// fits there reads well in `kubectl describe` too.
const MAX_MESSAGE_LEN: usize = 1000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Happening {
    /// A session authenticated with a grant's key.
    Login,
    /// It ended (by itself, or ended by the agent).
    Logout,
    /// The agent ended it: its grant was revoked or expired, or the view was stale too long.
    Ended,
}

impl Happening {
    /// The Event's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Login => session_events::REASON_LOGIN,
            Self::Logout => session_events::REASON_LOGOUT,
            Self::Ended => session_events::REASON_ENDED,
        }
    }

    /// The Event's `type`.
    fn event_type(self) -> &'static str {
        match self {
            Self::Login | Self::Logout => "Normal",
            Self::Ended => "Warning",
        }
    }

    /// The Event's `action`.
    fn action(self) -> &'static str {
        match self {
            Self::Login => "Login",
            Self::Logout => "Logout",
            Self::Ended => "EndSession",
        }
    }
}

/// A token bucket: [`BURST`] at once, then one per [`REFILL`].
#[derive(Debug)]
pub struct RateLimit {
    tokens: u32,
    burst: u32,
    refill: Duration,
    last: Instant,
    dropped: u64,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        Self {
            tokens: burst,
            burst,
            refill,
            last: now,
            dropped: 0,
        }
    }

    /// Whether one more Event may be sent at `now`; counts it as sent, or as dropped.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last);
        if !self.refill.is_zero() {
            let earned = elapsed.as_nanos() / self.refill.as_nanos();
            if earned > 0 {
                let earned = u32::try_from(earned).unwrap_or(u32::MAX);
                self.tokens = self.tokens.saturating_add(earned).min(self.burst);
                self.last += self.refill * earned.min(1 << 20);
                if self.tokens == self.burst {
                    self.last = now;
                }
            }
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// How many Events were dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// The Event object for `happening` about Node `node` (uid `node_uid`) at `at`.
///
/// `fields` go on the Event as `agent.nodegate.dev/` annotations (the contract of
/// `nodegate_core::session_events`, which `keyctl sessions` reads), so that tools need not parse
/// the message.
pub fn event_body(
    node: &NodeName,
    node_uid: &str,
    happening: Happening,
    message: &str,
    fields: Option<&SessionEventFields>,
    at: DateTime<Utc>,
) -> serde_json::Value {
    let mut message = message.to_owned();
    if message.len() > MAX_MESSAGE_LEN {
        let mut cut = MAX_MESSAGE_LEN;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let time = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    let annotations = fields
        .map(SessionEventFields::to_annotations)
        .unwrap_or_default();
    // No `eventTime`: a core/v1 Event that has one is validated as a new-style Event, which
    // kube-apiserver 1.20 refuses for a cluster-scoped involved object in a namespace
    // ("involvedObject.namespace: does not match event.namespace"). The kubelet's own Node
    // events carry first/lastTimestamp only, and so do these.
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{}.nodegate-", node.as_str()),
            "namespace": EVENT_NAMESPACE,
            "annotations": annotations,
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Node",
            "name": node.as_str(),
            "uid": node_uid,
        },
        "reason": happening.reason(),
        "action": happening.action(),
        "message": message,
        "type": happening.event_type(),
        "source": { "component": COMPONENT, "host": node.as_str() },
        "reportingComponent": COMPONENT,
        "reportingInstance": node.as_str(),
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
    })
}

/// Why an Event was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The API server could not be asked (down, unreachable, bad credentials PEM): worth a
    /// retry.
    #[error(transparent)]
    Unavailable(#[from] ApiError),
    /// The API server answered that it cannot take it now (overloaded, broken, or the
    /// credentials mid-rotation): worth a retry.
    #[error("the API server answered {status} to an Event in namespace {EVENT_NAMESPACE}")]
    Busy {
        /// The HTTP status.
        status: u16,
    },
    /// The API server refused it: a retry would be refused again.
    #[error("the API server refused the Event ({status}): {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The Status message, if any.
        message: String,
    },
}

impl PostError {
    /// Whether a later retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Busy { .. })
    }
}

/// POSTs one Event with the node's credentials.
pub fn post(credentials: &NodeCredentials, body: &serde_json::Value) -> Result<(), PostError> {
    let agent = api::agent(credentials, POST_DEADLINE)?;
    let url = format!(
        "{}/api/v1/namespaces/{EVENT_NAMESPACE}/events",
        credentials.server
    );
    let mut request = agent.post(&url).header("Content-Type", "application/json");
    if let ClientAuth::Token(token) = &credentials.client {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request
        .send(body.to_string().as_bytes())
        .map_err(|e| api::transport_error(credentials, POST_DEADLINE, e))?;
    let status = response.status().as_u16();
    match status {
        200..=299 => Ok(()),
        // Overloaded or broken: try again later. (401: the certificate may be mid-rotation.)
        401 | 429 | 500..=599 => Err(PostError::Busy { status }),
        _ => {
            let text = response
                .body_mut()
                .with_config()
                .limit(64 * 1024)
                .read_to_string()
                .unwrap_or_default();
            let message = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_default();
            Err(PostError::Refused { status, message })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_interval() {
        let start = Instant::now();
        let mut limit = RateLimit::new(3, Duration::from_secs(10), start);
        assert!((0..3).all(|_| limit.allow(start)));
        assert!(!limit.allow(start));
        assert!(!limit.allow(start + Duration::from_secs(9)));
        assert!(limit.allow(start + Duration::from_secs(10)));
        assert!(!limit.allow(start + Duration::from_secs(11)));
        assert_eq!(limit.take_dropped(), 3);
        assert_eq!(limit.take_dropped(), 0);
        // A long quiet time fills the bucket, but no further than the burst.
        let later = start + Duration::from_secs(3600);
        assert!((0..3).all(|_| limit.allow(later)));
        assert!(!limit.allow(later));
    }

    #[test]
    fn the_event_is_about_the_node_and_its_message_bounded() {
        let node = NodeName::new("n1").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .to_utc();
        let body = event_body(
            &node,
            "uid-1",
            Happening::Login,
            &"x".repeat(5000),
            None,
            at,
        );
        assert_eq!(body["involvedObject"]["kind"], "Node");
        assert_eq!(body["involvedObject"]["name"], "n1");
        assert_eq!(body["involvedObject"]["uid"], "uid-1");
        assert_eq!(body["metadata"]["namespace"], "default");
        assert_eq!(body["reason"], "SSHLogin");
        assert_eq!(body["type"], "Normal");
        assert_eq!(body["source"]["component"], "nodegate-agent");
        assert_eq!(body["firstTimestamp"], "2026-12-01T10:00:00Z");
        assert_eq!(body["message"].as_str().unwrap().len(), MAX_MESSAGE_LEN);
        assert!(body.get("eventTime").is_none());
        let ended = event_body(&node, "u", Happening::Ended, "m", None, at);
        assert_eq!(ended["type"], "Warning");
        assert_eq!(ended["reason"], "SSHSessionEnded");
    }
}
