//! `publish-host-keys`: publishes this machine's SSH host public keys (and host certificates)
//! on its own Node object, with the node's own credentials, in the format of
//! `docs/host-key-format.md`, so that `keyctl known-hosts` can verify the node before the first
//! login. Run at boot and whenever `/etc/ssh/ssh_host_*.pub` change (a systemd path unit); never
//! on the login path.
//!
//! One GET of the Node, then, only if the published keys differ from the files, one JSON merge
//! patch that sets the keys found and removes host-key annotations of keys no longer present.
//! Nothing outside the host-key prefix (`host-keys.nodegate.dev/`) is touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nodegate_core::host_keys::{
    HostCertificate, HostKey, HostKeyError, HostKeyName, NodeHostKeys, PublishError as FormatError,
};

use crate::api::{self, ApiError};
use crate::config::{NodeName, Settings};
use crate::identity::{IdentityError, load_credentials, node_name};
use crate::kubeconfig::{ClientAuth, KubeconfigError, NodeCredentials};

/// Where sshd keeps its host keys unless `--host-key-dir` or `host_key_dir` say otherwise.
pub const DEFAULT_HOST_KEY_DIR: &str = "/etc/ssh";

/// How long the GET and the patch may take together: a boot-time job, not the login path, so
/// it may wait longer than `deadline`.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(20);

/// Largest key file read (a 16384-bit RSA certificate is well below it).
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Largest body read from an answer to the patch.
const MAX_ANSWER_LEN: u64 = 4 * 1024 * 1024;

/// Why the host keys were not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The node's credentials could not be loaded.
    #[error(transparent)]
    Credentials(#[from] KubeconfigError),
    /// The Node to annotate could not be told.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The host key directory could not be listed.
    #[error("cannot list the host key directory {}: {source}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file could not be read.
    #[error("cannot read the host key file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A key file is not a host key that can be published.
    #[error("refusing the host key file {}: {error}; nothing was published", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: HostKeyError,
    },
    /// The files do not fit the format (two keys of one algorithm, a certificate of another key).
    #[error("the host key files in {} cannot be published: {error}; nothing was published", dir.display())]
    Inconsistent {
        /// The directory.
        dir: PathBuf,
        /// Why.
        error: FormatError,
    },
    /// No host key file in the directory.
    #[error(
        "no host public keys found in {}: expected ssh_host_ed25519_key.pub, ssh_host_ecdsa_key.pub or ssh_host_rsa_key.pub (sshd makes them at first start, or run ssh-keygen -A); nothing was published",
        dir.display()
    )]
    NoKeys {
        /// The directory.
        dir: PathBuf,
    },
    /// The API refused these credentials for this Node.
    #[error(
        "the API server refused to let these credentials {action} Node {node} (403 Forbidden): the Node authorizer and NodeRestriction let a node annotate only its own Node object, so use the node's own credentials (the kubelet's, client certificate CN=system:node:{node}; see export-kubeconfig) and leave node_name unset or equal to it"
    )]
    Forbidden {
        /// `read` or `annotate`.
        action: &'static str,
        /// The Node.
        node: NodeName,
    },
    /// The API did not answer the GET.
    #[error(transparent)]
    Api(ApiError),
    /// The patch got another answer than success.
    #[error("the API server answered {status} to the patch of Node {node}: {message}")]
    Patch {
        /// HTTP status.
        status: u16,
        /// The Node.
        node: NodeName,
        /// The server's message, if any.
        message: String,
    },
}

/// What `publish-host-keys` found and did, for its one line of output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The Node.
    pub node: NodeName,
    /// Annotation names (after the prefix) set or changed.
    pub set: Vec<String>,
    /// Annotation names removed.
    pub removed: Vec<String>,
    /// Every name published, with the key's fingerprint.
    pub keys: Vec<String>,
    /// Key files left out, with the reason.
    pub skipped: Vec<String>,
}

impl std::fmt::Display for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.set.is_empty() && self.removed.is_empty() {
            write!(
                f,
                "the host keys on Node {} are up to date ({}); nothing changed",
                self.node,
                self.keys.join(", ")
            )?;
        } else {
            write!(
                f,
                "published host keys on Node {}: {}",
                self.node,
                self.keys.join(", ")
            )?;
            if !self.set.is_empty() {
                write!(f, "; set {}", self.set.join(", "))?;
            }
            if !self.removed.is_empty() {
                write!(f, "; removed {}", self.removed.join(", "))?;
            }
        }
        if !self.skipped.is_empty() {
            write!(f, "; left out {}", self.skipped.join("; "))?;
        }
        Ok(())
    }
}

/// The host keys found in a directory, and the files left out because their type cannot be
/// published (a DSA key, RSA below 2048 bits), each with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundHostKeys {
    /// What will be published.
    pub keys: NodeHostKeys,
    /// `FILE: reason` of each file left out.
    pub skipped: Vec<String>,
}

/// Reads the host keys in `dir`: `ssh_host_*_key.pub` and `ssh_host_*_key-cert.pub`. Every file
/// of those names must be a valid host key or host certificate: a broken one stops publishing
/// rather than silently publishing less. Only keys of a type the format does not take (DSA,
/// short RSA) are left out, and said so.
pub fn read_host_keys(dir: &Path) -> Result<FoundHostKeys, PublishError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PublishError::ReadDir {
        dir: dir.to_owned(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PublishError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        if let Some(name) = entry.file_name().to_str()
            && name.starts_with("ssh_host_")
            && (name.ends_with("_key.pub") || name.ends_with("_key-cert.pub"))
        {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let (mut keys, mut certificates, mut skipped) = (Vec::new(), Vec::new(), Vec::new());
    for name in names {
        let path = dir.join(&name);
        let text = read_small(&path)?;
        let parsed = if name.ends_with("-cert.pub") {
            HostCertificate::from_cert_file(&text).map(|c| certificates.push(c))
        } else {
            HostKey::from_pub_file(&text).map(|k| keys.push(k))
        };
        match parsed {
            Ok(()) => {}
            Err(error @ (HostKeyError::UnsupportedType { .. } | HostKeyError::WeakRsa { .. })) => {
                skipped.push(format!("{name}: {error}"));
            }
            Err(error) => return Err(PublishError::BadFile { path, error }),
        }
    }
    if keys.is_empty() && certificates.is_empty() {
        return Err(PublishError::NoKeys {
            dir: dir.to_owned(),
        });
    }
    let keys = NodeHostKeys::for_publishing(keys, certificates).map_err(|error| {
        PublishError::Inconsistent {
            dir: dir.to_owned(),
            error,
        }
    })?;
    Ok(FoundHostKeys { keys, skipped })
}

fn read_small(path: &Path) -> Result<String, PublishError> {
    use std::io::Read as _;
    let read_error = |source| PublishError::ReadFile {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_FILE_LEN {
        return Err(PublishError::BadFile {
            path: path.to_owned(),
            error: HostKeyError::TooLong {
                len: text.len(),
                max: MAX_FILE_LEN as usize,
            },
        });
    }
    Ok(text)
}

/// The JSON merge patch that turns the published annotations `current` (every key under the
/// host-key prefix, valid or not) into `wanted`, or `None` when they are equal.
pub fn merge_patch(
    current: &BTreeMap<String, Option<String>>,
    wanted: &BTreeMap<String, String>,
) -> Option<(serde_json::Value, Vec<String>, Vec<String>)> {
    let mut annotations = serde_json::Map::new();
    let (mut set, mut removed) = (Vec::new(), Vec::new());
    let short = |key: &str| HostKeyName::strip_prefix(key).unwrap_or(key).to_owned();
    for (key, value) in wanted {
        if current.get(key) != Some(&Some(value.clone())) {
            annotations.insert(key.clone(), serde_json::Value::String(value.clone()));
            set.push(short(key));
        }
    }
    for key in current.keys() {
        if !wanted.contains_key(key) {
            annotations.insert(key.clone(), serde_json::Value::Null);
            removed.push(short(key));
        }
    }
    if annotations.is_empty() {
        return None;
    }
    let patch = serde_json::json!({ "metadata": { "annotations": annotations } });
    Some((patch, set, removed))
}

/// `publish-host-keys`: reads the host keys, compares them with what the own Node publishes,
/// and patches the difference.
pub fn publish(settings: &Settings, dir: &Path) -> Result<Published, PublishError> {
    let FoundHostKeys {
        keys: found,
        skipped,
    } = read_host_keys(dir)?;
    let credentials = load_credentials(settings)?;
    let node = node_name(settings, &credentials)?;
    let forbidden = |action| PublishError::Forbidden {
        action,
        node: node.clone(),
    };
    let under_prefix = |key: &str| HostKeyName::strip_prefix(key).is_some();
    let read =
        api::fetch_node_annotations_where(&credentials, &node, PUBLISH_DEADLINE, under_prefix)
            .map_err(|e| match e {
                ApiError::Forbidden { .. } => forbidden("read"),
                other => PublishError::Api(other),
            })?;
    let mut current: BTreeMap<String, Option<String>> = read
        .annotations
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    // Values that are not strings cannot be compared: they are replaced or removed.
    current.extend(read.not_strings.into_iter().map(|k| (k, None)));
    let wanted = found.annotations();
    let keys = found
        .keys
        .values()
        .map(|k| format!("{} {}", k.algorithm(), k.fingerprint()))
        .chain(
            found
                .certificates
                .keys()
                .map(|a| HostKeyName::Certificate(*a).name()),
        )
        .collect();
    let Some((patch, set, removed)) = merge_patch(&current, &wanted) else {
        return Ok(Published {
            node,
            set: Vec::new(),
            removed: Vec::new(),
            keys,
            skipped,
        });
    };
    send_patch(&credentials, &node, &patch).map_err(|e| match e {
        PublishError::Patch { status: 403, .. } => forbidden("annotate"),
        other => other,
    })?;
    Ok(Published {
        node,
        set,
        removed,
        keys,
        skipped,
    })
}

fn send_patch(
    credentials: &NodeCredentials,
    node: &NodeName,
    patch: &serde_json::Value,
) -> Result<(), PublishError> {
    let agent = api::agent(credentials, PUBLISH_DEADLINE).map_err(PublishError::Api)?;
    let url = format!("{}/api/v1/nodes/{}", credentials.server, node.as_str());
    let mut request = agent
        .patch(&url)
        .header("Content-Type", "application/merge-patch+json")
        .header("Accept", "application/json");
    if let ClientAuth::Token(token) = &credentials.client {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let transport = |e| PublishError::Api(api::transport_error(credentials, PUBLISH_DEADLINE, e));
    let mut response = request.send(patch.to_string()).map_err(transport)?;
    let status = response.status().as_u16();
    if status == 200 {
        return Ok(());
    }
    if status == 401 {
        return Err(PublishError::Api(ApiError::Unauthorized));
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_LEN)
        .read_to_vec()
        .unwrap_or_default();
    if status == 404 && api::is_node_not_found(&body, node) {
        return Err(PublishError::Api(ApiError::NotFound {
            node: node.to_string(),
        }));
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    Err(PublishError::Patch {
        status,
        node: node.clone(),
        message: message
            .chars()
            .filter(|c| !c.is_control())
            .take(500)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use nodegate_core::host_keys::HOST_KEY_PREFIX;

    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8MAQSklsTyobe0K9vcOUQvIY3r3GeulEhLg/24fBw9";

    const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBANw9iSUO2UYhFMssjUgW46URqv8bBrDgHeF8HLBOWBvKuXF2Rx2J/XyhgX48SOLMuv0hcPaLPZqN6JGzL7ZrGs2fnv+RmEzZNXJUgr3c1zGnQY3RtYPOFYFRmlIIW97H3PH9NCk/+EXp/gqvTwuu8PwHtzkWyLwvpmMwnzTd4bQfAAAAFQDgn3OsbdrbfabADGmAs7IhxWwIIwAAAIEAnbSYRzO2x1b3WBTHLM8QMyyz9/lkVUO/mkamV3CfhSIakGU9R3F1eU8oXmkUZdrO2JQQZ/Y6zL+Dx4AkxR8SMcbU5T8qbhqDe8JeaDl3wgpCCnH+LuUFDmBkyD3J5QQcPzK+Lqk+Ke6sqHwnrT5zkhmDUI3SMDA4fbIMJ8XLMfIAAACAOf9qSrj7LthgnPNvYuQOcA3RU95zjVAzKJ5z0SFmqvaiehfAh1L+q8rEMlt5vkOGdeLCOd2Ub66WJvcEpXsIB9KjDojo4cQGXC8tAwBQd3iBO3j/2g8KLZCjx4kdKTTYuoGXQIMb30HqjBiy1Q4+T9wpD6hPagygaWcTEhPG0pA=";

    fn key(name: &str) -> String {
        format!("{HOST_KEY_PREFIX}/{name}")
    }

    #[test]
    fn patches_only_the_difference() {
        let wanted = BTreeMap::from([(key("ssh-ed25519"), ED25519.to_owned())]);
        let same = BTreeMap::from([(key("ssh-ed25519"), Some(ED25519.to_owned()))]);
        assert_eq!(merge_patch(&same, &wanted), None);

        let current = BTreeMap::from([
            (key("ssh-ed25519"), Some(OTHER.to_owned())),
            (key("ssh-rsa"), Some("ssh-rsa AAAA".to_owned())),
            (key("junk"), None),
        ]);
        let (patch, set, removed) = merge_patch(&current, &wanted).unwrap();
        assert_eq!(set, ["ssh-ed25519"]);
        assert_eq!(removed, ["junk", "ssh-rsa"]);
        assert_eq!(
            patch,
            serde_json::json!({"metadata": {"annotations": {
                key("ssh-ed25519"): ED25519,
                key("ssh-rsa"): null,
                key("junk"): null,
            }}})
        );
    }

    #[test]
    fn reads_key_files_and_refuses_broken_ones() {
        let dir = std::env::temp_dir().join(format!("nodegate-hostkeys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = read_host_keys(&dir).unwrap_err();
        assert!(matches!(empty, PublishError::NoKeys { .. }));
        assert!(empty.to_string().contains(&dir.display().to_string()));
        std::fs::write(
            dir.join("ssh_host_ed25519_key.pub"),
            format!("{ED25519} root@n1\n"),
        )
        .unwrap();
        std::fs::write(dir.join("ssh_host_ed25519_key"), "private, never read").unwrap();
        std::fs::write(dir.join("ssh_known_hosts"), "ignored").unwrap();
        let found = read_host_keys(&dir).unwrap();
        assert_eq!(found.keys.annotations()[&key("ssh-ed25519")], ED25519);
        assert!(found.skipped.is_empty());
        // A DSA key of an old image is left out, and said so.
        std::fs::write(dir.join("ssh_host_dsa_key.pub"), format!("{DSA} root@n1\n")).unwrap();
        let found = read_host_keys(&dir).unwrap();
        assert_eq!(found.keys.annotations().len(), 1);
        assert!(
            found.skipped[0].starts_with("ssh_host_dsa_key.pub: "),
            "{:?}",
            found.skipped
        );
        std::fs::write(dir.join("ssh_host_rsa_key.pub"), "ssh-rsa AAAA\n").unwrap();
        assert!(matches!(
            read_host_keys(&dir),
            Err(PublishError::BadFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
