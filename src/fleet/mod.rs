//! The fleet of member clusters: connections, member I/O and the member watches (the caches
//! inventory, drift and location evidence read).

pub mod datamove;
pub mod discovery;
pub mod kubeconfig;
pub mod labelled;
pub mod member;
pub mod prevention;
pub mod ready;
pub mod registry;
pub mod topology;
pub mod watch;

/// Identifies the operator to API servers (`User-Agent: residency-operator/<version> (<instance>)`),
/// so its requests, and which replica sent them, can be told apart in audit logs.
pub fn identify(mut config: kube::Config, instance: &str) -> kube::Config {
    let agent = format!(
        "residency-operator/{} ({instance})",
        env!("CARGO_PKG_VERSION")
    );
    if let Ok(value) = axum::http::HeaderValue::from_str(&agent) {
        config.headers.push((axum::http::header::USER_AGENT, value));
    }
    config
}
