//! The operator's image, built without Docker (`scripts/image`): reproducible, the binary and
//! nothing else it does not need, non-root, and it runs - as a real container, under a private
//! containerd and runc (`tests/testenv/runtime.sh`, installed by `tests/run`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::run_ok;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const IMAGE: &str = "docker.io/library/residency-operator:test";

fn build(out: &Path) {
    common::build_image(out, "residency-operator:test");
}

fn member(archive: &Path, name: &str) -> Vec<u8> {
    run_ok(Command::new("tar").arg("-xOf").arg(archive).arg(name)).stdout
}

fn json(archive: &Path, name: &str) -> serde_json::Value {
    serde_json::from_slice(&member(archive, name)).unwrap()
}

/// The private runtime, stopped (containers, shims, mounts, directory) when dropped.
struct Runtime {
    dir: PathBuf,
}

impl Runtime {
    fn up(dir: PathBuf) -> Self {
        let rt = Runtime { dir };
        assert!(
            Command::new("containerd").arg("--version").output().is_ok()
                && Command::new("runc").arg("--version").output().is_ok(),
            "containerd and runc are needed: tests/run installs them (tests/testenv/runtime.sh install)"
        );
        run_ok(rt.script().arg("up"));
        rt
    }

    fn script(&self) -> Command {
        let mut c = Command::new(format!("{ROOT}/tests/testenv/runtime.sh"));
        c.env("RESIDENCY_RUNTIME_DIR", &self.dir);
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.script().arg("ctr").args(args).output().expect("ctr")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.script().arg("down").output();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    let mut found: Vec<String> = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&d))
        .map(|l| format!("mount {l}"))
        .collect();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&d) {
            found.push(format!(
                "process {}: {cmdline}",
                p.file_name().to_string_lossy()
            ));
        }
    }
    if dir.exists() {
        found.push(format!("directory {d}"));
    }
    // the runtime's containers get cgroups /<its namespace>/<container> in every hierarchy
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for c in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            if c.file_name().to_string_lossy().starts_with("residency-rt-") {
                found.push(format!("cgroup {}", c.path().display()));
            }
        }
    }
    found
}

#[test]
fn the_image_is_reproducible_minimal_non_root_and_runs_under_containerd() {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("image-test");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let (a, b) = (tmp.join("a.tar"), tmp.join("b.tar"));
    build(&a);
    build(&b);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "two builds of the same binary give the same bytes"
    );

    // an OCI layout with a Docker manifest beside it; one layer with only what the binary needs
    assert_eq!(json(&a, "oci-layout")["imageLayoutVersion"], "1.0.0");
    let index = json(&a, "index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        IMAGE
    );
    let docker = json(&a, "manifest.json");
    assert_eq!(docker[0]["RepoTags"][0], "residency-operator:test");
    let config = json(&a, docker[0]["Config"].as_str().unwrap());
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/residency-operator"])
    );
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
    let layer = tmp.join("layer.tar");
    std::fs::write(&layer, member(&a, docker[0]["Layers"][0].as_str().unwrap())).unwrap();
    let listing =
        String::from_utf8(run_ok(Command::new("tar").arg("-tf").arg(&layer)).stdout).unwrap();
    let files: Vec<&str> = listing.lines().filter(|l| !l.ends_with('/')).collect();
    for needed in [
        "usr/local/bin/residency-operator",
        "etc/ssl/certs/ca-certificates.crt",
        "etc/passwd",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(files.contains(&needed), "{needed} missing: {files:?}");
    }
    let unexpected: Vec<&&str> = files
        .iter()
        .filter(|f| {
            !(f.starts_with("usr/local/bin/")
                || f.starts_with("etc/")
                || f.starts_with("lib/x86_64-linux-gnu/lib")
                || f.starts_with("lib64/"))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "nothing else in the image: {unexpected:?}"
    );
    eprintln!(
        "image: {} files, {:.1} MiB",
        files.len(),
        std::fs::metadata(&a).unwrap().len() as f64 / 1048576.0
    );

    // a real container: imported from the archive (nothing pulled), run by runc
    let dir = tmp.join("runtime");
    {
        let rt = Runtime::up(dir.clone());
        let imported = rt.ctr(&["images", "import", a.to_str().unwrap()]);
        assert!(imported.status.success(), "{imported:?}");
        let version = rt.ctr(&[
            "run",
            "--rm",
            "--read-only",
            IMAGE,
            "version",
            "/usr/local/bin/residency-operator",
            "--version",
        ]);
        let stdout = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success()
                && stdout.contains(&format!("residency-operator {}", env!("CARGO_PKG_VERSION"))),
            "{version:?}"
        );
        let crds = rt.ctr(&[
            "run",
            "--rm",
            "--read-only",
            IMAGE,
            "crds",
            "/usr/local/bin/residency-operator",
            "crds",
        ]);
        let stdout = String::from_utf8_lossy(&crds.stdout);
        assert!(
            crds.status.success()
                && stdout.matches("kind: CustomResourceDefinition").count()
                    == residency_operator::api::crds().len(),
            "{crds:?}"
        );
        // the runtime applies the image's user: 65532, not root
        let created = rt.ctr(&["containers", "create", IMAGE, "spec"]);
        assert!(created.status.success(), "{created:?}");
        let info: serde_json::Value =
            serde_json::from_slice(&rt.ctr(&["containers", "info", "spec"]).stdout).unwrap();
        assert_eq!(
            info["Spec"]["process"]["user"]["uid"], 65532,
            "{}",
            info["Spec"]["process"]
        );
        // no shell to break into
        let shell = rt.ctr(&["run", "--rm", IMAGE, "shell", "/bin/sh", "-c", "id"]);
        assert!(!shell.status.success(), "{shell:?}");
        assert!(
            String::from_utf8_lossy(&shell.stderr).contains("/bin/sh"),
            "{shell:?}"
        );
        // an image that was never imported is not pulled: the error names it
        let missing = rt.ctr(&[
            "run",
            "--rm",
            "docker.io/library/residency-operator:missing",
            "missing",
        ]);
        assert!(!missing.status.success());
        assert!(
            String::from_utf8_lossy(&missing.stderr).contains("residency-operator:missing"),
            "{missing:?}"
        );
    }
    let left = leftovers(&dir);
    assert!(
        left.is_empty(),
        "the runtime leaves nothing behind: {left:#?}"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
