//! The output of a finished command, checked: its streams as text, and assertions that show the
//! command and everything it printed when they fail, so a failing test says why by itself.

use std::collections::BTreeSet;
use std::fmt;
use std::process::{Command, ExitStatus, Output, Stdio};

/// What a command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Checked {
    /// What ran, for failure messages.
    pub what: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output. Must be UTF-8: every tool here prints text.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// Runs `command` to completion with its output captured, feeding it `stdin` if given (else
/// standard input is empty).
pub fn output_with_stdin(command: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write as _;
    let mut child = command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(input)
            .unwrap_or_else(|e| panic!("write the stdin of {command:?}: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait for {command:?}: {e}"))
}

impl Checked {
    /// Runs `command` to completion with its output captured.
    pub fn run(command: &mut Command) -> Checked {
        let what = format!("{command:?}");
        let output = command
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Checked::of(what, output)
    }

    /// Wraps the output of a command that already ran.
    pub fn of(what: impl Into<String>, output: Output) -> Checked {
        let what = what.into();
        let stdout = String::from_utf8(output.stdout)
            .unwrap_or_else(|e| panic!("{what} printed non-UTF-8 on stdout: {e}"));
        Checked {
            what,
            status: output.status,
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The exit code (`None` when a signal ended it).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics, showing everything, unless it exited 0. Returns standard output.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert!(self.success(), "expected success: {self}");
        &self.stdout
    }

    /// Panics, showing everything, unless it exited with `code`.
    #[track_caller]
    pub fn code_is(&self, code: i32) -> &Checked {
        assert_eq!(self.code(), Some(code), "expected exit {code}: {self}");
        self
    }

    /// Panics, showing everything, unless standard error contains `text`.
    #[track_caller]
    pub fn says(&self, text: &str) -> &Checked {
        assert!(
            self.stderr.contains(text),
            "expected {text:?} on stderr: {self}"
        );
        self
    }

    /// Standard output's lines, as a set.
    pub fn lines(&self) -> BTreeSet<String> {
        self.stdout.lines().map(str::to_owned).collect()
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ended with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_the_streams_and_checks_the_code() {
        let out = Checked::run(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]));
        assert_eq!(out.stdout, "out\n");
        assert_eq!(out.stderr, "err\n");
        out.code_is(3).says("err");
        assert!(!out.success());
        assert!(out.to_string().contains("--- stderr ---\nerr"));
        let failed = std::panic::catch_unwind(|| {
            out.ok();
        });
        assert!(failed.is_err(), "exit 3 is not success");
    }
}
