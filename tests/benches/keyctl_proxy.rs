//! Benchmark: throughput of a 100 MB transfer over ssh with `keyctl proxy` as the ProxyCommand,
//! through the API server (`--via api`: apiserver -> kubelet -> containerd exec -> busybox nc ->
//! sshd) against directly (`--via direct`: a TCP socket to the node's address), both ways
//! (`cat >/dev/null` fed 100 MB, and `head -c 100M /dev/zero` read back), and the peak memory
//! (max RSS, GNU time) of `keyctl proxy` during those. Everything on loopback: a real
//! kube-apiserver, kubelet 1.20 with containerd, and sshd on this machine. Prints figures;
//! asserts only that each transfer moved every byte.
//!
//! Run with `scripts/bench keyctl_proxy` (release binaries). `RUNS=N` changes the number of runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::kubelet::Kubelet;
use nodegate_testkit::process::Scratch;
use nodegate_testkit::sshd::{KeySource, SshKey, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, workspace_bin, workspace_root};

const SIZE: u64 = 100 * 1024 * 1024;
/// An API-only node whose address (127.0.0.1) answers.
const DIRECT_NODE: &str = "bench-direct";

struct Setup {
    kubelet: Kubelet,
    admin: PathBuf,
    sshd: Sshd,
    key: SshKey,
    scratch: Scratch,
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let cluster = Cluster::start();
    eprintln!("starting a kubelet with containerd...");
    let kubelet = Kubelet::start(&cluster);
    let namespace =
        std::fs::read_to_string(workspace_root().join("packaging/node-exec-namespace.yaml"))
            .expect("read the namespace manifest");
    cluster.apply(&namespace);
    cluster.wait_for_default_service_account("nodegate-system");
    kubelet.set_addresses(&cluster, &[("InternalIP", "127.0.0.2")]);
    cluster.create_node(DIRECT_NODE);
    cluster.patch_node_status(
        DIRECT_NODE,
        &serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
    );
    let scratch = Scratch::new("bench-keyctl-proxy");
    let key = ssh_keygen(scratch.path(), "bench");
    let authorized = scratch.write("authorized_keys", format!("{}\n", key.public));
    let sshd = Sshd::start(&scratch, "sshd", &KeySource::File(authorized));
    let setup = Setup {
        admin: cluster.admin_kubeconfig().to_owned(),
        kubelet,
        sshd,
        key,
        scratch,
    };

    eprintln!("warming up...");
    transfer(&setup, "api", Direction::Up);
    transfer(&setup, "direct", Direction::Up);

    let mut rows: Vec<(String, Vec<Duration>, Vec<u64>)> = Vec::new();
    for via in ["direct", "api"] {
        for direction in [Direction::Up, Direction::Down] {
            let mut times = Vec::new();
            let mut rss = Vec::new();
            for run in 1..=runs {
                eprintln!("{via} {direction:?} run {run}/{runs}");
                let (took, kib) = transfer(&setup, via, direction);
                times.push(took);
                rss.push(kib);
            }
            rows.push((format!("--via {via}, {}", direction.label()), times, rss));
        }
    }

    println!();
    println!(
        "keyctl proxy benchmark: 100 MiB over ssh with keyctl proxy as ProxyCommand, {runs} runs each"
    );
    println!(
        "(real kube-apiserver + kubelet 1.20 + containerd + sshd on this machine, all on loopback;"
    );
    println!(
        " times include the ssh login and, through the API, the helper pod's start and deletion)"
    );
    println!();
    println!(
        "{:<40} {:>10} {:>12} {:>12} {:>14}",
        "path", "median", "MiB/s", "min", "keyctl maxRSS"
    );
    for (label, mut times, mut rss) in rows {
        times.sort();
        rss.sort();
        let median = times[times.len() / 2];
        println!(
            "{:<40} {:>7} ms {:>12.1} {:>9} ms {:>10} MiB",
            label,
            median.as_millis(),
            SIZE as f64 / 1024.0 / 1024.0 / median.as_secs_f64(),
            times[0].as_millis(),
            rss[rss.len() - 1] / 1024,
        );
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    /// To the node: `cat >/dev/null` fed from here.
    Up,
    /// From the node: `head -c SIZE /dev/zero` read here.
    Down,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::Up => "to the node (cat >/dev/null)",
            Direction::Down => "from the node (head -c)",
        }
    }
}

/// One ssh transfer through `keyctl proxy --via VIA`: its wall time and keyctl's max RSS (KiB).
fn transfer(setup: &Setup, via: &str, direction: Direction) -> (Duration, u64) {
    let host = if via == "api" {
        setup.kubelet.node_name()
    } else {
        DIRECT_NODE
    };
    let rss_file = setup.scratch.join("rss");
    let _ = std::fs::remove_file(&rss_file);
    let proxy = format!(
        // ssh ends its ProxyCommand with SIGHUP: GNU time ignores it (keyctl, which catches it,
        // still gets it), so that it lives to write the figure.
        "sh -c 'trap \"\" HUP; exec /usr/bin/time -o {rss} -f %%M {keyctl} --kubeconfig {admin} proxy --quiet --via {via} --image {image} --image-pull-policy Never %h %p'",
        rss = rss_file.display(),
        keyctl = workspace_bin("keyctl").display(),
        admin = setup.admin.display(),
        image = setup.kubelet.image(),
    );
    let remote = match direction {
        Direction::Up => "cat >/dev/null && echo ok".to_owned(),
        Direction::Down => format!("head -c {SIZE} /dev/zero"),
    };
    let mut ssh = ssh(setup, &proxy, host, &remote);
    let started = Instant::now();
    let out = match direction {
        Direction::Up => {
            let mut feeder = Command::new("head")
                .args(["-c", &SIZE.to_string(), "/dev/zero"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("head");
            let out = ssh.stdin(feeder.stdout.take().expect("piped")).output();
            let _ = feeder.wait();
            out
        }
        Direction::Down => ssh.stdin(Stdio::null()).output(),
    }
    .expect("run ssh");
    let took = started.elapsed();
    let ok = match direction {
        Direction::Up => out.stdout == b"ok\n",
        Direction::Down => out.stdout.len() as u64 == SIZE,
    };
    assert!(
        out.status.success() && ok,
        "transfer {via} {direction:?} failed ({:?}, {} bytes out): {}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    (took, read_rss(&rss_file))
}

fn read_rss(file: &Path) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

fn ssh(setup: &Setup, proxy: &str, host: &str, command: &str) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-i"])
        .arg(&setup.key.private)
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
        .arg(setup.sshd.port.to_string())
        .arg(format!("root@{host}"))
        .arg(command)
        .stderr(Stdio::piped());
    cmd
}
