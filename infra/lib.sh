# shellcheck shell=bash
# Helpers shared by infra/stack.sh and the component scripts in infra/components/.

say()  { printf '\033[1;34m[%s]\033[0m %s\n' "${COMPONENT:-stack}" "$*" >&2; }
warn() { printf '\033[1;33m[%s] warning:\033[0m %s\n' "${COMPONENT:-stack}" "$*" >&2; }

# die MESSAGE [LOGFILE]: fail naming the component, with the tail of its log when there is one.
die() {
  printf '\033[1;31m[%s] error:\033[0m %s\n' "${COMPONENT:-stack}" "$1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    printf -- '--- last 40 lines of %s ---\n' "$2" >&2
    tail -n 40 "$2" >&2
    printf -- '--- end of %s ---\n' "$2" >&2
  fi
  exit 1
}

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed; $2"; }

# disk_mib DIR: "free total" in MiB for the filesystem holding DIR.
disk_mib() { df -Pm "$1" | awk 'NR == 2 { print $4, $2 }'; }

# apt_install PKG...: installs Debian packages that are missing (runs apt-get update once).
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  say "installing Debian packages: ${missing[*]}"
  if [ ! -f "$EDA_CACHE_DIR/.apt-updated" ] || ! apt-cache show "${missing[0]}" >/dev/null 2>&1; then
    $sudo apt-get update -qq >/dev/null || die "apt-get update failed"
    mkdir -p "$EDA_CACHE_DIR" && touch "$EDA_CACHE_DIR/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
}

# port_open PORT: true when something accepts TCP connections on EDA_BIND_HOST:PORT.
port_open() { (exec 3<>"/dev/tcp/$EDA_BIND_HOST/$1") 2>/dev/null; }

# http_ok URL: true when URL answers 2xx.
http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

# wait_until SECONDS DESCRIPTION LOGFILE PIDFILE COMMAND...: polls COMMAND until it succeeds.
# Fails early, with the log tail, when the process behind PIDFILE has died.
wait_until() {
  local timeout=$1 what=$2 log=$3 pidfile=$4; shift 4
  local start=$SECONDS
  until "$@"; do
    if [ -n "$pidfile" ] && ! pid_alive "$pidfile"; then
      die "$what: the process exited during start-up (log: $log)" "$log"
    fi
    if (( SECONDS - start >= timeout )); then
      die "$what: not ready after ${timeout}s (log: $log)" "$log"
    fi
    sleep 0.5
  done
}

# pid_alive PIDFILE: the process behind PIDFILE is running. A process killed -9 answers
# `kill -0` until it is reaped, so one that is a zombie, or has SIGKILL pending while it is torn
# down, does not count: `make up` run right after a crash starts the component again.
pid_alive() {
  [ -f "$1" ] || return 1
  local pid; pid=$(cat "$1")
  kill -0 "$pid" 2>/dev/null || return 1
  ! pid_dying "$pid"
}

# pid_dying PID: PID exists but is a zombie, dead, or about to die (SIGKILL pending).
pid_dying() {
  local stat state pending
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  state=${stat##*) }; state=${state%% *}
  case $state in Z|X|x) return 0 ;; esac
  pending=$(awk '/^(SigPnd|ShdPnd):/ { print $2 }' "/proc/$1/status" 2>/dev/null)
  for mask in $pending; do
    (( (16#$mask >> 8) & 1 )) && return 0
  done
  return 1
}

# wait_gone PIDFILE [SECONDS]: before starting a component again, waits while its previous
# process is still being torn down (it may hold the port or the data directory's lock). A
# zombie holds neither and is not waited for.
wait_gone() {
  local pidfile=$1 timeout=${2:-30} pid state start=$SECONDS
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  while kill -0 "$pid" 2>/dev/null && (( SECONDS - start < timeout )); do
    state=$(cat "/proc/$pid/stat" 2>/dev/null) || break
    state=${state##*) }; state=${state%% *}
    case $state in Z|X|x) break ;; esac
    sleep 0.2
  done
  rm -f "$pidfile"
}

# start_bg PIDFILE LOGFILE COMMAND...: starts COMMAND detached (own session), output to LOGFILE.
start_bg() {
  local pidfile=$1 log=$2; shift 2
  mkdir -p "$(dirname "$pidfile")" "$(dirname "$log")"
  wait_gone "$pidfile"
  printf '\n===== %s starting: %s =====\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
  setsid "$@" >>"$log" 2>&1 < /dev/null &
  echo $! >"$pidfile"
}

# stop_pid PIDFILE [SECONDS]: SIGTERM, bounded wait, then SIGKILL. Removes the pid file.
stop_pid() {
  local pidfile=$1 grace=${2:-30}
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local waited=0
    while kill -0 "$pid" 2>/dev/null && (( waited < grace * 2 )); do sleep 0.5; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
      warn "pid $pid did not stop within ${grace}s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# refuse_busy_port PORT WHAT: a port taken by something that is not ours is a clear error.
refuse_busy_port() {
  if port_open "$1"; then
    die "port $1 ($2) is already in use by another process; stop it or override the port (see infra/env.sh)"
  fi
}

# run_as_service_user COMMAND...: PostgreSQL refuses to run as root; use the 'postgres' account then.
run_as_service_user() {
  if [ "$(id -u)" -eq 0 ]; then
    # From /, so a working directory the account cannot enter raises no warning.
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}
