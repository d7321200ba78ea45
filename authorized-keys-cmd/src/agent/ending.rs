//! Ending a session: a warning on its terminal, then SIGTERM to its monitor, then SIGKILL to
//! its post-auth child.
//!
//! sshd's privileged monitor passes SIGTERM (and SIGHUP, SIGINT) on to its post-auth child
//! (`monitor.c`: `monitor_child_handler` after `monitor_child_postauth`); the child leaves its
//! server loop, closes the connection and cleans up (removing the auth file), and the monitor
//! exits with it. A child that does not go (stopped, stuck) is killed; the monitor then sees it
//! exit and ends too.
//!
//! Every signal goes through a pidfd, opened first and checked against the start time the scan
//! recorded afterwards: once the pidfd is open the pid cannot be reused under it, so the signal
//! reaches the process the scan found or nobody. Nothing is ever signalled that the caller did
//! not get from a [`super::sessions::scan`] as part of a session.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::time::Duration;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};

use super::enforce::{Action, Record};
use super::events::Happening;
use super::sessions::{ProcId, SessionIds, Tty, parse_stat};

/// What became of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// Sent to the process the scan found.
    Sent,
    /// That process is gone (exited, or its pid now names another process): nothing was sent.
    Gone,
}

/// Sends `signal` to `id`, only if it is still the process the scan found.
pub fn signal_process(proc_root: &Path, id: &ProcId, signal: Signal) -> io::Result<Signalled> {
    let pid = Pid::from_raw(id.pid)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "pid must be positive"))?;
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Ok(Signalled::Gone),
        Err(e) => return Err(e.into()),
    };
    // Read after the pidfd holds the process: if the start time matches now, the pidfd is the
    // process the scan found, whatever happens to the pid from here on.
    let stat = match fs::read_to_string(proc_root.join(id.pid.to_string()).join("stat")) {
        Ok(text) => parse_stat(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Signalled::Gone),
        Err(e) => return Err(e),
    };
    match stat {
        Some(stat) if stat.start_ticks == id.start_ticks => {}
        _ => return Ok(Signalled::Gone),
    }
    match pidfd_send_signal(&pidfd, signal) {
        Ok(()) => Ok(Signalled::Sent),
        Err(rustix::io::Errno::SRCH) => Ok(Signalled::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Ends a session: SIGTERM to its monitor, which ends the connection, and SIGHUP to the
/// session's processes the scan found. A shell on a terminal gets that hangup from the
/// terminal anyway; a command without one (`ssh node 'long job'`) would otherwise go on after
/// the connection, reparented, where no later scan could tell it was the session's. A process
/// that ignores SIGHUP (`nohup`) was detached on purpose and is left to run.
pub fn end(proc_root: &Path, session: &SessionIds, processes: &[ProcId]) -> io::Result<Signalled> {
    let ended = signal_process(proc_root, &session.monitor, Signal::TERM);
    hang_up(proc_root, session, processes);
    ended
}

/// Kills a session that [`end`] did not end: SIGKILL to its post-auth child, SIGHUP again to
/// its processes.
pub fn kill(proc_root: &Path, session: &SessionIds, processes: &[ProcId]) -> io::Result<Signalled> {
    let killed = signal_process(proc_root, &session.child, Signal::KILL);
    hang_up(proc_root, session, processes);
    killed
}

/// SIGHUP to each of `processes` still there, except the session's sshd processes themselves.
fn hang_up(proc_root: &Path, session: &SessionIds, processes: &[ProcId]) {
    for id in processes {
        if id != &session.monitor && id != &session.child {
            // Gone already or not ours to reach: nothing more to do for it.
            let _ = signal_process(proc_root, id, Signal::HUP);
        }
    }
}

/// `text` as a banner for a terminal, as wall(1) writes one: a bell and a blank line first,
/// `\r\n` line ends (a terminal in raw mode, an editor, gets no `\n` translation), and nothing
/// but printable characters from `text`.
pub fn banner(text: &str) -> String {
    let mut out = String::from("\x07\r\n");
    for line in text.lines() {
        out.extend(line.chars().filter(|c| !c.is_control()));
        out.push_str("\r\n");
    }
    out
}

/// Writes the [`banner`] of `text` to the session's terminal, never blocking: opened without
/// becoming its controlling terminal, without following a symbolic link, non-blocking, and
/// checked to be the character device the scan found before anything is written. A terminal
/// whose output is full gets what fits, the rest is dropped.
pub fn warn(tty: &Tty, text: &str) -> io::Result<()> {
    warn_at(&tty.path(), tty, text)
}

/// [`warn`] through the device at `path`.
pub fn warn_at(path: &Path, tty: &Tty, text: &str) -> io::Result<()> {
    let flags =
        rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(path)?;
    let meta = file.metadata()?;
    let rdev = meta.rdev();
    let same = meta.file_type().is_char_device()
        && rustix::fs::major(rdev) == tty.major
        && rustix::fs::minor(rdev) == tty.minor;
    if !same {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not the terminal {}:{} of the session",
                path.display(),
                tty.major,
                tty.minor
            ),
        ));
    }
    match file.write(banner(text).as_bytes()) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// What carrying out an [`Action`] came to, for the log and the Node's Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A line for the log.
    Log(String),
    /// A line for the log, as a warning: something could not be done, or had to be forced.
    Warn(String),
    /// A line for the log, and an Event about the Node.
    Record {
        /// What happened.
        happening: Happening,
        /// The log line.
        log_line: String,
        /// The Event's message.
        message: String,
    },
}

/// `alice's session from 192.0.2.7:51234 (key SHA256:..., grant g.alice.0123456789abcdef by carol, "disk full", until ...; sshd pid 100)`.
fn describe(record: &Record) -> String {
    let grants = record
        .grants
        .iter()
        .map(|g| {
            let reason = g
                .reason
                .as_deref()
                .map(|r| format!(", reason {r:?}"))
                .unwrap_or_default();
            format!(
                "key {}, grant {} by {}{reason}, until {}",
                g.key.fingerprint(),
                g.annotation,
                g.granted_by,
                g.expiry
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let from = record
        .source
        .map(|s| format!(" from {s}"))
        .unwrap_or_default();
    format!(
        "{}'s session{from} ({grants}; sshd pid {})",
        record.user, record.session.monitor.pid
    )
}

/// Carries out one action: writes warnings, sends signals (both only to what the scan found),
/// and says what became of it.
pub fn carry_out(proc_root: &Path, action: &Action) -> Vec<Outcome> {
    match action {
        Action::Login(record) => vec![Outcome::Record {
            happening: Happening::Login,
            log_line: format!("login: {}", describe(record)),
            message: format!("SSH login: {}", describe(record)),
        }],
        Action::Logout { record, duration } => {
            let lasted = humantime::format_duration(Duration::from_secs(duration.as_secs()));
            vec![Outcome::Record {
                happening: Happening::Logout,
                log_line: format!("logout after {lasted}: {}", describe(record)),
                message: format!("SSH logout after {lasted}: {}", describe(record)),
            }]
        }
        Action::Warn {
            session,
            ttys,
            text,
        } => ttys
            .iter()
            .map(|tty| match warn(tty, text) {
                Ok(()) => Outcome::Log(format!(
                    "warned the session of sshd pid {} on {}: {}",
                    session.monitor.pid,
                    tty.path().display(),
                    text.lines().next().unwrap_or_default()
                )),
                Err(e) => Outcome::Warn(format!(
                    "cannot warn the session of sshd pid {} on {}: {e}",
                    session.monitor.pid,
                    tty.path().display()
                )),
            })
            .collect(),
        Action::End {
            session,
            processes,
            why,
        } => vec![match end(proc_root, session, processes) {
            Ok(Signalled::Sent) => Outcome::Record {
                happening: Happening::Ended,
                log_line: format!(
                    "ending the session of sshd pid {} (SIGTERM): {why}",
                    session.monitor.pid
                ),
                message: format!(
                    "SSH session ended (sshd pid {}): {why}",
                    session.monitor.pid
                ),
            },
            Ok(Signalled::Gone) => Outcome::Log(format!(
                "the session of sshd pid {} ({why}) is already gone",
                session.monitor.pid
            )),
            Err(e) => Outcome::Warn(format!(
                "cannot end the session of sshd pid {} ({why}): {e}",
                session.monitor.pid
            )),
        }],
        Action::Kill { session, processes } => vec![match kill(proc_root, session, processes) {
            Ok(Signalled::Sent) => Outcome::Warn(format!(
                "the session of sshd pid {} outlived its SIGTERM: SIGKILL to its post-auth child, pid {}",
                session.monitor.pid, session.child.pid
            )),
            Ok(Signalled::Gone) => Outcome::Log(format!(
                "the post-auth child (pid {}) of sshd pid {} is gone",
                session.child.pid, session.monitor.pid
            )),
            Err(e) => Outcome::Warn(format!(
                "cannot kill the post-auth child (pid {}) of sshd pid {}: {e}",
                session.child.pid, session.monitor.pid
            )),
        }],
        Action::Ignore { monitor, user, why } => vec![Outcome::Log(format!(
            "session of {} (sshd pid {}) left alone: {why}",
            user.as_deref().unwrap_or("an unknown user"),
            monitor.pid
        ))],
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};

    use super::*;

    fn proc_id(pid: u32) -> ProcId {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let stat = parse_stat(&text).unwrap();
        ProcId {
            pid: stat.pid,
            start_ticks: stat.start_ticks,
        }
    }

    #[test]
    fn signals_only_the_process_with_the_recorded_start() {
        let mut sleeper = Command::new("sleep")
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let id = proc_id(sleeper.id());
        let reused = ProcId {
            start_ticks: id.start_ticks + 1,
            ..id
        };
        let root = Path::new("/proc");
        assert_eq!(
            signal_process(root, &reused, Signal::TERM).unwrap(),
            Signalled::Gone
        );
        assert!(
            sleeper.try_wait().unwrap().is_none(),
            "another start time: untouched"
        );
        assert_eq!(
            signal_process(root, &id, Signal::TERM).unwrap(),
            Signalled::Sent
        );
        let status = sleeper.wait().unwrap();
        assert_eq!(status.signal(), Some(libc_sigterm()));
        // Reaped: the pid names nothing (or, reused, something else).
        assert_eq!(
            signal_process(root, &id, Signal::KILL).unwrap(),
            Signalled::Gone
        );
    }

    fn libc_sigterm() -> i32 {
        Signal::TERM.as_raw()
    }

    #[test]
    fn banner_has_crlf_and_no_control_characters() {
        assert_eq!(
            banner("one\ntwo \x1b[2Jthree"),
            "\x07\r\none\r\ntwo [2Jthree\r\n"
        );
    }

    #[test]
    fn warns_on_the_terminal_the_scan_found_and_nowhere_else() {
        use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
        let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
        grantpt(&master).unwrap();
        unlockpt(&master).unwrap();
        let name = ptsname(&master, Vec::new()).unwrap();
        let path = Path::new(name.to_str().unwrap()).to_owned();
        let rdev = fs::metadata(&path).unwrap().rdev();
        let index: u32 = path
            .to_str()
            .unwrap()
            .strip_prefix("/dev/pts/")
            .unwrap()
            .parse()
            .unwrap();
        let tty = Tty {
            index,
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        };
        assert_eq!(tty.path(), path);
        warn(&tty, "session ends in 60s").unwrap();
        let mut master = fs::File::from(master);
        let mut got = [0u8; 256];
        let n = master.read(&mut got).unwrap();
        let got = String::from_utf8_lossy(&got[..n]);
        // The terminal's ONLCR turns each \n into \r\n: wall's output looks the same.
        assert!(got.starts_with("\x07\r"), "{got:?}");
        assert!(got.contains("session ends in 60s\r"), "{got:?}");

        let other = Tty {
            minor: tty.minor + 1,
            ..tty
        };
        let err = warn_at(&path, &other, "not for you").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let not_a_tty = warn_at(Path::new("/dev/null"), &tty, "x").unwrap_err();
        assert_eq!(not_a_tty.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_symlink_to_the_terminal_is_refused() {
        let dir = std::env::temp_dir().join(format!("nodegate-ending-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let link = dir.join("pts");
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        let meta = fs::metadata("/dev/null").unwrap();
        let tty = Tty {
            index: 0,
            major: rustix::fs::major(meta.rdev()),
            minor: rustix::fs::minor(meta.rdev()),
        };
        let result = warn_at(&link, &tty, "x");
        fs::remove_dir_all(&dir).unwrap();
        assert!(result.is_err(), "followed the link");
    }

    fn record_of(session: SessionIds) -> Record {
        use nodegate_core::{Expiry, GrantKey, LoginUser};

        use super::super::enforce::GrantRef;
        let key = GrantKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti",
        )
        .unwrap();
        let at = chrono::DateTime::from_timestamp(1_764_600_000, 0).unwrap();
        Record {
            session,
            user: LoginUser::new("alice").unwrap(),
            grants: vec![GrantRef {
                annotation: "g.alice.5025222ebecf8ecf".into(),
                key,
                granted_by: "carol".into(),
                reason: Some("disk full".into()),
                expiry: Expiry::At(at),
            }],
            login_at: at,
            source: Some("192.0.2.7:51234".parse().unwrap()),
            expiry_warned: false,
            ending: None,
        }
    }

    #[test]
    fn carrying_out_signals_the_scanned_session_and_says_what_happened() {
        use super::super::enforce::EndReason;
        let sleep = || {
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        };
        // A stand-in for the sshd process, and one for a command it runs without a terminal.
        let (mut sshd, mut command, mut bystander) = (sleep(), sleep(), sleep());
        let id = proc_id(sshd.id());
        let session = SessionIds {
            monitor: id,
            child: id,
        };
        let processes = vec![proc_id(command.id())];
        let root = Path::new("/proc");
        let why = EndReason::Revoked {
            annotation: "g.alice.5025222ebecf8ecf".into(),
        };
        let end = Action::End {
            session,
            processes: processes.clone(),
            why: why.clone(),
        };
        let out = carry_out(root, &end);
        let [
            Outcome::Record {
                happening: Happening::Ended,
                message,
                ..
            },
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert!(
            message.contains("grant g.alice.5025222ebecf8ecf was revoked"),
            "{message}"
        );
        assert_eq!(sshd.wait().unwrap().signal(), Some(Signal::TERM.as_raw()));
        assert_eq!(command.wait().unwrap().signal(), Some(Signal::HUP.as_raw()));
        assert!(bystander.try_wait().unwrap().is_none(), "not the session's");
        bystander.kill().unwrap();
        bystander.wait().unwrap();
        let out = carry_out(root, &end);
        assert!(
            matches!(&out[..], [Outcome::Log(l)] if l.contains("already gone")),
            "{out:?}"
        );
        let out = carry_out(root, &Action::Kill { session, processes });
        assert!(
            matches!(&out[..], [Outcome::Log(l)] if l.contains("is gone")),
            "{out:?}"
        );
        let out = carry_out(root, &Action::Login(record_of(session)));
        let [
            Outcome::Record {
                happening: Happening::Login,
                message,
                ..
            },
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        for part in [
            "alice's session from 192.0.2.7:51234",
            "SHA256:UCUiLr7Pjs9wFFJMDByLgc3NrtdU344OgUM45wZPcIQ",
            "by carol",
            "\"disk full\"",
            "until 2025-12-01T14:40:00Z",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
        let out = carry_out(
            root,
            &Action::Warn {
                session,
                ttys: vec![Tty {
                    index: 999_999,
                    major: 136,
                    minor: 999_999,
                }],
                text: "x".into(),
            },
        );
        assert!(
            matches!(&out[..], [Outcome::Warn(l)] if l.contains("/dev/pts/999999")),
            "{out:?}"
        );
    }
}
