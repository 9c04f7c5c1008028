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
            WorkloadPlan {
                namespace: f.namespace.clone(),
                name: f.name.clone(),
                role: format!("{:?}", w.spec.role),
                countries: f.countries.iter().cloned().collect(),
                decision: engine.decide(&f),
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
