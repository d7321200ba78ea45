//! The SQLite grants cache: the last annotations read from the API, served when the API cannot
//! answer and, within the freshness window, instead of asking it; and the last failure of the
//! API, so that a dead API is not waited for again by every invocation of one login.
//!
//! The file is untrusted input like the API: it is opened without following a symbolic link,
//! then its ownership and mode are checked on what was opened; its `application_id` and schema
//! version must be this command's, and everything read from it is validated again by the same
//! grant parser. A damaged or foreign file is moved aside and a new one made; a file that
//! another process holds locked is left alone (busy is not corrupt).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nodegate_core::AnnotationPrefix;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use crate::clock::BootInstant;
use crate::config::NodeName;
use crate::perms::{self, UnsafePath};
use crate::policy::Stamp;

/// `PRAGMA application_id` of a nodegate grants cache: "NGC1".
pub const APPLICATION_ID: i32 = 0x4E47_4331;
/// `PRAGMA user_version` of the current schema. Version 1 (no boot clock, no failures) is
/// migrated in place: its rows keep serving outages, but are never fresh. Version 2 (no
/// `nodegate-agent` tables) is migrated in place too. A file of a newer version than this
/// command's (a package downgrade) is moved aside like a foreign one: its rows might mean
/// something this command cannot tell.
pub const SCHEMA_VERSION: i32 = 3;
/// Longest cached annotations text accepted, in bytes (a Node's annotations are at most 256 KiB).
const MAX_CACHED_LEN: usize = 1024 * 1024;
/// Longest failure reason kept.
const MAX_REASON_LEN: usize = 2048;

const CREATE_V2_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS node_grants (
      node TEXT NOT NULL,
      prefix TEXT NOT NULL,
      annotations TEXT NOT NULL,
      fetched_at_ms INTEGER NOT NULL,
      boot_id TEXT NOT NULL DEFAULT '',
      boot_ms INTEGER NOT NULL DEFAULT 0,
      credentials TEXT NOT NULL DEFAULT '',
      PRIMARY KEY (node, prefix)
    ) STRICT;
    CREATE TABLE IF NOT EXISTS api_failures (
      node TEXT NOT NULL,
      prefix TEXT NOT NULL,
      failed_at_ms INTEGER NOT NULL,
      boot_id TEXT NOT NULL,
      boot_ms INTEGER NOT NULL,
      credentials TEXT NOT NULL,
      reason TEXT NOT NULL,
      PRIMARY KEY (node, prefix)
    ) STRICT;";

/// Version 3: what `nodegate-agent` keeps. `watch_confirmations` says until when its watch of
/// the Node was known to be live (the `node_grants` row is then what the API holds, as of that
/// moment); `agent_sessions` holds its records of live sessions, so that a restart of the
/// agent forgets none.
const CREATE_V3_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS watch_confirmations (
      node TEXT NOT NULL,
      prefix TEXT NOT NULL,
      confirmed_at_ms INTEGER NOT NULL,
      boot_id TEXT NOT NULL,
      boot_ms INTEGER NOT NULL,
      credentials TEXT NOT NULL,
      PRIMARY KEY (node, prefix)
    ) STRICT;
    CREATE TABLE IF NOT EXISTS agent_sessions (
      node TEXT NOT NULL,
      prefix TEXT NOT NULL,
      records TEXT NOT NULL,
      PRIMARY KEY (node, prefix)
    ) STRICT;";

/// Longest session records text accepted, in bytes.
const MAX_RECORDS_LEN: usize = 4 * 1024 * 1024;

/// What went wrong with the cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The file or its directory could be changed by others, or is a symbolic link.
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
    /// Another process holds the file locked for longer than the busy timeout. The file is left
    /// as it is; this invocation goes on without it.
    #[error(
        "the cache {} is locked by another process (a backup or an open sqlite3 session?); going on without it this time, nothing is lost",
        path.display()
    )]
    Busy {
        /// The file.
        path: PathBuf,
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

/// The cached answer of the API for one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedNode {
    /// Annotation key -> value, under the prefix; validate before use.
    pub annotations: BTreeMap<String, String>,
    /// When the request that read them was sent.
    pub stamp: Stamp,
    /// The credentials that read them (see `identity::credentials_stamp`).
    pub credentials: String,
}

/// A moment at which `nodegate-agent`'s watch of the Node was live: the cached row held
/// everything the API held then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfirmation {
    /// When.
    pub stamp: Stamp,
    /// The credentials the watch ran with.
    pub credentials: String,
}

/// An API failure recorded for one Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedFailure {
    /// When the failed request was sent.
    pub stamp: Stamp,
    /// The credentials it was sent with.
    pub credentials: String,
    /// What failed.
    pub reason: String,
}

/// An open cache.
pub struct Cache {
    conn: Connection,
    path: PathBuf,
    busy: Duration,
    replaced: Vec<CacheError>,
}

enum Verdict {
    Ours { version: i32 },
    Empty,
    Foreign(String),
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn is_damaged(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

impl Cache {
    /// Opens (creating if needed) the cache at `path`, waiting at most `busy` for other
    /// invocations' locks. A damaged or foreign file is moved aside and replaced;
    /// [`Cache::take_replacements`] says so.
    pub fn open(path: &Path, busy: Duration) -> Result<Self, CacheError> {
        let mut replaced = Vec::new();
        let conn = open_connection(path, busy, &mut replaced)?;
        Ok(Self {
            conn,
            path: path.to_owned(),
            busy,
            replaced,
        })
    }

    /// The files moved aside so far (at opening, or later when damage showed), for the log.
    pub fn take_replacements(&mut self) -> Vec<CacheError> {
        std::mem::take(&mut self.replaced)
    }

    fn error(&self, source: rusqlite::Error) -> CacheError {
        if is_busy(&source) {
            CacheError::Busy {
                path: self.path.clone(),
            }
        } else {
            CacheError::Sqlite {
                path: self.path.clone(),
                source,
            }
        }
    }

    /// Runs `op`; when SQLite reports damage (pages the header check at opening cannot see),
    /// moves the file aside, starts a new one and runs `op` once more on it.
    fn repairing<T>(
        &mut self,
        op: impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, CacheError> {
        match op(&self.conn) {
            Err(e) if is_damaged(&e) => {
                let ino = fs::metadata(&self.path).map(|m| m.ino()).ok();
                // Close the damaged file before renaming it; a placeholder holds the slot.
                let placeholder = Connection::open_in_memory().map_err(|e| self.error(e))?;
                drop(std::mem::replace(&mut self.conn, placeholder));
                let note = move_aside(&self.path, ino, format!("damaged ({e})"))?;
                self.replaced.push(note);
                self.conn = open_connection(&self.path, self.busy, &mut self.replaced)?;
                op(&self.conn).map_err(|e| self.error(e))
            }
            other => other.map_err(|e| self.error(e)),
        }
    }

    /// The cached answer for `node` under `prefix`. A row that does not hold a string-to-string
    /// map, or holds an impossible time, is reported as `Ok(None)` and ignored.
    pub fn load(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
    ) -> Result<Option<CachedNode>, CacheError> {
        Ok(self.load_watched(node, prefix)?.map(|(row, _)| row))
    }

    /// The cached answer, as [`Cache::load`], with the last confirmation of the agent's watch
    /// of it, if any: one query, so a login pays nothing for asking.
    pub fn load_watched(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
    ) -> Result<Option<(CachedNode, Option<WatchConfirmation>)>, CacheError> {
        type Row = (
            String,
            i64,
            String,
            i64,
            String,
            Option<(i64, String, i64, String)>,
        );
        let row: Option<Row> = self.repairing(|conn| {
            conn.query_row(
                "SELECT g.annotations, g.fetched_at_ms, g.boot_id, g.boot_ms, g.credentials,
                        w.confirmed_at_ms, w.boot_id, w.boot_ms, w.credentials
                 FROM node_grants g LEFT JOIN watch_confirmations w
                   ON w.node = g.node AND w.prefix = g.prefix
                 WHERE g.node = ?1 AND g.prefix = ?2",
                params![node.as_str(), prefix.as_str()],
                |r| {
                    let confirmation = match r.get::<_, Option<i64>>(5)? {
                        Some(wall_ms) => Some((wall_ms, r.get(6)?, r.get(7)?, r.get(8)?)),
                        None => None,
                    };
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        confirmation,
                    ))
                },
            )
            .optional()
        })?;
        Ok(row.and_then(
            |(text, wall_ms, boot_id, boot_ms, credentials, confirmation)| {
                if text.len() > MAX_CACHED_LEN {
                    return None;
                }
                let annotations: BTreeMap<String, String> = serde_json::from_str(&text).ok()?;
                let row = CachedNode {
                    annotations,
                    stamp: stamp_from_row(wall_ms, boot_id, boot_ms)?,
                    credentials,
                };
                let confirmation =
                    confirmation.and_then(|(wall_ms, boot_id, boot_ms, credentials)| {
                        Some(WatchConfirmation {
                            stamp: stamp_from_row(wall_ms, boot_id, boot_ms)?,
                            credentials,
                        })
                    });
                Some((row, confirmation))
            },
        ))
    }

    /// The one node cached under `prefix`, if exactly one is (a node's cache holds only itself).
    pub fn only_node(&mut self, prefix: &AnnotationPrefix) -> Result<Option<NodeName>, CacheError> {
        let names: Vec<String> = self.repairing(|conn| {
            conn.prepare_cached("SELECT node FROM node_grants WHERE prefix = ?1 LIMIT 2")?
                .query_map(params![prefix.as_str()], |r| r.get(0))?
                .collect()
        })?;
        Ok(match names.as_slice() {
            [one] => NodeName::new(one).ok(),
            _ => None,
        })
    }

    /// Stores what the API said, and forgets any recorded failure. The newest answer wins:
    /// a row is replaced unless it was read by a request sent later on this boot's clock
    /// (another invocation overtook this one). The wall clock plays no part, so a row dated in
    /// the future by a clock step is replaced like any other.
    pub fn store(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        row: &CachedNode,
    ) -> Result<(), CacheError> {
        self.write_row(node, prefix, row, false)
    }

    /// Writes `row` and forgets any recorded failure, in one transaction; a `watched` row (the
    /// agent's) is confirmed with it.
    fn write_row(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        row: &CachedNode,
        watched: bool,
    ) -> Result<(), CacheError> {
        let text = serde_json::to_string(&row.annotations).unwrap_or_else(|_| "{}".into());
        let (boot_id, boot_ms) = boot_columns(row.stamp.boot.as_ref());
        let wall_ms = row.stamp.wall.timestamp_millis();
        // A watch event is newer than any GET sent before it (and a GET that overtakes it is
        // corrected by the next event): it always replaces the row. A GET's answer replaces it
        // unless another invocation stored one it sent later on this boot's clock.
        let upsert = if watched {
            "INSERT OR REPLACE INTO node_grants
               (node, prefix, annotations, fetched_at_ms, boot_id, boot_ms, credentials)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        } else {
            "INSERT INTO node_grants (node, prefix, annotations, fetched_at_ms, boot_id, boot_ms, credentials)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (node, prefix) DO UPDATE SET annotations = excluded.annotations,
                   fetched_at_ms = excluded.fetched_at_ms, boot_id = excluded.boot_id,
                   boot_ms = excluded.boot_ms, credentials = excluded.credentials
                 WHERE excluded.boot_id = '' OR node_grants.boot_id <> excluded.boot_id
                   OR node_grants.boot_ms <= excluded.boot_ms"
        };
        self.repairing(|conn| {
            let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
            tx.execute(
                upsert,
                params![
                    node.as_str(),
                    prefix.as_str(),
                    text,
                    wall_ms,
                    boot_id,
                    boot_ms,
                    row.credentials
                ],
            )?;
            tx.execute(
                "DELETE FROM api_failures WHERE node = ?1 AND prefix = ?2",
                params![node.as_str(), prefix.as_str()],
            )?;
            if watched {
                confirm(
                    &tx,
                    node,
                    prefix,
                    wall_ms,
                    boot_id,
                    boot_ms,
                    &row.credentials,
                )?;
            }
            tx.commit()
        })
    }

    /// Records that the API failed to answer for `node`.
    pub fn record_failure(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        failure: &RecordedFailure,
    ) -> Result<(), CacheError> {
        let Some(boot) = &failure.stamp.boot else {
            // Without a boot clock the failure's age could not be measured: not worth keeping.
            return Ok(());
        };
        let mut reason = failure.reason.clone();
        if reason.len() > MAX_REASON_LEN {
            let mut cut = MAX_REASON_LEN;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let boot_ms = i64::try_from(boot.since_boot_ms).unwrap_or(i64::MAX);
        self.repairing(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO api_failures
                   (node, prefix, failed_at_ms, boot_id, boot_ms, credentials, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    node.as_str(),
                    prefix.as_str(),
                    failure.stamp.wall.timestamp_millis(),
                    boot.boot_id,
                    boot_ms,
                    failure.credentials,
                    reason
                ],
            )
        })?;
        Ok(())
    }

    /// The last recorded API failure for `node`, if any.
    pub fn last_failure(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
    ) -> Result<Option<RecordedFailure>, CacheError> {
        let row = self.repairing(|conn| {
            conn.query_row(
                "SELECT failed_at_ms, boot_id, boot_ms, credentials, reason
                 FROM api_failures WHERE node = ?1 AND prefix = ?2",
                params![node.as_str(), prefix.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
        })?;
        Ok(
            row.and_then(|(wall_ms, boot_id, boot_ms, credentials, reason)| {
                Some(RecordedFailure {
                    stamp: stamp_from_row(wall_ms, boot_id, boot_ms)?,
                    credentials,
                    reason,
                })
            }),
        )
    }
}

impl Cache {
    /// Stores a row read by the agent's watch and confirms it in one transaction, so that a
    /// login never sees a confirmation without the row it confirms. Unlike [`Cache::store`],
    /// the row always replaces the cached one: a watch event is newer than any GET sent before
    /// it, and a GET that overtakes it is corrected by the next event.
    pub fn store_watched(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        row: &CachedNode,
    ) -> Result<(), CacheError> {
        self.write_row(node, prefix, row, true)
    }

    /// Confirms that the cached row is still what the API holds (the watch is live).
    pub fn confirm_watch(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        confirmation: &WatchConfirmation,
    ) -> Result<(), CacheError> {
        let (boot_id, boot_ms) = boot_columns(confirmation.stamp.boot.as_ref());
        let wall_ms = confirmation.stamp.wall.timestamp_millis();
        self.repairing(|conn| {
            confirm(
                conn,
                node,
                prefix,
                wall_ms,
                boot_id,
                boot_ms,
                &confirmation.credentials,
            )
            .map(drop)
        })
    }

    /// Withdraws the confirmation: the watch is no longer live (the agent stops, or lost the
    /// API), so logins go back to asking the API at once instead of after the window.
    pub fn withdraw_watch(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
    ) -> Result<(), CacheError> {
        self.repairing(|conn| {
            conn.execute(
                "DELETE FROM watch_confirmations WHERE node = ?1 AND prefix = ?2",
                params![node.as_str(), prefix.as_str()],
            )
            .map(drop)
        })
    }

    /// Replaces the agent's session records (a JSON text the agent validates when it reads
    /// them back).
    pub fn store_session_records(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
        records: &str,
    ) -> Result<(), CacheError> {
        self.repairing(|conn| {
            conn.execute(
                "INSERT OR REPLACE INTO agent_sessions (node, prefix, records) VALUES (?1, ?2, ?3)",
                params![node.as_str(), prefix.as_str(), records],
            )
            .map(drop)
        })
    }

    /// The agent's session records as stored, if any and not oversized; validate before use.
    pub fn session_records(
        &mut self,
        node: &NodeName,
        prefix: &AnnotationPrefix,
    ) -> Result<Option<String>, CacheError> {
        let text: Option<String> = self.repairing(|conn| {
            conn.query_row(
                "SELECT records FROM agent_sessions WHERE node = ?1 AND prefix = ?2",
                params![node.as_str(), prefix.as_str()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(text.filter(|t| t.len() <= MAX_RECORDS_LEN))
    }
}

fn confirm(
    conn: &Connection,
    node: &NodeName,
    prefix: &AnnotationPrefix,
    wall_ms: i64,
    boot_id: &str,
    boot_ms: i64,
    credentials: &str,
) -> rusqlite::Result<usize> {
    conn.execute(
        "INSERT OR REPLACE INTO watch_confirmations
           (node, prefix, confirmed_at_ms, boot_id, boot_ms, credentials)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            node.as_str(),
            prefix.as_str(),
            wall_ms,
            boot_id,
            boot_ms,
            credentials
        ],
    )
}

fn boot_columns(boot: Option<&BootInstant>) -> (&str, i64) {
    match boot {
        Some(b) => (
            b.boot_id.as_str(),
            i64::try_from(b.since_boot_ms).unwrap_or(i64::MAX),
        ),
        None => ("", 0),
    }
}

fn stamp_from_row(wall_ms: i64, boot_id: String, boot_ms: i64) -> Option<Stamp> {
    let wall = DateTime::from_timestamp_millis(wall_ms)?;
    let boot = match (boot_id.is_empty(), u64::try_from(boot_ms)) {
        (false, Ok(since_boot_ms)) => Some(BootInstant {
            boot_id,
            since_boot_ms,
        }),
        _ => None,
    };
    Some(Stamp { wall, boot })
}

fn open_connection(
    path: &Path,
    busy: Duration,
    replaced: &mut Vec<CacheError>,
) -> Result<Connection, CacheError> {
    let sqlite = |source: rusqlite::Error| {
        if is_busy(&source) {
            CacheError::Busy {
                path: path.to_owned(),
            }
        } else {
            CacheError::Sqlite {
                path: path.to_owned(),
                source,
            }
        }
    };
    for attempt in 0..2 {
        ensure_file(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(sqlite)?;
        conn.busy_timeout(busy).map_err(sqlite)?;
        let why = match verdict(&conn) {
            Ok(Verdict::Ours { version }) if version == SCHEMA_VERSION => return Ok(conn),
            Ok(Verdict::Ours { .. } | Verdict::Empty) => {
                initialise(&conn).map_err(sqlite)?;
                return Ok(conn);
            }
            Ok(Verdict::Foreign(why)) => why,
            Err(e) if is_damaged(&e) => format!("unreadable ({e})"),
            Err(e) => return Err(sqlite(e)),
        };
        if attempt == 1 {
            return Err(CacheError::Sqlite {
                path: path.to_owned(),
                source: rusqlite::Error::InvalidParameterName(why),
            });
        }
        let ino = fs::metadata(path).map(|m| m.ino()).ok();
        drop(conn);
        replaced.push(move_aside(path, ino, why)?);
    }
    unreachable!("the loop returns on its second pass")
}

/// What `check` learns about a cache file without changing it (it may run as another user than
/// sshd's, and must not create or take over the file).
pub fn inspect(path: &Path) -> Result<Inspection, InspectError> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inspection::Missing),
        Err(e) => return Err(InspectError::Io(e)),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(UnsafePath::Symlink {
                path: path.to_owned(),
            }
            .into());
        }
        Ok(_) => {}
    }
    perms::check_trusted_file(path)?;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )?;
    let _ = conn.busy_timeout(Duration::from_secs(2));
    match verdict(&conn)? {
        Verdict::Ours { .. } => {}
        Verdict::Empty => return Ok(Inspection::Empty),
        Verdict::Foreign(why) => return Err(InspectError::Foreign(why)),
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        return Err(InspectError::Damaged(check));
    }
    let has_boot_columns = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('node_grants') WHERE name = 'boot_id'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    let query = if has_boot_columns {
        "SELECT node, prefix, fetched_at_ms, boot_id, boot_ms FROM node_grants ORDER BY node"
    } else {
        "SELECT node, prefix, fetched_at_ms, '', 0 FROM node_grants ORDER BY node"
    };
    let rows: Vec<(String, String, i64, String, i64)> =
        conn.prepare(query).and_then(|mut stmt| {
            stmt.query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect()
        })?;
    let has_confirmations = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'watch_confirmations'",
        [],
        |r| r.get::<_, i64>(0),
    )? > 0;
    let confirmation = |node: &str, prefix: &str| -> Option<Stamp> {
        if !has_confirmations {
            return None;
        }
        conn.query_row(
            "SELECT confirmed_at_ms, boot_id, boot_ms FROM watch_confirmations
             WHERE node = ?1 AND prefix = ?2",
            params![node, prefix],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .ok()
        .and_then(|(wall_ms, boot_id, boot_ms)| stamp_from_row(wall_ms, boot_id, boot_ms))
    };
    let owner = fs::metadata(path).map(|m| m.uid()).unwrap_or(u32::MAX);
    let entries = rows
        .into_iter()
        .map(|(node, prefix, wall_ms, boot_id, boot_ms)| InspectedRow {
            watch_confirmed: confirmation(&node, &prefix),
            node,
            prefix,
            stamp: stamp_from_row(wall_ms, boot_id, boot_ms),
        })
        .collect();
    Ok(Inspection::Healthy { owner, entries })
}

/// Why `check` cannot vouch for a cache file.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Its metadata could not be read.
    #[error("cannot inspect it: {0}")]
    Io(#[source] std::io::Error),
    /// Others could change it, or it is a symbolic link.
    #[error(transparent)]
    Unsafe(#[from] UnsafePath),
    /// SQLite could not read it.
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    /// It is not this command's cache.
    #[error("is {0}; the next login moves it aside and starts a new one")]
    Foreign(String),
    /// SQLite's `quick_check` found damage.
    #[error("fails SQLite's quick_check: {0}; the next login that meets the damage moves it aside")]
    Damaged(String),
}

/// What [`inspect`] found.
#[derive(Debug, Clone)]
pub enum Inspection {
    /// No file yet.
    Missing,
    /// A file without the schema yet.
    Empty,
    /// A healthy cache.
    Healthy {
        /// The file's owner.
        owner: u32,
        /// Its rows.
        entries: Vec<InspectedRow>,
    },
}

/// One row of a cache, as `check` shows it.
#[derive(Debug, Clone)]
pub struct InspectedRow {
    /// The Node.
    pub node: String,
    /// The annotation prefix.
    pub prefix: String,
    /// When it was read; `None` if the row holds an impossible time.
    pub stamp: Option<Stamp>,
    /// When `nodegate-agent` last confirmed its watch of it, if it ever did (and the file has
    /// the table: version 3).
    pub watch_confirmed: Option<Stamp>,
}

/// Opens the file without following a symbolic link (creating it readable and writable by this
/// user only when absent), then checks the ownership and mode of what was opened, of its
/// directory, and of SQLite's side files.
fn ensure_file(path: &Path) -> Result<(), CacheError> {
    let dir = perms::parent_dir(path);
    perms::check_trusted(&dir)?;
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(no_follow_flag())
        .open(path)
        .map_err(|source| {
            if is_symlink(path) {
                CacheError::Unsafe(UnsafePath::Symlink {
                    path: path.to_owned(),
                })
            } else {
                CacheError::Create {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    let meta = file.metadata().map_err(|source| UnsafePath::Io {
        path: path.to_owned(),
        source,
    })?;
    perms::check_trusted_metadata(path, &meta)?;
    for side in side_files(path) {
        match fs::symlink_metadata(&side) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(UnsafePath::Symlink { path: side }.into());
            }
            Ok(meta) => perms::check_trusted_metadata(&side, &meta)?,
            Err(_) => {}
        }
    }
    Ok(())
}

fn no_follow_flag() -> i32 {
    // The flag's value differs between architectures; rustix knows it.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

fn side_files(path: &Path) -> [PathBuf; 2] {
    let with = |suffix: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    [with("-wal"), with("-shm")]
}

/// Reads what the file is in one statement, so one snapshot: another invocation initialising
/// the file at the same moment is seen either not at all or completely, never half-way.
fn verdict(conn: &Connection) -> rusqlite::Result<Verdict> {
    let (id, version, objects, tables): (i32, i32, i64, i64) = conn.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id),
                (SELECT user_version FROM pragma_user_version),
                (SELECT count(*) FROM sqlite_master),
                (SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'node_grants')",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )?;
    if id == APPLICATION_ID {
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Ok(Verdict::Foreign(format!(
                "of schema version {version}, not {SCHEMA_VERSION}"
            )));
        }
        return Ok(if tables == 1 {
            Verdict::Ours { version }
        } else {
            Verdict::Foreign("missing its table".into())
        });
    }
    if id != 0 {
        return Ok(Verdict::Foreign(format!(
            "another program's database (application_id {id:#x})"
        )));
    }
    Ok(if objects == 0 {
        Verdict::Empty
    } else {
        Verdict::Foreign("another program's database (no application_id)".into())
    })
}

/// Creates the schema, or migrates version 1 to it, in one IMMEDIATE transaction: two
/// invocations doing it at once do it once.
fn initialise(conn: &Connection) -> rusqlite::Result<()> {
    // WAL lets parallel logins read while one of them writes; it is remembered in the file.
    let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    let tx = Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    let (id, version): (i32, i32) = tx.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id),
                (SELECT user_version FROM pragma_user_version)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if id == 0 {
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             PRAGMA user_version = {SCHEMA_VERSION};
             {CREATE_V2_TABLES}
             {CREATE_V3_TABLES}"
        ))?;
    } else if id == APPLICATION_ID && version == 1 {
        tx.execute_batch(&format!(
            "ALTER TABLE node_grants ADD COLUMN boot_id TEXT NOT NULL DEFAULT '';
             ALTER TABLE node_grants ADD COLUMN boot_ms INTEGER NOT NULL DEFAULT 0;
             ALTER TABLE node_grants ADD COLUMN credentials TEXT NOT NULL DEFAULT '';
             {CREATE_V2_TABLES}
             {CREATE_V3_TABLES}
             PRAGMA user_version = {SCHEMA_VERSION};"
        ))?;
    } else if id == APPLICATION_ID && version == 2 {
        tx.execute_batch(&format!(
            "{CREATE_V3_TABLES}
             PRAGMA user_version = {SCHEMA_VERSION};"
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
    let current = fs::symlink_metadata(path).map(|m| m.ino()).ok();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct Dir(PathBuf);

    impl Dir {
        fn new(label: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "akc-cache-{label}-{}-{}",
                std::process::id(),
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ));
            fs::create_dir_all(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn node() -> NodeName {
        NodeName::new("n1").unwrap()
    }

    fn confirmation(cache: &mut Cache) -> Option<WatchConfirmation> {
        cache
            .load_watched(&node(), &AnnotationPrefix::default())
            .unwrap()
            .and_then(|(_, confirmation)| confirmation)
    }

    fn row(boot_ms: u64, wall: &str, value: &str) -> CachedNode {
        CachedNode {
            annotations: BTreeMap::from([("ssh.nodegate.dev/g.root.00".into(), value.into())]),
            stamp: Stamp {
                wall: DateTime::parse_from_rfc3339(wall).unwrap().to_utc(),
                boot: Some(BootInstant {
                    boot_id: "b".into(),
                    since_boot_ms: boot_ms,
                }),
            },
            credentials: "c".into(),
        }
    }

    #[test]
    fn the_newest_read_wins_whatever_the_wall_clock_says() {
        let dir = Dir::new("newest");
        let path = dir.0.join("c.sqlite");
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        let p = AnnotationPrefix::default();
        // Dated a year ahead by a wrong wall clock, read at boot time 1000.
        cache
            .store(&node(), &p, &row(1000, "2027-12-01T00:00:00Z", "old"))
            .unwrap();
        // A later read (boot time 2000) with a correct wall clock replaces it.
        cache
            .store(&node(), &p, &row(2000, "2026-12-01T00:00:00Z", "new"))
            .unwrap();
        assert_eq!(
            cache
                .load(&node(), &p)
                .unwrap()
                .unwrap()
                .annotations
                .values()
                .next()
                .unwrap(),
            "new"
        );
        // A read sent earlier on the boot clock but stored later does not.
        cache
            .store(&node(), &p, &row(1500, "2026-12-01T00:00:00Z", "overtaken"))
            .unwrap();
        assert_eq!(
            cache
                .load(&node(), &p)
                .unwrap()
                .unwrap()
                .annotations
                .values()
                .next()
                .unwrap(),
            "new"
        );
    }

    #[test]
    fn failures_are_recorded_and_forgotten_on_the_next_answer() {
        let dir = Dir::new("failures");
        let path = dir.0.join("c.sqlite");
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        let p = AnnotationPrefix::default();
        let failure = RecordedFailure {
            stamp: row(5, "2026-12-01T00:00:00Z", "").stamp,
            credentials: "c".into(),
            reason: "timeout".into(),
        };
        cache.record_failure(&node(), &p, &failure).unwrap();
        assert_eq!(cache.last_failure(&node(), &p).unwrap(), Some(failure));
        cache
            .store(&node(), &p, &row(6, "2026-12-01T00:00:00Z", "v"))
            .unwrap();
        assert_eq!(cache.last_failure(&node(), &p).unwrap(), None);
    }

    #[test]
    fn a_version_1_cache_is_migrated_and_keeps_its_rows() {
        let dir = Dir::new("migrate");
        let path = dir.0.join("c.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 1;
                 CREATE TABLE node_grants (node TEXT NOT NULL, prefix TEXT NOT NULL,
                   annotations TEXT NOT NULL, fetched_at_ms INTEGER NOT NULL,
                   PRIMARY KEY (node, prefix)) STRICT;
                 INSERT INTO node_grants VALUES ('n1', 'ssh.nodegate.dev', '{{\"ssh.nodegate.dev/g.root.00\":\"v\"}}', 1764547200000);"
            ))
            .unwrap();
        }
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        assert!(
            cache.take_replacements().is_empty(),
            "migrated, not replaced"
        );
        let row = cache
            .load(&node(), &AnnotationPrefix::default())
            .unwrap()
            .unwrap();
        assert_eq!(row.stamp.boot, None, "an old row is never fresh");
        assert_eq!(row.annotations.len(), 1);
    }

    #[test]
    fn a_version_2_cache_is_migrated_and_keeps_its_rows() {
        let dir = Dir::new("migrate2");
        let path = dir.0.join("c.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = 2; {CREATE_V2_TABLES}
                 INSERT INTO node_grants VALUES ('n1', 'ssh.nodegate.dev', '{{\"ssh.nodegate.dev/g.root.00\":\"v\"}}', 1764547200000, 'b', 7, 'c');"
            ))
            .unwrap();
        }
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        assert!(
            cache.take_replacements().is_empty(),
            "migrated, not replaced"
        );
        let p = AnnotationPrefix::default();
        assert_eq!(
            cache.load(&node(), &p).unwrap().unwrap().annotations.len(),
            1
        );
        assert_eq!(confirmation(&mut cache), None);
    }

    #[test]
    fn a_watched_row_replaces_any_row_and_is_confirmed_with_it() {
        let dir = Dir::new("watched");
        let path = dir.0.join("c.sqlite");
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        let p = AnnotationPrefix::default();
        cache
            .store(&node(), &p, &row(9000, "2026-12-01T00:00:09Z", "old"))
            .unwrap();
        cache
            .record_failure(
                &node(),
                &p,
                &RecordedFailure {
                    stamp: row(9100, "2026-12-01T00:00:09Z", "").stamp,
                    credentials: "c".into(),
                    reason: "timeout".into(),
                },
            )
            .unwrap();
        // Stamped earlier on the boot clock than the stored GET, yet it wins: it is an event.
        let watched = row(8000, "2026-12-01T00:00:08Z", "new");
        cache.store_watched(&node(), &p, &watched).unwrap();
        assert_eq!(cache.load(&node(), &p).unwrap(), Some(watched.clone()));
        assert_eq!(cache.last_failure(&node(), &p).unwrap(), None);
        let confirmed = confirmation(&mut cache).unwrap();
        assert_eq!(confirmed.stamp, watched.stamp);
        let later = WatchConfirmation {
            stamp: row(8500, "2026-12-01T00:00:08Z", "").stamp,
            credentials: "c".into(),
        };
        cache.confirm_watch(&node(), &p, &later).unwrap();
        assert_eq!(confirmation(&mut cache), Some(later));
        cache.withdraw_watch(&node(), &p).unwrap();
        assert_eq!(confirmation(&mut cache), None);
        assert_eq!(
            cache.load(&node(), &p).unwrap(),
            Some(watched),
            "the row stays"
        );
    }

    #[test]
    fn session_records_are_kept_per_node_and_oversized_ones_ignored() {
        let dir = Dir::new("records");
        let path = dir.0.join("c.sqlite");
        let mut cache = Cache::open(&path, Duration::from_millis(100)).unwrap();
        let p = AnnotationPrefix::default();
        assert_eq!(cache.session_records(&node(), &p).unwrap(), None);
        cache.store_session_records(&node(), &p, "[]").unwrap();
        assert_eq!(
            cache.session_records(&node(), &p).unwrap().as_deref(),
            Some("[]")
        );
        let huge = "x".repeat(MAX_RECORDS_LEN + 1);
        cache.store_session_records(&node(), &p, &huge).unwrap();
        assert_eq!(cache.session_records(&node(), &p).unwrap(), None);
    }

    #[test]
    fn a_symlinked_cache_is_refused_and_its_target_untouched() {
        let dir = Dir::new("symlink");
        let target = dir.0.join("elsewhere");
        fs::write(&target, "precious").unwrap();
        let path = dir.0.join("c.sqlite");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let err = Cache::open(&path, Duration::from_millis(100))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious");
    }
}
