//! The ResidencyPolicy reconciler: reports which member clusters a policy allows and how many
//! workloads it governs. Status is written only when it changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use tracing::warn;

use super::{Context, Error, Result};
use crate::api::conditions::{self, Desired, Status, types};
use crate::api::residency_policy::{Enforcement, Violation, ViolationInterval};
use crate::api::{MemberCluster, ResidencyPolicy, ResidencyPolicyStatus, ResidentWorkload};
use crate::facts::{self, StatusSource};

const CONTROLLER: &str = "policy";

/// The status of a policy given the clusters and workloads (pure).
pub fn compute(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
    labelled: &Labelled,
    previous: &ResidencyPolicyStatus,
    now: Timestamp,
) -> ResidencyPolicyStatus {
    let policy = facts::policy(rp);
    let mut matched: Vec<String> = clusters
        .iter()
        .map(|c| facts::cluster(c, StatusSource::Conditions))
        .filter(|c| policy.allows(c))
        .map(|c| c.name)
        .collect();
    matched.sort();
    let governed = workloads
        .iter()
        .filter(|w| {
            w.spec
                .countries
                .iter()
                .any(|c| rp.spec.countries.contains(c))
        })
        .count();
    let (reason, mode) = match rp.spec.enforcement {
        Enforcement::Enforce => ("Enforced", "enforced"),
        Enforcement::Audit => ("AuditOnly", "audited (nothing is moved)"),
    };
    let message = if matched.is_empty() {
        format!(
            "Active, {mode}: allows no member cluster, so workloads of its countries are placed nowhere."
        )
    } else {
        format!(
            "Active, {mode}: allows {}; governs {governed} workload(s).",
            matched.join(", ")
        )
    };
    let mut violations = violations(rp, clusters, workloads);
    violations.extend(labelled_violations(rp, clusters, workloads, labelled));
    violations.sort_by(|a, b| {
        (&a.cluster, &a.namespace, &a.name, &a.kind).cmp(&(
            &b.cluster,
            &b.namespace,
            &b.name,
            &b.kind,
        ))
    });
    let count = violations.len();
    let history = history(&previous.history, &violations, now);
    violations.truncate(MAX_VIOLATIONS);
    let compliant = match violations.first() {
        None => Desired::new(
            types::COMPLIANT,
            Status::True,
            "NoViolations",
            "No data of its countries is on a cluster it does not allow.",
        ),
        Some(v) => Desired::new(
            types::COMPLIANT,
            Status::False,
            "Violations",
            format!("{count} violation(s), e.g. {}", v.message),
        ),
    };
    let generation = rp.metadata.generation;
    ResidencyPolicyStatus {
        observed_generation: generation,
        conditions: conditions::merge(
            &previous.conditions,
            &[
                Desired::new(types::READY, Status::True, reason, message),
                compliant,
            ],
            generation,
            now,
        ),
        matched_clusters: matched,
        governed_workloads: i32::try_from(governed).unwrap_or(i32::MAX),
        violations,
        violation_count: i32::try_from(count).unwrap_or(i32::MAX),
        history,
    }
}

/// At most this many intervals are kept in a policy's history.
pub const MAX_HISTORY: usize = 100;

/// The compliance history after this evaluation (pure): an interval opens for each violation
/// not open yet and closes (`to = now`) for each open one no longer found; closed intervals are
/// kept. Open intervals come first, then the most recently closed; at most [`MAX_HISTORY`].
/// Nothing changes while the violations do not.
pub fn history(
    previous: &[ViolationInterval],
    violations: &[Violation],
    now: Timestamp,
) -> Vec<ViolationInterval> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let same = |i: &ViolationInterval, v: &Violation| {
        i.cluster == v.cluster
            && i.country == v.country
            && i.kind == v.kind
            && i.namespace == v.namespace
            && i.name == v.name
    };
    let mut open: Vec<ViolationInterval> = Vec::new();
    let mut closed: Vec<ViolationInterval> = Vec::new();
    for i in previous {
        if i.to.is_some() {
            closed.push(i.clone());
        } else if violations.iter().any(|v| same(i, v)) {
            open.push(i.clone());
        } else {
            closed.push(ViolationInterval {
                to: Some(Time(now)),
                ..i.clone()
            });
        }
    }
    for v in violations {
        if !open.iter().any(|i| same(i, v)) {
            open.push(ViolationInterval {
                cluster: v.cluster.clone(),
                country: v.country.clone(),
                kind: v.kind.clone(),
                namespace: v.namespace.clone(),
                name: v.name.clone(),
                from: Time(now),
                to: None,
            });
        }
    }
    let key = |i: &ViolationInterval| {
        (
            i.cluster.clone(),
            i.country.clone(),
            i.namespace.clone(),
            i.name.clone(),
            i.kind.clone(),
        )
    };
    open.sort_by_key(key);
    // most recently closed first
    closed.sort_by(|a, b| b.to.as_ref().map(|t| t.0).cmp(&a.to.as_ref().map(|t| t.0)));
    open.extend(closed);
    open.truncate(MAX_HISTORY);
    open
}

/// At most this many violations are kept in status.
pub const MAX_VIOLATIONS: usize = 20;

/// Copies of governed data on clusters the policy does not allow, from the workloads' recorded
/// placements (retained volumes count, one entry per volume), sorted (pure).
pub fn violations(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
) -> Vec<Violation> {
    let policy = facts::policy(rp);
    let name = rp.name_any();
    let mut out = Vec::new();
    for w in workloads {
        let Some(country) = w
            .spec
            .countries
            .iter()
            .filter(|c| rp.spec.countries.contains(c))
            .min()
        else {
            continue;
        };
        let Some(status) = &w.status else { continue };
        let ns = w.namespace().unwrap_or_default();
        let wname = w.name_any();
        for p in &status.placements {
            let allowed = clusters
                .iter()
                .find(|c| c.name_any() == p.cluster)
                .is_some_and(|c| policy.allows(&facts::cluster(c, StatusSource::Conditions)));
            if allowed {
                continue;
            }
            if p.state == "Retained" {
                for o in &p.objects {
                    out.push(Violation {
                        cluster: p.cluster.clone(),
                        country: country.to_string(),
                        kind: o.kind.clone(),
                        namespace: Some(ns.clone()),
                        name: o.name.clone(),
                        message: format!(
                            "retained volume {ns}/{} of {wname} holds {country} data on {}, which {name} does not allow",
                            o.name, p.cluster
                        ),
                    });
                }
            } else {
                out.push(Violation {
                    cluster: p.cluster.clone(),
                    country: country.to_string(),
                    kind: "ResidentWorkload".into(),
                    namespace: Some(ns.clone()),
                    name: wname.clone(),
                    message: format!(
                        "{ns}/{wname} ({}) holds {country} data on {}, which {name} does not allow",
                        p.state, p.cluster
                    ),
                });
            }
        }
    }
    out.sort_by(|a, b| {
        (&a.cluster, &a.namespace, &a.name, &a.kind).cmp(&(
            &b.cluster,
            &b.namespace,
            &b.name,
            &b.kind,
        ))
    });
    out
}

/// The labelled objects of one member (see [`crate::fleet::labelled`]).
pub type LabelledObjects =
    std::collections::BTreeMap<crate::fleet::labelled::Key, crate::fleet::labelled::Labelled>;

/// The labelled objects of every member.
pub type Labelled = std::collections::BTreeMap<String, LabelledObjects>;

/// Whether the record of the workload named by an object's labels (`namespace/name`) accounts
/// for a copy on `cluster`: the workload exists and its status has a placement there (pure).
/// Such objects are reported through that placement; any other labelled object is reported on
/// its own.
pub fn accounted_for(workloads: &[Arc<ResidentWorkload>], workload: &str, cluster: &str) -> bool {
    workloads.iter().any(|w| {
        format!("{}/{}", w.namespace().unwrap_or_default(), w.name_any()) == workload
            && w.status
                .as_ref()
                .is_some_and(|s| s.placements.iter().any(|p| p.cluster == cluster))
    })
}

/// Objects on the members labelled as holding data of a governed country, on clusters the
/// policy does not allow, that no workload's record accounts for: made by hand, labelled with
/// a workload that does not exist or has no copy there, or left behind by a deleted workload
/// (its retained volumes). Country labels count whatever other labels the object has (pure).
pub fn labelled_violations(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
    labelled: &Labelled,
) -> Vec<Violation> {
    let policy = facts::policy(rp);
    let name = rp.name_any();
    let mut out = Vec::new();
    for (cluster, objects) in labelled {
        let allowed = clusters
            .iter()
            .find(|c| &c.name_any() == cluster)
            .is_some_and(|c| policy.allows(&facts::cluster(c, StatusSource::Conditions)));
        if allowed {
            continue;
        }
        for ((kind, ns, obj), l) in objects {
            if l.workload
                .as_deref()
                .is_some_and(|w| accounted_for(workloads, w, cluster))
            {
                continue;
            }
            let Some(country) = l
                .countries
                .iter()
                .find(|c| rp.spec.countries.iter().any(|p| p.as_str() == c.as_str()))
            else {
                continue;
            };
            let at = if ns.is_empty() {
                obj.clone()
            } else {
                format!("{ns}/{obj}")
            };
            let what = if l.retained { "retained " } else { "" };
            let whose = crate::fleet::labelled::unrecorded_owner(
                l.workload.as_deref(),
                l.workload.as_deref().is_some_and(|w| {
                    workloads.iter().any(|x| {
                        format!("{}/{}", x.namespace().unwrap_or_default(), x.name_any()) == w
                    })
                }),
            );
            out.push(Violation {
                cluster: cluster.clone(),
                country: country.clone(),
                kind: kind.clone(),
                namespace: (!ns.is_empty()).then(|| ns.clone()),
                name: obj.clone(),
                message: format!(
                    "{what}{kind} {at} on {cluster}{whose} is labelled as holding {country} data, which {name} does not allow"
                ),
            });
        }
    }
    out
}

/// Policies a workload change can affect: those governing one of its countries.
pub fn map_workload(
    policies: &kube::runtime::reflector::Store<ResidencyPolicy>,
    w: &ResidentWorkload,
) -> Vec<kube::runtime::reflector::ObjectRef<ResidencyPolicy>> {
    policies
        .state()
        .iter()
        .filter(|p| {
            p.spec
                .countries
                .iter()
                .any(|c| w.spec.countries.contains(c))
        })
        .map(|p| kube::runtime::reflector::ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Reconciles one policy.
pub async fn reconcile(rp: Arc<ResidencyPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let start = Instant::now();
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let previous = rp.status.clone().unwrap_or_default();
    let status = compute(
        &rp,
        &ctx.clusters.state(),
        &ctx.workloads.state(),
        &ctx.labelled.snapshot(),
        &previous,
        Timestamp::now(),
    );
    if status != previous {
        let api: kube::Api<ResidencyPolicy> = kube::Api::all(ctx.client.clone());
        ctx.apply_status(&api, &rp.name_any(), &status).await?;
    }
    ctx.metrics.reconciled(CONTROLLER, start.elapsed());
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// Logs, counts and requeues with backoff.
pub fn error_policy(rp: Arc<ResidencyPolicy>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(policy = %rp.name_any(), category = err.category(), error = %err, "reconcile failed");
    ctx.metrics.failed(CONTROLLER, err.category());
    Action::requeue(ctx.backoff.next(&format!("policy/{}", rp.name_any())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn arc<T>(v: serde_json::Value) -> Arc<T>
    where
        T: serde::de::DeserializeOwned,
    {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn the_history_opens_and_closes_intervals_and_is_stable_while_nothing_changes() {
        let v = |name: &str| Violation {
            cluster: "msk-1".into(),
            country: "AU".into(),
            kind: "PersistentVolumeClaim".into(),
            namespace: Some("t".into()),
            name: name.into(),
            message: String::new(),
        };
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let h1 = history(&[], &[v("a"), v("b")], t(100));
        assert_eq!(h1.len(), 2);
        assert!(h1.iter().all(|i| i.to.is_none() && i.from.0 == t(100)));
        assert_eq!(history(&h1, &[v("a"), v("b")], t(200)), h1, "unchanged");
        let h2 = history(&h1, &[v("a")], t(300));
        assert_eq!(
            (h2[0].name.as_str(), h2[0].to.is_none()),
            ("a", true),
            "open first"
        );
        assert_eq!(h2[1].name, "b");
        assert_eq!(h2[1].to.as_ref().map(|x| x.0), Some(t(300)));
        assert_eq!(h2[1].from.0, t(100), "the interval keeps its start");
        let h3 = history(&h2, &[v("a"), v("b")], t(400));
        assert_eq!(h3.len(), 3, "b again: a new interval, the closed one kept");
        let many: Vec<Violation> = (0..150).map(|i| v(&format!("x{i:03}"))).collect();
        let h4 = history(&h3, &many, t(500));
        assert_eq!(h4.len(), MAX_HISTORY);
        assert!(
            h4.iter().all(|i| i.to.is_none()),
            "open intervals win the cap"
        );
    }

    #[test]
    fn labelled_objects_no_record_accounts_for_are_violations() {
        use crate::fleet::labelled::Labelled as Entry;
        let policy: ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "apac"},
            "spec": {"countries": ["JP"], "allowedLocations": [{"country": "CH"}]}
        }))
        .unwrap();
        let clusters: Vec<Arc<MemberCluster>> = vec![arc(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": "msk-1"},
            "spec": {"location": {"country": "RU", "region": "moscow"},
                     "attestation": {"nodeRegions": ["r"]}, "connection": {"local": {}}}}))];
        let live: Arc<ResidentWorkload> = arc(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "live", "namespace": "t"},
            "spec": {"role": "Storage", "countries": ["JP"],
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]},
            "status": {"placements": [{"cluster": "msk-1", "state": "Retained"}]}
        }));
        let entry = |workload: Option<&str>, retained| Entry {
            countries: vec!["JP".into()],
            workload: workload.map(str::to_string),
            retained,
        };
        let key = |n: &str| {
            (
                "PersistentVolumeClaim".to_string(),
                "t".to_string(),
                n.to_string(),
            )
        };
        let labelled: Labelled = BTreeMap::from([(
            "msk-1".to_string(),
            BTreeMap::from([
                (key("recorded"), entry(Some("t/live"), true)),
                (key("of-deleted"), entry(Some("t/gone"), true)),
                (key("fake-label"), entry(Some("x/ghost"), false)),
                (key("by-hand"), entry(None, false)),
            ]),
        )]);
        let v = labelled_violations(&policy, &clusters, &[live], &labelled);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["by-hand", "fake-label", "of-deleted"], "{v:?}");
        assert!(
            v[2].message
                .starts_with("retained PersistentVolumeClaim t/of-deleted")
        );
        assert!(
            v[2].message.contains("t/gone, which no longer exists"),
            "{}",
            v[2].message
        );
    }

    #[test]
    fn retained_volumes_on_a_forbidden_cluster_are_violations() {
        let policy: ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "apac-to-zurich"},
            "spec": {"countries": ["AU", "NZ"], "allowedLocations": [{"country": "CH", "region": "zurich"}]}
        }))
        .unwrap();
        let cluster = |name: &str, country: &str, region: &str| -> Arc<MemberCluster> {
            arc(
                json!({"apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name},
                "spec": {"location": {"country": country, "region": region},
                         "attestation": {"nodeRegions": ["r"]}, "connection": {"local": {}}}}),
            )
        };
        let clusters = [
            cluster("zrh-1", "CH", "zurich"),
            cluster("msk-1", "RU", "moscow"),
        ];
        let workload: Arc<ResidentWorkload> = arc(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "store", "namespace": "threat-intel"},
            "spec": {"role": "Storage", "countries": ["NZ", "AU"],
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]},
            "status": {"placements": [
                {"cluster": "zrh-1", "state": "Ready"},
                {"cluster": "msk-1", "state": "Retained", "objects": [
                    {"kind": "PersistentVolumeClaim", "name": "data", "ready": false}]}
            ]}
        }));
        let v = violations(&policy, &clusters, std::slice::from_ref(&workload));
        assert_eq!(v.len(), 1);
        assert_eq!(
            (
                v[0].cluster.as_str(),
                v[0].country.as_str(),
                v[0].name.as_str()
            ),
            ("msk-1", "AU", "data")
        );
        assert!(
            v[0].message.contains("which apac-to-zurich does not allow"),
            "{}",
            v[0].message
        );
        let status = compute(
            &policy,
            &clusters,
            &[workload],
            &Default::default(),
            &Default::default(),
            Timestamp::now(),
        );
        assert_eq!(status.violation_count, 1);
        let c = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Compliant")
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Violations")
        );
    }
}
