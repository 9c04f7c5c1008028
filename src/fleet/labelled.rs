//! Objects on the members that declare whose data they hold with a country label
//! (`country.residency.io/<CODE>`), including ones nobody placed through the operator. Each
//! member has metadata-only watches of the placeable kinds and PersistentVolumes; the objects
//! carrying a country label are kept in an index, which policy status reads to report data on
//! clusters a policy does not allow. Changes re-evaluate the policies of those countries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::api::{ResidencyPolicy, ResidentWorkload, labels};
use crate::desired;

/// One labelled object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labelled {
    /// The countries its labels declare, sorted.
    pub countries: Vec<String>,
    /// `namespace/name` of the ResidentWorkload that placed it, if one did.
    pub workload: Option<String>,
    /// Whether it is a retained volume.
    pub retained: bool,
}

/// Key of an object: kind, namespace ("" when cluster-scoped), name.
pub type Key = (String, String, String);

/// The labelled objects of every member.
#[derive(Default)]
pub struct Index {
    members: RwLock<BTreeMap<String, BTreeMap<Key, Labelled>>>,
}

/// How a copy no workload's record accounts for is described after its name, from the
/// workload its labels name (if any) and whether that workload exists (pure): ``,
/// ` (of ResidentWorkload ns/w, which no longer exists)` or
/// ` (labelled as ResidentWorkload ns/w's, whose record has no copy there)`.
pub fn unrecorded_owner(workload: Option<&str>, exists: bool) -> String {
    match workload {
        None => String::new(),
        Some(w) if exists => {
            format!(" (labelled as ResidentWorkload {w}'s, whose record has no copy there)")
        }
        Some(w) => format!(" (of ResidentWorkload {w}, which no longer exists)"),
    }
}

/// The countries an object's labels declare, upper-cased, sorted, once each (pure). Keys,
/// codes and the value `true` are compared case-insensitively, as the members' admission
/// policies compare them: `country.residency.io/au=True` declares data of AU.
pub fn countries_of(object_labels: &BTreeMap<String, String>) -> Vec<String> {
    let prefix = labels::COUNTRY_PREFIX;
    let mut c: Vec<String> = object_labels
        .iter()
        .filter(|(_, v)| v.eq_ignore_ascii_case("true"))
        .filter(|(k, _)| {
            k.len() > prefix.len()
                && k.is_char_boundary(prefix.len())
                && k[..prefix.len()].eq_ignore_ascii_case(prefix)
        })
        .map(|(k, _)| k[prefix.len()..].to_ascii_uppercase())
        .collect();
    c.sort();
    c.dedup();
    c
}

impl Index {
    /// Records (or forgets, when it has no country label) one object; returns the countries it
    /// declared before and declares now.
    /// Nothing when the object's entry did not change (a status update, say): the policies
    /// have nothing new to judge.
    fn update(&self, cluster: &str, key: Key, value: Option<Labelled>) -> BTreeSet<String> {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        let objects = m.entry(cluster.to_string()).or_default();
        match value {
            Some(v) if !v.countries.is_empty() => match objects.insert(key, v.clone()) {
                Some(old) if old == v => BTreeSet::new(),
                old => old
                    .map(|o| o.countries)
                    .into_iter()
                    .flatten()
                    .chain(v.countries)
                    .collect(),
            },
            _ => objects
                .remove(&key)
                .map(|o| o.countries)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }
    }

    /// Forgets every object of `kind` on `cluster` (before a fresh list).
    fn clear_kind(&self, cluster: &str, kind: &str, namespace: Option<&str>) -> BTreeSet<String> {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut gone = BTreeSet::new();
        if let Some(objects) = m.get_mut(cluster) {
            objects.retain(|k, v| {
                if k.0 == kind && namespace.is_none_or(|ns| k.1 == ns) {
                    gone.extend(v.countries.iter().cloned());
                    false
                } else {
                    true
                }
            });
        }
        gone
    }

    /// Notes that one of a member's watches listed it: the member is watched from now on, even
    /// while it holds nothing labelled.
    fn listed(&self, cluster: &str) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        m.entry(cluster.to_string()).or_default();
    }

    /// Forgets a member.
    pub fn remove_member(&self, cluster: &str) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        m.remove(cluster);
    }

    /// The labelled objects of one member (`None` when it is not watched).
    pub fn member(&self, cluster: &str) -> Option<BTreeMap<Key, Labelled>> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster)
            .cloned()
    }

    /// Runs `f` over every labelled object, by member, without copying them (the index is
    /// read-locked meanwhile: keep `f` short and synchronous).
    pub fn with<R>(&self, f: impl FnOnce(&BTreeMap<String, BTreeMap<Key, Labelled>>) -> R) -> R {
        f(&self.members.read().unwrap_or_else(|e| e.into_inner()))
    }
}

fn labelled(meta: &PartialObjectMeta<DynamicObject>) -> Labelled {
    let l = meta.labels();
    Labelled {
        countries: countries_of(l),
        workload: match (l.get(labels::WORKLOAD), l.get(labels::WORKLOAD_NAMESPACE)) {
            (Some(n), Some(ns)) => Some(format!("{ns}/{n}")),
            _ => None,
        },
        retained: l.get(labels::RETAINED).map(String::as_str) == Some("true"),
    }
}

/// Where a member watch reports: the country index, the policies to re-evaluate and the
/// workloads to reconcile.
#[derive(Clone)]
pub struct Sinks {
    /// The country index.
    pub index: std::sync::Arc<Index>,
    /// The policies, to find those of the countries involved.
    pub policies: Store<ResidencyPolicy>,
    /// Policy reconciles.
    pub policy_tx: Sender<ObjectRef<ResidencyPolicy>>,
    /// Workload reconciles.
    pub workloads_tx: Sender<ObjectRef<ResidentWorkload>>,
}

/// Starts one metadata watch per well-known placeable kind (and PersistentVolumes) on a
/// member; Secrets only when `secrets_cluster_wide` (the identity may list them in every
/// namespace; else [`watch_kind`] watches them per workload namespace). Dropping the handles
/// stops them.
pub fn start(
    client: Client,
    cluster: &str,
    sinks: &Sinks,
    secrets_cluster_wide: bool,
) -> Vec<JoinHandle<()>> {
    let mut resources: Vec<ApiResource> = crate::kinds::PLACEABLE
        .iter()
        .filter(|k| secrets_cluster_wide || k.kind != "Secret")
        .filter_map(|k| desired::api_resource(&k.api_version(), k.kind))
        .collect();
    resources.push(ApiResource::erase::<
        k8s_openapi::api::core::v1::PersistentVolume,
    >(&()));
    resources
        .into_iter()
        .map(|ar| watch_kind(client.clone(), cluster, ar, None, sinks.clone()))
        .collect()
}

/// A metadata watch of one kind on a member (any kind, a workload's own custom resources
/// included), in every namespace or in `namespace`. Each event updates the country index
/// (re-evaluating the policies of the countries involved) and, for an object the operator
/// placed, triggers its workload (drift detection).
pub fn watch_kind(
    client: Client,
    cluster: &str,
    ar: ApiResource,
    namespace: Option<&str>,
    sinks: Sinks,
) -> JoinHandle<()> {
    let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &ar),
        None => Api::all_with(client, &ar),
    };
    let namespace = namespace.map(str::to_string);
    let stream =
        watcher(api, watcher::Config::default()).backoff(super::watch::WatchBackoff::default());
    let Sinks {
        index,
        policies,
        policy_tx: tx,
        workloads_tx,
    } = sinks;
    let cluster = cluster.to_string();
    let kind = ar.kind.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = Seen::default();
        while let Some(event) = stream.next().await {
            for w in seen.triggers(&event) {
                if workloads_tx.send(w).await.is_err() {
                    return; // the controller is gone
                }
            }
            let changed: BTreeSet<String> = match event {
                Ok(watcher::Event::Init) => index.clear_kind(&cluster, &kind, namespace.as_deref()),
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let key = (
                        kind.clone(),
                        o.namespace().unwrap_or_default(),
                        o.name_any(),
                    );
                    index.update(&cluster, key, Some(labelled(&o)))
                }
                Ok(watcher::Event::Delete(o)) => {
                    let key = (
                        kind.clone(),
                        o.namespace().unwrap_or_default(),
                        o.name_any(),
                    );
                    index.update(&cluster, key, None)
                }
                Ok(watcher::Event::InitDone) => {
                    index.listed(&cluster);
                    BTreeSet::new()
                }
                Err(_) => BTreeSet::new(),
            };
            if changed.is_empty() {
                continue;
            }
            for p in policies.state() {
                if p.spec
                    .countries
                    .iter()
                    .any(|c| changed.contains(c.as_str()))
                    && tx.send(ObjectRef::from_obj(p.as_ref())).await.is_err()
                {
                    return;
                }
            }
        }
    })
}

/// What a member watch last saw of each object a workload placed, to trigger that workload
/// only when something it judges changed: the object's existence, labels, annotations or spec
/// (its `generation`; any change of a kind without one). Status updates, which controllers
/// write often, trigger nothing; readiness has its own watch ([`super::ready`]).
#[derive(Default)]
struct Seen {
    objects: std::collections::HashMap<(String, String), (u64, ObjectRef<ResidentWorkload>)>,
    /// The keys listed since the last `Init` (objects gone meanwhile are found at `InitDone`).
    listing: Option<BTreeSet<(String, String)>>,
}

impl Seen {
    fn triggers(
        &mut self,
        event: &Result<watcher::Event<PartialObjectMeta<DynamicObject>>, watcher::Error>,
    ) -> Vec<ObjectRef<ResidentWorkload>> {
        match event {
            Ok(watcher::Event::Init) => {
                self.listing = Some(BTreeSet::new());
                Vec::new()
            }
            Ok(watcher::Event::InitApply(o) | watcher::Event::Apply(o)) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                if let Some(l) = self.listing.as_mut() {
                    l.insert(key.clone());
                }
                let Some(w) = super::watch::workload_of(o.labels()) else {
                    return self
                        .objects
                        .remove(&key)
                        .map(|(_, w)| w)
                        .into_iter()
                        .collect();
                };
                let print = fingerprint(o);
                match self.objects.insert(key, (print, w.clone())) {
                    Some((before, was)) if before == print && was == w => Vec::new(),
                    Some((_, was)) if was != w => vec![was, w],
                    _ => vec![w],
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                self.objects
                    .remove(&key)
                    .map(|(_, w)| w)
                    .or_else(|| super::watch::workload_of(o.labels()))
                    .into_iter()
                    .collect()
            }
            Ok(watcher::Event::InitDone) => {
                let listed = self.listing.take().unwrap_or_default();
                let mut gone = Vec::new();
                self.objects.retain(|k, (_, w)| {
                    let keep = listed.contains(k);
                    if !keep {
                        gone.push(w.clone());
                    }
                    keep
                });
                gone
            }
            Err(_) => Vec::new(),
        }
    }
}

/// A hash of what a workload judges in an object's metadata (see [`Seen`]).
fn fingerprint(o: &PartialObjectMeta<DynamicObject>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    o.labels().hash(&mut h);
    o.annotations().hash(&mut h);
    match o.metadata.generation {
        Some(g) => g.hash(&mut h),
        None => o.metadata.resource_version.hash(&mut h),
    }
    o.metadata.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_labels_are_read_and_the_index_tracks_objects() {
        let l = BTreeMap::from([
            ("country.residency.io/AU".to_string(), "true".to_string()),
            ("country.residency.io/NZ".to_string(), "false".to_string()),
            ("app".to_string(), "x".to_string()),
        ]);
        assert_eq!(countries_of(&l), ["AU"]);
        // as the admission policies read them: any case, once each
        let mixed = BTreeMap::from([
            ("Country.Residency.io/jp".to_string(), "True".to_string()),
            ("country.residency.io/JP".to_string(), "true".to_string()),
            ("country.residency.io/fj".to_string(), "TRUE".to_string()),
            ("country.residency.io/".to_string(), "true".to_string()),
            ("country.residency.iox/KI".to_string(), "true".to_string()),
        ]);
        assert_eq!(countries_of(&mixed), ["FJ", "JP"]);
        let index = Index::default();
        let key = ("Deployment".to_string(), "ns".to_string(), "d".to_string());
        let v = Labelled {
            countries: vec!["AU".into()],
            workload: None,
            retained: false,
        };
        assert_eq!(
            index.update("msk-1", key.clone(), Some(v.clone())),
            BTreeSet::from(["AU".to_string()])
        );
        assert_eq!(index.with(|m| m["msk-1"].len()), 1);
        // the same entry again (a status update): no policy has anything new to judge
        assert!(index.update("msk-1", key.clone(), Some(v)).is_empty());
        assert_eq!(
            index.update("msk-1", key, None),
            BTreeSet::from(["AU".to_string()])
        );
        assert!(index.with(|m| m["msk-1"].is_empty()));
    }

    fn meta(
        labels: serde_json::Value,
        generation: Option<i64>,
        version: &str,
    ) -> PartialObjectMeta<DynamicObject> {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "d", "namespace": "ns", "labels": labels,
                         "generation": generation, "resourceVersion": version}
        }))
        .unwrap()
    }

    #[test]
    fn workloads_are_triggered_by_what_they_judge_not_by_status_writes() {
        let placed = serde_json::json!({
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::WORKLOAD: "w", labels::WORKLOAD_NAMESPACE: "ns"});
        let w = ObjectRef::<ResidentWorkload>::new("w").within("ns");
        let mut seen = Seen::default();
        let apply = |o| Ok(watcher::Event::Apply(o));
        assert_eq!(
            seen.triggers(&apply(meta(placed.clone(), Some(1), "1"))),
            vec![w.clone()]
        );
        // a status write: new resourceVersion, same generation
        assert!(
            seen.triggers(&apply(meta(placed.clone(), Some(1), "2")))
                .is_empty()
        );
        // a spec change
        assert_eq!(
            seen.triggers(&apply(meta(placed.clone(), Some(2), "3"))),
            vec![w.clone()]
        );
        // a label change
        let mut relabelled = placed.clone();
        relabelled["extra"] = "x".into();
        assert_eq!(
            seen.triggers(&apply(meta(relabelled, Some(2), "4"))),
            vec![w.clone()]
        );
        // a kind without generation: every change counts
        assert_eq!(
            seen.triggers(&apply(meta(placed.clone(), None, "5"))),
            vec![w.clone()]
        );
        assert_eq!(
            seen.triggers(&apply(meta(placed.clone(), None, "6"))),
            vec![w.clone()]
        );
        // its labels taken off: its workload learns it; then it is nobody's
        let unlabelled = || apply(meta(serde_json::json!({}), Some(2), "7"));
        assert_eq!(seen.triggers(&unlabelled()), vec![w.clone()]);
        assert!(seen.triggers(&unlabelled()).is_empty());
        // a relist that no longer shows a placed object: its workload learns it is gone
        assert_eq!(
            seen.triggers(&apply(meta(placed.clone(), Some(2), "8"))),
            vec![w.clone()]
        );
        assert!(seen.triggers(&Ok(watcher::Event::Init)).is_empty());
        assert_eq!(
            seen.triggers(&Ok(watcher::Event::InitDone)),
            vec![w.clone()]
        );
        // and a delete
        assert_eq!(
            seen.triggers(&Ok(watcher::Event::Delete(meta(placed, Some(1), "9")))),
            vec![w]
        );
    }
}
