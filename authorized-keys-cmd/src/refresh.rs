//! `refresh`: reads the own Node from the API and stores it in the cache, so that the cache
//! stays recent on nodes where nobody logs in for a long time (run from a systemd timer).

use std::collections::BTreeMap;
use std::time::Duration;

use nodegate_core::NodeGrants;

use crate::answer::report_not_strings;
use crate::api::{self, ApiError};
use crate::cache::{Cache, CacheError, CachedNode};
use crate::clock::Moment;
use crate::config::{Settings, locate_kubeconfig};
use crate::identity::{IdentityError, credentials_stamp, load_credentials, node_name};
use crate::kubeconfig::KubeconfigError;
use crate::logger::Logger;
use crate::policy::Stamp;

/// Why the cache could not be refreshed.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The node's credentials could not be loaded.
    #[error(transparent)]
    Credentials(#[from] KubeconfigError),
    /// The Node to read could not be told.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The API did not answer.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The cache could not be written.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// `refresh`: reads the Node from the API and stores it in the cache.
pub fn refresh(settings: &Settings, log: &mut Logger) -> Result<String, RefreshError> {
    let kubeconfig = locate_kubeconfig(settings.kubeconfig.as_deref());
    let credentials = kubeconfig.as_deref().and_then(credentials_stamp);
    let creds = load_credentials(settings)?;
    let node = node_name(settings, &creds)?;
    let sent = Moment::now();
    let (annotations, gone) =
        match api::fetch_node_annotations(&creds, &node, &settings.prefix, settings.deadline) {
            Ok(found) => {
                report_not_strings(&found, log);
                (found.annotations, false)
            }
            Err(ApiError::NotFound { .. }) => (BTreeMap::new(), true),
            Err(e) => return Err(e.into()),
        };
    let grants = NodeGrants::scan(
        &settings.prefix,
        annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for invalid in &grants.invalid {
        log.warn(format_args!(
            "ignoring invalid grant annotation {}/{}: {}",
            settings.prefix, invalid.name, invalid.error
        ));
    }
    let mut cache = Cache::open(&settings.cache, Duration::from_secs(5))?;
    for replaced in cache.take_replacements() {
        log.warn(replaced);
    }
    let (valid, invalid) = (grants.valid.len(), grants.invalid.len());
    let row = CachedNode {
        annotations,
        stamp: Stamp::from(&sent),
        credentials: credentials.unwrap_or_default(),
    };
    cache.store(&node, &settings.prefix, &row)?;
    if gone {
        return Ok(format!(
            "Node {node} does not exist (the API answered 404): the cache {} now holds no grants for it",
            settings.cache.display()
        ));
    }
    Ok(format!(
        "refreshed the cache {} from Node {node}: {valid} valid grants, {invalid} invalid annotations",
        settings.cache.display(),
    ))
}
