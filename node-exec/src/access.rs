//! What node-exec must be allowed to do, checked with SelfSubjectAccessReviews before anything
//! is created: node-exec never gives more than `kubectl exec` and `kubectl create pod` would.
//!
//! The helper pod's permissions and the reviews are `nodegate_cluster_client::helper_pod::access`;
//! node-exec adds exec into the pod it enters, and its refusal names node-exec's role.

use kube::Client;
use nodegate_cluster_client::access::Permission;
use nodegate_cluster_client::helper_pod;

use crate::helper::TOOL;

pub use nodegate_cluster_client::helper_pod::access::{create_pods, delete_pods, exec_pods};

/// Asks the API server about every permission at once; fails listing all that are missing,
/// with the role to ask for ([`nodegate_cluster_client::Error::Denied`]).
pub async fn require(
    client: &Client,
    permissions: &[Permission],
) -> Result<(), nodegate_cluster_client::Error> {
    helper_pod::access::require(client, &TOOL, permissions).await
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
        let err = nodegate_cluster_client::Error::Denied {
            missing: vec!["a".into(), "b".into()],
            advice: TOOL.wording.denied,
        };
        assert!(err.to_string().contains("you may not a, nor b."), "{err}");
    }
}
