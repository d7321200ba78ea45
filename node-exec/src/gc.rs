//! `node-exec gc`: helper pods left behind, listed and deleted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::Table;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use nodegate_cluster_client::{ClientOptions, status};

use crate::cli::GcArgs;
use crate::config::Settings;
use crate::helper;

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
    /// Its node-exec stopped refreshing the heartbeat.
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

    fn describe(self) -> &'static str {
        match self {
            Verdict::Active => "active",
            Verdict::Terminating => "terminating",
            Verdict::Finished => "finished",
            Verdict::PastDeadline => "past deadline",
            Verdict::SessionGone => "session gone",
        }
    }
}

/// Judges one helper pod at `now`.
pub fn verdict(pod: &Pod, now: DateTime<Utc>, stale_after: Duration) -> Verdict {
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
        .and_then(|a| a.get(helper::HEARTBEAT_ANNOTATION))
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

/// Lists helper pods, deletes the leftovers (all with `--all`), prints a table; exit code 0.
pub async fn run(
    options: &ClientOptions,
    settings: &Settings,
    args: &GcArgs,
) -> anyhow::Result<u8> {
    use anyhow::Context as _;
    let client = options.client().await?;
    let pods: Api<Pod> = Api::namespaced(client, &settings.helper_namespace);
    let selector = format!("{}={}", helper::MANAGED_BY_LABEL, helper::MANAGED_BY);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .with_context(|| format!("listing helper pods in {}", settings.helper_namespace))?;
    let now = Utc::now();
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["POD", "NODE", "USER", "TARGET", "AGE", "STATE", "ACTION"]);
    let mut deleted = 0usize;
    let mut failed = 0usize;
    for pod in &list.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let verdict = verdict(pod, now, args.stale_after);
        let delete = verdict != Verdict::Terminating && (args.all || verdict.is_leftover());
        let action = if !delete {
            "kept".to_owned()
        } else if args.dry_run {
            "would delete".to_owned()
        } else {
            match pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await
            {
                Ok(_) => {
                    deleted += 1;
                    "deleted".to_owned()
                }
                Err(error) if status::is_not_found(&error) => "gone".to_owned(),
                Err(error) => {
                    failed += 1;
                    format!("delete failed: {error}")
                }
            }
        };
        let annotation = |key: &str| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .cloned()
                .unwrap_or_default()
        };
        let age = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| {
                let secs = (now.timestamp() - t.0.as_second()).max(0);
                humantime::format_duration(Duration::from_secs(secs as u64)).to_string()
            })
            .unwrap_or_default();
        table.add_row([
            name,
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            annotation(helper::CALLER_ANNOTATION),
            annotation(helper::TARGET_ANNOTATION),
            age,
            verdict.describe().to_owned(),
            action,
        ]);
    }
    if list.items.is_empty() {
        println!("no helper pods in {}", settings.helper_namespace);
        return Ok(0);
    }
    println!("{table}");
    if !args.dry_run {
        println!("deleted {deleted} helper pod(s)");
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(age_secs: i64, heartbeat_secs_ago: Option<i64>, phase: &str) -> (Pod, DateTime<Utc>) {
        let now = DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
            .expect("time")
            .to_utc();
        let mut annotations = serde_json::Map::new();
        if let Some(ago) = heartbeat_secs_ago {
            annotations.insert(
                helper::HEARTBEAT_ANNOTATION.into(),
                helper::timestamp(now - chrono::Duration::seconds(ago)).into(),
            );
        }
        let pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p",
                "creationTimestamp": helper::timestamp(now - chrono::Duration::seconds(age_secs)),
                "annotations": annotations,
            },
            "spec": {"activeDeadlineSeconds": 3600, "containers": [{"name": "c"}]},
            "status": {"phase": phase},
        }))
        .expect("pod");
        (pod, now)
    }

    #[test]
    fn leftovers_are_finished_expired_or_silent() {
        let stale = Duration::from_secs(180);
        let (p, now) = pod(60, Some(10), "Running");
        assert_eq!(verdict(&p, now, stale), Verdict::Active);
        let (p, now) = pod(600, Some(500), "Running");
        assert_eq!(verdict(&p, now, stale), Verdict::SessionGone);
        let (p, now) = pod(600, None, "Running");
        assert_eq!(verdict(&p, now, stale), Verdict::SessionGone);
        let (p, now) = pod(4000, Some(5), "Running");
        assert_eq!(verdict(&p, now, stale), Verdict::PastDeadline);
        let (p, now) = pod(10, Some(5), "Succeeded");
        assert_eq!(verdict(&p, now, stale), Verdict::Finished);
        assert!(!Verdict::Active.is_leftover());
    }
}
