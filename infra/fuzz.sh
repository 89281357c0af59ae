#!/usr/bin/env bash
# `make fuzz`: property-based fuzzing of every service's HTTP API with schemathesis, driven by the
# OpenAPI document each service generates from its code and serves at /openapi.json.
#
# For each service it runs schemathesis with a valid development token (user `fuzz`, no role),
# with a token signed by the wrong key, and where the admin role opens more of the API
# (inventory-service, projection-service) with an admin one (user `fuzz-admin`; the /admin/
# routes excluded, so that fuzzing starts no rebuild of the views). Every answer must pass these checks:
#   not_a_server_error            no 5xx, whatever the input
#   status_code_conformance       the status is one the document lists for the operation
#   content_type_conformance      the Content-Type is one the document lists for that status
#   response_schema_conformance   the body matches the documented schema
#   problem_details_on_errors     every 4xx/5xx is application/problem+json with type, title,
#                                 status and detail (infra/fuzz/hooks.py)
# Each service must receive at least FUZZ_MIN_REQUESTS requests (its runs together; counted
# from the runs' HAR files and printed per service), or the run fails.
#
# Services that are not running are started (infra/services.sh up; EDA_SERVICES_PROFILE picks
# the build, `make test` uses dev) and stopped again at the end; running ones are reused. The
# stack must be up (make infra-up). Positive cases write for real: orders of user `fuzz`, stock
# levels of the SKUs schemathesis makes up.
#
#   infra/fuzz.sh [SERVICE...]        default: order-service inventory-service projection-service
#
# Settings (environment):
#   SCHEMATHESIS_VERSION  pinned schemathesis release (default 4.32.5), installed from PyPI into
#                         $EDA_CACHE_DIR/schemathesis-<version>/venv once (idempotent)
#   FUZZ_MAX_EXAMPLES     test cases per operation and phase (default per service, enough for
#                         FUZZ_MIN_REQUESTS: order-service 50, inventory-service (two
#                         operations) 200, projection-service 30)
#   FUZZ_WORKERS          concurrent schemathesis workers (default 1: with more, Python 3.11.7's
#                         ast module fails under hypothesis' threads, "AST constructor recursion
#                         depth mismatch"; fixed in later Pythons)
#   FUZZ_SEED             hypothesis seed (default 1, so that CI runs are reproducible; any
#                         other value explores other inputs)
#   FUZZ_MIN_REQUESTS     least requests per service (default 1000)
# Reports: .run/fuzz/<service>-<token>.log (schemathesis' output) and .har (every request and
# answer; open in a browser's network panel or read with jq).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
# shellcheck source=infra/env.sh
source infra/env.sh
# shellcheck source=infra/lib.sh
source infra/lib.sh
COMPONENT=fuzz

# Everything runs inside main, which bash reads whole before running it: editing this file
# while a run is under way cannot change what the run does.
main() {
  : "${SCHEMATHESIS_VERSION:=4.32.5}"
  : "${FUZZ_WORKERS:=1}"
  : "${FUZZ_SEED:=1}"
  : "${FUZZ_MIN_REQUESTS:=1000}"
  CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,problem_details_on_errors

  # The tokens each service is fuzzed with: the admin role only where it opens more of the API.
  declare -A KINDS=(
    [order-service]="valid invalid"
    [inventory-service]="valid admin invalid"
    [projection-service]="valid admin invalid"
  )
  declare -A EXAMPLES=([order-service]=50 [inventory-service]=200 [projection-service]=30)
  declare -A PORTS=(
    [order-service]=$ORDER_SERVICE_PORT
    [inventory-service]=$INVENTORY_SERVICE_PORT
    [projection-service]=$PROJECTION_SERVICE_PORT
  )
  if [ $# -gt 0 ]; then services=("$@"); else services=(order-service inventory-service projection-service); fi
  for s in "${services[@]}"; do
    [ -n "${PORTS[$s]:-}" ] || die "unknown service $s (one of: ${!PORTS[*]})"
  done

  # schemathesis in its own virtualenv, outside the repository; reinstalled only when missing,
  # broken or of another version.
  st_dir="$EDA_CACHE_DIR/schemathesis-$SCHEMATHESIS_VERSION"
  st="$st_dir/venv/bin/st"
  install_schemathesis() {
    local COMPONENT=schemathesis log="$st_dir/install.log"
    if [ -x "$st" ] && "$st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then return 0; fi
    need python3 "install Python 3 (with its venv module)"
    mkdir -p "$st_dir"
    rm -rf "$st_dir/venv"
    say "installing schemathesis $SCHEMATHESIS_VERSION into $st_dir/venv (log: $log)"
    if ! { python3 -m venv "$st_dir/venv" &&
           "$st_dir/venv/bin/pip" install --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"; } >"$log" 2>&1; then
      rm -rf "$st_dir/venv"
      die "schemathesis $SCHEMATHESIS_VERSION did not install (log: $log)" "$log"
    fi
    "$st" --version >>"$log" 2>&1 || die "schemathesis installed but does not run (log: $log)" "$log"
  }
  install_schemathesis

  # Start what is not running; stop, at the end, only what this run started.
  trap stop_started EXIT
  missing=()
  for s in "${services[@]}"; do
    http_ok "http://$EDA_BIND_HOST:${PORTS[$s]}/healthz" || missing+=("$s")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    # services.sh starts every service (projection-service's views need the others' tables); the
    # ones that were running stay as they were and are not stopped here.
    for s in order-service inventory-service projection-service; do
      http_ok "http://$EDA_BIND_HOST:${PORTS[$s]}/healthz" || started+=("$s")
    done
    say "starting ${started[*]} (infra/services.sh up)"
    infra/services.sh up >&2 || die "the services did not start (infra/services.sh status)"
  fi

  # HS256 development tokens, minted here (the services' key is JWT_SECRET of infra/env.sh) so
  # that fuzzing does not wait on building pitfall-lab.
  mint() { # mint KEY USER [ROLE]: a token for USER signed with KEY, valid for two hours
    "$st_dir/venv/bin/python" - "$@" <<'PY'
import base64, hashlib, hmac, json, sys, time
def b64(raw): return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
key, user, roles = sys.argv[1], sys.argv[2], sys.argv[3:]
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": user, "exp": int(time.time()) + 7200, "roles": roles}).encode())
sig = b64(hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
  }
  declare -A TOKENS=(
    [valid]=$(mint "$JWT_SECRET" fuzz)
    [admin]=$(mint "$JWT_SECRET" fuzz-admin admin)
    [invalid]=$(mint "not-the-key-$JWT_SECRET" fuzz)
  )

  out="$EDA_RUN_DIR/fuzz"
  mkdir -p "$out"
  # A HAR file's entries: one per request schemathesis sent.
  count_requests() {
    "$st_dir/venv/bin/python" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["log"]["entries"]))' "$1" 2>/dev/null || echo 0
  }

  failed=()
  summary=()
  for s in "${services[@]}"; do
    COMPONENT=$s
    url="http://$EDA_BIND_HOST:${PORTS[$s]}"
    total=0
    rm -f "$out/$s-"*.log "$out/$s-"*.har
    # A dependency down would make every operation answer 503: fuzz a ready service only.
    ready() { http_ok "$url/readyz"; }
    wait_until 60 "$s /readyz (fuzzing needs the stack healthy: infra/stack.sh status)" "$EDA_RUN_DIR/$s/$s.log" "" ready
    for kind in ${KINDS[$s]}; do
      log="$out/$s-$kind.log" har="$out/$s-$kind.har"
      say "schemathesis, $kind token: $url/openapi.json (log: $log)"
      rc=0 exclude=()
      # Starting a rebuild of the views with made-up topics is not something to fuzz.
      [ "$kind" = admin ] && exclude=(--exclude-path-regex '^/admin/')
      # From .run/fuzz: schemathesis and hypothesis keep caches in the working directory.
      (cd "$out" && SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$here/fuzz" "$st" run "$url/openapi.json" \
        --header "Authorization: Bearer ${TOKENS[$kind]}" \
        --checks "$CHECKS" \
        --max-examples "${FUZZ_MAX_EXAMPLES:-${EXAMPLES[$s]}}" --workers "$FUZZ_WORKERS" --seed "$FUZZ_SEED" \
        --generation-database none --request-timeout 30 \
        --report har --report-har-path "$har" --no-color "${exclude[@]}") >"$log" 2>&1 || rc=$?
      n=$(count_requests "$har")
      total=$((total + n))
      if [ "$rc" -ne 0 ]; then
        warn "$kind token: schemathesis found problems (exit $rc, $n requests); see $log"
        sed -n '/FAILURES\|ERRORS/,$p' "$log" | head -n 80 >&2
        failed+=("$s ($kind token)")
      fi
    done
    summary+=("$(printf '%-19s %6d requests' "$s" "$total")")
    if [ "$total" -lt "$FUZZ_MIN_REQUESTS" ]; then
      warn "only $total requests, fewer than FUZZ_MIN_REQUESTS=$FUZZ_MIN_REQUESTS"
      failed+=("$s (too few requests)")
    fi
  done
  COMPONENT=fuzz
  printf '%s\n' "${summary[@]}"
  [ ${#failed[@]} -eq 0 ] || die "fuzzing failed: ${failed[*]} (logs and HAR files in $out)"
  say "no failures in $(IFS=+; echo "${services[*]}" | sed 's/+/, /g')"
}

# What this run started (global: the EXIT trap runs after main has returned).
started=()
stop_started() {
  for s in "${started[@]}"; do
    COMPONENT=$s say "stopping (started by make fuzz)"
    stop_pid "$EDA_RUN_DIR/$s/$s.pid" 30
  done
}

main "$@"; exit
