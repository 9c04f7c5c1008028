//! The Helm chart `charts/residency-operator`: lint, rendering, Pod Security admission on the
//! management cluster, a real install, and the operator's RBAC checked with
//! SubjectAccessReviews against the real API server.
//!
//! Needs `RESIDENCY_HELM` and `RESIDENCY_KUBECTL` (set by `tests/testenv/fleet.sh env`) besides
//! the fleet's kubeconfig. The management cluster of the local fleet runs no controller-manager:
//! Deployments never get Pods there and deleted namespaces are never emptied by a namespace
//! controller, so the tests check admission with server-side dry runs and finalize the
//! namespaces they delete themselves.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Fleet, eventually, repo, unique};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};

const CHART: &str = "charts/residency-operator";
/// The namespace the install test uses.
const INSTALL_NS: &str = "residency-system-helm-test";
/// The namespace the RBAC test installs into (its own, so both tests can run in parallel).
const RBAC_NS: &str = "residency-system-helm-rbac-test";
/// The options that are off by default.
const ALL_OPTIONS: &str =
    "rbac.localMember=true,metrics.serviceMonitor.enabled=true,networkPolicy.enabled=true";

const HOW: &str = "start the fleet and set its environment: tests/testenv/fleet.sh up && \
                   eval \"$(tests/testenv/fleet.sh env)\" (tests/run does both)";

fn env_path(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} is not set: {HOW}"))
}

/// What a command printed and how it ended.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn expect_ok(self, what: &str) -> Out {
        assert!(
            self.ok,
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Out {
    let shown = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}; {HOW}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().expect("wait for command");
    Out {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// helm, with its configuration and cache kept out of the user's home directory.
fn helm_command() -> Command {
    let home = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helm-home");
    let mut cmd = Command::new(env_path("RESIDENCY_HELM"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

/// helm without a cluster (lint, template).
fn helm(args: &[&str]) -> Out {
    let mut cmd = helm_command();
    cmd.args(args);
    run(cmd, None)
}

/// The management cluster's context.
fn mgmt_context() -> String {
    std::env::var("RESIDENCY_MGMT_CONTEXT").unwrap_or_else(|_| "mgmt".into())
}

/// helm against the management cluster.
fn helm_mgmt(args: &[&str]) -> Out {
    let mut cmd = helm_command();
    cmd.args(["--kubeconfig", &Fleet::kubeconfig_path()])
        .args(["--kube-context", &mgmt_context()])
        .args(args);
    run(cmd, None)
}

/// kubectl against the management cluster.
fn kubectl(args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(env_path("RESIDENCY_KUBECTL"));
    cmd.args(["--kubeconfig", &Fleet::kubeconfig_path()])
        .args(["--context", &mgmt_context()])
        .args(args);
    run(cmd, stdin)
}

/// `helm template` of the chart as release `release` in `namespace`, with `--set` values.
fn render(release: &str, namespace: &str, set: &[&str]) -> String {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    for s in set {
        args.extend(["--set", s]);
    }
    helm(&args).expect_ok("helm template").stdout
}

/// The documents of a multi-document YAML string, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML to JSON"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a namespace of the management cluster and waits until it is gone. Without a
/// namespace controller (the local fleet's mgmt) a deleted namespace stays Terminating, so after
/// a short wait its `kubernetes` finalizer is removed through the `finalize` subresource (its
/// contents were removed before, by `helm uninstall`). Blocking, so it can run in `Drop`.
fn delete_namespace(name: &str) {
    let out = kubectl(
        &[
            "delete",
            "namespace",
            name,
            "--ignore-not-found",
            "--wait=false",
        ],
        None,
    );
    if !out.ok {
        eprintln!("cleanup: delete namespace {name}: {}", out.stderr);
        return;
    }
    let gone = || {
        let out = kubectl(
            &["get", "namespace", name, "--ignore-not-found", "-o", "name"],
            None,
        );
        out.ok && out.stdout.trim().is_empty()
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if gone() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        "spec": {"finalizers": []}});
    let path = format!("/api/v1/namespaces/{name}/finalize");
    let _ = kubectl(
        &["replace", "--raw", &path, "-f", "-"],
        Some(&body.to_string()),
    );
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if gone() {
            return;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("cleanup: namespace {name} is still there after 30 s");
}

/// A namespace on the management cluster, deleted on drop.
struct TempNamespace(String);

impl TempNamespace {
    async fn create(client: &Client, prefix: &str, labels: Value) -> TempNamespace {
        let name = unique(prefix);
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels},
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        TempNamespace(name)
    }
}

impl Drop for TempNamespace {
    fn drop(&mut self) {
        delete_namespace(&self.0);
    }
}

/// A Helm release on the management cluster: uninstalled, and its namespace deleted, on drop
/// (also when the test fails).
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    /// Installs the chart. A namespace left over by an earlier, interrupted run is removed
    /// first. `--skip-crds`: the CRDs are cluster-wide, shared with the other tests, and Helm
    /// never deletes CRDs it installed; this test must neither own nor leave them behind (the
    /// objects of the chart itself do not need them).
    fn install(name: &str, namespace: &str, set: &[&str]) -> Release {
        let _ = helm_mgmt(&[
            "uninstall",
            name,
            "--namespace",
            namespace,
            "--ignore-not-found",
        ]);
        delete_namespace(namespace);
        let release = Release {
            name: name.to_string(),
            namespace: namespace.to_string(),
        };
        let mut args = vec![
            "install",
            name,
            CHART,
            "--namespace",
            namespace,
            "--create-namespace",
            "--skip-crds",
            "--timeout",
            "60s",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        helm_mgmt(&args).expect_ok("helm install");
        release
    }

    fn upgrade(&self, set: &[&str]) {
        let mut args = vec![
            "upgrade",
            &self.name,
            CHART,
            "--namespace",
            &self.namespace,
            "--skip-crds",
            "--reuse-values",
            "--timeout",
            "60s",
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        helm_mgmt(&args).expect_ok("helm upgrade");
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let out = helm_mgmt(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.namespace,
            "--ignore-not-found",
            "--timeout",
            "60s",
        ]);
        if !out.ok {
            eprintln!("cleanup: helm uninstall {}: {}", self.name, out.stderr);
        }
        delete_namespace(&self.namespace);
    }
}

// ---------------------------------------------------------------------------------------------
// template-only checks

#[test]
fn helm_lint_passes_with_defaults_and_with_every_option() {
    helm(&["lint", "--strict", CHART]).expect_ok("helm lint (defaults)");
    helm(&["lint", "--strict", CHART, "--set", ALL_OPTIONS])
        .expect_ok(&format!("helm lint --set {ALL_OPTIONS}"));
    // the options render the objects they promise
    let docs = documents(&render("lint", "ops", &[ALL_OPTIONS]));
    for (kind, name) in [
        ("ServiceMonitor", "lint-residency-operator"),
        ("NetworkPolicy", "lint-residency-operator"),
        ("ClusterRole", "lint-residency-operator-local-member"),
        ("ClusterRoleBinding", "lint-residency-operator-local-member"),
    ] {
        assert!(
            find(&docs, kind, name).is_some(),
            "--set {ALL_OPTIONS} renders no {kind} {name}"
        );
    }
    // and none of them is there by default
    let defaults = documents(&render("lint", "ops", &[]));
    let kinds: Vec<String> = defaults
        .iter()
        .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
        .collect();
    assert!(
        !defaults
            .iter()
            .any(|d| d["kind"] == "ServiceMonitor" || d["kind"] == "NetworkPolicy"),
        "optional objects rendered by default: {kinds:?}"
    );
    assert!(
        find(
            &defaults,
            "ClusterRole",
            "lint-residency-operator-local-member"
        )
        .is_none(),
        "the local-member ClusterRole is rendered by default"
    );
}

#[test]
fn chart_crds_are_copies_of_the_repository_crds() {
    let names = |dir: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(repo(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let chart = format!("{CHART}/crds");
    assert_eq!(
        names("crds"),
        names(&chart),
        "{chart} must hold exactly the files of crds/: cp crds/*.yaml {chart}/"
    );
    for name in names("crds") {
        let a = std::fs::read(repo(&format!("crds/{name}"))).unwrap();
        let b = std::fs::read(repo(&format!("{chart}/{name}"))).unwrap();
        assert!(
            a == b,
            "{chart}/{name} differs from crds/{name}: cp crds/*.yaml {chart}/"
        );
    }
}

#[test]
fn rbac_rules_have_no_wildcards_and_each_says_why() {
    // every rule in the template has a comment right above it
    let source = std::fs::read_to_string(repo(&format!("{CHART}/templates/rbac.yaml"))).unwrap();
    let lines: Vec<&str> = source.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("- apiGroups:") {
            rules += 1;
            assert!(
                i > 0 && lines[i - 1].trim_start().starts_with('#'),
                "templates/rbac.yaml line {}: rule without a comment saying why it is needed",
                i + 1
            );
        }
    }
    assert!(
        rules >= 8,
        "only {rules} rules found in templates/rbac.yaml"
    );

    let docs = documents(&render("rbac", "ops", &["rbac.localMember=true"]));
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
        for rule in doc["rules"].as_array().expect("rules") {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "{what}: wildcard in {field}: {rule}"
                );
            }
        }
    }
    // Secrets: in the default ClusterRole never; in the Role only get
    let grants_secrets = |doc: &Value| {
        doc["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| strings(&r["resources"]).contains(&"secrets".to_string()))
    };
    let cluster_role = find(&docs, "ClusterRole", "rbac-residency-operator").expect("ClusterRole");
    assert!(
        !grants_secrets(cluster_role),
        "the ClusterRole must not grant Secrets: {cluster_role}"
    );
    let role = find(&docs, "Role", "rbac-residency-operator").expect("Role");
    assert_eq!(role["metadata"]["namespace"], "ops", "Role namespace");
    let secret_rule = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| strings(&r["resources"]).contains(&"secrets".to_string()))
        .expect("the Role grants reading member kubeconfig Secrets");
    assert_eq!(strings(&secret_rule["verbs"]), ["get"], "Secret verbs");
}

#[test]
fn deployment_follows_the_values() {
    let docs = documents(&render("dep", "ops", &[]));
    let d = find(&docs, "Deployment", "dep-residency-operator").expect("Deployment");
    assert_eq!(d["spec"]["replicas"], 2, "default replicas");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        strings(&c["args"]),
        [
            "run",
            "--namespace",
            "$(POD_NAMESPACE)",
            "--http-addr",
            "0.0.0.0:8080",
            "--concurrency",
            "32",
            "--probe-interval",
            "10",
            "--log-format",
            "json",
            "--leader-elect"
        ],
        "operator arguments"
    );
    let chart: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo(&format!("{CHART}/Chart.yaml"))).unwrap(),
    )
    .unwrap();
    let app_version = chart["appVersion"]
        .as_str()
        .expect("appVersion")
        .to_string();
    assert!(
        c["image"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{app_version}")),
        "the image tag defaults to appVersion {app_version}: {}",
        c["image"]
    );
    for (var, field) in [
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_NAME", "metadata.name"),
    ] {
        let env = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .unwrap_or_else(|| panic!("no env {var}"));
        assert_eq!(
            env["valueFrom"]["fieldRef"]["fieldPath"], field,
            "{var} from the downward API"
        );
    }
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["name"], "http-metrics");
    for k in ["requests", "limits"] {
        for r in ["cpu", "memory"] {
            assert!(
                c["resources"][k][r].is_string(),
                "resources.{k}.{r} is set: {}",
                c["resources"]
            );
        }
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["runAsGroup"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["automountServiceAccountToken"], true);
    assert_eq!(pod["serviceAccountName"], "dep-residency-operator");
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway", "soft spread");

    // one replica without leader election: no --leader-elect, no spread
    let docs = documents(&render(
        "dep",
        "ops",
        &[
            "replicaCount=1,leaderElection.enabled=false,image.tag=dev,operator.logFormat=text",
            "operator.concurrency=3,operator.probeInterval=30,metrics.port=9090",
        ],
    ));
    let d = find(&docs, "Deployment", "dep-residency-operator").expect("Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let args = strings(&pod["containers"][0]["args"]);
    assert_eq!(
        args,
        [
            "run",
            "--namespace",
            "$(POD_NAMESPACE)",
            "--http-addr",
            "0.0.0.0:9090",
            "--concurrency",
            "3",
            "--probe-interval",
            "30",
            "--log-format",
            "text"
        ],
        "operator arguments from values"
    );
    assert!(
        pod["containers"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with(":dev")
    );
    assert!(pod["topologySpreadConstraints"].is_null(), "{pod}");
    let svc = find(&docs, "Service", "dep-residency-operator-metrics").expect("Service");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], 9090);

    // several replicas without leader election would all write: refused
    let out = helm(&[
        "template",
        "dep",
        CHART,
        "--set",
        "replicaCount=2,leaderElection.enabled=false",
    ]);
    assert!(
        !out.ok && out.stderr.contains("leaderElection.enabled"),
        "replicaCount=2 without leader election must not render: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Pod Security admission on the management cluster

/// The rendered Deployment's pod template as a bare Pod: PodSecurity enforces on Pods (and only
/// warns on a Deployment), and the fleet's mgmt runs no controller that would create them.
fn pod_of(rendered: &str, namespace: &str) -> String {
    let docs = documents(rendered);
    let d = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a Deployment");
    let template = &d["spec"]["template"];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "residency-operator-psa-probe",
            "namespace": namespace,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
    })
    .to_string()
}

/// Server-side dry run of `manifests` in `namespace`.
fn dry_run(manifests: &str, namespace: &str) -> Out {
    kubectl(
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--namespace",
            namespace,
            "-f",
            "-",
        ],
        Some(manifests),
    )
}

/// A namespace enforcing the restricted Pod Security Standard, with the ServiceAccount of the
/// release `psa` (the management cluster admits a Pod only when its ServiceAccount exists).
async fn restricted_namespace(client: &Client) -> TempNamespace {
    let ns = TempNamespace::create(
        client,
        "helm-psa",
        json!({
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }),
    )
    .await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "psa-residency-operator"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), &ns.0)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap_or_else(|e| panic!("create the ServiceAccount in {}: {e}", ns.0));
    ns
}

#[tokio::test]
async fn rendered_chart_is_admitted_under_restricted_pod_security() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    let ns = restricted_namespace(&client).await;
    let rendered = render("psa", &ns.0, &[]);

    let out = dry_run(&rendered, &ns.0);
    assert!(
        out.ok,
        "the chart is refused in a restricted namespace:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(
        !out.stderr.contains("violate PodSecurity"),
        "the Deployment violates the restricted Pod Security Standard:\n{}",
        out.stderr
    );
    for kind in [
        "deployment.apps/psa-residency-operator",
        "serviceaccount/psa-residency-operator",
        "service/psa-residency-operator-metrics",
        "clusterrole.rbac.authorization.k8s.io/psa-residency-operator",
        "role.rbac.authorization.k8s.io/psa-residency-operator",
    ] {
        assert!(
            out.stdout.contains(kind),
            "{kind} not in the dry run:\n{}",
            out.stdout
        );
    }

    // the Pods the Deployment would create are admitted too (enforced, not only warned)
    let out = dry_run(&pod_of(&rendered, &ns.0), &ns.0);
    assert!(
        out.ok && !out.stderr.contains("PodSecurity"),
        "the operator Pod is refused in a restricted namespace:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test]
async fn weakened_render_is_refused_under_restricted_pod_security() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    let ns = restricted_namespace(&client).await;
    for (weakening, violation) in [
        ("podSecurityContext.runAsNonRoot=false", "runAsNonRoot"),
        (
            "securityContext.allowPrivilegeEscalation=true",
            "allowPrivilegeEscalation",
        ),
        (
            "securityContext.capabilities=null",
            "unrestricted capabilities",
        ),
    ] {
        let rendered = render("psa", &ns.0, &[weakening]);
        // a Deployment is admitted with a warning
        let out = dry_run(&rendered, &ns.0);
        assert!(
            out.stderr
                .contains("would violate PodSecurity \"restricted:latest\"")
                && out.stderr.contains(violation),
            "--set {weakening}: no PodSecurity warning about {violation}:\n{}",
            out.stderr
        );
        // its Pods are refused
        let out = dry_run(&pod_of(&rendered, &ns.0), &ns.0);
        assert!(
            !out.ok
                && out.stderr.contains("violates PodSecurity")
                && out.stderr.contains(violation),
            "--set {weakening}: the Pod is not refused for {violation}:\n{}\n{}",
            out.stdout,
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// a real install

#[tokio::test]
async fn helm_install_creates_the_expected_objects() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    let release = Release::install("residency-helm-test", INSTALL_NS, &["image.tag=test"]);
    let name = "residency-helm-test-residency-operator";
    let ns = release.namespace.as_str();

    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("Deployment {ns}/{name}: {e}"));
    let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert!(
        container
            .image
            .as_deref()
            .unwrap_or_default()
            .ends_with(":test"),
        "image.tag=test: {:?}",
        container.image
    );
    assert!(
        container
            .args
            .as_ref()
            .unwrap()
            .contains(&"--leader-elect".to_string()),
        "{:?}",
        container.args
    );
    assert_eq!(pod.service_account_name.as_deref(), Some(name));

    async fn exists<K>(api: Api<K>, name: &str)
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let kind = K::kind(&K::DynamicType::default()).to_string();
        api.get(name)
            .await
            .unwrap_or_else(|e| panic!("{kind} {name} was not created: {e}"));
    }
    exists(Api::<ServiceAccount>::namespaced(client.clone(), ns), name).await;
    exists(
        Api::<Service>::namespaced(client.clone(), ns),
        &format!("{name}-metrics"),
    )
    .await;
    exists(Api::<ClusterRole>::all(client.clone()), name).await;
    exists(Api::<ClusterRoleBinding>::all(client.clone()), name).await;
    exists(Api::<Role>::namespaced(client.clone(), ns), name).await;
    exists(Api::<RoleBinding>::namespaced(client.clone(), ns), name).await;
    let binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(name)
        .await
        .unwrap();
    let subject = &binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        (
            subject.kind.as_str(),
            subject.name.as_str(),
            subject.namespace.as_deref()
        ),
        ("ServiceAccount", name, Some(ns)),
        "ClusterRoleBinding subject"
    );

    drop(release);
    // uninstall removed the cluster-wide objects as well
    let left = Api::<ClusterRole>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "ClusterRole {name} left after helm uninstall"
    );
    let left = Api::<ClusterRoleBinding>::all(client.clone())
        .get_opt(name)
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "ClusterRoleBinding {name} left after helm uninstall"
    );
}

// ---------------------------------------------------------------------------------------------
// RBAC, asked of the real API server

/// One access question: verb on group/resource[/subresource] in namespace ("" = cluster-wide),
/// optionally for one name.
#[derive(Clone, Copy)]
struct Access {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: &'static str,
    name: &'static str,
}

const fn access(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    namespace: &'static str,
) -> Access {
    Access {
        verb,
        group,
        resource,
        subresource: "",
        namespace,
        name: "",
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {}/{}", self.verb, group, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        if !self.name.is_empty() {
            write!(f, " named {}", self.name)?;
        }
        if self.namespace.is_empty() {
            write!(f, " cluster-wide")
        } else {
            write!(f, " in namespace {}", self.namespace)
        }
    }
}

/// The operator's ServiceAccount as the API server sees its token.
struct Subject {
    user: String,
    groups: Vec<String>,
}

impl Subject {
    fn service_account(namespace: &str, name: &str) -> Subject {
        Subject {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// Asks the API server; returns whether it is allowed and its reason.
    async fn can(&self, client: &Client, a: Access) -> (bool, String) {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(self.user.clone()),
                groups: Some(self.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(a.verb.into()),
                    group: Some(a.group.into()),
                    resource: Some(a.resource.into()),
                    subresource: (!a.subresource.is_empty()).then(|| a.subresource.into()),
                    namespace: (!a.namespace.is_empty()).then(|| a.namespace.into()),
                    name: (!a.name.is_empty()).then(|| a.name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = Api::<SubjectAccessReview>::all(client.clone())
            .create(&PostParams::default(), &review)
            .await
            .unwrap_or_else(|e| panic!("SubjectAccessReview for {a}: {e}"));
        let status = answer.status.unwrap_or_default();
        let why = [status.reason, status.evaluation_error]
            .into_iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        (status.allowed && !status.denied.unwrap_or(false), why)
    }

    async fn assert_allowed(&self, client: &Client, a: Access) {
        let (allowed, why) = self.can(client, a).await;
        assert!(
            allowed,
            "{} must be allowed to {a}, but is not ({why})",
            self.user
        );
    }

    async fn assert_denied(&self, client: &Client, a: Access) {
        let (allowed, why) = self.can(client, a).await;
        assert!(
            !allowed,
            "{} must NOT be allowed to {a}, but is ({why})",
            self.user
        );
    }

    /// Waits until the API server's RBAC cache knows the new bindings.
    async fn wait_allowed(&self, client: &Client, a: Access) {
        eventually(
            &format!("{} allowed to {a}", self.user),
            Duration::from_secs(30),
            || async {
                match self.can(client, a).await {
                    (true, _) => Ok(()),
                    (false, why) => Err(why),
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn service_account_rbac_is_least_privilege() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    let release = Release::install("residency-rbac-test", RBAC_NS, &["image.tag=test"]);
    let ns: &'static str = RBAC_NS;
    let sa = Subject::service_account(ns, "residency-rbac-test-residency-operator");
    let other = "some-team";
    let residency = "residency.io";

    let list_clusters = access("list", residency, "memberclusters", "");
    sa.wait_allowed(&client, list_clusters).await;

    // what the operator needs
    sa.assert_allowed(&client, list_clusters).await;
    sa.assert_allowed(&client, access("watch", residency, "memberclusters", ""))
        .await;
    sa.assert_allowed(&client, access("watch", residency, "residencypolicies", ""))
        .await;
    sa.assert_allowed(&client, access("watch", residency, "residentworkloads", ""))
        .await;
    sa.assert_allowed(
        &client,
        Access {
            subresource: "status",
            ..access("patch", residency, "residentworkloads", other)
        },
    )
    .await;
    sa.assert_allowed(
        &client,
        Access {
            subresource: "status",
            ..access("patch", residency, "memberclusters", "")
        },
    )
    .await;
    sa.assert_allowed(
        &client,
        access("patch", residency, "residentworkloads", other),
    )
    .await;
    sa.assert_allowed(
        &client,
        Access {
            name: "memberclusters.residency.io",
            ..access(
                "get",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "",
            )
        },
    )
    .await;
    sa.assert_allowed(
        &client,
        Access {
            name: "kubeconfig-zrh-1",
            ..access("get", "", "secrets", ns)
        },
    )
    .await;
    sa.assert_allowed(&client, access("get", "", "secrets", ns))
        .await;
    sa.assert_allowed(&client, access("create", "events.k8s.io", "events", other))
        .await;
    sa.assert_allowed(
        &client,
        access("create", "coordination.k8s.io", "leases", ns),
    )
    .await;
    sa.assert_allowed(
        &client,
        Access {
            name: "residency-operator",
            ..access("update", "coordination.k8s.io", "leases", ns)
        },
    )
    .await;

    // what it must not do
    sa.assert_denied(&client, access("get", "", "secrets", "kube-system"))
        .await;
    sa.assert_denied(&client, access("get", "", "secrets", "default"))
        .await;
    sa.assert_denied(&client, access("get", "", "secrets", ""))
        .await;
    sa.assert_denied(&client, access("list", "", "secrets", ns))
        .await;
    sa.assert_denied(
        &client,
        access("create", "rbac.authorization.k8s.io", "clusterroles", ""),
    )
    .await;
    sa.assert_denied(&client, access("delete", residency, "memberclusters", ""))
        .await;
    sa.assert_denied(
        &client,
        access("update", residency, "residencypolicies", ""),
    )
    .await;
    sa.assert_denied(
        &client,
        Access {
            name: "kube-controller-manager",
            ..access("update", "coordination.k8s.io", "leases", "kube-system")
        },
    )
    .await;
    sa.assert_denied(
        &client,
        Access {
            name: "someone-else",
            ..access("update", "coordination.k8s.io", "leases", ns)
        },
    )
    .await;
    sa.assert_denied(
        &client,
        Access {
            name: "secrets.example.com",
            ..access(
                "get",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "",
            )
        },
    )
    .await;
    // spec.secrets: a namespace grants the operator its Secrets with a RoleBinding to the
    // chart's secret-source ClusterRole; only that namespace, only get
    let team = "secret-source-team";
    let _ = Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": team}})).unwrap(),
        )
        .await;
    sa.assert_denied(&client, access("get", "", "secrets", team))
        .await;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "residency-secret-source", "namespace": team},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": "residency-rbac-test-residency-operator-secret-source"},
        "subjects": [{"kind": "ServiceAccount", "name": "residency-rbac-test-residency-operator",
                      "namespace": ns}]
    }))
    .unwrap();
    let _ = Api::<RoleBinding>::namespaced(client.clone(), team)
        .create(&PostParams::default(), &binding)
        .await;
    sa.wait_allowed(&client, access("get", "", "secrets", team))
        .await;
    sa.assert_denied(&client, access("list", "", "secrets", team))
        .await;
    sa.assert_denied(&client, access("watch", "", "secrets", team))
        .await;
    sa.assert_denied(&client, access("get", "", "secrets", "default"))
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(team, &Default::default())
        .await;

    // rbac.localMember is off: nothing on this cluster's own workloads
    sa.assert_denied(&client, access("create", "", "namespaces", ""))
        .await;
    sa.assert_denied(&client, access("list", "", "nodes", ""))
        .await;
    sa.assert_denied(&client, access("patch", "apps", "deployments", other))
        .await;
    let vap = "validatingadmissionpolicies";
    let admission = "admissionregistration.k8s.io";
    sa.assert_denied(&client, access("create", admission, vap, ""))
        .await;

    // rbac.localMember=true: the documented trade-off, and still no RBAC or CRD writes
    release.upgrade(&["rbac.localMember=true"]);
    let create_ns = access("create", "", "namespaces", "");
    sa.wait_allowed(&client, create_ns).await;
    sa.assert_allowed(&client, create_ns).await;
    sa.assert_allowed(&client, access("list", "", "nodes", ""))
        .await;
    sa.assert_allowed(&client, access("patch", "apps", "deployments", other))
        .await;
    sa.assert_allowed(&client, access("create", "apps", "statefulsets", other))
        .await;
    sa.assert_allowed(
        &client,
        access("delete", "", "persistentvolumeclaims", other),
    )
    .await;
    sa.assert_allowed(&client, access("get", "", "secrets", other))
        .await;
    // prevention on this cluster: its own admission policies
    sa.assert_allowed(&client, access("create", admission, vap, ""))
        .await;
    sa.assert_allowed(
        &client,
        access("watch", admission, "validatingadmissionpolicybindings", ""),
    )
    .await;
    sa.assert_denied(&client, access("update", admission, vap, ""))
        .await;
    sa.assert_denied(
        &client,
        access("create", "rbac.authorization.k8s.io", "clusterroles", ""),
    )
    .await;
    // placeable RoleBindings, yes; but nothing it does not hold itself can be granted
    sa.assert_allowed(
        &client,
        access("create", "rbac.authorization.k8s.io", "rolebindings", other),
    )
    .await;
    sa.assert_denied(
        &client,
        access("bind", "rbac.authorization.k8s.io", "clusterroles", ""),
    )
    .await;
    sa.assert_denied(
        &client,
        access("escalate", "rbac.authorization.k8s.io", "roles", other),
    )
    .await;
    sa.assert_denied(&client, access("delete", residency, "memberclusters", ""))
        .await;
    sa.assert_denied(&client, access("delete", "", "namespaces", ""))
        .await;
    sa.assert_denied(&client, access("delete", "", "nodes", ""))
        .await;
    drop(release);
}
