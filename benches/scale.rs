//! Scale benchmark on the local fleet: 1,000 workloads across the three members, the operator
//! against a bound measured in the same run (needs the fleet: tests/testenv/fleet.sh up, then
//! eval "$(tests/testenv/fleet.sh env)"; run with `cargo bench --bench scale`).
//!
//! Every workload is a ConfigMap and a Deployment of one replica. Three phases are timed three
//! times, the bound before and after the operator:
//!
//! - the bound: the same objects created straight on the members with a plain client (one
//!   create each, as the operator makes a new object), 64 requests in flight: placed on zrh-1
//!   and zrh-2 until every Deployment is Available; relocated (created on msk-1 until
//!   Available, then deleted from zrh-1 and zrh-2 until nothing is left, ReplicaSets and Pods
//!   included); deleted from msk-1 until nothing is left;
//! - the operator: the same phases driven through ResidentWorkloads (applied 64 in flight) and
//!   one policy edit (CH/zurich -> RU/moscow), done when the members show the same state *and*
//!   every workload's status reports it. The operator probes members every 10 s (its default)
//!   and may relocate all workloads at once (`--max-relocations`, like the bound);
//! - the bound again, once the operator has stopped. Each phase's ratio is to the mean of the
//!   bound's two runs: a run leaves the members bigger (its Events, etcd's history) and the
//!   next one slower, so a bound run only before the operator's would favour the bound.
//!
//! `BENCH_ROUNDS` (default 1) repeats the operator's run (a new operator process each time)
//! and the bound after it: run r is compared with the bound's runs on either side, and each
//! phase's median ratio over the runs is printed too. On a shared host one run's ratio moves
//! by ten percent or more; a median of several is the figure to judge.
//!
//! Between the first bound run and the operator's, the management cluster's least work is timed with a plain client and no
//! operator running (the management floor: the writes any operator of this design needs there,
//! none of its Events), and each phase's ratio is printed against the bound plus that floor too:
//! on one machine the management cluster shares the cores with the members. A fleet started
//! with `RESIDENCY_FLEET_SPLIT_CPUS=1` runs as deployed instead: the management cluster, its own
//! etcd, the operator and this benchmark on the last CPU, the members and their etcd on the
//! others, so that a phase takes as long as the members need for it.
//!
//! This machine's speed varies by tens of percent from one minute to the next (a shared host),
//! and it runs every run: a phase's ratio mixes the operator's cost with how fast the machine
//! ran meanwhile. The members' controllers, schedulers and kwok do the same work in every run
//! (the same objects ask for the same ReplicaSets, Pods, bindings and status updates; their
//! writes are counted from the members' audit logs and must agree within 5%), on the same CPUs
//! as the members' API servers: their CPU seconds in the operator's run against the bound's
//! (the mean of the bound's runs on either side) say how much slower the members' CPU ran, and
//! each phase's ratio is printed at the bound's speed too.
//!
//! It prints each phase's time and its ratio to the bound, the operator's writes per workload
//! and cluster (from the audit logs, by user agent; the management cluster's by request, e.g.
//! `patch residentworkloads/status`), the objects it read from members, reconciles per workload, CPU
//! seconds, the CPU seconds of each fleet component (for the bound too: where the time went)
//! and peak resident memory, what one of the benchmark's own readiness checks (every 2 s, in
//! every phase of every run) costs the fleet, and its writes and CPU over an idle period with
//! every workload placed (`BENCH_IDLE_SECONDS`, default 600; in the first run only).
//! `BENCH_WORKLOADS` (default 1000) changes the count. The kwok nodes' pod capacity is raised to fit. Run it with
//! `RESIDENCY_OPERATOR_LOG=info` to log as deployed (the tests log at debug), on a fleet
//! started with `RESIDENCY_FLEET_WATCH_CACHE=1`: its API servers keep their watch cache, as
//! production API servers do (the tests' fleet reads everything from etcd, where every watch
//! costs an etcd watch of its own). The first line says which fleet it ran on.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::operator;
use common::{Fleet, apply_path};
use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use residency_operator::api::{ResidencyPolicy, ResidentWorkload};
use serde_json::{Value, json};

const DIRECT_NS: &str = "bench-scale-direct";
const OPERATOR_NS: &str = "bench-scale";
const FLOOR_NS: &str = "bench-scale-floor";
const MANAGER: &str = "residency-bench";
const IN_FLIGHT: usize = 64;
const PHASE_TIMEOUT: Duration = Duration::from_secs(1800);
const POLL: Duration = Duration::from_secs(2);
const ZURICH: [&str; 2] = ["zrh-1", "zrh-2"];
const MOSCOW: [&str; 1] = ["msk-1"];
const CLUSTERS: [&str; 4] = ["mgmt", "zrh-1", "zrh-2", "msk-1"];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn name(i: usize) -> String {
    format!("w-{i:04}")
}

fn config_map(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": format!("{}-config", name(i))}, "data": {"k": "v"}})
}

fn deployment(i: usize) -> Value {
    let n = name(i);
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": n},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": n}},
          "template": {"metadata": {"labels": {"app": n}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
              "securityContext": common::restricted()}]}}}})
}

fn workload(i: usize) -> Value {
    workload_in(i, OPERATOR_NS)
}

fn workload_in(i: usize, ns: &str) -> Value {
    json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name(i), "namespace": ns},
        "spec": {"role": "Processing", "countries": ["PW"],
                 "manifests": [config_map(i), deployment(i)]}})
}

/// Requests the operator sent that an audit log of `cluster` records as writes (rotated files
/// included).
#[derive(Clone, Debug, Default)]
struct Writes {
    /// Objects created, changed or deleted.
    stored: usize,
    /// Questions sent as creates that store nothing (dry runs, access and rules reviews).
    asked: usize,
    /// The stored ones by `verb resource[/subresource]`.
    by_request: BTreeMap<String, usize>,
}

/// Runs `f` on every line of `cluster`'s audit log (rotated files included).
fn audit_lines(dir: &str, cluster: &str, mut f: impl FnMut(&str)) {
    let Ok(entries) = std::fs::read_dir(format!("{dir}/logs")) else {
        panic!("no audit logs under {dir}/logs");
    };
    let prefix = format!("{cluster}-audit");
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            String::from_utf8_lossy(&bytes).lines().for_each(&mut f);
        }
    }
}

/// The writes the members' controllers, schedulers and kwok have made so far in namespace `ns`
/// (their ReplicaSets, Pods, bindings, status updates, Events), from the members' audit logs.
/// The same objects ask the same of them, whoever wrote the objects: with the same count in
/// the bound's run and the operator's, their CPU seconds measure how fast the members' CPU ran.
fn controller_writes(dir: &str, ns: &str) -> usize {
    CLUSTERS
        .iter()
        .filter(|c| **c != "mgmt")
        .map(|c| audit(dir, c, ns).1)
        .sum()
}

/// One pass over `cluster`'s audit log: the operator's writes, and the writes of the cluster's
/// controllers, schedulers and kwok in namespace `ns` (see [`controller_writes`]).
fn audit(dir: &str, cluster: &str, ns: &str) -> (Writes, usize) {
    let in_ns = format!("\"namespace\":\"{ns}\"");
    let controllers = ["kube-controller-manager/", "kube-scheduler/", "kwok/"]
        .map(|ua| format!("\"userAgent\":\"{ua}"));
    let mut out = Writes::default();
    let mut by_controllers = 0;
    audit_lines(dir, cluster, |line| {
        if line.contains("\"userAgent\":\"residency-operator/") {
            let v: Value = serde_json::from_str(line).unwrap_or_default();
            let uri = v["requestURI"].as_str().unwrap_or_default();
            let resource = v["objectRef"]["resource"].as_str().unwrap_or_default();
            if uri.contains("dryRun=") || resource.ends_with("reviews") {
                out.asked += 1;
            } else {
                out.stored += 1;
                let sub = v["objectRef"]["subresource"]
                    .as_str()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default();
                let verb = v["verb"].as_str().unwrap_or_default();
                *out.by_request
                    .entry(format!("{verb} {resource}{sub}"))
                    .or_default() += 1;
            }
        } else if line.contains(&in_ns)
            && line.contains("\"stage\":\"ResponseComplete\"")
            && controllers.iter().any(|ua| line.contains(ua.as_str()))
        {
            by_controllers += 1;
        }
    });
    (out, by_controllers)
}

/// The operator's counters at one moment.
#[derive(Clone, Debug, Default)]
struct Sample {
    writes: BTreeMap<String, Writes>,
    reconciles: BTreeMap<String, f64>,
    /// Objects the operator read from each member (its watches could not vouch for them).
    reads: BTreeMap<String, f64>,
    cpu_seconds: f64,
    fleet_cpu: BTreeMap<String, f64>,
    /// [`controller_writes`] in the operator's namespace (the members', not mgmt's).
    controller_writes: usize,
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3, so field n is rest[n - 3]; the kernel counts in 1/100 s
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of every fleet component so far, by component (`mgmt-kube-apiserver`, `etcd`,
/// `zrh-1-kwok`, ...), from the fleet's pid files.
fn fleet_cpu(dir: &str) -> BTreeMap<String, f64> {
    let Ok(entries) = std::fs::read_dir(format!("{dir}/pids")) else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((id, cpu_seconds(pid)))
        })
        .collect()
}

/// The fleet's CPU seconds between two readings, in all, on the members (etcd included), and by
/// role (mgmt's API server, its own etcd in the split layout, its controllers and scheduler, the
/// members' API servers, etcd, the members' controllers and schedulers, kwok).
fn fleet_cpu_line(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let by_role = by_role(before, after);
    let all: f64 = by_role.values().sum();
    let members: f64 = by_role
        .iter()
        .filter(|(r, _)| !r.starts_with("mgmt"))
        .map(|(_, v)| v)
        .sum();
    let parts: Vec<String> = by_role.iter().map(|(r, v)| format!("{r} {v:.1}")).collect();
    format!(
        "{all:.1} s, members and etcd {members:.1} s ({})",
        parts.join(", ")
    )
}

/// The members' controllers, schedulers and kwok: CPU seconds between two readings.
fn reference_cpu(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    let roles = by_role(before, after);
    ["member controllers", "kwok"]
        .iter()
        .map(|r| roles.get(r).copied().unwrap_or(0.0))
        .sum()
}

/// The fleet's CPU seconds between two readings, by role.
fn by_role(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<&'static str, f64> {
    let mut by_role: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (id, v) in after {
        let d = v - before.get(id).copied().unwrap_or(0.0);
        let role = if id == "mgmt-kube-apiserver" {
            "mgmt apiserver"
        } else if id == "mgmt-etcd" {
            "mgmt etcd"
        } else if id.starts_with("mgmt-") {
            "mgmt controllers"
        } else if id.ends_with("kube-apiserver") {
            "member apiservers"
        } else if id == "etcd" {
            "etcd"
        } else if id.ends_with("kwok") {
            "kwok"
        } else {
            "member controllers"
        };
        *by_role.entry(role).or_default() += d;
    }
    by_role
}

fn peak_rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// How much the counter of `key` grew from `before` to `after`.
fn since(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, key: &str) -> f64 {
    let at = |m: &BTreeMap<String, f64>| m.get(key).copied().unwrap_or(0.0);
    at(after) - at(before)
}

/// The counter `name` of an OpenMetrics text, summed by the value of its first label
/// (`residency_member_reads_total{cluster="zrh-1",reason="place"} 3` counts for `zrh-1`).
fn by_first_label(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for l in metrics.lines() {
        let Some(labels) = l.strip_prefix(name).and_then(|l| l.strip_prefix('{')) else {
            continue;
        };
        let Some((_, rest)) = labels.split_once("=\"") else {
            continue;
        };
        let Some((first, rest)) = rest.split_once('"') else {
            continue;
        };
        let value = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        *out.entry(first.to_string()).or_default() += value.unwrap_or(0.0);
    }
    out
}

async fn sample(dir: &str, op: &operator::Operator) -> Sample {
    let metrics = op.get("/metrics").await;
    let audits: Vec<(String, (Writes, usize))> = CLUSTERS
        .iter()
        .map(|c| (c.to_string(), audit(dir, c, OPERATOR_NS)))
        .collect();
    Sample {
        reads: by_first_label(&metrics, "residency_member_reads_total"),
        controller_writes: audits
            .iter()
            .filter(|(c, _)| c != "mgmt")
            .map(|(_, (_, n))| n)
            .sum(),
        writes: audits.into_iter().map(|(c, (w, _))| (c, w)).collect(),
        reconciles: by_first_label(&metrics, "residency_reconciliations_total"),
        cpu_seconds: cpu_seconds(op.pid),
        fleet_cpu: fleet_cpu(dir),
    }
}

fn report(phase: &str, n: usize, clusters: &[&str], before: &Sample, after: &Sample) {
    let writes = |c: &str| after.writes[c].stored - before.writes[c].stored;
    let asked = |c: &str| after.writes[c].asked - before.writes[c].asked;
    let questions: Vec<String> = CLUSTERS
        .iter()
        .map(|c| format!("{c} {}", asked(c)))
        .collect();
    println!(
        "scale: {phase}: operator dry runs and reviews (nothing stored) {}; {:.2} per workload and member on {}",
        questions.join(", "),
        clusters.iter().map(|c| asked(c)).sum::<usize>() as f64 / (n * clusters.len()) as f64,
        clusters.join("+")
    );
    let on = clusters.iter().map(|c| writes(c)).sum::<usize>();
    let all = CLUSTERS.iter().map(|c| writes(c)).sum::<usize>();
    let per: Vec<String> = CLUSTERS
        .iter()
        .map(|c| format!("{c} {}", writes(c)))
        .collect();
    println!(
        "scale: {phase}: operator writes stored {all} ({}); {:.2} per workload and member on {}",
        per.join(", "),
        on as f64 / (n * clusters.len()) as f64,
        clusters.join("+")
    );
    let read = |c: &str| since(&before.reads, &after.reads, c);
    println!(
        "scale: {phase}: operator reads of objects on members {:.0}; {:.2} per workload and member on {}",
        CLUSTERS.iter().map(|c| read(c)).sum::<f64>(),
        clusters.iter().map(|c| read(c)).sum::<f64>() / (n * clusters.len()) as f64,
        clusters.join("+")
    );
    println!(
        "scale: {phase}: operator writes on mgmt per workload: {}",
        mgmt_writes(before, after, n as f64)
    );
    let reconciles: Vec<String> = after
        .reconciles
        .keys()
        .map(|c| {
            let d = since(&before.reconciles, &after.reconciles, c);
            format!("{c} {d:.0} ({:.2} per workload)", d / n as f64)
        })
        .collect();
    println!(
        "scale: {phase}: reconciles {}; operator CPU {:.1} s",
        reconciles.join(", "),
        after.cpu_seconds - before.cpu_seconds
    );
    println!(
        "scale: {phase}: fleet CPU {}",
        fleet_cpu_line(&before.fleet_cpu, &after.fleet_cpu)
    );
}

/// Where the management cluster's writes went between two samples (status, finalizers, Events,
/// reports), by request, divided by `per`.
fn mgmt_writes(before: &Sample, after: &Sample, per: f64) -> String {
    let was = &before.writes["mgmt"].by_request;
    after.writes["mgmt"]
        .by_request
        .iter()
        .map(|(k, v)| (k, v - was.get(k).copied().unwrap_or(0)))
        .filter(|(_, d)| *d > 0)
        .map(|(k, d)| format!("{k} {:.2}", d as f64 / per))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Creates namespace `ns`, first waiting for one a previous run deleted to be gone.
async fn ensure_namespace(client: &Client, ns: &str) {
    common::namespace_not_terminating(client, ns, PHASE_TIMEOUT).await;
    operator::ensure_namespace(client, ns).await;
}

/// Raises every kwok node's pod capacity to `pods` (kwok keeps a node's declared capacity).
async fn raise_pod_capacity(client: &Client, pods: usize) {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes")
    {
        let n = node.metadata.name.clone().unwrap_or_default();
        let q = pods.to_string();
        let body = json!({"status": {"capacity": {"pods": q}, "allocatable": {"pods": q}}});
        nodes
            .patch_status(&n, &PatchParams::default(), &Patch::Merge(&body))
            .await
            .unwrap_or_else(|e| panic!("node {n}: {e}"));
    }
}

/// Runs `f` on every item, `IN_FLIGHT` at a time; panics on the first failure.
async fn in_parallel<T, F, Fut>(items: Vec<T>, f: F)
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let failures: Vec<String> = stream::iter(items)
        .map(f)
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} failed: {}",
        failures.len(),
        failures[0]
    );
}

async fn apply_direct(clients: &BTreeMap<String, Client>, on: &[&str], n: usize) {
    let jobs: Vec<(Client, usize, Value)> = on
        .iter()
        .flat_map(|c| {
            (0..n).flat_map(move |i| {
                [
                    (c.to_string(), i, config_map(i)),
                    (c.to_string(), i, deployment(i)),
                ]
            })
        })
        .map(|(c, i, v)| (clients[&c].clone(), i, v))
        .collect();
    in_parallel(jobs, |(client, _, body)| async move {
        let kind = body["kind"].as_str().unwrap_or_default().to_string();
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // a create, as the operator makes an object its watches do not show
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(MANAGER.to_string()),
        };
        let r = if kind == "ConfigMap" {
            let cm: ConfigMap = serde_json::from_value(body).map_err(|e| e.to_string())?;
            Api::<ConfigMap>::namespaced(client, DIRECT_NS)
                .create(&pp, &cm)
                .await
                .map(|_| ())
        } else {
            let d: Deployment = serde_json::from_value(body).map_err(|e| e.to_string())?;
            Api::<Deployment>::namespaced(client, DIRECT_NS)
                .create(&pp, &d)
                .await
                .map(|_| ())
        };
        r.map_err(|e| format!("{kind} {name}: {e}"))
    })
    .await;
}

async fn delete_direct(clients: &BTreeMap<String, Client>, on: &[&str], n: usize) {
    let jobs: Vec<(Client, String, bool)> = on
        .iter()
        .flat_map(|c| {
            (0..n).flat_map(move |i| [(c.to_string(), i, true), (c.to_string(), i, false)])
        })
        .map(|(c, i, cm)| (clients[&c].clone(), name(i), cm))
        .collect();
    in_parallel(jobs, |(client, name, cm)| async move {
        let dp = DeleteParams::default();
        let r = if cm {
            Api::<ConfigMap>::namespaced(client, DIRECT_NS)
                .delete(&format!("{name}-config"), &dp)
                .await
                .map(|_| ())
        } else {
            Api::<Deployment>::namespaced(client, DIRECT_NS)
                .delete(&name, &dp)
                .await
                .map(|_| ())
        };
        match r {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(format!("delete {name}: {e}")),
        }
    })
    .await;
}

/// What one member holds of the benchmark in `ns`.
struct Held {
    /// Deployments with their replica available.
    available: usize,
    /// The benchmark's ConfigMaps.
    config_maps: usize,
    /// Every object left: Deployments, ReplicaSets, Pods and the benchmark's ConfigMaps.
    objects: usize,
}

async fn member_state(client: &Client, ns: &str) -> Result<Held, String> {
    let lp = ListParams::default();
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .map_err(|e| e.to_string())?;
    let maps = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .map_err(|e| e.to_string())?;
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .map_err(|e| e.to_string())?;
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .map_err(|e| e.to_string())?;
    let available = deployments
        .items
        .iter()
        .filter(|d| {
            d.status
                .as_ref()
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                >= 1
        })
        .count();
    let config_maps = maps
        .items
        .iter()
        .filter(|m| m.metadata.name.as_deref().unwrap_or("").starts_with("w-"))
        .count();
    Ok(Held {
        available,
        config_maps,
        objects: deployments.items.len() + config_maps + sets.items.len() + pods.items.len(),
    })
}

/// Waits until every cluster in `ready` has `n` Available Deployments and `n` ConfigMaps, every
/// cluster in `empty` has nothing of the benchmark left (Deployments, ReplicaSets, Pods,
/// ConfigMaps: the member's garbage collection is part of the work), and `extra` holds.
async fn wait_members<F, Fut>(
    clients: &BTreeMap<String, Client>,
    ns: &str,
    n: usize,
    ready: &[&str],
    empty: &[&str],
    mut extra: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let mut missing = Vec::new();
        for c in ready {
            match member_state(&clients[*c], ns).await {
                Ok(h) if h.available == n && h.config_maps == n => {}
                Ok(h) => missing.push(format!(
                    "{c}: {} of {n} Deployments available, {} of {n} ConfigMaps",
                    h.available, h.config_maps
                )),
                Err(e) => missing.push(format!("{c}: {e}")),
            }
        }
        for c in empty {
            match member_state(&clients[*c], ns).await {
                Ok(h) if h.objects == 0 => {}
                Ok(h) => missing.push(format!("{c}: {} objects left", h.objects)),
                Err(e) => missing.push(format!("{c}: {e}")),
            }
        }
        if missing.is_empty() {
            match extra().await {
                Ok(()) => return,
                Err(e) => missing.push(e),
            }
        }
        assert!(
            start.elapsed() < PHASE_TIMEOUT,
            "gave up after {:?}: {}",
            PHASE_TIMEOUT,
            missing.join("; ")
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The bound's three phases, timed: their seconds and, for each, the members' controllers',
/// schedulers' and kwok's writes and CPU seconds (see [`controller_writes`]).
struct BoundRun {
    secs: [f64; 3],
    reference: [(usize, f64); 3],
}

/// Runs the bound's phases once in [`DIRECT_NS`] (`when`: which run, for the printed lines).
async fn bound_run(
    clients: &BTreeMap<String, Client>,
    dir: &str,
    n: usize,
    when: &str,
) -> BoundRun {
    let none = || async { Ok(()) };
    let w0 = controller_writes(dir, DIRECT_NS);
    let c0 = fleet_cpu(dir);
    let t = Instant::now();
    apply_direct(clients, &ZURICH, n).await;
    wait_members(clients, DIRECT_NS, n, &ZURICH, &[], none).await;
    let place = t.elapsed().as_secs_f64();
    let c1 = fleet_cpu(dir);
    let w1 = controller_writes(dir, DIRECT_NS);
    let t = Instant::now();
    apply_direct(clients, &MOSCOW, n).await;
    wait_members(clients, DIRECT_NS, n, &MOSCOW, &[], none).await;
    delete_direct(clients, &ZURICH, n).await;
    wait_members(clients, DIRECT_NS, n, &MOSCOW, &ZURICH, none).await;
    let relocate = t.elapsed().as_secs_f64();
    let c2 = fleet_cpu(dir);
    let w2 = controller_writes(dir, DIRECT_NS);
    let t = Instant::now();
    delete_direct(clients, &MOSCOW, n).await;
    wait_members(clients, DIRECT_NS, n, &[], &MOSCOW, none).await;
    let delete = t.elapsed().as_secs_f64();
    let c3 = fleet_cpu(dir);
    let w3 = controller_writes(dir, DIRECT_NS);
    println!(
        "scale: bound {when} (plain client, {IN_FLIGHT} in flight): place {place:.1} s, relocate {relocate:.1} s, delete {delete:.1} s"
    );
    for (phase, (a, b)) in PHASES.iter().zip([(&c0, &c1), (&c1, &c2), (&c2, &c3)]) {
        println!(
            "scale: bound {when}: {phase}: fleet CPU {}",
            fleet_cpu_line(a, b)
        );
    }
    BoundRun {
        secs: [place, relocate, delete],
        reference: [
            (w1 - w0, reference_cpu(&c0, &c1)),
            (w2 - w1, reference_cpu(&c1, &c2)),
            (w3 - w2, reference_cpu(&c2, &c3)),
        ],
    }
}

/// Starts an operator as deployed, a new process for each run (`run`): members probed every
/// 10 s (the default), not every 2 s as in the tests, and allowed to relocate every workload at
/// once, as the bound does (the default, 32, bounds what one policy edit sets in motion).
async fn start_operator(fleet: &Fleet, n: usize, run: usize) -> operator::Operator {
    let slots = n.to_string();
    let name = format!("operator-scale-{}-{run}", std::process::id());
    operator::Operator::launch(
        fleet,
        &name,
        &["--probe-interval", "10", "--max-relocations", &slots],
    )
    .await
}

/// One run of the operator's three phases: their seconds, each phase's samples at its start
/// and end, and the operator's peak resident memory and CPU seconds.
struct OperatorRun {
    secs: [f64; 3],
    samples: [(Sample, Sample); 3],
    peak: f64,
    cpu: f64,
}

/// Runs the operator's phases once with a new operator process (`run`: which run), stopped at
/// the end; `idle`: how long to leave it idle with every workload placed, measured.
async fn operator_run(
    fleet: &Fleet,
    mgmt: &Client,
    clients: &BTreeMap<String, Client>,
    dir: &str,
    n: usize,
    idle: Option<Duration>,
    run: usize,
) -> OperatorRun {
    let op = start_operator(fleet, n, run).await;
    apply_path(mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    operator::ensure_namespace(mgmt, OPERATOR_NS).await;
    let policies: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    policy(&policies, "CH", "zurich").await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let s0 = sample(dir, &op).await;
    let t = Instant::now();
    in_parallel((0..n).collect(), |i| {
        let api = workloads.clone();
        async move {
            api.patch(
                &name(i),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&workload(i)),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("workload {}: {e}", name(i)))
        }
    })
    .await;
    wait_members(clients, OPERATOR_NS, n, &ZURICH, &[], || {
        common::workloads_ready_on(&workloads, n, &ZURICH)
    })
    .await;
    let op_place = t.elapsed().as_secs_f64();
    let s1 = sample(dir, &op).await;
    report("place", n, &ZURICH, &s0, &s1);
    println!(
        "scale: place: operator peak resident memory {:.1} MiB",
        peak_rss_mib(op.pid)
    );

    tokio::time::sleep(Duration::from_secs(10)).await; // let in-flight work settle
    // what the benchmark's own readiness checks cost the fleet (every POLL, in every phase of
    // both runs): work that grows with a phase's length, not with the work done in it
    let p0 = fleet_cpu(dir);
    let t = Instant::now();
    const POLLS: u32 = 10;
    for _ in 0..POLLS {
        for c in ZURICH {
            member_state(&clients[c], OPERATOR_NS)
                .await
                .expect("member state");
        }
    }
    let poll_cpu: f64 = fleet_cpu(dir).values().sum::<f64>() - p0.values().sum::<f64>();
    println!(
        "scale: one readiness check of two members with {n} workloads: {:.2} s, fleet CPU {:.2} s ({:.2} cores at one every {} s)",
        t.elapsed().as_secs_f64() / f64::from(POLLS),
        poll_cpu / f64::from(POLLS),
        poll_cpu / f64::from(POLLS) / POLL.as_secs_f64(),
        POLL.as_secs()
    );
    let i0 = sample(dir, &op).await;
    let i1 = match idle {
        None => i0,
        Some(idle) => {
            tokio::time::sleep(idle).await;
            let i1 = sample(dir, &op).await;
            let idle_writes: usize = CLUSTERS
                .iter()
                .map(|c| i1.writes[*c].stored - i0.writes[*c].stored)
                .sum();
            let idle_asked: usize = CLUSTERS
                .iter()
                .map(|c| i1.writes[*c].asked - i0.writes[*c].asked)
                .sum();
            // what the CPU went to: reconciles (the periodic resync among them) and the probes
            let idle_reconciles: Vec<String> = i1
                .reconciles
                .keys()
                .map(|c| format!("{c} {:.0}", since(&i0.reconciles, &i1.reconciles, c)))
                .collect();
            println!(
                "scale: idle {} s with {n} workloads placed: {idle_writes} operator writes stored ({idle_asked} reviews and dry runs; on mgmt: {}); reconciles {}; CPU {:.2} s ({:.2}% of a core); fleet CPU {}",
                idle.as_secs(),
                mgmt_writes(&i0, &i1, 1.0),
                idle_reconciles.join(", "),
                i1.cpu_seconds - i0.cpu_seconds,
                100.0 * (i1.cpu_seconds - i0.cpu_seconds) / idle.as_secs_f64(),
                fleet_cpu_line(&i0.fleet_cpu, &i1.fleet_cpu)
            );
            i1
        }
    };

    let t = Instant::now();
    policy(&policies, "RU", "moscow").await;
    wait_members(clients, OPERATOR_NS, n, &MOSCOW, &ZURICH, || {
        common::workloads_ready_on(&workloads, n, &MOSCOW)
    })
    .await;
    let op_relocate = t.elapsed().as_secs_f64();
    let s2 = sample(dir, &op).await;
    report("relocate", n, &["zrh-1", "zrh-2", "msk-1"], &i1, &s2);

    let t = Instant::now();
    in_parallel((0..n).collect(), |i| {
        let api = workloads.clone();
        async move {
            match api.delete(&name(i), &DeleteParams::default()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(format!("delete {}: {e}", name(i))),
            }
        }
    })
    .await;
    wait_members(clients, OPERATOR_NS, n, &[], &MOSCOW, || async {
        let left = workloads
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} workloads not yet finalized"))
        }
    })
    .await;
    let op_delete = t.elapsed().as_secs_f64();
    let s3 = sample(dir, &op).await;
    report("delete", n, &MOSCOW, &s2, &s3);

    let peak = peak_rss_mib(op.pid);
    let cpu = s3.cpu_seconds;
    op.stop().await;
    OperatorRun {
        secs: [op_place, op_relocate, op_delete],
        samples: [(s0, s1), (i1, s2.clone()), (s2, s3)],
        peak,
        cpu,
    }
}

async fn policy(api: &Api<ResidencyPolicy>, country: &str, region: &str) {
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": "bench-scale"},
        "spec": {"countries": ["PW"], "allowedLocations": [{"country": country, "region": region}]}});
    api.patch(
        "bench-scale",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("policy");
}

/// A status the size of the operator's for a workload Ready on `targets` (conditions, copies
/// with their objects and location evidence, the clusters' verdicts).
fn record(i: usize, targets: &[&str]) -> Value {
    let n = name(i);
    let at = "2026-01-01T00:00:00Z";
    let condition = |t: &str, status: &str, reason: &str, message: &str| {
        json!({"type": t, "status": status, "reason": reason, "message": message,
            "observedGeneration": 1, "lastTransitionTime": at})
    };
    let copies: Vec<Value> = targets
        .iter()
        .map(|c| {
            json!({"cluster": c, "state": "Ready", "message": "", "evidence": {"nodeRegions": ["eu-central-2"]},
                "objects": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": format!("{n}-config"), "ready": true, "message": "exists"},
                    {"apiVersion": "apps/v1", "kind": "Deployment", "name": n, "ready": true, "message": "1 of 1 replicas available"}]})
        })
        .collect();
    let verdicts: Vec<Value> = ["msk-1", "zrh-1", "zrh-2"]
        .iter()
        .map(|c| {
            let target = targets.contains(c);
            json!({"name": c, "verdict": if target { "Target" } else { "Excluded" },
                "reason": if target { "allowed by bench-scale" } else { "not allowed by bench-scale" }})
        })
        .collect();
    json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload", "status": {
        "observedGeneration": 1,
        "conditions": [
            condition("Ready", "True", "Placed", &format!("Ready on every target: {}.", targets.join(", "))),
            condition("Progressing", "False", "Placed", "Nothing in progress."),
            condition("Compliant", "True", "OnAllowedClusters", "Every copy is on a cluster the policies allow."),
            condition("Drifted", "False", "NoDrift", "Every copy matches what was applied.")],
        "targets": targets, "placements": copies, "clusters": verdicts,
        "governingPolicies": ["bench-scale"]}})
}

/// The management cluster's least work for `n` workloads, with a plain client and no operator:
/// the writes any operator of this design needs, none of its Events. Placing: the workload
/// created, its finalizer added, one status write (the record of where its copies are);
/// relocating: one status write; deleting: the deletion and the finalizer removed. Returns the
/// three phases' seconds.
async fn management_floor(mgmt: &Client, n: usize) -> [f64; 3] {
    ensure_namespace(mgmt, FLOOR_NS).await;
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), FLOOR_NS);
    let status = |i: usize, targets: &'static [&'static str]| {
        let api = api.clone();
        async move {
            api.patch_status(
                &name(i),
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(record(i, targets)),
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("status of {}: {e}", name(i)))
        }
    };
    let t = Instant::now();
    in_parallel((0..n).collect(), |i| {
        let api = api.clone();
        async move {
            let pp = PatchParams::apply(MANAGER).force();
            api.patch(&name(i), &pp, &Patch::Apply(&workload_in(i, FLOOR_NS)))
                .await
                .map_err(|e| format!("workload {}: {e}", name(i)))?;
            let finalizer =
                json!({"metadata": {"finalizers": [residency_operator::api::FINALIZER]}});
            api.patch(&name(i), &PatchParams::default(), &Patch::Merge(&finalizer))
                .await
                .map_err(|e| format!("finalizer of {}: {e}", name(i)))?;
            status(i, &ZURICH).await
        }
    })
    .await;
    let place = t.elapsed().as_secs_f64();
    let t = Instant::now();
    in_parallel((0..n).collect(), |i| status(i, &MOSCOW)).await;
    let relocate = t.elapsed().as_secs_f64();
    let t = Instant::now();
    in_parallel((0..n).collect(), |i| {
        let api = api.clone();
        async move {
            api.delete(&name(i), &DeleteParams::default())
                .await
                .map_err(|e| format!("delete {}: {e}", name(i)))?;
            let none = json!({"metadata": {"finalizers": null}});
            api.patch(&name(i), &PatchParams::default(), &Patch::Merge(&none))
                .await
                .map(|_| ())
                .map_err(|e| format!("finalizer of {}: {e}", name(i)))
        }
    })
    .await;
    let delete = t.elapsed().as_secs_f64();
    let left = api
        .list_metadata(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .unwrap_or(usize::MAX);
    assert_eq!(left, 0, "the floor's workloads are all gone");
    [place, relocate, delete]
}

/// On a fleet started with its CPUs split (`RESIDENCY_FLEET_SPLIT_CPUS=1`), moves this process
/// (every thread, and so the operator it starts) to the management cluster's CPUs, which it
/// returns.
fn pin_to_management_cpus() -> Option<String> {
    let cpus = std::env::var("RESIDENCY_FLEET_MGMT_CPUS")
        .ok()
        .filter(|c| !c.is_empty())?;
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("taskset");
    assert!(status.success(), "taskset -a -p -c {cpus}: {status}");
    Some(cpus)
}

/// The three phases, in the order they run.
const PHASES: [&str; 3] = ["place", "relocate", "delete"];

struct Phase {
    name: &'static str,
    /// The bound's seconds before the operator's run and after it.
    bounds: [f64; 2],
    floor: f64,
    operator: f64,
    limit: f64,
    /// The members' controllers, schedulers and kwok in the bound's runs (their mean) and the
    /// operator's: their writes and CPU seconds.
    reference: [(usize, f64); 2],
}

/// The median of `values` (the mean of the middle two of an even count).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Phase {
    /// The bound: the mean of its run before the operator's and after it (a linear drift of the
    /// machine's or the fleet's speed over the benchmark cancels out).
    fn bound(&self) -> f64 {
        (self.bounds[0] + self.bounds[1]) / 2.0
    }

    /// How many times slower the members' CPU ran in the operator's run than in the bound's,
    /// from the work that was the same in both: `None` when it was not (writes more than 5%
    /// apart: some of it happens after a phase ends, and counts in the next).
    fn slower(&self) -> Option<f64> {
        let [(wb, cb), (wo, co)] = self.reference;
        let same = wb > 0 && wb.abs_diff(wo) as f64 <= 0.05 * wb as f64;
        (same && cb > 0.0).then(|| co / cb)
    }

    /// Prints the phase of operator run `run` against the bound; returns its ratio and, when
    /// the members' speed is comparable, its ratio at the bound's speed.
    fn print(&self, run: usize) -> (f64, Option<f64>) {
        let bound = self.bound();
        let ratio = self.operator / bound;
        println!(
            "scale: run {}: {}: operator {:.1} s, bound {bound:.1} s (before {:.1}, after {:.1}), ratio {ratio:.2} (target <= {}){}; against the bound plus the management floor ({:.1} s): {:.2}",
            run + 1,
            self.name,
            self.operator,
            self.bounds[0],
            self.bounds[1],
            self.limit,
            if ratio <= self.limit { "" } else { " OVER" },
            bound + self.floor,
            self.operator / (bound + self.floor)
        );
        let [(wb, cb), (wo, co)] = self.reference;
        let slower = self.slower();
        println!(
            "scale: run {}: {}: the members' controllers, schedulers and kwok wrote {wb} times for the bound (mean of its runs) and {wo} for the operator, in {cb:.1} and {co:.1} CPU-s: {}",
            run + 1,
            self.name,
            match slower {
                Some(slower) => format!(
                    "the same work, so the members' CPU ran {slower:.2} times as slow in the operator's run; at the bound's speed the ratio is {:.2} (target <= {})",
                    ratio / slower,
                    self.limit
                ),
                None => "not the same work (some of it comes after a phase ends and counts in the next): no speed to compare".into(),
            }
        );
        (ratio, slower.map(|s| ratio / s))
    }
}

#[tokio::main]
async fn main() {
    let dir = std::env::var("RESIDENCY_FLEET_DIR").expect("start the fleet and eval its env first");
    let n = env_number("BENCH_WORKLOADS", 1000) as usize;
    let idle = Duration::from_secs(env_number("BENCH_IDLE_SECONDS", 600));
    let fleet = Fleet::from_env();
    let mut clients = BTreeMap::new();
    for c in ZURICH.iter().chain(&MOSCOW) {
        let client = fleet.client(c).await;
        raise_pod_capacity(&client, n + 100).await;
        clients.insert(c.to_string(), client);
    }
    let cached = std::env::var("RESIDENCY_FLEET_WATCH_CACHE").is_ok_and(|v| v == "1");
    let split = pin_to_management_cpus();
    println!(
        "scale: {n} workloads (ConfigMap + Deployment) on zrh-1, zrh-2 and msk-1; API servers {}; {}",
        if cached {
            "with their watch cache (as in production)"
        } else {
            "WITHOUT their watch cache (every watch an etcd watch; start the fleet with RESIDENCY_FLEET_WATCH_CACHE=1)"
        },
        match &split {
            Some(cpus) => format!(
                "as deployed: the management cluster with its own etcd, the operator and this client on CPU {cpus}, the members and their etcd on the others"
            ),
            None => "every component shares every CPU (RESIDENCY_FLEET_SPLIT_CPUS=1 runs them as deployed)".into(),
        }
    );

    // the bound: a plain client, IN_FLIGHT requests at a time; run again once the operator is
    // gone (the fleet a run leaves behind, its Events and etcd history, slows the next one)
    for c in clients.values() {
        ensure_namespace(c, DIRECT_NS).await;
    }
    let before = bound_run(&clients, &dir, n, "before the operator").await;

    // the management cluster's least work, before the operator runs (it would take the workloads)
    let mgmt = fleet.mgmt_client().await;
    operator::install_crds(&mgmt).await;
    let f0 = fleet_cpu(&dir);
    let [floor_place, floor_relocate, floor_delete] = management_floor(&mgmt, n).await;
    println!(
        "scale: management floor (plain client, no operator; create + finalizer + one status write, one status write, delete + finalizer removal): place {floor_place:.1} s, relocate {floor_relocate:.1} s, delete {floor_delete:.1} s; fleet CPU {}",
        fleet_cpu_line(&f0, &fleet_cpu(&dir))
    );

    // the operator, and the bound again after each of its runs
    operator::member_secrets(&fleet, &mgmt).await;
    let rounds = env_number("BENCH_ROUNDS", 1).max(1) as usize;
    let mut bounds = vec![before];
    let mut runs = Vec::new();
    for run in 0..rounds {
        let idle = (run == 0).then_some(idle);
        runs.push(operator_run(&fleet, &mgmt, &clients, &dir, n, idle, run).await);
        let when = format!("after the operator's run {}", run + 1);
        bounds.push(bound_run(&clients, &dir, n, &when).await);
    }
    let policies: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    let limits = [1.1, 1.3, 1.1];
    let floors = [floor_place, floor_relocate, floor_delete];
    let mut by_phase: [Vec<(f64, Option<f64>)>; 3] = Default::default();
    for (run, op) in runs.iter().enumerate() {
        let (before, after) = (&bounds[run], &bounds[run + 1]);
        for (i, name) in PHASES.into_iter().enumerate() {
            let ((wb, cb), (wa, ca)) = (before.reference[i], after.reference[i]);
            let (s, e) = &op.samples[i];
            let p = Phase {
                name,
                bounds: [before.secs[i], after.secs[i]],
                floor: floors[i],
                operator: op.secs[i],
                limit: limits[i],
                reference: [
                    ((wb + wa) / 2, (cb + ca) / 2.0),
                    (
                        e.controller_writes - s.controller_writes,
                        reference_cpu(&s.fleet_cpu, &e.fleet_cpu),
                    ),
                ],
            };
            by_phase[i].push(p.print(run));
        }
        println!(
            "scale: run {}: operator peak resident memory {:.1} MiB (target <= 100); CPU {:.1} s in all",
            run + 1,
            op.peak,
            op.cpu
        );
    }
    if rounds > 1 {
        for (i, name) in PHASES.into_iter().enumerate() {
            let ratios: Vec<f64> = by_phase[i].iter().map(|(r, _)| *r).collect();
            let at_speed: Vec<f64> = by_phase[i].iter().filter_map(|(_, s)| *s).collect();
            let mid = median(&ratios);
            println!(
                "scale: {name}: median ratio of {rounds} runs {mid:.2} (target <= {}){} (runs: {}); at the bound's speed {}",
                limits[i],
                if mid <= limits[i] { "" } else { " OVER" },
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                if at_speed.is_empty() {
                    "not comparable".to_string()
                } else {
                    format!("{:.2}", self::median(&at_speed))
                }
            );
        }
    }
    let _ = policies
        .delete("bench-scale", &DeleteParams::default())
        .await;
    for c in clients.values() {
        let _ = Api::<Namespace>::all(c.clone())
            .delete(DIRECT_NS, &DeleteParams::default())
            .await;
    }
    let _ = Api::<Namespace>::all(mgmt.clone())
        .delete(FLOOR_NS, &DeleteParams::default())
        .await;
}
