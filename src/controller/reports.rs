//! Publishing the PolicyReports (see [`crate::policy_report`]): computed from the caches (the
//! workloads, and the policies' findings over the members' inventory), written to the
//! management cluster only when a namespace's report changed, and only by the leader.
//!
//! Reconcilers do not build reports: they mark a namespace changed ([`Queue`]), and one task
//! ([`run`]) builds each changed namespace's report once per [`COALESCE`], from one evaluation
//! of the findings, however many workloads changed meanwhile, and writes a namespace's report
//! at most once per [`SPACING`]: a namespace of a thousand workloads has a report of a thousand
//! results, which costs the management cluster more to store than the changes it reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use tracing::warn;

use super::Context;
use crate::api::ResidentWorkload;

/// How long changes are gathered before the reports they touch are built.
pub const COALESCE: Duration = Duration::from_millis(500);

/// A namespace's report is written at most this often; changes meanwhile wait and go out
/// together.
pub const SPACING: Duration = Duration::from_secs(10);

/// Of the namespaces `due`, those whose report may be written at `now` (never written, or last
/// written at least `spacing` before), and when the first of the others may (pure).
fn split_due(
    due: BTreeSet<String>,
    last: &BTreeMap<String, Instant>,
    now: Instant,
    spacing: Duration,
) -> (BTreeSet<String>, BTreeSet<String>, Option<Instant>) {
    let mut later = None::<Instant>;
    let (ready, wait): (BTreeSet<String>, BTreeSet<String>) =
        due.into_iter().partition(|ns| match last.get(ns) {
            Some(at) if now.saturating_duration_since(*at) < spacing => {
                let at = *at + spacing;
                later = Some(later.map_or(at, |l| l.min(at)));
                false
            }
            _ => true,
        });
    (ready, wait, later)
}

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
    // when each namespace's report was last written, and when a waiting one is due
    let mut last: BTreeMap<String, Instant> = BTreeMap::new();
    let mut next: Option<Instant> = None;
    loop {
        match next {
            Some(at) => {
                tokio::select! {
                    _ = ctx.report_queue.wake.notified() => {}
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            None => ctx.report_queue.wake.notified().await,
        }
        tokio::time::sleep(COALESCE).await;
        next = publish_due(&ctx, &mut last).await;
    }
}

/// Writes the reports due now (each namespace once), and leaves those written less than
/// [`SPACING`] ago due; returns when the first of them may be written.
async fn publish_due(ctx: &Context, last: &mut BTreeMap<String, Instant>) -> Option<Instant> {
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
    let now = Instant::now();
    // the findings are evaluated only when a report is to be built
    let (found, (namespaces, waiting, later)) = if all {
        let found = violations(ctx);
        let due = due_everywhere(ctx, &cached, &found);
        (found, split_due(due, last, now, SPACING))
    } else {
        let split = split_due(dirty, last, now, SPACING);
        let found = if split.0.is_empty() {
            Vec::new()
        } else {
            violations(ctx)
        };
        (found, split)
    };
    if !waiting.is_empty() {
        ctx.report_queue.lock().dirty.extend(waiting);
    }
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
        if write(ctx, namespace, &report).await {
            last.insert(namespace.clone(), now);
        }
    }
    later
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

/// Writes `report` unless it is what was last written; whether it was sent.
async fn write(ctx: &Context, namespace: &str, report: &serde_json::Value) -> bool {
    let hash = crate::desired::content_hash(report);
    {
        let reports = ctx.reports.lock().unwrap_or_else(|e| e.into_inner());
        if reports.get(namespace) == Some(&hash) {
            return false;
        }
    }
    if !ctx.fence.may_write() {
        return false;
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
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_namespace_is_written_at_most_once_per_spacing_and_the_first_waiting_one_is_named() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let spacing = Duration::from_secs(10);
        let last = BTreeMap::from([
            ("long-ago".to_string(), at(0)),
            ("recent".to_string(), at(10)),
            ("more-recent".to_string(), at(12)),
        ]);
        // at 15 s: the new one and the one written 15 s ago go out; the two written 5 and 3 s
        // ago wait, the first of them until 20 s
        let (ready, wait, later) = split_due(
            set(&["new", "long-ago", "recent", "more-recent"]),
            &last,
            at(15),
            spacing,
        );
        assert_eq!(ready, set(&["long-ago", "new"]));
        assert_eq!(wait, set(&["more-recent", "recent"]));
        assert_eq!(later, Some(at(20)));
        // at exactly the spacing it is due
        let (ready, wait, later) = split_due(set(&["recent"]), &last, at(20), spacing);
        assert_eq!((ready, wait, later), (set(&["recent"]), set(&[]), None));
        // nothing due: nothing waits
        let (ready, wait, later) = split_due(set(&[]), &last, at(15), spacing);
        assert!(ready.is_empty() && wait.is_empty() && later.is_none());
    }
}
