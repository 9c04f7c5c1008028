#!/usr/bin/env bash
# A local fleet of real Kubernetes control planes on loopback, built from upstream Go modules.
#
#   tests/testenv/fleet.sh up       build or reuse the binaries, start the fleet (idempotent)
#   tests/testenv/fleet.sh down     stop exactly the processes this script started; remove state
#   tests/testenv/fleet.sh status   list components with pid and resident memory, and the total
#   tests/testenv/fleet.sh env      print the environment the tests read (eval "$(... env)")
#   tests/testenv/fleet.sh stop ID  stop one component (e.g. msk-1-kube-apiserver); `up` restarts it
#
# Topology (DESIGN.md section 6): one shared etcd (one key prefix per cluster; in the split
# layout the management cluster has its own), and
#   mgmt    management cluster: kube-apiserver, controller-manager, scheduler (CRDs, the
#           operator's own objects, and its Pods on mgmt's real node)
#   zrh-1   CH/zurich member, nodes in region eu-central-2 (zones eu-central-2a, eu-central-2b)
#   zrh-2   CH/zurich member, same region
#   msk-1   RU/moscow member, nodes in region ru-central-1
# Every member also runs kube-controller-manager, kube-scheduler and kwok with two fake nodes, a
# default StorageClass `standard` and pre-created PersistentVolumes pinned to a fake node by
# hostname (as kind's local-path volumes are), so Deployments and StatefulSets get Running Pods and PVCs bind; and one real
# node (tests/testenv/nodes.sh: kubelet, containerd, CNI) where Pods that tolerate its taint
# really run, with real volumes (StorageClass `real-local`).
#
# Settings (environment):
#   RESIDENCY_FLEET_DIR        state directory (default ${TMPDIR:-/tmp}/residency-fleet)
#   RESIDENCY_FLEET_PORT_BASE  first port (default 17400): etcd uses BASE and BASE+1,
#                              the apiservers BASE+10, BASE+11, ... in fleet order
#   RESIDENCY_FLEET_PVS        pre-created PersistentVolumes per member (default 40)
#   RESIDENCY_FLEET_TIMEOUT    seconds to wait for each component (default 120)
#   RESIDENCY_FLEET_REAL_NODES 0: no real nodes (default 1: one per member, see nodes.sh)
#   RESIDENCY_FLEET_WATCH_CACHE 1: the API servers keep their watch cache, as in production
#                              (default 0: every read and watch goes to etcd, see start_apiserver);
#                              fixed when the fleet is first started, kept by `up` after `stop`
#   RESIDENCY_FLEET_SPLIT_CPUS 1: as deployed: the management cluster, with an etcd of its own,
#                              on the last CPU, the members and their etcd on the others
#                              (default 0: all share every CPU and one etcd; see cpus_of in
#                              lib.sh); fixed like the watch cache
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
PVS="${RESIDENCY_FLEET_PVS:-40}"
REAL_NODES="${RESIDENCY_FLEET_REAL_NODES:-1}"
KUBECONFIG_OUT="$STATE/kubeconfig"

# name role country region  (role: mgmt = apiserver only; member = full control plane + kwok)
FLEET=(
  "mgmt   mgmt   -  -"
  "zrh-1  member CH eu-central-2"
  "zrh-2  member CH eu-central-2"
  "msk-1  member RU ru-central-1"
)

log() { printf '[fleet %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# PKI: one CA per cluster (ECDSA P-256), a serving cert for 127.0.0.1, an admin client cert
# (O=system:masters) and a service-account signing key.

gen_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

pki() {
  local name="$1" d="$STATE/pki/$1"
  [[ -f "$d/.complete" ]] && return 0
  mkdir -p "$d"
  gen_key "$d/ca.key"
  openssl req -x509 -new -key "$d/ca.key" -days 3650 -subj "/CN=residency-fleet-$name-ca" \
    -out "$d/ca.crt" 2>/dev/null
  gen_key "$d/apiserver.key"
  openssl req -new -key "$d/apiserver.key" -subj "/CN=kube-apiserver" -out "$d/apiserver.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:%s,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' "$POD_HOST_IP" >"$d/apiserver.ext"
  openssl x509 -req -in "$d/apiserver.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/apiserver.ext" -out "$d/apiserver.crt" 2>/dev/null
  gen_key "$d/admin.key"
  openssl req -new -key "$d/admin.key" -subj "/O=system:masters/CN=fleet-admin" -out "$d/admin.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$d/admin.ext"
  openssl x509 -req -in "$d/admin.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 3650 -extfile "$d/admin.ext" -out "$d/admin.crt" 2>/dev/null
  gen_key "$d/sa.key"
  openssl pkey -in "$d/sa.key" -pubout -out "$d/sa.pub" 2>/dev/null
  touch "$d/.complete"
}

b64() { base64 -w0 <"$1"; }

# kubeconfig_entry NAME PORT: the cluster/user/context of one cluster (admin credentials)
write_kubeconfigs() {
  local i=0 clusters="" users="" contexts="" name role country region
  for row in "${FLEET[@]}"; do
    read -r name role country region <<<"$row"
    local port=$((PORT_BASE + 10 + i)) d="$STATE/pki/$name"
    clusters+="- name: $name
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority-data: $(b64 "$d/ca.crt")
"
    users+="- name: $name-admin
  user:
    client-certificate-data: $(b64 "$d/admin.crt")
    client-key-data: $(b64 "$d/admin.key")
"
    contexts+="- name: $name
  context:
    cluster: $name
    user: $name-admin
"
    # one single-context kubeconfig per cluster for its own components
    cat >"$STATE/kubeconfigs/$name.yaml" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: $name
  cluster:
    server: https://127.0.0.1:$port
    certificate-authority: $d/ca.crt
users:
- name: admin
  user:
    client-certificate: $d/admin.crt
    client-key: $d/admin.key
contexts:
- name: $name
  context: {cluster: $name, user: admin}
current-context: $name
EOF
    i=$((i + 1))
  done
  umask 077
  cat >"$KUBECONFIG_OUT.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
${clusters}users:
${users}contexts:
${contexts}current-context: mgmt
EOF
  mv "$KUBECONFIG_OUT.tmp" "$KUBECONFIG_OUT"
}

# ---------------------------------------------------------------------------------------------
# components

kc() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfigs/$1.yaml" "${@:2}"; }

# start_etcd [ID CLIENT_PORT]: the fleet's etcd (one key prefix per cluster), or with ID a second
# one (the management cluster's own, in the split layout)
start_etcd() {
  local id="${1:-etcd}" port="${2:-$PORT_BASE}"
  mkdir -p "$STATE/$id"
  start "$id" "$BIN/etcd" --name fleet --data-dir "$STATE/$id/data" \
    --listen-client-urls "http://127.0.0.1:$port" --advertise-client-urls "http://127.0.0.1:$port" \
    --listen-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 1))" \
    --initial-cluster "fleet=http://127.0.0.1:$((port + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
  wait_until "$id" "healthy" curl -fsS "http://127.0.0.1:$port/health"
}

# The etcd port of cluster NAME: the shared etcd's, or in the split layout (as deployed) the
# management cluster's own etcd's, so that its writes take none of the members' CPU either
etcd_port() {
  if [[ "$1" == mgmt && -n "$(split_cpus)" ]]; then echo $((PORT_BASE + 2)); else echo "$PORT_BASE"; fi
}

start_apiserver() {
  local name="$1" port="$2" d="$STATE/pki/$1" admission=(--disable-admission-plugins ServiceAccount)
  local cache=(--watch-cache=false)
  [[ "$(watch_cache)" == 1 ]] && cache=()
  # the operator runs in-cluster on mgmt: its Pods get a service-account token there
  [[ "$name" == mgmt ]] && admission=()
  mkdir -p "$STATE/certs/$name"
  start "$name-kube-apiserver" "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$(etcd_port "$name")" --etcd-prefix "/fleet/$name" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" \
    --cert-dir "$STATE/certs/$name" --tls-cert-file "$d/apiserver.crt" --tls-private-key-file "$d/apiserver.key" \
    --client-ca-file "$d/ca.crt" --authorization-mode RBAC \
    --service-account-issuer "https://127.0.0.1:$port" --service-account-key-file "$d/sa.pub" \
    --service-account-signing-key-file "$d/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true --kubelet-preferred-address-types InternalIP \
    "${admission[@]}" --profiling=false --v=0 "${cache[@]}" \
    --audit-policy-file "$STATE/audit-policy.yaml" --audit-log-path "$STATE/logs/$name-audit.log" \
    --audit-log-format json --audit-log-maxsize 100
}

# --watch-cache=false: every read is a quorum read from etcd. Four apiservers share one etcd
# here, and tests compare what different clients read at nearly the same moment; reads served
# from the watch cache were seen to lag behind in that setup. The price: every watch is its own
# etcd watch, decoded for each watcher. Production API servers keep the cache, and so does a
# fleet started with RESIDENCY_FLEET_WATCH_CACHE=1 (the scale benchmark's): watches there cost
# what they cost in production.
#
# The choice is made when the fleet is first started and kept in its state, so a component
# stopped and started again (`stop`, `up`) runs as before.
watch_cache() {
  local f="$STATE/watch-cache"
  if [[ -f "$f" ]]; then cat "$f"; else echo "${RESIDENCY_FLEET_WATCH_CACHE:-0}"; fi
}
#
# Audit log of every write (create, update, patch, delete) at Metadata level: who wrote what,
# with its user agent. Benchmarks count the operator's writes from it.
write_audit_policy() {
  cat >"$STATE/audit-policy.yaml" <<EOF
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF
}

wait_apiserver() {
  local name="$1" port="$2" d="$STATE/pki/$1"
  wait_until "$name-kube-apiserver" "ready" curl -fsS --cacert "$d/ca.crt" --cert "$d/admin.crt" \
    --key "$d/admin.key" "https://127.0.0.1:$port/readyz"
}

# controllers and scheduler: on every cluster (mgmt too, for the operator's own Pods)
start_controllers() {
  local name="$1" d="$STATE/pki/$1" kcfg="$STATE/kubeconfigs/$1.yaml"
  start "$name-kube-controller-manager" "$BIN/kube-controller-manager" --kubeconfig "$kcfg" \
    --leader-elect=false --secure-port 0 --service-account-private-key-file "$d/sa.key" \
    --root-ca-file "$d/ca.crt" --use-service-account-credentials=false \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller' \
    --concurrent-deployment-syncs 10 --concurrent-statefulset-syncs 10 --v=0 --profiling=false \
    --kube-api-qps 200 --kube-api-burst 400
  start "$name-kube-scheduler" "$BIN/kube-scheduler" --kubeconfig "$kcfg" \
    --leader-elect=false --secure-port 0 --profiling=false --v=0
}

start_kwok() {
  local name="$1" kcfg="$STATE/kubeconfigs/$1.yaml"
  local cfg="$STATE/kwok/$name.yaml"
  mkdir -p "$STATE/kwok"
  {
    cat <<EOF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokConfiguration
options:
  manageAllNodes: false
  manageNodesWithLabelSelector: type=kwok
  cidr: 10.200.0.1/16
  nodeIP: 10.201.0.1
  podPlayStageParallelism: 4
  nodePlayStageParallelism: 4
  nodeLeaseParallelism: 4
  nodeLeaseDurationSeconds: 40
  podsOnNodeSyncParallelism: 1
  enablePodsOnNodeSyncListPager: true
  enablePodsOnNodeSyncStreamWatch: true
EOF
    local s
    for s in "$CACHE/kwok-stages-$KWOK_VERSION"/*.yaml; do echo "---"; cat "$s"; done
  } >"$cfg"
  start "$name-kwok" "$BIN/kwok" --kubeconfig "$kcfg" --config "$cfg" \
    --manage-all-nodes=false --manage-nodes-with-label-selector type=kwok
}

# seed_member NAME REGION: fake nodes, the default StorageClass and pre-created PVs. The PVs are
# pinned to a node by its hostname, as kind's local-path provisioner pins its volumes: the
# operator locates them through the node they name, with nothing region-specific in them.
seed_member() {
  local name="$1" region="$2" f="$STATE/seed/$1.yaml" zone i
  mkdir -p "$STATE/seed"
  : >"$f"
  for zone in a b; do
    cat >>"$f" <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name-node-$zone
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: $name-node-$zone
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
    topology.kubernetes.io/region: $region
    topology.kubernetes.io/zone: $region$zone
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "250"}
  capacity: {cpu: "64", memory: 256Gi, pods: "250"}
---
EOF
  done
  cat >>"$f" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
EOF
  for ((i = 1; i <= PVS; i++)); do
    zone=$([[ $((i % 2)) -eq 1 ]] && echo a || echo b)
    cat >>"$f" <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name-pv-$(printf %03d "$i")
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  local: {path: /mnt/fleet/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - key: kubernetes.io/hostname
          operator: In
          values: [$name-node-$zone]
EOF
  done
  # --server-side: a seed that is already there is not an error (idempotent); --force-conflicts:
  # up puts the seed back as it is written, over a test's edit (a relabelled node, say)
  kc "$name" apply --server-side --force-conflicts --field-manager residency-fleet -f "$f" >/dev/null
}

nodes_ready() {
  local n
  n="$(kc "$1" get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)"
  [[ "$n" -ge 2 ]]
}

default_sa_exists() { kc "$1" get serviceaccount default -n default; }

# ---------------------------------------------------------------------------------------------

cmd_up() {
  local start_all=$SECONDS
  command -v openssl >/dev/null || die "openssl is required"
  command -v curl >/dev/null || die "curl is required"
  "$HERE/build.sh" >/dev/null
  mkdir -p "$STATE"/{pids,logs,pki,kubeconfigs}
  echo "$PORT_BASE" >"$STATE/port-base"
  [[ -f "$STATE/watch-cache" ]] || echo "${RESIDENCY_FLEET_WATCH_CACHE:-0}" >"$STATE/watch-cache"
  if [[ ! -f "$STATE/cpus" ]]; then local cpus; cpus="$(split_cpus)"; echo "$cpus" >"$STATE/cpus"; fi
  local row name role country region i=0
  for row in "${FLEET[@]}"; do read -r name role country region <<<"$row"; pki "$name"; done
  write_kubeconfigs
  write_audit_policy
  start_etcd
  [[ "$(etcd_port mgmt)" == "$PORT_BASE" ]] || start_etcd mgmt-etcd "$(etcd_port mgmt)"
  # apiservers one after another: on two cores, parallel start-up only slows each of them down
  for row in "${FLEET[@]}"; do
    read -r name role country region <<<"$row"
    start_apiserver "$name" $((PORT_BASE + 10 + i))
    wait_apiserver "$name" $((PORT_BASE + 10 + i))
    i=$((i + 1))
  done
  for row in "${FLEET[@]}"; do
    read -r name role country region <<<"$row"
    start_controllers "$name"
    [[ "$role" == member ]] || continue
    start_kwok "$name"
    seed_member "$name" "$region"
  done
  for row in "${FLEET[@]}"; do
    read -r name role country region <<<"$row"
    if [[ "$role" == member ]]; then wait_until "$name-kwok" "managing 2 Ready nodes" nodes_ready "$name"; fi
    wait_until "$name-kube-controller-manager" "running controllers" default_sa_exists "$name"
    expect_alive "$name-kube-scheduler"
  done
  # one real node per member (kubelet, containerd, CNI in the fleet's network namespace)
  if [[ "$REAL_NODES" != 0 ]]; then "$HERE/nodes.sh" up; fi
  log "fleet up in $((SECONDS - start_all)) s"
  cat >&2 <<EOF

  The fleet is running. Use it with:
    export KUBECONFIG=$KUBECONFIG_OUT
    $BIN/kubectl --context zrh-1 get nodes -L topology.kubernetes.io/region
  Contexts: mgmt, zrh-1, zrh-2, msk-1.  Environment for the tests: eval "\$($0 env)"
  Stop it with: $0 down

EOF
}

cmd_down() {
  # the real nodes and a container runtime started under the fleet's directory go first
  # (containers, mounts, cgroups, the network namespace)
  if [[ -d "$STATE/nodes" ]] || ip netns list 2>/dev/null | grep -qw "rfleet-$PORT_BASE"; then
    "$HERE/nodes.sh" down || true
  fi
  if [[ -d "$STATE/runtime" ]]; then RESIDENCY_RUNTIME_DIR="$STATE/runtime" "$HERE/runtime.sh" down || true; fi
  [[ -d "$STATE/pids" ]] || { log "no fleet state in $STATE; nothing to stop"; rm -rf "$STATE"; return 0; }
  local f id pid pids=()
  for f in "$STATE"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    id="$(basename "$f" .pid)"
    if is_running "$id"; then
      pid="$(cat "$f")"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$((SECONDS + 15)) p
  for p in "${pids[@]}"; do
    while kill -0 "$p" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
  done
  rm -rf "$STATE"
  log "stopped ${#pids[@]} processes; removed $STATE"
}

cmd_status() {
  local f id pid rss total=0
  local mgmt_cpus member_cpus
  read -r mgmt_cpus member_cpus <<<"$(split_cpus)"
  [[ -z "$mgmt_cpus" ]] || echo "as deployed: management cluster on CPU $mgmt_cpus, members on CPU $member_cpus"
  printf '%-34s %8s %10s\n' COMPONENT PID RSS_MIB
  for f in "$STATE"/pids/*.pid; do
    [[ -e "$f" ]] || continue
    id="$(basename "$f" .pid)"
    if is_running "$id"; then
      pid="$(cat "$f")"
      rss="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
      total=$((total + rss))
      printf '%-34s %8s %10s\n' "$id" "$pid" "$((rss / 1024))"
    else
      printf '%-34s %8s %10s\n' "$id" "-" "stopped"
    fi
  done
  printf '%-34s %8s %10s\n' TOTAL "" "$((total / 1024))"
}

cmd_env() {
  local regions="" row name role country region
  for row in "${FLEET[@]}"; do
    read -r name role country region <<<"$row"
    [[ "$role" == member ]] && regions+="${regions:+,}$name=$region"
  done
  cat <<EOF
export RESIDENCY_KUBECONFIG=$KUBECONFIG_OUT
export RESIDENCY_MGMT_CONTEXT=mgmt
export RESIDENCY_MEMBER_REGIONS=$regions
export RESIDENCY_KUBECTL=$BIN/kubectl
export RESIDENCY_HELM=$BIN/helm
export RESIDENCY_FLEET_DIR=$STATE
export RESIDENCY_FLEET_POD_HOST=$POD_HOST_IP
export RESIDENCY_FLEET_WATCH_CACHE=$(watch_cache)
export RESIDENCY_FLEET_MGMT_CPUS=$(cpus_of mgmt-)
EOF
}

# stop ID: stops one component (e.g. msk-1-kube-apiserver) and keeps the fleet's state, so
# `up` starts it again. For failure tests.
cmd_stop() {
  local id="${1:?usage: $0 stop COMPONENT}"
  is_running "$id" || { log "$id is not running"; return 0; }
  local pid; pid="$(cat "$(pidfile "$id")")"
  kill -TERM "$pid"
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  log "$id stopped"
}

case "${1:-}" in
  up) cmd_up ;;
  stop) shift; cmd_stop "$@" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env|stop COMPONENT" >&2; exit 2 ;;
esac
