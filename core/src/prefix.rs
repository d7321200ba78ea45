//! The annotation prefix under which grants live.

use std::fmt;
use std::str::FromStr;

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "ssh.nodegate.dev";

/// The DNS-subdomain prefix of grant annotation keys (`PREFIX/g.USER.ID`).
///
/// Every tool that reads or writes grants for a cluster must use the same prefix; it is
/// configurable so that two independent installations can share a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnnotationPrefix(String);

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Not a DNS subdomain.
    #[error(
        "{prefix:?} is not a valid annotation prefix: it must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters), e.g. {DEFAULT_PREFIX}"
    )]
    Invalid {
        /// The refused prefix.
        prefix: String,
    },
    /// The prefix of published host keys, which are never grants.
    #[error(
        "{prefix:?} cannot be the grant prefix: it is where nodes publish their SSH host keys (docs/host-key-format.md); choose another, e.g. {DEFAULT_PREFIX}"
    )]
    HostKeyPrefix {
        /// The refused prefix.
        prefix: String,
    },
}

impl AnnotationPrefix {
    /// Validates `prefix` as a DNS subdomain, the form Kubernetes requires of annotation
    /// prefixes, other than [`HOST_KEY_PREFIX`](crate::host_keys::HOST_KEY_PREFIX): every
    /// annotation under a grant prefix is read as a grant, so host keys never are.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if !crate::node_name::is_dns_subdomain(prefix) {
            return Err(PrefixError::Invalid {
                prefix: prefix.into(),
            });
        }
        if prefix == crate::host_keys::HOST_KEY_PREFIX {
            return Err(PrefixError::HostKeyPrefix {
                prefix: prefix.into(),
            });
        }
        Ok(Self(prefix.to_owned()))
    }

    /// The prefix text, without the trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part of `annotation_key` after `PREFIX/`, if the key is under this prefix.
    pub fn strip<'k>(&self, annotation_key: &'k str) -> Option<&'k str> {
        annotation_key
            .strip_prefix(self.0.as_str())?
            .strip_prefix('/')
    }
}

impl Default for AnnotationPrefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl FromStr for AnnotationPrefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for AnnotationPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_dns_subdomains() {
        assert!(AnnotationPrefix::new(DEFAULT_PREFIX).is_ok());
        assert!(AnnotationPrefix::new("a-b.example.com").is_ok());
        for bad in [
            "",
            "Upper.example",
            "a..b",
            "-a.b",
            "a/b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(AnnotationPrefix::new(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            AnnotationPrefix::new(crate::host_keys::HOST_KEY_PREFIX),
            Err(PrefixError::HostKeyPrefix { .. })
        ));
    }

    #[test]
    fn strips_only_its_own_keys() {
        let p = AnnotationPrefix::default();
        assert_eq!(p.strip("ssh.nodegate.dev/g.root.00"), Some("g.root.00"));
        assert_eq!(p.strip("ssh.nodegate.devx/g.root.00"), None);
        assert_eq!(p.strip("xssh.nodegate.dev/g"), None);
        assert_eq!(p.strip("ssh.nodegate.dev"), None);
    }
}
