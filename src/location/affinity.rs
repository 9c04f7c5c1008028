//! Node selector semantics, to find where a volume's node affinity (or a StorageClass's
//! `allowedTopologies`) says it is (pure).
//!
//! As Kubernetes evaluates them: the terms are ORed; within a term every requirement must hold;
//! operators `In`, `NotIn`, `Exists`, `DoesNotExist`, `Gt`, `Lt` on labels (`NotIn` and
//! `DoesNotExist` hold for a node without the label) and `In`/`NotIn` on the field
//! `metadata.name`; a term without requirements, or with an unknown operator, matches nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, TopologySelectorTerm};

use super::topology::{NodeFacts, Topology, is_region_key, is_zone_key};

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => !value.is_some_and(|v| values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => match (value.and_then(number), values) {
            (Some(v), [bound]) => match number(bound) {
                Some(b) if r.operator == "Gt" => v > b,
                Some(b) => v < b,
                None => false,
            },
            _ => false,
        },
        _ => false,
    }
}

/// Whether `node` satisfies `term`.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeFacts) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_holds(r, node.labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            r.key == "metadata.name"
                && matches!(r.operator.as_str(), "In" | "NotIn")
                && requirement_holds(r, Some(&node.name))
        })
}

/// A StorageClass's `allowedTopologies` as node selector terms (each label requirement is `In`).
pub fn topology_terms(allowed: &[TopologySelectorTerm]) -> Vec<NodeSelectorTerm> {
    allowed
        .iter()
        .map(|t| NodeSelectorTerm {
            match_expressions: Some(
                t.match_label_expressions
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| NodeSelectorRequirement {
                        key: e.key.clone(),
                        operator: "In".into(),
                        values: Some(e.values.clone()),
                    })
                    .collect(),
            ),
            match_fields: None,
        })
        .collect()
}

/// Where the places a node selector allows are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Located {
    /// The regions of the nodes the terms match, the regions they name
    /// (`topology.kubernetes.io/region In [...]`) and the regions of the zones they name (any
    /// `.../zone` key, placed through the member's nodes), sorted.
    pub regions: BTreeSet<String>,
    /// The nodes the terms match, sorted (at most [`MAX_NODES`]).
    pub nodes: Vec<String>,
    /// Why part of what the terms allow cannot be placed in a region, when it cannot.
    pub unlocated: Option<String>,
}

/// The most matching node names kept in [`Located::nodes`].
pub const MAX_NODES: usize = 5;

/// Finds where `terms` allow: every place a term allows counts, so a volume whose affinity
/// reaches into two regions is in both as far as proof goes.
pub fn locate(topology: &Topology, terms: &[NodeSelectorTerm]) -> Located {
    let mut out = Located::default();
    let mut nodes = BTreeSet::new();
    for term in terms {
        let before = out.regions.len();
        let mut term_unlocated = None;
        let mut matched = 0usize;
        for n in topology.nodes().filter(|n| term_matches(term, n)) {
            matched += 1;
            nodes.insert(n.name.clone());
            match topology.region_of(n).region() {
                Some(r) => {
                    out.regions.insert(r.to_string());
                }
                None => {
                    term_unlocated.get_or_insert_with(|| {
                        format!("node {} it is pinned to has no region label", n.name)
                    });
                }
            }
        }
        for r in term.match_expressions.as_deref().unwrap_or_default() {
            if r.operator != "In" {
                continue;
            }
            for v in r.values.as_deref().unwrap_or_default() {
                if is_region_key(&r.key) {
                    out.regions.insert(v.clone());
                } else if is_zone_key(&r.key) {
                    match topology.zone_region(v) {
                        Ok(region) => {
                            out.regions.insert(region.to_string());
                        }
                        Err(why) => {
                            term_unlocated.get_or_insert(format!("{} {v}: {why}", r.key));
                        }
                    }
                } else if !topology.nodes().any(|n| n.labels.get(&r.key) == Some(v)) {
                    // a place the volume may be that no node of the member is at
                    term_unlocated
                        .get_or_insert(format!("{} {v}: no node of the member carries it", r.key));
                }
            }
        }
        if matched == 0 && out.regions.len() == before && term_unlocated.is_none() {
            term_unlocated = Some(
                "no node of the member matches its node affinity, and it names no region or zone"
                    .into(),
            );
        }
        if out.unlocated.is_none() {
            out.unlocated = term_unlocated;
        }
    }
    if terms.is_empty() {
        out.unlocated = Some("it names no node".into());
    }
    out.nodes = nodes.into_iter().take(MAX_NODES).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::topology::{REGION_LABEL, ZONE_LABEL};

    fn node(name: &str, labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            provider_id: None,
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(exprs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        }
    }

    #[test]
    fn every_operator_as_kubernetes_evaluates_it() {
        let n = node("n1", &[("a", "x"), ("size", "10")]);
        let cases = [
            (req("a", "In", &["x", "y"]), true),
            (req("a", "In", &["y"]), false),
            (req("b", "In", &["x"]), false),
            (req("a", "NotIn", &["x"]), false),
            (req("a", "NotIn", &["y"]), true),
            (req("b", "NotIn", &["x"]), true),
            (req("a", "Exists", &[]), true),
            (req("b", "Exists", &[]), false),
            (req("a", "DoesNotExist", &[]), false),
            (req("b", "DoesNotExist", &[]), true),
            (req("size", "Gt", &["9"]), true),
            (req("size", "Gt", &["10"]), false),
            (req("size", "Lt", &["11"]), true),
            (req("size", "Lt", &["10"]), false),
            (req("a", "Gt", &["1"]), false),
            (req("size", "Gt", &["1", "2"]), false),
            (req("a", "Matches", &["x"]), false),
        ];
        for (r, want) in cases {
            assert_eq!(term_matches(&term(vec![r.clone()]), &n), want, "{r:?}");
        }
        // every requirement of a term must hold
        assert!(!term_matches(
            &term(vec![req("a", "In", &["x"]), req("b", "Exists", &[])]),
            &n
        ));
        // an empty term matches nothing
        assert!(!term_matches(&term(vec![]), &n));
        // fields: metadata.name only
        let by_name = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("metadata.name", "In", &["n1"])]),
        };
        assert!(term_matches(&by_name, &n));
        let other_field = NodeSelectorTerm {
            match_expressions: None,
            match_fields: Some(vec![req("spec.unschedulable", "In", &["n1"])]),
        };
        assert!(!term_matches(&other_field, &n));
    }

    fn zurich() -> Topology {
        Topology::new([
            node(
                "zrh-a",
                &[
                    ("kubernetes.io/hostname", "zrh-a"),
                    (REGION_LABEL, "eu-central-2"),
                    (ZONE_LABEL, "eu-central-2a"),
                    ("topology.ebs.csi.aws.com/zone", "eu-central-2a"),
                ],
            ),
            node(
                "zrh-b",
                &[
                    ("kubernetes.io/hostname", "zrh-b"),
                    (REGION_LABEL, "eu-central-2"),
                    (ZONE_LABEL, "eu-central-2b"),
                ],
            ),
            node(
                "fra-a",
                &[
                    ("kubernetes.io/hostname", "fra-a"),
                    (REGION_LABEL, "eu-central-1"),
                    (ZONE_LABEL, "eu-central-1a"),
                ],
            ),
            node("bare", &[("kubernetes.io/hostname", "bare")]),
        ])
    }

    #[test]
    fn a_volume_is_where_the_nodes_it_is_pinned_to_are() {
        let t = zurich();
        let by_host = locate(
            &t,
            &[term(vec![req("kubernetes.io/hostname", "In", &["zrh-b"])])],
        );
        assert_eq!(
            by_host.regions,
            BTreeSet::from(["eu-central-2".to_string()])
        );
        assert_eq!(by_host.nodes, ["zrh-b"]);
        assert_eq!(by_host.unlocated, None);
        let by_csi_zone = locate(
            &t,
            &[term(vec![req(
                "topology.ebs.csi.aws.com/zone",
                "In",
                &["eu-central-2a"],
            )])],
        );
        assert_eq!(
            by_csi_zone.regions,
            BTreeSet::from(["eu-central-2".to_string()])
        );
        assert_eq!(by_csi_zone.nodes, ["zrh-a"]);
        let elsewhere = locate(
            &t,
            &[term(vec![req("kubernetes.io/hostname", "In", &["fra-a"])])],
        );
        assert_eq!(
            elsewhere.regions,
            BTreeSet::from(["eu-central-1".to_string()])
        );
        // a NotIn reaches every other node, here both regions
        let not_in = locate(
            &t,
            &[term(vec![req(
                "kubernetes.io/hostname",
                "NotIn",
                &["bare"],
            )])],
        );
        assert_eq!(not_in.regions.len(), 2);
        // reaching an unlabelled node cannot be placed
        let bare = locate(
            &t,
            &[term(vec![req("kubernetes.io/hostname", "In", &["bare"])])],
        );
        assert_eq!(
            bare.unlocated.as_deref(),
            Some("node bare it is pinned to has no region label")
        );
    }

    #[test]
    fn zones_without_a_node_are_placed_through_the_members_nodes_or_not_at_all() {
        let t = zurich();
        // no node carries the CSI key for 2b, but zrh-b carries zone 2b with its region
        let csi = locate(
            &t,
            &[term(vec![req(
                "topology.gke.io/zone",
                "In",
                &["eu-central-2b"],
            )])],
        );
        assert_eq!(csi.regions, BTreeSet::from(["eu-central-2".to_string()]));
        assert!(csi.nodes.is_empty());
        assert_eq!(csi.unlocated, None);
        // a zone no node carries is not guessed from its name
        let unknown = locate(&t, &[term(vec![req(ZONE_LABEL, "In", &["eu-central-2c"])])]);
        assert!(unknown.regions.is_empty());
        assert_eq!(
            unknown.unlocated.as_deref(),
            Some(
                "topology.kubernetes.io/zone eu-central-2c: no node of the member carries zone eu-central-2c with a region label"
            )
        );
        // a region named outright counts, nodes or not
        let named = locate(&t, &[term(vec![req(REGION_LABEL, "In", &["us-east-1"])])]);
        assert_eq!(named.regions, BTreeSet::from(["us-east-1".to_string()]));
        assert_eq!(named.unlocated, None);
        // a hostname of a node that is gone
        let gone = locate(
            &t,
            &[term(vec![req("kubernetes.io/hostname", "In", &["old"])])],
        );
        assert_eq!(
            gone.unlocated.as_deref(),
            Some("kubernetes.io/hostname old: no node of the member carries it")
        );
        // one of its nodes is gone: the rest does not prove where it is
        let half = locate(
            &t,
            &[term(vec![req(
                "kubernetes.io/hostname",
                "In",
                &["zrh-a", "fra-gone"],
            )])],
        );
        assert_eq!(half.regions, BTreeSet::from(["eu-central-2".to_string()]));
        assert_eq!(
            half.unlocated.as_deref(),
            Some("kubernetes.io/hostname fra-gone: no node of the member carries it")
        );
        assert_eq!(
            locate(&t, &[]).unlocated.as_deref(),
            Some("it names no node")
        );
    }

    #[test]
    fn allowed_topologies_are_in_requirements() {
        use k8s_openapi::api::core::v1::TopologySelectorLabelRequirement;
        let allowed = [TopologySelectorTerm {
            match_label_expressions: Some(vec![TopologySelectorLabelRequirement {
                key: ZONE_LABEL.into(),
                values: vec!["eu-central-2a".into(), "eu-central-2b".into()],
            }]),
        }];
        let l = locate(&zurich(), &topology_terms(&allowed));
        assert_eq!(l.regions, BTreeSet::from(["eu-central-2".to_string()]));
        assert_eq!(l.nodes, ["zrh-a", "zrh-b"]);
    }
}
