//! `keyctl ssh-config`: a block for `~/.ssh/config` that sends `ssh`, `scp`, `sftp`, `rsync -e
//! ssh` and Ansible to nodes through keyctl, with host keys from the API and nothing else.
//!
//! Everything it prints is decided by pure functions here ([`render`], [`keyctl_words`],
//! [`command_word`]); `keyctl ssh` builds its `-o` options with the same ones.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use nodegate_core::node_name::is_dns_subdomain;
use nodegate_core::{AnnotationPrefix, LoginUser};

use crate::cli::Connection;
use crate::session::Session;

/// The domain of the host pattern when none is given: `ssh node1.k8s`.
pub const DEFAULT_DOMAIN: &str = "k8s";

/// How `keyctl proxy` reaches a node's sshd (its `--via`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// Directly when an address answers, else through the API server.
    Auto,
    /// Only to the node's advertised addresses.
    Direct,
    /// Only through the API server (a helper pod on the node).
    Api,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Auto => "auto",
            Via::Direct => "direct",
            Via::Api => "api",
        }
    }
}

/// `keyctl ssh-config`.
#[derive(Debug, Args)]
pub struct SshConfigArgs {
    /// Node names: a block per node (`Host NODE`), so that `ssh NODE` works as it is. Without
    /// them (and without --nodes), one block for the host pattern `*.DOMAIN`.
    #[arg(value_name = "NODE")]
    pub names: Vec<String>,
    /// A block per node of the current context, from its node list.
    #[arg(long, conflicts_with = "names")]
    pub nodes: bool,
    /// The domain of the host pattern: `ssh NODE.DOMAIN` goes through keyctl.
    #[arg(long, default_value = DEFAULT_DOMAIN, value_name = "DOMAIN")]
    pub domain: String,
    /// The login user on the nodes (keyctl grant's default user is root).
    #[arg(short, long, default_value = "root", value_name = "LOGIN")]
    pub user: String,
    /// Leave `User` out, so that ssh's own default (or `ssh LOGIN@...`) applies.
    #[arg(long, conflicts_with = "user")]
    pub no_user: bool,
    /// How the proxy reaches the nodes (default: keyctl proxy's own, auto).
    #[arg(long, value_enum, value_name = "HOW")]
    pub via: Option<Via>,
    /// Run keyctl by this binary's absolute path instead of as the kubectl plugin
    /// (`kubectl keyctl`).
    #[arg(long)]
    pub absolute_path: bool,
}

/// What the block is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hosts {
    /// `Host *.DOMAIN`.
    Pattern {
        /// The domain, validated.
        domain: String,
    },
    /// `Host NODE` per node, with `HostKeyAlias` and `HostName`.
    Nodes(Vec<String>),
}

/// Everything the block depends on.
#[derive(Debug, Clone)]
pub struct ConfigSpec {
    /// The hosts.
    pub hosts: Hosts,
    /// `User`, if any.
    pub user: Option<String>,
    /// How keyctl is run: words already quoted for ssh_config (see [`keyctl_words`]).
    pub keyctl: Vec<String>,
    /// `--via` for the proxy.
    pub via: Option<Via>,
}

/// Runs `keyctl ssh-config`.
pub async fn run(connection: &Connection, args: &SshConfigArgs) -> anyhow::Result<bool> {
    let user = if args.no_user {
        None
    } else {
        Some(LoginUser::new(&args.user).context("--user")?.to_string())
    };
    let hosts = if args.nodes {
        let session = Session::connect(connection).await?;
        let mut names: Vec<String> = session
            .nodes()
            .list_metadata(&Default::default())
            .await
            .context("listing the nodes of the current context")?
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.sort();
        if names.is_empty() {
            bail!("the cluster has no nodes");
        }
        Hosts::Nodes(validate_nodes(&names)?)
    } else if !args.names.is_empty() {
        Hosts::Nodes(validate_nodes(&args.names)?)
    } else {
        Hosts::Pattern {
            domain: validate_domain(&args.domain)?,
        }
    };
    let program = if args.absolute_path {
        Program::Binary(std::env::current_exe().context("finding this binary's path")?)
    } else {
        Program::KubectlPlugin
    };
    let spec = ConfigSpec {
        hosts,
        user,
        keyctl: keyctl_words(&program, connection)?,
        via: args.via,
    };
    print!("{}", render(&spec));
    Ok(true)
}

/// How ssh is to run keyctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `/usr/bin/env kubectl keyctl`: the plugin, found on PATH wherever it was installed.
    KubectlPlugin,
    /// A binary by its path.
    Binary(PathBuf),
}

/// The words that run keyctl with the caller's connection flags (kubeconfig, context, a prefix
/// other than the default), each quoted for ssh_config's `ProxyCommand` and `KnownHostsCommand`.
pub fn keyctl_words(program: &Program, connection: &Connection) -> anyhow::Result<Vec<String>> {
    let mut words = match program {
        // ssh runs a KnownHostsCommand only by an absolute path ("path is not absolute"
        // otherwise); /usr/bin/env then finds kubectl on PATH as a shell would.
        Program::KubectlPlugin => ["/usr/bin/env", "kubectl", "keyctl"]
            .map(str::to_owned)
            .to_vec(),
        Program::Binary(path) => vec![path_word(path).context("this binary's path")?],
    };
    if let Some(kubeconfig) = &connection.kubeconfig {
        // The commands run from wherever ssh runs: a relative path would not do.
        let absolute = std::path::absolute(kubeconfig).context("--kubeconfig")?;
        words.push("--kubeconfig".into());
        words.push(path_word(&absolute).context("--kubeconfig")?);
    }
    if let Some(context) = &connection.context {
        words.push("--context".into());
        words.push(command_word(context).context("--context")?);
    }
    if connection.prefix != AnnotationPrefix::default() {
        words.push("--prefix".into());
        words.push(command_word(connection.prefix.as_str()).context("--prefix")?);
    }
    Ok(words)
}

fn path_word(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    command_word(text)
}

/// One word of a `ProxyCommand` (run by `/bin/sh`) or `KnownHostsCommand` (split by ssh
/// itself): as it is when it needs no quoting, else in single quotes; `%` doubled, as ssh
/// expands `%` tokens in both. Characters the two parsers treat differently (quotes,
/// backslashes, `$`, control characters) are refused rather than escaped.
pub fn command_word(text: &str) -> anyhow::Result<String> {
    if text.is_empty() {
        bail!("an empty word cannot be passed to ssh");
    }
    if let Some(bad) = text
        .chars()
        .find(|c| matches!(c, '\'' | '"' | '\\' | '$' | '`') || c.is_control())
    {
        bail!(
            "{:?} contains {bad:?}, which cannot be passed safely through ssh's configuration",
            text
        );
    }
    let escaped = text.replace('%', "%%");
    let plain = escaped
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_./:@=+,-%".contains(c));
    Ok(if plain {
        escaped
    } else {
        format!("'{escaped}'")
    })
}

/// A value for ssh's `-i`/`IdentityFile`: ssh expands `%` tokens and `${VAR}` in it.
pub fn identity_file_word(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))?;
    if text.contains("${") || text.chars().any(char::is_control) {
        bail!("{text:?} cannot be given to ssh as an identity file");
    }
    Ok(text.replace('%', "%%"))
}

/// Validates node names (they go into ssh_config unquoted).
pub fn validate_nodes(names: &[String]) -> anyhow::Result<Vec<String>> {
    names
        .iter()
        .map(|name| {
            if is_dns_subdomain(name) {
                Ok(name.clone())
            } else {
                bail!("{name:?} is not a node name (a DNS subdomain: lowercase letters, digits, '-' and '.')")
            }
        })
        .collect()
}

/// Validates a domain: a DNS subdomain; a leading dot is allowed and dropped.
pub fn validate_domain(domain: &str) -> anyhow::Result<String> {
    let domain = domain.strip_prefix('.').unwrap_or(domain);
    if !is_dns_subdomain(domain) {
        bail!(
            "--domain {domain:?} is not a DNS subdomain (lowercase letters, digits, '-' and '.'), e.g. --domain k8s or --domain prod.k8s"
        );
    }
    Ok(domain.to_owned())
}

/// The `ProxyCommand` value: `KEYCTL proxy [--domain D] [--via V] HOST PORT`.
pub fn proxy_command(
    keyctl: &[String],
    domain: Option<&str>,
    via: Option<Via>,
    host: &str,
    port: &str,
) -> String {
    let mut words: Vec<String> = keyctl.to_vec();
    words.push("proxy".into());
    if let Some(domain) = domain {
        words.extend(["--domain".into(), domain.into()]);
    }
    if let Some(via) = via {
        words.extend(["--via".into(), via.as_str().into()]);
    }
    words.extend([host.into(), port.into()]);
    words.join(" ")
}

/// The `KnownHostsCommand` value: `KEYCTL known-hosts [--domain D] HOST`.
pub fn known_hosts_command(keyctl: &[String], domain: Option<&str>, host: &str) -> String {
    let mut words: Vec<String> = keyctl.to_vec();
    words.push("known-hosts".into());
    if let Some(domain) = domain {
        words.extend(["--domain".into(), domain.into()]);
    }
    words.push(host.into());
    words.join(" ")
}

/// The host-key options every block (and `keyctl ssh`) sets: only the API decides which host
/// key is right, and a key it does not list is a refusal, never a prompt.
pub const HOST_KEY_OPTIONS: [(&str, &str); 4] = [
    ("StrictHostKeyChecking", "yes"),
    ("UserKnownHostsFile", "/dev/null"),
    ("GlobalKnownHostsFile", "/dev/null"),
    ("UpdateHostKeys", "no"),
];

/// The text of the block.
pub fn render(spec: &ConfigSpec) -> String {
    let mut out = String::from(
        "# nodegate: ssh to Kubernetes nodes through keyctl, host keys from the API\n\
         # (printed by keyctl ssh-config; grant a key first: kubectl keyctl grant NODE --expires 2h)\n",
    );
    let mut block = |host_line: String, alias: Option<&str>, domain: Option<&str>| {
        out.push_str(&format!("Host {host_line}\n"));
        if let Some(alias) = alias {
            out.push_str(&format!("    HostName {alias}\n    HostKeyAlias {alias}\n"));
        }
        if let Some(user) = &spec.user {
            out.push_str(&format!("    User {user}\n"));
        }
        out.push_str(&format!(
            "    ProxyCommand {}\n",
            proxy_command(&spec.keyctl, domain, spec.via, "%h", "%p")
        ));
        out.push_str(&format!(
            "    KnownHostsCommand {}\n",
            known_hosts_command(&spec.keyctl, domain, "%H")
        ));
        for (option, value) in HOST_KEY_OPTIONS {
            out.push_str(&format!("    {option} {value}\n"));
        }
    };
    match &spec.hosts {
        Hosts::Pattern { domain } => block(format!("*.{domain}"), None, Some(domain)),
        Hosts::Nodes(names) => {
            for name in names {
                block(name.clone(), Some(name), None);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(kubeconfig: Option<&str>, context: Option<&str>) -> Connection {
        Connection {
            kubeconfig: kubeconfig.map(PathBuf::from),
            context: context.map(str::to_owned),
            prefix: AnnotationPrefix::default(),
            concurrency: 32,
        }
    }

    #[test]
    fn words_are_quoted_only_when_needed_and_refused_when_unsafe() {
        assert_eq!(command_word("kubectl").unwrap(), "kubectl");
        assert_eq!(command_word("/usr/bin/keyctl").unwrap(), "/usr/bin/keyctl");
        assert_eq!(command_word("my context").unwrap(), "'my context'");
        assert_eq!(command_word("a;b").unwrap(), "'a;b'");
        assert_eq!(command_word("~/kube").unwrap(), "'~/kube'");
        assert_eq!(command_word("50%").unwrap(), "50%%");
        assert_eq!(command_word("x y%h").unwrap(), "'x y%%h'");
        for bad in ["it's", "a\"b", "a\\b", "$HOME", "`id`", "a\nb", ""] {
            assert!(command_word(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_plugin_form_passes_the_connection_flags_through() {
        let words = keyctl_words(
            &Program::KubectlPlugin,
            &connection(Some("/home/o/.kube/prod config"), Some("prod-admin@eu")),
        )
        .unwrap();
        assert_eq!(
            words,
            [
                "/usr/bin/env",
                "kubectl",
                "keyctl",
                "--kubeconfig",
                "'/home/o/.kube/prod config'",
                "--context",
                "prod-admin@eu"
            ]
        );
        let words = keyctl_words(
            &Program::Binary("/opt/nodegate/bin/keyctl".into()),
            &connection(None, None),
        )
        .unwrap();
        assert_eq!(words, ["/opt/nodegate/bin/keyctl"]);
        let mut other_prefix = connection(None, None);
        other_prefix.prefix = AnnotationPrefix::new("ssh.example.com").unwrap();
        let words = keyctl_words(&Program::KubectlPlugin, &other_prefix).unwrap();
        assert_eq!(
            words,
            [
                "/usr/bin/env",
                "kubectl",
                "keyctl",
                "--prefix",
                "ssh.example.com"
            ]
        );
        assert!(keyctl_words(&Program::KubectlPlugin, &connection(None, Some("it's"))).is_err());
    }

    #[test]
    fn the_pattern_block() {
        let spec = ConfigSpec {
            hosts: Hosts::Pattern {
                domain: "k8s".into(),
            },
            user: Some("root".into()),
            keyctl: vec!["/usr/bin/env".into(), "kubectl".into(), "keyctl".into()],
            via: None,
        };
        let text = render(&spec);
        let expected = "Host *.k8s
    User root
    ProxyCommand /usr/bin/env kubectl keyctl proxy --domain k8s %h %p
    KnownHostsCommand /usr/bin/env kubectl keyctl known-hosts --domain k8s %H
    StrictHostKeyChecking yes
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    UpdateHostKeys no
";
        assert!(text.ends_with(expected), "{text}");
        assert!(text.lines().take(2).all(|l| l.starts_with('#')), "{text}");
    }

    #[test]
    fn the_per_node_blocks() {
        let spec = ConfigSpec {
            hosts: Hosts::Nodes(vec!["node1".into(), "ip-10-0-3-17.ec2.internal".into()]),
            user: None,
            keyctl: vec![
                "/usr/local/bin/keyctl".into(),
                "--context".into(),
                "prod".into(),
            ],
            via: Some(Via::Api),
        };
        let text = render(&spec);
        assert!(
            text.contains(
                "Host node1
    HostName node1
    HostKeyAlias node1
    ProxyCommand /usr/local/bin/keyctl --context prod proxy --via api %h %p
    KnownHostsCommand /usr/local/bin/keyctl --context prod known-hosts %H
    StrictHostKeyChecking yes
"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "Host ip-10-0-3-17.ec2.internal\n    HostName ip-10-0-3-17.ec2.internal\n"
            )
        );
        assert!(!text.contains("User "), "{text}");
    }

    #[test]
    fn names_and_domains_are_validated() {
        assert!(validate_nodes(&["node1".into(), "a.b-c".into()]).is_ok());
        for bad in [
            "Node1",
            "node1 ProxyCommand x",
            "-x",
            "a_b",
            "",
            "a\nHost *",
        ] {
            assert!(validate_nodes(&[bad.into()]).is_err(), "{bad:?}");
        }
        assert_eq!(validate_domain(".k8s").unwrap(), "k8s");
        assert_eq!(validate_domain("prod.k8s").unwrap(), "prod.k8s");
        assert!(validate_domain("*.k8s").is_err());
        assert!(validate_domain("k8s %h").is_err());
    }

    #[test]
    fn identity_files_escape_tokens() {
        assert_eq!(
            identity_file_word(Path::new("/tmp/a%b/key")).unwrap(),
            "/tmp/a%%b/key"
        );
        assert!(identity_file_word(Path::new("/tmp/${HOME}/key")).is_err());
    }
}
