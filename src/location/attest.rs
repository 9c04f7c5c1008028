//! Location attestation (pure): a member's location is verified when
//!
//! - no attested region contradicts the country the member declares (the region catalogue,
//!   [`super::catalogue`]; a region no provider lists is accepted as self-declared),
//! - it has nodes, and every node is in an attested region (its region label, or its zone
//!   placed in a region through the member's other nodes), and
//! - no node's `spec.providerID` names another zone or region than its labels.
//!
//! Fails closed: anything else leaves the member unverified, and an unverified member receives
//! no new data.

use std::collections::BTreeSet;

use super::catalogue::{Catalogue, RegionFinding, RegionVerdict};
use super::topology::{NodeRegion, Topology, identity_mismatch, provider_location};

use std::fmt::Write;

/// The most unverified node names kept in [`Attestation::unverified_nodes`].
const MAX_UNVERIFIED_NODES: usize = 20;
/// The most unverified nodes named in [`Attestation::message`].
const MAX_NODES_IN_MESSAGE: usize = 5;

/// Why a member is (not) verified: the `LocationVerified` condition's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Every node is in an attested region.
    RegionsMatch,
    /// An attested region is, by the region catalogue, in another country than the declared one.
    RegionInAnotherCountry,
    /// The member's nodes are at a cloud provider that has no attested region of that name.
    RegionNotListed,
    /// The member has no nodes.
    NoNodes,
    /// A node is outside the attested regions, or its region is unknown.
    NodeOutsideAttestedRegions,
    /// A node's provider ID names another zone or region than its labels.
    NodeIdentityMismatch,
}

impl Reason {
    /// The CamelCase reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RegionsMatch => "RegionsMatch",
            Reason::RegionInAnotherCountry => "RegionInAnotherCountry",
            Reason::RegionNotListed => "RegionNotListed",
            Reason::NoNodes => "NoNodes",
            Reason::NodeOutsideAttestedRegions => "NodeOutsideAttestedRegions",
            Reason::NodeIdentityMismatch => "NodeIdentityMismatch",
        }
    }
}

/// The outcome of attesting a member's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Whether the location is verified.
    pub verified: bool,
    /// The first problem found (in the order of [`Reason`]'s variants), or `RegionsMatch`.
    pub reason: Reason,
    /// A human-readable explanation naming every problem.
    pub message: String,
    /// The distinct regions the nodes are in, sorted.
    pub observed_regions: Vec<String>,
    /// Names of the nodes outside the attested regions or whose provider ID contradicts their
    /// labels, sorted, at most 20.
    pub unverified_nodes: Vec<String>,
    /// How many nodes are outside the attested regions (or of unknown region).
    pub unverified_count: usize,
    /// How many nodes the cluster has.
    pub node_count: usize,
    /// What the region catalogue says of each attested region, in the order given.
    pub regions: Vec<RegionFinding>,
}

/// The status entry of one attested region.
pub fn region_status(f: &RegionFinding) -> crate::api::member_cluster::AttestedRegion {
    use crate::api::member_cluster::{AttestedRegion, RegionSource};
    let (source, entries): (RegionSource, Vec<&super::catalogue::Entry>) = match &f.verdict {
        RegionVerdict::InCountry(e) => (RegionSource::Catalogue, vec![e]),
        RegionVerdict::OtherCountry(es) => (RegionSource::Catalogue, es.iter().collect()),
        RegionVerdict::SelfDeclared => (RegionSource::SelfDeclared, vec![]),
        RegionVerdict::NotListed(_) => (RegionSource::NotListed, vec![]),
    };
    AttestedRegion {
        name: f.region.clone(),
        source,
        listed_by: entries.iter().map(|e| e.describe()).collect(),
        country: entries.first().map(|e| e.country.clone()),
    }
}

/// Attests a member's location. The result does not depend on the order of `attested_regions`
/// or of the nodes.
pub fn attest(
    declared_country: &str,
    attested_regions: &[String],
    topology: &Topology,
    catalogue: &Catalogue,
) -> Attestation {
    let attested: BTreeSet<&str> = attested_regions.iter().map(String::as_str).collect();
    let providers: BTreeSet<&str> = topology
        .nodes()
        .filter_map(|n| n.provider_id.as_deref().and_then(provider_location))
        .map(|l| l.provider)
        .collect();
    let regions: Vec<RegionFinding> = attested
        .iter()
        .map(|r| catalogue.judge(r, declared_country, &providers))
        .collect();

    let placed: Vec<(&str, NodeRegion)> = topology
        .nodes()
        .map(|n| (n.name.as_str(), topology.region_of(n)))
        .collect();
    let observed_regions: Vec<String> = placed
        .iter()
        .filter_map(|(_, r)| r.region().map(str::to_string))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let outside: Vec<(&str, String)> = placed
        .iter()
        .filter_map(|(name, r)| match r {
            NodeRegion::Labelled(region) if !attested.contains(region.as_str()) => {
                Some((*name, format!("{name} ({region})")))
            }
            NodeRegion::ByZone { region, zone } if !attested.contains(region.as_str()) => {
                Some((*name, format!("{name} (zone {zone} in {region})")))
            }
            NodeRegion::Unknown(why) => Some((*name, format!("{name} ({why})"))),
            _ => None,
        })
        .collect();
    let mismatched: Vec<(&str, String)> = topology
        .nodes()
        .filter_map(|n| identity_mismatch(n, catalogue).map(|why| (n.name.as_str(), why)))
        .collect();

    let node_count = topology.len();
    let unverified_count = outside.len();
    let unverified_nodes: Vec<String> = outside
        .iter()
        .chain(&mismatched)
        .map(|(n, _)| n.to_string())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_UNVERIFIED_NODES)
        .collect();
    let attested_list = attested.iter().copied().collect::<Vec<_>>().join(", ");
    let attested_text = if attested_list.is_empty() {
        "(none)".to_string()
    } else {
        attested_list.clone()
    };
    let listed = |items: &[(&str, String)]| {
        let mut s = items
            .iter()
            .take(MAX_NODES_IN_MESSAGE)
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        if items.len() > MAX_NODES_IN_MESSAGE {
            s.push_str(&format!(
                " (and {} more)",
                items.len() - MAX_NODES_IN_MESSAGE
            ));
        }
        s
    };

    let mut problems: Vec<(Reason, String)> = Vec::new();
    for f in &regions {
        if let RegionVerdict::NotListed(providers) = &f.verdict {
            problems.push((
                Reason::RegionNotListed,
                format!(
                    "attested region {} is not a region of {}, where the member's nodes are (their providerIDs say so): attest the provider's region names",
                    f.region,
                    providers.join(" or ")
                ),
            ));
        }
        if let Some(c) = f.contradiction() {
            problems.push((
                Reason::RegionInAnotherCountry,
                format!(
                    "location.country is {declared_country}, but the region catalogue puts attested region {c}: correct attestation.nodeRegions or location.country"
                ),
            ));
        }
    }
    if node_count == 0 {
        problems.push((
            Reason::NoNodes,
            "the cluster has no nodes, so its location cannot be attested".to_string(),
        ));
    } else if unverified_count > 0 {
        let verb = if unverified_count == 1 { "is" } else { "are" };
        problems.push((
            Reason::NodeOutsideAttestedRegions,
            format!(
                "{unverified_count} of {node_count} nodes {verb} outside the attested regions {attested_text}: {}",
                listed(&outside)
            ),
        ));
    }
    if !mismatched.is_empty() {
        let (whose, verb) = if mismatched.len() == 1 {
            ("node's providerID contradicts", "its")
        } else {
            ("nodes' providerIDs contradict", "their")
        };
        problems.push((
            Reason::NodeIdentityMismatch,
            format!(
                "{} {whose} {verb} labels: {}",
                mismatched.len(),
                listed(&mismatched)
            ),
        ));
    }
    let self_declared: Vec<&str> = regions
        .iter()
        .filter(|f| f.verdict == RegionVerdict::SelfDeclared)
        .map(|f| f.region.as_str())
        .collect();

    let (verified, reason, mut message) = match problems.first() {
        None => (
            true,
            Reason::RegionsMatch,
            format!(
                "all {node_count} {} in the attested regions {attested_list}",
                if node_count == 1 {
                    "node is"
                } else {
                    "nodes are"
                }
            ),
        ),
        Some((reason, _)) => (
            false,
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    if !self_declared.is_empty() {
        let _ = write!(
            message,
            " (self-declared, no cloud provider lists: {}",
            self_declared.join(", ")
        );
        for r in &self_declared {
            if let Some(e) = catalogue.resembling(r) {
                let _ = write!(message, "; {r} resembles {}'s {}", e.provider, e.region);
            }
        }
        message.push(')');
    }

    Attestation {
        verified,
        reason,
        message,
        observed_regions,
        unverified_nodes,
        unverified_count,
        node_count,
        regions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::topology::{NodeFacts, REGION_LABEL, ZONE_LABEL};

    const TABLE: &str = "provider,region,country,place\naws,eu-central-1,DE,Frankfurt\naws,eu-central-2,CH,Zurich\naws,us-east-1,US,N. Virginia\naws,ap-south-1,IN,Mumbai\ngcp,europe-west6,CH,Zurich\n";

    fn node(name: &str, region: Option<&str>) -> NodeFacts {
        NodeFacts {
            name: name.to_string(),
            labels: region
                .map(|r| (REGION_LABEL.to_string(), r.to_string()))
                .into_iter()
                .collect(),
            provider_id: None,
        }
    }

    fn regions(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn att(attested: &[&str], nodes: Vec<NodeFacts>) -> Attestation {
        attest(
            "CH",
            &regions(attested),
            &Topology::new(nodes),
            &Catalogue::parse(TABLE).unwrap(),
        )
    }

    #[test]
    fn all_nodes_in_attested_regions() {
        let a = att(
            &["europe-west6", "eu-central-2"],
            vec![
                node("zrh-1-node-b", Some("eu-central-2")),
                node("zrh-1-node-a", Some("eu-central-2")),
                node("gva-1-node-a", Some("europe-west6")),
            ],
        );
        assert!(a.verified);
        assert_eq!(a.reason, Reason::RegionsMatch);
        assert_eq!(
            a.observed_regions,
            regions(&["eu-central-2", "europe-west6"])
        );
        assert!(a.unverified_nodes.is_empty());
        assert_eq!(a.unverified_count, 0);
        assert_eq!(a.node_count, 3);
        assert_eq!(
            a.message,
            "all 3 nodes are in the attested regions eu-central-2, europe-west6"
        );
        assert!(
            a.regions
                .iter()
                .all(|f| matches!(&f.verdict, RegionVerdict::InCountry(e) if e.country == "CH"))
        );
    }

    #[test]
    fn nodes_outside_or_unlabelled_fail() {
        let a = att(
            &["eu-central-2"],
            vec![
                node("zrh-1-node-e", Some("eu-central-2")),
                node("zrh-1-node-d", None),
                node("zrh-1-node-a", Some("eu-central-2")),
                node("zrh-1-node-c", Some("us-east-1")),
                node("zrh-1-node-b", Some("eu-central-2")),
            ],
        );
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::NodeOutsideAttestedRegions);
        assert_eq!(
            a.message,
            "2 of 5 nodes are outside the attested regions eu-central-2: zrh-1-node-c (us-east-1), zrh-1-node-d (no region label)"
        );
        assert_eq!(a.observed_regions, regions(&["eu-central-2", "us-east-1"]));
        assert_eq!(
            a.unverified_nodes,
            regions(&["zrh-1-node-c", "zrh-1-node-d"])
        );
        assert_eq!(a.unverified_count, 2);
        assert_eq!(a.node_count, 5);
    }

    #[test]
    fn a_node_without_a_region_label_is_placed_through_its_zone() {
        let mut zoned = node("zrh-1-node-z", None);
        zoned
            .labels
            .insert(ZONE_LABEL.into(), "eu-central-2a".into());
        let mut labelled = node("zrh-1-node-a", Some("eu-central-2"));
        labelled
            .labels
            .insert(ZONE_LABEL.into(), "eu-central-2a".into());
        let a = att(&["eu-central-2"], vec![zoned.clone(), labelled.clone()]);
        assert!(a.verified, "{}", a.message);
        // its zone is elsewhere on the member's nodes: outside
        labelled
            .labels
            .insert(REGION_LABEL.into(), "eu-central-1".into());
        let mut other = node("zrh-1-node-b", Some("eu-central-2"));
        other
            .labels
            .insert(ZONE_LABEL.into(), "eu-central-2b".into());
        let a = att(&["eu-central-2"], vec![zoned, labelled, other]);
        assert!(!a.verified);
        assert!(
            a.message
                .contains("zrh-1-node-z (zone eu-central-2a in eu-central-1)"),
            "{}",
            a.message
        );
    }

    #[test]
    fn single_outside_node_grammar() {
        let a = att(
            &["eu-central-2"],
            vec![
                node("n1", Some("eu-central-2")),
                node("n2", Some("us-east-1")),
            ],
        );
        assert_eq!(
            a.message,
            "1 of 2 nodes is outside the attested regions eu-central-2: n2 (us-east-1)"
        );
    }

    #[test]
    fn no_nodes_fails_closed() {
        let a = att(&["eu-central-2"], vec![]);
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::NoNodes);
        assert_eq!(
            a.message,
            "the cluster has no nodes, so its location cannot be attested"
        );
        assert_eq!(a.node_count, 0);
        assert!(a.observed_regions.is_empty());
    }

    #[test]
    fn message_and_list_are_capped() {
        let nodes: Vec<NodeFacts> = (0..30)
            .map(|i| node(&format!("node-{i:02}"), Some("us-east-1")))
            .chain([node("ok", Some("eu-central-2"))])
            .collect();
        let a = att(&["eu-central-2"], nodes);
        assert!(!a.verified);
        assert_eq!(a.unverified_count, 30);
        assert_eq!(a.node_count, 31);
        assert_eq!(a.unverified_nodes.len(), 20);
        assert_eq!(a.unverified_nodes[0], "node-00");
        assert_eq!(a.unverified_nodes[19], "node-19");
        assert!(
            a.message.ends_with(
                "node-00 (us-east-1), node-01 (us-east-1), node-02 (us-east-1), node-03 (us-east-1), node-04 (us-east-1) (and 25 more)"
            ),
            "{}",
            a.message
        );
        assert!(a.message.starts_with("30 of 31 nodes are outside"));
    }

    #[test]
    fn deterministic_regardless_of_order() {
        let mut nodes = vec![
            node("c", Some("us-east-1")),
            node("a", None),
            node("b", Some("eu-central-2")),
            node("d", Some("ap-south-1")),
        ];
        let first = att(&["eu-central-2", "europe-west6"], nodes.clone());
        nodes.reverse();
        let second = att(&["europe-west6", "eu-central-2"], nodes);
        assert_eq!(first, second);
        assert_eq!(first.unverified_nodes, regions(&["a", "c", "d"]));
        assert_eq!(
            first.observed_regions,
            regions(&["ap-south-1", "eu-central-2", "us-east-1"])
        );
    }

    #[test]
    fn no_attested_regions_verifies_nothing() {
        let a = att(&[], vec![node("n1", Some("eu-central-2"))]);
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::NodeOutsideAttestedRegions);
    }

    #[test]
    fn a_region_the_catalogue_puts_in_another_country_is_flagged() {
        // CH declared, AWS Frankfurt attested, and every node really is there
        let a = att(&["eu-central-1"], vec![node("n1", Some("eu-central-1"))]);
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::RegionInAnotherCountry);
        assert_eq!(
            a.message,
            "location.country is CH, but the region catalogue puts attested region eu-central-1 in DE (aws: Frankfurt, DE): correct attestation.nodeRegions or location.country"
        );
    }

    #[test]
    fn a_private_region_is_accepted_as_self_declared() {
        let a = att(
            &["eu-central-2", "zrh-dc-7"],
            vec![
                node("n1", Some("zrh-dc-7")),
                node("n2", Some("eu-central-2")),
            ],
        );
        assert!(a.verified);
        assert_eq!(
            a.message,
            "all 2 nodes are in the attested regions eu-central-2, zrh-dc-7 (self-declared, no cloud provider lists: zrh-dc-7)"
        );
        assert_eq!(a.regions[1].verdict, RegionVerdict::SelfDeclared);
    }

    #[test]
    fn a_region_the_nodes_provider_does_not_have_is_flagged_and_near_misses_are_named() {
        let mut n = node("ip-1", Some("zrh-dc-7"));
        n.provider_id = Some("aws:///zrh-dc-7a/i-1".into());
        let a = att(&["zrh-dc-7"], vec![n]);
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::RegionNotListed);
        assert!(
            a.message
                .starts_with("attested region zrh-dc-7 is not a region of aws"),
            "{}",
            a.message
        );
        assert_eq!(
            region_status(&a.regions[0]).source,
            crate::api::member_cluster::RegionSource::NotListed
        );
        // no provider ID: a private region, and a spelling close to a listed one is pointed out
        let a = att(&["europe-west-6"], vec![node("n1", Some("europe-west-6"))]);
        assert!(a.verified);
        assert!(
            a.message.ends_with("(self-declared, no cloud provider lists: europe-west-6; europe-west-6 resembles gcp's europe-west6)"),
            "{}",
            a.message
        );
    }

    #[test]
    fn a_provider_id_naming_another_zone_unverifies_the_member() {
        let mut n = node("ip-1", Some("eu-central-2"));
        n.labels.insert(ZONE_LABEL.into(), "eu-central-2a".into());
        n.provider_id = Some("aws:///eu-central-1b/i-1".into());
        let a = att(
            &["eu-central-2"],
            vec![n, node("ip-2", Some("eu-central-2"))],
        );
        assert!(!a.verified);
        assert_eq!(a.reason, Reason::NodeIdentityMismatch);
        assert_eq!(a.unverified_nodes, ["ip-1"]);
        assert_eq!(
            a.message,
            "1 node's providerID contradicts its labels: ip-1: its providerID aws:///eu-central-1b/i-1 names zone eu-central-1b, its label zone eu-central-2a"
        );
    }

    #[test]
    fn every_problem_is_named_and_the_first_gives_the_reason() {
        let mut n = node("ip-1", Some("us-east-1"));
        n.provider_id = Some("aws:///eu-central-1b/i-1".into());
        let a = att(&["eu-central-1"], vec![n]);
        assert_eq!(a.reason, Reason::RegionInAnotherCountry);
        assert_eq!(a.message.matches("; ").count(), 2, "{}", a.message);
        assert!(a.message.contains("outside the attested regions"));
        assert!(a.message.contains("providerID"));
    }
}
