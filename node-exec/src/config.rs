//! Settings: flags over the optional settings file over built-in defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::Cli;

/// The helper image when nothing else is configured: small, widely mirrored, and with sh, awk,
/// nsenter and base64.
pub const DEFAULT_IMAGE: &str = "docker.io/library/busybox:1.36";
/// The namespace for helper pods (see `packaging/node-exec-namespace.yaml`).
pub const DEFAULT_HELPER_NAMESPACE: &str = "nodegate-system";
/// How long a helper pod may live at most: long enough for an incident, short enough that a
/// forgotten pod does not stay root on a node for days.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2 * 3600);
/// How long to wait for the helper pod to run (an image pull on a slow link included).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(120);

/// What is wrong with the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The settings file exists but cannot be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The settings file is not valid TOML of the expected shape.
    #[error("invalid settings file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: toml::de::Error,
    },
    /// A duration in the settings file does not parse.
    #[error("invalid {key} {value:?} in {path}: {source} (write e.g. \"2h\" or \"90s\")")]
    Duration {
        /// The setting.
        key: &'static str,
        /// Its value.
        value: String,
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: humantime::DurationError,
    },
    /// The image pull policy is not one Kubernetes knows.
    #[error("invalid image pull policy {0:?}: use Always, IfNotPresent or Never")]
    PullPolicy(String),
    /// The deadline is zero or too long for `activeDeadlineSeconds`.
    #[error("invalid deadline {0:?}: give at least one second (e.g. 2h)")]
    Deadline(Duration),
}

/// The settings file, `~/.config/nodegate/node-exec.toml`; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SettingsFile {
    /// Helper image.
    pub image: Option<String>,
    /// Image pull policy.
    pub image_pull_policy: Option<String>,
    /// Namespace for helper pods.
    pub helper_namespace: Option<String>,
    /// Deadline of helper pods, e.g. "2h".
    pub deadline: Option<String>,
    /// Start timeout, e.g. "2m".
    pub start_timeout: Option<String>,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Helper image.
    pub image: String,
    /// Image pull policy, if one was set (else Kubernetes' default for the tag).
    pub image_pull_policy: Option<String>,
    /// Namespace for helper pods.
    pub helper_namespace: String,
    /// The helper pod's `activeDeadlineSeconds`.
    pub deadline: Duration,
    /// How long to wait for the helper pod to run.
    pub start_timeout: Duration,
}

impl Settings {
    /// Flags, then the settings file (`--config`, or the default path if it exists), then defaults.
    pub fn resolve(cli: &Cli) -> Result<Settings, ConfigError> {
        let file = match &cli.config {
            Some(path) => Some((read(path)?, path.clone())),
            None => match default_path() {
                Some(path) if path.is_file() => Some((read(&path)?, path)),
                _ => None,
            },
        };
        let (file, path) = file.unwrap_or_default();
        Self::merge(&cli.helper, file, &path)
    }

    /// Merges flags over a parsed settings file read from `path`.
    pub fn merge(
        flags: &crate::cli::HelperArgs,
        file: SettingsFile,
        path: &Path,
    ) -> Result<Settings, ConfigError> {
        let duration = |key: &'static str, value: Option<String>| {
            value
                .map(|value| {
                    humantime::parse_duration(&value).map_err(|source| ConfigError::Duration {
                        key,
                        value: value.clone(),
                        path: path.to_owned(),
                        source,
                    })
                })
                .transpose()
        };
        let file_deadline = duration("deadline", file.deadline)?;
        let file_start_timeout = duration("start-timeout", file.start_timeout)?;
        let image_pull_policy = flags.image_pull_policy.clone().or(file.image_pull_policy);
        if let Some(policy) = &image_pull_policy
            && !["Always", "IfNotPresent", "Never"].contains(&policy.as_str())
        {
            return Err(ConfigError::PullPolicy(policy.clone()));
        }
        let deadline = flags.deadline.or(file_deadline).unwrap_or(DEFAULT_DEADLINE);
        if deadline.as_secs() == 0 || deadline.as_secs() > i64::MAX as u64 {
            return Err(ConfigError::Deadline(deadline));
        }
        Ok(Settings {
            image: flags
                .image
                .clone()
                .or(file.image)
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
            image_pull_policy,
            helper_namespace: flags
                .helper_namespace
                .clone()
                .or(file.helper_namespace)
                .unwrap_or_else(|| DEFAULT_HELPER_NAMESPACE.to_owned()),
            deadline,
            start_timeout: flags
                .start_timeout
                .or(file_start_timeout)
                .unwrap_or(DEFAULT_START_TIMEOUT),
        })
    }
}

fn read(path: &Path) -> Result<SettingsFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// `$XDG_CONFIG_HOME/nodegate/node-exec.toml`, else `~/.config/nodegate/node-exec.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))?;
    Some(base.join("nodegate").join("node-exec.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::HelperArgs;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: SettingsFile = toml::from_str(
            "image = \"mirror.local/busybox:1\"\ndeadline = \"30m\"\nhelper-namespace = \"ops\"\n",
        )
        .expect("valid file");
        let flags = HelperArgs {
            helper_namespace: Some("flagged".into()),
            ..HelperArgs::default()
        };
        let settings = Settings::merge(&flags, file, Path::new("f.toml")).expect("valid");
        assert_eq!(settings.image, "mirror.local/busybox:1");
        assert_eq!(settings.deadline, Duration::from_secs(1800));
        assert_eq!(settings.helper_namespace, "flagged");
        assert_eq!(settings.start_timeout, DEFAULT_START_TIMEOUT);
        assert_eq!(settings.image_pull_policy, None);
    }

    #[test]
    fn bad_settings_say_what_to_write() {
        let file: SettingsFile = toml::from_str("deadline = \"soon\"").expect("valid toml");
        let err = Settings::merge(&HelperArgs::default(), file, Path::new("f.toml"))
            .expect_err("bad duration");
        assert!(err.to_string().contains("e.g. \"2h\""), "{err}");

        let flags = HelperArgs {
            image_pull_policy: Some("sometimes".into()),
            ..HelperArgs::default()
        };
        let err = Settings::merge(&flags, SettingsFile::default(), Path::new("f.toml"))
            .expect_err("bad policy");
        assert!(err.to_string().contains("IfNotPresent"), "{err}");

        assert!(toml::from_str::<SettingsFile>("imag = \"x\"").is_err());
    }
}
