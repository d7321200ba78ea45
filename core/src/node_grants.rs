//! Reading the grants on one Node's annotations.

use chrono::{DateTime, Utc};

use crate::grant::{Grant, GrantError};
use crate::prefix::AnnotationPrefix;
use crate::user::LoginUser;

/// Kubernetes' limit on the total size of a Node's annotations (keys plus values), in bytes.
pub const ANNOTATIONS_SIZE_LIMIT: usize = 256 * 1024;

/// A grant annotation that could not be trusted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidGrant {
    /// The annotation name after `PREFIX/`.
    pub name: String,
    /// Why it was refused.
    pub error: GrantError,
}

/// The grants found under one prefix on one Node, valid and invalid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeGrants {
    /// Grants that parsed and validated, in annotation-name order; expired ones included.
    pub valid: Vec<Grant>,
    /// Annotations under the prefix that did not validate.
    pub invalid: Vec<InvalidGrant>,
}

impl NodeGrants {
    /// Scans annotations, keeping those under `prefix`. Annotations with other prefixes are
    /// ignored; every one under the prefix is either a valid grant or reported as invalid.
    pub fn scan<'a, I>(prefix: &AnnotationPrefix, annotations: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut found = Self::default();
        for (key, value) in annotations {
            let Some(name) = prefix.strip(key) else {
                continue;
            };
            match Grant::from_annotation(name, value) {
                Ok(grant) => found.valid.push(grant),
                Err(error) => found.invalid.push(InvalidGrant {
                    name: name.to_owned(),
                    error,
                }),
            }
        }
        found.valid.sort_by_key(Grant::annotation_name);
        found.invalid.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// The grants that let `user` log in at `now`: valid, for that user, not expired.
    pub fn usable_for<'g>(
        &'g self,
        user: &'g LoginUser,
        now: DateTime<Utc>,
    ) -> impl Iterator<Item = &'g Grant> + 'g {
        self.valid
            .iter()
            .filter(move |g| &g.user == user && !g.expiry.has_passed(now))
    }
}

/// The size Kubernetes counts against [`ANNOTATIONS_SIZE_LIMIT`]: the sum of key and value lengths.
pub fn annotations_size<'a, I>(annotations: I) -> usize
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    annotations
        .into_iter()
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expiry::{Expiry, parse_openssh_time};
    use crate::grant::GrantText;
    use crate::key::{GrantKey, tests::ED25519};

    fn grant(user: &str, expires: &str) -> Grant {
        Grant {
            user: LoginUser::new(user).unwrap(),
            key: GrantKey::parse(ED25519).unwrap(),
            expiry: Expiry::At(parse_openssh_time(expires).unwrap()),
            granted_by: GrantText::new("granted-by", "alice").unwrap(),
            granted_at: parse_openssh_time("20261101000000Z").unwrap(),
            reason: None,
        }
    }

    #[test]
    fn scans_valid_invalid_and_foreign_annotations() {
        let prefix = AnnotationPrefix::default();
        let root = grant("root", "20261122154510Z");
        let core = grant("core", "20261122120000Z");
        let entries = [
            (root.annotation_key(&prefix), root.annotation_value()),
            (core.annotation_key(&prefix), core.annotation_value()),
            (
                format!("{prefix}/g.root.junk"),
                "command=\"sh\" ssh-ed25519 AAAA".to_owned(),
            ),
            (
                "kubeadm.alpha.kubernetes.io/cri-socket".to_owned(),
                "whatever".to_owned(),
            ),
        ];
        let scanned = NodeGrants::scan(
            &prefix,
            entries.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        assert_eq!(scanned.valid, vec![core.clone(), root.clone()]);
        assert_eq!(scanned.invalid.len(), 1);
        assert_eq!(scanned.invalid[0].name, "g.root.junk");

        let now = parse_openssh_time("20261122130000Z").unwrap();
        let user = LoginUser::new("root").unwrap();
        assert_eq!(
            scanned.usable_for(&user, now).collect::<Vec<_>>(),
            vec![&root]
        );
        let core_user = LoginUser::new("core").unwrap();
        assert_eq!(scanned.usable_for(&core_user, now).count(), 0, "expired");
    }

    #[test]
    fn counts_annotation_size_like_kubernetes() {
        assert_eq!(annotations_size([("ab", "cde"), ("f", "")]), 6);
    }
}
