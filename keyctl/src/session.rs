//! One connection to the API server, with what every command needs alongside it.

use k8s_openapi::api::core::v1::Node;
use kube::{Api, Client};
use nodegate_cluster_client::{ClientOptions, identity};
use nodegate_core::AnnotationPrefix;

use crate::cli::Connection;

/// A client for the caller's cluster, the prefix grants live under, and how many nodes to work
/// on at once.
#[derive(Clone)]
pub struct Session {
    /// The client, authenticated with the caller's own credentials.
    pub client: Client,
    /// The configuration the client was made from.
    pub config: kube::Config,
    /// The annotation prefix of grants.
    pub prefix: AnnotationPrefix,
    /// How many nodes to work on at the same time.
    pub concurrency: usize,
}

impl Session {
    /// Connects as the flags (or kubectl's defaults) say.
    pub async fn connect(connection: &Connection) -> anyhow::Result<Self> {
        let options = ClientOptions {
            kubeconfig: connection.kubeconfig.clone(),
            context: connection.context.clone(),
        };
        let connected = options.connect().await?;
        Ok(Self {
            client: connected.client,
            config: connected.config,
            prefix: connection.prefix.clone(),
            concurrency: usize::from(connection.concurrency),
        })
    }

    /// The Nodes API.
    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// The caller's user name, for `granted-by` and messages.
    pub async fn caller(&self) -> String {
        identity::caller_name(&self.client, &self.config).await
    }
}
