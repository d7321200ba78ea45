//! nodegate-agent against the real thing, with and without the agent in the same run: the time
//! from `keyctl revoke` to the end of a live session and to the first refused login; the API
//! requests of one node for 100 logins in a minute (with the agent recording login Events, with
//! it not recording them, and without it); the agent's CPU while idle and its peak RSS.
//!
//! Run with `scripts/bench agent` (release binaries). `RUNS=N` changes the number of revokes
//! per case (default 5), `LOGINS=N` the logins of the request count (default 100, at 100 a
//! minute: the count depends on the rate, since without the agent the login path asks the API
//! at most once per `freshness` window). Asserts only that the work was done.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nodegate_core::GrantKey;
use nodegate_testkit::process::{Daemon, KillOnDrop, Scratch, wait_until};
use nodegate_testkit::sshd::{
    KeySource, Login, RootOwnedDir, SshKey, Sshd, ssh_keygen, ssh_tty_command,
};
use nodegate_testkit::terminal::Terminal;
use nodegate_testkit::{Cluster, Validity, workspace_bin};

const NODE: &str = "bench-agent";
/// The agent's settings: the shipped defaults but a short end_grace (it adds to every end).
const AGENT_TABLE: &str = "[agent]\nend_grace = \"1s\"\nrecord_logins = true\n";

struct Bench {
    cluster: Cluster,
    scratch: Scratch,
    config: PathBuf,
    sshd: Sshd,
    agent: Option<Daemon>,
}

impl Bench {
    fn keyctl(&self, args: &[&str], key: &SshKey) {
        let out = Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(self.cluster.admin_kubeconfig())
            .args(args)
            .arg("--key")
            .arg(key.private.with_extension("pub"))
            .env("HOME", self.scratch.path())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .output()
            .expect("run keyctl");
        assert!(
            out.status.success(),
            "keyctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start_agent(&mut self, config: &Path) {
        let mut agent = self.scratch.spawn(
            "agent",
            Command::new(workspace_bin("nodegate-agent"))
                .arg("--config")
                .arg(config),
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(agent.is_running(), "{}", agent.log_tail(30));
        self.agent = Some(agent);
    }

    fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent runs");
        self.scratch.stop(&mut agent, Duration::from_secs(10));
    }

    fn agent_pid(&self) -> u32 {
        self.agent
            .as_ref()
            .and_then(Daemon::pid)
            .expect("the agent runs")
    }

    /// Whether the agent logged a login with `fingerprint` (it attributed the session).
    fn login_seen(&self, fingerprint: &str) -> bool {
        fs::read_to_string(self.scratch.join("agent.log"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains(fingerprint) && l.to_lowercase().contains("login"))
    }
}

/// One revoke: a fresh key granted, a live session with it, `keyctl revoke`; how long from the
/// revoke's start to the session's end (`None`: still running after `session_cap`) and to the
/// first refused login, and how long keyctl itself took.
fn one_revoke(
    bench: &Bench,
    run: usize,
    session_cap: Duration,
) -> (Option<Duration>, Duration, Duration) {
    let key = ssh_keygen(bench.scratch.path(), &format!("revoke-{run}"));
    let fingerprint = GrantKey::parse(&key.public)
        .expect("key")
        .fingerprint()
        .to_string();
    bench.keyctl(&["grant", NODE, "--expires", "1h"], &key);
    let terminal = Terminal::open(24, 100);
    let mut ssh = KillOnDrop::new(terminal.spawn(&ssh_tty_command(
        bench.sshd.port,
        &key,
        "root",
        "echo bench-ready; exec sleep 600",
    )));
    assert!(
        terminal.wait_for("bench-ready", Duration::from_secs(20)),
        "{}",
        terminal.screen()
    );
    if bench.agent.is_some() {
        assert!(
            wait_until(Duration::from_secs(20), || bench.login_seen(&fingerprint)),
            "the agent did not see the login"
        );
    }
    let started = Instant::now();
    let (ended, refused, keyctl_took) = std::thread::scope(|scope| {
        let refused = scope.spawn(|| {
            while started.elapsed() < Duration::from_secs(30) {
                match bench.sshd.login(&key, "root") {
                    Login::Refused => return started.elapsed(),
                    Login::Succeeded => {}
                    other => panic!("login: {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the revoked key still logs in after 30 s");
        });
        bench.keyctl(&["revoke", NODE], &key);
        let keyctl_took = started.elapsed();
        let ended = wait_until(session_cap, || ssh.has_exited()).then(|| started.elapsed());
        (ended, refused.join().expect("login thread"), keyctl_took)
    });
    drop(ssh);
    (ended, refused, keyctl_took)
}

/// Request counts by verb.
type ByVerb = Vec<(String, f64)>;

/// `apiserver_request_total` summed by verb, for `resource`.
fn requests(cluster: &Cluster, resource: &str) -> ByVerb {
    let metrics = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut by_verb: ByVerb = Vec::new();
    let wanted = format!("resource=\"{resource}\"");
    for line in metrics.lines() {
        let Some(labels) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        if !labels.contains(&wanted) {
            continue;
        }
        let verb = labels
            .split("verb=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("?")
            .to_owned();
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        match by_verb.iter_mut().find(|(v, _)| *v == verb) {
            Some((_, n)) => *n += value,
            None => by_verb.push((verb, value)),
        }
    }
    by_verb
}

fn difference(after: &[(String, f64)], before: &[(String, f64)]) -> ByVerb {
    after
        .iter()
        .map(|(verb, n)| {
            let was = before
                .iter()
                .find(|(v, _)| v == verb)
                .map_or(0.0, |(_, n)| *n);
            (verb.clone(), n - was)
        })
        .filter(|(_, n)| *n > 0.0)
        .collect()
}

/// `logins` logins with `key` at 100 a minute; returns the API requests for nodes and events
/// made meanwhile, by verb, and how long it took.
fn login_minute(bench: &Bench, key: &SshKey, logins: usize) -> (ByVerb, ByVerb, Duration) {
    let interval = Duration::from_millis(600);
    let nodes_before = requests(&bench.cluster, "nodes");
    let events_before = requests(&bench.cluster, "events");
    let started = Instant::now();
    for i in 0..logins {
        let slot = started + interval * i as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        assert_eq!(bench.sshd.login(key, "root"), Login::Succeeded, "login {i}");
    }
    let took = started.elapsed();
    let nodes = difference(&requests(&bench.cluster, "nodes"), &nodes_before);
    let events = difference(&requests(&bench.cluster, "events"), &events_before);
    (nodes, events, took)
}

fn show(by_verb: &[(String, f64)]) -> String {
    let total: f64 = by_verb.iter().map(|(_, n)| n).sum();
    let parts: Vec<String> = by_verb.iter().map(|(v, n)| format!("{v} {n}")).collect();
    if parts.is_empty() {
        "0".into()
    } else {
        format!("{total} ({})", parts.join(", "))
    }
}

fn summary(label: &str, figures: &mut [Duration]) {
    if figures.is_empty() {
        println!("{label:<52} (no runs)");
        return;
    }
    figures.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{label:<52} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   ({} runs)",
        ms(figures[figures.len() / 2]),
        ms(figures[0]),
        ms(figures[figures.len() - 1]),
        figures.len()
    );
}

/// utime + stime of process `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let (_, after_name) = stat.rsplit_once(')').expect("a stat line");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 is index 0: utime (14) is index 11, stime (15) index 12.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks_per_second() -> u64 {
    let out = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("run getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// A `Vm*` line of `/proc/PID/status`, in KiB.
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a Vm line")
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
        .max(1)
}

/// The config file `name`: the node's kubeconfig and cache, and the `[agent]` table `agent`.
fn config_file(scratch: &Scratch, name: &str, kubeconfig: &Path, agent: &str) -> PathBuf {
    scratch.write(
        name,
        format!(
            "kubeconfig = \"{}\"\ncache = \"{}\"\n\n{agent}",
            kubeconfig.display(),
            scratch.join("grants-cache.sqlite").display()
        ),
    )
}

fn main() {
    let runs = env_number("RUNS", 5);
    let logins = env_number("LOGINS", 100);
    let cluster = Cluster::start();
    cluster.create_node(NODE);
    let scratch = Scratch::new("bench-agent");
    let kubeconfig = cluster.node_kubeconfig(NODE, Validity::Current);
    let config = config_file(
        &scratch,
        "authorized-keys-cmd.toml",
        &kubeconfig,
        AGENT_TABLE,
    );
    // The same for the agent alone, without login Events: its own API requests apart from them.
    let quiet_config = config_file(
        &scratch,
        "quiet.toml",
        &kubeconfig,
        &AGENT_TABLE.replace("record_logins = true", "record_logins = false"),
    );
    let dir = RootOwnedDir::new("bench-agent");
    let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
    let sshd = Sshd::start_with(
        &scratch,
        "sshd",
        &KeySource::authorized_keys_cmd(program, &config),
        "ExposeAuthInfo yes\n",
    );
    let mut bench = Bench {
        cluster,
        scratch,
        config,
        sshd,
        agent: None,
    };
    let login_key = ssh_keygen(bench.scratch.path(), "logins");
    bench.keyctl(&["grant", NODE, "--expires", "2h"], &login_key);

    // The agent, idle: no sessions, nothing changes on the Node.
    let config = bench.config.clone();
    bench.start_agent(&config);
    let pid = bench.agent_pid();
    std::thread::sleep(Duration::from_secs(5));
    let idle = Duration::from_secs(30);
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(idle);
    let idle_ticks = cpu_ticks(pid) - ticks_before;
    let idle_cpu = idle_ticks as f64 / clock_ticks_per_second() as f64;
    let rss_idle = vm_kib(pid, "VmRSS");

    let (with_nodes, with_events, with_took) = login_minute(&bench, &login_key, logins);
    let (mut with_end, mut with_refused, mut with_keyctl) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (ended, refused, keyctl_took) = one_revoke(&bench, run, Duration::from_secs(30));
        with_end.push(ended.expect("the agent did not end the session within 30 s"));
        with_refused.push(refused);
        with_keyctl.push(keyctl_took);
    }
    let peak_rss = vm_kib(pid, "VmHWM");
    let agent_cpu_total = cpu_ticks(pid) as f64 / clock_ticks_per_second() as f64;
    bench.stop_agent();
    bench.start_agent(&quiet_config);
    std::thread::sleep(Duration::from_secs(5));
    let (quiet_nodes, quiet_events, quiet_took) = login_minute(&bench, &login_key, logins);
    bench.stop_agent();

    // Without the agent: as before it existed.
    std::thread::sleep(Duration::from_secs(6));
    let (without_nodes, without_events, without_took) = login_minute(&bench, &login_key, logins);
    let session_cap = Duration::from_secs(10);
    let (mut without_end, mut without_refused, mut without_keyctl) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut still_running = 0;
    for run in runs..2 * runs {
        let (ended, refused, keyctl_took) = one_revoke(&bench, run, session_cap);
        match ended {
            Some(ended) => without_end.push(ended),
            None => still_running += 1,
        }
        without_refused.push(refused);
        without_keyctl.push(keyctl_took);
    }

    println!();
    println!(
        "nodegate-agent benchmark (end_grace 1s, freshness 5s, scan_interval 1s, {runs} revokes per case)"
    );
    println!("from the start of keyctl revoke:");
    summary("with agent: session ended", &mut with_end);
    summary("with agent: first refused login", &mut with_refused);
    summary("with agent: keyctl revoke returned", &mut with_keyctl);
    if still_running > 0 {
        println!(
            "{:<52} never: {still_running} of {runs} sessions still running {session_cap:?} after the revoke",
            "without agent: session ended"
        );
    }
    if !without_end.is_empty() {
        summary("without agent: session ended", &mut without_end);
    }
    summary("without agent: first refused login", &mut without_refused);
    summary("without agent: keyctl revoke returned", &mut without_keyctl);
    println!("API requests of the node for {logins} logins at 100 a minute:");
    println!(
        "  with agent (record_logins) ({:>5.1} s): nodes {}; events {}",
        with_took.as_secs_f64(),
        show(&with_nodes),
        show(&with_events)
    );
    println!(
        "  agent, record_logins = false ({:>5.1} s): nodes {}; events {}",
        quiet_took.as_secs_f64(),
        show(&quiet_nodes),
        show(&quiet_events)
    );
    println!(
        "  without agent ({:>5.1} s): nodes {}; events {}",
        without_took.as_secs_f64(),
        show(&without_nodes),
        show(&without_events)
    );
    println!(
        "agent idle CPU: {:.0} ms over {idle:?} ({:.3}% of one core); {agent_cpu_total:.2} s CPU in all",
        idle_cpu * 1000.0,
        idle_cpu / idle.as_secs_f64() * 100.0
    );
    println!(
        "agent RSS: {:.1} MiB idle, peak (VmHWM) {:.1} MiB",
        rss_idle as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    drop(dir);
}
