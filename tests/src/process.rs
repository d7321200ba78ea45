//! Test daemons that never outlive the test process, and a temp dir that goes with them.
//!
//! A test binary shares one cluster between its tests (a `static`), and Rust never drops statics,
//! so cleanup cannot rely on `Drop`. Instead every [`Scratch`] directory has a *reaper*: a tiny
//! shell that reads daemon pids from a pipe held by the test process. When the test process ends,
//! however it ends, the pipe closes and the reaper stops exactly the daemons it was told about
//! (SIGTERM, then SIGKILL after 10 s) and removes the directory.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const REAPER_SCRIPT: &str = r#"
# Ctrl-C or a kill of the whole process group must not take the reaper down with the tests.
trap '' INT TERM HUP
dir=$1 keep=$2 pids=
while read -r line; do
  case $line in
    +*) pids="$pids ${line#+}" ;;
    -*) pids=$(printf '%s\n' $pids | grep -vx "${line#-}" | tr '\n' ' ') ;;
  esac
done
for p in $pids; do kill -TERM "$p" 2>/dev/null; done
i=0
while [ $i -lt 100 ]; do
  alive=
  for p in $pids; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1; i=$((i + 1))
done
for p in $pids; do kill -KILL "$p" 2>/dev/null; done
[ "$keep" = 1 ] || rm -rf "$dir"
"#;

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
            .arg(REAPER_SCRIPT)
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
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        self.tell_reaper(format!("+{}", child.id()));
        Daemon {
            name: name.to_owned(),
            child: Some(child),
            log_path,
        }
    }

    /// Stops a daemon now (SIGTERM, then SIGKILL after `grace`) and forgets it.
    pub fn stop(&self, daemon: &mut Daemon, grace: Duration) {
        if let Some(mut child) = daemon.child.take() {
            let pid = child.id();
            signal(pid, "TERM");
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
            self.tell_reaper(format!("-{pid}"));
        }
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// A process started by [`Scratch::spawn`].
pub struct Daemon {
    name: String,
    child: Option<Child>,
    log_path: PathBuf,
}

impl Daemon {
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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
