//! The data mover for real: the operator's own image (built without Docker) loaded into the real
//! nodes of msk-1 and zrh-1, its Pods and key Secrets made as the operator makes them
//! (`datamove::objects`: read-only source, root without privilege escalation, read-only root
//! filesystem); a source Pod on msk-1 serves a real volume of many shapes, a
//! destination Pod on zrh-1 pulls it straight from that Pod's address over mutual TLS with keys
//! made for the move (each side holds only its half, in a Secret), and an independent manifest
//! Pod on each side computes the digests, which must be equal. Then: a file written on the
//! source arrives with the next (incremental) pull, a Pod on zrh-1 reads the files, a byte changed
//! on the destination changes its digest and the differing path is named, and a destination
//! with another move's keys gets nothing.

mod common;

use std::time::Duration;

use common::mover::{self, IMAGE, run};
use common::real::{self, TEST_IMAGE};
use common::{Fleet, unique};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, PostParams};
use residency_operator::datamove::objects::{self, PORT, Role};
use residency_operator::mover::manifest::{self, Manifest};
use residency_operator::mover::tls::MoveKeys;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(180);

/// Files of many shapes, written by busybox on the source volume.
const SEED: &str = r#"set -e
cd /data
i=0
while [ $i -lt 400 ]; do
  d="region $((i % 10))/customer-$((i % 7))"
  mkdir -p "$d"
  head -c $((i * 131 % 9000)) /dev/urandom > "$d/sample $i.bin"
  i=$((i + 1))
done
dd if=/dev/urandom of=big.bin bs=1M count=24 2>/dev/null
: > empty
: > "region 0/empty too"
dd if=/dev/zero of=sparse.img bs=1 count=0 seek=32M 2>/dev/null
printf tail >> sparse.img
mkdir -p "nested/a b/ç日本"
printf 'Zürich' > "nested/a b/ç日本/ünï cödé.txt"
chmod 600 "region 1/customer-1/sample 1.bin"
ln -sf "region 1" link-to-region
ln -sf /nowhere dangling
echo seeded"#;

async fn keys_secret(client: &Client, ns: &str, files: Vec<(&'static str, String)>) {
    let data: serde_json::Map<String, Value> = files
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    let s: Secret =
        serde_json::from_value(json!({"metadata": {"name": "move-keys"}, "stringData": data}))
            .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
}

/// A mover Pod as the operator makes them (`datamove::objects`), on the member's real node,
/// the claim `data` at /data/data, the keys from the Secret `move-keys`.
fn mover_pod(name: &str, role: &Role) -> Value {
    let scheduling = mover::real_node();
    objects::mover_pod(
        name,
        "test-move",
        IMAGE,
        role,
        &["data".to_string()],
        "move-keys",
        &scheduling,
    )
}

fn shell_pod(name: &str, script: &str) -> Value {
    let mut p = real::pod(name, TEST_IMAGE, script, &[("data", "/data")]);
    p["spec"]["restartPolicy"] = json!("Never");
    p
}

/// The manifest of the claim `data` on the member, from a mover Pod there.
async fn manifest_on(client: &Client, ns: &str, tag: &str) -> Manifest {
    mover::manifest_on(client, ns, &["data".to_string()], tag).await
}

async fn pull(client: &Client, ns: &str, from: &str) -> Result<Value, String> {
    let log = run(
        client,
        ns,
        mover_pod(
            &unique("pull"),
            &Role::Pull {
                from: from.to_string(),
            },
        ),
    )
    .await?;
    serde_json::from_str(log.trim()).map_err(|e| format!("{e}: {log}"))
}

#[tokio::test]
async fn the_mover_moves_a_real_volume_between_members_and_proves_it() {
    let fleet = Fleet::from_env();
    let (msk1, zrh1) = (fleet.member("msk-1").await, fleet.member("zrh-1").await);
    mover::load_image(&["msk-1", "zrh-1"]);
    // a real volume keeps the files of the test that used it last
    for c in [&msk1, &zrh1] {
        mover::wipe_available_volumes(c).await;
    }
    let ns = unique("mover");
    let keys = MoveKeys::generate().unwrap();
    for (c, files) in [
        (&msk1, keys.source_files()),
        (&zrh1, keys.destination_files()),
    ] {
        common::operator::ensure_namespace(c, &ns).await;
        real::claim(c, &ns, "data").await.unwrap();
        keys_secret(c, &ns, files).await;
    }
    let result = async {
        // the source's data, then its mover serving it
        run(&msk1, &ns, shell_pod("seed", SEED)).await?;
        let pods: Api<Pod> = Api::namespaced(msk1.clone(), &ns);
        let serve: Pod = serde_json::from_value(mover_pod("source", &Role::Serve)).unwrap();
        pods.create(&PostParams::default(), &serve).await.map_err(|e| e.to_string())?;
        let source_pod = real::running(&pods, "source", T).await?;
        let ip = source_pod.status.and_then(|s| s.pod_ip).ok_or("the source has no IP")?;
        let from = format!("{ip}:{PORT}");

        // stage: the destination pulls straight from the source Pod
        let first = pull(&zrh1, &ns, &from).await?;
        eprintln!("mover: first pull {first}");
        let (src, dst) = (manifest_on(&msk1, &ns, "src").await, manifest_on(&zrh1, &ns, "dst").await);
        let totals = src.totals();
        if src.digest() != dst.digest() {
            return Err(format!("digests differ: {:?}", manifest::differences(&src, &dst, 5)));
        }
        if first["sourceDigest"] != src.digest() {
            return Err(format!("the pull followed {} not {}", first["sourceDigest"], src.digest()));
        }
        if totals.files < 400 || totals.symlinks != 2 {
            return Err(format!("not all shapes: {totals:?}"));
        }

        // a file written on the source afterwards (just before a fence): the final pull brings it
        run(&msk1, &ns, shell_pod("late-write", "echo late > '/data/region 2/written before the fence'")).await?;
        let second = pull(&zrh1, &ns, &from).await?;
        if second["filesFetched"] != 1 {
            return Err(format!("the incremental pull fetched {}", second["filesFetched"]));
        }
        let (src, dst) = (manifest_on(&msk1, &ns, "src2").await, manifest_on(&zrh1, &ns, "dst2").await);
        if src.digest() != dst.digest() {
            return Err(format!("after the final sync: {:?}", manifest::differences(&src, &dst, 5)));
        }
        // the destination's Pods read the files
        let read = run(
            &zrh1,
            &ns,
            shell_pod("reader", "cat '/data/nested/a b/ç日本/ünï cödé.txt' '/data/region 2/written before the fence'"),
        )
        .await?;
        if !read.contains("Zürich") || !read.contains("late") {
            return Err(format!("the destination Pod read {read:?}"));
        }

        // a byte changed on the destination: another digest, the path named
        run(
            &zrh1,
            &ns,
            shell_pod("corrupt", "printf X | dd of='/data/region 3/customer-3/sample 3.bin' bs=1 seek=0 conv=notrunc 2>/dev/null"),
        )
        .await?;
        let bad = manifest_on(&zrh1, &ns, "bad").await;
        let diff = manifest::differences(&src, &bad, 5);
        if bad.digest() == src.digest() || diff.len() != 1 || diff[0].path != "data/region%203/customer-3/sample%203.bin" {
            return Err(format!("a changed byte gave {diff:?}"));
        }

        // a destination holding another move's keys gets nothing
        let other = MoveKeys::generate().unwrap();
        let secrets: Api<Secret> = Api::namespaced(zrh1.clone(), &ns);
        secrets
            .delete("move-keys", &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        keys_secret(&zrh1, &ns, other.destination_files()).await;
        match pull(&zrh1, &ns, &from).await {
            Err(e) if e.contains("tls") || e.contains("network") || e.contains("certificate") => {}
            other => return Err(format!("a stranger's pull gave {other:?}")),
        }
        // ... and nothing on the destination changed: the corrupted byte is still there
        let after = manifest_on(&zrh1, &ns, "after-stranger").await;
        if after.digest() != bad.digest() {
            return Err(format!(
                "a stranger's pull changed the destination: {:?}",
                manifest::differences(&bad, &after, 5)
            ));
        }
        eprintln!(
            "mover: {} files, {} directories, {} symlinks, {:.1} MB moved msk-1 -> zrh-1 in {:.2} s; digests equal ({}, after the final sync {})",
            totals.files,
            totals.dirs,
            totals.symlinks,
            totals.bytes as f64 / 1e6,
            first["seconds"].as_f64().unwrap_or_default(),
            first["sourceDigest"].as_str().unwrap_or_default(),
            src.digest()
        );
        Ok::<(), String>(())
    }
    .await;
    for c in [&msk1, &zrh1] {
        real::release(c.clone(), &ns, &["data"]).await;
    }
    result.unwrap();
}
