//! Verified data relocation on the fleet's real nodes (`spec.dataMigration: CopyAndVerify`).
//! A Storage workload (a StatefulSet of busybox on the members' real nodes, its volume a real
//! directory) holds files of many shapes on msk-1 and keeps writing a journal; a policy edit
//! like the seed scenario's moves it to zrh-1 and zrh-2. Checked on the members themselves,
//! by independent manifest Pods on every side, not only in status:
//!
//! * both destinations hold the source's manifest digest (1,000+ files, 200+ MB: nested
//!   directories, a file over 100 MB, empty and sparse files, symlinks, names with spaces and
//!   non-ASCII), the journal entry the writer made as it was stopped is on both, and the
//!   relocated Pods read every file;
//! * a byte changed on a destination after the final copy fails the move safe: the source runs
//!   again, nothing starts on the destinations, the path is named, nothing is deleted; a retry
//!   then moves the data;
//! * the mover processes killed mid-copy, and a destination's API server stopped mid-move:
//!   the move resumes and nothing is lost.
//!
//! The tests of this binary run one at a time (they share the members' few real volumes).

mod common;

use std::time::{Duration, Instant};

use common::mover::{self, host_dir, manifest_on};
use common::rules::{self, Env};
use common::{eventually, fleet_sh, unique};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::{Api, DeleteParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use residency_operator::api::data_move::Phase;
use residency_operator::api::{DataMove, ResidentWorkload};
use residency_operator::mover::manifest::{Kind, Manifest};
use serde_json::{Value, json};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MOVE_T: Duration = Duration::from_secs(300);

/// The store's container: seeds the volume once (`FILES` small files, a `BIG_MB` file, a
/// `MID_MB` file, empty and sparse files, symlinks, odd names), then reads every file; on the
/// node that seeded it, it writes a journal entry every 0.2 s and, when stopped, a last one
/// after `STOP_DELAY` seconds.
const STORE: &str = r#"set -e
cd /data
if [ ! -f .seeded ]; then
  i=0
  while [ $i -lt $FILES ]; do
    d="region $((i % 10))/customer-$((i % 7))/batch $((i % 13))"
    mkdir -p "$d"
    head -c $((i * 977 % 40000)) /dev/urandom > "$d/sample $i.bin"
    i=$((i + 1))
  done
  dd if=/dev/urandom of=big.bin bs=1M count=$BIG_MB 2>/dev/null
  dd if=/dev/urandom of="archive 2026.tar" bs=1M count=$MID_MB 2>/dev/null
  : > empty
  : > "region 0/empty too"
  dd if=/dev/zero of=sparse.img bs=1 count=0 seek=64M 2>/dev/null
  printf tail >> sparse.img
  mkdir -p "nested/a b/ç日本"
  printf 'Zürich' > "nested/a b/ç日本/ünï cödé.txt"
  ln -sf "region 1" link-to-region
  ln -sf /nowhere dangling
  echo "$NODE" > .origin
  sync
  touch .seeded
fi
echo "read $(find /data -type f ! -name '.*' -exec cat {} + | wc -c) bytes"
if [ "$(cat .origin)" = "$NODE" ]; then
  mkdir -p journal
  trap 'sleep $STOP_DELAY; date > "journal/last words"; sync; exit 0' TERM
  n=0
  while true; do n=$((n + 1)); echo "$n" > "journal/$n"; sleep 0.2 & wait $!; done
else
  trap 'exit 0' TERM
  while true; do sleep 1 & wait $!; done
fi
"#;

struct Shape {
    files: u32,
    big_mb: u32,
    mid_mb: u32,
    stop_delay: u32,
}

fn store(ns: &str, name: &str, country: &str, shape: &Shape) -> Value {
    let env = json!([
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "FILES", "value": shape.files.to_string()},
        {"name": "BIG_MB", "value": shape.big_mb.to_string()},
        {"name": "MID_MB", "value": shape.mid_mb.to_string()},
        {"name": "STOP_DELAY", "value": shape.stop_delay.to_string()},
    ]);
    json!({
        "apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "role": "Storage", "countries": [country], "volumePolicy": "Retain",
            "dataMigration": {"mode": "CopyAndVerify", "quiesceTimeoutSeconds": 120},
            "manifests": [{
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
                "spec": {
                    "serviceName": name, "replicas": 1,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "nodeSelector": {"residency.io/real-node": "true"},
                            "tolerations": [{"key": "residency.io/real-node", "operator": "Exists", "effect": "NoSchedule"}],
                            "terminationGracePeriodSeconds": shape.stop_delay + 20,
                            "containers": [{
                                "name": "store", "image": common::real::TEST_IMAGE, "imagePullPolicy": "Never",
                                "securityContext": common::restricted(),
                                "command": ["/bin/busybox", "sh", "-c", STORE],
                                "env": env,
                                "readinessProbe": {"exec": {"command": ["/bin/busybox", "test", "-f", "/data/.seeded"]},
                                                   "periodSeconds": 1},
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                            }]
                        }
                    },
                    "volumeClaimTemplates": [{"metadata": {"name": "data"},
                        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": common::real::REAL_STORAGE_CLASS,
                                 "resources": {"requests": {"storage": "1Gi"}}}}]
                }
            }]
        }
    })
}

/// One test's world: its namespace, country, policy and store.
struct Case {
    env: Env,
    ns: String,
    name: String,
    country: &'static str,
    policy: String,
    claim: String,
}

impl Case {
    async fn start(tag: &str, country: &'static str, shape: &Shape) -> Case {
        let env = rules::setup().await;
        // the members' resident volumes are their real ones for this test
        storage_class(&env.mgmt, common::real::REAL_STORAGE_CLASS).await;
        mover::load_image(&["msk-1", "zrh-1", "zrh-2"]);
        for (_, c) in &env.members {
            mover::wipe_available_volumes(c).await;
        }
        // a policy an interrupted earlier run of this test left would govern the same country
        let policies: Api<residency_operator::api::ResidencyPolicy> = Api::all(env.mgmt.clone());
        for p in policies.list(&Default::default()).await.unwrap().items {
            if p.name_any().starts_with(&format!("{tag}-")) {
                let _ = policies
                    .delete(&p.name_any(), &DeleteParams::default())
                    .await;
            }
        }
        let ns = unique(tag);
        rules::namespace(&env.mgmt, &ns).await;
        let policy = format!("{ns}-policy");
        rules::policy(
            &env.mgmt,
            &policy,
            &[country],
            json!([{"country": "RU", "region": "moscow"}]),
            "Enforce",
        )
        .await;
        let name = "store".to_string();
        rules::apply_workload(&env.mgmt, &store(&ns, &name, country, shape))
            .await
            .unwrap();
        let case = Case {
            claim: format!("data-{name}-0"),
            env,
            ns,
            name,
            country,
            policy,
        };
        case.wait(
            "Ready on msk-1 with its data seeded",
            Duration::from_secs(240),
            |rw| rules::ready_on(rw, &["msk-1"]),
        )
        .await;
        case
    }

    fn member(&self, name: &str) -> &Client {
        &self.env.members.iter().find(|(n, _)| *n == name).unwrap().1
    }

    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&ResidentWorkload) -> bool,
    ) -> ResidentWorkload {
        let api: Api<ResidentWorkload> = Api::namespaced(self.env.mgmt.clone(), &self.ns);
        eventually(&format!("{}: {what}", self.ns), timeout, || async {
            let rw = api.get(&self.name).await.map_err(|e| e.to_string())?;
            if check(&rw) {
                Ok(rw)
            } else {
                Err(serde_json::to_string(&rw.status).unwrap_or_default())
            }
        })
        .await
    }

    /// The policy edit of the seed scenario: the country's data must now be in Zurich.
    async fn to_zurich(&self) {
        rules::policy(
            &self.env.mgmt,
            &self.policy,
            &[self.country],
            json!([{"country": "CH", "region": "zurich"}]),
            "Enforce",
        )
        .await;
    }

    async fn moves(&self) -> Vec<DataMove> {
        let mut items = Api::<DataMove>::namespaced(self.env.mgmt.clone(), &self.ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items;
        items.sort_by_key(|m| m.metadata.creation_timestamp.clone().map(|t| t.0));
        items
    }

    /// Waits until the workload's latest move satisfies `check`; returns it.
    async fn wait_move(&self, what: &str, check: impl Fn(&DataMove) -> bool) -> DataMove {
        eventually(&format!("{}: the move {what}", self.ns), MOVE_T, || async {
            match self.moves().await.pop() {
                Some(m) if check(&m) => Ok(m),
                Some(m) => Err(serde_json::to_string(&m.status).unwrap_or_default()),
                None => Err("no DataMove yet".into()),
            }
        })
        .await
    }

    fn claims(&self) -> Vec<String> {
        vec![self.claim.clone()]
    }

    async fn replicas_on(&self, cluster: &str) -> Option<i32> {
        Api::<StatefulSet>::namespaced(self.member(cluster).clone(), &self.ns)
            .get_opt(&self.name)
            .await
            .unwrap()
            .map(|s| s.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    async fn cleanup(self) {
        rules::cleanup(&self.env, &self.ns, &[&self.name], &[&self.policy]).await;
        for (_, c) in &self.env.members {
            mover::release_volumes(c, &self.ns).await;
        }
        storage_class(&self.env.mgmt, "standard").await;
        // the move records outlive the workload by design; the test's are removed with it
        let _ = Api::<DataMove>::namespaced(self.env.mgmt.clone(), &self.ns)
            .delete_collection(&DeleteParams::default(), &Default::default())
            .await;
    }
}

/// Sets the storage class of the seed members' resident volumes (`standard`, the seed's, is
/// the kwok nodes' class).
async fn storage_class(mgmt: &Client, class: &str) {
    let api: Api<residency_operator::api::MemberCluster> = Api::all(mgmt.clone());
    for c in ["msk-1", "zrh-1", "zrh-2"] {
        api.patch(
            c,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"storageClassName": class}})),
        )
        .await
        .unwrap_or_else(|e| panic!("storage class of {c}: {e}"));
    }
}

fn phase(m: &DataMove) -> Option<Phase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn file(m: &Manifest, path: &str) -> bool {
    m.entries
        .iter()
        .any(|e| e.path == path && e.kind == Kind::File)
}

/// Bytes of the files a `find -type f ! -name '.*'` reads.
fn readable_bytes(m: &Manifest) -> u64 {
    m.entries
        .iter()
        .filter(|e| e.kind == Kind::File)
        .filter(|e| !e.path.rsplit('/').next().unwrap_or("").starts_with('.'))
        .map(|e| e.size)
        .sum()
}

/// What the store's Pod on `cluster` printed when it read every file.
async fn read_by_pod(case: &Case, cluster: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(case.member(cluster).clone(), &case.ns);
    let name = format!("{}-0", case.name);
    eventually(
        &format!("{cluster}: the store read its files"),
        rules::T,
        || async {
            let log = pods
                .logs(&name, &LogParams::default())
                .await
                .map_err(|e| e.to_string())?;
            log.lines()
                .find(|l| l.starts_with("read "))
                .map(str::to_string)
                .ok_or(log)
        },
    )
    .await
}

#[tokio::test]
async fn a_store_moves_to_both_zurich_clusters_with_its_data_verified() {
    let _one = SERIAL.lock().await;
    let shape = Shape {
        files: 1000,
        big_mb: 110,
        mid_mb: 70,
        stop_delay: 1,
    };
    let case = Case::start("dm-seed", "PG", &shape).await;
    let result = async {
        let started = Instant::now();
        case.to_zurich().await;
        let rw = case
            .wait("Ready on zrh-1 and zrh-2, DataVerified", MOVE_T, |rw| {
                rules::ready_on(rw, &["zrh-1", "zrh-2"])
                    && rules::condition(rw, "DataVerified").is_some_and(|c| c.0 == "True")
            })
            .await;
        let took = started.elapsed();
        let m = case.moves().await.pop().ok_or("no DataMove")?;
        let st = m.status.clone().unwrap_or_default();
        if phase(&m) != Some(Phase::Succeeded) {
            return Err(format!("the move: {st:?}"));
        }
        // the record: both destinations' digests are the source's
        if st.destination_digests.len() != 2
            || st.destination_digests.iter().any(|d| d.digest != st.source_digest)
        {
            return Err(format!("digests: {} vs {:?}", st.source_digest, st.destination_digests));
        }
        if st.files < 1000 || st.bytes < 200_000_000 {
            return Err(format!("only {} files, {} bytes moved", st.files, st.bytes));
        }
        if st.volumes.len() != 2 || st.volumes.iter().any(|v| v.phase != "Verified") {
            return Err(format!("volume pairs: {:?}", st.volumes));
        }
        if m.spec.policies.iter().all(|p| p.name != case.policy || p.generation.is_none()) {
            return Err(format!("the policy that caused it is not recorded: {:?}", m.spec.policies));
        }
        let summary = rw.status.as_ref().and_then(|s| s.data_migration.clone());
        if summary.as_ref().map(|s| s.move_name.as_str()) != Some(m.name_any().as_str()) {
            return Err(format!("the workload's status names {summary:?}"));
        }

        // on the members themselves: an independent manifest on each side, equal to the record
        let claims = case.claims();
        let src = manifest_on(case.member("msk-1"), &case.ns, &claims, "msk-1").await;
        for d in ["zrh-1", "zrh-2"] {
            let dst = manifest_on(case.member(d), &case.ns, &claims, d).await;
            if dst.digest() != st.source_digest || src.digest() != st.source_digest {
                return Err(format!(
                    "{d}: {} / source {} / recorded {}: {:?}",
                    dst.digest(),
                    src.digest(),
                    st.source_digest,
                    mover::differences(&src, &dst)
                ));
            }
            // the entry the writer made as it was stopped is there
            let last = format!("{}/journal/last%20words", case.claim);
            if !file(&dst, &last) {
                return Err(format!("{d} lacks {last}"));
            }
            // the relocated Pod read every file
            let read = read_by_pod(&case, d).await;
            let expected = format!("read {} bytes", readable_bytes(&src));
            if read != expected {
                return Err(format!("{d}: the store printed {read:?}, expected {expected:?}"));
            }
        }
        let totals = src.totals();
        let big = src
            .entries
            .iter()
            .filter(|e| e.kind == Kind::File)
            .map(|e| e.size)
            .max()
            .unwrap_or(0);
        if totals.files < 1000 || totals.symlinks != 2 || big < 100 << 20 {
            return Err(format!("not every shape: {totals:?}, largest {big}"));
        }
        // the source keeps its volume (retained), its writers are gone
        let kept = rules::claims(case.member("msk-1"), &case.ns, &case.name).await;
        if kept.get(&case.claim) != Some(&true) || case.replicas_on("msk-1").await.is_some() {
            return Err(format!("msk-1 after the move: claims {kept:?}"));
        }
        // the report shows the move under the country
        let report = common::report();
        let line = format!("MOVED {}/{}: store from msk-1 to zrh-1, zrh-2: Succeeded", case.ns, m.name_any());
        if !report.lines().any(|l| l.trim_start().starts_with(&line) && l.contains(&st.source_digest)) {
            return Err(format!("the report lacks {line:?}:\n{report}"));
        }

        // throughput: the staging copy, against a plain copy of the same files between the
        // same two host directories, in this run
        let stage: Vec<_> = st.transfers.iter().filter(|t| t.pass == "Staging").collect();
        let moved_bytes: u64 = stage.iter().map(|t| t.bytes_fetched).sum();
        let moved_ms = stage.iter().map(|t| t.milliseconds).max().unwrap_or(0).max(1);
        let from = host_dir(case.member("msk-1"), &case.ns, &case.claim).await;
        let to = std::env::temp_dir().join(unique("dm-plain-copy"));
        let t = Instant::now();
        common::run_ok(std::process::Command::new("cp").arg("-a").arg(&from).arg(&to));
        let plain = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&to);
        // both destinations copy at once: together they moved `moved_bytes` in the slower's time
        let mover_rate = moved_bytes as f64 / 1e6 / (moved_ms as f64 / 1000.0);
        let plain_rate = st.bytes as f64 / 1e6 / plain;
        if moved_bytes < st.bytes {
            return Err(format!("the staging copies fetched {moved_bytes} of {} bytes", st.bytes));
        }
        eprintln!(
            "data move: {} files, {:.1} MB, msk-1 -> zrh-1, zrh-2 verified in {:.1} s (staging {:?} s, writers stopped {:?} s); \
             staging copy {:.0} MB/s to {} destinations at once, plain cp -a {:.0} MB/s, ratio {:.2}; digest {}",
            st.files,
            st.bytes as f64 / 1e6,
            took.as_secs_f64(),
            st.timings.as_ref().and_then(|t| t.staging_seconds),
            st.timings.as_ref().and_then(|t| t.fenced_seconds),
            mover_rate,
            stage.len(),
            plain_rate,
            mover_rate / plain_rate,
            st.source_digest
        );
        Ok::<(), String>(())
    }
    .await;
    case.cleanup().await;
    result.unwrap();
}

/// Holds the move before its manifests run on `cluster`: a quota of no Pods there (the final
/// copy's Pod is already made when the record says Syncing).
async fn hold_pods(client: &Client, ns: &str) {
    let q: ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "hold"}, "spec": {"hard": {"pods": "0"}}
    }))
    .unwrap();
    Api::<ResourceQuota>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &q)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_byte_changed_on_a_destination_fails_the_move_safe_and_a_retry_moves_the_data() {
    let _one = SERIAL.lock().await;
    let shape = Shape {
        files: 120,
        big_mb: 8,
        mid_mb: 4,
        stop_delay: 1,
    };
    let case = Case::start("dm-corrupt", "WS", &shape).await;
    let result = async {
        case.to_zurich().await;
        // the final copy to zrh-2 is under way: no more Pods there until the byte is changed
        case.wait_move("syncing", |m| phase(m) == Some(Phase::Syncing))
            .await;
        hold_pods(case.member("zrh-2"), &case.ns).await;
        case.wait_move("verifying", |m| phase(m) == Some(Phase::Verifying))
            .await;
        let dir = host_dir(case.member("zrh-2"), &case.ns, &case.claim).await;
        let victim = dir.join("region 3/customer-3/batch 3/sample 3.bin");
        let mut bytes = std::fs::read(&victim).map_err(|e| format!("{}: {e}", victim.display()))?;
        bytes[0] ^= 0xff;
        std::fs::write(&victim, &bytes).map_err(|e| e.to_string())?;
        Api::<ResourceQuota>::namespaced(case.member("zrh-2").clone(), &case.ns)
            .delete("hold", &DeleteParams::default())
            .await
            .map_err(|e| e.to_string())?;

        // recorded Failed first (fences kept), then the source started again and the fences dropped
        let failed = case
            .wait_move("failed and unfenced", |m| {
                phase(m) == Some(Phase::Failed) && m.status.as_ref().is_some_and(|s| !s.fenced)
            })
            .await;
        let st = failed.status.clone().unwrap_or_default();
        let path = format!(
            "{}/region%203/customer-3/batch%203/sample%203.bin",
            case.claim
        );
        if !st.message.contains(&path) || !st.message.contains("zrh-2") {
            return Err(format!(
                "the failure does not name {path} on zrh-2: {}",
                st.message
            ));
        }
        if st.fenced || !st.fences.is_empty() {
            return Err(format!("still fenced: {st:?}"));
        }
        // fail safe, on the members: the source runs again, nothing started on the
        // destinations, nothing deleted
        let rw = case
            .wait(
                "DataVerified False, the source Ready again",
                rules::T,
                |rw| {
                    rules::condition(rw, "DataVerified").is_some_and(|c| c.0 == "False")
                        && rules::placement(rw, "msk-1").is_some_and(|p| p.state == "Evicting")
                },
            )
            .await;
        eventually("msk-1's store runs again", rules::T, || async {
            let pods: Api<Pod> = Api::namespaced(case.member("msk-1").clone(), &case.ns);
            match pods.get_opt(&format!("{}-0", case.name)).await {
                Ok(Some(p))
                    if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") =>
                {
                    Ok(())
                }
                other => Err(format!("{:?}", other.map(|p| p.map(|p| p.status)))),
            }
        })
        .await;
        if case.replicas_on("msk-1").await != Some(1) {
            return Err("msk-1's StatefulSet was not scaled back".into());
        }
        for d in ["zrh-1", "zrh-2"] {
            if case.replicas_on(d).await.is_some() {
                return Err(format!("the workload was started on {d}"));
            }
            if !rules::claims(case.member(d), &case.ns, &case.name)
                .await
                .contains_key(&case.claim)
            {
                return Err(format!("{d}'s copy of the data was deleted"));
            }
            if rules::placement(&rw, d).is_none_or(|p| p.state != "Pending") {
                return Err(format!("{d}: {:?}", rules::placement(&rw, d)));
            }
        }
        if !rules::claims(case.member("msk-1"), &case.ns, &case.name)
            .await
            .contains_key(&case.claim)
        {
            return Err("the source's volume was deleted".into());
        }

        // a person asks again: a new move, and the copy repairs the changed byte
        let api: Api<ResidentWorkload> = Api::namespaced(case.env.mgmt.clone(), &case.ns);
        api.patch(
            &case.name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"residency.io/retry-data-move": failed.name_any()}}
            })),
        )
        .await
        .map_err(|e| e.to_string())?;
        case.wait("Ready on zrh-1 and zrh-2 after the retry", MOVE_T, |rw| {
            rules::ready_on(rw, &["zrh-1", "zrh-2"])
        })
        .await;
        let moves = case.moves().await;
        if moves.len() != 2
            || phase(&moves[1]) != Some(Phase::Succeeded)
            || phase(&moves[0]) != Some(Phase::Failed)
        {
            return Err(format!(
                "moves: {:?}",
                moves.iter().map(phase).collect::<Vec<_>>()
            ));
        }
        let digest = moves[1].status.clone().unwrap_or_default().source_digest;
        let claims = case.claims();
        for c in ["msk-1", "zrh-1", "zrh-2"] {
            let m = manifest_on(case.member(c), &case.ns, &claims, c).await;
            if m.digest() != digest {
                return Err(format!(
                    "{c} holds {} after the retry, the record {digest}",
                    m.digest()
                ));
            }
        }
        eprintln!(
            "data move: a changed byte failed {} safe ({}); the retry {} verified {digest}",
            failed.name_any(),
            st.message,
            moves[1].name_any()
        );
        Ok::<(), String>(())
    }
    .await;
    case.cleanup().await;
    result.unwrap();
}

/// Whether a mover is receiving a file into the host directory `dir` right now.
fn receiving(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(residency_operator::mover::manifest::STAGING_PREFIX)
        })
    })
}

#[tokio::test]
async fn killed_movers_and_a_stopped_destination_api_server_lose_nothing() {
    let _one = SERIAL.lock().await;
    let shape = Shape {
        files: 60,
        big_mb: 150,
        mid_mb: 10,
        stop_delay: 12,
    };
    let case = Case::start("dm-faults", "TV", &shape).await;
    let result = async {
        case.to_zurich().await;
        // kill every mover process while a destination is receiving the big file
        let mut dirs = Vec::new();
        for d in ["zrh-1", "zrh-2"] {
            let client = case.member(d).clone();
            let (ns, claim) = (case.ns.clone(), case.claim.clone());
            dirs.push(
                eventually(&format!("{d}: the claim is bound"), MOVE_T, || async {
                    let pvcs = rules::claims(&client, &ns, "store").await;
                    if !pvcs.contains_key(&claim) {
                        return Err("no claim yet".to_string());
                    }
                    let p = Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), &ns)
                        .get(&claim)
                        .await
                        .map_err(|e| e.to_string())?;
                    if p.spec.and_then(|s| s.volume_name).is_some() {
                        Ok(host_dir(&client, &ns, &claim).await)
                    } else {
                        Err("not bound".into())
                    }
                })
                .await,
            );
        }
        let start = Instant::now();
        while !dirs.iter().any(|d| receiving(d)) {
            if start.elapsed() > MOVE_T {
                return Err("no mover was seen receiving a file".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = std::process::Command::new("pkill")
            .args(["-9", "-f", "residency-operator mover (pull|serve)"])
            .status()
            .map_err(|e| e.to_string())?;
        if !killed.success() {
            return Err("no mover process was killed".into());
        }
        eprintln!("data move: killed the movers mid-copy after {:.2} s", start.elapsed().as_secs_f64());

        // a destination's API server stopped while the writers stop
        case.wait_move("fencing", |m| phase(m) == Some(Phase::Fencing)).await;
        fleet_sh(&["stop", "zrh-1-kube-apiserver"]);
        let down = Instant::now();
        while down.elapsed() < Duration::from_secs(15) {
            let m = case.moves().await.pop().ok_or("no move")?;
            if matches!(phase(&m), Some(Phase::Verifying | Phase::Succeeded | Phase::Failed)) {
                fleet_sh(&["up"]);
                return Err(format!("the move went on without zrh-1: {:?}", m.status));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        fleet_sh(&["up"]);
        let done = case
            .wait_move("succeeded after zrh-1 is back", |m| {
                matches!(phase(m), Some(Phase::Succeeded | Phase::Failed))
            })
            .await;
        let st = done.status.clone().unwrap_or_default();
        if phase(&done) != Some(Phase::Succeeded) {
            return Err(format!("the move failed: {}", st.message));
        }
        if st.restarts == 0 {
            return Err("no mover was started again".into());
        }
        case.wait("Ready on zrh-1 and zrh-2", MOVE_T, |rw| rules::ready_on(rw, &["zrh-1", "zrh-2"]))
            .await;
        let claims = case.claims();
        let src = manifest_on(case.member("msk-1"), &case.ns, &claims, "msk-1").await;
        for d in ["zrh-1", "zrh-2"] {
            let dst = manifest_on(case.member(d), &case.ns, &claims, d).await;
            if dst.digest() != src.digest() || src.digest() != st.source_digest {
                return Err(format!("{d}: {:?}", mover::differences(&src, &dst)));
            }
            if !file(&dst, &format!("{}/journal/last%20words", case.claim)) {
                return Err(format!("{d} lacks the last journal entry"));
            }
        }
        eprintln!(
            "data move: after killed movers ({} started again) and zrh-1's API server stopped for 15 s: verified {} ({} files, {:.1} MB)",
            st.restarts,
            st.source_digest,
            st.files,
            st.bytes as f64 / 1e6
        );
        Ok::<(), String>(())
    }
    .await;
    case.cleanup().await;
    result.unwrap();
}
