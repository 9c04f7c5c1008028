//! The ResidencyPolicy reconciler: reports which member clusters a policy allows and how many
//! workloads it governs. Status is written only when it changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use serde_json::json;
use tracing::warn;

use super::{Context, Error, Result};
use crate::api::conditions::{self, Desired, Status, types};
use crate::api::residency_policy::Enforcement;
use crate::api::{
    FIELD_MANAGER, MemberCluster, ResidencyPolicy, ResidencyPolicyStatus, ResidentWorkload,
};
use crate::facts::{self, StatusSource};

const CONTROLLER: &str = "policy";

/// The status of a policy given the clusters and workloads (pure).
pub fn compute(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
    previous: &ResidencyPolicyStatus,
    now: Timestamp,
) -> ResidencyPolicyStatus {
    let policy = facts::policy(rp);
    let mut matched: Vec<String> = clusters
        .iter()
        .map(|c| facts::cluster(c, StatusSource::Conditions))
        .filter(|c| policy.allows(c))
        .map(|c| c.name)
        .collect();
    matched.sort();
    let governed = workloads
        .iter()
        .filter(|w| {
            w.spec
                .countries
                .iter()
                .any(|c| rp.spec.countries.contains(c))
        })
        .count();
    let (reason, mode) = match rp.spec.enforcement {
        Enforcement::Enforce => ("Enforced", "enforced"),
        Enforcement::Audit => ("AuditOnly", "audited (nothing is moved)"),
    };
    let message = if matched.is_empty() {
        format!(
            "Active, {mode}: allows no member cluster, so workloads of its countries are placed nowhere."
        )
    } else {
        format!(
            "Active, {mode}: allows {}; governs {governed} workload(s).",
            matched.join(", ")
        )
    };
    let generation = rp.metadata.generation;
    ResidencyPolicyStatus {
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &[Desired::new(types::READY, Status::True, reason, message)],
            generation,
            now,
        ),
        matched_clusters: matched,
        governed_workloads: i32::try_from(governed).unwrap_or(i32::MAX),
        violations: previous.violations.clone(),
        violation_count: previous.violation_count,
    }
}

/// Reconciles one policy.
pub async fn reconcile(rp: Arc<ResidencyPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let previous = rp.status.clone().unwrap_or_default();
    let status = compute(
        &rp,
        &ctx.clusters.state(),
        &ctx.workloads.state(),
        &previous,
        Timestamp::now(),
    );
    if status != previous {
        let api: Api<ResidencyPolicy> = Api::all(ctx.client.clone());
        let patch = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "status": status});
        api.patch_status(
            &rp.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(Error::mgmt(format!(
            "patch status of ResidencyPolicy {}",
            rp.name_any()
        )))?;
    }
    ctx.metrics.reconciled(CONTROLLER, start.elapsed());
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Logs, counts and requeues with backoff.
pub fn error_policy(rp: Arc<ResidencyPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %rp.name_any(), category = err.category(), error = %err, "reconcile failed");
    ctx.metrics.failed(CONTROLLER, err.category());
    Action::requeue(ctx.backoff.next(&format!("policy/{}", rp.name_any())))
}
