#!/usr/bin/env bash
# `make bench`: benchmarks against the running stack (started if needed). Prints numbers; never
# fails on speed. Each benchmark uses its own database and topics. BENCH_ROWS, BENCH_MEMORY_ROWS,
# BENCH_SECONDS, BENCH_EVENTS, BENCH_PROPAGATION_EVENTS, BENCH_LARGE_EVENTS (5 MiB events per
# mode; 4x as many of 1 MiB), BENCH_ES_ORDERS shrink or grow the runs.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here/.."
# shellcheck source=infra/env.sh
source infra/env.sh
# shellcheck source=infra/lib.sh
source infra/lib.sh
COMPONENT=bench

rows=${BENCH_ROWS:-100000}
memory_rows=${BENCH_MEMORY_ROWS:-1000000}
seconds=${BENCH_SECONDS:-15}

infra/stack.sh up >/dev/null
cargo build --release -q -p pitfall-lab
lab() { "$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/pitfall-lab" "$@"; }

echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; Kafka $KAFKA_VERSION, Debezium $DEBEZIUM_VERSION, PostgreSQL $PG_MAJOR"
lab bench drain --rows "$rows"

# The ceiling: Kafka's own producer performance tool, same record size and producer settings.
topic="bench_perf_$$"
java -Xmx256m -cp "$EDA_CACHE_DIR/kafka-$KAFKA_VERSION/libs/*" -Dlog4j2.configurationFile="$EDA_ROOT/infra/kafka/log4j2.properties" -Dkafka.log.level=WARN \
  org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --create --topic "$topic" --partitions 6 --replication-factor 1 >/dev/null
echo "kafka-producer-perf-test ($rows records of 700 bytes, the relay's message size with headers):"
java -Xmx512m -cp "$EDA_CACHE_DIR/kafka-$KAFKA_VERSION/libs/*" -Dlog4j2.configurationFile="$EDA_ROOT/infra/kafka/log4j2.properties" -Dkafka.log.level=WARN \
  org.apache.kafka.tools.ProducerPerformance --topic "$topic" --num-records "$rows" --record-size 700 --throughput -1 \
  --producer-props bootstrap.servers="$KAFKA_BOOTSTRAP_SERVERS" acks=all enable.idempotence=true compression.type=lz4 linger.ms=5 \
  2>&1 | tail -n 1 | sed 's/^/  /'
java -Xmx256m -cp "$EDA_CACHE_DIR/kafka-$KAFKA_VERSION/libs/*" -Dlog4j2.configurationFile="$EDA_ROOT/infra/kafka/log4j2.properties" -Dkafka.log.level=WARN \
  org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "$topic" >/dev/null || true

lab bench latency --rate 1000 --seconds "$seconds"
lab bench http --seconds "$seconds" --concurrency 16
# The same with the services' telemetry (spans exported to Jaeger), propagation on and off.
lab bench http --seconds "$seconds" --concurrency 16 --export true --propagation on
lab bench http --seconds "$seconds" --concurrency 16 --export true --propagation off
lab bench memory --rows "$memory_rows"
lab bench consumer --events "${BENCH_EVENTS:-100000}"
# Propagation overhead: one process per mode (telemetry is set up once per process).
for args in "--propagation on" "--propagation off" "--propagation off --export false"; do
  # shellcheck disable=SC2086
  lab bench propagation --events "${BENCH_PROPAGATION_EVENTS:-50000}" $args
done

# Pitfall 4: large payloads. Codecs, large events per mode, small events beside large ones,
# consumer memory at 50 MiB.
large=${BENCH_LARGE_EVENTS:-50}
lab bench codecs
lab bench large-throughput --events-5mb "$large" --events-1mb "$((large * 4))"
lab bench large-latency --seconds "$seconds"
lab bench large-rss

# Pitfall 2: the event-sourced side (load by replay vs CRUD row; rebuild by replay), then the
# CRUD + CDC side (catch-up of the same number of orders, commit-to-view latency).
lab bench event-sourcing --orders "${BENCH_ES_ORDERS:-100000}"
lab bench projection --orders "${BENCH_ES_ORDERS:-100000}" --seconds "$seconds"
