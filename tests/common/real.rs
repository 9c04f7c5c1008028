//! Helpers for Pods on the fleet's real nodes (tests/testenv/nodes.sh): the toleration and node
//! selector that put a Pod there, the local test image, waiting until a Pod really runs (or
//! failing with what keeps it from starting), and `kubectl exec`.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{Value, json};

/// The local test image on every real node (Debian's busybox, imported: never pulled).
pub const TEST_IMAGE: &str = "residency.local/busybox:1";

/// The StorageClass of the real nodes' local volumes (directories on the host).
pub const REAL_STORAGE_CLASS: &str = "real-local";

/// A Pod spec running `script` (busybox sh) on the member's real node, with `volumes` mounted as
/// `(claim, mount path)`.
pub fn pod(name: &str, image: &str, script: &str, volumes: &[(&str, &str)]) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "nodeSelector": {"residency.io/real-node": "true"},
            "tolerations": [{"key": "residency.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main", "image": image, "imagePullPolicy": "Never",
                "securityContext": super::restricted(),
                "command": ["/bin/busybox", "sh", "-c", script],
                "volumeMounts": volumes.iter().enumerate()
                    .map(|(i, (_, path))| json!({"name": format!("v{i}"), "mountPath": path}))
                    .collect::<Vec<_>>(),
            }],
            "volumes": volumes.iter().enumerate()
                .map(|(i, (claim, _))| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": claim}}))
                .collect::<Vec<_>>(),
        }
    })
}

/// Container states that will not get better by waiting.
const HOPELESS: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerError",
    "CreateContainerConfigError",
    "RunContainerError",
];

/// Waits until the Pod runs with every container ready-to-serve (`Running`), or returns an error
/// naming the Pod, its image and why it cannot start as soon as that is clear (a missing image,
/// a crash loop), or what it was still doing at `timeout`.
pub async fn running(pods: &Api<Pod>, name: &str, timeout: Duration) -> Result<Pod, String> {
    let start = std::time::Instant::now();
    let mut last = String::from("not created");
    while start.elapsed() < timeout {
        if let Ok(p) = pods.get(name).await {
            let status = p.status.clone().unwrap_or_default();
            for c in status.container_statuses.iter().flatten() {
                if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                    let reason = w.reason.clone().unwrap_or_default();
                    if HOPELESS.contains(&reason.as_str()) {
                        return Err(format!(
                            "pod {name}: container {} (image {}) cannot start: {reason}: {}",
                            c.name,
                            c.image,
                            w.message.clone().unwrap_or_default()
                        ));
                    }
                }
                if let Some(t) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    return Err(format!(
                        "pod {name}: container {} (image {}) exited with {}: {}",
                        c.name,
                        c.image,
                        t.exit_code,
                        t.reason.clone().unwrap_or_default()
                    ));
                }
            }
            let phase = status.phase.clone().unwrap_or_default();
            let all_running = !status
                .container_statuses
                .clone()
                .unwrap_or_default()
                .is_empty()
                && status
                    .container_statuses
                    .iter()
                    .flatten()
                    .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
            if phase == "Running" && all_running {
                return Ok(p);
            }
            last = format!(
                "phase {phase}, node {:?}, conditions {:?}",
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                status
                    .conditions
                    .iter()
                    .flatten()
                    .map(|c| format!(
                        "{}={} {}",
                        c.type_,
                        c.status,
                        c.message.clone().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("pod {name} not running within {timeout:?}: {last}"))
}

/// `kubectl exec` in a Pod's first container; stdout, or an error with stderr.
pub async fn exec(
    context: &str,
    namespace: &str,
    pod: &str,
    command: &[&str],
) -> Result<String, String> {
    let kubectl = std::env::var("RESIDENCY_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kubeconfig = super::Fleet::kubeconfig_path();
    let out = tokio::process::Command::new(kubectl)
        .args([
            "--kubeconfig",
            &kubeconfig,
            "--context",
            context,
            "-n",
            namespace,
            "exec",
            pod,
            "--",
        ])
        .args(command)
        .output()
        .await
        .map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "exec {command:?} in {context}/{namespace}/{pod}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Deletes the namespace and releases the real volumes its claims were bound to, for the next
/// run (the real-local PersistentVolumes are Retain: the directories keep their files).
pub async fn release(client: kube::Client, ns: &str, claims: &[&str]) {
    use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
    use kube::api::{DeleteParams, Patch, PatchParams};
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let mut volumes = Vec::new();
    for c in claims {
        if let Some(v) = pvcs
            .get_opt(c)
            .await
            .ok()
            .flatten()
            .and_then(|p| p.spec?.volume_name)
        {
            volumes.push(v);
        }
    }
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::background())
        .await;
    let pvs: Api<PersistentVolume> = Api::all(client);
    for v in volumes {
        super::eventually(
            "the real volume released",
            Duration::from_secs(90),
            || async {
                let pv = pvs.get(&v).await.map_err(|e| e.to_string())?;
                match pv.status.and_then(|s| s.phase).as_deref() {
                    Some("Released") | Some("Available") => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
        let _ = pvs
            .patch(
                &v,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"claimRef": null}})),
            )
            .await;
    }
}

/// Creates a 1 GiB claim `name` on the member's real volumes (`real-local`).
pub async fn claim(client: &kube::Client, ns: &str, name: &str) -> Result<(), String> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": REAL_STORAGE_CLASS,
                 "resources": {"requests": {"storage": "1Gi"}}}}))
    .map_err(|e| e.to_string())?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &pvc)
        .await
        .map(|_| ())
        .map_err(|e| format!("claim {name}: {e}"))
}
