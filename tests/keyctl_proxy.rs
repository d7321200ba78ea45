//! `keyctl proxy` as OpenSSH's ProxyCommand against a real sshd, kube-apiserver and kubelet with
//! containerd: through the API server (a hostNetwork helper pod running busybox nc), directly to
//! a node that answers, auto falling back to the API when the node's address does not answer,
//! no pod left after a normal end, SIGINT or SIGHUP, refusals before anything is created.
//!
//! Addresses: the test kubelet runs with `--cloud-provider=external`, so the test sets the
//! node's `status.addresses` itself. Everything dialled is on loopback: the test sshd listens on
//! 127.0.0.1; "an address that does not answer" is 127.0.0.2 at the same port, where nothing
//! listens (refused at once). The helper pod shares the machine's network namespace (as a
//! hostNetwork pod on a real node shares the node's), so "loopback inside the node" is the test
//! sshd.
//!
//! Build the binaries first: `cargo build -p keyctl`, then
//! `cargo test -p nodegate-tests --test keyctl_proxy`.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodegate_testkit::kubelet::Kubelet;
use nodegate_testkit::output::Checked;
use nodegate_testkit::process::{KillOnDrop, Scratch, free_port, wait_until};
use nodegate_testkit::sshd::{KeySource, RootOwnedDir, SshKey, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, shared_setup, workspace_bin};

/// The group `packaging/rbac/keyctl-proxy.yaml` binds.
const PROXY_USERS: &str = "nodegate-keyctl-proxy-users";
/// An API-only node whose address answers (the test sshd's, 127.0.0.1).
const DIRECT_NODE: &str = "direct1";
/// What the kubelet node advertises first: loopback, but nothing listens there (refused).
const SILENT_ADDRESS: &str = "127.0.0.2";
/// What it advertises next: loopback, with a listener whose accept queue the test filled, so
/// that connections are never accepted (the kernel drops the SYNs): a timeout, as from a
/// firewalled address.
const MUTE_ADDRESS: &str = "127.0.0.3";

struct Env {
    cluster: &'static Cluster,
    kubelet: &'static Kubelet,
    sshd: Sshd,
    key: SshKey,
    _scratch: Scratch,
    _mute: (TcpListener, Vec<TcpStream>),
}

/// A listener on `MUTE_ADDRESS:port` that never accepts, its queue filled until a connection
/// attempt times out.
fn mute_listener(port: u16) -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind((MUTE_ADDRESS, port)).expect("bind the mute listener");
    let address = listener.local_addr().expect("address");
    let mut held = Vec::new();
    for _ in 0..4096 {
        match TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
            Ok(stream) => held.push(stream),
            Err(_) => return (listener, held),
        }
    }
    panic!("the listener on {address} kept accepting");
}

fn env() -> &'static Env {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    shared_setup(&ENV, set_up)
}

fn set_up() -> Env {
    let cluster = Cluster::shared();
    let kubelet = Kubelet::shared(cluster);
    cluster.apply_shipped(&[
        "packaging/node-exec-namespace.yaml",
        "packaging/rbac/keyctl-proxy.yaml",
        "packaging/rbac/keyctl-viewer.yaml",
    ]);
    cluster.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: viewers}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodegate-keyctl-viewer}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: viewers}]
"#,
    );
    cluster.wait_for_default_service_account("nodegate-system");
    let scratch = Scratch::new("keyctl-proxy");
    let key = ssh_keygen(scratch.path(), "operator");
    let authorized = scratch.write("authorized_keys", format!("{}\n", key.public));
    let sshd = Sshd::start(&scratch, "sshd", &KeySource::File(authorized));
    // The kubelet's node advertises an address that does not answer; an API-only node advertises
    // the sshd's.
    let mute = mute_listener(sshd.port);
    kubelet.set_addresses(
        cluster,
        &[("InternalIP", SILENT_ADDRESS), ("ExternalIP", MUTE_ADDRESS)],
    );
    cluster.create_node(DIRECT_NODE);
    cluster.patch_node_status(
        DIRECT_NODE,
        &serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": DIRECT_NODE},
        ]}}),
    );
    Env {
        cluster,
        kubelet,
        sshd,
        key,
        _scratch: scratch,
        _mute: mute,
    }
}

fn kubeconfig(user: &str, groups: &[&str]) -> PathBuf {
    env()
        .cluster
        .user_kubeconfig(user, groups, Validity::Current)
}

/// The ProxyCommand line: keyctl as `kubeconfig`'s user, with the test image.
fn proxy_command(kubeconfig: &Path, args: &str) -> String {
    format!(
        "{} --kubeconfig {} proxy --image {} --image-pull-policy Never --start-timeout 90s {args} %h %p",
        workspace_bin("keyctl").display(),
        kubeconfig.display(),
        env().kubelet.image(),
    )
}

/// `ssh root@HOST COMMAND` through `proxy`, with only the test key, never a prompt.
fn ssh(proxy: &str, host: &str, command: &str) -> Command {
    let env = env();
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(&env.key.private)
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
        ])
        .arg(format!("ProxyCommand={proxy}"))
        .arg("-p")
        .arg(env.sshd.port.to_string())
        .arg(format!("root@{host}"))
        .arg(command)
        .stdin(Stdio::null());
    cmd
}

/// `keyctl proxy ARGS` as `kubeconfig`'s user, to run by hand.
fn keyctl_proxy(kubeconfig: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("keyctl"));
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["proxy", "--image", env().kubelet.image()])
        .args(["--image-pull-policy", "Never", "--start-timeout", "90s"])
        .args(args)
        .env_remove("KUBECONFIG");
    cmd
}

/// Helper pods of `user`, by the labels keyctl proxy puts on them.
fn helper_pods(user: &str) -> Vec<String> {
    env()
        .cluster
        .kubectl_ok(&[
            "get",
            "pods",
            "-n",
            "nodegate-system",
            "-l",
            &format!(
                "app.kubernetes.io/managed-by=keyctl-proxy,nodegate.dev/keyctl-proxy-user={user}"
            ),
            "-o",
            "name",
        ])
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_no_pods(user: &str) {
    let gone = wait_until(Duration::from_secs(15), || helper_pods(user).is_empty());
    assert!(gone, "helper pods left: {:?}", helper_pods(user));
}

#[test]
fn ssh_through_the_api_server_runs_a_command_and_passes_its_exit_code() {
    let env = env();
    let me = kubeconfig("api-user", &[PROXY_USERS]);
    let out = Checked::run(&mut ssh(
        &proxy_command(&me, "--via api"),
        env.kubelet.node_name(),
        "echo through-the-api; hostname >/dev/null; exit 7",
    ));
    out.code_is(7);
    assert_eq!(out.stdout, "through-the-api\n", "{out}");
    assert_no_pods("api-user");
    // The session really went through the pod: sshd saw it from loopback.
    assert!(
        env.sshd.log().contains("from 127.0.0.1"),
        "{}",
        env.sshd.log()
    );
}

#[test]
fn a_big_stream_goes_through_the_api_server_intact() {
    let env = env();
    let me = kubeconfig("api-bulk", &[PROXY_USERS]);
    // 8 MiB both ways: stdin to the node, its digest back.
    let data: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut child = ssh(
        &proxy_command(&me, "--via api"),
        env.kubelet.node_name(),
        "sha256sum",
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("run ssh");
    let mut input = child.stdin.take().expect("piped");
    let sent = data.clone();
    let writer = std::thread::spawn(move || input.write_all(&sent));
    let out = Checked::of("ssh sha256sum", child.wait_with_output().expect("wait ssh"));
    writer.join().expect("writer").expect("write stdin");
    let expected = {
        let mut sum = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("sha256sum");
        sum.stdin
            .take()
            .expect("piped")
            .write_all(&data)
            .expect("write");
        String::from_utf8(sum.wait_with_output().expect("wait").stdout).expect("utf8")
    };
    assert_eq!(out.ok(), expected);
    assert_no_pods("api-bulk");
}

#[test]
fn ssh_directly_to_a_node_that_answers_needs_no_pod_and_no_pod_rights() {
    // A viewer may read nodes, not create pods: the direct path needs nothing more.
    let me = kubeconfig("direct-user", &["viewers"]);
    let out = Checked::run(&mut ssh(
        &proxy_command(&me, "--via direct --domain k8s"),
        &format!("{DIRECT_NODE}.k8s"),
        "echo direct; exit 3",
    ));
    out.code_is(3);
    assert_eq!(out.stdout, "direct\n", "{out}");
    let auto = Checked::run(&mut ssh(&proxy_command(&me, ""), DIRECT_NODE, "echo auto"));
    assert_eq!(auto.ok(), "auto\n");
    assert!(helper_pods("direct-user").is_empty());
}

#[test]
fn auto_falls_back_to_the_api_server_when_the_address_does_not_answer() {
    let env = env();
    let me = kubeconfig("auto-user", &[PROXY_USERS]);
    let out = Checked::run(&mut ssh(
        &proxy_command(&me, ""),
        env.kubelet.node_name(),
        "echo fell-back; exit 5",
    ));
    out.code_is(5);
    assert_eq!(out.stdout, "fell-back\n", "{out}");
    assert_no_pods("auto-user");
    // Direct only: the same node is refused with what each address said.
    let direct = Checked::run(
        keyctl_proxy(
            &me,
            &[
                "--via",
                "direct",
                "--connect-timeout",
                "1s",
                env.kubelet.node_name(),
                &env.sshd.port.to_string(),
            ],
        )
        .stdin(Stdio::null()),
    );
    direct
        .code_is(1)
        .says("no address of node localhost answered")
        .says(&format!("{SILENT_ADDRESS}: Connection refused"))
        .says(&format!("{MUTE_ADDRESS}: no answer within 1s"))
        .says("try --via api");
    assert!(direct.stdout.is_empty());
}

#[test]
fn a_user_without_the_role_is_refused_before_anything_is_created() {
    let env = env();
    let me = kubeconfig("viewer", &["viewers"]);
    let port = env.sshd.port.to_string();
    let api = Checked::run(
        keyctl_proxy(&me, &["--via", "api", env.kubelet.node_name(), &port]).stdin(Stdio::null()),
    );
    api.code_is(1)
        .says("refused before creating anything: you may not create pods in namespace nodegate-system")
        .says("nodegate-keyctl-proxy");
    assert!(api.stdout.is_empty());
    let auto =
        Checked::run(keyctl_proxy(&me, &[env.kubelet.node_name(), &port]).stdin(Stdio::null()));
    auto.code_is(1)
        .says(&format!(
            "no address of node localhost answered on port {port}"
        ))
        .says("refused before creating anything")
        .says("nodegate-keyctl-proxy");
    assert!(helper_pods("viewer").is_empty());
    // A user without any binding cannot even read the node.
    let nobody = kubeconfig("nobody", &[]);
    let direct = Checked::run(
        keyctl_proxy(&nobody, &["--via", "direct", DIRECT_NODE, &port]).stdin(Stdio::null()),
    );
    direct.code_is(1).says("may not read node direct1");
}

#[test]
fn an_unknown_node_is_one_clear_error() {
    let me = kubeconfig("unknown-user", &[PROXY_USERS]);
    let out = Checked::run(
        keyctl_proxy(&me, &["--domain", "k8s", "nosuch.k8s", "22"]).stdin(Stdio::null()),
    );
    out.code_is(1)
        .says("node nosuch not found, from host nosuch.k8s");
    assert!(out.stdout.is_empty());
}

#[test]
fn with_the_api_server_unreachable_the_host_itself_is_tried() {
    let env = env();
    // The same credentials, but a server where nothing listens.
    let good = kubeconfig("outage-user", &[PROXY_USERS]);
    let text = std::fs::read_to_string(&good).expect("read kubeconfig");
    let dead = good.with_file_name("outage-dead.kubeconfig");
    std::fs::write(
        &dead,
        text.replace(
            env.cluster.server(),
            &format!("https://127.0.0.1:{}", free_port()),
        ),
    )
    .expect("write kubeconfig");
    let out = Checked::run(&mut ssh(
        &proxy_command(&dead, ""),
        "127.0.0.1",
        "echo still-direct",
    ));
    assert_eq!(out.ok(), "still-direct\n");
    assert!(out.stderr.contains("cannot reach the API server"), "{out}");
    let api =
        Checked::run(keyctl_proxy(&dead, &["--via", "api", "node1", "22"]).stdin(Stdio::null()));
    api.code_is(1)
        .says("cannot reach the API server to look node node1 up");
}

/// Starts a proxy through the API server, waits for sshd's banner through it, then ends it with
/// `how` and checks its exit code and that no pod is left.
fn interrupted(user: &str, how: &str, code: i32) {
    let env = env();
    let me = kubeconfig(user, &[PROXY_USERS]);
    let mut child = keyctl_proxy(
        &me,
        &[
            "--via",
            "api",
            env.kubelet.node_name(),
            &env.sshd.port.to_string(),
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("run keyctl proxy");
    let mut stdout = child.stdout.take().expect("piped");
    let stdin = child.stdin.take().expect("piped");
    let pid = child.id();
    let mut child = KillOnDrop::new(child);
    let mut banner = [0u8; 8];
    stdout
        .read_exact(&mut banner)
        .expect("sshd's banner through the proxy");
    assert_eq!(&banner, b"SSH-2.0-");
    assert_eq!(helper_pods(user).len(), 1, "one helper pod while connected");
    if how == "EOF" {
        drop(stdin);
    } else {
        let status = Command::new("kill")
            .arg(format!("-{how}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
    let exited = wait_until(Duration::from_secs(30), || child.has_exited());
    let (_, out) = child.wait_for_exit(Duration::from_secs(1));
    let out = Checked::of(format!("keyctl proxy ended by {how}"), out);
    assert!(exited, "{out}");
    out.code_is(code);
    assert!(
        helper_pods(user).is_empty(),
        "helper pod left after {how}: {out}"
    );
}

#[test]
fn no_pod_is_left_after_the_client_closes() {
    interrupted("eof-user", "EOF", 0);
}

#[test]
fn no_pod_is_left_after_sigint() {
    interrupted("int-user", "INT", 130);
}

#[test]
fn no_pod_is_left_after_sighup() {
    interrupted("hup-user", "HUP", 129);
}

#[test]
fn gc_finds_helper_pods_of_keyctl_proxy() {
    let me = kubeconfig("gc-user", &[PROXY_USERS]);
    let out = Checked::run(
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(&me)
            .args(["gc", "--dry-run"]),
    );
    out.ok();
}

/// `keyctl ssh` end to end on the kubelet's node, whose advertised addresses do not answer: the
/// node's sshd asks authorized-keys-cmd (with the node's own credentials) for the grant keyctl
/// ssh makes, the node's host keys come from its Node object (published by authorized-keys-cmd
/// publish-host-keys), and the session goes through the API server in a helper pod. Nothing is
/// left: no grant, no pod.
#[test]
fn keyctl_ssh_reaches_a_node_whose_address_does_not_answer_through_the_api_server() {
    let env = env();
    let node = env.kubelet.node_name();
    env.cluster
        .apply_shipped(&["packaging/rbac/keyctl-granter.yaml"]);
    env.cluster.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ssh-granters}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodegate-keyctl-granter}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: ssh-granters}]
"#,
    );
    let scratch = Scratch::new("keyctl-ssh-api");
    let config = scratch.write(
        "authorized-keys-cmd.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\nfreshness = \"0s\"\n",
            env.cluster
                .node_kubeconfig(node, Validity::Current)
                .display(),
            scratch.join("cache.sqlite").display()
        ),
    );
    let dir = RootOwnedDir::new("keyctl-ssh-api");
    let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start(
        &scratch,
        "sshd",
        &KeySource::authorized_keys_cmd(program, &config),
    );
    Checked::run(
        Command::new(workspace_bin("authorized-keys-cmd"))
            .arg("--config")
            .arg(&config)
            .arg("publish-host-keys")
            .arg("--host-key-dir")
            .arg(scratch.join("sshd")),
    )
    .ok();
    let tmp = scratch.join("tmp");
    std::fs::create_dir_all(&tmp).expect("create TMPDIR");
    let me = kubeconfig("ssh-api-user", &[PROXY_USERS, "ssh-granters"]);
    let out = Checked::run(
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(&me)
            .args(["ssh", node, "--via", "auto"])
            .args(["-o", &format!("Port={}", sshd.port), "-o", "BatchMode=yes"])
            .args(["--", "sh", "-c", "echo through-the-api; exit 3"])
            .env("TMPDIR", &tmp)
            .env("NODEGATE_PROXY_IMAGE", env.kubelet.image())
            .env("NODEGATE_PROXY_IMAGE_PULL_POLICY", "Never")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null()),
    );
    out.code_is(3);
    assert_eq!(out.stdout, "through-the-api\n", "{out}");
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "sshd did not log the grant's login: {}",
        sshd.log()
    );
    let annotations = env.cluster.node_annotations(node);
    assert!(
        !annotations
            .keys()
            .any(|k| k.starts_with("ssh.nodegate.dev/")),
        "a grant was left: {annotations:?}"
    );
    assert!(
        annotations.contains_key("host-keys.nodegate.dev/ssh-ed25519"),
        "{annotations:?}"
    );
    assert_no_pods("ssh-api-user");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .expect("read TMPDIR")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
