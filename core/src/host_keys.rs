//! A node's SSH host keys, published on its own Node object so that clients can verify the node
//! before the first login (`keyctl known-hosts`, OpenSSH's `KnownHostsCommand`).
//!
//! The format is documented in `docs/host-key-format.md`: one annotation per key algorithm under
//! [`HOST_KEY_PREFIX`], which is never a grant prefix, each holding exactly `TYPE BASE64` (no
//! comment), and optionally a host certificate of the same key under `ALGORITHM-cert`. Everything
//! read from a Node is parsed strictly here: what passes is a [`HostKey`] or a
//! [`HostCertificate`] whose key is one of the published plain keys; anything else under the
//! prefix is an [`InvalidHostKey`], reported and never printed.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg};

use crate::grant::is_forbidden_char;
use crate::node_name::{NodeName, is_dns_subdomain};

/// The annotation prefix of host keys. Fixed: host keys belong to the machine, not to one
/// installation, and a grant prefix may never equal it (see [`crate::AnnotationPrefix::new`]).
pub const HOST_KEY_PREFIX: &str = "host-keys.nodegate.dev";

/// Longest plain host key value, in bytes (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_HOST_KEY_LEN: usize = 4096;

/// Longest host certificate value, in bytes (an RSA key signed by an RSA CA, with principals).
pub const MAX_HOST_CERT_LEN: usize = 16384;

/// Smallest RSA modulus accepted, in bits (what OpenSSH 9 requires by default).
pub const MIN_RSA_BITS: usize = crate::key::MIN_RSA_BITS;

/// The host key algorithms that can be published. OpenSSH's `ssh-keygen -A` makes ed25519,
/// ECDSA P-256 and RSA; P-384 and P-521 are accepted too. DSA (removed from OpenSSH) and
/// security-key types (never host keys) are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostKeyAlgorithm {
    /// `ssh-ed25519`.
    Ed25519,
    /// `ecdsa-sha2-nistp256`.
    EcdsaP256,
    /// `ecdsa-sha2-nistp384`.
    EcdsaP384,
    /// `ecdsa-sha2-nistp521`.
    EcdsaP521,
    /// `ssh-rsa`, at least [`MIN_RSA_BITS`] bits.
    Rsa,
}

impl HostKeyAlgorithm {
    /// Every algorithm, in the order `known_hosts` lines are printed.
    pub const ALL: [HostKeyAlgorithm; 5] = [
        Self::Ed25519,
        Self::EcdsaP256,
        Self::EcdsaP384,
        Self::EcdsaP521,
        Self::Rsa,
    ];

    /// The OpenSSH key type, e.g. `ssh-ed25519`; also the annotation name of the plain key.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ed25519 => "ssh-ed25519",
            Self::EcdsaP256 => "ecdsa-sha2-nistp256",
            Self::EcdsaP384 => "ecdsa-sha2-nistp384",
            Self::EcdsaP521 => "ecdsa-sha2-nistp521",
            Self::Rsa => "ssh-rsa",
        }
    }

    /// The OpenSSH certificate type, e.g. `ssh-ed25519-cert-v01@openssh.com`.
    pub fn certificate_type(self) -> String {
        format!("{}-cert-v01@openssh.com", self.as_str())
    }

    /// The algorithm whose key type is `text`.
    pub fn from_type(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The short name `ssh-keygen` and sshd give the key files: `ed25519`, `ecdsa`, `rsa`
    /// (`/etc/ssh/ssh_host_ed25519_key.pub`); all three ECDSA curves share `ecdsa`.
    pub fn file_stem(self) -> &'static str {
        match self {
            Self::Ed25519 => "ed25519",
            Self::EcdsaP256 | Self::EcdsaP384 | Self::EcdsaP521 => "ecdsa",
            Self::Rsa => "rsa",
        }
    }

    fn of(algorithm: &Algorithm) -> Option<Self> {
        match algorithm {
            Algorithm::Ed25519 => Some(Self::Ed25519),
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            } => Some(Self::EcdsaP256),
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            } => Some(Self::EcdsaP384),
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            } => Some(Self::EcdsaP521),
            Algorithm::Rsa { .. } => Some(Self::Rsa),
            _ => None,
        }
    }
}

impl fmt::Display for HostKeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one annotation under [`HOST_KEY_PREFIX`] holds, told by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostKeyName {
    /// `PREFIX/ALGORITHM`: the plain public key.
    Key(HostKeyAlgorithm),
    /// `PREFIX/ALGORITHM-cert`: a host certificate of that key.
    Certificate(HostKeyAlgorithm),
}

impl HostKeyName {
    /// Parses the part of an annotation key after `PREFIX/`.
    pub fn parse(name: &str) -> Option<Self> {
        if let Some(algorithm) = HostKeyAlgorithm::from_type(name) {
            return Some(Self::Key(algorithm));
        }
        let base = name.strip_suffix("-cert")?;
        HostKeyAlgorithm::from_type(base).map(Self::Certificate)
    }

    /// The name after `PREFIX/`, e.g. `ssh-ed25519` or `ssh-ed25519-cert`.
    pub fn name(self) -> String {
        match self {
            Self::Key(a) => a.as_str().to_owned(),
            Self::Certificate(a) => format!("{}-cert", a.as_str()),
        }
    }

    /// The whole annotation key, e.g. `host-keys.nodegate.dev/ssh-ed25519`.
    pub fn annotation_key(self) -> String {
        format!("{HOST_KEY_PREFIX}/{}", self.name())
    }

    /// The part of `annotation_key` after `PREFIX/`, if it is under [`HOST_KEY_PREFIX`].
    pub fn strip_prefix(annotation_key: &str) -> Option<&str> {
        annotation_key
            .strip_prefix(HOST_KEY_PREFIX)?
            .strip_prefix('/')
    }
}

/// Why a host key, a certificate or an annotation holding one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    /// An annotation under the prefix whose name is no host key's.
    #[error(
        "unknown host key annotation name {name:?}: expected an algorithm (ssh-ed25519, ecdsa-sha2-nistp256/384/521, ssh-rsa), optionally followed by -cert"
    )]
    UnknownName {
        /// The name after `PREFIX/`.
        name: String,
    },
    /// Nothing where the key should be.
    #[error("empty host key")]
    Empty,
    /// Longer than allowed.
    #[error("the host key is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Length found.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control or invisible formatting character.
    #[error("the host key contains U+{:04X}, a control or invisible formatting character", *found as u32)]
    ControlChar {
        /// The first such character.
        found: char,
    },
    /// Not `TYPE BASE64` with one space, nothing before, between or after.
    #[error(
        "a published host key is exactly 'TYPE BASE64': one space, no comment, no other whitespace"
    )]
    NotCanonical,
    /// The text does not decode as an OpenSSH key or certificate.
    #[error("not an OpenSSH {what} ({reason})")]
    Unparsable {
        /// `public key` or `certificate`.
        what: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The key type is not one that can be published.
    #[error(
        "key type {found} is not accepted as a host key; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa (>= {MIN_RSA_BITS} bits)"
    )]
    UnsupportedType {
        /// The type found.
        found: String,
    },
    /// The type does not match the annotation's name.
    #[error("the annotation {name} holds a {found} key")]
    TypeMismatch {
        /// The annotation name.
        name: String,
        /// The type found in the value.
        found: String,
    },
    /// An RSA key below [`MIN_RSA_BITS`].
    #[error("the RSA host key has {bits} bits; at least {MIN_RSA_BITS} are required")]
    WeakRsa {
        /// Its modulus size.
        bits: usize,
    },
    /// A certificate where a plain key belongs.
    #[error("this is a certificate ({found}); the plain host key is published on its own")]
    CertificateAsKey {
        /// The certificate type.
        found: String,
    },
    /// A plain key where a certificate belongs.
    #[error("expected a host certificate (*-cert-v01@openssh.com), found {found}")]
    KeyAsCertificate {
        /// The type found.
        found: String,
    },
    /// A user certificate, not a host certificate.
    #[error("this is a user certificate, not a host certificate (ssh-keygen -h makes those)")]
    UserCertificate,
    /// A certificate of a key that is not the published plain key of its algorithm.
    #[error(
        "the certificate certifies {certified}, which is not the published {algorithm} host key"
    )]
    CertificateKeyMismatch {
        /// The algorithm.
        algorithm: HostKeyAlgorithm,
        /// The fingerprint of the certified key.
        certified: String,
    },
}

fn check_text(text: &str, max: usize) -> Result<(), HostKeyError> {
    if text.is_empty() {
        return Err(HostKeyError::Empty);
    }
    if text.len() > max {
        return Err(HostKeyError::TooLong {
            len: text.len(),
            max,
        });
    }
    if let Some(found) = text.chars().find(|&c| is_forbidden_char(c)) {
        return Err(HostKeyError::ControlChar { found });
    }
    Ok(())
}

/// `TYPE BASE64` of an annotation value, exactly: one ASCII space, base64 characters only.
fn split_canonical(text: &str) -> Result<(&str, &str), HostKeyError> {
    let (kind, data) = text.split_once(' ').ok_or(HostKeyError::NotCanonical)?;
    let base64_char = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=';
    let type_char = |b: u8| b.is_ascii_alphanumeric() || b"-@.".contains(&b);
    if kind.is_empty()
        || data.is_empty()
        || !kind.bytes().all(type_char)
        || !data.bytes().all(base64_char)
    {
        return Err(HostKeyError::NotCanonical);
    }
    Ok((kind, data))
}

/// The type text of a `.pub` line, e.g. `ssh-ed25519` or `ssh-ed25519-cert-v01@openssh.com`.
fn type_text(line: &str) -> &str {
    line.split(' ').next().unwrap_or_default()
}

fn is_certificate_type(text: &str) -> bool {
    text.ends_with("-cert-v01@openssh.com") || text.ends_with("-cert-v00@openssh.com")
}

/// Bit length of a big-endian unsigned integer.
fn mpint_bits(bytes: &[u8]) -> usize {
    match bytes.iter().position(|&b| b != 0) {
        Some(start) => (bytes.len() - start) * 8 - bytes[start].leading_zeros() as usize,
        None => 0,
    }
}

/// The algorithm of `key`, if it may be published.
fn check_key_data(key: &KeyData) -> Result<HostKeyAlgorithm, HostKeyError> {
    let algorithm =
        HostKeyAlgorithm::of(&key.algorithm()).ok_or_else(|| HostKeyError::UnsupportedType {
            found: key.algorithm().to_string(),
        })?;
    if let KeyData::Rsa(rsa) = key {
        let bits = mpint_bits(rsa.n.as_positive_bytes().unwrap_or_default());
        if bits < MIN_RSA_BITS {
            return Err(HostKeyError::WeakRsa { bits });
        }
    }
    Ok(algorithm)
}

/// One validated plain host public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    algorithm: HostKeyAlgorithm,
    key: KeyData,
}

impl HostKey {
    /// Parses a `.pub` file's line, as sshd's `ssh_host_*_key.pub` holds it: `TYPE BASE64
    /// [COMMENT]`, surrounding whitespace allowed; the comment is dropped.
    pub fn from_pub_file(text: &str) -> Result<Self, HostKeyError> {
        let line = text.trim_matches(|c| c == ' ' || c == '\n' || c == '\r');
        check_text(line, MAX_HOST_KEY_LEN)?;
        let kind = type_text(line);
        if is_certificate_type(kind) {
            return Err(HostKeyError::CertificateAsKey { found: kind.into() });
        }
        let key = ssh_key::PublicKey::from_openssh(line).map_err(|e| unparsable_key(kind, &e))?;
        Self::from_key_data(key.key_data().clone())
    }

    /// Parses an annotation value strictly: exactly `TYPE BASE64`, canonically encoded.
    pub fn parse(value: &str) -> Result<Self, HostKeyError> {
        check_text(value, MAX_HOST_KEY_LEN)?;
        let (kind, _) = split_canonical(value)?;
        if is_certificate_type(kind) {
            return Err(HostKeyError::CertificateAsKey { found: kind.into() });
        }
        let key = ssh_key::PublicKey::from_openssh(value).map_err(|e| unparsable_key(kind, &e))?;
        let parsed = Self::from_key_data(key.key_data().clone())?;
        // Only one text per key: no non-canonical base64, no trailing bytes in the blob.
        if parsed.to_openssh() != value {
            return Err(HostKeyError::NotCanonical);
        }
        Ok(parsed)
    }

    fn from_key_data(key: KeyData) -> Result<Self, HostKeyError> {
        let algorithm = check_key_data(&key)?;
        Ok(Self { algorithm, key })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> HostKeyAlgorithm {
        self.algorithm
    }

    /// `TYPE BASE64`, re-encoded from the parsed key: the annotation value.
    pub fn to_openssh(&self) -> String {
        // Encoding a key that was just decoded cannot fail; a failure is a bug in ssh-key.
        ssh_key::PublicKey::from(self.key.clone())
            .to_openssh()
            .expect("a decoded public key re-encodes")
            .trim_end()
            .to_owned()
    }

    /// The OpenSSH SHA-256 fingerprint, as `ssh-keygen -l` and ssh's host key messages show it.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The `known_hosts` line for this key under `host`: `HOST TYPE BASE64`.
    pub fn known_hosts_line(&self, host: &KnownHostsHost) -> String {
        format!("{} {}", host.as_str(), self.to_openssh())
    }
}

fn unparsable_key(kind: &str, e: &ssh_key::Error) -> HostKeyError {
    if kind.starts_with("ssh-dss") || kind.starts_with("sk-") {
        return HostKeyError::UnsupportedType { found: kind.into() };
    }
    HostKeyError::Unparsable {
        what: "public key",
        reason: e.to_string(),
    }
}

/// One validated host certificate (`ssh-keygen -h`): its certified key may be published.
///
/// A certificate is published for tools and people who trust the host CA themselves; it is
/// never a source of trust for `keyctl known-hosts`, which prints plain keys only (see
/// `docs/host-key-format.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCertificate {
    key: HostKey,
    /// `TYPE BASE64`, re-encoded, without the file's comment.
    text: String,
    principals: Vec<String>,
}

impl HostCertificate {
    /// Parses a `-cert.pub` file's line (`ssh_host_ed25519_key-cert.pub`); the comment is dropped.
    pub fn from_cert_file(text: &str) -> Result<Self, HostKeyError> {
        let line = text.trim_matches(|c| c == ' ' || c == '\n' || c == '\r');
        check_text(line, MAX_HOST_CERT_LEN)?;
        Self::decode(line)
    }

    /// Parses an annotation value strictly: exactly `TYPE BASE64`, canonically encoded.
    pub fn parse(value: &str) -> Result<Self, HostKeyError> {
        check_text(value, MAX_HOST_CERT_LEN)?;
        split_canonical(value)?;
        let parsed = Self::decode(value)?;
        if parsed.to_openssh() != value {
            return Err(HostKeyError::NotCanonical);
        }
        Ok(parsed)
    }

    fn decode(line: &str) -> Result<Self, HostKeyError> {
        let mut fields = line.splitn(3, ' ');
        let kind = fields.next().unwrap_or_default();
        let data = fields.next().unwrap_or_default();
        if !is_certificate_type(kind) {
            return Err(HostKeyError::KeyAsCertificate { found: kind.into() });
        }
        let unparsable = |reason: &str| HostKeyError::Unparsable {
            what: "certificate",
            reason: reason.to_owned(),
        };
        let Some(algorithm) = kind
            .strip_suffix("-cert-v01@openssh.com")
            .and_then(HostKeyAlgorithm::from_type)
        else {
            return Err(HostKeyError::UnsupportedType { found: kind.into() });
        };
        let blob = BASE64
            .decode(data)
            .map_err(|e| unparsable(&format!("invalid base64: {e}")))?;
        let cert = CertificateFields::decode(&blob, algorithm)
            .ok_or_else(|| unparsable("truncated or malformed certificate"))?;
        if cert.kind != kind.as_bytes() {
            return Err(unparsable(
                "the type text does not match the certificate's type",
            ));
        }
        if cert.cert_type != CERT_TYPE_HOST {
            return Err(HostKeyError::UserCertificate);
        }
        // The certified key, as a plain key blob: its type, then the same fields.
        let mut plain = Vec::with_capacity(cert.key_fields.len() + 32);
        put_string(&mut plain, algorithm.as_str().as_bytes());
        plain.extend_from_slice(cert.key_fields);
        let key = ssh_key::PublicKey::from_bytes(&plain)
            .map_err(|e| unparsable(&format!("the certified key: {e}")))?;
        let key = HostKey::from_key_data(key.key_data().clone())?;
        if key.algorithm != algorithm {
            return Err(unparsable(
                "the certified key is not of the certificate's type",
            ));
        }
        Ok(Self {
            key,
            text: format!("{kind} {}", BASE64.encode(&blob)),
            principals: cert.principals,
        })
    }

    /// The certified plain key.
    pub fn key(&self) -> &HostKey {
        &self.key
    }

    /// The algorithm of the certified key.
    pub fn algorithm(&self) -> HostKeyAlgorithm {
        self.key.algorithm
    }

    /// The certificate's principals (host names), as signed.
    pub fn principals(&self) -> &[String] {
        &self.principals
    }

    /// `TYPE BASE64`, re-encoded, without the file's comment: the annotation value.
    pub fn to_openssh(&self) -> String {
        self.text.clone()
    }
}

/// `uint32 type` of an OpenSSH host certificate (PROTOCOL.certkeys: 1 is a user certificate).
const CERT_TYPE_HOST: u32 = 2;

/// Standard base64 with padding, as OpenSSH writes keys and certificates; decoding is strict
/// (no whitespace, canonical padding and trailing bits).
const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The fields of an OpenSSH certificate blob (PROTOCOL.certkeys) that matter here. Decoded by
/// hand: ssh-key 0.6 refuses certificates valid "forever" (`valid_before` 2^64-1), which is what
/// `ssh-keygen -s` makes by default. The signature is not checked (see the format).
struct CertificateFields<'b> {
    kind: &'b [u8],
    /// The certified key's fields, as in a plain key blob after its type.
    key_fields: &'b [u8],
    cert_type: u32,
    principals: Vec<String>,
}

impl<'b> CertificateFields<'b> {
    fn decode(blob: &'b [u8], algorithm: HostKeyAlgorithm) -> Option<Self> {
        let mut r = Wire(blob);
        let kind = r.string()?;
        let _nonce = r.string()?;
        let fields_start = blob.len() - r.0.len();
        // ed25519: string pk; ECDSA: string curve, string Q; RSA: mpint e, mpint n.
        let count = if algorithm == HostKeyAlgorithm::Ed25519 {
            1
        } else {
            2
        };
        for _ in 0..count {
            r.string()?;
        }
        let key_fields = &blob[fields_start..blob.len() - r.0.len()];
        let _serial = r.u64()?;
        let cert_type = r.u32()?;
        let _key_id = r.string()?;
        let mut names = Wire(r.string()?);
        let mut principals = Vec::new();
        while !names.0.is_empty() {
            let name = std::str::from_utf8(names.string()?).ok()?;
            principals.push(name.to_owned());
        }
        let _valid_after = r.u64()?;
        let _valid_before = r.u64()?;
        let _critical_options = r.string()?;
        let _extensions = r.string()?;
        let _reserved = r.string()?;
        let _signature_key = r.string()?;
        let _signature = r.string()?;
        // Nothing may follow the signature.
        r.0.is_empty().then_some(Self {
            kind,
            key_fields,
            cert_type,
            principals,
        })
    }
}

/// A reader of the SSH wire encoding (RFC 4251: uint32, uint64, string).
struct Wire<'b>(&'b [u8]);

impl<'b> Wire<'b> {
    fn take(&mut self, n: usize) -> Option<&'b [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<&'b [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("a key field fits in a u32 length");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// An annotation under [`HOST_KEY_PREFIX`] that could not be trusted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidHostKey {
    /// The annotation name after `PREFIX/`.
    pub name: String,
    /// Why it was refused.
    pub error: HostKeyError,
}

/// The host keys found on one Node: valid plain keys, valid certificates of them, and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeHostKeys {
    /// Plain keys by algorithm.
    pub keys: BTreeMap<HostKeyAlgorithm, HostKey>,
    /// Host certificates by the algorithm of their key; each certifies the plain key of
    /// [`Self::keys`] of that algorithm.
    pub certificates: BTreeMap<HostKeyAlgorithm, HostCertificate>,
    /// Annotations under the prefix that did not validate.
    pub invalid: Vec<InvalidHostKey>,
}

/// Something to publish that does not fit the format (two files of one algorithm).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Two plain keys, or two certificates, of one algorithm.
    #[error("two {what} of type {algorithm}; a node publishes one per algorithm")]
    Duplicate {
        /// `host keys` or `host certificates`.
        what: &'static str,
        /// The algorithm.
        algorithm: HostKeyAlgorithm,
    },
    /// A certificate of a key that is not the plain key of its algorithm.
    #[error(transparent)]
    Mismatch(HostKeyError),
}

impl NodeHostKeys {
    /// Scans annotations, keeping those under [`HOST_KEY_PREFIX`]; each is a valid key or
    /// certificate, or reported as invalid. A certificate counts only when it certifies the
    /// published plain key of its algorithm.
    pub fn scan<'a, I>(annotations: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut found = Self::default();
        let mut certificates = Vec::new();
        for (key, value) in annotations {
            let Some(name) = HostKeyName::strip_prefix(key) else {
                continue;
            };
            let invalid = |error| InvalidHostKey {
                name: name.to_owned(),
                error,
            };
            match HostKeyName::parse(name) {
                None => found.invalid.push(invalid(HostKeyError::UnknownName {
                    name: name.to_owned(),
                })),
                Some(HostKeyName::Key(algorithm)) => match HostKey::parse(value) {
                    Ok(k) if k.algorithm == algorithm => {
                        found.keys.insert(algorithm, k);
                    }
                    Ok(k) => found.invalid.push(invalid(HostKeyError::TypeMismatch {
                        name: name.to_owned(),
                        found: k.algorithm.to_string(),
                    })),
                    Err(e) => found.invalid.push(invalid(e)),
                },
                Some(HostKeyName::Certificate(algorithm)) => match HostCertificate::parse(value) {
                    Ok(c) if c.algorithm() == algorithm => certificates.push((name, c)),
                    Ok(c) => found.invalid.push(invalid(HostKeyError::TypeMismatch {
                        name: name.to_owned(),
                        found: c.algorithm().certificate_type(),
                    })),
                    Err(e) => found.invalid.push(invalid(e)),
                },
            }
        }
        for (name, cert) in certificates {
            if found.keys.get(&cert.algorithm()) == Some(cert.key()) {
                found.certificates.insert(cert.algorithm(), cert);
            } else {
                found.invalid.push(InvalidHostKey {
                    name: name.to_owned(),
                    error: HostKeyError::CertificateKeyMismatch {
                        algorithm: cert.algorithm(),
                        certified: cert.key().fingerprint(),
                    },
                });
            }
        }
        found.invalid.sort_by(|a, b| a.name.cmp(&b.name));
        found
    }

    /// What a node publishes for these keys and certificates: a plain key for every algorithm
    /// (taken from its certificate where only that was found), and each certificate, which must
    /// certify the plain key of its algorithm.
    pub fn for_publishing(
        keys: Vec<HostKey>,
        certificates: Vec<HostCertificate>,
    ) -> Result<Self, PublishError> {
        let mut found = Self::default();
        for key in keys {
            let algorithm = key.algorithm;
            if found.keys.insert(algorithm, key).is_some() {
                return Err(PublishError::Duplicate {
                    what: "host keys",
                    algorithm,
                });
            }
        }
        for cert in certificates {
            let algorithm = cert.algorithm();
            let plain = found
                .keys
                .entry(algorithm)
                .or_insert_with(|| cert.key().clone());
            if *plain != *cert.key() {
                return Err(PublishError::Mismatch(
                    HostKeyError::CertificateKeyMismatch {
                        algorithm,
                        certified: cert.key().fingerprint(),
                    },
                ));
            }
            if found.certificates.insert(algorithm, cert).is_some() {
                return Err(PublishError::Duplicate {
                    what: "host certificates",
                    algorithm,
                });
            }
        }
        Ok(found)
    }

    /// Whether no valid host key was found.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The annotations these keys are published as: full annotation key -> value.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let keys = self
            .keys
            .iter()
            .map(|(a, k)| (HostKeyName::Key(*a).annotation_key(), k.to_openssh()));
        let certs = self.certificates.iter().map(|(a, c)| {
            (
                HostKeyName::Certificate(*a).annotation_key(),
                c.to_openssh(),
            )
        });
        keys.chain(certs).collect()
    }

    /// The `known_hosts` lines for `host`: one per plain key, in [`HostKeyAlgorithm::ALL`]
    /// order. Certificates add no line: their key is one of the plain keys (see the format).
    pub fn known_hosts_lines(&self, host: &KnownHostsHost) -> Vec<String> {
        self.keys
            .values()
            .map(|k| k.known_hosts_line(host))
            .collect()
    }
}

/// The host name ssh looks up in `known_hosts` (its `%H`), validated, and the Node it names.
///
/// ssh passes `NAME` for port 22 and `[NAME]:PORT` otherwise, or the `HostKeyAlias` as is;
/// `NAME` is the host as typed (lowercased by ssh). With a domain (`--domain k8s`), a trailing
/// `.k8s` is removed to get the Node name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHostsHost {
    host: String,
    node: NodeName,
}

/// A `%H` that names no node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnownHostsHostError {
    /// Not `NAME` or `[NAME]:PORT` with a valid port.
    #[error(
        "{host:?} is not a host name as ssh passes it (%H): expected NODE, NODE.DOMAIN or [NODE.DOMAIN]:PORT"
    )]
    Malformed {
        /// What was given.
        host: String,
    },
    /// The name is not a node name (after removing the domain).
    #[error(
        "{host:?} does not name a node: {name:?} is not a valid node name (lowercase letters, digits, '-' and '.')"
    )]
    NotANode {
        /// What was given.
        host: String,
        /// The name that would be the node's.
        name: String,
    },
    /// The domain is not a DNS subdomain.
    #[error("--domain {domain:?} is not a DNS domain such as k8s or nodes.example.com")]
    BadDomain {
        /// What was given.
        domain: String,
    },
}

impl KnownHostsHost {
    /// Parses ssh's `%H`; `domain` (without dots around it) is removed from the end of the name
    /// when present.
    pub fn parse(host: &str, domain: Option<&str>) -> Result<Self, KnownHostsHostError> {
        if let Some(d) = domain
            && !is_dns_subdomain(d)
        {
            return Err(KnownHostsHostError::BadDomain { domain: d.into() });
        }
        let malformed = || KnownHostsHostError::Malformed { host: host.into() };
        let name = match host.strip_prefix('[') {
            Some(rest) => {
                let (name, port) = rest.split_once("]:").ok_or_else(malformed)?;
                let port_ok = !port.is_empty()
                    && port.len() <= 5
                    && port.bytes().all(|b| b.is_ascii_digit())
                    && !port.starts_with('0')
                    && port.parse::<u32>().is_ok_and(|p| p <= 65535);
                if !port_ok {
                    return Err(malformed());
                }
                name
            }
            None => host,
        };
        let node = domain
            .and_then(|d| name.strip_suffix(d)?.strip_suffix('.'))
            .unwrap_or(name);
        let node = NodeName::new(node).map_err(|_| KnownHostsHostError::NotANode {
            host: host.into(),
            name: node.into(),
        })?;
        // The host field is printed as given, so it must be a plain name too (no pattern
        // characters, no spaces, no commas): it is, once the node name and domain are valid.
        if !is_dns_subdomain(name) {
            return Err(malformed());
        }
        Ok(Self {
            host: host.to_owned(),
            node,
        })
    }

    /// The host field of the `known_hosts` lines: exactly what ssh passed.
    pub fn as_str(&self) -> &str {
        &self.host
    }

    /// The Node whose keys apply.
    pub fn node(&self) -> &NodeName {
        &self.node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with ssh-keygen 9.2: host keys, a CA, `ssh-keygen -s ca -h -I node1 -n node1,node1.k8s`.
    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4";
    const ED25519_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIM2eEDhkdJw79inkPn0b71G8W7Hj4rKXu7+Zmox87X94AAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4AAAAAAAAAAAAAAACAAAABW5vZGUxAAAAFgAAAAVub2RlMQAAAAlub2RlMS5rOHMAAAAAAAAAAP//////////AAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACDImNHiwESJ+IQyYufoC7htwqkSdXAPRY9wWRDi0A7LoAAAAFMAAAALc3NoLWVkMjU1MTkAAABA4EFyoek8GVpyYo+Gq7KyK7rf7QHX7df4KgnLFvxc6l+fgVvJBkv3sr0LsJYh5VUUJUtZUuhR0vQ3GcTT63RjCA==";
    // The same key, certified as a user key (`ssh-keygen -s ca -I alice -n root`).
    const ED25519_USER_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIH1FO+QMM2rT3QnnV7IuBDLwziXm8wcBVe3ItUWilLXgAAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4AAAAAAAAAAAAAAABAAAABWFsaWNlAAAACAAAAARyb290AAAAAAAAAAD//////////wAAAAAAAACCAAAAFXBlcm1pdC1YMTEtZm9yd2FyZGluZwAAAAAAAAAXcGVybWl0LWFnZW50LWZvcndhcmRpbmcAAAAAAAAAFnBlcm1pdC1wb3J0LWZvcndhcmRpbmcAAAAAAAAACnBlcm1pdC1wdHkAAAAAAAAADnBlcm1pdC11c2VyLXJjAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIMiY0eLARIn4hDJi5+gLuG3CqRJ1cA9Fj3BZEOLQDsugAAAAUwAAAAtzc2gtZWQyNTUxOQAAAECAZCimDV7GftmqmvvUM11QM+zGXqXuFyyNphddPcdQsRr28w/MVX+Sse0UXVm5UBnF4mzwLGa/ls1LvBDWS6wN";
    // Another node's key and its host certificate from the same CA.
    const OTHER_ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8MAQSklsTyobe0K9vcOUQvIY3r3GeulEhLg/24fBw9";
    const OTHER_CERT: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIDz8iN3vqnopcULf1WkRhowEUlGtRx9DvKYAJTEEZDq+AAAAIB8MAQSklsTyobe0K9vcOUQvIY3r3GeulEhLg/24fBw9AAAAAAAAAAAAAAACAAAABW90aGVyAAAACQAAAAVub2RlMgAAAAAAAAAA//////////8AAAAAAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIMiY0eLARIn4hDJi5+gLuG3CqRJ1cA9Fj3BZEOLQDsugAAAAUwAAAAtzc2gtZWQyNTUxOQAAAED2bX79dlK4RPvHPCum1xAIL6Rh6BABDJGjkXlHcoAqjMig2EiMa3kiO5e1BzucDYyFmR/6N/o3j6mJGtcTcPoB";
    const ECDSA256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBD8bcaOR91mG4PZX7wrU6jKAjnIRIHD1JnYaHErjMP0/nvJ5bI+iHwIQk6ZfmLV6uS+ZoLXw/l8kMcYuweQvIX4=";
    const ECDSA384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBEm2Te5rqkj1Vu8i9XDATZ+YehslCFveGc6FR6aMdgh8M9XV77m976/SKqvrX81XklP74xTKn9U/gzPTM1kalbYYosikvLkXjjrvbEMMy1Z8v475mmZygTyzpuWE6Wwc0w==";
    const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCxzXREElKBDLmxiexWAB38clTse6K7H971/zhRFXPWCpuykl7sexOaEsEKJcXPTuT1FuBG99P9A3LyJoA4U3yA5cbJ8iULa5PxpeD4g4IaXMFKvdwtqjVOCeqInYIveSaCilexcvtBkEfPvASeAdjRU/1ixeIwq+oyZRwyOuo6ccSQvEgxGpzn8+SprWJltDD594kUfH7eoREgyFHXWzy0GraZUejzsuNsYWVBz9VCEdz7GEGR2LuNNRud8SVGS0t1fkUyhB1UYABRaMU1YdZAVw/5psAIEgedQWisDOUXJNpFk4IVJJwnxDeIfSaexFJP4oNpUrv5HetgQCnH4DB/";
    const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCgP6DGk7eMNlizgeFQNJ7qdOQw8PggX9g9lkN8aqaZjafTkFWE3QqMVug96NW8bj6aQWLCmU8RJEau0y0i9lzUYe1j+CzevCsOyf46d0vOEW5EA5oYAclYe82GvsUUJjsKuT7p6e+JficnDL733XVmvFrMIDXCycQ0ZSU6/4ejHw==";

    fn scan(entries: &[(&str, &str)]) -> NodeHostKeys {
        NodeHostKeys::scan(entries.iter().copied())
    }

    fn key(name: &str) -> String {
        format!("{HOST_KEY_PREFIX}/{name}")
    }

    #[test]
    fn parses_every_published_type_canonically() {
        for (line, algorithm) in [
            (ED25519, HostKeyAlgorithm::Ed25519),
            (ECDSA256, HostKeyAlgorithm::EcdsaP256),
            (ECDSA384, HostKeyAlgorithm::EcdsaP384),
            (RSA2048, HostKeyAlgorithm::Rsa),
        ] {
            let parsed = HostKey::parse(line).unwrap();
            assert_eq!(parsed.algorithm(), algorithm);
            assert_eq!(parsed.to_openssh(), line);
            assert_eq!(
                HostKey::from_pub_file(&format!("{line} root@vm\n")),
                Ok(parsed)
            );
        }
        assert_eq!(
            HostKey::parse(ED25519).unwrap().fingerprint(),
            "SHA256:fb0m3dfLhlFBY45uWFkcL9TJrfW+eVgpLk2u+eRFPNI"
        );
    }

    #[test]
    fn annotation_values_are_exactly_type_space_base64() {
        for bad in [
            format!("{ED25519} root@vm"),
            format!("{ED25519} "),
            format!(" {ED25519}"),
            ED25519.replacen(' ', "  ", 1),
            ED25519.replacen(' ', "\t", 1),
            format!("{ED25519}\n"),
            ED25519.replacen("ssh-ed25519 ", "", 1),
        ] {
            assert!(HostKey::parse(&bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            HostKey::parse(&format!("{ED25519} root@vm")),
            Err(HostKeyError::NotCanonical)
        );
        // A type text that is not the blob's.
        let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
        assert!(matches!(
            HostKey::parse(&swapped),
            Err(HostKeyError::Unparsable { .. })
        ));
        // Base64 whose unused bits are set ("X4=" -> "X5=") is refused.
        let loose = ECDSA256.replace("IX4=", "IX5=");
        assert_ne!(loose, ECDSA256);
        assert!(HostKey::parse(&loose).is_err(), "{loose}");
        assert_eq!(
            HostKey::parse(&"A".repeat(MAX_HOST_KEY_LEN + 1)),
            Err(HostKeyError::TooLong {
                len: MAX_HOST_KEY_LEN + 1,
                max: MAX_HOST_KEY_LEN
            })
        );
        assert_eq!(HostKey::parse(""), Err(HostKeyError::Empty));
    }

    #[test]
    fn refuses_weak_unsupported_and_invisible() {
        assert_eq!(
            HostKey::parse(RSA1024),
            Err(HostKeyError::WeakRsa { bits: 1024 })
        );
        let sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjZuAAAABHNzaDo=";
        assert!(matches!(
            HostKey::parse(sk),
            Err(HostKeyError::UnsupportedType { .. })
        ));
        for c in ['\u{202e}', '\u{200b}', '\u{1b}', '\u{2028}'] {
            let line = format!("{ED25519}{c}");
            assert_eq!(
                HostKey::parse(&line),
                Err(HostKeyError::ControlChar { found: c })
            );
            let file = format!("{ED25519} root@vm{c}x");
            assert_eq!(
                HostKey::from_pub_file(&file),
                Err(HostKeyError::ControlChar { found: c })
            );
        }
        assert!(matches!(
            HostKey::parse(ED25519_CERT),
            Err(HostKeyError::CertificateAsKey { .. })
        ));
    }

    #[test]
    fn host_certificates_certify_a_plain_key() {
        let cert = HostCertificate::parse(ED25519_CERT).unwrap();
        assert_eq!(cert.algorithm(), HostKeyAlgorithm::Ed25519);
        assert_eq!(cert.key(), &HostKey::parse(ED25519).unwrap());
        assert_eq!(cert.principals(), ["node1", "node1.k8s"]);
        assert_eq!(cert.to_openssh(), ED25519_CERT);
        let from_file = HostCertificate::from_cert_file(&format!("{ED25519_CERT} root@node1\n"));
        assert_eq!(from_file, Ok(cert));
        assert_eq!(
            HostCertificate::parse(ED25519_USER_CERT),
            Err(HostKeyError::UserCertificate)
        );
        assert!(matches!(
            HostCertificate::parse(ED25519),
            Err(HostKeyError::KeyAsCertificate { .. })
        ));
        assert_eq!(
            HostCertificate::parse(&format!("{ED25519_CERT} root@node1")),
            Err(HostKeyError::NotCanonical)
        );
    }

    #[test]
    fn scans_keys_certificates_and_junk() {
        let other = key("ssh-rsa");
        let entries = [
            (key("ssh-ed25519"), ED25519.to_owned()),
            (key("ssh-ed25519-cert"), ED25519_CERT.to_owned()),
            (key("ecdsa-sha2-nistp256"), ECDSA256.to_owned()),
            // An ecdsa P-384 key under the P-256 name... no, under the RSA name.
            (other.clone(), ECDSA384.to_owned()),
            (key("ssh-dss"), "ssh-dss AAAA".to_owned()),
            (key("ecdsa-sha2-nistp256-cert"), OTHER_CERT.to_owned()),
            (
                "ssh.nodegate.dev/g.root.0011223344556677".to_owned(),
                "whatever".to_owned(),
            ),
            ("other.example/ssh-ed25519".to_owned(), ED25519.to_owned()),
        ];
        let found = NodeHostKeys::scan(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(
            found.keys.keys().copied().collect::<Vec<_>>(),
            [HostKeyAlgorithm::Ed25519, HostKeyAlgorithm::EcdsaP256]
        );
        assert_eq!(
            found.certificates.keys().copied().collect::<Vec<_>>(),
            [HostKeyAlgorithm::Ed25519]
        );
        let invalid: Vec<_> = found.invalid.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(invalid, ["ecdsa-sha2-nistp256-cert", "ssh-dss", "ssh-rsa"]);
        assert!(matches!(
            found.invalid[0].error,
            HostKeyError::TypeMismatch { .. }
        ));
        assert!(matches!(
            found.invalid[1].error,
            HostKeyError::UnknownName { .. }
        ));
        assert!(matches!(
            found.invalid[2].error,
            HostKeyError::TypeMismatch { .. }
        ));
    }

    #[test]
    fn a_certificate_of_another_key_is_refused() {
        let found = scan(&[
            (&key("ssh-ed25519"), ED25519),
            (&key("ssh-ed25519-cert"), OTHER_CERT),
        ]);
        assert!(found.certificates.is_empty());
        assert!(matches!(
            found.invalid[0].error,
            HostKeyError::CertificateKeyMismatch { .. }
        ));
        // A certificate without its plain key is refused as well.
        let alone = scan(&[(&key("ssh-ed25519-cert"), ED25519_CERT)]);
        assert!(alone.is_empty() && alone.certificates.is_empty());
        assert_eq!(alone.invalid.len(), 1);
    }

    #[test]
    fn publishing_round_trips_and_fills_in_plain_keys() {
        let cert = HostCertificate::parse(ED25519_CERT).unwrap();
        let rsa = HostKey::parse(RSA2048).unwrap();
        let published = NodeHostKeys::for_publishing(vec![rsa], vec![cert]).unwrap();
        let annotations = published.annotations();
        assert_eq!(
            annotations.keys().map(String::as_str).collect::<Vec<_>>(),
            [
                "host-keys.nodegate.dev/ssh-ed25519",
                "host-keys.nodegate.dev/ssh-ed25519-cert",
                "host-keys.nodegate.dev/ssh-rsa"
            ]
        );
        assert_eq!(annotations[&key("ssh-ed25519")], ED25519);
        let scanned = NodeHostKeys::scan(annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        assert_eq!(scanned, published);

        let two = vec![
            HostKey::parse(ED25519).unwrap(),
            HostKey::parse(OTHER_ED25519).unwrap(),
        ];
        assert!(matches!(
            NodeHostKeys::for_publishing(two, vec![]),
            Err(PublishError::Duplicate { .. })
        ));
        let mismatch = NodeHostKeys::for_publishing(
            vec![HostKey::parse(ED25519).unwrap()],
            vec![HostCertificate::parse(OTHER_CERT).unwrap()],
        );
        assert!(matches!(mismatch, Err(PublishError::Mismatch(_))));
    }

    #[test]
    fn known_hosts_lines_carry_the_host_as_ssh_passed_it() {
        let found = scan(&[(&key("ssh-rsa"), RSA2048), (&key("ssh-ed25519"), ED25519)]);
        let host = KnownHostsHost::parse("[node1.k8s]:2222", Some("k8s")).unwrap();
        assert_eq!(host.node().as_str(), "node1");
        assert_eq!(
            found.known_hosts_lines(&host),
            [
                format!("[node1.k8s]:2222 {ED25519}"),
                format!("[node1.k8s]:2222 {RSA2048}")
            ]
        );
    }

    #[test]
    fn parses_ssh_host_names() {
        let node = |host: &str, domain: Option<&str>| {
            KnownHostsHost::parse(host, domain).map(|h| h.node().as_str().to_owned())
        };
        assert_eq!(node("node1", None).unwrap(), "node1");
        assert_eq!(node("node1", Some("k8s")).unwrap(), "node1");
        assert_eq!(node("node1.k8s", Some("k8s")).unwrap(), "node1");
        assert_eq!(node("node1.k8s", None).unwrap(), "node1.k8s");
        assert_eq!(
            node("ip-10-0-3-17.ec2.internal.k8s", Some("k8s")).unwrap(),
            "ip-10-0-3-17.ec2.internal"
        );
        assert_eq!(node("[node1.k8s]:22", Some("k8s")).unwrap(), "node1");
        assert_eq!(node("node1xk8s", Some("k8s")).unwrap(), "node1xk8s");
        for bad in [
            "",
            "[node1]",
            "[node1]:",
            "[node1]:0",
            "[node1]:022",
            "[node1]:65536",
            "[node1]:22x",
            "node1:22",
            "Node1",
            "*.k8s",
            "node1,node2",
            "node 1",
            "node1\n",
            "[[node1]]:22",
            ".k8s",
        ] {
            assert!(KnownHostsHost::parse(bad, Some("k8s")).is_err(), "{bad:?}");
        }
        assert!(matches!(
            KnownHostsHost::parse("node1", Some(".k8s")),
            Err(KnownHostsHostError::BadDomain { .. })
        ));
    }

    #[test]
    fn names_round_trip() {
        for algorithm in HostKeyAlgorithm::ALL {
            for name in [
                HostKeyName::Key(algorithm),
                HostKeyName::Certificate(algorithm),
            ] {
                let text = name.annotation_key();
                let stripped = HostKeyName::strip_prefix(&text).unwrap();
                assert_eq!(HostKeyName::parse(stripped), Some(name));
                // A Kubernetes qualified name: at most 63 characters.
                assert!(stripped.len() <= 63);
            }
        }
        assert_eq!(HostKeyName::parse("ssh-ed25519-cert-v01@openssh.com"), None);
        assert_eq!(
            HostKeyName::strip_prefix("host-keys.nodegate.devx/ssh-rsa"),
            None
        );
    }
}
