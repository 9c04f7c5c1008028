//! Inventory benchmark on the local fleet (needs it running: tests/testenv/fleet.sh up, then
//! eval "$(tests/testenv/fleet.sh env)"; run with `cargo bench --bench inventory`).
//!
//! Puts `BENCH_OBJECTS` (default 1,000) ConfigMaps labelled with a country on each member (every
//! third one also wearing the operator's labels for a workload that does not exist), then starts
//! a fresh operator and measures:
//! - the time until every member's inventory (MemberCluster `status.inventory`) counts them,
//!   against the bound: a plain client listing the metadata of the same kinds on every member,
//!   all lists in parallel;
//! - the operator's resident memory with them against a fresh operator before they existed, per
//!   object, and its ratio to the bytes of metadata the members return for them;
//! - every write of the operator to any API server while idle for `BENCH_IDLE_SECONDS` (default
//!   60; the acceptance figure is 600): its Lease renewals on the management cluster, and
//!   anything else, which must be nothing (the benchmark fails otherwise).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::operator;
use common::{Fleet, apply_path, eventually};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use residency_operator::api::MemberCluster;
use serde_json::json;

const NS: &str = "bench-inventory";
const MANAGER: &str = "residency-bench";
const MEMBERS: [&str; 3] = ["zrh-1", "zrh-2", "msk-1"];
/// The country the benchmark's objects hold (no other test uses it while this runs).
const COUNTRY: &str = "PW";

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Objects holding the benchmark's country (PW) each member's inventory counts (MemberCluster
/// status; -1 while it has no inventory).
async fn inventory_counts(mgmt: &Client) -> Vec<i32> {
    let api: Api<MemberCluster> = Api::all(mgmt.clone());
    let mut out = Vec::new();
    for m in MEMBERS {
        let n = api
            .get(m)
            .await
            .ok()
            .and_then(|mc| mc.status)
            .and_then(|s| s.inventory)
            .map(|i| {
                i.by_country
                    .iter()
                    .find(|c| c.country == COUNTRY)
                    .map_or(0, |c| c.objects)
            })
            .unwrap_or(-1);
        out.push(n);
    }
    out
}

async fn wait_counts(mgmt: &Client, want: &[i32], what: &str) -> Duration {
    let start = Instant::now();
    eventually(what, Duration::from_secs(300), || async {
        let have = inventory_counts(mgmt).await;
        if have.iter().zip(want).all(|(h, w)| h >= w) {
            Ok(())
        } else {
            Err(format!("{have:?} of {want:?}"))
        }
    })
    .await;
    start.elapsed()
}

/// A plain client doing the same listing as the inventory: the metadata of every watched kind
/// (the placeable kinds and PersistentVolumes) on every member, all lists at once. Returns the
/// labelled objects seen and the bytes of their metadata.
async fn plain_listing(members: &[Client]) -> (usize, usize) {
    use kube::core::PartialObjectMeta;
    let mut kinds: Vec<ApiResource> = residency_operator::kinds::PLACEABLE
        .iter()
        .filter_map(|k| residency_operator::desired::api_resource(&k.api_version(), k.kind))
        .collect();
    kinds.push(ApiResource::erase::<
        k8s_openapi::api::core::v1::PersistentVolume,
    >(&()));
    let lists = members.iter().flat_map(|c| {
        kinds.iter().map(move |ar| {
            let api: Api<PartialObjectMeta<DynamicObject>> = Api::all_with(c.clone(), ar);
            async move { api.list_metadata(&ListParams::default()).await }
        })
    });
    let results = futures::future::join_all(lists).await;
    let mut objects = 0;
    let mut bytes = 0;
    for list in results {
        let list = list.expect("list");
        for o in list.items {
            if o.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.keys().any(|k| k.starts_with("country.residency.io/")))
            {
                objects += 1;
                bytes += serde_json::to_vec(&o.metadata)
                    .map(|b| b.len())
                    .unwrap_or(0);
            }
        }
    }
    (objects, bytes)
}

fn operator_writes(dir: &str) -> Vec<(String, String)> {
    ["mgmt", "zrh-1", "zrh-2", "msk-1"]
        .iter()
        .flat_map(|c| {
            let log =
                std::fs::read_to_string(format!("{dir}/logs/{c}-audit.log")).unwrap_or_default();
            log.lines()
                .filter(|l| l.contains("\"userAgent\":\"residency-operator/"))
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .map(|e| {
                    (
                        c.to_string(),
                        format!(
                            "{} {} {}/{}",
                            e["verb"].as_str().unwrap_or_default(),
                            e["objectRef"]["resource"].as_str().unwrap_or_default(),
                            e["objectRef"]["namespace"].as_str().unwrap_or_default(),
                            e["objectRef"]["name"].as_str().unwrap_or_default()
                        ),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn settle_and_measure(pid: u32) -> u64 {
    tokio::time::sleep(Duration::from_secs(10)).await;
    rss_kb(pid)
}

#[tokio::main]
async fn main() {
    let dir = std::env::var("RESIDENCY_FLEET_DIR").expect("start the fleet and eval its env first");
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env_num("BENCH_OBJECTS", 1000) as usize;
    let idle = Duration::from_secs(env_num("BENCH_IDLE_SECONDS", 60));
    let fleet = Fleet::from_env();
    let mgmt = fleet.mgmt_client().await;
    operator::install_crds(&mgmt).await;
    operator::member_secrets(&fleet, &mgmt).await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    let mut members = Vec::new();
    for m in MEMBERS {
        members.push(fleet.member(m).await);
    }

    // a run that failed may have left its objects
    for c in &members {
        let api = Api::<Namespace>::all(c.clone());
        let _ = api.delete(NS, &DeleteParams::default()).await;
        eventually(
            "the previous run's namespace gone",
            Duration::from_secs(120),
            || async {
                match api.get_opt(NS).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{:?}", other.map(|n| n.is_some()))),
                }
            },
        )
        .await;
    }

    // 1. a fresh operator before the objects exist: its memory with the members' inventory as is
    let (child, _, _) = operator::spawn(&fleet, "bench-inventory-before", &[]);
    let pid = child.id().unwrap_or_default();
    common::clusters_verified(&mgmt, &MEMBERS).await;
    eventually(
        &format!("inventories without {COUNTRY} data"),
        Duration::from_secs(120),
        || async {
            match inventory_counts(&mgmt).await {
                c if c == [0, 0, 0] => Ok(()),
                c => Err(format!("{c:?}")),
            }
        },
    )
    .await;
    let rss_before = settle_and_measure(pid).await;
    drop(child);

    // 2. n labelled ConfigMaps on each member
    let created = Instant::now();
    for c in &members {
        operator::ensure_namespace(c, NS).await;
    }
    let labels = |i: usize| {
        let mut l =
            json!({format!("country.residency.io/{COUNTRY}"): "true", "bench": "inventory"});
        if i.is_multiple_of(3) {
            l["residency.io/workload"] = json!("nobody");
            l["residency.io/workload-namespace"] = json!(NS);
        }
        l
    };
    let writes = members.iter().flat_map(|c| {
        (0..n).map(move |i| {
            let api: Api<ConfigMap> = Api::namespaced(c.clone(), NS);
            let body = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("copy-{i:04}"), "labels": labels(i)},
                "data": {"k": "v"}});
            async move {
                api.patch(
                    &format!("copy-{i:04}"),
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&body),
                )
                .await
                .map(|_| ())
            }
        })
    });
    stream::iter(writes)
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("create the labelled objects");
    println!(
        "inventory: created {n} labelled ConfigMaps on each of {} members in {:.1} s",
        MEMBERS.len(),
        created.elapsed().as_secs_f64()
    );

    // 3. the bound: a plain client listing what the inventory lists, in parallel
    let bound = Instant::now();
    let (seen, bytes) = plain_listing(&members).await;
    let bound = bound.elapsed();
    assert!(seen >= n * MEMBERS.len(), "the plain listing sees {seen}");
    println!(
        "inventory: bound: a plain client lists every watched kind on {} members in parallel in {:.3} s ({seen} labelled objects, {:.1} KiB of metadata)",
        MEMBERS.len(),
        bound.as_secs_f64(),
        bytes as f64 / 1024.0
    );

    // 4. a fresh operator: time until every inventory counts them, and its memory
    let started = Instant::now();
    let (child, _, log) = operator::spawn(&fleet, "bench-inventory-after", &[]);
    let pid = child.id().unwrap_or_default();
    let want = vec![n as i32; MEMBERS.len()];
    wait_counts(&mgmt, &want, "every inventory counts the objects").await;
    let took = started.elapsed();
    println!(
        "inventory: operator start -> every member's inventory counts {n} more objects: {:.2} s ({:.1} x the plain listing; the probe interval is 2 s)",
        took.as_secs_f64(),
        took.as_secs_f64() / bound.as_secs_f64().max(1e-3)
    );
    let rss_after = settle_and_measure(pid).await;
    let added = rss_after.saturating_sub(rss_before) * 1024;
    let total = n * MEMBERS.len();
    println!(
        "inventory: operator resident memory {:.1} MiB with {total} more labelled objects, {:.1} MiB before: {:.0} bytes per object, {:.2} x their metadata ({:.0} bytes per object)",
        rss_after as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        added as f64 / total as f64,
        added as f64 / bytes.max(1) as f64,
        bytes as f64 / seen.max(1) as f64
    );

    // 5. idle: nothing is written, apart from the leader's Lease renewals
    tokio::time::sleep(Duration::from_secs(10)).await;
    let before = operator_writes(&dir).len();
    tokio::time::sleep(idle).await;
    let all = operator_writes(&dir);
    let during = &all[before.min(all.len())..];
    let (leases, other): (Vec<_>, Vec<_>) = during
        .iter()
        .partition(|(c, w)| c == "mgmt" && w.contains(" leases "));
    println!(
        "inventory: idle {} s with {total} labelled objects: {} Lease renewals on mgmt, {} other operator writes",
        idle.as_secs(),
        leases.len(),
        other.len()
    );
    let operator_log = std::fs::read_to_string(&log).unwrap_or_default();
    drop(child);

    // cleanup
    for c in &members {
        let _ = Api::<Namespace>::all(c.clone())
            .delete(NS, &DeleteParams::default())
            .await;
    }
    assert!(
        other.is_empty(),
        "the operator wrote while idle: {other:?}\n{}",
        operator_log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
