//! The CRDs on a real API server: they install and become Established, every valid example is
//! accepted, and every broken example is refused with a message a person understands.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Fleet, eventually};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

const MANAGER: &str = "residency-tests";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn documents(path: &Path) -> Vec<DynamicObject> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_yaml::from_value(v).unwrap())
        .collect()
}

/// Installs the committed CRDs once per test binary and waits until they are Established.
async fn install_crds(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for file in yaml_files("crds") {
            for doc in documents(&file) {
                let crd: CustomResourceDefinition =
                    serde_json::from_value(serde_json::to_value(&doc).unwrap()).unwrap();
                let name = crd.name_any();
                crds.patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&crd),
                )
                .await
                .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
                eventually(
                    &format!("CRD {name} Established"),
                    Duration::from_secs(60),
                    || async {
                        let c = crds.get(&name).await.map_err(|e| e.to_string())?;
                        let ok = c
                            .status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Established" && c.status == "True");
                        if ok {
                            Ok(())
                        } else {
                            Err("not Established".into())
                        }
                    },
                )
                .await;
            }
        }
    })
    .await;
}

/// Server-side applies one object (optionally as a dry run) with strict field validation.
async fn apply(
    client: &Client,
    obj: &DynamicObject,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let types = obj.types.as_ref().expect("apiVersion and kind");
    let gvk = GroupVersionKind::try_from(types).unwrap();
    let (ar, caps) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => {
            let ns = obj.namespace().unwrap_or_else(|| "threat-intel".into());
            Api::namespaced_with(client.clone(), &ns, &ar)
        }
        Scope::Cluster => Api::all_with(client.clone(), &ar),
    };
    let mut params = PatchParams::apply(MANAGER).force();
    params.dry_run = dry_run;
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
}

async fn delete(client: &Client, obj: &DynamicObject) {
    let gvk = GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
    if let Ok((ar, caps)) = discovery::pinned_kind(client, &gvk).await {
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                &obj.namespace().unwrap_or_else(|| "threat-intel".into()),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        let _ = api.delete(&obj.name_any(), &DeleteParams::default()).await;
    }
}

fn expectations(path: &Path, key: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("# {key}: ")))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn crds_install_and_valid_examples_are_accepted() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    install_crds(&client).await;
    let mut applied = Vec::new();
    for dir in [
        "examples/seed",
        "examples/seed-relocated",
        "examples/unplaceable",
    ] {
        for file in yaml_files(dir) {
            for doc in documents(&file) {
                let back = apply(&client, &doc, false).await.unwrap_or_else(|e| {
                    panic!(
                        "{}: {} {} was refused: {e}",
                        file.display(),
                        doc.types.as_ref().unwrap().kind,
                        doc.name_any()
                    )
                });
                assert_eq!(back.name_any(), doc.name_any());
                applied.push(doc);
            }
        }
    }
    // defaults from the schema are applied by the server
    let gvk = GroupVersionKind::gvk("residency.io", "v1alpha1", "MemberCluster");
    let (ar, _) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    let zrh: DynamicObject = Api::all_with(client.clone(), &ar)
        .get("zrh-1")
        .await
        .unwrap();
    assert_eq!(zrh.data["spec"]["schedulable"], serde_json::json!(true));
    assert_eq!(
        zrh.data["spec"]["connection"]["kubeconfigSecretRef"]["key"],
        "kubeconfig"
    );
    for doc in applied
        .iter()
        .rev()
        .filter(|d| d.types.as_ref().unwrap().kind != "Namespace")
    {
        delete(&client, doc).await;
    }
}

#[tokio::test]
async fn broken_examples_are_refused_with_a_clear_message() {
    let fleet = Fleet::from_env();
    let client = fleet.mgmt_client().await;
    install_crds(&client).await;
    for ns in documents(&repo("examples/seed/00-namespace.yaml")) {
        apply(&client, &ns, false)
            .await
            .expect("namespace threat-intel");
    }
    let files = yaml_files("examples/broken");
    assert!(
        files.len() >= 8,
        "expected the broken examples, found {files:?}"
    );
    let mut failures = Vec::new();
    for file in files {
        let expected = expectations(&file, "expect-apiserver");
        assert!(
            !expected.is_empty(),
            "{} has no '# expect-apiserver:' line",
            file.display()
        );
        for doc in documents(&file) {
            match apply(&client, &doc, true).await {
                Ok(_) => failures.push(format!("{}: accepted, but it is broken", file.display())),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{}: {status:?}", file.display());
                    for e in &expected {
                        if !status.message.contains(e.as_str()) {
                            failures.push(format!(
                                "{}: message {:?} does not contain {e:?}",
                                file.display(),
                                status.message
                            ));
                        }
                    }
                }
                Err(e) => failures.push(format!("{}: unexpected error {e}", file.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
