//! One HTTPS GET of the own Node's metadata, validated at the boundary.

use std::collections::BTreeMap;
use std::time::Duration;

use nodegate_core::AnnotationPrefix;
use serde::Deserialize;
use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey, RootCerts, TlsConfig};

use crate::config::NodeName;
use crate::kubeconfig::{ClientAuth, NodeCredentials};

/// Largest response accepted. A Node's annotations are limited to 256 KiB; the rest of its
/// metadata (labels, managed fields) or, without metadata-only support, its status, fit easily.
pub const MAX_RESPONSE_LEN: u64 = 4 * 1024 * 1024;

/// Largest error body read (a Kubernetes Status is a few hundred bytes).
const MAX_STATUS_LEN: u64 = 64 * 1024;

/// Ask for metadata only; servers that cannot do that answer with the full Node.
const ACCEPT: &str =
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json";

/// Why the API did not give the Node's annotations.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The CA or client certificate/key PEM is unusable.
    #[error("the kubeconfig's {what} is not usable PEM: {reason}")]
    Pem {
        /// Which part.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The deadline passed before the answer was complete.
    #[error("no complete answer from {server} within the deadline ({waited_ms} ms)")]
    Timeout {
        /// The API server.
        server: String,
        /// How long was waited.
        waited_ms: u128,
    },
    /// Connecting or TLS failed.
    #[error("cannot reach {server}: {reason}")]
    Unreachable {
        /// The API server.
        server: String,
        /// What failed.
        reason: String,
    },
    /// The API server refused the node's credentials (401).
    #[error(
        "the API server rejected the node's credentials (401 Unauthorized): the client certificate is expired, not yet valid, revoked or from another cluster. Fix: check the kubelet's certificate rotation and the kubeconfig"
    )]
    Unauthorized,
    /// The node may not read this Node (403).
    #[error(
        "the node's credentials may not read Node {node} (403 Forbidden): use the kubelet's own credentials for its own Node, with the Node authorizer enabled; a configured node_name must match the certificate's system:node:NAME"
    )]
    Forbidden {
        /// The Node asked for.
        node: String,
    },
    /// The Node does not exist: a 404 whose body is the API server's own Status saying so for
    /// exactly this Node. That is an answer (no Node, no grants), not an outage.
    #[error("Node {node} does not exist (404); check node_name or the kubelet's registration")]
    NotFound {
        /// The Node asked for.
        node: String,
    },
    /// Any other status.
    #[error("the API server answered {status} for Node {node}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The Node asked for.
        node: String,
    },
    /// The answer is larger than [`MAX_RESPONSE_LEN`].
    #[error("the answer is larger than {MAX_RESPONSE_LEN} bytes; refusing it")]
    TooLarge,
    /// The answer is not the JSON of a Node or its metadata.
    #[error("the answer is not a Node's metadata: {reason}")]
    BadAnswer {
        /// What is wrong.
        reason: String,
    },
}

impl ApiError {
    /// Whether this is the API being unavailable (slow, unreachable, broken), as opposed to an
    /// answer about the node or its credentials. Only such failures are remembered for
    /// `api_backoff`: they are the ones that make every invocation wait.
    pub fn is_outage(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Unreachable { .. }
                | Self::Status { .. }
                | Self::TooLarge
                | Self::BadAnswer { .. }
        )
    }
}

#[derive(Deserialize)]
struct StatusBody {
    kind: Option<String>,
    reason: Option<String>,
    details: Option<StatusDetails>,
}

#[derive(Deserialize)]
struct StatusDetails {
    name: Option<String>,
    kind: Option<String>,
}

/// Whether a 404 body is the API server's Status for this very Node being absent. Anything
/// else answering 404 (a proxy, a wrong server URL, a path the server does not serve) is not
/// an answer about the Node.
pub fn is_node_not_found(body: &[u8], node: &NodeName) -> bool {
    let Ok(status) = serde_json::from_slice::<StatusBody>(body) else {
        return false;
    };
    let details = status.details.as_ref();
    status.kind.as_deref() == Some("Status")
        && status.reason.as_deref() == Some("NotFound")
        && details.and_then(|d| d.kind.as_deref()) == Some("nodes")
        && details.and_then(|d| d.name.as_deref()) == Some(node.as_str())
}

/// The grant-relevant part of a Node: its annotations under the prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefixedAnnotations {
    /// Annotation key -> value, only keys under the prefix, only string values.
    pub annotations: BTreeMap<String, String>,
    /// Keys under the prefix whose value was not a string (reported, never used).
    pub not_strings: Vec<String>,
}

#[derive(Deserialize)]
struct ObjectWithMeta {
    kind: Option<String>,
    metadata: Metadata,
}

#[derive(Deserialize)]
struct Metadata {
    name: Option<String>,
    #[serde(default)]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Keeps the annotations under `prefix` from a JSON Node or PartialObjectMetadata for `node`,
/// checking the shape: the right kind and name, a string-to-string map.
pub fn parse_node_metadata(
    body: &[u8],
    node: &NodeName,
    prefix: &AnnotationPrefix,
) -> Result<PrefixedAnnotations, ApiError> {
    parse_node_metadata_where(body, node, |key| prefix.strip(key).is_some())
}

/// Keeps the annotations whose key `keep` accepts, from a JSON Node or PartialObjectMetadata
/// for `node`, checking the shape as [`parse_node_metadata`] does.
pub fn parse_node_metadata_where(
    body: &[u8],
    node: &NodeName,
    keep: impl Fn(&str) -> bool,
) -> Result<PrefixedAnnotations, ApiError> {
    let bad = |reason: String| ApiError::BadAnswer { reason };
    let object: ObjectWithMeta =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    match object.kind.as_deref() {
        Some("Node" | "PartialObjectMetadata") => {}
        other => return Err(bad(format!("kind is {other:?}, expected Node"))),
    }
    if object.metadata.name.as_deref() != Some(node.as_str()) {
        return Err(bad(format!(
            "metadata.name is {:?}, expected {:?}",
            object.metadata.name,
            node.as_str()
        )));
    }
    let mut found = PrefixedAnnotations::default();
    for (key, value) in object.metadata.annotations.unwrap_or_default() {
        if !keep(&key) {
            continue;
        }
        match value {
            serde_json::Value::String(text) => {
                found.annotations.insert(key, text);
            }
            _ => found.not_strings.push(key),
        }
    }
    Ok(found)
}

fn tls_config(credentials: &NodeCredentials) -> Result<TlsConfig, ApiError> {
    let pem_error = |what, reason: String| ApiError::Pem { what, reason };
    let mut roots: Vec<Certificate<'static>> = Vec::new();
    for item in ureq::tls::parse_pem(&credentials.ca_pem) {
        if let PemItem::Certificate(cert) =
            item.map_err(|e| pem_error("certificate-authority", e.to_string()))?
        {
            roots.push(cert);
        }
    }
    if roots.is_empty() {
        return Err(pem_error(
            "certificate-authority",
            "no certificate found".into(),
        ));
    }
    let mut builder = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&roots));
    if let ClientAuth::Certificate { cert_pem, key_pem } = &credentials.client {
        let mut chain = Vec::new();
        for item in ureq::tls::parse_pem(cert_pem) {
            if let PemItem::Certificate(cert) =
                item.map_err(|e| pem_error("client-certificate", e.to_string()))?
            {
                chain.push(cert);
            }
        }
        let mut key: Option<PrivateKey<'static>> = None;
        for item in ureq::tls::parse_pem(key_pem) {
            if let PemItem::PrivateKey(k) =
                item.map_err(|e| pem_error("client-key", e.to_string()))?
            {
                key = Some(k);
                break;
            }
        }
        if chain.is_empty() {
            return Err(pem_error(
                "client-certificate",
                "no certificate found".into(),
            ));
        }
        let key = key.ok_or_else(|| pem_error("client-key", "no private key found".into()))?;
        builder = builder.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(builder.build())
}

/// GETs Node `node` (metadata only) with the node's credentials, all within `deadline`, and
/// returns its annotations under `prefix`.
pub fn fetch_node_annotations(
    credentials: &NodeCredentials,
    node: &NodeName,
    prefix: &AnnotationPrefix,
    deadline: Duration,
) -> Result<PrefixedAnnotations, ApiError> {
    fetch_node_annotations_where(credentials, node, deadline, |key| {
        prefix.strip(key).is_some()
    })
}

/// An HTTPS agent for the API server with the node's credentials: no proxy, no redirects,
/// everything within `deadline`, statuses returned rather than raised.
pub fn agent(credentials: &NodeCredentials, deadline: Duration) -> Result<ureq::Agent, ApiError> {
    Ok(ureq::Agent::config_builder()
        .tls_config(tls_config(credentials)?)
        .timeout_global(Some(deadline))
        .http_status_as_error(false)
        .https_only(true)
        .proxy(None)
        .max_redirects(0)
        .user_agent("nodegate-authorized-keys-cmd")
        .build()
        .into())
}

/// A request's transport failure as an [`ApiError`].
pub fn transport_error(
    credentials: &NodeCredentials,
    deadline: Duration,
    e: ureq::Error,
) -> ApiError {
    match e {
        ureq::Error::Timeout(_) => ApiError::Timeout {
            server: credentials.server.clone(),
            waited_ms: deadline.as_millis(),
        },
        ureq::Error::BodyExceedsLimit(_) => ApiError::TooLarge,
        other => ApiError::Unreachable {
            server: credentials.server.clone(),
            reason: other.to_string(),
        },
    }
}

/// GETs Node `node` (metadata only) with the node's credentials, all within `deadline`, and
/// returns its annotations whose key `keep` accepts.
pub fn fetch_node_annotations_where(
    credentials: &NodeCredentials,
    node: &NodeName,
    deadline: Duration,
    keep: impl Fn(&str) -> bool,
) -> Result<PrefixedAnnotations, ApiError> {
    let agent = agent(credentials, deadline)?;
    let url = format!("{}/api/v1/nodes/{}", credentials.server, node.as_str());
    let mut request = agent.get(&url).header("Accept", ACCEPT);
    if let ClientAuth::Token(token) = &credentials.client {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let transport = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => ApiError::Timeout {
            server: credentials.server.clone(),
            waited_ms: deadline.as_millis(),
        },
        ureq::Error::BodyExceedsLimit(_) => ApiError::TooLarge,
        other => ApiError::Unreachable {
            server: credentials.server.clone(),
            reason: other.to_string(),
        },
    };
    let mut response = request.call().map_err(transport)?;
    match response.status().as_u16() {
        200 => {}
        401 => return Err(ApiError::Unauthorized),
        403 => {
            return Err(ApiError::Forbidden {
                node: node.to_string(),
            });
        }
        404 => {
            let body = response
                .body_mut()
                .with_config()
                .limit(MAX_STATUS_LEN)
                .read_to_vec()
                .map_err(transport)?;
            return Err(if is_node_not_found(&body, node) {
                ApiError::NotFound {
                    node: node.to_string(),
                }
            } else {
                ApiError::Status {
                    status: 404,
                    node: node.to_string(),
                }
            });
        }
        status => {
            return Err(ApiError::Status {
                status,
                node: node.to_string(),
            });
        }
    }
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_RESPONSE_LEN)
        .read_to_vec()
        .map_err(transport)?;
    parse_node_metadata_where(&body, node, keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeName {
        NodeName::new("n1").unwrap()
    }

    #[test]
    fn keeps_only_prefixed_string_annotations() {
        let body = br#"{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1",
            "metadata":{"name":"n1","annotations":{
              "ssh.nodegate.dev/g.root.00":"v",
              "ssh.nodegate.dev/g.root.01":7,
              "other.example/x":"y"}}}"#;
        let found = parse_node_metadata(body, &node(), &AnnotationPrefix::default()).unwrap();
        assert_eq!(found.annotations.len(), 1);
        assert_eq!(found.annotations["ssh.nodegate.dev/g.root.00"], "v");
        assert_eq!(found.not_strings, vec!["ssh.nodegate.dev/g.root.01"]);
    }

    #[test]
    fn a_404_is_an_answer_only_from_the_api_server_about_this_node() {
        let status = |kind: &str, name: &str| {
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"nodes \"{name}\" not found","reason":"NotFound","details":{{"name":"{name}","kind":"{kind}"}},"code":404}}"#
            )
        };
        assert!(is_node_not_found(status("nodes", "n1").as_bytes(), &node()));
        assert!(!is_node_not_found(
            status("nodes", "n2").as_bytes(),
            &node()
        ));
        assert!(!is_node_not_found(status("pods", "n1").as_bytes(), &node()));
        assert!(!is_node_not_found(b"404 page not found", &node()));
        assert!(!is_node_not_found(
            br#"{"kind":"Status","reason":"NotFound"}"#,
            &node()
        ));
    }

    #[test]
    fn refuses_wrong_shapes() {
        let p = AnnotationPrefix::default();
        for body in [
            &br#"{"kind":"Node","metadata":{"name":"n2"}}"#[..],
            br#"{"kind":"Pod","metadata":{"name":"n1"}}"#,
            br#"{"kind":"Node","metadata":{"name":"n1","annotations":["x"]}}"#,
            br#"[]"#,
            b"not json",
        ] {
            assert!(parse_node_metadata(body, &node(), &p).is_err());
        }
        let ok = br#"{"kind":"Node","metadata":{"name":"n1"}}"#;
        assert_eq!(
            parse_node_metadata(ok, &node(), &p).unwrap(),
            PrefixedAnnotations::default()
        );
    }
}
