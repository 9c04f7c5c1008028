//! The member watches' lifetime, and which workload a placed object belongs to. The watches
//! themselves ([`super::labelled::start`]) trigger the owning workload's reconcile when an object
//! the operator placed changes or disappears: drift detection is event-driven, not a sweep.

use std::collections::BTreeMap;

use kube::runtime::reflector::ObjectRef;
use tokio::task::JoinHandle;

use crate::api::ResidentWorkload;
use crate::api::labels;

/// The watches of one member; dropping them stops them.
pub struct Watches {
    /// The connection configuration they were started with.
    pub fingerprint: String,
    tasks: Vec<JoinHandle<()>>,
}

impl Watches {
    /// Watch tasks started with the connection configuration `fingerprint`.
    pub fn new(fingerprint: String, tasks: Vec<JoinHandle<()>>) -> Self {
        Self { fingerprint, tasks }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        for t in &self.tasks {
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

#[cfg(test)]
mod tests {
    use super::*;

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
