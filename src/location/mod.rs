//! Where things are, proven from what a member's API server says about its nodes (pure: no I/O).
//!
//! - [`topology`]: a member's nodes as location evidence: each node's region (its
//!   `topology.kubernetes.io/region` label, or its zone placed in a region through the member's
//!   other nodes), and the zone and region its `spec.providerID` encodes (AWS, GCE).
//! - [`affinity`]: Kubernetes node selector semantics (every key, every operator), to find the
//!   nodes a PersistentVolume's node affinity or a StorageClass's `allowedTopologies` names.
//! - [`catalogue`]: the public clouds' regions and the country each is in
//!   (`data/cloud-regions.csv`), to check a MemberCluster's declared country against the regions
//!   it attests.
//! - [`attest`]: a member's location attestation (catalogue, node regions, provider IDs).
//! - [`evidence`]: where one workload's copy on a member is: its Pods' nodes and its volumes,
//!   each inside the attested regions, outside them, vouched for by the member, or unverifiable.
//!
//! The watch caches that feed these functions are in [`crate::fleet::topology`].

pub mod affinity;
pub mod attest;
pub mod catalogue;
pub mod evidence;
pub mod topology;

#[cfg(test)]
mod proptests;
