#!/usr/bin/env bash
# `make chaos`: kill -9 the system's processes at random under a steady load of orders and
# cancellations, bring each back with `make up`'s scripts, then wait until every accepted order
# settled and audit the system (pitfall-lab chaos; its summary is the last thing printed).
#
#   CHAOS_KILLS=200 (make test runs 20)   KAFKA_BROKERS=3 for the replicated profile
#   CHAOS_RATE=10 orders/s                CHAOS_SEED=<n> repeats a run's choices
#   CHAOS_TARGETS=order-service,...       (default: every service, kafka, postgres, connect, minio)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=infra/env.sh
source "$here/env.sh"
# shellcheck source=infra/lib.sh
source "$here/lib.sh"
COMPONENT=chaos
cd "$EDA_ROOT"

profile=${EDA_SERVICES_PROFILE:-release}
dir=$profile; [ "$profile" = dev ] && dir=debug
# Built once; the restarts during the round start the binaries as they are.
cargo build -q --profile "$profile" -p pitfall-lab -p order-service -p inventory-service -p projection-service \
  || die "cargo build of pitfall-lab and the services failed"
export EDA_SERVICES_BUILD=0
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

summary="$EDA_RUN_DIR/chaos/summary.json"
mkdir -p "$(dirname "$summary")"
args=(chaos --kills "${CHAOS_KILLS:-200}" --rate "${CHAOS_RATE:-10}" --json "$summary")
[ -n "${CHAOS_SEED:-}" ] && args+=(--seed "$CHAOS_SEED")
[ -n "${CHAOS_TARGETS:-}" ] && args+=(--targets "$CHAOS_TARGETS")
say "$target/$dir/pitfall-lab ${args[*]}"
EDA_ROOT="$EDA_ROOT" ORDER_SERVICE_URL="http://$EDA_BIND_HOST:$ORDER_SERVICE_PORT" \
  INVENTORY_SERVICE_URL="http://$EDA_BIND_HOST:$INVENTORY_SERVICE_PORT" \
  "$target/$dir/pitfall-lab" "${args[@]}" || die "the chaos round failed (summary above; restarts logged in $EDA_RUN_DIR/chaos/chaos.log)"
say "summary: $summary"
