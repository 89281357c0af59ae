# shellcheck shell=bash
# The native stack's settings: every port, credential, version and directory in one place.
# Each value can be overridden by exporting the variable before running `make` or infra/stack.sh.
# docker-compose.yml publishes the same ports and passes the same variable names to the services.

EDA_ROOT="${EDA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"

# Where installed components are cached (survives `make down` and fresh clones).
: "${EDA_CACHE_DIR:=${XDG_CACHE_HOME:-$HOME/.cache}/eda-pitfalls}"
# Where running components keep their data, pid files and logs (one directory, per checkout).
: "${EDA_RUN_DIR:=$EDA_ROOT/.run}"

# Bind address of every component. Loopback by default: nothing is exposed beyond this machine.
: "${EDA_BIND_HOST:=127.0.0.1}"

# ---- pinned versions -------------------------------------------------------------------------
: "${PG_MAJOR:=15}"                       # Debian bookworm's PostgreSQL
: "${KAFKA_VERSION:=4.3.1}"               # the Kafka line Debezium 3.6 is built on (4.4 removed a class it uses)
: "${DEBEZIUM_VERSION:=3.6.1.Final}"      # infra/debezium/pom.xml
: "${MINIO_VERSION:=v0.0.0-20260212201848-7aac2a2c5b7c}"  # github.com/minio/minio pseudo-version
: "${JAEGER_MODULE_VERSION:=v1.76.0}"     # infra/jaeger/go.mod; this module tag is Jaeger v2 (cmd/jaeger)

# ---- PostgreSQL ------------------------------------------------------------------------------
: "${PG_PORT:=5432}"
: "${PG_USER:=eda}"
: "${PG_PASSWORD:=eda}"
: "${PG_DATABASES:=orders inventory projection}"

# ---- Kafka (KRaft, combined broker + controller nodes) ---------------------------------------
# One broker by default. KAFKA_BROKERS=3 is the replicated profile: three processes, each with
# its own ports (node N: KAFKA_PORT + 2(N-1), KAFKA_CONTROLLER_PORT + 2(N-1)) and data
# (.run/kafka, .run/kafka-2, .run/kafka-3), every topic with replication factor 3 and
# min.insync.replicas 2, so one broker can die without losing or refusing an acknowledged write.
# Switching profiles needs `make clean-run` (the data of one is not the other's cluster).
: "${KAFKA_BROKERS:=1}"
: "${KAFKA_PORT:=9092}"
: "${KAFKA_CONTROLLER_PORT:=9093}"
if [ -z "${KAFKA_REPLICATION_FACTOR:-}" ]; then
  if [ "$KAFKA_BROKERS" -ge 3 ] 2>/dev/null; then KAFKA_REPLICATION_FACTOR=3; else KAFKA_REPLICATION_FACTOR=1; fi
fi
if [ -z "${KAFKA_MIN_INSYNC_REPLICAS:-}" ]; then
  if [ "$KAFKA_REPLICATION_FACTOR" -ge 3 ] 2>/dev/null; then KAFKA_MIN_INSYNC_REPLICAS=2; else KAFKA_MIN_INSYNC_REPLICAS=1; fi
fi
: "${KAFKA_PARTITIONS:=6}"
# The services' event topics, then the change-event topics of the CDC connectors
# (infra/debezium/register.sh --cdc) that projection-service consumes; each with its .dlq.
: "${KAFKA_TOPICS:=order.events inventory.events order.events.dlq inventory.events.dlq cdc.orders.public.orders cdc.orders.public.order_items cdc.inventory.public.stock cdc.inventory.public.reservations cdc.orders.public.orders.dlq cdc.orders.public.order_items.dlq cdc.inventory.public.stock.dlq cdc.inventory.public.reservations.dlq}"
: "${KAFKA_HEAP_OPTS:=-Xms256m -Xmx1g}"

# ---- Kafka Connect + Debezium -----------------------------------------------------------------
: "${CONNECT_PORT:=8083}"
: "${CONNECT_HEAP_OPTS:=-Xms256m -Xmx1g}"

# ---- MinIO -----------------------------------------------------------------------------------
: "${MINIO_PORT:=9000}"
: "${MINIO_CONSOLE_PORT:=9001}"
: "${MINIO_ROOT_USER:=minioadmin}"
: "${MINIO_ROOT_PASSWORD:=minioadmin}"
: "${S3_BUCKET:=eda-claim-checks}"
: "${AWS_REGION:=us-east-1}"

# ---- Jaeger v2 -------------------------------------------------------------------------------
: "${JAEGER_OTLP_GRPC_PORT:=4317}"
: "${JAEGER_OTLP_HTTP_PORT:=4318}"
: "${JAEGER_UI_PORT:=16686}"
: "${JAEGER_QUERY_GRPC_PORT:=16685}"
: "${JAEGER_HEALTH_PORT:=13133}"

# ---- what clients (services, tests) use, derived from the above --------------------------------
: "${DATABASE_ADMIN_URL:=postgres://$PG_USER:$PG_PASSWORD@$EDA_BIND_HOST:$PG_PORT/postgres}"
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  KAFKA_BOOTSTRAP_SERVERS=$EDA_BIND_HOST:$KAFKA_PORT
  for ((eda_n = 2; eda_n <= ${KAFKA_BROKERS:-1}; eda_n++)); do
    KAFKA_BOOTSTRAP_SERVERS+=",$EDA_BIND_HOST:$((KAFKA_PORT + 2 * (eda_n - 1)))"
  done
  unset eda_n
fi
: "${KAFKA_CONNECT_URL:=http://$EDA_BIND_HOST:$CONNECT_PORT}"
: "${S3_ENDPOINT:=http://$EDA_BIND_HOST:$MINIO_PORT}"
: "${OTEL_EXPORTER_OTLP_ENDPOINT:=http://$EDA_BIND_HOST:$JAEGER_OTLP_HTTP_PORT}"
: "${JAEGER_QUERY_URL:=http://$EDA_BIND_HOST:$JAEGER_UI_PORT}"

# Variables handed to child processes (services, cargo test).
EDA_EXPORTED_VARS=(
  EDA_CACHE_DIR EDA_RUN_DIR PG_PORT PG_USER PG_PASSWORD DATABASE_ADMIN_URL
  KAFKA_BOOTSTRAP_SERVERS KAFKA_BROKERS KAFKA_REPLICATION_FACTOR KAFKA_MIN_INSYNC_REPLICAS
  KAFKA_CONNECT_URL S3_ENDPOINT S3_BUCKET AWS_REGION
  MINIO_ROOT_USER MINIO_ROOT_PASSWORD OTEL_EXPORTER_OTLP_ENDPOINT JAEGER_QUERY_URL
)
export "${EDA_EXPORTED_VARS[@]}"

# ---- the services (issues 3-5 add them; names shared with docker-compose.yml) ------------------
: "${ORDER_SERVICE_PORT:=8080}"
: "${INVENTORY_SERVICE_PORT:=8081}"
: "${PROJECTION_SERVICE_PORT:=8082}"
# Development-only signing key for the services' HS256 bearer tokens; override outside a laptop.
: "${JWT_SECRET:=eda-pitfalls-dev-secret-change-me}"
# The key above is published in this repository: the services refuse it unless EDA_DEV_MODE=1.
# The native stack is for a laptop, so it sets that; with your own JWT_SECRET, EDA_DEV_MODE=0.
: "${EDA_DEV_MODE:=1}"
: "${AWS_ACCESS_KEY_ID:=$MINIO_ROOT_USER}"
: "${AWS_SECRET_ACCESS_KEY:=$MINIO_ROOT_PASSWORD}"
EDA_EXPORTED_VARS+=(ORDER_SERVICE_PORT INVENTORY_SERVICE_PORT PROJECTION_SERVICE_PORT JWT_SECRET
  EDA_DEV_MODE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY)
export "${EDA_EXPORTED_VARS[@]}"
