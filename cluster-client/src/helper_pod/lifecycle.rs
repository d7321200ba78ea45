//! One helper pod's life: created, waited for, kept alive by a heartbeat while the tool works
//! with it, and deleted on every way out (the work's end, its failure, a lost connection, a
//! signal, a start that failed or timed out). What Kubernetes does when even the deletion fails
//! is the pod's deadline, and `gc`.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};

use super::{Progress, Signals, Tool, timestamp, wait_running};
use crate::{Error, status};

/// How often a running session refreshes its heartbeat annotation; `gc`'s default staleness
/// (3 min in node-exec) leaves room for several missed ones.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// How long the deletion may take before we give up and leave the pod to its deadline: a tool
/// that hangs on its way out is worse than a pod that `gc` or the deadline removes.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The helper pod to run, and the tool's settings for it.
#[derive(Debug, Clone)]
pub struct Lifecycle<'a> {
    /// Whose pod it is.
    pub tool: &'a Tool,
    /// The helper namespace.
    pub namespace: &'a str,
    /// The pod, as [`super::helper_pod`] built it and the tool completed it.
    pub pod: Pod,
    /// How long to wait for it to run.
    pub start_timeout: Duration,
    /// Its deadline, as the tool names it when the pod could not be deleted.
    pub deadline: Duration,
}

/// The running helper pod, handed to the tool's work.
#[derive(Clone)]
pub struct Running {
    /// Pods of the helper namespace.
    pub pods: Api<Pod>,
    /// The pod's name.
    pub name: String,
    /// The pod as it was when it ran.
    pub pod: Pod,
}

/// How a session ended, when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended<T> {
    /// The tool's work finished with this.
    Finished(T),
    /// A signal ended it; the pod was deleted (or the tool was told why it could not be).
    Interrupted {
        /// The signal's name (see [`Signals::exit_code`]).
        signal: &'static str,
        /// The helper pod's name.
        pod: String,
    },
}

/// Creates the helper pod, waits for it to run, then runs `work` with it while a heartbeat goes;
/// deletes the pod however that ends, `signals` included, before returning.
///
/// Errors of this crate (creation, start) convert into the tool's error type `E`, which its
/// work returns too.
pub async fn run<T, E, F, Fut>(
    client: &Client,
    lifecycle: Lifecycle<'_>,
    progress: &dyn Progress,
    signals: &mut Signals,
    work: F,
) -> Result<Ended<T>, E>
where
    F: FnOnce(Running) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: From<Error>,
{
    let Lifecycle {
        tool,
        namespace,
        pod,
        start_timeout,
        deadline,
    } = lifecycle;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    // The image the kubelet is asked for, to name it when it cannot be pulled.
    let image = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    progress.say(format!("creating a helper pod on {node}"));
    // Not cancelled by a signal: the pod might exist without us knowing its name. A signal that
    // arrives meanwhile is taken up below, with the name known.
    let (created, priority_refused) = match create(&pods, tool, namespace, &pod, progress).await {
        Ok(created) => created,
        Err(error) => {
            progress.finish();
            return Err(error.into());
        }
    };
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::debug!("created helper pod {namespace}/{name}");

    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let session = async {
        let pod = wait_running(
            &pods,
            &events,
            &created,
            tool,
            &image,
            start_timeout,
            progress,
        )
        .await
        .map_err(|error| match (error, &priority_refused) {
            (Error::HelperEnded(why), Some((class, refusal))) => {
                Error::HelperEndedWithoutPriority {
                    why,
                    class: class.clone(),
                    refusal: refusal.clone(),
                    namespace: namespace.to_owned(),
                }
            }
            (error, _) => error,
        })?;
        let running = Running {
            pods: pods.clone(),
            name: name.clone(),
            pod,
        };
        tokio::select! {
            outcome = work(running) => outcome,
            never = heartbeat(&pods, tool, &name) => match never {},
        }
    };
    let outcome = tokio::select! {
        outcome = session => outcome.map(Ended::Finished),
        signal = signals.next() => Ok(Ended::Interrupted { signal, pod: name.clone() }),
    };
    progress.finish();
    if let Err(error) = delete(&pods, tool, &name, deadline).await {
        progress.warn(&error.to_string());
    }
    outcome
}

/// Creates the helper pod. If the API server refuses it while it names a priority class (a
/// ResourceQuota or admission policy that keeps critical pods out of this namespace, or a class
/// that does not exist), creates it again without one and warns: a helper that may be refused
/// under pressure beats none. Returns the pod and, after such a retry, the class and the
/// refusal. Which part was refused is learned by trying, not by reading the message.
async fn create(
    pods: &Api<Pod>,
    tool: &Tool,
    namespace: &str,
    pod: &Pod,
    progress: &dyn Progress,
) -> Result<(Pod, Option<(String, String)>), Error> {
    let class = pod
        .spec
        .as_ref()
        .and_then(|s| s.priority_class_name.clone());
    let first = match pods.create(&PostParams::default(), pod).await {
        Ok(created) => return Ok((created, None)),
        Err(error) => error,
    };
    let failed = |source: kube::Error| {
        if status::is_not_found(&source) {
            Error::HelperNamespaceMissing {
                namespace: namespace.to_owned(),
                remedy: tool.wording.namespace_missing,
            }
        } else {
            Error::CreateHelperPod {
                namespace: namespace.to_owned(),
                source,
            }
        }
    };
    let Some(class) = class
        .filter(|_| status::is_refusal_of_the_request(&first) && !status::is_not_found(&first))
    else {
        return Err(failed(first));
    };
    let mut plain = pod.clone();
    if let Some(spec) = plain.spec.as_mut() {
        spec.priority_class_name = None;
    }
    match pods.create(&PostParams::default(), &plain).await {
        Ok(created) => {
            let refusal = status::api_status(&first)
                .map(|s| s.message.clone())
                .unwrap_or_else(|| first.to_string());
            progress.warn(&format!(
                "the cluster refused priority class {class} for helper pods in {namespace} ({refusal}); going on without it, so a node under disk or PID pressure may reject the helper pod, and one under memory pressure may evict it early"
            ));
            Ok((created, Some((class, refusal))))
        }
        // Refused without the class too: the class was not the reason.
        Err(error) => Err(failed(error)),
    }
}

/// Refreshes the heartbeat annotation of `name` until cancelled; failures only delay `gc`'s
/// verdict, so they do not end the session.
pub async fn heartbeat(pods: &Api<Pod>, tool: &Tool, name: &str) -> Infallible {
    let mut interval = tokio::time::interval(HEARTBEAT_INTERVAL);
    interval.tick().await; // the pod was created with a fresh heartbeat
    loop {
        interval.tick().await;
        let patch = serde_json::json!({"metadata": {"annotations": {
            tool.heartbeat_annotation: timestamp(chrono::Utc::now()),
        }}});
        if let Err(error) = pods
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!("heartbeat of {name} failed: {error}");
        }
    }
}

/// Deletes the helper pod now (grace period 0: nothing in it needs to shut down); a pod already
/// gone is fine. Fails with [`Error::HelperPodLeft`], which says how it will still go away.
pub async fn delete(
    pods: &Api<Pod>,
    tool: &Tool,
    name: &str,
    deadline: Duration,
) -> Result<(), Error> {
    let params = DeleteParams::default().grace_period(0);
    let why = match tokio::time::timeout(CLEANUP_TIMEOUT, pods.delete(name, &params)).await {
        Ok(Ok(_)) => {
            tracing::debug!("deleted helper pod {name}");
            return Ok(());
        }
        Ok(Err(error)) if status::is_not_found(&error) => return Ok(()),
        Ok(Err(error)) => error.to_string(),
        Err(_) => "timed out".into(),
    };
    Err(Error::HelperPodLeft {
        namespace: pods.namespace().unwrap_or_default().to_owned(),
        name: name.to_owned(),
        why,
        deadline,
        gc_command: tool.wording.gc_command,
    })
}
