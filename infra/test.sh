#!/usr/bin/env bash
# `make test`: format check, the stack (started only if it is not running, and then stopped
# again), clippy with -D warnings, and every test in the workspace against the real components.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
# shellcheck source=infra/env.sh
source infra/env.sh
# shellcheck source=infra/lib.sh
source infra/lib.sh
COMPONENT=test

step() { say "== $* =="; }
t0=$SECONDS

step "prerequisites"
infra/deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

# Start (or reuse) the stack in the background while clippy compiles: on a cold machine both
# take minutes, and most of the stack's time is spent waiting on builds and downloads.
mkdir -p "$EDA_RUN_DIR"
started_file="$EDA_RUN_DIR/started-by-test"
: >"$started_file"
stack_log="$EDA_RUN_DIR/stack-up.log"
stop_started() {
  local started; started=$(tr '\n' ' ' <"$started_file" 2>/dev/null || true)
  if [ -n "${started// /}" ]; then
    say "stopping what this run started: $started"
    # shellcheck disable=SC2086
    infra/stack.sh down $started || true
  fi
  rm -f "$started_file"
}
trap stop_started EXIT
step "stack up (log: $stack_log)"
EDA_STARTED_FILE="$started_file" infra/stack.sh up >"$stack_log" 2>&1 &
stack_pid=$!

step "cargo clippy --workspace --all-targets -- -D warnings"
clippy_rc=0
cargo clippy --workspace --all-targets -- -D warnings || clippy_rc=$?

# Still while the stack starts: the crates people copy must build outside the workspace
# (own target dir under $EDA_CACHE_DIR; a few seconds when warm, minutes cold).
step "copy-check (crates copied into a fresh project)"
copy_rc=0
infra/copy-check.sh || copy_rc=$?

stack_rc=0
wait "$stack_pid" || stack_rc=$?
cat "$stack_log" >&2
[ "$stack_rc" -eq 0 ] || die "the stack did not come up (see above; infra/stack.sh logs)"
[ "$clippy_rc" -eq 0 ] || die "clippy found problems (see above)"
[ "$copy_rc" -eq 0 ] || die "a crate does not copy out (see copy-check above; make copy-check)"
infra/stack.sh status

step "cargo test --workspace"
test_log="$EDA_RUN_DIR/cargo-test.log"
test_rc=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$test_log" || test_rc=$?
# One closing line for the whole run (cargo prints one per test binary), printed last.
summary=$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed", p, f }' "$test_log")
if [ "$test_rc" -ne 0 ]; then
  echo "$summary"
  die "tests failed (full output: $test_log)"
fi
# schemathesis against every service's generated /openapi.json (make fuzz): valid, admin and
# invalid tokens, at least 1,000 requests per service, no 5xx, answers as documented, problem
# details on every error. Services not running are started from the dev binaries cargo test has
# just built, and stopped again.
step "fuzz (schemathesis against each service's /openapi.json)"
EDA_SERVICES_PROFILE=dev infra/fuzz.sh || die "fuzzing found problems (see above; make fuzz repeats it)"

# A short chaos round (`make chaos` runs 200 kills): every process of the system killed -9 at
# random under load and brought back by make up's scripts, then every order must settle and the
# audit pass. The services run as their own processes: the dev binaries cargo test has just
# built, stopped again afterwards (a `make up` already running keeps its own, restarted).
step "chaos round (${CHAOS_KILLS:-20} kills; make chaos runs 200)"
chaos_rc=0
if infra/services.sh status >/dev/null 2>&1; then
  CHAOS_KILLS=${CHAOS_KILLS:-20} infra/chaos.sh || chaos_rc=$?
else
  EDA_SERVICES_PROFILE=dev CHAOS_KILLS=${CHAOS_KILLS:-20} infra/chaos.sh || chaos_rc=$?
  infra/services.sh down || true
fi
[ "$chaos_rc" -eq 0 ] || die "the chaos round failed (see above; make chaos CHAOS_KILLS=20 repeats it)"

# Stop what this run started now, so that the summary is the run's last line.
trap - EXIT
stop_started
say "all checks passed in $((SECONDS - t0))s"
echo "$summary"
