//! Drift-detection latency on the local fleet (needs it running: tests/testenv/fleet.sh up,
//! then eval "$(tests/testenv/fleet.sh env)"; run with `cargo bench --bench drift_latency`).
//!
//! 20 out-of-band edits of a placed Deployment's replicas on zrh-1, measured from the edit to
//! (a) the workload's `Drifted` condition and `status.drift` showing the new live value while
//! only an Audit policy governs it, and (b) the edit being reverted under Enforce.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::operator::{self, delete_and_wait};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use residency_operator::api::{ResidencyPolicy, ResidentWorkload};
use serde_json::json;

const NS: &str = "bench-drift";
const EDITS: usize = 20;

async fn policy(client: &Client, enforcement: &str) {
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": "bench-drift"},
        "spec": {"countries": ["KN"], "allowedLocations": [{"country": "CH", "region": "zurich"}],
                 "enforcement": enforcement}});
    Api::<ResidencyPolicy>::all(client.clone())
        .patch(
            "bench-drift",
            &PatchParams::apply("residency-bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("policy");
}

async fn edit(member: &Client, replicas: i32) {
    common::scale_out_of_band(member, NS, "kittitian", replicas).await;
}

/// Polls `check` every 10 ms (finer than the tests' `eventually`, to measure latency).
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what}: not within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "drift_latency: {what} over {} edits: p50 {:.0} ms, p99 {:.0} ms (min {:.0} ms, max {:.0} ms)",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
        samples[0].as_secs_f64() * 1000.0,
        samples[samples.len() - 1].as_secs_f64() * 1000.0
    );
}

#[tokio::main]
async fn main() {
    let fleet = Fleet::from_env();
    operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    operator::ensure_namespace(&mgmt, NS).await;
    let zrh1 = fleet.member("zrh-1").await;
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), NS);
    policy(&mgmt, "Enforce").await;
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "kittitian", "namespace": NS},
        "spec": {"role": "Processing", "countries": ["KN"], "manifests": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "kittitian"},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "k"}},
               "template": {"metadata": {"labels": {"app": "k"}},
                 "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]}}}}]}});
    workloads
        .patch(
            "kittitian",
            &PatchParams::apply("residency-bench").force(),
            &Patch::Apply(&body),
        )
        .await
        .expect("workload");
    let deployments: Api<Deployment> = Api::namespaced(zrh1.clone(), NS);
    eventually("placed on zrh-1", Duration::from_secs(60), || async {
        match deployments.get_opt("kittitian").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // (b) Enforce: time until the edit is reverted on the member
    let mut corrected = Vec::new();
    for i in 0..EDITS {
        let n = 2 + i as i32;
        let start = Instant::now();
        edit(&zrh1, n).await;
        until("reverted", || async {
            let r = deployments.get("kittitian").await.expect("get");
            r.spec.and_then(|s| s.replicas) == Some(1)
        })
        .await;
        corrected.push(start.elapsed());
    }
    report("Enforce, edit on a member -> reverted", corrected);

    // (a) Audit: time until the condition and status.drift show the edit
    policy(&mgmt, "Audit").await;
    eventually("Audit mode", Duration::from_secs(30), || async {
        let rw = workloads
            .get("kittitian")
            .await
            .map_err(|e| e.to_string())?;
        let s = rw.status.unwrap_or_default();
        if s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "AuditOnly")
        {
            Ok(())
        } else {
            Err("no".into())
        }
    })
    .await;
    let mut detected = Vec::new();
    for i in 0..EDITS {
        let n = 2 + i as i32;
        let start = Instant::now();
        edit(&zrh1, n).await;
        let want = n.to_string();
        until("reported", || async {
            let rw = workloads.get("kittitian").await.expect("get");
            let s = rw.status.unwrap_or_default();
            let drifted = s
                .conditions
                .iter()
                .any(|c| c.type_ == "Drifted" && c.status == "True");
            drifted
                && s.drift
                    .iter()
                    .any(|d| d.path == "spec.replicas" && d.live == want)
        })
        .await;
        detected.push(start.elapsed());
    }
    report(
        "Audit, edit on a member -> Drifted condition with the live value",
        detected,
    );

    policy(&mgmt, "Enforce").await;
    delete_and_wait(&workloads, "kittitian", Duration::from_secs(60)).await;
    let _ = Api::<ResidencyPolicy>::all(mgmt.clone())
        .delete("bench-drift", &DeleteParams::default())
        .await;
}
