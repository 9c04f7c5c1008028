//! The operator's rules on the local fleet, through the real binary: default deny, conflicts,
//! unverified clusters, an unreachable member during a relocation, Audit mode and invalid specs.
//! Each test uses its own countries, policies and namespace; tests that change the member
//! clusters themselves take a lock.

mod common;

use std::time::Duration;

use common::operator::{self, delete_and_wait};
use common::rules::*;
use common::{Fleet, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use residency_operator::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use serde_json::json;
use tokio::sync::RwLock;

/// Tests that stop or relabel members hold it for writing; the others for reading.
static CLUSTER_LOCK: RwLock<()> = RwLock::const_new(());

#[tokio::test]
async fn a_country_no_policy_governs_is_placed_nowhere() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-default-deny";
    namespace(&env.mgmt, ns).await;
    apply_workload(&env.mgmt, &processing(ns, "bhutan", &["BT"]))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "bhutan", "NoPolicyForCountry", |rw| {
        condition(rw, "Compliant").is_some_and(|c| c.1 == "NoPolicyForCountry")
    })
    .await;
    let (status, _, message) = condition(&rw, "Compliant").unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("no policy governs BT"), "{message}");
    assert_eq!(condition(&rw, "Ready").unwrap().0, "False");
    assert_eq!(condition(&rw, "Stalled").unwrap().0, "True");
    for (name, c) in &env.members {
        assert!(
            !namespace_exists(c, ns).await,
            "{name}: nothing may be written for an ungoverned country"
        );
    }
    cleanup(&env, ns, &["bhutan"], &[]).await;
}

#[tokio::test]
async fn conflicting_policies_place_nothing_and_are_named() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-conflict";
    namespace(&env.mgmt, ns).await;
    policy(
        &env.mgmt,
        "fiji-legacy",
        &["FJ"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    policy(
        &env.mgmt,
        "tonga-zurich",
        &["TO"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &processing(ns, "pacific", &["FJ", "TO"]))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "pacific", "PolicyConflict", |rw| {
        condition(rw, "Compliant").is_some_and(|c| c.1 == "PolicyConflict")
    })
    .await;
    let message = condition(&rw, "Compliant").unwrap().2;
    assert!(
        message.contains("fiji-legacy (FJ) allows msk-1"),
        "{message}"
    );
    assert!(
        message.contains("tonga-zurich (TO) allows zrh-1, zrh-2"),
        "{message}"
    );
    for (name, c) in &env.members {
        assert!(
            !namespace_exists(c, ns).await,
            "{name}: nothing may be placed for a conflict"
        );
    }
    cleanup(&env, ns, &["pacific"], &["fiji-legacy", "tonga-zurich"]).await;
}

#[tokio::test]
async fn an_unverified_cluster_receives_nothing_new() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "rules-unverified";
    namespace(&env.mgmt, ns).await;
    let zrh2 = &env.members[1].1;
    let relabel = |region: &'static str| set_region(zrh2, "zrh-2-node-b", region);
    relabel("us-east-1").await;
    let clusters: Api<MemberCluster> = Api::all(env.mgmt.clone());
    eventually("zrh-2 unverified", T, || async {
        let mc = clusters.get("zrh-2").await.map_err(|e| e.to_string())?;
        let c = mc.status.map(|s| s.conditions).unwrap_or_default();
        match c.iter().find(|c| c.type_ == "LocationVerified") {
            Some(c)
                if c.status == "False"
                    && c.reason == "NodeOutsideAttestedRegions"
                    && c.message.contains("zrh-2-node-b (us-east-1)") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    policy(
        &env.mgmt,
        "samoa-zurich",
        &["WS"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &processing(ns, "samoa", &["WS"]))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "samoa", "Ready on zrh-1 only", |rw| {
        ready_on(rw, &["zrh-1"])
    })
    .await;
    let zrh2_reason = &rw
        .status
        .as_ref()
        .unwrap()
        .clusters
        .iter()
        .find(|c| c.name == "zrh-2")
        .unwrap()
        .reason;
    assert!(
        zrh2_reason.contains("location not verified"),
        "{zrh2_reason}"
    );
    assert_eq!(
        placed_on(zrh2, ns, "samoa").await,
        0,
        "an unverified cluster receives no new data"
    );
    assert_eq!(placed_on(&env.members[0].1, ns, "samoa").await, 1);

    // the region is fixed: the cluster is verified again and, event-driven, receives the workload
    relabel("eu-central-2").await;
    wait_workload(&env.mgmt, ns, "samoa", "Ready on zrh-1 and zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    assert_eq!(placed_on(zrh2, ns, "samoa").await, 1);
    cleanup(&env, ns, &["samoa"], &["samoa-zurich"]).await;
}

#[tokio::test]
async fn an_unreachable_member_keeps_its_copy_until_it_is_back() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "rules-unreachable";
    namespace(&env.mgmt, ns).await;
    let msk1 = &env.members[2].1;
    policy(
        &env.mgmt,
        "vanuatu",
        &["VU"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &processing(ns, "vanuatu", &["VU"]))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "vanuatu", "Ready on msk-1", |rw| {
        ready_on(rw, &["msk-1"])
    })
    .await;
    assert_eq!(placed_on(msk1, ns, "vanuatu").await, 1);

    // msk-1's apiserver goes away, then the policy moves VU to Zurich
    let run = common::fleet_sh;
    run(&["stop", "msk-1-kube-apiserver"]);
    policy(
        &env.mgmt,
        "vanuatu",
        &["VU"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let rw = wait_workload(
        &env.mgmt,
        ns,
        "vanuatu",
        "on zrh-1, zrh-2 with msk-1 Unknown",
        |rw| {
            let s = rw.status.clone().unwrap_or_default();
            s.targets == ["zrh-1", "zrh-2"]
                && s.placements
                    .iter()
                    .filter(|p| p.cluster.starts_with("zrh"))
                    .all(|p| p.state == "Ready")
                && s.placements
                    .iter()
                    .any(|p| p.cluster == "msk-1" && p.state == "Unknown")
        },
    )
    .await;
    let msk = rw
        .status
        .as_ref()
        .unwrap()
        .placements
        .iter()
        .find(|p| p.cluster == "msk-1")
        .unwrap()
        .clone();
    assert!(
        msk.message.contains("Cannot reach msk-1") && msk.message.contains("kept"),
        "{}",
        msk.message
    );
    let (status, reason, _) = condition(&rw, "Compliant").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ForbiddenCopies")
    );

    // back: the relocation finishes
    run(&["up"]);
    wait_workload(&env.mgmt, ns, "vanuatu", "msk-1 copy removed", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
            && !rw
                .status
                .as_ref()
                .unwrap()
                .placements
                .iter()
                .any(|p| p.cluster == "msk-1")
    })
    .await;
    assert_eq!(placed_on(msk1, ns, "vanuatu").await, 0);
    cleanup(&env, ns, &["vanuatu"], &["vanuatu"]).await;
}

#[tokio::test]
async fn audit_mode_writes_nothing_to_members() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-audit";
    namespace(&env.mgmt, ns).await;
    policy(
        &env.mgmt,
        "nauru-audit",
        &["NR"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Audit",
    )
    .await;
    apply_workload(&env.mgmt, &processing(ns, "nauru", &["NR"]))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "nauru", "AuditOnly", |rw| {
        condition(rw, "Ready").is_some_and(|c| c.1 == "AuditOnly")
    })
    .await;
    let s = rw.status.clone().unwrap();
    assert!(s.targets.is_empty(), "Audit mode places nothing");
    assert!(s.placements.is_empty());
    let verdicts: Vec<_> = s
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.verdict.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("msk-1", "Forbidden"),
            ("zrh-1", "Target"),
            ("zrh-2", "Target")
        ]
    );
    assert!(
        condition(&rw, "Ready")
            .unwrap()
            .2
            .contains("nothing is written")
    );
    // give the operator time to do something wrong, then check the member apiservers
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, c) in &env.members {
        assert!(
            !namespace_exists(c, ns).await,
            "{name}: Audit must not write"
        );
        assert_eq!(placed_on(c, "default", "nauru").await, 0);
    }
    if let Ok(dir) = std::env::var("RESIDENCY_FLEET_DIR") {
        // the members' audit logs: no write by the operator in this namespace
        for name in ["zrh-1", "zrh-2", "msk-1"] {
            let log =
                std::fs::read_to_string(format!("{dir}/logs/{name}-audit.log")).unwrap_or_default();
            let writes = log
                .lines()
                .filter(|l| l.contains("\"userAgent\":\"residency-operator/"))
                .filter(|l| {
                    l.contains(&format!("\"namespace\":\"{ns}\""))
                        || l.contains(&format!("\"name\":\"{ns}\""))
                })
                .count();
            assert_eq!(
                writes, 0,
                "{name}: the audit log shows operator writes for {ns}"
            );
        }
    }
    cleanup(&env, ns, &["nauru"], &["nauru-audit"]).await;
}

#[tokio::test]
async fn an_invalid_workload_is_refused_and_nothing_is_applied() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-invalid";
    namespace(&env.mgmt, ns).await;
    policy(
        &env.mgmt,
        "kiribati",
        &["KI"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;

    // a forbidden kind is refused by the API server: nothing reaches the operator
    let mut escalation = processing(ns, "escalation", &["KI"]);
    escalation["spec"]["manifests"][0] = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "take-over"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]});
    let err = apply_workload(&env.mgmt, &escalation)
        .await
        .expect_err("a ClusterRoleBinding must be refused");
    assert!(
        err.to_string()
            .contains("ClusterRoleBinding (rbac.authorization.k8s.io/v1) is cluster-scoped"),
        "{err}"
    );

    // two manifests with the same kind and name pass the schema but not the operator
    let mut duplicate = processing(ns, "duplicate", &["KI"]);
    duplicate["spec"]["manifests"][0] = duplicate["spec"]["manifests"][1].clone();
    apply_workload(&env.mgmt, &duplicate).await.unwrap();
    let rw = wait_workload(&env.mgmt, ns, "duplicate", "InvalidSpec", |rw| {
        condition(rw, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "InvalidSpec")
    })
    .await;
    assert!(
        condition(&rw, "Ready")
            .unwrap()
            .2
            .contains("same kind and metadata.name"),
        "{:?}",
        condition(&rw, "Ready")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (name, c) in &env.members {
        assert!(
            !namespace_exists(c, ns).await,
            "{name}: nothing is applied for an invalid spec"
        );
    }
    cleanup(&env, ns, &["duplicate"], &["kiribati"]).await;
}

#[tokio::test]
async fn the_operator_fails_fast_without_its_crds() {
    // a member cluster has no residency CRDs: pointing the operator at it must fail at once
    let prefix = std::env::var("RESIDENCY_CONTEXT_PREFIX").unwrap_or_default();
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_residency-operator"))
            .args([
                "run",
                "--kubeconfig",
                &Fleet::kubeconfig_path(),
                "--context",
                &format!("{prefix}zrh-1"),
            ])
            .args(["--http-addr", "127.0.0.1:0"])
            .output(),
    )
    .await
    .expect("the operator exits quickly")
    .expect("run the operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("CustomResourceDefinition memberclusters.residency.io is not installed"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kubeconfigs_with_exec_plugins_are_refused() {
    // adds a MemberCluster, which other tests would see in their decisions
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(env.mgmt.clone(), operator::OPERATOR_NS);
    let kubeconfig = r#"apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
users:
- name: u
  user:
    exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/steal-credentials}
contexts:
- name: c
  context: {cluster: c, user: u}
current-context: c
"#;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "exec-1-kubeconfig"},
        "stringData": {"kubeconfig": kubeconfig}});
    secrets
        .patch(
            "exec-1-kubeconfig",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
    let clusters: Api<MemberCluster> = Api::all(env.mgmt.clone());
    let mc = json!({"apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "exec-1"},
        "spec": {"location": {"country": "CH", "region": "zurich"}, "attestation": {"nodeRegions": ["eu-central-2"]},
                 "connection": {"kubeconfigSecretRef": {"name": "exec-1-kubeconfig"}}}});
    clusters
        .patch(
            "exec-1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&mc),
        )
        .await
        .unwrap();
    let ready = eventually("exec-1 refused", T, || async {
        let mc = clusters.get("exec-1").await.map_err(|e| e.to_string())?;
        let c = mc.status.map(|s| s.conditions).unwrap_or_default();
        c.into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "ExecPluginRefused")
            .ok_or_else(|| "not refused yet".to_string())
    })
    .await;
    assert_eq!(ready.status, "False");
    assert!(
        !ready.message.contains("steal-credentials"),
        "no kubeconfig content in status: {}",
        ready.message
    );
    // it never connected, so its inventory is empty: the deletion goes through at once
    delete_and_wait(&clusters, "exec-1", T).await;
    let _ = secrets
        .delete("exec-1-kubeconfig", &DeleteParams::default())
        .await;
}

#[tokio::test]
async fn a_field_or_manifest_dropped_from_the_spec_is_removed_from_the_members() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::ConfigMap;
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-prune";
    namespace(&env.mgmt, ns).await;
    policy(
        &env.mgmt,
        "marshall",
        &["MH"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let mut body = processing(ns, "marshall", &["MH"]);
    body["spec"]["manifests"][0]["data"]["gone-later"] = json!("x");
    body["spec"]["manifests"][1]["spec"]["revisionHistoryLimit"] = json!(3);
    apply_workload(&env.mgmt, &body).await.unwrap();
    wait_workload(&env.mgmt, ns, "marshall", "Ready on zrh-1, zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let operations = |fields: Option<
        Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry>,
    >| {
        fields
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.subresource.is_none())
            .filter_map(|e| Some(format!("{} {}", e.manager?, e.operation?)))
            .filter(|e| e.starts_with("residency-operator"))
            .collect::<Vec<_>>()
    };
    // the objects were created (a create never writes into an existing object); a field
    // dropped later is still removed, as an apply removes it
    for (name, c) in env.members.iter().filter(|(n, _)| n.starts_with("zrh")) {
        let cm = Api::<ConfigMap>::namespaced(c.clone(), ns)
            .get("marshall-config")
            .await
            .unwrap();
        assert_eq!(
            operations(cm.metadata.managed_fields),
            ["residency-operator-create Update"],
            "{name}"
        );
    }
    body["spec"]["manifests"][0]["data"]
        .as_object_mut()
        .unwrap()
        .remove("gone-later");
    body["spec"]["manifests"][1]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("revisionHistoryLimit");
    apply_workload(&env.mgmt, &body).await.unwrap();
    for (name, c) in env.members.iter().filter(|(n, _)| n.starts_with("zrh")) {
        let cms = Api::<ConfigMap>::namespaced(c.clone(), ns);
        let deployments = Api::<Deployment>::namespaced(c.clone(), ns);
        eventually("the dropped fields are removed", T, || async {
            let cm = cms
                .get("marshall-config")
                .await
                .map_err(|e| e.to_string())?;
            let d = deployments
                .get("marshall")
                .await
                .map_err(|e| e.to_string())?;
            let data = cm.data.clone().unwrap_or_default();
            let history = d.spec.as_ref().and_then(|s| s.revision_history_limit);
            // 10: the member's default, once the operator no longer sets it
            if data.contains_key("gone-later") || history != Some(10) {
                return Err(format!(
                    "{name}: data {data:?}, revisionHistoryLimit {history:?}"
                ));
            }
            Ok(())
        })
        .await;
        let cm = cms.get("marshall-config").await.unwrap();
        assert_eq!(
            cm.data.unwrap().get("k").map(String::as_str),
            Some("v"),
            "{name}"
        );
        assert_eq!(
            operations(cm.metadata.managed_fields),
            ["residency-operator Apply"],
            "{name}"
        );
        let d = deployments.get("marshall").await.unwrap();
        assert_eq!(
            operations(d.metadata.managed_fields),
            ["residency-operator Apply"],
            "{name}"
        );
    }
    wait_workload(&env.mgmt, ns, "marshall", "Ready on zrh-1, zrh-2", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let zrh: Vec<&Client> = env
        .members
        .iter()
        .filter(|(n, _)| n.starts_with("zrh"))
        .map(|(_, c)| c)
        .collect();
    for c in &zrh {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced((*c).clone(), ns);
        assert!(cms.get_opt("marshall-config").await.unwrap().is_some());
    }
    // drop the ConfigMap from the manifests
    body["spec"]["manifests"].as_array_mut().unwrap().remove(0);
    apply_workload(&env.mgmt, &body).await.unwrap();
    for c in &zrh {
        let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced((*c).clone(), ns);
        eventually("the dropped ConfigMap is deleted", T, || async {
            match cms.get_opt("marshall-config").await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        assert_eq!(
            placed_on(c, ns, "marshall").await,
            1,
            "the Deployment stays"
        );
    }
    cleanup(&env, ns, &["marshall"], &["marshall"]).await;
}

#[tokio::test]
async fn a_hand_made_object_labelled_with_a_country_is_reported_on_the_policy() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-handmade";
    // created by hand on the Moscow cluster, declaring it holds Cook Islands data - before the
    // policy forbids that there (after, msk-1's admission policy would refuse them)
    let msk1 = &env.members[2].1;
    let zrh1 = &env.members[0].1;
    let deployment = |name: &str| -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"country.residency.io/CK": "true"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": common::restricted()}]}}}
        }))
        .unwrap()
    };
    for c in [msk1, zrh1] {
        namespace(c, ns).await;
        Api::<Deployment>::namespaced(c.clone(), ns)
            .create(&Default::default(), &deployment("hand-made"))
            .await
            .unwrap();
    }
    // and one that wears the operator's labels for a workload that does not exist
    let mut fake = deployment("fake-owner");
    fake.metadata.labels.get_or_insert_default().extend([
        (
            "app.kubernetes.io/managed-by".to_string(),
            "residency-operator".to_string(),
        ),
        ("residency.io/workload".to_string(), "ghost".to_string()),
        (
            "residency.io/workload-namespace".to_string(),
            ns.to_string(),
        ),
    ]);
    Api::<Deployment>::namespaced(msk1.clone(), ns)
        .create(&Default::default(), &fake)
        .await
        .unwrap();
    policy(
        &env.mgmt,
        "cook-islands",
        &["CK"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let policies: Api<ResidencyPolicy> = Api::all(env.mgmt.clone());
    let status = eventually("the policy reports the hand-made copy", T, || async {
        let p = policies
            .get("cook-islands")
            .await
            .map_err(|e| e.to_string())?;
        let s = p.status.unwrap_or_default();
        if s.violation_count >= 2 {
            Ok(s)
        } else {
            Err(format!("{:?}", s.violations))
        }
    })
    .await;
    assert_eq!(
        status.violation_count, 2,
        "only the copies on msk-1 are violations: {:?}",
        status.violations
    );
    let fake = &status.violations[0];
    assert_eq!(
        (fake.cluster.as_str(), fake.name.as_str()),
        ("msk-1", "fake-owner")
    );
    assert!(
        fake.message
            .contains("of ResidentWorkload rules-handmade/ghost, which no longer exists"),
        "{}",
        fake.message
    );
    let v = &status.violations[1];
    assert_eq!(
        (
            v.cluster.as_str(),
            v.kind.as_str(),
            v.name.as_str(),
            v.countries.join(",")
        ),
        ("msk-1", "Deployment", "hand-made", "CK".to_string())
    );
    assert!(
        v.message.contains("which cook-islands does not allow"),
        "{}",
        v.message
    );
    assert!(
        status
            .conditions
            .iter()
            .any(|c| c.type_ == "Compliant" && c.status == "False")
    );
    // never deleted by the operator: it only reports
    assert!(
        Api::<Deployment>::namespaced(msk1.clone(), ns)
            .get_opt("hand-made")
            .await
            .unwrap()
            .is_some()
    );

    // removing the label clears the violation (event-driven)
    let unlabel = json!({"metadata": {"labels": {"country.residency.io/CK": null}}});
    for name in ["hand-made", "fake-owner"] {
        Api::<Deployment>::namespaced(msk1.clone(), ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&unlabel))
            .await
            .unwrap();
    }
    eventually("the violation is gone", T, || async {
        let p = policies
            .get("cook-islands")
            .await
            .map_err(|e| e.to_string())?;
        let n = p.status.unwrap_or_default().violation_count;
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} violations"))
        }
    })
    .await;
    // the compliance history keeps what was there, and when
    let history = policies
        .get("cook-islands")
        .await
        .unwrap()
        .status
        .unwrap_or_default()
        .history;
    let interval = history
        .iter()
        .find(|i| i.cluster == "msk-1" && i.name == "hand-made")
        .unwrap_or_else(|| panic!("no interval for hand-made: {history:?}"));
    let (from, to) = (interval.from.0, interval.to.as_ref().map(|t| t.0));
    assert!(to.is_some_and(|to| to >= from), "closed: {interval:?}");
    let text = common::report();
    assert!(
        text.contains(&format!(
            "HISTORY msk-1: Deployment {ns}/hand-made from {from} to "
        )),
        "{text}"
    );
    cleanup(&env, ns, &[], &["cook-islands"]).await;
}

#[tokio::test]
async fn a_pod_on_a_node_outside_the_attested_region_is_flagged() {
    let _lock = CLUSTER_LOCK.write().await;
    let _restore = RestoreOnFailure;
    let env = setup().await;
    let ns = "rules-pod-region";
    namespace(&env.mgmt, ns).await;
    // only zrh-1 (by its site label) may hold Niue's data
    let policies: Api<ResidencyPolicy> = Api::all(env.mgmt.clone());
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": "niue-dc1"},
        "spec": {"countries": ["NU"], "clusterSelector": {"matchLabels": {"residency.io/site": "zurich-dc1"}}}});
    policies
        .patch(
            "niue-dc1",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    apply_workload(&env.mgmt, &processing(ns, "niue", &["NU"]))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "niue", "Ready on zrh-1", |rw| {
        ready_on(rw, &["zrh-1"])
    })
    .await;
    let ev = rw.status.unwrap().placements[0].evidence.clone().unwrap();
    assert_eq!(ev.node_regions, ["eu-central-2"]);

    // the nodes of zrh-1 now say they are in another region
    let zrh1 = &env.members[0].1;
    let relabel = |region: &'static str| async move {
        for n in ["zrh-1-node-a", "zrh-1-node-b"] {
            set_region(zrh1, n, region).await;
        }
    };
    relabel("us-east-1").await;
    // the Pod's evidence and zrh-1's verification change apart (the Pod watch and the
    // MemberCluster's own check): the workload's status is final once both are in
    let rw = wait_workload(
        &env.mgmt,
        ns,
        "niue",
        "the Pod flagged outside the attested region, and no eligible cluster left",
        |rw| {
            rw.status.as_ref().is_some_and(|s| {
                s.placements.iter().any(|p| {
                    p.cluster == "zrh-1"
                        && p.evidence.as_ref().is_some_and(|e| {
                            e.outside.iter().any(|o| o.contains("(region us-east-1)"))
                        })
                })
            }) && condition(rw, "Compliant").is_some_and(|c| c.1 == "NoEligibleCluster")
        },
    )
    .await;
    let s = rw.status.unwrap();
    let outside = &s.placements[0].evidence.as_ref().unwrap().outside;
    assert!(
        outside
            .iter()
            .all(|o| o.starts_with("Pod niue-") && o.contains("on node zrh-1-node-")),
        "{outside:?}"
    );
    // the copy is kept (no other cluster may hold it) and the workload is not compliant
    assert!(
        s.conditions
            .iter()
            .any(|c| c.type_ == "Compliant" && c.status == "False"),
        "{:?}",
        s.conditions
    );
    assert_eq!(
        placed_on(&env.members[0].1, ns, "niue").await,
        1,
        "nothing is removed without a new home"
    );
    let report = common::report();
    assert!(
        report.contains("VIOLATION zrh-1: rules-pod-region/niue: Pod niue-"),
        "{report}"
    );

    relabel("eu-central-2").await;
    common::clusters_verified(&env.mgmt, &["zrh-1"]).await;
    cleanup(&env, ns, &["niue"], &["niue-dc1"]).await;
}

#[tokio::test]
async fn policy_reports_are_written_where_their_crd_is_installed() {
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    install_policy_report_crd(&env.mgmt).await;
    let ns = "rules-policy-report";
    namespace(&env.mgmt, ns).await;
    // a ConfigMap made by hand on msk-1, labelled as holding KM data, before the policy forbids
    // that there (after, msk-1's admission policy would refuse it): a failed result of its own,
    // from the members' inventory; gone once the ConfigMap is
    use k8s_openapi::api::core::v1::ConfigMap;
    let msk1 = env
        .members
        .iter()
        .find(|(n, _)| *n == "msk-1")
        .unwrap()
        .1
        .clone();
    namespace(&msk1, ns).await;
    let cms: Api<ConfigMap> = Api::namespaced(msk1, ns);
    let hand: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "hand-km",
        "labels": {"country.residency.io/KM": "true"}}}))
    .unwrap();
    cms.patch(
        "hand-km",
        &PatchParams::apply("rules-test").force(),
        &Patch::Apply(&hand),
    )
    .await
    .unwrap();
    policy(
        &env.mgmt,
        "comoros",
        &["KM"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    apply_workload(&env.mgmt, &processing(ns, "comoros", &["KM"]))
        .await
        .unwrap();
    apply_workload(&env.mgmt, &processing(ns, "chad", &["TD"]))
        .await
        .unwrap(); // no policy: fail
    let reports = policy_reports(&env.mgmt, ns);
    let report = eventually("a PolicyReport with one pass and two fails", T, || async {
        let r = reports
            .get_opt("residency-operator")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no report yet")?;
        if r.data["summary"]["pass"] == 1 && r.data["summary"]["fail"] == 2 {
            Ok(r)
        } else {
            Err(format!("{}", r.data["summary"]))
        }
    })
    .await;
    let results = report.data["results"].as_array().unwrap();
    let chad = results
        .iter()
        .find(|r| r["resources"][0]["name"] == "chad")
        .unwrap();
    assert_eq!(chad["result"], "fail");
    assert!(
        chad["message"]
            .as_str()
            .unwrap()
            .contains("no policy governs TD"),
        "{chad}"
    );
    let comoros = results
        .iter()
        .find(|r| r["resources"][0]["name"] == "comoros")
        .unwrap();
    assert_eq!(comoros["result"], "pass");

    // the hand-made ConfigMap on msk-1 has its own failed result
    let hand_result = |r: &serde_json::Value| {
        r["results"].as_array().and_then(|a| {
            a.iter()
                .find(|x| {
                    x["resources"][0]["kind"] == "ConfigMap"
                        && x["resources"][0]["name"] == "hand-km"
                })
                .cloned()
        })
    };
    let failed = eventually(
        "the hand-made copy fails in the PolicyReport",
        T,
        || async {
            let r = reports
                .get_opt("residency-operator")
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no report")?;
            hand_result(&r.data).ok_or_else(|| format!("{}", r.data["summary"]))
        },
    )
    .await;
    assert_eq!(failed["result"], "fail");
    assert_eq!(failed["properties"]["cluster"], "msk-1");
    assert_eq!(failed["properties"]["countries"], "KM");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("comoros does not allow"),
        "{failed}"
    );
    cms.delete("hand-km", &Default::default()).await.unwrap();
    eventually("the hand-made copy's result goes with it", T, || async {
        let r = reports
            .get_opt("residency-operator")
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no report")?;
        match hand_result(&r.data) {
            None => Ok(()),
            Some(x) => Err(format!("{x}")),
        }
    })
    .await;
    cleanup(&env, ns, &["comoros", "chad"], &["comoros"]).await;
    eventually("the report drops deleted workloads", T, || async {
        let r = reports
            .get_opt("residency-operator")
            .await
            .map_err(|e| e.to_string())?;
        match r {
            Some(r) if r.data["results"].as_array().is_some_and(|a| a.is_empty()) => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.data["summary"].clone()))),
        }
    })
    .await;
}

#[tokio::test]
async fn two_workloads_never_claim_one_object_and_nothing_is_taken_over_unasked() {
    use k8s_openapi::api::core::v1::ConfigMap;
    let _lock = CLUSTER_LOCK.read().await;
    let env = setup().await;
    let ns = "rules-collision";
    namespace(&env.mgmt, ns).await;
    policy(
        &env.mgmt,
        "wallis-zurich",
        &["WF"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let workload = |name: &str, configmaps: &[&str], adopt: bool| {
        json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"role": "Processing", "countries": ["WF"], "adoptExisting": adopt,
                     "manifests": configmaps.iter().map(|c| json!({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": c}, "data": {"owner": name}})).collect::<Vec<_>>()}})
    };
    apply_workload(&env.mgmt, &workload("first", &["shared"], false))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "first", "Ready", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let owner_on = |c: Client, name: &'static str| async move {
        Api::<ConfigMap>::namespaced(c, ns)
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|cm| cm.data)
            .and_then(|d| d.get("owner").cloned())
    };

    // a second workload declares the same ConfigMap: it is refused, naming the owner
    apply_workload(
        &env.mgmt,
        &workload("second", &["shared", "second-own"], false),
    )
    .await
    .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "second", "Stalled: Conflict", |rw| {
        condition(rw, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "Conflict")
    })
    .await;
    let ready = condition(&rw, "Ready").unwrap();
    assert_eq!((ready.0.as_str(), ready.1.as_str()), ("False", "Conflict"));
    assert!(
        ready.2.contains("ConfigMap shared")
            && ready.2.contains("ResidentWorkload rules-collision/first"),
        "{}",
        ready.2
    );
    for (name, c) in &env.members[..2] {
        assert_eq!(
            owner_on(c.clone(), "shared").await.as_deref(),
            Some("first"),
            "{name}: the first workload's object is untouched"
        );
    }
    let first = Api::<ResidentWorkload>::namespaced(env.mgmt.clone(), ns)
        .get("first")
        .await
        .unwrap();
    assert!(
        ready_on(&first, &["zrh-1", "zrh-2"]),
        "the first stays Ready"
    );

    // deleting the second leaves the first's object
    delete_and_wait(
        &Api::<ResidentWorkload>::namespaced(env.mgmt.clone(), ns),
        "second",
        T,
    )
    .await;
    for (name, c) in &env.members[..2] {
        assert_eq!(
            owner_on(c.clone(), "shared").await.as_deref(),
            Some("first"),
            "{name}: still the first's"
        );
        assert_eq!(
            owner_on(c.clone(), "second-own").await,
            None,
            "{name}: the second's own object is gone"
        );
    }

    // an object made by hand is taken over only when the workload asks for it
    for (_, c) in &env.members[..2] {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": "handmade"}, "data": {"owner": "a person"}}),
        )
        .unwrap();
        Api::<ConfigMap>::namespaced(c.clone(), ns)
            .patch(
                "handmade",
                &PatchParams::apply("kubectl").force(),
                &Patch::Apply(&cm),
            )
            .await
            .unwrap();
    }
    apply_workload(&env.mgmt, &workload("third", &["handmade"], false))
        .await
        .unwrap();
    let rw = wait_workload(&env.mgmt, ns, "third", "Conflict", |rw| {
        condition(rw, "Ready").is_some_and(|c| c.1 == "Conflict")
    })
    .await;
    assert!(
        condition(&rw, "Ready").unwrap().2.contains("adoptExisting"),
        "{:?}",
        condition(&rw, "Ready")
    );
    assert_eq!(
        owner_on(env.members[0].1.clone(), "handmade")
            .await
            .as_deref(),
        Some("a person")
    );
    apply_workload(&env.mgmt, &workload("third", &["handmade"], true))
        .await
        .unwrap();
    wait_workload(&env.mgmt, ns, "third", "Ready after adopting", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    assert_eq!(
        owner_on(env.members[0].1.clone(), "handmade")
            .await
            .as_deref(),
        Some("third")
    );
    cleanup(&env, ns, &["third", "first"], &["wallis-zurich"]).await;
}
