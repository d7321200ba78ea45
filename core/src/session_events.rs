//! Logins and logouts through a grant, as `nodegate-agent` records them: the contract between
//! the agent, which writes them, and `keyctl sessions`, which reads them.
//!
//! The agent records each login and logout as a core/v1 Event about the Node, in namespace
//! [`NAMESPACE`], with `source.component` and `reportingComponent` [`COMPONENT`] and one of the
//! reasons [`SessionReason`] names. The message is for people; tools read the Event's
//! `metadata.annotations` under [`ANNOTATION_PREFIX`] instead, which this module writes
//! ([`SessionEventFields::to_annotations`]) and parses strictly
//! ([`SessionEventFields::from_annotations`]): whatever is found on an Event is either a
//! [`SessionEvent`] whose every field passed its check, or a [`SessionEventError`] that says
//! which field is wrong and is never guessed around.
//!
//! | key | value | on |
//! | --- | --- | --- |
//! | `agent.nodegate.dev/session` | `PID-TICKS`: the sshd monitor's pid and start time in clock ticks since boot | all |
//! | `agent.nodegate.dev/login-user` | the login user ([`LoginUser`]) | all |
//! | `agent.nodegate.dev/fingerprints` | `SHA256:...` fingerprints of the keys that logged in, comma-separated | all |
//! | `agent.nodegate.dev/grants` | the grants' annotation names (`g.LOGIN.KEYID`), comma-separated | all |
//! | `agent.nodegate.dev/granted-by` | who granted them (the grants' `granted-by`; distinct ones joined by `, `) | all |
//! | `agent.nodegate.dev/source` | the client, `IP:PORT` or `[IPv6]:PORT`; absent when unknown | all |
//! | `agent.nodegate.dev/login-at` | when the session logged in, RFC 3339 | all |
//! | `agent.nodegate.dev/logout-at` | when it logged out, RFC 3339 | `SSHLogout` only |
//! | `agent.nodegate.dev/ended-because` | `revoked`, `expired` or `stale` | `SSHSessionEnded` only |
//!
//! Keys under the prefix that this version does not know are ignored (fields are only ever
//! added); annotations outside the prefix are not looked at. Nothing here does IO or knows kube
//! types: the agent and keyctl each turn their Event objects into the annotation map.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};

use crate::grant::{escape_for_display, is_forbidden_char};
use crate::key::Fingerprint;
use crate::user::LoginUser;

/// The namespace the Events are in (where the kubelet writes its Node events).
pub const NAMESPACE: &str = "default";
/// `source.component` and `reportingComponent` of the Events.
pub const COMPONENT: &str = "nodegate-agent";

/// The Event reason of a login through a grant (type `Normal`).
pub const REASON_LOGIN: &str = "SSHLogin";
/// The Event reason of a logout, whether the session ended by itself or was ended (`Normal`).
pub const REASON_LOGOUT: &str = "SSHLogout";
/// The Event reason of a session the agent ended: its grant was revoked or expired, or the
/// agent's view of the grants was stale too long (type `Warning`).
pub const REASON_ENDED: &str = "SSHSessionEnded";

/// The prefix of every structured annotation on the Events.
pub const ANNOTATION_PREFIX: &str = "agent.nodegate.dev/";
/// The session id, `PID-TICKS` ([`SessionId`]).
pub const SESSION: &str = "agent.nodegate.dev/session";
/// The login user.
pub const LOGIN_USER: &str = "agent.nodegate.dev/login-user";
/// The fingerprints of the keys that logged in, comma-separated.
pub const FINGERPRINTS: &str = "agent.nodegate.dev/fingerprints";
/// The grants' annotation names, comma-separated.
pub const GRANTS: &str = "agent.nodegate.dev/grants";
/// Who granted them.
pub const GRANTED_BY: &str = "agent.nodegate.dev/granted-by";
/// The client's address, `IP:PORT` or `[IPv6]:PORT`; absent when unknown.
pub const SOURCE: &str = "agent.nodegate.dev/source";
/// When the session logged in, RFC 3339.
pub const LOGIN_AT: &str = "agent.nodegate.dev/login-at";
/// When it logged out, RFC 3339 (on `SSHLogout`).
pub const LOGOUT_AT: &str = "agent.nodegate.dev/logout-at";
/// Why the agent ended it (on `SSHSessionEnded`): [`EndedBecause`].
pub const ENDED_BECAUSE: &str = "agent.nodegate.dev/ended-because";

/// Longest value accepted under any key, in bytes (a value is one field, never a document).
pub const MAX_VALUE_LEN: usize = 4096;
/// Most fingerprints, and most grants, one session can name (a login uses one key per
/// `publickey` step of `AuthenticationMethods`, never many).
pub const MAX_LIST_ITEMS: usize = 16;
/// Longest `granted-by` accepted, in bytes: a grant's is at most 256, and a session's few
/// grants' are joined.
pub const MAX_GRANTED_BY_LEN: usize = 1024;
/// Longest RFC 3339 time accepted, in bytes.
const MAX_TIME_LEN: usize = 40;
/// The largest pid Linux gives (`PID_MAX_LIMIT`, 2^22).
const MAX_PID: u32 = 1 << 22;

/// Which of the three Events it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SessionReason {
    /// [`REASON_LOGIN`].
    Login,
    /// [`REASON_LOGOUT`].
    Logout,
    /// [`REASON_ENDED`].
    Ended,
}

impl SessionReason {
    /// Every reason.
    pub const ALL: [SessionReason; 3] = [Self::Login, Self::Logout, Self::Ended];

    /// The Event's `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => REASON_LOGIN,
            Self::Logout => REASON_LOGOUT,
            Self::Ended => REASON_ENDED,
        }
    }

    /// The Event's `type`: `Normal`, or `Warning` for a session the agent ended.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Login | Self::Logout => "Normal",
            Self::Ended => "Warning",
        }
    }

    /// The reason named `reason`, if it is one of the three.
    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == reason)
    }
}

impl fmt::Display for SessionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the agent ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndedBecause {
    /// Its grant was revoked.
    Revoked,
    /// Its grant expired.
    Expired,
    /// The agent's view of the grants was stale for too long (the API server unreachable).
    Stale,
}

impl EndedBecause {
    /// Every cause.
    pub const ALL: [EndedBecause; 3] = [Self::Revoked, Self::Expired, Self::Stale];

    /// The annotation value: `revoked`, `expired`, `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::Stale => "stale",
        }
    }
}

impl fmt::Display for EndedBecause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's id: its sshd monitor's pid and the monitor's start time in clock ticks since
/// boot (`/proc/PID/stat` field 22), written `PID-TICKS`. Unique on a node while it runs (a
/// reused pid starts later), so the login and the logout Events of one session carry the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId {
    /// The monitor's pid.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start_ticks: u64,
}

impl SessionId {
    /// Parses `PID-TICKS`: decimal digits only, no sign, no leading zeros, a pid from 1 to
    /// 2^22, ticks that fit in 64 bits.
    pub fn parse(text: &str) -> Option<Self> {
        let (pid, ticks) = text.split_once('-')?;
        let pid: u32 = canonical_number(pid)?;
        let start_ticks = canonical_number(ticks)?;
        (1..=MAX_PID)
            .contains(&pid)
            .then_some(Self { pid, start_ticks })
    }
}

/// A decimal number written one way only: ASCII digits, no leading zero but for `0` itself.
fn canonical_number<T: FromStr>(text: &str) -> Option<T> {
    let digits_only = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = text.len() > 1 && text.starts_with('0');
    if !digits_only || leading_zero {
        return None;
    }
    text.parse().ok()
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pid, self.start_ticks)
    }
}

/// What one Event says about one session: the fields the agent writes, each validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEventFields {
    /// Which session.
    pub session: SessionId,
    /// The login user.
    pub login_user: LoginUser,
    /// The keys that logged in (at least one, at most [`MAX_LIST_ITEMS`]).
    pub fingerprints: Vec<Fingerprint>,
    /// The grants they logged in through, as annotation names `g.LOGIN.KEYID`, every one for
    /// [`login_user`](Self::login_user) (at least one, at most [`MAX_LIST_ITEMS`]).
    pub grants: Vec<String>,
    /// Who granted them: 1 to [`MAX_GRANTED_BY_LEN`] bytes, no control, invisible formatting
    /// or line-breaking character (the rule of grant texts).
    pub granted_by: String,
    /// The client's address, when known.
    pub source: Option<SocketAddr>,
    /// When the session logged in (written in whole seconds).
    pub login_at: DateTime<Utc>,
    /// When it logged out: set on `SSHLogout`, and only there.
    pub logout_at: Option<DateTime<Utc>>,
    /// Why the agent ended it: set on `SSHSessionEnded`, and only there.
    pub ended_because: Option<EndedBecause>,
}

/// One parsed Event: its reason, and its fields, consistent with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// Login, logout, or ended by the agent.
    pub reason: SessionReason,
    /// What it says.
    pub fields: SessionEventFields,
}

/// Why an Event's annotations are not a valid session event. Values are quoted escaped and
/// shortened, so that the message is one printable line whatever the Event held.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionEventError {
    /// The reason is not one of the three.
    #[error("reason {reason:?} is not {REASON_LOGIN}, {REASON_LOGOUT} or {REASON_ENDED}")]
    UnknownReason {
        /// The reason, escaped.
        reason: String,
    },
    /// A field every such Event carries is not there.
    #[error("annotation {key} is missing")]
    Missing {
        /// The annotation key.
        key: &'static str,
    },
    /// A field is longer than allowed.
    #[error("annotation {key} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// The annotation key.
        key: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field's value is not what it must be.
    #[error("annotation {key} \"{value}\" is not valid: {why}")]
    Invalid {
        /// The annotation key.
        key: &'static str,
        /// The value (its first 80 characters), escaped.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// A field is on an Event of a reason that does not carry it.
    #[error("annotation {key} does not belong on a {reason} Event")]
    Unexpected {
        /// The annotation key.
        key: &'static str,
        /// The Event's reason.
        reason: SessionReason,
    },
    /// The logout is before the login.
    #[error("the logout at {logout_at} is before the login at {login_at}")]
    LogoutBeforeLogin {
        /// When it logged in.
        login_at: DateTime<Utc>,
        /// When it logged out.
        logout_at: DateTime<Utc>,
    },
}

/// The first 80 characters of `value`, escaped: safe in a message.
fn shown(value: &str) -> String {
    let mut text: String = value.chars().take(80).collect();
    if text.len() < value.len() {
        text.push_str("...");
    }
    escape_for_display(&text)
}

fn invalid(key: &'static str, value: &str, why: impl Into<String>) -> SessionEventError {
    SessionEventError::Invalid {
        key,
        value: shown(value),
        why: why.into(),
    }
}

/// RFC 3339 in UTC, whole seconds, `Z`: how times are written.
fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl SessionEventFields {
    /// The annotations the agent puts on the Event: every field that is set, under its key.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut put = |key: &str, value: String| {
            out.insert(key.to_owned(), value);
        };
        put(SESSION, self.session.to_string());
        put(LOGIN_USER, self.login_user.to_string());
        put(
            FINGERPRINTS,
            self.fingerprints
                .iter()
                .map(Fingerprint::as_str)
                .collect::<Vec<_>>()
                .join(","),
        );
        put(GRANTS, self.grants.join(","));
        put(GRANTED_BY, self.granted_by.clone());
        if let Some(source) = self.source {
            put(SOURCE, source.to_string());
        }
        put(LOGIN_AT, format_time(self.login_at));
        if let Some(at) = self.logout_at {
            put(LOGOUT_AT, format_time(at));
        }
        if let Some(because) = self.ended_because {
            put(ENDED_BECAUSE, because.as_str().to_owned());
        }
        out
    }

    /// Parses and checks the annotations of an Event of reason `reason`: every field of the
    /// table in the module documentation, each strictly, and which fields the reason carries.
    pub fn from_annotations(
        reason: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<SessionEvent, SessionEventError> {
        let reason =
            SessionReason::parse(reason).ok_or_else(|| SessionEventError::UnknownReason {
                reason: shown(reason),
            })?;
        let get = |key: &'static str| -> Result<Option<&str>, SessionEventError> {
            match annotations.get(key) {
                None => Ok(None),
                Some(value) if value.len() > MAX_VALUE_LEN => Err(SessionEventError::TooLong {
                    key,
                    len: value.len(),
                    max: MAX_VALUE_LEN,
                }),
                Some(value) => Ok(Some(value.as_str())),
            }
        };
        let require = |key: &'static str| get(key)?.ok_or(SessionEventError::Missing { key });

        let session_text = require(SESSION)?;
        let session = SessionId::parse(session_text).ok_or_else(|| {
            invalid(
                SESSION,
                session_text,
                "expected PID-TICKS, two decimal numbers (pid 1 to 4194304) without leading zeros",
            )
        })?;

        let user_text = require(LOGIN_USER)?;
        let login_user =
            LoginUser::new(user_text).map_err(|e| invalid(LOGIN_USER, user_text, e.to_string()))?;

        let fingerprints_text = require(FINGERPRINTS)?;
        let fingerprints = split_list(FINGERPRINTS, fingerprints_text)?
            .into_iter()
            .map(|item| {
                Fingerprint::parse(item).map_err(|e| invalid(FINGERPRINTS, item, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;

        let grants_text = require(GRANTS)?;
        let grants = split_list(GRANTS, grants_text)?
            .into_iter()
            .map(|item| check_grant_name(item, &login_user).map(|()| item.to_owned()))
            .collect::<Result<Vec<_>, _>>()?;

        let granted_by = require(GRANTED_BY)?;
        check_text(GRANTED_BY, granted_by, MAX_GRANTED_BY_LEN)?;

        let source = get(SOURCE)?
            .map(|text| {
                parse_source(text).ok_or_else(|| {
                    invalid(
                        SOURCE,
                        text,
                        "expected IP:PORT, or [IPv6]:PORT, as written by the agent",
                    )
                })
            })
            .transpose()?;

        let login_at = parse_time(LOGIN_AT, require(LOGIN_AT)?)?;
        let logout_at = get(LOGOUT_AT)?
            .map(|text| parse_time(LOGOUT_AT, text))
            .transpose()?;
        let ended_because = get(ENDED_BECAUSE)?
            .map(|text| {
                EndedBecause::ALL
                    .into_iter()
                    .find(|b| b.as_str() == text)
                    .ok_or_else(|| {
                        invalid(ENDED_BECAUSE, text, "expected revoked, expired or stale")
                    })
            })
            .transpose()?;

        match reason {
            SessionReason::Logout if logout_at.is_none() => {
                return Err(SessionEventError::Missing { key: LOGOUT_AT });
            }
            SessionReason::Ended if ended_because.is_none() => {
                return Err(SessionEventError::Missing { key: ENDED_BECAUSE });
            }
            SessionReason::Login | SessionReason::Ended if logout_at.is_some() => {
                return Err(SessionEventError::Unexpected {
                    key: LOGOUT_AT,
                    reason,
                });
            }
            SessionReason::Login | SessionReason::Logout if ended_because.is_some() => {
                return Err(SessionEventError::Unexpected {
                    key: ENDED_BECAUSE,
                    reason,
                });
            }
            _ => {}
        }
        if let Some(logout_at) = logout_at
            && logout_at < login_at
        {
            return Err(SessionEventError::LogoutBeforeLogin {
                login_at,
                logout_at,
            });
        }
        Ok(SessionEvent {
            reason,
            fields: SessionEventFields {
                session,
                login_user,
                fingerprints,
                grants,
                granted_by: granted_by.to_owned(),
                source,
                login_at,
                logout_at,
                ended_because,
            },
        })
    }
}

/// The items of a comma-separated list: 1 to [`MAX_LIST_ITEMS`], none empty, none twice.
fn split_list<'v>(key: &'static str, text: &'v str) -> Result<Vec<&'v str>, SessionEventError> {
    let items: Vec<&str> = text.split(',').collect();
    if items.iter().any(|item| item.is_empty()) {
        return Err(invalid(
            key,
            text,
            "expected a comma-separated list without empty items or spaces",
        ));
    }
    if items.len() > MAX_LIST_ITEMS {
        return Err(invalid(
            key,
            text,
            format!(
                "{} items; at most {MAX_LIST_ITEMS} are allowed",
                items.len()
            ),
        ));
    }
    for (i, item) in items.iter().enumerate() {
        if items[..i].contains(item) {
            return Err(invalid(
                key,
                text,
                format!("{} is listed twice", shown(item)),
            ));
        }
    }
    Ok(items)
}

/// `g.LOGIN.KEYID` (docs/grant-format.md) for the session's own login user, KEYID 16
/// lowercase hex digits.
fn check_grant_name(name: &str, user: &LoginUser) -> Result<(), SessionEventError> {
    let why = format!(
        "expected a grant annotation name for login {user}: g.{user}.KEYID, KEYID 16 lowercase hex digits"
    );
    let Some(rest) = name.strip_prefix("g.") else {
        return Err(invalid(GRANTS, name, why));
    };
    let Some((login, key_id)) = rest.rsplit_once('.') else {
        return Err(invalid(GRANTS, name, why));
    };
    let hex = key_id.len() == 16
        && key_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if login != user.as_str() || !hex {
        return Err(invalid(GRANTS, name, why));
    }
    Ok(())
}

/// Free text: 1 to `max` bytes, no control, invisible formatting or line-breaking character.
fn check_text(key: &'static str, text: &str, max: usize) -> Result<(), SessionEventError> {
    if text.is_empty() {
        return Err(invalid(key, text, "it is empty"));
    }
    if text.len() > max {
        return Err(SessionEventError::TooLong {
            key,
            len: text.len(),
            max,
        });
    }
    if let Some(c) = text.chars().find(|&c| is_forbidden_char(c)) {
        return Err(invalid(
            key,
            text,
            format!(
                "it contains U+{:04X}, a control or invisible formatting character",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// `IP:PORT` or `[IPv6]:PORT`, exactly as [`SocketAddr`] writes it (one spelling per address).
fn parse_source(text: &str) -> Option<SocketAddr> {
    let address: SocketAddr = text.parse().ok()?;
    (address.to_string() == text).then_some(address)
}

/// An RFC 3339 time, in UTC.
fn parse_time(key: &'static str, text: &str) -> Result<DateTime<Utc>, SessionEventError> {
    if text.len() > MAX_TIME_LEN {
        return Err(SessionEventError::TooLong {
            key,
            len: text.len(),
            max: MAX_TIME_LEN,
        });
    }
    let at = DateTime::parse_from_rfc3339(text)
        .map(|t| t.to_utc())
        .map_err(|e| invalid(key, text, format!("expected an RFC 3339 time ({e})")))?;
    // Times are written in whole seconds; a fraction would not survive being written again.
    // (chrono keeps a leap second, 23:59:60, as 10^9 nanoseconds: that one is whole.)
    if at.timestamp_subsec_nanos() % 1_000_000_000 != 0 {
        return Err(invalid(
            key,
            text,
            "expected whole seconds, as the agent writes them".to_owned(),
        ));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_with_a_fraction_of_a_second_is_refused_a_leap_second_kept() {
        assert!(parse_time(LOGIN_AT, "2026-12-01T10:00:00.5Z").is_err());
        assert!(parse_time(LOGIN_AT, "2026-12-01T10:12:30.999999999Z").is_err());
        assert!(parse_time(LOGIN_AT, "2026-12-01T10:00:00Z").is_ok());
        assert!(parse_time(LOGIN_AT, "2016-12-31T23:59:60Z").is_ok());
    }
    use crate::key::GrantKey;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn fields() -> SessionEventFields {
        let key = GrantKey::parse(KEY).unwrap();
        let user = LoginUser::new("root").unwrap();
        SessionEventFields {
            session: SessionId {
                pid: 4242,
                start_ticks: 987_654,
            },
            grants: vec![crate::Grant::annotation_name_for(&user, &key)],
            login_user: user,
            fingerprints: vec![key.fingerprint()],
            granted_by: "alice".into(),
            source: Some("192.0.2.7:51234".parse().unwrap()),
            login_at: at("2026-12-01T10:00:00Z"),
            logout_at: None,
            ended_because: None,
        }
    }

    fn logout() -> SessionEventFields {
        SessionEventFields {
            logout_at: Some(at("2026-12-01T10:12:30Z")),
            ..fields()
        }
    }

    fn ended() -> SessionEventFields {
        SessionEventFields {
            ended_because: Some(EndedBecause::Revoked),
            ..fields()
        }
    }

    /// The annotations of `fields` with `key` set to `value`, or removed.
    fn with(
        fields: &SessionEventFields,
        key: &str,
        value: Option<&str>,
    ) -> BTreeMap<String, String> {
        let mut map = fields.to_annotations();
        match value {
            Some(value) => map.insert(key.to_owned(), value.to_owned()),
            None => map.remove(key),
        };
        map
    }

    #[test]
    fn every_reason_round_trips() {
        for (reason, fields) in [
            (SessionReason::Login, fields()),
            (SessionReason::Logout, logout()),
            (SessionReason::Ended, ended()),
        ] {
            let parsed =
                SessionEventFields::from_annotations(reason.as_str(), &fields.to_annotations())
                    .unwrap();
            assert_eq!(parsed, SessionEvent { reason, fields });
        }
    }

    #[test]
    fn the_annotations_are_the_documented_keys_and_values() {
        let map = logout().to_annotations();
        let fp = GrantKey::parse(KEY).unwrap().fingerprint().to_string();
        let expected: BTreeMap<String, String> = [
            ("agent.nodegate.dev/session", "4242-987654"),
            ("agent.nodegate.dev/login-user", "root"),
            ("agent.nodegate.dev/fingerprints", fp.as_str()),
            ("agent.nodegate.dev/grants", "g.root.5025222ebecf8ecf"),
            ("agent.nodegate.dev/granted-by", "alice"),
            ("agent.nodegate.dev/source", "192.0.2.7:51234"),
            ("agent.nodegate.dev/login-at", "2026-12-01T10:00:00Z"),
            ("agent.nodegate.dev/logout-at", "2026-12-01T10:12:30Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(map, expected);
        assert!(map.keys().all(|k| k.starts_with(ANNOTATION_PREFIX)));
        let ended = ended().to_annotations();
        assert_eq!(ended[ENDED_BECAUSE], "revoked");
        assert!(!ended.contains_key(LOGOUT_AT));
    }

    #[test]
    fn ipv6_sources_lists_and_no_source_round_trip() {
        let key2 =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBn5lUFyUIGH7KVaxhZDSUgiSW2LYGzLgi1S9ONwd72S k2";
        let key2 = GrantKey::parse(key2).unwrap();
        let user = LoginUser::new("root").unwrap();
        let mut two = fields();
        two.fingerprints.push(key2.fingerprint());
        two.grants
            .push(crate::Grant::annotation_name_for(&user, &key2));
        two.granted_by = "alice, bob@example.com".into();
        for source in [None, Some("[2001:db8::7]:22022".parse().unwrap())] {
            let fields = SessionEventFields {
                source,
                ..two.clone()
            };
            let map = fields.to_annotations();
            assert_eq!(map.contains_key(SOURCE), source.is_some());
            if source.is_some() {
                assert_eq!(map[SOURCE], "[2001:db8::7]:22022");
            }
            let parsed = SessionEventFields::from_annotations(REASON_LOGIN, &map).unwrap();
            assert_eq!(parsed.fields, fields);
        }
    }

    #[test]
    fn unknown_keys_under_the_prefix_and_other_annotations_are_ignored() {
        let mut map = with(&fields(), "agent.nodegate.dev/tty", Some("pts/3"));
        map.insert("example.com/x".into(), "\u{1b}[2J".into());
        assert!(SessionEventFields::from_annotations(REASON_LOGIN, &map).is_ok());
    }

    #[test]
    fn unknown_reasons_are_refused() {
        let error =
            SessionEventFields::from_annotations("SSHKeyGranted", &fields().to_annotations())
                .unwrap_err();
        assert!(
            matches!(error, SessionEventError::UnknownReason { .. }),
            "{error}"
        );
        assert!(SessionReason::parse("sshlogin").is_none());
    }

    #[test]
    fn every_required_field_is_required() {
        for key in [
            SESSION,
            LOGIN_USER,
            FINGERPRINTS,
            GRANTS,
            GRANTED_BY,
            LOGIN_AT,
        ] {
            for (reason, fields) in [
                (REASON_LOGIN, fields()),
                (REASON_LOGOUT, logout()),
                (REASON_ENDED, ended()),
            ] {
                assert_eq!(
                    SessionEventFields::from_annotations(reason, &with(&fields, key, None)),
                    Err(SessionEventError::Missing { key }),
                    "{reason} without {key}"
                );
            }
        }
        assert_eq!(
            SessionEventFields::from_annotations(REASON_LOGOUT, &fields().to_annotations()),
            Err(SessionEventError::Missing { key: LOGOUT_AT })
        );
        assert_eq!(
            SessionEventFields::from_annotations(REASON_ENDED, &fields().to_annotations()),
            Err(SessionEventError::Missing { key: ENDED_BECAUSE })
        );
    }

    #[test]
    fn fields_on_the_wrong_reason_are_refused() {
        for (reason, map, key) in [
            (REASON_LOGIN, logout().to_annotations(), LOGOUT_AT),
            (
                REASON_ENDED,
                with(&ended(), LOGOUT_AT, Some("2026-12-01T11:00:00Z")),
                LOGOUT_AT,
            ),
            (REASON_LOGIN, ended().to_annotations(), ENDED_BECAUSE),
            (
                REASON_LOGOUT,
                with(&logout(), ENDED_BECAUSE, Some("expired")),
                ENDED_BECAUSE,
            ),
        ] {
            let error = SessionEventFields::from_annotations(reason, &map).unwrap_err();
            assert!(
                matches!(error, SessionEventError::Unexpected { key: k, .. } if k == key),
                "{reason}: {error}"
            );
        }
    }

    /// Asserts that `value` under `key` is refused as invalid (or too long) on the Event of
    /// the reason that carries `key`.
    fn refused(key: &'static str, value: &str) -> SessionEventError {
        let (reason, base) = match key {
            LOGOUT_AT => (REASON_LOGOUT, logout()),
            ENDED_BECAUSE => (REASON_ENDED, ended()),
            _ => (REASON_LOGIN, fields()),
        };
        let error = SessionEventFields::from_annotations(reason, &with(&base, key, Some(value)))
            .expect_err(&format!("{key}={value:?} accepted"));
        assert!(
            matches!(
                &error,
                SessionEventError::Invalid { key: k, .. } | SessionEventError::TooLong { key: k, .. } if *k == key
            ),
            "{key}={value:?}: {error}"
        );
        let text = error.to_string();
        assert!(!text.chars().any(char::is_control), "{text:?}");
        error
    }

    #[test]
    fn malformed_session_ids_are_refused() {
        for bad in [
            "",
            "4242",
            "4242-",
            "-5",
            "4242-5-6",
            "+4242-5",
            "04242-5",
            "4242-05",
            "0-5",
            "4194305-5",
            "4242-18446744073709551616",
            " 4242-5",
            "4242 -5",
            "٤٢-5",
            "0x10-5",
        ] {
            refused(SESSION, bad);
        }
        assert_eq!(
            SessionId::parse("4194304-0"),
            Some(SessionId {
                pid: 4_194_304,
                start_ticks: 0
            })
        );
        assert_eq!(
            SessionId::parse("1-18446744073709551615").map(|s| s.to_string()),
            Some("1-18446744073709551615".to_owned())
        );
    }

    #[test]
    fn malformed_login_users_are_refused() {
        for bad in ["", "1root", "ro ot", "root\n", &"a".repeat(33), "smb$"] {
            refused(LOGIN_USER, bad);
        }
    }

    #[test]
    fn malformed_fingerprints_are_refused() {
        let fp = GrantKey::parse(KEY).unwrap().fingerprint().to_string();
        for bad in [
            String::new(),
            "SHA256:".into(),
            fp[7..].to_owned(),
            format!("{fp},"),
            format!(",{fp}"),
            format!("{fp}, {fp}"),
            format!("{fp},{fp}"),
            format!("{fp}="),
            format!("MD5:{}", &fp[7..]),
            vec![fp.as_str(); MAX_LIST_ITEMS + 1].join(","),
        ] {
            refused(FINGERPRINTS, &bad);
        }
    }

    #[test]
    fn malformed_grant_names_are_refused() {
        for bad in [
            "",
            "g.root",
            "g.root.",
            "root.5025222ebecf8ecf",
            "g.core.5025222ebecf8ecf",
            "g.root.5025222EBECF8ECF",
            "g.root.5025222ebecf8ec",
            "g.root.5025222ebecf8ecf0",
            "g.root.5025222ebecf8ecg",
            "ssh.nodegate.dev/g.root.5025222ebecf8ecf",
            "g.root.5025222ebecf8ecf,",
            "g.root.5025222ebecf8ecf,g.root.5025222ebecf8ecf",
        ] {
            refused(GRANTS, bad);
        }
        // A login user with dots keeps them: the key id is after the last one.
        let user = LoginUser::new("a.b").unwrap();
        assert!(check_grant_name("g.a.b.5025222ebecf8ecf", &user).is_ok());
    }

    #[test]
    fn malformed_granted_by_is_refused() {
        for bad in [
            String::new(),
            "alice\nbob".into(),
            "alice\u{202e}".into(),
            "\u{1b}[2J".into(),
            "a".repeat(MAX_GRANTED_BY_LEN + 1),
        ] {
            refused(GRANTED_BY, &bad);
        }
        assert!(
            SessionEventFields::from_annotations(
                REASON_LOGIN,
                &with(
                    &fields(),
                    GRANTED_BY,
                    Some("O'Brien <ob@example.com>, system:admin")
                )
            )
            .is_ok()
        );
    }

    #[test]
    fn malformed_sources_are_refused() {
        for bad in [
            "",
            "192.0.2.7",
            "192.0.2.7:",
            "192.0.2.7:65536",
            "2001:db8::7:22",
            "2001:db8::7",
            "[2001:db8::7]",
            "[2001:DB8::7]:22",
            "[2001:db8:0::7]:22",
            "localhost:22",
            "192.0.2.7:022",
            " 192.0.2.7:22",
        ] {
            refused(SOURCE, bad);
        }
    }

    #[test]
    fn malformed_times_are_refused() {
        for key in [LOGIN_AT, LOGOUT_AT] {
            for bad in [
                "",
                "2026-12-01",
                "2026-12-01 10:00:00",
                "2026-12-01T10:00:00",
                "2026-13-01T10:00:00Z",
                "20261201100000Z",
                "yesterday",
                &format!("2026-12-01T10:00:00.{}Z", "0".repeat(40)),
            ] {
                refused(key, bad);
            }
        }
        // Any offset is read, and kept as the instant it names.
        let map = with(&fields(), LOGIN_AT, Some("2026-12-01T11:00:00+01:00"));
        let parsed = SessionEventFields::from_annotations(REASON_LOGIN, &map).unwrap();
        assert_eq!(parsed.fields.login_at, at("2026-12-01T10:00:00Z"));
    }

    #[test]
    fn a_logout_before_its_login_is_refused() {
        let map = with(&logout(), LOGOUT_AT, Some("2026-12-01T09:59:59Z"));
        assert!(matches!(
            SessionEventFields::from_annotations(REASON_LOGOUT, &map),
            Err(SessionEventError::LogoutBeforeLogin { .. })
        ));
        let same = with(&logout(), LOGOUT_AT, Some("2026-12-01T10:00:00Z"));
        assert!(SessionEventFields::from_annotations(REASON_LOGOUT, &same).is_ok());
    }

    #[test]
    fn malformed_causes_are_refused() {
        for bad in ["", "Revoked", "revoked ", "killed", "revoked,expired"] {
            refused(ENDED_BECAUSE, bad);
        }
        for because in EndedBecause::ALL {
            let map = with(&ended(), ENDED_BECAUSE, Some(because.as_str()));
            let parsed = SessionEventFields::from_annotations(REASON_ENDED, &map).unwrap();
            assert_eq!(parsed.fields.ended_because, Some(because));
        }
    }

    #[test]
    fn oversized_values_are_refused_before_they_are_read() {
        let huge = "x".repeat(MAX_VALUE_LEN + 1);
        for key in [
            SESSION,
            LOGIN_USER,
            FINGERPRINTS,
            GRANTS,
            GRANTED_BY,
            SOURCE,
            LOGIN_AT,
        ] {
            let error = SessionEventFields::from_annotations(
                REASON_LOGIN,
                &with(&fields(), key, Some(&huge)),
            )
            .unwrap_err();
            assert_eq!(
                error,
                SessionEventError::TooLong {
                    key,
                    len: MAX_VALUE_LEN + 1,
                    max: MAX_VALUE_LEN
                }
            );
        }
    }

    #[test]
    fn refused_values_are_shown_escaped_and_short() {
        let error = refused(LOGIN_USER, &format!("\u{1b}[31m{}", "r".repeat(200)));
        let text = error.to_string();
        assert!(text.contains("\\u{1b}"), "{text}");
        assert!(text.contains("..."), "{text}");
        assert!(text.len() < 400, "{text}");
        let reason = SessionEventFields::from_annotations("\u{7}", &fields().to_annotations())
            .unwrap_err()
            .to_string();
        assert!(!reason.chars().any(char::is_control), "{reason:?}");
    }
}
