//! Helper pods left behind: found by their tool's label, judged by their phase, deadline and
//! heartbeat, and deleted. How they are shown is the tool's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client};

use super::{MANAGED_BY_LABEL, Tool};
use crate::{Error, status};

/// What `gc` makes of one helper pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Its session is running.
    Active,
    /// Already being deleted.
    Terminating,
    /// Its container ended.
    Finished,
    /// Older than its deadline.
    PastDeadline,
    /// Its tool stopped refreshing the heartbeat.
    SessionGone,
}

impl Verdict {
    /// Whether `gc` deletes it (without `--all`).
    pub fn is_leftover(self) -> bool {
        matches!(
            self,
            Verdict::Finished | Verdict::PastDeadline | Verdict::SessionGone
        )
    }

    /// In a word or two, for a table.
    pub fn describe(self) -> &'static str {
        match self {
            Verdict::Active => "active",
            Verdict::Terminating => "terminating",
            Verdict::Finished => "finished",
            Verdict::PastDeadline => "past deadline",
            Verdict::SessionGone => "session gone",
        }
    }
}

/// Judges one helper pod of `tool` at `now`: a heartbeat older than `stale_after` (or, without
/// one, a creation that old) means its session is gone.
pub fn verdict(pod: &Pod, tool: &Tool, now: DateTime<Utc>, stale_after: Duration) -> Verdict {
    if pod.metadata.deletion_timestamp.is_some() {
        return Verdict::Terminating;
    }
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return Verdict::Finished;
    }
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| DateTime::from_timestamp(t.0.as_second(), 0));
    let age = created.map(|c| (now - c).to_std().unwrap_or_default());
    let deadline = pod
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs);
    if let (Some(age), Some(deadline)) = (age, deadline)
        && age > deadline
    {
        return Verdict::PastDeadline;
    }
    let heartbeat = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(tool.heartbeat_annotation))
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.to_utc())
        .or(created);
    match heartbeat {
        Some(beat) if (now - beat).to_std().unwrap_or_default() > stale_after => {
            Verdict::SessionGone
        }
        Some(_) => Verdict::Active,
        None => Verdict::SessionGone,
    }
}

/// What `gc` is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// A heartbeat older than this means the session is gone.
    pub stale_after: Duration,
    /// Delete live sessions too.
    pub all: bool,
    /// Only say what would be deleted.
    pub dry_run: bool,
}

/// What `gc` did with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Left alone (active, or already terminating).
    Kept,
    /// Would be deleted, with `dry_run`.
    WouldDelete,
    /// Deleted now.
    Deleted,
    /// Gone before we could delete it.
    Gone,
    /// The deletion failed, with the API's answer.
    Failed(String),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Kept => f.write_str("kept"),
            Action::WouldDelete => f.write_str("would delete"),
            Action::Deleted => f.write_str("deleted"),
            Action::Gone => f.write_str("gone"),
            Action::Failed(error) => write!(f, "delete failed: {error}"),
        }
    }
}

/// One helper pod as `gc` found and left it.
#[derive(Debug, Clone)]
pub struct Swept {
    /// The pod as listed.
    pub pod: Pod,
    /// What it was.
    pub verdict: Verdict,
    /// What was done.
    pub action: Action,
}

/// Lists the helper pods of `tool` in `namespace` (as far as the caller may list them) and
/// deletes the leftovers (every one but those terminating, with `all`), one after the other.
pub async fn sweep(
    client: &Client,
    tool: &Tool,
    namespace: &str,
    sweep: Sweep,
    now: DateTime<Utc>,
) -> Result<Vec<Swept>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{MANAGED_BY_LABEL}={}", tool.name);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| Error::ListHelperPods {
            namespace: namespace.to_owned(),
            source,
        })?;
    let mut swept = Vec::with_capacity(list.items.len());
    for pod in list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let verdict = verdict(&pod, tool, now, sweep.stale_after);
        let delete = verdict != Verdict::Terminating && (sweep.all || verdict.is_leftover());
        let action = if !delete {
            Action::Kept
        } else if sweep.dry_run {
            Action::WouldDelete
        } else {
            match pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => Action::Deleted,
                Err(error) if status::is_not_found(&error) => Action::Gone,
                Err(error) => Action::Failed(error.to_string()),
            }
        };
        swept.push(Swept {
            pod,
            verdict,
            action,
        });
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper_pod::spec::tests::TOOL;
    use crate::helper_pod::timestamp;

    #[test]
    fn the_heartbeat_is_the_tools_annotation() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .to_utc();
        let pod = |annotation: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": "p",
                    "creationTimestamp": timestamp(now - chrono::Duration::seconds(600)),
                    "annotations": {annotation: timestamp(now - chrono::Duration::seconds(5))},
                },
                "spec": {"containers": [{"name": "c"}]},
            }))
            .expect("pod")
        };
        let stale = Duration::from_secs(180);
        assert_eq!(
            verdict(&pod(TOOL.heartbeat_annotation), &TOOL, now, stale),
            Verdict::Active
        );
        // Another tool's heartbeat does not keep this tool's pod alive.
        assert_eq!(
            verdict(&pod("example.com/other-heartbeat"), &TOOL, now, stale),
            Verdict::SessionGone
        );
        assert_eq!(Action::Failed("x".into()).to_string(), "delete failed: x");
    }
}
