//! Finding the live sshd sessions of this machine, and how each one authenticated.
//!
//! All IO of discovery is here; everything that interprets what was read (a `stat` line, a
//! process title, an environment, an `ExposeAuthInfo` file, `/etc/passwd`, `authorized_keys`)
//! is a pure function with unit tests.
//!
//! One sshd connection after authentication is, on every OpenSSH since privilege separation
//! became mandatory (7.5), two processes and the session's own below them:
//!
//! ```text
//! sshd: alice [priv]          root, the privileged monitor (9.8+: `sshd-session: alice [priv]`)
//!  \_ sshd: alice@pts/0       the unprivileged post-auth child, uid = alice (`alice@notty`)
//!      \_ -bash               the session: SSH_USER_AUTH=/tmp/sshauth.XXXXXXXXXXXXXXX,
//!                             SSH_CONNECTION="client_ip client_port server_ip server_port"
//! ```
//!
//! A root login has no post-auth child: sshd keeps no privilege separation for uid 0
//! (`privsep_postauth`, "root login"), so the connection's own process, below the listener,
//! is the session's, as seen with OpenSSH 9.2 (Debian 12):
//!
//! ```text
//! sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups
//!  \_ sshd: root@pts/0       uid 0: monitor and child at once (`root@notty`; `root` for ssh -N)
//!      \_ sleep 600
//! ```
//!
//! (Before authentication: `sshd: [accepted]` and `sshd: [net]`, `sshd: USER [preauth]`; OpenSSH
//! 10's `sshd-auth` exists only then; none of these is ever taken for a session.) With
//! `ExposeAuthInfo yes`, the post-auth child writes one line per completed authentication method
//! to a `mkstemp` file in its `/tmp` (OpenSSH's `auth2_update_session_info`:
//! `METHOD[/SUBMETHOD][ KEY][ INFO]\n`, e.g. `publickey ssh-ed25519 AAAA...`, with an sk key
//! `publickey sk-ssh-ed25519@openssh.com AAAA... signature count = 5`, `password`,
//! `keyboard-interactive/pam`) and names it in its session processes' environment.
//!
//! That file and those environments belong to the login user, who may rewrite them. So:
//! processes are identified by pid and start time; the file is read through the post-auth
//! child's own root (`/proc/CHILD/root`), only at the exact path sshd makes, without following a
//! symbolic link, only when it is a regular file of the login user (or root) whose last change
//! (ctime, which no user can set) falls where sshd's own write does, after the child started
//! and before its first session process did: a file rewritten later (to claim `password`, say)
//! is reported, never believed (a command rewriting it within a second of starting is not
//! caught: the starts are known to the second). The caller
//! records what it attributed at first sight (see `enforce`), so later changes cannot undo an
//! attribution either. Every session that cannot be read this way is returned as
//! [`Unattributable`] with the reason, and is never acted on.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use nodegate_core::{GrantKey, KeyError};
use serde::{Deserialize, Serialize};

/// The path prefix of sshd's `ExposeAuthInfo` file (`session.c`: `/tmp/sshauth.XXXXXXXXXXXXXXX`).
pub const AUTH_FILE_PREFIX: &str = "/tmp/sshauth.";

/// How many random characters `mkstemp` puts after [`AUTH_FILE_PREFIX`].
const AUTH_FILE_RANDOM_LEN: usize = 15;

/// Largest `ExposeAuthInfo` file read: a few lines of keys (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_AUTH_FILE_LEN: u64 = 64 * 1024;

/// Largest `authorized_keys` file read.
pub const MAX_AUTHORIZED_KEYS_LEN: u64 = 1024 * 1024;

/// Largest `/proc/PID/environ` read.
const MAX_ENVIRON_LEN: u64 = 256 * 1024;

/// How far a process start, dated from the boot time in `/proc/stat` (whole seconds) and clock
/// ticks, may be off the auth file's change time, which the kernel keeps to the nanosecond.
pub const AUTH_FILE_SLACK: Duration = Duration::from_secs(2);

/// The files sshd reads by default (`AuthorizedKeysFile .ssh/authorized_keys .ssh/authorized_keys2`),
/// relative to the login user's home.
pub const AUTHORIZED_KEYS_FILES: [&str; 2] = [".ssh/authorized_keys", ".ssh/authorized_keys2"];

/// The names sshd's per-connection processes run under (`comm` and the executable's file name).
const SSHD_PROGRAMS: [&str; 2] = ["sshd", "sshd-session"];

/// Major device numbers of Unix98 pseudo-terminal slaves (`/dev/pts/N`).
const PTS_MAJORS: std::ops::RangeInclusive<u32> = 136..=143;

/// One process, named so that a reused pid is never taken for it: pid and start time (clock
/// ticks after boot, field 22 of `/proc/PID/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcId {
    /// The process id.
    pub pid: i32,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
}

/// The two sshd processes of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionIds {
    /// The privileged monitor (`sshd: USER [priv]`, root): SIGTERM to it ends the connection.
    pub monitor: ProcId,
    /// The unprivileged post-auth child (uid = the login user).
    pub child: ProcId,
}

/// A pseudo-terminal of a session, `/dev/pts/INDEX`, with the device numbers found in the
/// `tty_nr` of its processes (checked again on the opened device before writing to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tty {
    /// N in `/dev/pts/N`.
    pub index: u32,
    /// The device's major number.
    pub major: u32,
    /// The device's minor number.
    pub minor: u32,
}

impl Tty {
    /// The pseudo-terminal with the kernel's encoded device number `tty_nr`, if it is one.
    pub fn from_tty_nr(tty_nr: u64) -> Option<Tty> {
        // The kernel's new_encode_dev: minor bits 0-7 and 20-31, major bits 8-19.
        let major = u32::try_from((tty_nr >> 8) & 0xfff).ok()?;
        let minor = u32::try_from((tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)).ok()?;
        if !PTS_MAJORS.contains(&major) {
            return None;
        }
        Some(Tty {
            index: (major - PTS_MAJORS.start()) * 256 + minor,
            major,
            minor,
        })
    }

    /// `/dev/pts/INDEX`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/pts/{}", self.index))
    }
}

/// One completed authentication method of a session, from its `ExposeAuthInfo` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethod {
    /// `publickey` with a key a grant can hold.
    Publickey {
        /// The key.
        key: GrantKey,
        /// Whether the login user's own `authorized_keys` file holds it too: then sshd may have
        /// accepted it from there, and the session is not the grant's to end.
        in_authorized_keys: bool,
    },
    /// Any other method, or `publickey` with a key no grant can hold (a certificate, DSA);
    /// e.g. `password`, `keyboard-interactive/pam`, `publickey (ssh-ed25519-cert-v01@openssh.com)`.
    Other(String),
}

/// A live sshd session, attributed to how it authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSession {
    /// Its sshd processes.
    pub ids: SessionIds,
    /// The login user's uid (the post-auth child's).
    pub uid: u32,
    /// The login user's name, from `/etc/passwd` (and equal to the one in the process titles).
    pub user: String,
    /// Every method it authenticated with, in order.
    pub methods: Vec<AuthMethod>,
    /// The client's address and port (`SSH_CONNECTION`), when the environment holds a valid one.
    pub source: Option<SocketAddr>,
    /// Its pseudo-terminals (none for `ssh host command` without `-t`).
    pub ttys: Vec<Tty>,
    /// Its session processes (everything below the post-auth child): ending the connection
    /// hangs up a terminal's, but a command without one would outlive it.
    pub processes: Vec<ProcId>,
    /// When the connection was authenticated (the monitor's start; wall clock).
    pub started_at: DateTime<Utc>,
}

/// An sshd session found but not attributable to how it authenticated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unattributable {
    /// The monitor.
    pub monitor: ProcId,
    /// The post-auth child, when there is exactly one.
    pub child: Option<ProcId>,
    /// The login user's name, when known.
    pub user: Option<String>,
    /// Its pseudo-terminals.
    pub ttys: Vec<Tty>,
    /// Its session processes.
    pub processes: Vec<ProcId>,
    /// Why it cannot be attributed.
    pub reason: String,
}

/// Everything one look at the process table found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Sessions with a trustworthy record of how they authenticated.
    pub sessions: Vec<SshSession>,
    /// Sessions without one (e.g. `ssh -N`: no session process, hence no `SSH_USER_AUTH`).
    pub unattributable: Vec<Unattributable>,
}

impl Scan {
    /// Whether the connection whose monitor is `monitor` is still there, attributable or not.
    pub fn has_monitor(&self, monitor: &ProcId) -> bool {
        self.sessions.iter().any(|s| &s.ids.monitor == monitor)
            || self.unattributable.iter().any(|u| &u.monitor == monitor)
    }
}

/// One line of `/etc/passwd`: what the scan needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// The user name.
    pub name: String,
    /// The home directory.
    pub home: PathBuf,
}

/// The users of this machine by uid, from `/etc/passwd`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Passwd {
    by_uid: BTreeMap<u32, PasswdEntry>,
}

impl Passwd {
    /// Reads `/etc/passwd` (the agent runs in the host's mount namespace; the users of sessions
    /// are the host's). Users from NSS sources other than files (LDAP, sssd) are not found:
    /// their sessions are unattributable.
    pub fn read_system() -> std::io::Result<Passwd> {
        Ok(Passwd::parse(&fs::read_to_string("/etc/passwd")?))
    }

    /// Parses `/etc/passwd` text; malformed lines are skipped, and for a uid listed twice the
    /// first line wins, as for `getpwuid`.
    pub fn parse(text: &str) -> Passwd {
        let mut by_uid = BTreeMap::new();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let [name, _, uid, _, _, home, _] = fields[..] else {
                continue;
            };
            let Ok(uid) = uid.parse::<u32>() else {
                continue;
            };
            if name.is_empty() || home.is_empty() {
                continue;
            }
            by_uid.entry(uid).or_insert_with(|| PasswdEntry {
                name: name.to_owned(),
                home: PathBuf::from(home),
            });
        }
        Passwd { by_uid }
    }

    /// The user with `uid`.
    pub fn by_uid(&self, uid: u32) -> Option<&PasswdEntry> {
        self.by_uid.get(&uid)
    }
}

/// What `/proc/PID/stat` tells about a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The process id.
    pub pid: i32,
    /// The command name (at most 15 bytes; may hold spaces and parentheses).
    pub comm: String,
    /// The parent's pid.
    pub ppid: i32,
    /// The controlling terminal, as the kernel encodes device numbers (0: none).
    pub tty_nr: u64,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Parses a `/proc/PID/stat` line. The command name is between the first `(` and the LAST `)`,
/// since it may itself contain `) (`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    if close < open {
        return None;
    }
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_owned();
    // Fields 3 onwards: state ppid pgrp session tty_nr ... starttime (field 22).
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| rest.get(n - 3).copied();
    let ppid = field(4)?.parse().ok()?;
    // tty_nr is printed as a signed int.
    let tty_nr = field(7)?.parse::<i64>().ok()?;
    let start_ticks = field(22)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        ppid,
        tty_nr: u64::from(u32::from_ne_bytes(
            i32::try_from(tty_nr).ok()?.to_ne_bytes(),
        )),
        start_ticks,
    })
}

/// The real, effective, saved and filesystem uids from `/proc/PID/status`.
pub fn parse_status_uids(text: &str) -> Option<[u32; 4]> {
    let line = text.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let ids: Vec<u32> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    ids.try_into().ok()
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
pub fn parse_btime(text: &str) -> Option<i64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A process title as sshd's `setproctitle` leaves it in `/proc/PID/cmdline`: up to the first
/// NUL, trailing padding removed.
pub fn parse_title(cmdline: &[u8]) -> String {
    let end = cmdline
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(cmdline.len());
    String::from_utf8_lossy(&cmdline[..end])
        .trim_end()
        .to_owned()
}

/// The login user in a monitor's title, `sshd: USER [priv]` or `sshd-session: USER [priv]`.
pub fn monitor_title_user(title: &str) -> Option<&str> {
    let rest = SSHD_PROGRAMS
        .iter()
        .find_map(|p| title.strip_prefix(p)?.strip_prefix(": "))?;
    let user = rest.strip_suffix(" [priv]")?;
    (!user.is_empty() && !user.contains(char::is_whitespace)).then_some(user)
}

/// Whether `title` is a post-auth child's for `user`: `sshd: USER@pts/0`, `sshd: USER@notty`,
/// or, before any session (`ssh -N`), `sshd: USER`.
pub fn is_child_title(title: &str, user: &str) -> bool {
    SSHD_PROGRAMS.iter().any(|p| {
        title
            .strip_prefix(p)
            .and_then(|r| r.strip_prefix(": "))
            .and_then(|r| r.strip_prefix(user))
            .is_some_and(|r| r.is_empty() || r.starts_with('@'))
    })
}

/// Whether an executable's path (`/proc/PID/exe`) is sshd's: its file name is `sshd` or
/// `sshd-session`, also after the package was upgraded under the running process (`(deleted)`).
pub fn is_sshd_exe(target: &Path) -> bool {
    let text = target.to_string_lossy();
    let text = text.strip_suffix(" (deleted)").unwrap_or(&text);
    let name = text.rsplit('/').next().unwrap_or_default();
    SSHD_PROGRAMS.contains(&name)
}

/// The session variables of one process's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionEnv {
    /// `SSH_USER_AUTH`.
    pub user_auth: Option<String>,
    /// `SSH_CONNECTION`.
    pub connection: Option<String>,
}

/// Reads `SSH_USER_AUTH` and `SSH_CONNECTION` from a NUL-separated environment.
pub fn parse_environ(environ: &[u8]) -> SessionEnv {
    let mut env = SessionEnv::default();
    for entry in environ.split(|&b| b == 0) {
        let Ok(entry) = std::str::from_utf8(entry) else {
            continue;
        };
        if let Some(v) = entry.strip_prefix("SSH_USER_AUTH=") {
            env.user_auth.get_or_insert_with(|| v.to_owned());
        } else if let Some(v) = entry.strip_prefix("SSH_CONNECTION=") {
            env.connection.get_or_insert_with(|| v.to_owned());
        }
    }
    env
}

/// The client address in `SSH_CONNECTION` (`client_ip client_port server_ip server_port`), when
/// all four parts are valid.
pub fn parse_ssh_connection(text: &str) -> Option<SocketAddr> {
    let parts: Vec<&str> = text.split(' ').collect();
    let [client_ip, client_port, server_ip, server_port] = parts[..] else {
        return None;
    };
    server_ip.parse::<IpAddr>().ok()?;
    server_port.parse::<u16>().ok()?;
    Some(SocketAddr::new(
        client_ip.parse().ok()?,
        client_port.parse().ok()?,
    ))
}

/// Whether `path` is exactly what sshd's `mkstemp("/tmp/sshauth.XXXXXXXXXXXXXXX")` makes.
pub fn is_auth_file_path(path: &str) -> bool {
    path.strip_prefix(AUTH_FILE_PREFIX).is_some_and(|random| {
        random.len() == AUTH_FILE_RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// Parses an `ExposeAuthInfo` file: one `METHOD[/SUBMETHOD][ KEY][ INFO]` line per completed
/// method, each ended by `\n`. A `publickey` key is parsed from its `TYPE BASE64` only (the
/// rest is sshd's INFO, e.g. an sk key's signature count). Anything sshd does not write (no
/// line, a line without its `\n`, an unknown character in a method name, a key that does not
/// parse) makes the whole file malformed.
pub fn parse_auth_info(text: &str) -> Result<Vec<AuthMethod>, String> {
    let Some(body) = text.strip_suffix('\n') else {
        return Err("the last line does not end with a newline".into());
    };
    if let Some(c) = body.chars().find(|&c| c.is_control() && c != '\n') {
        return Err(format!("control character U+{:04X}", u32::from(c)));
    }
    let mut methods = Vec::new();
    for line in body.split('\n') {
        let (method, rest) = line.split_once(' ').unwrap_or((line, ""));
        let method_ok = !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-/@._".contains(&b));
        if !method_ok {
            return Err(format!("bad method name in line {line:?}"));
        }
        if method != "publickey" {
            methods.push(AuthMethod::Other(method.to_owned()));
            continue;
        }
        let mut words = rest.split(' ');
        let (Some(key_type), Some(blob)) = (words.next(), words.next()) else {
            return Err(format!("publickey line without a key: {line:?}"));
        };
        match GrantKey::parse(&format!("{key_type} {blob}")) {
            Ok(key) => methods.push(AuthMethod::Publickey {
                key,
                in_authorized_keys: false,
            }),
            Err(
                KeyError::Certificate { .. }
                | KeyError::UnsupportedType { .. }
                | KeyError::WeakRsa { .. },
            ) => methods.push(AuthMethod::Other(format!("publickey ({key_type})"))),
            Err(e) => return Err(format!("publickey line with a bad key: {e}")),
        }
    }
    Ok(methods)
}

/// The keys in an `authorized_keys` file, whatever options precede them. Lines are tried word
/// by word for `TYPE BASE64`, so a key is found even after quoted options holding spaces; a
/// key only mentioned inside an option counts too, which errs on the side of leaving a session
/// alone.
pub fn parse_authorized_keys(text: &str) -> Vec<GrantKey> {
    let mut keys = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            // Options may end right before the type: `command="x" ssh-ed25519` splits fine;
            // `no-pty,ssh-ed25519` is not sshd syntax either.
            if let Ok(key) = GrantKey::parse(&format!("{} {}", pair[0], pair[1])) {
                keys.push(key);
                break;
            }
        }
    }
    keys
}

/// Whether the auth file's last change at `changed` is sshd's own write: after the post-auth
/// child (for root, the connection's process) started, and before it started the first session
/// process (`do_authenticated` writes the file before the server loop opens any session). Both
/// starts are known to a second only ([`AUTH_FILE_SLACK`]).
pub fn auth_file_written_at_login(
    changed: DateTime<Utc>,
    child_started: DateTime<Utc>,
    first_session_process: DateTime<Utc>,
) -> Result<(), String> {
    let slack = chrono::Duration::from_std(AUTH_FILE_SLACK).unwrap_or_default();
    if changed < child_started - slack {
        return Err(format!(
            "the auth file was last changed at {changed}, before its sshd process started at {child_started}: not sshd's, not trusted"
        ));
    }
    if changed > first_session_process + slack {
        return Err(format!(
            "the auth file was last changed at {changed}, after the session's first process started at {first_session_process}: rewritten since, not trusted"
        ));
    }
    Ok(())
}

/// Wall-clock time of a process start.
fn start_time(btime: i64, start_ticks: u64, ticks_per_second: u64) -> DateTime<Utc> {
    let ticks_per_second = ticks_per_second.max(1);
    let secs = i64::try_from(start_ticks / ticks_per_second).unwrap_or(i64::MAX / 2);
    let nanos = (start_ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second;
    DateTime::from_timestamp(
        btime.saturating_add(secs),
        u32::try_from(nanos).unwrap_or(0),
    )
    .unwrap_or_default()
}

/// One process as read from the process table.
#[derive(Debug, Clone)]
struct Proc {
    stat: Stat,
    uids: [u32; 4],
}

impl Proc {
    fn id(&self) -> ProcId {
        ProcId {
            pid: self.stat.pid,
            start_ticks: self.stat.start_ticks,
        }
    }
}

/// Reads a file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = fs::File::open(path).ok()?;
    let mut out = Vec::new();
    file.take(limit).read_to_end(&mut out).ok()?;
    Some(out)
}

fn read_proc(proc_root: &Path, pid: i32) -> Option<Proc> {
    let dir = proc_root.join(pid.to_string());
    let stat = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    let uids = parse_status_uids(&fs::read_to_string(dir.join("status")).ok()?)?;
    (stat.pid == pid).then_some(Proc { stat, uids })
}

/// Reads what only sshd's processes need: title and executable. Re-reads `stat` afterwards and
/// gives nothing if the pid now names another process (it exited and the pid was reused while
/// we read).
fn read_title_and_exe(proc_root: &Path, proc: &Proc) -> Option<(String, PathBuf)> {
    let dir = proc_root.join(proc.stat.pid.to_string());
    let title = parse_title(&read_limited(&dir.join("cmdline"), 4096)?);
    let exe = fs::read_link(dir.join("exe")).ok()?;
    let again = parse_stat(&fs::read_to_string(dir.join("stat")).ok()?)?;
    (again.start_ticks == proc.stat.start_ticks).then_some((title, exe))
}

/// Reads one session's auth file, through the post-auth child's root, with every check the
/// module doc names.
fn read_auth_file(
    proc_root: &Path,
    child: &Proc,
    (child_started, first_session_process): (DateTime<Utc>, DateTime<Utc>),
    path: &str,
) -> Result<String, String> {
    if !is_auth_file_path(path) {
        return Err(format!(
            "SSH_USER_AUTH={path:?} is not a path sshd makes ({AUTH_FILE_PREFIX} and 15 characters)"
        ));
    }
    let full = proc_root
        .join(child.stat.pid.to_string())
        .join("root")
        .join(path.trim_start_matches('/'));
    let no_follow = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(no_follow.bits()).unwrap_or(0))
        .open(&full)
        .map_err(|e| format!("cannot open the auth file {path}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot inspect the auth file {path}: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("the auth file {path} is not a regular file"));
    }
    let uid = child.uids[0];
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(format!(
            "the auth file {path} is owned by uid {}, not by the session's uid {uid} or root",
            meta.uid()
        ));
    }
    if meta.len() > MAX_AUTH_FILE_LEN {
        return Err(format!(
            "the auth file {path} is {} bytes long; sshd writes a few lines",
            meta.len()
        ));
    }
    let changed =
        DateTime::from_timestamp(meta.ctime(), u32::try_from(meta.ctime_nsec()).unwrap_or(0))
            .unwrap_or_default();
    auth_file_written_at_login(changed, child_started, first_session_process)?;
    let mut text = String::new();
    file.take(MAX_AUTH_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read the auth file {path}: {e}"))?;
    Ok(text)
}

/// The keys in the login user's `authorized_keys` files, read through the session's root.
fn authorized_keys_of(proc_root: &Path, child_pid: i32, home: &Path) -> Vec<GrantKey> {
    let root = proc_root.join(child_pid.to_string()).join("root");
    let home = home.strip_prefix("/").unwrap_or(home);
    let mut keys = Vec::new();
    for name in AUTHORIZED_KEYS_FILES {
        let path = root.join(home).join(name);
        // Non-blocking, so that a FIFO put there cannot stall the agent; regular files only.
        let Ok(file) = fs::OpenOptions::new()
            .read(true)
            .custom_flags(i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0))
            .open(&path)
        else {
            continue;
        };
        if !file.metadata().is_ok_and(|m| m.file_type().is_file()) {
            continue;
        }
        let mut text = String::new();
        if file
            .take(MAX_AUTHORIZED_KEYS_LEN)
            .read_to_string(&mut text)
            .is_ok()
        {
            keys.extend(parse_authorized_keys(&text));
        }
    }
    keys
}

/// The process table, as read once.
struct Table {
    procs: BTreeMap<i32, Proc>,
    children: BTreeMap<i32, Vec<i32>>,
    btime: i64,
    ticks_per_second: u64,
}

impl Table {
    fn started(&self, p: &Proc) -> DateTime<Utc> {
        start_time(self.btime, p.stat.start_ticks, self.ticks_per_second)
    }

    fn kids(&self, pid: i32) -> impl Iterator<Item = &Proc> {
        self.children
            .get(&pid)
            .into_iter()
            .flatten()
            .filter_map(|pid| self.procs.get(pid))
    }

    /// Everything below `pid`.
    fn below(&self, pid: i32) -> Vec<&Proc> {
        let mut below = Vec::new();
        let mut todo = vec![pid];
        while let Some(pid) = todo.pop() {
            for kid in self.kids(pid) {
                below.push(kid);
                todo.push(kid.stat.pid);
            }
        }
        below
    }
}

/// An sshd process of the connection, as found by its title.
enum Found<'t> {
    /// A privileged monitor and its one unprivileged post-auth child.
    Privsep { monitor: &'t Proc, child: &'t Proc },
    /// A root login: sshd runs no post-auth child for uid 0 (`privsep_postauth`: "root login"),
    /// so the connection's own process, `sshd: root@pts/0` below the listener, is the session's.
    Root(&'t Proc),
}

/// Whether `title` is a root login's connection process: `sshd: ROOT@pts/0`, `sshd: ROOT@notty`,
/// or, before any session (`ssh -N`), `sshd: ROOT`.
pub fn is_root_session_title(title: &str, root_name: &str) -> bool {
    SSHD_PROGRAMS.iter().any(|p| {
        title
            .strip_prefix(p)
            .and_then(|r| r.strip_prefix(": "))
            .and_then(|r| r.strip_prefix(root_name))
            .is_some_and(|r| r.is_empty() || r.starts_with('@'))
    })
}

/// Scans a `/proc`-like tree (the real `/proc`, or a fake one in tests) for sshd sessions.
///
/// The users come from `passwd` ([`Passwd::read_system`]): reading it at each scan sees users
/// added since the agent started.
pub fn scan(proc_root: &Path, passwd: &Passwd) -> Scan {
    let mut found = Scan::default();
    let Some(btime) = fs::read_to_string(proc_root.join("stat"))
        .ok()
        .and_then(|t| parse_btime(&t))
    else {
        // Without the boot time no start can be dated, hence no auth file checked.
        return found;
    };
    let mut table = Table {
        procs: BTreeMap::new(),
        children: BTreeMap::new(),
        btime,
        ticks_per_second: rustix::param::clock_ticks_per_second(),
    };
    if let Ok(entries) = fs::read_dir(proc_root) {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            // init is never a session, and is left entirely alone.
            if pid == 1 {
                continue;
            }
            if let Some(proc) = read_proc(proc_root, pid) {
                table.procs.insert(pid, proc);
            }
        }
    }
    for proc in table.procs.values() {
        table
            .children
            .entry(proc.stat.ppid)
            .or_default()
            .push(proc.stat.pid);
    }
    let root_name = passwd.by_uid(0).map_or("root", |e| e.name.as_str());
    let is_sshd = |p: &Proc| SSHD_PROGRAMS.contains(&p.stat.comm.as_str());
    for proc in table.procs.values() {
        if !is_sshd(proc) || proc.uids != [0; 4] {
            continue;
        }
        let Some((title, exe)) = read_title_and_exe(proc_root, proc) else {
            continue;
        };
        if !is_sshd_exe(&exe) {
            continue;
        }
        let (title_user, form) = if let Some(user) = monitor_title_user(&title) {
            let user = user.to_owned();
            let post_auth: Vec<&Proc> = table
                .kids(proc.stat.pid)
                .filter(|c| is_sshd(c))
                .filter(|c| {
                    read_title_and_exe(proc_root, c)
                        .is_some_and(|(t, e)| is_child_title(&t, &user) && is_sshd_exe(&e))
                })
                .collect();
            match post_auth[..] {
                [child] => (
                    user,
                    Found::Privsep {
                        monitor: proc,
                        child,
                    },
                ),
                [] => {
                    found.unattributable.push(Unattributable {
                        monitor: proc.id(),
                        child: None,
                        user: Some(user),
                        ttys: Vec::new(),
                        processes: Vec::new(),
                        reason: "no post-auth sshd child (yet)".into(),
                    });
                    continue;
                }
                _ => {
                    found.unattributable.push(Unattributable {
                        monitor: proc.id(),
                        child: None,
                        user: Some(user),
                        ttys: Vec::new(),
                        processes: Vec::new(),
                        reason: "several post-auth sshd children".into(),
                    });
                    continue;
                }
            }
        } else if is_root_session_title(&title, root_name) {
            // Below the listener (an sshd that is no session itself), never below a monitor; or
            // started by init itself, as systemd's socket activation with `Accept=yes` runs
            // `sshd -i` for each connection (Flatcar, Fedora CoreOS).
            let parent_is_listener = proc.stat.ppid == 1
                || table.procs.get(&proc.stat.ppid).is_some_and(|parent| {
                    is_sshd(parent)
                        && read_title_and_exe(proc_root, parent).is_some_and(|(t, e)| {
                            is_sshd_exe(&e)
                                && monitor_title_user(&t).is_none()
                                && !is_root_session_title(&t, root_name)
                        })
                });
            if !parent_is_listener {
                continue;
            }
            (root_name.to_owned(), Found::Root(proc))
        } else {
            continue;
        };
        match examine(proc_root, passwd, &table, &title_user, &form) {
            Ok(session) => found.sessions.push(session),
            Err(u) => found.unattributable.push(*u),
        }
    }
    found
}

/// How one connection authenticated, from its session processes' auth file.
fn examine(
    proc_root: &Path,
    passwd: &Passwd,
    table: &Table,
    title_user: &str,
    form: &Found<'_>,
) -> Result<SshSession, Box<Unattributable>> {
    let (monitor, child) = match form {
        Found::Privsep { monitor, child } => (*monitor, *child),
        Found::Root(proc) => (*proc, *proc),
    };
    let below = table.below(child.stat.pid);
    let ttys: Vec<Tty> = below
        .iter()
        .filter_map(|p| Tty::from_tty_nr(p.stat.tty_nr))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let unattributable = |reason: String| {
        Box::new(Unattributable {
            monitor: monitor.id(),
            child: Some(child.id()),
            user: Some(title_user.to_owned()),
            ttys: ttys.clone(),
            processes: below.iter().map(|p| p.id()).collect(),
            reason,
        })
    };
    let uid = child.uids[0];
    if child.uids.iter().any(|&u| u != uid) {
        return Err(unattributable("the post-auth child's uids differ".into()));
    }
    let entry = passwd
        .by_uid(uid)
        .ok_or_else(|| unattributable(format!("uid {uid} is not in /etc/passwd")))?;
    if entry.name != title_user {
        return Err(unattributable(format!(
            "uid {uid} is {} in /etc/passwd, the title says {title_user}",
            entry.name
        )));
    }
    let mut envs: Vec<SessionEnv> = Vec::new();
    for p in &below {
        let path = proc_root.join(p.stat.pid.to_string()).join("environ");
        if let Some(environ) = read_limited(&path, MAX_ENVIRON_LEN) {
            let env = parse_environ(&environ);
            if env.user_auth.is_some() {
                envs.push(env);
            }
        }
    }
    let paths: BTreeSet<&str> = envs.iter().filter_map(|e| e.user_auth.as_deref()).collect();
    let Some(first_started) = below.iter().map(|p| table.started(p)).min() else {
        return Err(unattributable(
            "no session process (ssh -N, or not started yet)".into(),
        ));
    };
    if paths.is_empty() {
        return Err(unattributable(
            "no session process with SSH_USER_AUTH (ExposeAuthInfo is off?)".into(),
        ));
    }
    let window = (table.started(child), first_started);
    let mut readings: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut errors = Vec::new();
    for path in &paths {
        match read_auth_file(proc_root, child, window, path) {
            Ok(text) => readings.entry(text).or_default().push(path),
            Err(e) => errors.push(e),
        }
    }
    let text = match readings.len() {
        1 => readings.into_keys().next().unwrap_or_default(),
        0 => return Err(unattributable(errors.join("; "))),
        _ => {
            return Err(unattributable(format!(
                "the session's processes name differing auth files: {paths:?}"
            )));
        }
    };
    let mut methods =
        parse_auth_info(&text).map_err(|e| unattributable(format!("malformed auth file: {e}")))?;
    if methods
        .iter()
        .any(|m| matches!(m, AuthMethod::Publickey { .. }))
    {
        let listed = authorized_keys_of(proc_root, child.stat.pid, &entry.home);
        for method in &mut methods {
            if let AuthMethod::Publickey {
                key,
                in_authorized_keys,
            } = method
            {
                *in_authorized_keys = listed.iter().any(|k| k.same_key(key));
            }
        }
    }
    let source = envs
        .iter()
        .filter_map(|e| e.connection.as_deref())
        .find_map(parse_ssh_connection);
    Ok(SshSession {
        ids: SessionIds {
            monitor: monitor.id(),
            child: child.id(),
        },
        uid,
        user: entry.name.clone(),
        methods,
        source,
        ttys,
        processes: below.iter().map(|p| p.id()).collect(),
        started_at: table.started(monitor),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    pub(crate) const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";
    pub(crate) const KEY_B: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHwf2HMM5TRXvo2SQJjsNkiDD5KqiiNjrGVv3UUh9mMT5RHxdtX3GiaNdbCqqnT9+7CRVspZ8p6DKVCs3bG+GNQ=";

    /// tty_nr of /dev/pts/N for N < 256.
    fn pts(n: u64) -> u64 {
        (136 << 8) | n
    }

    /// A fake `/proc` and a fake root file system in a temp dir, removed on drop.
    struct Fake {
        dir: PathBuf,
        uid: u32,
        now_ticks: u64,
    }

    struct P<'a> {
        pid: i32,
        comm: &'a str,
        ppid: i32,
        tty_nr: u64,
        start_ticks: u64,
        uid: u32,
        title: &'a str,
        exe: &'a str,
        env: &'a [(&'a str, &'a str)],
    }

    impl Fake {
        fn new(label: &str) -> Fake {
            let dir = std::env::temp_dir()
                .join(format!("nodegate-sessions-{label}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("proc")).unwrap();
            fs::create_dir_all(dir.join("rootfs/tmp")).unwrap();
            fs::create_dir_all(dir.join("rootfs/home/alice/.ssh")).unwrap();
            // Booted 1000 s ago: a process started at 1000 s of ticks started now.
            let now = Utc::now().timestamp();
            fs::write(
                dir.join("proc/stat"),
                format!("cpu  1 2 3 4\nbtime {}\nprocesses 9\n", now - 1000),
            )
            .unwrap();
            Fake {
                dir,
                uid: crate::perms::effective_uid(),
                now_ticks: 1000 * rustix::param::clock_ticks_per_second(),
            }
        }

        fn proc_root(&self) -> PathBuf {
            self.dir.join("proc")
        }

        fn passwd(&self) -> Passwd {
            Passwd::parse(&format!(
                // alice first: when the tests run as root, she is uid 0.
                "alice:x:{}:100::/home/alice:/bin/bash\nbroken line\nroot:x:0:0:root:/root:/bin/bash\n",
                self.uid
            ))
        }

        fn add(&self, p: P<'_>) {
            let d = self.proc_root().join(p.pid.to_string());
            fs::create_dir_all(&d).unwrap();
            fs::write(
                d.join("stat"),
                format!(
                    "{} ({}) S {} {} {} {} -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 {} 1000 200 18446744073709551615\n",
                    p.pid, p.comm, p.ppid, p.pid, p.pid, p.tty_nr, p.start_ticks
                ),
            )
            .unwrap();
            let u = p.uid;
            fs::write(
                d.join("status"),
                format!(
                    "Name:\t{}\nPid:\t{}\nUid:\t{u}\t{u}\t{u}\t{u}\nGid:\t0\t0\t0\t0\n",
                    p.comm, p.pid
                ),
            )
            .unwrap();
            let mut cmdline = p.title.as_bytes().to_vec();
            cmdline.extend_from_slice(b"\0\0\0");
            fs::write(d.join("cmdline"), cmdline).unwrap();
            symlink(p.exe, d.join("exe")).unwrap();
            symlink(self.dir.join("rootfs"), d.join("root")).unwrap();
            let mut environ = Vec::new();
            for (k, v) in p.env {
                environ.extend_from_slice(format!("{k}={v}\0").as_bytes());
            }
            environ.extend_from_slice(b"PATH=/usr/bin\0");
            fs::write(d.join("environ"), environ).unwrap();
        }

        /// A monitor PID, its child PID+1 and, when `auth` is given, a shell PID+2 (on
        /// /dev/pts/`tty`) and a command PID+3 below it, both with SSH_USER_AUTH=`auth`.
        fn session(&self, pid: i32, child_start: u64, auth: Option<&str>, tty: u64) {
            let start = self.now_ticks;
            self.add(P {
                pid,
                comm: "sshd",
                ppid: 1,
                tty_nr: 0,
                start_ticks: start - 5,
                uid: 0,
                title: "sshd: alice [priv]",
                exe: "/usr/sbin/sshd",
                env: &[],
            });
            self.add(P {
                pid: pid + 1,
                comm: "sshd",
                ppid: pid,
                tty_nr: 0,
                start_ticks: child_start,
                uid: self.uid,
                title: if auth.is_some() {
                    "sshd: alice@pts/3"
                } else {
                    "sshd: alice@notty"
                },
                exe: "/usr/sbin/sshd",
                env: &[],
            });
            if let Some(auth) = auth {
                let env = [
                    ("SSH_USER_AUTH", auth),
                    ("SSH_CONNECTION", "192.0.2.7 51234 192.0.2.1 22"),
                ];
                for (offset, comm, tty_nr) in [(2, "bash", pts(tty)), (3, "sleep", pts(tty))] {
                    self.add(P {
                        pid: pid + offset,
                        comm,
                        ppid: pid + offset - 1,
                        tty_nr,
                        start_ticks: child_start + 1,
                        uid: self.uid,
                        title: comm,
                        exe: "/usr/bin/bash",
                        env: &env,
                    });
                }
            }
        }

        fn auth_file(&self, name: &str, content: &str) -> String {
            fs::write(self.dir.join("rootfs/tmp").join(name), content).unwrap();
            format!("/tmp/{name}")
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    fn reason_of(scan: &Scan, pid: i32) -> &str {
        &scan
            .unattributable
            .iter()
            .find(|u| u.monitor.pid == pid)
            .unwrap_or_else(|| panic!("monitor {pid} not unattributable: {scan:#?}"))
            .reason
    }

    #[test]
    fn finds_sessions_and_says_why_others_cannot_be_attributed() {
        let fake = Fake::new("scan");
        let now = fake.now_ticks;
        fs::write(
            fake.dir.join("rootfs/home/alice/.ssh/authorized_keys"),
            format!("# mine\ncommand=\"echo hi there\",no-pty {KEY_B} alice@laptop\n"),
        )
        .unwrap();
        let grant = fake.auth_file("sshauth.AAAAAAAAAAAAAAA", &format!("publickey {KEY_A}\n"));
        fake.session(100, now, Some(&grant), 3);
        let listed = fake.auth_file("sshauth.BBBBBBBBBBBBBBB", &format!("publickey {KEY_B}\n"));
        fake.session(200, now, Some(&listed), 4);
        let password = fake.auth_file("sshauth.CCCCCCCCCCCCCCC", "password\n");
        fake.session(300, now, Some(&password), 5);
        fake.session(400, now, None, 0); // ssh -N
        let malformed = fake.auth_file(
            "sshauth.DDDDDDDDDDDDDDD",
            "publickey ssh-ed25519 !!notbase64\n",
        );
        fake.session(500, now, Some(&malformed), 6);
        fs::write(
            fake.dir.join("rootfs/home/alice/fake"),
            format!("publickey {KEY_A}\n"),
        )
        .unwrap();
        fake.session(600, now, Some("/home/alice/fake"), 7);
        symlink(
            fake.dir.join("rootfs/tmp/sshauth.AAAAAAAAAAAAAAA"),
            fake.dir.join("rootfs/tmp/sshauth.EEEEEEEEEEEEEEE"),
        )
        .unwrap();
        fake.session(700, now, Some("/tmp/sshauth.EEEEEEEEEEEEEEE"), 8);
        // Rewritten after login: the child started a minute before the file's last change.
        let rewritten = fake.auth_file("sshauth.FFFFFFFFFFFFFFF", "password\n");
        let tck = rustix::param::clock_ticks_per_second();
        fake.session(800, now - 60 * tck, Some(&rewritten), 9);
        // Impostors: a root process named sshd that is not sshd's program, a user's process
        // titled as a monitor, a comm with ") (" in it.
        let impostor_env: &[(&str, &str)] = &[("SSH_USER_AUTH", &grant)];
        fake.add(P {
            pid: 900,
            comm: "sshd",
            ppid: 1,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "sshd: alice [priv]",
            exe: "/usr/bin/python3",
            env: &[],
        });
        fake.add(P {
            pid: 901,
            comm: "sshd",
            ppid: 900,
            tty_nr: 0,
            start_ticks: now,
            uid: fake.uid,
            title: "sshd: alice@pts/9",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        fake.add(P {
            pid: 902,
            comm: "bash",
            ppid: 901,
            tty_nr: pts(9),
            start_ticks: now,
            uid: fake.uid,
            title: "bash",
            exe: "/usr/bin/bash",
            env: impostor_env,
        });
        if fake.uid != 0 {
            fake.add(P {
                pid: 910,
                comm: "sshd",
                ppid: 1,
                tty_nr: 0,
                start_ticks: now,
                uid: fake.uid,
                title: "sshd: alice [priv]",
                exe: "/usr/sbin/sshd",
                env: &[],
            });
        }
        fake.add(P {
            pid: 920,
            comm: "x) (sshd",
            ppid: 1,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "sshd: alice [priv]",
            exe: "/usr/sbin/sshd",
            env: &[],
        });

        let scan = scan(&fake.proc_root(), &fake.passwd());

        let monitors: Vec<i32> = scan.sessions.iter().map(|s| s.ids.monitor.pid).collect();
        assert_eq!(monitors, [100, 200, 300], "{scan:#?}");
        let s = &scan.sessions[0];
        assert_eq!(
            s.ids.monitor,
            ProcId {
                pid: 100,
                start_ticks: now - 5
            }
        );
        assert_eq!(
            s.ids.child,
            ProcId {
                pid: 101,
                start_ticks: now
            }
        );
        assert_eq!((s.uid, s.user.as_str()), (fake.uid, "alice"));
        assert_eq!(
            s.methods,
            [AuthMethod::Publickey {
                key: GrantKey::parse(KEY_A).unwrap(),
                in_authorized_keys: false
            }]
        );
        assert_eq!(s.source, Some("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(
            s.ttys,
            [Tty {
                index: 3,
                major: 136,
                minor: 3
            }]
        );
        let below: Vec<i32> = s.processes.iter().map(|p| p.pid).collect();
        assert_eq!(below, [102, 103], "the shell and its command");
        let age = Utc::now() - s.started_at;
        assert!(
            age >= chrono::Duration::zero() && age < chrono::Duration::seconds(3),
            "{age}"
        );
        assert_eq!(
            scan.sessions[1].methods,
            [AuthMethod::Publickey {
                key: GrantKey::parse(KEY_B).unwrap(),
                in_authorized_keys: true
            }]
        );
        assert_eq!(
            scan.sessions[2].methods,
            [AuthMethod::Other("password".into())]
        );

        assert!(
            reason_of(&scan, 400).contains("no session process"),
            "{scan:#?}"
        );
        assert_eq!(
            scan.unattributable
                .iter()
                .find(|u| u.monitor.pid == 400)
                .unwrap()
                .child
                .map(|c| c.pid),
            Some(401)
        );
        assert!(
            reason_of(&scan, 500).contains("malformed auth file"),
            "{}",
            reason_of(&scan, 500)
        );
        assert!(
            reason_of(&scan, 600).contains("not a path sshd makes"),
            "{}",
            reason_of(&scan, 600)
        );
        assert!(
            reason_of(&scan, 700).contains("cannot open"),
            "{}",
            reason_of(&scan, 700)
        );
        assert!(
            reason_of(&scan, 800).contains("rewritten since"),
            "{}",
            reason_of(&scan, 800)
        );
        for pid in [900, 910, 920] {
            assert!(
                !scan.has_monitor(&ProcId {
                    pid,
                    start_ticks: now
                }),
                "{pid}: {scan:#?}"
            );
        }
        assert_eq!(scan.unattributable.len(), 5, "{scan:#?}");
    }

    #[test]
    fn refuses_auth_files_of_other_users_and_other_kinds() {
        let fake = Fake::new("owner");
        let now = fake.now_ticks;
        fs::create_dir(fake.dir.join("rootfs/tmp/sshauth.GGGGGGGGGGGGGGG")).unwrap();
        fake.session(100, now, Some("/tmp/sshauth.GGGGGGGGGGGGGGG"), 1);
        let big = fake.auth_file("sshauth.HHHHHHHHHHHHHHH", &"password\n".repeat(10_000));
        fake.session(200, now, Some(&big), 2);
        // Two processes of one session naming different files: never guessed between.
        let one = fake.auth_file("sshauth.IIIIIIIIIIIIIII", &format!("publickey {KEY_A}\n"));
        let other = fake.auth_file("sshauth.JJJJJJJJJJJJJJJ", "password\n");
        fake.session(300, now, Some(&one), 3);
        fs::write(
            fake.proc_root().join("303/environ"),
            format!("SSH_USER_AUTH={other}\0"),
        )
        .unwrap();
        let scan = scan(&fake.proc_root(), &fake.passwd());
        assert!(
            reason_of(&scan, 100).contains("not a regular file"),
            "{}",
            reason_of(&scan, 100)
        );
        assert!(
            reason_of(&scan, 200).contains("bytes long"),
            "{}",
            reason_of(&scan, 200)
        );
        assert!(
            reason_of(&scan, 300).contains("differing auth files"),
            "{}",
            reason_of(&scan, 300)
        );
        // Owned by someone else: only root can make such a file here.
        if fake.uid == 0 {
            let theirs = fake.auth_file("sshauth.KKKKKKKKKKKKKKK", &format!("publickey {KEY_A}\n"));
            let path = fake.dir.join("rootfs").join(theirs.trim_start_matches('/'));
            std::os::unix::fs::chown(&path, Some(4242), None).unwrap();
            fake.session(400, now, Some(&theirs), 4);
            let scan = super::scan(&fake.proc_root(), &fake.passwd());
            assert!(
                reason_of(&scan, 400).contains("owned by uid 4242"),
                "{}",
                reason_of(&scan, 400)
            );
        }
    }

    #[test]
    fn a_root_login_is_the_connections_own_process_below_the_listener() {
        let fake = Fake::new("root");
        let now = fake.now_ticks;
        let listener = "sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups";
        let auth = fake.auth_file("sshauth.AAAAAAAAAAAAAAA", &format!("publickey {KEY_A}\n"));
        let env: &[(&str, &str)] = &[
            ("SSH_USER_AUTH", &auth),
            ("SSH_CONNECTION", "192.0.2.7 51234 192.0.2.1 22"),
        ];
        fake.add(P {
            pid: 50,
            comm: "sshd",
            ppid: 1,
            tty_nr: 0,
            start_ticks: 10,
            uid: 0,
            title: listener,
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        fake.add(P {
            pid: 60,
            comm: "sshd",
            ppid: 50,
            tty_nr: 0,
            start_ticks: now - 100,
            uid: 0,
            title: "sshd: root@pts/1",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        fake.add(P {
            pid: 61,
            comm: "bash",
            ppid: 60,
            tty_nr: pts(1),
            start_ticks: now,
            uid: 0,
            title: "-bash",
            exe: "/usr/bin/bash",
            env,
        });
        // ssh -N as root: the connection's process, titled with the bare name, nothing below.
        fake.add(P {
            pid: 70,
            comm: "sshd",
            ppid: 50,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "sshd: root",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        // init is never looked at, whatever it looks like.
        fake.add(P {
            pid: 1,
            comm: "sshd",
            ppid: 0,
            tty_nr: 0,
            start_ticks: 1,
            uid: 0,
            title: "sshd: root",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        // Socket-activated `sshd -i` (systemd Accept=yes): started by init, an ssh -N login.
        fake.add(P {
            pid: 90,
            comm: "sshd",
            ppid: 1,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "sshd: root",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        // Not below the listener: a root process titled like a session, started by a shell.
        fake.add(P {
            pid: 79,
            comm: "bash",
            ppid: 1,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "bash",
            exe: "/usr/bin/bash",
            env: &[],
        });
        fake.add(P {
            pid: 80,
            comm: "sshd",
            ppid: 79,
            tty_nr: 0,
            start_ticks: now,
            uid: 0,
            title: "sshd: root@pts/2",
            exe: "/usr/sbin/sshd",
            env: &[],
        });
        let passwd = Passwd::parse("root:x:0:0:root:/root:/bin/bash\n");
        let scan = scan(&fake.proc_root(), &passwd);
        let me = crate::perms::effective_uid();
        if me == 0 {
            let [s] = &scan.sessions[..] else {
                panic!("{scan:#?}")
            };
            let id = ProcId {
                pid: 60,
                start_ticks: now - 100,
            };
            assert_eq!(
                s.ids,
                SessionIds {
                    monitor: id,
                    child: id
                }
            );
            assert_eq!((s.uid, s.user.as_str()), (0, "root"));
            assert_eq!(
                s.ttys,
                [Tty {
                    index: 1,
                    major: 136,
                    minor: 1
                }]
            );
            assert!(matches!(&s.methods[..], [AuthMethod::Publickey { .. }]));
        } else {
            // The fake auth file is this user's, not root's.
            assert!(
                reason_of(&scan, 60).contains(&format!("owned by uid {me}")),
                "{scan:#?}"
            );
        }
        assert!(
            reason_of(&scan, 70).contains("no session process"),
            "{scan:#?}"
        );
        assert!(
            reason_of(&scan, 90).contains("no session process"),
            "{scan:#?}"
        );
        assert!(
            !scan.has_monitor(&ProcId {
                pid: 1,
                start_ticks: 1
            }),
            "{scan:#?}"
        );
        assert!(
            !scan.has_monitor(&ProcId {
                pid: 80,
                start_ticks: now
            }),
            "{scan:#?}"
        );
        assert!(
            !scan.has_monitor(&ProcId {
                pid: 50,
                start_ticks: 10
            }),
            "the listener is no session"
        );
    }

    #[test]
    fn a_user_unknown_to_passwd_or_another_name_is_unattributable() {
        let fake = Fake::new("passwd");
        let now = fake.now_ticks;
        let grant = fake.auth_file("sshauth.AAAAAAAAAAAAAAA", &format!("publickey {KEY_A}\n"));
        fake.session(100, now, Some(&grant), 3);
        let scan = scan(
            &fake.proc_root(),
            &Passwd::parse("nobody:x:65534:65534::/nonexistent:/bin/false\n"),
        );
        assert!(
            reason_of(&scan, 100).contains("not in /etc/passwd"),
            "{scan:#?}"
        );
        let renamed = Passwd::parse(&format!("mallory:x:{}:1::/home/m:/bin/sh\n", fake.uid));
        let scan = super::scan(&fake.proc_root(), &renamed);
        assert!(
            reason_of(&scan, 100).contains("the title says alice"),
            "{scan:#?}"
        );
    }

    #[test]
    fn parses_stat_with_hostile_command_names() {
        let line = "4242 (a) (b) R 7 (x) S 1 2 3 34819 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 987654 1 2\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.comm, "a) (b) R 7 (x");
        assert_eq!(
            (stat.pid, stat.ppid, stat.tty_nr, stat.start_ticks),
            (4242, 1, 34819, 987654)
        );
        assert_eq!(parse_stat("12 (sshd) S 1"), None, "truncated");
        assert_eq!(parse_stat("12 sshd S 1 2 3"), None, "no parentheses");
        // A negative tty_nr (the kernel prints an int) keeps its bits.
        let neg = "1 (x) S 0 0 0 -1 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 1 2";
        assert_eq!(parse_stat(neg).unwrap().tty_nr, 0xffff_ffff);
    }

    #[test]
    fn decodes_pseudo_terminals_only() {
        assert_eq!(
            Tty::from_tty_nr(pts(0)),
            Some(Tty {
                index: 0,
                major: 136,
                minor: 0
            })
        );
        // /dev/pts/300: minor 300 in the kernel's encoding (bits 20-31 hold minor bits 8+).
        let nr = (136 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(
            Tty::from_tty_nr(nr),
            Some(Tty {
                index: 300,
                major: 136,
                minor: 300
            })
        );
        assert_eq!(
            Tty::from_tty_nr((4 << 8) | 1),
            None,
            "/dev/tty1 is a console"
        );
        assert_eq!(Tty::from_tty_nr(0), None);
    }

    #[test]
    fn titles_and_executables() {
        assert_eq!(monitor_title_user("sshd: alice [priv]"), Some("alice"));
        assert_eq!(
            monitor_title_user("sshd-session: root [priv]"),
            Some("root")
        );
        assert_eq!(monitor_title_user("sshd: alice [preauth]"), None);
        assert_eq!(monitor_title_user("sshd-auth: alice [priv]"), None);
        assert_eq!(monitor_title_user("sshd: a b [priv]"), None);
        assert_eq!(
            monitor_title_user("sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups"),
            None
        );
        assert!(is_child_title("sshd: alice@pts/0", "alice"));
        assert!(is_child_title("sshd-session: alice@notty", "alice"));
        assert!(is_child_title("sshd: alice", "alice"), "ssh -N");
        assert!(is_root_session_title("sshd: root@pts/0", "root"));
        assert!(is_root_session_title("sshd: root", "root"));
        assert!(!is_root_session_title("sshd: root [priv]", "root"));
        assert!(!is_root_session_title("sshd: [accepted]", "root"));
        assert!(!is_root_session_title("sshd: rootx@pts/0", "root"));
        assert!(!is_child_title("sshd: alicex@pts/0", "alice"));
        assert!(!is_child_title("sshd: alice [priv]", "alice"));
        assert!(is_sshd_exe(Path::new("/usr/sbin/sshd")));
        assert!(is_sshd_exe(Path::new(
            "/usr/lib/openssh/sshd-session (deleted)"
        )));
        assert!(!is_sshd_exe(Path::new("/usr/lib/openssh/sshd-auth")));
        assert!(!is_sshd_exe(Path::new("/tmp/sshd-evil")));
        assert_eq!(
            parse_title(b"sshd: alice [priv]\0\0\0  "),
            "sshd: alice [priv]"
        );
        assert_eq!(parse_title(b"sshd: alice@pts/0    "), "sshd: alice@pts/0");
    }

    #[test]
    fn environment_and_connection() {
        let env = parse_environ(b"A=1\0SSH_USER_AUTH=/tmp/sshauth.x\0SSH_CONNECTION=::1 5 ::1 22\0SSH_USER_AUTH=/second\0");
        assert_eq!(
            env.user_auth.as_deref(),
            Some("/tmp/sshauth.x"),
            "the first one, as getenv"
        );
        assert_eq!(
            parse_ssh_connection(env.connection.as_deref().unwrap()),
            Some("[::1]:5".parse().unwrap())
        );
        assert_eq!(
            parse_ssh_connection("192.0.2.7 51234 192.0.2.1 22"),
            Some("192.0.2.7:51234".parse().unwrap())
        );
        for bad in [
            "192.0.2.7 51234 192.0.2.1",
            "host 1 192.0.2.1 22",
            "192.0.2.7 70000 192.0.2.1 22",
            "192.0.2.7 1 x 22",
            "1.2.3.4  1 1.2.3.4 22",
        ] {
            assert_eq!(parse_ssh_connection(bad), None, "{bad}");
        }
    }

    #[test]
    fn auth_file_paths_are_exactly_sshds() {
        assert!(is_auth_file_path("/tmp/sshauth.aB3dE6gH9jK2mN5"));
        for bad in [
            "/tmp/sshauth.short",
            "/tmp/sshauth.aB3dE6gH9jK2mN5x",
            "/tmp/sshauth.aB3dE6gH9/K2mN5",
            "/tmp/sshauth.../../etc/pw",
            "/var/tmp/sshauth.aB3dE6gH9jK2mN5",
            "tmp/sshauth.aB3dE6gH9jK2mN5",
        ] {
            assert!(!is_auth_file_path(bad), "{bad}");
        }
    }

    #[test]
    fn parses_what_sshd_writes_and_nothing_else() {
        let sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIEX/dQ0v4127bEo8eeG1EV0ApO2lWbSnN6RWusn/NjZuAAAABHNzaDo=";
        let text = format!(
            "publickey {KEY_A}\nkeyboard-interactive/pam\npublickey {sk} signature count = 5\n"
        );
        let methods = parse_auth_info(&text).unwrap();
        assert_eq!(methods.len(), 3);
        assert_eq!(
            methods[1],
            AuthMethod::Other("keyboard-interactive/pam".into())
        );
        let AuthMethod::Publickey { key, .. } = &methods[2] else {
            panic!("{methods:?}")
        };
        assert_eq!(key, &GrantKey::parse(sk).unwrap());
        let cert = "publickey ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIH ID foo\n";
        assert_eq!(
            parse_auth_info(cert),
            Ok(vec![AuthMethod::Other(
                "publickey (ssh-ed25519-cert-v01@openssh.com)".into()
            )])
        );
        for bad in [
            "",
            "password",
            "\n",
            "publickey\n",
            "publickey ssh-ed25519\n",
            "pass\u{1b}word\n",
            "password \u{9b}x\n",
            "password\n\n",
        ] {
            assert!(parse_auth_info(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn authorized_keys_keys_after_any_options() {
        let text = format!(
            "# comment\n\n{KEY_A} plain\ncommand=\"echo a b\",from=\"10.0.0.0/8\" {KEY_B} c\ngarbage line\n"
        );
        let keys = parse_authorized_keys(&text);
        assert_eq!(
            keys,
            [
                GrantKey::parse(KEY_A).unwrap(),
                GrantKey::parse(KEY_B).unwrap()
            ]
        );
    }

    #[test]
    fn passwd_first_entry_wins_and_bad_lines_are_skipped() {
        let p = Passwd::parse(
            "a:x:5:5::/home/a:/bin/sh\nb:x:5:5::/home/b:/bin/sh\nc:x:notanumber:1::/c:/bin/sh\nd:x:6:6::/home/d\n",
        );
        assert_eq!(p.by_uid(5).map(|e| e.name.as_str()), Some("a"));
        assert_eq!(p.by_uid(6), None, "six fields");
        assert_eq!(
            btime_or_none("cpu 1\nbtime 1764600000\n"),
            Some(1_764_600_000)
        );
        assert_eq!(btime_or_none("cpu 1\n"), None);
    }

    fn btime_or_none(text: &str) -> Option<i64> {
        parse_btime(text)
    }

    #[test]
    fn auth_file_time_window() {
        let start = DateTime::from_timestamp(1_764_600_000, 0).unwrap();
        let at = |s: i64| start + chrono::Duration::seconds(s);
        // The child started at 0, the shell at 30 (a root login: authentication took a while).
        let check = |changed: i64| auth_file_written_at_login(at(changed), start, at(30));
        for ok in [-2, 0, 15, 30, 32] {
            assert!(check(ok).is_ok(), "{ok}");
        }
        assert!(
            check(-3)
                .unwrap_err()
                .contains("before its sshd process started")
        );
        assert!(check(33).unwrap_err().contains("rewritten since"));
    }

    #[test]
    fn start_times_from_ticks() {
        assert_eq!(
            start_time(1000, 250, 100),
            DateTime::from_timestamp(1002, 500_000_000).unwrap()
        );
    }
}
