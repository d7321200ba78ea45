//! Host keys through the API, against the real thing: `authorized-keys-cmd publish-host-keys`
//! with a node's own credentials on a real kube-apiserver (Node authorizer, NodeRestriction),
//! the real host keys of a real sshd, and a real ssh client that verifies them with
//! `KnownHostsCommand keyctl known-hosts %H` and `StrictHostKeyChecking yes`.
//!
//! Build the binaries first: `cargo build -p authorized-keys-cmd -p keyctl`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nodegate_core::host_keys::{HOST_KEY_PREFIX, NodeHostKeys};
use nodegate_testkit::output::Checked;
use nodegate_testkit::process::Scratch;
use nodegate_testkit::sshd::{KeySource, RootOwnedDir, SshKey, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

/// The shared cluster with the shipped roles applied and alice bound to the granter role.
fn cluster() -> &'static Cluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = Cluster::shared();
    READY.get_or_init(|| {
        cluster.apply_shipped(&[
            "packaging/rbac/keyctl-granter.yaml",
            "packaging/rbac/keyctl-viewer.yaml",
        ]);
        cluster.bind_cluster_role("hostkeys-alice-granter", "nodegate-keyctl-granter", "alice");
    });
    cluster
}

fn alice() -> PathBuf {
    cluster().user_kubeconfig("alice", &["people"], Validity::Current)
}

/// The host-key annotations of a Node.
fn published(node: &str) -> BTreeMap<String, String> {
    cluster()
        .node_annotations(node)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{HOST_KEY_PREFIX}/")))
        .collect()
}

fn resource_version(node: &str) -> String {
    cluster().kubectl_ok(&[
        "get",
        "node",
        node,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

/// `TYPE BASE64` of a `.pub` file (its comment dropped), as published.
fn pub_value(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read .pub");
    let fields: Vec<&str> = text.split_whitespace().take(2).collect();
    fields.join(" ")
}

fn keygen(path: &Path, kind: &str, bits: Option<&str>) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path.with_extension("pub"));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "root@test-node"]);
    if let Some(bits) = bits {
        cmd.args(["-b", bits]);
    }
    let status = cmd
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(status.success(), "ssh-keygen -t {kind}");
}

/// A node of the test cluster: its Node, its own credentials and config, and a real sshd whose
/// AuthorizedKeysCommand is authorized-keys-cmd and whose host keys live in `host_keys`.
struct Node {
    name: String,
    scratch: Scratch,
    config: PathBuf,
    host_keys: PathBuf,
    sshd: Option<Sshd>,
}

impl Node {
    /// Creates Node `name`; with `sshd`, starts one with ed25519 and ECDSA host keys (and an
    /// ed25519 host certificate with `certificate`).
    fn new(name: &str, sshd: bool, certificate: bool) -> Node {
        let cluster = cluster();
        cluster.create_node(name);
        let scratch = Scratch::new(&format!("hostkeys-{name}"));
        let kubeconfig = cluster.node_kubeconfig(name, Validity::Current);
        let config = scratch.write(
            "authorized-keys-cmd.toml",
            format!(
                "kubeconfig = \"{}\"\ncache = \"{}\"\n",
                kubeconfig.display(),
                scratch.join("grants-cache.sqlite").display()
            ),
        );
        // Sshd::start_with keeps its files (and the host keys) in scratch/sshd.
        let host_keys = scratch.join("sshd");
        std::fs::create_dir_all(&host_keys).expect("create the sshd dir");
        keygen(&host_keys.join("ssh_host_ed25519_key"), "ed25519", None);
        keygen(&host_keys.join("ssh_host_ecdsa_key"), "ecdsa", Some("256"));
        let mut extra = format!(
            "HostKey {}\n",
            host_keys.join("ssh_host_ecdsa_key").display()
        );
        if certificate {
            let ca = scratch.join("host_ca");
            keygen(&ca, "ed25519", None);
            let status = Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(&ca)
                .args(["-h", "-I", name, "-n"])
                .arg(format!("{name},{name}.k8s"))
                .arg(host_keys.join("ssh_host_ed25519_key.pub"))
                .stdin(Stdio::null())
                .status()
                .expect("run ssh-keygen -s");
            assert!(status.success(), "ssh-keygen -s (host certificate)");
            extra.push_str(&format!(
                "HostCertificate {}\n",
                host_keys.join("ssh_host_ed25519_key-cert.pub").display()
            ));
        }
        let mut node = Node {
            name: name.to_owned(),
            scratch,
            config,
            host_keys,
            sshd: None,
        };
        if sshd {
            let dir = RootOwnedDir::new("hostkeys");
            let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
            // The dir must outlive sshd; it is removed when the test process ends.
            std::mem::forget(dir);
            node.sshd = Some(Sshd::start_with(
                &node.scratch,
                "sshd",
                &KeySource::authorized_keys_cmd(program, &node.config),
                &extra,
            ));
        }
        node
    }

    fn port(&self) -> u16 {
        self.sshd.as_ref().expect("a node with sshd").port
    }

    /// `authorized-keys-cmd --config CONFIG [ARGS...] publish-host-keys --host-key-dir DIR`.
    fn publish_with(&self, args: &[&str], dir: &Path) -> Checked {
        Checked::run(
            Command::new(workspace_bin("authorized-keys-cmd"))
                .arg("--config")
                .arg(&self.config)
                .args(args)
                .arg("publish-host-keys")
                .arg("--host-key-dir")
                .arg(dir)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
    }

    fn publish(&self) -> Checked {
        self.publish_with(&[], &self.host_keys)
    }

    /// What this node's key files say should be published.
    fn expected(&self) -> BTreeMap<String, String> {
        let mut expected = BTreeMap::new();
        for (file, name) in [
            ("ssh_host_ed25519_key.pub", "ssh-ed25519"),
            ("ssh_host_ecdsa_key.pub", "ecdsa-sha2-nistp256"),
            ("ssh_host_rsa_key.pub", "ssh-rsa"),
            ("ssh_host_ed25519_key-cert.pub", "ssh-ed25519-cert"),
        ] {
            let path = self.host_keys.join(file);
            if path.exists() {
                expected.insert(format!("{HOST_KEY_PREFIX}/{name}"), pub_value(&path));
            }
        }
        expected
    }

    /// Grants `key` to root on this node for an hour, with keyctl as alice.
    fn grant(&self, key: &SshKey) {
        let pub_file = self.scratch.write("grant.pub", format!("{}\n", key.public));
        keyctl(&[
            "grant",
            &self.name,
            "--key",
            pub_file.to_str().expect("a UTF-8 path"),
            "--user",
            "root",
            "--expires",
            "1h",
        ])
        .ok();
    }
}

/// `keyctl --kubeconfig ALICE ARGS...`.
fn keyctl(args: &[&str]) -> Checked {
    Checked::run(
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(alice())
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("NODEGATE_PREFIX")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
}

/// The `KnownHostsCommand` value: keyctl, alice's kubeconfig, `known-hosts [EXTRA] %H`.
fn known_hosts_command(extra: &str) -> String {
    format!(
        "{} --kubeconfig {} known-hosts {extra} %H",
        workspace_bin("keyctl").display(),
        alice().display()
    )
}

/// A real ssh that trusts only what `KnownHostsCommand` prints, and refuses anything else.
fn strict_ssh(key: &SshKey, known_hosts_command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(&key.private)
        .args([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg("-o")
        .arg(format!("KnownHostsCommand={known_hosts_command}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// ssh to the node's sshd on 127.0.0.1 with `HostKeyAlias ALIAS` (what a per-node ssh-config
/// block writes), running `echo`. ssh's first query (ORDER, %I) names the host as typed,
/// 127.0.0.1, even with an alias: `--invocation %I` lets that one pass empty.
fn ssh_with_alias(node: &Node, key: &SshKey, alias: &str, extra: &[&str]) -> Checked {
    Checked::run(
        strict_ssh(key, &known_hosts_command("--invocation %I"))
            .args(["-o", &format!("HostKeyAlias={alias}"), "-p"])
            .arg(node.port().to_string())
            .args(extra)
            .arg("root@127.0.0.1")
            .arg("echo nodegate-login-ok"),
    )
}

/// Panics, showing everything, unless ssh logged in and ran the command.
#[track_caller]
fn logged_in(out: &Checked) {
    assert_eq!(out.ok().trim(), "nodegate-login-ok", "{out}");
}

#[test]
fn published_host_keys_let_strict_ssh_connect_and_nothing_else() {
    let node = Node::new("hk-node1", true, false);
    let key = ssh_keygen(node.scratch.path(), "operator");
    node.grant(&key);

    // Before publishing: nothing to verify with, so a strict ssh refuses, and keyctl says what to
    // install, printing nothing.
    let unknown = keyctl(&["known-hosts", &node.name]);
    unknown.code_is(1).says("nodegate-publish-host-keys");
    assert_eq!(unknown.stdout, "", "nothing on stdout");
    // ssh stops at the command's failure, showing its message: no prompt, no connection.
    let refused = ssh_with_alias(&node, &key, &node.name, &[]);
    assert!(!refused.success(), "{refused}");
    refused
        .says("KnownHostsCommand failed")
        .says("nodegate-publish-host-keys");
    assert!(!refused.stdout.contains("nodegate-login-ok"), "{refused}");

    // publish-host-keys with the node's own credentials publishes sshd's real host keys.
    let first = node.publish();
    first.ok();
    first.says("published host keys on Node hk-node1");
    assert_eq!(published(&node.name), node.expected());
    let version = resource_version(&node.name);
    node.publish().says("up to date");
    assert_eq!(
        resource_version(&node.name),
        version,
        "an unchanged node is not written"
    );

    // keyctl prints exactly the known_hosts lines, host field as ssh passed it.
    let lines = keyctl(&["known-hosts", &node.name]);
    let expected: Vec<String> = NodeHostKeys::scan(
        node.expected()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .keys
    .values()
    .map(|k| format!("{} {}", node.name, k.to_openssh()))
    .collect();
    assert_eq!(lines.ok(), format!("{}\n", expected.join("\n")));
    let bracketed = format!("[{}.k8s]:2222", node.name);
    let with_port = keyctl(&["known-hosts", "--domain", "k8s", &bracketed]);
    assert!(
        with_port
            .ok()
            .lines()
            .all(|l| l.starts_with(&format!("{bracketed} "))),
        "{with_port}"
    );

    // A strict ssh verifies the node with them: by HostKeyAlias (a per-node block)...
    logged_in(&ssh_with_alias(&node, &key, &node.name, &[]));
    // ...and as NODE.k8s on a non-22 port (a `Host *.k8s` block; ssh asks for [NODE.k8s]:PORT),
    // reaching sshd through a ProxyCommand as `keyctl proxy` would.
    let port = node.port().to_string();
    let through_proxy = Checked::run(
        strict_ssh(&key, &known_hosts_command("--domain k8s"))
            .args(["-o", "ProxyCommand=socat - TCP:127.0.0.1:%p", "-p", &port])
            .arg(format!("root@{}.k8s", node.name))
            .arg("echo nodegate-login-ok"),
    );
    logged_in(&through_proxy);

    // The keys of another node's sshd, published on that node, do not match this sshd: ssh
    // refuses with its host key error instead of asking.
    let other = Node::new("hk-node2", true, false);
    other.publish().ok();
    let wrong = ssh_with_alias(&node, &key, &other.name, &[]);
    assert!(!wrong.success(), "{wrong}");
    wrong.says("REMOTE HOST IDENTIFICATION HAS CHANGED");
    wrong.says("Host key verification failed");
}

#[test]
fn a_host_certificate_is_published_and_ssh_falls_back_to_the_plain_key() {
    let node = Node::new("hk-cert", true, true);
    let key = ssh_keygen(node.scratch.path(), "operator");
    node.grant(&key);
    node.publish().says("ssh-ed25519-cert");
    let annotations = published(&node.name);
    assert_eq!(annotations, node.expected());
    assert!(annotations.contains_key(&format!("{HOST_KEY_PREFIX}/ssh-ed25519-cert")));
    // Only plain keys are printed: no @cert-authority line derived from the node.
    let lines = keyctl(&["known-hosts", &node.name]);
    assert_eq!(lines.ok().lines().count(), 2, "{lines}");
    assert!(
        lines
            .ok()
            .lines()
            .all(|l| !l.starts_with('@') && !l.contains("-cert-v01@openssh.com")),
        "{lines}"
    );
    // sshd presents the certificate; ssh knows no CA, drops it and checks the certified key.
    logged_in(&ssh_with_alias(
        &node,
        &key,
        &node.name,
        &["-o", "HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com"],
    ));
}

#[test]
fn changed_and_removed_keys_are_updated_and_nothing_else_is_touched() {
    let node = Node::new("hk-change", false, false);
    keygen(
        &node.host_keys.join("ssh_host_rsa_key"),
        "rsa",
        Some("3072"),
    );
    // Someone else's annotations, and junk under the host-key prefix.
    let cluster = cluster();
    cluster.set_node_annotation(&node.name, "example.com/keep", Some("me"));
    cluster.set_node_annotation(
        &node.name,
        "ssh.nodegate.dev/g.root.0123456789abcdef",
        Some("not a grant, but not ours either"),
    );
    cluster.set_node_annotation(
        &node.name,
        &format!("{HOST_KEY_PREFIX}/ssh-dss"),
        Some("ssh-dss AAAA"),
    );
    node.publish().says("removed ssh-dss");
    assert_eq!(published(&node.name), node.expected());
    assert_eq!(published(&node.name).len(), 3);

    // A re-keyed ed25519 key and a removed RSA key.
    keygen(
        &node.host_keys.join("ssh_host_ed25519_key"),
        "ed25519",
        None,
    );
    std::fs::remove_file(node.host_keys.join("ssh_host_rsa_key.pub")).expect("remove rsa .pub");
    // Only what changed is set: the ECDSA key is as it was.
    node.publish().says("; set ssh-ed25519; removed ssh-rsa");
    assert_eq!(published(&node.name), node.expected());
    assert_eq!(published(&node.name).len(), 2);
    let all = cluster.node_annotations(&node.name);
    assert_eq!(all["example.com/keep"], "me");
    assert_eq!(
        all["ssh.nodegate.dev/g.root.0123456789abcdef"],
        "not a grant, but not ours either"
    );

    // A broken key file publishes nothing, and says which file.
    std::fs::write(
        node.host_keys.join("ssh_host_rsa_key.pub"),
        "ssh-rsa AAAA\n",
    )
    .expect("write");
    let before = published(&node.name);
    node.publish()
        .code_is(1)
        .says("ssh_host_rsa_key.pub")
        .says("nothing was published");
    assert_eq!(published(&node.name), before);

    // No key files at all: says which directory.
    let empty = node.scratch.join("empty");
    std::fs::create_dir_all(&empty).expect("create empty dir");
    node.publish_with(&[], &empty)
        .code_is(1)
        .says("no host public keys found in")
        .says(empty.to_str().expect("a UTF-8 path"));
}

#[test]
fn a_node_may_publish_only_on_its_own_node() {
    let node = Node::new("hk-own", false, false);
    cluster().create_node("hk-victim");
    let before = published("hk-victim");

    // Its own credentials with another node's name: refused before asking.
    node.publish_with(&["--node-name", "hk-victim"], &node.host_keys)
        .code_is(1)
        .says("differs from the client certificate");

    // Credentials that name no node of theirs: the API server refuses, and the message says
    // what it takes.
    let bob = cluster().user_kubeconfig("bob", &["people"], Validity::Current);
    let refused = node.publish_with(
        &[
            "--kubeconfig",
            bob.to_str().expect("a UTF-8 path"),
            "--node-name",
            "hk-victim",
        ],
        &node.host_keys,
    );
    refused
        .code_is(1)
        .says("403 Forbidden")
        .says("Node authorizer and NodeRestriction");
    assert_eq!(published("hk-victim"), before);

    // And its own Node works.
    node.publish().ok();
    assert_eq!(published(&node.name), node.expected());
}

#[test]
fn known_hosts_refuses_what_it_cannot_vouch_for() {
    let cluster = cluster();
    keyctl(&["known-hosts", "hk-no-such-node"])
        .code_is(1)
        .says("no node named hk-no-such-node");
    keyctl(&["known-hosts", "not_a/node"])
        .code_is(1)
        .says("not a valid node name");

    // Only invalid annotations: nothing printed, the reason given.
    cluster.create_node("hk-junk");
    cluster.set_node_annotation(
        "hk-junk",
        &format!("{HOST_KEY_PREFIX}/ssh-ed25519"),
        Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4 comment"),
    );
    let junk = keyctl(&["known-hosts", "hk-junk"]);
    junk.code_is(1).says("no valid SSH host key");
    assert_eq!(junk.stdout, "");

    // A grant prefix equal to the host-key prefix is refused.
    keyctl(&["--prefix", HOST_KEY_PREFIX, "list", "hk-junk"])
        .code_is(2)
        .says("where nodes publish their SSH host keys");
}
