//! Prometheus metrics (prefix `residency_`, bounded label cardinality: controller, category,
//! cluster, country, kind; never object names).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of reconcile metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `workload`, `cluster` or `policy`.
    pub controller: String,
}

/// Labels of error metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `workload`, `cluster` or `policy`.
    pub controller: String,
    /// The error's stable category.
    pub category: String,
}

/// Labels of per-member metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// MemberCluster name.
    pub cluster: String,
}

/// Labels of member write metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// MemberCluster name.
    pub cluster: String,
    /// `apply`, `delete` or `label`.
    pub verb: String,
}

/// Labels of member read metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadLabels {
    /// MemberCluster name.
    pub cluster: String,
    /// `place` (the watches could not vouch for the object before applying it) or `observe`
    /// (an Audit drift check).
    pub reason: String,
}

/// Labels of drift metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DriftLabels {
    /// MemberCluster name.
    pub cluster: String,
    /// Kind of the drifted object.
    pub kind: String,
    /// `corrected` or `reported`.
    pub action: String,
}

/// Labels of held-copy metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HoldLabels {
    /// MemberCluster name.
    pub cluster: String,
    /// Why the copy is held: `NotEligible`, `ClusterUnreachable`, `ClusterRemoved`.
    pub reason: String,
}

/// Labels of data move metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MoveLabels {
    /// What happened: `WritersStopping`, `DataSynced`, `CutoverAwaitingApproval`,
    /// `DataVerified`, `DataMoveFailed`.
    pub event: String,
}

/// Labels of inventory metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    /// MemberCluster name.
    pub cluster: String,
    /// ISO 3166-1 alpha-2 code of the country whose data the copies hold.
    pub country: String,
}

/// What a member's inventory holds of one country's data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountryGauges {
    /// Objects labelled with the country.
    pub copies: i64,
    /// Of them, those no workload's record accounts for.
    pub unrecorded: i64,
    /// Of them, those on a cluster a policy governing the country does not allow.
    pub forbidden: i64,
}

/// Every metric of the operator.
#[derive(Clone)]
pub struct Metrics {
    /// Reconciliations run.
    pub reconciliations: Family<ControllerLabels, Counter>,
    /// Reconcile errors by category.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile duration.
    pub duration: Family<ControllerLabels, Histogram>,
    /// 1 when the member is reachable.
    pub member_ready: Family<ClusterLabels, Gauge>,
    /// 1 when every node of the member is in an attested region.
    pub member_verified: Family<ClusterLabels, Gauge>,
    /// Writes to member clusters.
    pub member_writes: Family<WriteLabels, Counter>,
    /// Objects read from member clusters, by reason: the watches could not vouch for them
    /// before an apply (`place`), or an Audit drift check (`observe`).
    pub member_reads: Family<ReadLabels, Counter>,
    /// Drifted objects found, by cluster, kind and action (`corrected` or `reported`).
    pub drift: Family<DriftLabels, Counter>,
    /// Copies kept as they are on a cluster that is allowed but unhealthy (or gone), counted
    /// when a copy starts being held.
    pub held: Family<HoldLabels, Counter>,
    /// Objects labelled with a country's data on each member (its inventory).
    pub copies: Family<CopyLabels, Gauge>,
    /// Of them, those no workload's record accounts for.
    pub copies_unrecorded: Family<CopyLabels, Gauge>,
    /// Of them, those on a cluster a policy governing the country does not allow.
    pub copies_forbidden: Family<CopyLabels, Gauge>,
    /// 1 when the member's API server runs the admission policies generated for it.
    pub prevention_enforced: Family<ClusterLabels, Gauge>,
    /// Countries whose new data each member's API server refuses.
    pub prevention_refused: Family<ClusterLabels, Gauge>,
    /// Admission policies put back after they were deleted or edited on a member.
    pub admission_restored: Family<ClusterLabels, Counter>,
    /// Steps reached by data moves.
    pub data_moves: Family<MoveLabels, Counter>,
    /// The countries each member's gauges are set for (so a country gone is removed).
    countries: Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<String>>>>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("residency");
        let reconciliations = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let member_ready = Family::<ClusterLabels, Gauge>::default();
        let member_verified = Family::<ClusterLabels, Gauge>::default();
        let member_writes = Family::<WriteLabels, Counter>::default();
        let member_reads = Family::<ReadLabels, Counter>::default();
        let drift = Family::<DriftLabels, Counter>::default();
        let held = Family::<HoldLabels, Counter>::default();
        let copies = Family::<CopyLabels, Gauge>::default();
        let copies_unrecorded = Family::<CopyLabels, Gauge>::default();
        let copies_forbidden = Family::<CopyLabels, Gauge>::default();
        let prevention_enforced = Family::<ClusterLabels, Gauge>::default();
        let prevention_refused = Family::<ClusterLabels, Gauge>::default();
        let admission_restored = Family::<ClusterLabels, Counter>::default();
        let data_moves = Family::<MoveLabels, Counter>::default();
        registry.register(
            "data_moves",
            "Steps data moves reached (DataSynced, DataVerified, DataMoveFailed, ...)",
            data_moves.clone(),
        );
        registry.register(
            "prevention_enforced",
            "1 when the member's API server runs the admission policies generated from the residency policies",
            prevention_enforced.clone(),
        );
        registry.register(
            "prevention_refused_countries",
            "Countries whose new data the member's API server refuses at admission",
            prevention_refused.clone(),
        );
        registry.register(
            "admission_policies_restored",
            "Admission policies the operator put back on a member after they were deleted or edited there",
            admission_restored.clone(),
        );
        registry.register(
            "copies",
            "Objects labelled as holding a country's data on a member cluster (its inventory)",
            copies.clone(),
        );
        registry.register(
            "copies_unrecorded",
            "Objects labelled with a country on a member that no workload's record accounts for",
            copies_unrecorded.clone(),
        );
        registry.register(
            "copies_forbidden",
            "Objects labelled with a country on a member a policy governing that country does not allow",
            copies_forbidden.clone(),
        );
        registry.register(
            "copies_held",
            "Copies kept unchanged on a cluster that is allowed but not eligible, unreachable or removed (counted when the hold starts)",
            held.clone(),
        );
        registry.register(
            "drift",
            "Placed objects found drifted from what was applied",
            drift.clone(),
        );
        registry.register(
            "reconciliations",
            "Reconciliations run",
            reconciliations.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciliations",
            duration.clone(),
        );
        registry.register(
            "member_ready",
            "1 when the member cluster is reachable and authenticated",
            member_ready.clone(),
        );
        registry.register(
            "member_location_verified",
            "1 when every node of the member is in an attested region",
            member_verified.clone(),
        );
        registry.register(
            "member_writes",
            "Writes (apply, delete, label) sent to member clusters",
            member_writes.clone(),
        );
        registry.register(
            "member_reads",
            "Objects read from member clusters (the watches could not vouch for them, or Audit drift checks)",
            member_reads.clone(),
        );
        Self {
            reconciliations,
            errors,
            duration,
            member_ready,
            member_verified,
            member_writes,
            member_reads,
            drift,
            held,
            copies,
            copies_unrecorded,
            copies_forbidden,
            prevention_enforced,
            prevention_refused,
            admission_restored,
            data_moves,
            countries: Arc::default(),
            registry: Arc::new(registry),
        }
    }

    /// Records one reconciliation.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        let l = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciliations.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
    }

    /// Records one reconcile error.
    pub fn failed(&self, controller: &str, category: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                category: category.to_string(),
            })
            .inc();
    }

    /// Records one write to a member.
    pub fn wrote(&self, cluster: &str, verb: &str) {
        self.member_writes
            .get_or_create(&WriteLabels {
                cluster: cluster.to_string(),
                verb: verb.to_string(),
            })
            .inc();
    }

    /// Records one object read from a member (`reason`: `place` or `observe`).
    pub fn read(&self, cluster: &str, reason: &str) {
        self.member_reads
            .get_or_create(&ReadLabels {
                cluster: cluster.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Records one drifted object.
    pub fn drift(&self, cluster: &str, kind: &str, action: &str) {
        self.drift
            .get_or_create(&DriftLabels {
                cluster: cluster.to_string(),
                kind: kind.to_string(),
                action: action.to_string(),
            })
            .inc();
    }

    /// Records a step a data move reached.
    pub fn data_move(&self, event: &str) {
        self.data_moves
            .get_or_create(&MoveLabels {
                event: event.to_string(),
            })
            .inc();
    }

    /// Records that a copy started being held on `cluster`.
    pub fn held(&self, cluster: &str, reason: &str) {
        self.held
            .get_or_create(&HoldLabels {
                cluster: cluster.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Sets a member's inventory gauges, one set per country it holds (an empty `held` removes
    /// them all, e.g. when the member is forgotten).
    pub fn inventory(&self, cluster: &str, held: &[(String, CountryGauges)]) {
        let mut known = self.countries.lock().unwrap_or_else(|e| e.into_inner());
        let previous = known.remove(cluster).unwrap_or_default();
        for country in previous
            .iter()
            .filter(|c| !held.iter().any(|(h, _)| h == *c))
        {
            let l = CopyLabels {
                cluster: cluster.to_string(),
                country: country.clone(),
            };
            self.copies.remove(&l);
            self.copies_unrecorded.remove(&l);
            self.copies_forbidden.remove(&l);
        }
        for (country, g) in held {
            let l = CopyLabels {
                cluster: cluster.to_string(),
                country: country.clone(),
            };
            self.copies.get_or_create(&l).set(g.copies);
            self.copies_unrecorded.get_or_create(&l).set(g.unrecorded);
            self.copies_forbidden.get_or_create(&l).set(g.forbidden);
        }
        if !held.is_empty() {
            known.insert(
                cluster.to_string(),
                held.iter().map(|(c, _)| c.clone()).collect(),
            );
        }
    }

    /// Sets a member's health gauges.
    pub fn member_health(&self, cluster: &str, ready: bool, verified: bool) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.member_ready.get_or_create(&l).set(i64::from(ready));
        self.member_verified
            .get_or_create(&l)
            .set(i64::from(verified));
    }

    /// Sets a member's prevention gauges: in force or not, and how many countries it refuses.
    pub fn prevention(&self, cluster: &str, enforced: bool, refused: usize) {
        let l = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.prevention_enforced
            .get_or_create(&l)
            .set(i64::from(enforced));
        self.prevention_refused
            .get_or_create(&l)
            .set(i64::try_from(refused).unwrap_or(i64::MAX));
    }

    /// Counts one admission policy put back on `cluster`.
    pub fn admission_restored(&self, cluster: &str) {
        self.admission_restored
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // encoding into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_prefixed_metrics() {
        let m = Metrics::new();
        m.reconciled("workload", Duration::from_millis(12));
        m.failed("workload", "member_api");
        m.wrote("zrh-1", "apply");
        m.read("zrh-1", "place");
        m.member_health("zrh-1", true, false);
        let text = m.encode();
        assert!(
            text.contains("residency_reconciliations_total{controller=\"workload\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "residency_reconcile_errors_total{controller=\"workload\",category=\"member_api\"} 1"
        ));
        assert!(text.contains("residency_member_writes_total{cluster=\"zrh-1\",verb=\"apply\"} 1"));
        assert!(
            text.contains("residency_member_reads_total{cluster=\"zrh-1\",reason=\"place\"} 1")
        );
        assert!(text.contains("residency_member_location_verified{cluster=\"zrh-1\"} 0"));
        assert!(text.contains("residency_reconcile_duration_seconds_bucket"));
    }

    #[test]
    fn inventory_gauges_follow_the_countries_held() {
        let m = Metrics::new();
        let g = |copies, unrecorded, forbidden| CountryGauges {
            copies,
            unrecorded,
            forbidden,
        };
        m.inventory(
            "msk-1",
            &[("AU".into(), g(3, 1, 3)), ("JP".into(), g(1, 1, 0))],
        );
        let text = m.encode();
        assert!(
            text.contains("residency_copies{cluster=\"msk-1\",country=\"AU\"} 3"),
            "{text}"
        );
        assert!(text.contains("residency_copies_forbidden{cluster=\"msk-1\",country=\"AU\"} 3"));
        assert!(text.contains("residency_copies_unrecorded{cluster=\"msk-1\",country=\"JP\"} 1"));
        m.inventory("msk-1", &[("JP".into(), g(2, 0, 0))]);
        let text = m.encode();
        assert!(!text.contains("country=\"AU\""), "{text}");
        assert!(text.contains("residency_copies{cluster=\"msk-1\",country=\"JP\"} 2"));
        m.inventory("msk-1", &[]);
        assert!(!m.encode().contains("cluster=\"msk-1\""));
    }
}
