# Process bookkeeping shared by fleet.sh and nodes.sh (sourced; they define STATE, TIMEOUT, log
# and die): every process started has a pid file; a pid counts as ours only when its command
# line mentions the fleet's state directory (guards against pid reuse).

pidfile() { echo "$STATE/pids/$1.pid"; }
logfile() { echo "$STATE/logs/$1.log"; }

is_running() {
  local f; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  local pid; pid="$(cat "$f")"
  [[ -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "$STATE"
}

# start ID CMD... : start CMD in the background unless ID already runs
start() {
  local id="$1"; shift
  if is_running "$id"; then
    log "$id: already running (pid $(cat "$(pidfile "$id")"))"
    return 0
  fi
  log "$id: starting"
  # setsid: the component must not receive the terminal's signals; we stop it by pid.
  setsid "$@" >"$(logfile "$id")" 2>&1 < /dev/null &
  echo $! >"$(pidfile "$id")"
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
