//! Reading residency objects from files and directories of multi-document YAML.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::validate::{self, FieldError};
use crate::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};

/// The residency objects found in the input.
#[derive(Debug, Default, Clone)]
pub struct Input {
    /// MemberClusters.
    pub clusters: Vec<MemberCluster>,
    /// ResidencyPolicies.
    pub policies: Vec<ResidencyPolicy>,
    /// ResidentWorkloads.
    pub workloads: Vec<ResidentWorkload>,
    /// Documents that were skipped (other kinds), as notes.
    pub skipped: Vec<String>,
}

/// A problem with one document of the input: file, 1-based document number, field and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// The file.
    pub file: PathBuf,
    /// 1-based document number in the file (0 when the file itself could not be read).
    pub document: usize,
    /// `Kind/name` of the object, when known.
    pub object: Option<String>,
    /// Field path, when the problem is about a field.
    pub path: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(o) = &self.object {
            write!(f, " ({o})")?;
        }
        if let Some(p) = &self.path {
            write!(f, ": {p}")?;
        }
        write!(f, ": {}", self.message)
    }
}

const API_VERSION: &str = "residency.io/v1alpha1";

/// Loads every residency object from `paths` (files, or directories searched recursively for
/// `*.yaml` and `*.yml`, in name order) and validates it. All errors are returned, not only
/// the first.
pub fn load(paths: &[PathBuf]) -> Result<Input, Vec<InputError>> {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for p in paths {
        collect_files(p, &mut files, &mut errors);
    }
    let mut input = Input::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => load_text(&file, &text, &mut input, &mut errors),
            Err(e) => errors.push(InputError {
                file: file.clone(),
                document: 0,
                object: None,
                path: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(input)
    } else {
        Err(errors)
    }
}

fn collect_files(p: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(p) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                errors.push(file_error(p, format!("cannot read directory: {e}")));
                return;
            }
        };
        entries.sort();
        for e in entries {
            if e.is_dir() {
                collect_files(&e, files, errors);
            } else if matches!(e.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                files.push(e);
            }
        }
    } else if p.exists() {
        files.push(p.to_path_buf());
    } else {
        errors.push(file_error(p, "no such file or directory".to_string()));
    }
}

fn file_error(p: &Path, message: String) -> InputError {
    InputError {
        file: p.to_path_buf(),
        document: 0,
        object: None,
        path: None,
        message,
    }
}

/// Parses the documents of one file into `input`.
pub(crate) fn load_text(file: &Path, text: &str, input: &mut Input, errors: &mut Vec<InputError>) {
    use serde::Deserialize;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let err = |object: Option<String>, path: Option<String>, message: String| InputError {
            file: file.to_path_buf(),
            document,
            object,
            path,
            message,
        };
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(v) => v,
            Err(e) => {
                errors.push(err(None, None, format!("not valid YAML: {e}")));
                // the YAML stream cannot be resumed after a syntax error
                break;
            }
        };
        let json: Value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                errors.push(err(None, None, format!("not representable as JSON: {e}")));
                continue;
            }
        };
        let kind = json.get("kind").and_then(Value::as_str).unwrap_or("");
        let api_version = json.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let name = json
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let object = Some(format!("{kind}/{name}"));
        if !api_version.starts_with("residency.io/") {
            input.skipped.push(format!(
                "{}: document {document}: skipped {} {kind}/{name} (not a residency.io object)",
                file.display(),
                if api_version.is_empty() {
                    "<no apiVersion>"
                } else {
                    api_version
                },
            ));
            continue;
        }
        if api_version != API_VERSION {
            errors.push(err(
                object,
                Some("apiVersion".into()),
                format!("'{api_version}' is not served: use {API_VERSION}"),
            ));
            continue;
        }
        let result = match kind {
            "MemberCluster" => parse::<MemberCluster>(&json).and_then(|o| {
                validate::member_cluster(&o)?;
                upsert(&mut input.clusters, o, &mut input.skipped, file, document);
                Ok(())
            }),
            "ResidencyPolicy" => parse::<ResidencyPolicy>(&json).and_then(|o| {
                validate::residency_policy(&o)?;
                upsert(&mut input.policies, o, &mut input.skipped, file, document);
                Ok(())
            }),
            "ResidentWorkload" => parse::<ResidentWorkload>(&json).and_then(|o| {
                validate::resident_workload(&o)?;
                upsert(&mut input.workloads, o, &mut input.skipped, file, document);
                Ok(())
            }),
            other => Err(vec![FieldError {
                path: "kind".into(),
                message: format!(
                    "'{other}' is not a kind of {API_VERSION}: use MemberCluster, ResidencyPolicy or ResidentWorkload"
                ),
            }]),
        };
        if let Err(field_errors) = result {
            for fe in field_errors {
                errors.push(err(object.clone(), Some(fe.path), fe.message));
            }
        }
    }
}

/// Deserializes with the failing field's path, and refuses fields the API does not know
/// (the API server would prune them or, with strict field validation, refuse them).
fn parse<T: DeserializeOwned + serde::Serialize>(json: &Value) -> Result<T, Vec<FieldError>> {
    let obj: T = serde_path_to_error::deserialize(json).map_err(|e| {
        let path = e.path().to_string();
        vec![FieldError {
            path: if path == "." { "(root)".into() } else { path },
            message: e.into_inner().to_string(),
        }]
    })?;
    let back = serde_json::to_value(&obj).map_err(|e| {
        vec![FieldError {
            path: "(root)".into(),
            message: e.to_string(),
        }]
    })?;
    let mut unknown = Vec::new();
    unknown_fields(json, &back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(obj)
    } else {
        Err(unknown
            .into_iter()
            .map(|path| FieldError {
                path,
                message: "unknown field (check its spelling against `kubectl explain`)".into(),
            })
            .collect())
    }
}

/// Paths present in `input` but dropped by deserialization. `metadata` is only checked for
/// the fields the types keep; embedded manifests are kept whole, so nothing in them is flagged.
fn unknown_fields(input: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(bv) => unknown_fields(v, bv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter().zip(b).enumerate() {
                unknown_fields(iv, bv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Adds `obj`, or replaces an earlier object of the same kind, namespace and name (as a later
/// `kubectl apply -f` would), noting the replacement.
fn upsert<K: kube::Resource<DynamicType = ()>>(
    list: &mut Vec<K>,
    obj: K,
    notes: &mut Vec<String>,
    file: &Path,
    document: usize,
) {
    use kube::ResourceExt;
    let key = |o: &K| (o.namespace(), o.name_any());
    if let Some(existing) = list.iter_mut().find(|o| key(o) == key(&obj)) {
        notes.push(format!(
            "{}: document {document}: {}/{} replaces its earlier definition",
            file.display(),
            K::kind(&()),
            obj.name_any()
        ));
        *existing = obj;
    } else {
        list.push(obj);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> (Input, Vec<InputError>) {
        let mut input = Input::default();
        let mut errors = Vec::new();
        load_text(Path::new("t.yaml"), text, &mut input, &mut errors);
        (input, errors)
    }

    const POLICY: &str = r#"
apiVersion: residency.io/v1alpha1
kind: ResidencyPolicy
metadata: {name: apac-to-zurich}
spec:
  countries: [AU, NZ]
  allowedLocations: [{country: CH, region: zurich}]
"#;

    #[test]
    fn reads_documents_and_skips_other_kinds() {
        let text =
            format!("{POLICY}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: x}}\n---\n");
        let (input, errors) = load_str(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(input.policies.len(), 1);
        assert_eq!(input.skipped.len(), 1);
    }

    #[test]
    fn bad_country_names_file_document_and_field() {
        let text = format!("{POLICY}---\n{}", POLICY.replace("[AU, NZ]", "[AU, UK]"));
        let (_, errors) = load_str(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = errors[0].to_string();
        assert!(
            e.starts_with(
                "t.yaml: document 2 (ResidencyPolicy/apac-to-zurich): spec.countries[1]:"
            ),
            "{e}"
        );
        assert!(e.contains("'UK' is not an assigned"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = POLICY.replace("allowedLocations", "allowedLocation");
        let (_, errors) = load_str(&text);
        let paths: Vec<_> = errors.iter().filter_map(|e| e.path.clone()).collect();
        assert_eq!(paths, ["spec.allowedLocation"], "{errors:?}");
    }

    #[test]
    fn semantic_errors_are_reported_with_paths() {
        let text = POLICY.replace("  allowedLocations: [{country: CH, region: zurich}]\n", "");
        let (_, errors) = load_str(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path.as_deref(), Some("spec"));
        assert!(
            errors[0]
                .message
                .contains("allowedLocations, clusterSelector")
        );
    }

    #[test]
    fn unserved_version_and_unknown_kind() {
        let (_, errors) = load_str(&POLICY.replace("v1alpha1", "v1"));
        assert!(errors[0].message.contains("not served"), "{errors:?}");
        let (_, errors) = load_str(&POLICY.replace("ResidencyPolicy", "ResidencyRule"));
        assert!(errors[0].message.contains("not a kind"), "{errors:?}");
    }

    #[test]
    fn a_later_definition_replaces_an_earlier_one() {
        let text = format!(
            "{POLICY}---\n{}",
            POLICY.replace("region: zurich", "region: geneva")
        );
        let (input, errors) = load_str(&text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(input.policies.len(), 1);
        assert_eq!(
            input.policies[0].spec.allowed_locations[0]
                .region
                .as_deref(),
            Some("geneva")
        );
        assert!(input.skipped[0].contains("replaces its earlier definition"));
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let (_, errors) = load_str("kind: [unclosed\n");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("not valid YAML"));
    }
}
