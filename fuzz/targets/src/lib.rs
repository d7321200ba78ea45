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
