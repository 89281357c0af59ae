#!/usr/bin/env bash
# Runs the workspace's service binaries natively against the stack, with the same variable names
# docker-compose.yml gives them. Services are the packages under services/ that have an HTTP
# port below; anything else there (the pitfall-lab CLI) is not started.
#
#   infra/services.sh up | down | status | urls | pids | restart SERVICE
#
# restart stops one service and starts it again with the caller's environment, to switch its mode
# without touching the others (`PUBLISH_MODE=direct infra/services.sh restart order-service`). It
# does not build: it starts the binary the last `up` built (a mode switch never waits on cargo).
#
# EDA_SERVICES_PROFILE picks the cargo profile of the binaries (release by default; make test
# uses dev, whose binaries `cargo test` has just built).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=infra/env.sh
source "$here/env.sh"
# shellcheck source=infra/lib.sh
source "$here/lib.sh"

# service name -> "port database"
declare -A SERVICES=(
  [order-service]="$ORDER_SERVICE_PORT orders"
  [inventory-service]="$INVENTORY_SERVICE_PORT inventory"
  [projection-service]="$PROJECTION_SERVICE_PORT projection"
)
ORDER=(order-service inventory-service projection-service)

present() { for s in "${ORDER[@]}"; do [ -f "$EDA_ROOT/services/$s/Cargo.toml" ] && echo "$s"; done; return 0; }

cmd_up() {
  local list; list=${1:-$(present)}
  if [ -z "$list" ]; then say "no services in services/ yet: only the stack runs"; return 0; fi
  local profile=${EDA_SERVICES_PROFILE:-release} dir
  dir=$profile; [ "$profile" = dev ] && dir=debug
  # EDA_SERVICES_BUILD=0 starts the binaries as they are (make chaos builds once, then restarts).
  if [ "${2:-build}" = build ] && [ "${EDA_SERVICES_BUILD:-1}" != 0 ]; then
    # shellcheck disable=SC2046
    (cd "$EDA_ROOT" && cargo build --profile "$profile" $(printf -- '-p %s ' $list)) || die "cargo build of the services failed"
  fi
  local target; target=$(cd "$EDA_ROOT" && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  for s in $list; do
    COMPONENT=$s
    local pid="$EDA_RUN_DIR/$s/$s.pid" log="$EDA_RUN_DIR/$s/$s.log"
    read -r port db <<<"${SERVICES[$s]}"
    # The views are fed by Debezium table connectors on the other services' tables, which
    # exist once those services ran their migrations (they start first). PUT: idempotent.
    if [ "$s" = projection-service ]; then
      for source_db in orders inventory; do "$here/debezium/register.sh" --cdc "$source_db"; done
    fi
    if pid_alive "$pid"; then say "already running"; continue; fi
    wait_gone "$pid"
    refuse_busy_port "$port" "$s"
    say "starting on http://$EDA_BIND_HOST:$port (log: $log)"
    # EDA_DEV_MODE (infra/env.sh, 1 by default) lets the services accept the development JWT key.
    HTTP_HOST=$EDA_BIND_HOST HTTP_PORT=$port OTEL_SERVICE_NAME=$s EDA_DEV_MODE=$EDA_DEV_MODE \
      DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@$EDA_BIND_HOST:$PG_PORT/$db" \
      start_bg "$pid" "$log" "$target/$dir/$s"
    wait_until 60 "$s /healthz" "$log" "$pid" http_ok "http://$EDA_BIND_HOST:$port/healthz"
  done
}

cmd_down() {
  for ((i=${#ORDER[@]}-1; i>=0; i--)); do
    local s=${ORDER[$i]}
    COMPONENT=$s
    if pid_alive "$EDA_RUN_DIR/$s/$s.pid"; then say "stopping"; stop_pid "$EDA_RUN_DIR/$s/$s.pid" 30; fi
  done
}

cmd_status() {
  local bad=0
  for s in $(present); do
    read -r port _ <<<"${SERVICES[$s]}"
    local state=stopped
    if pid_alive "$EDA_RUN_DIR/$s/$s.pid"; then
      if http_ok "http://$EDA_BIND_HOST:$port/healthz"; then state=healthy; else state=unhealthy; bad=1; fi
    else bad=1
    fi
    printf '%-10s %-9s %s\n' "$s" "$state" "$EDA_RUN_DIR/$s/$s.log"
  done
  return $bad
}

cmd_urls() {
  for s in $(present); do
    read -r port _ <<<"${SERVICES[$s]}"
    printf '%-16s %s\n' "$s" "http://$EDA_BIND_HOST:$port"
  done
}

# "PROCESS PID LOG" per running service (for make chaos).
cmd_pids() {
  for s in $(present); do
    local pid="$EDA_RUN_DIR/$s/$s.pid"
    pid_alive "$pid" && printf '%s %s %s %s\n' "$s" "$(cat "$pid")" "$EDA_RUN_DIR/$s/$s.log" "$s"
  done
  return 0
}

# restart SERVICE: that service only, stopped then started with the caller's environment.
cmd_restart() {
  local s=${1:-}
  present | grep -x -- "$s" >/dev/null || die "restart: which service? one of: $(present | tr '\n' ' ')"
  COMPONENT=$s
  if pid_alive "$EDA_RUN_DIR/$s/$s.pid"; then say "stopping"; stop_pid "$EDA_RUN_DIR/$s/$s.pid" 30; fi
  cmd_up "$s" nobuild
}

case "${1:-}" in
  up) cmd_up ;;
  pids) cmd_pids ;;
  down) cmd_down ;;
  status) cmd_status ;;
  urls) cmd_urls ;;
  restart) cmd_restart "${2:-}" ;;
  *) echo "usage: infra/services.sh up|down|status|urls|pids|restart SERVICE" >&2; exit 2 ;;
esac
