//! What the move's Pods say (pure): which pass of which member finished, which must start
//! (again), and the manifests the manifest Pods printed, turned into digests, per-volume pairs
//! and the first differing paths.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::api::data_move::{Transfer, VolumePair};
use crate::mover::manifest::{self, Entry, Manifest};

/// The label naming the pass a mover Pod runs (`serve`, `stage`, `sync`, `manifest`).
pub const PASS_LABEL: &str = "residency.io/move-pass";
/// The label numbering the attempts of a pass on a member (0, 1, ...).
pub const ATTEMPT_LABEL: &str = "residency.io/move-attempt";
/// Attempts of one pass on one member before the move fails.
pub const MAX_ATTEMPTS: u32 = 4;

/// The passes of a move, each run by its own Pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The source's server (runs until the move ends).
    Serve,
    /// The copy made while the source runs.
    Stage,
    /// The final copy after the fence.
    Sync,
    /// The independent manifest of one side.
    Manifest,
}

impl Pass {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Pass::Serve => "serve",
            Pass::Stage => "stage",
            Pass::Sync => "sync",
            Pass::Manifest => "manifest",
        }
    }
}

/// The name of the Pod of `pass` (attempt `attempt`) of move `move_id`.
pub fn pod_name(move_id: &str, pass: Pass, attempt: u32) -> String {
    match pass {
        Pass::Serve => format!("{move_id}-serve"),
        _ => format!("{move_id}-{}-{attempt}", pass.as_str()),
    }
}

/// What a mover Pod is doing, as read from the member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// Pod name.
    pub name: String,
    /// Its pass (from its label); `None` for a Pod of another shape.
    pub pass: Option<&'static str>,
    /// Its attempt number (from its label).
    pub attempt: u32,
    /// `Pending`, `Running`, `Succeeded`, `Failed` (or `Unknown`).
    pub phase: String,
    /// Its IP, once it has one.
    pub ip: Option<String>,
    /// Why it stopped, when it did (the container's reason and message).
    pub message: String,
    /// Whether it is being deleted.
    pub deleting: bool,
}

/// Where one pass stands on one member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// No Pod of the pass runs: start attempt `attempt`.
    Start(u32),
    /// A Pod runs (or waits to).
    Running(String),
    /// The Pod finished: its name (the log holds its result).
    Done(String),
    /// Every attempt failed: the last failure.
    Exhausted(String),
}

/// Where `pass` stands among a member's mover Pods (pure): the newest attempt decides; failed
/// attempts count until [`MAX_ATTEMPTS`].
pub fn progress(pods: &[PodView], pass: Pass) -> Progress {
    let mine: Vec<&PodView> = pods
        .iter()
        .filter(|p| p.pass == Some(pass.as_str()))
        .collect();
    let failed: Vec<&&PodView> = mine.iter().filter(|p| p.phase == "Failed").collect();
    if let Some(done) = mine.iter().find(|p| p.phase == "Succeeded") {
        return Progress::Done(done.name.clone());
    }
    if let Some(live) = mine.iter().find(|p| p.phase != "Failed" && !p.deleting) {
        return Progress::Running(live.name.clone());
    }
    let attempts = failed.len() as u32;
    if attempts >= MAX_ATTEMPTS {
        let last = failed
            .iter()
            .max_by_key(|p| p.attempt)
            .map(|p| format!("{}: {}", p.name, p.message))
            .unwrap_or_default();
        return Progress::Exhausted(last);
    }
    // the next attempt number: one past every attempt seen (a deleted Pod's number is reused)
    let next = mine
        .iter()
        .filter(|p| p.phase == "Failed" || p.deleting)
        .map(|p| p.attempt + 1)
        .max()
        .unwrap_or(0);
    Progress::Start(next)
}

/// What a manifest Pod printed: `{"digest", "totals", "entries"}`.
#[derive(Clone, Debug, Deserialize)]
struct Printed {
    digest: String,
    entries: Vec<Entry>,
}

/// The manifest a manifest Pod printed, checked against the digest it printed with it.
pub fn parse_manifest(log: &str) -> Result<Manifest, String> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| "the manifest Pod printed no manifest".to_string())?;
    let p: Printed =
        serde_json::from_str(line).map_err(|e| format!("the manifest Pod's output: {e}"))?;
    let m = Manifest { entries: p.entries };
    if m.digest() != p.digest {
        return Err("the manifest Pod's digest does not match its entries".into());
    }
    Ok(m)
}

/// What a pull Pod reported (its last JSON line), as a transfer record.
pub fn parse_transfer(log: &str, destination: &str, pass: &str) -> Option<Transfer> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))?;
    let r: crate::mover::transfer::PullReport = serde_json::from_str(line).ok()?;
    Some(Transfer {
        destination: destination.to_string(),
        pass: pass.to_string(),
        files_fetched: r.files_fetched,
        bytes_fetched: r.bytes_fetched,
        removed: r.removed,
        milliseconds: (r.seconds * 1000.0).round() as u64,
    })
}

/// The part of a manifest of `/data` that is the volume `claim` (mounted at `/data/<claim>`).
pub fn volume(m: &Manifest, claim: &str) -> Manifest {
    let prefix = format!("{claim}/");
    Manifest {
        entries: m
            .entries
            .iter()
            .filter(|e| e.path == claim || e.path.starts_with(&prefix))
            .cloned()
            .collect(),
    }
}

/// The first `max` differences of `destination` from `source`, one line each.
pub fn mismatches(source: &Manifest, destination: &Manifest, max: usize) -> Vec<String> {
    manifest::differences(source, destination, max)
        .into_iter()
        .map(|d| format!("{}: {}", d.path, d.what))
        .collect()
}

/// The per-volume, per-destination entries of a verified (or failed) comparison (pure).
pub fn volume_pairs(
    source_cluster: &str,
    claims: &[String],
    source: &Manifest,
    destinations: &BTreeMap<String, Manifest>,
    phase_of: impl Fn(bool) -> &'static str,
) -> Vec<VolumePair> {
    let mut out = Vec::new();
    for (cluster, dest) in destinations {
        for claim in claims {
            let (s, d) = (volume(source, claim), volume(dest, claim));
            let totals = s.totals();
            let (sd, dd) = (s.digest(), d.digest());
            out.push(VolumePair {
                source_cluster: source_cluster.to_string(),
                source_claim: claim.clone(),
                destination_cluster: cluster.clone(),
                destination_claim: claim.clone(),
                phase: phase_of(sd == dd).to_string(),
                files: totals.files,
                bytes: totals.bytes,
                mismatches: if sd == dd {
                    Vec::new()
                } else {
                    mismatches(&s, &d, 5)
                },
                source_digest: sd,
                destination_digest: dd,
                ..Default::default()
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mover::manifest::Kind;

    fn pod(name: &str, pass: Pass, attempt: u32, phase: &str) -> PodView {
        PodView {
            name: name.into(),
            pass: Some(pass.as_str()),
            attempt,
            phase: phase.into(),
            ip: None,
            message: "exit 1".into(),
            deleting: false,
        }
    }

    #[test]
    fn the_newest_attempt_decides_and_failures_are_counted() {
        assert_eq!(progress(&[], Pass::Stage), Progress::Start(0));
        let failed = pod("m-stage-0", Pass::Stage, 0, "Failed");
        assert_eq!(
            progress(std::slice::from_ref(&failed), Pass::Stage),
            Progress::Start(1)
        );
        let running = pod("m-stage-1", Pass::Stage, 1, "Running");
        assert_eq!(
            progress(&[failed.clone(), running], Pass::Stage),
            Progress::Running("m-stage-1".into())
        );
        let done = pod("m-stage-1", Pass::Stage, 1, "Succeeded");
        assert_eq!(
            progress(&[failed.clone(), done], Pass::Stage),
            Progress::Done("m-stage-1".into())
        );
        // other passes do not count
        assert_eq!(progress(&[failed], Pass::Sync), Progress::Start(0));
        let all: Vec<PodView> = (0..MAX_ATTEMPTS)
            .map(|i| pod(&format!("m-sync-{i}"), Pass::Sync, i, "Failed"))
            .collect();
        assert!(
            matches!(progress(&all, Pass::Sync), Progress::Exhausted(m) if m.contains("m-sync-3"))
        );
        // a Pod being deleted (killed) is started again under a new name
        let mut killed = pod("m-stage-0", Pass::Stage, 0, "Running");
        killed.deleting = true;
        assert_eq!(progress(&[killed], Pass::Stage), Progress::Start(1));
    }

    fn entry(path: &str, sha: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            size: 3,
            mode: 0o644,
            sha256: Some(sha.into()),
            target: None,
        }
    }

    #[test]
    fn manifests_are_split_per_volume_and_mismatches_named() {
        let src = Manifest {
            entries: vec![entry("a/x", "1"), entry("b/y", "2"), entry("bb/z", "3")],
        };
        let dst = Manifest {
            entries: vec![entry("a/x", "1"), entry("b/y", "9"), entry("bb/z", "3")],
        };
        assert_eq!(volume(&src, "b").entries.len(), 1, "b/ is not bb/");
        let pairs = volume_pairs(
            "msk-1",
            &["a".into(), "b".into()],
            &src,
            &BTreeMap::from([("zrh-1".to_string(), dst)]),
            |ok| if ok { "Verified" } else { "Mismatch" },
        );
        assert_eq!(pairs[0].phase, "Verified");
        assert_eq!(pairs[1].phase, "Mismatch");
        assert!(
            pairs[1].mismatches[0].starts_with("b/y"),
            "{:?}",
            pairs[1].mismatches
        );
        assert_eq!(pairs[0].files, 1);
    }

    #[test]
    fn a_printed_manifest_must_match_its_digest() {
        let m = Manifest {
            entries: vec![entry("a/x", "1")],
        };
        let printed =
            serde_json::json!({"digest": m.digest(), "totals": m.totals(), "entries": m.entries});
        assert_eq!(parse_manifest(&printed.to_string()).unwrap(), m);
        let forged = serde_json::json!({"digest": "00", "entries": m.entries});
        assert!(parse_manifest(&forged.to_string()).is_err());
        assert!(parse_manifest("panic: boom").is_err());
    }
}
