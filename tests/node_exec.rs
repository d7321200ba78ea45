//! node-exec against a real kubelet with containerd: host shell on a stand-in host, containers
//! entered as chosen users, stdin, exit codes, refusals, interrupted sessions, lost connections,
//! a real terminal with resizes, and gc.
//!
//! Build the binary first: `cargo build -p node-exec`, then
//! `cargo test -p nodegate-tests --test node_exec`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodegate_testkit::kubelet::{BARE_IMAGE, InNode, Kubelet, build_bare_image};
use nodegate_testkit::process::{KillOnDrop, wait_until};
use nodegate_testkit::proxy::CuttableProxy;
use nodegate_testkit::terminal::Terminal;
use nodegate_testkit::{Cluster, Validity, shared_setup, workspace_bin};

/// The group the shipped RBAC manifest binds.
const OPERATORS: &str = "nodegate-node-exec-operators";
/// The namespace of the pods to enter.
const APPS: &str = "shop";
/// The pod to enter.
const TARGET_POD: &str = "web";
const STAND_IN_HOSTNAME: &str = "test-host";

struct Env {
    cluster: &'static Cluster,
    kubelet: &'static Kubelet,
    host: InNode,
    home: PathBuf,
}

/// The shared setup; if it fails, every test fails at once with the first failure's message
/// (instead of each retrying a setup that takes minutes to time out).
fn env() -> &'static Env {
    static ENV: OnceLock<Result<Env, String>> = OnceLock::new();
    shared_setup(&ENV, set_up)
}

fn set_up() -> Env {
    {
        let cluster = Cluster::shared();
        let kubelet = Kubelet::shared(cluster);
        cluster.apply_shipped(&[
            "packaging/node-exec-namespace.yaml",
            "packaging/rbac/node-exec-operator.yaml",
        ]);
        // Operators may exec into pods of the app namespace; viewers may only look at them.
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
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: {OPERATORS}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: view, namespace: {APPS}}}
rules:
- {{apiGroups: [""], resources: [pods], verbs: [get, list]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: view, namespace: {APPS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: view}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: viewers}}]
---
# Viewers may make helper pods, so that only the exec check on the target pod refuses them.
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: viewers-helper-pods, namespace: nodegate-system}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodegate-node-exec-helper-pods}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: viewers}}]
"#
        ));
        cluster.wait_for_default_service_account(APPS);
        cluster.wait_for_default_service_account("nodegate-system");
        cluster.apply(&format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {TARGET_POD}, namespace: {APPS}}}
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
    env: [{{name: APP_SETTING, value: from-the-container}}]
"#,
            image = kubelet.image(),
            node = kubelet.node_name(),
        ));
        kubelet.wait_pod_running(cluster, APPS, TARGET_POD, Duration::from_secs(120));
        let host_files = stand_in_host_files(&kubelet.scratch.join("stand-in-host"));
        // As on a real node, the host has users of its own (in its /etc/passwd, with homes under
        // its /home) that the helper image knows nothing of.
        let host = kubelet.spawn_in_node(
            "stand-in-host",
            &["unshare", "--uts", "--mount", "--fork"],
            &format!(
                "mount --bind {files}/passwd /etc/passwd && mount --bind {files}/group /etc/group \
                 && mount --bind {files}/home /home && hostname {STAND_IN_HOSTNAME} && exec sleep 3600",
                files = host_files.display()
            ),
        );
        let kubelet_bare_image = kubelet.scratch.join("bare-image");
        build_bare_image(&kubelet_bare_image, &kubelet_bare_image.join("image.tar"));
        kubelet.import_image(&kubelet_bare_image.join("image.tar"));
        let home = kubelet.scratch.join("home");
        std::fs::create_dir_all(&home).expect("create HOME");
        Env {
            cluster,
            kubelet,
            host,
            home,
        }
    }
}

/// Users of the stand-in host only (name, uid, home, shell): `core` with a home of its own and a
/// shell the helper image lacks, `ec2-user` whose home is reached through an absolute symlink
/// (as `/home -> /var/home` on Fedora CoreOS), `gone` whose home does not exist.
const HOST_USERS: &[(&str, u32, &str, &str)] = &[
    ("core", 1500, "/home/core", "/bin/bash"),
    ("ec2-user", 1501, "/home/ec2-user", "/bin/sh"),
    ("gone", 1502, "/home/gone", "/bin/sh"),
];

/// The stand-in host's `passwd`, `group` and `home` under `dir`: the machine's own users plus
/// [`HOST_USERS`]. They are bound over the real ones only in the stand-in host's mount namespace.
fn stand_in_host_files(dir: &Path) -> PathBuf {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join("core")).expect("create /home/core");
    std::fs::create_dir_all(home.join("real/ec2-user")).expect("create the real home");
    std::os::unix::fs::symlink("/home/real/ec2-user", home.join("ec2-user"))
        .expect("link /home/ec2-user");
    let mut passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let mut group = std::fs::read_to_string("/etc/group").expect("read /etc/group");
    for (name, uid, home, shell) in HOST_USERS {
        passwd.push_str(&format!("{name}:x:{uid}:{uid}:{name}:{home}:{shell}\n"));
        group.push_str(&format!("{name}:x:{uid}:\n"));
    }
    std::fs::write(dir.join("passwd"), passwd).expect("write passwd");
    std::fs::write(dir.join("group"), group).expect("write group");
    dir.to_owned()
}

/// A kubeconfig for `user` in `groups`.
fn kubeconfig(user: &str, groups: &[&str]) -> PathBuf {
    env()
        .cluster
        .user_kubeconfig(user, groups, Validity::Current)
}

fn operator(user: &str) -> PathBuf {
    kubeconfig(user, &[OPERATORS])
}

/// `node-exec` with the test image and a 90 s start timeout (unless `args` name others) and a
/// clean HOME, as the user of
/// `kubeconfig`.
fn node_exec(kubeconfig: &Path, args: &[&str]) -> Command {
    let env = env();
    let mut command = Command::new(workspace_bin("node-exec"));
    command
        .env("HOME", &env.home)
        .env_remove("NODE_EXEC_CONFIG")
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--image-pull-policy", "Never"]);
    if !args.contains(&"--start-timeout") {
        command.args(["--start-timeout", "90s"]);
    }
    if !args.contains(&"--image") {
        command.args(["--image", env.kubelet.image()]);
    }
    command.args(args);
    command
}

fn run(kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = node_exec(kubeconfig, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node-exec (cargo build -p node-exec first)");
    let mut input = child.stdin.take().expect("piped");
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().expect("wait for node-exec");
    let _ = writer.join();
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn host_pid() -> String {
    env().host.pid.to_string()
}

/// Helper pods of `user` in `namespace`, by the label node-exec puts on them.
fn helper_pods(namespace: &str, user: &str) -> Vec<String> {
    let out = env().cluster.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        namespace,
        "-l",
        &format!("app.kubernetes.io/managed-by=node-exec,nodegate.dev/node-exec-user={user}"),
        "-o",
        "name",
    ]);
    out.lines().map(str::to_owned).collect()
}

#[test]
fn a_host_command_runs_on_the_host_and_passes_its_exit_code() {
    let me = operator("host-op");
    let out = run(
        &me,
        &["--host-pid", &host_pid(), "localhost", "--", "hostname"],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), STAND_IN_HOSTNAME);

    let out = run(
        &me,
        &[
            "--host-pid",
            &host_pid(),
            "localhost",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(7), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert!(text(&out.stderr).contains("err"), "{}", text(&out.stderr));
    assert!(
        helper_pods("nodegate-system", "host-op").is_empty(),
        "helper pod left behind"
    );
}

#[test]
fn a_host_login_as_another_user_takes_uid_gid_and_home_from_the_hosts_passwd() {
    let me = operator("host-user-op");
    let out = run(
        &me,
        &[
            "--host-pid",
            &host_pid(),
            "--user",
            "nobody",
            "localhost",
            "--",
            "sh",
            "-c",
            "id -u; id -g; echo $HOME $USER",
        ],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "65534\n65534\n/ nobody\n");
}

#[test]
fn a_container_is_entered_as_a_named_user() {
    let me = operator("named-op");
    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "--user",
            "alice",
            "--",
            "sh",
            "-c",
            "id; echo $HOME $APP_SETTING; hostname",
        ],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("uid=1000(alice) gid=1000(alice)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/home/alice from-the-container"),
        "{stdout}"
    );
}

#[test]
fn a_container_is_entered_as_a_numeric_user_and_group() {
    let me = operator("numeric-op");
    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "-c",
            "app",
            "--user",
            "1001:50",
            "--",
            "id",
        ],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("uid=1001(bob) gid=50(staff)"),
        "{}",
        text(&out.stdout)
    );

    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "--user",
            "4242",
            "--",
            "id",
        ],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("uid=4242 gid=0(root)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn an_unknown_user_is_a_clear_error() {
    let me = operator("unknown-user-op");
    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "--user",
            "mallory",
            "--",
            "id",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(125));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("user \"mallory\" not found in /etc/passwd of the container"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_is_piped_through_and_ends() {
    let me = operator("stdin-op");
    // Binary data, with bytes that mean something to shells and to the framing.
    let data: Vec<u8> = (0..200_000u32)
        .map(|i| (i * 7 % 256) as u8)
        .chain(*b"\n.\n")
        .collect();
    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "--",
            "sh",
            "-c",
            "cat > /tmp/in; wc -c < /tmp/in; md5sum < /tmp/in",
        ],
        &data,
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let digest = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().expect("piped").write_all(&data)?;
            child.wait_with_output()
        })
        .expect("md5sum");
    let expected = format!("{}\n{}", data.len(), text(&digest.stdout));
    assert_eq!(
        text(&out.stdout).replace(" -", "  -"),
        expected.replace(" -", "  -")
    );

    let out = run(
        &me,
        &["--host-pid", &host_pid(), "localhost", "--", "cat"],
        b"hello\nworld",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld");
}

#[test]
fn a_user_who_may_not_exec_is_refused_before_anything_is_created() {
    let cluster = env().cluster;
    let viewer = kubeconfig("viewer", &["viewers"]);
    // Anything created in the helper namespace while node-exec runs shows up here.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.admin_kubeconfig())
        .args([
            "get",
            "pods",
            "-n",
            "nodegate-system",
            "--watch-only",
            "-o",
            "name",
        ])
        .args(["-l", "nodegate.dev/node-exec-user=viewer"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch");
    std::thread::sleep(Duration::from_secs(1));
    let out = run(
        &viewer,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "--user",
            "0",
            "--",
            "id",
        ],
        b"",
    );
    std::thread::sleep(Duration::from_secs(1));
    let _ = watch.kill();
    let seen = watch.wait_with_output().expect("watch output");
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("refused before creating anything")
            && stderr.contains(&format!("create pods/exec on pod {APPS}/{TARGET_POD} is what `kubectl exec` needs there: the pod's namespace grants it")),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert!(
        seen.stdout.is_empty(),
        "a pod was created: {}",
        text(&seen.stdout)
    );

    // Without rights in the helper namespace, a host shell is refused too.
    let outsider = kubeconfig("outsider", &["outsiders"]);
    let out = run(
        &outsider,
        &["--host-pid", &host_pid(), "localhost", "--", "true"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("create pods in namespace nodegate-system"),
        "{}",
        text(&out.stderr)
    );
}

/// Starts a long session, waits for its helper pod, sends `signal`, and checks that node-exec
/// exits with 128+signal after deleting the pod.
/// Starts `node-exec -- sleep 600` on the stand-in host as the user of `kubeconfig` (named
/// `user`), and returns once its helper pod runs and the exec is under way.
fn start_long_host_session(kubeconfig: &Path, user: &str) -> KillOnDrop {
    let child = KillOnDrop::new(
        node_exec(
            kubeconfig,
            &["--host-pid", &host_pid(), "localhost", "--", "sleep", "600"],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node-exec"),
    );
    let cluster = env().cluster;
    let running = wait_until(Duration::from_secs(90), || {
        let out = cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            "nodegate-system",
            "-l",
            &format!("nodegate.dev/node-exec-user={user}"),
            "-o",
            "jsonpath={.items[*].status.containerStatuses[*].state.running.startedAt}",
        ]);
        !out.stdout.is_empty()
    });
    assert!(running, "the helper pod never ran");
    // Give node-exec a moment to start the exec, so what the test does hits a session in progress.
    std::thread::sleep(Duration::from_secs(2));
    child
}

/// Waits up to 30 s for `child` to exit after `what`, killing it if it does not.
fn wait_for_exit(child: KillOnDrop, what: &str) -> Output {
    let (exited, out) = child.wait_for_exit(Duration::from_secs(30));
    assert!(
        exited,
        "node-exec did not exit after {what}; stderr: {}",
        text(&out.stderr)
    );
    out
}

fn interrupted_session_leaves_no_pod(user: &str, signal: &str, code: i32) {
    let mut child = start_long_host_session(&operator(user), user);
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let out = wait_for_exit(child, signal);
    assert_eq!(
        out.status.code(),
        Some(code),
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("deleted"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        helper_pods("nodegate-system", user).is_empty(),
        "helper pod left after {signal}"
    );
}

#[test]
fn sigint_leaves_no_helper_pod() {
    interrupted_session_leaves_no_pod("int-op", "INT", 130);
}

#[test]
fn sigterm_leaves_no_helper_pod() {
    interrupted_session_leaves_no_pod("term-op", "TERM", 143);
}

#[test]
fn sighup_leaves_no_helper_pod() {
    interrupted_session_leaves_no_pod("hup-op", "HUP", 129);
}

#[test]
fn a_connection_lost_mid_session_is_a_clear_error_and_leaves_no_pod() {
    let user = "lost-op";
    // The operator reaches the API server through a proxy that can drop connections, as a flaky
    // VPN or a restarted load balancer does; connections made afterwards work again.
    let server = env().cluster.server();
    let target = server
        .trim_start_matches("https://")
        .parse()
        .expect("the API server's address");
    let proxy = CuttableProxy::start(target);
    let direct = std::fs::read_to_string(operator(user)).expect("read kubeconfig");
    let through_proxy = env().home.join(format!("{user}.kubeconfig"));
    std::fs::write(
        &through_proxy,
        direct.replace(server, &format!("https://{}", proxy.address())),
    )
    .expect("write kubeconfig");

    let child = start_long_host_session(&through_proxy, user);
    proxy.cut();
    let out = wait_for_exit(child, "its connection was cut");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("lost the connection"), "{stderr}");
    assert!(
        helper_pods("nodegate-system", user).is_empty(),
        "helper pod left after the connection was lost"
    );
}

#[test]
fn gc_deletes_the_pods_of_sessions_that_are_gone() {
    let cluster = env().cluster;
    // A helper namespace of its own, so gc does not touch the other tests' live sessions.
    cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: gc-helpers}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: operators, namespace: gc-helpers}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodegate-node-exec-helper-pods}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: {OPERATORS}}}]
"#
    ));
    cluster.wait_for_default_service_account("gc-helpers");
    let me = operator("gc-op");
    let helper_ns = ["--helper-namespace", "gc-helpers"];
    // A session killed outright (SIGKILL) cannot clean up: its pod stays.
    let mut args: Vec<&str> = helper_ns.to_vec();
    let pid = host_pid();
    args.extend(["--host-pid", &pid, "localhost", "--", "sleep", "600"]);
    let child = KillOnDrop::new(
        node_exec(&me, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run node-exec"),
    );
    let created = wait_until(Duration::from_secs(90), || {
        !helper_pods("gc-helpers", "gc-op").is_empty()
    });
    assert!(created, "no helper pod appeared");
    drop(child); // SIGKILL
    assert_eq!(helper_pods("gc-helpers", "gc-op").len(), 1);

    // Its heartbeat is fresh: gc keeps it...
    let out = run(&me, &["gc", "--helper-namespace", "gc-helpers"], b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("active"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(helper_pods("gc-helpers", "gc-op").len(), 1);
    // ...until the heartbeat is older than --stale-after; a dry run only lists it.
    std::thread::sleep(Duration::from_secs(3));
    let stale = [
        "gc",
        "--helper-namespace",
        "gc-helpers",
        "--stale-after",
        "2s",
    ];
    let mut dry = stale.to_vec();
    dry.push("--dry-run");
    let out = run(&me, &dry, b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("session gone") && stdout.contains("would delete"),
        "{stdout}"
    );
    assert_eq!(helper_pods("gc-helpers", "gc-op").len(), 1);
    let out = run(&me, &stale, b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("deleted 1 helper pod"),
        "{}",
        text(&out.stdout)
    );
    assert!(helper_pods("gc-helpers", "gc-op").is_empty());
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let me = operator("input-op");
    let out = run(&me, &["Node_1", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("lowercase"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&me, &["localhost", "--user", "$(id)", "--", "true"], b"");
    assert!(
        text(&out.stderr).contains("UID:GID"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&me, &["no-such-node", "--", "true"], b"");
    assert!(
        text(&out.stderr).contains("node no-such-node not found"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&me, &["pod/nope", "-n", APPS, "--", "true"], b"");
    assert!(
        text(&out.stderr).contains("pod shop/nope not found"),
        "{}",
        text(&out.stderr)
    );
    let out = run(
        &me,
        &[
            &format!("pod/{TARGET_POD}"),
            "-n",
            APPS,
            "-c",
            "db",
            "--",
            "true",
        ],
        b"",
    );
    assert!(
        text(&out.stderr).contains("has no container db (it has: app)"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_node_without_a_working_kubelet_is_a_clear_error_and_creates_nothing() {
    let cluster = env().cluster;
    // An API-only node: no kubelet ever reported for it.
    cluster.create_node("ghost-node");
    let me = operator("ghost-op");
    let out = run(&me, &["ghost-node", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("node ghost-node: its kubelet is not reporting (it never reported)"),
        "{stderr}"
    );
    assert!(helper_pods("nodegate-system", "ghost-op").is_empty());
}

#[test]
fn an_image_the_node_cannot_get_is_a_clear_error_and_the_pod_is_deleted() {
    let me = operator("image-op");
    let out = run(
        &me,
        &[
            "--image",
            "localhost/not-imported:1",
            "--host-pid",
            &host_pid(),
            "localhost",
            "--",
            "true",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot pull the helper image localhost/not-imported:1")
            && stderr.contains("ErrImageNeverPull")
            && stderr.contains("--image"),
        "{stderr}"
    );
    assert!(helper_pods("nodegate-system", "image-op").is_empty());
}

#[test]
fn a_terminal_is_given_on_request_and_the_exit_code_still_passes() {
    let me = operator("tty-op");
    let out = run(
        &me,
        &[
            "--tty",
            "always",
            "--host-pid",
            &host_pid(),
            "localhost",
            "--",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo terminal; exit 3",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    // A terminal turns "\n" into "\r\n".
    assert_eq!(stdout, "terminal\r\n");
}

#[test]
fn on_a_terminal_the_window_size_follows_resizes_and_the_terminal_is_restored() {
    let user = "resize-op";
    let terminal = Terminal::open(24, 80);
    // No --tty: a terminal on stdin and stdout is enough. Each line typed prints the remote size.
    let child = KillOnDrop::new(terminal.spawn(&node_exec(
        &operator(user),
        &[
            "--host-pid",
            &host_pid(),
            "localhost",
            "--",
            "sh",
            "-c",
            "stty size; while read line; do stty size; done; exit 7",
        ],
    )));
    let started = terminal.wait_for("24 80", Duration::from_secs(120));
    assert!(started, "no remote size 24 80: {}", terminal.screen());
    terminal.resize(40, 120);
    // The resize travels on its own channel: keep asking until the remote terminal has it.
    let resized = wait_until(Duration::from_secs(30), || {
        terminal.type_keys(b"\n");
        terminal.wait_for("40 120", Duration::from_millis(300))
    });
    assert!(
        resized,
        "the remote size did not follow: {}",
        terminal.screen()
    );
    // Ctrl-D ends `read` on the remote terminal: only raw mode lets it through.
    terminal.type_keys(b"\x04");
    let (exited, out) = child.wait_for_exit(Duration::from_secs(30));
    assert!(exited, "node-exec did not end: {}", terminal.screen());
    assert_eq!(out.status.code(), Some(7), "{}", terminal.screen());
    assert!(
        terminal.is_cooked(),
        "node-exec left the terminal in raw mode"
    );
    assert!(helper_pods("nodegate-system", user).is_empty());
}

/// The Ready condition's message as a current kubelet (1.32) words a pod network that is down.
const CURRENT_NETWORK_DOWN_MESSAGE: &str = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized";

#[test]
fn a_node_whose_pod_network_is_down_still_gets_a_host_shell_whatever_its_kubelet_writes() {
    let env = env();
    // As with a broken network plugin: the node is NotReady, yet host-network pods run.
    env.kubelet.set_pod_network(env.cluster, false);
    let me = operator("network-down-op");
    let host_shell = || {
        run(
            &me,
            &["--host-pid", &host_pid(), "localhost", "--", "hostname"],
            b"",
        )
    };
    // The 1.20 kubelet's own wording.
    let out = host_shell();
    let stderr = text(&out.stderr);
    let old_wording = out.status.success()
        && text(&out.stdout).trim() == STAND_IN_HOSTNAME
        && stderr
            .contains("node localhost is not Ready (KubeletNotReady: runtime network not ready")
        && stderr.contains("trying anyway");
    // A current kubelet's wording, written over the condition; the test kubelet writes its own
    // back at its next status update, so try until node-exec saw the current one.
    let mut current = None;
    for _ in 0..5 {
        env.cluster.patch_node_status(
            env.kubelet.node_name(),
            &serde_json::json!({"status": {"conditions": [
                {"type": "Ready", "status": "False", "reason": "KubeletNotReady",
                 "message": CURRENT_NETWORK_DOWN_MESSAGE}
            ]}}),
        );
        let out = host_shell();
        if text(&out.stderr).contains(CURRENT_NETWORK_DOWN_MESSAGE) {
            current = Some(out);
            break;
        }
    }
    env.kubelet.set_pod_network(env.cluster, true);
    assert!(old_wording, "with the 1.20 wording: {stderr}");
    let out = current.expect("node-exec never saw the current wording");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), STAND_IN_HOSTNAME);
    assert!(helper_pods("nodegate-system", "network-down-op").is_empty());
}

#[test]
fn a_host_login_as_a_users_of_the_node_starts_in_their_home_on_the_host() {
    let me = operator("node-user-op");
    let as_user = |user: &str, args: &[&str], stdin: &[u8]| {
        let mut all = vec!["--host-pid", host_pid_static(), "--user", user, "localhost"];
        all.extend_from_slice(args);
        run(&me, &all, stdin)
    };
    // A home that exists only on the host (the helper image has no /home/core).
    let out = as_user(
        "core",
        &[
            "--",
            "sh",
            "-c",
            "id -u; id -g; pwd; echo $HOME $USER $SHELL",
        ],
        b"",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "1500\n1500\n/home/core\n/home/core core /bin/bash\n"
    );
    // No command: the user's login shell, which only the host has.
    let out = as_user("core", &[], b"echo shell=$0; pwd\n");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "shell=/bin/bash\n/home/core\n");
    // A home behind an absolute symlink is followed on the host, not in the helper image.
    let out = as_user("ec2-user", &["--", "sh", "-c", "pwd; echo $HOME"], b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/home/real/ec2-user\n/home/ec2-user\n");
    // A missing home: /, with a note, as login(1) does.
    let out = as_user("gone", &["--", "sh", "-c", "pwd; echo $HOME"], b"");
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "/\n/\n");
    assert!(
        text(&out.stderr).contains("home directory /home/gone of gone does not exist on the host"),
        "{}",
        text(&out.stderr)
    );
    assert!(helper_pods("nodegate-system", "node-user-op").is_empty());
}

/// [`host_pid`], for closures that borrow it.
fn host_pid_static() -> &'static str {
    static PID: OnceLock<String> = OnceLock::new();
    PID.get_or_init(host_pid)
}

#[test]
fn any_image_with_sh_and_nsenter_works_without_tmp_and_with_a_read_only_root() {
    // busybox alone: no /tmp, no /etc; node-exec runs it with readOnlyRootFilesystem.
    let me = operator("bare-image-op");
    let out = run(
        &me,
        &[
            "--image",
            BARE_IMAGE,
            "--host-pid",
            &host_pid(),
            "--user",
            "core",
            "localhost",
            "--",
            "sh",
            "-c",
            "cat; pwd; id -u",
        ],
        b"piped through\n",
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "piped through\n/home/core\n1500\n");
    assert!(helper_pods("nodegate-system", "bare-image-op").is_empty());
}

#[test]
fn a_node_whose_kubelet_stopped_reporting_is_refused_at_once() {
    let cluster = env().cluster;
    cluster.create_node("silent-node");
    cluster.patch_node_status(
        "silent-node",
        &serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
             "message": "Kubelet stopped posting node status.",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}}),
    );
    let me = operator("silent-op");
    let out = run(&me, &["silent-node", "--", "true"], b"");
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("node silent-node: its kubelet is not reporting (it last reported")
            && stderr.contains("at 2026-01-01T00:00:00Z"),
        "{stderr}"
    );
    assert!(helper_pods("nodegate-system", "silent-op").is_empty());
}

#[test]
fn a_node_that_looks_ready_but_whose_kubelet_never_takes_the_pod_is_said_so() {
    let cluster = env().cluster;
    // Ready as far as the API knows (the kubelet died a moment ago), but nothing runs pods.
    cluster.create_node("stale-node");
    cluster.patch_node_status(
        "stale-node",
        &serde_json::json!({"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status",
             "lastHeartbeatTime": "2026-01-01T00:00:00Z",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]}}),
    );
    let me = operator("stale-op");
    let out = run(
        &me,
        &["--start-timeout", "5s", "stale-node", "--", "true"],
        b"",
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("did not start within 5s (the kubelet on stale-node never took it up"),
        "{stderr}"
    );
    assert!(helper_pods("nodegate-system", "stale-op").is_empty());
}

#[test]
fn a_cluster_that_refuses_the_critical_priority_still_gets_a_helper_with_a_warning() {
    let env = env();
    let namespace = "nodegate-no-critical";
    // A quota of zero critical pods, as some providers keep them in kube-system.
    env.cluster.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {namespace}}}
---
apiVersion: v1
kind: ResourceQuota
metadata: {{name: no-critical-pods, namespace: {namespace}}}
spec:
  hard: {{pods: "0"}}
  scopeSelector:
    matchExpressions:
    - {{scopeName: PriorityClass, operator: In, values: [system-node-critical, system-cluster-critical]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: operators-helper-pods, namespace: {namespace}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: nodegate-node-exec-helper-pods}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: Group, name: {OPERATORS}}}]
"#
    ));
    env.cluster.wait_for_default_service_account(namespace);
    let me = operator("no-critical-op");
    let out = run(
        &me,
        &[
            "--helper-namespace",
            namespace,
            "--host-pid",
            &host_pid(),
            "localhost",
            "--",
            "hostname",
        ],
        b"",
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert_eq!(text(&out.stdout).trim(), STAND_IN_HOSTNAME);
    assert!(
        stderr.contains(&format!(
            "the cluster refused priority class system-node-critical for helper pods in {namespace}"
        )) && stderr.contains("going on without it"),
        "{stderr}"
    );
    assert!(helper_pods(namespace, "no-critical-op").is_empty());
}
