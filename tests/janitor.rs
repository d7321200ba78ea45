//! The in-cluster janitor as it ships: `packaging/janitor.yaml` applied to a real control plane,
//! its image built by `packaging/build-janitor-image` and imported into a real containerd, and
//! `keyctl janitor` running as a pod on a real kubelet, reaching the API server with its own
//! ServiceAccount token (minted by kube-controller-manager, mounted by the kubelet; the test
//! never sees it) and nothing but the RBAC of the manifest.
//!
//! Needs `cargo build -p keyctl` first (the image is made from target/debug/keyctl).

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::cluster::kubectl_as;
use nodegate_testkit::kubelet::Kubelet;
use nodegate_testkit::process::{Scratch, wait_until};
use nodegate_testkit::{Cluster, workspace_bin, workspace_root};

const NAMESPACE: &str = "nodegate-system";
const SERVICE_ACCOUNT: &str = "system:serviceaccount:nodegate-system:nodegate-janitor";
const TEST_IMAGE: &str = "localhost/nodegate-janitor-test:1";
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti test@janitor";

fn grant(user: &str, expiry: Expiry) -> Grant {
    let now = Utc::now();
    Grant {
        user: LoginUser::new(user).expect("valid login user"),
        key: GrantKey::parse(KEY).expect("valid test key"),
        expiry,
        granted_by: GrantText::new("granted-by", "janitor-test").expect("valid granted-by"),
        granted_at: now - chrono::Duration::hours(2),
        reason: None,
    }
}

/// Sets `grant` on `node` as the admin; returns its annotation key.
fn plant(cluster: &Cluster, node: &str, grant: &Grant) -> String {
    let key = grant.annotation_key(&AnnotationPrefix::default());
    cluster.set_node_annotation(node, &key, Some(&grant.annotation_value()));
    key
}

/// The SSHKeyExpired events in kube-system about `node`.
fn expiry_events(cluster: &Cluster, node: &str) -> Vec<serde_json::Value> {
    let json = cluster.kubectl_ok(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("event list JSON");
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reason"] == "SSHKeyExpired" && e["regarding"]["name"] == node)
        .collect()
}

fn can_i(cluster: &Cluster, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", SERVICE_ACCOUNT];
    all.extend_from_slice(args);
    let out = cluster.kubectl(&all);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// Whether the janitor's ServiceAccount may `verb` `resource` in `group`, by a
/// SubjectAccessReview: `kubectl auth can-i` cannot ask about a resource the server does not
/// serve, such as nodegate's own `grants.nodegate.dev` (kubectl 1.32 sends it as a core-group
/// resource named `grants.nodegate.dev`, which no role names).
fn may(cluster: &Cluster, verb: &str, group: &str, resource: &str) -> bool {
    let review = serde_json::json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": SERVICE_ACCOUNT,
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NAMESPACE}"),
                       "system:authenticated"],
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource},
        },
    });
    let out = kubectl_as(
        cluster.admin_kubeconfig(),
        &["create", "-f", "-", "-o", "json"],
        Some(review.to_string().as_bytes()),
    );
    assert!(
        out.status.success(),
        "SubjectAccessReview failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("review JSON");
    answer["status"]["allowed"] == true
}

#[test]
fn janitor_pod_removes_expired_grants_with_its_own_service_account() {
    let cluster = Cluster::start();
    let kubelet = Kubelet::start(&cluster);

    // The shipped image, made from this build's keyctl, loaded into the node's containerd.
    let scratch = Scratch::new("janitor-image");
    let tarball = scratch.join("janitor.tar");
    let built = Command::new(workspace_root().join("packaging/build-janitor-image"))
        .arg(workspace_bin("keyctl"))
        .arg(&tarball)
        .arg(TEST_IMAGE)
        .output()
        .expect("run build-janitor-image");
    assert!(
        built.status.success(),
        "build-janitor-image failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    kubelet.import_image(&tarball);

    // Nodes the janitor is told to look after (by label), and one it must leave alone.
    let run = format!("r{}", std::process::id());
    let label = format!("janitor.nodegate.test/run={run}");
    let (watched, other) = ("janitor-watched", "janitor-outsider");
    cluster.create_nodes(
        &[watched.to_owned()],
        &[("janitor.nodegate.test/run", &run)],
    );
    cluster.create_node(other);
    let now = Utc::now();
    let expired = plant(
        &cluster,
        watched,
        &grant("root", Expiry::At(now - chrono::Duration::minutes(5))),
    );
    let valid = plant(
        &cluster,
        watched,
        &grant("alice", Expiry::At(now + chrono::Duration::hours(1))),
    );
    let permanent = plant(&cluster, watched, &grant("bob", Expiry::Permanent));
    let outsider = plant(
        &cluster,
        other,
        &grant("root", Expiry::At(now - chrono::Duration::minutes(5))),
    );

    // The manifests exactly as shipped.
    let packaging = workspace_root().join("packaging");
    for file in ["node-exec-namespace.yaml", "janitor.yaml"] {
        cluster.apply(&std::fs::read_to_string(packaging.join(file)).expect("read manifest"));
    }

    // Least privilege: what it needs, and nothing more.
    for needed in [
        &["list", "nodes"][..],
        &["watch", "nodes"],
        &["patch", "nodes"],
        &["create", "events.events.k8s.io", "-n", "kube-system"],
    ] {
        assert!(can_i(&cluster, needed), "the janitor may not {needed:?}");
    }
    for refused in [
        &["delete", "nodes"][..],
        &["update", "nodes"],
        &["get", "secrets", "-A"],
        &["create", "pods", "-n", NAMESPACE],
        &["create", "events.events.k8s.io", "-n", "default"],
        &["patch", "nodes", "--subresource=status"],
    ] {
        assert!(!can_i(&cluster, refused), "the janitor may {refused:?}");
    }
    // nodegate's own permission to remove grants, which the admission guard asks for; removing
    // only, never adding or changing a grant.
    assert!(may(&cluster, "prune", "nodegate.dev", "grants"));
    assert!(!may(&cluster, "write", "nodegate.dev", "grants"));

    // What this test machine needs and a real cluster does not: no scheduler runs here (so the
    // pod is pinned to the node), no CNI plugin (so host network), and no kube-proxy (so the
    // `kubernetes` Service's cluster IP leads nowhere and the in-cluster address is the API
    // server's own). The janitor is scoped to this test's nodes, the image is the test's.
    let patch = serde_json::json!({"spec": {"template": {"spec": {
        "nodeName": kubelet.node_name(),
        "hostNetwork": true,
        "containers": [{
            "name": "janitor",
            "image": TEST_IMAGE,
            "imagePullPolicy": "Never",
            "args": ["janitor", "--interval=2s", "--selector", &label],
            "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT",
                 "value": cluster.server().rsplit(':').next().expect("server URL has a port")},
            ],
        }],
    }}}});
    cluster.kubectl_ok(&[
        "patch",
        "deployment",
        "nodegate-janitor",
        "-n",
        NAMESPACE,
        "--type=strategic",
        "-p",
        &patch.to_string(),
    ]);

    let mut pod = String::new();
    let created = wait_until(Duration::from_secs(60), || {
        let out = cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/name=nodegate-janitor",
            "-o",
            "jsonpath={.items[?(@.spec.hostNetwork==true)].metadata.name}",
        ]);
        pod = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        !pod.is_empty() && !pod.contains(' ')
    });
    assert!(
        created,
        "the Deployment made no janitor pod:\n{}",
        cluster.kubectl_ok(&[
            "describe",
            "deployment",
            "nodegate-janitor",
            "-n",
            NAMESPACE
        ])
    );
    kubelet.wait_pod_running(&cluster, NAMESPACE, &pod, Duration::from_secs(90));
    let logs = || {
        String::from_utf8_lossy(&cluster.kubectl(&["logs", "-n", NAMESPACE, &pod]).stdout)
            .into_owned()
    };
    let pod_json: serde_json::Value = serde_json::from_str(
        &cluster.kubectl_ok(&["get", "pod", &pod, "-n", NAMESPACE, "-o", "json"]),
    )
    .unwrap();
    assert_eq!(pod_json["spec"]["serviceAccountName"], "nodegate-janitor");

    // The expired grant goes, with an Event; the others stay; the outsider is not touched.
    let removed = wait_until(Duration::from_secs(60), || {
        !cluster.node_annotations(watched).contains_key(&expired)
    });
    assert!(
        removed,
        "the janitor did not remove the expired grant; its log:\n{}",
        logs()
    );
    let annotations = cluster.node_annotations(watched);
    assert!(
        annotations.contains_key(&valid),
        "an unexpired grant was removed"
    );
    assert!(
        annotations.contains_key(&permanent),
        "a permanent grant was removed"
    );
    let events_seen = wait_until(Duration::from_secs(20), || {
        !expiry_events(&cluster, watched).is_empty()
    });
    assert!(
        events_seen,
        "no SSHKeyExpired event; janitor log:\n{}",
        logs()
    );
    let event = &expiry_events(&cluster, watched)[0];
    assert_eq!(
        event["reportingInstance"],
        pod.as_str(),
        "the event should name the pod that acted: {event}"
    );

    // A grant that expires while the janitor runs goes too (its periodic pass, no Node change).
    let soon = plant(
        &cluster,
        watched,
        &grant(
            "root",
            Expiry::At(Utc::now() + chrono::Duration::seconds(4)),
        ),
    );
    assert!(
        wait_until(Duration::from_secs(40), || {
            !cluster.node_annotations(watched).contains_key(&soon)
        }),
        "a grant that expired while the janitor ran was not removed; its log:\n{}",
        logs()
    );
    assert!(cluster.node_annotations(watched).contains_key(&valid));

    // Outside its selector nothing changed, and no event was written.
    assert!(
        cluster.node_annotations(other).contains_key(&outsider),
        "the janitor touched a node outside its selector"
    );
    assert!(expiry_events(&cluster, other).is_empty());

    // For the CI log: what the janitor said it did.
    eprintln!("janitor log:\n{}", logs());
    cluster.kubectl_ok(&[
        "delete",
        "deployment",
        "nodegate-janitor",
        "-n",
        NAMESPACE,
        "--wait=false",
    ]);
}
