//! The fleet's real nodes (tests/testenv/nodes.sh): on every member a Pod from a locally built
//! image runs a real process - its logs and `kubectl exec` work, a file it writes to its volume
//! (a directory on the host) is still there after the Pod is deleted and made again - Pods of
//! different members talk over TCP, nothing reaches an address outside the fleet, and a Pod
//! whose image is missing fails with a message naming the image.

mod common;

use std::time::Duration;

use common::real::{self, TEST_IMAGE};
use common::{Fleet, eventually, unique};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::json;

const T: Duration = Duration::from_secs(120);

/// The writer's script: appends `token` to its volume, prints the whole file, serves HTTP.
fn writer_script(token: &str) -> String {
    format!(
        "echo {token} >> /data/log && /bin/busybox cat /data/log && mkdir -p /data/www && \
         echo served-by-$(/bin/busybox hostname) > /data/www/index.html && \
         exec /bin/busybox httpd -f -p 8080 -h /data/www"
    )
}

async fn make_writer(pods: &Api<Pod>, token: &str) -> Result<Pod, String> {
    let body: Pod = serde_json::from_value(real::pod(
        "writer",
        TEST_IMAGE,
        &writer_script(token),
        &[("data", "/data")],
    ))
    .unwrap();
    pods.create(&PostParams::default(), &body)
        .await
        .map_err(|e| format!("create writer: {e}"))?;
    real::running(pods, "writer", T).await
}

async fn logs(pods: &Api<Pod>) -> String {
    eventually("the writer's log", T, || async {
        let l = pods
            .logs("writer", &LogParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if l.is_empty() {
            Err("no output yet".to_string())
        } else {
            Ok(l)
        }
    })
    .await
}

/// One member: a Pod writes to a real volume, the file outlives the Pod; returns the Pod's IP.
async fn a_real_pod_keeps_its_file(
    client: Client,
    context: &str,
    ns: &str,
) -> Result<String, String> {
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .map_err(|e| format!("{context}: namespace: {e}"))?;
    real::claim(&client, ns, "data")
        .await
        .map_err(|e| format!("{context}: {e}"))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let first = unique(&format!("{context}-first"));
    let pod = make_writer(&pods, &first)
        .await
        .map_err(|e| format!("{context}: {e}"))?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node != format!("{context}-real") {
        return Err(format!(
            "{context}: the writer runs on {node}, not on the real node"
        ));
    }
    let out = logs(&pods).await;
    if !out.contains(&first) {
        return Err(format!("{context}: the writer's log lacks {first}: {out}"));
    }
    let read = real::exec(context, ns, "writer", &["/bin/busybox", "cat", "/data/log"]).await?;
    if !read.contains(&first) {
        return Err(format!("{context}: exec read {read:?}, not {first}"));
    }
    // deleted and made again: the file is still there
    pods.delete("writer", &DeleteParams::default())
        .await
        .map_err(|e| format!("{context}: delete: {e}"))?;
    eventually(&format!("{context}: writer gone"), T, || async {
        match pods.get_opt("writer").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.is_some()))),
        }
    })
    .await;
    let second = unique(&format!("{context}-second"));
    let pod = make_writer(&pods, &second)
        .await
        .map_err(|e| format!("{context}: again: {e}"))?;
    let out = logs(&pods).await;
    let (a, b) = (out.find(&first), out.find(&second));
    if !matches!((a, b), (Some(a), Some(b)) if a < b) {
        return Err(format!(
            "{context}: after the Pod was made again the file holds {out:?}"
        ));
    }
    pod.status
        .and_then(|s| s.pod_ip)
        .ok_or_else(|| format!("{context}: the writer has no IP"))
}

async fn cleanup(client: Client, ns: &str) {
    real::release(client, ns, &["data"]).await;
}

#[tokio::test]
async fn real_pods_run_keep_their_files_and_talk_across_members() {
    let fleet = Fleet::from_env();
    let ns = unique("real");
    let mut clients = Vec::new();
    for m in &fleet.members {
        clients.push((m.context.clone(), fleet.client(&m.context).await));
    }
    let results = futures::future::join_all(
        clients
            .iter()
            .map(|(c, client)| a_real_pod_keeps_its_file(client.clone(), c, &ns)),
    )
    .await;
    let mut ips = Vec::new();
    let mut failures = Vec::new();
    for ((c, _), r) in clients.iter().zip(results) {
        match r {
            Ok(ip) => ips.push((c.clone(), ip)),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        // every member's Pod reaches every other member's Pod over TCP
        for (from, _) in &ips {
            for (to, ip) in ips.iter().filter(|(t, _)| t != from) {
                let got = real::exec(
                    from,
                    &ns,
                    "writer",
                    &[
                        "/bin/busybox",
                        "sh",
                        "-c",
                        &format!(
                            "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w 5 {ip} 8080"
                        ),
                    ],
                )
                .await;
                match got {
                    Ok(body) if body.contains("served-by-writer") => {}
                    other => failures.push(format!("{from} -> {to} ({ip}:8080): {other:?}")),
                }
            }
        }
        // an address outside the fleet is unreachable from a Pod: refused locally, nothing sent
        let (from, _) = &ips[0];
        match real::exec(
            from,
            &ns,
            "writer",
            &["/bin/busybox", "nc", "-w", "2", "192.0.2.1", "80"],
        )
        .await
        {
            Err(e) if e.contains("unreachable") => {}
            other => failures.push(format!(
                "{from}: a Pod reached outside the fleet: {other:?}"
            )),
        }
        // a Pod whose image is not on the node fails, naming the image, and is not pulled
        let (c, client) = &clients[0];
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let missing = "residency.local/missing:1";
        let body: Pod = serde_json::from_value(real::pod("missing", missing, "true", &[])).unwrap();
        pods.create(&PostParams::default(), &body).await.unwrap();
        match real::running(&pods, "missing", T).await {
            Err(e) if e.contains(missing) && e.contains("ErrImageNeverPull") => {
                eprintln!("{c}: {e}")
            }
            other => failures.push(format!("{c}: a missing image gave {other:?}")),
        }
    }
    eprintln!("real pods: {} members, pod IPs {ips:?}", clients.len());
    futures::future::join_all(
        clients
            .iter()
            .map(|(_, client)| cleanup(client.clone(), &ns)),
    )
    .await;
    assert!(failures.is_empty(), "real nodes:\n{}", failures.join("\n"));
    assert_eq!(ips.len(), fleet.members.len());
}
