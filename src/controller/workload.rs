//! The ResidentWorkload reconciler: read -> decide (pure placement) -> plan (pure actions,
//! [`super::plan`]) -> execute (this module) -> observe -> status.
//!
//! Placement is make before break: the workload is applied to its new targets first, and only
//! when it is Ready on every target is it removed from the clusters it left. Nothing is written
//! to a member that the last probe did not reach, nothing is removed because a call failed, an
//! allowed cluster that is only unhealthy keeps its copy, and a Storage workload's volumes are
//! retained (labelled) on a cluster it leaves unless its spec says `volumePolicy: Purge`. The
//! rules live in the planner, where they are property-tested; this module carries out its
//! actions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::status::{self, state};
use super::{Context, Error, Result, plan};
use crate::api::conditions::{self, types};
use crate::api::resident_workload::{ObjectStatus, Placement, Role, VolumePolicy};
use crate::api::{
    FINALIZER, MemberCluster, ResidencyPolicy, ResidentWorkload, ResidentWorkloadStatus, validate,
};
use crate::desired;
use crate::facts::{self, StatusSource};
use crate::fleet::member::{MemberError, ObjectDrift};
use crate::placement::{Decision, Engine, Mode};

const CONTROLLER: &str = "workload";

/// Reconciles one workload (dispatching through the finalizer).
pub async fn reconcile(rw: Arc<ResidentWorkload>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let ns = rw.namespace().unwrap_or_default();
    let api: Api<ResidentWorkload> = Api::namespaced(ctx.client.clone(), &ns);
    let key = super::workload_key(&rw);
    let deleting = rw.metadata.deletion_timestamp.is_some();
    let version = rw.metadata.resource_version.clone();
    if deleting && ctx.written.was_finalized(&key, &rw) {
        // the cache has not seen the finalizer go yet: cleaned up already
        return Ok(Action::await_change());
    }
    let rw = with_finalizer(&ctx, &api, &key, rw).await;
    let result = finalizer(&api, FINALIZER, rw, |event| async {
        match event {
            Event::Apply(rw) => apply(rw, ctx.clone()).await,
            Event::Cleanup(rw) => cleanup(rw, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.reconciled(CONTROLLER, start.elapsed());
    if result.is_ok() {
        ctx.backoff.reset(&key);
        if deleting {
            ctx.written.finalized(&key, version);
        }
    }
    result
}

/// Adds the finalizer to a workload that has none yet and is not being deleted, so that this
/// same reconcile goes on to place it (the finalizer helper would add it and wait for the next
/// event). The patch names the version it read: when the workload changed meanwhile, or the
/// write is refused, the helper adds the finalizer instead.
async fn with_finalizer(
    ctx: &Context,
    api: &Api<ResidentWorkload>,
    key: &str,
    rw: Arc<ResidentWorkload>,
) -> Arc<ResidentWorkload> {
    if rw.metadata.deletion_timestamp.is_some()
        || rw.finalizers().iter().any(|f| f == FINALIZER)
        || ctx.may_write().is_err()
    {
        return rw;
    }
    let mut finalizers = rw.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    if let Some(made) = ctx.written.finalizer_added_to(key, &rw) {
        // added to this very version: the cache has not seen the version that made yet
        let mut with = (*rw).clone();
        with.metadata.finalizers = Some(finalizers);
        with.metadata.resource_version = made;
        return Arc::new(with);
    }
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": rw.resource_version(),
    }});
    match api
        .patch(
            &rw.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(updated) => {
            ctx.written.finalizer_added(
                key,
                rw.metadata.resource_version.clone(),
                updated.metadata.resource_version.clone(),
            );
            Arc::new(updated)
        }
        Err(_) => rw,
    }
}

/// Logs, counts and requeues with per-object exponential backoff.
pub fn error_policy(rw: Arc<ResidentWorkload>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = super::workload_key(&rw);
    warn!(workload = %key, category = err.category(), error = %err, "reconcile failed");
    ctx.metrics.failed(CONTROLLER, err.category());
    Action::requeue(ctx.backoff.next(&key))
}

/// How often a workload in progress that waits only for events is checked anyway.
const EVENT_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(15);

/// A workload's status is written at most this often when only progress changed
/// ([`status::progress_only`]); a change of any verdict is written at once. On slow members a
/// placement's progress changes every few seconds: written each time, it would cost the
/// management cluster more than the placement itself.
const PROGRESS_SPACING: std::time::Duration = std::time::Duration::from_secs(30);

/// The placement decision for `rw` from the current caches (pure once the caches are read).
pub fn decide(
    clusters: &[Arc<MemberCluster>],
    policies: &[Arc<ResidencyPolicy>],
    rw: &ResidentWorkload,
) -> Decision {
    let clusters: Vec<_> = clusters
        .iter()
        .map(|c| facts::cluster(c, StatusSource::Conditions))
        .collect();
    let policies: Vec<_> = policies.iter().map(|p| facts::policy(p)).collect();
    Engine::new(&policies, &clusters).decide(&facts::workload(rw))
}

fn storage_class(ctx: &Context, rw: &ResidentWorkload, cluster: &str) -> Option<String> {
    if rw.spec.role != Role::Storage {
        return None;
    }
    ctx.clusters
        .get(&ObjectRef::new(cluster))
        .and_then(|mc| mc.spec.storage_class_name.clone())
}

/// The workload's objects on `cluster`, without the fields its drift rules leave to others.
fn desired_on(
    ctx: &Context,
    rw: &ResidentWorkload,
    cluster: &str,
    sourced: &[desired::SourcedSecret],
) -> Result<Vec<desired::DesiredObject>, desired::BuildError> {
    let mut objects =
        desired::build_with_secrets(rw, storage_class(ctx, rw, cluster).as_deref(), sourced)?;
    for o in &mut objects {
        desired::strip_fields(o, &rw.spec.ignored_fields(&o.kind, &o.name));
    }
    Ok(objects)
}

/// The members a write may go to now: the last probe reached them.
fn reachable(ctx: &Context, clusters: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    clusters
        .into_iter()
        .filter(|c| ctx.fleet.client(c).is_some())
        .collect()
}

fn unreachable_message(ctx: &Context, cluster: &str) -> String {
    let why = ctx
        .fleet
        .get(cluster)
        .and_then(|c| c.last_error)
        .unwrap_or_else(|| "not probed yet".into());
    format!("Cannot reach {cluster} ({why}); nothing is written there until it is back.")
}

/// What applying the workload on one target found.
struct Applied {
    placement: Placement,
    failure: Option<MemberError>,
    corrected: Vec<ObjectDrift>,
}

/// Reads the content of `spec.secrets` from the management cluster (part of the read step).
/// An error names the Secret and what to do, never a value.
async fn sourced_secrets(
    ctx: &Context,
    rw: &ResidentWorkload,
) -> Result<Vec<desired::SourcedSecret>, String> {
    use base64::Engine;
    use k8s_openapi::api::core::v1::Secret;
    let ns = rw.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut out = Vec::with_capacity(rw.spec.secrets.len());
    for s in &rw.spec.secrets {
        let source = &s.from_secret;
        match api.get_opt(source).await {
            Ok(Some(secret)) => out.push(desired::SourcedSecret {
                name: s.name.clone(),
                type_: secret.type_,
                data: secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v.0)))
                    .collect(),
            }),
            Ok(None) => {
                return Err(format!(
                    "Secret {source} (the source of spec.secrets {}) does not exist in namespace {ns} on the management cluster; nothing is changed until it does.",
                    s.name
                ));
            }
            Err(kube::Error::Api(e)) if e.code == 403 => {
                return Err(format!(
                    "The operator may not read Secret {source} in namespace {ns}: bind the ClusterRole residency-operator-secret-source to its ServiceAccount with a RoleBinding in {ns}; nothing is changed until then."
                ));
            }
            Err(e) => {
                return Err(format!(
                    "Cannot read Secret {source} in namespace {ns} ({e}); nothing is changed until it can be read."
                ));
            }
        }
    }
    Ok(out)
}

/// Applies the workload on one target and reports how it is doing there.
async fn place_on(
    ctx: &Context,
    rw: &ResidentWorkload,
    cluster: &str,
    previous: Option<&Placement>,
    sourced: &[desired::SourcedSecret],
) -> Applied {
    let mut out = Applied {
        placement: Placement {
            cluster: cluster.to_string(),
            state: state::UNKNOWN.into(),
            message: String::new(),
            objects: Vec::new(),
            evidence: None,
        },
        failure: None,
        corrected: Vec::new(),
    };
    let placement = &mut out.placement;
    let objects = match desired_on(ctx, rw, cluster, sourced) {
        Ok(o) => o,
        Err(e) => {
            placement.state = state::FAILED.into();
            placement.message = e.to_string();
            placement.objects = previous.map(|p| p.objects.clone()).unwrap_or_default();
            return out;
        }
    };
    let Some(m) = ctx.member(cluster) else {
        placement.message = unreachable_message(ctx, cluster);
        placement.objects = previous.map(|p| p.objects.clone()).unwrap_or_default();
        return out;
    };
    // a policy edit that allows this member relaxes its admission policy first
    let refused = ctx.admission_refuses(cluster, rw);
    if !refused.is_empty() {
        // nothing was done there: what the record says stays true (a Retained copy stays
        // Retained, so coming back still takes its volumes back into use)
        if let Some(p) = previous {
            *placement = p.clone();
        }
        placement.message = format!(
            "Waiting until the admission policy of {cluster} follows the policies: it still refuses {}.",
            refused.join(", ")
        );
        return out;
    }
    let ns = rw.namespace().unwrap_or_default();
    let stale = status::stale_objects(previous, &objects);
    let result = async {
        m.ensure_namespace(&ns).await?;
        let before: Vec<(String, String)> = previous
            .map(|p| {
                p.objects
                    .iter()
                    .map(|o| (o.kind.clone(), o.name.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let ignore = |kind: &str, name: &str| rw.spec.ignored_fields(kind, name);
        let placed = m
            .place(
                &rw.name_any(),
                &objects,
                &before,
                &ignore,
                rw.spec.adopt_existing,
            )
            .await?;
        // drift of kinds beyond the well-known ones is watched once they are placed
        ctx.watch_kinds(cluster, &ns, &placed.resources);
        if rw.spec.role == Role::Storage && previous.is_none_or(|p| p.state == state::RETAINED) {
            // placed here again: the volumes it left behind are in use again
            let reclaimed = m.reclaim_volumes(&ns, &rw.name_any()).await?;
            if !reclaimed.is_empty() {
                info!(cluster, ?reclaimed, "retained volumes are in use again");
            }
        }
        if !stale.is_empty() {
            let retained = m
                .prune(
                    &ns,
                    &rw.name_any(),
                    &stale,
                    &previous.map(status::object_versions).unwrap_or_default(),
                    rw.spec.volume_policy,
                )
                .await?;
            if !retained.is_empty() {
                warn!(
                    cluster,
                    ?retained,
                    "volumes dropped from the spec were retained"
                );
            }
        }
        Ok::<_, MemberError>(placed)
    }
    .await;
    if result.is_err() {
        // the namespace may be gone, or the operator's binding there: checked again next time
        m.memo.forget_namespace(&ns);
    }
    match result {
        Ok(placed) => {
            for c in &placed.corrected {
                ctx.metrics.drift(cluster, &c.kind, "corrected");
            }
            out.corrected = placed.corrected;
            let ready = placed.objects.iter().all(|o| o.ready);
            placement.state = if !placed.conflicts.is_empty() {
                placement.message = format!(
                    "Not applied, another owner: {}. Rename the object in one of the workloads.",
                    placed.conflicts.join("; ")
                );
                state::CONFLICT
            } else if ready {
                state::READY
            } else {
                state::APPLIED
            }
            .into();
            placement.objects = placed.objects;
            // the location proof: where the Pods and volumes of this copy are
            placement.evidence = previous.and_then(|p| p.evidence.clone());
            refresh_evidence(ctx, rw, placement);
        }
        Err(e) if e.is_connectivity() => {
            ctx.fleet.mark_unreachable(cluster, e.source.to_string());
            placement.message = unreachable_message(ctx, cluster);
            placement.objects = previous.map(|p| p.objects.clone()).unwrap_or_default();
        }
        Err(e) => {
            placement.state = state::FAILED.into();
            placement.message = e.to_string();
            // keep the record of what is there, so nothing is forgotten
            placement.objects = previous.map(|p| p.objects.clone()).unwrap_or_default();
            out.failure = Some(e);
        }
    }
    out
}

/// Where a copy physically is, from the member's watch caches ([`crate::location::evidence`];
/// no request to the member). Until the caches have listed everything, the last proof is kept.
fn refresh_evidence(ctx: &Context, rw: &ResidentWorkload, placement: &mut Placement) {
    let cluster = placement.cluster.as_str();
    let Some(mc) = ctx.clusters.get(&ObjectRef::new(cluster)) else {
        return;
    };
    let (namespace, name) = (rw.namespace().unwrap_or_default(), rw.name_any());
    let found = ctx.topology.read(cluster, |m| {
        let m = m.filter(|m| m.synced())?;
        let (pods, claims) = m.copy_of(&namespace, &name);
        let member = crate::location::evidence::Member {
            topology: &m.topology,
            attested: &mc.spec.attestation.node_regions,
            vouched: &mc.spec.attestation.vouched_storage_classes,
            volumes: &m.volumes,
            classes: &m.classes,
        };
        Some(crate::location::evidence::evidence(&member, &pods, &claims))
    });
    if let Some(ev) = found {
        placement.evidence = Some(ev);
    }
}

/// Whether a hold is worth an Event and a metric when it starts: a copy kept on a cluster
/// that is allowed but unhealthy, or whose MemberCluster is gone.
fn announce_hold(why: &plan::Hold) -> bool {
    matches!(why, plan::Hold::NotEligible(_) | plan::Hold::ClusterRemoved)
}

/// The record of a copy the plan holds (nothing is written there). `None` when there is no copy.
async fn held(
    ctx: &Context,
    rw: &ResidentWorkload,
    decision: &Decision,
    cluster: &str,
    previous: Option<&Placement>,
    why: &plan::Hold,
) -> Option<Placement> {
    use plan::Hold;
    let Some(prev) = previous else {
        // a target without a copy: only an unreachable one and one receiving data are shown
        // (the others are queued)
        return match why {
            Hold::Unreachable => Some(Placement {
                cluster: cluster.to_string(),
                state: state::UNKNOWN.into(),
                message: unreachable_message(ctx, cluster),
                objects: Vec::new(),
                evidence: None,
            }),
            Hold::AwaitingData(message) => Some(Placement {
                cluster: cluster.to_string(),
                state: state::PENDING.into(),
                message: message.clone(),
                objects: Vec::new(),
                evidence: None,
            }),
            _ => None,
        };
    };
    let mut p = prev.clone();
    if p.state == state::RETAINED {
        if matches!(why, Hold::ClusterRemoved) {
            p.message = format!(
                "MemberCluster {cluster} was deleted; its retained volumes {} can no longer be verified.",
                p.objects
                    .iter()
                    .map(|o| o.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        return Some(p);
    }
    match why {
        Hold::AwaitingTargets(_) => {
            p.state = state::EVICTING.into();
            p.message = format!(
                "Kept until the workload is Ready on {} (make before break).",
                decision.targets.join(", ")
            );
        }
        Hold::Unreachable => {
            p.state = state::UNKNOWN.into();
            p.message = format!("{} Its copy is kept.", unreachable_message(ctx, cluster));
        }
        Hold::NotEligible(because) => {
            let because: Vec<&str> = because.iter().map(|b| b.text()).collect();
            p.message = format!(
                "{cluster} is allowed but {}: it keeps its copy and gets no changes until it is eligible again.",
                because.join(", ")
            );
            refresh_evidence(ctx, rw, &mut p);
        }
        Hold::NotEnforced => refresh_evidence(ctx, rw, &mut p),
        Hold::ClusterRemoved => {
            p.state = state::UNKNOWN.into();
            p.message = format!(
                "MemberCluster {cluster} was deleted: the copy recorded there can no longer be verified or removed. \
                 Re-add the cluster, or remove the data there by hand."
            );
        }
        Hold::AwaitingData(message) => {
            p.message = message.clone();
        }
        Hold::RelocationQueued => {}
    }
    Some(p)
}

/// [`evict_from`] on several members at once: what is left on each, and the failures.
async fn evict_all<'a>(
    ctx: &Context,
    rw: &ResidentWorkload,
    evictions: impl Iterator<Item = (&'a Placement, &'a [plan::ObjectKey], VolumePolicy)>,
) -> Vec<(Option<Placement>, Vec<MemberError>)> {
    futures::future::join_all(evictions.map(|(previous, delete, volumes)| async move {
        let mut failed = Vec::new();
        let left = evict_from(ctx, rw, previous, delete, volumes, &mut failed).await;
        (left, failed)
    }))
    .await
}

/// Carries out an eviction: removes what the record lists on a cluster the workload left.
/// `None` when nothing is left there.
async fn evict_from(
    ctx: &Context,
    rw: &ResidentWorkload,
    previous: &Placement,
    delete: &[plan::ObjectKey],
    volumes: VolumePolicy,
    failures: &mut Vec<MemberError>,
) -> Option<Placement> {
    let cluster = previous.cluster.as_str();
    let mut kept = previous.clone();
    let Some(m) = ctx.member(cluster) else {
        kept.state = state::UNKNOWN.into();
        kept.message = format!(
            "{} Its copy is kept until it can be removed.",
            unreachable_message(ctx, cluster)
        );
        return Some(kept);
    };
    let ns = rw.namespace().unwrap_or_default();
    let name = rw.name_any();
    let versions = status::object_versions(previous);
    let known = known_copy(ctx, cluster, &ns, &name, delete);
    match m
        .evict(delete, &versions, &ns, &name, volumes, &known)
        .await
    {
        Ok(retained) if retained.is_empty() => None,
        Ok(retained) => Some(retained_placement(cluster, retained)),
        Err(e) => {
            if e.is_connectivity() {
                ctx.fleet.mark_unreachable(cluster, e.source.to_string());
                kept.state = state::UNKNOWN.into();
            } else {
                kept.state = state::FAILED.into();
            }
            kept.message = format!("Could not remove the copy yet: {e}");
            failures.push(e);
            Some(kept)
        }
    }
}

/// What the member watches know of the workload `ns/name`'s objects `objects` on `cluster`
/// (read from the caches).
fn known_copy(
    ctx: &Context,
    cluster: &str,
    ns: &str,
    name: &str,
    objects: &[plan::ObjectKey],
) -> crate::fleet::member::Known {
    let workload = format!("{ns}/{name}");
    crate::fleet::member::Known {
        uids: objects
            .iter()
            .filter_map(|(kind, object)| {
                let key = (kind.clone(), ns.to_string(), object.clone());
                let uid = ctx.labelled.uid_of(cluster, &key, &workload)?;
                Some(((kind.clone(), object.clone()), uid))
            })
            .collect(),
        claims: ctx
            .topology
            .read(cluster, |m| m.and_then(|m| m.claims_of(ns, name))),
    }
}

fn retained_placement(cluster: &str, pvcs: Vec<String>) -> Placement {
    Placement {
        cluster: cluster.to_string(),
        state: state::RETAINED.into(),
        message: format!(
            "The workload left {cluster}; its volumes {} were retained (label residency.io/retained=true). \
             This data must not stay here: copy or delete it, then delete the PVCs.",
            pvcs.join(", ")
        ),
        objects: pvcs
            .into_iter()
            .map(|name| ObjectStatus {
                api_version: Some("v1".into()),
                kind: "PersistentVolumeClaim".into(),
                name,
                ready: false,
                message: "retained".into(),
            })
            .collect(),
        evidence: None,
    }
}

/// Re-checks a cluster that holds retained volumes (read only). `None` once they are gone.
async fn refresh_retained(
    ctx: &Context,
    rw: &ResidentWorkload,
    previous: &Placement,
) -> Option<Placement> {
    let cluster = previous.cluster.as_str();
    let Some(m) = ctx.member(cluster) else {
        // unreachable: the volumes are still there as far as anyone knows
        return Some(previous.clone());
    };
    let ns = rw.namespace().unwrap_or_default();
    match m.retained_volumes(&ns, &rw.name_any()).await {
        Ok(names) if names.is_empty() => None,
        Ok(names) => Some(retained_placement(cluster, names)),
        Err(_) => Some(previous.clone()),
    }
}

async fn apply(rw: Arc<ResidentWorkload>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.synced() {
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    ctx.may_write()?;
    let ns = rw.namespace().unwrap_or_default();
    let name = rw.name_any();
    let key = super::workload_key(&rw);
    let previous = ctx.written.previous(&key, &rw);
    let generation = rw.metadata.generation;

    if let Err(errors) = validate::resident_workload(&rw) {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        let status = ResidentWorkloadStatus {
            observed_generation: generation,
            conditions: conditions::merge(
                &previous.conditions,
                &status::invalid_conditions(&message),
                generation,
                Timestamp::now(),
            ),
            placements: previous.placements.clone(),
            ..Default::default()
        };
        if changed(&previous, &status) {
            publish(
                &ctx,
                &rw,
                EventType::Warning,
                "Refused",
                &format!("Nothing is applied: {message}"),
            );
            ctx.apply_status(
                &Api::<ResidentWorkload>::namespaced(ctx.client.clone(), &ns),
                &name,
                &status,
            )
            .await?;
        }
        return Ok(Action::await_change());
    }

    // read (the Secrets the workload takes from the management cluster) and decide
    let sourced = match sourced_secrets(&ctx, &rw).await {
        Ok(s) => s,
        Err(message) => {
            let status = ResidentWorkloadStatus {
                observed_generation: generation,
                conditions: conditions::merge(
                    &previous.conditions,
                    &status::secret_source_conditions(&message),
                    generation,
                    Timestamp::now(),
                ),
                ..previous.clone()
            };
            if changed(&previous, &status) {
                publish(
                    &ctx,
                    &rw,
                    EventType::Warning,
                    "SecretSourceUnavailable",
                    &message,
                );
                ctx.apply_status(
                    &Api::<ResidentWorkload>::namespaced(ctx.client.clone(), &ns),
                    &name,
                    &status,
                )
                .await?;
            }
            return Err(Error::SecretSource(message));
        }
    };
    let decision = decide(&ctx.clusters.state(), &ctx.policies.state(), &rw);
    tracing::debug!(workload = %key, decision = %decision.summary(), "decided");
    let reachable = reachable(
        &ctx,
        previous
            .placements
            .iter()
            .map(|p| p.cluster.clone())
            .chain(decision.targets.iter().cloned()),
    );
    let slot = !plan::needs_relocation_slot(&decision, &previous.placements)
        || ctx.relocations.acquire(&key, ctx.settings.max_relocations);
    // a Storage workload's data moves before it starts on its new targets
    let data = if rw.spec.role == Role::Storage {
        super::datamove::drive(&ctx, &rw, &decision, &previous, slot).await?
    } else {
        super::datamove::Outcome::default()
    };
    let input = plan::Input {
        decision: &decision,
        record: &previous.placements,
        reachable: &reachable,
        volume_policy: rw.spec.volume_policy,
        relocation_slot: slot,
        awaiting_data: &data.awaiting,
    };

    // plan and execute: first the applies (in parallel across members) ...
    let mut record: BTreeMap<String, Placement> = previous
        .placements
        .iter()
        .map(|p| (p.cluster.clone(), p.clone()))
        .collect();
    let applies = plan::plan(&input).into_iter().filter_map(|a| match a {
        plan::Action::Apply { cluster } => Some(cluster),
        _ => None,
    });
    let applied = futures::future::join_all(applies.map(|cluster| {
        let prev = record.get(&cluster).cloned();
        let (ctx, rw, sourced) = (&ctx, &rw, &sourced);
        async move { place_on(ctx, rw, &cluster, prev.as_ref(), sourced).await }
    }))
    .await;
    let mut failures: Vec<MemberError> = Vec::new();
    let mut corrections: Vec<(String, ObjectDrift)> = Vec::new();
    let mut fresh: BTreeSet<String> = BTreeSet::new();
    for a in applied {
        let cluster = a.placement.cluster.clone();
        failures.extend(a.failure);
        corrections.extend(a.corrected.into_iter().map(|d| (cluster.clone(), d)));
        fresh.insert(cluster.clone());
        record.insert(cluster, a.placement);
    }
    // ... then the rest, planned again from what the applies observed (make before break uses
    // the readiness just seen)
    let observed_record: Vec<Placement> = record.values().cloned().collect();
    let mut placements: Vec<Placement> = Vec::new();
    let mut queued = false;
    let actions = plan::plan(&plan::Input {
        record: &observed_record,
        ..input
    });
    let evictions = actions.iter().filter_map(|a| match a {
        plan::Action::Evict {
            cluster,
            delete,
            volumes,
        } => Some((record.get(cluster)?, delete.as_slice(), *volumes)),
        _ => None,
    });
    for (p, failed) in evict_all(&ctx, &rw, evictions).await {
        placements.extend(p);
        failures.extend(failed);
    }
    for action in actions {
        match action {
            plan::Action::Apply { cluster } => {
                if fresh.contains(&cluster)
                    && let Some(p) = record.get(&cluster)
                {
                    placements.push(p.clone());
                }
            }
            plan::Action::Evict { .. } => {} // done above
            plan::Action::CheckRetained { cluster } => {
                if let Some(prev) = record.get(&cluster)
                    && let Some(p) = refresh_retained(&ctx, &rw, prev).await
                {
                    placements.push(p);
                }
            }
            plan::Action::Hold { cluster, why } => {
                queued |= why == plan::Hold::RelocationQueued;
                let prev = record.get(&cluster);
                if let Some(p) = held(&ctx, &rw, &decision, &cluster, prev, &why).await {
                    if announce_hold(&why) && prev.is_some_and(|q| q.message != p.message) {
                        // health is not policy: say once that the copy stays
                        ctx.metrics.held(&cluster, why.reason());
                        publish_about(
                            &ctx,
                            &rw,
                            Some(&cluster),
                            EventType::Warning,
                            "CopyHeld",
                            &p.message,
                        );
                    }
                    placements.push(p);
                }
            }
        }
    }
    placements.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    if !plan::needs_relocation_slot(&decision, &placements) {
        ctx.release_relocation(&key);
    }

    // observe: copies the operator may not touch now are checked for drift, writing nothing
    let enforce = decision.mode == Mode::Enforce && decision.is_placeable();
    let mut observed: Vec<(String, ObjectDrift)> = Vec::new();
    if !enforce {
        for p in placements.iter().filter(|p| p.state != state::RETAINED) {
            let Some(m) = ctx.member(&p.cluster) else {
                continue;
            };
            let Ok(objects) = desired_on(&ctx, &rw, &p.cluster, &sourced) else {
                continue;
            };
            let ignore = |kind: &str, name: &str| rw.spec.ignored_fields(kind, name);
            match m.observe(&objects, &ignore).await {
                Ok(found) => observed.extend(found.into_iter().map(|d| (p.cluster.clone(), d))),
                Err(e) => warn!(cluster = %p.cluster, error = %e, "could not check drift"),
            }
        }
    }

    // status
    let now = Timestamp::now();
    let (drift, drift_count) = status::drift_entries(&observed, &previous.drift, now);
    let mut desired_conditions = status::conditions(&decision, &placements);
    if queued {
        status::relocation_queued(
            &mut desired_conditions,
            ctx.relocations.in_flight(),
            ctx.settings.max_relocations,
        );
    }
    desired_conditions.push(status::drift_condition(&drift, drift_count, &corrections));
    desired_conditions.extend(data.conditions.iter().cloned());

    let status = ResidentWorkloadStatus {
        observed_generation: generation,
        conditions: conditions::merge(&previous.conditions, &desired_conditions, generation, now),
        targets: if decision.mode == Mode::Enforce {
            decision.targets.clone()
        } else {
            Vec::new()
        },
        placements,
        clusters: status::cluster_decisions(&decision),
        governing_policies: decision.governing_policies.clone(),
        drift,
        drift_count,
        data_migration: data.status.clone(),
    };
    for (cluster, d) in &corrections {
        publish_drift(
            &ctx,
            &rw,
            cluster,
            d,
            "DriftCorrected",
            "was changed out of band and corrected",
        );
    }
    for (cluster, d) in &observed {
        let known = previous
            .drift
            .iter()
            .any(|e| &e.cluster == cluster && e.kind == d.kind && e.name == d.name);
        if !known {
            ctx.metrics.drift(cluster, &d.kind, "reported");
            publish_drift(
                &ctx,
                &rw,
                cluster,
                d,
                "DriftDetected",
                "differs from what was applied (not corrected: Audit)",
            );
        }
    }
    // progress alone waits a little, to go out with the next change
    let differs = changed(&previous, &status);
    let held = if differs && status::progress_only(&previous, &status) {
        ctx.written.progress_wait(&key, PROGRESS_SPACING)
    } else {
        None
    };
    if held.is_none() && differs {
        events(&ctx, &rw, &previous, &status, &decision);
        ctx.apply_status(
            &Api::<ResidentWorkload>::namespaced(ctx.client.clone(), &ns),
            &name,
            &status,
        )
        .await?;
        ctx.written
            .wrote(&key, rw.metadata.resource_version.clone(), &status);
        let copies: Vec<String> = status
            .placements
            .iter()
            .map(|p| format!("{}={}", p.cluster, p.state))
            .collect();
        info!(workload = %key, targets = ?status.targets, ?copies, "status updated");
        ctx.report_queue.changed(&ns);
    }
    if let Some(e) = failures.into_iter().next() {
        return Err(e.into());
    }
    let in_progress = status::in_progress(&decision, &status.placements);
    let awaits_events = status::awaits_events(&status.placements, queued);
    tracing::debug!(workload = %key, in_progress, awaits_events, "reconciled");
    let next = if data.active || (in_progress && !awaits_events) {
        ctx.settings.progress_interval
    } else if in_progress {
        // the member watches or a freed relocation slot wake it; this is the backstop
        ctx.settings.progress_interval.max(EVENT_BACKSTOP)
    } else {
        ctx.settings.resync_interval
    };
    // progress held back goes out by the end of its wait at the latest
    Ok(Action::requeue(held.map_or(next, |wait| wait.min(next))))
}

/// Deleting a workload removes what it placed (from the record), retaining volumes like an
/// eviction does. A copy on a cluster that cannot be reached, or whose MemberCluster is gone,
/// blocks the deletion until the cluster is back or a person names it in
/// [`plan::ABANDON_ANNOTATION`]; its copy is then recorded as abandoned (Warning Event).
async fn cleanup(rw: Arc<ResidentWorkload>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.synced() {
        return Err(Error::CleanupBlocked("caches are not synced yet".into()));
    }
    ctx.may_write()?;
    let key = super::workload_key(&rw);
    // the newest record of copies, even when the cache has not seen the last status write
    let previous = ctx.written.previous(&key, &rw);
    let mut record = previous.placements.clone();
    for t in &previous.targets {
        // a target may hold objects applied just before a crash, before the record was written
        if !record.iter().any(|p| &p.cluster == t) {
            record.push(Placement {
                cluster: t.clone(),
                state: state::APPLIED.into(),
                message: String::new(),
                objects: Vec::new(),
                evidence: None,
            });
        }
    }
    let known: BTreeSet<String> = ctx.clusters.state().iter().map(|c| c.name_any()).collect();
    let reachable = reachable(&ctx, record.iter().map(|p| p.cluster.clone()));
    let abandoned = plan::abandoned(rw.annotations());
    let steps = plan::plan_cleanup(
        &record,
        &known,
        &reachable,
        &abandoned,
        rw.spec.volume_policy,
    );
    let mut blocked: Vec<String> = Vec::new();
    let mut failures = Vec::new();
    let hint = format!(
        "if the cluster is gone for good, annotate the workload {}=<cluster>",
        plan::ABANDON_ANNOTATION
    );
    let removals = steps.iter().filter_map(|step| match step {
        plan::Cleanup::Remove(plan::Action::Evict {
            cluster,
            delete,
            volumes,
        }) => Some((
            record.iter().find(|p| &p.cluster == cluster)?,
            delete.as_slice(),
            *volumes,
        )),
        _ => None,
    });
    for (left, failed) in evict_all(&ctx, &rw, removals).await {
        failures.extend(failed);
        if let Some(p) = left
            && p.state != state::RETAINED
        {
            blocked.push(format!("{}: {}", p.cluster, p.message));
        }
    }
    for step in steps {
        match step {
            plan::Cleanup::Remove(_) => {} // done above
            plan::Cleanup::Abandon { cluster } => {
                let objects: Vec<String> = record
                    .iter()
                    .filter(|p| p.cluster == cluster)
                    .flat_map(|p| p.objects.iter().map(|o| format!("{} {}", o.kind, o.name)))
                    .collect();
                let note = format!(
                    "{cluster} was declared gone for good ({}): its copy ({}) was not removed and can no longer be verified.",
                    plan::ABANDON_ANNOTATION,
                    if objects.is_empty() {
                        "no objects recorded".to_string()
                    } else {
                        objects.join(", ")
                    }
                );
                warn!(workload = %key, cluster = %cluster, "copy abandoned");
                publish_about(&ctx, &rw, Some(&cluster), EventType::Warning, "CopyAbandoned", &note);
            }
            plan::Cleanup::Blocked { cluster, removed } => blocked.push(if removed {
                format!(
                    "{cluster}: its MemberCluster was deleted, so the copy there cannot be removed; {hint}"
                )
            } else {
                format!("{cluster}: {} {hint}", unreachable_message(&ctx, &cluster))
            }),
        }
    }
    if !blocked.is_empty() {
        let msg = blocked.join("; ");
        publish(&ctx, &rw, EventType::Warning, "CleanupBlocked", &msg);
        return Err(Error::CleanupBlocked(msg));
    }
    ctx.release_relocation(&key);
    ctx.written.forget(&key);
    publish(
        &ctx,
        &rw,
        EventType::Normal,
        "CleanedUp",
        "Removed the workload from every member cluster.",
    );
    ctx.report_queue
        .gone(&rw.namespace().unwrap_or_default(), &rw.name_any());
    Ok(Action::await_change())
}

fn changed(previous: &ResidentWorkloadStatus, next: &ResidentWorkloadStatus) -> bool {
    previous != next
}

fn publish(ctx: &Context, rw: &ResidentWorkload, type_: EventType, reason: &str, note: &str) {
    publish_about(ctx, rw, None, type_, reason, note);
}

/// Publishes an Event about `rw`, related to a MemberCluster when given (so events about
/// different clusters are not folded into one series).
fn publish_about(
    ctx: &Context,
    rw: &ResidentWorkload,
    cluster: Option<&str>,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let secondary = cluster
        .and_then(|c| ctx.clusters.get(&ObjectRef::new(c)))
        .map(|mc| mc.object_ref(&()));
    ctx.publish_event(&rw.object_ref(&()), secondary, type_, reason, note);
}

/// A Warning Event about a drifted object: `<kind> <name> on <cluster> <what>: <fields>`.
fn publish_drift(
    ctx: &Context,
    rw: &ResidentWorkload,
    cluster: &str,
    d: &ObjectDrift,
    reason: &str,
    what: &str,
) {
    let note = format!(
        "{} {} on {cluster} {what}: {}",
        d.kind,
        d.name,
        status::describe_fields(&d.fields)
    );
    publish_about(ctx, rw, Some(cluster), EventType::Warning, reason, &note);
}

/// A Normal Event about copies on `clusters` (not empty), related to the MemberCluster when it
/// is one.
fn publish_on(ctx: &Context, rw: &ResidentWorkload, clusters: &[&str], reason: &str, note: &str) {
    let related = (clusters.len() == 1).then_some(clusters[0]);
    publish_about(ctx, rw, related, EventType::Normal, reason, note);
}

/// Events for what changed: placed, evicted, retained, unplaceable.
fn events(
    ctx: &Context,
    rw: &ResidentWorkload,
    previous: &ResidentWorkloadStatus,
    next: &ResidentWorkloadStatus,
    decision: &Decision,
) {
    let state_of = |s: &ResidentWorkloadStatus, c: &str| {
        s.placements
            .iter()
            .find(|p| p.cluster == c)
            .map(|p| p.state.clone())
    };
    // copies that became Ready, or were removed, in one write: one event (related to the
    // MemberCluster when it is one)
    let placed: Vec<&str> = next
        .placements
        .iter()
        .filter(|p| p.state == state::READY)
        .filter(|p| state_of(previous, &p.cluster).as_deref() != Some(state::READY))
        .map(|p| p.cluster.as_str())
        .collect();
    if !placed.is_empty() {
        let note = format!("Ready on {}.", placed.join(", "));
        publish_on(ctx, rw, &placed, "Placed", &note);
    }
    let removed: Vec<&str> = previous
        .placements
        .iter()
        .filter(|p| state_of(next, &p.cluster).is_none() && p.state != state::RETAINED)
        .map(|p| p.cluster.as_str())
        .collect();
    if !removed.is_empty() {
        let note = format!(
            "Removed from {} after the workload was Ready on {}.",
            removed.join(", "),
            next.targets.join(", ")
        );
        publish_on(ctx, rw, &removed, "Evicted", &note);
    }
    for p in &next.placements {
        let before = state_of(previous, &p.cluster);
        // a copy that became conflicting or retained (one event each, related to its
        // MemberCluster): the placement's message says why
        for (st, reason) in [
            (state::CONFLICT, "Conflict"),
            (state::RETAINED, "VolumesRetained"),
        ] {
            if p.state == st && before.as_deref() != Some(st) {
                publish_about(
                    ctx,
                    rw,
                    Some(&p.cluster),
                    EventType::Warning,
                    reason,
                    &p.message,
                );
            }
        }
    }
    let was = conditions::find(&previous.conditions, types::COMPLIANT).map(|c| c.reason.clone());
    if !decision.is_placeable() && was.as_deref() != Some(decision.reason()) {
        publish(
            ctx,
            rw,
            EventType::Warning,
            decision.reason(),
            &decision.summary(),
        );
    }
}

/// Workloads a policy change can affect: those holding a country it governs (now) or that it
/// governed before (recorded in their status).
pub fn map_policy(
    workloads: &Store<ResidentWorkload>,
    policy: &ResidencyPolicy,
) -> Vec<ObjectRef<ResidentWorkload>> {
    let name = policy.name_any();
    workloads
        .state()
        .iter()
        .filter(|w| {
            w.spec
                .countries
                .iter()
                .any(|c| policy.spec.countries.contains(c))
                || w.status
                    .as_ref()
                    .is_some_and(|s| s.governing_policies.contains(&name))
        })
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// Filters MemberCluster changes down to those a workload can care about: its spec (a new
/// generation), what the placement engine sees of it (location, labels, readiness,
/// attestation, cordon or deletion), or its removal. Its status also carries the member's
/// inventory, which changes with every object placed there and says nothing about placement.
#[derive(Default)]
pub struct ClusterChanges {
    seen: std::sync::Mutex<
        std::collections::HashMap<String, (crate::placement::ClusterFacts, Option<i64>)>,
    >,
}

impl ClusterChanges {
    /// Whether this change of `mc` (already in `store`, or removed from it) matters.
    pub fn relevant(&self, store: &Store<MemberCluster>, mc: &MemberCluster) -> bool {
        let name = mc.name_any();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if store.get(&ObjectRef::new(&name)).is_none() {
            seen.remove(&name);
            return true;
        }
        let now = (
            facts::cluster(mc, StatusSource::Conditions),
            mc.metadata.generation,
        );
        seen.insert(name, now.clone()).as_ref() != Some(&now)
    }
}

/// Workloads a member cluster change can affect: those with a copy or a target there, and
/// those governed by a policy that allows the cluster (it may become a target).
pub fn map_cluster(
    workloads: &Store<ResidentWorkload>,
    policies: &Store<ResidencyPolicy>,
    cluster: &MemberCluster,
) -> Vec<ObjectRef<ResidentWorkload>> {
    let name = cluster.name_any();
    let facts = facts::cluster(cluster, StatusSource::Conditions);
    let allowing: Vec<Arc<ResidencyPolicy>> = policies
        .state()
        .into_iter()
        .filter(|p| facts::policy(p).allows(&facts))
        .collect();
    workloads
        .state()
        .iter()
        .filter(|w| {
            let status = w.status.as_ref();
            status.is_some_and(|s| {
                s.targets.contains(&name) || s.placements.iter().any(|p| p.cluster == name)
            }) || allowing.iter().any(|p| {
                w.spec
                    .countries
                    .iter()
                    .any(|c| p.spec.countries.contains(c))
            })
        })
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::asks_for;
    use super::*;
    use kube::runtime::{reflector, watcher};

    fn member(ready: &str, inventory_objects: i32) -> MemberCluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster",
            "metadata": {"name": "msk-1", "generation": 1},
            "spec": {"location": {"country": "RU", "region": "moscow"},
                     "attestation": {"nodeRegions": ["r"]}, "connection": {"local": {}}},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "",
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                       "inventory": {"objects": inventory_objects, "volumes": 0, "retained": 0}}
        }))
        .unwrap()
    }

    #[test]
    fn its_own_status_writes_do_not_reconcile_a_workload() {
        let rw = |generation: i64, status: &str, annotation: Option<&str>| -> ResidentWorkload {
            let mut v = serde_json::json!({
                "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
                "metadata": {"name": "w", "namespace": "ns", "generation": generation},
                "spec": {"role": "Processing", "countries": ["CH"], "manifests": []},
                "status": {"targets": [status]}
            });
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = serde_json::json!({plan::ABANDON_ANNOTATION: a});
            }
            serde_json::from_value(v).unwrap()
        };
        let first = asks_for(&rw(1, "zrh-1", None));
        assert_eq!(first, asks_for(&rw(1, "zrh-2", None)), "status only");
        assert_ne!(first, asks_for(&rw(2, "zrh-1", None)), "spec");
        assert_ne!(
            first,
            asks_for(&rw(1, "zrh-1", Some("msk-1"))),
            "annotation"
        );
        let mut deleting = rw(1, "zrh-1", None);
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()),
        );
        assert_ne!(first, asks_for(&deleting), "deletion");
    }

    #[test]
    fn only_changes_that_matter_to_placement_trigger_workloads() {
        let (store, mut writer) = reflector::store::<MemberCluster>();
        let changes = ClusterChanges::default();
        let seen = |mc: &MemberCluster, w: &mut reflector::store::Writer<MemberCluster>| {
            w.apply_watcher_event(&watcher::Event::Apply(mc.clone()));
            changes.relevant(&store, mc)
        };
        assert!(seen(&member("True", 1), &mut writer), "first sight");
        assert!(
            !seen(&member("True", 7), &mut writer),
            "only the inventory changed"
        );
        assert!(seen(&member("False", 7), &mut writer), "readiness flipped");
        let gone = member("False", 7);
        writer.apply_watcher_event(&watcher::Event::Delete(gone.clone()));
        assert!(changes.relevant(&store, &gone), "removed");
    }
}
