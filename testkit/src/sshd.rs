//! A real sshd on a loopback port and a real ssh client (owned by the authorized-keys-cmd work).
//!
//! sshd demands that an `AuthorizedKeysCommand` and every directory above it be owned by root and
//! not writable by group or others, which a temp dir under `/tmp` (mode 1777) never is. The
//! command is therefore copied into a [`RootOwnedDir`] under `/var/lib/nodegate-test/`, which,
//! like a [`Scratch`], is removed when the test process ends, however it ends.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::process::{Daemon, Scratch, free_port, wait_until};

/// Where [`RootOwnedDir`]s are made.
pub const ROOT_OWNED_BASE: &str = "/var/lib/nodegate-test";

/// A root-owned, mode 0755 directory outside `/tmp`, removed when the test process ends.
pub struct RootOwnedDir {
    dir: PathBuf,
}

impl RootOwnedDir {
    /// Creates `/var/lib/nodegate-test/LABEL-XXXXXX` and arranges its removal.
    pub fn new(label: &str) -> Self {
        fs::create_dir_all(ROOT_OWNED_BASE).expect("create /var/lib/nodegate-test (run as root)");
        fs::set_permissions(ROOT_OWNED_BASE, fs::Permissions::from_mode(0o755))
            .expect("chmod /var/lib/nodegate-test");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(ROOT_OWNED_BASE)
            .expect("create a dir under /var/lib/nodegate-test")
            .keep();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        // Same trick as Scratch: a shell that removes the dir once our end of its pipe closes.
        let mut reaper = Command::new("sh")
            .arg("-c")
            .arg(r#"cat >/dev/null; [ -n "$NODEGATE_KEEP_TEST_DIRS" ] || rm -rf "$1""#)
            .arg("reaper")
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cleanup shell (sh)");
        // The write end lives as long as this process: leak it on purpose.
        std::mem::forget(reaper.stdin.take());
        std::mem::forget(reaper);
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Copies `binary` into the directory as `name`, mode 0755, and returns the new path.
    pub fn install(&self, binary: &Path, name: &str) -> PathBuf {
        let to = self.dir.join(name);
        fs::copy(binary, &to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", binary.display(), to.display()));
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).expect("chmod 0755");
        to
    }
}

/// How sshd learns the authorized keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// `AuthorizedKeysCommand PROGRAM ARGS...` run as root, `AuthorizedKeysFile none`.
    Command {
        /// The program (must satisfy sshd's ownership rules: see [`RootOwnedDir`]).
        program: PathBuf,
        /// Its arguments, with sshd's tokens such as `%u` and `%f`.
        args: Vec<String>,
    },
    /// A static `AuthorizedKeysFile` (for baselines).
    File(PathBuf),
    /// Both: a static `AuthorizedKeysFile` and an `AuthorizedKeysCommand` run as root, as on a
    /// node that keeps a few keys in a file next to the grants. sshd tries the file first.
    FileAndCommand {
        /// The `AuthorizedKeysFile`.
        file: PathBuf,
        /// The program (must satisfy sshd's ownership rules: see [`RootOwnedDir`]).
        program: PathBuf,
        /// Its arguments, with sshd's tokens such as `%u` and `%f`.
        args: Vec<String>,
    },
}

impl KeySource {
    /// authorized-keys-cmd at `program` with `config`, as the node package's drop-in runs it
    /// (`--config CONFIG %u %f`).
    pub fn authorized_keys_cmd(program: PathBuf, config: &Path) -> KeySource {
        KeySource::Command {
            program,
            args: vec![
                "--config".into(),
                config.display().to_string(),
                "%u".into(),
                "%f".into(),
            ],
        }
    }
}

/// A running sshd on `127.0.0.1:port`.
pub struct Sshd {
    /// The port.
    pub port: u16,
    /// The configuration file sshd runs with (for `sshd -T -f`).
    pub config: PathBuf,
    daemon: Daemon,
}

/// An ed25519 key pair made by ssh-keygen.
#[derive(Debug, Clone)]
pub struct SshKey {
    /// The private key file (mode 0600).
    pub private: PathBuf,
    /// The public key line, `ssh-ed25519 AAAA... comment`.
    pub public: String,
}

/// Makes an ed25519 key pair `DIR/NAME` with ssh-keygen.
pub fn ssh_keygen(dir: &Path, name: &str) -> SshKey {
    let private = dir.join(name);
    let _ = fs::remove_file(&private);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&private)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen (openssh-client)");
    assert!(status.success(), "ssh-keygen failed");
    let public = fs::read_to_string(private.with_extension("pub"))
        .expect("read the public key")
        .trim()
        .to_owned();
    SshKey { private, public }
}

impl Sshd {
    /// Starts sshd with a fresh host key in `scratch`, listening on 127.0.0.1 only, public key
    /// authentication only, and waits until it accepts connections.
    pub fn start(scratch: &Scratch, name: &str, keys: &KeySource) -> Sshd {
        Self::start_with(scratch, name, keys, "")
    }

    /// [`Sshd::start`] with `extra` lines appended to sshd_config (more `HostKey`s, a
    /// `HostCertificate`, ...). The directory is `scratch/NAME`; keys put there before the
    /// start (such as `ssh_host_ed25519_key`) are used as they are.
    pub fn start_with(scratch: &Scratch, name: &str, keys: &KeySource, extra: &str) -> Sshd {
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (privilege separation dir)");
        let dir = scratch.join(name);
        fs::create_dir_all(&dir).expect("create sshd dir");
        let host_key = dir.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key)
                .stdin(Stdio::null())
                .status()
                .expect("run ssh-keygen");
            assert!(status.success(), "ssh-keygen for the host key failed");
        }
        let port = free_port();
        let key_lines = match keys {
            KeySource::Command { program, args } => format!(
                "AuthorizedKeysFile none\nAuthorizedKeysCommand {} {}\nAuthorizedKeysCommandUser root\n",
                program.display(),
                args.join(" ")
            ),
            KeySource::File(file) => format!("AuthorizedKeysFile {}\n", file.display()),
            KeySource::FileAndCommand {
                file,
                program,
                args,
            } => format!(
                "AuthorizedKeysFile {}\nAuthorizedKeysCommand {} {}\nAuthorizedKeysCommandUser root\n",
                file.display(),
                program.display(),
                args.join(" ")
            ),
        };
        let config = format!(
            "ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile {pid}
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
MaxStartups 200
MaxSessions 200
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
{key_lines}{extra}
",
            host_key = host_key.display(),
            pid = dir.join("sshd.pid").display(),
        );
        let config_path = dir.join("sshd_config");
        fs::write(&config_path, config).expect("write sshd_config");
        let mut daemon = scratch.spawn(
            name,
            Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config_path),
        );
        let up = wait_until(Duration::from_secs(10), || {
            !daemon.is_running() || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        }) && daemon.is_running();
        assert!(up, "sshd did not start; log:\n{}", daemon.log_tail(30));
        Sshd {
            port,
            config: config_path,
            daemon,
        }
    }

    /// Everything sshd logged so far (it runs with `-e` and `LogLevel VERBOSE`).
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// Runs `ssh USER@127.0.0.1 COMMAND` with only `key`, non-interactively.
    pub fn ssh(&self, key: &SshKey, user: &str, command: &str) -> Output {
        ssh_command(self.port, key, user, command)
            .output()
            .expect("run ssh (openssh-client)")
    }

    /// Whether `key` can log in as `user` (runs `true`; a login whose shell refuses the session,
    /// such as nologin, still counts as authenticated: see [`Login`]).
    pub fn login(&self, key: &SshKey, user: &str) -> Login {
        let out = self.ssh(key, user, "echo nodegate-login-ok");
        Login::from_output(&out)
    }

    /// Wall time of one `ssh USER@127.0.0.1 true` login.
    pub fn time_login(&self, key: &SshKey, user: &str) -> Duration {
        let started = Instant::now();
        let out = self.ssh(key, user, "true");
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }
}

/// The outcome of a login attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Authenticated and the command ran.
    Succeeded,
    /// Authenticated, but the account's shell refused the session (nologin).
    AuthenticatedButNoShell,
    /// sshd refused the key (`Permission denied (publickey)`).
    Refused,
    /// Anything else (connection problems), with ssh's stderr.
    Failed(String),
}

impl Login {
    fn from_output(out: &Output) -> Login {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() && stdout.contains("nodegate-login-ok") {
            Login::Succeeded
        } else if stderr.contains("Permission denied") {
            Login::Refused
        } else if stdout.contains("account is currently not available")
            || stderr.contains("account is currently not available")
        {
            Login::AuthenticatedButNoShell
        } else {
            Login::Failed(format!("exit {:?}: {stderr}", out.status.code()))
        }
    }
}

/// The ssh client command the tests use: no config, only the given key, no host key checks,
/// never a prompt.
pub fn ssh_command(port: u16, key: &SshKey, user: &str, command: &str) -> Command {
    ssh_command_with(&[], port, key, user, command)
}

/// [`ssh_command`] with a pseudo-terminal forced (`-tt`), for a live session on a
/// [`crate::terminal::Terminal`]: sshd gives the session a tty of its own, as for an interactive
/// login, and what is written to that tty on the node shows on the test's terminal.
pub fn ssh_tty_command(port: u16, key: &SshKey, user: &str, command: &str) -> Command {
    ssh_command_with(&["-tt"], port, key, user, command)
}

fn ssh_command_with(
    options: &[&str],
    port: u16,
    key: &SshKey,
    user: &str,
    command: &str,
) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(options)
        .args(["-F", "/dev/null", "-i"])
        .arg(&key.private)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(command)
        .stdin(Stdio::null());
    cmd
}
