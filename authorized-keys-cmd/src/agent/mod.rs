//! `nodegate-agent`: the node's long-running service. Access ends when the grant ends.
//!
//! - [`watch`]: one watch on the own Node; each change goes to the login path's cache at once,
//!   and while the watch is live the cache is confirmed every second, so `authorized-keys-cmd`
//!   answers logins from it without asking the API (see `policy::before_api`).
//! - [`sessions`], [`enforce`], [`ending`]: the live sshd sessions, which grant each was
//!   authenticated with (sshd's `ExposeAuthInfo`), and ending those whose grant was revoked or
//!   expired, after a warning on their terminal.
//! - [`events`]: logins and logouts through a grant as Events about the Node.
//!
//! The login path does not depend on any of this: when the agent is stopped or broken, its
//! confirmations stop, and within the freshness window logins ask the API as before.
//!
//! Threads: the watch loop; a signal thread; an Event poster (a slow API server never delays
//! ending a session); and the main loop here, which owns the cache and the session records.

pub mod ending;
pub mod enforce;
pub mod events;
pub mod service;
pub mod sessions;
pub mod watch;

pub use service::{main, run};
