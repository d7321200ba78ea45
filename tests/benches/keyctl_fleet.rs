//! Benchmark: grant one key to 1000 API-only nodes and revoke it, with keyctl and, side by side,
//! with the obvious alternatives: `kubectl annotate` once per node (what a shell loop does), and
//! one `kubectl annotate -l SELECTOR` call. Prints figures; asserts only that the work was done.
//!
//! Run with `scripts/bench keyctl_fleet` (release binaries). `NODES=N` changes the fleet size.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{SubsecRound as _, Utc};
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::process::Scratch;
use nodegate_testkit::{Cluster, workspace_bin};

fn main() {
    let count: usize = std::env::var("NODES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let cluster = Cluster::start();
    let scratch = Scratch::new("bench-fleet");
    let names: Vec<String> = (0..count).map(|i| format!("bench-{i:04}")).collect();
    eprintln!("creating {count} API-only nodes...");
    cluster.create_nodes(&names, &[("pool", "bench")]);
    let admin = cluster.admin_kubeconfig();

    let private = scratch.join("bench_key");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&private)
        .status()
        .expect("ssh-keygen")
        .success();
    assert!(ok);
    let public = private.with_extension("pub");

    // Runs `program --kubeconfig ADMIN ARGS...`, which must succeed.
    let run_ok = |program: &Path, args: &[&str]| {
        let out = Command::new(program)
            .arg("--kubeconfig")
            .arg(admin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()));
        assert!(
            out.status.success(),
            "{} {args:?}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let keyctl_bin = workspace_bin("keyctl");
    let keyctl = |args: &[&str]| run_ok(&keyctl_bin, args);
    let kubectl = |args: &[&str]| run_ok(Path::new("kubectl"), args);
    let grants_on = |node: &str| -> usize {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(admin)
            .args([
                "get",
                "node",
                node,
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .output()
            .expect("kubectl get");
        String::from_utf8_lossy(&out.stdout)
            .matches("ssh.nodegate.dev/g.")
            .count()
    };
    let check_all = |expected: usize| {
        for node in [&names[0], &names[count / 2], &names[count - 1]] {
            assert_eq!(grants_on(node), expected, "{node}");
        }
    };

    // The same annotation keyctl writes, for the kubectl runs.
    let key = GrantKey::parse(std::fs::read_to_string(&public).expect("public key").trim())
        .expect("a valid key");
    let now = Utc::now().trunc_subsecs(0);
    let grant = Grant {
        user: LoginUser::new("root").expect("valid user"),
        key,
        expiry: Expiry::At(now + chrono::TimeDelta::hours(1)),
        granted_by: GrantText::new("granted-by", "admin").expect("valid text"),
        granted_at: now,
        reason: None,
    };
    let annotation = grant.annotation_key(&AnnotationPrefix::default());
    let set = format!("{annotation}={}", grant.annotation_value());
    let unset = format!("{annotation}-");

    let timed = |f: &dyn Fn()| {
        let start = Instant::now();
        f();
        start.elapsed()
    };
    let key_arg = public.to_str().expect("UTF-8 path");

    eprintln!("keyctl grant/revoke -l pool=bench ...");
    let keyctl_grant = timed(&|| {
        keyctl(&[
            "grant",
            "-l",
            "pool=bench",
            "--expires",
            "1h",
            "--key",
            key_arg,
        ])
    });
    check_all(1);
    let keyctl_revoke = timed(&|| keyctl(&["revoke", "-l", "pool=bench", "--key", key_arg]));
    check_all(0);

    eprintln!("kubectl annotate -l pool=bench (one call) ...");
    let selector_grant = timed(&|| kubectl(&["annotate", "nodes", "-l", "pool=bench", &set]));
    check_all(1);
    let selector_revoke = timed(&|| kubectl(&["annotate", "nodes", "-l", "pool=bench", &unset]));
    check_all(0);

    eprintln!("kubectl annotate per node ({count} calls each way) ...");
    let loop_grant = timed(&|| {
        names
            .iter()
            .for_each(|n| kubectl(&["annotate", "node", n, &set]))
    });
    check_all(1);
    let loop_revoke = timed(&|| {
        names
            .iter()
            .for_each(|n| kubectl(&["annotate", "node", n, &unset]))
    });
    check_all(0);

    let secs = |d: Duration| d.as_secs_f64();
    println!("\nGrant one key to {count} nodes, then revoke it (wall time, one run each)\n");
    println!(
        "{:<44} {:>10} {:>10} {:>12}",
        "method", "grant s", "revoke s", "vs keyctl"
    );
    let row = |name: &str, grant: Duration, revoke: Duration| {
        let ratio = secs(grant + revoke) / secs(keyctl_grant + keyctl_revoke);
        println!(
            "{name:<44} {:>10.2} {:>10.2} {:>11.1}x",
            secs(grant),
            secs(revoke),
            ratio
        );
    };
    row(
        "keyctl grant|revoke -l pool=bench",
        keyctl_grant,
        keyctl_revoke,
    );
    row(
        "kubectl annotate, one call per node",
        loop_grant,
        loop_revoke,
    );
    row(
        "kubectl annotate nodes -l pool=bench",
        selector_grant,
        selector_revoke,
    );
    println!(
        "\nkeyctl also checks access first, validates every key, records an Event per node, and\nremoves only the exact grant it read (JSON patch test+remove); kubectl does none of these."
    );
}
