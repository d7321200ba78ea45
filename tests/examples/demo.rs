//! The product doing its main job on a self-contained setup: a real etcd + kube-apiserver, a
//! node whose real sshd asks `authorized-keys-cmd`, and an operator using `keyctl` and `ssh`;
//! then node-exec, the fallback when SSH cannot help, on a real kubelet with containerd: a host
//! shell, a container entered as a chosen user, and a refusal.
//!
//! Run with `scripts/demo` (it installs and builds what is needed first). Everything it starts
//! listens on 127.0.0.1 only and is stopped and removed when it ends. The operators' commands
//! run as printed: `kubectl keyctl` and `kubectl node-exec` are kubectl plugins found on PATH,
//! as the packages install them.

use std::fs::{File, TryLockError};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::kubelet::{Kubelet, LOCK_FILE};
use nodegate_testkit::process::{KillOnDrop, Scratch, wait_until};
use nodegate_testkit::sshd::{KeySource, Login, RootOwnedDir, Sshd, ssh_command, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin, workspace_root};

/// The API-only node of the SSH part.
const NODE: &str = "node1";
/// The group that packaging/rbac/node-exec-operator.yaml binds.
const NODE_EXEC_OPERATORS: &str = "nodegate-node-exec-operators";
/// Where node-exec's helper pods run (packaging/node-exec-namespace.yaml).
const HELPER_NAMESPACE: &str = "nodegate-system";
/// The namespace and name of the pod to enter.
const APPS: &str = "shop";
const POD: &str = "web";
/// The hostname of the stand-in host.
const HOST_NAME: &str = "demo-host";

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
    let workstation = Workstation::new();
    let alice = Operator::new(&cluster, &workstation, "alice", &[NODE_EXEC_OPERATORS]);
    let bob = Operator::new(&cluster, &workstation, "bob", &[]);

    ssh_part(&cluster, &alice, &bob);
    node_exec_part(&cluster, &alice, &bob);

    step("Done: everything started here is stopped and removed");
}

/// keyctl and ssh: grant, log in, list, log in while the API server is down, revoke.
fn ssh_part(cluster: &Cluster, alice: &Operator, bob: &Operator) {
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
}

/// node-exec on a real kubelet: a refusal, a host shell, a container entered as a chosen user.
fn node_exec_part(cluster: &Cluster, alice: &Operator, bob: &Operator) {
    step(
        "When SSH cannot help (sshd down, no address to reach, a container to enter as a chosen \
         user): node-exec, through a short-lived privileged pod on the node",
    );
    wait_for_the_kubelet_slot();
    let started = Instant::now();
    let kubelet = Kubelet::start(cluster);
    let node = kubelet.node_name();
    println!(
        "   a real kubelet 1.20 with containerd joined as node {node}, Ready after {:.0} s; its \
         only image is {} (busybox with users alice and bob): no registry is reachable here",
        started.elapsed().as_secs_f64(),
        kubelet.image()
    );
    let root = workspace_root();
    let manifests = [
        "packaging/node-exec-namespace.yaml",
        "packaging/rbac/node-exec-operator.yaml",
    ];
    let mut apply = vec!["apply"];
    let paths: Vec<String> = manifests
        .iter()
        .map(|m| root.join(m).display().to_string())
        .collect();
    for path in &paths {
        apply.extend(["-f", path]);
    }
    let applied = cluster.kubectl(&apply);
    show(
        &format!("admin$ kubectl apply -f {}", manifests.join(" -f ")),
        &applied,
    );
    assert!(applied.status.success(), "kubectl apply failed");
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {APPS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: exec, namespace: {APPS}}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [get, list]}}
- {{apiGroups: [""], resources: [pods/exec], verbs: [create]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: exec, namespace: {APPS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: exec}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: {NODE_EXEC_OPERATORS}}}]
"#
    ));
    println!(
        "   alice is in group {NODE_EXEC_OPERATORS}, which that manifest binds, and a Role in \
         namespace {APPS} lets the group exec into its pods (get pods, create pods/exec); bob \
         has neither"
    );
    cluster.wait_for_default_service_account(APPS);
    cluster.wait_for_default_service_account(HELPER_NAMESPACE);
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {POD}, namespace: {APPS}}}
spec:
  nodeName: {node}
  hostNetwork: true
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 0
  containers:
  - name: app
    image: {image}
    imagePullPolicy: Never
    command: [sleep, "3600"]
"#,
        image = kubelet.image(),
    ));
    kubelet.wait_pod_running(cluster, APPS, POD, Duration::from_secs(120));
    println!("   pod {APPS}/{POD} runs on {node} (container app: sleep 3600, as root)");
    // Never the machine's PID 1: "the host" is a process of our own in the node's namespaces.
    let host = kubelet.spawn_in_node(
        "stand-in-host",
        &["unshare", "--uts", "--mount", "--fork"],
        &format!("hostname {HOST_NAME}; exec sleep 3600"),
    );
    let settings = alice.configure_node_exec(kubelet.image());
    println!("   alice's ~/.config/nodegate/node-exec.toml (the helper image is on the node):");
    for line in settings.lines() {
        println!("     {line}");
    }

    step(
        "bob has no node-exec role: refused before any pod is created, told which role to ask for",
    );
    let watch = PodWatch::start(cluster, HELPER_NAMESPACE);
    let out = bob.node_exec(&[
        &format!("pod/{POD}"),
        "-n",
        APPS,
        "--user",
        "alice",
        "--",
        "id",
    ]);
    let created = watch.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains("refused before creating anything")
            && stderr.contains("node-exec-operator"),
        "bob was not refused as expected"
    );
    println!(
        "   admin$ kubectl get pods -n {HELPER_NAMESPACE} --watch-only -o name  (while bob ran it)"
    );
    assert!(
        created.is_empty(),
        "bob's node-exec created pods: {created}"
    );
    println!("     (nothing: no pod was created)");

    step(&format!(
        "alice gets a root shell on node {node}'s host (one command here; without -- CMD, a \
         login shell)"
    ));
    println!(
        "   (a real node's host is its PID 1, --host-pid's default; this demo never touches this \
         machine's PID 1, so its host is a stand-in: process {} in the kubelet's PID namespace, \
         with its own hostname {HOST_NAME})",
        host.pid
    );
    let out = alice.node_exec(&[
        node,
        "--host-pid",
        &host.pid.to_string(),
        "--",
        "sh",
        "-c",
        "hostname; id",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with(&format!("{HOST_NAME}\nuid=0(root)")),
        "the host shell did not run as root on the stand-in host"
    );
    let left = cluster.kubectl(&["get", "pods", "-n", HELPER_NAMESPACE]);
    show(
        &format!("admin$ kubectl get pods -n {HELPER_NAMESPACE}  (the helper pod is gone)"),
        &left,
    );
    assert!(left.stdout.is_empty(), "a helper pod was left behind");

    step(&format!(
        "alice enters pod {APPS}/{POD}'s container as user alice: docker exec -u, for any runtime"
    ));
    let out = alice.node_exec(&[
        &format!("pod/{POD}"),
        "-n",
        APPS,
        "--user",
        "alice",
        "--",
        "sh",
        "-c",
        "id; ps",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("uid=1000(alice) gid=1000(alice)"),
        "the container was not entered as alice"
    );
}

/// Only one kubelet may run on a machine at a time (`Kubelet::start` waits for [`LOCK_FILE`]
/// without a word): waits for the slot here, saying why and for how long.
fn wait_for_the_kubelet_slot() {
    let Ok(lock) = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
    else {
        return; // Kubelet::start reports it
    };
    if let Err(TryLockError::WouldBlock) = lock.try_lock() {
        println!(
            "   another kubelet runs on this machine (e.g. scripts/test): waiting for it to end"
        );
        let waiting = Instant::now();
        let _ = lock.lock();
        println!("   waited {:.0} s", waiting.elapsed().as_secs_f64());
    }
    // Dropping `lock` lets Kubelet::start take it.
}

/// `kubectl get pods --watch-only` in a namespace: which pods appeared while it ran.
struct PodWatch(KillOnDrop);

impl PodWatch {
    fn start(cluster: &Cluster, namespace: &str) -> PodWatch {
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cluster.admin_kubeconfig())
            .args(["get", "pods", "-n", namespace, "--watch-only", "-o", "name"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kubectl get pods --watch-only");
        // Let the watch begin before anything it should see can happen.
        std::thread::sleep(Duration::from_secs(1));
        PodWatch(KillOnDrop::new(child))
    }

    /// Waits a moment for late events, then ends the watch and returns what it saw.
    fn finish(self) -> String {
        std::thread::sleep(Duration::from_millis(500));
        let (_, out) = self.0.wait_for_exit(Duration::ZERO);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The tools as a workstation has them: kubectl plugins on PATH (`kubectl-keyctl`,
/// `kubectl-node_exec`), as the .deb/.rpm and krew install them.
struct Workstation {
    /// Holds the plugins (removed when the demo ends, as every [`Scratch`]).
    _bin: Scratch,
    /// PATH with the plugins first.
    path: String,
}

impl Workstation {
    fn new() -> Self {
        let bin = Scratch::new("demo-workstation");
        for (tool, plugin) in [
            ("keyctl", "kubectl-keyctl"),
            ("node-exec", "kubectl-node_exec"),
        ] {
            symlink(workspace_bin(tool), bin.join(plugin)).expect("link the kubectl plugin");
        }
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
        );
        Workstation { _bin: bin, path }
    }
}

/// An operator at a workstation: own HOME with `~/.ssh/id_ed25519`, own kubeconfig.
struct Operator {
    name: &'static str,
    home: Scratch,
    key: nodegate_testkit::sshd::SshKey,
    kubeconfig: PathBuf,
    path: String,
}

impl Operator {
    fn new(
        cluster: &Cluster,
        workstation: &Workstation,
        name: &'static str,
        groups: &[&str],
    ) -> Self {
        let home = Scratch::new(&format!("demo-{name}"));
        let ssh_dir = home.join(".ssh");
        std::fs::create_dir_all(&ssh_dir).expect("create ~/.ssh");
        let key = ssh_keygen(&ssh_dir, "id_ed25519");
        let kubeconfig = cluster.user_kubeconfig(name, groups, Validity::Current);
        Operator {
            name,
            home,
            key,
            kubeconfig,
            path: workstation.path.clone(),
        }
    }

    /// Writes `~/.config/nodegate/node-exec.toml` for a cluster without a registry; returns it.
    fn configure_node_exec(&self, image: &str) -> String {
        let settings = format!("image = \"{image}\"\nimage-pull-policy = \"Never\"\n");
        self.home
            .write(".config/nodegate/node-exec.toml", &settings);
        settings
    }

    /// Runs `kubectl PLUGIN ARGS` as this operator and shows it with its output.
    fn kubectl_plugin(&self, plugin: &str, args: &[&str]) -> Output {
        let out = Command::new("kubectl")
            .arg(plugin)
            .args(args)
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .env_remove("NODEGATE_PREFIX")
            .env_remove("NODE_EXEC_CONFIG")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run kubectl {plugin}: {e}"));
        let shown: Vec<String> = args.iter().map(|a| quoted(a)).collect();
        show(
            &format!("{}$ kubectl {plugin} {}", self.name, shown.join(" ")),
            &out,
        );
        out
    }

    fn keyctl(&self, args: &[&str]) {
        self.kubectl_plugin("keyctl", args);
    }

    fn node_exec(&self, args: &[&str]) -> Output {
        self.kubectl_plugin("node-exec", args)
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

/// `arg` as a shell would need it typed (the demo's arguments hold no single quotes).
fn quoted(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/_.:=@%+,-".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{arg}'")
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
