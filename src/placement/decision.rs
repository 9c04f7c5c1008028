//! The engine's output: a [`Decision`] about one workload.

use std::fmt;

use serde::Serialize;

/// Which policies decided the allowed clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Mode {
    /// At least one country of the workload has an Enforce policy: the decision may be applied.
    Enforce,
    /// Only Audit policies govern the workload's countries: the decision is a report only.
    Audit,
}

/// The overall result of deciding a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Outcome {
    /// At least one allowed cluster is ready, verified and schedulable.
    Placeable,
    /// Default deny: these countries of the workload (sorted) have no governing policy. Empty
    /// when the workload declares no country.
    NoPolicy {
        /// The ungoverned countries, sorted.
        countries: Vec<String>,
    },
    /// Every country is governed, but no cluster is allowed by all the policies that apply.
    Conflict {
        /// Every policy that took part in the intersection, sorted by name.
        policies: Vec<ConflictEntry>,
    },
    /// Some clusters are allowed, but none of them is ready, verified and schedulable.
    NoEligibleCluster,
}

/// One policy taking part in a [`Outcome::Conflict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConflictEntry {
    /// The policy name.
    pub policy: String,
    /// The workload's countries that this policy governs, sorted.
    pub countries: Vec<String>,
    /// The clusters this policy allows on its own (regardless of their health), sorted.
    pub allows: Vec<String>,
}

/// Why an allowed cluster is not a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Ineligibility {
    /// The cluster is not ready.
    NotReady,
    /// The cluster's location is not attested.
    LocationNotVerified,
    /// The cluster is not schedulable.
    Cordoned,
}

impl Ineligibility {
    /// Human-readable text, e.g. `location not verified`.
    pub fn text(self) -> &'static str {
        match self {
            Ineligibility::NotReady => "not ready",
            Ineligibility::LocationNotVerified => "location not verified",
            Ineligibility::Cordoned => "cordoned",
        }
    }
}

impl fmt::Display for Ineligibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What the decision says about one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type")]
pub enum Verdict {
    /// Allowed and eligible: the workload goes (or, in Audit mode, would go) here.
    Target,
    /// Allowed by every applicable policy, but not eligible.
    AllowedNotEligible {
        /// Every reason, in the order not ready, location not verified, cordoned.
        because: Vec<Ineligibility>,
    },
    /// Not allowed by at least one applicable policy, or default deny.
    Forbidden,
}

/// The verdict for one cluster, with a one-line reason that starts with the cluster name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterVerdict {
    /// The cluster name.
    pub name: String,
    /// What the decision says about the cluster.
    pub verdict: Verdict,
    /// One line, starting with the cluster name, e.g.
    /// `msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich`.
    pub reason: String,
}

/// An Audit policy that would forbid a target cluster (Enforce mode only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditFinding {
    /// The target cluster.
    pub cluster: String,
    /// The Audit policy that does not allow it.
    pub policy: String,
    /// The workload country the policy governs.
    pub country: String,
    /// One line, e.g. `zrh-1 would be forbidden by apac-audit (Audit): CH/zurich not allowed
    /// for AU`.
    pub message: String,
}

/// The placement decision for one workload. See the module documentation for the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// Whether the decision may be applied ([`Mode::Enforce`]) or is a report ([`Mode::Audit`]).
    pub mode: Mode,
    /// The overall result.
    pub outcome: Outcome,
    /// The allowed clusters that are ready, verified and schedulable, sorted.
    pub targets: Vec<String>,
    /// The clusters allowed by every applicable policy, sorted.
    pub allowed: Vec<String>,
    /// One verdict per distinct cluster name, sorted by name.
    pub clusters: Vec<ClusterVerdict>,
    /// Audit policies that would forbid a target, sorted by cluster, policy, country.
    pub audit_findings: Vec<AuditFinding>,
    /// Every policy (Enforce or Audit) governing a country of the workload, sorted.
    pub governing_policies: Vec<String>,
}

impl Decision {
    /// Whether there is at least one target ([`Outcome::Placeable`]).
    pub fn is_placeable(&self) -> bool {
        self.outcome == Outcome::Placeable
    }

    /// Whether the caller may act on this decision ([`Mode::Enforce`]). In Audit mode the
    /// decision is only reported. A workload is placed when this and
    /// [`is_placeable`](Self::is_placeable) both hold.
    pub fn writes_allowed(&self) -> bool {
        self.mode == Mode::Enforce
    }

    /// A stable CamelCase reason for status conditions: `Placeable`, `NoPolicyForCountry`,
    /// `PolicyConflict` or `NoEligibleCluster`. The mode does not change it.
    pub fn reason(&self) -> &'static str {
        self.outcome.reason()
    }

    /// The verdict for the cluster called `name`, if it was given.
    pub fn verdict(&self, name: &str) -> Option<&ClusterVerdict> {
        self.clusters
            .binary_search_by(|verdict| verdict.name.as_str().cmp(name))
            .ok()
            .map(|at| &self.clusters[at])
    }

    /// One sentence a person can act on, e.g. for a status condition message.
    pub fn summary(&self) -> String {
        let audit = if self.mode == Mode::Audit && !matches!(self.outcome, Outcome::NoPolicy { .. })
        {
            "Audit only, nothing is written: "
        } else {
            ""
        };
        let body = match &self.outcome {
            Outcome::Placeable => {
                let mut text = if audit.is_empty() {
                    format!("Placeable on {}", list(&self.targets))
                } else {
                    format!("would be placeable on {}", list(&self.targets))
                };
                let idle: Vec<&str> = self
                    .clusters
                    .iter()
                    .filter(|c| matches!(c.verdict, Verdict::AllowedNotEligible { .. }))
                    .map(|c| c.name.as_str())
                    .collect();
                if !idle.is_empty() {
                    text.push_str("; allowed but not eligible: ");
                    text.push_str(&list(&idle));
                }
                if let Some(first) = self.audit_findings.first() {
                    let more = self.audit_findings.len() - 1;
                    text.push_str(&format!("; audit finding: {}", first.message));
                    if more > 0 {
                        text.push_str(&format!(" (and {more} more)"));
                    }
                }
                text.push('.');
                text
            }
            Outcome::NoPolicy { countries } if countries.is_empty() => {
                "Not placed: the workload declares no country, so no policy governs it (default \
                 deny); declare the countries whose data it holds."
                    .to_string()
            }
            Outcome::NoPolicy { countries } => format!(
                "Not placed: {}; add a residency policy that governs {}.",
                self.outcome.message(),
                countries.join(", ")
            ),
            Outcome::Conflict { .. } => format!(
                "Not placed: {}; change these policies so that at least one cluster satisfies \
                 all of them.",
                self.outcome.message()
            ),
            Outcome::NoEligibleCluster => {
                let idle: Vec<String> = self
                    .clusters
                    .iter()
                    .filter_map(|c| match &c.verdict {
                        Verdict::AllowedNotEligible { because } => Some(format!(
                            "{}: {}",
                            c.name,
                            because
                                .iter()
                                .map(|b| b.text())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )),
                        _ => None,
                    })
                    .collect();
                format!(
                    "Not placed: no allowed cluster is eligible ({}); make one ready, \
                     location-verified and schedulable, or allow another cluster.",
                    list_with(&idle, "; ")
                )
            }
        };
        if audit.is_empty() {
            body
        } else {
            format!(
                "{audit}{}",
                body.replacen("Not placed", "would not be placed", 1)
            )
        }
    }
}

impl Outcome {
    /// The stable CamelCase reason of this outcome; see [`Decision::reason`].
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Placeable => "Placeable",
            Outcome::NoPolicy { .. } => "NoPolicyForCountry",
            Outcome::Conflict { .. } => "PolicyConflict",
            Outcome::NoEligibleCluster => "NoEligibleCluster",
        }
    }

    /// A one-line description, e.g. `no cluster is allowed by every policy: apac-to-zurich
    /// (AU, NZ) allows zrh-1, zrh-2; russia-only (AU) allows msk-1`.
    pub fn message(&self) -> String {
        match self {
            Outcome::Placeable => "at least one allowed cluster is eligible".to_string(),
            Outcome::NoPolicy { countries } if countries.is_empty() => {
                "the workload declares no country (default deny)".to_string()
            }
            Outcome::NoPolicy { countries } => {
                format!("no policy governs {} (default deny)", countries.join(", "))
            }
            Outcome::Conflict { policies } => {
                let entries: Vec<String> = policies
                    .iter()
                    .map(|entry| {
                        let allows = if entry.allows.is_empty() {
                            "allows no cluster".to_string()
                        } else {
                            format!("allows {}", entry.allows.join(", "))
                        };
                        format!("{} ({}) {allows}", entry.policy, entry.countries.join(", "))
                    })
                    .collect();
                format!(
                    "no cluster is allowed by every policy: {}",
                    entries.join("; ")
                )
            }
            Outcome::NoEligibleCluster => {
                "no allowed cluster is ready, location-verified and schedulable".to_string()
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// How many names a summary lists before abbreviating.
const SUMMARY_NAMES: usize = 5;

/// `a, b, c` or `a, b, c, d, e (and 3 more)`.
fn list<S: AsRef<str>>(names: &[S]) -> String {
    list_with(names, ", ")
}

fn list_with<S: AsRef<str>>(names: &[S], separator: &str) -> String {
    let shown: Vec<&str> = names
        .iter()
        .take(SUMMARY_NAMES)
        .map(AsRef::as_ref)
        .collect();
    let mut text = shown.join(separator);
    if names.len() > SUMMARY_NAMES {
        text.push_str(&format!(" (and {} more)", names.len() - SUMMARY_NAMES));
    }
    text
}
