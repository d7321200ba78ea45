//! Asking the API server, before writing anything, whether the caller may do it.
//!
//! A SelfSubjectAccessReview answers for the caller's own credentials whatever the
//! authorizer (RBAC, webhook...). A refusal names the missing permission and the ClusterRole
//! that grants it, instead of a 403 in the middle of a run over many nodes.

use futures::{StreamExt as _, stream};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

/// The ClusterRole that lets a user grant and revoke (`packaging/rbac/keyctl-granter.yaml`).
pub const GRANTER_ROLE: &str = "nodegate-keyctl-granter";
/// The ClusterRole that lets a user list grants (`packaging/rbac/keyctl-viewer.yaml`).
pub const VIEWER_ROLE: &str = "nodegate-keyctl-viewer";

/// Why an access check stopped a command.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The API server said no.
    #[error(
        "{caller} may not {verb} {resource}{on}.\nAsk a cluster admin to bind the ClusterRole {role} (packaging/rbac/{manifest}), e.g.\n  kubectl create clusterrolebinding {role}-{binding_user} --clusterrole={role} --user={caller}{names_hint}",
        on = describe_names(names),
        manifest = role_manifest(role),
        binding_user = binding_suffix(caller),
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
        role: &'static str,
    },
    /// The review itself could not be made.
    #[error("cannot ask the API server whether {verb} {resource} is allowed")]
    Review {
        /// The verb asked about.
        verb: String,
        /// The resource asked about.
        resource: String,
        /// What went wrong (printed after the message, as its cause).
        #[source]
        source: kube::Error,
    },
}

fn describe_names(names: &[String]) -> String {
    const SHOWN: usize = 5;
    match names.len() {
        0 => String::new(),
        n if n <= SHOWN => format!(" {}", names.join(", ")),
        n => format!(" {} and {} more", names[..SHOWN].join(", "), n - SHOWN),
    }
}

fn role_manifest(role: &str) -> &'static str {
    if role == VIEWER_ROLE {
        "keyctl-viewer.yaml"
    } else {
        "keyctl-granter.yaml"
    }
}

/// A binding name part made of the characters Kubernetes names allow.
fn binding_suffix(caller: &str) -> String {
    let cleaned: String = caller
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_matches('-').to_owned()
}

/// One permission to check: a verb on a resource, cluster-wide or in a namespace.
#[derive(Debug, Clone, Copy)]
pub struct Permission<'a> {
    /// e.g. `patch`.
    pub verb: &'a str,
    /// API group, `""` for the core group.
    pub group: &'a str,
    /// e.g. `nodes`.
    pub resource: &'a str,
    /// The namespace, for namespaced resources.
    pub namespace: Option<&'a str>,
}

/// Asks whether `permission` is allowed on object `name` (or on any object when `None`).
pub async fn allowed(
    client: &Client,
    permission: Permission<'_>,
    name: Option<&str>,
) -> Result<bool, AccessError> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(permission.verb.to_owned()),
                group: Some(permission.group.to_owned()),
                resource: Some(permission.resource.to_owned()),
                namespace: permission.namespace.map(str::to_owned),
                name: name.map(str::to_owned),
                ..ResourceAttributes::default()
            }),
            ..SelfSubjectAccessReviewSpec::default()
        },
        ..SelfSubjectAccessReview::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .map_err(|source| AccessError::Review {
            verb: permission.verb.to_owned(),
            resource: permission.resource.to_owned(),
            source,
        })?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Checks `permission` on every node in `names`: one cluster-wide question first, then, when
/// that is refused (a role limited by `resourceNames`), one per node. Refuses with every node
/// that is not allowed.
pub async fn require_on_nodes(
    client: &Client,
    caller: &str,
    permission: Permission<'_>,
    names: &[String],
    role: &'static str,
    concurrency: usize,
) -> Result<(), AccessError> {
    if allowed(client, permission, None).await? {
        return Ok(());
    }
    let answers: Vec<(String, Result<bool, AccessError>)> = stream::iter(names)
        .map(|name| async move {
            (
                name.clone(),
                allowed(client, permission, Some(name.as_str())).await,
            )
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut denied = Vec::new();
    for (name, answer) in answers {
        if !answer? {
            denied.push(name);
        }
    }
    if denied.is_empty() && !names.is_empty() {
        return Ok(());
    }
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
    role: &'static str,
) -> anyhow::Error {
    match error {
        kube::Error::Api(status) if status.code == 403 => AccessError::Denied {
            caller: caller.to_owned(),
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            names: Vec::new(),
            role,
        }
        .into(),
        other => other.into(),
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
