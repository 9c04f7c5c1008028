//! Properties of the admission policies over random policies and clusters: what a member's API
//! server refuses is exactly what placement forbids there, and the operator's own placements
//! are never refused.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::placement::proptests::{COUNTRIES, cluster, policy};
use crate::placement::{Engine, Mode, WorkloadFacts};

fn workload(countries: BTreeSet<String>) -> WorkloadFacts {
    WorkloadFacts {
        namespace: "ns".into(),
        name: "w".into(),
        countries,
    }
}

/// Names are unique in a fleet (both are cluster-scoped objects): keep the first of each
/// name after sorting, as the engine does.
fn distinct<T: Ord>(mut items: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
    items.sort();
    items.dedup_by(|later, first| name(later) == name(first));
    items
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For one country: a member refuses it iff the engine, for a workload of that country
    /// alone, decides under Enforce and does not allow the member; it warns iff the country
    /// has only Audit objections there.
    #[test]
    fn refused_exactly_where_placement_forbids(
        policies in prop::collection::vec(policy(), 1..=8),
        clusters in prop::collection::vec(cluster(), 1..=6),
    ) {
        let clusters = distinct(clusters, |c| &c.name);
        let policies = distinct(policies, |p| &p.name);
        let engine = Engine::new(&policies, &clusters);
        for c in &clusters {
            let r = refusals(&policies, c);
            for country in COUNTRIES {
                let d = engine.decide(&workload(BTreeSet::from([country.to_string()])));
                let governed = policies.iter().any(|p| p.countries.contains(country));
                let mine = r.iter().find(|x| x.country == country);
                if !governed {
                    prop_assert!(mine.is_none(), "ungoverned {country} refused on {}", c.name);
                    continue;
                }
                let allowed = d.allowed.contains(&c.name);
                match d.mode {
                    Mode::Enforce => prop_assert_eq!(
                        mine.map(|m| m.action) == Some(Action::Deny),
                        !allowed,
                        "{} on {}: {:?}", country, c.name, mine
                    ),
                    Mode::Audit => prop_assert!(
                        mine.is_none_or(|m| m.action == Action::Warn),
                        "Audit-only {country} denied on {}", c.name
                    ),
                }
                if let Some(m) = mine {
                    prop_assert!(m.message.contains(&format!("data of {country} may not be stored on {}", c.name)), "{}", m.message);
                }
            }
        }
    }

    /// Every target of every workload (any set of countries) refuses none of its countries:
    /// the operator's correct placements pass admission.
    #[test]
    fn targets_never_refuse_what_is_placed_on_them(
        policies in prop::collection::vec(policy(), 1..=8),
        clusters in prop::collection::vec(cluster(), 1..=6),
        countries in prop::collection::btree_set(prop::sample::select(&COUNTRIES[..]).prop_map(str::to_string), 1..=3),
    ) {
        let clusters = distinct(clusters, |c| &c.name);
        let policies = distinct(policies, |p| &p.name);
        let engine = Engine::new(&policies, &clusters);
        let d = engine.decide(&workload(countries.clone()));
        for t in &d.targets {
            let c = clusters.iter().find(|c| &c.name == t).unwrap();
            let denied: Vec<_> = refusals(&policies, c)
                .into_iter()
                .filter(|r| r.action == Action::Deny && countries.contains(&r.country))
                .collect();
            prop_assert!(denied.is_empty(), "target {} refuses {:?}", t, denied);
        }
    }

    /// The generated objects hold one validation per refused country, in the right policy,
    /// and the digest changes whenever what is refused changes.
    #[test]
    fn generated_objects_carry_every_refusal(
        policies in prop::collection::vec(policy(), 1..=8),
        c in cluster(),
    ) {
        let policies = distinct(policies, |p| &p.name);
        let r = refusals(&policies, &c);
        let g = generate(&c.name, &r);
        for action in [Action::Deny, Action::Warn] {
            let want: Vec<String> = r.iter().filter(|x| x.action == action)
                .map(|x| format!("!('{}' in variables.introduced)", x.country)).collect();
            let got: Vec<String> = g.iter().filter(|x| x.action == action)
                .flat_map(|x| x.policy["spec"]["validations"].as_array().cloned().unwrap_or_default())
                .map(|v| v["expression"].as_str().unwrap_or_default().to_string()).collect();
            prop_assert_eq!(want, got);
        }
        let (deny, warn) = summary(&r);
        prop_assert_eq!(g.len(), usize::from(!deny.is_empty()) + usize::from(!warn.is_empty()));
    }
}
