//! Members joined with `residency-operator join`, on the local fleet through the real operator
//! (every fleet test binary joins its members this way): the identity can do what the operator
//! needs and nothing more (SubjectAccessReviews on the member, and the guard policy refusing
//! the identity's own requests outside its namespaces); a member whose binding is removed is
//! `Ready=False, reason=Forbidden` naming what is missing and gets no write meanwhile; `join
//! --rotate` replaces the credential while the operator keeps working; the identity's watch of
//! a deleted workload namespace ends, a refused one of a namespace that exists goes on.

mod common;

use std::time::{Duration, Instant};

use common::rules::{Env, T, apply_workload, cleanup, namespace, placement, setup, wait_workload};
use common::{Fleet, eventually};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use residency_operator::api::MemberCluster;
use serde_json::json;

const USER: &str = "system:serviceaccount:residency-system:residency-operator";

/// A request: verb, API group, resource, namespace, name.
type Access = (
    &'static str,
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
);

/// The tests of this binary take zrh-1's identity apart: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether the member's authorizer lets the joined identity do `verb` on `resource`.
async fn can(
    member: &Client,
    verb: &str,
    group: &str,
    resource: &str,
    ns: Option<&str>,
    name: Option<&str>,
) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(USER.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:residency-system".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(str::to_string),
                name: name.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<SubjectAccessReview>::all(member.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// A client of `context` acting as the joined identity (impersonation by the admin).
async fn as_identity(context: &str) -> Client {
    let path = Fleet::kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let options = kube::config::KubeConfigOptions {
        context: Some(context.to_string()),
        ..Default::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    config.auth_info.impersonate = Some(USER.into());
    config.auth_info.impersonate_groups = Some(vec![
        "system:serviceaccounts".into(),
        "system:serviceaccounts:residency-system".into(),
        "system:authenticated".into(),
    ]);
    Client::try_from(config).unwrap()
}

#[tokio::test]
async fn the_joined_identity_can_do_what_the_operator_needs_and_nothing_more() {
    let _serial = SERIAL.lock().await;
    let env: Env = setup().await;
    let zrh1 = &env.members[0].1;
    let allowed: &[Access] = &[
        ("list", "", "nodes", None, None),
        ("watch", "", "persistentvolumes", None, None),
        ("list", "storage.k8s.io", "storageclasses", None, None),
        ("create", "", "namespaces", None, None),
        ("watch", "", "configmaps", None, None),
        ("list", "apps", "statefulsets", None, None),
        ("watch", "residency-test.io", "widgets", None, None),
        (
            "create",
            "rbac.authorization.k8s.io",
            "rolebindings",
            None,
            None,
        ),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            Some("residency-operator-workloads"),
        ),
        (
            "create",
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            None,
            None,
        ),
        (
            "delete",
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            None,
            Some("residency.io-enforce"),
        ),
        ("create", "", "configmaps", Some("residency-system"), None),
    ];
    let denied: &[Access] = &[
        ("get", "", "secrets", Some("kube-system"), None),
        ("list", "", "secrets", None, None),
        ("watch", "", "secrets", Some("default"), None),
        (
            "get",
            "",
            "secrets",
            Some("residency-system"),
            Some("residency-operator-token"),
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            None,
        ),
        (
            "create",
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            None,
            None,
        ),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            None,
            Some("cluster-admin"),
        ),
        (
            "escalate",
            "rbac.authorization.k8s.io",
            "roles",
            Some("kube-system"),
            None,
        ),
        ("create", "", "configmaps", Some("kube-system"), None),
        ("delete", "", "pods", Some("kube-system"), None),
        ("patch", "apps", "deployments", Some("kube-system"), None),
        (
            "delete",
            "admissionregistration.k8s.io",
            "validatingadmissionpolicies",
            None,
            Some("residency.io-member-guard"),
        ),
        (
            "delete",
            "admissionregistration.k8s.io",
            "validatingadmissionpolicybindings",
            None,
            Some("residency.io-member-guard"),
        ),
        (
            "delete",
            "",
            "namespaces",
            Some("kube-system"),
            Some("kube-system"),
        ),
    ];
    for (verb, group, resource, ns, name) in allowed {
        assert!(
            can(zrh1, verb, group, resource, *ns, *name).await,
            "the identity may not {verb} {resource} {ns:?} {name:?}"
        );
    }
    for (verb, group, resource, ns, name) in denied {
        assert!(
            !can(zrh1, verb, group, resource, *ns, *name).await,
            "the identity may {verb} {resource} {ns:?} {name:?}"
        );
    }
    eprintln!(
        "SubjectAccessReviews on zrh-1: {} needed permissions allowed, {} others denied",
        allowed.len(),
        denied.len()
    );

    // what RBAC allows cluster-wide (creating RoleBindings, patching namespaces) the guard
    // policy keeps inside the namespaces the operator manages
    let me = as_identity("zrh-1").await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "residency-operator", "namespace": "kube-system"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "residency-operator-workloads"},
        "subjects": [{"kind": "ServiceAccount", "name": "residency-operator", "namespace": "residency-system"}]
    }))
    .unwrap();
    let err = Api::<RoleBinding>::namespaced(me.clone(), "kube-system")
        .create(&PostParams::default(), &binding)
        .await
        .expect_err("a binding in kube-system");
    assert!(
        err.to_string()
            .contains("binds roles only in namespaces labelled"),
        "{err}"
    );
    let err = Api::<Namespace>::all(me.clone())
        .patch(
            "kube-system",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "residency-operator"}}})),
        )
        .await
        .expect_err("labelling kube-system");
    assert!(
        err.to_string()
            .contains("changes only namespaces it manages"),
        "{err}"
    );
    let err = Api::<ConfigMap>::namespaced(me, "kube-system")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
        )
        .await
        .expect_err("a ConfigMap in kube-system");
    assert!(err.to_string().contains("forbidden"), "{err}");

    // placing works with it: the operator bound itself in the workload's namespace only
    let ns = "join-place";
    namespace(&env.mgmt, ns).await;
    common::rules::policy(
        &env.mgmt,
        "join-tuvalu",
        &["TV"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "tuvalu", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["TV"], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tuvalu"}, "data": {"k": "v"}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tuvalu"}, "stringData": {"k": "v"}}]}});
    apply_workload(&env.mgmt, &body).await.unwrap();
    wait_workload(&env.mgmt, ns, "tuvalu", "Ready on zrh-1 and zrh-2", |rw| {
        ["zrh-1", "zrh-2"]
            .iter()
            .all(|c| placement(rw, c).is_some_and(|p| p.state == "Ready"))
    })
    .await;
    let b = Api::<RoleBinding>::namespaced(zrh1.clone(), ns)
        .get("residency-operator")
        .await
        .unwrap();
    assert_eq!(b.role_ref.name, "residency-operator-workloads");
    // the Secret placed there is in the inventory (watched in the workload's namespace)
    eventually("the placed Secret inventoried on zrh-1", T, || async {
        let mc = Api::<MemberCluster>::all(env.mgmt.clone())
            .get("zrh-1")
            .await
            .map_err(|e| e.to_string())?;
        let n = mc
            .status
            .and_then(|s| s.inventory)
            .map(|i| {
                i.by_country
                    .iter()
                    .filter(|c| c.country == "TV")
                    .map(|c| c.objects)
                    .sum::<i32>()
            })
            .unwrap_or_default();
        if n == 2 {
            Ok(())
        } else {
            Err(format!("{n} TV objects"))
        }
    })
    .await;
    cleanup(&env, ns, &["tuvalu"], &["join-tuvalu"]).await;
}

async fn member_ready(mgmt: &Client, name: &str) -> Option<(String, String, String)> {
    let mc = Api::<MemberCluster>::all(mgmt.clone())
        .get(name)
        .await
        .ok()?;
    mc.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status, c.reason, c.message))
}

#[tokio::test]
async fn a_member_whose_binding_is_removed_is_forbidden_and_untouched_and_rotation_fails_nothing() {
    let _serial = SERIAL.lock().await;
    let _restore = common::rules::RestoreOnFailure;
    let env: Env = setup().await;
    let fleet = Fleet::from_env();
    let zrh1 = &env.members[0].1;
    let ns = "join-forbidden";
    namespace(&env.mgmt, ns).await;
    common::rules::policy(
        &env.mgmt,
        "join-nauru",
        &["NR"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let body = |v: &str| {
        json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "nauru", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["NR"], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "nauru"}, "data": {"v": v}}]}})
    };
    apply_workload(&env.mgmt, &body("1")).await.unwrap();
    wait_workload(&env.mgmt, ns, "nauru", "Ready on zrh-1", |rw| {
        placement(rw, "zrh-1").is_some_and(|p| p.state == "Ready")
    })
    .await;
    let cms = Api::<ConfigMap>::namespaced(zrh1.clone(), ns);

    // the identity loses its cluster-wide binding
    let bindings = Api::<ClusterRoleBinding>::all(zrh1.clone());
    let removed = Instant::now();
    bindings
        .delete("residency-operator", &DeleteParams::default())
        .await
        .unwrap();
    let probe = Duration::from_secs(2); // the tests' --probe-interval
    let (_, _, message) = eventually("zrh-1 Ready=False Forbidden", T, || async {
        match member_ready(&env.mgmt, "zrh-1").await {
            Some((s, r, m)) if s == "False" && r == "Forbidden" => Ok((s, r, m)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = removed.elapsed();
    eprintln!(
        "binding removed -> Ready=False Forbidden in {:.1} s (probe interval {probe:?}): {message}",
        took.as_secs_f64()
    );
    assert!(message.contains("list nodes (attest"), "{message}");
    assert!(message.contains("create namespaces"), "{message}");
    assert!(took < probe * 3 + Duration::from_secs(3), "took {took:?}");

    // meanwhile nothing is written there: an edit waits, the object stays as it was
    apply_workload(&env.mgmt, &body("2")).await.unwrap();
    wait_workload(&env.mgmt, ns, "nauru", "zrh-2 has the edit", |rw| {
        placement(rw, "zrh-2").is_some_and(|p| p.state == "Ready")
            && rw
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == rw.metadata.generation)
    })
    .await;
    tokio::time::sleep(probe * 3).await;
    let live = cms.get("nauru").await.unwrap();
    assert_eq!(
        live.data.unwrap()["v"],
        "1",
        "zrh-1 was written while forbidden"
    );
    let z2 = Api::<ConfigMap>::namespaced(env.members[1].1.clone(), ns)
        .get("nauru")
        .await
        .unwrap();
    assert_eq!(z2.data.unwrap()["v"], "2");

    // join again: the binding is back, the member Ready, the edit lands
    common::operator::join(&fleet, &context_of(&fleet, "zrh-1"), "zrh-1", &[]).await;
    written(&cms, "2", "zrh-1 written again").await;

    // rotation: to a long-lived token Secret, then to a new one; the operator keeps working
    let errors_before = reconcile_errors().await;
    let rotated = Instant::now();
    let out = common::operator::join(
        &fleet,
        &context_of(&fleet, "zrh-1"),
        "zrh-1",
        &["--rotate", "--long-lived-token"],
    )
    .await;
    assert!(
        out.contains("connects to zrh-1 with the new credential"),
        "{out}"
    );
    let first = token_secrets(zrh1).await;
    assert_eq!(first.len(), 1, "{first:?}");
    let out = common::operator::join(
        &fleet,
        &context_of(&fleet, "zrh-1"),
        "zrh-1",
        &["--rotate", "--long-lived-token"],
    )
    .await;
    assert!(
        out.contains(&format!("old token Secret {} deleted", first[0])),
        "{out}"
    );
    let second = token_secrets(zrh1).await;
    assert_eq!(second.len(), 1);
    assert_ne!(second, first);
    eprintln!("two rotations in {:.1} s", rotated.elapsed().as_secs_f64());
    // the operator still writes with the newest credential
    apply_workload(&env.mgmt, &body("3")).await.unwrap();
    written(&cms, "3", "zrh-1 written after rotation").await;
    let errors_after = reconcile_errors().await;
    eprintln!(
        "reconcile errors of the member controller during rotation: {errors_before} -> {errors_after}"
    );
    assert_eq!(
        errors_before, errors_after,
        "a reconcile failed during rotation"
    );
    // back to a time-bound token (what the other tests use), the long-lived one removed
    let out =
        common::operator::join(&fleet, &context_of(&fleet, "zrh-1"), "zrh-1", &["--rotate"]).await;
    assert!(
        out.contains(&format!("old token Secret {} deleted", second[0])),
        "{out}"
    );
    assert!(token_secrets(zrh1).await.is_empty());
    cleanup(&env, ns, &["nauru"], &["join-nauru"]).await;
}

/// Waits until the member's ConfigMap `nauru` holds `v`.
async fn written(cms: &Api<ConfigMap>, v: &str, what: &str) {
    eventually(what, T, || async {
        let data = cms
            .get("nauru")
            .await
            .map_err(|e| e.to_string())?
            .data
            .unwrap_or_default();
        if data.get("v").map(String::as_str) == Some(v) {
            Ok(())
        } else {
            Err(format!("{data:?}"))
        }
    })
    .await;
}

fn context_of(fleet: &Fleet, cluster: &str) -> String {
    fleet
        .members
        .iter()
        .find(|m| m.context.ends_with(cluster))
        .map(|m| m.context.clone())
        .unwrap()
}

async fn token_secrets(member: &Client) -> Vec<String> {
    let mut names: Vec<String> = Api::<Secret>::namespaced(member.clone(), "residency-system")
        .list(&ListParams::default().labels("residency.io/joined-as=zrh-1"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| s.type_.as_deref() == Some("kubernetes.io/service-account-token"))
        .map(|s| s.name_any())
        .collect();
    names.sort();
    names
}

/// The operator's failed reconciles, all controllers (from /metrics).
async fn reconcile_errors() -> u64 {
    let op = common::operator::start(&Fleet::from_env()).await;
    let text = op.get("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with("residency_reconcile_errors_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The operator watches Secrets per workload namespace when its identity may not list them in
/// every namespace, with the permission its own binding there gives. Once the namespace is
/// deleted, that watch is refused at its next list: it must end (a placement there starts it
/// again), not retry for as long as the operator runs. A refusal in a namespace that exists is
/// a missing permission, not an end: that watch goes on retrying.
#[tokio::test]
async fn a_watch_of_a_deleted_namespace_ends_and_one_merely_refused_goes_on() {
    use residency_operator::fleet::{labelled, member::Memo};
    let _serial = SERIAL.lock().await;
    let env: Env = setup().await;
    let zrh1 = &env.members[0].1;
    let identity = as_identity("zrh-1").await;
    let (policies, _writer) = kube::runtime::reflector::store();
    let (policy_tx, _policy_rx) = tokio::sync::mpsc::channel(16);
    let (workloads_tx, _workloads_rx) = tokio::sync::mpsc::channel(16);
    let sinks = labelled::Sinks {
        index: std::sync::Arc::new(labelled::Index::default()),
        policies,
        policy_tx,
        workloads_tx,
        memo: std::sync::Arc::new(Memo::default()),
    };
    let secrets = kube::core::ApiResource::erase::<Secret>(&());
    let watch = |ns: &str| {
        labelled::watch_kind(
            identity.clone(),
            "zrh-1",
            secrets.clone(),
            Some(ns),
            sinks.clone(),
        )
    };

    let deleted = common::unique("join-deleted");
    assert!(
        Api::<Namespace>::all(zrh1.clone())
            .get_opt(&deleted)
            .await
            .unwrap()
            .is_none()
    );
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), watch(&deleted))
        .await
        .expect("the watch of a namespace that is gone ends")
        .expect("and does not panic");
    eprintln!("the watch of {deleted} ended after {:?}", started.elapsed());

    assert!(
        !can(zrh1, "list", "", "secrets", Some("kube-system"), None).await,
        "the identity may not list kube-system's Secrets"
    );
    let refused = watch("kube-system");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        !refused.is_finished(),
        "a refused watch of a namespace that exists goes on"
    );
    refused.abort();
}
