//! Helpers of the data move tests: the operator's image on the members' real nodes, one-shot
//! Pods, an independent manifest of a member's claims (a mover Pod made as the operator makes
//! them), and the host directories of the real volumes.

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, LogParams, PostParams};
use residency_operator::datamove::objects::{self, Role, Scheduling};
use residency_operator::mover::manifest::{Entry, Manifest};
use serde_json::{Value, json};

use super::eventually;

/// The operator's image as the tests load it into the real nodes; the operators the tests
/// start run their mover Pods from it (`--mover-image`).
pub const IMAGE: &str = "residency.local/residency-operator:mover-test";

const T: Duration = Duration::from_secs(180);

/// Builds the operator's image of this build once per test binary and imports it into the real
/// nodes of `clusters`.
pub fn load_image(clusters: &[&str]) {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let archive = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mover-image.tar");
    BUILT.call_once(|| super::build_image(&archive, IMAGE));
    for c in clusters {
        super::run_ok(
            std::process::Command::new(super::repo("tests/testenv/nodes.sh")).args([
                "load",
                c,
                archive.to_str().unwrap(),
            ]),
        );
    }
}

/// Where the fleet's real nodes run Pods.
pub fn real_node() -> Scheduling {
    Scheduling {
        node_selector: Some(json!({"residency.io/real-node": "true"})),
        tolerations: Some(
            json!([{"key": "residency.io/real-node", "operator": "Exists", "effect": "NoSchedule"}]),
        ),
        // as the stores of the tests run (the operator's namespaces enforce restricted)
        non_root: Some(residency_operator::datamove::objects::NonRoot {
            user: Some(65532),
            ..Default::default()
        }),
    }
}

/// Creates a one-shot Pod, waits until it finished, returns its log (or what went wrong).
pub async fn run(client: &Client, ns: &str, body: Value) -> Result<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = body["metadata"]["name"].as_str().unwrap().to_string();
    let pod: Pod = serde_json::from_value(body).unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|e| e.to_string())?;
    let phase = eventually(&format!("{ns}/{name} finished"), T, || async {
        let p = pods.get(&name).await.map_err(|e| e.to_string())?;
        match p.status.and_then(|s| s.phase).as_deref() {
            Some(ph @ ("Succeeded" | "Failed")) => Ok(ph.to_string()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let log = pods
        .logs(&name, &LogParams::default())
        .await
        .map_err(|e| e.to_string())?;
    if phase == "Succeeded" {
        Ok(log)
    } else {
        Err(format!("{name} failed: {log}"))
    }
}

/// The manifest of `claims` (each at `/data/<claim>`) on the member, from a mover Pod there:
/// an independent pass, checked against the digest it printed.
pub async fn manifest_on(client: &Client, ns: &str, claims: &[String], tag: &str) -> Manifest {
    let pod = objects::mover_pod(
        &super::unique(&format!("manifest-{tag}")),
        "test",
        IMAGE,
        &Role::Manifest,
        claims,
        "",
        &real_node(),
    );
    let log = run(client, ns, pod).await.unwrap();
    let v: Value = serde_json::from_str(log.trim()).unwrap_or_else(|e| panic!("{e}: {log}"));
    let entries: Vec<Entry> = serde_json::from_value(v["entries"].clone()).unwrap();
    let m = Manifest { entries };
    assert_eq!(
        v["digest"],
        m.digest(),
        "the printed digest is the entries' digest"
    );
    m
}

/// The host directory of the real volume bound to claim `ns/claim` (the fleet's real volumes
/// are local directories of this machine).
pub async fn host_dir(client: &Client, ns: &str, claim: &str) -> std::path::PathBuf {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(claim)
        .await
        .unwrap();
    let pv = pvc.spec.and_then(|s| s.volume_name).expect("a bound claim");
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv)
        .await
        .unwrap();
    std::path::PathBuf::from(pv.spec.unwrap().local.expect("a local volume").path)
}

/// Empties the host directories of the member's real volumes that no claim holds, so a test's
/// claim starts empty whatever an earlier run left there.
pub async fn wipe_available_volumes(client: &Client) {
    let pvs = Api::<PersistentVolume>::all(client.clone())
        .list(&Default::default())
        .await
        .unwrap();
    for pv in pvs.items {
        let available = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Available");
        let Some(local) = pv.spec.and_then(|s| s.local) else {
            continue;
        };
        if available && let Ok(entries) = std::fs::read_dir(&local.path) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

/// The first differences of `destination` from `source`, for a failure message.
pub fn differences(source: &Manifest, destination: &Manifest) -> Vec<String> {
    residency_operator::mover::manifest::differences(source, destination, 5)
        .into_iter()
        .map(|d| format!("{}: {}", d.path, d.what))
        .collect()
}

/// Makes the real volumes the claims of namespace `ns` held on the member available again once
/// the namespace is gone (the real-local volumes are Retain: they keep their files until
/// [`wipe_available_volumes`]).
pub async fn release_volumes(client: &Client, ns: &str) {
    use kube::api::{Patch, PatchParams};
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let held = |pv: &PersistentVolume| {
        pv.spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|c| c.namespace.as_deref())
            == Some(ns)
    };
    eventually(&format!("the real volumes of {ns} released"), T, || async {
        let list = pvs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let bound: Vec<String> = list
            .items
            .iter()
            .filter(|pv| held(pv))
            .filter(|pv| pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .filter_map(|pv| pv.metadata.name.clone())
            .collect();
        if bound.is_empty() {
            Ok(())
        } else {
            Err(format!("still bound: {bound:?}"))
        }
    })
    .await;
    for pv in pvs.list(&Default::default()).await.unwrap().items {
        if held(&pv)
            && let Some(name) = &pv.metadata.name
        {
            let _ = pvs
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"claimRef": null}})),
                )
                .await;
        }
    }
}
