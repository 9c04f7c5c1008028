//! The CRDs on a real API server: they install and become Established, every valid example is
//! accepted, and every broken example is refused with a message a person understands.

mod common;

use std::path::Path;

use common::operator;
use common::{Fleet, documents, dynamic_api, repo, yaml_files};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery;
use kube::{Client, ResourceExt};
use tokio::sync::OnceCell;

const MANAGER: &str = "residency-tests";

/// Installs the committed CRDs once per test binary.
async fn install_crds(client: &Client) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| operator::install_crds(client)).await;
}

/// Server-side applies one object (optionally as a dry run) with strict field validation.
async fn apply(
    client: &Client,
    obj: &DynamicObject,
    dry_run: bool,
) -> Result<DynamicObject, kube::Error> {
    let api = dynamic_api(client, obj, "threat-intel").await?;
    let mut params = PatchParams::apply(MANAGER).force();
    params.dry_run = dry_run;
    params.field_validation = Some(ValidationDirective::Strict);
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
}

async fn delete(client: &Client, obj: &DynamicObject) {
    if let Ok(api) = dynamic_api(client, obj, "threat-intel").await {
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
