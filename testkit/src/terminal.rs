//! A pseudo-terminal to run a program on as its controlling terminal, as a user's terminal
//! emulator would: the test types into it, reads what appears, and resizes the window.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::{LocalModes, Winsize};

use crate::process::wait_until;

/// The terminal's two sides: the test holds the controlling side, the program gets the other.
pub struct Terminal {
    controller: File,
    /// The program's side, kept open so its settings can be read after the program exits.
    program_side: File,
    /// Everything the program has written so far.
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// Opens a terminal of `rows` x `cols`.
    pub fn open(rows: u16, cols: u16) -> Terminal {
        let controller: OwnedFd =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("open a pty");
        rustix::pty::grantpt(&controller).expect("grantpt");
        rustix::pty::unlockpt(&controller).expect("unlockpt");
        let path = rustix::pty::ptsname(&controller, Vec::new()).expect("ptsname");
        let program_side = rustix::fs::open(
            path.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the pty's program side");
        let terminal = Terminal {
            controller: File::from(controller),
            program_side: File::from(program_side),
            screen: Arc::default(),
        };
        terminal.resize(rows, cols);
        let mut reader = terminal.controller.try_clone().expect("clone the pty");
        let screen = Arc::clone(&terminal.screen);
        // Ends when the program side is closed everywhere (the read fails with EIO).
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                screen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        });
        terminal
    }

    /// Starts `command` in a new session with this terminal as its controlling terminal and as
    /// its stdin, stdout and stderr (via `setsid --ctty`, so no unsafe `pre_exec` is needed).
    pub fn spawn(&self, command: &Command) -> Child {
        let side = || Stdio::from(self.program_side.try_clone().expect("clone the pty"));
        let mut session = Command::new("setsid");
        session
            .arg("--ctty")
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => session.env(key, value),
                None => session.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            session.current_dir(dir);
        }
        session
            .stdin(side())
            .stdout(side())
            .stderr(side())
            .spawn()
            .expect("run setsid (util-linux)")
    }

    /// Sets the window size; the kernel sends SIGWINCH to the program, as a terminal emulator's
    /// resize does.
    pub fn resize(&self, rows: u16, cols: u16) {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.controller, size).expect("set the window size");
    }

    /// Types `keys`.
    pub fn type_keys(&self, keys: &[u8]) {
        (&self.controller)
            .write_all(keys)
            .expect("type into the pty");
    }

    /// Everything the program has written so far, lossily decoded.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Waits up to `timeout` until the screen contains `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> bool {
        wait_until(timeout, || self.screen().contains(text))
    }

    /// Whether the terminal is in its normal (cooked) mode: line editing and echo, as a shell
    /// expects it after a program that used raw mode exits.
    pub fn is_cooked(&self) -> bool {
        let settings = rustix::termios::tcgetattr(&self.program_side).expect("read the pty's mode");
        settings
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_sees_the_size_typing_and_resizes() {
        let terminal = Terminal::open(24, 80);
        let mut shell = Command::new("sh");
        shell.args(["-c", "stty size; read line; echo got $line; stty size"]);
        let mut child = terminal.spawn(&shell);
        assert!(terminal.wait_for("24 80", Duration::from_secs(10)));
        terminal.resize(40, 120);
        terminal.type_keys(b"hello\n");
        let status = child.wait().expect("wait for sh");
        assert!(status.success());
        assert!(
            terminal.wait_for("40 120", Duration::from_secs(10)),
            "{}",
            terminal.screen()
        );
        assert!(terminal.screen().contains("got hello"));
        assert!(terminal.is_cooked());
    }
}
