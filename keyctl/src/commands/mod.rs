//! One module per subcommand.

pub mod audit;
pub mod grant;
pub mod janitor;
pub mod known_hosts;
pub mod list;
pub mod proxy;
pub mod remove;
pub mod sessions;
pub mod ssh;
pub mod ssh_config;

use chrono::{DateTime, Utc};
use nodegate_core::Expiry;

use nodegate_cluster_client::Permission;

use crate::access::{self, GRANTER_ROLE, PATCH_NODES, PRUNE_GRANTS, WRITE_GRANTS};
use crate::cli::NodeSelection;
use crate::nodes::{self, NodeMeta, Resolved};
use crate::session::Session;

/// What a change needs on each node: every entry, each satisfied by any of its alternatives.
type Needs = [&'static [Permission]];

/// Adding, changing or removing grants (`grant`, `revoke`, `ssh`): patching the Node, and
/// nodegate's own `write grants`, which the admission guard enforces.
const WRITE_NEEDS: &Needs = &[&[PATCH_NODES], &[WRITE_GRANTS]];

/// Removing expired grants only (`prune`): `prune grants` is enough, and `write` covers it.
const PRUNE_NEEDS: &Needs = &[&[PATCH_NODES], &[PRUNE_GRANTS, WRITE_GRANTS]];

/// Finds the nodes a change works on, keeps those `keep` says need it, and makes sure the
/// caller may patch every one of them and write grants there, before anything is written.
/// Named nodes are checked before they are even read, so that a limited role gets the access
/// message, not a 403.
pub async fn resolve_for_change(
    session: &Session,
    caller: &str,
    target: &NodeSelection,
    all_by_default: bool,
    keep: impl Fn(&NodeMeta) -> bool,
) -> anyhow::Result<Resolved> {
    resolve_checked(session, caller, target, all_by_default, keep, WRITE_NEEDS).await
}

/// As [`resolve_for_change`], for removing expired grants only (`keyctl prune`), which the
/// janitor's `prune grants` allows as well as a granter's `write grants`.
pub async fn resolve_for_prune(
    session: &Session,
    caller: &str,
    target: &NodeSelection,
    keep: impl Fn(&NodeMeta) -> bool,
) -> anyhow::Result<Resolved> {
    resolve_checked(session, caller, target, true, keep, PRUNE_NEEDS).await
}

async fn resolve_checked(
    session: &Session,
    caller: &str,
    target: &NodeSelection,
    all_by_default: bool,
    keep: impl Fn(&NodeMeta) -> bool,
    needs: &Needs,
) -> anyhow::Result<Resolved> {
    let check = |names: Vec<String>| async move {
        if names.is_empty() {
            return Ok(());
        }
        for alternatives in needs {
            access::require_any_on_nodes(
                &session.client,
                caller,
                alternatives,
                &names,
                GRANTER_ROLE,
                session.concurrency,
            )
            .await?;
        }
        Ok::<(), access::AccessError>(())
    };
    check(target.nodes.clone()).await?;
    let mut resolved = nodes::resolve(
        &session.nodes(),
        &target.nodes,
        target.selector.as_deref(),
        all_by_default,
        session.concurrency,
    )
    .await?;
    resolved.found.retain(|_, node| keep(node));
    let selected: Vec<String> = resolved
        .found
        .keys()
        .filter(|name| !target.nodes.contains(name))
        .cloned()
        .collect();
    check(selected).await?;
    Ok(resolved)
}

/// "in 1h 59m", "expired 3m ago", "never": how far an expiry is from `now`, for people.
pub fn describe_expiry(expiry: &Expiry, now: DateTime<Utc>) -> String {
    match expiry.instant() {
        None => "never".to_owned(),
        Some(at) if at > now => format!("in {}", rough_duration(at - now)),
        Some(at) => format!("expired {} ago", rough_duration(now - at)),
    }
}

/// A duration rounded to what people care about: minutes, or seconds below a minute.
fn rough_duration(delta: chrono::TimeDelta) -> String {
    let seconds = delta.num_seconds().max(0) as u64;
    let rounded = if seconds >= 60 {
        seconds / 60 * 60
    } else {
        seconds
    };
    humantime::format_duration(std::time::Duration::from_secs(rounded)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_read_naturally() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let at = |s: &str| Expiry::At(DateTime::parse_from_rfc3339(s).unwrap().to_utc());
        assert_eq!(
            describe_expiry(&at("2026-11-23T11:59:30Z"), now),
            "in 1h 59m"
        );
        assert_eq!(
            describe_expiry(&at("2026-11-23T09:57:00Z"), now),
            "expired 3m ago"
        );
        assert_eq!(describe_expiry(&at("2026-11-23T10:00:20Z"), now), "in 20s");
        assert_eq!(describe_expiry(&Expiry::Permanent, now), "never");
    }
}
