//! One watch on the node's own Node object, kept open for as long as the agent runs.
//!
//! The loop, on a thread of its own: GET the Node (its annotations, uid and resourceVersion),
//! then watch it from that resourceVersion with bookmarks, for about a minute per request;
//! resume from the last resourceVersion seen; on `410 Gone` (the version was compacted away)
//! GET it again. Every failure backs off exponentially with jitter, up to
//! [`MAX_BACKOFF`]. The credentials are loaded again for every request, so a rotated kubelet
//! certificate (re-exported into the kubeconfig) is picked up without a restart.
//!
//! Everything the API sends is untrusted: each event is parsed here, checked to be about this
//! Node, and reduced to its annotations under the prefix; anything else ends the request and
//! is reported. What the loop learns goes to the main loop as [`WatchNews`].
//!
//! Version notes: a node's credentials may list and watch Nodes only with
//! `fieldSelector=metadata.name=<own name>` from Kubernetes 1.32 (beta, `AuthorizeNodeWithSelectors`;
//! GA in 1.34); the kubelet watches its Node the same way, so this works on every version.
//! Watch bookmarks are sent by every supported version (GA in 1.17).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use nodegate_core::AnnotationPrefix;
use serde::Deserialize;

use crate::api::{self, ApiError};
use crate::config::{NodeName, Settings};
use crate::identity;
use crate::kubeconfig::{ClientAuth, NodeCredentials};

/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// First wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one watch request asks the server to keep it open. Each request ending proves the
/// connection alive; a connection cut without a word (a partition) is noticed within this plus
/// [`WATCH_SLACK`].
const WATCH_SECONDS: u64 = 60;
/// How much longer than it asked for a watch may stay open before it is given up.
const WATCH_SLACK: Duration = Duration::from_secs(15);
/// Deadline of the GET of the Node.
const GET_DEADLINE: Duration = Duration::from_secs(10);
/// Longest watch event line accepted (a Node's annotations are at most 256 KiB; the rest of
/// its metadata and, from servers without metadata-only watches, its status fit easily).
const MAX_EVENT_LEN: usize = 4 * 1024 * 1024;

/// What the watch loop tells the main loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchNews {
    /// The Node's annotations under the prefix, as the API holds them now (after a GET or a
    /// change). `uid` is the Node's, for Events about it.
    Node {
        /// Annotation key -> value under the prefix (validated as grants by the caller).
        annotations: BTreeMap<String, String>,
        /// The Node's uid.
        uid: String,
        /// The credentials stamp they were read with.
        credentials: String,
    },
    /// The Node does not exist (deleted, or not registered yet): no grants.
    NodeGone {
        /// The credentials stamp.
        credentials: String,
    },
    /// A watch is open: until further news, the last view is what the API holds.
    Live,
    /// The watch is down (the message says why); the loop retries after `retry_in`.
    Down {
        /// What failed.
        reason: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
}

/// One parsed watch event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// ADDED or MODIFIED: the Node as it is now.
    Changed(NodeMeta),
    /// DELETED.
    Deleted {
        /// The resourceVersion of the deletion.
        resource_version: String,
    },
    /// BOOKMARK: nothing changed up to this resourceVersion.
    Bookmark {
        /// The resourceVersion to resume from.
        resource_version: String,
    },
    /// ERROR with code 410: the resourceVersion is too old; read the Node again.
    Gone,
}

/// The parts of a Node the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMeta {
    /// Its uid.
    pub uid: String,
    /// Its resourceVersion.
    pub resource_version: String,
    /// Annotations under the prefix; values that were not strings are dropped (and named).
    pub annotations: api::PrefixedAnnotations,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

#[derive(Deserialize)]
struct RawMeta {
    metadata: RawMetadata,
}

#[derive(Deserialize)]
struct RawMetadata {
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
struct RawStatus {
    code: Option<u16>,
    message: Option<String>,
    reason: Option<String>,
}

fn bad(reason: impl Into<String>) -> ApiError {
    ApiError::BadAnswer {
        reason: reason.into(),
    }
}

/// A resourceVersion is opaque, but it goes back into a URL: only accept what servers send
/// (etcd revisions are decimal), short, so that nothing can be smuggled into the query.
fn checked_resource_version(rv: Option<String>) -> Result<String, ApiError> {
    match rv {
        Some(rv)
            if !rv.is_empty()
                && rv.len() <= 64
                && rv.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Ok(rv)
        }
        other => Err(bad(format!("unusable resourceVersion {other:?}"))),
    }
}

/// Parses a Node (or PartialObjectMetadata) for `node`.
pub fn parse_node(
    body: &[u8],
    node: &NodeName,
    prefix: &AnnotationPrefix,
) -> Result<NodeMeta, ApiError> {
    let annotations = api::parse_node_metadata(body, node, prefix)?;
    let meta: RawMeta =
        serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let uid = match meta.metadata.uid {
        Some(uid) if !uid.is_empty() && uid.len() <= 64 => uid,
        other => return Err(bad(format!("unusable uid {other:?}"))),
    };
    Ok(NodeMeta {
        uid,
        resource_version: checked_resource_version(meta.metadata.resource_version)?,
        annotations,
    })
}

/// Parses one line of a watch stream about `node`.
pub fn parse_event(
    line: &[u8],
    node: &NodeName,
    prefix: &AnnotationPrefix,
) -> Result<WatchEvent, ApiError> {
    let event: RawEvent =
        serde_json::from_slice(line).map_err(|e| bad(format!("invalid watch event: {e}")))?;
    let object = serde_json::to_vec(&event.object).map_err(|e| bad(e.to_string()))?;
    match event.kind.as_str() {
        "ADDED" | "MODIFIED" => Ok(WatchEvent::Changed(parse_node(&object, node, prefix)?)),
        "DELETED" => {
            let deleted = parse_node(&object, node, prefix)?;
            Ok(WatchEvent::Deleted {
                resource_version: deleted.resource_version,
            })
        }
        // A bookmark carries only a resourceVersion: no name to check.
        "BOOKMARK" => {
            let meta: RawMeta = serde_json::from_slice(&object)
                .map_err(|e| bad(format!("invalid bookmark: {e}")))?;
            Ok(WatchEvent::Bookmark {
                resource_version: checked_resource_version(meta.metadata.resource_version)?,
            })
        }
        "ERROR" => {
            let status: RawStatus = serde_json::from_slice(&object)
                .map_err(|e| bad(format!("invalid watch error: {e}")))?;
            if status.code == Some(410) || status.reason.as_deref() == Some("Expired") {
                Ok(WatchEvent::Gone)
            } else {
                Err(bad(format!(
                    "the watch ended with an error: {}",
                    status.message.unwrap_or_default()
                )))
            }
        }
        other => Err(bad(format!("unknown watch event type {other:?}"))),
    }
}

/// Exponential backoff with jitter, so that the nodes of a cluster whose API server came back
/// do not all come back at the same instant.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt: the current step, between half and all of it.
    pub fn next_wait(&mut self, random: u64) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        let half = step / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % spread)
    }

    /// After a success: start again from the first step.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }
}

/// A random number without a dependency: std seeds each `RandomState` from the OS.
pub(super) fn jitter() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

/// The watch loop. Runs until `news` is closed (the main loop ended).
pub fn run(settings: &Settings, news: &Sender<WatchNews>) {
    let mut backoff = Backoff::default();
    let mut resume: Option<String> = None;
    loop {
        let outcome = one_round(settings, &mut resume, news, &mut backoff);
        let reason = match outcome {
            Ok(()) => continue,
            Err(RoundEnd::Closed) => return,
            Err(RoundEnd::Failed(reason)) => reason,
        };
        let retry_in = backoff.next_wait(jitter());
        if news.send(WatchNews::Down { reason, retry_in }).is_err() {
            return;
        }
        std::thread::sleep(retry_in);
    }
}

enum RoundEnd {
    /// The main loop is gone.
    Closed,
    /// The round failed.
    Failed(String),
}

fn request(
    agent: &ureq::Agent,
    credentials: &NodeCredentials,
    url: &str,
) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
    let mut request = agent.get(url).header(
        "Accept",
        "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
    );
    if let ClientAuth::Token(token) = &credentials.client {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    request.call()
}

/// What a status other than success (and, for a watch, 410) means.
fn refusal(status: u16, node: &NodeName) -> ApiError {
    match status {
        401 => ApiError::Unauthorized,
        403 => ApiError::Forbidden {
            node: node.to_string(),
        },
        status => ApiError::Status {
            status,
            node: node.to_string(),
        },
    }
}

/// One round: (GET if needed, then) one watch request, until it ends.
fn one_round(
    settings: &Settings,
    resume: &mut Option<String>,
    news: &Sender<WatchNews>,
    backoff: &mut Backoff,
) -> Result<(), RoundEnd> {
    let failed = |e: &dyn std::fmt::Display| RoundEnd::Failed(e.to_string());
    let send = |n: WatchNews| news.send(n).map_err(|_| RoundEnd::Closed);
    let kubeconfig = crate::config::locate_kubeconfig(settings.kubeconfig.as_deref());
    let stamp = kubeconfig
        .as_deref()
        .and_then(identity::credentials_stamp)
        .unwrap_or_default();
    let credentials = identity::load_credentials(settings).map_err(|e| failed(&e))?;
    let node = identity::node_name(settings, &credentials).map_err(|e| failed(&e))?;
    let prefix = &settings.prefix;

    let resource_version = match resume.clone() {
        Some(rv) => rv,
        None => {
            let agent = api::agent(&credentials, GET_DEADLINE).map_err(|e| failed(&e))?;
            let url = format!("{}/api/v1/nodes/{}", credentials.server, node.as_str());
            let mut response = request(&agent, &credentials, &url)
                .map_err(|e| failed(&api::transport_error(&credentials, GET_DEADLINE, e)))?;
            let status = response.status().as_u16();
            let body = response
                .body_mut()
                .with_config()
                .limit(api::MAX_RESPONSE_LEN)
                .read_to_vec()
                .map_err(|e| failed(&api::transport_error(&credentials, GET_DEADLINE, e)))?;
            match status {
                200 => {}
                404 if api::is_node_not_found(&body, &node) => {
                    send(WatchNews::NodeGone {
                        credentials: stamp.clone(),
                    })?;
                    // Nothing to watch from: try again after a while (a node registers late).
                    return Err(RoundEnd::Failed(format!(
                        "Node {node} does not exist (yet): no grants apply"
                    )));
                }
                status => return Err(failed(&refusal(status, &node))),
            }
            let meta = parse_node(&body, &node, prefix).map_err(|e| failed(&e))?;
            let rv = meta.resource_version.clone();
            send(WatchNews::Node {
                annotations: meta.annotations.annotations,
                uid: meta.uid,
                credentials: stamp.clone(),
            })?;
            *resume = Some(rv.clone());
            rv
        }
    };

    let agent = api::agent(
        &credentials,
        Duration::from_secs(WATCH_SECONDS) + WATCH_SLACK,
    )
    .map_err(|e| failed(&e))?;
    // Each node's watches end at a time of their own, not all at once.
    let seconds = WATCH_SECONDS - jitter() % 10;
    let url = format!(
        "{}/api/v1/nodes?fieldSelector=metadata.name%3D{}&watch=true&allowWatchBookmarks=true&resourceVersion={}&timeoutSeconds={}",
        credentials.server,
        node.as_str(),
        resource_version,
        seconds
    );
    let transport = |e: ureq::Error| {
        failed(&api::transport_error(
            &credentials,
            Duration::from_secs(seconds),
            e,
        ))
    };
    let response = request(&agent, &credentials, &url).map_err(transport)?;
    match response.status().as_u16() {
        200 => {}
        410 => {
            *resume = None;
            return Ok(());
        }
        status => return Err(failed(&refusal(status, &node))),
    }
    send(WatchNews::Live)?;
    let mut reader = BufReader::new(response.into_body().into_reader());
    let mut line = Vec::new();
    let mut seen_any = false;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_EVENT_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| RoundEnd::Failed(format!("the watch broke off: {e}")))?;
        if read == 0 {
            // The server ended the watch (its timeout): resume from where it was.
            if seen_any {
                backoff.reset();
            }
            return Ok(());
        }
        if line.len() > MAX_EVENT_LEN {
            return Err(failed(&ApiError::TooLarge));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        seen_any = true;
        match parse_event(&line, &node, prefix).map_err(|e| failed(&e))? {
            WatchEvent::Changed(meta) => {
                *resume = Some(meta.resource_version);
                send(WatchNews::Node {
                    annotations: meta.annotations.annotations,
                    uid: meta.uid,
                    credentials: stamp.clone(),
                })?;
            }
            WatchEvent::Deleted { .. } => {
                *resume = None;
                send(WatchNews::NodeGone {
                    credentials: stamp.clone(),
                })?;
                return Err(RoundEnd::Failed(format!(
                    "Node {node} was deleted: no grants apply"
                )));
            }
            WatchEvent::Bookmark { resource_version } => *resume = Some(resource_version),
            WatchEvent::Gone => {
                *resume = None;
                return Ok(());
            }
        }
        backoff.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeName {
        NodeName::new("n1").unwrap()
    }

    fn p() -> AnnotationPrefix {
        AnnotationPrefix::default()
    }

    #[test]
    fn a_change_gives_the_prefixed_annotations_uid_and_version() {
        let line = br#"{"type":"MODIFIED","object":{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":{"name":"n1","uid":"u-1","resourceVersion":"42","annotations":{"ssh.nodegate.dev/g.root.00":"v","other/x":"y"}}}}"#;
        let WatchEvent::Changed(meta) = parse_event(line, &node(), &p()).unwrap() else {
            panic!("not a change");
        };
        assert_eq!(meta.uid, "u-1");
        assert_eq!(meta.resource_version, "42");
        assert_eq!(
            meta.annotations.annotations,
            BTreeMap::from([("ssh.nodegate.dev/g.root.00".to_owned(), "v".to_owned())])
        );
    }

    #[test]
    fn bookmarks_deletions_and_410_are_told_apart() {
        let bookmark = br#"{"type":"BOOKMARK","object":{"kind":"PartialObjectMetadata","metadata":{"resourceVersion":"77"}}}"#;
        assert_eq!(
            parse_event(bookmark, &node(), &p()).unwrap(),
            WatchEvent::Bookmark {
                resource_version: "77".into()
            }
        );
        let deleted = br#"{"type":"DELETED","object":{"kind":"Node","metadata":{"name":"n1","uid":"u","resourceVersion":"78"}}}"#;
        assert_eq!(
            parse_event(deleted, &node(), &p()).unwrap(),
            WatchEvent::Deleted {
                resource_version: "78".into()
            }
        );
        let gone = br#"{"type":"ERROR","object":{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old resource version: 5 (99)","reason":"Expired","code":410}}"#;
        assert_eq!(parse_event(gone, &node(), &p()).unwrap(), WatchEvent::Gone);
        let other = br#"{"type":"ERROR","object":{"kind":"Status","code":500,"message":"boom"}}"#;
        assert!(
            parse_event(other, &node(), &p())
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
    }

    #[test]
    fn events_about_other_objects_or_with_odd_versions_are_refused() {
        for line in [
            // Another node's change must never become this node's grants.
            &br#"{"type":"MODIFIED","object":{"kind":"Node","metadata":{"name":"n2","uid":"u","resourceVersion":"1"}}}"#[..],
            br#"{"type":"MODIFIED","object":{"kind":"Pod","metadata":{"name":"n1","uid":"u","resourceVersion":"1"}}}"#,
            // A version that would change the next request's query.
            br#"{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"1&watch=false"}}}"#,
            br#"{"type":"BOOKMARK","object":{"metadata":{}}}"#,
            br#"{"type":"MODIFIED","object":{"kind":"Node","metadata":{"name":"n1","resourceVersion":"1"}}}"#,
            br#"{"type":"SURPRISE","object":{}}"#,
            b"not json",
        ] {
            assert!(
                parse_event(line, &node(), &p()).is_err(),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_limit_with_jitter_below_each_step() {
        let mut b = Backoff::default();
        let first = b.next_wait(0);
        assert_eq!(first, FIRST_BACKOFF / 2);
        let second = b.next_wait(u64::MAX);
        assert!(second >= FIRST_BACKOFF && second < FIRST_BACKOFF * 2);
        for _ in 0..20 {
            assert!(b.next_wait(jitter()) <= MAX_BACKOFF);
        }
        assert!(b.next_wait(0) >= MAX_BACKOFF / 2);
        b.reset();
        assert_eq!(b.next_wait(0), FIRST_BACKOFF / 2);
    }
}
