//! What to do about the sshd sessions of this node, given its grants: pure decisions.
//!
//! [`SessionKeeper::decide`] takes one [`Scan`] of the process table, the node's grants as last
//! confirmed by the API ([`GrantView`]) and the two clocks, and returns [`Action`]s for the
//! caller to carry out (log, warn on a terminal, signal through `ending`) and the records to
//! persist ([`SessionKeeper::stored`]).
//!
//! A session belongs to a grant ([`Action::Login`]) when one of its `publickey` methods used a
//! key that a grant in view gives to that very login user, and that key is not also in the
//! user's own `authorized_keys` (then sshd may have accepted it from there). With several
//! `publickey` methods (`AuthenticationMethods publickey,publickey`) sshd needed all of them,
//! so the session is attributed to every granted one, and ends when the first of those grants
//! ends; a key that is neither granted nor in `authorized_keys` (its grant went before the
//! first scan) is not followed. A grant seen in an earlier view and revoked since counts too,
//! for a session that logged in before it went ([`REVOKED_MEMORY`]): a revocation within a
//! scan interval of the login still ends the session. Everything else is left alone, said once
//! per session ([`Action::Ignore`]): other methods, other keys, unattributable sessions.
//!
//! An attributed session is recorded, and from then on judged by its record, not by what its
//! (user-writable) auth file says any more. Its end:
//!
//! - **expiry**: a warning `warn_before` ahead (once); from `end_grace` before the expiry a
//!   second warning, and SIGTERM at the expiry ([`Action::End`]);
//! - **revocation** (the grant is no longer in view), or a view unconfirmed by the API for
//!   longer than `end_when_stale`: a warning, and SIGTERM `end_grace` later (at once for a
//!   session without a terminal: nobody could read a warning);
//! - a grant renewed (a later expiry, granted again) or a view confirmed again before SIGTERM
//!   cancels the ending, with a note on the terminal;
//! - SIGKILL of the post-auth child ([`Action::Kill`]) when the session is still there
//!   `kill_after` after SIGTERM, repeated every `kill_after`;
//! - [`Action::Logout`] when the session is gone, however it went.
//!
//! Intervals are measured on the boot clock (a step of the wall clock neither hurries nor
//! delays a SIGTERM); expiries are wall-clock instants, as grants state them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use nodegate_core::expiry::{format_openssh_time, parse_openssh_time};
use nodegate_core::{Expiry, Grant, GrantKey, LoginUser};
use serde::{Deserialize, Serialize};

use super::sessions::{AuthMethod, ProcId, Scan, SessionIds, SshSession, Tty};
use crate::clock::Moment;

/// A default for [`SessionSettings::kill_after`]: sshd's child normally closes the connection
/// within milliseconds of SIGTERM; one still there after this is stuck.
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_secs(10);

/// Where intervals are measured: the boot clock of `boot_id`, in milliseconds. Without a boot
/// clock (no `/proc/sys/kernel/random/boot_id`), the wall clock stands in, under a name no
/// boot has, so that records made that way are never restored.
fn clock_of(now: &Moment) -> (String, u64) {
    match &now.boot {
        Some(boot) => (boot.boot_id.clone(), boot.since_boot_ms),
        None => (
            "wall-clock".into(),
            u64::try_from(now.wall.timestamp_millis()).unwrap_or(0),
        ),
    }
}

/// The node's grants as the agent last knew them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantView {
    /// The valid grants of this node (`NodeGrants::valid`, expired ones included: a session of
    /// an expired, not yet pruned grant is still recognised, and ended).
    pub grants: Vec<Grant>,
    /// How long the view has gone unconfirmed by the API; `None` while it is live.
    pub stale_for: Option<Duration>,
}

/// How sessions are ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    /// The node's name, for the hint in warnings (`kubectl keyctl grant NODE ...`).
    pub node_name: String,
    /// Warn this long before a grant expires; zero: no early warning.
    pub warn_before: Duration,
    /// Between the warning that a session ends and its SIGTERM.
    pub end_grace: Duration,
    /// Between SIGTERM and SIGKILL of a session still there.
    pub kill_after: Duration,
    /// End sessions when the view has been unconfirmed this long; `None`: never for staleness.
    pub end_when_stale: Option<Duration>,
}

/// Why a session is ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EndReason {
    /// The grant is no longer on the Node.
    Revoked {
        /// Its annotation name, `g.USER.KEYID`.
        annotation: String,
    },
    /// The grant expires (or expired) at `at`.
    Expired {
        /// Its annotation name.
        annotation: String,
        /// Its expiry.
        at: DateTime<Utc>,
    },
    /// The API has not confirmed the grants for longer than `end_when_stale`.
    Stale {
        /// How long, when the ending began.
        #[serde(with = "humantime_serde_secs")]
        unconfirmed_for: Duration,
    },
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Revoked { annotation } => write!(f, "grant {annotation} was revoked"),
            Self::Expired { annotation, at } => {
                write!(
                    f,
                    "grant {annotation} expires at {}",
                    at.format("%Y-%m-%dT%H:%M:%SZ")
                )
            }
            Self::Stale { unconfirmed_for } => write!(
                f,
                "the API has not confirmed this node's grants for {}",
                humantime::format_duration(*unconfirmed_for)
            ),
        }
    }
}

/// Durations stored as whole seconds.
mod humantime_serde_secs {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// The grant a session was attributed to, as it was when last seen in view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRef {
    /// The key.
    pub key: GrantKey,
    /// The annotation name, `g.USER.KEYID`.
    pub annotation: String,
    /// Who granted it.
    pub granted_by: String,
    /// Why, if said.
    pub reason: Option<String>,
    /// Its end.
    pub expiry: Expiry,
}

impl GrantRef {
    fn of(grant: &Grant) -> GrantRef {
        GrantRef {
            key: grant.key.clone(),
            annotation: grant.annotation_name(),
            granted_by: grant.granted_by.as_str().to_owned(),
            reason: grant.reason.as_ref().map(|r| r.as_str().to_owned()),
            expiry: grant.expiry,
        }
    }
}

/// An ending under way, on the boot clock (milliseconds since boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ending {
    /// Why.
    pub why: EndReason,
    /// When SIGTERM is due.
    pub term_due_ms: u64,
    /// When SIGTERM was sent.
    pub term_sent_ms: Option<u64>,
    /// When SIGKILL was last sent.
    pub kill_sent_ms: Option<u64>,
}

/// One attributed session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sshd processes.
    pub session: SessionIds,
    /// The login user.
    pub user: LoginUser,
    /// The grants it was attributed to (never empty).
    pub grants: Vec<GrantRef>,
    /// When it logged in.
    pub login_at: DateTime<Utc>,
    /// The client address.
    pub source: Option<SocketAddr>,
    /// Whether the early expiry warning was given for the current expiry.
    pub expiry_warned: bool,
    /// Its ending, once begun.
    pub ending: Option<Ending>,
}

impl Record {
    /// The earliest end of its grants; `None` when all are permanent.
    pub fn expiry(&self) -> Option<(&GrantRef, DateTime<Utc>)> {
        self.grants
            .iter()
            .filter_map(|g| g.expiry.instant().map(|at| (g, at)))
            .min_by_key(|(_, at)| *at)
    }

    /// The fingerprints of its keys, for logs.
    pub fn fingerprints(&self) -> String {
        self.grants
            .iter()
            .map(|g| g.key.fingerprint().to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the caller is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A session newly attributed to a grant (log it).
    Login(Record),
    /// Write `text` to each of the session's terminals (`ending::warn`).
    Warn {
        /// The session.
        session: SessionIds,
        /// Its terminals, from this scan.
        ttys: Vec<Tty>,
        /// The message.
        text: String,
    },
    /// SIGTERM to the session's monitor, SIGHUP to its processes (`ending::end`).
    End {
        /// The session.
        session: SessionIds,
        /// Its processes, from this scan.
        processes: Vec<ProcId>,
        /// Why.
        why: EndReason,
    },
    /// SIGKILL to the session's post-auth child, SIGHUP to its processes (`ending::kill`).
    Kill {
        /// The session.
        session: SessionIds,
        /// Its processes, from this scan.
        processes: Vec<ProcId>,
    },
    /// A recorded session is gone (log it).
    Logout {
        /// Its record.
        record: Record,
        /// How long it lasted.
        duration: Duration,
    },
    /// A session that is not a grant's, or cannot be attributed: left alone (log it).
    Ignore {
        /// Its monitor.
        monitor: ProcId,
        /// The login user, when known.
        user: Option<String>,
        /// Why it is left alone.
        why: String,
    },
}

/// The version of [`StoredRecord`]'s layout.
pub const STORED_RECORD_VERSION: u32 = 1;

/// A [`Record`] as persisted across restarts of the agent. Everything is re-validated by
/// [`SessionKeeper::restore`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRecord {
    /// [`STORED_RECORD_VERSION`].
    pub version: u32,
    /// The kernel's `boot_id` when the record was made: pids and start ticks mean nothing in
    /// another boot.
    pub boot_id: String,
    /// The monitor process.
    pub monitor: ProcId,
    /// The post-auth child.
    pub child: ProcId,
    /// The login user.
    pub user: String,
    /// The grants.
    pub grants: Vec<StoredGrant>,
    /// When the session logged in.
    pub login_at: DateTime<Utc>,
    /// The client address.
    pub source: Option<SocketAddr>,
    /// Whether the early expiry warning was given.
    pub expiry_warned: bool,
    /// The ending, once begun.
    pub ending: Option<Ending>,
}

/// A [`GrantRef`] as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredGrant {
    /// `TYPE BASE64`.
    pub key: String,
    /// Its SHA-256 fingerprint (checked against the key).
    pub fingerprint: String,
    /// `g.USER.KEYID` (checked against user and key).
    pub annotation: String,
    /// Who granted it.
    pub granted_by: String,
    /// Why.
    pub reason: Option<String>,
    /// `YYYYMMDDHHMMSSZ`, or `permanent`.
    pub expiry: String,
}

/// The agent's memory of attributed and ignored sessions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionKeeper {
    boot_id: String,
    records: BTreeMap<ProcId, Record>,
    /// Sessions left alone, with the reason last given, so each is said once (and again only
    /// when the reason changes, e.g. `ssh -N` that later opens a shell).
    ignored: BTreeMap<ProcId, String>,
    /// When each session not (yet) attributed was first seen, on the boot clock in ms: it is
    /// said to be left alone only once it has stayed so for [`IGNORE_SETTLE`].
    unsettled: BTreeMap<ProcId, u64>,
    /// The grants of the last view.
    seen: Vec<Grant>,
    /// Grants that left the view, and when that was noticed (for [`REVOKED_MEMORY`]).
    gone: Vec<(Grant, DateTime<Utc>)>,
}

/// How long a session must have stayed unattributed before it is said to be left alone. A new
/// login's processes appear one after the other (monitor, child, shell), so its first scans
/// see it half made ("no post-auth child yet", "no session process yet"); saying so would be
/// noise in the journal, moments before it is attributed.
pub const IGNORE_SETTLE: Duration = Duration::from_secs(3);

/// How long a revoked grant is remembered: a session that logged in with it before it went,
/// but was first scanned after (revoked within a scan interval of the login), is still its
/// grant's, and is ended.
pub const REVOKED_MEMORY: Duration = Duration::from_secs(3600);

fn same_grant(a: &Grant, b: &Grant) -> bool {
    a.user == b.user && a.key.same_key(&b.key)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn until(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or_default()
}

fn when(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The hint that ends every warning.
fn renew_hint(settings: &SessionSettings, user: &LoginUser) -> String {
    format!(
        "To keep working, ask a granter for more time: kubectl keyctl grant {} --user {user} --key YOUR_KEY.pub --expires 1h --reason '...', then log in again if this session has ended.",
        settings.node_name
    )
}

/// The early warning that a session's grant expires.
pub fn expiry_warning_text(
    record: &Record,
    grant: &GrantRef,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    settings: &SessionSettings,
) -> String {
    format!(
        "nodegate: the grant of your key {} to {} on {} (by {}) expires at {} (in {}); this session will then be ended.\n{}",
        grant.key.fingerprint(),
        record.user,
        settings.node_name,
        grant.granted_by,
        when(at),
        humantime::format_duration(Duration::from_secs(until(now, at).as_secs())),
        renew_hint(settings, &record.user),
    )
}

/// The warning that a session is being ended.
pub fn end_warning_text(
    record: &Record,
    why: &EndReason,
    in_: Duration,
    settings: &SessionSettings,
) -> String {
    let cause = match why {
        EndReason::Revoked { .. } => format!(
            "the grant of your key {} to {} on {} was revoked",
            record.fingerprints(),
            record.user,
            settings.node_name
        ),
        EndReason::Expired { at, .. } => format!(
            "the grant of your key {} to {} on {} expires at {}",
            record.fingerprints(),
            record.user,
            settings.node_name,
            when(*at)
        ),
        EndReason::Stale { unconfirmed_for } => format!(
            "the Kubernetes API has not confirmed the grants of {} for {}",
            settings.node_name,
            humantime::format_duration(*unconfirmed_for)
        ),
    };
    format!(
        "nodegate: {cause}; this session ends in {}.\n{}",
        humantime::format_duration(Duration::from_secs(in_.as_secs())),
        renew_hint(settings, &record.user),
    )
}

/// The note that an ending was called off.
pub fn reprieve_text(record: &Record, settings: &SessionSettings) -> String {
    let until = match record.expiry() {
        Some((_, at)) => format!("until {}", when(at)),
        None => "without end".into(),
    };
    format!(
        "nodegate: the grant for {} on {} is valid again ({until}); this session continues.",
        record.user, settings.node_name
    )
}

/// Attributes a session to the grants in view, or says why it is not a grant's.
fn attribute(
    session: &SshSession,
    view: &GrantView,
    gone: &[(Grant, DateTime<Utc>)],
) -> Result<(LoginUser, Vec<GrantRef>), String> {
    let user =
        LoginUser::new(&session.user).map_err(|e| format!("login user cannot hold grants: {e}"))?;
    let mut grants = Vec::new();
    let mut notes = Vec::new();
    for method in &session.methods {
        match method {
            AuthMethod::Publickey {
                key,
                in_authorized_keys: true,
            } => notes.push(format!(
                "key {} is in {user}'s authorized_keys",
                key.fingerprint()
            )),
            AuthMethod::Publickey { key, .. } => {
                let revoked_since_login = gone
                    .iter()
                    .filter(|(_, removed)| session.started_at < *removed)
                    .map(|(g, _)| g);
                match view
                    .grants
                    .iter()
                    .chain(revoked_since_login)
                    .find(|g| g.user == user && g.key.same_key(key))
                {
                    Some(grant) => grants.push(GrantRef::of(grant)),
                    None => {
                        notes.push(format!("key {} has no grant for {user}", key.fingerprint()))
                    }
                }
            }
            AuthMethod::Other(method) => notes.push(format!("authenticated by {method}")),
        }
    }
    if grants.is_empty() {
        return Err(format!("not a grant session: {}", notes.join("; ")));
    }
    Ok((user, grants))
}

impl SessionKeeper {
    /// Takes back records persisted by an earlier run (replacing any held). A record that does
    /// not validate (another version, made in another boot than `now`'s, a key that does not
    /// parse, a fingerprint or annotation name that does not belong to its key, no grant) is
    /// dropped, and why is returned for the log: it is never guessed at, and its session, if
    /// still there, is judged afresh like any unrecorded one.
    pub fn restore(&mut self, stored: Vec<StoredRecord>, now: &Moment) -> Vec<String> {
        let (boot_id, _) = clock_of(now);
        let mut keeper = SessionKeeper {
            boot_id,
            ..SessionKeeper::default()
        };
        let mut dropped = Vec::new();
        for record in stored {
            let monitor = record.monitor;
            match keeper.validate(record) {
                Ok(record) => {
                    if keeper.records.insert(monitor, record).is_some() {
                        dropped.push(format!(
                            "session record of monitor pid {}: stored twice, the later one kept",
                            monitor.pid
                        ));
                    }
                }
                Err(why) => dropped.push(format!(
                    "session record of monitor pid {}: {why}; dropped",
                    monitor.pid
                )),
            }
        }
        *self = keeper;
        dropped
    }

    /// [`restore`](Self::restore) from the JSON of [`to_json`](Self::to_json); each record is
    /// read on its own, so one malformed record is dropped (and named) without the others.
    pub fn restore_json(&mut self, text: &str, now: &Moment) -> Vec<String> {
        let values: Vec<serde_json::Value> = match serde_json::from_str(text) {
            Ok(values) => values,
            Err(e) => {
                self.restore(Vec::new(), now);
                return vec![format!(
                    "the session records are not a JSON list ({e}); all dropped"
                )];
            }
        };
        let mut problems = Vec::new();
        let mut stored = Vec::new();
        for (i, value) in values.into_iter().enumerate() {
            match serde_json::from_value::<StoredRecord>(value) {
                Ok(record) => stored.push(record),
                Err(e) => problems.push(format!("session record #{i} is malformed ({e}); dropped")),
            }
        }
        problems.extend(self.restore(stored, now));
        problems
    }

    /// The records as JSON, to persist after each [`decide`](Self::decide).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.stored()).unwrap_or_else(|_| "[]".into())
    }

    fn validate(&self, stored: StoredRecord) -> Result<Record, String> {
        if stored.version != STORED_RECORD_VERSION {
            return Err(format!("unknown version {}", stored.version));
        }
        if stored.boot_id != self.boot_id {
            return Err(format!("made in another boot ({})", stored.boot_id));
        }
        for id in [stored.monitor, stored.child] {
            if id.pid <= 0 || id.start_ticks == 0 {
                return Err(format!("bad process id {id:?}"));
            }
        }
        let user = LoginUser::new(&stored.user).map_err(|e| e.to_string())?;
        if stored.grants.is_empty() {
            return Err("no grant".into());
        }
        let mut grants = Vec::new();
        for g in stored.grants {
            let key = GrantKey::parse(&g.key).map_err(|e| format!("key: {e}"))?;
            if !key.fingerprint().matches(&g.fingerprint) {
                return Err(format!("fingerprint {} is not its key's", g.fingerprint));
            }
            if g.annotation != Grant::annotation_name_for(&user, &key) {
                return Err(format!(
                    "annotation {} is not its user's and key's",
                    g.annotation
                ));
            }
            let expiry = if g.expiry == "permanent" {
                Expiry::Permanent
            } else {
                Expiry::At(parse_openssh_time(&g.expiry).map_err(|e| e.to_string())?)
            };
            grants.push(GrantRef {
                key,
                annotation: g.annotation,
                granted_by: g.granted_by,
                reason: g.reason,
                expiry,
            });
        }
        Ok(Record {
            session: SessionIds {
                monitor: stored.monitor,
                child: stored.child,
            },
            user,
            grants,
            login_at: stored.login_at,
            source: stored.source,
            expiry_warned: stored.expiry_warned,
            ending: stored.ending,
        })
    }

    /// The records to persist, after each [`decide`](Self::decide).
    pub fn stored(&self) -> Vec<StoredRecord> {
        self.records
            .values()
            .map(|r| StoredRecord {
                version: STORED_RECORD_VERSION,
                boot_id: self.boot_id.clone(),
                monitor: r.session.monitor,
                child: r.session.child,
                user: r.user.as_str().to_owned(),
                grants: r
                    .grants
                    .iter()
                    .map(|g| StoredGrant {
                        key: g.key.to_openssh_without_comment(),
                        fingerprint: g.key.fingerprint().to_string(),
                        annotation: g.annotation.clone(),
                        granted_by: g.granted_by.clone(),
                        reason: g.reason.clone(),
                        expiry: match g.expiry {
                            Expiry::At(at) => format_openssh_time(at),
                            Expiry::Permanent => "permanent".into(),
                        },
                    })
                    .collect(),
                login_at: r.login_at,
                source: r.source,
                expiry_warned: r.expiry_warned,
                ending: r.ending.clone(),
            })
            .collect()
    }

    /// The attributed sessions.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }

    /// Decides what to do after a scan, at `now` (`Moment::now()`: expiries on the wall clock,
    /// intervals on the boot clock).
    pub fn decide(
        &mut self,
        scan: &Scan,
        view: &GrantView,
        now: &Moment,
        settings: &SessionSettings,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let (boot_id, now_ms) = clock_of(now);
        // The boot this process runs in (restored records were checked against it already).
        self.boot_id = boot_id;
        let now = now.wall;

        // Gone sessions: logged out, however they went.
        let gone: Vec<ProcId> = self
            .records
            .keys()
            .filter(|m| !scan.has_monitor(m))
            .copied()
            .collect();
        for monitor in gone {
            if let Some(record) = self.records.remove(&monitor) {
                let duration = until(record.login_at, now);
                actions.push(Action::Logout { record, duration });
            }
        }
        self.ignored.retain(|m, _| scan.has_monitor(m));
        self.unsettled.retain(|m, _| scan.has_monitor(m));

        // Grants that went since the last view are remembered for a while; one back is not gone.
        for g in &self.seen {
            if !view.grants.iter().any(|v| same_grant(v, g)) {
                self.gone.push((g.clone(), now));
            }
        }
        let memory = chrono::Duration::from_std(REVOKED_MEMORY).unwrap_or_default();
        self.gone.retain(|(g, removed)| {
            *removed + memory > now && !view.grants.iter().any(|v| same_grant(v, g))
        });
        self.seen.clone_from(&view.grants);

        // New sessions: attributed to a grant, or left alone (said once per reason).
        for session in &scan.sessions {
            let monitor = session.ids.monitor;
            if self.records.contains_key(&monitor) {
                continue;
            }
            match attribute(session, view, &self.gone) {
                Ok((user, grants)) => {
                    self.ignored.remove(&monitor);
                    self.unsettled.remove(&monitor);
                    let record = Record {
                        session: session.ids,
                        user,
                        grants,
                        login_at: session.started_at,
                        source: session.source,
                        expiry_warned: false,
                        ending: None,
                    };
                    actions.push(Action::Login(record.clone()));
                    self.records.insert(monitor, record);
                }
                Err(why) => {
                    self.ignore(monitor, Some(&session.user), why, now_ms, &mut actions);
                }
            }
        }
        for u in &scan.unattributable {
            if !self.records.contains_key(&u.monitor) {
                self.ignore(
                    u.monitor,
                    u.user.as_deref(),
                    u.reason.clone(),
                    now_ms,
                    &mut actions,
                );
            }
        }

        // Recorded sessions: warn, end, kill.
        for record in self.records.values_mut() {
            let monitor = record.session.monitor;
            let seen = scan
                .sessions
                .iter()
                .find(|s| s.ids.monitor == monitor)
                .map(|s| Seen {
                    ttys: &s.ttys,
                    processes: &s.processes,
                })
                .or_else(|| {
                    scan.unattributable
                        .iter()
                        .find(|u| u.monitor == monitor)
                        .map(|u| Seen {
                            ttys: &u.ttys,
                            processes: &u.processes,
                        })
                })
                .unwrap_or(Seen {
                    ttys: &[],
                    processes: &[],
                });
            judge(record, &seen, view, now, now_ms, settings, &mut actions);
        }
        actions
    }

    fn ignore(
        &mut self,
        monitor: ProcId,
        user: Option<&str>,
        why: String,
        now_ms: u64,
        actions: &mut Vec<Action>,
    ) {
        let first_seen = *self.unsettled.entry(monitor).or_insert(now_ms);
        if now_ms.saturating_sub(first_seen) < ms(IGNORE_SETTLE) {
            return;
        }
        if self.ignored.get(&monitor) == Some(&why) {
            return;
        }
        self.ignored.insert(monitor, why.clone());
        actions.push(Action::Ignore {
            monitor,
            user: user.map(str::to_owned),
            why,
        });
    }
}

/// Why `record` must end now or soon, and how long it may still run; `None` when it may go on.
fn end_reason(
    record: &Record,
    view: &GrantView,
    now: DateTime<Utc>,
    settings: &SessionSettings,
) -> Option<(EndReason, Option<DateTime<Utc>>)> {
    for g in &record.grants {
        let in_view = view
            .grants
            .iter()
            .any(|v| v.user == record.user && v.key.same_key(&g.key));
        if !in_view {
            return Some((
                EndReason::Revoked {
                    annotation: g.annotation.clone(),
                },
                None,
            ));
        }
    }
    if let (Some(stale_for), Some(limit)) = (view.stale_for, settings.end_when_stale)
        && stale_for > limit
    {
        return Some((
            EndReason::Stale {
                unconfirmed_for: stale_for,
            },
            None,
        ));
    }
    let (grant, at) = record.expiry()?;
    let grace = chrono::Duration::from_std(settings.end_grace).unwrap_or(chrono::Duration::MAX);
    let from = at.checked_sub_signed(grace);
    from.is_none_or(|from| now >= from).then(|| {
        (
            EndReason::Expired {
                annotation: grant.annotation.clone(),
                at,
            },
            Some(at),
        )
    })
}

/// What this scan saw of a recorded session.
struct Seen<'s> {
    ttys: &'s [Tty],
    processes: &'s [ProcId],
}

fn judge(
    record: &mut Record,
    seen: &Seen<'_>,
    view: &GrantView,
    now: DateTime<Utc>,
    now_ms: u64,
    settings: &SessionSettings,
    actions: &mut Vec<Action>,
) {
    // The grants as they are now: a renewal moves the expiry, and re-arms the early warning.
    for g in &mut record.grants {
        if let Some(current) = view
            .grants
            .iter()
            .find(|v| v.user == record.user && v.key.same_key(&g.key))
            && current.expiry != g.expiry
        {
            *g = GrantRef::of(current);
            record.expiry_warned = false;
        }
    }
    let session = record.session;
    let warn = |text: String, actions: &mut Vec<Action>| {
        if !seen.ttys.is_empty() {
            actions.push(Action::Warn {
                session,
                ttys: seen.ttys.to_vec(),
                text,
            });
        }
    };
    let reason = end_reason(record, view, now, settings);
    match (&record.ending, reason) {
        (None, Some((why, expires))) => {
            let delay = match expires {
                Some(at) => until(now, at),
                None if seen.ttys.is_empty() => Duration::ZERO,
                None => settings.end_grace,
            };
            warn(end_warning_text(record, &why, delay, settings), actions);
            record.ending = Some(Ending {
                why,
                term_due_ms: now_ms.saturating_add(ms(delay)),
                term_sent_ms: None,
                kill_sent_ms: None,
            });
        }
        (Some(ending), None) if ending.term_sent_ms.is_none() => {
            record.ending = None;
            warn(reprieve_text(record, settings), actions);
        }
        _ => {}
    }
    match &mut record.ending {
        Some(ending) => match ending.term_sent_ms {
            None if now_ms >= ending.term_due_ms => {
                ending.term_sent_ms = Some(now_ms);
                actions.push(Action::End {
                    session: record.session,
                    processes: seen.processes.to_vec(),
                    why: ending.why.clone(),
                });
            }
            None => {}
            Some(term) => {
                let last = ending.kill_sent_ms.unwrap_or(term);
                if now_ms.saturating_sub(last) >= ms(settings.kill_after) {
                    ending.kill_sent_ms = Some(now_ms);
                    actions.push(Action::Kill {
                        session: record.session,
                        processes: seen.processes.to_vec(),
                    });
                }
            }
        },
        None => {
            if settings.warn_before.is_zero() || record.expiry_warned {
                return;
            }
            let Some((grant, at)) = record.expiry() else {
                return;
            };
            if until(now, at) <= settings.warn_before {
                let text = expiry_warning_text(record, grant, at, now, settings);
                record.expiry_warned = true;
                warn(text, actions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use nodegate_core::GrantText;

    use super::*;
    use crate::agent::sessions::Unattributable;
    use crate::clock::BootInstant;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";
    const KEY_B: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHwf2HMM5TRXvo2SQJjsNkiDD5KqiiNjrGVv3UUh9mMT5RHxdtX3GiaNdbCqqnT9+7CRVspZ8p6DKVCs3bG+GNQ=";

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_600_000, 0).unwrap()
    }

    /// `secs` after t0 on both clocks (the boot clock started 1000 s before t0).
    fn at(secs: i64) -> Moment {
        at_wall(secs, secs)
    }

    /// The wall clock `wall` s after t0, the boot clock `boot` s after t0.
    fn at_wall(wall: i64, boot: i64) -> Moment {
        Moment {
            wall: t0() + chrono::Duration::seconds(wall),
            boot: Some(BootInstant {
                boot_id: "boot-1".into(),
                since_boot_ms: u64::try_from((1000 + boot) * 1000).unwrap(),
            }),
        }
    }

    fn key(text: &str) -> GrantKey {
        GrantKey::parse(text).unwrap()
    }

    fn grant(user: &str, key_text: &str, expiry: Expiry) -> Grant {
        Grant {
            user: LoginUser::new(user).unwrap(),
            key: key(key_text),
            expiry,
            granted_by: GrantText::new("granted-by", "carol").unwrap(),
            granted_at: t0(),
            reason: Some(GrantText::new("reason", "disk full").unwrap()),
        }
    }

    fn expires(secs: i64) -> Expiry {
        Expiry::At(t0() + chrono::Duration::seconds(secs))
    }

    fn view(grants: Vec<Grant>) -> GrantView {
        GrantView {
            grants,
            stale_for: None,
        }
    }

    fn ids(pid: i32) -> SessionIds {
        SessionIds {
            monitor: ProcId {
                pid,
                start_ticks: 5,
            },
            child: ProcId {
                pid: pid + 1,
                start_ticks: 6,
            },
        }
    }

    const TTY: Tty = Tty {
        index: 3,
        major: 136,
        minor: 3,
    };

    fn session(pid: i32, user: &str, methods: Vec<AuthMethod>, ttys: &[Tty]) -> SshSession {
        SshSession {
            ids: ids(pid),
            uid: 1000,
            user: user.into(),
            methods,
            source: Some("192.0.2.7:51234".parse().unwrap()),
            ttys: ttys.to_vec(),
            processes: vec![shell(pid)],
            started_at: t0(),
        }
    }

    /// The shell of session `pid`.
    fn shell(pid: i32) -> ProcId {
        ProcId {
            pid: pid + 2,
            start_ticks: 7,
        }
    }

    fn pubkey(text: &str, in_authorized_keys: bool) -> AuthMethod {
        AuthMethod::Publickey {
            key: key(text),
            in_authorized_keys,
        }
    }

    fn scan(sessions: Vec<SshSession>) -> Scan {
        Scan {
            sessions,
            unattributable: Vec::new(),
        }
    }

    fn settings() -> SessionSettings {
        SessionSettings {
            node_name: "node1".into(),
            warn_before: Duration::from_secs(300),
            end_grace: Duration::from_secs(60),
            kill_after: Duration::from_secs(10),
            end_when_stale: Some(Duration::from_secs(3600)),
        }
    }

    /// Alice's session 100, on a terminal, with key A.
    fn alice() -> Scan {
        scan(vec![session(
            100,
            "alice",
            vec![pubkey(KEY_A, false)],
            &[TTY],
        )])
    }

    fn kinds(actions: &[Action]) -> Vec<&'static str> {
        actions
            .iter()
            .map(|a| match a {
                Action::Login(_) => "login",
                Action::Warn { .. } => "warn",
                Action::End { .. } => "end",
                Action::Kill { .. } => "kill",
                Action::Logout { .. } => "logout",
                Action::Ignore { .. } => "ignore",
            })
            .collect()
    }

    fn warn_text(actions: &[Action]) -> &str {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Warn { text, ttys, .. } => {
                    assert_eq!(ttys, &[TTY]);
                    Some(text.as_str())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no warning in {actions:?}"))
    }

    fn ignore_why(actions: &[Action]) -> &str {
        match actions {
            [Action::Ignore { why, .. }] => why,
            _ => panic!("expected one Ignore: {actions:?}"),
        }
    }

    /// A keeper that has seen alice's session log in with the grant of key A.
    fn logged_in(grant_expiry: Expiry) -> SessionKeeper {
        let mut keeper = SessionKeeper::default();
        let actions = keeper.decide(
            &alice(),
            &view(vec![grant("alice", KEY_A, grant_expiry)]),
            &at(0),
            &settings(),
        );
        assert_eq!(kinds(&actions), ["login"], "{actions:?}");
        keeper
    }

    #[test]
    fn a_session_with_a_granted_key_of_that_user_logs_in() {
        let mut keeper = SessionKeeper::default();
        let v = view(vec![
            grant("bob", KEY_A, expires(3600)),
            grant("alice", KEY_A, expires(3600)),
            grant("alice", KEY_B, expires(60)),
        ]);
        let actions = keeper.decide(&alice(), &v, &at(0), &settings());
        let [Action::Login(record)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(record.session, ids(100));
        assert_eq!(record.user.as_str(), "alice");
        assert_eq!(record.grants.len(), 1);
        let g = &record.grants[0];
        assert_eq!(
            g.annotation,
            Grant::annotation_name_for(&record.user, &key(KEY_A))
        );
        assert_eq!(
            (g.granted_by.as_str(), g.reason.as_deref()),
            ("carol", Some("disk full"))
        );
        assert_eq!(g.expiry, expires(3600));
        assert_eq!(record.login_at, t0());
        assert_eq!(record.source, Some("192.0.2.7:51234".parse().unwrap()));
        // Seen again: nothing new.
        assert_eq!(keeper.decide(&alice(), &v, &at(5), &settings()), []);
    }

    #[test]
    fn other_sessions_are_left_alone_and_said_once() {
        let settings = settings();
        let v = view(vec![
            grant("alice", KEY_A, expires(3600)),
            grant("bob", KEY_B, expires(3600)),
        ]);
        let cases: Vec<(SshSession, &str)> = vec![
            (
                session(200, "alice", vec![pubkey(KEY_A, true)], &[]),
                "in alice's authorized_keys",
            ),
            (
                session(
                    300,
                    "alice",
                    vec![AuthMethod::Other("password".into())],
                    &[],
                ),
                "authenticated by password",
            ),
            (
                session(400, "alice", vec![pubkey(KEY_B, false)], &[]),
                "has no grant for alice",
            ),
            (
                session(500, "9bad", vec![pubkey(KEY_A, false)], &[]),
                "login user cannot hold grants",
            ),
        ];
        for (s, expected) in cases {
            let mut keeper = SessionKeeper::default();
            let one = scan(vec![s]);
            // Not said while it may still be a login in the making.
            assert_eq!(keeper.decide(&one, &v, &at(0), &settings), [], "too early");
            let actions = keeper.decide(&one, &v, &at(3), &settings);
            let why = ignore_why(&actions);
            assert!(
                why.starts_with("not a grant session") || why.contains(expected),
                "{why}"
            );
            assert!(why.contains(expected), "{why}");
            assert_eq!(keeper.decide(&one, &v, &at(4), &settings), [], "said once");
            // Revoking every grant never touches it.
            assert_eq!(keeper.decide(&one, &view(vec![]), &at(5), &settings), []);
        }
    }

    #[test]
    fn a_login_in_the_making_is_attributed_without_being_said_left_alone() {
        let mut keeper = SessionKeeper::default();
        let v = view(vec![grant("alice", KEY_A, expires(3600))]);
        let half_made = Scan {
            sessions: vec![],
            unattributable: vec![Unattributable {
                monitor: ids(100).monitor,
                child: None,
                user: Some("alice".into()),
                ttys: vec![],
                processes: vec![],
                reason: "no post-auth sshd child (yet)".into(),
            }],
        };
        assert_eq!(keeper.decide(&half_made, &v, &at(0), &settings()), []);
        assert_eq!(keeper.decide(&half_made, &v, &at(1), &settings()), []);
        let actions = keeper.decide(&alice(), &v, &at(2), &settings());
        assert_eq!(kinds(&actions), ["login"], "{actions:?}");
    }

    #[test]
    fn unattributable_sessions_are_said_once_per_reason_and_attributed_when_they_can_be() {
        let mut keeper = SessionKeeper::default();
        let v = view(vec![grant("alice", KEY_A, expires(3600))]);
        let no_shell = Scan {
            sessions: vec![],
            unattributable: vec![Unattributable {
                monitor: ids(100).monitor,
                child: Some(ids(100).child),
                user: Some("alice".into()),
                ttys: vec![],
                processes: vec![],
                reason: "no session process with SSH_USER_AUTH".into(),
            }],
        };
        assert_eq!(keeper.decide(&no_shell, &v, &at(0), &settings()), []);
        let actions = keeper.decide(&no_shell, &v, &at(3), &settings());
        assert!(ignore_why(&actions).contains("no session process"));
        assert_eq!(keeper.decide(&no_shell, &v, &at(4), &settings()), []);
        // A shell opened later on the same connection (ControlMaster): attributed now.
        let actions = keeper.decide(&alice(), &v, &at(5), &settings());
        assert_eq!(kinds(&actions), ["login"]);
    }

    #[test]
    fn a_revoked_grant_ends_its_session_after_a_warning_and_kills_it_if_it_stays() {
        let mut keeper = logged_in(expires(7200));
        let s = settings();
        let revoked = view(vec![grant("bob", KEY_A, expires(7200))]);
        let actions = keeper.decide(&alice(), &revoked, &at(10), &s);
        assert_eq!(kinds(&actions), ["warn"]);
        let text = warn_text(&actions);
        assert!(
            text.contains("was revoked") && text.contains("ends in 1m"),
            "{text}"
        );
        assert!(
            text.contains("kubectl keyctl grant node1 --user alice"),
            "{text}"
        );
        assert!(text.contains(key(KEY_A).fingerprint().as_str()), "{text}");
        // A wall clock stepped forward an hour does not hurry the SIGTERM: the boot clock counts.
        assert_eq!(
            keeper.decide(&alice(), &revoked, &at_wall(3600, 69), &s),
            []
        );
        let actions = keeper.decide(&alice(), &revoked, &at(70), &s);
        let [
            Action::End {
                session,
                why,
                processes,
            },
        ] = &actions[..]
        else {
            panic!("{actions:?}")
        };
        assert_eq!(session, &ids(100));
        assert_eq!(
            processes,
            &[shell(100)],
            "the scan's session processes are hung up too"
        );
        assert!(
            matches!(why, EndReason::Revoked { annotation } if annotation.starts_with("g.alice."))
        );
        assert_eq!(keeper.decide(&alice(), &revoked, &at(79), &s), []);
        assert_eq!(
            kinds(&keeper.decide(&alice(), &revoked, &at(80), &s)),
            ["kill"]
        );
        assert_eq!(keeper.decide(&alice(), &revoked, &at(85), &s), []);
        assert_eq!(
            kinds(&keeper.decide(&alice(), &revoked, &at(90), &s)),
            ["kill"]
        );
        // Gone: logged out, with how long it lasted.
        let actions = keeper.decide(&scan(vec![]), &revoked, &at(95), &s);
        let [Action::Logout { record, duration }] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(record.session, ids(100));
        assert_eq!(*duration, Duration::from_secs(95));
        assert_eq!(keeper.records().count(), 0);
    }

    #[test]
    fn a_session_without_a_terminal_is_ended_at_once() {
        let mut keeper = SessionKeeper::default();
        let notty = scan(vec![session(100, "alice", vec![pubkey(KEY_A, false)], &[])]);
        keeper.decide(
            &notty,
            &view(vec![grant("alice", KEY_A, expires(7200))]),
            &at(0),
            &settings(),
        );
        let actions = keeper.decide(&notty, &view(vec![]), &at(1), &settings());
        assert_eq!(kinds(&actions), ["end"], "nobody to warn");
    }

    #[test]
    fn an_expiring_grant_warns_ahead_then_ends_the_session_at_its_expiry() {
        let mut keeper = logged_in(expires(3600));
        let s = settings();
        let v = view(vec![grant("alice", KEY_A, expires(3600))]);
        assert_eq!(keeper.decide(&alice(), &v, &at(3299), &s), []);
        let actions = keeper.decide(&alice(), &v, &at(3300), &s);
        assert_eq!(kinds(&actions), ["warn"]);
        let text = warn_text(&actions);
        assert!(
            text.contains("expires at 2025-12-01 15:40:00 UTC (in 5m)"),
            "{text}"
        );
        assert!(
            text.contains("(by carol)") && text.contains("--expires"),
            "{text}"
        );
        assert_eq!(
            keeper.decide(&alice(), &v, &at(3400), &s),
            [],
            "warned once"
        );
        // end_grace before the expiry: the last warning; SIGTERM at the expiry itself.
        let actions = keeper.decide(&alice(), &v, &at(3540), &s);
        assert_eq!(kinds(&actions), ["warn"]);
        assert!(
            warn_text(&actions).contains("ends in 1m"),
            "{}",
            warn_text(&actions)
        );
        assert_eq!(keeper.decide(&alice(), &v, &at(3599), &s), []);
        let actions = keeper.decide(&alice(), &v, &at(3600), &s);
        assert!(
            matches!(&actions[..], [Action::End { why: EndReason::Expired { at, .. }, .. }] if *at == t0() + chrono::Duration::seconds(3600)),
            "{actions:?}"
        );
    }

    #[test]
    fn no_early_warning_when_it_is_off_or_the_grant_is_permanent() {
        let mut off = settings();
        off.warn_before = Duration::ZERO;
        let mut keeper = logged_in(expires(3600));
        let v = view(vec![grant("alice", KEY_A, expires(3600))]);
        assert_eq!(keeper.decide(&alice(), &v, &at(3500), &off), []);
        let mut keeper = logged_in(Expiry::Permanent);
        let v = view(vec![grant("alice", KEY_A, Expiry::Permanent)]);
        assert_eq!(
            keeper.decide(&alice(), &v, &at(10_000_000), &settings()),
            []
        );
    }

    #[test]
    fn a_renewed_grant_calls_the_ending_off_and_rearms_the_warning() {
        let mut keeper = logged_in(expires(3600));
        let s = settings();
        let old = view(vec![grant("alice", KEY_A, expires(3600))]);
        assert_eq!(
            kinds(&keeper.decide(&alice(), &old, &at(3300), &s)),
            ["warn"]
        );
        assert_eq!(
            kinds(&keeper.decide(&alice(), &old, &at(3550), &s)),
            ["warn"]
        );
        let renewed = view(vec![grant("alice", KEY_A, expires(7200))]);
        let actions = keeper.decide(&alice(), &renewed, &at(3560), &s);
        assert_eq!(kinds(&actions), ["warn"]);
        assert!(
            warn_text(&actions).contains("valid again (until 2025-12-01 16:40:00 UTC)"),
            "{}",
            warn_text(&actions)
        );
        assert_eq!(
            keeper.decide(&alice(), &renewed, &at(3600), &s),
            [],
            "not ended at the old expiry"
        );
        assert_eq!(
            kinds(&keeper.decide(&alice(), &renewed, &at(6900), &s)),
            ["warn"],
            "warned again"
        );
        // A grant revoked and granted again within the grace: the same.
        let mut keeper = logged_in(expires(7200));
        keeper.decide(&alice(), &view(vec![]), &at(10), &s);
        let actions = keeper.decide(&alice(), &renewed, &at(20), &s);
        assert!(warn_text(&actions).contains("this session continues"));
        assert_eq!(keeper.decide(&alice(), &renewed, &at(200), &s), []);
    }

    #[test]
    fn once_sigterm_is_sent_a_renewal_does_not_call_it_off() {
        let mut keeper = logged_in(expires(7200));
        let s = settings();
        keeper.decide(&alice(), &view(vec![]), &at(10), &s);
        assert_eq!(
            kinds(&keeper.decide(&alice(), &view(vec![]), &at(70), &s)),
            ["end"]
        );
        let back = view(vec![grant("alice", KEY_A, expires(7200))]);
        assert_eq!(
            kinds(&keeper.decide(&alice(), &back, &at(80), &s)),
            ["kill"]
        );
    }

    #[test]
    fn a_view_stale_for_too_long_ends_sessions_when_configured() {
        let s = settings();
        let mut stale = view(vec![grant("alice", KEY_A, expires(7200))]);
        stale.stale_for = Some(Duration::from_secs(3600));
        let mut keeper = logged_in(expires(7200));
        assert_eq!(
            keeper.decide(&alice(), &stale, &at(10), &s),
            [],
            "not longer than the limit"
        );
        stale.stale_for = Some(Duration::from_secs(3601));
        let actions = keeper.decide(&alice(), &stale, &at(20), &s);
        assert!(
            warn_text(&actions).contains("has not confirmed the grants of node1 for 1h 1s"),
            "{}",
            warn_text(&actions)
        );
        let actions = keeper.decide(&alice(), &stale, &at(80), &s);
        assert!(
            matches!(
                &actions[..],
                [Action::End {
                    why: EndReason::Stale { .. },
                    ..
                }]
            ),
            "{actions:?}"
        );

        let mut never = settings();
        never.end_when_stale = None;
        let mut keeper = logged_in(expires(7200));
        stale.stale_for = Some(Duration::from_secs(1_000_000));
        assert_eq!(keeper.decide(&alice(), &stale, &at(10), &never), []);
    }

    #[test]
    fn a_session_first_seen_with_an_expired_grant_is_logged_in_and_ended() {
        let mut keeper = SessionKeeper::default();
        let v = view(vec![grant("alice", KEY_A, expires(-10))]);
        let actions = keeper.decide(&alice(), &v, &at(0), &settings());
        assert_eq!(kinds(&actions), ["login", "warn", "end"], "{actions:?}");
    }

    #[test]
    fn several_publickey_methods_end_with_the_first_grant_to_go() {
        let s = settings();
        let both = scan(vec![session(
            100,
            "alice",
            vec![pubkey(KEY_A, false), pubkey(KEY_B, false)],
            &[TTY],
        )]);
        let v = view(vec![
            grant("alice", KEY_A, expires(7200)),
            grant("alice", KEY_B, expires(3600)),
        ]);
        let mut keeper = SessionKeeper::default();
        let actions = keeper.decide(&both, &v, &at(0), &s);
        let [Action::Login(record)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(record.grants.len(), 2);
        assert_eq!(record.expiry().map(|(_, at)| at), expires(3600).instant());
        let only_a = view(vec![grant("alice", KEY_A, expires(7200))]);
        let actions = keeper.decide(&both, &only_a, &at(10), &s);
        assert!(warn_text(&actions).contains("was revoked"));
        // One key from authorized_keys, the other granted: the grant's session.
        let mixed = scan(vec![session(
            100,
            "alice",
            vec![pubkey(KEY_B, true), pubkey(KEY_A, false)],
            &[TTY],
        )]);
        let mut keeper = SessionKeeper::default();
        let actions = keeper.decide(&mixed, &v, &at(0), &s);
        let [Action::Login(record)] = &actions[..] else {
            panic!("{actions:?}")
        };
        assert_eq!(record.grants.len(), 1);
        assert!(record.grants[0].key.same_key(&key(KEY_A)));
    }

    #[test]
    fn a_recorded_session_stays_recorded_when_its_auth_file_goes() {
        let mut keeper = logged_in(expires(7200));
        // The user removed the auth file: the session is there, but unattributable now.
        let hidden = Scan {
            sessions: vec![],
            unattributable: vec![Unattributable {
                monitor: ids(100).monitor,
                child: Some(ids(100).child),
                user: Some("alice".into()),
                ttys: vec![TTY],
                processes: vec![shell(100)],
                reason: "cannot open the auth file".into(),
            }],
        };
        let v = view(vec![grant("alice", KEY_A, expires(7200))]);
        assert_eq!(
            keeper.decide(&hidden, &v, &at(5), &settings()),
            [],
            "no logout, no ignore"
        );
        let actions = keeper.decide(&hidden, &view(vec![]), &at(10), &settings());
        assert!(warn_text(&actions).contains("was revoked"));
    }

    #[test]
    fn a_reused_monitor_pid_is_another_session() {
        let mut keeper = logged_in(expires(7200));
        let mut reused = alice();
        reused.sessions[0].ids.monitor.start_ticks = 999;
        let v = view(vec![grant("alice", KEY_A, expires(7200))]);
        let actions = keeper.decide(&reused, &v, &at(50), &settings());
        assert_eq!(kinds(&actions), ["logout", "login"], "{actions:?}");
    }

    #[test]
    fn records_survive_a_restart_in_the_same_boot() {
        let s = settings();
        let v = view(vec![grant("alice", KEY_A, expires(7200))]);
        let mut before = logged_in(expires(7200));
        let json = before.to_json();
        let mut after = SessionKeeper::default();
        assert_eq!(after.restore_json(&json, &at(30)), Vec::<String>::new());
        assert_eq!(
            after.records().collect::<Vec<_>>(),
            before.records().collect::<Vec<_>>()
        );
        assert_eq!(
            after.decide(&alice(), &v, &at(40), &s),
            [],
            "still granted: no new login"
        );
        // Revoked while the agent was down: ended.
        let mut after = SessionKeeper::default();
        after.restore_json(&json, &at(30));
        assert_eq!(
            kinds(&after.decide(&alice(), &view(vec![]), &at(40), &s)),
            ["warn"]
        );
        // An ending under way goes on where it was.
        before.decide(&alice(), &view(vec![]), &at(50), &s);
        let mut after = SessionKeeper::default();
        after.restore_json(&before.to_json(), &at(60));
        assert_eq!(
            kinds(&after.decide(&alice(), &view(vec![]), &at(110), &s)),
            ["end"]
        );
        // Another boot: nothing restored, the session is judged afresh.
        let mut other = SessionKeeper::default();
        let mut reboot = at(30);
        if let Some(b) = &mut reboot.boot {
            b.boot_id = "boot-2".into();
        }
        let problems = other.restore_json(&json, &reboot);
        assert!(
            problems.len() == 1 && problems[0].contains("made in another boot"),
            "{problems:?}"
        );
        assert_eq!(kinds(&other.decide(&alice(), &v, &reboot, &s)), ["login"]);
    }

    #[test]
    fn malformed_records_are_dropped_and_named_never_guessed_at() {
        let keeper = logged_in(expires(7200));
        let good = serde_json::to_value(&keeper.stored()[0]).unwrap();
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good.clone();
            f(&mut v);
            v
        };
        let bad = [
            (with(&|v| v["version"] = 2.into()), "unknown version 2"),
            (
                with(&|v| v["grants"][0]["key"] = "ssh-ed25519 AAAA".into()),
                "key:",
            ),
            (
                with(&|v| v["grants"][0]["key"] = KEY_B.into()),
                "is not its key's",
            ),
            (
                with(&|v| v["grants"][0]["annotation"] = "g.root.0123456789abcdef".into()),
                "is not its user's and key's",
            ),
            (
                with(&|v| v["grants"][0]["expiry"] = "tomorrow".into()),
                "YYYYMMDDHHMMSSZ",
            ),
            (with(&|v| v["grants"] = serde_json::json!([])), "no grant"),
            (with(&|v| v["user"] = "a b".into()), "login user"),
            (with(&|v| v["monitor"]["pid"] = 0.into()), "bad process id"),
            (with(&|v| v["extra"] = 1.into()), "malformed"),
            (serde_json::json!("not a record"), "malformed"),
        ];
        for (value, expected) in bad {
            let text = serde_json::to_string(&vec![value.clone(), good.clone()]).unwrap();
            let mut restored = SessionKeeper::default();
            let problems = restored.restore_json(&text, &at(30));
            assert_eq!(problems.len(), 1, "{value}: {problems:?}");
            assert!(problems[0].contains(expected), "{value}: {problems:?}");
            assert_eq!(restored.records().count(), 1, "the good one is kept");
        }
        let mut restored = SessionKeeper::default();
        let problems = restored.restore_json("{\"oops\"", &at(30));
        assert!(problems[0].contains("not a JSON list"), "{problems:?}");
        assert_eq!(restored.records().count(), 0);
    }

    #[test]
    fn a_session_first_seen_after_its_grant_went_is_still_ended() {
        let s = settings();
        let granted = view(vec![grant("alice", KEY_A, expires(7200))]);
        let mut keeper = SessionKeeper::default();
        // The grant is seen, then revoked before the first scan that shows the session.
        assert_eq!(keeper.decide(&scan(vec![]), &granted, &at(0), &s), []);
        let actions = keeper.decide(&alice(), &view(vec![]), &at(5), &s);
        assert_eq!(kinds(&actions), ["login", "warn"], "{actions:?}");
        assert!(warn_text(&actions).contains("was revoked"));
        // A login after the revocation was not through that grant: left alone.
        let mut keeper = SessionKeeper::default();
        keeper.decide(&scan(vec![]), &granted, &at(0), &s);
        keeper.decide(&scan(vec![]), &view(vec![]), &at(5), &s);
        let mut later = alice();
        later.sessions[0].started_at = t0() + chrono::Duration::seconds(6);
        assert_eq!(keeper.decide(&later, &view(vec![]), &at(7), &s), []);
        let actions = keeper.decide(&later, &view(vec![]), &at(10), &s);
        assert!(
            ignore_why(&actions).contains("has no grant for alice"),
            "{actions:?}"
        );
        // Forgotten after REVOKED_MEMORY.
        let mut keeper = SessionKeeper::default();
        keeper.decide(&scan(vec![]), &granted, &at(0), &s);
        keeper.decide(&scan(vec![]), &view(vec![]), &at(5), &s);
        let hour = i64::try_from(REVOKED_MEMORY.as_secs()).unwrap();
        let actions = keeper.decide(&alice(), &view(vec![]), &at(5 + hour), &s);
        assert!(actions.is_empty(), "{actions:?}");
        let actions = keeper.decide(&alice(), &view(vec![]), &at(8 + hour), &s);
        assert_eq!(kinds(&actions), ["ignore"], "{actions:?}");
    }
}
