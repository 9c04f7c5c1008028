//! The residency API (`residency.io/v1alpha1`): CRD types, country codes, conditions and the
//! client-side validation shared by the API server (as CEL) and the offline `plan` command.

pub mod conditions;
pub mod country;
pub mod data_move;
pub mod member_cluster;
pub mod reference;
pub mod residency_policy;
pub mod resident_workload;
pub mod validate;

pub use country::CountryCode;
pub use data_move::{DataMove, DataMoveSpec, DataMoveStatus};
pub use member_cluster::{MemberCluster, MemberClusterSpec, MemberClusterStatus};
pub use residency_policy::{ResidencyPolicy, ResidencyPolicySpec, ResidencyPolicyStatus};
pub use resident_workload::{ResidentWorkload, ResidentWorkloadSpec, ResidentWorkloadStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every kind.
pub const GROUP: &str = "residency.io";
/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "residency-operator";
/// Field manager of the creates of placed objects, until their first apply takes their fields
/// over ([`crate::managed_fields`]). Not [`FIELD_MANAGER`]: the operator's other writes (a
/// data move's fence, a retained label) are recorded under that name too, and stay theirs.
pub const CREATE_MANAGER: &str = "residency-operator-create";
/// Finalizer on ResidentWorkloads.
pub const FINALIZER: &str = "residency.io/cleanup";

/// Labels the operator puts on what it places (DESIGN.md section 7).
pub mod labels {
    /// `app.kubernetes.io/managed-by`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "residency-operator";
    /// Name of the owning ResidentWorkload.
    pub const WORKLOAD: &str = "residency.io/workload";
    /// Namespace of the owning ResidentWorkload.
    pub const WORKLOAD_NAMESPACE: &str = "residency.io/workload-namespace";
    /// On volumes left behind on a member the workload left.
    pub const RETAINED: &str = "residency.io/retained";
    /// Prefix of the per-country label: `country.residency.io/AU=true`.
    pub const COUNTRY_PREFIX: &str = "country.residency.io/";

    /// The label key declaring that an object holds `country`'s data.
    pub fn country(code: &str) -> String {
        format!("{COUNTRY_PREFIX}{code}")
    }
}

/// Every CRD of the API, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        MemberCluster::crd(),
        ResidencyPolicy::crd(),
        ResidentWorkload::crd(),
        DataMove::crd(),
    ]
}
