//! The action planner of the workload controller (pure): from the placement decision, the
//! record of what was placed (the workload's `status.placements`), member health and the
//! relocation budget, the list of actions one reconcile executes. The executor in
//! [`super::workload`] only carries them out.
//!
//! The safety rules are properties of [`plan`] and [`plan_cleanup`], tested over random states
//! (see the tests at the end):
//!
//! - nothing is written to a cluster the last probe did not reach;
//! - a copy is removed only from a cluster the policies no longer allow, or that is cordoned:
//!   health is not policy, so an allowed cluster that is not ready or not location-verified
//!   keeps what it has (and gets nothing new);
//! - a copy is removed only once the workload is Ready on every target, and never when there is
//!   no target (the last Ready copy stays);
//! - an eviction deletes what the record says was placed, never what the spec declares now;
//!   under `volumePolicy: Retain` no PersistentVolumeClaim is deleted;
//! - in Audit mode, or when the workload cannot be placed, nothing is written anywhere;
//! - a workload that starts relocating needs a relocation slot; without one it only keeps its
//!   current copies up to date.

use std::collections::BTreeSet;

use crate::api::resident_workload::{Placement, VolumePolicy};
use crate::controller::status::state;
use crate::placement::{Decision, Ineligibility, Mode, Verdict};

/// An object recorded on a member: kind and name.
pub type ObjectKey = (String, String);

/// What one reconcile may rely on.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    /// The placement decision.
    pub decision: &'a Decision,
    /// What was placed, per cluster (the workload's status).
    pub record: &'a [Placement],
    /// The members a write may go to: the last probe reached them and a client exists.
    pub reachable: &'a BTreeSet<String>,
    /// The workload's volume policy.
    pub volume_policy: VolumePolicy,
    /// Whether the workload holds a relocation slot (see [`needs_relocation_slot`]).
    pub relocation_slot: bool,
    /// Targets that wait for the workload's data (see [`data_move`]), with why.
    pub awaiting_data: &'a std::collections::BTreeMap<String, String>,
}

/// Why a cluster's copy is kept as it is, with nothing written there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The cluster is allowed but not eligible (not ready, not location-verified): it gets
    /// nothing new and keeps what it has.
    NotEligible(Vec<Ineligibility>),
    /// The last probe did not reach the cluster: nothing can be written there.
    Unreachable,
    /// Make before break: the copy stays until the workload is Ready on these targets.
    AwaitingTargets(Vec<String>),
    /// Governed only by Audit policies, or not placeable (no target at all, so the last copy
    /// stays): nothing is written.
    NotEnforced,
    /// The MemberCluster is gone: the copy there can no longer be verified or removed.
    ClusterRemoved,
    /// A new target waits until the workload's data has been copied there and verified
    /// (`spec.dataMigration: CopyAndVerify`): only the move's claims and Pods are there.
    AwaitingData(String),
    /// A new target waits until a relocation slot is free (bounded change).
    RelocationQueued,
}

impl Hold {
    /// Stable CamelCase reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::NotEligible(_) => "NotEligible",
            Hold::Unreachable => "ClusterUnreachable",
            Hold::AwaitingTargets(_) => "AwaitingTargets",
            Hold::NotEnforced => "NotEnforced",
            Hold::ClusterRemoved => "ClusterRemoved",
            Hold::RelocationQueued => "RelocationQueued",
            Hold::AwaitingData(_) => "AwaitingData",
        }
    }
}

/// One step of a reconcile on one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Apply the workload's objects on a target (create, update, correct drift).
    Apply {
        /// The target.
        cluster: String,
    },
    /// Remove the copy on a cluster the workload left.
    Evict {
        /// The cluster left.
        cluster: String,
        /// Objects the record lists there, to delete (never a PVC under `Retain`).
        delete: Vec<ObjectKey>,
        /// Whether volumes are kept (labelled retained) or deleted.
        volumes: VolumePolicy,
    },
    /// Re-read the retained volumes recorded on a cluster (read only).
    CheckRetained {
        /// The cluster.
        cluster: String,
    },
    /// Keep the recorded copy (if any) as it is; write nothing there.
    Hold {
        /// The cluster.
        cluster: String,
        /// Why.
        why: Hold,
    },
}

impl Action {
    /// The cluster the action is about.
    pub fn cluster(&self) -> &str {
        match self {
            Action::Apply { cluster }
            | Action::Evict { cluster, .. }
            | Action::CheckRetained { cluster }
            | Action::Hold { cluster, .. } => cluster,
        }
    }

    /// Whether the action writes to its cluster.
    pub fn writes(&self) -> bool {
        matches!(self, Action::Apply { .. } | Action::Evict { .. })
    }
}

const PVC: &str = "PersistentVolumeClaim";

fn recorded<'a>(record: &'a [Placement], cluster: &str) -> Option<&'a Placement> {
    record.iter().find(|p| p.cluster == cluster)
}

/// Whether the policies (not health) say the workload must leave `cluster`: forbidden, or
/// allowed but cordoned. `None` when the decision does not know the cluster (it was removed).
fn must_leave(decision: &Decision, cluster: &str) -> Option<bool> {
    decision.verdict(cluster).map(|v| match &v.verdict {
        Verdict::Target => false,
        Verdict::Forbidden => true,
        Verdict::AllowedNotEligible { because } => because.contains(&Ineligibility::Cordoned),
    })
}

/// Whether the workload is Ready on every target, per the record.
fn ready_everywhere(decision: &Decision, record: &[Placement]) -> bool {
    !decision.targets.is_empty()
        && decision
            .targets
            .iter()
            .all(|t| recorded(record, t).is_some_and(|p| p.state == state::READY))
}

/// Clusters holding a live (not only retained) copy that the policies say the workload must
/// leave.
fn departures(decision: &Decision, record: &[Placement]) -> Vec<String> {
    let mut out: Vec<String> = record
        .iter()
        .filter(|p| p.state != state::RETAINED)
        .filter(|p| !decision.targets.contains(&p.cluster))
        .filter(|p| must_leave(decision, &p.cluster) == Some(true))
        .map(|p| p.cluster.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The data move a relocation needs (`spec.dataMigration: CopyAndVerify`): from the live copy
/// on a member the workload must leave (a Ready one first) to the targets that hold no copy
/// yet (or only retained volumes). `None` when nothing leaves or every target has a copy.
pub fn data_move(decision: &Decision, record: &[Placement]) -> Option<(String, Vec<String>)> {
    if decision.mode != Mode::Enforce || !decision.is_placeable() {
        return None;
    }
    let leaving = departures(decision, record);
    let source = leaving
        .iter()
        .find(|c| recorded(record, c).is_some_and(|p| p.state == state::READY))
        .or(leaving.first())?
        .clone();
    let destinations: Vec<String> = decision
        .targets
        .iter()
        .filter(|t| {
            recorded(record, t)
                .is_none_or(|p| p.state == state::RETAINED || p.state == state::PENDING)
        })
        .cloned()
        .collect();
    (!destinations.is_empty()).then_some((source, destinations))
}

/// Whether the workload is relocating, so that placing it on a new target needs one of the
/// operator's relocation slots: it must leave a cluster and is not yet on every target.
pub fn needs_relocation_slot(decision: &Decision, record: &[Placement]) -> bool {
    decision.mode == Mode::Enforce
        && decision.is_placeable()
        && !departures(decision, record).is_empty()
}

/// What to delete when leaving a cluster: what the record lists there, PVCs only under `Purge`.
fn eviction(cluster: &str, record: &Placement, volume_policy: VolumePolicy) -> Action {
    let retain = volume_policy == VolumePolicy::Retain;
    let mut delete: Vec<ObjectKey> = record
        .objects
        .iter()
        .filter(|o| !(retain && o.kind == PVC))
        .map(|o| (o.kind.clone(), o.name.clone()))
        .collect();
    delete.sort();
    delete.dedup();
    Action::Evict {
        cluster: cluster.to_string(),
        delete,
        volumes: volume_policy,
    }
}

/// The actions of one reconcile, one per cluster that is a target or holds a recorded copy,
/// sorted by cluster.
///
/// The executor runs the `Apply` actions, records what it observed, and plans again: the
/// evictions it executes come from that second plan, so make before break uses the readiness
/// just observed.
pub fn plan(input: &Input<'_>) -> Vec<Action> {
    let d = input.decision;
    let mut clusters: BTreeSet<&str> = input.record.iter().map(|p| p.cluster.as_str()).collect();
    let enforced = d.mode == Mode::Enforce && d.is_placeable();
    if enforced {
        clusters.extend(d.targets.iter().map(String::as_str));
    }
    let ready = ready_everywhere(d, input.record);
    let relocating = needs_relocation_slot(d, input.record);
    clusters
        .into_iter()
        .map(|cluster| {
            let hold = |why| Action::Hold {
                cluster: cluster.to_string(),
                why,
            };
            let record = recorded(input.record, cluster);
            let reachable = input.reachable.contains(cluster);
            if let Some(r) = record.filter(|r| r.state == state::RETAINED)
                && !(enforced && d.targets.iter().any(|t| t == &r.cluster))
            {
                return if reachable && d.verdict(cluster).is_some() {
                    Action::CheckRetained {
                        cluster: cluster.to_string(),
                    }
                } else if d.verdict(cluster).is_none() {
                    hold(Hold::ClusterRemoved)
                } else {
                    hold(Hold::Unreachable)
                };
            }
            if !enforced {
                return hold(Hold::NotEnforced);
            }
            let leave = match must_leave(d, cluster) {
                None => return hold(Hold::ClusterRemoved),
                Some(leave) => leave,
            };
            if d.targets.iter().any(|t| t == cluster) {
                if !reachable {
                    return hold(Hold::Unreachable);
                }
                // a relocating workload without a slot only keeps its current copies up to date
                if relocating && !input.relocation_slot && record.is_none() {
                    return hold(Hold::RelocationQueued);
                }
                if let Some(why) = input.awaiting_data.get(cluster) {
                    return hold(Hold::AwaitingData(why.clone()));
                }
                return Action::Apply {
                    cluster: cluster.to_string(),
                };
            }
            if !leave {
                let because = match d.verdict(cluster).map(|v| &v.verdict) {
                    Some(Verdict::AllowedNotEligible { because }) => because.clone(),
                    _ => Vec::new(),
                };
                return hold(Hold::NotEligible(because));
            }
            if !reachable {
                return hold(Hold::Unreachable);
            }
            // enforced: there is at least one target
            if !ready {
                let waiting = d
                    .targets
                    .iter()
                    .filter(|t| recorded(input.record, t).is_none_or(|p| p.state != state::READY))
                    .cloned()
                    .collect();
                return hold(Hold::AwaitingTargets(waiting));
            }
            // every cluster here is a target or holds a recorded copy
            match record {
                Some(r) => eviction(cluster, r, input.volume_policy),
                None => hold(Hold::NotEnforced),
            }
        })
        .collect()
}

/// The actions of deleting the workload (the cleanup finalizer), sorted by cluster: every
/// recorded copy is removed where it can be; `abandoned` names clusters a person declared gone
/// for good, whose copies are released unverified instead of blocking the deletion.
pub fn plan_cleanup(
    record: &[Placement],
    known: &BTreeSet<String>,
    reachable: &BTreeSet<String>,
    abandoned: &BTreeSet<String>,
    volume_policy: VolumePolicy,
) -> Vec<Cleanup> {
    let mut out: Vec<Cleanup> = record
        .iter()
        .filter(|p| p.state != state::RETAINED)
        .map(|p| {
            let c = p.cluster.clone();
            if known.contains(&c) && reachable.contains(&c) {
                Cleanup::Remove(eviction(&c, p, volume_policy))
            } else if abandoned.contains(&c) {
                Cleanup::Abandon { cluster: c }
            } else {
                Cleanup::Blocked {
                    cluster: c,
                    removed: !known.contains(&p.cluster),
                }
            }
        })
        .collect();
    out.sort_by(|a, b| a.cluster().cmp(b.cluster()));
    out.dedup_by(|a, b| a.cluster() == b.cluster());
    out
}

/// One step of the cleanup on one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// Remove the copy (an [`Action::Evict`]).
    Remove(Action),
    /// A person declared the cluster gone for good: release the workload, record the copy as
    /// unverifiable (Event), write nothing there.
    Abandon {
        /// The cluster.
        cluster: String,
    },
    /// The copy cannot be removed yet: the cluster is unreachable or its MemberCluster is gone.
    Blocked {
        /// The cluster.
        cluster: String,
        /// Whether its MemberCluster was deleted.
        removed: bool,
    },
}

impl Cleanup {
    /// The cluster the step is about.
    pub fn cluster(&self) -> &str {
        match self {
            Cleanup::Remove(a) => a.cluster(),
            Cleanup::Abandon { cluster } | Cleanup::Blocked { cluster, .. } => cluster,
        }
    }
}

/// The annotation on a ResidentWorkload naming member clusters that are gone for good
/// (comma-separated): deleting the workload no longer waits for them.
pub const ABANDON_ANNOTATION: &str = "residency.io/abandon-clusters";

/// The clusters named by [`ABANDON_ANNOTATION`] (pure).
pub fn abandoned(annotations: &std::collections::BTreeMap<String, String>) -> BTreeSet<String> {
    annotations
        .get(ABANDON_ANNOTATION)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resident_workload::ObjectStatus;
    use crate::placement::{ClusterFacts, Enforcement, Location, PolicyFacts, WorkloadFacts};
    use proptest::prelude::*;

    const NAMES: [&str; 4] = ["zrh-1", "zrh-2", "msk-1", "fra-1"];

    #[derive(Clone, Debug)]
    struct ClusterState {
        country: &'static str,
        ready: bool,
        verified: bool,
        schedulable: bool,
        exists: bool,
        reachable: bool,
        recorded: Option<&'static str>,
    }

    fn cluster_state() -> impl Strategy<Value = ClusterState> {
        (
            prop::sample::select(vec!["CH", "RU", "DE"]),
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.8),
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.8),
            prop::option::of(prop::sample::select(vec![
                state::READY,
                state::APPLIED,
                state::EVICTING,
                state::RETAINED,
                state::UNKNOWN,
                state::FAILED,
            ])),
        )
            .prop_map(
                |(country, ready, verified, schedulable, exists, reachable, recorded)| {
                    ClusterState {
                        country,
                        ready,
                        verified,
                        schedulable,
                        exists,
                        reachable,
                        recorded,
                    }
                },
            )
    }

    fn objects(with_pvc: bool) -> Vec<ObjectStatus> {
        let mut o = vec![ObjectStatus {
            api_version: None,
            kind: "StatefulSet".into(),
            name: "db".into(),
            ready: true,
            message: String::new(),
        }];
        if with_pvc {
            o.push(ObjectStatus {
                api_version: None,
                kind: PVC.into(),
                name: "data".into(),
                ready: true,
                message: String::new(),
            });
        }
        o
    }

    struct World {
        decision: Decision,
        record: Vec<Placement>,
        reachable: BTreeSet<String>,
        known: BTreeSet<String>,
    }

    fn world(states: &[ClusterState], allow: &[&str], audit: bool, with_pvc: bool) -> World {
        let clusters: Vec<ClusterFacts> = states
            .iter()
            .zip(NAMES)
            .filter(|(s, _)| s.exists)
            .map(|(s, name)| ClusterFacts {
                name: name.into(),
                labels: Default::default(),
                country: s.country.into(),
                region: "r".into(),
                ready: s.ready,
                verified: s.verified,
                schedulable: s.schedulable,
            })
            .collect();
        let policy = PolicyFacts {
            name: "p".into(),
            countries: BTreeSet::from(["AU".to_string()]),
            allowed_locations: allow
                .iter()
                .map(|c| Location {
                    country: (*c).into(),
                    region: None,
                })
                .collect(),
            cluster_selector: None,
            enforcement: if audit {
                Enforcement::Audit
            } else {
                Enforcement::Enforce
            },
        };
        let w = WorkloadFacts {
            namespace: "t".into(),
            name: "w".into(),
            countries: BTreeSet::from(["AU".to_string()]),
        };
        let decision = crate::placement::decide(&[policy], &clusters, &w);
        let record = states
            .iter()
            .zip(NAMES)
            .filter_map(|(s, name)| {
                s.recorded.map(|st| Placement {
                    cluster: name.into(),
                    state: st.into(),
                    message: String::new(),
                    objects: objects(with_pvc),
                    evidence: None,
                })
            })
            .collect();
        let reachable = states
            .iter()
            .zip(NAMES)
            .filter(|(s, _)| s.exists && s.reachable)
            .map(|(_, n)| n.to_string())
            .collect();
        let known = states
            .iter()
            .zip(NAMES)
            .filter(|(s, _)| s.exists)
            .map(|(_, n)| n.to_string())
            .collect();
        World {
            decision,
            record,
            reachable,
            known,
        }
    }

    fn input(w: &World, purge: bool, slot: bool) -> Input<'_> {
        Input {
            decision: &w.decision,
            record: &w.record,
            reachable: &w.reachable,
            volume_policy: if purge {
                VolumePolicy::Purge
            } else {
                VolumePolicy::Retain
            },
            relocation_slot: slot,
            awaiting_data: &NO_DATA_MOVES,
        }
    }

    static NO_DATA_MOVES: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();

    fn arb_world() -> impl Strategy<Value = (Vec<ClusterState>, Vec<&'static str>, bool, bool)> {
        (
            prop::collection::vec(cluster_state(), 4),
            prop::sample::subsequence(vec!["CH", "RU", "DE"], 0..=3),
            prop::bool::weighted(0.2),
            any::<bool>(),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn never_writes_to_an_unreachable_cluster(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            for a in plan(&input(&w, purge, slot)) {
                if a.writes() {
                    prop_assert!(w.reachable.contains(a.cluster()), "{a:?}");
                }
            }
        }

        #[test]
        fn never_evicts_from_a_cluster_the_policies_still_allow(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            for a in plan(&input(&w, purge, slot)) {
                if let Action::Evict { cluster, .. } = &a {
                    let v = w.decision.verdict(cluster).expect("evicted from a known cluster");
                    let cordoned = matches!(&v.verdict,
                        Verdict::AllowedNotEligible { because } if because.contains(&Ineligibility::Cordoned));
                    prop_assert!(
                        !w.decision.allowed.contains(cluster) || cordoned,
                        "evicted from allowed {cluster}: {:?}", v
                    );
                }
            }
        }

        #[test]
        fn evicts_only_once_every_target_is_ready_and_never_the_last_copy(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            let actions = plan(&input(&w, purge, slot));
            if actions.iter().any(|a| matches!(a, Action::Evict { .. })) {
                prop_assert!(!w.decision.targets.is_empty());
                for t in &w.decision.targets {
                    prop_assert!(
                        w.record.iter().any(|p| &p.cluster == t && p.state == state::READY),
                        "evicting while {t} is not Ready"
                    );
                    let evicts_target = actions
                        .iter()
                        .any(|a| matches!(a, Action::Evict { cluster, .. } if cluster == t));
                    prop_assert!(!evicts_target, "evicting target {}", t);
                }
            }
        }

        /// With data moving (CopyAndVerify): a destination is never applied before its data
        /// is verified, the move's source is a cluster the workload must leave and holds a
        /// live copy, and nothing is evicted while a destination waits for its data.
        #[test]
        fn data_moves_start_nothing_unverified_and_keep_the_source(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            let Some((source, destinations)) = data_move(&w.decision, &w.record) else {
                return Ok(());
            };
            let rec = w.record.iter().find(|p| p.cluster == source).expect("the source holds a copy");
            prop_assert!(rec.state != state::RETAINED);
            prop_assert!(!w.decision.allowed.contains(&source) || !w.decision.targets.contains(&source));
            let awaiting = destinations.iter().map(|d| (d.clone(), "copying".to_string())).collect();
            let actions = plan(&Input { awaiting_data: &awaiting, ..input(&w, purge, slot) });
            for a in &actions {
                if let Action::Apply { cluster } = a {
                    prop_assert!(!destinations.contains(cluster), "applied {cluster} before its data");
                }
                prop_assert!(!matches!(a, Action::Evict { .. }), "evicted while data moves: {a:?}");
            }
        }

        #[test]
        fn evictions_delete_only_recorded_objects_and_no_volume_under_retain(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            for a in plan(&input(&w, purge, slot)) {
                if let Action::Evict { cluster, delete, volumes } = &a {
                    let rec = w.record.iter().find(|p| &p.cluster == cluster).expect("recorded");
                    for (kind, name) in delete {
                        prop_assert!(rec.objects.iter().any(|o| &o.kind == kind && &o.name == name));
                        prop_assert!(purge || kind != PVC, "deletes PVC {name} under Retain");
                    }
                    prop_assert_eq!(*volumes == VolumePolicy::Retain, !purge);
                    prop_assert!(rec.state != state::RETAINED);
                }
            }
        }

        #[test]
        fn audit_or_unplaceable_writes_nothing(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            if w.decision.mode == Mode::Audit || !w.decision.is_placeable() {
                prop_assert!(plan(&input(&w, purge, slot)).iter().all(|a| !a.writes()));
            }
        }

        #[test]
        fn applies_only_to_targets_and_keeps_every_recorded_copy_in_view(
            (states, allow, audit, pvc) in arb_world(), purge: bool, slot: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            let actions = plan(&input(&w, purge, slot));
            for a in &actions {
                if let Action::Apply { cluster } = a {
                    prop_assert!(w.decision.targets.contains(cluster));
                }
            }
            for p in &w.record {
                prop_assert!(actions.iter().any(|a| a.cluster() == p.cluster), "{} dropped", p.cluster);
            }
        }

        #[test]
        fn without_a_slot_a_relocation_starts_nothing_new(
            (states, allow, audit, pvc) in arb_world(), purge: bool
        ) {
            let w = world(&states, &allow, audit, pvc);
            if needs_relocation_slot(&w.decision, &w.record) {
                for a in plan(&input(&w, purge, false)) {
                    if let Action::Apply { cluster } = &a {
                        prop_assert!(w.record.iter().any(|p| &p.cluster == cluster), "new target {cluster}");
                    }
                }
            }
        }

        #[test]
        fn cleanup_writes_only_where_reachable_and_blocks_elsewhere_unless_abandoned(
            (states, allow, audit, pvc) in arb_world(), purge: bool,
            abandon in prop::sample::subsequence(NAMES.to_vec(), 0..=4)
        ) {
            let w = world(&states, &allow, audit, pvc);
            let abandoned: BTreeSet<String> = abandon.iter().map(|s| s.to_string()).collect();
            let vp = if purge { VolumePolicy::Purge } else { VolumePolicy::Retain };
            let steps = plan_cleanup(&w.record, &w.known, &w.reachable, &abandoned, vp);
            for s in &steps {
                match s {
                    Cleanup::Remove(a) => prop_assert!(w.reachable.contains(a.cluster()) && w.known.contains(a.cluster())),
                    Cleanup::Abandon { cluster } => prop_assert!(abandoned.contains(cluster)),
                    Cleanup::Blocked { cluster, .. } => prop_assert!(!abandoned.contains(cluster)),
                }
            }
            for p in w.record.iter().filter(|p| p.state != state::RETAINED) {
                prop_assert!(steps.iter().any(|s| s.cluster() == p.cluster));
            }
        }
    }

    #[test]
    fn the_random_states_reach_every_kind_of_action() {
        // the properties above are not vacuous: the generated states produce evictions, holds
        // of each kind, applies and queued relocations
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let mut seen: BTreeSet<&'static str> = BTreeSet::new();
        for _ in 0..2000 {
            let (states, allow, audit, pvc) = arb_world().new_tree(&mut runner).unwrap().current();
            let w = world(&states, &allow, audit, pvc);
            for a in plan(&input(&w, false, false)) {
                seen.insert(match a {
                    Action::Apply { .. } => "apply",
                    Action::Evict { .. } => "evict",
                    Action::CheckRetained { .. } => "check-retained",
                    Action::Hold { why, .. } => why.reason(),
                });
            }
        }
        for kind in [
            "apply",
            "evict",
            "check-retained",
            "NotEligible",
            "ClusterUnreachable",
            "AwaitingTargets",
            "NotEnforced",
            "ClusterRemoved",
            "RelocationQueued",
        ] {
            assert!(seen.contains(kind), "no {kind} in {seen:?}");
        }
    }

    fn all_ok() -> ClusterState {
        ClusterState {
            country: "CH",
            ready: true,
            verified: true,
            schedulable: true,
            exists: true,
            reachable: true,
            recorded: Some(state::READY),
        }
    }

    #[test]
    fn an_unverified_allowed_cluster_keeps_its_copy() {
        // zrh-2 flapped to an unattested region: it gets nothing new and loses nothing
        let zrh2 = ClusterState {
            verified: false,
            ..all_ok()
        };
        let msk = ClusterState {
            country: "RU",
            recorded: None,
            ..all_ok()
        };
        let fra = ClusterState {
            exists: false,
            recorded: None,
            ..all_ok()
        };
        let w = world(&[all_ok(), zrh2, msk, fra], &["CH"], false, true);
        let actions = plan(&input(&w, false, true));
        assert_eq!(
            actions,
            [
                Action::Apply {
                    cluster: "zrh-1".into()
                },
                Action::Hold {
                    cluster: "zrh-2".into(),
                    why: Hold::NotEligible(vec![Ineligibility::LocationNotVerified])
                },
            ]
        );
    }

    #[test]
    fn a_relocation_waits_for_every_target_then_deletes_the_record_keeping_volumes() {
        let new = |st| ClusterState {
            recorded: st,
            ..all_ok()
        };
        let msk = ClusterState {
            country: "RU",
            ..all_ok()
        };
        let fra = ClusterState {
            exists: false,
            recorded: None,
            ..all_ok()
        };
        let w = world(
            &[
                new(Some(state::READY)),
                new(Some(state::APPLIED)),
                msk.clone(),
                fra.clone(),
            ],
            &["CH"],
            false,
            true,
        );
        let a = plan(&input(&w, false, true));
        assert_eq!(
            a[0],
            Action::Hold {
                cluster: "msk-1".into(),
                why: Hold::AwaitingTargets(vec!["zrh-2".into()])
            }
        );
        let w = world(
            &[new(Some(state::READY)), new(Some(state::READY)), msk, fra],
            &["CH"],
            false,
            true,
        );
        let a = plan(&input(&w, false, true));
        assert_eq!(
            a[0],
            Action::Evict {
                cluster: "msk-1".into(),
                delete: vec![("StatefulSet".into(), "db".into())],
                volumes: VolumePolicy::Retain
            }
        );
    }

    #[test]
    fn abandoned_clusters_release_the_cleanup() {
        let record = [Placement {
            cluster: "msk-1".into(),
            state: state::READY.into(),
            message: String::new(),
            objects: objects(true),
            evidence: None,
        }];
        let none = BTreeSet::new();
        let known = BTreeSet::from(["msk-1".to_string()]);
        let steps = plan_cleanup(&record, &known, &none, &none, VolumePolicy::Retain);
        assert_eq!(
            steps,
            [Cleanup::Blocked {
                cluster: "msk-1".into(),
                removed: false
            }]
        );
        let annotations =
            BTreeMap::from([(ABANDON_ANNOTATION.to_string(), " msk-1 , zrh-9".to_string())]);
        let abandon = abandoned(&annotations);
        assert_eq!(abandon.len(), 2);
        let steps = plan_cleanup(&record, &known, &none, &abandon, VolumePolicy::Retain);
        assert_eq!(
            steps,
            [Cleanup::Abandon {
                cluster: "msk-1".into()
            }]
        );
    }

    use std::collections::BTreeMap;
}
