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
#[error(
    "{prefix:?} is not a valid annotation prefix: it must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters), e.g. {DEFAULT_PREFIX}"
)]
pub struct PrefixError {
    /// The refused prefix.
    pub prefix: String,
}

impl AnnotationPrefix {
    /// Validates `prefix` as a DNS subdomain, the form Kubernetes requires of annotation prefixes.
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        if !crate::node_name::is_dns_subdomain(prefix) {
            return Err(PrefixError {
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
