//! The data moves of Storage workloads (`spec.dataMigration: CopyAndVerify`), run from the
//! workload reconcile before its plan: read the move's record (a `DataMove`) and what the
//! move's Pods say on the members, ask the pure state machine ([`datamove::next`]) what to do,
//! do it, record it. The destinations are held (the planner's `Hold::AwaitingData`) until the
//! move succeeded; the source is only ever fenced (scaled to 0, suspended) and unfenced here,
//! never deleted: the relocation's eviction retains its volumes afterwards.
//!
//! Durability: the record is the move's state. What stops the writers and how to start them
//! again is written to it before the fence is sent; a failed move whose record still lists
//! fences is unfenced on every reconcile until that succeeded. Keys live only on the members,
//! each side with its half, and are deleted with the move's Pods when the move ends.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Context, Error, Result, plan};
use crate::api::conditions::{Desired, Status};
use crate::api::data_move::{
    ClusterDigest, DataMove, DataMoveSpec, DataMoveStatus, FenceRecord, PolicyGeneration, Timings,
    VolumePair,
};
use crate::api::labels;
use crate::api::resident_workload::{DataMigrationStatus, ResidentWorkload};
use crate::datamove::objects::{self, PORT, Role, Scheduling};
use crate::datamove::progress::{self, ATTEMPT_LABEL, PASS_LABEL, Pass, PodView, Progress};
use crate::datamove::{self, Failure, Observed, Phase, Settings, State, Step};
use crate::fleet::member::{Member, MemberError};
use crate::mover::manifest::Manifest;
use crate::placement::Decision;

/// Condition: the data of the move arrived on every destination after the writers stopped.
pub const DATA_SYNCED: &str = "DataSynced";
/// Condition: each destination's manifest digest equals the source's.
pub const DATA_VERIFIED: &str = "DataVerified";
/// The annotation a person sets to a failed move's name to try the move again.
pub const RETRY_ANNOTATION: &str = "residency.io/retry-data-move";

/// What the workload's reconcile takes from its data moves.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Targets that wait for their data, with why.
    pub awaiting: BTreeMap<String, String>,
    /// The move in progress or the last one.
    pub status: Option<DataMigrationStatus>,
    /// `DataSynced` and `DataVerified` (when there is a move).
    pub conditions: Vec<Desired>,
    /// A move is running: poll.
    pub active: bool,
}

fn ended(m: &DataMove) -> bool {
    matches!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(Phase::Succeeded | Phase::Failed)
    )
}

fn phase_of(m: &DataMove) -> Phase {
    m.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(Phase::Staging)
}

/// The conditions a move's state gives the workload (pure).
pub fn conditions(phase: Phase, message: &str) -> Vec<Desired> {
    let synced = match phase {
        Phase::Verifying | Phase::AwaitingCutover | Phase::Succeeded => {
            Desired::new(DATA_SYNCED, Status::True, "Synced", message)
        }
        Phase::Failed => Desired::new(DATA_SYNCED, Status::False, "MoveFailed", message),
        p => Desired::new(DATA_SYNCED, Status::False, format!("{p:?}"), message),
    };
    let verified = match phase {
        Phase::AwaitingCutover => {
            Desired::new(DATA_VERIFIED, Status::True, "AwaitingCutover", message)
        }
        Phase::Succeeded => Desired::new(DATA_VERIFIED, Status::True, "Verified", message),
        Phase::Failed => Desired::new(DATA_VERIFIED, Status::False, "MoveFailed", message),
        _ => Desired::new(DATA_VERIFIED, Status::Unknown, "NotVerifiedYet", message),
    };
    vec![synced, verified]
}

fn summary(m: &DataMove) -> DataMigrationStatus {
    let st = m.status.clone().unwrap_or_default();
    DataMigrationStatus {
        move_name: m.name_any(),
        phase: st.phase,
        message: st.message,
        volumes: st.volumes,
    }
}

fn outcome_of(m: &DataMove, hold: Option<&str>, destinations: &[String]) -> Outcome {
    let st = m.status.clone().unwrap_or_default();
    let phase = st.phase.unwrap_or(Phase::Staging);
    Outcome {
        awaiting: hold
            .map(|why| {
                destinations
                    .iter()
                    .map(|d| (d.clone(), why.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        status: Some(summary(m)),
        conditions: conditions(phase, &st.message),
        active: !ended(m),
    }
}

/// The workload's moves, oldest first.
async fn moves_of(ctx: &Context, rw: &ResidentWorkload) -> Result<Vec<DataMove>> {
    let ns = rw.namespace().unwrap_or_default();
    let api: Api<DataMove> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{}={}", labels::WORKLOAD, rw.name_any());
    let mut items = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::mgmt(format!("list DataMoves ({selector})")))?
        .items;
    items.sort_by(|a, b| {
        (
            a.metadata.creation_timestamp.as_ref().map(|t| t.0),
            a.name_any(),
        )
            .cmp(&(
                b.metadata.creation_timestamp.as_ref().map(|t| t.0),
                b.name_any(),
            ))
    });
    Ok(items)
}

/// Runs the workload's data move for this reconcile (see the module docs).
pub async fn drive(
    ctx: &Context,
    rw: &ResidentWorkload,
    decision: &Decision,
    previous: &crate::api::ResidentWorkloadStatus,
    slot: bool,
) -> Result<Outcome> {
    let Some(settings) = rw.spec.copy_and_verify() else {
        return Ok(Outcome::default());
    };
    let record = previous.placements.as_slice();
    let want = plan::data_move(decision, record);
    // nothing to move and the last move (as the workload's status recorded it) ended: the
    // records need not be read
    let last = previous.data_migration.clone();
    if want.is_none()
        && last
            .as_ref()
            .is_none_or(|l| matches!(l.phase, Some(Phase::Succeeded | Phase::Failed)))
    {
        return Ok(Outcome {
            conditions: last
                .as_ref()
                .and_then(|l| Some(conditions(l.phase?, &l.message)))
                .unwrap_or_default(),
            status: last,
            ..Default::default()
        });
    }
    let moves = moves_of(ctx, rw).await?;
    let latest = moves.last();
    if let Some(m) = latest.filter(|m| !ended(m)) {
        let m = run(ctx, rw, m.clone(), want.is_none()).await?;
        let hold = (phase_of(&m) != Phase::Succeeded).then(|| hold_message(&m));
        return Ok(outcome_of(&m, hold.as_deref(), &m.spec.destinations));
    }
    let Some((source, destinations)) = want else {
        return Ok(latest.map(|m| outcome_of(m, None, &[])).unwrap_or_default());
    };
    if let Some(m) = latest.filter(|m| m.spec.source == source) {
        let covered = destinations.iter().all(|d| m.spec.destinations.contains(d));
        match phase_of(m) {
            Phase::Succeeded if covered => return Ok(outcome_of(m, None, &[])),
            Phase::Failed
                if covered && rw.annotations().get(RETRY_ANNOTATION) != Some(&m.name_any()) =>
            {
                let st = m.status.clone().unwrap_or_default();
                if !st.fences.is_empty() {
                    // the source must run again: retried until it does
                    let mut m = m.clone();
                    unfence(ctx, rw, &mut m).await;
                    save(ctx, &m).await?;
                }
                let why = format!(
                    "The data move {} failed: {} Nothing was started here and nothing was deleted; fix the cause, then annotate the workload {RETRY_ANNOTATION}={} to try again.",
                    m.name_any(),
                    st.message,
                    m.name_any()
                );
                return Ok(outcome_of(m, Some(&why), &destinations));
            }
            _ => {}
        }
    }
    // a new move
    let hold = |why: String| Outcome {
        awaiting: destinations
            .iter()
            .map(|d| (d.clone(), why.clone()))
            .collect(),
        status: latest.map(summary),
        conditions: Vec::new(),
        active: true,
    };
    if !slot {
        return Ok(hold(
            "Waiting for a relocation slot before the data move starts.".into(),
        ));
    }
    let Some(image) = ctx.settings.mover_image.clone() else {
        return Ok(hold(
            "No data move can start: the operator runs without --mover-image (the Helm chart sets it to the operator's image).".into(),
        ));
    };
    if let Some(why) = unfenceable(rw) {
        return Ok(hold(format!("No data move can start: {why}.")));
    }
    let Some(src) = ctx.member(&source) else {
        return Ok(hold(format!(
            "Waiting until {source} can be reached to start moving its data."
        )));
    };
    let ns = rw.namespace().unwrap_or_default();
    let claims: Vec<String> = match src.workload_claims(&ns, &rw.name_any()).await {
        Ok(c) => c.iter().map(|p| p.name_any()).collect(),
        Err(e) => return Ok(hold(format!("Cannot list the volumes to move: {e}"))),
    };
    if claims.is_empty() {
        // nothing at rest on the source: the workload moves like any other
        return Ok(Outcome::default());
    }
    let m = create(ctx, rw, decision, &source, &destinations, claims, settings).await?;
    info!(workload = %rw.name_any(), data_move = %m.name_any(), %source, ?destinations, %image, "data move started");
    publish(
        ctx,
        rw,
        EventType::Normal,
        "DataMoveStarted",
        &format!(
            "Moving the data of {} from {source} to {} (DataMove {}).",
            m.spec.claims.join(", "),
            destinations.join(", "),
            m.name_any()
        ),
    );
    let m = run(ctx, rw, m, false).await?;
    let hold = (phase_of(&m) != Phase::Succeeded).then(|| hold_message(&m));
    Ok(outcome_of(&m, hold.as_deref(), &m.spec.destinations))
}

fn hold_message(m: &DataMove) -> String {
    let st = m.status.clone().unwrap_or_default();
    format!(
        "Receiving data (DataMove {}, {:?}): {}",
        m.name_any(),
        st.phase.unwrap_or(Phase::Staging),
        st.message
    )
}

/// Why the workload's writers cannot be stopped by the operator, if they cannot (pure).
fn unfenceable(rw: &ResidentWorkload) -> Option<String> {
    rw.spec
        .manifests
        .iter()
        .find_map(|m| objects::fence(m.kind(), &m.0).err())
}

async fn create(
    ctx: &Context,
    rw: &ResidentWorkload,
    decision: &Decision,
    source: &str,
    destinations: &[String],
    claims: Vec<String>,
    settings: &crate::api::resident_workload::DataMigration,
) -> Result<DataMove> {
    use sha2::Digest;
    let ns = rw.namespace().unwrap_or_default();
    let name = rw.name_any();
    let now = Timestamp::now();
    let salt = sha2::Sha256::digest(format!("{ns}/{name}/{source}/{}", now.as_nanosecond()));
    let prefix: String = name.chars().take(40).collect();
    let move_name = format!(
        "{}-{}",
        prefix.trim_end_matches('-'),
        &hex::encode(salt)[..8]
    );
    let policies = decision
        .governing_policies
        .iter()
        .map(|p| PolicyGeneration {
            name: p.clone(),
            generation: ctx
                .policies
                .get(&ObjectRef::new(p))
                .and_then(|x| x.metadata.generation),
        })
        .collect();
    let mut m = DataMove::new(
        &move_name,
        DataMoveSpec {
            workload: name.clone(),
            countries: rw.spec.countries.clone(),
            policies,
            source: source.to_string(),
            destinations: destinations.to_vec(),
            claims,
            cutover: settings.cutover,
            quiesce_timeout_seconds: settings.quiesce_timeout_seconds,
        },
    );
    m.metadata.namespace = Some(ns.clone());
    m.metadata.labels = Some(
        [
            (labels::WORKLOAD.to_string(), name.clone()),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
        ]
        .into(),
    );
    ctx.may_write()?;
    let api: Api<DataMove> = Api::namespaced(ctx.client.clone(), &ns);
    let mut created = api
        .create(&PostParams::default(), &m)
        .await
        .map_err(Error::mgmt(format!("create DataMove {move_name}")))?;
    let at = Some(Time(now));
    created.status = Some(DataMoveStatus {
        phase: Some(Phase::Staging),
        message: "Copying while the workload keeps running.".into(),
        phase_since: at.clone(),
        started_at: at,
        ..Default::default()
    });
    save(ctx, &created).await?;
    Ok(created)
}

async fn save(ctx: &Context, m: &DataMove) -> Result<()> {
    let api: Api<DataMove> =
        Api::namespaced(ctx.client.clone(), &m.namespace().unwrap_or_default());
    ctx.apply_status(&api, &m.name_any(), &m.status.clone().unwrap_or_default())
        .await
}

fn publish(ctx: &Context, rw: &ResidentWorkload, type_: EventType, reason: &str, note: &str) {
    ctx.publish_event(&rw.object_ref(&()), None, type_, reason, note);
}

fn view(p: &Pod) -> PodView {
    let labels = p.labels();
    let pass = labels.get(PASS_LABEL).and_then(|v| {
        [Pass::Serve, Pass::Stage, Pass::Sync, Pass::Manifest]
            .into_iter()
            .map(Pass::as_str)
            .find(|s| s == v)
    });
    let status = p.status.clone().unwrap_or_default();
    let message = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.clone())
        .map(|t| {
            format!(
                "exit {} {} {}",
                t.exit_code,
                t.reason.unwrap_or_default(),
                t.message.unwrap_or_default()
            )
            .trim()
            .to_string()
        })
        .next()
        .unwrap_or_default();
    PodView {
        name: p.name_any(),
        pass,
        attempt: labels
            .get(ATTEMPT_LABEL)
            .and_then(|a| a.parse().ok())
            .unwrap_or(0),
        phase: status.phase.unwrap_or_else(|| "Pending".into()),
        ip: status.pod_ip,
        message,
        deleting: p.metadata.deletion_timestamp.is_some(),
    }
}

/// One side of the move as read in this reconcile.
struct Side<'a> {
    member: Member<'a>,
    pods: Vec<PodView>,
}

/// Reads a side; `None` when it cannot be reached or its Pods cannot be listed.
async fn side<'a>(ctx: &'a Context, cluster: &'a str, ns: &str, move_id: &str) -> Option<Side<'a>> {
    let m = ctx.member(cluster)?;
    match m.move_pods(ns, move_id).await {
        Ok(pods) => Some(Side {
            pods: pods.iter().map(view).collect(),
            member: m,
        }),
        Err(e) => {
            if e.is_connectivity() {
                ctx.fleet.mark_unreachable(cluster, e.source.to_string());
            }
            warn!(cluster, error = %e, "cannot read the data move's Pods");
            None
        }
    }
}

/// The manifest a side's finished manifest Pod printed.
async fn manifest_of(
    side: &Side<'_>,
    ns: &str,
    pod: &str,
) -> std::result::Result<Manifest, String> {
    let log = side
        .member
        .pod_log(ns, pod)
        .await
        .map_err(|e| e.to_string())?;
    progress::parse_manifest(&log)
}

/// Observes the move, steps the state machine, carries the steps out, records the result.
/// `superseded`: the workload no longer needs the move (the policies let it stay): it ends
/// `Failed`, unfenced.
async fn run(
    ctx: &Context,
    rw: &ResidentWorkload,
    mut m: DataMove,
    superseded: bool,
) -> Result<DataMove> {
    let ns = rw.namespace().unwrap_or_default();
    let id = m.name_any();
    let before = m.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let phase = st.phase.unwrap_or(Phase::Staging);
    let spec = m.spec.clone();
    let now = Timestamp::now();

    // read
    let source = side(ctx, &spec.source, &ns, &id).await;
    let mut dests: BTreeMap<String, Side<'_>> = BTreeMap::new();
    for d in &spec.destinations {
        if let Some(s) = side(ctx, d, &ns, &id).await {
            dests.insert(d.clone(), s);
        }
    }
    let mut observed = Observed {
        source_reachable: source.is_some(),
        destinations_reachable: spec
            .destinations
            .iter()
            .map(|d| (d.clone(), dests.contains_key(d)))
            .collect(),
        in_phase: st
            .phase_since
            .as_ref()
            .map(|t| Duration::from_secs(now.duration_since(t.0).as_secs().max(0) as u64))
            .unwrap_or_default(),
        approved: rw
            .spec
            .data_migration
            .as_ref()
            .and_then(|d| d.approved_move.as_deref())
            == Some(id.as_str()),
        ..Default::default()
    };
    let pass = if phase == Phase::Syncing {
        Pass::Sync
    } else {
        Pass::Stage
    };
    let mut manifests: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut source_manifest: Option<Manifest> = None;
    if let Some(src) = &source {
        if let Progress::Exhausted(why) = progress::progress(&src.pods, Pass::Serve) {
            observed.mover_failed = Some(format!("the source's mover failed: {why}"));
        }
        match phase {
            Phase::Fencing => match src.member.pods_mounting(&ns, &spec.claims).await {
                Ok(writers) => {
                    observed.writers_stopped = writers.is_empty();
                    if !writers.is_empty() {
                        st.message = format!(
                            "Waiting until the writers stop: {} still mount the volumes.",
                            writers.join(", ")
                        );
                    }
                }
                Err(e) => warn!(error = %e, "cannot tell whether the writers stopped"),
            },
            Phase::Verifying => match progress::progress(&src.pods, Pass::Manifest) {
                Progress::Done(pod) => match manifest_of(src, &ns, &pod).await {
                    Ok(man) => {
                        observed.source_digest = Some(man.digest());
                        source_manifest = Some(man);
                    }
                    Err(e) => observed.mover_failed = Some(format!("{}: {e}", spec.source)),
                },
                Progress::Exhausted(why) => {
                    observed.mover_failed = Some(format!("{}: {why}", spec.source))
                }
                _ => {}
            },
            _ => {}
        }
    }
    for (d, s) in &dests {
        match phase {
            Phase::Staging | Phase::Syncing => match progress::progress(&s.pods, pass) {
                Progress::Done(pod) => {
                    observed.pulled.insert(d.clone(), true);
                    let name = format!("{phase:?}");
                    if !st
                        .transfers
                        .iter()
                        .any(|t| &t.destination == d && t.pass == name)
                        && let Ok(log) = s.member.pod_log(&ns, &pod).await
                        && let Some(t) = progress::parse_transfer(&log, d, &name)
                    {
                        st.transfers.push(t);
                    }
                }
                Progress::Exhausted(why) => {
                    observed.mover_failed = Some(format!("the copy to {d} failed: {why}"))
                }
                _ => {}
            },
            Phase::Verifying => match progress::progress(&s.pods, Pass::Manifest) {
                Progress::Done(pod) => match manifest_of(s, &ns, &pod).await {
                    Ok(man) => {
                        let paths = source_manifest
                            .as_ref()
                            .map(|src| progress::mismatches(src, &man, 5))
                            .unwrap_or_default();
                        observed
                            .destination_digests
                            .insert(d.clone(), (man.digest(), paths));
                        manifests.insert(d.clone(), man);
                    }
                    Err(e) => observed.mover_failed = Some(format!("{d}: {e}")),
                },
                Progress::Exhausted(why) => {
                    observed.mover_failed = Some(format!("the manifest on {d} failed: {why}"))
                }
                _ => {}
            },
            _ => {}
        }
    }
    // a destination digest seen before the source's cannot be compared yet
    if observed.source_digest.is_none() {
        observed.destination_digests.clear();
    }

    // decide
    let state = State {
        phase,
        failure: None,
        fenced: st.fenced,
    };
    let settings = Settings {
        cutover: spec.cutover,
        quiesce_timeout: Duration::from_secs(spec.quiesce_timeout_seconds.into()),
    };
    let (mut next, mut steps) = datamove::next(&state, &spec.destinations, &observed, settings);
    if superseded && !matches!(next.phase, Phase::Succeeded | Phase::Failed) {
        next = State {
            phase: Phase::Failed,
            failure: None,
            fenced: false,
        };
        steps = if state.fenced {
            vec![Step::Unfence]
        } else {
            Vec::new()
        };
        st.message = "The policies no longer make the workload leave its source: the move was stopped and the source runs as before.".into();
    }

    // record what the state machine decided before acting on it (fences first)
    if next.phase != phase {
        st.phase = Some(next.phase);
        st.phase_since = Some(Time(now));
    }
    if let Some(f) = &next.failure {
        st.message = match f {
            Failure::Mismatch { destination, paths } => format!(
                "The data on {destination} differs from the source's: {}. The source runs again; nothing was started on the destinations.",
                if paths.is_empty() {
                    "(digest only)".to_string()
                } else {
                    paths.join("; ")
                }
            ),
            Failure::QuiesceTimeout => format!(
                "The writers did not stop within {} s. The source runs again; nothing was started on the destinations.",
                spec.quiesce_timeout_seconds
            ),
            Failure::MoverFailed(why) => format!(
                "A mover failed: {why}. The source runs again; nothing was started on the destinations."
            ),
        };
    }
    let source_ip = source.as_ref().and_then(|s| {
        s.pods
            .iter()
            .find(|p| p.pass == Some("serve") && p.phase == "Running" && !p.deleting)
            .and_then(|p| p.ip.clone())
    });
    let mut writes: Vec<MemberError> = Vec::new();
    for step in &steps {
        match step {
            Step::Pull(ds) => {
                let (Some(src), Some(image)) = (&source, ctx.settings.mover_image.as_deref())
                else {
                    continue;
                };
                let pass = if next.phase == Phase::Syncing {
                    Pass::Sync
                } else {
                    Pass::Stage
                };
                // claims, keys and the server are checked only when a mover Pod must start
                let starting = matches!(
                    progress::progress(&src.pods, Pass::Serve),
                    Progress::Start(_)
                ) || ds.iter().any(|d| {
                    dests.get(d).is_some_and(|s| {
                        matches!(progress::progress(&s.pods, pass), Progress::Start(_))
                    })
                });
                if starting && let Err(e) = prepare(ctx, rw, &m, src, &dests, image).await {
                    st.message = format!("Preparing the copy: {e}");
                    writes.push(e);
                    continue;
                }
                let Some(ip) = &source_ip else {
                    st.message = format!("Waiting for the source's mover on {}.", spec.source);
                    continue;
                };
                let from = if ip.contains(':') {
                    format!("[{ip}]:{PORT}")
                } else {
                    format!("{ip}:{PORT}")
                };
                let mut running = Vec::new();
                for d in ds {
                    let Some(s) = dests.get(d) else { continue };
                    match progress::progress(&s.pods, pass) {
                        Progress::Start(attempt) => {
                            if attempt > 0 {
                                st.restarts += 1;
                            }
                            let pod = mover_pod(
                                rw,
                                &id,
                                image,
                                &Role::Pull { from: from.clone() },
                                pass,
                                attempt,
                                &spec.claims,
                            );
                            if let Err(e) = s.member.create_if_missing(&ns, &pod).await {
                                writes.push(e);
                            }
                            running.push(d.clone());
                        }
                        Progress::Running(_) => running.push(d.clone()),
                        _ => {}
                    }
                }
                st.message = if pass == Pass::Stage {
                    format!(
                        "Copying to {} while the workload keeps running.",
                        running.join(", ")
                    )
                } else {
                    format!("Writers stopped; final copy to {}.", running.join(", "))
                };
                if next.phase == Phase::Syncing && phase == Phase::Fencing {
                    st.message = "Writers stopped; final copy started.".into();
                }
            }
            Step::Fence => {
                if let Some(src) = &source {
                    if st.fences.is_empty() {
                        match fences(rw, &src.member, &ns).await {
                            Ok(f) => st.fences = f,
                            Err(e) => {
                                writes.push(e);
                                continue;
                            }
                        }
                    }
                    st.fenced = true;
                    st.fenced_at = Some(Time(now));
                    st.message = "Stopping the writers.".into();
                    m.status = Some(st.clone());
                    // durable before the first stop is sent
                    save(ctx, &m).await?;
                    stop_writers(rw, &src.member, &ns, &st.fences, &mut writes).await;
                }
            }
            Step::Wait(why) => {
                if phase == Phase::Fencing
                    && let Some(src) = &source
                {
                    // idempotent: a stop that failed earlier is sent again
                    stop_writers(rw, &src.member, &ns, &st.fences, &mut writes).await;
                }
                if !(phase == Phase::Fencing && st.message.starts_with("Waiting until the writers"))
                {
                    st.message = format!("{}.", capitalize(why));
                }
            }
            Step::Verify => {
                let Some(image) = ctx.settings.mover_image.as_deref() else {
                    continue;
                };
                let sides = source
                    .iter()
                    .map(|s| (spec.source.as_str(), s))
                    .chain(dests.iter().map(|(d, s)| (d.as_str(), s)));
                for (_, s) in sides {
                    if let Progress::Start(attempt) = progress::progress(&s.pods, Pass::Manifest) {
                        let pod = mover_pod(
                            rw,
                            &id,
                            image,
                            &Role::Manifest,
                            Pass::Manifest,
                            attempt,
                            &spec.claims,
                        );
                        if let Err(e) = s.member.create_if_missing(&ns, &pod).await {
                            writes.push(e);
                        }
                    }
                }
                st.message = "Computing each side's manifest.".into();
            }
            // after verification the message is written below, with what it proved
            Step::StartTargets => {
                if source_manifest.is_none() {
                    st.message = format!(
                        "Cutover approved: verified data (digest {}), starting on {}.",
                        short(&st.source_digest),
                        spec.destinations.join(", ")
                    );
                }
            }
            Step::Unfence => {}
        }
    }
    if next.phase == Phase::AwaitingCutover && phase != Phase::AwaitingCutover {
        st.message = format!(
            "Verified; the writers stay stopped until the cutover is approved: set spec.dataMigration.approvedMove to {id}."
        );
    }

    // what verification proved
    if let Some(src) = &source_manifest
        && manifests.len() == spec.destinations.len()
    {
        let totals = src.totals();
        st.files = totals.files;
        st.bytes = totals.bytes;
        st.source_digest = src.digest();
        st.destination_digests = manifests
            .iter()
            .map(|(c, man)| ClusterDigest {
                cluster: c.clone(),
                digest: man.digest(),
            })
            .collect();
        let mut pairs = progress::volume_pairs(&spec.source, &spec.claims, src, &manifests, |ok| {
            if ok { "Verified" } else { "Mismatch" }
        });
        for p in &mut pairs {
            if p.phase == "Verified" {
                p.verified_at = Some(Time(now));
            }
            p.last_sync_time = before
                .volumes
                .iter()
                .find(|q| {
                    q.destination_cluster == p.destination_cluster
                        && q.source_claim == p.source_claim
                })
                .and_then(|q| q.last_sync_time.clone());
        }
        st.volumes = pairs;
        if matches!(next.phase, Phase::Succeeded | Phase::AwaitingCutover) {
            st.verified_at = Some(Time(now));
            if let Some(Step::StartTargets) = steps.last() {
                st.message = format!(
                    "Verified: {} files, {} bytes, digest {} on {} and on {}.",
                    st.files,
                    st.bytes,
                    short(&st.source_digest),
                    spec.source,
                    spec.destinations.join(", ")
                );
            }
        }
    } else if !matches!(
        next.phase,
        Phase::Succeeded | Phase::Failed | Phase::AwaitingCutover
    ) {
        st.volumes = progress_pairs(&spec, next.phase, &observed, &before.volumes, now);
    }
    if next.phase == Phase::Fencing && phase == Phase::Staging || st.timings.is_none() {
        st.timings = Some(timings(&st, now));
    }
    if matches!(next.phase, Phase::Succeeded | Phase::Failed) {
        st.finished_at = Some(Time(now));
        st.timings = Some(timings(&st, now));
    }
    m.status = Some(st);

    // a failed move starts the source again, then drops the move's Pods and keys
    if next.phase == Phase::Failed {
        save(ctx, &m).await?;
        unfence(ctx, rw, &mut m).await;
    }
    if matches!(next.phase, Phase::Succeeded | Phase::Failed) {
        for s in source.iter().chain(dests.values()) {
            if let Err(e) = s.member.delete_move_objects(&ns, &id).await {
                warn!(cluster = s.member.name, error = %e, "could not remove the data move's Pods and keys");
            }
        }
    }
    if m.status.as_ref() != Some(&before) {
        save(ctx, &m).await?;
        events(ctx, rw, &m, &before).await;
    }
    if let Some(e) = writes.into_iter().next() {
        warn!(data_move = %id, error = %e, "a data move write failed; retried at the next reconcile");
    }
    Ok(m)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn short(digest: &str) -> &str {
    digest.get(..16).unwrap_or(digest)
}

fn timings(st: &DataMoveStatus, now: Timestamp) -> Timings {
    let secs = |a: &Option<Time>, b: Timestamp| a.as_ref().map(|t| b.duration_since(t.0).as_secs());
    let fenced = st.fenced_at.as_ref().map(|t| t.0);
    Timings {
        staging_seconds: match fenced {
            Some(f) => secs(&st.started_at, f),
            None => secs(&st.started_at, now),
        },
        fenced_seconds: fenced.map(|f| {
            st.verified_at
                .as_ref()
                .map(|v| v.0)
                .unwrap_or(now)
                .duration_since(f)
                .as_secs()
        }),
    }
}

/// Volume pairs while copying (pure): the phase, and when a copy to each destination last
/// finished.
fn progress_pairs(
    spec: &DataMoveSpec,
    phase: Phase,
    observed: &Observed,
    before: &[VolumePair],
    now: Timestamp,
) -> Vec<VolumePair> {
    let mut out = Vec::new();
    for d in &spec.destinations {
        for c in &spec.claims {
            let prev = before
                .iter()
                .find(|p| &p.destination_cluster == d && &p.source_claim == c);
            let synced_now = observed.pulled.get(d).copied().unwrap_or(false);
            out.push(VolumePair {
                source_cluster: spec.source.clone(),
                source_claim: c.clone(),
                destination_cluster: d.clone(),
                destination_claim: c.clone(),
                phase: format!("{phase:?}"),
                last_sync_time: if synced_now
                    && prev.is_none_or(|p| {
                        p.phase != format!("{phase:?}") || p.last_sync_time.is_none()
                    }) {
                    Some(Time(now))
                } else {
                    prev.and_then(|p| p.last_sync_time.clone())
                },
                ..prev.cloned().unwrap_or_default()
            });
        }
    }
    out
}

fn mover_pod(
    rw: &ResidentWorkload,
    move_id: &str,
    image: &str,
    role: &Role,
    pass: Pass,
    attempt: u32,
    claims: &[String],
) -> Value {
    let scheduling = rw
        .spec
        .manifests
        .iter()
        .find(|m| matches!(m.kind(), "StatefulSet" | "Deployment" | "Job" | "CronJob"))
        .map(|m| Scheduling::of(&m.0))
        .unwrap_or_default();
    let mut pod = objects::mover_pod(
        &progress::pod_name(move_id, pass, attempt),
        move_id,
        image,
        role,
        claims,
        &keys_name(move_id),
        &scheduling,
    );
    pod["metadata"]["labels"][PASS_LABEL] = json!(pass.as_str());
    pod["metadata"]["labels"][ATTEMPT_LABEL] = json!(attempt.to_string());
    pod
}

fn keys_name(move_id: &str) -> String {
    format!("{move_id}-keys")
}

/// Before a copy: the namespace, the claims and the keys on the destinations, the keys and the
/// server on the source. Keys found missing on any side are made again for every side (and
/// the server restarted with them).
async fn prepare(
    ctx: &Context,
    rw: &ResidentWorkload,
    m: &DataMove,
    src: &Side<'_>,
    dests: &BTreeMap<String, Side<'_>>,
    image: &str,
) -> std::result::Result<(), MemberError> {
    let ns = rw.namespace().unwrap_or_default();
    let id = m.name_any();
    let keys = keys_name(&id);
    // the source's claims, copied as they are (same names, sizes, modes, labels)
    let claims = src.member.workload_claims(&ns, &rw.name_any()).await?;
    for (d, s) in dests {
        // claims carry the countries: not before the member's admission policy allows them
        if !ctx.admission_refuses(d, rw).is_empty() {
            continue;
        }
        s.member.ensure_namespace(&ns).await?;
        let class = ctx
            .clusters
            .get(&ObjectRef::new(d))
            .and_then(|mc| mc.spec.storage_class_name.clone());
        for c in claims
            .iter()
            .filter(|c| m.spec.claims.contains(&c.name_any()))
        {
            s.member
                .create_if_missing(&ns, &destination_claim(c, class.as_deref()))
                .await?;
        }
    }
    let mut missing = false;
    for s in std::iter::once(src).chain(dests.values()) {
        missing |= !s.member.secret_exists(&ns, &keys).await?;
    }
    if missing {
        let k = crate::mover::tls::MoveKeys::generate().map_err(|e| MemberError {
            cluster: src.member.name.to_string(),
            action: format!("make the keys of move {id}"),
            source: crate::fleet::member::Cause::Kind(e.to_string()),
        })?;
        let files = k.source_files();
        let pairs: Vec<(&str, String)> = files.iter().map(|(a, b)| (*a, b.clone())).collect();
        src.member
            .put_secret(&ns, &objects::keys_secret(&keys, &id, &pairs))
            .await?;
        for s in dests.values() {
            let files = k.destination_files();
            let pairs: Vec<(&str, String)> = files.iter().map(|(a, b)| (*a, b.clone())).collect();
            s.member
                .put_secret(&ns, &objects::keys_secret(&keys, &id, &pairs))
                .await?;
        }
        // a server or a copy started with other keys cannot finish: start them again
        for p in src.pods.iter().filter(|p| p.pass == Some("serve")) {
            src.member.delete_pod(&ns, &p.name).await?;
        }
        for s in dests.values() {
            for p in s
                .pods
                .iter()
                .filter(|p| p.phase == "Running" || p.phase == "Pending")
            {
                s.member.delete_pod(&ns, &p.name).await?;
            }
        }
        return Ok(());
    }
    if let Progress::Start(_) = progress::progress(&src.pods, Pass::Serve) {
        let pod = mover_pod(rw, &id, image, &Role::Serve, Pass::Serve, 0, &m.spec.claims);
        src.member.create_if_missing(&ns, &pod).await?;
    }
    Ok(())
}

/// The destination's copy of a source claim (pure): same name, labels (without `retained`),
/// access modes, size and volume mode; the destination's storage class when its MemberCluster
/// names one.
fn destination_claim(
    source: &k8s_openapi::api::core::v1::PersistentVolumeClaim,
    class: Option<&str>,
) -> Value {
    let spec = source.spec.clone().unwrap_or_default();
    let mut labels = source.labels().clone();
    labels.remove(crate::api::labels::RETAINED);
    let mut out = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": source.name_any(), "labels": labels},
        "spec": {
            "accessModes": spec.access_modes,
            "resources": {"requests": spec.resources.and_then(|r| r.requests)},
        },
    });
    if let Some(c) = class.map(str::to_string).or(spec.storage_class_name) {
        out["spec"]["storageClassName"] = json!(c);
    }
    if let Some(v) = spec.volume_mode {
        out["spec"]["volumeMode"] = json!(v);
    }
    out
}

/// The workload's writers on the source and how each is started again (reads only).
async fn fences(
    rw: &ResidentWorkload,
    src: &Member<'_>,
    ns: &str,
) -> std::result::Result<Vec<FenceRecord>, MemberError> {
    let mut out = Vec::new();
    for man in &rw.spec.manifests {
        let (kind, name) = (man.kind(), man.name());
        let Ok(Some(_)) = objects::fence(kind, &man.0) else {
            continue;
        };
        let Some(live) = src.live(ns, kind, name).await? else {
            continue;
        };
        if let Ok(Some(f)) = objects::fence(kind, &live) {
            out.push(FenceRecord {
                kind: kind.to_string(),
                name: name.to_string(),
                restore: f.restore.to_string(),
            });
        }
    }
    Ok(out)
}

async fn stop_writers(
    rw: &ResidentWorkload,
    src: &Member<'_>,
    ns: &str,
    fences: &[FenceRecord],
    writes: &mut Vec<MemberError>,
) {
    for f in fences {
        let Some(stop) = rw
            .spec
            .manifests
            .iter()
            .find(|m| m.kind() == f.kind && m.name() == f.name)
            .and_then(|m| objects::fence(&f.kind, &m.0).ok().flatten())
            .map(|x| x.stop)
        else {
            continue;
        };
        // a writer already stopped is not written again (the stop is re-checked while fencing)
        match src.live(ns, &f.kind, &f.name).await {
            Ok(Some(live)) if objects::holds(&live, &stop) => continue,
            Ok(None) => continue,
            Err(e) => {
                writes.push(e);
                continue;
            }
            Ok(Some(_)) => {}
        }
        if let Err(e) = src.patch_writers(ns, &f.kind, &f.name, &stop).await {
            writes.push(e);
        }
    }
}

/// Starts the source's writers again as they were; the fences are forgotten only once every
/// restore was sent.
async fn unfence(ctx: &Context, rw: &ResidentWorkload, m: &mut DataMove) {
    let ns = rw.namespace().unwrap_or_default();
    let Some(src) = ctx.member(&m.spec.source) else {
        return;
    };
    let mut st = m.status.clone().unwrap_or_default();
    let mut left = Vec::new();
    for f in &st.fences {
        let restore: Value = serde_json::from_str(&f.restore).unwrap_or(Value::Null);
        if let Err(e) = src.patch_writers(&ns, &f.kind, &f.name, &restore).await {
            warn!(error = %e, "could not start the source's writers again; retried");
            left.push(f.clone());
        }
    }
    st.fenced = !left.is_empty();
    st.fences = left;
    m.status = Some(st);
}

async fn events(ctx: &Context, rw: &ResidentWorkload, m: &DataMove, before: &DataMoveStatus) {
    let st = m.status.clone().unwrap_or_default();
    if st.phase == before.phase {
        return;
    }
    let (type_, reason) = match st.phase {
        Some(Phase::Fencing) => (EventType::Normal, "WritersStopping"),
        Some(Phase::Verifying) => (EventType::Normal, "DataSynced"),
        Some(Phase::AwaitingCutover) => (EventType::Normal, "CutoverAwaitingApproval"),
        Some(Phase::Succeeded) => (EventType::Normal, "DataVerified"),
        Some(Phase::Failed) => (EventType::Warning, "DataMoveFailed"),
        _ => return,
    };
    publish(
        ctx,
        rw,
        type_,
        reason,
        &format!("DataMove {}: {}", m.name_any(), st.message),
    );
    ctx.metrics.data_move(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_follow_the_move() {
        let c = conditions(Phase::Staging, "copying");
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            (Status::False, "Staging")
        );
        assert_eq!(c[1].status, Status::Unknown);
        let c = conditions(Phase::Succeeded, "ok");
        assert_eq!((c[0].status, c[1].status), (Status::True, Status::True));
        let c = conditions(Phase::Failed, "mismatch");
        assert_eq!(
            (c[1].status, c[1].reason.as_str()),
            (Status::False, "MoveFailed")
        );
    }

    #[test]
    fn a_destination_claim_copies_the_source_claim_without_its_retained_label() {
        let pvc: k8s_openapi::api::core::v1::PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": {"name": "data-store-0", "labels": {"residency.io/workload": "store", "residency.io/retained": "true"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast",
                     "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "pv-7"}
        }))
        .unwrap();
        let c = destination_claim(&pvc, Some("real-local"));
        assert_eq!(c["metadata"]["name"], "data-store-0");
        assert!(
            c["metadata"]["labels"]
                .get("residency.io/retained")
                .is_none()
        );
        assert_eq!(c["spec"]["storageClassName"], "real-local");
        assert_eq!(c["spec"]["resources"]["requests"]["storage"], "1Gi");
        assert!(
            c["spec"].get("volumeName").is_none(),
            "binds to a volume of the destination"
        );
        let c = destination_claim(&pvc, None);
        assert_eq!(c["spec"]["storageClassName"], "fast");
    }
}
