//! Whether a node can be asked to run a helper pod, decided from the Node's structured fields
//! only.
//!
//! The Ready condition's *status* is API: `True`, `False` (the kubelet reports, and says
//! something is not ready) or `Unknown` (the node lifecycle controller's verdict when the
//! kubelet stopped renewing its lease). Its *message* is free text that changes between versions
//! (a 1.20 kubelet writes `runtime network not ready: ...`, a 1.32 one `container runtime network
//! not ready: ...`, and both add `, CSINode is not yet initialized` right after registering), so
//! it is shown to people, never read. A node whose kubelet reports, even NotReady, is tried:
//! what its kubelet then does with the helper pod decides ([`super::start`]). Host-network
//! helper pods run on a node whose pod network is down, which is when a host shell is wanted.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;

/// What the Node's status says about running a helper pod on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeReadiness {
    /// Ready.
    Ready,
    /// The kubelet reports, but not Ready: worth trying, with a note saying so.
    NotReady {
        /// The condition's reason (e.g. `KubeletNotReady`), for people.
        reason: String,
        /// The condition's message, for people.
        message: String,
    },
    /// The kubelet is not reporting: Ready is `Unknown`, or it never reported at all. A pod
    /// would never start, so the tool says so at once.
    NotReporting {
        /// When the kubelet last reported, if it ever did.
        last_heard: Option<DateTime<Utc>>,
    },
}

/// Reads a Node's readiness from its Ready condition's status.
pub fn node_readiness(node: &Node) -> NodeReadiness {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    let Some(ready) = ready else {
        return NodeReadiness::NotReporting { last_heard: None };
    };
    match ready.status.as_str() {
        "True" => NodeReadiness::Ready,
        "False" => NodeReadiness::NotReady {
            reason: ready.reason.clone().unwrap_or_default(),
            message: ready.message.clone().unwrap_or_default(),
        },
        // "Unknown", or anything a future version might add: nothing says the kubelet reports.
        _ => NodeReadiness::NotReporting {
            last_heard: ready
                .last_heartbeat_time
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": conditions},
        }))
        .expect("node")
    }

    fn ready(status: &str, message: &str) -> Node {
        node(serde_json::json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "Ready", "status": status, "reason": "KubeletNotReady", "message": message,
             "lastHeartbeatTime": "2026-12-01T10:00:00Z"},
        ]))
    }

    #[test]
    fn a_ready_node_is_ready() {
        assert_eq!(
            node_readiness(&ready("True", "kubelet is posting ready status")),
            NodeReadiness::Ready
        );
    }

    #[test]
    fn a_pod_network_down_is_tried_whatever_the_kubelet_version_writes() {
        for message in [
            // kubelet 1.20
            "runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:docker: network plugin is not ready: cni config uninitialized",
            // kubelet 1.32
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
            // a node that registered seconds ago
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized, CSINode is not yet initialized",
            "CSINode is not yet initialized",
            // and any text at all: the message is never read
            "",
        ] {
            assert_eq!(
                node_readiness(&ready("False", message)),
                NodeReadiness::NotReady {
                    reason: "KubeletNotReady".into(),
                    message: message.into()
                },
                "{message}"
            );
        }
    }

    #[test]
    fn a_kubelet_that_stopped_or_never_reported_is_not_reporting() {
        let at = "2026-12-01T10:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(
            node_readiness(&ready("Unknown", "Kubelet stopped posting node status.")),
            NodeReadiness::NotReporting { last_heard: at }
        );
        assert_eq!(
            node_readiness(&node(serde_json::json!([]))),
            NodeReadiness::NotReporting { last_heard: None }
        );
        let registered_only: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n1"}})).expect("node");
        assert_eq!(
            node_readiness(&registered_only),
            NodeReadiness::NotReporting { last_heard: None }
        );
    }
}
