//! Objects on the members that declare whose data they hold with a country label
//! (`country.residency.io/<CODE>`), including ones nobody placed through the operator. Each
//! member has metadata-only watches of the placeable kinds and PersistentVolumes; the objects
//! carrying a country label are kept in an index, which policy status reads to report data on
//! clusters a policy does not allow. Changes re-evaluate the policies of those countries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;
use tracing::info;

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
    /// Its UID.
    pub uid: Option<String>,
    /// Its [`fingerprint`]: whether it changed since the operator last applied or read it.
    pub print: u64,
}

impl Labelled {
    /// Whether `other` declares the same (what the policies judge).
    fn declares_as(&self, other: &Labelled) -> bool {
        self.countries == other.countries
            && self.workload == other.workload
            && self.retained == other.retained
    }
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
                Some(old) if old.declares_as(&v) => BTreeSet::new(),
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

    /// After a fresh list of `kind` on `cluster` (in `namespace`, when given): forgets the
    /// objects of that kind the list no longer showed, and returns the countries they declared.
    /// The others stay throughout the list, so the inventory never shows a partial list.
    fn keep_listed(
        &self,
        cluster: &str,
        kind: &str,
        namespace: Option<&str>,
        listed: &BTreeSet<(String, String)>,
    ) -> BTreeSet<String> {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut gone = BTreeSet::new();
        if let Some(objects) = m.get_mut(cluster) {
            objects.retain(|k, v| {
                let of_list = k.0 == kind && namespace.is_none_or(|ns| k.1 == ns);
                if of_list && !listed.contains(&(k.1.clone(), k.2.clone())) {
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

    /// The UID of the object `kind` `namespace/name` on `cluster` when it is labelled as the
    /// workload `workload`'s (`namespace/name`): removing the workload's copy may delete it
    /// without asking the member first.
    pub fn uid_of(&self, cluster: &str, key: &Key, workload: &str) -> Option<String> {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        let l = m.get(cluster)?.get(key)?;
        (l.workload.as_deref() == Some(workload))
            .then(|| l.uid.clone())
            .flatten()
    }

    /// The [`fingerprint`] of the object `key` on `cluster` as its watch last saw it.
    pub fn print_of(&self, cluster: &str, key: &Key) -> Option<u64> {
        let m = self.members.read().unwrap_or_else(|e| e.into_inner());
        m.get(cluster)?.get(key).map(|l| l.print)
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
        uid: meta.uid(),
        print: fingerprint(&meta.metadata),
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
    /// What the member's connection wrote and read: the operator's own changes trigger
    /// nothing.
    pub memo: std::sync::Arc<super::member::Memo>,
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
/// placed, triggers its workload (drift detection). A watch of one namespace ends when the
/// member refuses it and says the namespace does not exist: its objects are gone with it and
/// are forgotten (without the end, it would retry, refused, for as long as the operator runs).
pub fn watch_kind(
    client: Client,
    cluster: &str,
    ar: ApiResource,
    namespace: Option<&str>,
    sinks: Sinks,
) -> JoinHandle<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
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
        memo,
    } = sinks;
    let cluster = cluster.to_string();
    let kind = ar.kind.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen = Seen {
            own: Some((kind.clone(), memo)),
            ..Default::default()
        };
        while let Some(event) = stream.next().await {
            let triggers = seen.triggers(&event);
            let mut ends = false;
            let changed: BTreeSet<String> = match event {
                Ok(watcher::Event::Init) => BTreeSet::new(),
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
                    // the relist `seen` followed: what it no longer showed is gone
                    let listed = std::mem::take(&mut seen.relisted);
                    let gone = index.keep_listed(&cluster, &kind, namespace.as_deref(), &listed);
                    index.listed(&cluster);
                    gone
                }
                Err(e) => match namespace.as_deref() {
                    // the permission of a namespace's watch is the operator's binding there: once
                    // refused, the namespace may be gone, and its objects with it
                    Some(ns) if refused(&e) && namespace_gone(&namespaces, ns).await => {
                        info!(%cluster, namespace = ns, %kind, "namespace gone: its watch ends");
                        ends = true;
                        index.keep_listed(&cluster, &kind, Some(ns), &BTreeSet::new())
                    }
                    _ => BTreeSet::new(),
                },
            };
            // after the index took the change: a reconcile reads the object's new print there
            for w in triggers {
                if workloads_tx.send(w).await.is_err() {
                    return; // the controller is gone
                }
            }
            if !changed.is_empty() {
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
            if ends {
                // a placement in the namespace starts it again ([`super::watch::Watches::ensure`])
                return;
            }
        }
    })
}

/// Whether a watch's error is the API server refusing it (forbidden, or not found).
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => return false,
    };
    code == 403 || code == 404
}

/// Whether the member says `namespace` does not exist (an error reading it says nothing).
async fn namespace_gone(namespaces: &Api<Namespace>, namespace: &str) -> bool {
    matches!(namespaces.get_opt(namespace).await, Ok(None))
}

/// What a member watch last saw of each object a workload placed, to trigger that workload
/// only when something it judges changed: the object's existence, labels, annotations or spec
/// (its `generation`; any change of a kind without one). Objects a controller made from a
/// placed one are not placed objects and trigger nothing here. Status updates, which controllers
/// write often, trigger nothing; readiness has its own watch ([`super::ready`]).
#[derive(Default)]
struct Seen {
    objects: std::collections::HashMap<(String, String), (u64, ObjectRef<ResidentWorkload>)>,
    /// The keys listed since the last `Init` (objects gone meanwhile are found at `InitDone`).
    listing: Option<BTreeSet<(String, String)>>,
    /// Every key the last complete relist showed (the index forgets the others).
    relisted: BTreeSet<(String, String)>,
    /// The kind watched, and what the operator wrote there: an object it applied or deleted
    /// itself (the same fingerprint, the same UID) triggers nothing.
    own: Option<(String, std::sync::Arc<super::member::Memo>)>,
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
                // a controller's child (a Deployment's Pods, a StatefulSet's claims) carries the
                // workload's labels from its template but was not placed: drift concerns what
                // the operator applied; the child's place is watched by the topology caches
                let placed = self.objects.contains_key(&key) || !controlled(o);
                let Some(w) = super::watch::workload_of(o.labels()).filter(|_| placed) else {
                    return self
                        .objects
                        .remove(&key)
                        .map(|(_, w)| w)
                        .into_iter()
                        .collect();
                };
                let print = fingerprint(&o.metadata);
                let ours = self.own.as_ref().is_some_and(|(kind, memo)| {
                    memo.made(&(kind.clone(), key.0.clone(), key.1.clone()), print)
                });
                match self.objects.insert(key, (print, w.clone())) {
                    Some((before, was)) if before == print && was == w => Vec::new(),
                    Some((_, was)) if was != w => vec![was, w],
                    _ if ours => Vec::new(),
                    _ => vec![w],
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                let key = (o.namespace().unwrap_or_default(), o.name_any());
                let ours = self.own.as_ref().is_some_and(|(kind, memo)| {
                    let uid = o.uid().unwrap_or_default();
                    memo.removed(&(kind.clone(), key.0.clone(), key.1.clone()), &uid)
                });
                if ours {
                    self.objects.remove(&key);
                    return Vec::new();
                }
                self.objects
                    .remove(&key)
                    .map(|(_, w)| w)
                    .or_else(|| super::watch::workload_of(o.labels()).filter(|_| !controlled(o)))
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
                self.relisted = listed;
                gone
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Whether a controller made the object (a controller `ownerReference`; placed objects have
/// none: the operator strips them).
fn controlled(o: &PartialObjectMeta<DynamicObject>) -> bool {
    o.owner_references()
        .iter()
        .any(|r| r.controller == Some(true))
}

/// Annotations a member's own controllers write on the objects the operator placed (the
/// Deployment controller numbers each rollout): not the operator's, not drift, and no reason to
/// look at the object again.
pub const CONTROLLER_ANNOTATIONS: [&str; 1] = ["deployment.kubernetes.io/revision"];

/// A hash of what a workload judges in an object's metadata (see [`Seen`]): its labels,
/// annotations (but [`CONTROLLER_ANNOTATIONS`]), spec (`generation`) and deletion. A kind
/// without `generation` counts every change (its `resourceVersion`): equal prints then mean the
/// same object.
pub fn fingerprint(meta: &kube::api::ObjectMeta) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    // absent and empty maps alike (the API server returns either)
    for (i, map) in [&meta.labels, &meta.annotations].into_iter().enumerate() {
        // on every watch event: hashed as it is iterated, nothing collected
        let ours =
            |(k, _): &(&String, &String)| i == 0 || !CONTROLLER_ANNOTATIONS.contains(&k.as_str());
        map.iter().flatten().filter(ours).count().hash(&mut h);
        for kv in map.iter().flatten().filter(ours) {
            kv.hash(&mut h);
        }
    }
    match meta.generation {
        Some(g) => g.hash(&mut h),
        None => meta.resource_version.hash(&mut h),
    }
    meta.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_is_refused_when_forbidden_or_not_found_not_when_it_merely_failed() {
        let status = |code: u16| -> Box<kube::core::Status> {
            Box::new(serde_json::from_value(serde_json::json!({"code": code})).unwrap())
        };
        let api = |code| kube::Error::Api(status(code));
        assert!(refused(&watcher::Error::InitialListFailed(api(403))));
        assert!(refused(&watcher::Error::WatchStartFailed(api(404))));
        assert!(refused(&watcher::Error::WatchFailed(api(403))));
        assert!(refused(&watcher::Error::WatchError(status(403))));
        // the API server unavailable, a gone resource version, a connection lost: retried
        assert!(!refused(&watcher::Error::InitialListFailed(api(503))));
        assert!(!refused(&watcher::Error::WatchError(status(410))));
        assert!(!refused(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn the_print_follows_labels_annotations_and_spec_but_not_the_members_controllers() {
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)], generation: i64| {
            let map = |kv: &[(&str, &str)]| {
                Some(
                    kv.iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                )
            };
            kube::api::ObjectMeta {
                labels: map(labels),
                annotations: map(annotations),
                generation: Some(generation),
                ..Default::default()
            }
        };
        let applied = fingerprint(&meta(&[("app", "w")], &[("note", "a")], 1));
        // the Deployment controller numbers the rollout: the same object for the operator
        let numbered = meta(
            &[("app", "w")],
            &[("note", "a"), ("deployment.kubernetes.io/revision", "1")],
            1,
        );
        assert_eq!(fingerprint(&numbered), applied);
        // absent and empty maps alike
        assert_eq!(
            fingerprint(&meta(&[], &[], 1)),
            fingerprint(&kube::api::ObjectMeta {
                generation: Some(1),
                ..Default::default()
            })
        );
        // anything else changes it: an annotation, a label, the spec
        assert_ne!(
            fingerprint(&meta(&[("app", "w")], &[("note", "b")], 1)),
            applied
        );
        assert_ne!(
            fingerprint(&meta(&[("app", "x")], &[("note", "a")], 1)),
            applied
        );
        assert_ne!(
            fingerprint(&meta(&[("app", "w")], &[("note", "a")], 2)),
            applied
        );
        // the same key as a label is the operator's concern
        assert_ne!(
            fingerprint(&meta(
                &[("app", "w"), ("deployment.kubernetes.io/revision", "1")],
                &[("note", "a")],
                1
            )),
            applied
        );
    }

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
            uid: Some("u".into()),
            print: 1,
        };
        assert_eq!(
            index.update("msk-1", key.clone(), Some(v.clone())),
            BTreeSet::from(["AU".to_string()])
        );
        assert_eq!(index.with(|m| m["msk-1"].len()), 1);
        // the same entry again (a status update): no policy has anything new to judge
        assert!(
            index
                .update("msk-1", key.clone(), Some(v.clone()))
                .is_empty()
        );
        assert_eq!(
            index.update("msk-1", key.clone(), None),
            BTreeSet::from(["AU".to_string()])
        );
        assert!(index.with(|m| m["msk-1"].is_empty()));
        // a relist: what it shows again stays all along, what it no longer shows goes at its end
        let other = ("Deployment".to_string(), "ns".to_string(), "e".to_string());
        let pv = (
            "PersistentVolume".to_string(),
            String::new(),
            "v".to_string(),
        );
        for k in [&key, &other, &pv] {
            index.update("msk-1", k.clone(), Some(v.clone()));
        }
        let listed = BTreeSet::from([(key.1.clone(), key.2.clone())]);
        assert_eq!(
            index.keep_listed("msk-1", "Deployment", None, &listed),
            BTreeSet::from(["AU".to_string()])
        );
        assert_eq!(
            index.with(|m| m["msk-1"].keys().cloned().collect::<Vec<_>>()),
            [key, pv],
            "the other kind is untouched"
        );
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
            seen.triggers(&Ok(watcher::Event::Delete(meta(
                placed.clone(),
                Some(1),
                "9"
            )))),
            vec![w]
        );
        // a controller's child with the workload's labels (a Deployment's Pod) triggers
        // nothing: made, changed or deleted
        let mut child = meta(placed, Some(1), "10");
        child.metadata.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "d-1".into(),
                uid: "u".into(),
                controller: Some(true),
                ..Default::default()
            },
        ]);
        assert!(seen.triggers(&apply(child.clone())).is_empty());
        child.metadata.generation = Some(2);
        assert!(seen.triggers(&apply(child.clone())).is_empty());
        assert!(seen.triggers(&Ok(watcher::Event::Delete(child))).is_empty());
    }

    #[test]
    fn what_the_operator_wrote_itself_triggers_nothing() {
        let placed = serde_json::json!({
            labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
            labels::WORKLOAD: "w", labels::WORKLOAD_NAMESPACE: "ns"});
        let w = ObjectRef::<ResidentWorkload>::new("w").within("ns");
        let memo = std::sync::Arc::new(super::super::member::Memo::default());
        let mut seen = Seen {
            own: Some(("Deployment".into(), memo.clone())),
            ..Default::default()
        };
        let key = ("Deployment".to_string(), "ns".to_string(), "d".to_string());
        let applied = meta(placed.clone(), Some(1), "1");
        // the operator applied it and saw this version: its event asks for nothing
        memo.note_made(key.clone(), fingerprint(&applied.metadata));
        assert!(
            seen.triggers(&Ok(watcher::Event::Apply(applied)))
                .is_empty()
        );
        // someone else's change does
        assert_eq!(
            seen.triggers(&Ok(watcher::Event::Apply(meta(
                placed.clone(),
                Some(2),
                "2"
            )))),
            vec![w.clone()]
        );
        // its deletion by the operator (that UID) asks for nothing; by someone else it does
        let mut gone = meta(placed.clone(), Some(2), "3");
        gone.metadata.uid = Some("u1".into());
        memo.set_removed(key.clone(), "u1".into());
        assert!(
            seen.triggers(&Ok(watcher::Event::Delete(gone.clone())))
                .is_empty()
        );
        seen.triggers(&Ok(watcher::Event::Apply(meta(placed, Some(1), "4"))));
        gone.metadata.uid = Some("u2".into());
        assert_eq!(seen.triggers(&Ok(watcher::Event::Delete(gone))), vec![w]);
    }
}
