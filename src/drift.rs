//! Spec drift: where a live object differs from what the operator applied (pure).
//!
//! Only the fields the operator applies are compared (the fields server-side apply makes it
//! own): every leaf of the desired object must have the same value in the live object. Fields
//! the API server or controllers add (defaults, status, annotations of others) are not drift.
//! Lists of objects with a `name` (containers, ports, volumes, env) are matched by name, other
//! lists by position. Paths use dots and `[name]` / `[index]`, e.g.
//! `spec.template.spec.containers[analyzer].image`.

use serde_json::Value;

/// The path of a drift entry that means "the whole object is missing".
pub const OBJECT: &str = "(object)";

/// One drifted field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldDrift {
    /// Path in the object, e.g. `spec.replicas`.
    pub path: String,
    /// The applied value (JSON).
    pub desired: String,
    /// The live value (JSON), `<absent>` when the field is gone.
    pub live: String,
}

/// Whether `path` is covered by one of the ignore rules: a rule matches the path itself or any
/// path below it (`spec.replicas`, `spec.template.metadata.annotations`).
pub fn ignored(path: &str, ignore: &[String]) -> bool {
    ignore.iter().any(|rule| {
        path == rule
            || path
                .strip_prefix(rule.as_str())
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    })
}

/// The drifted fields of `live` against `desired`, in a deterministic (document) order.
/// `metadata` is compared only for labels and annotations the operator sets.
pub fn compare(desired: &Value, live: &Value, ignore: &[String]) -> Vec<FieldDrift> {
    let mut out = Vec::new();
    if let (Some(d), Some(l)) = (desired.as_object(), live.as_object()) {
        for (key, dv) in d {
            match key.as_str() {
                "apiVersion" | "kind" | "status" => {}
                "metadata" => {
                    for part in ["labels", "annotations"] {
                        walk(
                            &format!("metadata.{part}"),
                            &dv[part],
                            &l.get("metadata")
                                .map(|m| m[part].clone())
                                .unwrap_or_default(),
                            ignore,
                            &mut out,
                        );
                    }
                }
                _ => walk(
                    key,
                    dv,
                    l.get(key).unwrap_or(&Value::Null),
                    ignore,
                    &mut out,
                ),
            }
        }
    }
    out
}

fn render(v: &Value) -> String {
    if v.is_null() {
        "<absent>".to_string()
    } else {
        let s = v.to_string();
        if s.len() > 200 {
            format!(
                "{}...",
                &s[..s.char_indices().nth(197).map_or(s.len(), |(i, _)| i)]
            )
        } else {
            s
        }
    }
}

/// Numbers compare by value, so `1` and `1.0` are the same.
fn same_scalar(d: &Value, l: &Value) -> bool {
    match (d, l) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => d == l,
    }
}

fn walk(path: &str, desired: &Value, live: &Value, ignore: &[String], out: &mut Vec<FieldDrift>) {
    if desired.is_null() || ignored(path, ignore) {
        return;
    }
    match desired {
        Value::Object(d) => {
            for (key, dv) in d {
                let lv = live.get(key).unwrap_or(&Value::Null);
                walk(&format!("{path}.{key}"), dv, lv, ignore, out);
            }
        }
        Value::Array(d) => {
            let l = live.as_array().cloned().unwrap_or_default();
            let named = !d.is_empty()
                && d.iter()
                    .all(|x| x.get("name").and_then(Value::as_str).is_some());
            if named {
                for dv in d {
                    let name = dv["name"].as_str().unwrap_or_default();
                    let lv = l
                        .iter()
                        .find(|x| x.get("name").and_then(Value::as_str) == Some(name))
                        .cloned()
                        .unwrap_or(Value::Null);
                    walk(&format!("{path}[{name}]"), dv, &lv, ignore, out);
                }
            } else if d.iter().all(|x| !x.is_object() && !x.is_array()) {
                // a list of scalars is one value
                if desired != live {
                    out.push(FieldDrift {
                        path: path.to_string(),
                        desired: render(desired),
                        live: render(live),
                    });
                }
            } else {
                for (i, dv) in d.iter().enumerate() {
                    walk(
                        &format!("{path}[{i}]"),
                        dv,
                        l.get(i).unwrap_or(&Value::Null),
                        ignore,
                        out,
                    );
                }
            }
        }
        scalar => {
            if !same_scalar(scalar, live) {
                out.push(FieldDrift {
                    path: path.to_string(),
                    desired: render(scalar),
                    live: render(live),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"residency.io/workload": "w"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "analyzer", "image": image, "ports": [{"containerPort": 8080}]}
            ]}}}
        })
    }

    #[test]
    fn identical_objects_have_no_drift_and_server_defaults_are_not_drift() {
        let desired = deployment(2, "a:1");
        let mut live = deployment(2, "a:1");
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] =
            json!("IfNotPresent");
        live["spec"]["progressDeadlineSeconds"] = json!(600);
        live["metadata"]["labels"]["extra"] = json!("x");
        live["status"] = json!({"replicas": 2});
        assert!(compare(&desired, &live, &[]).is_empty());
    }

    #[test]
    fn changed_fields_are_reported_with_path_desired_and_live() {
        let desired = deployment(2, "a:1");
        let live = deployment(5, "evil:1");
        let d = compare(&desired, &live, &[]);
        assert_eq!(
            d,
            vec![
                FieldDrift {
                    path: "spec.replicas".into(),
                    desired: "2".into(),
                    live: "5".into()
                },
                FieldDrift {
                    path: "spec.template.spec.containers[analyzer].image".into(),
                    desired: "\"a:1\"".into(),
                    live: "\"evil:1\"".into()
                },
            ]
        );
    }

    #[test]
    fn removed_labels_and_list_items_are_drift() {
        let desired = deployment(2, "a:1");
        let mut live = deployment(2, "a:1");
        live["metadata"]["labels"] = json!({});
        live["spec"]["template"]["spec"]["containers"][0]["ports"] = json!([]);
        let paths: Vec<String> = compare(&desired, &live, &[])
            .into_iter()
            .map(|d| d.path)
            .collect();
        assert_eq!(
            paths,
            [
                "metadata.labels.residency.io/workload",
                "spec.template.spec.containers[analyzer].ports[0].containerPort"
            ]
        );
    }

    #[test]
    fn ignore_rules_cover_a_path_and_everything_below_it() {
        let desired = deployment(2, "a:1");
        let live = deployment(5, "evil:1");
        let d = compare(
            &desired,
            &live,
            &["spec.replicas".into(), "spec.template".into()],
        );
        assert!(d.is_empty(), "{d:?}");
        assert!(ignored("spec.template.spec", &["spec.template".into()]));
        assert!(!ignored("spec.templates", &["spec.template".into()]));
    }

    #[test]
    fn numbers_compare_by_value_and_scalar_lists_as_a_whole() {
        let d = json!({"spec": {"n": 1, "args": ["a", "b"]}});
        let l = json!({"spec": {"n": 1.0, "args": ["a", "c"]}});
        let drift = compare(&d, &l, &[]);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].path, "spec.args");
    }
}
