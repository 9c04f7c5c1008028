//! The desired state of a ResidentWorkload on one member cluster: its manifests, placed in the
//! workload's namespace, labelled with the workload's identity and countries, with the member's
//! storage class for resident volumes, and annotated with a hash of their content.
//!
//! Pure: no I/O and no API calls.

use std::collections::BTreeMap;

use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::api::ResidentWorkload;
use crate::api::labels;
use crate::api::resident_workload::{Role, VolumePolicy};

/// Annotation holding the hash of the desired content of a placed object.
pub const HASH_ANNOTATION: &str = "residency.io/desired-hash";

/// Server-populated (or cluster-specific) metadata fields removed from every manifest.
/// `ownerReferences` name UIDs of another cluster, which the member's garbage collector would
/// treat as missing owners, so they are removed too.
const DROPPED_METADATA: &[&str] = &[
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "managedFields",
    "generation",
    "selfLink",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// The longest valid label value (the workload name and namespace become label values).
const MAX_LABEL_VALUE: usize = 63;

/// One object to place on a member, ready for server-side apply.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (the workload's namespace).
    pub namespace: String,
    /// The full object, including the [`HASH_ANNOTATION`].
    pub object: Value,
    /// Hex SHA-256 of the canonical JSON of the object without the [`HASH_ANNOTATION`].
    pub hash: String,
}

/// Why the desired state of a workload cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The ResidentWorkload itself lacks what placement needs (name, namespace).
    #[error("the ResidentWorkload cannot be placed: {reason}")]
    InvalidWorkload {
        /// What is wrong.
        reason: String,
    },
    /// A manifest is malformed (not an object, no `metadata.name`, mistyped metadata).
    #[error("manifest {index} ({kind} '{name}') is invalid: {reason}")]
    InvalidManifest {
        /// Position of the manifest in `spec.manifests`.
        index: usize,
        /// Its kind (may be empty).
        kind: String,
        /// Its name (may be empty).
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A manifest's kind is refused ([`crate::kinds`]).
    #[error("manifest {index} ({kind} '{name}', apiVersion '{api_version}'): {reason}")]
    ForbiddenKind {
        /// Position of the manifest in `spec.manifests`.
        index: usize,
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A manifest names a namespace other than the workload's.
    #[error(
        "manifest {index} ({kind} '{name}') is in namespace '{namespace}', but manifests are placed in the workload's namespace '{expected}': omit metadata.namespace"
    )]
    ForeignNamespace {
        /// Position of the manifest in `spec.manifests`.
        index: usize,
        /// Its kind.
        kind: String,
        /// Its name.
        name: String,
        /// The namespace the manifest names.
        namespace: String,
        /// The workload's namespace.
        expected: String,
    },
    /// Two manifests share kind and name.
    #[error(
        "manifest {index} ({kind} '{name}') duplicates manifest {first_index}: two manifests must not share kind and name"
    )]
    DuplicateManifest {
        /// Position of the second manifest.
        index: usize,
        /// Position of the first manifest with that kind and name.
        first_index: usize,
        /// The shared kind.
        kind: String,
        /// The shared name.
        name: String,
    },
}

impl BuildError {
    /// A stable snake_case category, for metrics and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            BuildError::InvalidWorkload { .. } => "invalid_workload",
            BuildError::InvalidManifest { .. } => "invalid_manifest",
            BuildError::ForbiddenKind { .. } => "forbidden_kind",
            BuildError::ForeignNamespace { .. } => "foreign_namespace",
            BuildError::DuplicateManifest { .. } => "duplicate_manifest",
        }
    }
}

/// Builds the objects to place on one member for `workload`, in apply order.
///
/// `storage_class` is the member's `storageClassName`: for `Storage` workloads it replaces the
/// class of every PersistentVolumeClaim and StatefulSet volumeClaimTemplate.
pub fn build(
    workload: &ResidentWorkload,
    storage_class: Option<&str>,
) -> Result<Vec<DesiredObject>, BuildError> {
    build_with_secrets(workload, storage_class, &[])
}

/// The content of one `spec.secrets` entry, read from the management cluster: the Secret's
/// `type` and `data` (base64, as the API serves it).
#[derive(Clone, PartialEq, Eq)]
pub struct SourcedSecret {
    /// The name of the Secret placed on the members.
    pub name: String,
    /// Its `type`, e.g. `Opaque`.
    pub type_: Option<String>,
    /// Its `data`, base64-encoded.
    pub data: BTreeMap<String, String>,
}

impl std::fmt::Debug for SourcedSecret {
    // never print the values
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourcedSecret")
            .field("name", &self.name)
            .field("type_", &self.type_)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SourcedSecret {
    fn manifest(&self) -> crate::api::resident_workload::Manifest {
        let mut m = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": self.name}, "data": self.data});
        if let Some(t) = &self.type_ {
            m["type"] = Value::from(t.as_str());
        }
        crate::api::resident_workload::Manifest(m)
    }
}

/// [`build`], with the Secrets of `spec.secrets` whose content was read from the management
/// cluster (placed like manifests, after them in `spec` order).
pub fn build_with_secrets(
    workload: &ResidentWorkload,
    storage_class: Option<&str>,
    sourced: &[SourcedSecret],
) -> Result<Vec<DesiredObject>, BuildError> {
    let name = workload
        .metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| BuildError::InvalidWorkload {
            reason: "it has no metadata.name".to_string(),
        })?;
    let namespace = workload
        .metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| BuildError::InvalidWorkload {
            reason: "it has no metadata.namespace".to_string(),
        })?;
    if name.len() > MAX_LABEL_VALUE {
        return Err(BuildError::InvalidWorkload {
            reason: format!(
                "its name is {} characters long, but it becomes the value of the label {} (at most {MAX_LABEL_VALUE} characters)",
                name.len(),
                labels::WORKLOAD
            ),
        });
    }

    let mut identity = Map::new();
    identity.insert(
        labels::MANAGED_BY.to_string(),
        Value::from(labels::MANAGED_BY_VALUE),
    );
    identity.insert(labels::WORKLOAD.to_string(), Value::from(name));
    identity.insert(
        labels::WORKLOAD_NAMESPACE.to_string(),
        Value::from(namespace),
    );
    for country in &workload.spec.countries {
        identity.insert(labels::country(country.as_str()), Value::from("true"));
    }
    let resident_class = match (workload.spec.role, storage_class) {
        (Role::Storage, Some(class)) => Some(class),
        _ => None,
    };

    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut out = Vec::with_capacity(workload.spec.manifests.len());
    let extra: Vec<_> = sourced.iter().map(SourcedSecret::manifest).collect();
    let all_manifests: Vec<&Value> = workload.spec.manifests.iter().map(|m| &m.0).collect();
    for (index, manifest) in workload.spec.manifests.iter().chain(&extra).enumerate() {
        let api_version = manifest.api_version().to_string();
        let kind = manifest.kind().to_string();
        let obj_name = manifest.name().to_string();
        let invalid = |reason: &str| BuildError::InvalidManifest {
            index,
            kind: kind.clone(),
            name: obj_name.clone(),
            reason: reason.to_string(),
        };
        if !manifest.0.is_object() {
            return Err(invalid("it is not an object"));
        }
        if let Some(reason) = crate::kinds::refusal(&api_version, &kind, &manifest.0)
            .or_else(|| crate::kinds::rbac_refusal(&manifest.0, &all_manifests))
        {
            return Err(BuildError::ForbiddenKind {
                index,
                api_version,
                kind,
                name: obj_name,
                reason,
            });
        }
        if obj_name.is_empty() {
            return Err(invalid("metadata.name is missing"));
        }
        match manifest.0.pointer("/metadata/namespace") {
            None | Some(Value::Null) => {}
            Some(Value::String(ns)) if ns.is_empty() || ns == namespace => {}
            Some(Value::String(ns)) => {
                return Err(BuildError::ForeignNamespace {
                    index,
                    kind,
                    name: obj_name,
                    namespace: ns.clone(),
                    expected: namespace.to_string(),
                });
            }
            Some(_) => return Err(invalid("metadata.namespace is not a string")),
        }
        if let Some(&first_index) = seen.get(&(kind.clone(), obj_name.clone())) {
            return Err(BuildError::DuplicateManifest {
                index,
                first_index,
                kind,
                name: obj_name,
            });
        }
        seen.insert((kind.clone(), obj_name.clone()), index);

        let mut object = manifest.0.clone();
        let retain = workload.spec.volume_policy == VolumePolicy::Retain;
        prepare(
            &mut object,
            &kind,
            namespace,
            &identity,
            resident_class,
            retain,
        )
        .map_err(|reason| invalid(&reason))?;
        let hash = content_hash(&object);
        set_annotation(&mut object, HASH_ANNOTATION, &hash).map_err(|reason| invalid(&reason))?;
        out.push(DesiredObject {
            api_version,
            kind,
            name: obj_name,
            namespace: namespace.to_string(),
            object,
            hash,
        });
    }
    out.sort_by(|a, b| {
        apply_rank(&a.kind)
            .cmp(&apply_rank(&b.kind))
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok(out)
}

/// Position of `kind` in the apply order (other kinds last); deletion uses the reverse.
pub fn apply_rank(kind: &str) -> usize {
    crate::kinds::apply_rank(kind)
}

/// Hex SHA-256 of the canonical JSON (keys sorted at every level) of `object`, ignoring its
/// [`HASH_ANNOTATION`]. Equal for equal content, whatever the key order.
pub fn content_hash(object: &Value) -> String {
    let mut canonical = canonicalize(object);
    if let Some(meta) = canonical.get_mut("metadata").and_then(Value::as_object_mut) {
        let now_empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
            Some(annotations) => {
                annotations.remove(HASH_ANNOTATION);
                annotations.is_empty()
            }
            None => false,
        };
        if now_empty {
            meta.remove("annotations");
        }
    }
    // Serialising a `Value` cannot fail (its map keys are strings).
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// A copy of `value` whose objects have their keys inserted in sorted order, so serialisation
/// is canonical whether or not serde_json preserves insertion order.
fn canonicalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for key in keys {
                sorted.insert(key.clone(), canonicalize(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonicalize).collect()),
        other => other.clone(),
    }
}

/// Namespace, dropped fields, labels and storage classes; everything but the hash annotation.
fn prepare(
    object: &mut Value,
    kind: &str,
    namespace: &str,
    identity: &Map<String, Value>,
    resident_class: Option<&str>,
    retain_volumes: bool,
) -> Result<(), String> {
    let root = object
        .as_object_mut()
        .ok_or_else(|| "it is not an object".to_string())?;
    root.remove("status");
    {
        let meta = child_object(root, "metadata", "metadata")?;
        for field in DROPPED_METADATA {
            meta.remove(*field);
        }
        meta.insert("namespace".to_string(), Value::from(namespace));
        // A stale hash from a copied object must not influence the new one.
        let now_empty = match meta.get_mut("annotations") {
            Some(Value::Object(annotations)) => {
                annotations.remove(HASH_ANNOTATION);
                annotations.is_empty()
            }
            Some(Value::Null) => true,
            Some(_) => return Err("metadata.annotations is not a map".to_string()),
            None => false,
        };
        if now_empty {
            meta.remove("annotations");
        }
        merge_labels(meta, identity, "metadata.labels")?;
    }

    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            if let Some(template) = existing_object(object, &["spec", "template"], "spec.template")?
            {
                let meta = child_object(template, "metadata", "spec.template.metadata")?;
                merge_labels(meta, identity, "spec.template.metadata.labels")?;
            }
        }
        "CronJob" => {
            if let Some(template) = existing_object(
                object,
                &["spec", "jobTemplate", "spec", "template"],
                "spec.jobTemplate.spec.template",
            )? {
                let meta = child_object(
                    template,
                    "metadata",
                    "spec.jobTemplate.spec.template.metadata",
                )?;
                merge_labels(
                    meta,
                    identity,
                    "spec.jobTemplate.spec.template.metadata.labels",
                )?;
            }
        }
        _ => {}
    }

    if kind == "StatefulSet" && retain_volumes {
        // under `volumePolicy: Retain` no deletion or scale-down may take a claim with it
        let spec = child_object(
            object.as_object_mut().ok_or("it is not an object")?,
            "spec",
            "spec",
        )?;
        spec.insert(
            "persistentVolumeClaimRetentionPolicy".to_string(),
            serde_json::json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
        );
    }
    if kind == "StatefulSet" {
        let templates = match object.pointer_mut("/spec/volumeClaimTemplates") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => Some(items),
            Some(_) => return Err("spec.volumeClaimTemplates is not a list".to_string()),
        };
        for (i, vct) in templates.into_iter().flatten().enumerate() {
            let vct = vct
                .as_object_mut()
                .ok_or_else(|| format!("spec.volumeClaimTemplates[{i}] is not an object"))?;
            let meta = child_object(vct, "metadata", "volumeClaimTemplates[].metadata")?;
            merge_labels(meta, identity, "volumeClaimTemplates[].metadata.labels")?;
            if let Some(class) = resident_class {
                let spec = child_object(vct, "spec", "volumeClaimTemplates[].spec")?;
                spec.insert("storageClassName".to_string(), Value::from(class));
            }
        }
    }
    if kind == "PersistentVolumeClaim"
        && let Some(class) = resident_class
    {
        let root = object
            .as_object_mut()
            .ok_or_else(|| "it is not an object".to_string())?;
        let spec = child_object(root, "spec", "spec")?;
        spec.insert("storageClassName".to_string(), Value::from(class));
    }
    Ok(())
}

/// The object at `map[key]`, created when absent or null.
fn child_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<&'a mut Map<String, Value>, String> {
    let slot = map.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
        .ok_or_else(|| format!("{path} is not an object"))
}

/// The object at `path` below `root` when every step exists; an error when the last step is
/// not an object.
fn existing_object<'a>(
    root: &'a mut Value,
    path: &[&str],
    display: &str,
) -> Result<Option<&'a mut Map<String, Value>>, String> {
    let mut current = root;
    for step in path {
        match current.get_mut(*step) {
            Some(next) if !next.is_null() => current = next,
            _ => return Ok(None),
        }
    }
    current
        .as_object_mut()
        .map(Some)
        .ok_or_else(|| format!("{display} is not an object"))
}

/// Merges `identity` over `meta.labels` (ours win).
fn merge_labels(
    meta: &mut Map<String, Value>,
    identity: &Map<String, Value>,
    path: &str,
) -> Result<(), String> {
    let labels = child_object(meta, "labels", path)?;
    for (key, value) in identity {
        labels.insert(key.clone(), value.clone());
    }
    Ok(())
}

fn set_annotation(object: &mut Value, key: &str, value: &str) -> Result<(), String> {
    let root = object
        .as_object_mut()
        .ok_or_else(|| "it is not an object".to_string())?;
    let meta = child_object(root, "metadata", "metadata")?;
    let annotations = child_object(meta, "annotations", "metadata.annotations")?;
    annotations.insert(key.to_string(), Value::from(value));
    Ok(())
}

/// The Pod Security Admission labels of a namespace at `level` (enforce, warn and audit, at the
/// latest version of the standards).
pub fn pod_security_labels(level: &str) -> BTreeMap<String, String> {
    ["enforce", "warn", "audit"]
        .iter()
        .flat_map(|mode| {
            [
                (
                    format!("pod-security.kubernetes.io/{mode}"),
                    level.to_string(),
                ),
                (
                    format!("pod-security.kubernetes.io/{mode}-version"),
                    "latest".to_string(),
                ),
            ]
        })
        .collect()
}

/// The v1 Namespace the operator creates on a member for a workload's namespace, with the
/// member's Pod Security level (`pod_security`: `restricted`, `baseline` or `privileged`).
pub fn namespace_object(namespace: &str, pod_security: &str) -> Value {
    let mut labels: BTreeMap<String, String> = pod_security_labels(pod_security);
    labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": labels},
    })
}

/// The API resource (with its plural) of a well-known placeable `apiVersion`/`kind`
/// ([`crate::kinds::PLACEABLE`]); `None` for any other kind (a member's discovery resolves those).
pub fn api_resource(api_version: &str, kind: &str) -> Option<ApiResource> {
    let k = crate::kinds::placeable(api_version, kind)?;
    Some(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(k.group, k.version, k.kind),
        k.plural,
    ))
}

/// The label selector of every object placed for the workload `namespace/name`.
pub fn workload_selector(namespace: &str, name: &str) -> String {
    format!(
        "{}={name},{}={namespace}",
        labels::WORKLOAD,
        labels::WORKLOAD_NAMESPACE
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::api::resident_workload::{Manifest, VolumePolicy};
    use crate::api::{CountryCode, ResidentWorkloadSpec};

    fn workload(role: Role, manifests: Vec<Value>) -> ResidentWorkload {
        let mut rw = ResidentWorkload::new(
            "ledger",
            ResidentWorkloadSpec {
                countries: vec![
                    CountryCode::parse("CH").unwrap(),
                    CountryCode::parse("AU").unwrap(),
                ],
                role,
                manifests: manifests.into_iter().map(Manifest).collect(),
                volume_policy: VolumePolicy::Retain,
                drift: None,
                secrets: Vec::new(),
                adopt_existing: false,
                data_migration: None,
            },
        );
        rw.metadata.namespace = Some("finance".to_string());
        rw
    }

    fn deployment(name: &str) -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": {"app": name}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}
                }
            }
        })
    }

    fn statefulset(class: Option<&str>) -> Value {
        let mut vct_spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}
        });
        if let Some(c) = class {
            vct_spec["storageClassName"] = json!(c);
        }
        json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {
                "serviceName": "db",
                "selector": {"matchLabels": {"app": "db"}},
                "template": {
                    "metadata": {"labels": {"app": "db"}},
                    "spec": {"containers": [{"name": "db", "image": "postgres:17"}]}
                },
                "volumeClaimTemplates": [
                    {"metadata": {"name": "data", "labels": {"tier": "data"}}, "spec": vct_spec}
                ]
            }
        })
    }

    fn pvc(class: Option<&str>) -> Value {
        let mut spec = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "5Gi"}}
        });
        if let Some(c) = class {
            spec["storageClassName"] = json!(c);
        }
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "archive"},
            "spec": spec
        })
    }

    fn find<'a>(objects: &'a [DesiredObject], kind: &str, name: &str) -> &'a DesiredObject {
        objects
            .iter()
            .find(|o| o.kind == kind && o.name == name)
            .unwrap()
    }

    fn assert_identity(labels: &Value) {
        assert_eq!(labels[labels::MANAGED_BY], "residency-operator");
        assert_eq!(labels[labels::WORKLOAD], "ledger");
        assert_eq!(labels[labels::WORKLOAD_NAMESPACE], "finance");
        assert_eq!(labels["country.residency.io/CH"], "true");
        assert_eq!(labels["country.residency.io/AU"], "true");
    }

    #[test]
    fn sourced_secrets_are_placed_like_manifests_and_never_printed() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        let rw = workload(Role::Processing, vec![cm]);
        let sourced = SourcedSecret {
            name: "db".into(),
            type_: Some("Opaque".into()),
            data: BTreeMap::from([("password".to_string(), "aHVudGVyMg==".to_string())]),
        };
        assert!(!format!("{sourced:?}").contains("aHVudGVyMg"));
        let out = build_with_secrets(&rw, None, std::slice::from_ref(&sourced)).unwrap();
        assert_eq!(out.len(), 2);
        let db = out.iter().find(|o| o.kind == "Secret").unwrap();
        assert_eq!(db.name, "db");
        assert_eq!(db.object["data"]["password"], "aHVudGVyMg==");
        assert_eq!(db.object["type"], "Opaque");
        assert_eq!(
            db.object["metadata"]["labels"]["residency.io/workload"],
            "ledger"
        );
        assert_eq!(out[0].kind, "Secret", "Secrets are applied first");
        let again = build_with_secrets(&rw, None, &[sourced]).unwrap();
        assert_eq!(again, out, "deterministic");
    }

    #[test]
    fn labels_are_merged_and_ours_win() {
        let mut d = deployment("web");
        d["metadata"]["labels"][labels::MANAGED_BY] = json!("helm");
        d["metadata"]["labels"][labels::WORKLOAD] = json!("someone-else");
        let out = build(&workload(Role::Processing, vec![d]), None).unwrap();
        let labels = &out[0].object["metadata"]["labels"];
        assert_identity(labels);
        assert_eq!(labels["app"], "web");
        assert_eq!(labels.as_object().unwrap().len(), 6);
    }

    #[test]
    fn pod_template_and_volume_claim_template_labels() {
        let cron = json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly"},
            "spec": {
                "schedule": "0 2 * * *",
                "jobTemplate": {"spec": {"template": {
                    "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}
                }}}
            }
        });
        let out = build(
            &workload(
                Role::Storage,
                vec![deployment("web"), statefulset(None), cron],
            ),
            None,
        )
        .unwrap();
        let web = &find(&out, "Deployment", "web").object;
        assert_identity(&web["spec"]["template"]["metadata"]["labels"]);
        assert_eq!(web["spec"]["template"]["metadata"]["labels"]["app"], "web");
        // Selectors are never touched.
        assert_eq!(
            web["spec"]["selector"],
            json!({"matchLabels": {"app": "web"}})
        );

        let db = &find(&out, "StatefulSet", "db").object;
        assert_identity(&db["spec"]["template"]["metadata"]["labels"]);
        let vct = &db["spec"]["volumeClaimTemplates"][0];
        assert_identity(&vct["metadata"]["labels"]);
        assert_eq!(vct["metadata"]["labels"]["tier"], "data");
        assert_eq!(
            db["spec"]["selector"],
            json!({"matchLabels": {"app": "db"}})
        );

        let nightly = &find(&out, "CronJob", "nightly").object;
        assert_identity(&nightly["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]);
    }

    #[test]
    fn storage_class_set_for_storage_workloads() {
        let out = build(
            &workload(
                Role::Storage,
                vec![pvc(Some("standard")), statefulset(Some("slow"))],
            ),
            Some("zrh-encrypted"),
        )
        .unwrap();
        let archive = &find(&out, "PersistentVolumeClaim", "archive").object;
        assert_eq!(archive["spec"]["storageClassName"], "zrh-encrypted");
        let db = &find(&out, "StatefulSet", "db").object;
        assert_eq!(
            db["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"],
            "zrh-encrypted"
        );
    }

    #[test]
    fn storage_class_untouched_for_processing_or_no_class() {
        let manifests = vec![pvc(Some("standard")), statefulset(None)];
        for (role, class) in [
            (Role::Processing, Some("zrh-encrypted")),
            (Role::Storage, None),
        ] {
            let out = build(&workload(role, manifests.clone()), class).unwrap();
            let archive = &find(&out, "PersistentVolumeClaim", "archive").object;
            assert_eq!(archive["spec"]["storageClassName"], "standard");
            let db = &find(&out, "StatefulSet", "db").object;
            assert!(
                db["spec"]["volumeClaimTemplates"][0]["spec"]
                    .get("storageClassName")
                    .is_none()
            );
        }
    }

    #[test]
    fn namespace_set_and_server_fields_dropped() {
        let cm = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": "settings",
                "namespace": "finance",
                "resourceVersion": "123",
                "uid": "0b1c",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "managedFields": [],
                "generation": 3,
                "selfLink": "/api/v1/namespaces/finance/configmaps/settings",
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "x", "uid": "u"}]
            },
            "data": {"k": "v"},
            "status": {"whatever": true}
        });
        let out = build(
            &workload(Role::Processing, vec![cm, deployment("web")]),
            None,
        )
        .unwrap();
        for o in &out {
            assert_eq!(o.namespace, "finance");
            assert_eq!(o.object["metadata"]["namespace"], "finance");
        }
        let settings = &find(&out, "ConfigMap", "settings").object;
        let meta = settings["metadata"].as_object().unwrap();
        for field in DROPPED_METADATA {
            assert!(!meta.contains_key(*field), "{field} kept");
        }
        assert!(settings.get("status").is_none());
        assert_eq!(settings["data"]["k"], "v");
    }

    #[test]
    fn forbidden_kind_refused() {
        let role = json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "admin-ish"}
        });
        let err = build(
            &workload(Role::Processing, vec![deployment("web"), role]),
            None,
        )
        .unwrap_err();
        assert_eq!(err.category(), "forbidden_kind");
        let msg = err.to_string();
        assert!(msg.contains("manifest 1"), "{msg}");
        assert!(msg.contains("ClusterRole 'admin-ish'"), "{msg}");
        assert!(msg.contains("cluster-scoped"), "{msg}");

        // any other namespaced kind, a user's own included, is built like the others
        let widget = json!({"apiVersion": "example.com/v1", "kind": "Widget",
            "metadata": {"name": "w"}, "spec": {"size": 3}});
        let objects = build(
            &workload(Role::Processing, vec![widget, deployment("web")]),
            None,
        )
        .unwrap();
        assert_eq!(objects[1].kind, "Widget", "after the well-known kinds");
        assert_identity(&objects[1].object["metadata"]["labels"]);
    }

    #[test]
    fn other_namespace_refused() {
        let mut d = deployment("web");
        d["metadata"]["namespace"] = json!("kube-system");
        let err = build(&workload(Role::Processing, vec![d]), None).unwrap_err();
        assert_eq!(err.category(), "foreign_namespace");
        let msg = err.to_string();
        assert!(msg.contains("manifest 0 (Deployment 'web')"), "{msg}");
        assert!(msg.contains("kube-system"), "{msg}");
    }

    #[test]
    fn duplicate_refused() {
        let err = build(
            &workload(
                Role::Processing,
                vec![deployment("web"), pvc(None), deployment("web")],
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            BuildError::DuplicateManifest {
                index: 2,
                first_index: 0,
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(err.category(), "duplicate_manifest");
        // Same name, different kinds is fine.
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}});
        svc["spec"] = json!({"ports": [{"port": 80}]});
        assert!(
            build(
                &workload(Role::Processing, vec![deployment("web"), svc]),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn missing_name_and_namespace_refused() {
        let nameless = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        let err = build(&workload(Role::Processing, vec![nameless]), None).unwrap_err();
        assert_eq!(err.category(), "invalid_manifest");
        assert!(err.to_string().contains("manifest 0 (ConfigMap"));

        let mut rw = workload(Role::Processing, vec![deployment("web")]);
        rw.metadata.namespace = None;
        let err = build(&rw, None).unwrap_err();
        assert_eq!(err.category(), "invalid_workload");
    }

    #[test]
    fn hash_is_stable_and_tracks_content() {
        let rw = workload(Role::Storage, vec![deployment("web"), statefulset(None)]);
        let a = build(&rw, Some("fast")).unwrap();
        let b = build(&rw, Some("fast")).unwrap();
        assert_eq!(a, b);
        for o in &a {
            assert_eq!(o.hash.len(), 64);
            assert_eq!(o.object["metadata"]["annotations"][HASH_ANNOTATION], o.hash);
        }

        // A changed manifest changes its hash only.
        let mut changed = deployment("web");
        changed["spec"]["replicas"] = json!(3);
        let c = build(
            &workload(Role::Storage, vec![changed, statefulset(None)]),
            Some("fast"),
        )
        .unwrap();
        assert_ne!(
            find(&a, "Deployment", "web").hash,
            find(&c, "Deployment", "web").hash
        );
        assert_eq!(
            find(&a, "StatefulSet", "db").hash,
            find(&c, "StatefulSet", "db").hash
        );

        // The storage class is part of the content.
        let d = build(&rw, Some("slow")).unwrap();
        assert_ne!(
            find(&a, "StatefulSet", "db").hash,
            find(&d, "StatefulSet", "db").hash
        );
    }

    #[test]
    fn hash_does_not_depend_on_the_annotation() {
        let out = build(&workload(Role::Processing, vec![deployment("web")]), None).unwrap();
        let web = &out[0];
        // Rehashing the annotated object gives the same hash.
        assert_eq!(content_hash(&web.object), web.hash);
        // So does hashing it with the annotation removed.
        let mut bare = web.object.clone();
        bare["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
        assert_eq!(content_hash(&bare), web.hash);

        // A stale hash annotation in the manifest is ignored.
        let mut stale = deployment("web");
        stale["metadata"]["annotations"] = json!({HASH_ANNOTATION: "0000"});
        let again = build(&workload(Role::Processing, vec![stale]), None).unwrap();
        assert_eq!(again[0].hash, web.hash);
        assert_eq!(again[0].object, web.object);

        // Key order does not matter.
        let reordered: Value =
            serde_json::from_str(&serde_json::to_string_pretty(&web.object).unwrap()).unwrap();
        assert_eq!(content_hash(&reordered), web.hash);
    }

    #[test]
    fn objects_come_in_apply_order() {
        let m = |api: &str, kind: &str, name: &str| json!({"apiVersion": api, "kind": kind, "metadata": {"name": name}});
        let manifests = vec![
            m("networking.k8s.io/v1", "Ingress", "web"),
            m("autoscaling/v2", "HorizontalPodAutoscaler", "web"),
            m("v1", "Pod", "debug"),
            m("batch/v1", "CronJob", "nightly"),
            m("batch/v1", "Job", "migrate"),
            m("apps/v1", "DaemonSet", "agent"),
            m("apps/v1", "StatefulSet", "db"),
            m("apps/v1", "Deployment", "web"),
            m("apps/v1", "Deployment", "api"),
            m("policy/v1", "PodDisruptionBudget", "web"),
            m("networking.k8s.io/v1", "NetworkPolicy", "deny-all"),
            m("v1", "Service", "web"),
            m("v1", "PersistentVolumeClaim", "archive"),
            m("v1", "ConfigMap", "settings"),
            m("v1", "Secret", "creds"),
            m("v1", "ServiceAccount", "runner"),
        ];
        let out = build(&workload(Role::Processing, manifests), None).unwrap();
        let order: Vec<(&str, &str)> = out
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            order,
            vec![
                ("ServiceAccount", "runner"),
                ("Secret", "creds"),
                ("ConfigMap", "settings"),
                ("PersistentVolumeClaim", "archive"),
                ("Service", "web"),
                ("NetworkPolicy", "deny-all"),
                ("PodDisruptionBudget", "web"),
                ("Deployment", "api"),
                ("Deployment", "web"),
                ("StatefulSet", "db"),
                ("DaemonSet", "agent"),
                ("Job", "migrate"),
                ("CronJob", "nightly"),
                ("Pod", "debug"),
                ("HorizontalPodAutoscaler", "web"),
                ("Ingress", "web"),
            ]
        );
        // Every well-known kind has a rank; other kinds come last.
        for k in crate::kinds::PLACEABLE {
            assert!(
                apply_rank(k.kind) < crate::kinds::PLACEABLE.len(),
                "{k:?} unranked"
            );
        }
        assert_eq!(apply_rank("Widget"), crate::kinds::PLACEABLE.len());
    }

    #[test]
    fn api_resource_for_every_well_known_kind() {
        for k in crate::kinds::PLACEABLE {
            let ar = api_resource(&k.api_version(), k.kind)
                .unwrap_or_else(|| panic!("{} unmapped", k.kind));
            assert_eq!(ar.api_version, k.api_version());
            assert_eq!(ar.kind, k.kind);
            assert!(ar.plural.ends_with('s'));
        }
        let np = api_resource("networking.k8s.io/v1", "NetworkPolicy").unwrap();
        assert_eq!(np.group, "networking.k8s.io");
        assert_eq!(np.plural, "networkpolicies");
        assert_eq!(
            api_resource("networking.k8s.io/v1", "Ingress")
                .unwrap()
                .plural,
            "ingresses"
        );
        // other kinds and versions: the member's discovery says
        assert!(api_resource("example.com/v1", "Widget").is_none());
        assert!(api_resource("autoscaling/v1", "HorizontalPodAutoscaler").is_none());
    }

    #[test]
    fn namespace_object_and_selector() {
        let ns = namespace_object("finance", "restricted");
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/warn"],
            "restricted"
        );
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/audit-version"],
            "latest"
        );
        assert_eq!(ns["apiVersion"], "v1");
        assert_eq!(ns["kind"], "Namespace");
        assert_eq!(ns["metadata"]["name"], "finance");
        assert_eq!(
            ns["metadata"]["labels"][labels::MANAGED_BY],
            "residency-operator"
        );
        assert_eq!(
            workload_selector("finance", "ledger"),
            "residency.io/workload=ledger,residency.io/workload-namespace=finance"
        );
    }
}

/// Removes fields from a desired object so the operator neither applies nor owns them (drift
/// ignore rules, e.g. `spec.replicas` scaled by an autoscaler), and updates its hash. Paths are
/// dotted from the object root; a path through a list is not supported and is left alone.
pub fn strip_fields(obj: &mut DesiredObject, paths: &[String]) {
    if paths.is_empty() {
        return;
    }
    for path in paths {
        let mut parts: Vec<&str> = path.split('.').collect();
        let Some(last) = parts.pop() else { continue };
        let mut cursor = Some(&mut obj.object);
        for p in parts {
            cursor = cursor.and_then(|c| c.get_mut(p));
        }
        if let Some(map) = cursor.and_then(Value::as_object_mut) {
            map.remove(last);
        }
    }
    obj.hash = content_hash(&obj.object);
    if let Some(ann) = obj
        .object
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        ann.insert(HASH_ANNOTATION.into(), Value::String(obj.hash.clone()));
    }
}

#[cfg(test)]
mod strip_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stripping_removes_the_field_and_changes_the_hash() {
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "annotations": {HASH_ANNOTATION: "x"}},
            "spec": {"replicas": 2, "template": {}}});
        let mut obj = DesiredObject {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "d".into(),
            namespace: "n".into(),
            hash: content_hash(&object),
            object,
        };
        let before = obj.hash.clone();
        strip_fields(
            &mut obj,
            &["spec.replicas".into(), "spec.nothing.here".into()],
        );
        assert!(obj.object["spec"].get("replicas").is_none());
        assert!(obj.object["spec"].get("template").is_some());
        assert_ne!(obj.hash, before);
        assert_eq!(
            obj.object["metadata"]["annotations"][HASH_ANNOTATION],
            json!(obj.hash)
        );
    }
}
