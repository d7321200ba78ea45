//! One session: checks, the helper pod, the remote command, and cleanup on every way out.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Event, Node, NodeCondition, Pod};
use kube::api::{AttachParams, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::signal::unix::{SignalKind, signal};

use nodegate_cluster_client::{Connection, identity, status};

use crate::access;
use crate::cli::{Cli, TtyMode};
use crate::config::Settings;
use crate::helper::{self, Entry, ExecPlan, PodRequest};
use crate::startup::{self, Progress};
use crate::stream;
use crate::target::{Target, TargetError};
use crate::user::UserSpec;

/// How often a running session refreshes its heartbeat annotation.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How long cleanup may take before we give up and leave the pod to its deadline.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a session could not start or ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The node does not exist.
    #[error("node {0} not found (kubectl get nodes lists them)")]
    NodeNotFound(String),
    /// The node's kubelet is not ready, so it cannot run the helper pod.
    #[error(
        "node {node} is not ready ({detail}): node-exec needs a working kubelet; try ssh, or the cloud provider's serial console"
    )]
    NodeNotReady {
        /// The node.
        node: String,
        /// The Ready condition's status, reason and message.
        detail: String,
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
    /// The helper namespace is missing.
    #[error(
        "namespace {0} not found: apply packaging/node-exec-namespace.yaml (or pass --helper-namespace)"
    )]
    HelperNamespaceMissing(String),
    /// A signal ended the session.
    #[error("interrupted by {0}")]
    Interrupted(&'static str),
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
    let mut permissions = vec![
        access::create_pods(helper_ns),
        access::exec_pods(helper_ns, None),
        access::delete_pods(helper_ns),
    ];

    let (node, entry, description) = match &target {
        Target::Node(node) => (
            node.clone(),
            Entry::Host { pid: cli.host_pid },
            format!("host of {node} (PID {})", cli.host_pid),
        ),
        Target::Pod(name) => {
            let namespace = cli.namespace.clone().unwrap_or(default_namespace);
            permissions.insert(0, access::exec_pods(&namespace, Some(name)));
            access::require(&client, &permissions).await?;
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
        access::require(&client, &permissions).await?;
    }
    if let Some(note) = check_node_ready(&client, &node).await?
        && !cli.quiet
    {
        eprintln!("node-exec: {note}");
    }

    // Asked once the checks passed, so that an unreachable API server is said by them first.
    let caller = identity::caller_name(&client, &config).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), helper_ns);
    let request = PodRequest {
        node: &node,
        caller: &caller,
        target: &description,
        now: chrono::Utc::now(),
    };
    let progress = Progress::new(cli.quiet);
    progress.say(format!("creating a helper pod on {node}"));
    // Not cancelled by a signal: the pod might exist without us knowing its name. A signal that
    // arrives meanwhile is taken up below, with the name known.
    let created = pods
        .create(
            &PostParams::default(),
            &helper::helper_pod(settings, &request),
        )
        .await;
    let created = match created {
        Ok(pod) => pod,
        Err(error) if status::is_not_found(&error) => {
            progress.finish();
            return Err(SessionError::HelperNamespaceMissing(helper_ns.to_owned()).into());
        }
        Err(error) => {
            progress.finish();
            return Err(error).context(format!("creating the helper pod in {helper_ns}"));
        }
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::debug!("created helper pod {helper_ns}/{name}");

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
    let outcome = tokio::select! {
        outcome = session(&client, &pods, &created, settings, &plan, tty, &progress) => outcome,
        signal = signals.next() => Err(SessionError::Interrupted(signal).into()),
    };
    progress.finish();
    delete_helper(&pods, &name, settings).await;
    match outcome {
        Ok(code) => Ok(code),
        Err(error) => match error.downcast_ref::<SessionError>() {
            Some(SessionError::Interrupted(signal)) => {
                eprintln!("node-exec: interrupted by {signal}; helper pod {name} deleted");
                Ok(Signals::exit_code(signal))
            }
            _ => Err(error),
        },
    }
}

/// Waits for the helper pod, then runs the command in it with a heartbeat going.
async fn session(
    client: &Client,
    pods: &Api<Pod>,
    created: &Pod,
    settings: &Settings,
    plan: &ExecPlan,
    tty: bool,
    progress: &Progress,
) -> anyhow::Result<u8> {
    let name = created.metadata.name.clone().unwrap_or_default();
    let events: Api<Event> = Api::namespaced(client.clone(), &settings.helper_namespace);
    startup::wait_running(
        pods,
        &events,
        created,
        &settings.image,
        settings.start_timeout,
        progress,
    )
    .await?;
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
    tokio::select! {
        code = stream::connect(process, tty, plan.framed_stdin) => Ok(code?),
        never = heartbeat(pods, &name) => match never {},
    }
}

/// Refreshes the heartbeat annotation until cancelled; failures only delay `gc`'s verdict.
async fn heartbeat(pods: &Api<Pod>, name: &str) -> std::convert::Infallible {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    interval.tick().await; // the pod was created with a fresh heartbeat
    loop {
        interval.tick().await;
        let patch = serde_json::json!({"metadata": {"annotations": {
            helper::HEARTBEAT_ANNOTATION: helper::timestamp(chrono::Utc::now()),
        }}});
        if let Err(error) = pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!("heartbeat of {name} failed: {error}");
        }
    }
}

/// Deletes the helper pod now; if that fails, says how it will still go away.
async fn delete_helper(pods: &Api<Pod>, name: &str, settings: &Settings) {
    let params = DeleteParams::default().grace_period(0);
    match tokio::time::timeout(CLEANUP_TIMEOUT, pods.delete(name, &params)).await {
        Ok(Ok(_)) => tracing::debug!("deleted helper pod {name}"),
        Ok(Err(error)) if status::is_not_found(&error) => {}
        outcome => {
            let why = match outcome {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".into(),
            };
            eprintln!(
                "node-exec: could not delete helper pod {}/{name} ({why}); Kubernetes stops it within {} of its start, and `node-exec gc` deletes it",
                settings.helper_namespace,
                humantime::format_duration(settings.deadline)
            );
        }
    }
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

/// Fails early when the node is missing or not ready. A caller who may not read nodes goes on:
/// the helper pod's start then tells. A node that is not ready only because its pod network is
/// down still runs host-network pods such as the helper (and a broken network is a reason to
/// want a host shell): that goes on too, with a note to show.
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
    let ready = found
        .status
        .and_then(|s| s.conditions)
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(condition) if condition.status == "True" => Ok(None),
        Some(condition) if condition.status == "False" && only_network_down(&condition) => {
            Ok(Some(format!(
                "node {node} is not ready only because its pod network is down ({}); the helper pod uses the host's network, going on",
                condition.message.unwrap_or_default()
            )))
        }
        Some(condition) => Err(SessionError::NodeNotReady {
            node: node.to_owned(),
            detail: format!(
                "Ready={} {}: {}",
                condition.status,
                condition.reason.unwrap_or_default(),
                condition.message.unwrap_or_default()
            ),
        }
        .into()),
        None => Err(SessionError::NodeNotReady {
            node: node.to_owned(),
            detail: "its kubelet never reported".into(),
        }
        .into()),
    }
}

/// Whether a Ready=False condition names nothing but the runtime's network (the kubelet reports
/// e.g. "runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady ...").
fn only_network_down(condition: &NodeCondition) -> bool {
    let message = condition.message.as_deref().unwrap_or_default();
    message.starts_with("runtime network not ready") && !message.contains("RuntimeReady=false")
}

/// SIGINT, SIGTERM and SIGHUP, caught so that the helper pod is deleted first.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    /// 128 + the signal number, as shells report a command killed by it.
    fn exit_code(name: &str) -> u8 {
        match name {
            "SIGHUP" => 129,
            "SIGINT" => 130,
            _ => 143,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready_false(message: &str) -> NodeCondition {
        NodeCondition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: Some("KubeletNotReady".into()),
            message: Some(message.into()),
            ..NodeCondition::default()
        }
    }

    #[test]
    fn only_a_down_pod_network_lets_a_not_ready_node_through() {
        assert!(only_network_down(&ready_false(
            "runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized"
        )));
        assert!(!only_network_down(&ready_false(
            "container runtime is down,runtime network not ready: NetworkReady=false"
        )));
        assert!(!only_network_down(&ready_false("PLEG is not healthy")));
        assert!(!only_network_down(&ready_false("")));
    }
}
