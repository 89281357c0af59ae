#!/usr/bin/env bash
# Runs the workspace's service binaries natively against the stack, with the same variable names
# docker-compose.yml gives them. Services are the packages under services/ that have an HTTP
# port below; anything else there (the pitfall-lab CLI) is not started.
#
#   infra/services.sh up | down | status
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
  local list; list=$(present)
  if [ -z "$list" ]; then say "no services in services/ yet: only the stack runs"; return 0; fi
  # shellcheck disable=SC2046
  (cd "$EDA_ROOT" && cargo build --release $(printf -- '-p %s ' $list)) || die "cargo build of the services failed"
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
    refuse_busy_port "$port" "$s"
    say "starting on http://$EDA_BIND_HOST:$port (log: $log)"
    # EDA_DEV_MODE (infra/env.sh, 1 by default) lets the services accept the development JWT key.
    HTTP_HOST=$EDA_BIND_HOST HTTP_PORT=$port OTEL_SERVICE_NAME=$s EDA_DEV_MODE=$EDA_DEV_MODE \
      DATABASE_URL="postgres://$PG_USER:$PG_PASSWORD@$EDA_BIND_HOST:$PG_PORT/$db" \
      start_bg "$pid" "$log" "$target/release/$s"
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

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  urls) cmd_urls ;;
  *) echo "usage: infra/services.sh up|down|status|urls" >&2; exit 2 ;;
esac
