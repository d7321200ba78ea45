//! node-exec's side of waiting for the helper pod: the spinner that shows what happens, and
//! the pod's state read with node-exec's wording. The waiting itself, and what the kubelet's
//! answers mean, is `nodegate_cluster_client::helper_pod::start`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::core::v1::Pod;
use nodegate_cluster_client::helper_pod;

use crate::helper::TOOL;

pub use nodegate_cluster_client::helper_pod::PodState;

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

/// The lifecycle's progress is the spinner; its warnings go to stderr even with `--quiet`,
/// because they tell of a pod left on a node.
impl helper_pod::Progress for Progress {
    fn say(&self, message: String) {
        Progress::say(self, message);
    }

    fn finish(&self) {
        Progress::finish(self);
    }

    fn warn(&self, message: &str) {
        eprintln!("node-exec: {message}");
    }
}

/// Reads the state of node-exec's helper pod, or why it will never run, in node-exec's words.
pub fn pod_state(pod: &Pod, image: &str) -> Result<PodState, nodegate_cluster_client::Error> {
    helper_pod::pod_state(pod, &TOOL, image)
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
