//! Waiting for the helper pod to run, showing what happens meanwhile, and turning what the
//! kubelet does with it into clear errors.

use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Api;
use kube::api::{WatchEvent, WatchParams};

use super::{Progress, Tool};
use crate::Error;

/// What a pod's status says about its start.
#[derive(Debug, PartialEq, Eq)]
pub enum PodState {
    /// The container runs: time to use it.
    Running,
    /// Still on its way, with what it is doing.
    Pending(String),
}

/// Reads the state of the helper pod, or why it will never run: [`Error::HelperImagePull`],
/// [`Error::HelperContainer`] or [`Error::HelperEnded`].
pub fn pod_state(pod: &Pod, tool: &Tool, image: &str) -> Result<PodState, Error> {
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
        return Err(Error::HelperEnded(if why.is_empty() { phase } else { why }));
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
            return Err(Error::HelperEnded(format!(
                "container exited with {} ({})",
                terminated.exit_code,
                terminated.reason.unwrap_or_default()
            )));
        }
        if let Some(waiting) = state.waiting {
            let reason = waiting.reason.unwrap_or_default();
            let message = waiting.message.unwrap_or_default();
            // The kubelet retries these forever (with back-off): waiting longer only hides them.
            match reason.as_str() {
                "ErrImagePull" | "ImagePullBackOff" | "ErrImageNeverPull" | "InvalidImageName" => {
                    return Err(Error::HelperImagePull {
                        node,
                        image: image.to_owned(),
                        reason,
                        message,
                        remedy: tool.wording.image_pull,
                    });
                }
                "CreateContainerError"
                | "CreateContainerConfigError"
                | "RunContainerError"
                | "CrashLoopBackOff" => return Err(Error::HelperContainer { reason, message }),
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

/// Waits until the helper pod `created` runs, following its events on `progress`, for at most
/// `timeout` ([`Error::HelperStartTimeout`] then).
pub async fn wait_running(
    pods: &Api<Pod>,
    events: &Api<Event>,
    created: &Pod,
    tool: &Tool,
    image: &str,
    timeout: Duration,
    progress: &dyn Progress,
) -> Result<Pod, Error> {
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
        // Events only decorate the progress: without them, we still wait for the pod.
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
    let timed_out = |node: String, last: String| Error::HelperStartTimeout {
        node,
        timeout,
        last,
        remedy: tool.wording.start_timeout,
    };
    loop {
        let pod_params = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(60);
        let mut watch = pods
            .watch(&pod_params, &version)
            .await
            .map_err(Error::HelperWatch)?
            .boxed();
        let mut restart = false;
        while !restart {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(timed_out(node, last));
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
                        match pod_state(&pod, tool, image)? {
                            PodState::Running => return Ok(pod),
                            PodState::Pending(what) => {
                                last = what;
                                progress.say(format!("{name}: {last}"));
                            }
                        }
                    }
                    Ok(Some(WatchEvent::Deleted(_))) => {
                        return Err(Error::HelperEnded("it was deleted".into()));
                    }
                    Ok(Some(WatchEvent::Bookmark(_))) => {}
                    // The watch expired or its version is too old: read the pod afresh.
                    Ok(Some(WatchEvent::Error(_))) | Ok(None) => {
                        let pod = pods.get(&name).await.map_err(Error::HelperWatch)?;
                        version = pod.metadata.resource_version.clone().unwrap_or_default();
                        if pod_state(&pod, tool, image)? == PodState::Running {
                            return Ok(pod);
                        }
                        restart = true;
                    }
                    Err(error) => return Err(Error::HelperWatch(error)),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper_pod::spec::tests::TOOL;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "h"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": status,
        }))
        .expect("pod")
    }

    fn waiting(reason: &str) -> Pod {
        pod(
            serde_json::json!({"phase": "Pending", "containerStatuses": [{
            "name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": reason, "message": "m"}}}]}),
        )
    }

    #[test]
    fn the_kubelets_answers_become_errors_with_the_tools_remedy() {
        let err = pod_state(&waiting("ImagePullBackOff"), &TOOL, "img:1").expect_err("pull");
        assert_eq!(
            err.to_string(),
            "node n1 cannot pull the helper image img:1 (ImagePullBackOff: m); pass --image"
        );
        let err = pod_state(&waiting("CreateContainerError"), &TOOL, "x").expect_err("create");
        assert_eq!(
            err.to_string(),
            "the helper pod cannot start its container (CreateContainerError: m)"
        );
        assert_eq!(
            pod_state(&waiting("ContainerCreating"), &TOOL, "x").ok(),
            Some(PodState::Pending("ContainerCreating m".into()))
        );
        let exited = pod(
            serde_json::json!({"phase": "Running", "containerStatuses": [{
            "name": "c", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}]}),
        );
        let err = pod_state(&exited, &TOOL, "x").expect_err("exited");
        assert_eq!(
            err.to_string(),
            "the helper pod ended before it ran: container exited with 2 (Error)"
        );
        let timeout = Error::HelperStartTimeout {
            node: "n1".into(),
            timeout: Duration::from_secs(120),
            last: "pod Pending on n1".into(),
            remedy: TOOL.wording.start_timeout,
        };
        assert_eq!(
            timeout.to_string(),
            "the helper pod did not start within 2m (last: pod Pending on n1); is the kubelet on n1 working? Raise --start-timeout"
        );
    }
}
