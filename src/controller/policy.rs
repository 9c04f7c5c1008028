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
use crate::api::residency_policy::{Enforcement, ForgottenCopies, Violation, ViolationInterval};
use crate::api::{MemberCluster, ResidencyPolicy, ResidencyPolicyStatus, ResidentWorkload};
use crate::facts::{self, StatusSource};

const CONTROLLER: &str = "policy";

/// Least time between two evaluations of one policy: one evaluation covers every workload and
/// inventory change that arrived meanwhile.
const MIN_GAP: Duration = Duration::from_secs(1);

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
    let mut violations = findings(rp, clusters, workloads, labelled);
    let count = violations.len();
    let history = history(&previous.history, &violations, now);
    let forgotten = forgotten(rp, clusters, labelled, &previous.forgotten, now);
    violations.truncate(MAX_VIOLATIONS);
    let unverifiable = if forgotten.is_empty() {
        String::new()
    } else {
        let on: Vec<String> = forgotten
            .iter()
            .map(|f| format!("{} object(s) on {}", f.objects, f.cluster))
            .collect();
        format!(
            " Unverifiable: {}, removed while holding its countries' data (status.forgotten).",
            on.join(", ")
        )
    };
    let compliant = match violations.first() {
        None => Desired::new(
            types::COMPLIANT,
            Status::True,
            "NoViolations",
            format!("No data of its countries is on a cluster it does not allow.{unverifiable}"),
        ),
        Some(v) => Desired::new(
            types::COMPLIANT,
            Status::False,
            "Violations",
            format!("{count} violation(s), e.g. {}{unverifiable}", v.message),
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
        forgotten,
    }
}

/// At most this many forgotten-copies entries are kept in a policy's status.
pub const MAX_FORGOTTEN: usize = 50;

/// The copies of the policy's countries on member clusters removed while holding them (pure).
/// A MemberCluster being deleted with the forget annotation adds (or refreshes) an entry from
/// its last inventory; an entry stays after the MemberCluster is gone, and goes once a
/// MemberCluster of that name is watched again (its inventory shows what is there: the copies
/// are rediscovered). The newest [`MAX_FORGOTTEN`] entries are kept.
pub fn forgotten(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    labelled: &Labelled,
    previous: &[ForgottenCopies],
    now: Timestamp,
) -> Vec<ForgottenCopies> {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    let governed = |c: &String| rp.spec.countries.iter().any(|p| p.as_str() == c);
    let mut out: Vec<ForgottenCopies> = previous
        .iter()
        .filter(|f| {
            let watched_again = clusters.iter().any(|c| {
                c.name_any() == f.cluster
                    && c.metadata.deletion_timestamp.is_none()
                    && labelled.contains_key(&f.cluster)
            });
            !watched_again
        })
        .cloned()
        .collect();
    for mc in clusters {
        let forgetting = mc.metadata.deletion_timestamp.is_some()
            && mc
                .annotations()
                .get(super::cluster::FORGET_ANNOTATION)
                .map(String::as_str)
                == Some("true");
        let name = mc.name_any();
        let Some(objects) = labelled.get(&name).filter(|_| forgetting) else {
            continue;
        };
        let held: Vec<_> = objects
            .iter()
            .filter(|(_, l)| l.countries.iter().any(governed))
            .collect();
        if held.is_empty() {
            continue;
        }
        let mut countries: Vec<String> = held
            .iter()
            .flat_map(|(_, l)| l.countries.iter().filter(|c| governed(c)).cloned())
            .collect();
        countries.sort();
        countries.dedup();
        let shown: Vec<String> = held
            .iter()
            .take(3)
            .map(|((kind, ns, n), _)| {
                if ns.is_empty() {
                    format!("{kind} {n}")
                } else {
                    format!("{kind} {ns}/{n}")
                }
            })
            .collect();
        let more = held.len().saturating_sub(shown.len());
        let message = format!(
            "{name} was removed with {} while holding {} object(s) of {} data ({}{}); they are no longer watched and cannot be verified",
            super::cluster::FORGET_ANNOTATION,
            held.len(),
            countries.join(", "),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
        let since = out
            .iter()
            .find(|f| f.cluster == name)
            .map(|f| f.since.clone())
            .unwrap_or(Time(now));
        out.retain(|f| f.cluster != name);
        out.push(ForgottenCopies {
            cluster: name,
            countries,
            objects: i32::try_from(held.len()).unwrap_or(i32::MAX),
            since,
            message,
        });
    }
    // newest first, then by cluster
    out.sort_by(|a, b| b.since.0.cmp(&a.since.0).then(a.cluster.cmp(&b.cluster)));
    out.truncate(MAX_FORGOTTEN);
    out
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
            && i.countries == v.countries
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
                countries: v.countries.clone(),
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
            i.countries.clone(),
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
        let mut governed: Vec<String> = w
            .spec
            .countries
            .iter()
            .filter(|c| rp.spec.countries.contains(c))
            .map(|c| c.to_string())
            .collect();
        if governed.is_empty() {
            continue;
        }
        governed.sort();
        governed.dedup();
        let country = governed.join(", ");
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
                        countries: governed.clone(),
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
                    countries: governed.clone(),
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

/// The workloads' records, indexed once: which clusters each workload (`namespace/name`) has
/// a placement on (pure). Labelled objects are checked against it by the thousand.
pub struct Records<'a> {
    placed: std::collections::HashMap<String, std::collections::HashSet<&'a str>>,
}

impl<'a> Records<'a> {
    /// Indexes `workloads`.
    pub fn new(workloads: &'a [Arc<ResidentWorkload>]) -> Self {
        let placed = workloads
            .iter()
            .map(|w| {
                let clusters = w
                    .status
                    .iter()
                    .flat_map(|s| s.placements.iter().map(|p| p.cluster.as_str()))
                    .collect();
                (super::workload_key(w), clusters)
            })
            .collect();
        Self { placed }
    }

    /// Whether the record of the workload named by an object's labels (`namespace/name`)
    /// accounts for a copy on `cluster`: the workload exists and its status has a placement
    /// there. Such objects are reported through that placement; any other labelled object is
    /// reported on its own.
    pub fn accounts_for(&self, workload: &str, cluster: &str) -> bool {
        self.placed
            .get(workload)
            .is_some_and(|c| c.contains(cluster))
    }

    /// Whether the workload `namespace/name` exists.
    pub fn exists(&self, workload: &str) -> bool {
        self.placed.contains_key(workload)
    }
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
    let records = Records::new(workloads);
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
                .is_some_and(|w| records.accounts_for(w, cluster))
            {
                continue;
            }
            let governed: Vec<String> = l
                .countries
                .iter()
                .filter(|c| rp.spec.countries.iter().any(|p| p.as_str() == c.as_str()))
                .cloned()
                .collect();
            if governed.is_empty() {
                continue;
            }
            let country = governed.join(", ");
            let at = if ns.is_empty() {
                obj.clone()
            } else {
                format!("{ns}/{obj}")
            };
            let what = if l.retained { "retained " } else { "" };
            let whose = crate::fleet::labelled::unrecorded_owner(
                l.workload.as_deref(),
                l.workload.as_deref().is_some_and(|w| records.exists(w)),
            );
            out.push(Violation {
                cluster: cluster.clone(),
                countries: governed,
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

/// Every policy's findings: the copies its countries' data has where it forbids them, from the
/// workloads' records and the members' inventory (pure).
pub fn all_violations(
    policies: &[Arc<ResidencyPolicy>],
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
    labelled: &Labelled,
) -> Vec<Violation> {
    policies
        .iter()
        .flat_map(|rp| findings(rp, clusters, workloads, labelled))
        .collect()
}

/// One policy's findings: [`violations`] from the records and [`labelled_violations`] from the
/// inventory, sorted by cluster, namespace, name and kind (pure).
pub fn findings(
    rp: &ResidencyPolicy,
    clusters: &[Arc<MemberCluster>],
    workloads: &[Arc<ResidentWorkload>],
    labelled: &Labelled,
) -> Vec<Violation> {
    let mut v = violations(rp, clusters, workloads);
    v.extend(labelled_violations(rp, clusters, workloads, labelled));
    v.sort_by(|a, b| {
        (&a.cluster, &a.namespace, &a.name, &a.kind).cmp(&(
            &b.cluster,
            &b.namespace,
            &b.name,
            &b.kind,
        ))
    });
    v
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
    if !ctx.synced() {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    ctx.policy_runs.wait(&rp.name_any(), MIN_GAP).await;
    // what the cache holds after the wait (the status this replica wrote last, say)
    let rp = ctx
        .policies
        .get(&kube::runtime::reflector::ObjectRef::from_obj(rp.as_ref()))
        .unwrap_or(rp);
    let start = Instant::now();
    let previous = rp.status.clone().unwrap_or_default();
    let (clusters, workloads) = (ctx.clusters.state(), ctx.workloads.state());
    let status = ctx.labelled.with(|labelled| {
        compute(
            &rp,
            &clusters,
            &workloads,
            labelled,
            &previous,
            Timestamp::now(),
        )
    });
    if status != previous {
        let api: kube::Api<ResidencyPolicy> = kube::Api::all(ctx.client.clone());
        ctx.apply_status(&api, &rp.name_any(), &status).await?;
    }
    // the PolicyReports show the same findings (written only where they changed)
    ctx.report_queue.everything();
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
            countries: vec!["AU".into()],
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
    fn copies_on_a_member_removed_with_forget_stay_recorded_until_it_is_watched_again() {
        use crate::fleet::labelled::Labelled as Entry;
        let policy: ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy",
            "metadata": {"name": "apac"},
            "spec": {"countries": ["AU", "NZ"], "allowedLocations": [{"country": "CH"}]}
        }))
        .unwrap();
        let member = |deleting: bool, forget: bool| -> Arc<MemberCluster> {
            let mut meta = json!({"name": "msk-1"});
            if deleting {
                meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
            }
            if forget {
                meta["annotations"] = json!({"residency.io/forget-data": "true"});
            }
            arc(
                json!({"apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster",
                "metadata": meta,
                "spec": {"location": {"country": "RU", "region": "moscow"}, "attestation": {"nodeRegions": ["ru-central-1"]}, "connection": {"local": {}}}}),
            )
        };
        let entry = |c: &[&str]| Entry {
            countries: c.iter().map(|x| x.to_string()).collect(),
            workload: None,
            retained: true,
            uid: None,
            print: 0,
        };
        let key = |n: &str| {
            (
                "PersistentVolumeClaim".to_string(),
                "t".to_string(),
                n.to_string(),
            )
        };
        let held: Labelled = BTreeMap::from([(
            "msk-1".to_string(),
            BTreeMap::from([
                (key("data-0"), entry(&["AU"])),
                (key("data-1"), entry(&["NZ", "JP"])),
                (key("other"), entry(&["JP"])),
            ]),
        )]);
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        // being deleted without the annotation, or not being deleted: nothing is forgotten
        for c in [member(true, false), member(false, true)] {
            assert!(forgotten(&policy, &[c], &held, &[], t(1)).is_empty());
        }
        let f1 = forgotten(&policy, &[member(true, true)], &held, &[], t(10));
        assert_eq!(f1.len(), 1);
        assert_eq!((f1[0].cluster.as_str(), f1[0].objects), ("msk-1", 2));
        assert_eq!(f1[0].countries, ["AU", "NZ"], "only the policy's countries");
        assert!(
            f1[0].message.contains("PersistentVolumeClaim t/data-0"),
            "{}",
            f1[0].message
        );
        // still being deleted later: the same entry, its start kept
        let again = forgotten(&policy, &[member(true, true)], &held, &f1, t(20));
        assert_eq!(again, f1);
        // the MemberCluster gone: kept
        let gone = forgotten(&policy, &[], &Labelled::new(), &f1, t(30));
        assert_eq!(gone, f1);
        // re-added but not watched yet: kept; watched again: dropped (rediscovered)
        let readded = [member(false, false)];
        assert_eq!(
            forgotten(&policy, &readded, &Labelled::new(), &f1, t(40)),
            f1
        );
        let watched: Labelled = BTreeMap::from([("msk-1".to_string(), BTreeMap::new())]);
        assert!(forgotten(&policy, &readded, &watched, &f1, t(50)).is_empty());
        // a policy governing none of the held countries records nothing
        let mut other = policy.clone();
        other.spec.countries = vec![crate::api::CountryCode::parse("FR").unwrap()];
        assert!(forgotten(&other, &[member(true, true)], &held, &[], t(60)).is_empty());
        // the deleting member blocks until the governing policy records it
        let p = Arc::new(policy.clone());
        let objects = &held["msk-1"];
        assert_eq!(
            super::super::cluster::policies_to_record(
                &[p.clone(), Arc::new(other)],
                "msk-1",
                objects
            )
            .len(),
            1
        );
        let mut recorded = policy.clone();
        recorded.status = Some(ResidencyPolicyStatus {
            forgotten: f1,
            ..Default::default()
        });
        assert!(
            super::super::cluster::policies_to_record(&[Arc::new(recorded)], "msk-1", objects)
                .is_empty()
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
            uid: None,
            print: 0,
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
                v[0].countries.join(","),
                v[0].name.as_str()
            ),
            ("msk-1", "AU,NZ".to_string(), "data"),
            "every governed country it holds, so the history answers for each"
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
