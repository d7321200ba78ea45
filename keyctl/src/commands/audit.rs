//! `keyctl audit`: who can write grants today, and so log in to nodes, from the RBAC objects;
//! whether the admission guard is installed and bound. The evaluation is [`crate::rbac`]'s; this
//! module reads the objects and reports.

use std::process::ExitCode;

use comfy_table::{Cell, Color, Table, presets};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams};
use nodegate_cluster_client::status;
use nodegate_core::permissions::{GUARD_BINDING, GUARD_MIN_VERSION, GUARD_POLICY};
use serde::Serialize;

use crate::access::{AUDITOR_ROLE, GRANTER_ROLE, explain_forbidden};
use crate::cli::{AuditArgs, OutputFormat};
use crate::rbac::{self, Holder, Reach, Standing, Through, Who};
use crate::session::Session;

/// The exit code when someone beyond the granters can write grants (`cli::EXIT_CODES`).
pub const BEYOND_THE_GRANTERS_EXIT: u8 = 3;

const ADMISSION_API: &str = "admissionregistration.k8s.io/v1";

/// Whether the admission guard holds back who is not a granter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GuardState {
    /// Policy and binding installed, the binding denies.
    InForce,
    /// The policy is installed, but no binding puts it in force.
    NotBound,
    /// The server has the API, but not the policy.
    NotInstalled,
    /// The server has no ValidatingAdmissionPolicy in `admissionregistration.k8s.io/v1`.
    NotAvailable,
    /// The caller may not read the policy or its binding.
    Unreadable,
}

/// The guard, as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    /// Its state.
    pub state: GuardState,
    /// Whether it holds back who is not a granter (only when [`GuardState::InForce`]).
    pub in_force: bool,
    /// The ValidatingAdmissionPolicy's name.
    pub policy: &'static str,
    /// The ValidatingAdmissionPolicyBinding's name.
    pub binding: &'static str,
    /// What it means, and what to do, for people.
    pub message: String,
}

/// Where a grant permission or a node write reaches, for scripts: `all` nodes, `own` (each
/// node its own Node), or the `named` nodes listed.
#[derive(Debug, Clone, Serialize)]
pub struct Scope {
    /// `all`, `named` or `own`.
    pub scope: &'static str,
    /// The nodes, for `named`; empty otherwise.
    pub nodes: Vec<String>,
}

impl From<&Reach> for Scope {
    fn from(reach: &Reach) -> Self {
        match reach {
            Reach::All => Scope {
                scope: "all",
                nodes: Vec::new(),
            },
            Reach::OwnNode => Scope {
                scope: "own",
                nodes: Vec::new(),
            },
            Reach::Named(names) => Scope {
                scope: "named",
                nodes: names.iter().cloned().collect(),
            },
        }
    }
}

/// One way a subject can write Nodes.
#[derive(Debug, Serialize)]
pub struct AuditedWrite {
    /// e.g. `["patch", "update"]`.
    pub verbs: Vec<String>,
    /// `nodes` or `nodes/status` (`nodes, nodes/status` for system:masters).
    pub resource: String,
    /// On which nodes.
    #[serde(flatten)]
    pub scope: Scope,
    /// How: a binding and its role, the superuser group, or the Node authorizer.
    pub through: Through,
    /// `granter`, `system`, `held-back` or `beyond-the-granters`.
    pub standing: Standing,
    /// Why it is an expected system identity, when it is one.
    pub system_identity: Option<&'static str>,
}

/// One subject that can write Nodes.
#[derive(Debug, Serialize)]
pub struct AuditedSubject {
    /// `User`, `Group` or `ServiceAccount`, with `name` (and `namespace`).
    #[serde(flatten)]
    pub who: Who,
    /// The worst standing of its writes.
    pub standing: Standing,
    /// Who a group stands for (`system:authenticated`: every authenticated user).
    pub note: Option<String>,
    /// Where it holds `write grants.nodegate.dev`; none: nowhere.
    pub write_grants: Option<Scope>,
    /// Where it holds `prune grants.nodegate.dev`; none: nowhere.
    pub prune_grants: Option<Scope>,
    /// Its ways to write Nodes.
    pub node_writes: Vec<AuditedWrite>,
}

/// The whole answer of `keyctl audit -o json|yaml`.
#[derive(Debug, Serialize)]
pub struct Audit {
    /// The admission guard.
    pub guard: Guard,
    /// Whether expected system identities counted as beyond the granters (`--strict`).
    pub strict: bool,
    /// Every subject that can write Nodes, by kind and name.
    pub subjects: Vec<AuditedSubject>,
    /// The subjects that decide the exit status: beyond the granters (and with `--strict`,
    /// system identities), as "KIND NAME".
    pub beyond_the_granters: Vec<String>,
    /// Bindings and subjects that grant nothing, and why.
    pub skipped: Vec<String>,
    /// What to do, for people.
    pub advice: Vec<String>,
}

/// Runs `keyctl audit`: the exit code is 0, or [`BEYOND_THE_GRANTERS_EXIT`].
pub async fn run(session: &Session, args: &AuditArgs) -> anyhow::Result<ExitCode> {
    let caller = session.caller().await;
    let roles = list_rbac::<ClusterRole>(session, &caller, "clusterroles").await?;
    let bindings = list_rbac::<ClusterRoleBinding>(session, &caller, "clusterrolebindings").await?;
    let guard = read_guard(&session.client, &caller).await?;
    let audit = evaluate(&roles, &bindings, guard, args.strict);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&audit)?),
        OutputFormat::Yaml => print!("{}", serde_saphyr::to_string(&audit)?),
        OutputFormat::Table => print_report(&audit),
    }
    Ok(if audit.beyond_the_granters.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(BEYOND_THE_GRANTERS_EXIT)
    })
}

/// Every object of an RBAC kind; a refusal names the auditor role.
async fn list_rbac<K>(session: &Session, caller: &str, plural: &str) -> anyhow::Result<Vec<K>>
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(session.client.clone());
    match api.list(&ListParams::default()).await {
        Ok(list) => Ok(list.items),
        Err(error) if status::is_forbidden(&error) => Err(explain_forbidden(
            error,
            caller,
            "list",
            &format!("{plural}.rbac.authorization.k8s.io"),
            AUDITOR_ROLE,
        )
        .context("keyctl audit reads every ClusterRole and ClusterRoleBinding")),
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "reading {plural} (rbac.authorization.k8s.io/v1), which keyctl audit needs"
        ))),
    }
}

/// Finds out whether the guard is installed and bound, in `admissionregistration.k8s.io/v1`.
async fn read_guard(client: &kube::Client, caller: &str) -> anyhow::Result<Guard> {
    let guard = |state: GuardState, message: String| Guard {
        in_force: state == GuardState::InForce,
        state,
        policy: GUARD_POLICY,
        binding: GUARD_BINDING,
        message,
    };
    let served = match client.list_api_group_resources(ADMISSION_API).await {
        Ok(list) => list
            .resources
            .iter()
            .any(|r| r.name == "validatingadmissionpolicies"),
        Err(error) if status::is_not_found(&error) => false,
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "asking the API server whether it serves {ADMISSION_API}"
            )));
        }
    };
    if !served {
        let version = client
            .apiserver_version()
            .await
            .map(|v| format!(" ({})", v.git_version))
            .unwrap_or_default();
        return Ok(guard(
            GuardState::NotAvailable,
            format!(
                "not available: this API server{version} has no ValidatingAdmissionPolicy in {ADMISSION_API}, which Kubernetes {GUARD_MIN_VERSION} brings; until the cluster runs {GUARD_MIN_VERSION} or later, nothing holds back a Node writer who is not a granter"
            ),
        ));
    }
    let unreadable = |what: &str| {
        guard(
            GuardState::Unreadable,
            format!(
                "could not be read: {caller} may not get {what}.admissionregistration.k8s.io {GUARD_POLICY}; the ClusterRole {} (packaging/rbac/{}) allows it. Counted as not in force",
                AUDITOR_ROLE.name, AUDITOR_ROLE.manifest
            ),
        )
    };
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    match policies.get(GUARD_POLICY).await {
        Ok(_) => {}
        Err(error) if status::is_forbidden(&error) => {
            return Ok(unreadable("validatingadmissionpolicies"));
        }
        Err(error) if status::is_not_found(&error) => {
            return Ok(guard(
                GuardState::NotInstalled,
                format!(
                    "not installed: no ValidatingAdmissionPolicy {GUARD_POLICY}; apply packaging/admission/nodegate-grant-guard.yaml (docs/admission-guard.md)"
                ),
            ));
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("reading ValidatingAdmissionPolicy {GUARD_POLICY}")));
        }
    }
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    let binding = match bindings.get(GUARD_BINDING).await {
        Ok(binding) => binding,
        Err(error) if status::is_forbidden(&error) => {
            return Ok(unreadable("validatingadmissionpolicybindings"));
        }
        Err(error) if status::is_not_found(&error) => {
            return Ok(guard(
                GuardState::NotBound,
                format!(
                    "installed but not bound: no ValidatingAdmissionPolicyBinding {GUARD_BINDING}, so the policy is in force nowhere; apply packaging/admission/nodegate-grant-guard.yaml, which holds both (docs/admission-guard.md)"
                ),
            ));
        }
        Err(error) => {
            return Err(anyhow::Error::new(error).context(format!(
                "reading ValidatingAdmissionPolicyBinding {GUARD_BINDING}"
            )));
        }
    };
    Ok(match binding_problem(&binding) {
        None => guard(
            GuardState::InForce,
            format!(
                "in force: ValidatingAdmissionPolicy {GUARD_POLICY}, bound by {GUARD_BINDING} with Deny; grant changes by anyone who is not a granter are refused"
            ),
        ),
        Some(problem) => guard(
            GuardState::NotBound,
            format!(
                "installed, but its binding {GUARD_BINDING} {problem}, so nothing is refused; apply packaging/admission/nodegate-grant-guard.yaml as shipped (docs/admission-guard.md)"
            ),
        ),
    })
}

/// What keeps a binding from putting the guard in force, if anything: it must bind this policy
/// and deny (Warn and Audit only report).
fn binding_problem(binding: &ValidatingAdmissionPolicyBinding) -> Option<String> {
    let spec = binding.spec.clone().unwrap_or_default();
    let policy = spec.policy_name.unwrap_or_default();
    if policy != GUARD_POLICY {
        return Some(format!("binds the policy {policy:?}, not {GUARD_POLICY}"));
    }
    let actions = spec.validation_actions.unwrap_or_default();
    if !actions.iter().any(|a| a == "Deny") {
        return Some(format!(
            "has validationActions {actions:?} without Deny (Warn and Audit refuse nothing)"
        ));
    }
    None
}

/// The report: every node writer with its standing, and what decides the exit status.
pub fn evaluate(
    roles: &[ClusterRole],
    bindings: &[ClusterRoleBinding],
    guard: Guard,
    strict: bool,
) -> Audit {
    let (holders, skipped) = rbac::node_writers(roles, bindings);
    let subjects: Vec<AuditedSubject> = holders
        .iter()
        .map(|holder| audited(holder, guard.in_force))
        .collect();
    let counts = |s: &AuditedSubject| {
        s.standing == Standing::BeyondTheGranters || (strict && s.standing == Standing::System)
    };
    let beyond_the_granters: Vec<String> = subjects
        .iter()
        .filter(|s| counts(s))
        .map(|s| s.who.describe())
        .collect();
    let advice = advise(&subjects, &guard, &beyond_the_granters, strict);
    Audit {
        guard,
        strict,
        subjects,
        beyond_the_granters,
        skipped,
        advice,
    }
}

fn audited(holder: &Holder, guard_in_force: bool) -> AuditedSubject {
    let node_writes: Vec<AuditedWrite> = holder
        .node_writes
        .iter()
        .map(|write| AuditedWrite {
            verbs: write.verbs.iter().cloned().collect(),
            resource: write.resource.clone(),
            scope: Scope::from(&write.reach),
            through: write.through.clone(),
            standing: rbac::standing(holder, write, guard_in_force),
            system_identity: rbac::expected_system_identity(&holder.who, &write.through),
        })
        .collect();
    AuditedSubject {
        who: holder.who.clone(),
        standing: node_writes
            .iter()
            .map(|w| w.standing)
            .max()
            .unwrap_or(Standing::Granter),
        note: holder.who.note(),
        write_grants: holder.write_grants.as_ref().map(Scope::from),
        prune_grants: holder.prune_grants.as_ref().map(Scope::from),
        node_writes,
    }
}

fn advise(
    subjects: &[AuditedSubject],
    guard: &Guard,
    beyond: &[String],
    strict: bool,
) -> Vec<String> {
    let mut advice = Vec::new();
    if !beyond.is_empty() {
        advice.push(format!(
            "{} subject(s) beyond the granters can write grants, and so log in to nodes as root: {}.",
            beyond.len(),
            beyond.join(", ")
        ));
        advice.push(format!(
            "For each: if it is meant to grant, give it write grants.nodegate.dev on those nodes (bind the ClusterRole {}, packaging/rbac/{}); if not, take away its node write access (the binding shown).",
            GRANTER_ROLE.name, GRANTER_ROLE.manifest
        ));
    }
    let system: Vec<&AuditedSubject> = subjects
        .iter()
        .filter(|s| s.standing == Standing::System)
        .collect();
    if !guard.in_force && !system.is_empty() && !strict {
        let nodes = Who::Group {
            name: rbac::NODES_GROUP.to_owned(),
        };
        let controllers = system.iter().filter(|s| s.who != nodes).count();
        advice.push(format!(
            "Without the guard, Kubernetes' own identities can write grants too: every node on its own Node (the Node authorizer), and {controllers} controller identity(ies). They are listed as system identities and do not change the exit status (--strict counts them)."
        ));
    }
    let apply =
        "kubectl apply -f packaging/admission/nodegate-grant-guard.yaml; docs/admission-guard.md";
    match guard.state {
        GuardState::InForce => {
            let held = subjects
                .iter()
                .filter(|s| s.standing == Standing::HeldBack)
                .count();
            advice.push(format!(
                "The guard is in force: {held} subject(s) that can write Nodes are held back from changing grants (holders of prune grants.nodegate.dev may remove them only)."
            ));
        }
        GuardState::NotAvailable => advice.push(format!(
            "Only the admission guard holds back who is not a granter: upgrade the cluster to Kubernetes {GUARD_MIN_VERSION} or later and install it ({apply})."
        )),
        GuardState::NotInstalled | GuardState::NotBound => advice.push(format!(
            "Only the admission guard holds back who is not a granter: install it as shipped ({apply})."
        )),
        GuardState::Unreadable => advice.push(format!(
            "Whether the admission guard holds anyone back is unknown: run keyctl audit with the ClusterRole {} (packaging/rbac/{}).",
            AUDITOR_ROLE.name, AUDITOR_ROLE.manifest
        )),
    }
    advice
}

fn print_report(audit: &Audit) {
    println!("Admission guard {}: {}.", GUARD_POLICY, audit.guard.message);
    println!();
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(["SUBJECT", "CAN WRITE", "THROUGH", "STANDING"]);
    for subject in &audit.subjects {
        let mut name = subject.who.describe();
        if let Some(note) = &subject.note {
            name.push_str(&format!("\n({note})"));
        }
        for (i, write) in subject.node_writes.iter().enumerate() {
            let colour = match write.standing {
                Standing::BeyondTheGranters => Color::Red,
                Standing::System if audit.strict => Color::Red,
                Standing::System => Color::Yellow,
                Standing::HeldBack | Standing::Granter => Color::Reset,
            };
            let can = format!("{} {}", write.verbs.join(", "), write.resource)
                + &match write.scope.scope {
                    "all" => " (all)".to_owned(),
                    "own" => " (its own)".to_owned(),
                    _ => format!(" on {}", write.scope.nodes.join(", ")),
                };
            let mut standing = write.standing.describe().to_owned();
            if write.standing == Standing::BeyondTheGranters
                && let Some(grants) = &subject.write_grants
                && grants.scope == "named"
            {
                standing.push_str(&format!(
                    "\n(write grants only on {})",
                    grants.nodes.join(", ")
                ));
            }
            table.add_row(vec![
                Cell::new(if i == 0 { name.as_str() } else { "" }),
                Cell::new(can),
                Cell::new(write.through.describe()),
                Cell::new(standing).fg(colour),
            ]);
        }
    }
    println!("{table}");
    for line in &audit.advice {
        println!();
        println!("{line}");
    }
    for note in &audit.skipped {
        eprintln!("note: {note}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBindingSpec;
    use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn guard(state: GuardState) -> Guard {
        Guard {
            in_force: state == GuardState::InForce,
            state,
            policy: GUARD_POLICY,
            binding: GUARD_BINDING,
            message: String::new(),
        }
    }

    fn patcher(user: &str) -> (ClusterRole, ClusterRoleBinding) {
        let role = ClusterRole {
            metadata: ObjectMeta {
                name: Some("patch-nodes".into()),
                ..ObjectMeta::default()
            },
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["nodes".into()]),
                verbs: vec!["patch".into()],
                ..PolicyRule::default()
            }]),
            ..ClusterRole::default()
        };
        let binding = ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(format!("{user}-patch")),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: "patch-nodes".into(),
            },
            subjects: Some(vec![Subject {
                kind: "User".into(),
                name: user.into(),
                ..Subject::default()
            }]),
        };
        (role, binding)
    }

    #[test]
    fn a_patcher_without_the_grant_permission_decides_the_exit_status_unless_the_guard_holds_it() {
        let (role, binding) = patcher("mallory");
        let audit = evaluate(
            std::slice::from_ref(&role),
            std::slice::from_ref(&binding),
            guard(GuardState::NotAvailable),
            false,
        );
        assert_eq!(audit.beyond_the_granters, ["User mallory"]);
        assert!(
            audit.advice[0].contains("User mallory"),
            "{:?}",
            audit.advice
        );
        let held = evaluate(&[role], &[binding], guard(GuardState::InForce), false);
        assert!(held.beyond_the_granters.is_empty());
        let mallory = held
            .subjects
            .iter()
            .find(|s| s.who.describe() == "User mallory")
            .unwrap();
        assert_eq!(mallory.standing, Standing::HeldBack);
    }

    #[test]
    fn system_identities_count_only_when_strict() {
        let audit = evaluate(&[], &[], guard(GuardState::NotInstalled), false);
        assert!(audit.beyond_the_granters.is_empty());
        assert!(
            audit.advice.iter().any(|a| a.contains("--strict")),
            "{:?}",
            audit.advice
        );
        let strict = evaluate(&[], &[], guard(GuardState::NotInstalled), true);
        assert_eq!(strict.beyond_the_granters, ["Group system:nodes"]);
        let guarded = evaluate(&[], &[], guard(GuardState::InForce), true);
        assert!(guarded.beyond_the_granters.is_empty());
    }

    #[test]
    fn the_json_shape_is_stable() {
        let (role, binding) = patcher("mallory");
        let audit = evaluate(&[role], &[binding], guard(GuardState::NotAvailable), false);
        let json = serde_json::to_value(&audit).unwrap();
        assert_eq!(json["guard"]["state"], "not-available");
        assert_eq!(json["guard"]["in_force"], false);
        let mallory = json["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "mallory")
            .unwrap();
        assert_eq!(mallory["kind"], "User");
        assert_eq!(mallory["standing"], "beyond-the-granters");
        assert_eq!(mallory["write_grants"], serde_json::Value::Null);
        let write = &mallory["node_writes"][0];
        assert_eq!(write["verbs"], serde_json::json!(["patch"]));
        assert_eq!(write["resource"], "nodes");
        assert_eq!(write["scope"], "all");
        assert_eq!(write["nodes"], serde_json::json!([]));
        assert_eq!(write["through"]["kind"], "Binding");
        assert_eq!(write["through"]["binding"], "mallory-patch");
        assert_eq!(write["through"]["role"], "patch-nodes");
        let nodes = json["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "system:nodes")
            .unwrap();
        assert_eq!(nodes["standing"], "system");
        assert_eq!(nodes["node_writes"][0]["scope"], "own");
        assert_eq!(nodes["node_writes"][0]["through"]["kind"], "NodeAuthorizer");
    }

    #[test]
    fn a_binding_that_only_warns_or_binds_another_policy_is_no_guard() {
        let binding = |policy: &str, actions: &[&str]| ValidatingAdmissionPolicyBinding {
            spec: Some(ValidatingAdmissionPolicyBindingSpec {
                policy_name: Some(policy.into()),
                validation_actions: Some(actions.iter().map(|a| a.to_string()).collect()),
                ..ValidatingAdmissionPolicyBindingSpec::default()
            }),
            ..ValidatingAdmissionPolicyBinding::default()
        };
        assert_eq!(binding_problem(&binding(GUARD_POLICY, &["Deny"])), None);
        assert_eq!(
            binding_problem(&binding(GUARD_POLICY, &["Deny", "Audit"])),
            None
        );
        assert!(
            binding_problem(&binding(GUARD_POLICY, &["Warn", "Audit"]))
                .is_some_and(|p| p.contains("without Deny"))
        );
        assert!(
            binding_problem(&binding("other", &["Deny"])).is_some_and(|p| p.contains("\"other\""))
        );
    }

    mod mock_api {
        use super::super::*;
        use http::{Method, Request, Response, StatusCode};
        use kube::client::Body;
        use serde_json::{Value, json};

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        fn respond(status: StatusCode, body: &Value) -> Response<Body> {
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).unwrap()))
                .unwrap()
        }

        fn failure(code: u16, reason: &str) -> Value {
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": reason, "reason": reason, "code": code})
        }

        fn discovery(with_policies: bool) -> Value {
            let mut resources = vec![json!({"name": "validatingwebhookconfigurations",
                "singularName": "", "namespaced": false, "kind": "ValidatingWebhookConfiguration",
                "verbs": ["get"]})];
            if with_policies {
                resources.push(
                    json!({"name": "validatingadmissionpolicies", "singularName": "",
                    "namespaced": false, "kind": "ValidatingAdmissionPolicy", "verbs": ["get"]}),
                );
            }
            json!({"kind": "APIResourceList", "apiVersion": "v1",
                   "groupVersion": ADMISSION_API, "resources": resources})
        }

        fn policy() -> Value {
            json!({"apiVersion": ADMISSION_API, "kind": "ValidatingAdmissionPolicy",
                   "metadata": {"name": GUARD_POLICY}, "spec": {}})
        }

        fn binding(actions: &[&str]) -> Value {
            json!({"apiVersion": ADMISSION_API, "kind": "ValidatingAdmissionPolicyBinding",
                   "metadata": {"name": GUARD_BINDING},
                   "spec": {"policyName": GUARD_POLICY, "validationActions": actions}})
        }

        /// Runs read_guard against answers given in order, each for the path it must ask.
        async fn guard_with(answers: Vec<(&'static str, StatusCode, Value)>) -> Guard {
            let (service, mut handle): (_, Handle) =
                tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let client = kube::Client::new(service, "default");
            let server = tokio::spawn(async move {
                for (path, status, body) in answers {
                    let (request, send) = handle.next_request().await.expect("a request");
                    assert_eq!(request.method(), Method::GET);
                    assert_eq!(request.uri().path(), path);
                    send.send_response(respond(status, &body));
                }
            });
            let guard = read_guard(&client, "audrey").await.unwrap();
            server.await.unwrap();
            guard
        }

        const DISCOVERY: &str = "/apis/admissionregistration.k8s.io/v1";
        const POLICY: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/nodegate-grant-guard";
        const BINDING: &str = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/nodegate-grant-guard";

        #[tokio::test]
        async fn in_force_when_the_policy_is_bound_with_deny() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(true)),
                (POLICY, StatusCode::OK, policy()),
                (BINDING, StatusCode::OK, binding(&["Deny"])),
            ])
            .await;
            assert_eq!(guard.state, GuardState::InForce);
            assert!(guard.in_force);
        }

        #[tokio::test]
        async fn a_binding_that_only_warns_puts_nothing_in_force() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(true)),
                (POLICY, StatusCode::OK, policy()),
                (BINDING, StatusCode::OK, binding(&["Warn"])),
            ])
            .await;
            assert_eq!(guard.state, GuardState::NotBound);
            assert!(!guard.in_force);
            assert!(guard.message.contains("without Deny"), "{}", guard.message);
        }

        #[tokio::test]
        async fn a_policy_without_binding_is_not_bound() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(true)),
                (POLICY, StatusCode::OK, policy()),
                (BINDING, StatusCode::NOT_FOUND, failure(404, "NotFound")),
            ])
            .await;
            assert_eq!(guard.state, GuardState::NotBound);
            assert!(guard.message.contains("not bound"), "{}", guard.message);
        }

        #[tokio::test]
        async fn no_policy_is_not_installed() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(true)),
                (POLICY, StatusCode::NOT_FOUND, failure(404, "NotFound")),
            ])
            .await;
            assert_eq!(guard.state, GuardState::NotInstalled);
            assert!(
                guard
                    .message
                    .contains("packaging/admission/nodegate-grant-guard.yaml"),
                "{}",
                guard.message
            );
        }

        #[tokio::test]
        async fn a_refused_read_names_the_permission_and_the_auditor_role() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(true)),
                (POLICY, StatusCode::FORBIDDEN, failure(403, "Forbidden")),
            ])
            .await;
            assert_eq!(guard.state, GuardState::Unreadable);
            assert!(!guard.in_force);
            assert!(
                guard.message.contains(
                    "audrey may not get validatingadmissionpolicies.admissionregistration.k8s.io nodegate-grant-guard"
                ) && guard.message.contains("nodegate-keyctl-auditor"),
                "{}",
                guard.message
            );
        }

        #[tokio::test]
        async fn a_server_without_the_api_is_named_with_its_version() {
            let guard = guard_with(vec![
                (DISCOVERY, StatusCode::OK, discovery(false)),
                (
                    "/version",
                    StatusCode::OK,
                    json!({"major": "1", "minor": "29", "gitVersion": "v1.29.4",
                           "gitCommit": "", "gitTreeState": "", "buildDate": "",
                           "goVersion": "", "compiler": "", "platform": ""}),
                ),
            ])
            .await;
            assert_eq!(guard.state, GuardState::NotAvailable);
            assert!(
                guard.message.contains("(v1.29.4)") && guard.message.contains("1.30"),
                "{}",
                guard.message
            );
        }
    }
}
