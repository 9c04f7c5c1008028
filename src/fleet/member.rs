//! Thin I/O against one member cluster: apply a workload's objects, read their readiness, evict
//! them. Every decision about *what* to do is made by the caller from pure functions; this
//! module only talks to the API server, and never writes after a failed read. What the
//! member's watches already show is not asked again: an object unchanged since the operator
//! applied or read it ([`Memo`], [`Watched`]) is not read, and a copy is removed by the UIDs the
//! watches saw ([`Known`]).

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::labels;
use crate::api::resident_workload::ObjectStatus;
use crate::api::{FIELD_MANAGER, resident_workload::VolumePolicy};
use crate::desired::{self, DesiredObject, HASH_ANNOTATION};
use crate::drift::{self, FieldDrift};
use crate::metrics::Metrics;
use crate::readiness;

/// A failed call to a member's API server.
#[derive(Debug, thiserror::Error)]
#[error("member {cluster}: {action}: {source}")]
pub struct MemberError {
    /// MemberCluster name.
    pub cluster: String,
    /// What was being done, e.g. "apply Deployment malware-analysis".
    pub action: String,
    /// Why it failed.
    #[source]
    pub source: Cause,
}

/// Why a call to a member failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// The API server refused the call, or could not be reached.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// The write was not sent: this replica cannot prove it holds the leader Lease.
    #[error("not sent: this replica cannot prove it holds the leader lease")]
    Fenced,
    /// The kind cannot be handled this way.
    #[error("unsupported kind {0}")]
    Kind(String),
    /// The member does not serve the kind.
    #[error(
        "{kind} ({api_version}) is not served by this member: install its CustomResourceDefinition there, or leave the cluster out of the workload's policies"
    )]
    NotServed {
        /// The manifest's apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
    /// The member serves the kind cluster-scoped.
    #[error(
        "{kind} ({api_version}) is cluster-scoped on this member: a workload places namespaced objects only"
    )]
    ClusterScoped {
        /// The manifest's apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
    },
}

impl MemberError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match &self.source {
            Cause::Api(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => "member_forbidden",
            Cause::Api(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => "member_rejected",
            Cause::Api(kube::Error::Api(_)) => "member_api",
            Cause::Api(_) => "member_unreachable",
            Cause::Fenced => "fenced",
            Cause::Kind(_) => "member_unsupported_kind",
            Cause::NotServed { .. } => "member_kind_not_served",
            Cause::ClusterScoped { .. } => "member_kind_cluster_scoped",
        }
    }

    /// True when the API server could not be reached at all (as opposed to refusing a request).
    pub fn is_connectivity(&self) -> bool {
        matches!(&self.source, Cause::Api(e) if !matches!(e, kube::Error::Api(_)))
    }
}

/// The drifted fields of one placed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDrift {
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// What differs.
    pub fields: Vec<FieldDrift>,
}

/// What applying a workload's objects on a member found.
#[derive(Debug, Default)]
pub struct Placed {
    /// The readiness of each object.
    pub objects: Vec<ObjectStatus>,
    /// The drift that was corrected.
    pub corrected: Vec<ObjectDrift>,
    /// Objects not applied because another workload (or nobody through the operator) owns
    /// them: `kind name: why`.
    pub conflicts: Vec<String>,
    /// The resources of the kinds placed that are not well-known (to watch them for drift).
    pub resources: Vec<kube::core::ApiResource>,
}

/// What the operator's watches already know of a workload's copy on a member, so that removing
/// it asks the member less: the UIDs of its objects seen carrying the workload's labels (by
/// kind and name), and its claims when the claims' watch has listed them. What is missing is
/// asked.
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// UIDs by kind and name.
    pub uids: std::collections::BTreeMap<(String, String), String>,
    /// The claims labelled as the workload's; `None` when they must be listed.
    pub claims: Option<Vec<String>>,
}

/// One member cluster, as seen by the workload controller.
pub struct Member<'a> {
    /// MemberCluster name.
    pub name: &'a str,
    /// A client of a member the last probe reached.
    pub client: Client,
    /// Where writes are counted.
    pub metrics: &'a Metrics,
    /// Asked before every write (leader election).
    pub fence: &'a crate::leader::Fence,
    /// What each member serves.
    pub discovery: &'a super::discovery::Discovery,
    /// The Pod Security level of the namespaces the operator creates there.
    pub pod_security: crate::api::member_cluster::PodSecurity,
    /// The identity `join` made, when the member's credential is one: the operator binds
    /// itself to its workloads role in each namespace it places into.
    pub access: Option<super::registry::Access>,
    /// What this connection checked already.
    pub memo: std::sync::Arc<Memo>,
    /// What the member's watches show, when it is watched.
    pub watched: Option<Watched<'a>>,
}

/// What a member's watches show of the objects placed there: their metadata's
/// [`super::labelled::fingerprint`] and, for the kinds whose readiness lives in their status,
/// their readiness. An object unchanged since the operator applied or read it is not read
/// again.
pub struct Watched<'a> {
    /// The labelled objects of every member.
    pub labelled: &'a super::labelled::Index,
    /// This member's readiness watches.
    pub ready: std::sync::Arc<super::ready::States>,
}

/// What one connection to a member has checked already, so that reconciles do not ask again
/// each time: the namespaces it made ready for placement (labels and the operator's binding)
/// and the member's answers on whether it admits a pod template. Entries expire; a failed
/// placement forgets its namespace, so the next one checks again.
#[derive(Default)]
pub struct Memo {
    namespaces: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    refusals: std::sync::Mutex<
        std::collections::HashMap<PodTemplate, (std::time::Instant, Option<String>)>,
    >,
    verified: std::sync::Mutex<VerifiedObjects>,
}

impl Verified {
    /// Its readiness now, when it is still the object verified (pure): the same desired
    /// `hash`, and its watch shows the same `print`. A kind without `generation` changes its
    /// print with every change, its status included; one with it needs what a readiness watch
    /// shows (`watched`). `None`: it must be read.
    fn still(
        &self,
        hash: &str,
        print: Option<u64>,
        watched: Option<readiness::Readiness>,
    ) -> Option<readiness::Readiness> {
        if self.hash != hash || print != Some(self.print) {
            return None;
        }
        if self.generation {
            watched
        } else {
            Some(self.readiness.clone())
        }
    }
}

/// What is known of an object before writing.
enum Read {
    /// The watches show it unchanged since it was verified: its readiness.
    Unchanged(readiness::Readiness),
    /// It was read (`None`: it does not exist).
    Live(Option<Box<DynamicObject>>),
    /// The watches do not show it: it is created, which reads it when one exists after all.
    Unseen,
}

/// One object read (and applied when needed).
enum Checked {
    /// It is as desired now: its metadata's fingerprint, whether its kind has a generation,
    /// the drift corrected and its readiness.
    Placed {
        print: u64,
        generation: bool,
        drift: Vec<FieldDrift>,
        readiness: readiness::Readiness,
    },
    /// Another owner holds it: why.
    Conflict(String),
}

/// The objects verified, and when expired ones were last dropped.
#[derive(Default)]
struct VerifiedObjects {
    objects: std::collections::HashMap<super::labelled::Key, Verified>,
    /// Objects the operator deleted: their UID, and when.
    removed: std::collections::HashMap<super::labelled::Key, (String, std::time::Instant)>,
    pruned: Option<std::time::Instant>,
}

/// An object as the operator last applied or read it (and found it as desired).
#[derive(Clone, Debug)]
struct Verified {
    at: std::time::Instant,
    /// The desired object's hash.
    hash: String,
    /// Its metadata's fingerprint then.
    print: u64,
    /// Whether its kind has a `generation` (then its status may change without the print).
    generation: bool,
    /// Its readiness then.
    readiness: crate::readiness::Readiness,
}

/// A pod template asked about: namespace, object name, object hash.
type PodTemplate = (String, String, String);

impl Memo {
    /// How long a namespace stays checked.
    pub const NAMESPACE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
    /// How long an admission answer is kept.
    pub const REFUSAL_TTL: std::time::Duration = std::time::Duration::from_secs(30);

    fn namespace_ready(&self, namespace: &str) -> bool {
        let m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        m.get(namespace)
            .is_some_and(|t| t.elapsed() < Self::NAMESPACE_TTL)
    }

    fn set_namespace_ready(&self, namespace: &str) {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(namespace.to_string(), std::time::Instant::now());
    }

    /// Checks `namespace` again at the next placement.
    pub fn forget_namespace(&self, namespace: &str) {
        let mut m = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(namespace);
    }

    /// How long an object stays verified without being read (a resync reads it again).
    pub const VERIFIED_TTL: std::time::Duration = std::time::Duration::from_secs(300);

    fn verified(&self, key: &super::labelled::Key) -> Option<Verified> {
        let m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        m.objects
            .get(key)
            .filter(|v| v.at.elapsed() < Self::VERIFIED_TTL)
            .cloned()
    }

    fn set_verified(&self, key: super::labelled::Key, v: Option<Verified>) {
        let mut m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        match v {
            Some(v) => m.objects.insert(key, v),
            None => m.objects.remove(&key),
        };
        Self::prune(&mut m);
    }

    /// Drops expired entries (objects gone or not reconciled since), once per TTL.
    fn prune(m: &mut VerifiedObjects) {
        if m.pruned.is_none_or(|t| t.elapsed() >= Self::VERIFIED_TTL) {
            m.objects.retain(|_, v| v.at.elapsed() < Self::VERIFIED_TTL);
            m.removed
                .retain(|_, (_, at)| at.elapsed() < Self::VERIFIED_TTL);
            m.pruned = Some(std::time::Instant::now());
        }
    }

    /// Whether the operator itself made `key` look as its metadata's fingerprint `print` says
    /// (it applied it so, or read it so): its watch event then asks for nothing.
    pub fn made(&self, key: &super::labelled::Key, print: u64) -> bool {
        self.verified(key).is_some_and(|v| v.print == print)
    }

    /// Whether the operator itself deleted `key`, the object with this UID.
    pub fn removed(&self, key: &super::labelled::Key, uid: &str) -> bool {
        let m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        m.removed
            .get(key)
            .is_some_and(|(u, at)| u == uid && at.elapsed() < Self::VERIFIED_TTL)
    }

    /// Notes (for tests) that the operator applied `key` as `print`.
    #[cfg(test)]
    pub(crate) fn note_made(&self, key: super::labelled::Key, print: u64) {
        self.set_verified(
            key,
            Some(Verified {
                at: std::time::Instant::now(),
                hash: String::new(),
                print,
                generation: false,
                readiness: readiness::Readiness {
                    ready: true,
                    message: String::new(),
                },
            }),
        );
    }

    pub(crate) fn set_removed(&self, key: super::labelled::Key, uid: String) {
        let mut m = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        m.objects.remove(&key);
        m.removed.insert(key, (uid, std::time::Instant::now()));
        Self::prune(&mut m);
    }

    fn refusal(&self, key: &PodTemplate) -> Option<Option<String>> {
        let m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        m.get(key)
            .filter(|(t, _)| t.elapsed() < Self::REFUSAL_TTL)
            .map(|(_, r)| r.clone())
    }

    fn set_refusal(&self, key: PodTemplate, refused: Option<String>) {
        let mut m = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        // expired answers go when a new one comes, not on every lookup
        m.retain(|_, (t, _)| t.elapsed() < Self::REFUSAL_TTL);
        m.insert(key, (std::time::Instant::now(), refused));
    }
}

const PVC: &str = "PersistentVolumeClaim";

/// The `apiVersion` of each recorded object (kind, name), for the kinds that are not
/// well-known.
pub type Versions = std::collections::BTreeMap<(String, String), String>;

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

impl Member<'_> {
    pub(super) fn err(&self, action: String) -> impl FnOnce(kube::Error) -> MemberError + '_ {
        move |source| MemberError {
            cluster: self.name.to_string(),
            action,
            source: Cause::Api(source),
        }
    }

    /// `Err` unless a write may be sent now: called right before every write.
    fn fenced(&self, action: &str) -> Result<(), MemberError> {
        if self.fence.may_write() {
            Ok(())
        } else {
            Err(MemberError {
                cluster: self.name.to_string(),
                action: action.to_string(),
                source: Cause::Fenced,
            })
        }
    }

    /// Sends one write after checking the fence, and counts it.
    pub(super) async fn send<T>(
        &self,
        action: String,
        verb: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, MemberError> {
        self.fenced(&action)?;
        let done = call.await.map_err(self.err(action))?;
        self.metrics.wrote(self.name, verb);
        Ok(done)
    }

    /// [`Self::send`] for an object that may be gone meanwhile: a 404 (or a 409 from a
    /// precondition on an object replaced meanwhile) is no error; `false` then.
    pub(super) async fn send_unless_gone<T>(
        &self,
        action: String,
        verb: &str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<bool, MemberError> {
        match self.send(action, verb, call).await {
            Ok(_) => Ok(true),
            Err(MemberError {
                source: Cause::Api(kube::Error::Api(s)),
                ..
            }) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The live object when it carries this workload's labels; `None` when it is gone or
    /// someone else's (which is never changed).
    async fn owned(
        &self,
        api: &Api<DynamicObject>,
        what: &str,
        name: &str,
        namespace: &str,
        workload: &str,
    ) -> Result<Option<DynamicObject>, MemberError> {
        let Some(live) = api
            .get_opt(name)
            .await
            .map_err(self.err(format!("get {what}")))?
        else {
            return Ok(None);
        };
        if crate::fleet::watch::ownership_conflict(live.labels(), namespace, workload, false)
            .is_some()
        {
            tracing::warn!(cluster = self.name, object = %what, "left alone: it does not carry this workload's labels");
            return Ok(None);
        }
        Ok(Some(live))
    }

    /// The API of `apiVersion`/`kind` in `namespace`, from the member's discovery: an error when
    /// the member does not serve the kind, or serves it cluster-scoped.
    pub async fn api_of(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
    ) -> Result<Api<DynamicObject>, MemberError> {
        use super::discovery::Resolved;
        let fail = |source| MemberError {
            cluster: self.name.to_string(),
            action: format!("find the API of {kind} ({api_version})"),
            source,
        };
        match self
            .discovery
            .resolve(self.name, &self.client, api_version, kind)
            .await
            .map_err(|e| fail(Cause::Api(e)))?
        {
            Resolved::Namespaced(ar) => {
                Ok(Api::namespaced_with(self.client.clone(), namespace, &ar))
            }
            Resolved::ClusterScoped => Err(fail(Cause::ClusterScoped {
                api_version: api_version.into(),
                kind: kind.into(),
            })),
            Resolved::NotServed => Err(fail(Cause::NotServed {
                api_version: api_version.into(),
                kind: kind.into(),
            })),
        }
    }

    /// The APIs of `objects`, in order; fails (before anything is written) on the first kind
    /// the member does not serve namespaced.
    async fn apis(
        &self,
        objects: &[DesiredObject],
    ) -> Result<Vec<Api<DynamicObject>>, MemberError> {
        let mut out = Vec::with_capacity(objects.len());
        for obj in objects {
            out.push(
                self.api_of(&obj.namespace, &obj.api_version, &obj.kind)
                    .await?,
            );
        }
        Ok(out)
    }

    /// The resources of the kinds of `objects` that are not well-known, as resolved.
    async fn extra_resources(&self, objects: &[DesiredObject]) -> Vec<kube::core::ApiResource> {
        let mut out: Vec<kube::core::ApiResource> = Vec::new();
        for obj in objects
            .iter()
            .filter(|o| crate::kinds::placeable(&o.api_version, &o.kind).is_none())
        {
            if let Ok(super::discovery::Resolved::Namespaced(ar)) = self
                .discovery
                .resolve(self.name, &self.client, &obj.api_version, &obj.kind)
                .await
                && !out.contains(&ar)
            {
                out.push(ar);
            }
        }
        out
    }

    /// The API of a recorded object (its kind and `apiVersion`), or `None` when its apiVersion
    /// is not known (a record older than the field, of a kind that is not well-known) or the
    /// member no longer serves it (nothing of that kind can be there).
    async fn recorded_api(
        &self,
        namespace: &str,
        api_version: Option<&str>,
        kind: &str,
    ) -> Result<Option<Api<DynamicObject>>, MemberError> {
        let Some(v) = api_version.map(str::to_string).or_else(|| {
            crate::kinds::PLACEABLE
                .iter()
                .find(|k| k.kind == kind)
                .map(|k| k.api_version())
        }) else {
            tracing::warn!(
                cluster = self.name,
                kind,
                "left alone: its apiVersion is not recorded"
            );
            return Ok(None);
        };
        match self.api_of(namespace, &v, kind).await {
            Ok(api) => Ok(Some(api)),
            Err(MemberError {
                source: Cause::NotServed { .. } | Cause::ClusterScoped { .. },
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the namespace when it is missing, with the member's Pod Security labels; a
    /// namespace the operator created gets them when they differ (someone else's namespace is
    /// never changed).
    pub async fn ensure_namespace(&self, namespace: &str) -> Result<(), MemberError> {
        if self.memo.namespace_ready(namespace) {
            return Ok(());
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = api
            .get_opt(namespace)
            .await
            .map_err(self.err(format!("get Namespace {namespace}")))?;
        let level = self.pod_security.level();
        let write = match &found {
            None => true,
            Some(ns) => {
                let l = ns.labels();
                l.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE)
                    && desired::pod_security_labels(level)
                        .iter()
                        .any(|(k, v)| l.get(k) != Some(v))
            }
        };
        if write {
            self.send(
                format!("apply Namespace {namespace}"),
                "apply",
                api.patch(
                    namespace,
                    &params(),
                    &Patch::Apply(desired::namespace_object(namespace, level)),
                ),
            )
            .await?;
        }
        if let Some(access) = &self.access {
            self.ensure_binding(namespace, access).await?;
        }
        self.memo.set_namespace_ready(namespace);
        Ok(())
    }

    /// Binds the operator's identity to its workloads role in `namespace` (a RoleBinding the
    /// member's guard policy allows only in namespaces the operator manages), when it is not
    /// bound yet, and waits briefly until the member's authorizer honours it.
    async fn ensure_binding(
        &self,
        namespace: &str,
        access: &super::registry::Access,
    ) -> Result<(), MemberError> {
        use k8s_openapi::api::rbac::v1::RoleBinding;
        let api: Api<RoleBinding> = Api::namespaced(self.client.clone(), namespace);
        let name = crate::access::CLUSTER_ROLE;
        let found = api
            .get_opt(name)
            .await
            .map_err(self.err(format!("get RoleBinding {namespace}/{name}")))?;
        let bound = found.is_some_and(|b| {
            b.role_ref.name == access.workload_role
                && b.subjects.unwrap_or_default().iter().any(|s| {
                    s.kind == "ServiceAccount"
                        && s.name == access.service_account
                        && s.namespace.as_deref() == Some(access.namespace.as_str())
                })
        });
        if bound {
            return Ok(());
        }
        let binding = crate::access::workload_binding(
            namespace,
            &access.service_account,
            &access.namespace,
            &access.workload_role,
        );
        self.send(
            format!("apply RoleBinding {namespace}/{name}"),
            "apply",
            api.patch(name, &params().force(), &Patch::Apply(binding)),
        )
        .await?;
        // RBAC caches follow within moments; the first write should not meet a stale one
        for _ in 0..20 {
            if self.may_create_configmaps(namespace).await {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Ok(())
    }

    async fn may_create_configmaps(&self, namespace: &str) -> bool {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(namespace.to_string()),
                    verb: Some("create".into()),
                    resource: Some("configmaps".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<SelfSubjectAccessReview>::all(self.client.clone())
            .create(&kube::api::PostParams::default(), &review)
            .await
            .ok()
            .and_then(|r| r.status)
            .is_some_and(|s| s.allowed)
    }

    /// Applies every object that is missing, whose live copy does not carry the desired hash
    /// (the spec changed), or that drifted (a field the operator applies has another value);
    /// an object that matches is not written, so a steady fleet sees no writes. Returns the
    /// readiness of each object and the drift that was corrected. `placed_before` names the
    /// objects recorded on this member: one of them missing was deleted out of band.
    ///
    /// An object that exists but belongs to another workload, or that the operator did not
    /// place (unless `adopt`), is neither applied nor changed: it is returned as a conflict
    /// (`kind name: why`) with a not-ready status.
    pub async fn place(
        &self,
        workload: &str,
        objects: &[DesiredObject],
        placed_before: &[(String, String)],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
        adopt: bool,
    ) -> Result<Placed, MemberError> {
        let mut out = Vec::with_capacity(objects.len());
        let mut corrected = Vec::new();
        let mut conflicts = Vec::new();
        let apis = self.apis(objects).await?;
        // what the watches cannot vouch for is read at once (reads are independent; the
        // writes below keep the apply order), and nothing is written when a read fails
        let reads = futures::future::join_all(
            objects
                .iter()
                .zip(&apis)
                .map(|(obj, api)| self.read(obj, api)),
        )
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
        for ((obj, api), read) in objects.iter().zip(apis).zip(reads) {
            let what = format!("{} {}", obj.kind, obj.name);
            let key: super::labelled::Key =
                (obj.kind.clone(), obj.namespace.clone(), obj.name.clone());
            let mut r = match read {
                Read::Unchanged(r) => r,
                read => {
                    let checked = match read {
                        Read::Live(live) => {
                            let live = live.map(|l| *l);
                            self.check(obj, &api, live, workload, placed_before, ignore, adopt)
                                .await?
                        }
                        _ => {
                            self.create(obj, &api, workload, placed_before, ignore, adopt)
                                .await?
                        }
                    };
                    let (print, generation, drift, readiness) = match checked {
                        Checked::Placed {
                            print,
                            generation,
                            drift,
                            readiness,
                        } => (print, generation, drift, readiness),
                        Checked::Conflict(why) => {
                            self.memo.set_verified(key, None);
                            conflicts.push(format!("{what}: {why}"));
                            out.push(ObjectStatus {
                                api_version: Some(obj.api_version.clone()),
                                kind: obj.kind.clone(),
                                name: obj.name.clone(),
                                ready: false,
                                message: format!("not applied: {why}"),
                            });
                            continue;
                        }
                    };
                    if !drift.is_empty() {
                        corrected.push(ObjectDrift {
                            kind: obj.kind.clone(),
                            name: obj.name.clone(),
                            fields: drift,
                        });
                    }
                    self.memo.set_verified(
                        key,
                        Some(Verified {
                            at: std::time::Instant::now(),
                            hash: obj.hash.clone(),
                            print,
                            generation,
                            readiness: readiness.clone(),
                        }),
                    );
                    readiness
                }
            };
            if !r.ready
                && let Some(refused) = self.pods_refused(obj).await
            {
                r.message = format!("{}; the member refuses its Pods: {refused}", r.message);
            }
            out.push(ObjectStatus {
                api_version: Some(obj.api_version.clone()),
                kind: obj.kind.clone(),
                name: obj.name.clone(),
                ready: r.ready,
                message: r.message,
            });
        }
        Ok(Placed {
            objects: out,
            corrected,
            conflicts,
            resources: self.extra_resources(objects).await,
        })
    }

    /// The readiness of `key` from what the member's watches show, when the object is unchanged
    /// since the operator applied or read it as `obj` (`None`: it must be read).
    fn unchanged(
        &self,
        key: &super::labelled::Key,
        obj: &DesiredObject,
    ) -> Option<readiness::Readiness> {
        let watched = self.watched.as_ref()?;
        let v = self.memo.verified(key)?;
        let watched_ready = super::ready::KINDS
            .iter()
            .any(|(version, kind)| *version == obj.api_version && *kind == obj.kind);
        v.still(
            &obj.hash,
            watched.labelled.print_of(self.name, key),
            watched_ready.then(|| watched.ready.get(key)).flatten(),
        )
    }

    /// What is known of `obj` before writing: its readiness when the watches show it unchanged
    /// since the operator applied or read it, else the live object, read. A pod template of an
    /// object the watches have not seen there (a new one, never ready at once) is asked about
    /// meanwhile.
    async fn read(
        &self,
        obj: &DesiredObject,
        api: &Api<DynamicObject>,
    ) -> Result<Read, MemberError> {
        let key: super::labelled::Key = (obj.kind.clone(), obj.namespace.clone(), obj.name.clone());
        if let Some(r) = self.unchanged(&key, obj) {
            return Ok(Read::Unchanged(r));
        }
        let unseen = self
            .watched
            .as_ref()
            .is_some_and(|w| w.labelled.print_of(self.name, &key).is_none());
        if unseen {
            // a new object is never ready at once: the member's answer is wanted soon
            self.pods_refused(obj).await;
            return Ok(Read::Unseen);
        }
        Ok(Read::Live(self.get(obj, api).await?.map(Box::new)))
    }

    async fn get(
        &self,
        obj: &DesiredObject,
        api: &Api<DynamicObject>,
    ) -> Result<Option<DynamicObject>, MemberError> {
        self.metrics.read(self.name, "place");
        api.get_opt(&obj.name)
            .await
            .map_err(self.err(format!("get {} {}", obj.kind, obj.name)))
    }

    /// Creates `obj`, which the watches do not show on the member. A create fails when an
    /// object of that name exists, so it never writes into one (an apply would merge into it,
    /// between a read and the write). When it fails - the object exists after all, the
    /// watches had not shown it yet, or the member refused it - the object is read: an existing
    /// one is checked as any other, else the create's error stands.
    #[allow(clippy::too_many_arguments)]
    async fn create(
        &self,
        obj: &DesiredObject,
        api: &Api<DynamicObject>,
        workload: &str,
        placed_before: &[(String, String)],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
        adopt: bool,
    ) -> Result<Checked, MemberError> {
        let body: DynamicObject = serde_json::from_value(obj.object.clone()).map_err(|e| {
            self.err(format!("create {} {}", obj.kind, obj.name))(kube::Error::SerdeError(e))
        })?;
        let pp = kube::api::PostParams {
            dry_run: false,
            field_manager: Some(crate::api::CREATE_MANAGER.into()),
        };
        let created = self
            .send(
                format!("create {} {}", obj.kind, obj.name),
                "create",
                api.create(&pp, &body),
            )
            .await;
        match created {
            Ok(live) => Ok(Self::placed(obj, &live, self.absent(obj, placed_before))),
            Err(
                e @ MemberError {
                    source: Cause::Api(kube::Error::Api(_)),
                    ..
                },
            ) => {
                let exists = matches!(&e.source, Cause::Api(kube::Error::Api(s)) if s.code == 409);
                match self.get(obj, api).await? {
                    Some(live) => {
                        let checked = self.check(
                            obj,
                            api,
                            Some(live),
                            workload,
                            placed_before,
                            ignore,
                            adopt,
                        );
                        checked.await
                    }
                    // made and deleted meanwhile: applied as a missing object
                    None if exists => {
                        self.check(obj, api, None, workload, placed_before, ignore, adopt)
                            .await
                    }
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The drift of a missing object: one recorded here was deleted out of band.
    fn absent(&self, obj: &DesiredObject, placed_before: &[(String, String)]) -> Vec<FieldDrift> {
        if placed_before.contains(&(obj.kind.clone(), obj.name.clone())) {
            vec![FieldDrift {
                path: drift::OBJECT.into(),
                desired: "present".into(),
                live: "<absent>".into(),
            }]
        } else {
            Vec::new()
        }
    }

    /// What is known of `obj` once `live` is as desired.
    fn placed(obj: &DesiredObject, live: &DynamicObject, drift: Vec<FieldDrift>) -> Checked {
        let value = serde_json::to_value(live).unwrap_or_default();
        Checked::Placed {
            print: super::labelled::fingerprint(&live.metadata),
            generation: live.metadata.generation.is_some(),
            drift,
            readiness: readiness::evaluate(&obj.api_version, &obj.kind, &value),
        }
    }

    /// Applies one object (read as `live`) when it is missing, out of date or drifted (unless
    /// another owner holds it).
    #[allow(clippy::too_many_arguments)]
    async fn check(
        &self,
        obj: &DesiredObject,
        api: &Api<DynamicObject>,
        live: Option<DynamicObject>,
        workload: &str,
        placed_before: &[(String, String)],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
        adopt: bool,
    ) -> Result<Checked, MemberError> {
        let what = format!("{} {}", obj.kind, obj.name);
        let what = what.as_str();
        if let Some(l) = &live
            && let Some(why) =
                crate::fleet::watch::ownership_conflict(l.labels(), &obj.namespace, workload, adopt)
        {
            return Ok(Checked::Conflict(why));
        }
        let live_hash = live
            .as_ref()
            .and_then(|l| l.annotations().get(HASH_ANNOTATION).cloned());
        let retained = live
            .as_ref()
            .is_some_and(|l| l.labels().contains_key(labels::RETAINED));
        let drift = match &live {
            None => self.absent(obj, placed_before),
            Some(l) if live_hash.as_deref() == Some(obj.hash.as_str()) && !retained => {
                let value = serde_json::to_value(l).unwrap_or_default();
                drift::compare(&obj.object, &value, &ignore(&obj.kind, &obj.name))
            }
            _ => Vec::new(),
        };
        let up_to_date =
            live.is_some() && live_hash.as_deref() == Some(obj.hash.as_str()) && !retained;
        let live = match live {
            Some(l) if up_to_date && drift.is_empty() => l,
            _ => {
                if let Some(l) = &live {
                    self.upgrade(api, l, what).await?;
                }
                if retained {
                    // a retained volume is back in use here: it is no longer a leftover
                    let unlabel = json!({"metadata": {"labels": {labels::RETAINED: null}}});
                    self.send(
                        format!("unlabel retained {what}"),
                        "label",
                        api.patch(&obj.name, &PatchParams::default(), &Patch::Merge(unlabel)),
                    )
                    .await?;
                }
                self.send(
                    format!("apply {what}"),
                    "apply",
                    api.patch(&obj.name, &params(), &Patch::Apply(&obj.object)),
                )
                .await?
            }
        };
        Ok(Self::placed(obj, &live, drift))
    }

    /// Before the first apply to an object the operator created: its fields become those of its
    /// applies ([`crate::managed_fields`]), so that a field the desired state drops is removed.
    /// The write carries the object's `resourceVersion`: it fails if the object changed since
    /// it was read.
    async fn upgrade(
        &self,
        api: &Api<DynamicObject>,
        live: &DynamicObject,
        what: &str,
    ) -> Result<(), MemberError> {
        let entries = live.metadata.managed_fields.as_deref().unwrap_or_default();
        let Some(upgraded) =
            crate::managed_fields::upgraded(entries, crate::api::CREATE_MANAGER, FIELD_MANAGER)
        else {
            return Ok(());
        };
        let patch = json!({"metadata": {
            "resourceVersion": live.metadata.resource_version,
            "managedFields": upgraded,
        }});
        self.send(
            format!("take the fields of {what} over for its applies"),
            "upgrade",
            api.patch(
                &live.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            ),
        )
        .await?;
        Ok(())
    }

    /// Why the member refuses the Pods of `obj`'s pod template (Pod Security, admission
    /// policies), asked with a dry-run create of such a Pod (nothing is stored); `None` when it
    /// admits them, when `obj` has no pod template, or when the member cannot say. A
    /// Deployment is not asked about: its controller names Pods it cannot create in the
    /// Deployment's own status (`ReplicaFailure`), which its readiness reports.
    async fn pods_refused(&self, obj: &DesiredObject) -> Option<String> {
        if crate::kinds::readiness(crate::kinds::group_of(&obj.api_version), &obj.kind)
            == crate::kinds::Readiness::Deployment
        {
            return None;
        }
        let key = (obj.namespace.clone(), obj.name.clone(), obj.hash.clone());
        if let Some(known) = self.memo.refusal(&key) {
            return known;
        }
        let refused = self.ask_pods_refused(obj).await?;
        self.memo.set_refusal(key, refused.clone());
        refused
    }

    /// Asks the member (`None` when it cannot say).
    async fn ask_pods_refused(&self, obj: &DesiredObject) -> Option<Option<String>> {
        let pointer = crate::kinds::pod_template_pointer(
            crate::kinds::group_of(&obj.api_version),
            &obj.kind,
        )?;
        let template = obj.object.pointer(pointer)?;
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        // a StatefulSet's Pods mount its claim templates
        for t in obj
            .object
            .pointer("/spec/volumeClaimTemplates")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = t
                .pointer("/metadata/name")
                .and_then(serde_json::Value::as_str)?;
            let volume = json!({"name": name,
                "persistentVolumeClaim": {"claimName": format!("{name}-{}-0", obj.name)}});
            match spec
                .get_mut("volumes")
                .and_then(serde_json::Value::as_array_mut)
            {
                Some(v) => v.push(volume),
                None => spec["volumes"] = json!([volume]),
            }
        }
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("{}-admission-check", obj.name),
                "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            },
            "spec": spec,
        }))
        .ok()?;
        let pods: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), &obj.namespace);
        let dry_run = kube::api::PostParams {
            dry_run: true,
            field_manager: Some(crate::api::FIELD_MANAGER.into()),
        };
        match pods.create(&dry_run, &pod).await {
            // refused by admission (Pod Security, admission policies, webhooks)
            Err(kube::Error::Api(s)) if s.code == 403 => Some(Some(s.message)),
            Err(e) => {
                tracing::debug!(cluster = self.name, object = %obj.name, error = %e, "could not ask whether its Pods are admitted");
                None
            }
            Ok(_) => Some(None),
        }
    }

    /// Reads the objects and reports how they differ from `objects`, writing nothing (for
    /// copies the operator may not touch, e.g. of a workload now governed only by Audit
    /// policies). A missing object is drift too.
    pub async fn observe(
        &self,
        objects: &[DesiredObject],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
    ) -> Result<Vec<ObjectDrift>, MemberError> {
        let mut out = Vec::new();
        let apis = self.apis(objects).await?;
        for (obj, api) in objects.iter().zip(apis) {
            self.metrics.read(self.name, "observe");
            let live = api
                .get_opt(&obj.name)
                .await
                .map_err(self.err(format!("get {} {}", obj.kind, obj.name)))?;
            let fields = match live {
                None => vec![FieldDrift {
                    path: drift::OBJECT.into(),
                    desired: "present".into(),
                    live: "<absent>".into(),
                }],
                Some(l) => {
                    let value = serde_json::to_value(&l).unwrap_or_default();
                    drift::compare(&obj.object, &value, &ignore(&obj.kind, &obj.name))
                }
            };
            if !fields.is_empty() {
                out.push(ObjectDrift {
                    kind: obj.kind.clone(),
                    name: obj.name.clone(),
                    fields,
                });
            }
        }
        Ok(out)
    }

    /// Deletes objects the workload placed earlier but no longer declares (`stale`: kind and
    /// name, from the previous placement in status). A PersistentVolumeClaim is never deleted
    /// this way unless the volume policy is `Purge`: it is labelled retained instead. Returns
    /// the retained claims.
    pub async fn prune(
        &self,
        namespace: &str,
        workload: &str,
        stale: &[(String, String)],
        versions: &Versions,
        volumes: VolumePolicy,
    ) -> Result<Vec<String>, MemberError> {
        let mut retained = Vec::new();
        for (kind, name) in stale {
            let version = versions
                .get(&(kind.clone(), name.clone()))
                .map(String::as_str);
            let Some(api) = self.recorded_api(namespace, version, kind).await? else {
                continue;
            };
            let what = format!("{kind} {name}");
            if self
                .owned(&api, &what, name, namespace, workload)
                .await?
                .is_none()
            {
                continue;
            }
            if kind == PVC && volumes == VolumePolicy::Retain {
                let patch = json!({"metadata": {"labels": {labels::RETAINED: "true"}}});
                retained.push(name.clone());
                self.send_unless_gone(
                    format!("prune {what}"),
                    "label",
                    api.patch(name, &PatchParams::default(), &Patch::Merge(patch)),
                )
                .await?;
            } else {
                self.send_unless_gone(
                    format!("prune {what}"),
                    "delete",
                    api.delete(name, &DeleteParams::background()),
                )
                .await?;
            }
        }
        Ok(retained)
    }

    /// Removes a workload's copy: `recorded` are the objects the record lists on this member
    /// (kind and name; deleted in reverse apply order, and only when they carry this workload's
    /// labels: an object the operator did not place is never deleted). Volumes - the recorded
    /// PVCs and those the StatefulSet controller created, found by the workload's labels - are
    /// retained (labelled `residency.io/retained=true`) unless the policy is `Purge`. Under
    /// `Retain` nothing deleted may take a volume with it: the claims are labelled and their
    /// owner references removed, and each StatefulSet's claim retention is set to Retain,
    /// before anything is deleted. Returns the names of the retained PVCs. Lists first (unless
    /// `known` has the claims) and stops at the first failed call.
    pub async fn evict(
        &self,
        recorded: &[(String, String)],
        versions: &Versions,
        namespace: &str,
        workload: &str,
        volumes: VolumePolicy,
        known: &Known,
    ) -> Result<Vec<String>, MemberError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let mut names: Vec<String> = match &known.claims {
            Some(names) => names.clone(),
            None => {
                let selector = desired::workload_selector(namespace, workload);
                // list first: if this fails nothing is touched
                pvcs.list(&ListParams::default().labels(&selector))
                    .await
                    .map_err(self.err(format!("list PersistentVolumeClaims ({selector})")))?
                    .items
                    .iter()
                    .map(|p| p.name_any())
                    .collect()
            }
        };
        for (_, name) in recorded.iter().filter(|(k, _)| k == PVC) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
        names.dedup();
        let mut others: Vec<&(String, String)> =
            recorded.iter().filter(|(k, _)| k != PVC).collect();
        others.sort_by_key(|(kind, name)| {
            (std::cmp::Reverse(desired::apply_rank(kind)), name.clone())
        });

        let mut retained = Vec::new();
        if volumes == VolumePolicy::Retain {
            for (kind, name) in others.iter().filter(|(k, _)| k == "StatefulSet") {
                let version = versions
                    .get(&(kind.clone(), name.clone()))
                    .map(String::as_str);
                let Some(api) = self.recorded_api(namespace, version, kind).await? else {
                    continue;
                };
                let keep = json!({"spec": {"persistentVolumeClaimRetentionPolicy":
                    {"whenDeleted": "Retain", "whenScaled": "Retain"}}});
                self.send_unless_gone(
                    format!("set claim retention of StatefulSet {name}"),
                    "label",
                    api.patch(name, &PatchParams::default(), &Patch::Merge(keep)),
                )
                .await?;
            }
            for name in &names {
                // labelled, and no owner whose deletion would take the claim with it
                let patch = json!({"metadata": {"labels": {labels::RETAINED: "true"}, "ownerReferences": null}});
                let labelled = self
                    .send_unless_gone(
                        format!("label PersistentVolumeClaim {name} retained"),
                        "label",
                        pvcs.patch(name, &PatchParams::default(), &Patch::Merge(patch)),
                    )
                    .await?;
                if labelled {
                    retained.push(name.clone());
                }
            }
        }
        for (kind, name) in others {
            let version = versions
                .get(&(kind.clone(), name.clone()))
                .map(String::as_str);
            let Some(api) = self.recorded_api(namespace, version, kind).await? else {
                continue;
            };
            let what = format!("{kind} {name}");
            let uid = match known.uids.get(&(kind.clone(), name.clone())) {
                Some(uid) => uid.clone(),
                None => match self.owned(&api, &what, name, namespace, workload).await? {
                    Some(live) => live.uid().unwrap_or_default(),
                    None => continue,
                },
            };
            // the object seen carrying the workload's labels, not one created meanwhile under
            // the same name
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: Some(uid.clone()).filter(|u| !u.is_empty()),
                    resource_version: None,
                }),
                ..DeleteParams::background()
            };
            // noted first: its watch event may come before the answer
            self.memo
                .set_removed((kind.clone(), namespace.to_string(), name.clone()), uid);
            self.send_unless_gone(format!("delete {what}"), "delete", api.delete(name, &dp))
                .await?;
        }
        if volumes == VolumePolicy::Purge {
            for name in &names {
                self.send_unless_gone(
                    format!("delete PersistentVolumeClaim {name}"),
                    "delete",
                    pvcs.delete(name, &DeleteParams::background()),
                )
                .await?;
            }
        }
        Ok(retained)
    }

    /// Takes the workload's retained PVCs on this member back into use (it is placed here again,
    /// so they are no longer leftovers): removes their `residency.io/retained` label. Returns
    /// their names.
    pub async fn reclaim_volumes(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Vec<String>, MemberError> {
        let names = self.retained_volumes(namespace, workload).await?;
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        for name in &names {
            let unlabel = json!({"metadata": {"labels": {labels::RETAINED: null}}});
            self.send_unless_gone(
                format!("unlabel retained PersistentVolumeClaim {name}"),
                "label",
                pvcs.patch(name, &PatchParams::default(), &Patch::Merge(unlabel)),
            )
            .await?;
        }
        Ok(names)
    }

    /// The workload's retained PVCs still on this member (a failed list is an error, never
    /// "none").
    pub async fn retained_volumes(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Vec<String>, MemberError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{},{}=true",
            desired::workload_selector(namespace, workload),
            labels::RETAINED
        );
        let list = pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(format!("list retained PersistentVolumeClaims ({selector})")))?;
        let mut names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readiness(ready: bool, message: &str) -> readiness::Readiness {
        readiness::Readiness {
            ready,
            message: message.into(),
        }
    }

    #[test]
    fn an_object_is_read_again_unless_its_watch_shows_it_unchanged() {
        let config_map = Verified {
            at: std::time::Instant::now(),
            hash: "h1".into(),
            print: 7,
            generation: false,
            readiness: readiness(true, ""),
        };
        assert_eq!(
            config_map.still("h1", Some(7), None),
            Some(readiness(true, ""))
        );
        assert_eq!(
            config_map.still("h2", Some(7), None),
            None,
            "desired changed"
        );
        assert_eq!(config_map.still("h1", Some(8), None), None, "changed there");
        assert_eq!(config_map.still("h1", None, None), None, "not seen (yet)");
        // a kind whose status moves without its print: only its readiness watch can tell
        let deployment = Verified {
            generation: true,
            readiness: readiness(false, "0/1 available"),
            ..config_map
        };
        assert_eq!(deployment.still("h1", Some(7), None), None);
        assert_eq!(
            deployment.still("h1", Some(7), Some(readiness(true, ""))),
            Some(readiness(true, ""))
        );
        assert_eq!(
            deployment.still("h1", Some(8), Some(readiness(true, ""))),
            None
        );
    }

    #[test]
    fn verified_objects_expire() {
        let memo = Memo::default();
        let key = ("ConfigMap".to_string(), "ns".to_string(), "c".to_string());
        let v = Verified {
            at: std::time::Instant::now(),
            hash: "h".into(),
            print: 1,
            generation: false,
            readiness: readiness(true, ""),
        };
        memo.set_verified(key.clone(), Some(v.clone()));
        assert!(memo.verified(&key).is_some());
        let old = Verified {
            at: std::time::Instant::now() - Memo::VERIFIED_TTL,
            ..v
        };
        memo.set_verified(key.clone(), Some(old));
        assert!(memo.verified(&key).is_none(), "read again after the TTL");
        memo.set_verified(key.clone(), None);
        assert!(memo.verified(&key).is_none());
    }
}
