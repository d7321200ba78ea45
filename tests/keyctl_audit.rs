//! `keyctl audit` against a real kube-apiserver 1.20 with RBAC and the Node authorizer: who can
//! write grants, through which binding and role, and the exit status; the guard reported as not
//! available (this server has no ValidatingAdmissionPolicy).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use nodegate_testkit::output::Checked;
use nodegate_testkit::{Cluster, Validity, shared_setup, workspace_bin};
use serde_json::Value;

/// The auditor: may read RBAC (the shipped nodegate-keyctl-auditor role), nothing else.
const AUDITOR: &str = "audrey";

/// Node writers of every kind the audit must find, none of them a granter but grace and carl:
/// a wildcard role (wendy), an aggregated role whose controller never ran (a ServiceAccount),
/// `nodes/status` only (stan), a group (audit-ops), a per-node patcher (nina), and the shipped
/// granter roles, for all nodes (grace) and for the gpu pool (carl).
const NODE_WRITERS: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: audit-wildcard}
rules:
- {apiGroups: ["*"], resources: ["*"], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: audit-wendy}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: audit-wildcard}
subjects: [{kind: User, name: wendy, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: audit-aggregated}
aggregationRule:
  clusterRoleSelectors:
  - matchLabels: {audit.nodegate.test/aggregate-to: node-writers}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: audit-aggregated-part
  labels: {audit.nodegate.test/aggregate-to: node-writers}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: audit-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: audit-aggregated}
subjects: [{kind: ServiceAccount, name: agent, namespace: audit-ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: audit-status}
rules:
- {apiGroups: [""], resources: [nodes/status], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: audit-stan}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: audit-status}
subjects: [{kind: User, name: stan, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: audit-all-verbs}
rules:
- {apiGroups: [""], resources: [nodes], verbs: ["*"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: audit-ops}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: audit-all-verbs}
subjects: [{kind: Group, name: audit-ops, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: audit-one-node}
rules:
- {apiGroups: [""], resources: [nodes], resourceNames: [audit-n1], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: audit-nina}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: audit-one-node}
subjects: [{kind: User, name: nina, apiGroup: rbac.authorization.k8s.io}]
"#;

/// The shared cluster, with the shipped granter and auditor roles and the writers above.
fn cluster() -> &'static Cluster {
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    shared_setup(&SETUP, || {
        let cluster = Cluster::shared();
        cluster.apply_shipped(&[
            "packaging/rbac/keyctl-granter.yaml",
            "packaging/rbac/keyctl-auditor.yaml",
        ]);
        cluster.apply(NODE_WRITERS);
        cluster.bind_cluster_role("audit-audrey", "nodegate-keyctl-auditor", AUDITOR);
        cluster.bind_cluster_role("audit-grace", "nodegate-keyctl-granter", "grace");
        cluster.bind_cluster_role("audit-carl", "nodegate-keyctl-granter-gpu-pool", "carl");
    });
    Cluster::shared()
}

fn audit(kubeconfig: &Path, args: &[&str]) -> Checked {
    let mut command = Command::new(workspace_bin("keyctl"));
    command
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("audit")
        .args(args)
        .env_remove("KUBECONFIG");
    Checked::run(&mut command)
}

fn audit_json(kubeconfig: &Path, args: &[&str]) -> (Checked, Value) {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = audit(kubeconfig, &all);
    let json = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("audit -o json is not JSON ({e}):\n{out}"));
    (out, json)
}

/// The subject of `kind` and `name` in an audit's JSON.
fn subject<'a>(json: &'a Value, kind: &str, name: &str) -> &'a Value {
    json["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .find(|s| s["kind"] == kind && s["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {json:#}"))
}

/// Its node writes as "VERBS RESOURCE SCOPE[:NODES] via BINDING/ROLE[<AGGREGATED]", sorted.
fn writes(subject: &Value) -> Vec<String> {
    let mut found: Vec<String> = subject["node_writes"]
        .as_array()
        .expect("node_writes")
        .iter()
        .map(|w| {
            let verbs: Vec<&str> = w["verbs"]
                .as_array()
                .expect("verbs")
                .iter()
                .map(|v| v.as_str().expect("verb"))
                .collect();
            let nodes: Vec<&str> = w["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|v| v.as_str().expect("node"))
                .collect();
            let through = &w["through"];
            let via = match through["kind"].as_str() {
                Some("Binding") => {
                    let mut via = format!(
                        "{}/{}",
                        through["binding"].as_str().expect("binding"),
                        through["role"].as_str().expect("role")
                    );
                    if let Some(from) = through["aggregated_from"].as_str() {
                        via.push('<');
                        via.push_str(from);
                    }
                    via
                }
                other => other.expect("through kind").to_owned(),
            };
            let mut scope = w["scope"].as_str().expect("scope").to_owned();
            if !nodes.is_empty() {
                scope.push(':');
                scope.push_str(&nodes.join(","));
            }
            format!(
                "{} {} {scope} via {via}",
                verbs.join(","),
                w["resource"].as_str().expect("resource")
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn every_node_writer_is_found_with_its_binding_role_and_standing() {
    let cluster = cluster();
    let auditor = cluster.user_kubeconfig(AUDITOR, &[], Validity::Current);

    let (out, json) = audit_json(&auditor, &[]);
    out.code_is(3);
    assert_eq!(json["guard"]["state"], "not-available", "{json:#}");
    assert_eq!(json["guard"]["in_force"], false);
    let message = json["guard"]["message"].as_str().expect("message");
    assert!(
        message.contains("admissionregistration.k8s.io/v1") && message.contains("1.30"),
        "{message}"
    );
    assert!(message.contains("v1.20"), "the server's version: {message}");

    let wendy = subject(&json, "User", "wendy");
    assert_eq!(wendy["standing"], "beyond-the-granters");
    assert_eq!(
        writes(wendy),
        [
            "patch nodes all via audit-wendy/audit-wildcard",
            "patch nodes/status all via audit-wendy/audit-wildcard",
        ]
    );
    // The aggregation controller does not run on this test plane: the role is empty on the
    // server, and counts with what it aggregates.
    let stored = cluster.kubectl_ok(&["get", "clusterrole", "audit-aggregated", "-o", "json"]);
    let stored: Value = serde_json::from_str(&stored).expect("role JSON");
    assert!(
        stored["rules"].as_array().is_none_or(Vec::is_empty),
        "{stored:#}"
    );
    let agent = subject(&json, "ServiceAccount", "agent");
    assert_eq!(agent["namespace"], "audit-ns");
    assert_eq!(agent["standing"], "beyond-the-granters");
    assert_eq!(
        writes(agent),
        ["update nodes all via audit-agent/audit-aggregated<audit-aggregated-part"]
    );
    let stan = subject(&json, "User", "stan");
    assert_eq!(stan["standing"], "beyond-the-granters");
    assert_eq!(
        writes(stan),
        ["patch nodes/status all via audit-stan/audit-status"]
    );
    let ops = subject(&json, "Group", "audit-ops");
    assert_eq!(ops["standing"], "beyond-the-granters");
    assert_eq!(
        writes(ops),
        ["create,patch,update nodes all via audit-ops/audit-all-verbs"]
    );
    let nina = subject(&json, "User", "nina");
    assert_eq!(
        writes(nina),
        ["patch nodes named:audit-n1 via audit-nina/audit-one-node"]
    );
    assert_eq!(nina["standing"], "beyond-the-granters");

    let grace = subject(&json, "User", "grace");
    assert_eq!(grace["standing"], "granter");
    assert_eq!(grace["write_grants"]["scope"], "all");
    assert_eq!(
        writes(grace),
        ["patch nodes all via audit-grace/nodegate-keyctl-granter"]
    );
    let carl = subject(&json, "User", "carl");
    assert_eq!(carl["standing"], "granter");
    assert_eq!(
        carl["write_grants"]["nodes"],
        serde_json::json!(["gpu-node-1", "gpu-node-2"])
    );
    assert_eq!(
        writes(carl),
        ["patch nodes named:gpu-node-1,gpu-node-2 via audit-carl/nodegate-keyctl-granter-gpu-pool"]
    );

    // Always there: the superusers (allowed before RBAC, and bound to cluster-admin), and
    // every node on its own Node through the Node authorizer.
    let masters = subject(&json, "Group", "system:masters");
    assert_eq!(masters["standing"], "granter");
    assert!(
        writes(masters)
            .contains(&"create,patch,update nodes, nodes/status all via Superuser".to_owned()),
        "{:?}",
        writes(masters)
    );
    let nodes = subject(&json, "Group", "system:nodes");
    assert_eq!(nodes["standing"], "system");
    assert_eq!(
        writes(nodes),
        [
            "create,patch,update nodes own via NodeAuthorizer",
            "patch,update nodes/status own via NodeAuthorizer",
        ]
    );
    // The auditor itself reads RBAC only.
    assert!(
        !json["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .any(|s| s["name"] == AUDITOR)
    );
    let beyond: Vec<&str> = json["beyond_the_granters"]
        .as_array()
        .expect("beyond_the_granters")
        .iter()
        .map(|v| v.as_str().expect("subject"))
        .collect();
    for expected in [
        "User wendy",
        "ServiceAccount audit-ns/agent",
        "User stan",
        "Group audit-ops",
        "User nina",
    ] {
        assert!(beyond.contains(&expected), "{expected} in {beyond:?}");
    }
    assert!(
        !beyond
            .iter()
            .any(|b| b.contains("grace") || b.contains("carl"))
    );

    // The table says the same for people, with what to do.
    let out = audit(&auditor, &[]);
    out.code_is(3);
    prints(
        &out,
        &[
            "Admission guard nodegate-grant-guard: not available",
            "ClusterRoleBinding audit-wendy → ClusterRole audit-wildcard",
            "ClusterRole audit-aggregated (aggregates audit-aggregated-part)",
            "patch nodes/status (all)",
            "patch nodes on audit-n1",
            "beyond the granters",
            "granter",
            "docs/admission-guard.md",
            "bind the ClusterRole nodegate-keyctl-granter",
        ],
    );
}

/// Panics, showing everything, unless standard output holds each of `texts`.
#[track_caller]
fn prints(out: &Checked, texts: &[&str]) {
    for text in texts {
        assert!(
            out.stdout.contains(text),
            "expected {text:?} on stdout: {out}"
        );
    }
}

#[test]
fn reading_rbac_needs_the_auditor_role_and_the_refusal_says_so() {
    let cluster = cluster();
    let nobody = cluster.user_kubeconfig("audit-nobody", &[], Validity::Current);
    let out = audit(&nobody, &[]);
    out.code_is(1)
        .says("audit-nobody may not list clusterroles.rbac.authorization.k8s.io")
        .says("--clusterrole=nodegate-keyctl-auditor --user=audit-nobody");
    assert!(out.stdout.is_empty(), "{out}");
}

/// A cluster of its own (the shared one holds the writers above), with only what a fresh
/// cluster has, the shipped granter role bound to one user, and the shipped janitor-free set of
/// roles: the exit status is 0, and --strict counts Kubernetes' own identities.
#[test]
fn only_granters_and_kubernetes_own_identities_give_exit_status_zero() {
    let cluster = Cluster::start();
    cluster.apply_shipped(&[
        "packaging/rbac/keyctl-granter.yaml",
        "packaging/rbac/keyctl-viewer.yaml",
        "packaging/rbac/keyctl-auditor.yaml",
    ]);
    cluster.bind_cluster_role("fresh-auditor", "nodegate-keyctl-auditor", AUDITOR);
    cluster.bind_cluster_role("fresh-grace", "nodegate-keyctl-granter", "grace");
    let auditor = cluster.user_kubeconfig(AUDITOR, &[], Validity::Current);

    let (out, json) = audit_json(&auditor, &[]);
    out.code_is(0);
    assert_eq!(
        json["beyond_the_granters"],
        serde_json::json!([]),
        "{json:#}"
    );
    assert_eq!(subject(&json, "User", "grace")["standing"], "granter");
    assert_eq!(
        subject(&json, "Group", "system:nodes")["standing"],
        "system"
    );
    let system: Vec<String> = json["subjects"]
        .as_array()
        .expect("subjects")
        .iter()
        .filter(|s| s["standing"] == "system")
        .map(|s| format!("{} {}", s["kind"], s["name"]))
        .collect();
    // The kube-controller-manager's controllers that write Nodes, from the API server's own
    // bootstrap bindings.
    assert!(
        system.iter().any(|s| s.contains("node-controller")),
        "{system:?}"
    );
    let out = audit(&auditor, &[]);
    out.code_is(0);
    prints(
        &out,
        &[
            "Without the guard, Kubernetes' own identities can write grants too",
            "--strict",
            "system identity",
        ],
    );

    let (out, json) = audit_json(&auditor, &["--strict"]);
    out.code_is(3);
    let beyond = json["beyond_the_granters"].as_array().expect("beyond");
    assert!(
        beyond.iter().any(|b| b == "Group system:nodes"),
        "{beyond:?}"
    );
    assert_eq!(beyond.len(), system.len(), "{beyond:?} / {system:?}");
}
