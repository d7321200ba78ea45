//! The guard's manifests against the `admissionregistration.k8s.io/v1` schema: each document
//! read into k8s-openapi's types and written back must give the document itself (a misspelt or
//! unknown field would be dropped on the way), plus what the types cannot say: the enumerated
//! values, the rules naming `nodes` and `nodes/status`, and the names and messages
//! kube-apiserver validates. (k8s-openapi's types are those of 1.33, its earliest; every field
//! the guard uses is in v1 since 1.30, and the emulation refuses any other.)

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use nodegate_admission_guard::read_documents;
use nodegate_core::permissions::{GUARD_BINDING, GUARD_POLICY};
use serde_json::Value as Json;

fn documents() -> Vec<Json> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging/admission/nodegate-grant-guard.yaml");
    read_documents(&path).expect("the guard's manifest reads")
}

fn policy() -> ValidatingAdmissionPolicy {
    let documents = documents();
    serde_json::from_value(documents[0].clone()).expect("the first document is a policy")
}

fn binding() -> ValidatingAdmissionPolicyBinding {
    let documents = documents();
    serde_json::from_value(documents[1].clone()).expect("the second document is a binding")
}

#[test]
fn the_file_is_a_policy_and_its_binding_in_v1() {
    let documents = documents();
    assert_eq!(documents.len(), 2, "{documents:?}");
    for (document, kind) in documents.iter().zip([
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]) {
        assert_eq!(document["apiVersion"], "admissionregistration.k8s.io/v1");
        assert_eq!(document["kind"], kind);
    }
}

#[test]
fn every_field_is_one_of_the_schema() {
    let documents = documents();
    let policy: ValidatingAdmissionPolicy =
        serde_json::from_value(documents[0].clone()).expect("a ValidatingAdmissionPolicy");
    let binding: ValidatingAdmissionPolicyBinding =
        serde_json::from_value(documents[1].clone()).expect("a ValidatingAdmissionPolicyBinding");
    assert_eq!(
        serde_json::to_value(&policy).expect("serializes"),
        documents[0],
        "the policy has a field k8s-openapi does not know"
    );
    assert_eq!(
        serde_json::to_value(&binding).expect("serializes"),
        documents[1],
        "the binding has a field k8s-openapi does not know"
    );
}

#[test]
fn a_misspelt_field_would_be_caught() {
    // The check above holds only if k8s-openapi drops what it does not know: prove it does.
    let mut document = documents()[0].clone();
    document["spec"]["failurepolicy"] = Json::from("Ignore");
    let policy: ValidatingAdmissionPolicy =
        serde_json::from_value(document.clone()).expect("still reads");
    assert_ne!(serde_json::to_value(&policy).expect("serializes"), document);
}

#[test]
fn the_binding_puts_the_policy_in_force_with_deny() {
    let policy = policy();
    let binding = binding();
    let spec = binding.spec.expect("the binding has a spec");
    assert_eq!(spec.policy_name, policy.metadata.name);
    // keyctl audit looks for them under these names.
    assert_eq!(spec.policy_name.as_deref(), Some(GUARD_POLICY));
    assert_eq!(binding.metadata.name.as_deref(), Some(GUARD_BINDING));
    let actions = spec
        .validation_actions
        .expect("validationActions are required");
    let known = ["Deny", "Warn", "Audit"];
    assert!(
        actions.iter().all(|a| known.contains(&a.as_str())),
        "{actions:?}"
    );
    let unique: BTreeSet<&String> = actions.iter().collect();
    assert_eq!(
        unique.len(),
        actions.len(),
        "an action listed twice: {actions:?}"
    );
    assert!(actions.iter().any(|a| a == "Deny"), "{actions:?}");
    // kube-apiserver refuses Deny together with Warn.
    assert!(!actions.iter().any(|a| a == "Warn"), "{actions:?}");
    // No parameters, and every request the policy matches: no narrowing of the binding's own.
    assert!(spec.param_ref.is_none());
    assert!(spec.match_resources.is_none());
}

#[test]
fn the_policy_matches_create_and_update_of_nodes_and_nodes_status() {
    let spec = policy().spec.expect("the policy has a spec");
    assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
    assert!(spec.param_kind.is_none());
    let constraints = spec.match_constraints.expect("matchConstraints");
    assert!(constraints.exclude_resource_rules.is_none());
    assert!(constraints.namespace_selector.is_none());
    assert!(constraints.object_selector.is_none());
    let rules = constraints.resource_rules.expect("resourceRules");
    assert_eq!(rules.len(), 1, "{rules:?}");
    let rule = &rules[0];
    assert_eq!(rule.api_groups.as_deref(), Some(&[String::new()][..]));
    // A version, not "*": kube-apiserver type-checks the expressions only against named types.
    assert_eq!(rule.api_versions.as_deref(), Some(&["v1".to_owned()][..]));
    let operations: BTreeSet<&str> = rule
        .operations
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(operations, BTreeSet::from(["CREATE", "UPDATE"]));
    let resources: BTreeSet<&str> = rule
        .resources
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(resources, BTreeSet::from(["nodes", "nodes/status"]));
    assert!(rule.resource_names.is_none());
    assert!(matches!(
        rule.scope.as_deref(),
        None | Some("*") | Some("Cluster")
    ));
}

fn is_qualified_name(name: &str) -> bool {
    // Kubernetes' IsQualifiedName without a prefix: at most 63 characters, alphanumeric at both
    // ends, '-', '_' and '.' inside.
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
}

fn is_cel_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn names_reasons_and_messages_are_what_kube_apiserver_accepts() {
    let spec = policy().spec.expect("the policy has a spec");

    let conditions = spec.match_conditions.expect("matchConditions");
    assert!(!conditions.is_empty() && conditions.len() <= 64);
    let names: BTreeSet<&str> = conditions.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), conditions.len(), "a matchCondition name twice");
    assert!(names.iter().all(|n| is_qualified_name(n)), "{names:?}");

    let variables = spec.variables.expect("variables");
    let names: BTreeSet<&str> = variables.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names.len(), variables.len(), "a variable name twice");
    assert!(names.iter().all(|n| is_cel_identifier(n)), "{names:?}");

    let validations = spec.validations.expect("validations");
    assert!(!validations.is_empty());
    for validation in &validations {
        let reason = validation.reason.as_deref();
        assert!(
            matches!(
                reason,
                None | Some("Unauthorized" | "Forbidden" | "Invalid" | "RequestEntityTooLarge")
            ),
            "{reason:?}"
        );
        // The static message: kube-apiserver refuses one with a line break; it is what a
        // refusal says when the message expression fails.
        let message = validation
            .message
            .as_deref()
            .expect("every validation has a message");
        assert!(!message.trim().is_empty());
        assert!(!message.contains(['\n', '\r']), "{message:?}");
        assert!(message.contains("nodegate.dev"), "{message}");
        assert!(message.contains("ClusterRole"), "{message}");
        assert!(validation.message_expression.is_some());
    }
}
