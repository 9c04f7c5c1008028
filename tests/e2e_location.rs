//! Location proof on the local fleet, through the real operator, the way real clusters say
//! where things are: volumes pinned by a CSI driver's zone key, by `topology.kubernetes.io/zone`
//! and by hostname are located through the nodes they name (inside); the same kinds of pins to
//! a node that appears in another region are outside; network storage without node affinity is
//! unverifiable until the member vouches for its StorageClass; an attested region the catalogue
//! puts in another country unverifies the member, a private one is self-declared; a node whose
//! providerID names another zone than its labels unverifies its member, and a node without a
//! region label is placed through its zone. The tests change members' nodes and MemberClusters,
//! so they take turns, and put everything back.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::operator::{self, delete_and_wait};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::core::v1::{Namespace, Node, PersistentVolume};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use residency_operator::api::member_cluster::RegionSource;
use residency_operator::api::{MemberCluster, ResidencyPolicy, ResidentWorkload};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
const MANAGER: &str = "residency-tests";
const CSI_ZONE: &str = "topology.ebs.csi.aws.com/zone";

/// One test at a time: they relabel and add nodes, and edit the seed MemberClusters.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The nodes these tests add (removed first, in case an earlier run stopped half-way).
const TEST_NODES: [(&str, &str); 4] = [
    ("zrh-1", "zrh-1-node-x"),
    ("zrh-2", "zrh-2-node-zoned"),
    ("zrh-2", "zrh-2-node-aws"),
    ("zrh-2", "zrh-2-node-liar"),
];

async fn setup() -> (Fleet, Client) {
    let fleet = Fleet::from_env();
    operator::start(&fleet).await;
    let mgmt = fleet.mgmt_client().await;
    for (member, node) in TEST_NODES {
        delete_node(&fleet.member(member).await, node).await;
    }
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    let unvouch = json!({"spec": {"attestation": {"vouchedStorageClasses": null}}});
    Api::<MemberCluster>::all(mgmt.clone())
        .patch("zrh-1", &PatchParams::default(), &Patch::Merge(&unvouch))
        .await
        .unwrap();
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    (fleet, mgmt)
}

async fn member_cluster(mgmt: &Client, name: &str) -> MemberCluster {
    Api::<MemberCluster>::all(mgmt.clone())
        .get(name)
        .await
        .unwrap()
}

fn condition(mc: &MemberCluster, type_: &str) -> Option<(String, String, String)> {
    mc.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

/// Waits until the MemberCluster's `LocationVerified` has `status` and `reason`; returns it.
async fn located(mgmt: &Client, name: &str, status: &str, reason: &str) -> MemberCluster {
    eventually(
        &format!("{name} LocationVerified={status} ({reason})"),
        T,
        || async {
            let mc = member_cluster(mgmt, name).await;
            match condition(&mc, "LocationVerified") {
                Some((s, r, _)) if s == status && r == reason => Ok(mc),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

async fn pv(member: &Client, name: &str, claim: (&str, &str), source: Value, affinity: Value) {
    let api: Api<PersistentVolume> = Api::all(member.clone());
    let mut spec = json!({"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "standard",
        "claimRef": {"namespace": claim.0, "name": claim.1}});
    spec.as_object_mut()
        .unwrap()
        .extend(source.as_object().unwrap().clone());
    if !affinity.is_null() {
        spec["nodeAffinity"] =
            json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [affinity]}]}});
    }
    let body: PersistentVolume =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    api.create(&PostParams::default(), &body).await.unwrap();
}

fn claim(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
}

/// A Storage workload of `claims` for `country`, which only zrh-1 (by its site label) may hold.
async fn storage_on_zrh1(mgmt: &Client, ns: &str, name: &str, country: &str, claims: &[&str]) {
    let policy = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": name},
        "spec": {"countries": [country], "clusterSelector": {"matchLabels": {"residency.io/site": "zurich-dc1"}}}});
    Api::<ResidencyPolicy>::all(mgmt.clone())
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap();
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"role": "Storage", "countries": [country],
                 "manifests": claims.iter().map(|c| claim(c)).collect::<Vec<_>>()}});
    Api::<ResidentWorkload>::namespaced(mgmt.clone(), ns)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
}

/// Waits until the workload's copy on zrh-1 has evidence satisfying `check`; returns the
/// workload.
async fn evidence_on_zrh1(
    mgmt: &Client,
    ns: &str,
    name: &str,
    what: &str,
    check: impl Fn(&residency_operator::api::resident_workload::LocationEvidence) -> bool,
) -> ResidentWorkload {
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    eventually(&format!("{name}: {what}"), T, || async {
        let rw = api.get(name).await.map_err(|e| e.to_string())?;
        let ev = rw
            .status
            .as_ref()
            .and_then(|s| s.placements.iter().find(|p| p.cluster == "zrh-1"))
            .and_then(|p| p.evidence.clone());
        match ev {
            Some(e) if check(&e) => Ok(rw),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn compliant(rw: &ResidentWorkload) -> (String, String, String) {
    let c = rw
        .status
        .as_ref()
        .unwrap()
        .conditions
        .iter()
        .find(|c| c.type_ == "Compliant")
        .unwrap();
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

async fn label_node(member: &Client, node: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Node>::all(member.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// A Node object (no kubelet behind it: it never becomes Ready, nothing is scheduled there).
async fn fake_node(
    member: &Client,
    name: &str,
    labels: &[(&str, &str)],
    provider_id: Option<&str>,
) {
    let api: Api<Node> = Api::all(member.clone());
    let labels: BTreeMap<&str, &str> = labels
        .iter()
        .copied()
        .chain([("kubernetes.io/hostname", name)])
        .collect();
    let mut body = json!({"metadata": {"name": name, "labels": labels},
        "spec": {"taints": [{"key": "residency.io/test-node", "value": "true", "effect": "NoSchedule"}]}});
    if let Some(id) = provider_id {
        body["spec"]["providerID"] = json!(id);
    }
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(&format!("no earlier node {name}"), T, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .unwrap();
}

async fn delete_node(member: &Client, name: &str) {
    delete_and_wait(&Api::<Node>::all(member.clone()), name, T).await;
}

const VOLUMES: [&str; 7] = [
    "loc-csi-zone",
    "loc-zone",
    "loc-host",
    "loc-nfs",
    "loc-x-csi-zone",
    "loc-x-zone",
    "loc-x-host",
];

/// Removes the volume test's workloads, policies, claims and volumes, and waits until they are
/// gone.
async fn clean_volume_test(mgmt: &Client, zrh1: &Client, ns: &str) {
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    for w in ["fiji", "tonga"] {
        delete_and_wait(&api, w, T).await;
        let _ = Api::<ResidencyPolicy>::all(mgmt.clone())
            .delete(w, &DeleteParams::default())
            .await;
    }
    delete_and_wait(&Api::<Namespace>::all(zrh1.clone()), ns, T).await;
    let pvs: Api<PersistentVolume> = Api::all(zrh1.clone());
    for v in VOLUMES {
        delete_and_wait(&pvs, v, T).await;
    }
}

#[tokio::test]
async fn volumes_are_located_through_the_nodes_they_are_pinned_to() {
    let _turn = TURN.lock().await;
    let (fleet, mgmt) = setup().await;
    let zrh1 = fleet.member("zrh-1").await;
    let ns = "location-volumes";
    operator::ensure_namespace(&mgmt, ns).await;
    clean_volume_test(&mgmt, &zrh1, ns).await;
    // zrh-1's nodes carry their region and zone; node a also the EBS CSI driver's zone key
    label_node(&zrh1, "zrh-1-node-a", CSI_ZONE, Some("eu-central-2a")).await;

    // volumes pinned three ways to zrh-1's own nodes, and one NFS-style volume without node
    // affinity (never mounted: no Pod uses it)
    let local = |i: &str| json!({"local": {"path": format!("/mnt/location-{i}")}});
    let by = |key: &str, value: &str| json!({"key": key, "operator": "In", "values": [value]});
    pv(
        &zrh1,
        "loc-csi-zone",
        (ns, "by-csi-zone"),
        local("csi"),
        by(CSI_ZONE, "eu-central-2a"),
    )
    .await;
    pv(
        &zrh1,
        "loc-zone",
        (ns, "by-zone"),
        local("zone"),
        by("topology.kubernetes.io/zone", "eu-central-2b"),
    )
    .await;
    pv(
        &zrh1,
        "loc-host",
        (ns, "by-host"),
        local("host"),
        by("kubernetes.io/hostname", "zrh-1-node-b"),
    )
    .await;
    pv(
        &zrh1,
        "loc-nfs",
        (ns, "on-nfs"),
        json!({"nfs": {"server": "nfs.invalid", "path": "/exports/tonga"}}),
        Value::Null,
    )
    .await;
    storage_on_zrh1(
        &mgmt,
        ns,
        "tonga",
        "TO",
        &["by-csi-zone", "by-zone", "by-host", "on-nfs"],
    )
    .await;

    let rw = evidence_on_zrh1(
        &mgmt,
        ns,
        "tonga",
        "three volumes inside, NFS unverifiable",
        |e| e.volume_regions == ["eu-central-2"] && e.unverifiable.len() == 1,
    )
    .await;
    let ev = rw.status.as_ref().unwrap().placements[0]
        .evidence
        .clone()
        .unwrap();
    assert!(ev.outside.is_empty(), "{ev:?}");
    assert!(ev.vouched.is_empty(), "{ev:?}");
    assert!(
        ev.unverifiable[0]
            .starts_with("PersistentVolume loc-nfs (claim on-nfs) has no node affinity"),
        "{ev:?}"
    );
    let (status, reason, message) = compliant(&rw);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("Unknown", "LocationUnverifiable"),
        "{message}"
    );
    assert!(
        message.contains("On zrh-1, PersistentVolume loc-nfs"),
        "{message}"
    );
    let report = common::report();
    assert!(
        report.contains("UNVERIFIABLE zrh-1: location-volumes/tonga: PersistentVolume loc-nfs"),
        "{report}"
    );
    assert!(
        !report.contains("VIOLATION zrh-1: location-volumes/tonga"),
        "{report}"
    );

    // the member vouches for its StorageClass: the NFS volume is vouched, the others still
    // proven through their nodes
    let clusters: Api<MemberCluster> = Api::all(mgmt.clone());
    let vouch =
        |classes: Value| json!({"spec": {"attestation": {"vouchedStorageClasses": classes}}});
    clusters
        .patch(
            "zrh-1",
            &PatchParams::default(),
            &Patch::Merge(&vouch(json!(["standard"]))),
        )
        .await
        .unwrap();
    let rw = evidence_on_zrh1(&mgmt, ns, "tonga", "NFS vouched", |e| {
        e.unverifiable.is_empty() && e.vouched.len() == 1
    })
    .await;
    let ev = rw.status.as_ref().unwrap().placements[0]
        .evidence
        .clone()
        .unwrap();
    assert_eq!(
        ev.vouched,
        [
            "PersistentVolume loc-nfs (claim on-nfs): StorageClass standard, vouched for by the member"
        ]
    );
    assert_eq!(ev.volume_regions, ["eu-central-2"]);
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    eventually("tonga Compliant", T, || async {
        let rw = api.get("tonga").await.map_err(|e| e.to_string())?;
        match compliant(&rw) {
            (s, r, _) if s == "True" && r == "Compliant" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        common::report()
            .contains("VOUCHED zrh-1: location-volumes/tonga: PersistentVolume loc-nfs"),
        "the report says it rests on the member's word"
    );
    clusters
        .patch(
            "zrh-1",
            &PatchParams::default(),
            &Patch::Merge(&vouch(Value::Null)),
        )
        .await
        .unwrap();

    // the same three kinds of pins, to a node that does not exist yet: unverifiable...
    pv(
        &zrh1,
        "loc-x-csi-zone",
        (ns, "x-by-csi-zone"),
        local("x-csi"),
        by(CSI_ZONE, "eu-central-1a"),
    )
    .await;
    pv(
        &zrh1,
        "loc-x-zone",
        (ns, "x-by-zone"),
        local("x-zone"),
        by("topology.kubernetes.io/zone", "eu-central-1a"),
    )
    .await;
    pv(
        &zrh1,
        "loc-x-host",
        (ns, "x-by-host"),
        local("x-host"),
        by("kubernetes.io/hostname", "zrh-1-node-x"),
    )
    .await;
    storage_on_zrh1(
        &mgmt,
        ns,
        "fiji",
        "FJ",
        &["x-by-csi-zone", "x-by-zone", "x-by-host"],
    )
    .await;
    let rw = evidence_on_zrh1(&mgmt, ns, "fiji", "three unverifiable volumes", |e| {
        e.unverifiable.len() == 3
    })
    .await;
    let ev = rw.status.as_ref().unwrap().placements[0]
        .evidence
        .clone()
        .unwrap();
    assert!(
        ev.outside.is_empty() && ev.volume_regions.is_empty(),
        "{ev:?}"
    );
    // ... and outside once that node is there, in Frankfurt (zrh-1 is then unverified: it keeps
    // what it has and gets nothing new)
    fake_node(
        &zrh1,
        "zrh-1-node-x",
        &[
            ("topology.kubernetes.io/region", "eu-central-1"),
            ("topology.kubernetes.io/zone", "eu-central-1a"),
            (CSI_ZONE, "eu-central-1a"),
        ],
        None,
    )
    .await;
    located(&mgmt, "zrh-1", "False", "NodeOutsideAttestedRegions").await;
    // not compliant; while zrh-1 is unverified, the placement's reason (no eligible cluster)
    // comes first. The workload hears of its volumes' places (the member's watches) and of
    // zrh-1's verification (the MemberCluster) apart: its status is final once both are in.
    let rw = common::rules::wait_workload(
        &mgmt,
        ns,
        "fiji",
        "three volumes outside, Compliant=False (NoEligibleCluster)",
        |rw| {
            rw.status.as_ref().is_some_and(|s| {
                s.placements.iter().any(|p| {
                    p.cluster == "zrh-1"
                        && p.evidence.as_ref().is_some_and(|e| e.outside.len() == 3)
                })
            }) && common::rules::condition(rw, "Compliant")
                .is_some_and(|c| c.0 == "False" && c.1 == "NoEligibleCluster")
        },
    )
    .await;
    let ev = rw.status.as_ref().unwrap().placements[0]
        .evidence
        .clone()
        .unwrap();
    assert_eq!(
        ev.outside,
        [
            "PersistentVolume loc-x-csi-zone (claim x-by-csi-zone) in region eu-central-1",
            "PersistentVolume loc-x-host (claim x-by-host) in region eu-central-1",
            "PersistentVolume loc-x-zone (claim x-by-zone) in region eu-central-1",
        ]
    );
    assert!(ev.unverifiable.is_empty(), "{ev:?}");
    // the volumes pinned to Zurich's nodes are still inside
    let tonga =
        evidence_on_zrh1(&mgmt, ns, "tonga", "still inside", |e| e.outside.is_empty()).await;
    assert_eq!(
        tonga.status.unwrap().placements[0]
            .evidence
            .clone()
            .unwrap()
            .volume_regions,
        ["eu-central-2"]
    );
    assert!(
        common::report().contains(
            "VIOLATION zrh-1: location-volumes/fiji: PersistentVolume loc-x-host (claim x-by-host) in region eu-central-1, outside the attested regions"
        )
    );

    delete_node(&zrh1, "zrh-1-node-x").await;
    located(&mgmt, "zrh-1", "True", "RegionsMatch").await;
    clean_volume_test(&mgmt, &zrh1, ns).await;
    label_node(&zrh1, "zrh-1-node-a", CSI_ZONE, None).await;
}

#[tokio::test]
async fn an_attested_region_in_another_country_unverifies_the_member_and_a_private_one_is_self_declared()
 {
    let _turn = TURN.lock().await;
    let (fleet, mgmt) = setup().await;
    // Kiribati's data on all three members, so the report lists them
    let ns = "location-regions";
    operator::ensure_namespace(&mgmt, ns).await;
    let policy = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
        "metadata": {"name": "location-kiribati"},
        "spec": {"countries": ["KI"], "allowedLocations": [{"country": "CH", "region": "zurich"}, {"country": "RU", "region": "moscow"}]}});
    let policies: Api<ResidencyPolicy> = Api::all(mgmt.clone());
    policies
        .patch(
            "location-kiribati",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&policy),
        )
        .await
        .unwrap();
    let body = json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": "kiribati", "namespace": ns},
        "spec": {"role": "Processing", "countries": ["KI"], "manifests": [
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kiribati"}, "data": {"k": "v"}}]}});
    let workloads: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    workloads
        .patch(
            "kiribati",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .unwrap();
    eventually("kiribati Ready on three members", T, || async {
        let rw = workloads.get("kiribati").await.map_err(|e| e.to_string())?;
        let s = rw.status.unwrap_or_default();
        if s.placements.len() == 3 && s.placements.iter().all(|p| p.state == "Ready") {
            Ok(())
        } else {
            Err(format!("{:?}", s.placements))
        }
    })
    .await;
    let clusters: Api<MemberCluster> = Api::all(mgmt.clone());
    let attest = |list: Value| {
        let clusters = clusters.clone();
        async move {
            let patch = json!({"spec": {"attestation": {"nodeRegions": list}}});
            clusters
                .patch("zrh-2", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    let region = |mc: &MemberCluster, name: &str| {
        mc.status
            .as_ref()
            .and_then(|s| s.regions.iter().find(|r| r.name == name).cloned())
            .unwrap()
    };

    // zrh-2 (CH) also attests AWS Frankfurt: every node is still in eu-central-2, but the
    // catalogue puts eu-central-1 in Germany
    attest(json!(["eu-central-2", "eu-central-1"])).await;
    let mc = located(&mgmt, "zrh-2", "False", "RegionInAnotherCountry").await;
    let (_, _, message) = condition(&mc, "LocationVerified").unwrap();
    assert_eq!(
        message,
        "location.country is CH, but the region catalogue puts attested region eu-central-1 in DE (alibaba: Frankfurt, DE; aws: Frankfurt, DE): correct attestation.nodeRegions or location.country"
    );
    let frankfurt = region(&mc, "eu-central-1");
    assert_eq!(frankfurt.country.as_deref(), Some("DE"));
    assert_eq!(frankfurt.source, RegionSource::Catalogue);
    let zurich = region(&mc, "eu-central-2");
    assert_eq!(zurich.country.as_deref(), Some("CH"));
    assert!(
        zurich.listed_by.contains(&"aws: Zurich, CH".to_string()),
        "{zurich:?}"
    );
    // a Warning Event on the MemberCluster says so
    let events: Api<Event> = Api::all(mgmt.clone());
    eventually("Warning Event RegionInAnotherCountry", T, || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("RegionInAnotherCountry")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("zrh-2")
                    && e.type_.as_deref() == Some("Warning")
            })
            .map(|_| ())
            .ok_or_else(|| "no event yet".to_string())
    })
    .await;

    // a private data centre's region: accepted, and said to be self-declared
    attest(json!(["eu-central-2", "zrh-dc-7"])).await;
    let mc = located(&mgmt, "zrh-2", "True", "RegionsMatch").await;
    let (_, _, message) = condition(&mc, "LocationVerified").unwrap();
    assert!(
        message.ends_with("(self-declared, no cloud provider lists: zrh-dc-7)"),
        "{message}"
    );
    let private = region(&mc, "zrh-dc-7");
    assert_eq!(private.source, RegionSource::SelfDeclared);
    assert_eq!(private.country, None);
    // msk-1's ru-central-1 is no provider's region name either: the report says so
    let report = common::report_with(&["-o", "markdown"]);
    let kiribati = &report[report.find("## KI").unwrap()..];
    assert!(
        kiribati.contains("| msk-1 | RU/moscow | yes | ru-central-1 (self-declared) |"),
        "{report}"
    );
    assert!(
        kiribati.contains("| zrh-1 | CH/zurich | yes | eu-central-2 (aws: Zurich, CH) |"),
        "{report}"
    );
    assert!(
        kiribati.contains("eu-central-2 (aws: Zurich, CH)<br>zrh-dc-7 (self-declared)"),
        "{report}"
    );
    let text = common::report();
    assert!(
        text.contains("msk-1    RU/moscow (ru-central-1 self-declared)"),
        "{text}"
    );

    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&mgmt, &["zrh-2"]).await;
    delete_and_wait(&workloads, "kiribati", T).await;
    let _ = policies
        .delete("location-kiribati", &DeleteParams::default())
        .await;
    for m in ["zrh-1", "zrh-2", "msk-1"] {
        let _ = Api::<Namespace>::all(fleet.member(m).await)
            .delete(ns, &DeleteParams::default())
            .await;
    }
}

#[tokio::test]
async fn a_node_whose_provider_id_names_another_zone_unverifies_its_member() {
    let _turn = TURN.lock().await;
    let (fleet, mgmt) = setup().await;
    let zrh2 = fleet.member("zrh-2").await;
    let nodes_before = member_cluster(&mgmt, "zrh-2")
        .await
        .status
        .and_then(|s| s.node_count)
        .unwrap();
    // a node without a region label, in zone eu-central-2a: placed in eu-central-2 through
    // zrh-2-node-a, which carries both; and a node whose AWS providerID agrees with its labels
    fake_node(
        &zrh2,
        "zrh-2-node-zoned",
        &[("topology.kubernetes.io/zone", "eu-central-2a")],
        None,
    )
    .await;
    fake_node(
        &zrh2,
        "zrh-2-node-aws",
        &[
            ("topology.kubernetes.io/region", "eu-central-2"),
            ("topology.kubernetes.io/zone", "eu-central-2b"),
        ],
        Some("aws:///eu-central-2b/i-0123456789abcdef0"),
    )
    .await;
    eventually("zrh-2 verified with both nodes", T, || async {
        let mc = member_cluster(&mgmt, "zrh-2").await;
        let count = mc.status.as_ref().and_then(|s| s.node_count);
        match condition(&mc, "LocationVerified") {
            Some((s, _, _)) if s == "True" && count == Some(nodes_before + 2) => Ok(()),
            other => Err(format!("{other:?}, {count:?} nodes")),
        }
    })
    .await;

    // a node whose providerID names a Frankfurt zone while its labels say Zurich
    fake_node(
        &zrh2,
        "zrh-2-node-liar",
        &[
            ("topology.kubernetes.io/region", "eu-central-2"),
            ("topology.kubernetes.io/zone", "eu-central-2a"),
        ],
        Some("aws:///eu-central-1a/i-0fedcba9876543210"),
    )
    .await;
    let mc = located(&mgmt, "zrh-2", "False", "NodeIdentityMismatch").await;
    let (_, _, message) = condition(&mc, "LocationVerified").unwrap();
    assert_eq!(
        message,
        "1 node's providerID contradicts its labels: zrh-2-node-liar: its providerID aws:///eu-central-1a/i-0fedcba9876543210 names zone eu-central-1a, its label zone eu-central-2a"
    );
    assert_eq!(mc.status.unwrap().unverified_nodes, ["zrh-2-node-liar"]);

    for n in ["zrh-2-node-liar", "zrh-2-node-aws", "zrh-2-node-zoned"] {
        delete_node(&zrh2, n).await;
    }
    located(&mgmt, "zrh-2", "True", "RegionsMatch").await;
}
