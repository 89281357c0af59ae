# shellcheck shell=bash
# MinIO built from source with `go install` at a pinned pseudo-version (MinIO's community
# edition ships as source only). The claim-check bucket is created at start.

MINIO_BIN="$EDA_CACHE_DIR/minio-$MINIO_VERSION/minio"
MINIO_HOME="$EDA_RUN_DIR/minio"
MINIO_LOG="$MINIO_HOME/minio.log"
MINIO_PID="$MINIO_HOME/minio.pid"

need_go() {
  need go "install Go 1.24 or newer (MinIO and Jaeger are built from source)"
}

minio_install() {
  [ -x "$MINIO_BIN" ] && return 0
  need_go
  local log="$EDA_CACHE_DIR/go-build-minio.log"
  say "building MinIO $MINIO_VERSION with go install (a few minutes; log: $log)"
  mkdir -p "$EDA_CACHE_DIR"
  GOBIN="$(dirname "$MINIO_BIN")" CGO_ENABLED=0 go install "github.com/minio/minio@$MINIO_VERSION" >"$log" 2>&1 \
    || die "go install github.com/minio/minio@$MINIO_VERSION failed (log: $log)" "$log"
}

minio_running() { pid_alive "$MINIO_PID"; }
minio_ready() { http_ok "$S3_ENDPOINT/minio/health/ready"; }
minio_healthy() { minio_running && minio_ready; }

# MinIO answers every write with 507 XMinioStorageFull once less than 1% of its drive would stay
# free (diskFillFraction in its source); say so at start instead of failing later, per object.
minio_check_space() {
  local free total need
  read -r free total < <(disk_mib "$MINIO_HOME/data") \
    || die "cannot read the free space of $MINIO_HOME/data (df failed)"
  need=$((total / 100 + 512))
  [ "$free" -ge "$need" ] || die "MinIO refuses writes when less than 1% of its drive is free: \
$MINIO_HOME/data has $free MiB free of $total MiB, it needs at least $need MiB. Free some space \
(Rust target dirs grow large: cargo clean here, and CI's cached target dir) and run again"
}

minio_start() {
  mkdir -p "$MINIO_HOME/data"
  minio_check_space
  minio_running && { minio_ensure_bucket; return 0; }
  wait_gone "$MINIO_PID"
  refuse_busy_port "$MINIO_PORT" "MinIO S3 API"
  refuse_busy_port "$MINIO_CONSOLE_PORT" "MinIO console"
  say "starting S3 API on $S3_ENDPOINT, console on http://$EDA_BIND_HOST:$MINIO_CONSOLE_PORT"
  MINIO_ROOT_USER="$MINIO_ROOT_USER" MINIO_ROOT_PASSWORD="$MINIO_ROOT_PASSWORD" \
    MINIO_UPDATE=off MINIO_CALLHOME_ENABLE=off \
    start_bg "$MINIO_PID" "$MINIO_LOG" "$MINIO_BIN" server --quiet --anonymous \
      --address "$EDA_BIND_HOST:$MINIO_PORT" --console-address "$EDA_BIND_HOST:$MINIO_CONSOLE_PORT" "$MINIO_HOME/data"
  wait_until 60 "MinIO on port $MINIO_PORT" "$MINIO_LOG" "$MINIO_PID" minio_ready
  minio_ensure_bucket
}

# Bucket creation with curl's built-in SigV4 signing: no extra client to install.
minio_ensure_bucket() {
  local code
  code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -X PUT \
    --user "$MINIO_ROOT_USER:$MINIO_ROOT_PASSWORD" --aws-sigv4 "aws:amz:$AWS_REGION:s3" \
    "$S3_ENDPOINT/$S3_BUCKET") || die "cannot reach MinIO to create bucket $S3_BUCKET (log: $MINIO_LOG)" "$MINIO_LOG"
  case "$code" in
    200|409) ;;  # created, or already ours
    *) die "creating bucket $S3_BUCKET returned HTTP $code (log: $MINIO_LOG)" "$MINIO_LOG" ;;
  esac
}

minio_stop() { stop_pid "$MINIO_PID" 30; }
minio_log() { echo "$MINIO_LOG"; }
minio_describe() {
  echo "MinIO            $S3_ENDPOINT (bucket $S3_BUCKET; console http://$EDA_BIND_HOST:$MINIO_CONSOLE_PORT, $MINIO_ROOT_USER/$MINIO_ROOT_PASSWORD)"
}
