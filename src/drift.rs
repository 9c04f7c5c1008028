//! Spec drift: where a live object differs from what the operator applied (pure).
//!
//! Only the fields the operator applies are compared (the fields server-side apply makes it
//! own): every leaf of the desired object must have the same value in the live object. Fields
//! the API server or controllers add (defaults, status, annotations of others) are not drift.
//! Lists of objects with a `name` (containers, ports, volumes, env) are matched by name, other
//! lists by position. Paths use dots and `[name]` / `[index]`, e.g.
//! `spec.template.spec.containers[analyzer].image`.
//!
//! No false positives from what the API server does with a valid object: an empty list or map
//! is the same as an absent one; a quantity is compared by value (`cpu: 1` and `"1"`, `0.5` and
//! `"500m"`, `1024Mi` and `1Gi`); a Secret's write-only `stringData` is compared with the `data`
//! the server stores. And no secret in the output: the values of a Secret's `data` and
//! `stringData` are never rendered, only a short SHA-256 of them.

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
    let secret = desired.get("kind").and_then(Value::as_str) == Some("Secret");
    let desired = &if secret {
        secret_as_stored(desired)
    } else {
        desired.clone()
    };
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
    if secret {
        for f in &mut out {
            if f.path.starts_with("data.") || f.path.starts_with("stringData.") {
                f.desired = redact(&f.desired);
                f.live = redact(&f.live);
            }
        }
    }
    out
}

/// A Secret as the API server stores it: `stringData` merged into `data` (base64), since
/// `stringData` is write-only and never read back.
fn secret_as_stored(desired: &Value) -> Value {
    use base64::Engine;
    let mut d = desired.clone();
    let Some(root) = d.as_object_mut() else {
        return d;
    };
    let Some(Value::Object(string_data)) = root.remove("stringData") else {
        return d;
    };
    let data = root
        .entry("data")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let text = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            data.insert(
                k,
                Value::from(base64::engine::general_purpose::STANDARD.encode(text)),
            );
        }
    }
    d
}

/// A rendered secret value, as `<redacted sha256:0123abcd>` (or `<absent>`).
pub fn redact(rendered: &str) -> String {
    use sha2::Digest;
    if rendered == "<absent>" {
        return rendered.to_string();
    }
    let digest = sha2::Sha256::digest(rendered.as_bytes());
    format!("<redacted sha256:{}>", &hex::encode(digest)[..8])
}

/// A Kubernetes quantity (`1`, `500m`, `1.5Gi`, `2e3`) in nano-units, if `s` is one.
fn quantity(s: &str) -> Option<i128> {
    let s = s.trim();
    let (number, multiplier): (&str, i128) = [
        ("Ki", 1i128 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
    ]
    .into_iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, m * 1_000_000_000)))
    .or_else(|| {
        [
            ("n", 1i128),
            ("u", 1_000),
            ("m", 1_000_000),
            ("k", 1_000_000_000_000),
            ("M", 1_000_000_000_000_000),
            ("G", 1_000_000_000_000_000_000),
            ("T", 1_000_000_000_000_000_000_000),
            ("P", 1_000_000_000_000_000_000_000_000),
            ("E", 1_000_000_000_000_000_000_000_000_000),
        ]
        .into_iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, m)))
    })
    .unwrap_or((s, 1_000_000_000));
    let (mantissa, exponent) = match number.find(['e', 'E']) {
        Some(i) if multiplier == 1_000_000_000 => {
            (&number[..i], number[i + 1..].parse::<i32>().ok()?)
        }
        Some(_) => return None,
        None => (number, 0),
    };
    let (sign, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (-1i128, rest),
        None => (1, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        || int.len() + frac.len() > 24
        || !(-30..=30).contains(&exponent)
    {
        return None;
    }
    let mut value: i128 = format!("{int}{frac}").parse().ok()?;
    value = value.checked_mul(multiplier)?;
    let mut scale = i32::try_from(frac.len()).ok()? - exponent;
    while scale > 0 {
        value /= 10;
        scale -= 1;
    }
    while scale < 0 {
        value = value.checked_mul(10)?;
        scale += 1;
    }
    Some(sign * value)
}

/// Whether a field holds quantities (resource requests and limits, capacities, size limits).
fn quantity_field(path: &str) -> bool {
    [
        ".requests.",
        ".limits.",
        ".capacity.",
        ".hard.",
        ".overhead.",
    ]
    .iter()
    .any(|p| path.contains(p))
        || path.ends_with(".sizeLimit")
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

/// Numbers compare by value, so `1` and `1.0` are the same; a number the server stored as a
/// quantity string (`cpu: 1` -> `"1"`) is the same number; quantities compare by value.
fn same_scalar(path: &str, d: &Value, l: &Value) -> bool {
    match (d, l) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Number(n), Value::String(q)) => {
            quantity(&n.to_string()).is_some_and(|a| Some(a) == quantity(q))
        }
        (Value::String(a), Value::String(b)) if a != b && quantity_field(path) => {
            quantity(a).is_some_and(|a| Some(a) == quantity(b))
        }
        _ => d == l,
    }
}

/// Whether a desired value says nothing a missing live value does not: an empty list or map.
fn empty(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn walk(path: &str, desired: &Value, live: &Value, ignore: &[String], out: &mut Vec<FieldDrift>) {
    if desired.is_null() || ignored(path, ignore) {
        return;
    }
    if empty(desired) && (live.is_null() || empty(live)) {
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
            if !same_scalar(path, scalar, live) {
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
    fn quantities_compare_by_value() {
        assert_eq!(quantity("1"), quantity("1000m"));
        assert_eq!(quantity("0.5"), quantity("500m"));
        assert_eq!(quantity("1Gi"), quantity("1024Mi"));
        assert_eq!(quantity("1e3"), quantity("1k"));
        assert_eq!(quantity("1.5Gi"), Some(1_610_612_736 * 1_000_000_000));
        assert_ne!(quantity("1Gi"), quantity("1G"));
        for not in ["", "Gi", "1.2.3", "abc", "1x", "nginx:1.0", "1e3Gi"] {
            assert_eq!(quantity(not), None, "{not}");
        }
        let d = json!({"spec": {"resources": {"requests": {"cpu": 1, "memory": "1024Mi"}, "limits": {"cpu": 0.5}}}});
        let l = json!({"spec": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "500m"}}}});
        assert!(compare(&d, &l, &[]).is_empty());
        let l = json!({"spec": {"resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "500m"}}}});
        assert_eq!(compare(&d, &l, &[])[0].path, "spec.resources.requests.cpu");
        // outside quantity fields, strings compare as strings
        let d = json!({"metadata": {"labels": {"v": "1.0"}}});
        let l = json!({"metadata": {"labels": {"v": "1"}}});
        assert_eq!(compare(&d, &l, &[]).len(), 1);
    }

    #[test]
    fn empty_lists_and_maps_are_the_same_as_absent_ones() {
        let d = json!({"spec": {"args": [], "nodeSelector": {}, "env": [], "x": {"y": []}}});
        assert!(compare(&d, &json!({"spec": {}}), &[]).is_empty());
        let d = json!({"spec": {"args": []}});
        let l = json!({"spec": {"args": ["injected"]}});
        assert_eq!(
            compare(&d, &l, &[]).len(),
            1,
            "a list that became non-empty is drift"
        );
    }

    #[test]
    fn secrets_compare_string_data_with_data_and_never_show_values() {
        let d = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "stringData": {"password": "hunter2"}, "data": {"token": "dG9rZW4="}});
        let l = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "aHVudGVyMg==", "token": "dG9rZW4="}, "type": "Opaque"});
        assert!(
            compare(&d, &l, &[]).is_empty(),
            "stringData is stored as data"
        );
        let tampered = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "c3RvbGVu", "token": "dG9rZW4="}});
        let drift = compare(&d, &tampered, &[]);
        assert_eq!(drift.len(), 1);
        assert_eq!(drift[0].path, "data.password");
        let shown = format!("{drift:?}");
        for secret in ["hunter2", "aHVudGVyMg", "c3RvbGVu", "stolen"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(drift[0].desired.starts_with("<redacted sha256:"), "{shown}");
        assert_ne!(drift[0].desired, drift[0].live);
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
