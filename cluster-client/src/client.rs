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

/// Reads one kubeconfig file, with the path and the cause in the message once.
fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, Error> {
    Kubeconfig::read_from(path).map_err(|error| {
        let reason = match &error {
            // kube's message repeats the path (quoted twice); the I/O error is the news.
            kube::config::KubeconfigError::ReadConfig(io, _) => io.to_string(),
            other => describe_error_chain(other, &|_| None),
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
