//! The grant record shared by `keyctl`, `authorized-keys-cmd` and `node-exec`.
//!
//! A *grant* lets one SSH public key log in to one node as one login user until an expiry. Grants
//! are stored on the Node object, one annotation each, in the format documented in
//! `docs/grant-format.md`. This crate parses and validates that format at the trust boundary:
//! whatever is found on a Node is either a [`Grant`] that passed every check, or an
//! [`InvalidGrant`] that is reported and never used. A node's published SSH host keys
//! ([`host_keys`], `docs/host-key-format.md`) live under a prefix of their own, never a grant's.
//!
//! Nothing here talks to a cluster: there is no kube dependency, so that the login path stays
//! small. Talking to a cluster is `nodegate-cluster-client`'s business.

#![forbid(unsafe_code)]

pub mod expiry;
pub mod grant;
pub mod host_keys;
pub mod key;
pub mod node_grants;
pub mod node_name;
pub mod permissions;
pub mod prefix;
pub mod session_events;
pub mod user;

pub use expiry::Expiry;
pub use grant::{Grant, GrantError, GrantText};
pub use host_keys::{HOST_KEY_PREFIX, HostKey, HostKeyAlgorithm, KnownHostsHost, NodeHostKeys};
pub use key::{Fingerprint, FingerprintError, GrantKey, KeyError};
pub use node_grants::{InvalidGrant, NodeGrants};
pub use node_name::NodeName;
pub use prefix::AnnotationPrefix;
pub use user::LoginUser;
