//! Test daemons that never outlive the test process, and a temp dir that goes with them.
//!
//! A test binary shares one cluster between its tests (a `static`), and Rust never drops statics,
//! so cleanup cannot rely on `Drop`. Instead every [`Scratch`] directory has a *reaper*: a tiny
//! shell that reads daemon identities from a pipe held by the test process. When the test process
//! ends, however it ends, the pipe closes and the reaper stops exactly the daemons it was told
//! about (SIGTERM, then SIGKILL after 10 s) and removes the directory.
//!
//! A daemon is identified by its pid *and* its start time. Pids are reused (`pid_max` is
//! often 32768, which a busy machine wraps within minutes), so a daemon that exited on
//! its own long before the test process ends may have left its pid to an unrelated process; the
//! reaper checks the start time immediately before every signal and leaves any other process
//! alone.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// A shell function, `running PID START`: whether PID is still the process that started at START
/// (clock ticks after boot, see [`start_time`]) and has not exited. A zombie has exited: waiting
/// for it would only wait for its parent, and with a careless init (a container's) that is never.
///
/// Between this check and a `kill` that follows it, the process could exit and its pid be given
/// to another process only after the kernel's cyclic pid allocation went once around all of
/// `pid_max`, which does not happen in the microseconds between two shell builtins.
pub const SH_RUNNING: &str = r#"
running() {
  stat=
  { read -r stat < "/proc/$1/stat"; } 2>/dev/null
  # Field 2, the name in parentheses, may hold spaces and parentheses itself: skip to the last
  # ") ". Globbing is off (set -f), so no field is expanded as a pattern.
  set -f
  set -- "$2" ${stat##*") "}
  [ "$#" -ge 21 ] && [ "$2" != Z ] && [ "$2" != X ] && [ "${21}" = "$1" ]
}
"#;

const REAPER_SCRIPT: &str = r#"
# Ctrl-C or a kill of the whole process group must not take the reaper down with the tests.
trap '' INT TERM HUP
dir=$1 keep=$2 procs=
# One line per event: "+PID:START" when a daemon starts, "-PID:START" when it was stopped.
while read -r line; do
  case $line in
    +[0-9]*:[0-9]*) procs="$procs ${line#+}" ;;
    -[0-9]*:[0-9]*) procs=$(printf '%s\n' $procs | grep -vx "${line#-}" | tr '\n' ' ') ;;
  esac
done
# Every signal goes only to the very process that registered: a bare pid from the past may now
# belong to anyone.
signal() {
  for p in $procs; do running "${p%:*}" "${p#*:}" && kill "-$1" "${p%:*}" 2>/dev/null; done
}
signal TERM
i=0
while [ $i -lt 100 ]; do
  alive=
  for p in $procs; do running "${p%:*}" "${p#*:}" && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1; i=$((i + 1))
done
signal KILL
[ "$keep" = 1 ] || rm -rf "$dir"
"#;

/// When process `pid` started, in clock ticks after boot (field 22 of `/proc/PID/stat`): with the
/// pid, this names one process for good, where the pid alone is handed on once the process is
/// reaped. `None` if there is no such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) is in parentheses and may itself hold spaces and parentheses.
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// A temporary directory with a reaper: it is removed, and every daemon registered with it is
/// stopped, when the test process ends.
///
/// Set `NODEGATE_KEEP_TEST_DIRS=1` to keep the directory (logs, configs) for debugging.
pub struct Scratch {
    dir: PathBuf,
    reaper: Mutex<ChildStdin>,
}

impl Scratch {
    /// Creates a fresh directory under the system temp dir, named after `label`.
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodegate-{label}-"))
            .tempdir()
            .expect("create a temp dir")
            .keep();
        let keep = if std::env::var_os("NODEGATE_KEEP_TEST_DIRS").is_some() {
            "1"
        } else {
            "0"
        };
        let mut reaper = Command::new("sh")
            .arg("-c")
            .arg(format!("{SH_RUNNING}{REAPER_SCRIPT}"))
            .arg("reaper")
            .arg(&dir)
            .arg(keep)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cleanup shell (sh)");
        let stdin = reaper.stdin.take().expect("reaper stdin is piped");
        // The reaper must outlive us; it is a `sh` that exits on its own once its pipe closes.
        std::mem::forget(reaper);
        Self {
            dir,
            reaper: Mutex::new(stdin),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A path inside the directory.
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes a file inside the directory and returns its path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create parent dir");
        }
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    fn tell_reaper(&self, line: String) {
        let mut reaper = self.reaper.lock().unwrap_or_else(|e| e.into_inner());
        // If the reaper is gone there is nothing better to do than carry on.
        let _ = writeln!(reaper, "{line}");
    }

    /// Starts a daemon whose stdout and stderr go to `NAME.log` in this directory.
    pub fn spawn(&self, name: &str, command: &mut Command) -> Daemon {
        let log_path = self.join(format!("{name}.log"));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open daemon log");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        // Read while the child is certainly unreaped (nothing has waited for it yet), so its pid
        // still names it even if it has exited already.
        let Some(started) = start_time(child.id()) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("start {name}: no start time in /proc/{}/stat", child.id());
        };
        let identity = format!("{}:{started}", child.id());
        self.tell_reaper(format!("+{identity}"));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            reaped: false,
            identity,
            log_path,
        }
    }

    /// Stops a daemon now (SIGTERM, then SIGKILL after `grace`) and forgets it.
    pub fn stop(&self, daemon: &mut Daemon, grace: Duration) {
        if let Some(mut child) = daemon.child.take() {
            // Signal only a child not reaped yet: until we wait for it, its pid cannot be given
            // to another process, even if it has exited. Once `try_wait` has seen it exit (here
            // or in `Daemon::is_running`), the pid may belong to anyone.
            if matches!(child.try_wait(), Ok(None)) {
                let _ = kill_process(Pid::from_child(&child), Signal::TERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    // Child::kill signals only an unreaped child as well.
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            self.tell_reaper(format!("-{}", daemon.identity));
        }
    }
}

/// A process started by [`Scratch::spawn`].
pub struct Daemon {
    name: String,
    child: Option<Child>,
    /// Whether `child` was waited for: its pid is free then.
    reaped: bool,
    /// `PID:START`, as the reaper knows it.
    identity: String,
    log_path: PathBuf,
}

impl Daemon {
    /// Whether the process is still running. Once this says no, the process is reaped and its
    /// pid is free for other processes: [`Daemon::pid`] is `None` from then on.
    pub fn is_running(&mut self) -> bool {
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if !running {
            self.reaped = true;
        }
        running
    }

    /// The process id, until [`Daemon::is_running`] or [`Scratch::stop`] saw the process end
    /// (after that, the number may name another process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().filter(|_| !self.reaped).map(Child::id)
    }

    /// Everything the daemon printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// The daemon's name, as given to [`Scratch::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The last `count` lines of `text`, for failure messages.
pub fn last_lines(text: &str, count: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(count)..].join("\n")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process that is killed when the guard drops, as when its test panics half-way, so a
/// failed test never leaves it running.
pub struct KillOnDrop(Option<Child>);

impl KillOnDrop {
    /// Guards `child`.
    pub fn new(child: Child) -> KillOnDrop {
        KillOnDrop(Some(child))
    }

    /// Whether the process has exited, without waiting.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child().try_wait(), Ok(Some(_)))
    }

    /// The process id.
    pub fn id(&mut self) -> u32 {
        self.child().id()
    }

    /// Waits for the process up to `timeout`, kills it if it is still running then, and returns
    /// its status and the output of its piped streams, with whether it exited on its own.
    pub fn wait_for_exit(mut self, timeout: Duration) -> (bool, std::process::Output) {
        let exited = wait_until(timeout, || self.has_exited());
        let mut child = self.0.take().expect("a guarded child");
        if !exited {
            let _ = child.kill();
        }
        let output = child.wait_with_output().expect("wait for a child");
        (exited, output)
    }

    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("a guarded child")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the reaper's `running PID START` check.
    fn running(pid: u32, start: u64) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{SH_RUNNING}running \"$1\" \"$2\""))
            .args(["running", &pid.to_string(), &start.to_string()])
            .status()
            .expect("run sh")
            .success()
    }

    #[test]
    fn running_names_one_process_even_with_a_tricky_name() {
        // The name (comm) is the executable's file name: one that looks like the fields after it.
        let dir = tempfile::tempdir().expect("temp dir");
        let exe = dir.path().join("x) S 1 2 3 4");
        fs::copy("/bin/sleep", &exe).expect("copy sleep");
        let mut child = KillOnDrop::new(Command::new(&exe).arg("600").spawn().expect("spawn"));
        let pid = child.id();
        let start = start_time(pid).expect("a start time");
        assert!(fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains("(x) S")));
        assert!(running(pid, start), "the process itself");
        assert!(
            !running(pid, start + 1),
            "another process with the same pid"
        );
        assert!(
            !running(pid, start - 1),
            "another process with the same pid"
        );
        assert!(!running(u32::MAX, start), "no such process");
        drop(child);
        assert!(!running(pid, start), "a reaped process");
    }

    #[test]
    fn a_zombie_is_not_running() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let pid = child.id();
        let start = start_time(pid).expect("a start time");
        // Not reaped yet: the stat file stays, with state Z.
        let zombie = wait_until(Duration::from_secs(10), || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
        });
        assert!(zombie, "`true` did not exit");
        assert_eq!(start_time(pid), Some(start));
        assert!(!running(pid, start));
        child.wait().expect("reap true");
    }
}
