//! `keyctl list`: every grant on the selected nodes, for people or for scripts. Annotations
//! that are not valid grants are reported (nodes ignore them), never trusted, never fatal.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color, Table, presets};
use nodegate_core::grant::escape_for_display;
use nodegate_core::{LoginUser, NodeGrants};
use serde::Serialize;

use crate::access::VIEWER_ROLE;
use crate::cli::{ListArgs, OutputFormat};
use crate::commands::describe_expiry;
use crate::nodes::{self, LookupError};
use crate::session::Session;

/// One valid grant, as scripts see it.
#[derive(Debug, Serialize)]
pub struct ListedGrant {
    /// The node.
    pub node: String,
    /// The full annotation key.
    pub annotation: String,
    /// The login user.
    pub user: String,
    /// `SHA256:...`.
    pub fingerprint: String,
    /// The key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The key's comment, if any.
    pub key_comment: String,
    /// When the grant ends; absent for permanent grants.
    pub expires: Option<DateTime<Utc>>,
    /// Whether the grant never ends.
    pub permanent: bool,
    /// Whether the grant has ended (nodes no longer accept it; `keyctl prune` removes it).
    pub expired: bool,
    /// Who granted it.
    pub granted_by: String,
    /// When.
    pub granted_at: DateTime<Utc>,
    /// Why, if given.
    pub reason: Option<String>,
}

/// An annotation under the prefix that nodes ignore because it is not a valid grant.
#[derive(Debug, Serialize)]
pub struct ListedInvalid {
    /// The node.
    pub node: String,
    /// The full annotation key, with unprintable characters escaped.
    pub annotation: String,
    /// Why it is not valid, with unprintable characters escaped.
    pub error: String,
}

/// The whole answer of `keyctl list -o json|yaml`.
#[derive(Debug, Serialize)]
pub struct Listing {
    /// Valid grants, expired ones included, by node, user and fingerprint.
    pub grants: Vec<ListedGrant>,
    /// Annotations that are not valid grants.
    pub invalid: Vec<ListedInvalid>,
}

/// Runs `keyctl list`.
pub async fn run(session: &Session, args: &ListArgs) -> anyhow::Result<bool> {
    let user = args
        .user
        .as_deref()
        .map(LoginUser::new)
        .transpose()
        .context("--user")?;
    let resolved = nodes::resolve(
        &session.nodes(),
        &args.target.nodes,
        args.target.selector.as_deref(),
        true,
        session.concurrency,
    )
    .await;
    let resolved = match resolved {
        Err(LookupError::List { source, .. }) => {
            let caller = session.caller().await;
            return Err(crate::access::explain_forbidden(
                source,
                &caller,
                "list",
                "nodes",
                VIEWER_ROLE,
            ));
        }
        other => other?,
    };
    let now = Utc::now();
    let node_count = resolved.found.len();
    let listing = collect(&resolved, &session.prefix, user.as_ref(), now);
    for (name, error) in &resolved.missing {
        eprintln!("error: node {name}: {}", nodes::describe_read_error(error));
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&listing)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&listing)?),
        OutputFormat::Table => print_table(&listing, node_count, now),
    }
    Ok(resolved.missing.is_empty())
}

/// Scans every node found into one listing.
pub fn collect(
    resolved: &nodes::Resolved,
    prefix: &nodegate_core::AnnotationPrefix,
    user: Option<&LoginUser>,
    now: DateTime<Utc>,
) -> Listing {
    let mut listing = Listing {
        grants: Vec::new(),
        invalid: Vec::new(),
    };
    for (node, meta) in &resolved.found {
        let scanned = NodeGrants::scan(prefix, nodes::annotations(meta));
        for grant in scanned.valid {
            if user.is_some_and(|u| u != &grant.user) {
                continue;
            }
            listing.grants.push(ListedGrant {
                node: node.clone(),
                annotation: grant.annotation_key(prefix),
                user: grant.user.to_string(),
                fingerprint: grant.key.fingerprint().to_string(),
                key_type: grant.key.algorithm().to_string(),
                key_comment: grant.key.comment().to_owned(),
                expires: grant.expiry.instant(),
                permanent: grant.expiry.instant().is_none(),
                expired: grant.expiry.has_passed(now),
                granted_by: grant.granted_by.as_str().to_owned(),
                granted_at: grant.granted_at,
                reason: grant.reason.as_ref().map(|r| r.as_str().to_owned()),
            });
        }
        for invalid in scanned.invalid {
            listing.invalid.push(ListedInvalid {
                node: node.clone(),
                annotation: escape_for_display(&format!("{prefix}/{}", invalid.name)),
                // Errors quote what they refused (a key comment, a time): escaped like the name.
                error: escape_for_display(&invalid.error.to_string()),
            });
        }
    }
    listing.grants.sort_by(|a, b| {
        (&a.node, &a.user, &a.fingerprint).cmp(&(&b.node, &b.user, &b.fingerprint))
    });
    listing
}

fn print_table(listing: &Listing, node_count: usize, now: DateTime<Utc>) {
    if listing.grants.is_empty() {
        eprintln!("No grants on {node_count} node(s).");
    } else {
        let mut table = Table::new();
        table.load_style(presets::NOTHING).set_header([
            "NODE",
            "USER",
            "FINGERPRINT",
            "EXPIRES",
            "GRANTED BY",
            "REASON",
        ]);
        for grant in &listing.grants {
            let expiry = match grant.expires {
                Some(at) => nodegate_core::Expiry::At(at),
                None => nodegate_core::Expiry::Permanent,
            };
            let mut expires = Cell::new(describe_expiry(&expiry, now));
            if grant.expired {
                expires = expires.fg(Color::Red);
            }
            table.add_row(vec![
                Cell::new(&grant.node),
                Cell::new(&grant.user),
                Cell::new(&grant.fingerprint),
                expires,
                Cell::new(escape_for_display(&grant.granted_by)),
                Cell::new(
                    grant
                        .reason
                        .as_deref()
                        .map(escape_for_display)
                        .unwrap_or_default(),
                ),
            ]);
        }
        println!("{table}");
    }
    let expired = listing.grants.iter().filter(|g| g.expired).count();
    if expired > 0 {
        eprintln!(
            "{expired} expired grant(s) are no longer accepted by nodes; remove them with: keyctl prune"
        );
    }
    for invalid in &listing.invalid {
        eprintln!(
            "warning: node {}: {} is not a valid grant and nodes ignore it: {} (remove it with: keyctl prune --invalid {})",
            invalid.node, invalid.annotation, invalid.error, invalid.node
        );
    }
}
