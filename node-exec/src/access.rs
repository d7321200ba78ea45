//! Permission checks with SelfSubjectAccessReviews, before anything is created: node-exec never
//! gives more than `kubectl exec` and `kubectl create pod` would.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

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
    /// The API server did not answer the review.
    #[error("cannot ask the API server whether you may {what}: {source}")]
    Review {
        /// The permission asked about.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
}

/// One permission to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The verb, e.g. "create".
    pub verb: &'static str,
    /// The resource, e.g. "pods".
    pub resource: &'static str,
    /// The subresource, e.g. "exec".
    pub subresource: Option<&'static str>,
    /// The namespace.
    pub namespace: String,
    /// The object's name, when the permission is about one object.
    pub name: Option<String>,
}

impl Permission {
    /// `create pods` in `namespace`.
    pub fn create_pods(namespace: &str) -> Self {
        Self::new("create", None, namespace, None)
    }

    /// `create pods/exec` in `namespace`, on pod `name` if given.
    pub fn exec_pods(namespace: &str, name: Option<&str>) -> Self {
        Self::new("create", Some("exec"), namespace, name)
    }

    /// `delete pods` in `namespace`.
    pub fn delete_pods(namespace: &str) -> Self {
        Self::new("delete", None, namespace, None)
    }

    fn new(verb: &'static str, sub: Option<&'static str>, ns: &str, name: Option<&str>) -> Self {
        Permission {
            verb,
            resource: "pods",
            subresource: sub,
            namespace: ns.to_owned(),
            name: name.map(str::to_owned),
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        match &self.name {
            Some(name) => write!(f, " on pod {}/{name}", self.namespace),
            None => write!(f, " in namespace {}", self.namespace),
        }
    }
}

/// Asks the API server about every permission at once; fails listing all that are missing.
pub async fn require(client: &Client, permissions: &[Permission]) -> Result<(), AccessError> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answers = futures::future::join_all(permissions.iter().map(|permission| {
        let reviews = reviews.clone();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(permission.verb.to_owned()),
                        resource: Some(permission.resource.to_owned()),
                        subresource: permission.subresource.map(str::to_owned),
                        namespace: Some(permission.namespace.clone()),
                        name: permission.name.clone(),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let answer = reviews.create(&PostParams::default(), &review).await;
            (permission, answer)
        }
    }))
    .await;
    let mut missing = Vec::new();
    for (permission, answer) in answers {
        let review = answer.map_err(|source| AccessError::Review {
            what: permission.to_string(),
            source,
        })?;
        if !review.status.is_some_and(|status| status.allowed) {
            missing.push(permission.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AccessError::Denied { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_phrases() {
        assert_eq!(
            Permission::exec_pods("shop", Some("web-0")).to_string(),
            "create pods/exec on pod shop/web-0"
        );
        assert_eq!(
            Permission::create_pods("nodegate-system").to_string(),
            "create pods in namespace nodegate-system"
        );
        let err = AccessError::Denied {
            missing: vec!["a".into(), "b".into()],
        };
        assert!(err.to_string().contains("you may not a, nor b."), "{err}");
    }
}
