//! Asking the API server, before doing anything, whether the caller may do it.
//!
//! A SelfSubjectAccessReview answers for the caller's own credentials whatever the authorizer
//! (RBAC, webhook...). Each tool keeps its own list of the permissions it needs and of the roles
//! that grant them; this module asks, and words the advice that names the role to bind.

use futures::{StreamExt as _, stream};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::Error;
use crate::names::name_part;

/// One permission: a verb on a resource (or subresource), cluster-wide or in a namespace, on
/// any object or on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// e.g. `patch`.
    pub verb: &'static str,
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// e.g. `nodes`.
    pub resource: &'static str,
    /// e.g. `exec`.
    pub subresource: Option<&'static str>,
    /// The namespace, for namespaced resources.
    pub namespace: Option<String>,
    /// The object, when the permission is about one object.
    pub name: Option<String>,
}

impl Permission {
    /// `verb` on a cluster-scoped `resource` of `group`, on any object.
    pub const fn cluster(verb: &'static str, group: &'static str, resource: &'static str) -> Self {
        Self {
            verb,
            group,
            resource,
            subresource: None,
            namespace: None,
            name: None,
        }
    }

    /// `verb` on a resource of the core group in `namespace`, on any object.
    pub fn namespaced(verb: &'static str, resource: &'static str, namespace: &str) -> Self {
        Self {
            namespace: Some(namespace.to_owned()),
            ..Self::cluster(verb, "", resource)
        }
    }

    /// The same permission on a subresource.
    pub fn subresource(self, subresource: &'static str) -> Self {
        Self {
            subresource: Some(subresource),
            ..self
        }
    }

    /// The same permission on object `name` only.
    pub fn on(self, name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            ..self
        }
    }

    fn review(&self) -> SelfSubjectAccessReview {
        SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(self.verb.to_owned()),
                    group: Some(self.group.to_owned()),
                    resource: Some(self.resource.to_owned()),
                    subresource: self.subresource.map(str::to_owned),
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        }
    }
}

/// As a phrase: "patch nodes", "patch nodes node1", "create pods in namespace ops",
/// "create pods/exec on pod shop/web-0".
impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)?;
        if let Some(sub) = self.subresource {
            write!(f, "/{sub}")?;
        }
        match (&self.namespace, &self.name) {
            (None, None) => Ok(()),
            (None, Some(name)) => write!(f, " {name}"),
            (Some(namespace), None) => write!(f, " in namespace {namespace}"),
            (Some(namespace), Some(name)) => {
                let kind = self.resource.strip_suffix('s').unwrap_or(self.resource);
                write!(f, " on {kind} {namespace}/{name}")
            }
        }
    }
}

/// Asks whether `permission` is allowed.
pub async fn allowed(client: &Client, permission: &Permission) -> Result<bool, Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &permission.review())
        .await
        .map_err(|source| Error::Review {
            permission: Box::new(permission.clone()),
            source,
        })?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Asks about every permission, `concurrency` at a time, and returns those refused, in the
/// order given. The first review that could not be made (in that order) is the error.
pub async fn refused(
    client: &Client,
    permissions: &[Permission],
    concurrency: usize,
) -> Result<Vec<Permission>, Error> {
    let answers: Vec<(&Permission, Result<bool, Error>)> = stream::iter(permissions)
        .map(|permission| async move { (permission, allowed(client, permission).await) })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let mut refused = Vec::new();
    for (permission, answer) in answers {
        if !answer? {
            refused.push(permission.clone());
        }
    }
    Ok(refused)
}

/// The ClusterRole that grants a permission, and the manifest in `packaging/rbac/` that defines
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// The ClusterRole's name.
    pub name: &'static str,
    /// Its manifest's file name in `packaging/rbac/`.
    pub manifest: &'static str,
}

impl Role {
    /// What to ask for, with the command that does it for `caller`:
    /// "Ask a cluster admin to bind the ClusterRole R (packaging/rbac/R.yaml), e.g.
    /// kubectl create clusterrolebinding ...".
    pub fn advice(&self, caller: &str) -> String {
        let role = self.name;
        format!(
            "Ask a cluster admin to bind the ClusterRole {role} (packaging/rbac/{}), e.g.\n  kubectl create clusterrolebinding {role}-{} --clusterrole={role} --user={caller}",
            self.manifest,
            name_part(caller),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_read_as_phrases() {
        assert_eq!(
            Permission::namespaced("create", "pods", "shop")
                .subresource("exec")
                .on("web-0")
                .to_string(),
            "create pods/exec on pod shop/web-0"
        );
        assert_eq!(
            Permission::namespaced("create", "pods", "nodegate-system").to_string(),
            "create pods in namespace nodegate-system"
        );
        assert_eq!(
            Permission::cluster("patch", "", "nodes")
                .on("n1")
                .to_string(),
            "patch nodes n1"
        );
    }

    #[test]
    fn the_advice_names_the_role_its_manifest_and_the_binding() {
        let role = Role {
            name: "r",
            manifest: "r.yaml",
        };
        let text = role.advice("bob@example.com");
        assert!(
            text.contains("ClusterRole r (packaging/rbac/r.yaml)"),
            "{text}"
        );
        assert!(
            text.contains(
                "clusterrolebinding r-bob-example-com --clusterrole=r --user=bob@example.com"
            ),
            "{text}"
        );
    }
}
