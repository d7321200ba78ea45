//! The product doing its main job on a self-contained setup: a real etcd + kube-apiserver, a
//! node whose real sshd asks `authorized-keys-cmd` and whose `nodegate-agent` watches its Node,
//! and operators using `keyctl` and `ssh`: a live interactive session on a pseudo-terminal, who
//! is logged in (`keyctl sessions`, from the agent's Events), logins while the API server is
//! down, and a revoke that warns the live session, ends it and refuses the next login; then
//! node-exec, the fallback when SSH cannot help, on a real kubelet with containerd: a host
//! shell, a container entered as a chosen user, and a refusal; then `keyctl ssh` to that node
//! through the API server, since its advertised address does not answer, with its host key taken
//! from its Node object.
//!
//! Run with `scripts/demo` (it installs and builds what is needed first). Everything it starts
//! listens on 127.0.0.1 only and is stopped and removed when it ends. The operators' commands
//! run as printed: `kubectl keyctl` and `kubectl node-exec` are kubectl plugins found on PATH,
//! as the packages install them.

use std::cell::RefCell;
use std::fs::{File, TryLockError};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::kubelet::{Kubelet, LOCK_FILE};
use nodegate_testkit::process::{KillOnDrop, Scratch, wait_until};
use nodegate_testkit::sshd::{
    KeySource, RootOwnedDir, Sshd, ssh_command, ssh_keygen, ssh_tty_command,
};
use nodegate_testkit::terminal::Terminal;
use nodegate_testkit::{Cluster, Validity, workspace_bin, workspace_root};

/// The API-only node of the SSH part.
const NODE: &str = "node1";
/// The `[agent]` table of that node's configuration file: a short grace between the warning
/// and the end of a session (5 s by default), the rest the defaults.
const AGENT_SETTINGS: &str = "end_grace = \"3s\"";
/// The group that packaging/rbac/node-exec-operator.yaml binds.
const NODE_EXEC_OPERATORS: &str = "nodegate-node-exec-operators";
/// Where node-exec's helper pods run (packaging/node-exec-namespace.yaml).
const HELPER_NAMESPACE: &str = "nodegate-system";
/// The namespace and name of the pod to enter.
const APPS: &str = "shop";
const POD: &str = "web";
/// The hostname of the stand-in host.
const HOST_NAME: &str = "demo-host";
/// The group that packaging/rbac/keyctl-proxy.yaml binds in the helper namespace.
const PROXY_USERS: &str = "nodegate-keyctl-proxy-users";
/// What the kubelet's node advertises: on loopback, but nothing listens there (refused at once),
/// as a laptop gets nothing from a node's VPC address.
const SILENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

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
    let alice = Operator::new(
        &cluster,
        &workstation,
        "alice",
        &[NODE_EXEC_OPERATORS, PROXY_USERS],
    );
    let bob = Operator::new(&cluster, &workstation, "bob", &[]);
    let carol = Operator::new(&cluster, &workstation, "carol", &[]);

    ssh_part(&cluster, &alice, &bob, &carol);
    let kubelet = node_exec_part(&cluster, &alice, &bob);
    ssh_through_the_api_part(&cluster, &alice, &kubelet);
    drop(kubelet);

    step("Done: everything started here is stopped and removed");
}

/// keyctl, ssh and nodegate-agent: grant, a live session, list, who is logged in, logins while
/// the API server is down, revoke: the live session warned and ended, the next login refused.
fn ssh_part(cluster: &Cluster, alice: &Operator, bob: &Operator, carol: &Operator) {
    step(&format!(
        "Node {NODE}: a real sshd whose AuthorizedKeysCommand is authorized-keys-cmd, and \
         nodegate-agent, both with {NODE}'s own kubelet credentials"
    ));
    cluster.create_node(NODE);
    let node = Scratch::new("demo-node");
    let config = node.write(
        "authorized-keys-cmd.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n\n[agent]\n{AGENT_SETTINGS}\n",
            cluster.node_kubeconfig(NODE, Validity::Current).display(),
            node.join("grants-cache.sqlite").display()
        ),
    );
    // sshd only runs a command whose path is root-owned and not writable by others.
    let libexec = RootOwnedDir::new("demo");
    let program = libexec.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start_with(
        &node,
        "sshd",
        &KeySource::authorized_keys_cmd(program.clone(), &config),
        "ExposeAuthInfo yes\n",
    );
    println!(
        "   sshd on 127.0.0.1:{}: AuthorizedKeysFile none; AuthorizedKeysCommand {} --config {} \
         %u %f; ExposeAuthInfo yes (each session's key, for the agent)",
        sshd.port,
        program.display(),
        config.display()
    );
    println!("   {}:", config.display());
    for line in read(&config).lines() {
        println!("{}", format!("     {line}").trim_end());
    }
    let agent_bin = workspace_bin("nodegate-agent");
    let mut agent = node.spawn(
        "nodegate-agent",
        Command::new(&agent_bin).arg("--config").arg(&config),
    );
    println!(
        "   node1# {} --config {} &  (as nodegate-agent.service runs it, which runs it as user \
         nodegate with three capabilities; here as root)",
        agent_bin.display(),
        config.display()
    );
    let node_side = NodeSide {
        program: &program,
        config: &config,
        sshd: &sshd,
    };
    let live = wait_until(Duration::from_secs(20), || node_side.watch_live().is_some());
    assert!(
        live && agent.is_running(),
        "nodegate-agent's watch did not become live; its log:\n{}",
        agent.log_tail(30)
    );
    println!(
        "     {}",
        agent.log().lines().next().unwrap_or_default().trim()
    );
    node_side.show_watch();

    step("Before any grant, alice's key is refused");
    let out = alice.ssh(&sshd, "hostname");
    expect_refused(&out);

    step("bob has no role: keyctl checks first and says which role to ask for");
    let out = bob.keyctl(&["grant", NODE, "--expires", "2h"]);
    expect(&out, Some(1), "", "bob's grant");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nodegate-keyctl-granter"),
        "bob's refusal does not name the role"
    );

    step("alice grants her key (~/.ssh/id_ed25519.pub) to root on node1 for two hours");
    let out = alice.keyctl(&[
        "grant",
        NODE,
        "--expires",
        "2h",
        "--reason",
        "demo: disk full",
    ]);
    assert!(out.status.success(), "alice's grant failed");
    // The agent's watch writes the grant to the node's cache as it sees it, well within a
    // second: wait for the login path's answer (what sshd will ask) rather than racing it.
    let granted = wait_until(Duration::from_secs(10), || {
        node_side.keys_for_root().contains(&alice.key_blob())
    });
    assert!(granted, "node1's login path does not answer with the grant");

    step(
        "alice logs in with plain OpenSSH: an interactive shell in a terminal window, which stays open",
    );
    let mut session = alice.open_session(&sshd, "in a terminal window of hers, 100x24");

    step("Anyone with read access sees who may log in, as whom and until when");
    let out = alice.keyctl(&["list", NODE]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && listed.contains(&alice.key_fingerprint())
            && listed.contains("demo: disk full"),
        "keyctl list does not show alice's grant"
    );
    let events = cluster.kubectl(&["get", "events", "-n", "kube-system"]);
    show(
        "admin$ kubectl get events -n kube-system  (the audit trail keyctl records)",
        &events,
    );
    assert!(
        String::from_utf8_lossy(&events.stdout).contains("SSHKeyGranted"),
        "no SSHKeyGranted event"
    );

    step(&format!(
        "carol, on call with the shipped viewer roles only, sees who is logged in on {NODE} now: \
         the agent recorded alice's login as an Event on the Node"
    ));
    let viewer = "packaging/rbac/keyctl-viewer.yaml";
    cluster.apply_shipped(&[viewer]);
    println!("   admin$ kubectl apply -f {viewer}");
    cluster.bind_cluster_role("carol-viewer", "nodegate-keyctl-viewer", carol.name);
    println!(
        "   admin$ kubectl create clusterrolebinding carol-viewer \
         --clusterrole=nodegate-keyctl-viewer --user=carol  (Nodes)"
    );
    cluster.kubectl_ok(&[
        "create",
        "rolebinding",
        "carol-session-viewer",
        "--namespace=default",
        "--role=nodegate-keyctl-session-viewer",
        "--user=carol",
    ]);
    println!(
        "   admin$ kubectl create rolebinding carol-session-viewer --namespace=default \
         --role=nodegate-keyctl-session-viewer --user=carol  (Events in default)"
    );
    let fingerprint = alice.key_fingerprint();
    let mut logged_in = None;
    let recorded = wait_until(Duration::from_secs(20), || {
        logged_in = carol.sessions().into_iter().find(|s| {
            s["state"] == "logged-in"
                && s["user"] == "root"
                && s["fingerprints"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| *f == fingerprint.as_str()))
        });
        logged_in.is_some()
    });
    assert!(
        recorded,
        "keyctl sessions does not show alice logged in; the agent's log:\n{}",
        agent.log_tail(30)
    );
    let session_id = logged_in.map(|s| s["session"].clone()).unwrap_or_default();
    let out = carol.keyctl(&["sessions", NODE]);
    assert!(out.status.success(), "carol's keyctl sessions failed");

    step(
        "The API server goes down: the node answers from its SQLite cache, logins keep working; \
         the agent keeps what it last saw, and alice's session goes on",
    );
    cluster.stop_apiserver();
    println!(
        "   (kube-apiserver stopped: the agent's watch is down; it keeps the grants it last saw, \
         and would see a revoke made now once its watch is back)"
    );
    let mut second = alice.open_session(&sshd, "a second terminal window");
    println!("   alice's first terminal:");
    session.run("echo still here, $(id -un)", "still here, root");
    cluster.start_apiserver();
    println!("   (kube-apiserver started again)");
    let resumed = wait_until(Duration::from_secs(30), || node_side.watch_live().is_some());
    assert!(
        resumed,
        "nodegate-agent's watch did not resume; its log:\n{}",
        agent.log_tail(30)
    );
    node_side.show_watch();
    println!("   alice's second terminal:");
    second.end("exit");

    step(
        "alice revokes the grant: her live session is warned on its terminal and ended \
         end_grace (3 s) later, and the next login is refused at once",
    );
    let before = session.terminal.screen().len();
    let out = alice.keyctl(&["revoke", NODE, "--user", "root"]);
    assert!(out.status.success(), "alice's revoke failed");
    let revoked = Instant::now();
    let warned = wait_until(Duration::from_secs(20), || {
        session.since(before).contains("nodegate")
    });
    let warned_after = revoked.elapsed();
    assert!(
        warned,
        "no warning on alice's terminal; it showed:\n{}\nthe agent's log:\n{}",
        session.since(before),
        agent.log_tail(30)
    );
    let ended = wait_until(Duration::from_secs(20), || !session.is_live());
    let ended_after = revoked.elapsed();
    assert!(
        ended,
        "alice's session still runs 20 s after the warning; the agent's log:\n{}",
        agent.log_tail(30)
    );
    // ssh's last words may still be on their way to the screen.
    session
        .terminal
        .wait_for("closed by remote host", Duration::from_secs(5));
    println!("   alice's terminal meanwhile:");
    for line in session.since(before).trim_matches('\n').lines() {
        println!("     | {line}");
    }
    println!(
        "   warned {:.1} s after the revoke; the session ended {:.1} s after the warning",
        warned_after.as_secs_f64(),
        (ended_after - warned_after).as_secs_f64()
    );
    let out = alice.ssh(&sshd, "hostname");
    expect_refused(&out);
    println!(
        "   (refused at the first try: the agent wrote the revoke to node1's cache as it saw it)"
    );

    step("carol sees that the agent ended alice's session because its grant was revoked");
    // Both of alice's sessions: the one the agent ended, and the one she ended with exit.
    let shown_ended = wait_until(Duration::from_secs(20), || {
        let sessions = carol.sessions();
        sessions.iter().any(|s| {
            s["session"] == session_id
                && s["state"] != "logged-in"
                && s["ended_because"] == "revoked"
        }) && sessions
            .iter()
            .any(|s| s["session"] != session_id && s["state"] == "logged-out")
    });
    assert!(
        shown_ended,
        "keyctl sessions does not show alice's session ended (revoked) and her second one \
         logged out; the agent's log:\n{}",
        agent.log_tail(30)
    );
    let out = carol.keyctl(&["sessions", NODE]);
    assert!(out.status.success(), "carol's keyctl sessions failed");
    println!("   (the second: her second terminal, opened while the API server was down)");
    assert!(
        agent.is_running(),
        "nodegate-agent ended:\n{}",
        agent.log_tail(30)
    );
    node.stop(&mut agent, Duration::from_secs(10));
}

/// node-exec on a real kubelet: a refusal, a host shell, a container entered as a chosen user.
/// Returns the kubelet, for [`ssh_through_the_api_part`].
fn node_exec_part(cluster: &Cluster, alice: &Operator, bob: &Operator) -> Kubelet {
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
    let watch = PodWatch::start(cluster, HELPER_NAMESPACE, &["-o", "name"]);
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
    kubelet
}

/// `kubectl keyctl ssh` to node localhost, whose advertised address does not answer: through the
/// API server (a helper pod on the node), its host key checked against what the node published
/// on its Node object; no grant and no pod left afterwards.
fn ssh_through_the_api_part(cluster: &Cluster, alice: &Operator, kubelet: &Kubelet) {
    let node = kubelet.node_name();
    step(&format!(
        "Node {node} gets an sshd too: AuthorizedKeysCommand authorized-keys-cmd, reading \
         {node}'s grants with {node}'s own node credentials"
    ));
    let scratch = Scratch::new("demo-node-localhost");
    let config = scratch.write(
        "authorized-keys-cmd.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n",
            cluster.node_kubeconfig(node, Validity::Current).display(),
            scratch.join("grants-cache.sqlite").display()
        ),
    );
    let libexec = RootOwnedDir::new("demo-localhost");
    let program = libexec.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start(
        &scratch,
        "sshd",
        &KeySource::authorized_keys_cmd(program.clone(), &config),
    );
    println!(
        "   sshd on 127.0.0.1:{}: AuthorizedKeysFile none; AuthorizedKeysCommand {} --config {} \
         %u %f",
        sshd.port,
        program.display(),
        config.display()
    );

    step(&format!(
        "{node} publishes its SSH host key on its own Node object, with its own credentials (the \
         node package's nodegate-publish-host-keys unit runs this at boot)"
    ));
    let host_keys = scratch.join("sshd");
    let out = Command::new(&program)
        .arg("--config")
        .arg(&config)
        .arg("publish-host-keys")
        .arg("--host-key-dir")
        .arg(&host_keys)
        .stdin(Stdio::null())
        .output()
        .expect("run authorized-keys-cmd publish-host-keys");
    show(
        &format!(
            "{node}# authorized-keys-cmd --config {} publish-host-keys --host-key-dir {}",
            config.display(),
            host_keys.display()
        ),
        &out,
    );
    assert!(out.status.success(), "publish-host-keys failed");
    let host_key = read(&host_keys.join("ssh_host_ed25519_key.pub"));
    let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
    let jsonpath = r"jsonpath={.metadata.annotations.host-keys\.nodegate\.dev/ssh-ed25519}";
    let published = cluster.kubectl(&["get", "node", node, "-o", jsonpath]);
    show(
        &format!("admin$ kubectl get node {node} -o '{jsonpath}'"),
        &published,
    );
    assert_eq!(
        String::from_utf8_lossy(&published.stdout),
        host_key.join(" "),
        "the published host key is not sshd's"
    );

    step(&format!(
        "{node} advertises {SILENT_ADDRESS}, where nothing answers on port {}: on a real cluster, \
         the node's VPC address, which a laptop cannot reach",
        sshd.port
    ));
    kubelet.set_addresses(cluster, &[("InternalIP", &SILENT_ADDRESS.to_string())]);
    let jsonpath = r#"jsonpath={range .status.addresses[*]}{.type} {.address}{"\n"}{end}"#;
    let addresses = cluster.kubectl(&["get", "node", node, "-o", jsonpath]);
    show(
        &format!("admin$ kubectl get node {node} -o '{jsonpath}'"),
        &addresses,
    );
    assert!(
        String::from_utf8_lossy(&addresses.stdout)
            .starts_with(&format!("InternalIP {SILENT_ADDRESS}\n")),
        "the node does not advertise {SILENT_ADDRESS}"
    );
    let silent = (SILENT_ADDRESS, sshd.port).into();
    assert!(
        TcpStream::connect_timeout(&silent, Duration::from_secs(2)).is_err(),
        "something answers on {silent}"
    );
    let manifest = "packaging/rbac/keyctl-proxy.yaml";
    let applied = cluster.kubectl(&[
        "apply",
        "-f",
        &workspace_root().join(manifest).display().to_string(),
    ]);
    show(&format!("admin$ kubectl apply -f {manifest}"), &applied);
    assert!(applied.status.success(), "kubectl apply failed");
    println!(
        "   alice holds the granter role (above) and is in group {PROXY_USERS}, which that \
         manifest binds in {HELPER_NAMESPACE}: unprivileged helper pods there, and exec into them"
    );
    alice.export(
        &[
            ("NODEGATE_PROXY_IMAGE", kubelet.image()),
            ("NODEGATE_PROXY_IMAGE_PULL_POLICY", "Never"),
        ],
        "no registry here; by default the helper pod runs docker.io/library/busybox:1.36",
    );
    alice.export(
        &[("KEYCTL_LOG", "keyctl=debug")],
        "keyctl proxy's progress, a spinner on a terminal, as lines",
    );

    step(&format!(
        "alice runs a command on {node} in one step: an ephemeral key granted for the session, \
         ssh through the API server, the host key checked against the Node, the grant revoked"
    ));
    let watch = PodWatch::start(cluster, HELPER_NAMESPACE, &[]);
    let port = format!("Port={}", sshd.port);
    let out = alice.kubectl_plugin(
        "keyctl",
        &[
            "ssh",
            node,
            "-o",
            &port,
            "--",
            "sh",
            "-c",
            "hostname; exit 3",
        ],
    );
    let created = watch.finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let hostname = read(Path::new("/proc/sys/kernel/hostname"));
    expect(
        &out,
        Some(3),
        &hostname,
        "keyctl ssh: the remote command's output and exit code",
    );
    for said in [
        format!("granting an ephemeral key on {node} as root"),
        format!("no address of {node} answered ({SILENT_ADDRESS}: Connection refused"),
        "going through the API server".to_owned(),
        format!("connecting to port {} inside {node}", sshd.port),
        format!("revoked the session's grant on {node}"),
    ] {
        assert!(stderr.contains(&said), "keyctl ssh did not say {said:?}");
    }
    println!(
        "   (it printed this machine's hostname: the node's sshd runs here; exit code 3 passed \
         through)"
    );
    println!("   admin$ kubectl get pods -n {HELPER_NAMESPACE} --watch-only  (while it ran)");
    for line in created.lines() {
        println!("     {line}");
    }
    let pods: Vec<&str> = created
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !pods.is_empty()
            && pods.iter().all(|p| *p == pods[0])
            && pods[0].starts_with(&format!("keyctl-proxy-{node}-"))
            && created.contains("Running"),
        "not one helper pod that ran"
    );
    let log = sshd.log();
    let accepted = log
        .lines()
        .find(|l| l.contains("Accepted publickey for root from 127.0.0.1"))
        .unwrap_or_else(|| panic!("sshd accepted no login from inside the node:\n{log}"));
    println!("   node {node}'s sshd log, from the helper pod's nc inside the node:");
    println!("     {accepted}");

    step("Nothing is left behind: no grant, no helper pod");
    alice.unexport("KEYCTL_LOG");
    let listed = alice.kubectl_plugin("keyctl", &["list", node]);
    assert!(
        listed.status.success()
            && listed.stdout.is_empty()
            && String::from_utf8_lossy(&listed.stderr).contains("No grants on 1 node(s)."),
        "a grant is left on {node}"
    );
    let gone = wait_until(Duration::from_secs(15), || {
        cluster
            .kubectl(&["get", "pods", "-n", HELPER_NAMESPACE, "-o", "name"])
            .stdout
            .is_empty()
    });
    let left = cluster.kubectl(&["get", "pods", "-n", HELPER_NAMESPACE]);
    show(
        &format!("admin$ kubectl get pods -n {HELPER_NAMESPACE}"),
        &left,
    );
    assert!(
        gone && left.stdout.is_empty(),
        "a helper pod was left behind"
    );

    step("For plain ssh, scp, sftp, rsync -e ssh and Ansible: a block for ~/.ssh/config");
    let block = alice.kubectl_plugin("keyctl", &["ssh-config"]);
    let text = String::from_utf8_lossy(&block.stdout);
    assert!(
        block.status.success()
            && text.lines().any(|l| l == "Host *.k8s")
            && text.contains("ProxyCommand /usr/bin/env kubectl keyctl proxy --domain k8s %h %p")
            && text.contains(
                "KnownHostsCommand /usr/bin/env kubectl keyctl known-hosts --domain k8s %H"
            ),
        "keyctl ssh-config printed something else"
    );
    println!("   (then: kubectl keyctl grant {node} --expires 2h && ssh {node}.k8s)");
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

/// `kubectl get pods --watch-only [OPTIONS]` in a namespace: what happened to pods while it ran.
struct PodWatch(KillOnDrop);

impl PodWatch {
    fn start(cluster: &Cluster, namespace: &str, options: &[&str]) -> PodWatch {
        let child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(cluster.admin_kubeconfig())
            .args(["get", "pods", "-n", namespace, "--watch-only"])
            .args(options)
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
    /// Variables exported in this operator's shell (see [`Operator::export`]).
    exported: RefCell<Vec<(String, String)>>,
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
            exported: RefCell::default(),
        }
    }

    /// `export NAME=VALUE...` in this operator's shell, shown with `why`.
    fn export(&self, vars: &[(&str, &str)], why: &str) {
        let shown: Vec<String> = vars
            .iter()
            .map(|(name, value)| format!("{name}={}", quoted(value)))
            .collect();
        println!("   {}$ export {}  ({why})", self.name, shown.join(" "));
        let mut exported = self.exported.borrow_mut();
        for (name, value) in vars {
            exported.retain(|(n, _)| n != name);
            exported.push(((*name).to_owned(), (*value).to_owned()));
        }
    }

    /// `unset NAME` in this operator's shell, shown.
    fn unexport(&self, name: &str) {
        println!("   {}$ unset {name}", self.name);
        self.exported.borrow_mut().retain(|(n, _)| n != name);
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
        let out = self.run_plugin(plugin, args);
        let shown: Vec<String> = args.iter().map(|a| quoted(a)).collect();
        show(
            &format!("{}$ kubectl {plugin} {}", self.name, shown.join(" ")),
            &out,
        );
        out
    }

    /// Runs `kubectl PLUGIN ARGS` as this operator, without showing it.
    fn run_plugin(&self, plugin: &str, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg(plugin)
            .args(args)
            .env("HOME", self.home.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .env_remove("NODEGATE_PREFIX")
            .env_remove("NODE_EXEC_CONFIG")
            .env_remove("NODEGATE_PROXY_IMAGE")
            .env_remove("NODEGATE_PROXY_IMAGE_PULL_POLICY")
            .env_remove("KEYCTL_LOG")
            .envs(self.exported.borrow().iter().map(|(n, v)| (n, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run kubectl {plugin}: {e}"))
    }

    /// The sessions on [`NODE`] as `kubectl keyctl sessions NODE -o json` lists them for this
    /// operator (not shown: for waiting until they show something).
    fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.run_plugin("keyctl", &["sessions", NODE, "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|answer| answer["sessions"].as_array().cloned())
            .unwrap_or_default()
    }

    fn keyctl(&self, args: &[&str]) -> Output {
        self.kubectl_plugin("keyctl", args)
    }

    /// `~/.ssh/id_ed25519.pub`'s key, without its comment: `ssh-ed25519 AAAA...`.
    fn key_blob(&self) -> String {
        let parts: Vec<&str> = self.key.public.split_whitespace().take(2).collect();
        parts.join(" ")
    }

    /// The SHA256 fingerprint of `~/.ssh/id_ed25519`, as keyctl shows it.
    fn key_fingerprint(&self) -> String {
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&self.key.private)
            .output()
            .expect("run ssh-keygen -l");
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .expect("ssh-keygen -l prints a fingerprint")
            .to_owned()
    }

    fn node_exec(&self, args: &[&str]) -> Output {
        self.kubectl_plugin("node-exec", args)
    }

    fn ssh(&self, sshd: &Sshd, command: &str) -> Output {
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
        out
    }

    /// `ssh -p PORT root@127.0.0.1` on a terminal of this operator's: an interactive login
    /// shell, shown once it is ready (from its prompt on) with `echo "$(id -un) on $(tty)"`.
    fn open_session(&self, sshd: &Sshd, window: &str) -> LiveSession {
        let terminal = Terminal::open(24, 100);
        let mut ssh = ssh_tty_command(sshd.port, &self.key, "root", "");
        ssh.env("HOME", self.home.path()).env("TERM", "xterm");
        println!(
            "   {}$ ssh -p {} root@127.0.0.1  ({window})",
            self.name, sshd.port
        );
        let ssh = KillOnDrop::new(terminal.spawn(&ssh));
        let session = LiveSession { terminal, ssh };
        assert!(
            session.wait_for_prompt(0),
            "alice's session did not start; her terminal:\n{}\nsshd's log:\n{}",
            session.since(0),
            sshd.log()
        );
        session.run("echo \"$(id -un) on $(tty)\"", "root on /dev/pts/");
        session
    }
}

/// The node's side of node1, as its admin sees it: the login path's program and config file.
struct NodeSide<'a> {
    program: &'a Path,
    config: &'a Path,
    sshd: &'a Sshd,
}

impl NodeSide<'_> {
    /// `authorized-keys-cmd --config CONFIG --sshd-config SSHD_CONFIG check`'s lines about
    /// nodegate-agent's watch.
    fn watch_lines(&self) -> Vec<String> {
        let out = Command::new(self.program)
            .arg("--config")
            .arg(self.config)
            .arg("--sshd-config")
            .arg(&self.sshd.config)
            .arg("check")
            .stdin(Stdio::null())
            .output()
            .expect("run authorized-keys-cmd check");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("watch"))
            .map(str::to_owned)
            .collect()
    }

    /// The line of `check` that says the agent's watch is live, if it says so.
    fn watch_live(&self) -> Option<String> {
        self.watch_lines()
            .into_iter()
            .find(|l| l.contains("nodegate-agent's watch is live"))
    }

    /// Shows `check | grep watch`, as the node's admin would run it.
    fn show_watch(&self) {
        println!(
            "   node1# {} --config {} check | grep watch",
            self.program.display(),
            self.config.display()
        );
        for line in self.watch_lines() {
            println!("     {line}");
        }
    }

    /// What the login path answers sshd for user root now (`authorized-keys-cmd root`).
    fn keys_for_root(&self) -> String {
        let out = Command::new(self.program)
            .arg("--config")
            .arg(self.config)
            .arg("root")
            .stdin(Stdio::null())
            .output()
            .expect("run authorized-keys-cmd");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// An interactive ssh session on a terminal of its own, as in an operator's terminal window.
struct LiveSession {
    terminal: Terminal,
    ssh: KillOnDrop,
}

impl LiveSession {
    fn is_live(&mut self) -> bool {
        !self.ssh.has_exited()
    }

    /// What the terminal showed after its first `from` bytes, as text (see [`visible`]).
    fn since(&self, from: usize) -> String {
        let screen = self.terminal.screen();
        visible(screen.get(from..).unwrap_or(&screen))
    }

    /// Where the terminal's last line begins (a prompt, while the shell waits).
    fn last_line_start(&self) -> usize {
        let screen = self.terminal.screen();
        screen.rfind('\n').map_or(0, |at| at + 1)
    }

    /// Waits for the shell's prompt at the end of what was shown after `from`.
    fn wait_for_prompt(&self, from: usize) -> bool {
        wait_until(Duration::from_secs(20), || {
            self.since(from).trim_end_matches(' ').ends_with(['#', '$'])
        })
    }

    /// Types `line` into the shell, waits for `expect` and the next prompt, and shows the
    /// terminal's lines from the prompt it was typed at.
    #[track_caller]
    fn run(&self, line: &str, expect: &str) {
        let from = self.last_line_start();
        self.terminal.type_keys(format!("{line}\n").as_bytes());
        let answered = wait_until(Duration::from_secs(20), || {
            let shown = self.since(from);
            shown.contains(expect)
                && shown.lines().count() > 2
                && shown.trim_end_matches(' ').ends_with(['#', '$'])
        });
        assert!(
            answered,
            "alice's shell did not answer {line:?}; her terminal:\n{}",
            self.since(0)
        );
        for shown in self.since(from).lines() {
            println!("     | {shown}");
        }
    }

    /// Types `line` (`exit`), waits for ssh to end, and shows the terminal's lines
    /// from the prompt it was typed at.
    #[track_caller]
    fn end(&mut self, line: &str) {
        let from = self.last_line_start();
        self.terminal.type_keys(format!("{line}\n").as_bytes());
        let ended = wait_until(Duration::from_secs(20), || !self.is_live());
        assert!(ended, "alice's session did not end on {line:?}");
        // bash's last words may still be on their way to the screen.
        self.terminal.wait_for("logout", Duration::from_secs(5));
        for shown in self.since(from).trim_end_matches('\n').lines() {
            println!("     | {shown}");
        }
    }
}

/// A terminal's output as the text it shows: without escape sequences (bash's bracketed-paste
/// switches), carriage returns and bells.
fn visible(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    while chars
                        .next()
                        .is_some_and(|c| !('\x40'..='\x7e').contains(&c))
                    {}
                }
                Some(']') => while chars.next().is_some_and(|c| c != '\x07') {},
                _ => {}
            },
            '\r' | '\x07' => {}
            c => out.push(c),
        }
    }
    out
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

/// Fails the demo unless `out` exited with `code` and printed exactly `stdout`.
#[track_caller]
fn expect(out: &Output, code: Option<i32>, stdout: &str, what: &str) {
    assert_eq!(out.status.code(), code, "{what}: the exit code");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        stdout,
        "{what}: the output"
    );
}

/// Fails the demo unless sshd refused the key.
#[track_caller]
fn expect_refused(out: &Output) {
    assert!(
        out.status.code() == Some(255)
            && String::from_utf8_lossy(&out.stderr).contains("Permission denied (publickey)"),
        "the key was not refused"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
