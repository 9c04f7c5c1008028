//! The data move of a Storage workload, as a pure state machine: stage -> fence -> final sync
//! -> verify -> start on the targets (make before break, for data). The controller observes
//! (which mover Pods finished, whether writers still mount the source, the digests each side's
//! manifest printed), asks [`next`] what to do, and does it; nothing here talks to a cluster.
//!
//! The rules, checked over random histories by the property tests:
//!
//! * the workload is started on the targets only after every destination's digest equals the
//!   source's, computed after the writers were stopped and the final sync ran, and (with a
//!   manual cutover) only once a person approved;
//! * a mismatch or a timeout ends the move `Failed`: the source is unfenced (its writers
//!   restarted) and nothing starts on the targets;
//! * an unreachable member makes the move wait where it is; it never counts as a success, and
//!   nothing is fenced or started while the source cannot be reached;
//! * nothing in a move deletes data: the source volumes stay until the relocation's eviction
//!   retains them (or `Purge` removes them, allowed only after a verified move).

pub mod objects;
pub mod progress;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a move is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Phase {
    /// Copying to every destination while the source keeps running.
    Staging,
    /// Writers stopped; waiting until no Pod but the mover mounts the source volumes.
    Fencing,
    /// The final, incremental copy after the fence.
    Syncing,
    /// Each side's manifest computed independently; digests compared.
    Verifying,
    /// Verified; waiting for a person's approval (manual cutover).
    AwaitingCutover,
    /// Verified (and approved): the workload starts on the targets.
    Succeeded,
    /// Ended without a verified copy: the source runs again, nothing started on the targets.
    Failed,
}

/// How the cutover happens once the data is verified.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default,
)]
pub enum Cutover {
    /// Start on the targets as soon as the data is verified.
    #[default]
    Automatic,
    /// Wait until a person approves (sets the move's token).
    Manual,
}

/// Why a move failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Failure {
    /// A destination's digest differs from the source's (the first differing paths).
    Mismatch {
        /// The destination.
        destination: String,
        /// The first paths that differ.
        paths: Vec<String>,
    },
    /// The writers did not stop within the quiesce timeout.
    QuiesceTimeout,
    /// A mover Pod failed (its message).
    MoverFailed(String),
}

/// What the controller saw since the last step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The source member answered.
    pub source_reachable: bool,
    /// Per destination: it answered.
    pub destinations_reachable: BTreeMap<String, bool>,
    /// Per destination: its pull of the current phase finished.
    pub pulled: BTreeMap<String, bool>,
    /// A mover Pod of this phase failed (its message).
    pub mover_failed: Option<String>,
    /// No Pod other than the mover mounts a source volume.
    pub writers_stopped: bool,
    /// The source's manifest digest, computed in `Verifying`.
    pub source_digest: Option<String>,
    /// Per destination, its manifest digest computed in `Verifying`, and the first differing
    /// paths when it differs.
    pub destination_digests: BTreeMap<String, (String, Vec<String>)>,
    /// How long the move has been in its current phase.
    pub in_phase: Duration,
    /// A person approved the cutover.
    pub approved: bool,
}

/// What the controller does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run (or keep running) the source's mover and a pull on each listed destination.
    Pull(Vec<String>),
    /// Stop the writers (scale to 0, suspend CronJobs).
    Fence,
    /// Restart the writers as they were.
    Unfence,
    /// Compute each side's manifest.
    Verify,
    /// Apply the workload on the targets.
    StartTargets,
    /// Wait (why).
    Wait(String),
}

/// Settings of one move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Automatic or manual cutover.
    pub cutover: Cutover,
    /// How long writers may take to stop.
    pub quiesce_timeout: Duration,
}

/// A move's state: its phase and, once failed, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// The phase.
    pub phase: Phase,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// Whether the source's writers are stopped by this move.
    pub fenced: bool,
}

impl State {
    /// A move that just started.
    pub fn new() -> State {
        State {
            phase: Phase::Staging,
            failure: None,
            fenced: false,
        }
    }
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

fn all(map: &BTreeMap<String, bool>, keys: &[String]) -> bool {
    keys.iter().all(|k| map.get(k).copied().unwrap_or(false))
}

fn fail(state: &State, failure: Failure) -> (State, Vec<Step>) {
    let steps = if state.fenced {
        vec![Step::Unfence]
    } else {
        Vec::new()
    };
    (
        State {
            phase: Phase::Failed,
            failure: Some(failure),
            fenced: false,
        },
        steps,
    )
}

/// The next state and steps of a move to `destinations` from what was `observed` (pure).
pub fn next(
    state: &State,
    destinations: &[String],
    observed: &Observed,
    settings: Settings,
) -> (State, Vec<Step>) {
    if matches!(state.phase, Phase::Succeeded | Phase::Failed) {
        return (state.clone(), Vec::new());
    }
    if !observed.source_reachable || !all(&observed.destinations_reachable, destinations) {
        return (
            state.clone(),
            vec![Step::Wait(
                "a member of the move cannot be reached: the move waits where it is".into(),
            )],
        );
    }
    if let Some(m) = &observed.mover_failed {
        return fail(state, Failure::MoverFailed(m.clone()));
    }
    let to = |phase: Phase, fenced: bool| State {
        phase,
        failure: None,
        fenced,
    };
    match state.phase {
        Phase::Staging => {
            if all(&observed.pulled, destinations) {
                (to(Phase::Fencing, true), vec![Step::Fence])
            } else {
                (state.clone(), vec![Step::Pull(destinations.to_vec())])
            }
        }
        Phase::Fencing => {
            if observed.writers_stopped {
                (
                    to(Phase::Syncing, true),
                    vec![Step::Pull(destinations.to_vec())],
                )
            } else if observed.in_phase >= settings.quiesce_timeout {
                fail(state, Failure::QuiesceTimeout)
            } else {
                (
                    state.clone(),
                    vec![Step::Wait(
                        "waiting until no Pod mounts the source volumes".into(),
                    )],
                )
            }
        }
        Phase::Syncing => {
            if all(&observed.pulled, destinations) {
                (to(Phase::Verifying, true), vec![Step::Verify])
            } else {
                (state.clone(), vec![Step::Pull(destinations.to_vec())])
            }
        }
        Phase::Verifying => {
            let Some(source) = &observed.source_digest else {
                return (state.clone(), vec![Step::Verify]);
            };
            let mut complete = true;
            for d in destinations {
                match observed.destination_digests.get(d) {
                    None => complete = false,
                    Some((digest, paths)) if digest != source => {
                        return fail(
                            state,
                            Failure::Mismatch {
                                destination: d.clone(),
                                paths: paths.clone(),
                            },
                        );
                    }
                    Some(_) => {}
                }
            }
            if !complete {
                (state.clone(), vec![Step::Verify])
            } else if settings.cutover == Cutover::Manual && !observed.approved {
                (to(Phase::AwaitingCutover, true), Vec::new())
            } else {
                (to(Phase::Succeeded, true), vec![Step::StartTargets])
            }
        }
        Phase::AwaitingCutover => {
            if observed.approved {
                (to(Phase::Succeeded, true), vec![Step::StartTargets])
            } else {
                (
                    state.clone(),
                    vec![Step::Wait(
                        "verified; waiting for the cutover to be approved".into(),
                    )],
                )
            }
        }
        Phase::Succeeded | Phase::Failed => (state.clone(), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AUTO: Settings = Settings {
        cutover: Cutover::Automatic,
        quiesce_timeout: Duration::from_secs(60),
    };

    fn dests() -> Vec<String> {
        vec!["zrh-1".into(), "zrh-2".into()]
    }

    fn reachable() -> Observed {
        Observed {
            source_reachable: true,
            destinations_reachable: dests().into_iter().map(|d| (d, true)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_happy_path_stages_fences_syncs_verifies_and_starts() {
        let d = dests();
        let mut o = reachable();
        let s = State::new();
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!(steps, [Step::Pull(d.clone())]);
        o.pulled = d.iter().map(|x| (x.clone(), true)).collect();
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!((s.phase, steps), (Phase::Fencing, vec![Step::Fence]));
        o.writers_stopped = true;
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!(
            (s.phase, steps),
            (Phase::Syncing, vec![Step::Pull(d.clone())])
        );
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!((s.phase, steps), (Phase::Verifying, vec![Step::Verify]));
        o.source_digest = Some("abc".into());
        o.destination_digests = d
            .iter()
            .map(|x| (x.clone(), ("abc".to_string(), vec![])))
            .collect();
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!(
            (s.phase, steps),
            (Phase::Succeeded, vec![Step::StartTargets])
        );
    }

    #[test]
    fn a_mismatch_unfences_and_names_the_paths() {
        let d = dests();
        let mut o = reachable();
        o.source_digest = Some("abc".into());
        o.destination_digests = BTreeMap::from([
            ("zrh-1".to_string(), ("abc".to_string(), vec![])),
            ("zrh-2".to_string(), ("xyz".to_string(), vec!["a/b".into()])),
        ]);
        let s = State {
            phase: Phase::Verifying,
            failure: None,
            fenced: true,
        };
        let (s, steps) = next(&s, &d, &o, AUTO);
        assert_eq!(s.phase, Phase::Failed);
        assert_eq!(steps, [Step::Unfence]);
        assert_eq!(
            s.failure,
            Some(Failure::Mismatch {
                destination: "zrh-2".into(),
                paths: vec!["a/b".into()]
            })
        );
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop::sample::select(vec![
            Phase::Staging,
            Phase::Fencing,
            Phase::Syncing,
            Phase::Verifying,
            Phase::AwaitingCutover,
        ])
    }

    fn observed() -> impl Strategy<Value = Observed> {
        let flag = || prop::bool::weighted(0.7);
        let digest = || prop::sample::select(vec!["abc".to_string(), "xyz".to_string()]);
        (
            flag(),
            (flag(), flag()),
            (flag(), flag()),
            prop::option::weighted(0.1, Just("pod failed".to_string())),
            flag(),
            prop::option::weighted(0.8, digest()),
            (
                prop::option::weighted(0.8, digest()),
                prop::option::weighted(0.8, digest()),
            ),
            0..120u64,
            flag(),
        )
            .prop_map(
                |(src, (r1, r2), (p1, p2), failed, stopped, sd, (d1, d2), secs, approved)| {
                    let mut dd = BTreeMap::new();
                    if let Some(d) = d1 {
                        dd.insert("zrh-1".to_string(), (d, vec![]));
                    }
                    if let Some(d) = d2 {
                        dd.insert("zrh-2".to_string(), (d, vec![]));
                    }
                    Observed {
                        source_reachable: src,
                        destinations_reachable: BTreeMap::from([
                            ("zrh-1".to_string(), r1),
                            ("zrh-2".to_string(), r2),
                        ]),
                        pulled: BTreeMap::from([
                            ("zrh-1".to_string(), p1),
                            ("zrh-2".to_string(), p2),
                        ]),
                        mover_failed: failed,
                        writers_stopped: stopped,
                        source_digest: sd,
                        destination_digests: dd,
                        in_phase: Duration::from_secs(secs),
                        approved,
                    }
                },
            )
    }

    fn settings() -> impl Strategy<Value = Settings> {
        prop::bool::ANY.prop_map(|manual| Settings {
            cutover: if manual {
                Cutover::Manual
            } else {
                Cutover::Automatic
            },
            quiesce_timeout: Duration::from_secs(60),
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Over random histories: targets start only from a verified state in which the digests
        /// seen were all equal (and approved if manual), after the fence and the final sync;
        /// every failure unfences what was fenced; an unreachable member only waits.
        #[test]
        fn a_move_never_starts_unverified_data_and_always_unfences_on_failure(
            history in prop::collection::vec(observed(), 1..40),
            start in phase(),
            settings in settings(),
        ) {
            let d = dests();
            let mut state = State { phase: start, failure: None, fenced: start != Phase::Staging };
            // a history only counts as verified from a fenced, synced state onwards
            let mut synced = start == Phase::Verifying || start == Phase::AwaitingCutover;
            for o in &history {
                let before = state.clone();
                let (after, steps) = next(&state, &d, o, settings);
                let unreachable = !o.source_reachable || d.iter().any(|x| !o.destinations_reachable[x]);
                if unreachable && !matches!(before.phase, Phase::Succeeded | Phase::Failed) {
                    prop_assert_eq!(&after, &before, "an unreachable member moved the state");
                    prop_assert!(steps.iter().all(|s| matches!(s, Step::Wait(_))), "{:?}", steps);
                }
                if steps.contains(&Step::StartTargets) {
                    prop_assert_eq!(after.phase, Phase::Succeeded);
                    prop_assert!(synced, "started without the final sync");
                    prop_assert!(before.fenced, "started while the source may still write");
                    if before.phase == Phase::Verifying {
                        let src = o.source_digest.clone();
                        prop_assert!(src.is_some());
                        for x in &d {
                            prop_assert_eq!(o.destination_digests.get(x).map(|v| Some(v.0.clone())), Some(src.clone()));
                        }
                    }
                    if settings.cutover == Cutover::Manual {
                        prop_assert!(o.approved, "a manual cutover started unapproved");
                    }
                }
                if after.phase == Phase::Failed && before.phase != Phase::Failed {
                    prop_assert!(!steps.contains(&Step::StartTargets));
                    prop_assert_eq!(steps.contains(&Step::Unfence), before.fenced, "{:?}", steps);
                    prop_assert!(!after.fenced);
                }
                if before.phase == Phase::Syncing && after.phase == Phase::Verifying {
                    synced = true;
                }
                if after.phase == Phase::Staging || after.phase == Phase::Fencing {
                    synced = false;
                }
                if matches!(before.phase, Phase::Succeeded | Phase::Failed) {
                    prop_assert_eq!(&after, &before, "an ended move changed");
                    prop_assert!(steps.is_empty());
                }
                // fencing only ever comes from a finished stage
                if steps.contains(&Step::Fence) {
                    prop_assert_eq!(before.phase, Phase::Staging);
                    prop_assert!(d.iter().all(|x| o.pulled[x]));
                }
                state = after;
            }
        }
    }
}
