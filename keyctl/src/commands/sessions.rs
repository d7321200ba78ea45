//! `keyctl sessions`: who is logged in to the selected nodes through a grant now, and who was,
//! from the Events nodegate-agent records on each login and logout
//! (`nodegate_core::session_events` is their contract).
//!
//! Only Events in namespace `default` about the Node, with `source.component` and
//! `reportingComponent` `nodegate-agent` and one of its three reasons, are read. Each is checked
//! at the boundary ([`read_event`]): it must be about this Node object, from its own host, and
//! its annotations must parse; one that does not is counted and reported, never guessed at.
//! The pairing ([`pair`]) is pure: Events in, sessions out, in any order, duplicates once.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use comfy_table::{Cell, Color, Table, presets};
use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::ListParams;
use nodegate_cluster_client::Permission;
use nodegate_cluster_client::access;
use nodegate_core::grant::escape_for_display;
use nodegate_core::session_events::{
    COMPONENT, EndedBecause, NAMESPACE, SessionEvent, SessionEventFields, SessionId, SessionReason,
};
use serde::Serialize;

use crate::access::VIEWER_ROLE;
use crate::cli::{OutputFormat, SessionsArgs};
use crate::nodes::{self, LookupError};
use crate::session::Session;

/// The Role, in namespace `default`, that lets a user read the agent's Events
/// (`packaging/rbac/keyctl-viewer.yaml`).
pub const SESSION_VIEWER_ROLE: &str = "nodegate-keyctl-session-viewer";

/// What the Events cover, said with every answer.
pub const WINDOW_NOTE: &str = "Events are kept only as long as the API server's --event-ttl (1h by default): sessions that ended earlier are not shown, and a node whose nodegate-agent is not running shows nothing.";

/// Page size of Event lists.
const LIST_PAGE: u32 = 500;

/// One Event that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The node it is about.
    pub node: String,
    /// The Event's name.
    pub name: String,
    /// When it was recorded (`eventTime`, else `lastTimestamp`, else `firstTimestamp`).
    pub at: DateTime<Utc>,
    /// What it says.
    pub event: SessionEvent,
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionState {
    /// An `SSHLogin` without an `SSHLogout` or `SSHSessionEnded` for the same session.
    LoggedIn,
    /// The agent ended it (`SSHSessionEnded`) and no `SSHLogout` is recorded (yet).
    Ended,
    /// An `SSHLogout` is recorded.
    LoggedOut,
}

/// One session, as scripts see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedSession {
    /// The node.
    pub node: String,
    /// The session id, `PID-TICKS` of its sshd monitor.
    pub session: String,
    /// Where it stands.
    pub state: SessionState,
    /// The login user.
    pub user: String,
    /// `SHA256:...` of the keys that logged in.
    pub fingerprints: Vec<String>,
    /// The grants' annotation names.
    pub grants: Vec<String>,
    /// Who granted them.
    pub granted_by: String,
    /// The client's `IP:PORT`, when the agent knew it.
    pub source: Option<String>,
    /// When it logged in.
    pub login_at: DateTime<Utc>,
    /// When it logged out (from `SSHLogout`).
    pub logout_at: Option<DateTime<Utc>>,
    /// When the agent ended it (the time of its `SSHSessionEnded` Event).
    pub ended_at: Option<DateTime<Utc>>,
    /// Why the agent ended it: `revoked`, `expired`, `stale`.
    #[serde(serialize_with = "serialize_because")]
    pub ended_because: Option<EndedBecause>,
    /// Seconds from login to logout (or to its end by the agent, or to now while logged in).
    pub duration_seconds: i64,
    /// Whether the `SSHLogin` Event is still there (a logout can outlive its login's Event).
    pub login_recorded: bool,
}

fn serialize_because<S: serde::Serializer>(
    because: &Option<EndedBecause>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    because.map(EndedBecause::as_str).serialize(serializer)
}

/// An Event from nodegate-agent that is not shown, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InvalidEvent {
    /// The node it was listed for.
    pub node: String,
    /// The Event's name, escaped.
    pub event: String,
    /// Why it is not shown, escaped.
    pub error: String,
}

/// The whole answer of `keyctl sessions -o json|yaml`.
#[derive(Debug, Serialize)]
pub struct SessionListing {
    /// By node; logged in first, then by login time.
    pub sessions: Vec<ListedSession>,
    /// Events from nodegate-agent that failed validation.
    pub invalid: Vec<InvalidEvent>,
    /// What the Events cover ([`WINDOW_NOTE`]).
    pub note: &'static str,
}

/// Runs `keyctl sessions`.
pub async fn run(session: &Session, args: &SessionsArgs) -> anyhow::Result<bool> {
    let caller = session.caller().await;
    let list_events = Permission::namespaced("list", "events", NAMESPACE);
    if !access::allowed(&session.client, &list_events).await? {
        anyhow::bail!(refusal(&caller));
    }
    let resolved = match nodes::resolve(
        &session.nodes(),
        &args.target.nodes,
        args.target.selector.as_deref(),
        true,
        session.concurrency,
    )
    .await
    {
        Err(LookupError::List { source, .. }) => {
            return Err(crate::access::explain_forbidden(
                source,
                &caller,
                "list",
                "nodes",
                VIEWER_ROLE,
            ));
        }
        other => other?,
    };
    let events: Api<Event> = Api::namespaced(session.client.clone(), NAMESPACE);
    let mut failed: Vec<(String, String)> = resolved
        .missing
        .iter()
        .map(|(name, error)| (name.clone(), nodes::describe_read_error(error)))
        .collect();
    // By node: named nodes one query each; a selector or every node one query for all.
    let mut listed: BTreeMap<String, Vec<Event>> = BTreeMap::new();
    if args.target.nodes.is_empty() {
        match list_all(&events, None).await {
            Ok(all) => {
                for event in all {
                    let name = event.involved_object.name.clone().unwrap_or_default();
                    if resolved.found.contains_key(&name) {
                        listed.entry(name).or_default().push(event);
                    }
                }
            }
            Err(error) => anyhow::bail!(
                "cannot list the Events in namespace {NAMESPACE}: {}",
                nodegate_cluster_client::describe_kube_error(&error)
            ),
        }
    } else {
        let answers: Vec<(String, Result<Vec<Event>, kube::Error>)> =
            stream::iter(resolved.found.keys())
                .map(|name| {
                    let events = &events;
                    async move { (name.clone(), list_all(events, Some(name)).await) }
                })
                .buffer_unordered(session.concurrency)
                .collect()
                .await;
        for (name, answer) in answers {
            match answer {
                Ok(found) => {
                    listed.insert(name, found);
                }
                Err(error) => failed.push((
                    name,
                    format!(
                        "cannot list its Events in namespace {NAMESPACE}: {}",
                        nodegate_cluster_client::describe_kube_error(&error)
                    ),
                )),
            }
        }
    }
    let uids: BTreeMap<String, String> = resolved
        .found
        .iter()
        .map(|(name, node)| (name.clone(), node.metadata.uid.clone().unwrap_or_default()))
        .collect();
    let now = Utc::now();
    let listing = collect(&listed, &uids, now);
    failed.sort();
    for (name, error) in &failed {
        eprintln!("error: node {name}: {error}");
    }
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&listing)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&listing)?),
        OutputFormat::Table => print_table(
            &listing,
            resolved.found.len() - count_failed(&failed, &resolved),
            now,
        ),
    }
    if let Some(line) = invalid_warning(&listing.invalid) {
        eprintln!("{line}");
    }
    Ok(failed.is_empty())
}

/// Nodes found whose Events could not be listed.
fn count_failed(failed: &[(String, String)], resolved: &nodes::Resolved) -> usize {
    failed
        .iter()
        .filter(|(name, _)| resolved.found.contains_key(name))
        .count()
}

/// The refusal when the caller may not list Events in `default`.
fn refusal(caller: &str) -> String {
    format!(
        "{caller} may not list events in namespace {NAMESPACE}, where nodegate-agent records logins and logouts.\n\
         Ask a cluster admin to bind the Role {SESSION_VIEWER_ROLE} in namespace {NAMESPACE} (packaging/rbac/keyctl-viewer.yaml), e.g.\n  \
         kubectl create rolebinding {SESSION_VIEWER_ROLE}-{} --namespace={NAMESPACE} --role={SESSION_VIEWER_ROLE} --user={caller}",
        nodegate_cluster_client::names::name_part(caller),
    )
}

/// The answer from the Events listed for each node (`uids`: each node's uid): every Event
/// checked ([`read_event`]), the valid ones paired ([`pair`]), the others listed as invalid.
pub fn collect(
    listed: &BTreeMap<String, Vec<Event>>,
    uids: &BTreeMap<String, String>,
    now: DateTime<Utc>,
) -> SessionListing {
    let mut observed = Vec::new();
    let mut invalid = Vec::new();
    for (name, found) in listed {
        let uid = uids.get(name).map(String::as_str).unwrap_or_default();
        for event in found {
            match read_event(event, name, uid) {
                None => {}
                Some(Ok(one)) => observed.push(one),
                Some(Err(error)) => invalid.push(InvalidEvent {
                    node: name.clone(),
                    event: escape_for_display(event.metadata.name.as_deref().unwrap_or("")),
                    error: escape_for_display(&error),
                }),
            }
        }
    }
    let paired = pair(observed, now);
    invalid.extend(paired.invalid);
    invalid.sort_by(|a, b| (&a.node, &a.event).cmp(&(&b.node, &b.event)));
    SessionListing {
        sessions: paired.sessions,
        invalid,
        note: WINDOW_NOTE,
    }
}

/// Every Event of nodegate-agent about a Node (`node`, or any), page by page.
async fn list_all(events: &Api<Event>, node: Option<&str>) -> Result<Vec<Event>, kube::Error> {
    let mut fields = format!("involvedObject.kind=Node,source={COMPONENT}");
    if let Some(node) = node {
        fields.push_str(&format!(",involvedObject.name={node}"));
    }
    let mut params = ListParams::default().fields(&fields).limit(LIST_PAGE);
    let mut all = Vec::new();
    loop {
        let page = events.list(&params).await?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(all)
}

/// Checks one Event listed for Node `node` (uid `uid`): `None` when it is not a session Event
/// of nodegate-agent at all (another component, another reason), else the parsed Event or why
/// it is refused.
pub fn read_event(event: &Event, node: &str, uid: &str) -> Option<Result<Observed, String>> {
    let source = event.source.as_ref();
    if source.and_then(|s| s.component.as_deref()) != Some(COMPONENT) {
        return None;
    }
    let reason = SessionReason::parse(event.reason.as_deref().unwrap_or_default())?;
    Some(check_event(event, node, uid, reason))
}

fn check_event(
    event: &Event,
    node: &str,
    uid: &str,
    reason: SessionReason,
) -> Result<Observed, String> {
    let object = &event.involved_object;
    let shown = |v: Option<&str>| format!("{:?}", escape_for_display(v.unwrap_or_default()));
    if object.kind.as_deref() != Some("Node") || object.name.as_deref() != Some(node) {
        return Err(format!(
            "it is about {} {}, not Node {node}",
            shown(object.kind.as_deref()),
            shown(object.name.as_deref())
        ));
    }
    if !matches!(object.api_version.as_deref(), Some("v1") | None | Some("")) {
        return Err(format!(
            "its involvedObject.apiVersion is {}, not v1",
            shown(object.api_version.as_deref())
        ));
    }
    // The kubelet names its Node by name as uid; the agent by the Node's uid, when it has it.
    let object_uid = object.uid.as_deref().unwrap_or_default();
    if object_uid != node && (uid.is_empty() || object_uid != uid) {
        return Err(format!(
            "it is about another Node object named {node} (uid {}, this one's is {uid})",
            shown(Some(object_uid))
        ));
    }
    let reporting = event.reporting_component.as_deref().unwrap_or_default();
    if reporting != COMPONENT {
        return Err(format!(
            "its reportingComponent is {}, not {COMPONENT}",
            shown(Some(reporting))
        ));
    }
    let host = event.source.as_ref().and_then(|s| s.host.as_deref());
    if host != Some(node) {
        return Err(format!(
            "its source.host is {}, not the node {node}",
            shown(host)
        ));
    }
    let event_type = event.type_.as_deref().unwrap_or_default();
    if event_type != reason.event_type() {
        return Err(format!(
            "a {reason} Event of type {}, not {}",
            shown(Some(event_type)),
            reason.event_type()
        ));
    }
    let at = event
        .event_time
        .as_ref()
        .map(|t| t.0)
        .or(event.last_timestamp.as_ref().map(|t| t.0))
        .or(event.first_timestamp.as_ref().map(|t| t.0))
        .ok_or_else(|| "it has no eventTime, lastTimestamp or firstTimestamp".to_owned())?;
    let at = DateTime::<Utc>::from_timestamp(at.as_second(), at.subsec_nanosecond().max(0) as u32)
        .ok_or_else(|| "its time is out of range".to_owned())?;
    let empty = BTreeMap::new();
    let annotations = event.metadata.annotations.as_ref().unwrap_or(&empty);
    let parsed = SessionEventFields::from_annotations(reason.as_str(), annotations)
        .map_err(|e| e.to_string())?;
    Ok(Observed {
        node: node.to_owned(),
        name: event.metadata.name.clone().unwrap_or_default(),
        at,
        event: parsed,
    })
}

/// Sessions paired from Events, and the Events that could not be paired.
#[derive(Debug, Default)]
pub struct Paired {
    /// By node; logged in first, then by login time.
    pub sessions: Vec<ListedSession>,
    /// Events of sessions whose Events disagree.
    pub invalid: Vec<InvalidEvent>,
}

/// What two Events of one session say differently, of what every one must say alike.
fn disagreement(a: &SessionEventFields, b: &SessionEventFields) -> Option<&'static str> {
    if a.login_user != b.login_user {
        Some("the login user")
    } else if a.fingerprints != b.fingerprints {
        Some("the fingerprints")
    } else if a.grants != b.grants {
        Some("the grants")
    } else if a.granted_by != b.granted_by {
        Some("who granted them")
    } else if a.source != b.source {
        Some("the source")
    } else if a.login_at != b.login_at {
        Some("the login time")
    } else {
        None
    }
}

/// Pairs each session's Events by node and session id, in any order: the same Event listed
/// twice counts once. A session whose Events disagree (on who, which keys or grants, from
/// where, when it logged in, when it logged out or why it was ended) is not shown: each of its
/// Events is returned as invalid.
pub fn pair(observed: Vec<Observed>, now: DateTime<Utc>) -> Paired {
    let mut by_session: BTreeMap<(String, SessionId), Vec<Observed>> = BTreeMap::new();
    for one in observed {
        by_session
            .entry((one.node.clone(), one.event.fields.session))
            .or_default()
            .push(one);
    }
    let mut paired = Paired::default();
    for ((node, id), mut events) in by_session {
        events.sort_by(|a, b| (a.at, &a.name).cmp(&(b.at, &b.name)));
        match combine(&events) {
            Ok(mut session) => {
                session.duration_seconds = duration(&session, now);
                paired.sessions.push(session);
            }
            Err(why) => {
                paired.invalid.extend(events.iter().map(|one| InvalidEvent {
                    node: node.clone(),
                    event: escape_for_display(&one.name),
                    error: format!("the Events of session {id} disagree on {why}"),
                }));
            }
        }
    }
    paired.sessions.sort_by(|a, b| {
        (&a.node, a.state, a.login_at, &a.session).cmp(&(&b.node, b.state, b.login_at, &b.session))
    });
    paired
}

/// One session from its Events (sorted by time, at least one).
fn combine(events: &[Observed]) -> Result<ListedSession, &'static str> {
    let first = &events[0].event.fields;
    let mut logout_at = None;
    let mut ended: Option<(DateTime<Utc>, EndedBecause)> = None;
    let mut login_recorded = false;
    for one in events {
        let fields = &one.event.fields;
        if let Some(what) = disagreement(fields, first) {
            return Err(what);
        }
        match one.event.reason {
            SessionReason::Login => login_recorded = true,
            SessionReason::Logout => match (logout_at, fields.logout_at) {
                (Some(seen), Some(this)) if seen != this => return Err("the logout time"),
                (_, this) => logout_at = this,
            },
            SessionReason::Ended => {
                let because = fields.ended_because.ok_or("why it was ended")?;
                match ended {
                    Some((_, seen)) if seen != because => return Err("why it was ended"),
                    // Sorted by time: the first Event of the end is when it was ended.
                    Some(_) => {}
                    None => ended = Some((one.at, because)),
                }
            }
        }
    }
    let state = match (logout_at, ended) {
        (Some(_), _) => SessionState::LoggedOut,
        (None, Some(_)) => SessionState::Ended,
        (None, None) => SessionState::LoggedIn,
    };
    Ok(ListedSession {
        node: events[0].node.clone(),
        session: first.session.to_string(),
        state,
        user: first.login_user.to_string(),
        fingerprints: first.fingerprints.iter().map(|f| f.to_string()).collect(),
        grants: first.grants.clone(),
        granted_by: first.granted_by.clone(),
        source: first.source.map(|s| s.to_string()),
        login_at: first.login_at,
        logout_at,
        ended_at: ended.map(|(at, _)| at),
        ended_because: ended.map(|(_, because)| because),
        duration_seconds: 0,
        login_recorded,
    })
}

/// Seconds from login to its end, or to `now` while logged in (never negative).
fn duration(session: &ListedSession, now: DateTime<Utc>) -> i64 {
    let end = session.logout_at.or(session.ended_at).unwrap_or(now);
    (end - session.login_at).num_seconds().max(0)
}

/// The one warning line about Events that are not shown, if any.
pub fn invalid_warning(invalid: &[InvalidEvent]) -> Option<String> {
    let first = invalid.first()?;
    let mut nodes: Vec<&str> = invalid.iter().map(|i| i.node.as_str()).collect();
    nodes.dedup();
    Some(format!(
        "warning: {} Event(s) from {COMPONENT} on node(s) {} failed validation and are not shown (-o json lists them); the first, {} on node {}: {}",
        invalid.len(),
        nodes.join(", "),
        first.event,
        first.node,
        first.error
    ))
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn print_table(listing: &SessionListing, node_count: usize, now: DateTime<Utc>) {
    if listing.sessions.is_empty() {
        eprintln!("No logins through a grant recorded on {node_count} node(s).");
    } else {
        let mut table = Table::new();
        table.load_style(presets::NOTHING).set_header([
            "NODE",
            "USER",
            "STATE",
            "LOGIN",
            "LOGOUT",
            "DURATION",
            "FROM",
            "GRANTED BY",
            "FINGERPRINT",
            "SESSION",
        ]);
        for s in &listing.sessions {
            let state = match (s.state, s.ended_because) {
                (SessionState::LoggedIn, _) => Cell::new("logged in").fg(Color::Green),
                (_, Some(because)) => Cell::new(format!("ended: {because}")).fg(Color::Red),
                (_, None) => Cell::new("logged out"),
            };
            let end = s.logout_at.or(s.ended_at);
            table.add_row(vec![
                Cell::new(&s.node),
                Cell::new(&s.user),
                state,
                Cell::new(time(s.login_at)),
                Cell::new(end.map(time).unwrap_or_else(|| "-".to_owned())),
                Cell::new(super::rough_duration(chrono::TimeDelta::seconds(
                    s.duration_seconds,
                ))),
                Cell::new(s.source.as_deref().unwrap_or("-")),
                Cell::new(escape_for_display(&s.granted_by)),
                Cell::new(s.fingerprints.join(",")),
                Cell::new(&s.session),
            ]);
        }
        println!("{table}");
        let now_in = listing
            .sessions
            .iter()
            .filter(|s| s.state == SessionState::LoggedIn)
            .count();
        eprintln!(
            "{now_in} logged in now, {} earlier, on {node_count} node(s), as of {}.",
            listing.sessions.len() - now_in,
            time(now)
        );
    }
    eprintln!("{WINDOW_NOTE}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    use nodegate_core::{GrantKey, LoginUser};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";
    const NODE: &str = "n1";
    const UID: &str = "6b7c3c1e-0000-4000-8000-000000000001";

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn fields(pid: u32) -> SessionEventFields {
        let key = GrantKey::parse(KEY).unwrap();
        let user = LoginUser::new("root").unwrap();
        SessionEventFields {
            session: SessionId {
                pid,
                start_ticks: 1000 + u64::from(pid),
            },
            grants: vec![nodegate_core::Grant::annotation_name_for(&user, &key)],
            login_user: user,
            fingerprints: vec![key.fingerprint()],
            granted_by: "alice".into(),
            source: Some("192.0.2.7:51234".parse().unwrap()),
            login_at: at("2026-12-01T10:00:00Z"),
            logout_at: None,
            ended_because: None,
        }
    }

    fn observed(
        name: &str,
        when: &str,
        reason: SessionReason,
        fields: SessionEventFields,
    ) -> Observed {
        Observed {
            node: NODE.into(),
            name: name.into(),
            at: at(when),
            event: SessionEvent { reason, fields },
        }
    }

    fn login(name: &str, pid: u32) -> Observed {
        observed(
            name,
            "2026-12-01T10:00:01Z",
            SessionReason::Login,
            fields(pid),
        )
    }

    fn logout(name: &str, pid: u32, when: &str) -> Observed {
        let fields = SessionEventFields {
            logout_at: Some(at(when)),
            ..fields(pid)
        };
        observed(name, when, SessionReason::Logout, fields)
    }

    fn ended(name: &str, pid: u32, when: &str, because: EndedBecause) -> Observed {
        let fields = SessionEventFields {
            ended_because: Some(because),
            ..fields(pid)
        };
        observed(name, when, SessionReason::Ended, fields)
    }

    const NOW: &str = "2026-12-01T10:30:00Z";

    #[test]
    fn a_login_alone_is_logged_in_and_a_logout_ends_it() {
        let paired = pair(vec![login("a", 1)], at(NOW));
        assert!(paired.invalid.is_empty());
        let [s] = paired.sessions.as_slice() else {
            panic!("{:?}", paired.sessions)
        };
        assert_eq!(s.state, SessionState::LoggedIn);
        assert_eq!(s.duration_seconds, 30 * 60);
        assert_eq!(
            (s.logout_at, s.ended_at, s.ended_because),
            (None, None, None)
        );
        assert!(s.login_recorded);
        assert_eq!(s.session, "1-1001");

        let paired = pair(
            vec![login("a", 1), logout("b", 1, "2026-12-01T10:12:30Z")],
            at(NOW),
        );
        let [s] = paired.sessions.as_slice() else {
            panic!("{:?}", paired.sessions)
        };
        assert_eq!(s.state, SessionState::LoggedOut);
        assert_eq!(s.logout_at, Some(at("2026-12-01T10:12:30Z")));
        assert_eq!(s.duration_seconds, 12 * 60 + 30);
    }

    #[test]
    fn order_does_not_matter_and_duplicates_count_once() {
        let events = vec![
            logout("b", 1, "2026-12-01T10:12:30Z"),
            login("a", 1),
            login("c", 2),
            logout("b2", 1, "2026-12-01T10:12:30Z"),
            login("a2", 1),
        ];
        let mut reversed = events.clone();
        reversed.reverse();
        let forward = pair(events, at(NOW));
        let backward = pair(reversed, at(NOW));
        assert_eq!(forward.sessions, backward.sessions);
        assert!(forward.invalid.is_empty());
        let states: Vec<(&str, SessionState)> = forward
            .sessions
            .iter()
            .map(|s| (s.session.as_str(), s.state))
            .collect();
        // Logged in first.
        assert_eq!(
            states,
            [
                ("2-1002", SessionState::LoggedIn),
                ("1-1001", SessionState::LoggedOut)
            ]
        );
    }

    #[test]
    fn a_logout_without_its_login_still_says_who_and_since_when() {
        let paired = pair(vec![logout("b", 7, "2026-12-01T10:05:00Z")], at(NOW));
        let [s] = paired.sessions.as_slice() else {
            panic!("{:?}", paired.sessions)
        };
        assert_eq!(s.state, SessionState::LoggedOut);
        assert!(!s.login_recorded);
        assert_eq!(s.login_at, at("2026-12-01T10:00:00Z"));
        assert_eq!(s.user, "root");
        assert_eq!(s.duration_seconds, 300);
    }

    #[test]
    fn sessions_the_agent_ended_say_why() {
        // Ended, no logout yet: not logged in, ended at the Event's time.
        let paired = pair(
            vec![
                login("a", 3),
                ended("e", 3, "2026-12-01T10:20:00Z", EndedBecause::Revoked),
            ],
            at(NOW),
        );
        let [s] = paired.sessions.as_slice() else {
            panic!("{:?}", paired.sessions)
        };
        assert_eq!(s.state, SessionState::Ended);
        assert_eq!(s.ended_at, Some(at("2026-12-01T10:20:00Z")));
        assert_eq!(s.ended_because, Some(EndedBecause::Revoked));
        assert_eq!(s.duration_seconds, 20 * 60);
        // Then its logout: logged out, and why it was ended is kept.
        let paired = pair(
            vec![
                logout("b", 3, "2026-12-01T10:20:02Z"),
                ended("e", 3, "2026-12-01T10:20:00Z", EndedBecause::Expired),
                login("a", 3),
            ],
            at(NOW),
        );
        let [s] = paired.sessions.as_slice() else {
            panic!("{:?}", paired.sessions)
        };
        assert_eq!(s.state, SessionState::LoggedOut);
        assert_eq!(s.ended_because, Some(EndedBecause::Expired));
        assert_eq!(s.duration_seconds, 20 * 60 + 2);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["state"], "logged-out");
        assert_eq!(json["ended_because"], "expired");
        assert_eq!(json["source"], "192.0.2.7:51234");
    }

    #[test]
    fn sessions_whose_events_disagree_are_not_shown() {
        let mut other_user = login("x", 4);
        other_user.event.fields.login_user = LoginUser::new("core").unwrap();
        other_user.event.fields.grants = vec!["g.core.5025222ebecf8ecf".into()];
        let cases = [
            (vec![login("a", 4), other_user], "the login user"),
            (
                vec![
                    logout("b", 4, "2026-12-01T10:01:00Z"),
                    logout("c", 4, "2026-12-01T10:02:00Z"),
                ],
                "the logout time",
            ),
            (
                vec![
                    ended("d", 4, "2026-12-01T10:01:00Z", EndedBecause::Revoked),
                    ended("e", 4, "2026-12-01T10:01:00Z", EndedBecause::Stale),
                ],
                "why it was ended",
            ),
        ];
        for (events, what) in cases {
            let count = events.len();
            let paired = pair([events, vec![login("z", 9)]].concat(), at(NOW));
            assert_eq!(paired.sessions.len(), 1, "{what}");
            assert_eq!(paired.sessions[0].session, "9-1009");
            assert_eq!(paired.invalid.len(), count, "{what}");
            assert!(
                paired.invalid[0].error.contains(what)
                    && paired.invalid[0].error.contains("4-1004"),
                "{:?}",
                paired.invalid
            );
        }
        // The same session id on another node is another session.
        let mut elsewhere = login("a", 4);
        elsewhere.node = "n2".into();
        elsewhere.event.fields.login_user = LoginUser::new("core").unwrap();
        let paired = pair(vec![login("a", 4), elsewhere], at(NOW));
        assert_eq!(paired.sessions.len(), 2);
        assert!(paired.invalid.is_empty());
    }

    /// An Event as the agent writes it about NODE.
    fn event(reason: SessionReason, fields: &SessionEventFields) -> Event {
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{NODE}.nodegate-abcde")),
                namespace: Some(NAMESPACE.into()),
                annotations: Some(fields.to_annotations()),
                ..ObjectMeta::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(NODE.into()),
                uid: Some(UID.into()),
                ..ObjectReference::default()
            },
            reason: Some(reason.as_str().into()),
            type_: Some(reason.event_type().into()),
            source: Some(EventSource {
                component: Some(COMPONENT.into()),
                host: Some(NODE.into()),
            }),
            reporting_component: Some(COMPONENT.into()),
            reporting_instance: Some(NODE.into()),
            event_time: Some(MicroTime("2026-12-01T10:00:01.5Z".parse().unwrap())),
            message: Some("root logged in".into()),
            ..Event::default()
        }
    }

    #[test]
    fn events_as_the_agent_writes_them_are_read() {
        let one = read_event(&event(SessionReason::Login, &fields(1)), NODE, UID)
            .expect("a session event")
            .expect("valid");
        assert_eq!(one.at, at("2026-12-01T10:00:01.5Z"));
        assert_eq!(one.event.fields, fields(1));
        // The kubelet's way: the node name as uid.
        let mut by_name = event(SessionReason::Login, &fields(1));
        by_name.involved_object.uid = Some(NODE.into());
        assert!(matches!(read_event(&by_name, NODE, UID), Some(Ok(_))));
        // Without eventTime, lastTimestamp.
        let mut old_style = event(SessionReason::Login, &fields(1));
        old_style.event_time = None;
        old_style.last_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T10:00:02Z".parse().unwrap(),
        ));
        let read = read_event(&old_style, NODE, UID).unwrap().unwrap();
        assert_eq!(read.at, at("2026-12-01T10:00:02Z"));
    }

    #[test]
    fn other_components_and_reasons_are_not_session_events() {
        let mut other = event(SessionReason::Login, &fields(1));
        other.source.as_mut().unwrap().component = Some("kubelet".into());
        assert!(read_event(&other, NODE, UID).is_none());
        let mut reason = event(SessionReason::Login, &fields(1));
        reason.reason = Some("NodeReady".into());
        assert!(read_event(&reason, NODE, UID).is_none());
    }

    #[test]
    fn malformed_events_are_refused_with_the_reason() {
        let good = || event(SessionReason::Login, &fields(1));
        let mut cases: Vec<(Event, &str)> = Vec::new();
        let mut e = good();
        e.involved_object.name = Some("n2".into());
        cases.push((e, "not Node n1"));
        let mut e = good();
        e.involved_object.kind = Some("Pod".into());
        cases.push((e, "not Node n1"));
        let mut e = good();
        e.involved_object.uid = Some("another".into());
        cases.push((e, "another Node object"));
        let mut e = good();
        e.involved_object.api_version = Some("v2".into());
        cases.push((e, "apiVersion"));
        let mut e = good();
        e.reporting_component = Some("someone".into());
        cases.push((e, "reportingComponent"));
        let mut e = good();
        e.reporting_component = None;
        cases.push((e, "reportingComponent"));
        let mut e = good();
        e.source.as_mut().unwrap().host = Some("n2".into());
        cases.push((e, "source.host"));
        let mut e = good();
        e.type_ = Some("Warning".into());
        cases.push((e, "type"));
        let mut e = good();
        e.event_time = None;
        cases.push((e, "no eventTime"));
        let mut e = good();
        e.metadata.annotations = None;
        cases.push((e, "agent.nodegate.dev/session is missing"));
        let mut e = good();
        e.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(session_events_key("login-user"), "r\u{1b}[2Joot".to_owned());
        cases.push((e, "login-user"));
        for (event, expected) in cases {
            let error = read_event(&event, NODE, UID)
                .expect("a session event")
                .expect_err(expected);
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
        // A Node recreated under the same name: its predecessor's Events are not its own.
        let e = good();
        assert!(matches!(read_event(&e, NODE, "new-uid"), Some(Err(_))));
    }

    #[test]
    fn listed_events_become_sessions_and_one_count_of_the_rest() {
        let login = event(SessionReason::Login, &fields(1));
        let logout_fields = SessionEventFields {
            logout_at: Some(at("2026-12-01T10:10:00Z")),
            ..fields(1)
        };
        let mut logout = event(SessionReason::Logout, &logout_fields);
        logout.metadata.name = Some("n1.nodegate-logout".into());
        let mut malformed = event(SessionReason::Login, &fields(2));
        malformed.metadata.name = Some("n1.nodegate-bad".into());
        malformed
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(session_events_key("login-at"), "soon".into());
        let mut kubelet = event(SessionReason::Login, &fields(3));
        kubelet.source.as_mut().unwrap().component = Some("kubelet".into());
        let listed = BTreeMap::from([(
            NODE.to_owned(),
            vec![logout, malformed, kubelet, login.clone(), login],
        )]);
        let uids = BTreeMap::from([(NODE.to_owned(), UID.to_owned())]);
        let listing = collect(&listed, &uids, at(NOW));
        let [s] = listing.sessions.as_slice() else {
            panic!("{:?}", listing.sessions)
        };
        assert_eq!(
            (s.session.as_str(), s.state),
            ("1-1001", SessionState::LoggedOut)
        );
        assert_eq!(s.duration_seconds, 600);
        let [bad] = listing.invalid.as_slice() else {
            panic!("{:?}", listing.invalid)
        };
        assert_eq!(bad.event, "n1.nodegate-bad");
        assert!(bad.error.contains("agent.nodegate.dev/login-at"), "{bad:?}");
        // Without the Node's uid, only the name as uid is its own.
        let listing = collect(&listed, &BTreeMap::new(), at(NOW));
        assert!(listing.sessions.is_empty());
        assert_eq!(listing.invalid.len(), 4);
    }

    fn session_events_key(field: &str) -> String {
        format!(
            "{}{field}",
            nodegate_core::session_events::ANNOTATION_PREFIX
        )
    }

    #[test]
    fn invalid_events_are_one_warning_line() {
        assert_eq!(invalid_warning(&[]), None);
        let invalid = vec![
            InvalidEvent {
                node: "n1".into(),
                event: "n1.a".into(),
                error: "annotation agent.nodegate.dev/session is missing".into(),
            },
            InvalidEvent {
                node: "n1".into(),
                event: "n1.b".into(),
                error: "x".into(),
            },
            InvalidEvent {
                node: "n2".into(),
                event: "n2.c".into(),
                error: "y".into(),
            },
        ];
        let line = invalid_warning(&invalid).unwrap();
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with(
                "warning: 3 Event(s) from nodegate-agent on node(s) n1, n2 failed validation"
            ),
            "{line}"
        );
        assert!(
            line.contains("n1.a on node n1: annotation agent.nodegate.dev/session is missing"),
            "{line}"
        );
    }

    #[test]
    fn the_refusal_names_the_role_and_the_command() {
        let text = refusal("bob@example.com");
        assert!(
            text.starts_with("bob@example.com may not list events in namespace default"),
            "{text}"
        );
        assert!(
            text.contains("Role nodegate-keyctl-session-viewer in namespace default"),
            "{text}"
        );
        assert!(text.contains("kubectl create rolebinding nodegate-keyctl-session-viewer-bob-example-com --namespace=default --role=nodegate-keyctl-session-viewer --user=bob@example.com"), "{text}");
    }
}
