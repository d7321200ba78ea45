//! Settings: defaults, the TOML config file, and command-line overrides, in that order.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nodegate_core::AnnotationPrefix;
pub use nodegate_core::node_name::{NodeName, NodeNameError};
use serde::Deserialize;

use crate::perms::{self, UnsafePath};

/// Where the config file is read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nodegate/authorized-keys-cmd.toml";
/// Where the grants cache lives unless configured.
pub const DEFAULT_CACHE_PATH: &str = "/var/lib/nodegate/grants-cache.sqlite";
/// Default freshness window: repeated calls within it are answered from the cache alone.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(5);
/// Default overall deadline for asking the API (connect, TLS, request and response).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1500);
/// Default longest age of cached grants that may still be served when the API cannot answer.
/// It is also how long a key revoked during a network partition can keep logging in on a node
/// that cannot reach the API: a day covers a long incident and a shift change, and bounds that
/// (docs/threat-model.md explains the choice).
pub const DEFAULT_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// Default time the API is not asked again after it failed to answer (timeout, unreachable, a
/// broken server): sshd runs the command several times per login.
pub const DEFAULT_API_BACKOFF: Duration = Duration::from_secs(10);
/// Longest `api_backoff` accepted: it delays noticing that the API is back.
pub const MAX_API_BACKOFF: Duration = Duration::from_secs(300);

/// Kubeconfigs tried in order when none is configured: what packaging re-exports for the
/// command's dedicated user, then where kubeadm, EKS/GKE-style images, k3s and RKE2 keep the
/// kubelet's.
pub const KUBECONFIG_SEARCH_PATH: &[&str] = &[
    "/var/lib/nodegate/node.kubeconfig",
    "/etc/kubernetes/kubelet.conf",
    "/var/lib/kubelet/kubeconfig",
    "/var/lib/rancher/k3s/agent/kubelet.kubeconfig",
    "/var/lib/rancher/rke2/agent/kubelet.kubeconfig",
];

/// A problem with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read the config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this command.
    #[error("the config file {} is invalid: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
    /// The config file could be changed by someone other than root or this command's user.
    #[error("refusing the config file: {0}")]
    Unsafe(#[from] UnsafePath),
    /// A duration setting is unreadable or out of range.
    #[error(
        "{setting} = {value:?}: {problem}; write a duration such as \"5s\", \"1500ms\" or \"7d\""
    )]
    Duration {
        /// The setting.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// The annotation prefix is not a DNS subdomain.
    #[error(transparent)]
    Prefix(#[from] nodegate_core::prefix::PrefixError),
    /// The node name is not a valid Kubernetes object name.
    #[error(transparent)]
    NodeName(#[from] NodeNameError),
}

/// The config file, `/etc/nodegate/authorized-keys-cmd.toml`. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The node's kubeconfig (default: searched in [`KUBECONFIG_SEARCH_PATH`]).
    pub kubeconfig: Option<PathBuf>,
    /// The Node to read (default: from the client certificate, `system:node:NAME`).
    pub node_name: Option<String>,
    /// The SQLite cache file.
    pub cache: Option<PathBuf>,
    /// The annotation prefix (default `ssh.nodegate.dev`).
    pub prefix: Option<String>,
    /// Freshness window, e.g. `"5s"`.
    pub freshness: Option<String>,
    /// Overall API deadline, e.g. `"1500ms"`.
    pub deadline: Option<String>,
    /// Longest age of cached grants served during an outage, e.g. `"24h"`.
    pub max_stale: Option<String>,
    /// How long the API is not asked again after it failed to answer, e.g. `"10s"`.
    pub api_backoff: Option<String>,
    /// Where `publish-host-keys` finds `ssh_host_*_key.pub` (default `/etc/ssh`).
    pub host_key_dir: Option<PathBuf>,
    /// The `[agent]` table: settings of `nodegate-agent` only (the login path ignores them).
    pub agent: Option<AgentFile>,
}

/// The `[agent]` table of the config file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// How long before a grant expires its sessions are warned, e.g. `"5m"`; `"0s"` is off.
    pub warn_before: Option<String>,
    /// Time between the warning on revoke or expiry and the end of the session, e.g. `"5s"`.
    pub end_grace: Option<String>,
    /// Strict mode: `"off"`, or how long the view may be unconfirmed by the API before every
    /// grant session is ended.
    pub end_when_stale: Option<String>,
    /// Whether logins and logouts are recorded as Events on the Node.
    pub record_logins: Option<bool>,
    /// How often sshd sessions are looked for, e.g. `"1s"`.
    pub scan_interval: Option<String>,
}

/// Default `warn_before`: enough to ask for more time and get it.
pub const DEFAULT_WARN_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Default `end_grace`: long enough to read the warning, short enough that a revoke is prompt.
pub const DEFAULT_END_GRACE: Duration = Duration::from_secs(5);
/// Default `scan_interval`.
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest `end_grace` accepted: a revoked session must not outlive its revoke by much.
pub const MAX_END_GRACE: Duration = Duration::from_secs(60);

/// The settings of `nodegate-agent`, from the `[agent]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    /// Warning ahead of expiry (zero: none).
    pub warn_before: Duration,
    /// From the warning on revoke or expiry to SIGTERM.
    pub end_grace: Duration,
    /// Strict mode: end grant sessions once the view has been stale this long.
    pub end_when_stale: Option<Duration>,
    /// Record logins and logouts as Events.
    pub record_logins: bool,
    /// How often sessions are looked for.
    pub scan_interval: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            warn_before: DEFAULT_WARN_BEFORE,
            end_grace: DEFAULT_END_GRACE,
            end_when_stale: None,
            record_logins: true,
            scan_interval: DEFAULT_SCAN_INTERVAL,
        }
    }
}

impl AgentSettings {
    fn from_file(file: AgentFile) -> Result<Self, ConfigError> {
        let warn_before =
            duration_setting("agent.warn_before", file.warn_before, DEFAULT_WARN_BEFORE)?;
        let end_grace = duration_setting("agent.end_grace", file.end_grace, DEFAULT_END_GRACE)?;
        if end_grace > MAX_END_GRACE {
            return Err(ConfigError::Duration {
                setting: "agent.end_grace",
                value: humantime::format_duration(end_grace).to_string(),
                problem: format!(
                    "must be at most {} (a revoked session would live on that long)",
                    humantime::format_duration(MAX_END_GRACE)
                ),
            });
        }
        let end_when_stale = match file.end_when_stale.as_deref().map(str::trim) {
            None | Some("off") => None,
            Some(_) => Some(duration_setting(
                "agent.end_when_stale",
                file.end_when_stale,
                Duration::ZERO,
            )?),
        };
        if end_when_stale.is_some_and(|d| d < Duration::from_secs(10)) {
            return Err(ConfigError::Duration {
                setting: "agent.end_when_stale",
                value: file_value(end_when_stale),
                problem: "must be \"off\" or at least 10s (a watch is restarted every minute or so, and a restart must not end sessions)".into(),
            });
        }
        let scan_interval = duration_setting(
            "agent.scan_interval",
            file.scan_interval,
            DEFAULT_SCAN_INTERVAL,
        )?;
        if scan_interval < Duration::from_millis(100) || scan_interval > Duration::from_secs(60) {
            return Err(ConfigError::Duration {
                setting: "agent.scan_interval",
                value: humantime::format_duration(scan_interval).to_string(),
                problem: "must be between 100ms and 60s".into(),
            });
        }
        Ok(Self {
            warn_before,
            end_grace,
            end_when_stale,
            record_logins: file.record_logins.unwrap_or(true),
            scan_interval,
        })
    }
}

fn file_value(d: Option<Duration>) -> String {
    d.map(|d| humantime::format_duration(d).to_string())
        .unwrap_or_default()
}

/// Values given on the command line; they win over the config file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--node-name`.
    pub node_name: Option<String>,
    /// `--cache`.
    pub cache: Option<PathBuf>,
    /// `--prefix`.
    pub prefix: Option<String>,
    /// `--host-key-dir` (publish-host-keys).
    pub host_key_dir: Option<PathBuf>,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
    /// Configured kubeconfig, or `None` to search [`KUBECONFIG_SEARCH_PATH`].
    pub kubeconfig: Option<PathBuf>,
    /// Configured node name, or `None` to take it from the client certificate.
    pub node_name: Option<NodeName>,
    /// The cache file.
    pub cache: PathBuf,
    /// The annotation prefix.
    pub prefix: AnnotationPrefix,
    /// Freshness window.
    pub freshness: Duration,
    /// Overall deadline for the API.
    pub deadline: Duration,
    /// Longest age of cached grants served when the API cannot answer.
    pub max_stale: Duration,
    /// How long the API is not asked again after it failed to answer.
    pub api_backoff: Duration,
    /// Where `publish-host-keys` reads the host keys.
    pub host_key_dir: PathBuf,
    /// The settings of `nodegate-agent`.
    pub agent: AgentSettings,
}

impl Settings {
    /// The settings the login policy decides by.
    pub fn policy(&self) -> crate::policy::Policy {
        crate::policy::Policy {
            freshness: self.freshness,
            max_stale: self.max_stale,
            api_backoff: self.api_backoff,
        }
    }

    /// Reads the config file (the `--config` one, which must exist, or the default one, which
    /// may be absent) and applies the overrides.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let (path, required) = match &overrides.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let (file, config_file) = match std::fs::read_to_string(&path) {
            Ok(text) => {
                perms::check_trusted_file(&path)?;
                let file: ConfigFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?;
                (file, Some(path))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                (ConfigFile::default(), None)
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_parts(file, overrides, config_file)
    }

    /// Combines a parsed config file with the overrides.
    pub fn from_parts(
        file: ConfigFile,
        overrides: &Overrides,
        config_file: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let node_name = overrides
            .node_name
            .clone()
            .or(file.node_name)
            .map(|n| NodeName::new(&n))
            .transpose()?;
        let prefix = match overrides.prefix.as_ref().or(file.prefix.as_ref()) {
            Some(p) => AnnotationPrefix::new(p)?,
            None => AnnotationPrefix::default(),
        };
        let freshness = duration_setting("freshness", file.freshness, DEFAULT_FRESHNESS)?;
        let deadline = duration_setting("deadline", file.deadline, DEFAULT_DEADLINE)?;
        let max_stale = duration_setting("max_stale", file.max_stale, DEFAULT_MAX_STALE)?;
        let api_backoff = duration_setting("api_backoff", file.api_backoff, DEFAULT_API_BACKOFF)?;
        if api_backoff > MAX_API_BACKOFF {
            return Err(ConfigError::Duration {
                setting: "api_backoff",
                value: humantime::format_duration(api_backoff).to_string(),
                problem: format!(
                    "must be at most {} (logins would not notice the API is back for that long)",
                    humantime::format_duration(MAX_API_BACKOFF)
                ),
            });
        }
        if deadline < Duration::from_millis(50) || deadline > Duration::from_secs(30) {
            return Err(ConfigError::Duration {
                setting: "deadline",
                value: humantime::format_duration(deadline).to_string(),
                problem: "must be between 50ms and 30s (sshd waits for this command)".into(),
            });
        }
        if freshness > max_stale {
            return Err(ConfigError::Duration {
                setting: "freshness",
                value: humantime::format_duration(freshness).to_string(),
                problem: "must not be longer than max_stale".into(),
            });
        }
        Ok(Self {
            config_file,
            kubeconfig: overrides.kubeconfig.clone().or(file.kubeconfig),
            node_name,
            cache: overrides
                .cache
                .clone()
                .or(file.cache)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE_PATH)),
            prefix,
            freshness,
            deadline,
            max_stale,
            api_backoff,
            host_key_dir: overrides
                .host_key_dir
                .clone()
                .or(file.host_key_dir)
                .unwrap_or_else(|| PathBuf::from(crate::publish_host_keys::DEFAULT_HOST_KEY_DIR)),
            agent: match file.agent {
                Some(agent) => AgentSettings::from_file(agent)?,
                None => AgentSettings::default(),
            },
        })
    }
}

fn duration_setting(
    setting: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Duration {
            setting,
            value: text,
            problem: e.to_string(),
        }),
    }
}

/// The kubeconfig to use: the configured one, or the first of [`KUBECONFIG_SEARCH_PATH`] that
/// exists. `None` when nothing was configured and nothing was found.
pub fn locate_kubeconfig(configured: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.to_owned());
    }
    KUBECONFIG_SEARCH_PATH
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let file: ConfigFile = toml::from_str(
            "freshness = \"10s\"\nmax_stale = \"1d\"\nnode_name = \"from-file\"\nprefix = \"a.example\"",
        )
        .unwrap();
        let overrides = Overrides {
            node_name: Some("from-flag".into()),
            ..Overrides::default()
        };
        let s = Settings::from_parts(file, &overrides, None).unwrap();
        assert_eq!(s.freshness, Duration::from_secs(10));
        assert_eq!(s.max_stale, Duration::from_secs(86400));
        assert_eq!(s.deadline, DEFAULT_DEADLINE);
        assert_eq!(s.node_name.unwrap().as_str(), "from-flag");
        assert_eq!(s.prefix.as_str(), "a.example");
        assert_eq!(s.cache, PathBuf::from(DEFAULT_CACHE_PATH));
    }

    #[test]
    fn refuses_bad_values() {
        assert!(toml::from_str::<ConfigFile>("colour = \"red\"").is_err());
        let bad = |toml_text: &str| {
            let file: ConfigFile = toml::from_str(toml_text).unwrap();
            Settings::from_parts(file, &Overrides::default(), None)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("deadline = \"soon\"").contains("deadline"));
        assert!(bad("deadline = \"5m\"").contains("between"));
        assert!(bad("node_name = \"../x\"").contains("not a valid node name"));
        assert!(bad("prefix = \"UPPER\"").contains("prefix"));
        assert!(bad("[agent]\nend_grace = \"2m\"").contains("agent.end_grace"));
        assert!(bad("[agent]\nend_when_stale = \"1s\"").contains("at least 10s"));
        assert!(bad("[agent]\nend_when_stale = \"never\"").contains("agent.end_when_stale"));
        assert!(bad("[agent]\nscan_interval = \"1ms\"").contains("between"));
        assert!(toml::from_str::<ConfigFile>("[agent]\nwarn = \"1m\"").is_err());
    }

    #[test]
    fn agent_settings_default_and_from_file() {
        let s = Settings::from_parts(ConfigFile::default(), &Overrides::default(), None).unwrap();
        assert_eq!(s.agent, AgentSettings::default());
        let file: ConfigFile = toml::from_str(
            "[agent]\nwarn_before = \"0s\"\nend_grace = \"1s\"\nend_when_stale = \"15m\"\nrecord_logins = false\nscan_interval = \"500ms\"",
        )
        .unwrap();
        let s = Settings::from_parts(file, &Overrides::default(), None).unwrap();
        assert_eq!(
            s.agent,
            AgentSettings {
                warn_before: Duration::ZERO,
                end_grace: Duration::from_secs(1),
                end_when_stale: Some(Duration::from_secs(900)),
                record_logins: false,
                scan_interval: Duration::from_millis(500),
            }
        );
        let off: ConfigFile = toml::from_str("[agent]\nend_when_stale = \"off\"").unwrap();
        let s = Settings::from_parts(off, &Overrides::default(), None).unwrap();
        assert_eq!(s.agent.end_when_stale, None);
    }
}
