//! What the operator may do on a member, as code (pure): every permission its identity there
//! needs, with the reason, the RBAC objects `join` creates from them, the guard admission
//! policy that keeps its bindings inside the workloads' namespaces, and the check of a
//! SelfSubjectRulesReview against the needs (what the probe reports as `Ready=False,
//! reason=Forbidden`).
//!
//! The design (least privilege, no `*`):
//!
//! - **Cluster-wide, read**: nodes, PersistentVolumes, StorageClasses (location attestation and
//!   evidence); the metadata of every object of the placeable kinds (the inventory finds data of
//!   a country anywhere on the member, and drift). RBAC cannot grant "metadata only": a
//!   list/watch permission is a read permission; the operator's code reads metadata only, and
//!   whole objects only of those it placed itself (the readiness of its Deployments,
//!   StatefulSets, DaemonSets and Jobs, selected by its `managed-by` label).
//! - **Secrets** are the exception: a list/watch permission on Secrets reads every Secret of
//!   the member. By default the identity gets none cluster-wide, and the operator inventories
//!   Secrets only in the workloads' namespaces (where it may read them anyway). `join
//!   --inventory-secrets` grants the cluster-wide list/watch, when the platform team wants a
//!   country-labelled Secret found anywhere, at that price.
//! - **Writes only in the workloads' namespaces**: the identity may create namespaces and bind
//!   itself, in a namespace, to the ClusterRole [`WORKLOAD_ROLE`] (RBAC `bind` on that one
//!   ClusterRole only) that holds the write permissions on the placeable kinds. The guard
//!   ValidatingAdmissionPolicy [`GUARD`] (which the identity cannot change or delete) lets it
//!   bind only in namespaces labelled `app.kubernetes.io/managed-by=residency-operator` (those it
//!   created, or those a member admin opted in), and change only such namespaces. So it cannot
//!   touch `kube-system` or any other namespace it was not given.
//! - **Its admission policies**: create any, change or delete only the two it owns by name.

use std::collections::BTreeSet;

use serde_json::{Value, json};

/// The member namespace that holds the operator's ServiceAccount (and nothing of workloads).
pub const MEMBER_NAMESPACE: &str = "residency-system";
/// The operator's ServiceAccount on a member.
pub const SERVICE_ACCOUNT: &str = "residency-operator";
/// The ClusterRole (and ClusterRoleBinding) of the cluster-wide permissions.
pub const CLUSTER_ROLE: &str = "residency-operator";
/// The ClusterRole of the writes, bound by the operator itself in each workload namespace (a
/// RoleBinding named [`CLUSTER_ROLE`]).
pub const WORKLOAD_ROLE: &str = "residency-operator-workloads";
/// The Role (and RoleBinding) in [`MEMBER_NAMESPACE`] for the admission dry-run probe.
pub const PROBE_ROLE: &str = "residency-operator-probe";
/// The guard ValidatingAdmissionPolicy (and binding) `join` creates.
pub const GUARD: &str = "residency.io-member-guard";
/// Label on everything `join` creates on a member (value: the MemberCluster name).
pub const JOINED_LABEL: &str = "residency.io/joined-as";
/// Annotations of a kubeconfig Secret written by `join`: the identity's ServiceAccount
/// (`namespace/name`) and the ClusterRole it binds itself to in workload namespaces.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "residency.io/member-service-account";
/// See [`SERVICE_ACCOUNT_ANNOTATION`].
pub const WORKLOAD_ROLE_ANNOTATION: &str = "residency.io/member-workload-role";

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Cluster-wide (the ClusterRoleBinding).
    Cluster,
    /// In each workload namespace (the RoleBindings the operator makes).
    WorkloadNamespaces,
    /// In the member namespace only.
    MemberNamespace,
}

/// One permission the operator needs on a member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Need {
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource (plural, or `resource/subresource`).
    pub resource: String,
    /// Verbs.
    pub verbs: Vec<&'static str>,
    /// Only these names, when not empty.
    pub names: Vec<String>,
    /// Where.
    pub scope: Scope,
    /// Why the operator needs it.
    pub reason: &'static str,
}

/// What `join` grants beyond the fixed needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The identity: ServiceAccount namespace and name on the member.
    pub namespace: String,
    /// See `namespace`.
    pub service_account: String,
    /// Further namespaced kinds workloads place there (custom resources), as `(group,
    /// plural)`.
    pub resources: Vec<(String, String)>,
    /// Grant a cluster-wide list/watch of Secrets (inventory of Secrets in every namespace).
    pub inventory_secrets: bool,
}

impl Grant {
    /// The default identity with nothing extra.
    pub fn new() -> Self {
        Self {
            namespace: MEMBER_NAMESPACE.into(),
            service_account: SERVICE_ACCOUNT.into(),
            ..Default::default()
        }
    }

    /// The identity's user name (`system:serviceaccount:<ns>:<name>`).
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const LIST: &[&str] = &["list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

fn need(
    group: &str,
    resource: &str,
    verbs: &[&'static str],
    scope: Scope,
    reason: &'static str,
) -> Need {
    Need {
        group: group.into(),
        resource: resource.into(),
        verbs: verbs.to_vec(),
        names: vec![],
        scope,
        reason,
    }
}

fn named(mut n: Need, names: &[&str]) -> Need {
    n.names = names.iter().map(|s| s.to_string()).collect();
    n
}

/// Every permission the operator needs on a member, in the order the roles list them.
pub fn needs(grant: &Grant) -> Vec<Need> {
    use Scope::*;
    let vap = "admissionregistration.k8s.io";
    let policies = [crate::admission::ENFORCE_NAME, crate::admission::AUDIT_NAME];
    let mut out = vec![
        need(
            "",
            "namespaces",
            &["get", "create", "patch"],
            Cluster,
            "create the workloads' namespaces with their Pod Security labels (the guard policy lets it change only namespaces it manages)",
        ),
        need(
            "",
            "nodes",
            READ,
            Cluster,
            "attest the member's location from its nodes' region and zone labels and provider IDs",
        ),
        need(
            "",
            "persistentvolumes",
            READ,
            Cluster,
            "locate the workloads' volumes (node affinity) and inventory released volumes",
        ),
        need(
            "storage.k8s.io",
            "storageclasses",
            READ,
            Cluster,
            "judge volumes of vouched StorageClasses",
        ),
    ];
    let placeable = crate::kinds::PLACEABLE.iter().filter(|k| k.namespaced);
    for k in placeable.clone() {
        if k.plural == "secrets" && !grant.inventory_secrets {
            continue;
        }
        out.push(need(
            k.group,
            k.plural,
            LIST,
            Cluster,
            "inventory and drift: the metadata of every object of a placeable kind (data of a country found anywhere on the member)",
        ));
    }
    for (group, plural) in &grant.resources {
        out.push(need(
            group,
            plural,
            LIST,
            Cluster,
            "inventory and drift of a custom kind the workloads place",
        ));
    }
    out.extend([
        need(
            vap,
            "validatingadmissionpolicies",
            &["get", "list", "watch", "create"],
            Cluster,
            "prevention: create its admission policies and see them change",
        ),
        named(
            need(
                vap,
                "validatingadmissionpolicies",
                &["update", "patch", "delete"],
                Cluster,
                "prevention: keep its own two admission policies (no other)",
            ),
            &policies,
        ),
        need(
            vap,
            "validatingadmissionpolicybindings",
            &["get", "list", "watch", "create"],
            Cluster,
            "prevention: create the bindings of its admission policies",
        ),
        named(
            need(
                vap,
                "validatingadmissionpolicybindings",
                &["update", "patch", "delete"],
                Cluster,
                "prevention: keep its own two bindings (no other)",
            ),
            &policies,
        ),
        need(
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["get", "create", "patch"],
            Cluster,
            "bind itself to the workloads role in a namespace it manages (the guard policy refuses any other namespace)",
        ),
        named(
            need(
                "rbac.authorization.k8s.io",
                "clusterroles",
                &["bind"],
                Cluster,
                "bind the workloads role, and no other ClusterRole",
            ),
            &[WORKLOAD_ROLE],
        ),
        need(
            "authorization.k8s.io",
            "selfsubjectrulesreviews",
            &["create"],
            Cluster,
            "check its own permissions at every probe",
        ),
    ]);
    for k in placeable {
        out.push(need(
            k.group,
            k.plural,
            WRITE,
            WorkloadNamespaces,
            "place, correct and remove the workloads' objects, run the data movers",
        ));
    }
    for (group, plural) in &grant.resources {
        out.push(need(
            group,
            plural,
            WRITE,
            WorkloadNamespaces,
            "place, correct and remove the workloads' custom resources",
        ));
    }
    out.extend([
        need(
            "",
            "pods/log",
            &["get"],
            WorkloadNamespaces,
            "read a data mover's report",
        ),
        need(
            "",
            "configmaps",
            &["create"],
            MemberNamespace,
            "a dry-run create (never stored) shows whether its admission policies are in force",
        ),
    ]);
    out
}

/// RBAC rules of the needs of one scope: needs with the same group, verbs and names share a
/// rule (its resources sorted).
pub fn rules(needs: &[Need], scope: Scope) -> Vec<Value> {
    struct Merged<'a> {
        group: &'a str,
        verbs: &'a [&'static str],
        names: &'a [String],
        resources: BTreeSet<&'a str>,
    }
    let mut rules: Vec<Merged> = Vec::new();
    for n in needs.iter().filter(|n| n.scope == scope) {
        match rules
            .iter_mut()
            .find(|r| r.group == n.group && r.verbs == n.verbs && r.names == n.names)
        {
            Some(r) => {
                r.resources.insert(&n.resource);
            }
            None => rules.push(Merged {
                group: &n.group,
                verbs: &n.verbs,
                names: &n.names,
                resources: BTreeSet::from([n.resource.as_str()]),
            }),
        }
    }
    rules
        .into_iter()
        .map(|r| {
            let mut v = json!({"apiGroups": [r.group], "resources": r.resources, "verbs": r.verbs});
            if !r.names.is_empty() {
                v["resourceNames"] = json!(r.names);
            }
            v
        })
        .collect()
}

/// One resource rule of a SelfSubjectRulesReview.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Verbs (`*` any).
    pub verbs: Vec<String>,
    /// API groups (`*` any).
    pub groups: Vec<String>,
    /// Resources (`*` any, `*/sub`, `res/*`).
    pub resources: Vec<String>,
    /// Names (empty: any).
    pub names: Vec<String>,
}

fn covers(rule: &Rule, group: &str, resource: &str, verb: &str, names: &[String]) -> bool {
    let any = |v: &[String], x: &str| v.iter().any(|s| s == "*" || s == x);
    let resource_ok = rule.resources.iter().any(|r| {
        r == "*"
            || r == resource
            || match (r.split_once('/'), resource.split_once('/')) {
                (Some(("*", sub)), Some((_, s))) => sub == s,
                (Some((res, "*")), Some((re, _))) => res == re,
                _ => false,
            }
    });
    let names_ok = rule.names.is_empty()
        || (!names.is_empty() && names.iter().all(|n| rule.names.contains(n)));
    any(&rule.verbs, verb) && any(&rule.groups, group) && resource_ok && names_ok
}

/// The cluster-wide needs (verb by verb) that `rules` (what the member grants the identity)
/// do not cover, as `verb resource (reason)`. Only [`Scope::Cluster`] needs are checked: the
/// namespaced ones come from the bindings the operator makes itself.
pub fn missing(needs: &[Need], rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for n in needs.iter().filter(|n| n.scope == Scope::Cluster) {
        for v in &n.verbs {
            if !rules
                .iter()
                .any(|r| covers(r, &n.group, &n.resource, v, &n.names))
            {
                let what = if n.group.is_empty() {
                    n.resource.clone()
                } else {
                    format!("{}.{}", n.resource, n.group)
                };
                let names = if n.names.is_empty() {
                    String::new()
                } else {
                    format!(" {}", n.names.join(","))
                };
                out.push(format!("{v} {what}{names} ({})", n.reason));
            }
        }
    }
    out
}

/// Whether `rules` let the identity list and watch Secrets in every namespace.
pub fn secrets_cluster_wide(rules: &[Rule]) -> bool {
    ["list", "watch"]
        .iter()
        .all(|v| rules.iter().any(|r| covers(r, "", "secrets", v, &[])))
}

/// The guard ValidatingAdmissionPolicy and its binding: requests of the identity may create or
/// change RoleBindings only in namespaces labelled as managed by the operator (binding a Role,
/// or the workloads ClusterRole to the identity itself), and may change only such namespaces,
/// keeping the label.
pub fn guard(grant: &Grant, cluster: &str) -> [Value; 2] {
    let managed = |obj: &str| {
        format!(
            "has({obj}.metadata.labels) && '{k}' in {obj}.metadata.labels && {obj}.metadata.labels['{k}'] == '{v}'",
            k = crate::api::labels::MANAGED_BY,
            v = crate::api::labels::MANAGED_BY_VALUE
        )
    };
    let labels = json!({JOINED_LABEL: cluster, "app.kubernetes.io/part-of": "residency-operator"});
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": GUARD, "labels": labels},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [
                {"apiGroups": ["rbac.authorization.k8s.io"], "apiVersions": ["v1"],
                 "operations": ["CREATE", "UPDATE"], "resources": ["rolebindings"]},
                {"apiGroups": [""], "apiVersions": ["v1"],
                 "operations": ["UPDATE"], "resources": ["namespaces"]}
            ]},
            "matchConditions": [{
                "name": "the-operator",
                "expression": format!("request.userInfo.username == '{}'", grant.username()),
            }],
            "validations": [
                {
                    "expression": format!("request.resource.resource != 'rolebindings' || (namespaceObject != null && {})", managed("namespaceObject")),
                    "message": format!("the residency operator binds roles only in namespaces labelled {}={}", crate::api::labels::MANAGED_BY, crate::api::labels::MANAGED_BY_VALUE),
                    "reason": "Forbidden",
                },
                {
                    "expression": format!(
                        "request.resource.resource != 'rolebindings' || object.roleRef.kind == 'Role' || (object.roleRef.name == '{WORKLOAD_ROLE}' && object.subjects.all(s, s.kind == 'ServiceAccount' && s.name == '{}' && s.namespace == '{}'))",
                        grant.service_account, grant.namespace
                    ),
                    "message": format!("the residency operator binds only Roles, or {WORKLOAD_ROLE} to itself"),
                    "reason": "Forbidden",
                },
                {
                    "expression": format!("request.resource.resource != 'namespaces' || (({}) && ({}))", managed("oldObject"), managed("object")),
                    "message": "the residency operator changes only namespaces it manages, and keeps them labelled so",
                    "reason": "Forbidden",
                }
            ]
        }
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": GUARD, "labels": labels},
        "spec": {"policyName": GUARD, "validationActions": ["Deny"]}
    });
    [policy, binding]
}

/// Everything `join` creates on a member for `grant`, in apply order: the namespace, the
/// ServiceAccount, the ClusterRoles and bindings, the probe Role, the guard policy.
pub fn member_objects(grant: &Grant, cluster: &str) -> Vec<Value> {
    let n = needs(grant);
    let labels = json!({JOINED_LABEL: cluster, "app.kubernetes.io/part-of": "residency-operator"});
    let subject = json!([{"kind": "ServiceAccount", "name": grant.service_account, "namespace": grant.namespace}]);
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": grant.namespace, "labels": labels}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": grant.service_account, "namespace": grant.namespace, "labels": labels}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": CLUSTER_ROLE, "labels": labels},
               "rules": rules(&n, Scope::Cluster)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": CLUSTER_ROLE, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
               "subjects": subject}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": WORKLOAD_ROLE, "labels": labels},
               "rules": rules(&n, Scope::WorkloadNamespaces)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": PROBE_ROLE, "namespace": grant.namespace, "labels": labels},
               "rules": rules(&n, Scope::MemberNamespace)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": PROBE_ROLE, "namespace": grant.namespace, "labels": labels},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROBE_ROLE},
               "subjects": subject}),
    ];
    out.extend(guard(grant, cluster));
    out
}

/// The RoleBinding the operator makes in a workload namespace: the workloads role, to itself.
pub fn workload_binding(
    namespace: &str,
    service_account: &str,
    sa_namespace: &str,
    role: &str,
) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": CLUSTER_ROLE, "namespace": namespace,
                     "labels": {crate::api::labels::MANAGED_BY: crate::api::labels::MANAGED_BY_VALUE}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": sa_namespace}]
    })
}

/// The needs as a Markdown table (docs/member-access.md is this).
pub fn markdown(grant: &Grant) -> String {
    let mut s = String::from(
        "# Member access\n\nGenerated by `residency-operator join --print-access`; the permissions the operator's identity holds on a member joined with `join` (default options), and why.\n\n| Scope | API group | Resource | Verbs | Names | Why |\n|---|---|---|---|---|---|\n",
    );
    for n in needs(grant) {
        let scope = match n.scope {
            Scope::Cluster => "cluster",
            Scope::WorkloadNamespaces => "workload namespaces",
            Scope::MemberNamespace => "member namespace",
        };
        let group = if n.group.is_empty() {
            "(core)"
        } else {
            &n.group
        };
        s.push_str(&format!(
            "| {scope} | {group} | {} | {} | {} | {} |\n",
            n.resource,
            n.verbs.join(", "),
            n.names.join(", "),
            n.reason
        ));
    }
    s.push_str("\n`join --inventory-secrets` adds a cluster-wide list and watch of Secrets; `join --resource <plural>.<group>` adds a custom kind (list and watch cluster-wide, writes in workload namespaces).\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> Rule {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Rule {
            verbs: v(verbs),
            groups: v(groups),
            resources: v(resources),
            names: v(names),
        }
    }

    /// The rules of the roles as a review would return them.
    fn granted(grant: &Grant, scope: Scope) -> Vec<Rule> {
        rules(&needs(grant), scope)
            .iter()
            .map(|r| {
                let s = |k: &str| -> Vec<String> {
                    r[k].as_array()
                        .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                        .unwrap_or_default()
                };
                Rule {
                    verbs: s("verbs"),
                    groups: s("apiGroups"),
                    resources: s("resources"),
                    names: s("resourceNames"),
                }
            })
            .collect()
    }

    #[test]
    fn no_wildcard_every_need_has_a_reason_and_the_roles_cover_the_needs() {
        let g = Grant {
            resources: vec![("residency-test.io".into(), "widgets".into())],
            ..Grant::new()
        };
        for o in member_objects(&g, "zrh-1") {
            let text = o.to_string();
            assert!(!text.contains("\"*\""), "a wildcard in {text}");
        }
        let n = needs(&g);
        assert!(n.iter().all(|n| !n.reason.is_empty()));
        assert!(missing(&n, &granted(&g, Scope::Cluster)).is_empty());
        // every placeable namespaced kind can be written in workload namespaces
        let w = granted(&g, Scope::WorkloadNamespaces);
        for k in crate::kinds::PLACEABLE.iter().filter(|k| k.namespaced) {
            for verb in WRITE {
                assert!(
                    covers_any(&w, k.group, k.plural, verb),
                    "{verb} {}",
                    k.plural
                );
            }
        }
        assert!(covers_any(&w, "residency-test.io", "widgets", "create"));
    }

    fn covers_any(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| covers(r, group, resource, verb, &[]))
    }

    #[test]
    fn secrets_are_read_cluster_wide_only_when_granted() {
        let g = Grant::new();
        let c = granted(&g, Scope::Cluster);
        assert!(!secrets_cluster_wide(&c));
        assert!(!covers_any(&c, "", "secrets", "get"));
        // nothing cluster-wide writes a namespaced object
        for verb in ["create", "update", "patch", "delete"] {
            for k in crate::kinds::PLACEABLE.iter().filter(|k| k.namespaced) {
                if k.plural == "rolebindings" {
                    continue; // create and patch, limited by the guard policy
                }
                assert!(
                    !covers_any(&c, k.group, k.plural, verb),
                    "{verb} {}",
                    k.plural
                );
            }
        }
        let with = Grant {
            inventory_secrets: true,
            ..Grant::new()
        };
        assert!(secrets_cluster_wide(&granted(&with, Scope::Cluster)));
        // no ClusterRole can be bound but the workloads role; none created
        assert!(!c.iter().any(|r| covers(
            r,
            "rbac.authorization.k8s.io",
            "clusterroles",
            "bind",
            &["admin".into()]
        )));
        assert!(!covers_any(
            &c,
            "rbac.authorization.k8s.io",
            "clusterroles",
            "create"
        ));
        assert!(!covers_any(
            &c,
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "create"
        ));
    }

    #[test]
    fn a_review_missing_a_rule_names_verb_resource_and_reason() {
        let g = Grant::new();
        let mut c = granted(&g, Scope::Cluster);
        for r in &mut c {
            r.resources.retain(|x| x != "nodes");
        }
        let m = missing(&needs(&g), &c);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m[0].starts_with("get nodes (attest"), "{m:?}");
        // a cluster-admin identity lacks nothing
        let admin = [rule(&["*"], &["*"], &["*"], &[])];
        assert!(missing(&needs(&g), &admin).is_empty());
        assert!(secrets_cluster_wide(&admin));
        // a rule limited to names does not grant the unnamed need
        let limited = [rule(&["list"], &[""], &["nodes"], &["n1"])];
        assert!(!covers_any(&limited, "", "nodes", "list"));
        // subresource wildcards
        assert!(covers(
            &rule(&["get"], &[""], &["*/log"], &[]),
            "",
            "pods/log",
            "get",
            &[]
        ));
        assert!(covers(
            &rule(&["get"], &[""], &["pods/*"], &[]),
            "",
            "pods/log",
            "get",
            &[]
        ));
        assert!(!covers(
            &rule(&["get"], &[""], &["pods"], &[]),
            "",
            "pods/log",
            "get",
            &[]
        ));
    }

    #[test]
    fn the_guard_names_the_identity_and_the_workloads_role() {
        let g = Grant::new();
        let [policy, binding] = guard(&g, "zrh-1");
        let text = policy.to_string();
        assert!(text.contains("system:serviceaccount:residency-system:residency-operator"));
        assert!(text.contains(WORKLOAD_ROLE));
        assert_eq!(binding["spec"]["policyName"], GUARD);
    }

    #[test]
    fn the_access_document_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/member-access.md");
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == markdown(&Grant::new()),
            "docs/member-access.md is out of date: run 'cargo run -- join --print-access > docs/member-access.md'"
        );
    }
}
