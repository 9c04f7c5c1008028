//! The chart, for real: the operator's own image (built without Docker, `scripts/image`) loaded
//! into mgmt's real node, `helm install` with two replicas and leader election, both Pods Ready
//! through their probes under the restricted security context, the seed relocation driven by
//! the in-cluster operator, and a SIGTERM (Pod deletion) handing the Lease over, timed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::operator::{self, OPERATOR_NS};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use residency_operator::api::ResidentWorkload;
use serde_json::json;

const T: Duration = Duration::from_secs(180);
const RELEASE: &str = "in-cluster";
const IMAGE_TAG: &str = "in-cluster-test";
const NS: &str = "threat-intel";

fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&common::run_ok(cmd).stdout).into_owned()
}

fn helm(args: &[&str]) -> String {
    let home = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    run(
        Command::new(std::env::var("RESIDENCY_HELM").expect("RESIDENCY_HELM"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .args([
                "--kubeconfig",
                &Fleet::kubeconfig_path(),
                "--kube-context",
                "mgmt",
            ])
            .args(args),
    )
}

/// Uninstalls the release when the test ends, however it ends.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ =
            std::panic::catch_unwind(|| helm(&["uninstall", RELEASE, "-n", OPERATOR_NS, "--wait"]));
    }
}

async fn ready_pods(pods: &Api<Pod>) -> Result<Vec<String>, String> {
    let list = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=residency-operator"))
        .await
        .map_err(|e| e.to_string())?;
    let ready: Vec<String> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    if ready.len() == 2 {
        Ok(ready)
    } else {
        Err(format!(
            "{} of 2 Ready: {:?}",
            ready.len(),
            list.items
                .iter()
                .map(|p| (
                    p.metadata.name.clone(),
                    p.status.as_ref().and_then(|s| s.container_statuses.clone())
                ))
                .collect::<Vec<_>>()
        ))
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("residency-operator")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn placed_on(api: &Api<ResidentWorkload>, name: &str, targets: &[&str]) {
    eventually(&format!("{name} Ready on {targets:?}"), T, || async {
        let w = api.get(name).await.map_err(|e| e.to_string())?;
        let s = w.status.unwrap_or_default();
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let on: Vec<&str> = s
            .placements
            .iter()
            .filter(|p| p.state == "Ready")
            .map(|p| p.cluster.as_str())
            .collect();
        if ready && s.targets == targets && on == targets {
            Ok(())
        } else {
            Err(format!("targets {:?}, ready placements {on:?}", s.targets))
        }
    })
    .await;
}

#[tokio::test]
async fn the_chart_runs_the_operator_in_cluster_and_hands_the_lease_over() {
    let fleet = Fleet::from_env();
    let pod_host = std::env::var("RESIDENCY_FLEET_POD_HOST")
        .expect("RESIDENCY_FLEET_POD_HOST: the fleet's real nodes (tests/testenv/fleet.sh env)");
    let mgmt = fleet.mgmt_client().await;

    // the image, loaded into mgmt's real node (nothing is pulled)
    let archive =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("in-cluster-image.tar");
    let root = env!("CARGO_MANIFEST_DIR");
    common::build_image(&archive, &format!("residency-operator:{IMAGE_TAG}"));
    run(
        Command::new(format!("{root}/tests/testenv/nodes.sh")).args([
            "load",
            "mgmt",
            archive.to_str().unwrap(),
        ]),
    );

    // CRDs, and the members' kubeconfigs at addresses a Pod reaches
    operator::install_crds(&mgmt).await;
    operator::ensure_namespace(&mgmt, OPERATOR_NS).await;
    let secrets: Api<Secret> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    for m in &fleet.members {
        let kubeconfig = fleet
            .kubeconfig_for(&m.context)
            .replace("https://127.0.0.1:", &format!("https://{pod_host}:"));
        let name = format!("{}-kubeconfig", m.context);
        let s: Secret = serde_json::from_value(json!({"metadata": {"name": name},
            "stringData": {"kubeconfig": kubeconfig}}))
        .unwrap();
        secrets
            .patch(
                &name,
                &PatchParams::apply("in-cluster-test").force(),
                &Patch::Apply(&s),
            )
            .await
            .unwrap();
    }
    let mgmt_port = fleet
        .kubeconfig_for("mgmt")
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("server: https://127.0.0.1:")
                .map(str::to_string)
        })
        .expect("mgmt's server in the kubeconfig");

    // helm install: two replicas on mgmt's real node, the in-cluster API server address given
    let values =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("in-cluster-values.yaml");
    std::fs::write(
        &values,
        format!(
            "image: {{repository: residency-operator, tag: {IMAGE_TAG}, pullPolicy: Never}}\n\
             replicaCount: 2\n\
             nodeSelector: {{residency.io/real-node: \"true\"}}\n\
             tolerations: [{{key: residency.io/real-node, operator: Exists, effect: NoSchedule}}]\n\
             operator:\n  probeInterval: 2\n  extraEnv:\n\
             \x20 - {{name: KUBERNETES_SERVICE_HOST, value: \"{pod_host}\"}}\n\
             \x20 - {{name: KUBERNETES_SERVICE_PORT, value: \"{mgmt_port}\"}}\n"
        ),
    )
    .unwrap();
    let started = Instant::now();
    helm(&[
        "install",
        RELEASE,
        "charts/residency-operator",
        "-n",
        OPERATOR_NS,
        "--skip-crds",
        "-f",
        values.to_str().unwrap(),
    ]);
    let _installed = Installed;
    let pods: Api<Pod> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    let ready = eventually("both operator Pods Ready", T, || ready_pods(&pods)).await;
    eprintln!(
        "helm install -> 2 Pods Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let leases: Api<Lease> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    // (a Lease left by an earlier install is taken over once it expires)
    let leader = eventually("one of the two Pods leads", T, || async {
        match holder(&leases).await {
            Some(h) if ready.contains(&h) => Ok(h),
            other => Err(format!("holder {other:?}, Pods {ready:?}")),
        }
    })
    .await;
    let pod = pods.get(&leader).await.unwrap();
    let spec = pod.spec.unwrap();
    let sc = spec.containers[0]
        .security_context
        .clone()
        .unwrap_or_default();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(spec.node_name.as_deref(), Some("mgmt-real"));

    // the seed relocation, through the in-cluster operator
    for f in ["00-namespace", "10-clusters", "20-policies", "30-workloads"] {
        apply_path(&mgmt, &format!("examples/seed/{f}.yaml")).await;
    }
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), NS);
    placed_on(&workloads, "apac-threat-store", &["msk-1"]).await;
    let edit = Instant::now();
    apply_path(&mgmt, "examples/seed-relocated/20-apac-to-zurich.yaml").await;
    placed_on(&workloads, "apac-threat-store", &["zrh-1", "zrh-2"]).await;
    placed_on(&workloads, "apac-threat-analysis", &["zrh-1", "zrh-2"]).await;
    eprintln!(
        "policy edit -> the seed relocated by the in-cluster operator in {:.1} s",
        edit.elapsed().as_secs_f64()
    );

    // SIGTERM to the leader (its Pod deleted): the other replica takes the Lease over
    let handover = Instant::now();
    pods.delete(&leader, &DeleteParams::default())
        .await
        .unwrap();
    let next = eventually("the Lease handed over", T, || async {
        match holder(&leases).await {
            Some(h) if h != leader => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let took = handover.elapsed();
    eprintln!(
        "SIGTERM to the leader {leader} -> {next} holds the Lease after {:.2} s",
        took.as_secs_f64()
    );
    // the other replica or the Deployment's replacement Pod, whichever asked first; well before
    // the Lease (15 s) could have expired: the leader released it when it got SIGTERM
    let live = pods.get_opt(&next).await.unwrap();
    assert!(
        live.is_some_and(|p| p.metadata.deletion_timestamp.is_none()),
        "the Lease went to {next}, a running operator Pod"
    );
    assert!(
        took < Duration::from_secs(15),
        "the Lease was handed over after {took:?}: released on SIGTERM, not left to expire"
    );

    // the new leader keeps reconciling: deleting the workloads cleans the members
    for w in ["apac-threat-store", "apac-threat-analysis"] {
        operator::delete_and_wait(&workloads, w, T).await;
    }
    // the members' Secrets as the other tests use them (host addresses)
    operator::member_secrets(&fleet, &mgmt).await;
}
