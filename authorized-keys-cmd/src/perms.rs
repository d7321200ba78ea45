//! Ownership and mode checks: which files this command may trust, and which paths sshd accepts.
//!
//! The config and the cache decide which keys may log in, so, as sudo does with sudoers, a file
//! that anyone but root or this command's own user could write is refused.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a file or directory may not be trusted.
#[derive(Debug, thiserror::Error)]
pub enum UnsafePath {
    /// Owned by a user other than root or the command's user.
    #[error(
        "{} is owned by uid {owner}; only root or uid {me} (the user this command runs as) may own it. Fix: chown root {}",
        path.display(), path.display()
    )]
    Owner {
        /// The refused path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The uid this command runs as.
        me: u32,
    },
    /// Writable by its group or by everyone.
    #[error(
        "{} is writable by group or others (mode {mode:04o}); refusing to trust it. Fix: chmod go-w {}",
        path.display(), path.display()
    )]
    Writable {
        /// The refused path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A symbolic link where a file of this command's own must be: writing through it would
    /// write wherever it points.
    #[error(
        "{} is a symbolic link; refusing to follow it. Fix: remove it (the cache is rebuilt from the API)",
        path.display()
    )]
    Symlink {
        /// The refused path.
        path: PathBuf,
    },
    /// The metadata could not be read.
    #[error("cannot inspect {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The uid this process runs as: the owner of `/proc/self` (no `unsafe` getuid needed). When
/// `/proc` is not mounted, `u32::MAX`, so that only root-owned files are trusted.
pub fn effective_uid() -> u32 {
    fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

fn inspect(path: &Path) -> Result<fs::Metadata, UnsafePath> {
    fs::metadata(path).map_err(|source| UnsafePath::Io {
        path: path.to_owned(),
        source,
    })
}

/// Checks that `path` (following symlinks) is owned by root or by this command's user and that
/// neither group nor others may write it.
pub fn check_trusted(path: &Path) -> Result<(), UnsafePath> {
    check_trusted_metadata(path, &inspect(path)?)
}

/// [`check_trusted`] on metadata already read, e.g. from an open file (`File::metadata`), so
/// that what is checked is what was opened.
pub fn check_trusted_metadata(path: &Path, meta: &fs::Metadata) -> Result<(), UnsafePath> {
    let me = effective_uid();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(UnsafePath::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(UnsafePath::Writable {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// Checks a file and the directory holding it with [`check_trusted`]: whoever may write the
/// directory may replace the file.
pub fn check_trusted_file(path: &Path) -> Result<(), UnsafePath> {
    check_trusted(path)?;
    check_trusted(&parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// What sshd demands of an `AuthorizedKeysCommand` (OpenSSH's `safe_path`): the file and every
/// directory above it owned by root and not writable by group or others. Returns every problem.
pub fn sshd_safe_path_problems(path: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if !path.is_absolute() {
        problems.push(format!(
            "{} is not an absolute path; sshd requires one",
            path.display()
        ));
        return problems;
    }
    let mut current = Some(path);
    while let Some(p) = current {
        match fs::metadata(p) {
            Err(e) => problems.push(format!("cannot inspect {}: {e}", p.display())),
            Ok(meta) => {
                if meta.uid() != 0 {
                    problems.push(format!(
                        "{} is owned by uid {}, sshd requires root. Fix: chown root {}",
                        p.display(),
                        meta.uid(),
                        p.display()
                    ));
                }
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o022 != 0 {
                    problems.push(format!(
                        "{} is writable by group or others (mode {mode:04o}), sshd refuses that. Fix: chmod go-w {}",
                        p.display(),
                        p.display()
                    ));
                }
                if p == path && meta.permissions().mode() & 0o111 == 0 {
                    problems.push(format!(
                        "{} is not executable. Fix: chmod 0755 {}",
                        p.display(),
                        p.display()
                    ));
                }
            }
        }
        current = p.parent();
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_group_and_world_writable_files() {
        let dir = std::env::temp_dir().join(format!("akc-perms-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        check_trusted_file(&file).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o664)).unwrap();
        let err = check_trusted_file(&file).unwrap_err();
        assert!(
            matches!(err, UnsafePath::Writable { mode: 0o664, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("chmod go-w"));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            check_trusted_file(&file).is_err(),
            "a world-writable directory"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sshd_safe_path_flags_tmp() {
        let problems = sshd_safe_path_problems(Path::new("/tmp"));
        assert!(
            problems.iter().any(|p| p.contains("writable")),
            "{problems:?}"
        );
        assert!(sshd_safe_path_problems(Path::new("/usr/bin/env")).is_empty());
        assert!(!sshd_safe_path_problems(Path::new("relative")).is_empty());
    }
}
