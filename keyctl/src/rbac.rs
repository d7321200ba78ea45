//! Who can write grants, worked out from RBAC objects: pure evaluation, no IO (`keyctl audit`
//! reads the objects and prints the answer, `commands/audit.rs`).
//!
//! Whoever may write grant annotations on a Node may log in to it. RBAC cannot narrow a write
//! to some annotations, so everyone who may create, update or patch a Node, or update or patch
//! its `nodes/status` (the status subresource persists metadata changes too), can write grants.
//! This module finds them the way the API server's RBAC authorizer decides, with its matching
//! rules (`VerbMatches`, `APIGroupMatches`, `ResourceMatches` with `*` and `*/subresource`,
//! `ResourceNameMatches`, in k8s.io/kubernetes `pkg/apis/rbac/v1/evaluation_helpers.go`), and
//! compares them with who holds nodegate's own `write grants.nodegate.dev` for those nodes.
//!
//! Only ClusterRoleBindings count: the RBAC authorizer visits RoleBindings only for requests in
//! their namespace, and Nodes are cluster-scoped, so no RoleBinding can grant a Node write (nor
//! `grants.nodegate.dev`, which is cluster-scoped too).
//!
//! Besides RBAC, two authorizers allow node writes that no RBAC object shows: the group
//! `system:masters` is allowed everything before any authorizer is asked, and the Node
//! authorizer lets every node (group `system:nodes`, user `system:node:NAME`) create, update
//! and patch Nodes and `nodes/status`, limited to its own Node by the NodeRestriction admission
//! plugin. Both are listed always.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use nodegate_core::permissions::{GRANTS_RESOURCE, PERMISSION_GROUP, PRUNE_VERB, WRITE_VERB};
use serde::Serialize;

/// The requests that write a Node's metadata, hence its grant annotations. A create names no
/// object when it is authorized, so a rule limited by `resourceNames` never allows it.
pub const NODE_WRITES: [(&str, Option<&str>); 5] = [
    ("create", None),
    ("update", None),
    ("patch", None),
    ("update", Some("status")),
    ("patch", Some("status")),
];

/// The group the API server allows everything, before RBAC is asked.
pub const MASTERS_GROUP: &str = "system:masters";
/// The group of every node's identity (`system:node:NAME`).
pub const NODES_GROUP: &str = "system:nodes";
/// The kube-controller-manager's own user (when it runs without ServiceAccount credentials).
pub const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// The prefix of the API server's bootstrap ClusterRoles and ClusterRoleBindings of the
/// controllers that kube-controller-manager runs with `--use-service-account-credentials`:
/// `system:controller:NAME` binds the role of that name to the ServiceAccount
/// `kube-system/NAME`.
pub const CONTROLLER_PREFIX: &str = "system:controller:";

/// One request, as the authorizer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// e.g. `patch`.
    pub verb: &'a str,
    /// The API group, `""` for the core group.
    pub group: &'a str,
    /// e.g. `nodes`.
    pub resource: &'a str,
    /// e.g. `status`.
    pub subresource: Option<&'a str>,
    /// The object's name; none for a create or a list.
    pub name: Option<&'a str>,
}

/// `VerbMatches`: `*` or the verb itself.
pub fn verb_matches(rule: &PolicyRule, verb: &str) -> bool {
    rule.verbs.iter().any(|v| v == "*" || v == verb)
}

/// `APIGroupMatches`: `*` or the group itself (`""` is the core group).
pub fn api_group_matches(rule: &PolicyRule, group: &str) -> bool {
    rule.api_groups
        .iter()
        .flatten()
        .any(|g| g == "*" || g == group)
}

/// `ResourceMatches`: `*`, the resource itself (`nodes/status` for a subresource), or
/// `*/SUBRESOURCE` for a subresource of any resource. Nothing else is a wildcard: `nodes/*`
/// matches only a subresource literally named `*`.
pub fn resource_matches(rule: &PolicyRule, resource: &str, subresource: Option<&str>) -> bool {
    let combined = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    rule.resources.iter().flatten().any(|r| {
        r == "*"
            || *r == combined
            || subresource.is_some_and(|sub| r.strip_prefix("*/") == Some(sub))
    })
}

/// `ResourceNameMatches`: a rule without `resourceNames` allows every object; one with them
/// allows only requests for one of those names (never a request without a name).
pub fn resource_name_matches(rule: &PolicyRule, name: Option<&str>) -> bool {
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => name.is_some_and(|n| names.iter().any(|r| r == n)),
    }
}

/// Whether `rule` allows `request` (`RuleAllows` for resource requests; `nonResourceURLs`
/// concern other requests and are never read here).
pub fn rule_allows(rule: &PolicyRule, request: &Request<'_>) -> bool {
    verb_matches(rule, request.verb)
        && api_group_matches(rule, request.group)
        && resource_matches(rule, request.resource, request.subresource)
        && resource_name_matches(rule, request.name)
}

/// The objects a permission reaches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Every object, also those made later.
    All,
    /// Only these (a rule's `resourceNames`).
    Named(BTreeSet<String>),
    /// Each node its own Node only (the Node authorizer with NodeRestriction).
    OwnNode,
}

impl Reach {
    /// Both reaches together.
    pub fn union(self, other: Reach) -> Reach {
        match (self, other) {
            (Reach::All, _) | (_, Reach::All) => Reach::All,
            (Reach::Named(mut a), Reach::Named(b)) => {
                a.extend(b);
                Reach::Named(a)
            }
            (Reach::OwnNode, other) | (other, Reach::OwnNode) => other,
        }
    }

    /// Whether `self` (a grant permission) covers every node `other` (a node write) reaches.
    pub fn covers(&self, other: &Reach) -> bool {
        match (self, other) {
            (Reach::All, _) => true,
            (Reach::Named(have), Reach::Named(need)) => need.is_subset(have),
            _ => false,
        }
    }

    /// "all", "own", or the names joined by ", ".
    pub fn describe(&self) -> String {
        match self {
            Reach::All => "all".to_owned(),
            Reach::OwnNode => "its own".to_owned(),
            Reach::Named(names) => names.iter().cloned().collect::<Vec<_>>().join(", "),
        }
    }
}

/// On which objects `rule` allows `verb` on `group`'s `resource[/subresource]`, if on any.
pub fn rule_reach(
    rule: &PolicyRule,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
) -> Option<Reach> {
    if !(verb_matches(rule, verb)
        && api_group_matches(rule, group)
        && resource_matches(rule, resource, subresource))
    {
        return None;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => Some(Reach::All),
        // A create is authorized before its object has a name.
        Some(_) if verb == "create" => None,
        Some(names) => Some(Reach::Named(names.iter().cloned().collect())),
    }
}

/// Whether `labels` match `selector`, as `metav1.LabelSelectorAsSelector` reads it: an empty
/// selector matches everything; an unknown operator, or `In`/`NotIn` without values, makes the
/// selector invalid, which matches nothing (the aggregation controller skips it).
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => !values.is_empty() && value.is_some_and(|v| values.contains(v)),
            "NotIn" => !values.is_empty() && value.is_none_or(|v| !values.contains(v)),
            "Exists" => values.is_empty() && value.is_some(),
            "DoesNotExist" => values.is_empty() && value.is_none(),
            _ => false,
        }
    });
    labels_match && expressions_match
}

/// A rule of a role, and the role it was written in (another one, for rules that aggregation
/// brings in).
#[derive(Debug, Clone, PartialEq)]
pub struct SourcedRule {
    /// The rule.
    pub rule: PolicyRule,
    /// The ClusterRole whose own rules hold it.
    pub from: String,
}

/// Every ClusterRole's rules as the authorizer will see them once the aggregation controller is
/// done: its stored rules, plus, for a role with an `aggregationRule`, the rules of every other
/// ClusterRole its selectors match, transitively (an aggregated role may match another
/// aggregated role). The stored rules count too, since the authorizer reads them today, before
/// the controller replaces them; a role whose controller has not filled it yet counts with what
/// it will hold.
pub fn effective_rules(roles: &[ClusterRole]) -> BTreeMap<String, Vec<SourcedRule>> {
    let named: Vec<(&str, &ClusterRole)> = roles
        .iter()
        .filter_map(|r| r.metadata.name.as_deref().map(|n| (n, r)))
        .collect();
    let mut effective: BTreeMap<String, Vec<SourcedRule>> = named
        .iter()
        .map(|(name, role)| ((*name).to_owned(), own_rules(role, name)))
        .collect();
    // Which other roles each aggregated role's selectors match.
    let aggregates: Vec<(&str, Vec<&str>)> = named
        .iter()
        .filter_map(|(name, role)| {
            let selectors = role
                .aggregation_rule
                .as_ref()?
                .cluster_role_selectors
                .as_deref()
                .unwrap_or_default();
            let matched = named
                .iter()
                .filter(|(other, other_role)| {
                    let labels = other_role.metadata.labels.clone().unwrap_or_default();
                    other != name && selectors.iter().any(|s| label_selector_matches(s, &labels))
                })
                .map(|(other, _)| *other)
                .collect();
            Some((*name, matched))
        })
        .collect();
    // Until nothing changes, as the controller converges: nested aggregated roles and cycles
    // of them end with the union of everything they reach. Rules only ever get added (or their
    // source named), so this ends.
    loop {
        let mut changed = false;
        for (name, sources) in &aggregates {
            let mut rules = effective[*name].clone();
            for source in sources {
                for sourced in &effective[*source] {
                    changed |= add_rule(&mut rules, sourced, name);
                }
            }
            effective.insert((*name).to_owned(), rules);
        }
        if !changed {
            return effective;
        }
    }
}

/// Adds `sourced` to `owner`'s `rules` unless the rule is there already; a rule `owner` holds
/// as its own and another role also holds (the controller copied it) is named by that role.
/// Returns whether anything changed.
fn add_rule(rules: &mut Vec<SourcedRule>, sourced: &SourcedRule, owner: &str) -> bool {
    match rules.iter_mut().find(|r| r.rule == sourced.rule) {
        Some(existing) if existing.from == owner && sourced.from != owner => {
            existing.from = sourced.from.clone();
            true
        }
        Some(_) => false,
        None => {
            rules.push(sourced.clone());
            true
        }
    }
}

fn own_rules(role: &ClusterRole, name: &str) -> Vec<SourcedRule> {
    role.rules
        .iter()
        .flatten()
        .map(|rule| SourcedRule {
            rule: rule.clone(),
            from: name.to_owned(),
        })
        .collect()
}

/// Who a binding names, as RBAC matches it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "kind")]
pub enum Who {
    /// A user name.
    User {
        /// The name.
        name: String,
    },
    /// A group.
    Group {
        /// The name.
        name: String,
    },
    /// A ServiceAccount (the user `system:serviceaccount:NAMESPACE:NAME`).
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl Who {
    /// The subject a binding names, or why it applies to nobody.
    pub fn of(subject: &Subject) -> Result<Who, String> {
        let name = subject.name.clone();
        match subject.kind.as_str() {
            "User" => Ok(Who::User { name }),
            "Group" => Ok(Who::Group { name }),
            // A ClusterRoleBinding has no namespace to default to: a ServiceAccount without
            // one matches nobody (rbac `appliesToUser`).
            "ServiceAccount" => match subject.namespace.as_deref() {
                Some(namespace) if !namespace.is_empty() => Ok(Who::ServiceAccount {
                    namespace: namespace.to_owned(),
                    name,
                }),
                _ => Err(format!(
                    "names ServiceAccount {name} without a namespace, which applies to nobody"
                )),
            },
            other => Err(format!(
                "names a subject of kind {other:?}, which RBAC ignores"
            )),
        }
    }

    /// "User alice", "Group oncall", "ServiceAccount kube-system/node-controller".
    pub fn describe(&self) -> String {
        match self {
            Who::User { name } => format!("User {name}"),
            Who::Group { name } => format!("Group {name}"),
            Who::ServiceAccount { namespace, name } => {
                format!("ServiceAccount {namespace}/{name}")
            }
        }
    }

    /// Whether it is a node's identity: the group `system:nodes` or a user `system:node:NAME`.
    pub fn is_node(&self) -> bool {
        match self {
            Who::Group { name } => name == NODES_GROUP,
            Who::User { name } => name.starts_with("system:node:"),
            Who::ServiceAccount { .. } => false,
        }
    }

    /// Who else a group stands for, when its name says so.
    pub fn note(&self) -> Option<String> {
        let Who::Group { name } = self else {
            return None;
        };
        match name.as_str() {
            "system:authenticated" => Some("every authenticated user".to_owned()),
            "system:unauthenticated" => Some("every anonymous request".to_owned()),
            "system:serviceaccounts" => Some("every ServiceAccount".to_owned()),
            MASTERS_GROUP => Some("superusers, allowed everything before RBAC".to_owned()),
            NODES_GROUP => Some("every node, as system:node:NAME".to_owned()),
            _ => name
                .strip_prefix("system:serviceaccounts:")
                .map(|ns| format!("every ServiceAccount in namespace {ns}")),
        }
    }
}

/// How a subject got a permission.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind")]
pub enum Through {
    /// A ClusterRoleBinding to a ClusterRole.
    Binding {
        /// The ClusterRoleBinding.
        binding: String,
        /// The ClusterRole it binds.
        role: String,
        /// The ClusterRole whose own rule it is, when aggregation brought it into `role`.
        #[serde(skip_serializing_if = "Option::is_none")]
        aggregated_from: Option<String>,
    },
    /// `system:masters`: allowed before any authorizer.
    Superuser,
    /// The Node authorizer's rules for nodes, with NodeRestriction.
    NodeAuthorizer,
}

impl Through {
    /// "ClusterRoleBinding b → ClusterRole r (aggregates s)", for people.
    pub fn describe(&self) -> String {
        match self {
            Through::Binding {
                binding,
                role,
                aggregated_from,
            } => {
                let mut text = format!("ClusterRoleBinding {binding} → ClusterRole {role}");
                if let Some(from) = aggregated_from {
                    text.push_str(&format!(" (aggregates {from})"));
                }
                text
            }
            Through::Superuser => {
                "the API server (system:masters is allowed everything)".to_owned()
            }
            Through::NodeAuthorizer => {
                "the Node authorizer (NodeRestriction: its own Node only)".to_owned()
            }
        }
    }
}

/// One way a subject can write Nodes: some verbs on `nodes` or `nodes/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeWrite {
    /// The verbs, sorted.
    pub verbs: BTreeSet<String>,
    /// `nodes` or `nodes/status`.
    pub resource: String,
    /// On which Nodes.
    pub reach: Reach,
    /// How.
    pub through: Through,
}

impl NodeWrite {
    /// "patch, update nodes/status on node-1, node-2", "create, patch, update nodes (all)".
    pub fn describe(&self) -> String {
        let verbs = self.verbs.iter().cloned().collect::<Vec<_>>().join(", ");
        let on = match &self.reach {
            Reach::All => " (all)".to_owned(),
            Reach::OwnNode => " (its own)".to_owned(),
            Reach::Named(_) => format!(" on {}", self.reach.describe()),
        };
        format!("{verbs} {}{on}", self.resource)
    }
}

/// What one subject holds: its ways to write Nodes, and its grant permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The subject.
    pub who: Who,
    /// Every way it can write Nodes.
    pub node_writes: Vec<NodeWrite>,
    /// Where it holds `write grants.nodegate.dev`, if anywhere.
    pub write_grants: Option<Reach>,
    /// Where it holds `prune grants.nodegate.dev`, if anywhere.
    pub prune_grants: Option<Reach>,
}

/// Whether a subject is meant to write grants where it can. Ordered from the best to the
/// worst, so that a subject's standing is the greatest of its node writes'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// Holds `write grants.nodegate.dev` on every node it can write.
    Granter,
    /// Kubernetes' own identity (see [`expected_system_identity`]): it can write grants
    /// without the guard, as on every cluster; only the guard holds it back.
    System,
    /// Could write Nodes, but the guard is in force and refuses its grant changes (or, for a
    /// holder of `prune`, all but removals).
    HeldBack,
    /// Can write grants it is not meant to write; the guard would refuse them.
    BeyondTheGranters,
}

impl Standing {
    /// For the table.
    pub fn describe(self) -> &'static str {
        match self {
            Standing::Granter => "granter",
            Standing::System => "system identity",
            Standing::BeyondTheGranters => "beyond the granters",
            Standing::HeldBack => "held back by the guard",
        }
    }
}

/// Why `who`, with a node write through `through`, is one of Kubernetes' own identities
/// whose node writes every cluster has: the Node authorizer's nodes; the user
/// `system:kube-controller-manager`; a `kube-system` ServiceAccount bound by the bootstrap
/// ClusterRoleBinding `system:controller:NAME` to the ClusterRole of that name. Nothing else is:
/// not another subject added to such a binding, not another namespace's ServiceAccount.
pub fn expected_system_identity(who: &Who, through: &Through) -> Option<&'static str> {
    match (who, through) {
        (_, Through::NodeAuthorizer) => Some("each node on its own Node"),
        (Who::User { name }, _) if name == CONTROLLER_MANAGER_USER => {
            Some("kube-controller-manager")
        }
        (Who::ServiceAccount { namespace, name }, Through::Binding { binding, role, .. })
            if namespace == "kube-system"
                && binding.strip_prefix(CONTROLLER_PREFIX) == Some(name.as_str())
                && role == binding =>
        {
            Some("kube-controller-manager controller")
        }
        _ => None,
    }
}

/// Everyone who can write Nodes, from every ClusterRole and ClusterRoleBinding, with the
/// implicit writers (`system:masters`, and the nodes through the Node authorizer) always
/// included; sorted by subject. Also returns what was skipped and why (bindings to missing
/// roles, subjects that apply to nobody), for the report.
pub fn node_writers(
    roles: &[ClusterRole],
    bindings: &[ClusterRoleBinding],
) -> (Vec<Holder>, Vec<String>) {
    let rules = effective_rules(roles);
    let mut holders: BTreeMap<Who, Holder> = BTreeMap::new();
    let mut skipped = Vec::new();
    let masters = Who::Group {
        name: MASTERS_GROUP.to_owned(),
    };
    holders.insert(
        masters.clone(),
        Holder {
            who: masters,
            node_writes: vec![NodeWrite {
                verbs: ["create", "patch", "update"].map(str::to_owned).into(),
                resource: "nodes, nodes/status".to_owned(),
                reach: Reach::All,
                through: Through::Superuser,
            }],
            write_grants: Some(Reach::All),
            prune_grants: Some(Reach::All),
        },
    );
    let nodes = Who::Group {
        name: NODES_GROUP.to_owned(),
    };
    holders.insert(
        nodes.clone(),
        Holder {
            who: nodes,
            node_writes: vec![
                NodeWrite {
                    verbs: ["create", "patch", "update"].map(str::to_owned).into(),
                    resource: "nodes".to_owned(),
                    reach: Reach::OwnNode,
                    through: Through::NodeAuthorizer,
                },
                NodeWrite {
                    verbs: ["patch", "update"].map(str::to_owned).into(),
                    resource: "nodes/status".to_owned(),
                    reach: Reach::OwnNode,
                    through: Through::NodeAuthorizer,
                },
            ],
            write_grants: None,
            prune_grants: None,
        },
    );

    for binding in bindings {
        let binding_name = binding.metadata.name.clone().unwrap_or_default();
        let role_ref = &binding.role_ref;
        if role_ref.kind != "ClusterRole" {
            skipped.push(format!(
                "ClusterRoleBinding {binding_name} refers to a {} (only a ClusterRole can be bound cluster-wide): it grants nothing",
                role_ref.kind
            ));
            continue;
        }
        let Some(role_rules) = rules.get(&role_ref.name) else {
            skipped.push(format!(
                "ClusterRoleBinding {binding_name} binds ClusterRole {}, which does not exist: it grants nothing until someone creates that role",
                role_ref.name
            ));
            continue;
        };
        let found = grants_of(role_rules, &binding_name, &role_ref.name);
        if found.is_empty() {
            continue;
        }
        for subject in binding.subjects.iter().flatten() {
            let who = match Who::of(subject) {
                Ok(who) => who,
                Err(why) => {
                    skipped.push(format!("ClusterRoleBinding {binding_name} {why}"));
                    continue;
                }
            };
            let entry = holders.entry(who.clone()).or_insert_with(|| Holder {
                who,
                node_writes: Vec::new(),
                write_grants: None,
                prune_grants: None,
            });
            entry.node_writes.extend(found.node_writes.iter().cloned());
            if let Some(reach) = &found.write_grants {
                entry.write_grants = Some(union(entry.write_grants.take(), reach.clone()));
            }
            if let Some(reach) = &found.prune_grants {
                entry.prune_grants = Some(union(entry.prune_grants.take(), reach.clone()));
            }
        }
    }
    let listed = holders
        .into_values()
        .filter(|h| !h.node_writes.is_empty())
        .collect();
    (listed, skipped)
}

fn union(a: Option<Reach>, b: Reach) -> Reach {
    match a {
        Some(a) => a.union(b),
        None => b,
    }
}

/// What one bound role gives.
#[derive(Debug, Default)]
struct RoleGrants {
    node_writes: Vec<NodeWrite>,
    write_grants: Option<Reach>,
    prune_grants: Option<Reach>,
}

impl RoleGrants {
    fn is_empty(&self) -> bool {
        self.node_writes.is_empty() && self.write_grants.is_none() && self.prune_grants.is_none()
    }
}

/// The node writes and grant permissions in `rules`, bound by `binding`: verbs grouped per
/// resource, reach and source rule.
fn grants_of(rules: &[SourcedRule], binding: &str, role: &str) -> RoleGrants {
    let mut found = RoleGrants::default();
    for sourced in rules {
        for (verb, sub) in NODE_WRITES {
            let Some(reach) = rule_reach(&sourced.rule, verb, "", "nodes", sub) else {
                continue;
            };
            let resource = match sub {
                Some(sub) => format!("nodes/{sub}"),
                None => "nodes".to_owned(),
            };
            let through = Through::Binding {
                binding: binding.to_owned(),
                role: role.to_owned(),
                aggregated_from: (sourced.from != role).then(|| sourced.from.clone()),
            };
            match found
                .node_writes
                .iter_mut()
                .find(|w| w.resource == resource && w.reach == reach && w.through == through)
            {
                Some(write) => {
                    write.verbs.insert(verb.to_owned());
                }
                None => found.node_writes.push(NodeWrite {
                    verbs: BTreeSet::from([verb.to_owned()]),
                    resource,
                    reach,
                    through,
                }),
            }
        }
        for (verb, slot) in [
            (WRITE_VERB, &mut found.write_grants),
            (PRUNE_VERB, &mut found.prune_grants),
        ] {
            if let Some(reach) =
                rule_reach(&sourced.rule, verb, PERMISSION_GROUP, GRANTS_RESOURCE, None)
            {
                *slot = Some(union(slot.take(), reach));
            }
        }
    }
    found
}

/// A subject's standing for one of its node writes: [`Standing::HeldBack`] when the guard is in
/// force and it is no granter there; else granter, system identity, or beyond the granters.
pub fn standing(holder: &Holder, write: &NodeWrite, guard_in_force: bool) -> Standing {
    let granter = holder
        .write_grants
        .as_ref()
        .is_some_and(|grants| grants.covers(&write.reach));
    // The guard refuses grant changes by any node's credential, whatever it holds.
    if guard_in_force && holder.who.is_node() {
        Standing::HeldBack
    } else if granter {
        Standing::Granter
    } else if guard_in_force {
        Standing::HeldBack
    } else if expected_system_identity(&holder.who, &write.through).is_some() {
        Standing::System
    } else {
        Standing::BeyondTheGranters
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{AggregationRule, RoleRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        PolicyRule {
            api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            ..PolicyRule::default()
        }
    }

    fn named(mut rule: PolicyRule, names: &[&str]) -> PolicyRule {
        rule.resource_names = Some(names.iter().map(|s| s.to_string()).collect());
        rule
    }

    fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
        ClusterRole {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            rules: Some(rules),
            ..ClusterRole::default()
        }
    }

    fn aggregating(
        name: &str,
        labels: &[(&str, &str)],
        selectors: Vec<LabelSelector>,
    ) -> ClusterRole {
        ClusterRole {
            aggregation_rule: Some(AggregationRule {
                cluster_role_selectors: Some(selectors),
            }),
            rules: None,
            ..role(name, labels, Vec::new())
        }
    }

    fn selector(labels: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..LabelSelector::default()
        }
    }

    fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Subject {
        Subject {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: namespace.map(str::to_owned),
            ..Subject::default()
        }
    }

    fn binding(name: &str, role: &str, subjects: Vec<Subject>) -> ClusterRoleBinding {
        ClusterRoleBinding {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..ObjectMeta::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "ClusterRole".to_owned(),
                name: role.to_owned(),
            },
            subjects: Some(subjects),
        }
    }

    fn patch_node<'a>(name: Option<&'a str>) -> Request<'a> {
        Request {
            verb: "patch",
            group: "",
            resource: "nodes",
            subresource: None,
            name,
        }
    }

    fn user(name: &str) -> Who {
        Who::User {
            name: name.to_owned(),
        }
    }

    /// The writers found, by subject, each with its node writes described.
    fn writers(
        roles: &[ClusterRole],
        bindings: &[ClusterRoleBinding],
    ) -> BTreeMap<String, Vec<String>> {
        node_writers(roles, bindings)
            .0
            .into_iter()
            .map(|h| {
                (
                    h.who.describe(),
                    h.node_writes
                        .iter()
                        .map(|w| format!("{} via {}", w.describe(), w.through.describe()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn verbs_match_exactly_or_by_star() {
        let exact = rule(&[""], &["nodes"], &["patch"]);
        assert!(verb_matches(&exact, "patch"));
        assert!(!verb_matches(&exact, "update"));
        assert!(!verb_matches(&exact, "Patch"), "verbs are case-sensitive");
        assert!(verb_matches(&rule(&[""], &["nodes"], &["*"]), "update"));
    }

    #[test]
    fn resources_match_by_star_exactly_or_star_slash_subresource() {
        let any = rule(&[""], &["*"], &["patch"]);
        assert!(resource_matches(&any, "nodes", None));
        assert!(resource_matches(&any, "nodes", Some("status")));
        let nodes = rule(&[""], &["nodes"], &["patch"]);
        assert!(resource_matches(&nodes, "nodes", None));
        assert!(
            !resource_matches(&nodes, "nodes", Some("status")),
            "nodes does not reach nodes/status"
        );
        let status = rule(&[""], &["nodes/status"], &["patch"]);
        assert!(resource_matches(&status, "nodes", Some("status")));
        assert!(!resource_matches(&status, "nodes", None));
        let any_status = rule(&[""], &["*/status"], &["patch"]);
        assert!(resource_matches(&any_status, "nodes", Some("status")));
        assert!(!resource_matches(&any_status, "nodes", None));
        assert!(!resource_matches(&any_status, "nodes", Some("proxy")));
        let nodes_any_sub = rule(&[""], &["nodes/*"], &["patch"]);
        assert!(
            !resource_matches(&nodes_any_sub, "nodes", Some("status")),
            "nodes/* is no wildcard in RBAC"
        );
    }

    #[test]
    fn api_groups_match_exactly_or_by_star() {
        let core = rule(&[""], &["nodes"], &["patch"]);
        assert!(api_group_matches(&core, ""));
        assert!(!api_group_matches(&core, "nodegate.dev"));
        let apps = rule(&["apps"], &["nodes"], &["patch"]);
        assert!(!api_group_matches(&apps, ""), "nodes of another group");
        assert!(api_group_matches(&rule(&["*"], &["nodes"], &["patch"]), ""));
        let grants = rule(&["*"], &["*"], &["*"]);
        assert!(rule_allows(
            &grants,
            &Request {
                verb: WRITE_VERB,
                group: PERMISSION_GROUP,
                resource: GRANTS_RESOURCE,
                subresource: None,
                name: Some("node-1"),
            }
        ));
    }

    #[test]
    fn resource_names_limit_named_requests_and_refuse_unnamed_ones() {
        let limited = named(rule(&[""], &["nodes"], &["patch", "create"]), &["node-1"]);
        assert!(rule_allows(&limited, &patch_node(Some("node-1"))));
        assert!(!rule_allows(&limited, &patch_node(Some("node-2"))));
        assert!(!rule_allows(&limited, &patch_node(None)));
        assert_eq!(
            rule_reach(&limited, "patch", "", "nodes", None),
            Some(Reach::Named(BTreeSet::from(["node-1".to_owned()])))
        );
        assert_eq!(
            rule_reach(&limited, "create", "", "nodes", None),
            None,
            "a create has no name when it is authorized"
        );
        let unlimited = rule(&[""], &["nodes"], &["patch"]);
        assert!(rule_allows(&unlimited, &patch_node(None)));
        assert_eq!(
            rule_reach(&unlimited, "patch", "", "nodes", None),
            Some(Reach::All)
        );
        let empty_names = named(rule(&[""], &["nodes"], &["patch"]), &[]);
        assert_eq!(
            rule_reach(&empty_names, "patch", "", "nodes", None),
            Some(Reach::All)
        );
    }

    #[test]
    fn non_resource_urls_grant_no_node_write() {
        let urls = PolicyRule {
            non_resource_urls: Some(vec!["*".to_owned()]),
            verbs: vec!["*".to_owned()],
            ..PolicyRule::default()
        };
        for (verb, sub) in NODE_WRITES {
            assert_eq!(rule_reach(&urls, verb, "", "nodes", sub), None);
        }
        let roles = [role("urls", &[], vec![urls])];
        let bindings = [binding("urls", "urls", vec![subject("User", "u", None)])];
        assert!(!writers(&roles, &bindings).contains_key("User u"));
    }

    #[test]
    fn label_selectors_read_as_the_api_server_reads_them() {
        let labels: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .into();
        let expr = |key: &str, op: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: key.to_owned(),
                operator: op.to_owned(),
                values: (!values.is_empty())
                    .then(|| values.iter().map(|s| s.to_string()).collect()),
            }]),
            ..LabelSelector::default()
        };
        assert!(
            label_selector_matches(&LabelSelector::default(), &labels),
            "empty: everything"
        );
        assert!(label_selector_matches(&selector(&[("a", "1")]), &labels));
        assert!(!label_selector_matches(&selector(&[("a", "2")]), &labels));
        assert!(label_selector_matches(
            &expr("a", "In", &["1", "3"]),
            &labels
        ));
        assert!(!label_selector_matches(&expr("a", "In", &["3"]), &labels));
        assert!(label_selector_matches(&expr("c", "NotIn", &["1"]), &labels));
        assert!(!label_selector_matches(
            &expr("a", "NotIn", &["1"]),
            &labels
        ));
        assert!(label_selector_matches(&expr("b", "Exists", &[]), &labels));
        assert!(label_selector_matches(
            &expr("c", "DoesNotExist", &[]),
            &labels
        ));
        assert!(
            !label_selector_matches(&expr("a", "In", &[]), &labels),
            "invalid: nothing"
        );
        assert!(
            !label_selector_matches(&expr("a", "Equals", &["1"]), &labels),
            "invalid: nothing"
        );
    }

    #[test]
    fn aggregation_counts_before_the_controller_fills_the_role_and_follows_nested_selectors() {
        let roles = [
            // Aggregates everything labelled outer=yes; nothing stored yet.
            aggregating("outer", &[], vec![selector(&[("outer", "yes")])]),
            // Aggregated into outer, and aggregates inner=yes itself.
            aggregating(
                "middle",
                &[("outer", "yes")],
                vec![LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "inner".to_owned(),
                        operator: "In".to_owned(),
                        values: Some(vec!["yes".to_owned()]),
                    }]),
                    ..LabelSelector::default()
                }],
            ),
            role(
                "leaf",
                &[("inner", "yes")],
                vec![rule(&[""], &["nodes"], &["patch"])],
            ),
            role(
                "unlabelled",
                &[],
                vec![rule(&[""], &["nodes"], &["update"])],
            ),
        ];
        let effective = effective_rules(&roles);
        assert_eq!(effective["outer"].len(), 1, "{:?}", effective["outer"]);
        assert_eq!(effective["outer"][0].from, "leaf");
        assert_eq!(effective["middle"][0].from, "leaf");
        let bindings = [binding("b", "outer", vec![subject("User", "u", None)])];
        assert_eq!(
            writers(&roles, &bindings)["User u"],
            ["patch nodes (all) via ClusterRoleBinding b → ClusterRole outer (aggregates leaf)"]
        );
    }

    #[test]
    fn aggregation_keeps_stored_rules_and_survives_a_cycle() {
        let mut a = aggregating("a", &[("x", "1")], vec![selector(&[("x", "2")])]);
        a.rules = Some(vec![rule(&[""], &["nodes/status"], &["patch"])]);
        let b = aggregating("b", &[("x", "2")], vec![selector(&[("x", "1")])]);
        let effective = effective_rules(&[a.clone(), b.clone()]);
        assert_eq!(effective["a"].len(), 1);
        assert_eq!(effective["b"].len(), 1, "b gets a's rule");
        assert_eq!(effective["b"][0].from, "a");
        let empty = aggregating("none", &[], Vec::new());
        assert!(effective_rules(&[empty, a, b])["none"].is_empty());
    }

    #[test]
    fn a_longer_cycle_of_aggregated_roles_ends_with_the_union_everywhere() {
        // a aggregates b, b aggregates c, c aggregates a; each holds one rule of its own.
        let link = |name: &str, own: &str, next: &str, verb: &str| {
            let mut role = aggregating(name, &[("ring", own)], vec![selector(&[("ring", next)])]);
            role.rules = Some(vec![rule(&[""], &["nodes"], &[verb])]);
            role
        };
        let roles = [
            link("a", "a", "b", "patch"),
            link("b", "b", "c", "update"),
            link("c", "c", "a", "create"),
        ];
        let effective = effective_rules(&roles);
        for name in ["a", "b", "c"] {
            let mut from: Vec<&str> = effective[name].iter().map(|r| r.from.as_str()).collect();
            from.sort();
            assert_eq!(from, ["a", "b", "c"], "{name}: {:?}", effective[name]);
        }
    }

    #[test]
    fn a_rule_the_controller_copied_is_named_by_the_role_it_came_from() {
        let part = role(
            "part",
            &[("agg", "yes")],
            vec![rule(&[""], &["nodes"], &["patch"])],
        );
        let mut filled = aggregating("filled", &[], vec![selector(&[("agg", "yes")])]);
        filled.rules = Some(vec![rule(&[""], &["nodes"], &["patch"])]);
        let effective = effective_rules(&[part, filled]);
        assert_eq!(effective["filled"].len(), 1);
        assert_eq!(effective["filled"][0].from, "part");
    }

    #[test]
    fn groups_and_service_accounts_are_subjects_of_their_own() {
        let roles = [role("w", &[], vec![rule(&[""], &["nodes"], &["patch"])])];
        let bindings = [binding(
            "w",
            "w",
            vec![
                subject("Group", "oncall", None),
                subject("ServiceAccount", "agent", Some("infra")),
                subject("ServiceAccount", "nowhere", None),
                subject("Robot", "r2", None),
            ],
        )];
        let (holders, skipped) = node_writers(&roles, &bindings);
        let names: Vec<String> = holders.iter().map(|h| h.who.describe()).collect();
        assert!(names.contains(&"Group oncall".to_owned()), "{names:?}");
        assert!(
            names.contains(&"ServiceAccount infra/agent".to_owned()),
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.contains("nowhere") || n.contains("r2"))
        );
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("ServiceAccount nowhere without a namespace"))
        );
        assert!(skipped.iter().any(|s| s.contains("\"Robot\"")));
    }

    #[test]
    fn masters_and_nodes_are_always_listed() {
        let (holders, _) = node_writers(&[], &[]);
        let masters = &holders[0];
        assert_eq!(masters.who.describe(), "Group system:masters");
        assert_eq!(
            standing(masters, &masters.node_writes[0], false),
            Standing::Granter
        );
        let nodes = &holders[1];
        assert_eq!(nodes.who.describe(), "Group system:nodes");
        assert_eq!(nodes.node_writes[0].reach, Reach::OwnNode);
        assert_eq!(
            standing(nodes, &nodes.node_writes[0], false),
            Standing::System
        );
        assert_eq!(
            standing(nodes, &nodes.node_writes[1], true),
            Standing::HeldBack
        );
    }

    #[test]
    fn wildcards_status_and_missing_roles() {
        let roles = [
            role("star", &[], vec![rule(&["*"], &["*"], &["*"])]),
            role("status", &[], vec![rule(&[""], &["*/status"], &["update"])]),
        ];
        let bindings = [
            binding("star", "star", vec![subject("User", "root", None)]),
            binding("status", "status", vec![subject("User", "s", None)]),
            binding("ghost", "not-there", vec![subject("User", "g", None)]),
        ];
        let (holders, skipped) = node_writers(&roles, &bindings);
        let found = writers(&roles, &bindings);
        assert_eq!(
            found["User root"],
            [
                "create, patch, update nodes (all) via ClusterRoleBinding star → ClusterRole star",
                "patch, update nodes/status (all) via ClusterRoleBinding star → ClusterRole star",
            ]
        );
        assert_eq!(
            found["User s"],
            ["update nodes/status (all) via ClusterRoleBinding status → ClusterRole status"]
        );
        let root = holders.iter().find(|h| h.who == user("root")).unwrap();
        assert_eq!(
            root.write_grants,
            Some(Reach::All),
            "* covers write grants.nodegate.dev"
        );
        assert_eq!(
            standing(root, &root.node_writes[0], false),
            Standing::Granter
        );
        let s = holders.iter().find(|h| h.who == user("s")).unwrap();
        assert_eq!(
            standing(s, &s.node_writes[0], false),
            Standing::BeyondTheGranters
        );
        assert_eq!(standing(s, &s.node_writes[0], true), Standing::HeldBack);
        assert!(
            skipped
                .iter()
                .any(|s| s.contains("binds ClusterRole not-there"))
        );
    }

    #[test]
    fn granters_are_granters_only_on_the_nodes_their_grant_permission_names() {
        let write = |names: &[&str]| {
            named(
                rule(&[PERMISSION_GROUP], &[GRANTS_RESOURCE], &[WRITE_VERB]),
                names,
            )
        };
        let roles = [
            role(
                "gpu",
                &[],
                vec![
                    named(rule(&[""], &["nodes"], &["patch"]), &["gpu-1", "gpu-2"]),
                    write(&["gpu-1", "gpu-2"]),
                ],
            ),
            role(
                "short",
                &[],
                vec![
                    named(rule(&[""], &["nodes"], &["patch"]), &["gpu-1", "gpu-2"]),
                    write(&["gpu-1"]),
                ],
            ),
            role(
                "all-nodes",
                &[],
                vec![rule(&[""], &["nodes"], &["patch"]), write(&["gpu-1"])],
            ),
            role(
                "pruner",
                &[],
                vec![
                    rule(&[""], &["nodes"], &["patch"]),
                    rule(&[PERMISSION_GROUP], &[GRANTS_RESOURCE], &[PRUNE_VERB]),
                ],
            ),
        ];
        let bindings = [
            binding("gpu", "gpu", vec![subject("User", "carol", None)]),
            binding("short", "short", vec![subject("User", "dave", None)]),
            binding(
                "all-nodes",
                "all-nodes",
                vec![subject("User", "erin", None)],
            ),
            binding(
                "pruner",
                "pruner",
                vec![subject("ServiceAccount", "janitor", Some("ops"))],
            ),
        ];
        let (holders, _) = node_writers(&roles, &bindings);
        let get = |who: &Who| holders.iter().find(|h| &h.who == who).unwrap();
        let carol = get(&user("carol"));
        assert_eq!(
            carol.node_writes[0].describe(),
            "patch nodes on gpu-1, gpu-2"
        );
        assert_eq!(
            standing(carol, &carol.node_writes[0], false),
            Standing::Granter
        );
        let dave = get(&user("dave"));
        assert_eq!(
            standing(dave, &dave.node_writes[0], false),
            Standing::BeyondTheGranters
        );
        let erin = get(&user("erin"));
        assert_eq!(
            standing(erin, &erin.node_writes[0], false),
            Standing::BeyondTheGranters
        );
        let janitor = get(&Who::ServiceAccount {
            namespace: "ops".into(),
            name: "janitor".into(),
        });
        assert_eq!(janitor.prune_grants, Some(Reach::All));
        assert_eq!(
            standing(janitor, &janitor.node_writes[0], false),
            Standing::BeyondTheGranters,
            "prune is no write: without the guard, its patch can add grants"
        );
    }

    #[test]
    fn grant_permissions_through_two_bindings_add_up() {
        let roles = [
            role("patch", &[], vec![rule(&[""], &["nodes"], &["patch"])]),
            role(
                "write",
                &[],
                vec![rule(&[PERMISSION_GROUP], &[GRANTS_RESOURCE], &[WRITE_VERB])],
            ),
        ];
        let bindings = [
            binding("p", "patch", vec![subject("Group", "ops", None)]),
            binding("w", "write", vec![subject("Group", "ops", None)]),
        ];
        let (holders, _) = node_writers(&roles, &bindings);
        let ops = holders
            .iter()
            .find(|h| h.who.describe() == "Group ops")
            .unwrap();
        assert_eq!(standing(ops, &ops.node_writes[0], false), Standing::Granter);
    }

    #[test]
    fn only_kubernetes_own_identities_are_expected_system_identities() {
        let bootstrap = Through::Binding {
            binding: "system:controller:node-controller".into(),
            role: "system:controller:node-controller".into(),
            aggregated_from: None,
        };
        let sa = |ns: &str, name: &str| Who::ServiceAccount {
            namespace: ns.into(),
            name: name.into(),
        };
        assert!(
            expected_system_identity(&sa("kube-system", "node-controller"), &bootstrap).is_some()
        );
        assert!(
            expected_system_identity(&sa("kube-system", "intruder"), &bootstrap).is_none(),
            "another subject added to a bootstrap binding"
        );
        assert!(expected_system_identity(&sa("default", "node-controller"), &bootstrap).is_none());
        let custom = Through::Binding {
            binding: "system:controller:node-controller".into(),
            role: "cluster-admin".into(),
            aggregated_from: None,
        };
        assert!(expected_system_identity(&sa("kube-system", "node-controller"), &custom).is_none());
        assert!(expected_system_identity(&user(CONTROLLER_MANAGER_USER), &bootstrap).is_some());
        assert!(expected_system_identity(&user("system:node:n1"), &bootstrap).is_none());
        assert!(
            expected_system_identity(
                &Who::Group {
                    name: NODES_GROUP.into()
                },
                &Through::NodeAuthorizer
            )
            .is_some()
        );
    }

    #[test]
    fn under_the_guard_a_node_is_held_back_even_with_the_grant_permission() {
        let roles = [role("everything", &[], vec![rule(&["*"], &["*"], &["*"])])];
        let bindings = [binding(
            "nodes-everything",
            "everything",
            vec![
                subject("User", "system:node:n1", None),
                subject("User", "root", None),
            ],
        )];
        let (holders, _) = node_writers(&roles, &bindings);
        let node = holders
            .iter()
            .find(|h| h.who == user("system:node:n1"))
            .unwrap();
        assert_eq!(
            standing(node, &node.node_writes[0], false),
            Standing::Granter
        );
        assert_eq!(
            standing(node, &node.node_writes[0], true),
            Standing::HeldBack
        );
        let root = holders.iter().find(|h| h.who == user("root")).unwrap();
        assert_eq!(
            standing(root, &root.node_writes[0], true),
            Standing::Granter
        );
    }

    #[test]
    fn reaches_combine_and_cover() {
        let names = |n: &[&str]| Reach::Named(n.iter().map(|s| s.to_string()).collect());
        assert_eq!(names(&["a"]).union(names(&["b"])), names(&["a", "b"]));
        assert_eq!(names(&["a"]).union(Reach::All), Reach::All);
        assert!(Reach::All.covers(&Reach::OwnNode));
        assert!(!names(&["a"]).covers(&Reach::All));
        assert!(!names(&["a"]).covers(&Reach::OwnNode));
        assert!(names(&["a", "b"]).covers(&names(&["b"])));
        assert!(!names(&["a"]).covers(&names(&["a", "b"])));
    }
}
