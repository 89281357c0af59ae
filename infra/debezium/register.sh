#!/usr/bin/env bash
# Registers (or updates) a Debezium connector of one service database with the running Kafka
# Connect.
# - Outbox connector: `make debezium-register` (orders), or `infra/debezium/register.sh inventory`.
#   The service must then run with RELAY_MODE=debezium so that only Debezium publishes its rows.
# - Table (CDC) connector, `--cdc`: change events of the service's CRUD tables for
#   projection-service, on topics cdc.<database>.public.<table> (`make up` registers both
#   databases' connectors once their services have created the tables).
#
#   infra/debezium/register.sh [--cdc] [DATABASE]      default: orders
#   infra/debezium/register.sh --delete [--cdc] [DATABASE]
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=infra/env.sh
source "$here/../env.sh"
# shellcheck source=infra/lib.sh
source "$here/../lib.sh"
COMPONENT=debezium

delete=0
cdc=0
if [ "${1:-}" = "--delete" ]; then delete=1; shift; fi
if [ "${1:-}" = "--cdc" ]; then cdc=1; shift; fi
db=${1:-orders}
if [ $cdc -eq 1 ]; then
  name="${db}-cdc"
  slot="${db}_cdc"
  template="$here/cdc-connector.json"
  # The CRUD tables each database's views are built from.
  case "$db" in
    orders) tables="public.orders,public.order_items" ;;
    inventory) tables="public.stock,public.reservations" ;;
    *) die "no CDC tables known for database $db (orders or inventory)" ;;
  esac
else
  name="${db}-outbox"
  slot="${db}_outbox"
  template="$here/outbox-connector.json"
  tables=""
fi

if [ $delete -eq 1 ]; then
  curl -fsS -X DELETE "$KAFKA_CONNECT_URL/connectors/$name" >/dev/null || die "cannot delete connector $name"
  say "deleted connector $name (replication slot $slot is kept; drop it with pg_drop_replication_slot if unused)"
  exit 0
fi

config=$(sed -e "s/@CONNECTOR_NAME@/$name/g" -e "s/@DATABASE_HOST@/$EDA_BIND_HOST/g" -e "s/@PG_PORT@/$PG_PORT/g" \
  -e "s/@PG_USER@/$PG_USER/g" -e "s/@PG_PASSWORD@/$PG_PASSWORD/g" -e "s/@DATABASE_NAME@/$db/g" \
  -e "s/@SLOT_NAME@/$slot/g" -e "s/@SLOT_DROP_ON_STOP@/false/g" -e "s/@TABLES@/$tables/g" \
  -e "s/@TOPIC_PREFIX@/cdc.$db/g" "$template")
# PUT /connectors/<name>/config creates or updates: idempotent.
body=$(python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["config"]))' <<<"$config")
code=$(curl -sS -o /tmp/eda-debezium-register.out -w '%{http_code}' -X PUT -H 'Content-Type: application/json' \
  --data "$body" "$KAFKA_CONNECT_URL/connectors/$name/config") || die "Kafka Connect unreachable at $KAFKA_CONNECT_URL (make infra-up)"
case "$code" in
  200|201) say "connector $name registered for database $db (slot $slot); status: $KAFKA_CONNECT_URL/connectors/$name/status" ;;
  *) die "Kafka Connect refused the connector (HTTP $code): $(cat /tmp/eda-debezium-register.out)" ;;
esac
