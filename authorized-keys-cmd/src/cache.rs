//! The SQLite grants cache: the last annotations read from the API, served when the API cannot
//! answer and, within the freshness window, instead of asking it.
//!
//! The file is untrusted input like the API: its ownership and mode are checked before it is
//! opened, its `application_id` and schema version must be this command's, and everything read
//! from it is validated again by the same grant parser. A corrupt or foreign file is moved aside
//! and a new one made.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nodegate_core::AnnotationPrefix;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use crate::config::NodeName;
use crate::perms::{self, UnsafePath};

/// `PRAGMA application_id` of a nodegate grants cache: "NGC1".
pub const APPLICATION_ID: i32 = 0x4E47_4331;
/// `PRAGMA user_version` of the current schema.
pub const SCHEMA_VERSION: i32 = 1;
/// Longest cached annotations text accepted, in bytes (a Node's annotations are at most 256 KiB).
const MAX_CACHED_LEN: usize = 1024 * 1024;
/// A cache row dated further than this into the future is not trusted.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// What went wrong with the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file or its directory could be changed by others.
    #[error("refusing the cache: {0}")]
    Unsafe(#[from] UnsafePath),
    /// The directory is missing or the file cannot be created.
    #[error("cannot create the cache {}: {source}; create its directory, writable by the command's user only", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("cache {}: {source}", path.display())]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// The file is not this command's cache, or is damaged; it was moved aside.
    #[error("the cache {} was {why}; moved it to {} and started a new one", path.display(), aside.display())]
    Replaced {
        /// The file.
        path: PathBuf,
        /// Where the old one went.
        aside: PathBuf,
        /// What was wrong.
        why: String,
    },
}

/// The cached annotations of one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedNode {
    /// Annotation key -> value, under the prefix; validate before use.
    pub annotations: BTreeMap<String, String>,
    /// When they were read from the API.
    pub fetched_at: DateTime<Utc>,
}

impl CachedNode {
    /// How old the entry is at `now` (zero if dated slightly in the future).
    pub fn age(&self, now: DateTime<Utc>) -> Duration {
        (now - self.fetched_at).to_std().unwrap_or_default()
    }
}

/// An open cache.
pub struct Cache {
    conn: Connection,
    path: PathBuf,
}

/// What [`Cache::open`] had to do besides opening.
#[derive(Debug, Default)]
pub struct OpenNotes {
    /// Set when a corrupt or foreign file was moved aside.
    pub replaced: Option<CacheError>,
}

enum Verdict {
    Ours,
    Empty,
    Foreign(String),
}

impl Cache {
    /// Opens (creating if needed) the cache at `path`, waiting at most `busy` for other
    /// invocations' locks. A corrupt or foreign file is moved aside and replaced; `notes` says so.
    pub fn open(path: &Path, busy: Duration) -> Result<(Self, OpenNotes), CacheError> {
        let mut notes = OpenNotes::default();
        for attempt in 0..2 {
            ensure_file(path)?;
            let sqlite = |source| CacheError::Sqlite {
                path: path.to_owned(),
                source,
            };
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(sqlite)?;
            conn.busy_timeout(busy).map_err(sqlite)?;
            let verdict = match verdict(&conn) {
                Ok(v) => v,
                Err(e) => Verdict::Foreign(format!("unreadable ({e})")),
            };
            match verdict {
                Verdict::Ours => return Ok((Self::with(conn, path), notes)),
                Verdict::Empty => {
                    initialise(&conn).map_err(sqlite)?;
                    return Ok((Self::with(conn, path), notes));
                }
                Verdict::Foreign(why) if attempt == 0 => {
                    let ino = fs::metadata(path).map(|m| m.ino()).ok();
                    drop(conn);
                    notes.replaced = Some(move_aside(path, ino, why)?);
                }
                Verdict::Foreign(why) => {
                    return Err(CacheError::Sqlite {
                        path: path.to_owned(),
                        source: rusqlite::Error::InvalidParameterName(why),
                    });
                }
            }
        }
        unreachable!("the loop returns on its second pass")
    }

    fn with(conn: Connection, path: &Path) -> Self {
        Self {
            conn,
            path: path.to_owned(),
        }
    }

    fn sqlite(&self, source: rusqlite::Error) -> CacheError {
        CacheError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The cached annotations of `node` under `prefix`. A row that does not hold a
    /// string-to-string map, or is dated in the future, is reported as `Ok(None)` and ignored.
    pub fn load(
        &self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        now: DateTime<Utc>,
    ) -> Result<Option<CachedNode>, CacheError> {
        let row: Option<(String, i64)> = self
            .conn
            .query_row(
                "SELECT annotations, fetched_at_ms FROM node_grants WHERE node = ?1 AND prefix = ?2",
                params![node.as_str(), prefix.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.sqlite(e))?;
        Ok(row.and_then(|(text, ms)| validate_row(&text, ms, now)))
    }

    /// The one node cached under `prefix`, if exactly one is (a node's cache holds only itself).
    pub fn only_node(&self, prefix: &AnnotationPrefix) -> Result<Option<NodeName>, CacheError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node FROM node_grants WHERE prefix = ?1 LIMIT 2")
            .map_err(|e| self.sqlite(e))?;
        let names: Vec<String> = stmt
            .query_map(params![prefix.as_str()], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(|e| self.sqlite(e))?;
        Ok(match names.as_slice() {
            [one] => NodeName::new(one).ok(),
            _ => None,
        })
    }

    /// Stores what the API said; an older answer never replaces a newer one.
    pub fn store(
        &self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        annotations: &BTreeMap<String, String>,
        fetched_at: DateTime<Utc>,
    ) -> Result<(), CacheError> {
        let text = serde_json::to_string(annotations).unwrap_or_else(|_| "{}".into());
        self.conn
            .execute(
                "INSERT INTO node_grants (node, prefix, annotations, fetched_at_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node, prefix) DO UPDATE SET annotations = excluded.annotations,
                   fetched_at_ms = excluded.fetched_at_ms
                 WHERE excluded.fetched_at_ms >= node_grants.fetched_at_ms",
                params![node.as_str(), prefix.as_str(), text, fetched_at.timestamp_millis()],
            )
            .map_err(|e| self.sqlite(e))?;
        Ok(())
    }
}

/// What `check` learns about a cache file without changing it (it may run as another user than
/// sshd's, and must not create or take over the file).
pub fn inspect(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Ok("does not exist yet (created on the first login)".into());
    }
    perms::check_trusted_file(path).map_err(|e| e.to_string())?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    match verdict(&conn).map_err(|e| e.to_string())? {
        Verdict::Ours => {}
        Verdict::Empty => return Ok("is empty (initialised on the next login)".into()),
        Verdict::Foreign(why) => {
            return Err(format!(
                "is {why}; the next login moves it aside and starts a new one"
            ));
        }
    }
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("fails SQLite's quick_check: {check}"));
    }
    let rows: Vec<(String, String, i64)> = conn
        .prepare("SELECT node, prefix, fetched_at_ms FROM node_grants ORDER BY node")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect()
        })
        .map_err(|e| e.to_string())?;
    let owner = fs::metadata(path).map(|m| m.uid()).unwrap_or(u32::MAX);
    let entries: Vec<String> = rows
        .iter()
        .map(|(node, prefix, ms)| {
            let at = DateTime::from_timestamp_millis(*ms)
                .map_or_else(|| "an invalid time".into(), |t| t.to_rfc3339());
            format!("Node {node} ({prefix}) read at {at}")
        })
        .collect();
    Ok(format!(
        "is healthy, owned by uid {owner}; {}",
        if entries.is_empty() {
            "no entries yet".to_owned()
        } else {
            entries.join("; ")
        }
    ))
}

fn validate_row(text: &str, fetched_at_ms: i64, now: DateTime<Utc>) -> Option<CachedNode> {
    if text.len() > MAX_CACHED_LEN || fetched_at_ms > now.timestamp_millis() + MAX_CLOCK_SKEW_MS {
        return None;
    }
    let annotations: BTreeMap<String, String> = serde_json::from_str(text).ok()?;
    let fetched_at = DateTime::from_timestamp_millis(fetched_at_ms)?;
    Some(CachedNode {
        annotations,
        fetched_at,
    })
}

/// Checks the file's ownership and mode (and its directory's, and SQLite's side files'), creating
/// it readable and writable by this user only when absent.
fn ensure_file(path: &Path) -> Result<(), CacheError> {
    let dir = perms::parent_dir(path);
    perms::check_trusted(&dir)?;
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(CacheError::Create {
                path: path.to_owned(),
                source,
            });
        }
    }
    perms::check_trusted(path)?;
    for side in side_files(path) {
        if side.exists() {
            perms::check_trusted(&side)?;
        }
    }
    Ok(())
}

fn side_files(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm")]
}

fn verdict(conn: &Connection) -> rusqlite::Result<Verdict> {
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if id == APPLICATION_ID {
        if version != SCHEMA_VERSION {
            return Ok(Verdict::Foreign(format!(
                "of schema version {version}, not {SCHEMA_VERSION}"
            )));
        }
        let table: Option<String> = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'node_grants'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        return Ok(match table {
            Some(_) => Verdict::Ours,
            None => Verdict::Foreign("missing its table".into()),
        });
    }
    if id != 0 {
        return Ok(Verdict::Foreign(format!(
            "another program's database (application_id {id:#x})"
        )));
    }
    let objects: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(if objects == 0 {
        Verdict::Empty
    } else {
        Verdict::Foreign("another program's database (no application_id)".into())
    })
}

fn initialise(conn: &Connection) -> rusqlite::Result<()> {
    // WAL lets parallel logins read while one of them writes; it is remembered in the file.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    // IMMEDIATE: two invocations creating the cache at once must not both initialise it.
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let id: i32 = tx.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    if id == 0 {
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};
             CREATE TABLE IF NOT EXISTS node_grants (
               node TEXT NOT NULL,
               prefix TEXT NOT NULL,
               annotations TEXT NOT NULL,
               fetched_at_ms INTEGER NOT NULL,
               PRIMARY KEY (node, prefix)
             ) STRICT;"
        ))?;
    }
    tx.commit()
}

/// Renames the file (and its side files) to `PATH.corrupt-TIME-PID`, unless another invocation
/// already replaced it (`ino` no longer matches).
fn move_aside(path: &Path, ino: Option<u64>, why: String) -> Result<CacheError, CacheError> {
    let suffix = format!(
        ".corrupt-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S"),
        std::process::id()
    );
    let aside = {
        let mut p = path.as_os_str().to_owned();
        p.push(&suffix);
        PathBuf::from(p)
    };
    let current = fs::metadata(path).map(|m| m.ino()).ok();
    if current.is_some() && current == ino {
        fs::rename(path, &aside).map_err(|source| CacheError::Create {
            path: path.to_owned(),
            source,
        })?;
        for side in side_files(path) {
            let mut to = side.as_os_str().to_owned();
            to.push(&suffix);
            let _ = fs::rename(&side, PathBuf::from(to));
        }
    }
    Ok(CacheError::Replaced {
        path: path.to_owned(),
        aside,
        why,
    })
}
