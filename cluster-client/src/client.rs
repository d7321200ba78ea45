//! The Kubernetes client, from the caller's kubeconfig with kubectl's conventions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::{Error, describe_error_chain};

/// Where the caller's credentials come from, as kubectl takes them.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `--kubeconfig`: one file; when absent, `KUBECONFIG` or `~/.kube/config`, then the
    /// in-cluster ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: a context other than the current one.
    pub context: Option<String>,
}

/// A client and the configuration it was made from (for the default namespace and the caller's
/// name).
#[derive(Clone)]
pub struct Connection {
    /// The client, authenticated with the caller's own credentials.
    pub client: kube::Client,
    /// The configuration the client was made from.
    pub config: kube::Config,
}

/// Timeouts that turn an unreachable API server into an error instead of a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl ClientOptions {
    /// Loads the configuration these options name.
    pub async fn config(&self) -> Result<kube::Config, Error> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let environment = Environment::current();
        let mut config = match kubeconfig_source(self.kubeconfig.as_deref(), &environment)? {
            Source::Files(paths) => {
                let mut merged = Kubeconfig::default();
                for path in &paths {
                    merged = merged.merge(read_kubeconfig(path)?)?;
                }
                kube::Config::from_custom_kubeconfig(merged, &options).await?
            }
            Source::InCluster if self.context.is_none() => {
                kube::Config::incluster().map_err(|error| Error::Infer {
                    reason: format!(
                        "in a pod, but its ServiceAccount is unusable: {}",
                        describe_error_chain(&error, &|_| None)
                    ),
                })?
            }
            Source::InCluster => {
                return Err(Error::Infer {
                    reason: "--context needs a kubeconfig, and only a pod's ServiceAccount is here"
                        .into(),
                });
            }
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        Ok(config)
    }

    /// Builds a client with these options.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        Ok(self.connect().await?.client)
    }

    /// Builds a client with these options, and keeps the configuration beside it.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let config = self.config().await?;
        let client = kube::Client::try_from(config.clone()).map_err(|error| Error::Build {
            reason: describe_error_chain(&error, &|_| None),
        })?;
        Ok(Connection { client, config })
    }
}

/// What decides where the credentials come from, read from the process environment once.
#[derive(Debug, Clone, Default)]
struct Environment {
    /// `KUBECONFIG`, if set.
    kubeconfig: Option<std::ffi::OsString>,
    /// `~/.kube/config`, if `HOME` is set.
    home_config: Option<PathBuf>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set (running in a pod).
    in_cluster: bool,
}

impl Environment {
    fn current() -> Self {
        Environment {
            kubeconfig: std::env::var_os("KUBECONFIG"),
            home_config: std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".kube").join("config")),
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// Where the credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// These kubeconfig files, merged in order.
    Files(Vec<PathBuf>),
    /// The pod's ServiceAccount.
    InCluster,
}

/// Picks the credentials as kubectl does: `--kubeconfig`; else the files `KUBECONFIG` lists
/// (those that exist: kubectl skips missing ones); else `~/.kube/config` if it exists; else the
/// pod's ServiceAccount. Deciding here, instead of in kube's `Config::infer`, keeps its nested
/// "in-cluster: (...), kubeconfig: (...)" text out of the one message a person reads.
fn kubeconfig_source(flag: Option<&Path>, environment: &Environment) -> Result<Source, Error> {
    if let Some(path) = flag {
        return Ok(Source::Files(vec![path.to_owned()]));
    }
    let listed: Vec<PathBuf> = environment
        .kubeconfig
        .as_deref()
        .map(|value| {
            std::env::split_paths(value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if !listed.is_empty() {
        let existing: Vec<PathBuf> = listed.iter().filter(|p| p.exists()).cloned().collect();
        if existing.is_empty() {
            return Err(Error::Infer {
                reason: format!(
                    "KUBECONFIG lists only files that do not exist: {}",
                    listed
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Ok(Source::Files(existing));
    }
    if let Some(home) = environment.home_config.as_ref().filter(|p| p.exists()) {
        return Ok(Source::Files(vec![home.clone()]));
    }
    if environment.in_cluster {
        return Ok(Source::InCluster);
    }
    Err(Error::Infer {
        reason: match &environment.home_config {
            Some(home) => format!("{} does not exist and this is not a pod", home.display()),
            None => "HOME is not set and this is not a pod".into(),
        },
    })
}

/// Reads one kubeconfig file, with the path and the cause in the message once.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, Error> {
    Kubeconfig::read_from(path).map_err(|error| {
        let reason = match &error {
            // kube's message repeats the path (quoted twice); the I/O error is the news.
            kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
            // The YAML parser quotes the lines around the error: a kubeconfig's lines hold
            // tokens and keys, which must not end up on a terminal or in a log.
            other => describe_error_chain(other, &|_| None)
                .lines()
                .next()
                .unwrap_or_default()
                .trim_end()
                .to_owned(),
        };
        Error::ReadKubeconfig {
            path: path.to_owned(),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_kubeconfig_names_the_file_and_the_cause_once() {
        let error = read_kubeconfig(Path::new("/nonexistent/kubeconfig")).unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("cannot read kubeconfig /nonexistent/kubeconfig: "),
            "{text}"
        );
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("/nonexistent/kubeconfig").count(), 1, "{text}");
        assert!(
            std::error::Error::source(&error).is_none(),
            "said in the message only"
        );
    }

    fn environment(kubeconfig: Option<&str>, home: Option<&Path>, in_cluster: bool) -> Environment {
        Environment {
            kubeconfig: kubeconfig.map(Into::into),
            home_config: home.map(Path::to_owned),
            in_cluster,
        }
    }

    #[test]
    fn credentials_are_picked_as_kubectl_picks_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "").expect("write a");
        std::fs::write(&b, "").expect("write b");
        let missing = dir.path().join("missing");
        let list = format!("{}:{}:{}", a.display(), missing.display(), b.display());
        let env = environment(Some(&list), Some(&a), true);
        // The flag wins, even over a KUBECONFIG list.
        assert_eq!(
            kubeconfig_source(Some(&missing), &env).ok(),
            Some(Source::Files(vec![missing.clone()]))
        );
        // KUBECONFIG: the files that exist, in order.
        assert_eq!(
            kubeconfig_source(None, &env).ok(),
            Some(Source::Files(vec![a.clone(), b.clone()]))
        );
        // Then ~/.kube/config, then the pod's ServiceAccount.
        assert_eq!(
            kubeconfig_source(None, &environment(None, Some(&b), true)).ok(),
            Some(Source::Files(vec![b.clone()]))
        );
        assert_eq!(
            kubeconfig_source(None, &environment(Some(""), Some(&missing), true)).ok(),
            Some(Source::InCluster)
        );
    }

    #[test]
    fn no_credentials_is_one_message_that_says_what_was_looked_at() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing");
        let list = missing.display().to_string();
        let error = kubeconfig_source(None, &environment(Some(&list), None, true)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "no Kubernetes credentials found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a ServiceAccount (KUBECONFIG lists only files that do not exist: {list})"
            )
        );
        let error = kubeconfig_source(None, &environment(None, Some(&missing), false)).unwrap_err();
        assert!(
            error
                .to_string()
                .ends_with(&format!("({list} does not exist and this is not a pod)")),
            "{error}"
        );
    }

    #[test]
    fn a_broken_kubeconfig_is_named_without_quoting_its_lines() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("config");
        std::fs::write(&path, "token: s3cret-token\n- [").expect("write");
        let text = read_kubeconfig(&path).unwrap_err().to_string();
        assert!(!text.contains("s3cret-token"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("failed to parse kubeconfig YAML"), "{text}");
    }

    #[test]
    fn a_missing_kubeconfig_renders_as_one_message_with_its_cause_once() {
        let error = read_kubeconfig(Path::new("/nonexistent/kubeconfig")).unwrap_err();
        let wrapped = anyhow::Error::from(error);
        let text = crate::render(wrapped.as_ref());
        assert_eq!(
            text.matches("No such file or directory").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("/nonexistent/kubeconfig").count(), 1, "{text}");
        assert!(
            text.ends_with("; check --kubeconfig or KUBECONFIG"),
            "{text}"
        );
    }
}
