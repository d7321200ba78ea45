//! What keyctl must be allowed to do, asked before writing anything.
//!
//! The reviews themselves are `nodegate_cluster_client::access`; this module holds keyctl's
//! permissions and roles, and its refusal: the missing permission, the nodes it is missing on,
//! and the ClusterRole that grants it, instead of a 403 in the middle of a run over many nodes.

use kube::Client;
use nodegate_cluster_client::access::{self, Permission, Role};
use nodegate_cluster_client::status;

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
    if access::allowed(client, permission).await? {
        return Ok(());
    }
    let per_node: Vec<Permission> = names
        .iter()
        .map(|name| permission.clone().on(name))
        .collect();
    let refused = access::refused(client, &per_node, concurrency).await?;
    if refused.is_empty() && !names.is_empty() {
        return Ok(());
    }
    let mut denied: Vec<String> = refused.into_iter().filter_map(|p| p.name).collect();
    denied.sort();
    Err(AccessError::Denied {
        caller: caller.to_owned(),
        verb: permission.verb.to_owned(),
        resource: permission.resource.to_owned(),
        names: denied,
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
    fn long_node_lists_are_shortened() {
        let names: Vec<String> = (0..8).map(|i| format!("n{i}")).collect();
        assert_eq!(describe_names(&names), " n0, n1, n2, n3, n4 and 3 more");
    }
}
