//! The default mode: answer sshd's question "which keys may log in as USER?".

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nodegate_core::{AnnotationPrefix, LoginUser, NodeGrants};

use crate::api::{self, PrefixedAnnotations};
use crate::cache::{Cache, CachedNode};
use crate::config::{NodeName, Settings, locate_kubeconfig};
use crate::diag::Diagnostics;
use crate::kubeconfig::{KubeconfigError, NodeCredentials};

/// How long a cached answer without any key for the request is served without asking the API
/// (when shorter than the freshness window). Short, so that a login right after a grant works
/// (`keyctl grant` then `ssh`), yet a flood of unknown keys offered before authentication costs
/// at most ten API reads per second.
pub const MISS_FRESHNESS: Duration = Duration::from_millis(100);

/// Where the grants that were served came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Read from the API just now.
    Api,
    /// From the cache, younger than the freshness window: the API was not asked.
    FreshCache {
        /// Age of the cached answer.
        age: Duration,
    },
    /// From the cache because the API could not answer.
    StaleCache {
        /// Age of the cached answer.
        age: Duration,
    },
    /// Nothing was looked up: the login user cannot have grants.
    NotLookedUp,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Self::Api => f.write_str("api"),
            Self::FreshCache { age } => write!(f, "cache (fresh, age {})", secs(age)),
            Self::StaleCache { age } => {
                write!(f, "cache (API unavailable, age {})", secs(age))
            }
            Self::NotLookedUp => f.write_str("none"),
        }
    }
}

/// What sshd is told.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The `authorized_keys` lines, one per usable grant.
    pub lines: Vec<String>,
    /// Fingerprints of the keys served, for the log.
    pub fingerprints: Vec<String>,
    /// Where the grants came from.
    pub source: Source,
}

/// Why no trustworthy answer could be given; the command then fails closed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The API could not answer and there is no cached answer for this node.
    #[error(
        "no grants source: the API could not answer ({api}) and there is no cache entry ({cache})"
    )]
    NoSource {
        /// Why the API failed.
        api: String,
        /// Why the cache could not help.
        cache: String,
    },
    /// The API could not answer and the cached answer is older than `max_stale`.
    #[error(
        "the API could not answer ({api}) and the cached grants are {age:?} old, older than max_stale ({max_stale:?}); failing closed"
    )]
    TooStale {
        /// Why the API failed.
        api: String,
        /// Age of the cache entry.
        age: Duration,
        /// The configured limit.
        max_stale: Duration,
    },
    /// The node to read is unknown.
    #[error("cannot tell which Node this is: {0}")]
    UnknownNode(String),
}

/// The lines for `user` (and only the key with `fingerprint`, when given) from a Node's
/// annotations, validated by the grant parser; invalid annotations are logged when `report`.
pub fn authorized_keys_lines(
    prefix: &AnnotationPrefix,
    annotations: &BTreeMap<String, String>,
    user: &LoginUser,
    fingerprint: Option<&str>,
    now: DateTime<Utc>,
    report: Option<&mut Diagnostics>,
) -> (Vec<String>, Vec<String>) {
    let grants = NodeGrants::scan(
        prefix,
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if let Some(log) = report {
        for invalid in &grants.invalid {
            log.warn(format_args!(
                "ignoring invalid grant annotation {prefix}/{}: {}",
                invalid.name, invalid.error
            ));
        }
    }
    let mut lines = Vec::new();
    let mut fingerprints = Vec::new();
    for grant in grants.usable_for(user, now) {
        let fp = grant.key.fingerprint();
        if fingerprint.is_some_and(|wanted| !fp.matches(wanted)) {
            continue;
        }
        lines.push(grant.authorized_keys_line());
        fingerprints.push(fp.to_string());
    }
    (lines, fingerprints)
}

/// Answers for `user_text` (sshd's `%u`) and optionally `fingerprint` (sshd's `%f`).
pub fn lookup(
    settings: &Settings,
    user_text: &str,
    fingerprint: Option<&str>,
    log: &mut Diagnostics,
    started: Instant,
) -> Result<Answer, LookupError> {
    let user = match LoginUser::new(user_text) {
        Ok(user) => user,
        Err(e) => {
            log.info(format_args!(
                "no grants can exist for login user {user_text:?} ({e}); serving none"
            ));
            return Ok(Answer {
                lines: Vec::new(),
                fingerprints: Vec::new(),
                source: Source::NotLookedUp,
            });
        }
    };
    let now = Utc::now();
    let cache = open_cache(settings, log);
    let answer = |annotations: &BTreeMap<String, String>, source: Source, log: &mut Diagnostics| {
        let report = matches!(source, Source::Api).then_some(log);
        let (lines, fingerprints) = authorized_keys_lines(
            &settings.prefix,
            annotations,
            &user,
            fingerprint,
            now,
            report,
        );
        Answer {
            lines,
            fingerprints,
            source,
        }
    };
    // Within the freshness window the API is not asked: sshd may call several times per login.
    // A cached "yes" is trusted for the whole window (so revocation takes effect within it); a
    // cached "no" only for MISS_FRESHNESS.
    let fresh = |cache: &Cache, node: &NodeName, log: &mut Diagnostics| -> Option<Answer> {
        let row: CachedNode = cache.load(node, &settings.prefix, now).ok()??;
        let age = row.age(now);
        if age >= settings.freshness {
            return None;
        }
        let cached = answer(&row.annotations, Source::FreshCache { age }, log);
        (!cached.lines.is_empty() || age < MISS_FRESHNESS).then_some(cached)
    };

    // Without a configured name, the fresh check uses the one node the cache holds (only this
    // node's own API reads are stored there): that spares parsing the kubeconfig and the
    // certificate on the hot path, about a third of a cached answer's time.
    let cached_node = match (&settings.node_name, &cache) {
        (Some(node), _) => Some(node.clone()),
        (None, Some(cache)) => cache.only_node(&settings.prefix).ok().flatten(),
        (None, None) => None,
    };
    if let (Some(cache), Some(node)) = (&cache, &cached_node)
        && let Some(cached) = fresh(cache, node, log)
    {
        return Ok(cached);
    }

    let credentials = load_credentials(settings);
    let node = match &credentials {
        Ok(creds) => node_name(settings, creds).map_err(LookupError::UnknownNode)?,
        Err(e) => match (&settings.node_name, &cache) {
            (Some(node), _) => node.clone(),
            (None, Some(cache)) => cache
                .only_node(&settings.prefix)
                .ok()
                .flatten()
                .ok_or_else(|| LookupError::UnknownNode(e.to_string()))?,
            (None, None) => return Err(LookupError::UnknownNode(e.to_string())),
        },
    };
    if cached_node.as_ref() != Some(&node)
        && let Some(cache) = &cache
        && let Some(cached) = fresh(cache, &node, log)
    {
        return Ok(cached);
    }

    let api_result = credentials.map_err(|e| e.to_string()).and_then(|creds| {
        if let Some(Ok(identity)) = creds.identity()
            && !identity.is_valid_at(now)
        {
            log.warn(format_args!(
                "the node's client certificate ({}) is valid only from {} to {}; the API will likely refuse it",
                creds.source.display(),
                identity.not_before,
                identity.not_after
            ));
        }
        let remaining = settings.deadline.saturating_sub(started.elapsed());
        api::fetch_node_annotations(&creds, &node, &settings.prefix, remaining)
            .map_err(|e| e.to_string())
    });
    match api_result {
        Ok(found) => {
            report_not_strings(&found, log);
            if let Some(cache) = &cache
                && let Err(e) = cache.store(&node, &settings.prefix, &found.annotations, now)
            {
                log.warn(format_args!("could not update the cache: {e}"));
            }
            Ok(answer(&found.annotations, Source::Api, log))
        }
        Err(api) => {
            let Some(cache) = &cache else {
                return Err(LookupError::NoSource {
                    api,
                    cache: "the cache is unavailable".into(),
                });
            };
            match cache.load(&node, &settings.prefix, now) {
                Ok(Some(row)) if row.age(now) <= settings.max_stale => {
                    log.warn(format_args!(
                        "serving cached grants of Node {node}: the API could not answer: {api}"
                    ));
                    Ok(answer(
                        &row.annotations,
                        Source::StaleCache { age: row.age(now) },
                        log,
                    ))
                }
                Ok(Some(row)) => Err(LookupError::TooStale {
                    api,
                    age: row.age(now),
                    max_stale: settings.max_stale,
                }),
                Ok(None) => Err(LookupError::NoSource {
                    api,
                    cache: format!("none for Node {node}"),
                }),
                Err(e) => Err(LookupError::NoSource {
                    api,
                    cache: e.to_string(),
                }),
            }
        }
    }
}

fn report_not_strings(found: &PrefixedAnnotations, log: &mut Diagnostics) {
    for key in &found.not_strings {
        log.warn(format_args!(
            "ignoring annotation {key}: its value is not a string"
        ));
    }
}

/// Opens the cache, logging (not failing) when it cannot be used: the API alone still answers.
pub fn open_cache(settings: &Settings, log: &mut Diagnostics) -> Option<Cache> {
    let busy = (settings.deadline / 3).min(Duration::from_millis(500));
    match Cache::open(&settings.cache, busy) {
        Ok((cache, notes)) => {
            if let Some(replaced) = notes.replaced {
                log.warn(replaced);
            }
            Some(cache)
        }
        Err(e) => {
            log.error(format_args!("{e}; continuing without the cache"));
            None
        }
    }
}

/// Finds and loads the node's kubeconfig.
pub fn load_credentials(settings: &Settings) -> Result<NodeCredentials, KubeconfigError> {
    let path = locate_kubeconfig(settings.kubeconfig.as_deref()).ok_or_else(|| {
        KubeconfigError::NotFound {
            searched: crate::config::KUBECONFIG_SEARCH_PATH.join(", "),
        }
    })?;
    NodeCredentials::load(&path)
}

/// The node to read: from the client certificate (`system:node:NAME`), or configured. A
/// configured name that differs from the certificate's is refused: it would serve another
/// node's grants on this one.
pub fn node_name(settings: &Settings, credentials: &NodeCredentials) -> Result<NodeName, String> {
    let from_cert = match credentials.identity() {
        Some(Ok(identity)) => identity.node_name().map_err(|e| e.to_string()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the kubeconfig uses a token, which names no node; set node_name".into()),
    };
    match (&settings.node_name, from_cert) {
        (Some(configured), Ok(cert)) if configured != &cert => Err(format!(
            "node_name {configured:?} differs from the client certificate's system:node:{cert}; a node reads only its own grants: remove node_name or fix the kubeconfig"
        )),
        (Some(configured), _) => Ok(configured.clone()),
        (None, from_cert) => from_cert,
    }
}

/// `refresh`: reads the Node from the API and stores it in the cache.
pub fn refresh(settings: &Settings, log: &mut Diagnostics) -> Result<String, String> {
    let creds = load_credentials(settings).map_err(|e| e.to_string())?;
    let node = node_name(settings, &creds)?;
    let found = api::fetch_node_annotations(&creds, &node, &settings.prefix, settings.deadline)
        .map_err(|e| e.to_string())?;
    report_not_strings(&found, log);
    let grants = NodeGrants::scan(
        &settings.prefix,
        found
            .annotations
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for invalid in &grants.invalid {
        log.warn(format_args!(
            "ignoring invalid grant annotation {}/{}: {}",
            settings.prefix, invalid.name, invalid.error
        ));
    }
    let cache = Cache::open(&settings.cache, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    if let Some(replaced) = cache.1.replaced {
        log.warn(replaced);
    }
    cache
        .0
        .store(&node, &settings.prefix, &found.annotations, Utc::now())
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "refreshed the cache {} from Node {node}: {} valid grants, {} invalid annotations",
        settings.cache.display(),
        grants.valid.len(),
        grants.invalid.len() + found.not_strings.len()
    ))
}
