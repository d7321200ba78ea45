//! The admission guard as shipped (`packaging/admission/nodegate-grant-guard.yaml`), evaluated
//! from the file for pairs of old and new Node objects, with the shipped ClusterRoles
//! (`packaging/rbac/keyctl-granter.yaml`, `packaging/janitor.yaml`) as the fake RBAC table.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nodegate_admission_guard::{
    Guard, Operation, Outcome, RbacTable, Request, ResourceAttributes, Rule, Subject, UserInfo,
    cluster_role, read_documents,
};
use nodegate_core::host_keys::HOST_KEY_PREFIX;
use nodegate_core::permissions::{
    GRANTS_RESOURCE, HOSTKEYS_RESOURCE, PERMISSION_GROUP, PRUNE_VERB, WRITE_VERB,
};
use nodegate_core::prefix::DEFAULT_PREFIX;
use serde_json::{Value as Json, json};

const GRANT_ROOT: &str = "ssh.nodegate.dev/g.root.5025222ebecf8ecf";
const GRANT_ADMIN: &str = "ssh.nodegate.dev/g.admin.0123456789abcdef";
const GRANT_VALUE: &str = r#"login="root",expiry-time="20261122154510Z",granted-by="alice",granted-at="20261122134510Z" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti"#;
const GRANT_VALUE_LATER: &str = r#"login="root",expiry-time="20261123154510Z",granted-by="alice",granted-at="20261122134510Z" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti"#;
const HOST_KEY: &str = "host-keys.nodegate.dev/ssh-ed25519";
const HOST_KEY_VALUE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGX2cwT2bwasOqqlU24KxZh5AlTTnycKleDPFCWaJ3k4";
const HOST_KEY_OTHER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILM+rvN+ot98qgEN796jTiQfZfG1KaT0PtFDJ/XFSqti";
const TTL: &str = "node.alpha.kubernetes.io/ttl";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn guard() -> Guard {
    let path = repository().join("packaging/admission/nodegate-grant-guard.yaml");
    let documents = read_documents(&path).expect("the guard's manifest reads");
    Guard::from_manifests(&documents).expect("the guard compiles")
}

/// The rules of a shipped ClusterRole, bound to `subject`.
fn shipped_role(file: &str, role: &str, subject: Subject) -> Vec<Rule> {
    let documents = read_documents(&repository().join(file)).expect("the role's manifest reads");
    let role = cluster_role(&documents, role).expect("the role is shipped");
    Rule::from_cluster_role(role, &subject).expect("the role's rules read")
}

/// Who asks, and what RBAC lets them do.
struct Identity {
    user: UserInfo,
    rules: Vec<Rule>,
}

fn granter() -> Identity {
    Identity {
        user: UserInfo::new("alice", &["oncall", "system:authenticated"]),
        rules: shipped_role(
            "packaging/rbac/keyctl-granter.yaml",
            "nodegate-keyctl-granter",
            Subject::Group("oncall".into()),
        ),
    }
}

/// Bound to the shipped example role limited to gpu-node-1 and gpu-node-2.
fn gpu_pool_granter() -> Identity {
    Identity {
        user: UserInfo::new("bob", &["system:authenticated"]),
        rules: shipped_role(
            "packaging/rbac/keyctl-granter.yaml",
            "nodegate-keyctl-granter-gpu-pool",
            Subject::User("bob".into()),
        ),
    }
}

fn janitor() -> Identity {
    let name = "system:serviceaccount:nodegate-system:nodegate-janitor";
    Identity {
        user: UserInfo::new(
            name,
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:nodegate-system",
                "system:authenticated",
            ],
        ),
        rules: shipped_role(
            "packaging/janitor.yaml",
            "nodegate-janitor",
            Subject::User(name.into()),
        ),
    }
}

/// A node's kubelet credential: the Node authorizer's identity, no nodegate permission.
fn kubelet(node: &str) -> Identity {
    Identity {
        user: UserInfo::new(
            &format!("system:node:{node}"),
            &["system:nodes", "system:authenticated"],
        ),
        rules: vec![rule(
            Subject::Group("system:nodes".into()),
            "",
            "nodes",
            &["get", "patch", "update"],
        )],
    }
}

/// May patch Nodes (as many controllers and operators may), nothing of nodegate's.
fn outsider() -> Identity {
    Identity {
        user: UserInfo::new("mallory", &["system:authenticated"]),
        rules: vec![rule(
            Subject::User("mallory".into()),
            "",
            "nodes",
            &["get", "list", "patch", "update"],
        )],
    }
}

/// cluster-admin: every verb on every resource of every group.
fn cluster_admin() -> Identity {
    Identity {
        user: UserInfo::new("root-admin", &["system:masters", "system:authenticated"]),
        rules: vec![rule(
            Subject::Group("system:masters".into()),
            "*",
            "*",
            &["*"],
        )],
    }
}

/// Holds nodegate.dev hostkeys write, as an admin's own role would.
fn host_key_admin() -> Identity {
    Identity {
        user: UserInfo::new("hk-admin", &["system:authenticated"]),
        rules: vec![
            rule(Subject::User("hk-admin".into()), "", "nodes", &["patch"]),
            rule(
                Subject::User("hk-admin".into()),
                "nodegate.dev",
                "hostkeys",
                &["write"],
            ),
        ],
    }
}

fn rule(subject: Subject, group: &str, resource: &str, verbs: &[&str]) -> Rule {
    Rule {
        subject,
        api_groups: vec![group.into()],
        resources: vec![resource.into()],
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        resource_names: Vec::new(),
    }
}

fn node(name: &str, annotations: &[(&str, &str)]) -> Json {
    let mut node = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": "6c1f7e55-0d1c-4b6b-9a3e-5d8f8b0f7a11"},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    });
    // Kubernetes leaves `annotations` out when there are none.
    if !annotations.is_empty() {
        let map: serde_json::Map<String, Json> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Json::from(*v)))
            .collect();
        node["metadata"]["annotations"] = Json::Object(map);
    }
    node
}

/// What happened, and which checks the authorizer answered.
struct Evaluated {
    outcome: Outcome,
    checks: Vec<ResourceAttributes>,
}

fn evaluate(
    who: &Identity,
    operation: Operation,
    subresource: &str,
    name: &str,
    old: Option<&[(&str, &str)]>,
    new: Option<&[(&str, &str)]>,
) -> Evaluated {
    let table = Arc::new(RbacTable::new(&who.user, who.rules.clone()));
    let request = Request {
        operation,
        resource: "nodes".into(),
        subresource: subresource.into(),
        kind: "Node".into(),
        name: name.into(),
        user: who.user.clone(),
        object: new.map(|a| node(name, a)),
        old_object: old.map(|a| node(name, a)),
    };
    let outcome = guard().admit(&request, table.clone());
    Evaluated {
        outcome,
        checks: table.checks(),
    }
}

/// An UPDATE of Node `name` from `old` to `new` annotations, through `nodes` or `nodes/status`.
fn update(
    who: &Identity,
    subresource: &str,
    name: &str,
    old: &[(&str, &str)],
    new: &[(&str, &str)],
) -> Evaluated {
    evaluate(
        who,
        Operation::Update,
        subresource,
        name,
        Some(old),
        Some(new),
    )
}

fn create(who: &Identity, name: &str, annotations: &[(&str, &str)]) -> Evaluated {
    evaluate(who, Operation::Create, "", name, None, Some(annotations))
}

#[track_caller]
fn assert_admitted(evaluated: &Evaluated) {
    assert_eq!(evaluated.outcome, Outcome::Admitted);
}

/// Refused, with a message that has every one of `parts`.
#[track_caller]
fn assert_denied(evaluated: &Evaluated, parts: &[&str]) -> String {
    let Outcome::Denied {
        message, reason, ..
    } = &evaluated.outcome
    else {
        panic!("expected a refusal, got {:?}", evaluated.outcome);
    };
    assert_eq!(reason, "Forbidden", "{message}");
    assert!(
        message.starts_with(
            "ValidatingAdmissionPolicy 'nodegate-grant-guard' with binding 'nodegate-grant-guard' denied request: "
        ),
        "{message}"
    );
    for part in parts {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    message.clone()
}

/// Skipped at the match condition, without asking the authorizer anything.
#[track_caller]
fn assert_untouched(evaluated: &Evaluated) {
    assert_eq!(evaluated.outcome, Outcome::Skipped);
    assert!(evaluated.checks.is_empty(), "{:?}", evaluated.checks);
}

// ---- granters -------------------------------------------------------------------------------

#[test]
fn a_granter_adds_changes_and_removes_grants_through_nodes_and_nodes_status() {
    for sub in ["", "status"] {
        let who = granter();
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[],
            &[(GRANT_ROOT, GRANT_VALUE)],
        ));
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE)],
            &[(GRANT_ROOT, GRANT_VALUE_LATER)],
        ));
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE), (TTL, "0")],
            &[(TTL, "0")],
        ));
    }
}

/// The check the guard asks the authorizer for: nodegate's permission on one node.
fn permission(resource: &str, verb: &str, node: &str) -> ResourceAttributes {
    ResourceAttributes {
        group: PERMISSION_GROUP.into(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: String::new(),
        name: node.into(),
        verb: verb.into(),
    }
}

#[test]
fn the_guard_asks_for_the_permissions_keyctl_and_the_roles_name() {
    // The keys these tests write are under the prefixes nodegate-core reads.
    for key in [GRANT_ROOT, GRANT_ADMIN] {
        assert!(key.starts_with(&format!("{DEFAULT_PREFIX}/")), "{key}");
    }
    assert!(HOST_KEY.starts_with(&format!("{HOST_KEY_PREFIX}/")));

    let evaluated = update(&granter(), "", "node7", &[], &[(GRANT_ROOT, GRANT_VALUE)]);
    assert_admitted(&evaluated);
    assert!(
        evaluated
            .checks
            .contains(&permission(GRANTS_RESOURCE, WRITE_VERB, "node7")),
        "{:?}",
        evaluated.checks
    );
    let evaluated = update(&janitor(), "", "node7", &[(GRANT_ROOT, GRANT_VALUE)], &[]);
    assert_admitted(&evaluated);
    assert!(
        evaluated
            .checks
            .contains(&permission(GRANTS_RESOURCE, PRUNE_VERB, "node7")),
        "{:?}",
        evaluated.checks
    );
    let evaluated = update(
        &host_key_admin(),
        "",
        "node7",
        &[],
        &[(HOST_KEY, HOST_KEY_VALUE)],
    );
    assert_admitted(&evaluated);
    assert!(
        evaluated
            .checks
            .contains(&permission(HOSTKEYS_RESOURCE, WRITE_VERB, "node7")),
        "{:?}",
        evaluated.checks
    );
}

#[test]
fn a_per_node_granter_writes_grants_on_its_nodes_only() {
    let who = gpu_pool_granter();
    assert_admitted(&update(
        &who,
        "",
        "gpu-node-1",
        &[],
        &[(GRANT_ROOT, GRANT_VALUE)],
    ));
    assert_admitted(&update(
        &who,
        "",
        "gpu-node-2",
        &[(GRANT_ROOT, GRANT_VALUE)],
        &[],
    ));
    assert_denied(
        &update(&who, "", "node1", &[], &[(GRANT_ROOT, GRANT_VALUE)]),
        &[
            "bob may not add or change the grant ssh.nodegate.dev/g.root.5025222ebecf8ecf on Node node1",
            "write on grants.nodegate.dev node1",
            "ClusterRole nodegate-keyctl-granter",
        ],
    );
    assert_denied(
        &update(&who, "status", "node1", &[(GRANT_ROOT, GRANT_VALUE)], &[]),
        &[
            "bob may not remove the grant",
            "on Node node1 (through nodes/status)",
            "prune",
            "write on grants.nodegate.dev node1",
        ],
    );
}

#[test]
fn a_granter_may_not_change_host_keys() {
    assert_denied(
        &update(
            &granter(),
            "",
            "node1",
            &[(HOST_KEY, HOST_KEY_VALUE)],
            &[(HOST_KEY, HOST_KEY_OTHER)],
        ),
        &[
            "alice may not change the host key host-keys.nodegate.dev/ssh-ed25519 of Node node1",
            "write on hostkeys.nodegate.dev node1",
            "ClusterRole cluster-admin",
        ],
    );
}

// ---- the janitor ----------------------------------------------------------------------------

#[test]
fn the_janitor_removes_grants() {
    for sub in ["", "status"] {
        assert_admitted(&update(
            &janitor(),
            sub,
            "node1",
            &[
                (GRANT_ROOT, GRANT_VALUE),
                (GRANT_ADMIN, GRANT_VALUE),
                (TTL, "0"),
            ],
            &[(GRANT_ADMIN, GRANT_VALUE), (TTL, "0")],
        ));
    }
}

#[test]
fn the_janitor_may_not_add_or_change_grants() {
    let name = "system:serviceaccount:nodegate-system:nodegate-janitor";
    assert_denied(
        &update(&janitor(), "", "node1", &[], &[(GRANT_ROOT, GRANT_VALUE)]),
        &[
            &format!("{name} may not add or change the grant {GRANT_ROOT} on Node node1"),
            "write on grants.nodegate.dev node1",
            "nodegate-keyctl-granter",
        ],
    );
    assert_denied(
        &update(
            &janitor(),
            "",
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE)],
            &[(GRANT_ROOT, GRANT_VALUE_LATER)],
        ),
        &[
            "may not add or change the grant",
            "write on grants.nodegate.dev",
        ],
    );
    // Removing one and adding another in the same request is an addition.
    assert_denied(
        &update(
            &janitor(),
            "",
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE)],
            &[(GRANT_ADMIN, GRANT_VALUE)],
        ),
        &[&format!("may not add or change the grant {GRANT_ADMIN}")],
    );
}

// ---- nodes ----------------------------------------------------------------------------------

#[test]
fn a_node_writes_its_own_host_keys() {
    let who = kubelet("node1");
    for sub in ["", "status"] {
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[(TTL, "0")],
            &[(TTL, "0"), (HOST_KEY, HOST_KEY_VALUE)],
        ));
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[(HOST_KEY, HOST_KEY_VALUE)],
            &[(HOST_KEY, HOST_KEY_OTHER)],
        ));
        assert_admitted(&update(
            &who,
            sub,
            "node1",
            &[(HOST_KEY, HOST_KEY_VALUE)],
            &[],
        ));
    }
}

#[test]
fn a_node_registers_itself_with_its_host_keys() {
    assert_admitted(&create(
        &kubelet("node1"),
        "node1",
        &[(TTL, "0"), (HOST_KEY, HOST_KEY_VALUE)],
    ));
}

#[test]
fn a_node_may_not_change_another_nodes_host_keys() {
    assert_denied(
        &update(
            &kubelet("node2"),
            "",
            "node1",
            &[(HOST_KEY, HOST_KEY_VALUE)],
            &[(HOST_KEY, HOST_KEY_OTHER)],
        ),
        &[
            "system:node:node2 may not change the host key host-keys.nodegate.dev/ssh-ed25519 of Node node1",
            "published by the node itself (system:node:node1)",
            "write on hostkeys.nodegate.dev node1",
        ],
    );
}

#[test]
fn a_node_may_not_write_grants_on_itself_or_another_node() {
    for (target, sub) in [("node1", ""), ("node1", "status"), ("node2", "")] {
        let message = assert_denied(
            &update(
                &kubelet("node1"),
                sub,
                target,
                &[],
                &[(GRANT_ROOT, GRANT_VALUE)],
            ),
            &[
                &format!(
                    "system:node:node1 may not change the grant {GRANT_ROOT} on Node {target}"
                ),
                "a node may not write grants",
                "write on grants.nodegate.dev",
                "nodegate-keyctl-granter",
            ],
        );
        assert_eq!(
            message.contains("(through nodes/status)"),
            sub == "status",
            "{message}"
        );
    }
    // Nor remove one, nor bring one along when it publishes host keys.
    assert_denied(
        &update(
            &kubelet("node1"),
            "",
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE)],
            &[],
        ),
        &["a node may not write grants"],
    );
    assert_denied(
        &update(
            &kubelet("node1"),
            "",
            "node1",
            &[],
            &[(HOST_KEY, HOST_KEY_VALUE), (GRANT_ROOT, GRANT_VALUE)],
        ),
        &["a node may not write grants"],
    );
}

#[test]
fn a_node_with_granter_rights_still_may_not_write_grants() {
    let mut who = kubelet("node1");
    who.rules.extend(shipped_role(
        "packaging/rbac/keyctl-granter.yaml",
        "nodegate-keyctl-granter",
        Subject::Group("system:nodes".into()),
    ));
    assert_denied(
        &update(&who, "", "node1", &[], &[(GRANT_ROOT, GRANT_VALUE)]),
        &["a node may not write grants, on its own Node or any other, whatever its RBAC"],
    );
}

#[test]
fn a_node_may_not_register_itself_with_a_grant() {
    assert_denied(
        &create(&kubelet("node1"), "node1", &[(GRANT_ROOT, GRANT_VALUE)]),
        &[
            "system:node:node1 may not change the grant",
            "a node may not write grants",
        ],
    );
}

// ---- outsiders, admins ----------------------------------------------------------------------

#[test]
fn an_outsider_who_may_patch_nodes_is_refused_with_the_permission_and_the_role() {
    for sub in ["", "status"] {
        assert_denied(
            &update(&outsider(), sub, "node1", &[], &[(GRANT_ROOT, GRANT_VALUE)]),
            &[
                "mallory may not add or change the grant",
                "that needs write on grants.nodegate.dev node1 (API group nodegate.dev, resource grants)",
                "bind the ClusterRole nodegate-keyctl-granter (packaging/rbac/keyctl-granter.yaml)",
                "--clusterrole=nodegate-keyctl-granter --user=mallory",
            ],
        );
        assert_denied(
            &update(&outsider(), sub, "node1", &[(GRANT_ROOT, GRANT_VALUE)], &[]),
            &[
                "mallory may not remove the grant",
                "prune (removals only) or write on grants.nodegate.dev node1",
                "ClusterRole nodegate-keyctl-granter",
                "ClusterRole nodegate-janitor",
            ],
        );
        assert_denied(
            &update(
                &outsider(),
                sub,
                "node1",
                &[],
                &[(HOST_KEY, HOST_KEY_VALUE)],
            ),
            &[
                "mallory may not change the host key",
                "write on hostkeys.nodegate.dev node1",
            ],
        );
    }
}

#[test]
fn several_grants_are_counted_in_the_message() {
    let message = assert_denied(
        &update(
            &outsider(),
            "",
            "node1",
            &[],
            &[(GRANT_ROOT, GRANT_VALUE), (GRANT_ADMIN, GRANT_VALUE)],
        ),
        &[" and 1 more on Node node1"],
    );
    assert!(
        message.contains(GRANT_ROOT) || message.contains(GRANT_ADMIN),
        "{message}"
    );
}

#[test]
fn a_user_without_groups_is_refused_without_an_error() {
    let who = Identity {
        user: UserInfo::new("nobody", &[]),
        rules: Vec::new(),
    };
    assert_denied(
        &update(&who, "", "node1", &[], &[(GRANT_ROOT, GRANT_VALUE)]),
        &["nobody may not add or change the grant"],
    );
}

#[test]
fn cluster_admin_may_write_grants_and_host_keys() {
    assert_admitted(&update(
        &cluster_admin(),
        "",
        "node1",
        &[(HOST_KEY, HOST_KEY_VALUE), (GRANT_ADMIN, GRANT_VALUE)],
        &[(HOST_KEY, HOST_KEY_OTHER), (GRANT_ROOT, GRANT_VALUE)],
    ));
}

#[test]
fn a_host_key_admin_replaces_host_keys_but_writes_no_grant() {
    assert_admitted(&update(
        &host_key_admin(),
        "",
        "node1",
        &[(HOST_KEY, HOST_KEY_VALUE)],
        &[(HOST_KEY, HOST_KEY_OTHER)],
    ));
    assert_denied(
        &update(
            &host_key_admin(),
            "",
            "node1",
            &[],
            &[(GRANT_ROOT, GRANT_VALUE)],
        ),
        &["hk-admin may not add or change the grant"],
    );
}

// ---- Node creation --------------------------------------------------------------------------

#[test]
fn a_node_created_with_a_grant_needs_the_granter_permission() {
    assert_admitted(&create(&granter(), "node1", &[(GRANT_ROOT, GRANT_VALUE)]));
    assert_admitted(&create(
        &gpu_pool_granter(),
        "gpu-node-1",
        &[(GRANT_ROOT, GRANT_VALUE)],
    ));
    assert_denied(
        &create(&gpu_pool_granter(), "node1", &[(GRANT_ROOT, GRANT_VALUE)]),
        &[
            "bob may not add or change the grant",
            "write on grants.nodegate.dev node1",
        ],
    );
    assert_denied(
        &create(
            &outsider(),
            "node1",
            &[(GRANT_ROOT, GRANT_VALUE), (TTL, "0")],
        ),
        &[
            "mallory may not add or change the grant",
            "nodegate-keyctl-granter",
        ],
    );
    assert_untouched(&create(&outsider(), "node1", &[(TTL, "0")]));
    assert_untouched(&create(&outsider(), "node1", &[]));
}

// ---- everything else passes untouched -------------------------------------------------------

#[test]
fn kubelet_heartbeats_and_controllers_are_not_evaluated() {
    let present = [
        (GRANT_ROOT, GRANT_VALUE),
        (HOST_KEY, HOST_KEY_VALUE),
        (TTL, "0"),
    ];
    let controller = Identity {
        user: UserInfo::new("system:kube-controller-manager", &["system:authenticated"]),
        rules: Vec::new(),
    };
    // A status heartbeat: same annotations, nodegate's included.
    assert_untouched(&update(
        &kubelet("node1"),
        "status",
        "node1",
        &present,
        &present,
    ));
    // A controller changing, adding and removing other annotations.
    assert_untouched(&update(
        &controller,
        "",
        "node1",
        &present,
        &[
            (GRANT_ROOT, GRANT_VALUE),
            (HOST_KEY, HOST_KEY_VALUE),
            (TTL, "30"),
            (
                "volumes.kubernetes.io/controller-managed-attach-detach",
                "true",
            ),
        ],
    ));
    assert_untouched(&update(&controller, "", "node1", &present, &present[..2]));
    // No annotations before or after.
    assert_untouched(&update(&controller, "", "node1", &[], &[]));
    assert_untouched(&update(&controller, "status", "node1", &[], &[(TTL, "0")]));
    assert_untouched(&update(&controller, "status", "node1", &[(TTL, "0")], &[]));
}

#[test]
fn only_keys_under_the_prefixes_count() {
    // Grants are exactly the keys whose prefix part is ssh.nodegate.dev, case-sensitive, as the
    // reader has them (docs/grant-format.md); anything else is another tool's annotation.
    for key in [
        "x.ssh.nodegate.dev/g.root.5025222ebecf8ecf",
        "ssh.nodegate.dev.example.com/g.root.5025222ebecf8ecf",
        "ssh.nodegate.devx/g.root.5025222ebecf8ecf",
        "SSH.nodegate.dev/g.root.5025222ebecf8ecf",
        "g.root.5025222ebecf8ecf",
        "host-keys.nodegate.devx/ssh-ed25519",
        "example.com/ssh.nodegate.dev",
    ] {
        assert_untouched(&update(
            &outsider(),
            "",
            "node1",
            &[],
            &[(key, GRANT_VALUE)],
        ));
    }
    // Every key under the prefix is a grant to the reader, valid or not, so it is guarded.
    for key in ["ssh.nodegate.dev/anything", "ssh.nodegate.dev/g.root.x"] {
        assert_denied(
            &update(&outsider(), "", "node1", &[], &[(key, "junk")]),
            &[&format!(
                "mallory may not add or change the grant {key} on Node node1"
            )],
        );
    }
}

#[test]
fn deleting_a_node_is_not_matched() {
    let evaluated = evaluate(
        &outsider(),
        Operation::Delete,
        "",
        "node1",
        Some(&[(GRANT_ROOT, GRANT_VALUE)]),
        None,
    );
    assert_eq!(evaluated.outcome, Outcome::NotMatched);
}

#[test]
fn other_subresources_are_not_matched() {
    let evaluated = update(
        &outsider(),
        "proxy",
        "node1",
        &[],
        &[(GRANT_ROOT, GRANT_VALUE)],
    );
    assert_eq!(evaluated.outcome, Outcome::NotMatched);
}

// ---- another prefix -------------------------------------------------------------------------

#[test]
fn a_site_with_another_prefix_replaces_it_everywhere_in_the_file() {
    let path = repository().join("packaging/admission/nodegate-grant-guard.yaml");
    let text = std::fs::read_to_string(path).expect("the guard's manifest reads");
    let edited = text.replace("ssh.nodegate.dev/", "ssh.example.com/");
    let documents =
        nodegate_admission_guard::parse_documents("edited", &edited).expect("still YAML");
    let guard = Guard::from_manifests(&documents).expect("still compiles");
    let admit = |who: &Identity, key: &str| {
        let table = Arc::new(RbacTable::new(&who.user, who.rules.clone()));
        let request = Request {
            operation: Operation::Update,
            resource: "nodes".into(),
            subresource: String::new(),
            kind: "Node".into(),
            name: "node1".into(),
            user: who.user.clone(),
            object: Some(node("node1", &[(key, GRANT_VALUE)])),
            old_object: Some(node("node1", &[])),
        };
        guard.admit(&request, table)
    };
    let moved = "ssh.example.com/g.root.5025222ebecf8ecf";
    assert!(
        matches!(&admit(&outsider(), moved), Outcome::Denied { message, .. }
            if message.contains(&format!("mallory may not add or change the grant {moved}"))),
        "{:?}",
        admit(&outsider(), moved)
    );
    assert_eq!(admit(&granter(), moved), Outcome::Admitted);
    assert_eq!(admit(&outsider(), GRANT_ROOT), Outcome::Skipped);
}
