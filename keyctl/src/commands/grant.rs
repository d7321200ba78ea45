//! `keyctl grant`: one merge patch per node that sets one annotation per key.

use anyhow::{Context as _, bail};
use chrono::{SubsecRound as _, Utc};
use kube::api::Patch;
use kube::api::PatchParams;
use nodegate_core::grant::escape_for_display;
use nodegate_core::node_grants::{ANNOTATIONS_SIZE_LIMIT, annotations_size};
use nodegate_core::{Expiry, Grant, GrantText, LoginUser};

use crate::cli::GrantArgs;
use crate::commands::describe_expiry;
use crate::events::{AuditTrail, GrantChange};
use crate::nodes::{self, NodeMeta};
use crate::session::Session;
use crate::{fleet, keys, patch};

/// Why a grant cannot go on a node.
#[derive(Debug, thiserror::Error)]
pub enum GrantRefused {
    /// The node's annotations would exceed Kubernetes' total size limit.
    #[error(
        "the node's annotations would grow to {would_be} bytes, over Kubernetes' limit of {ANNOTATIONS_SIZE_LIMIT}; remove expired grants with `keyctl prune {node}` or revoke some with `keyctl revoke {node} ...`"
    )]
    NodeFull {
        /// The node.
        node: String,
        /// The total size the grant would lead to.
        would_be: usize,
    },
}

/// What [`write()`] did: one outcome per node, and the grants it wrote on each.
#[derive(Debug)]
pub struct Written {
    /// What happened on each node.
    pub outcomes: Vec<fleet::Outcome<()>>,
    /// The grants written (the same on every node).
    pub grants: Vec<Grant>,
    /// The time they were granted at (whole seconds).
    pub now: chrono::DateTime<Utc>,
}

/// Runs `keyctl grant`. Returns whether every node succeeded.
pub async fn run(session: &Session, args: &GrantArgs) -> anyhow::Result<bool> {
    let Written {
        outcomes,
        grants,
        now,
    } = write(session, args).await?;
    let user = &args.user;

    let verb = if args.dry_run {
        "would grant"
    } else {
        "granted"
    };
    let all_ok = fleet::report(&outcomes, |node, ()| {
        grants
            .iter()
            .map(|g| {
                format!(
                    "{node}: {verb} {} as {} until {} ({})",
                    g.key.fingerprint(),
                    g.user,
                    g.expiry,
                    describe_expiry(&g.expiry, now)
                )
            })
            .collect()
    });
    if !args.dry_run
        && let Some(first) = outcomes.iter().find(|o| o.result.is_ok())
    {
        let more = if outcomes.len() > 1 {
            " (and likewise on the other nodes)"
        } else {
            ""
        };
        println!("Log in with: ssh {}@{}{more}", user, first.node);
    }
    Ok(all_ok)
}

/// Everything `keyctl grant` does but printing: validation, the access check, the patches and
/// the events (`keyctl ssh` grants through here, with its own messages).
pub async fn write(session: &Session, args: &GrantArgs) -> anyhow::Result<Written> {
    let user = LoginUser::new(&args.user).context("--user")?;
    // Grants carry whole seconds; so must what is compared with them.
    let now = Utc::now().trunc_subsecs(0);
    let expiry = match (&args.expires, args.permanent) {
        (_, true) => Expiry::Permanent,
        // Its messages name --expires themselves where it helps.
        (Some(text), false) => Expiry::parse_user_input(text, now)?,
        (None, false) => {
            bail!("say when the grant ends with --expires (e.g. --expires 2h), or pass --permanent")
        }
    };
    let reason = args
        .reason
        .as_deref()
        .map(|r| GrantText::new("reason", r))
        .transpose()
        .context("--reason")?;
    let (key_path, keys) = keys::read_keys(args.key.as_deref())?;
    let api = session.nodes();
    let caller = session.caller().await;
    let resolved =
        super::resolve_for_change(session, &caller, &args.target, false, |_| true).await?;

    let granted_by = GrantText::new("granted-by", &caller)
        .or_else(|_| GrantText::new("granted-by", &escape_for_display(&caller)))
        .context("your user name cannot be recorded in a grant")?;
    let grants: Vec<Grant> = keys
        .into_iter()
        .map(|key| Grant {
            user: user.clone(),
            key,
            expiry,
            granted_by: granted_by.clone(),
            granted_at: now,
            reason: reason.clone(),
        })
        .collect();
    for grant in &grants {
        check_reads_back(grant).with_context(|| {
            format!(
                "the grant for {} cannot be written as a valid annotation",
                key_path.display()
            )
        })?;
    }

    let trail = AuditTrail::new(session.client.clone(), &caller, hostname());
    let params = if args.dry_run {
        PatchParams::default().dry_run()
    } else {
        PatchParams::default()
    };
    let outcomes = fleet::run(resolved, session.concurrency, "granting", |node| {
        let api = api.clone();
        let grants = &grants;
        let params = &params;
        let trail = &trail;
        let prefix = &session.prefix;
        async move {
            check_budget(&node, grants, prefix)?;
            let name = nodes::node_name(&node);
            for grant in grants {
                let body =
                    patch::set_annotation(&grant.annotation_key(prefix), &grant.annotation_value());
                api.patch_metadata(&name, params, &Patch::Merge(&body))
                    .await?;
            }
            if !params.dry_run {
                for grant in grants {
                    trail.record(&node, GrantChange::Granted, grant).await;
                }
            }
            Ok(())
        }
    })
    .await;
    Ok(Written {
        outcomes,
        grants,
        now,
    })
}

/// What nodes (and `keyctl revoke`) will read must be exactly what was meant, so a grant is
/// written only if the same parser reads its annotation back as the same grant: a value that
/// parsed as invalid would be ignored by nodes and never match a revoke by key or fingerprint.
fn check_reads_back(grant: &Grant) -> anyhow::Result<()> {
    let value = grant.annotation_value();
    let reread = Grant::from_annotation(&grant.annotation_name(), &value)?;
    if &reread != grant {
        bail!(
            "it would read back differently ({}); this is a bug in keyctl, please report it",
            escape_for_display(&value)
        );
    }
    Ok(())
}

/// Refuses a grant that would push the node over Kubernetes' annotation size limit, before the
/// API server does so with a less helpful message.
fn check_budget(
    node: &NodeMeta,
    grants: &[Grant],
    prefix: &nodegate_core::AnnotationPrefix,
) -> Result<(), GrantRefused> {
    let current = node.metadata.annotations.as_ref();
    let mut would_be = annotations_size(nodes::annotations(node));
    for grant in grants {
        let key = grant.annotation_key(prefix);
        let value = grant.annotation_value();
        match current.and_then(|a| a.get(&key)) {
            Some(old) => would_be = would_be - old.len() + value.len(),
            None => would_be += key.len() + value.len(),
        }
    }
    if would_be > ANNOTATIONS_SIZE_LIMIT {
        return Err(GrantRefused::NodeFull {
            node: nodes::node_name(node),
            would_be,
        });
    }
    Ok(())
}

/// This machine's name, to tell which keyctl recorded an event.
pub fn hostname() -> Option<String> {
    std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nodegate_core::GrantKey;

    fn grant(expiry: Expiry) -> Grant {
        Grant {
            user: LoginUser::new("root").unwrap(),
            key: GrantKey::parse(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti <R&D> \"x\"",
            )
            .unwrap(),
            expiry,
            granted_by: GrantText::new("granted-by", "o'brien & co <ops>").unwrap(),
            granted_at: "2026-11-22T12:00:00Z".parse().unwrap(),
            reason: Some(GrantText::new("reason", "R&D disk \"full\" \\ again").unwrap()),
        }
    }

    #[test]
    fn a_grant_is_written_only_if_it_reads_back_the_same() {
        assert!(
            check_reads_back(&grant(Expiry::At("2026-11-22T14:00:00Z".parse().unwrap()))).is_ok()
        );
        assert!(check_reads_back(&grant(Expiry::Permanent)).is_ok());
        // A year past 9999 has no YYYYMMDDHHMMSSZ form: such a grant would be invalid on every
        // node, and no revoke would find it.
        let far = grant(Expiry::At("+10026-01-01T00:00:00Z".parse().unwrap()));
        assert!(check_reads_back(&far).is_err());
    }
}
