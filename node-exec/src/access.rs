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
/// with the role to ask for ([`nodegate_cluster_client::Error::Denied`]), and, when exec into
/// the target pod is missing, where that comes from (node-exec's role does not give it).
pub async fn require(
    client: &Client,
    permissions: &[Permission],
    target_pod: Option<&Permission>,
) -> Result<(), nodegate_cluster_client::Error> {
    match helper_pod::access::require(client, &TOOL, permissions).await {
        Err(nodegate_cluster_client::Error::Denied { missing, advice }) => {
            Err(nodegate_cluster_client::Error::Denied {
                advice: advise(&missing, advice, target_pod),
                missing,
            })
        }
        other => other,
    }
}

/// The advice for the `missing` permissions: the tool's `advice` for its role, and a word on
/// the target pod's exec permission if that is missing too.
fn advise(missing: &[String], advice: String, target_pod: Option<&Permission>) -> String {
    let Some(target) = target_pod.map(ToString::to_string) else {
        return advice;
    };
    if !missing.contains(&target) {
        return advice;
    }
    let pod_note = format!(
        "{target} is what `kubectl exec` needs there: the pod's namespace grants it, not node-exec's role"
    );
    if missing.len() == 1 {
        pod_note
    } else {
        format!("{advice}; {pod_note}")
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
        let err = nodegate_cluster_client::Error::Denied {
            missing: vec!["a".into(), "b".into()],
            advice: TOOL.wording.denied.into(),
        };
        assert!(err.to_string().contains("you may not a, nor b."), "{err}");
    }

    #[test]
    fn a_missing_exec_into_the_target_pod_says_where_it_comes_from() {
        let target = exec_pods("shop", Some("web"));
        let role = TOOL.wording.denied.to_owned();
        let only_pod = advise(&[target.to_string()], role.clone(), Some(&target));
        assert_eq!(
            only_pod,
            "create pods/exec on pod shop/web is what `kubectl exec` needs there: the pod's namespace grants it, not node-exec's role"
        );
        let both = advise(
            &[target.to_string(), "create pods in namespace x".into()],
            role.clone(),
            Some(&target),
        );
        assert!(
            both.starts_with(&role) && both.contains("not node-exec's role"),
            "{both}"
        );
        assert_eq!(
            advise(
                &["create pods in namespace x".into()],
                role.clone(),
                Some(&target)
            ),
            role
        );
        assert_eq!(advise(&[target.to_string()], role.clone(), None), role);
    }
}
