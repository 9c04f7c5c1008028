//! The seed scenario end to end, through the real operator binary on the local fleet: the APAC
//! workloads first run on msk-1; apac-to-zurich is edited to CH/zurich; they end up Running on
//! zrh-1 and zrh-2 on eu-central-2 nodes, the msk-1 copy is removed only after the new ones
//! are Ready, and the msk-1 volume is retained and flagged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::operator::{self, delete_and_wait};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, ResourceExt};
use residency_operator::api::{ResidencyPolicy, ResidentWorkload};

const NS: &str = "threat-intel";
const STORE: &str = "apac-threat-store";
const ANALYSIS: &str = "apac-threat-analysis";
const T: Duration = Duration::from_secs(120);

fn cond<'a>(
    rw: &'a ResidentWorkload,
    t: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    rw.status.as_ref()?.conditions.iter().find(|c| c.type_ == t)
}

/// Waits until a workload is Ready with exactly these targets.
async fn ready_on(api: &Api<ResidentWorkload>, name: &str, targets: &[&str]) -> ResidentWorkload {
    eventually(&format!("{name} Ready on {targets:?}"), T, || async {
        let rw = api.get(name).await.map_err(|e| e.to_string())?;
        let s = rw.status.clone().unwrap_or_default();
        let ready = cond(&rw, "Ready").is_some_and(|c| c.status == "True");
        let settled = cond(&rw, "Reconciling").is_some_and(|c| c.status == "False");
        if ready && settled && s.targets == targets {
            Ok(rw)
        } else {
            Err(format!(
                "targets {:?}, conditions {:?}",
                s.targets,
                s.conditions
                    .iter()
                    .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

/// True when both seed workloads run fully on `cluster`.
async fn running_on(client: &Client) -> bool {
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let s: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let dep_ok = matches!(d.get_opt("malware-analysis").await, Ok(Some(d))
        if d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0) >= 2);
    let sts_ok = matches!(s.get_opt("sample-store").await, Ok(Some(s))
        if s.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0) >= 1);
    dep_ok && sts_ok
}

/// The seed objects' readiness on a cluster, for diagnostics.
async fn describe(client: &Client) -> String {
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let s: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    let dep = d
        .get_opt("malware-analysis")
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status)
        .map(|s| {
            format!(
                "deployment available {:?} ready {:?}",
                s.available_replicas, s.ready_replicas
            )
        });
    let sts = s
        .get_opt("sample-store")
        .await
        .ok()
        .flatten()
        .and_then(|s| s.status)
        .map(|s| format!("statefulset ready {:?}", s.ready_replicas));
    format!("{dep:?} {sts:?}")
}

/// True when neither seed workload object is left on `client`'s cluster (a failed call is
/// "not gone").
async fn gone_from(client: &Client) -> bool {
    let d: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let s: Api<StatefulSet> = Api::namespaced(client.clone(), NS);
    matches!(d.get_opt("malware-analysis").await, Ok(None))
        && matches!(s.get_opt("sample-store").await, Ok(None))
}

#[tokio::test]
async fn seed_scenario_relocates_apac_data_to_zurich_make_before_break() {
    let fleet = Fleet::from_env();
    let op = operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    let zrh1 = fleet.member("zrh-1").await;
    let zrh2 = fleet.member("zrh-2").await;
    let msk1 = fleet.member("msk-1").await;

    // an earlier run's namespaces may still be terminating on the members
    for client in [&zrh1, &zrh2, &msk1] {
        common::namespace_not_terminating(client, NS, Duration::from_secs(180)).await;
    }

    // every member's audit log from here on: no write of the operator may be refused by a
    // member's admission policy (prevention is on, by default, throughout)
    let marks: Vec<_> = ["zrh-1", "zrh-2", "msk-1"]
        .iter()
        .map(|c| (*c, common::audit_mark(c)))
        .collect();

    // 1. the seed: clusters, policies (APAC still on RU/moscow), workloads
    apply_path(&mgmt, "examples/seed").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), NS);
    ready_on(&workloads, STORE, &["msk-1"]).await;
    ready_on(&workloads, ANALYSIS, &["msk-1"]).await;
    assert!(running_on(&msk1).await, "the workloads run on msk-1 first");
    assert!(
        gone_from(&zrh1).await && gone_from(&zrh2).await,
        "nothing on zrh-* yet"
    );

    // 2. watch the order: Ready on both Zurich clusters, and the msk-1 copy removed
    let stop = Arc::new(AtomicBool::new(false));
    // Each sample reads msk-1 first, then zrh-1 and zrh-2. Readiness does not regress, so if
    // the old copy was removed only after the new ones were Ready, every sample that finds
    // msk-1 empty also finds both Zurich copies Ready. A removal before readiness shows up as a
    // sample with msk-1 empty and a Zurich copy not Ready.
    let observer = {
        let (stop, zrh1, zrh2, msk1) = (stop.clone(), zrh1.clone(), zrh2.clone(), msk1.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let (mut ready_at, mut gone_at) = (None, None);
            let mut violations = Vec::new();
            let mut samples = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let gone = gone_from(&msk1).await;
                let ready = running_on(&zrh1).await && running_on(&zrh2).await;
                samples += 1;
                if gone && gone_at.is_none() {
                    gone_at = Some(start.elapsed());
                }
                if ready && ready_at.is_none() {
                    ready_at = Some(start.elapsed());
                }
                if gone && !ready {
                    violations.push(format!(
                        "at {:?}: msk-1 empty, zrh-1 {}, zrh-2 {}",
                        start.elapsed(),
                        describe(&zrh1).await,
                        describe(&zrh2).await
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ready_at, gone_at, violations, samples)
        })
    };

    // 3. the edit: apac-to-zurich allows only CH/zurich
    let edited = Instant::now();
    apply_path(&mgmt, "examples/seed-relocated").await;
    let store = ready_on(&workloads, STORE, &["zrh-1", "zrh-2"]).await;
    let analysis = ready_on(&workloads, ANALYSIS, &["zrh-1", "zrh-2"]).await;
    eventually("msk-1 copy removed", T, || async {
        if gone_from(&msk1).await {
            Ok(())
        } else {
            Err("still on msk-1".to_string())
        }
    })
    .await;
    let relocation = edited.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (ready_at, gone_at, violations, samples) = observer.await.unwrap();
    eprintln!(
        "relocation: first seen Ready on zrh-1 and zrh-2 at {ready_at:?}, msk-1 copy first seen removed at {gone_at:?}, all settled {relocation:?} after the edit ({samples} samples)"
    );
    assert!(
        ready_at.is_some() && gone_at.is_some(),
        "the observer saw the relocation"
    );
    assert!(
        violations.is_empty(),
        "the old copy was removed before the new ones were Ready:\n{}",
        violations.join("\n")
    );

    // 4. Pods Running on eu-central-2 nodes, PVCs Bound there
    for (name, client) in [("zrh-1", &zrh1), ("zrh-2", &zrh2)] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
        let nodes: Api<Node> = Api::all(client.clone());
        let list = pods
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=residency-operator"))
            .await
            .unwrap();
        assert_eq!(list.items.len(), 3, "{name}: 2 analysis pods + 1 store pod");
        for p in list.items {
            assert_eq!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Running"),
                "{name}: {}",
                p.name_any()
            );
            assert!(
                p.labels().contains_key("country.residency.io/AU"),
                "pods carry the country labels"
            );
            let node = nodes
                .get(p.spec.as_ref().unwrap().node_name.as_ref().unwrap())
                .await
                .unwrap();
            assert_eq!(
                node.labels()
                    .get("topology.kubernetes.io/region")
                    .map(String::as_str),
                Some("eu-central-2")
            );
        }
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
        for pvc in ["sample-index", "samples-sample-store-0"] {
            let p = pvcs.get(pvc).await.unwrap();
            assert_eq!(
                p.status.and_then(|s| s.phase).as_deref(),
                Some("Bound"),
                "{name}: {pvc}"
            );
            assert_eq!(
                p.spec.and_then(|s| s.storage_class_name).as_deref(),
                Some("standard")
            );
        }
    }

    // 5. msk-1: the volumes are retained, labelled, still Bound, and flagged in status
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(msk1.clone(), NS);
    for pvc in ["sample-index", "samples-sample-store-0"] {
        let p = pvcs
            .get(pvc)
            .await
            .unwrap_or_else(|e| panic!("msk-1 {pvc} must be kept: {e}"));
        assert_eq!(
            p.labels().get("residency.io/retained").map(String::as_str),
            Some("true")
        );
        assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Bound"));
    }
    let s = store.status.clone().unwrap();
    let msk = s
        .placements
        .iter()
        .find(|p| p.cluster == "msk-1")
        .expect("msk-1 placement of the store");
    assert_eq!(msk.state, "Retained");
    let mut names: Vec<_> = msk.objects.iter().map(|o| o.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["sample-index", "samples-sample-store-0"]);
    assert!(
        !analysis
            .status
            .clone()
            .unwrap()
            .placements
            .iter()
            .any(|p| p.cluster == "msk-1")
    );

    // 6. conditions
    let compliant = cond(&store, "Compliant").unwrap();
    assert_eq!(
        (compliant.status.as_str(), compliant.reason.as_str()),
        ("False", "ForbiddenCopies")
    );
    assert!(
        compliant.message.contains("msk-1 (retained volumes)"),
        "{}",
        compliant.message
    );
    assert_eq!(cond(&analysis, "Compliant").unwrap().status, "True");
    for rw in [&store, &analysis] {
        assert_eq!(cond(rw, "Stalled").unwrap().status, "False");
        assert_eq!(
            rw.status.as_ref().unwrap().observed_generation,
            rw.metadata.generation
        );
        let msk1_reason = &rw
            .status
            .as_ref()
            .unwrap()
            .clusters
            .iter()
            .find(|c| c.name == "msk-1")
            .unwrap()
            .reason;
        assert_eq!(
            msk1_reason,
            "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"
        );
    }

    // 7. events on the management cluster
    let events: Api<Event> = Api::namespaced(mgmt.clone(), NS);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(ANALYSIS))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Placed") && reasons.iter().any(|r| r == "Evicted"),
        "{reasons:?}"
    );
    // nobody touched the placed objects: comparing them with what was applied finds nothing
    // (no false drift from fields the API server defaults or normalizes), for either workload
    let drift_events: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("DriftCorrected"))
        .filter_map(|e| e.note)
        .collect();
    assert!(drift_events.is_empty(), "{drift_events:?}");

    // 8. the location proof in status, and the report
    let zrh1_store = s.placements.iter().find(|p| p.cluster == "zrh-1").unwrap();
    let ev = zrh1_store.evidence.clone().expect("location evidence");
    assert_eq!(ev.node_regions, ["eu-central-2"]);
    assert_eq!(ev.volume_regions, ["eu-central-2"]);
    assert!(ev.outside.is_empty(), "{:?}", ev.outside);
    let report = common::report();
    eprintln!("{report}");
    assert!(report.contains("AU (Australia)"), "{report}");
    for line in [
        "  zrh-1    CH/zurich      verified   nodes eu-central-2   volumes eu-central-2",
        "VIOLATION msk-1: threat-intel/apac-threat-store (Retained) holds data where it is forbidden",
    ] {
        assert!(report.contains(line), "missing {line:?} in\n{report}");
    }

    // the policy reports the retained volumes as violations
    let policies_api: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    let apac = eventually("apac-to-zurich reports its violations", T, || async {
        let p = policies_api
            .get("apac-to-zurich")
            .await
            .map_err(|e| e.to_string())?;
        let s = p.status.clone().unwrap_or_default();
        // the copies on msk-1 count as violations too until the policy sees them removed:
        // wait for the retained volumes themselves
        let retained = s
            .violations
            .iter()
            .filter(|v| v.cluster == "msk-1")
            .filter(|v| ["sample-index", "samples-sample-store-0"].contains(&v.name.as_str()))
            .count();
        if s.violation_count == 2 && retained == 2 {
            Ok(s)
        } else {
            Err(format!("{:?}", s.violations))
        }
    })
    .await;
    let names: Vec<_> = apac
        .violations
        .iter()
        .map(|v| (v.cluster.as_str(), v.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("msk-1", "sample-index"),
            ("msk-1", "samples-sample-store-0")
        ]
    );
    assert!(
        apac.conditions
            .iter()
            .any(|c| c.type_ == "Compliant" && c.status == "False" && c.reason == "Violations")
    );

    // prevention: msk-1's API server now refuses new APAC data, and no placement of the
    // operator was refused on the way (its dry-run probes of the admission policies aside)
    eventually("msk-1 refuses new AU data", T, || async {
        let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!(
            {"metadata": {"name": "probe", "labels": {"country.residency.io/AU": "true"}}}))
        .unwrap();
        let pp = kube::api::PostParams {
            dry_run: true,
            ..Default::default()
        };
        match Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(msk1.clone(), "default")
            .create(&pp, &cm)
            .await
        {
            Err(kube::Error::Api(s))
                if s.code == 403
                    && s.message
                        .contains("residency: data of AU may not be stored on msk-1") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for (cluster, mark) in &marks {
        let Some(mark) = mark else { continue };
        let refused: Vec<String> = common::audit_writes_since(mark)
            .await
            .into_iter()
            .filter(|w| w.user_agent.starts_with("residency-operator") && w.code == 403)
            // the admission probe (a dry-run create, refused while a policy is in force), in
            // `default` or the joined identity's namespace
            .filter(|w| {
                !(w.resource == "configmaps"
                    && (w.namespace == "default" || w.namespace == "residency-system"))
            })
            .map(|w| format!("{} {} {}/{}", w.verb, w.resource, w.namespace, w.name))
            .collect();
        assert!(
            refused.is_empty(),
            "{cluster} refused writes of the operator: {refused:?}"
        );
    }

    // the report and the members themselves agree on where each country's data is
    let pairs =
        common::report_agrees_with_members(&fleet, &["zrh-1", "zrh-2", "msk-1"], "relocated").await;
    eprintln!("report and members agree on {pairs} (country, cluster) pairs after the relocation");

    // 9. metrics are served
    let metrics = op.get("/metrics").await;
    assert!(
        metrics.contains("residency_member_writes_total"),
        "{metrics}"
    );
    // ... and the compliance gauges come from the inventory: AU data on msk-1 (the retained
    // volumes) is forbidden, on zrh-1 it is not
    let gauge = |text: &str, name: &str, cluster: &str| -> Option<i64> {
        let key = format!("{name}{{cluster=\"{cluster}\",country=\"AU\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let metrics = eventually("the inventory gauges", T, || async {
        let m = op.get("/metrics").await;
        // both members' gauges come from their own probes: wait for both
        match (
            gauge(&m, "residency_copies_forbidden", "msk-1"),
            gauge(&m, "residency_copies", "zrh-1"),
        ) {
            (Some(n), Some(z)) if n > 0 && z > 0 => Ok(m),
            other => Err(format!("msk-1 AU forbidden, zrh-1 AU copies: {other:?}")),
        }
    })
    .await;
    assert_eq!(
        gauge(&metrics, "residency_copies_forbidden", "zrh-1"),
        Some(0),
        "{metrics}"
    );
    assert!(
        gauge(&metrics, "residency_copies", "zrh-1").is_some_and(|n| n > 0),
        "{metrics}"
    );

    // cleanup: deleting the workloads removes them everywhere (volumes retained)
    delete_and_wait(&workloads, STORE, T).await;
    delete_and_wait(&workloads, ANALYSIS, T).await;
    // the store's retained volumes on msk-1 outlive it: still violations, still in the report
    let policies: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    let orphans = eventually(
        "msk-1's volumes reported after the workload is gone",
        T,
        || async {
            let p = policies
                .get("apac-to-zurich")
                .await
                .map_err(|e| e.to_string())?;
            let v = p.status.map(|s| s.violations).unwrap_or_default();
            let names: Vec<(String, String)> = v
                .iter()
                .filter(|v| v.message.contains("which no longer exists"))
                .map(|v| (v.cluster.clone(), v.name.clone()))
                .collect();
            if names.len() == 2 {
                Ok(names)
            } else {
                Err(format!("{v:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        orphans,
        [
            ("msk-1".to_string(), "sample-index".to_string()),
            ("msk-1".to_string(), "samples-sample-store-0".to_string())
        ]
    );
    // the report reads msk-1's inventory (MemberCluster status, refreshed every probe)
    let text = eventually("the report lists the volumes left behind", T, || async {
        let text = common::report();
        let listed = text
            .contains("PersistentVolumeClaim threat-intel/sample-index (no workload's record)")
            && text.contains(
                "VIOLATION msk-1: retained PersistentVolumeClaim threat-intel/sample-index",
            );
        if listed { Ok(text) } else { Err(text) }
    })
    .await;
    assert!(
        text.contains("18 countries, 36 violation(s)."),
        "every APAC country, both volumes: {text}"
    );
    let pairs = common::report_agrees_with_members(
        &fleet,
        &["zrh-1", "zrh-2", "msk-1"],
        "workloads deleted",
    )
    .await;
    eprintln!("report and members agree on {pairs} pairs after the workloads were deleted");
    eprintln!(
        "report after the workloads were deleted:\n{}",
        text.lines().take(6).collect::<Vec<_>>().join("\n")
    );
    for client in [&zrh1, &zrh2] {
        assert!(
            gone_from(client).await,
            "deleting the workload removes what it placed"
        );
        let p = Api::<PersistentVolumeClaim>::namespaced(client.clone(), NS)
            .get("sample-index")
            .await
            .unwrap();
        assert_eq!(
            p.labels().get("residency.io/retained").map(String::as_str),
            Some("true")
        );
    }
    for p in [
        "europe-to-zurich",
        "north-america-to-zurich",
        "apac-to-zurich",
    ] {
        let _ = policies.delete(p, &DeleteParams::default()).await;
    }
    for client in [&zrh1, &zrh2, &msk1] {
        let _ = Api::<Namespace>::all(client.clone())
            .delete(NS, &DeleteParams::default())
            .await;
    }
}
