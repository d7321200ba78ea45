//! The node's kubeconfig (only what a kubelet's uses) and the identity in its client certificate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::{NodeName, NodeNameError};

/// Longest kubeconfig, certificate or key file read, in bytes.
const MAX_FILE_LEN: u64 = 1024 * 1024;

/// A problem with the kubeconfig or the credentials it names.
#[derive(Debug, thiserror::Error)]
pub enum KubeconfigError {
    /// No kubeconfig was configured and none was found at the usual places.
    #[error(
        "no node kubeconfig found (looked at {searched}); set kubeconfig in the config file or pass --kubeconfig"
    )]
    NotFound {
        /// The places looked at.
        searched: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is larger than any kubeconfig, certificate or key.
    #[error("{} is larger than {MAX_FILE_LEN} bytes; it is not a kubeconfig, certificate or key", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The kubeconfig is not valid YAML of the expected shape.
    #[error("{} is not a valid kubeconfig: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The kubeconfig lacks or misnames what is needed.
    #[error("{}: {problem}", path.display())]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// What is missing.
        problem: String,
    },
    /// The kubeconfig asks for something this small command refuses or cannot do.
    #[error("{}: {problem}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is not supported, and what to use instead.
        problem: String,
    },
    /// A `*-data` field is not base64.
    #[error("{}: {field} is not valid base64", path.display())]
    Base64 {
        /// The file.
        path: PathBuf,
        /// The field.
        field: &'static str,
    },
    /// The client certificate cannot be read as X.509 PEM.
    #[error("the client certificate is not a readable X.509 PEM certificate: {reason}")]
    Certificate {
        /// What the parser said.
        reason: String,
    },
    /// The client certificate names no node.
    #[error(
        "the client certificate's subject is {subject:?}, not CN=system:node:NAME; set node_name in the config file or pass --node-name"
    )]
    NotANode {
        /// The subject found.
        subject: String,
    },
    /// The node name in the certificate is not a valid name.
    #[error(transparent)]
    NodeName(#[from] NodeNameError),
}

#[derive(Deserialize)]
struct RawKubeconfig {
    #[serde(rename = "current-context")]
    current_context: Option<String>,
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: RawCluster,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: RawUser,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: RawContext,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawCluster {
    server: Option<String>,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    proxy_url: Option<String>,
    tls_server_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
struct RawUser {
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    token: Option<String>,
    // The one camelCase key of a kubeconfig user (client-go's `tokenFile`).
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    exec: Option<serde::de::IgnoredAny>,
    auth_provider: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawContext {
    cluster: String,
    user: String,
}

/// How the node authenticates to the API server.
#[derive(Clone)]
pub enum ClientAuth {
    /// A client certificate (chain) and its key, PEM.
    Certificate {
        /// Certificate PEM (may also contain the key, as kubelet's combined file does).
        cert_pem: Vec<u8>,
        /// Key PEM.
        key_pem: Vec<u8>,
    },
    /// A bearer token.
    Token(String),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material or tokens.
        match self {
            Self::Certificate { .. } => f.write_str("ClientAuth::Certificate"),
            Self::Token(_) => f.write_str("ClientAuth::Token"),
        }
    }
}

/// The credentials found in a kubeconfig, ready for one HTTPS request.
#[derive(Debug, Clone)]
pub struct NodeCredentials {
    /// The kubeconfig they came from.
    pub source: PathBuf,
    /// The API server's base URL (`https://...`).
    pub server: String,
    /// CA certificates (PEM) that the API server's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// The client's credential.
    pub client: ClientAuth,
}

/// What the client certificate says about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject, as text.
    pub subject: String,
    /// The node name from `CN=system:node:NAME`, if the certificate is a node's.
    pub node_name: Option<String>,
    /// Start of validity.
    pub not_before: DateTime<Utc>,
    /// End of validity.
    pub not_after: DateTime<Utc>,
}

impl CertIdentity {
    /// The node name, or why there is none.
    pub fn node_name(&self) -> Result<NodeName, KubeconfigError> {
        match &self.node_name {
            Some(name) => Ok(NodeName::new(name)?),
            None => Err(KubeconfigError::NotANode {
                subject: self.subject.clone(),
            }),
        }
    }

    /// Whether the certificate is valid at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, KubeconfigError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|source| KubeconfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut data = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut data)
        .map_err(|source| KubeconfigError::Read {
            path: path.to_owned(),
            source,
        })?;
    if data.len() as u64 > MAX_FILE_LEN {
        return Err(KubeconfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(data)
}

impl NodeCredentials {
    /// Loads the current context's cluster and user from the kubeconfig at `path`. Relative
    /// file names in it are relative to the kubeconfig's directory, as kubectl has them.
    pub fn load(path: &Path) -> Result<Self, KubeconfigError> {
        let text = String::from_utf8(read_limited(path)?).map_err(|_| KubeconfigError::Parse {
            path: path.to_owned(),
            message: "not UTF-8".into(),
        })?;
        let raw: RawKubeconfig =
            serde_saphyr::from_str(&text).map_err(|e| KubeconfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let incomplete = |problem: String| KubeconfigError::Incomplete {
            path: path.to_owned(),
            problem,
        };
        let unsupported = |problem: String| KubeconfigError::Unsupported {
            path: path.to_owned(),
            problem,
        };
        let base_dir = crate::perms::parent_dir(path);
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base_dir.join(p)
            }
        };

        let contexts: BTreeMap<&str, &RawContext> = raw
            .contexts
            .iter()
            .map(|c| (c.name.as_str(), &c.context))
            .collect();
        let (cluster_name, user_name) = match raw.current_context.as_deref() {
            Some(name) if !name.is_empty() => {
                let context = contexts.get(name).ok_or_else(|| {
                    incomplete(format!("current-context {name:?} is not defined"))
                })?;
                (context.cluster.as_str(), context.user.as_str())
            }
            // A kubeconfig with one cluster and one user needs no context.
            _ if raw.clusters.len() == 1 && raw.users.len() == 1 => {
                (raw.clusters[0].name.as_str(), raw.users[0].name.as_str())
            }
            _ => return Err(incomplete("no current-context is set".into())),
        };
        let cluster = raw
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .map(|c| &c.cluster)
            .ok_or_else(|| incomplete(format!("cluster {cluster_name:?} is not defined")))?;
        let user = raw
            .users
            .iter()
            .find(|u| u.name == user_name)
            .map(|u| &u.user)
            .ok_or_else(|| incomplete(format!("user {user_name:?} is not defined")))?;

        let server = cluster
            .server
            .clone()
            .ok_or_else(|| incomplete(format!("cluster {cluster_name:?} has no server")))?;
        if !server.starts_with("https://") {
            return Err(unsupported(format!(
                "server {server:?} is not https://; grants are only read over verified TLS"
            )));
        }
        if cluster.insecure_skip_tls_verify {
            return Err(unsupported(
                "insecure-skip-tls-verify is set; grants are only read from a verified API server (give certificate-authority)".into(),
            ));
        }
        if cluster.proxy_url.is_some() || cluster.tls_server_name.is_some() {
            return Err(unsupported(
                "proxy-url and tls-server-name are not supported; use a kubeconfig that reaches the API server directly".into(),
            ));
        }
        let decode = |field: &'static str, data: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| KubeconfigError::Base64 {
                    path: path.to_owned(),
                    field,
                })
        };
        let ca_pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => decode("certificate-authority-data", data)?,
            (None, Some(file)) => read_limited(&resolve(file))?,
            (None, None) => {
                return Err(incomplete(format!(
                    "cluster {cluster_name:?} has neither certificate-authority nor certificate-authority-data"
                )));
            }
        };

        let cert_pem = match (&user.client_certificate_data, &user.client_certificate) {
            (Some(data), _) => Some(decode("client-certificate-data", data)?),
            (None, Some(file)) => Some(read_limited(&resolve(file))?),
            (None, None) => None,
        };
        let key_pem = match (&user.client_key_data, &user.client_key) {
            (Some(data), _) => Some(decode("client-key-data", data)?),
            (None, Some(file)) => Some(read_limited(&resolve(file))?),
            (None, None) => None,
        };
        let client = match (cert_pem, key_pem) {
            (Some(cert_pem), Some(key_pem)) => ClientAuth::Certificate { cert_pem, key_pem },
            (Some(_), None) | (None, Some(_)) => {
                return Err(incomplete(format!(
                    "user {user_name:?} has a client certificate or key but not both"
                )));
            }
            (None, None) => {
                if let Some(token) = &user.token {
                    ClientAuth::Token(token.trim().to_owned())
                } else if let Some(file) = &user.token_file {
                    let token = String::from_utf8(read_limited(&resolve(file))?).map_err(|_| {
                        incomplete(format!("tokenFile {} is not UTF-8", file.display()))
                    })?;
                    ClientAuth::Token(token.trim().to_owned())
                } else if user.exec.is_some() || user.auth_provider.is_some() {
                    return Err(unsupported(format!(
                        "user {user_name:?} uses an exec or auth-provider plugin, which is too slow and fragile for the login path; give a kubeconfig with a client certificate or token (packaging can re-export one to /var/lib/nodegate/node.kubeconfig)"
                    )));
                } else {
                    return Err(incomplete(format!(
                        "user {user_name:?} has no client certificate and no token"
                    )));
                }
            }
        };
        Ok(Self {
            source: path.to_owned(),
            server: server.trim_end_matches('/').to_owned(),
            ca_pem,
            client,
        })
    }

    /// The identity in the client certificate, when the credential is one.
    pub fn identity(&self) -> Option<Result<CertIdentity, KubeconfigError>> {
        match &self.client {
            ClientAuth::Certificate { cert_pem, .. } => Some(cert_identity(cert_pem)),
            ClientAuth::Token(_) => None,
        }
    }
}

/// Reads subject and validity of the first certificate in `pem`.
pub fn cert_identity(pem: &[u8]) -> Result<CertIdentity, KubeconfigError> {
    let bad = |reason: String| KubeconfigError::Certificate { reason };
    let pem = x509_parser::pem::Pem::iter_from_buffer(pem)
        .filter_map(Result::ok)
        .find(|p| p.label == "CERTIFICATE")
        .ok_or_else(|| bad("no CERTIFICATE block found".into()))?;
    let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
    let subject = cert.subject().to_string();
    let node_name = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find_map(|cn| cn.strip_prefix("system:node:"))
        .map(str::to_owned);
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or_else(|| bad("validity out of range".into()))
    };
    Ok(CertIdentity {
        subject,
        node_name,
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_token_file_by_its_kubeconfig_name() {
        let dir = std::env::temp_dir().join(format!("akc-kubeconfig-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "secret-token\n").unwrap();
        std::fs::write(dir.join("ca.crt"), "not checked until a request is made").unwrap();
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', certificate-authority: ca.crt}}]\n\
             users: [{name: u, user: {tokenFile: token}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n",
        )
        .unwrap();
        let loaded = NodeCredentials::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        match loaded.unwrap().client {
            ClientAuth::Token(token) => assert_eq!(token, "secret-token"),
            other => panic!("expected a token, got {other:?}"),
        }
    }
}
