//! Location attestation: a member's location is verified when every one of its nodes carries a
//! `topology.kubernetes.io/region` label naming one of the member's attested regions.
//!
//! Fails closed: a cluster without nodes, or with any node outside the attested regions (or
//! without a region label), is not verified.
//!
//! Pure: no I/O and no API calls.

use std::collections::BTreeSet;

/// The well-known node label carrying the node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// The most unverified node names kept in [`Attestation::unverified_nodes`].
const MAX_UNVERIFIED_NODES: usize = 20;
/// The most unverified nodes named in [`Attestation::message`].
const MAX_NODES_IN_MESSAGE: usize = 5;

/// Reason when every node is in an attested region.
const REASON_MATCH: &str = "RegionsMatch";
/// Reason when at least one node is outside the attested regions.
const REASON_OUTSIDE: &str = "NodeOutsideAttestedRegions";
/// Reason when the cluster has no nodes.
const REASON_NO_NODES: &str = "NoNodes";

/// One node of a member, as attestation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The value of its [`REGION_LABEL`], if any.
    pub region: Option<String>,
}

/// The outcome of attesting a member's location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Whether the location is verified.
    pub verified: bool,
    /// Stable CamelCase reason: `RegionsMatch`, `NodeOutsideAttestedRegions` or `NoNodes`.
    pub reason: &'static str,
    /// A human-readable explanation.
    pub message: String,
    /// The distinct region labels seen on the nodes, sorted.
    pub observed_regions: Vec<String>,
    /// Names of the nodes outside the attested regions, sorted, at most 20.
    pub unverified_nodes: Vec<String>,
    /// How many nodes are outside the attested regions.
    pub unverified_count: usize,
    /// How many nodes the cluster has.
    pub node_count: usize,
}

/// Attests a member's location from its nodes' region labels. Verified iff there is at least
/// one node and every node's region is in `attested_regions`. The result does not depend on
/// the order of `attested_regions` or `nodes`.
pub fn attest(attested_regions: &[String], nodes: &[NodeInfo]) -> Attestation {
    let attested: BTreeSet<&str> = attested_regions.iter().map(String::as_str).collect();
    let observed_regions: Vec<String> = nodes
        .iter()
        .filter_map(|n| n.region.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();

    let mut outside: Vec<&NodeInfo> = nodes
        .iter()
        .filter(|n| match &n.region {
            Some(region) => !attested.contains(region.as_str()),
            None => true,
        })
        .collect();
    outside.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.region.cmp(&b.region)));

    let node_count = nodes.len();
    let unverified_count = outside.len();
    let unverified_nodes: Vec<String> = outside
        .iter()
        .take(MAX_UNVERIFIED_NODES)
        .map(|n| n.name.clone())
        .collect();
    let attested_list = attested.iter().copied().collect::<Vec<_>>().join(", ");

    let (verified, reason, message) = if node_count == 0 {
        (
            false,
            REASON_NO_NODES,
            "the cluster has no nodes, so its location cannot be attested".to_string(),
        )
    } else if unverified_count == 0 {
        (
            true,
            REASON_MATCH,
            format!(
                "all {node_count} {} in the attested regions {attested_list}",
                if node_count == 1 {
                    "node is"
                } else {
                    "nodes are"
                }
            ),
        )
    } else {
        let listed = outside
            .iter()
            .take(MAX_NODES_IN_MESSAGE)
            .map(|n| match &n.region {
                Some(region) => format!("{} ({region})", n.name),
                None => format!("{} (no region label)", n.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let more = if unverified_count > MAX_NODES_IN_MESSAGE {
            format!(" (and {} more)", unverified_count - MAX_NODES_IN_MESSAGE)
        } else {
            String::new()
        };
        let verb = if unverified_count == 1 { "is" } else { "are" };
        let attested_text = if attested_list.is_empty() {
            "(none)".to_string()
        } else {
            attested_list
        };
        (
            false,
            REASON_OUTSIDE,
            format!(
                "{unverified_count} of {node_count} nodes {verb} outside the attested regions {attested_text}: {listed}{more}"
            ),
        )
    };

    Attestation {
        verified,
        reason,
        message,
        observed_regions,
        unverified_nodes,
        unverified_count,
        node_count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, region: Option<&str>) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            region: region.map(str::to_string),
        }
    }

    fn regions(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_nodes_in_attested_regions() {
        let nodes = vec![
            node("zrh-1-node-b", Some("eu-central-2")),
            node("zrh-1-node-a", Some("eu-central-2")),
            node("gva-1-node-a", Some("eu-west-9")),
        ];
        let a = attest(&regions(&["eu-west-9", "eu-central-2"]), &nodes);
        assert!(a.verified);
        assert_eq!(a.reason, "RegionsMatch");
        assert_eq!(a.observed_regions, regions(&["eu-central-2", "eu-west-9"]));
        assert!(a.unverified_nodes.is_empty());
        assert_eq!(a.unverified_count, 0);
        assert_eq!(a.node_count, 3);
        assert_eq!(
            a.message,
            "all 3 nodes are in the attested regions eu-central-2, eu-west-9"
        );
    }

    #[test]
    fn nodes_outside_or_unlabelled_fail() {
        let nodes = vec![
            node("zrh-1-node-e", Some("eu-central-2")),
            node("zrh-1-node-d", None),
            node("zrh-1-node-a", Some("eu-central-2")),
            node("zrh-1-node-c", Some("us-east-1")),
            node("zrh-1-node-b", Some("eu-central-2")),
        ];
        let a = attest(&regions(&["eu-central-2"]), &nodes);
        assert!(!a.verified);
        assert_eq!(a.reason, "NodeOutsideAttestedRegions");
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
    fn single_outside_node_grammar() {
        let a = attest(
            &regions(&["eu-central-2"]),
            &[
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
        let a = attest(&regions(&["eu-central-2"]), &[]);
        assert!(!a.verified);
        assert_eq!(a.reason, "NoNodes");
        assert_eq!(
            a.message,
            "the cluster has no nodes, so its location cannot be attested"
        );
        assert_eq!(a.node_count, 0);
        assert!(a.observed_regions.is_empty());
    }

    #[test]
    fn message_and_list_are_capped() {
        let nodes: Vec<NodeInfo> = (0..30)
            .map(|i| node(&format!("node-{i:02}"), Some("us-east-1")))
            .chain([node("ok", Some("eu-central-2"))])
            .collect();
        let a = attest(&regions(&["eu-central-2"]), &nodes);
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
        let first = attest(&regions(&["eu-central-2", "eu-central-1"]), &nodes);
        nodes.reverse();
        let second = attest(&regions(&["eu-central-1", "eu-central-2"]), &nodes);
        assert_eq!(first, second);
        assert_eq!(first.unverified_nodes, regions(&["a", "c", "d"]));
        assert_eq!(
            first.observed_regions,
            regions(&["ap-south-1", "eu-central-2", "us-east-1"])
        );
    }

    #[test]
    fn no_attested_regions_verifies_nothing() {
        let a = attest(&[], &[node("n1", Some("eu-central-2"))]);
        assert!(!a.verified);
        assert_eq!(a.reason, "NodeOutsideAttestedRegions");
    }
}
