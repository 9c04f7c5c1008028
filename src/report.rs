//! `residency-operator report`: per country, which clusters hold its data, which workloads, the
//! evidence (attested node regions, the regions of the Pods' nodes and of the volumes) and the
//! violations. Built from the management cluster's objects, whose status the operator keeps
//! current (pure; the command only lists the objects): the workloads' placements, and each
//! member's inventory (MemberCluster status) for the copies no workload's record accounts for
//! (objects labelled with a country by hand, or left by a deleted workload; past the 50 listed,
//! its per-country counts), judged against the policies; the policies' compliance history and
//! the copies forgotten with a removed member (unverifiable).

use std::collections::BTreeMap;
use std::fmt::Write;

use kube::ResourceExt;
use serde::Serialize;

use crate::api::conditions::{self, types};
use crate::api::{CountryCode, DataMove, MemberCluster, ResidencyPolicy, ResidentWorkload};

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// One entry per country with data somewhere, sorted by code.
    pub countries: Vec<CountryReport>,
    /// Total violations.
    pub violation_count: usize,
}

/// Where one country's data lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CountryReport {
    /// ISO 3166-1 alpha-2 code.
    pub country: String,
    /// Its English short name.
    pub name: String,
    /// Every cluster holding its data, sorted.
    pub clusters: Vec<Holding>,
    /// What is where it must not be.
    pub violations: Vec<String>,
    /// When its data was where a policy forbids it (the policies' compliance history):
    /// `cluster: kind namespace/name from <time> to <time>` (or `until now`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<String>,
    /// Copies on member clusters removed while holding them (the policies' `status.forgotten`):
    /// `cluster: <n> object(s) since <time>: <what>`, unverifiable, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<String>,
    /// The verified moves of its data (the DataMove records), oldest first: `namespace/move:
    /// workload from -> to: phase, files, bytes, digest, when`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<String>,
    /// Copies whose location nothing proves (a volume without node affinity, a Pod on a node
    /// of unknown region): `cluster: namespace/workload: what`, sorted. Not violations, not
    /// proof.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unverifiable: Vec<String>,
    /// Volumes counted inside on their member's word (a StorageClass it vouches for):
    /// `cluster: namespace/workload: what`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vouched: Vec<String>,
}

/// One cluster holding a country's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Holding {
    /// MemberCluster name.
    pub cluster: String,
    /// `country/region` the cluster declares.
    pub location: String,
    /// Whether its location is attested (every node in an attested region).
    pub verified: bool,
    /// The node regions the cluster attests.
    pub attested_regions: Vec<String>,
    /// Who places each attested region, from the region catalogue: `eu-central-2 (aws:
    /// Zurich, CH)`, or `ru-central-1 (self-declared)` for a region no cloud provider lists.
    pub region_sources: Vec<String>,
    /// `namespace/name (state)` of each workload with a copy there.
    pub workloads: Vec<String>,
    /// Regions of the nodes the Pods run on (from the placements' evidence).
    pub node_regions: Vec<String>,
    /// Regions of the volumes.
    pub volume_regions: Vec<String>,
}

/// A cluster's entry, before its workloads and evidence are added.
fn holding(cluster: &str, mc: Option<&MemberCluster>) -> Holding {
    Holding {
        cluster: cluster.to_string(),
        location: mc
            .map(|m| format!("{}/{}", m.spec.location.country, m.spec.location.region))
            .unwrap_or_else(|| "unknown".into()),
        verified: mc
            .and_then(|m| m.status.as_ref())
            .is_some_and(|s| conditions::is_true(&s.conditions, types::LOCATION_VERIFIED)),
        attested_regions: mc
            .map(|m| m.spec.attestation.node_regions.clone())
            .unwrap_or_default(),
        region_sources: mc
            .and_then(|m| m.status.as_ref())
            .map(|s| s.regions.iter().map(region_source).collect())
            .unwrap_or_default(),
        workloads: Vec::new(),
        node_regions: Vec::new(),
        volume_regions: Vec::new(),
    }
}

/// `eu-central-2 (aws: Zurich, CH)` or `ru-central-1 (self-declared)`.
fn region_source(r: &crate::api::member_cluster::AttestedRegion) -> String {
    use crate::api::member_cluster::RegionSource;
    match r.source {
        RegionSource::SelfDeclared => format!("{} (self-declared)", r.name),
        RegionSource::NotListed => format!("{} (not a region of the nodes' provider)", r.name),
        RegionSource::Catalogue => format!("{} ({})", r.name, r.listed_by.join("; ")),
    }
}

/// One line of a move's record (pure).
pub fn move_line(m: &DataMove) -> String {
    let st = m.status.clone().unwrap_or_default();
    let phase = st
        .phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Staging".into());
    let mut line = format!(
        "{}/{}: {} from {} to {}: {phase}",
        m.namespace().unwrap_or_default(),
        m.name_any(),
        m.spec.workload,
        m.spec.source,
        m.spec.destinations.join(", "),
    );
    if !st.source_digest.is_empty() {
        let same = st
            .destination_digests
            .iter()
            .all(|d| d.digest == st.source_digest);
        let _ = write!(
            line,
            ", {} files, {} bytes, digest {} {}",
            st.files,
            st.bytes,
            st.source_digest,
            if same {
                "on every side"
            } else {
                "DIFFERS on a destination"
            }
        );
    }
    if let Some(t) = st.verified_at.as_ref().or(st.finished_at.as_ref()) {
        let _ = write!(line, ", {}", t.0);
    }
    let policies: Vec<String> = m
        .spec
        .policies
        .iter()
        .map(|p| match p.generation {
            Some(g) => format!("{} generation {g}", p.name),
            None => p.name.clone(),
        })
        .collect();
    if !policies.is_empty() {
        let _ = write!(line, " (policies: {})", policies.join(", "));
    }
    if phase == "Failed" && !st.message.is_empty() {
        let _ = write!(line, ": {}", st.message);
    }
    line
}

/// Builds the report (pure).
pub fn build(
    clusters: &[MemberCluster],
    workloads: &[ResidentWorkload],
    policies: &[ResidencyPolicy],
    moves: &[DataMove],
) -> Report {
    let cluster_by_name: BTreeMap<String, &MemberCluster> =
        clusters.iter().map(|c| (c.name_any(), c)).collect();
    let mut by_country: BTreeMap<String, (BTreeMap<String, Holding>, Vec<String>)> =
        BTreeMap::new();
    // per country: unverifiable and vouched copies
    let mut unproven: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
    for w in workloads {
        let Some(status) = &w.status else { continue };
        let id = format!("{}/{}", w.namespace().unwrap_or_default(), w.name_any());
        for p in &status.placements {
            let mc = cluster_by_name.get(&p.cluster);
            let verdict = status.clusters.iter().find(|c| c.name == p.cluster);
            for country in &w.spec.countries {
                let entry = by_country.entry(country.to_string()).or_default();
                let holding = entry
                    .0
                    .entry(p.cluster.clone())
                    .or_insert_with(|| holding(&p.cluster, mc.copied()));
                holding.workloads.push(format!("{id} ({})", p.state));
                if let Some(ev) = &p.evidence {
                    holding.node_regions.extend(ev.node_regions.iter().cloned());
                    holding
                        .volume_regions
                        .extend(ev.volume_regions.iter().cloned());
                    for o in &ev.outside {
                        entry.1.push(format!(
                            "{}: {id}: {o}, outside the attested regions",
                            p.cluster
                        ));
                    }
                    let u = unproven.entry(country.to_string()).or_default();
                    u.0.extend(
                        ev.unverifiable
                            .iter()
                            .map(|x| format!("{}: {id}: {x}", p.cluster)),
                    );
                    u.1.extend(
                        ev.vouched
                            .iter()
                            .map(|x| format!("{}: {id}: {x}", p.cluster)),
                    );
                }
                if let Some(v) = verdict.filter(|v| v.verdict == "Forbidden") {
                    entry.1.push(format!(
                        "{}: {id} ({}) holds data where it is forbidden: {}",
                        p.cluster, p.state, v.reason
                    ));
                }
            }
        }
    }
    // copies the members hold that no workload's record accounts for (their inventory)
    let policy_facts: Vec<_> = policies.iter().map(crate::facts::policy).collect();
    let forbidding = |country: &str, cluster: &crate::placement::ClusterFacts| {
        crate::facts::forbidding(&policy_facts, country, cluster).join(", ")
    };
    let mut unlisted: BTreeMap<String, usize> = BTreeMap::new();
    for mc in clusters {
        let Some(inv) = mc.status.as_ref().and_then(|s| s.inventory.as_ref()) else {
            continue;
        };
        let cluster = mc.name_any();
        let facts = crate::facts::cluster(mc, crate::facts::StatusSource::Conditions);
        for o in &inv.unrecorded {
            let at = match &o.namespace {
                Some(ns) => format!("{ns}/{}", o.name),
                None => o.name.clone(),
            };
            let whose = crate::fleet::labelled::unrecorded_owner(
                o.workload.as_deref(),
                o.workload.as_deref().is_some_and(|w| {
                    workloads.iter().any(|x| {
                        format!("{}/{}", x.namespace().unwrap_or_default(), x.name_any()) == w
                    })
                }),
            );
            let retained = if o.retained { "retained " } else { "" };
            for country in &o.countries {
                let entry = by_country.entry(country.clone()).or_default();
                entry
                    .0
                    .entry(cluster.clone())
                    .or_insert_with(|| holding(&cluster, Some(mc)))
                    .workloads
                    .push(format!("{} {at} (no workload's record)", o.kind));
                let forbidding = forbidding(country, &facts);
                if !forbidding.is_empty() {
                    entry.1.push(format!(
                        "{cluster}: {retained}{} {at} on {cluster}{whose} is labelled as holding {country} data, which {forbidding} does not allow",
                        o.kind,
                    ));
                }
            }
        }
        // past the objects listed: the per-country counts say how many more none accounts for
        for c in &inv.by_country {
            let listed = inv
                .unrecorded
                .iter()
                .filter(|o| o.countries.contains(&c.country))
                .count();
            let more = usize::try_from(c.unrecorded)
                .unwrap_or(0)
                .saturating_sub(listed);
            if more == 0 {
                continue;
            }
            let entry = by_country.entry(c.country.clone()).or_default();
            entry
                .0
                .entry(cluster.clone())
                .or_insert_with(|| holding(&cluster, Some(mc)))
                .workloads
                .push(format!(
                    "{more} more object(s) no workload's record accounts for (not listed; MemberCluster {cluster} status has the counts)"
                ));
            let forbidding = forbidding(&c.country, &facts);
            if !forbidding.is_empty() {
                entry.1.push(format!(
                    "{cluster}: {more} more object(s) not listed here are labelled as holding {} data, which {forbidding} does not allow",
                    c.country,
                ));
                *unlisted.entry(c.country.clone()).or_default() += more - 1;
            }
        }
    }
    // copies on clusters removed while holding them: unverifiable
    let mut forgotten: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for f in policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.forgotten)
    {
        for country in &f.countries {
            forgotten
                .entry(country.clone())
                .or_default()
                .insert(format!(
                    "{}: {} object(s) since {}: {}",
                    f.cluster, f.objects, f.since.0, f.message
                ));
            by_country.entry(country.clone()).or_default();
        }
    }
    // the policies' compliance history, per country
    let mut history: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for i in policies
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.history)
    {
        let at = match &i.namespace {
            Some(ns) => format!("{ns}/{}", i.name),
            None => i.name.clone(),
        };
        let until = match &i.to {
            Some(t) => format!("to {}", t.0),
            None => "until now".to_string(),
        };
        for country in &i.countries {
            history.entry(country.clone()).or_default().insert(format!(
                "{}: {} {at} from {} {until}",
                i.cluster, i.kind, i.from.0
            ));
            by_country.entry(country.clone()).or_default();
        }
    }
    // the moves of each country's data
    let mut moved: BTreeMap<String, Vec<(Option<k8s_openapi::jiff::Timestamp>, String)>> =
        BTreeMap::new();
    for m in moves {
        for country in &m.spec.countries {
            moved.entry(country.to_string()).or_default().push((
                m.metadata.creation_timestamp.as_ref().map(|t| t.0),
                move_line(m),
            ));
            by_country.entry(country.to_string()).or_default();
        }
    }
    let mut report = Report::default();
    for (country, (holdings, violations)) in by_country {
        let name = CountryCode::parse(&country)
            .map(|c| c.name())
            .unwrap_or("unknown")
            .to_string();
        let clusters = holdings
            .into_values()
            .map(|mut h| {
                for v in [&mut h.workloads, &mut h.node_regions, &mut h.volume_regions] {
                    v.sort();
                    v.dedup();
                }
                h
            })
            .collect();
        report.violation_count +=
            violations.len() + unlisted.get(&country).copied().unwrap_or_default();
        let (mut unverifiable, mut vouched) = unproven.remove(&country).unwrap_or_default();
        for v in [&mut unverifiable, &mut vouched] {
            v.sort();
            v.dedup();
        }
        report.countries.push(CountryReport {
            unverifiable,
            vouched,
            forgotten: forgotten
                .remove(&country)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            history: history
                .remove(&country)
                .unwrap_or_default()
                .into_iter()
                .collect(),
            moves: {
                let mut m = moved.remove(&country).unwrap_or_default();
                m.sort();
                m.into_iter().map(|(_, l)| l).collect()
            },
            country,
            name,
            clusters,
            violations,
        });
    }
    report
}

fn regions(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// The report as text: one block per country.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    if report.countries.is_empty() {
        out.push_str("No country's data is placed on any member cluster.\n");
    }
    for c in &report.countries {
        let _ = writeln!(out, "{} ({})", c.country, c.name);
        for h in &c.clusters {
            let self_declared: Vec<&str> = h
                .region_sources
                .iter()
                .filter(|r| r.ends_with("(self-declared)"))
                .filter_map(|r| r.split(' ').next())
                .collect();
            let location = if self_declared.is_empty() {
                h.location.clone()
            } else {
                format!("{} ({} self-declared)", h.location, self_declared.join(","))
            };
            let _ = writeln!(
                out,
                "  {:<8} {:<14} {:<10} nodes {:<14} volumes {:<14} {}",
                h.cluster,
                location,
                if h.verified { "verified" } else { "UNVERIFIED" },
                regions(&h.node_regions),
                regions(&h.volume_regions),
                h.workloads.join(", ")
            );
        }
        for v in &c.violations {
            let _ = writeln!(out, "  VIOLATION {v}");
        }
        for u in &c.unverifiable {
            let _ = writeln!(out, "  UNVERIFIABLE {u}");
        }
        for v in &c.vouched {
            let _ = writeln!(out, "  VOUCHED {v}");
        }
        for h in &c.history {
            let _ = writeln!(out, "  HISTORY {h}");
        }
        for f in &c.forgotten {
            let _ = writeln!(out, "  FORGOTTEN {f}");
        }
        for m in &c.moves {
            let _ = writeln!(out, "  MOVED {m}");
        }
    }
    let _ = writeln!(
        out,
        "{} countries, {} violation(s).",
        report.countries.len(),
        report.violation_count
    );
    out
}

/// The report as Markdown (for audits: one table per country).
pub fn markdown(report: &Report) -> String {
    let mut out = String::from("# Where each country's data lives\n");
    for c in &report.countries {
        let _ = writeln!(out, "\n## {} ({})\n", c.country, c.name);
        out.push_str("| cluster | location | verified | attested regions | node regions | volume regions | workloads |\n|---|---|---|---|---|---|---|\n");
        for h in &c.clusters {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                h.cluster,
                h.location,
                if h.verified { "yes" } else { "**no**" },
                if h.region_sources.is_empty() {
                    regions(&h.attested_regions)
                } else {
                    h.region_sources.join("<br>")
                },
                regions(&h.node_regions),
                regions(&h.volume_regions),
                h.workloads.join("<br>")
            );
        }
        for v in &c.violations {
            let _ = writeln!(out, "\n- **Violation:** {v}");
        }
        for u in &c.unverifiable {
            let _ = writeln!(out, "\n- **Unverifiable** (location not proven): {u}");
        }
        for v in &c.vouched {
            let _ = writeln!(out, "\n- Vouched for by its member (self-declared): {v}");
        }
        if !c.history.is_empty() {
            out.push_str("\nWhere its data was where a policy forbids it:\n\n");
            for h in &c.history {
                let _ = writeln!(out, "- {h}");
            }
        }
        for f in &c.forgotten {
            let _ = writeln!(out, "\n- **Unverifiable** (cluster removed): {f}");
        }
        if !c.moves.is_empty() {
            out.push_str("\nMoves of its data (DataMove records):\n\n");
            for m in &c.moves {
                let _ = writeln!(out, "- {m}");
            }
        }
    }
    let _ = writeln!(out, "\n{} violation(s) in total.", report.violation_count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resident_workload::{ClusterDecision, LocationEvidence, Placement};
    use serde_json::json;

    fn cluster(name: &str, country: &str, region: &str, node_region: &str) -> MemberCluster {
        serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "MemberCluster", "metadata": {"name": name},
            "spec": {"location": {"country": country, "region": region},
                     "attestation": {"nodeRegions": [node_region]}, "connection": {"local": {}}},
            "status": {"conditions": [{"type": "LocationVerified", "status": "True", "reason": "RegionsMatch",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn placement(cluster: &str, state: &str, region: &str) -> Placement {
        Placement {
            cluster: cluster.into(),
            state: state.into(),
            message: String::new(),
            objects: Vec::new(),
            evidence: Some(LocationEvidence {
                node_regions: if state == "Ready" {
                    vec![region.into()]
                } else {
                    Vec::new()
                },
                volume_regions: vec![region.into()],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn countries_list_their_clusters_evidence_and_violations() {
        let clusters = [
            cluster("zrh-1", "CH", "zurich", "eu-central-2"),
            cluster("msk-1", "RU", "moscow", "ru-central-1"),
        ];
        let mut w: ResidentWorkload = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "store", "namespace": "threat-intel"},
            "spec": {"role": "Storage", "countries": ["AU", "NZ"],
                     "manifests": [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]}
        }))
        .unwrap();
        let status = crate::api::ResidentWorkloadStatus {
            placements: vec![
                placement("msk-1", "Retained", "ru-central-1"),
                placement("zrh-1", "Ready", "eu-central-2"),
            ],
            clusters: vec![
                ClusterDecision {
                    name: "msk-1".into(),
                    verdict: "Forbidden".into(),
                    reason: "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"
                        .into(),
                },
                ClusterDecision {
                    name: "zrh-1".into(),
                    verdict: "Target".into(),
                    reason: "zrh-1: allowed".into(),
                },
            ],
            ..Default::default()
        };
        w.status = Some(status);
        // msk-1's inventory holds a volume of a deleted workload, with AU and NZ data
        let mut clusters = clusters;
        clusters[1].status.as_mut().unwrap().inventory = Some(
            serde_json::from_value(json!({
                "objects": 3, "volumes": 1, "retained": 1, "countries": ["AU", "NZ"],
                "unrecordedCount": 1,
                "unrecorded": [{"kind": "PersistentVolumeClaim", "namespace": "threat-intel",
                                "name": "left-behind", "countries": ["AU", "NZ"],
                                "workload": "threat-intel/old", "retained": true}]
            }))
            .unwrap(),
        );
        // AU is governed (Zurich only), NZ by no policy here
        let orphan: ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "p"},
            "spec": {"countries": ["AU"], "allowedLocations": [{"country": "CH"}]},
            "status": {"history": [
                {"cluster": "msk-1", "countries": ["AU"], "kind": "ConfigMap", "namespace": "t", "name": "old",
                 "from": "2026-10-01T00:00:00Z", "to": "2026-10-02T00:00:00Z"},
                {"cluster": "msk-1", "countries": ["FJ"], "kind": "ConfigMap", "namespace": "t", "name": "gone",
                 "from": "2026-09-01T00:00:00Z", "to": "2026-09-03T00:00:00Z"}
            ]}
        }))
        .unwrap();
        let r = build(&clusters, &[w], &[orphan], &[]);
        assert_eq!(
            r.countries
                .iter()
                .map(|c| c.country.as_str())
                .collect::<Vec<_>>(),
            ["AU", "FJ", "NZ"],
            "FJ: only a past violation"
        );
        let au = &r.countries[0];
        assert_eq!(au.name, "Australia");
        assert_eq!(
            au.clusters
                .iter()
                .map(|h| h.cluster.as_str())
                .collect::<Vec<_>>(),
            ["msk-1", "zrh-1"]
        );
        let zrh = &au.clusters[1];
        assert_eq!((zrh.location.as_str(), zrh.verified), ("CH/zurich", true));
        assert_eq!(zrh.node_regions, ["eu-central-2"]);
        assert_eq!(zrh.workloads, ["threat-intel/store (Ready)"]);
        assert_eq!(au.violations.len(), 2);
        assert!(
            au.violations[0].starts_with(
                "msk-1: threat-intel/store (Retained) holds data where it is forbidden"
            )
        );
        assert_eq!(
            au.clusters[0].workloads,
            [
                "PersistentVolumeClaim threat-intel/left-behind (no workload's record)",
                "threat-intel/store (Retained)"
            ]
        );
        assert_eq!(
            au.violations[1],
            "msk-1: retained PersistentVolumeClaim threat-intel/left-behind on msk-1 (of ResidentWorkload threat-intel/old, which no longer exists) is labelled as holding AU data, which p does not allow"
        );
        let nz = &r.countries[2];
        assert!(
            nz.clusters[0].workloads.contains(
                &"PersistentVolumeClaim threat-intel/left-behind (no workload's record)"
                    .to_string()
            ),
            "listed under every country it holds"
        );
        assert_eq!(
            r.violation_count, 3,
            "AU: the store and the left-behind volume; NZ: the store (no policy judges the volume)"
        );
        assert_eq!(
            au.history,
            ["msk-1: ConfigMap t/old from 2026-10-01T00:00:00Z to 2026-10-02T00:00:00Z"]
        );
        let fj = r
            .countries
            .iter()
            .find(|c| c.country == "FJ")
            .expect("a past violation keeps its country in the report");
        assert!(fj.clusters.is_empty() && fj.history.len() == 1);
        let t = text(&r);
        assert!(t.contains("  HISTORY msk-1: ConfigMap t/old from"), "{t}");
        assert!(
            t.contains("AU (Australia)") && t.contains("VIOLATION msk-1"),
            "{t}"
        );
        assert!(
            markdown(&r).contains(
                "| zrh-1 | CH/zurich | yes | eu-central-2 | eu-central-2 | eu-central-2 |"
            )
        );
    }

    #[test]
    fn copies_past_the_listed_ones_and_forgotten_copies_are_reported() {
        let mut msk = cluster("msk-1", "RU", "moscow", "ru-central-1");
        msk.status.as_mut().unwrap().inventory = Some(
            serde_json::from_value(json!({
                "objects": 60, "volumes": 0, "retained": 0, "countries": ["AU"],
                "unrecordedCount": 60,
                "unrecorded": [{"kind": "ConfigMap", "namespace": "t", "name": "hand-00",
                                "countries": ["AU"]}],
                "byCountry": [{"country": "AU", "objects": 60, "unrecorded": 60}]
            }))
            .unwrap(),
        );
        let p: ResidencyPolicy = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidencyPolicy", "metadata": {"name": "p"},
            "spec": {"countries": ["AU"], "allowedLocations": [{"country": "CH"}]},
            "status": {"forgotten": [{"cluster": "msk-2", "countries": ["AU"], "objects": 2,
                "since": "2026-11-01T00:00:00Z", "message": "msk-2 was removed"}]}
        }))
        .unwrap();
        let r = build(&[msk], &[], &[p], &[]);
        let au = &r.countries[0];
        assert_eq!(au.violations.len(), 2, "{:?}", au.violations);
        assert!(
            au.violations[1].starts_with("msk-1: 59 more object(s) not listed here"),
            "{:?}",
            au.violations
        );
        assert_eq!(r.violation_count, 60, "every copy counts, listed or not");
        assert_eq!(
            au.forgotten,
            ["msk-2: 2 object(s) since 2026-11-01T00:00:00Z: msk-2 was removed"]
        );
        assert!(text(&r).contains("  FORGOTTEN msk-2: 2 object(s)"));
        assert!(markdown(&r).contains("**Unverifiable** (cluster removed): msk-2"));
    }

    #[test]
    fn unproven_copies_and_self_declared_regions_are_said_as_such() {
        let mut zrh = cluster("zrh-1", "CH", "zurich", "eu-central-2");
        zrh.status.as_mut().unwrap().regions = serde_json::from_value(json!([
            {"name": "eu-central-2", "source": "Catalogue", "listedBy": ["aws: Zurich, CH"], "country": "CH"}
        ]))
        .unwrap();
        let mut msk = cluster("msk-1", "RU", "moscow", "ru-central-1");
        msk.status.as_mut().unwrap().regions =
            serde_json::from_value(json!([{"name": "ru-central-1", "source": "SelfDeclared"}]))
                .unwrap();
        let mut w: ResidentWorkload = serde_json::from_value(json!({
            "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "store", "namespace": "t"},
            "spec": {"role": "Storage", "countries": ["TO"],
                     "manifests": [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "d"}}]}
        }))
        .unwrap();
        let mut on_nfs = placement("zrh-1", "Ready", "eu-central-2");
        on_nfs.evidence.as_mut().unwrap().unverifiable =
            vec!["PersistentVolume nfs (claim d) has no node affinity".into()];
        let mut vouched = placement("msk-1", "Ready", "ru-central-1");
        vouched.evidence.as_mut().unwrap().vouched = vec![
            "PersistentVolume ceph (claim d): StorageClass ceph, vouched for by the member".into(),
        ];
        w.status = Some(crate::api::ResidentWorkloadStatus {
            placements: vec![on_nfs, vouched],
            ..Default::default()
        });
        let r = build(&[zrh, msk], &[w], &[], &[]);
        let to = &r.countries[0];
        assert_eq!(
            to.unverifiable,
            ["zrh-1: t/store: PersistentVolume nfs (claim d) has no node affinity"]
        );
        assert_eq!(
            to.vouched,
            [
                "msk-1: t/store: PersistentVolume ceph (claim d): StorageClass ceph, vouched for by the member"
            ]
        );
        assert!(to.violations.is_empty(), "unproven is not a violation");
        assert_eq!(r.violation_count, 0);
        assert_eq!(
            to.clusters[0].region_sources,
            ["ru-central-1 (self-declared)"]
        );
        assert_eq!(
            to.clusters[1].region_sources,
            ["eu-central-2 (aws: Zurich, CH)"]
        );
        let t = text(&r);
        assert!(
            t.contains("  msk-1    RU/moscow (ru-central-1 self-declared)"),
            "{t}"
        );
        assert!(
            t.contains("  UNVERIFIABLE zrh-1: t/store: PersistentVolume nfs"),
            "{t}"
        );
        assert!(
            t.contains("  VOUCHED msk-1: t/store: PersistentVolume ceph"),
            "{t}"
        );
        let m = markdown(&r);
        assert!(m.contains("| ru-central-1 (self-declared) |"), "{m}");
        assert!(
            m.contains("**Unverifiable** (location not proven): zrh-1: t/store"),
            "{m}"
        );
    }
}
