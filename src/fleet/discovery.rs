//! Which kinds each member serves, and where: the API resource of an `apiVersion`/`kind` from the
//! member's discovery, cached per member. The well-known kinds ([`crate::kinds::PLACEABLE`])
//! resolve without asking. A kind the member does not serve is remembered for a short while only,
//! so a CRD installed there is picked up by the next reconcile after it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;

/// What a member's discovery says of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// Namespaced, at this resource.
    Namespaced(ApiResource),
    /// Served, but cluster-scoped: never placed.
    ClusterScoped,
    /// Not served (no such group, version or kind).
    NotServed,
}

/// How long an answer is kept: a kind not served is asked again soon (its CRD may be installed
/// any moment); a served one rarely changes.
const NOT_SERVED_TTL: Duration = Duration::from_secs(15);
const SERVED_TTL: Duration = Duration::from_secs(300);

/// Member, apiVersion, kind.
type Key = (String, String, String);

/// The discovery answers of every member.
#[derive(Default)]
pub struct Discovery {
    cache: Mutex<HashMap<Key, (Instant, Resolved)>>,
}

impl Discovery {
    /// Where `apiVersion`/`kind` is served on `cluster`; asks the member when the answer is not
    /// known (or too old). Errors are the member's (unreachable, refused), never "not served".
    pub async fn resolve(
        &self,
        cluster: &str,
        client: &Client,
        api_version: &str,
        kind: &str,
    ) -> Result<Resolved, kube::Error> {
        if let Some(ar) = crate::desired::api_resource(api_version, kind) {
            return Ok(Resolved::Namespaced(ar));
        }
        let key = (
            cluster.to_string(),
            api_version.to_string(),
            kind.to_string(),
        );
        if let Some((at, r)) = self.lock().get(&key).cloned() {
            let ttl = if r == Resolved::NotServed {
                NOT_SERVED_TTL
            } else {
                SERVED_TTL
            };
            if at.elapsed() < ttl {
                return Ok(r);
            }
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let resolved = match kube::discovery::pinned_kind(client, &gvk).await {
            Ok((ar, caps)) if caps.scope == Scope::Namespaced => Resolved::Namespaced(ar),
            Ok(_) => Resolved::ClusterScoped,
            Err(kube::Error::Api(s)) if s.code == 404 => Resolved::NotServed,
            Err(kube::Error::Discovery(_)) => Resolved::NotServed,
            Err(e) => return Err(e),
        };
        self.lock().insert(key, (Instant::now(), resolved.clone()));
        Ok(resolved)
    }

    /// Forgets what `cluster` serves (its connection changed, or an API call found a resource
    /// gone).
    pub fn forget(&self, cluster: &str) {
        self.lock().retain(|(c, _, _), _| c != cluster);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (Instant, Resolved)>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}
