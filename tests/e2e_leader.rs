//! Leader election on the local fleet with real operator processes: only the Lease holder
//! reconciles and writes; when it is killed another replica takes over; on SIGTERM the leader
//! hands the Lease over at once.

mod common;

use std::time::{Duration, Instant};

use common::operator::{self, OPERATOR_NS};
use common::{Fleet, apply_path, eventually};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::process::{Child, Command};

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
