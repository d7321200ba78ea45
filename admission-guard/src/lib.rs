//! Evaluates a ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`) the way
//! kube-apiserver does, for tests of nodegate's admission guard
//! (`packaging/admission/nodegate-grant-guard.yaml`, docs/admission-guard.md).
//!
//! The test plane's kube-apiserver (1.20) has no ValidatingAdmissionPolicy, so the guard's CEL
//! is evaluated here with the `cel` crate, read from the shipped file. What kube-apiserver does
//! with a policy and its binding is emulated as documented for 1.30 and later:
//!
//! - `matchConstraints.resourceRules` decide whether the policy applies to a request at all
//!   (group, version, operation, resource and subresource, with `*` wildcards);
//! - every `matchCondition` is evaluated, with `object`, `oldObject`, `request` and `authorizer`
//!   and without `variables` (documented for validations only): any `false` skips the policy;
//!   otherwise an error is handled by `failurePolicy`;
//! - `variables` are evaluated in order, each seeing the ones before it; one that fails is left
//!   out, so that an expression that uses it fails as kube-apiserver's lazy evaluation would;
//! - every validation is evaluated; the first that is false or fails (under `failurePolicy:
//!   Fail`) gives the refusal, with its `messageExpression` (evaluated without `authorizer`, as
//!   kube-apiserver compiles it; a result that is not a string, is blank, has a line break or is
//!   longer than 5 KiB falls back to `message`), its `message`, or `failed expression: ...`;
//! - the binding's `validationActions` decide whether a failure refuses the request (`Deny`).
//!
//! Kubernetes' `authorizer` library is bound as functions over opaque values
//! (`authorizer.group(g).resource(r).subresource(s).namespace(n).name(x).check(verb)` and the
//! decision's `allowed()`, `reason()`, `errored()`, `error()`), answered by an [`Authorizer`]
//! given per request, such as an [`RbacTable`].
//!
//! The `cel` crate checks no types before evaluating, as kube-apiserver does against the
//! matched resources' schemas; an expression that compiles here may still have a type error
//! there (reported in the policy's `status.typeChecking`). Nor are CEL's runtime cost limits
//! emulated, nor the library's `authorizer.requestResource`, `path()` and `serviceAccount()`
//! (an expression using them fails here). Parts of the API that the guard does not use
//! (parameters, selectors, audit annotations, excluded rules, the binding's own
//! `matchResources`) are refused by [`Guard::from_manifests`] rather than ignored.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use cel::extractors::This;
use cel::objects::{Opaque, Value};
use cel::{Context, Env, ExecutionError, Program};
use serde_json::Value as Json;

/// The longest message a `messageExpression` may produce (kube-apiserver's
/// `MaxEvaluatedMessageExpressionSizeBytes`).
pub const MAX_MESSAGE_EXPRESSION_BYTES: usize = 5 * 1024;

/// Why manifests could not be read as a policy and its binding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file is not YAML.
    #[error("{0}: not YAML: {1}")]
    Yaml(String, String),
    /// A field has the wrong shape or is missing.
    #[error("{0}")]
    Shape(String),
    /// A field this emulation does not evaluate, which the guard must not rely on unchecked.
    #[error(
        "{0} is not emulated by these tests: evaluate it on a real kube-apiserver, or extend the emulation"
    )]
    NotEmulated(String),
    /// An expression does not parse.
    #[error("{field}: does not compile: {error}")]
    Compile {
        /// Where the expression is, e.g. `spec.validations[0].expression`.
        field: String,
        /// The parser's message.
        error: String,
    },
}

/// Reads every YAML document of a manifest file, as JSON values.
pub fn read_documents(path: &std::path::Path) -> Result<Vec<Json>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Shape(format!("{}: {e}", path.display())))?;
    parse_documents(&path.display().to_string(), &text)
}

/// Parses every YAML document of `text` as JSON values; `origin` names it in errors.
pub fn parse_documents(origin: &str, text: &str) -> Result<Vec<Json>, Error> {
    serde_saphyr::from_multiple::<Json>(text)
        .map_err(|e| Error::Yaml(origin.to_owned(), e.to_string()))
}

/// What kube-apiserver does with an expression that fails, or a match condition that does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The request is refused.
    Fail,
    /// The policy (or the failing validation) is skipped.
    Ignore,
}

/// The operation of an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A changed object (PUT, PATCH, server-side apply).
    Update,
    /// An object removed.
    Delete,
}

impl Operation {
    /// The name kube-apiserver gives it in `request.operation` and in rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// Who sends a request: `request.userInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user name, e.g. `alice` or `system:node:node1`.
    pub username: String,
    /// The groups, e.g. `system:nodes`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// A user in some groups.
    pub fn new(username: &str, groups: &[&str]) -> Self {
        Self {
            username: username.to_owned(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }
}

/// One admission request for a core/v1 resource, as the policy sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// CREATE, UPDATE or DELETE.
    pub operation: Operation,
    /// The resource, e.g. `nodes`.
    pub resource: String,
    /// The subresource, e.g. `status`; empty for the resource itself.
    pub subresource: String,
    /// The object's kind, e.g. `Node`.
    pub kind: String,
    /// The object's name.
    pub name: String,
    /// Who asks.
    pub user: UserInfo,
    /// The object after the request; `None` for DELETE.
    pub object: Option<Json>,
    /// The object before the request; `None` for CREATE.
    pub old_object: Option<Json>,
}

impl Request {
    /// `request` as kube-apiserver builds it from an `admission.k8s.io/v1` AdmissionRequest:
    /// empty `omitempty` fields (the subresource, a user's name or groups) are left out.
    pub fn admission_request(&self) -> Json {
        let mut user = serde_json::Map::new();
        if !self.user.username.is_empty() {
            user.insert("username".into(), Json::from(self.user.username.clone()));
        }
        if !self.user.groups.is_empty() {
            user.insert("groups".into(), Json::from(self.user.groups.clone()));
        }
        let kind = serde_json::json!({"group": "", "version": "v1", "kind": self.kind});
        let resource = serde_json::json!({"group": "", "version": "v1", "resource": self.resource});
        let mut request = serde_json::json!({
            "uid": "00000000-0000-0000-0000-000000000000",
            "kind": kind,
            "resource": resource,
            "requestKind": kind,
            "requestResource": resource,
            "name": self.name,
            "operation": self.operation.as_str(),
            "userInfo": user,
            "dryRun": false,
        });
        if !self.subresource.is_empty() {
            request["subResource"] = Json::from(self.subresource.clone());
            request["requestSubResource"] = Json::from(self.subresource.clone());
        }
        request
    }
}

/// The attributes of one authorization check made by a policy through `authorizer`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceAttributes {
    /// The API group, e.g. `nodegate.dev`.
    pub group: String,
    /// The resource, e.g. `grants`.
    pub resource: String,
    /// The subresource; empty for none.
    pub subresource: String,
    /// The namespace; empty for cluster-scoped resources.
    pub namespace: String,
    /// The object's name; empty for "any".
    pub name: String,
    /// The verb, e.g. `write`.
    pub verb: String,
}

/// Answers the policy's authorization checks for the request's user.
pub trait Authorizer: Send + Sync {
    /// Whether the request's user may do what `attributes` describe.
    fn allowed(&self, attributes: &ResourceAttributes) -> bool;
}

/// Who an RBAC rule is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user name.
    User(String),
    /// A group name.
    Group(String),
}

/// One RBAC rule bound to one subject: a ClusterRole rule, as a ClusterRoleBinding grants it.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Who holds it.
    pub subject: Subject,
    /// API groups (`*` for all).
    pub api_groups: Vec<String>,
    /// Resources (`*` for all, `R/S` for a subresource).
    pub resources: Vec<String>,
    /// Verbs (`*` for all).
    pub verbs: Vec<String>,
    /// Object names; empty for every object.
    pub resource_names: Vec<String>,
}

/// A fake RBAC authorizer: cluster-wide rules bound to users and groups, matched the way
/// RBAC matches them (wildcards, resourceNames), for one request's user. It records every
/// check it answers.
#[derive(Debug)]
pub struct RbacTable {
    user: UserInfo,
    rules: Vec<Rule>,
    checks: Mutex<Vec<ResourceAttributes>>,
}

impl RbacTable {
    /// The rules that apply to `user` (and to the groups it is in).
    pub fn new(user: &UserInfo, rules: Vec<Rule>) -> Self {
        Self {
            user: user.clone(),
            rules,
            checks: Mutex::new(Vec::new()),
        }
    }

    /// Every check answered so far, in order.
    pub fn checks(&self) -> Vec<ResourceAttributes> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }

    fn holds(&self, subject: &Subject) -> bool {
        match subject {
            Subject::User(name) => *name == self.user.username,
            Subject::Group(name) => self.user.groups.iter().any(|g| g == name),
        }
    }
}

fn covers(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

impl Authorizer for RbacTable {
    fn allowed(&self, a: &ResourceAttributes) -> bool {
        if let Ok(mut checks) = self.checks.lock() {
            checks.push(a.clone());
        }
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        self.rules.iter().any(|rule| {
            self.holds(&rule.subject)
                && covers(&rule.api_groups, &a.group)
                && covers(&rule.resources, &resource)
                && covers(&rule.verbs, &a.verb)
                && (rule.resource_names.is_empty()
                    || (!a.name.is_empty() && rule.resource_names.contains(&a.name)))
        })
    }
}

/// What the policy did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request is not one the policy's `matchConstraints` name.
    NotMatched,
    /// A match condition was false: the policy was not evaluated further.
    Skipped,
    /// Evaluated, and every validation passed.
    Admitted,
    /// Refused.
    Denied {
        /// The text kube-apiserver returns.
        message: String,
        /// The status reason, e.g. `Forbidden`.
        reason: String,
        /// The failing validation's index; `None` when a match condition failed.
        validation: Option<usize>,
    },
}

struct Named {
    name: String,
    source: String,
    program: Program,
}

struct Validation {
    expression: Named,
    message: Option<String>,
    message_expression: Option<Named>,
    reason: Option<String>,
}

struct ResourceRule {
    api_groups: Vec<String>,
    api_versions: Vec<String>,
    operations: Vec<String>,
    resources: Vec<String>,
}

/// A ValidatingAdmissionPolicy and the ValidatingAdmissionPolicyBinding that puts it in force,
/// compiled for evaluation.
pub struct Guard {
    env: Arc<Env>,
    policy_name: String,
    binding_name: String,
    deny: bool,
    failure_policy: FailurePolicy,
    rules: Vec<ResourceRule>,
    match_conditions: Vec<Named>,
    variables: Vec<Named>,
    validations: Vec<Validation>,
}

fn shape(message: impl Into<String>) -> Error {
    Error::Shape(message.into())
}

fn field<'a>(value: &'a Json, path: &str) -> Option<&'a Json> {
    path.split('.').try_fold(value, |v, part| v.get(part))
}

fn string_at(value: &Json, path: &str) -> Result<String, Error> {
    field(value, path)
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| shape(format!("{path}: a string is required")))
}

fn strings(value: &Json, path: &str) -> Result<Vec<String>, Error> {
    field(value, path)
        .and_then(Json::as_array)
        .ok_or_else(|| shape(format!("{path}: a list of strings is required")))?
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| shape(format!("{path}: a list of strings is required")))
        })
        .collect()
}

fn items<'a>(value: &'a Json, path: &str) -> Result<&'a [Json], Error> {
    match field(value, path) {
        None => Ok(&[]),
        Some(Json::Array(list)) => Ok(list),
        Some(_) => Err(shape(format!("{path}: a list is required"))),
    }
}

/// Refuses any key of the object at `path` other than `known`, naming the first.
fn only_keys(value: &Json, path: &str, known: &[&str]) -> Result<(), Error> {
    let object = if path.is_empty() {
        Some(value)
    } else {
        field(value, path)
    };
    if let Some(Json::Object(map)) = object
        && let Some(key) = map.keys().find(|k| !known.contains(&k.as_str()))
    {
        let at = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        return Err(Error::NotEmulated(at));
    }
    Ok(())
}

fn is_empty_selector(value: Option<&Json>) -> bool {
    match value {
        None => true,
        Some(Json::Object(map)) => map.values().all(|v| match v {
            Json::Array(a) => a.is_empty(),
            Json::Object(o) => o.is_empty(),
            _ => false,
        }),
        Some(_) => false,
    }
}

impl Guard {
    /// The policy and its binding from the documents of one manifest file: exactly one
    /// ValidatingAdmissionPolicy and one binding that names it.
    pub fn from_manifests(documents: &[Json]) -> Result<Self, Error> {
        let of_kind = |kind: &str| -> Result<&Json, Error> {
            let found: Vec<&Json> = documents
                .iter()
                .filter(|d| d.get("kind").and_then(Json::as_str) == Some(kind))
                .collect();
            match found.as_slice() {
                [one] => Ok(one),
                _ => Err(shape(format!(
                    "exactly one {kind} is required, found {}",
                    found.len()
                ))),
            }
        };
        let policy = of_kind("ValidatingAdmissionPolicy")?;
        let binding = of_kind("ValidatingAdmissionPolicyBinding")?;
        for document in [policy, binding] {
            let version = string_at(document, "apiVersion")?;
            if version != "admissionregistration.k8s.io/v1" {
                return Err(shape(format!(
                    "apiVersion {version}: admissionregistration.k8s.io/v1 is required"
                )));
            }
        }
        let policy_name = string_at(policy, "metadata.name")?;
        let binding_name = string_at(binding, "metadata.name")?;
        if string_at(binding, "spec.policyName")? != policy_name {
            return Err(shape(format!(
                "binding {binding_name} does not name policy {policy_name}"
            )));
        }
        only_keys(binding, "spec", &["policyName", "validationActions"])?;
        let actions = strings(binding, "spec.validationActions")?;
        if let Some(bad) = actions
            .iter()
            .find(|a| !["Deny", "Warn", "Audit"].contains(&a.as_str()))
        {
            return Err(shape(format!("validationActions: unknown action {bad}")));
        }
        only_keys(
            policy,
            "spec",
            &[
                "failurePolicy",
                "matchConstraints",
                "matchConditions",
                "variables",
                "validations",
            ],
        )?;
        let failure_policy = match field(policy, "spec.failurePolicy").and_then(Json::as_str) {
            None | Some("Fail") => FailurePolicy::Fail,
            Some("Ignore") => FailurePolicy::Ignore,
            Some(other) => return Err(shape(format!("failurePolicy: unknown value {other}"))),
        };
        only_keys(
            policy,
            "spec.matchConstraints",
            &[
                "resourceRules",
                "matchPolicy",
                "namespaceSelector",
                "objectSelector",
            ],
        )?;
        for selector in ["namespaceSelector", "objectSelector"] {
            if !is_empty_selector(field(policy, &format!("spec.matchConstraints.{selector}"))) {
                return Err(Error::NotEmulated(format!(
                    "spec.matchConstraints.{selector}"
                )));
            }
        }
        let mut rules = Vec::new();
        for (i, rule) in items(policy, "spec.matchConstraints.resourceRules")?
            .iter()
            .enumerate()
        {
            let at = format!("spec.matchConstraints.resourceRules[{i}]");
            only_keys(
                rule,
                "",
                &[
                    "apiGroups",
                    "apiVersions",
                    "operations",
                    "resources",
                    "scope",
                ],
            )
            .map_err(|e| shape(format!("{at}: {e}")))?;
            if rule.get("resourceNames").is_some() {
                return Err(Error::NotEmulated(format!("{at}.resourceNames")));
            }
            rules.push(ResourceRule {
                api_groups: strings(rule, "apiGroups")?,
                api_versions: strings(rule, "apiVersions")?,
                operations: strings(rule, "operations")?,
                resources: strings(rule, "resources")?,
            });
        }
        if rules.is_empty() {
            return Err(shape("spec.matchConstraints.resourceRules: none given"));
        }

        let env = Arc::new(Env::stdlib());
        let compile = |field: String, source: String| -> Result<Program, Error> {
            env.compile(&source).map_err(|e| Error::Compile {
                field,
                error: e.to_string(),
            })
        };
        let named_list = |path: &str| -> Result<Vec<Named>, Error> {
            items(policy, path)?
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let name = string_at(item, "name")?;
                    let source = string_at(item, "expression")?;
                    let program = compile(format!("{path}[{i}].expression"), source.clone())?;
                    Ok(Named {
                        name,
                        source,
                        program,
                    })
                })
                .collect()
        };
        let match_conditions = named_list("spec.matchConditions")?;
        let variables = named_list("spec.variables")?;
        let mut validations = Vec::new();
        for (i, item) in items(policy, "spec.validations")?.iter().enumerate() {
            let at = format!("spec.validations[{i}]");
            only_keys(
                item,
                "",
                &["expression", "message", "messageExpression", "reason"],
            )?;
            let source = string_at(item, "expression")?;
            let expression = Named {
                name: at.clone(),
                program: compile(format!("{at}.expression"), source.clone())?,
                source,
            };
            let message_expression = match item.get("messageExpression") {
                None => None,
                Some(_) => {
                    let source = string_at(item, "messageExpression")?;
                    Some(Named {
                        name: format!("{at}.messageExpression"),
                        program: compile(format!("{at}.messageExpression"), source.clone())?,
                        source,
                    })
                }
            };
            validations.push(Validation {
                expression,
                message: item
                    .get("message")
                    .and_then(Json::as_str)
                    .map(str::to_owned),
                message_expression,
                reason: item.get("reason").and_then(Json::as_str).map(str::to_owned),
            });
        }
        if validations.is_empty() {
            return Err(shape("spec.validations: none given"));
        }
        let mut probe = Context::with_env(env.clone());
        for (name, function) in AUTHZ_FUNCTIONS {
            function.register(&mut probe, name).map_err(|e| {
                shape(format!(
                    "the authorizer library's {name} cannot be bound: {e}"
                ))
            })?;
        }
        Ok(Self {
            env: env.clone(),
            policy_name,
            binding_name,
            deny: actions.iter().any(|a| a == "Deny"),
            failure_policy,
            rules,
            match_conditions,
            variables,
            validations,
        })
    }

    /// Evaluates the policy for `request`, asking `authorizer` what the policy asks.
    pub fn admit(&self, request: &Request, authorizer: Arc<dyn Authorizer>) -> Outcome {
        if !self.rules.iter().any(|rule| rule.matches(request)) {
            return Outcome::NotMatched;
        }
        let inputs = Inputs::new(request);

        // Match conditions: a false skips the policy whatever else failed.
        let mut failed = None;
        let mut skipped = false;
        for condition in &self.match_conditions {
            let context = self.context(&inputs, Some(&authorizer), None);
            match condition.program.execute(&context) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => skipped = true,
                Ok(other) => {
                    failed.get_or_insert_with(|| {
                        format!(
                            "match condition {} evaluated to {other:?}, not a bool",
                            condition.name
                        )
                    });
                }
                Err(error) => {
                    failed.get_or_insert_with(|| {
                        format!(
                            "failed to evaluate match condition {}: {error}",
                            condition.name
                        )
                    });
                }
            }
        }
        if skipped {
            return Outcome::Skipped;
        }
        if let Some(error) = failed {
            return match self.failure_policy {
                FailurePolicy::Ignore => Outcome::Skipped,
                FailurePolicy::Fail => self.denied(error, "Invalid".into(), None),
            };
        }

        let variables = self.variables(&inputs, Some(&authorizer));
        // Message expressions are compiled without the authorizer: so are their variables here.
        let message_variables = self.variables(&inputs, None);
        let mut first_failure = None;
        for (index, validation) in self.validations.iter().enumerate() {
            let context = self.context(&inputs, Some(&authorizer), Some(&variables));
            let failure = match validation.expression.program.execute(&context) {
                Ok(Value::Bool(true)) => None,
                Ok(Value::Bool(false)) => {
                    Some(self.message(validation, &inputs, &message_variables))
                }
                Ok(other) => (self.failure_policy == FailurePolicy::Fail).then(|| {
                    format!(
                        "expression '{}' resulted in error: {other:?} is not a bool",
                        validation.expression.source.trim()
                    )
                }),
                Err(error) => (self.failure_policy == FailurePolicy::Fail).then(|| {
                    format!(
                        "expression '{}' resulted in error: {error}",
                        validation.expression.source.trim()
                    )
                }),
            };
            if let Some(message) = failure {
                first_failure.get_or_insert((index, message));
            }
        }
        match first_failure {
            None => Outcome::Admitted,
            Some((index, message)) => {
                let reason = self.validations[index]
                    .reason
                    .clone()
                    .unwrap_or_else(|| "Invalid".into());
                self.denied(message, reason, Some(index))
            }
        }
    }

    fn denied(&self, message: String, reason: String, validation: Option<usize>) -> Outcome {
        if !self.deny {
            // Warn and Audit report a failure; neither refuses the request.
            return Outcome::Admitted;
        }
        Outcome::Denied {
            message: format!(
                "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
                self.policy_name, self.binding_name
            ),
            reason,
            validation,
        }
    }

    fn message(
        &self,
        validation: &Validation,
        inputs: &Inputs,
        variables: &HashMap<String, Value>,
    ) -> String {
        if let Some(expression) = &validation.message_expression {
            let context = self.context(inputs, None, Some(variables));
            if let Ok(Value::String(text)) = expression.program.execute(&context)
                && !text.trim().is_empty()
                && !text.contains(['\n', '\r'])
                && text.len() <= MAX_MESSAGE_EXPRESSION_BYTES
            {
                return text.to_string();
            }
        }
        match &validation.message {
            Some(message) => message.clone(),
            None => format!("failed expression: {}", validation.expression.source.trim()),
        }
    }

    /// The variables in order, each seeing those before it; one that fails is left out.
    fn variables(
        &self,
        inputs: &Inputs,
        authorizer: Option<&Arc<dyn Authorizer>>,
    ) -> HashMap<String, Value> {
        let mut values = HashMap::new();
        for variable in &self.variables {
            let context = self.context(inputs, authorizer, Some(&values));
            if let Ok(value) = variable.program.execute(&context) {
                values.insert(variable.name.clone(), value);
            }
        }
        values
    }

    fn context(
        &self,
        inputs: &Inputs,
        authorizer: Option<&Arc<dyn Authorizer>>,
        variables: Option<&HashMap<String, Value>>,
    ) -> Context<'static, 'static> {
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value("object", inputs.object.clone());
        context.add_variable_from_value("oldObject", inputs.old_object.clone());
        context.add_variable_from_value("request", inputs.request.clone());
        // A cluster-scoped resource has no namespace object; a policy without paramKind, no params.
        context.add_variable_from_value("namespaceObject", Value::Null);
        context.add_variable_from_value("params", Value::Null);
        if let Some(authorizer) = authorizer {
            context.add_variable_from_value(
                "authorizer",
                Value::Opaque(Arc::new(Authz(authorizer.clone()))),
            );
        }
        if let Some(variables) = variables {
            context.add_variable_from_value("variables", variables.clone());
        }
        for (name, function) in AUTHZ_FUNCTIONS {
            // from_manifests proved every name free in this environment.
            let _ = function.register(&mut context, name);
        }
        context
    }
}

impl ResourceRule {
    fn matches(&self, request: &Request) -> bool {
        let resource_matches = |pattern: &str| -> bool {
            let (resource, sub) = pattern.split_once('/').unwrap_or((pattern, ""));
            let resource_ok = resource == "*" || resource == request.resource;
            let sub_ok = if request.subresource.is_empty() {
                !pattern.contains('/')
            } else {
                sub == "*" || sub == request.subresource
            };
            resource_ok && sub_ok
        };
        covers(&self.api_groups, "")
            && covers(&self.api_versions, "v1")
            && covers(&self.operations, request.operation.as_str())
            && self.resources.iter().any(|r| resource_matches(r))
    }
}

/// A request's objects as CEL values.
struct Inputs {
    object: Value,
    old_object: Value,
    request: Value,
}

impl Inputs {
    fn new(request: &Request) -> Self {
        // A JSON value always converts (strings, numbers, booleans, lists, maps with string
        // keys); null stands for an absent object, as in kube-apiserver.
        let to_value = |json: Option<&Json>| -> Value {
            json.and_then(|j| cel::to_value(j).ok())
                .unwrap_or(Value::Null)
        };
        Self {
            object: to_value(request.object.as_ref()),
            old_object: to_value(request.old_object.as_ref()),
            request: to_value(Some(&request.admission_request())),
        }
    }
}

// Kubernetes' authorizer library (k8s.io/apiserver/pkg/cel/library, Authz): the values, and
// the member functions that build a check and read its decision.

/// `authorizer`: checks for the request's user.
struct Authz(Arc<dyn Authorizer>);

/// `authorizer.group(g)`.
struct GroupCheck {
    authz: Arc<dyn Authorizer>,
    group: String,
}

/// `....resource(r)` and what narrows it.
struct ResourceCheck {
    authz: Arc<dyn Authorizer>,
    attributes: ResourceAttributes,
}

/// `....check(verb)`.
#[derive(Debug, PartialEq, Eq)]
struct Decision {
    allowed: bool,
}

impl fmt::Debug for Authz {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Authorizer")
    }
}
impl fmt::Debug for GroupCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupCheck({})", self.group)
    }
}
impl fmt::Debug for ResourceCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ResourceCheck({:?})", self.attributes)
    }
}
// Authorizer values compare by identity, as kube-apiserver's do (they are never compared).
impl PartialEq for Authz {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for Authz {}
impl PartialEq for GroupCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.authz, &other.authz) && self.group == other.group
    }
}
impl Eq for GroupCheck {}
impl PartialEq for ResourceCheck {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.authz, &other.authz) && self.attributes == other.attributes
    }
}
impl Eq for ResourceCheck {}

impl Opaque for Authz {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.Authorizer"
    }
}
impl Opaque for GroupCheck {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.GroupCheck"
    }
}
impl Opaque for ResourceCheck {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.ResourceCheck"
    }
}
impl Opaque for Decision {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.authorization.Decision"
    }
}

type Receiver = This<Arc<dyn Opaque>>;

fn receiver<'a, T: 'static>(
    this: &'a Arc<dyn Opaque>,
    function: &str,
) -> Result<&'a T, ExecutionError> {
    this.downcast_ref::<T>().ok_or_else(|| {
        ExecutionError::function_error(
            function,
            format!("not defined on {}", this.runtime_type_name()),
        )
    })
}

fn group(This(this): Receiver, group: Arc<String>) -> Result<Value, ExecutionError> {
    let authz = receiver::<Authz>(&this, "group")?;
    Ok(Value::Opaque(Arc::new(GroupCheck {
        authz: authz.0.clone(),
        group: group.to_string(),
    })))
}

fn resource(This(this): Receiver, resource: Arc<String>) -> Result<Value, ExecutionError> {
    let check = receiver::<GroupCheck>(&this, "resource")?;
    Ok(Value::Opaque(Arc::new(ResourceCheck {
        authz: check.authz.clone(),
        attributes: ResourceAttributes {
            group: check.group.clone(),
            resource: resource.to_string(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
            verb: String::new(),
        },
    })))
}

fn narrowed(
    this: &Arc<dyn Opaque>,
    function: &str,
    set: impl FnOnce(&mut ResourceAttributes),
) -> Result<Value, ExecutionError> {
    let check = receiver::<ResourceCheck>(this, function)?;
    let mut attributes = check.attributes.clone();
    set(&mut attributes);
    Ok(Value::Opaque(Arc::new(ResourceCheck {
        authz: check.authz.clone(),
        attributes,
    })))
}

fn subresource(This(this): Receiver, value: Arc<String>) -> Result<Value, ExecutionError> {
    narrowed(&this, "subresource", |a| a.subresource = value.to_string())
}

fn namespace(This(this): Receiver, value: Arc<String>) -> Result<Value, ExecutionError> {
    narrowed(&this, "namespace", |a| a.namespace = value.to_string())
}

fn name(This(this): Receiver, value: Arc<String>) -> Result<Value, ExecutionError> {
    narrowed(&this, "name", |a| a.name = value.to_string())
}

fn check(This(this): Receiver, verb: Arc<String>) -> Result<Value, ExecutionError> {
    let check = receiver::<ResourceCheck>(&this, "check")?;
    let mut attributes = check.attributes.clone();
    attributes.verb = verb.to_string();
    Ok(Value::Opaque(Arc::new(Decision {
        allowed: check.authz.allowed(&attributes),
    })))
}

fn allowed(This(this): Receiver) -> Result<Value, ExecutionError> {
    Ok(Value::Bool(receiver::<Decision>(&this, "allowed")?.allowed))
}

fn reason(This(this): Receiver) -> Result<Value, ExecutionError> {
    // RBAC's reasons name the binding that allowed; a refusal has none.
    let decision = receiver::<Decision>(&this, "reason")?;
    Ok(Value::from(if decision.allowed {
        "allowed by the fake RBAC table"
    } else {
        ""
    }))
}

fn errored(This(this): Receiver) -> Result<Value, ExecutionError> {
    receiver::<Decision>(&this, "errored")?;
    Ok(Value::Bool(false))
}

fn error(This(this): Receiver) -> Result<Value, ExecutionError> {
    receiver::<Decision>(&this, "error")?;
    Ok(Value::from(""))
}

type AuthzFunction = fn(Receiver, Arc<String>) -> Result<Value, ExecutionError>;
type DecisionFunction = fn(Receiver) -> Result<Value, ExecutionError>;

/// Registers one of the library's functions on a context.
#[derive(Clone, Copy)]
enum AuthzFn {
    WithArgument(AuthzFunction),
    Plain(DecisionFunction),
}

impl AuthzFn {
    fn register(
        self,
        context: &mut Context<'static, 'static>,
        name: &str,
    ) -> Result<(), cel::DeclarationError> {
        match self {
            AuthzFn::WithArgument(f) => context.add_function(name, f),
            AuthzFn::Plain(f) => context.add_function(name, f),
        }
    }
}

const AUTHZ_FUNCTIONS: &[(&str, AuthzFn)] = &[
    ("group", AuthzFn::WithArgument(group)),
    ("resource", AuthzFn::WithArgument(resource)),
    ("subresource", AuthzFn::WithArgument(subresource)),
    ("namespace", AuthzFn::WithArgument(namespace)),
    ("name", AuthzFn::WithArgument(name)),
    ("check", AuthzFn::WithArgument(check)),
    ("allowed", AuthzFn::Plain(allowed)),
    ("reason", AuthzFn::Plain(reason)),
    ("errored", AuthzFn::Plain(errored)),
    ("error", AuthzFn::Plain(error)),
];

impl Rule {
    /// The rules of a ClusterRole manifest, as a ClusterRoleBinding to `subject` grants them.
    pub fn from_cluster_role(role: &Json, subject: &Subject) -> Result<Vec<Rule>, Error> {
        if role.get("kind").and_then(Json::as_str) != Some("ClusterRole") {
            return Err(shape("a ClusterRole is required"));
        }
        items(role, "rules")?
            .iter()
            .map(|rule| {
                let optional = |key: &str| -> Result<Vec<String>, Error> {
                    match rule.get(key) {
                        None => Ok(Vec::new()),
                        Some(_) => strings(rule, key),
                    }
                };
                if rule.get("nonResourceURLs").is_some() {
                    return Err(Error::NotEmulated("rules[].nonResourceURLs".into()));
                }
                Ok(Rule {
                    subject: subject.clone(),
                    api_groups: strings(rule, "apiGroups")?,
                    resources: strings(rule, "resources")?,
                    verbs: strings(rule, "verbs")?,
                    resource_names: optional("resourceNames")?,
                })
            })
            .collect()
    }
}

/// The ClusterRole named `name` among `documents`.
pub fn cluster_role<'a>(documents: &'a [Json], name: &str) -> Result<&'a Json, Error> {
    documents
        .iter()
        .find(|d| {
            d.get("kind").and_then(Json::as_str) == Some("ClusterRole")
                && field(d, "metadata.name").and_then(Json::as_str) == Some(name)
        })
        .ok_or_else(|| shape(format!("no ClusterRole {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy on nodes with these spec parts, and a binding with `actions`.
    fn guard(spec: &str, actions: &str) -> Result<Guard, Error> {
        let text = format!(
            r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata: {{name: p}}
spec:
  matchConstraints:
    resourceRules:
      - {{apiGroups: [""], apiVersions: ["v1"], operations: ["UPDATE"], resources: ["nodes"]}}
{spec}
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata: {{name: b}}
spec: {{policyName: p, validationActions: {actions}}}
"#
        );
        Guard::from_manifests(&parse_documents("test", &text)?)
    }

    fn request() -> Request {
        let node = serde_json::json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        Request {
            operation: Operation::Update,
            resource: "nodes".into(),
            subresource: String::new(),
            kind: "Node".into(),
            name: "n1".into(),
            user: UserInfo::new("alice", &["devs"]),
            object: Some(node.clone()),
            old_object: Some(node),
        }
    }

    fn nobody() -> Arc<dyn Authorizer> {
        Arc::new(RbacTable::new(
            &UserInfo::new("alice", &["devs"]),
            Vec::new(),
        ))
    }

    fn denial(outcome: Outcome) -> String {
        match outcome {
            Outcome::Denied { message, .. } => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_expression_error_refuses_under_fail_and_is_skipped_under_ignore() {
        let validations = "  validations:\n    - expression: \"object.metadata.missing == 'x'\"";
        let fail = guard(&format!("  failurePolicy: Fail\n{validations}"), "[Deny]").unwrap();
        let message = denial(fail.admit(&request(), nobody()));
        assert!(
            message.contains("expression 'object.metadata.missing == 'x'' resulted in error"),
            "{message}"
        );
        let ignore = guard(&format!("  failurePolicy: Ignore\n{validations}"), "[Deny]").unwrap();
        assert_eq!(ignore.admit(&request(), nobody()), Outcome::Admitted);
    }

    #[test]
    fn a_false_match_condition_skips_even_when_another_fails() {
        let spec = "  matchConditions:\n    - {name: broken, expression: \"object.nope\"}\n    - {name: never, expression: \"false\"}\n  validations:\n    - expression: \"false\"";
        assert_eq!(
            guard(spec, "[Deny]").unwrap().admit(&request(), nobody()),
            Outcome::Skipped
        );
        let spec = "  matchConditions:\n    - {name: broken, expression: \"object.nope\"}\n  validations:\n    - expression: \"true\"";
        let message = denial(guard(spec, "[Deny]").unwrap().admit(&request(), nobody()));
        assert!(
            message.contains("failed to evaluate match condition broken"),
            "{message}"
        );
    }

    #[test]
    fn match_conditions_do_not_see_variables() {
        let spec = "  matchConditions:\n    - {name: uses-variables, expression: \"variables.always\"}\n  variables:\n    - {name: always, expression: \"true\"}\n  validations:\n    - expression: \"false\"";
        let message = denial(guard(spec, "[Deny]").unwrap().admit(&request(), nobody()));
        assert!(
            message.contains("match condition uses-variables"),
            "{message}"
        );
    }

    #[test]
    fn message_expressions_fall_back_to_the_message() {
        let cases = [
            // A single line: used.
            ("'denied for ' + object.metadata.name", "denied for n1"),
            // A line break, an error, a blank, a non-string: the static message.
            ("'two\\nlines'", "static"),
            ("object.metadata.nope", "static"),
            ("'  '", "static"),
            ("42", "static"),
            // No authorizer in message expressions, nor in the variables they read.
            (
                "authorizer.group('').resource('nodes').check('get').allowed() ? 'a' : 'b'",
                "static",
            ),
            ("variables.authz ? 'a' : 'b'", "static"),
            ("variables.name", "n1"),
        ];
        for (expression, expected) in cases {
            let spec = format!(
                "  variables:\n    - {{name: name, expression: \"object.metadata.name\"}}\n    - {{name: authz, expression: \"authorizer.group('').resource('nodes').check('get').allowed()\"}}\n  validations:\n    - expression: \"false\"\n      message: static\n      messageExpression: {}",
                serde_json::to_string(expression).unwrap()
            );
            let message = denial(guard(&spec, "[Deny]").unwrap().admit(&request(), nobody()));
            assert_eq!(
                message,
                format!(
                    "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: {expected}"
                ),
                "{expression}"
            );
        }
        let spec = "  validations:\n    - expression: \"1 == 2\"";
        let message = denial(guard(spec, "[Deny]").unwrap().admit(&request(), nobody()));
        assert!(
            message.ends_with("denied request: failed expression: 1 == 2"),
            "{message}"
        );
    }

    #[test]
    fn the_first_failing_validation_gives_the_refusal() {
        let spec = "  validations:\n    - {expression: \"true\", message: one}\n    - {expression: \"false\", message: two, reason: Forbidden}\n    - {expression: \"false\", message: three}";
        let outcome = guard(spec, "[Deny]").unwrap().admit(&request(), nobody());
        assert_eq!(
            outcome,
            Outcome::Denied {
                message: "ValidatingAdmissionPolicy 'p' with binding 'b' denied request: two"
                    .into(),
                reason: "Forbidden".into(),
                validation: Some(1),
            }
        );
    }

    #[test]
    fn variables_see_earlier_variables_only() {
        let spec = "  variables:\n    - {name: a, expression: \"variables.b\"}\n    - {name: b, expression: \"1\"}\n    - {name: c, expression: \"variables.b + 1\"}\n  validations:\n    - {expression: \"variables.c == 2\", message: c}\n    - {expression: \"variables.a == 1\", message: a}";
        let message = denial(guard(spec, "[Deny]").unwrap().admit(&request(), nobody()));
        assert!(
            message.contains("expression 'variables.a == 1' resulted in error"),
            "{message}"
        );
    }

    #[test]
    fn warn_and_audit_do_not_refuse() {
        let spec = "  validations:\n    - expression: \"false\"";
        assert_eq!(
            guard(spec, "[Warn, Audit]")
                .unwrap()
                .admit(&request(), nobody()),
            Outcome::Admitted
        );
        assert!(matches!(
            guard(spec, "[Deny, Audit]")
                .unwrap()
                .admit(&request(), nobody()),
            Outcome::Denied { .. }
        ));
    }

    #[test]
    fn rules_match_by_operation_resource_and_subresource() {
        let spec = "  validations:\n    - expression: \"false\"";
        let g = guard(spec, "[Deny]").unwrap();
        let mut r = request();
        r.subresource = "status".into();
        assert_eq!(g.admit(&r, nobody()), Outcome::NotMatched);
        let mut r = request();
        r.operation = Operation::Create;
        assert_eq!(g.admit(&r, nobody()), Outcome::NotMatched);
        assert!(matches!(
            g.admit(&request(), nobody()),
            Outcome::Denied { .. }
        ));
    }

    #[test]
    fn the_authorizer_library_asks_what_the_expression_says() {
        let user = UserInfo::new("alice", &["devs"]);
        let table = Arc::new(RbacTable::new(
            &user,
            vec![Rule {
                subject: Subject::Group("devs".into()),
                api_groups: vec!["apps".into()],
                resources: vec!["deployments/scale".into()],
                verbs: vec!["update".into()],
                resource_names: vec!["web".into()],
            }],
        ));
        let spec = "  validations:\n    - expression: \"authorizer.group('apps').resource('deployments').subresource('scale').namespace('shop').name('web').check('update').allowed()\"\n    - expression: \"!authorizer.group('apps').resource('deployments').subresource('scale').namespace('shop').name('db').check('update').allowed()\"\n    - expression: \"!authorizer.group('apps').resource('deployments').check('update').allowed()\"";
        let g = guard(spec, "[Deny]").unwrap();
        assert_eq!(g.admit(&request(), table.clone()), Outcome::Admitted);
        let checks = table.checks();
        assert_eq!(checks.len(), 3);
        assert_eq!(
            checks[0],
            ResourceAttributes {
                group: "apps".into(),
                resource: "deployments".into(),
                subresource: "scale".into(),
                namespace: "shop".into(),
                name: "web".into(),
                verb: "update".into(),
            }
        );
        // Functions on the wrong value are errors, as type checking would refuse them.
        let spec = "  validations:\n    - expression: \"authorizer.resource('nodes').check('get').allowed()\"";
        let message = denial(guard(spec, "[Deny]").unwrap().admit(&request(), nobody()));
        assert!(message.contains("resulted in error"), "{message}");
    }

    #[test]
    fn what_is_not_emulated_is_refused() {
        for spec in [
            "  paramKind: {apiVersion: v1, kind: ConfigMap}\n  validations:\n    - expression: \"true\"",
            "  auditAnnotations:\n    - {key: k, valueExpression: \"'v'\"}\n  validations:\n    - expression: \"true\"",
        ] {
            assert!(
                matches!(guard(spec, "[Deny]"), Err(Error::NotEmulated(_))),
                "{spec}"
            );
        }
        assert!(matches!(
            guard(
                "  validations:\n    - expression: \"true\"",
                "[Deny, Block]"
            ),
            Err(Error::Shape(_))
        ));
        assert!(matches!(
            guard("  validations:\n    - expression: \"(\"", "[Deny]"),
            Err(Error::Compile { .. })
        ));
    }
}
