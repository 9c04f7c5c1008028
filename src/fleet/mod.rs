//! The fleet of member clusters: connections and location attestation.

pub mod attest;
pub mod kubeconfig;
pub mod member;
pub mod registry;
