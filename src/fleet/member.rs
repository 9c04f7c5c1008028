//! Thin I/O against one member cluster: apply a workload's objects, read their readiness, evict
//! them. Every decision about *what* to do is made by the caller from pure functions; this
//! module only talks to the API server, and never writes after a failed read.

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::api::labels;
use crate::api::resident_workload::ObjectStatus;
use crate::api::{FIELD_MANAGER, resident_workload::VolumePolicy};
use crate::desired::{self, DesiredObject, HASH_ANNOTATION};
use crate::drift::{self, FieldDrift};
use crate::metrics::Metrics;
use crate::readiness;

/// A failed call to a member's API server.
#[derive(Debug, thiserror::Error)]
#[error("member {cluster}: {action}: {source}")]
pub struct MemberError {
    /// MemberCluster name.
    pub cluster: String,
    /// What was being done, e.g. "apply Deployment malware-analysis".
    pub action: String,
    /// The API error.
    #[source]
    pub source: kube::Error,
}

impl MemberError {
    /// Stable category.
    pub fn category(&self) -> &'static str {
        match &self.source {
            kube::Error::Api(s) if s.code == 403 || s.code == 401 => "member_forbidden",
            kube::Error::Api(s) if s.code == 422 || s.code == 400 => "member_rejected",
            kube::Error::Api(_) => "member_api",
            _ => "member_unreachable",
        }
    }

    /// True when the API server could not be reached at all (as opposed to refusing a request).
    pub fn is_connectivity(&self) -> bool {
        !matches!(self.source, kube::Error::Api(_))
    }
}

/// The drifted fields of one placed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectDrift {
    /// Kind of the object.
    pub kind: String,
    /// Name of the object.
    pub name: String,
    /// What differs.
    pub fields: Vec<FieldDrift>,
}

/// One member cluster, as seen by the workload controller.
pub struct Member<'a> {
    /// MemberCluster name.
    pub name: &'a str,
    /// A client of a member the last probe reached.
    pub client: Client,
    /// Where writes are counted.
    pub metrics: &'a Metrics,
}

fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

impl Member<'_> {
    fn err(&self, action: String) -> impl FnOnce(kube::Error) -> MemberError + '_ {
        move |source| MemberError {
            cluster: self.name.to_string(),
            action,
            source,
        }
    }

    fn api(&self, obj: &DesiredObject) -> Api<DynamicObject> {
        // desired objects are built only from ALLOWED_KINDS, which all have a resource
        let ar = desired::api_resource(&obj.api_version, &obj.kind).unwrap_or_else(|| {
            kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&())
        });
        Api::namespaced_with(self.client.clone(), &obj.namespace, &ar)
    }

    /// Creates the namespace when it is missing (never updates someone else's namespace).
    pub async fn ensure_namespace(&self, namespace: &str) -> Result<(), MemberError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let found = api
            .get_opt(namespace)
            .await
            .map_err(self.err(format!("get Namespace {namespace}")))?;
        if found.is_none() {
            api.patch(
                namespace,
                &params(),
                &Patch::Apply(desired::namespace_object(namespace)),
            )
            .await
            .map_err(self.err(format!("create Namespace {namespace}")))?;
            self.metrics.wrote(self.name, "apply");
        }
        Ok(())
    }

    /// Applies every object that is missing, whose live copy does not carry the desired hash
    /// (the spec changed), or that drifted (a field the operator applies has another value);
    /// an object that matches is not written, so a steady fleet sees no writes. Returns the
    /// readiness of each object and the drift that was corrected. `placed_before` names the
    /// objects recorded on this member: one of them missing was deleted out of band.
    pub async fn place(
        &self,
        objects: &[DesiredObject],
        placed_before: &[(String, String)],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
    ) -> Result<(Vec<ObjectStatus>, Vec<ObjectDrift>), MemberError> {
        let mut out = Vec::with_capacity(objects.len());
        let mut corrected = Vec::new();
        for obj in objects {
            let api = self.api(obj);
            let what = format!("{} {}", obj.kind, obj.name);
            let live = api
                .get_opt(&obj.name)
                .await
                .map_err(self.err(format!("get {what}")))?;
            let live_hash = live
                .as_ref()
                .and_then(|l| l.annotations().get(HASH_ANNOTATION).cloned());
            let retained = live
                .as_ref()
                .is_some_and(|l| l.labels().contains_key(labels::RETAINED));
            let drift = match &live {
                None if placed_before.contains(&(obj.kind.clone(), obj.name.clone())) => {
                    vec![FieldDrift {
                        path: drift::OBJECT.into(),
                        desired: "present".into(),
                        live: "<absent>".into(),
                    }]
                }
                Some(l) if live_hash.as_deref() == Some(obj.hash.as_str()) && !retained => {
                    let value = serde_json::to_value(l).unwrap_or_default();
                    drift::compare(&obj.object, &value, &ignore(&obj.kind, &obj.name))
                }
                _ => Vec::new(),
            };
            let up_to_date =
                live.is_some() && live_hash.as_deref() == Some(obj.hash.as_str()) && !retained;
            let live = match live {
                Some(l) if up_to_date && drift.is_empty() => l,
                _ => {
                    if retained {
                        // a retained volume is back in use here: it is no longer a leftover
                        let unlabel = json!({"metadata": {"labels": {labels::RETAINED: null}}});
                        api.patch(&obj.name, &PatchParams::default(), &Patch::Merge(unlabel))
                            .await
                            .map_err(self.err(format!("unlabel retained {what}")))?;
                        self.metrics.wrote(self.name, "label");
                    }
                    let applied = api
                        .patch(&obj.name, &params(), &Patch::Apply(&obj.object))
                        .await
                        .map_err(self.err(format!("apply {what}")))?;
                    self.metrics.wrote(self.name, "apply");
                    applied
                }
            };
            if !drift.is_empty() {
                corrected.push(ObjectDrift {
                    kind: obj.kind.clone(),
                    name: obj.name.clone(),
                    fields: drift,
                });
            }
            let value = serde_json::to_value(&live).unwrap_or_default();
            let r = readiness::evaluate(&obj.kind, &value);
            out.push(ObjectStatus {
                kind: obj.kind.clone(),
                name: obj.name.clone(),
                ready: r.ready,
                message: r.message,
            });
        }
        Ok((out, corrected))
    }

    /// Reads the objects and reports how they differ from `objects`, writing nothing (for
    /// copies the operator may not touch, e.g. of a workload now governed only by Audit
    /// policies). A missing object is drift too.
    pub async fn observe(
        &self,
        objects: &[DesiredObject],
        ignore: &(dyn Fn(&str, &str) -> Vec<String> + Sync),
    ) -> Result<Vec<ObjectDrift>, MemberError> {
        let mut out = Vec::new();
        for obj in objects {
            let live = self
                .api(obj)
                .get_opt(&obj.name)
                .await
                .map_err(self.err(format!("get {} {}", obj.kind, obj.name)))?;
            let fields = match live {
                None => vec![FieldDrift {
                    path: drift::OBJECT.into(),
                    desired: "present".into(),
                    live: "<absent>".into(),
                }],
                Some(l) => {
                    let value = serde_json::to_value(&l).unwrap_or_default();
                    drift::compare(&obj.object, &value, &ignore(&obj.kind, &obj.name))
                }
            };
            if !fields.is_empty() {
                out.push(ObjectDrift {
                    kind: obj.kind.clone(),
                    name: obj.name.clone(),
                    fields,
                });
            }
        }
        Ok(out)
    }

    /// Deletes objects the workload placed earlier but no longer declares (`stale`: kind and
    /// name, from the previous placement in status). A PersistentVolumeClaim is never deleted
    /// this way unless the volume policy is `Purge`: it is labelled retained instead. Returns
    /// the retained claims.
    pub async fn prune(
        &self,
        namespace: &str,
        stale: &[(String, String)],
        volumes: VolumePolicy,
    ) -> Result<Vec<String>, MemberError> {
        let mut retained = Vec::new();
        for (kind, name) in stale {
            let Some((api_version, _)) = crate::api::resident_workload::ALLOWED_KINDS
                .iter()
                .find(|(_, k)| k == kind)
            else {
                continue;
            };
            let Some(ar) = desired::api_resource(api_version, kind) else {
                continue;
            };
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), namespace, &ar);
            let what = format!("{kind} {name}");
            let result = if kind == "PersistentVolumeClaim" && volumes == VolumePolicy::Retain {
                let patch = json!({"metadata": {"labels": {labels::RETAINED: "true"}}});
                retained.push(name.clone());
                api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map(|_| "label")
            } else {
                api.delete(name, &DeleteParams::background())
                    .await
                    .map(|_| "delete")
            };
            match result {
                Ok(verb) => self.metrics.wrote(self.name, verb),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.err(format!("prune {what}"))(e)),
            }
        }
        Ok(retained)
    }

    /// Removes a workload's objects (in reverse apply order). Volumes are retained (labelled
    /// `residency.io/retained=true`) unless the policy is `Purge`; that includes the PVCs the
    /// StatefulSet controller created from volumeClaimTemplates, found by the workload's labels.
    /// Returns the names of the retained PVCs. Stops at the first failed call.
    pub async fn evict(
        &self,
        objects: &[DesiredObject],
        namespace: &str,
        workload: &str,
        volumes: VolumePolicy,
    ) -> Result<Vec<String>, MemberError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let selector = desired::workload_selector(namespace, workload);
        // list first: if this fails nothing is touched
        let claimed = pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(format!("list PersistentVolumeClaims ({selector})")))?;
        for obj in objects.iter().rev() {
            if obj.kind == "PersistentVolumeClaim" {
                continue; // handled with the other volumes below
            }
            let what = format!("{} {}", obj.kind, obj.name);
            match self
                .api(obj)
                .delete(&obj.name, &DeleteParams::background())
                .await
            {
                Ok(_) => self.metrics.wrote(self.name, "delete"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(self.err(format!("delete {what}"))(e)),
            }
        }
        let mut names: Vec<String> = claimed.items.iter().map(|p| p.name_any()).collect();
        for obj in objects.iter().filter(|o| o.kind == "PersistentVolumeClaim") {
            if !names.contains(&obj.name) {
                names.push(obj.name.clone());
            }
        }
        names.sort();
        let mut retained = Vec::new();
        for name in names {
            match volumes {
                VolumePolicy::Retain => {
                    let patch = json!({"metadata": {"labels": {labels::RETAINED: "true"}}});
                    match pvcs
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        Ok(_) => {
                            self.metrics.wrote(self.name, "label");
                            retained.push(name);
                        }
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => {
                            return Err(self
                                .err(format!("label PersistentVolumeClaim {name} retained"))(
                                e
                            ));
                        }
                    }
                }
                VolumePolicy::Purge => {
                    match pvcs.delete(&name, &DeleteParams::background()).await {
                        Ok(_) => self.metrics.wrote(self.name, "delete"),
                        Err(kube::Error::Api(s)) if s.code == 404 => {}
                        Err(e) => {
                            return Err(self.err(format!("delete PersistentVolumeClaim {name}"))(
                                e,
                            ));
                        }
                    }
                }
            }
        }
        Ok(retained)
    }

    /// The workload's retained PVCs still on this member (a failed list is an error, never
    /// "none").
    pub async fn retained_volumes(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Result<Vec<String>, MemberError> {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        let selector = format!(
            "{},{}=true",
            desired::workload_selector(namespace, workload),
            labels::RETAINED
        );
        let list = pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(format!("list retained PersistentVolumeClaims ({selector})")))?;
        let mut names: Vec<String> = list.items.iter().map(|p| p.name_any()).collect();
        names.sort();
        Ok(names)
    }
}

/// The regions a PersistentVolume's required node affinity names (pure).
pub fn volume_regions(pv: &k8s_openapi::api::core::v1::PersistentVolume) -> Vec<String> {
    let mut out: Vec<String> = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .map(|r| r.node_selector_terms.clone())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|t| t.match_expressions.unwrap_or_default())
        .filter(|e| e.key == crate::fleet::attest::REGION_LABEL && e.operator == "In")
        .flat_map(|e| e.values.unwrap_or_default())
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Member<'_> {
    /// Reads where the workload's copy physically is: the regions of the nodes its Pods run on
    /// (from `nodes`, the member's node regions) and of its volumes (PV node affinity), and
    /// lists what lies outside `attested`.
    pub async fn evidence(
        &self,
        namespace: &str,
        workload: &str,
        nodes: &std::collections::BTreeMap<String, Option<String>>,
        attested: &[String],
    ) -> Result<crate::api::resident_workload::LocationEvidence, MemberError> {
        use k8s_openapi::api::core::v1::{PersistentVolume, Pod};
        let selector = desired::workload_selector(namespace, workload);
        let lp = ListParams::default().labels(&selector);
        let pods = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .list(&lp)
            .await
            .map_err(self.err(format!("list Pods ({selector})")))?;
        let mut ev = crate::api::resident_workload::LocationEvidence::default();
        for p in &pods.items {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            match nodes.get(&node).cloned().flatten() {
                Some(region) => {
                    if !attested.contains(&region) {
                        ev.outside.push(format!(
                            "Pod {} on node {node} (region {region})",
                            p.name_any()
                        ));
                    }
                    ev.node_regions.push(region);
                }
                None => ev.outside.push(format!(
                    "Pod {} on node {node} (no region label)",
                    p.name_any()
                )),
            }
        }
        let claims = Api::<PersistentVolumeClaim>::namespaced(self.client.clone(), namespace)
            .list(&lp)
            .await
            .map_err(self.err(format!("list PersistentVolumeClaims ({selector})")))?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for c in &claims.items {
            let Some(volume) = c.spec.as_ref().and_then(|s| s.volume_name.clone()) else {
                continue;
            };
            let Some(pv) = pvs
                .get_opt(&volume)
                .await
                .map_err(self.err(format!("get PersistentVolume {volume}")))?
            else {
                continue;
            };
            let regions = volume_regions(&pv);
            if regions.is_empty() {
                ev.outside.push(format!(
                    "PersistentVolume {volume} (claim {}) names no region",
                    c.name_any()
                ));
            }
            for r in &regions {
                if !attested.contains(r) {
                    ev.outside.push(format!(
                        "PersistentVolume {volume} (claim {}) in region {r}",
                        c.name_any()
                    ));
                }
            }
            ev.volume_regions.extend(regions);
        }
        ev.node_regions.sort();
        ev.node_regions.dedup();
        ev.volume_regions.sort();
        ev.volume_regions.dedup();
        ev.outside.sort();
        ev.outside.truncate(20);
        Ok(ev)
    }
}
