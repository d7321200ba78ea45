//! The default mode: answer sshd's question "which keys may log in as USER?".

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nodegate_core::{AnnotationPrefix, LoginUser, NodeGrants};

use crate::api::{self, ApiError, PrefixedAnnotations};
use crate::cache::{Cache, CacheError, CachedNode, RecordedFailure};
use crate::clock::Moment;
use crate::config::{NodeName, Settings, locate_kubeconfig};
use crate::identity::{
    IdentityError, credentials_stamp, load_credentials, node_name, same_credentials,
};
use crate::kubeconfig::{KubeconfigError, NodeCredentials};
use crate::logger::Logger;
use crate::policy::{
    self, BeforeApi, CacheOffer, CachedFacts, RecentFailure, Refusal, Stamp, WithoutApi,
};

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
    /// From the cache, kept current by `nodegate-agent`'s live watch: the API was not asked.
    Watched {
        /// How long ago the agent last confirmed its watch live.
        confirmed_ago: Duration,
    },
    /// From the cache because the API could not answer.
    StaleCache {
        /// Age of the cached answer.
        age: Duration,
    },
    /// The API answered that the Node does not exist: no grants.
    NodeGone,
    /// Nothing was looked up: the login user cannot have grants.
    NotLookedUp,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = |d: &Duration| format!("{:.1}s", d.as_secs_f64());
        match self {
            Self::Api => f.write_str("api"),
            Self::FreshCache { age } => write!(f, "cache (fresh, age {})", secs(age)),
            Self::Watched { confirmed_ago } => write!(
                f,
                "cache (watched by nodegate-agent, confirmed {} ago)",
                secs(confirmed_ago)
            ),
            Self::StaleCache { age } => {
                write!(f, "cache (API unavailable, age {})", secs(age))
            }
            Self::NodeGone => f.write_str("api (the Node does not exist)"),
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
        api: ApiFailure,
        /// Why the cache could not help.
        cache: String,
    },
    /// The API could not answer and the cached answer is older than `max_stale`.
    #[error(
        "the API could not answer ({api}) and the cached grants are {age:?} old, older than max_stale ({max_stale:?}); failing closed"
    )]
    TooStale {
        /// Why the API failed.
        api: ApiFailure,
        /// Age of the cache entry.
        age: Duration,
        /// The configured limit.
        max_stale: Duration,
    },
    /// The API could not answer and the cached grants' age cannot be told.
    #[error(
        "the API could not answer ({api}) and the cached grants cannot be trusted: {why}; failing closed"
    )]
    AgeUnknown {
        /// Why the API failed.
        api: ApiFailure,
        /// Why the age cannot be told.
        why: String,
    },
    /// The node to read is unknown.
    #[error("cannot tell which Node this is: {0}")]
    UnknownNode(#[from] IdentityError),
}

/// Why the API gave no answer this time.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// It was asked and failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// It could not be asked: the credentials are unusable.
    #[error(transparent)]
    Credentials(#[from] KubeconfigError),
    /// It was not asked: it failed a moment ago.
    #[error(
        "it failed {:.1}s ago and is not asked again for {}: {reason}",
        ago.as_secs_f64(),
        humantime::format_duration(*backoff)
    )]
    Skipped {
        /// How long ago it failed.
        ago: Duration,
        /// The configured `api_backoff`.
        backoff: Duration,
        /// What failed then.
        reason: String,
    },
}

/// The lines for `user` (and only the key with `fingerprint`, when given) from a Node's
/// annotations, validated by the grant parser; invalid annotations are logged when `report`.
pub fn authorized_keys_lines(
    prefix: &AnnotationPrefix,
    annotations: &BTreeMap<String, String>,
    user: &LoginUser,
    fingerprint: Option<&str>,
    now: DateTime<Utc>,
    report: Option<&mut Logger>,
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
///
/// The IO around [`policy`]: reads the cache, decides, asks the API if the policy says so,
/// stores or records what the API said, and decides again when it failed.
pub fn lookup(
    settings: &Settings,
    user_text: &str,
    fingerprint: Option<&str>,
    log: &mut Logger,
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
    let now = Moment::now();
    let policy = settings.policy();
    let prefix = &settings.prefix;
    let mut cache = open_cache(settings, log);
    let kubeconfig = locate_kubeconfig(settings.kubeconfig.as_deref());
    let credentials_now = kubeconfig.as_deref().and_then(credentials_stamp);
    let answer = |annotations: &BTreeMap<String, String>, source: Source, log: &mut Logger| {
        let report = matches!(source, Source::Api).then_some(log);
        let (lines, fingerprints) =
            authorized_keys_lines(prefix, annotations, &user, fingerprint, now.wall, report);
        Answer {
            lines,
            fingerprints,
            source,
        }
    };
    // What the cache says for `node`, and what the policy makes of it before the API.
    let consult = |cache: &mut Option<Cache>, node: &NodeName, log: &mut Logger| {
        let Some(cache) = cache.as_mut() else {
            return Consulted::NotFresh(None, BeforeApi::AskApi);
        };
        let (row, confirmation) =
            match log_cache_result(cache, log, |c| c.load_watched(node, prefix)).flatten() {
                Some((row, confirmation)) => (Some(row), confirmation),
                None => (None, None),
            };
        // The lines are worked out once: they decide whether the row is a hit, and are the
        // answer when it is fresh.
        let cached_answer = row
            .as_ref()
            .map(|row| answer(&row.annotations, Source::NotLookedUp, log));
        let watch_confirmed_ago = confirmation
            .filter(|c| same_credentials(&c.credentials, credentials_now.as_deref()))
            .and_then(|c| match (&now.boot, &c.stamp.boot) {
                (Some(now), Some(then)) => now.since(then),
                _ => None,
            });
        let facts = row
            .as_ref()
            .zip(cached_answer.as_ref())
            .map(|(row, lines)| CachedFacts {
                age: policy::row_age(&row.stamp, &now),
                serves_keys: !lines.lines.is_empty(),
                same_credentials: same_credentials(&row.credentials, credentials_now.as_deref()),
                watch_confirmed_ago,
            });
        match (
            policy::before_api(facts.as_ref(), None, &policy),
            cached_answer,
        ) {
            (BeforeApi::ServeFresh { age }, Some(mut fresh)) => {
                fresh.source = Source::FreshCache { age };
                return Consulted::Fresh(fresh);
            }
            (BeforeApi::ServeWatched { confirmed_ago }, Some(mut watched)) => {
                watched.source = Source::Watched { confirmed_ago };
                return Consulted::Fresh(watched);
            }
            _ => {}
        }
        // Not fresh: only now is the last failure worth reading.
        let failure = log_cache_result(cache, log, |c| c.last_failure(node, prefix))
            .flatten()
            .map(|f| RecentFailure {
                ago: match (&now.boot, &f.stamp.boot) {
                    (Some(now), Some(then)) => now.since(then),
                    _ => None,
                },
                same_credentials: same_credentials(&f.credentials, credentials_now.as_deref()),
                reason: f.reason,
            });
        let decision = policy::before_api(facts.as_ref(), failure.as_ref(), &policy);
        Consulted::NotFresh(row, decision)
    };

    // The node named by the configuration, or the one the cache holds (only this node's own
    // reads are stored there): when its row is fresh and was read with these very credentials,
    // the kubeconfig and certificate need not even be parsed, about a third of the time.
    let fast_node = match (&settings.node_name, cache.as_mut()) {
        (Some(node), _) => Some(node.clone()),
        (None, Some(cache)) => cache.only_node(prefix).ok().flatten(),
        (None, None) => None,
    };
    let mut consulted = None;
    if let Some(node) = fast_node {
        match consult(&mut cache, &node, log) {
            Consulted::Fresh(answer) => return Ok(answer),
            Consulted::NotFresh(row, decision) => consulted = Some((node, row, decision)),
        }
    }

    // Skipping the API needs no credentials: the node is the one whose failure was recorded.
    let (node, row, decision, credentials) = match consulted {
        Some((node, row, decision @ BeforeApi::SkipApi { .. })) => (node, row, decision, None),
        consulted => {
            let credentials = load_credentials(settings);
            // Without usable credentials the API cannot be asked; the node is then the
            // configured one, or the one the cache holds.
            let (node, credentials) = match credentials {
                Ok(creds) => (node_name(settings, &creds)?, Ok(creds)),
                Err(e) => {
                    let fallback = match (&settings.node_name, cache.as_mut()) {
                        (Some(node), _) => Some(node.clone()),
                        (None, Some(cache)) => cache.only_node(prefix).ok().flatten(),
                        (None, None) => None,
                    };
                    match fallback {
                        Some(node) => (node, Err(e)),
                        None => return Err(IdentityError::from(e).into()),
                    }
                }
            };
            let (row, decision) = match consulted {
                Some((consulted_node, row, decision)) if consulted_node == node => (row, decision),
                _ => match consult(&mut cache, &node, log) {
                    Consulted::Fresh(answer) => return Ok(answer),
                    Consulted::NotFresh(row, decision) => (row, decision),
                },
            };
            (node, row, decision, Some(credentials))
        }
    };

    let api_failure = match (decision, credentials) {
        (BeforeApi::SkipApi { failed_ago, reason }, _) => ApiFailure::Skipped {
            ago: failed_ago,
            backoff: policy.api_backoff,
            reason,
        },
        (_, Some(Err(e))) => ApiFailure::Credentials(e),
        (_, Some(Ok(creds))) => {
            warn_if_certificate_invalid(&creds, now.wall, log);
            let asked = AskApi {
                settings,
                credentials: &creds,
                credentials_now: credentials_now.as_deref(),
                node: &node,
                started,
            };
            match asked.ask(&mut cache, log) {
                Ok((annotations, source)) => return Ok(answer(&annotations, source, log)),
                Err(e) => e,
            }
        }
        (_, None) => unreachable!("credentials are loaded unless the API is skipped"),
    };

    let offer = match (&cache, &row) {
        (None, _) => CacheOffer::Unavailable("the cache is unavailable".into()),
        (Some(_), Some(row)) => CacheOffer::Row(policy::row_age(&row.stamp, &now)),
        (Some(_), None) => CacheOffer::NoRow,
    };
    match policy::when_api_fails(&offer, &policy) {
        WithoutApi::ServeStale { age } => {
            log.warn(format_args!(
                "serving cached grants of Node {node}: the API could not answer: {api_failure}"
            ));
            let row = row.expect("a stale answer comes from a row");
            Ok(answer(&row.annotations, Source::StaleCache { age }, log))
        }
        WithoutApi::FailClosed(refusal) => {
            Err(refused(refusal, api_failure, &offer, &node, settings))
        }
    }
}

/// One request to the API for the node's grants, and what is stored or recorded after it.
struct AskApi<'a> {
    settings: &'a Settings,
    credentials: &'a NodeCredentials,
    credentials_now: Option<&'a str>,
    node: &'a NodeName,
    started: Instant,
}

impl AskApi<'_> {
    /// Asks within what is left of the deadline. An answer (the annotations, or that the Node
    /// does not exist) is stored in the cache; a failure that cost time is recorded there.
    fn ask(
        &self,
        cache: &mut Option<Cache>,
        log: &mut Logger,
    ) -> Result<(BTreeMap<String, String>, Source), ApiFailure> {
        let (settings, node) = (self.settings, self.node);
        let sent = Moment::now();
        let sent_at = Instant::now();
        let remaining = settings.deadline.saturating_sub(self.started.elapsed());
        let (annotations, source) = match api::fetch_node_annotations(
            self.credentials,
            node,
            &settings.prefix,
            remaining,
        ) {
            Ok(found) => {
                report_not_strings(&found, log);
                (found.annotations, Source::Api)
            }
            Err(ApiError::NotFound { .. }) => {
                log.warn(format_args!(
                        "Node {node} does not exist (the API answered 404): no grants; the cache now says so too"
                    ));
                (BTreeMap::new(), Source::NodeGone)
            }
            Err(e) => {
                if policy::remember_failure(e.is_outage(), sent_at.elapsed(), remaining)
                    && let Some(cache) = cache.as_mut()
                {
                    let failure = RecordedFailure {
                        stamp: Stamp::from(&sent),
                        credentials: self.credentials_now.unwrap_or_default().to_owned(),
                        reason: e.to_string(),
                    };
                    log_cache_result(cache, log, |c| {
                        c.record_failure(node, &settings.prefix, &failure)
                    });
                }
                return Err(ApiFailure::Api(e));
            }
        };
        store(
            cache,
            node,
            settings,
            annotations.clone(),
            &sent,
            self.credentials_now,
            log,
        );
        Ok((annotations, source))
    }
}

/// The error for a refusal of the policy to serve the cache in place of the API.
fn refused(
    refusal: Refusal,
    api: ApiFailure,
    offer: &CacheOffer,
    node: &NodeName,
    settings: &Settings,
) -> LookupError {
    match refusal {
        Refusal::NoCachedAnswer(why) => LookupError::NoSource {
            api,
            cache: if matches!(offer, CacheOffer::NoRow) {
                format!("none for Node {node}")
            } else {
                why
            },
        },
        Refusal::TooStale { age } => LookupError::TooStale {
            api,
            age,
            max_stale: settings.max_stale,
        },
        Refusal::AgeUnknown(why) => LookupError::AgeUnknown { api, why },
    }
}

/// What the cache said for a node before the API.
enum Consulted {
    /// A fresh answer: give it.
    Fresh(Answer),
    /// The row (if any) and what to do next.
    NotFresh(Option<CachedNode>, BeforeApi),
}

/// Logs a cache error (a locked cache, say) and goes on without the result.
fn log_cache_result<T>(
    cache: &mut Cache,
    log: &mut Logger,
    op: impl FnOnce(&mut Cache) -> Result<T, CacheError>,
) -> Option<T> {
    let result = op(cache);
    for replaced in cache.take_replacements() {
        log.warn(replaced);
    }
    match result {
        Ok(value) => Some(value),
        Err(e) => {
            log.warn(format_args!("{e}"));
            None
        }
    }
}

fn store(
    cache: &mut Option<Cache>,
    node: &NodeName,
    settings: &Settings,
    annotations: BTreeMap<String, String>,
    sent: &Moment,
    credentials: Option<&str>,
    log: &mut Logger,
) {
    let Some(cache) = cache.as_mut() else { return };
    let row = CachedNode {
        annotations,
        stamp: Stamp::from(sent),
        credentials: credentials.unwrap_or_default().to_owned(),
    };
    if let Err(e) = cache.store(node, &settings.prefix, &row) {
        log.warn(format_args!("could not update the cache: {e}"));
    }
    for replaced in cache.take_replacements() {
        log.warn(replaced);
    }
}

fn warn_if_certificate_invalid(creds: &NodeCredentials, now: DateTime<Utc>, log: &mut Logger) {
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
}

/// Logs annotations under the prefix whose value is not a string (never used).
pub fn report_not_strings(found: &PrefixedAnnotations, log: &mut Logger) {
    for key in &found.not_strings {
        log.warn(format_args!(
            "ignoring annotation {key}: its value is not a string"
        ));
    }
}

/// Opens the cache, logging (not failing) when it cannot be used: the API alone still answers.
pub fn open_cache(settings: &Settings, log: &mut Logger) -> Option<Cache> {
    let busy = (settings.deadline / 3).min(Duration::from_millis(500));
    match Cache::open(&settings.cache, busy) {
        Ok(mut cache) => {
            for replaced in cache.take_replacements() {
                log.warn(replaced);
            }
            Some(cache)
        }
        // Someone else holds it (a backup, a sqlite3 session): nothing is wrong with the file.
        Err(e @ CacheError::Busy { .. }) => {
            log.warn(e);
            None
        }
        Err(e) => {
            log.error(format_args!("{e}; continuing without the cache"));
            None
        }
    }
}
