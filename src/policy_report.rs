//! PolicyReports (`wgpolicyk8s.io/v1alpha2`, the Kubernetes Policy working group's format) so
//! tools that read them (dashboards, policy UIs) see residency results: one report per
//! namespace with ResidentWorkloads, one result per workload: `pass` when compliant, `fail`
//! when its data is where a policy forbids it or it cannot be placed, `warn` while it drifts or
//! is being placed. Written only where that CRD is installed, and only when it changes.

use serde_json::{Value, json};

use crate::api::ResidentWorkload;
use crate::api::conditions::{self, types};
use kube::ResourceExt;

/// Name of the report in each namespace.
pub const NAME: &str = "residency-operator";

/// The result of one workload: `pass`, `fail` or `warn`, and a message (pure).
pub fn result(w: &ResidentWorkload) -> (&'static str, String) {
    let conds = w
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let compliant = conditions::find(conds, types::COMPLIANT);
    let drifted = conditions::is_true(conds, types::DRIFTED);
    match compliant {
        Some(c) if c.status == "False" => ("fail", c.message.clone()),
        Some(c) if c.status == "True" && !drifted => ("pass", c.message.clone()),
        Some(_) if drifted => (
            "warn",
            conditions::find(conds, types::DRIFTED)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        ),
        _ => ("warn", "Not evaluated yet.".into()),
    }
}

/// The PolicyReport of `namespace` for its workloads (pure, deterministic).
pub fn build(namespace: &str, workloads: &[&ResidentWorkload]) -> Value {
    let mut sorted: Vec<&&ResidentWorkload> = workloads.iter().collect();
    sorted.sort_by_key(|w| w.name_any());
    let mut summary = json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 0});
    let results: Vec<Value> = sorted
        .iter()
        .map(|w| {
            let (outcome, message) = result(w);
            summary[outcome] = json!(summary[outcome].as_i64().unwrap_or(0) + 1);
            json!({
                "source": "residency-operator",
                "policy": "data-residency",
                "rule": "countries-placed-only-where-allowed",
                "category": "Data residency",
                "severity": if outcome == "fail" { "high" } else { "info" },
                "result": outcome,
                "message": message,
                "scored": true,
                "resources": [{
                    "apiVersion": "residency.io/v1alpha1",
                    "kind": "ResidentWorkload",
                    "namespace": namespace,
                    "name": w.name_any(),
                    "uid": w.uid().unwrap_or_default(),
                }],
            })
        })
        .collect();
    json!({
        "apiVersion": "wgpolicyk8s.io/v1alpha2",
        "kind": "PolicyReport",
        "metadata": {
            "name": NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "residency-operator"},
        },
        "scope": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
        "summary": summary,
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, compliant: &str, drifted: &str) -> ResidentWorkload {
        serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": {"role": "Processing", "countries": ["AU"],
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]},
            "status": {"conditions": [
                {"type": "Compliant", "status": compliant, "reason": "R", "message": format!("{name} compliant={compliant}"), "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Drifted", "status": drifted, "reason": "R", "message": format!("{name} drifted"), "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ]}
        }))
        .unwrap()
    }

    #[test]
    fn results_and_summary() {
        let (a, b, c) = (
            workload("b-ok", "True", "False"),
            workload("a-bad", "False", "False"),
            workload("c-drift", "True", "True"),
        );
        let r = build("ns", &[&a, &b, &c]);
        assert_eq!(
            r["summary"],
            json!({"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0})
        );
        let results = r["results"].as_array().unwrap();
        assert_eq!(results[0]["resources"][0]["name"], "a-bad");
        assert_eq!(results[0]["result"], "fail");
        assert_eq!(results[0]["message"], "a-bad compliant=False");
        assert_eq!(results[2]["result"], "warn");
        assert_eq!(build("ns", &[&c, &a, &b]), r, "deterministic");
    }
}
