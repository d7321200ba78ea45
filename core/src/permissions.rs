//! nodegate's own permissions, and the admission guard that enforces them.
//!
//! RBAC grants `patch nodes`, never "patch these annotations", so nodegate names its own
//! permissions in an API group of its own. No API server serves `nodegate.dev`: the resources are
//! *virtual*, checked by name only. ClusterRoles grant them (`packaging/rbac/keyctl-granter.yaml`,
//! `packaging/janitor.yaml`), keyctl asks for them with a SelfSubjectAccessReview before writing,
//! and the admission guard (`packaging/admission/nodegate-grant-guard.yaml`, a
//! ValidatingAdmissionPolicy, docs/admission-guard.md) refuses a change of grant annotations by
//! anyone who does not hold them. Both resources are cluster-scoped; a ClusterRole limits them
//! to some nodes with `resourceNames` (the node names).

/// The API group of nodegate's own permissions.
pub const PERMISSION_GROUP: &str = "nodegate.dev";

/// The resource that stands for the grant annotations of a node (its name is the node's).
pub const GRANTS_RESOURCE: &str = "grants";

/// The resource that stands for the host key annotations of a node (its name is the node's).
pub const HOSTKEYS_RESOURCE: &str = "hostkeys";

/// Add, change and remove grants on a node: `keyctl grant`, `revoke`, `ssh`; and host keys.
pub const WRITE_VERB: &str = "write";

/// Remove grants only, never add or change one: the janitor, and `keyctl prune`.
pub const PRUNE_VERB: &str = "prune";

/// The name of the guard's ValidatingAdmissionPolicy (`admissionregistration.k8s.io/v1`).
pub const GUARD_POLICY: &str = "nodegate-grant-guard";

/// The name of the ValidatingAdmissionPolicyBinding that puts the guard in force.
pub const GUARD_BINDING: &str = "nodegate-grant-guard";

/// The first Kubernetes minor version that serves ValidatingAdmissionPolicy in
/// `admissionregistration.k8s.io/v1` (GA).
pub const GUARD_MIN_VERSION: &str = "1.30";
