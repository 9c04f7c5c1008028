//! Status conditions that follow Kubernetes conventions.
//!
//! A condition's `lastTransitionTime` changes only when its `status` flips; reason, message and
//! observedGeneration are updated in place. That keeps status writes idempotent: computing the
//! same conditions twice yields an identical status, so the operator never triggers itself.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition types used across the API (kstatus plus domain types).
pub mod types {
    /// The object reached its desired state.
    pub const READY: &str = "Ready";
    /// The operator is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// Progress is blocked until something changes (kstatus).
    pub const STALLED: &str = "Stalled";
    /// Every placement obeys the policies (workloads).
    pub const COMPLIANT: &str = "Compliant";
    /// A placed object or volume differs from the declared state (workloads).
    pub const DRIFTED: &str = "Drifted";
    /// Every node of the member is in an attested region (clusters).
    pub const LOCATION_VERIFIED: &str = "LocationVerified";
    /// The member's API server runs the admission policies generated from the policies
    /// (clusters).
    pub const PREVENTION_ENFORCED: &str = "PreventionEnforced";
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The operator cannot tell.
    Unknown,
}

impl Status {
    /// The string form used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Status::True } else { Status::False }
    }
}

/// A condition to set: everything but the transition time, which [`merge`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Condition type, e.g. `Ready`.
    pub type_: &'static str,
    /// Its status.
    pub status: Status,
    /// CamelCase, stable reason.
    pub reason: String,
    /// A sentence a person can act on.
    pub message: String,
}

impl Desired {
    /// Shorthand constructor.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Merges desired conditions into the existing list.
///
/// Conditions keep the order of `desired`; existing conditions of other types are kept after
/// them. The transition time of a condition is kept unless its status changes; `now` is used
/// for new conditions and flips.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = desired
        .iter()
        .map(|d| {
            let previous = existing.iter().find(|c| c.type_ == d.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == d.status.as_str() => p.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                type_: d.type_.to_string(),
                status: d.status.as_str().to_string(),
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    out.extend(
        existing
            .iter()
            .filter(|c| !desired.iter().any(|d| d.type_ == c.type_))
            .cloned(),
    );
    out
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// A condition's status (anything but `True` or `False` is `Unknown`).
pub fn status_of(c: &Condition) -> Status {
    match c.status.as_str() {
        "True" => Status::True,
        "False" => Status::False,
        _ => Status::Unknown,
    }
}

/// True when the condition of that type exists and is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn transition_time_changes_only_on_flip() {
        let d1 = [Desired::new(
            types::READY,
            Status::False,
            "Pending",
            "waiting",
        )];
        let c1 = merge(&[], &d1, Some(1), ts(100));
        assert_eq!(c1[0].last_transition_time, Time(ts(100)));

        // same status, new message and generation: time kept
        let d2 = [Desired::new(
            types::READY,
            Status::False,
            "Applying",
            "applying to zrh-1",
        )];
        let c2 = merge(&c1, &d2, Some(2), ts(200));
        assert_eq!(c2[0].last_transition_time, Time(ts(100)));
        assert_eq!(c2[0].reason, "Applying");
        assert_eq!(c2[0].observed_generation, Some(2));

        // flip: time moves
        let d3 = [Desired::new(types::READY, Status::True, "Ready", "ready")];
        let c3 = merge(&c2, &d3, Some(2), ts(300));
        assert_eq!(c3[0].last_transition_time, Time(ts(300)));
        assert!(is_true(&c3, types::READY));
    }

    #[test]
    fn merging_the_same_conditions_is_idempotent() {
        let d = [
            Desired::new(types::READY, Status::True, "Ready", "ok"),
            Desired::new(types::COMPLIANT, Status::True, "Placeable", "ok"),
        ];
        let a = merge(&[], &d, Some(3), ts(1));
        let b = merge(&a, &d, Some(3), ts(999));
        assert_eq!(a, b);
    }

    #[test]
    fn other_condition_types_are_kept() {
        let a = merge(
            &[],
            &[Desired::new(
                types::DRIFTED,
                Status::False,
                "NoDrift",
                "none",
            )],
            None,
            ts(1),
        );
        let b = merge(
            &a,
            &[Desired::new(types::READY, Status::True, "Ready", "ok")],
            None,
            ts(2),
        );
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].type_, "Ready");
        assert_eq!(b[1].type_, "Drifted");
    }
}
