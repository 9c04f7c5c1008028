# Shared by fleet.sh and nodes.sh (sourced after versions.env): the fleet's settings, and the
# process bookkeeping. The sourcing script defines log and die.

# --- settings (see fleet.sh for the environment variables)
STATE="${RESIDENCY_FLEET_DIR:-${TMPDIR:-/tmp}/residency-fleet}"
PORT_BASE="${RESIDENCY_FLEET_PORT_BASE:-17400}"
# a running fleet keeps the ports it was started with
if [[ -z "${RESIDENCY_FLEET_PORT_BASE:-}" && -f "$STATE/port-base" ]]; then PORT_BASE="$(cat "$STATE/port-base")"; fi
TIMEOUT="${RESIDENCY_FLEET_TIMEOUT:-120}"
CACHE="${RESIDENCY_CACHE:-$HOME/.cache/residency-operator}/testenv"
BIN="$CACHE/bin"
# the real nodes' link between host and the fleet's network namespace, 172.31.<k>.0/30 with k
# from the port base: Pods reach the API servers at the host side, which the certificates name
K=$(( (PORT_BASE / 100) % 256 ))
POD_HOST_IP="172.31.$K.1" NS_IP="172.31.$K.2"

# --- process bookkeeping: every process started has a pid file; a pid counts as ours only when
# its command line mentions the fleet's state directory (guards against pid reuse).

pidfile() { echo "$STATE/pids/$1.pid"; }
logfile() { echo "$STATE/logs/$1.log"; }

is_running() {
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  local pid; pid="$(cat "$f")"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE"
}

# The CPUs a component runs on (empty: any). A fleet started with RESIDENCY_FLEET_SPLIT_CPUS=1
# runs as deployed: the management cluster's components (its own etcd among them) on the last
# CPU, the members' and their etcd on the others, so the members' work is not slowed by the
# management cluster's (which production runs on machines of its own). The layout is fixed
# when the fleet is first started ($STATE/cpus: "MGMT MEMBERS") and kept by `up` after `stop`.
split_cpus() {
  local f="$STATE/cpus"
  if [[ -f "$f" ]]; then cat "$f"; return; fi
  [[ "${RESIDENCY_FLEET_SPLIT_CPUS:-0}" == 1 ]] || return 0
  local n; n="$(nproc)"
  (( n >= 2 )) || die "RESIDENCY_FLEET_SPLIT_CPUS=1 needs two CPUs or more"
  if (( n == 2 )); then echo "1 0"; else echo "$((n - 1)) 0-$((n - 2))"; fi
}
cpus_of() {
  local layout mgmt members; layout="$(split_cpus)"
  [[ -n "$layout" ]] || return 0
  read -r mgmt members <<<"$layout"
  if [[ "$1" == mgmt-* ]]; then echo "$mgmt"; else echo "$members"; fi
}

# start ID CMD... : start CMD in the background unless ID already runs
start() {
  local id="$1"; shift
  if is_running "$id"; then
    log "$id: already running (pid $(cat "$(pidfile "$id")"))"
    return 0
  fi
  log "$id: starting"
  local pin=() cpus; cpus="$(cpus_of "$id")"
  [[ -n "$cpus" ]] && pin=(taskset -c "$cpus")
  # setsid: the component must not receive the terminal's signals; we stop it by pid.
  setsid "${pin[@]}" "$@" >"$(logfile "$id")" 2>&1 < /dev/null &
  local pid=$! i=0
  echo "$pid" >"$(pidfile "$id")"
  # Until the child has exec'd, its command line is this shell's, and is_running would call it
  # dead ("exited during start-up" with an empty log, seen on a loaded machine): wait for the
  # exec, or for the child's end (a zombie's command line is empty; procfs sizes are always 0,
  # so the line itself is read).
  until is_running "$id" || [[ -z "$( (tr -d '\0' <"/proc/$pid/cmdline") 2>/dev/null)" ]] || ((i++ >= 200)); do
    sleep 0.05
  done
}

# fail_component ID WHAT : report a component that did not come up, with its log file
fail_component() {
  local id="$1" what="$2" lf; lf="$(logfile "$1")"
  log "component $id $what; last lines of its log $lf:"
  tail -n 20 "$lf" >&2 || true
  die "component $id $what (log: $lf)"
}

# expect_alive ID : the process must still be running
expect_alive() {
  is_running "$1" || fail_component "$1" "exited during start-up"
}

# wait_until ID DESCRIPTION CMD... : poll CMD until it succeeds or TIMEOUT passes
wait_until() {
  local id="$1" desc="$2"; shift 2
  local start=$SECONDS
  until "$@" >/dev/null 2>&1; do
    expect_alive "$id"
    (( SECONDS - start < TIMEOUT )) || fail_component "$id" "did not become $desc within ${TIMEOUT} s"
    sleep 0.5
  done
  log "$id: $desc after $((SECONDS - start)) s"
}

# --- containerd teardown (nodes.sh, runtime.sh)

# ctr_teardown SOCKET NAMESPACE: kills and removes every task and container of one containerd
ctr_teardown() {
  local ctr=(ctr --address "$1" --namespace "$2") t c
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
  sleep 0.5
  for t in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true; done
  for c in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers delete "$c" >/dev/null 2>&1 || true; done
}

# kill_shims SOCKET: the shims a containerd started outlive it by design; stop them
kill_shims() { pkill -9 -f "containerd-shim.*-address $1" 2>/dev/null || true; }
