//! Properties of the location proof over random members: a volume or member is never proven
//! inside when a node it reaches is outside the attested regions, and outside evidence always
//! wins over the member's own word.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use proptest::prelude::*;

use super::affinity::term_matches;
use super::attest::attest;
use super::catalogue::Catalogue;
use super::evidence::{Member, VolumeFacts, VolumeVerdict};
use super::topology::{NodeFacts, REGION_LABEL, Topology, ZONE_LABEL};

const HOST: &str = "kubernetes.io/hostname";
const CSI_ZONE: &str = "topology.ebs.csi.aws.com/zone";
const REGIONS: &[&str] = &["r1", "r2", "r3"];
const ZONES: &[&str] = &["z1", "z2", "z3", "z4"];
const TABLE: &str =
    "provider,region,country,place\naws,r1,CH,Zurich\naws,r2,CH,Geneva\naws,r3,DE,Frankfurt\n";

fn maybe(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop::sample::select(values).prop_map(str::to_string))
}

fn node(i: usize) -> impl Strategy<Value = NodeFacts> {
    (maybe(REGIONS), maybe(ZONES), maybe(ZONES)).prop_map(move |(region, zone, csi)| {
        let name = format!("n{i}");
        let mut labels = BTreeMap::from([(HOST.to_string(), name.clone())]);
        for (k, v) in [(REGION_LABEL, region), (ZONE_LABEL, zone), (CSI_ZONE, csi)] {
            if let Some(v) = v {
                labels.insert(k.to_string(), v);
            }
        }
        NodeFacts {
            name,
            labels,
            provider_id: None,
        }
    })
}

fn nodes() -> impl Strategy<Value = Vec<NodeFacts>> {
    (0usize..6).prop_flat_map(|n| (0..n).map(node).collect::<Vec<_>>())
}

fn requirement() -> impl Strategy<Value = NodeSelectorRequirement> {
    let keys = prop::sample::select(vec![HOST, REGION_LABEL, ZONE_LABEL, CSI_ZONE]);
    let ops = prop::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]);
    let values = prop::collection::vec(
        prop::sample::select(vec![
            "n0", "n1", "n2", "r1", "r2", "r3", "z1", "z2", "z3", "z5",
        ]),
        1..3,
    );
    (keys, ops, values).prop_map(|(k, op, v)| NodeSelectorRequirement {
        key: k.to_string(),
        operator: op.to_string(),
        values: matches!(op, "In" | "NotIn").then(|| v.into_iter().map(str::to_string).collect()),
    })
}

fn terms() -> impl Strategy<Value = Vec<NodeSelectorTerm>> {
    prop::collection::vec(
        prop::collection::vec(requirement(), 0..3).prop_map(|exprs| NodeSelectorTerm {
            match_expressions: Some(exprs),
            match_fields: None,
        }),
        0..3,
    )
}

fn attested() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(REGIONS).prop_map(str::to_string), 0..3)
}

fn judge(
    topology: &Topology,
    attested: &[String],
    vouched: bool,
    terms: &[NodeSelectorTerm],
) -> VolumeVerdict {
    let vouched = if vouched {
        vec!["c".to_string()]
    } else {
        vec![]
    };
    let (volumes, classes) = (BTreeMap::new(), BTreeMap::new());
    let member = Member {
        topology,
        attested,
        vouched: &vouched,
        volumes: &volumes,
        classes: &classes,
    };
    member.volume(&VolumeFacts {
        storage_class: Some("c".into()),
        node_affinity: terms.to_vec(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Inside or vouched only when every node the affinity reaches is placed in an attested
    /// region; outside exactly when a reached node (or a named region) is outside.
    #[test]
    fn a_volume_is_never_proven_inside_while_it_reaches_a_node_outside(
        nodes in nodes(), terms in terms(), attested in attested(), vouched in any::<bool>(),
    ) {
        let topology = Topology::new(nodes);
        let verdict = judge(&topology, &attested, vouched, &terms);
        let reached: Vec<&NodeFacts> = topology
            .nodes()
            .filter(|n| terms.iter().any(|t| term_matches(t, n)))
            .collect();
        let outside_node = reached.iter().any(|n| {
            topology.region_of(n).region().is_some_and(|r| !attested.iter().any(|a| a == r))
        });
        if outside_node {
            prop_assert!(matches!(verdict, VolumeVerdict::Outside(_)), "{verdict:?}");
        }
        match &verdict {
            VolumeVerdict::Inside(regions) => {
                prop_assert!(!regions.is_empty());
                prop_assert!(regions.iter().all(|r| attested.contains(r)));
                for n in &reached {
                    let region = topology.region_of(n);
                    prop_assert!(region.region().is_some_and(|r| attested.iter().any(|a| a == r)), "{n:?}");
                }
            }
            VolumeVerdict::Outside(regions) => {
                prop_assert!(!regions.is_empty());
                prop_assert!(regions.iter().all(|r| !attested.contains(r)));
            }
            VolumeVerdict::Vouched(_) => prop_assert!(vouched),
            VolumeVerdict::Unverifiable(_) => prop_assert!(!vouched),
        }
    }

    /// Adding a node outside the attested regions that the affinity reaches always makes the
    /// volume outside, whatever it was before.
    #[test]
    fn a_reached_node_outside_makes_the_volume_outside(
        nodes in nodes(), attested in attested(), vouched in any::<bool>(),
    ) {
        let outside = REGIONS.iter().find(|r| !attested.iter().any(|a| a == *r));
        prop_assume!(outside.is_some());
        let mut all = nodes;
        all.push(NodeFacts {
            name: "intruder".into(),
            labels: BTreeMap::from([
                (HOST.to_string(), "intruder".to_string()),
                (REGION_LABEL.to_string(), outside.unwrap_or(&"r3").to_string()),
            ]),
            provider_id: None,
        });
        let terms = vec![NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: HOST.into(),
                operator: "In".into(),
                values: Some(vec!["n0".into(), "intruder".into()]),
            }]),
            match_fields: None,
        }];
        let verdict = judge(&Topology::new(all), &attested, vouched, &terms);
        prop_assert!(matches!(verdict, VolumeVerdict::Outside(_)), "{verdict:?}");
    }

    /// A verified member has nodes, and every one of them is placed in an attested region of the
    /// declared country (or a self-declared one); any node added outside unverifies it.
    #[test]
    fn a_verified_member_has_every_node_inside(nodes in nodes(), attested in attested()) {
        let catalogue = Catalogue::parse(TABLE).unwrap();
        let topology = Topology::new(nodes.clone());
        let a = attest("CH", &attested, &topology, &catalogue);
        if a.verified {
            prop_assert!(!topology.is_empty());
            prop_assert!(!attested.iter().any(|r| r == "r3"), "r3 is in DE");
            for n in topology.nodes() {
                let r = topology.region_of(n);
                prop_assert!(r.region().is_some_and(|r| attested.iter().any(|a| a == r)), "{n:?}");
            }
            if let Some(out) = REGIONS.iter().find(|r| !attested.iter().any(|a| a == *r)) {
                let mut more = nodes;
                more.push(NodeFacts {
                    name: "late".into(),
                    labels: BTreeMap::from([(REGION_LABEL.to_string(), out.to_string())]),
                    provider_id: None,
                });
                prop_assert!(!attest("CH", &attested, &Topology::new(more), &catalogue).verified);
            }
        }
    }
}
