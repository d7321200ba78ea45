//! The SSH public key a grant carries.

use std::fmt;

use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg};

use crate::grant::is_forbidden_char;

/// Smallest RSA modulus accepted, in bits (what OpenSSH 9 requires by default).
pub const MIN_RSA_BITS: usize = 2048;

/// Longest key comment accepted, in bytes.
pub const MAX_COMMENT_LEN: usize = 256;

/// Longest public key line accepted, in bytes (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_KEY_LINE_LEN: usize = 4096;

/// A parsed, validated SSH public key of an accepted type.
///
/// Accepted types: `ssh-ed25519`, `ecdsa-sha2-nistp256/384/521`, `ssh-rsa` of at least
/// [`MIN_RSA_BITS`] bits, and the security-key types `sk-ssh-ed25519@openssh.com` and
/// `sk-ecdsa-sha2-nistp256@openssh.com`. DSA keys and certificates are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantKey {
    key: ssh_key::PublicKey,
}

/// Why a public key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing where the key should be.
    #[error("no public key was given")]
    Empty,
    /// The line is longer than [`MAX_KEY_LINE_LEN`].
    #[error("the public key line is {len} bytes long; at most {MAX_KEY_LINE_LEN} are allowed")]
    TooLong {
        /// Length of the refused line.
        len: usize,
    },
    /// A control or invisible formatting character (newline, escape, bidi override, ...)
    /// inside the key line, typically in its comment.
    #[error(
        "the public key line contains U+{:04X}, a control or invisible formatting character; remove it from the key's comment",
        *found as u32
    )]
    ControlChar {
        /// The first offending character.
        found: char,
    },
    /// The text is not an OpenSSH public key (`TYPE BASE64 [COMMENT]`).
    #[error(
        "not an OpenSSH public key ({reason}); expected one line like 'ssh-ed25519 AAAA... comment', as in a .pub file"
    )]
    Unparsable {
        /// What the parser reported.
        reason: String,
    },
    /// An OpenSSH certificate (`*-cert-v01@openssh.com`, a `-cert.pub` file) where a plain
    /// public key belongs.
    #[error(
        "this is an OpenSSH certificate ({algorithm}), not a plain public key; certificates are refused because a grant names one plain key (sshd trusts certificates by their CA, with TrustedUserCAKeys or cert-authority, a different mechanism): give the plain public key, e.g. ~/.ssh/id_ed25519.pub rather than ~/.ssh/id_ed25519-cert.pub"
    )]
    Certificate {
        /// The certificate type, e.g. `ssh-ed25519-cert-v01@openssh.com`.
        algorithm: String,
    },
    /// A key type this tool does not grant.
    #[error(
        "key type {algorithm} is not accepted; use ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa (>= {MIN_RSA_BITS} bits) or an sk- security key"
    )]
    UnsupportedType {
        /// The refused key type.
        algorithm: String,
    },
    /// An RSA key below [`MIN_RSA_BITS`].
    #[error("the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required")]
    WeakRsa {
        /// Modulus size of the refused key.
        bits: usize,
    },
    /// The comment is longer than [`MAX_COMMENT_LEN`].
    #[error("the key comment is {len} bytes long; at most {MAX_COMMENT_LEN} are allowed")]
    CommentTooLong {
        /// Length of the refused comment.
        len: usize,
    },
}

impl GrantKey {
    /// Parses one OpenSSH public key line: `TYPE BASE64 [COMMENT]`, as found in a `.pub` file.
    pub fn parse(line: &str) -> Result<Self, KeyError> {
        let line = line.trim_matches(|c| c == ' ' || c == '\n' || c == '\r');
        if line.is_empty() {
            return Err(KeyError::Empty);
        }
        if line.len() > MAX_KEY_LINE_LEN {
            return Err(KeyError::TooLong { len: line.len() });
        }
        if let Some(found) = line.chars().find(|&c| is_forbidden_char(c)) {
            return Err(KeyError::ControlChar { found });
        }
        let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| {
            certificate_type(line).map_or_else(
                || KeyError::Unparsable {
                    reason: e.to_string(),
                },
                |algorithm| KeyError::Certificate { algorithm },
            )
        })?;
        Self::from_key(key)
    }

    fn from_key(key: ssh_key::PublicKey) -> Result<Self, KeyError> {
        match key.key_data() {
            KeyData::Ed25519(_)
            | KeyData::Ecdsa(_)
            | KeyData::SkEd25519(_)
            | KeyData::SkEcdsaSha2NistP256(_) => {}
            KeyData::Rsa(rsa) => {
                let bits = mpint_bits(rsa.n.as_positive_bytes().unwrap_or_default());
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::WeakRsa { bits });
                }
            }
            other => {
                return Err(KeyError::UnsupportedType {
                    algorithm: other.algorithm().to_string(),
                });
            }
        }
        if key.comment().len() > MAX_COMMENT_LEN {
            return Err(KeyError::CommentTooLong {
                len: key.comment().len(),
            });
        }
        Ok(Self { key })
    }

    /// The key type, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// The comment from the `.pub` line (often `user@host`); may be empty.
    pub fn comment(&self) -> &str {
        self.key.comment()
    }

    /// The OpenSSH SHA-256 fingerprint, as `ssh-keygen -l` and sshd's `%f` show it.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint(self.key.fingerprint(HashAlg::Sha256).to_string())
    }

    /// The first 16 hex digits of the SHA-256 fingerprint: a short, stable id for annotation keys.
    pub fn short_id(&self) -> String {
        let fp = self.key.fingerprint(HashAlg::Sha256);
        fp.as_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `TYPE BASE64`, re-encoded from the parsed key (never the caller's text), without comment.
    pub fn to_openssh_without_comment(&self) -> String {
        let bare = ssh_key::PublicKey::new(self.key.key_data().clone(), "");
        // Encoding a key that was just decoded cannot fail; a failure is a bug in ssh-key.
        bare.to_openssh()
            .expect("a decoded public key re-encodes")
            .trim_end()
            .to_owned()
    }

    /// `TYPE BASE64 COMMENT` (comment omitted when empty), re-encoded from the parsed key.
    pub fn to_openssh(&self) -> String {
        let bare = self.to_openssh_without_comment();
        if self.comment().is_empty() {
            bare
        } else {
            format!("{bare} {}", self.comment())
        }
    }

    /// Whether `other` is the same key, ignoring comments.
    pub fn same_key(&self, other: &GrantKey) -> bool {
        self.key.key_data() == other.key.key_data()
    }
}

/// The certificate type of `line` if its type text names an OpenSSH certificate
/// (`ssh-ed25519-cert-v01@openssh.com`, as in a `-cert.pub` file).
fn certificate_type(line: &str) -> Option<String> {
    let type_text = line.split(' ').next().unwrap_or_default();
    let is_certificate = type_text.ends_with("-cert-v01@openssh.com")
        || type_text.ends_with("-cert-v00@openssh.com");
    is_certificate.then(|| type_text.to_owned())
}

/// Bit length of a big-endian unsigned integer.
fn mpint_bits(bytes: &[u8]) -> usize {
    let bytes = match bytes.iter().position(|&b| b != 0) {
        Some(start) => &bytes[start..],
        None => return 0,
    };
    bytes.len() * 8 - bytes[0].leading_zeros() as usize
}

/// An OpenSSH SHA-256 key fingerprint, `SHA256:` followed by unpadded base64.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint text, e.g. `SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a fingerprint as OpenSSH writes it: `SHA256:` and the unpadded, canonical base64
    /// of a 32-byte digest (43 characters), nothing else.
    pub fn parse(text: &str) -> Result<Self, FingerprintError> {
        use base64::Engine as _;
        const ENGINE: base64::engine::GeneralPurpose =
            base64::engine::general_purpose::STANDARD_NO_PAD;
        let refuse = || FingerprintError {
            text: crate::grant::escape_for_display(&text.chars().take(80).collect::<String>()),
        };
        let digest = text.strip_prefix("SHA256:").ok_or_else(refuse)?;
        if digest.len() != 43 {
            return Err(refuse());
        }
        match ENGINE.decode(digest) {
            Ok(bytes) if bytes.len() == 32 => Ok(Self(text.to_owned())),
            _ => Err(refuse()),
        }
    }

    /// Whether `text` names this fingerprint; the `SHA256:` prefix may be left out.
    pub fn matches(&self, text: &str) -> bool {
        let text = text.trim();
        self.0 == text || self.0.strip_prefix("SHA256:") == Some(text)
    }
}

/// Text that is not an OpenSSH SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "\"{text}\" is not a SHA-256 key fingerprint (SHA256: and 43 characters of base64, as ssh-keygen -l shows it)"
)]
pub struct FingerprintError {
    /// The refused text (its first 80 characters), escaped for display.
    pub text: String,
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti foo@bar.com";
    pub(crate) const ED25519_FP: &str = "SHA256:UCUiLr7Pjs9wFFJMDByLgc3NrtdU344OgUM45wZPcIQ";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHwf2HMM5TRXvo2SQJjsNkiDD5KqiiNjrGVv3UUh9mMT5RHxdtX3GiaNdbCqqnT9+7CRVspZ8p6DKVCs3bG+GNQ= user@example.com";
    const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjZuAAAABHNzaDo= user@example.com";
    const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDnrTgH85zxBUzZ1kzKmP8ClS/J9W+bg9wLk3LHzcZ9ROd0+o9TFzTDHhpdp+0MJoaw+cNwrFsmWf58YrD8xUPz6MCs/1U6tKm/JeyMBHGpY+c3P3gnnDC1y4oStXJc4hyjRchhwvfjgRHqDU5L5ImGxbPzFdP6KNJyH74HPjhR9Q== 1024";
    const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBANw9iSUO2UYhFMssjUgW46URqv8bBrDgHeF8HLBOWBvKuXF2Rx2J/XyhgX48SOLMuv0hcPaLPZqN6JGzL7ZrGs2fnv+RmEzZNXJUgr3c1zGnQY3RtYPOFYFRmlIIW97H3PH9NCk/+EXp/gqvTwuu8PwHtzkWyLwvpmMwnzTd4bQfAAAAFQDgn3OsbdrbfabADGmAs7IhxWwIIwAAAIEAnbSYRzO2x1b3WBTHLM8QMyyz9/lkVUO/mkamV3CfhSIakGU9R3F1eU8oXmkUZdrO2JQQZ/Y6zL+Dx4AkxR8SMcbU5T8qbhqDe8JeaDl3wgpCCnH+LuUFDmBkyD3J5QQcPzK+Lqk+Ke6sqHwnrT5zkhmDUI3SMDA4fbIMJ8XLMfIAAACAOf9qSrj7LthgnPNvYuQOcA3RU95zjVAzKJ5z0SFmqvaiehfAh1L+q8rEMlt5vkOGdeLCOd2Ub66WJvcEpXsIB9KjDojo4cQGXC8tAwBQd3iBO3j/2g8KLZCjx4kdKTTYuoGXQIMb30HqjBiy1Q4+T9wpD6hPagygaWcTEhPG0pA= dsa";

    #[test]
    fn parses_accepted_types() {
        for line in [ED25519, ECDSA256, SK_ED25519] {
            let key = GrantKey::parse(line).unwrap();
            assert_eq!(key.to_openssh(), line);
        }
        let key = GrantKey::parse(ED25519).unwrap();
        assert_eq!(key.fingerprint().as_str(), ED25519_FP);
        assert_eq!(key.comment(), "foo@bar.com");
        assert_eq!(key.short_id().len(), 16);
        assert!(key.fingerprint().matches(&ED25519_FP[7..]));
    }

    #[test]
    fn fingerprints_parse_strictly() {
        let key = GrantKey::parse(ED25519).unwrap();
        let fp = key.fingerprint();
        assert_eq!(Fingerprint::parse(fp.as_str()), Ok(fp.clone()));
        let digest = &fp.as_str()[7..];
        for bad in [
            digest.to_owned(),
            format!("SHA256:{digest}="),
            format!("sha256:{digest}"),
            format!("SHA256:{}", &digest[..42]),
            format!("SHA256:{}!", &digest[..42]),
            format!("SHA256:{digest} "),
            format!("MD5:{digest}"),
            // The last character carries 2 unused bits, which must be zero ('B' is 000001).
            format!("SHA256:{}B", &digest[..42]),
        ] {
            assert!(Fingerprint::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refuses_weak_and_unsupported_keys() {
        assert_eq!(
            GrantKey::parse(RSA1024),
            Err(KeyError::WeakRsa { bits: 1024 })
        );
        assert!(matches!(
            GrantKey::parse(DSA),
            Err(KeyError::UnsupportedType { .. })
        ));
        assert_eq!(GrantKey::parse(" \n"), Err(KeyError::Empty));
        assert!(matches!(
            GrantKey::parse("ssh-ed25519 AAAA!!!"),
            Err(KeyError::Unparsable { .. })
        ));
        // The type text must match the type inside the blob.
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(matches!(
            GrantKey::parse(&swapped),
            Err(KeyError::Unparsable { .. })
        ));
    }

    #[test]
    fn refuses_control_characters_anywhere() {
        let with_newline = format!("{ED25519}\nssh-ed25519 AAAA injected");
        assert_eq!(
            GrantKey::parse(&with_newline),
            Err(KeyError::ControlChar { found: '\n' })
        );
        let with_escape = format!("{ED25519}\u{1b}[2J");
        assert!(matches!(
            GrantKey::parse(&with_escape),
            Err(KeyError::ControlChar { .. })
        ));
    }

    #[test]
    fn certificates_are_refused_as_such() {
        // ssh-keygen -s ca -I test -n root id_ed25519.pub: the id_ed25519-cert.pub line.
        let cert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIG9yZ2FuaXplZCBub25jZSBmb3IgdGhlIHRlc3Qgb25seQ== alice@laptop";
        let error = GrantKey::parse(cert).unwrap_err();
        assert_eq!(
            error,
            KeyError::Certificate {
                algorithm: "ssh-ed25519-cert-v01@openssh.com".into()
            }
        );
        let text = error.to_string();
        assert!(
            text.contains("certificate") && text.contains(".pub"),
            "{text}"
        );
        assert!(!text.contains("trailing data"), "{text}");
    }

    #[test]
    fn refuses_invisible_characters_in_the_comment() {
        for c in ['\u{202e}', '\u{2028}', '\u{e0041}', '\u{61c}'] {
            let line = format!("{ED25519}{c}x");
            assert_eq!(
                GrantKey::parse(&line),
                Err(KeyError::ControlChar { found: c })
            );
        }
        assert!(GrantKey::parse(&format!("{ED25519} <R&D>")).is_ok());
    }

    #[test]
    fn counts_modulus_bits() {
        assert_eq!(mpint_bits(&[]), 0);
        assert_eq!(mpint_bits(&[0, 0]), 0);
        assert_eq!(mpint_bits(&[1]), 1);
        assert_eq!(mpint_bits(&[0, 0x80, 0]), 16);
    }
}
