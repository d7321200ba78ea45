//! The harness itself: the control plane starts and enforces what the product relies on.

use nodegate_testkit::cluster::kubectl_as;
use nodegate_testkit::{Cluster, Validity};

#[test]
fn node_credentials_reach_only_their_own_node() {
    let cluster = Cluster::shared();
    cluster.create_nodes(
        &["harness-a".into(), "harness-b".into()],
        &[("pool", "harness")],
    );
    let node_a = cluster.node_kubeconfig("harness-a", Validity::Current);

    let own = kubectl_as(&node_a, &["get", "node", "harness-a", "-o", "name"], None);
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    let other = kubectl_as(&node_a, &["annotate", "node", "harness-b", "x=y"], None);
    assert!(
        !other.status.success(),
        "a node may not annotate another node"
    );

    let annotate = kubectl_as(&node_a, &["annotate", "node", "harness-a", "x=y"], None);
    assert!(
        annotate.status.success(),
        "{}",
        String::from_utf8_lossy(&annotate.stderr)
    );
    assert_eq!(
        cluster
            .node_annotations("harness-a")
            .get("x")
            .map(String::as_str),
        Some("y")
    );
}

#[test]
fn users_without_bindings_are_forbidden() {
    let cluster = Cluster::shared();
    let nobody = cluster.user_kubeconfig("nobody", &["nobodies"], Validity::Current);
    let out = kubectl_as(&nobody, &["get", "nodes"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

#[test]
fn a_user_in_two_groups_has_the_rights_of_both() {
    let cluster = Cluster::shared();
    cluster.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: harness-read-nodes}
rules: [{apiGroups: [""], resources: [nodes], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: harness-read-secrets}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: harness-read-nodes}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: harness-read-nodes}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: harness-first}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: harness-read-secrets}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: harness-read-secrets}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: harness-second}]
"#,
    );
    let can = |kubeconfig: &std::path::Path, resource: &str| {
        let out = kubectl_as(kubeconfig, &["auth", "can-i", "get", resource], None);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let both = cluster.user_kubeconfig(
        "harness-both",
        &["harness-first", "harness-second"],
        Validity::Current,
    );
    assert!(can(&both, "nodes"), "the first group's rights are missing");
    assert!(
        can(&both, "secrets"),
        "the second group's rights are missing"
    );
    let first =
        cluster.user_kubeconfig("harness-first-only", &["harness-first"], Validity::Current);
    assert!(can(&first, "nodes") && !can(&first, "secrets"));
}
