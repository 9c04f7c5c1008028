//! Property tests for the placement engine over small random universes.
//!
//! Universes are kept small (a handful of countries, locations and labels, names drawn from a
//! short pool so that duplicates occur) so that default deny, conflicts, audit mode and
//! ineligible clusters all show up often.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

pub(crate) const COUNTRIES: [&str; 6] = ["AU", "NZ", "CH", "DE", "RU", "BD"];
const LOCATIONS: [(&str, &str); 5] = [
    ("CH", "zurich"),
    ("CH", "geneva"),
    ("DE", "frankfurt"),
    ("RU", "moscow"),
    ("AU", "sydney"),
];
const LABEL_KEYS: [&str; 3] = ["tier", "zone", "pci"];
const LABEL_VALUES: [&str; 2] = ["a", "b"];

fn country() -> impl Strategy<Value = String> {
    prop::sample::select(&COUNTRIES[..]).prop_map(str::to_string)
}

fn countries(max: usize) -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(country(), 1..=max)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        prop::sample::select(&LABEL_KEYS[..]).prop_map(str::to_string),
        prop::sample::select(&LABEL_VALUES[..]).prop_map(str::to_string),
        0..=3,
    )
}

/// Mostly healthy flags, so that targets exist often.
fn healthy() -> impl Strategy<Value = bool> {
    prop::bool::weighted(0.8)
}

pub(crate) fn cluster() -> impl Strategy<Value = ClusterFacts> {
    (
        0..10u8,
        prop::sample::select(&LOCATIONS[..]),
        labels(),
        healthy(),
        healthy(),
        healthy(),
    )
        .prop_map(
            |(n, (country, region), labels, ready, verified, schedulable)| ClusterFacts {
                name: format!("c{n}"),
                labels,
                country: country.to_string(),
                region: region.to_string(),
                ready,
                verified,
                schedulable,
            },
        )
}

fn location() -> impl Strategy<Value = Location> {
    (
        prop::sample::select(&LOCATIONS[..]),
        prop::bool::weighted(0.3),
    )
        .prop_map(|((country, region), with_region)| Location {
            country: country.to_string(),
            region: with_region.then(|| region.to_string()),
        })
}

fn requirement() -> impl Strategy<Value = SelectorRequirement> {
    (
        prop::sample::select(&LABEL_KEYS[..]),
        prop::sample::select(
            &[
                SelectorOperator::In,
                SelectorOperator::NotIn,
                SelectorOperator::Exists,
                SelectorOperator::DoesNotExist,
            ][..],
        ),
        prop::collection::vec(prop::sample::select(&LABEL_VALUES[..]), 1..=2),
    )
        .prop_map(|(key, operator, values)| SelectorRequirement {
            key: key.to_string(),
            values: match operator {
                SelectorOperator::In | SelectorOperator::NotIn => {
                    values.into_iter().map(str::to_string).collect()
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist => Vec::new(),
            },
            operator,
        })
}

fn selector() -> impl Strategy<Value = Selector> {
    (
        prop::collection::btree_map(
            prop::sample::select(&LABEL_KEYS[..]).prop_map(str::to_string),
            prop::sample::select(&LABEL_VALUES[..]).prop_map(str::to_string),
            0..=1,
        ),
        prop::collection::vec(requirement(), 0..=2),
    )
        .prop_map(|(match_labels, match_expressions)| Selector {
            match_labels,
            match_expressions,
        })
}

fn enforcement() -> impl Strategy<Value = Enforcement> {
    prop_oneof![3 => Just(Enforcement::Enforce), 1 => Just(Enforcement::Audit)]
}

fn policy_named(name: String) -> impl Strategy<Value = PolicyFacts> {
    (
        countries(4),
        prop::collection::vec(location(), 0..=5),
        prop::option::weighted(0.3, selector()),
        enforcement(),
    )
        .prop_map(
            move |(countries, allowed_locations, cluster_selector, enforcement)| PolicyFacts {
                name: name.clone(),
                countries,
                allowed_locations,
                cluster_selector,
                enforcement,
            },
        )
}

pub(crate) fn policy() -> impl Strategy<Value = PolicyFacts> {
    (0..10u8).prop_flat_map(|n| policy_named(format!("p{n}")))
}

fn workload() -> impl Strategy<Value = WorkloadFacts> {
    countries(2).prop_map(|countries| WorkloadFacts {
        namespace: "ns".to_string(),
        name: "w".to_string(),
        countries,
    })
}

#[derive(Debug, Clone)]
struct Universe {
    policies: Vec<PolicyFacts>,
    clusters: Vec<ClusterFacts>,
    workload: WorkloadFacts,
}

fn universe() -> impl Strategy<Value = Universe> {
    (
        prop::collection::vec(policy(), 1..=8),
        prop::collection::vec(cluster(), 0..=8),
        workload(),
    )
        .prop_map(|(policies, clusters, workload)| Universe {
            policies,
            clusters,
            workload,
        })
}

/// A universe in which every country of the workload has an Enforce policy: countries lacking
/// one get a random Enforce policy of their own (named `cover-<country>`).
fn enforced_universe() -> impl Strategy<Value = Universe> {
    (
        universe(),
        prop::collection::vec(policy_named(String::new()), 3),
    )
        .prop_map(|(mut u, covers)| {
            let engine = Engine::new(&u.policies, &u.clusters);
            let lacking: Vec<String> = u
                .workload
                .countries
                .iter()
                .filter(|c| {
                    engine
                        .policies_governing(c, Enforcement::Enforce)
                        .is_empty()
                })
                .cloned()
                .collect();
            for (country, mut cover) in lacking.into_iter().zip(covers) {
                cover.name = format!("cover-{country}");
                cover.countries = BTreeSet::from([country]);
                cover.enforcement = Enforcement::Enforce;
                u.policies.push(cover);
            }
            u
        })
}

/// A universe together with shuffled copies of its policies and clusters.
fn shuffled_universe() -> impl Strategy<Value = (Universe, Vec<PolicyFacts>, Vec<ClusterFacts>)> {
    universe().prop_flat_map(|u| {
        let policies = Just(u.policies.clone()).prop_shuffle();
        let clusters = Just(u.clusters.clone()).prop_shuffle();
        (Just(u), policies, clusters)
    })
}

/// The distinct names among `names`.
fn distinct<'a>(names: impl Iterator<Item = &'a str>) -> BTreeSet<&'a str> {
    names.collect()
}

/// Whether every country of the workload has an Enforce policy among the (de-duplicated)
/// policies the engine uses.
fn all_countries_enforced(engine: &Engine, workload: &WorkloadFacts) -> bool {
    workload.countries.iter().all(|country| {
        !engine
            .policies_governing(country, Enforcement::Enforce)
            .is_empty()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// (a) Targets are allowed, and every target is ready, verified and schedulable.
    #[test]
    fn targets_are_allowed_and_eligible(u in universe()) {
        let decision = decide(&u.policies, &u.clusters, &u.workload);
        let allowed: BTreeSet<&str> = decision.allowed.iter().map(String::as_str).collect();
        for target in &decision.targets {
            prop_assert!(allowed.contains(target.as_str()), "{target} not allowed");
            let facts = u
                .clusters
                .iter()
                .filter(|c| &c.name == target)
                .min()
                .expect("target is a given cluster");
            prop_assert!(facts.ready && facts.verified && facts.schedulable);
            prop_assert_eq!(&decision.verdict(target).unwrap().verdict, &Verdict::Target);
        }
        prop_assert_eq!(decision.is_placeable(), !decision.targets.is_empty());
        // Sorted, without duplicates.
        prop_assert!(decision.targets.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(decision.allowed.windows(2).all(|w| w[0] < w[1]));
    }

    /// (b) Adding an Enforce policy never widens what is allowed.
    ///
    /// Precondition: every country of the workload already has an Enforce policy. Without it the
    /// property does not hold, by design: governing a previously ungoverned country lifts default
    /// deny, and the first Enforce policy of an Audit-only workload replaces the Audit
    /// intersection.
    #[test]
    fn an_extra_enforce_policy_never_widens_allowed(
        u in enforced_universe(),
        extra in policy_named("extra-policy".to_string()),
    ) {
        let before_engine = Engine::new(&u.policies, &u.clusters);
        prop_assume!(all_countries_enforced(&before_engine, &u.workload));
        let before = before_engine.decide(&u.workload);

        let mut extra = extra;
        extra.enforcement = Enforcement::Enforce;
        let mut policies = u.policies.clone();
        policies.push(extra);
        let after = decide(&policies, &u.clusters, &u.workload);

        prop_assert_eq!(after.mode, Mode::Enforce);
        for cluster in &after.allowed {
            prop_assert!(before.allowed.contains(cluster), "{cluster} became allowed");
        }
        for cluster in &after.targets {
            prop_assert!(before.targets.contains(cluster), "{cluster} became a target");
        }
    }

    /// (c) The order of the policies and clusters does not change the decision.
    #[test]
    fn input_order_does_not_change_the_decision(
        (u, policies, clusters) in shuffled_universe()
    ) {
        let original = decide(&u.policies, &u.clusters, &u.workload);
        let shuffled = decide(&policies, &clusters, &u.workload);
        prop_assert_eq!(original, shuffled);
    }

    /// (d) Every given cluster has exactly one verdict, with a reason starting with its name.
    #[test]
    fn every_cluster_has_exactly_one_verdict(u in universe()) {
        let decision = decide(&u.policies, &u.clusters, &u.workload);
        let given = distinct(u.clusters.iter().map(|c| c.name.as_str()));
        let judged: Vec<&str> = decision.clusters.iter().map(|c| c.name.as_str()).collect();
        prop_assert_eq!(judged.len(), given.len());
        prop_assert_eq!(distinct(judged.iter().copied()), given);
        for verdict in &decision.clusters {
            let prefix = format!("{}: ", verdict.name);
            prop_assert!(verdict.reason.starts_with(&prefix), "{}", verdict.reason);
            prop_assert!(verdict.reason.len() > prefix.len());
            prop_assert!(!verdict.reason.contains('\n'));
        }
    }

    /// The outcome, verdicts and findings agree with each other and with the rules.
    #[test]
    fn decision_is_internally_consistent(u in universe()) {
        let engine = Engine::new(&u.policies, &u.clusters);
        let decision = engine.decide(&u.workload);
        prop_assert_eq!(&decision, &decide(&u.policies, &u.clusters, &u.workload));

        let targets: Vec<&str> = decision
            .clusters
            .iter()
            .filter(|c| c.verdict == Verdict::Target)
            .map(|c| c.name.as_str())
            .collect();
        let allowed: Vec<&str> = decision
            .clusters
            .iter()
            .filter(|c| c.verdict != Verdict::Forbidden)
            .map(|c| c.name.as_str())
            .collect();
        prop_assert_eq!(targets, decision.targets.iter().map(String::as_str).collect::<Vec<_>>());
        prop_assert_eq!(allowed, decision.allowed.iter().map(String::as_str).collect::<Vec<_>>());

        let enforced = u
            .workload
            .countries
            .iter()
            .any(|c| !engine.policies_governing(c, Enforcement::Enforce).is_empty());
        prop_assert_eq!(decision.writes_allowed(), enforced);
        if decision.mode == Mode::Audit || !decision.is_placeable() {
            prop_assert!(decision.audit_findings.is_empty());
        }
        for finding in &decision.audit_findings {
            prop_assert!(decision.targets.contains(&finding.cluster));
            prop_assert!(finding.message.starts_with(&finding.cluster));
        }

        // Rebuild the allowed set directly from the definition.
        let ungoverned: Vec<&String> = u
            .workload
            .countries
            .iter()
            .filter(|c| {
                engine.policies_governing(c, Enforcement::Enforce).is_empty()
                    && engine.policies_governing(c, Enforcement::Audit).is_empty()
            })
            .collect();
        match &decision.outcome {
            Outcome::NoPolicy { countries } => {
                prop_assert_eq!(countries.iter().collect::<Vec<_>>(), ungoverned);
                prop_assert!(decision.allowed.is_empty());
            }
            outcome => {
                prop_assert!(ungoverned.is_empty());
                let kind = if enforced { Enforcement::Enforce } else { Enforcement::Audit };
                let used: BTreeSet<&str> = u
                    .workload
                    .countries
                    .iter()
                    .flat_map(|c| engine.policies_governing(c, kind))
                    .collect();
                let expected: Vec<&str> = engine
                    .cluster_names()
                    .filter(|cluster| {
                        used.iter().all(|p| {
                            engine.clusters_allowed_by(p).unwrap().contains(cluster)
                        })
                    })
                    .collect();
                prop_assert_eq!(
                    decision.allowed.iter().map(String::as_str).collect::<Vec<_>>(),
                    expected.clone()
                );
                if let Outcome::Conflict { policies } = outcome {
                    prop_assert!(expected.is_empty());
                    let named: BTreeSet<&str> =
                        policies.iter().map(|e| e.policy.as_str()).collect();
                    prop_assert_eq!(named, used);
                }
            }
        }
    }
}

/// The generated universes reach every outcome and both modes, so the properties above are not
/// vacuous.
#[test]
fn generated_universes_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = universe();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..1000 {
        let u = strategy.new_tree(&mut runner).unwrap().current();
        let decision = decide(&u.policies, &u.clusters, &u.workload);
        *seen
            .entry(format!("{:?}/{}", decision.mode, decision.reason()))
            .or_default() += 1;
        if !decision.audit_findings.is_empty() {
            *seen.entry("findings".to_string()).or_default() += 1;
        }
    }
    for key in [
        "Enforce/Placeable",
        "Enforce/NoPolicyForCountry",
        "Enforce/PolicyConflict",
        "Enforce/NoEligibleCluster",
        "Audit/Placeable",
        "Audit/NoPolicyForCountry",
        "findings",
    ] {
        assert!(seen.get(key).copied().unwrap_or(0) >= 5, "{key}: {seen:?}");
    }
}
