//! Smoke tests of the fleet itself: every member runs Pods on nodes of its own region and binds
//! PVCs to volumes located in its own region (through the nodes they are pinned to); the
//! management cluster serves CRDs.

mod common;

use std::time::Duration;

use common::{Fleet, Member, eventually, unique};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use residency_operator::fleet::topology::Fact;
use residency_operator::location::affinity::locate;
use residency_operator::location::topology::Topology;
use serde_json::json;

const REGION: &str = "topology.kubernetes.io/region";
const TIMEOUT: Duration = Duration::from_secs(120);

async fn smoke_member(fleet: &Fleet, member: &Member) -> Result<(), String> {
    let client: Client = fleet.client(&member.context).await;
    let ns = unique("smoke");
    let c = &member.context;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .map_err(|e| format!("{c}: create namespace: {e}"))?;

    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "smoke"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "smoke"}},
            "template": {
                "metadata": {"labels": {"app": "smoke"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/smoke:1"}]}
            }
        }
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deploy)
        .await
        .map_err(|e| format!("{c}: create deployment: {e}"))?;
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "smoke-data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &pvc)
        .await
        .map_err(|e| format!("{c}: create pvc: {e}"))?;

    // Two Running Pods, each on a node of the member's region.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::all(client.clone());
    let placed = eventually(&format!("{c}: 2 Running pods"), TIMEOUT, || async {
        let list = pods
            .list(&ListParams::default().labels("app=smoke"))
            .await
            .map_err(|e| e.to_string())?;
        let running: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                Some((p.metadata.name.clone().unwrap_or_default(), node))
            })
            .collect();
        if running.len() == 2 {
            Ok(running)
        } else {
            Err(format!("{} of 2 pods running", running.len()))
        }
    })
    .await;
    for (pod, node) in &placed {
        let n = nodes
            .get(node)
            .await
            .map_err(|e| format!("{c}: get node {node}: {e}"))?;
        let region = n
            .metadata
            .labels
            .unwrap_or_default()
            .remove(REGION)
            .unwrap_or_default();
        if region != member.region {
            return Err(format!(
                "{c}: pod {pod} runs on node {node} whose region is '{region}', expected '{}'",
                member.region
            ));
        }
    }

    // The PVC binds to a volume located in the member's region: through the nodes its node
    // affinity matches (hostname-pinned here, as kind's local-path volumes are).
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
    let volume = eventually(&format!("{c}: PVC Bound"), TIMEOUT, || async {
        let p = pvcs.get("smoke-data").await.map_err(|e| e.to_string())?;
        let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
        match p.spec.and_then(|s| s.volume_name) {
            Some(v) if phase == "Bound" => Ok(v),
            _ => Err(format!("phase {phase}")),
        }
    })
    .await;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&volume)
        .await
        .map_err(|e| format!("{c}: get pv {volume}: {e}"))?;
    let terms = pv
        .spec
        .and_then(|s| s.node_affinity)
        .and_then(|a| a.required)
        .map(|r| r.node_selector_terms)
        .unwrap_or_default();
    let topology = Topology::new(
        nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("{c}: list nodes: {e}"))?
            .items
            .iter()
            .filter_map(
                |n| match residency_operator::fleet::topology::node_fact(n) {
                    Some((_, Fact::Node(f))) => Some(f),
                    _ => None,
                },
            ),
    );
    let located = locate(&topology, &terms);
    let regions: Vec<&String> = located.regions.iter().collect();
    if regions != [&member.region] || located.unlocated.is_some() {
        return Err(format!(
            "{c}: PVC bound to {volume}, located in regions {regions:?} ({:?}), expected ['{}']",
            located.unlocated, member.region
        ));
    }

    let _ = Api::<Namespace>::all(client)
        .delete(&ns, &DeleteParams::background())
        .await;
    Ok(())
}

#[tokio::test]
async fn every_member_runs_pods_and_binds_volumes_in_its_region() {
    let fleet = Fleet::from_env();
    assert!(!fleet.members.is_empty(), "no member clusters configured");
    let results =
        futures::future::join_all(fleet.members.iter().map(|m| smoke_member(&fleet, m))).await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "fleet smoke test failed:\n{}",
        failures.join("\n")
    );
}

#[tokio::test]
async fn management_cluster_serves_crds() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let group = format!("{}.smoke.residency.io", unique("g"));
    let name = format!("probes.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "names": {"kind": "Probe", "plural": "probes", "singular": "probe"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}
            }]
        }
    }))
    .unwrap();
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("create CRD");
    common::crd_established(&client, &name).await;
    crds.delete(&name, &DeleteParams::default())
        .await
        .expect("delete CRD");
}
