//! Client-side validation: the same rules the CRD schemas and their CEL rules enforce at the API
//! server, with messages that name the field. `plan` runs these before deciding anything; the
//! controller runs them too, so an object that slipped past an older schema is refused with a
//! condition instead of being acted on.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::member_cluster::MemberClusterSpec;
use super::residency_policy::ResidencyPolicySpec;
use super::resident_workload::ResidentWorkloadSpec;
use super::{MemberCluster, ResidencyPolicy, ResidentWorkload};

/// One problem with an object: where (a field path such as `spec.manifests[1].kind`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Field path from the object root.
    pub path: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn len_between<T>(&mut self, path: &str, items: &[T], min: usize, max: usize) {
        if items.len() < min {
            self.add(path, format!("must have at least {min} item(s)"));
        }
        if items.len() > max {
            self.add(
                path,
                format!("must have at most {max} items, has {}", items.len()),
            );
        }
    }

    fn unique<T: Ord + fmt::Display>(&mut self, path: &str, items: &[T]) {
        let mut seen = BTreeSet::new();
        for (i, item) in items.iter().enumerate() {
            if !seen.insert(item) {
                self.add(format!("{path}[{i}]"), format!("duplicate value {item}"));
            }
        }
    }

    fn finish(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

/// A lower-case DNS label: what regions look like (`zurich`, `eu-central-2`).
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A DNS subdomain (object names).
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label value (node region labels).
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() <= 63
        && (b.is_empty()
            || (b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))))
}

fn check_name(e: &mut Errors, name: Option<&str>) {
    match name {
        None | Some("") => e.add("metadata.name", "is required"),
        Some(n) if !is_dns_subdomain(n) => e.add(
            "metadata.name",
            format!("'{n}' is not a valid name: use lower-case letters, digits, '-' and '.'"),
        ),
        _ => {}
    }
}

fn check_region(e: &mut Errors, path: &str, region: &str) {
    if !is_dns_label(region) {
        e.add(
            path,
            format!("'{region}' is not a valid region: use lower-case letters, digits and '-' (e.g. zurich)"),
        );
    }
}

fn check_selector(e: &mut Errors, path: &str, sel: &LabelSelector) {
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => e.add(
                format!("{p}.values"),
                format!("operator {} needs at least one value", req.operator),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => e.add(
                format!("{p}.values"),
                format!("operator {} takes no values", req.operator),
            ),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => e.add(
                format!("{p}.operator"),
                format!("'{other}' is not an operator: use In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

/// Validates a MemberCluster.
pub fn member_cluster(mc: &MemberCluster) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    check_name(&mut e, mc.metadata.name.as_deref());
    member_cluster_spec(&mut e, &mc.spec);
    e.finish()
}

fn member_cluster_spec(e: &mut Errors, spec: &MemberClusterSpec) {
    check_region(e, "spec.location.region", &spec.location.region);
    let regions = &spec.attestation.node_regions;
    e.len_between("spec.attestation.nodeRegions", regions, 1, 16);
    for (i, r) in regions.iter().enumerate() {
        if r.is_empty() || !is_label_value(r) {
            e.add(
                format!("spec.attestation.nodeRegions[{i}]"),
                format!("'{r}' is not a valid topology.kubernetes.io/region label value"),
            );
        }
    }
    let c = &spec.connection;
    if c.local.is_some() == c.kubeconfig_secret_ref.is_some() {
        e.add(
            "spec.connection",
            "set exactly one of connection.local and connection.kubeconfigSecretRef",
        );
    }
    if let Some(r) = &c.kubeconfig_secret_ref {
        if !is_dns_subdomain(&r.name) {
            e.add(
                "spec.connection.kubeconfigSecretRef.name",
                format!("'{}' is not a valid Secret name", r.name),
            );
        }
        if r.key.is_empty() {
            e.add(
                "spec.connection.kubeconfigSecretRef.key",
                "must not be empty",
            );
        }
    }
    if let Some(sc) = &spec.storage_class_name
        && !is_dns_subdomain(sc)
    {
        e.add(
            "spec.storageClassName",
            format!("'{sc}' is not a valid StorageClass name"),
        );
    }
}

/// Validates a ResidencyPolicy.
pub fn residency_policy(rp: &ResidencyPolicy) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    check_name(&mut e, rp.metadata.name.as_deref());
    residency_policy_spec(&mut e, &rp.spec);
    e.finish()
}

fn residency_policy_spec(e: &mut Errors, spec: &ResidencyPolicySpec) {
    e.len_between("spec.countries", &spec.countries, 1, 250);
    e.unique("spec.countries", &spec.countries);
    if spec.allowed_locations.len() > 64 {
        e.add("spec.allowedLocations", "must have at most 64 items");
    }
    for (i, loc) in spec.allowed_locations.iter().enumerate() {
        if let Some(region) = &loc.region {
            check_region(e, &format!("spec.allowedLocations[{i}].region"), region);
        }
    }
    if spec.allowed_locations.is_empty() && spec.cluster_selector.is_none() {
        e.add(
            "spec",
            "set allowedLocations, clusterSelector or both: a policy must say where its countries' data may live",
        );
    }
    if let Some(sel) = &spec.cluster_selector {
        check_selector(e, "spec.clusterSelector", sel);
    }
}

/// Validates a ResidentWorkload.
pub fn resident_workload(rw: &ResidentWorkload) -> Result<(), Vec<FieldError>> {
    let mut e = Errors::default();
    check_name(&mut e, rw.metadata.name.as_deref());
    resident_workload_spec(&mut e, &rw.spec);
    e.finish()
}

fn resident_workload_spec(e: &mut Errors, spec: &ResidentWorkloadSpec) {
    e.len_between("spec.countries", &spec.countries, 1, 250);
    e.unique("spec.countries", &spec.countries);
    e.len_between("spec.manifests", &spec.manifests, 1, 64);
    let mut seen = BTreeSet::new();
    for (i, m) in spec.manifests.iter().enumerate() {
        let p = format!("spec.manifests[{i}]");
        if !m.0.is_object() {
            e.add(p, "must be a Kubernetes object (a mapping)");
            continue;
        }
        if m.api_version().is_empty() {
            e.add(format!("{p}.apiVersion"), "is required");
        }
        if m.kind().is_empty() {
            e.add(format!("{p}.kind"), "is required");
        }
        if m.name().is_empty() {
            e.add(
                format!("{p}.metadata.name"),
                "every manifest needs metadata.name",
            );
        } else if !is_dns_subdomain(m.name()) {
            e.add(
                format!("{p}.metadata.name"),
                format!("'{}' is not a valid object name", m.name()),
            );
        }
        if m.0.pointer("/metadata/namespace").is_some() {
            e.add(
                format!("{p}.metadata.namespace"),
                "omit metadata.namespace: manifests are placed in the ResidentWorkload's namespace on each member",
            );
        }
        if !m.api_version().is_empty() && !m.kind().is_empty() {
            let all: Vec<&serde_json::Value> = spec.manifests.iter().map(|m| &m.0).collect();
            if let Some(why) = crate::kinds::refusal(m.api_version(), m.kind(), &m.0)
                .or_else(|| crate::kinds::rbac_refusal(&m.0, &all))
            {
                e.add(format!("{p}.kind"), why);
            }
        }
        if !m.kind().is_empty()
            && !m.name().is_empty()
            && !seen.insert((m.kind().to_string(), m.name().to_string()))
        {
            e.add(
                p,
                format!(
                    "two manifests have the same kind and metadata.name ({} {})",
                    m.kind(),
                    m.name()
                ),
            );
        }
    }
    for (i, s) in spec.secrets.iter().enumerate() {
        let p = format!("spec.secrets[{i}]");
        for (field, value) in [("name", &s.name), ("fromSecret", &s.from_secret)] {
            if !is_dns_subdomain(value) {
                e.add(
                    format!("{p}.{field}"),
                    format!("'{value}' is not a valid Secret name"),
                );
            }
        }
        if !seen.insert(("Secret".to_string(), s.name.clone())) {
            e.add(
                format!("{p}.name"),
                format!(
                    "Secret {} is declared twice (in spec.manifests or spec.secrets)",
                    s.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::member_cluster::*;
    use crate::api::residency_policy::*;
    use crate::api::resident_workload::*;
    use crate::api::{CountryCode, ResidentWorkloadSpec};
    use serde_json::json;

    fn cc(s: &str) -> CountryCode {
        CountryCode::parse(s).unwrap()
    }

    fn cluster(connection: Connection) -> MemberCluster {
        MemberCluster::new(
            "zrh-1",
            MemberClusterSpec {
                location: Location {
                    country: cc("CH"),
                    region: "zurich".into(),
                    site: None,
                },
                attestation: Attestation {
                    node_regions: vec!["eu-central-2".into()],
                    vouched_storage_classes: Vec::new(),
                },
                connection,
                storage_class_name: None,
                schedulable: true,
                prevention: Default::default(),
                pod_security: Default::default(),
            },
        )
    }

    fn paths(r: Result<(), Vec<FieldError>>) -> Vec<String> {
        r.err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.path)
            .collect()
    }

    #[test]
    fn cluster_needs_exactly_one_connection() {
        let local = Connection {
            local: Some(LocalConnection {}),
            kubeconfig_secret_ref: None,
        };
        assert!(member_cluster(&cluster(local)).is_ok());
        assert_eq!(
            paths(member_cluster(&cluster(Connection::default()))),
            ["spec.connection"]
        );
        let both = Connection {
            local: Some(LocalConnection {}),
            kubeconfig_secret_ref: Some(SecretKeyRef {
                name: "zrh-1".into(),
                key: "kubeconfig".into(),
            }),
        };
        assert_eq!(paths(member_cluster(&cluster(both))), ["spec.connection"]);
    }

    #[test]
    fn cluster_region_and_node_regions_are_checked() {
        let mut mc = cluster(Connection {
            local: Some(LocalConnection {}),
            kubeconfig_secret_ref: None,
        });
        mc.spec.location.region = "Zurich".into();
        mc.spec.attestation.node_regions = vec![];
        assert_eq!(
            paths(member_cluster(&mc)),
            ["spec.location.region", "spec.attestation.nodeRegions"]
        );
    }

    fn policy() -> ResidencyPolicy {
        ResidencyPolicy::new(
            "apac-to-zurich",
            ResidencyPolicySpec {
                countries: vec![cc("AU"), cc("NZ")],
                allowed_locations: vec![AllowedLocation {
                    country: cc("CH"),
                    region: Some("zurich".into()),
                }],
                cluster_selector: None,
                enforcement: Enforcement::Enforce,
            },
        )
    }

    #[test]
    fn policy_rules() {
        assert!(residency_policy(&policy()).is_ok());
        let mut p = policy();
        p.spec.allowed_locations.clear();
        assert_eq!(paths(residency_policy(&p)), ["spec"]);
        let mut p = policy();
        p.spec.countries = vec![cc("AU"), cc("AU")];
        assert_eq!(paths(residency_policy(&p)), ["spec.countries[1]"]);
        let mut p = policy();
        p.spec.countries.clear();
        assert_eq!(paths(residency_policy(&p)), ["spec.countries"]);
    }

    fn workload(manifests: Vec<serde_json::Value>) -> ResidentWorkload {
        let mut rw = ResidentWorkload::new(
            "threat-store",
            ResidentWorkloadSpec {
                countries: vec![cc("AU")],
                role: Role::Storage,
                manifests: manifests.into_iter().map(Manifest).collect(),
                volume_policy: VolumePolicy::Retain,
                drift: None,
                secrets: Vec::new(),
                adopt_existing: false,
                data_migration: None,
            },
        );
        rw.metadata.namespace = Some("threat-data".into());
        rw
    }

    #[test]
    fn secret_sources_must_not_collide_with_manifests() {
        use crate::api::resident_workload::SecretSource;
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}});
        let mut rw = workload(vec![secret]);
        rw.spec.secrets = vec![
            SecretSource {
                name: "api".into(),
                from_secret: "api-source".into(),
            },
            SecretSource {
                name: "db".into(),
                from_secret: "Not_A_Name".into(),
            },
        ];
        let errors = resident_workload(&rw).unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].contains("spec.secrets[1].fromSecret"), "{text:?}");
        assert!(text[1].contains("Secret db is declared twice"), "{text:?}");
    }

    #[test]
    fn workload_manifest_rules() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}});
        assert!(resident_workload(&workload(vec![cm.clone()])).is_ok());
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "x"}});
        let errs = resident_workload(&workload(vec![cm.clone(), role])).unwrap_err();
        assert_eq!(errs[0].path, "spec.manifests[1].kind");
        assert!(errs[0].message.contains("ClusterRole"), "{}", errs[0]);
        let ns = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "namespace": "x"}});
        assert_eq!(
            paths(resident_workload(&workload(vec![ns]))),
            ["spec.manifests[0].metadata.namespace"]
        );
        assert_eq!(
            paths(resident_workload(&workload(vec![cm.clone(), cm]))),
            ["spec.manifests[1]"]
        );
        let noname = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}});
        assert_eq!(
            paths(resident_workload(&workload(vec![noname]))),
            ["spec.manifests[0].metadata.name"]
        );
        assert_eq!(
            paths(resident_workload(&workload(vec![]))),
            ["spec.manifests"]
        );
    }

    #[test]
    fn name_shapes() {
        assert!(is_dns_label("eu-central-2"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("zrh-1.example"));
        assert!(!is_dns_subdomain("ZRH"));
        assert!(is_label_value("europe_west6.a"));
        assert!(!is_label_value("a b"));
    }
}
