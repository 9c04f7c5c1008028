//! `ResidencyPolicy`: the law. Data of these countries may only be stored and processed there.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::CountryCode;

/// Data of `countries` may only be stored and processed in `allowedLocations` and/or on the
/// clusters matched by `clusterSelector` (when both are given, a cluster must match both).
///
/// Several policies may govern the same country: a cluster is then allowed only if every one of
/// them allows it. A country that no policy governs is placed nowhere (default deny).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "residency.io",
    version = "v1alpha1",
    kind = "ResidencyPolicy",
    doc = "Which countries' data may live where: data of spec.countries may only be stored and processed in spec.allowedLocations and/or on clusters matching spec.clusterSelector.",
    status = "ResidencyPolicyStatus",
    shortname = "rp",
    category = "residency",
    printcolumn = r#"{"name":"Countries","type":"string","jsonPath":".spec.countries"}"#,
    printcolumn = r#"{"name":"Enforcement","type":"string","jsonPath":".spec.enforcement"}"#,
    printcolumn = r#"{"name":"Clusters","type":"string","jsonPath":".status.matchedClusters"}"#,
    printcolumn = r#"{"name":"Workloads","type":"integer","jsonPath":".status.governedWorkloads"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = kube::core::Rule::new("size(self.allowedLocations) > 0 || has(self.clusterSelector)").message("set allowedLocations, clusterSelector or both: a policy must say where its countries' data may live"))]
#[serde(rename_all = "camelCase")]
pub struct ResidencyPolicySpec {
    /// The countries whose data this policy governs (ISO 3166-1 alpha-2, e.g. `AU`).
    #[schemars(length(min = 1, max = 250), extend("x-kubernetes-list-type" = "set"))]
    pub countries: Vec<CountryCode>,
    /// The locations where their data may live: a country, optionally narrowed to a region.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub allowed_locations: Vec<AllowedLocation>,
    /// A label selector on MemberCluster labels; clusters must match it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// `Enforce` places, relocates and corrects drift; `Audit` computes and reports what the
    /// policy would do, and never writes to a member.
    #[serde(default)]
    pub enforcement: Enforcement,
}

/// A location where governed data may live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AllowedLocation {
    /// Country code of the location, e.g. `CH`.
    pub country: CountryCode,
    /// Region within the country, e.g. `zurich`. Empty allows every region of the country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub region: Option<String>,
}

/// How a policy acts.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Place, relocate and correct drift.
    #[default]
    Enforce,
    /// Compute and report only; never place, move or correct anything on a member (the
    /// members' admission policies only warn about the data it would forbid).
    Audit,
}

/// What the policy currently matches and what violates it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResidencyPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and, when data sits where the policy forbids it, `Compliant=False`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Member clusters this policy allows, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_clusters: Vec<String>,
    /// Number of ResidentWorkloads holding data of a country this policy governs.
    #[serde(default)]
    pub governed_workloads: i32,
    /// Data found where this policy forbids it (at most 20 entries; see `violationCount`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
    /// Total number of violations.
    #[serde(default)]
    pub violation_count: i32,
    /// When data of the policy's countries was where the policy forbids it: one interval per
    /// object and set of countries, open (`to` absent) while it lasts. Survives Events, so "was AU data
    /// outside Zurich in the last 90 days?" can be answered later. At most 100 intervals: the
    /// open ones first, then the most recently closed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub history: Vec<ViolationInterval>,
    /// Copies of the policy's countries that were on a member cluster when it was deleted with
    /// `residency.io/forget-data=true`: no longer watched, so unverifiable, and kept here until a
    /// MemberCluster of that name is connected again and its inventory shows what is there. At
    /// most 50 entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub forgotten: Vec<ForgottenCopies>,
}

/// Copies on a member cluster removed while it still held them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ForgottenCopies {
    /// The removed member cluster.
    pub cluster: String,
    /// The policy's countries whose data was there, sorted.
    pub countries: Vec<String>,
    /// Number of objects labelled with those countries that were there.
    pub objects: i32,
    /// When the deletion forgot them.
    pub since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// What was there, in a sentence (the first objects by name).
    pub message: String,
}

/// One interval in which a piece of data was where a policy forbids it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ViolationInterval {
    /// The member cluster holding it.
    pub cluster: String,
    /// The policy's countries whose data it holds, sorted.
    pub countries: Vec<String>,
    /// Kind of the object.
    pub kind: String,
    /// Namespace of the object, when namespaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// When the operator first saw it there.
    pub from: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// When it was last seen gone; absent while it is still there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// One piece of data where a policy forbids it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Violation {
    /// The member cluster holding it.
    pub cluster: String,
    /// The policy's countries whose data it holds, sorted.
    pub countries: Vec<String>,
    /// Kind of the object, e.g. `PersistentVolumeClaim`.
    pub kind: String,
    /// Namespace of the object, when namespaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the object.
    pub name: String,
    /// What is wrong, in a sentence.
    pub message: String,
}
