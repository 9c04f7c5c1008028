//! Prevention at admission on the local fleet, through the real operator: each member's API
//! server refuses writes that introduce data of a country its policies forbid there, warns for
//! Audit-only ones, lets what existed before be updated and deleted, follows policy edits
//! quickly (measured), and gets its admission policy back when it is deleted or edited there.
//! Checked on the members themselves. The tests of this binary change the same admission
//! policies, so they run one at a time.

mod common;

use std::time::{Duration, Instant};

use common::rules::*;
use common::{Fleet, eventually};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use residency_operator::api::MemberCluster;
use serde_json::{Value, json};
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn member(env: &Env, name: &str) -> Client {
    env.members
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| c.clone())
        .unwrap()
}

/// The member's ValidatingAdmissionPolicies or bindings, as dynamic objects.
fn admission_objects<K: kube::Resource<DynamicType = ()>>(
    client: &Client,
) -> Api<kube::api::DynamicObject> {
    Api::all_with(client.clone(), &kube::core::ApiResource::erase::<K>(&()))
}

fn zurich() -> Value {
    json!([{"country": "CH", "region": "zurich"}])
}

/// Applies an Enforce policy keeping `countries` in Zurich and waits until msk-1 refuses the
/// first of them.
async fn zurich_only(env: &Env, msk1: &Client, name: &str, countries: &[&str]) {
    policy(&env.mgmt, name, countries, zurich(), "Enforce").await;
    until_refused(msk1, countries[0], true, T).await;
}

fn labelled(name: &str, labels: Value) -> Value {
    json!({"metadata": {"name": name, "labels": labels}})
}

/// A dry-run create (admission runs, nothing is stored) of a ConfigMap labelled with
/// `country` on `client`: Ok, or the refusal's message.
async fn admitted(client: &Client, country: &str) -> Result<(), String> {
    let cm: ConfigMap = serde_json::from_value(labelled(
        "probe",
        json!({format!("country.residency.io/{country}"): "true"}),
    ))
    .unwrap();
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&pp, &cm)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(s.message),
        Err(e) => panic!("dry-run create on the member failed otherwise: {e}"),
    }
}

/// Waits until `client` refuses (`true`) or admits (`false`) new data of `country`.
async fn until_refused(client: &Client, country: &str, refused: bool, timeout: Duration) {
    eventually(&format!("{country} refused={refused}"), timeout, || async {
        match (admitted(client, country).await, refused) {
            (Err(_), true) | (Ok(()), false) => Ok(()),
            (r, _) => Err(format!("{r:?}")),
        }
    })
    .await;
}

fn refusal(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => s.message,
        other => panic!("expected a refusal at admission, got {other}"),
    }
}

async fn prevention_of(mgmt: &Client, cluster: &str) -> (String, String, Vec<String>, Vec<String>) {
    let mc = Api::<MemberCluster>::all(mgmt.clone())
        .get(cluster)
        .await
        .unwrap();
    let s = mc.status.unwrap_or_default();
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == "PreventionEnforced")
        .map(|c| (c.status.clone(), c.reason.clone()))
        .unwrap_or_default();
    let p = s.prevention.unwrap_or_default();
    (c.0, c.1, p.refused, p.warned)
}

#[tokio::test]
async fn writes_introducing_a_forbidden_country_are_refused_on_the_member() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = setup().await;
    let ns = "prevention-refused";
    let msk1 = member(&env, "msk-1");
    let zrh1 = member(&env, "zrh-1");
    for c in [&msk1, &zrh1] {
        namespace(c, ns).await;
    }
    // there before any policy forbade it: stays updatable and deletable
    let cms = Api::<ConfigMap>::namespaced(msk1.clone(), ns);
    let before: ConfigMap = serde_json::from_value(labelled(
        "before",
        json!({"country.residency.io/TV": "true"}),
    ))
    .unwrap();
    cms.create(&PostParams::default(), &before).await.unwrap();
    // and one whose label is written in lower case: the same country, for detection too
    let lower: ConfigMap = serde_json::from_value(labelled(
        "before-lower",
        json!({"country.residency.io/tv": "True"}),
    ))
    .unwrap();
    cms.create(&PostParams::default(), &lower).await.unwrap();

    policy(
        &env.mgmt,
        "prevention-tuvalu-fiji",
        &["TV", "FJ"],
        zurich(),
        "Enforce",
    )
    .await;
    policy(
        &env.mgmt,
        "prevention-samoa-trial",
        &["WS"],
        zurich(),
        "Audit",
    )
    .await;
    eventually("msk-1 reports TV, FJ refused and WS warned", T, || async {
        let (status, reason, refused, warned) = prevention_of(&env.mgmt, "msk-1").await;
        if status == "True"
            && reason == "Enforced"
            && refused.contains(&"TV".to_string())
            && refused.contains(&"FJ".to_string())
            && warned.contains(&"WS".to_string())
        {
            Ok(())
        } else {
            Err(format!("{status} {reason} {refused:?} {warned:?}"))
        }
    })
    .await;
    until_refused(&msk1, "TV", true, T).await;
    // the copies made before are reported as violations, the lower-case one as TV data too
    let policies: Api<residency_operator::api::ResidencyPolicy> = Api::all(env.mgmt.clone());
    eventually("both earlier copies reported", T, || async {
        let p = policies
            .get("prevention-tuvalu-fiji")
            .await
            .map_err(|e| e.to_string())?;
        let v = p.status.unwrap_or_default().violations;
        let found = |name: &str| {
            v.iter()
                .any(|x| x.cluster == "msk-1" && x.name == name && x.countries == ["TV"])
        };
        if found("before") && found("before-lower") {
            Ok(())
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await;

    // a Deployment, a PVC and a ConfigMap labelled with a forbidden country: refused with a
    // message that names the country, the member, the policy and what it allows
    let want = "residency: data of TV may not be stored on msk-1 (RU/moscow): policy prevention-tuvalu-fiji allows CH/zurich";
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "tv-app", "labels": {"country.residency.io/TV": "true"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "tv"}},
                 "template": {"metadata": {"labels": {"app": "tv"}},
                              "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": common::restricted()}]}}}
    }))
    .unwrap();
    let m = refusal(
        Api::<Deployment>::namespaced(msk1.clone(), ns)
            .create(&PostParams::default(), &deployment)
            .await
            .unwrap_err(),
    );
    assert!(m.contains(want), "{m}");
    // the key and code compared case-insensitively
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "fj-data", "labels": {"country.residency.io/fj": "true"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    let m = refusal(
        Api::<PersistentVolumeClaim>::namespaced(msk1.clone(), ns)
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap_err(),
    );
    assert!(
        m.contains("residency: data of FJ may not be stored on msk-1"),
        "{m}"
    );
    let cm: ConfigMap = serde_json::from_value(labelled(
        "tv-config",
        json!({"country.residency.io/TV": "true"}),
    ))
    .unwrap();
    let m = refusal(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert!(m.contains(want), "{m}");
    // allowed in Zurich
    Api::<ConfigMap>::namespaced(zrh1.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .expect("zrh-1 may hold TV data");

    // the label added by an update, and through the pods/status subresource: refused
    let plain: ConfigMap = serde_json::from_value(labelled("plain", json!({}))).unwrap();
    cms.create(&PostParams::default(), &plain).await.unwrap();
    let add = json!({"metadata": {"labels": {"country.residency.io/TV": "true"}}});
    let m = refusal(
        cms.patch("plain", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .unwrap_err(),
    );
    assert!(m.contains(want), "{m}");
    let pods = Api::<Pod>::namespaced(msk1.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "plain-pod"},
        "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": common::restricted()}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let m = refusal(
        pods.patch_status("plain-pod", &PatchParams::default(), &Patch::Merge(&add))
            .await
            .unwrap_err(),
    );
    assert!(m.contains(want), "{m}");
    let live = pods.get("plain-pod").await.unwrap();
    assert!(
        !live
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("country.residency.io/TV"),
        "the status patch must not have stored the label"
    );

    // an Audit-only country: accepted, with a warning the writer sees (kubectl prints it)
    let kubectl = std::env::var("RESIDENCY_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let manifest = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "ws-config", "namespace": ns, "labels": {"country.residency.io/WS": "true"}}});
    let mut child = std::process::Command::new(kubectl)
        .args([
            "--kubeconfig",
            &Fleet::kubeconfig_path(),
            "--context",
            "msk-1",
        ])
        .args(["create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.to_string().as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "an Audit-only country is not refused: {stderr}"
    );
    assert!(
        stderr.contains("Warning")
            && stderr.contains(
                "residency: data of WS may not be stored on msk-1 (RU/moscow): policy prevention-samoa-trial (Audit) allows CH/zurich"
            ),
        "{stderr}"
    );
    assert!(cms.get_opt("ws-config").await.unwrap().is_some());

    // what existed before: updated, a finalizer added and removed, deleted
    let note = json!({"metadata": {"annotations": {"note": "still here"}, "finalizers": ["example.com/hold"]}});
    cms.patch("before", &PatchParams::default(), &Patch::Merge(&note))
        .await
        .expect("an object that existed before stays updatable");
    cms.delete("before", &DeleteParams::default())
        .await
        .expect("and deletable");
    let release = json!({"metadata": {"finalizers": null}});
    cms.patch("before", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .expect("its finalizer can be removed");
    eventually("the old copy is gone", T, || async {
        match cms.get_opt("before").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    cms.delete("before-lower", &DeleteParams::default())
        .await
        .unwrap();
    cleanup(
        &env,
        ns,
        &[],
        &["prevention-tuvalu-fiji", "prevention-samoa-trial"],
    )
    .await;
    until_refused(&msk1, "TV", false, T).await;
}

#[tokio::test]
async fn a_policy_edit_reaches_the_members_admission_quickly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = setup().await;
    let msk1 = member(&env, "msk-1");
    let zurich = zurich();
    let anywhere =
        json!([{"country": "CH", "region": "zurich"}, {"country": "RU", "region": "moscow"}]);
    zurich_only(&env, &msk1, "prevention-tonga", &["TO"]).await;
    // each edit flips whether msk-1 may hold TO; timed from the policy write until msk-1's API
    // server answers accordingly
    let vaps = admission_objects::<ValidatingAdmissionPolicy>(&msk1);
    let version = || async {
        vaps.get_opt("residency.io-enforce")
            .await
            .unwrap()
            .and_then(|v| v.metadata.resource_version)
    };
    let mut took = Vec::new();
    let mut written = Vec::new();
    for i in 0..20 {
        let refused = i % 2 == 1;
        let locations = if refused { &zurich } else { &anywhere };
        let before = version().await;
        let mut written_at = None;
        let start = Instant::now();
        policy(
            &env.mgmt,
            "prevention-tonga",
            &["TO"],
            locations.clone(),
            "Enforce",
        )
        .await;
        loop {
            if written_at.is_none() && version().await != before {
                written_at = Some(start.elapsed());
            }
            let now = admitted(&msk1, "TO").await.is_err();
            if now == refused {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "edit {i}: msk-1 did not follow within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(start.elapsed());
        written.push(written_at.unwrap_or_else(|| start.elapsed()));
    }
    took.sort();
    written.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p50 = took[took.len() / 2];
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "prevention: policy edit -> msk-1 admission in force over {} edits: p50 {:.0} ms, p99 {:.0} ms, min {:.0} ms \
         (admission policy written on msk-1: p50 {:.0} ms, p99 {:.0} ms; the API server compiles new admission policies once a second)",
        took.len(),
        ms(p50),
        ms(p99),
        ms(took[0]),
        ms(written[written.len() / 2]),
        ms(written[(written.len() * 99).div_ceil(100) - 1]),
    );
    cleanup(&env, "prevention-latency", &[], &["prevention-tonga"]).await;
    until_refused(&msk1, "TO", false, T).await;
}

#[tokio::test]
async fn a_deleted_or_edited_admission_policy_is_put_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = setup().await;
    let op = common::operator::start(&Fleet::from_env()).await;
    let msk1 = member(&env, "msk-1");
    zurich_only(&env, &msk1, "prevention-nauru", &["NR"]).await;
    let vaps = admission_objects::<ValidatingAdmissionPolicy>(&msk1);
    let bindings = admission_objects::<ValidatingAdmissionPolicyBinding>(&msk1);
    let restored_count = || async {
        let m = op.get("/metrics").await;
        m.lines()
            .find(|l| {
                l.starts_with("residency_admission_policies_restored_total{cluster=\"msk-1\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let restored_before = restored_count().await;

    // deleted by hand: back, and refusing again
    let start = Instant::now();
    vaps.delete("residency.io-enforce", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the admission policy is back", T, || async {
        match vaps.get_opt("residency.io-enforce").await {
            Ok(Some(_)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let back = start.elapsed();
    until_refused(&msk1, "NR", true, T).await;
    let enforcing = start.elapsed();
    eprintln!(
        "prevention: admission policy deleted on msk-1 -> back after {:.0} ms, refusing again after {:.0} ms",
        back.as_secs_f64() * 1000.0,
        enforcing.as_secs_f64() * 1000.0
    );

    // the binding edited by hand to only warn: put back to Deny
    bindings
        .patch(
            "residency.io-enforce",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"validationActions": ["Warn"]}})),
        )
        .await
        .unwrap();
    eventually("the binding denies again", T, || async {
        let b = bindings
            .get("residency.io-enforce")
            .await
            .map_err(|e| e.to_string())?;
        if b.data["spec"]["validationActions"] == json!(["Deny"]) {
            Ok(())
        } else {
            Err(format!("{}", b.data["spec"]))
        }
    })
    .await;
    until_refused(&msk1, "NR", true, T).await;

    // said in an Event on the MemberCluster and counted
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(env.mgmt.clone());
    eventually("AdmissionPolicyRestored Events", T, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let n = list
            .items
            .iter()
            .filter(|e| {
                e.reason.as_deref() == Some("AdmissionPolicyRestored")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("msk-1")
            })
            .count();
        if n >= 1 {
            Ok(())
        } else {
            Err("none yet".to_string())
        }
    })
    .await;
    let restored_after = restored_count().await;
    assert!(
        restored_after >= restored_before + 2.0,
        "restored metric {restored_before} -> {restored_after}"
    );
    cleanup(&env, "prevention-restore", &[], &["prevention-nauru"]).await;
    until_refused(&msk1, "NR", false, T).await;
}

#[tokio::test]
async fn prevention_switched_off_on_a_member_removes_its_admission_policies() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = setup().await;
    let msk1 = member(&env, "msk-1");
    zurich_only(&env, &msk1, "prevention-kiribati", &["KI"]).await;
    let clusters: Api<MemberCluster> = Api::all(env.mgmt.clone());
    let switch = |to: &'static str| {
        let clusters = clusters.clone();
        async move {
            clusters
                .patch(
                    "msk-1",
                    &PatchParams::apply("prevention-test").force(),
                    &Patch::Apply(
                        json!({"apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster",
                        "metadata": {"name": "msk-1"}, "spec": {"prevention": to}}),
                    ),
                )
                .await
                .unwrap();
        }
    };
    switch("Disabled").await;
    until_refused(&msk1, "KI", false, T).await;
    eventually("msk-1 says prevention is off", T, || async {
        let (status, reason, refused, _) = prevention_of(&env.mgmt, "msk-1").await;
        if status == "False" && reason == "Disabled" && refused.is_empty() {
            Ok(())
        } else {
            Err(format!("{status} {reason} {refused:?}"))
        }
    })
    .await;
    let vaps = admission_objects::<ValidatingAdmissionPolicy>(&msk1);
    assert!(
        vaps.get_opt("residency.io-enforce")
            .await
            .unwrap()
            .is_none()
    );
    switch("Enabled").await;
    until_refused(&msk1, "KI", true, T).await;
    cleanup(&env, "prevention-switch", &[], &["prevention-kiribati"]).await;
    until_refused(&msk1, "KI", false, T).await;
}

#[tokio::test]
async fn a_policy_edited_while_a_member_is_down_is_enforced_there_once_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = setup().await;
    let msk1 = member(&env, "msk-1");
    zurich_only(&env, &msk1, "prevention-vanuatu", &["VU"]).await;
    until_refused(&msk1, "SB", false, T).await;

    common::fleet_sh(&["stop", "msk-1-kube-apiserver"]);
    // the edit: Solomon Islands' data is forbidden on msk-1 too, while it cannot be told
    policy(
        &env.mgmt,
        "prevention-vanuatu",
        &["VU", "SB"],
        zurich(),
        "Enforce",
    )
    .await;
    eventually(
        "msk-1's prevention is unknown while it is down",
        T,
        || async {
            match prevention_of(&env.mgmt, "msk-1").await {
                (s, r, _, _) if s == "Unknown" && r == "Unreachable" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let back = Instant::now();
    common::fleet_sh(&["up"]);
    until_refused(&msk1, "SB", true, T).await;
    eprintln!(
        "prevention: msk-1 back -> the edit made while it was down in force after {:.1} s",
        back.elapsed().as_secs_f64()
    );
    eventually("msk-1's prevention in force again, with SB", T, || async {
        match prevention_of(&env.mgmt, "msk-1").await {
            (s, r, refused, _)
                if s == "True" && r == "Enforced" && refused.contains(&"SB".to_string()) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cleanup(&env, "prevention-down", &[], &["prevention-vanuatu"]).await;
    until_refused(&msk1, "SB", false, T).await;
}
