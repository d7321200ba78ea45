//! `node-exec gc`: helper pods left behind, listed and deleted. Finding and judging them (by
//! label, phase, deadline and heartbeat) is `nodegate_cluster_client::helper_pod::gc`; the
//! table is node-exec's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use comfy_table::Table;
use k8s_openapi::api::core::v1::Pod;
use nodegate_cluster_client::ClientOptions;
use nodegate_cluster_client::helper_pod::gc::{self, Action, Sweep};

use crate::cli::GcArgs;
use crate::config::Settings;
use crate::helper;

pub use nodegate_cluster_client::helper_pod::gc::Verdict;

/// Judges one of node-exec's helper pods at `now`.
pub fn verdict(pod: &Pod, now: DateTime<Utc>, stale_after: Duration) -> Verdict {
    gc::verdict(pod, &helper::TOOL, now, stale_after)
}

/// Lists helper pods, deletes the leftovers (all with `--all`), prints a table; exit code 0,
/// or 1 if a deletion failed.
pub async fn run(
    options: &ClientOptions,
    settings: &Settings,
    args: &GcArgs,
) -> anyhow::Result<u8> {
    let client = options.client().await?;
    let now = Utc::now();
    let sweep = Sweep {
        stale_after: args.stale_after,
        all: args.all,
        dry_run: args.dry_run,
    };
    let swept = gc::sweep(
        &client,
        &helper::TOOL,
        &settings.helper_namespace,
        sweep,
        now,
    )
    .await?;
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["POD", "NODE", "USER", "TARGET", "AGE", "STATE", "ACTION"]);
    let deleted = swept.iter().filter(|s| s.action == Action::Deleted).count();
    let failed = swept
        .iter()
        .filter(|s| matches!(s.action, Action::Failed(_)))
        .count();
    for gc::Swept {
        pod,
        verdict,
        action,
    } in &swept
    {
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
            pod.metadata.name.clone().unwrap_or_default(),
            pod.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            annotation(helper::CALLER_ANNOTATION),
            annotation(helper::TARGET_ANNOTATION),
            age,
            verdict.describe().to_owned(),
            action.to_string(),
        ]);
    }
    if swept.is_empty() {
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
