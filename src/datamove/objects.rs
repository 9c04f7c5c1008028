//! The objects a data move puts on the members (pure): the halves of the move's keys as Secrets,
//! the mover Pods (the source's server, each destination's pull, each side's manifest), and the
//! patches that stop a workload's writers (fence) and start them again (unfence).
//!
//! Every volume of the move is mounted at `/data/<claim>` in the mover Pods on both sides, so
//! one manifest of `/data` covers all of a workload's claims and the paths match on both sides.
//! Mover Pods run where the workload's own Pods may run (its pod template's node selector and
//! tolerations), as root (to read and write any file of the volume), from the operator's image.

use serde_json::{Value, json};

use crate::api::labels;

/// The label naming the move an object belongs to.
pub const MOVE_LABEL: &str = "residency.io/move";
/// The port the source's mover listens on.
pub const PORT: u16 = 9443;
/// Where the keys are mounted.
const KEYS: &str = "/keys";

/// What a mover Pod does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serve the source volumes until deleted.
    Serve,
    /// Pull from the source mover at `from` (host:port), then exit.
    Pull {
        /// The source mover's address.
        from: String,
    },
    /// Print the manifest of the volumes, then exit.
    Manifest,
}

/// Where a mover Pod may run, and as whom: the workload's pod template's scheduling
/// constraints and user.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scheduling {
    /// `spec.nodeSelector` of the workload's pod template.
    pub node_selector: Option<Value>,
    /// `spec.tolerations` of the workload's pod template.
    pub tolerations: Option<Value>,
    /// The user the workload's Pods run as, when they run as non-root.
    pub non_root: Option<NonRoot>,
}

/// A non-root identity of the workload's Pods: the mover runs as the same user, so it reads
/// what they wrote and writes what they will read, and passes the `restricted` Pod Security
/// standard like them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NonRoot {
    /// `runAsUser` (pod or first container); `None`: the image's own user.
    pub user: Option<i64>,
    /// `runAsGroup`.
    pub group: Option<i64>,
    /// `fsGroup`.
    pub fs_group: Option<i64>,
}

/// The user of `spec` (a pod spec): non-root when `runAsNonRoot` is true or `runAsUser` is
/// above 0, at pod level or in the first container.
fn non_root(spec: &Value) -> Option<NonRoot> {
    let pod = spec.get("securityContext");
    let container = spec.pointer("/containers/0/securityContext");
    let field = |name: &str| {
        container
            .and_then(|c| c.get(name))
            .or_else(|| pod.and_then(|p| p.get(name)))
            .cloned()
    };
    let user = field("runAsUser").and_then(|v| v.as_i64());
    let asked = field("runAsNonRoot").and_then(|v| v.as_bool()) == Some(true);
    if user == Some(0) || !(asked || user.is_some_and(|u| u > 0)) {
        return None;
    }
    Some(NonRoot {
        user,
        group: field("runAsGroup").and_then(|v| v.as_i64()),
        fs_group: pod.and_then(|p| p.get("fsGroup")).and_then(|v| v.as_i64()),
    })
}

impl Scheduling {
    /// The scheduling constraints of a workload manifest's pod template (StatefulSet,
    /// Deployment, ReplicaSet, Job: `spec.template.spec`; CronJob:
    /// `spec.jobTemplate.spec.template.spec`).
    pub fn of(manifest: &Value) -> Scheduling {
        let spec = manifest
            .pointer("/spec/template/spec")
            .or_else(|| manifest.pointer("/spec/jobTemplate/spec/template/spec"));
        Scheduling {
            node_selector: spec.and_then(|s| s.get("nodeSelector")).cloned(),
            tolerations: spec.and_then(|s| s.get("tolerations")).cloned(),
            non_root: spec.and_then(non_root),
        }
    }
}

fn move_labels(move_id: &str) -> Value {
    json!({
        labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
        MOVE_LABEL: move_id,
    })
}

/// The Secret holding one side's half of the move's keys (`files`: name and PEM).
pub fn keys_secret(name: &str, move_id: &str, files: &[(&str, String)]) -> Value {
    let data: serde_json::Map<String, Value> = files
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "labels": move_labels(move_id)},
        "type": "Opaque",
        "stringData": data,
    })
}

/// A mover Pod: `role` on `claims` (each mounted at `/data/<claim>`), keys from `keys_secret`.
pub fn mover_pod(
    name: &str,
    move_id: &str,
    image: &str,
    role: &Role,
    claims: &[String],
    keys_secret: &str,
    scheduling: &Scheduling,
) -> Value {
    let port = PORT.to_string();
    let listen = format!("0.0.0.0:{port}");
    let args: Vec<&str> = match role {
        Role::Serve => vec![
            "mover", "serve", "--dir", "/data", "--keys", KEYS, "--listen", &listen,
        ],
        Role::Pull { from } => vec![
            "mover", "pull", "--dir", "/data", "--keys", KEYS, "--from", from,
        ],
        Role::Manifest => vec!["mover", "manifest", "--dir", "/data", "--entries"],
    };
    let mut mounts: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"name": format!("claim-{i}"), "mountPath": format!("/data/{c}"),
                              "readOnly": matches!(role, Role::Serve | Role::Manifest)})
        })
        .collect();
    let mut volumes: Vec<Value> = claims
        .iter()
        .enumerate()
        .map(|(i, c)| json!({"name": format!("claim-{i}"), "persistentVolumeClaim": {"claimName": c}}))
        .collect();
    if !matches!(role, Role::Manifest) {
        mounts.push(json!({"name": "keys", "mountPath": KEYS, "readOnly": true}));
        // the kubelet writes the files as root: a mover running as the workload's user reads
        // them through the other-read bit (the volume is mounted in this one container only)
        let mode = if scheduling.non_root.is_some() {
            0o444
        } else {
            0o400
        };
        volumes.push(
            json!({"name": "keys", "secret": {"secretName": keys_secret, "defaultMode": mode}}),
        );
    }
    let mut spec = json!({
        "restartPolicy": if *role == Role::Serve { "Always" } else { "Never" },
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": 5,
        "containers": [{
            "name": "mover",
            "image": image,
            "command": ["/usr/local/bin/residency-operator"],
            "args": args,
            "securityContext": {
                "runAsUser": 0, "runAsNonRoot": false,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "volumeMounts": mounts,
        }],
        "volumes": volumes,
    });
    if *role == Role::Serve {
        spec["containers"][0]["ports"] = json!([{"name": "mover", "containerPort": PORT}]);
    }
    if let Some(who) = &scheduling.non_root {
        // as the workload's user, within the restricted Pod Security standard
        let sc = &mut spec["containers"][0]["securityContext"];
        sc["runAsNonRoot"] = json!(true);
        sc["capabilities"] = json!({"drop": ["ALL"]});
        match who.user {
            Some(u) => sc["runAsUser"] = json!(u),
            None => {
                if let Some(o) = sc.as_object_mut() {
                    o.remove("runAsUser");
                }
            }
        }
        if let Some(g) = who.group {
            sc["runAsGroup"] = json!(g);
        }
        if let Some(g) = who.fs_group {
            spec["securityContext"] = json!({"fsGroup": g});
        }
    }
    if let Some(ns) = &scheduling.node_selector {
        spec["nodeSelector"] = ns.clone();
    }
    if let Some(t) = &scheduling.tolerations {
        spec["tolerations"] = t.clone();
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": move_labels(move_id)},
        "spec": spec,
    })
}

/// How a workload's writers are stopped, and started again.
#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    /// The merge patch that stops them.
    pub stop: Value,
    /// The merge patch that restores what `live` had.
    pub restore: Value,
}

/// The fence of one live object of the workload: replicas to 0 for StatefulSets, Deployments
/// and ReplicaSets, `suspend: true` for CronJobs and Jobs; `None` for kinds without writers
/// (ConfigMaps, Services, ...); `Err` for a kind whose writers cannot be stopped this way
/// (DaemonSet, a bare Pod), which a move refuses to start (pure).
pub fn fence(kind: &str, live: &Value) -> Result<Option<Fence>, String> {
    match kind {
        "StatefulSet" | "Deployment" | "ReplicaSet" => {
            let replicas = live.pointer("/spec/replicas").cloned().unwrap_or(json!(1));
            Ok(Some(Fence {
                stop: json!({"spec": {"replicas": 0}}),
                restore: json!({"spec": {"replicas": replicas}}),
            }))
        }
        "CronJob" | "Job" => {
            let suspend = live
                .pointer("/spec/suspend")
                .cloned()
                .unwrap_or(json!(false));
            Ok(Some(Fence {
                stop: json!({"spec": {"suspend": true}}),
                restore: json!({"spec": {"suspend": suspend}}),
            }))
        }
        "DaemonSet" | "Pod" => Err(format!(
            "a {kind}'s writers cannot be stopped by the operator: move its data by hand, or run it as a StatefulSet or Deployment"
        )),
        _ => Ok(None),
    }
}

/// Whether `live` already has every field a merge `patch` sets (pure): a fence already in
/// place needs no write.
pub fn holds(live: &Value, patch: &Value) -> bool {
    match patch {
        Value::Object(fields) => fields
            .iter()
            .all(|(k, v)| holds(live.get(k).unwrap_or(&Value::Null), v)),
        other => live == other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn movers_of_a_non_root_workload_run_as_its_user_within_restricted() {
        let sts = json!({"kind": "StatefulSet", "spec": {"template": {"spec": {
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000},
            "containers": [{"name": "db", "securityContext": {"runAsGroup": 3000}}]}}}});
        let sched = Scheduling::of(&sts);
        assert_eq!(
            sched.non_root,
            Some(NonRoot {
                user: Some(1000),
                group: Some(3000),
                fs_group: Some(2000)
            })
        );
        let pod = mover_pod("m", "mv1", "img:1", &Role::Manifest, &[], "keys", &sched);
        let sc = &pod["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["runAsUser"], 1000);
        assert_eq!(sc["runAsGroup"], 3000);
        assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 2000);
        let serve = mover_pod("m", "mv1", "img:1", &Role::Serve, &[], "keys", &sched);
        assert_eq!(
            serve["spec"]["volumes"][0]["secret"]["defaultMode"], 0o444,
            "readable by the workload's user"
        );
        // a root workload: the mover is root too (a restricted namespace refuses both)
        let root = json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
        assert_eq!(Scheduling::of(&root).non_root, None);
        let as_root = json!({"spec": {"template": {"spec": {"securityContext": {"runAsUser": 0, "runAsNonRoot": true}}}}});
        assert_eq!(Scheduling::of(&as_root).non_root, None);
    }

    #[test]
    fn a_fence_in_place_holds() {
        let stop = json!({"spec": {"replicas": 0}});
        assert!(holds(&json!({"spec": {"replicas": 0, "x": 1}}), &stop));
        assert!(!holds(&json!({"spec": {"replicas": 2}}), &stop));
        assert!(!holds(&json!({"spec": {}}), &stop));
        assert!(holds(
            &json!({"spec": {"suspend": true}}),
            &json!({"spec": {"suspend": true}})
        ));
    }

    #[test]
    fn mover_pods_mount_every_claim_under_data_and_run_where_the_workload_may() {
        let sts = json!({"kind": "StatefulSet", "spec": {"template": {"spec": {
            "nodeSelector": {"residency.io/real-node": "true"},
            "tolerations": [{"key": "residency.io/real-node", "operator": "Exists"}],
            "containers": []}}}});
        let sched = Scheduling::of(&sts);
        assert_eq!(
            sched.node_selector,
            Some(json!({"residency.io/real-node": "true"}))
        );
        let claims = vec!["samples-store-0".to_string(), "index".to_string()];
        let serve = mover_pod(
            "m-src",
            "mv1",
            "img:1",
            &Role::Serve,
            &claims,
            "keys",
            &sched,
        );
        let c = &serve["spec"]["containers"][0];
        assert_eq!(c["args"][1], "serve");
        assert_eq!(c["volumeMounts"][0]["mountPath"], "/data/samples-store-0");
        assert_eq!(c["volumeMounts"][1]["mountPath"], "/data/index");
        assert_eq!(
            c["volumeMounts"][0]["readOnly"], true,
            "the source is only read"
        );
        assert_eq!(c["volumeMounts"][2]["mountPath"], "/keys");
        assert_eq!(serve["spec"]["restartPolicy"], "Always");
        assert_eq!(
            serve["spec"]["tolerations"][0]["key"],
            "residency.io/real-node"
        );
        assert_eq!(serve["metadata"]["labels"][MOVE_LABEL], "mv1");
        assert_eq!(c["ports"][0]["containerPort"], PORT);
        let pull = mover_pod(
            "m-dst",
            "mv1",
            "img:1",
            &Role::Pull {
                from: "10.0.0.7:9443".into(),
            },
            &claims,
            "keys",
            &sched,
        );
        let c = &pull["spec"]["containers"][0];
        assert_eq!(
            c["args"].as_array().unwrap().last().unwrap(),
            "10.0.0.7:9443"
        );
        assert_eq!(c["volumeMounts"][0]["readOnly"], false);
        assert_eq!(pull["spec"]["restartPolicy"], "Never");
        let manifest = mover_pod(
            "m-man",
            "mv1",
            "img:1",
            &Role::Manifest,
            &claims,
            "keys",
            &Scheduling::default(),
        );
        let mounts = manifest["spec"]["containers"][0]["volumeMounts"]
            .as_array()
            .unwrap();
        assert_eq!(mounts.len(), 2, "the manifest pass needs no keys");
        assert!(manifest["spec"].get("tolerations").is_none());
        // the Pod specs are valid Pods
        for p in [serve, pull, manifest] {
            serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(p).unwrap();
        }
    }

    #[test]
    fn keys_secrets_hold_only_the_half_given() {
        let s = keys_secret(
            "mv1-keys",
            "mv1",
            &[("ca.crt", "CA".into()), ("client.key", "K".into())],
        );
        assert_eq!(s["stringData"].as_object().unwrap().len(), 2);
        assert_eq!(s["metadata"]["labels"][MOVE_LABEL], "mv1");
        serde_json::from_value::<k8s_openapi::api::core::v1::Secret>(s).unwrap();
    }

    #[test]
    fn fences_stop_writers_and_restore_what_was_there() {
        let f = fence("StatefulSet", &json!({"spec": {"replicas": 3}}))
            .unwrap()
            .unwrap();
        assert_eq!(f.stop, json!({"spec": {"replicas": 0}}));
        assert_eq!(f.restore, json!({"spec": {"replicas": 3}}));
        let d = fence("Deployment", &json!({"spec": {}})).unwrap().unwrap();
        assert_eq!(
            d.restore,
            json!({"spec": {"replicas": 1}}),
            "the API default"
        );
        let c = fence("CronJob", &json!({"spec": {"suspend": false}}))
            .unwrap()
            .unwrap();
        assert_eq!(c.stop, json!({"spec": {"suspend": true}}));
        assert_eq!(c.restore, json!({"spec": {"suspend": false}}));
        assert_eq!(fence("ConfigMap", &json!({})).unwrap(), None);
        assert!(
            fence("DaemonSet", &json!({}))
                .unwrap_err()
                .contains("DaemonSet")
        );
    }
}
