//! The drift comparison against what a real API server returns: a table of manifests written in
//! the forms people use (numbers for quantities, `1024Mi`, `1000m`, empty lists and maps,
//! Secrets with `stringData`, int-or-string ports) is built as the operator builds it, applied
//! to a member with the operator's field manager, read back, and must show no drift; an
//! out-of-band change to each must show as drift (the comparison is not blind).

mod common;

use common::Fleet;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use residency_operator::api::{FIELD_MANAGER, ResidentWorkload};
use residency_operator::{desired, drift};
use serde_json::{Value, json};

const NS: &str = "drift-roundtrip";

/// `(manifest, an out-of-band merge patch that is real drift, its path)`.
fn table() -> Vec<(Value, Value, &'static str)> {
    let container = json!({"name": "c", "image": "registry.example/app:1", "args": [], "env": [],
        "resources": {"requests": {"cpu": 0.5, "memory": "1024Mi"}, "limits": {"cpu": 1, "memory": "2Gi"}},
        "ports": [{"containerPort": 8080}]});
    vec![
        (
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "annotations": {}},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                         "template": {"metadata": {"labels": {"app": "d"}},
                                      "spec": {"nodeSelector": {}, "tolerations": [], "containers": [container.clone()]}}}}),
            json!({"spec": {"replicas": 3}}),
            "spec.replicas",
        ),
        (
            json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
                "spec": {"serviceName": "s", "replicas": 1, "selector": {"matchLabels": {"app": "s"}},
                         "template": {"metadata": {"labels": {"app": "s"}},
                                      "spec": {"containers": [{"name": "c", "image": "registry.example/db:1",
                                               "resources": {"requests": {"cpu": "1000m", "memory": 1073741824_i64}}}]}},
                         "volumeClaimTemplates": [{"metadata": {"name": "data"},
                             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1024Mi"}}}}]}}),
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "evil:1"}]}}}}),
            "spec.template.spec.containers[c].image",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"},
                "spec": {"selector": {"app": "d"}, "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "named", "port": 81, "targetPort": "http"}]}}),
            json!({"spec": {"selector": {"app": "other"}}}),
            "spec.selector.app",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec"},
                "stringData": {"password": "hunter2"}, "data": {"token": "dG9rZW4="}}),
            json!({"data": {"password": "c3RvbGVu"}}),
            "data.password",
        ),
        (
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "labels": {}},
                "data": {"k": "v"}, "binaryData": {}}),
            json!({"data": {"k": "changed"}}),
            "data.k",
        ),
        (
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "pvc"},
                "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "none",
                         "resources": {"requests": {"storage": 1073741824_i64}}}}),
            json!({"metadata": {"labels": {"country.residency.io/KI": null}}}),
            "metadata.labels.country.residency.io/KI",
        ),
        (
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "cj"},
                "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never", "volumes": [],
                    "containers": [{"name": "c", "image": "registry.example/job:1", "command": ["run"],
                                    "resources": {}}]}}}}}}),
            json!({"spec": {"schedule": "0 * * * *"}}),
            "spec.schedule",
        ),
        (
            json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "hpa"},
                "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"},
                         "minReplicas": 1, "maxReplicas": 3,
                         "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                             "target": {"type": "AverageValue", "averageValue": 0.5}}}]}}),
            json!({"spec": {"maxReplicas": 9}}),
            "spec.maxReplicas",
        ),
    ]
}

#[tokio::test]
async fn what_the_api_server_returns_for_valid_manifests_is_not_drift() {
    let fleet = Fleet::from_env();
    let member = fleet.member(&fleet.members[0].context).await;
    common::operator::ensure_namespace(&member, NS).await;
    let cases = table();
    let rw: ResidentWorkload = serde_json::from_value(json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "roundtrip", "namespace": NS},
        "spec": {"role": "Storage", "countries": ["KI"],
                 "manifests": cases.iter().map(|c| c.0.clone()).collect::<Vec<_>>()}
    }))
    .unwrap();
    let objects = desired::build(&rw, Some("standard")).expect("the table builds");
    assert_eq!(objects.len(), cases.len());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut checked = 0;
    for obj in &objects {
        let ar = desired::api_resource(&obj.api_version, &obj.kind).unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(member.clone(), NS, &ar);
        let what = format!("{} {}", obj.kind, obj.name);
        let live = api
            .patch(&obj.name, &params, &Patch::Apply(&obj.object))
            .await
            .unwrap_or_else(|e| panic!("apply {what}: {e}"));
        let live = serde_json::to_value(&live).unwrap();
        let found = drift::compare(&obj.object, &live, &[]);
        assert!(found.is_empty(), "{what} right after apply: {found:?}");

        // a real out-of-band change is seen
        let (_, change, path) = cases
            .iter()
            .find(|c| c.0["kind"] == obj.kind.as_str())
            .unwrap();
        let edited = api
            .patch(
                &obj.name,
                &PatchParams {
                    field_manager: Some("kubectl-edit".into()),
                    ..Default::default()
                },
                &Patch::Strategic(change),
            )
            .await
            .unwrap_or_else(|e| panic!("edit {what}: {e}"));
        let found = drift::compare(&obj.object, &serde_json::to_value(&edited).unwrap(), &[]);
        assert_eq!(
            found.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            [*path],
            "{what} after an out-of-band change: {found:?}"
        );
        if obj.kind == "Secret" {
            let shown = format!("{found:?}");
            assert!(
                !shown.contains("c3RvbGVu") && !shown.contains("hunter2"),
                "{shown}"
            );
        }
        checked += 1;
    }
    eprintln!("{checked} kinds round-tripped through the API server without false drift");
    let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(member)
        .delete(NS, &Default::default())
        .await;
}
