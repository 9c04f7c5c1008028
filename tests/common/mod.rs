//! Test support: clients for the clusters of a fleet named by the environment.
//!
//! The same tests run against the local fleet (`tests/testenv/fleet.sh`) or against kind
//! clusters: they read only these variables.
//!
//! - `RESIDENCY_KUBECONFIG` (or `KUBECONFIG`): a kubeconfig with one context per cluster
//! - `RESIDENCY_MGMT_CONTEXT` (default `mgmt`): the management cluster's context
//! - `RESIDENCY_MEMBER_REGIONS`: `context=region,...`, e.g. `zrh-1=eu-central-2,msk-1=ru-central-1`
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A member cluster of the fleet under test.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its kubeconfig context name.
    pub context: String,
    /// The `topology.kubernetes.io/region` its nodes and volumes must carry.
    pub region: String,
}

/// The fleet under test.
pub struct Fleet {
    kubeconfig: Kubeconfig,
    /// The management cluster's context.
    pub mgmt: String,
    /// The member clusters.
    pub members: Vec<Member>,
}

const HOW: &str = "run the tests with tests/run (it starts the local fleet), or start it with \
                   tests/testenv/fleet.sh up && eval \"$(tests/testenv/fleet.sh env)\"";

impl Fleet {
    /// Reads the fleet from the environment; panics with instructions when it is not set.
    pub fn from_env() -> Fleet {
        let path = std::env::var("RESIDENCY_KUBECONFIG")
            .or_else(|_| std::env::var("KUBECONFIG"))
            .unwrap_or_else(|_| panic!("RESIDENCY_KUBECONFIG is not set: {HOW}"));
        let kubeconfig = Kubeconfig::read_from(&path)
            .unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}; {HOW}"));
        let mgmt = std::env::var("RESIDENCY_MGMT_CONTEXT").unwrap_or_else(|_| "mgmt".into());
        let regions = std::env::var("RESIDENCY_MEMBER_REGIONS")
            .unwrap_or_else(|_| panic!("RESIDENCY_MEMBER_REGIONS is not set: {HOW}"));
        let members = regions
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|pair| {
                let (context, region) = pair.split_once('=').unwrap_or_else(|| {
                    panic!("RESIDENCY_MEMBER_REGIONS entry '{pair}' is not context=region")
                });
                Member {
                    context: context.to_string(),
                    region: region.to_string(),
                }
            })
            .collect();
        Fleet {
            kubeconfig,
            mgmt,
            members,
        }
    }

    /// A client for one context of the kubeconfig.
    pub async fn client(&self, context: &str) -> Client {
        let options = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let config = Config::from_custom_kubeconfig(self.kubeconfig.clone(), &options)
            .await
            .unwrap_or_else(|e| panic!("context {context}: {e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("context {context}: {e}"))
    }

    /// The management cluster's client.
    pub async fn mgmt_client(&self) -> Client {
        self.client(&self.mgmt).await
    }
}

/// Polls `check` every 250 ms until it returns `Ok`, or panics after `timeout` with the last
/// error it returned (so a failure says what was still wrong).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= timeout => {
                panic!("{what}: not reached within {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A name unique to this test run, for namespaces and cluster-scoped objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{:05x}",
        std::process::id() % 100_000,
        nanos % 0xfffff
    )
}
