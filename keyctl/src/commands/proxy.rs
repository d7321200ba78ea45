//! `keyctl proxy HOST PORT`: OpenSSH's `ProxyCommand` (`%h %p`). Connects stdin and stdout to
//! the node's sshd, directly to one of the Node's advertised addresses when one answers, or else
//! through the API server: a short-lived helper pod on that node, in the host's network
//! namespace, that runs busybox `nc` to the node's sshd from inside the node (loopback first).
//!
//! stdout is the SSH stream: everything else (progress, errors) goes to stderr. The decisions
//! (which node a host name means, which addresses to try in which order, which paths to try)
//! are pure functions with unit tests; the helper pod's lifecycle (access check, creation,
//! heartbeat, deletion on every way out, `keyctl gc`) is `nodegate_cluster_client::helper_pod`,
//! shared with node-exec. See docs/keyctl.md, "keyctl proxy".

use std::io::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::{Node, NodeAddress, Pod, PodSecurityContext, SecurityContext};
use kube::api::AttachParams;
use kube::{Api, Client};
use nodegate_cluster_client::access::Role;
use nodegate_cluster_client::helper_pod::{
    self, Ended, HostNamespaces, Lifecycle, Running, Signals, Tool, Wording, gc,
};
use nodegate_cluster_client::{ClientOptions, identity, status};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::cli::Connection;

/// Value of the helper pods' `app.kubernetes.io/managed-by` label (and their name prefix).
pub const MANAGED_BY: &str = "keyctl-proxy";
/// The ClusterRole that lets a user reach nodes through the API server
/// (`packaging/rbac/keyctl-proxy.yaml`).
pub const PROXY_ROLE: Role = Role {
    name: "nodegate-keyctl-proxy",
    manifest: "keyctl-proxy.yaml",
};
/// The default helper namespace (made by `packaging/node-exec-namespace.yaml`).
pub const DEFAULT_HELPER_NAMESPACE: &str = "nodegate-system";
/// The default helper image: any image with busybox's `sh` and `nc` works.
pub const DEFAULT_IMAGE: &str = "docker.io/library/busybox:1.36";
/// The uid (and gid) the helper runs as: `nc` needs no privilege.
pub const HELPER_UID: i64 = 65534;
/// The default order of `status.addresses` types tried directly.
pub const DEFAULT_ADDRESS_TYPES: &str = "InternalIP,ExternalIP";
/// Exit code of the helper script when no address answered inside the node.
const HELPER_NO_ANSWER: i32 = 3;

/// keyctl-proxy as the owner of helper pods.
pub const TOOL: Tool = Tool {
    name: MANAGED_BY,
    user_label: "nodegate.dev/keyctl-proxy-user",
    node_label: "nodegate.dev/keyctl-proxy-node",
    caller_annotation: "nodegate.dev/keyctl-proxy-caller",
    target_annotation: "nodegate.dev/keyctl-proxy-target",
    heartbeat_annotation: "nodegate.dev/keyctl-proxy-heartbeat",
    wording: Wording {
        denied: "Ask a cluster admin to bind the ClusterRole nodegate-keyctl-proxy in namespace nodegate-system (packaging/rbac/keyctl-proxy.yaml), e.g. add yourself to the group nodegate-keyctl-proxy-users; or reach the node directly (--via direct)",
        namespace_missing: "apply packaging/node-exec-namespace.yaml (or pass --helper-namespace)",
        image_pull: "on an air-gapped cluster mirror it and pass --image (any image with busybox sh and nc)",
        start_timeout: "raise --start-timeout for slow image pulls",
        gc_command: "kubectl keyctl gc",
    },
};

/// The script run in the helper pod: `nc` to each address in turn, the first that connects
/// carries the session. Arguments: PORT WAIT ADDRESS... A connection that fails (refused, timed
/// out, no route, an address family the image lacks) tries the next; one that was made ends the
/// script with nc's status. nc's stdout is the script's (fd 3), its stderr is read to tell the two
/// apart (busybox words: "can't connect", "timed out", "bad address").
pub const SCRIPT: &str = r#"exec 3>&1
port=$1 wait=$2
shift 2
for addr in "$@"; do
  err=$(nc -w "$wait" "$addr" "$port" 2>&1 1>&3 3>&-)
  code=$?
  case $err in
    *"can't connect"*|*"timed out"*|*"bad address"*|*"refused"*|*"unreachable"*|*"No route"*)
      echo "$addr: ${err#nc: }" >&2
      continue ;;
  esac
  [ -n "$err" ] && echo "$err" >&2
  exit $code
done
exit 3
"#;

/// How `keyctl proxy` reaches the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Directly when an address answers, else through the API server.
    Auto,
    /// Only the Node's advertised addresses.
    Direct,
    /// Only through the API server (a helper pod on the node).
    Api,
}

/// `keyctl proxy`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Use as OpenSSH's ProxyCommand (stdout is the SSH stream; messages go to stderr):
  ssh -o 'ProxyCommand kubectl keyctl proxy %h %p' root@node1
  Host *.k8s
    ProxyCommand kubectl keyctl proxy --domain k8s %h %p"
)]
pub struct ProxyArgs {
    /// The host as ssh passes it (%h): a node name, or NODE.DOMAIN with --domain.
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The node's sshd port (%p).
    #[arg(value_name = "PORT")]
    pub port: u16,
    /// Strip this trailing domain from HOST to get the node name (`node1.k8s` -> `node1`).
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// How to reach the node.
    #[arg(long, value_enum, default_value_t = Via::Auto)]
    pub via: Via,
    /// Which of the Node's status.addresses to try directly, in this order (InternalIP,
    /// ExternalIP, InternalDNS, ExternalDNS, Hostname).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = DEFAULT_ADDRESS_TYPES,
        value_name = "TYPE,..."
    )]
    pub address_types: Vec<String>,
    /// How long each address may take to accept the connection (directly, and from the helper
    /// pod).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// The namespace of helper pods.
    #[arg(long, default_value = DEFAULT_HELPER_NAMESPACE, value_name = "NAMESPACE")]
    pub helper_namespace: String,
    /// The helper pod's image (busybox `sh` and `nc`). From the environment too, so that ssh's
    /// ProxyCommand (from `keyctl ssh` or `ssh-config`) finds an air-gapped site's mirror.
    #[arg(long, env = "NODEGATE_PROXY_IMAGE", default_value = DEFAULT_IMAGE, value_name = "IMAGE")]
    pub image: String,
    /// The helper image's pull policy (Always, IfNotPresent, Never).
    #[arg(long, env = "NODEGATE_PROXY_IMAGE_PULL_POLICY", value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// How long the helper pod may take to start.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub start_timeout: Duration,
    /// The helper pod's activeDeadlineSeconds: Kubernetes ends it then, even if keyctl could not.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub deadline: Duration,
    /// No progress on stderr (errors still are).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `keyctl gc`: helper pods of `keyctl proxy` (and so of `keyctl ssh`) left behind.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// The namespace of helper pods.
    #[arg(long, default_value = DEFAULT_HELPER_NAMESPACE, value_name = "NAMESPACE")]
    pub helper_namespace: String,
    /// A heartbeat older than this means the session is gone.
    #[arg(long, default_value = "3m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub stale_after: Duration,
    /// Delete live sessions too.
    #[arg(long)]
    pub all: bool,
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
}

/// Why the proxy could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The node does not exist.
    #[error("node {node} not found{from} (kubectl get nodes lists them)")]
    UnknownNode {
        /// The node name.
        node: String,
        /// ", from host X" when HOST differed.
        from: String,
    },
    /// Direct only, and no address answered.
    #[error("no address of node {node} answered on port {port} ({tried}); try --via api")]
    NoAnswer {
        /// The node.
        node: String,
        /// The port.
        port: u16,
        /// What each address said.
        tried: String,
    },
    /// No address answered, and the API path is not allowed.
    #[error("no address of node {node} answered on port {port} ({tried}), and {denied}")]
    NoAnswerNoPermission {
        /// The node.
        node: String,
        /// The port.
        port: u16,
        /// What each address said.
        tried: String,
        /// The access refusal, with the role to ask for.
        denied: String,
    },
    /// The API server could not be reached to read the node, nor the host directly.
    #[error(
        "cannot reach the API server to look node {node} up ({reason}), and {host} did not answer directly on port {port} ({tried})"
    )]
    ApiUnreachable {
        /// The node.
        node: String,
        /// What the client said.
        reason: String,
        /// The host as given.
        host: String,
        /// The port.
        port: u16,
        /// What dialling it said.
        tried: String,
    },
    /// The node's kubelet does not report, so no helper pod can start there.
    #[error(
        "node {node}: no address answered ({tried}), and its kubelet is not reporting, so no helper pod can start there; try the cloud provider's serial console"
    )]
    NotReporting {
        /// The node.
        node: String,
        /// What each address said, if tried.
        tried: String,
    },
    /// The caller may not read the node, which the direct path needs.
    #[error("you may not read node {node}, so its addresses are unknown. {advice}")]
    NodeForbidden {
        /// The node.
        node: String,
        /// Which role gives it.
        advice: String,
    },
    /// Inside the node, nothing answered either.
    #[error(
        "the helper pod on node {node} could not connect to port {port} on the node ({tried}): is sshd running there?"
    )]
    NoAnswerInside {
        /// The node.
        node: String,
        /// The port.
        port: u16,
        /// What the helper said.
        tried: String,
    },
    /// The stream through the API server broke.
    #[error(
        "lost the connection to the helper pod on node {0} (the API server, kubelet or network dropped it)"
    )]
    Lost(String),
    /// The exec into the helper pod failed.
    #[error("exec into helper pod {pod}")]
    Exec {
        /// The pod.
        pod: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// A shared helper-pod or client error.
    #[error(transparent)]
    Cluster(#[from] nodegate_cluster_client::Error),
}

/// The Node name meant by `host` (what ssh passes as `%h`): a trailing dot dropped, `.DOMAIN`
/// stripped when `domain` is given (case-insensitively, as DNS names compare), lowercased (node
/// names are lowercase DNS names; ssh keeps the case the user typed).
pub fn node_name(host: &str, domain: Option<&str>) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let Some(domain) = domain
        .map(|d| d.trim_matches('.').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
    else {
        return host;
    };
    match host.strip_suffix(&domain) {
        Some(rest) if rest.ends_with('.') && rest.len() > 1 => rest[..rest.len() - 1].to_owned(),
        _ => host,
    }
}

/// The addresses to dial directly, in order: by type as `types` lists them (case-insensitive),
/// within a type as the Node lists them, each once.
pub fn direct_candidates(addresses: &[NodeAddress], types: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for kind in types {
        for address in addresses
            .iter()
            .filter(|a| a.type_.eq_ignore_ascii_case(kind.trim()))
        {
            let value = address.address.trim();
            if !value.is_empty() && !out.iter().any(|o| o == value) {
                out.push(value.to_owned());
            }
        }
    }
    out
}

/// The addresses the helper pod tries from inside the node: loopback (where sshd listens too on
/// most nodes), then the node's own IP addresses (InternalIP, then ExternalIP), each once.
/// Names are left out: a busybox image resolves them differently from the node.
pub fn inside_candidates(addresses: &[NodeAddress]) -> Vec<String> {
    let mut out = vec!["127.0.0.1".to_owned(), "::1".to_owned()];
    for kind in ["InternalIP", "ExternalIP"] {
        for address in addresses.iter().filter(|a| a.type_ == kind) {
            let value = address.address.trim();
            if value.parse::<IpAddr>().is_ok() && !out.iter().any(|o| o == value) {
                out.push(value.to_owned());
            }
        }
    }
    out
}

/// Which paths `via` tries, in order: (direct, API).
pub fn paths(via: Via) -> (bool, bool) {
    match via {
        Via::Auto => (true, true),
        Via::Direct => (true, false),
        Via::Api => (false, true),
    }
}

/// What the helper's run told, once its stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsideOutcome {
    /// A session ran (bytes came from sshd) or the client ended it.
    Session,
    /// No address answered inside the node.
    NoAnswer,
    /// The stream ended without any byte and without a status: the connection broke.
    Lost,
}

/// Judges the end of the helper's stream: `received` bytes from the node, the script's exit
/// code if the status came (`Some(0)` success), and whether our side (ssh) ended first.
pub fn inside_outcome(received: u64, exit: Option<i32>, client_ended: bool) -> InsideOutcome {
    if client_ended || received > 0 {
        return InsideOutcome::Session;
    }
    match exit {
        Some(HELPER_NO_ANSWER) => InsideOutcome::NoAnswer,
        Some(0) => InsideOutcome::Session,
        Some(_) => InsideOutcome::NoAnswer,
        None => InsideOutcome::Lost,
    }
}

/// Runs `keyctl proxy` and exits the process with its code: a read of stdin may still be
/// pending in a blocking thread, which would hold the runtime's shutdown until ssh closes the
/// pipe.
pub async fn run_and_exit(connection: &Connection, args: &ProxyArgs) -> ! {
    let code = match run(connection, args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!(
                "keyctl proxy: error: {}",
                nodegate_cluster_client::render(error.as_ref())
            );
            1
        }
    };
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// A spinner on stderr while something is prepared (hidden when stderr is not a terminal or
/// with `--quiet`), removed before bytes flow; warnings always show.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr())
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} keyctl proxy: {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar }
    }
}

impl helper_pod::Progress for Progress {
    fn say(&self, message: String) {
        tracing::debug!("{message}");
        self.bar.set_message(message);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn warn(&self, message: &str) {
        self.bar
            .suspend(|| eprintln!("keyctl proxy: warning: {message}"));
    }
}

/// Connects; returns the exit code.
async fn run(connection: &Connection, args: &ProxyArgs) -> anyhow::Result<i32> {
    // Before anything exists, so that no signal can leave a pod behind.
    let mut signals = Signals::new()?;
    let node = node_name(&args.host, args.domain.as_deref());
    let (try_direct, try_api) = paths(args.via);
    let progress = Progress::new(args.quiet);
    use helper_pod::Progress as _;

    let options = ClientOptions {
        kubeconfig: connection.kubeconfig.clone(),
        context: connection.context.clone(),
    };
    let connected = options.connect().await?;
    let client = connected.client.clone();
    progress.say(format!("looking up node {node}"));
    let nodes: Api<Node> = Api::all(client.clone());
    let mut readiness = None;
    let addresses = match nodes.get(&node).await {
        Ok(found) => {
            readiness = Some(helper_pod::node_readiness(&found));
            Some(found.status.and_then(|s| s.addresses).unwrap_or_default())
        }
        Err(error) if status::is_not_found(&error) => {
            progress.finish();
            let from = if node == args.host {
                String::new()
            } else {
                format!(", from host {}", args.host)
            };
            return Err(ProxyError::UnknownNode { node, from }.into());
        }
        Err(error) if status::is_forbidden(&error) => {
            if !try_api {
                progress.finish();
                return Err(ProxyError::NodeForbidden {
                    node,
                    advice: crate::access::VIEWER_ROLE
                        .advice(&identity::caller_name(&client, &connected.config).await),
                }
                .into());
            }
            tracing::debug!("may not read node {node}: going through the API server");
            None
        }
        Err(error) if status::api_status(&error).is_none() => {
            // The API server is unreachable: only the host itself may still answer.
            let reason = nodegate_cluster_client::describe_kube_error(&error);
            progress.finish();
            if !try_direct {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot reach the API server to look node {node} up"
                )));
            }
            eprintln!(
                "keyctl proxy: cannot reach the API server ({reason}); trying {} directly",
                args.host
            );
            let candidates = vec![args.host.trim_end_matches('.').to_owned()];
            return match dial(&candidates, args.port, args.connect_timeout).await {
                Ok((stream, _)) => Ok(pipe_tcp(stream, &mut signals).await),
                Err(tried) => Err(ProxyError::ApiUnreachable {
                    node,
                    reason,
                    host: args.host.clone(),
                    port: args.port,
                    tried,
                }
                .into()),
            };
        }
        Err(error) => {
            progress.finish();
            return Err(anyhow::Error::new(error).context(format!("reading node {node}")));
        }
    };

    let mut tried = String::from("not tried with --via api");
    if try_direct {
        let candidates = direct_candidates(
            addresses.as_deref().unwrap_or_default(),
            &args.address_types,
        );
        progress.say(format!("connecting to {node} ({})", candidates.join(", ")));
        match dial(&candidates, args.port, args.connect_timeout).await {
            Ok((stream, address)) => {
                progress.finish();
                tracing::debug!("connected to {address}:{}", args.port);
                return Ok(pipe_tcp(stream, &mut signals).await);
            }
            Err(what) => tried = what,
        }
        if !try_api {
            progress.finish();
            return Err(ProxyError::NoAnswer {
                node,
                port: args.port,
                tried,
            }
            .into());
        }
        progress.say(format!(
            "no address of {node} answered ({tried}); going through the API server"
        ));
    }

    // A kubelet that does not report would never start the helper pod: say so now, not after
    // the start timeout. One that reports NotReady (its pod network is down...) is tried: the
    // helper uses the host's network.
    if let Some(helper_pod::NodeReadiness::NotReporting { .. }) = readiness {
        progress.finish();
        return Err(ProxyError::NotReporting { node, tried }.into());
    }
    let namespace = args.helper_namespace.as_str();
    let permissions = helper_pod::access::helper_permissions(namespace);
    if let Err(error) = helper_pod::access::require(&client, &TOOL, &permissions).await {
        progress.finish();
        return Err(match (error, try_direct) {
            (denied @ nodegate_cluster_client::Error::Denied { .. }, true) => {
                ProxyError::NoAnswerNoPermission {
                    node,
                    port: args.port,
                    tried,
                    denied: denied.to_string(),
                }
                .into()
            }
            (error, _) => error.into(),
        });
    }

    let caller = identity::caller_name(&client, &connected.config).await;
    let inside = inside_candidates(addresses.as_deref().unwrap_or_default());
    let target = format!("port {} of node {node}", args.port);
    let pod = helper_pod_spec(args, &node, &caller, &target);
    // The stream gets a client of its own without a read timeout: an idle SSH session sends
    // nothing for as long as its user types nothing.
    let mut stream_config = connected.config.clone();
    stream_config.read_timeout = None;
    let stream_client = Client::try_from(stream_config)?;
    let lifecycle = Lifecycle {
        tool: &TOOL,
        namespace,
        pod,
        start_timeout: args.start_timeout,
        deadline: args.deadline,
    };
    let port = args.port;
    let wait = args.connect_timeout.as_secs().max(1);
    let ended = helper_pod::run(&client, lifecycle, &progress, &mut signals, |running| {
        through_pod(
            stream_client,
            running,
            &node,
            port,
            wait,
            &inside,
            &progress,
        )
    })
    .await?;
    match ended {
        Ended::Finished(code) => Ok(code),
        Ended::Interrupted { signal, pod } => {
            // ssh ends its ProxyCommand with SIGHUP when it is done, so that one is no news.
            if signal == "SIGHUP" {
                tracing::debug!("ended by SIGHUP; helper pod {pod} deleted");
            } else {
                eprintln!("keyctl proxy: interrupted by {signal}; helper pod {pod} deleted");
            }
            Ok(i32::from(Signals::exit_code(signal)))
        }
    }
}

/// The helper pod: the shared one (pinned, tolerating every taint, no token, deadline), in the
/// host's network namespace only, as an unprivileged user with a read-only root filesystem,
/// no capabilities and the runtime's default seccomp profile.
pub fn helper_pod_spec(args: &ProxyArgs, node: &str, caller: &str, target: &str) -> Pod {
    let mut pod = helper_pod::helper_pod(
        &TOOL,
        &helper_pod::PodRequest {
            node,
            caller,
            target,
            now: chrono::Utc::now(),
            image: &args.image,
            image_pull_policy: args.image_pull_policy.as_deref(),
            deadline: args.deadline,
            host: HostNamespaces {
                network: true,
                ..HostNamespaces::default()
            },
            security_context: Some(SecurityContext {
                run_as_user: Some(HELPER_UID),
                run_as_group: Some(HELPER_UID),
                run_as_non_root: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..SecurityContext::default()
            }),
            // A node in trouble is when a way in is wanted; the lifecycle goes on without it
            // where the cluster refuses it.
            priority_class: Some("system-node-critical"),
        },
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.security_context = Some(PodSecurityContext {
            seccomp_profile: Some(k8s_openapi::api::core::v1::SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..PodSecurityContext::default()
        });
    }
    pod
}

/// Dials each candidate in turn, `timeout` each; the first that accepts wins. On failure, what
/// each said.
async fn dial(
    candidates: &[String],
    port: u16,
    timeout: Duration,
) -> Result<(tokio::net::TcpStream, String), String> {
    let mut tried = Vec::new();
    for candidate in candidates {
        match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((candidate.as_str(), port)),
        )
        .await
        {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, candidate.clone()));
            }
            Ok(Err(error)) => tried.push(format!("{candidate}: {error}")),
            Err(_) => tried.push(format!(
                "{candidate}: no answer within {}",
                humantime::format_duration(timeout)
            )),
        }
    }
    if tried.is_empty() {
        return Err("the Node advertises no address of the types asked for".into());
    }
    Err(tried.join("; "))
}

/// Copies `reader` to `writer` chunk by chunk, flushing each; returns the bytes copied when
/// `reader` ends (or either side fails).
async fn pump(mut reader: impl AsyncRead + Unpin, mut writer: impl AsyncWrite + Unpin) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() || writer.flush().await.is_err() {
                    return total;
                }
                total += n as u64;
            }
        }
    }
}

/// The direct path: stdin to the socket, the socket to stdout, until the node closes (our stdin
/// ending closes the socket's sending half, as a TCP client does), or a signal.
async fn pipe_tcp(stream: tokio::net::TcpStream, signals: &mut Signals) -> i32 {
    let (from_node, mut to_node) = stream.into_split();
    let upstream = async {
        pump(tokio::io::stdin(), &mut to_node).await;
        let _ = to_node.shutdown().await;
        std::future::pending::<()>().await;
    };
    tokio::select! {
        _ = pump(from_node, tokio::io::stdout()) => 0,
        () = upstream => 0,
        signal = signals.next() => i32::from(Signals::exit_code(signal)),
    }
}

/// The API path: exec the script in the running helper pod, with raw stdin and stdout (no
/// framing: when ssh closes its end, the whole connection may close, and the pod goes).
async fn through_pod(
    client: Client,
    running: Running,
    node: &str,
    port: u16,
    wait: u64,
    inside: &[String],
    progress: &Progress,
) -> Result<i32, ProxyError> {
    use helper_pod::Progress as _;
    let namespace = running.pods.namespace().unwrap_or_default().to_owned();
    let Running { name, .. } = running;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    progress.say(format!("{name}: connecting to port {port} inside {node}"));
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        SCRIPT.into(),
        "keyctl-proxy".into(),
        port.to_string(),
        wait.to_string(),
    ];
    argv.extend(inside.iter().cloned());
    let params = AttachParams::default()
        .container(TOOL.name)
        .stdin(true)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(&name, argv, &params)
        .await
        .map_err(|source| ProxyError::Exec {
            pod: name.clone(),
            source,
        })?;
    progress.finish();
    let remote_in = process.stdin().expect("stdin was asked for");
    let remote_out = process.stdout().expect("stdout was asked for");
    let mut remote_err = process.stderr().expect("stderr was asked for");
    let status = process.take_status().expect("status is taken once");
    // Drained all along: a full stderr buffer would stall the whole stream.
    let errors = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = remote_err.read_to_end(&mut text).await;
        String::from_utf8_lossy(&text).trim().to_owned()
    });
    let upstream = async {
        pump(tokio::io::stdin(), remote_in).await;
    };
    let (received, client_ended) = tokio::select! {
        received = pump(remote_out, tokio::io::stdout()) => (received, false),
        () = upstream => (0, true),
    };
    if client_ended {
        return Ok(0);
    }
    let exit = tokio::time::timeout(Duration::from_secs(5), status)
        .await
        .ok()
        .flatten()
        .map(|s| exit_code(&s));
    let said = tokio::time::timeout(Duration::from_secs(1), errors)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    match inside_outcome(received, exit, client_ended) {
        InsideOutcome::Session => Ok(exit.unwrap_or(0).clamp(0, 255)),
        InsideOutcome::NoAnswer => Err(ProxyError::NoAnswerInside {
            node: node.to_owned(),
            port,
            tried: if said.is_empty() {
                format!("exit {}", exit.unwrap_or_default())
            } else {
                said.lines().collect::<Vec<_>>().join("; ")
            },
        }),
        InsideOutcome::Lost => Err(ProxyError::Lost(node.to_owned())),
    }
}

/// The exit code in an exec's final Status: 0 on Success, the `ExitCode` cause otherwise.
fn exit_code(status: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status) -> i32 {
    if status.status.as_deref() == Some("Success") {
        return 0;
    }
    status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.reason.as_deref() == Some("ExitCode"))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse().ok())
        .unwrap_or(1)
}

/// `keyctl gc`: lists helper pods of `keyctl proxy` with a verdict, and deletes the leftovers.
pub async fn gc(session: &crate::session::Session, args: &GcArgs) -> anyhow::Result<bool> {
    let swept = gc::sweep(
        &session.client,
        &TOOL,
        &args.helper_namespace,
        gc::Sweep {
            stale_after: args.stale_after,
            all: args.all,
            dry_run: args.dry_run,
        },
        chrono::Utc::now(),
    )
    .await?;
    if swept.is_empty() {
        println!(
            "no helper pods of keyctl proxy in {}",
            args.helper_namespace
        );
        return Ok(true);
    }
    let mut table = comfy_table::Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(["POD", "NODE", "USER", "STATE", "ACTION"]);
    let mut ok = true;
    for one in &swept {
        let meta = &one.pod.metadata;
        let node = one
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let user = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOOL.caller_annotation))
            .cloned()
            .unwrap_or_default();
        ok &= !matches!(one.action, gc::Action::Failed(_));
        table.add_row([
            meta.name.clone().unwrap_or_default(),
            node,
            user,
            one.verdict.describe().to_owned(),
            one.action.to_string(),
        ]);
    }
    println!("{table}");
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn address(kind: &str, value: &str) -> NodeAddress {
        NodeAddress {
            type_: kind.into(),
            address: value.into(),
        }
    }

    #[test]
    fn hosts_become_node_names() {
        assert_eq!(node_name("node1", None), "node1");
        assert_eq!(node_name("node1.k8s", Some("k8s")), "node1");
        assert_eq!(node_name("Node1.K8S.", Some(".k8s")), "node1");
        assert_eq!(node_name("node1.k8s", None), "node1.k8s");
        // Only a whole trailing label sequence is stripped.
        assert_eq!(node_name("nodek8s", Some("k8s")), "nodek8s");
        assert_eq!(node_name("k8s", Some("k8s")), "k8s");
        assert_eq!(node_name(".k8s", Some("k8s")), ".k8s");
        assert_eq!(
            node_name("ip-10-0-3-17.ec2.internal.prod.k8s", Some("prod.k8s")),
            "ip-10-0-3-17.ec2.internal"
        );
        assert_eq!(node_name("node1", Some("")), "node1");
    }

    #[test]
    fn direct_candidates_follow_the_type_order() {
        let addresses = [
            address("Hostname", "node1"),
            address("ExternalIP", "203.0.113.7"),
            address("InternalIP", "10.0.0.7"),
            address("InternalIP", "fd00::7"),
            address("ExternalIP", "10.0.0.7"),
        ];
        let types = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            direct_candidates(&addresses, &types(DEFAULT_ADDRESS_TYPES)),
            ["10.0.0.7", "fd00::7", "203.0.113.7"]
        );
        assert_eq!(
            direct_candidates(&addresses, &types("externalip,Hostname")),
            ["203.0.113.7", "10.0.0.7", "node1"]
        );
        assert!(direct_candidates(&addresses, &types("InternalDNS")).is_empty());
        assert!(direct_candidates(&[], &types(DEFAULT_ADDRESS_TYPES)).is_empty());
    }

    #[test]
    fn inside_the_node_loopback_comes_first_then_its_own_ips() {
        let addresses = [
            address("Hostname", "node1"),
            address("ExternalIP", "203.0.113.7"),
            address("InternalIP", "10.0.0.7"),
            address("InternalDNS", "node1.internal"),
            address("InternalIP", "127.0.0.1"),
        ];
        assert_eq!(
            inside_candidates(&addresses),
            ["127.0.0.1", "::1", "10.0.0.7", "203.0.113.7"]
        );
        assert_eq!(inside_candidates(&[]), ["127.0.0.1", "::1"]);
    }

    #[test]
    fn via_chooses_the_paths() {
        assert_eq!(paths(Via::Auto), (true, true));
        assert_eq!(paths(Via::Direct), (true, false));
        assert_eq!(paths(Via::Api), (false, true));
    }

    #[test]
    fn the_end_of_the_helpers_stream_is_judged() {
        assert_eq!(inside_outcome(10, Some(0), false), InsideOutcome::Session);
        assert_eq!(inside_outcome(10, None, false), InsideOutcome::Session);
        assert_eq!(inside_outcome(0, None, true), InsideOutcome::Session);
        assert_eq!(inside_outcome(0, Some(3), false), InsideOutcome::NoAnswer);
        assert_eq!(inside_outcome(0, Some(1), false), InsideOutcome::NoAnswer);
        assert_eq!(inside_outcome(0, Some(0), false), InsideOutcome::Session);
        assert_eq!(inside_outcome(0, None, false), InsideOutcome::Lost);
    }

    #[test]
    fn the_helper_pod_is_unprivileged_on_the_hosts_network_only() {
        let cli =
            crate::cli::Cli::parse_from(["keyctl", "proxy", "--domain", "k8s", "node1.k8s", "22"]);
        let crate::cli::Command::Proxy(args) = cli.command else {
            panic!("not proxy");
        };
        assert_eq!(args.via, Via::Auto);
        assert_eq!(args.address_types, ["InternalIP", "ExternalIP"]);
        let pod = helper_pod_spec(&args, "node1", "bob", "port 22 of node node1");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.node_name.as_deref(), Some("node1"));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.host_pid, Some(false));
        assert_eq!(spec.host_ipc, Some(false));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.tolerations.expect("tolerations")[0]
                .operator
                .as_deref(),
            Some("Exists")
        );
        let security = spec.containers[0]
            .security_context
            .clone()
            .expect("context");
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let labels = pod.metadata.labels.expect("labels");
        assert_eq!(labels[helper_pod::MANAGED_BY_LABEL], MANAGED_BY);
        assert_eq!(
            pod.metadata.generate_name.as_deref(),
            Some("keyctl-proxy-node1-")
        );
    }

    #[test]
    fn exec_statuses_become_exit_codes() {
        let status: k8s_openapi::apimachinery::pkg::apis::meta::v1::Status =
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
            }))
            .expect("status");
        assert_eq!(exit_code(&status), 3);
        let ok: k8s_openapi::apimachinery::pkg::apis::meta::v1::Status =
            serde_json::from_value(serde_json::json!({"status": "Success"})).expect("status");
        assert_eq!(exit_code(&ok), 0);
    }
}
