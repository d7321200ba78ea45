//! The helper pod: what every tool's helper pod is, with the tool's parts as parameters.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Pod, SecurityContext};

use super::{MANAGED_BY_LABEL, Tool};
use crate::names::label_value;

/// Which of the host's namespaces the pod shares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostNamespaces {
    /// `hostPID`.
    pub pid: bool,
    /// `hostNetwork`.
    pub network: bool,
    /// `hostIPC`.
    pub ipc: bool,
}

/// What the caller asked for, for [`helper_pod`].
#[derive(Debug, Clone)]
pub struct PodRequest<'a> {
    /// The node to pin the pod to.
    pub node: &'a str,
    /// The caller, as [`crate::identity::caller_name`] found it.
    pub caller: &'a str,
    /// What is entered or reached, for people reading the pod (e.g. "host PID 1").
    pub target: &'a str,
    /// When, for the first heartbeat.
    pub now: DateTime<Utc>,
    /// The container's image.
    pub image: &'a str,
    /// Its pull policy, if one was set (else Kubernetes' default for the tag).
    pub image_pull_policy: Option<&'a str>,
    /// The pod's `activeDeadlineSeconds` (at least one second).
    pub deadline: Duration,
    /// The host namespaces the pod shares.
    pub host: HostNamespaces,
    /// The container's security context (e.g. privileged, as root).
    pub security_context: Option<SecurityContext>,
    /// The pod's priority class, e.g. `system-node-critical` so that a node under pressure
    /// still admits it; [`super::run`] goes on without it where the cluster refuses it.
    pub priority_class: Option<&'a str>,
}

/// The helper pod of `tool`: pinned to the node with `nodeName` (no scheduler involved, so a
/// cordoned or full node still gets it), tolerating every taint, without a ServiceAccount token
/// or service links, never restarted, and killed by Kubernetes after the deadline even if the
/// tool cannot delete it. Labelled and annotated for `gc`, with a first heartbeat.
pub fn helper_pod(tool: &Tool, request: &PodRequest<'_>) -> Pod {
    let deadline = request.deadline.as_secs().max(1);
    // The node in the name helps people reading `kubectl get pods`, unless it is too long to
    // leave room for the generated suffix or is a dotted FQDN.
    let readable_node = request.node.len() <= 40 && !request.node.contains('.');
    let generate_name = if readable_node {
        format!("{}-{}-", tool.name, request.node)
    } else {
        format!("{}-", tool.name)
    };
    let mut container = serde_json::json!({
        "name": tool.name,
        "image": request.image,
        // The deadline ends the pod first; sleep only keeps it alive until then.
        "command": ["sleep", (deadline + 60).to_string()],
    });
    if let Some(context) = &request.security_context {
        container["securityContext"] =
            serde_json::to_value(context).expect("a SecurityContext serializes");
    }
    if let Some(policy) = request.image_pull_policy {
        container["imagePullPolicy"] = policy.into();
    }
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": generate_name,
            "labels": {
                MANAGED_BY_LABEL: tool.name,
                tool.user_label: label_value(request.caller),
                tool.node_label: label_value(request.node),
            },
            "annotations": {
                tool.caller_annotation: request.caller,
                tool.target_annotation: request.target,
                tool.heartbeat_annotation: timestamp(request.now),
            },
        },
        "spec": {
            "nodeName": request.node,
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "hostPID": request.host.pid,
            "hostNetwork": request.host.network,
            "hostIPC": request.host.ipc,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
        },
    });
    if let Some(class) = request.priority_class {
        pod["spec"]["priorityClassName"] = class.into();
    }
    serde_json::from_value(pod).expect("the helper pod literal matches the Pod schema")
}

/// A heartbeat value: RFC 3339, UTC, seconds.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::helper_pod::Wording;

    /// A tool for the tests of this module.
    pub(crate) const TOOL: Tool = Tool {
        name: "tool",
        user_label: "example.com/tool-user",
        node_label: "example.com/tool-node",
        caller_annotation: "example.com/tool-caller",
        target_annotation: "example.com/tool-target",
        heartbeat_annotation: "example.com/tool-heartbeat",
        wording: Wording {
            denied: "Ask for the tool role.",
            namespace_missing: "create it",
            image_pull: "pass --image",
            start_timeout: "Raise --start-timeout",
            gc_command: "tool gc",
        },
    };

    pub(crate) fn request(node: &str) -> PodRequest<'_> {
        PodRequest {
            node,
            caller: "bob@example.com",
            target: "port 22",
            now: DateTime::UNIX_EPOCH,
            image: "img",
            image_pull_policy: Some("Never"),
            deadline: Duration::from_secs(60),
            host: HostNamespaces {
                network: true,
                ..HostNamespaces::default()
            },
            security_context: None,
            priority_class: Some("system-node-critical"),
        }
    }

    #[test]
    fn the_tool_names_labels_and_shapes_the_pod() {
        let pod = helper_pod(&TOOL, &request("n1"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("tool-n1-"));
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], "tool");
        assert_eq!(labels["example.com/tool-user"], "bob_example.com");
        assert_eq!(labels["example.com/tool-node"], "n1");
        let annotations = pod.metadata.annotations.expect("annotations");
        assert_eq!(annotations["example.com/tool-caller"], "bob@example.com");
        assert_eq!(annotations["example.com/tool-target"], "port 22");
        assert_eq!(
            annotations["example.com/tool-heartbeat"],
            "1970-01-01T00:00:00Z"
        );
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.active_deadline_seconds, Some(60));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.host_pid, Some(false));
        assert_eq!(spec.termination_grace_period_seconds, Some(0));
        assert_eq!(
            spec.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let container = &spec.containers[0];
        assert_eq!(container.name, "tool");
        assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
        assert_eq!(container.security_context, None);
        assert_eq!(
            container.command.as_deref(),
            Some(&["sleep".to_owned(), "120".to_owned()][..])
        );
    }

    #[test]
    fn long_or_dotted_nodes_stay_out_of_the_name() {
        let pod = helper_pod(&TOOL, &request("ip-10-0-0-1.ec2.internal"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("tool-"));
    }
}
