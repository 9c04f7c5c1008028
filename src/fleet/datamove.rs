//! Thin I/O of a data move on one member: the move's Pods, key Secrets and claims, the
//! workload's claims and writers, and the fence patches. What to do is decided by
//! [`crate::datamove`] and the controller; every write here is fenced and counted like the
//! member's other writes, and nothing is written after a failed read.

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, LogParams, Patch, PatchParams};
use serde_json::Value;

use super::member::{Cause, Member, MemberError};
use crate::api::{FIELD_MANAGER, labels};
use crate::datamove::objects::MOVE_LABEL;
use crate::desired;

fn gone(e: &MemberError) -> bool {
    matches!(&e.source, Cause::Api(kube::Error::Api(s)) if s.code == 404)
}

impl Member<'_> {
    fn dynamic(&self, namespace: &str, kind: &str) -> Result<Api<DynamicObject>, MemberError> {
        let ar = crate::kinds::PLACEABLE
            .iter()
            .find(|k| k.kind == kind)
            .and_then(|k| desired::api_resource(&k.api_version(), kind))
            .ok_or_else(|| MemberError {
                cluster: self.name.to_string(),
                action: format!("find the API of {kind}"),
                source: Cause::Kind(kind.to_string()),
            })?;
        Ok(Api::namespaced_with(self.client.clone(), namespace, &ar))
    }

    /// The move's Pods on this member.
    pub async fn move_pods(&self, namespace: &str, move_id: &str) -> Result<Vec<Pod>, MemberError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!("{MOVE_LABEL}={move_id}");
        Ok(pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(format!("list the Pods of move {move_id}")))?
            .items)
    }

    /// The log of a (finished) Pod.
    pub async fn pod_log(&self, namespace: &str, name: &str) -> Result<String, MemberError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        pods.logs(name, &LogParams::default())
            .await
            .map_err(self.err(format!("read the log of Pod {name}")))
    }

    /// Creates `object` (a Pod, Secret or PersistentVolumeClaim); one that exists already is
    /// left as it is.
    pub async fn create_if_missing(
        &self,
        namespace: &str,
        object: &Value,
    ) -> Result<(), MemberError> {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let api = self.dynamic(namespace, &kind)?;
        let obj: DynamicObject =
            serde_json::from_value(object.clone()).map_err(|e| MemberError {
                cluster: self.name.to_string(),
                action: format!("build {kind} {name}"),
                source: Cause::Api(kube::Error::SerdeError(e)),
            })?;
        match self
            .send(
                format!("create {kind} {name}"),
                "create",
                api.create(&Default::default(), &obj),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(MemberError {
                source: Cause::Api(kube::Error::Api(s)),
                ..
            }) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Writes a Secret whole (server-side apply, forced): the move's keys when they are new.
    pub async fn put_secret(&self, namespace: &str, secret: &Value) -> Result<(), MemberError> {
        let name = secret["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        self.send(
            format!("apply Secret {name}"),
            "apply",
            api.patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(secret),
            ),
        )
        .await
        .map(|_| ())
    }

    /// Whether the Secret exists.
    pub async fn secret_exists(&self, namespace: &str, name: &str) -> Result<bool, MemberError> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        api.get_metadata_opt(name)
            .await
            .map(|s| s.is_some())
            .map_err(self.err(format!("get Secret {name}")))
    }

    /// Deletes one Pod (a failed mover, or one that must start again with new keys).
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), MemberError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.send_unless_gone(
            format!("delete Pod {name}"),
            "delete",
            api.delete(name, &DeleteParams::background()),
        )
        .await
        .map(|_| ())
    }

    /// Deletes the move's Pods and key Secrets on this member (never a volume).
    pub async fn delete_move_objects(
        &self,
        namespace: &str,
        move_id: &str,
    ) -> Result<(), MemberError> {
        let selector = format!("{MOVE_LABEL}={move_id}");
        let lp = ListParams::default().labels(&selector);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        self.send(
            format!("delete the Pods of move {move_id}"),
            "delete",
            pods.delete_collection(&DeleteParams::background(), &lp),
        )
        .await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        self.send(
            format!("delete the keys of move {move_id}"),
            "delete",
            secrets.delete_collection(&DeleteParams::background(), &lp),
        )
        .await?;
        Ok(())
    }

    /// The workload's claims in use here (not retained), sorted by name.
    pub async fn workload_claims(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Vec<PersistentVolumeClaim>, MemberError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{},!{}",
            desired::workload_selector(namespace, workload),
            labels::RETAINED
        );
        let mut items = pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(format!("list PersistentVolumeClaims ({selector})")))?
            .items;
        items.sort_by_key(|p| p.name_any());
        Ok(items)
    }

    /// Pods other than the move's that still run with one of `claims` mounted: the writers a
    /// fence waits for.
    pub async fn pods_mounting(
        &self,
        namespace: &str,
        claims: &[String],
    ) -> Result<Vec<String>, MemberError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default())
            .await
            .map_err(self.err("list Pods (are the writers stopped?)".to_string()))?;
        Ok(list
            .items
            .iter()
            .filter(|p| !p.labels().contains_key(MOVE_LABEL))
            .filter(|p| {
                !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
            })
            .filter(|p| {
                p.spec
                    .iter()
                    .flat_map(|s| s.volumes.iter().flatten())
                    .any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| claims.contains(&c.claim_name))
                    })
            })
            .map(|p| p.name_any())
            .collect())
    }

    /// The live object, `None` when gone.
    pub async fn live(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
    ) -> Result<Option<Value>, MemberError> {
        let api = self.dynamic(namespace, kind)?;
        let live = api
            .get_opt(name)
            .await
            .map_err(self.err(format!("get {kind} {name}")))?;
        Ok(live.map(|o| serde_json::to_value(o).unwrap_or_default()))
    }

    /// Applies a fence (or its restore) patch; an object gone meanwhile is no error.
    pub async fn patch_writers(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        patch: &Value,
    ) -> Result<(), MemberError> {
        let api = self.dynamic(namespace, kind)?;
        match self
            .send(
                format!("patch {kind} {name} ({patch})"),
                "patch",
                api.patch(name, &PatchParams::default(), &Patch::Merge(patch)),
            )
            .await
        {
            Err(e) if gone(&e) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}
