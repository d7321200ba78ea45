//! The checks of the fuzz targets, as functions that build and run on stable.
//!
//! `fuzz/fuzz_targets/*.rs` are thin `fuzz_target!` wrappers around these functions (cargo-fuzz,
//! nightly); `tests/replay.rs` runs every file of `fuzz/seeds/TARGET/` and `fuzz/corpus/TARGET/`
//! through the same functions with `cargo test`, so a change that makes a target panic fails CI.
//! Each function panics when its property does not hold, and otherwise says whether the input
//! got past parsing (so that the replay can check the seeds still reach the checks).

use std::collections::BTreeMap;

use authorized_keys_cmd::answer::authorized_keys_lines;
use chrono::{DateTime, Utc};
use nodegate_core::grant::is_forbidden_char;
use nodegate_core::{AnnotationPrefix, Grant, GrantError, GrantKey, LoginUser};

/// A target's check: panics when its property does not hold for the input.
pub type Check = fn(&[u8]) -> Reached;

/// Every target: its name (the file name in `fuzz/fuzz_targets/` and the folder name in
/// `fuzz/seeds/`) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("grant_annotation", grant_annotation),
    ("authorized_keys_output", authorized_keys_output),
    ("host_key_annotation", host_key_annotation),
    ("watch_event", watch_event),
    ("ssh_auth_info", ssh_auth_info),
    ("session_records", session_records),
    ("session_event", session_event),
];

/// How far an input got; a property that does not hold panics instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Not UTF-8, or nothing in it accepted (no grant parsed, no line printed).
    Refused,
    /// Accepted (a grant that parsed, or at least one printed line), and every check held.
    Checked,
}

/// The grant parser: whatever is on a Node either fails to parse or round-trips exactly.
///
/// Input: `NAME\0VALUE` (without `\0`, the whole input is the value and the name is derived
/// from it, so that valid grants are reachable).
pub fn grant_annotation(data: &[u8]) -> Reached {
    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Refused;
    };
    let (name, value) = match text.split_once('\0') {
        Some((name, value)) => (name.to_owned(), value),
        None => {
            // Try the name the value would imply, if it parses at all under some name.
            match Grant::from_annotation("", text) {
                Err(GrantError::NameMismatch { expected, .. }) => (expected, text),
                _ => (String::new(), text),
            }
        }
    };
    let Ok(grant) = Grant::from_annotation(&name, value) else {
        return Reached::Refused;
    };
    // What was accepted is well-formed...
    assert_eq!(grant.annotation_name(), name);
    let rewritten = grant.annotation_value();
    assert!(!rewritten.chars().any(is_forbidden_char), "{rewritten:?}");
    // ...and survives a round trip unchanged.
    let again = Grant::from_annotation(&name, &rewritten).expect("a written grant parses");
    assert_eq!(again, grant);
    assert_eq!(again.annotation_value(), rewritten);
    Reached::Checked
}

/// Key types an `authorized_keys` line may start with.
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The output writer of authorized-keys-cmd: from any annotations, every printed line is one
/// `[expiry-time="YYYYMMDDHHMMSSZ" ]TYPE BASE64 g.USER.KEYID` line for the asked user, and
/// nothing else: no newline, no other option, no text from the annotation.
///
/// Input: annotations as `KEY\0VALUE` records separated by `\x01`; the first record's key is
/// used as the login user when it is a valid one (else `root`). Keys without `/` are put under
/// the default prefix.
pub fn authorized_keys_output(data: &[u8]) -> Reached {
    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Refused;
    };
    let root = || LoginUser::new("root").expect("root is a valid login user");
    let prefix = AnnotationPrefix::default();
    let mut annotations = BTreeMap::new();
    let mut user = None;
    for record in text.split('\u{1}') {
        let (key, value) = record.split_once('\0').unwrap_or((record, ""));
        if user.is_none() {
            user = Some(LoginUser::new(key).unwrap_or_else(|_| root()));
            continue;
        }
        // Bare names are put under the prefix, so that most records are grant candidates.
        let key = if key.contains('/') {
            key.to_owned()
        } else {
            format!("{prefix}/{key}")
        };
        annotations.insert(key, value.to_owned());
    }
    let user = user.unwrap_or_else(root);
    // A fixed "now" in 2026 so that expiry filtering is exercised deterministically.
    let now: DateTime<Utc> =
        DateTime::from_timestamp(1_790_000_000, 0).expect("a representable instant");
    let (lines, fingerprints) =
        authorized_keys_lines(&prefix, &annotations, &user, None, now, None);
    assert_eq!(lines.len(), fingerprints.len());
    for line in &lines {
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let fields: Vec<&str> = line.split(' ').collect();
        let rest = match fields.as_slice() {
            [option, rest @ ..] if option.starts_with("expiry-time=") => {
                let time = option
                    .strip_prefix("expiry-time=\"")
                    .and_then(|t| t.strip_suffix("Z\""))
                    .expect("expiry-time=\"...Z\"");
                assert!(
                    time.len() == 14 && time.bytes().all(|b| b.is_ascii_digit()),
                    "{line:?}"
                );
                rest
            }
            all => all,
        };
        let [key_type, blob, comment] = rest else {
            panic!("not TYPE BASE64 COMMENT: {line:?}");
        };
        assert!(KEY_TYPES.contains(key_type), "{line:?}");
        GrantKey::parse(&format!("{key_type} {blob}")).expect("the printed key parses");
        let expected_start = format!("g.{user}.");
        let id = comment
            .strip_prefix(&expected_start)
            .expect("comment is g.USER.KEYID");
        assert!(
            id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{line:?}"
        );
        assert!(
            annotations.contains_key(&format!("{prefix}/{comment}")),
            "{line:?}"
        );
    }
    if lines.is_empty() {
        Reached::Refused
    } else {
        Reached::Checked
    }
}

/// The host key parser (`docs/host-key-format.md`): from any annotations under the host-key
/// prefix, what is accepted is exactly what was published (canonical `TYPE BASE64`, of the
/// annotation's algorithm; certificates only of a published plain key), it round-trips through
/// what `publish-host-keys` would write, and every `known_hosts` line `keyctl known-hosts`
/// prints is `HOST TYPE BASE64` with nothing else in it.
///
/// Input: `NAME\0VALUE` pairs separated by `\0` (`NAME\0VALUE\0NAME\0VALUE...`), names after
/// the prefix; without `\0`, the whole input is one value under the name its type implies.
pub fn host_key_annotation(data: &[u8]) -> Reached {
    use nodegate_core::host_keys::{HOST_KEY_PREFIX, KnownHostsHost, NodeHostKeys};

    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Refused;
    };
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    if text.contains('\0') {
        let mut parts = text.split('\0');
        while let (Some(name), Some(value)) = (parts.next(), parts.next()) {
            annotations.insert(format!("{HOST_KEY_PREFIX}/{name}"), value.to_owned());
        }
    } else {
        let kind = text.split(' ').next().unwrap_or_default();
        let name = match kind.strip_suffix("-cert-v01@openssh.com") {
            Some(base) => format!("{base}-cert"),
            None => kind.to_owned(),
        };
        annotations.insert(format!("{HOST_KEY_PREFIX}/{name}"), text.to_owned());
    }
    let found = NodeHostKeys::scan(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if found.is_empty() {
        assert!(
            found.certificates.is_empty(),
            "a certificate without its key"
        );
        return Reached::Refused;
    }
    // Accepted values are exactly what was on the Node, under the names they imply.
    let written = found.annotations();
    for (key, value) in &written {
        assert_eq!(annotations.get(key), Some(value), "{key}");
    }
    for (algorithm, cert) in &found.certificates {
        assert_eq!(found.keys.get(algorithm), Some(cert.key()));
    }
    let again = NodeHostKeys::scan(written.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    assert_eq!(again.keys, found.keys);
    assert_eq!(again.certificates, found.certificates);
    assert!(again.invalid.is_empty());
    let host = KnownHostsHost::parse("[node1.k8s]:2222", Some("k8s")).expect("a valid host");
    for line in found.known_hosts_lines(&host) {
        assert!(!line.chars().any(is_forbidden_char), "{line:?}");
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line:?}");
        assert_eq!(fields[0], "[node1.k8s]:2222");
        assert!(KEY_TYPES.contains(&fields[1]), "{line:?}");
        assert!(!fields[1].starts_with("sk-"), "{line:?}");
    }
    Reached::Checked
}

/// The watch event parser of nodegate-agent (`agent::watch::parse_event`), on one line of a
/// watch stream from the API server: an accepted ADDED/MODIFIED/DELETED event is about node
/// `n1` only (the same line for another node is refused), every resourceVersion it returns is
/// 1 to 64 ASCII alphanumerics (it goes back into the next request's URL), and every
/// annotation it keeps (or names as not a string) is under the prefix.
///
/// Input: the line, as the API server would send it (a JSON watch event).
pub fn watch_event(data: &[u8]) -> Reached {
    use authorized_keys_cmd::agent::watch::{WatchEvent, parse_event};
    use nodegate_core::NodeName;

    let prefix = AnnotationPrefix::default();
    let node = NodeName::new("n1").expect("a valid node name");
    let Ok(event) = parse_event(data, &node, &prefix) else {
        return Reached::Refused;
    };
    let version = |rv: &str| {
        assert!(
            !rv.is_empty() && rv.len() <= 64 && rv.bytes().all(|b| b.is_ascii_alphanumeric()),
            "unusable resourceVersion {rv:?} accepted"
        );
    };
    let about_node = matches!(event, WatchEvent::Changed(_) | WatchEvent::Deleted { .. });
    match &event {
        WatchEvent::Changed(meta) => {
            version(&meta.resource_version);
            assert!(
                !meta.uid.is_empty() && meta.uid.len() <= 64,
                "{:?}",
                meta.uid
            );
            let keys = meta
                .annotations
                .annotations
                .keys()
                .chain(&meta.annotations.not_strings);
            for key in keys {
                assert!(prefix.strip(key).is_some(), "{key:?} is not under {prefix}");
            }
        }
        WatchEvent::Deleted { resource_version } | WatchEvent::Bookmark { resource_version } => {
            version(resource_version);
        }
        WatchEvent::Gone => {}
    }
    if about_node {
        // The same line is never another node's.
        for other in ["n2", "n1.example", "n"] {
            let other = NodeName::new(other).expect("a valid node name");
            assert!(
                parse_event(data, &other, &prefix).is_err(),
                "an event about n1 accepted for {other}"
            );
        }
    } else {
        // Bookmarks and 410 carry no name: they mean the same for every node.
        let other = NodeName::new("n2").expect("a valid node name");
        assert_eq!(
            parse_event(data, &other, &prefix).ok(),
            Some(event),
            "a bookmark or 410 that depends on the node"
        );
    }
    Reached::Checked
}

/// The parsers of what nodegate-agent reads about sshd sessions (`agent::sessions`), all of it
/// writable by the login user: the `ExposeAuthInfo` file (`parse_auth_info`), and
/// `/proc/PID/stat`, `/proc/PID/environ`, `SSH_CONNECTION` and `/proc/PID/status`. Each
/// accepted `publickey` key re-parses from its own OpenSSH text to the same key; every other
/// method is a plain method name; one method per line. `parse_stat` takes the command name
/// from the first `(` to the last `)`, whatever it holds: a stat line written back from what it
/// returned parses to the same, and any text put as the command name of a valid line comes
/// back unchanged. What the others return is written back and parses the same.
///
/// Input: the file's or line's bytes; every parser is run on every input.
pub fn ssh_auth_info(data: &[u8]) -> Reached {
    use authorized_keys_cmd::agent::sessions::{
        AuthMethod, parse_auth_info, parse_environ, parse_ssh_connection, parse_stat,
        parse_status_uids,
    };

    let mut reached = Reached::Refused;

    // /proc/PID/environ: the first SSH_USER_AUTH and SSH_CONNECTION, verbatim.
    let env = parse_environ(data);
    for value in [&env.user_auth, &env.connection].into_iter().flatten() {
        assert!(!value.contains('\0'), "{value:?}");
        reached = Reached::Checked;
    }
    let mut rebuilt = Vec::new();
    if let Some(v) = &env.user_auth {
        rebuilt.extend_from_slice(format!("SSH_USER_AUTH={v}\0").as_bytes());
    }
    if let Some(v) = &env.connection {
        rebuilt.extend_from_slice(format!("SSH_CONNECTION={v}\0").as_bytes());
    }
    assert_eq!(parse_environ(&rebuilt), env);

    let Ok(text) = std::str::from_utf8(data) else {
        return reached;
    };

    // The ExposeAuthInfo file.
    if let Ok(methods) = parse_auth_info(text) {
        reached = Reached::Checked;
        let body = text
            .strip_suffix('\n')
            .expect("an accepted file ends with \\n");
        assert_eq!(
            methods.len(),
            body.split('\n').count(),
            "one method per line"
        );
        for method in &methods {
            match method {
                AuthMethod::Publickey {
                    key,
                    in_authorized_keys,
                } => {
                    assert!(!in_authorized_keys, "not known from the auth file alone");
                    let openssh = key.to_openssh_without_comment();
                    let again = GrantKey::parse(&openssh).expect("an accepted key re-parses");
                    assert_eq!(&again, key, "{openssh}");
                    assert!(again.same_key(key));
                    assert_eq!(again.to_openssh_without_comment(), openssh);
                    let typed = format!("publickey {} ", key.algorithm());
                    assert!(
                        body.split('\n').any(|line| line.starts_with(&typed)),
                        "{openssh} from no publickey line of its type"
                    );
                }
                AuthMethod::Other(name) => {
                    assert!(
                        !name.is_empty() && !name.chars().any(char::is_control),
                        "{name:?}"
                    );
                }
            }
        }
    }

    // /proc/PID/stat.
    if let Some(stat) = parse_stat(text) {
        reached = Reached::Checked;
        let open = text.find('(').expect("an accepted stat line has (");
        let close = text.rfind(')').expect("an accepted stat line has )");
        assert_eq!(stat.comm, text[open + 1..close], "comm is up to the last )");
        assert!(!text[close + 1..].contains(')'));
        assert!(stat.tty_nr <= u64::from(u32::MAX), "{}", stat.tty_nr);
        // Written back, canonically, it is read the same.
        let line = stat_line(
            stat.pid,
            &stat.comm,
            stat.ppid,
            stat.tty_nr,
            stat.start_ticks,
        );
        assert_eq!(parse_stat(&line), Some(stat), "{line:?}");
    }
    // Whatever the command name holds, it comes back as it was.
    let line = stat_line(4242, text, 1, 34816, 987_654);
    let stat = parse_stat(&line).expect("a valid stat line whatever its comm");
    assert_eq!(stat.comm, text);
    assert_eq!((stat.pid, stat.ppid), (4242, 1));
    assert_eq!((stat.tty_nr, stat.start_ticks), (34816, 987_654));

    // SSH_CONNECTION.
    for value in [Some(text), env.connection.as_deref()]
        .into_iter()
        .flatten()
    {
        if let Some(client) = parse_ssh_connection(value) {
            reached = Reached::Checked;
            let parts: Vec<&str> = value.split(' ').collect();
            assert_eq!(parts.len(), 4, "{value:?}");
            assert_eq!(parts[0].parse().ok(), Some(client.ip()), "{value:?}");
            assert_eq!(parts[1].parse().ok(), Some(client.port()), "{value:?}");
            let again = format!("{} {} 192.0.2.1 22", client.ip(), client.port());
            assert_eq!(parse_ssh_connection(&again), Some(client), "{again:?}");
        }
    }

    // /proc/PID/status.
    if let Some(uids) = parse_status_uids(text) {
        reached = Reached::Checked;
        let [real, effective, saved, fs] = uids;
        let again = format!("Name:\tsshd\nUid:\t{real}\t{effective}\t{saved}\t{fs}\nGid:\t0\n");
        assert_eq!(parse_status_uids(&again), Some(uids), "{again:?}");
    }
    reached
}

/// A `/proc/PID/stat` line with these fields and zeros elsewhere, as the kernel writes it.
fn stat_line(pid: i32, comm: &str, ppid: i32, tty_nr: u64, start_ticks: u64) -> String {
    // tty_nr is printed as a signed int.
    let tty_nr = i32::from_ne_bytes(
        u32::try_from(tty_nr)
            .expect("tty_nr fits in 32 bits")
            .to_ne_bytes(),
    );
    // Fields 3 to 22: state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime priority nice num_threads itrealvalue starttime.
    format!(
        "{pid} ({comm}) S {ppid} {pid} {pid} {tty_nr} -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 {start_ticks} 0 0\n"
    )
}

/// The boot every `session_records` input is restored in (records of another are dropped).
pub const SESSION_RECORDS_BOOT_ID: &str = "8c3b6a52-0f41-4b55-9d7e-3c2a1f0e9b10";

/// The number of elements of a JSON array (as `serde_json` accepted it), counted from the
/// text: commas at depth 1, outside strings; `None` when the text is not an array.
fn json_array_len(text: &str) -> Option<usize> {
    let inner = text.trim_matches([' ', '\t', '\n', '\r']);
    let inner = inner.strip_prefix('[')?.strip_suffix(']')?;
    if inner.trim_matches([' ', '\t', '\n', '\r']).is_empty() {
        return Some(0);
    }
    let (mut depth, mut in_string, mut escaped, mut commas) = (0_usize, false, false, 0);
    for c in inner.chars() {
        match (in_string, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') | (false, _, '"') => in_string = !in_string,
            (false, _, '[' | '{') => depth += 1,
            (false, _, ']' | '}') => depth = depth.checked_sub(1)?,
            (false, _, ',') if depth == 0 => commas += 1,
            _ => {}
        }
    }
    Some(commas + 1)
}

/// The session records nodegate-agent persists in its cache (`SessionKeeper::restore_json`),
/// which it reads back after a restart and must not trust: what it keeps re-serializes
/// (`to_json`) and restores again to the same keeper, without a complaint and the same JSON
/// (idempotent); it never keeps more records than the input had; what it kept is not kept
/// when restored in another boot.
///
/// Input: the cache's JSON text; it is restored at a fixed instant in the boot
/// [`SESSION_RECORDS_BOOT_ID`].
pub fn session_records(data: &[u8]) -> Reached {
    use authorized_keys_cmd::agent::enforce::SessionKeeper;
    use authorized_keys_cmd::clock::{BootInstant, Moment};

    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Refused;
    };
    let moment = |boot_id: &str| Moment {
        wall: DateTime::from_timestamp(1_790_000_000, 0).expect("a representable instant"),
        boot: Some(BootInstant {
            boot_id: boot_id.to_owned(),
            since_boot_ms: 3_600_000,
        }),
    };
    let now = moment(SESSION_RECORDS_BOOT_ID);
    let mut first = SessionKeeper::default();
    let _problems = first.restore_json(text, &now);
    let kept = first.records().count();
    match json_array_len(text) {
        Some(len) => assert!(kept <= len, "{kept} records kept from {len}"),
        None => assert_eq!(kept, 0, "records kept from what is not a JSON list"),
    }
    for record in first.records() {
        assert!(!record.grants.is_empty());
    }
    let json = first.to_json();
    let mut second = SessionKeeper::default();
    let problems = second.restore_json(&json, &now);
    assert_eq!(problems, Vec::<String>::new(), "{json}");
    assert_eq!(second, first, "{json}");
    assert_eq!(second.to_json(), json);
    // Pids and start ticks mean nothing in another boot: none of them is kept there.
    let mut elsewhere = SessionKeeper::default();
    let dropped = elsewhere.restore_json(&json, &moment("a-later-boot"));
    assert_eq!(
        elsewhere.records().count(),
        0,
        "records of another boot kept"
    );
    assert_eq!(dropped.len(), kept, "every record of another boot named");
    if kept == 0 {
        Reached::Refused
    } else {
        Reached::Checked
    }
}

/// The session Event fields `keyctl sessions` reads
/// (`session_events::SessionEventFields::from_annotations`), from the annotations of an Event
/// anyone who may write Events wrote: what is accepted round-trips, `to_annotations()` of it
/// parsed again under the same reason gives the same event.
///
/// Input: `REASON\0KEY\0VALUE\0KEY\0VALUE...`; keys without `/` are put under
/// `agent.nodegate.dev/`.
pub fn session_event(data: &[u8]) -> Reached {
    use nodegate_core::session_events::{ANNOTATION_PREFIX, SessionEventFields};

    let Ok(text) = std::str::from_utf8(data) else {
        return Reached::Refused;
    };
    let mut parts = text.split('\0');
    let reason = parts.next().unwrap_or_default();
    let mut annotations = BTreeMap::new();
    while let (Some(key), Some(value)) = (parts.next(), parts.next()) {
        let key = if key.contains('/') {
            key.to_owned()
        } else {
            format!("{ANNOTATION_PREFIX}{key}")
        };
        annotations.insert(key, value.to_owned());
    }
    let Ok(event) = SessionEventFields::from_annotations(reason, &annotations) else {
        return Reached::Refused;
    };
    assert_eq!(event.reason.as_str(), reason);
    let written = event.fields.to_annotations();
    for key in written.keys() {
        assert!(key.starts_with(ANNOTATION_PREFIX), "{key}");
        assert!(annotations.contains_key(key), "{key} written but not read");
    }
    let again = SessionEventFields::from_annotations(reason, &written);
    assert_eq!(again.as_ref(), Ok(&event), "{written:?}");
    assert_eq!(
        again.expect("checked").fields.to_annotations(),
        written,
        "written twice differently"
    );
    Reached::Checked
}
