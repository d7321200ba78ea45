//! What node-exec prints when it cannot even build a client: one message, each cause once.
//! No cluster is needed, so this runs with `cargo test -p node-exec`.

use std::process::Command;

#[test]
fn a_missing_kubeconfig_is_one_clear_message_with_its_cause_once() {
    let missing = "/nonexistent/nodegate/kubeconfig";
    let out = Command::new(env!("CARGO_BIN_EXE_node-exec"))
        .args(["--kubeconfig", missing, "localhost", "--", "true"])
        .output()
        .expect("run node-exec");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // "No such file or directory (os error 2)", as the platform words it.
    let cause = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "node-exec: cannot read kubeconfig {missing}: {cause}; check --kubeconfig or KUBECONFIG"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches(missing).count(), 1, "{stderr}");
    assert_eq!(stderr.matches(&cause).count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
