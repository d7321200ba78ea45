//! The caller's terminal or pipes, connected to the remote command.
//!
//! With a terminal: raw mode, window size changes forwarded, stdout and stderr merged by the
//! remote terminal. Without one: stdout and stderr kept apart, and stdin *framed*: the WebSocket
//! protocol v4 (API servers before 1.30, and kube-rs does not tell which one it got) cannot close stdin alone, only the whole connection, so
//! stdin goes base64-encoded, one chunk a line, with a line `.` for its end, and the helper script
//! decodes it (see `helper.sh`).

use base64::Engine as _;
use futures::SinkExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachedProcess, TerminalSize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// What went wrong with the streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The connection ended without the remote command's exit status.
    #[error(
        "lost the connection to the helper pod before the command finished (the API server, kubelet or network dropped it)"
    )]
    Lost,
    /// The API server or kubelet reported a failure that is not an exit code.
    #[error("the remote command failed: {0}")]
    Remote(String),
    /// The terminal could not be put into raw mode.
    #[error("cannot set up the terminal: {0}")]
    Terminal(#[source] std::io::Error),
}

/// Puts the terminal into raw mode for as long as it lives.
pub struct RawMode(());

impl RawMode {
    /// Enables raw mode.
    pub fn enable() -> Result<RawMode, StreamError> {
        crossterm::terminal::enable_raw_mode().map_err(StreamError::Terminal)?;
        Ok(RawMode(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

/// Copies `reader` to `writer`, flushing every chunk so prompts show at once.
async fn forward(mut reader: impl AsyncRead + Unpin, mut writer: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Encodes one chunk of stdin as a frame line.
pub fn frame(chunk: &[u8]) -> Vec<u8> {
    let mut line = base64::engine::general_purpose::STANDARD
        .encode(chunk)
        .into_bytes();
    line.push(b'\n');
    line
}

/// The frame line that ends stdin.
pub const END_OF_STDIN: &[u8] = b".\n";

/// Sends our stdin to the remote command until it ends; never closes the remote stdin, which on
/// protocol v4 would close the whole connection.
async fn send_stdin(mut remote: impl AsyncWrite + Unpin, framed: bool) {
    let mut stdin = tokio::io::stdin();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let data = if framed {
                    frame(&buf[..n])
                } else {
                    buf[..n].to_vec()
                };
                if remote.write_all(&data).await.is_err() || remote.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    if framed {
        let _ = remote.write_all(END_OF_STDIN).await;
        let _ = remote.flush().await;
    }
    // Keep the writer open: dropping it ends the connection on protocol v4.
    std::future::pending::<()>().await;
}

/// Forwards window size changes (SIGWINCH) to the remote terminal.
async fn send_sizes(mut sizes: futures::channel::mpsc::Sender<TerminalSize>) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    loop {
        if let Ok((width, height)) = crossterm::terminal::size()
            && sizes.send(TerminalSize { width, height }).await.is_err()
        {
            return;
        }
        if winch.recv().await.is_none() {
            return;
        }
    }
}

/// How long output that arrived before a lost connection may take to be written out.
const LOST_OUTPUT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Connects the caller's stdio to `process` until it ends; returns its exit code.
pub async fn connect(
    mut process: AttachedProcess,
    tty: bool,
    framed: bool,
) -> Result<u8, StreamError> {
    let status = process.take_status().ok_or(StreamError::Lost)?;
    let stdout = process
        .stdout()
        .map(|out| tokio::spawn(forward(out, tokio::io::stdout())));
    let stderr = process
        .stderr()
        .map(|err| tokio::spawn(forward(err, tokio::io::stderr())));
    let stdin = process
        .stdin()
        .map(|remote| tokio::spawn(send_stdin(remote, framed)));
    let sizes = if tty {
        process
            .terminal_size()
            .map(|tx| tokio::spawn(send_sizes(tx)))
    } else {
        None
    };
    let status = status.await;
    // The remote side is done: let the output drain, then stop feeding input. After a status
    // kube ends stdout and stderr, so they drain to their end; after a lost connection it leaves
    // them open, so only what has already arrived is shown.
    let mut outputs: Vec<_> = [stdout, stderr].into_iter().flatten().collect();
    let drained = async {
        for task in &mut outputs {
            let _ = task.await;
        }
    };
    match status {
        Some(_) => drained.await,
        None => {
            let _ = tokio::time::timeout(LOST_OUTPUT_GRACE, drained).await;
        }
    }
    for task in outputs.iter().chain([stdin, sizes].iter().flatten()) {
        task.abort();
    }
    drop(process);
    exit_code(status)
}

/// The exit code in the status the kubelet sends at the end of an exec.
pub fn exit_code(status: Option<Status>) -> Result<u8, StreamError> {
    let status = status.ok_or(StreamError::Lost)?;
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|cause| cause.reason.as_deref() == Some("ExitCode"))
        .and_then(|cause| cause.message.as_deref()?.parse::<i64>().ok());
    match code {
        Some(code) => Ok(u8::try_from(code).unwrap_or(1)),
        None => Err(StreamError::Remote(
            status.message.unwrap_or_else(|| "no reason given".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_base64_lines_that_never_read_as_the_end() {
        assert_eq!(frame(b"hi\n"), b"aGkK\n");
        assert_eq!(frame(b"."), b"Lg==\n");
        assert_ne!(frame(b"."), END_OF_STDIN);
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        let ok: Status =
            serde_json::from_value(serde_json::json!({"status": "Success"})).expect("status");
        assert_eq!(exit_code(Some(ok)).ok(), Some(0));
        let failed: Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "reason": "NonZeroExitCode",
            "message": "command terminated with non-zero exit code",
            "details": {"causes": [{"reason": "ExitCode", "message": "42"}]}
        }))
        .expect("status");
        assert_eq!(exit_code(Some(failed)).ok(), Some(42));
        assert!(matches!(exit_code(None), Err(StreamError::Lost)));
    }
}
