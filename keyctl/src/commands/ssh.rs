//! `keyctl ssh NODE`: an ephemeral key, granted on the node for the session only, and the
//! system `ssh` with host keys from the API and keyctl's proxy; the grant is revoked when ssh
//! ends, on Ctrl-C, SIGTERM and SIGHUP.
//!
//! The decisions (ssh's argv, the remote command, the expiry cap, key files, exit codes) are
//! pure functions with unit tests; [`run`] only strings them together.

use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::{DateTime, SubsecRound as _, Utc};
use clap::Args;
use nodegate_core::{Expiry, Fingerprint, Grant, GrantKey, LoginUser, NodeGrants};

use crate::cli::{Connection, GrantArgs, NodeSelection};
use crate::commands::remove::{Choice, remove_from_node};
use crate::commands::ssh_config::{
    self, HOST_KEY_OPTIONS, Program, Via, identity_file_word, keyctl_words,
};
use crate::commands::{describe_expiry, grant};
use crate::events::{AuditTrail, GrantChange};
use crate::nodes::{self, describe_read_error};
use crate::session::Session;

/// The longest grant `keyctl ssh` makes: it is for one session, revoked at its end.
pub const MAX_EXPIRY: Duration = Duration::from_secs(12 * 3600);

/// How long ssh gets to end after a signal passed on to it, before it is killed.
const SSH_GRACE: Duration = Duration::from_secs(10);

/// How long the revoke may take before keyctl gives up on it (the expiry still ends it).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `keyctl ssh`.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The node.
    #[arg(value_name = "NODE")]
    pub node: String,
    /// The login user on the node.
    #[arg(
        short,
        long,
        short_alias = 'l',
        default_value = "root",
        value_name = "LOGIN"
    )]
    pub user: String,
    /// When the grant ends if keyctl cannot revoke it (it is revoked when ssh ends): a
    /// duration or a time, at most 12h.
    #[arg(short, long, default_value = "15m", value_name = "WHEN")]
    pub expires: String,
    /// Use your own key instead of an ephemeral one: the private key (its public key in
    /// PATH.pub) or the .pub file (the private key next to it, or in ssh-agent).
    #[arg(short, long, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// An option for ssh, as `ssh -o` takes it; repeatable. These come before keyctl's own
    /// options, so they win (ssh keeps the first value of each option).
    #[arg(short = 'o', long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,
    /// How keyctl proxy reaches the node's sshd (default: its own, auto).
    #[arg(long, value_enum, value_name = "HOW")]
    pub via: Option<Via>,
    /// Why; recorded in the grant and the node's events (default: "keyctl ssh session").
    #[arg(short, long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// No progress messages on stderr (errors still are).
    #[arg(short, long)]
    pub quiet: bool,
    /// The remote command. One word is a command line for the remote shell, as ssh takes it;
    /// several are a command and its arguments, each quoted so that it arrives as it is.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Everything ssh's command line depends on.
#[derive(Debug, Clone)]
pub struct SshPlan {
    /// The node (validated).
    pub node: String,
    /// The login user.
    pub user: String,
    /// `-i`, already escaped for ssh.
    pub identity: String,
    /// How ssh runs keyctl: quoted words (the absolute path of this binary, connection flags).
    pub keyctl: Vec<String>,
    /// `--via` for the proxy.
    pub via: Option<Via>,
    /// The caller's `-o` options, first.
    pub user_options: Vec<String>,
    /// The remote command line, if any.
    pub command: Option<String>,
}

/// ssh's arguments (without the program): the caller's options first, then keyctl's proxy,
/// host keys from the API only, no connection sharing, `--`, the node and the command.
pub fn ssh_argv(plan: &SshPlan) -> Vec<OsString> {
    let mut args: Vec<String> = vec![
        "-i".into(),
        plan.identity.clone(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-l".into(),
        plan.user.clone(),
    ];
    for option in &plan.user_options {
        args.extend(["-o".into(), option.clone()]);
    }
    let mut option =
        |name: &str, value: String| args.extend(["-o".into(), format!("{name}={value}")]);
    option(
        "ProxyCommand",
        ssh_config::proxy_command(&plan.keyctl, None, plan.via, &plan.node, "%p"),
    );
    option(
        "KnownHostsCommand",
        ssh_config::known_hosts_command(&plan.keyctl, None, "%H"),
    );
    option("HostKeyAlias", plan.node.clone());
    for (name, value) in HOST_KEY_OPTIONS {
        option(name, value.to_owned());
    }
    // A shared master connection would outlive the session and its grant.
    option("ControlMaster", "no".into());
    option("ControlPath", "none".into());
    args.push("--".into());
    args.push(plan.node.clone());
    args.extend(plan.command.clone());
    args.into_iter().map(OsString::from).collect()
}

/// The remote command line: one word as it is (a command line, as ssh takes it); several
/// quoted for a POSIX shell, so that `-- sh -c 'exit 7'` runs what it says.
pub fn remote_command(words: &[String]) -> Option<String> {
    match words {
        [] => None,
        [line] => Some(line.clone()),
        words => Some(
            words
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
        ),
    }
}

/// A word for a POSIX shell: as it is when safe, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@=+,-%".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The expiry of the session's grant: parsed as `keyctl grant` does, never permanent, never
/// past [`MAX_EXPIRY`].
pub fn session_expiry(text: &str, now: DateTime<Utc>) -> anyhow::Result<Expiry> {
    let expiry = Expiry::parse_user_input(text, now)?;
    let Some(at) = expiry.instant() else {
        bail!("--expires: keyctl ssh never grants without an expiry");
    };
    let cap = chrono::TimeDelta::from_std(MAX_EXPIRY).expect("12h fits");
    if at - now > cap {
        bail!(
            "--expires {text}: keyctl ssh grants for one session, at most {}; use keyctl grant for longer",
            humantime::format_duration(MAX_EXPIRY)
        );
    }
    if at <= now {
        bail!("--expires {text} is not in the future");
    }
    Ok(expiry)
}

/// For `--key PATH`: the file for ssh's `-i` and the public key file.
pub fn own_key_files(path: &Path) -> (PathBuf, PathBuf) {
    let text = path.as_os_str().to_string_lossy();
    if let Some(private) = text.strip_suffix(".pub") {
        let private = PathBuf::from(private);
        // Without the private key next to it, ssh takes the public key to pick an agent key.
        let identity = if private.exists() {
            private
        } else {
            path.to_owned()
        };
        (identity, path.to_owned())
    } else {
        let mut public = path.as_os_str().to_owned();
        public.push(".pub");
        (path.to_owned(), PathBuf::from(public))
    }
}

/// The exit code keyctl ssh ends with: ssh's (the remote command's, or 255 for ssh's own
/// failures), or 128 + the signal that ended ssh, as shells report it.
pub fn exit_code(status: &ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(255),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(255),
        (None, None) => 255,
    }
}

/// The grant keyctl ssh made, and only that one: a re-grant of the same key in the meantime
/// (by anyone) is left alone.
struct SessionGrant {
    user: LoginUser,
    fingerprint: Fingerprint,
    granted_at: DateTime<Utc>,
}

impl Choice for SessionGrant {
    fn takes_grant(&self, grant: &Grant) -> bool {
        grant.user == self.user
            && grant.key.fingerprint() == self.fingerprint
            && grant.granted_at == self.granted_at
    }
    fn takes_invalid(&self) -> bool {
        false
    }
}

/// An ephemeral key pair in a private directory (0700, key 0600), removed when dropped.
pub struct EphemeralKey {
    dir: tempfile::TempDir,
    /// The private key file.
    pub private: PathBuf,
    /// The public key file.
    pub public: PathBuf,
}

impl EphemeralKey {
    /// Makes a fresh ed25519 key. `comment` goes into the public key (and the grant).
    pub fn create(comment: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("keyctl-ssh-")
            .tempdir()
            .context("creating a private directory for the session key")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let mut key = ssh_key::PrivateKey::random(
            &mut ssh_key::rand_core::OsRng,
            ssh_key::Algorithm::Ed25519,
        )
        .context("making an ed25519 key")?;
        key.set_comment(comment);
        let private = dir.path().join("id_ed25519");
        let public = dir.path().join("id_ed25519.pub");
        let pem = key.to_openssh(ssh_key::LineEnding::LF)?;
        write_new(&private, pem.as_bytes(), 0o600)?;
        let line = key.public_key().to_openssh()?;
        write_new(&public, format!("{line}\n").as_bytes(), 0o600)?;
        Ok(Self {
            dir,
            private,
            public,
        })
    }

    /// The directory the key is in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Creates `path` (never an existing file) with `mode` from the start, and writes `data`.
fn write_new(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(data)?;
    file.sync_all()?;
    Ok(())
}

/// Progress and errors on stderr, never failing (after SIGHUP the terminal may be gone).
struct Say {
    quiet: bool,
}

impl Say {
    fn progress(&self, text: &str) {
        if !self.quiet {
            let _ = writeln!(std::io::stderr(), "keyctl: {text}");
        }
    }
    fn error(&self, text: &str) {
        let _ = writeln!(std::io::stderr(), "keyctl: error: {text}");
    }
}

/// The first signal keyctl got (0: none), and every signal, in order, for the task that runs
/// ssh: that task alone passes them on, and only while it has not reaped ssh, so a signal
/// never goes to a pid that ssh no longer holds.
struct Signals {
    got: AtomicI32,
    received: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<rustix::process::Signal>>,
}

/// Catches SIGINT, SIGTERM and SIGHUP from the start (so that none of them ends keyctl with
/// a grant in place), remembers the first, and queues each for [`run_ssh`].
fn catch_signals() -> anyhow::Result<Arc<Signals>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (sender, received) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Signals {
        got: AtomicI32::new(0),
        received: tokio::sync::Mutex::new(received),
    });
    for (kind, number) in [
        (SignalKind::interrupt(), rustix::process::Signal::INT),
        (SignalKind::terminate(), rustix::process::Signal::TERM),
        (SignalKind::hangup(), rustix::process::Signal::HUP),
    ] {
        let mut stream = signal(kind).context("catching signals")?;
        let shared = shared.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                let _ = shared.got.compare_exchange(
                    0,
                    number.as_raw(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
                let _ = sender.send(number);
            }
        });
    }
    Ok(shared)
}

/// Runs `keyctl ssh`; returns the exit code.
pub async fn run(connection: &Connection, args: &SshArgs) -> anyhow::Result<u8> {
    let say = Say { quiet: args.quiet };
    let node = ssh_config::validate_nodes(std::slice::from_ref(&args.node))?.remove(0);
    let user = LoginUser::new(&args.user).context("--user")?;
    let now = Utc::now().trunc_subsecs(0);
    let expiry = session_expiry(&args.expires, now)?;
    let keyctl = keyctl_words(
        &Program::Binary(std::env::current_exe().context("finding this binary's path")?),
        connection,
    )?;
    let own_key = args.key.as_deref().map(own_key_files);
    if let Some((identity, public)) = &own_key {
        identity_file_word(identity)?;
        if !public.exists() {
            bail!(
                "--key {}: no public key at {}",
                args.key.as_deref().unwrap_or(identity).display(),
                public.display()
            );
        }
    }
    for option in &args.ssh_options {
        if option.trim().is_empty() {
            bail!("--ssh-option: an empty option");
        }
    }

    let signals = catch_signals()?;

    let session = Session::connect(connection).await?;
    let caller = session.caller().await;
    // Access and the node first: a refusal or an unknown node before any key or grant exists.
    let target = NodeSelection {
        nodes: vec![node.clone()],
        selector: None,
    };
    let resolved = super::resolve_for_change(&session, &caller, &target, false, |_| true).await?;
    if let Some((_, error)) = resolved.missing.first() {
        bail!("node {node}: {}", describe_read_error(error));
    }
    let Some(meta) = resolved.found.get(&node) else {
        bail!("node {node} was not found");
    };

    // An unexpired grant of the operator's own key is theirs: used, and left in place.
    let existing = match &own_key {
        Some((_, public)) => {
            let (_, keys) = crate::keys::read_keys(Some(public.as_path()))?;
            let grants = NodeGrants::scan(&session.prefix, nodes::annotations(meta));
            grants
                .usable_for(&user, now)
                .find(|g| keys.iter().any(|k| k.fingerprint() == g.key.fingerprint()))
                .cloned()
        }
        None => None,
    };

    let interrupted = signals.got.load(Ordering::SeqCst);
    if interrupted != 0 {
        say.progress("interrupted; nothing was granted");
        return Ok(u8::try_from(128 + interrupted).unwrap_or(255));
    }

    let ephemeral = match &own_key {
        Some(_) => None,
        None => Some(EphemeralKey::create(&format!("keyctl-ssh@{node}"))?),
    };
    let (identity, public) = match (&ephemeral, &own_key) {
        (Some(key), _) => (key.private.clone(), key.public.clone()),
        (None, Some((identity, public))) => (identity.clone(), public.clone()),
        (None, None) => unreachable!("a key either way"),
    };

    let made = match &existing {
        Some(grant) => {
            say.progress(&format!(
                "{node} already has a grant of {} for {user} (expiry {}); using it and leaving it in place",
                grant.key.fingerprint(),
                grant.expiry
            ));
            None
        }
        None => {
            say.progress(&format!(
                "granting {} on {node} as {user} ({}, revoked when ssh ends)",
                if ephemeral.is_some() {
                    "an ephemeral key"
                } else {
                    "your key"
                },
                describe_expiry(&expiry, now)
            ));
            let grant_args = GrantArgs {
                target: target.clone(),
                key: Some(public.clone()),
                user: user.to_string(),
                expires: Some(args.expires.clone()),
                permanent: false,
                reason: Some(
                    args.reason
                        .clone()
                        .unwrap_or_else(|| "keyctl ssh session".to_owned()),
                ),
                dry_run: false,
            };
            let written = grant::write(&session, &grant_args).await?;
            let failure = written
                .outcomes
                .iter()
                .find_map(|o| o.result.as_ref().err());
            if let Some(error) = failure {
                bail!(
                    "granting on {node}: {}",
                    nodegate_cluster_client::render(error.as_ref())
                );
            }
            Some(written.grants)
        }
    };

    let status = if signals.got.load(Ordering::SeqCst) != 0 {
        say.progress("interrupted before ssh started");
        None
    } else {
        let plan = SshPlan {
            node: node.clone(),
            user: user.to_string(),
            identity: identity_file_word(&identity)?,
            keyctl,
            via: args.via,
            user_options: args.ssh_options.clone(),
            command: remote_command(&args.command),
        };
        say.progress(&format!("connecting to {node} as {user}"));
        Some(run_ssh(&plan, &signals, &say).await)
    };

    let revoked = match &made {
        Some(grants) => revoke(&session, &caller, &node, grants, &say).await,
        None => true,
    };
    drop(ephemeral);
    let code = match status {
        Some(Ok(status)) => exit_code(&status),
        Some(Err(error)) => {
            say.error(&format!("{error:#}"));
            255
        }
        None => u8::try_from(128 + signals.got.load(Ordering::SeqCst)).unwrap_or(255),
    };
    // ssh's code says how the session went; a grant left behind is said above, and turns a
    // clean exit into a failure.
    Ok(if code == 0 && !revoked { 1 } else { code })
}

/// Runs ssh with the terminal, stdin and stdout inherited; passes signals on (see
/// [`catch_signals`]) and kills it if it does not end within [`SSH_GRACE`] of one.
async fn run_ssh(plan: &SshPlan, signals: &Signals, say: &Say) -> anyhow::Result<ExitStatus> {
    let mut child = tokio::process::Command::new("ssh")
        .args(ssh_argv(plan))
        .kill_on_drop(true)
        .spawn()
        .context("running ssh (is the OpenSSH client installed?)")?;
    let mut received = signals.received.lock().await;
    // Set once a signal was passed on: from then ssh has SSH_GRACE to end.
    let mut grace_ends: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match grace_ends {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => return Ok(status?),
            Some(signal) = received.recv() => {
                // `id()` is None once `wait` has reaped ssh, and `wait` runs in this task only:
                // a pid that is Some here still belongs to ssh (at worst a zombie).
                if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    // ssh may have got it from the terminal too; once more does no harm.
                    let _ = rustix::process::kill_process(pid, signal);
                }
                grace_ends.get_or_insert_with(|| tokio::time::Instant::now() + SSH_GRACE);
            }
            () = grace => {
                say.error("ssh did not end after the signal; stopping it");
                let _ = child.start_kill();
                return Ok(child.wait().await?);
            }
        }
    }
}

/// Revokes the session's grant on `node`; says what happened, and returns whether no grant of
/// the session is left.
async fn revoke(session: &Session, caller: &str, node: &str, grants: &[Grant], say: &Say) -> bool {
    let work = async {
        let api = session.nodes();
        let trail = AuditTrail::new(session.client.clone(), caller, grant::hostname());
        let mut left = Vec::new();
        for grant in grants {
            let meta = api.get_metadata(node).await?;
            let choice = SessionGrant {
                user: grant.user.clone(),
                fingerprint: grant.key.fingerprint(),
                granted_at: grant.granted_at,
            };
            let removal = remove_from_node(
                &api,
                meta,
                &session.prefix,
                &choice,
                false,
                Some((&trail, GrantChange::Revoked)),
            )
            .await;
            left.extend(removal.refused.into_iter().map(|r| r.reason));
        }
        anyhow::Ok(left)
    };
    let outcome = tokio::time::timeout(REVOKE_TIMEOUT, work).await;
    let failure = match outcome {
        Ok(Ok(left)) if left.is_empty() => {
            say.progress(&format!("revoked the session's grant on {node}"));
            return true;
        }
        Ok(Ok(left)) => left.join("; "),
        Ok(Err(error)) => nodegate_cluster_client::render(error.as_ref()),
        Err(_) => format!(
            "no answer from the API server within {}",
            humantime::format_duration(REVOKE_TIMEOUT)
        ),
    };
    for grant in grants {
        say.error(&format!(
            "could not revoke the grant of {} on {node}: {failure}. It still ends by itself at its expiry ({}); revoke it now with: keyctl revoke {node} --fingerprint {}",
            grant.key.fingerprint(),
            grant.expiry,
            grant.key.fingerprint()
        ));
    }
    false
}

/// The public key line of a key file, for tests and messages.
pub fn public_key_line(path: &Path) -> anyhow::Result<GrantKey> {
    let text = std::fs::read_to_string(path)?;
    Ok(GrantKey::parse(text.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> SshPlan {
        SshPlan {
            node: "node1".into(),
            user: "root".into(),
            identity: "/tmp/keyctl-ssh-x/id_ed25519".into(),
            keyctl: vec!["/usr/bin/keyctl".into(), "--context".into(), "'a b'".into()],
            via: Some(Via::Direct),
            user_options: vec!["Port=2222".into()],
            command: remote_command(&["sh".into(), "-c".into(), "exit 7".into()]),
        }
    }

    #[test]
    fn ssh_gets_the_proxy_the_api_host_keys_and_the_callers_options_first() {
        let argv: Vec<String> = ssh_argv(&plan())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let expected = [
            "-i",
            "/tmp/keyctl-ssh-x/id_ed25519",
            "-o",
            "IdentitiesOnly=yes",
            "-l",
            "root",
            "-o",
            "Port=2222",
            "-o",
            "ProxyCommand=/usr/bin/keyctl --context 'a b' proxy --via direct node1 %p",
            "-o",
            "KnownHostsCommand=/usr/bin/keyctl --context 'a b' known-hosts %H",
            "-o",
            "HostKeyAlias=node1",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "ControlMaster=no",
            "-o",
            "ControlPath=none",
            "--",
            "node1",
            "sh -c 'exit 7'",
        ];
        assert_eq!(argv, expected);
        let mut bare = plan();
        bare.command = None;
        bare.via = None;
        let argv: Vec<String> = ssh_argv(&bare)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(argv.last().unwrap(), "node1");
        assert!(
            argv.contains(
                &"ProxyCommand=/usr/bin/keyctl --context 'a b' proxy node1 %p".to_owned()
            )
        );
    }

    #[test]
    fn remote_commands_keep_their_words() {
        assert_eq!(remote_command(&[]), None);
        assert_eq!(
            remote_command(&["ls -l | wc -l".into()]).unwrap(),
            "ls -l | wc -l"
        );
        assert_eq!(
            remote_command(&["echo".into(), "it's".into(), "".into(), "a b".into()]).unwrap(),
            r"echo 'it'\''s' '' 'a b'"
        );
    }

    #[test]
    fn session_expiries_are_short_and_never_permanent() {
        let now: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        assert_eq!(
            session_expiry("15m", now).unwrap(),
            Expiry::At("2026-12-01T10:15:00Z".parse().unwrap())
        );
        assert!(session_expiry("12h", now).is_ok());
        let long = session_expiry("13h", now).unwrap_err().to_string();
        assert!(long.contains("at most 12h"), "{long}");
        assert!(session_expiry("2026-12-01T09:00:00Z", now).is_err());
        assert!(session_expiry("soon", now).is_err());
    }

    #[test]
    fn own_keys_are_found_by_either_file() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("id_ed25519");
        let public = dir.path().join("id_ed25519.pub");
        assert_eq!(own_key_files(&private), (private.clone(), public.clone()));
        // Only the .pub there: ssh picks the agent's key by it.
        assert_eq!(own_key_files(&public), (public.clone(), public.clone()));
        std::fs::write(&private, "x").unwrap();
        assert_eq!(own_key_files(&public), (private.clone(), public.clone()));
    }

    #[test]
    fn exit_codes_pass_through() {
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(exit_code(&ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(&ExitStatus::from_raw(255 << 8)), 255);
        assert_eq!(exit_code(&ExitStatus::from_raw(2)), 130);
    }

    #[test]
    fn ephemeral_keys_are_private_and_gone_when_dropped() {
        let key = EphemeralKey::create("keyctl-ssh@node1").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(key.dir()), 0o700);
        assert_eq!(mode(&key.private), 0o600);
        let public = std::fs::read_to_string(&key.public).unwrap();
        assert!(public.starts_with("ssh-ed25519 "), "{public}");
        assert!(public.trim_end().ends_with(" keyctl-ssh@node1"), "{public}");
        public_key_line(&key.public).unwrap();
        let private = std::fs::read_to_string(&key.private).unwrap();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let dir = key.dir().to_owned();
        drop(key);
        assert!(!dir.exists());
    }
}
