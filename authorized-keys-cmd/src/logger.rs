//! Logger: to the system log (sshd discards the command's stderr), and to stderr as well
//! when that is a terminal or `--verbose` is given.

use std::fmt::Display;
use std::io::{IsTerminal, Write};

use nodegate_core::grant::escape_for_display;
use syslog::{Facility, Formatter3164, LoggerBackend};

/// How serious a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Normal operation: who was served what, from where.
    Info,
    /// Something is off but logins work as designed (stale cache, invalid annotation).
    Warning,
    /// Logins cannot work as designed (no source of grants, refused files).
    Error,
}

/// Where diagnostics go.
pub struct Logger {
    syslog: Option<syslog::Logger<LoggerBackend, Formatter3164>>,
    stderr: bool,
    name: &'static str,
}

impl Logger {
    /// Connects to the system log (if there is one) with facility `auth`, as sshd logs.
    pub fn new(verbose: bool) -> Self {
        let formatter = Formatter3164 {
            facility: Facility::LOG_AUTH,
            hostname: None,
            process: "nodegate-authorized-keys-cmd".into(),
            pid: std::process::id(),
        };
        Self {
            syslog: syslog::unix(formatter).ok(),
            stderr: verbose || std::io::stderr().is_terminal(),
            name: "authorized-keys-cmd",
        }
    }

    /// A logger for a service under systemd: to stderr only, which the journal keeps (with
    /// the unit's name and pid), so nothing is logged twice.
    pub fn stderr_only(name: &'static str) -> Self {
        Self {
            syslog: None,
            stderr: true,
            name,
        }
    }

    /// Logs one message; anything odd in it (newlines, escapes) is made visible and harmless.
    pub fn log(&mut self, level: Level, message: impl Display) {
        let text = escape_for_display(&message.to_string());
        if let Some(logger) = self.syslog.as_mut() {
            // A broken log socket must not break logins.
            let _ = match level {
                Level::Info => logger.info(&text),
                Level::Warning => logger.warning(&text),
                Level::Error => logger.err(&text),
            };
        }
        if self.stderr {
            let tag = match level {
                Level::Info => "info",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            let _ = writeln!(std::io::stderr(), "{}: {tag}: {text}", self.name);
        }
    }

    /// [`Level::Info`].
    pub fn info(&mut self, message: impl Display) {
        self.log(Level::Info, message);
    }

    /// [`Level::Warning`].
    pub fn warn(&mut self, message: impl Display) {
        self.log(Level::Warning, message);
    }

    /// [`Level::Error`].
    pub fn error(&mut self, message: impl Display) {
        self.log(Level::Error, message);
    }
}
