//! The output writer of authorized-keys-cmd: from any annotations, every printed line is one
//! `[expiry-time="YYYYMMDDHHMMSSZ" ]TYPE BASE64 g.USER.KEYID` line for the asked user, and
//! nothing else: no newline, no other option, no text from the annotation.
//!
//! Input: annotations as `KEY\0VALUE` records separated by `\x01`; the first record's key is
//! used as the login user when it is a valid one (else `root`).

#![no_main]

use std::collections::BTreeMap;

use authorized_keys_cmd::answer::authorized_keys_lines;
use chrono::{DateTime, Utc};
use libfuzzer_sys::fuzz_target;
use nodegate_core::{AnnotationPrefix, GrantKey, LoginUser};

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let prefix = AnnotationPrefix::default();
    let mut annotations = BTreeMap::new();
    let mut user = None;
    for record in text.split('\u{1}') {
        let (key, value) = record.split_once('\0').unwrap_or((record, ""));
        if user.is_none() {
            user = Some(LoginUser::new(key).unwrap_or_else(|_| LoginUser::new("root").unwrap()));
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
    let user = user.unwrap_or_else(|| LoginUser::new("root").unwrap());
    // A fixed "now" in 2026 so that expiry filtering is exercised deterministically.
    let now: DateTime<Utc> = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
    let (lines, fingerprints) = authorized_keys_lines(&prefix, &annotations, &user, None, now, None);
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
                assert!(time.len() == 14 && time.bytes().all(|b| b.is_ascii_digit()), "{line:?}");
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
        let id = comment.strip_prefix(&expected_start).expect("comment is g.USER.KEYID");
        assert!(id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{line:?}");
        assert!(annotations.contains_key(&format!("{prefix}/{comment}")), "{line:?}");
    }
});
