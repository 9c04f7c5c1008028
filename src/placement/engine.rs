//! The [`Engine`]: indexes built once, decisions made per workload.

use std::collections::HashMap;

use super::bitset::ClusterSet;
use super::decision::{
    AuditFinding, ClusterVerdict, ConflictEntry, Decision, Ineligibility, Mode, Outcome, Verdict,
};
use super::facts::{ClusterFacts, Denial, Enforcement, PolicyFacts, WorkloadFacts};

/// The policies governing one country, as indexes into the sorted policy list.
#[derive(Debug, Clone, Default)]
struct Governing {
    enforce: Vec<usize>,
    audit: Vec<usize>,
}

/// What one policy allows, precomputed for every cluster.
#[derive(Debug, Clone)]
struct PolicyIndex {
    /// The clusters the policy allows.
    allowed: ClusterSet,
    /// Per cluster, why the policy does not allow it (`None` when it does).
    denials: Vec<Option<Denial>>,
}

/// A policy taking part in a decision, with the workload countries it governs (sorted).
struct Participant<'w> {
    policy: usize,
    countries: Vec<&'w str>,
}

/// The placement engine for one set of policies and clusters.
///
/// [`Engine::new`] sorts and de-duplicates the inputs and precomputes, per policy, the bitset of
/// clusters it allows, plus an index from country to governing policies. [`Engine::decide`] then
/// costs `O(clusters x governing policies)` per workload.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Sorted by name, one per name.
    clusters: Vec<ClusterFacts>,
    /// `COUNTRY/region` per cluster.
    locations: Vec<String>,
    /// The clusters that are ready, verified and schedulable.
    eligible: ClusterSet,
    /// Sorted by name, one per name.
    policies: Vec<PolicyFacts>,
    /// Parallel to `policies`.
    index: Vec<PolicyIndex>,
    /// Country code to governing policies (in name order).
    by_country: HashMap<String, Governing>,
}

impl Engine {
    /// Builds the engine's indexes.
    ///
    /// Inputs are sorted by name (then by their other fields); of several inputs sharing a name
    /// only the first after that sort is kept, so the result never depends on the input order.
    pub fn new(policies: &[PolicyFacts], clusters: &[ClusterFacts]) -> Engine {
        let mut clusters = clusters.to_vec();
        clusters.sort();
        clusters.dedup_by(|later, first| later.name == first.name);
        let mut policies = policies.to_vec();
        policies.sort();
        policies.dedup_by(|later, first| later.name == first.name);

        let count = clusters.len();
        let locations = clusters.iter().map(ClusterFacts::location).collect();
        let mut eligible = ClusterSet::empty(count);
        for (at, cluster) in clusters.iter().enumerate() {
            if cluster.ready && cluster.verified && cluster.schedulable {
                eligible.insert(at);
            }
        }

        let mut by_country: HashMap<String, Governing> = HashMap::new();
        let mut index = Vec::with_capacity(policies.len());
        for (at, policy) in policies.iter().enumerate() {
            let denials: Vec<Option<Denial>> = clusters.iter().map(|c| policy.denial(c)).collect();
            let mut allowed = ClusterSet::empty(count);
            for (cluster, denial) in denials.iter().enumerate() {
                if denial.is_none() {
                    allowed.insert(cluster);
                }
            }
            index.push(PolicyIndex { allowed, denials });
            for country in &policy.countries {
                let governing = by_country.entry(country.clone()).or_default();
                match policy.enforcement {
                    Enforcement::Enforce => governing.enforce.push(at),
                    Enforcement::Audit => governing.audit.push(at),
                }
            }
        }

        Engine {
            clusters,
            locations,
            eligible,
            policies,
            index,
            by_country,
        }
    }

    /// The cluster names known to the engine, sorted and without duplicates.
    pub fn cluster_names(&self) -> impl Iterator<Item = &str> {
        self.clusters.iter().map(|c| c.name.as_str())
    }

    /// The policy names known to the engine, sorted and without duplicates.
    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.iter().map(|p| p.name.as_str())
    }

    /// The policies with the given enforcement that govern `country`, sorted by name.
    pub fn policies_governing(&self, country: &str, enforcement: Enforcement) -> Vec<&str> {
        self.by_country
            .get(country)
            .map(|governing| match enforcement {
                Enforcement::Enforce => &governing.enforce,
                Enforcement::Audit => &governing.audit,
            })
            .into_iter()
            .flatten()
            .map(|&at| self.policies[at].name.as_str())
            .collect()
    }

    /// The clusters the policy called `policy` allows on its own (regardless of their health),
    /// sorted; `None` if there is no such policy.
    pub fn clusters_allowed_by(&self, policy: &str) -> Option<Vec<&str>> {
        let at = self
            .policies
            .binary_search_by(|p| p.name.as_str().cmp(policy))
            .ok()?;
        Some(self.names(&self.index[at].allowed))
    }

    /// The clusters that are ready, verified and schedulable, sorted.
    pub fn eligible_clusters(&self) -> Vec<&str> {
        self.names(&self.eligible)
    }

    /// Decides where `workload` may be placed. See the module documentation for the rules.
    pub fn decide(&self, workload: &WorkloadFacts) -> Decision {
        let mut ungoverned = Vec::new();
        let mut enforce_pairs: Vec<(usize, &str)> = Vec::new();
        let mut audit_pairs: Vec<(usize, &str)> = Vec::new();
        for country in &workload.countries {
            match self.by_country.get(country.as_str()) {
                Some(governing) => {
                    enforce_pairs.extend(governing.enforce.iter().map(|&p| (p, country.as_str())));
                    audit_pairs.extend(governing.audit.iter().map(|&p| (p, country.as_str())));
                }
                None => ungoverned.push(country.clone()),
            }
        }
        let mode = if enforce_pairs.is_empty() {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        let mut governing: Vec<usize> = enforce_pairs
            .iter()
            .chain(&audit_pairs)
            .map(|&(policy, _)| policy)
            .collect();
        governing.sort_unstable();
        governing.dedup();
        let governing_policies: Vec<String> = governing
            .iter()
            .map(|&p| self.policies[p].name.clone())
            .collect();

        if workload.countries.is_empty() || !ungoverned.is_empty() {
            return self.default_deny(mode, ungoverned, governing_policies);
        }

        let enforce = participants(enforce_pairs);
        let audit = participants(audit_pairs);
        let used = match mode {
            Mode::Enforce => &enforce,
            Mode::Audit => &audit,
        };

        let mut allowed = ClusterSet::full(self.clusters.len());
        for participant in used {
            allowed.intersect_with(&self.index[participant.policy].allowed);
        }
        let targets = allowed.intersection(&self.eligible);
        let outcome = if allowed.is_empty() {
            Outcome::Conflict {
                policies: used
                    .iter()
                    .map(|participant| ConflictEntry {
                        policy: self.policies[participant.policy].name.clone(),
                        countries: participant
                            .countries
                            .iter()
                            .map(|c| c.to_string())
                            .collect(),
                        allows: self
                            .names(&self.index[participant.policy].allowed)
                            .into_iter()
                            .map(str::to_string)
                            .collect(),
                    })
                    .collect(),
            }
        } else if targets.is_empty() {
            Outcome::NoEligibleCluster
        } else {
            Outcome::Placeable
        };

        let allowed_by = used
            .iter()
            .map(|participant| self.policies[participant.policy].name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let clusters = self
            .clusters
            .iter()
            .enumerate()
            .map(|(at, cluster)| {
                let (verdict, reason) = if !allowed.contains(at) {
                    (Verdict::Forbidden, self.forbidden_reason(at, used))
                } else if targets.contains(at) {
                    (
                        Verdict::Target,
                        format!(
                            "{}: allowed by {allowed_by} ({})",
                            cluster.name, self.locations[at]
                        ),
                    )
                } else {
                    let because = ineligibility(cluster);
                    let text = because
                        .iter()
                        .map(|b| b.text())
                        .collect::<Vec<_>>()
                        .join(", ");
                    (
                        Verdict::AllowedNotEligible { because },
                        format!(
                            "{}: allowed by {allowed_by}, but not a target: {text}",
                            cluster.name
                        ),
                    )
                };
                ClusterVerdict {
                    name: cluster.name.clone(),
                    verdict,
                    reason,
                }
            })
            .collect();

        let audit_findings = match mode {
            Mode::Enforce => self.audit_findings(&targets, &audit),
            Mode::Audit => Vec::new(),
        };

        Decision {
            mode,
            outcome,
            targets: self.owned_names(&targets),
            allowed: self.owned_names(&allowed),
            clusters,
            audit_findings,
            governing_policies,
        }
    }

    /// The decision when some country is ungoverned (or none is declared).
    fn default_deny(
        &self,
        mode: Mode,
        ungoverned: Vec<String>,
        governing_policies: Vec<String>,
    ) -> Decision {
        let outcome = Outcome::NoPolicy {
            countries: ungoverned,
        };
        let why = outcome.message();
        let clusters = self
            .clusters
            .iter()
            .map(|cluster| ClusterVerdict {
                name: cluster.name.clone(),
                verdict: Verdict::Forbidden,
                reason: format!("{}: forbidden: {why}", cluster.name),
            })
            .collect();
        Decision {
            mode,
            outcome,
            targets: Vec::new(),
            allowed: Vec::new(),
            clusters,
            audit_findings: Vec::new(),
            governing_policies,
        }
    }

    /// The reason for a cluster outside the allowed set: the first forbidding policy by name,
    /// plus how many others forbid it too.
    fn forbidden_reason(&self, cluster: usize, used: &[Participant<'_>]) -> String {
        let name = &self.clusters[cluster].name;
        let mut forbidding = used
            .iter()
            .filter_map(|p| self.index[p.policy].denials[cluster].map(|denial| (p, denial)));
        let Some((first, denial)) = forbidding.next() else {
            return format!("{name}: forbidden");
        };
        let more = forbidding.count();
        let policy = &self.policies[first.policy].name;
        let country = first.countries.first().copied().unwrap_or_default();
        let location = &self.locations[cluster];
        let mut reason = match denial {
            Denial::Location => {
                format!("{name}: forbidden: {location} not allowed for {country} by {policy}")
            }
            Denial::Selector => format!(
                "{name}: forbidden: labels do not match the clusterSelector of {policy} \
                 ({country})"
            ),
            Denial::NoCriteria => format!(
                "{name}: forbidden: {policy} ({country}) has neither allowedLocations nor a \
                 clusterSelector, so it allows no cluster"
            ),
        };
        if more > 0 {
            reason.push_str(&format!(" (and {more} more)"));
        }
        reason
    }

    /// For each target, each Audit policy that would forbid it, once per governed country.
    fn audit_findings(&self, targets: &ClusterSet, audit: &[Participant<'_>]) -> Vec<AuditFinding> {
        let mut findings = Vec::new();
        for cluster in targets.iter() {
            let name = &self.clusters[cluster].name;
            let location = &self.locations[cluster];
            for participant in audit {
                let Some(denial) = self.index[participant.policy].denials[cluster] else {
                    continue;
                };
                let policy = &self.policies[participant.policy].name;
                for &country in &participant.countries {
                    let why = match denial {
                        Denial::Location => format!("{location} not allowed for {country}"),
                        Denial::Selector => {
                            format!("labels do not match its clusterSelector ({country})")
                        }
                        Denial::NoCriteria => format!(
                            "it has neither allowedLocations nor a clusterSelector ({country})"
                        ),
                    };
                    findings.push(AuditFinding {
                        cluster: name.clone(),
                        policy: policy.clone(),
                        country: country.to_string(),
                        message: format!("{name} would be forbidden by {policy} (Audit): {why}"),
                    });
                }
            }
        }
        findings
    }

    fn names(&self, set: &ClusterSet) -> Vec<&str> {
        set.iter()
            .map(|at| self.clusters[at].name.as_str())
            .collect()
    }

    fn owned_names(&self, set: &ClusterSet) -> Vec<String> {
        set.iter()
            .map(|at| self.clusters[at].name.clone())
            .collect()
    }
}

/// Groups `(policy, country)` pairs by policy, in policy (name) order with sorted countries.
fn participants(mut pairs: Vec<(usize, &str)>) -> Vec<Participant<'_>> {
    pairs.sort_unstable();
    let mut result: Vec<Participant<'_>> = Vec::new();
    for (policy, country) in pairs {
        match result.last_mut() {
            Some(last) if last.policy == policy => last.countries.push(country),
            _ => result.push(Participant {
                policy,
                countries: vec![country],
            }),
        }
    }
    result
}

/// Why an allowed cluster is not eligible, in a fixed order.
fn ineligibility(cluster: &ClusterFacts) -> Vec<Ineligibility> {
    let mut because = Vec::new();
    if !cluster.ready {
        because.push(Ineligibility::NotReady);
    }
    if !cluster.verified {
        because.push(Ineligibility::LocationNotVerified);
    }
    if !cluster.schedulable {
        because.push(Ineligibility::Cordoned);
    }
    because
}
