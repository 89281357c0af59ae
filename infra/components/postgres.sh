# shellcheck shell=bash
# PostgreSQL from Debian's packages, run from its own data directory under $EDA_RUN_DIR so it
# never touches (or depends on) a cluster the machine may already run.

PG_BIN="/usr/lib/postgresql/$PG_MAJOR/bin"

# Where the cluster lives: $EDA_RUN_DIR/postgres, unless the server must run as the 'postgres'
# account (we are root) and that account cannot reach $EDA_RUN_DIR (a checkout under /root, say);
# then a directory under /var/tmp derived from $EDA_RUN_DIR, so each checkout keeps its own.
pg_paths() {
  PG_HOME="$EDA_RUN_DIR/postgres"
  if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
    mkdir -p "$EDA_RUN_DIR"
    if ! runuser -u postgres -- test -x "$EDA_RUN_DIR" 2>/dev/null; then
      PG_HOME="/var/tmp/eda-pitfalls-$(printf '%s' "$EDA_RUN_DIR" | sha256sum | cut -c1-12)/postgres"
    fi
  fi
  PG_DATA="$PG_HOME/data"
  PG_SOCK="$PG_HOME/sock"
  PG_LOG="$PG_HOME/postgres.log"
}
pg_paths

postgres_install() {
  if [ ! -x "$PG_BIN/postgres" ]; then
    # Debian's package creates and starts a 'main' cluster on 5432 unless told not to; this
    # project runs its own, so ask postgresql-common not to create one.
    apt_install postgresql-common
    local conf=/etc/postgresql-common/createcluster.d
    if [ -d "$conf" ] || mkdir -p "$conf" 2>/dev/null; then
      echo "create_main_cluster = false" >"$conf/eda-pitfalls.conf" 2>/dev/null || true
    fi
    apt_install "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR"
  fi
  [ -x "$PG_BIN/postgres" ] || die "PostgreSQL $PG_MAJOR binaries not found in $PG_BIN after install"
}

pg_ctl_() { run_as_service_user "$PG_BIN/pg_ctl" -D "$PG_DATA" "$@"; }
psql_() { PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -h "$EDA_BIND_HOST" -p "$PG_PORT" -U "$PG_USER" -v ON_ERROR_STOP=1 -qtA "$@"; }

postgres_running() {
  [ -f "$PG_DATA/postmaster.pid" ] && pg_ctl_ status >/dev/null 2>&1 \
    && ! pid_dying "$(head -n 1 "$PG_DATA/postmaster.pid")"
}

# After a postmaster was killed -9 its backends notice and exit within moments, but while one
# is alive it holds the old shared memory and a new postmaster refuses to start. They keep the
# postmaster's process group: wait for that group to empty.
postgres_wait_orphans() {
  local old start=$SECONDS
  [ -f "$PG_DATA/postmaster.pid" ] || return 0
  old=$(head -n 1 "$PG_DATA/postmaster.pid")
  [[ $old =~ ^[0-9]+$ ]] || return 0
  while pgrep -g "$old" >/dev/null 2>&1 && (( SECONDS - start < 30 )); do sleep 0.2; done
}
postgres_healthy() { postgres_running && "$PG_BIN/pg_isready" -q -h "$EDA_BIND_HOST" -p "$PG_PORT"; }

postgres_start() {
  pg_paths  # the 'postgres' account may only exist since postgres_install
  postgres_running && { postgres_ensure_databases; return 0; }
  postgres_wait_orphans
  refuse_busy_port "$PG_PORT" "PostgreSQL"
  mkdir -p "$PG_HOME" "$PG_SOCK"
  [ "$PG_HOME" = "$EDA_RUN_DIR/postgres" ] || say "the 'postgres' account cannot reach $EDA_RUN_DIR; the cluster lives in $PG_HOME"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres:postgres "$PG_HOME" "$PG_SOCK"
    runuser -u postgres -- test -w "$PG_HOME" \
      || die "the 'postgres' account cannot write $PG_HOME (a parent directory is not traversable); set EDA_RUN_DIR to a path it can reach"
  fi
  if [ ! -f "$PG_DATA/PG_VERSION" ]; then
    say "initialising a cluster in $PG_DATA"
    local pwfile; pwfile=$(mktemp)
    printf '%s\n' "$PG_PASSWORD" >"$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres "$pwfile"
    run_as_service_user "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_USER" --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >>"$PG_LOG" 2>&1 \
      || { rm -f "$pwfile"; die "initdb failed (log: $PG_LOG)" "$PG_LOG"; }
    rm -f "$pwfile"
  fi
  [ "$(id -u)" -eq 0 ] && touch "$PG_LOG" && chown postgres "$PG_LOG"
  say "starting on $EDA_BIND_HOST:$PG_PORT"
  # wal_level=logical and replication slots: Debezium reads the outbox through logical decoding.
  pg_ctl_ start -w -t 60 -l "$PG_LOG" -o "-p $PG_PORT -k $PG_SOCK -c listen_addresses=$EDA_BIND_HOST \
    -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=300 \
    -c shared_buffers=256MB -c log_min_messages=warning" >/dev/null \
    || die "did not start (log: $PG_LOG)" "$PG_LOG"
  postgres_ensure_databases
}

postgres_ensure_databases() {
  for db in $PG_DATABASES; do
    if [ -z "$(psql_ -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" ]; then
      psql_ -d postgres -c "CREATE DATABASE \"$db\"" || die "cannot create database $db (log: $PG_LOG)" "$PG_LOG"
    fi
  done
}

postgres_stop() {
  postgres_running || return 0
  pg_ctl_ stop -m fast -w -t 60 >/dev/null || die "did not stop (log: $PG_LOG)" "$PG_LOG"
}

postgres_log() { echo "$PG_LOG"; }
postgres_describe() {
  echo "PostgreSQL $PG_MAJOR    postgres://$PG_USER:$PG_PASSWORD@$EDA_BIND_HOST:$PG_PORT/{${PG_DATABASES// /,}}  (wal_level=logical)"
}
