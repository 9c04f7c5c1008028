#!/usr/bin/env bash
# Builds (or reuses) the local control-plane binaries from the Go module proxy.
#
#   tests/testenv/build.sh            build what is missing, print the bin directory
#
# Each component is built from a wrapper module in tests/testenv/gomod/<name> (committed with
# its go.sum) and cached under ${RESIDENCY_CACHE:-~/.cache/residency-operator}/testenv, keyed by
# component, version and a hash of the wrapper module, so a second run does nothing.
# Progress (component, elapsed seconds) goes to stderr; the last line on stdout is the bin dir.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE="${RESIDENCY_CACHE:-$HOME/.cache/residency-operator}/testenv"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# key NAME VERSION [MODULE] -> cache directory for that component build (MODULE: the wrapper
# module it is built from, default NAME)
key() {
  local sum mod="${3:-$1}"
  sum="$(cat "$HERE/gomod/$mod/go.mod" "$HERE/gomod/$mod/go.sum" | sha256sum | cut -c1-12)"
  echo "$CACHE/$1-$2-$sum"
}

# run_with_progress LABEL CMD... : runs CMD, printing a heartbeat every 30 s.
run_with_progress() {
  local label="$1"; shift
  local start=$SECONDS logf
  logf="$(mktemp)"
  "$@" >"$logf" 2>&1 &
  local pid=$! last=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 2
    if ((SECONDS - last >= 30)) && kill -0 "$pid" 2>/dev/null; then
      last=$SECONDS
      log "$label: still building ($((SECONDS - start)) s elapsed)"
    fi
  done
  if ! wait "$pid"; then
    log "$label: build FAILED after $((SECONDS - start)) s; output:"
    tail -n 40 "$logf" >&2
    rm -f "$logf"
    return 1
  fi
  rm -f "$logf"
  log "$label: built in $((SECONDS - start)) s"
}

# build NAME VERSION LDFLAGS PKG... : go build the packages of wrapper module NAME (or $MODULE)
# into its cache dir
build() {
  local name="$1" version="$2" ldflags="$3"; shift 3
  local mod="${MODULE:-$name}"
  local dir; dir="$(key "$name" "$version" "$mod")"
  if [[ -f "$dir/.complete" ]]; then
    log "$name $version: cached in $dir"
  else
    log "$name $version: building $* (a cold build takes minutes)"
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    (cd "$HERE/gomod/$mod" &&
      run_with_progress "$name $version" go build -trimpath -pgo=off -ldflags "-s -w $ldflags" -o "$dir.tmp/" "$@")
    # etcd's main package is called "server"; give the binary its real name
    if [[ -f "$dir.tmp/server" ]]; then mv "$dir.tmp/server" "$dir.tmp/etcd"; fi
    touch "$dir.tmp/.complete"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
  fi
  mkdir -p "$CACHE/bin"
  local f
  for f in "$dir"/*; do ln -sfn "$f" "$CACHE/bin/$(basename "$f")"; done
}

k8s_ldflags() {
  local v="$K8S_VERSION" minor; minor="$(echo "$v" | cut -d. -f2)"
  local date="2026-01-01T00:00:00Z" out="" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    out+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    out+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
  done
  echo "$out"
}

helm_ldflags() {
  local minor; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  echo "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
    "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
}

main() {
  local total=$SECONDS
  command -v go >/dev/null || { log "go is required (Go >= 1.26)"; exit 1; }
  build etcd "$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
  build kubernetes "$K8S_VERSION" "$(k8s_ldflags)" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  # the real nodes' kubelet, from the same Kubernetes build (a component of its own, so adding
  # it left the control plane's cache as it was)
  MODULE=kubernetes build kubelet "$K8S_VERSION" "$(k8s_ldflags)" k8s.io/kubernetes/cmd/kubelet
  build kwok "$KWOK_VERSION" "" sigs.k8s.io/kwok/cmd/kwok
  build helm "$HELM_VERSION" "$(helm_ldflags)" helm.sh/helm/v3/cmd/helm
  # kwok needs its stage definitions, shipped in its module.
  local kwokdir
  kwokdir="$(cd "$HERE/gomod/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  mkdir -p "$CACHE/kwok-stages-$KWOK_VERSION"
  local s
  for s in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    cp -f "$kwokdir/kustomize/stage/$s.yaml" "$CACHE/kwok-stages-$KWOK_VERSION/"
  done
  log "all components ready in $((SECONDS - total)) s"
  echo "$CACHE/bin"
}

main "$@"
