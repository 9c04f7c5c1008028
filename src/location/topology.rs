//! A member's nodes as location evidence (pure).
//!
//! A node's region is its `topology.kubernetes.io/region` label. A node without one but with a
//! `topology.kubernetes.io/zone` label is placed in the region that the member's other nodes of
//! that zone carry (one region; several are a contradiction, and no region is unknown): zones
//! are placed in regions through the member's nodes, never by guessing from a zone's name.
//!
//! A node's `spec.providerID` names its zone on AWS (`aws:///eu-central-2a/i-...`) and on GCE
//! (`gce://project/europe-west6-a/instance`); [`provider_location`] reads it, and
//! [`identity_mismatch`] says when it contradicts the node's labels.

use std::collections::{BTreeMap, BTreeSet};

/// The well-known node label carrying the node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The well-known node label carrying the node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The deprecated region label some volumes' node affinity still names.
pub const BETA_REGION_LABEL: &str = "failure-domain.beta.kubernetes.io/region";

/// One node of a member, as location evidence sees it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// The node's name.
    pub name: String,
    /// All its labels.
    pub labels: BTreeMap<String, String>,
    /// Its `spec.providerID`, if set.
    pub provider_id: Option<String>,
}

impl NodeFacts {
    /// Its region label, if any.
    pub fn region_label(&self) -> Option<&str> {
        self.labels.get(REGION_LABEL).map(String::as_str)
    }

    /// Its zone label, if any.
    pub fn zone_label(&self) -> Option<&str> {
        self.labels.get(ZONE_LABEL).map(String::as_str)
    }
}

/// Where a node is, as far as the member's nodes tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeRegion {
    /// Its region label names it.
    Labelled(String),
    /// It has no region label; its zone is in this region on the member's other nodes.
    ByZone {
        /// The region.
        region: String,
        /// The node's zone.
        zone: String,
    },
    /// It has neither a region label nor a zone placed in one region.
    Unknown(String),
}

impl NodeRegion {
    /// The region, when known.
    pub fn region(&self) -> Option<&str> {
        match self {
            NodeRegion::Labelled(r) | NodeRegion::ByZone { region: r, .. } => Some(r),
            NodeRegion::Unknown(_) => None,
        }
    }
}

/// Whether a label key names a zone: `topology.kubernetes.io/zone`, the deprecated
/// `failure-domain.beta.kubernetes.io/zone`, or a CSI driver's own zone key such as
/// `topology.ebs.csi.aws.com/zone`, `topology.gke.io/zone` or `topology.disk.csi.azure.com/zone`.
pub fn is_zone_key(key: &str) -> bool {
    key.rsplit_once('/').is_some_and(|(_, name)| name == "zone")
}

/// Whether a label key names a region.
pub fn is_region_key(key: &str) -> bool {
    key == REGION_LABEL || key == BETA_REGION_LABEL
}

/// A member's nodes, indexed for location evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    nodes: BTreeMap<String, NodeFacts>,
    /// Zone value -> the regions the member's nodes of that zone carry in their region label.
    zones: BTreeMap<String, BTreeSet<String>>,
}

impl Topology {
    /// Indexes the nodes (any order; the last of two nodes with one name wins).
    pub fn new(nodes: impl IntoIterator<Item = NodeFacts>) -> Self {
        let nodes: BTreeMap<String, NodeFacts> =
            nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        let mut zones: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for n in nodes.values() {
            if let (Some(zone), Some(region)) = (n.zone_label(), n.region_label()) {
                zones
                    .entry(zone.to_string())
                    .or_default()
                    .insert(region.to_string());
            }
        }
        Self { nodes, zones }
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeFacts> {
        self.nodes.values()
    }

    /// One node.
    pub fn node(&self, name: &str) -> Option<&NodeFacts> {
        self.nodes.get(name)
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The region a zone is in on this member: the one region its labelled nodes carry.
    pub fn zone_region(&self, zone: &str) -> Result<&str, String> {
        match self.zones.get(zone) {
            Some(regions) if regions.len() == 1 => Ok(regions
                .iter()
                .next()
                .map(String::as_str)
                .unwrap_or_default()),
            Some(regions) => Err(format!(
                "zone {zone} is in several regions on the member's nodes ({})",
                regions.iter().cloned().collect::<Vec<_>>().join(", ")
            )),
            None => Err(format!(
                "no node of the member carries zone {zone} with a region label"
            )),
        }
    }

    /// Where a node is.
    pub fn region_of(&self, node: &NodeFacts) -> NodeRegion {
        if let Some(r) = node.region_label() {
            return NodeRegion::Labelled(r.to_string());
        }
        match node.zone_label() {
            None => NodeRegion::Unknown("no region label".into()),
            Some(zone) => match self.zone_region(zone) {
                Ok(region) => NodeRegion::ByZone {
                    region: region.to_string(),
                    zone: zone.to_string(),
                },
                Err(why) => NodeRegion::Unknown(format!("no region label, and {why}")),
            },
        }
    }
}

/// The cloud a node's `spec.providerID` names, with the zone and region it encodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderLocation {
    /// `aws`, `gcp` or `azure` (the catalogue's provider names).
    pub provider: &'static str,
    /// The zone the provider ID names (AWS, GCE).
    pub zone: Option<String>,
}

/// Reads a node's provider ID: `aws:///<zone>/<instance>` (or `aws://<zone>/<instance>`),
/// `gce://<project>/<zone>/<instance>`, `azure:///subscriptions/...` (no zone).
pub fn provider_location(provider_id: &str) -> Option<ProviderLocation> {
    let (scheme, rest) = provider_id.split_once("://")?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match scheme {
        "aws" => Some(ProviderLocation {
            provider: "aws",
            // <zone>/<instance>; a bare instance ID names no zone
            zone: (parts.len() == 2).then(|| parts[0].to_string()),
        }),
        "gce" => Some(ProviderLocation {
            provider: "gcp",
            zone: (parts.len() == 3).then(|| parts[1].to_string()),
        }),
        "azure" => Some(ProviderLocation {
            provider: "azure",
            zone: None,
        }),
        _ => None,
    }
}

/// The region a provider ID's zone is in, when the provider's naming makes it certain: a GCE
/// zone is its region, `-` and letters (`europe-west6-a`); an AWS zone is the longest region of
/// the catalogue that it extends by one letter (`eu-central-2a`) or by `-` and more (local and
/// Wavelength zones, `us-east-1-bos-1a`), else, for a zone ending in a digit and a letter, the
/// zone without that letter.
pub fn zone_region(
    provider: &str,
    zone: &str,
    catalogue: &super::catalogue::Catalogue,
) -> Option<String> {
    match provider {
        "gcp" => {
            let (region, suffix) = zone.rsplit_once('-')?;
            (!suffix.is_empty() && suffix.chars().all(|c| c.is_ascii_lowercase()))
                .then(|| region.to_string())
        }
        "aws" => {
            let listed = catalogue
                .regions_of("aws")
                .filter(|r| {
                    zone.strip_prefix(*r).is_some_and(|rest| {
                        (rest.len() == 1 && rest.chars().all(|c| c.is_ascii_lowercase()))
                            || (rest.len() > 1 && rest.starts_with('-'))
                    })
                })
                .max_by_key(|r| r.len());
            if let Some(r) = listed {
                return Some(r.to_string());
            }
            let mut chars = zone.chars().rev();
            match (chars.next(), chars.next()) {
                (Some(l), Some(d)) if l.is_ascii_lowercase() && d.is_ascii_digit() => {
                    Some(zone[..zone.len() - 1].to_string())
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Why a node's provider ID contradicts its zone or region labels, or `None` when it agrees
/// (or encodes no zone).
pub fn identity_mismatch(
    node: &NodeFacts,
    catalogue: &super::catalogue::Catalogue,
) -> Option<String> {
    let id = node.provider_id.as_deref()?;
    let loc = provider_location(id)?;
    let zone = loc.zone.as_deref()?;
    if let Some(label) = node.zone_label()
        && label != zone
    {
        return Some(format!(
            "{}: its providerID {id} names zone {zone}, its label zone {label}",
            node.name
        ));
    }
    if let Some(region) = node.region_label() {
        match zone_region(loc.provider, zone, catalogue) {
            Some(r) if r == region => {}
            Some(r) => {
                return Some(format!(
                    "{}: its providerID {id} names zone {zone}, which is in {r}, not in its label region {region}",
                    node.name
                ));
            }
            None => {
                return Some(format!(
                    "{}: its providerID {id} names zone {zone}, which cannot be placed in its label region {region}",
                    node.name
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            provider_id: None,
        }
    }

    #[test]
    fn a_zone_is_placed_in_its_region_through_the_members_nodes() {
        let t = Topology::new([
            node(
                "a",
                &[(REGION_LABEL, "eu-central-2"), (ZONE_LABEL, "zrh-a")],
            ),
            node("b", &[(ZONE_LABEL, "zrh-a")]),
            node("c", &[(ZONE_LABEL, "zrh-b")]),
            node("d", &[]),
        ]);
        assert_eq!(
            t.region_of(t.node("a").unwrap()),
            NodeRegion::Labelled("eu-central-2".into())
        );
        assert_eq!(
            t.region_of(t.node("b").unwrap()),
            NodeRegion::ByZone {
                region: "eu-central-2".into(),
                zone: "zrh-a".into()
            }
        );
        // the name "zrh-b" says nothing: no node places it
        assert_eq!(
            t.region_of(t.node("c").unwrap()),
            NodeRegion::Unknown(
                "no region label, and no node of the member carries zone zrh-b with a region label"
                    .into()
            )
        );
        assert_eq!(
            t.region_of(t.node("d").unwrap()),
            NodeRegion::Unknown("no region label".into())
        );
    }

    #[test]
    fn a_zone_in_two_regions_places_nothing() {
        let t = Topology::new([
            node("a", &[(REGION_LABEL, "eu-central-2"), (ZONE_LABEL, "z")]),
            node("b", &[(REGION_LABEL, "eu-central-1"), (ZONE_LABEL, "z")]),
        ]);
        assert_eq!(
            t.zone_region("z"),
            Err(
                "zone z is in several regions on the member's nodes (eu-central-1, eu-central-2)"
                    .into()
            )
        );
    }

    #[test]
    fn zone_keys_of_csi_drivers_are_zone_keys() {
        for k in [
            ZONE_LABEL,
            "failure-domain.beta.kubernetes.io/zone",
            "topology.ebs.csi.aws.com/zone",
            "topology.gke.io/zone",
            "topology.disk.csi.azure.com/zone",
        ] {
            assert!(is_zone_key(k), "{k}");
        }
        for k in ["zone", "kubernetes.io/hostname", REGION_LABEL, "x/zones"] {
            assert!(!is_zone_key(k), "{k}");
        }
    }

    #[test]
    fn provider_ids_name_their_zone() {
        assert_eq!(
            provider_location("aws:///eu-central-2a/i-0123456789abcdef0"),
            Some(ProviderLocation {
                provider: "aws",
                zone: Some("eu-central-2a".into())
            })
        );
        assert_eq!(
            provider_location("aws://eu-central-2b/i-0123"),
            Some(ProviderLocation {
                provider: "aws",
                zone: Some("eu-central-2b".into())
            })
        );
        assert_eq!(
            provider_location("gce://my-project/europe-west6-a/gke-pool-1-abcd"),
            Some(ProviderLocation {
                provider: "gcp",
                zone: Some("europe-west6-a".into())
            })
        );
        assert_eq!(
            provider_location("azure:///subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v")
                .map(|l| (l.provider, l.zone)),
            Some(("azure", None))
        );
        assert_eq!(provider_location("kind://docker/kind/kind-worker"), None);
        assert_eq!(provider_location("i-0123"), None);
    }

    #[test]
    fn a_provider_id_must_agree_with_the_labels() {
        let cat = crate::location::catalogue::Catalogue::parse(
            "provider,region,country,place\naws,eu-central-1,DE,Frankfurt\naws,eu-central-2,CH,Zurich\naws,us-east-1,US,Virginia\n",
        )
        .unwrap();
        let mismatch = |n: &NodeFacts| identity_mismatch(n, &cat);
        let mut n = node(
            "ip-10-0-0-1",
            &[
                (REGION_LABEL, "eu-central-2"),
                (ZONE_LABEL, "eu-central-2a"),
            ],
        );
        n.provider_id = Some("aws:///eu-central-2a/i-1".into());
        assert_eq!(mismatch(&n), None);
        n.provider_id = Some("aws:///eu-central-1a/i-1".into());
        assert_eq!(
            mismatch(&n).unwrap(),
            "ip-10-0-0-1: its providerID aws:///eu-central-1a/i-1 names zone eu-central-1a, its label zone eu-central-2a"
        );
        // no zone label: the region label is checked
        n.labels.remove(ZONE_LABEL);
        assert_eq!(
            mismatch(&n).unwrap(),
            "ip-10-0-0-1: its providerID aws:///eu-central-1a/i-1 names zone eu-central-1a, which is in eu-central-1, not in its label region eu-central-2"
        );
        n.provider_id = Some("aws:///eu-central-2c/i-1".into());
        assert_eq!(mismatch(&n), None);
        // eu-central-2 is no prefix trick for eu-central-22a
        n.provider_id = Some("aws:///eu-central-22a/i-1".into());
        assert!(mismatch(&n).is_some());
        // nor is a made-up region that prefixes the real one
        n.labels.insert(REGION_LABEL.into(), "eu".into());
        n.provider_id = Some("aws:///eu-central-1a/i-1".into());
        assert!(mismatch(&n).unwrap().contains("which is in eu-central-1"));
        // local zones
        n.labels.insert(REGION_LABEL.into(), "us-east-1".into());
        n.provider_id = Some("aws:///us-east-1-bos-1a/i-1".into());
        assert_eq!(mismatch(&n), None);
        // a region the catalogue does not have yet: by the naming rule
        n.labels.insert(REGION_LABEL.into(), "eu-north-9".into());
        n.provider_id = Some("aws:///eu-north-9b/i-1".into());
        assert_eq!(mismatch(&n), None);
        // GCE
        let mut g = node(
            "gke-1",
            &[
                (REGION_LABEL, "europe-west6"),
                (ZONE_LABEL, "europe-west6-b"),
            ],
        );
        g.provider_id = Some("gce://p/europe-west6-b/gke-1".into());
        assert_eq!(mismatch(&g), None);
        g.labels.remove(ZONE_LABEL);
        g.provider_id = Some("gce://p/europe-west3-b/gke-1".into());
        assert!(mismatch(&g).is_some());
        g.labels.insert(REGION_LABEL.into(), "europe".into());
        g.provider_id = Some("gce://p/europe-west6-b/gke-1".into());
        assert!(
            mismatch(&g).is_some(),
            "a prefix of the region is not the region"
        );
        // nothing to compare
        g.provider_id = Some("azure:///subscriptions/x".into());
        assert_eq!(mismatch(&g), None);
        g.provider_id = None;
        assert_eq!(mismatch(&g), None);
    }
}
