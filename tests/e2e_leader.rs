//! Leader election on the local fleet with real operator processes: only the Lease holder
//! reconciles and writes; when it is killed another replica takes over; on SIGTERM the leader
//! hands the Lease over at once; a leader stopped for longer than its Lease writes nothing when
//! it runs again; a leader killed in the middle of a relocation loses nothing; a policy edit
//! that moves several workloads proceeds in waves of `--max-relocations`. These tests run their
//! own operator processes and take turns (they share the Lease).

mod common;

use std::time::{Duration, Instant};

use common::operator::{self, OPERATOR_NS};
use common::rules::{
    T, apply_workload, assert_retained, claims, condition, first_write, namespace, placement,
    policy, processing, ready_on, storage, wait_claims, wait_workload,
};
use common::{Fleet, apply_path, audit_mark, audit_writes_since, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::DeleteParams;
use residency_operator::api::ResidentWorkload;
use serde_json::json;
use tokio::process::{Child, Command};

/// The tests share the Lease: one at a time.
static LEASE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Replica {
    identity: String,
    child: Child,
    http: String,
}

fn start(fleet: &Fleet, identity: &str) -> Replica {
    let (child, port, _) = operator::spawn(
        fleet,
        &format!("leader-{identity}"),
        &["--leader-elect", "--identity", identity],
    );
    Replica {
        identity: identity.to_string(),
        child,
        http: format!("http://127.0.0.1:{port}"),
    }
}

async fn get(url: &str) -> String {
    let o = Command::new("curl")
        .args(["-fsS", url])
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Reconciliations the replica ran (0 when the metric is absent).
async fn reconciliations(r: &Replica) -> u64 {
    get(&format!("{}/metrics", r.http))
        .await
        .lines()
        .filter(|l| l.starts_with("residency_reconciliations_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn holder(leases: &Api<Lease>) -> Result<String, String> {
    let lease = leases
        .get_opt("residency-operator")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no lease yet")?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| "nobody holds the lease".to_string())
}

/// Successful writes to the management cluster by a replica, from the audit log (a lost race
/// for the Lease is a refused write, 409, and does not count).
fn writes_by(identity: &str) -> Option<usize> {
    let dir = std::env::var("RESIDENCY_FLEET_DIR").ok()?;
    let log = std::fs::read_to_string(format!("{dir}/logs/mgmt-audit.log")).ok()?;
    let agent = format!("({identity})\"");
    Some(
        log.lines()
            .filter(|l| l.contains(&agent))
            .filter(|l| l.contains("\"code\":200") || l.contains("\"code\":201"))
            .count(),
    )
}

#[tokio::test]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let _turn = LEASE_LOCK.lock().await;
    let fleet = Fleet::from_env();
    let mgmt = fleet.mgmt_client().await;
    operator::install_crds(&mgmt).await;
    operator::member_secrets(&fleet, &mgmt).await;
    let leases: Api<Lease> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    let suffix = std::process::id();
    let a = start(&fleet, &format!("replica-a-{suffix}"));
    let b = start(&fleet, &format!("replica-b-{suffix}"));
    let first = eventually("a leader", Duration::from_secs(60), || async {
        let h = holder(&leases).await?;
        if h == a.identity || h == b.identity {
            Ok(h)
        } else {
            Err(format!("held by {h} (an earlier run's replica?)"))
        }
    })
    .await;
    let (mut leader, follower) = if first == a.identity { (a, b) } else { (b, a) };
    eprintln!(
        "leader: {}, follower: {}",
        leader.identity, follower.identity
    );

    // work for the operator: the member clusters get probed and their status written
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    eventually("the leader reconciles", Duration::from_secs(30), || async {
        if reconciliations(&leader).await > 0 {
            Ok(())
        } else {
            Err("no reconciliation yet".to_string())
        }
    })
    .await;
    assert_eq!(get(&format!("{}/readyz", follower.http)).await, "standby");
    assert_eq!(
        reconciliations(&follower).await,
        0,
        "the follower must not reconcile"
    );
    if let (Some(l), Some(f)) = (writes_by(&leader.identity), writes_by(&follower.identity)) {
        eprintln!("writes to mgmt: leader {l}, follower {f}");
        assert!(l > 0, "the leader writes (status, lease)");
        assert_eq!(f, 0, "the follower wrote to the management cluster");
    }

    // the leader dies without releasing the lease: the follower takes over when it expires
    let killed = Instant::now();
    leader.child.start_kill().unwrap();
    let _ = leader.child.wait().await;
    eventually("the follower leads", Duration::from_secs(40), || async {
        let h = holder(&leases).await?;
        if h == follower.identity {
            Ok(())
        } else {
            Err(format!("held by {h}"))
        }
    })
    .await;
    let failover = killed.elapsed();
    eprintln!("failover after kill -9: {failover:?} (lease duration 15 s)");
    eventually(
        "the new leader reconciles",
        Duration::from_secs(30),
        || async {
            if reconciliations(&follower).await > 0 {
                Ok(())
            } else {
                Err("no reconciliation yet".to_string())
            }
        },
    )
    .await;

    // graceful hand-over: SIGTERM releases the lease
    let c = start(&fleet, &format!("replica-c-{suffix}"));
    eventually("c stands by", Duration::from_secs(30), || async {
        if get(&format!("{}/readyz", c.http)).await == "standby" {
            Ok(())
        } else {
            Err("not up".to_string())
        }
    })
    .await;
    let mut leader = follower;
    // `wait` closes the child's stdin, which (with --exit-on-stdin-close) would end it before
    // it handles SIGTERM: keep stdin open
    let _stdin = leader.child.stdin.take();
    let pid = leader.child.id().expect("pid");
    let term = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), leader.child.wait())
        .await
        .expect("the leader exits on SIGTERM")
        .unwrap();
    assert!(exit.success(), "graceful shutdown exits 0: {exit:?}");
    eventually("c leads", Duration::from_secs(20), || async {
        let h = holder(&leases).await?;
        if h == c.identity {
            Ok(())
        } else {
            Err(format!("held by {h}"))
        }
    })
    .await;
    let handover = term.elapsed();
    eprintln!("hand-over after SIGTERM: {handover:?}");
    assert!(
        handover < Duration::from_secs(10),
        "a released lease is taken without waiting for expiry: {handover:?}"
    );
    drop(c);
}

/// What the tests that run their own operators need: the CRDs, the member Secrets and the seed
/// clusters on the management cluster, and the Lease's API.
async fn own_operators_setup() -> (Fleet, kube::Client, Api<Lease>) {
    let fleet = Fleet::from_env();
    let mgmt = fleet.mgmt_client().await;
    operator::install_crds(&mgmt).await;
    operator::member_secrets(&fleet, &mgmt).await;
    apply_path(&mgmt, "examples/seed/10-clusters.yaml").await;
    let leases: Api<Lease> = Api::namespaced(mgmt.clone(), OPERATOR_NS);
    (fleet, mgmt, leases)
}

/// Starts two replicas and waits until one leads; returns (leader, follower).
async fn pair(fleet: &Fleet, leases: &Api<Lease>, tag: &str) -> (Replica, Replica) {
    let suffix = std::process::id();
    let a = start(fleet, &format!("{tag}-a-{suffix}"));
    let b = start(fleet, &format!("{tag}-b-{suffix}"));
    let first = eventually("a leader", Duration::from_secs(60), || async {
        let h = holder(leases).await?;
        if h == a.identity || h == b.identity {
            Ok(h)
        } else {
            Err(format!("held by {h}"))
        }
    })
    .await;
    if first == a.identity { (a, b) } else { (b, a) }
}

async fn wait_holder(leases: &Api<Lease>, identity: &str) {
    eventually(
        &format!("{identity} leads"),
        Duration::from_secs(40),
        || async {
            let h = holder(leases).await?;
            if h == identity {
                Ok(())
            } else {
                Err(format!("held by {h}"))
            }
        },
    )
    .await;
}

async fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test]
async fn a_leader_stopped_past_its_lease_writes_nothing_when_it_resumes() {
    let _turn = LEASE_LOCK.lock().await;
    let (fleet, mgmt, leases) = own_operators_setup().await;
    let (mut leader, follower) = pair(&fleet, &leases, "fence").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    let ns = "leader-fence";
    namespace(&mgmt, ns).await;
    policy(
        &mgmt,
        "marshall-zurich",
        &["MH"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let workload = |value: &str| {
        json!({"apiVersion": "residency.io/v1alpha1", "kind": "ResidentWorkload",
            "metadata": {"name": "marshall", "namespace": ns},
            "spec": {"role": "Processing", "countries": ["MH"], "manifests": [
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "marshall"}, "data": {"v": value}}]}})
    };
    apply_workload(&mgmt, &workload("1")).await.unwrap();
    wait_workload(&mgmt, ns, "marshall", "Ready on Zurich", |rw| {
        ready_on(rw, &["zrh-1", "zrh-2"])
    })
    .await;

    // the leader freezes (SIGSTOP) for longer than the Lease; the follower takes over
    let _stdin = leader.child.stdin.take();
    let pid = leader.child.id().expect("pid");
    signal(pid, "-STOP").await;
    let stopped = Instant::now();
    wait_holder(&leases, &follower.identity).await;
    eprintln!("follower took over {:?} after SIGSTOP", stopped.elapsed());
    // work that the frozen leader also has pending: a spec change it will see when it resumes
    apply_workload(&mgmt, &workload("2")).await.unwrap();
    let zrh1 = fleet.member("zrh-1").await;
    eventually("the new leader applied the change", T, || async {
        let cm = Api::<ConfigMap>::namespaced(zrh1.clone(), ns)
            .get("marshall")
            .await
            .map_err(|e| e.to_string())?;
        match cm.data.and_then(|d| d.get("v").cloned()).as_deref() {
            Some("2") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(
        20u64.saturating_sub(stopped.elapsed().as_secs()),
    ))
    .await;

    // it resumes: it must notice it cannot prove it leads, write nothing, and exit
    let marks: Vec<_> = ["mgmt", "zrh-1", "zrh-2", "msk-1"]
        .iter()
        .map(|c| (*c, audit_mark(c)))
        .collect();
    signal(pid, "-CONT").await;
    let resumed = Instant::now();
    let exit = tokio::time::timeout(Duration::from_secs(30), leader.child.wait())
        .await
        .expect("the stale leader exits")
        .unwrap();
    eprintln!(
        "stale leader exited {:?} after SIGCONT ({exit:?})",
        resumed.elapsed()
    );
    assert!(!exit.success(), "losing the lease is an error exit");
    let agent = format!("({})", leader.identity);
    for (cluster, mark) in &marks {
        let Some(mark) = mark else { continue };
        let writes: Vec<_> = audit_writes_since(mark)
            .await
            .into_iter()
            .filter(|w| w.user_agent.contains(&agent))
            .collect();
        assert!(
            writes.is_empty(),
            "{cluster}: the stale leader sent writes after it resumed: {writes:?}"
        );
    }
    assert_eq!(holder(&leases).await.unwrap(), follower.identity);
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    common::operator::delete_and_wait(&api, "marshall", T).await;
    let _ = Api::<residency_operator::api::ResidencyPolicy>::all(mgmt.clone())
        .delete("marshall-zurich", &DeleteParams::default())
        .await;
    drop(follower);
}

#[tokio::test]
async fn a_leader_killed_mid_apply_and_mid_eviction_loses_and_duplicates_nothing() {
    let _turn = LEASE_LOCK.lock().await;
    let (fleet, mgmt, leases) = own_operators_setup().await;
    let (mut leader, follower) = pair(&fleet, &leases, "kill").await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    let ns = "leader-kill";
    namespace(&mgmt, ns).await;
    let moscow = json!([{"country": "RU", "region": "moscow"}]);
    policy(&mgmt, "fiji", &["FJ"], moscow, "Enforce").await;
    apply_workload(&mgmt, &storage(ns, "fiji", &["FJ"], None))
        .await
        .unwrap();
    wait_workload(&mgmt, ns, "fiji", "Ready on msk-1", |rw| {
        ready_on(rw, &["msk-1"])
    })
    .await;
    let msk1 = fleet.member("msk-1").await;
    let on_msk = wait_claims(&msk1, ns, "fiji", 2).await;

    // the relocation starts; the leader is killed right after its first write to a target
    let zrh1 = fleet.member("zrh-1").await;
    let zrh2 = fleet.member("zrh-2").await;
    policy(
        &mgmt,
        "fiji",
        &["FJ"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    // the first write of a relocation is the namespace on a target
    let first_write = first_write(&[&zrh1, &zrh2], ns).await;
    leader.child.start_kill().unwrap();
    let _ = leader.child.wait().await;
    let rw = Api::<ResidentWorkload>::namespaced(mgmt.clone(), ns)
        .get("fiji")
        .await
        .unwrap();
    eprintln!(
        "killed the leader {:?} after its first Zurich write; record then: {:?}",
        first_write.elapsed(),
        rw.status.map(|s| s
            .placements
            .iter()
            .map(|p| (p.cluster.clone(), p.state.clone()))
            .collect::<Vec<_>>())
    );
    let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(msk1.clone(), ns);
    assert!(
        sts.get_opt("fiji").await.unwrap().is_some(),
        "killed mid-relocation: the msk-1 copy was not removed yet"
    );

    // the follower takes over and finishes the relocation from what is there
    let killed = Instant::now();
    wait_holder(&leases, &follower.identity).await;
    wait_workload(
        &mgmt,
        ns,
        "fiji",
        "relocated to Zurich, msk-1 retained",
        |rw| {
            ready_on(rw, &["zrh-1", "zrh-2"])
                && placement(rw, "msk-1").is_some_and(|p| p.state == "Retained")
        },
    )
    .await;
    eprintln!("relocation finished {:?} after the kill", killed.elapsed());
    let pairs = common::report_agrees_with_members(
        &fleet,
        &["zrh-1", "zrh-2", "msk-1"],
        "after the kill mid-apply",
    )
    .await;
    eprintln!("report and members agree on {pairs} (country, cluster) pairs");
    assert_retained(&msk1, ns, "fiji", &on_msk).await;
    for m in [&zrh1, &zrh2] {
        let c = wait_claims(m, ns, "fiji", 2).await;
        assert!(c.values().all(|r| !r), "{c:?}");
    }
    // one copy of each object per target: the StatefulSet's Pods were not doubled
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(zrh1.clone(), ns)
        .list(&kube::api::ListParams::default().labels("residency.io/workload=fiji"))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(pods, 1, "one Pod of the one-replica StatefulSet on zrh-1");

    // back to msk-1, and the leader is killed in the middle of the eviction from Zurich
    let mut leader = follower;
    let follower = start(&fleet, &format!("kill-c-{}", std::process::id()));
    eventually("c stands by", Duration::from_secs(30), || async {
        if get(&format!("{}/readyz", follower.http)).await == "standby" {
            Ok(())
        } else {
            Err("not up".to_string())
        }
    })
    .await;
    policy(
        &mgmt,
        "fiji",
        &["FJ"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    let started = Instant::now();
    loop {
        // the eviction's first writes label the claims retained, before anything is deleted
        let labelled = claims(&zrh1, ns, "fiji").await.values().any(|r| *r)
            || claims(&zrh2, ns, "fiji").await.values().any(|r| *r);
        if labelled {
            break;
        }
        assert!(
            started.elapsed() < T,
            "no eviction from Zurich within {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader.child.start_kill().unwrap();
    let _ = leader.child.wait().await;
    let killed = Instant::now();
    wait_holder(&leases, &follower.identity).await;
    wait_workload(&mgmt, ns, "fiji", "back on msk-1, Zurich retained", |rw| {
        ready_on(rw, &["msk-1"])
            && ["zrh-1", "zrh-2"]
                .iter()
                .all(|c| placement(rw, c).is_some_and(|p| p.state == "Retained"))
    })
    .await;
    eprintln!("eviction finished {:?} after the kill", killed.elapsed());
    common::report_agrees_with_members(
        &fleet,
        &["zrh-1", "zrh-2", "msk-1"],
        "after the kill mid-eviction",
    )
    .await;
    let back = claims(&msk1, ns, "fiji").await;
    assert_eq!(
        back.keys().collect::<Vec<_>>(),
        on_msk.keys().collect::<Vec<_>>(),
        "msk-1 uses its own claims again"
    );
    assert!(back.values().all(|r| !r), "taken back into use: {back:?}");
    for m in [&zrh1, &zrh2] {
        let c = claims(m, ns, "fiji").await;
        assert_eq!(c.len(), 2, "Zurich claims kept: {c:?}");
        assert!(c.values().all(|r| *r), "{c:?}");
        let sts = Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(m.clone(), ns);
        assert!(sts.get_opt("fiji").await.unwrap().is_none(), "evicted");
    }
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    common::operator::delete_and_wait(&api, "fiji", T).await;
    let _ = Api::<residency_operator::api::ResidencyPolicy>::all(mgmt.clone())
        .delete("fiji", &DeleteParams::default())
        .await;
    for m in [&zrh1, &zrh2, &msk1] {
        let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(m.clone())
            .delete(ns, &DeleteParams::default())
            .await;
    }
    drop(follower);
}

#[tokio::test]
async fn a_policy_edit_that_moves_many_workloads_proceeds_in_waves() {
    let _turn = LEASE_LOCK.lock().await;
    let (fleet, mgmt, leases) = own_operators_setup().await;
    let identity = format!("waves-{}", std::process::id());
    let (_child, _, _) = operator::spawn(
        &fleet,
        &format!("leader-{identity}"),
        &[
            "--leader-elect",
            "--identity",
            &identity,
            "--max-relocations",
            "1",
        ],
    );
    wait_holder(&leases, &identity).await;
    common::clusters_verified(&mgmt, &["zrh-1", "zrh-2", "msk-1"]).await;
    let ns = "leader-waves";
    namespace(&mgmt, ns).await;
    let names = ["solomon-1", "solomon-2", "solomon-3"];
    policy(
        &mgmt,
        "solomon",
        &["SB"],
        json!([{"country": "RU", "region": "moscow"}]),
        "Enforce",
    )
    .await;
    for n in names {
        apply_workload(&mgmt, &processing(ns, n, &["SB"]))
            .await
            .unwrap();
    }
    for n in names {
        wait_workload(&mgmt, ns, n, "Ready on msk-1", |rw| {
            ready_on(rw, &["msk-1"])
        })
        .await;
    }

    let edit = Instant::now();
    policy(
        &mgmt,
        "solomon",
        &["SB"],
        json!([{"country": "CH", "region": "zurich"}]),
        "Enforce",
    )
    .await;
    let api: Api<ResidentWorkload> = Api::namespaced(mgmt.clone(), ns);
    let (mut most_in_flight, mut queued_seen) = (0, false);
    loop {
        let list = api.list(&Default::default()).await.unwrap().items;
        // relocating: a copy on msk-1 and on a new target at once
        let in_flight = list
            .iter()
            .filter(|rw| {
                let p = rw
                    .status
                    .as_ref()
                    .map(|s| s.placements.clone())
                    .unwrap_or_default();
                p.iter().any(|p| p.cluster == "msk-1") && p.iter().any(|p| p.cluster != "msk-1")
            })
            .count();
        most_in_flight = most_in_flight.max(in_flight);
        queued_seen |= list.iter().any(|rw| {
            condition(rw, "Reconciling").is_some_and(|c| c.0 == "True" && c.1 == "RelocationQueued")
        });
        if list.len() == names.len() && list.iter().all(|rw| ready_on(rw, &["zrh-1", "zrh-2"])) {
            break;
        }
        assert!(edit.elapsed() < T, "not relocated within {T:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "3 workloads relocated in {:?} with --max-relocations 1 (at most {most_in_flight} in flight)",
        edit.elapsed()
    );
    assert_eq!(most_in_flight, 1, "more than one relocation in flight");
    assert!(queued_seen, "no workload waited with RelocationQueued");
    for n in names {
        common::operator::delete_and_wait(&api, n, T).await;
    }
    let _ = Api::<residency_operator::api::ResidencyPolicy>::all(mgmt.clone())
        .delete("solomon", &DeleteParams::default())
        .await;
}
