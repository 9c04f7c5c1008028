#!/usr/bin/env bash
# A private container runtime: Debian's containerd and runc, with its own root, state and socket
# under one directory, so nothing is shared with a containerd the machine may run. Images come
# only from local archives (`ctr images import`); nothing is ever pulled. The building block of
# the fleet's real nodes, and what the image test runs the operator's image with.
#
#   tests/testenv/runtime.sh install   install containerd, runc, CNI plugins, busybox-static, socat
#                                      with apt-get when missing (root)
#   tests/testenv/runtime.sh up        start containerd (idempotent); prints its socket
#   tests/testenv/runtime.sh down      kill every container, stop containerd and its shims,
#                                      unmount what it mounted, remove the directory
#   tests/testenv/runtime.sh status    containerd's pid and memory, the containers
#   tests/testenv/runtime.sh ctr ARGS  ctr against this runtime (a namespace of its own)
#
# Settings (environment):
#   RESIDENCY_RUNTIME_DIR  its directory (default ${RESIDENCY_FLEET_DIR:-${TMPDIR:-/tmp}/residency-fleet}/runtime)
set -euo pipefail
# shellcheck source=lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh" # ctr_teardown, kill_shims

DIR="${RESIDENCY_RUNTIME_DIR:-${RESIDENCY_FLEET_DIR:-${TMPDIR:-/tmp}/residency-fleet}/runtime}"
SOCK="$DIR/containerd.sock"
# a containerd namespace (and so a cgroup, /<namespace>/<container>) of its own per directory
NS="residency-rt-$(printf '%s' "$DIR" | sha256sum | cut -c1-8)"
# the runtime, and what the fleet's real nodes (nodes.sh) add to it: CNI plugins, busybox for
# the test image, socat to forward the API servers to Pods
PACKAGES=(containerd runc containernetworking-plugins busybox-static socat)

log() { printf '[runtime %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
ctr_() { ctr --address "$SOCK" --namespace "$NS" "$@"; }

install() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  [[ $EUID -eq 0 ]] || die "missing the Debian packages ${missing[*]} (as root: $0 install)"
  log "installing the Debian packages ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

pid() { [[ -f "$DIR/containerd.pid" ]] && cat "$DIR/containerd.pid"; }
running() {
  local p; p="$(pid)" || return 1
  [[ -n "$p" ]] && grep -qF "$DIR/config.toml" "/proc/$p/cmdline" 2>/dev/null
}

up() {
  install
  running && { echo "$SOCK"; return 0; }
  mkdir -p "$DIR"
  cat >"$DIR/config.toml" <<TOML
version = 2
root = "$DIR/root"
state = "$DIR/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
TOML
  containerd --config "$DIR/config.toml" >"$DIR/containerd.log" 2>&1 &
  echo $! >"$DIR/containerd.pid"
  local i
  for i in $(seq 1 100); do
    ctr_ version >/dev/null 2>&1 && { echo "$SOCK"; return 0; }
    running || { tail -n 20 "$DIR/containerd.log" >&2; die "containerd exited during start-up"; }
    sleep 0.1
  done
  die "containerd did not answer on $SOCK within 10 s (log: $DIR/containerd.log)"
}

down() {
  [[ -d "$DIR" ]] || return 0
  if running; then
    ctr_teardown "$SOCK" "$NS"
    kill "$(pid)" 2>/dev/null || true
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    running && kill -9 "$(pid)" 2>/dev/null || true
  fi
  # shims outlive containerd by design: stop those started for this directory
  kill_shims "$SOCK"
  # whatever is still mounted under the directory (snapshots, shm), deepest first
  awk -v d="$DIR" '$2 ~ "^"d {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
  # the containers' cgroups (/<namespace>/...) in every hierarchy, deepest first
  find /sys/fs/cgroup -depth -type d -path "*/$NS*" -exec rmdir {} \; 2>/dev/null || true
  rm -rf "$DIR"
}

status() {
  if running; then
    local p; p="$(pid)"
    printf 'containerd  pid %s  %s kB resident  socket %s\n' "$p" \
      "$(awk '/VmRSS/ {print $2}' "/proc/$p/status")" "$SOCK"
    ctr_ containers ls 2>/dev/null || true
  else
    echo "containerd  not running ($DIR)"
  fi
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  ctr) shift; ctr_ "$@" ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
