//! Benchmark: time from invocation to the first output of a host command through a privileged
//! helper pod, with `node-exec NODE -- echo ready` and, side by side, the same flow by hand with
//! kubectl (create the pod, `kubectl wait` until Ready, `kubectl exec ... nsenter ...`, delete).
//! Both run against a real kubelet with containerd and the locally imported image (no pulls).
//! Prints figures; asserts only that each run printed what it should.
//!
//! Run with `scripts/bench node_exec` (release binaries). `RUNS=N` changes the number of runs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::kubelet::Kubelet;
use nodegate_testkit::{Cluster, workspace_bin, workspace_root};

const HELPER_NAMESPACE: &str = "nodegate-system";

/// One run: when the first byte of output arrived, and when everything (pod deleted) was done.
struct Timing {
    first_output: Duration,
    total: Duration,
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    let cluster = Cluster::start();
    eprintln!("starting a kubelet with containerd...");
    let kubelet = Kubelet::start(&cluster);
    let namespace =
        std::fs::read_to_string(workspace_root().join("packaging/node-exec-namespace.yaml"))
            .expect("read the namespace manifest");
    cluster.apply(&namespace);
    cluster.wait_for_default_service_account(HELPER_NAMESPACE);
    let host = kubelet.spawn_in_node(
        "bench-host",
        &["unshare", "--uts", "--mount", "--fork"],
        "hostname bench-host; exec sleep 3600",
    );
    let host_pid = host.pid.to_string();
    let admin = cluster.admin_kubeconfig();

    eprintln!("warming up...");
    node_exec_run(admin, &kubelet, &host_pid);
    kubectl_run(admin, &kubelet, &host_pid, 0);

    let mut ours = Vec::new();
    let mut by_hand = Vec::new();
    for run in 1..=runs {
        eprintln!("run {run}/{runs}");
        ours.push(node_exec_run(admin, &kubelet, &host_pid));
        by_hand.push(kubectl_run(admin, &kubelet, &host_pid, run));
    }

    println!();
    println!("node-exec benchmark: host command through a privileged helper pod, {runs} runs each");
    println!(
        "(real kube-apiserver + kubelet 1.20 + containerd on this machine, image already local)"
    );
    println!();
    println!(
        "{:<46} {:>14} {:>10} {:>10}",
        "flow", "median", "min", "max"
    );
    for (label, timings, pick) in [
        (
            "node-exec NODE -- echo: first output",
            &ours,
            (|t: &Timing| t.first_output) as fn(&Timing) -> Duration,
        ),
        (
            "kubectl create/wait/exec: first output",
            &by_hand,
            |t: &Timing| t.first_output,
        ),
        ("node-exec: whole run (pod deleted)", &ours, |t: &Timing| {
            t.total
        }),
        (
            "kubectl create/wait/exec/delete: whole run",
            &by_hand,
            |t: &Timing| t.total,
        ),
    ] {
        let mut values: Vec<Duration> = timings.iter().map(pick).collect();
        values.sort();
        println!(
            "{:<46} {:>11} ms {:>7} ms {:>7} ms",
            label,
            values[values.len() / 2].as_millis(),
            values[0].as_millis(),
            values[values.len() - 1].as_millis(),
        );
    }
    let leftover = cluster.kubectl_ok(&["get", "pods", "-n", HELPER_NAMESPACE, "-o", "name"]);
    println!();
    println!(
        "pods left in {HELPER_NAMESPACE} right after the runs: {}",
        leftover.lines().count()
    );
}

/// `node-exec --host-pid PID NODE -- echo ready`, timed to its first byte of output and to its
/// exit (after it deleted the helper pod).
fn node_exec_run(admin: &Path, kubelet: &Kubelet, host_pid: &str) -> Timing {
    let start = Instant::now();
    let mut child = Command::new(workspace_bin("node-exec"))
        .env("HOME", kubelet.scratch.path())
        .env_remove("NODE_EXEC_CONFIG")
        .arg("--kubeconfig")
        .arg(admin)
        .args(["--image", kubelet.image(), "--image-pull-policy", "Never"])
        .args(["--quiet", "--host-pid", host_pid, kubelet.node_name()])
        .args(["--", "echo", "ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node-exec (scripts/bench builds it)");
    let (first_output, output) = first_byte_then_rest(child.stdout.take().expect("piped"), start);
    let out = child.wait_with_output().expect("wait for node-exec");
    let total = start.elapsed();
    assert!(
        out.status.success() && output == "ready\n",
        "node-exec failed ({:?}): stdout {output:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Timing {
        first_output,
        total,
    }
}

/// The same by hand: create a privileged pod like node-exec's, wait for it, exec nsenter in it,
/// delete it.
fn kubectl_run(admin: &Path, kubelet: &Kubelet, host_pid: &str, run: usize) -> Timing {
    let name = format!("by-hand-{run}");
    let pod = format!(
        r#"{{"apiVersion": "v1", "kind": "Pod",
  "metadata": {{"name": "{name}", "namespace": "{HELPER_NAMESPACE}"}},
  "spec": {{"nodeName": "{node}", "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
    "automountServiceAccountToken": false, "hostPID": true, "hostNetwork": true, "hostIPC": true,
    "tolerations": [{{"operator": "Exists"}}],
    "containers": [{{"name": "shell", "image": "{image}", "imagePullPolicy": "Never",
      "command": ["sleep", "7200"], "securityContext": {{"privileged": true}}}}]}}}}"#,
        node = kubelet.node_name(),
        image = kubelet.image(),
    );
    let kubectl = |args: &[&str]| {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(admin).args(args);
        command
    };
    let start = Instant::now();
    let mut create = kubectl(&["create", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("kubectl create");
    std::io::Write::write_all(&mut create.stdin.take().expect("piped"), pod.as_bytes())
        .expect("write the pod");
    assert!(create.wait().expect("kubectl create").success());
    let ready = kubectl(&[
        "wait",
        "-n",
        HELPER_NAMESPACE,
        "--for=condition=Ready",
        "--timeout=90s",
        &format!("pod/{name}"),
    ])
    .stdout(Stdio::null())
    .status()
    .expect("kubectl wait");
    assert!(ready.success(), "pod {name} did not become ready");
    let mut exec = kubectl(&["exec", "-n", HELPER_NAMESPACE, &name, "--"])
        .args([
            "nsenter", "-t", host_pid, "-m", "-u", "-i", "-n", "-p", "--",
        ])
        .args(["echo", "ready"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kubectl exec");
    let (first_output, output) = first_byte_then_rest(exec.stdout.take().expect("piped"), start);
    assert!(exec.wait().expect("kubectl exec").success() && output == "ready\n");
    let deleted = kubectl(&[
        "delete",
        "pod",
        "-n",
        HELPER_NAMESPACE,
        &name,
        "--wait=false",
    ])
    .stdout(Stdio::null())
    .status()
    .expect("kubectl delete");
    assert!(deleted.success());
    Timing {
        first_output,
        total: start.elapsed(),
    }
}

/// Reads `stream` to its end; returns when its first byte arrived (since `start`) and all of it.
fn first_byte_then_rest(mut stream: impl std::io::Read, start: Instant) -> (Duration, String) {
    let mut first = [0u8; 1];
    let n = stream.read(&mut first).expect("read output");
    let at = start.elapsed();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read output");
    let mut all = first[..n].to_vec();
    all.extend(rest);
    (at, String::from_utf8_lossy(&all).into_owned())
}
