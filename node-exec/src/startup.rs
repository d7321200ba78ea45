//! Waiting for the helper pod to run, showing what happens meanwhile, and failing clearly.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{WatchEvent, WatchParams};

/// Why the helper pod did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node cannot get the helper image.
    #[error(
        "node {node} cannot pull the helper image {image} ({reason}: {message}); on an air-gapped cluster mirror it and pass --image (or set image in ~/.config/nodegate/node-exec.toml)"
    )]
    ImagePull {
        /// The node.
        node: String,
        /// The image.
        image: String,
        /// The kubelet's reason (ErrImagePull, ImagePullBackOff, ...).
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// The container could not be created or started.
    #[error("the helper pod cannot start its container ({reason}: {message})")]
    Container {
        /// The kubelet's reason.
        reason: String,
        /// The kubelet's message.
        message: String,
    },
    /// The pod ended (rejected by the kubelet, deadline, or deleted) before it ran.
    #[error("the helper pod ended before it ran: {0}")]
    Ended(String),
    /// Nothing conclusive happened in time.
    #[error(
        "the helper pod did not start within {} (last: {last}); is the kubelet on {node} working? Raise --start-timeout for slow image pulls",
        humantime::format_duration(*.timeout)
    )]
    Timeout {
        /// The node.
        node: String,
        /// The timeout.
        timeout: Duration,
        /// The last thing seen.
        last: String,
    },
    /// The API server failed while we watched.
    #[error("watching the helper pod failed: {0}")]
    Watch(#[source] kube::Error),
}

/// A spinner on stderr, silent when stderr is not a terminal or with `--quiet`.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A spinner, hidden if `quiet`.
    pub fn new(quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar }
    }

    /// Shows what is happening now.
    pub fn say(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::debug!("{message}");
        self.bar.set_message(message);
    }

    /// Removes the spinner line.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// What a pod's status says about its start.
#[derive(Debug, PartialEq, Eq)]
pub enum PodState {
    /// The container runs: time to exec.
    Running,
    /// Still on its way, with what it is doing.
    Pending(String),
}

/// Reads the state of the helper pod, or why it will never run.
pub fn pod_state(pod: &Pod, image: &str) -> Result<PodState, StartError> {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.clone().unwrap_or_else(|| "Pending".into());
    if phase == "Failed" || phase == "Succeeded" {
        let why = [status.reason.clone(), status.message.clone()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
        return Err(StartError::Ended(if why.is_empty() { phase } else { why }));
    }
    let container = status
        .container_statuses
        .as_ref()
        .and_then(|statuses| statuses.first())
        .and_then(|s| s.state.clone());
    if let Some(state) = container {
        if state.running.is_some() {
            return Ok(PodState::Running);
        }
        if let Some(terminated) = state.terminated {
            return Err(StartError::Ended(format!(
                "container exited with {} ({})",
                terminated.exit_code,
                terminated.reason.unwrap_or_default()
            )));
        }
        if let Some(waiting) = state.waiting {
            let reason = waiting.reason.unwrap_or_default();
            let message = waiting.message.unwrap_or_default();
            match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => {
                    return Err(StartError::ImagePull {
                        node,
                        image: image.to_owned(),
                        reason,
                        message,
                    });
                }
                "CreateContainerError"
                | "CreateContainerConfigError"
                | "RunContainerError"
                | "CrashLoopBackOff" => return Err(StartError::Container { reason, message }),
                "" => {}
                _ => {
                    return Ok(PodState::Pending(
                        format!("{reason} {message}").trim().to_owned(),
                    ));
                }
            }
        }
    }
    Ok(PodState::Pending(format!("pod {phase} on {node}")))
}

/// Waits until the helper pod `name` runs, following its events on the spinner.
pub async fn wait_running(
    pods: &Api<Pod>,
    events: &Api<Event>,
    created: &Pod,
    image: &str,
    timeout: Duration,
    progress: &Progress,
) -> Result<Pod, StartError> {
    let name = created.metadata.name.clone().unwrap_or_default();
    let node = created
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = format!("waiting for the kubelet on {node}");
    progress.say(format!("{name}: {last}"));
    let event_params = WatchParams::default().fields(&format!("involvedObject.name={name}"));
    let mut events = match events.watch(&event_params, "0").await {
        Ok(stream) => stream.boxed(),
        // Events only decorate the spinner: without them, we still wait for the pod.
        Err(error) => {
            tracing::debug!("cannot watch events: {error}");
            futures::stream::pending().boxed()
        }
    };
    let mut version = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    loop {
        let pod_params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut watch = pods
            .watch(&pod_params, &version)
            .await
            .map_err(StartError::Watch)?
            .boxed();
        let mut restart = false;
        while !restart {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(StartError::Timeout { node, timeout, last });
                }
                event = events.next() => match event {
                    Some(Ok(WatchEvent::Added(event) | WatchEvent::Modified(event))) => {
                        let reason = event.reason.unwrap_or_default();
                        let message = event.message.unwrap_or_default();
                        last = format!("{reason}: {message}");
                        progress.say(format!("{name}: {last}"));
                    }
                    Some(_) => {}
                    None => events = futures::stream::pending().boxed(),
                },
                update = watch.try_next() => match update {
                    Ok(Some(WatchEvent::Added(pod) | WatchEvent::Modified(pod))) => {
                        version = pod.metadata.resource_version.clone().unwrap_or_default();
                        match pod_state(&pod, image)? {
                            PodState::Running => return Ok(pod),
                            PodState::Pending(what) => {
                                last = what;
                                progress.say(format!("{name}: {last}"));
                            }
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => {
                        return Err(StartError::Ended("it was deleted".into()));
                    }
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    // The watch expired or its version is too old: read the pod afresh.
                    Ok(Some(WatchEvent::Error(_))) | Ok(None) => {
                        let pod = pods.get(&name).await.map_err(StartError::Watch)?;
                        version = pod.metadata.resource_version.clone().unwrap_or_default();
                        if pod_state(&pod, image)? == PodState::Running {
                            return Ok(pod);
                        }
                        restart = true;
                    }
                    Err(error) => return Err(StartError::Watch(error)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": status,
        }))
        .expect("pod")
    }

    #[test]
    fn image_pull_failures_name_the_image_and_the_remedy() {
        let p = pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}}}]}),
        );
        let err = pod_state(&p, "busybox:1").expect_err("pull failure");
        let text = err.to_string();
        assert!(
            text.contains("busybox:1") && text.contains("--image"),
            "{text}"
        );
    }

    #[test]
    fn running_pending_and_ended() {
        let running = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "c", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
            "state": {"running": {}}}]}),
        );
        assert_eq!(pod_state(&running, "x").ok(), Some(PodState::Running));
        let pending = pod(serde_json::json!({"phase": "Pending"}));
        assert!(matches!(pod_state(&pending, "x"), Ok(PodState::Pending(_))));
        let failed = pod(serde_json::json!({"phase": "Failed", "reason": "DeadlineExceeded"}));
        let err = pod_state(&failed, "x").expect_err("ended");
        assert!(err.to_string().contains("DeadlineExceeded"), "{err}");
    }
}
