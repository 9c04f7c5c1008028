//! The reconcilers and their shared context.
//!
//! - `cluster`: connects to each MemberCluster, probes it and attests its location (status).
//! - `workload`: places each ResidentWorkload on its target clusters and relocates it, make
//!   before break, when they change.
//! - `policy`: reports what each ResidencyPolicy matches, what violates it (from the members'
//!   inventory) and what was forgotten with a removed member.
//! - `admission` (run by `cluster`): keeps each member's admission policies in line with the
//!   policies (prevention).
//! - `reports`: publishes the namespaces' PolicyReports from the same findings.
//!
//! The workload controller is event-driven: changes to policies and member clusters trigger
//! exactly the workloads they can affect (watch mappers over the reflector caches below).

pub mod admission;
pub mod cluster;
pub mod datamove;
pub mod plan;
pub mod policy;
pub mod reports;
pub mod runner;
pub mod status;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;

use crate::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use crate::fleet::kubeconfig::{ConnectionError, ConnectionPolicy};
use crate::fleet::member::MemberError;
use crate::fleet::registry::Fleet;
use crate::metrics::Metrics;

/// Errors of the reconcilers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the management cluster failed.
    #[error("management cluster: {action}: {source}")]
    Mgmt {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A call to a member cluster failed.
    #[error(transparent)]
    Member(#[from] MemberError),
    /// A member's connection could not be configured.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// Cleanup cannot finish yet.
    #[error("cleanup blocked: {0}")]
    CleanupBlocked(String),
    /// A Secret of `spec.secrets` cannot be read from the management cluster.
    #[error("secret source: {0}")]
    SecretSource(String),
    /// This replica cannot prove it holds the leader Lease: it writes nothing.
    #[error("not the leader: this replica cannot prove it holds the lease, so it writes nothing")]
    Fenced,
    /// The finalizer machinery failed.
    #[error("finalizer: {0}")]
    Finalizer(String),
}

impl Error {
    /// Stable category, used as metric label and Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Mgmt { .. } => "mgmt_api",
            Error::Member(e) => e.category(),
            Error::Connection(e) => e.category(),
            Error::CleanupBlocked(_) => "cleanup_blocked",
            Error::Fenced => "fenced",
            Error::SecretSource(_) => "secret_source",
            Error::Finalizer(_) => "finalizer",
        }
    }

    pub(crate) fn mgmt(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let action = action.into();
        move |source| Error::Mgmt { action, source }
    }
}

/// Result alias of the reconcilers.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings of the running operator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace holding the members' kubeconfig Secrets.
    pub namespace: String,
    /// What member kubeconfigs may use.
    pub connection_policy: ConnectionPolicy,
    /// How often members are probed.
    pub probe_interval: Duration,
    /// How often a workload with work in flight is re-checked.
    pub progress_interval: Duration,
    /// How often a settled workload is re-checked (reads only).
    pub resync_interval: Duration,
    /// Maximum concurrent reconciles per controller.
    pub concurrency: u16,
    /// Maximum workloads relocating at once.
    pub max_relocations: usize,
    /// This replica's identity (pod name), in the user agent and the leader Lease.
    pub instance: String,
    /// The image of the data mover Pods (the operator's own); no data move starts without it.
    pub mover_image: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: "residency-system".into(),
            connection_policy: ConnectionPolicy::default(),
            probe_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(2),
            resync_interval: Duration::from_secs(600),
            concurrency: 32,
            max_relocations: 32,
            instance: "residency-operator".into(),
            mover_image: None,
        }
    }
}

/// Everything a reconciler needs.
pub struct Context {
    /// Client of the management cluster.
    pub client: Client,
    /// Member connections.
    pub fleet: Arc<Fleet>,
    /// Cache of MemberClusters.
    pub clusters: Store<MemberCluster>,
    /// Cache of ResidencyPolicies.
    pub policies: Store<ResidencyPolicy>,
    /// Cache of ResidentWorkloads.
    pub workloads: Store<ResidentWorkload>,
    /// Metrics.
    pub metrics: Metrics,
    /// Event recorder.
    pub recorder: Recorder,
    /// Settings.
    pub settings: Settings,
    /// Set once every controller runs.
    pub ready: Arc<AtomicBool>,
    /// Per-object error backoff.
    pub backoff: Backoff,
    /// Objects on the members labelled with a country (hand-made ones included).
    pub labelled: Arc<crate::fleet::labelled::Index>,
    /// Each member's nodes, volumes, StorageClasses and placed Pods and claims (location
    /// evidence).
    pub topology: Arc<crate::fleet::topology::Index>,
    /// Which kinds each member serves.
    pub discovery: crate::fleet::discovery::Discovery,
    /// Policies to re-evaluate because labelled objects changed on a member.
    pub policy_events:
        tokio::sync::mpsc::Sender<kube::runtime::reflector::ObjectRef<ResidencyPolicy>>,
    /// The last PolicyReport content written per namespace (hash), so unchanged reports are
    /// not written again.
    pub reports: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The namespaces whose PolicyReport is due (built by [`reports::run`]).
    pub report_queue: reports::Queue,
    /// Workloads whose placed objects changed on a member (from the member watches).
    pub member_events:
        tokio::sync::mpsc::Sender<kube::runtime::reflector::ObjectRef<ResidentWorkload>>,
    /// Whether this replica may write (leader election).
    pub fence: Arc<crate::leader::Fence>,
    /// The workloads relocating now (bounded by `settings.max_relocations`).
    pub relocations: Relocations,
    /// The workload statuses written and not yet seen in the cache.
    pub written: Written,
    /// When each policy was last evaluated (evaluations are spaced, see [`Spacing`]).
    pub policy_runs: Spacing,
    /// Members to probe again now (their admission policies changed on the member).
    pub cluster_events:
        tokio::sync::mpsc::Sender<kube::runtime::reflector::ObjectRef<MemberCluster>>,
    /// What the operator last wrote of each member's admission objects (`cluster/kind/name`).
    pub admission: std::sync::Mutex<std::collections::HashMap<String, crate::admission::Written>>,
    /// Per member, the countries its admission policy refuses as last written there, and the
    /// workloads waiting for it to follow a policy edit.
    pub admission_gate: std::sync::Mutex<AdmissionGate>,
}

/// Keeps the operator from sending a correct placement a member would still refuse: after a
/// policy edit allows a member, its admission policy is relaxed first, and the workloads
/// waiting for that are woken as soon as it is.
#[derive(Default)]
pub struct AdmissionGate {
    refused: std::collections::HashMap<String, std::collections::BTreeSet<String>>,
    waiting: std::collections::HashMap<
        String,
        std::collections::HashSet<kube::runtime::reflector::ObjectRef<ResidentWorkload>>,
    >,
}

impl AdmissionGate {
    /// The countries of `countries` that `cluster`'s admission policy, as last written,
    /// refuses; `waiter` is woken when that changes. Nothing when the operator does not know
    /// what the member holds (then a refusal, if any, comes back from the member).
    pub fn refuses(
        &mut self,
        cluster: &str,
        countries: &[String],
        waiter: kube::runtime::reflector::ObjectRef<ResidentWorkload>,
    ) -> Vec<String> {
        let refused: Vec<String> = self
            .refused
            .get(cluster)
            .map(|r| {
                countries
                    .iter()
                    .filter(|c| r.contains(*c))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if !refused.is_empty() {
            self.waiting
                .entry(cluster.to_string())
                .or_default()
                .insert(waiter);
        }
        refused
    }

    /// Records what `cluster`'s admission policy refuses now (`None`: unknown, e.g. the write
    /// failed) and returns the workloads to wake.
    pub fn written(
        &mut self,
        cluster: &str,
        refused: Option<std::collections::BTreeSet<String>>,
    ) -> Vec<kube::runtime::reflector::ObjectRef<ResidentWorkload>> {
        match refused {
            Some(r) => self.refused.insert(cluster.to_string(), r),
            None => self.refused.remove(cluster),
        };
        self.waiting
            .remove(cluster)
            .map(|w| w.into_iter().collect())
            .unwrap_or_default()
    }
}

/// Spaces the runs of a reconciler per object: changes that arrive in bursts (every workload
/// status a policy governs, every inventory change) are covered by one run per gap, not one
/// each. The reconciler waits out the rest of the gap; triggers meanwhile merge into one.
#[derive(Default)]
pub struct Spacing {
    last: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

impl Spacing {
    /// Waits until `gap` has passed since `key`'s last run, and records this run.
    pub async fn wait(&self, key: &str, gap: Duration) {
        let since = {
            let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
            last.get(key).map(|t| t.elapsed())
        };
        if let Some(since) = since
            && since < gap
        {
            tokio::time::sleep(gap - since).await;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.insert(key.to_string(), std::time::Instant::now());
    }
}

/// The status each workload's last reconcile wrote, with the `resourceVersion` of the object
/// it was computed from. A reconcile that starts from that same version (the cache has not
/// seen the write yet) starts from the written status instead: it neither writes it again nor
/// announces its Events twice, and its record of copies is the newest one.
///
/// Likewise the workloads whose finalizer a reconcile added or removed, by the version it was
/// added to or removed from: a reconcile that starts from that same version knows the finalizer
/// is there (it writes it no second time), or does nothing (the copies were removed, and the
/// workload is going).
#[derive(Default)]
pub struct Written {
    statuses: std::sync::Mutex<std::collections::HashMap<String, WrittenStatus>>,
    finalizer_added: WrittenFrom,
    finalized: WrittenFrom,
}

/// Versions of workloads (by `namespace/name`) something was written from, and the version the
/// write made, kept a minute: the cache shows the write within moments.
#[derive(Default)]
struct WrittenFrom(std::sync::Mutex<std::collections::HashMap<String, VersionWritten>>);

/// The version written from, the version made, and when.
type VersionWritten = (Option<String>, Option<String>, Instant);

impl WrittenFrom {
    fn note(&self, key: &str, base: Option<String>, made: Option<String>) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, (_, _, at)| at.elapsed() < Duration::from_secs(60));
        m.insert(key.to_string(), (base, made, Instant::now()));
    }

    /// Whether `rw` is the version the write made.
    fn made(&self, key: &str, rw: &ResidentWorkload) -> bool {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key)
            .is_some_and(|(_, made, _)| made.is_some() && *made == rw.metadata.resource_version)
    }

    /// The version the write made, when `rw` is the version it was written from.
    fn made_from(&self, key: &str, rw: &ResidentWorkload) -> Option<Option<String>> {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key)
            .filter(|(base, _, _)| *base == rw.metadata.resource_version)
            .map(|(_, made, _)| made.clone())
    }
}

/// A status written, the `resourceVersion` of the object it was computed from, and when.
type WrittenStatus = (
    Option<String>,
    Arc<crate::api::ResidentWorkloadStatus>,
    Instant,
);

impl Written {
    /// The status written from this version of `rw` (the workload `key`), when the cache has
    /// not seen it yet.
    pub fn ahead_of(
        &self,
        key: &str,
        rw: &ResidentWorkload,
    ) -> Option<Arc<crate::api::ResidentWorkloadStatus>> {
        let m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key)
            .filter(|(base, _, _)| *base == rw.metadata.resource_version)
            .map(|(_, written, _)| written.clone())
    }

    /// The status `rw` (the workload `key`) last had: the one written from this version of it,
    /// else its own.
    pub fn previous(&self, key: &str, rw: &ResidentWorkload) -> crate::api::ResidentWorkloadStatus {
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        match m.get_mut(key) {
            Some((base, written, _)) if *base == rw.metadata.resource_version => {
                (**written).clone()
            }
            Some((base, written, _)) => {
                // the cache has a newer version (the write, or a later change): it is the truth;
                // when the status was written is still known
                *base = None;
                *written = Arc::default();
                rw.status.clone().unwrap_or_default()
            }
            None => rw.status.clone().unwrap_or_default(),
        }
    }

    /// How long a status change of the workload `key` that shows only progress should wait,
    /// so that its status is written at most once per `spacing` for progress alone (`None`:
    /// write now).
    pub fn progress_wait(&self, key: &str, spacing: Duration) -> Option<Duration> {
        let m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let (_, _, at) = m.get(key)?;
        spacing.checked_sub(at.elapsed()).filter(|d| !d.is_zero())
    }

    /// Notes that `status` was written for the workload `key`, computed from version `base`.
    pub fn wrote(
        &self,
        key: &str,
        base: Option<String>,
        status: &crate::api::ResidentWorkloadStatus,
    ) {
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(
            key.to_string(),
            (base, Arc::new(status.clone()), Instant::now()),
        );
    }

    /// Forgets the workload `key` (deleted).
    pub fn forget(&self, key: &str) {
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }

    /// Notes that the finalizer of the workload `key` was removed from its version `base`.
    pub fn finalized(&self, key: &str, base: Option<String>) {
        self.finalized.note(key, base, None);
    }

    /// Whether `rw` (the workload `key`) is a version whose finalizer a reconcile removed.
    pub fn was_finalized(&self, key: &str, rw: &ResidentWorkload) -> bool {
        self.finalized.made_from(key, rw).is_some()
    }

    /// Notes that the finalizer was added to the workload `key`'s version `base`, making
    /// version `made`.
    pub fn finalizer_added(&self, key: &str, base: Option<String>, made: Option<String>) {
        self.finalizer_added.note(key, base, made);
    }

    /// Whether `rw` is the very version a reconcile made by adding the finalizer: that
    /// reconcile went on with it, so it asks for nothing new.
    pub fn made_by_finalizer_patch(&self, rw: &ResidentWorkload) -> bool {
        self.finalizer_added.made(&workload_key(rw), rw)
    }

    /// The version a reconcile made by adding the finalizer to `rw` (the workload `key`), when
    /// `rw` is the version it was added to.
    pub fn finalizer_added_to(&self, key: &str, rw: &ResidentWorkload) -> Option<Option<String>> {
        self.finalizer_added.made_from(key, rw)
    }
}

/// The workloads that hold a relocation slot, and those waiting for one (first come, first
/// woken).
#[derive(Default)]
pub struct Relocations {
    slots: std::sync::Mutex<RelocationSlots>,
}

#[derive(Default)]
struct RelocationSlots {
    taken: std::collections::BTreeSet<String>,
    waiting: std::collections::VecDeque<String>,
}

impl Relocations {
    /// Takes (or keeps) a slot for `key`; false when `max` slots are taken by others (`key`
    /// then waits in line).
    pub fn acquire(&self, key: &str, max: usize) -> bool {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if s.taken.contains(key) {
            return true;
        }
        if s.taken.len() < max {
            s.taken.insert(key.to_string());
            s.waiting.retain(|w| w != key);
            return true;
        }
        if !s.waiting.iter().any(|w| w == key) {
            s.waiting.push_back(key.to_string());
        }
        false
    }

    /// Frees `key`'s slot (its relocation finished or it was deleted); returns the workload
    /// first in line for it, to wake.
    pub fn release(&self, key: &str) -> Option<String> {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting.retain(|w| w != key);
        if s.taken.remove(key) {
            s.waiting.pop_front()
        } else {
            None
        }
    }

    /// How many slots are taken.
    pub fn in_flight(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .taken
            .len()
    }
}

impl Context {
    /// Frees `key`'s (`namespace/name`) relocation slot and wakes the workload first in line.
    pub fn release_relocation(&self, key: &str) {
        if let Some(next) = self.relocations.release(key)
            && let Some((ns, name)) = next.split_once('/')
        {
            // a full queue is no loss: a waiting workload checks again on its own
            let _ = self
                .member_events
                .try_send(kube::runtime::reflector::ObjectRef::new(name).within(ns));
        }
    }

    /// Every policy of the cache as the engine's facts.
    pub fn policy_facts(&self) -> Vec<crate::placement::PolicyFacts> {
        self.policies
            .state()
            .iter()
            .map(|p| crate::facts::policy(p))
            .collect()
    }

    /// Where the watches of a member whose connection keeps `memo` report.
    pub fn sinks(&self, memo: Arc<crate::fleet::member::Memo>) -> crate::fleet::labelled::Sinks {
        crate::fleet::labelled::Sinks {
            index: self.labelled.clone(),
            policies: self.policies.clone(),
            policy_tx: self.policy_events.clone(),
            workloads_tx: self.member_events.clone(),
            memo,
        }
    }

    /// Watches the kinds `resources` on `cluster` (drift and inventory of kinds beyond the
    /// well-known ones), each once per connection.
    ///
    /// Secrets, when the member's identity may not list them in every namespace, are watched
    /// in `namespace` (the workload's) instead.
    pub fn watch_kinds(
        &self,
        cluster: &str,
        namespace: &str,
        resources: &[kube::core::ApiResource],
    ) {
        let Some(connection) = self.fleet.get(cluster) else {
            return;
        };
        let Some(watches) = connection.watches else {
            return;
        };
        let secrets = (!connection.secrets_cluster_wide)
            .then(|| kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()));
        let each = resources
            .iter()
            .map(|ar| (ar, None))
            .chain(secrets.iter().map(|ar| (ar, Some(namespace))));
        for (ar, ns) in each {
            let key = format!("{}/{}@{}", ar.api_version, ar.kind, ns.unwrap_or(""));
            watches.ensure(&key, || {
                crate::fleet::labelled::watch_kind(
                    watches.client.clone(),
                    cluster,
                    ar.clone(),
                    ns,
                    self.sinks(watches.memo.clone()),
                )
            });
        }
    }

    /// What the operator last wrote of the admission object `key`.
    pub fn admission_written(&self, key: &str) -> Option<crate::admission::Written> {
        let m = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key).cloned()
    }

    /// Records a write of the admission object `key`.
    pub fn record_admission_written(&self, key: &str, written: crate::admission::Written) {
        let mut m = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), written);
    }

    /// Forgets the admission object `key` (deleted).
    pub fn forget_admission_written(&self, key: &str) {
        let mut m = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }

    /// True once the cluster and policy caches hold a full list: before that, a decision could
    /// see too few clusters or policies.
    pub fn synced(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Err(Fenced)` unless this replica may write now (it holds the leader Lease).
    pub fn may_write(&self) -> Result<()> {
        if self.fence.may_write() {
            Ok(())
        } else {
            Err(Error::Fenced)
        }
    }

    /// Writes `status` to the status subresource of `name` in `api` (server-side apply with
    /// the operator's field manager), unless this replica may not write.
    pub async fn apply_status<K>(
        &self,
        api: &kube::Api<K>,
        name: &str,
        status: &impl serde::Serialize,
    ) -> Result<()>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.may_write()?;
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status
        });
        api.patch_status(
            name,
            &kube::api::PatchParams::apply(crate::api::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(patch),
        )
        .await
        .map_err(Error::mgmt(format!(
            "patch status of {} {name}",
            K::kind(&())
        )))?;
        Ok(())
    }

    /// The member `cluster` when the last probe reached it (a client exists): every write of
    /// the workload controllers goes through it (fenced, counted).
    pub fn member<'a>(&'a self, cluster: &'a str) -> Option<crate::fleet::member::Member<'a>> {
        let connection = self.fleet.get(cluster);
        let access = connection.as_ref().and_then(|c| c.access.clone());
        let watches = connection.and_then(|c| c.watches);
        let memo = watches.as_ref().map(|w| w.memo.clone()).unwrap_or_default();
        let watched = watches.map(|w| crate::fleet::member::Watched {
            labelled: &self.labelled,
            ready: w.ready.clone(),
        });
        self.fleet
            .client(cluster)
            .map(|client| crate::fleet::member::Member {
                access,
                memo,
                watched,
                name: cluster,
                client,
                metrics: &self.metrics,
                fence: &self.fence,
                discovery: &self.discovery,
                pod_security: self
                    .clusters
                    .get(&kube::runtime::reflector::ObjectRef::new(cluster))
                    .map(|mc| mc.spec.pod_security)
                    .unwrap_or_default(),
            })
    }

    /// The countries of `rw` that `cluster`'s admission policy (as last written there) still
    /// refuses; when there are some, the member is probed again so its policy follows the edit
    /// (and the workload is woken once it does).
    pub fn admission_refuses(&self, cluster: &str, rw: &ResidentWorkload) -> Vec<String> {
        let countries: Vec<String> = rw.spec.countries.iter().map(|c| c.to_string()).collect();
        let refused = self
            .admission_gate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refuses(
                cluster,
                &countries,
                kube::runtime::reflector::ObjectRef::from_obj(rw),
            );
        if !refused.is_empty() {
            let _ = self
                .cluster_events
                .try_send(kube::runtime::reflector::ObjectRef::new(cluster));
        }
        refused
    }

    /// Publishes an Event about `regarding` (related to `secondary` when given, e.g. the
    /// MemberCluster it concerns), unless this replica may not write. It is sent in the
    /// background: a reconcile does not wait for its Events. A failure is logged.
    pub fn publish_event(
        &self,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
        secondary: Option<k8s_openapi::api::core::v1::ObjectReference>,
        type_: kube::runtime::events::EventType,
        reason: &str,
        note: &str,
    ) {
        if !self.fence.may_write() {
            return;
        }
        let event = kube::runtime::events::Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: reason.into(),
            secondary,
        };
        let (recorder, regarding, reason) =
            (self.recorder.clone(), regarding.clone(), reason.to_string());
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason, "could not publish event");
            }
        });
    }

    /// The event reporter of the operator.
    pub fn reporter() -> Reporter {
        Reporter {
            controller: "residency-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        }
    }
}

/// Backoff for failed reconciles: exponential per object, from 1 s up to 5 min.
#[derive(Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before retrying `key` after another failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        backoff_delay(*n)
    }

    /// Forgets `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(key);
    }
}

/// A hash of what an object asks of the operator: its spec (`generation`), labels,
/// annotations, finalizers and deletion; its status is left out. Triggers compare it so that
/// the operator's own status writes, which are frequent, reconcile nothing.
pub fn intent(meta: &kube::api::ObjectMeta) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.finalizers.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    h.finish()
}

/// [`intent`] as a watch predicate: an object's own status writes, which only the operator
/// makes, do not trigger its reconcile again.
pub fn asks_for<K: kube::Resource>(o: &K) -> Option<u64> {
    Some(intent(o.meta()))
}

/// A workload's key in the operator's own records (`namespace/name`).
pub fn workload_key(rw: &ResidentWorkload) -> String {
    use kube::ResourceExt;
    format!("{}/{}", rw.namespace().unwrap_or_default(), rw.name_any())
}

/// 1 s, 2 s, 4 s, ... capped at 300 s.
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_status_is_the_previous_one_until_the_cache_has_a_newer_version() {
        let rw = |version: &str, targets: &[&str]| -> ResidentWorkload {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
                "metadata": {"name": "w", "namespace": "ns", "resourceVersion": version},
                "spec": {"role": "Processing", "countries": ["CH"], "manifests": []},
                "status": {"targets": targets}
            }))
            .unwrap()
        };
        let w = Written::default();
        let stale = rw("1", &[]);
        assert!(w.previous("ns/w", &stale).targets.is_empty());
        let mut written = stale.status.clone().unwrap();
        written.targets = vec!["zrh-1".into()];
        w.wrote("ns/w", Some("1".into()), &written);
        // the cache still shows version 1: the written status counts
        assert_eq!(w.previous("ns/w", &stale).targets, ["zrh-1"]);
        assert_eq!(w.ahead_of("ns/w", &stale).unwrap().targets, ["zrh-1"]);
        assert!(w.ahead_of("ns/w", &rw("2", &[])).is_none());
        // the cache caught up (or something else changed it): the cache counts, from then on
        assert_eq!(w.previous("ns/w", &rw("2", &["zrh-2"])).targets, ["zrh-2"]);
        assert!(w.previous("ns/w", &stale).targets.is_empty());
        w.wrote("ns/w", Some("2".into()), &written);
        w.forget("ns/w");
        assert_eq!(w.previous("ns/w", &rw("2", &["zrh-2"])).targets, ["zrh-2"]);
        // the finalizer added to version 2 made version 3; removed from version 5
        w.finalizer_added("ns/w", Some("2".into()), Some("3".into()));
        assert_eq!(
            w.finalizer_added_to("ns/w", &rw("2", &[])),
            Some(Some("3".into()))
        );
        assert_eq!(w.finalizer_added_to("ns/w", &rw("3", &[])), None);
        // version 3 is the patch's own: it triggers nothing; 2 and 4 are others'
        assert!(w.made_by_finalizer_patch(&rw("3", &[])));
        assert!(!w.made_by_finalizer_patch(&rw("2", &[])));
        assert!(!w.made_by_finalizer_patch(&rw("4", &[])));
        w.finalized("ns/w", Some("5".into()));
        assert!(w.was_finalized("ns/w", &rw("5", &[])));
        assert!(!w.was_finalized("ns/w", &rw("6", &[])));
    }

    #[test]
    fn relocation_slots_are_bounded_and_reentrant() {
        let r = Relocations::default();
        assert!(r.acquire("a", 2) && r.acquire("b", 2));
        assert!(!r.acquire("c", 2), "third relocation waits");
        assert!(r.acquire("a", 2), "a holder keeps its slot");
        r.release("a");
        assert!(r.acquire("c", 2));
        assert_eq!(r.in_flight(), 2);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(30), Duration::from_secs(300));
        let b = Backoff::default();
        assert_eq!(b.next("a"), Duration::from_secs(1));
        assert_eq!(b.next("a"), Duration::from_secs(2));
        b.reset("a");
        assert_eq!(b.next("a"), Duration::from_secs(1));
    }
}
