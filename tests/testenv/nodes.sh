#!/usr/bin/env bash
# Real nodes for the local fleet: on each cluster (mgmt included; on members next to their kwok
# nodes), one node where Pods really run - a kubelet from the fleet's Kubernetes build, its own containerd (Debian's
# containerd and runc) and CNI bridge networking (Debian's containernetworking-plugins).
#
#   tests/testenv/nodes.sh up       start the real nodes of a running fleet (idempotent)
#   tests/testenv/nodes.sh load CLUSTER ARCHIVE   import an image archive into CLUSTER's node
#   tests/testenv/nodes.sh down     stop them: Pods, containers, shims, mounts, cgroups, the
#                                   network namespace and its links
#   tests/testenv/nodes.sh status   their components with pid and resident memory (fleet.sh status
#                                   lists them too)
#
# Network: every Pod lives in one network namespace the fleet creates (rfleet-<port base>),
# which has no default route: Pods of different members reach each other over the namespace's
# bridges (one per node, one /24 each), and a packet to any other address fails there instead
# of leaving the machine. A veth pair links the namespace to the host (172.31.<k>.1 host side,
# .2 namespace side, k from the port base): the kubelets listen on the host side (their node
# IP), each containerd's streaming server (exec, logs) on the namespace side, and a forwarder
# (socat) per cluster makes its API server reachable from Pods at 172.31.<k>.1:<its port>.
# Pods get 172.30.<k>.0/24 (a /26 per node), which the host routes into the namespace so the
# kubelets can probe them; the host forwards nothing.
#
# Images: nothing is pulled. The pause image (a static binary built here with gcc) and the test
# image `residency.local/busybox:1` (Debian's busybox-static) are built with scripts/oci_image.py
# and imported into every node's containerd; Pods use them with imagePullPolicy Never or
# IfNotPresent. Each real node is tainted residency.io/real-node=true:NoSchedule, so only Pods
# that tolerate it run there (the kwok nodes keep the rest), and carries its member's region and
# zone labels. Volumes: StorageClass `real-local`, local PersistentVolumes that are directories
# under the fleet's state, with node affinity naming the real node (by hostname).
#
# Settings: those of fleet.sh (RESIDENCY_FLEET_DIR, RESIDENCY_FLEET_PORT_BASE), and
#   RESIDENCY_REAL_PVS   real PersistentVolumes per member (default 4)
set -euo pipefail
# containerd creates the containers' root filesystems with this mask: with fleet.sh's 077 (for
# its kubeconfigs) a non-root container could not even enter its own /
umask 022

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
# shellcheck source=lib.sh
source "$HERE/lib.sh"
REAL_PVS="${RESIDENCY_REAL_PVS:-4}"
NODES="$STATE/nodes"
NETNS="rfleet-$PORT_BASE"
HOST_IP="$POD_HOST_IP"
VETH_HOST="rfh$PORT_BASE" VETH_NS="rfn$PORT_BASE"
CNI_BIN=/usr/lib/cni
# the Pods' addresses: 172.30.<k>.0/24, a /26 per node; the host routes it into the namespace
# (so kubelets can probe Pods), and nothing else
POD_NET="172.30.$K.0/24"
pod_subnet() { echo "172.30.$K.$(( $1 * 64 ))/26"; }
PAUSE_IMAGE=residency.local/pause:1
TEST_IMAGE=residency.local/busybox:1

# name index region (index: the fleet order of fleet.sh, for ports and subnets; mgmt has no
# region: it holds no country's data, it runs the operator)
MEMBERS=(
  "mgmt 0 -"
  "zrh-1 1 eu-central-2"
  "zrh-2 2 eu-central-2"
  "msk-1 3 ru-central-1"
)

log() { printf '[nodes %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { "$BIN/kubectl" --kubeconfig "$STATE/kubeconfigs/$1.yaml" "${@:2}"; }
in_ns() { ip netns exec "$NETNS" "$@"; }

install_packages() { "$HERE/runtime.sh" install; }

# the images every node imports, built once (cached by content)
build_images() {
  local dir="$CACHE/images" src="$HERE/pause.c" sum
  sum="$(cat "$src" /bin/busybox "$ROOT/scripts/oci_image.py" | sha256sum | cut -c1-12)"
  IMAGES="$dir/$sum"
  [[ -f "$IMAGES/.complete" ]] && return 0
  command -v gcc >/dev/null || die "gcc is required to build the pause image"
  rm -rf "$IMAGES.tmp"; mkdir -p "$IMAGES.tmp"
  gcc -static -Os -s -o "$IMAGES.tmp/pause" "$src"
  python3 "$ROOT/scripts/oci_image.py" --output "$IMAGES.tmp/pause.tar" --name "$PAUSE_IMAGE" \
    --file "$IMAGES.tmp/pause:pause:0755" --user 65535:65535 --entrypoint '["/pause"]' >/dev/null
  python3 "$ROOT/scripts/oci_image.py" --output "$IMAGES.tmp/busybox.tar" --name "$TEST_IMAGE" \
    --file /bin/busybox:bin/busybox:0755 --file /bin/busybox:bin/sh:0755 --user 0:0 \
    --entrypoint '["/bin/busybox"]' --cmd '["sh"]' >/dev/null
  touch "$IMAGES.tmp/.complete"
  rm -rf "$IMAGES"; mv "$IMAGES.tmp" "$IMAGES"
}

network_up() {
  if ! ip netns list | grep -qw "$NETNS"; then
    log "network namespace $NETNS: creating ($HOST_IP <-> $NS_IP, no default route)"
    ip netns add "$NETNS"
  fi
  in_ns ip link set lo up
  if ! ip link show "$VETH_HOST" >/dev/null 2>&1; then
    ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
    ip link set "$VETH_NS" netns "$NETNS"
    ip addr add "$HOST_IP/30" dev "$VETH_HOST"
    ip link set "$VETH_HOST" up
    in_ns ip addr add "$NS_IP/30" dev "$VETH_NS"
    in_ns ip link set "$VETH_NS" up
  fi
  # Pods of different nodes (bridges) reach each other inside the namespace only
  in_ns sysctl -qw net.ipv4.ip_forward=1
  # the kubelets (on the host) reach the Pods for probes; the host forwards nothing (its own
  # ip_forward is left as it is), so this route leads nowhere else
  ip route replace "$POD_NET" via "$NS_IP" dev "$VETH_HOST"
}

# Pods reach each cluster's API server at $HOST_IP:<its port> (in-cluster clients): a forwarder
# on the host side of the veth to the API server on loopback
start_apiserver_proxies() {
  local row name idx region port
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    port=$((PORT_BASE + 10 + idx))
    # (the lock file puts the fleet's directory in its command line, which marks it as ours)
    start "$name-apiserver-proxy" socat -L "$STATE/pids/$name-apiserver-proxy.lock" \
      "TCP-LISTEN:$port,bind=$HOST_IP,fork,reuseaddr" "TCP:127.0.0.1:$port"
  done
}

network_down() {
  ip route del "$POD_NET" 2>/dev/null || true
  ip link del "$VETH_HOST" 2>/dev/null || true
  if ip netns list | grep -qw "$NETNS"; then ip netns del "$NETNS" || true; fi
}

cgroup_root() { echo "/residency-fleet-$PORT_BASE-$1"; }

# make_cgroup_root NAME: the node's cgroup root in every cgroup v1 hierarchy (the kubelet needs it
# to exist); a new cpuset needs its parent's cpus and mems before anything can join it
make_cgroup_root() {
  local root; root="$(cgroup_root "$1")"
  local h
  for h in /sys/fs/cgroup/*/; do
    [[ -d "$h" ]] || continue
    mkdir -p "$h${root#/}"
  done
  if [[ -d /sys/fs/cgroup/cpuset ]]; then
    cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset${root}/cpuset.cpus"
    cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset${root}/cpuset.mems"
  fi
}

start_node() {
  local name="$1" idx="$2" region="$3" d="$NODES/$1"
  local node="$name-real" sock="$NODES/$1/containerd.sock"
  local kport=$((PORT_BASE + 40 + idx)) sport=$((PORT_BASE + 50 + idx))
  mkdir -p "$d"/{cni,cni-ipam,kubelet,pod-logs,volumes}
  cat >"$d/cni/10-bridge.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "rfleet", "plugins": [
  {"type": "bridge", "bridge": "rfb$idx-$PORT_BASE", "isGateway": true, "ipMasq": false,
   "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$d/cni-ipam",
            "ranges": [[{"subnet": "$(pod_subnet "$idx")"}]], "routes": [{"dst": "0.0.0.0/0"}]}}
]}
EOF
  cat >"$d/containerd.toml" <<EOF
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "$NS_IP"
  stream_server_port = "$sport"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN"
    conf_dir = "$d/cni"
    max_conf_num = 1
EOF
  # containerd (and so the Pods' networks) inside the namespace; only the network namespace is
  # entered (`ip netns exec` would also remount /sys, hiding the cgroup hierarchies)
  start "$name-containerd" nsenter --net="/run/netns/$NETNS" containerd --config "$d/containerd.toml"
  wait_until "$name-containerd" "serving" ctr --address "$sock" version
  local img
  for img in pause busybox; do
    ctr --address "$sock" -n k8s.io images import "$IMAGES/$img.tar" >/dev/null
  done
  make_cgroup_root "$name"
  : >"$d/resolv.conf" # no upstream nameserver: Pods never query the machine's resolver
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $(cgroup_root "$name")
address: $HOST_IP
port: $kport
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
resolvConf: $d/resolv.conf
failSwapOn: false
podLogsDir: $d/pod-logs
containerRuntimeEndpoint: unix://$sock
serializeImagePulls: false
maxPods: 30
registerWithTaints:
- {key: residency.io/real-node, value: "true", effect: NoSchedule}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
EOF
  local labels="residency.io/real-node=true"
  [[ "$region" != - ]] && labels+=",topology.kubernetes.io/region=$region,topology.kubernetes.io/zone=${region}a"
  start "$name-kubelet" "$BIN/kubelet" --config "$d/kubelet.yaml" \
    --kubeconfig "$STATE/kubeconfigs/$name.yaml" --root-dir "$d/kubelet" \
    --hostname-override "$node" --node-ip "$HOST_IP" --node-labels "$labels" --v=0
}

seed_real_volumes() {
  local name="$1" region="$2" d="$NODES/$1" f="$NODES/$1/volumes.yaml" i
  cat >"$f" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: real-local
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
EOF
  for ((i = 1; i <= REAL_PVS; i++)); do
    # writable by any user: Pods in the operator's namespaces run as non-root (restricted)
    mkdir -p "$d/volumes/pv-$i" && chmod 0777 "$d/volumes/pv-$i"
    cat >>"$f" <<EOF
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: $name-real-pv-$i
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: real-local
  local: {path: $d/volumes/pv-$i}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$name-real]}
EOF
  done
  kc "$name" apply --server-side --force-conflicts --field-manager residency-fleet -f "$f" >/dev/null
}

node_ready() {
  [[ "$(kc "$1" get node "$1-real" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

cmd_up() {
  local t=$SECONDS row name idx region
  [[ -f "$STATE/kubeconfigs/zrh-1.yaml" ]] || die "no fleet in $STATE: run fleet.sh up first"
  [[ -x "$BIN/kubelet" ]] || die "no kubelet in $BIN: run build.sh"
  install_packages
  build_images
  network_up
  start_apiserver_proxies
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    start_node "$name" "$idx" "$region"
  done
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    wait_until "$name-kubelet" "a Ready node $name-real" node_ready "$name"
    [[ "$region" != - ]] && seed_real_volumes "$name" "$region"
  done
  log "real nodes up in $((SECONDS - t)) s"
}

cmd_down() {
  local row name idx region sock
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    sock="$NODES/$name/containerd.sock"
    # the kubelet first, so it restarts nothing; then every container of the node
    if is_running "$name-kubelet"; then kill -TERM "$(cat "$(pidfile "$name-kubelet")")" 2>/dev/null || true; fi
    if is_running "$name-containerd"; then
      ctr_teardown "$sock" k8s.io
      kill -TERM "$(cat "$(pidfile "$name-containerd")")" 2>/dev/null || true
    fi
  done
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    if is_running "$name-apiserver-proxy"; then kill -TERM "$(cat "$(pidfile "$name-apiserver-proxy")")" 2>/dev/null || true; fi
  done
  local deadline=$((SECONDS + 15)) id
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    for id in "$name-kubelet" "$name-containerd" "$name-apiserver-proxy"; do
      while is_running "$id" && ((SECONDS < deadline)); do sleep 0.2; done
      if is_running "$id"; then kill -KILL "$(cat "$(pidfile "$id")")" 2>/dev/null || true; fi
      rm -f "$(pidfile "$id")"
    done
    # shims outlive containerd by design
    kill_shims "$NODES/$name/containerd.sock"
  done
  # kubelet mounts (volumes, tmpfs secrets) under the nodes' directories, deepest first
  if [[ -d "$NODES" ]]; then
    awk -v d="$NODES" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
  fi
  # the nodes' cgroups, deepest first, in every hierarchy
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    find /sys/fs/cgroup -depth -type d -path "*$(cgroup_root "$name")*" -exec rmdir {} \; 2>/dev/null || true
  done
  network_down
  rm -rf "$NODES"
}

cmd_status() {
  local row name idx region id pid
  for row in "${MEMBERS[@]}"; do
    read -r name idx region <<<"$row"
    for id in "$name-containerd" "$name-kubelet" "$name-apiserver-proxy"; do
      if is_running "$id"; then
        pid="$(cat "$(pidfile "$id")")"
        printf '%-34s %8s %10s\n' "$id" "$pid" "$(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))"
      fi
    done
  done
  ip netns list | grep -w "$NETNS" | sed 's/^/network namespace /' || true
}

# load CLUSTER ARCHIVE: imports an image archive into CLUSTER's real node (like
# `kind load image-archive`)
cmd_load() {
  local name="${1:?usage: $0 load CLUSTER ARCHIVE}" archive="${2:?usage: $0 load CLUSTER ARCHIVE}"
  local sock="$NODES/$name/containerd.sock"
  [[ -S "$sock" ]] || die "$name has no real node running ($sock)"
  ctr --address "$sock" -n k8s.io images import "$archive"
}

case "${1:-}" in
  load) shift; cmd_load "$@" ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) sed -n '2,30p' "$0"; exit 2 ;;
esac
