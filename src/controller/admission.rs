//! Keeps each member's admission policies in line with the residency policies: reads what the
//! member holds, lets [`crate::admission`] decide, writes only what differs, and reports the
//! outcome as the MemberCluster's `PreventionEnforced` condition (run from the cluster
//! reconcile, after a probe reached the member).

use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::{Context, Error, Result};
use crate::admission::{self, Action, Generated, ReplaceWhy, Step};
use crate::api::conditions::{Desired, Status, types};
use crate::api::member_cluster::{Prevention, PreventionStatus};
use crate::api::{MemberCluster, MemberClusterStatus};
use crate::fleet::member::{Cause, Member, MemberError};
use crate::fleet::prevention::AdmissionKind;
use crate::placement::{ClusterFacts, PolicyFacts};

/// The reasons of the `PreventionEnforced` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The member holds the generated admission policies.
    Enforced,
    /// No policy forbids data on the member: there is nothing to refuse.
    NothingToRefuse,
    /// `spec.prevention` is `Disabled`.
    Disabled,
    /// The member's API server does not serve ValidatingAdmissionPolicies (before 1.30).
    Unsupported,
    /// Writing the admission policies failed.
    ApplyFailed,
    /// The member cannot be reached.
    Unreachable,
}

impl Reason {
    /// The CamelCase reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Enforced => "Enforced",
            Reason::NothingToRefuse => "NothingToRefuse",
            Reason::Disabled => "Disabled",
            Reason::Unsupported => "Unsupported",
            Reason::ApplyFailed => "ApplyFailed",
            Reason::Unreachable => "Unreachable",
        }
    }
}

/// What keeping a member's admission policies found.
pub struct Outcome {
    /// The `PreventionEnforced` condition.
    pub condition: Desired,
    /// What the member's policies refuse and warn about (None when none are kept).
    pub status: Option<PreventionStatus>,
}

/// The condition while the member cannot be reached: unknown, last status kept.
pub fn unreachable(previous: &MemberClusterStatus) -> Outcome {
    Outcome {
        condition: Desired::new(
            types::PREVENTION_ENFORCED,
            Status::Unknown,
            Reason::Unreachable.as_str(),
            "The member's admission policies cannot be checked while it is unreachable.",
        ),
        status: previous.prevention.clone(),
    }
}

fn key(cluster: &str, kind: AdmissionKind, name: &str) -> String {
    format!("{cluster}/{}/{name}", kind.kind())
}

/// Brings the member's admission policies in line with `policies` (the member is `facts`).
/// Only a fenced replica gets an `Err`; a member that refuses the writes gets
/// `PreventionEnforced=False`.
pub async fn sync(
    ctx: &Context,
    mc: &MemberCluster,
    facts: &ClusterFacts,
    policies: &[PolicyFacts],
    client: &Client,
    previous: &MemberClusterStatus,
) -> Result<Outcome> {
    let name = mc.name_any();
    let enabled = mc.spec.prevention == Prevention::Enabled;
    let refusals = admission::for_member(policies, facts, enabled);
    let generated = admission::generate(&name, &refusals);
    let member = Member {
        name: &name,
        client: client.clone(),
        metrics: &ctx.metrics,
        fence: &ctx.fence,
        discovery: &ctx.discovery,
        pod_security: Default::default(),
        access: ctx.fleet.get(&name).and_then(|c| c.access),
        memo: Default::default(),
        watched: None,
    };
    let (refused, warned) = admission::summary(&refusals);
    let had = |a: Action| {
        previous.prevention.as_ref().is_some_and(|p| match a {
            Action::Deny => !p.refused.is_empty(),
            Action::Warn => !p.warned.is_empty(),
        })
    };
    let mut restored = Vec::new();
    let mut failure = None;
    let mut relaxed = false;
    for action in [Action::Deny, Action::Warn] {
        let want = generated.iter().find(|g| g.action == action);
        match keep(&member, ctx, action, want, had(action)).await {
            Ok((r, wrote)) => {
                restored.extend(r);
                relaxed |= wrote && action == Action::Deny;
            }
            Err(e) if matches!(e.source, Cause::Fenced) => return Err(Error::Fenced),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    // what the member refuses now; workloads waiting for a relaxed policy go on once its API
    // server accepts what is no longer refused (its admission plugin follows writes with a
    // short delay)
    let mut now_refused = failure.is_none().then(|| refused.iter().cloned().collect());
    if relaxed && failure.is_none() {
        let allowed: Vec<String> = admission::governed(policies)
            .into_iter()
            .filter(|c| !refused.iter().any(|r| r == c))
            .map(str::to_string)
            .collect();
        if !allowed.is_empty() && !in_force(&member, &allowed).await {
            now_refused = None;
        }
    }
    let wake = ctx
        .admission_gate
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .written(&name, now_refused);
    for w in wake {
        let _ = ctx.member_events.send(w).await;
    }
    for what in &restored {
        warn!(cluster = %name, object = %what, "admission policy restored");
        ctx.metrics.admission_restored(&name);
        ctx.publish_event(
            &mc.object_ref(&()),
            None,
            kube::runtime::events::EventType::Warning,
            "AdmissionPolicyRestored",
            &format!(
                "{what} on {name} was deleted or changed there; the operator put it back as generated from the policies."
            ),
        );
    }
    let result = match &failure {
        None => Ok(()),
        Some(e) if matches!(&e.source, Cause::Api(kube::Error::Api(s)) if s.code == 404) => {
            Err(WriteFailure::Unsupported(e.to_string()))
        }
        Some(e) => Err(WriteFailure::Failed(e.to_string())),
    };
    let outcome = outcome(&name, enabled, result, refused, warned, previous);
    ctx.metrics.prevention(
        &name,
        outcome.condition.status == Status::True,
        outcome.status.as_ref().map_or(0, |s| s.refused.len()),
    );
    Ok(outcome)
}

/// Why the admission policies could not be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteFailure {
    /// The member does not serve ValidatingAdmissionPolicies (the error).
    Unsupported(String),
    /// Another failure (the error).
    Failed(String),
}

/// The `PreventionEnforced` condition and `status.prevention` from what keeping the member's
/// admission policies did (pure).
pub fn outcome(
    name: &str,
    enabled: bool,
    written: Result<(), WriteFailure>,
    refused: Vec<String>,
    warned: Vec<String>,
    previous: &MemberClusterStatus,
) -> Outcome {
    let condition = |status, reason: Reason, message: String| {
        Desired::new(types::PREVENTION_ENFORCED, status, reason.as_str(), message)
    };
    match written {
        Err(WriteFailure::Unsupported(e)) => Outcome {
            condition: condition(
                Status::False,
                Reason::Unsupported,
                format!(
                    "The member's API server does not serve admissionregistration.k8s.io/v1 ValidatingAdmissionPolicies (Kubernetes 1.30 or later): nothing is refused at admission ({e})."
                ),
            ),
            status: previous.prevention.clone(),
        },
        Err(WriteFailure::Failed(e)) => Outcome {
            condition: condition(
                Status::False,
                Reason::ApplyFailed,
                format!("The admission policies could not be written: {e}"),
            ),
            status: previous.prevention.clone(),
        },
        Ok(()) if !enabled => Outcome {
            condition: condition(
                Status::False,
                Reason::Disabled,
                "spec.prevention is Disabled: the member's API server refuses nothing; forbidden copies are found only after they exist.".into(),
            ),
            status: None,
        },
        Ok(()) if refused.is_empty() && warned.is_empty() => Outcome {
            condition: condition(
                Status::True,
                Reason::NothingToRefuse,
                format!("No policy forbids data on {name}: its API server has nothing to refuse."),
            ),
            status: Some(PreventionStatus::default()),
        },
        Ok(()) => Outcome {
            condition: condition(
                Status::True,
                Reason::Enforced,
                enforced_message(&refused, &warned),
            ),
            status: Some(PreventionStatus { refused, warned }),
        },
    }
}

/// `The API server refuses new data of AU, NZ (2 countries); it warns for DE.`
pub fn enforced_message(refused: &[String], warned: &[String]) -> String {
    let mut m = if refused.is_empty() {
        "The API server refuses no country's data".to_string()
    } else {
        format!(
            "The API server refuses new data of {} ({} {})",
            refused.join(", "),
            refused.len(),
            if refused.len() == 1 {
                "country"
            } else {
                "countries"
            }
        )
    };
    if !warned.is_empty() {
        m.push_str(&format!("; it warns for {} (Audit)", warned.join(", ")));
    }
    m.push('.');
    m
}

/// Waits (up to 5 s) until the member's API server accepts data of `allowed`.
async fn in_force(member: &Member<'_>, allowed: &[String]) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match member.admission_accepts(allowed).await {
            Ok(true) => return true,
            Ok(false) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(false) => {
                warn!(
                    cluster = member.name,
                    "the admission policy written is not in force after 5 s"
                );
                return false;
            }
            Err(e) => {
                warn!(cluster = member.name, error = %e, "cannot check the admission policy in force");
                return false;
            }
        }
    }
}

/// Keeps the policy and binding of one action as generated (or removes them); returns the
/// objects it had to put back, and whether it wrote anything.
async fn keep(
    member: &Member<'_>,
    ctx: &Context,
    action: Action,
    want: Option<&Generated>,
    had_before: bool,
) -> Result<(Vec<String>, bool), MemberError> {
    let name = action.object_name();
    let mut restored = Vec::new();
    let mut wrote = false;
    let objects = [
        (AdmissionKind::Policy, want.map(|g| &g.policy)),
        (AdmissionKind::Binding, want.map(|g| &g.binding)),
    ];
    // created and replaced policy first, binding second; deleted the other way round
    let order: Vec<_> = if want.is_some() {
        objects.to_vec()
    } else {
        objects.iter().rev().cloned().collect()
    };
    for (kind, object) in order {
        let found = member.admission_get(kind, name).await?;
        let k = key(member.name, kind, name);
        let record = ctx.admission_written(&k);
        let step = admission::step(
            want.map(|g| g.hash.as_str()),
            found.as_ref().map(|f| &f.live),
            record.as_ref(),
        );
        let what = format!("{} {name}", kind.kind());
        wrote |= step != Step::Keep;
        match (step, object) {
            (Step::Keep, _) => {}
            (Step::Delete, _) => {
                member.admission_delete(kind, name).await?;
                ctx.forget_admission_written(&k);
                info!(cluster = member.name, object = %what, "admission policy removed");
            }
            (Step::Create, Some(object)) => {
                let w = member.admission_write(kind, object, None).await?;
                if record.is_some() || had_before {
                    restored.push(what.clone());
                }
                ctx.record_admission_written(&k, w);
                info!(cluster = member.name, object = %what, "admission policy created");
            }
            (Step::Replace(why), Some(object)) => {
                let Some(found) = found else { continue };
                let w = member
                    .admission_write(kind, object, Some(&found.resource_version))
                    .await?;
                // replaced at start-up although the generated spec did not change, and the
                // member's copy changed: someone edited it meanwhile
                let edited_meanwhile = why == ReplaceWhy::Unrecorded
                    && found.live.hash.as_deref() == want.map(|g| g.hash.as_str())
                    && w.generation != found.live.generation;
                if why == ReplaceWhy::EditedByHand || edited_meanwhile {
                    restored.push(what.clone());
                }
                ctx.record_admission_written(&k, w);
                info!(cluster = member.name, object = %what, ?why, "admission policy replaced");
            }
            (Step::Create | Step::Replace(_), None) => {}
        }
    }
    Ok((restored, wrote))
}

/// Removes the operator's admission policies from a member being forgotten (best effort: a
/// member that cannot be reached keeps them, and the log says so).
pub async fn remove_all(ctx: &Context, cluster: &str, client: &Client) {
    let member = Member {
        name: cluster,
        client: client.clone(),
        metrics: &ctx.metrics,
        fence: &ctx.fence,
        discovery: &ctx.discovery,
        pod_security: Default::default(),
        access: ctx.fleet.get(cluster).and_then(|c| c.access),
        memo: Default::default(),
        watched: None,
    };
    for action in [Action::Deny, Action::Warn] {
        for kind in [AdmissionKind::Binding, AdmissionKind::Policy] {
            let name = action.object_name();
            match member.admission_delete(kind, name).await {
                Ok(()) => ctx.forget_admission_written(&key(cluster, kind, name)),
                Err(e) => warn!(
                    cluster,
                    error = %e,
                    "could not remove {} {name} from the member: delete it there by hand",
                    kind.kind()
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(o: &Outcome) -> (Status, String) {
        (o.condition.status, o.condition.reason.clone())
    }

    #[test]
    fn the_condition_says_whether_prevention_is_in_force_and_why_not() {
        let previous = MemberClusterStatus {
            prevention: Some(PreventionStatus {
                refused: vec!["AU".into()],
                warned: vec![],
            }),
            ..Default::default()
        };
        let au = || vec!["AU".to_string(), "NZ".to_string()];
        let o = outcome("msk-1", true, Ok(()), au(), vec!["DE".into()], &previous);
        assert_eq!(reason(&o), (Status::True, "Enforced".into()));
        assert_eq!(
            o.condition.message,
            "The API server refuses new data of AU, NZ (2 countries); it warns for DE (Audit)."
        );
        assert_eq!(o.status.unwrap().refused, au());
        let o = outcome("zrh-1", true, Ok(()), vec![], vec![], &previous);
        assert_eq!(reason(&o), (Status::True, "NothingToRefuse".into()));
        let o = outcome("msk-1", false, Ok(()), vec![], vec![], &previous);
        assert_eq!(reason(&o), (Status::False, "Disabled".into()));
        assert_eq!(o.status, None);
        // a failed write keeps what was last in force
        let o = outcome(
            "msk-1",
            true,
            Err(WriteFailure::Failed("403".into())),
            au(),
            vec![],
            &previous,
        );
        assert_eq!(reason(&o), (Status::False, "ApplyFailed".into()));
        assert_eq!(o.status, previous.prevention);
        let o = outcome(
            "old",
            true,
            Err(WriteFailure::Unsupported("404".into())),
            au(),
            vec![],
            &previous,
        );
        assert_eq!(reason(&o), (Status::False, "Unsupported".into()));
        assert_eq!(
            reason(&unreachable(&previous)),
            (Status::Unknown, "Unreachable".into())
        );
    }
}
