//! nodegate-agent against the real thing: kube-apiserver + etcd, a real sshd (with
//! `ExposeAuthInfo yes`) whose AuthorizedKeysCommand is authorized-keys-cmd, the agent as a
//! daemon with the same config file, and live ssh sessions on pseudo-terminals.
//!
//! Build the binaries first: `cargo build -p authorized-keys-cmd --bins` (and keyctl).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nodegate_core::session_events::{SessionEventFields, SessionReason};
use nodegate_core::{Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::fixtures::{self, in_hours, whole_seconds};
use nodegate_testkit::output::{Checked, output_with_stdin};
use nodegate_testkit::process::{Daemon, KillOnDrop, Scratch, last_lines, wait_until};
use nodegate_testkit::proxy::pump;
use nodegate_testkit::sshd::{
    KeySource, Login, RootOwnedDir, SshKey, Sshd, ssh_keygen, ssh_tty_command,
};
use nodegate_testkit::terminal::Terminal;
use nodegate_testkit::{Cluster, Validity, workspace_bin};

/// Who the test grants are from, and why: both must show in the login Events.
const GRANTED_BY: &str = "alice@oncall";
const REASON: &str = "disk full on the agent test node";

/// A node of the test cluster: its config file (with an `[agent]` table), cache, an sshd that
/// takes keys from an authorized_keys file and from authorized-keys-cmd, and the agent.
struct AgentNode<'c> {
    cluster: &'c Cluster,
    name: String,
    scratch: Scratch,
    config: PathBuf,
    authorized_keys: PathBuf,
    sshd: Sshd,
    agent: Option<Daemon>,
    _command_dir: RootOwnedDir,
}

impl<'c> AgentNode<'c> {
    /// Creates Node `name`, a config file using `kubeconfig` (the node's own credentials, or
    /// the same through a [`Gate`]) with the `top` settings and the `[agent]` table `agent`,
    /// and starts sshd. The agent is not started yet.
    fn new(
        cluster: &'c Cluster,
        name: &str,
        kubeconfig: Option<PathBuf>,
        top: &str,
        agent: &str,
    ) -> Self {
        cluster.create_node(name);
        let scratch = Scratch::new(&format!("agent-{name}"));
        let kubeconfig =
            kubeconfig.unwrap_or_else(|| cluster.node_kubeconfig(name, Validity::Current));
        let config = scratch.write(
            "authorized-keys-cmd.toml",
            format!(
                "kubeconfig = \"{}\"\ncache = \"{}\"\n{top}\n\n[agent]\n{agent}\n",
                kubeconfig.display(),
                scratch.join("grants-cache.sqlite").display()
            ),
        );
        let authorized_keys = scratch.write("authorized_keys", "");
        let command_dir = RootOwnedDir::new("agent");
        let program =
            command_dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
        let sshd = Sshd::start_with(
            &scratch,
            "sshd",
            &KeySource::FileAndCommand {
                file: authorized_keys.clone(),
                program,
                args: vec![
                    "--config".into(),
                    config.display().to_string(),
                    "%u".into(),
                    "%f".into(),
                ],
            },
            "ExposeAuthInfo yes\n",
        );
        AgentNode {
            cluster,
            name: name.to_owned(),
            scratch,
            config,
            authorized_keys,
            sshd,
            agent: None,
            _command_dir: command_dir,
        }
    }

    fn key(&self, name: &str) -> SshKey {
        ssh_keygen(self.scratch.path(), name)
    }

    /// Puts `key` into sshd's authorized_keys file (no grant).
    fn authorize_in_file(&self, key: &SshKey) {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&self.authorized_keys)
            .expect("open authorized_keys");
        writeln!(file, "{}", key.public).expect("write authorized_keys");
    }

    /// Writes a grant of `key` to root until `expiry` on this Node, from [`GRANTED_BY`] for
    /// [`REASON`], as keyctl would.
    fn grant(&self, key: &SshKey, expiry: Expiry) -> Grant {
        let grant = Grant {
            user: LoginUser::new("root").expect("user"),
            key: GrantKey::parse(&key.public).expect("key"),
            expiry,
            granted_by: GrantText::new("granted-by", GRANTED_BY).expect("text"),
            granted_at: whole_seconds(Utc::now()),
            reason: Some(GrantText::new("reason", REASON).expect("text")),
        };
        fixtures::put_grant(self.cluster, &self.name, &grant);
        grant
    }

    /// Removes the grant's annotation as the admin.
    fn remove_grant(&self, grant: &Grant) {
        fixtures::remove_grant(self.cluster, &self.name, grant);
    }

    /// `keyctl ARGS` as the cluster admin, with a HOME of this node's own.
    fn keyctl(&self, args: &[&str]) -> Checked {
        let home = self.scratch.join("home");
        fs::create_dir_all(&home).expect("create HOME");
        let out = output_with_stdin(
            Command::new(workspace_bin("keyctl"))
                .arg("--kubeconfig")
                .arg(self.cluster.admin_kubeconfig())
                .args(args)
                .env("HOME", home)
                .env_remove("KUBECONFIG")
                .env_remove("NODEGATE_PREFIX"),
            None,
        );
        Checked::of(format!("keyctl {}", args.join(" ")), out)
    }

    /// `keyctl revoke NODE --key KEY.pub` as the cluster admin.
    fn keyctl_revoke(&self, key: &SshKey) {
        let public = key.private.with_extension("pub");
        let public = public.to_str().expect("UTF-8 path");
        self.keyctl(&["revoke", &self.name, "--key", public]).ok();
    }

    /// Starts the agent with the node's config file (and `extra` arguments), in the foreground
    /// as a daemon of this test, logging to `agent.log`.
    fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the agent runs already");
        let mut agent = self.scratch.spawn(
            "agent",
            Command::new(workspace_bin("nodegate-agent"))
                .arg("--config")
                .arg(&self.config)
                .arg("-v"),
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            agent.is_running(),
            "nodegate-agent exited at once:\n{}",
            agent.log_tail(40)
        );
        self.agent = Some(agent);
    }

    /// Stops the agent with SIGTERM (SIGKILL only if it has not ended within 10 s) and checks
    /// that it ended on the SIGTERM.
    fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent runs");
        assert!(
            agent.is_running(),
            "the agent ended by itself:\n{}",
            agent.log_tail(40)
        );
        let started = Instant::now();
        self.scratch.stop(&mut agent, Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the agent did not end on SIGTERM:\n{}",
            agent.log_tail(40)
        );
    }

    fn agent_pid(&self) -> u32 {
        self.agent
            .as_ref()
            .and_then(Daemon::pid)
            .expect("the agent runs")
    }

    fn assert_agent_running(&mut self) {
        let agent = self.agent.as_mut().expect("the agent was started");
        assert!(
            agent.is_running(),
            "the agent ended:\n{}",
            agent.log_tail(40)
        );
    }

    /// The agent's and sshd's recent log lines, for failure messages.
    fn logs(&self) -> String {
        let agent = fs::read_to_string(self.scratch.join("agent.log")).unwrap_or_default();
        format!(
            "--- agent.log ---\n{}\n--- sshd log ---\n{}",
            last_lines(&agent, 60),
            last_lines(&self.sshd.log(), 20)
        )
    }

    fn login(&self, key: &SshKey) -> Login {
        self.sshd.login(key, "root")
    }

    /// Logs in with `key` every 100 ms until a login is refused; returns how long that took,
    /// or `None` if logins still worked after `timeout`.
    fn wait_until_refused(&self, key: &SshKey, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            match self.login(key) {
                Login::Refused => return Some(started.elapsed()),
                Login::Succeeded => {}
                other => panic!("login neither worked nor was refused: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// A live session as root with `key`: `ssh -tt` to an interactive shell, on a terminal.
    fn session(&self, key: &SshKey, tag: &str) -> Session {
        let terminal = Terminal::open(24, 120);
        let ssh = ssh_tty_command(
            self.sshd.port,
            key,
            "root",
            &format!("echo {tag}-ready; exec /bin/sh"),
        );
        let ssh = KillOnDrop::new(terminal.spawn(&ssh));
        let session = Session {
            tag: tag.to_owned(),
            terminal,
            ssh,
        };
        assert!(
            session
                .terminal
                .wait_for(&format!("{tag}-ready"), Duration::from_secs(20)),
            "session {tag} did not start; its terminal:\n{}\n{}",
            session.terminal.screen(),
            self.logs()
        );
        session
    }

    /// The core/v1 Events in `default` about this Node with `reason`.
    fn events(&self, reason: &str) -> Vec<serde_json::Value> {
        let json = self.cluster.kubectl_ok(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("involvedObject.name={},reason={reason}", self.name),
            "-o",
            "json",
        ]);
        let list: serde_json::Value = serde_json::from_str(&json).expect("event list JSON");
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits up to `timeout` for an Event with `reason` whose message names `fingerprint`.
    fn wait_for_event(
        &self,
        reason: &str,
        fingerprint: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let mut found = None;
        wait_until(timeout, || {
            found = self.events(reason).into_iter().find(|e| {
                e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(fingerprint))
            });
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no {reason} Event naming {fingerprint} on Node {} after {timeout:?}\n{}",
                self.name,
                self.logs()
            )
        })
    }

    /// Waits until the agent has attributed the live session of `grant`: it logged the login
    /// (a line naming the key's fingerprint and the login), so that what follows is measured
    /// from an agent that knows the session. A session it has not attributed when its grant
    /// goes is one of a key without a grant, and is rightly left alone. From the log, not from
    /// the login Event, so that only the Events test depends on Events.
    fn wait_attributed(&self, grant: &Grant) {
        let fingerprint = grant.key.fingerprint().to_string();
        let logged = wait_until(Duration::from_secs(20), || {
            fs::read_to_string(self.scratch.join("agent.log"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains(&fingerprint) && l.to_lowercase().contains("login"))
        });
        assert!(
            logged,
            "the agent logged no login with {fingerprint} within 20 s\n{}",
            self.logs()
        );
    }
}

/// A live ssh session on a pseudo-terminal of the test.
struct Session {
    tag: String,
    terminal: Terminal,
    ssh: KillOnDrop,
}

impl Session {
    fn is_live(&mut self) -> bool {
        !self.ssh.has_exited()
    }

    /// What the session's terminal showed after it was ready, in lower case.
    fn since_ready(&self) -> String {
        let screen = self.terminal.screen().to_lowercase();
        let marker = format!("{}-ready", self.tag);
        match screen.find(&marker) {
            Some(at) => screen[at + marker.len()..].to_owned(),
            None => screen,
        }
    }

    /// Whether nodegate wrote a warning with `word` on the terminal.
    fn warned(&self, word: &str) -> bool {
        let text = self.since_ready();
        text.contains("nodegate") && text.contains(word)
    }

    /// Watches the session for up to `timeout`: when a warning with `word` first showed, and
    /// when the session ended.
    fn watch_end(&mut self, word: &str, timeout: Duration) -> Watched {
        let started = Instant::now();
        let mut watched = Watched::default();
        while started.elapsed() < timeout {
            if watched.warned.is_none() && self.warned(word) {
                watched.warned = Some(Instant::now());
                watched.warned_wall = Some(Utc::now());
            }
            if !self.is_live() {
                watched.ended = Some(Instant::now());
                watched.ended_wall = Some(Utc::now());
                // What was written just before the end may still be on its way to the screen.
                std::thread::sleep(Duration::from_millis(200));
                if watched.warned.is_none() && self.warned(word) {
                    watched.warned_late = true;
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        watched
    }

    /// Types `line` into the session's shell and waits for its output `expect`: the session
    /// still works.
    fn responds(&self, line: &str, expect: &str) -> bool {
        self.terminal.type_keys(format!("{line}\n").as_bytes());
        self.terminal.wait_for(expect, Duration::from_secs(10))
    }
}

/// What [`Session::watch_end`] saw.
#[derive(Debug, Default)]
struct Watched {
    warned: Option<Instant>,
    warned_wall: Option<DateTime<Utc>>,
    /// The warning showed only once the session had ended (it was written just before).
    warned_late: bool,
    ended: Option<Instant>,
    ended_wall: Option<DateTime<Utc>>,
}

/// A loopback TCP forwarder to the API server for one node's kubeconfig, which knows the agent
/// process: it counts the connections the agent makes and those anything else makes
/// (authorized-keys-cmd, run by sshd), and can cut the agent off from the API (its connections
/// shut down, new ones closed at once) while everything else still gets through.
///
/// The agent is known once [`Gate::set_agent`] is called: connections made before that count
/// as others', but a cut-off finds them too (it asks who holds each open connection then).
struct Gate {
    address: SocketAddr,
    state: Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    agent_pid: AtomicU32,
    agent_cut_off: AtomicBool,
    agent_connections: AtomicUsize,
    other_connections: AtomicUsize,
    /// Every connection forwarded so far: the client's address, and both ends.
    streams: Mutex<Vec<(SocketAddr, TcpStream, TcpStream)>>,
    stopped: AtomicBool,
}

impl Gate {
    fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate's port");
        let address = listener.local_addr().expect("the gate's address");
        let state = Arc::new(GateState::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(peer) = client.peer_addr() else {
                    continue;
                };
                let agent_pid = shared.agent_pid.load(Ordering::SeqCst);
                let from_agent =
                    agent_pid != 0 && socket_of_process(agent_pid, peer, address.port());
                if from_agent && shared.agent_cut_off.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(target) else {
                    continue;
                };
                if from_agent {
                    shared.agent_connections.fetch_add(1, Ordering::SeqCst);
                } else {
                    shared.other_connections.fetch_add(1, Ordering::SeqCst);
                }
                shared
                    .streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((
                        peer,
                        client.try_clone().expect("clone a socket"),
                        upstream.try_clone().expect("clone a socket"),
                    ));
                let (client_reader, upstream_reader) = (
                    client.try_clone().expect("clone a socket"),
                    upstream.try_clone().expect("clone a socket"),
                );
                std::thread::spawn(move || pump(client_reader, upstream));
                std::thread::spawn(move || pump(upstream_reader, client));
            }
        });
        Gate { address, state }
    }

    /// Forwards to `cluster`'s API server; returns the gate and a copy of `node`'s kubeconfig
    /// that goes through it (written into `dir`).
    fn for_node(cluster: &Cluster, node: &str, dir: &Path) -> (Gate, PathBuf) {
        let target: SocketAddr = cluster
            .server()
            .trim_start_matches("https://")
            .parse()
            .expect("the API server's address");
        let gate = Gate::start(target);
        let kubeconfig = dir.join(format!("{node}-gate.kubeconfig"));
        let text = fs::read_to_string(cluster.node_kubeconfig(node, Validity::Current))
            .expect("read the node kubeconfig")
            .replace(cluster.server(), &format!("https://{}", gate.address));
        fs::write(&kubeconfig, text).expect("write the gated kubeconfig");
        (gate, kubeconfig)
    }

    /// From now on, connections from process `pid` are the agent's.
    fn set_agent(&self, pid: u32) {
        self.state.agent_pid.store(pid, Ordering::SeqCst);
    }

    /// Shuts down the agent's open connections and closes its new ones from now on.
    fn cut_off_agent(&self) {
        self.state.agent_cut_off.store(true, Ordering::SeqCst);
        let pid = self.state.agent_pid.load(Ordering::SeqCst);
        let mut streams = self.state.streams.lock().unwrap_or_else(|e| e.into_inner());
        // Ended connections are no process's any more: they go too.
        streams.retain(|(peer, client, upstream)| {
            let open = socket_of_process_any(*peer, self.address.port());
            let agents = pid != 0 && socket_of_process(pid, *peer, self.address.port());
            if agents {
                let _ = client.shutdown(Shutdown::Both);
                let _ = upstream.shutdown(Shutdown::Both);
            }
            open && !agents
        });
    }

    fn restore_agent(&self) {
        self.state.agent_cut_off.store(false, Ordering::SeqCst);
    }

    /// Connections made by anything but the agent so far.
    fn other_connections(&self) -> usize {
        self.state.other_connections.load(Ordering::SeqCst)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        let mut streams = self.state.streams.lock().unwrap_or_else(|e| e.into_inner());
        for (_, client, upstream) in streams.drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = upstream.shutdown(Shutdown::Both);
        }
    }
}

/// The socket inode of the client end of the TCP connection from `client` to port
/// `server_port` on loopback, from `/proc/net/tcp*`; `None` once it is closed.
fn client_socket_inode(client: SocketAddr, server_port: u16) -> Option<String> {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.len() > 9
                    && port(fields[1]) == Some(client.port())
                    && port(fields[2]) == Some(server_port)
                    && fields[9] != "0")
                    .then(|| fields[9].to_owned())
            })
        })
}

/// Whether the client end of the connection from `client` to port `server_port` is still open
/// (held by some process).
fn socket_of_process_any(client: SocketAddr, server_port: u16) -> bool {
    client_socket_inode(client, server_port).is_some()
}

/// Whether the TCP connection from `client` to port `server_port` on loopback is held by
/// process `pid` (its socket inode is among the process's open files).
fn socket_of_process(pid: u32, client: SocketAddr, server_port: u16) -> bool {
    let Some(inode) = client_socket_inode(client, server_port) else {
        return false;
    };
    let socket = format!("socket:[{inode}]");
    fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str())
        })
}

#[test]
fn the_gate_tells_the_agents_connections_from_others_and_cuts_off_only_the_agent() {
    use std::io::{BufRead as _, BufReader};
    use std::process::Stdio;
    // An echo server stands in for the API server.
    let echo = TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = echo.local_addr().expect("address");
    std::thread::spawn(move || {
        for stream in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().expect("clone");
                let _ = std::io::copy(&mut &stream, &mut writer);
            });
        }
    });
    let gate = Gate::start(target);
    // The "agent": a shell that connects at once and holds the connection until it ends, then
    // tries a new one, and when told to, a third.
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; echo ping >&3; read -r l <&3; echo \"got $l\"; \
         cat <&3 >/dev/null; echo closed; exec 4<>/dev/tcp/127.0.0.1/{port}; echo again >&4; \
         if read -r -t 5 l <&4; then echo \"answered $l\"; else echo \"no answer\"; fi; \
         read -r go; exec 5<>/dev/tcp/127.0.0.1/{port}; echo third >&5; read -r l <&5; echo \"got $l\"",
        port = gate.address.port()
    );
    let mut child = Command::new("bash")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run bash");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let child = KillOnDrop::new(child);
    let mut next_line = || lines.next().expect("a line").expect("read");
    assert_eq!(next_line(), "got ping");
    // Known as the agent only after its first connection, as a daemon's pid is.
    gate.set_agent(pid);
    let mut other = TcpStream::connect(gate.address).expect("connect");
    let round_trip = |stream: &mut TcpStream| {
        stream.write_all(b"hi\n").expect("write");
        let mut answer = [0u8; 3];
        stream.read_exact(&mut answer).expect("read");
        answer
    };
    assert_eq!(&round_trip(&mut other), b"hi\n");
    assert_eq!(gate.other_connections(), 2, "the agent's first and ours");

    gate.cut_off_agent();
    assert_eq!(next_line(), "closed", "the agent's open connection is cut");
    assert_eq!(next_line(), "no answer", "its new one is closed at once");
    assert_eq!(&round_trip(&mut other), b"hi\n", "others still get through");
    let mut another = TcpStream::connect(gate.address).expect("connect");
    assert_eq!(&round_trip(&mut another), b"hi\n", "new ones too");
    assert_eq!(gate.other_connections(), 3);
    assert_eq!(gate.state.agent_connections.load(Ordering::SeqCst), 0);

    gate.restore_agent();
    writeln!(stdin, "go").expect("tell the shell to connect");
    assert_eq!(next_line(), "got third");
    assert_eq!(gate.state.agent_connections.load(Ordering::SeqCst), 1);
    assert_eq!(gate.other_connections(), 3);
    drop(child);
}

/// Whether `text` states a duration: a number with a unit (`3s`, `1m3s`, `2.5 s`, `4 seconds`)
/// or a clock-style `0:00:03`.
fn states_a_duration(text: &str) -> bool {
    const UNITS: &[&str] = &[
        "ms", "s", "sec", "secs", "second", "seconds", "m", "min", "mins", "minute", "minutes",
        "h", "hour", "hours",
    ];
    let tokens: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '='))
        // "after 3s: root's session": a colon ends a clause, and is no part of the duration.
        .map(|t| t.strip_suffix(':').unwrap_or(t))
        .filter(|t| !t.is_empty())
        .collect();
    let unit_run = |t: &str| {
        // digits, a unit, digits, a unit...: "1m3s", "3s", "250ms", "2.5s"
        let mut rest = t;
        let mut parts = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if digits == 0 {
                return false;
            }
            let after = &rest[digits..];
            let unit_len = after
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(after.len());
            if !UNITS.contains(&&after[..unit_len]) {
                return false;
            }
            rest = &after[unit_len..];
            parts += 1;
        }
        parts > 0
    };
    let clock = |t: &str| {
        let parts: Vec<&str> = t.split(':').collect();
        parts.len() >= 2
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    };
    tokens.iter().enumerate().any(|(i, t)| {
        unit_run(t)
            || clock(t)
            || (t.parse::<f64>().is_ok() && tokens.get(i + 1).is_some_and(|u| UNITS.contains(u)))
    })
}

#[test]
fn the_duration_check_finds_durations_and_nothing_else() {
    for text in [
        "after 3s",
        "SSH logout after 3s: root's session",
        "lasted 1m3s",
        "duration=250ms",
        "after 4 seconds",
        "(0:00:03)",
        "2.5s",
    ] {
        assert!(states_a_duration(text), "{text}");
    }
    for text in [
        "root from 127.0.0.1 key SHA256:abc3s granted by alice",
        "port 22",
        "3 keys",
        "g.root.0123",
    ] {
        assert!(!states_a_duration(text), "{text}");
    }
}

/// The `[agent]` settings most tests use: prompt ends, no expiry warnings, frequent scans.
const QUICK: &str = "warn_before = \"0s\"\nend_grace = \"2s\"\nend_when_stale = \"off\"\nrecord_logins = true\nscan_interval = \"200ms\"";

#[test]
fn a_revoke_warns_then_ends_that_grants_session_and_no_other() {
    let cluster = Cluster::shared();
    let mut node = AgentNode::new(cluster, "agent-revoke", None, "", QUICK);
    let revoked_key = node.key("revoked");
    let kept_key = node.key("kept");
    let file_key = node.key("in-file");
    let revoked = node.grant(&revoked_key, in_hours(1));
    let kept = node.grant(&kept_key, in_hours(1));
    node.authorize_in_file(&file_key);
    node.start_agent();
    let mut revoked_session = node.session(&revoked_key, "sess-revoked");
    let mut kept_session = node.session(&kept_key, "sess-kept");
    let mut file_session = node.session(&file_key, "sess-file");
    node.wait_attributed(&revoked);
    node.wait_attributed(&kept);

    let started = Instant::now();
    node.keyctl_revoke(&revoked_key);
    let keyctl_took = started.elapsed();
    let watched = revoked_session.watch_end("revoked", Duration::from_secs(30));
    let (Some(warned), Some(ended)) = (watched.warned, watched.ended) else {
        panic!(
            "after the revoke: {watched:?}; its terminal:\n{}\n{}",
            revoked_session.since_ready(),
            node.logs()
        );
    };
    println!(
        "keyctl revoke took {keyctl_took:?}; from its start the session was warned after {:?} and ended after {:?}",
        warned - started,
        ended - started
    );
    // end_grace is 2 s: the warning is there to be read before the end.
    assert!(
        ended - warned >= Duration::from_millis(1500),
        "ended {:?} after the warning, end_grace is 2s",
        ended - warned
    );
    assert!(ended - started < Duration::from_secs(15), "{watched:?}");

    // The others are left alone: past end_grace and many scans, they run and answer.
    std::thread::sleep(Duration::from_secs(3));
    for session in [&mut kept_session, &mut file_session] {
        assert!(
            session.is_live(),
            "session {} ended; its terminal:\n{}\n{}",
            session.tag,
            session.since_ready(),
            node.logs()
        );
        assert!(
            !session.since_ready().contains("nodegate"),
            "session {} was warned:\n{}",
            session.tag,
            session.since_ready()
        );
        assert!(session.responds("echo still-$((40+2))", "still-42"));
    }
    assert_eq!(node.login(&revoked_key), Login::Refused);
    assert_eq!(node.login(&kept_key), Login::Succeeded);
    // A key from the file is no grant: no login Event names it.
    let file_fp = GrantKey::parse(&file_key.public)
        .expect("key")
        .fingerprint()
        .to_string();
    assert!(
        !node
            .events("SSHLogin")
            .iter()
            .any(|e| e["message"].as_str().is_some_and(|m| m.contains(&file_fp))),
        "a login Event for the authorized_keys file's key"
    );
    node.assert_agent_running();
}

#[test]
fn a_grant_that_expires_mid_session_is_warned_ahead_then_ended() {
    let cluster = Cluster::shared();
    let mut node = AgentNode::new(
        cluster,
        "agent-expiry",
        None,
        "",
        "warn_before = \"8s\"\nend_grace = \"2s\"\nrecord_logins = false\nscan_interval = \"200ms\"",
    );
    let short_key = node.key("short");
    let long_key = node.key("long");
    let expiry = whole_seconds(Utc::now()) + chrono::Duration::seconds(20);
    node.grant(&short_key, Expiry::At(expiry));
    node.grant(&long_key, in_hours(1));
    node.start_agent();
    let mut short = node.session(&short_key, "sess-short");
    let mut long = node.session(&long_key, "sess-long");
    assert!(
        Utc::now() < expiry - chrono::Duration::seconds(10),
        "the sessions started too late for the test to mean anything"
    );
    // The advance warning says when; the end comes at the expiry, after end_grace.
    let ahead = short.watch_end("expire", Duration::from_secs(40));
    let (Some(warned), Some(ended)) = (ahead.warned_wall, ahead.ended_wall) else {
        panic!(
            "{ahead:?}; its terminal:\n{}\n{}",
            short.since_ready(),
            node.logs()
        );
    };
    let before_expiry = |t: DateTime<Utc>| (expiry - t).num_milliseconds() as f64 / 1000.0;
    println!(
        "grant expiry {expiry}: warned {:.1} s before it, session ended {:.1} s after it",
        before_expiry(warned),
        -before_expiry(ended)
    );
    assert!(
        before_expiry(warned) <= 10.0,
        "warned {:.1} s ahead, warn_before is 8s",
        before_expiry(warned)
    );
    assert!(
        before_expiry(warned) >= 3.0,
        "warned only {:.1} s ahead, warn_before is 8s",
        before_expiry(warned)
    );
    assert!(
        before_expiry(ended) <= 0.5,
        "ended {:.1} s before the grant expired",
        before_expiry(ended)
    );
    assert!(
        -before_expiry(ended) <= 12.0,
        "ended {:.1} s after the expiry",
        -before_expiry(ended)
    );

    assert!(
        long.is_live(),
        "the 1-hour grant's session ended\n{}",
        node.logs()
    );
    assert!(
        !long.since_ready().contains("nodegate"),
        "the 1-hour grant's session was warned:\n{}",
        long.since_ready()
    );
    assert!(long.responds("echo long-$((6*7))", "long-42"));
    assert_eq!(node.login(&short_key), Login::Refused);
    // record_logins = false: no Events.
    for reason in ["SSHLogin", "SSHLogout"] {
        let events = node.events(reason);
        assert!(events.is_empty(), "record_logins is off: {events:?}");
    }
    node.assert_agent_running();
}

#[test]
fn restarting_the_agent_ends_no_granted_session_and_catches_up_on_a_revoke_made_while_it_was_down()
{
    let cluster = Cluster::shared();
    let mut node = AgentNode::new(cluster, "agent-restart", None, "", QUICK);
    let one_key = node.key("one");
    let two_key = node.key("two");
    let one = node.grant(&one_key, in_hours(1));
    let two = node.grant(&two_key, in_hours(1));
    node.start_agent();
    let mut one_session = node.session(&one_key, "sess-one");
    let mut two_session = node.session(&two_key, "sess-two");
    node.wait_attributed(&one);
    node.wait_attributed(&two);

    // A plain restart: nothing is still granted is touched, during or after it.
    node.stop_agent();
    std::thread::sleep(Duration::from_secs(1));
    node.start_agent();
    std::thread::sleep(Duration::from_secs(4));
    for session in [&mut one_session, &mut two_session] {
        assert!(
            session.is_live() && !session.since_ready().contains("nodegate"),
            "session {} after a restart of the agent:\n{}\n{}",
            session.tag,
            session.since_ready(),
            node.logs()
        );
    }
    // The agent picks its sessions up again: a restart is no second login.
    let logins = node.events("SSHLogin").len();
    println!("SSHLogin events after a restart of the agent, for 2 logins: {logins}");
    assert!(
        logins <= 2,
        "{logins} login Events for 2 logins\n{}",
        node.logs()
    );

    // Revoked while the agent was down: the agent started again ends that session, only that.
    node.stop_agent();
    node.remove_grant(&one);
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    node.start_agent();
    let watched = one_session.watch_end("revoked", Duration::from_secs(30));
    let Some(ended) = watched.ended else {
        panic!(
            "revoked while the agent was down, still running {:?} after it started:\n{}\n{}",
            started.elapsed(),
            one_session.since_ready(),
            node.logs()
        );
    };
    assert!(
        watched.warned.is_some() || watched.warned_late,
        "no warning before the end:\n{}",
        one_session.since_ready()
    );
    println!(
        "a session revoked while the agent was down ended {:?} after the agent started",
        ended - started
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(two_session.is_live(), "{}", node.logs());
    assert!(two_session.responds("echo two-$((40+2))", "two-42"));
    node.assert_agent_running();
}

#[test]
fn the_watch_resumes_after_the_api_server_is_stopped_and_started_again() {
    // Stopping the API server affects every user of a cluster: this test has its own, started
    // after the shared one so that two API servers do not start at once.
    let _ = Cluster::shared();
    let cluster = Cluster::start();
    let mut node = AgentNode::new(&cluster, "agent-outage", None, "", QUICK);
    let key = node.key("outage");
    let grant = node.grant(&key, in_hours(1));
    node.start_agent();
    let mut session = node.session(&key, "sess-outage");
    node.wait_attributed(&grant);
    // A second grant, seen by the agent before the outage, for a session that begins during it.
    let during_key = node.key("outage-during");
    let during_grant = node.grant(&during_key, in_hours(1));
    assert!(
        wait_until(Duration::from_secs(20), || node
            .logs()
            .contains("the Node holds 2 annotations under the prefix")),
        "the agent did not see the second grant\n{}",
        node.logs()
    );

    cluster.stop_apiserver();
    std::thread::sleep(Duration::from_secs(4));
    // An outage is no revoke: the session stays, logins are served from the cache.
    assert!(session.is_live(), "ended by an outage\n{}", node.logs());
    assert_eq!(node.login(&key), Login::Succeeded, "{}", node.logs());
    // A session that begins during the outage: its login Event waits in the agent.
    let _during = node.session(&during_key, "sess-outage-during");
    node.wait_attributed(&during_grant);
    node.assert_agent_running();

    cluster.start_apiserver();
    let login_during = node.wait_for_event(
        "SSHLogin",
        &during_grant.key.fingerprint().to_string(),
        Duration::from_secs(60),
    );
    println!(
        "the login made while the API server was down was recorded once it was back: {}",
        login_during["message"]
    );
    let back = Instant::now();
    node.remove_grant(&grant);
    let revoked = Instant::now();
    let watched = session.watch_end("revoked", Duration::from_secs(60));
    let Some(ended) = watched.ended else {
        panic!(
            "revoked after the API server came back, still running after 60 s:\n{}",
            node.logs()
        );
    };
    println!(
        "API server back; revoked {:?} later; the session ended {:?} after the revoke",
        revoked - back,
        ended - revoked
    );
    assert!(watched.warned.is_some() || watched.warned_late);
    node.assert_agent_running();
}

#[test]
fn a_revoke_made_while_the_agent_is_cut_off_from_the_api_takes_effect_when_it_is_back() {
    let cluster = Cluster::shared();
    let dir = Scratch::new("agent-cutoff-gate");
    let (gate, kubeconfig) = Gate::for_node(cluster, "agent-cutoff", dir.path());
    let mut node = AgentNode::new(
        cluster,
        "agent-cutoff",
        Some(kubeconfig),
        "freshness = \"2s\"",
        QUICK,
    );
    let key = node.key("cutoff");
    let later_key = node.key("cutoff-later");
    let grant = node.grant(&key, in_hours(1));
    let later = node.grant(&later_key, in_hours(1));
    node.start_agent();
    gate.set_agent(node.agent_pid());
    let mut session = node.session(&key, "sess-cutoff");
    node.wait_attributed(&grant);

    // Cut off, revoked meanwhile, and no login that would show the login path's answer to the
    // agent through the cache: the agent cannot know, and the session goes on.
    gate.cut_off_agent();
    std::thread::sleep(Duration::from_secs(1));
    node.remove_grant(&grant);
    let revoked = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        session.is_live(),
        "ended while the agent was cut off from the API: the gate let it through?\n{}",
        node.logs()
    );
    node.assert_agent_running();
    gate.restore_agent();
    let restored = Instant::now();
    let watched = session.watch_end("revoked", Duration::from_secs(60));
    let Some(ended) = watched.ended else {
        panic!(
            "still running 60 s after the agent reached the API again:\n{}",
            node.logs()
        );
    };
    println!(
        "revoked while the agent was cut off: the session ended {:?} after it was let through again ({:?} after the revoke)",
        ended - restored,
        ended - revoked
    );
    assert!(watched.warned.is_some() || watched.warned_late);

    // Cut off again: the agent cannot vouch for the cache, so logins ask the API, which knows
    // of a revoke at once.
    let mut later_session = node.session(&later_key, "sess-cutoff-later");
    node.wait_attributed(&later);
    gate.cut_off_agent();
    std::thread::sleep(Duration::from_secs(1));
    node.remove_grant(&later);
    let refused = node.wait_until_refused(&later_key, Duration::from_secs(10));
    println!("agent cut off: a new login was refused {refused:?} after the revoke");
    assert!(
        refused.is_some(),
        "the revoked key still logs in while the agent is cut off\n{}",
        node.logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    println!(
        "after that login was refused, with the agent still cut off, its session is live: {}",
        later_session.is_live()
    );
    node.assert_agent_running();
}

#[test]
fn in_strict_mode_grant_sessions_end_once_the_agents_view_is_stale() {
    let cluster = Cluster::shared();
    let dir = Scratch::new("agent-strict-gate");
    let (gate, kubeconfig) = Gate::for_node(cluster, "agent-strict", dir.path());
    let mut node = AgentNode::new(
        cluster,
        "agent-strict",
        Some(kubeconfig),
        "",
        "warn_before = \"0s\"\nend_grace = \"1s\"\nend_when_stale = \"10s\"\nscan_interval = \"200ms\"",
    );
    let key = node.key("strict");
    let file_key = node.key("strict-file");
    let grant = node.grant(&key, in_hours(1));
    node.authorize_in_file(&file_key);
    node.start_agent();
    gate.set_agent(node.agent_pid());
    let mut session = node.session(&key, "sess-strict");
    let mut file_session = node.session(&file_key, "sess-strict-file");
    node.wait_attributed(&grant);

    // A live watch keeps the view confirmed: past end_when_stale, nothing ends.
    std::thread::sleep(Duration::from_secs(13));
    assert!(
        session.is_live(),
        "ended while the agent could reach the API:\n{}\n{}",
        session.since_ready(),
        node.logs()
    );

    gate.cut_off_agent();
    let cut = Instant::now();
    let watched = session.watch_end("nodegate", Duration::from_secs(40));
    let Some(ended) = watched.ended else {
        panic!(
            "strict mode: still running 40 s after the agent lost the API:\n{}",
            node.logs()
        );
    };
    println!(
        "strict mode (end_when_stale 10s): the session ended {:?} after the agent was cut off",
        ended - cut
    );
    assert!(
        watched.warned.is_some() || watched.warned_late,
        "no warning:\n{}",
        session.since_ready()
    );
    assert!(
        file_session.is_live(),
        "the authorized_keys session ended too"
    );
    assert!(file_session.responds("echo file-$((40+2))", "file-42"));
    node.assert_agent_running();
}

#[test]
fn logins_and_logouts_through_a_grant_are_recorded_as_events_on_the_node() {
    let cluster = Cluster::shared();
    let mut node = AgentNode::new(cluster, "agent-events", None, "", QUICK);
    let key = node.key("events");
    let grant = node.grant(&key, in_hours(1));
    let fingerprint = grant.key.fingerprint().to_string();
    node.start_agent();
    let mut session = node.session(&key, "sess-events");
    let login = node.wait_for_event("SSHLogin", &fingerprint, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    session.terminal.type_keys(b"exit\n");
    assert!(
        wait_until(Duration::from_secs(10), || !session.is_live()),
        "the session did not end on exit"
    );
    let logout = node.wait_for_event("SSHLogout", &fingerprint, Duration::from_secs(20));

    for (event, reason) in [(&login, "SSHLogin"), (&logout, "SSHLogout")] {
        let shown = serde_json::to_string_pretty(event).expect("JSON");
        assert_eq!(event["reason"], reason, "{shown}");
        assert_eq!(event["metadata"]["namespace"], "default", "{shown}");
        assert_eq!(event["involvedObject"]["kind"], "Node", "{shown}");
        assert_eq!(event["involvedObject"]["name"], "agent-events", "{shown}");
        assert_eq!(event["source"]["component"], "nodegate-agent", "{shown}");
        let message = event["message"].as_str().expect("a message");
        for part in [
            "root",
            fingerprint.as_str(),
            GRANTED_BY,
            REASON,
            "127.0.0.1",
        ] {
            assert!(message.contains(part), "{part:?} missing: {shown}");
        }
    }
    let logout_message = logout["message"].as_str().expect("a message");
    assert!(
        states_a_duration(&logout_message.replace(&fingerprint, "")),
        "no duration in the logout message: {logout_message}"
    );
    println!("login: {}", login["message"]);
    println!("logout: {logout_message}");

    // The structured fields are the contract keyctl sessions reads: they parse strictly, and
    // keyctl pairs the real agent's two Events into one logged-out session.
    for (event, reason) in [
        (&login, SessionReason::Login),
        (&logout, SessionReason::Logout),
    ] {
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(event["metadata"]["annotations"].clone())
                .expect("string annotations");
        let parsed = SessionEventFields::from_annotations(reason.as_str(), &annotations)
            .unwrap_or_else(|e| panic!("the agent's {reason:?} Event: {e}\n{event:#}"));
        assert_eq!(parsed.fields.login_user.as_str(), "root");
        assert_eq!(parsed.fields.fingerprints[0].as_str(), fingerprint);
        assert_eq!(parsed.fields.granted_by, GRANTED_BY);
    }
    let sessions = node.keyctl(&["sessions", "agent-events", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(sessions.ok()).expect("JSON");
    let mine: Vec<&serde_json::Value> = listed["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .filter(|s| s["fingerprints"][0] == fingerprint.as_str())
        .collect();
    assert_eq!(mine.len(), 1, "{listed:#}");
    assert_eq!(mine[0]["state"], "logged-out", "{listed:#}");
    assert_eq!(mine[0]["user"], "root", "{listed:#}");
    assert!(
        mine[0]["login_recorded"].as_bool().unwrap_or(false),
        "{listed:#}"
    );
    assert!(
        listed["invalid"].as_array().is_some_and(Vec::is_empty),
        "{listed:#}"
    );
    node.assert_agent_running();
}

#[test]
fn while_the_agent_runs_logins_ask_no_api_and_a_revoke_refuses_the_next_login_and_without_it_logins_ask_the_api()
 {
    let cluster = Cluster::shared();
    let dir = Scratch::new("agent-logins-gate");
    let (gate, kubeconfig) = Gate::for_node(cluster, "agent-logins", dir.path());
    // A short freshness: without the agent, logins over several windows would ask the API (the
    // agent confirms its watch every second).
    let mut node = AgentNode::new(
        cluster,
        "agent-logins",
        Some(kubeconfig),
        "freshness = \"3s\"",
        QUICK,
    );
    let key = node.key("logins");
    let other_key = node.key("logins-other");
    let grant = node.grant(&key, in_hours(1));
    let other = node.grant(&other_key, in_hours(1));
    node.start_agent();
    gate.set_agent(node.agent_pid());
    // The agent attributed a session: its watch is live.
    let _session = node.session(&key, "sess-logins");
    node.wait_attributed(&grant);
    std::thread::sleep(Duration::from_millis(3500));

    let before = gate.other_connections();
    let logins = 10;
    let started = Instant::now();
    for i in 0..logins {
        assert_eq!(
            node.login(&key),
            Login::Succeeded,
            "login {i}\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(600));
    }
    let asked = gate.other_connections() - before;
    println!(
        "agent running: {logins} logins over {:?} made {asked} connections to the API",
        started.elapsed()
    );
    assert_eq!(
        asked,
        0,
        "logins asked the API while the agent ran\n{}",
        node.logs()
    );

    node.keyctl_revoke(&key);
    let refused = node.wait_until_refused(&key, Duration::from_secs(10));
    println!("agent running: the first refused login came {refused:?} after keyctl revoke");
    let refused = refused.expect("the revoked key still logs in");
    assert!(
        refused < Duration::from_secs(3),
        "refused only after {refused:?}"
    );

    // The agent stopped: logins ask the API again, and a revoke works as it always did.
    node.stop_agent();
    std::thread::sleep(Duration::from_millis(3500));
    let before = gate.other_connections();
    assert_eq!(node.login(&other_key), Login::Succeeded, "{}", node.logs());
    let asked = gate.other_connections() - before;
    println!("agent stopped: one login made {asked} connections to the API");
    assert!(asked >= 1, "a login asked no API with the agent stopped");
    node.remove_grant(&other);
    let refused = node.wait_until_refused(&other_key, Duration::from_secs(10));
    println!("agent stopped: the first refused login came {refused:?} after the revoke");
    assert!(refused.is_some(), "the revoked key still logs in");
}
