//! `MemberCluster`: a cluster the operator may place workloads on.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::CountryCode;

/// A cluster the operator may place workloads on, where it is, and how to reach it.
///
/// A member receives new data only when it is Ready (reachable and authenticated), its
/// location is verified (every node is in one of `attestation.nodeRegions`) and it is
/// schedulable.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "residency.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    doc = "A cluster the operator may place workloads on: where it is (country, region), how its location is attested, and how to reach it.",
    status = "MemberClusterStatus",
    shortname = "mc",
    category = "residency",
    printcolumn = r#"{"name":"Country","type":"string","jsonPath":".spec.location.country"}"#,
    printcolumn = r#"{"name":"Region","type":"string","jsonPath":".spec.location.region"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Verified","type":"string","jsonPath":".status.conditions[?(@.type==\"LocationVerified\")].status"}"#,
    printcolumn = r#"{"name":"Schedulable","type":"boolean","jsonPath":".spec.schedulable"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodeCount","priority":1}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.kubernetesVersion","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterSpec {
    /// Where the cluster is: the country and region its data centre is in.
    pub location: Location,
    /// How the operator proves the location: the node region labels it expects.
    pub attestation: Attestation,
    /// How the operator reaches the cluster's API server.
    pub connection: Connection,
    /// Storage class for resident volumes (PVCs and StatefulSet volumeClaimTemplates of
    /// Storage workloads) on this member. When empty, the member's default class is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// False cordons the member: it receives no new placements, and workloads relocate away
    /// from it (make before break). Use it to evacuate a cluster.
    #[serde(default = "default_true")]
    pub schedulable: bool,
    /// Prevention at admission: with `Enabled` (the default) the operator keeps two
    /// ValidatingAdmissionPolicies (`residency.io-enforce`, `residency.io-audit`) and their
    /// bindings on the member, generated from the policies, so that its API server refuses a
    /// create or update that introduces a `country.residency.io/<CODE>` label an Enforce policy
    /// forbids on this member, and warns for one only an Audit policy forbids. Objects already
    /// there can still be updated and deleted. `Disabled` removes them; forbidden copies are
    /// then only found after they exist (detection runs either way).
    #[serde(default)]
    pub prevention: Prevention,
    /// The Pod Security Admission level of the namespaces the operator creates on this member
    /// for workloads (labels `pod-security.kubernetes.io/enforce`, `warn` and `audit`):
    /// `Restricted` (the default: no privileged Pods, no host paths, host namespaces or added
    /// capabilities, non-root, a seccomp profile), `Baseline` (no privileged Pods, host paths,
    /// host namespaces or extra capabilities) or `Privileged` (no restriction). The member's API
    /// server refuses Pods above the level; the workload's status shows its message. Namespaces
    /// the operator did not create are never relabelled.
    #[serde(default)]
    pub pod_security: PodSecurity,
}

/// A Pod Security Standard.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum PodSecurity {
    /// Hardened: non-root, no privilege escalation, capabilities dropped, a seccomp profile.
    #[default]
    Restricted,
    /// No known privilege escalation: no privileged Pods, host paths or host namespaces.
    Baseline,
    /// Unrestricted.
    Privileged,
}

impl PodSecurity {
    /// The level as the `pod-security.kubernetes.io/*` labels spell it.
    pub fn level(self) -> &'static str {
        match self {
            PodSecurity::Restricted => "restricted",
            PodSecurity::Baseline => "baseline",
            PodSecurity::Privileged => "privileged",
        }
    }
}

/// Whether the operator keeps admission policies on a member.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum Prevention {
    /// The member's API server refuses data its policies forbid there.
    #[default]
    Enabled,
    /// No admission policy is kept on the member (the operator removes its own).
    Disabled,
}

fn default_true() -> bool {
    true
}

/// Where a cluster is.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// ISO 3166-1 alpha-2 code of the country the cluster is in, e.g. `CH`.
    pub country: CountryCode,
    /// Region within the country, lower case, e.g. `zurich`.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub region: String,
    /// Optional site or data centre name, for reports only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub site: Option<String>,
}

/// The evidence that proves a cluster's location.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    /// The regions every node must be in, as nodes carry them in `topology.kubernetes.io/region`,
    /// e.g. `eu-central-2` (AWS), `europe-west6` (Google Cloud), `switzerlandnorth` (Azure). A
    /// node without a region label is placed through its `topology.kubernetes.io/zone` (the
    /// region the member's other nodes of that zone carry). A node elsewhere (or of unknown
    /// region), or whose `spec.providerID` names another zone than its labels, makes the cluster
    /// unverified: it then receives no new data (fail closed). Each region is checked against
    /// the operator's catalogue of cloud regions: one the catalogue puts in another country than
    /// `location.country` makes the cluster unverified; one no provider lists is accepted as
    /// self-declared (`status.regions`).
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 63)))]
    pub node_regions: Vec<NodeRegion>,
    /// StorageClasses whose volumes the member vouches are in its attested regions although
    /// nothing pins them to a node (network storage such as NFS or Ceph in the same data
    /// centre). Their volumes count as inside, marked as vouched (self-declared) in the
    /// workloads' evidence and in `report`; a volume whose node affinity reaches outside is
    /// outside all the same. Without this, such volumes are `unverifiable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub vouched_storage_classes: Vec<String>,
}

/// A node region label value.
pub type NodeRegion = String;

/// How to reach a member. Set exactly one of `local` and `kubeconfigSecretRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.local) != has(self.kubeconfigSecretRef)").message("set exactly one of connection.local and connection.kubeconfigSecretRef"))]
pub struct Connection {
    /// The cluster the operator itself runs in (its in-cluster or given credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalConnection>,
    /// A Secret in the operator's namespace that holds a kubeconfig for the member.
    /// Kubeconfigs with exec plugins or insecure TLS are refused unless the operator allows them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig_secret_ref: Option<SecretKeyRef>,
}

/// Marker for the operator's own cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct LocalConnection {}

/// A key of a Secret in the operator's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret that holds the kubeconfig (default `kubeconfig`).
    #[serde(default = "default_kubeconfig_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".to_string()
}

/// What the operator observed on the member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (reachable and authenticated) and `LocationVerified` (every node in an attested
    /// region).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The resourceVersion of the kubeconfig Secret the last probe connected with (`join
    /// --rotate` waits for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_version: Option<String>,
    /// The member's Kubernetes version (`/version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// The distinct node region labels seen, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed_node_regions: Vec<String>,
    /// Number of nodes seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_count: Option<i32>,
    /// Nodes outside the attested regions, or whose provider ID contradicts their labels (at
    /// most 20 names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverified_nodes: Vec<String>,
    /// What the region catalogue says of each attested region: the provider and place that
    /// put it in the declared country, in another one, or none (self-declared).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub regions: Vec<AttestedRegion>,
    /// What the member holds, from the operator's watches of it: every object labelled with a
    /// country (`country.residency.io/<CODE>=true`), whoever made it. Readable with access to
    /// the management cluster only; `report` reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// What the member's admission policies refuse and warn about, as last written there
    /// (condition `PreventionEnforced` says whether they are in force).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prevention: Option<PreventionStatus>,
}

/// One attested region, as the region catalogue knows it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttestedRegion {
    /// The region, e.g. `eu-central-2`.
    pub name: String,
    /// `Catalogue` (a cloud provider lists it), `SelfDeclared` (none does: a private region, on
    /// the member's own word) or `NotListed` (the nodes' own provider has no such region).
    pub source: RegionSource,
    /// Providers that list it, with where: `aws: Zurich, CH` (several when the name is shared).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listed_by: Vec<String>,
    /// The country the catalogue puts it in (absent when self-declared). When it is not the
    /// declared `location.country`, the cluster is not verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// Where an attested region's location comes from.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionSource {
    /// The operator's region catalogue lists it.
    Catalogue,
    /// No provider lists it: the member's own word.
    SelfDeclared,
    /// The member's nodes are at a cloud provider (their provider IDs say) that has no region of
    /// that name: the cluster is not verified.
    NotListed,
}

/// The countries a member's API server refuses or warns about.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PreventionStatus {
    /// Countries whose new data the member's API server refuses (Enforce policies forbid the
    /// member), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 250))]
    pub refused: Vec<String>,
    /// Countries whose new data it accepts with a warning (only Audit policies forbid the
    /// member), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 250))]
    pub warned: Vec<String>,
}

/// The objects a member holds that are labelled with a country.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Objects labelled with a country.
    pub objects: i32,
    /// Of them, PersistentVolumeClaims and PersistentVolumes.
    pub volumes: i32,
    /// Of them, volumes labelled `residency.io/retained=true`.
    pub retained: i32,
    /// The countries whose data the objects declare, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 250))]
    pub countries: Vec<String>,
    /// Objects no ResidentWorkload's record accounts for (made by hand, labelled for a workload
    /// that does not exist or has no copy here, or left by a deleted workload), sorted, at most
    /// 50; `unrecordedCount` has the total.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub unrecorded: Vec<InventoryObject>,
    /// Number of objects no workload's record accounts for.
    #[serde(default)]
    pub unrecorded_count: i32,
    /// Per country its labels declare: how many objects hold its data and how many of them no
    /// workload's record accounts for (complete, past the 50 listed in `unrecorded`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 250))]
    pub by_country: Vec<CountryCopies>,
}

/// The copies of one country's data on a member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CountryCopies {
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Objects labelled with it.
    pub objects: i32,
    /// Of them, objects no workload's record accounts for.
    pub unrecorded: i32,
}

/// One object of a member's inventory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InventoryObject {
    /// Its kind, e.g. `PersistentVolumeClaim`.
    pub kind: String,
    /// Its namespace (absent when cluster-scoped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The countries its labels declare, sorted.
    pub countries: Vec<String>,
    /// `namespace/name` of the ResidentWorkload its labels name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Whether it is a retained volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retained: bool,
}
