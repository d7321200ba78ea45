//! Working on many nodes at once: bounded concurrency, a progress bar on terminals, and a
//! result per node so that one failing node never hides the others.

use std::future::Future;
use std::time::Duration;

use futures::{StreamExt as _, stream};
use indicatif::{ProgressBar, ProgressStyle};

use crate::nodes::{NodeMeta, Resolved, describe_read_error, node_name};

/// What happened on one node.
#[derive(Debug)]
pub struct Outcome<T> {
    /// The node.
    pub node: String,
    /// What the work returned, or why it failed.
    pub result: anyhow::Result<T>,
}

/// Runs `work` on every node found, `concurrency` at a time, and turns named nodes that could
/// not be read into failures. Outcomes come back sorted by node name.
pub async fn run<T, F, Fut>(
    resolved: Resolved,
    concurrency: usize,
    what: &str,
    work: F,
) -> Vec<Outcome<T>>
where
    F: Fn(NodeMeta) -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let total = resolved.found.len() as u64;
    let progress = progress_bar(total, what);
    let mut outcomes: Vec<Outcome<T>> = stream::iter(resolved.found.into_values())
        .map(|node| {
            let name = node_name(&node);
            let fut = work(node);
            let progress = &progress;
            async move {
                let result = fut.await;
                progress.inc(1);
                Outcome { node: name, result }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    progress.finish_and_clear();
    outcomes.extend(resolved.missing.into_iter().map(|(node, error)| Outcome {
        node,
        result: Err(anyhow::anyhow!(describe_read_error(&error))),
    }));
    outcomes.sort_by(|a, b| a.node.cmp(&b.node));
    outcomes
}

/// A progress bar on stderr, only when there is more than one node (it hides itself when
/// stderr is not a terminal).
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    if total <= 1 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:30}] {pos}/{len} nodes ({elapsed})")
            .expect("valid progress template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// How many outcomes to print one by one before summarizing.
const LISTED: usize = 20;

/// Prints what happened: each node's line when few, a count when many, and every failure.
/// Returns whether every node succeeded.
pub fn report<T>(outcomes: &[Outcome<T>], describe: impl Fn(&str, &T) -> Vec<String>) -> bool {
    report_partial(outcomes, |node, value| (describe(node, value), Vec::new()))
}

/// Like [`report`], for work that can succeed in part on a node: `describe` gives a node's
/// lines and its failures, and a node with any failure counts as failed (its lines are still
/// printed: what was done is done).
pub fn report_partial<T>(
    outcomes: &[Outcome<T>],
    describe: impl Fn(&str, &T) -> (Vec<String>, Vec<String>),
) -> bool {
    let mut lines = Vec::new();
    let mut failures: Vec<(&str, String)> = Vec::new();
    let mut failed_nodes = 0;
    for outcome in outcomes {
        match &outcome.result {
            Ok(value) => {
                let (done, failed) = describe(&outcome.node, value);
                lines.extend(done);
                if !failed.is_empty() {
                    failed_nodes += 1;
                }
                failures.extend(failed.into_iter().map(|f| (outcome.node.as_str(), f)));
            }
            Err(error) => {
                failed_nodes += 1;
                failures.push((
                    &outcome.node,
                    nodegate_cluster_client::render(error.as_ref()),
                ));
            }
        }
    }
    if lines.len() <= LISTED {
        for line in &lines {
            println!("{line}");
        }
    } else {
        for line in &lines[..LISTED] {
            println!("{line}");
        }
        println!(
            "... and {} more lines (use keyctl list to see every grant)",
            lines.len() - LISTED
        );
    }
    for (node, failure) in &failures {
        eprintln!("error: node {node}: {failure}");
    }
    if failed_nodes > 0 {
        eprintln!(
            "{} of {} nodes failed; {} succeeded",
            failed_nodes,
            outcomes.len(),
            outcomes.len() - failed_nodes
        );
    }
    failed_nodes == 0
}
