//! Node packaging: the sshd drop-in library shared by the .deb, the RPM and install.sh (the
//! AuthorizedKeysCommand drop-in and the ExposeAuthInfo one nodegate-agent needs), the
//! hardening of nodegate-agent.service, the
//! credential export (`authorized-keys-cmd export-kubeconfig`), and (ignored unless
//! `packaging/test-packages` runs it, after installing the package on this machine) a real ssh
//! login through the installed package, with the credentials exported as the packaged unit does.
//!
//! The library tests run the real `sshd -t`/`sshd -T` against configurations in a temp dir and
//! never touch `/etc/ssh`.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::output::Checked;
use nodegate_testkit::process::{Scratch, free_port, wait_until};
use nodegate_testkit::{Cluster, Validity, workspace_bin, workspace_root};

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

    fn ours_expose(&self) -> PathBuf {
        self.dropin("51-nodegate-expose-auth-info.conf")
    }

    /// Runs `nodegate-sshd.sh ACTION` from the source tree against this configuration.
    fn run_library(&self, action: &str) -> Checked {
        let library = workspace_root().join("packaging/node/nodegate-sshd.sh");
        Checked::run(
            Command::new("sh")
                .arg(&library)
                .arg(action)
                .env("NODEGATE_SSHD_CONFIG", self.main())
                .env("NODEGATE_DROPIN_DIR", self.scratch.join("sshd_config.d"))
                .env(
                    "NODEGATE_SHARE_DIR",
                    workspace_root().join("packaging/node"),
                )
                .env("NODEGATE_SSHD_RELOAD", "no"),
        )
    }

    /// What sshd itself considers the AuthorizedKeysCommand (`none` when unset).
    fn effective_command(&self) -> String {
        self.effective("authorizedkeyscommand", &[])
            .unwrap_or_else(|| "none".to_owned())
    }

    /// sshd's effective value of `keyword` (lower case, as `sshd -T` prints it), for a
    /// connection described by `-C` `connection` (e.g. `user=deploy,...`) when given.
    fn effective(&self, keyword: &str, connection: &[&str]) -> Option<String> {
        let mut command = Command::new("/usr/sbin/sshd");
        command.arg("-T").arg("-f").arg(self.main());
        if !connection.is_empty() {
            command.arg("-C").arg(connection.join(","));
        }
        let out = command.output().expect("run sshd -T");
        assert!(
            out.status.success(),
            "sshd -T failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            l.strip_prefix(keyword)?
                .strip_prefix(' ')
                .map(str::to_owned)
        })
    }

    /// `ExposeAuthInfo` as sshd applies it globally.
    fn effective_expose(&self) -> String {
        self.effective("exposeauthinfo", &[])
            .expect("this sshd knows ExposeAuthInfo (OpenSSH 7.6 or later)")
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

#[test]
fn enable_installs_a_validated_dropin_and_disable_restores_the_previous_state() {
    let config = SshdConfig::new("");
    let before = config.snapshot();
    assert_eq!(config.effective_command(), "none");

    let out = config.run_library("enable");
    assert!(
        out.status.success(),
        "enable failed: {}",
        out.stderr.clone()
    );
    let dropin = fs::read_to_string(config.ours()).expect("drop-in installed");
    assert!(
        dropin.starts_with(MARKER),
        "drop-in without marker:\n{dropin}"
    );
    assert_eq!(config.effective_command(), OUR_COMMAND);
    assert_eq!(fs::metadata(config.ours()).unwrap().mode() & 0o777, 0o644);
    // ExposeAuthInfo was not set: nodegate-agent gets it, in a drop-in of its own.
    let expose =
        fs::read_to_string(config.ours_expose()).expect("ExposeAuthInfo drop-in installed");
    assert!(
        expose.starts_with(MARKER),
        "drop-in without marker:\n{expose}"
    );
    assert_eq!(
        fs::metadata(config.ours_expose()).unwrap().mode() & 0o777,
        0o644
    );
    assert_eq!(config.effective_expose(), "yes");
    let status = config.run_library("status");
    assert!(status.status.success(), "status: {}", status.stderr.clone());
    assert!(
        status.stdout.contains("ExposeAuthInfo: yes"),
        "{}",
        status.stdout
    );

    // Enabling again (a package upgrade) changes nothing.
    let again = config.run_library("enable");
    assert!(again.status.success());
    assert!(
        again.stderr.clone().contains("up to date") && !again.stderr.clone().contains("installed"),
        "{}",
        again.stderr.clone()
    );

    let out = config.run_library("disable");
    assert!(
        out.status.success(),
        "disable failed: {}",
        out.stderr.clone()
    );
    assert_eq!(
        config.snapshot(),
        before,
        "disable must restore the previous files"
    );
    assert_eq!(config.effective_command(), "none");
    assert_eq!(config.effective_expose(), "no");
    assert!(!config.run_library("status").status.success());
}

#[test]
fn an_expose_auth_info_the_operator_set_is_left_alone() {
    // sshd keeps the first value it reads and the drop-ins come first, so a drop-in of ours
    // would override sshd_config's own line: any explicit setting, yes or no, stays the only one.
    for (where_, text, value) in [
        ("sshd_config", "ExposeAuthInfo yes\n", "yes"),
        ("10-site.conf", "ExposeAuthInfo=yes\n", "yes"),
        ("sshd_config", "ExposeAuthInfo no\n", "no"),
        ("20-site.conf", "  exposeauthinfo \"no\"\n", "no"),
    ] {
        let config = if where_ == "sshd_config" {
            SshdConfig::new(text)
        } else {
            let config = SshdConfig::new("");
            fs::write(config.dropin(where_), text).unwrap();
            config
        };
        let out = config.run_library("enable");
        let message = out.stderr.clone();
        assert!(out.status.success(), "{where_}: {message}");
        // The login path is still turned on; only the ExposeAuthInfo drop-in is not added.
        assert_eq!(
            config.effective_command(),
            OUR_COMMAND,
            "{where_}: {message}"
        );
        assert!(
            !config.ours_expose().exists(),
            "{where_} sets it: {message}"
        );
        assert_eq!(config.effective_expose(), value, "{where_}: {message}");
        assert!(
            message.contains(where_),
            "the message must name {where_}:\n{message}"
        );
        if value == "no" {
            assert!(
                message.contains("cannot end live sessions") && message.contains("did NOT add"),
                "an explicit no must be reported with what it costs:\n{message}"
            );
        } else {
            assert!(message.contains("already set"), "{where_}: {message}");
        }
        let status = config.run_library("status");
        assert!(
            status.stdout.contains("set by the operator"),
            "{}",
            status.stdout
        );
        // Removal takes out our drop-in only: the operator's setting stays in force.
        let before_disable = fs::read_to_string(config.main()).unwrap();
        assert!(config.run_library("disable").status.success());
        assert_eq!(config.effective_expose(), value);
        assert_eq!(fs::read_to_string(config.main()).unwrap(), before_disable);
    }
}

#[test]
fn an_expose_auth_info_no_set_after_our_install_wins_at_the_next_enable() {
    // An upgrade (enable again) after the operator turned it off in sshd_config: our drop-in,
    // read first, would keep overriding that, so it goes.
    let config = SshdConfig::new("");
    assert!(config.run_library("enable").status.success());
    assert!(config.ours_expose().exists());
    let mut main = fs::read_to_string(config.main()).unwrap();
    main.push_str("ExposeAuthInfo no\n");
    fs::write(config.main(), main).unwrap();
    assert_eq!(config.effective_expose(), "yes", "ours is read first");
    let out = config.run_library("enable");
    assert!(out.status.success(), "{}", out.stderr.clone());
    assert!(!config.ours_expose().exists(), "{}", out.stderr.clone());
    assert_eq!(config.effective_expose(), "no");
    assert!(config.ours().exists(), "the command drop-in stays");
}

#[test]
fn expose_auth_info_in_a_match_block_stays_in_force_for_its_users() {
    let config = SshdConfig::new("Match User deploy\n    ExposeAuthInfo no\n");
    let out = config.run_library("enable");
    let message = out.stderr.clone();
    assert!(out.status.success(), "{message}");
    assert!(config.ours_expose().exists(), "{message}");
    assert!(
        message.contains("Match") && message.contains("ExposeAuthInfo no"),
        "the Match block's setting must be reported:\n{message}"
    );
    assert_eq!(config.effective_expose(), "yes");
    let connection = |user: &str| {
        [
            format!("user={user}"),
            "host=client".to_owned(),
            "addr=192.0.2.1".to_owned(),
            "laddr=192.0.2.2".to_owned(),
            "lport=22".to_owned(),
        ]
    };
    let deploy = connection("deploy");
    let deploy: Vec<&str> = deploy.iter().map(String::as_str).collect();
    let alice = connection("alice");
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    assert_eq!(
        config.effective("exposeauthinfo", &deploy).as_deref(),
        Some("no")
    );
    assert_eq!(
        config.effective("exposeauthinfo", &alice).as_deref(),
        Some("yes")
    );
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
        out.stderr.clone()
    );
    let message = out.stderr.clone();
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
    assert!(status.stdout.contains("another AuthorizedKeysCommand"));
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
        assert!(out.status.success(), "{}", out.stderr.clone());
        assert!(
            out.stderr.clone().contains(name),
            "the message must name {name}:\n{}",
            out.stderr.clone()
        );
        assert_eq!(config.snapshot(), before, "{name}: nothing may change");
    }
    // `AuthorizedKeysCommand none` is no conflict.
    let config = SshdConfig::new("AuthorizedKeysCommand none\n");
    let out = config.run_library("enable");
    assert!(out.status.success(), "{}", out.stderr.clone());
    assert!(config.ours().exists(), "{}", out.stderr.clone());
}

#[test]
fn an_administrators_file_of_the_same_name_is_never_replaced_or_removed() {
    let config = SshdConfig::new("");
    fs::write(config.ours(), "# mine\nPermitRootLogin no\n").unwrap();
    let before = config.snapshot();
    let out = config.run_library("enable");
    assert!(out.status.success());
    assert!(
        out.stderr.clone().contains("was not written by nodegate"),
        "{}",
        out.stderr.clone()
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
        out.stderr.clone().contains("does not pass 'sshd -t'"),
        "{}",
        out.stderr.clone()
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
        out.stderr.clone().contains("does not read") && out.stderr.clone().contains("Include"),
        "{}",
        out.stderr.clone()
    );
}

/// The `KEY=VALUE` lines of a unit file, in order (comments and section headers left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn the_agent_unit_is_hardened_as_documented() {
    let path = workspace_root().join("packaging/node/systemd/nodegate-agent.service");
    let text = fs::read_to_string(&path).expect("nodegate-agent.service");
    let settings = unit_settings(&text);
    let values = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    for (key, want) in [
        ("Type", "simple"),
        ("ExecStart", "/usr/libexec/nodegate/nodegate-agent"),
        ("Restart", "always"),
        ("RestartSec", "5s"),
        ("StartLimitIntervalSec", "0"),
        (
            "After",
            "network-online.target nodegate-node-credentials.service",
        ),
        ("WantedBy", "multi-user.target"),
        ("User", "nodegate"),
        ("Group", "nodegate"),
        ("SupplementaryGroups", "tty"),
        (
            "AmbientCapabilities",
            "CAP_KILL CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
        ),
        (
            "CapabilityBoundingSet",
            "CAP_KILL CAP_SYS_PTRACE CAP_DAC_READ_SEARCH",
        ),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/nodegate"),
        ("ProtectHome", "read-only"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictRealtime", "yes"),
        ("SystemCallArchitectures", "native"),
        ("ProtectClock", "yes"),
        ("ProtectHostname", "yes"),
        ("RestrictNamespaces", "yes"),
    ] {
        assert_eq!(values(key), [want], "{key}= in {}", path.display());
    }
    // ptrace(2) and the other ways CAP_SYS_PTRACE writes into processes are filtered out.
    let filters = values("SystemCallFilter");
    assert!(filters.contains(&"@system-service"), "{filters:?}");
    let denied = filters
        .iter()
        .filter_map(|f| f.strip_prefix('~'))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>();
    for call in ["@debug", "@privileged", "process_vm_writev"] {
        assert!(denied.contains(&call), "{call} not denied: {filters:?}");
    }
    // What would hide sessions from the agent or run it without its capabilities.
    for key in [
        "PrivateTmp",
        "ProtectProc",
        "ProcSubset",
        "PrivateUsers",
        "DynamicUser",
    ] {
        assert!(
            values(key).is_empty(),
            "{key}= must not be set: {:?}",
            values(key)
        );
    }

    // systemd itself: the unit loads without a complaint, and its exposure stays as low as these
    // settings make it (2.5 on systemd 252; a setting lost would raise it). The ExecStart path
    // is pointed at an executable that exists, as install.sh --prefix does.
    let scratch = Scratch::new("agent-unit");
    let binary = scratch.join("nodegate-agent");
    fs::copy("/bin/true", &binary).expect("copy /bin/true");
    let unit = scratch.write(
        "nodegate-agent.service",
        text.replace(
            "/usr/libexec/nodegate",
            scratch.path().to_str().expect("a UTF-8 temp dir"),
        ),
    );
    let verify = Checked::run(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit),
    );
    assert!(
        verify.success() && verify.stderr.clone().trim().is_empty(),
        "systemd-analyze verify: {}",
        verify.stderr.clone()
    );
    let security = Checked::run(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--man=no", "--threshold=30"])
            .arg(&unit),
    );
    assert!(
        security.success(),
        "systemd-analyze security: exposure above 3.0:\n{}",
        security.stdout
    );
}

/// The gid of `name` in /etc/group.
fn group_gid(name: &str) -> u32 {
    fs::read_to_string("/etc/group")
        .expect("read /etc/group")
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no group {name} in /etc/group"))
}

fn export_kubeconfig(command: &Path, args: &[&OsStr]) -> Checked {
    Checked::run(Command::new(command).arg("export-kubeconfig").args(args))
}

#[test]
fn export_kubeconfig_embeds_the_kubelet_credentials() {
    let command = workspace_bin("authorized-keys-cmd");
    let cluster = Cluster::shared();
    let node = "export-kubeconfig-node";
    cluster.create_node(node);
    // A kubelet-style kubeconfig: CA, certificate and key are paths to files (certificate and
    // key in one file, as kubelet-client-current.pem).
    let kubelet = cluster.node_kubeconfig(node, Validity::Current);
    let scratch = Scratch::new("export");
    let exported = scratch.join("node.kubeconfig");
    // Any group but root's shows that the group is set; `daemon` is in every Debian base system.
    let group = "daemon";
    let args = [
        OsStr::new("--from"),
        kubelet.as_os_str(),
        OsStr::new("--to"),
        exported.as_os_str(),
        OsStr::new("--group"),
        OsStr::new(group),
    ];
    let out = export_kubeconfig(&command, &args);
    assert!(
        out.status.success(),
        "export failed: {}",
        out.stderr.clone()
    );
    assert!(
        out.stderr.clone().contains("wrote"),
        "{}",
        out.stderr.clone()
    );
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
    let meta = fs::symlink_metadata(&exported).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(meta.uid(), fs::metadata("/proc/self").unwrap().uid());
    assert_eq!(meta.gid(), group_gid(group), "group {group} may read it");
    // The copy alone (the original files are not needed) reads the node as that node, with
    // kubectl and with the login path's own TLS client.
    let get = Checked::of(
        "kubectl get node",
        nodegate_testkit::cluster::kubectl_as(
            &exported,
            &["get", "node", node, "-o", "name"],
            None,
        ),
    );
    assert!(get.status.success(), "{}", get.stderr.clone());
    let config = scratch.write("authorized-keys-cmd.toml", "");
    let refresh = Checked::run(
        Command::new(&command)
            .arg("--config")
            .arg(&config)
            .arg("--kubeconfig")
            .arg(&exported)
            .arg("--cache")
            .arg(scratch.join("cache.sqlite"))
            .arg("refresh"),
    );
    assert!(
        refresh.status.success(),
        "refresh with the exported kubeconfig: {}",
        refresh.stderr.clone()
    );

    // The same credentials again (the path unit fires on every change in the kubelet's pki
    // directory): the file, and so its inode, which the cache keys on, stays.
    let again = export_kubeconfig(&command, &args);
    assert!(again.status.success(), "{}", again.stderr.clone());
    assert!(
        again.stderr.clone().contains("up to date"),
        "{}",
        again.stderr.clone()
    );
    assert_eq!(fs::metadata(&exported).unwrap().ino(), meta.ino());

    // A symbolic link at the destination is neither followed nor replaced.
    let target = scratch.write("elsewhere", "not to be touched");
    let linked = scratch.join("linked.kubeconfig");
    std::os::unix::fs::symlink(&target, &linked).unwrap();
    let out = export_kubeconfig(
        &command,
        &[
            OsStr::new("--from"),
            kubelet.as_os_str(),
            OsStr::new("--to"),
            linked.as_os_str(),
            OsStr::new("--group"),
            OsStr::new(group),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr.clone());
    assert!(
        out.stderr.clone().contains("is a symbolic link"),
        "{}",
        out.stderr.clone()
    );
    assert_eq!(fs::read_to_string(&target).unwrap(), "not to be touched");
    assert!(fs::symlink_metadata(&linked).unwrap().is_symlink());

    // Bad input: one clear error, exit 1, and no output file.
    let missing = scratch.join("missing.kubeconfig");
    let never = scratch.join("never");
    let out = export_kubeconfig(
        &command,
        &[
            OsStr::new("--from"),
            missing.as_os_str(),
            OsStr::new("--to"),
            never.as_os_str(),
            OsStr::new("--group"),
            OsStr::new(group),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr.clone());
    assert!(
        out.stderr.clone().contains("cannot read"),
        "{}",
        out.stderr.clone()
    );
    assert_eq!(
        out.stderr.clone().lines().count(),
        1,
        "{}",
        out.stderr.clone()
    );
    assert!(!never.exists());
    // An option of the login path: a usage error (exit 2), nothing written.
    let out = export_kubeconfig(
        &command,
        &[
            OsStr::new("--kubeconfig"),
            kubelet.as_os_str(),
            OsStr::new("--to"),
            never.as_os_str(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr.clone());
    assert!(
        out.stderr.clone().contains("--from"),
        "{}",
        out.stderr.clone()
    );
    assert!(!never.exists());
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

/// The `ExecStart=` of an installed unit, and its `CapabilityBoundingSet=` as setpriv's
/// `,+cap,+cap` list.
fn installed_unit_command(unit: &str) -> (String, String) {
    let dirs = [
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system",
    ];
    let text = dirs
        .iter()
        .find_map(|d| fs::read_to_string(Path::new(d).join(unit)).ok())
        .unwrap_or_else(|| panic!("{unit} is not installed in any of {dirs:?}"));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let exec_start = value("ExecStart").unwrap_or_else(|| panic!("{unit} has no ExecStart"));
    assert!(
        exec_start.starts_with(installed_command().to_str().expect("a UTF-8 path")),
        "{unit} runs {exec_start}, not {}",
        installed_command().display()
    );
    let capabilities = value("CapabilityBoundingSet")
        .unwrap_or_else(|| panic!("{unit} has no CapabilityBoundingSet"))
        .split_whitespace()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    (exec_start, capabilities)
}

/// nodegate-agent as its installed unit runs it, as far as that is possible without systemd: its
/// `ExecStart=` (with `-v`), as its `User=`, `Group=` and `SupplementaryGroups=`, with exactly its
/// `AmbientCapabilities=` and `CapabilityBoundingSet=`, `NoNewPrivileges=`, and an environment as
/// empty as systemd's. (Its file system and system call restrictions need systemd's namespace
/// and seccomp setup; systemd-analyze checks those in packaging/test-packages.)
fn agent_as_its_unit_runs_it() -> Command {
    let dirs = [
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system",
    ];
    let unit = "nodegate-agent.service";
    let text = dirs
        .iter()
        .find_map(|d| fs::read_to_string(Path::new(d).join(unit)).ok())
        .unwrap_or_else(|| panic!("{unit} is not installed in any of {dirs:?}"));
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{unit} has no {key}="))
            .to_owned()
    };
    let exec_start = value("ExecStart");
    let agent = installed_libexec().join("nodegate-agent");
    assert_eq!(exec_start, agent.to_str().expect("a UTF-8 path"), "{unit}");
    let caps = |key: &str| -> String {
        value(key)
            .split_whitespace()
            .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect()
    };
    let mut command = Command::new("setpriv");
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .arg(format!("--reuid={}", value("User")))
        .arg(format!("--regid={}", value("Group")))
        .arg(format!(
            "--groups={}",
            value("SupplementaryGroups").replace(' ', ",")
        ))
        .arg(format!("--inh-caps=-all{}", caps("AmbientCapabilities")))
        .arg(format!(
            "--ambient-caps=-all{}",
            caps("AmbientCapabilities")
        ))
        .arg(format!(
            "--bounding-set=-all{}",
            caps("CapabilityBoundingSet")
        ));
    assert_eq!(value("NoNewPrivileges"), "yes");
    command
        .arg("--no-new-privs")
        .arg("--")
        .arg(exec_start)
        .arg("-v");
    command
}

fn ssh_login(scratch: &Scratch, port: u16, key: &Path) -> Checked {
    Checked::run(
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
            ]),
    )
}

fn logged_in(out: &Checked) -> bool {
    out.success() && out.stdout.trim() == "nodegate-login-ok"
}

fn as_nodegate(args: &[&str]) -> Checked {
    Checked::run(
        Command::new("runuser")
            .args(["-u", "nodegate", "--"])
            .arg(installed_command())
            .args(args),
    )
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
    let agent = installed_libexec().join("nodegate-agent");
    let agent_meta = fs::metadata(&agent).expect("the package installed nodegate-agent");
    assert_eq!(agent_meta.mode() & 0o7777, 0o755, "{}", agent.display());
    assert_eq!(agent_meta.uid(), 0, "{}", agent.display());
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

    // What nodegate-node-credentials.service does when the kubelet's credentials change: its
    // ExecStart, with no more of root's powers than its CapabilityBoundingSet, pointed at this
    // test's kubelet kubeconfig.
    let kubelet = cluster.node_kubeconfig(node, Validity::Current);
    let (exec_start, capabilities) = installed_unit_command("nodegate-node-credentials.service");
    let mut export = Command::new("setpriv");
    export
        .arg(format!("--bounding-set=-all{capabilities}"))
        .arg("--")
        .args(exec_start.split_whitespace())
        .arg("--from")
        .arg(&kubelet);
    let out = Checked::run(&mut export);
    assert!(
        out.status.success(),
        "export ({export:?}) failed: {}",
        out.stderr.clone()
    );
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
        refresh.stderr.clone()
    );

    // What nodegate-publish-host-keys.service does: as user nodegate, with the exported
    // credentials, it publishes the machine's host public keys on its own Node.
    let unit = [
        "/lib/systemd/system",
        "/usr/lib/systemd/system",
        "/etc/systemd/system",
    ]
    .iter()
    .find_map(|d| fs::read_to_string(Path::new(d).join("nodegate-publish-host-keys.service")).ok())
    .expect("nodegate-publish-host-keys.service is installed");
    assert!(unit.lines().any(|l| l == "User=nodegate"), "{unit}");
    assert!(
        unit.lines()
            .any(|l| l.starts_with("ExecStart=") && l.ends_with(" publish-host-keys")),
        "{unit}"
    );
    if Path::new("/etc/ssh/ssh_host_ed25519_key.pub").exists() {
        let publish = as_nodegate(&["publish-host-keys"]);
        assert!(
            publish.status.success(),
            "authorized-keys-cmd publish-host-keys as nodegate failed: {}",
            publish.stderr.clone()
        );
        assert!(
            cluster
                .node_annotations(node)
                .contains_key("host-keys.nodegate.dev/ssh-ed25519"),
            "the host keys were not published: {}",
            publish.stderr.clone()
        );
    }

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
        last.stderr.clone(),
        sshd.log_tail(30)
    );
    // ExposeAuthInfo, from the package's own drop-in: the session is told which key logged in,
    // which is what nodegate-agent reads to end only sessions of a grant.
    let auth_info = Checked::run(
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
            .arg(&key)
            .args(["-p", &port.to_string(), "root@127.0.0.1"])
            .arg("cat \"$SSH_USER_AUTH\""),
    );
    let key_blob = public.split_whitespace().nth(1).expect("a public key line");
    assert!(
        auth_info.success()
            && auth_info
                .stdout
                .lines()
                .any(|l| l.starts_with("publickey ssh-ed25519 ") && l.contains(key_blob)),
        "the session's SSH_USER_AUTH does not name its key (ExposeAuthInfo): {}\n{}",
        auth_info.stdout,
        auth_info.stderr.clone()
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
        during_outage.stderr.clone(),
        sshd.log_tail(30)
    );

    // nodegate-agent, run as its unit runs it, finds the session of this grant and ends it when
    // the grant is revoked: the unit's user, groups and three capabilities are enough.
    let mut agent = scratch.spawn("nodegate-agent", &mut agent_as_its_unit_runs_it());
    let fingerprint = Checked::run(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub")),
    );
    let fingerprint = fingerprint
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("ssh-keygen -l prints a fingerprint")
        .to_owned();
    let mut session = scratch.spawn(
        "grant-session",
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
            .arg(&key)
            .args(["-p", &port.to_string(), "root@127.0.0.1"])
            .arg("echo session-started; exec sleep 300"),
    );
    // The session's command has run and its output came back before anything is revoked: a
    // session ended with output still in flight loses it, so this is waited for first.
    assert!(
        wait_until(Duration::from_secs(30), || session
            .log()
            .contains("session-started")),
        "the grant's session did not start:\nsession:\n{}\nagent:\n{}\nsshd:\n{}",
        session.log_tail(10),
        agent.log_tail(30),
        sshd.log_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            agent
                .log()
                .lines()
                .any(|l| l.contains("login: root's session") && l.contains(fingerprint.as_str()))
        }),
        "nodegate-agent did not find the grant's session:\nagent:\n{}\nsession:\n{}\nsshd:\n{}",
        agent.log_tail(30),
        session.log_tail(10),
        sshd.log_tail(20)
    );
    assert!(agent.is_running(), "agent:\n{}", agent.log_tail(30));
    // Nothing but the revoke below may end it.
    assert!(
        session.is_running(),
        "the grant's session ended before its grant was revoked:\nsession:\n{}\nagent:\n{}",
        session.log_tail(10),
        agent.log_tail(30)
    );

    cluster.set_node_annotation(node, &annotation, None);
    assert!(
        wait_until(Duration::from_secs(30), || !session.is_running()),
        "the revoked grant's session is still open:\nagent:\n{}",
        agent.log_tail(30)
    );
    assert!(
        agent
            .log()
            .lines()
            .any(|l| l.contains("ending the session of sshd pid")),
        "the session ended, but not by nodegate-agent:\nagent:\n{}\nsession:\n{}",
        agent.log_tail(30),
        session.log_tail(10)
    );
    assert!(
        wait_until(Duration::from_secs(30), || !logged_in(&ssh_login(
            &scratch, port, &key
        ))),
        "still logged in after the grant was revoked"
    );
    scratch.stop(&mut agent, Duration::from_secs(10));
    scratch.stop(&mut sshd, Duration::from_secs(5));
}
