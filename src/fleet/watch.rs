//! The member watches' lifetime, and which workload a placed object belongs to. The watches
//! themselves ([`super::labelled::start`]) trigger the owning workload's reconcile when an object
//! the operator placed changes or disappears: drift detection is event-driven, not a sweep.

use std::collections::BTreeMap;

use kube::runtime::reflector::ObjectRef;
use tokio::task::JoinHandle;

use crate::api::ResidentWorkload;
use crate::api::labels;

/// Retry delays of every watch of the operator (management cluster and members): 250 ms,
/// doubling up to 5 s, back to 250 ms after a minute without failures. kube's default reaches
/// 30 s, which left the caches up to a minute behind after an API server came back.
#[derive(Clone, Debug)]
pub struct WatchBackoff {
    next: std::time::Duration,
    last: Option<std::time::Instant>,
}

impl WatchBackoff {
    const MIN: std::time::Duration = std::time::Duration::from_millis(250);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);
    const RESET_AFTER: std::time::Duration = std::time::Duration::from_secs(60);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Self::MIN,
            last: None,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) > Self::RESET_AFTER)
        {
            self.next = Self::MIN;
        }
        self.last = Some(now);
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// The watches of one member; dropping them stops them.
pub struct Watches {
    /// The connection configuration they were started with.
    pub fingerprint: String,
    /// The client they watch with.
    pub client: kube::Client,
    tasks: Vec<JoinHandle<()>>,
    /// Watches of kinds workloads placed there beyond the well-known ones (by `apiVersion/kind`).
    kinds: std::sync::Mutex<BTreeMap<String, JoinHandle<()>>>,
    /// What this connection has checked already (shared by the reconciles).
    pub memo: std::sync::Arc<super::member::Memo>,
    /// The readiness its readiness watches keep.
    pub ready: std::sync::Arc<super::ready::States>,
}

impl Watches {
    /// Watch tasks started with the connection configuration `fingerprint`; `memo` is what the
    /// connection checked (its watches read it too), `ready` what its readiness watches keep.
    pub fn new(
        fingerprint: String,
        client: kube::Client,
        tasks: Vec<JoinHandle<()>>,
        memo: std::sync::Arc<super::member::Memo>,
        ready: std::sync::Arc<super::ready::States>,
    ) -> Self {
        Self {
            fingerprint,
            client,
            tasks,
            kinds: Default::default(),
            memo,
            ready,
        }
    }

    /// Starts the watch of `key` (an `apiVersion/kind`, and a namespace when it watches one)
    /// with `start`, unless it runs already. A watch that ended (its namespace was deleted) is
    /// started again.
    pub fn ensure(&self, key: &str, start: impl FnOnce() -> JoinHandle<()>) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        if kinds.get(key).is_none_or(JoinHandle::is_finished) {
            kinds.insert(key.to_string(), start());
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            t.abort();
        }
    }
}

/// The workload an object belongs to, from its labels (pure).
pub fn workload_of(
    object_labels: &BTreeMap<String, String>,
) -> Option<ObjectRef<ResidentWorkload>> {
    if object_labels.get(labels::MANAGED_BY).map(String::as_str) != Some(labels::MANAGED_BY_VALUE) {
        return None;
    }
    let name = object_labels.get(labels::WORKLOAD)?;
    let namespace = object_labels.get(labels::WORKLOAD_NAMESPACE)?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Why the workload `namespace/workload` may not write an object found on a member with these
/// labels, or `None` when it may (pure). An object carrying another workload's labels is never
/// taken over; one without any workload's labels (made by hand or by another tool) only when
/// the workload asks for it (`adopt`).
pub fn ownership_conflict(
    live_labels: &BTreeMap<String, String>,
    namespace: &str,
    workload: &str,
    adopt: bool,
) -> Option<String> {
    match workload_of(live_labels) {
        Some(r) if r.name == workload && r.namespace.as_deref() == Some(namespace) => None,
        Some(r) => Some(format!(
            "it belongs to ResidentWorkload {}/{}",
            r.namespace.unwrap_or_default(),
            r.name
        )),
        None if adopt => None,
        None => Some(
            "it exists and was not placed by the operator (set spec.adoptExisting to take it over)"
                .to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_of_another_workload_is_never_taken_over() {
        let ours = BTreeMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::WORKLOAD.to_string(), "a".to_string()),
            (labels::WORKLOAD_NAMESPACE.to_string(), "ns".to_string()),
        ]);
        assert_eq!(ownership_conflict(&ours, "ns", "a", false), None);
        let theirs = ownership_conflict(&ours, "ns", "b", true).unwrap();
        assert!(theirs.contains("ResidentWorkload ns/a"), "{theirs}");
        assert!(ownership_conflict(&ours, "other", "a", true).is_some());
        let hand_made = BTreeMap::from([("app".to_string(), "x".to_string())]);
        assert!(
            ownership_conflict(&hand_made, "ns", "a", false)
                .unwrap()
                .contains("adoptExisting")
        );
        assert_eq!(ownership_conflict(&hand_made, "ns", "a", true), None);
    }

    #[test]
    fn watch_retries_are_capped_at_five_seconds() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let delays: Vec<u64> = b.by_ref().take(7).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(std::time::Duration::from_millis(250)));
    }

    #[test]
    fn objects_map_to_their_workload_by_label() {
        let mut l = BTreeMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::WORKLOAD.to_string(), "store".to_string()),
            (
                labels::WORKLOAD_NAMESPACE.to_string(),
                "threat-intel".to_string(),
            ),
        ]);
        let r = workload_of(&l).unwrap();
        assert_eq!(
            (r.name.as_str(), r.namespace.as_deref()),
            ("store", Some("threat-intel"))
        );
        l.insert(labels::MANAGED_BY.into(), "someone-else".into());
        assert!(workload_of(&l).is_none());
        l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        l.remove(labels::WORKLOAD_NAMESPACE);
        assert!(workload_of(&l).is_none());
    }
}
