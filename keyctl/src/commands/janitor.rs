//! `keyctl janitor`: runs in the cluster, watches Nodes, and removes grants as they expire,
//! recording an Event for each. Nodes stop accepting expired keys on their own; the janitor
//! keeps Node objects tidy and the annotation budget free.
//!
//! An annotation the API server refuses to let go (an admission policy, say) is reported once,
//! with the server's reason, and left alone for a while, longer each time it is refused again;
//! it never holds up the other removals on its node, and never makes the janitor spin.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

use crate::cli::JanitorArgs;
use crate::commands::remove::{
    Choice, ExpiredChoice, NodeRemoval, Removed, describe_refusal, remove_from_node,
};
use crate::events::{AuditTrail, GrantChange};
use crate::nodes::{self, NodeMeta};
use crate::session::Session;

/// Stops the janitor at its start, with what to apply, when its ServiceAccount may not patch
/// Nodes or remove grants on all of them (`prune` or `write grants.nodegate.dev`): under the
/// admission guard, every removal would be refused otherwise, one warning at a time.
async fn require_janitor_rights(session: &Session, caller: &str) -> anyhow::Result<()> {
    use nodegate_cluster_client::access::allowed;
    let needs: [&[nodegate_cluster_client::Permission]; 2] = [
        &[crate::access::PATCH_NODES],
        &[crate::access::PRUNE_GRANTS, crate::access::WRITE_GRANTS],
    ];
    for alternatives in needs {
        let mut any = false;
        for permission in alternatives {
            if allowed(&session.client, permission).await? {
                any = true;
                break;
            }
        }
        if !any {
            let first = &alternatives[0];
            anyhow::bail!(
                "the janitor ({caller}) may not {} {} on all nodes.\nApply packaging/janitor.yaml: its ClusterRole nodegate-janitor grants patch nodes and prune grants.nodegate.dev, bound to the ServiceAccount nodegate-system/nodegate-janitor",
                first.verb,
                crate::access::describe_resource(first)
            );
        }
    }
    Ok(())
}

/// Runs until the watch cannot be resumed or a signal arrives; returns whether it ended cleanly.
pub async fn run(session: &Session, args: &JanitorArgs) -> anyhow::Result<bool> {
    let api = session.nodes();
    let metadata_api: kube::Api<NodeMeta> = kube::Api::all(session.client.clone());
    let caller = session.caller().await;
    require_janitor_rights(session, &caller).await?;
    let trail = AuditTrail::new(session.client.clone(), &caller, super::grant::hostname());
    // The server ends each watch before the client's read timeout (60 s) would, so a quiet
    // cluster does not look like a broken connection.
    let mut config = watcher::Config::default().timeout(50);
    if let Some(selector) = &args.selector {
        config = config.labels(selector);
    }
    let mut events = watcher::watcher(metadata_api, config)
        .default_backoff()
        .boxed();
    let mut known: BTreeMap<String, NodeMeta> = BTreeMap::new();
    let mut held = HeldBackRemovals::new();
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = Box::pin(shutdown_signal());
    tracing::info!(
        "janitor started as {caller}: removing expired grants under {} every {} and on every Node change",
        session.prefix,
        humantime::format_duration(args.interval)
    );
    loop {
        let changed: Vec<NodeMeta> = tokio::select! {
            _ = &mut stop => {
                tracing::info!("janitor stopping");
                return Ok(true);
            }
            _ = tick.tick() => known.values().cloned().collect(),
            event = events.next() => match event {
                None => anyhow::bail!("the Node watch ended"),
                Some(Err(error)) => {
                    tracing::warn!("watching Nodes: {error}; retrying");
                    continue;
                }
                Some(Ok(Event::Apply(node) | Event::InitApply(node))) => {
                    known.insert(nodes::node_name(&node), node.clone());
                    vec![node]
                }
                Some(Ok(Event::Delete(node))) => {
                    let name = nodes::node_name(&node);
                    held.retain(|(held_node, _), _| held_node != &name);
                    known.remove(&name);
                    continue;
                }
                Some(Ok(Event::Init | Event::InitDone)) => continue,
            },
        };
        let choice = JanitorChoice {
            expired: ExpiredChoice {
                now: Utc::now(),
                invalid: args.invalid,
            },
            held: &held,
            now: Instant::now(),
        };
        let mut results = Vec::new();
        for node in changed {
            let name = nodes::node_name(&node);
            let annotations: BTreeMap<String, String> = nodes::annotations(&node)
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let removal = remove_from_node(
                &api,
                node,
                &session.prefix,
                &choice,
                false,
                Some((&trail, GrantChange::Expired)),
            )
            .await;
            results.push((name, annotations, removal));
        }
        for (name, annotations, removal) in results {
            // What is no longer on the node (removed at last, or changed) is not held back: the
            // node as read before this pass tells, so an entry goes at the node's next pass.
            held.retain(|(node, key), h| node != &name || annotations.get(key) == Some(&h.value));
            log_removal(&name, &removal);
            note_refusals(&mut held, &name, removal);
        }
    }
}

/// An annotation the server refused to remove, and when to try it again.
#[derive(Debug)]
struct HeldBack {
    value: String,
    reason: String,
    retry_at: Instant,
    wait: Duration,
}

/// The first wait before trying a refused removal again; it doubles up to [`LONGEST_WAIT`].
const FIRST_WAIT: Duration = Duration::from_secs(60);
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Held-back removals, by node and annotation key.
type HeldBackRemovals = BTreeMap<(String, String), HeldBack>;

/// Expired grants (and invalid annotations if asked), except refused ones still waiting.
struct JanitorChoice<'a> {
    expired: ExpiredChoice,
    held: &'a HeldBackRemovals,
    now: Instant,
}

impl Choice for JanitorChoice<'_> {
    fn takes_grant(&self, grant: &nodegate_core::Grant) -> bool {
        self.expired.takes_grant(grant)
    }

    fn takes_invalid(&self) -> bool {
        self.expired.takes_invalid()
    }

    fn holds_back(&self, node: &str, key: &str, value: &str) -> bool {
        self.held
            .get(&(node.to_owned(), key.to_owned()))
            .is_some_and(|h| h.value == value && self.now < h.retry_at)
    }
}

fn log_removal(name: &str, removal: &NodeRemoval) {
    for item in &removal.removed {
        match item {
            Removed::Grant(grant) => tracing::info!(
                node = %name,
                user = %grant.user,
                fingerprint = %grant.key.fingerprint(),
                "removed expired grant (expiry {})",
                grant.expiry
            ),
            Removed::Invalid { name: annotation } => {
                tracing::info!(node = %name, "removed invalid grant annotation {annotation:?}")
            }
        }
    }
}

/// Remembers refused removals: the first refusal (or a new reason) is logged as a warning, with
/// when it will be tried again; the same refusal again only lengthens the wait.
fn note_refusals(held: &mut HeldBackRemovals, name: &str, removal: NodeRemoval) {
    let now = Instant::now();
    for refusal in removal.refused {
        let slot = (name.to_owned(), refusal.key.clone());
        let wait = match held.get(&slot) {
            Some(before) if before.value == refusal.value && before.reason == refusal.reason => {
                let wait = (before.wait * 2).min(LONGEST_WAIT);
                tracing::debug!(
                    node = %name,
                    "{} (again; next try in {})",
                    describe_refusal(&refusal),
                    humantime::format_duration(wait)
                );
                wait
            }
            _ => {
                tracing::warn!(
                    node = %name,
                    "{}; leaving it for now, next try in {} (the other removals go on)",
                    describe_refusal(&refusal),
                    humantime::format_duration(FIRST_WAIT)
                );
                FIRST_WAIT
            }
        };
        held.insert(
            slot,
            HeldBack {
                value: refusal.value,
                reason: refusal.reason,
                retry_at: now + wait,
                wait,
            },
        );
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()).context("SIGTERM handler") else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::remove::Refusal;

    fn refusal(key: &str, value: &str, reason: &str) -> Refusal {
        Refusal {
            what: Removed::Invalid {
                name: key.rsplit('/').next().unwrap_or(key).to_owned(),
            },
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn refused(refusals: Vec<Refusal>) -> NodeRemoval {
        NodeRemoval {
            removed: Vec::new(),
            refused: refusals,
        }
    }

    fn choice(held: &HeldBackRemovals, now: Instant) -> JanitorChoice<'_> {
        JanitorChoice {
            expired: ExpiredChoice {
                now: Utc::now(),
                invalid: true,
            },
            held,
            now,
        }
    }

    #[test]
    fn a_refused_removal_waits_longer_each_time_it_is_refused_the_same_way() {
        let mut held = HeldBackRemovals::new();
        let key = "ssh.nodegate.dev/g.root.x";
        note_refusals(&mut held, "n1", refused(vec![refusal(key, "v", "denied")]));
        let slot = ("n1".to_owned(), key.to_owned());
        assert_eq!(held[&slot].wait, FIRST_WAIT);
        let start = Instant::now();
        assert!(choice(&held, start).holds_back("n1", key, "v"));
        assert!(
            !choice(&held, start).holds_back("n2", key, "v"),
            "other node"
        );
        assert!(
            !choice(&held, start).holds_back("n1", key, "v2"),
            "a changed value is tried at once"
        );
        assert!(
            !choice(&held, start + FIRST_WAIT + Duration::from_secs(1)).holds_back("n1", key, "v")
        );

        for expected in [2, 4, 8, 16, 32, 60, 60] {
            note_refusals(&mut held, "n1", refused(vec![refusal(key, "v", "denied")]));
            assert_eq!(held[&slot].wait, Duration::from_secs(expected * 60));
        }
        // Another reason is news: reported again, and the wait starts over.
        note_refusals(
            &mut held,
            "n1",
            refused(vec![refusal(key, "v", "webhook down")]),
        );
        assert_eq!(held[&slot].wait, FIRST_WAIT);
        assert_eq!(held[&slot].reason, "webhook down");
    }
}
