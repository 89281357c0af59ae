#!/bin/sh
# docker-compose's cdc-init: registers the Debezium table (CDC) connectors of the orders and
# inventory databases, whose change events feed projection-service, from the same template as
# the native stack (infra/debezium/cdc-connector.json). Runs after order-service and
# inventory-service are healthy (their migrations created the tables). A connector that
# exists already (HTTP 409) is left as it is.
set -eu
for db in orders inventory; do
  case "$db" in
    orders) tables="public.orders,public.order_items" ;;
    inventory) tables="public.stock,public.reservations" ;;
  esac
  sed -e "s/@CONNECTOR_NAME@/$db-cdc/g" -e "s/@DATABASE_HOST@/postgres/g" -e "s/@PG_PORT@/5432/g" \
    -e "s/@PG_USER@/eda/g" -e "s/@PG_PASSWORD@/eda/g" -e "s/@DATABASE_NAME@/$db/g" \
    -e "s/@SLOT_NAME@/${db}_cdc/g" -e "s/@SLOT_DROP_ON_STOP@/false/g" -e "s/@TABLES@/$tables/g" \
    -e "s/@TOPIC_PREFIX@/cdc.$db/g" /cdc-connector.json >/tmp/connector.json
  code=$(curl -sS -o /tmp/out -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    --data @/tmp/connector.json http://connect:8083/connectors)
  case "$code" in
    201|409) echo "connector $db-cdc: HTTP $code" ;;
    *) echo "Kafka Connect refused connector $db-cdc (HTTP $code): $(cat /tmp/out)" >&2; exit 1 ;;
  esac
done
