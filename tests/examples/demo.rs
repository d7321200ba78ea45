//! The product doing its main job on a self-contained setup: a real etcd + kube-apiserver, a
//! node whose real sshd asks `authorized-keys-cmd`, and an operator using `keyctl` and `ssh`.
//!
//! Run with `scripts/demo` (it installs and builds what is needed first). Everything it starts
//! listens on 127.0.0.1 only and is stopped and removed when it ends.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::process::{Scratch, wait_until};
use nodegate_testkit::sshd::{KeySource, Login, RootOwnedDir, Sshd, ssh_command, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin, workspace_root};

const NODE: &str = "node1";

fn main() {
    step(
        "Start a local control plane: etcd + kube-apiserver 1.20 with RBAC and the Node authorizer",
    );
    let cluster = Cluster::start();
    println!("   API server at {}", cluster.server());
    cluster.apply(&read(
        &workspace_root().join("packaging/rbac/keyctl-granter.yaml"),
    ));
    cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "alice-granter",
        "--clusterrole=nodegate-keyctl-granter",
        "--user=alice",
    ]);
    println!(
        "   alice is bound to the shipped ClusterRole nodegate-keyctl-granter; bob has no role"
    );
    let alice = Operator::new(&cluster, "alice");
    let bob = Operator::new(&cluster, "bob");

    step(&format!(
        "Node {NODE}: a real sshd whose AuthorizedKeysCommand is authorized-keys-cmd, reading \
         with {NODE}'s own kubelet credentials"
    ));
    cluster.create_node(NODE);
    let node = Scratch::new("demo-node");
    let config = node.write(
        "authorized-keys-cmd.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n",
            cluster.node_kubeconfig(NODE, Validity::Current).display(),
            node.join("grants-cache.sqlite").display()
        ),
    );
    // sshd only runs a command whose path is root-owned and not writable by others.
    let libexec = RootOwnedDir::new("demo");
    let program = libexec.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start(
        &node,
        "sshd",
        &KeySource::authorized_keys_cmd(program.clone(), &config),
    );
    println!(
        "   sshd on 127.0.0.1:{}: AuthorizedKeysFile none; AuthorizedKeysCommand {} %u %f",
        sshd.port,
        program.display()
    );

    step("Before any grant, alice's key is refused");
    alice.ssh(&sshd, "hostname");

    step("bob has no role: keyctl checks first and says which role to ask for");
    bob.keyctl(&["grant", NODE, "--expires", "2h"]);

    step("alice grants her key (~/.ssh/id_ed25519.pub) to root on node1 for two hours");
    alice.keyctl(&[
        "grant",
        NODE,
        "--expires",
        "2h",
        "--reason",
        "demo: disk full",
    ]);

    // A node trusts a cached "no key" for 100 ms (a bound on API reads caused by unknown keys);
    // this script is faster than any person between a refused login and the next one.
    std::thread::sleep(Duration::from_millis(150));
    step("alice logs in with plain OpenSSH");
    alice.ssh(&sshd, "echo logged in as $(id -un)");

    step("Anyone with read access sees who may log in, as whom and until when");
    alice.keyctl(&["list", NODE]);
    show(
        "admin$ kubectl get events -n kube-system  (the audit trail keyctl records)",
        &cluster.kubectl(&["get", "events", "-n", "kube-system"]),
    );

    step("The API server goes down: the node answers from its SQLite cache, logins keep working");
    cluster.stop_apiserver();
    alice.ssh(&sshd, "echo still logged in as $(id -un)");
    cluster.start_apiserver();

    step("alice revokes the grant; the node stops accepting the key within its freshness window");
    alice.keyctl(&["revoke", NODE, "--user", "root"]);
    let revoked = Instant::now();
    let refused = wait_until(Duration::from_secs(20), || {
        alice.login(&sshd) == Login::Refused
    });
    assert!(
        refused,
        "the revoked key still logs in; sshd log:\n{}",
        sshd.log()
    );
    println!(
        "   refused {:.1} s after the revoke (freshness window: 5 s)",
        revoked.elapsed().as_secs_f64()
    );
    alice.ssh(&sshd, "hostname");

    step("Done: everything started here is stopped and removed");
}

/// An operator at a workstation: own HOME with `~/.ssh/id_ed25519`, own kubeconfig.
struct Operator {
    name: &'static str,
    home: Scratch,
    key: nodegate_testkit::sshd::SshKey,
    kubeconfig: std::path::PathBuf,
}

impl Operator {
    fn new(cluster: &Cluster, name: &'static str) -> Self {
        let home = Scratch::new(&format!("demo-{name}"));
        let ssh_dir = home.join(".ssh");
        std::fs::create_dir_all(&ssh_dir).expect("create ~/.ssh");
        let key = ssh_keygen(&ssh_dir, "id_ed25519");
        let kubeconfig = cluster.user_kubeconfig(name, &["operators"], Validity::Current);
        Operator {
            name,
            home,
            key,
            kubeconfig,
        }
    }

    fn keyctl(&self, args: &[&str]) {
        let out = Command::new(workspace_bin("keyctl"))
            .args(args)
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("NODEGATE_PREFIX")
            .stdin(Stdio::null())
            .output()
            .expect("run keyctl");
        let shown: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains(' ') {
                    format!("\"{a}\"")
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        show(&format!("{}$ keyctl {}", self.name, shown.join(" ")), &out);
    }

    fn ssh(&self, sshd: &Sshd, command: &str) {
        let out = ssh_command(sshd.port, &self.key, "root", command)
            .output()
            .expect("run ssh");
        show(
            &format!(
                "{}$ ssh -p {} root@127.0.0.1 '{command}'",
                self.name, sshd.port
            ),
            &out,
        );
    }

    fn login(&self, sshd: &Sshd) -> Login {
        sshd.login(&self.key, "root")
    }
}

fn step(what: &str) {
    println!("\n== {what}");
}

fn show(command: &str, out: &Output) {
    println!("   {command}");
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("     {line}");
    }
    if !out.status.success() {
        println!("     [exit {}]", out.status.code().unwrap_or(-1));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
