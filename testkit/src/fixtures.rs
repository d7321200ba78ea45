//! Grants as keyctl writes them, for tests that put grants on Nodes directly.

use chrono::{DateTime, Utc};
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};

use crate::Cluster;

/// `t` without its fraction of a second, as grant times are stored.
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).expect("a time in range")
}

/// An expiry `hours` from now.
pub fn in_hours(hours: i64) -> Expiry {
    Expiry::At(whole_seconds(Utc::now() + chrono::Duration::hours(hours)))
}

/// An expiry long past.
pub fn long_expired() -> Expiry {
    Expiry::At(
        DateTime::parse_from_rfc3339("2020-01-01T00:00:00Z")
            .expect("a valid time")
            .to_utc(),
    )
}

/// A grant of `public_key` (an OpenSSH public key line) to `user` until `expiry`, granted now
/// by `test`, with `reason` if given.
pub fn grant(public_key: &str, user: &str, expiry: Expiry, reason: Option<&str>) -> Grant {
    Grant {
        user: LoginUser::new(user).expect("a valid login user"),
        key: GrantKey::parse(public_key).expect("a valid public key"),
        expiry,
        granted_by: GrantText::new("granted-by", "test").expect("valid text"),
        granted_at: whole_seconds(Utc::now()),
        reason: reason.map(|r| GrantText::new("reason", r).expect("valid text")),
    }
}

/// Writes `grant` on Node `node` as the cluster admin, under the default prefix, as keyctl
/// would; returns the annotation key.
pub fn put_grant(cluster: &Cluster, node: &str, grant: &Grant) -> String {
    let key = grant.annotation_key(&AnnotationPrefix::default());
    cluster.set_node_annotation(node, &key, Some(&grant.annotation_value()));
    key
}

/// Removes `grant` from Node `node` as the cluster admin.
pub fn remove_grant(cluster: &Cluster, node: &str, grant: &Grant) {
    cluster.set_node_annotation(
        node,
        &grant.annotation_key(&AnnotationPrefix::default()),
        None,
    );
}
