//! What node-exec must be allowed to do, checked with SelfSubjectAccessReviews before anything
//! is created: node-exec never gives more than `kubectl exec` and `kubectl create pod` would.
//!
//! The reviews themselves are `nodegate_cluster_client::access`; this module holds node-exec's
//! permissions and its refusal, which names the role to ask for.

use kube::Client;
use nodegate_cluster_client::access::{self, Permission};

/// Why the caller may not go on.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// At least one permission is missing.
    #[error(
        "refused before creating anything: you may not {}. Ask a cluster admin for the node-exec-operator role (packaging/rbac/node-exec-operator.yaml)",
        .missing.join(", nor ")
    )]
    Denied {
        /// Each missing permission, as a phrase ("create pods/exec on pod shop/web-0").
        missing: Vec<String>,
    },
    /// The API server did not answer a review.
    #[error(transparent)]
    Review(#[from] nodegate_cluster_client::Error),
}

/// `create pods` in `namespace`.
pub fn create_pods(namespace: &str) -> Permission {
    Permission::namespaced("create", "pods", namespace)
}

/// `create pods/exec` in `namespace`, on pod `name` if given.
pub fn exec_pods(namespace: &str, name: Option<&str>) -> Permission {
    let permission = Permission::namespaced("create", "pods", namespace).subresource("exec");
    match name {
        Some(name) => permission.on(name),
        None => permission,
    }
}

/// `delete pods` in `namespace`.
pub fn delete_pods(namespace: &str) -> Permission {
    Permission::namespaced("delete", "pods", namespace)
}

/// Asks the API server about every permission at once; fails listing all that are missing.
pub async fn require(client: &Client, permissions: &[Permission]) -> Result<(), AccessError> {
    let missing = access::refused(client, permissions, permissions.len()).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AccessError::Denied {
            missing: missing.iter().map(ToString::to_string).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_phrases() {
        assert_eq!(
            exec_pods("shop", Some("web-0")).to_string(),
            "create pods/exec on pod shop/web-0"
        );
        assert_eq!(
            create_pods("nodegate-system").to_string(),
            "create pods in namespace nodegate-system"
        );
        let err = AccessError::Denied {
            missing: vec!["a".into(), "b".into()],
        };
        assert!(err.to_string().contains("you may not a, nor b."), "{err}");
    }
}
