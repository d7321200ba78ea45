//! What keyctl must be allowed to do, asked before writing anything.
//!
//! The reviews themselves are `nodegate_cluster_client::access`; this module holds keyctl's
//! permissions and roles, and its refusal: the missing permission, the nodes it is missing on,
//! and the ClusterRole that grants it, instead of a 403 in the middle of a run over many nodes.

use kube::Client;
use nodegate_cluster_client::access::{self, Permission, Role};
use nodegate_cluster_client::status;
use nodegate_core::permissions::{GRANTS_RESOURCE, PERMISSION_GROUP, PRUNE_VERB, WRITE_VERB};

/// Grants are annotations on Nodes: every change of them is a patch of the Node.
pub const PATCH_NODES: Permission = Permission::cluster("patch", "", "nodes");
/// nodegate's own permission to add, change and remove grants (`write grants.nodegate.dev`,
/// per node with `resourceNames`), which the admission guard enforces: RBAC cannot narrow
/// `patch nodes` to grant annotations, so this permission says who is meant to write them.
pub const WRITE_GRANTS: Permission =
    Permission::cluster(WRITE_VERB, PERMISSION_GROUP, GRANTS_RESOURCE);
/// nodegate's own permission to remove grants only (`prune grants.nodegate.dev`): the janitor's.
pub const PRUNE_GRANTS: Permission =
    Permission::cluster(PRUNE_VERB, PERMISSION_GROUP, GRANTS_RESOURCE);

/// The ClusterRole that lets a user grant and revoke (`packaging/rbac/keyctl-granter.yaml`).
pub const GRANTER_ROLE: Role = Role {
    name: "nodegate-keyctl-granter",
    manifest: "keyctl-granter.yaml",
};
/// The ClusterRole that lets a user list grants (`packaging/rbac/keyctl-viewer.yaml`).
pub const VIEWER_ROLE: Role = Role {
    name: "nodegate-keyctl-viewer",
    manifest: "keyctl-viewer.yaml",
};
/// The ClusterRole that lets a user run `keyctl audit` (`packaging/rbac/keyctl-auditor.yaml`).
pub const AUDITOR_ROLE: Role = Role {
    name: "nodegate-keyctl-auditor",
    manifest: "keyctl-auditor.yaml",
};

/// Why an access check stopped a command.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The API server said no.
    #[error(
        "{caller} may not {verb} {resource}{on}.\n{advice}{names_hint}",
        on = describe_names(names),
        advice = role.advice(caller),
        names_hint = if names.is_empty() { "" } else { "\n(a granter role limited to some nodes lists them under resourceNames)" }
    )]
    Denied {
        /// The caller's user name.
        caller: String,
        /// The verb refused, e.g. `patch`.
        verb: String,
        /// The resource, e.g. `nodes`.
        resource: String,
        /// The objects refused, when the check was per object; empty for "any".
        names: Vec<String>,
        /// The ClusterRole that grants the permission.
        role: Role,
    },
    /// The review itself could not be made.
    #[error(transparent)]
    Review(#[from] nodegate_cluster_client::Error),
}

fn describe_names(names: &[String]) -> String {
    const SHOWN: usize = 5;
    match names.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" {}", names.join(", ")),
        n => format!(" {} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

/// `nodes`, `nodes/status`, `grants.nodegate.dev`: a resource as kubectl names it, with its
/// group unless it is the core group.
pub fn describe_resource(permission: &Permission) -> String {
    let mut text = permission.resource.to_owned();
    if let Some(sub) = permission.subresource {
        text.push('/');
        text.push_str(sub);
    }
    if !permission.group.is_empty() {
        text.push('.');
        text.push_str(permission.group);
    }
    text
}

/// Checks `permission` on every node in `names`: one cluster-wide question first, then, when
/// that is refused (a role limited by `resourceNames`), one per node. Refuses with every node
/// that is not allowed.
pub async fn require_on_nodes(
    client: &Client,
    caller: &str,
    permission: &Permission,
    names: &[String],
    role: Role,
    concurrency: usize,
) -> Result<(), AccessError> {
    require_any_on_nodes(
        client,
        caller,
        std::slice::from_ref(permission),
        names,
        role,
        concurrency,
    )
    .await
}

/// Checks that on every node in `names` at least one of `alternatives` is allowed (e.g. `prune`
/// or `write` grants), asking as [`require_on_nodes`] does, alternative by alternative, only
/// about the nodes still refused. The refusal names the first alternative.
pub async fn require_any_on_nodes(
    client: &Client,
    caller: &str,
    alternatives: &[Permission],
    names: &[String],
    role: Role,
    concurrency: usize,
) -> Result<(), AccessError> {
    let Some(first) = alternatives.first() else {
        return Ok(());
    };
    let mut refused: Vec<String> = names.to_vec();
    for permission in alternatives {
        if access::allowed(client, permission).await? {
            return Ok(());
        }
        let per_node: Vec<Permission> = refused
            .iter()
            .map(|name| permission.clone().on(name))
            .collect();
        refused = access::refused(client, &per_node, concurrency)
            .await?
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        if refused.is_empty() && !names.is_empty() {
            return Ok(());
        }
    }
    refused.sort();
    Err(AccessError::Denied {
        caller: caller.to_owned(),
        verb: first.verb.to_owned(),
        resource: describe_resource(first),
        names: refused,
        role,
    })
}

/// Turns a 403 from the API server into the same advice a failed review gives.
pub fn explain_forbidden(
    error: kube::Error,
    caller: &str,
    verb: &str,
    resource: &str,
    role: Role,
) -> anyhow::Error {
    if status::is_forbidden(&error) {
        AccessError::Denied {
            caller: caller.to_owned(),
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            names: Vec::new(),
            role,
        }
        .into()
    } else {
        error.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_names_the_permission_and_the_role() {
        let error = AccessError::Denied {
            caller: "bob@example.com".into(),
            verb: "patch".into(),
            resource: "nodes".into(),
            names: vec!["node1".into()],
            role: GRANTER_ROLE,
        };
        let text = error.to_string();
        assert!(text.starts_with("bob@example.com may not patch nodes node1."));
        assert!(text.contains("--clusterrole=nodegate-keyctl-granter --user=bob@example.com"));
        assert!(text.contains("clusterrolebinding nodegate-keyctl-granter-bob-example-com"));
        assert!(text.contains("packaging/rbac/keyctl-granter.yaml"));
    }

    #[test]
    fn nodegate_permissions_are_named_with_their_group() {
        assert_eq!(describe_resource(&WRITE_GRANTS), "grants.nodegate.dev");
        assert_eq!(describe_resource(&PRUNE_GRANTS), "grants.nodegate.dev");
        assert_eq!(describe_resource(&PATCH_NODES), "nodes");
        assert_eq!(
            describe_resource(&PATCH_NODES.clone().subresource("status")),
            "nodes/status"
        );
        let error = AccessError::Denied {
            caller: "bob".into(),
            verb: WRITE_GRANTS.verb.into(),
            resource: describe_resource(&WRITE_GRANTS),
            names: vec!["node1".into()],
            role: GRANTER_ROLE,
        };
        assert!(
            error
                .to_string()
                .starts_with("bob may not write grants.nodegate.dev node1."),
            "{error}"
        );
    }

    #[test]
    fn long_node_lists_are_shortened() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        assert_eq!(describe_names(&names), " n0, n1, n2, n3, n4 and 3 more");
    }
}
