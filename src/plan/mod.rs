//! The offline `plan` command: validate residency YAML and show where each workload would go.
//!
//! This is what a GitOps pipeline runs before a merge. It reads files or directories of
//! multi-document YAML, validates every MemberCluster, ResidencyPolicy and ResidentWorkload with
//! the same rules the API server enforces, runs the placement engine (the same code the
//! controller runs) and prints, per workload, the target and forbidden clusters with reasons.
//!
//! Exit codes: 0 every workload is placeable; 1 some workload is unplaceable or in conflict;
//! 2 invalid input (a message names the file, the document and the field).
//!
//! Offline, nobody has probed the clusters: a MemberCluster without status is assumed Ready and
//! location-verified, and the output says so. Documents of other kinds are skipped.

mod load;
mod render;

use std::io::Write;
use std::path::PathBuf;

pub use load::{Input, InputError, load};

use crate::facts::{self, StatusSource};
use crate::placement::{Decision, Engine};

/// Exit code: every workload placeable.
pub const EXIT_OK: i32 = 0;
/// Exit code: some workload unplaceable or in conflict.
pub const EXIT_UNPLACEABLE: i32 = 1;
/// Exit code: invalid input.
pub const EXIT_INVALID: i32 = 2;

/// Errors of `plan` that are not about the input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// Encoding JSON output failed.
    #[error("cannot encode output: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// Stable category (for logs and metrics).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Io(_) => "io",
            Error::Json(_) => "encode",
        }
    }
}

/// One workload's plan.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadPlan {
    /// Namespace of the workload (`default` when the YAML has none).
    pub namespace: String,
    /// Name of the workload.
    pub name: String,
    /// `Storage` or `Processing`.
    pub role: String,
    /// Its countries, sorted.
    pub countries: Vec<String>,
    /// The engine's decision.
    pub decision: Decision,
    /// What a `CopyAndVerify` Storage workload's data would do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_move: Option<DataMovePlan>,
}

/// The data move a change would start (`spec.dataMigration: CopyAndVerify`).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DataMovePlan {
    /// The cluster the data would leave; `None` when the input has no status (where the copies
    /// are now is unknown offline).
    pub from: Option<String>,
    /// The targets that would receive it.
    pub to: Vec<String>,
    /// `Automatic` or `Manual`.
    pub cutover: String,
}

/// The data move of a workload under a decision (pure): from its recorded copies when the
/// input carries its status.
fn data_move(w: &crate::api::ResidentWorkload, decision: &Decision) -> Option<DataMovePlan> {
    let settings = w.spec.copy_and_verify()?;
    if w.spec.role != crate::api::resident_workload::Role::Storage {
        return None;
    }
    let cutover = format!("{:?}", settings.cutover);
    match w.status.as_ref().filter(|s| !s.placements.is_empty()) {
        Some(s) => crate::controller::plan::data_move(decision, &s.placements).map(|(from, to)| {
            DataMovePlan {
                from: Some(from),
                to,
                cutover,
            }
        }),
        None => Some(DataMovePlan {
            from: None,
            to: decision.targets.clone(),
            cutover,
        }),
    }
}

/// What one member's API server would refuse at admission.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberAdmission {
    /// MemberCluster name.
    pub cluster: String,
    /// False when its `spec.prevention` is `Disabled` (it then refuses nothing).
    pub enabled: bool,
    /// Countries whose new data it would refuse (Enforce), sorted.
    pub refused: Vec<String>,
    /// Countries it would warn about (Audit only), sorted.
    pub warned: Vec<String>,
}

/// The result of planning a set of inputs.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// One entry per workload, sorted by namespace and name.
    pub workloads: Vec<WorkloadPlan>,
    /// Clusters assumed Ready and verified because the input has no status for them.
    pub assumed_healthy: Vec<String>,
    /// Per member, sorted by name: what its admission policies would refuse.
    pub admission: Vec<MemberAdmission>,
}

impl Plan {
    /// True when every workload is placeable.
    pub fn all_placeable(&self) -> bool {
        self.workloads.iter().all(|w| w.decision.is_placeable())
    }
}

/// Computes the plan of validated input (pure).
pub fn compute(input: &Input) -> Plan {
    let clusters: Vec<_> = input
        .clusters
        .iter()
        .map(|c| facts::cluster(c, StatusSource::AssumeHealthyWithoutStatus))
        .collect();
    let policies: Vec<_> = input.policies.iter().map(facts::policy).collect();
    let engine = Engine::new(&policies, &clusters);
    let mut workloads: Vec<WorkloadPlan> = input
        .workloads
        .iter()
        .map(|w| {
            let f = facts::workload(w);
            let decision = engine.decide(&f);
            WorkloadPlan {
                namespace: f.namespace.clone(),
                name: f.name.clone(),
                role: format!("{:?}", w.spec.role),
                countries: f.countries.iter().cloned().collect(),
                data_move: data_move(w, &decision),
                decision,
            }
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut assumed_healthy: Vec<String> = input
        .clusters
        .iter()
        .filter(|c| c.status.is_none())
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assumed_healthy.sort();
    let mut admission: Vec<MemberAdmission> = input
        .clusters
        .iter()
        .zip(&clusters)
        .map(|(mc, f)| {
            let enabled = mc.spec.prevention == crate::api::member_cluster::Prevention::Enabled;
            let (refused, warned) =
                crate::admission::summary(&crate::admission::for_member(&policies, f, enabled));
            MemberAdmission {
                cluster: f.name.clone(),
                enabled,
                refused,
                warned,
            }
        })
        .collect();
    admission.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    Plan {
        workloads,
        assumed_healthy,
        admission,
    }
}

/// Runs `plan` over `paths`, writing the result to `out` and input errors to `err`; returns
/// the exit code.
pub fn run_with(
    paths: &[PathBuf],
    json: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<i32, Error> {
    let input = match load(paths) {
        Ok(input) => input,
        Err(errors) => {
            for e in &errors {
                writeln!(err, "error: {e}")?;
            }
            writeln!(
                err,
                "{} invalid input error(s); nothing was planned",
                errors.len()
            )?;
            return Ok(EXIT_INVALID);
        }
    };
    for note in &input.skipped {
        writeln!(err, "note: {note}")?;
    }
    let plan = compute(&input);
    if json {
        serde_json::to_writer_pretty(&mut *out, &plan)?;
        writeln!(out)?;
    } else {
        render::text(&plan, out)?;
    }
    Ok(if plan.all_placeable() {
        EXIT_OK
    } else {
        EXIT_UNPLACEABLE
    })
}

/// Runs `plan` with errors on stderr.
pub fn run(paths: &[PathBuf], json: bool, out: &mut impl Write) -> Result<i32, Error> {
    run_with(paths, json, out, &mut std::io::stderr().lock())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cluster(name: &str, country: &str, region: &str) -> crate::api::MemberCluster {
        serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name},
            "spec": {"location": {"country": country, "region": region},
                     "attestation": {"nodeRegions": ["r"]}, "connection": {"local": {}}}
        }))
        .unwrap()
    }

    #[test]
    fn a_copy_and_verify_store_leaving_a_cluster_shows_its_data_move() {
        let policy: crate::api::ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "apac"},
            "spec": {"countries": ["AU"], "allowedLocations": [{"country": "CH", "region": "zurich"}],
                     "enforcement": "Enforce"}
        }))
        .unwrap();
        let mut store: crate::api::ResidentWorkload = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "store", "namespace": "t"},
            "spec": {"role": "Storage", "countries": ["AU"], "dataMigration": {"mode": "CopyAndVerify"},
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]},
            "status": {"placements": [{"cluster": "msk-1", "state": "Ready"}]}
        }))
        .unwrap();
        let input = Input {
            clusters: vec![
                cluster("msk-1", "RU", "moscow"),
                cluster("zrh-1", "CH", "zurich"),
                cluster("zrh-2", "CH", "zurich"),
            ],
            policies: vec![policy],
            workloads: vec![store.clone()],
            skipped: Vec::new(),
        };
        let plan = compute(&input);
        let m = plan.workloads[0].data_move.clone().expect("a data move");
        assert_eq!(m.from.as_deref(), Some("msk-1"));
        assert_eq!(m.to, ["zrh-1", "zrh-2"]);
        let mut out = Vec::new();
        render::text(&plan, &mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("data      moves from msk-1 to zrh-1, zrh-2")
        );
        // without CopyAndVerify nothing moves
        store.spec.data_migration = None;
        let plan = compute(&Input {
            workloads: vec![store],
            ..input
        });
        assert!(plan.workloads[0].data_move.is_none());
    }
}
