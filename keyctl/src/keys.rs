//! Where the public keys to grant or revoke come from: a .pub file, standard input, or the
//! caller's newest `~/.ssh/id_*.pub` (the one ssh-copy-id would pick).

use std::io::Read as _;
use std::path::{Path, PathBuf};

use nodegate_core::{GrantKey, KeyError};

/// Longest key file read, in bytes: an authorized_keys-style list, not arbitrary data.
const MAX_KEY_FILE: u64 = 1024 * 1024;

/// Why no key could be read.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    /// No `--key` and no `~/.ssh/id_*.pub`.
    #[error(
        "no public key found in {dir}: pass --key FILE (or --key - to read it from standard input), or create one with ssh-keygen -t ed25519"
    )]
    NoDefaultKey {
        /// The directory searched.
        dir: PathBuf,
    },
    /// The home directory is unknown, so there is no default key.
    #[error("HOME is not set, so there is no default key: pass --key FILE")]
    NoHome,
    /// The file could not be read.
    #[error("cannot read the key file {path}: {error}")]
    Read {
        /// The file (`-` for standard input).
        path: PathBuf,
        /// What went wrong (said in the message, so not also a source).
        error: std::io::Error,
    },
    /// The file holds no key.
    #[error("{path} holds no public key (expected a line such as: ssh-ed25519 AAAA... you@host)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is larger than any list of public keys.
    #[error("{path} is larger than {MAX_KEY_FILE} bytes; is it really a public key file?")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not an acceptable public key.
    #[error("{path}, line {line}: {error}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why the key was refused (said in the message, so not also a source).
        error: KeyError,
    },
    /// A private key was given where a public one belongs.
    #[error("{path} is a private key; give the public key ({path}.pub)")]
    PrivateKey {
        /// The file.
        path: PathBuf,
    },
}

/// The keys named by `--key` (a file or `-`), or the default key.
pub fn read_keys(source: Option<&Path>) -> Result<(PathBuf, Vec<GrantKey>), KeySourceError> {
    let path = match source {
        Some(path) => path.to_owned(),
        None => default_key_file()?,
    };
    let text = read_limited(&path)?;
    let keys = parse_key_list(&path, &text)?;
    Ok((path, keys))
}

/// The newest `~/.ssh/id_*.pub`, as ssh-copy-id picks it.
pub fn default_key_file() -> Result<PathBuf, KeySourceError> {
    let home = std::env::var_os("HOME").ok_or(KeySourceError::NoHome)?;
    let dir = PathBuf::from(home).join(".ssh");
    let newest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("id_") && name.ends_with(".pub")
        })
        .filter_map(|entry| Some((entry.metadata().ok()?.modified().ok()?, entry.path())))
        .max();
    newest
        .map(|(_, path)| path)
        .ok_or(KeySourceError::NoDefaultKey { dir })
}

fn read_limited(path: &Path) -> Result<String, KeySourceError> {
    let read_error = |error| KeySourceError::Read {
        path: path.to_owned(),
        error,
    };
    let mut text = String::new();
    let reader: Box<dyn std::io::Read> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(read_error)?)
    };
    reader
        .take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(read_error)?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(KeySourceError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(text)
}

/// Parses one key per line; blank lines and `#` comments are skipped.
pub fn parse_key_list(path: &Path, text: &str) -> Result<Vec<GrantKey>, KeySourceError> {
    if text.contains("PRIVATE KEY-----") {
        return Err(KeySourceError::PrivateKey {
            path: path.to_owned(),
        });
    }
    let mut keys: Vec<GrantKey> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = GrantKey::parse(line).map_err(|error| KeySourceError::Invalid {
            path: path.to_owned(),
            line: index + 1,
            error,
        })?;
        if !keys.iter().any(|k| k.same_key(&key)) {
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(KeySourceError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice@laptop";

    #[test]
    fn reads_lists_skipping_comments_and_duplicates() {
        let text = format!("# mine\n\n{ED25519}\n{ED25519} again\n");
        let keys = parse_key_list(Path::new("k.pub"), &text).unwrap();
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn points_at_the_bad_line() {
        let text = format!("{ED25519}\nssh-ed25519 AAAA-not-base64\n");
        let error = parse_key_list(Path::new("k.pub"), &text).unwrap_err();
        assert!(error.to_string().starts_with("k.pub, line 2: "), "{error}");
    }

    #[test]
    fn errors_say_their_cause_once() {
        let missing = read_keys(Some(Path::new("/nonexistent/k.pub"))).unwrap_err();
        let invalid =
            parse_key_list(Path::new("k.pub"), "ssh-ed25519 AAAA-not-base64").unwrap_err();
        for error in [missing, invalid] {
            assert!(
                std::error::Error::source(&error).is_none(),
                "{error}: the cause is in the message, so it is not also a source"
            );
        }
    }

    #[test]
    fn a_certificate_is_refused_as_a_certificate() {
        let cert = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29t alice@laptop";
        let error = parse_key_list(Path::new("id_ed25519-cert.pub"), cert).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("id_ed25519-cert.pub, line 1: this is an OpenSSH certificate"),
            "{text}"
        );
    }

    #[test]
    fn refuses_private_keys_and_empty_files() {
        let private =
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn...\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(matches!(
            parse_key_list(Path::new("id"), private),
            Err(KeySourceError::PrivateKey { .. })
        ));
        assert!(matches!(
            parse_key_list(Path::new("k.pub"), "# nothing\n"),
            Err(KeySourceError::Empty { .. })
        ));
    }
}
