//! From API objects to the placement engine's plain facts (no I/O).

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::api::conditions::{self, types};
use crate::api::residency_policy::Enforcement as ApiEnforcement;
use crate::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use crate::placement::{
    ClusterFacts, Enforcement, Location, PolicyFacts, Selector, SelectorOperator,
    SelectorRequirement, WorkloadFacts,
};

/// How to read a MemberCluster's readiness and location verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusSource {
    /// From its status conditions (`Ready`, `LocationVerified`); absent = false (fail closed).
    Conditions,
    /// Offline: from its status conditions when present, otherwise assumed true.
    AssumeHealthyWithoutStatus,
}

/// The facts the engine needs about a member cluster.
pub fn cluster(mc: &MemberCluster, source: StatusSource) -> ClusterFacts {
    let conds = mc
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let flag = |t: &str| match conditions::find(conds, t) {
        Some(c) => c.status == "True",
        None => source == StatusSource::AssumeHealthyWithoutStatus,
    };
    ClusterFacts {
        name: mc.name_any(),
        labels: mc.labels().clone(),
        country: mc.spec.location.country.to_string(),
        region: mc.spec.location.region.clone(),
        ready: flag(types::READY),
        verified: flag(types::LOCATION_VERIFIED),
        // a MemberCluster being deleted is drained like a cordoned one
        schedulable: mc.spec.schedulable && mc.metadata.deletion_timestamp.is_none(),
    }
}

/// The names of the policies governing `country` that do not allow `cluster` (its copies there
/// are forbidden when any does).
pub fn forbidding<'a>(
    policies: &'a [PolicyFacts],
    country: &str,
    cluster: &ClusterFacts,
) -> Vec<&'a str> {
    policies
        .iter()
        .filter(|p| p.countries.contains(country) && !p.allows(cluster))
        .map(|p| p.name.as_str())
        .collect()
}

/// The facts the engine needs about a policy.
pub fn policy(rp: &ResidencyPolicy) -> PolicyFacts {
    PolicyFacts {
        name: rp.name_any(),
        countries: rp.spec.countries.iter().map(|c| c.to_string()).collect(),
        allowed_locations: rp
            .spec
            .allowed_locations
            .iter()
            .map(|l| Location {
                country: l.country.to_string(),
                region: l.region.clone(),
            })
            .collect(),
        cluster_selector: rp.spec.cluster_selector.as_ref().map(selector),
        enforcement: match rp.spec.enforcement {
            ApiEnforcement::Enforce => Enforcement::Enforce,
            ApiEnforcement::Audit => Enforcement::Audit,
        },
    }
}

/// A LabelSelector as plain data. An unknown operator becomes a requirement that matches
/// nothing (validation refuses such selectors before they get here).
pub fn selector(sel: &LabelSelector) -> Selector {
    Selector {
        match_labels: sel.match_labels.clone().unwrap_or_default(),
        match_expressions: sel
            .match_expressions
            .iter()
            .flatten()
            .map(|r| {
                let values = r.values.clone().unwrap_or_default();
                let (operator, values) = match r.operator.as_str() {
                    "In" => (SelectorOperator::In, values),
                    "NotIn" => (SelectorOperator::NotIn, values),
                    "Exists" => (SelectorOperator::Exists, values),
                    "DoesNotExist" => (SelectorOperator::DoesNotExist, values),
                    _ => (SelectorOperator::In, Vec::new()),
                };
                SelectorRequirement {
                    key: r.key.clone(),
                    operator,
                    values,
                }
            })
            .collect(),
    }
}

/// The facts the engine needs about a workload.
pub fn workload(rw: &ResidentWorkload) -> WorkloadFacts {
    WorkloadFacts {
        namespace: rw.namespace().unwrap_or_else(|| "default".to_string()),
        name: rw.name_any(),
        countries: rw
            .spec
            .countries
            .iter()
            .map(|c| c.to_string())
            .collect::<BTreeSet<_>>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use std::collections::BTreeMap;

    #[test]
    fn selector_conversion_keeps_semantics() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([("tier".into(), "gold".into())])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "NotIn".into(),
                values: Some(vec!["ru".into()]),
            }]),
        };
        let s = selector(&sel);
        let gold = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
        assert!(s.matches(&gold));
        let mut ru = gold.clone();
        ru.insert("zone".into(), "ru".into());
        assert!(!s.matches(&ru));
        let bogus = LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "zone".into(),
                operator: "Near".into(),
                values: None,
            }]),
        };
        assert!(!selector(&bogus).matches(&ru));
    }
}
