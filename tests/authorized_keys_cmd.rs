//! authorized-keys-cmd against the real thing: kube-apiserver + etcd, a real sshd on a loopback
//! port running the command, and a real ssh client.
//!
//! Build the binary first: `cargo build -p authorized-keys-cmd`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use nodegate_core::expiry::parse_openssh_time;
use nodegate_core::{AnnotationPrefix, Expiry, Grant, GrantKey, GrantText, LoginUser};
use nodegate_testkit::cluster::write_kubeconfig;
use nodegate_testkit::fixtures::{self, in_hours, whole_seconds};
use nodegate_testkit::output::Checked;
use nodegate_testkit::pki::Pki;
use nodegate_testkit::process::Scratch;
use nodegate_testkit::sshd::{KeySource, Login, RootOwnedDir, SshKey, Sshd, ssh_keygen};
use nodegate_testkit::{Cluster, Validity, workspace_bin};

/// A node of the test cluster with its own kubeconfig, config file, cache and keys.
struct NodeSetup<'c> {
    cluster: &'c Cluster,
    name: String,
    scratch: Scratch,
    config: PathBuf,
    cache: PathBuf,
}

impl<'c> NodeSetup<'c> {
    /// Creates Node `name` and a config that uses its own kubelet-style credentials of `validity`
    /// (node name taken from the certificate) with the given extra TOML lines.
    fn new(cluster: &'c Cluster, name: &str, validity: Validity, extra_toml: &str) -> Self {
        cluster.create_node(name);
        let scratch = Scratch::new(&format!("akc-{name}"));
        let kubeconfig = cluster.node_kubeconfig(name, validity);
        let cache = scratch.join("grants-cache.sqlite");
        let config = scratch.write(
            "authorized-keys-cmd.toml",
            format!(
                "kubeconfig = \"{}\"\ncache = \"{}\"\n{extra_toml}\n",
                kubeconfig.display(),
                cache.display()
            ),
        );
        NodeSetup {
            cluster,
            name: name.to_owned(),
            scratch,
            config,
            cache,
        }
    }

    /// Rewrites the config file.
    fn set_config(&self, kubeconfig: &Path, extra_toml: &str) {
        std::fs::write(
            &self.config,
            format!(
                "kubeconfig = \"{}\"\ncache = \"{}\"\n{extra_toml}\n",
                kubeconfig.display(),
                self.cache.display()
            ),
        )
        .expect("write the config file");
    }

    fn key(&self, name: &str) -> SshKey {
        ssh_keygen(self.scratch.path(), name)
    }

    /// Writes a grant of `key` to `user` until `expiry` on this Node, as keyctl would.
    fn grant(&self, key: &SshKey, user: &str, expiry: Expiry) -> Grant {
        let grant = fixtures::grant(&key.public, user, expiry, Some("authorized-keys-cmd test"));
        fixtures::put_grant(self.cluster, &self.name, &grant);
        grant
    }

    fn revoke(&self, grant: &Grant) {
        fixtures::remove_grant(self.cluster, &self.name, grant);
    }

    /// Runs the command as sshd would (`USER [FINGERPRINT]`), with `--verbose`.
    fn run(&self, args: &[&str]) -> Checked {
        Checked::run(&mut command(&self.config, args))
    }

    /// A real sshd whose AuthorizedKeysCommand is this command with this config.
    fn sshd(&self) -> Sshd {
        let dir = RootOwnedDir::new("akc");
        let program = dir.install(&workspace_bin("authorized-keys-cmd"), "authorized-keys-cmd");
        // The dir must outlive sshd; it is removed when the test process ends.
        std::mem::forget(dir);
        Sshd::start(
            &self.scratch,
            "sshd",
            &KeySource::authorized_keys_cmd(program, &self.config),
        )
    }
}

/// A node with one grant of a fresh key to root for an hour, and the line it must print for it.
struct Granted<'c> {
    node: NodeSetup<'c>,
    key: SshKey,
    grant: Grant,
    line: String,
}

impl<'c> Granted<'c> {
    fn new(cluster: &'c Cluster, name: &str, extra_toml: &str, key_name: &str) -> Self {
        let node = NodeSetup::new(cluster, name, Validity::Current, extra_toml);
        let key = node.key(key_name);
        let grant = node.grant(&key, "root", in_hours(1));
        let line = format!("{}\n", grant.authorized_keys_line());
        Granted {
            node,
            key,
            grant,
            line,
        }
    }
}

fn command(config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(workspace_bin("authorized-keys-cmd"));
    cmd.arg("--config")
        .arg(config)
        .arg("--verbose")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn granted_key_logs_in_as_its_user_and_no_other() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-login", Validity::Current, "");
    let alice = node.key("alice");
    let bob = node.key("bob");
    let daemon_key = node.key("daemon-key");
    node.grant(&alice, "root", in_hours(1));
    node.grant(&daemon_key, "daemon", in_hours(1));
    let sshd = node.sshd();

    assert_eq!(
        sshd.login(&alice, "root"),
        Login::Succeeded,
        "{}",
        sshd.log()
    );
    assert_eq!(
        sshd.login(&alice, "daemon"),
        Login::Refused,
        "granted to root only"
    );
    assert_eq!(sshd.login(&bob, "root"), Login::Refused, "never granted");
    // daemon's shell is nologin: authenticated, then the session is refused.
    assert_eq!(
        sshd.login(&daemon_key, "daemon"),
        Login::AuthenticatedButNoShell
    );
    assert_eq!(sshd.login(&daemon_key, "root"), Login::Refused);
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
}

#[test]
fn prints_exactly_the_usable_lines_and_filters_by_fingerprint() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-lines", Validity::Current, "");
    let one = node.key("one");
    let two = node.key("two");
    let g1 = node.grant(&one, "root", in_hours(2));
    let g2 = node.grant(&two, "root", Expiry::Permanent);
    let expired = node.key("expired");
    node.grant(
        &expired,
        "root",
        Expiry::At(parse_openssh_time("20200101000000Z").unwrap()),
    );

    let out = node.run(&["root"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.lines(),
        BTreeSet::from([g1.authorized_keys_line(), g2.authorized_keys_line()])
    );
    assert!(g1.authorized_keys_line().starts_with("expiry-time=\""));

    let fp = g2.key.fingerprint().to_string();
    let out = node.run(&["root", &fp]);
    assert_eq!(out.stdout, format!("{}\n", g2.authorized_keys_line()));
    let out = node.run(&["daemon", &fp]);
    assert!(out.status.success());
    assert_eq!(out.stdout, "", "nothing for another user");
    // sshd may pass a user that can hold no grant: answer nothing, successfully.
    let out = node.run(&["Bad User"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, "");
    out.says("source=");
}

#[test]
fn grant_that_expires_in_seconds_stops_working() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-expiry", Validity::Current, "");
    let key = node.key("short");
    let expires = whole_seconds(Utc::now()) + chrono::Duration::seconds(4);
    node.grant(&key, "root", Expiry::At(expires));
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let wait = (expires - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(1200);
    std::thread::sleep(wait);
    assert_eq!(sshd.login(&key, "root"), Login::Refused, "expired grant");
    assert_eq!(node.run(&["root"]).stdout, "");
}

#[test]
fn revoked_grant_stops_working_within_the_freshness_window() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(
        cluster,
        "akc-revoke",
        Validity::Current,
        "freshness = \"2s\"",
    );
    let key = node.key("revoked");
    let grant = node.grant(&key, "root", in_hours(1));
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    // A repeat within the window is answered from the cache, without the API.
    let out = node.run(&["root"]);
    out.says("source=cache (fresh");
    node.revoke(&grant);
    let revoked_at = Instant::now();
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(sshd.login(&key, "root"), Login::Refused);
    assert!(revoked_at.elapsed() < Duration::from_secs(10));
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, "");
}

#[test]
fn a_grant_made_right_after_a_refused_login_works_at_once() {
    let cluster = Cluster::shared();
    // A long window: a cached "yes" would be trusted for an hour, a cached "no" only briefly.
    let node = NodeSetup::new(
        cluster,
        "akc-new-grant",
        Validity::Current,
        "freshness = \"1h\"",
    );
    let key = node.key("new");
    let other = node.key("other");
    node.grant(&other, "root", in_hours(1));
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Refused, "no grant yet");
    let grant = node.grant(&key, "root", in_hours(1));
    // Just past the 100 ms a cached "no" is trusted (MISS_FRESHNESS).
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let out = node.run(&["root", &grant.key.fingerprint().to_string()]);
    assert_eq!(out.stdout, format!("{}\n", grant.authorized_keys_line()));
    assert!(
        out.stderr.contains("source=cache (fresh"),
        "a cached yes is trusted for the window: {}",
        out.stderr
    );
}

#[test]
fn fifty_parallel_invocations_all_succeed() {
    let cluster = Cluster::shared();
    // freshness 0: every call asks the API and writes the cache, the worst case for contention.
    let Granted {
        node,
        line: expected,
        ..
    } = Granted::new(cluster, "akc-parallel", "freshness = \"0s\"", "parallel");
    for round in ["empty cache, all via the API", "existing cache"] {
        let children: Vec<_> = (0..50)
            .map(|_| command(&node.config, &["root"]).spawn().unwrap())
            .collect();
        for child in children {
            let out = Checked::of(
                "authorized-keys-cmd root",
                child.wait_with_output().unwrap(),
            );
            assert!(out.status.success(), "{round}: {}", out.stderr);
            assert_eq!(out.stdout, expected, "{round}: {}", out.stderr);
        }
    }
    node.set_config(
        &cluster.node_kubeconfig("akc-parallel", Validity::Current),
        "freshness = \"1m\"",
    );
    let children: Vec<_> = (0..50)
        .map(|_| command(&node.config, &["root"]).spawn().unwrap())
        .collect();
    for child in children {
        let out = Checked::of(
            "authorized-keys-cmd root",
            child.wait_with_output().unwrap(),
        );
        assert!(out.status.success(), "{}", out.stderr);
        assert_eq!(out.stdout, expected);
    }
}

#[test]
fn hostile_annotations_never_yield_a_line() {
    let cluster = Cluster::shared();
    // freshness 0: every run reads the planted value from the API, never an earlier cache.
    let node = NodeSetup::new(
        cluster,
        "akc-hostile",
        Validity::Current,
        "freshness = \"0s\"",
    );
    let good_key = node.key("good");
    let good = node.grant(&good_key, "root", in_hours(1));
    let evil = node.key("evil");
    let evil_grant = Grant {
        user: LoginUser::new("root").unwrap(),
        key: GrantKey::parse(&evil.public).unwrap(),
        expiry: in_hours(1),
        granted_by: GrantText::new("granted-by", "mallory").unwrap(),
        granted_at: whole_seconds(Utc::now()),
        reason: None,
    };
    let prefix = AnnotationPrefix::default();
    let name = evil_grant.annotation_name();
    let key_of = |n: &str| format!("{prefix}/{n}");
    let value = evil_grant.annotation_value();
    let evil_pub = evil.public.clone();
    let bare_key = evil_pub.rsplit_once(' ').unwrap().0.to_owned();
    let corpus: Vec<(String, String)> = vec![
        // Newline smuggling a second authorized_keys line.
        (key_of(&name), format!("{value}\n{bare_key} injected")),
        (
            key_of(&name),
            format!("{value}\r\ncommand=\"sh\" {bare_key}"),
        ),
        // Extra options.
        (
            key_of(&name),
            value.replacen("login=", "command=\"/bin/sh\",login=", 1),
        ),
        (
            key_of(&name),
            value.replacen("login=", "from=\"*\",login=", 1),
        ),
        (key_of(&name), value.replacen("login=", "no-pty,login=", 1)),
        // Bad base64, wrong key type text, truncated key.
        (
            key_of(&name),
            value.replace(&bare_key[12..40], "!!!!not base64!!!!"),
        ),
        (key_of(&name), value.replacen("ssh-ed25519", "ssh-rsa", 1)),
        (
            key_of(&name),
            format!("{} ssh-ed25519 AAAA", value.split_once(' ').unwrap().0),
        ),
        // Huge values.
        (key_of(&name), format!("{value} {}", "x".repeat(9000))),
        (
            key_of(&name),
            value.replacen("mallory", &"m".repeat(300), 1),
        ),
        // Control and invisible characters.
        (
            key_of(&name),
            value.replacen("mallory", "mal\u{1b}[2Jlory", 1),
        ),
        (
            key_of(&name),
            value.replacen("mallory", "mal\u{202e}lory", 1),
        ),
        (key_of(&name), value.replacen("mallory", "mal\tlory", 1)),
        // The right value under another grant's name, and other users.
        (key_of(&good.annotation_name()), value.clone()),
        (
            key_of(&name.replacen("g.root.", "g.daemon.", 1)),
            value.clone(),
        ),
        (
            key_of(&name),
            value.replacen("login=\"root\"", "login=\"daemon\"", 1),
        ),
        (
            key_of(&name),
            value.replacen("login=\"root\"", "login=\"root\\\"\"", 1),
        ),
        // Ambiguous expiry, duplicates, bad times.
        (
            key_of(&name),
            value.replacen("login=\"root\",", "login=\"root\",permanent,", 1),
        ),
        (
            key_of(&name),
            value.replacen("login=\"root\",", "login=\"root\",login=\"root\",", 1),
        ),
        (
            key_of(&name),
            value.replacen("Z\",granted-by", "\",granted-by", 1),
        ),
        (key_of(&name), String::new()),
        (key_of(&name), "{\"login\":\"root\"}".into()),
        (key_of("g.root"), value.clone()),
        (key_of(&format!("{name}\u{0}")), value.clone()),
    ];
    let evil_fp = evil_grant.key.fingerprint().to_string();
    let good_key_name = key_of(&good.annotation_name());
    let sshd = node.sshd();
    for (i, (key, hostile)) in corpus.iter().enumerate() {
        let patch = serde_json::json!({"metadata": {"annotations": {key: hostile}}});
        // The API itself refuses some names (NUL); those cannot reach a node at all.
        let planted = cluster
            .kubectl(&[
                "patch",
                "node",
                &node.name,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ])
            .status
            .success();
        let out = node.run(&["root"]);
        assert!(out.status.success(), "case {i}: {}", out.stderr);
        // Planting over the good grant's own name replaces it: then nothing at all is valid.
        let expected = if planted && key == &good_key_name {
            BTreeSet::new()
        } else {
            BTreeSet::from([good.authorized_keys_line()])
        };
        assert_eq!(
            out.lines(),
            expected,
            "case {i} ({key:?} = {hostile:?}, planted: {planted})"
        );
        assert!(
            !out.stdout.contains(&bare_key[12..]),
            "case {i}: the evil key must never be printed"
        );
        let out = node.run(&["daemon", &evil_fp]);
        assert_eq!(out.stdout, "", "case {i}");
        if planted && i % 4 == 0 {
            // Now and then through the real sshd too.
            assert_eq!(sshd.login(&evil, "root"), Login::Refused, "case {i}");
        }
        let restore = (key == &good_key_name).then(|| good.annotation_value());
        if planted {
            cluster.set_node_annotation(&node.name, key, restore.as_deref());
        }
    }
    assert_eq!(sshd.login(&good_key, "root"), Login::Succeeded);
    // Invalid grants are reported on the diagnostics channel, never on stdout.
    cluster.set_node_annotation(&node.name, &corpus[2].0, Some(&corpus[2].1));
    let out = node.run(&["root"]);
    out.says("ignoring invalid grant annotation");
    out.says("unknown option");
}

#[test]
fn expired_or_foreign_node_certificate_falls_back_to_the_cache() {
    let cluster = Cluster::shared();
    let Granted {
        node,
        key,
        line: expected,
        ..
    } = Granted::new(cluster, "akc-cert", "freshness = \"0s\"", "cert");

    // No cache yet, expired certificate: nothing trustworthy, fail closed.
    let expired = cluster.node_kubeconfig("akc-cert", Validity::Expired);
    node.set_config(&expired, "freshness = \"0s\"");
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    out.says("401");
    out.says("valid only from");

    // Fill the cache with good credentials, then the expired certificate is served from it.
    let current = cluster.node_kubeconfig("akc-cert", Validity::Current);
    node.set_config(&current, "freshness = \"0s\"");
    assert_eq!(node.run(&["root"]).stdout, expected);
    node.set_config(&expired, "freshness = \"0s\"");
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, expected);
    out.says("source=cache (API unavailable");

    // A node certificate from another CA (another cluster): the API rejects it.
    let foreign_pki = Pki::new(&node.scratch.join("foreign-pki"), "foreign-ca");
    let foreign = foreign_pki.client(
        "foreign-node",
        "system:node:akc-cert",
        &["system:nodes"],
        Validity::Current,
    );
    let foreign_kubeconfig = write_kubeconfig(
        &node.scratch.join("foreign.kubeconfig"),
        cluster.server(),
        cluster.pki.ca_cert(),
        &foreign.combined,
        &foreign.combined,
    );
    node.set_config(&foreign_kubeconfig, "freshness = \"0s\"");
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, expected, "served from the cache");
    out.says("401");

    // Another node's valid credentials with this node's name configured: refused, since it
    // would serve one node's grants on another.
    cluster.create_node("akc-cert-other");
    let other = cluster.node_kubeconfig("akc-cert-other", Validity::Current);
    node.set_config(&other, "freshness = \"0s\"\nnode_name = \"akc-cert\"");
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    out.says("differs from the client certificate");
}

#[test]
fn corrupt_foreign_or_unsafe_cache_is_never_trusted() {
    let cluster = Cluster::shared();
    let Granted {
        node,
        line: expected,
        ..
    } = Granted::new(cluster, "akc-corrupt", "freshness = \"1h\"", "corrupt");
    assert_eq!(node.run(&["root"]).stdout, expected);

    // Garbage over the cache: detected, moved aside, rebuilt from the API.
    std::fs::write(&node.cache, vec![0x5a; 8192]).unwrap();
    let out = node.run(&["root"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, expected);
    out.says("moved it to");
    out.says("source=api");
    let aside = std::fs::read_dir(node.scratch.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert!(aside >= 1, "the corrupt file is kept aside for inspection");
    let out = node.run(&["root"]);
    out.says("source=cache (fresh");

    // A foreign SQLite database (another program's) in its place: also not trusted.
    std::fs::remove_file(&node.cache).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", node.cache.display()));
    }
    let status = Command::new("sqlite3")
        .arg(&node.cache)
        .arg("CREATE TABLE node_grants (node TEXT, prefix TEXT, annotations TEXT, fetched_at_ms INTEGER); INSERT INTO node_grants VALUES ('akc-corrupt', 'ssh.nodegate.dev', '{}', 99999999999999);")
        .status()
        .expect("run sqlite3");
    assert!(status.success());
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, expected);
    out.says("another program's database");

    // A cache others may write is refused (and not used), the API still answers.
    std::fs::set_permissions(&node.cache, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, expected);
    out.says("writable by group or others");
    out.says("source=api");
    std::fs::set_permissions(&node.cache, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A config file others may write is refused outright: nothing printed, exit 2.
    std::fs::set_permissions(&node.config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(out.stdout, "");
    out.says("refusing the config file");
    std::fs::set_permissions(&node.config, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn apiserver_outage_is_served_from_the_cache_within_the_deadline() {
    // Stopping the API server affects every user of a cluster: this test has its own. It starts
    // after the shared one is up, so that two API servers do not start at once on a small machine.
    let _ = Cluster::shared();
    let cluster = Cluster::start();
    let Granted {
        node,
        key,
        line: expected,
        ..
    } = Granted::new(&cluster, "akc-outage", "freshness = \"0s\"", "outage");
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let refresh = Checked::run(&mut command(&node.config, &["refresh"]));
    assert!(refresh.status.success(), "{}", refresh.stderr);
    refresh.says("1 valid grants");

    cluster.stop_apiserver();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let started = Instant::now();
    let out = node.run(&["root"]);
    let took = started.elapsed();
    assert_eq!(out.stdout, expected);
    out.says("source=cache (API unavailable");
    assert!(
        took < Duration::from_secs(5),
        "connection refused must not wait: {took:?}"
    );

    // An API that accepts connections but never answers: the deadline bounds the wait.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole_config = node.scratch.write(
        "blackhole.kubeconfig",
        std::fs::read_to_string(cluster.node_kubeconfig("akc-outage", Validity::Current))
            .unwrap()
            .replace(
                cluster.server(),
                &format!("https://{}", blackhole.local_addr().unwrap()),
            ),
    );
    node.set_config(
        &blackhole_config,
        "freshness = \"0s\"\ndeadline = \"700ms\"",
    );
    let started = Instant::now();
    let out = node.run(&["root"]);
    let took = started.elapsed();
    assert_eq!(out.stdout, expected, "{}", out.stderr);
    out.says("no complete answer");
    // Without the deadline this would hang for as long as the listener lives.
    assert!(took < Duration::from_secs(5), "returned after {took:?}");
    drop(blackhole);

    // Older than max_stale: fail closed.
    std::thread::sleep(Duration::from_millis(1100));
    node.set_config(
        &cluster.node_kubeconfig("akc-outage", Validity::Current),
        "freshness = \"0s\"\nmax_stale = \"1s\"",
    );
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    out.says("max_stale");
    assert_eq!(sshd.login(&key, "root"), Login::Refused);

    // The API back: logins via the API again.
    cluster.start_apiserver();
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, expected);
    out.says("source=api");
}

#[test]
fn check_diagnoses_the_node_with_fixes() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-check", Validity::Current, "");
    let key = node.key("check");
    node.grant(&key, "root", in_hours(1));
    cluster.set_node_annotation(
        "akc-check",
        "ssh.nodegate.dev/g.root.0000000000000000",
        Some("command=\"sh\" ssh-ed25519 AAAA"),
    );
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());
    let sshd_config = sshd.config.display().to_string();
    let out = Checked::run(&mut command(
        &node.config,
        &["--sshd-config", &sshd_config, "check"],
    ));
    let report = out.stdout;
    assert_eq!(out.status.code(), Some(0), "{report}{}", out.stderr);
    assert!(
        report.contains("sshd runs AuthorizedKeysCommand"),
        "{report}"
    );
    assert!(report.contains("this is Node akc-check"), "{report}");
    assert!(
        report.contains("1 grants under ssh.nodegate.dev/ (1 unexpired)"),
        "{report}"
    );
    assert!(
        report.contains("WARNING invalid grant annotation"),
        "{report}"
    );
    assert!(report.contains("is healthy"), "{report}");
    assert!(
        report.contains("Node akc-check (ssh.nodegate.dev) read at"),
        "{report}"
    );

    // Expired certificate and an sshd config whose command lives under /tmp.
    node.set_config(&cluster.node_kubeconfig("akc-check", Validity::Expired), "");
    let bad_sshd = node.scratch.write(
        "bad_sshd_config",
        std::fs::read_to_string(&sshd.config).unwrap().replace(
            "AuthorizedKeysCommand /var/lib/nodegate-test/",
            "AuthorizedKeysCommand /tmp/",
        ),
    );
    let out = Checked::run(&mut command(
        &node.config,
        &["--sshd-config", &bad_sshd.display().to_string(), "check"],
    ));
    let report = out.stdout;
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("PROBLEM sshd will refuse /tmp/"),
        "{report}"
    );
    assert!(report.contains("is not valid now"), "{report}");
    assert!(report.contains("401"), "{report}");
    assert!(report.contains("fix: "), "{report}");
}

impl NodeSetup<'_> {
    /// This node's kubeconfig pointed at a loopback port where nothing listens: every
    /// connection is refused at once, as when the API server is down.
    fn refused_kubeconfig(&self) -> PathBuf {
        let port = nodegate_testkit::process::free_port();
        self.scratch.write(
            "refused.kubeconfig",
            std::fs::read_to_string(self.cluster.node_kubeconfig(&self.name, Validity::Current))
                .expect("read the node kubeconfig")
                .replace(self.cluster.server(), &format!("https://127.0.0.1:{port}")),
        )
    }

    fn current_kubeconfig(&self) -> PathBuf {
        self.cluster.node_kubeconfig(&self.name, Validity::Current)
    }

    /// Runs `sqlite3` on the cache.
    fn sqlite(&self, sql: &str) -> String {
        Checked::run(Command::new("sqlite3").arg(&self.cache).arg(sql))
            .ok()
            .trim()
            .to_owned()
    }

    /// Files moved aside as corrupt so far.
    fn moved_aside(&self) -> Vec<String> {
        std::fs::read_dir(self.scratch.path())
            .expect("read the scratch dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".corrupt-"))
            .collect()
    }
}

#[test]
fn a_deleted_node_has_no_grants_at_once_and_not_from_the_cache_either() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(
        cluster,
        "akc-deleted",
        Validity::Current,
        "freshness = \"0s\"",
    );
    let key = node.key("deleted");
    let grant = node.grant(&key, "root", in_hours(1));
    assert_eq!(
        node.run(&["root"]).stdout,
        format!("{}\n", grant.authorized_keys_line())
    );

    // No Node, no grants: the 404 is the API's answer, not an outage to ride out on the cache.
    cluster.kubectl_ok(&["delete", "node", "akc-deleted"]);
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "", "{}", out.stderr);
    out.says("does not exist");

    // And the cache learnt it: an outage afterwards serves nothing either.
    node.set_config(&node.refused_kubeconfig(), "freshness = \"0s\"");
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, "", "{}", out.stderr);
    out.says("source=cache (API unavailable");
}

#[test]
fn a_cache_row_dated_in_the_future_neither_outlives_a_revoke_nor_blocks_newer_answers() {
    let cluster = Cluster::shared();
    let Granted {
        node,
        key,
        grant,
        line,
    } = Granted::new(cluster, "akc-future", "freshness = \"1s\"", "future");
    assert_eq!(node.run(&["root"]).stdout, line);

    // Revoked, and past the freshness window; then the wall clock says the row is 4 minutes
    // younger than it is (a clock stepped back, within the skew a fresh boot may have).
    node.revoke(&grant);
    std::thread::sleep(Duration::from_millis(1200));
    node.sqlite("UPDATE node_grants SET fetched_at_ms = fetched_at_ms + 240000");
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, "", "a revoked key: {}", out.stderr);
    out.says("source=api");

    // A row dated a day ahead is replaced by the newest answer like any other...
    let again = node.grant(&key, "root", in_hours(2));
    let line = format!("{}\n", again.authorized_keys_line());
    node.sqlite("UPDATE node_grants SET fetched_at_ms = fetched_at_ms + 86400000");
    // Past the 100 ms a cached "no key" (the answer just after the revoke) is trusted.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(node.run(&["root"]).stdout, line);
    let stored_ms: i64 = node
        .sqlite("SELECT fetched_at_ms FROM node_grants WHERE node = 'akc-future'")
        .parse()
        .unwrap();
    let skew = (stored_ms - Utc::now().timestamp_millis()).abs();
    assert!(skew < 60_000, "the row was replaced: {skew} ms off now");
    // ... so an outage then serves it, instead of failing closed.
    node.set_config(&node.refused_kubeconfig(), "freshness = \"1s\"");
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, line, "{}", out.stderr);
}

#[test]
fn a_cache_with_damaged_pages_is_replaced_and_serves_the_next_outage() {
    let cluster = Cluster::shared();
    let Granted { node, line, .. } =
        Granted::new(cluster, "akc-damaged", "freshness = \"0s\"", "damaged");
    assert_eq!(node.run(&["root"]).stdout, line);

    // Damage the table's pages, leaving the header and the schema (page 1) intact.
    node.sqlite("PRAGMA wal_checkpoint(TRUNCATE)");
    let page_size: u64 = node.sqlite("PRAGMA page_size").parse().unwrap();
    let root: u64 = node
        .sqlite("SELECT rootpage FROM sqlite_master WHERE name = 'node_grants'")
        .parse()
        .unwrap();
    assert!(root > 1);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&node.cache)
            .unwrap();
        file.seek(SeekFrom::Start((root - 1) * page_size)).unwrap();
        file.write_all(&vec![0xa5; page_size as usize]).unwrap();
    }
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, line, "the API still answers: {}", out.stderr);
    out.says("damaged");
    out.says("moved it to");
    assert_eq!(node.moved_aside().len(), 1, "kept aside for inspection");

    node.set_config(&node.refused_kubeconfig(), "freshness = \"0s\"");
    let out = node.run(&["root"]);
    assert_eq!(
        out.stdout, line,
        "served from the new cache: {}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("malformed"),
        "nothing left damaged: {}",
        out.stderr
    );
}

#[test]
fn a_cache_locked_by_another_process_is_left_alone() {
    let cluster = Cluster::shared();
    let Granted { node, line, .. } =
        Granted::new(cluster, "akc-locked", "freshness = \"0s\"", "locked");
    assert_eq!(node.run(&["root"]).stdout, line);

    // A sqlite3 session holding the file exclusively, longer than the command waits.
    let mut holder = Command::new("sqlite3")
        .arg(&node.cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sqlite3");
    {
        use std::io::{BufRead, BufReader, Write};
        let stdin = holder.stdin.as_mut().unwrap();
        stdin
            .write_all(b"PRAGMA locking_mode = EXCLUSIVE;\nBEGIN EXCLUSIVE;\nSELECT 'held', count(*) FROM node_grants;\n")
            .unwrap();
        stdin.flush().unwrap();
        let mut reader = BufReader::new(holder.stdout.as_mut().unwrap());
        let mut seen = String::new();
        while !seen.contains("held") {
            seen.clear();
            assert!(reader.read_line(&mut seen).unwrap() > 0, "sqlite3 ended");
        }
    }
    let holder = nodegate_testkit::process::KillOnDrop::new(holder);
    let out = node.run(&["root"]);
    assert!(node.moved_aside().is_empty(), "busy is not corrupt");
    assert_eq!(out.stdout, line, "the API answers: {}", out.stderr);
    out.says("locked by another process");
    drop(holder);

    // The cached grants are all still there for an outage.
    node.set_config(&node.refused_kubeconfig(), "freshness = \"0s\"");
    let out = node.run(&["root"]);
    assert_eq!(out.stdout, line, "{}", out.stderr);
}

#[test]
fn fifty_parallel_first_calls_never_move_a_new_cache_aside() {
    let cluster = Cluster::shared();
    let Granted {
        node,
        line: expected,
        ..
    } = Granted::new(cluster, "akc-first-use", "freshness = \"0s\"", "first");
    // Before the fix about 40% of rounds moved aside the cache another call was creating.
    for round in 0..8 {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", node.cache.display()));
        }
        let children: Vec<_> = (0..50)
            .map(|_| command(&node.config, &["root"]).spawn().unwrap())
            .collect();
        for child in children {
            let out = Checked::of(
                "authorized-keys-cmd root",
                child.wait_with_output().unwrap(),
            );
            assert!(out.status.success(), "round {round}: {}", out.stderr);
            assert_eq!(out.stdout, expected, "round {round}: {}", out.stderr);
            assert!(
                !out.stderr.contains("moved it to"),
                "round {round}: {}",
                out.stderr
            );
        }
        assert!(node.moved_aside().is_empty(), "round {round}");
    }
}

#[test]
fn a_cached_row_of_another_node_is_never_served_here() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(
        cluster,
        "akc-whose",
        Validity::Current,
        "freshness = \"1h\"",
    );
    // Node akc-whose-other has a grant; this node has none.
    cluster.create_node("akc-whose-other");
    let other_kubeconfig = cluster.node_kubeconfig("akc-whose-other", Validity::Current);
    let key = node.key("whose");
    let other_grant = fixtures::grant(&key.public, "root", in_hours(1), None);
    fixtures::put_grant(cluster, "akc-whose-other", &other_grant);
    // The cache holds the other node's row, read with the other node's own credentials.
    node.set_config(&other_kubeconfig, "freshness = \"1h\"");
    assert_eq!(
        node.run(&["root"]).stdout,
        format!("{}\n", other_grant.authorized_keys_line())
    );

    // This node's credentials, with the other node's name configured: refused, even though a
    // fresh row for that name is in the cache.
    node.set_config(
        &node.current_kubeconfig(),
        "freshness = \"1h\"\nnode_name = \"akc-whose-other\"",
    );
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    out.says("differs from the client certificate");

    // This node's credentials and no name configured: the one row in the cache is not ours.
    node.set_config(&node.current_kubeconfig(), "freshness = \"1h\"");
    let out = node.run(&["root"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "", "{}", out.stderr);
    out.says("source=api");
}

#[test]
fn a_symlinked_cache_is_refused_and_never_written_through() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-symlink", Validity::Current, "");
    let key = node.key("symlink");
    let grant = node.grant(&key, "root", in_hours(1));
    let target = node.scratch.write("elsewhere", "");
    std::os::unix::fs::symlink(&target, &node.cache).unwrap();
    let out = node.run(&["root"]);
    assert_eq!(
        out.stdout,
        format!("{}\n", grant.authorized_keys_line()),
        "the API still answers: {}",
        out.stderr
    );
    out.says("symbolic link");
    assert_eq!(
        std::fs::metadata(&target).unwrap().len(),
        0,
        "nothing was written through the link"
    );
    for side in ["-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{side}", node.cache.display()));
        assert!(!path.exists(), "{} was created", path.display());
    }
}

#[test]
fn a_blackholed_api_is_waited_for_once_not_at_every_call() {
    let cluster = Cluster::shared();
    let Granted {
        node, key, line, ..
    } = Granted::new(cluster, "akc-backoff", "freshness = \"0s\"", "backoff");
    assert_eq!(node.run(&["root"]).stdout, line);

    // An API that accepts connections and never answers.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blackhole_config = node.scratch.write(
        "blackhole.kubeconfig",
        std::fs::read_to_string(node.current_kubeconfig())
            .unwrap()
            .replace(
                cluster.server(),
                &format!("https://{}", blackhole.local_addr().unwrap()),
            ),
    );
    let deadline = Duration::from_secs(2);
    // The default api_backoff (10 s) is far longer than this test's calls take.
    node.set_config(&blackhole_config, "freshness = \"0s\"\ndeadline = \"2s\"");
    let started = Instant::now();
    let out = node.run(&["root"]);
    assert!(started.elapsed() >= deadline, "the first call waits");
    assert_eq!(out.stdout, line, "{}", out.stderr);
    out.says("no complete answer");
    // The calls that follow (sshd makes several per login) do not wait the deadline again.
    for _ in 0..3 {
        let started = Instant::now();
        let out = node.run(&["root"]);
        let took = started.elapsed();
        assert!(
            took < deadline,
            "waited {took:?} for an API known to be down"
        );
        assert_eq!(out.stdout, line, "{}", out.stderr);
        out.says("not asked again");
    }
    let sshd = node.sshd();
    assert_eq!(sshd.login(&key, "root"), Login::Succeeded, "{}", sshd.log());

    // A working API is asked again at once: the failure was remembered for those credentials.
    node.set_config(&node.current_kubeconfig(), "freshness = \"0s\"");
    let out = node.run(&["root"]);
    out.says("source=api");
    drop(blackhole);
}

#[test]
fn check_says_how_long_a_revoked_key_works_while_the_api_is_unreachable() {
    let cluster = Cluster::shared();
    let node = NodeSetup::new(cluster, "akc-stale-window", Validity::Current, "");
    let key = node.key("window");
    node.grant(&key, "root", in_hours(1));
    assert!(node.run(&["root"]).status.success());
    // The shipped config file, as installed, makes the choice explicit.
    let shipped = std::fs::read_to_string(
        nodegate_testkit::workspace_root().join("packaging/node/authorized-keys-cmd.toml"),
    )
    .unwrap();
    assert!(
        shipped.lines().any(|l| l == "max_stale = \"24h\""),
        "the shipped config sets max_stale"
    );
    std::fs::write(
        &node.config,
        format!(
            "{shipped}\nkubeconfig = \"{}\"\ncache = \"{}\"\n",
            node.current_kubeconfig().display(),
            node.cache.display()
        ),
    )
    .unwrap();
    let out = Checked::run(&mut command(&node.config, &["check"]));
    let report = out.stdout;
    assert!(
        report.contains("cached grants are served for up to 1day (max_stale)"),
        "{report}"
    );
    assert!(
        report.contains("a key revoked meanwhile keeps working on this node"),
        "{report}"
    );
    assert!(
        report.contains("served during an outage for 23h"),
        "{report}"
    );
}
