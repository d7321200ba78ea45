//! A real control plane: etcd and kube-apiserver with RBAC, the Node authorizer and
//! NodeRestriction, as `testkit/README.md` describes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::pki::{IssuedCert, Pki, Validity};
use crate::process::{Daemon, Scratch, free_port, wait_until};

/// Where `testkit/install-deps` caches the Kubernetes server binaries.
pub const DEFAULT_KUBE_BIN_DIR: &str = "/var/cache/nodegate-test/kubernetes-1.20.2";

/// The directory holding `kube-apiserver`, `kubelet` and `kube-controller-manager`.
pub fn kube_bin_dir() -> PathBuf {
    let dir = std::env::var_os("KUBE_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBE_BIN_DIR));
    assert!(
        dir.join("kube-apiserver").is_file(),
        "kube-apiserver not found in {}: run testkit/install-deps (or set KUBE_BIN_DIR)",
        dir.display()
    );
    dir
}

/// A running etcd + kube-apiserver, torn down when the test process ends.
pub struct Cluster {
    /// The cluster's directory: certificates, kubeconfigs, logs, etcd data.
    pub scratch: Scratch,
    /// The CA every certificate of this cluster chains to.
    pub pki: Pki,
    server: String,
    admin: PathBuf,
    admin_cert: IssuedCert,
    /// Kubeconfigs issued so far, by file stem (see [`Cluster::issue_once`]).
    issued: Mutex<BTreeMap<String, PathBuf>>,
    apiserver_args: Vec<OsString>,
    apiserver: Mutex<Option<Daemon>>,
    controller_manager: Mutex<Option<Daemon>>,
    service_account_key: PathBuf,
    _etcd: Daemon,
}

impl Cluster {
    /// One cluster per test binary, started on first use. Tests that share it use their own
    /// node names.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        SHARED.get_or_init(Cluster::start)
    }

    /// Starts a new cluster and waits until the API server is ready.
    pub fn start() -> Cluster {
        kube_bin_dir(); // fails early, with install instructions
        let scratch = Scratch::new("cluster");
        let pki = Pki::new(&scratch.join("pki"), "nodegate-test-ca");

        let etcd_port = free_port();
        let etcd_peer_port = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd = scratch.spawn(
            "etcd",
            Command::new("etcd")
                .arg("--data-dir")
                .arg(scratch.join("etcd"))
                .args(["--name", "default"])
                .args(["--listen-client-urls", &etcd_url])
                .args(["--advertise-client-urls", &etcd_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .args(["--log-level", "warn"]),
        );

        let port = free_port();
        let serving = pki.server("apiserver", "kube-apiserver", &["kubernetes"]);
        let kubelet_client = pki.client(
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            &["system:masters"],
            Validity::Current,
        );
        let (service_account_key, service_account_pub) = pki.signing_key("service-account");
        let mut apiserver_args: Vec<OsString> = Vec::new();
        let mut arg = |name: &str, value: &dyn AsRef<std::ffi::OsStr>| {
            let mut a = OsString::from(format!("--{name}="));
            a.push(value.as_ref());
            apiserver_args.push(a);
        };
        arg("etcd-servers", &etcd_url);
        arg("bind-address", &"127.0.0.1");
        arg("advertise-address", &"127.0.0.1");
        arg("secure-port", &port.to_string());
        arg("insecure-port", &"0");
        arg("client-ca-file", &pki.ca_cert());
        arg("tls-cert-file", &serving.cert);
        arg("tls-private-key-file", &serving.key);
        arg("service-account-key-file", &service_account_pub);
        arg("service-account-signing-key-file", &service_account_key);
        arg(
            "service-account-issuer",
            &"https://kubernetes.default.svc.cluster.local",
        );
        arg("authorization-mode", &"Node,RBAC");
        arg("enable-admission-plugins", &"NodeRestriction");
        arg("allow-privileged", &"true");
        arg("service-cluster-ip-range", &"10.0.0.0/24");
        arg("kubelet-client-certificate", &kubelet_client.cert);
        arg("kubelet-client-key", &kubelet_client.key);
        arg("kubelet-preferred-address-types", &"Hostname");
        arg("profiling", &"false");
        arg("v", &"1");

        let server = format!("https://127.0.0.1:{port}");
        let admin_cert = pki.client("admin", "admin", &["system:masters"], Validity::Current);
        let admin = write_kubeconfig(
            &scratch.join("admin.kubeconfig"),
            &server,
            pki.ca_cert(),
            &admin_cert.cert,
            &admin_cert.key,
        );
        let cluster = Cluster {
            scratch,
            pki,
            server,
            admin,
            admin_cert,
            issued: Mutex::new(BTreeMap::new()),
            apiserver_args,
            apiserver: Mutex::new(None),
            controller_manager: Mutex::new(None),
            service_account_key,
            _etcd: etcd,
        };
        cluster.start_apiserver();
        cluster
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig with cluster-admin rights (`system:masters`).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin
    }

    /// A kubeconfig for user `name` in `groups`, with a client certificate of the given
    /// validity, written as `user-NAME-VALIDITY[-GROUPS].kubeconfig` (certificate and key in
    /// separate files). Issued once per test process: the same arguments give the same files.
    pub fn user_kubeconfig(&self, name: &str, groups: &[&str], validity: Validity) -> PathBuf {
        let mut stem = format!("user-{name}-{validity:?}").to_lowercase();
        if !groups.is_empty() {
            stem.push('-');
            stem.push_str(&groups.join("+").replace([':', '/'], "_"));
        }
        self.issue_once(&stem, || {
            let cert = self.pki.client(&stem, name, groups, validity);
            write_kubeconfig(
                &self.scratch.join(format!("{stem}.kubeconfig")),
                &self.server,
                self.pki.ca_cert(),
                &cert.cert,
                &cert.key,
            )
        })
    }

    /// A kubelet-style kubeconfig for node `node` (`system:node:NODE` in `system:nodes`), whose
    /// client certificate and key are one file, as the kubelet's `kubelet-client-current.pem`.
    /// Issued once per test process, like [`Cluster::user_kubeconfig`].
    pub fn node_kubeconfig(&self, node: &str, validity: Validity) -> PathBuf {
        let stem = format!("node-{node}-{validity:?}").to_lowercase();
        self.issue_once(&stem, || {
            let cert = self.pki.client(
                &stem,
                &format!("system:node:{node}"),
                &["system:nodes"],
                validity,
            );
            write_kubeconfig(
                &self.scratch.join(format!("{stem}.kubeconfig")),
                &self.server,
                self.pki.ca_cert(),
                &cert.combined,
                &cert.combined,
            )
        })
    }

    /// The kubeconfig `issue` writes for `stem`, issued on the first call only: tests run in
    /// parallel, and rewriting a certificate and key another test's process is reading gave it
    /// half a file or a key of another certificate ("identity PEM is missing a private key").
    fn issue_once(&self, stem: &str, issue: impl FnOnce() -> PathBuf) -> PathBuf {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = issued.get(stem) {
            return path.clone();
        }
        let path = issue();
        issued.insert(stem.to_owned(), path.clone());
        path
    }

    /// Starts (or restarts) the API server and waits until `/readyz` answers.
    pub fn start_apiserver(&self) {
        let mut slot = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_mut().is_some_and(Daemon::is_running) {
            return;
        }
        let daemon = self.scratch.spawn(
            "kube-apiserver",
            Command::new(kube_bin_dir().join("kube-apiserver")).args(&self.apiserver_args),
        );
        let mut daemon = daemon;
        let ready = wait_until(Duration::from_secs(90), || {
            !daemon.is_running() || self.kubectl(&["get", "--raw", "/readyz"]).status.success()
        }) && daemon.is_running();
        assert!(
            ready,
            "kube-apiserver did not become ready; log tail:\n{}",
            daemon.log_tail(40)
        );
        *slot = Some(daemon);
    }

    /// Stops the API server (etcd keeps running), as in an outage of the control plane.
    pub fn stop_apiserver(&self) {
        let mut slot = self.apiserver.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(daemon) = slot.as_mut() {
            self.scratch.stop(daemon, Duration::from_secs(10));
        }
        *slot = None;
    }

    /// Starts kube-controller-manager (ServiceAccounts and their tokens, namespaces, garbage
    /// collection), without the node lifecycle controller that would taint API-only nodes.
    pub fn start_controller_manager(&self) {
        let mut slot = self
            .controller_manager
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_some() {
            return;
        }
        let daemon = self.scratch.spawn(
            "kube-controller-manager",
            Command::new(kube_bin_dir().join("kube-controller-manager"))
                .arg(format!("--kubeconfig={}", self.admin.display()))
                .arg(format!(
                    "--service-account-private-key-file={}",
                    self.service_account_key.display()
                ))
                .arg(format!("--root-ca-file={}", self.pki.ca_cert().display()))
                .args([
                    "--leader-elect=false",
                    "--secure-port=0",
                    "--port=0",
                    "--use-service-account-credentials=false",
                    "--controllers=*,-nodelifecycle,-nodeipam,-cloud-node-lifecycle,-service,-route,-bootstrapsigner,-tokencleaner",
                ]),
        );
        let ready = wait_until(Duration::from_secs(60), || {
            let out = self.kubectl(&["get", "serviceaccount", "default", "-n", "default"]);
            out.status.success()
        });
        assert!(
            ready,
            "kube-controller-manager did not create the default ServiceAccount; log tail:\n{}",
            daemon.log_tail(40)
        );
        *slot = Some(daemon);
    }

    /// Runs kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_as(&self.admin, args, None)
    }

    /// Runs kubectl as the cluster admin and returns stdout; panics with stderr on failure.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with `manifest` (YAML or JSON) as the cluster admin.
    pub fn apply(&self, manifest: &str) {
        let out = kubectl_as(
            &self.admin,
            &["apply", "-f", "-"],
            Some(manifest.as_bytes()),
        );
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\nmanifest:\n{manifest}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until kube-controller-manager has made `namespace`'s default ServiceAccount (pods
    /// cannot be created there before it exists).
    pub fn wait_for_default_service_account(&self, namespace: &str) {
        let made = wait_until(Duration::from_secs(60), || {
            self.kubectl(&["get", "serviceaccount", "default", "-n", namespace])
                .status
                .success()
        });
        assert!(made, "no default ServiceAccount in {namespace}");
    }

    /// Creates API-only Node objects (no kubelet behind them) with the given labels.
    pub fn create_nodes(&self, names: &[String], labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        // kubectl creates a List's items one request at a time; a few lists in parallel make
        // hundreds of nodes quick.
        std::thread::scope(|scope| {
            for chunk in names.chunks(names.len().div_ceil(4).max(1)) {
                let labels = &labels;
                scope.spawn(move || {
                    let items: Vec<serde_json::Value> = chunk
                        .iter()
                        .map(|name| {
                            serde_json::json!({
                                "apiVersion": "v1", "kind": "Node",
                                "metadata": {"name": name, "labels": labels},
                            })
                        })
                        .collect();
                    let list =
                        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
                    let out = kubectl_as(
                        &self.admin,
                        &["create", "-f", "-"],
                        Some(list.to_string().as_bytes()),
                    );
                    assert!(
                        out.status.success(),
                        "creating nodes failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                });
            }
        });
    }

    /// Creates one API-only Node.
    pub fn create_node(&self, name: &str) {
        self.create_nodes(&[name.to_owned()], &[]);
    }

    /// The annotations of Node `name`, read as the admin.
    pub fn node_annotations(&self, name: &str) -> BTreeMap<String, String> {
        let json = self.kubectl_ok(&["get", "node", name, "-o", "json"]);
        let node: serde_json::Value = serde_json::from_str(&json).expect("node JSON");
        node["metadata"]["annotations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Applies manifests shipped in the repository (paths relative to the workspace root, e.g.
    /// `packaging/rbac/keyctl-granter.yaml`), exactly as a user would apply them.
    pub fn apply_shipped(&self, manifests: &[&str]) {
        for manifest in manifests {
            let path = crate::workspace_root().join(manifest);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            self.apply(&text);
        }
    }

    /// Binds ClusterRole `role` to user `user` cluster-wide, as ClusterRoleBinding `binding`.
    pub fn bind_cluster_role(&self, binding: &str, role: &str, user: &str) {
        self.kubectl_ok(&[
            "create",
            "clusterrolebinding",
            binding,
            &format!("--clusterrole={role}"),
            &format!("--user={user}"),
        ]);
    }

    /// Applies a strategic merge patch to the status of Node `name` as the admin (conditions
    /// merge by type), e.g. to give a condition another message. With `curl`, because kubectl
    /// before 1.24 cannot patch a subresource. A kubelet on that node writes its own view back
    /// at its next status update (within about 10 s).
    pub fn patch_node_status(&self, name: &str, patch: &serde_json::Value) {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--request", "PATCH"])
            // kube-apiserver pretty-prints its answers to curl's user agent, and 1.20's printer
            // (json-iterator with reflect2 1.0.1) crashes the whole server when built with Go
            // 1.18 or newer, as Debian's is.
            .args(["--user-agent", "nodegate-testkit"])
            .arg("--cacert")
            .arg(self.pki.ca_cert())
            .arg("--cert")
            .arg(&self.admin_cert.cert)
            .arg("--key")
            .arg(&self.admin_cert.key)
            .args([
                "--header",
                "Content-Type: application/strategic-merge-patch+json",
                "--data-binary",
                &patch.to_string(),
            ])
            .arg(format!("{}/api/v1/nodes/{name}/status", self.server))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "patching the status of node {name} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }

    /// Sets (or with `None` removes) one annotation on Node `name` as the admin, bypassing
    /// every tool of this project: for planting hostile values.
    pub fn set_node_annotation(&self, name: &str, key: &str, value: Option<&str>) {
        let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
        self.kubectl_ok(&[
            "patch",
            "node",
            name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }
}

/// Runs kubectl with `kubeconfig`, feeding `stdin` if given.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    crate::output::output_with_stdin(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args),
        stdin,
    )
}

/// Writes a kubeconfig with one cluster, user and context, all named `test`.
pub fn write_kubeconfig(path: &Path, server: &str, ca: &Path, cert: &Path, key: &Path) -> PathBuf {
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: test
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: test
  context:
    cluster: test
    user: test
current-context: test
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(path, yaml).expect("write kubeconfig");
    path.to_owned()
}
