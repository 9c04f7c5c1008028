//! The MemberCluster reconciler: connect, probe, attest the location, report.
//!
//! Every `probe_interval` (and at once when a node's labels or provider ID change) it connects
//! to the member (its own cluster, or a kubeconfig Secret in the operator's namespace), reads
//! `/version`, attests the location from the member's node watch cache
//! ([`crate::location::attest`]: region catalogue, node regions and zones, provider IDs), and
//! records whether the member is reachable and where its nodes are. Status is written only when
//! it changes; a location that stops being verified is a Warning Event. Credentials are never
//! logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::{Context, Error, Result};
use crate::api::conditions::{self, Desired, Status, types};
use crate::api::{MemberCluster, MemberClusterStatus};
use crate::fleet::kubeconfig::config_from_kubeconfig;
use crate::fleet::registry::Connection;
use crate::fleet::topology::Nodes;
use crate::location::attest;

const CONTROLLER: &str = "cluster";

/// Why a member has no usable connection: a CamelCase reason and a message.
struct Refused {
    reason: &'static str,
    message: String,
}

/// The annotation on a MemberCluster being deleted that lets the deletion forget the data its
/// inventory still shows there (`"true"`); recorded in a Warning Event `DataForgotten`.
pub const FORGET_ANNOTATION: &str = "residency.io/forget-data";

/// Reconciles one member cluster (dispatching through the finalizer: a MemberCluster whose
/// inventory still holds data of a country cannot silently disappear).
pub async fn reconcile(mc: Arc<MemberCluster>, ctx: Arc<Context>) -> Result<Action> {
    if !ctx.synced() {
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    ctx.may_write()?;
    let api: Api<MemberCluster> = Api::all(ctx.client.clone());
    kube::runtime::finalizer::finalizer(&api, crate::api::FINALIZER, mc, |event| async {
        match event {
            kube::runtime::finalizer::Event::Apply(mc) => apply(mc, ctx.clone()).await,
            kube::runtime::finalizer::Event::Cleanup(mc) => cleanup(mc, ctx.clone()).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// At most this many unrecorded objects are listed in a MemberCluster's inventory.
pub const MAX_UNRECORDED: usize = 50;

/// The inventory summary of one member from its labelled objects and the workloads' records
/// (pure).
pub fn inventory(
    cluster: &str,
    objects: &crate::controller::policy::LabelledObjects,
    workloads: &[Arc<crate::api::ResidentWorkload>],
) -> crate::api::member_cluster::Inventory {
    use crate::api::member_cluster::{CountryCopies, Inventory, InventoryObject};
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let volume = |kind: &str| kind == "PersistentVolumeClaim" || kind == "PersistentVolume";
    let mut countries: Vec<String> = objects
        .values()
        .flat_map(|l| l.countries.iter().cloned())
        .collect();
    countries.sort();
    countries.dedup();
    let records = crate::controller::policy::Records::new(workloads);
    let recorded = |l: &crate::fleet::labelled::Labelled| {
        l.workload
            .as_deref()
            .is_some_and(|w| records.accounts_for(w, cluster))
    };
    let mut by_country: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for l in objects.values() {
        for c in &l.countries {
            let e = by_country.entry(c.as_str()).or_default();
            e.0 += 1;
            e.1 += usize::from(!recorded(l));
        }
    }
    let unrecorded: Vec<InventoryObject> = objects
        .iter()
        .filter(|(_, l)| !recorded(l))
        .map(|((kind, ns, name), l)| InventoryObject {
            kind: kind.clone(),
            namespace: (!ns.is_empty()).then(|| ns.clone()),
            name: name.clone(),
            countries: l.countries.clone(),
            workload: l.workload.clone(),
            retained: l.retained,
        })
        .collect();
    Inventory {
        objects: count(objects.len()),
        volumes: count(objects.keys().filter(|(k, _, _)| volume(k)).count()),
        retained: count(
            objects
                .iter()
                .filter(|((k, _, _), l)| volume(k) && l.retained)
                .count(),
        ),
        countries,
        unrecorded_count: count(unrecorded.len()),
        unrecorded: unrecorded.into_iter().take(MAX_UNRECORDED).collect(),
        by_country: by_country
            .into_iter()
            .map(|(country, (n, u))| CountryCopies {
                country: country.to_string(),
                objects: count(n),
                unrecorded: count(u),
            })
            .collect(),
    }
}

/// The compliance gauges of one member from its inventory: per country, its copies, those no
/// record accounts for, and (all of them) when a policy governing the country does not allow
/// the cluster (pure).
pub fn compliance_gauges(
    inv: &crate::api::member_cluster::Inventory,
    cluster: &crate::placement::ClusterFacts,
    policies: &[crate::placement::PolicyFacts],
) -> Vec<(String, crate::metrics::CountryGauges)> {
    inv.by_country
        .iter()
        .map(|c| {
            let forbidden = !crate::facts::forbidding(policies, &c.country, cluster).is_empty();
            (
                c.country.clone(),
                crate::metrics::CountryGauges {
                    copies: i64::from(c.objects),
                    unrecorded: i64::from(c.unrecorded),
                    forbidden: if forbidden { i64::from(c.objects) } else { 0 },
                },
            )
        })
        .collect()
}

/// What the inventory shows on `cluster`: `kind namespace/name (countries)`, sorted (pure).
pub fn inventory_lines(objects: &crate::controller::policy::LabelledObjects) -> Vec<String> {
    objects
        .iter()
        .map(|((kind, ns, name), l)| {
            let at = if ns.is_empty() {
                name.clone()
            } else {
                format!("{ns}/{name}")
            };
            format!("{kind} {at} ({})", l.countries.join(", "))
        })
        .collect()
}

/// Deleting a MemberCluster: it goes once its inventory holds no object labelled with a
/// country, or once a person annotated it [`FORGET_ANNOTATION`]`=true`. Until then it stays,
/// `Ready=False, reason=DeletionBlocked` listing what is still there, and every copy there
/// stays reported.
async fn cleanup(mc: Arc<MemberCluster>, ctx: Arc<Context>) -> Result<Action> {
    let name = mc.name_any();
    let objects = ctx.labelled.member(&name).unwrap_or_default();
    let held = inventory_lines(&objects);
    let forget = mc.annotations().get(FORGET_ANNOTATION).map(String::as_str) == Some("true");
    if !held.is_empty() && !forget {
        let shown: Vec<&str> = held.iter().take(5).map(String::as_str).collect();
        let more = held.len().saturating_sub(shown.len());
        let message = format!(
            "Deletion waits: {name} still holds {} object(s) labelled with a country: {}{}. Remove them, or annotate the MemberCluster {FORGET_ANNOTATION}=true to forget them (recorded in an Event).",
            held.len(),
            shown.join("; "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        let previous = mc.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        status.conditions = conditions::merge(
            &previous.conditions,
            &[Desired::new(
                types::READY,
                Status::False,
                "DeletionBlocked",
                message.clone(),
            )],
            mc.metadata.generation,
            Timestamp::now(),
        );
        if status != previous {
            ctx.apply_status(
                &Api::<MemberCluster>::all(ctx.client.clone()),
                &name,
                &status,
            )
            .await?;
        }
        return Err(Error::CleanupBlocked(message));
    }
    if !held.is_empty() {
        await_forgotten_recorded(&ctx, &name, &objects).await?;
        let shown: Vec<&str> = held.iter().take(10).map(String::as_str).collect();
        let note = format!(
            "{name} was deleted with {FORGET_ANNOTATION}=true while it still held {} object(s) labelled with a country, now no longer watched or reported: {}{}",
            held.len(),
            shown.join("; "),
            if held.len() > shown.len() { " ..." } else { "" }
        );
        warn!(cluster = %name, objects = held.len(), "data forgotten with the member");
        use kube::Resource;
        ctx.publish_event(
            &mc.object_ref(&()),
            None,
            kube::runtime::events::EventType::Warning,
            "DataForgotten",
            &note,
        );
    }
    // the member's admission policies go with it (when it can be reached)
    if let Some(conn) = ctx.fleet.get(&name)
        && conn.reachable
        && let Some(client) = conn.client
    {
        super::admission::remove_all(&ctx, &name, &client).await;
    }
    ctx.fleet.remove(&name);
    ctx.labelled.remove_member(&name);
    ctx.topology.remove_member(&name);
    ctx.metrics.inventory(&name, &[]);
    // the policies no longer see that member's objects
    for p in ctx.policies.state() {
        let _ = ctx
            .policy_events
            .send(kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
            .await;
    }
    Ok(Action::await_change())
}

/// Policies governing a country of `objects` whose status does not record yet that the copies
/// on `cluster` are forgotten (pure).
pub fn policies_to_record(
    policies: &[Arc<crate::api::ResidencyPolicy>],
    cluster: &str,
    objects: &crate::controller::policy::LabelledObjects,
) -> Vec<Arc<crate::api::ResidencyPolicy>> {
    policies
        .iter()
        .filter(|p| {
            p.spec.countries.iter().any(|c| {
                objects
                    .values()
                    .any(|l| l.countries.iter().any(|h| h == c.as_str()))
            })
        })
        .filter(|p| {
            !p.status
                .as_ref()
                .is_some_and(|s| s.forgotten.iter().any(|f| f.cluster == cluster))
        })
        .cloned()
        .collect()
}

/// Before a MemberCluster is forgotten, every policy governing data it holds records the
/// forgotten copies in its status (so they stay reported once the MemberCluster is gone): asks
/// those policies to re-evaluate and waits a few seconds for their status; blocks the deletion
/// (retried like a probe) while one has not.
async fn await_forgotten_recorded(
    ctx: &Context,
    cluster: &str,
    objects: &crate::controller::policy::LabelledObjects,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pending = policies_to_record(&ctx.policies.state(), cluster, objects);
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let names: Vec<String> = pending.iter().map(|p| p.name_any()).collect();
            return Err(Error::CleanupBlocked(format!(
                "Deletion waits until the policies {} record the copies on {cluster} as forgotten.",
                names.join(", ")
            )));
        }
        for p in &pending {
            let _ = ctx
                .policy_events
                .send(kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Probes one member cluster and records what it found.
async fn apply(mc: Arc<MemberCluster>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    let name = mc.name_any();
    let previous = mc.status.clone().unwrap_or_default();
    let mut status = MemberClusterStatus {
        observed_generation: mc.metadata.generation,
        ..Default::default()
    };
    let mut reached = None;
    let mut next_probe = ctx.settings.probe_interval;
    let mut desired = match connect(&ctx, &mc).await {
        Err(refused) => {
            ctx.fleet.set(
                &name,
                Connection {
                    client: None,
                    reachable: false,
                    fingerprint: String::new(),
                    last_error: Some(refused.message.clone()),
                    watches: None,
                    access: None,
                    secrets_cluster_wide: false,
                },
            );
            vec![
                Desired::new(types::READY, Status::False, refused.reason, refused.message),
                Desired::new(
                    types::LOCATION_VERIFIED,
                    Status::Unknown,
                    "NotConnected",
                    "The location cannot be attested without a connection.",
                ),
            ]
        }
        Ok(Connected {
            client,
            watch_client,
            fingerprint,
            access,
            secret_version,
        }) => match client.apiserver_version().await {
            Err(e) => {
                let message = format!("Cannot reach the API server: {e}");
                let secrets = previous_secrets(&ctx, &name);
                ctx.fleet.set(
                    &name,
                    Connection {
                        client: Some(client),
                        reachable: false,
                        watches: watches_for(&ctx, &name, &fingerprint, &watch_client, secrets),
                        fingerprint,
                        last_error: Some(e.to_string()),
                        access,
                        secrets_cluster_wide: secrets,
                    },
                );
                // keep what was observed before: the cluster did not change, we just cannot see it
                status.kubernetes_version = previous.kubernetes_version.clone();
                status.observed_node_regions = previous.observed_node_regions.clone();
                status.node_count = previous.node_count;
                status.regions = previous.regions.clone();
                vec![
                    Desired::new(types::READY, Status::False, "Unreachable", message),
                    Desired::new(
                        types::LOCATION_VERIFIED,
                        Status::Unknown,
                        "Unreachable",
                        "The nodes cannot be read while the cluster is unreachable.",
                    ),
                ]
            }
            Ok(version) => {
                let version = version.git_version;
                let (lacking, secrets) = match review_access(&client, access.as_ref()).await {
                    Ok(r) => r,
                    Err(kube::Error::Api(s)) if s.code == 403 => (
                        vec![format!(
                            "create selfsubjectrulesreviews.authorization.k8s.io (check its own permissions at every probe): {}",
                            s.message
                        )],
                        false,
                    ),
                    Err(e) => {
                        warn!(cluster = %name, error = %e, "cannot review the member identity's permissions");
                        (vec![], previous_secrets(&ctx, &name))
                    }
                };
                let forbidden = (!lacking.is_empty()).then(|| {
                    let shown = lacking.len().min(8);
                    format!(
                        "The member's identity lacks {} permission(s) the operator needs; nothing is written there until it has them (run join again): {}{}",
                        lacking.len(),
                        lacking[..shown].join("; "),
                        if lacking.len() > shown {
                            format!("; and {} more", lacking.len() - shown)
                        } else {
                            String::new()
                        }
                    )
                });
                if forbidden.is_none() {
                    reached = Some(client.clone());
                }
                status.credential_version = secret_version;
                ctx.fleet.set(
                    &name,
                    Connection {
                        client: Some(client),
                        reachable: forbidden.is_none(),
                        watches: watches_for(&ctx, &name, &fingerprint, &watch_client, secrets),
                        fingerprint,
                        last_error: forbidden.clone(),
                        access,
                        secrets_cluster_wide: secrets,
                    },
                );
                status.kubernetes_version = Some(version.clone());
                if let Some(message) = forbidden {
                    status.observed_node_regions = previous.observed_node_regions.clone();
                    status.node_count = previous.node_count;
                    status.unverified_nodes = previous.unverified_nodes.clone();
                    status.regions = previous.regions.clone();
                    let kept = conditions::find(&previous.conditions, types::LOCATION_VERIFIED);
                    vec![
                        Desired::new(types::READY, Status::False, "Forbidden", message),
                        match kept {
                            Some(c) => Desired::new(
                                types::LOCATION_VERIFIED,
                                conditions::status_of(c),
                                c.reason.clone(),
                                c.message.clone(),
                            ),
                            None => Desired::new(
                                types::LOCATION_VERIFIED,
                                Status::Unknown,
                                "Forbidden",
                                "The member's identity lacks permissions the attestation needs.",
                            ),
                        },
                    ]
                } else {
                    let ready = Desired::new(
                        types::READY,
                        Status::True,
                        "Connected",
                        format!("Reachable; Kubernetes {version}."),
                    );
                    let verified = match listed_nodes(&ctx, &name).await {
                        Nodes::Listed(topology) => {
                            let a = attest::attest(
                                mc.spec.location.country.as_str(),
                                &mc.spec.attestation.node_regions,
                                &topology,
                                &crate::location::catalogue::BUILTIN,
                            );
                            status.observed_node_regions = a.observed_regions.clone();
                            status.node_count =
                                Some(i32::try_from(a.node_count).unwrap_or(i32::MAX));
                            status.unverified_nodes = a.unverified_nodes.clone();
                            status.regions = a.regions.iter().map(attest::region_status).collect();
                            Desired::new(
                                types::LOCATION_VERIFIED,
                                Status::from(a.verified),
                                a.reason.as_str(),
                                a.message,
                            )
                        }
                        not_listed => {
                            // what was seen before still describes the nodes best
                            status.observed_node_regions = previous.observed_node_regions.clone();
                            status.node_count = previous.node_count;
                            status.unverified_nodes = previous.unverified_nodes.clone();
                            status.regions = previous.regions.clone();
                            next_probe = NODES_RETRY;
                            let kept =
                                conditions::find(&previous.conditions, types::LOCATION_VERIFIED)
                                    .filter(|c| {
                                        c.reason != "Unreachable" && c.reason != "NotConnected"
                                    });
                            match (not_listed, kept) {
                                // a watch restarting (a new connection, the operator restarted):
                                // the last attestation stands until the nodes are listed again
                                (Nodes::NotYet(_), Some(c)) => Desired::new(
                                    types::LOCATION_VERIFIED,
                                    conditions::status_of(c),
                                    c.reason.clone(),
                                    c.message.clone(),
                                ),
                                (Nodes::NotYet(why), None) => Desired::new(
                                    types::LOCATION_VERIFIED,
                                    Status::Unknown,
                                    "NodesNotListed",
                                    format!(
                                        "The member's nodes have not been listed yet{}.",
                                        why.map(|w| format!(": {w}")).unwrap_or_default()
                                    ),
                                ),
                                (failing, _) => Desired::new(
                                    types::LOCATION_VERIFIED,
                                    Status::Unknown,
                                    "NodesNotListed",
                                    format!(
                                        "The member's nodes cannot be listed (its node watch keeps failing), so what was seen before may be stale: {}",
                                        match failing {
                                            Nodes::Failing(e) => e,
                                            _ => String::new(),
                                        }
                                    ),
                                ),
                            }
                        }
                    };
                    vec![ready, verified]
                }
            }
        },
    };
    let facts = crate::facts::cluster(&mc, crate::facts::StatusSource::Conditions);
    let policies = ctx.policy_facts();
    // prevention: the member's admission policies follow the policies
    let prevention = match &reached {
        Some(client) => {
            super::admission::sync(&ctx, &mc, &facts, &policies, client, &previous).await?
        }
        None => super::admission::unreachable(&previous),
    };
    desired.push(prevention.condition);
    status.prevention = prevention.status;
    status.conditions = conditions::merge(
        &previous.conditions,
        &desired,
        mc.metadata.generation,
        Timestamp::now(),
    );
    // what the member holds, from its watches (kept while it is unreachable: the last view)
    status.inventory = match ctx.labelled.member(&name) {
        Some(objects) => Some(inventory(&name, &objects, &ctx.workloads.state())),
        None => previous.inventory.clone(),
    };
    if let Some(inv) = &status.inventory {
        ctx.metrics
            .inventory(&name, &compliance_gauges(inv, &facts, &policies));
    }
    let ready = conditions::is_true(&status.conditions, types::READY);
    let verified = conditions::is_true(&status.conditions, types::LOCATION_VERIFIED);
    ctx.metrics.member_health(&name, ready, verified);
    if status != previous {
        info!(cluster = %name, ready, verified, "member status changed");
        ctx.apply_status(
            &Api::<MemberCluster>::all(ctx.client.clone()),
            &name,
            &status,
        )
        .await?;
    }
    announce_location(&ctx, &mc, &previous, &status);
    ctx.metrics.reconciled(CONTROLLER, start.elapsed());
    Ok(Action::requeue(next_probe))
}

/// How soon a member whose nodes are not listed yet is probed again.
const NODES_RETRY: Duration = Duration::from_secs(1);
/// How long a probe waits for a new member's node watch to list its nodes.
const NODES_WAIT: Duration = Duration::from_secs(5);

/// The member's nodes from its watch cache (waiting up to [`NODES_WAIT`] for a watch just
/// started to list them).
async fn listed_nodes(ctx: &Context, name: &str) -> Nodes {
    let deadline = Instant::now() + NODES_WAIT;
    loop {
        let seen = ctx
            .topology
            .read(name, |m| m.map(|m| m.nodes()))
            .unwrap_or(Nodes::NotYet(None));
        match seen {
            Nodes::NotYet(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => return other,
        }
    }
}

/// A Warning Event when the member's location stops being verified (or is not verified when
/// first probed), naming why.
fn announce_location(
    ctx: &Context,
    mc: &MemberCluster,
    previous: &MemberClusterStatus,
    status: &MemberClusterStatus,
) {
    let now = conditions::find(&status.conditions, types::LOCATION_VERIFIED);
    let before = conditions::find(&previous.conditions, types::LOCATION_VERIFIED);
    if let Some(c) = now
        && c.status == Status::False.as_str()
        && before.is_none_or(|b| b.status != c.status || b.reason != c.reason)
    {
        ctx.publish_event(
            &mc.object_ref(&()),
            None,
            kube::runtime::events::EventType::Warning,
            &c.reason,
            &format!("Location not verified: {}", c.message),
        );
    }
}

/// Logs, counts and requeues with backoff.
pub fn error_policy(mc: Arc<MemberCluster>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("cluster/{}", mc.name_any());
    warn!(cluster = %mc.name_any(), category = err.category(), error = %err, "probe failed");
    ctx.metrics.failed(CONTROLLER, err.category());
    if matches!(err, Error::CleanupBlocked(_)) {
        // a blocked deletion is re-checked like a probe, not backed off for minutes
        return Action::requeue(ctx.settings.probe_interval);
    }
    Action::requeue(ctx.backoff.next(&key))
}

/// A client for the member, reusing the previous one while its configuration is unchanged.
/// A connection: the client for requests, one for watches (no read timeout), and what it was
/// built from.
struct Connected {
    client: Client,
    watch_client: Client,
    fingerprint: String,
    access: Option<crate::fleet::registry::Access>,
    secret_version: Option<String>,
}

async fn connect(ctx: &Context, mc: &MemberCluster) -> Result<Connected, Refused> {
    let name = mc.name_any();
    if mc.spec.connection.local.is_some() {
        return Ok(Connected {
            client: ctx.client.clone(),
            watch_client: ctx.client.clone(),
            fingerprint: "local".into(),
            access: None,
            secret_version: None,
        });
    }
    let Some(secret_ref) = mc.spec.connection.kubeconfig_secret_ref.as_ref() else {
        return Err(Refused {
            reason: "NoConnection",
            message: "Set connection.local or connection.kubeconfigSecretRef.".into(),
        });
    };
    let ns = &ctx.settings.namespace;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = secrets
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| Refused {
            reason: "SecretUnreadable",
            message: format!("Cannot read Secret {ns}/{}: {e}", secret_ref.name),
        })?;
    let Some(secret) = secret else {
        return Err(Refused {
            reason: "SecretNotFound",
            message: format!(
                "Secret {ns}/{} does not exist; create it with the member's kubeconfig under key '{}'.",
                secret_ref.name, secret_ref.key
            ),
        });
    };
    let fingerprint = format!(
        "{}/{}/{}",
        secret.resource_version().unwrap_or_default(),
        secret_ref.key,
        mc.metadata.generation.unwrap_or_default()
    );
    let access = access_of(&secret);
    let secret_version = secret.resource_version();
    if let Some(existing) = ctx.fleet.get(&name)
        && existing.fingerprint == fingerprint
        && let Some(client) = existing.client
    {
        // unchanged configuration: the running watches keep their own client
        return Ok(Connected {
            watch_client: client.clone(),
            client,
            fingerprint,
            access,
            secret_version,
        });
    }
    let Some(bytes) = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&secret_ref.key))
        .map(|b| b.0.clone())
    else {
        return Err(Refused {
            reason: "KubeconfigKeyMissing",
            message: format!(
                "Secret {ns}/{} has no key '{}'.",
                secret_ref.name, secret_ref.key
            ),
        });
    };
    let config = config_from_kubeconfig(&bytes, ctx.settings.connection_policy)
        .await
        .map_err(|e| Refused {
            reason: connection_reason(e.category()),
            message: format!("Kubeconfig in Secret {ns}/{} refused: {e}", secret_ref.name),
        })?;
    let mut watch_config = config.clone();
    watch_config.read_timeout = None;
    let build = |config: kube::Config| {
        Client::try_from(crate::fleet::identify(config, &ctx.settings.instance)).map_err(|e| {
            Refused {
                reason: "InvalidKubeconfig",
                message: format!(
                    "Kubeconfig in Secret {ns}/{} unusable: {e}",
                    secret_ref.name
                ),
            }
        })
    };
    Ok(Connected {
        client: build(config)?,
        watch_client: build(watch_config)?,
        fingerprint,
        access,
        secret_version,
    })
}

/// What the last probe found: whether Secrets may be listed in every namespace.
fn previous_secrets(ctx: &Context, name: &str) -> bool {
    ctx.fleet.get(name).is_some_and(|c| c.secrets_cluster_wide)
}

/// The identity `join` made, from the annotations of the kubeconfig Secret it wrote.
fn access_of(secret: &Secret) -> Option<crate::fleet::registry::Access> {
    let a = secret.annotations();
    let (namespace, service_account) = a
        .get(crate::access::SERVICE_ACCOUNT_ANNOTATION)?
        .split_once('/')?;
    Some(crate::fleet::registry::Access {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        workload_role: a
            .get(crate::access::WORKLOAD_ROLE_ANNOTATION)
            .cloned()
            .unwrap_or_else(|| crate::access::WORKLOAD_ROLE.to_string()),
    })
}

/// What the member lets the operator's identity do: a SelfSubjectRulesReview (in the
/// identity's namespace, or `default`) checked against the cluster-wide needs. `Ok` holds the
/// needs it lacks (empty when it lacks none, or when the member's authorizer cannot list its
/// rules completely: then the first refused request tells) and whether Secrets may be listed in
/// every namespace.
async fn review_access(
    client: &Client,
    access: Option<&crate::fleet::registry::Access>,
) -> std::result::Result<(Vec<String>, bool), kube::Error> {
    use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
    let namespace = access.map_or("default", |a| a.namespace.as_str());
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.to_string()),
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let done = api
        .create(&kube::api::PostParams::default(), &review)
        .await?;
    let Some(status) = done.status else {
        return Ok((vec![], false));
    };
    let rules: Vec<crate::access::Rule> = status
        .resource_rules
        .into_iter()
        .map(|r| crate::access::Rule {
            verbs: r.verbs,
            groups: r.api_groups.unwrap_or_default(),
            resources: r.resources.unwrap_or_default(),
            names: r.resource_names.unwrap_or_default(),
        })
        .collect();
    let secrets = crate::access::secrets_cluster_wide(&rules);
    if status.incomplete {
        return Ok((vec![], secrets));
    }
    let mut grant = crate::access::Grant::new();
    if let Some(a) = access {
        grant.namespace = a.namespace.clone();
        grant.service_account = a.service_account.clone();
    }
    Ok((
        crate::access::missing(&crate::access::needs(&grant), &rules),
        secrets,
    ))
}

/// The member's watches: the running ones while the connection is unchanged, new ones otherwise
/// (replacing the old ones stops them).
fn watches_for(
    ctx: &Context,
    name: &str,
    fingerprint: &str,
    watch_client: &Client,
    secrets_cluster_wide: bool,
) -> Option<std::sync::Arc<crate::fleet::watch::Watches>> {
    // Secrets are watched in every namespace only when the identity may (else per workload
    // namespace, as workloads are placed): another answer starts the watches anew
    let fingerprint = &format!("{fingerprint}/secrets-cluster-wide={secrets_cluster_wide}");
    if let Some(w) = ctx.fleet.get(name).and_then(|c| c.watches)
        && w.fingerprint == *fingerprint
    {
        return Some(w);
    }
    let memo = std::sync::Arc::new(crate::fleet::member::Memo::default());
    let mut tasks = crate::fleet::labelled::start(
        watch_client.clone(),
        name,
        &ctx.sinks(memo.clone()),
        secrets_cluster_wide,
    );
    tasks.extend(crate::fleet::topology::start(
        watch_client.clone(),
        ctx.topology.clone(),
        crate::fleet::topology::Triggers {
            cluster: name.to_string(),
            workloads: ctx.member_events.clone(),
            members: ctx.cluster_events.clone(),
        },
    ));
    let ready = std::sync::Arc::new(crate::fleet::ready::States::default());
    tasks.extend(crate::fleet::ready::start(
        watch_client.clone(),
        ctx.member_events.clone(),
        ready.clone(),
    ));
    tasks.extend(crate::fleet::prevention::watch(
        watch_client.clone(),
        name,
        ctx.cluster_events.clone(),
    ));
    // a new connection: what the member serves is asked again, and its caches are listed anew
    // (nothing the previous connection saw is trusted)
    ctx.discovery.forget(name);
    ctx.topology.remove_member(name);
    let watches = crate::fleet::watch::Watches::new(
        fingerprint.to_string(),
        watch_client.clone(),
        tasks,
        memo,
        ready,
    );
    Some(std::sync::Arc::new(watches))
}

/// CamelCase condition reason from a connection error category (`exec_plugin_refused` ->
/// `ExecPluginRefused`).
fn connection_reason(category: &str) -> &'static str {
    match category {
        "exec_plugin_refused" => "ExecPluginRefused",
        "insecure_tls_refused" => "InsecureTlsRefused",
        "no_current_context" | "missing_entry" | "parse" => "InvalidKubeconfig",
        _ => "InvalidKubeconfig",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::labelled::Labelled;

    #[test]
    fn the_inventory_counts_objects_volumes_countries_and_what_no_record_accounts_for() {
        let entry = |countries: &[&str], workload: Option<&str>, retained| Labelled {
            countries: countries.iter().map(|c| c.to_string()).collect(),
            workload: workload.map(str::to_string),
            retained,
            uid: None,
            print: 0,
        };
        let key = |k: &str, n: &str| (k.to_string(), "t".to_string(), n.to_string());
        let objects = std::collections::BTreeMap::from([
            (
                key("PersistentVolumeClaim", "data"),
                entry(&["AU", "NZ"], Some("t/gone"), true),
            ),
            (key("ConfigMap", "hand"), entry(&["JP"], None, false)),
            (
                key("Deployment", "placed"),
                entry(&["AU"], Some("t/live"), false),
            ),
        ]);
        let live: Arc<crate::api::ResidentWorkload> = Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
                "metadata": {"name": "live", "namespace": "t"},
                "spec": {"role": "Processing", "countries": ["AU"],
                         "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]},
                "status": {"placements": [{"cluster": "msk-1", "state": "Ready"}]}
            }))
            .unwrap(),
        );
        let inv = inventory("msk-1", &objects, &[live]);
        assert_eq!((inv.objects, inv.volumes, inv.retained), (3, 1, 1));
        assert_eq!(inv.countries, ["AU", "JP", "NZ"]);
        assert_eq!(inv.unrecorded_count, 2);
        let names: Vec<&str> = inv.unrecorded.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["hand", "data"]);
        assert_eq!(inv.unrecorded[1].countries, ["AU", "NZ"]);
        let by: Vec<(&str, i32, i32)> = inv
            .by_country
            .iter()
            .map(|c| (c.country.as_str(), c.objects, c.unrecorded))
            .collect();
        assert_eq!(by, [("AU", 2, 1), ("JP", 1, 1), ("NZ", 1, 1)]);
    }

    #[test]
    fn reasons_are_camel_case() {
        assert_eq!(
            connection_reason("exec_plugin_refused"),
            "ExecPluginRefused"
        );
        assert_eq!(
            connection_reason("insecure_tls_refused"),
            "InsecureTlsRefused"
        );
        assert_eq!(connection_reason("anything"), "InvalidKubeconfig");
    }
}
