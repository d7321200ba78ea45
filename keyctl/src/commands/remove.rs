//! Removing grants: `keyctl revoke`, `keyctl prune` and the janitor share one careful removal.
//!
//! Each removal is a JSON patch that tests the Node is still at the resourceVersion read, then
//! removes the annotations chosen from that read. If somebody changed the Node in between
//! (re-granted a key, say), the server refuses the whole patch, and the node is read again and
//! the choice made afresh.
//!
//! One annotation the server will not let go (an admission policy, say) must not keep the
//! others: when the server refuses a patch of several removals for any reason but a change of
//! the Node, each is sent on its own, and only those refused again are reported.

use std::collections::BTreeSet;
use std::time::Duration;

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
use nodegate_cluster_client::{describe_kube_error, status};

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

/// An annotation that was to be removed and was not, and why.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// What the annotation is.
    pub what: Removed,
    /// Its full key.
    pub key: String,
    /// Its value when it was read.
    pub value: String,
    /// Why it is still there: what the API server said, for people.
    pub reason: String,
}

/// What one node's removal did.
#[derive(Debug, Clone, Default)]
pub struct NodeRemoval {
    /// Annotations removed (in a dry run, that would be).
    pub removed: Vec<Removed>,
    /// Annotations chosen that are still there.
    pub refused: Vec<Refusal>,
}

/// Which annotations to remove from a node, chosen from its scanned grants.
pub trait Choice: Sync {
    /// Whether to remove this valid grant.
    fn takes_grant(&self, grant: &Grant) -> bool;
    /// Whether to remove annotations that are not valid grants.
    fn takes_invalid(&self) -> bool;
    /// Whether to leave this annotation alone for now although it was chosen (the janitor
    /// waits before trying again one the server refused).
    fn holds_back(&self, _node: &str, _key: &str, _value: &str) -> bool {
        false
    }
}

/// How many times a node is read again when it keeps changing under us. Every write to the
/// Node changes its resourceVersion, so concurrent revokes on one node collide; with the
/// growing pauses between reads this rides out a few seconds of steady writes.
pub const ATTEMPTS: usize = 16;

/// At most this many removals go in one patch (the API server takes at most 10000 operations).
const MAX_REMOVALS_PER_PATCH: usize = 1000;

/// One annotation chosen for removal: its key, the value read, and what it is.
#[derive(Debug, Clone)]
struct Pick {
    key: String,
    value: String,
    what: Removed,
}

impl Pick {
    fn refused(self, reason: &str) -> Refusal {
        Refusal {
            what: self.what,
            key: self.key,
            value: self.value,
            reason: reason.to_owned(),
        }
    }
}

/// Removes the annotations `choice` picks from `node`, recording an event for each removed.
/// Never fails as a whole: what could not be removed is in [`NodeRemoval::refused`], with why.
pub async fn remove_from_node(
    api: &Api<Node>,
    mut node: NodeMeta,
    prefix: &AnnotationPrefix,
    choice: &dyn Choice,
    dry_run: bool,
    trail: Option<(&AuditTrail, GrantChange)>,
) -> NodeRemoval {
    let name = nodes::node_name(&node);
    let params = if dry_run {
        PatchParams::default().dry_run()
    } else {
        PatchParams::default()
    };
    let mut outcome = NodeRemoval::default();
    // Keys removed or refused in this run: never chosen twice.
    let mut settled: BTreeSet<String> = BTreeSet::new();
    let mut one_by_one = false;
    let mut changes = 0;
    loop {
        let picked: Vec<Pick> = pick(&node, prefix, choice)
            .into_iter()
            .filter(|p| !settled.contains(&p.key))
            .collect();
        if picked.is_empty() {
            return outcome;
        }
        let give_up = |outcome: &mut NodeRemoval, picked: Vec<Pick>, reason: &str| {
            outcome
                .refused
                .extend(picked.into_iter().map(|p| p.refused(reason)));
        };
        let Some(version) = node.metadata.resource_version.clone() else {
            give_up(
                &mut outcome,
                picked,
                "the API server sent the node without a resourceVersion",
            );
            return outcome;
        };
        let batch_len = if one_by_one {
            1
        } else {
            MAX_REMOVALS_PER_PATCH
        };
        let batch: Vec<Pick> = picked.iter().take(batch_len).cloned().collect();
        let body = patch::remove_annotations(&version, batch.iter().map(|p| p.key.as_str()));
        let refusal = match api
            .patch_metadata(&name, &params, &Patch::<()>::Json(body))
            .await
        {
            Ok(updated) => {
                if let (false, Some((trail, change))) = (dry_run, trail) {
                    for item in &batch {
                        match &item.what {
                            Removed::Grant(grant) => trail.record(&node, change, grant).await,
                            Removed::Invalid { name } => {
                                trail.record_invalid_removed(&node, name).await
                            }
                        }
                    }
                }
                settled.extend(batch.iter().map(|p| p.key.clone()));
                outcome.removed.extend(batch.into_iter().map(|p| p.what));
                // The answer is the node as it is now, at its new resourceVersion (a dry run
                // changed nothing, so the node read is still the one to test against).
                if !dry_run {
                    node = updated;
                }
                continue;
            }
            // A failed test (422) or a conflict (409): most likely the node changed since it was
            // read, but a server may refuse the change itself with 422 too. A fresh read tells.
            Err(error) if status::is_invalid(&error) || status::is_conflict(&error) => {
                let fresh = match api.get_metadata(&name).await {
                    Ok(fresh) => fresh,
                    Err(error) => {
                        let reason = format!(
                            "reading the node again after a refused removal: {}",
                            describe_kube_error(&error)
                        );
                        give_up(&mut outcome, picked, &reason);
                        return outcome;
                    }
                };
                let changed = fresh.metadata.resource_version != node.metadata.resource_version;
                node = fresh;
                if changed {
                    changes += 1;
                    tracing::debug!(
                        "node {name} changed while removing grants ({}); reading it again",
                        status::api_status(&error).map_or("", |s| s.message.as_str())
                    );
                    if changes >= ATTEMPTS {
                        let left: Vec<Pick> = pick(&node, prefix, choice)
                            .into_iter()
                            .filter(|p| !settled.contains(&p.key))
                            .collect();
                        give_up(
                            &mut outcome,
                            left,
                            &format!(
                                "the node kept changing while removing it ({ATTEMPTS} attempts); try again"
                            ),
                        );
                        return outcome;
                    }
                    tokio::time::sleep(conflict_pause(changes)).await;
                    continue;
                }
                describe_kube_error(&error)
            }
            // The server refused this request (policy, validation, size): a removal on its own
            // may still pass.
            Err(error) if status::is_refusal_of_the_request(&error) => describe_kube_error(&error),
            // The server or the way to it is in trouble: more requests would not help now.
            Err(error) => {
                give_up(&mut outcome, picked, &describe_kube_error(&error));
                return outcome;
            }
        };
        if batch.len() > 1 {
            tracing::debug!(
                "node {name}: the server refused {} removals at once ({refusal}); removing them one by one",
                batch.len()
            );
            one_by_one = true;
        } else {
            for item in batch {
                settled.insert(item.key.clone());
                outcome.refused.push(item.refused(&refusal));
            }
        }
    }
}

/// How long to wait before reading a node again after it changed under us: growing, with
/// jitter, so that writers who collide do not collide again in step.
fn conflict_pause(changes: usize) -> Duration {
    let base = 20u64 << changes.min(5);
    let jitter = u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default(),
    ) % base;
    Duration::from_millis(base + jitter)
}

/// The annotations to remove: key, the exact value read, and what it was.
fn pick(node: &NodeMeta, prefix: &AnnotationPrefix, choice: &dyn Choice) -> Vec<Pick> {
    let Some(annotations) = node.metadata.annotations.as_ref() else {
        return Vec::new();
    };
    let node_name = nodes::node_name(node);
    let scanned = NodeGrants::scan(prefix, nodes::annotations(node));
    let mut picked = Vec::new();
    let mut take = |key: String, what: Removed| {
        if let Some(value) = annotations.get(&key)
            && !choice.holds_back(&node_name, &key, value)
        {
            picked.push(Pick {
                value: value.clone(),
                key,
                what,
            });
        }
    };
    for grant in scanned.valid.into_iter().filter(|g| choice.takes_grant(g)) {
        take(
            grant.annotation_key(prefix),
            Removed::Grant(Box::new(grant)),
        );
    }
    if choice.takes_invalid() {
        for invalid in scanned.invalid {
            take(
                format!("{prefix}/{}", invalid.name),
                Removed::Invalid { name: invalid.name },
            );
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
    let resolved = super::resolve_for_prune(session, &caller, &args.target, |node| {
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
            Ok(remove_from_node(
                &api,
                node,
                &session.prefix,
                choice,
                dry_run,
                Some((trail, change)),
            )
            .await)
        }
    })
    .await;
    let done = if dry_run { "would remove" } else { "removed" };
    let all_ok = fleet::report_partial(&outcomes, |node, removal: &NodeRemoval| {
        let lines = removal
            .removed
            .iter()
            .map(|r| describe_removed(node, done, r))
            .collect();
        let failures = removal.refused.iter().map(describe_refusal).collect();
        (lines, failures)
    });
    let nothing = outcomes
        .iter()
        .filter(|o| matches!(&o.result, Ok(r) if r.removed.is_empty() && r.refused.is_empty()))
        .count();
    if nothing > 0 {
        eprintln!("{nothing} node(s) had no matching grant; nothing changed there");
    }
    Ok(all_ok)
}

/// What a refused removal says: which annotation, and why it is still there.
pub fn describe_refusal(refusal: &Refusal) -> String {
    let what = match &refusal.what {
        Removed::Grant(grant) => format!(
            "the grant of {} for {} ({})",
            grant.key.fingerprint(),
            grant.user,
            escape_for_display(&refusal.key)
        ),
        Removed::Invalid { .. } => {
            format!(
                "the invalid annotation {}",
                escape_for_display(&refusal.key)
            )
        }
    };
    format!(
        "could not remove {what}: {}",
        escape_for_display(&refusal.reason)
    )
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
/// `tests/keyctl.rs`): the exact method, URI, content type and JSON patch body.
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

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn grant(key: &str, expiry: &str) -> Grant {
        let value = format!(
            "login=\"root\",expiry-time=\"{expiry}\",granted-by=\"alice\",granted-at=\"20261101000000Z\",reason=\"R&D <disk>\" {key}"
        );
        let name = Grant::annotation_name_for(
            &LoginUser::new("root").unwrap(),
            &GrantKey::parse(key).unwrap(),
        );
        Grant::from_annotation(&name, &value).unwrap()
    }

    fn node_json(version: &str, annotations: &[(String, String)]) -> Value {
        let annotations: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": { "name": "n1", "resourceVersion": version, "annotations": annotations },
        })
    }

    fn node(version: &str, annotations: &[(String, String)]) -> NodeMeta {
        serde_json::from_value(node_json(version, annotations)).unwrap()
    }

    fn entry(grant: &Grant) -> (String, String) {
        (
            grant.annotation_key(&AnnotationPrefix::default()),
            grant.annotation_value(),
        )
    }

    fn pointer(key: &str) -> String {
        format!("/metadata/annotations/{}", key.replace('/', "~1"))
    }

    fn respond(status: StatusCode, body: &Value) -> Response<Body> {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap()
    }

    fn failure(code: u16, reason: &str, message: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "message": message, "reason": reason, "code": code})
    }

    fn mock_api() -> (Api<Node>, Handle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Api::all(kube::Client::new(service, "default")), handle)
    }

    /// The next request must be a JSON patch of node n1; returns its body and the responder.
    async fn expect_patch(
        handle: &mut Handle,
    ) -> (Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a patch");
        assert_eq!(request.method(), Method::PATCH);
        assert_eq!(request.uri().path(), "/api/v1/nodes/n1");
        assert_eq!(
            request.headers()["content-type"],
            "application/json-patch+json"
        );
        let body =
            serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
        (body, send)
    }

    /// The next request must be a metadata read of node n1.
    async fn expect_read(handle: &mut Handle) -> tower_test::mock::SendResponse<Response<Body>> {
        let (request, send) = handle.next_request().await.expect("a fresh read");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri().path(), "/api/v1/nodes/n1");
        let accept = request.headers()["accept"].to_str().unwrap().to_owned();
        assert!(accept.contains("as=PartialObjectMetadata"), "{accept}");
        send
    }

    fn expired_only() -> ExpiredChoice {
        ExpiredChoice {
            now: "2026-11-22T12:00:00Z".parse().unwrap(),
            invalid: false,
        }
    }

    #[tokio::test]
    async fn removal_tests_the_resource_version_then_removes_only_that_annotation() {
        let expired = grant(KEY_A, "20261122100000Z");
        let valid = grant(KEY_B, "20261122180000Z");
        let node = node(
            "4711",
            &[
                entry(&expired),
                entry(&valid),
                (format!("{PREFIX}/g.root.broken"), "not a grant".into()),
                ("unrelated.example/x".into(), "y".into()),
            ],
        );
        let (api, mut handle) = mock_api();
        let (expired_key, _) = entry(&expired);
        let server = tokio::spawn(async move {
            let (body, send) = expect_patch(&mut handle).await;
            // No annotation value is sent: the server's own encoding of it (`&` as \u0026...)
            // never matched one sent as is.
            assert_eq!(
                body,
                json!([
                    { "op": "test", "path": "/metadata/resourceVersion", "value": "4711" },
                    { "op": "remove", "path": pointer(&expired_key) },
                ])
            );
            send.send_response(respond(StatusCode::OK, &node_json("4712", &[])));
        });
        let prefix = AnnotationPrefix::default();
        let removal = remove_from_node(&api, node, &prefix, &expired_only(), false, None).await;
        server.await.unwrap();
        assert!(removal.refused.is_empty(), "{:?}", removal.refused);
        assert_eq!(removal.removed.len(), 1);
        assert!(matches!(&removal.removed[0], Removed::Grant(g) if **g == expired));
    }

    #[tokio::test]
    async fn a_node_changed_in_between_is_read_again_and_the_choice_made_afresh() {
        let expired = grant(KEY_A, "20261122100000Z");
        // Someone re-granted the same key (same annotation) after keyctl read the node.
        let regranted = grant(KEY_A, "20261122200000Z");
        let (api, mut handle) = mock_api();
        let fresh_node = node_json("12", &[entry(&regranted)]);
        let server = tokio::spawn(async move {
            let (_, send) = expect_patch(&mut handle).await;
            send.send_response(respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                &failure(422, "Invalid", "the server rejected our request"),
            ));
            expect_read(&mut handle)
                .await
                .send_response(respond(StatusCode::OK, &fresh_node));
            // No further request: the re-granted key is not expired, nothing is left to remove.
            handle
        });
        let prefix = AnnotationPrefix::default();
        let removal = remove_from_node(
            &api,
            node("11", &[entry(&expired)]),
            &prefix,
            &expired_only(),
            false,
            None,
        )
        .await;
        assert!(removal.removed.is_empty() && removal.refused.is_empty());
        drop(api);
        let mut handle = server.await.unwrap();
        assert!(handle.next_request().await.is_none(), "no second patch");
    }

    #[tokio::test]
    async fn one_refused_removal_does_not_keep_the_others() {
        let first = grant(KEY_A, "20261122100000Z");
        let second = grant(KEY_B, "20261122110000Z");
        let (first_key, _) = entry(&first);
        let (second_key, second_value) = entry(&second);
        let (api, mut handle) = mock_api();
        let denied = failure(
            403,
            "Forbidden",
            "admission webhook \"guard\" denied the request: protected",
        );
        let server = {
            let (first_key, second_key) = (first_key.clone(), second_key.clone());
            let after_first = node_json("31", &[entry(&second)]);
            tokio::spawn(async move {
                // Both at once: refused.
                let (body, send) = expect_patch(&mut handle).await;
                assert_eq!(body.as_array().unwrap().len(), 3, "{body}");
                send.send_response(respond(StatusCode::FORBIDDEN, &denied));
                // Then one by one, each against the resourceVersion the last answer gave.
                let (body, send) = expect_patch(&mut handle).await;
                assert_eq!(
                    body,
                    json!([
                        { "op": "test", "path": "/metadata/resourceVersion", "value": "30" },
                        { "op": "remove", "path": pointer(&first_key) },
                    ])
                );
                send.send_response(respond(StatusCode::OK, &after_first));
                let (body, send) = expect_patch(&mut handle).await;
                assert_eq!(
                    body,
                    json!([
                        { "op": "test", "path": "/metadata/resourceVersion", "value": "31" },
                        { "op": "remove", "path": pointer(&second_key) },
                    ])
                );
                send.send_response(respond(StatusCode::FORBIDDEN, &denied));
                handle
            })
        };
        let prefix = AnnotationPrefix::default();
        let removal = remove_from_node(
            &api,
            node("30", &[entry(&first), entry(&second)]),
            &prefix,
            &expired_only(),
            false,
            None,
        )
        .await;
        drop(api);
        let mut handle = server.await.unwrap();
        assert!(
            handle.next_request().await.is_none(),
            "no retry of the refused one"
        );
        assert_eq!(removal.removed.len(), 1);
        assert!(matches!(&removal.removed[0], Removed::Grant(g) if **g == first));
        let [refusal] = &removal.refused[..] else {
            panic!("one refusal: {:?}", removal.refused)
        };
        assert_eq!(refusal.key, second_key);
        assert_eq!(refusal.value, second_value);
        assert_eq!(
            refusal.reason,
            "admission webhook \"guard\" denied the request: protected (403 Forbidden)"
        );
    }

    #[tokio::test]
    async fn a_422_without_a_change_of_the_node_is_a_refusal_not_a_conflict() {
        let expired = grant(KEY_A, "20261122100000Z");
        let (api, mut handle) = mock_api();
        let same = node_json("7", &[entry(&expired)]);
        let server = tokio::spawn(async move {
            let (_, send) = expect_patch(&mut handle).await;
            send.send_response(respond(
                StatusCode::UNPROCESSABLE_ENTITY,
                &failure(422, "Invalid", "metadata.annotations: Invalid value"),
            ));
            expect_read(&mut handle)
                .await
                .send_response(respond(StatusCode::OK, &same));
            handle
        });
        let prefix = AnnotationPrefix::default();
        let removal = remove_from_node(
            &api,
            node("7", &[entry(&expired)]),
            &prefix,
            &expired_only(),
            false,
            None,
        )
        .await;
        drop(api);
        let mut handle = server.await.unwrap();
        assert!(handle.next_request().await.is_none(), "no retries");
        assert!(removal.removed.is_empty());
        assert_eq!(removal.refused.len(), 1);
        assert!(
            removal.refused[0].reason.contains("Invalid value"),
            "{:?}",
            removal.refused
        );
    }

    #[tokio::test]
    async fn a_failing_server_is_not_asked_once_per_annotation() {
        let first = grant(KEY_A, "20261122100000Z");
        let second = grant(KEY_B, "20261122110000Z");
        let (api, mut handle) = mock_api();
        let server = tokio::spawn(async move {
            let (_, send) = expect_patch(&mut handle).await;
            send.send_response(respond(
                StatusCode::SERVICE_UNAVAILABLE,
                &failure(503, "ServiceUnavailable", "etcd is down"),
            ));
            handle
        });
        let prefix = AnnotationPrefix::default();
        let removal = remove_from_node(
            &api,
            node("5", &[entry(&first), entry(&second)]),
            &prefix,
            &expired_only(),
            false,
            None,
        )
        .await;
        drop(api);
        let mut handle = server.await.unwrap();
        assert!(handle.next_request().await.is_none());
        assert!(removal.removed.is_empty());
        assert_eq!(removal.refused.len(), 2);
        assert!(removal.refused[0].reason.contains("etcd is down"));
    }
}
