//! What the session is aimed at: a node's host, or a container of a pod.

/// Why a target argument was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The name is not a valid Kubernetes object name.
    #[error(
        "invalid {kind} name {name:?}: use lowercase letters, digits, '-' and '.', at most 253 characters"
    )]
    InvalidName {
        /// "node" or "pod".
        kind: &'static str,
        /// The name given.
        name: String,
    },
    /// A `TYPE/NAME` target of a type other than node or pod.
    #[error("unsupported target {0:?}: give a node name (NODE or node/NODE) or a pod (pod/NAME)")]
    UnsupportedKind(String),
    /// Container flags were given for a host session.
    #[error("{0} only applies to pod/NAME targets; a node target opens a host shell")]
    PodOnlyFlag(&'static str),
}

/// A validated target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The host of a node.
    Node(String),
    /// A pod (the container is chosen later, from the pod's spec).
    Pod(String),
}

impl Target {
    /// Parses `NODE`, `node/NODE`, `nodes/NODE`, `no/NODE`, `pod/NAME`, `pods/NAME` or `po/NAME`.
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let (kind, name) = match text.split_once('/') {
            None => ("node", text),
            Some(("node" | "nodes" | "no", name)) => ("node", name),
            Some(("pod" | "pods" | "po", name)) => ("pod", name),
            Some(_) => return Err(TargetError::UnsupportedKind(text.to_owned())),
        };
        if !is_dns_subdomain(name) {
            return Err(TargetError::InvalidName {
                kind,
                name: name.to_owned(),
            });
        }
        Ok(match kind {
            "node" => Target::Node(name.to_owned()),
            _ => Target::Pod(name.to_owned()),
        })
    }
}

/// A Kubernetes DNS subdomain name (RFC 1123): what node, pod and namespace names must be.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_and_pods_in_kubectl_spellings() {
        assert_eq!(
            Target::parse("node1").ok(),
            Some(Target::Node("node1".into()))
        );
        assert_eq!(
            Target::parse("node/ip-10-0-0-1.ec2.internal").ok(),
            Some(Target::Node("ip-10-0-0-1.ec2.internal".into()))
        );
        assert_eq!(
            Target::parse("po/web-0").ok(),
            Some(Target::Pod("web-0".into()))
        );
        assert_eq!(
            Target::parse("pods/web-0").ok(),
            Some(Target::Pod("web-0".into()))
        );
    }

    #[test]
    fn bad_targets_say_what_is_expected() {
        for bad in [
            "",
            "Node1",
            "node/",
            "pod/-x",
            "a..b",
            "x y",
            &"a".repeat(254),
        ] {
            let err = Target::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("lowercase"), "{bad}: {err}");
        }
        let err = Target::parse("deploy/web").expect_err("unsupported");
        assert!(err.to_string().contains("pod/NAME"), "{err}");
    }
}
