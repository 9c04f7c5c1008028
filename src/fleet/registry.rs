//! The operator's connections to its member clusters.
//!
//! The cluster controller connects and probes each member and records the result here; the
//! workload controller only takes clients of members that the last probe reached. A member that
//! is not reachable gets no writes at all.

use std::collections::HashMap;
use std::sync::RwLock;

use kube::Client;

/// What the operator knows about one member's connection.
#[derive(Clone)]
pub struct Connection {
    /// The client, once a connection could be configured.
    pub client: Option<Client>,
    /// Whether the last probe reached the API server.
    pub reachable: bool,
    /// Identifies the configuration the client was built from (Secret resourceVersion, spec
    /// generation), so a changed Secret rebuilds it.
    pub fingerprint: String,
    /// Why the member is not reachable, when it is not.
    pub last_error: Option<String>,
    /// The watches of placed objects on the member (drift detection), while connected.
    pub watches: Option<std::sync::Arc<super::watch::Watches>>,
    /// The identity `join` made (the kubeconfig Secret says so), when it is one: the operator
    /// binds itself to its workloads role in each namespace it places into.
    pub access: Option<Access>,
    /// Whether the identity may list Secrets in every namespace (else Secrets are inventoried
    /// in the workloads' namespaces only).
    pub secrets_cluster_wide: bool,
}

/// A member identity made by `join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// Namespace of its ServiceAccount.
    pub namespace: String,
    /// Its ServiceAccount.
    pub service_account: String,
    /// The ClusterRole it binds itself to in workload namespaces.
    pub workload_role: String,
}

/// Every member connection, by MemberCluster name.
#[derive(Default)]
pub struct Fleet {
    members: RwLock<HashMap<String, Connection>>,
}

impl Fleet {
    /// A client for `name`, only when the last probe reached it.
    pub fn client(&self, name: &str) -> Option<Client> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members
            .get(name)
            .filter(|c| c.reachable)
            .and_then(|c| c.client.clone())
    }

    /// The recorded connection of `name`.
    pub fn get(&self, name: &str) -> Option<Connection> {
        let members = self.members.read().unwrap_or_else(|e| e.into_inner());
        members.get(name).cloned()
    }

    /// Records the connection state of `name`.
    pub fn set(&self, name: &str, connection: Connection) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        members.insert(name.to_string(), connection);
    }

    /// Marks `name` unreachable (e.g. after a failed call), keeping its client.
    pub fn mark_unreachable(&self, name: &str, error: String) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = members.get_mut(name) {
            c.reachable = false;
            c.last_error = Some(error);
        }
    }

    /// Forgets `name` (its MemberCluster was deleted).
    pub fn remove(&self, name: &str) {
        let mut members = self.members.write().unwrap_or_else(|e| e.into_inner());
        members.remove(name);
    }
}
