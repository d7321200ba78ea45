//! `keyctl janitor`: runs in the cluster, watches Nodes, and removes grants as they expire,
//! recording an Event for each. Nodes stop accepting expired keys on their own; the janitor
//! keeps Node objects tidy and the annotation budget free.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::Utc;
use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};

use crate::cli::JanitorArgs;
use crate::commands::remove::{ExpiredChoice, Removed, remove_from_node};
use crate::events::{AuditTrail, GrantChange};
use crate::nodes::{self, NodeMeta};
use crate::session::Session;

/// Runs until the watch cannot be resumed or a signal arrives; returns whether it ended cleanly.
pub async fn run(session: &Session, args: &JanitorArgs) -> anyhow::Result<bool> {
    let api = session.nodes();
    let metadata_api: kube::Api<NodeMeta> = kube::Api::all(session.client.clone());
    let caller = session.caller().await;
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
                    known.remove(&nodes::node_name(&node));
                    continue;
                }
                Some(Ok(Event::Init | Event::InitDone)) => continue,
            },
        };
        let choice = ExpiredChoice {
            now: Utc::now(),
            invalid: args.invalid,
        };
        for node in changed {
            let name = nodes::node_name(&node);
            match remove_from_node(
                &api,
                node,
                &session.prefix,
                &choice,
                false,
                Some((&trail, GrantChange::Expired)),
            )
            .await
            {
                Ok(removed) => {
                    for item in removed {
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
                Err(error) => {
                    tracing::warn!(node = %name, "could not remove expired grants: {error:#}")
                }
            }
        }
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
