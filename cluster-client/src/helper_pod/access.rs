//! What a caller must be allowed to do for a helper pod, asked before anything is created: a
//! tool never gives more than `kubectl create pod` and `kubectl exec` would.

use kube::Client;

use super::Tool;
use crate::Error;
use crate::access::{Permission, refused};

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

/// `get pods/exec` in `namespace`: how API servers authorize an exec over WebSocket (an HTTP
/// GET), which is how the tools exec; since Kubernetes 1.35 they also ask for `create`.
pub fn exec_pods_over_websocket(namespace: &str) -> Permission {
    Permission::namespaced("get", "pods", namespace).subresource("exec")
}

/// What every helper pod session needs in the helper namespace: create it, exec into it (both
/// verbs: see [`exec_pods_over_websocket`]), and delete it (a caller who could create but not
/// delete would leave pods behind).
pub fn helper_permissions(namespace: &str) -> Vec<Permission> {
    vec![
        create_pods(namespace),
        exec_pods(namespace, None),
        exec_pods_over_websocket(namespace),
        delete_pods(namespace),
    ]
}

/// Asks the API server about every permission at once; fails with [`Error::Denied`] listing
/// all that are missing, with the tool's advice.
pub async fn require(
    client: &Client,
    tool: &Tool,
    permissions: &[Permission],
) -> Result<(), Error> {
    let missing = refused(client, permissions, permissions.len()).await?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Denied {
            missing: missing.iter().map(ToString::to_string).collect(),
            advice: tool.wording.denied.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::helper_pod::spec::tests::TOOL;

    #[test]
    fn helper_permissions_read_as_phrases() {
        let phrases: Vec<String> = helper_permissions("ops")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            phrases,
            [
                "create pods in namespace ops",
                "create pods/exec in namespace ops",
                "get pods/exec in namespace ops",
                "delete pods in namespace ops"
            ]
        );
        let err = Error::Denied {
            missing: vec!["a".into(), "b".into()],
            advice: TOOL.wording.denied.into(),
        };
        assert_eq!(
            err.to_string(),
            "refused before creating anything: you may not a, nor b. Ask for the tool role."
        );
    }
}
