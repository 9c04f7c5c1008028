//! Readiness watches: on each member, the objects the operator placed of the kinds whose
//! readiness lives in their status (Deployments, StatefulSets, DaemonSets, Jobs), selected by
//! the operator's `managed-by` label. An object's workload is reconciled when its readiness
//! flips, not on every status write its controller makes (the metadata watches of
//! [`super::labelled`] trigger on spec, label and annotation changes). Each object's readiness
//! (flag and message) is kept ([`States`]): a reconcile reads it instead of the object when the
//! object is unchanged since the operator last applied or read it.

use std::collections::HashMap;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::api::{ResidentWorkload, labels};

/// The kinds watched: `(apiVersion, kind)`.
pub const KINDS: [(&str, &str); 4] = [
    ("apps/v1", "Deployment"),
    ("apps/v1", "StatefulSet"),
    ("apps/v1", "DaemonSet"),
    ("batch/v1", "Job"),
];

/// Which workloads an event asks to reconcile, given what was last seen (pure once the
/// readiness is evaluated): a placed object's readiness flipped, or it appeared or went.
#[derive(Default)]
pub struct Flips {
    ready: HashMap<(String, String), bool>,
}

impl Flips {
    /// `key` (namespace, name) of the object of `workload` is now `ready` (`None`: deleted).
    pub fn update(
        &mut self,
        key: (String, String),
        ready: Option<bool>,
        workload: Option<ObjectRef<ResidentWorkload>>,
    ) -> Option<ObjectRef<ResidentWorkload>> {
        let before = match ready {
            Some(r) => self.ready.insert(key, r),
            None => self.ready.remove(&key),
        };
        (before != ready).then_some(workload).flatten()
    }
}

/// The readiness of the objects of [`KINDS`] the operator placed on one member, by kind,
/// namespace and name, as its watches last saw them.
#[derive(Default)]
pub struct States {
    objects: std::sync::RwLock<HashMap<super::labelled::Key, crate::readiness::Readiness>>,
}

impl States {
    /// The readiness of `key` (kind, namespace, name), when its watch has seen it.
    pub fn get(&self, key: &super::labelled::Key) -> Option<crate::readiness::Readiness> {
        self.objects
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn set(&self, key: super::labelled::Key, readiness: Option<crate::readiness::Readiness>) {
        let mut m = self.objects.write().unwrap_or_else(|e| e.into_inner());
        match readiness {
            Some(r) => m.insert(key, r),
            None => m.remove(&key),
        };
    }

    /// Forgets the objects of `kind` (before its watch lists them again).
    fn clear_kind(&self, kind: &str) {
        let mut m = self.objects.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|k, _| k.0 != kind);
    }
}

/// Starts one watch per kind of [`KINDS`] on a member, keeping `states`. Dropping the handles
/// stops them.
pub fn start(
    client: Client,
    workloads: Sender<ObjectRef<ResidentWorkload>>,
    states: std::sync::Arc<States>,
) -> Vec<JoinHandle<()>> {
    KINDS
        .iter()
        .filter_map(|(v, k)| crate::desired::api_resource(v, k))
        .map(|ar| watch(client.clone(), ar, workloads.clone(), states.clone()))
        .collect()
}

fn watch(
    client: Client,
    ar: ApiResource,
    workloads: Sender<ObjectRef<ResidentWorkload>>,
    states: std::sync::Arc<States>,
) -> JoinHandle<()> {
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    let config = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    let stream = watcher(api, config).backoff(super::watch::WatchBackoff::default());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut flips = Flips::default();
        while let Some(event) = stream.next().await {
            let (o, deleted) = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                Ok(watcher::Event::Init) => {
                    states.clear_kind(&ar.kind);
                    continue;
                }
                _ => continue,
            };
            let key = (o.namespace().unwrap_or_default(), o.name_any());
            let readiness = (!deleted).then(|| {
                let value = serde_json::to_value(&o).unwrap_or_default();
                crate::readiness::evaluate(&ar.api_version, &ar.kind, &value)
            });
            let ready = readiness.as_ref().map(|r| r.ready);
            states.set((ar.kind.clone(), key.0.clone(), key.1.clone()), readiness);
            if let Some(w) = flips.update(key, ready, super::watch::workload_of(o.labels()))
                && workloads.send(w).await.is_err()
            {
                return; // the controller is gone
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_flips_of_readiness_trigger() {
        let w = || Some(ObjectRef::<ResidentWorkload>::new("w").within("ns"));
        let key = || ("ns".to_string(), "d".to_string());
        let mut f = Flips::default();
        assert!(f.update(key(), Some(false), w()).is_some(), "appeared");
        assert!(f.update(key(), Some(false), w()).is_none(), "status write");
        assert!(f.update(key(), Some(true), w()).is_some(), "became ready");
        assert!(f.update(key(), Some(true), w()).is_none());
        assert!(f.update(key(), None, w()).is_some(), "deleted");
        assert!(f.update(key(), None, w()).is_none());
        assert!(f.update(key(), Some(true), None).is_none(), "not placed");
    }
}
