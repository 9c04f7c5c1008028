//! Any namespaced kind, placed safely, on the local fleet through the real operator: a test CRD
//! installed on zrh-1 and zrh-2 only is placed there, judged Ready by its status condition,
//! its drift corrected, and the member without the CRD fails naming the kind; Roles and
//! RoleBindings that cannot escalate are placed, one binding a ClusterRole is refused before
//! anything is written; the namespaces the operator creates enforce the restricted Pod Security
//! standard, so a privileged Pod and a hostPath volume are refused by the members, visibly in
//! the workload's status.

mod common;

use common::rules::{
    Env, MANAGER, T, apply_workload, cleanup, condition, namespace, placement, setup, wait_workload,
};
use common::{crd_established, eventually, repo};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use residency_operator::api::ResidencyPolicy;
use serde_json::{Value, json};

const CRD: &str = "widgets.residency-test.io";

fn widgets(client: &Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("residency-test.io", "v1", "Widget");
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    )
}

async fn install_crd(member: &Client) {
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(repo("tests/fixtures/widget-crd.yaml")).unwrap(),
    )
    .unwrap();
    Api::<CustomResourceDefinition>::all(member.clone())
        .patch(
            CRD,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    crd_established(member, CRD).await;
}

async fn remove_crd(member: &Client) {
    common::operator::delete_and_wait(
        &Api::<CustomResourceDefinition>::all(member.clone()),
        CRD,
        T,
    )
    .await;
}

/// Sets the Widget's status as its controller would.
async fn widget_status(member: &Client, ns: &str, name: &str, ready: &str, reason: &str) {
    let api = widgets(member, ns);
    let w = api.get(name).await.unwrap();
    let generation = w.metadata.generation.unwrap_or(1);
    let status = json!({"status": {"observedGeneration": generation, "conditions": [{
        "type": "Ready", "status": ready, "reason": reason,
        "message": format!("widget is {reason}"), "lastTransitionTime": "2026-12-01T00:00:00Z"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The placed object `kind name` on `cluster` as the workload's status records it.
fn object<'a>(
    rw: &'a residency_operator::api::ResidentWorkload,
    cluster: &str,
    kind: &str,
) -> Option<&'a residency_operator::api::resident_workload::ObjectStatus> {
    placement(rw, cluster)?
        .objects
        .iter()
        .find(|o| o.kind == kind)
}

/// Waits until the status of workload `name` shows its `kind` on zrh-1 not ready, saying `says`
/// and the member's Pod Security refusal; returns that status.
async fn refused_on_zrh1(
    env: &Env,
    ns: &str,
    name: &str,
    kind: &str,
    says: &str,
) -> residency_operator::api::ResidentWorkload {
    let rw = wait_workload(&env.mgmt, ns, name, "the refusal in status", |rw| {
        object(rw, "zrh-1", kind).is_some_and(|o| o.message.contains(says))
    })
    .await;
    let o = object(&rw, "zrh-1", kind).unwrap();
    assert!(!o.ready);
    assert!(
        o.message
            .contains("violates PodSecurity \"restricted:latest\": privileged"),
        "{}",
        o.message
    );
    rw
}

#[tokio::test]
async fn a_custom_resource_is_placed_judged_by_its_condition_and_drift_corrected() {
    let env: Env = setup().await;
    let (zrh1, zrh2, msk1) = (&env.members[0].1, &env.members[1].1, &env.members[2].1);
    let ns = "kinds-widgets";
    namespace(&env.mgmt, ns).await;
    install_crd(zrh1).await;
    install_crd(zrh2).await;
    remove_crd(msk1).await;
    common::rules::policy(
        &env.mgmt,
        "kinds-palau",
        &["PW"],
        json!([{"country": "CH", "region": "zurich"}, {"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "palau", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["PW"], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "palau"}, "data": {"k": "v"}},
            {"apiVersion": "residency-test.io/v1", "kind": "Widget", "metadata": {"name": "palau"},
             "spec": {"size": 3}}]}});
    apply_workload(&env.mgmt, &body).await.unwrap();

    // msk-1 does not serve Widgets: that target fails, naming the kind; the others proceed
    let rw = wait_workload(
        &env.mgmt,
        ns,
        "palau",
        "Widgets on zrh-1 and zrh-2, msk-1 failed",
        |rw| {
            object(rw, "zrh-1", "Widget").is_some()
                && object(rw, "zrh-2", "Widget").is_some()
                && placement(rw, "msk-1").is_some_and(|p| p.state == "Failed")
        },
    )
    .await;
    let msk = placement(&rw, "msk-1").unwrap();
    assert!(
        msk.message.contains(
            "Widget (residency-test.io/v1) is not served by this member: install its CustomResourceDefinition there"
        ),
        "{}",
        msk.message
    );
    for member in [zrh1, zrh2] {
        let w = widgets(member, ns).get("palau").await.unwrap();
        assert_eq!(w.data["spec"]["size"], 3);
        let labels = w.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("country.residency.io/PW").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            labels.get("residency.io/workload").map(String::as_str),
            Some("palau")
        );
    }
    assert!(
        widgets(msk1, ns).list(&Default::default()).await.is_err(),
        "nothing of the kind on msk-1"
    );

    // its controller says it is not ready yet: neither is the workload
    for member in [zrh1, zrh2] {
        widget_status(member, ns, "palau", "False", "Provisioning").await;
    }
    let rw = wait_workload(
        &env.mgmt,
        ns,
        "palau",
        "Widget not ready: Provisioning",
        |rw| {
            ["zrh-1", "zrh-2"].iter().all(|c| {
                object(rw, c, "Widget")
                    .is_some_and(|o| !o.ready && o.message.contains("Provisioning"))
            })
        },
    )
    .await;
    assert_eq!(
        object(&rw, "zrh-1", "Widget").unwrap().message,
        "condition Ready is False: Provisioning: widget is Provisioning"
    );
    assert_eq!(
        object(&rw, "zrh-1", "Widget")
            .unwrap()
            .api_version
            .as_deref(),
        Some("residency-test.io/v1")
    );
    // ... then ready
    for member in [zrh1, zrh2] {
        widget_status(member, ns, "palau", "True", "Ready").await;
    }
    wait_workload(&env.mgmt, ns, "palau", "Ready on zrh-1 and zrh-2", |rw| {
        ["zrh-1", "zrh-2"]
            .iter()
            .all(|c| placement(rw, c).is_some_and(|p| p.state == "Ready"))
    })
    .await;

    // drift on the custom resource: corrected, as for any kind
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    widgets(zrh1, ns)
        .patch("palau", &edit, &Patch::Merge(&json!({"spec": {"size": 7}})))
        .await
        .unwrap();
    eventually("the Widget's size corrected on zrh-1", T, || async {
        let w = widgets(zrh1, ns)
            .get("palau")
            .await
            .map_err(|e| e.to_string())?;
        if w.data["spec"]["size"] == 3 {
            Ok(())
        } else {
            Err(format!("size {}", w.data["spec"]["size"]))
        }
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(env.mgmt.clone(), ns);
    eventually("a DriftCorrected Event naming spec.size", T, || async {
        let list = events
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("DriftCorrected")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("Widget palau") && n.contains("spec.size"))
            })
            .map(|_| ())
            .ok_or_else(|| "none yet".to_string())
    })
    .await;

    cleanup(&env, ns, &["palau"], &["kinds-palau"]).await;
    remove_crd(zrh1).await;
    remove_crd(zrh2).await;
}

#[tokio::test]
async fn roles_that_cannot_escalate_are_placed_and_a_cluster_role_binding_is_refused() {
    let env: Env = setup().await;
    let zrh1 = &env.members[0].1;
    let ns = "kinds-rbac";
    namespace(&env.mgmt, ns).await;
    common::rules::policy(
        &env.mgmt,
        "kinds-nauru",
        &["NR"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let rbac = |binding_ref: Value| {
        json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "nauru", "namespace": ns},
            "spec": {"role": "Processing", "countries": ["NR"], "manifests": [
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "reader"},
                 "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
                 "roleRef": binding_ref, "subjects": [{"kind": "ServiceAccount", "name": "reader"}]}]}})
    };
    // binding the cluster's admin role: the operator refuses the spec, nothing is written
    let admin =
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"});
    apply_workload(&env.mgmt, &rbac(admin)).await.unwrap();
    let rw = wait_workload(&env.mgmt, ns, "nauru", "InvalidSpec", |rw| {
        condition(rw, "Stalled").is_some_and(|c| c.0 == "True" && c.1 == "InvalidSpec")
    })
    .await;
    let (_, _, message) = condition(&rw, "Stalled").unwrap();
    assert!(
        message.contains(
            "RoleBinding binds the ClusterRole admin: only a Role of the same workload may be bound"
        ),
        "{message}"
    );
    assert!(
        !common::rules::namespace_exists(zrh1, ns).await,
        "nothing written to the members"
    );
    // its own Role, to its own ServiceAccount: placed
    let own = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"});
    apply_workload(&env.mgmt, &rbac(own)).await.unwrap();
    wait_workload(&env.mgmt, ns, "nauru", "Ready on zrh-1, zrh-2", |rw| {
        common::rules::ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;
    let role = Api::<Role>::namespaced(zrh1.clone(), ns)
        .get("reader")
        .await
        .unwrap();
    assert_eq!(role.rules.unwrap()[0].verbs, ["get", "list", "watch"]);
    let binding = Api::<RoleBinding>::namespaced(zrh1.clone(), ns)
        .get("reader")
        .await
        .unwrap();
    assert_eq!(binding.role_ref.kind, "Role");
    cleanup(&env, ns, &["nauru"], &["kinds-nauru"]).await;
}

#[tokio::test]
async fn privileged_pods_and_host_paths_are_refused_by_the_members_visibly() {
    let env: Env = setup().await;
    let zrh1 = &env.members[0].1;
    let ns = "kinds-pod-security";
    namespace(&env.mgmt, ns).await;
    common::rules::policy(
        &env.mgmt,
        "kinds-tuvalu",
        &["TV"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let workload = |name: &str, manifest: Value| {
        json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"role": "Processing", "countries": ["TV"], "manifests": [manifest]}})
    };
    let privileged = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "root"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "root"}},
          "template": {"metadata": {"labels": {"app": "root"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                     "securityContext": {"privileged": true}}]}}}});
    let host_path = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "host"},
        "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                   "securityContext": common::restricted(),
                   "volumeMounts": [{"name": "etc", "mountPath": "/host-etc"}]}],
                 "volumes": [{"name": "etc", "hostPath": {"path": "/etc"}}]}});
    // a StatefulSet's controller only sends Events when it cannot create Pods: the operator
    // asks the member itself (a dry-run Pod)
    let privileged_set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "root-set"},
        "spec": {"replicas": 1, "serviceName": "root-set", "selector": {"matchLabels": {"app": "root-set"}},
          "template": {"metadata": {"labels": {"app": "root-set"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example/app:1",
                     "securityContext": {"privileged": true}}]}}}});
    apply_workload(&env.mgmt, &workload("privileged", privileged))
        .await
        .unwrap();
    apply_workload(&env.mgmt, &workload("privileged-set", privileged_set))
        .await
        .unwrap();
    apply_workload(&env.mgmt, &workload("host-path", host_path))
        .await
        .unwrap();

    // the namespace the operator created on the member enforces the restricted standard
    let created = eventually("the namespace on zrh-1", T, || async {
        Api::<Namespace>::all(zrh1.clone())
            .get_opt(ns)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "not yet".to_string())
    })
    .await;
    let labels = created.metadata.labels.unwrap_or_default();
    for mode in ["enforce", "warn", "audit"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("restricted"),
            "{labels:?}"
        );
    }
    // the Deployment is there, its privileged Pods are refused: its status says so, from the
    // member's Deployment controller
    let rw = refused_on_zrh1(
        &env,
        ns,
        "privileged",
        "Deployment",
        "its Pods cannot be created",
    )
    .await;
    assert!(condition(&rw, "Ready").is_some_and(|c| c.0 == "False"));
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(zrh1.clone(), ns)
        .list(&kube::api::ListParams::default().labels("app=root"))
        .await
        .unwrap();
    assert!(
        pods.items.is_empty(),
        "no privileged Pod exists on the member"
    );
    refused_on_zrh1(
        &env,
        ns,
        "privileged-set",
        "StatefulSet",
        "the member refuses its Pods",
    )
    .await;
    // the bare Pod with a host path is refused outright: that placement failed, with the message
    let rw = wait_workload(&env.mgmt, ns, "host-path", "Failed on zrh-1", |rw| {
        placement(rw, "zrh-1").is_some_and(|p| p.state == "Failed")
    })
    .await;
    let p = placement(&rw, "zrh-1").unwrap();
    assert!(
        p.message
            .contains("violates PodSecurity \"restricted:latest\"")
            && p.message.contains("hostPath"),
        "{}",
        p.message
    );
    assert!(
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(zrh1.clone(), ns)
            .get_opt("host")
            .await
            .unwrap()
            .is_none()
    );
    cleanup(
        &env,
        ns,
        &["privileged", "privileged-set", "host-path"],
        &["kinds-tuvalu"],
    )
    .await;
    let _ = Api::<ResidencyPolicy>::all(env.mgmt.clone())
        .delete("kinds-tuvalu", &DeleteParams::default())
        .await;
}
