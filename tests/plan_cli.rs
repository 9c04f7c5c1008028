//! `residency-operator plan` over the examples, through the real binary: exit codes, reasons,
//! JSON output and error messages that name the file, the document and the field.

use std::path::Path;
use std::process::{Command, Output};

fn plan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_residency-operator"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("plan")
        .args(args)
        .output()
        .expect("run residency-operator")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn seed_scenario_places_apac_workloads_on_the_legacy_cluster_first() {
    let out = plan(&["-f", "examples/seed/"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for w in [
        "threat-intel/apac-threat-store",
        "threat-intel/apac-threat-analysis",
    ] {
        assert!(stdout.contains(&format!("{w} (")), "{stdout}");
    }
    assert!(
        stdout.contains("target    msk-1: allowed by apac-to-zurich (RU/moscow)"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("forbidden zrh-1: forbidden: CH/zurich not allowed for AU by apac-to-zurich"),
        "{stdout}"
    );
    assert!(stdout.contains("2 of 2 workload(s) placeable."), "{stdout}");
    assert!(text(&out.stderr).contains("skipped v1 Namespace/threat-intel"));
    // what each member's API server would refuse: APAC in Zurich (still allowed in Moscow
    // only), Europe and North America in Moscow
    assert!(
        stdout.contains(
            "  zrh-1: refuses AU, BD, BN, ID, IN, JP, KH, KR, LA, LK, MY, NP, NZ, PH, PK, SG, TH, VN\n"
        ),
        "{stdout}"
    );
    let msk = stdout
        .lines()
        .find(|l| l.starts_with("  msk-1: refuses "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        msk.contains("CA, CH, CY") && msk.contains("US") && !msk.contains("AU"),
        "{msk}"
    );
}

#[test]
fn relocated_policy_moves_them_to_zurich_json() {
    let out = plan(&[
        "-f",
        "examples/seed/",
        "-f",
        "examples/seed-relocated/",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    let workloads = v["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 2);
    for w in workloads {
        assert_eq!(
            w["decision"]["targets"],
            serde_json::json!(["zrh-1", "zrh-2"]),
            "{w}"
        );
        let msk = w["decision"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "msk-1")
            .unwrap();
        assert_eq!(
            msk["reason"],
            "msk-1: forbidden: RU/moscow not allowed for AU by apac-to-zurich"
        );
    }
    assert_eq!(
        v["assumedHealthy"],
        serde_json::json!(["msk-1", "zrh-1", "zrh-2"])
    );
    // after the edit, Moscow refuses every governed country and Zurich none
    let admission = v["admission"].as_array().unwrap();
    let of = |c: &str| {
        admission
            .iter()
            .find(|m| m["cluster"] == c)
            .unwrap()
            .clone()
    };
    assert_eq!(
        of("msk-1")["refused"].as_array().unwrap().len(),
        32 + 2 + 18
    );
    assert_eq!(of("zrh-1")["refused"], serde_json::json!([]));
    assert_eq!(of("zrh-2")["enabled"], true);
    assert!(
        text(&out.stderr)
            .contains("ResidencyPolicy/apac-to-zurich replaces its earlier definition")
    );
}

#[test]
fn unplaceable_workloads_exit_1_with_reasons() {
    let out = plan(&[
        "-f",
        "examples/seed/10-clusters.yaml",
        "-f",
        "examples/unplaceable/",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "au-and-ch-reports (Processing; countries AU, CH): NOT PLACEABLE [PolicyConflict]"
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("au-legacy-moscow (AU) allows msk-1; ch-stays-home (CH) allows zrh-1, zrh-2"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "bhutan-telemetry (Processing; countries BT): NOT PLACEABLE [NoPolicyForCountry]"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("no policy governs BT (default deny)"),
        "{stdout}"
    );
}

#[test]
fn every_broken_example_exits_2_naming_file_document_and_field() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broken");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8);
    for file in files {
        let rel = file
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let expected: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .filter_map(|l| l.strip_prefix("# expect-plan: ").map(str::to_string))
            .collect();
        assert!(!expected.is_empty(), "{rel} has no '# expect-plan:' line");
        let out = plan(&["-f", &rel]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{rel}: {stderr}");
        assert!(
            stderr.contains(&format!("error: {rel}: document 1 (")),
            "{rel}: {stderr}"
        );
        for e in expected {
            assert!(
                stderr.contains(&e),
                "{rel}: {stderr:?} does not contain {e:?}"
            );
        }
        assert!(
            out.stdout.is_empty(),
            "{rel}: nothing is planned from invalid input"
        );
    }
}

#[test]
fn missing_file_and_mixed_valid_invalid_input_exit_2() {
    let out = plan(&["-f", "examples/does-not-exist.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no such file or directory"));
    // one bad document spoils the plan: nothing is printed for the good ones
    let out = plan(&[
        "-f",
        "examples/seed/",
        "-f",
        "examples/broken/policy-country-uk.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}
