//! The grant record and its annotation encoding (see `docs/grant-format.md`).
//!
//! One grant is one annotation on a Node:
//!
//! ```text
//! ssh.nodegate.dev/g.root.5025222ebecf8ecf: login="root",expiry-time="20261122154510Z",granted-by="alice",granted-at="20261122134510Z",reason="disk full" ssh-ed25519 AAAAC3Nz... alice@laptop
//! ```

use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

use crate::expiry::{Expiry, ExpiryError, format_openssh_time, parse_openssh_time};
use crate::key::{GrantKey, KeyError};
use crate::prefix::AnnotationPrefix;
use crate::user::{LoginUser, LoginUserError};

/// Longest annotation value accepted, in bytes.
pub const MAX_VALUE_LEN: usize = 8192;

/// Longest `granted-by` or `reason` text accepted, in bytes.
pub const MAX_TEXT_LEN: usize = 256;

/// The start of every grant annotation name, after the prefix.
const NAME_START: &str = "g.";

/// One SSH key granted to one login user on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The user the key may log in as.
    pub user: LoginUser,
    /// The key.
    pub key: GrantKey,
    /// When the grant ends.
    pub expiry: Expiry,
    /// Who made the grant (their Kubernetes user name, as the granting tool saw it).
    pub granted_by: GrantText,
    /// When the grant was made.
    pub granted_at: DateTime<Utc>,
    /// Why the grant was made, if the granter said.
    pub reason: Option<GrantText>,
}

/// A free-text field of a grant (`granted-by`, `reason`): printable, single-line, bounded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantText(String);

/// Why a grant, or one field of it, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The annotation value is longer than [`MAX_VALUE_LEN`].
    #[error("the value is {len} bytes long; at most {MAX_VALUE_LEN} are allowed")]
    ValueTooLong {
        /// Length of the refused value.
        len: usize,
    },
    /// A control or invisible formatting character in the value or a text field.
    #[error(
        "contains {}, a control or invisible formatting character; grants hold visible text only (see docs/grant-format.md)",
        describe_char(*found)
    )]
    ControlChar {
        /// The first offending character.
        found: char,
    },
    /// The options before the key do not follow `name="value",name,...`.
    #[error("malformed options at byte {at}: {what}")]
    Syntax {
        /// Byte offset in the value.
        at: usize,
        /// What was expected.
        what: &'static str,
    },
    /// An option this format does not define (e.g. `command=`).
    #[error(
        "unknown option {name:?}; grants may only carry login, expiry-time or permanent, granted-by, granted-at and reason"
    )]
    UnknownOption {
        /// The option name.
        name: String,
    },
    /// The same option twice.
    #[error("option {name:?} is given twice")]
    DuplicateOption {
        /// The option name.
        name: String,
    },
    /// A flag given a value, or a valued option given none.
    #[error("option {name:?} {problem}")]
    OptionShape {
        /// The option name.
        name: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A required option is absent.
    #[error("option {name:?} is missing")]
    MissingOption {
        /// The option name.
        name: &'static str,
    },
    /// Both `expiry-time` and `permanent`, or neither.
    #[error("exactly one of expiry-time=\"...\" and permanent must be given")]
    ExpiryAmbiguous,
    /// The login user is not a valid name.
    #[error(transparent)]
    User(#[from] LoginUserError),
    /// The key is unacceptable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A time is malformed.
    #[error(transparent)]
    Time(#[from] ExpiryError),
    /// A text field is empty.
    #[error("{field} is empty")]
    EmptyText {
        /// The field.
        field: &'static str,
    },
    /// A text field is longer than [`MAX_TEXT_LEN`].
    #[error("{field} is {len} bytes long; at most {MAX_TEXT_LEN} are allowed")]
    TextTooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// The annotation name is not the one the value implies, `g.LOGIN.KEYID`.
    #[error("the annotation name {found:?} does not match its value; expected {expected:?}")]
    NameMismatch {
        /// The name found on the Node.
        found: String,
        /// The name derived from the login user and key.
        expected: String,
    },
}

/// Characters refused in any grant text, by their Unicode properties, so that a value reads in
/// `kubectl describe` exactly as it parses:
///
/// - General_Category `Cc` (controls: newline, tab, ESC, ...),
/// - `Cf` (format characters: bidi overrides and marks, zero-width characters, the invisible TAG
///   characters U+E0020-E007F, soft hyphen, ...),
/// - `Zl` and `Zp` (U+2028 LINE SEPARATOR, U+2029 PARAGRAPH SEPARATOR: line breaks to many
///   viewers),
/// - and `Bidi_Control` (PropList.txt), which reorders the text around it.
pub fn is_forbidden_char(c: char) -> bool {
    matches!(
        c.general_category(),
        GeneralCategory::Control
            | GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    ) || is_bidi_control(c)
}

/// The `Bidi_Control` property (Unicode PropList.txt): a closed set of twelve code points,
/// unchanged since Unicode 6.3. Every one is also `Cf` today; it is checked on its own so that
/// the rule does not rest on that.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `U+2028` for an error message: the code point, never the (invisible) character itself.
fn describe_char(c: char) -> String {
    format!("U+{:04X}", c as u32)
}

impl GrantText {
    /// Validates a text field; `field` names it in errors (`granted-by`, `reason`).
    pub fn new(field: &'static str, text: &str) -> Result<Self, GrantError> {
        if text.trim().is_empty() {
            return Err(GrantError::EmptyText { field });
        }
        if text.len() > MAX_TEXT_LEN {
            return Err(GrantError::TextTooLong {
                field,
                len: text.len(),
            });
        }
        if let Some(found) = text.chars().find(|&c| is_forbidden_char(c)) {
            return Err(GrantError::ControlChar { found });
        }
        Ok(Self(text.to_owned()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrantText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Grant {
    /// The annotation name (after `PREFIX/`) of the grant of `key` to `user`: `g.USER.KEYID`.
    ///
    /// Re-granting the same key to the same user updates the same annotation; different keys or
    /// users never share one, so concurrent grants never overwrite each other.
    pub fn annotation_name_for(user: &LoginUser, key: &GrantKey) -> String {
        format!("{NAME_START}{user}.{}", key.short_id())
    }

    /// This grant's annotation name, `g.USER.KEYID`.
    pub fn annotation_name(&self) -> String {
        Self::annotation_name_for(&self.user, &self.key)
    }

    /// This grant's full annotation key, `PREFIX/g.USER.KEYID`.
    pub fn annotation_key(&self, prefix: &AnnotationPrefix) -> String {
        format!("{prefix}/{}", self.annotation_name())
    }

    /// The annotation value, in the documented format.
    pub fn annotation_value(&self) -> String {
        let mut out = String::with_capacity(256);
        push_option(&mut out, "login", Some(self.user.as_str()));
        match self.expiry {
            Expiry::At(at) => push_option(&mut out, "expiry-time", Some(&format_openssh_time(at))),
            Expiry::Permanent => push_option(&mut out, "permanent", None),
        }
        push_option(&mut out, "granted-by", Some(self.granted_by.as_str()));
        push_option(
            &mut out,
            "granted-at",
            Some(&format_openssh_time(self.granted_at)),
        );
        if let Some(reason) = &self.reason {
            push_option(&mut out, "reason", Some(reason.as_str()));
        }
        out.push(' ');
        out.push_str(&self.key.to_openssh());
        out
    }

    /// Parses an annotation found on a Node. `name` is the key after `PREFIX/`; it must be the
    /// name the value implies, so a value copied under another name is refused.
    pub fn from_annotation(name: &str, value: &str) -> Result<Self, GrantError> {
        if value.len() > MAX_VALUE_LEN {
            return Err(GrantError::ValueTooLong { len: value.len() });
        }
        if let Some(found) = value.chars().find(|&c| is_forbidden_char(c)) {
            return Err(GrantError::ControlChar { found });
        }
        let (options, key_text) = parse_options(value)?;
        let mut login = None;
        let mut expiry_time = None;
        let mut permanent = false;
        let mut granted_by = None;
        let mut granted_at = None;
        let mut reason = None;
        for (option_name, option_value) in options {
            let slot = match option_name {
                "login" => &mut login,
                "expiry-time" => &mut expiry_time,
                "granted-by" => &mut granted_by,
                "granted-at" => &mut granted_at,
                "reason" => &mut reason,
                "permanent" => {
                    if option_value.is_some() {
                        return Err(GrantError::OptionShape {
                            name: option_name.into(),
                            problem: "takes no value",
                        });
                    }
                    if permanent {
                        return Err(GrantError::DuplicateOption {
                            name: option_name.into(),
                        });
                    }
                    permanent = true;
                    continue;
                }
                other => {
                    return Err(GrantError::UnknownOption { name: other.into() });
                }
            };
            let Some(option_value) = option_value else {
                return Err(GrantError::OptionShape {
                    name: option_name.into(),
                    problem: "needs a quoted value",
                });
            };
            if slot.replace(option_value).is_some() {
                return Err(GrantError::DuplicateOption {
                    name: option_name.into(),
                });
            }
        }
        let user = LoginUser::new(&login.ok_or(GrantError::MissingOption { name: "login" })?)?;
        let expiry = match (expiry_time, permanent) {
            (Some(t), false) => Expiry::At(parse_openssh_time(&t)?),
            (None, true) => Expiry::Permanent,
            _ => return Err(GrantError::ExpiryAmbiguous),
        };
        let granted_by = GrantText::new(
            "granted-by",
            &granted_by.ok_or(GrantError::MissingOption { name: "granted-by" })?,
        )?;
        let granted_at = parse_openssh_time(
            &granted_at.ok_or(GrantError::MissingOption { name: "granted-at" })?,
        )?;
        let reason = reason.map(|r| GrantText::new("reason", &r)).transpose()?;
        let key = GrantKey::parse(key_text)?;
        let grant = Self {
            user,
            key,
            expiry,
            granted_by,
            granted_at,
            reason,
        };
        let expected = grant.annotation_name();
        if name != expected {
            return Err(GrantError::NameMismatch {
                found: name.into(),
                expected,
            });
        }
        Ok(grant)
    }

    /// The `authorized_keys` line sshd gets for this grant: the key re-encoded from its parsed
    /// form, the annotation name as comment, and `expiry-time` so that sshd enforces the end too.
    /// Nothing from the annotation's free text reaches it.
    pub fn authorized_keys_line(&self) -> String {
        let key = self.key.to_openssh_without_comment();
        let name = self.annotation_name();
        match self.expiry {
            Expiry::At(at) => format!("expiry-time=\"{}\" {key} {name}", format_openssh_time(at)),
            Expiry::Permanent => format!("{key} {name}"),
        }
    }
}

fn push_option(out: &mut String, name: &str, value: Option<&str>) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str(name);
    if let Some(value) = value {
        out.push_str("=\"");
        for c in value.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
}

type ParsedOptions<'v> = Vec<(&'v str, Option<String>)>;

/// Splits `name="value",flag,... KEY` into its options and the key text.
fn parse_options(value: &str) -> Result<(ParsedOptions<'_>, &str), GrantError> {
    let bytes = value.as_bytes();
    let mut options = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_lowercase() || bytes[i] == b'-') {
            i += 1;
        }
        if i == start {
            return Err(GrantError::Syntax {
                at: i,
                what: "expected an option name (login=\"...\",...) before the key",
            });
        }
        let name = &value[start..i];
        let mut option_value = None;
        if bytes.get(i) == Some(&b'=') {
            i += 1;
            if bytes.get(i) != Some(&b'"') {
                return Err(GrantError::Syntax {
                    at: i,
                    what: "expected '\"' after '='",
                });
            }
            i += 1;
            let mut text = String::new();
            loop {
                let c = value[i..].chars().next().ok_or(GrantError::Syntax {
                    at: i,
                    what: "unterminated quoted value",
                })?;
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => match bytes.get(i) {
                        Some(&b) if b == b'"' || b == b'\\' => {
                            text.push(b as char);
                            i += 1;
                        }
                        _ => {
                            return Err(GrantError::Syntax {
                                at: i,
                                what: "only \\\" and \\\\ may be escaped",
                            });
                        }
                    },
                    c => text.push(c),
                }
            }
            option_value = Some(text);
        }
        options.push((name, option_value));
        match bytes.get(i) {
            Some(b',') => i += 1,
            Some(b' ') => return Ok((options, &value[i + 1..])),
            _ => {
                return Err(GrantError::Syntax {
                    at: i,
                    what: "expected ',' or a space and the key after an option",
                });
            }
        }
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} for {} (expires {})",
            self.key.fingerprint(),
            self.user,
            self.expiry
        )?;
        if let Some(reason) = &self.reason {
            f.write_str(", reason: ")?;
            f.write_str(reason.as_str())?;
        }
        Ok(())
    }
}

/// Renders a text so that anything odd in it is visible and harmless on a terminal.
pub fn escape_for_display(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_forbidden_char(c) {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::ED25519;

    fn sample() -> Grant {
        Grant {
            user: LoginUser::new("root").unwrap(),
            key: GrantKey::parse(ED25519).unwrap(),
            expiry: Expiry::At(parse_openssh_time("20261122154510Z").unwrap()),
            granted_by: GrantText::new("granted-by", "alice").unwrap(),
            granted_at: parse_openssh_time("20261122134510Z").unwrap(),
            reason: Some(GrantText::new("reason", "disk \"full\" \\ again").unwrap()),
        }
    }

    #[test]
    fn round_trips_through_the_annotation() {
        let grant = sample();
        let value = grant.annotation_value();
        assert!(value.starts_with(
            "login=\"root\",expiry-time=\"20261122154510Z\",granted-by=\"alice\",granted-at=\"20261122134510Z\",reason=\"disk \\\"full\\\" \\\\ again\" ssh-ed25519 "
        ));
        let name = grant.annotation_name();
        assert!(name.starts_with("g.root."));
        assert_eq!(Grant::from_annotation(&name, &value), Ok(grant.clone()));
        assert_eq!(
            grant.annotation_key(&AnnotationPrefix::default()),
            format!("ssh.nodegate.dev/{name}")
        );
    }

    #[test]
    fn permanent_grants() {
        let mut grant = sample();
        grant.expiry = Expiry::Permanent;
        grant.reason = None;
        let value = grant.annotation_value();
        assert!(value.starts_with("login=\"root\",permanent,granted-by="));
        assert_eq!(
            Grant::from_annotation(&grant.annotation_name(), &value),
            Ok(grant.clone())
        );
        assert!(grant.authorized_keys_line().starts_with("ssh-ed25519 "));
    }

    #[test]
    fn authorized_keys_line_has_expiry_and_no_free_text() {
        let line = sample().authorized_keys_line();
        assert!(line.starts_with("expiry-time=\"20261122154510Z\" ssh-ed25519 AAAA"));
        assert!(line.ends_with(&sample().annotation_name()));
        assert!(!line.contains("foo@bar.com"));
        assert!(!line.contains("alice"));
    }

    fn parse(value: &str) -> Result<Grant, GrantError> {
        Grant::from_annotation(&sample().annotation_name(), value)
    }

    #[test]
    fn refuses_hostile_values() {
        let good = sample().annotation_value();
        let key = sample().key.to_openssh();
        type Case = (String, fn(&GrantError) -> bool);
        let cases: Vec<Case> = vec![
            (format!("command=\"/bin/sh\",{good}"), |e| {
                matches!(e, GrantError::UnknownOption { .. })
            }),
            (
                good.replacen("login=\"root\"", "login=\"root\",login=\"admin\"", 1),
                |e| matches!(e, GrantError::DuplicateOption { .. }),
            ),
            (format!("{good}\nssh-ed25519 AAAA x"), |e| {
                matches!(e, GrantError::ControlChar { found: '\n' })
            }),
            (good.replacen("alice", "al\u{202E}ice", 1), |e| {
                matches!(e, GrantError::ControlChar { .. })
            }),
            (
                format!("login=\"root\",granted-by=\"a\",granted-at=\"20261122134510Z\" {key}"),
                |e| matches!(e, GrantError::ExpiryAmbiguous),
            ),
            (
                good.replacen(
                    "expiry-time=\"20261122154510Z\"",
                    "expiry-time=\"20261122154510Z\",permanent",
                    1,
                ),
                |e| matches!(e, GrantError::ExpiryAmbiguous),
            ),
            (good.replacen("20261122154510Z", "2026-11-22", 1), |e| {
                matches!(e, GrantError::Time(_))
            }),
            (good.replacen("login=\"root\"", "login=\"ro ot\"", 1), |e| {
                matches!(e, GrantError::User(_))
            }),
            (good.replacen("login=\"root\"", "login=root", 1), |e| {
                matches!(e, GrantError::Syntax { .. })
            }),
            (good.replacen("AAAA", "AAA!", 1), |e| {
                matches!(e, GrantError::Key(_))
            }),
            (key.clone(), |e| {
                matches!(
                    e,
                    GrantError::Syntax { .. } | GrantError::UnknownOption { .. }
                )
            }),
            (String::new(), |e| matches!(e, GrantError::Syntax { .. })),
            ("x".repeat(MAX_VALUE_LEN + 1), |e| {
                matches!(e, GrantError::ValueTooLong { .. })
            }),
            (good.replacen("reason=\"", "reason=\"\\n", 1), |e| {
                matches!(e, GrantError::Syntax { .. })
            }),
            (
                good.replacen("granted-by=\"alice\"", "granted-by=\"\"", 1),
                |e| matches!(e, GrantError::EmptyText { .. }),
            ),
            (
                good.replacen(",permanent", "", 1).replacen(
                    "login=\"root\"",
                    "login=\"root\",permanent=\"yes\"",
                    1,
                ),
                |e| matches!(e, GrantError::OptionShape { .. }),
            ),
            (good.replacen("login=\"root\",", "", 1), |e| {
                matches!(e, GrantError::MissingOption { name: "login" })
            }),
        ];
        for (value, expected) in cases {
            let result = parse(&value);
            match result {
                Err(ref e) if expected(e) => {}
                other => panic!("value {value:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn a_second_key_in_the_comment_never_reaches_sshd() {
        let value = format!(
            "{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOTHER",
            sample().annotation_value()
        );
        let grant = parse(&value).unwrap();
        let line = grant.authorized_keys_line();
        assert_eq!(line.matches("ssh-ed25519").count(), 1, "{line}");
        assert!(!line.contains("OTHER"));
    }

    #[test]
    fn refuses_a_value_under_another_name() {
        let grant = sample();
        let err = Grant::from_annotation("g.admin.0000000000000000", &grant.annotation_value())
            .unwrap_err();
        assert!(matches!(err, GrantError::NameMismatch { .. }));
    }

    #[test]
    fn escapes_for_display() {
        assert_eq!(escape_for_display("a\nb\u{202e}"), "a\\u{a}b\\u{202e}");
        assert_eq!(
            escape_for_display("R&D\u{2028}x\u{e0041}\u{61c}"),
            "R&D\\u{2028}x\\u{e0041}\\u{61c}"
        );
    }

    /// Invisible or line-breaking characters by Unicode property, including those a hand list
    /// had missed (U+061C, U+2028/U+2029, the TAG block).
    const FORBIDDEN: &[char] = &[
        '\n',
        '\t',
        '\u{1b}',
        '\u{7f}',
        '\u{85}', // Cc
        '\u{61c}',
        '\u{200b}',
        '\u{200e}',
        '\u{202e}',
        '\u{2066}',
        '\u{feff}',
        '\u{ad}',
        '\u{180e}',
        '\u{e0001}',
        '\u{e0020}',
        '\u{e0041}',
        '\u{e007f}', // Cf
        '\u{2028}',  // Zl
        '\u{2029}',  // Zp
    ];

    /// What people write in reasons, names and key comments, and must keep working.
    const ALLOWED: &[char] = &[
        'a',
        ' ',
        '&',
        '<',
        '>',
        '"',
        '\\',
        '\'',
        '\u{e9}',
        '\u{65e5}',
        '\u{1f600}',
        '\u{a0}',
        '\u{627}',
    ];

    #[test]
    fn forbidden_characters_follow_unicode_properties() {
        for &c in FORBIDDEN {
            assert!(is_forbidden_char(c), "U+{:04X} should be refused", c as u32);
            let text = format!("disk{c}full");
            assert_eq!(
                GrantText::new("reason", &text),
                Err(GrantError::ControlChar { found: c })
            );
            let mut grant = sample();
            grant.reason = None;
            let value = format!(
                "{},reason=\"{text}\" {}",
                grant.annotation_value().split_once(' ').unwrap().0,
                grant.key.to_openssh()
            );
            assert!(
                matches!(parse(&value), Err(GrantError::ControlChar { found }) if found == c),
                "U+{:04X} passed the parser",
                c as u32
            );
            assert!(!escape_for_display(&text).contains(c));
        }
        for &c in ALLOWED {
            assert!(
                !is_forbidden_char(c),
                "U+{:04X} should be allowed",
                c as u32
            );
            let mut grant = sample();
            grant.reason = Some(GrantText::new("reason", &format!("R{c}D")).unwrap());
            let value = grant.annotation_value();
            assert_eq!(parse(&value), Ok(grant));
        }
    }

    #[test]
    fn bidi_controls_are_refused_and_are_format_characters() {
        let bidi_controls = ['\u{61c}', '\u{200e}', '\u{200f}']
            .into_iter()
            .chain('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}');
        for c in bidi_controls {
            assert!(is_bidi_control(c) && is_forbidden_char(c));
            assert_eq!(c.general_category(), GeneralCategory::Format);
        }
    }

    #[test]
    fn the_refusal_names_the_code_point() {
        let error = GrantText::new("reason", "a\u{2028}b").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("U+2028"), "{text}");
        assert!(!text.contains('\u{2028}'), "{text:?}");
    }
}
