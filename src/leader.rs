//! Leader election with a `coordination.k8s.io/v1` Lease, so several replicas can run and only
//! one reconciles and writes.
//!
//! A replica takes the Lease when nobody holds it or the holder stopped renewing it for
//! `lease_duration`; the holder renews it every `renew_period`. Writes use the Lease's
//! resourceVersion, so two replicas can never both win. A leader that cannot renew before its
//! Lease would expire stops (the process exits and is restarted as a follower); on SIGTERM the
//! leader releases the Lease so a follower takes over at once.
//!
//! Fencing: every write of the operator first asks the [`Fence`] whether this replica can still
//! prove it holds the Lease. A renewal that succeeds extends the fence to the moment the renewal
//! request was *sent* plus the Lease duration less a safety margin; each renewal attempt has a
//! deadline. So a leader that hangs, loses the management cluster or is stopped (SIGSTOP) for
//! longer than the Lease finds its fence expired when it runs again, and writes nothing before
//! another replica may have taken over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

/// Leader election settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the Lease (the operator's).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_period: Duration,
    /// How often a follower retries.
    pub retry_period: Duration,
    /// How long one renewal attempt may take before it counts as failed.
    pub renew_deadline: Duration,
}

impl Config {
    /// Defaults: Lease `residency-operator`, 15 s validity, renew every 5 s (each attempt within
    /// 4 s), retry every 2 s.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: "residency-operator".into(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
            retry_period: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(4),
        }
    }

    /// How long a successful renewal lets this replica write: the Lease duration less a margin
    /// (a renewal period, at least 1 s) for clock differences between replicas.
    pub fn write_validity(&self) -> Duration {
        let margin = self.renew_period.max(Duration::from_secs(1));
        self.lease_duration.saturating_sub(margin)
    }
}

/// Whether this replica may write: always without leader election; with it, only until the
/// validity of the last successful renewal ends.
#[derive(Debug)]
pub struct Fence {
    enabled: AtomicBool,
    origin: tokio::time::Instant,
    /// Milliseconds after `origin` until which writes are allowed.
    valid_until_ms: AtomicU64,
}

impl Default for Fence {
    fn default() -> Self {
        Self::open()
    }
}

impl Fence {
    /// A fence that always allows writes (no leader election).
    pub fn open() -> Self {
        Self {
            enabled: AtomicBool::new(false),
            origin: tokio::time::Instant::now(),
            valid_until_ms: AtomicU64::new(0),
        }
    }

    /// A fence that allows writes only after [`Fence::extend`].
    pub fn closed() -> Self {
        let f = Self::open();
        f.enabled.store(true, Ordering::SeqCst);
        f
    }

    /// Allows writes until `sent + validity` (`sent`: when the successful renewal was sent).
    pub fn extend(&self, sent: tokio::time::Instant, validity: Duration) {
        let until = sent.saturating_duration_since(self.origin) + validity;
        let ms = u64::try_from(until.as_millis()).unwrap_or(u64::MAX);
        self.valid_until_ms.fetch_max(ms, Ordering::SeqCst);
    }

    /// Forbids writes from now on.
    pub fn revoke(&self) {
        self.enabled.store(true, Ordering::SeqCst);
        self.valid_until_ms.store(0, Ordering::SeqCst);
    }

    /// Whether a write may be sent now.
    pub fn may_write(&self) -> bool {
        if !self.enabled.load(Ordering::SeqCst) {
            return true;
        }
        let now = tokio::time::Instant::now().saturating_duration_since(self.origin);
        u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
            < self.valid_until_ms.load(Ordering::SeqCst)
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Lease could not be read or written.
    #[error("lease {name}: {source}")]
    Api {
        /// Lease name.
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Another replica holds the Lease now, or it could not be renewed in time.
    #[error("lost leadership: {0}")]
    Lost(String),
}

impl Error {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Api { .. } => "lease_api",
            Error::Lost(_) => "leadership_lost",
        }
    }
}

/// What a replica should do given the current Lease (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nobody holds it, or the holder's Lease expired: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a valid Lease.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// Decides from the Lease spec, our identity and the time.
pub fn evaluate(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Verdict {
    let Some(spec) = spec else {
        return Verdict::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Verdict::Acquire;
    }
    if holder == identity {
        return Verdict::Renew;
    }
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0.as_second());
    match renewed {
        Some(at) if at + duration > now.as_second() => Verdict::Follow { holder },
        _ => Verdict::Acquire,
    }
}

fn api(client: &Client, cfg: &Config) -> Api<Lease> {
    Api::namespaced(client.clone(), &cfg.namespace)
}

fn spec_for(cfg: &Config, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|s| s.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            previous.and_then(|s| s.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..Default::default()
    }
}

/// One attempt to take or renew the Lease; `Ok(true)` when we hold it afterwards.
pub async fn try_acquire_or_renew(client: &Client, cfg: &Config) -> Result<bool, Error> {
    let api = api(client, cfg);
    let err = |source| Error::Api {
        name: cfg.name.clone(),
        source,
    };
    let now = Timestamp::now();
    let current = api.get_opt(&cfg.name).await.map_err(err)?;
    match evaluate(
        current.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
    ) {
        Verdict::Follow { .. } => Ok(false),
        Verdict::Acquire | Verdict::Renew => {
            let result = match current {
                None => {
                    let mut lease = Lease {
                        spec: Some(spec_for(cfg, None, now)),
                        ..Default::default()
                    };
                    lease.metadata.name = Some(cfg.name.clone());
                    api.create(&PostParams::default(), &lease).await
                }
                Some(mut lease) => {
                    lease.spec = Some(spec_for(cfg, lease.spec.as_ref(), now));
                    // the resourceVersion in `lease` makes this a compare-and-swap
                    api.replace(&cfg.name, &PostParams::default(), &lease).await
                }
            };
            match result {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(err(e)),
            }
        }
    }
}

/// One attempt within the renewal deadline; extends `fence` when it succeeded.
async fn attempt(client: &Client, cfg: &Config, fence: &Fence) -> Result<bool, Error> {
    let sent = tokio::time::Instant::now();
    match tokio::time::timeout(cfg.renew_deadline, try_acquire_or_renew(client, cfg)).await {
        Ok(Ok(true)) => {
            fence.extend(sent, cfg.write_validity());
            Ok(true)
        }
        Ok(other) => other,
        Err(_) => Err(Error::Lost(format!(
            "no answer from the management cluster within {:?}",
            cfg.renew_deadline
        ))),
    }
}

/// Waits until this replica holds the Lease; `fence` then allows writes.
pub async fn acquire(client: &Client, cfg: &Config, fence: &Fence) {
    let mut announced = false;
    loop {
        match attempt(client, cfg, fence).await {
            Ok(true) => {
                info!(identity = %cfg.identity, lease = %cfg.name, "became the leader");
                return;
            }
            Ok(false) => {
                if !announced {
                    info!(identity = %cfg.identity, "another replica leads; standing by");
                    announced = true;
                }
            }
            Err(e) => warn!(error = %e, "leader election: cannot read or write the lease"),
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
}

/// Renews the Lease until it cannot: returns why leadership was lost, with `fence` revoked.
/// A failed renewal is retried until the fence expires; each attempt has a deadline.
pub async fn keep(client: &Client, cfg: &Config, fence: &Fence) -> Error {
    loop {
        tokio::time::sleep(cfg.renew_period).await;
        if !fence.may_write() {
            // e.g. the process was stopped for longer than the Lease
            fence.revoke();
            return Error::Lost("the lease may have expired before it was renewed".into());
        }
        match attempt(client, cfg, fence).await {
            Ok(true) => {}
            Ok(false) => {
                fence.revoke();
                return Error::Lost("another replica holds the lease".into());
            }
            Err(e) => {
                warn!(error = %e, "could not renew the lease");
                if !fence.may_write() {
                    fence.revoke();
                    return Error::Lost(format!("renewal failed for too long: {e}"));
                }
            }
        }
    }
}

/// Gives the Lease up (on shutdown), so a follower takes over without waiting for it to expire.
pub async fn release(client: &Client, cfg: &Config) {
    let api = api(client, cfg);
    if let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await {
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(cfg.identity.as_str());
        if ours {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
                spec.acquire_time = None;
            }
            match api
                .replace(&lease.name_any(), &PostParams::default(), &lease)
                .await
            {
                Ok(_) => info!("released the lease"),
                Err(e) => warn!(error = %e, "could not release the lease"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(ts(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn no_lease_or_no_holder_is_acquired() {
        assert_eq!(evaluate(None, "a", ts(100)), Verdict::Acquire);
        assert_eq!(
            evaluate(Some(&lease(None, 100, 15)), "a", ts(100)),
            Verdict::Acquire
        );
        assert_eq!(
            evaluate(Some(&lease(Some(""), 100, 15)), "a", ts(100)),
            Verdict::Acquire
        );
    }

    #[test]
    fn a_valid_lease_of_another_is_followed_and_an_expired_one_taken() {
        let l = lease(Some("b"), 100, 15);
        assert_eq!(
            evaluate(Some(&l), "a", ts(110)),
            Verdict::Follow { holder: "b".into() }
        );
        assert_eq!(evaluate(Some(&l), "a", ts(115)), Verdict::Acquire);
        assert_eq!(evaluate(Some(&l), "b", ts(200)), Verdict::Renew);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_when_the_validity_of_the_last_renewal_ends() {
        assert!(Fence::open().may_write());
        let f = Fence::closed();
        assert!(!f.may_write(), "no write before the lease is held");
        let cfg = Config::new("ns", "a");
        assert_eq!(cfg.write_validity(), Duration::from_secs(10));
        let sent = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await; // the renewal took 3 s
        f.extend(sent, cfg.write_validity());
        assert!(f.may_write());
        // stopped (or hung) for longer than the lease: counted from when the renewal was sent
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(!f.may_write());
        f.extend(tokio::time::Instant::now(), cfg.write_validity());
        assert!(f.may_write());
        f.revoke();
        assert!(!f.may_write());
    }

    #[test]
    fn transitions_count_changes_of_holder() {
        let cfg = Config::new("ns", "a");
        let theirs = LeaseSpec {
            lease_transitions: Some(3),
            ..lease(Some("b"), 0, 15)
        };
        assert_eq!(
            spec_for(&cfg, Some(&theirs), ts(50)).lease_transitions,
            Some(4)
        );
        let ours = spec_for(&cfg, Some(&theirs), ts(50));
        let renewed = spec_for(&cfg, Some(&ours), ts(60));
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(ts(50))));
        assert_eq!(renewed.renew_time, Some(MicroTime(ts(60))));
    }
}
