//! The agent's main loop: command line, threads, and what is done with each piece of news.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nodegate_core::NodeGrants;

use crate::cache::{Cache, CacheError, CachedNode, WatchConfirmation};
use crate::clock::Moment;
use crate::config::{ConfigError, NodeName, Overrides, Settings};
use crate::identity::{self, IdentityError};
use crate::kubeconfig::KubeconfigError;
use crate::logger::Logger;
use crate::policy::Stamp;

use super::ending::{self, Outcome};
use nodegate_core::session_events::{EndedBecause, SessionEventFields, SessionId};

use super::enforce::{self, Action, EndReason, GrantView, SessionKeeper, SessionSettings};
use super::events::{self, Happening, RateLimit};
use super::sessions::{self, Passwd};
use super::watch::{self, WatchNews};

/// How often a live watch is confirmed in the cache. Well below the login path's freshness
/// window (5 s by default), so that logins never fall back to the API while the agent runs.
pub const CONFIRM_INTERVAL: Duration = Duration::from_secs(1);
/// How long the agent waits for its first answer from the API before it enforces from what
/// the cache last held (an agent started during an outage).
pub const FIRST_VIEW_WAIT: Duration = Duration::from_secs(10);
/// Where processes are looked for.
const PROC: &str = "/proc";
/// Events kept while the API server cannot take them.
const MAX_QUEUED_EVENTS: usize = 1000;
/// How long a cache lock is waited for (the login path holds it for milliseconds).
const CACHE_BUSY: Duration = Duration::from_secs(2);

const USAGE: &str = "\
usage: nodegate-agent [--config PATH] [--kubeconfig PATH] [--node-name NAME] [--cache PATH] [--prefix PREFIX] [-v]

Watches this node's own Node object and keeps authorized-keys-cmd's cache current; ends live
sshd sessions whose grant is revoked or expires (a warning on their terminal first); records
logins and logouts through grants as Events on the Node. Runs until SIGTERM or SIGINT.
Settings: the same config file as authorized-keys-cmd, its [agent] table (see nodegate-agent(8)).

options:
  --config PATH      config file (default /etc/nodegate/authorized-keys-cmd.toml)
  --kubeconfig PATH  the node's kubeconfig (default: searched where kubeadm, EKS, k3s put it)
  --node-name NAME   the Node to watch (default: from the client certificate, system:node:NAME)
  --cache PATH       the SQLite cache (default /var/lib/nodegate/grants-cache.sqlite)
  --prefix PREFIX    the annotation prefix (default ssh.nodegate.dev)
  --verbose, -v      also log every watch event and every session looked at

exit status: 0 stopped by a signal, 1 could not run (the message says why), 2 usage or configuration error.";

/// Why the agent cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A bad command line.
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node's credentials cannot be loaded, so the Node is unknown.
    #[error("{0}; the agent needs the node's own credentials to know which Node it serves")]
    Credentials(#[from] KubeconfigError),
    /// The Node cannot be told.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The cache cannot be used: without it logins would not benefit, and session records
    /// could not survive a restart.
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// The signal handlers could not be installed.
    #[error("cannot install the SIGTERM/SIGINT handlers: {0}")]
    Signals(#[source] std::io::Error),
}

impl AgentError {
    /// The exit status for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Config(_) => 2,
            _ => 1,
        }
    }
}

/// A parsed command line.
#[derive(Debug, Default)]
pub struct AgentArgs {
    /// The overrides (the same flags as authorized-keys-cmd).
    pub overrides: Overrides,
    /// `-v`.
    pub verbose: bool,
    /// `--help`.
    pub help: bool,
}

/// Parses the command line (without the program name).
pub fn parse_args<I>(args: I) -> Result<AgentArgs, AgentError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;
    let usage = |e: lexopt::Error| AgentError::Usage(e.to_string());
    let text = |v: OsString, what: &str| {
        v.into_string()
            .map_err(|_| AgentError::Usage(format!("{what} is not valid UTF-8")))
    };
    let mut parsed = AgentArgs::default();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(usage)? {
        let o = &mut parsed.overrides;
        match arg {
            Long("config") => o.config = Some(parser.value().map_err(usage)?.into()),
            Long("kubeconfig") => o.kubeconfig = Some(parser.value().map_err(usage)?.into()),
            Long("node-name") => {
                o.node_name = Some(text(parser.value().map_err(usage)?, "--node-name")?);
            }
            Long("cache") => o.cache = Some(parser.value().map_err(usage)?.into()),
            Long("prefix") => o.prefix = Some(text(parser.value().map_err(usage)?, "--prefix")?),
            Long("verbose") | Short('v') => parsed.verbose = true,
            Long("help") | Short('h') => parsed.help = true,
            other => return Err(usage(other.unexpected())),
        }
    }
    Ok(parsed)
}

/// The program.
pub fn main() -> ExitCode {
    let result = parse_args(std::env::args_os().skip(1)).and_then(|args| {
        if args.help {
            println!("{USAGE}");
            return Ok(());
        }
        let settings = Settings::load(&args.overrides)?;
        run(&settings, args.verbose)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodegate-agent: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What reaches the main loop.
enum Message {
    Watch(WatchNews),
    Quit(i32),
}

/// What the agent knows of the Node's grants.
struct View {
    annotations: BTreeMap<String, String>,
    credentials: String,
    /// Whether the watch is live now.
    live: bool,
    /// Since when it has not been (on the monotonic clock).
    down_since: Option<Instant>,
    /// Confirmed by the API at all (false: taken from the cache at startup).
    from_api: bool,
}

/// An Event waiting to be posted.
struct PendingEvent {
    happening: Happening,
    message: String,
    fields: Option<SessionEventFields>,
    at: DateTime<Utc>,
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(settings: &Settings, verbose: bool) -> Result<(), AgentError> {
    let mut log = Logger::stderr_only("nodegate-agent");
    let credentials = identity::load_credentials(settings)?;
    let node = identity::node_name(settings, &credentials)?;
    let prefix = settings.prefix.clone();
    let mut cache = Cache::open(&settings.cache, CACHE_BUSY)?;
    for replaced in cache.take_replacements() {
        log.warn(replaced);
    }

    let (tx, rx) = mpsc::channel::<Message>();
    install_signal_thread(tx.clone())?;
    let (watch_tx, watch_rx) = mpsc::channel::<WatchNews>();
    {
        let settings = settings.clone();
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || watch::run(&settings, &watch_tx))
            .map_err(AgentError::Signals)?;
    }
    {
        let tx = tx.clone();
        std::thread::Builder::new()
            .name("watch-news".into())
            .spawn(move || {
                for news in watch_rx {
                    if tx.send(Message::Watch(news)).is_err() {
                        return;
                    }
                }
            })
            .map_err(AgentError::Signals)?;
    }
    let events = if settings.agent.record_logins {
        Some(spawn_event_poster(settings.clone(), node.clone())?)
    } else {
        None
    };

    log.info(format_args!(
        "serving Node {node} (prefix {prefix}, cache {}); warn {} before expiry, end {} after a warning, strict mode {}",
        settings.cache.display(),
        humantime::format_duration(settings.agent.warn_before),
        humantime::format_duration(settings.agent.end_grace),
        match settings.agent.end_when_stale {
            Some(d) => format!("after {} without the API", humantime::format_duration(d)),
            None => "off".into(),
        }
    ));

    let mut keeper = SessionKeeper::default();
    match cache.session_records(&node, &prefix) {
        Ok(Some(text)) => {
            for problem in keeper.restore_json(&text, &Moment::now()) {
                log.warn(format_args!("session record left alone: {problem}"));
            }
        }
        Ok(None) => {}
        Err(e) => log.warn(format_args!("cannot read the session records: {e}")),
    }
    let mut stored_records = keeper.to_json();

    let started = Instant::now();
    let mut view: Option<View> = None;
    let mut last_confirm: Option<Instant> = None;
    let mut last_scan: Option<Instant> = None;
    let mut last_down_reason = String::new();
    let session_settings = SessionSettings {
        node_name: node.to_string(),
        warn_before: settings.agent.warn_before,
        end_grace: settings.agent.end_grace,
        kill_after: enforce::DEFAULT_KILL_AFTER,
        end_when_stale: settings.agent.end_when_stale,
    };

    loop {
        let wait = next_wakeup(last_scan, settings.agent.scan_interval, last_confirm, &view);
        let mut enforce_now = false;
        match rx.recv_timeout(wait) {
            Ok(Message::Quit(signal)) => {
                log.info(format_args!(
                    "signal {signal}: stopping; sessions are left as they are"
                ));
                if let Err(e) = cache.withdraw_watch(&node, &prefix) {
                    log.warn(format_args!("cannot withdraw the watch confirmation: {e}"));
                }
                return Ok(());
            }
            Ok(Message::Watch(news)) => {
                if verbose {
                    log.info(format_args!("watch: {}", describe(&news)));
                }
                match news {
                    WatchNews::Node {
                        annotations,
                        uid,
                        credentials,
                    } => {
                        if let Some(events) = &events {
                            let _ = events.uid.send(uid);
                        }
                        // Written with its confirmation: the next one is due a second later.
                        last_confirm = Some(Instant::now());
                        enforce_now = take_view(
                            &mut view,
                            (&mut cache, &node, &prefix, &mut log),
                            annotations,
                            credentials,
                            true,
                        );
                    }
                    WatchNews::NodeGone { credentials } => {
                        log.warn(format_args!(
                            "Node {node} does not exist: no grants apply to this machine"
                        ));
                        enforce_now = take_view(
                            &mut view,
                            (&mut cache, &node, &prefix, &mut log),
                            BTreeMap::new(),
                            credentials,
                            false,
                        );
                    }
                    WatchNews::Live => {
                        if let Some(v) = view.as_mut()
                            && v.from_api
                        {
                            if !v.live {
                                log.info(format_args!("watching Node {node} again"));
                            }
                            v.live = true;
                            v.down_since = None;
                        }
                        last_down_reason.clear();
                    }
                    WatchNews::Down { reason, retry_in } => {
                        if reason != last_down_reason {
                            log.warn(format_args!(
                                "the watch of Node {node} is down ({reason}); retrying in {} and after that with backoff; logins ask the API themselves meanwhile",
                                humantime::format_duration(Duration::from_millis(
                                    u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX)
                                ))
                            ));
                            last_down_reason = reason;
                        }
                        if let Some(v) = view.as_mut()
                            && v.live
                        {
                            v.live = false;
                            v.down_since = Some(Instant::now());
                            if let Err(e) = cache.withdraw_watch(&node, &prefix) {
                                log.warn(format_args!(
                                    "cannot withdraw the watch confirmation: {e}"
                                ));
                            }
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }

        // Confirm a live watch.
        if let Some(v) = &view
            && v.live
            && last_confirm.is_none_or(|t| t.elapsed() >= CONFIRM_INTERVAL)
        {
            let confirmation = WatchConfirmation {
                stamp: Stamp::from(&Moment::now()),
                credentials: v.credentials.clone(),
            };
            if let Err(e) = cache.confirm_watch(&node, &prefix, &confirmation) {
                log.warn(format_args!("cannot confirm the watch in the cache: {e}"));
            }
            last_confirm = Some(Instant::now());
        }

        // Started during an outage: enforce from what the cache last held.
        if view.is_none() && started.elapsed() >= FIRST_VIEW_WAIT {
            view = cached_view(&mut cache, &node, &prefix, &mut log);
        }

        let due = last_scan.is_none_or(|t| t.elapsed() >= settings.agent.scan_interval);
        if (due || enforce_now)
            && let Some(v) = &view
        {
            last_scan = Some(Instant::now());
            let grants = NodeGrants::scan(
                &prefix,
                v.annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let grant_view = GrantView {
                grants: grants.valid,
                stale_for: if v.live {
                    None
                } else {
                    Some(v.down_since.map_or(Duration::MAX, |t| t.elapsed()))
                },
            };
            let passwd = match Passwd::read_system() {
                Ok(passwd) => passwd,
                Err(e) => {
                    // Without it no session's user can be told: none is attributed or ended.
                    log.warn(format_args!(
                        "cannot read /etc/passwd: {e}; sessions are left alone until it can be read"
                    ));
                    continue;
                }
            };
            let scan = sessions::scan(Path::new(PROC), &passwd);
            let actions = keeper.decide(&scan, &grant_view, &Moment::now(), &session_settings);
            for action in &actions {
                let fields = event_fields(action, &keeper);
                carry_out(action, fields, events.as_ref(), &mut log);
            }
            let records = keeper.to_json();
            if records != stored_records {
                match cache.store_session_records(&node, &prefix, &records) {
                    Ok(()) => stored_records = records,
                    Err(e) => log.warn(format_args!("cannot store the session records: {e}")),
                }
            }
        }
    }
}

/// How long the main loop may sleep.
fn next_wakeup(
    last_scan: Option<Instant>,
    scan_interval: Duration,
    last_confirm: Option<Instant>,
    view: &Option<View>,
) -> Duration {
    let until_scan = last_scan.map_or(Duration::ZERO, |t| {
        scan_interval.saturating_sub(t.elapsed())
    });
    let until_confirm = match (view, last_confirm) {
        (Some(v), Some(t)) if v.live => CONFIRM_INTERVAL.saturating_sub(t.elapsed()),
        (Some(v), None) if v.live => Duration::ZERO,
        _ => Duration::MAX,
    };
    until_scan.min(until_confirm).max(Duration::from_millis(10))
}

fn describe(news: &WatchNews) -> String {
    match news {
        WatchNews::Node { annotations, .. } => {
            format!(
                "the Node holds {} annotations under the prefix",
                annotations.len()
            )
        }
        WatchNews::NodeGone { .. } => "the Node does not exist".into(),
        WatchNews::Live => "watch open".into(),
        WatchNews::Down { reason, .. } => format!("down: {reason}"),
    }
}

/// Takes what the API holds now (`live`: through an open watch; otherwise the Node is gone):
/// writes it to the cache with its confirmation, reports invalid grants when it changed, and
/// says whether it changed (the sessions are then judged at once).
fn take_view(
    view: &mut Option<View>,
    (cache, node, prefix, log): (
        &mut Cache,
        &NodeName,
        &nodegate_core::AnnotationPrefix,
        &mut Logger,
    ),
    annotations: BTreeMap<String, String>,
    credentials: String,
    live: bool,
) -> bool {
    let changed = view.as_ref().is_none_or(|v| v.annotations != annotations);
    let row = CachedNode {
        annotations,
        stamp: Stamp::from(&Moment::now()),
        credentials,
    };
    if let Err(e) = cache.store_watched(node, prefix, &row) {
        log.warn(format_args!(
            "cannot write the Node's grants to the cache: {e}; logins ask the API themselves"
        ));
    }
    if changed {
        report_invalid(prefix, &row.annotations, log);
    }
    *view = Some(View {
        annotations: row.annotations,
        credentials: row.credentials,
        live,
        down_since: (!live).then(Instant::now),
        from_api: true,
    });
    changed
}

fn report_invalid(
    prefix: &nodegate_core::AnnotationPrefix,
    annotations: &BTreeMap<String, String>,
    log: &mut Logger,
) {
    let grants = NodeGrants::scan(
        prefix,
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for invalid in &grants.invalid {
        log.warn(format_args!(
            "ignoring invalid grant annotation {prefix}/{}: {}",
            invalid.name, invalid.error
        ));
    }
}

/// The view from the cache, for an agent that cannot reach the API at startup.
fn cached_view(
    cache: &mut Cache,
    node: &NodeName,
    prefix: &nodegate_core::AnnotationPrefix,
    log: &mut Logger,
) -> Option<View> {
    match cache.load(node, prefix) {
        Ok(Some(row)) => {
            log.warn(format_args!(
                "no answer from the API yet: enforcing from the cache, read {} (expiry still ends sessions; a revoke made meanwhile is learnt when the API answers)",
                row.stamp.wall.to_rfc3339()
            ));
            Some(View {
                annotations: row.annotations,
                credentials: row.credentials,
                live: false,
                down_since: Some(Instant::now()),
                from_api: false,
            })
        }
        Ok(None) => None,
        Err(e) => {
            log.warn(format_args!("cannot read the cache: {e}"));
            None
        }
    }
}

/// The Event poster's inputs.
struct EventPoster {
    events: Sender<PendingEvent>,
    uid: Sender<String>,
}

fn spawn_event_poster(settings: Settings, node: NodeName) -> Result<EventPoster, AgentError> {
    let (events_tx, events_rx) = mpsc::channel::<PendingEvent>();
    let (uid_tx, uid_rx) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("events".into())
        .spawn(move || post_events(&settings, &node, &events_rx, &uid_rx))
        .map_err(AgentError::Signals)?;
    Ok(EventPoster {
        events: events_tx,
        uid: uid_tx,
    })
}

fn post_events(
    settings: &Settings,
    node: &NodeName,
    events: &Receiver<PendingEvent>,
    uids: &Receiver<String>,
) {
    let mut log = Logger::stderr_only("nodegate-agent");
    let mut limit = RateLimit::new(events::BURST, events::REFILL, Instant::now());
    // Until the watch tells the Node's uid, the node's name stands in, as the kubelet's own
    // Events do; `kubectl describe node` finds both.
    let mut uid = node.as_str().to_owned();
    // Events the API server could not take yet (it is down, or unreachable): posted in order
    // once it answers again, each with the time it happened. Bounded: the oldest go first.
    let mut queue: VecDeque<(serde_json::Value, String)> = VecDeque::new();
    let mut lost = 0u64;
    let mut backoff = watch::Backoff::default();
    let mut retry_at: Option<Instant> = None;
    loop {
        let wait = retry_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(Instant::now())
        });
        match events.recv_timeout(wait) {
            Ok(event) => {
                while let Ok(newer) = uids.try_recv() {
                    uid = newer;
                }
                if !limit.allow(Instant::now()) {
                    log.warn(format_args!(
                        "not recorded as an Event (rate limit: a burst of {}, then one per {}s): {}",
                        events::BURST,
                        events::REFILL.as_secs(),
                        event.message
                    ));
                    continue;
                }
                let dropped = limit.take_dropped() + std::mem::take(&mut lost);
                let message = if dropped > 0 {
                    format!(
                        "{} ({dropped} earlier Events were not recorded: rate limit or API outage; the node's journal has them)",
                        event.message
                    )
                } else {
                    event.message.clone()
                };
                let body = events::event_body(
                    node,
                    &uid,
                    event.happening,
                    &message,
                    event.fields.as_ref(),
                    event.at,
                );
                if queue.len() >= MAX_QUEUED_EVENTS
                    && let Some((_, oldest)) = queue.pop_front()
                {
                    lost += 1;
                    log.warn(format_args!(
                        "not recorded as an Event ({MAX_QUEUED_EVENTS} wait for the API server already): {oldest}"
                    ));
                }
                queue.push_back((body, event.message));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if retry_at.is_some_and(|t| Instant::now() < t) {
            continue;
        }
        retry_at = None;
        while let Some((body, message)) = queue.front() {
            let posted = identity::load_credentials(settings)
                .map_err(|e| (true, e.to_string()))
                .and_then(|creds| {
                    events::post(&creds, body).map_err(|e| (e.is_retryable(), e.to_string()))
                });
            match posted {
                Ok(()) => {
                    queue.pop_front();
                    backoff.reset();
                }
                Err((true, e)) => {
                    let wait = backoff.next_wait(watch::jitter());
                    log.warn(format_args!(
                        "cannot record an Event yet ({e}); {} wait, the next try in {}: {message}",
                        queue.len(),
                        humantime::format_duration(Duration::from_secs(wait.as_secs().max(1)))
                    ));
                    retry_at = Some(Instant::now() + wait);
                    break;
                }
                Err((false, e)) => {
                    log.warn(format_args!(
                        "the API server refused an Event ({e}): {message}"
                    ));
                    queue.pop_front();
                }
            }
        }
    }
}

/// Carries out one decision of the session keeper, logs it, and hands its Event on.
fn carry_out(
    action: &Action,
    fields: Option<SessionEventFields>,
    events: Option<&EventPoster>,
    log: &mut Logger,
) {
    for outcome in ending::carry_out(Path::new(PROC), action) {
        match outcome {
            Outcome::Log(line) => log.info(line),
            Outcome::Warn(line) => log.warn(line),
            Outcome::Record {
                happening,
                log_line,
                message,
            } => {
                log.info(log_line);
                if let Some(poster) = events {
                    let _ = poster.events.send(PendingEvent {
                        happening,
                        message,
                        fields: fields.clone(),
                        at: Utc::now(),
                    });
                }
            }
        }
    }
}

/// The structured fields of the Event an action may give: its session's record, as the keeper
/// holds it (an ended session's record is still there; a logout carries its own).
fn event_fields(action: &Action, keeper: &SessionKeeper) -> Option<SessionEventFields> {
    let now = Utc::now();
    let (record, logout_at, ended_because) = match action {
        Action::Login(record) => (record, None, None),
        Action::Logout { record, .. } => (record, Some(now.max(record.login_at)), None),
        Action::End { session, why, .. } => (
            keeper.records().find(|r| r.session == *session)?,
            None,
            Some(match why {
                EndReason::Revoked { .. } => EndedBecause::Revoked,
                EndReason::Expired { .. } => EndedBecause::Expired,
                EndReason::Stale { .. } => EndedBecause::Stale,
            }),
        ),
        _ => return None,
    };
    let monitor = record.session.monitor;
    let mut granted_by: Vec<&str> = Vec::new();
    for grant in &record.grants {
        if !granted_by.contains(&grant.granted_by.as_str()) {
            granted_by.push(&grant.granted_by);
        }
    }
    Some(SessionEventFields {
        session: SessionId {
            pid: u32::try_from(monitor.pid).ok()?,
            start_ticks: monitor.start_ticks,
        },
        login_user: record.user.clone(),
        fingerprints: record.grants.iter().map(|g| g.key.fingerprint()).collect(),
        grants: record.grants.iter().map(|g| g.annotation.clone()).collect(),
        granted_by: granted_by.join(", "),
        source: record.source,
        login_at: record.login_at,
        logout_at,
        ended_because,
    })
}

fn install_signal_thread(tx: Sender<Message>) -> Result<(), AgentError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(AgentError::Signals)?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                let _ = tx.send(Message::Quit(signal));
            }
        })
        .map_err(AgentError::Signals)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_login_paths_flags_and_nothing_else() {
        let args = parse_args([
            "--config",
            "/c.toml",
            "--kubeconfig",
            "/k",
            "--node-name",
            "n1",
            "--cache",
            "/c.sqlite",
            "--prefix",
            "p.example",
            "-v",
        ])
        .unwrap();
        assert_eq!(args.overrides.node_name.as_deref(), Some("n1"));
        assert_eq!(args.overrides.prefix.as_deref(), Some("p.example"));
        assert!(args.verbose);
        for bad in [&["root"][..], &["--host-key-dir", "/etc/ssh"], &["--cache"]] {
            let e = parse_args(bad.iter().copied()).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
        }
    }

    #[test]
    fn the_loop_wakes_for_the_next_scan_or_confirmation() {
        let now = Instant::now();
        let live = Some(View {
            annotations: BTreeMap::new(),
            credentials: String::new(),
            live: true,
            down_since: None,
            from_api: true,
        });
        assert_eq!(
            next_wakeup(None, Duration::from_secs(1), None, &None),
            Duration::from_millis(10)
        );
        let w = next_wakeup(Some(now), Duration::from_secs(5), Some(now), &live);
        assert!(
            w <= CONFIRM_INTERVAL && w > Duration::from_millis(500),
            "{w:?}"
        );
        let w = next_wakeup(Some(now), Duration::from_secs(5), Some(now), &None);
        assert!(w > CONFIRM_INTERVAL, "{w:?}");
    }
}
