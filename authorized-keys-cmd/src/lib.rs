//! `authorized-keys-cmd`: the command sshd runs on every node to learn which keys may log in.
//!
//! It reads the own Node's grant annotations with the node's credentials (one HTTPS GET of the
//! Node's metadata), prints the valid, unexpired grants for the login user as `authorized_keys`
//! lines, and keeps a SQLite cache so that logins keep working while the API is down. See
//! `docs/authorized-keys-cmd.md`.
//!
//! Small on purpose: no async runtime and no Kubernetes client library on the login path.

#![forbid(unsafe_code)]

pub mod agent;
pub mod answer;
pub mod api;
pub mod cache;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod export_kubeconfig;
pub mod identity;
pub mod kubeconfig;
pub mod logger;
pub mod perms;
pub mod policy;
pub mod publish_host_keys;
pub mod refresh;
