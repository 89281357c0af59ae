#!/usr/bin/env bash
# `make bench`: benchmarks against the running stack (started if needed). Prints numbers and
# where it is; never fails on speed. Each benchmark uses its own database and topics. Ends with a
# report (Markdown, PNG charts, raw JSON) in the folder it prints (BENCH_RESULTS_DIR, default
# .run/bench/<UTC time>). BENCH_ROWS, BENCH_MEMORY_ROWS, BENCH_SECONDS, BENCH_EVENTS,
# BENCH_PROPAGATION_EVENTS, BENCH_LARGE_EVENTS (5 MiB events per mode; 4x as many of 1 MiB),
# BENCH_ES_ORDERS, BENCH_LATENCY_RATES, BENCH_HTTP_RATES shrink or grow the runs.
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

# Every benchmark's output and raw numbers go here; `bench report` turns them into report.md.
results=${BENCH_RESULTS_DIR:-$EDA_RUN_DIR/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$results"
export BENCH_RESULTS_DIR=$results
machine="$(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB; Kafka $KAFKA_VERSION, Debezium $DEBEZIUM_VERSION, PostgreSQL $PG_MAJOR"
echo "machine: $machine"
echo "results: $results"

steps=18
step_no=0
started=$SECONDS
# step NAME COMMAND...: runs one benchmark, shows where the run is, keeps its output.
step() {
  local name=$1
  shift
  step_no=$((step_no + 1))
  printf '\n[%d/%d] %s (%dm%02ds into the run)\n' "$step_no" "$steps" "$name" $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60))
  "$@" 2>&1 | tee "$results/$(printf '%02d' "$step_no")-$name.txt"
}

step drain lab bench drain --rows "$rows"

# The ceiling: Kafka's own producer performance tool, same record size and producer settings.
kafka_tool() {
  java -Xmx512m -cp "$EDA_CACHE_DIR/kafka-$KAFKA_VERSION/libs/*" -Dlog4j2.configurationFile="$EDA_ROOT/infra/kafka/log4j2.properties" -Dkafka.log.level=WARN "$@"
}
producer_perf() {
  local topic="bench_perf_$$" line
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --create --topic "$topic" --partitions 6 --replication-factor 1 >/dev/null
  echo "kafka-producer-perf-test ($rows records of 700 bytes, the relay's message size with headers):"
  line=$(kafka_tool org.apache.kafka.tools.ProducerPerformance --topic "$topic" --num-records "$rows" --record-size 700 --throughput -1 \
    --producer-props bootstrap.servers="$KAFKA_BOOTSTRAP_SERVERS" acks=all enable.idempotence=true compression.type=lz4 linger.ms=5 2>&1 | tail -n 1)
  echo "  $line"
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP_SERVERS" --delete --topic "$topic" >/dev/null || true
  python3 - "$line" "$results/producer-perf.json" <<'PY'
import json, re, sys
m = re.search(r"([0-9.]+) records/sec", sys.argv[1])
if m:
    json.dump({"records_per_second": float(m.group(1)), "line": sys.argv[1]}, open(sys.argv[2], "w"))
PY
}
step producer-perf producer_perf

step latency lab bench latency --rates "${BENCH_LATENCY_RATES:-500,1000,2000}" --seconds "$seconds"
# Open-loop rates stay below the closed-loop maximum (about 1,500 orders/s here): above it the
# queue grows for as long as the run lasts, and that is all such a run would show.
step http lab bench http --seconds "$seconds" --concurrency 16 --rates "${BENCH_HTTP_RATES:-250,500,1000}"
# The same with the services' telemetry (spans exported to Jaeger), propagation on and off.
step http-telemetry-on lab bench http --seconds "$seconds" --concurrency 16 --export true --propagation on
step http-telemetry-off lab bench http --seconds "$seconds" --concurrency 16 --export true --propagation off
step memory lab bench memory --rows "$memory_rows"
step consumer lab bench consumer --events "${BENCH_EVENTS:-100000}"
# Propagation overhead: one process per mode (telemetry is set up once per process).
step propagation-on lab bench propagation --events "${BENCH_PROPAGATION_EVENTS:-50000}" --propagation on
step propagation-off lab bench propagation --events "${BENCH_PROPAGATION_EVENTS:-50000}" --propagation off
step propagation-none lab bench propagation --events "${BENCH_PROPAGATION_EVENTS:-50000}" --propagation off --export false

# Pitfall 4: large payloads. Codecs, large events per mode, small events beside large ones,
# consumer memory at 50 MiB.
large=${BENCH_LARGE_EVENTS:-50}
step codecs lab bench codecs
step large-throughput lab bench large-throughput --events-5mb "$large" --events-1mb "$((large * 4))"
step large-latency lab bench large-latency --seconds "$seconds"
step large-rss lab bench large-rss

# Pitfall 2: the event-sourced side (load by replay vs CRUD row; rebuild by replay), then the
# CRUD + CDC side (catch-up of the same number of orders, commit-to-view latency).
step event-sourcing lab bench event-sourcing --orders "${BENCH_ES_ORDERS:-100000}"
step projection lab bench projection --orders "${BENCH_ES_ORDERS:-100000}" --seconds "$seconds"

step report lab bench report --dir "$results" --machine "$machine" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
rm -f "$results/$(printf '%02d' "$step_no")-report.txt"
printf '\nmake bench: done in %dm%02ds; report: %s/report.md\n' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)) "$results"
