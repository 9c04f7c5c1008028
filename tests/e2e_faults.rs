//! Fault tests on the local fleet, through the real binary: for each fault, every volume is
//! accounted for on the members themselves, nothing is deleted from a cluster that stayed
//! allowed (read from the members' audit logs), and the workload converges once the fault
//! clears (the time is printed). Each test uses its own countries, policies and namespace;
//! tests that change the members take the lock for writing.

mod common;

use std::time::{Duration, Instant};

use common::rules::*;
use common::{AuditWrite, audit_mark, audit_writes_since, eventually};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use residency_operator::api::{MemberCluster, ResidentWorkload};
use serde_json::json;
use tokio::sync::RwLock;

static CLUSTER_LOCK: RwLock<()> = RwLock::const_new(());

/// Every write recorded since `mark` (none off the local fleet).
async fn writes_since(mark: &Option<common::AuditMark>) -> Vec<AuditWrite> {
    match mark {
        Some(m) => audit_writes_since(m).await,
        None => Vec::new(),
    }
}

/// Deletes by the operator in namespace `ns` since `mark`.
async fn operator_deletes(mark: &Option<common::AuditMark>, ns: &str) -> Vec<AuditWrite> {
    operator_writes(mark, ns)
        .await
        .into_iter()
        .filter(|w| w.verb == "delete")
        .collect()
}

/// Writes by the operator (its user agent) in namespace `ns` since `mark`.
async fn operator_writes(mark: &Option<common::AuditMark>, ns: &str) -> Vec<AuditWrite> {
    writes_since(mark)
        .await
        .into_iter()
        .filter(|w| w.user_agent.starts_with("residency-operator/"))
        .filter(|w| w.namespace == ns || (w.resource == "namespaces" && w.name == ns))
        .collect()
}

async fn wait_verified(mgmt: &Client, cluster: &str, verified: bool) {
    let clusters: Api<MemberCluster> = Api::all(mgmt.clone());
    let want = if verified { "True" } else { "False" };
    eventually(&format!("{cluster} LocationVerified={want}"), T, || async {
        let mc = clusters.get(cluster).await.map_err(|e| e.to_string())?;
        let c = mc.status.map(|s| s.conditions).unwrap_or_default();
        match c.iter().find(|c| c.type_ == "LocationVerified") {
            Some(c) if c.status == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn a_node_label_flap_on_an_allowed_member_removes_nothing() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "faults-flap";
    namespace(&env.mgmt, ns).await;
    let zrh2 = env.members[1].1.clone();
    policy(
        &env.mgmt,
        "tuvalu-zurich",
        &["TV"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &storage(ns, "tuvalu", &["TV"], None))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "tuvalu", "Ready on zrh-1 and zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let before = [
        wait_claims(&env.members[0].1, ns, "tuvalu", 2).await,
        wait_claims(&zrh2, ns, "tuvalu", 2).await,
    ];
    assert!(before.iter().flatten().all(|(_, r)| !r), "{before:?}");

    // one node of zrh-2 claims another region for a while: zrh-2 is unverified, still allowed
    let mark = audit_mark("zrh-2");
    set_region(&zrh2, "zrh-2-node-b", "eu-central-1").await;
    wait_verified(&env.mgmt, "zrh-2", false).await;
    let rw = wait_workload(&env.mgmt, ns, "tuvalu", "zrh-2 flagged, kept", |rw| {
        placement(rw, "zrh-2").is_some_and(|p| p.message.contains("location not verified"))
    })
    .await;
    eprintln!("zrh-2 while unverified: {:?}", placement(&rw, "zrh-2"));
    let held = eventually("a CopyHeld Event about zrh-2", T, || async {
        event_reasons(&env.mgmt, ns, &[rw.uid()])
            .await
            .into_iter()
            .find(|(r, m)| r == "CopyHeld" && m.contains("zrh-2"))
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
    eprintln!("CopyHeld: {}", held.1);
    let op = common::operator::start(&common::Fleet::from_env()).await;
    let metrics = op.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("residency_copies_held_total{")
                && l.contains("cluster=\"zrh-2\"")
                && l.contains("reason=\"NotEligible\"")),
        "no held-copy metric for zrh-2"
    );
    // give a wrong eviction time to happen (it took under 6 s when it did)
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        placed_on(&zrh2, ns, "tuvalu").await,
        0,
        "no Deployment here"
    );
    let sts: Api<StatefulSet> = Api::namespaced(zrh2.clone(), ns);
    assert!(
        sts.get_opt("tuvalu").await.unwrap().is_some(),
        "the StatefulSet stays on the allowed zrh-2"
    );
    assert_eq!(
        claims(&zrh2, ns, "tuvalu").await,
        before[1],
        "volumes untouched"
    );
    let writes = operator_writes(&mark, ns).await;
    assert!(
        writes.is_empty(),
        "the operator wrote to the unverified zrh-2: {writes:?}"
    );

    // the label comes back: the workload converges with nothing lost
    set_region(&zrh2, "zrh-2-node-b", "eu-central-2").await;
    let back = Instant::now();
    wait_verified(&env.mgmt, "zrh-2", true).await;
    wait_workload(&env.mgmt, ns, "tuvalu", "Ready again, zrh-2 clean", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
            && placement(rw, "zrh-2").is_some_and(|p| p.state == "Ready" && p.message.is_empty())
    })
    .await;
    eprintln!(
        "converged {:?} after the label was restored",
        back.elapsed()
    );
    assert_eq!(claims(&env.members[0].1, ns, "tuvalu").await, before[0]);
    assert_eq!(
        claims(&zrh2, ns, "tuvalu").await,
        before[1],
        "no claim kept a retained label"
    );
    let deletes = operator_deletes(&mark, ns).await;
    assert!(
        deletes.is_empty(),
        "deletes on the allowed zrh-2: {deletes:?}"
    );
    cleanup(&env, ns, &["tuvalu"], &["tuvalu-zurich"]).await;
}

#[tokio::test]
async fn under_retain_a_statefulset_that_says_delete_keeps_its_volumes() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "faults-retention";
    namespace(&env.mgmt, ns).await;
    let zrh2 = env.members[1].1.clone();
    policy(
        &env.mgmt,
        "tonga-zurich",
        &["TO"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &storage(ns, "tonga", &["TO"], Some("Delete")))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "tonga", "Ready on zrh-1 and zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let before = wait_claims(&zrh2, ns, "tonga", 2).await;
    let live = Api::<StatefulSet>::namespaced(zrh2.clone(), ns)
        .get("tonga")
        .await
        .unwrap();
    let policy_of = live
        .spec
        .and_then(|s| s.persistent_volume_claim_retention_policy)
        .expect("claim retention policy");
    assert_eq!(
        (
            policy_of.when_deleted.as_deref(),
            policy_of.when_scaled.as_deref()
        ),
        (Some("Retain"), Some("Retain")),
        "volumePolicy Retain is forced onto the StatefulSet"
    );

    // cordon zrh-2: the workload leaves it, its volumes must stay
    let mark = audit_mark("zrh-2");
    let clusters: Api<MemberCluster> = Api::all(env.mgmt.clone());
    let cordon = |on: bool| {
        let clusters = clusters.clone();
        async move {
            clusters
                .patch(
                    "zrh-2",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"schedulable": !on}})),
                )
                .await
                .unwrap();
        }
    };
    cordon(true).await;
    wait_workload(
        &env.mgmt,
        ns,
        "tonga",
        "evicted from zrh-2, volumes retained",
        |rw| {
            ready_on(rw, &["zrh-1"])
                && placement(rw, "zrh-2").is_some_and(|p| p.state == "Retained")
        },
    )
    .await;
    eventually("the StatefulSet gone from zrh-2", T, || async {
        match Api::<StatefulSet>::namespaced(zrh2.clone(), ns)
            .get_opt("tonga")
            .await
        {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // the garbage collector has had time to take claims owned by the StatefulSet
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = claims(&zrh2, ns, "tonga").await;
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "every claim is still there"
    );
    assert!(
        after.values().all(|r| *r),
        "all labelled retained: {after:?}"
    );
    let pvc_deletes: Vec<_> = writes_since(&mark)
        .await
        .into_iter()
        .filter(|w| {
            w.namespace == ns && w.resource == "persistentvolumeclaims" && w.verb == "delete"
        })
        .collect();
    assert!(pvc_deletes.is_empty(), "claims deleted: {pvc_deletes:?}");

    // uncordon: the workload comes back and takes its volumes back into use
    let back = Instant::now();
    cordon(false).await;
    wait_workload(&env.mgmt, ns, "tonga", "Ready on both again", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let reused = eventually("claims in use again, unlabelled", T, || async {
        let c = claims(&zrh2, ns, "tonga").await;
        if c.len() == 2 && c.values().all(|r| !r) {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await;
    eprintln!("back on zrh-2 after {:?}: {reused:?}", back.elapsed());
    cleanup(&env, ns, &["tonga"], &["tonga-zurich"]).await;
}

#[tokio::test]
async fn a_secret_value_appears_nowhere_outside_the_spec() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "faults-secret";
    namespace(&env.mgmt, ns).await;
    let zrh1 = env.members[0].1.clone();
    policy(
        &env.mgmt,
        "kiribati-zurich",
        &["KI"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    install_policy_report_crd(&env.mgmt).await;
    let password = format!("pw-{}", common::unique("s3cr3t"));
    let tampered = format!("tampered-{}", common::unique("x"));
    let api_key = format!("key-{}", common::unique("k3y"));
    // a Secret on the management cluster, taken by reference (spec.secrets)
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "api-source", "namespace": ns},
        "type": "Opaque", "stringData": {"key": api_key}
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.mgmt.clone(), ns)
        .patch(
            "api-source",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&source),
        )
        .await
        .unwrap();
    let body = json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "kiribati", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["KI"], "manifests": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
             "stringData": {"password": password}}
        ], "secrets": [{"name": "api", "fromSecret": "api-source"}]}
    });
    apply_workload(&env.mgmt, &body).await.unwrap();
    let uid = wait_workload(
        &env.mgmt,
        ns,
        "kiribati",
        "Ready on zrh-1 and zrh-2",
        |rw| ready_on(rw, &["zrh-1", "zrh-2"]),
    )
    .await
    .uid();
    let placed = Api::<Secret>::namespaced(zrh1.clone(), ns)
        .get("api")
        .await
        .expect("the referenced Secret is placed");
    assert_eq!(
        placed.data.unwrap()["key"].0,
        api_key.as_bytes(),
        "with the content of the management cluster's Secret"
    );
    assert_eq!(
        placed.metadata.labels.unwrap()["residency.io/workload"],
        "kiribati"
    );
    // write-only stringData is no drift
    tokio::time::sleep(Duration::from_secs(3)).await;
    let events: Api<Event> = Api::namespaced(env.mgmt.clone(), ns);
    // (Events of an earlier run's workload of the same name may still be there)
    let drift_events = |events: Vec<Event>| {
        events
            .into_iter()
            .filter(|e| e.involved_object.uid == uid)
            .filter(|e| e.reason.as_deref() == Some("DriftCorrected"))
            .count()
    };
    assert_eq!(
        drift_events(events.list(&Default::default()).await.unwrap().items),
        0,
        "stringData read as drift"
    );

    // tampered on zrh-1: corrected, and the Event says so without either value
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    Api::<Secret>::namespaced(zrh1.clone(), ns)
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"password": b64(&tampered)}})),
        )
        .await
        .unwrap();
    eventually("the tampered Secret corrected", T, || async {
        let s = Api::<Secret>::namespaced(zrh1.clone(), ns)
            .get("db")
            .await
            .map_err(|e| e.to_string())?;
        let v = s.data.and_then(|d| d.get("password").cloned());
        match v {
            Some(v) if v.0 == password.as_bytes() => Ok(()),
            other => Err(format!("{:?}", other.map(|v| v.0.len()))),
        }
    })
    .await;
    let evs = eventually("a DriftCorrected Event", T, || async {
        let evs = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        if drift_events(evs.clone()) > 0 {
            Ok(evs)
        } else {
            Err("none yet".to_string())
        }
    })
    .await;

    // grep everything the operator writes or prints
    let rw = Api::<ResidentWorkload>::namespaced(env.mgmt.clone(), ns)
        .get("kiribati")
        .await
        .unwrap();
    let op = common::operator::start(&common::Fleet::from_env()).await;
    let report = eventually("the namespace's PolicyReport", T, || async {
        policy_reports(&env.mgmt, ns)
            .get_opt("residency-operator")
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "no PolicyReport yet".to_string())
    })
    .await;
    let places = [
        ("PolicyReport", serde_json::to_string(&report).unwrap()),
        ("Events", serde_json::to_string(&evs).unwrap()),
        ("status", serde_json::to_string(&rw.status).unwrap()),
        ("report", common::report_with(&["-o", "json"])),
        ("report (text)", common::report()),
        (
            "operator log",
            std::fs::read_to_string(&op.log).unwrap_or_default(),
        ),
    ];
    for secret in [
        password.clone(),
        b64(&password),
        tampered.clone(),
        b64(&tampered),
        api_key.clone(),
        b64(&api_key),
    ] {
        for (place, text) in &places {
            assert!(!text.contains(&secret), "{place} shows a secret value");
        }
    }
    let note = evs
        .iter()
        .filter(|e| e.involved_object.uid == uid)
        .find(|e| e.reason.as_deref() == Some("DriftCorrected"))
        .and_then(|e| e.message.clone())
        .unwrap_or_default();
    assert!(note.contains("<redacted sha256:"), "{note}");
    eprintln!("DriftCorrected: {note}");
    cleanup(&env, ns, &["kiribati"], &["kiribati-zurich"]).await;
}

/// Reasons and messages of the Events about the objects with these uids (Events of an earlier
/// run's objects of the same names may still be there).
async fn event_reasons(mgmt: &Client, ns: &str, uids: &[Option<String>]) -> Vec<(String, String)> {
    Api::<Event>::namespaced(mgmt.clone(), ns)
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| uids.contains(&e.involved_object.uid))
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn a_workload_deleted_while_its_member_is_down_waits_or_is_abandoned() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "faults-delete-down";
    namespace(&env.mgmt, ns).await;
    let msk1 = env.members[2].1.clone();
    policy(
        &env.mgmt,
        "nauru-moscow",
        &["NR"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    let mut uids = Vec::new();
    for w in ["nauru-a", "nauru-b"] {
        apply_workload(&env.mgmt, &processing(ns, w, &["NR"]))
            .await
            .unwrap();
        let rw = wait_workload(&env.mgmt, ns, w, "Ready on msk-1", |rw| {
            ready_on(rw, &["msk-1"])
        })
        .await;
        uids.push(rw.uid());
    }
    let api: Api<ResidentWorkload> = Api::namespaced(env.mgmt.clone(), ns);

    common::fleet_sh(&["stop", "msk-1-kube-apiserver"]);
    for w in ["nauru-a", "nauru-b"] {
        api.delete(w, &DeleteParams::default()).await.unwrap();
    }
    // the deletion waits for msk-1 and says how to get out
    eventually("CleanupBlocked naming the way out", T, || async {
        event_reasons(&env.mgmt, ns, &uids)
            .await
            .into_iter()
            .find(|(r, m)| r == "CleanupBlocked" && m.contains("residency.io/abandon-clusters"))
            .ok_or_else(|| "no CleanupBlocked yet".to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        api.get_opt("nauru-a").await.unwrap().is_some(),
        "still waiting"
    );

    // a person declares msk-1 gone for good for one of them
    api.patch(
        "nauru-b",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"residency.io/abandon-clusters": "msk-1"}}}),
        ),
    )
    .await
    .unwrap();
    eventually("nauru-b released", T, || async {
        match api.get_opt("nauru-b").await {
            Ok(None) => Ok(()),
            other => Err(format!(
                "{:?}",
                other.map(|o| o.map(|o| o.metadata.finalizers))
            )),
        }
    })
    .await;
    let abandoned = event_reasons(&env.mgmt, ns, &uids)
        .await
        .into_iter()
        .find(|(r, _)| r == "CopyAbandoned")
        .expect("a CopyAbandoned Event");
    assert!(
        abandoned.1.contains("msk-1") && abandoned.1.contains("Deployment nauru-b"),
        "{abandoned:?}"
    );

    // msk-1 comes back: nauru-a is cleaned up there; nauru-b's copy was left, as recorded
    let back = Instant::now();
    common::fleet_sh(&["up"]);
    eventually("nauru-a cleaned up", T, || async {
        match api.get_opt("nauru-a").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.is_some()))),
        }
    })
    .await;
    eprintln!("cleanup finished {:?} after msk-1 was back", back.elapsed());
    assert_eq!(placed_on(&msk1, ns, "nauru-a").await, 0);
    assert_eq!(
        placed_on(&msk1, ns, "nauru-b").await,
        1,
        "abandoned, not removed"
    );
    cleanup(&env, ns, &[], &["nauru-moscow"]).await;
}

#[tokio::test]
async fn a_policy_edit_while_a_target_is_down_relocates_without_loss() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "faults-edit-down";
    namespace(&env.mgmt, ns).await;
    let (zrh1, zrh2, msk1) = (
        env.members[0].1.clone(),
        env.members[1].1.clone(),
        env.members[2].1.clone(),
    );
    policy(
        &env.mgmt,
        "palau",
        &["PW"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &storage(ns, "palau", &["PW"], None))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "palau", "Ready on msk-1", |rw| {
        ready_on(rw, &["msk-1"])
    })
    .await;
    let on_msk = wait_claims(&msk1, ns, "palau", 2).await;
    let marks = [audit_mark("zrh-1"), audit_mark("zrh-2")];

    common::fleet_sh(&["stop", "zrh-2-kube-apiserver"]);
    let edit = Instant::now();
    policy(
        &env.mgmt,
        "palau",
        &["PW"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    // zrh-2 is allowed but not ready: the workload moves to zrh-1, make before break
    wait_workload(&env.mgmt, ns, "palau", "Ready on zrh-1, left msk-1", |rw| {
        ready_on(rw, &["zrh-1"]) && placement(rw, "msk-1").is_some_and(|p| p.state == "Retained")
    })
    .await;
    eprintln!("relocated to zrh-1 {:?} after the edit", edit.elapsed());
    assert_retained(&msk1, ns, "palau", &on_msk).await;
    wait_claims(&zrh1, ns, "palau", 2).await;

    let back = Instant::now();
    common::fleet_sh(&["up"]);
    wait_workload(&env.mgmt, ns, "palau", "Ready on zrh-1 and zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    eprintln!("zrh-2 placed {:?} after it was back", back.elapsed());
    wait_claims(&zrh2, ns, "palau", 2).await;
    for (name, mark) in ["zrh-1", "zrh-2"].iter().zip(&marks) {
        let deletes = operator_deletes(mark, ns).await;
        assert!(deletes.is_empty(), "{name} stayed allowed: {deletes:?}");
    }
    cleanup(&env, ns, &["palau"], &["palau"]).await;
}

/// Compacts the fleet's etcd at its current revision, so watches that resume from an older
/// resourceVersion get 410 Gone and must list again.
fn compact_etcd() -> String {
    let base = std::env::var("RESIDENCY_FLEET_PORT_BASE").unwrap_or_else(|_| "17400".into());
    let url = format!("http://127.0.0.1:{base}/v3/kv");
    let post = |path: &str, body: &str| {
        let out = std::process::Command::new("curl")
            .args(["-fsS", "-X", "POST", &format!("{url}/{path}"), "-d", body])
            .output()
            .expect("curl");
        assert!(out.status.success(), "etcd {path}: {out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("etcd answers JSON")
    };
    let revision = post("range", r#"{"key":"AA=="}"#)["header"]["revision"]
        .as_str()
        .expect("revision")
        .to_string();
    post(
        "compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    );
    revision
}

#[tokio::test]
async fn the_management_cluster_restarted_mid_relocation_with_watches_expired_converges() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "faults-mgmt-restart";
    namespace(&env.mgmt, ns).await;
    let (zrh1, zrh2, msk1) = (
        env.members[0].1.clone(),
        env.members[1].1.clone(),
        env.members[2].1.clone(),
    );
    let moscow = json!([{"country": "RU", "region": "moscow"}]);
    policy(&env.mgmt, "niue", &["NU"], moscow, "Enforce").await;
    apply_workload(&env.mgmt, &storage(ns, "niue", &["NU"], None))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "niue", "Ready on msk-1", |rw| {
        ready_on(rw, &["msk-1"])
    })
    .await;
    let on_msk = wait_claims(&msk1, ns, "niue", 2).await;
    let marks = [audit_mark("zrh-1"), audit_mark("zrh-2")];

    // the relocation starts; right after its first member write the management cluster goes
    // away, and etcd is compacted so the operator's watches cannot resume where they were
    policy(
        &env.mgmt,
        "niue",
        &["NU"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    first_write(&[&zrh1, &zrh2], ns).await;
    common::fleet_sh(&["stop", "mgmt-kube-apiserver"]);
    let revision = compact_etcd();
    eprintln!("mgmt stopped, etcd compacted at revision {revision}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    common::fleet_sh(&["up"]);
    let back = Instant::now();
    wait_workload(&env.mgmt, ns, "niue", "relocated, msk-1 retained", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
            && placement(rw, "msk-1").is_some_and(|p| p.state == "Retained")
    })
    .await;
    eprintln!(
        "converged {:?} after the management cluster was back",
        back.elapsed()
    );
    assert_retained(&msk1, ns, "niue", &on_msk).await;
    for m in [&zrh1, &zrh2] {
        wait_claims(m, ns, "niue", 2).await;
    }
    for (name, mark) in ["zrh-1", "zrh-2"].iter().zip(&marks) {
        let deletes = operator_deletes(mark, ns).await;
        assert!(deletes.is_empty(), "{name} stayed allowed: {deletes:?}");
    }
    cleanup(&env, ns, &["niue"], &["niue"]).await;
}

#[tokio::test]
async fn a_missing_secret_source_changes_nothing_until_it_exists() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "faults-secret-source";
    namespace(&env.mgmt, ns).await;
    let _ = Api::<Secret>::namespaced(env.mgmt.clone(), ns)
        .delete("late-source", &DeleteParams::default())
        .await;
    policy(
        &env.mgmt,
        "tokelau-zurich",
        &["TK"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let body = json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "tokelau", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["TK"], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tokelau"}, "data": {"k": "v"}}
        ], "secrets": [{"name": "late", "fromSecret": "late-source"}]}
    });
    apply_workload(&env.mgmt, &body).await.unwrap();
    let rw = wait_workload(&env.mgmt, ns, "tokelau", "SecretSourceUnavailable", |rw| {
        condition(rw, "Ready").is_some_and(|c| c.1 == "SecretSourceUnavailable")
    })
    .await;
    let (status, _, message) = condition(&rw, "Ready").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("Secret late-source") && message.contains(ns),
        "{message}"
    );
    for (name, c) in &env.members {
        assert!(
            !namespace_exists(c, ns).await,
            "{name}: nothing is written while the source is missing"
        );
    }
    let source: Secret = serde_json::from_value(json!({
        "metadata": {"name": "late-source", "namespace": ns}, "stringData": {"k": "v"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(env.mgmt.clone(), ns)
        .patch(
            "late-source",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&source),
        )
        .await
        .unwrap();
    let created = Instant::now();
    wait_workload(
        &env.mgmt,
        ns,
        "tokelau",
        "Ready once the source exists",
        |rw| ready_on(rw, &["zrh-1", "zrh-2"]),
    )
    .await;
    eprintln!(
        "placed {:?} after the source Secret was created",
        created.elapsed()
    );
    assert!(
        Api::<Secret>::namespaced(env.members[0].1.clone(), ns)
            .get_opt("late")
            .await
            .unwrap()
            .is_some()
    );
    cleanup(&env, ns, &["tokelau"], &["tokelau-zurich"]).await;
}

#[tokio::test]
async fn a_member_cluster_holding_data_is_not_forgotten_when_deleted() {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    // a namespace of its own each run (an earlier run's may still be terminating)
    let ns = &common::unique("faults-member-delete");
    let msk1 = env.members[2].1.clone();
    // data of Norfolk Island on msk-1, made before the policy forbids it there (after, msk-1's
    // admission policy would refuse it)
    namespace(&msk1, ns).await;
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "left", "labels": {"country.residency.io/NF": "true"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "none",
                 "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(msk1.clone(), ns)
        .patch(
            "left",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&pvc),
        )
        .await
        .unwrap();
    policy(
        &env.mgmt,
        "norfolk-zurich",
        &["NF"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let policies: Api<residency_operator::api::ResidencyPolicy> = Api::all(env.mgmt.clone());
    let reported = || async {
        let p = policies
            .get("norfolk-zurich")
            .await
            .map_err(|e| e.to_string())?;
        let v = p.status.map(|s| s.violations).unwrap_or_default();
        if v.iter().any(|v| v.cluster == "msk-1" && v.name == "left") {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    };
    eventually("the PVC on msk-1 is a violation", T, reported).await;

    // deleting msk-1 waits, saying what is still there; the copy stays reported
    let clusters: Api<MemberCluster> = Api::all(env.mgmt.clone());
    clusters
        .delete("msk-1", &DeleteParams::default())
        .await
        .unwrap();
    let blocked = eventually("msk-1 deletion blocked", T, || async {
        let mc = clusters.get("msk-1").await.map_err(|e| e.to_string())?;
        let c = mc.status.map(|s| s.conditions).unwrap_or_default();
        c.into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "DeletionBlocked")
            .map(|c| c.message)
            .ok_or_else(|| "not blocked yet".to_string())
    })
    .await;
    assert!(
        blocked.contains(&format!("PersistentVolumeClaim {ns}/left (NF)"))
            && blocked.contains("residency.io/forget-data=true"),
        "{blocked}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        clusters.get_opt("msk-1").await.unwrap().is_some(),
        "still waiting"
    );
    eventually("still a violation", T, reported).await;

    // a person says to forget it: recorded, and msk-1 goes
    clusters
        .patch(
            "msk-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"residency.io/forget-data": "true"}}}),
            ),
        )
        .await
        .unwrap();
    eventually("msk-1 deleted", T, || async {
        match clusters.get_opt("msk-1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.is_some()))),
        }
    })
    .await;
    let forgotten = Api::<Event>::namespaced(env.mgmt.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DataForgotten"))
        .filter_map(|e| e.message)
        .find(|m| m.contains(&format!("{ns}/left")));
    assert!(
        forgotten.is_some(),
        "a DataForgotten Event names what was forgotten"
    );
    eventually("forgotten, as the person said", T, || async {
        match reported().await {
            Ok(()) => Err("still reported".to_string()),
            Err(_) => Ok(()),
        }
    })
    .await;
    // ... but not silently: the policy keeps the copies as unverifiable, and so does the report
    let kept = policies
        .get("norfolk-zurich")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    let entry = kept
        .forgotten
        .iter()
        .find(|f| f.cluster == "msk-1")
        .unwrap_or_else(|| panic!("status.forgotten names msk-1: {:?}", kept.forgotten));
    assert_eq!(
        (entry.objects, entry.countries.as_slice()),
        (1, &["NF".to_string()][..])
    );
    assert!(
        entry.message.contains(&format!("{ns}/left")),
        "{}",
        entry.message
    );
    let compliant = kept
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        compliant.contains("Unverifiable: 1 object(s) on msk-1"),
        "{compliant}"
    );
    let report = common::report();
    assert!(
        report
            .lines()
            .any(|l| l.starts_with("  FORGOTTEN msk-1: 1 object(s) since")
                && l.contains(&format!("{ns}/left"))),
        "{report}"
    );

    // re-added, msk-1 is rediscovered from what it holds
    let back = Instant::now();
    common::apply_path(&env.mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&env.mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    eventually(
        "the PVC on the re-added msk-1 is reported again",
        T,
        reported,
    )
    .await;
    eprintln!("rediscovered {:?} after msk-1 was re-added", back.elapsed());
    eventually(
        "the forgotten entry goes once msk-1 is watched again",
        T,
        || async {
            let p = policies
                .get("norfolk-zurich")
                .await
                .map_err(|e| e.to_string())?;
            let f = p.status.map(|s| s.forgotten).unwrap_or_default();
            if f.is_empty() {
                Ok(())
            } else {
                Err(format!("{f:?}"))
            }
        },
    )
    .await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(msk1.clone())
        .delete(ns, &DeleteParams::default())
        .await;
    let _ = policies
        .delete("norfolk-zurich", &DeleteParams::default())
        .await;
}
