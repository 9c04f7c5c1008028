//! The engine's input types: plain data about clusters, policies and workloads.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::selector::Selector;

/// What the engine needs to know about one member cluster.
///
/// The derived ordering compares `name` first; it is used to make decisions independent of the
/// input order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterFacts {
    /// Unique cluster name.
    pub name: String,
    /// The cluster's labels, matched by policy cluster selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// ISO 3166-1 alpha-2 country code of the cluster's location, e.g. `CH`.
    pub country: String,
    /// Region within the country, e.g. `zurich`.
    pub region: String,
    /// The cluster is healthy and reachable.
    pub ready: bool,
    /// The cluster's location has been attested.
    pub verified: bool,
    /// The cluster accepts new workloads (it is not cordoned).
    pub schedulable: bool,
}

impl ClusterFacts {
    /// The cluster's location as `COUNTRY/region`, e.g. `CH/zurich`.
    pub fn location(&self) -> String {
        format!("{}/{}", self.country, self.region)
    }
}

/// Whether a policy restricts placement or only reports.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum Enforcement {
    /// The policy restricts where data may be placed.
    #[default]
    Enforce,
    /// The policy is evaluated and reported on, but never restricts placement.
    Audit,
}

/// A place where a policy allows data to live: a country, optionally narrowed to one region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// ISO 3166-1 alpha-2 country code.
    pub country: String,
    /// Region within the country; `None` means any region of the country.
    #[serde(default)]
    pub region: Option<String>,
}

impl Location {
    /// Whether a cluster located in `country`/`region` is at this location.
    pub fn contains(&self, country: &str, region: &str) -> bool {
        self.country == country && self.region.as_deref().is_none_or(|r| r == region)
    }
}

/// What the engine needs to know about one residency policy.
///
/// The derived ordering compares `name` first; it is used to make decisions independent of the
/// input order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFacts {
    /// Unique policy name.
    pub name: String,
    /// The countries whose data this policy governs.
    pub countries: BTreeSet<String>,
    /// Where the data may live; empty means "anywhere the selector matches".
    #[serde(default)]
    pub allowed_locations: Vec<Location>,
    /// Which clusters may hold the data, by label; `None` means "any cluster at an allowed
    /// location".
    #[serde(default)]
    pub cluster_selector: Option<Selector>,
    /// Whether the policy restricts placement or only reports.
    #[serde(default)]
    pub enforcement: Enforcement,
}

/// Why a policy does not allow a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    /// The policy has neither allowed locations nor a cluster selector.
    NoCriteria,
    /// The cluster's location is not among the allowed locations.
    Location,
    /// The cluster's labels do not match the cluster selector.
    Selector,
}

impl PolicyFacts {
    /// Whether this policy allows `cluster` (see the module documentation).
    pub fn allows(&self, cluster: &ClusterFacts) -> bool {
        self.denial(cluster).is_none()
    }

    /// Why this policy does not allow `cluster`, or `None` if it does. A location mismatch is
    /// reported before a selector mismatch.
    pub(crate) fn denial(&self, cluster: &ClusterFacts) -> Option<Denial> {
        if self.allowed_locations.is_empty() && self.cluster_selector.is_none() {
            return Some(Denial::NoCriteria);
        }
        if !self.allowed_locations.is_empty()
            && !self
                .allowed_locations
                .iter()
                .any(|location| location.contains(&cluster.country, &cluster.region))
        {
            return Some(Denial::Location);
        }
        match &self.cluster_selector {
            Some(selector) if !selector.matches(&cluster.labels) => Some(Denial::Selector),
            _ => None,
        }
    }
}

/// What the engine needs to know about one workload.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadFacts {
    /// Namespace of the workload.
    pub namespace: String,
    /// Name of the workload.
    pub name: String,
    /// The countries whose data the workload holds.
    pub countries: BTreeSet<String>,
}
