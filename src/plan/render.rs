//! Human-readable rendering of a plan.

use std::io::Write;

use super::Plan;
use crate::placement::{Mode, Outcome, Verdict};

/// Writes the plan as text: one block per workload, one line per cluster.
pub fn text(plan: &Plan, out: &mut impl Write) -> std::io::Result<()> {
    if plan.workloads.is_empty() {
        writeln!(out, "No ResidentWorkloads in the input: nothing to place.")?;
    }
    for w in &plan.workloads {
        let d = &w.decision;
        let audit_only = d.mode == Mode::Audit && !matches!(d.outcome, Outcome::NoPolicy { .. });
        let mode = if audit_only { ", Audit only" } else { "" };
        let verdict = if d.is_placeable() {
            "PLACEABLE"
        } else {
            "NOT PLACEABLE"
        };
        writeln!(
            out,
            "{}/{} ({}{mode}; countries {}): {verdict} [{}]",
            w.namespace,
            w.name,
            w.role,
            w.countries.join(", "),
            d.reason()
        )?;
        writeln!(out, "  {}", d.summary())?;
        for c in &d.clusters {
            let mark = match c.verdict {
                Verdict::Target => "target   ",
                Verdict::AllowedNotEligible { .. } => "idle     ",
                Verdict::Forbidden => "forbidden",
            };
            writeln!(out, "  {mark} {}", c.reason)?;
        }
        for f in &d.audit_findings {
            writeln!(out, "  audit     {}", f.message)?;
        }
        if let Some(m) = &w.data_move {
            match &m.from {
                Some(from) => writeln!(
                    out,
                    "  data      moves from {from} to {}: copied, verified (SHA-256 manifests), then cut over ({})",
                    m.to.join(", "),
                    m.cutover
                )?,
                None => writeln!(
                    out,
                    "  data      CopyAndVerify: when it leaves a cluster its volumes are copied to {} and verified before the cutover ({}; the input has no status, so where its copies are now is unknown)",
                    m.to.join(", "),
                    m.cutover
                )?,
            }
        }
        writeln!(out)?;
    }
    if !plan.admission.is_empty() {
        writeln!(
            out,
            "Admission (new data the members' API servers would refuse):"
        )?;
        for m in &plan.admission {
            let line = if !m.enabled {
                "prevention Disabled: refuses nothing".to_string()
            } else if m.refused.is_empty() {
                "refuses nothing".to_string()
            } else {
                format!("refuses {}", m.refused.join(", "))
            };
            let warns = if m.warned.is_empty() {
                String::new()
            } else {
                format!("; warns for {} (Audit)", m.warned.join(", "))
            };
            writeln!(out, "  {}: {line}{warns}", m.cluster)?;
        }
        writeln!(out)?;
    }
    if !plan.assumed_healthy.is_empty() {
        writeln!(
            out,
            "Assumed Ready and location-verified (no status in the input): {}",
            plan.assumed_healthy.join(", ")
        )?;
    }
    let placeable = plan
        .workloads
        .iter()
        .filter(|w| w.decision.is_placeable())
        .count();
    writeln!(
        out,
        "{placeable} of {} workload(s) placeable.",
        plan.workloads.len()
    )
}
