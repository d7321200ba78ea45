//! `keyctl ssh` and `keyctl ssh-config` against a real kube-apiserver with RBAC and a real sshd
//! whose `AuthorizedKeysCommand` is authorized-keys-cmd: black-box, through the binaries users
//! run, and the system OpenSSH client.
//!
//! Tests that run now reach sshd on its loopback port with the caller's own `-o` options (which
//! come first, so they win over keyctl's `ProxyCommand` and `KnownHostsCommand`): the grant,
//! the login through authorized-keys-cmd and the revoke are all real. The tests marked
//! `needs keyctl proxy and known-hosts` use keyctl's own proxy and host keys from the API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodegate_core::{AnnotationPrefix, GrantKey, NodeGrants};
use nodegate_testkit::output::Checked;
use nodegate_testkit::process::{KillOnDrop, Scratch, wait_until};
use nodegate_testkit::sshd::{KeySource, RootOwnedDir, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

/// The shared cluster with the shipped roles applied and users bound to them.
fn cluster() -> &'static Cluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = Cluster::shared();
    READY.get_or_init(|| {
        cluster.apply_shipped(&[
            "packaging/rbac/keyctl-granter.yaml",
            "packaging/rbac/keyctl-viewer.yaml",
        ]);
        for (binding, role, user) in [
            ("ssh-alice-granter", "nodegate-keyctl-granter", "ssh-alice"),
            ("ssh-victor-viewer", "nodegate-keyctl-viewer", "ssh-victor"),
        ] {
            cluster.bind_cluster_role(binding, role, user);
        }
    });
    cluster
}

fn kubeconfig(user: &str) -> PathBuf {
    cluster().user_kubeconfig(user, &["people"], Validity::Current)
}

/// A node with its own sshd (authorized-keys-cmd with the node's own credentials), a
/// known_hosts file with sshd's host key under the node's name, and a private TMPDIR for
/// keyctl (so that a key left behind would show).
struct SshNode {
    name: String,
    scratch: Scratch,
    sshd: Sshd,
    known_hosts: PathBuf,
    tmp: PathBuf,
}

impl SshNode {
    fn new(name: &str) -> Self {
        let cluster = cluster();
        cluster.create_node(name);
        let scratch = Scratch::new(&format!("kssh-{name}"));
        let node_kubeconfig = cluster.node_kubeconfig(name, Validity::Current);
        // No freshness window: a revoke shows at the very next login.
        let config = scratch.write(
            "authorized-keys-cmd.toml",
            format!(
                "kubeconfig = \"{}\"\ncache = \"{}\"\nfreshness = \"0s\"\n",
                node_kubeconfig.display(),
                scratch.join("cache.sqlite").display()
            ),
        );
        let dir = RootOwnedDir::new("kssh");
        let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
        std::mem::forget(dir);
        let sshd = Sshd::start(
            &scratch,
            "sshd",
            &KeySource::authorized_keys_cmd(program, &config),
        );
        let host_key = std::fs::read_to_string(scratch.join("sshd/ssh_host_ed25519_key.pub"))
            .expect("read sshd's host key");
        let known_hosts = scratch.write("known_hosts", format!("{name} {}", host_key.trim()));
        let tmp = scratch.join("tmp");
        std::fs::create_dir_all(&tmp).expect("create TMPDIR");
        SshNode {
            name: name.to_owned(),
            scratch,
            sshd,
            known_hosts,
            tmp,
        }
    }

    /// `-o` options that send ssh to this sshd and trust its host key from the file, in place
    /// of keyctl's proxy and known-hosts (which come after them, so these win).
    fn loopback_options(&self) -> Vec<String> {
        vec![
            "-o".into(),
            "ProxyCommand=none".into(),
            "-o".into(),
            "HostName=127.0.0.1".into(),
            "-o".into(),
            format!("Port={}", self.sshd.port),
            "-o".into(),
            format!("KnownHostsCommand=/bin/cat {}", self.known_hosts.display()),
            "-o".into(),
            "BatchMode=yes".into(),
        ]
    }

    /// `keyctl --kubeconfig K ssh NODE [loopback options] ARGS... [-- COMMAND...]`.
    fn keyctl_ssh(&self, user: &str, args: &[&str], command: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_bin("keyctl"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig(user))
            .arg("ssh")
            .arg(&self.name)
            .args(self.loopback_options())
            .args(args);
        if !command.is_empty() {
            cmd.arg("--").args(command);
        }
        cmd.env("TMPDIR", &self.tmp)
            .env_remove("KUBECONFIG")
            .env_remove("NODEGATE_PREFIX")
            .stdin(Stdio::null());
        cmd
    }

    fn keyctl(&self, user: &str, args: &[&str]) -> Checked {
        Checked::run(
            Command::new(workspace_bin("keyctl"))
                .arg("--kubeconfig")
                .arg(kubeconfig(user))
                .args(args)
                .env_remove("KUBECONFIG")
                .env_remove("NODEGATE_PREFIX")
                .stdin(Stdio::null()),
        )
    }

    fn grants(&self) -> NodeGrants {
        let annotations = cluster().node_annotations(&self.name);
        NodeGrants::scan(
            &AnnotationPrefix::default(),
            annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
    }

    #[track_caller]
    fn assert_nothing_left(&self) {
        let grants = self.grants();
        assert!(
            grants.valid.is_empty() && grants.invalid.is_empty(),
            "grants left on {}: {grants:?}",
            self.name
        );
        let left: Vec<_> = std::fs::read_dir(&self.tmp)
            .expect("read TMPDIR")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left in TMPDIR: {left:?}");
    }

    /// How many logins sshd accepted so far.
    fn accepted(&self) -> usize {
        self.sshd
            .log()
            .matches("Accepted publickey for root")
            .count()
    }
}

#[test]
fn exit_code_passes_through_and_no_grant_is_left() {
    let node = SshNode::new("kssh-exit");
    let out = Checked::run(&mut node.keyctl_ssh("ssh-alice", &[], &["sh", "-c", "exit 7"]));
    out.code_is(7)
        .says("granting an ephemeral key on kssh-exit as root")
        .says("connecting to kssh-exit")
        .says("revoked the session's grant on kssh-exit");
    assert_eq!(node.accepted(), 1, "{}", node.sshd.log());
    node.assert_nothing_left();

    // Standard output is the remote command's alone; several words arrive as they are.
    let out = Checked::run(&mut node.keyctl_ssh(
        "ssh-alice",
        &["--quiet"],
        &["printf", "%s|", "a b", "it's"],
    ));
    assert_eq!(out.ok(), "a b|it's|");
    assert_eq!(out.stderr, "", "{out}");
    node.assert_nothing_left();

    // The grant was made and revoked through keyctl's own code path: both are in the events.
    let json = cluster().kubectl_ok(&[
        "get",
        "events",
        "--all-namespaces",
        "--field-selector",
        "involvedObject.name=kssh-exit,involvedObject.kind=Node",
        "-o",
        "json",
    ]);
    assert!(json.contains("\"SSHKeyGranted\""), "{json}");
    assert!(json.contains("\"SSHKeyRevoked\""), "{json}");
}

/// Starts `sleep 60` on the node through keyctl ssh, sends `signal` to keyctl once the login
/// happened, and checks that keyctl ends promptly with nothing left behind.
fn interrupted_session_leaves_no_grant(name: &str, signal: &str) {
    let node = SshNode::new(name);
    let child = node
        .keyctl_ssh("ssh-alice", &[], &["sleep", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keyctl ssh");
    let mut child = KillOnDrop::new(child);
    let logged_in = wait_until(Duration::from_secs(30), || {
        node.accepted() == 1 || child.has_exited()
    });
    assert!(
        logged_in && !child.has_exited(),
        "no login; sshd log:\n{}",
        node.sshd.log()
    );
    assert_eq!(node.grants().valid.len(), 1, "the session's grant is there");
    // Give ssh time to start the remote command.
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let (exited, output) = child.wait_for_exit(Duration::from_secs(30));
    let out = Checked::of(format!("keyctl ssh (sent SIG{signal})"), output);
    assert!(exited, "keyctl ssh did not end after SIG{signal}: {out}");
    assert!(!out.success(), "{out}");
    out.says("revoked the session's grant");
    node.assert_nothing_left();
}

#[test]
fn ctrl_c_during_a_long_command_leaves_no_grant() {
    interrupted_session_leaves_no_grant("kssh-int", "INT");
}

#[test]
fn sighup_during_a_long_command_leaves_no_grant() {
    interrupted_session_leaves_no_grant("kssh-hup", "HUP");
}

#[test]
fn sigterm_during_a_long_command_leaves_no_grant() {
    interrupted_session_leaves_no_grant("kssh-term", "TERM");
}

#[test]
fn a_user_without_the_grant_role_is_refused_before_anything_is_made() {
    let node = SshNode::new("kssh-refused");
    let out = Checked::run(&mut node.keyctl_ssh("ssh-victor", &[], &["true"]));
    out.code_is(1)
        .says("ssh-victor may not patch nodes")
        .says("nodegate-keyctl-granter");
    assert!(!out.stderr.contains("granting"), "{out}");
    assert_eq!(node.accepted(), 0);
    node.assert_nothing_left();
}

#[test]
fn an_unknown_node_is_a_clear_error() {
    let node = SshNode::new("kssh-known");
    let mut cmd = Command::new(workspace_bin("keyctl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig("ssh-alice"))
        .args(["ssh", "kssh-no-such-node", "--", "true"])
        .env("TMPDIR", &node.tmp)
        .stdin(Stdio::null());
    let out = Checked::run(&mut cmd);
    out.code_is(1).says("kssh-no-such-node: no such node");
    node.assert_nothing_left();
    // Not a node name at all: refused before the API is asked.
    let mut cmd = Command::new(workspace_bin("keyctl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig("ssh-alice"))
        .args(["ssh", "Node1;id", "--", "true"]);
    Checked::run(&mut cmd).code_is(1).says("is not a node name");
    // Too long for a session.
    let out = Checked::run(&mut node.keyctl_ssh("ssh-alice", &["--expires", "2d"], &["true"]));
    out.code_is(1).says("at most 12h");
    node.assert_nothing_left();
}

#[test]
fn own_key_is_granted_for_the_session_and_an_existing_grant_is_left_alone() {
    let node = SshNode::new("kssh-own");
    let key = ssh_keygen(node.scratch.path(), "operator");
    let key_path = key.private.display().to_string();
    let out = Checked::run(&mut node.keyctl_ssh(
        "ssh-alice",
        &["--key", &key_path],
        &["sh", "-c", "echo hi; exit 3"],
    ));
    out.code_is(3).says("granting your key on kssh-own");
    assert_eq!(out.stdout, "hi\n");
    node.assert_nothing_left();

    // The same key by its .pub file, already granted for 2h: used and kept.
    let public = format!("{key_path}.pub");
    node.keyctl(
        "ssh-alice",
        &["grant", "kssh-own", "--key", &public, "--expires", "2h"],
    )
    .ok();
    let out = Checked::run(&mut node.keyctl_ssh("ssh-alice", &["--key", &public], &["true"]));
    out.code_is(0).says("leaving it in place");
    let grants = node.grants();
    assert_eq!(grants.valid.len(), 1, "{grants:?}");
    let fingerprint = GrantKey::parse(&key.public).unwrap().fingerprint();
    assert_eq!(grants.valid[0].key.fingerprint(), fingerprint);
}

/// Writes an ssh config file: `preamble`, then the block keyctl ssh-config printed.
fn ssh_config_file(node: &SshNode, preamble: &str, block: &str) -> PathBuf {
    node.scratch
        .write("ssh_config", format!("{preamble}\n{block}"))
}

fn ssh_with(config: &Path, args: &[&str]) -> Checked {
    Checked::run(
        Command::new("ssh")
            .arg("-F")
            .arg(config)
            .args(args)
            .stdin(Stdio::null()),
    )
}

fn scp_with(config: &Path, from: &str, to: &str) -> Checked {
    Checked::run(
        Command::new("scp")
            .arg("-F")
            .arg(config)
            .args(["-q", from, to])
            .stdin(Stdio::null()),
    )
}

/// scp both ways and a remote exit code through `config`, as root on `host`.
fn scp_both_ways_and_exit_code(node: &SshNode, config: &Path, host: &str) {
    let out = ssh_with(config, &[host, "sh -c 'echo on $(hostname); exit 5'"]);
    out.code_is(5);
    assert!(out.stdout.starts_with("on "), "{out}");

    let local = node.scratch.write(
        "payload",
        (0..50_000).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
    );
    let remote = node.scratch.join("remote-copy");
    scp_with(
        config,
        &local.display().to_string(),
        &format!("{host}:{}", remote.display()),
    )
    .ok();
    assert_eq!(
        std::fs::read(&remote).expect("the copy"),
        std::fs::read(&local).expect("the payload")
    );
    let back = node.scratch.join("back");
    scp_with(
        config,
        &format!("{host}:{}", remote.display()),
        &back.display().to_string(),
    )
    .ok();
    assert_eq!(
        std::fs::read(&back).expect("the copy back"),
        std::fs::read(&local).expect("the payload")
    );
    // rsync -e ssh, on the same block.
    let synced = node.scratch.join("rsync-copy");
    Checked::run(
        Command::new("rsync")
            .arg("-e")
            .arg(format!("ssh -F {}", config.display()))
            .arg(format!("{host}:{}", remote.display()))
            .arg(&synced)
            .stdin(Stdio::null()),
    )
    .ok();
    assert_eq!(
        std::fs::read(&synced).expect("the rsync copy"),
        std::fs::read(&local).expect("the payload")
    );
    // sftp, on the same block (scp above speaks SFTP too, as OpenSSH 9 does by default).
    let batch = node.scratch.write(
        "sftp-batch",
        format!(
            "get {} {}\n",
            remote.display(),
            node.scratch.join("sftp-copy").display()
        ),
    );
    Checked::run(
        Command::new("sftp")
            .arg("-F")
            .arg(config)
            .arg("-b")
            .arg(&batch)
            .arg(host)
            .stdin(Stdio::null()),
    )
    .ok();
    assert_eq!(
        std::fs::read(node.scratch.join("sftp-copy")).expect("the sftp copy"),
        std::fs::read(&local).expect("the payload")
    );
}

#[test]
fn an_ssh_config_block_serves_plain_ssh_and_scp() {
    let node = SshNode::new("kssh-config");
    let key = ssh_keygen(node.scratch.path(), "laptop");
    let public = format!("{}.pub", key.private.display());
    node.keyctl(
        "ssh-alice",
        &["grant", "kssh-config", "--key", &public, "--expires", "10m"],
    )
    .ok();

    let block = node
        .keyctl(
            "ssh-alice",
            &["ssh-config", "kssh-config", "--absolute-path"],
        )
        .ok()
        .to_owned();
    let keyctl = workspace_bin("keyctl");
    let kubeconfig = kubeconfig("ssh-alice");
    for line in [
        "Host kssh-config".to_owned(),
        "    HostName kssh-config".to_owned(),
        "    HostKeyAlias kssh-config".to_owned(),
        "    User root".to_owned(),
        format!(
            "    ProxyCommand {} --kubeconfig {} proxy %h %p",
            keyctl.display(),
            kubeconfig.display()
        ),
        format!(
            "    KnownHostsCommand {} --kubeconfig {} known-hosts %H",
            keyctl.display(),
            kubeconfig.display()
        ),
        "    StrictHostKeyChecking yes".to_owned(),
        "    UserKnownHostsFile /dev/null".to_owned(),
    ] {
        assert!(block.lines().any(|l| l == line), "no {line:?} in:\n{block}");
    }

    // On this branch: the block as printed, with sshd's address and host key given first
    // (ssh keeps the first value of each option), so its User, HostKeyAlias and host key
    // policy are what ssh and scp use.
    let preamble = format!(
        "Host kssh-config\n    HostName 127.0.0.1\n    Port {}\n    ProxyCommand none\n    KnownHostsCommand /bin/cat {}\n    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n",
        node.sshd.port,
        node.known_hosts.display(),
        key.private.display()
    );
    let config = ssh_config_file(&node, &preamble, &block);
    scp_both_ways_and_exit_code(&node, &config, "kssh-config");

    // A host key other than the node's is refused, not offered for trust.
    let other = ssh_keygen(node.scratch.path(), "not-the-host-key");
    let wrong = node
        .scratch
        .write("wrong_known_hosts", format!("kssh-config {}", other.public));
    let preamble = preamble.replace(
        &node.known_hosts.display().to_string(),
        &wrong.display().to_string(),
    );
    let config = ssh_config_file(&node, &preamble, &block);
    let out = ssh_with(&config, &["kssh-config", "true"]);
    out.code_is(255).says("Host key verification failed");

    node.keyctl("ssh-alice", &["revoke", "kssh-config", "--all"])
        .ok();
}

/// Publishes the test sshd's host key on the node as its package's unit would.
fn publish_host_keys(node: &SshNode) {
    let node_kubeconfig = cluster().node_kubeconfig(&node.name, Validity::Current);
    let config = node.scratch.write(
        "publish.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n",
            node_kubeconfig.display(),
            node.scratch.join("publish-cache.sqlite").display()
        ),
    );
    Checked::run(
        Command::new(workspace_bin("authorized-keys-cmd"))
            .arg("--config")
            .arg(&config)
            .arg("publish-host-keys")
            .arg("--host-key-dir")
            .arg(node.scratch.join("sshd")),
    )
    .ok();
}

/// Gives the node the loopback address, so that `keyctl proxy --via direct` reaches its sshd.
fn advertise_loopback(node: &SshNode) {
    cluster().patch_node_status(
        &node.name,
        &serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
    );
}

#[test]
fn the_pattern_block_with_keyctls_proxy_and_host_keys_serves_ssh_and_scp() {
    let node = SshNode::new("kssh-pattern");
    publish_host_keys(&node);
    advertise_loopback(&node);
    let key = ssh_keygen(node.scratch.path(), "laptop");
    let public = format!("{}.pub", key.private.display());
    node.keyctl(
        "ssh-alice",
        &[
            "grant",
            "kssh-pattern",
            "--key",
            &public,
            "--expires",
            "10m",
        ],
    )
    .ok();
    let block = node
        .keyctl(
            "ssh-alice",
            &[
                "ssh-config",
                "--domain",
                "k8s",
                "--via",
                "direct",
                "--absolute-path",
            ],
        )
        .ok()
        .to_owned();
    let preamble = format!(
        "Host *.k8s\n    Port {}\n    IdentityFile {}\n    IdentitiesOnly yes\n    BatchMode yes\n",
        node.sshd.port,
        key.private.display()
    );
    let config = ssh_config_file(&node, &preamble, &block);
    scp_both_ways_and_exit_code(&node, &config, "kssh-pattern.k8s");
    node.keyctl("ssh-alice", &["revoke", "kssh-pattern", "--all"])
        .ok();
}

#[test]
fn keyctl_ssh_with_its_own_proxy_and_host_keys() {
    let node = SshNode::new("kssh-own-proxy");
    publish_host_keys(&node);
    advertise_loopback(&node);
    let mut cmd = Command::new(workspace_bin("keyctl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig("ssh-alice"))
        .args(["ssh", "kssh-own-proxy", "--via", "direct"])
        .args([
            "-o",
            &format!("Port={}", node.sshd.port),
            "-o",
            "BatchMode=yes",
        ])
        .args(["--", "sh", "-c", "exit 7"])
        .env("TMPDIR", &node.tmp)
        .stdin(Stdio::null());
    Checked::run(&mut cmd).code_is(7);
    node.assert_nothing_left();
}
