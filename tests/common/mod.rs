//! Test support: clients for the clusters of a fleet named by the environment.
//!
//! The same tests run against the local fleet (`tests/testenv/fleet.sh`) or against kind
//! clusters: they read only these variables.
//!
//! - `RESIDENCY_KUBECONFIG` (or `KUBECONFIG`): a kubeconfig with one context per cluster
//! - `RESIDENCY_MGMT_CONTEXT` (default `mgmt`): the management cluster's context
//! - `RESIDENCY_MEMBER_REGIONS`: `context=region,...`, e.g. `zrh-1=eu-central-2,msk-1=ru-central-1`
#![allow(dead_code)]

pub mod mover;
pub mod operator;
pub mod real;
pub mod rules;

use std::future::Future;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// A member cluster of the fleet under test.
#[derive(Clone, Debug)]
pub struct Member {
    /// Its kubeconfig context name.
    pub context: String,
    /// The `topology.kubernetes.io/region` its nodes and volumes must carry.
    pub region: String,
}

/// The fleet under test.
pub struct Fleet {
    kubeconfig: Kubeconfig,
    /// The management cluster's context.
    pub mgmt: String,
    /// The member clusters.
    pub members: Vec<Member>,
}

const HOW: &str = "run the tests with tests/run (it starts the local fleet), or start it with \
                   tests/testenv/fleet.sh up && eval \"$(tests/testenv/fleet.sh env)\"";

impl Fleet {
    /// Reads the fleet from the environment; panics with instructions when it is not set.
    pub fn from_env() -> Fleet {
        let path = std::env::var("RESIDENCY_KUBECONFIG")
            .or_else(|_| std::env::var("KUBECONFIG"))
            .unwrap_or_else(|_| panic!("RESIDENCY_KUBECONFIG is not set: {HOW}"));
        let kubeconfig = Kubeconfig::read_from(&path)
            .unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}; {HOW}"));
        let mgmt = std::env::var("RESIDENCY_MGMT_CONTEXT").unwrap_or_else(|_| "mgmt".into());
        let regions = std::env::var("RESIDENCY_MEMBER_REGIONS")
            .unwrap_or_else(|_| panic!("RESIDENCY_MEMBER_REGIONS is not set: {HOW}"));
        let members = regions
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|pair| {
                let (context, region) = pair.split_once('=').unwrap_or_else(|| {
                    panic!("RESIDENCY_MEMBER_REGIONS entry '{pair}' is not context=region")
                });
                Member {
                    context: context.to_string(),
                    region: region.to_string(),
                }
            })
            .collect();
        Fleet {
            kubeconfig,
            mgmt,
            members,
        }
    }

    /// A client for one context of the kubeconfig.
    pub async fn client(&self, context: &str) -> Client {
        let options = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let config = Config::from_custom_kubeconfig(self.kubeconfig.clone(), &options)
            .await
            .unwrap_or_else(|e| panic!("context {context}: {e}"));
        Client::try_from(config).unwrap_or_else(|e| panic!("context {context}: {e}"))
    }

    /// The management cluster's client.
    pub async fn mgmt_client(&self) -> Client {
        self.client(&self.mgmt).await
    }
}

/// Polls `check` every 250 ms until it returns `Ok`, or panics after `timeout` with the last
/// error it returned (so a failure says what was still wrong).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() >= timeout => {
                panic!("{what}: not reached within {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Waits until namespace `ns` is not terminating on `client` (absent or live): a previous run
/// may have deleted it, and nothing can be created in it until it is gone.
pub async fn namespace_not_terminating(client: &Client, ns: &str, timeout: Duration) {
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(client.clone());
    eventually(
        &format!("namespace {ns} not terminating"),
        timeout,
        || async {
            match namespaces.get_opt(ns).await {
                Ok(Some(n)) if n.metadata.deletion_timestamp.is_some() => {
                    Err("terminating".to_string())
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
}

/// A container `securityContext` within the `restricted` Pod Security standard, which the
/// namespaces the operator creates on members enforce by default.
pub fn restricted() -> serde_json::Value {
    serde_json::json!({
        "runAsNonRoot": true, "runAsUser": 65532, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}
    })
}

/// A name unique to this test run, for namespaces and cluster-scoped objects.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{:05x}",
        std::process::id() % 100_000,
        nanos % 0xfffff
    )
}

impl Fleet {
    /// A standalone kubeconfig (YAML) holding only `context`, with credentials embedded: what
    /// goes into a member's kubeconfig Secret.
    pub fn kubeconfig_for(&self, context: &str) -> String {
        let mut k = self.kubeconfig.clone();
        let ctx = k
            .contexts
            .iter()
            .find(|c| c.name == context)
            .cloned()
            .unwrap_or_else(|| panic!("no context {context}"));
        let inner = ctx.context.clone().expect("context body");
        k.contexts.retain(|c| c.name == context);
        k.clusters.retain(|c| c.name == inner.cluster);
        k.auth_infos
            .retain(|a| Some(&a.name) == inner.user.as_ref());
        k.current_context = Some(context.to_string());
        serde_yaml::to_string(&k).expect("kubeconfig to YAML")
    }

    /// Path of the kubeconfig file.
    pub fn kubeconfig_path() -> String {
        std::env::var("RESIDENCY_KUBECONFIG")
            .or_else(|_| std::env::var("KUBECONFIG"))
            .unwrap_or_else(|_| panic!("RESIDENCY_KUBECONFIG is not set: {HOW}"))
    }
}

/// The documents of a YAML file, as dynamic objects.
pub fn documents(path: &std::path::Path) -> Vec<kube::api::DynamicObject> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_yaml::from_value(v).unwrap())
        .collect()
}

/// A path in the repository.
pub fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The YAML files of a directory (or the file itself), sorted.
pub fn yaml_files(path: &str) -> Vec<std::path::PathBuf> {
    let p = repo(path);
    if p.is_file() {
        return vec![p];
    }
    let mut files: Vec<_> = std::fs::read_dir(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The typed API of a dynamic object's kind (namespaced ones in their namespace, or `default_ns`).
pub async fn dynamic_api(
    client: &Client,
    obj: &kube::api::DynamicObject,
    default_ns: &str,
) -> Result<kube::Api<kube::api::DynamicObject>, kube::Error> {
    use kube::ResourceExt;
    let types = obj.types.as_ref().expect("apiVersion and kind");
    let gvk = kube::core::GroupVersionKind::try_from(types).expect("valid apiVersion");
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk).await?;
    Ok(match caps.scope {
        kube::discovery::Scope::Namespaced => {
            let ns = obj.namespace().unwrap_or_else(|| default_ns.to_string());
            kube::Api::namespaced_with(client.clone(), &ns, &ar)
        }
        kube::discovery::Scope::Cluster => kube::Api::all_with(client.clone(), &ar),
    })
}

/// Server-side applies every document of the YAML files under `path` (a file or directory).
pub async fn apply_path(client: &Client, path: &str) {
    use kube::ResourceExt;
    for file in yaml_files(path) {
        for doc in documents(&file) {
            let api = dynamic_api(client, &doc, "default")
                .await
                .expect("discovery");
            api.patch(
                &doc.name_any(),
                &kube::api::PatchParams::apply("residency-tests").force(),
                &kube::api::Patch::Apply(&doc),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: apply {}: {e}", file.display(), doc.name_any()));
        }
    }
}

impl Fleet {
    /// The client of the seed member `cluster` (`zrh-1`, ...): its context is the cluster name
    /// with `RESIDENCY_CONTEXT_PREFIX` in front (empty for the local fleet, `kind-` for kind).
    pub async fn member(&self, cluster: &str) -> Client {
        let prefix = std::env::var("RESIDENCY_CONTEXT_PREFIX").unwrap_or_default();
        self.client(&format!("{prefix}{cluster}")).await
    }
}

/// Waits until the CRD `name` is Established.
pub async fn crd_established(client: &Client, name: &str) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    eventually(
        &format!("CRD {name} Established"),
        Duration::from_secs(60),
        || async {
            let c = crds.get(name).await.map_err(|e| e.to_string())?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                Ok(())
            } else {
                Err("not Established".into())
            }
        },
    )
    .await;
}

/// Waits until every named MemberCluster is Ready and LocationVerified.
pub async fn clusters_verified(mgmt: &Client, names: &[&str]) {
    let clusters: kube::Api<residency_operator::api::MemberCluster> = kube::Api::all(mgmt.clone());
    for name in names {
        eventually(
            &format!("{name} Ready and LocationVerified"),
            Duration::from_secs(120),
            || async {
                let mc = clusters.get(name).await.map_err(|e| e.to_string())?;
                let c = mc.status.map(|s| s.conditions).unwrap_or_default();
                let ok = |t: &str| c.iter().any(|c| c.type_ == t && c.status == "True");
                if ok("Ready") && ok("LocationVerified") {
                    Ok(())
                } else {
                    Err(format!("{c:?}"))
                }
            },
        )
        .await;
    }
}

/// Scales a Deployment on a member the way `kubectl scale` would: an out-of-band edit by
/// another field manager, for drift tests.
pub async fn scale_out_of_band(member: &Client, namespace: &str, name: &str, replicas: i32) {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    let params = kube::api::PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(member.clone(), namespace)
        .patch(name, &params, &kube::api::Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("scale {namespace}/{name}: {e}"));
}

/// Ok when all `n` workloads of `api` report Ready placements on exactly `targets` (benchmarks
/// poll it).
pub async fn workloads_ready_on(
    api: &kube::Api<residency_operator::api::ResidentWorkload>,
    n: usize,
    targets: &[&str],
) -> Result<(), String> {
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let done = list
        .items
        .iter()
        .filter(|w| {
            let s = w.status.clone().unwrap_or_default();
            s.targets == targets
                && s.placements.len() == targets.len()
                && s.placements.iter().all(|p| p.state == "Ready")
        })
        .count();
    if done == n {
        Ok(())
    } else {
        Err(format!(
            "status: {done} of {n} workloads Ready on {}",
            targets.join("+")
        ))
    }
}

/// Runs `residency-operator report` against the fleet's management cluster; returns stdout.
pub fn report() -> String {
    report_with(&[])
}

/// `residency-operator report` with more arguments (e.g. `-o json`); returns stdout.
pub fn report_with(args: &[&str]) -> String {
    let fleet_mgmt_context =
        &std::env::var("RESIDENCY_MGMT_CONTEXT").unwrap_or_else(|_| "mgmt".into());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_residency-operator"))
        .args([
            "report",
            "--kubeconfig",
            &Fleet::kubeconfig_path(),
            "--context",
            fleet_mgmt_context,
        ])
        .args(args)
        .output()
        .expect("run residency-operator report");
    assert!(
        out.status.success(),
        "report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A position in a local-fleet cluster's audit log, to read only what comes after it.
#[derive(Clone, Debug)]
pub struct AuditMark {
    path: std::path::PathBuf,
    offset: usize,
}

/// One write recorded in an audit log: `verb resource namespace/name (user agent)`.
#[derive(Clone, Debug)]
pub struct AuditWrite {
    /// create, update, patch, delete, deletecollection.
    pub verb: String,
    /// The resource, e.g. `persistentvolumeclaims`.
    pub resource: String,
    /// Its namespace ("" when cluster-scoped).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Who sent it.
    pub user_agent: String,
    /// The response code.
    pub code: i64,
    /// When the API server received it (RFC 3339).
    pub received: String,
}

/// Marks the end of `cluster`'s audit log now; `None` off the local fleet (no audit logs). On
/// the local fleet the log must be there: a check that reads no log would pass for nothing.
pub fn audit_mark(cluster: &str) -> Option<AuditMark> {
    let dir = std::env::var("RESIDENCY_FLEET_DIR").ok()?;
    let path = std::path::PathBuf::from(format!("{dir}/logs/{cluster}-audit.log"));
    let offset = std::fs::metadata(&path)
        .unwrap_or_else(|e| panic!("audit log {}: {e}", path.display()))
        .len() as usize;
    Some(AuditMark { path, offset })
}

/// The writes recorded since `mark`. It first waits (up to 30 s) until the log shows any write
/// at all since the mark - every API server renews its own Lease every 10 s - so that an empty
/// answer means "nothing was written", not "the log is not being read".
pub async fn audit_writes_since(mark: &AuditMark) -> Vec<AuditWrite> {
    eventually(
        &format!("a live audit log at {}", mark.path.display()),
        Duration::from_secs(30),
        || async {
            let all = audit_writes_in(mark);
            if all.is_empty() {
                Err("no write recorded since the mark".to_string())
            } else {
                Ok(all)
            }
        },
    )
    .await
}

fn audit_writes_in(mark: &AuditMark) -> Vec<AuditWrite> {
    let bytes = std::fs::read(&mark.path).unwrap_or_default();
    let tail = String::from_utf8_lossy(bytes.get(mark.offset..).unwrap_or_default());
    tail.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        })
        .map(|e| AuditWrite {
            verb: e["verb"].as_str().unwrap_or_default().into(),
            resource: e["objectRef"]["resource"]
                .as_str()
                .unwrap_or_default()
                .into(),
            namespace: e["objectRef"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .into(),
            name: e["objectRef"]["name"].as_str().unwrap_or_default().into(),
            user_agent: e["userAgent"].as_str().unwrap_or_default().into(),
            code: e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            received: e["requestReceivedTimestamp"]
                .as_str()
                .unwrap_or_default()
                .into(),
        })
        .collect()
}

/// Every `(country, cluster)` whose data the members hold, listed straight from the members:
/// every object of the placeable kinds, and every PersistentVolume, labelled
/// `country.residency.io/<CODE>=true`, in any case (a failed list panics: it must not read as
/// "none").
pub async fn holdings_on_members(
    fleet: &Fleet,
    clusters: &[&str],
) -> std::collections::BTreeSet<(String, String)> {
    use kube::api::{DynamicObject, ListParams};
    use kube::core::{ApiResource, PartialObjectMeta};
    let mut resources: Vec<ApiResource> = residency_operator::kinds::PLACEABLE
        .iter()
        .filter_map(|k| residency_operator::desired::api_resource(&k.api_version(), k.kind))
        .collect();
    resources.push(ApiResource::erase::<
        k8s_openapi::api::core::v1::PersistentVolume,
    >(&()));
    let mut out = std::collections::BTreeSet::new();
    for cluster in clusters {
        let client = fleet.member(cluster).await;
        for ar in &resources {
            let api: kube::Api<PartialObjectMeta<DynamicObject>> =
                kube::Api::all_with(client.clone(), ar);
            let list = api
                .list_metadata(&ListParams::default())
                .await
                .unwrap_or_else(|e| panic!("{cluster}: list {}: {e}", ar.plural));
            for o in list.items {
                for (k, v) in o.metadata.labels.unwrap_or_default() {
                    let k = k.to_ascii_lowercase();
                    if let Some(code) = k.strip_prefix("country.residency.io/")
                        && v.eq_ignore_ascii_case("true")
                    {
                        out.insert((code.to_ascii_uppercase(), cluster.to_string()));
                    }
                }
            }
        }
    }
    out
}

/// The `(country, cluster)` pairs `residency-operator report -o json` says hold data.
pub fn holdings_in_report() -> std::collections::BTreeSet<(String, String)> {
    let report: serde_json::Value =
        serde_json::from_str(&report_with(&["-o", "json"])).expect("report -o json is JSON");
    let mut out = std::collections::BTreeSet::new();
    for c in report["countries"].as_array().into_iter().flatten() {
        for h in c["clusters"].as_array().into_iter().flatten() {
            out.insert((
                c["country"].as_str().unwrap_or_default().to_string(),
                h["cluster"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

/// Waits until the report and a direct listing of the members agree on which clusters hold
/// which countries' data; returns how many pairs they agree on.
pub async fn report_agrees_with_members(fleet: &Fleet, clusters: &[&str], when: &str) -> usize {
    eventually(
        &format!("report agrees with the members ({when})"),
        Duration::from_secs(120),
        || async {
            let members = holdings_on_members(fleet, clusters).await;
            let report = holdings_in_report();
            if members == report {
                Ok(members.len())
            } else {
                Err(format!(
                    "only on the members: {:?}; only in the report: {:?}",
                    members.difference(&report).collect::<Vec<_>>(),
                    report.difference(&members).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// Runs a command; its output, or a panic naming the command with what it printed.
pub fn run_ok(cmd: &mut std::process::Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The operator's image (`scripts/image`) of this build's binary, as `tag`, written to `out`.
pub fn build_image(out: &std::path::Path, tag: &str) {
    run_ok(std::process::Command::new(repo("scripts/image")).args([
        "--binary",
        env!("CARGO_BIN_EXE_residency-operator"),
        "--output",
        out.to_str().unwrap(),
        "--tag",
        tag,
    ]));
}

/// Runs `tests/testenv/fleet.sh` with `args` on the local fleet (e.g. `stop
/// msk-1-kube-apiserver`, `up`); panics off the local fleet or when it fails.
pub fn fleet_sh(args: &[&str]) {
    let dir = std::env::var("RESIDENCY_FLEET_DIR")
        .expect("this test stops and restarts a member apiserver: it needs the local fleet");
    let out = std::process::Command::new(repo("tests/testenv/fleet.sh"))
        .args(args)
        .env("RESIDENCY_FLEET_DIR", &dir)
        .output()
        .expect("fleet.sh");
    assert!(
        out.status.success(),
        "fleet.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
