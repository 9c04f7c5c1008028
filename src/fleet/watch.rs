//! Event-driven drift detection: on every reachable member, metadata-only watches of the objects
//! the operator placed (selected by its `managed-by` label) trigger the owning workload's
//! reconcile when one of them changes or disappears. Not a polling sweep.

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::BTreeMap;
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::api::ResidentWorkload;
use crate::api::labels;
use crate::api::resident_workload::ALLOWED_KINDS;
use crate::desired;

/// The watches of one member; dropping them stops them.
pub struct Watches {
    /// The connection configuration they were started with.
    pub fingerprint: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Watches {
    /// Adds more watch tasks to stop with these.
    pub fn extend(&mut self, tasks: Vec<JoinHandle<()>>) {
        self.tasks.extend(tasks);
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The workload an object belongs to, from its labels (pure).
pub fn workload_of(
    object_labels: &BTreeMap<String, String>,
) -> Option<ObjectRef<ResidentWorkload>> {
    if object_labels.get(labels::MANAGED_BY).map(String::as_str) != Some(labels::MANAGED_BY_VALUE) {
        return None;
    }
    let name = object_labels.get(labels::WORKLOAD)?;
    let namespace = object_labels.get(labels::WORKLOAD_NAMESPACE)?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Starts one watch per placeable kind on `client` (a client without a read timeout: watches
/// are long requests), sending the owning workload of every changed object to `tx`.
pub fn start(
    client: Client,
    cluster: &str,
    fingerprint: String,
    tx: Sender<ObjectRef<ResidentWorkload>>,
) -> Watches {
    let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let tasks = ALLOWED_KINDS
        .iter()
        .filter_map(|(api_version, kind)| desired::api_resource(api_version, kind))
        .map(|ar| {
            // metadata only: the watch carries labels, not the objects' specs
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(client.clone(), &ar);
            let stream = watcher(api, watcher::Config::default().labels(&selector))
                .default_backoff()
                .touched_objects();
            let tx = tx.clone();
            let cluster = cluster.to_string();
            let kind = ar.kind.clone();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(meta) => {
                            if let Some(w) = workload_of(meta.labels())
                                && tx.send(w).await.is_err()
                            {
                                return; // the controller is gone
                            }
                        }
                        Err(e) => {
                            debug!(%cluster, %kind, error = %e, "member watch error; retrying")
                        }
                    }
                }
            })
        })
        .collect();
    Watches { fingerprint, tasks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_map_to_their_workload_by_label() {
        let mut l = BTreeMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::WORKLOAD.to_string(), "store".to_string()),
            (
                labels::WORKLOAD_NAMESPACE.to_string(),
                "threat-intel".to_string(),
            ),
        ]);
        let r = workload_of(&l).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("store", Some("threat-intel"))
        );
        l.insert(labels::MANAGED_BY.into(), "someone-else".into());
        assert!(workload_of(&l).is_none());
        l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        l.remove(labels::WORKLOAD_NAMESPACE);
        assert!(workload_of(&l).is_none());
    }
}
