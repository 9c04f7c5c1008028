//! Wiring: caches, watches with mappers, the three controllers, graceful shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::info;

use super::{Backoff, Context, Settings, cluster, policy, workload};
use crate::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use crate::fleet::registry::Fleet;
use crate::fleet::watch::WatchBackoff;
use crate::metrics::Metrics;

/// Why the operator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A CRD is not installed.
    #[error(
        "CustomResourceDefinition {0} is not installed on the management cluster: install the CRDs first (kubectl apply --server-side -f crds/)"
    )]
    CrdMissing(String),
    /// The management cluster could not be asked.
    #[error("cannot check the CRDs on the management cluster: {0}")]
    Mgmt(#[source] kube::Error),
}

impl StartError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            StartError::CrdMissing(_) => "crd_missing",
            StartError::Mgmt(_) => "mgmt_api",
        }
    }
}

/// Fails fast when a CRD is missing.
pub async fn check_crds(client: &Client) -> Result<(), StartError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::api::crds() {
        let name = crd.name_any();
        if api
            .get_opt(&name)
            .await
            .map_err(StartError::Mgmt)?
            .is_none()
        {
            return Err(StartError::CrdMissing(name));
        }
    }
    Ok(())
}

/// The objects of a watch whose `what` changed (per name), and every deleted one: a change
/// that leaves `what` alone (a status write, which is frequent) does not pass.
fn changes_of<K, S>(
    events: S,
    what: fn(&K) -> u64,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: kube::Resource + Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut seen: std::collections::HashMap<String, u64> = Default::default();
    events.filter_map(move |event| {
        let out = match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                let print = what(&o);
                (seen.insert(o.name_any(), print) != Some(print)).then_some(Ok(o))
            }
            Ok(watcher::Event::Delete(o)) => {
                seen.remove(&o.name_any());
                Some(Ok(o))
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

/// A policy's spec (its `generation`): what re-probes the members' admission policies.
fn policy_spec(p: &ResidencyPolicy) -> u64 {
    p.metadata.generation.unwrap_or_default() as u64
}

/// Runs the controllers until SIGTERM or SIGINT; running reconciles finish first.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    fence: Arc<crate::leader::Fence>,
) -> Result<(), StartError> {
    check_crds(&client).await?;
    let wc = watcher::Config::default();
    let config = controller::Config::default().concurrency(settings.concurrency);

    let (clusters, cluster_writer) = reflector::store::<MemberCluster>();
    let cluster_events = watcher(Api::<MemberCluster>::all(client.clone()), wc.clone())
        .backoff(WatchBackoff::default())
        .reflect(cluster_writer)
        .touched_objects();
    let (policies, policy_writer) = reflector::store::<ResidencyPolicy>();
    // workloads follow what a policy asks (spec, labels, annotations, deletion), not its status,
    // which its controller rewrites while workloads move
    let policy_events = changes_of(
        watcher(Api::<ResidencyPolicy>::all(client.clone()), wc.clone())
            .backoff(WatchBackoff::default())
            .reflect(policy_writer),
        |p| super::intent(p.meta()),
    );

    let (policy_retrigger, policy_rx) = tokio::sync::mpsc::channel(1024);
    // a workload is reconciled when what it asks for changes, not on its own status writes
    // (the cache still takes every change); every change of one, its status included, asks
    // the policies governing it to count again (one watch of the workloads serves both)
    let (workloads, workload_writer) = reflector::store::<ResidentWorkload>();
    let (tap_policies, tap) = (policies.clone(), policy_retrigger.clone());
    let workload_changes = watcher(Api::<ResidentWorkload>::all(client.clone()), wc.clone())
        .backoff(WatchBackoff::default())
        // who wrote which field is the API server's record, never read here: not kept in memory
        .modify(|w| w.metadata.managed_fields = None)
        .reflect(workload_writer)
        .then(move |event| {
            let governing = match &event {
                Ok(
                    watcher::Event::Apply(w)
                    | watcher::Event::InitApply(w)
                    | watcher::Event::Delete(w),
                ) => policy::map_workload(&tap_policies, w),
                _ => Vec::new(),
            };
            let tap = tap.clone();
            async move {
                for p in governing {
                    // the policy controller gone means the operator is stopping
                    let _ = tap.send(p).await;
                }
                event
            }
        })
        .applied_objects()
        .predicate_filter(workload::asks_for, Default::default());
    let workloads_ctrl = Controller::for_stream(workload_changes, workloads.clone())
        .with_config(config.clone())
        .trigger_backoff(WatchBackoff::default());
    let (member_events, member_rx) = tokio::sync::mpsc::channel(1024);
    let (cluster_retrigger, cluster_rx) = tokio::sync::mpsc::channel(1024);
    let cluster_triggers = futures::stream::unfold(cluster_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let policy_triggers = futures::stream::unfold(policy_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let member_triggers = futures::stream::unfold(member_rx, |mut rx| async move {
        rx.recv().await.map(|r| (r, rx))
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        fleet: Arc::new(Fleet::default()),
        clusters: clusters.clone(),
        policies: policies.clone(),
        workloads: workloads.clone(),
        metrics,
        recorder: Recorder::new(client.clone(), Context::reporter()),
        settings,
        ready: ready.clone(),
        backoff: Backoff::default(),
        member_events,
        labelled: Arc::new(crate::fleet::labelled::Index::default()),
        topology: Arc::new(crate::fleet::topology::Index::default()),
        discovery: Default::default(),
        reports: Default::default(),
        report_queue: Default::default(),
        policy_events: policy_retrigger,
        fence,
        relocations: super::Relocations::default(),
        written: Default::default(),
        policy_runs: Default::default(),
        cluster_events: cluster_retrigger,
        admission: Default::default(),
        admission_gate: Default::default(),
    });

    let (w1, w2, p2) = (workloads.clone(), workloads, policies.clone());
    let (changes, c2) = (workload::ClusterChanges::default(), clusters.clone());
    let workload_loop = workloads_ctrl
        .watches_stream(policy_events, move |p| workload::map_policy(&w1, &p))
        .watches_stream(cluster_events, move |c| {
            if changes.relevant(&c2, &c) {
                workload::map_cluster(&w2, &p2, &c)
            } else {
                Vec::new()
            }
        })
        .reconcile_on(member_triggers)
        .shutdown_on_signal()
        .run(workload::reconcile, workload::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    // every member's admission policies follow the policies: a policy's spec change (or its
    // deletion) re-probes every member
    let cluster_ctrl = Controller::new(Api::<MemberCluster>::all(client.clone()), wc.clone())
        .with_config(config.clone())
        .trigger_backoff(WatchBackoff::default());
    let members = cluster_ctrl.store();
    let cluster_loop = cluster_ctrl
        .watches_stream(
            changes_of(
                watcher(Api::<ResidencyPolicy>::all(client.clone()), wc.clone())
                    .backoff(WatchBackoff::default()),
                policy_spec,
            ),
            move |_| {
                members
                    .state()
                    .iter()
                    .map(|m| reflector::ObjectRef::from_obj(m.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_on(cluster_triggers)
        .shutdown_on_signal()
        .run(cluster::reconcile, cluster::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let policy_ctrl = Controller::new(Api::<ResidencyPolicy>::all(client.clone()), wc)
        .with_config(config)
        .trigger_backoff(WatchBackoff::default());
    let policy_loop = policy_ctrl
        .reconcile_on(policy_triggers)
        .shutdown_on_signal()
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    // The only waiter on these two stores: a store wakes just one concurrent waiter, so the
    // reconcilers check `ctx.ready` instead of waiting themselves. The workload store belongs to
    // its controller, which waits for it before reconciling.
    let readiness = async move {
        let _ = clusters.wait_until_ready().await;
        let _ = policies.wait_until_ready().await;
        ready.store(true, Ordering::Relaxed);
        info!("caches synced; controllers running");
    };
    let reports = tokio::spawn(super::reports::run(ctx.clone()));
    tokio::join!(workload_loop, cluster_loop, policy_loop, readiness);
    reports.abort();
    info!("controllers stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(generation: i64, status: &str) -> ResidencyPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
            "metadata": {"name": "ch", "generation": generation},
            "spec": {"countries": ["CH"], "allowedLocations": [{"country": "CH"}]},
            "status": {"governedWorkloads": status.len()}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn status_writes_do_not_pass_spec_changes_and_deletions_do() {
        let events = vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(policy(1, ""))),
            Ok(watcher::Event::InitDone),
            Ok(watcher::Event::Apply(policy(1, "x"))),
            Ok(watcher::Event::Apply(policy(1, "xx"))),
            Ok(watcher::Event::Apply(policy(2, "xx"))),
            Ok(watcher::Event::Delete(policy(2, "xx"))),
        ];
        let passed: Vec<(i64, u32)> = changes_of(futures::stream::iter(events), |p| {
            super::super::intent(p.meta())
        })
        .map(|r| {
            let p = r.unwrap();
            let governed = p.status.map(|s| s.governed_workloads).unwrap_or_default();
            (p.metadata.generation.unwrap(), governed as u32)
        })
        .collect()
        .await;
        assert_eq!(passed, [(1, 0), (2, 2), (2, 2)]);
    }
}
