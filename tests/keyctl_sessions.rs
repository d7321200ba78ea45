//! keyctl sessions against a real kube-apiserver: Events written with a node's own credentials
//! in exactly the shape nodegate-agent writes (annotations from nodegate-core's
//! `session_events`, the contract), read back as a viewer, and refused without the Role.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use nodegate_core::session_events::{
    COMPONENT, EndedBecause, NAMESPACE, SessionEventFields, SessionId, SessionReason,
};
use nodegate_core::{Grant, GrantKey, LoginUser};
use nodegate_testkit::cluster::kubectl_as;
use nodegate_testkit::fixtures::whole_seconds;
use nodegate_testkit::output::{Checked, output_with_stdin};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti alice@laptop";

/// The shared cluster with the shipped viewer roles: vera has both, nina only the ClusterRole.
fn cluster() -> &'static Cluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = Cluster::shared();
    READY.get_or_init(|| {
        cluster.apply_shipped(&["packaging/rbac/keyctl-viewer.yaml"]);
        cluster.bind_cluster_role("vera-viewer", "nodegate-keyctl-viewer", "vera");
        cluster.bind_cluster_role("nina-viewer", "nodegate-keyctl-viewer", "nina");
        cluster.kubectl_ok(&[
            "create",
            "rolebinding",
            "vera-session-viewer",
            "--namespace=default",
            "--role=nodegate-keyctl-session-viewer",
            "--user=vera",
        ]);
    });
    cluster
}

fn kubeconfig(user: &str) -> PathBuf {
    cluster().user_kubeconfig(user, &["people"], Validity::Current)
}

fn keyctl(kubeconfig: &Path, args: &[&str]) -> Checked {
    let output = output_with_stdin(
        Command::new(workspace_bin("keyctl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("NODEGATE_PREFIX"),
        None,
    );
    Checked::of(format!("keyctl {}", args.join(" ")), output)
}

fn node_uid(node: &str) -> String {
    cluster()
        .kubectl_ok(&["get", "node", node, "-o", "jsonpath={.metadata.uid}"])
        .trim()
        .to_owned()
}

/// A session's fields: root with KEY's grant from alice.
fn session(pid: u32, source: Option<&str>, login_at: DateTime<Utc>) -> SessionEventFields {
    let key = GrantKey::parse(KEY).expect("key");
    let user = LoginUser::new("root").expect("user");
    SessionEventFields {
        session: SessionId {
            pid,
            start_ticks: 50_000 + u64::from(pid),
        },
        grants: vec![Grant::annotation_name_for(&user, &key)],
        login_user: user,
        fingerprints: vec![key.fingerprint()],
        granted_by: "alice".into(),
        source: source.map(|s| s.parse().expect("address")),
        login_at,
        logout_at: None,
        ended_because: None,
    }
}

/// The Event nodegate-agent writes (authorized-keys-cmd/src/agent/events.rs), with the
/// structured annotations of `fields` and `component` as its source and reporting component.
///
/// Without `eventTime`, as the kubelet writes its Node events: kube-apiserver 1.20 refuses a
/// core/v1 Event with `eventTime` about a cluster-scoped object in any namespace but
/// kube-system ("involvedObject.namespace: Invalid value: \"\": does not match
/// event.namespace"); keyctl reads `eventTime` when there is one, else `lastTimestamp`.
fn agent_event(
    node: &str,
    uid: &str,
    reason: SessionReason,
    fields: &SessionEventFields,
    component: &str,
    at: DateTime<Utc>,
) -> serde_json::Value {
    let action = match reason {
        SessionReason::Login => "Login",
        SessionReason::Logout => "Logout",
        SessionReason::Ended => "EndSession",
    };
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": format!("{node}.nodegate-"),
            "namespace": NAMESPACE,
            "annotations": fields.to_annotations(),
        },
        "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid},
        "reason": reason.as_str(),
        "action": action,
        "message": format!("{} {} as {}", reason, fields.session, fields.login_user),
        "type": reason.event_type(),
        "source": {"component": component, "host": node},
        "reportingComponent": component,
        "reportingInstance": node,
        "firstTimestamp": at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "lastTimestamp": at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "count": 1,
    })
}

/// Creates `events` with node `node`'s own credentials, as its agent does.
fn create_as_node(node: &str, events: &[serde_json::Value]) {
    let node_config = cluster().node_kubeconfig(node, Validity::Current);
    for event in events {
        let out = kubectl_as(
            &node_config,
            &["create", "-f", "-"],
            Some(event.to_string().as_bytes()),
        );
        assert!(
            out.status.success(),
            "node {node} could not create an Event: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_viewer_sees_who_is_logged_in_and_who_was() {
    let cluster = cluster();
    let node = "ks-node1";
    cluster.create_node(node);
    let uid = node_uid(node);
    let now = whole_seconds(Utc::now());
    let minutes = |m: i64| now - TimeDelta::minutes(m);

    let out_and_back = session(1001, Some("192.0.2.7:51234"), minutes(30));
    let logged_out = SessionEventFields {
        logout_at: Some(minutes(18)),
        ..out_and_back.clone()
    };
    let still_in = session(1002, Some("[2001:db8::7]:40022"), minutes(10));
    let revoked = session(1003, None, minutes(20));
    let revoked_ended = SessionEventFields {
        ended_because: Some(EndedBecause::Revoked),
        ..revoked.clone()
    };
    let revoked_out = SessionEventFields {
        logout_at: Some(minutes(5)),
        ..revoked.clone()
    };
    let mut malformed = session(1004, None, minutes(3)).to_annotations();
    malformed.insert("agent.nodegate.dev/session".into(), "1004".into());
    let mut malformed_event = agent_event(
        node,
        &uid,
        SessionReason::Login,
        &session(1004, None, minutes(3)),
        COMPONENT,
        minutes(3),
    );
    malformed_event["metadata"]["annotations"] = serde_json::json!(malformed);
    let impostor = session(1005, None, minutes(2));

    use SessionReason::{Ended, Login, Logout};
    create_as_node(
        node,
        &[
            // The logout first: order does not matter.
            agent_event(node, &uid, Logout, &logged_out, COMPONENT, minutes(18)),
            agent_event(node, &uid, Login, &out_and_back, COMPONENT, minutes(30)),
            agent_event(node, &uid, Login, &still_in, COMPONENT, minutes(10)),
            // The kubelet's way of naming the Node: its name as uid.
            agent_event(node, node, Login, &revoked, COMPONENT, minutes(20)),
            agent_event(node, &uid, Ended, &revoked_ended, COMPONENT, minutes(6)),
            agent_event(node, &uid, Logout, &revoked_out, COMPONENT, minutes(5)),
            malformed_event,
            agent_event(node, &uid, Login, &impostor, "impostor", minutes(2)),
        ],
    );
    // Another node may create Events about this one too (the Node authorizer lets every node
    // write Events); one that says where it came from is refused.
    let forger = "ks-forger";
    cluster.create_node(forger);
    let mut forged = agent_event(
        node,
        &uid,
        Login,
        &session(1006, None, minutes(1)),
        COMPONENT,
        minutes(1),
    );
    forged["source"]["host"] = serde_json::json!(forger);
    create_as_node(forger, &[forged]);

    let vera = kubeconfig("vera");
    let table = keyctl(&vera, &["sessions", node]);
    let stdout = table.ok();
    table.says("--event-ttl (1h by default)");
    table.says("a node whose nodegate-agent is not running shows nothing");
    table.says("1 logged in now, 2 earlier, on 1 node(s)");
    let row = |session: &str| {
        stdout
            .lines()
            .find(|l| l.contains(session))
            .unwrap_or_else(|| panic!("no row for {session}: {table}"))
            .to_owned()
    };
    let fingerprint = GrantKey::parse(KEY).unwrap().fingerprint().to_string();
    let first = row("1001-51001");
    for part in [
        "ks-node1",
        "root",
        "logged out",
        "12m",
        "192.0.2.7:51234",
        "alice",
        &fingerprint,
    ] {
        assert!(first.contains(part), "{part:?} not in {first:?}\n{table}");
    }
    let live = row("1002-51002");
    for part in ["logged in", "[2001:db8::7]:40022", " - "] {
        assert!(live.contains(part), "{part:?} not in {live:?}\n{table}");
    }
    let ended = row("1003-51003");
    assert!(
        ended.contains("ended: revoked") && ended.contains("15m"),
        "{ended:?}\n{table}"
    );
    assert!(
        !stdout.contains("1005-51005"),
        "the impostor's Event is shown: {table}"
    );
    // A header and the three sessions: not the malformed one.
    assert_eq!(stdout.lines().count(), 4, "{table}");
    let warnings: Vec<&str> = table
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "{table}");
    assert!(
        warnings[0]
            .contains("2 Event(s) from nodegate-agent on node(s) ks-node1 failed validation")
            && warnings[0].contains("the first, ks-node1.nodegate-"),
        "{table}"
    );
    // Logged in first, then by login time.
    let order: Vec<usize> = ["1002-51002", "1001-51001", "1003-51003"]
        .iter()
        .map(|s| stdout.find(s).expect("row"))
        .collect();
    assert!(order[0] < order[1] && order[1] < order[2], "{table}");

    let json = keyctl(&vera, &["sessions", node, "-o", "json"]);
    let listing: serde_json::Value = serde_json::from_str(json.ok()).expect("JSON");
    let sessions = listing["sessions"].as_array().expect("sessions");
    assert_eq!(sessions.len(), 3, "{json}");
    let by_id = |id: &str| {
        sessions
            .iter()
            .find(|s| s["session"] == id)
            .unwrap_or_else(|| panic!("no {id}: {json}"))
    };
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let s = by_id("1001-51001");
    assert_eq!(s["state"], "logged-out");
    assert_eq!(s["node"], node);
    assert_eq!(s["user"], "root");
    assert_eq!(s["fingerprints"], serde_json::json!([fingerprint]));
    assert_eq!(s["grants"], serde_json::json!(["g.root.5025222ebecf8ecf"]));
    assert_eq!(s["granted_by"], "alice");
    assert_eq!(s["source"], "192.0.2.7:51234");
    assert_eq!(s["login_at"], time(minutes(30)));
    assert_eq!(s["logout_at"], time(minutes(18)));
    assert_eq!(s["duration_seconds"], 12 * 60);
    assert_eq!(s["login_recorded"], true);
    assert_eq!(s["ended_because"], serde_json::Value::Null);
    let s = by_id("1002-51002");
    assert_eq!(s["state"], "logged-in");
    assert_eq!(s["logout_at"], serde_json::Value::Null);
    assert_eq!(s["source"], "[2001:db8::7]:40022");
    let s = by_id("1003-51003");
    assert_eq!(s["state"], "logged-out");
    assert_eq!(s["ended_because"], "revoked");
    assert_eq!(s["ended_at"], time(minutes(6)));
    assert_eq!(s["source"], serde_json::Value::Null);
    let invalid = listing["invalid"].as_array().expect("invalid");
    assert_eq!(invalid.len(), 2, "{json}");
    assert!(invalid.iter().all(|i| i["node"] == node), "{json}");
    let errors: Vec<&str> = invalid.iter().filter_map(|i| i["error"].as_str()).collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("agent.nodegate.dev/session \"1004\" is not valid"))
            && errors
                .iter()
                .any(|e| e.contains("its source.host is \"ks-forger\", not the node ks-node1")),
        "{json}"
    );
    assert!(listing["note"].as_str().unwrap().contains("--event-ttl"));

    // The same through a selector (one query for every selected node), and a node without
    // Events beside it.
    cluster.create_nodes(
        &["ks-node1-quiet".to_owned()],
        &[("nodegate.dev/test", "ks-sessions")],
    );
    cluster.kubectl_ok(&["label", "node", node, "nodegate.dev/test=ks-sessions"]);
    let selected = keyctl(
        &vera,
        &[
            "sessions",
            "-l",
            "nodegate.dev/test=ks-sessions",
            "-o",
            "json",
        ],
    );
    let listing: serde_json::Value = serde_json::from_str(selected.ok()).expect("JSON");
    assert_eq!(
        listing["sessions"].as_array().unwrap().len(),
        3,
        "{selected}"
    );
    let quiet = keyctl(&vera, &["sessions", "ks-node1-quiet"]);
    assert_eq!(quiet.ok(), "", "{quiet}");
    quiet.says("No logins through a grant recorded on 1 node(s).");
}

#[test]
fn without_the_session_role_the_refusal_names_it() {
    let cluster = cluster();
    let node = "ks-node2";
    cluster.create_node(node);
    let nina = kubeconfig("nina");
    // nina may read Nodes (keyctl list works) but not the Events.
    keyctl(&nina, &["list", node]).ok();
    let refused = keyctl(&nina, &["sessions", node]);
    refused.code_is(1);
    assert_eq!(refused.stdout, "", "{refused}");
    refused
        .says("nina may not list events in namespace default")
        .says("Role nodegate-keyctl-session-viewer in namespace default")
        .says("kubectl create rolebinding nodegate-keyctl-session-viewer-nina --namespace=default --role=nodegate-keyctl-session-viewer --user=nina");
    let mallory = kubeconfig("mallory");
    keyctl(&mallory, &["sessions", node])
        .code_is(1)
        .says("mallory may not list events in namespace default");
}

#[test]
fn an_unknown_node_fails_alone() {
    let cluster = cluster();
    cluster.create_node("ks-node3");
    let vera = kubeconfig("vera");
    let out = keyctl(&vera, &["sessions", "ks-node3", "ks-no-such-node"]);
    out.code_is(1)
        .says("error: node ks-no-such-node: no such node")
        .says("No logins through a grant recorded on 1 node(s).");
}
