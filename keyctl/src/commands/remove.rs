//! Removing grants: `keyctl revoke`, `keyctl prune` and the janitor share one careful removal.
//!
//! Each removal is a JSON patch that tests every annotation still holds the value read, then
//! removes it. If somebody changed one in between (re-granted the key, say), the server refuses
//! the whole patch, and the node is read again and the choice made afresh.

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use nodegate_core::grant::escape_for_display;
use nodegate_core::{AnnotationPrefix, Grant, GrantKey, LoginUser, NodeGrants};

use crate::cli::{PruneArgs, RevokeArgs};
use crate::events::{AuditTrail, GrantChange};
use crate::nodes::{self, NodeMeta};
use crate::session::Session;
use crate::{fleet, keys, patch};

/// One annotation removed (or, in a dry run, that would be).
#[derive(Debug, Clone)]
pub enum Removed {
    /// A valid grant.
    Grant(Box<Grant>),
    /// An annotation under the prefix that was not a valid grant.
    Invalid {
        /// The annotation name after the prefix.
        name: String,
    },
}

/// Which annotations to remove from a node, chosen from its scanned grants.
pub trait Choice: Sync {
    /// Whether to remove this valid grant.
    fn takes_grant(&self, grant: &Grant) -> bool;
    /// Whether to remove annotations that are not valid grants.
    fn takes_invalid(&self) -> bool;
}

/// How many times a node is re-read when its grants keep changing under us.
const ATTEMPTS: usize = 5;

/// Removes the annotations `choice` picks from `node`, recording an event for each. Returns
/// what was removed (nothing when nothing matched).
pub async fn remove_from_node(
    api: &Api<Node>,
    mut node: NodeMeta,
    prefix: &AnnotationPrefix,
    choice: &dyn Choice,
    dry_run: bool,
    trail: Option<(&AuditTrail, GrantChange)>,
) -> anyhow::Result<Vec<Removed>> {
    let name = nodes::node_name(&node);
    for _ in 0..ATTEMPTS {
        let picked = pick(&node, prefix, choice);
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        let body =
            patch::remove_annotations(picked.iter().map(|(k, v, _)| (k.as_str(), v.as_str())));
        let params = if dry_run {
            PatchParams::default().dry_run()
        } else {
            PatchParams::default()
        };
        match api
            .patch_metadata(&name, &params, &Patch::<()>::Json(body))
            .await
        {
            Ok(_) => {
                let removed: Vec<Removed> = picked.into_iter().map(|(_, _, r)| r).collect();
                if let (false, Some((trail, change))) = (dry_run, trail) {
                    for item in &removed {
                        match item {
                            Removed::Grant(grant) => trail.record(&node, change, grant).await,
                            Removed::Invalid { name } => {
                                trail.record_invalid_removed(&node, name).await
                            }
                        }
                    }
                }
                return Ok(removed);
            }
            // A failed test: the grants changed since they were read. Read again.
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 409 => {
                tracing::debug!(
                    "node {name} changed while removing grants ({}); reading it again",
                    status.message
                );
                node = api
                    .get_metadata(&name)
                    .await
                    .context("reading the node again")?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    bail!("the node's grants kept changing while removing them ({ATTEMPTS} attempts); try again")
}

/// The annotations to remove: key, the exact value read, and what it was.
fn pick(
    node: &NodeMeta,
    prefix: &AnnotationPrefix,
    choice: &dyn Choice,
) -> Vec<(String, String, Removed)> {
    let Some(annotations) = node.metadata.annotations.as_ref() else {
        return Vec::new();
    };
    let scanned = NodeGrants::scan(prefix, nodes::annotations(node));
    let mut picked = Vec::new();
    for grant in scanned.valid.into_iter().filter(|g| choice.takes_grant(g)) {
        let key = grant.annotation_key(prefix);
        if let Some(value) = annotations.get(&key) {
            picked.push((key, value.clone(), Removed::Grant(Box::new(grant))));
        }
    }
    if choice.takes_invalid() {
        for invalid in scanned.invalid {
            let key = format!("{prefix}/{}", invalid.name);
            if let Some(value) = annotations.get(&key) {
                picked.push((key, value.clone(), Removed::Invalid { name: invalid.name }));
            }
        }
    }
    picked
}

/// What `keyctl revoke` removes.
struct RevokeChoice {
    fingerprints: Vec<String>,
    keys: Vec<GrantKey>,
    user: Option<LoginUser>,
    all: bool,
}

impl Choice for RevokeChoice {
    fn takes_grant(&self, grant: &Grant) -> bool {
        let fp = grant.key.fingerprint();
        let key_matches = self.all
            || (self.fingerprints.is_empty() && self.keys.is_empty())
            || self.fingerprints.iter().any(|f| fp.matches(f))
            || self.keys.iter().any(|k| k.same_key(&grant.key));
        key_matches && self.user.as_ref().is_none_or(|u| &grant.user == u)
    }

    fn takes_invalid(&self) -> bool {
        self.all && self.user.is_none()
    }
}

/// What `keyctl prune` and the janitor remove: grants expired at `now`, and invalid ones if asked.
pub struct ExpiredChoice {
    /// The moment grants are judged at.
    pub now: DateTime<Utc>,
    /// Whether invalid annotations go too.
    pub invalid: bool,
}

impl Choice for ExpiredChoice {
    fn takes_grant(&self, grant: &Grant) -> bool {
        grant.expiry.has_passed(self.now)
    }

    fn takes_invalid(&self) -> bool {
        self.invalid
    }
}

/// Checks that `text` looks like an OpenSSH SHA-256 fingerprint, so that a typo is an error
/// rather than a revoke that silently matches nothing.
fn validate_fingerprint(text: &str) -> anyhow::Result<String> {
    let bare = text.trim().strip_prefix("SHA256:").unwrap_or(text.trim());
    let valid = bare.len() == 43
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid {
        bail!(
            "--fingerprint {text:?} is not a SHA-256 key fingerprint; give it as `keyctl list` or `ssh-keygen -lf KEY.pub` show it (SHA256: and 43 characters)"
        );
    }
    Ok(format!("SHA256:{bare}"))
}

/// Runs `keyctl revoke`. Returns whether every node succeeded.
pub async fn revoke(session: &Session, args: &RevokeArgs) -> anyhow::Result<bool> {
    let fingerprints = args
        .fingerprint
        .iter()
        .map(|f| validate_fingerprint(f))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let keys = match &args.key {
        Some(path) => keys::read_keys(Some(path))?.1,
        None => Vec::new(),
    };
    let user = args
        .user
        .as_deref()
        .map(LoginUser::new)
        .transpose()
        .context("--user")?;
    let choice = RevokeChoice {
        fingerprints,
        keys,
        user,
        all: args.all,
    };
    let caller = session.caller().await;
    let resolved =
        super::resolve_for_change(session, &caller, &args.target, false, |_| true).await?;
    remove_everywhere(
        session,
        &caller,
        resolved,
        &choice,
        args.dry_run,
        GrantChange::Revoked,
        "revoke",
    )
    .await
}

/// Runs `keyctl prune`. Returns whether every node succeeded.
pub async fn prune(session: &Session, args: &PruneArgs) -> anyhow::Result<bool> {
    let choice = ExpiredChoice {
        now: Utc::now(),
        invalid: args.invalid,
    };
    let caller = session.caller().await;
    // Only nodes with something to remove need the permission, and the work.
    let resolved = super::resolve_for_change(session, &caller, &args.target, true, |node| {
        !pick(node, &session.prefix, &choice).is_empty()
    })
    .await?;
    if resolved.found.is_empty() && resolved.missing.is_empty() {
        println!(
            "Nothing to prune: no expired grants{}.",
            if args.invalid {
                " and no invalid ones"
            } else {
                ""
            }
        );
        return Ok(true);
    }
    remove_everywhere(
        session,
        &caller,
        resolved,
        &choice,
        args.dry_run,
        GrantChange::Expired,
        "prune",
    )
    .await
}

async fn remove_everywhere(
    session: &Session,
    caller: &str,
    resolved: nodes::Resolved,
    choice: &dyn Choice,
    dry_run: bool,
    change: GrantChange,
    verb: &str,
) -> anyhow::Result<bool> {
    let trail = AuditTrail::new(session.client.clone(), caller, super::grant::hostname());
    let api = session.nodes();
    let outcomes = fleet::run(resolved, session.concurrency, verb, |node| {
        let api = api.clone();
        let trail = &trail;
        async move {
            remove_from_node(
                &api,
                node,
                &session.prefix,
                choice,
                dry_run,
                Some((trail, change)),
            )
            .await
        }
    })
    .await;
    let done = if dry_run { "would remove" } else { "removed" };
    let all_ok = fleet::report(&outcomes, |node, removed: &Vec<Removed>| {
        removed
            .iter()
            .map(|r| describe_removed(node, done, r))
            .collect()
    });
    let nothing = outcomes
        .iter()
        .filter(|o| matches!(&o.result, Ok(r) if r.is_empty()))
        .count();
    if nothing > 0 {
        eprintln!("{nothing} node(s) had no matching grant; nothing changed there");
    }
    Ok(all_ok)
}

fn describe_removed(node: &str, done: &str, removed: &Removed) -> String {
    match removed {
        Removed::Grant(grant) => format!(
            "{node}: {done} {} for {} (granted by {}, expiry {})",
            grant.key.fingerprint(),
            grant.user,
            escape_for_display(grant.granted_by.as_str()),
            grant.expiry
        ),
        Removed::Invalid { name } => format!(
            "{node}: {done} invalid annotation {}",
            escape_for_display(name)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_checked_before_anything_is_sent() {
        let good = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        assert_eq!(validate_fingerprint(good).unwrap(), good);
        assert_eq!(validate_fingerprint(&good[7..]).unwrap(), good);
        assert!(validate_fingerprint("SHA256:short").is_err());
        assert!(validate_fingerprint("MD5:aa:bb").is_err());
    }
}

/// Request shapes against a mock API server (the behaviour against a real one is covered by
/// `tests/tests/keyctl.rs`): the exact method, URI, content type and JSON patch body.
#[cfg(test)]
mod mock_api_tests {
    use super::*;
    use http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use serde_json::{Value, json};

    const PREFIX: &str = "ssh.nodegate.dev";
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti a";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPPLKb7VM2nRpmoEKHALNl6YDSdztwfKejcOzc0ge2b7 b";

    fn grant(key: &str, expiry: &str) -> Grant {
        let value = format!(
            "login=\"root\",expiry-time=\"{expiry}\",granted-by=\"alice\",granted-at=\"20261101000000Z\" {key}"
        );
        let name = Grant::annotation_name_for(
            &LoginUser::new("root").unwrap(),
            &GrantKey::parse(key).unwrap(),
        );
        Grant::from_annotation(&name, &value).unwrap()
    }

    fn node(annotations: &[(String, String)]) -> NodeMeta {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": { "name": "n1", "annotations": annotations },
        }))
        .unwrap()
    }

    fn entry(grant: &Grant) -> (String, String) {
        (
            grant.annotation_key(&AnnotationPrefix::default()),
            grant.annotation_value(),
        )
    }

    fn respond(status: StatusCode, body: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    fn mock_api() -> (
        Api<Node>,
        tower_test::mock::Handle<Request<Body>, Response<Body>>,
    ) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::all(kube::Client::new(service, "default")), handle)
    }

    fn expired_only() -> ExpiredChoice {
        ExpiredChoice {
            now: "2026-11-22T12:00:00Z".parse().unwrap(),
            invalid: false,
        }
    }

    #[tokio::test]
    async fn removal_tests_the_exact_value_then_removes_only_that_annotation() {
        let expired = grant(KEY_A, "20261122100000Z");
        let valid = grant(KEY_B, "20261122180000Z");
        let node = node(&[
            entry(&expired),
            entry(&valid),
            (format!("{PREFIX}/g.root.broken"), "not a grant".into()),
            ("unrelated.example/x".into(), "y".into()),
        ]);
        let (api, mut handle) = mock_api();
        let (expired_key, expired_value) = entry(&expired);
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), Method::PATCH);
            assert_eq!(request.uri().path(), "/api/v1/nodes/n1");
            assert_eq!(
                request.headers()["content-type"],
                "application/json-patch+json"
            );
            let body: Value =
                serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap())
                    .unwrap();
            let pointer = format!("/metadata/annotations/{}", expired_key.replace('/', "~1"));
            assert_eq!(
                body,
                json!([
                    { "op": "test", "path": pointer, "value": expired_value },
                    { "op": "remove", "path": pointer },
                ])
            );
            send.send_response(respond(
                StatusCode::OK,
                &json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                        "metadata": {"name": "n1"}}),
            ));
        });
        let prefix = AnnotationPrefix::default();
        let removed = remove_from_node(&api, node, &prefix, &expired_only(), false, None)
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(removed.len(), 1);
        assert!(matches!(&removed[0], Removed::Grant(g) if **g == expired));
    }

    #[tokio::test]
    async fn a_grant_changed_in_between_is_read_again_and_not_removed() {
        let expired = grant(KEY_A, "20261122100000Z");
        // Someone re-granted the same key (same annotation) after keyctl read the node.
        let regranted = grant(KEY_A, "20261122200000Z");
        let (api, mut handle) = mock_api();
        let fresh_node = json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": { "name": "n1", "annotations": {
                entry(&regranted).0: entry(&regranted).1 } },
        });
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("the patch");
            assert_eq!(request.method(), Method::PATCH);
            send.send_response(respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "the server rejected our request", "reason": "Invalid",
                        "code": 422}),
            ));
            let (request, send) = handle.next_request().await.expect("a fresh read");
            assert_eq!(request.method(), Method::GET);
            assert_eq!(request.uri().path(), "/api/v1/nodes/n1");
            let accept = request.headers()["accept"].to_str().unwrap().to_owned();
            assert!(accept.contains("as=PartialObjectMetadata"), "{accept}");
            send.send_response(respond(StatusCode::OK, &fresh_node));
            // No further request: the re-granted key is not expired, nothing is left to remove.
            handle
        });
        let prefix = AnnotationPrefix::default();
        let removed = remove_from_node(
            &api,
            node(&[entry(&expired)]),
            &prefix,
            &expired_only(),
            false,
            None,
        )
        .await
        .unwrap();
        assert!(removed.is_empty());
        drop(api);
        let mut handle = server.await.unwrap();
        assert!(handle.next_request().await.is_none(), "no second patch");
    }
}
