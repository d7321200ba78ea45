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

/// How many times the runtime may fail to create the pod's sandbox before waiting longer only
/// hides the failure (the kubelet retries forever, with back-off).
pub const SANDBOX_FAILURES_TO_GIVE_UP: i32 = 3;

/// What held a helper pod up when it did not start in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stall {
    /// The kubelet never took the pod up: the pod has no `startTime`, the first thing the
    /// kubelet sets. The kubelet is stopped, cannot reach the API server, or its node is gone.
    NotTakenUp,
    /// The container runtime failed to create the pod's sandbox (with the last message).
    Sandbox(String),
    /// The image was still being pulled.
    Pulling,
    /// Something else: the last thing seen.
    Other(String),
}

impl Stall {
    /// Whether more time could help (and so the tool's "raise the timeout" remedy applies).
    pub fn may_pass_with_time(&self) -> bool {
        matches!(self, Stall::Pulling | Stall::Other(_))
    }

    /// The stall in words, for node `node`.
    pub fn describe(&self, node: &str) -> String {
        match self {
            Stall::NotTakenUp => format!(
                "the kubelet on {node} never took it up: is the kubelet running and reaching the API server? (try ssh, or the cloud provider's serial console)"
            ),
            Stall::Sandbox(message) => format!(
                "the container runtime on {node} cannot create the pod's sandbox ({message})"
            ),
            Stall::Pulling => "its image was still being pulled".into(),
            Stall::Other(last) => format!("last: {last}"),
        }
    }
}

/// What was seen of the helper pod and its events while it started: structured fields and the
/// kubelet's event *reasons* (constants of the kubelet), never message texts.
#[derive(Debug, Default)]
pub struct StartSeen {
    taken_up: bool,
    pulling: bool,
    /// `FailedCreatePodSandBox` events by name, with their counts (the recorder aggregates
    /// repeats into one event with a count).
    sandbox_failures: std::collections::BTreeMap<String, i32>,
    sandbox_message: String,
    last: String,
}

impl StartSeen {
    /// Takes in a state of the pod.
    pub fn pod(&mut self, pod: &Pod, what: &str) {
        self.taken_up |= pod.status.as_ref().is_some_and(|s| s.start_time.is_some());
        self.last = what.to_owned();
    }

    /// Takes in one of the pod's events; returns a line for the progress display.
    pub fn event(&mut self, event: &Event) -> String {
        let reason = event.reason.clone().unwrap_or_default();
        let message = event.message.clone().unwrap_or_default();
        // Only the kubelet posts events about a pod bound to a node, so one is a sign of life.
        self.taken_up = true;
        match reason.as_str() {
            "Pulling" => self.pulling = true,
            "Pulled" | "Created" | "Started" => self.pulling = false,
            "FailedCreatePodSandBox" => {
                let name = event.metadata.name.clone().unwrap_or_default();
                self.sandbox_failures
                    .insert(name, event.count.unwrap_or(1).max(1));
                self.sandbox_message = message.clone();
            }
            _ => {}
        }
        self.last = format!("{reason}: {message}");
        self.last.clone()
    }

    /// How often the sandbox failed so far.
    pub fn sandbox_failures(&self) -> i32 {
        self.sandbox_failures.values().sum()
    }

    /// What held the pod up.
    pub fn stall(&self) -> Stall {
        if !self.taken_up {
            Stall::NotTakenUp
        } else if self.sandbox_failures() > 0 {
            Stall::Sandbox(self.sandbox_message.clone())
        } else if self.pulling {
            Stall::Pulling
        } else {
            Stall::Other(self.last.clone())
        }
    }
}

/// Waits until the helper pod `created` runs, following its events on `progress`, for at most
/// `timeout` ([`Error::HelperStartTimeout`], saying what held it up). A sandbox the runtime keeps
/// failing to create ends the wait early ([`Error::HelperSandbox`]).
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
    let mut seen = StartSeen::default();
    seen.pod(created, &format!("waiting for the kubelet on {node}"));
    progress.say(format!("{name}: waiting for the kubelet on {node}"));
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
    let timed_out = |node: String, seen: &StartSeen| Error::HelperStartTimeout {
        node,
        timeout,
        stall: seen.stall(),
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
                    return Err(timed_out(node, &seen));
                }
                event = events.next() => match event {
                    Some(Ok(WatchEvent::Added(event) | WatchEvent::Modified(event))) => {
                        let line = seen.event(&event);
                        progress.say(format!("{name}: {line}"));
                        if seen.sandbox_failures() >= SANDBOX_FAILURES_TO_GIVE_UP {
                            return Err(Error::HelperSandbox {
                                node,
                                failures: seen.sandbox_failures(),
                                message: event.message.unwrap_or_default(),
                            });
                        }
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
                                seen.pod(&pod, &what);
                                progress.say(format!("{name}: {what}"));
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
                        match pod_state(&pod, tool, image)? {
                            PodState::Running => return Ok(pod),
                            PodState::Pending(what) => seen.pod(&pod, &what),
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
            stall: Stall::Other("ContainerCreating m".into()),
            remedy: TOOL.wording.start_timeout,
        };
        assert_eq!(
            timeout.to_string(),
            "the helper pod did not start within 2m (last: ContainerCreating m); Raise --start-timeout"
        );
    }

    fn event(name: &str, reason: &str, count: i32) -> Event {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "involvedObject": {"name": "h"},
            "reason": reason,
            "message": format!("{reason} says"),
            "count": count,
        }))
        .expect("event")
    }

    #[test]
    fn a_pod_the_kubelet_never_took_up_is_said_so_without_the_timeout_remedy() {
        let mut seen = StartSeen::default();
        seen.pod(
            &pod(serde_json::json!({"phase": "Pending"})),
            "pod Pending on n1",
        );
        assert_eq!(seen.stall(), Stall::NotTakenUp);
        let timeout = Error::HelperStartTimeout {
            node: "n1".into(),
            timeout: Duration::from_secs(5),
            stall: seen.stall(),
            remedy: TOOL.wording.start_timeout,
        };
        assert_eq!(
            timeout.to_string(),
            "the helper pod did not start within 5s (the kubelet on n1 never took it up: is the kubelet running and reaching the API server? (try ssh, or the cloud provider's serial console))"
        );
    }

    #[test]
    fn the_kubelets_structured_answers_say_what_held_the_pod_up() {
        // Taken up (startTime set), then the image pull.
        let mut seen = StartSeen::default();
        seen.pod(
            &pod(serde_json::json!({"phase": "Pending", "startTime": "2026-12-01T10:00:00Z"})),
            "pod Pending on n1",
        );
        assert_eq!(seen.stall(), Stall::Other("pod Pending on n1".into()));
        seen.event(&event("e1", "Pulling", 1));
        assert_eq!(seen.stall(), Stall::Pulling);
        assert!(seen.stall().may_pass_with_time());
        seen.event(&event("e2", "Pulled", 1));
        assert_eq!(seen.stall(), Stall::Other("Pulled: Pulled says".into()));

        // An event alone is a sign of life; sandbox failures count with their repeats.
        let mut seen = StartSeen::default();
        seen.event(&event("s1", "FailedCreatePodSandBox", 1));
        assert_eq!(seen.sandbox_failures(), 1);
        seen.event(&event("s1", "FailedCreatePodSandBox", 2));
        assert_eq!(seen.sandbox_failures(), 2);
        seen.event(&event("s2", "FailedCreatePodSandBox", 1));
        assert_eq!(seen.sandbox_failures(), SANDBOX_FAILURES_TO_GIVE_UP);
        assert_eq!(
            seen.stall(),
            Stall::Sandbox("FailedCreatePodSandBox says".into())
        );
        assert!(!seen.stall().may_pass_with_time());
    }
}
