//! Test harness for nodegate: real components, started by the tests themselves.
//!
//! - [`Cluster`]: etcd + kube-apiserver (RBAC, Node authorizer, NodeRestriction), optionally
//!   kube-controller-manager; certificates and kubeconfigs for any identity.
//! - [`process::Scratch`]: temp dirs and daemons that are cleaned up when the test process ends,
//!   however it ends.
//! - [`proxy::CuttableProxy`]: a loopback TCP proxy whose connections a test can cut.
//! - [`terminal::Terminal`]: a pseudo-terminal to run a program on, type into and resize.
//! - [`output::Checked`]: a finished command's output, with assertions that show it all.
//! - [`fixtures`]: grants as keyctl writes them.
//!
//! Prerequisites are installed by `testkit/install-deps`. The tests that use this harness are in
//! `tests/`, one file per part.

pub mod cluster;
pub mod fixtures;
pub mod kubelet;
pub mod output;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod sshd;
pub mod terminal;

pub use cluster::Cluster;
pub use pki::Validity;

use std::path::PathBuf;

/// The path of a binary of this workspace, built by `cargo build` into the same target dir as
/// the running test. Binaries of the test's own package are better found via
/// `env!("CARGO_BIN_EXE_<name>")`; this is for the others.
pub fn workspace_bin(name: &str) -> PathBuf {
    // NODEGATE_BIN_DIR runs the tests against other builds of the binaries, e.g. an older
    // commit's, to show that a new test fails there.
    let profile_dir = match std::env::var_os("NODEGATE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current test executable");
            // target/<profile>/deps/<test>-<hash>
            exe.parent()
                .and_then(|deps| deps.parent())
                .expect("test executable lives in target/<profile>/deps")
                .to_owned()
        }
    };
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} not found: build the workspace binaries first (cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// The workspace root (where `Cargo.toml` with `[workspace]` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ has a parent")
        .to_owned()
}

/// A test binary's shared setup, run once: later callers get the same value, and if the setup
/// panicked, every test fails at once with the first failure's message (instead of each
/// retrying a setup that takes minutes to time out).
pub fn shared_setup<T: Sync + Send>(
    cell: &'static std::sync::OnceLock<Result<T, String>>,
    set_up: fn() -> T,
) -> &'static T {
    let setup = cell.get_or_init(|| {
        std::panic::catch_unwind(set_up).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown panic".to_owned())
        })
    });
    match setup {
        Ok(value) => value,
        Err(message) => panic!("the test setup failed: {message}"),
    }
}
