//! Unit tests for the placement rules.

use std::collections::BTreeMap;

use super::*;

pub(super) fn cluster(name: &str, country: &str, region: &str) -> ClusterFacts {
    ClusterFacts {
        name: name.to_string(),
        labels: BTreeMap::new(),
        country: country.to_string(),
        region: region.to_string(),
        ready: true,
        verified: true,
        schedulable: true,
    }
}

fn labelled(mut cluster: ClusterFacts, labels: &[(&str, &str)]) -> ClusterFacts {
    cluster.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cluster
}

fn location(country: &str, region: Option<&str>) -> Location {
    Location {
        country: country.to_string(),
        region: region.map(str::to_string),
    }
}

/// An Enforce policy allowing the given `COUNTRY` or `COUNTRY/region` locations.
fn policy(name: &str, countries: &[&str], locations: &[&str]) -> PolicyFacts {
    PolicyFacts {
        name: name.to_string(),
        countries: countries.iter().map(|c| c.to_string()).collect(),
        allowed_locations: locations
            .iter()
            .map(|l| match l.split_once('/') {
                Some((country, region)) => location(country, Some(region)),
                None => location(l, None),
            })
            .collect(),
        cluster_selector: None,
        enforcement: Enforcement::Enforce,
    }
}

fn audit(mut policy: PolicyFacts) -> PolicyFacts {
    policy.enforcement = Enforcement::Audit;
    policy
}

fn with_selector(mut policy: PolicyFacts, labels: &[(&str, &str)]) -> PolicyFacts {
    policy.cluster_selector = Some(Selector {
        match_labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        match_expressions: Vec::new(),
    });
    policy
}

fn workload(countries: &[&str]) -> WorkloadFacts {
    WorkloadFacts {
        namespace: "shop".to_string(),
        name: "orders".to_string(),
        countries: countries.iter().map(|c| c.to_string()).collect(),
    }
}

fn reason_of<'d>(decision: &'d Decision, cluster: &str) -> &'d str {
    &decision
        .verdict(cluster)
        .expect("cluster has a verdict")
        .reason
}

fn verdict_of<'d>(decision: &'d Decision, cluster: &str) -> &'d Verdict {
    &decision
        .verdict(cluster)
        .expect("cluster has a verdict")
        .verdict
}

fn zurich_and_moscow() -> Vec<ClusterFacts> {
    vec![
        cluster("zrh-1", "CH", "zurich"),
        cluster("zrh-2", "CH", "zurich"),
        cluster("msk-1", "RU", "moscow"),
    ]
}

const APAC: [&str; 18] = [
    "AU", "NZ", "JP", "BD", "BN", "KH", "IN", "ID", "KR", "LA", "MY", "NP", "PK", "PH", "SG", "LK",
    "TH", "VN",
];
const EUROPE: [&str; 12] = [
    "AT", "BE", "DE", "DK", "ES", "FI", "FR", "IE", "IT", "NL", "PT", "SE",
];

fn seed_policies() -> Vec<PolicyFacts> {
    vec![
        policy("europe-to-zurich", &EUROPE, &["CH/zurich"]),
        policy("north-america-to-zurich", &["US", "CA"], &["CH/zurich"]),
        policy("apac-to-zurich", &APAC, &["CH/zurich"]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Seed scenario

#[test]
fn seed_apac_workload_targets_zurich_and_forbids_moscow() {
    let decision = decide(&seed_policies(), &zurich_and_moscow(), &workload(&APAC));
    assert_eq!(decision.outcome, Outcome::Placeable);
    assert_eq!(decision.mode, Mode::Enforce);
    assert!(decision.is_placeable() && decision.writes_allowed());
    assert_eq!(decision.targets, vec!["zrh-1", "zrh-2"]);
    assert_eq!(decision.allowed, vec!["zrh-1", "zrh-2"]);
    assert_eq!(decision.governing_policies, vec!["apac-to-zurich"]);
    assert_eq!(verdict_of(&decision, "msk-1"), &Verdict::Forbidden);
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"
    );
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: allowed by apac-to-zurich (CH/zurich)"
    );
    assert!(decision.audit_findings.is_empty());
    assert_eq!(decision.reason(), "Placeable");
    assert_eq!(decision.summary(), "Placeable on zrh-1, zrh-2.");
}

#[test]
fn seed_apac_policy_that_also_allows_moscow_targets_all_three() {
    let mut policies = seed_policies();
    policies[2]
        .allowed_locations
        .push(location("RU", Some("moscow")));
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&APAC));
    assert_eq!(decision.outcome, Outcome::Placeable);
    assert_eq!(decision.targets, vec!["msk-1", "zrh-1", "zrh-2"]);
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: allowed by apac-to-zurich (RU/moscow)"
    );
}

#[test]
fn seed_workloads_of_other_regions_are_placed_in_zurich() {
    let engine = Engine::new(&seed_policies(), &zurich_and_moscow());
    for countries in [&["DE", "FR"][..], &["US", "CA"], &["DE", "US", "AU"]] {
        let decision = engine.decide(&workload(countries));
        assert_eq!(decision.targets, vec!["zrh-1", "zrh-2"], "{countries:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Default deny

#[test]
fn default_deny_when_one_country_is_ungoverned() {
    let policies = vec![policy("apac-to-zurich", &["AU"], &["CH/zurich"])];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU", "BD"]));
    assert_eq!(
        decision.outcome,
        Outcome::NoPolicy {
            countries: vec!["BD".to_string()]
        }
    );
    assert!(!decision.is_placeable());
    assert!(decision.targets.is_empty() && decision.allowed.is_empty());
    assert_eq!(decision.clusters.len(), 3);
    for verdict in &decision.clusters {
        assert_eq!(verdict.verdict, Verdict::Forbidden);
        assert_eq!(
            verdict.reason,
            format!(
                "{}: forbidden: no policy governs BD (default deny)",
                verdict.name
            )
        );
    }
    assert_eq!(decision.governing_policies, vec!["apac-to-zurich"]);
    assert_eq!(decision.mode, Mode::Enforce);
    assert_eq!(decision.reason(), "NoPolicyForCountry");
    assert_eq!(
        decision.summary(),
        "Not placed: no policy governs BD (default deny); add a residency policy that governs BD."
    );
}

#[test]
fn default_deny_lists_every_ungoverned_country_sorted() {
    let policies = vec![policy("p", &["AU"], &["CH"])];
    let decision = decide(
        &policies,
        &zurich_and_moscow(),
        &workload(&["NZ", "AU", "BD"]),
    );
    assert_eq!(
        decision.outcome,
        Outcome::NoPolicy {
            countries: vec!["BD".to_string(), "NZ".to_string()]
        }
    );
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: forbidden: no policy governs BD, NZ (default deny)"
    );
}

#[test]
fn default_deny_with_only_audit_policies_is_in_audit_mode() {
    let policies = vec![audit(policy("p", &["AU"], &["CH"]))];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU", "BD"]));
    assert_eq!(decision.mode, Mode::Audit);
    assert_eq!(decision.reason(), "NoPolicyForCountry");
    assert!(!decision.writes_allowed());
}

#[test]
fn workload_without_countries_is_not_placed() {
    let decision = decide(&seed_policies(), &zurich_and_moscow(), &workload(&[]));
    assert_eq!(decision.outcome, Outcome::NoPolicy { countries: vec![] });
    assert!(decision.targets.is_empty());
    assert!(
        decision
            .clusters
            .iter()
            .all(|c| c.verdict == Verdict::Forbidden)
    );
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: forbidden: the workload declares no country (default deny)"
    );
    assert!(
        decision
            .summary()
            .starts_with("Not placed: the workload declares no country")
    );
}

// ---------------------------------------------------------------------------------------------
// Allowed sets

#[test]
fn single_policy_allows_its_locations_only() {
    let clusters = vec![
        cluster("fra-1", "DE", "frankfurt"),
        cluster("zrh-1", "CH", "zurich"),
        cluster("gva-1", "CH", "geneva"),
    ];
    let policies = vec![policy("de-local", &["DE"], &["DE/frankfurt"])];
    let decision = decide(&policies, &clusters, &workload(&["DE"]));
    assert_eq!(decision.targets, vec!["fra-1"]);
    assert_eq!(decision.allowed, vec!["fra-1"]);
    assert_eq!(verdict_of(&decision, "zrh-1"), &Verdict::Forbidden);
    assert_eq!(verdict_of(&decision, "gva-1"), &Verdict::Forbidden);
}

#[test]
fn region_none_matches_any_region_of_the_country() {
    let clusters = vec![
        cluster("zrh-1", "CH", "zurich"),
        cluster("gva-1", "CH", "geneva"),
        cluster("fra-1", "DE", "frankfurt"),
    ];
    let policies = vec![policy("swiss", &["CH"], &["CH"])];
    let decision = decide(&policies, &clusters, &workload(&["CH"]));
    assert_eq!(decision.targets, vec!["gva-1", "zrh-1"]);

    let policies = vec![policy("zurich-only", &["CH"], &["CH/zurich"])];
    let decision = decide(&policies, &clusters, &workload(&["CH"]));
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        reason_of(&decision, "gva-1"),
        "gva-1: forbidden: CH/geneva not allowed for CH by zurich-only"
    );
}

#[test]
fn intersection_of_two_policies_for_the_same_country() {
    let clusters = vec![
        cluster("zrh-1", "CH", "zurich"),
        cluster("gva-1", "CH", "geneva"),
        cluster("fra-1", "DE", "frankfurt"),
    ];
    let policies = vec![
        policy("swiss-or-german", &["AU"], &["CH", "DE"]),
        policy(
            "zurich-or-frankfurt",
            &["AU"],
            &["CH/zurich", "DE/frankfurt"],
        ),
        policy("no-germany", &["AU"], &["CH"]),
    ];
    let decision = decide(&policies, &clusters, &workload(&["AU"]));
    assert_eq!(decision.allowed, vec!["zrh-1"]);
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: allowed by no-germany, swiss-or-german, zurich-or-frankfurt (CH/zurich)"
    );
    assert_eq!(
        reason_of(&decision, "gva-1"),
        "gva-1: forbidden: CH/geneva not allowed for AU by zurich-or-frankfurt"
    );
    assert_eq!(
        reason_of(&decision, "fra-1"),
        "fra-1: forbidden: DE/frankfurt not allowed for AU by no-germany"
    );
}

#[test]
fn intersection_across_countries() {
    let clusters = vec![
        cluster("zrh-1", "CH", "zurich"),
        cluster("gva-1", "CH", "geneva"),
        cluster("fra-1", "DE", "frankfurt"),
    ];
    let policies = vec![
        policy("au-policy", &["AU"], &["CH", "DE"]),
        policy("nz-policy", &["NZ"], &["CH"]),
        policy("jp-policy", &["JP"], &["DE"]),
    ];
    let engine = Engine::new(&policies, &clusters);
    assert_eq!(
        engine.decide(&workload(&["AU"])).targets,
        vec!["fra-1", "gva-1", "zrh-1"]
    );
    let both = engine.decide(&workload(&["AU", "NZ"]));
    assert_eq!(both.targets, vec!["gva-1", "zrh-1"]);
    assert_eq!(both.governing_policies, vec!["au-policy", "nz-policy"]);
    assert_eq!(
        reason_of(&both, "fra-1"),
        "fra-1: forbidden: DE/frankfurt not allowed for NZ by nz-policy"
    );
    assert_eq!(
        engine.decide(&workload(&["NZ", "JP"])).reason(),
        "PolicyConflict"
    );
}

#[test]
fn conflict_names_the_clashing_policies() {
    let policies = vec![
        policy("russia-only", &["AU"], &["RU"]),
        policy("apac-to-zurich", &["AU", "NZ"], &["CH/zurich"]),
    ];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU", "NZ"]));
    let expected = Outcome::Conflict {
        policies: vec![
            ConflictEntry {
                policy: "apac-to-zurich".to_string(),
                countries: vec!["AU".to_string(), "NZ".to_string()],
                allows: vec!["zrh-1".to_string(), "zrh-2".to_string()],
            },
            ConflictEntry {
                policy: "russia-only".to_string(),
                countries: vec!["AU".to_string()],
                allows: vec!["msk-1".to_string()],
            },
        ],
    };
    assert_eq!(decision.outcome, expected);
    assert_eq!(
        decision.outcome.message(),
        "no cluster is allowed by every policy: apac-to-zurich (AU, NZ) allows zrh-1, zrh-2; \
         russia-only (AU) allows msk-1"
    );
    assert_eq!(decision.reason(), "PolicyConflict");
    assert!(decision.allowed.is_empty() && decision.targets.is_empty());
    assert!(
        decision
            .clusters
            .iter()
            .all(|c| c.verdict == Verdict::Forbidden)
    );
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"
    );
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: forbidden: CH/zurich not allowed for AU by russia-only"
    );
    assert_eq!(
        decision.summary(),
        "Not placed: no cluster is allowed by every policy: apac-to-zurich (AU, NZ) allows \
         zrh-1, zrh-2; russia-only (AU) allows msk-1; change these policies so that at least one \
         cluster satisfies all of them."
    );
}

#[test]
fn conflict_with_a_policy_allowing_no_known_cluster() {
    let policies = vec![policy("tokyo", &["JP"], &["JP/tokyo"])];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["JP"]));
    assert_eq!(
        decision.outcome.message(),
        "no cluster is allowed by every policy: tokyo (JP) allows no cluster"
    );
}

// ---------------------------------------------------------------------------------------------
// Eligibility filters

fn single_ineligible(edit: impl Fn(&mut ClusterFacts)) -> Decision {
    let mut clusters = vec![
        cluster("zrh-1", "CH", "zurich"),
        cluster("zrh-2", "CH", "zurich"),
    ];
    edit(&mut clusters[1]);
    let policies = vec![policy("apac-to-zurich", &["AU"], &["CH/zurich"])];
    decide(&policies, &clusters, &workload(&["AU"]))
}

#[test]
fn not_ready_cluster_is_allowed_but_not_a_target() {
    let decision = single_ineligible(|c| c.ready = false);
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(decision.allowed, vec!["zrh-1", "zrh-2"]);
    assert_eq!(
        verdict_of(&decision, "zrh-2"),
        &Verdict::AllowedNotEligible {
            because: vec![Ineligibility::NotReady]
        }
    );
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: allowed by apac-to-zurich, but not a target: not ready"
    );
}

#[test]
fn unverified_cluster_is_allowed_but_not_a_target() {
    let decision = single_ineligible(|c| c.verified = false);
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        verdict_of(&decision, "zrh-2"),
        &Verdict::AllowedNotEligible {
            because: vec![Ineligibility::LocationNotVerified]
        }
    );
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: allowed by apac-to-zurich, but not a target: location not verified"
    );
}

#[test]
fn cordoned_cluster_is_allowed_but_not_a_target() {
    let decision = single_ineligible(|c| c.schedulable = false);
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        verdict_of(&decision, "zrh-2"),
        &Verdict::AllowedNotEligible {
            because: vec![Ineligibility::Cordoned]
        }
    );
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: allowed by apac-to-zurich, but not a target: cordoned"
    );
    assert_eq!(
        decision.summary(),
        "Placeable on zrh-1; allowed but not eligible: zrh-2."
    );
}

#[test]
fn every_ineligibility_is_listed() {
    let decision = single_ineligible(|c| {
        c.ready = false;
        c.verified = false;
        c.schedulable = false;
    });
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: allowed by apac-to-zurich, but not a target: not ready, location not verified, \
         cordoned"
    );
}

#[test]
fn no_eligible_cluster() {
    let mut clusters = zurich_and_moscow();
    clusters[0].ready = false;
    clusters[1].verified = false;
    clusters[1].schedulable = false;
    let policies = vec![policy("apac-to-zurich", &["AU"], &["CH/zurich"])];
    let decision = decide(&policies, &clusters, &workload(&["AU"]));
    assert_eq!(decision.outcome, Outcome::NoEligibleCluster);
    assert_eq!(decision.reason(), "NoEligibleCluster");
    assert!(!decision.is_placeable());
    assert!(decision.targets.is_empty());
    assert_eq!(decision.allowed, vec!["zrh-1", "zrh-2"]);
    assert_eq!(
        decision.summary(),
        "Not placed: no allowed cluster is eligible (zrh-1: not ready; zrh-2: location not \
         verified, cordoned); make one ready, location-verified and schedulable, or allow \
         another cluster."
    );
}

// ---------------------------------------------------------------------------------------------
// Selectors

#[test]
fn selector_only_policy() {
    let clusters = vec![
        labelled(cluster("zrh-1", "CH", "zurich"), &[("tier", "gold")]),
        labelled(cluster("msk-1", "RU", "moscow"), &[("tier", "silver")]),
        cluster("fra-1", "DE", "frankfurt"),
    ];
    let policies = vec![with_selector(
        policy("gold-only", &["AU", "NZ"], &[]),
        &[("tier", "gold")],
    )];
    let decision = decide(&policies, &clusters, &workload(&["NZ", "AU"]));
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: labels do not match the clusterSelector of gold-only (AU)"
    );
    assert_eq!(verdict_of(&decision, "fra-1"), &Verdict::Forbidden);
}

#[test]
fn selector_and_locations_must_both_match() {
    let clusters = vec![
        labelled(cluster("zrh-1", "CH", "zurich"), &[("tier", "gold")]),
        cluster("zrh-2", "CH", "zurich"),
        labelled(cluster("msk-1", "RU", "moscow"), &[("tier", "gold")]),
    ];
    let policies = vec![with_selector(
        policy("gold-in-zurich", &["AU"], &["CH/zurich"]),
        &[("tier", "gold")],
    )];
    let decision = decide(&policies, &clusters, &workload(&["AU"]));
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: forbidden: labels do not match the clusterSelector of gold-in-zurich (AU)"
    );
    // A location mismatch is reported before the selector.
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by gold-in-zurich"
    );
}

#[test]
fn policy_without_locations_or_selector_allows_nothing() {
    let policies = vec![policy("empty", &["AU"], &[])];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU"]));
    assert_eq!(decision.reason(), "PolicyConflict");
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: forbidden: empty (AU) has neither allowedLocations nor a clusterSelector, so it \
         allows no cluster"
    );
}

#[test]
fn empty_selector_matches_every_cluster() {
    let mut p = policy("anything", &["AU"], &[]);
    p.cluster_selector = Some(Selector::default());
    let decision = decide(&[p], &zurich_and_moscow(), &workload(&["AU"]));
    assert_eq!(decision.targets, vec!["msk-1", "zrh-1", "zrh-2"]);
}

// ---------------------------------------------------------------------------------------------
// Audit

#[test]
fn audit_only_workload_is_reported_not_written() {
    let policies = vec![audit(policy("apac-audit", &["AU"], &["CH/zurich"]))];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU"]));
    assert_eq!(decision.mode, Mode::Audit);
    assert!(!decision.writes_allowed());
    assert!(decision.is_placeable());
    assert_eq!(decision.reason(), "Placeable");
    assert_eq!(decision.targets, vec!["zrh-1", "zrh-2"]);
    assert_eq!(verdict_of(&decision, "msk-1"), &Verdict::Forbidden);
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by apac-audit"
    );
    assert!(decision.audit_findings.is_empty());
    assert_eq!(
        decision.summary(),
        "Audit only, nothing is written: would be placeable on zrh-1, zrh-2."
    );
}

#[test]
fn audit_only_conflict_keeps_its_reason() {
    let policies = vec![
        audit(policy("a", &["AU"], &["CH"])),
        audit(policy("b", &["AU"], &["RU"])),
    ];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU"]));
    assert_eq!(decision.mode, Mode::Audit);
    assert_eq!(decision.reason(), "PolicyConflict");
    assert!(
        decision
            .summary()
            .starts_with("Audit only, nothing is written: would not be placed: no cluster is")
    );
}

#[test]
fn countries_governed_only_by_audit_do_not_restrict_enforce_mode() {
    let policies = vec![
        policy("au-enforce", &["AU"], &["CH", "RU"]),
        audit(policy("nz-audit", &["NZ"], &["RU"])),
    ];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU", "NZ"]));
    assert_eq!(decision.mode, Mode::Enforce);
    assert_eq!(decision.targets, vec!["msk-1", "zrh-1", "zrh-2"]);
    assert_eq!(decision.governing_policies, vec!["au-enforce", "nz-audit"]);
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: allowed by au-enforce (CH/zurich)"
    );
}

#[test]
fn mixed_enforce_and_audit_yields_findings_for_targets() {
    let policies = vec![
        policy("apac-to-zurich", &["AU", "NZ"], &["CH/zurich", "RU"]),
        audit(policy("apac-audit", &["AU", "NZ", "JP"], &["RU"])),
        audit(with_selector(
            policy("gold-audit", &["NZ"], &[]),
            &[("tier", "gold")],
        )),
    ];
    let mut clusters = zurich_and_moscow();
    clusters[1].ready = false; // zrh-2 is not a target: no finding for it.
    let decision = decide(&policies, &clusters, &workload(&["AU", "NZ"]));
    assert_eq!(decision.mode, Mode::Enforce);
    assert_eq!(decision.targets, vec!["msk-1", "zrh-1"]);
    let findings: Vec<(&str, &str, &str, &str)> = decision
        .audit_findings
        .iter()
        .map(|f| {
            (
                f.cluster.as_str(),
                f.policy.as_str(),
                f.country.as_str(),
                f.message.as_str(),
            )
        })
        .collect();
    assert_eq!(
        findings,
        vec![
            (
                "msk-1",
                "gold-audit",
                "NZ",
                "msk-1 would be forbidden by gold-audit (Audit): labels do not match its \
                 clusterSelector (NZ)"
            ),
            (
                "zrh-1",
                "apac-audit",
                "AU",
                "zrh-1 would be forbidden by apac-audit (Audit): CH/zurich not allowed for AU"
            ),
            (
                "zrh-1",
                "apac-audit",
                "NZ",
                "zrh-1 would be forbidden by apac-audit (Audit): CH/zurich not allowed for NZ"
            ),
            (
                "zrh-1",
                "gold-audit",
                "NZ",
                "zrh-1 would be forbidden by gold-audit (Audit): labels do not match its \
                 clusterSelector (NZ)"
            ),
        ]
    );
    assert_eq!(
        decision.summary(),
        "Placeable on msk-1, zrh-1; allowed but not eligible: zrh-2; audit finding: msk-1 would \
         be forbidden by gold-audit (Audit): labels do not match its clusterSelector (NZ) (and 3 \
         more)."
    );
}

#[test]
fn audit_policies_do_not_forbid_in_enforce_mode() {
    let policies = vec![
        policy("au-enforce", &["AU"], &["CH"]),
        audit(policy("au-audit", &["AU"], &["RU"])),
    ];
    let decision = decide(&policies, &zurich_and_moscow(), &workload(&["AU"]));
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by au-enforce"
    );
}

// ---------------------------------------------------------------------------------------------
// Reasons

#[test]
fn forbidden_reason_names_first_policy_and_counts_the_others() {
    let policies = vec![
        policy("c-policy", &["NZ"], &["CH"]),
        with_selector(
            policy("b-policy", &["AU"], &["CH", "RU"]),
            &[("tier", "gold")],
        ),
        policy("a-policy", &["NZ", "AU"], &["CH"]),
        policy("d-policy", &["AU"], &["CH", "RU"]),
    ];
    let mut clusters = zurich_and_moscow();
    clusters[0] = labelled(clusters[0].clone(), &[("tier", "gold")]);
    let decision = decide(&policies, &clusters, &workload(&["AU", "NZ"]));
    assert_eq!(decision.targets, vec!["zrh-1"]);
    assert_eq!(
        reason_of(&decision, "msk-1"),
        "msk-1: forbidden: RU/moscow not allowed for AU by a-policy (and 2 more)"
    );
    assert_eq!(
        reason_of(&decision, "zrh-2"),
        "zrh-2: forbidden: labels do not match the clusterSelector of b-policy (AU)"
    );
    assert_eq!(
        reason_of(&decision, "zrh-1"),
        "zrh-1: allowed by a-policy, b-policy, c-policy, d-policy (CH/zurich)"
    );
}

#[test]
fn every_reason_starts_with_the_cluster_name() {
    let mut clusters = zurich_and_moscow();
    clusters[1].verified = false;
    let decision = decide(&seed_policies(), &clusters, &workload(&["AU"]));
    assert_eq!(
        decision
            .clusters
            .iter()
            .map(|c| c.reason.as_str())
            .collect::<Vec<_>>(),
        vec![
            "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich",
            "zrh-1: allowed by apac-to-zurich (CH/zurich)",
            "zrh-2: allowed by apac-to-zurich, but not a target: location not verified",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Engine index and determinism

#[test]
fn index_maps_countries_to_policies_by_enforcement() {
    let policies = vec![
        policy("z-au", &["AU"], &["CH"]),
        policy("a-au-nz", &["AU", "NZ"], &["CH/zurich"]),
        audit(policy("m-au-audit", &["AU"], &["RU"])),
    ];
    let engine = Engine::new(&policies, &zurich_and_moscow());
    assert_eq!(
        engine.policies_governing("AU", Enforcement::Enforce),
        vec!["a-au-nz", "z-au"]
    );
    assert_eq!(
        engine.policies_governing("AU", Enforcement::Audit),
        vec!["m-au-audit"]
    );
    assert_eq!(
        engine.policies_governing("NZ", Enforcement::Enforce),
        vec!["a-au-nz"]
    );
    assert!(
        engine
            .policies_governing("NZ", Enforcement::Audit)
            .is_empty()
    );
    assert!(
        engine
            .policies_governing("BD", Enforcement::Enforce)
            .is_empty()
    );
    assert_eq!(
        engine.policy_names().collect::<Vec<_>>(),
        vec!["a-au-nz", "m-au-audit", "z-au"]
    );
}

#[test]
fn index_precomputes_allowed_clusters_per_policy() {
    let mut clusters = zurich_and_moscow();
    clusters.push(cluster("gva-1", "CH", "geneva"));
    clusters[2].schedulable = false;
    let policies = vec![
        policy("swiss", &["AU"], &["CH"]),
        policy("zurich", &["AU"], &["CH/zurich"]),
        policy("moscow", &["AU"], &["RU/moscow"]),
        policy("nothing", &["AU"], &[]),
    ];
    let engine = Engine::new(&policies, &clusters);
    assert_eq!(
        engine.cluster_names().collect::<Vec<_>>(),
        vec!["gva-1", "msk-1", "zrh-1", "zrh-2"]
    );
    assert_eq!(
        engine.clusters_allowed_by("swiss"),
        Some(vec!["gva-1", "zrh-1", "zrh-2"])
    );
    assert_eq!(
        engine.clusters_allowed_by("zurich"),
        Some(vec!["zrh-1", "zrh-2"])
    );
    assert_eq!(engine.clusters_allowed_by("moscow"), Some(vec!["msk-1"]));
    assert_eq!(engine.clusters_allowed_by("nothing"), Some(vec![]));
    assert_eq!(engine.clusters_allowed_by("unknown"), None);
    assert_eq!(engine.eligible_clusters(), vec!["gva-1", "zrh-1", "zrh-2"]);
}

#[test]
fn index_handles_many_clusters_across_bitset_words() {
    let clusters: Vec<ClusterFacts> = (0..150)
        .map(|i| {
            if i % 3 == 0 {
                cluster(&format!("c{i:03}"), "CH", "zurich")
            } else {
                cluster(&format!("c{i:03}"), "RU", "moscow")
            }
        })
        .collect();
    let policies = vec![policy("swiss", &["AU"], &["CH"])];
    let engine = Engine::new(&policies, &clusters);
    let expected: Vec<String> = (0..150)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("c{i:03}"))
        .collect();
    assert_eq!(
        engine.clusters_allowed_by("swiss").unwrap(),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    let decision = engine.decide(&workload(&["AU"]));
    assert_eq!(decision.targets, expected);
    assert_eq!(decision.clusters.len(), 150);
}

#[test]
fn duplicate_names_keep_the_first_after_sorting() {
    // Two clusters called zrh-1: the one that sorts first (labels `{}` < `{a: b}`) wins.
    let plain = cluster("zrh-1", "CH", "zurich");
    let other = labelled(cluster("zrh-1", "RU", "moscow"), &[("a", "b")]);
    // Two policies called p: the one that sorts first (countries {AU} < {NZ}) wins.
    let p_au = policy("p", &["AU"], &["CH"]);
    let p_nz = policy("p", &["NZ"], &["RU"]);
    for (policies, clusters) in [
        (
            vec![p_au.clone(), p_nz.clone()],
            vec![plain.clone(), other.clone()],
        ),
        (vec![p_nz, p_au], vec![other, plain]),
    ] {
        let engine = Engine::new(&policies, &clusters);
        assert_eq!(engine.cluster_names().collect::<Vec<_>>(), vec!["zrh-1"]);
        assert_eq!(engine.clusters_allowed_by("p"), Some(vec!["zrh-1"]));
        let decision = engine.decide(&workload(&["AU"]));
        assert_eq!(decision.targets, vec!["zrh-1"]);
        assert_eq!(decision.clusters.len(), 1);
        assert_eq!(
            engine.decide(&workload(&["NZ"])).reason(),
            "NoPolicyForCountry"
        );
    }
}

#[test]
fn input_order_does_not_matter() {
    let mut policies = seed_policies();
    policies.push(audit(policy("apac-audit", &["AU"], &["RU"])));
    let mut clusters = zurich_and_moscow();
    let first = decide(&policies, &clusters, &workload(&["AU", "DE"]));
    policies.reverse();
    clusters.reverse();
    assert_eq!(
        first,
        decide(&policies, &clusters, &workload(&["DE", "AU"]))
    );
    assert_eq!(
        first.governing_policies,
        vec!["apac-audit", "apac-to-zurich", "europe-to-zurich"]
    );
}

#[test]
fn free_function_matches_engine() {
    let engine = Engine::new(&seed_policies(), &zurich_and_moscow());
    let w = workload(&["AU", "US"]);
    assert_eq!(
        engine.decide(&w),
        decide(&seed_policies(), &zurich_and_moscow(), &w)
    );
}

#[test]
fn no_clusters_at_all_is_a_conflict() {
    let decision = decide(&seed_policies(), &[], &workload(&["AU"]));
    assert_eq!(decision.reason(), "PolicyConflict");
    assert!(decision.clusters.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Output shape

#[test]
fn decision_serializes_with_camel_case_keys() {
    let mut clusters = zurich_and_moscow();
    clusters[1].verified = false;
    let decision = decide(&seed_policies(), &clusters, &workload(&["AU"]));
    let json = serde_json::to_value(&decision).unwrap();
    assert_eq!(json["mode"], "Enforce");
    assert_eq!(json["outcome"]["type"], "Placeable");
    assert_eq!(json["targets"], serde_json::json!(["zrh-1"]));
    assert_eq!(
        json["governingPolicies"],
        serde_json::json!(["apac-to-zurich"])
    );
    assert_eq!(json["auditFindings"], serde_json::json!([]));
    assert_eq!(json["clusters"][0]["verdict"]["type"], "Forbidden");
    assert_eq!(
        json["clusters"][2]["verdict"],
        serde_json::json!({"type": "AllowedNotEligible", "because": ["LocationNotVerified"]})
    );

    let conflict = decide(
        &[policy("a", &["AU"], &["RU"]), policy("b", &["AU"], &["CH"])],
        &zurich_and_moscow(),
        &workload(&["AU"]),
    );
    let json = serde_json::to_value(&conflict).unwrap();
    assert_eq!(json["outcome"]["type"], "Conflict");
    assert_eq!(
        json["outcome"]["policies"][0]["allows"],
        serde_json::json!(["msk-1"])
    );
}

#[test]
fn facts_deserialize_from_camel_case_json() {
    let policy: PolicyFacts = serde_json::from_value(serde_json::json!({
        "name": "apac-to-zurich",
        "countries": ["AU", "NZ"],
        "allowedLocations": [{"country": "CH", "region": "zurich"}, {"country": "LI"}],
        "clusterSelector": {"matchLabels": {"tier": "gold"}},
    }))
    .unwrap();
    assert_eq!(policy.enforcement, Enforcement::Enforce);
    assert_eq!(policy.allowed_locations[1], location("LI", None));
    let zrh = labelled(cluster("zrh-1", "CH", "zurich"), &[("tier", "gold")]);
    assert!(policy.allows(&zrh));
    assert!(!policy.allows(&cluster("zrh-1", "CH", "zurich")));
}

#[test]
fn reasons_are_stable() {
    assert_eq!(Outcome::Placeable.reason(), "Placeable");
    assert_eq!(
        Outcome::NoPolicy { countries: vec![] }.reason(),
        "NoPolicyForCountry"
    );
    assert_eq!(
        Outcome::Conflict { policies: vec![] }.reason(),
        "PolicyConflict"
    );
    assert_eq!(Outcome::NoEligibleCluster.reason(), "NoEligibleCluster");
}

#[test]
fn long_summaries_are_abbreviated() {
    let clusters: Vec<ClusterFacts> = (0..8)
        .map(|i| cluster(&format!("zrh-{i}"), "CH", "zurich"))
        .collect();
    let decision = decide(&seed_policies(), &clusters, &workload(&["AU"]));
    assert_eq!(
        decision.summary(),
        "Placeable on zrh-0, zrh-1, zrh-2, zrh-3, zrh-4 (and 3 more)."
    );
}
