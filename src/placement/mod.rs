//! The pure placement engine: which clusters may hold a workload's data.
//!
//! This module is the reference for the placement rules of the operator. It knows nothing about
//! Kubernetes clients: callers translate their objects into the plain input types
//! ([`ClusterFacts`], [`PolicyFacts`], [`WorkloadFacts`]) and get back a [`Decision`] that they
//! can act on, put into status conditions and keep as evidence.
//!
//! # Inputs
//!
//! * A **cluster** has a name, labels, an ISO 3166-1 alpha-2 `country` (e.g. `CH`), a `region`
//!   (e.g. `zurich`) and three health flags: `ready`, `verified` (its location is attested) and
//!   `schedulable` (not cordoned).
//! * A **policy** governs a set of `countries` and says where their data may live:
//!   `allowed_locations` (a country, optionally narrowed to one region) and/or a
//!   `cluster_selector` (a Kubernetes label selector). Its `enforcement` is
//!   [`Enforcement::Enforce`] or [`Enforcement::Audit`].
//! * A **workload** declares the countries whose data it holds.
//!
//! Country codes, regions, names and labels are compared exactly (case-sensitive); normalising
//! them is the caller's job (validation happens elsewhere).
//!
//! # What a policy allows
//!
//! A policy allows cluster `k` iff
//!
//! * `allowed_locations` is empty, or some location has `country == k.country` and either no
//!   region or `region == k.region`; **and**
//! * `cluster_selector` is absent, or it matches `k.labels` (standard Kubernetes semantics, see
//!   [`Selector`]).
//!
//! A policy with neither locations nor a selector allows nothing (validation normally rejects it).
//!
//! # Deciding a workload with countries `C`
//!
//! 1. **Default deny.** For each country `c` in `C`, the governing policies are those whose
//!    `countries` contain `c`: the Enforce policies `E(c)` and the Audit policies `A(c)`. If some
//!    country has no governing policy at all, the outcome is [`Outcome::NoPolicy`] listing every
//!    ungoverned country (sorted), nothing is allowed and every cluster is forbidden with the reason
//!    `"x: forbidden: no policy governs BD (default deny)"`. A workload that declares no country
//!    at all is treated the same way (`NoPolicy` with an empty list).
//! 2. **Mode.** If at least one country of `C` has an Enforce policy, the mode is
//!    [`Mode::Enforce`] and the allowed set is the intersection of `allowed(p)` over every Enforce
//!    policy `p` governing some country of `C`; countries governed only by Audit policies do not
//!    restrict placement. Otherwise the mode is [`Mode::Audit`] and the allowed set is computed
//!    the same way from the Audit policies: it is reported, but
//!    [`Decision::writes_allowed`] is `false` and the caller writes nothing. The mode is computed
//!    this way for every outcome, including `NoPolicy` (a workload whose governed countries only
//!    have Audit policies is in Audit mode even when another country is ungoverned).
//! 3. **Conflict.** If every country is governed but the allowed set is empty, the outcome is
//!    [`Outcome::Conflict`], naming every policy that took part in the intersection (sorted by
//!    name) with the workload countries it governs and the clusters it allows on its own.
//! 4. **Targets** are the allowed clusters that are ready, verified and schedulable (sorted by
//!    name). Allowed clusters but no target gives [`Outcome::NoEligibleCluster`]; otherwise the
//!    outcome is [`Outcome::Placeable`].
//! 5. **Verdicts.** Every cluster gets exactly one [`ClusterVerdict`]: [`Verdict::Target`],
//!    [`Verdict::AllowedNotEligible`] (listing not ready / location not verified / cordoned) or
//!    [`Verdict::Forbidden`], with a one-line reason that starts with the cluster name:
//!    * `"zrh-1: allowed by apac-to-zurich (CH/zurich)"` (all policies of the intersection);
//!    * `"zrh-2: allowed by apac-to-zurich, but not a target: location not verified"`;
//!    * `"msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"`;
//!    * `"msk-1: forbidden: labels do not match the clusterSelector of apac-to-zurich (AU)"`;
//!    * `"x: forbidden: p (AU) has neither allowedLocations nor a clusterSelector, so it allows no
//!      cluster"`.
//!
//!    A location mismatch is reported before a selector mismatch. When several policies forbid
//!    a cluster, the reason names the first one by policy name, with the first (alphabetical)
//!    workload country it governs, and appends `" (and N more)"` where `N` counts the other
//!    forbidding policies. Only the policies of the decision's mode count: in Enforce mode an
//!    Audit policy never forbids, it produces findings instead.
//! 6. **Audit findings.** In Enforce mode, for every target cluster, every Audit policy governing
//!    a country of `C` that does not allow that cluster yields one [`AuditFinding`] per workload
//!    country it governs, e.g. `"zrh-1 would be forbidden by apac-audit (Audit): CH/zurich not
//!    allowed for AU"`. Findings are sorted by cluster, policy, country. In Audit mode the
//!    decision itself (targets, verdicts) is the report and `audit_findings` is always empty.
//!    Findings are only computed when the outcome is `Placeable` (there are no targets otherwise).
//! 7. **Determinism.** The decision does not depend on the order of the input slices: clusters
//!    and policies are sorted by name (then by their remaining fields). When several inputs share
//!    a name, only the first after that sort is used and the others are ignored; in particular
//!    [`Decision::clusters`] has one verdict per distinct cluster name.
//!
//! [`Decision::governing_policies`] lists every policy (Enforce and Audit) that governs at least
//! one country of the workload, sorted by name. [`Decision::allowed`] and [`Decision::targets`]
//! are empty for `NoPolicy` and `Conflict`.
//!
//! # Use
//!
//! Build an [`Engine`] once per change of policies or clusters and call [`Engine::decide`] for
//! each workload; it precomputes, per policy, the set of clusters it allows as a bitset and an
//! index from country to governing policies, so that a decision costs
//! `O(clusters x governing policies)`. [`decide`] is a one-shot convenience.
//!
//! A caller places a workload only when [`Decision::writes_allowed`] (Enforce mode) and
//! [`Decision::is_placeable`] both hold; [`Decision::reason`] and [`Decision::summary`] are meant
//! for status conditions.

mod bitset;
mod decision;
mod engine;
mod facts;
mod selector;

#[cfg(test)]
pub(crate) mod proptests;
#[cfg(test)]
mod tests;

pub use decision::{
    AuditFinding, ClusterVerdict, ConflictEntry, Decision, Ineligibility, Mode, Outcome, Verdict,
};
pub use engine::Engine;
pub use facts::{ClusterFacts, Enforcement, Location, PolicyFacts, WorkloadFacts};
pub use selector::{Selector, SelectorOperator, SelectorRequirement};

/// Decides one workload against the given policies and clusters.
///
/// This builds an [`Engine`] for a single decision; build the engine yourself with
/// [`Engine::new`] when deciding several workloads against the same policies and clusters.
pub fn decide(
    policies: &[PolicyFacts],
    clusters: &[ClusterFacts],
    workload: &WorkloadFacts,
) -> Decision {
    Engine::new(policies, clusters).decide(workload)
}
