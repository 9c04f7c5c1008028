//! Publishing the PolicyReports (see [`crate::policy_report`]): computed from the caches (the
//! workloads, and the policies' findings over the members' inventory), written to the
//! management cluster only when a namespace's report changed, and only by the leader.
//!
//! Reconcilers do not build reports: they mark a namespace changed ([`Queue`]), and one task
//! ([`run`]) builds each changed namespace's report once per [`COALESCE`], from one evaluation
//! of the findings, however many workloads changed meanwhile.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use tracing::warn;

use super::Context;
use crate::api::ResidentWorkload;

/// How long changes are gathered before the reports they touch are built.
pub const COALESCE: Duration = Duration::from_millis(500);

/// The namespaces whose report is due. A workload's newest status, when the cache does not
/// hold it yet, comes from [`super::Written`].
#[derive(Default)]
pub struct Queue {
    state: Mutex<Pending>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    /// Every namespace is due (the findings changed).
    all: bool,
    dirty: BTreeSet<String>,
    /// Workloads cleaned up, left out while the cache still shows them.
    gone: BTreeSet<(String, String)>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A workload's status in `namespace` changed: its report is due.
    pub fn changed(&self, namespace: &str) {
        self.lock().dirty.insert(namespace.to_string());
        self.wake.notify_one();
    }

    /// A workload was cleaned up: it leaves its namespace's report.
    pub fn gone(&self, namespace: &str, name: &str) {
        let key = (namespace.to_string(), name.to_string());
        let mut p = self.lock();
        p.gone.insert(key);
        p.dirty.insert(namespace.to_string());
        self.wake.notify_one();
    }

    /// The findings changed: every report is due.
    pub fn everything(&self) {
        self.lock().all = true;
        self.wake.notify_one();
    }
}

/// Builds and writes the due reports until the process ends.
pub async fn run(ctx: std::sync::Arc<Context>) {
    loop {
        ctx.report_queue.wake.notified().await;
        tokio::time::sleep(COALESCE).await;
        publish_due(&ctx).await;
    }
}

/// Writes the reports due now (each namespace once).
async fn publish_due(ctx: &Context) {
    let cached = ctx.workloads.state();
    let (all, dirty, gone) = {
        let mut p = ctx.report_queue.lock();
        // a cleaned-up workload the cache no longer holds needs no filter
        let held: BTreeSet<(String, String)> = cached
            .iter()
            .map(|w| (w.namespace().unwrap_or_default(), w.name_any()))
            .collect();
        p.gone.retain(|key| held.contains(key));
        (
            std::mem::take(&mut p.all),
            std::mem::take(&mut p.dirty),
            p.gone.clone(),
        )
    };
    let found = violations(ctx);
    let namespaces = if all {
        due_everywhere(ctx, &cached, &found)
    } else {
        dirty
    };
    for namespace in &namespaces {
        // each workload with its newest status: the one this replica wrote when the cache has
        // not seen it yet
        let list: Vec<std::borrow::Cow<ResidentWorkload>> = cached
            .iter()
            .filter(|w| w.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|w| !gone.contains(&(namespace.clone(), w.name_any())))
            .map(|w| {
                let key = format!("{namespace}/{}", w.name_any());
                match ctx.written.ahead_of(&key, w) {
                    Some(status) => {
                        let mut newer = w.as_ref().clone();
                        newer.status = Some(status.as_ref().clone());
                        std::borrow::Cow::Owned(newer)
                    }
                    None => std::borrow::Cow::Borrowed(w.as_ref()),
                }
            })
            .collect();
        let list: Vec<&ResidentWorkload> = list.iter().map(|w| w.as_ref()).collect();
        let report = crate::policy_report::build(namespace, &list, &found);
        write(ctx, namespace, &report).await;
    }
}

/// Every namespace a report is due in: those with workloads, with forbidden copies, or with a
/// report written before (so it is emptied when its last finding goes).
fn due_everywhere(
    ctx: &Context,
    cached: &[std::sync::Arc<ResidentWorkload>],
    found: &[crate::api::residency_policy::Violation],
) -> BTreeSet<String> {
    let mut namespaces: BTreeSet<String> = cached.iter().filter_map(|w| w.namespace()).collect();
    namespaces.extend(found.iter().filter_map(|v| v.namespace.clone()));
    namespaces.extend(
        ctx.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned(),
    );
    namespaces
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
