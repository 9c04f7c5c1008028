//! The fleet of member clusters: connections and location attestation.

pub mod attest;
pub mod kubeconfig;
pub mod member;
pub mod registry;

/// Identifies the operator to API servers (`User-Agent: residency-operator/<version>`), so its
/// requests can be told apart in audit logs and API server metrics.
pub fn identify(mut config: kube::Config) -> kube::Config {
    let agent = concat!("residency-operator/", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = axum::http::HeaderValue::from_str(agent) {
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
    config
}
