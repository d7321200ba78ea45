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
