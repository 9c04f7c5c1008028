//! The watch caches that location evidence is computed from: each member's nodes,
//! PersistentVolumes, StorageClasses and PersistentVolumeClaims, and the Pods the operator
//! placed (by its `app.kubernetes.io/managed-by` label), each kept as the small projection the
//! pure [`crate::location`] functions read. No list on any reconcile: the probe attests from
//! the node cache, and a workload's evidence is computed from these caches.
//!
//! A change that matters triggers a reconcile: a node's change re-probes its member and judges
//! every copy there again; a managed Pod's node or volumes, a managed claim's volume, or the
//! volume bound to a managed claim trigger its workload. Heartbeats and status updates that
//! change none of this trigger nothing. A watch that keeps failing (its permission revoked, say)
//! stops vouching for its cache after [`STALE_AFTER`]: evidence and attestation then say so
//! instead of trusting what it last saw.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::api::{MemberCluster, ResidentWorkload, labels};
use crate::location::evidence::{ClaimFacts, ClassFacts, PodFacts, VolumeFacts};
use crate::location::topology::{NodeFacts, Topology};

/// Key of an object: namespace ("" when cluster-scoped), name.
pub type Key = (String, String);

/// A managed Pod: the workload it belongs to (`namespace/name`) and its facts.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned<T> {
    /// `namespace/name` of its ResidentWorkload.
    pub workload: String,
    /// Its facts.
    pub facts: T,
}

/// A PersistentVolumeClaim: its facts, and the workload it belongs to when the operator placed
/// it.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    /// `namespace/name` of its ResidentWorkload, when the operator placed it.
    pub workload: Option<String>,
    /// Its facts.
    pub facts: ClaimFacts,
}

/// A PersistentVolume: its facts and the claim bound to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Volume {
    /// Its facts.
    pub facts: VolumeFacts,
    /// The claim it is bound to (`spec.claimRef`).
    pub claim: Option<Key>,
}

/// The kinds watched on each member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Nodes.
    Nodes,
    /// PersistentVolumes.
    Volumes,
    /// StorageClasses.
    Classes,
    /// Pods the operator placed.
    Pods,
    /// PersistentVolumeClaims.
    Claims,
}

const ALL_KINDS: [Kind; 5] = [
    Kind::Nodes,
    Kind::Volumes,
    Kind::Classes,
    Kind::Pods,
    Kind::Claims,
];

/// What one member's caches hold.
#[derive(Clone, Debug, Default)]
pub struct MemberTopology {
    /// The nodes, indexed.
    pub topology: Arc<Topology>,
    /// PersistentVolumes by name.
    pub volumes: BTreeMap<String, VolumeFacts>,
    /// StorageClasses by name.
    pub classes: BTreeMap<String, ClassFacts>,
    facts: BTreeMap<Kind, BTreeMap<Key, Fact>>,
    synced: BTreeSet<Kind>,
    /// Watches failing now: since when, the last failure and when it came.
    failing: BTreeMap<Kind, Failing>,
}

/// A run of watch errors without a success between them.
#[derive(Clone, Debug)]
struct Failing {
    since: Instant,
    last: Instant,
    error: String,
}

/// A watch whose errors go on this long (each retry failing, e.g. its permission was revoked)
/// no longer vouches for its cache: what it holds may be stale.
const STALE_AFTER: Duration = Duration::from_secs(30);
/// Errors closer together than this are one run (the watch retries every 5 s at most).
const RETRY_GAP: Duration = Duration::from_secs(12);

/// Whether the member's nodes can be relied on.
#[derive(Clone, Debug)]
pub enum Nodes {
    /// Listed, and their watch is not failing.
    Listed(Arc<Topology>),
    /// Not listed yet (the watch is starting, or its first attempts failed: the error).
    NotYet(Option<String>),
    /// Their watch has failed for a while: nothing is listed, or the cache may be stale (the
    /// error).
    Failing(String),
}

/// A projection of one watched object.
#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// A node.
    Node(NodeFacts),
    /// A PersistentVolume.
    Volume(Volume),
    /// A StorageClass.
    Class(ClassFacts),
    /// A managed Pod.
    Pod(Owned<PodFacts>),
    /// A claim (every claim: a Pod may mount one the operator did not place).
    Claim(Claim),
}

/// What a change asks for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Probe the member again (its nodes changed).
    Member,
    /// Reconcile this workload (`namespace/name`).
    Workload(String),
}

impl MemberTopology {
    /// Whether every kind has been listed, and no watch has been failing for a while: the
    /// caches can be relied on.
    pub fn synced(&self) -> bool {
        let now = Instant::now();
        ALL_KINDS
            .iter()
            .all(|k| self.synced.contains(k) && !self.stale(*k, now))
    }

    fn stale(&self, kind: Kind, now: Instant) -> bool {
        self.failing.get(&kind).is_some_and(|f| {
            now.duration_since(f.last) < RETRY_GAP && now.duration_since(f.since) >= STALE_AFTER
        })
    }

    /// The member's nodes, if they can be relied on.
    pub fn nodes(&self) -> Nodes {
        self.nodes_at(Instant::now())
    }

    fn nodes_at(&self, now: Instant) -> Nodes {
        let error = self.failing.get(&Kind::Nodes).map(|f| f.error.clone());
        if self.stale(Kind::Nodes, now) {
            Nodes::Failing(error.unwrap_or_default())
        } else if !self.synced.contains(&Kind::Nodes) {
            Nodes::NotYet(error)
        } else {
            Nodes::Listed(self.topology.clone())
        }
    }

    /// A watch of `kind` failed at `now`.
    fn failed(&mut self, kind: Kind, error: String, now: Instant) {
        let f = self.failing.entry(kind).or_insert(Failing {
            since: now,
            last: now,
            error: String::new(),
        });
        if now.duration_since(f.last) >= RETRY_GAP {
            f.since = now; // a new run
        }
        f.last = now;
        f.error = error;
    }

    /// A watch of `kind` delivered something: it works.
    fn works(&mut self, kind: Kind) {
        self.failing.remove(&kind);
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Fact)> {
        self.facts.get(&kind).into_iter().flatten()
    }

    /// The objects of `kind` in `namespace`.
    fn in_namespace<'a>(
        &'a self,
        kind: Kind,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a Key, &'a Fact)> + 'a {
        self.facts
            .get(&kind)
            .into_iter()
            .flat_map(move |m| m.range((namespace.to_string(), String::new())..))
            .take_while(move |(k, _)| k.0 == namespace)
    }

    /// The names of the claims labelled as the workload `namespace/name`'s, when the claims'
    /// watch has listed them and is not failing (`None`: only the member can tell).
    pub fn claims_of(&self, namespace: &str, name: &str) -> Option<Vec<String>> {
        if !self.synced.contains(&Kind::Claims) || self.failing.contains_key(&Kind::Claims) {
            return None;
        }
        let workload = format!("{namespace}/{name}");
        Some(
            self.in_namespace(Kind::Claims, namespace)
                .filter_map(|((_, claim), f)| match f {
                    Fact::Claim(c) if c.workload.as_deref() == Some(workload.as_str()) => {
                        Some(claim.clone())
                    }
                    _ => None,
                })
                .collect(),
        )
    }

    /// The Pods of the workload `namespace/name`, and its claims: those the operator placed for
    /// it and those its Pods mount.
    pub fn copy_of(&self, namespace: &str, name: &str) -> (Vec<PodFacts>, Vec<ClaimFacts>) {
        let workload = format!("{namespace}/{name}");
        let pods: Vec<PodFacts> = self
            .in_namespace(Kind::Pods, namespace)
            .filter_map(|(_, f)| match f {
                Fact::Pod(o) if o.workload == workload => Some(o.facts.clone()),
                _ => None,
            })
            .collect();
        let mounted: BTreeSet<&str> = pods
            .iter()
            .flat_map(|p| p.claims.iter().map(String::as_str))
            .collect();
        let claims = self
            .in_namespace(Kind::Claims, namespace)
            .filter_map(|((_, claim), f)| match f {
                Fact::Claim(c)
                    if c.workload.as_deref() == Some(workload.as_str())
                        || mounted.contains(claim.as_str()) =>
                {
                    Some(c.facts.clone())
                }
                _ => None,
            })
            .collect();
        (pods, claims)
    }

    fn rebuild(&mut self, kind: Kind) {
        match kind {
            Kind::Nodes => {
                let nodes = self.of(Kind::Nodes).filter_map(|(_, f)| match f {
                    Fact::Node(n) => Some(n.clone()),
                    _ => None,
                });
                self.topology = Arc::new(Topology::new(nodes));
            }
            Kind::Volumes => {
                self.volumes = self
                    .of(Kind::Volumes)
                    .filter_map(|(k, f)| match f {
                        Fact::Volume(v) => Some((k.1.clone(), v.facts.clone())),
                        _ => None,
                    })
                    .collect();
            }
            Kind::Classes => {
                self.classes = self
                    .of(Kind::Classes)
                    .filter_map(|(k, f)| match f {
                        Fact::Class(c) => Some((k.1.clone(), c.clone())),
                        _ => None,
                    })
                    .collect();
            }
            Kind::Pods | Kind::Claims => {}
        }
    }

    /// Records one object (or forgets it: `None`) and says what the change asks for.
    pub fn apply(&mut self, kind: Kind, key: Key, fact: Option<Fact>) -> BTreeSet<Trigger> {
        let map = self.facts.entry(kind).or_default();
        let old = match fact.clone() {
            Some(f) => map.insert(key, f),
            None => map.remove(&key),
        };
        if old == fact {
            return BTreeSet::new();
        }
        self.rebuild(kind);
        if old.is_none() && matches!(&fact, Some(Fact::Pod(p)) if p.facts.node.is_none()) {
            // a Pod not scheduled yet runs nowhere: its workload learns of it once it has a node
            return BTreeSet::new();
        }
        self.triggers([old.as_ref(), fact.as_ref()])
    }

    /// Replaces every object of `kind` (a fresh list) and says what the changes ask for.
    pub fn replace(&mut self, kind: Kind, objects: BTreeMap<Key, Fact>) -> BTreeSet<Trigger> {
        let before = self.facts.insert(kind, objects).unwrap_or_default();
        self.synced.insert(kind);
        self.rebuild(kind);
        let now = self.facts.get(&kind).cloned().unwrap_or_default();
        let keys: BTreeSet<&Key> = before.keys().chain(now.keys()).collect();
        keys.into_iter()
            .filter(|k| before.get(*k) != now.get(*k))
            .flat_map(|k| self.triggers([before.get(k), now.get(k)]))
            .collect()
    }

    fn triggers(&self, facts: [Option<&Fact>; 2]) -> BTreeSet<Trigger> {
        let mut out = BTreeSet::new();
        for f in facts.into_iter().flatten() {
            match f {
                // a node changed: the member is probed again, and every copy there is judged
                // again (its Pods' and volumes' places may have moved with it)
                Fact::Node(_) => {
                    out.insert(Trigger::Member);
                    out.extend(self.workloads().into_iter().map(Trigger::Workload));
                }
                Fact::Pod(o) => {
                    out.insert(Trigger::Workload(o.workload.clone()));
                }
                Fact::Claim(c) => {
                    out.extend(c.workload.clone().map(Trigger::Workload));
                }
                Fact::Volume(v) => {
                    if let Some(Fact::Claim(c)) = v
                        .claim
                        .as_ref()
                        .and_then(|k| self.facts.get(&Kind::Claims)?.get(k))
                    {
                        out.extend(c.workload.clone().map(Trigger::Workload));
                    }
                }
                Fact::Class(_) => {}
            }
        }
        out
    }

    /// The workloads with a Pod or claim on the member.
    fn workloads(&self) -> BTreeSet<String> {
        [Kind::Pods, Kind::Claims]
            .iter()
            .flat_map(|k| self.of(*k))
            .filter_map(|(_, f)| match f {
                Fact::Pod(o) => Some(o.workload.clone()),
                Fact::Claim(c) => c.workload.clone(),
                _ => None,
            })
            .collect()
    }
}

/// Every member's caches.
#[derive(Default)]
pub struct Index {
    members: RwLock<BTreeMap<String, MemberTopology>>,
}

impl Index {
    /// Runs `f` on the member's caches, made when missing (a first list, an error).
    fn with_member<R>(&self, cluster: &str, f: impl FnOnce(&mut MemberTopology) -> R) -> R {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        f(m.entry(cluster.to_string()).or_default())
    }

    /// Runs `f` on the member's caches when they exist (a change after the member was forgotten
    /// is dropped).
    fn update<R>(&self, cluster: &str, f: impl FnOnce(&mut MemberTopology) -> R) -> Option<R> {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        m.get_mut(cluster).map(f)
    }

    /// Runs `f` over one member's caches (`None` when it is not watched); keep `f` short.
    pub fn read<R>(&self, cluster: &str, f: impl FnOnce(Option<&MemberTopology>) -> R) -> R {
        f(self
            .members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster))
    }

    /// Forgets a member.
    pub fn remove_member(&self, cluster: &str) {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        m.remove(cluster);
    }
}

/// The projection of a Node.
pub fn node_fact(n: &Node) -> Option<(Key, Fact)> {
    let name = n.name_any();
    Some((
        (String::new(), name.clone()),
        Fact::Node(NodeFacts {
            name,
            labels: n.labels().clone(),
            provider_id: n.spec.as_ref().and_then(|s| s.provider_id.clone()),
        }),
    ))
}

/// The projection of a PersistentVolume.
pub fn volume_fact(v: &PersistentVolume) -> Option<(Key, Fact)> {
    let spec = v.spec.as_ref();
    Some((
        (String::new(), v.name_any()),
        Fact::Volume(Volume {
            facts: VolumeFacts {
                storage_class: spec.and_then(|s| s.storage_class_name.clone()),
                node_affinity: spec
                    .and_then(|s| s.node_affinity.as_ref())
                    .and_then(|a| a.required.as_ref())
                    .map(|r| r.node_selector_terms.clone())
                    .unwrap_or_default(),
            },
            claim: spec
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|c| Some((c.namespace.clone().unwrap_or_default(), c.name.clone()?))),
        }),
    ))
}

/// The projection of a StorageClass.
pub fn class_fact(c: &StorageClass) -> Option<(Key, Fact)> {
    Some((
        (String::new(), c.name_any()),
        Fact::Class(ClassFacts {
            allowed_topologies: c.allowed_topologies.clone().unwrap_or_default(),
        }),
    ))
}

fn workload_label<K: Resource>(o: &K) -> Option<String> {
    let r = super::watch::workload_of(o.labels())?;
    Some(format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
}

/// The projection of a Pod the operator placed (`None` for one of no workload): its node, the
/// claims it mounts (generic ephemeral volumes included: `<pod>-<volume>`) and the kinds of
/// the network volumes it mounts directly.
pub fn pod_fact(p: &Pod) -> Option<(Key, Fact)> {
    let spec = p.spec.as_ref();
    let volumes = spec.and_then(|s| s.volumes.clone()).unwrap_or_default();
    let mut claims = Vec::new();
    let mut inline = Vec::new();
    for v in &volumes {
        if let Some(c) = &v.persistent_volume_claim {
            claims.push(c.claim_name.clone());
        } else if v.ephemeral.is_some() {
            claims.push(format!("{}-{}", p.name_any(), v.name));
        } else if let Some(kind) = inline_network_volume(v) {
            inline.push(format!("{kind} volume {}", v.name));
        }
    }
    Some((
        (p.namespace().unwrap_or_default(), p.name_any()),
        Fact::Pod(Owned {
            workload: workload_label(p)?,
            facts: PodFacts {
                name: p.name_any(),
                node: spec.and_then(|s| s.node_name.clone()),
                claims,
                inline,
            },
        }),
    ))
}

/// The kind of a Pod volume that keeps data somewhere no node places (network storage mounted
/// directly), or `None` (claims, node-local and projected volumes).
fn inline_network_volume(v: &k8s_openapi::api::core::v1::Volume) -> Option<&'static str> {
    let kinds: [(&str, bool); 17] = [
        ("nfs", v.nfs.is_some()),
        ("iscsi", v.iscsi.is_some()),
        ("cephfs", v.cephfs.is_some()),
        ("rbd", v.rbd.is_some()),
        ("glusterfs", v.glusterfs.is_some()),
        ("csi", v.csi.is_some()),
        ("fc", v.fc.is_some()),
        ("azureFile", v.azure_file.is_some()),
        ("azureDisk", v.azure_disk.is_some()),
        ("awsElasticBlockStore", v.aws_elastic_block_store.is_some()),
        ("gcePersistentDisk", v.gce_persistent_disk.is_some()),
        ("cinder", v.cinder.is_some()),
        ("portworxVolume", v.portworx_volume.is_some()),
        ("quobyte", v.quobyte.is_some()),
        ("storageos", v.storageos.is_some()),
        ("vsphereVolume", v.vsphere_volume.is_some()),
        ("flexVolume", v.flex_volume.is_some()),
    ];
    kinds.iter().find(|(_, set)| *set).map(|(k, _)| *k)
}

/// The projection of a claim.
pub fn claim_fact(c: &PersistentVolumeClaim) -> Option<(Key, Fact)> {
    let spec = c.spec.as_ref();
    Some((
        (c.namespace().unwrap_or_default(), c.name_any()),
        Fact::Claim(Claim {
            workload: workload_label(c),
            facts: ClaimFacts {
                name: c.name_any(),
                volume: spec.and_then(|s| s.volume_name.clone()),
                storage_class: spec.and_then(|s| s.storage_class_name.clone()),
            },
        }),
    ))
}

/// Where the triggers go.
#[derive(Clone)]
pub struct Triggers {
    /// The member's name.
    pub cluster: String,
    /// Workload reconciles.
    pub workloads: Sender<ObjectRef<ResidentWorkload>>,
    /// Member probes.
    pub members: Sender<ObjectRef<MemberCluster>>,
}

impl Triggers {
    /// Sends them; `false` when the controllers are gone.
    async fn send(&self, triggers: BTreeSet<Trigger>) -> bool {
        for t in triggers {
            let sent = match t {
                Trigger::Member => self
                    .members
                    .send(ObjectRef::new(&self.cluster))
                    .await
                    .is_ok(),
                Trigger::Workload(w) => {
                    let (ns, name) = w.split_once('/').unwrap_or_default();
                    self.workloads
                        .send(ObjectRef::new(name).within(ns))
                        .await
                        .is_ok()
                }
            };
            if !sent {
                return false;
            }
        }
        true
    }
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    project: fn(&K) -> Option<(Key, Fact)>,
    index: Arc<Index>,
    triggers: Triggers,
) -> JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).backoff(super::watch::WatchBackoff::default());
        let mut stream = std::pin::pin!(stream);
        let cluster = triggers.cluster.clone();
        let mut listing: Option<BTreeMap<Key, Fact>> = None;
        while let Some(event) = stream.next().await {
            let out = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(BTreeMap::new());
                    index.update(&cluster, |m| m.works(kind));
                    BTreeSet::new()
                }
                Ok(watcher::Event::InitApply(o)) => {
                    if let (Some(l), Some((k, f))) = (listing.as_mut(), project(&o)) {
                        l.insert(k, f);
                    }
                    BTreeSet::new()
                }
                Ok(watcher::Event::InitDone) => {
                    let objects = listing.take().unwrap_or_default();
                    index.with_member(&cluster, |m| {
                        m.works(kind);
                        m.replace(kind, objects)
                    })
                }
                Ok(watcher::Event::Apply(o)) => {
                    let key = (o.namespace().unwrap_or_default(), o.name_any());
                    let fact = project(&o).map(|(_, f)| f);
                    index
                        .update(&cluster, |m| {
                            m.works(kind);
                            m.apply(kind, key, fact)
                        })
                        .unwrap_or_default()
                }
                Ok(watcher::Event::Delete(o)) => {
                    let key = (o.namespace().unwrap_or_default(), o.name_any());
                    index
                        .update(&cluster, |m| {
                            m.works(kind);
                            m.apply(kind, key, None)
                        })
                        .unwrap_or_default()
                }
                Err(e) => {
                    let error = e.to_string();
                    index.with_member(&cluster, |m| m.failed(kind, error, Instant::now()));
                    BTreeSet::new()
                }
            };
            if !out.is_empty() && !triggers.send(out).await {
                return; // the controllers are gone
            }
        }
    })
}

/// Starts the five watches of a member. Dropping the handles stops them.
pub fn start(client: Client, index: Arc<Index>, triggers: Triggers) -> Vec<JoinHandle<()>> {
    let all = watcher::Config::default();
    let all_claims = all.clone();
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));
    vec![
        spawn(
            Api::<Node>::all(client.clone()),
            all.clone(),
            Kind::Nodes,
            node_fact,
            index.clone(),
            triggers.clone(),
        ),
        spawn(
            Api::<PersistentVolume>::all(client.clone()),
            all.clone(),
            Kind::Volumes,
            volume_fact,
            index.clone(),
            triggers.clone(),
        ),
        spawn(
            Api::<StorageClass>::all(client.clone()),
            all,
            Kind::Classes,
            class_fact,
            index.clone(),
            triggers.clone(),
        ),
        spawn(
            Api::<Pod>::all(client.clone()),
            managed.clone(),
            Kind::Pods,
            pod_fact,
            index.clone(),
            triggers.clone(),
        ),
        spawn(
            Api::<PersistentVolumeClaim>::all(client),
            all_claims,
            Kind::Claims,
            claim_fact,
            index,
            triggers,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, region: &str) -> Fact {
        Fact::Node(NodeFacts {
            name: name.into(),
            labels: BTreeMap::from([(
                crate::location::topology::REGION_LABEL.to_string(),
                region.to_string(),
            )]),
            provider_id: None,
        })
    }

    fn key(ns: &str, name: &str) -> Key {
        (ns.to_string(), name.to_string())
    }

    fn claim(name: &str, workload: Option<&str>, volume: Option<&str>) -> Fact {
        Fact::Claim(Claim {
            workload: workload.map(str::to_string),
            facts: ClaimFacts {
                name: name.into(),
                volume: volume.map(str::to_string),
                storage_class: Some("standard".into()),
            },
        })
    }

    fn pod(name: &str, workload: &str, node: Option<&str>, claims: &[&str]) -> Fact {
        Fact::Pod(Owned {
            workload: workload.into(),
            facts: PodFacts {
                name: name.into(),
                node: node.map(str::to_string),
                claims: claims.iter().map(|c| c.to_string()).collect(),
                inline: vec![],
            },
        })
    }

    fn listed(m: &MemberTopology) -> bool {
        matches!(m.nodes(), Nodes::Listed(_))
    }

    #[test]
    fn only_changes_that_matter_trigger_and_the_topology_follows_the_nodes() {
        let mut m = MemberTopology::default();
        assert!(matches!(m.nodes(), Nodes::NotYet(None)));
        let nodes = BTreeMap::from([(key("", "a"), node("a", "eu-central-2"))]);
        assert_eq!(
            m.replace(Kind::Nodes, nodes.clone()),
            BTreeSet::from([Trigger::Member])
        );
        assert!(listed(&m) && !m.synced());
        assert_eq!(m.topology.len(), 1);
        // the same list again (a relist after a watch restart): nothing changed
        assert!(m.replace(Kind::Nodes, nodes).is_empty());
        // a heartbeat: the same projection
        assert!(
            m.apply(Kind::Nodes, key("", "a"), Some(node("a", "eu-central-2")))
                .is_empty()
        );
        // a label flap: the member is probed again, and the copies there are judged again
        m.apply(
            Kind::Pods,
            key("ns", "p"),
            Some(pod("p", "ns/w", Some("a"), &[])),
        );
        assert_eq!(
            m.apply(Kind::Nodes, key("", "a"), Some(node("a", "eu-central-1"))),
            BTreeSet::from([Trigger::Member, Trigger::Workload("ns/w".into())])
        );
        assert_eq!(
            m.topology.node("a").and_then(|n| n.region_label()),
            Some("eu-central-1")
        );
        assert!(
            m.apply(Kind::Nodes, key("", "a"), None)
                .contains(&Trigger::Member)
        );
        assert!(m.topology.is_empty());
    }

    #[test]
    fn a_workloads_claims_come_from_the_cache_only_once_it_is_listed() {
        let mut m = MemberTopology::default();
        m.apply(
            Kind::Claims,
            key("ns", "data-0"),
            Some(claim("data-0", Some("ns/store"), None)),
        );
        assert_eq!(
            m.claims_of("ns", "store"),
            None,
            "not listed yet: ask the member"
        );
        m.replace(
            Kind::Claims,
            BTreeMap::from([
                (key("ns", "data-0"), claim("data-0", Some("ns/store"), None)),
                (key("ns", "other"), claim("other", Some("ns/else"), None)),
                (
                    key("ns2", "data-0"),
                    claim("data-0", Some("ns2/store"), None),
                ),
            ]),
        );
        assert_eq!(m.claims_of("ns", "store"), Some(vec!["data-0".to_string()]));
        m.failed(Kind::Claims, "forbidden".into(), Instant::now());
        assert_eq!(m.claims_of("ns", "store"), None, "its watch fails: ask");
    }

    #[test]
    fn a_pod_triggers_its_workload_once_it_runs_somewhere_and_when_it_goes() {
        let mut m = MemberTopology::default();
        let w = || BTreeSet::from([Trigger::Workload("ns/w".into())]);
        // made, not scheduled: it runs nowhere yet
        assert!(
            m.apply(
                Kind::Pods,
                key("ns", "p"),
                Some(pod("p", "ns/w", None, &[]))
            )
            .is_empty()
        );
        assert_eq!(
            m.apply(
                Kind::Pods,
                key("ns", "p"),
                Some(pod("p", "ns/w", Some("a"), &[]))
            ),
            w()
        );
        assert_eq!(m.apply(Kind::Pods, key("ns", "p"), None), w());
    }

    #[test]
    fn a_watch_that_keeps_failing_stops_vouching_for_its_cache() {
        let mut m = MemberTopology::default();
        let t0 = Instant::now();
        m.failed(Kind::Nodes, "nodes is forbidden".into(), t0);
        assert!(matches!(m.nodes_at(t0), Nodes::NotYet(Some(e)) if e == "nodes is forbidden"));
        // retried every few seconds, failing every time: after a while, no longer just starting
        let mut t = t0;
        while t.duration_since(t0) < STALE_AFTER {
            t += Duration::from_secs(5);
            m.failed(Kind::Nodes, "nodes is forbidden".into(), t);
        }
        assert!(matches!(m.nodes_at(t), Nodes::Failing(e) if e == "nodes is forbidden"));
        // a list that works
        m.works(Kind::Nodes);
        m.replace(
            Kind::Nodes,
            BTreeMap::from([(key("", "a"), node("a", "r"))]),
        );
        assert!(matches!(m.nodes_at(t), Nodes::Listed(_)));
        // later errors, one now and then (connections dropped and resumed): still listed
        m.failed(Kind::Nodes, "connection reset".into(), t);
        let later = t + RETRY_GAP + Duration::from_secs(1);
        m.failed(Kind::Nodes, "connection reset".into(), later);
        assert!(matches!(m.nodes_at(later), Nodes::Listed(_)));
        // failing on and on after it listed: stale
        let mut u = later;
        while u.duration_since(later) < STALE_AFTER {
            u += Duration::from_secs(5);
            m.failed(Kind::Nodes, "nodes is forbidden".into(), u);
        }
        assert!(matches!(m.nodes_at(u), Nodes::Failing(_)));
        assert!(!m.synced());
    }

    #[test]
    fn a_volume_triggers_the_workload_of_its_claim_and_copies_include_mounted_claims() {
        let mut m = MemberTopology::default();
        m.apply(
            Kind::Claims,
            key("ns", "data-0"),
            Some(claim("data-0", Some("ns/store"), None)),
        );
        let pv = |claim_ns: &str, claim_name: &str| {
            Fact::Volume(Volume {
                facts: VolumeFacts {
                    storage_class: Some("standard".into()),
                    node_affinity: vec![],
                },
                claim: Some(key(claim_ns, claim_name)),
            })
        };
        assert_eq!(
            m.apply(Kind::Volumes, key("", "pv-1"), Some(pv("ns", "data-0"))),
            BTreeSet::from([Trigger::Workload("ns/store".into())])
        );
        assert!(m.volumes.contains_key("pv-1"));
        // a volume of someone else's claim triggers nobody
        assert!(
            m.apply(Kind::Volumes, key("", "pv-2"), Some(pv("other", "data-0")))
                .is_empty()
        );
        assert_eq!(
            m.apply(
                Kind::Claims,
                key("ns", "data-0"),
                Some(claim("data-0", Some("ns/store"), Some("pv-1")))
            ),
            BTreeSet::from([Trigger::Workload("ns/store".into())])
        );
        // a claim nobody placed through the operator, mounted by the workload's Pod
        m.apply(
            Kind::Claims,
            key("ns", "theirs"),
            Some(claim("theirs", None, Some("pv-9"))),
        );
        m.apply(
            Kind::Claims,
            key("ns", "unused"),
            Some(claim("unused", None, None)),
        );
        m.apply(
            Kind::Pods,
            key("ns", "store-0"),
            Some(pod("store-0", "ns/store", Some("a"), &["theirs"])),
        );
        m.apply(
            Kind::Pods,
            key("ns", "other-0"),
            Some(pod("other-0", "ns/other", None, &["unused"])),
        );
        m.apply(
            Kind::Pods,
            key("ns2", "store-0"),
            Some(pod("store-0", "ns2/store", None, &[])),
        );
        let (pods, claims) = m.copy_of("ns", "store");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].node.as_deref(), Some("a"));
        let names: Vec<&str> = claims.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["data-0", "theirs"]);
        assert_eq!(m.copy_of("ns2", "store").0.len(), 1);
        assert!(m.copy_of("n", "store").0.is_empty());
    }

    #[test]
    fn pods_name_their_claims_ephemeral_volumes_and_direct_network_volumes() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "w-0", "namespace": "ns", "labels": {
                "app.kubernetes.io/managed-by": "residency-operator",
                "residency.io/workload": "w", "residency.io/workload-namespace": "ns"}},
            "spec": {"nodeName": "a", "containers": [], "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": "data-w-0"}},
                {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
                {"name": "share", "nfs": {"server": "nfs.invalid", "path": "/x"}},
                {"name": "tmp", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "c"}}]}}))
        .unwrap();
        let Some((k, Fact::Pod(o))) = pod_fact(&p) else {
            panic!("a managed Pod")
        };
        assert_eq!(k, key("ns", "w-0"));
        assert_eq!(o.workload, "ns/w");
        assert_eq!(o.facts.claims, ["data-w-0", "w-0-scratch"]);
        assert_eq!(o.facts.inline, ["nfs volume share"]);
        let mut unmanaged = p.clone();
        unmanaged.metadata.labels = None;
        assert!(pod_fact(&unmanaged).is_none());
    }
}
