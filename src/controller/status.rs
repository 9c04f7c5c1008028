//! Pure status computation for ResidentWorkloads: which clusters a workload leaves, when it may
//! leave them (make before break), and its conditions. No client, fully unit-tested.

use crate::api::conditions::{Desired, Status, types};
use crate::api::resident_workload::{ClusterDecision, Placement};
use crate::placement::{Decision, Mode, Outcome, Verdict};

/// Placement states as they appear in `status.placements[].state`.
pub mod state {
    /// Waiting for the workload's data to arrive (a data move); nothing started yet.
    pub const PENDING: &str = "Pending";
    /// Applied; not every object is ready yet.
    pub const APPLIED: &str = "Applied";
    /// Every object is ready.
    pub const READY: &str = "Ready";
    /// The workload leaves this cluster once every target is Ready.
    pub const EVICTING: &str = "Evicting";
    /// Removed, but its volumes were kept (labelled `residency.io/retained=true`).
    pub const RETAINED: &str = "Retained";
    /// The cluster could not be reached; its copy is kept until it can be.
    pub const UNKNOWN: &str = "Unknown";
    /// The member refused an object.
    pub const FAILED: &str = "Failed";
    /// An object of the workload exists there and belongs to another owner: not applied.
    pub const CONFLICT: &str = "Conflict";
}

/// Objects recorded in the previous placement that the workload no longer declares (kind and
/// name), to be pruned from the member.
pub fn stale_objects(
    previous: Option<&Placement>,
    desired: &[crate::desired::DesiredObject],
) -> Vec<(String, String)> {
    // a retained record lists the volumes left behind, not objects placed
    let Some(previous) = previous.filter(|p| p.state != state::RETAINED) else {
        return Vec::new();
    };
    let mut stale: Vec<(String, String)> = previous
        .objects
        .iter()
        .filter(|o| !desired.iter().any(|d| d.kind == o.kind && d.name == o.name))
        .map(|o| (o.kind.clone(), o.name.clone()))
        .collect();
    stale.sort();
    stale.dedup();
    stale
}

/// The recorded `apiVersion` of each object of a placement (kind, name).
pub fn object_versions(placement: &Placement) -> crate::fleet::member::Versions {
    placement
        .objects
        .iter()
        .filter_map(|o| {
            o.api_version
                .clone()
                .map(|v| ((o.kind.clone(), o.name.clone()), v))
        })
        .collect()
}

/// At most this many drift entries are kept in status.
pub const MAX_DRIFT_ENTRIES: usize = 20;

/// Status drift entries from observed drift, sorted and capped, keeping the first-observed time
/// of entries seen before; and the total count.
pub fn drift_entries(
    observed: &[(String, crate::fleet::member::ObjectDrift)],
    previous: &[crate::api::resident_workload::DriftEntry],
    now: k8s_openapi::jiff::Timestamp,
) -> (Vec<crate::api::resident_workload::DriftEntry>, i32) {
    use crate::api::resident_workload::DriftEntry;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let mut all: Vec<DriftEntry> = observed
        .iter()
        .flat_map(|(cluster, d)| {
            d.fields.iter().map(move |f| {
                let first = previous
                    .iter()
                    .find(|e| {
                        &e.cluster == cluster
                            && e.kind == d.kind
                            && e.name == d.name
                            && e.path == f.path
                    })
                    .map(|e| e.first_observed.clone())
                    .unwrap_or(Time(now));
                DriftEntry {
                    cluster: cluster.clone(),
                    kind: d.kind.clone(),
                    name: d.name.clone(),
                    path: f.path.clone(),
                    desired: f.desired.clone(),
                    live: f.live.clone(),
                    first_observed: first,
                }
            })
        })
        .collect();
    all.sort_by(|a, b| {
        (&a.cluster, &a.kind, &a.name, &a.path).cmp(&(&b.cluster, &b.kind, &b.name, &b.path))
    });
    let total = i32::try_from(all.len()).unwrap_or(i32::MAX);
    all.truncate(MAX_DRIFT_ENTRIES);
    (all, total)
}

/// `path: desired X, live Y; ...` for an event or condition message.
pub fn describe_fields(fields: &[crate::drift::FieldDrift]) -> String {
    let mut parts: Vec<String> = fields
        .iter()
        .take(5)
        .map(|f| format!("{}: desired {}, live {}", f.path, f.desired, f.live))
        .collect();
    if fields.len() > 5 {
        parts.push(format!("and {} more", fields.len() - 5));
    }
    parts.join("; ")
}

/// The `Drifted` condition: True while uncorrected drift is reported; False otherwise, with
/// reason `DriftCorrected` when this reconcile corrected some.
pub fn drift_condition(
    entries: &[crate::api::resident_workload::DriftEntry],
    total: i32,
    corrected: &[(String, crate::fleet::member::ObjectDrift)],
) -> Desired {
    if let Some(first) = entries.first() {
        return Desired::new(
            types::DRIFTED,
            Status::True,
            "DriftDetected",
            format!(
                "{total} field(s) differ from what was applied and are not corrected (the workload is governed only by Audit policies), e.g. {} {}/{} {}: desired {}, live {}.",
                first.cluster, first.kind, first.name, first.path, first.desired, first.live
            ),
        );
    }
    if let Some((cluster, d)) = corrected.first() {
        return Desired::new(
            types::DRIFTED,
            Status::False,
            "DriftCorrected",
            format!(
                "Corrected out-of-band changes, e.g. {} {} on {cluster}: {}.",
                d.kind,
                d.name,
                describe_fields(&d.fields)
            ),
        );
    }
    Desired::new(
        types::DRIFTED,
        Status::False,
        "NoDrift",
        "The placed objects match what was applied.",
    )
}

/// The per-cluster decisions for status.
pub fn cluster_decisions(decision: &Decision) -> Vec<ClusterDecision> {
    decision
        .clusters
        .iter()
        .map(|c| ClusterDecision {
            name: c.name.clone(),
            verdict: match c.verdict {
                Verdict::Target => "Target",
                Verdict::AllowedNotEligible { .. } => "AllowedNotEligible",
                Verdict::Forbidden => "Forbidden",
            }
            .to_string(),
            reason: c.reason.clone(),
        })
        .collect()
}

fn list(names: &[String]) -> String {
    names.join(", ")
}

/// The conditions of a workload with a valid spec: Ready, Reconciling, Stalled, Compliant.
pub fn conditions(decision: &Decision, placements: &[Placement]) -> Vec<Desired> {
    let forbidden_copies: Vec<String> = placements
        .iter()
        .filter(|p| !decision.allowed.contains(&p.cluster))
        .map(|p| {
            if p.state == state::RETAINED {
                format!("{} (retained volumes)", p.cluster)
            } else {
                p.cluster.clone()
            }
        })
        .collect();
    let compliant = if !decision.is_placeable() {
        Desired::new(
            types::COMPLIANT,
            Status::False,
            decision.reason(),
            decision.summary(),
        )
    } else if !forbidden_copies.is_empty() {
        Desired::new(
            types::COMPLIANT,
            Status::False,
            "ForbiddenCopies",
            format!(
                "Data of this workload is still on {}, which the policies do not allow; {}",
                list(&forbidden_copies),
                if placements.iter().any(|p| p.state == state::RETAINED) {
                    "retained volumes must be copied or deleted by an operator, then their PVCs deleted."
                } else {
                    "it is removed once the workload is Ready on its targets."
                }
            ),
        )
    } else if let Some((cluster, what)) = placements.iter().find_map(|p| {
        p.evidence
            .as_ref()
            .and_then(|e| e.outside.first())
            .map(|o| (p.cluster.clone(), o.clone()))
    }) {
        Desired::new(
            types::COMPLIANT,
            Status::False,
            "OutsideAttestedRegion",
            format!(
                "On {cluster}, {what}: outside the regions the cluster attests. Move it to a node or volume in an attested region."
            ),
        )
    } else if let Some((cluster, what, more)) = placements.iter().find_map(|p| {
        p.evidence.as_ref().and_then(|e| {
            e.unverifiable
                .first()
                .map(|u| (p.cluster.clone(), u.clone(), e.unverifiable.len() - 1))
        })
    }) {
        Desired::new(
            types::COMPLIANT,
            Status::Unknown,
            "LocationUnverifiable",
            format!(
                "On {cluster}, {what}{}: where it lies cannot be proven from the member's nodes. Pin the volume to nodes (node affinity), or have the MemberCluster vouch for its StorageClass (spec.attestation.vouchedStorageClasses).",
                if more > 0 {
                    format!(" (and {more} more)")
                } else {
                    String::new()
                }
            ),
        )
    } else if let Some(p) = placements
        .iter()
        .find(|p| p.evidence.is_none() && (p.state == state::READY || p.state == state::APPLIED))
    {
        // no proof yet is no proof: the member's caches have not listed everything
        Desired::new(
            types::COMPLIANT,
            Status::Unknown,
            "EvidencePending",
            format!(
                "Where the copy on {} lies is not proven yet: the member's nodes, volumes and Pods have not all been listed.",
                p.cluster
            ),
        )
    } else {
        Desired::new(
            types::COMPLIANT,
            Status::True,
            "Compliant",
            decision.summary(),
        )
    };

    // default deny wins over the mode: with no policy at all there is nothing to audit either
    if decision.mode == Mode::Audit && !matches!(decision.outcome, Outcome::NoPolicy { .. }) {
        return vec![
            Desired::new(
                types::READY,
                Status::True,
                "AuditOnly",
                format!(
                    "Governed only by Audit policies: nothing is written to members. {}",
                    decision.summary()
                ),
            ),
            Desired::new(
                types::RECONCILING,
                Status::False,
                "AuditOnly",
                "Nothing to do in Audit mode.",
            ),
            Desired::new(
                types::STALLED,
                Status::False,
                "AuditOnly",
                "Nothing to do in Audit mode.",
            ),
            compliant,
        ];
    }
    if !decision.is_placeable() {
        return vec![
            Desired::new(
                types::READY,
                Status::False,
                decision.reason(),
                decision.summary(),
            ),
            Desired::new(
                types::RECONCILING,
                Status::False,
                decision.reason(),
                "Waiting for a policy or cluster change.",
            ),
            Desired::new(
                types::STALLED,
                Status::True,
                decision.reason(),
                decision.summary(),
            ),
            compliant,
        ];
    }
    let unknown: Vec<String> = decision
        .targets
        .iter()
        .filter(|t| {
            placements
                .iter()
                .any(|p| &p.cluster == *t && p.state == state::UNKNOWN)
        })
        .cloned()
        .collect();
    let failed: Vec<&Placement> = placements
        .iter()
        .filter(|p| p.state == state::FAILED)
        .collect();
    let waiting: Vec<String> = decision
        .targets
        .iter()
        .filter_map(|t| {
            let p = placements.iter().find(|p| &p.cluster == t)?;
            (p.state != state::READY).then(|| {
                let pending: Vec<String> = p
                    .objects
                    .iter()
                    .filter(|o| !o.ready)
                    .map(|o| {
                        if o.message.is_empty() {
                            format!("{} {}", o.kind, o.name)
                        } else {
                            format!("{} {}: {}", o.kind, o.name, o.message)
                        }
                    })
                    .collect();
                if pending.is_empty() {
                    format!("{t}: {}", p.message)
                } else {
                    format!("{t}: {}", pending.join("; "))
                }
            })
        })
        .collect();
    let evicting: Vec<String> = placements
        .iter()
        .filter(|p| p.state == state::EVICTING)
        .map(|p| p.cluster.clone())
        .collect();
    let targets = list(&decision.targets);
    if let Some(c) = placements.iter().find(|p| p.state == state::CONFLICT) {
        let msg = format!("{}: {}", c.cluster, c.message);
        return vec![
            Desired::new(types::READY, Status::False, "Conflict", msg.clone()),
            Desired::new(
                types::RECONCILING,
                Status::False,
                "Conflict",
                "Waiting for a spec change.",
            ),
            Desired::new(types::STALLED, Status::True, "Conflict", msg),
            compliant,
        ];
    }
    if let Some(f) = failed.first() {
        let msg = format!("{}: {}", f.cluster, f.message);
        return vec![
            Desired::new(types::READY, Status::False, "ApplyFailed", msg.clone()),
            Desired::new(types::RECONCILING, Status::True, "ApplyFailed", msg.clone()),
            Desired::new(
                types::STALLED,
                Status::False,
                "ApplyFailed",
                "Retrying with backoff.",
            ),
            compliant,
        ];
    }
    if !unknown.is_empty() {
        let msg = format!(
            "Cannot reach {}; copies there are kept and the placement finishes when it is back.",
            list(&unknown)
        );
        return vec![
            Desired::new(
                types::READY,
                Status::False,
                "ClusterUnreachable",
                msg.clone(),
            ),
            Desired::new(types::RECONCILING, Status::True, "ClusterUnreachable", msg),
            Desired::new(
                types::STALLED,
                Status::False,
                "ClusterUnreachable",
                "Waiting for the cluster.",
            ),
            compliant,
        ];
    }
    if !waiting.is_empty() {
        let msg = if evicting.is_empty() {
            format!("Placing on {targets}; waiting for {}.", waiting.join("; "))
        } else {
            format!(
                "Relocating from {} to {targets} (make before break); waiting for {}.",
                list(&evicting),
                waiting.join("; ")
            )
        };
        return vec![
            Desired::new(types::READY, Status::False, "Progressing", msg.clone()),
            Desired::new(types::RECONCILING, Status::True, "Progressing", msg),
            Desired::new(
                types::STALLED,
                Status::False,
                "Progressing",
                "Making progress.",
            ),
            compliant,
        ];
    }
    if !evicting.is_empty() {
        let msg = format!(
            "Ready on {targets}; removing the copies on {}.",
            list(&evicting)
        );
        return vec![
            Desired::new(types::READY, Status::True, "Ready", msg.clone()),
            Desired::new(types::RECONCILING, Status::True, "Evicting", msg),
            Desired::new(
                types::STALLED,
                Status::False,
                "Evicting",
                "Making progress.",
            ),
            compliant,
        ];
    }
    vec![
        Desired::new(
            types::READY,
            Status::True,
            "Ready",
            format!("Ready on {targets}."),
        ),
        Desired::new(types::RECONCILING, Status::False, "Ready", "Up to date."),
        Desired::new(types::STALLED, Status::False, "Ready", "Up to date."),
        compliant,
    ]
}

/// Marks the conditions of a workload whose relocation waits for a free slot (bounded change):
/// Ready=False, Reconciling=True and Stalled=False, reason `RelocationQueued`.
pub fn relocation_queued(conditions: &mut [Desired], in_flight: usize, max: usize) {
    let msg = format!(
        "Relocation queued: {in_flight} relocation(s) in flight, at most {max} at once (--max-relocations); the current copies are kept and updated meanwhile."
    );
    for c in conditions.iter_mut() {
        let (status, text) = match c.type_ {
            t if t == types::READY => (Status::False, msg.clone()),
            t if t == types::RECONCILING => (Status::True, msg.clone()),
            t if t == types::STALLED => {
                (Status::False, "Waiting for a relocation slot.".to_string())
            }
            _ => continue,
        };
        *c = Desired::new(c.type_, status, "RelocationQueued", text);
    }
}

/// The conditions of a workload whose `spec.secrets` cannot be read: nothing changes on the
/// members (what is placed stays) until they can.
pub fn secret_source_conditions(message: &str) -> Vec<Desired> {
    vec![
        Desired::new(
            types::READY,
            Status::False,
            "SecretSourceUnavailable",
            message,
        ),
        Desired::new(
            types::RECONCILING,
            Status::True,
            "SecretSourceUnavailable",
            message,
        ),
        Desired::new(
            types::STALLED,
            Status::False,
            "SecretSourceUnavailable",
            "Retrying with backoff.",
        ),
    ]
}

/// The conditions of a workload whose spec is invalid: nothing is applied anywhere.
pub fn invalid_conditions(message: &str) -> Vec<Desired> {
    let msg = format!("The spec is invalid, nothing is applied: {message}");
    vec![
        Desired::new(types::READY, Status::False, "InvalidSpec", msg.clone()),
        Desired::new(
            types::RECONCILING,
            Status::False,
            "InvalidSpec",
            "Waiting for a spec change.",
        ),
        Desired::new(types::STALLED, Status::True, "InvalidSpec", msg.clone()),
        Desired::new(types::COMPLIANT, Status::Unknown, "InvalidSpec", msg),
    ]
}

/// True while the workload has work in flight (the controller then polls the members).
pub fn in_progress(decision: &Decision, placements: &[Placement]) -> bool {
    placements.iter().any(|p| {
        matches!(
            p.state.as_str(),
            state::APPLIED | state::EVICTING | state::UNKNOWN | state::FAILED
        )
    }) || (decision.is_placeable()
        && decision.mode == Mode::Enforce
        && !decision
            .targets
            .iter()
            .all(|t| placements.iter().any(|p| &p.cluster == t)))
}

/// Whether `next` differs from `previous` only in how far copies on their way have come (pure):
/// the messages of objects not ready yet, the location evidence, condition messages, and a copy
/// on a target turning Ready or back (Applied <-> Ready, its objects' readiness), while every
/// verdict stays: conditions' status and reason (so the workload turning Ready, or no longer
/// Ready, is one), copies arriving, leaving or changing to any other state, targets, drift,
/// data move. Such a change may wait (up to 30 s, the workload controller's spacing) and go
/// out merged with the next one: while one copy of a workload is ready and the other not yet,
/// the second's readiness, which turns the workload Ready, usually comes first.
pub fn progress_only(
    previous: &crate::api::ResidentWorkloadStatus,
    next: &crate::api::ResidentWorkloadStatus,
) -> bool {
    fn verdicts(s: &crate::api::ResidentWorkloadStatus) -> crate::api::ResidentWorkloadStatus {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.message.clear();
            c.last_transition_time =
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default());
        }
        for p in &mut s.placements {
            p.evidence = None;
            let on_its_way = p.state == state::APPLIED || p.state == state::READY;
            if on_its_way {
                p.state = state::APPLIED.into();
                p.message.clear();
            }
            for o in &mut p.objects {
                if on_its_way {
                    o.ready = false;
                }
                if !o.ready {
                    o.message.clear();
                }
            }
        }
        s
    }
    verdicts(previous) == verdicts(next)
}

/// Whether everything a workload in progress waits for arrives as an event (pure): its copies
/// are only waiting for objects whose readiness the member watches report
/// ([`crate::fleet::ready::KINDS`]), old copies only for those, or it waits in line for a relocation slot (`queued`: it is
/// woken when one frees). Then it is checked again only as a backstop, not every few seconds.
pub fn awaits_events(placements: &[Placement], queued: bool) -> bool {
    placements.iter().all(|p| match p.state.as_str() {
        state::APPLIED => p.objects.iter().filter(|o| !o.ready).all(|o| {
            crate::fleet::ready::KINDS
                .iter()
                .any(|(v, k)| *k == o.kind && o.api_version.as_deref().is_none_or(|a| a == *v))
        }),
        // a copy kept until the new ones are ready waits for what they wait for
        state::UNKNOWN | state::FAILED => false,
        _ => true,
    }) && (queued || !placements.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resident_workload::ObjectStatus;
    use crate::placement::{
        ClusterFacts, Enforcement, Location, PolicyFacts, WorkloadFacts, decide,
    };
    use std::collections::BTreeSet;

    fn cluster(name: &str, country: &str, region: &str, ready: bool) -> ClusterFacts {
        ClusterFacts {
            name: name.into(),
            labels: Default::default(),
            country: country.into(),
            region: region.into(),
            ready,
            verified: true,
            schedulable: true,
        }
    }

    fn decision(allow: &str, zrh2_ready: bool) -> Decision {
        let policy = PolicyFacts {
            name: "apac-to-zurich".into(),
            countries: BTreeSet::from(["AU".to_string()]),
            allowed_locations: vec![Location {
                country: allow.into(),
                region: None,
            }],
            cluster_selector: None,
            enforcement: Enforcement::Enforce,
        };
        let clusters = [
            cluster("zrh-1", "CH", "zurich", true),
            cluster("zrh-2", "CH", "zurich", zrh2_ready),
            cluster("msk-1", "RU", "moscow", true),
        ];
        let w = WorkloadFacts {
            namespace: "t".into(),
            name: "w".into(),
            countries: BTreeSet::from(["AU".to_string()]),
        };
        decide(&[policy], &clusters, &w)
    }

    fn placement(cluster: &str, st: &str) -> Placement {
        Placement {
            cluster: cluster.into(),
            state: st.into(),
            message: String::new(),
            objects: vec![ObjectStatus {
                api_version: None,
                kind: "Deployment".into(),
                name: "d".into(),
                ready: st == state::READY,
                message: if st == state::READY {
                    String::new()
                } else {
                    "1 of 2 replicas available".into()
                },
            }],
            evidence: Some(Default::default()),
        }
    }

    fn condition_status(s: &crate::api::ResidentWorkloadStatus) -> Vec<(String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect()
    }

    #[test]
    fn only_verdicts_make_a_status_change_urgent() {
        let d = decision("CH", true);
        let status = |placements: Vec<Placement>| crate::api::ResidentWorkloadStatus {
            conditions: crate::api::conditions::merge(
                &[],
                &conditions(&d, &placements),
                Some(1),
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
            placements,
            ..Default::default()
        };
        let before = status(vec![placement("zrh-1", state::APPLIED)]);
        // how far a copy on its way has come: may wait
        let mut further = before.clone();
        further.placements[0].objects[0].message = "2 of 2 replicas available".into();
        further.placements[0].evidence = None;
        assert!(progress_only(&before, &further));
        // a new copy: at once
        let both = status(vec![
            placement("zrh-1", state::APPLIED),
            placement("zrh-2", state::APPLIED),
        ]);
        assert!(!progress_only(&before, &both));
        // one of two copies became ready, the workload is not Ready yet: may wait
        let one = status(vec![
            placement("zrh-1", state::READY),
            placement("zrh-2", state::APPLIED),
        ]);
        assert_eq!(condition_status(&both), condition_status(&one));
        assert!(progress_only(&both, &one));
        // ... and back
        assert!(progress_only(&one, &both));
        // the other one too, and the workload turns Ready: at once
        let ready = status(vec![
            placement("zrh-1", state::READY),
            placement("zrh-2", state::READY),
        ]);
        assert_ne!(condition_status(&one), condition_status(&ready));
        assert!(!progress_only(&one, &ready));
        assert!(!progress_only(&ready, &one));
        // a copy leaving, or in any other state: at once
        for st in [state::EVICTING, state::UNKNOWN, state::FAILED] {
            let other = status(vec![
                placement("zrh-1", state::READY),
                placement("zrh-2", st),
            ]);
            assert!(!progress_only(&one, &other), "{st}");
        }
        // a condition's verdict changed
        let mut reason = before.clone();
        reason.conditions[0].reason = "Other".into();
        assert!(!progress_only(&before, &reason));
    }

    #[test]
    fn relocation_conditions() {
        let d = decision("CH", true);
        let placements = [
            placement("zrh-1", state::READY),
            placement("zrh-2", state::APPLIED),
            placement("msk-1", state::EVICTING),
        ];
        let c = conditions(&d, &placements);
        assert_eq!(c[0].reason, "Progressing");
        assert!(
            c[0].message
                .contains("Relocating from msk-1 to zrh-1, zrh-2"),
            "{}",
            c[0].message
        );
        assert!(
            c[0].message
                .contains("zrh-2: Deployment d: 1 of 2 replicas available")
        );
        assert_eq!(c[3].type_, types::COMPLIANT);
        assert_eq!(c[3].reason, "ForbiddenCopies");

        let done = [
            placement("zrh-1", state::READY),
            placement("zrh-2", state::READY),
            placement("msk-1", state::RETAINED),
        ];
        let c = conditions(&d, &done);
        assert_eq!((c[0].status, c[0].reason.as_str()), (Status::True, "Ready"));
        assert_eq!(c[1].status, Status::False);
        assert_eq!(
            (c[3].status, c[3].reason.as_str()),
            (Status::False, "ForbiddenCopies")
        );
        assert!(c[3].message.contains("msk-1 (retained volumes)"));
        assert!(!in_progress(&d, &done));

        let clean = [
            placement("zrh-1", state::READY),
            placement("zrh-2", state::READY),
        ];
        let c = conditions(&d, &clean);
        assert_eq!(
            (c[3].status, c[3].reason.as_str()),
            (Status::True, "Compliant")
        );
    }

    #[test]
    fn outside_beats_unverifiable_which_is_unknown_not_false() {
        use crate::api::resident_workload::LocationEvidence;
        let d = decision("CH", true);
        let with = |cluster: &str, outside: &[&str], unverifiable: &[&str]| {
            let mut p = placement(cluster, state::READY);
            p.evidence = Some(LocationEvidence {
                outside: outside.iter().map(|s| s.to_string()).collect(),
                unverifiable: unverifiable.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            });
            p
        };
        let nfs = [
            with(
                "zrh-1",
                &[],
                &["PersistentVolume a (claim x) has no node affinity"],
            ),
            with(
                "zrh-2",
                &[],
                &["PersistentVolume b (claim x) has no node affinity", "c"],
            ),
        ];
        let c = conditions(&d, &nfs);
        assert_eq!(
            (c[3].status, c[3].reason.as_str()),
            (Status::Unknown, "LocationUnverifiable")
        );
        assert!(
            c[3].message.starts_with(
                "On zrh-1, PersistentVolume a (claim x) has no node affinity: where it lies cannot be proven"
            ),
            "{}",
            c[3].message
        );
        assert_eq!(
            c[0].status,
            Status::True,
            "an unproven location does not make it unready"
        );
        let two = conditions(&d, &nfs[1..]);
        assert!(
            two[3].message.contains("(and 1 more)"),
            "{}",
            two[3].message
        );
        let outside = [
            nfs[0].clone(),
            with(
                "zrh-2",
                &["PersistentVolume b (claim x) in region eu-central-1"],
                &[],
            ),
        ];
        let c = conditions(&d, &outside);
        assert_eq!(
            (c[3].status, c[3].reason.as_str()),
            (Status::False, "OutsideAttestedRegion")
        );
    }

    #[test]
    fn a_copy_without_proof_yet_is_not_compliant_yet() {
        let d = decision("CH", true);
        let mut pending = placement("zrh-2", state::READY);
        pending.evidence = None;
        let c = conditions(&d, &[placement("zrh-1", state::READY), pending]);
        assert_eq!(
            (c[3].status, c[3].reason.as_str()),
            (Status::Unknown, "EvidencePending")
        );
        assert!(c[3].message.contains("zrh-2"), "{}", c[3].message);
    }

    #[test]
    fn unplaceable_is_stalled_and_not_compliant() {
        let d = decision("XX", true);
        let c = conditions(&d, &[]);
        assert_eq!(
            (c[0].status, c[2].status, c[3].status),
            (Status::False, Status::True, Status::False)
        );
        assert_eq!(c[3].reason, d.reason());
    }

    #[test]
    fn unreachable_target_is_reported() {
        let d = decision("CH", true);
        let p = [
            placement("zrh-1", state::READY),
            placement("zrh-2", state::UNKNOWN),
        ];
        let c = conditions(&d, &p);
        assert_eq!(c[0].reason, "ClusterUnreachable");
        assert!(in_progress(&d, &p));
    }

    #[test]
    fn default_deny_is_stalled_even_without_any_enforce_policy() {
        let w = WorkloadFacts {
            namespace: "t".into(),
            name: "w".into(),
            countries: BTreeSet::from(["BT".to_string()]),
        };
        let d = decide(&[], &[cluster("zrh-1", "CH", "zurich", true)], &w);
        let c = conditions(&d, &[]);
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            (Status::False, "NoPolicyForCountry")
        );
        assert_eq!(c[2].status, Status::True);
    }

    #[test]
    fn objects_dropped_from_the_spec_are_stale() {
        let prev = placement("zrh-1", state::READY); // holds Deployment d
        let desired = crate::desired::DesiredObject {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "c".into(),
            namespace: "t".into(),
            object: serde_json::json!({}),
            hash: String::new(),
        };
        assert_eq!(
            stale_objects(Some(&prev), std::slice::from_ref(&desired)),
            [("Deployment".to_string(), "d".to_string())]
        );
        assert!(stale_objects(None, std::slice::from_ref(&desired)).is_empty());
        let retained = placement("zrh-1", state::RETAINED);
        assert!(
            stale_objects(Some(&retained), &[desired]).is_empty(),
            "volumes left behind are not stale objects"
        );
    }

    #[test]
    fn invalid_spec_is_stalled() {
        let c = invalid_conditions("spec.manifests[0].kind: ClusterRole cannot be placed");
        assert_eq!(c[2].status, Status::True);
        assert_eq!(c[3].status, Status::Unknown);
    }

    #[test]
    fn only_waits_the_member_watches_report_are_left_to_events() {
        let object = |kind: &str, ready: bool| ObjectStatus {
            api_version: None,
            kind: kind.into(),
            name: "o".into(),
            ready,
            message: String::new(),
        };
        let placement = |st: &str, objects: Vec<ObjectStatus>| Placement {
            cluster: "zrh-1".into(),
            state: st.into(),
            message: String::new(),
            objects,
            evidence: None,
        };
        let waiting = placement(
            state::APPLIED,
            vec![object("ConfigMap", true), object("Deployment", false)],
        );
        assert!(awaits_events(std::slice::from_ref(&waiting), false));
        // a custom kind's readiness is not watched: checked every few seconds
        let custom = placement(state::APPLIED, vec![object("Widget", false)]);
        assert!(!awaits_events(&[waiting.clone(), custom], false));
        for st in [state::UNKNOWN, state::FAILED] {
            assert!(!awaits_events(
                &[waiting.clone(), placement(st, vec![])],
                false
            ));
        }
        // an old copy kept until the new one is ready (make before break): the new one's
        // readiness is watched
        let kept = placement(state::EVICTING, vec![object("Deployment", true)]);
        assert!(awaits_events(&[waiting.clone(), kept.clone()], false));
        let unknown = placement(state::UNKNOWN, vec![]);
        assert!(!awaits_events(&[kept, unknown], false));
        // nothing placed yet: only a queued relocation is woken
        assert!(!awaits_events(&[], false));
        assert!(awaits_events(&[], true));
    }
}
