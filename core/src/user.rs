//! The login user a grant is for.

use std::fmt;
use std::str::FromStr;

/// The longest login name accepted: what `useradd` allows by default on Linux.
pub const MAX_LOGIN_USER_LEN: usize = 32;

/// A validated login user name on a node.
///
/// Accepted: 1 to 32 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or `_`. This is
/// the portable set of POSIX and `useradd`, minus the Samba-style trailing `$`. The same rules
/// keep the name usable inside an annotation key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LoginUser(String);

/// Why a login user name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginUserError {
    /// The name is empty.
    #[error("the login user is empty")]
    Empty,
    /// The name is longer than [`MAX_LOGIN_USER_LEN`].
    #[error("the login user is {len} characters long; at most {MAX_LOGIN_USER_LEN} are allowed")]
    TooLong {
        /// Length of the refused name.
        len: usize,
    },
    /// The first character is not a letter or `_`.
    #[error("the login user {name:?} must start with a letter or '_'")]
    BadStart {
        /// The refused name, escaped for display.
        name: String,
    },
    /// A character outside `A-Z a-z 0-9 . _ -`.
    #[error(
        "the login user {name:?} contains {found:?}; only letters, digits, '.', '_' and '-' are allowed"
    )]
    BadChar {
        /// The refused name, escaped for display.
        name: String,
        /// The first offending character.
        found: char,
    },
}

impl LoginUser {
    /// Validates `name` as a login user.
    pub fn new(name: &str) -> Result<Self, LoginUserError> {
        let first = name.chars().next().ok_or(LoginUserError::Empty)?;
        if name.len() > MAX_LOGIN_USER_LEN {
            return Err(LoginUserError::TooLong { len: name.len() });
        }
        if !(first.is_ascii_alphabetic() || first == '_') {
            return Err(LoginUserError::BadStart { name: name.into() });
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(LoginUserError::BadChar {
                name: name.into(),
                found,
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for LoginUser {
    type Err = LoginUserError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for LoginUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_common_names() {
        for name in ["root", "core", "ec2-user", "_svc", "a.b_c-d", "U1"] {
            assert_eq!(LoginUser::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(LoginUser::new(""), Err(LoginUserError::Empty));
        assert!(matches!(
            LoginUser::new(&"a".repeat(33)),
            Err(LoginUserError::TooLong { len: 33 })
        ));
        assert!(matches!(
            LoginUser::new("1root"),
            Err(LoginUserError::BadStart { .. })
        ));
        assert!(matches!(
            LoginUser::new("-root"),
            Err(LoginUserError::BadStart { .. })
        ));
        for (name, found) in [
            ("ro ot", ' '),
            ("root\n", '\n'),
            ("smb$", '$'),
            ("a/b", '/'),
            ("ré", 'é'),
        ] {
            assert_eq!(
                LoginUser::new(name),
                Err(LoginUserError::BadChar {
                    name: name.into(),
                    found
                })
            );
        }
    }
}
