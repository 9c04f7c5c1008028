//! Whether a live object placed on a member is ready, judged from its JSON alone (its
//! `metadata.generation`, `spec` and `status`), following the conventions of kstatus.
//!
//! Pure: no I/O and no API calls.

use serde_json::Value;

/// The readiness of one live object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Whether the object is ready.
    pub ready: bool,
    /// What is missing when not ready (empty when ready).
    pub message: String,
}

impl Readiness {
    fn ready() -> Self {
        Self {
            ready: true,
            message: String::new(),
        }
    }

    fn not_ready(message: impl Into<String>) -> Self {
        Self {
            ready: false,
            message: message.into(),
        }
    }
}

/// Evaluates the readiness of the live object `live` of `apiVersion`/`kind` (the rule comes
/// from [`crate::kinds::readiness`]).
///
/// - Deployment: the controller observed the current generation, all replicas are updated and
///   available, no old replicas remain, and the `Available` condition is `True` (a
///   `ReplicaFailure` condition - Pods the member refuses, e.g. by Pod Security - is named).
/// - StatefulSet: current generation observed, all replicas ready and updated.
/// - DaemonSet: current generation observed and every scheduled pod ready.
/// - PersistentVolumeClaim: phase `Bound`.
/// - Job: condition `Complete=True` (`Failed=True` is reported as a failure).
/// - Pod: phase `Succeeded`, or `Running` with condition `Ready=True`.
/// - Every other kind, users' custom resources included, by the Kubernetes status conventions
///   (kstatus): not ready while `status.observedGeneration` is behind `metadata.generation`, or
///   while a `Stalled` or `Reconciling` condition is `True`; then its `Ready` condition, else its
///   `Available` condition, decides; an object that reports no such condition is ready as soon
///   as it exists.
pub fn evaluate(api_version: &str, kind: &str, live: &Value) -> Readiness {
    use crate::kinds::Readiness as Rule;
    match crate::kinds::readiness(crate::kinds::group_of(api_version), kind) {
        Rule::Deployment => deployment(live),
        Rule::StatefulSet => statefulset(live),
        Rule::DaemonSet => daemonset(live),
        Rule::Claim => pvc(live),
        Rule::Job => job(live),
        Rule::Pod => pod(live),
        Rule::Conventions => conventions(live),
    }
}

/// kstatus: observedGeneration, Stalled, Reconciling, then Ready or Available.
fn conventions(live: &Value) -> Readiness {
    if let (Some(generation), Some(observed)) = (
        int(live, "/metadata/generation"),
        int(live, "/status/observedGeneration"),
    ) && observed < generation
    {
        return Readiness::not_ready(format!(
            "waiting for its controller to observe generation {generation} (it has observed {observed})"
        ));
    }
    for (kind, what) in [("Stalled", "stalled"), ("Reconciling", "reconciling")] {
        if condition_true(live, kind)
            && let Some(c) = condition(live, kind)
        {
            return Readiness::not_ready(format!("{what}: {}", condition_detail(c)));
        }
    }
    for kind in ["Ready", "Available"] {
        if let Some(c) = condition(live, kind) {
            return if condition_true(live, kind) {
                Readiness::ready()
            } else {
                Readiness::not_ready(format!(
                    "condition {kind} is {}: {}",
                    c.get("status").and_then(Value::as_str).unwrap_or("unset"),
                    condition_detail(c)
                ))
            };
        }
    }
    Readiness::ready()
}

fn int(value: &Value, pointer: &str) -> Option<i64> {
    value.pointer(pointer).and_then(Value::as_i64)
}

fn string<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The condition of type `kind` in `status.conditions`.
fn condition<'a>(live: &'a Value, kind: &str) -> Option<&'a Value> {
    live.pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn condition_true(live: &Value, kind: &str) -> bool {
    condition(live, kind).and_then(|c| c.get("status").and_then(Value::as_str)) == Some("True")
}

/// `reason: message` of a condition, or whichever of the two is set.
fn condition_detail(cond: &Value) -> String {
    let reason = cond.get("reason").and_then(Value::as_str).unwrap_or("");
    let message = cond.get("message").and_then(Value::as_str).unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (false, false) => format!("{reason}: {message}"),
        (false, true) => reason.to_string(),
        (true, false) => message.to_string(),
        (true, true) => "no reason given".to_string(),
    }
}

/// `None` when the controller observed the object's current generation, else why not.
fn generation_pending(live: &Value) -> Option<String> {
    let generation = int(live, "/metadata/generation")?;
    match int(live, "/status/observedGeneration") {
        Some(observed) if observed >= generation => None,
        Some(observed) => Some(format!(
            "waiting for the controller to observe generation {generation} (it has observed {observed})"
        )),
        None => Some(format!(
            "waiting for the controller to observe generation {generation}"
        )),
    }
}

/// `spec.replicas`, 1 when unset.
fn desired_replicas(live: &Value) -> i64 {
    int(live, "/spec/replicas").unwrap_or(1)
}

fn deployment(live: &Value) -> Readiness {
    if let Some(pending) = generation_pending(live) {
        return Readiness::not_ready(pending);
    }
    if let Some(progressing) = condition(live, "Progressing")
        && progressing.get("reason").and_then(Value::as_str) == Some("ProgressDeadlineExceeded")
    {
        return Readiness::not_ready(format!(
            "rollout stalled: {}",
            condition_detail(progressing)
        ));
    }
    let replicas = desired_replicas(live);
    let updated = int(live, "/status/updatedReplicas").unwrap_or(0);
    let available = int(live, "/status/availableReplicas").unwrap_or(0);
    let total = int(live, "/status/replicas").unwrap_or(0);
    // Pods that cannot be created leave the rollout at 0 updated: the reason comes first
    if condition_true(live, "ReplicaFailure")
        && let Some(c) = condition(live, "ReplicaFailure")
    {
        return Readiness::not_ready(format!(
            "{available} of {replicas} replicas available; its Pods cannot be created: {}",
            condition_detail(c)
        ));
    }
    if updated < replicas {
        return Readiness::not_ready(format!("{updated} of {replicas} replicas updated"));
    }
    if total > updated {
        return Readiness::not_ready(format!(
            "{} old replicas pending termination",
            total - updated
        ));
    }
    if available < replicas {
        return Readiness::not_ready(format!("{available} of {replicas} replicas available"));
    }
    if replicas > 0 && !condition_true(live, "Available") {
        return Readiness::not_ready("condition Available is not True");
    }
    Readiness::ready()
}

fn statefulset(live: &Value) -> Readiness {
    if let Some(pending) = generation_pending(live) {
        return Readiness::not_ready(pending);
    }
    let replicas = desired_replicas(live);
    let ready = int(live, "/status/readyReplicas").unwrap_or(0);
    if ready < replicas {
        return Readiness::not_ready(format!("{ready} of {replicas} replicas ready"));
    }
    if let Some(updated) = int(live, "/status/updatedReplicas") {
        // A rolling update with a partition only updates the ordinals at or above it.
        let partition = int(live, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
        let expected = (replicas - partition.max(0)).max(0);
        if updated < expected {
            return Readiness::not_ready(format!("{updated} of {expected} replicas updated"));
        }
    }
    Readiness::ready()
}

fn daemonset(live: &Value) -> Readiness {
    if let Some(pending) = generation_pending(live) {
        return Readiness::not_ready(pending);
    }
    let Some(desired) = int(live, "/status/desiredNumberScheduled") else {
        return Readiness::not_ready("the controller has not yet reported status");
    };
    let ready = int(live, "/status/numberReady").unwrap_or(0);
    if ready < desired {
        return Readiness::not_ready(format!("{ready} of {desired} pods ready"));
    }
    if let Some(updated) = int(live, "/status/updatedNumberScheduled")
        && updated < desired
    {
        return Readiness::not_ready(format!("{updated} of {desired} pods updated"));
    }
    Readiness::ready()
}

fn pvc(live: &Value) -> Readiness {
    match string(live, "/status/phase") {
        Some("Bound") => Readiness::ready(),
        Some(phase) => Readiness::not_ready(format!("phase {phase}")),
        None => Readiness::not_ready("phase unknown"),
    }
}

fn job(live: &Value) -> Readiness {
    if condition_true(live, "Complete") {
        return Readiness::ready();
    }
    if condition_true(live, "Failed") {
        let detail = condition(live, "Failed")
            .map(condition_detail)
            .unwrap_or_default();
        return Readiness::not_ready(format!("failed: {detail}"));
    }
    if condition_true(live, "Suspended") {
        return Readiness::not_ready("suspended");
    }
    Readiness::not_ready("running")
}

fn pod(live: &Value) -> Readiness {
    match string(live, "/status/phase") {
        Some("Succeeded") => Readiness::ready(),
        Some("Running") if condition_true(live, "Ready") => Readiness::ready(),
        Some("Running") => Readiness::not_ready("running, not ready"),
        Some("Failed") => {
            let reason = string(live, "/status/reason").unwrap_or("");
            let message = string(live, "/status/message").unwrap_or("");
            let detail = match (reason.is_empty(), message.is_empty()) {
                (false, false) => format!("{reason}: {message}"),
                (false, true) => reason.to_string(),
                (true, false) => message.to_string(),
                (true, true) => "no reason given".to_string(),
            };
            Readiness::not_ready(format!("failed: {detail}"))
        }
        Some(phase) => Readiness::not_ready(format!("phase {phase}")),
        None => Readiness::not_ready("phase unknown"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment_json(generation: i64, observed: i64, status: Value) -> Value {
        let mut status = status;
        status["observedGeneration"] = json!(observed);
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "finance", "generation": generation},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}},
            "status": status
        })
    }

    fn available(status: &str) -> Value {
        json!({
            "type": "Available",
            "status": status,
            "reason": if status == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
            "message": "Deployment has minimum availability."
        })
    }

    #[test]
    fn deployment_ready() {
        let live = deployment_json(
            3,
            3,
            json!({
                "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                "conditions": [
                    available("True"),
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
                ]
            }),
        );
        assert_eq!(evaluate("apps/v1", "Deployment", &live), Readiness::ready());
    }

    #[test]
    fn deployment_not_ready() {
        let partial = deployment_json(
            3,
            3,
            json!({
                "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1,
                "conditions": [available("True")]
            }),
        );
        assert_eq!(
            evaluate("apps/v1", "Deployment", &partial),
            Readiness::not_ready("1 of 2 replicas available")
        );

        let stale = deployment_json(
            4,
            3,
            json!({"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                   "conditions": [available("True")]}),
        );
        let r = evaluate("apps/v1", "Deployment", &stale);
        assert!(!r.ready);
        assert!(r.message.contains("generation 4"), "{}", r.message);

        let rolling = deployment_json(
            3,
            3,
            json!({"replicas": 3, "updatedReplicas": 1, "availableReplicas": 2,
                   "conditions": [available("True")]}),
        );
        assert_eq!(
            evaluate("apps/v1", "Deployment", &rolling),
            Readiness::not_ready("1 of 2 replicas updated")
        );

        let old_left = deployment_json(
            3,
            3,
            json!({"replicas": 3, "updatedReplicas": 2, "availableReplicas": 2,
                   "conditions": [available("True")]}),
        );
        assert_eq!(
            evaluate("apps/v1", "Deployment", &old_left),
            Readiness::not_ready("1 old replicas pending termination")
        );

        let unavailable = deployment_json(
            3,
            3,
            json!({"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                   "conditions": [available("False")]}),
        );
        assert_eq!(
            evaluate("apps/v1", "Deployment", &unavailable),
            Readiness::not_ready("condition Available is not True")
        );

        let stalled = deployment_json(
            3,
            3,
            json!({"replicas": 2, "updatedReplicas": 1, "availableReplicas": 1,
                   "conditions": [{"type": "Progressing", "status": "False",
                                   "reason": "ProgressDeadlineExceeded",
                                   "message": "ReplicaSet \"web-5d\" has timed out progressing."}]}),
        );
        let r = evaluate("apps/v1", "Deployment", &stalled);
        assert!(!r.ready);
        assert!(
            r.message
                .starts_with("rollout stalled: ProgressDeadlineExceeded")
        );

        // No status at all yet.
        let fresh = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 1},
            "spec": {}
        });
        assert!(!evaluate("apps/v1", "Deployment", &fresh).ready);
    }

    #[test]
    fn deployment_default_replicas_is_one() {
        let live = json!({
            "metadata": {"name": "web", "generation": 1},
            "spec": {},
            "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
                       "availableReplicas": 1, "conditions": [available("True")]}
        });
        assert!(evaluate("apps/v1", "Deployment", &live).ready);
        let none = json!({
            "metadata": {"name": "web", "generation": 1},
            "spec": {},
            "status": {"observedGeneration": 1, "conditions": [available("True")]}
        });
        assert_eq!(
            evaluate("apps/v1", "Deployment", &none),
            Readiness::not_ready("0 of 1 replicas updated")
        );
    }

    #[test]
    fn statefulset_rules() {
        let sts = |status: Value| {
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet",
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 3, "serviceName": "db"},
                "status": status
            })
        };
        assert!(
            evaluate(
                "apps/v1",
                "StatefulSet",
                &sts(
                    json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                            "currentReplicas": 3, "updatedReplicas": 3})
                )
            )
            .ready
        );
        assert_eq!(
            evaluate(
                "apps/v1",
                "StatefulSet",
                &sts(
                    json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 2,
                            "updatedReplicas": 3})
                )
            ),
            Readiness::not_ready("2 of 3 replicas ready")
        );
        assert_eq!(
            evaluate(
                "apps/v1",
                "StatefulSet",
                &sts(
                    json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3,
                            "updatedReplicas": 1})
                )
            ),
            Readiness::not_ready("1 of 3 replicas updated")
        );
        // updatedReplicas absent: readiness alone decides.
        assert!(
            evaluate(
                "apps/v1",
                "StatefulSet",
                &sts(json!({"observedGeneration": 2, "replicas": 3, "readyReplicas": 3}))
            )
            .ready
        );
        assert!(
            !evaluate(
                "apps/v1",
                "StatefulSet",
                &sts(json!({"observedGeneration": 1, "replicas": 3, "readyReplicas": 3}))
            )
            .ready
        );
        // A partitioned rolling update only updates the ordinals at or above the partition.
        let partitioned = json!({
            "metadata": {"name": "db", "generation": 2},
            "spec": {"replicas": 3, "updateStrategy": {"type": "RollingUpdate",
                     "rollingUpdate": {"partition": 2}}},
            "status": {"observedGeneration": 2, "readyReplicas": 3, "updatedReplicas": 1}
        });
        assert!(evaluate("apps/v1", "StatefulSet", &partitioned).ready);
    }

    #[test]
    fn daemonset_rules() {
        let ds = |status: Value| {
            json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": "agent", "generation": 1},
                "spec": {},
                "status": status
            })
        };
        assert!(
            evaluate(
                "apps/v1",
                "DaemonSet",
                &ds(json!({"observedGeneration": 1, "desiredNumberScheduled": 3,
                           "currentNumberScheduled": 3, "numberReady": 3,
                           "updatedNumberScheduled": 3, "numberAvailable": 3}))
            )
            .ready
        );
        assert_eq!(
            evaluate(
                "apps/v1",
                "DaemonSet",
                &ds(json!({"observedGeneration": 1, "desiredNumberScheduled": 3,
                           "numberReady": 1}))
            ),
            Readiness::not_ready("1 of 3 pods ready")
        );
        // No node to schedule on: nothing to wait for.
        assert!(
            evaluate(
                "apps/v1",
                "DaemonSet",
                &ds(json!({"observedGeneration": 1, "desiredNumberScheduled": 0,
                           "numberReady": 0}))
            )
            .ready
        );
        assert!(!evaluate("apps/v1", "DaemonSet", &ds(json!({}))).ready);
    }

    #[test]
    fn pvc_rules() {
        let claim = |phase: &str| {
            json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data-db-0"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": phase}
            })
        };
        assert!(evaluate("v1", "PersistentVolumeClaim", &claim("Bound")).ready);
        assert_eq!(
            evaluate("v1", "PersistentVolumeClaim", &claim("Pending")),
            Readiness::not_ready("phase Pending")
        );
        assert_eq!(
            evaluate("v1", "PersistentVolumeClaim", &claim("Lost")),
            Readiness::not_ready("phase Lost")
        );
    }

    #[test]
    fn job_rules() {
        let job = |conditions: Value| {
            json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": "migrate"},
                "status": {"conditions": conditions}
            })
        };
        assert!(
            evaluate(
                "batch/v1",
                "Job",
                &job(json!([
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True"}
                ]))
            )
            .ready
        );
        assert_eq!(
            evaluate(
                "batch/v1",
                "Job",
                &job(
                    json!([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                             "message": "Job has reached the specified backoff limit"}])
                )
            ),
            Readiness::not_ready(
                "failed: BackoffLimitExceeded: Job has reached the specified backoff limit"
            )
        );
        assert_eq!(
            evaluate(
                "batch/v1",
                "Job",
                &json!({"metadata": {"name": "migrate"}, "status": {"active": 1}})
            ),
            Readiness::not_ready("running")
        );
        assert_eq!(
            evaluate(
                "batch/v1",
                "Job",
                &job(json!([{"type": "Suspended", "status": "True"}]))
            ),
            Readiness::not_ready("suspended")
        );
    }

    #[test]
    fn pod_rules() {
        let pod = |phase: &str, ready: &str| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "debug"},
                "status": {"phase": phase, "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": ready}
                ]}
            })
        };
        assert!(evaluate("v1", "Pod", &pod("Running", "True")).ready);
        assert!(evaluate("v1", "Pod", &pod("Succeeded", "False")).ready);
        assert_eq!(
            evaluate("v1", "Pod", &pod("Running", "False")),
            Readiness::not_ready("running, not ready")
        );
        assert_eq!(
            evaluate("v1", "Pod", &pod("Pending", "False")),
            Readiness::not_ready("phase Pending")
        );
        let evicted = json!({"status": {"phase": "Failed", "reason": "Evicted",
                                        "message": "The node was low on resource: memory."}});
        assert_eq!(
            evaluate("v1", "Pod", &evicted),
            Readiness::not_ready("failed: Evicted: The node was low on resource: memory.")
        );
    }

    #[test]
    fn other_kinds_are_ready_when_they_exist() {
        let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
        for kind in [
            "ConfigMap",
            "Secret",
            "Service",
            "ServiceAccount",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
            "Ingress",
            "CronJob",
        ] {
            assert_eq!(evaluate("v1", kind, &live), Readiness::ready(), "{kind}");
        }
        // A LoadBalancer Service without an address is still "existing": ready.
        let svc = json!({"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}});
        assert!(evaluate("v1", "Service", &svc).ready);
    }

    #[test]
    fn other_kinds_follow_the_status_conventions() {
        let widget = |status: Value| {
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                   "metadata": {"name": "w", "generation": 3}, "status": status})
        };
        let eval = |status: Value| evaluate("example.com/v1", "Widget", &widget(status));
        // nothing reported: ready when it exists
        assert!(
            evaluate(
                "example.com/v1",
                "Widget",
                &json!({"metadata": {"name": "w"}})
            )
            .ready
        );
        assert!(eval(json!({})).ready);
        let cond =
            |t: &str, s: &str| json!({"type": t, "status": s, "reason": "R", "message": "m"});
        assert!(
            eval(json!({"observedGeneration": 3, "conditions": [cond("Ready", "True")]})).ready
        );
        assert_eq!(
            eval(json!({"observedGeneration": 3, "conditions": [cond("Ready", "False")]})),
            Readiness::not_ready("condition Ready is False: R: m")
        );
        assert_eq!(
            eval(json!({"observedGeneration": 2, "conditions": [cond("Ready", "True")]})),
            Readiness::not_ready(
                "waiting for its controller to observe generation 3 (it has observed 2)"
            )
        );
        assert!(eval(json!({"conditions": [cond("Available", "True")]})).ready);
        assert!(!eval(json!({"conditions": [cond("Available", "Unknown")]})).ready);
        assert_eq!(
            eval(json!({"conditions": [cond("Ready", "True"), cond("Reconciling", "True")]})),
            Readiness::not_ready("reconciling: R: m")
        );
        assert_eq!(
            eval(json!({"conditions": [cond("Stalled", "True")]})),
            Readiness::not_ready("stalled: R: m")
        );
        // a kind named like a built-in in another group follows the conventions
        assert!(evaluate("example.com/v1", "Deployment", &json!({"status": {}})).ready);
    }

    #[test]
    fn a_deployment_whose_pods_are_refused_says_why() {
        let live = json!({"metadata": {"generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "replicas": 0, "updatedReplicas": 0, "unavailableReplicas": 1,
              "conditions": [{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                "message": "pods \"web-1\" is forbidden: violates PodSecurity \"restricted:latest\": privileged"}]}});
        let r = evaluate("apps/v1", "Deployment", &live);
        assert!(!r.ready);
        assert!(r.message.contains("its Pods cannot be created: FailedCreate: pods \"web-1\" is forbidden: violates PodSecurity"), "{}", r.message);
    }
}
