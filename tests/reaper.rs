//! The test reaper and `Scratch::stop` signal only the daemons they started, never a process that
//! merely got a daemon's pid after the daemon exited (issue 10, item 15).
//!
//! Pid reuse is forced, not waited for: the scenario runs inside a PID namespace of its own, where
//! writing `/proc/sys/kernel/ns_last_pid` chooses the next pid. This test binary runs itself
//! there: as the namespace's init (which plays the unrelated processes) and as the owner of a
//! [`Scratch`] (which plays a test process), selected by [`ROLE`]. Nothing outside the namespace
//! is touched, and when its init exits the kernel kills whatever is left inside.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use nodegate_testkit::process::{KillOnDrop, Scratch, wait_until};

/// Selects the part this binary plays inside the namespace: `init` or `owner`.
const ROLE: &str = "NODEGATE_REAPER_TEST_ROLE";
/// The test function that plays those parts; it does nothing when run as an ordinary test.
const HELPER: &str = "pid_namespace_helper";
/// Marks the owner's lines to init among the test harness's own output.
const MARK: &str = "reaper-test:";

#[test]
fn reaper_and_stop_spare_a_process_that_reuses_an_exited_daemons_pid() {
    let child = Command::new("unshare")
        // --kill-child: if this test gives up and kills unshare, the namespace's init dies and
        // takes every process in the namespace with it.
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", HELPER, "--nocapture", "--test-threads=1"])
        .env(ROLE, "init")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run unshare (util-linux; needs root for a PID namespace)");
    let (exited, output) = KillOnDrop::new(child).wait_for_exit(Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        exited && output.status.success() && stdout.contains("reaper scenario passed"),
        "the scenario in a PID namespace failed ({}):\n{stdout}\n{stderr}",
        if exited { "exited" } else { "timed out" },
    );
}

/// Plays a part of the scenario inside the namespace; an ordinary test run skips it.
#[test]
fn pid_namespace_helper() {
    match std::env::var(ROLE).as_deref() {
        Ok("init") => init(),
        Ok("owner") => owner(),
        _ => {}
    }
}

fn helper_command(role: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("the test binary's path"));
    command
        .args(["--exact", HELPER, "--nocapture", "--test-threads=1"])
        .env(ROLE, role);
    command
}

/// The owner: a test process with a scratch dir and three daemons. Two exit on their own and are
/// reaped (`is_running` says no), leaving their pids free; one keeps running and must be stopped
/// by the reaper. On "stop" from init it stops one of the exited daemons, then waits to be killed.
fn owner() {
    let scratch = Scratch::new("reaper-test");
    let mut by_reaper = scratch.spawn("exits-by-itself", &mut Command::new("true"));
    let mut by_stop = scratch.spawn("exits-then-stopped", &mut Command::new("true"));
    let long = scratch.spawn("runs", Command::new("sleep").arg("600"));
    let pids = [&by_reaper, &by_stop, &long].map(|d| d.pid().expect("just started"));
    assert!(
        wait_until(Duration::from_secs(10), || !by_reaper.is_running()
            && !by_stop.is_running()),
        "`true` did not exit"
    );
    println!(
        "{MARK} {} {} {} {}",
        pids[0],
        pids[1],
        pids[2],
        scratch.path().display()
    );
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("read init's word");
    assert_eq!(line.trim(), "stop");
    scratch.stop(&mut by_stop, Duration::from_secs(5));
    println!("{MARK} stopped");
    // Init ends this process with SIGKILL, the harshest way a test process ends.
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// The namespace's init: starts the owner, gives the exited daemons' pids to unrelated processes,
/// has the owner stop one, kills the owner, and checks that the reaper stopped the running daemon
/// and nothing else.
fn init() {
    assert_eq!(std::process::id(), 1, "not the init of a PID namespace");
    let mut owner = helper_command("owner")
        .env_remove("NODEGATE_KEEP_TEST_DIRS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the owner");
    let mut to_owner = owner.stdin.take().expect("piped");
    let mut from_owner = BufReader::new(owner.stdout.take().expect("piped"));
    let owner = KillOnDrop::new(owner);

    let words = read_mark(&mut from_owner);
    let [by_reaper, by_stop, long, dir] = words.as_slice() else {
        panic!("unexpected report from the owner: {words:?}");
    };
    let [by_reaper, by_stop, long] =
        [by_reaper, by_stop, long].map(|w| w.parse::<u32>().expect("a pid"));
    let dir = PathBuf::from(dir);

    // A start time counts clock ticks (10 ms): the reuse must not fall into the daemon's own tick,
    // which takes a privileged write of ns_last_pid (as here) or a full turn of pid_max in 10 ms.
    std::thread::sleep(Duration::from_millis(100));
    let mut victims = [
        KillOnDrop::new(spawn_with_pid(by_reaper)),
        KillOnDrop::new(spawn_with_pid(by_stop)),
    ];

    writeln!(to_owner, "stop").expect("tell the owner to stop a daemon");
    assert_eq!(read_mark(&mut from_owner), ["stopped"]);
    let spared_by_stop = !victims[1].has_exited();

    // The owner dies without a chance to clean up; its reaper takes over.
    drop(owner);
    let reaper_done = wait_until(Duration::from_secs(30), || !dir.exists());
    let long_state = state(long);

    let mut failures = Vec::new();
    if !spared_by_stop {
        failures.push(format!(
            "Scratch::stop signalled pid {by_stop}, which belonged to another process by then"
        ));
    }
    for (victim, pid) in victims.iter_mut().zip([by_reaper, by_stop]) {
        if victim.has_exited() && (pid != by_stop || spared_by_stop) {
            failures.push(format!(
                "the reaper signalled pid {pid}, which belonged to another process by then"
            ));
        }
    }
    if !reaper_done {
        failures.push(format!("the reaper left {} behind", dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }
    // The stopped daemon stays a zombie: this init reaps only its own children.
    if !matches!(long_state.as_deref(), None | Some("Z")) {
        failures.push(format!(
            "the reaper did not stop the running daemon (pid {long}, state {long_state:?})"
        ));
    }
    drop(victims);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    println!("reaper scenario passed");
}

/// The words of the owner's next marked line.
fn read_mark(from_owner: &mut BufReader<ChildStdout>) -> Vec<String> {
    let mut line = String::new();
    loop {
        line.clear();
        let read = from_owner.read_line(&mut line).expect("read the owner");
        assert_ne!(read, 0, "the owner ended before reporting");
        // With --nocapture the harness's "test NAME ... " may start the same line.
        if let Some(at) = line.find(MARK) {
            let words = line[at + MARK.len()..].split_whitespace();
            return words.map(str::to_owned).collect();
        }
    }
}

/// Starts an unrelated long-running process that gets pid `pid`, which must be free.
fn spawn_with_pid(pid: u32) -> Child {
    let ns_last_pid = Path::new("/proc/sys/kernel/ns_last_pid");
    std::fs::write(ns_last_pid, (pid - 1).to_string()).expect("write ns_last_pid");
    let child = Command::new("sleep")
        .arg("600")
        .spawn()
        .expect("start sleep");
    if child.id() != pid {
        let id = child.id();
        drop(KillOnDrop::new(child));
        panic!("wanted pid {pid} for an unrelated process, got {id}");
    }
    child
}

/// The state letter of process `pid` (field 3 of /proc/PID/stat), if there is one.
fn state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().next().map(str::to_owned)
}
