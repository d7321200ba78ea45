//! keyctl against a real kube-apiserver with RBAC: black-box, through the binary users run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nodegate_core::{AnnotationPrefix, Grant, GrantKey, NodeGrants};
use nodegate_testkit::output::{Checked, output_with_stdin};
use nodegate_testkit::process::{Scratch, wait_until};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

const PREFIX: &str = "ssh.nodegate.dev";

/// The shared cluster with the shipped roles applied and users bound to them.
fn cluster() -> &'static Cluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = Cluster::shared();
    READY.get_or_init(|| {
        cluster.apply_shipped(&[
            "packaging/rbac/keyctl-granter.yaml",
            "packaging/rbac/keyctl-viewer.yaml",
        ]);
        for (binding, role, user) in [
            ("alice-granter", "nodegate-keyctl-granter", "alice"),
            ("victor-viewer", "nodegate-keyctl-viewer", "victor"),
            ("carol-gpu", "nodegate-keyctl-granter-gpu-pool", "carol"),
        ] {
            cluster.bind_cluster_role(binding, role, user);
        }
    });
    cluster
}

/// A user's kubeconfig on the shared cluster.
fn kubeconfig(user: &str) -> PathBuf {
    cluster().user_kubeconfig(user, &["people"], Validity::Current)
}

/// One test's workspace: a HOME with its own ~/.ssh, and keys made by ssh-keygen.
struct Workstation {
    scratch: Scratch,
}

impl Workstation {
    fn new(label: &str) -> Self {
        let scratch = Scratch::new(label);
        std::fs::create_dir_all(scratch.join("home/.ssh")).expect("create ~/.ssh");
        Self { scratch }
    }

    /// Makes an ed25519 key pair and returns the public key file.
    fn keygen(&self, name: &str) -> PathBuf {
        let private = self.scratch.join(name);
        let status = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{name}@test"))
            .arg("-f")
            .arg(&private)
            .status()
            .expect("run ssh-keygen");
        assert!(status.success());
        private.with_extension("pub")
    }

    fn keyctl(&self, kubeconfig: &Path, args: &[&str]) -> Checked {
        self.keyctl_with_stdin(kubeconfig, args, None)
    }

    fn keyctl_with_stdin(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> Checked {
        let output = output_with_stdin(
            Command::new(workspace_bin("keyctl"))
                .arg("--kubeconfig")
                .arg(kubeconfig)
                .args(args)
                .env("HOME", self.scratch.join("home"))
                .env_remove("KUBECONFIG")
                .env_remove("NODEGATE_PREFIX"),
            stdin,
        );
        Checked::of(format!("keyctl {}", args.join(" ")), output)
    }
}

fn fingerprint(pub_file: &Path) -> String {
    let line = std::fs::read_to_string(pub_file).expect("read .pub");
    GrantKey::parse(line.trim())
        .expect("valid key")
        .fingerprint()
        .to_string()
}

fn grants_on(node: &str) -> NodeGrants {
    let annotations = cluster().node_annotations(node);
    NodeGrants::scan(
        &AnnotationPrefix::default(),
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
}

fn prefixed(node: &str) -> BTreeMap<String, String> {
    cluster()
        .node_annotations(node)
        .into_iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .collect()
}

/// The reasons of the events recorded about `node`.
fn event_reasons(node: &str) -> Vec<String> {
    let json = cluster().kubectl_ok(&[
        "get",
        "events",
        "--all-namespaces",
        "--field-selector",
        &format!("involvedObject.name={node},involvedObject.kind=Node"),
        "-o",
        "json",
    ]);
    let list: serde_json::Value = serde_json::from_str(&json).expect("events JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn grant_list_revoke_round_trip_with_audit_events() {
    let cluster = cluster();
    let node = "kc-round";
    cluster.create_node(node);
    let ws = Workstation::new("kc-round");
    let key = ws.keygen("alice");
    let alice = kubeconfig("alice");

    let out = ws.keyctl(
        &alice,
        &[
            "grant",
            node,
            "--expires",
            "2h",
            "--key",
            key.to_str().unwrap(),
            "--reason",
            "disk full",
        ],
    );
    let text = out.ok().to_owned();
    let fp = fingerprint(&key);
    assert!(
        text.contains(&format!("{node}: granted {fp} as root until ")),
        "{text}"
    );
    assert!(text.contains(&format!("ssh root@{node}")), "{text}");

    let grants = grants_on(node);
    assert!(grants.invalid.is_empty(), "{:?}", grants.invalid);
    let [grant]: [Grant; 1] = grants.valid.try_into().expect("exactly one grant");
    assert_eq!(grant.user.as_str(), "root");
    assert_eq!(
        grant.granted_by.as_str(),
        "alice",
        "granted-by is the caller's identity"
    );
    assert_eq!(grant.reason.as_ref().map(|r| r.as_str()), Some("disk full"));
    let left = grant.expiry.instant().expect("not permanent") - chrono::Utc::now();
    assert!(left > chrono::TimeDelta::minutes(118) && left <= chrono::TimeDelta::minutes(120));

    // A viewer sees it, as JSON for scripts.
    let out = ws.keyctl(&kubeconfig("victor"), &["list", node, "-o", "json"]);
    let listing: serde_json::Value = serde_json::from_str(out.ok()).expect("list JSON");
    assert_eq!(listing["grants"].as_array().map(Vec::len), Some(1));
    assert_eq!(listing["grants"][0]["fingerprint"], fp.as_str());
    assert_eq!(listing["grants"][0]["expired"], false);
    assert_eq!(listing["grants"][0]["granted_by"], "alice");
    assert_eq!(listing["invalid"].as_array().map(Vec::len), Some(0));

    let out = ws.keyctl(&kubeconfig("victor"), &["list", node, "-o", "yaml"]);
    assert!(out.ok().to_owned().contains(&format!("fingerprint: {fp}")));
    let table = ws.keyctl(&alice, &["list", node]).ok().to_owned();
    assert!(
        table.contains("FINGERPRINT") && table.contains(&fp) && table.contains("in 1h 59m"),
        "{table}"
    );

    let out = ws.keyctl(&alice, &["revoke", node, "--fingerprint", &fp]);
    assert!(
        out.ok()
            .to_owned()
            .contains(&format!("{node}: removed {fp} for root"))
    );
    assert!(prefixed(node).is_empty(), "the grant annotation is gone");

    let reasons = event_reasons(node);
    assert!(reasons.iter().any(|r| r == "SSHKeyGranted"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "SSHKeyRevoked"), "{reasons:?}");
}

#[test]
fn default_key_user_and_permanent_grants() {
    let cluster = cluster();
    let node = "kc-defaults";
    cluster.create_node(node);
    let ws = Workstation::new("kc-defaults");
    let admin = cluster.admin_kubeconfig();

    // No ~/.ssh/id_*.pub: a clear error, nothing written.
    let out = ws.keyctl(admin, &["grant", node, "--expires", "1h"]);
    assert!(!out.status.success());
    assert!(
        out.stderr.clone().contains("no public key found in"),
        "{}",
        out.stderr.clone()
    );

    let older = ws.keygen("home/.ssh/id_rsa_old");
    std::thread::sleep(Duration::from_millis(20));
    let newest = ws.keygen("home/.ssh/id_ed25519");
    std::fs::rename(&older, ws.scratch.join("home/.ssh/id_old.pub")).unwrap();
    let filetime = std::fs::File::options().write(true).open(&newest).unwrap();
    filetime.set_modified(std::time::SystemTime::now()).unwrap();

    ws.keyctl(
        admin,
        &["grant", node, "--expires", "30m", "--user", "core"],
    )
    .ok();
    let grants = grants_on(node);
    assert_eq!(grants.valid.len(), 1);
    assert_eq!(grants.valid[0].user.as_str(), "core");
    assert_eq!(
        grants.valid[0].key.fingerprint().to_string(),
        fingerprint(&newest)
    );

    // A permanent grant only when asked for explicitly; keys may come from standard input.
    let piped = std::fs::read(ws.keygen("piped")).unwrap();
    let out = ws.keyctl_with_stdin(admin, &["grant", node, "--key", "-"], Some(&piped));
    assert!(!out.status.success());
    assert!(
        out.stderr.clone().contains("--expires"),
        "{}",
        out.stderr.clone()
    );
    ws.keyctl_with_stdin(
        admin,
        &["grant", node, "--key", "-", "--permanent"],
        Some(&piped),
    )
    .ok();
    let permanent = grants_on(node)
        .valid
        .into_iter()
        .find(|g| g.user.as_str() == "root")
        .expect("the piped key, as root");
    assert_eq!(permanent.expiry, nodegate_core::Expiry::Permanent);

    // Revoking by login user takes all of that user's grants, and only them.
    ws.keyctl(admin, &["revoke", node, "--user", "core"]).ok();
    let left = grants_on(node).valid;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].user.as_str(), "root");
}

#[test]
fn refused_users_are_told_which_role_to_ask_for_and_nothing_changes() {
    let cluster = cluster();
    let node = "kc-refused";
    cluster.create_node(node);
    let ws = Workstation::new("kc-refused");
    let key = ws.keygen("mallory");
    let before = cluster.node_annotations(node);

    let nobody = kubeconfig("mallory");
    let out = ws.keyctl(
        &nobody,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(
        err.contains("not allowed to read this node") || err.contains("mallory may not"),
        "{err}"
    );

    // The viewer may read but not write: the access review refuses before any change.
    let viewer = kubeconfig("victor");
    let out = ws.keyctl(
        &viewer,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(err.contains("victor may not patch nodes"), "{err}");
    assert!(
        err.contains("--clusterrole=nodegate-keyctl-granter --user=victor"),
        "{err}"
    );
    let out = ws.keyctl(&viewer, &["revoke", node, "--all"]);
    assert!(
        out.stderr.clone().contains("victor may not patch nodes"),
        "{}",
        out.stderr.clone()
    );

    let out = ws.keyctl(&nobody, &["list"]);
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(
        err.contains("mallory may not list nodes") && err.contains("nodegate-keyctl-viewer"),
        "{err}"
    );

    assert_eq!(cluster.node_annotations(node), before, "nothing changed");
}

#[test]
fn a_granter_limited_to_named_nodes_is_refused_elsewhere_before_anything_changes() {
    let cluster = cluster();
    // The example role shipped in packaging/rbac/keyctl-granter.yaml names these nodes.
    cluster.create_nodes(&["gpu-node-1".into(), "gpu-node-3".into()], &[]);
    let ws = Workstation::new("kc-limited");
    let carol = kubeconfig("carol");
    let first = ws.keygen("first");
    ws.keyctl(
        &carol,
        &[
            "grant",
            "gpu-node-1",
            "--expires",
            "1h",
            "--key",
            first.to_str().unwrap(),
        ],
    )
    .ok();

    let second = ws.keygen("second");
    let out = ws.keyctl(
        &carol,
        &[
            "grant",
            "gpu-node-1",
            "gpu-node-3",
            "--expires",
            "1h",
            "--key",
            second.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(
        err.contains("carol may not patch nodes gpu-node-3"),
        "{err}"
    );
    assert!(
        !err.contains("gpu-node-1."),
        "the allowed node is not named as refused: {err}"
    );
    assert_eq!(
        grants_on("gpu-node-1").valid.len(),
        1,
        "no partial grant before the refusal"
    );
    assert!(grants_on("gpu-node-3").valid.is_empty());
}

#[test]
fn fifty_concurrent_grants_of_different_keys_to_one_node_all_survive() {
    let cluster = cluster();
    let node = "kc-concurrent";
    cluster.create_node(node);
    let ws = Workstation::new("kc-concurrent");
    let alice = kubeconfig("alice");
    let keys: Vec<PathBuf> = (0..50).map(|i| ws.keygen(&format!("k{i}"))).collect();

    let children: Vec<_> = keys
        .iter()
        .map(|key| {
            Command::new(workspace_bin("keyctl"))
                .arg("--kubeconfig")
                .arg(&alice)
                .args(["grant", node, "--expires", "1h", "--key"])
                .arg(key)
                .env("HOME", ws.scratch.join("home"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn keyctl")
        })
        .collect();
    for child in children {
        Checked::of(
            "keyctl grant",
            child.wait_with_output().expect("wait keyctl"),
        )
        .ok();
    }
    let grants = grants_on(node);
    assert_eq!(grants.valid.len(), 50, "every concurrent grant survived");
    let mut expected: Vec<String> = keys.iter().map(|k| fingerprint(k)).collect();
    let mut found: Vec<String> = grants
        .valid
        .iter()
        .map(|g| g.key.fingerprint().to_string())
        .collect();
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
}

#[test]
fn a_selector_grant_and_revoke_across_hundreds_of_nodes() {
    let cluster = cluster();
    let names: Vec<String> = (0..300).map(|i| format!("kc-fleet-{i:03}")).collect();
    cluster.create_nodes(&names, &[("pool", "kc-fleet")]);
    cluster.create_node("kc-fleet-outsider");
    let ws = Workstation::new("kc-fleet");
    let key = ws.keygen("fleet");
    let alice = kubeconfig("alice");

    let out = ws.keyctl(
        &alice,
        &[
            "grant",
            "-l",
            "pool=kc-fleet",
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let text = out.ok().to_owned();
    assert!(text.contains("and likewise on the other nodes"), "{text}");

    let listing = ws
        .keyctl(&alice, &["list", "-l", "pool=kc-fleet", "-o", "json"])
        .ok()
        .to_owned();
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let nodes: std::collections::BTreeSet<&str> = listing["grants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 300, "one grant on each selected node");
    assert!(
        prefixed("kc-fleet-outsider").is_empty(),
        "unselected nodes are untouched"
    );

    ws.keyctl(
        &alice,
        &[
            "revoke",
            "-l",
            "pool=kc-fleet",
            "--key",
            key.to_str().unwrap(),
        ],
    )
    .ok();
    for name in [&names[0], &names[150], &names[299]] {
        assert!(prefixed(name).is_empty(), "{name} still has a grant");
    }
    let out = ws.keyctl(
        &alice,
        &[
            "grant",
            "-l",
            "pool=nothing-here",
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert!(
        out.stderr
            .clone()
            .contains("no node matches the selector \"pool=nothing-here\""),
        "{}",
        out.stderr.clone()
    );
}

#[test]
fn hostile_annotation_values_are_reported_by_list_and_never_trusted() {
    let cluster = cluster();
    let node = "kc-hostile";
    cluster.create_node(node);
    let ws = Workstation::new("kc-hostile");
    let key = ws.keygen("good");
    let admin = cluster.admin_kubeconfig();
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    )
    .ok();
    let good = grants_on(node).valid.remove(0);
    let good_name = good.annotation_name();
    let good_value = good.annotation_value();
    let key_text = good.key.to_openssh_without_comment();

    let hostile: Vec<(String, String)> = vec![
        (
            "g.root.0000000000000001".into(),
            format!("command=\"/bin/sh\",{good_value}"),
        ),
        (
            "g.root.0000000000000002".into(),
            format!(
                "login=\"root\",expiry-time=\"20991231000000Z\",granted-by=\"x\",granted-at=\"20260101000000Z\" {key_text}\nssh-ed25519 AAAA injected"
            ),
        ),
        (
            "g.root.0000000000000003".into(),
            "login=\"root\" ssh-ed25519 !!!not-base64!!!".into(),
        ),
        ("g.root.0000000000000004".into(), "x".repeat(100_000)),
        (
            "g.root.0000000000000005".into(),
            "{\"login\": \"root\", \"key\": 5}".into(),
        ),
        (
            "g.root.0000000000000006".into(),
            format!("{}\u{1b}[2J", good_value),
        ),
        (
            "g.root.0000000000000007".into(),
            good_value.replace("\"alice", "\u{202e}\"alice"),
        ),
        (format!("{}x", good_name), good_value.clone()),
        ("g.evil\u{1b}name".into(), good_value.clone()),
        (
            "g.daemon.0000000000000008".into(),
            good_value.replace("login=\"root\"", "login=\"daemon\""),
        ),
        ("g.root.0000000000000009".into(), String::new()),
    ];
    for (name, value) in &hostile {
        // Some names are not valid annotation keys at all; the API server refuses those itself.
        let patch =
            serde_json::json!({"metadata": {"annotations": {format!("{PREFIX}/{name}"): value}}});
        let _ = cluster.kubectl(&[
            "patch",
            "node",
            node,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }
    let planted = prefixed(node).len() - 1;
    assert!(planted >= 8, "most hostile values were stored ({planted})");

    let out = ws.keyctl(admin, &["list", node, "-o", "json"]);
    let listing: serde_json::Value =
        serde_json::from_str(out.ok()).expect("JSON despite hostile input");
    let grants = listing["grants"].as_array().unwrap();
    assert_eq!(
        grants.len(),
        1,
        "only the real grant is a grant: {grants:?}"
    );
    assert_eq!(grants[0]["annotation"], format!("{PREFIX}/{good_name}"));
    assert_eq!(listing["invalid"].as_array().unwrap().len(), planted);

    let out = ws.keyctl(admin, &["list", node]);
    let (table, warnings) = (out.ok().to_owned(), out.stderr.clone());
    assert_eq!(
        warnings.matches("is not a valid grant").count(),
        planted,
        "{warnings}"
    );
    for text in [&table, &warnings] {
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202e}'),
            "terminal control reached the output: {text:?}"
        );
    }

    let out = ws.keyctl(admin, &["prune", node, "--invalid"]);
    out.ok();
    let left = prefixed(node);
    assert_eq!(
        left.keys().collect::<Vec<_>>(),
        vec![&format!("{PREFIX}/{good_name}")]
    );
}

#[test]
fn prune_removes_expired_grants_only_and_says_so() {
    let cluster = cluster();
    let node = "kc-prune";
    cluster.create_node(node);
    let ws = Workstation::new("kc-prune");
    let admin = cluster.admin_kubeconfig();
    let short = ws.keygen("short");
    let long = ws.keygen("long");
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "2s",
            "--key",
            short.to_str().unwrap(),
        ],
    )
    .ok();
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "2h",
            "--key",
            long.to_str().unwrap(),
        ],
    )
    .ok();
    std::thread::sleep(Duration::from_secs(3));

    let table = ws.keyctl(admin, &["list", node]);
    assert!(
        table.ok().to_owned().contains("expired"),
        "{}",
        table.stdout.clone()
    );
    let dry = ws.keyctl(admin, &["prune", node, "--dry-run"]);
    assert!(
        dry.ok().to_owned().contains("would remove"),
        "{}",
        dry.stdout.clone()
    );
    assert_eq!(grants_on(node).valid.len(), 2, "a dry run changes nothing");

    let out = ws.keyctl(admin, &["prune", node]);
    assert!(
        out.ok()
            .to_owned()
            .contains(&format!("removed {}", fingerprint(&short))),
        "{}",
        out.stdout.clone()
    );
    let left = grants_on(node).valid;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key.fingerprint().to_string(), fingerprint(&long));
    assert!(event_reasons(node).iter().any(|r| r == "SSHKeyExpired"));

    let out = ws.keyctl(admin, &["prune", node]);
    assert!(out.ok().to_owned().contains("Nothing to prune"));
}

#[test]
fn dry_runs_check_with_the_server_and_change_nothing() {
    let cluster = cluster();
    let node = "kc-dry";
    cluster.create_node(node);
    let ws = Workstation::new("kc-dry");
    let key = ws.keygen("dry");
    let out = ws.keyctl(
        &kubeconfig("alice"),
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(out.ok().to_owned().contains("would grant"));
    assert!(prefixed(node).is_empty());
    assert!(!event_reasons(node).iter().any(|r| r == "SSHKeyGranted"));
}

#[test]
fn a_full_node_is_a_clear_error() {
    let cluster = cluster();
    let node = "kc-full";
    cluster.create_node(node);
    // Fill the annotation budget with somebody else's data, just under the limit.
    let ws = Workstation::new("kc-full");
    let filler = "f".repeat(256 * 1024 - "example.com/filler".len() - 200);
    let patch = serde_json::json!({"metadata": {"annotations": {"example.com/filler": filler}}});
    let patch_file = ws.scratch.write("filler.json", patch.to_string());
    cluster.kubectl_ok(&[
        "patch",
        "node",
        node,
        "--type=merge",
        "--patch-file",
        patch_file.to_str().unwrap(),
    ]);
    let key = ws.keygen("full");
    let out = ws.keyctl(
        cluster.admin_kubeconfig(),
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(
        err.contains("over Kubernetes' limit of 262144") && err.contains("keyctl prune kc-full"),
        "{err}"
    );
    assert!(prefixed(node).is_empty());
}

#[test]
fn bad_input_is_explained_before_anything_is_sent() {
    let cluster = cluster();
    let ws = Workstation::new("kc-bad");
    let admin = cluster.admin_kubeconfig();
    let key = ws.keygen("k");
    let key = key.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["grant", "n", "--expires", "soon", "--key", key],
            "cannot read \"soon\" as an expiry",
        ),
        (
            &[
                "grant",
                "n",
                "--expires",
                "2020-01-01T00:00:00Z",
                "--key",
                key,
            ],
            "is not in the future",
        ),
        (
            &[
                "grant",
                "n",
                "--expires",
                "1h",
                "--key",
                key,
                "--user",
                "bad user",
            ],
            "--user",
        ),
        (
            &["grant", "n", "--expires", "1h", "--key", "/nonexistent.pub"],
            "cannot read the key file /nonexistent.pub",
        ),
        (
            &["grant", "--expires", "1h", "--key", key],
            "name the nodes, or select them with -l SELECTOR",
        ),
        (
            &["revoke", "n", "--fingerprint", "SHA256:nope"],
            "is not a SHA-256 key fingerprint",
        ),
        (
            &["grant", "n", "--expires", "1h", "--permanent"],
            "cannot be used with",
        ),
        (&["list", "--prefix", "Not_A_Domain"], "Not_A_Domain"),
    ];
    for (args, expected) in cases {
        let out = ws.keyctl(admin, args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            out.stderr.clone().contains(expected),
            "{args:?}: {}",
            out.stderr.clone()
        );
    }
    let private = ws.scratch.join("k");
    let out = ws.keyctl(
        admin,
        &[
            "grant",
            "n",
            "--expires",
            "1h",
            "--key",
            private.to_str().unwrap(),
        ],
    );
    assert!(
        out.stderr.clone().contains("is a private key"),
        "{}",
        out.stderr.clone()
    );
}

#[test]
fn named_nodes_that_do_not_exist_fail_alone() {
    let cluster = cluster();
    cluster.create_node("kc-exists");
    let ws = Workstation::new("kc-missing");
    let key = ws.keygen("k");
    let out = ws.keyctl(
        cluster.admin_kubeconfig(),
        &[
            "grant",
            "kc-exists",
            "kc-does-not-exist",
            "--expires",
            "1h",
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "partial failure is a failure");
    assert!(out.stdout.clone().contains("kc-exists: granted"));
    let err = out.stderr.clone();
    assert!(
        err.contains("node kc-does-not-exist: no such node") && err.contains("1 of 2 nodes failed"),
        "{err}"
    );
    assert_eq!(grants_on("kc-exists").valid.len(), 1);
}

#[test]
fn the_janitor_removes_grants_as_they_expire() {
    let cluster = cluster();
    let node = "kc-janitor";
    // The cluster is shared by every test in this binary: the janitor must only see its own
    // node, or it would prune the expired grants other tests are still looking at.
    cluster.create_nodes(&[node.to_owned()], &[("nodegate-test/janitor", "yes")]);
    let ws = Workstation::new("kc-janitor");
    let admin = cluster.admin_kubeconfig();
    let key = ws.keygen("j");
    let keep = ws.keygen("keep");
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            keep.to_str().unwrap(),
        ],
    )
    .ok();

    let mut janitor = ws.scratch.spawn(
        "janitor",
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(admin)
            .args(["janitor", "--interval", "1s"])
            .args(["-l", "nodegate-test/janitor=yes"]),
    );
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "3s",
            "--key",
            key.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(grants_on(node).valid.len(), 2);
    let removed = wait_until(Duration::from_secs(20), || grants_on(node).valid.len() == 1);
    assert!(removed, "janitor log:\n{}", janitor.log_tail(30));
    assert_eq!(
        grants_on(node).valid[0].key.fingerprint().to_string(),
        fingerprint(&keep)
    );
    assert!(janitor.is_running());
    assert!(
        janitor.log().contains("removed expired grant"),
        "{}",
        janitor.log()
    );
    ws.scratch.stop(&mut janitor, Duration::from_secs(5));
}

/// A grant value written straight onto a Node, bypassing keyctl: `reason` and `granted_by` are
/// put in as given (only `"` and `\` escaped), so that any text can be planted.
fn raw_grant_value(key_line: &str, expiry: &str, granted_by: &str, reason: &str) -> String {
    let quote = |text: &str| text.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "login=\"root\",expiry-time=\"{expiry}\",granted-by=\"{}\",granted-at=\"20260101000000Z\",reason=\"{}\" {key_line}",
        quote(granted_by),
        quote(reason)
    )
}

/// The annotation key a grant of `pub_file` to root has.
fn root_grant_key(pub_file: &Path) -> String {
    let line = std::fs::read_to_string(pub_file).expect("read .pub");
    let key = GrantKey::parse(line.trim()).expect("valid key");
    let user = nodegate_core::LoginUser::new("root").expect("valid login user");
    format!("{PREFIX}/{}", Grant::annotation_name_for(&user, &key))
}

#[test]
fn grants_holding_html_special_and_separator_characters_can_be_revoked_and_pruned() {
    let cluster = cluster();
    let node = "kc-escaped";
    cluster.create_node(node);
    let ws = Workstation::new("kc-escaped");
    // A granter whose name the API server's JSON encoding escapes (`<`, `&`, `>`).
    let name = "ops<r&d>";
    cluster.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "kc-escaped-granter",
        "--clusterrole=nodegate-keyctl-granter",
        &format!("--user={name}"),
    ]);
    let granter = kubeconfig(name);
    let key = ws.keygen("escaped");
    // A key comment with the same characters.
    let line = std::fs::read_to_string(&key).unwrap();
    let commented = ws.scratch.write(
        "commented.pub",
        format!("{} <R&D laptop>\n", line.rsplit_once(' ').unwrap().0),
    );
    ws.keyctl(
        &granter,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            commented.to_str().unwrap(),
            "--reason",
            "R&D disk <full> & more",
        ],
    )
    .ok();
    let stored = prefixed(node);
    let value = stored.values().next().expect("the grant");
    assert!(
        value.contains("granted-by=\"ops<r&d>\"") && value.contains("R&D disk <full>"),
        "{value}"
    );

    let fp = fingerprint(&key);
    let out = ws.keyctl(&granter, &["revoke", node, "--fingerprint", &fp]);
    assert!(
        out.ok()
            .to_owned()
            .contains(&format!("{node}: removed {fp} for root"))
    );
    assert!(
        prefixed(node).is_empty(),
        "the grant is gone: {:?}",
        prefixed(node)
    );

    // What only another writer could put there: an expired grant and an invalid annotation
    // with U+2028, U+2029, `&`, `<` and `>`, both removed by prune.
    let other = ws.keygen("other");
    let other_line = std::fs::read_to_string(&other).unwrap();
    let expired_key = root_grant_key(&other);
    cluster.set_node_annotation(
        node,
        &expired_key,
        Some(&raw_grant_value(
            other_line.trim(),
            "20260102000000Z",
            "a&b",
            "<R&D>",
        )),
    );
    let invalid_key = format!("{PREFIX}/g.root.0000000000000abc");
    cluster.set_node_annotation(
        node,
        &invalid_key,
        Some("login=\"root\" R&D\u{2028}<x>\u{2029}"),
    );
    let out = ws.keyctl(cluster.admin_kubeconfig(), &["prune", node, "--invalid"]);
    let text = out.ok().to_owned();
    assert!(
        text.contains(&format!("removed {}", fingerprint(&other))),
        "{text}"
    );
    assert!(
        text.contains("removed invalid annotation g.root.0000000000000abc"),
        "{text}"
    );
    assert!(prefixed(node).is_empty(), "{:?}", prefixed(node));
}

#[test]
fn odd_expiries_are_refused_with_one_clear_message() {
    let cluster = cluster();
    let node = "kc-expiries";
    cluster.create_node(node);
    let ws = Workstation::new("kc-expiries");
    let admin = cluster.admin_kubeconfig();
    let key = ws.keygen("k");
    let key = key.to_str().unwrap();
    for far in [
        "1000y",
        "8000y",
        "366d",
        "100000000000y",
        "2999-01-01T00:00:00Z",
    ] {
        let out = ws.keyctl(admin, &["grant", node, "--expires", far, "--key", key]);
        assert_eq!(out.status.code(), Some(1), "--expires {far} was accepted");
        let err = out.stderr.clone();
        assert!(
            err.contains("--expires may be at most 365d; for a grant without end use --permanent"),
            "--expires {far}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one message: {err}");
    }
    assert!(prefixed(node).is_empty(), "nothing was written");
    ws.keyctl(admin, &["grant", node, "--expires", "365d", "--key", key])
        .ok();
    assert_eq!(grants_on(node).valid.len(), 1);

    // A leap second in an annotation's time: not a valid grant, reported as such.
    let other = ws.keygen("leap");
    let other_line = std::fs::read_to_string(&other).unwrap();
    let leap_key = root_grant_key(&other);
    for (expiry, granted_at) in [
        ("20991231235960Z", "20260101000000Z"),
        ("20991231235959Z", "20261231235960Z"),
    ] {
        let value = raw_grant_value(other_line.trim(), expiry, "x", "leap")
            .replace("20260101000000Z", granted_at);
        cluster.set_node_annotation(node, &leap_key, Some(&value));
        let listing = ws
            .keyctl(admin, &["list", node, "-o", "json"])
            .ok()
            .to_owned();
        let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
        assert_eq!(
            listing["grants"].as_array().map(Vec::len),
            Some(1),
            "the leap-second grant is not valid: {listing}"
        );
        let invalid = listing["invalid"].as_array().unwrap();
        assert_eq!(invalid.len(), 1, "{listing}");
        assert!(
            invalid[0]["error"]
                .as_str()
                .unwrap()
                .contains("YYYYMMDDHHMMSSZ"),
            "{listing}"
        );
    }
}

#[test]
fn invisible_text_is_refused_at_the_flag_and_never_printed_raw() {
    let cluster = cluster();
    let node = "kc-invisible";
    cluster.create_node(node);
    let ws = Workstation::new("kc-invisible");
    let admin = cluster.admin_kubeconfig();
    let key = ws.keygen("k");
    let invisible = [
        ('\u{61c}', "U+061C"),
        ('\u{2028}', "U+2028"),
        ('\u{2029}', "U+2029"),
        ('\u{e0041}', "U+E0041"),
    ];
    for (c, code) in invisible {
        let reason = format!("disk{c}full");
        let out = ws.keyctl(
            admin,
            &[
                "grant",
                node,
                "--expires",
                "1h",
                "--key",
                key.to_str().unwrap(),
                "--reason",
                &reason,
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(1),
            "--reason with {code} was accepted"
        );
        let err = out.stderr.clone();
        assert!(err.contains("--reason") && err.contains(code), "{err}");
        assert!(!err.contains(c), "the character itself is printed: {err:?}");
    }
    assert!(prefixed(node).is_empty(), "nothing was written");

    // Written by someone else: not a grant, and shown escaped wherever keyctl prints it.
    let key_line = std::fs::read_to_string(&key).unwrap();
    for (i, (c, _)) in invisible.iter().enumerate() {
        let other = ws.keygen(&format!("other{i}"));
        let other_line = std::fs::read_to_string(&other).unwrap();
        cluster.set_node_annotation(
            node,
            &root_grant_key(&other),
            Some(&raw_grant_value(
                other_line.trim(),
                "20991231000000Z",
                &format!("mallory{c}"),
                &format!("disk{c}full"),
            )),
        );
    }
    cluster.set_node_annotation(
        node,
        &root_grant_key(&key),
        Some(&raw_grant_value(
            key_line.trim(),
            "20991231000000Z",
            "x",
            "ok",
        )),
    );
    let out = ws.keyctl(admin, &["list", node, "-o", "json"]);
    let listing: serde_json::Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(
        listing["grants"].as_array().map(Vec::len),
        Some(1),
        "{listing}"
    );
    assert_eq!(
        listing["invalid"].as_array().map(Vec::len),
        Some(4),
        "{listing}"
    );
    let table = ws.keyctl(admin, &["list", node]);
    let revoke = ws.keyctl(admin, &["revoke", node, "--all", "--dry-run"]);
    for out in [&out, &table, &revoke] {
        for text in [out.stdout.clone(), out.stderr.clone()] {
            for (c, code) in invisible {
                assert!(!text.contains(c), "{code} printed raw: {text:?}");
            }
        }
    }
}

#[test]
fn certificates_and_unreadable_files_are_explained_once() {
    let ws = Workstation::new("kc-messages");
    let admin = cluster().admin_kubeconfig();
    let key = ws.keygen("user");
    let ca = ws.keygen("ca");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(ca.with_extension(""))
        .args(["-I", "test", "-n", "root"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen -s");
    assert!(status.success());
    let cert = ws.scratch.join("user-cert.pub");
    assert!(cert.is_file());
    let out = ws.keyctl(
        admin,
        &[
            "grant",
            "n",
            "--expires",
            "1h",
            "--key",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = out.stderr.clone();
    assert!(
        err.contains("is an OpenSSH certificate (ssh-ed25519-cert-v01@openssh.com)")
            && err.contains("give the plain public key"),
        "{err}"
    );
    assert!(!err.contains("trailing data"), "{err}");

    let garbage = ws
        .scratch
        .write("garbage.pub", "ssh-ed25519 AAAA!!!notbase64\n");
    // Nothing listens there: kube logs each failed request itself, keyctl reports it once.
    let unreachable = ws.scratch.write(
        "unreachable.kubeconfig",
        std::fs::read_to_string(admin)
            .expect("read admin kubeconfig")
            .replace(
                cluster().server(),
                &format!(
                    "https://127.0.0.1:{}",
                    nodegate_testkit::process::free_port()
                ),
            ),
    );
    let cases: Vec<(PathBuf, Vec<String>, &str)> = vec![
        (
            PathBuf::from("/nonexistent/kubeconfig"),
            vec!["list".into()],
            "No such file or directory",
        ),
        (
            admin.to_owned(),
            ["grant", "n", "--expires", "1h", "--key", "/nonexistent.pub"]
                .map(String::from)
                .to_vec(),
            "No such file or directory",
        ),
        (
            admin.to_owned(),
            vec![
                "grant".into(),
                "n".into(),
                "--expires".into(),
                "1h".into(),
                "--key".into(),
                garbage.to_str().unwrap().into(),
            ],
            "not an OpenSSH public key",
        ),
        (unreachable, vec!["list".into()], "Connection refused"),
    ];
    for (kubeconfig, args, cause) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ws.keyctl(&kubeconfig, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = out.stderr.clone();
        assert_eq!(
            err.matches(cause).count(),
            1,
            "{args:?}: the cause once: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{args:?}: one message: {err}");
    }
}

/// A Node labelled so is guarded by the test admission policy: it must keep every annotation
/// that its annotation [`PROTECTS`] lists (comma-separated keys).
const PROTECTED_LABEL: (&str, &str) = ("nodegate-test/protected", "yes");
const PROTECTS: &str = "nodegate-test.example/protects";

/// A validating admission webhook (Python's http.server over TLS, certificate from the test
/// CA) that refuses to let protected annotations go from labelled Nodes: what a policy engine
/// (Gatekeeper, Kyverno) does in real clusters, and one of the ways a server refuses one
/// removal and not the others. It judges the new object only (this API server's webhook
/// requests for patches carry the patched object as `oldObject` too). Started once; returns
/// when the API server enforces it.
fn protected_annotations_policy() {
    static READY: OnceLock<(Scratch, nodegate_testkit::process::Daemon)> = OnceLock::new();
    let cluster = cluster();
    READY.get_or_init(|| {
        let scratch = Scratch::new("kc-webhook");
        let serving = cluster
            .pki
            .server("protect-webhook", "protect-webhook", &[]);
        let script = scratch.write(
            "webhook.py",
            r#"
import http.server, json, ssl, sys
port, cert, key, protects = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        annotations = ((request.get("object") or {}).get("metadata") or {}).get("annotations") or {}
        protected = [k for k in annotations.get(protects, "").split(",") if k]
        missing = [k for k in protected if k not in annotations]
        response = {"uid": request["uid"], "allowed": not missing}
        if missing:
            response["status"] = {"code": 403, "message": "%s is protected by the test policy" % missing[0]}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"#,
        );
        let port = nodegate_testkit::process::free_port();
        let mut daemon = scratch.spawn(
            "webhook",
            Command::new("python3")
                .arg(&script)
                .arg(port.to_string())
                .arg(&serving.cert)
                .arg(&serving.key)
                .arg(PROTECTS),
        );
        assert!(
            wait_until(Duration::from_secs(20), || daemon.log().contains("ready")),
            "webhook did not start: {}",
            daemon.log()
        );
        assert!(daemon.is_running());
        let ca = Command::new("base64")
            .arg("-w0")
            .arg(cluster.pki.ca_cert())
            .output()
            .expect("run base64");
        let config = serde_json::json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": "nodegate-test-protected-annotations"},
            "webhooks": [{
                "name": "protect.nodegate.test",
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/"),
                    "caBundle": String::from_utf8(ca.stdout).expect("base64 is ASCII").trim(),
                },
                "rules": [{"operations": ["UPDATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["nodes"]}],
                "objectSelector": {"matchLabels": {PROTECTED_LABEL.0: PROTECTED_LABEL.1}},
                "failurePolicy": "Fail",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        });
        cluster.apply(&config.to_string());
        // The API server picks the configuration up asynchronously: wait until a protected
        // probe annotation cannot be removed any more.
        let probe = "kc-protected-probe";
        cluster.create_nodes(&[probe.to_owned()], &[PROTECTED_LABEL]);
        let mut answer = String::new();
        cluster.set_node_annotation(probe, "example.com/probe", Some("x"));
        cluster.set_node_annotation(probe, PROTECTS, Some("example.com/probe"));
        let enforced = wait_until(Duration::from_secs(30), || {
            cluster.set_node_annotation(probe, "example.com/probe", Some("x"));
            let out = cluster.kubectl(&["annotate", "node", probe, "example.com/probe-"]);
            answer = String::from_utf8_lossy(&out.stderr).into_owned();
            !out.status.success() && answer.contains("protected by the test policy")
        });
        assert!(
            enforced,
            "the webhook is not enforced ({answer}); its log: {}",
            daemon.log()
        );
        (scratch, daemon)
    });
}

/// Plants, on `node`: two expired grants (one with `&` and `<>` in its reason), an expired grant
/// and an invalid annotation the policy protects, and a grant still valid. Returns the
/// fingerprints of the removable expired grants, of the protected one, and the protected
/// invalid annotation's key.
fn plant_cleanup_case(ws: &Workstation, node: &str) -> (Vec<String>, String, String) {
    let cluster = cluster();
    let plant = |name: &str, expiry: &str, reason: &str| {
        let key = ws.keygen(name);
        let line = std::fs::read_to_string(&key).expect("read .pub");
        let annotation = root_grant_key(&key);
        cluster.set_node_annotation(
            node,
            &annotation,
            Some(&raw_grant_value(line.trim(), expiry, "test", reason)),
        );
        (fingerprint(&key), annotation)
    };
    let removable = vec![
        plant("expired-a", "20260101010000Z", "disk full").0,
        plant("expired-b", "20260101020000Z", "R&D <disk>").0,
    ];
    let (protected, protected_key) = plant("expired-protected", "20260101030000Z", "kept");
    plant("valid", "20991231000000Z", "still needed");
    let invalid = format!("{PREFIX}/g.root.protected");
    cluster.set_node_annotation(node, &invalid, Some("not a grant"));
    cluster.set_node_annotation(node, PROTECTS, Some(&format!("{protected_key},{invalid}")));
    (removable, protected, invalid)
}

#[test]
fn one_refused_removal_never_blocks_the_others() {
    protected_annotations_policy();
    let cluster = cluster();
    let node = "kc-refused-one";
    cluster.create_nodes(&[node.to_owned()], &[PROTECTED_LABEL]);
    let ws = Workstation::new("kc-refused-one");
    let (removable, protected, invalid) = plant_cleanup_case(&ws, node);

    let out = ws.keyctl(cluster.admin_kubeconfig(), &["prune", node, "--invalid"]);
    assert_eq!(out.status.code(), Some(1), "a refused removal is a failure");
    let (text, err) = (out.stdout.clone(), out.stderr.clone());
    for fp in &removable {
        assert!(
            text.contains(&format!("{node}: removed {fp} for root")),
            "{text}\n{err}"
        );
    }
    let refused_lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("could not remove"))
        .collect();
    assert_eq!(refused_lines.len(), 2, "each refusal once: {err}");
    assert!(
        err.contains(&format!(
            "error: node {node}: could not remove the invalid annotation {invalid}: admission webhook \"protect.nodegate.test\" denied the request: {invalid} is protected by the test policy"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "could not remove the grant of {protected} for root"
        )),
        "{err}"
    );
    assert!(err.contains("1 of 1 nodes failed"), "{err}");

    let left = grants_on(node);
    let mut fingerprints: Vec<String> = left
        .valid
        .iter()
        .map(|g| g.key.fingerprint().to_string())
        .collect();
    fingerprints.sort();
    assert_eq!(
        fingerprints.len(),
        2,
        "the protected and the valid grant stay"
    );
    assert!(fingerprints.contains(&protected));
    assert!(prefixed(node).contains_key(&invalid));
    assert!(
        event_reasons(node)
            .iter()
            .filter(|r| *r == "SSHKeyExpired")
            .count()
            >= 2
    );
}

#[test]
fn the_janitor_reports_a_refused_removal_once_and_goes_on() {
    protected_annotations_policy();
    let cluster = cluster();
    let node = "kc-janitor-refused";
    let selector = ("nodegate-test/janitor-refused", "yes");
    cluster.create_nodes(&[node.to_owned()], &[PROTECTED_LABEL, selector]);
    let ws = Workstation::new("kc-janitor-refused");
    let (_, protected, invalid) = plant_cleanup_case(&ws, node);

    let mut janitor = ws.scratch.spawn(
        "janitor",
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(cluster.admin_kubeconfig())
            .args(["janitor", "--invalid", "--interval", "1s"])
            .args(["-l", &format!("{}={}", selector.0, selector.1)]),
    );
    let cleaned = wait_until(Duration::from_secs(30), || grants_on(node).valid.len() == 2);
    assert!(
        cleaned,
        "the other expired grants stay; janitor log:\n{}",
        janitor.log_tail(30)
    );
    // Several periodic passes, and a change of the node (a new annotation) in between.
    std::thread::sleep(Duration::from_secs(3));
    cluster.set_node_annotation(node, "example.com/unrelated", Some("x"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(janitor.is_running());
    let log = janitor.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("could not remove"))
        .collect();
    assert_eq!(refusals.len(), 2, "each refusal logged once:\n{log}");
    assert!(
        refusals
            .iter()
            .any(|l| l.contains(&invalid) && l.contains("denied the request")),
        "{log}"
    );
    assert!(refusals.iter().any(|l| l.contains(&protected)), "{log}");
    assert_eq!(log.matches("removed expired grant").count(), 2, "{log}");
    assert!(prefixed(node).contains_key(&invalid));
    ws.scratch.stop(&mut janitor, Duration::from_secs(5));
}

#[test]
fn concurrent_revokes_on_one_node_all_succeed() {
    // Removals test the Node's resourceVersion, so every write to the node makes the others
    // read again: they must still all get through.
    let cluster = cluster();
    let node = "kc-concurrent-revoke";
    cluster.create_node(node);
    let ws = Workstation::new("kc-concurrent-revoke");
    let admin = cluster.admin_kubeconfig();
    let keys: Vec<PathBuf> = (0..12).map(|i| ws.keygen(&format!("r{i}"))).collect();
    let all: String = keys
        .iter()
        .map(|k| std::fs::read_to_string(k).expect("read .pub"))
        .collect();
    let all = ws.scratch.write("all.pub", all);
    ws.keyctl(
        admin,
        &[
            "grant",
            node,
            "--expires",
            "1h",
            "--key",
            all.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(grants_on(node).valid.len(), keys.len());

    let children: Vec<_> = keys
        .iter()
        .map(|key| {
            Command::new(workspace_bin("keyctl"))
                .arg("--kubeconfig")
                .arg(admin)
                .args(["revoke", node, "--key"])
                .arg(key)
                .env("HOME", ws.scratch.join("home"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn keyctl")
        })
        .collect();
    for (child, key) in children.into_iter().zip(&keys) {
        let out = Checked::of(
            "keyctl revoke",
            child.wait_with_output().expect("wait keyctl"),
        );
        let text = out.ok().to_owned();
        assert!(
            text.contains(&format!("removed {}", fingerprint(key))),
            "{text}"
        );
    }
    assert!(prefixed(node).is_empty(), "{:?}", prefixed(node));
}

#[test]
fn patching_nodes_is_not_enough_to_grant_and_pruning_is_only_pruning() {
    let cluster = cluster();
    let node = "kc-perm";
    cluster.create_node(node);
    // Node write access alone (what many controllers hold), and the janitor's rights.
    cluster.apply(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kc-patch-only}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kc-pruner}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list, patch]}
- {apiGroups: [nodegate.dev], resources: [grants], verbs: [prune]}
- {apiGroups: [events.k8s.io], resources: [events], verbs: [create]}
"#,
    );
    cluster.bind_cluster_role("kc-perm-pat", "kc-patch-only", "pat");
    cluster.bind_cluster_role("kc-perm-prue", "kc-pruner", "prue");
    let ws = Workstation::new("kc-perm");
    let admin = cluster.admin_kubeconfig();
    let expired = ws.keygen("expired");
    let valid = ws.keygen("valid");
    for (key, expires) in [(&expired, "2s"), (&valid, "2h")] {
        ws.keyctl(
            admin,
            &[
                "grant",
                node,
                "--expires",
                expires,
                "--key",
                key.to_str().unwrap(),
            ],
        )
        .ok();
    }
    std::thread::sleep(Duration::from_secs(3));
    let before = cluster.node_annotations(node);
    let newcomer = ws.keygen("newcomer");
    let grant_args = [
        "grant",
        node,
        "--expires",
        "1h",
        "--key",
        newcomer.to_str().unwrap(),
    ];

    // May patch the Node, and so could write a grant annotation by hand; keyctl asks for
    // nodegate's own permission first, as the admission guard does.
    let pat = kubeconfig("pat");
    let out = ws.keyctl(&pat, &grant_args);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("pat may not write grants.nodegate.dev {node}.")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("--clusterrole=nodegate-keyctl-granter --user=pat"),
        "{}",
        out.stderr
    );
    let out = ws.keyctl(&pat, &["prune", node]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("pat may not prune grants.nodegate.dev {node}.")),
        "{}",
        out.stderr
    );

    // prune grants.nodegate.dev: prune, and nothing else.
    let prue = kubeconfig("prue");
    let out = ws.keyctl(&prue, &grant_args);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("prue may not write grants.nodegate.dev {node}.")),
        "{}",
        out.stderr
    );
    let out = ws.keyctl(&prue, &["revoke", node, "--all"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("prue may not write grants.nodegate.dev"),
        "{}",
        out.stderr
    );
    assert_eq!(cluster.node_annotations(node), before, "nothing changed");

    let out = ws.keyctl(&prue, &["prune", node]);
    assert!(
        out.ok()
            .to_owned()
            .contains(&format!("removed {}", fingerprint(&expired))),
        "{}",
        out.stdout
    );
    let left = grants_on(node).valid;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].key.fingerprint().to_string(), fingerprint(&valid));
}
