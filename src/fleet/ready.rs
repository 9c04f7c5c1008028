//! Readiness watches: on each member, the objects the operator placed of the kinds whose
//! readiness lives in their status (Deployments, StatefulSets, DaemonSets, Jobs), selected by
//! the operator's `managed-by` label. An object's workload is reconciled when its readiness
//! flips, not on every status write its controller makes (the metadata watches of
//! [`super::labelled`] trigger on spec, label and annotation changes). Each object's readiness
//! (flag and message) is kept ([`States`], also what flips are judged against): a reconcile
//! reads it instead of the object when the object is unchanged since the operator last applied
//! or read it. A relist keeps every entry until it ends.

use std::collections::{BTreeSet, HashMap};

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

/// The readiness of the objects of [`KINDS`] the operator placed on one member, by kind,
/// namespace and name, as its watches last saw them; a flip of one asks its workload to
/// reconcile.
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

    /// Records `key`'s readiness now (`None`: deleted) and returns `workload` to reconcile when
    /// its readiness flipped: it appeared ready, went, became ready or stopped being ready. A
    /// status write that leaves readiness alone asks for nothing, and neither does an object
    /// that appears not ready yet: the reconcile that applied it recorded that much, and its
    /// turning ready is the news.
    pub fn update(
        &self,
        key: super::labelled::Key,
        readiness: Option<crate::readiness::Readiness>,
        workload: Option<ObjectRef<ResidentWorkload>>,
    ) -> Option<ObjectRef<ResidentWorkload>> {
        let now = readiness.as_ref().map(|r| r.ready);
        let mut m = self.objects.write().unwrap_or_else(|e| e.into_inner());
        let before = match readiness {
            Some(r) => m.insert(key, r),
            None => m.remove(&key),
        };
        let flipped = match (before.map(|r| r.ready), now) {
            (None, Some(false)) => false,
            (before, now) => before != now,
        };
        flipped.then_some(workload).flatten()
    }

    /// After a relist of `kind`: forgets its objects the list (`namespace`, `name`) no longer
    /// showed. The others stay throughout the list.
    fn keep_listed(&self, kind: &str, listed: &BTreeSet<(String, String)>) {
        let mut m = self.objects.write().unwrap_or_else(|e| e.into_inner());
        m.retain(|k, _| k.0 != kind || listed.contains(&(k.1.clone(), k.2.clone())));
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
        // the keys a relist showed so far (objects gone meanwhile are forgotten at its end)
        let mut listing: Option<BTreeSet<(String, String)>> = None;
        while let Some(event) = stream.next().await {
            let (o, deleted) = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                Ok(watcher::Event::Init) => {
                    listing = Some(BTreeSet::new());
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    states.keep_listed(&ar.kind, &listing.take().unwrap_or_default());
                    continue;
                }
                Err(_) => continue,
            };
            let (ns, name) = (o.namespace().unwrap_or_default(), o.name_any());
            if let Some(l) = listing.as_mut() {
                l.insert((ns.clone(), name.clone()));
            }
            let readiness = (!deleted).then(|| {
                let value = serde_json::to_value(&o).unwrap_or_default();
                crate::readiness::evaluate(&ar.api_version, &ar.kind, &value)
            });
            let workload = super::watch::workload_of(o.labels());
            if let Some(w) = states.update((ar.kind.clone(), ns, name), readiness, workload)
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
        let key = || ("Deployment".to_string(), "ns".to_string(), "d".to_string());
        let r = |ready: bool| {
            Some(crate::readiness::Readiness {
                ready,
                message: if ready { "" } else { "0 of 1 available" }.into(),
            })
        };
        let f = States::default();
        assert!(
            f.update(key(), r(false), w()).is_none(),
            "appeared, not ready yet"
        );
        assert!(f.update(key(), r(false), w()).is_none(), "status write");
        assert!(f.update(key(), r(true), w()).is_some(), "became ready");
        assert!(f.update(key(), r(true), w()).is_none());
        assert!(f.update(key(), None, w()).is_some(), "deleted");
        assert!(f.update(key(), None, w()).is_none());
        assert!(f.update(key(), r(true), None).is_none(), "not placed");
        f.update(key(), None, w());
        assert!(f.update(key(), r(true), w()).is_some(), "appeared ready");
        // a relist keeps what it shows again, and forgets the rest at its end
        let other = ("Deployment".to_string(), "ns".to_string(), "e".to_string());
        f.update(other.clone(), r(true), w());
        f.keep_listed(
            "Deployment",
            &BTreeSet::from([("ns".to_string(), "d".to_string())]),
        );
        assert!(f.get(&key()).is_some() && f.get(&other).is_none());
    }
}
