//! The `--user` argument: checked here, resolved on the node against the target's own files.

/// Why a `--user` value was refused.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Neither a valid name nor a number.
    #[error(
        "invalid --user {0:?}: give NAME, UID, NAME:GROUP or UID:GID (names of letters, digits, '.', '_', '-'; numbers below 4294967295)"
    )]
    Invalid(String),
}

/// A user (and optionally group) by name or number; the node resolves names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec(String);

impl UserSpec {
    /// Parses `NAME`, `UID`, `NAME:GROUP` or `UID:GID` (names and numbers mix freely).
    pub fn parse(text: &str) -> Result<UserSpec, UserError> {
        let (user, group) = match text.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (text, None),
        };
        if valid_part(user) && group.is_none_or(valid_part) {
            Ok(UserSpec(text.to_owned()))
        } else {
            Err(UserError::Invalid(text.to_owned()))
        }
    }

    /// The text handed to the node.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A POSIX-ish user or group name (as useradd allows, plus a trailing `$`), or a 32-bit id
/// other than the invalid `-1`.
fn valid_part(part: &str) -> bool {
    if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
        return part.parse::<u32>().is_ok_and(|id| id != u32::MAX);
    }
    let name = part.strip_suffix('$').unwrap_or(part);
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_pairs() {
        for good in [
            "root",
            "1000",
            "1000:1000",
            "www-data:adm",
            "nobody:65534",
            "host$",
        ] {
            assert!(UserSpec::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn anything_the_shell_or_awk_could_misread_is_refused() {
        for bad in [
            "",
            ":",
            "a:",
            ":0",
            "-x",
            "a b",
            "a\\b",
            "x\"",
            "4294967295",
            "1:2:3",
            "$(id)",
        ] {
            let err = UserSpec::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("UID:GID"), "{err}");
        }
    }
}
