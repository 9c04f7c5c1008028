//! Helpers of the operator's fleet tests: the seed members, policies and workloads with their
//! own countries, waiting for a workload's status, and cleaning up.

use std::collections::BTreeMap;
use std::time::Duration;

use super::operator::{self, delete_and_wait};
use super::{Fleet, apply_path, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolumeClaim};
use kube::Client;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use residency_operator::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use serde_json::{Value, json};

/// How long a fleet test waits for a state.
pub const T: Duration = Duration::from_secs(90);
/// Field manager of the tests' writes.
pub const MANAGER: &str = "residency-tests";

/// The management cluster and the members of the seed scenario.
pub struct Env {
    /// The management cluster.
    pub mgmt: Client,
    /// zrh-1, zrh-2, msk-1.
    pub members: Vec<(&'static str, Client)>,
}

/// The MemberClusters of `examples/seed/10-clusters.yaml`.
pub const SEED_MEMBERS: [&str; 3] = ["zrh-1", "zrh-2", "msk-1"];
const SEED_CLUSTERS: &str = "examples/seed/10-clusters.yaml";
const REGION: &str = "topology.kubernetes.io/region";

pub async fn setup() -> Env {
    let fleet = Fleet::from_env();
    operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    apply_path(&mgmt, SEED_CLUSTERS).await;
    super::clusters_verified(&mgmt, &SEED_MEMBERS).await;
    let mut members = Vec::new();
    for name in SEED_MEMBERS {
        members.push((name, fleet.member(name).await));
    }
    Env { mgmt, members }
}

/// Sets a node's `topology.kubernetes.io/region` label.
pub async fn set_region(member: &Client, node: &str, region: &str) {
    let patch = json!({"metadata": {"labels": {REGION: region}}});
    Api::<Node>::all(member.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("relabel {node}: {e}"));
}

/// Puts the shared fleet back as the tests expect it when a test that changed it fails: a
/// relabelled node, a stopped API server, a member identity's removed binding, a cordoned,
/// deleted or added MemberCluster would otherwise stay so and fail every test after it, in
/// this binary and the next ones; so would the workloads, policies and member copies the test
/// had not cleaned up yet (see `remove_leftovers`). A test that changes the fleet holds one for
/// its whole run (`let _restore = RestoreOnFailure;` right after taking its lock, so it is
/// dropped before the lock). When the test passes it does nothing: the test restores what it changed itself and
/// checks what follows.
pub struct RestoreOnFailure;

impl Drop for RestoreOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("the test failed: restoring the fleet for the tests after it");
        // the test's runtime is unwinding: a runtime and clients of its own, on a thread of its
        // own (a panic there must not become a panic in this drop, which would abort)
        let restored = std::thread::spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(restore_fleet())
        })
        .join();
        if restored.is_err() {
            eprintln!("restoring the fleet failed too: the tests after this one may fail");
        }
    }
}

/// Every component running, every member's nodes in its region, every member joined again (its
/// identity's bindings and kubeconfig Secret), the seed MemberClusters as declared and
/// schedulable and no others; then waits until each is Ready and LocationVerified.
async fn restore_fleet() {
    if std::env::var_os("RESIDENCY_FLEET_DIR").is_some() {
        // starts what a test stopped; what runs stays as it is
        super::fleet_sh(&["up"]);
    }
    let fleet = Fleet::from_env();
    let mgmt = fleet.mgmt_client().await;
    operator::member_secrets(&fleet, &mgmt).await;
    for member in &fleet.members {
        let client = fleet.client(&member.context).await;
        let nodes: Api<Node> = Api::all(client.clone());
        for node in nodes.list(&ListParams::default()).await.expect("nodes") {
            if node.labels().get(REGION) != Some(&member.region) {
                set_region(&client, &node.name_any(), &member.region).await;
            }
        }
    }
    let clusters: Api<MemberCluster> = Api::all(mgmt.clone());
    for mc in clusters
        .list(&ListParams::default())
        .await
        .expect("clusters")
    {
        let name = mc.name_any();
        if !SEED_MEMBERS.contains(&name.as_str()) {
            let _ = clusters.delete(&name, &DeleteParams::default()).await;
        } else if mc.metadata.deletion_timestamp.is_some() {
            // a seed member whose deletion waits for its data: let it go, it is added again
            let forget = json!({"metadata": {"annotations": {"residency.io/forget-data": "true"}}});
            let _ = clusters
                .patch(&name, &PatchParams::default(), &Patch::Merge(&forget))
                .await;
            delete_and_wait(&clusters, &name, T).await;
        }
    }
    apply_path(&mgmt, SEED_CLUSTERS).await;
    let schedulable = json!({"spec": {"schedulable": null}});
    for name in SEED_MEMBERS {
        clusters
            .patch(name, &PatchParams::default(), &Patch::Merge(&schedulable))
            .await
            .expect("uncordon");
    }
    super::clusters_verified(&mgmt, &SEED_MEMBERS).await;
    remove_leftovers(&fleet, &mgmt).await;
}

/// What a failed test left behind (it failed before its own cleanup): every ResidentWorkload
/// (deleted, so the operator removes its copies), every ResidencyPolicy, and on each member every
/// namespace but the system ones (copies the test abandoned, objects it made there itself).
/// Left alone, they would be in every later test's report, admission policies and inventory.
/// Runs under the test's write lock, so no other test of the binary is in flight; binaries run
/// one after another.
async fn remove_leftovers(fleet: &Fleet, mgmt: &Client) {
    let workloads: Api<ResidentWorkload> = Api::all(mgmt.clone());
    let left = workloads
        .list(&ListParams::default())
        .await
        .expect("workloads");
    for rw in &left {
        let api = Api::<ResidentWorkload>::namespaced(mgmt.clone(), &rw.namespace().unwrap());
        let _ = api.delete(&rw.name_any(), &DeleteParams::default()).await;
    }
    eventually("the left ResidentWorkloads deleted", T, || async {
        match workloads.list(&ListParams::default()).await {
            Ok(l) if l.items.is_empty() => Ok(()),
            Ok(l) => Err(format!("{} left", l.items.len())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    let _ = Api::<ResidencyPolicy>::all(mgmt.clone())
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    for member in &fleet.members {
        let namespaces: Api<Namespace> = Api::all(fleet.client(&member.context).await);
        for ns in namespaces
            .list(&ListParams::default())
            .await
            .expect("namespaces")
        {
            let name = ns.name_any();
            let system = name == "default"
                || name.starts_with("kube-")
                || name == residency_operator::access::MEMBER_NAMESPACE;
            if !system {
                let _ = namespaces.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
    eprintln!(
        "restoring the fleet: removed {} ResidentWorkloads and every ResidencyPolicy and member namespace a test left",
        left.items.len()
    );
}

pub async fn namespace(client: &Client, ns: &str) {
    operator::ensure_namespace(client, ns).await;
}

/// Applies a ResidencyPolicy.
pub async fn policy(
    client: &Client,
    name: &str,
    countries: &[&str],
    locations: Value,
    enforcement: &str,
) {
    let api: Api<ResidencyPolicy> = Api::all(client.clone());
    let body = json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": name},
        "spec": {"countries": countries, "allowedLocations": locations, "enforcement": enforcement}
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap_or_else(|e| panic!("policy {name}: {e}"));
}

/// A processing workload: a ConfigMap and a Deployment.
pub fn processing(ns: &str, name: &str, countries: &[&str]) -> Value {
    json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "role": "Processing", "countries": countries,
            "manifests": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-config")}, "data": {"k": "v"}},
                {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
                 "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                          "template": {"metadata": {"labels": {"app": name}},
                                       "spec": {"containers": [{"name": "c", "image": "registry.example/app:1", "securityContext": super::restricted()}]}}}}
            ]
        }
    })
}

pub async fn apply_workload(
    client: &Client,
    body: &Value,
) -> Result<ResidentWorkload, kube::Error> {
    let ns = body["metadata"]["namespace"].as_str().unwrap();
    let name = body["metadata"]["name"].as_str().unwrap();
    Api::<ResidentWorkload>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
}

pub fn condition(rw: &ResidentWorkload, t: &str) -> Option<(String, String, String)> {
    rw.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `check` accepts the workload; returns it.
pub async fn wait_workload(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&ResidentWorkload) -> bool,
) -> ResidentWorkload {
    let api: Api<ResidentWorkload> = Api::namespaced(client.clone(), ns);
    eventually(&format!("{ns}/{name}: {what}"), T, || async {
        let rw = api.get(name).await.map_err(|e| e.to_string())?;
        if check(&rw) {
            Ok(rw)
        } else {
            Err(format!("{:?}", rw.status))
        }
    })
    .await
}

pub fn ready_on(rw: &ResidentWorkload, targets: &[&str]) -> bool {
    condition(rw, "Ready").is_some_and(|c| c.0 == "True")
        && condition(rw, "Reconciling").is_some_and(|c| c.0 == "False")
        && rw.status.as_ref().is_some_and(|s| s.targets == targets)
}

/// Objects of the workload on a member (a failed list panics: it must not read as "none").
pub async fn placed_on(client: &Client, ns: &str, name: &str) -> usize {
    let d: Api<Deployment> = Api::namespaced(client.clone(), ns);
    d.list(&ListParams::default().labels(&format!("residency.io/workload={name}")))
        .await
        .expect("list deployments")
        .items
        .len()
}

pub async fn namespace_exists(client: &Client, ns: &str) -> bool {
    Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await
        .expect("get namespace")
        .is_some()
}

pub async fn cleanup(env: &Env, ns: &str, workloads: &[&str], policies: &[&str]) {
    let api: Api<ResidentWorkload> = Api::namespaced(env.mgmt.clone(), ns);
    for w in workloads {
        delete_and_wait(&api, w, T).await;
    }
    let p: Api<ResidencyPolicy> = Api::all(env.mgmt.clone());
    for name in policies {
        let _ = p.delete(name, &DeleteParams::default()).await;
    }
    for (_, c) in &env.members {
        let _ = Api::<Namespace>::all(c.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

/// A Storage workload: a ConfigMap, a PVC and a StatefulSet with a volume claim template.
pub fn storage(ns: &str, name: &str, countries: &[&str], claim_retention: Option<&str>) -> Value {
    let mut sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
        "spec": {"serviceName": name, "replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "db", "image": "registry.example/db:1", "securityContext": super::restricted(),
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
                 "volumeClaimTemplates": [{"metadata": {"name": "data"},
                     "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}});
    if let Some(when) = claim_retention {
        sts["spec"]["persistentVolumeClaimRetentionPolicy"] =
            json!({"whenDeleted": when, "whenScaled": when});
    }
    json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "role": "Storage", "countries": countries, "volumePolicy": "Retain",
            "manifests": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("{name}-config")}, "data": {"k": "v"}},
                {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": format!("{name}-index")},
                 "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
                sts
            ]
        }
    })
}

/// The workload's PVCs on a member: name -> retained label (a failed list panics: it must not
/// read as "none").
pub async fn claims(member: &Client, ns: &str, workload: &str) -> BTreeMap<String, bool> {
    Api::<PersistentVolumeClaim>::namespaced(member.clone(), ns)
        .list(&ListParams::default().labels(&format!("residency.io/workload={workload}")))
        .await
        .expect("list PVCs")
        .items
        .into_iter()
        .map(|p| {
            let retained = p.labels().contains_key("residency.io/retained");
            (p.name_any(), retained)
        })
        .collect()
}

/// Waits until the workload has `n` claims on a member (the StatefulSet controller creates the
/// template's claim).
pub async fn wait_claims(
    member: &Client,
    ns: &str,
    workload: &str,
    n: usize,
) -> BTreeMap<String, bool> {
    eventually(&format!("{n} claims of {workload}"), T, || async {
        let c = claims(member, ns, workload).await;
        if c.len() == n {
            Ok(c)
        } else {
            Err(format!("{c:?}"))
        }
    })
    .await
}

/// The workload's placement on `cluster`.
pub fn placement<'a>(
    rw: &'a ResidentWorkload,
    cluster: &str,
) -> Option<&'a residency_operator::api::resident_workload::Placement> {
    rw.status
        .as_ref()?
        .placements
        .iter()
        .find(|p| p.cluster == cluster)
}

/// Waits, polling every 5 ms, until the namespace `ns` exists on one of `members`: the first
/// write of a placement or relocation there. Returns when it was seen.
pub async fn first_write(members: &[&Client], ns: &str) -> std::time::Instant {
    let started = std::time::Instant::now();
    loop {
        for m in members {
            let there = Api::<Namespace>::all((*m).clone())
                .get_opt(ns)
                .await
                .expect("get namespace")
                .is_some();
            if there {
                return std::time::Instant::now();
            }
        }
        assert!(
            started.elapsed() < T,
            "no write to the members within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Installs the PolicyReport CRD (`wgpolicyk8s.io/v1alpha2`) on the management cluster.
pub async fn install_policy_report_crd(mgmt: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(super::repo("tests/fixtures/policyreport-crd.yaml")).unwrap(),
    )
    .unwrap();
    Api::<CustomResourceDefinition>::all(mgmt.clone())
        .patch(
            "policyreports.wgpolicyk8s.io",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
    super::crd_established(mgmt, "policyreports.wgpolicyk8s.io").await;
}

/// The PolicyReports of a namespace.
pub fn policy_reports(mgmt: &Client, ns: &str) -> Api<kube::api::DynamicObject> {
    use kube::core::{ApiResource, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("wgpolicyk8s.io", "v1alpha2", "PolicyReport");
    Api::namespaced_with(
        mgmt.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "policyreports"),
    )
}

/// Asserts that `member` still holds exactly the claims of `before`, each labelled retained.
pub async fn assert_retained(
    member: &Client,
    ns: &str,
    workload: &str,
    before: &BTreeMap<String, bool>,
) {
    let now = claims(member, ns, workload).await;
    assert_eq!(
        now.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "every claim is still there"
    );
    assert!(now.values().all(|r| *r), "all labelled retained: {now:?}");
}
