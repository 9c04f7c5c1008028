//! Where one workload's copy on a member is (pure): the regions of the nodes its Pods run on,
//! and of its volumes, located through the member's nodes.
//!
//! A bound volume is where the nodes its PersistentVolume's node affinity matches are (any
//! keys, any operators; [`super::affinity::locate`]), plus the regions and zones the affinity
//! names. Every place counts: one place outside the attested regions makes it **outside**.
//! A volume without node affinity (network storage), or whose affinity matches no node and names
//! no known region or zone, is **unverifiable** - unless its StorageClass is one the member vouches
//! for (`spec.attestation.vouchedStorageClasses`), which makes it **vouched**: inside on the
//! member's word, and said so. A claim not bound yet holds no data; only a StorageClass whose
//! `allowedTopologies` reach outside the attested regions is reported for it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorTerm, TopologySelectorTerm};

use super::affinity::{locate, topology_terms};
use super::topology::{NodeRegion, Topology};
use crate::api::resident_workload::LocationEvidence;

/// The most entries kept in each list of [`LocationEvidence`].
pub const MAX_ENTRIES: usize = 20;

/// A Pod of the copy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PodFacts {
    /// Its name.
    pub name: String,
    /// The node it is bound to, once scheduled.
    pub node: Option<String>,
    /// The claims it mounts.
    pub claims: Vec<String>,
    /// The network volumes it mounts directly (`nfs volume data`): nothing places them.
    pub inline: Vec<String>,
}

/// A PersistentVolumeClaim of the copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimFacts {
    /// Its name.
    pub name: String,
    /// The PersistentVolume it is bound to.
    pub volume: Option<String>,
    /// Its StorageClass.
    pub storage_class: Option<String>,
}

/// A PersistentVolume of the member.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeFacts {
    /// Its StorageClass.
    pub storage_class: Option<String>,
    /// The terms of its required node affinity (empty: it has none).
    pub node_affinity: Vec<NodeSelectorTerm>,
}

/// A StorageClass of the member.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassFacts {
    /// Its `allowedTopologies` (empty: anywhere).
    pub allowed_topologies: Vec<TopologySelectorTerm>,
}

/// What the evidence of a copy is judged against.
pub struct Member<'a> {
    /// The member's nodes.
    pub topology: &'a Topology,
    /// The regions it attests.
    pub attested: &'a [String],
    /// The StorageClasses it vouches for.
    pub vouched: &'a [String],
    /// Its PersistentVolumes, by name.
    pub volumes: &'a BTreeMap<String, VolumeFacts>,
    /// Its StorageClasses, by name.
    pub classes: &'a BTreeMap<String, ClassFacts>,
}

/// Where a volume is, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeVerdict {
    /// Every place it can be is in an attested region.
    Inside(BTreeSet<String>),
    /// Some place it can be is outside the attested regions (those regions).
    Outside(BTreeSet<String>),
    /// Its StorageClass is one the member vouches for, and nothing places it elsewhere.
    Vouched(String),
    /// Nothing proves where it is (why).
    Unverifiable(String),
}

impl Member<'_> {
    /// Judges one PersistentVolume.
    pub fn volume(&self, v: &VolumeFacts) -> VolumeVerdict {
        let vouched = v
            .storage_class
            .as_ref()
            .filter(|c| self.vouched.contains(c));
        let located = locate(self.topology, &v.node_affinity);
        let outside: BTreeSet<String> = located
            .regions
            .iter()
            .filter(|r| !self.attested.contains(r))
            .cloned()
            .collect();
        if !outside.is_empty() {
            return VolumeVerdict::Outside(outside);
        }
        match (located.unlocated, vouched) {
            (None, _) => VolumeVerdict::Inside(located.regions),
            (Some(_), Some(class)) => VolumeVerdict::Vouched(class.clone()),
            (Some(_), None) if v.node_affinity.is_empty() => VolumeVerdict::Unverifiable(
                "has no node affinity (network storage?), so nothing places it: if the member vouches for where its StorageClass keeps volumes, list the class in spec.attestation.vouchedStorageClasses".into(),
            ),
            (Some(why), None) => VolumeVerdict::Unverifiable(why),
        }
    }
}

fn finish(list: &mut Vec<String>) {
    list.sort();
    list.dedup();
    list.truncate(MAX_ENTRIES);
}

/// The location evidence of a copy: its Pods and claims on `member`.
pub fn evidence(member: &Member, pods: &[PodFacts], claims: &[ClaimFacts]) -> LocationEvidence {
    let mut ev = LocationEvidence::default();
    let attested = |r: &str| member.attested.iter().any(|a| a == r);
    for p in pods {
        for v in &p.inline {
            ev.unverifiable.push(format!(
                "Pod {} mounts the {v} directly: nothing places where its data is (use a claim)",
                p.name
            ));
        }
        let Some(node) = &p.node else { continue };
        let Some(n) = member.topology.node(node) else {
            ev.unverifiable.push(format!(
                "Pod {} on node {node}, which the member does not list",
                p.name
            ));
            continue;
        };
        match member.topology.region_of(n) {
            NodeRegion::Labelled(region) | NodeRegion::ByZone { region, .. } => {
                if !attested(&region) {
                    ev.outside
                        .push(format!("Pod {} on node {node} (region {region})", p.name));
                }
                ev.node_regions.push(region);
            }
            NodeRegion::Unknown(why) => ev
                .unverifiable
                .push(format!("Pod {} on node {node} ({why})", p.name)),
        }
    }
    for c in claims {
        let Some(volume) = &c.volume else {
            // not bound: no data yet; only a class that may put it outside is worth saying
            let Some(class) = c
                .storage_class
                .as_ref()
                .and_then(|s| member.classes.get(s).map(|f| (s, f)))
                .filter(|(_, f)| !f.allowed_topologies.is_empty())
            else {
                continue;
            };
            let located = locate(
                member.topology,
                &topology_terms(&class.1.allowed_topologies),
            );
            for r in located.regions.iter().filter(|r| !attested(r)) {
                ev.outside.push(format!(
                    "PersistentVolumeClaim {} (not bound yet): StorageClass {} allows region {r}",
                    c.name, class.0
                ));
            }
            continue;
        };
        let Some(v) = member.volumes.get(volume) else {
            ev.unverifiable.push(format!(
                "PersistentVolume {volume} (claim {}) is not listed on the member",
                c.name
            ));
            continue;
        };
        match member.volume(v) {
            VolumeVerdict::Inside(regions) => ev.volume_regions.extend(regions),
            VolumeVerdict::Outside(regions) => {
                for r in &regions {
                    ev.outside.push(
                        format!("PersistentVolume {volume} (claim {}) in region {r}", c.name),
                    );
                }
                ev.volume_regions.extend(regions);
            }
            VolumeVerdict::Vouched(class) => ev.vouched.push(
                format!(
                    "PersistentVolume {volume} (claim {}): StorageClass {class}, vouched for by the member",
                    c.name
                ),
            ),
            VolumeVerdict::Unverifiable(why) => ev.unverifiable.push(
                format!("PersistentVolume {volume} (claim {}) {why}", c.name),
            ),
        }
    }
    for list in [
        &mut ev.node_regions,
        &mut ev.volume_regions,
        &mut ev.outside,
        &mut ev.unverifiable,
        &mut ev.vouched,
    ] {
        finish(list);
    }
    ev
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::location::topology::{NodeFacts, REGION_LABEL, ZONE_LABEL};
    use k8s_openapi::api::core::v1::NodeSelectorRequirement;

    pub(crate) fn node(name: &str, region: &str, zone: &str) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: [
                ("kubernetes.io/hostname", name),
                (REGION_LABEL, region),
                (ZONE_LABEL, zone),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            provider_id: None,
        }
    }

    pub(crate) fn pinned(key: &str, values: &[&str]) -> Vec<NodeSelectorTerm> {
        vec![NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: "In".into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_fields: None,
        }]
    }

    fn volume(class: &str, affinity: Vec<NodeSelectorTerm>) -> VolumeFacts {
        VolumeFacts {
            storage_class: Some(class.into()),
            node_affinity: affinity,
        }
    }

    fn pod(name: &str, node: Option<&str>) -> PodFacts {
        PodFacts {
            name: name.into(),
            node: node.map(str::to_string),
            ..Default::default()
        }
    }

    fn claim(name: &str, volume: Option<&str>, class: &str) -> ClaimFacts {
        ClaimFacts {
            name: name.into(),
            volume: volume.map(str::to_string),
            storage_class: Some(class.into()),
        }
    }

    #[test]
    fn pinned_by_csi_zone_zone_or_hostname_inside_elsewhere_outside_nfs_unverifiable() {
        let mut a = node("zrh-a", "eu-central-2", "eu-central-2a");
        a.labels.insert(
            "topology.ebs.csi.aws.com/zone".into(),
            "eu-central-2a".into(),
        );
        let topology = Topology::new([
            a,
            node("zrh-b", "eu-central-2", "eu-central-2b"),
            node("fra-a", "eu-central-1", "eu-central-1a"),
        ]);
        let volumes = BTreeMap::from([
            (
                "csi".to_string(),
                volume(
                    "ebs",
                    pinned("topology.ebs.csi.aws.com/zone", &["eu-central-2a"]),
                ),
            ),
            (
                "zone".to_string(),
                volume("ebs", pinned(ZONE_LABEL, &["eu-central-2b"])),
            ),
            (
                "host".to_string(),
                volume("local", pinned("kubernetes.io/hostname", &["zrh-b"])),
            ),
            (
                "frankfurt".to_string(),
                volume("local", pinned("kubernetes.io/hostname", &["fra-a"])),
            ),
            ("nfs".to_string(), volume("nfs", vec![])),
            ("nfs-vouched".to_string(), volume("nfs-zurich", vec![])),
        ]);
        let classes = BTreeMap::new();
        let attested = ["eu-central-2".to_string()];
        let vouched = ["nfs-zurich".to_string()];
        let member = Member {
            topology: &topology,
            attested: &attested,
            vouched: &vouched,
            volumes: &volumes,
            classes: &classes,
        };
        let claims: Vec<ClaimFacts> = volumes
            .keys()
            .map(|v| claim(&format!("data-{v}"), Some(v), "x"))
            .collect();
        let ev = evidence(
            &member,
            &[pod("p-0", Some("zrh-a")), pod("p-1", None)],
            &claims,
        );
        assert_eq!(ev.node_regions, ["eu-central-2"]);
        assert_eq!(ev.volume_regions, ["eu-central-1", "eu-central-2"]);
        assert_eq!(
            ev.outside,
            ["PersistentVolume frankfurt (claim data-frankfurt) in region eu-central-1"]
        );
        assert_eq!(ev.unverifiable.len(), 1, "{:?}", ev.unverifiable);
        assert!(
            ev.unverifiable[0]
                .starts_with("PersistentVolume nfs (claim data-nfs) has no node affinity"),
            "{}",
            ev.unverifiable[0]
        );
        assert_eq!(
            ev.vouched,
            [
                "PersistentVolume nfs-vouched (claim data-nfs-vouched): StorageClass nfs-zurich, vouched for by the member"
            ]
        );
    }

    #[test]
    fn a_vouched_class_does_not_hide_a_volume_pinned_outside() {
        let topology = Topology::new([node("fra-a", "eu-central-1", "eu-central-1a")]);
        let attested = ["eu-central-2".to_string()];
        let vouched = ["local".to_string()];
        let (volumes, classes) = (BTreeMap::new(), BTreeMap::new());
        let member = Member {
            topology: &topology,
            attested: &attested,
            vouched: &vouched,
            volumes: &volumes,
            classes: &classes,
        };
        assert_eq!(
            member.volume(&volume(
                "local",
                pinned("kubernetes.io/hostname", &["fra-a"])
            )),
            VolumeVerdict::Outside(BTreeSet::from(["eu-central-1".to_string()]))
        );
        assert_eq!(
            member.volume(&volume(
                "local",
                pinned("kubernetes.io/hostname", &["gone"])
            )),
            VolumeVerdict::Vouched("local".into())
        );
    }

    #[test]
    fn pods_on_unknown_nodes_and_unbound_claims() {
        use k8s_openapi::api::core::v1::TopologySelectorLabelRequirement;
        let topology = Topology::new([
            node("zrh-a", "eu-central-2", "eu-central-2a"),
            node("fra-a", "eu-central-1", "eu-central-1a"),
        ]);
        let attested = ["eu-central-2".to_string()];
        let volumes = BTreeMap::new();
        let classes = BTreeMap::from([(
            "anywhere".to_string(),
            ClassFacts {
                allowed_topologies: vec![TopologySelectorTerm {
                    match_label_expressions: Some(vec![TopologySelectorLabelRequirement {
                        key: REGION_LABEL.into(),
                        values: vec!["eu-central-2".into(), "eu-central-1".into()],
                    }]),
                }],
            },
        )]);
        let member = Member {
            topology: &topology,
            attested: &attested,
            vouched: &[],
            volumes: &volumes,
            classes: &classes,
        };
        let ev = evidence(
            &member,
            &[pod("p", Some("gone")), pod("q", Some("fra-a"))],
            &[
                claim("pending", None, "anywhere"),
                claim("pending-default", None, "standard"),
                claim("lost", Some("pv-lost"), "standard"),
            ],
        );
        assert_eq!(
            ev.outside,
            [
                "PersistentVolumeClaim pending (not bound yet): StorageClass anywhere allows region eu-central-1",
                "Pod q on node fra-a (region eu-central-1)",
            ]
        );
        assert_eq!(
            ev.unverifiable,
            [
                "PersistentVolume pv-lost (claim lost) is not listed on the member",
                "Pod p on node gone, which the member does not list",
            ]
        );
        // a network volume mounted straight into a Pod
        let mut direct = pod("r", Some("zrh-a"));
        direct.inline = vec!["nfs volume data".into()];
        let ev = evidence(&member, &[direct], &[]);
        assert_eq!(
            ev.unverifiable,
            [
                "Pod r mounts the nfs volume data directly: nothing places where its data is (use a claim)"
            ]
        );
    }
}
