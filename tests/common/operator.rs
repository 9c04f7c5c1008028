//! Runs the real operator binary against the fleet's management cluster.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::{Fleet, eventually};

/// Namespace of the operator (holds the member kubeconfig Secrets).
pub const OPERATOR_NS: &str = "residency-system";
const MANAGER: &str = "residency-tests";

/// An operator process started by [`Operator::launch`]: the test binary's one ([`start`]), or a
/// benchmark's. It exits when the test process exits (its standard input closes), or at
/// [`Operator::stop`].
pub struct Operator {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Where it serves /metrics.
    pub http: String,
    /// Its log file.
    pub log: std::path::PathBuf,
}

impl Operator {
    /// Starts an operator process ([`spawn`]) and waits until it answers `/readyz`.
    pub async fn launch(fleet: &Fleet, name: &str, extra: &[&str]) -> Operator {
        let (child, port, log) = spawn(fleet, name, extra);
        let http = format!("http://127.0.0.1:{port}");
        let url = format!("{http}/readyz");
        eventually("operator /readyz", Duration::from_secs(60), || async {
            match Command::new("curl").args(["-fsS", &url]).output().await {
                Ok(o) if o.status.success() => Ok(()),
                _ => Err("not ready".to_string()),
            }
        })
        .await;
        eprintln!("operator running; log: {}", log.display());
        let pid = child.id().unwrap_or_default();
        Operator {
            child,
            pid,
            http,
            log,
        }
    }

    /// GET `path` on its HTTP endpoint.
    pub async fn get(&self, path: &str) -> String {
        let o = Command::new("curl")
            .args(["-fsS", &format!("{}{path}", self.http)])
            .output()
            .await
            .expect("curl");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Stops it as at the end of a test binary (its standard input closes:
    /// `--exit-on-stdin-close`) and waits until it has exited.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}

static OPERATOR: OnceCell<Operator> = OnceCell::const_new();

/// Installs the CRDs from `crds/` (server-side apply) and waits until they are Established.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("install CRD {name}: {e}"));
        super::crd_established(client, &name).await;
    }
}

/// Creates (or updates) a namespace.
pub async fn ensure_namespace(client: &Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.unwrap().is_none() {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        let _ = api.create(&PostParams::default(), &ns).await;
    }
}

/// Joins every member with `residency-operator join` (its least-privilege identity, a
/// time-bound token), which stores its kubeconfig as a Secret `<cluster>-kubeconfig` in the
/// operator's namespace, the way a platform team would. `<cluster>` is the context name without
/// `RESIDENCY_CONTEXT_PREFIX` (e.g. `kind-` for kind clusters), so it matches the seed
/// MemberClusters (`zrh-1`, `zrh-2`, `msk-1`). The test CRD's kind (`widgets`) is granted too.
pub async fn member_secrets(fleet: &Fleet, client: &Client) {
    ensure_namespace(client, OPERATOR_NS).await;
    let prefix = std::env::var("RESIDENCY_CONTEXT_PREFIX").unwrap_or_default();
    for m in &fleet.members {
        let cluster = m
            .context
            .strip_prefix(prefix.as_str())
            .unwrap_or(&m.context);
        join(fleet, &m.context, cluster, &[]).await;
    }
}

/// Runs `residency-operator join` for one member with `extra` arguments; panics with its
/// output when it fails. Returns its standard error (what it did).
pub async fn join(fleet: &Fleet, context: &str, cluster: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_residency-operator"))
        .args(["join", "--kubeconfig", &Fleet::kubeconfig_path()])
        .args(["--context", context, "--name", cluster])
        .args(["--management-context", &fleet.mgmt])
        .args(["--operator-namespace", OPERATOR_NS])
        .args(["--resource", "widgets.residency-test.io"])
        .args(extra)
        .output()
        .await
        .expect("run join");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "join {cluster} failed: {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// Starts an operator process against the fleet's management cluster, with `extra` arguments,
/// logging to `<CARGO_TARGET_TMPDIR>/<name>.log`. It exits when its standard input closes
/// (when the test process ends) or when dropped. Returns the child, its HTTP port and log path.
pub fn spawn(fleet: &Fleet, name: &str, extra: &[&str]) -> (Child, u16, std::path::PathBuf) {
    let port = free_port();
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.log"));
    let file = std::fs::File::create(&log).unwrap();
    // RESIDENCY_OPERATOR_BIN runs another build (a benchmark's "before")
    let binary = std::env::var("RESIDENCY_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_residency-operator").to_string());
    let child = Command::new(binary)
        .args([
            "run",
            "--kubeconfig",
            &Fleet::kubeconfig_path(),
            "--context",
            &fleet.mgmt,
        ])
        .args(["--namespace", OPERATOR_NS, "--exit-on-stdin-close"])
        // members are probed every 2 s unless `extra` says otherwise
        .args(if extra.contains(&"--probe-interval") {
            &[][..]
        } else {
            &["--probe-interval", "2"][..]
        })
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RESIDENCY_OPERATOR_LOG")
                .unwrap_or_else(|_| "info,residency_operator=debug".into()),
        )
        .stdin(Stdio::piped())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator");
    (child, port, log)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the operator once per test binary (CRDs and member Secrets first).
pub async fn start(fleet: &Fleet) -> &'static Operator {
    start_with(fleet, &[]).await
}

/// [`start`] with more arguments (only the first call of a test binary starts it).
pub async fn start_with(fleet: &Fleet, extra: &[&str]) -> &'static Operator {
    OPERATOR
        .get_or_init(|| async {
            let client = fleet.mgmt_client().await;
            install_crds(&client).await;
            member_secrets(fleet, &client).await;
            let name = format!(
                "operator-{}-{}",
                std::env::current_exe()
                    .unwrap()
                    .file_stem()
                    .unwrap()
                    .to_string_lossy(),
                std::process::id()
            );
            // data moves run their mover Pods from the image the tests load (common::mover)
            let mut args = vec!["--mover-image", super::mover::IMAGE];
            args.extend(extra);
            Operator::launch(fleet, &name, &args).await
        })
        .await
}

/// Deletes an object of a typed API and waits until it is gone (finalizers done).
pub async fn delete_and_wait<K>(api: &Api<K>, name: &str, timeout: Duration)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(&format!("{name} deleted"), timeout, || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => Err("still there".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}
