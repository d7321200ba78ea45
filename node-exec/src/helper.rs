//! node-exec's helper pod: its names and the parts of its spec that are node-exec's (privileged,
//! as root, in the host's PID, network and IPC namespaces), and the script it runs to enter the
//! target. The pod's lifecycle (creation, start, heartbeat, deletion, gc) is
//! `nodegate_cluster_client::helper_pod`, shared with the tools to come.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, Pod, SecurityContext, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use nodegate_cluster_client::helper_pod::{self, HostNamespaces, Tool, Wording};

use crate::config::Settings;
use crate::user::UserSpec;

pub use nodegate_cluster_client::helper_pod::{MANAGED_BY_LABEL, timestamp};

/// Value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "node-exec";
/// Label with the caller's name (made label-safe).
pub const USER_LABEL: &str = "nodegate.dev/node-exec-user";
/// Label with the node's name (made label-safe).
pub const NODE_LABEL: &str = "nodegate.dev/node-exec-node";
/// Annotation with the caller's full name.
pub const CALLER_ANNOTATION: &str = "nodegate.dev/node-exec-caller";
/// Annotation saying what the session entered.
pub const TARGET_ANNOTATION: &str = "nodegate.dev/node-exec-target";
/// Annotation the running node-exec refreshes; `gc` treats a stale one as a session gone.
pub const HEARTBEAT_ANNOTATION: &str = "nodegate.dev/node-exec-heartbeat";
/// The helper pod's only container (named after the tool, as every helper pod's is).
pub const CONTAINER: &str = MANAGED_BY;

/// node-exec as the owner of helper pods: its labels, and its remedies (its flags, its settings
/// file, its role and namespace manifests) in the shared lifecycle's errors.
pub const TOOL: Tool = Tool {
    name: MANAGED_BY,
    user_label: USER_LABEL,
    node_label: NODE_LABEL,
    caller_annotation: CALLER_ANNOTATION,
    target_annotation: TARGET_ANNOTATION,
    heartbeat_annotation: HEARTBEAT_ANNOTATION,
    wording: Wording {
        denied: "Ask a cluster admin for the node-exec-operator role (packaging/rbac/node-exec-operator.yaml)",
        namespace_missing: "apply packaging/node-exec-namespace.yaml (or pass --helper-namespace)",
        image_pull: "on an air-gapped cluster mirror it and pass --image (or set image in ~/.config/nodegate/node-exec.toml)",
        start_timeout: "Raise --start-timeout for slow image pulls",
        gc_command: "node-exec gc",
    },
};

/// The script run in the helper pod (see its header for the arguments).
pub const SCRIPT: &str = include_str!("helper.sh");

/// The exit code of the script when it refuses (unknown user, no such process...), with a
/// message on stderr.
pub const SCRIPT_REFUSED: i32 = 125;

/// Where the helper's own scratch volume (an `emptyDir` in memory) is mounted: the only place
/// the script writes (its stdin fifo), so that any image works, one without `/tmp` or with a
/// read-only root filesystem included.
pub const SCRATCH_DIR: &str = "/run/node-exec";
/// The scratch volume's name.
const SCRATCH_VOLUME: &str = "scratch";
/// Its size limit: it only ever holds a fifo.
const SCRATCH_SIZE: &str = "1Mi";

/// The priority class of helper pods: a node under disk, PID or memory pressure still admits a
/// critical pod and evicts it last, and a node in trouble is when node-exec is needed. Where the
/// cluster refuses it (e.g. a ResourceQuota that keeps critical pods in kube-system), the
/// lifecycle goes on without it and says so.
pub const PRIORITY_CLASS: &str = "system-node-critical";

/// The helper pod: the shared one (pinned to the node, tolerating every taint, without a
/// ServiceAccount token, killed by Kubernetes after the deadline, node-critical), privileged and
/// as root in the host's PID, network and IPC namespaces, because `nsenter` into any process
/// needs that. Its root filesystem is read-only: the script writes only to its scratch volume.
///
/// `caller` is who asked (as `identity::caller_name` found it), `target` what is entered, for
/// people reading the pod (e.g. "host PID 1"), `now` the time of the first heartbeat.
pub fn helper_pod(
    settings: &Settings,
    node: &str,
    caller: &str,
    target: &str,
    now: DateTime<Utc>,
) -> Pod {
    let mut pod = helper_pod::helper_pod(
        &TOOL,
        &helper_pod::PodRequest {
            node,
            caller,
            target,
            now,
            image: &settings.image,
            image_pull_policy: settings.image_pull_policy.as_deref(),
            deadline: settings.deadline,
            host: HostNamespaces {
                pid: true,
                network: true,
                ipc: true,
            },
            security_context: Some(SecurityContext {
                privileged: Some(true),
                run_as_user: Some(0),
                run_as_group: Some(0),
                read_only_root_filesystem: Some(true),
                ..SecurityContext::default()
            }),
            priority_class: Some(PRIORITY_CLASS),
        },
    );
    add_scratch_volume(&mut pod);
    pod
}

/// Gives the helper container its scratch volume at [`SCRATCH_DIR`].
fn add_scratch_volume(pod: &mut Pod) {
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    spec.volumes.get_or_insert_default().push(Volume {
        name: SCRATCH_VOLUME.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            // In memory: a node out of disk space still gets one.
            medium: Some("Memory".into()),
            size_limit: Some(Quantity(SCRATCH_SIZE.into())),
        }),
        ..Volume::default()
    });
    for container in &mut spec.containers {
        container
            .volume_mounts
            .get_or_insert_default()
            .push(VolumeMount {
                name: SCRATCH_VOLUME.into(),
                mount_path: SCRATCH_DIR.into(),
                ..VolumeMount::default()
            });
    }
}

/// Whose namespaces the session enters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// The host: the namespaces of this PID on the node.
    Host {
        /// `--host-pid`.
        pid: u32,
    },
    /// A container, by the ID its runtime gave it (hex, without the `runtime://` prefix).
    Container {
        /// The container ID.
        id: String,
    },
}

/// How to run the script: the exec command for the helper pod.
#[derive(Debug, Clone)]
pub struct ExecPlan {
    /// Whose namespaces.
    pub entry: Entry,
    /// `--user`, if given.
    pub user: Option<UserSpec>,
    /// Whether stdin is framed (plain streams) rather than a terminal.
    pub framed_stdin: bool,
    /// The caller's TERM, with a terminal.
    pub term: Option<String>,
    /// The caller's window as (rows, columns), with a terminal: set before the command starts,
    /// because the first resize message may arrive after it has read its size.
    pub window: Option<(u16, u16)>,
    /// The command; empty for a shell.
    pub command: Vec<String>,
}

impl ExecPlan {
    /// The argv to exec in the helper container.
    pub fn argv(&self) -> Vec<String> {
        let (mode, target) = match &self.entry {
            Entry::Host { pid } => ("host", pid.to_string()),
            Entry::Container { id } => ("container", id.clone()),
        };
        let mut argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            SCRIPT.into(),
            "node-exec-helper".into(),
            SCRATCH_DIR.into(),
            mode.into(),
            target,
            self.user
                .as_ref()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default(),
            if self.framed_stdin { "1" } else { "0" }.into(),
            self.term.clone().unwrap_or_default(),
            self.window
                .map(|(rows, cols)| format!("{rows}x{cols}"))
                .unwrap_or_default(),
            "--".into(),
        ];
        argv.extend(self.command.iter().cloned());
        argv
    }
}

/// The hex container ID of a `containerStatuses[].containerID` such as
/// `containerd://0123abc...`, `cri-o://...` or `docker://...`; `None` if it is not one.
pub fn container_id(status_id: &str) -> Option<&str> {
    let id = status_id.rsplit_once("://").map_or(status_id, |(_, id)| id);
    (id.len() >= 12 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::HelperArgs;
    use crate::config::SettingsFile;

    fn settings() -> Settings {
        Settings::merge(
            &HelperArgs::default(),
            SettingsFile::default(),
            "x".as_ref(),
        )
        .expect("defaults")
    }

    #[test]
    fn the_pod_is_pinned_privileged_tolerant_tokenless_and_deadlined() {
        let pod = helper_pod(
            &settings(),
            "node1",
            "system:serviceaccount:ops:bot",
            "host PID 1",
            DateTime::UNIX_EPOCH,
        );
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        assert_eq!(spec.active_deadline_seconds, Some(7200));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.host_pid, Some(true));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.host_ipc, Some(true));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let tolerations = spec.tolerations.expect("tolerations");
        assert_eq!(tolerations[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tolerations[0].key, None);
        let container = &spec.containers[0];
        assert_eq!(
            container.image.as_deref(),
            Some(crate::config::DEFAULT_IMAGE)
        );
        assert_eq!(container.image_pull_policy, None);
        let security = container
            .security_context
            .as_ref()
            .expect("security context");
        assert_eq!(security.privileged, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(spec.priority_class_name.as_deref(), Some(PRIORITY_CLASS));
        let volume = &spec.volumes.as_ref().expect("volumes")[0];
        let scratch = volume.empty_dir.as_ref().expect("an emptyDir");
        assert_eq!(scratch.medium.as_deref(), Some("Memory"));
        let mounts = container.volume_mounts.as_ref().expect("mounts");
        assert_eq!(mounts[0].name, volume.name);
        assert_eq!(mounts[0].mount_path, SCRATCH_DIR);
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(labels[USER_LABEL], "system_serviceaccount_ops_bot");
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some("node-exec-node1-")
        );
        let annotations = pod.metadata.annotations.expect("annotations");
        assert_eq!(annotations[HEARTBEAT_ANNOTATION], "1970-01-01T00:00:00Z");
    }

    #[test]
    fn container_ids_of_any_runtime() {
        let hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(container_id(&format!("containerd://{hex}")), Some(hex));
        assert_eq!(container_id(&format!("cri-o://{hex}")), Some(hex));
        assert_eq!(container_id("docker://abc"), None);
        assert_eq!(container_id("containerd://../../etc/passwd"), None);
    }

    #[test]
    fn the_command_follows_the_script_arguments() {
        let plan = ExecPlan {
            entry: Entry::Host { pid: 42 },
            user: Some(UserSpec::parse("alice").expect("valid")),
            framed_stdin: true,
            term: None,
            window: None,
            command: vec!["echo".into(), "a b".into()],
        };
        let argv = plan.argv();
        assert_eq!(&argv[..2], ["sh", "-c"]);
        assert_eq!(
            &argv[3..],
            [
                "node-exec-helper",
                SCRATCH_DIR,
                "host",
                "42",
                "alice",
                "1",
                "",
                "",
                "--",
                "echo",
                "a b"
            ]
        );
    }
}
