//! Wiring: caches, watches with mappers, the three controllers, graceful shutdown.
//!
//! One watch per CRD, fanned out to the controllers that follow it ([`fan_out`]): the
//! workloads' feeds both the workload controller and the policies' counts; the MemberClusters'
//! feeds the workload controller (relevant changes) and the cluster controller (what a member
//! asks for); the policies' feeds all three. No controller is triggered by its own status
//! writes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};
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

/// A watch's events, as one consumer of several sees them.
type Events<K> = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static>,
>;

/// One watch, several consumers: every event of `events` goes to each of the `N` streams
/// returned, in order. A consumer that falls behind holds the others back (bounded channels), as
/// one stream would. A watch error goes to none: the watch retries with backoff, and the cache it
/// fills keeps its state meanwhile. `listed` runs once, after the first full list has gone out.
/// The task stops when the watch ends or a consumer is gone.
fn fan_out<K, const N: usize>(
    events: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    listed: impl FnOnce() + Send + 'static,
) -> ([Events<K>; N], tokio::task::JoinHandle<()>)
where
    K: Clone + Send + Sync + 'static,
{
    let channels: [(_, tokio::sync::mpsc::Receiver<watcher::Event<K>>); N] =
        std::array::from_fn(|_| tokio::sync::mpsc::channel(1024));
    let senders: Vec<_> = channels.iter().map(|(tx, _)| tx.clone()).collect();
    let task = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        let mut listed = Some(listed);
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let done = matches!(event, watcher::Event::InitDone);
            for tx in &senders {
                if tx.send(event.clone()).await.is_err() {
                    return; // the operator is stopping
                }
            }
            if done && let Some(f) = listed.take() {
                f();
            }
        }
    });
    let streams = channels.map(|(_, rx)| {
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        )
        .boxed()
    });
    (streams, task)
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

    // one watch per kind, shared by the controllers that follow it; the reconcilers start once
    // the caches of decisions (MemberClusters, ResidencyPolicies) hold a full list (they check
    // `ctx.ready`)
    const DECISION_CACHES: usize = 2;
    let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listed = |what: &'static str| {
        let (lists, ready) = (lists.clone(), ready.clone());
        move || {
            info!(kind = what, "listed");
            if lists.fetch_add(1, Ordering::AcqRel) + 1 == DECISION_CACHES {
                ready.store(true, Ordering::Relaxed);
                info!("caches synced; controllers running");
            }
        }
    };
    let (clusters, cluster_writer) = reflector::store::<MemberCluster>();
    let ([cluster_events, cluster_spec], cluster_task) = fan_out(
        watcher(Api::<MemberCluster>::all(client.clone()), wc.clone())
            .backoff(WatchBackoff::default())
            .reflect(cluster_writer),
        listed("MemberCluster"),
    );
    let cluster_events = cluster_events.touched_objects();
    let (policies, policy_writer) = reflector::store::<ResidencyPolicy>();
    let ([policy_events, policy_specs, policy_asks], policy_task) = fan_out(
        watcher(Api::<ResidencyPolicy>::all(client.clone()), wc.clone())
            .backoff(WatchBackoff::default())
            .reflect(policy_writer),
        listed("ResidencyPolicy"),
    );
    // workloads follow what a policy asks (spec, labels, annotations, deletion), not its status,
    // which its controller rewrites while workloads move
    let policy_events = changes_of(policy_events, |p| super::intent(p.meta()));

    let (policy_retrigger, policy_rx) = tokio::sync::mpsc::channel(1024);
    let (workloads, workload_writer) = reflector::store::<ResidentWorkload>();
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
        policy_events: policy_retrigger.clone(),
        fence,
        relocations: super::Relocations::default(),
        written: Default::default(),
        policy_runs: Default::default(),
        cluster_events: cluster_retrigger,
        admission: Default::default(),
        admission_gate: Default::default(),
    });

    // a workload is reconciled when what it asks for changes, not on its own status writes
    // (the cache still takes every change); every change of one, its status included, asks
    // the policies governing it to count again (one watch of the workloads serves both)
    let (tap_policies, tap) = (policies.clone(), policy_retrigger);
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
        .predicate_filter(super::asks_for, Default::default())
        // the version the operator's own finalizer patch made: the reconcile that wrote it
        // went on with it, so it asks for nothing new
        .try_filter({
            let ctx = ctx.clone();
            move |w| futures::future::ready(!ctx.written.made_by_finalizer_patch(w))
        });
    let workloads_ctrl = Controller::for_stream(workload_changes, workloads.clone())
        .with_config(config.clone())
        .trigger_backoff(WatchBackoff::default());
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
    // a member is probed when what it asks for changes (and every probe interval), not on its
    // own status writes: while workloads are placed its inventory changes with every copy, and
    // each write would probe it again. Every member's admission policies follow the policies:
    // a policy's spec change (or its deletion) re-probes every member.
    let cluster_ctrl = Controller::for_stream(
        cluster_spec
            .applied_objects()
            .predicate_filter(super::asks_for, Default::default()),
        clusters.clone(),
    )
    .with_config(config.clone())
    .trigger_backoff(WatchBackoff::default());
    let members = clusters;
    let cluster_loop = cluster_ctrl
        .watches_stream(changes_of(policy_specs, policy_spec), move |_| {
            members
                .state()
                .iter()
                .map(|m| reflector::ObjectRef::from_obj(m.as_ref()))
                .collect::<Vec<_>>()
        })
        .reconcile_on(cluster_triggers)
        .shutdown_on_signal()
        .run(cluster::reconcile, cluster::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    // a policy counts again when what it asks for changes, when the workloads or member objects
    // of its countries change (the triggers) and every 30 s; not on its own status writes
    let policy_ctrl = Controller::for_stream(
        policy_asks
            .applied_objects()
            .predicate_filter(super::asks_for, Default::default()),
        policies,
    )
    .with_config(config)
    .trigger_backoff(WatchBackoff::default());
    let policy_loop = policy_ctrl
        .reconcile_on(policy_triggers)
        .shutdown_on_signal()
        .run(policy::reconcile, policy::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let reports = tokio::spawn(super::reports::run(ctx.clone()));
    tokio::join!(workload_loop, cluster_loop, policy_loop);
    for task in [reports, cluster_task, policy_task] {
        task.abort();
    }
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
