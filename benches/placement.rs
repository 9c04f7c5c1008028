//! Benchmark of the placement engine: 100 policies, 50 clusters, 10,000 workloads.
//!
//! Run with `cargo bench --bench placement`. The universe is generated deterministically with a
//! small linear congruential generator, so every run measures the same work.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use residency_operator::placement::{
    ClusterFacts, Enforcement, Engine, Location, PolicyFacts, Selector, SelectorOperator,
    SelectorRequirement, WorkloadFacts,
};

const POLICIES: usize = 100;
const CLUSTERS: usize = 50;
const WORKLOADS: usize = 10_000;
const RUNS: usize = 5;
/// How many countries at the end of [`COUNTRIES`] no policy governs.
const UNGOVERNED: usize = 2;

const COUNTRIES: [&str; 60] = [
    "AE", "AR", "AT", "AU", "BD", "BE", "BN", "BR", "CA", "CH", "CL", "CN", "CO", "CZ", "DE", "DK",
    "EG", "ES", "FI", "FR", "GB", "GR", "HU", "ID", "IE", "IL", "IN", "IT", "JP", "KE", "KH", "KR",
    "LA", "LK", "MX", "MY", "NG", "NL", "NO", "NP", "NZ", "PE", "PH", "PK", "PL", "PT", "RO", "RU",
    "SA", "SE", "SG", "TH", "TR", "TW", "UA", "US", "VN", "ZA", "LU", "IS",
];

const LOCATIONS: [(&str, &str); 16] = [
    ("CH", "zurich"),
    ("CH", "geneva"),
    ("DE", "frankfurt"),
    ("DE", "berlin"),
    ("FR", "paris"),
    ("NL", "amsterdam"),
    ("IE", "dublin"),
    ("GB", "london"),
    ("US", "virginia"),
    ("US", "oregon"),
    ("CA", "montreal"),
    ("JP", "tokyo"),
    ("SG", "singapore"),
    ("AU", "sydney"),
    ("IN", "mumbai"),
    ("BR", "saopaulo"),
];

/// A 64-bit linear congruential generator (Knuth's MMIX constants).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        self.next() as usize % n
    }

    /// `true` with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn clusters(rng: &mut Lcg) -> Vec<ClusterFacts> {
    (0..CLUSTERS)
        .map(|i| {
            let (country, region) = LOCATIONS[i % LOCATIONS.len()];
            let mut labels = BTreeMap::new();
            labels.insert(
                "tier".to_string(),
                if rng.chance(50) { "gold" } else { "silver" }.to_string(),
            );
            if rng.chance(30) {
                labels.insert("pci".to_string(), "true".to_string());
            }
            ClusterFacts {
                name: format!("{}-{}-{i:02}", country.to_lowercase(), region),
                labels,
                country: country.to_string(),
                region: region.to_string(),
                ready: rng.chance(90),
                verified: rng.chance(90),
                schedulable: rng.chance(95),
            }
        })
        .collect()
}

fn policies(rng: &mut Lcg) -> Vec<PolicyFacts> {
    (0..POLICIES)
        .map(|i| {
            // Every governed country has at least one policy, many have several; the last few
            // countries are left ungoverned so that default deny shows up too.
            let governed = &COUNTRIES[..COUNTRIES.len() - UNGOVERNED];
            let mut countries = BTreeSet::from([governed[i % governed.len()].to_string()]);
            for _ in 0..rng.below(4) {
                countries.insert(governed[rng.below(governed.len())].to_string());
            }
            // Most policies allow the Swiss hub, plus a few random locations.
            let mut allowed_locations: Vec<Location> = (0..rng.below(4))
                .map(|_| {
                    let (country, region) = LOCATIONS[rng.below(LOCATIONS.len())];
                    Location {
                        country: country.to_string(),
                        region: rng.chance(40).then(|| region.to_string()),
                    }
                })
                .collect();
            if allowed_locations.is_empty() || rng.chance(80) {
                allowed_locations.push(Location {
                    country: "CH".to_string(),
                    region: None,
                });
            }
            let cluster_selector = rng.chance(20).then(|| Selector {
                match_labels: BTreeMap::new(),
                match_expressions: vec![SelectorRequirement {
                    key: "tier".to_string(),
                    operator: if rng.chance(50) {
                        SelectorOperator::In
                    } else {
                        SelectorOperator::NotIn
                    },
                    values: vec!["gold".to_string()],
                }],
            });
            PolicyFacts {
                name: format!("policy-{i:03}"),
                countries,
                allowed_locations,
                cluster_selector,
                enforcement: if rng.chance(20) {
                    Enforcement::Audit
                } else {
                    Enforcement::Enforce
                },
            }
        })
        .collect()
}

fn workloads(rng: &mut Lcg) -> Vec<WorkloadFacts> {
    (0..WORKLOADS)
        .map(|i| WorkloadFacts {
            namespace: format!("team-{}", i % 37),
            name: format!("workload-{i:05}"),
            countries: (0..1 + rng.below(4))
                .map(|_| COUNTRIES[rng.below(COUNTRIES.len())].to_string())
                .collect(),
        })
        .collect()
}

/// Peak resident set size in KiB (`VmHWM`), if the platform reports it.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

fn min_and_median(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[0], samples[samples.len() / 2])
}

fn main() {
    let mut rng = Lcg(0x5EED_2024);
    let clusters = clusters(&mut rng);
    let policies = policies(&mut rng);
    let workloads = workloads(&mut rng);

    let mut builds = Vec::with_capacity(RUNS);
    let mut totals = Vec::with_capacity(RUNS);
    let mut outcomes = BTreeMap::<String, usize>::new();
    let mut verdicts = 0usize;
    for run in 0..RUNS {
        let start = Instant::now();
        let engine = Engine::new(black_box(&policies), black_box(&clusters));
        let built = start.elapsed();
        for workload in &workloads {
            let decision = black_box(engine.decide(black_box(workload)));
            if run == 0 {
                let key = format!("{:?}/{}", decision.mode, decision.reason());
                *outcomes.entry(key).or_default() += 1;
                verdicts += decision.clusters.len();
            }
        }
        totals.push(start.elapsed());
        builds.push(built);
    }

    let (build_min, build_median) = min_and_median(builds);
    let (min, median) = min_and_median(totals);
    println!(
        "placement: Engine::new with {POLICIES} policies x {CLUSTERS} clusters: median {:.3} ms \
         (min {:.3} ms)",
        build_median.as_secs_f64() * 1e3,
        build_min.as_secs_f64() * 1e3,
    );
    let rss = peak_rss_kib()
        .map(|kib| format!("{:.1} MiB", kib as f64 / 1024.0))
        .unwrap_or_else(|| "unknown".to_string());
    println!(
        "placement: {WORKLOADS} workloads x {CLUSTERS} clusters x {POLICIES} policies: median \
         {:.3} s (min {:.3} s), peak RSS {rss}",
        median.as_secs_f64(),
        min.as_secs_f64(),
    );
    println!(
        "placement: {verdicts} cluster verdicts per run; outcomes (mode/reason): {outcomes:?}"
    );
}
