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

#[test]
fn a_kubeconfig_variable_naming_only_missing_files_is_one_clear_message() {
    let missing = "/nonexistent/nodegate/a:/nonexistent/nodegate/b";
    let out = Command::new(env!("CARGO_BIN_EXE_node-exec"))
        .env("KUBECONFIG", missing)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .args(["localhost", "--", "true"])
        .output()
        .expect("run node-exec");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "node-exec: no Kubernetes credentials found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a ServiceAccount (KUBECONFIG lists only files that do not exist: /nonexistent/nodegate/a, /nonexistent/nodegate/b)",
        "{stderr}"
    );
}

#[test]
fn a_kubeconfig_that_is_not_yaml_is_named_without_quoting_its_contents() {
    let dir = std::env::temp_dir().join(format!("node-exec-kubeconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join("config");
    std::fs::write(&path, "token: not-for-your-eyes\n- [").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_node-exec"))
        .arg("--kubeconfig")
        .arg(&path)
        .args(["localhost", "--", "true"])
        .output()
        .expect("run node-exec");
    std::fs::remove_dir_all(&dir).expect("remove dir");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "node-exec: cannot read kubeconfig {}: failed to parse kubeconfig YAML",
            path.display()
        )) && !stderr.contains("not-for-your-eyes"),
        "{stderr}"
    );
}
