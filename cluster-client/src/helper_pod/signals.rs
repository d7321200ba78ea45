//! SIGINT, SIGTERM and SIGHUP, caught so that the helper pod is deleted before the tool exits.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// The signals that end a session. Install them before anything is created, so that none can
/// leave a pod behind.
#[derive(Debug)]
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Installs the handlers (from then on these signals no longer kill the process).
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    /// The next signal, by name ("SIGINT", "SIGTERM", "SIGHUP").
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }

    /// 128 + the signal number, as shells report a command killed by it.
    pub fn exit_code(name: &str) -> u8 {
        match name {
            "SIGHUP" => 129,
            "SIGINT" => 130,
            _ => 143,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_what_a_shell_reports() {
        assert_eq!(Signals::exit_code("SIGHUP"), 129);
        assert_eq!(Signals::exit_code("SIGINT"), 130);
        assert_eq!(Signals::exit_code("SIGTERM"), 143);
    }
}
