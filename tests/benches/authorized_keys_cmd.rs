//! authorized-keys-cmd speed and memory against the real thing, with baselines in the same run.
//!
//! Run with `scripts/bench authorized_keys_cmd` (release binaries). Prints median wall time per
//! invocation for: a fresh-cache answer, an answer via the API, an answer with the API down
//! (connection refused, served from the cache); `cat` of a static authorized_keys file and a
//! `kubectl get node -o jsonpath` script as baselines; one real ssh login through the command
//! against one with a static AuthorizedKeysFile; and the command's peak RSS. Asserts nothing
//! about speed: the machine is shared and noisy.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::process::Scratch;
use nodegate_testkit::sshd::{KeySource, RootOwnedDir, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin, workspace_root};

const NODE: &str = "bench-node";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn p90(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() * 9 / 10]
}

/// Runs the command `make` gives `runs` times after 3 warm-up runs, checking each succeeds;
/// returns the wall times.
fn time_runs(runs: usize, mut make: impl FnMut() -> Command) -> Vec<Duration> {
    time_interleaved(runs, &mut [&mut make]).remove(0)
}

/// The binary the node package ships: the static musl build that `scripts/bench` and
/// `packaging/build-packages` make, else (with a note) the glibc build in target/release.
fn shipped_binary() -> PathBuf {
    let glibc = workspace_bin("authorized-keys-cmd");
    let musl = workspace_root()
        .join("target")
        .join(format!("{}-unknown-linux-musl", std::env::consts::ARCH))
        .join("release/authorized-keys-cmd");
    if musl.is_file() { musl } else { glibc }
}

/// Like [`time_runs`] for several commands, run in turn (one of each per round), so that load
/// changes on the machine hit them alike.
fn time_interleaved(runs: usize, makers: &mut [&mut dyn FnMut() -> Command]) -> Vec<Vec<Duration>> {
    let mut samples = vec![Vec::with_capacity(runs); makers.len()];
    for round in 0..runs + 3 {
        for (make, series) in makers.iter_mut().zip(samples.iter_mut()) {
            let mut cmd = make();
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let started = Instant::now();
            let status = cmd.status().expect("run benchmark command");
            let took = started.elapsed();
            assert!(status.success(), "{cmd:?} failed");
            if round >= 3 {
                series.push(took);
            }
        }
    }
    samples
}

fn akc(config: &Path, fingerprint: &str) -> Command {
    let mut cmd = Command::new(shipped_binary());
    cmd.arg("--config").arg(config).arg("root").arg(fingerprint);
    cmd
}

/// Peak RSS in KiB of one run, from GNU time.
fn peak_rss_kib(config: &Path, fingerprint: &str) -> u64 {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(shipped_binary())
        .arg("--config")
        .arg(config)
        .arg("root")
        .arg(fingerprint)
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time (Debian package time)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("GNU time prints the peak RSS in KiB")
}

fn write_config(
    scratch: &Scratch,
    name: &str,
    kubeconfig: &Path,
    cache: &Path,
    extra: &str,
) -> PathBuf {
    scratch.write(
        name,
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n{extra}\n",
            kubeconfig.display(),
            cache.display()
        ),
    )
}

fn ms(d: Duration) -> String {
    format!("{:8.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    // Ignore libtest-style arguments (`--bench`) that cargo passes.
    let cluster = Cluster::start();
    cluster.create_node(NODE);
    let scratch = Scratch::new("akc-bench");
    let kubeconfig = cluster.node_kubeconfig(NODE, Validity::Current);
    let prefix = AnnotationPrefix::default();

    // A realistic node: a few grants for root (one is the benchmark key), some for others.
    let key = ssh_keygen(scratch.path(), "bench");
    let mut static_lines = String::new();
    let mut fingerprint = String::new();
    for (i, user) in ["root", "root", "root", "daemon", "nobody"]
        .iter()
        .enumerate()
    {
        let k = if i == 0 {
            key.clone()
        } else {
            ssh_keygen(scratch.path(), &format!("other-{i}"))
        };
        let grant = Grant {
            user: LoginUser::new(user).expect("user"),
            key: GrantKey::parse(&k.public).expect("key"),
            expiry: Expiry::At(
                chrono::DateTime::from_timestamp(Utc::now().timestamp() + 7200, 0).expect("time"),
            ),
            granted_by: GrantText::new("granted-by", "bench").expect("text"),
            granted_at: chrono::DateTime::from_timestamp(Utc::now().timestamp(), 0).expect("time"),
            reason: Some(GrantText::new("reason", "benchmark").expect("text")),
        };
        cluster.set_node_annotation(
            NODE,
            &grant.annotation_key(&prefix),
            Some(&grant.annotation_value()),
        );
        if *user == "root" {
            static_lines.push_str(&grant.authorized_keys_line());
            static_lines.push('\n');
        }
        if i == 0 {
            fingerprint = grant.key.fingerprint().to_string();
        }
    }
    let static_file = scratch.write("authorized_keys", &static_lines);

    let cache = scratch.join("grants-cache.sqlite");
    let cached = write_config(
        &scratch,
        "cached.toml",
        &kubeconfig,
        &cache,
        "freshness = \"1h\"",
    );
    let via_api = write_config(
        &scratch,
        "api.toml",
        &kubeconfig,
        &cache,
        "freshness = \"0s\"",
    );
    let refused_kubeconfig = scratch.write(
        "refused.kubeconfig",
        std::fs::read_to_string(&kubeconfig)
            .expect("read kubeconfig")
            .replace(
                cluster.server(),
                &format!(
                    "https://127.0.0.1:{}",
                    nodegate_testkit::process::free_port()
                ),
            ),
    );
    let api_down = write_config(
        &scratch,
        "down.toml",
        &refused_kubeconfig,
        &cache,
        "freshness = \"0s\"",
    );
    // Fill the cache.
    assert!(
        akc(&via_api, &fingerprint)
            .stdout(Stdio::null())
            .status()
            .expect("run")
            .success()
    );

    let runs = 200;
    // The quick cases run in turn, one of each per round, so that machine noise hits them alike.
    let mut quick = time_interleaved(
        runs,
        &mut [
            &mut || {
                let mut c = Command::new("cat");
                c.arg(&static_file);
                c
            },
            // The floor for any command: start the binary and exit.
            &mut || {
                let mut c = Command::new(shipped_binary());
                c.arg("--version");
                c
            },
            &mut || akc(&cached, &fingerprint),
            // The same answer from the dynamically linked glibc build, for comparison.
            &mut || {
                let mut c = Command::new(workspace_bin("authorized-keys-cmd"));
                c.arg("--config").arg(&cached).arg("root").arg(&fingerprint);
                c
            },
        ],
    )
    .into_iter();
    let mut next = || quick.next().expect("one series per case");
    let (t_cat, t_startup, t_cached, t_cached_glibc) = (next(), next(), next(), next());
    let t_api = time_runs(runs, || akc(&via_api, &fingerprint));
    let t_down = time_runs(runs, || akc(&api_down, &fingerprint));
    let script = format!(
        "kubectl --kubeconfig {} get node {NODE} -o jsonpath='{{.metadata.annotations}}'",
        kubeconfig.display()
    );
    let t_kubectl = time_runs(30, || {
        let mut c = Command::new("sh");
        c.arg("-c").arg(&script);
        c
    });

    // Real ssh logins: through the command (fresh cache, as sshd sees it on repeat logins, and
    // via the API) against a static AuthorizedKeysFile.
    let dir = RootOwnedDir::new("akc-bench");
    let program = dir.install(&shipped_binary(), "authorized-keys-cmd");
    let sshd_cmd = |config: &Path, name: &str| {
        Sshd::start(
            &scratch,
            name,
            &KeySource::authorized_keys_cmd(program.clone(), config),
        )
    };
    let sshd_cached = sshd_cmd(&cached, "sshd-cached");
    let sshd_api = sshd_cmd(&via_api, "sshd-api");
    let sshd_static = Sshd::start(
        &scratch,
        "sshd-static",
        &KeySource::File(static_file.clone()),
    );
    let logins = 120;
    for sshd in [&sshd_static, &sshd_cached, &sshd_api] {
        for _ in 0..3 {
            sshd.time_login(&key, "root");
        }
    }
    // One login of each kind in turn, so that machine noise hits all three alike.
    let (mut l_static, mut l_cached, mut l_api) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..logins {
        l_static.push(sshd_static.time_login(&key, "root"));
        l_cached.push(sshd_cached.time_login(&key, "root"));
        l_api.push(sshd_api.time_login(&key, "root"));
    }

    let rss_cached = peak_rss_kib(&cached, &fingerprint);
    let rss_api = peak_rss_kib(&via_api, &fingerprint);
    let rss_down = peak_rss_kib(&api_down, &fingerprint);

    println!();
    println!("authorized-keys-cmd benchmark (median and p90 wall time per run)");
    println!("binary: {}", shipped_binary().display());
    println!(
        "{:<46} {:>11} {:>11} {:>6}",
        "case", "median", "p90", "runs"
    );
    let row = |name: &str, s: &Vec<Duration>| {
        println!(
            "{:<46} {} {} {:>6}",
            name,
            ms(median(s.clone())),
            ms(p90(s.clone())),
            s.len()
        );
    };
    row("baseline: cat static authorized_keys", &t_cat);
    row("authorized-keys-cmd --version (process floor)", &t_startup);
    row("authorized-keys-cmd, fresh cache", &t_cached);
    row("  the same, glibc build (target/release)", &t_cached_glibc);
    row("authorized-keys-cmd, via the API", &t_api);
    row("authorized-keys-cmd, API down (conn refused)", &t_down);
    row("baseline: kubectl get node -o jsonpath script", &t_kubectl);
    row("ssh login, static AuthorizedKeysFile", &l_static);
    row("ssh login, command answering from cache", &l_cached);
    row("ssh login, command asking the API", &l_api);
    println!(
        "peak RSS of authorized-keys-cmd: {:.1} MiB (cache), {:.1} MiB (API), {:.1} MiB (API down)",
        rss_cached as f64 / 1024.0,
        rss_api as f64 / 1024.0,
        rss_down as f64 / 1024.0
    );
    let ratio = |a: &Vec<Duration>, b: &Vec<Duration>| {
        median(a.clone()).as_secs_f64() / median(b.clone()).as_secs_f64()
    };
    let peak = rss_cached.max(rss_api).max(rss_down) as f64 / 1024.0;
    println!();
    println!("targets:");
    println!(
        "  fresh cache / cat          = {:5.2}x   (target <= 2x)",
        ratio(&t_cached, &t_cat)
    );
    println!(
        "  kubectl script / via API   = {:5.2}x   (target >= 4x)",
        ratio(&t_kubectl, &t_api)
    );
    println!(
        "  ssh login cache / static   = {:+5.1}%   (target <= +10%)",
        (ratio(&l_cached, &l_static) - 1.0) * 100.0
    );
    println!(
        "  ssh login API / static     = {:+5.1}%   (target <= +10%)",
        (ratio(&l_api, &l_static) - 1.0) * 100.0
    );
    println!("  peak RSS                   = {peak:5.1} MiB (target < 10 MiB)");
}
