//! A real kubelet with containerd joined to the test cluster (owned by the node-exec work).
//!
//! Facts this relies on are in `testkit/README.md`. The node:
//!
//! - runs containerd (own config, root, state and socket under a [`Scratch`]) and kubelet 1.20
//!   from [`kube_bin_dir`], registered as node [`NODE_NAME`] (`localhost`, because the API server
//!   dials kubelets by node name);
//! - lives in its own PID and mount namespaces (`unshare --pid --mount --kill-child`): when the
//!   test process ends, however it ends, the reaper stops `unshare`, the kernel kills every
//!   process of the namespace (kubelet, containerd, shims, containers), and every mount made for
//!   containers disappears with the mount namespace. `hostPID` pods therefore see the node's PID
//!   namespace, not the machine's: processes meant to be "the host" are started in it with
//!   [`Kubelet::spawn_in_node`];
//! - has one image, [`TEST_IMAGE`]: busybox with test users (see [`TEST_USERS`]), built by hand as
//!   an OCI tarball and imported (no registry is reachable); it is also the sandbox image;
//! - runs with `--cloud-provider=external`, so its `status.addresses` are the harness's (see
//!   [`Kubelet::set_addresses`]), never the machine's own IP;
//! - has a CNI network config but no CNI plugin: the node is Ready, yet only
//!   `hostNetwork: true` pods start.
//!
//! Only one kubelet per machine at a time is safe (cgroups, runc state), so [`Kubelet::start`]
//! holds an exclusive lock on [`LOCK_FILE`] for the life of the test process.

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::cluster::{Cluster, kube_bin_dir};
use crate::pki::Validity;
use crate::process::{Daemon, SH_RUNNING, Scratch, free_port, last_lines, start_time, wait_until};

/// The node's name: it must resolve to 127.0.0.1 for the API server to reach the kubelet.
pub const NODE_NAME: &str = "localhost";
/// The image every pod on this node can use (`imagePullPolicy: Never`).
pub const TEST_IMAGE: &str = "localhost/busybox:1";
/// The taint a kubelet with `--cloud-provider=external` registers with, until a cloud controller
/// initializes the node (here: the harness, which sets the addresses and removes it).
pub const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";
/// Held while a kubelet runs, so that test binaries do not run two at once.
pub const LOCK_FILE: &str = "/tmp/nodegate-kubelet.lock";

/// Users of the test image's `/etc/passwd` (name, uid, gid, home).
pub const TEST_USERS: &[(&str, u32, u32, &str)] = &[
    ("root", 0, 0, "/root"),
    ("alice", 1000, 1000, "/home/alice"),
    ("bob", 1001, 1001, "/home/bob"),
    ("nobody", 65534, 65534, "/nonexistent"),
];

/// The test image's `/etc/group`: alice is also in `staff`.
const TEST_GROUPS: &str =
    "root:x:0:\nstaff:x:50:alice\nalice:x:1000:\nbob:x:1001:\nnogroup:x:65534:\n";

/// The node's init: starts containerd, imports the image, then runs the kubelet.
/// Arguments: DIR KUBELET ARGS...
const NODE_INIT: &str = r#"
dir=$1 kubelet=$2
shift 2
# The runtime and kubelet also write to fixed paths: shim sockets and runc state under
# /run/containerd, pod logs under /var/log, the device-plugin socket under /var/lib/kubelet.
# Bind scratch dirs over them, in this mount namespace only, so nothing is left on the machine.
mkdir -p "$dir/run" "$dir/log" "$dir/var-lib-kubelet"
mount --bind "$dir/run" /run || exit 1
mount --bind "$dir/log" /var/log || exit 1
if [ ! -d /var/lib/kubelet ]; then
  mkdir /var/lib/kubelet && : >"$dir/made-var-lib-kubelet"
fi
mount --bind "$dir/var-lib-kubelet" /var/lib/kubelet || exit 1
containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
i=0
until [ -S "$dir/containerd.sock" ]; do
  i=$((i + 1)); [ $i -gt 600 ] && { echo "containerd did not start" >&2; exit 1; }
  sleep 0.05
done
ctr -a "$dir/containerd.sock" -n k8s.io images import "$dir/image.tar" >"$dir/import.log" 2>&1 \
  || { echo "image import failed" >&2; cat "$dir/import.log" >&2; exit 1; }
echo imported
"$kubelet" "$@" >"$dir/kubelet.log" 2>&1 &
wait
"#;

/// Runs beside the node and cleans up after it when the reaper stops both: the cgroups of
/// containers killed with the node (runc never got to remove them) and the mount point
/// `/var/lib/kubelet` if the node had to create it. Arguments: DIR NODE_PID:START (the node's
/// `unshare`, which ignores SIGTERM: killing it makes the kernel end the whole node at once; its
/// start time, so that a pid reused after the node ended is never signalled). Preceded by
/// [`SH_RUNNING`].
const NODE_CLEANER: &str = r#"
dir=$1 node=${2%%:*} node_start=${2#*:} sleeper=
clean() {
  # Our own unreaped child: its pid cannot have been reused.
  [ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
  running "$node" "$node_start" && kill -KILL "$node" 2>/dev/null
  i=0
  # The reaper kills whatever is left after 10 s.
  while [ $i -lt 90 ]; do
    left=
    for task in "$dir"/containerd/state/io.containerd.runtime.v2.task/k8s.io/*; do
      id=${task##*/}
      for cgroup in /sys/fs/cgroup/*/k8s.io/"$id" /sys/fs/cgroup/k8s.io/"$id"; do
        if [ -d "$cgroup" ]; then rmdir "$cgroup" 2>/dev/null || left=1; fi
      done
    done
    [ -z "$left" ] && break
    sleep 0.1
    i=$((i + 1))
  done
  [ -n "$left" ] && echo "node-cleaner: cgroups still busy: $(ls -d /sys/fs/cgroup/*/k8s.io/*/ 2>/dev/null)"
  [ -e "$dir/made-var-lib-kubelet" ] && rmdir /var/lib/kubelet 2>/dev/null
  exit 0
}
trap clean TERM INT HUP
while :; do
  sleep 3600 &
  sleeper=$!
  wait $sleeper
done
"#;

/// A running containerd + kubelet registered as node [`NODE_NAME`].
pub struct Kubelet {
    /// Configs, logs, the containerd and kubelet state.
    pub scratch: Scratch,
    node: String,
    socket: PathBuf,
    init_pid: u32,
    /// The init's start time: `init_pid` names it only while this matches.
    init_start: u64,
    daemon: Daemon,
    _cleaner: Daemon,
    _lock: File,
}

impl Kubelet {
    /// One kubelet per test binary, joined to `cluster`, started on first use.
    pub fn shared(cluster: &'static Cluster) -> &'static Kubelet {
        static SHARED: OnceLock<Kubelet> = OnceLock::new();
        SHARED.get_or_init(|| Kubelet::start(cluster))
    }

    /// Starts containerd and a kubelet for `cluster` (and its kube-controller-manager, which
    /// pods need for their ServiceAccounts), and waits until the node has registered and its
    /// runtime is up.
    pub fn start(cluster: &Cluster) -> Kubelet {
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .unwrap_or_else(|e| panic!("open {LOCK_FILE}: {e}"));
        lock.lock()
            .unwrap_or_else(|e| panic!("lock {LOCK_FILE}: {e}"));
        cluster.start_controller_manager();

        let scratch = Scratch::new("kubelet");
        // Keep unix socket paths short (108 bytes at most).
        let dir = scratch.path().to_owned();
        build_test_image(&scratch.join("image"), &scratch.join("image.tar"));
        let socket = dir.join("containerd.sock");
        fs::write(dir.join("containerd.toml"), containerd_config(&dir))
            .expect("write containerd.toml");
        // A network config makes the runtime report NetworkReady, so the node is Ready as a real
        // one would be. No CNI plugin binary exists: only hostNetwork pods (which never call
        // CNI) can start; others fail with "failed to find plugin".
        fs::create_dir_all(dir.join("cni/conf")).expect("create cni/conf");
        write_network_config(&dir);

        let port = free_port();
        let kubeconfig = cluster.node_kubeconfig(NODE_NAME, Validity::Current);
        let kubelet_args: Vec<String> = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={NODE_NAME}"),
            "--container-runtime=remote".into(),
            format!("--container-runtime-endpoint=unix://{}", socket.display()),
            format!("--pod-infra-container-image={TEST_IMAGE}"),
            "--fail-swap-on=false".into(),
            "--cgroups-per-qos=false".into(),
            "--enforce-node-allocatable=".into(),
            "--cgroup-driver=cgroupfs".into(),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--cert-dir={}", dir.join("kubelet-pki").display()),
            format!("--client-ca-file={}", cluster.pki.ca_cert().display()),
            "--authorization-mode=AlwaysAllow".into(),
            "--anonymous-auth=false".into(),
            "--address=127.0.0.1".into(),
            format!("--port={port}"),
            "--read-only-port=0".into(),
            "--healthz-port=0".into(),
            "--image-gc-high-threshold=100".into(),
            "--eviction-hard=".into(),
            "--serialize-image-pulls=false".into(),
            // The node shares the machine's network namespace: leave its firewall alone.
            "--make-iptables-util-chains=false".into(),
            // Leave `status.addresses` to "a cloud controller", i.e. the harness: otherwise the
            // kubelet advertises the machine's own IP, which tests must never dial. It then
            // registers with the `uninitialized` taint, which the harness removes.
            "--cloud-provider=external".into(),
            "--v=2".into(),
        ];
        let mut command = Command::new("unshare");
        command
            .args(["--pid", "--mount", "--fork", "--kill-child", "--mount-proc"])
            .args(["sh", "-c", NODE_INIT, "node-init"])
            .arg(&dir)
            .arg(kube_bin_dir().join("kubelet"))
            .args(&kubelet_args);
        let mut daemon = scratch.spawn("node", &mut command);
        let unshare_pid = daemon.pid().expect("just started");
        // Read while `daemon` is unreaped, so the pid still names the node's unshare.
        let unshare_start = start_time(unshare_pid).expect("the node's unshare is running");
        let cleaner = scratch.spawn(
            "node-cleaner",
            Command::new("sh")
                .args(["-c", &format!("{SH_RUNNING}{NODE_CLEANER}"), "node-cleaner"])
                .arg(&dir)
                .arg(format!("{unshare_pid}:{unshare_start}")),
        );
        let mut init_pid = None;
        let found = wait_until(Duration::from_secs(10), || {
            init_pid = child_of(unshare_pid);
            init_pid.is_some() || !daemon.is_running()
        });
        let init_pid = init_pid.filter(|_| found).unwrap_or_else(|| {
            panic!(
                "the node's namespaces did not start: {}",
                daemon.log_tail(20)
            )
        });
        let init_start = start_time(init_pid).expect("the node's init is running");

        let kubelet = Kubelet {
            scratch,
            node: NODE_NAME.to_owned(),
            socket,
            init_pid,
            init_start,
            daemon,
            _cleaner: cleaner,
            _lock: lock,
        };
        kubelet.wait_registered(cluster);
        kubelet.set_addresses(cluster, &[]);
        cluster.kubectl_ok(&[
            "taint",
            "node",
            NODE_NAME,
            &format!("{UNINITIALIZED_TAINT}-"),
        ]);
        kubelet
    }

    /// Sets the node's `status.addresses` to `addresses` (type, address) plus `Hostname`
    /// [`NODE_NAME`], which the API server dials the kubelet by. The kubelet runs with
    /// `--cloud-provider=external`, so it never writes its own (the machine's IP) over them.
    /// Never give it an address of the machine's other interfaces: tests would dial it.
    pub fn set_addresses(&self, cluster: &Cluster, addresses: &[(&str, &str)]) {
        let mut list: Vec<serde_json::Value> = vec![serde_json::json!({"$patch": "replace"})];
        list.extend(
            addresses
                .iter()
                .map(|(kind, address)| serde_json::json!({"type": kind, "address": address})),
        );
        list.push(serde_json::json!({"type": "Hostname", "address": NODE_NAME}));
        cluster.patch_node_status(
            &self.node,
            &serde_json::json!({"status": {"addresses": list}}),
        );
    }

    /// The status of the node's Ready condition (`True`, `False`, `Unknown`), empty if unknown.
    fn ready_status(&self, cluster: &Cluster) -> Vec<u8> {
        cluster
            .kubectl(&[
                "get",
                "node",
                &self.node,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .stdout
    }

    fn wait_registered(&self, cluster: &Cluster) {
        let runtime_up = wait_until(Duration::from_secs(120), || {
            self.ready_status(cluster) == b"True"
        });
        assert!(
            runtime_up,
            "the kubelet did not register a working node; node log:\n{}\ncontainerd log:\n{}\nkubelet log:\n{}",
            self.daemon.log_tail(20),
            self.log_tail("containerd", 30),
            self.log_tail("kubelet", 60),
        );
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The image pods on this node can run (with `imagePullPolicy: Never`).
    pub fn image(&self) -> &str {
        TEST_IMAGE
    }

    /// Imports the OCI image archive `tarball` into the node's containerd, where pods with
    /// `imagePullPolicy: Never` find it.
    pub fn import_image(&self, tarball: &Path) {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(tarball));
    }

    /// The last `lines` lines of `containerd`'s or `kubelet`'s log.
    pub fn log_tail(&self, which: &str, lines: usize) -> String {
        let log = fs::read_to_string(self.scratch.join(format!("{which}.log"))).unwrap_or_default();
        last_lines(&log, lines)
    }

    /// Runs `command` inside the node's PID and mount namespaces (where `hostPID` pods look).
    pub fn command_in_node(&self, program: &str) -> Command {
        // Entering another process's namespaces by a stale pid would run the command anywhere.
        assert_eq!(
            start_time(self.init_pid),
            Some(self.init_start),
            "the node's init (pid {}) is gone: the node has ended",
            self.init_pid
        );
        let mut command = Command::new("nsenter");
        command
            .args(["-t", &self.init_pid.to_string(), "--pid", "--mount", "--"])
            .arg(program);
        command
    }

    /// Starts a long-running process in the node's namespaces and returns it with its PID as the
    /// node sees it (what `--host-pid` takes). `script` runs under `sh -c` and must end by
    /// `exec`ing the long-running program; e.g. a stand-in "host" with its own hostname:
    /// `spawn_in_node("host", &["unshare", "--uts", "--mount", "--fork"], "hostname h; exec sleep 3600")`.
    pub fn spawn_in_node(&self, name: &str, wrapper: &[&str], script: &str) -> InNode {
        let pid_file = self.scratch.join(format!("{name}.pid"));
        let _ = fs::remove_file(&pid_file);
        let inner = format!("echo $$ > '{}'; {script}", pid_file.display());
        let mut command = self.command_in_node("/bin/sh");
        // `nsenter /bin/sh -c 'exec WRAPPER sh -c INNER'`: the wrapper (e.g. unshare) runs
        // inside the node's PID namespace, and INNER reports its PID as seen there.
        let wrapped = if wrapper.is_empty() {
            "exec sh -c \"$0\"".to_owned()
        } else {
            format!("exec {} sh -c \"$0\"", wrapper.join(" "))
        };
        command.args(["-c", &wrapped, &inner]);
        let daemon = self.scratch.spawn(name, &mut command);
        let mut pid = None;
        let started = wait_until(Duration::from_secs(10), || {
            pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            pid.is_some()
        });
        assert!(
            started,
            "{name} did not start in the node: {}",
            daemon.log_tail(10)
        );
        InNode {
            pid: pid.expect("read above"),
            daemon,
        }
    }

    /// Takes the node's pod network down (removes its CNI config: the runtime reports
    /// NetworkReady=false and the node goes NotReady, as with a broken network plugin) or brings
    /// it back, and waits until the node's Ready condition says so. Running pods go on.
    pub fn set_pod_network(&self, cluster: &Cluster, up: bool) {
        if up {
            write_network_config(self.scratch.path());
        } else {
            fs::remove_file(network_config(self.scratch.path())).expect("remove the CNI config");
        }
        let want = if up { "True" } else { "False" };
        let changed = wait_until(Duration::from_secs(60), || {
            self.ready_status(cluster) == want.as_bytes()
        });
        assert!(
            changed,
            "node {} did not become Ready={want}; kubelet log:\n{}",
            self.node,
            self.log_tail("kubelet", 20)
        );
    }

    /// Waits until pod `namespace/name` runs; panics with its status and the kubelet's log if
    /// it does not within `timeout`.
    pub fn wait_pod_running(
        &self,
        cluster: &Cluster,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) {
        let running = wait_until(timeout, || {
            let out = cluster.kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.containerStatuses[*].state.running.startedAt}",
            ]);
            out.status.success() && !out.stdout.is_empty()
        });
        assert!(
            running,
            "pod {namespace}/{name} did not run:\n{}\nkubelet log:\n{}",
            String::from_utf8_lossy(
                &cluster
                    .kubectl(&["describe", "pod", name, "-n", namespace])
                    .stdout
            ),
            self.log_tail("kubelet", 40)
        );
    }
}

/// The node's CNI network config under the node's directory `dir`.
fn network_config(dir: &Path) -> PathBuf {
    dir.join("cni/conf/10-nodegate-test.conflist")
}

/// Writes the node's CNI network config (see [`Kubelet::set_pod_network`]).
fn write_network_config(dir: &Path) {
    fs::write(
        network_config(dir),
        r#"{"cniVersion": "0.4.0", "name": "nodegate-test", "plugins": [{"type": "loopback"}]}"#,
    )
    .expect("write the CNI config");
}

/// A process started in the node's namespaces by [`Kubelet::spawn_in_node`].
pub struct InNode {
    /// Its PID in the node's PID namespace.
    pub pid: u32,
    /// The process (from the machine's side).
    pub daemon: Daemon,
}

/// The first child of `pid`, from `/proc/PID/task/PID/children`.
fn child_of(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn containerd_config(dir: &Path) -> String {
    format!(
        r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
disabled_plugins = ["io.containerd.internal.v1.tracing", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{dir}/containerd.sock"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{TEST_IMAGE}"
  # These machines lack CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{dir}/cni/bin"
    conf_dir = "{dir}/cni/conf"
"#,
        dir = dir.display()
    )
}

/// Builds [`TEST_IMAGE`] as an OCI image tarball at `tarball`, using `work` as a workspace:
/// the machine's static busybox with a symlink per applet, test users, `/tmp`.
pub fn build_test_image(work: &Path, tarball: &Path) {
    let rootfs = work.join("rootfs");
    add_busybox(&rootfs);
    for sub in [
        "bin",
        "etc",
        "tmp",
        "root",
        "home/alice",
        "home/bob",
        "proc",
        "sys",
        "dev",
    ] {
        fs::create_dir_all(rootfs.join(sub)).expect("create rootfs dirs");
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777))
        .expect("chmod /tmp");
    let passwd: String = TEST_USERS
        .iter()
        .map(|(name, uid, gid, home)| format!("{name}:x:{uid}:{gid}:{name}:{home}:/bin/sh\n"))
        .collect();
    fs::write(rootfs.join("etc/passwd"), passwd).expect("write passwd");
    fs::write(rootfs.join("etc/group"), TEST_GROUPS).expect("write group");
    for (_, uid, gid, home) in TEST_USERS.iter().filter(|u| u.3.starts_with("/home/")) {
        std::os::unix::fs::chown(rootfs.join(&home[1..]), Some(*uid), Some(*gid))
            .expect("chown home");
    }
    pack_image(work, &rootfs, TEST_IMAGE, tarball);
}

/// An image with nothing but busybox: no `/tmp`, no `/etc` (so no users), for helpers that must
/// not depend on their image's layout.
pub const BARE_IMAGE: &str = "localhost/busybox-bare:1";

/// Builds [`BARE_IMAGE`] as an OCI image tarball at `tarball` (import it with
/// [`Kubelet::import_image`]), using `work` as a workspace.
pub fn build_bare_image(work: &Path, tarball: &Path) {
    let rootfs = work.join("rootfs");
    add_busybox(&rootfs);
    pack_image(work, &rootfs, BARE_IMAGE, tarball);
}

/// The machine's static busybox as `/bin/busybox` of `rootfs`, with a symlink per applet.
fn add_busybox(rootfs: &Path) {
    fs::create_dir_all(rootfs.join("bin")).expect("create rootfs /bin");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .expect("static busybox (Debian package busybox-static; run testkit/install-deps)");
    fs::copy(busybox, rootfs.join("bin/busybox")).expect("copy busybox");
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&applets.stdout).lines() {
        let link = rootfs.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", link).expect("applet symlink");
        }
    }
}

/// Packs `rootfs` as a one-layer OCI image named `name` into the tarball `tarball`.
fn pack_image(work: &Path, rootfs: &Path, name: &str, tarball: &Path) {
    let blobs = work.join("oci/blobs/sha256");
    fs::create_dir_all(&blobs).expect("create blobs dir");
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."));
    let layer_digest = add_blob(&blobs, &fs::read(&layer).expect("read layer"));
    let config = serde_json::json!({
        "architecture": oci_architecture(),
        "os": "linux",
        // Also the pod sandbox image, which runs this Cmd for the pod's whole life: it must
        // block (a bare `sh` without stdin would exit at once and take every pod down).
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sleep", "2147483647"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", layer_digest.0)]},
    });
    let config_digest = add_blob(&blobs, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", config_digest.0), "size": config_digest.1,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{}", layer_digest.0), "size": layer_digest.1,
        }],
    });
    let manifest_digest = add_blob(&blobs, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", manifest_digest.0), "size": manifest_digest.1,
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": name.rsplit_once(':').map_or("latest", |(_, tag)| tag),
            },
        }],
    });
    fs::write(work.join("oci/index.json"), index.to_string()).expect("write index.json");
    fs::write(
        work.join("oci/oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    run(Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(work.join("oci"))
        .arg("-cf")
        .arg(tarball)
        .args(["oci-layout", "index.json", "blobs"]));
}

/// This machine's architecture as OCI images name it (Go's GOARCH).
fn oci_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Stores `data` as a blob; returns its sha256 (hex) and size.
fn add_blob(blobs: &Path, data: &[u8]) -> (String, usize) {
    let tmp = blobs.join("incoming");
    fs::write(&tmp, data).expect("write blob");
    let out = run(Command::new("sha256sum").arg(&tmp));
    let hex = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum output")
        .to_owned();
    fs::rename(&tmp, blobs.join(&hex)).expect("name blob");
    (hex, data.len())
}

fn run(command: &mut Command) -> Output {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
