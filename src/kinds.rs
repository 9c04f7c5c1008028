//! The one list of kind rules (pure): which kinds a workload may place, how the operator judges
//! their readiness, in which order they are applied, and where the well-known ones are served.
//!
//! **Any namespaced kind a member serves may be placed** - its own custom resources included -
//! except:
//!
//! - cluster-scoped kinds (the well-known ones are refused up front; any other is refused on the
//!   member whose discovery says it is cluster-scoped): a workload author must not change a
//!   member beyond the workload's namespace;
//! - the kinds of [`DENIED`], each with its reason: objects that act on other workloads of the
//!   namespace (quotas, endpoints), that controllers or the API server write (events, bindings,
//!   controller revisions), requests that are not stored objects (reviews);
//! - Secrets of type `kubernetes.io/service-account-token` (one would mint a token of a
//!   ServiceAccount of the namespace);
//! - RBAC, except Roles and RoleBindings that cannot escalate (see [`rbac_refusal`]): a Role may
//!   not use wildcards, the verbs `escalate`, `bind` or `impersonate`, or name RBAC resources,
//!   and a RoleBinding may only bind a Role of the same workload to ServiceAccounts of the
//!   workload's namespace. Such a Role grants API access to objects of the namespace only, which
//!   the workload's Pods reach anyway (they can mount its Secrets and ConfigMaps by name); it
//!   cannot grant itself more later, and nobody outside the namespace gains anything. Bindings of
//!   ClusterRoles (`admin`, `edit`, ...) are refused: they bring rules the workload does not show.
//!
//! The same rules serve the CRD's validation ([`cel_rules`]: the kind-level ones), the
//! operator's checks before it writes ([`refusal`], [`rbac_refusal`]) and `plan`. What a Role or
//! RoleBinding says is checked by the operator (and `plan`) only, not by the CRD: such a
//! workload is `Stalled=True, reason=InvalidSpec` and nothing of it is applied.

use serde_json::Value;

/// How the operator judges an object's readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// Deployment: available, all replicas updated.
    Deployment,
    /// StatefulSet: all replicas ready and current.
    StatefulSet,
    /// DaemonSet: every scheduled Pod ready and updated.
    DaemonSet,
    /// PersistentVolumeClaim: Bound.
    Claim,
    /// Job: Complete.
    Job,
    /// Pod: Running and Ready, or Succeeded.
    Pod,
    /// Any other kind: the Kubernetes status conventions (kstatus): `observedGeneration`, then
    /// the `Ready` or `Available` condition, `Stalled`/`Reconciling`; ready when it exists and
    /// reports nothing.
    Conventions,
}

/// A kind the operator knows without asking a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    /// API group ("" for core).
    pub group: &'static str,
    /// The version placed.
    pub version: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Resource (plural).
    pub plural: &'static str,
    /// Whether it is namespaced.
    pub namespaced: bool,
}

impl Known {
    /// `apiVersion` (`v1`, `apps/v1`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn ns(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Known {
    Known {
        group,
        version,
        kind,
        plural,
        namespaced: true,
    }
}

const fn cluster(
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
) -> Known {
    Known {
        group,
        version,
        kind,
        plural,
        namespaced: false,
    }
}

/// The built-in namespaced kinds workloads place most, in apply order: the member's inventory
/// watches them (hand-labelled objects of these kinds are found even if no workload placed one),
/// and they resolve without discovery. Other kinds are applied after them.
pub const PLACEABLE: &[Known] = &[
    ns("", "v1", "ServiceAccount", "serviceaccounts"),
    ns("", "v1", "Secret", "secrets"),
    ns("", "v1", "ConfigMap", "configmaps"),
    ns("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ns("", "v1", "Service", "services"),
    ns(
        "networking.k8s.io",
        "v1",
        "NetworkPolicy",
        "networkpolicies",
    ),
    ns(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
    ),
    ns("rbac.authorization.k8s.io", "v1", "Role", "roles"),
    ns(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
    ),
    ns("apps", "v1", "Deployment", "deployments"),
    ns("apps", "v1", "StatefulSet", "statefulsets"),
    ns("apps", "v1", "DaemonSet", "daemonsets"),
    ns("batch", "v1", "Job", "jobs"),
    ns("batch", "v1", "CronJob", "cronjobs"),
    ns("", "v1", "Pod", "pods"),
    ns(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
    ),
    ns("networking.k8s.io", "v1", "Ingress", "ingresses"),
];

/// Well-known cluster-scoped kinds, refused before anything reaches a member.
pub const CLUSTER_SCOPED: &[Known] = &[
    cluster("", "v1", "Namespace", "namespaces"),
    cluster("", "v1", "Node", "nodes"),
    cluster("", "v1", "PersistentVolume", "persistentvolumes"),
    cluster("", "v1", "ComponentStatus", "componentstatuses"),
    cluster(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
    ),
    cluster(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
    ),
    cluster(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    ),
    cluster("apiregistration.k8s.io", "v1", "APIService", "apiservices"),
    cluster(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "v1",
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "v1",
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "v1beta1",
        "MutatingAdmissionPolicy",
        "mutatingadmissionpolicies",
    ),
    cluster(
        "admissionregistration.k8s.io",
        "v1beta1",
        "MutatingAdmissionPolicyBinding",
        "mutatingadmissionpolicybindings",
    ),
    cluster("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
    cluster("storage.k8s.io", "v1", "CSIDriver", "csidrivers"),
    cluster("storage.k8s.io", "v1", "CSINode", "csinodes"),
    cluster(
        "storage.k8s.io",
        "v1",
        "VolumeAttachment",
        "volumeattachments",
    ),
    cluster(
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
    ),
    cluster("node.k8s.io", "v1", "RuntimeClass", "runtimeclasses"),
    cluster("networking.k8s.io", "v1", "IngressClass", "ingressclasses"),
    cluster(
        "certificates.k8s.io",
        "v1",
        "CertificateSigningRequest",
        "certificatesigningrequests",
    ),
    cluster(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "FlowSchema",
        "flowschemas",
    ),
    cluster(
        "flowcontrol.apiserver.k8s.io",
        "v1",
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
    ),
];

/// Namespaced kinds that are refused, by group and kind, with the reason.
pub const DENIED: &[(&str, &str, &str)] = &[
    ("", "Binding", "it binds Pods to nodes past the scheduler"),
    ("", "Event", "Events are written by controllers, not placed"),
    (
        "events.k8s.io",
        "Event",
        "Events are written by controllers, not placed",
    ),
    (
        "apps",
        "ControllerRevision",
        "controller revisions are written by their controllers",
    ),
    (
        "",
        "ResourceQuota",
        "a quota binds every workload of the namespace (and the operator's data movers)",
    ),
    (
        "",
        "LimitRange",
        "a limit range binds every workload of the namespace (and the operator's data movers)",
    ),
    (
        "",
        "Endpoints",
        "endpoints can attach to another workload's Service and take its traffic",
    ),
    (
        "discovery.k8s.io",
        "EndpointSlice",
        "endpoint slices can attach to another workload's Service and take its traffic",
    ),
    (
        "authorization.k8s.io",
        "LocalSubjectAccessReview",
        "a review is a request, not an object to place",
    ),
];

/// The group of an `apiVersion` ("" for `v1`).
pub fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map(|(g, _)| g).unwrap_or("")
}

/// The well-known namespaced kind of `apiVersion`/`kind`, if it is one (the version must match).
pub fn placeable(api_version: &str, kind: &str) -> Option<&'static Known> {
    PLACEABLE
        .iter()
        .find(|k| k.kind == kind && k.api_version() == api_version)
}

/// Why `apiVersion`/`kind` (the object `object`) may never be placed, whatever the member
/// serves; `None` when it may be (a member may still not serve it, or serve it cluster-scoped).
/// RBAC kinds are judged with the whole workload by [`rbac_refusal`].
pub fn refusal(api_version: &str, kind: &str, object: &Value) -> Option<String> {
    let group = group_of(api_version);
    if CLUSTER_SCOPED
        .iter()
        .any(|k| k.group == group && k.kind == kind)
    {
        return Some(format!(
            "{kind} ({api_version}) is cluster-scoped: a workload places namespaced objects only"
        ));
    }
    if let Some((_, _, why)) = DENIED.iter().find(|(g, k, _)| *g == group && *k == kind) {
        return Some(format!("{kind} ({api_version}) cannot be placed: {why}"));
    }
    if group.is_empty()
        && kind == "Secret"
        && object.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token")
    {
        return Some(
            "a Secret of type kubernetes.io/service-account-token cannot be placed: it would mint a token of a ServiceAccount of the namespace"
                .into(),
        );
    }
    None
}

const RBAC: &str = "rbac.authorization.k8s.io";
const RBAC_VERBS: &[&str] = &["escalate", "bind", "impersonate"];
const RBAC_RESOURCES: &[&str] = &[
    "roles",
    "rolebindings",
    "clusterroles",
    "clusterrolebindings",
];

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Why an RBAC manifest of a workload is refused, or `None` when it cannot escalate: a Role
/// without wildcards, without the verbs `escalate`, `bind` and `impersonate` and without RBAC
/// resources; a RoleBinding of a Role among `manifests` to ServiceAccounts of the workload's
/// namespace (no namespace given). Other kinds: `None`.
pub fn rbac_refusal(manifest: &Value, manifests: &[&Value]) -> Option<String> {
    let api_version = manifest
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = manifest.get("kind").and_then(Value::as_str).unwrap_or("");
    if group_of(api_version) != RBAC {
        return None;
    }
    match kind {
        "Role" => {
            let rules = manifest
                .get("rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (i, rule) in rules.iter().enumerate() {
                let (groups, resources, verbs) = (
                    strings(rule, "apiGroups"),
                    strings(rule, "resources"),
                    strings(rule, "verbs"),
                );
                if groups
                    .iter()
                    .chain(&resources)
                    .chain(&verbs)
                    .any(|s| s.contains('*'))
                {
                    return Some(format!(
                        "Role rule {i} uses a wildcard: name the API groups, resources and verbs"
                    ));
                }
                if let Some(v) = verbs.iter().find(|v| RBAC_VERBS.contains(v)) {
                    return Some(format!(
                        "Role rule {i} grants '{v}', which could widen access"
                    ));
                }
                if !strings(rule, "nonResourceURLs").is_empty() {
                    return Some(format!(
                        "Role rule {i} names nonResourceURLs, which only ClusterRoles grant"
                    ));
                }
                if let Some(r) = resources
                    .iter()
                    .find(|r| RBAC_RESOURCES.contains(&r.split('/').next().unwrap_or(r)))
                {
                    return Some(format!(
                        "Role rule {i} grants access to {r}: RBAC is managed by the platform team"
                    ));
                }
            }
            None
        }
        "RoleBinding" => {
            let role_ref = manifest.get("roleRef").cloned().unwrap_or_default();
            let ref_kind = role_ref.get("kind").and_then(Value::as_str).unwrap_or("");
            let ref_name = role_ref.get("name").and_then(Value::as_str).unwrap_or("");
            if ref_kind != "Role" {
                return Some(format!(
                    "RoleBinding binds the {ref_kind} {ref_name}: only a Role of the same workload may be bound"
                ));
            }
            let ours = manifests.iter().any(|m| {
                m.get("kind").and_then(Value::as_str) == Some("Role")
                    && group_of(m.get("apiVersion").and_then(Value::as_str).unwrap_or("")) == RBAC
                    && m.pointer("/metadata/name").and_then(Value::as_str) == Some(ref_name)
            });
            if !ours {
                return Some(format!(
                    "RoleBinding binds Role {ref_name}, which is not a manifest of this workload"
                ));
            }
            let subjects = manifest
                .get("subjects")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for s in &subjects {
                let sk = s.get("kind").and_then(Value::as_str).unwrap_or("");
                let sn = s.get("name").and_then(Value::as_str).unwrap_or("");
                if sk != "ServiceAccount" {
                    return Some(format!(
                        "RoleBinding binds the {sk} {sn}: only ServiceAccounts of the workload's namespace may be bound"
                    ));
                }
                if s.get("namespace").is_some_and(|n| !n.is_null()) {
                    return Some(format!(
                        "RoleBinding names a namespace for ServiceAccount {sn}: omit it, only the workload's namespace may be bound"
                    ));
                }
            }
            None
        }
        _ => Some(format!(
            "{kind} ({api_version}) cannot be placed: of RBAC, only Roles and RoleBindings of the workload's own Roles may be placed"
        )),
    }
}

/// How `kind` is judged ready (`group` is its API group).
pub fn readiness(group: &str, kind: &str) -> Readiness {
    match (group, kind) {
        ("apps", "Deployment") => Readiness::Deployment,
        ("apps", "StatefulSet") => Readiness::StatefulSet,
        ("apps", "DaemonSet") => Readiness::DaemonSet,
        ("", "PersistentVolumeClaim") => Readiness::Claim,
        ("batch", "Job") => Readiness::Job,
        ("", "Pod") => Readiness::Pod,
        _ => Readiness::Conventions,
    }
}

/// Position of `kind` in the apply order: [`PLACEABLE`]'s order, other kinds after them
/// (deletion uses the reverse).
pub fn apply_rank(kind: &str) -> usize {
    PLACEABLE
        .iter()
        .position(|k| k.kind == kind)
        .unwrap_or(PLACEABLE.len())
}

/// Kinds whose Pods come from a template at `spec.template` (or `spec.jobTemplate.spec.template`
/// for a CronJob): the operator asks the member whether it admits such Pods (Pod Security).
pub fn pod_template_pointer(group: &str, kind: &str) -> Option<&'static str> {
    match (group, kind) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            Some("/spec/template")
        }
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        ("", "ReplicationController") => Some("/spec/template"),
        _ => None,
    }
}

fn cel_string_list(items: impl Iterator<Item = String>) -> String {
    format!(
        "[{}]",
        items
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The CRD validation rules of one manifest (`self` is the manifest), with their messages: the
/// same refusals as [`refusal`], and the RBAC kinds other than Role and RoleBinding. The Role
/// and RoleBinding rules need the whole list: [`cel_list_rules`].
pub fn cel_rules() -> Vec<(String, String)> {
    // group/kind, computed in CEL
    let gk =
        "((self.apiVersion.contains('/') ? self.apiVersion.split('/')[0] : '') + '/' + self.kind)";
    let cluster_scoped = cel_string_list(
        CLUSTER_SCOPED
            .iter()
            .map(|k| format!("{}/{}", k.group, k.kind)),
    );
    let denied = cel_string_list(DENIED.iter().map(|(g, k, _)| format!("{g}/{k}")));
    vec![
        (
            format!("!({gk} in {cluster_scoped})"),
            "self.kind + ' (' + self.apiVersion + ') is cluster-scoped: a workload places namespaced objects only'".into(),
        ),
        (
            format!("!({gk} in {denied})"),
            "self.kind + ' (' + self.apiVersion + ') cannot be placed: quotas, limit ranges, endpoints, events, bindings, controller revisions and reviews are refused (see the operator documentation)'".into(),
        ),
        (
            format!("!({gk} in ['{RBAC}/ClusterRole', '{RBAC}/ClusterRoleBinding']) && (!self.apiVersion.startsWith('{RBAC}/') || self.kind in ['Role', 'RoleBinding'])"),
            "self.kind + ' (' + self.apiVersion + ') cannot be placed: of RBAC, only Roles and RoleBindings of the workload\\'s own Roles may be placed'".into(),
        ),
        (
            "self.kind != 'Secret' || self.apiVersion != 'v1' || !has(self.type) || self.type != 'kubernetes.io/service-account-token'".into(),
            "'a Secret of type kubernetes.io/service-account-token cannot be placed: it would mint a token of a ServiceAccount of the namespace'".into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_scoped_denied_and_token_secrets_are_refused_other_kinds_pass() {
        let any = json!({});
        assert!(
            refusal("v1", "Namespace", &any)
                .unwrap()
                .contains("cluster-scoped")
        );
        assert!(refusal("apiextensions.k8s.io/v1", "CustomResourceDefinition", &any).is_some());
        assert!(
            refusal("v1", "ResourceQuota", &any)
                .unwrap()
                .contains("quota")
        );
        assert!(refusal("discovery.k8s.io/v1", "EndpointSlice", &any).is_some());
        let token = json!({"type": "kubernetes.io/service-account-token"});
        assert!(
            refusal("v1", "Secret", &token)
                .unwrap()
                .contains("mint a token")
        );
        assert_eq!(refusal("v1", "Secret", &json!({"type": "Opaque"})), None);
        // users' own kinds, and built-ins not listed
        assert_eq!(refusal("example.com/v1", "Widget", &any), None);
        assert_eq!(refusal("postgresql.cnpg.io/v1", "Cluster", &any), None);
        assert_eq!(refusal("v1", "ReplicationController", &any), None);
        // a kind of the same name in another group is not the denied one
        assert_eq!(refusal("example.com/v1", "Namespace", &any), None);
    }

    #[test]
    fn roles_and_bindings_that_cannot_escalate_pass() {
        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]});
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "app"}]});
        let all = [&role, &binding];
        assert_eq!(rbac_refusal(&role, &all), None);
        assert_eq!(rbac_refusal(&binding, &all), None);
        assert_eq!(
            rbac_refusal(&json!({"apiVersion": "v1", "kind": "ConfigMap"}), &all),
            None
        );

        let with = |patch: Value| {
            let mut r = role.clone();
            r["rules"][0] = patch;
            rbac_refusal(&r, &all).unwrap()
        };
        assert!(
            with(json!({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}))
                .contains("wildcard")
        );
        assert!(
            with(json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}))
                .contains("wildcard")
        );
        assert!(
            with(json!({"apiGroups": [RBAC], "resources": ["roles"], "verbs": ["escalate"]}))
                .contains("escalate")
        );
        assert!(
            with(json!({"apiGroups": [RBAC], "resources": ["rolebindings"], "verbs": ["create"]}))
                .contains("rolebindings")
        );
        assert!(with(json!({"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["impersonate"]})).contains("impersonate"));

        let bind = |patch: Value| {
            let mut b = binding.clone();
            b.as_object_mut()
                .unwrap()
                .extend(patch.as_object().unwrap().clone());
            rbac_refusal(&b, &all).unwrap()
        };
        assert!(
            bind(json!({"roleRef": {"kind": "ClusterRole", "name": "admin"}}))
                .contains("ClusterRole admin")
        );
        assert!(
            bind(json!({"roleRef": {"kind": "Role", "name": "elsewhere"}}))
                .contains("not a manifest of this workload")
        );
        assert!(
            bind(json!({"subjects": [{"kind": "User", "name": "mallory"}]}))
                .contains("User mallory")
        );
        assert!(bind(json!({"subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "kube-system"}]})).contains("omit it"));
        let cluster_role =
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole"});
        assert!(rbac_refusal(&cluster_role, &all).is_some());
    }

    #[test]
    fn one_list_serves_readiness_order_and_resolution() {
        assert_eq!(readiness("apps", "Deployment"), Readiness::Deployment);
        assert_eq!(
            readiness("example.com", "Deployment"),
            Readiness::Conventions
        );
        assert_eq!(readiness("example.com", "Widget"), Readiness::Conventions);
        assert!(apply_rank("ConfigMap") < apply_rank("Deployment"));
        assert!(apply_rank("Deployment") < apply_rank("Widget"));
        assert_eq!(
            placeable("apps/v1", "Deployment").unwrap().plural,
            "deployments"
        );
        assert_eq!(placeable("apps/v1beta1", "Deployment"), None);
        for k in PLACEABLE.iter().chain(CLUSTER_SCOPED) {
            assert!(
                !k.plural.is_empty() && k.plural == k.plural.to_lowercase(),
                "{k:?}"
            );
        }
        assert!(
            PLACEABLE
                .iter()
                .all(|k| k.namespaced && refusal(&k.api_version(), k.kind, &json!({})).is_none())
        );
        assert!(CLUSTER_SCOPED.iter().all(|k| !k.namespaced));
    }
}
