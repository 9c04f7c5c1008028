//! Publishing the PolicyReports (see [`crate::policy_report`]): computed from the caches (the
//! workloads, and the policies' findings over the members' inventory), written to the
//! management cluster only when a namespace's report changed, and only by the leader.

use std::collections::BTreeSet;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use tracing::warn;

use super::Context;
use crate::api::ResidentWorkload;

/// Writes the PolicyReport of every namespace one is due in whose content changed: those with
/// workloads, with forbidden copies, or with a report written before (so it is emptied when its
/// last finding goes).
pub async fn publish_all(ctx: &Context) {
    let found = violations(ctx);
    let mut namespaces: BTreeSet<String> = ctx
        .workloads
        .state()
        .iter()
        .filter_map(|w| w.namespace())
        .collect();
    namespaces.extend(found.iter().filter_map(|v| v.namespace.clone()));
    namespaces.extend(
        ctx.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned(),
    );
    for namespace in &namespaces {
        publish_one(ctx, namespace, None, None, &found).await;
    }
}

fn violations(ctx: &Context) -> Vec<crate::api::residency_policy::Violation> {
    let (policies, clusters, workloads) = (
        ctx.policies.state(),
        ctx.clusters.state(),
        ctx.workloads.state(),
    );
    ctx.labelled
        .with(|labelled| super::policy::all_violations(&policies, &clusters, &workloads, labelled))
}

/// Writes the PolicyReport of `namespace` when its content changed. `current` replaces the
/// cached copy of one workload (its new status may not be in the cache yet); `gone` (a workload
/// name there) is left out.
pub async fn publish(
    ctx: &Context,
    namespace: &str,
    current: Option<&ResidentWorkload>,
    gone: Option<&str>,
) {
    publish_one(ctx, namespace, current, gone, &violations(ctx)).await;
}

async fn publish_one(
    ctx: &Context,
    namespace: &str,
    current: Option<&ResidentWorkload>,
    gone: Option<&str>,
    found: &[crate::api::residency_policy::Violation],
) {
    let cached = ctx.workloads.state();
    let mut list: Vec<&ResidentWorkload> = cached
        .iter()
        .map(|w| w.as_ref())
        .filter(|w| w.namespace().as_deref() == Some(namespace))
        .filter(|w| Some(w.name_any().as_str()) != gone)
        .filter(|w| current.is_none_or(|c| c.name_any() != w.name_any()))
        .collect();
    if let Some(c) = current {
        list.push(c);
    }
    let report = crate::policy_report::build(namespace, &list, found);
    write(ctx, namespace, &report).await;
}

async fn write(ctx: &Context, namespace: &str, report: &serde_json::Value) {
    let hash = crate::desired::content_hash(report);
    {
        let reports = ctx.reports.lock().unwrap_or_else(|e| e.into_inner());
        if reports.get(namespace) == Some(&hash) {
            return;
        }
    }
    if !ctx.fence.may_write() {
        return;
    }
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "policyreports");
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), namespace, &ar);
    let params = PatchParams::apply(crate::api::FIELD_MANAGER).force();
    let written = match api
        .patch(crate::policy_report::NAME, &params, &Patch::Apply(report))
        .await
    {
        Ok(_) => true,
        // the PolicyReport CRD is not installed (or the namespace is gone): nothing to write to
        Err(kube::Error::Api(s)) if s.code == 404 => true,
        Err(e) => {
            warn!(namespace, error = %e, "could not write the PolicyReport");
            false
        }
    };
    if written {
        let mut reports = ctx.reports.lock().unwrap_or_else(|e| e.into_inner());
        reports.insert(namespace.to_string(), hash);
    }
}
