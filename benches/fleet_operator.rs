//! Operator benchmark on the local fleet (needs it running: tests/testenv/fleet.sh up, then
//! eval "$(tests/testenv/fleet.sh env)"; run with `cargo bench --bench fleet_operator`).
//!
//! Places 50 workloads on msk-1, edits their policy to CH/zurich and measures the time until
//! all 50 are Ready on zrh-1 and zrh-2 and gone from msk-1; then counts the operator's writes
//! to every API server (from their audit logs, by user agent) during an idle period (default
//! 120 s, `BENCH_IDLE_SECONDS`), and reports the operator's resident memory.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::operator::{self, delete_and_wait};
use common::{Fleet, apply_path, eventually};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use residency_operator::api::{ResidencyPolicy, ResidentWorkload};
use serde_json::json;

const NS: &str = "bench-placement";
const N: usize = 50;
const MANAGER: &str = "residency-bench";

fn operator_writes(dir: &str) -> Vec<(String, usize)> {
    ["mgmt", "zrh-1", "zrh-2", "msk-1"]
        .iter()
        .map(|c| {
            let log =
                std::fs::read_to_string(format!("{dir}/logs/{c}-audit.log")).unwrap_or_default();
            let n = log
                .lines()
                .filter(|l| l.contains("\"userAgent\":\"residency-operator/"))
                .count();
            (c.to_string(), n)
        })
        .collect()
}

fn rss(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

async fn policy(api: &Api<ResidencyPolicy>, country: &str, region: &str) {
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": "bench-palau"},
        "spec": {"countries": ["PW"], "allowedLocations": [{"country": country, "region": region}]}});
    api.patch(
        "bench-palau",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("policy");
}

#[tokio::main]
async fn main() {
    let dir = std::env::var("RESIDENCY_FLEET_DIR").expect("start the fleet and eval its env first");
    let idle = Duration::from_secs(
        std::env::var("BENCH_IDLE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let fleet = Fleet::from_env();
    let op = operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    operator::ensure_namespace(&mgmt, NS).await;
    let policies: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), NS);
    policy(&policies, "RU", "moscow").await;

    let start = Instant::now();
    for i in 0..N {
        let name = format!("w-{i:02}");
        let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"role": "Processing", "countries": ["PW"], "manifests": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-config")}, "data": {"k": "v"}},
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                 "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                   "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}}}}]}});
        workloads
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await
            .expect("workload");
    }
    eventually("50 Ready on msk-1", Duration::from_secs(300), || {
        common::workloads_ready_on(&workloads, N, &["msk-1"])
    })
    .await;
    println!(
        "fleet_operator: {N} workloads created and Ready on msk-1 in {:.2} s",
        start.elapsed().as_secs_f64()
    );

    let edit = Instant::now();
    policy(&policies, "CH", "zurich").await;
    eventually("50 relocated", Duration::from_secs(300), || {
        common::workloads_ready_on(&workloads, N, &["zrh-1", "zrh-2"])
    })
    .await;
    println!(
        "fleet_operator: policy edit -> {N} workloads Ready on zrh-1 and zrh-2 and removed from msk-1: {:.2} s",
        edit.elapsed().as_secs_f64()
    );

    tokio::time::sleep(Duration::from_secs(10)).await; // let in-flight work settle
    let before = operator_writes(&dir);
    tokio::time::sleep(idle).await;
    let after = operator_writes(&dir);
    let mut total = 0;
    for ((cluster, b), (_, a)) in before.iter().zip(&after) {
        println!(
            "fleet_operator: idle {} s: {} operator writes to {cluster}",
            idle.as_secs(),
            a - b
        );
        total += a - b;
    }
    println!(
        "fleet_operator: idle {} s with {N} placed workloads: {total} operator writes in total",
        idle.as_secs()
    );
    let (rss_kb, hwm_kb) = rss(op.pid);
    println!(
        "fleet_operator: operator resident memory {:.1} MiB (peak {:.1} MiB)",
        rss_kb as f64 / 1024.0,
        hwm_kb as f64 / 1024.0
    );

    for i in 0..N {
        let _ = workloads
            .delete(&format!("w-{i:02}"), &DeleteParams::default())
            .await;
    }
    for i in 0..N {
        delete_and_wait(&workloads, &format!("w-{i:02}"), Duration::from_secs(120)).await;
    }
    let _ = policies
        .delete("bench-palau", &DeleteParams::default())
        .await;
}
