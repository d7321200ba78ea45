//! Node packaging: the sshd drop-in library shared by the .deb, the RPM and install.sh, the
//! credential export, and (ignored unless `packaging/test-packages` runs it, after installing
//! the package on this machine) a real ssh login through the installed package.
//!
//! The library tests run the real `sshd -t`/`sshd -T` against configurations in a temp dir and
//! never touch `/etc/ssh`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chrono::Utc;
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::process::{Scratch, free_port, wait_until};
use nodegate_testkit::{Cluster, Validity, workspace_root};

const MARKER: &str = "# nodegate-node: managed by /usr/share/nodegate/nodegate-sshd.sh";
const OUR_COMMAND: &str = "/usr/libexec/nodegate/authorized-keys-cmd %u %f";

/// An sshd configuration of its own: `sshd_config` including `sshd_config.d/*.conf`.
struct SshdConfig {
    scratch: Scratch,
}

impl SshdConfig {
    fn new(main_extra: &str) -> Self {
        let scratch = Scratch::new("sshd-config");
        let dropins = scratch.join("sshd_config.d");
        fs::create_dir(&dropins).expect("create drop-in dir");
        scratch.write(
            "sshd_config",
            format!(
                "Include {}/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n{main_extra}",
                dropins.display()
            ),
        );
        Self { scratch }
    }

    fn main(&self) -> PathBuf {
        self.scratch.join("sshd_config")
    }

    fn dropin(&self, name: &str) -> PathBuf {
        self.scratch.join("sshd_config.d").join(name)
    }

    fn ours(&self) -> PathBuf {
        self.dropin("50-nodegate.conf")
    }

    /// Runs `nodegate-sshd.sh ACTION` from the source tree against this configuration.
    fn run_library(&self, action: &str) -> Output {
        let library = workspace_root().join("packaging/node/nodegate-sshd.sh");
        Command::new("sh")
            .arg(&library)
            .arg(action)
            .env("NODEGATE_SSHD_CONFIG", self.main())
            .env("NODEGATE_DROPIN_DIR", self.scratch.join("sshd_config.d"))
            .env(
                "NODEGATE_SHARE_DIR",
                workspace_root().join("packaging/node"),
            )
            .env("NODEGATE_SSHD_RELOAD", "no")
            .output()
            .expect("run sh")
    }

    /// What sshd itself considers the AuthorizedKeysCommand (`none` when unset).
    fn effective_command(&self) -> String {
        let out = Command::new("/usr/sbin/sshd")
            .arg("-T")
            .arg("-f")
            .arg(self.main())
            .output()
            .expect("run sshd -T");
        assert!(
            out.status.success(),
            "sshd -T failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("authorizedkeyscommand "))
            .unwrap_or("none")
            .to_owned()
    }

    /// The drop-in directory's files and contents, to compare before and after.
    fn snapshot(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = fs::read_dir(self.scratch.join("sshd_config.d"))
            .expect("read drop-in dir")
            .map(|e| {
                let e = e.expect("dir entry");
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read_to_string(e.path()).unwrap_or_default(),
                )
            })
            .collect();
        files.sort();
        files.push((
            "sshd_config".into(),
            fs::read_to_string(self.main()).expect("read sshd_config"),
        ));
        files
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn enable_installs_a_validated_dropin_and_disable_restores_the_previous_state() {
    let config = SshdConfig::new("");
    let before = config.snapshot();
    assert_eq!(config.effective_command(), "none");

    let out = config.run_library("enable");
    assert!(out.status.success(), "enable failed: {}", stderr(&out));
    let dropin = fs::read_to_string(config.ours()).expect("drop-in installed");
    assert!(
        dropin.starts_with(MARKER),
        "drop-in without marker:\n{dropin}"
    );
    assert_eq!(config.effective_command(), OUR_COMMAND);
    assert_eq!(fs::metadata(config.ours()).unwrap().mode() & 0o777, 0o644);
    let status = config.run_library("status");
    assert!(status.status.success(), "status: {}", stderr(&status));

    // Enabling again (a package upgrade) changes nothing.
    let again = config.run_library("enable");
    assert!(again.status.success());
    assert!(stderr(&again).contains("up to date"), "{}", stderr(&again));

    let out = config.run_library("disable");
    assert!(out.status.success(), "disable failed: {}", stderr(&out));
    assert_eq!(
        config.snapshot(),
        before,
        "disable must restore the previous files"
    );
    assert_eq!(config.effective_command(), "none");
    assert!(!config.run_library("status").status.success());
}

#[test]
fn another_authorized_keys_command_in_sshd_config_is_left_alone() {
    let config = SshdConfig::new(
        "AuthorizedKeysCommand /usr/bin/other-keys %u\nAuthorizedKeysCommandUser nobody\n",
    );
    let before = config.snapshot();
    let out = config.run_library("enable");
    assert!(
        out.status.success(),
        "a conflict must not fail the install: {}",
        stderr(&out)
    );
    let message = stderr(&out);
    assert!(
        message.contains("already has an AuthorizedKeysCommand")
            && message.contains("/usr/bin/other-keys")
            && message.contains("did NOT install"),
        "the message must say what is configured and what was not done:\n{message}"
    );
    assert_eq!(config.snapshot(), before);
    assert_eq!(config.effective_command(), "/usr/bin/other-keys %u");
    let status = config.run_library("status");
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("another AuthorizedKeysCommand"));
}

#[test]
fn another_authorized_keys_command_in_a_dropin_or_match_block_is_left_alone() {
    // sshd reads drop-ins in name order and keeps the first value: 10-vendor.conf would win
    // anyway, and one inside a Match block is invisible to `sshd -T`; both must stop us.
    for (name, text) in [
        (
            "10-vendor.conf",
            "AuthorizedKeysCommand=/opt/vendor/keys %u %k\n",
        ),
        (
            "90-match.conf",
            "Match User deploy\n    AuthorizedKeysCommand /opt/deploy/keys %u\n",
        ),
    ] {
        let config = SshdConfig::new("");
        fs::write(config.dropin(name), text).unwrap();
        let before = config.snapshot();
        let out = config.run_library("enable");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(name),
            "the message must name {name}:\n{}",
            stderr(&out)
        );
        assert_eq!(config.snapshot(), before, "{name}: nothing may change");
    }
    // `AuthorizedKeysCommand none` is no conflict.
    let config = SshdConfig::new("AuthorizedKeysCommand none\n");
    let out = config.run_library("enable");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(config.ours().exists(), "{}", stderr(&out));
}

#[test]
fn an_administrators_file_of_the_same_name_is_never_replaced_or_removed() {
    let config = SshdConfig::new("");
    fs::write(config.ours(), "# mine\nPermitRootLogin no\n").unwrap();
    let before = config.snapshot();
    let out = config.run_library("enable");
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("was not written by nodegate"),
        "{}",
        stderr(&out)
    );
    assert_eq!(config.snapshot(), before);
    let out = config.run_library("disable");
    assert!(out.status.success());
    assert_eq!(config.snapshot(), before);
}

#[test]
fn a_configuration_that_sshd_already_refuses_is_not_touched() {
    let config = SshdConfig::new("NoSuchSshdKeyword yes\n");
    let before = config.snapshot();
    let out = config.run_library("enable");
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("does not pass 'sshd -t'"),
        "{}",
        stderr(&out)
    );
    assert_eq!(config.snapshot(), before);
}

#[test]
fn a_dropin_dir_sshd_does_not_include_is_reported() {
    let config = SshdConfig::new("");
    // Replace the Include with nothing: sshd never reads the drop-in.
    fs::write(config.main(), "UsePAM yes\n").unwrap();
    let out = config.run_library("enable");
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("does not read") && stderr(&out).contains("Include"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn export_node_kubeconfig_embeds_the_kubelet_credentials() {
    let cluster = Cluster::shared();
    let node = "export-kubeconfig-node";
    cluster.create_node(node);
    // A kubelet-style kubeconfig: CA, certificate and key are paths to files.
    let kubelet = cluster.node_kubeconfig(node, Validity::Current);
    let scratch = Scratch::new("export");
    let exported = scratch.join("node.kubeconfig");
    let out = Command::new(workspace_root().join("packaging/node/export-node-kubeconfig"))
        .arg(&kubelet)
        .env("NODEGATE_NODE_KUBECONFIG", &exported)
        .output()
        .expect("run export-node-kubeconfig");
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let text = fs::read_to_string(&exported).expect("exported kubeconfig");
    for field in ["certificate-authority", "client-certificate", "client-key"] {
        assert!(
            text.contains(&format!("{field}-data: ")),
            "{field} not embedded:\n{text}"
        );
        assert!(
            !text.contains(&format!("{field}: ")),
            "{field} still a path:\n{text}"
        );
    }
    assert_eq!(fs::metadata(&exported).unwrap().mode() & 0o777, 0o640);
    // The copy alone (the original files are not needed) reads the node as that node.
    let get = nodegate_testkit::cluster::kubectl_as(
        &exported,
        &["get", "node", node, "-o", "name"],
        None,
    );
    assert!(get.status.success(), "{}", stderr(&get));

    // Bad input: a clear error and no output file.
    let missing = scratch.join("missing.kubeconfig");
    let out = Command::new(workspace_root().join("packaging/node/export-node-kubeconfig"))
        .arg(&missing)
        .env("NODEGATE_NODE_KUBECONFIG", scratch.join("never"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cannot read"), "{}", stderr(&out));
    assert!(!scratch.join("never").exists());
}

// ---- The installed package (run by packaging/test-packages) ----

/// Where the package (or `install.sh --prefix P`: `P/libexec/nodegate`) put the commands;
/// packaging/test-packages says so in `NODEGATE_TEST_LIBEXEC` for installs under another prefix.
fn installed_libexec() -> PathBuf {
    std::env::var_os("NODEGATE_TEST_LIBEXEC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/libexec/nodegate"))
}

fn installed_command() -> PathBuf {
    installed_libexec().join("authorized-keys-cmd")
}

fn ssh_login(scratch: &Scratch, port: u16, key: &Path) -> Output {
    Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
        ])
        .args(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            scratch.join("known_hosts").display()
        ))
        .arg("-i")
        .arg(key)
        .args([
            "-p",
            &port.to_string(),
            "root@127.0.0.1",
            "echo nodegate-login-ok",
        ])
        .output()
        .expect("run ssh")
}

fn logged_in(out: &Output) -> bool {
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "nodegate-login-ok"
}

fn as_nodegate(args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "nodegate", "--"])
        .arg(installed_command())
        .args(args)
        .output()
        .expect("run runuser")
}

#[test]
#[ignore = "needs the nodegate-node package (or install.sh) installed on this machine: run packaging/test-packages"]
fn ssh_login_through_the_installed_package() {
    let command = installed_command();
    assert!(
        command.is_file(),
        "{} is not installed: run packaging/test-packages",
        command.display()
    );
    let dropin = fs::read_to_string("/etc/ssh/sshd_config.d/50-nodegate.conf")
        .expect("the package installed the sshd drop-in");
    assert!(
        dropin.contains(&format!(
            "AuthorizedKeysCommand {} %u %f",
            command.display()
        )),
        "the drop-in does not run {}:\n{dropin}",
        command.display()
    );

    let cluster = Cluster::start();
    let node = "packaged-node";
    cluster.create_node(node);

    // What nodegate-node-credentials.service does when the kubelet's credentials change.
    let kubelet = cluster.node_kubeconfig(node, Validity::Current);
    let out = Command::new(installed_libexec().join("export-node-kubeconfig"))
        .arg(&kubelet)
        .output()
        .unwrap();
    assert!(out.status.success(), "export failed: {}", stderr(&out));
    let exported = fs::metadata("/var/lib/nodegate/node.kubeconfig").expect("exported kubeconfig");
    let state_dir = fs::metadata("/var/lib/nodegate").unwrap();
    assert_eq!(exported.mode() & 0o777, 0o640);
    assert_eq!(exported.uid(), 0);
    assert_eq!(
        exported.gid(),
        state_dir.gid(),
        "group nodegate may read it"
    );
    assert_eq!(state_dir.mode() & 0o777, 0o750);

    // The command, as the user sshd runs it as, finds the exported credentials by itself and
    // can write its cache in the packaged state dir.
    let refresh = as_nodegate(&["refresh"]);
    assert!(
        refresh.status.success(),
        "authorized-keys-cmd refresh as nodegate failed: {}",
        stderr(&refresh)
    );

    // sshd with the machine's own configuration (and so the drop-in), on a loopback port.
    let scratch = Scratch::new("packaged-sshd");
    fs::create_dir_all("/run/sshd").expect("sshd's privilege separation dir");
    let key = scratch.join("id_ed25519");
    let keygen = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "packaging-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(keygen.success());
    let port = free_port();
    let mut sshd = scratch.spawn(
        "sshd",
        Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", "/etc/ssh/sshd_config"])
            .args([
                "-o",
                &format!("Port={port}"),
                "-o",
                "ListenAddress=127.0.0.1",
            ])
            .arg("-o")
            .arg(format!("PidFile={}", scratch.join("sshd.pid").display())),
    );
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "sshd did not listen: {}",
        sshd.log_tail(20)
    );

    let denied = ssh_login(&scratch, port, &key);
    assert!(!logged_in(&denied), "logged in without a grant");

    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let now = Utc::now();
    let grant = Grant {
        user: LoginUser::new("root").unwrap(),
        key: GrantKey::parse(public.trim()).unwrap(),
        expiry: Expiry::At(now + chrono::Duration::hours(1)),
        granted_by: GrantText::new("granted-by", "packaging-test").unwrap(),
        granted_at: now,
        reason: None,
    };
    let annotation = grant.annotation_key(&AnnotationPrefix::default());
    cluster.set_node_annotation(node, &annotation, Some(&grant.annotation_value()));
    // Within the freshness window the previous (empty) answer may still be served.
    let mut last = denied;
    assert!(
        wait_until(Duration::from_secs(30), || {
            last = ssh_login(&scratch, port, &key);
            logged_in(&last)
        }),
        "no login with a grant: {}\nsshd log:\n{}",
        stderr(&last),
        sshd.log_tail(30)
    );
    let cache = fs::metadata("/var/lib/nodegate/grants-cache.sqlite").expect("cache written");
    assert_eq!(
        cache.uid(),
        state_dir.uid(),
        "the cache belongs to user nodegate"
    );

    // The API server is down: the cache in the packaged state dir answers.
    cluster.stop_apiserver();
    std::thread::sleep(Duration::from_secs(6)); // past the freshness window
    let during_outage = ssh_login(&scratch, port, &key);
    cluster.start_apiserver();
    assert!(
        logged_in(&during_outage),
        "no login from the cache during an outage: {}\nsshd log:\n{}",
        stderr(&during_outage),
        sshd.log_tail(30)
    );

    cluster.set_node_annotation(node, &annotation, None);
    assert!(
        wait_until(Duration::from_secs(30), || !logged_in(&ssh_login(
            &scratch, port, &key
        ))),
        "still logged in after the grant was revoked"
    );
    scratch.stop(&mut sshd, Duration::from_secs(5));
}
