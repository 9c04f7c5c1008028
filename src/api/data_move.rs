//! `DataMove`: the durable record of one verified move of a Storage workload's data from the
//! member it leaves to its new targets, and the state the operator drives it by. It stays after
//! the move (Events expire): it is what an auditor reads, and what `report` lists per country.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::CountryCode;
pub use crate::datamove::{Cutover, Phase};

/// One move of a Storage workload's volumes: copied to every destination while the source
/// runs, the writers stopped, a final incremental copy, an independent manifest of each side
/// (path, type, size, mode, SHA-256 of every file, symlink targets) whose digests must be
/// equal, and only then the workload started on the destinations. Made by the operator; its
/// spec does not change after creation.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "residency.io",
    version = "v1alpha1",
    kind = "DataMove",
    doc = "The record of one verified move of a Storage workload's data between member clusters (made by the operator).",
    namespaced,
    status = "DataMoveStatus",
    shortname = "dmove",
    category = "residency",
    printcolumn = r#"{"name":"Workload","type":"string","jsonPath":".spec.workload"}"#,
    printcolumn = r#"{"name":"From","type":"string","jsonPath":".spec.source"}"#,
    printcolumn = r#"{"name":"To","type":"string","jsonPath":".spec.destinations"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Bytes","type":"integer","jsonPath":".status.bytes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DataMoveSpec {
    /// The ResidentWorkload (same namespace) whose data moves.
    pub workload: String,
    /// The countries whose data the workload holds.
    #[schemars(length(max = 250))]
    pub countries: Vec<CountryCode>,
    /// The policies (name and generation) whose decision made the workload leave its source.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub policies: Vec<PolicyGeneration>,
    /// The member cluster the data leaves.
    pub source: String,
    /// The member clusters the data goes to, sorted.
    #[schemars(length(max = 64))]
    pub destinations: Vec<String>,
    /// The PersistentVolumeClaims moved (the same names on every side), sorted.
    #[schemars(length(max = 256))]
    pub claims: Vec<String>,
    /// `Automatic`: start on the destinations once verified; `Manual`: wait until the
    /// workload's `spec.dataMigration.approvedMove` names this move.
    pub cutover: Cutover,
    /// How long the source's writers may take to stop before the move fails.
    pub quiesce_timeout_seconds: u32,
}

/// A policy and the generation of it that was in force.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyGeneration {
    /// ResidencyPolicy name.
    pub name: String,
    /// Its `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

/// Where a move is and what it proved.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataMoveStatus {
    /// `Staging`, `Fencing`, `Syncing`, `Verifying`, `AwaitingCutover`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// What is happening, or why the move failed, in a sentence.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the current phase began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// When the move began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the source's writers were stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_at: Option<Time>,
    /// When the digests were found equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// When the move ended (Succeeded or Failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Whether the source's writers are stopped by this move now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// How to start the source's writers again (one per fenced object), kept until unfenced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fences: Vec<FenceRecord>,
    /// Mover Pods that failed and were started again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// Files moved (regular files of the source's manifest).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub files: u64,
    /// Bytes moved (of the source's regular files).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub bytes: u64,
    /// The digest of the source's manifest (SHA-256 over its sorted lines).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_digest: String,
    /// Each destination's digest, sorted by cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_digests: Vec<ClusterDigest>,
    /// One entry per volume and destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumePair>,
    /// Each finished copy to a destination, as its mover reported it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transfers: Vec<Transfer>,
    /// Seconds spent copying while the source ran (Staging) and while it was stopped (Fencing
    /// to Verifying: the writers' downtime until the cutover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// One finished copy pass to one destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Transfer {
    /// The destination member cluster.
    pub destination: String,
    /// `Staging` (while the source ran) or `Syncing` (after the fence).
    pub pass: String,
    /// Files fetched (those missing or different on the destination).
    pub files_fetched: u64,
    /// Bytes fetched.
    pub bytes_fetched: u64,
    /// Entries removed because the source no longer has them.
    pub removed: u64,
    /// How long the copy took, in milliseconds.
    pub milliseconds: u64,
}

/// How long the parts of a move took, in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// From the start to the fence (the copy made while the source ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_seconds: Option<i64>,
    /// From the fence to the verified digests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced_seconds: Option<i64>,
}

/// A stopped object of the source and how it is started again.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FenceRecord {
    /// Kind, e.g. `StatefulSet`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// The merge patch (JSON) that restores it.
    pub restore: String,
}

/// A destination's manifest digest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDigest {
    /// MemberCluster name.
    pub cluster: String,
    /// The digest of its manifest.
    pub digest: String,
}

/// One volume copied to one destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VolumePair {
    /// The source member cluster.
    pub source_cluster: String,
    /// The PersistentVolumeClaim on the source.
    pub source_claim: String,
    /// The destination member cluster.
    pub destination_cluster: String,
    /// The PersistentVolumeClaim on the destination.
    pub destination_claim: String,
    /// `Staging`, `Syncing`, `Verifying`, `Verified` or `Mismatch`.
    pub phase: String,
    /// Regular files in the volume (source).
    #[serde(default)]
    pub files: u64,
    /// Bytes of those files.
    #[serde(default)]
    pub bytes: u64,
    /// When a copy to this destination last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The digest of the volume's manifest on the source.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_digest: String,
    /// The digest of the volume's manifest on the destination.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub destination_digest: String,
    /// When the two were found equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// The first paths that differ (with how), when they differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
}
