//! `ResidentWorkload`: a bundle of manifests that stores or processes given countries' data.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::CountryCode;

/// Storage or processing workloads for the data of `countries`. The operator places the
/// `manifests` on every member cluster the governing policies allow (and that is ready,
/// location-verified and schedulable), and relocates them, make before break, when that set
/// changes.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "residency.io",
    version = "v1alpha1",
    kind = "ResidentWorkload",
    doc = "Manifests that store or process the data of given countries, placed by the operator only on member clusters the policies allow.",
    namespaced,
    status = "ResidentWorkloadStatus",
    shortname = "rw",
    category = "residency",
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".spec.role"}"#,
    printcolumn = r#"{"name":"Countries","type":"string","jsonPath":".spec.countries"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.targets"}"#,
    printcolumn = r#"{"name":"Compliant","type":"string","jsonPath":".status.conditions[?(@.type==\"Compliant\")].status"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ResidentWorkloadSpec {
    /// The countries whose data the workload holds (ISO 3166-1 alpha-2, e.g. `AU`).
    #[schemars(length(min = 1, max = 250), extend("x-kubernetes-list-type" = "set"))]
    pub countries: Vec<CountryCode>,
    /// `Storage` workloads keep data at rest: their volumes get location checks and are never
    /// deleted as the last copy. `Processing` workloads only process it.
    pub role: Role,
    /// Namespaced objects to place in this workload's namespace on each target member:
    /// Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod, Service, ConfigMap, Secret,
    /// PersistentVolumeClaim, ServiceAccount, NetworkPolicy, PodDisruptionBudget,
    /// HorizontalPodAutoscaler, Ingress. Cluster-scoped and RBAC kinds are refused.
    /// Two manifests must not share kind and name (checked by `plan` and the operator; the API
    /// server cannot afford that check within its CEL cost budget).
    #[schemars(length(min = 1, max = 64))]
    pub manifests: Vec<Manifest>,
    /// What happens to the volumes (PVCs) of a member the workload leaves: `Retain` keeps them,
    /// labelled `residency.io/retained=true` and reported as a copy that must not stay there;
    /// `Purge` deletes them once the workload is Ready elsewhere. Under `Retain` nothing the
    /// operator deletes may take a volume with it: every StatefulSet is placed with
    /// `persistentVolumeClaimRetentionPolicy` `Retain` (whatever its manifest says), and claims
    /// are released from their owners before the workload leaves a member. Only a policy change
    /// or a cordon makes a workload leave a member; a member that is merely not ready or not
    /// location-verified keeps its copy.
    #[serde(default)]
    pub volume_policy: VolumePolicy,
    /// How out-of-band changes to placed objects are treated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
    /// Secrets placed on every target with the content (`type` and `data`) of a Secret on the
    /// management cluster in this workload's namespace, so that the ResidentWorkload itself
    /// carries no secret value. The operator reads only the Secrets a namespace grants it: bind
    /// the ClusterRole `<release>-secret-source` of the Helm chart to its ServiceAccount with a
    /// RoleBinding in this namespace. A missing or unreadable source stops the workload's
    /// changes (`Ready=False, reason=SecretSourceUnavailable`) and keeps what is placed. A
    /// changed source reaches the members at the workload's next reconcile (any change to it, or
    /// the periodic resync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secrets: Vec<SecretSource>,
    /// Take over objects that already exist on a member under a manifest's kind and name but
    /// were not placed by the operator (made by hand or by another tool). Off by default: such
    /// an object is left alone and the workload reports `Stalled=True, reason=Conflict`. An
    /// object of another ResidentWorkload is never taken over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_existing: bool,
    /// How a Storage workload's data follows it when its targets change. Without it (or with
    /// `mode: None`) the volumes on new targets start empty and those left behind are retained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_migration: Option<DataMigration>,
}

/// How a Storage workload's volumes move to new targets.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataMigration {
    /// `None`: nothing is copied. `CopyAndVerify`: when the workload must leave a member for
    /// new targets, its volumes are copied there directly, member to member, over TLS with keys
    /// made for that move, while it keeps running; then its writers are stopped (replicas 0,
    /// CronJobs and Jobs suspended) until no Pod mounts the volumes, a final incremental copy
    /// runs, each side computes a manifest of every file (path, type, size, mode, SHA-256,
    /// symlink targets), and only when the digests are equal is the workload started on the
    /// targets. On a mismatch or a timeout the source is started again, nothing is started on
    /// the targets, and nothing is deleted. Each move is recorded in a `DataMove`.
    #[serde(default)]
    pub mode: MigrationMode,
    /// `Automatic` starts on the targets as soon as the data is verified; `Manual` waits (with
    /// the writers stopped) until `approvedMove` names the move.
    #[serde(default)]
    pub cutover: crate::datamove::Cutover,
    /// Seconds the writers may take to stop before the move fails (default 300).
    #[serde(default = "default_quiesce_timeout")]
    #[schemars(range(min = 5, max = 86400))]
    pub quiesce_timeout_seconds: u32,
    /// With a `Manual` cutover: the name of the DataMove (`status.dataMigration.move`) a person
    /// approves after checking it; the workload starts on its targets then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub approved_move: Option<String>,
}

fn default_quiesce_timeout() -> u32 {
    300
}

/// Whether data moves.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MigrationMode {
    /// Volumes on new targets start empty.
    #[default]
    None,
    /// Copy, verify, then cut over (see `dataMigration`).
    CopyAndVerify,
}

impl ResidentWorkloadSpec {
    /// The data migration settings when data moves (`CopyAndVerify`).
    pub fn copy_and_verify(&self) -> Option<&DataMigration> {
        self.data_migration
            .as_ref()
            .filter(|d| d.mode == MigrationMode::CopyAndVerify)
    }
}

/// A Secret placed on the members from a Secret on the management cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretSource {
    /// Name of the Secret placed on the members, in the workload's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Name of the Secret on the management cluster, in the workload's namespace, whose `type`
    /// and `data` are placed.
    #[schemars(length(min = 1, max = 253))]
    pub from_secret: String,
}

/// Drift settings of a workload.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Fields the operator neither applies nor checks, so another controller may own them (for
    /// example `spec.replicas` of a Deployment scaled by an autoscaler).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub ignore: Vec<IgnoreRule>,
}

/// Fields to leave alone, on the objects of a kind (and name), or on every object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IgnoreRule {
    /// Kind the rule applies to, e.g. `Deployment`; every kind when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub kind: Option<String>,
    /// Object name the rule applies to; every object of the kind when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub name: Option<String>,
    /// Field paths, dotted from the object root, e.g. `spec.replicas`.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub paths: Vec<String>,
}

impl ResidentWorkloadSpec {
    /// The ignored field paths of the object `kind`/`name`.
    pub fn ignored_fields(&self, kind: &str, name: &str) -> Vec<String> {
        self.drift
            .iter()
            .flat_map(|d| &d.ignore)
            .filter(|r| r.kind.as_deref().is_none_or(|k| k == kind))
            .filter(|r| r.name.as_deref().is_none_or(|n| n == name))
            .flat_map(|r| r.paths.iter().cloned())
            .collect()
    }
}

/// What a workload does with the data.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Stores data at rest (volumes).
    Storage,
    /// Processes data; keeps nothing at rest.
    Processing,
}

/// Volume handling on eviction.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumePolicy {
    /// Keep the volumes (labelled and reported).
    #[default]
    Retain,
    /// Delete them after the workload is Ready on its new clusters.
    Purge,
}

/// An embedded namespaced Kubernetes object (apiVersion, kind, metadata.name and the rest).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(transparent)]
pub struct Manifest(pub serde_json::Value);

impl Manifest {
    /// `apiVersion`, or "" when absent.
    pub fn api_version(&self) -> &str {
        self.0
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
    /// `kind`, or "" when absent.
    pub fn kind(&self) -> &str {
        self.0.get("kind").and_then(|v| v.as_str()).unwrap_or("")
    }
    /// `metadata.name`, or "" when absent.
    pub fn name(&self) -> &str {
        self.0
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
}

impl JsonSchema for Manifest {
    fn schema_name() -> Cow<'static, str> {
        "Manifest".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let mut rules = vec![
            json!({
                "rule": "has(self.metadata.name) && self.metadata.name != ''",
                "message": "every manifest needs metadata.name"
            }),
            json!({
                "rule": "!has(self.metadata.namespace)",
                "message": "omit metadata.namespace: manifests are placed in the ResidentWorkload's namespace on each member"
            }),
        ];
        rules.extend(
            crate::kinds::cel_rules()
                .into_iter()
                .map(|(rule, message)| json!({"rule": rule, "messageExpression": message})),
        );
        json_schema!({
            "description": "An embedded namespaced Kubernetes object (apiVersion, kind, metadata.name and the rest of the object): any namespaced kind the members serve, users' own custom resources included, except cluster-scoped kinds, quotas, limit ranges, endpoints, events, bindings and RBAC other than Roles and RoleBindings that cannot escalate.",
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "required": ["apiVersion", "kind", "metadata"],
            "properties": {
                "apiVersion": {"type": "string", "minLength": 1, "maxLength": 64},
                "kind": {"type": "string", "minLength": 1, "maxLength": 63},
                "type": {"type": "string", "maxLength": 253, "description": "A Secret's type."},
                "metadata": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {
                        "name": {"type": "string", "maxLength": 253},
                        "namespace": {"type": "string", "maxLength": 63},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "annotations": {"type": "object", "additionalProperties": {"type": "string"}}
                    }
                }
            },
            "x-kubernetes-validations": rules
        })
    }
}

/// Where the workload is placed and how it is doing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResidentWorkloadStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling`, `Stalled` (kstatus), `Compliant` and `Drifted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The member clusters the workload should run on, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// One entry per member cluster holding (or about to hold) a copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<Placement>,
    /// The placement decision for every member cluster, with its reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterDecision>,
    /// The policies governing the workload's countries, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub governing_policies: Vec<String>,
    /// Placed objects that differ from what the operator applied and were not corrected (the
    /// workload is governed only by Audit policies now), sorted, at most 20; see `driftCount`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<DriftEntry>,
    /// Total number of drifted fields.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub drift_count: i32,
    /// The data move in progress, or the last one (`spec.dataMigration`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_migration: Option<DataMigrationStatus>,
}

/// The workload's current or last data move.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataMigrationStatus {
    /// The DataMove (same namespace) recording it.
    #[serde(rename = "move")]
    pub move_name: String,
    /// Its phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<crate::datamove::Phase>,
    /// What is happening, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// One entry per volume and destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<super::data_move::VolumePair>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// One drifted field of a placed object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DriftEntry {
    /// MemberCluster name.
    pub cluster: String,
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// Field path, e.g. `spec.replicas`; `(object)` when the object was deleted.
    pub path: String,
    /// The applied value (JSON).
    pub desired: String,
    /// The live value (JSON), `<absent>` when gone.
    pub live: String,
    /// When the operator first saw this drift.
    pub first_observed: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
}

/// The decision for one member cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDecision {
    /// MemberCluster name.
    pub name: String,
    /// `Target`, `AllowedNotEligible` or `Forbidden`.
    pub verdict: String,
    /// Why, in one line.
    pub reason: String,
}

/// The workload's copy on one member cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// MemberCluster name.
    pub cluster: String,
    /// `Pending`, `Applied`, `Ready`, `Evicting`, `Retained`, `Unknown` or `Failed`.
    pub state: String,
    /// What is happening, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Readiness of each placed object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectStatus>,
    /// Where the copy physically is: the regions of its Pods' nodes and of its volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<LocationEvidence>,
}

/// The location proof of one copy, from the member's nodes, Pods and volumes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocationEvidence {
    /// Regions of the nodes the workload's Pods run on (a node's `topology.kubernetes.io/region`
    /// label, or its zone's region on the member's other nodes), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_regions: Vec<String>,
    /// Regions of the workload's PersistentVolumes: where the nodes their node affinity matches
    /// are (any keys: hostname, zone, a CSI driver's zone key), plus the regions and zones it
    /// names, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_regions: Vec<String>,
    /// Pods and volumes outside the member's attested regions (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub outside: Vec<String>,
    /// Pods and volumes whose location nothing proves (at most 20): a volume without node
    /// affinity (network storage) or whose affinity matches no node, a Pod on a node without a
    /// region. Not outside, not proven inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub unverifiable: Vec<String>,
    /// Volumes counted inside on the member's word: their StorageClass is one the MemberCluster
    /// vouches for (`spec.attestation.vouchedStorageClasses`) and nothing places them elsewhere
    /// (at most 20).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub vouched: Vec<String>,
}

/// Readiness of one placed object.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// apiVersion, e.g. `apps/v1` (absent in records made before it was kept: then a well-known
    /// kind's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Whether it is ready (Deployment available, StatefulSet ready, PVC Bound, Job complete).
    pub ready: bool,
    /// Details when not ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}
