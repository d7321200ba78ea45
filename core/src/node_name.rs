//! Node names, validated: a Kubernetes Node name is a DNS subdomain (RFC 1123), so it is safe in
//! a URL path and in a log line.

/// A Kubernetes Node name: a DNS subdomain (RFC 1123), so it is safe in a URL path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName(String);

/// A node name that Kubernetes would not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a valid node name: a node name is a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253 characters)"
)]
pub struct NodeNameError {
    /// The refused name.
    pub name: String,
}

/// Whether `text` is a DNS subdomain as Kubernetes means it (RFC 1123): dot-separated labels of
/// lowercase letters, digits and inner '-', at most 63 characters each, 253 in all. Node names
/// and annotation prefixes must be.
pub fn is_dns_subdomain(text: &str) -> bool {
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !text.is_empty() && text.len() <= 253 && text.split('.').all(label_ok)
}

impl NodeName {
    /// Validates a node name.
    pub fn new(name: &str) -> Result<Self, NodeNameError> {
        if !is_dns_subdomain(name) {
            return Err(NodeNameError { name: name.into() });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for NodeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(NodeName::new("ip-10-0-0-1.ec2.internal").is_ok());
        for bad in ["", "A", "a/b", "a..b", "-a", "a b", "a%2f"] {
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
    }
}
