//! Kubernetes client setup for the workstation tools, with kubectl's conventions.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};

/// Where the caller's credentials come from, as kubectl takes them.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `--kubeconfig`: one file; when absent, `KUBECONFIG` or `~/.kube/config`, then the
    /// in-cluster ServiceAccount.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`: a context other than the current one.
    pub context: Option<String>,
}

/// Why no client could be made. Each message carries its cause as text, once (kube's errors
/// already embed their own sources, so printing those as a chain would repeat them).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The named kubeconfig file could not be read or parsed.
    #[error("cannot read kubeconfig {path}: {reason}; check --kubeconfig or KUBECONFIG")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The kubeconfig does not yield a usable configuration (missing context, bad certificate...).
    #[error("cannot use kubeconfig: {reason}")]
    Kubeconfig {
        /// What went wrong.
        reason: String,
    },
    /// Neither a kubeconfig nor an in-cluster ServiceAccount was found.
    #[error(
        "no Kubernetes credentials found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a ServiceAccount ({reason})"
    )]
    Infer {
        /// What each source said.
        reason: String,
    },
    /// The client could not be built from the configuration (TLS setup).
    #[error("cannot set up the Kubernetes client: {reason}")]
    Build {
        /// What went wrong.
        reason: String,
    },
}

impl From<kube::config::KubeconfigError> for ClientError {
    fn from(error: kube::config::KubeconfigError) -> Self {
        Self::Kubeconfig {
            reason: describe_error_chain(&error, &|_| None),
        }
    }
}

impl From<kube::config::InferConfigError> for ClientError {
    fn from(error: kube::config::InferConfigError) -> Self {
        Self::Infer {
            reason: describe_error_chain(&error, &|_| None),
        }
    }
}

/// Renders an error and its sources as one line, every cause said once: a source whose text
/// is already part of what was written (many errors, kube's among them, embed their source in
/// their own message) is left out. `describe` may render a cause its own way; a cause it
/// describes is taken to cover everything below it.
pub fn describe_error_chain(
    error: &(dyn std::error::Error + 'static),
    describe: &dyn Fn(&(dyn std::error::Error + 'static)) -> Option<String>,
) -> String {
    let mut out = String::new();
    let mut cause = Some(error);
    while let Some(current) = cause {
        let (text, covers_rest) = match describe(current) {
            Some(text) => (text, true),
            None => (current.to_string(), false),
        };
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        if covers_rest {
            break;
        }
        cause = current.source();
    }
    out
}

/// Timeouts that turn an unreachable API server into an error instead of a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl ClientOptions {
    /// Loads the configuration these options name.
    pub async fn config(&self) -> Result<kube::Config, ClientError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let file = read_kubeconfig(path)?;
                kube::Config::from_custom_kubeconfig(file, &options).await?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options).await?,
            (None, None) => kube::Config::infer().await?,
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = Some(READ_TIMEOUT);
        Ok(config)
    }

    /// Builds a client with these options.
    pub async fn client(&self) -> Result<kube::Client, ClientError> {
        let config = self.config().await?;
        kube::Client::try_from(config).map_err(|error| ClientError::Build {
            reason: describe_error_chain(&error, &|_| None),
        })
    }
}

/// Reads one kubeconfig file, with the path and the cause in the message once.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ClientError> {
    Kubeconfig::read_from(path).map_err(|error| {
        let reason = match &error {
            // kube's message repeats the path (quoted twice); the I/O error is the news.
            kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
            other => describe_error_chain(other, &|_| None),
        };
        ClientError::ReadKubeconfig {
            path: path.to_owned(),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Embeds(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapper")]
    struct Wraps(#[source] Embeds);

    #[test]
    fn each_cause_is_said_once() {
        let error = Wraps(Embeds(std::io::Error::other("disk on fire")));
        let text = describe_error_chain(&error, &|_| None);
        assert_eq!(text, "wrapper: outer: disk on fire");
        let custom = describe_error_chain(&error, &|e| {
            e.downcast_ref::<Embeds>().map(|_| "described".to_owned())
        });
        assert_eq!(custom, "wrapper: described");
    }

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
}
