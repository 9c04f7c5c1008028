//! The watch caches that location evidence is computed from: each member's nodes,
//! PersistentVolumes, StorageClasses, and the Pods and PersistentVolumeClaims the operator
//! placed (by its `app.kubernetes.io/managed-by` label), each kept as the small projection the
//! pure [`crate::location`] functions read. No list on any reconcile: the probe attests from
//! the node cache, and a workload's evidence is computed from these caches.
//!
//! A change that matters triggers a reconcile: a node's labels or provider ID re-probe its
//! member; a managed Pod's node, a managed claim's volume, or the volume bound to a managed
//! claim trigger the claim's workload. Heartbeats and status updates that change none of this
//! trigger nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

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

/// A managed Pod or claim: the workload it belongs to (`namespace/name`) and its facts.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned<T> {
    /// `namespace/name` of its ResidentWorkload.
    pub workload: String,
    /// Its facts.
    pub facts: T,
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
    /// PersistentVolumeClaims the operator placed.
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
    /// The last error of each watch that has not listed yet.
    errors: BTreeMap<Kind, String>,
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
    /// A managed claim.
    Claim(Owned<ClaimFacts>),
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
    /// Whether every kind has been listed at least once.
    pub fn synced(&self) -> bool {
        ALL_KINDS.iter().all(|k| self.synced.contains(k))
    }

    /// Whether the nodes have been listed at least once.
    pub fn nodes_synced(&self) -> bool {
        self.synced.contains(&Kind::Nodes)
    }

    /// Why the nodes are not listed yet, when their watch failed.
    pub fn node_error(&self) -> Option<&str> {
        self.errors.get(&Kind::Nodes).map(String::as_str)
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = (&Key, &Fact)> {
        self.facts.get(&kind).into_iter().flatten()
    }

    /// The Pods and claims of the workload `namespace/name`.
    pub fn copy_of(&self, namespace: &str, name: &str) -> (Vec<PodFacts>, Vec<ClaimFacts>) {
        let workload = format!("{namespace}/{name}");
        let in_namespace = |kind| {
            self.facts
                .get(&kind)
                .into_iter()
                .flat_map(|m| m.range((namespace.to_string(), String::new())..))
                .take_while(|(k, _)| k.0 == namespace)
                .map(|(_, f)| f)
        };
        let pods = in_namespace(Kind::Pods)
            .filter_map(|f| match f {
                Fact::Pod(o) if o.workload == workload => Some(o.facts.clone()),
                _ => None,
            })
            .collect();
        let claims = in_namespace(Kind::Claims)
            .filter_map(|f| match f {
                Fact::Claim(o) if o.workload == workload => Some(o.facts.clone()),
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
        self.triggers([old.as_ref(), fact.as_ref()])
    }

    /// Replaces every object of `kind` (a fresh list) and says what the changes ask for.
    pub fn replace(&mut self, kind: Kind, objects: BTreeMap<Key, Fact>) -> BTreeSet<Trigger> {
        let before = self.facts.insert(kind, objects).unwrap_or_default();
        self.synced.insert(kind);
        self.errors.remove(&kind);
        self.rebuild(kind);
        let now = self.facts.get(&kind).cloned().unwrap_or_default();
        let keys: BTreeSet<&Key> = before.keys().chain(now.keys()).collect();
        keys.into_iter()
            .filter(|k| before.get(*k) != now.get(*k))
            .flat_map(|k| self.triggers([before.get(k), now.get(k)]))
            .collect()
    }

    fn triggers(&self, facts: [Option<&Fact>; 2]) -> BTreeSet<Trigger> {
        facts
            .into_iter()
            .flatten()
            .filter_map(|f| match f {
                Fact::Node(_) => Some(Trigger::Member),
                Fact::Pod(o) => Some(Trigger::Workload(o.workload.clone())),
                Fact::Claim(o) => Some(Trigger::Workload(o.workload.clone())),
                Fact::Volume(v) => {
                    let claim = v.claim.as_ref()?;
                    match self.facts.get(&Kind::Claims)?.get(claim)? {
                        Fact::Claim(o) => Some(Trigger::Workload(o.workload.clone())),
                        _ => None,
                    }
                }
                Fact::Class(_) => None,
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
    fn with_member<R>(&self, cluster: &str, f: impl FnOnce(&mut MemberTopology) -> R) -> R {
        let mut m = self.members.write().unwrap_or_else(|e| e.into_inner());
        f(m.entry(cluster.to_string()).or_default())
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

/// The projection of a Pod the operator placed (`None` for one of no workload).
pub fn pod_fact(p: &Pod) -> Option<(Key, Fact)> {
    Some((
        (p.namespace().unwrap_or_default(), p.name_any()),
        Fact::Pod(Owned {
            workload: workload_label(p)?,
            facts: PodFacts {
                name: p.name_any(),
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
            },
        }),
    ))
}

/// The projection of a claim the operator placed (`None` for one of no workload).
pub fn claim_fact(c: &PersistentVolumeClaim) -> Option<(Key, Fact)> {
    let spec = c.spec.as_ref();
    Some((
        (c.namespace().unwrap_or_default(), c.name_any()),
        Fact::Claim(Owned {
            workload: workload_label(c)?,
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
                    index.with_member(&cluster, |m| m.replace(kind, objects))
                }
                Ok(watcher::Event::Apply(o)) => {
                    let key = (o.namespace().unwrap_or_default(), o.name_any());
                    let fact = project(&o).map(|(_, f)| f);
                    index.with_member(&cluster, |m| m.apply(kind, key, fact))
                }
                Ok(watcher::Event::Delete(o)) => {
                    let key = (o.namespace().unwrap_or_default(), o.name_any());
                    index.with_member(&cluster, |m| m.apply(kind, key, None))
                }
                Err(e) => {
                    index.with_member(&cluster, |m| {
                        if !m.synced.contains(&kind) {
                            m.errors.insert(kind, e.to_string());
                        }
                    });
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
            managed,
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

    fn claim(name: &str, volume: Option<&str>) -> Fact {
        Fact::Claim(Owned {
            workload: "ns/store".into(),
            facts: ClaimFacts {
                name: name.into(),
                volume: volume.map(str::to_string),
                storage_class: Some("standard".into()),
            },
        })
    }

    #[test]
    fn only_changes_that_matter_trigger_and_the_topology_follows_the_nodes() {
        let mut m = MemberTopology::default();
        assert!(!m.nodes_synced());
        let listed = BTreeMap::from([(key("", "a"), node("a", "eu-central-2"))]);
        assert_eq!(
            m.replace(Kind::Nodes, listed.clone()),
            BTreeSet::from([Trigger::Member])
        );
        assert!(m.nodes_synced() && !m.synced());
        assert_eq!(m.topology.len(), 1);
        // the same list again (a relist after a watch restart): nothing changed
        assert!(m.replace(Kind::Nodes, listed).is_empty());
        // a heartbeat: the same projection
        assert!(
            m.apply(Kind::Nodes, key("", "a"), Some(node("a", "eu-central-2")))
                .is_empty()
        );
        // a label flap: the member is probed again
        assert_eq!(
            m.apply(Kind::Nodes, key("", "a"), Some(node("a", "eu-central-1"))),
            BTreeSet::from([Trigger::Member])
        );
        assert_eq!(
            m.topology.node("a").and_then(|n| n.region_label()),
            Some("eu-central-1")
        );
        assert_eq!(
            m.apply(Kind::Nodes, key("", "a"), None),
            BTreeSet::from([Trigger::Member])
        );
        assert!(m.topology.is_empty());
    }

    #[test]
    fn a_volume_triggers_the_workload_of_its_claim_and_copies_are_per_workload() {
        let mut m = MemberTopology::default();
        m.apply(
            Kind::Claims,
            key("ns", "data-0"),
            Some(claim("data-0", None)),
        );
        let pv = |claim_ns: &str| {
            Fact::Volume(Volume {
                facts: VolumeFacts {
                    storage_class: Some("standard".into()),
                    node_affinity: vec![],
                },
                claim: Some(key(claim_ns, "data-0")),
            })
        };
        assert_eq!(
            m.apply(Kind::Volumes, key("", "pv-1"), Some(pv("ns"))),
            BTreeSet::from([Trigger::Workload("ns/store".into())])
        );
        assert!(m.volumes.contains_key("pv-1"));
        // a volume of someone else's claim triggers nobody
        assert!(
            m.apply(Kind::Volumes, key("", "pv-2"), Some(pv("other")))
                .is_empty()
        );
        assert_eq!(
            m.apply(
                Kind::Claims,
                key("ns", "data-0"),
                Some(claim("data-0", Some("pv-1")))
            ),
            BTreeSet::from([Trigger::Workload("ns/store".into())])
        );
        m.apply(
            Kind::Pods,
            key("ns", "store-0"),
            Some(Fact::Pod(Owned {
                workload: "ns/store".into(),
                facts: PodFacts {
                    name: "store-0".into(),
                    node: Some("a".into()),
                },
            })),
        );
        m.apply(
            Kind::Pods,
            key("ns", "other-0"),
            Some(Fact::Pod(Owned {
                workload: "ns/other".into(),
                facts: PodFacts {
                    name: "other-0".into(),
                    node: None,
                },
            })),
        );
        m.apply(
            Kind::Pods,
            key("ns2", "store-0"),
            Some(Fact::Pod(Owned {
                workload: "ns2/store".into(),
                facts: PodFacts {
                    name: "store-0".into(),
                    node: None,
                },
            })),
        );
        let (pods, claims) = m.copy_of("ns", "store");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].node.as_deref(), Some("a"));
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].volume.as_deref(), Some("pv-1"));
        assert_eq!(m.copy_of("ns2", "store").0.len(), 1);
        assert!(m.copy_of("n", "store").0.is_empty());
    }
}
