//! Drift on the local fleet, through the real operator: out-of-band edits and deletes of placed
//! objects are corrected under Enforce (with an Event naming path, desired and live value),
//! reported in status without correction once the workload is governed only by Audit
//! policies, and left alone for fields a workload's ignore rules hand to someone else.

mod common;

use std::time::{Duration, Instant};

use common::operator::{self, delete_and_wait};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use residency_operator::api::{ResidencyPolicy, ResidentWorkload};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const NS: &str = "drift-tests";

async fn policy(client: &Client, name: &str, country: &str, enforcement: &str) {
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": name},
        "spec": {"countries": [country], "allowedLocations": [{"country": "CH", "region": "zurich"}],
                 "enforcement": enforcement}});
    Api::<ResidencyPolicy>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("residency-tests").force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

fn workload(name: &str, country: &str, drift: Option<Value>) -> Value {
    let mut w = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"role": "Processing", "countries": [country], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-config")}, "data": {"k": "v"}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
             "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
               "template": {"metadata": {"labels": {"app": name}},
                 "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": common::restricted()}]}}}}]}});
    if let Some(d) = drift {
        w["spec"]["drift"] = d;
    }
    w
}

async fn apply_workload(client: &Client, body: &Value) {
    let name = body["metadata"]["name"].as_str().unwrap();
    Api::<ResidentWorkload>::namespaced(client.clone(), NS)
        .patch(
            name,
            &PatchParams::apply("residency-tests").force(),
            &Patch::Apply(body),
        )
        .await
        .unwrap();
}

async fn ready_on_zurich(client: &Client, name: &str) {
    let api: Api<ResidentWorkload> = Api::namespaced(client.clone(), NS);
    eventually(&format!("{name} Ready on zrh-1, zrh-2"), T, || async {
        let rw = api.get(name).await.map_err(|e| e.to_string())?;
        let s = rw.status.unwrap_or_default();
        let ready = s
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready
            && s.targets == ["zrh-1", "zrh-2"]
            && s.placements.iter().all(|p| p.state == "Ready")
        {
            Ok(())
        } else {
            Err(format!("{:?}", s.conditions))
        }
    })
    .await;
}

/// An out-of-band edit, as `kubectl scale` would do it (another field manager).
async fn scale(client: &Client, name: &str, replicas: i32) {
    common::scale_out_of_band(client, NS, name, replicas).await;
}

async fn replicas(client: &Client, name: &str) -> i32 {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

async fn event_notes(client: &Client, workload: &str, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(workload))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.note)
        .collect()
}

#[tokio::test]
async fn drift_is_corrected_reported_or_ignored() {
    let fleet = Fleet::from_env();
    operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    operator::ensure_namespace(&mgmt, NS).await;
    let zrh1 = fleet.member("zrh-1").await;
    let zrh2 = fleet.member("zrh-2").await;

    // Enforce: an edit and a delete are corrected, each with an Event
    policy(&mgmt, "tuvalu", "TV", "Enforce").await;
    apply_workload(&mgmt, &workload("tuvalu", "TV", None)).await;
    ready_on_zurich(&mgmt, "tuvalu").await;
    let edited = Instant::now();
    scale(&zrh1, "tuvalu", 3).await;
    eventually("the edit is reverted", T, || async {
        match replicas(&zrh1, "tuvalu").await {
            1 => Ok(()),
            n => Err(format!("replicas {n}")),
        }
    })
    .await;
    eprintln!("out-of-band edit corrected after {:?}", edited.elapsed());
    let notes = eventually("a DriftCorrected event", T, || async {
        let n = event_notes(&mgmt, "tuvalu", "DriftCorrected").await;
        if n.iter()
            .any(|n| n.contains("spec.replicas: desired 1, live 3"))
        {
            Ok(n)
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("Deployment tuvalu on zrh-1")),
        "{notes:?}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(zrh2.clone(), NS);
    cms.delete("tuvalu-config", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted ConfigMap is recreated", T, || async {
        match cms.get_opt("tuvalu-config").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("a DriftCorrected event for the delete", T, || async {
        let n = event_notes(&mgmt, "tuvalu", "DriftCorrected").await;
        if n.iter()
            .any(|n| n.contains("ConfigMap tuvalu-config on zrh-2") && n.contains("(object)"))
        {
            Ok(())
        } else {
            Err(format!("{n:?}"))
        }
    })
    .await;

    // ignore rules: replicas belong to someone else (an autoscaler)
    let ignore = json!({"ignore": [{"kind": "Deployment", "paths": ["spec.replicas"]}]});
    apply_workload(&mgmt, &workload("tuvalu-hpa", "TV", Some(ignore))).await;
    ready_on_zurich(&mgmt, "tuvalu-hpa").await;
    scale(&zrh1, "tuvalu-hpa", 4).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&zrh1, "tuvalu-hpa").await,
        4,
        "an ignored field is left alone"
    );
    assert!(
        event_notes(&mgmt, "tuvalu-hpa", "DriftCorrected")
            .await
            .is_empty()
    );

    // Audit: once only an Audit policy governs the workload, drift is reported, not corrected
    policy(&mgmt, "tuvalu", "TV", "Audit").await;
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), NS);
    eventually("Audit mode", T, || async {
        let rw = api.get("tuvalu").await.map_err(|e| e.to_string())?;
        let audit = rw
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.reason == "AuditOnly");
        if audit {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    scale(&zrh1, "tuvalu", 3).await;
    let rw = eventually("drift reported in status", T, || async {
        let rw = api.get("tuvalu").await.map_err(|e| e.to_string())?;
        let s = rw.status.clone().unwrap_or_default();
        let found = s.drift.iter().any(|d| {
            d.cluster == "zrh-1"
                && d.kind == "Deployment"
                && d.name == "tuvalu"
                && d.path == "spec.replicas"
                && d.desired == "1"
                && d.live == "3"
        });
        if found {
            Ok(rw)
        } else {
            Err(format!("{:?}", s.drift))
        }
    })
    .await;
    let drifted = rw
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Drifted")
        .unwrap()
        .clone();
    assert_eq!(
        (drifted.status.as_str(), drifted.reason.as_str()),
        ("True", "DriftDetected")
    );
    assert!(
        drifted
            .message
            .contains("zrh-1 Deployment/tuvalu spec.replicas: desired 1, live 3"),
        "{}",
        drifted.message
    );
    assert_eq!(replicas(&zrh1, "tuvalu").await, 3, "Audit never corrects");
    assert!(
        !event_notes(&mgmt, "tuvalu", "DriftDetected")
            .await
            .is_empty()
    );

    // clean up: back to Enforce so deletion removes the copies
    policy(&mgmt, "tuvalu", "TV", "Enforce").await;
    for w in ["tuvalu", "tuvalu-hpa"] {
        delete_and_wait(&api, w, T).await;
    }
    let _ = Api::<ResidencyPolicy>::all(mgmt.clone())
        .delete("tuvalu", &DeleteParams::default())
        .await;
    for c in [&zrh1, &zrh2] {
        let _ = Api::<Namespace>::all(c.clone())
            .delete(NS, &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
async fn a_volume_outside_the_attested_regions_is_flagged() {
    use k8s_openapi::api::core::v1::PersistentVolume;
    let fleet = Fleet::from_env();
    operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    let ns = "drift-volume";
    operator::ensure_namespace(&mgmt, ns).await;
    let zrh1 = fleet.member("zrh-1").await;
    // a volume in the wrong region, pre-bound to the claim the workload will create on zrh-1
    let pv_name = "rogue-volume".to_string();
    let pv: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": pv_name},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "standard",
                 "local": {"path": "/mnt/rogue"},
                 "claimRef": {"namespace": ns, "name": "micronesia-data"},
                 "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                     {"key": "topology.kubernetes.io/region", "operator": "In", "values": ["us-east-1"]}]}]}}}
    }))
    .unwrap();
    let pvs: Api<PersistentVolume> = Api::all(zrh1.clone());
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await; // an earlier run's
    eventually("no earlier rogue volume", T, || async {
        match pvs.get_opt(&pv_name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    pvs.create(&Default::default(), &pv).await.unwrap();
    policy(&mgmt, "micronesia", "FM", "Enforce").await;
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "micronesia", "namespace": ns},
        "spec": {"role": "Storage", "countries": ["FM"], "manifests": [
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "micronesia-data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    api.patch(
        "micronesia",
        &PatchParams::apply("residency-tests").force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let rw = eventually("OutsideAttestedRegion", T, || async {
        let rw = api.get("micronesia").await.map_err(|e| e.to_string())?;
        let c = rw.status.clone().unwrap_or_default().conditions;
        // the copy on zrh-2 binds a volume of its own region: its evidence shows it
        let zrh2_ok = rw.status.as_ref().is_some_and(|s| {
            s.placements.iter().any(|p| {
                p.cluster == "zrh-2"
                    && p.evidence
                        .as_ref()
                        .is_some_and(|e| e.volume_regions == ["eu-central-2"])
            })
        });
        match c.iter().find(|c| c.type_ == "Compliant") {
            Some(c) if c.reason == "OutsideAttestedRegion" && zrh2_ok => Ok(rw),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let s = rw.status.unwrap();
    let compliant = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .unwrap();
    assert_eq!(compliant.status, "False");
    assert!(
        compliant.message.contains(&format!(
            "PersistentVolume {pv_name} (claim micronesia-data) in region us-east-1"
        )),
        "{}",
        compliant.message
    );
    let zrh2 = s.placements.iter().find(|p| p.cluster == "zrh-2").unwrap();
    assert_eq!(
        zrh2.evidence.as_ref().unwrap().volume_regions,
        ["eu-central-2"],
        "the other copy is fine"
    );

    delete_and_wait(&api, "micronesia", T).await;
    let _ = Api::<ResidencyPolicy>::all(mgmt.clone())
        .delete("micronesia", &DeleteParams::default())
        .await;
    for name in ["zrh-1", "zrh-2"] {
        let c = fleet.member(name).await;
        let _ = Api::<Namespace>::all(c)
            .delete(ns, &DeleteParams::default())
            .await;
    }
    let _ = pvs.delete(&pv_name, &DeleteParams::default()).await;
}
