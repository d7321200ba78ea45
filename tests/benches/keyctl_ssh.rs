//! Benchmark: time to the first byte of a remote command with `keyctl ssh NODE -- echo x`
//! (ephemeral key, grant, ssh, revoke), against the same steps by hand: `ssh-keygen`,
//! `keyctl grant`, `ssh`, `keyctl revoke`. A real sshd with authorized-keys-cmd on loopback, a
//! real API server. Prints figures; asserts only that the work was done.
//!
//! Run with `scripts/bench keyctl_ssh` (release binaries). `RUNS=N` changes the number of runs.
//! `VIA=direct` (or `api`) uses keyctl's own proxy and host keys from the API (`keyctl proxy`,
//! `keyctl known-hosts`); without it, ssh is sent to sshd's loopback port with `-o` options,
//! and the figures are those of the grant, the login and the revoke.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodegate_testkit::process::Scratch;
use nodegate_testkit::sshd::{KeySource, RootOwnedDir, Sshd};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

const NODE: &str = "bench-ssh";

struct Bench {
    cluster: Cluster,
    scratch: Scratch,
    sshd: Sshd,
    known_hosts: PathBuf,
    via: Option<String>,
}

impl Bench {
    /// ssh's options: sshd's loopback port and host key, unless keyctl's proxy is measured.
    fn ssh_options(&self) -> Vec<String> {
        let mut options = vec![
            "-o".into(),
            format!("Port={}", self.sshd.port),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        if self.via.is_none() {
            options.extend([
                "-o".into(),
                "ProxyCommand=none".into(),
                "-o".into(),
                "HostName=127.0.0.1".into(),
                "-o".into(),
                format!("KnownHostsCommand=/bin/cat {}", self.known_hosts.display()),
            ]);
        }
        options
    }

    fn keyctl(&self) -> Command {
        let mut cmd = Command::new(workspace_bin("keyctl"));
        cmd.arg("--kubeconfig").arg(self.cluster.admin_kubeconfig());
        cmd
    }

    fn run_ok(&self, cmd: &mut Command) {
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs `cmd`, which must print `x`; returns the time to its first byte of output and to its
/// end.
fn first_byte(cmd: &mut Command, started: Instant) -> (Duration, Duration) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).expect("a first byte");
    let first = started.elapsed();
    assert_eq!(&byte, b"x");
    let out = child.wait_with_output().expect("wait");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (first, started.elapsed())
}

fn keyctl_ssh(bench: &Bench) -> (Duration, Duration) {
    let mut cmd = bench.keyctl();
    cmd.args(["ssh", NODE, "--quiet"]);
    if let Some(via) = &bench.via {
        cmd.args(["--via", via]);
    }
    cmd.args(bench.ssh_options()).args(["--", "echo", "x"]);
    first_byte(&mut cmd, Instant::now())
}

fn by_hand(bench: &Bench, run: usize) -> (Duration, Duration) {
    let started = Instant::now();
    let private = bench.scratch.join(format!("hand-{run}"));
    bench.run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&private),
    );
    let public = private.with_extension("pub");
    bench.run_ok(
        bench
            .keyctl()
            .args(["grant", NODE, "--expires", "15m", "--key"])
            .arg(&public),
    );
    let mut ssh = Command::new("ssh");
    ssh.arg("-i")
        .arg(&private)
        .args(["-o", "IdentitiesOnly=yes", "-l", "root"])
        .args(bench.ssh_options());
    if let Some(via) = &bench.via {
        let keyctl = workspace_bin("keyctl");
        let kubeconfig = bench.cluster.admin_kubeconfig();
        ssh.arg("-o").arg(format!(
            "ProxyCommand={} --kubeconfig {} proxy --via {via} {NODE} %p",
            keyctl.display(),
            kubeconfig.display()
        ));
        ssh.arg("-o").arg(format!(
            "KnownHostsCommand={} --kubeconfig {} known-hosts %H",
            keyctl.display(),
            kubeconfig.display()
        ));
        ssh.args(["-o", "UserKnownHostsFile=/dev/null"]);
    }
    ssh.args([
        "-o",
        &format!("HostKeyAlias={NODE}"),
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .args(["--", NODE, "echo x"]);
    let (first, _) = first_byte(&mut ssh, started);
    bench.run_ok(bench.keyctl().args(["revoke", NODE, "--key"]).arg(&public));
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_file(&public);
    (first, started.elapsed())
}

fn summary(label: &str, figures: &mut [Duration]) {
    figures.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<44} median {:>7.1} ms   min {:>7.1} ms   max {:>7.1} ms   ({} runs)",
        ms(figures[figures.len() / 2]),
        ms(figures[0]),
        ms(figures[figures.len() - 1]),
        figures.len()
    );
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
        .max(1);
    let via = std::env::var("VIA").ok().filter(|v| !v.is_empty());
    let cluster = Cluster::start();
    cluster.create_node(NODE);
    let scratch = Scratch::new("bench-ssh");
    let node_kubeconfig = cluster.node_kubeconfig(NODE, Validity::Current);
    let config = scratch.write(
        "authorized-keys-cmd.toml",
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\nfreshness = \"0s\"\n",
            node_kubeconfig.display(),
            scratch.join("cache.sqlite").display()
        ),
    );
    let dir = RootOwnedDir::new("bench-ssh");
    let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start(
        &scratch,
        "sshd",
        &KeySource::authorized_keys_cmd(program, &config),
    );
    let host_key =
        std::fs::read_to_string(scratch.join("sshd/ssh_host_ed25519_key.pub")).expect("host key");
    let known_hosts = scratch.write("known_hosts", format!("{NODE} {}", host_key.trim()));
    if via.is_some() {
        // keyctl proxy --via direct needs an address; known-hosts needs the published keys.
        let out = Command::new(workspace_bin("authorized-keys-cmd"))
            .arg("--config")
            .arg(&config)
            .arg("publish-host-keys")
            .arg("--host-key-dir")
            .arg(scratch.join("sshd"))
            .output()
            .expect("publish-host-keys");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.patch_node_status(
            NODE,
            &serde_json::json!({"status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}}),
        );
    }
    let bench = Bench {
        cluster,
        scratch,
        sshd,
        known_hosts,
        via,
    };
    let path = bench.via.as_deref().map_or("ssh to loopback", |v| match v {
        "api" => "through the API",
        _ => "direct, keyctl proxy",
    });

    // One of each first, unmeasured: the API server's and sshd's caches warm up.
    keyctl_ssh(&bench);
    by_hand(&bench, 0);

    let (mut one_first, mut one_total, mut hand_first, mut hand_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        let (first, total) = keyctl_ssh(&bench);
        one_first.push(first);
        one_total.push(total);
        let (first, total) = by_hand(&bench, run);
        hand_first.push(first);
        hand_total.push(total);
    }
    println!("keyctl ssh {NODE} -- echo x ({path})");
    summary("keyctl ssh: first byte", &mut one_first);
    summary("keyctl ssh: to exit (grant revoked)", &mut one_total);
    summary("by hand (keygen, grant, ssh): first byte", &mut hand_first);
    summary("by hand (.. ssh, revoke): all done", &mut hand_total);
    let left = bench.cluster.node_annotations(NODE);
    assert!(
        !left.keys().any(|k| k.starts_with("ssh.nodegate.dev/")),
        "grants left: {left:?}"
    );
    drop(dir);
}
