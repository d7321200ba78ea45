//! Finding the nodes a command works on: named ones, a label selector, or every node.

use std::collections::BTreeMap;

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, PartialObjectMeta};
use nodegate_cluster_client::status;

/// A Node's metadata: name, labels, annotations, uid, resourceVersion. Grants need no more, and
/// metadata-only reads stay small on large fleets.
pub type NodeMeta = PartialObjectMeta<Node>;

/// Why the nodes to work on could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A selector matched nothing.
    #[error(
        "no node matches the selector {selector:?}; check it with: kubectl get nodes -l '{selector}'"
    )]
    NothingSelected {
        /// The selector.
        selector: String,
    },
    /// Neither node names nor a selector were given where one is needed.
    #[error("name the nodes, or select them with -l SELECTOR")]
    NoTarget,
    /// Listing nodes failed.
    #[error("cannot list nodes{}", selector.as_ref().map(|s| format!(" with selector {s:?}")).unwrap_or_default())]
    List {
        /// The selector, if any.
        selector: Option<String>,
        /// What went wrong (printed after the message, as its cause).
        #[source]
        source: kube::Error,
    },
}

/// Nodes found, and named nodes that could not be read (reported per node by the caller).
#[derive(Debug, Default)]
pub struct Resolved {
    /// Nodes found, by name.
    pub found: BTreeMap<String, NodeMeta>,
    /// Named nodes that could not be read, and why.
    pub missing: Vec<(String, kube::Error)>,
}

/// Page size of node lists: large fleets come in several pages rather than one huge answer.
const LIST_PAGE: u32 = 500;

/// Resolves names and a selector; with neither, every node when `all_by_default`.
pub async fn resolve(
    nodes: &Api<Node>,
    names: &[String],
    selector: Option<&str>,
    all_by_default: bool,
    concurrency: usize,
) -> Result<Resolved, LookupError> {
    let mut resolved = Resolved::default();
    if names.is_empty() && selector.is_none() && !all_by_default {
        return Err(LookupError::NoTarget);
    }
    if selector.is_some() || names.is_empty() {
        for node in list(nodes, selector).await? {
            resolved.found.insert(node_name(&node), node);
        }
        if let Some(selector) = selector
            && resolved.found.is_empty()
        {
            return Err(LookupError::NothingSelected {
                selector: selector.to_owned(),
            });
        }
    }
    let wanted: Vec<&String> = names
        .iter()
        .filter(|n| !resolved.found.contains_key(n.as_str()))
        .collect();
    let answers: Vec<(String, Result<NodeMeta, kube::Error>)> = stream::iter(wanted)
        .map(|name| async move { (name.clone(), nodes.get_metadata(name).await) })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (name, answer) in answers {
        match answer {
            Ok(node) => {
                resolved.found.insert(name, node);
            }
            Err(error) => resolved.missing.push((name, error)),
        }
    }
    resolved.missing.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(resolved)
}

/// Lists every node matching `selector` (all nodes when `None`), page by page.
pub async fn list(nodes: &Api<Node>, selector: Option<&str>) -> Result<Vec<NodeMeta>, LookupError> {
    let mut params = ListParams::default().limit(LIST_PAGE);
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let mut all = Vec::new();
    loop {
        let page = nodes
            .list_metadata(&params)
            .await
            .map_err(|source| LookupError::List {
                selector: selector.map(str::to_owned),
                source,
            })?;
        all.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(all)
}

/// A node's name (empty if the server sent none, which it never does for stored objects).
pub fn node_name(node: &NodeMeta) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

/// A node's annotations as `(key, value)` pairs.
pub fn annotations(node: &NodeMeta) -> impl Iterator<Item = (&str, &str)> {
    node.metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// A short, human message for a failed node read.
pub fn describe_read_error(error: &kube::Error) -> String {
    match error {
        error if status::is_not_found(error) => {
            "no such node (check the name with: kubectl get nodes)".to_owned()
        }
        kube::Error::Api(status) if status::is_forbidden(error) => format!(
            "not allowed to read this node ({}); see `keyctl list --help` for the roles",
            status.message
        ),
        other => nodegate_cluster_client::describe_kube_error(other),
    }
}
