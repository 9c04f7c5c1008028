//! Thin I/O for the members' admission policies (`admission` decides what they hold): read,
//! create, replace and delete the operator's ValidatingAdmissionPolicies and bindings, and the
//! watch that notices when one of them changes or disappears on a member.

use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use super::member::{Member, MemberError};
use crate::admission::{self, Live, MEMBER_LABEL, Written};
use crate::api::{MemberCluster, labels};

/// The two kinds of admission objects the operator keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AdmissionKind {
    /// `ValidatingAdmissionPolicy`.
    Policy,
    /// `ValidatingAdmissionPolicyBinding`.
    Binding,
}

impl AdmissionKind {
    fn resource(self) -> ApiResource {
        match self {
            AdmissionKind::Policy => ApiResource::erase::<ValidatingAdmissionPolicy>(&()),
            AdmissionKind::Binding => ApiResource::erase::<ValidatingAdmissionPolicyBinding>(&()),
        }
    }

    /// The kind's name.
    pub fn kind(self) -> &'static str {
        match self {
            AdmissionKind::Policy => "ValidatingAdmissionPolicy",
            AdmissionKind::Binding => "ValidatingAdmissionPolicyBinding",
        }
    }
}

/// What the member holds under one of the operator's admission names.
pub struct Found {
    /// The parts [`admission::step`] compares.
    pub live: Live,
    /// Its resourceVersion (for a replace).
    pub resource_version: String,
}

fn live_of(cluster: &str, o: &DynamicObject) -> Found {
    let l = o.labels();
    Found {
        live: Live {
            uid: o.uid().unwrap_or_default(),
            generation: o.metadata.generation.unwrap_or_default(),
            hash: o.annotations().get(admission::HASH_ANNOTATION).cloned(),
            labelled: l.get(labels::MANAGED_BY).map(String::as_str)
                == Some(labels::MANAGED_BY_VALUE)
                && l.get(MEMBER_LABEL).map(String::as_str) == Some(cluster),
        },
        resource_version: o.resource_version().unwrap_or_default(),
    }
}

fn written(o: &DynamicObject) -> Written {
    Written {
        uid: o.uid().unwrap_or_default(),
        generation: o.metadata.generation.unwrap_or_default(),
    }
}

impl Member<'_> {
    fn admission_api(&self, kind: AdmissionKind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &kind.resource())
    }

    /// The admission object `name` of `kind` on the member, if any.
    pub async fn admission_get(
        &self,
        kind: AdmissionKind,
        name: &str,
    ) -> Result<Option<Found>, MemberError> {
        let found = self
            .admission_api(kind)
            .get_opt(name)
            .await
            .map_err(self.err(format!("get {} {name}", kind.kind())))?;
        Ok(found.map(|o| live_of(self.name, &o)))
    }

    /// Creates `object` (generated JSON), or replaces the live one whole when
    /// `resource_version` is given; returns what the member then holds.
    pub async fn admission_write(
        &self,
        kind: AdmissionKind,
        object: &serde_json::Value,
        resource_version: Option<&str>,
    ) -> Result<Written, MemberError> {
        let mut obj: DynamicObject =
            serde_json::from_value(object.clone()).map_err(|e| MemberError {
                cluster: self.name.to_string(),
                action: format!("build {}", kind.kind()),
                source: super::member::Cause::Api(kube::Error::SerdeError(e)),
            })?;
        let name = obj.name_any();
        let api = self.admission_api(kind);
        let pp = PostParams {
            field_manager: Some(crate::api::FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let done = match resource_version {
            None => {
                self.send(
                    format!("create {} {name}", kind.kind()),
                    "apply",
                    api.create(&pp, &obj),
                )
                .await?
            }
            Some(rv) => {
                obj.metadata.resource_version = Some(rv.to_string());
                self.send(
                    format!("replace {} {name}", kind.kind()),
                    "apply",
                    api.replace(&name, &pp, &obj),
                )
                .await?
            }
        };
        Ok(written(&done))
    }

    /// Whether the member's API server now accepts data of `countries`: a dry-run create (never
    /// stored) of a ConfigMap labelled with them in `default` (or the joined identity's namespace). `Ok(false)` when one of the
    /// operator's admission policies refuses it (the API server has not caught up with the
    /// last write yet).
    pub async fn admission_accepts(&self, countries: &[String]) -> Result<bool, MemberError> {
        // in the identity's own namespace when `join` made it (it may create there only)
        let namespace = self
            .access
            .as_ref()
            .map_or("default", |a| a.namespace.as_str());
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), namespace);
        let probe: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {
                "generateName": "residency-admission-probe-",
                "labels": countries.iter().map(|c| (labels::country(c), "true")).collect::<std::collections::BTreeMap<_, _>>(),
            }
        }))
        .unwrap_or_default();
        let pp = PostParams {
            dry_run: true,
            field_manager: Some(crate::api::FIELD_MANAGER.to_string()),
        };
        match api.create(&pp, &probe).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s))
                if s.code == 403
                    && s.message
                        .contains("ValidatingAdmissionPolicy 'residency.io-") =>
            {
                Ok(false)
            }
            Err(e) => Err(MemberError {
                cluster: self.name.to_string(),
                action: "dry-run create of an admission probe ConfigMap".into(),
                source: super::member::Cause::Api(e),
            }),
        }
    }

    /// Deletes the admission object `name` (gone already is fine).
    pub async fn admission_delete(
        &self,
        kind: AdmissionKind,
        name: &str,
    ) -> Result<(), MemberError> {
        let api = self.admission_api(kind);
        self.send_unless_gone(
            format!("delete {} {name}", kind.kind()),
            "delete",
            api.delete(name, &DeleteParams::default()),
        )
        .await?;
        Ok(())
    }
}

/// Watches the metadata of the operator's admission objects on a member and asks for the
/// member's reconcile whenever one changes or disappears (so a policy deleted by hand is put
/// back at once, not at the next probe).
pub fn watch(
    client: Client,
    cluster: &str,
    tx: Sender<ObjectRef<MemberCluster>>,
) -> Vec<JoinHandle<()>> {
    [AdmissionKind::Policy, AdmissionKind::Binding]
        .into_iter()
        .map(|kind| {
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(client.clone(), &kind.resource());
            let config = watcher::Config::default().labels(&format!(
                "{}={}",
                labels::MANAGED_BY,
                labels::MANAGED_BY_VALUE
            ));
            let stream = watcher(api, config).backoff(super::watch::WatchBackoff::default());
            let (tx, cluster) = (tx.clone(), cluster.to_string());
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    let relevant = matches!(
                        event,
                        Ok(watcher::Event::Apply(_)
                            | watcher::Event::Delete(_)
                            | watcher::Event::InitDone)
                    );
                    if relevant && tx.send(ObjectRef::new(&cluster)).await.is_err() {
                        return; // the controller is gone
                    }
                }
            })
        })
        .collect()
}
