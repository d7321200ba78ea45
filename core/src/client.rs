//! Kubernetes client setup for the workstation tools, with kubectl's conventions.

use std::path::PathBuf;
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

/// Why no client could be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The named kubeconfig file could not be read or parsed.
    #[error("cannot read kubeconfig {path}: {source}")]
    ReadKubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// The kubeconfig does not yield a usable configuration (missing context, bad certificate...).
    #[error("cannot use kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither a kubeconfig nor an in-cluster ServiceAccount was found.
    #[error(
        "no Kubernetes credentials found: pass --kubeconfig, set KUBECONFIG, create ~/.kube/config, or run in a pod with a ServiceAccount ({0})"
    )]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration (TLS setup).
    #[error("cannot set up the Kubernetes client: {0}")]
    Build(#[source] kube::Error),
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
                let file =
                    Kubeconfig::read_from(path).map_err(|source| ClientError::ReadKubeconfig {
                        path: path.clone(),
                        source,
                    })?;
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
        kube::Client::try_from(config).map_err(ClientError::Build)
    }
}
