//! A Markdown reference of the CRDs, generated from their schemas (and so from the doc comments
//! of the Rust types): `residency-operator crds --markdown`.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

/// The reference of every CRD, as Markdown.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::from(
        "# CRD reference\n\nGenerated from the CRD schemas by `residency-operator crds --markdown`; do not edit.\n",
    );
    for crd in crds {
        let names = &crd.spec.names;
        for version in &crd.spec.versions {
            let schema = version
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .map(|s| serde_json::to_value(s).unwrap_or_default())
                .unwrap_or_default();
            let _ = write!(
                out,
                "\n## {} (`{}/{}`)\n\n{}\n\nScope: {}. Short names: {}. Categories: {}.\n\n",
                names.kind,
                crd.spec.group,
                version.name,
                text(&schema["description"]),
                crd.spec.scope,
                names.short_names.clone().unwrap_or_default().join(", "),
                names.categories.clone().unwrap_or_default().join(", "),
            );
            out.push_str("| field | type | description |\n|---|---|---|\n");
            for part in ["spec", "status"] {
                let required = schema["required"].as_array().cloned().unwrap_or_default();
                let is_required = required.iter().any(|r| r == part);
                walk(&mut out, part, &schema["properties"][part], is_required);
            }
        }
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or("")
        .replace('\n', " ")
        .replace('|', "\\|")
}

fn kind(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", kind(&schema["items"])),
        Some(t) => t.to_string(),
        None if schema.get("x-kubernetes-preserve-unknown-fields").is_some() => "object".into(),
        None => "any".into(),
    }
}

fn constraints(schema: &Value) -> Vec<String> {
    let mut c = Vec::new();
    if let Some(values) = schema["enum"].as_array() {
        let v: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
        c.push(format!("one of {}", v.join(", ")));
    }
    if let Some(d) = schema.get("default") {
        c.push(format!("default `{d}`"));
    }
    for (key, label) in [
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
    ] {
        if let Some(n) = schema[key].as_u64() {
            c.push(format!("{label} {n}"));
        }
    }
    if let Some(p) = schema["pattern"].as_str() {
        c.push(format!("pattern `{p}`"));
    }
    if let Some(rules) = schema["x-kubernetes-validations"].as_array() {
        for r in rules {
            if let Some(m) = r["message"].as_str() {
                c.push(format!("rule: {m}"));
            }
        }
    }
    c
}

fn walk(out: &mut String, path: &str, schema: &Value, required: bool) {
    if schema.is_null() {
        return;
    }
    let mut desc = text(&schema["description"]);
    let c = constraints(schema);
    if !c.is_empty() {
        if !desc.is_empty() {
            desc.push(' ');
        }
        desc.push_str(&format!("({})", c.join("; ")));
    }
    let req = if required { " (required)" } else { "" };
    let _ = writeln!(out, "| `{path}`{req} | {} | {desc} |", kind(schema));
    let (props, req_list, prefix) = if schema["type"] == "array" {
        (
            &schema["items"]["properties"],
            &schema["items"]["required"],
            format!("{path}[]"),
        )
    } else {
        (&schema["properties"], &schema["required"], path.to_string())
    };
    if path.ends_with("conditions") || path.ends_with("Selector") || prefix.ends_with("manifests[]")
    {
        return; // standard Kubernetes types, documented upstream
    }
    if let Some(map) = props.as_object() {
        for (name, sub) in map {
            let required = req_list
                .as_array()
                .is_some_and(|r| r.iter().any(|x| x == name));
            walk(out, &format!("{prefix}.{name}"), sub, required);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reference_documents_every_kind_and_key_fields() {
        let md = super::markdown(&crate::api::crds());
        for s in [
            "## MemberCluster (`residency.io/v1alpha1`)",
            "| `spec.location.country` (required) | string |",
            "| `spec.enforcement` | string |",
            "one of `Enforce`, `Audit`",
            "| `spec.manifests` (required) | []object |",
            "rule: set exactly one of connection.local and connection.kubeconfigSecretRef",
        ] {
            assert!(md.contains(s), "missing {s:?} in\n{md}");
        }
    }
}
