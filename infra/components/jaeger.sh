# shellcheck shell=bash
# Jaeger v2 (cmd/jaeger, an OpenTelemetry Collector distribution) built from source with the
# pinned module in infra/jaeger/go.mod, in-memory storage, configured by infra/jaeger/config.yaml.

JAEGER_BIN="$EDA_CACHE_DIR/jaeger-$JAEGER_MODULE_VERSION/jaeger"
JAEGER_HOME="$EDA_RUN_DIR/jaeger"
JAEGER_LOG="$JAEGER_HOME/jaeger.log"
JAEGER_PID="$JAEGER_HOME/jaeger.pid"

jaeger_install() {
  local stamp; stamp=$(cat "$EDA_ROOT/infra/jaeger/go.mod" "$EDA_ROOT/infra/jaeger/go.sum" | sha256sum | cut -c1-16)
  [ -x "$JAEGER_BIN" ] && [ -f "$JAEGER_BIN.$stamp" ] && return 0
  need_go
  local src="$EDA_CACHE_DIR/jaeger-src" log="$EDA_CACHE_DIR/go-build-jaeger.log"
  say "building Jaeger ($JAEGER_MODULE_VERSION) with go build (a few minutes; log: $log)"
  rm -rf "$src"; mkdir -p "$src" "$(dirname "$JAEGER_BIN")"
  cp "$EDA_ROOT/infra/jaeger/go.mod" "$EDA_ROOT/infra/jaeger/go.sum" "$src/"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$JAEGER_BIN" github.com/jaegertracing/jaeger/cmd/jaeger) >"$log" 2>&1 \
    || die "building github.com/jaegertracing/jaeger/cmd/jaeger failed (log: $log)" "$log"
  rm -f "$JAEGER_BIN".*; touch "$JAEGER_BIN.$stamp"
}

jaeger_running() { pid_alive "$JAEGER_PID"; }
jaeger_ready() { http_ok "http://$EDA_BIND_HOST:$JAEGER_HEALTH_PORT/status" && http_ok "$JAEGER_QUERY_URL/api/services"; }
jaeger_healthy() { jaeger_running && jaeger_ready; }

jaeger_start() {
  jaeger_running && return 0
  wait_gone "$JAEGER_PID"
  for p in "$JAEGER_OTLP_GRPC_PORT" "$JAEGER_OTLP_HTTP_PORT" "$JAEGER_UI_PORT" "$JAEGER_QUERY_GRPC_PORT" "$JAEGER_HEALTH_PORT"; do
    refuse_busy_port "$p" "Jaeger"
  done
  mkdir -p "$JAEGER_HOME"
  say "starting OTLP on :$JAEGER_OTLP_GRPC_PORT (gRPC) / :$JAEGER_OTLP_HTTP_PORT (HTTP), query on $JAEGER_QUERY_URL"
  JAEGER_LISTEN_HOST="$EDA_BIND_HOST" JAEGER_OTLP_GRPC_PORT="$JAEGER_OTLP_GRPC_PORT" \
    JAEGER_OTLP_HTTP_PORT="$JAEGER_OTLP_HTTP_PORT" JAEGER_UI_PORT="$JAEGER_UI_PORT" \
    JAEGER_HEALTH_PORT="$JAEGER_HEALTH_PORT" JAEGER_QUERY_GRPC_PORT="$JAEGER_QUERY_GRPC_PORT" \
    start_bg "$JAEGER_PID" "$JAEGER_LOG" "$JAEGER_BIN" --config "file:$EDA_ROOT/infra/jaeger/config.yaml"
  wait_until 60 "Jaeger query API on $JAEGER_QUERY_URL" "$JAEGER_LOG" "$JAEGER_PID" jaeger_ready
}

jaeger_stop() { stop_pid "$JAEGER_PID" 20; }
jaeger_log() { echo "$JAEGER_LOG"; }
jaeger_describe() {
  echo "Jaeger v2        UI/query $JAEGER_QUERY_URL, OTLP gRPC :$JAEGER_OTLP_GRPC_PORT, OTLP HTTP $OTEL_EXPORTER_OTLP_ENDPOINT"
}
