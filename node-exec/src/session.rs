//! One session: checks, the helper pod, the remote command. The helper pod's lifecycle
//! (creation, start, heartbeat, deletion on every way out) is
//! `nodegate_cluster_client::helper_pod::lifecycle`; this module says what node-exec checks
//! first and what it does with the running pod.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::AttachParams;
use kube::{Api, Client};

use nodegate_cluster_client::helper_pod::{
    self, Ended, Lifecycle, NodeReadiness, Running, Signals,
};
use nodegate_cluster_client::{Connection, identity, status};

use crate::access;
use crate::cli::{Cli, TtyMode};
use crate::config::Settings;
use crate::helper::{self, Entry, ExecPlan};
use crate::startup::Progress;
use crate::stream;
use crate::target::{Target, TargetError};
use crate::user::UserSpec;

/// How often a running session refreshes its heartbeat annotation.
pub use nodegate_cluster_client::helper_pod::lifecycle::HEARTBEAT_INTERVAL;

/// Why a session could not start or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The node does not exist.
    #[error("node {0} not found (kubectl get nodes lists them)")]
    NodeNotFound(String),
    /// The node's kubelet is not reporting, so it cannot run the helper pod.
    #[error(
        "node {node}: its kubelet is not reporting ({last_heard}), so it cannot start the helper pod; try ssh, or the cloud provider's serial console"
    )]
    NodeNotReporting {
        /// The node.
        node: String,
        /// When it last reported, in words.
        last_heard: String,
    },
    /// The pod to enter does not exist.
    #[error("pod {namespace}/{name} not found")]
    PodNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// The pod to enter has no node yet.
    #[error("pod {0} is not scheduled to a node yet")]
    PodNotScheduled(String),
    /// The chosen container does not exist in the pod.
    #[error("pod {pod} has no container {container} (it has: {available})")]
    ContainerNotFound {
        /// The pod.
        pod: String,
        /// The container asked for.
        container: String,
        /// The pod's containers.
        available: String,
    },
    /// The chosen container is not running, so it has no processes to enter.
    #[error("container {container} of pod {pod} is not running")]
    ContainerNotRunning {
        /// The pod.
        pod: String,
        /// The container.
        container: String,
    },
}

/// Runs the session the command line asks for; returns the remote command's exit code.
pub async fn run(cli: &Cli, settings: &Settings) -> anyhow::Result<u8> {
    // Signals are caught before anything exists, so none can leave a pod behind.
    let mut signals = Signals::new().context("installing signal handlers")?;
    let target = Target::parse(cli.target.as_deref().unwrap_or_default())?;
    let user = cli.user.as_deref().map(UserSpec::parse).transpose()?;
    if matches!(target, Target::Node(_)) {
        if cli.namespace.is_some() {
            return Err(TargetError::PodOnlyFlag("--namespace").into());
        }
        if cli.container.is_some() {
            return Err(TargetError::PodOnlyFlag("--container").into());
        }
    }
    let tty = match cli.tty {
        TtyMode::Always => true,
        TtyMode::Never => false,
        TtyMode::Auto => std::io::stdin().is_terminal() && std::io::stdout().is_terminal(),
    };
    let Connection { client, config } = cli.client_options().connect().await?;
    let default_namespace = config.default_namespace.clone();
    let helper_ns = settings.helper_namespace.as_str();
    let mut permissions = helper_pod::access::helper_permissions(helper_ns);

    let (node, entry, description) = match &target {
        Target::Node(node) => (
            node.clone(),
            Entry::Host { pid: cli.host_pid },
            format!("host of {node} (PID {})", cli.host_pid),
        ),
        Target::Pod(name) => {
            let namespace = cli.namespace.clone().unwrap_or(default_namespace);
            let exec_target = access::exec_pods(&namespace, Some(name));
            permissions.insert(0, exec_target.clone());
            access::require(&client, &permissions, Some(&exec_target)).await?;
            let (node, id, container) =
                locate_container(&client, &namespace, name, cli.container.as_deref()).await?;
            (
                node,
                Entry::Container { id },
                format!("pod {namespace}/{name} container {container}"),
            )
        }
    };
    if matches!(target, Target::Node(_)) {
        access::require(&client, &permissions, None).await?;
    }
    if let Some(note) = check_node_ready(&client, &node).await?
        && !cli.quiet
    {
        eprintln!("node-exec: {note}");
    }

    // Asked once the checks passed, so that an unreachable API server is said by them first.
    let caller = identity::caller_name(&client, &config).await;
    let lifecycle = Lifecycle {
        tool: &helper::TOOL,
        namespace: helper_ns,
        pod: helper::helper_pod(settings, &node, &caller, &description, chrono::Utc::now()),
        start_timeout: settings.start_timeout,
        deadline: settings.deadline,
    };
    let plan = ExecPlan {
        entry,
        user,
        framed_stdin: !tty,
        term: tty.then(|| std::env::var("TERM").unwrap_or_else(|_| "xterm".into())),
        window: tty
            .then(crossterm::terminal::size)
            .and_then(Result::ok)
            .map(|(cols, rows)| (rows, cols)),
        command: cli.remote_command.clone(),
    };
    let progress = Progress::new(cli.quiet);
    let ended = helper_pod::run(&client, lifecycle, &progress, &mut signals, |running| {
        session(running, &plan, tty, &progress)
    })
    .await?;
    match ended {
        Ended::Finished(code) => Ok(code),
        Ended::Interrupted { signal, pod } => {
            eprintln!("node-exec: interrupted by {signal}; helper pod {pod} deleted");
            Ok(Signals::exit_code(signal))
        }
    }
}

/// Runs the command in the running helper pod (the lifecycle keeps the heartbeat going).
async fn session(
    running: Running,
    plan: &ExecPlan,
    tty: bool,
    progress: &Progress,
) -> anyhow::Result<u8> {
    let Running { pods, name, .. } = running;
    progress.say(format!("{name}: entering"));
    let params = AttachParams::default()
        .container(helper::CONTAINER)
        .stdin(true)
        .stdout(true)
        .stderr(!tty)
        .tty(tty);
    let process = pods
        .exec(&name, plan.argv(), &params)
        .await
        .with_context(|| format!("exec into helper pod {name}"))?;
    progress.finish();
    let _raw = if tty && std::io::stdin().is_terminal() {
        Some(stream::RawMode::enable()?)
    } else {
        None
    };
    Ok(stream::connect(process, tty, plan.framed_stdin).await?)
}

/// Finds the node and container ID of the container to enter.
async fn locate_container(
    client: &Client,
    namespace: &str,
    name: &str,
    container: Option<&str>,
) -> anyhow::Result<(String, String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = match pods.get(name).await {
        Ok(pod) => pod,
        Err(error) if status::is_not_found(&error) => {
            return Err(SessionError::PodNotFound {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            }
            .into());
        }
        Err(error) => return Err(error).context(format!("reading pod {namespace}/{name}")),
    };
    let full_name = format!("{namespace}/{name}");
    let spec = pod.spec.clone().unwrap_or_default();
    let node = spec
        .node_name
        .clone()
        .ok_or_else(|| SessionError::PodNotScheduled(full_name.clone()))?;
    let default_container = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubectl.kubernetes.io/default-container"))
        .cloned();
    let chosen = container
        .map(str::to_owned)
        .or(default_container)
        .or_else(|| spec.containers.first().map(|c| c.name.clone()))
        .unwrap_or_default();
    if !spec.containers.iter().any(|c| c.name == chosen) {
        let available = spec
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Err(SessionError::ContainerNotFound {
            pod: full_name,
            container: chosen,
            available,
        }
        .into());
    }
    let id = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .find(|s| s.name == chosen)
        .filter(|s| {
            s.state
                .as_ref()
                .is_some_and(|state| state.running.is_some())
        })
        .and_then(|s| s.container_id.as_deref())
        .and_then(helper::container_id)
        .map(str::to_owned)
        .ok_or_else(|| SessionError::ContainerNotRunning {
            pod: full_name.clone(),
            container: chosen.clone(),
        })?;
    Ok((node, id, chosen))
}

/// Fails early when the node is missing or its kubelet is not reporting (a pod would never
/// start). A node whose kubelet reports but says NotReady (its pod network is down, it has just
/// registered, ...) is tried, with a note to show: host-network helper pods run there, and what
/// its kubelet does with the pod decides. A caller who may not read nodes goes on too: the
/// helper pod's start then tells. Decided from the Ready condition's status, never its message
/// (see `helper_pod::readiness`).
async fn check_node_ready(client: &Client, node: &str) -> anyhow::Result<Option<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let found = match nodes.get(node).await {
        Ok(found) => found,
        Err(error) if status::is_not_found(&error) => {
            return Err(SessionError::NodeNotFound(node.to_owned()).into());
        }
        Err(error) if status::is_forbidden(&error) => {
            tracing::debug!("may not read node {node}; skipping the readiness check");
            return Ok(None);
        }
        Err(error) => return Err(error).context(format!("reading node {node}")),
    };
    readiness_verdict(
        node,
        &helper_pod::node_readiness(&found),
        chrono::Utc::now(),
    )
}

/// What node-exec does with a node's readiness: go on (with a note, when not Ready), or refuse.
fn readiness_verdict(
    node: &str,
    readiness: &NodeReadiness,
    now: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Option<String>> {
    match readiness {
        NodeReadiness::Ready => Ok(None),
        NodeReadiness::NotReady { reason, message } => Ok(Some(format!(
            "node {node} is not Ready ({reason}: {message}); trying anyway: the helper pod uses the host's network, and the kubelet still reports"
        ))),
        NodeReadiness::NotReporting { last_heard } => Err(SessionError::NodeNotReporting {
            node: node.to_owned(),
            last_heard: match last_heard {
                None => "it never reported".into(),
                Some(at) => format!(
                    "it last reported {} ago, at {}",
                    humantime::format_duration(std::time::Duration::from_secs(
                        (now - *at).num_seconds().max(0).unsigned_abs()
                    )),
                    helper::timestamp(*at)
                ),
            },
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> chrono::DateTime<chrono::Utc> {
        text.parse().expect("timestamp")
    }

    #[test]
    fn a_not_ready_node_whose_kubelet_reports_is_tried_with_a_note() {
        let note = readiness_verdict(
            "n1",
            &NodeReadiness::NotReady {
                reason: "KubeletNotReady".into(),
                message: "container runtime network not ready: NetworkReady=false".into(),
            },
            at("2026-12-01T10:00:00Z"),
        )
        .expect("goes on")
        .expect("a note");
        assert_eq!(
            note,
            "node n1 is not Ready (KubeletNotReady: container runtime network not ready: NetworkReady=false); trying anyway: the helper pod uses the host's network, and the kubelet still reports"
        );
        assert!(
            readiness_verdict("n1", &NodeReadiness::Ready, at("2026-12-01T10:00:00Z"))
                .expect("goes on")
                .is_none()
        );
    }

    #[test]
    fn a_kubelet_that_is_not_reporting_is_refused_with_when_it_was_last_heard() {
        let err = readiness_verdict(
            "n1",
            &NodeReadiness::NotReporting {
                last_heard: Some(at("2026-12-01T09:55:00Z")),
            },
            at("2026-12-01T10:00:00Z"),
        )
        .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "node n1: its kubelet is not reporting (it last reported 5m ago, at 2026-12-01T09:55:00Z), so it cannot start the helper pod; try ssh, or the cloud provider's serial console"
        );
        let err = readiness_verdict(
            "n1",
            &NodeReadiness::NotReporting { last_heard: None },
            at("2026-12-01T10:00:00Z"),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("(it never reported)"), "{err}");
    }
}
