//! PolicyReports (`wgpolicyk8s.io/v1alpha2`, the Kubernetes Policy working group's format) so
//! tools that read them (dashboards, policy UIs) see residency results: one report per
//! namespace with ResidentWorkloads or with copies a policy forbids, one result per workload
//! (`pass` when compliant, `fail` when its data is where a policy forbids it or it cannot be
//! placed, `warn` while it drifts or is being placed) and one `fail` per object the members'
//! inventory shows where a policy forbids it (a hand-labelled object, a copy no record accounts
//! for, a retained volume). Written only where that CRD is installed, and only when it changes.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::ResidentWorkload;
use crate::api::conditions::{self, types};
use crate::api::residency_policy::Violation;
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
        // the location cannot be proven: neither pass nor fail
        Some(c) if c.status == "Unknown" && !drifted => ("warn", c.message.clone()),
        Some(_) if drifted => (
            "warn",
            conditions::find(conds, types::DRIFTED)
                .map(|c| c.message.clone())
                .unwrap_or_default(),
        ),
        _ => ("warn", "Not evaluated yet.".into()),
    }
}

/// `apiVersion` of a member object's kind (the well-known placeable kinds and PVs).
fn api_version(kind: &str) -> String {
    crate::kinds::PLACEABLE
        .iter()
        .find(|k| k.kind == kind)
        .map(|k| k.api_version())
        .unwrap_or_else(|| "v1".into())
}

/// The PolicyReport of `namespace` for its workloads and the forbidden copies of member
/// objects in it (`violations`: the policies' findings from the inventory; those naming a
/// workload are its own result, the others one result per object and cluster, their countries
/// merged) (pure, deterministic).
pub fn build(namespace: &str, workloads: &[&ResidentWorkload], violations: &[Violation]) -> Value {
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
    // the findings (of every policy) per (cluster, kind, name)
    let mut copies: BTreeMap<(&str, &str, &str), Vec<&Violation>> = BTreeMap::new();
    for v in violations
        .iter()
        .filter(|v| v.kind != "ResidentWorkload" && v.namespace.as_deref() == Some(namespace))
    {
        copies
            .entry((v.cluster.as_str(), v.kind.as_str(), v.name.as_str()))
            .or_default()
            .push(v);
    }
    let mut results = results;
    for ((cluster, kind, name), found) in copies {
        let message = found
            .iter()
            .map(|v| v.message.as_str())
            .min()
            .unwrap_or_default();
        let mut countries: Vec<&str> = found
            .iter()
            .flat_map(|v| v.countries.iter().map(String::as_str))
            .collect();
        countries.sort_unstable();
        countries.dedup();
        summary["fail"] = json!(summary["fail"].as_i64().unwrap_or(0) + 1);
        results.push(json!({
            "source": "residency-operator",
            "policy": "data-residency",
            "rule": "countries-placed-only-where-allowed",
            "category": "Data residency",
            "severity": "high",
            "result": "fail",
            "message": message,
            "scored": true,
            "properties": {"cluster": cluster, "countries": countries.join(",")},
            "resources": [{
                "apiVersion": api_version(kind),
                "kind": kind,
                "namespace": namespace,
                "name": name,
            }],
        }));
    }
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
        let r = build("ns", &[&a, &b, &c], &[]);
        assert_eq!(
            r["summary"],
            json!({"pass": 1, "fail": 1, "warn": 1, "error": 0, "skip": 0})
        );
        let results = r["results"].as_array().unwrap();
        assert_eq!(results[0]["resources"][0]["name"], "a-bad");
        assert_eq!(results[0]["result"], "fail");
        assert_eq!(results[0]["message"], "a-bad compliant=False");
        assert_eq!(results[2]["result"], "warn");
        assert_eq!(build("ns", &[&c, &a, &b], &[]), r, "deterministic");
    }

    #[test]
    fn forbidden_copies_of_the_inventory_are_failed_results_one_per_object() {
        let v = |cluster: &str, country: &str, kind: &str, ns: &str, name: &str| Violation {
            cluster: cluster.into(),
            countries: vec![country.into()],
            kind: kind.into(),
            namespace: Some(ns.into()),
            name: name.into(),
            message: format!("{kind} {name} holds {country} data on {cluster}"),
        };
        let ok = workload("ok", "True", "False");
        let found = [
            v("msk-1", "JP", "ConfigMap", "ns", "hand"),
            v("msk-1", "AU", "ConfigMap", "ns", "hand"),
            v("msk-1", "AU", "PersistentVolumeClaim", "ns", "data-0"),
            v("msk-1", "AU", "ResidentWorkload", "ns", "ok"), // the workload's own result
            v("msk-1", "AU", "ConfigMap", "other", "elsewhere"),
        ];
        let r = build("ns", &[&ok], &found);
        assert_eq!(
            r["summary"],
            json!({"pass": 1, "fail": 2, "warn": 0, "error": 0, "skip": 0})
        );
        let results = r["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        let hand = &results[1];
        assert_eq!(hand["resources"][0]["kind"], "ConfigMap");
        assert_eq!(hand["resources"][0]["apiVersion"], "v1");
        assert_eq!(hand["properties"]["countries"], "AU,JP");
        assert_eq!(hand["properties"]["cluster"], "msk-1");
        assert_eq!(results[2]["resources"][0]["name"], "data-0");
        let mut reversed = found.clone();
        reversed.reverse();
        assert_eq!(build("ns", &[&ok], &reversed), r, "deterministic");
    }
}
