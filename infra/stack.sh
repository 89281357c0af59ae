#!/usr/bin/env bash
# The native stack: real PostgreSQL, Kafka (KRaft), Kafka Connect + Debezium, MinIO and Jaeger v2
# as background processes, no Docker. Settings live in infra/env.sh; `make help` shows the
# targets that call this script.
#
#   infra/stack.sh install [COMPONENT...]   install (idempotent, cached in $EDA_CACHE_DIR)
#   infra/stack.sh up      [COMPONENT...]   install if needed, start, wait until healthy
#   infra/stack.sh down    [COMPONENT...]   stop (reverse order)
#   infra/stack.sh status                   health of every component; exit 1 if any is down
#   infra/stack.sh logs    [COMPONENT]      log file paths and their last lines
#   infra/stack.sh urls                     where everything listens
#   infra/stack.sh env                      `export` lines for clients (eval "$(infra/stack.sh env)")
#   infra/stack.sh topics                   create the Kafka topics that are missing
#   infra/stack.sh clean                    stop everything and delete its data (caches stay)
#   infra/stack.sh pids                     "PROCESS PID LOG COMPONENT" per running process (for
#                                           make chaos: kafka-N per broker, postgres's postmaster)
#
# With EDA_STARTED_FILE set, `up` appends the components it actually started to that file, so a
# caller (make test) can stop exactly those afterwards.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=infra/env.sh
source "$here/env.sh"
# shellcheck source=infra/lib.sh
source "$here/lib.sh"
for f in "$here"/components/*.sh; do
  # shellcheck source=/dev/null
  source "$f"
done

ALL=(postgres kafka connect minio jaeger)

components() {
  if [ $# -eq 0 ]; then printf '%s\n' "${ALL[@]}"; return; fi
  for c in "$@"; do
    [[ " ${ALL[*]} " == *" $c "* ]] || { COMPONENT=stack die "unknown component '$c' (known: ${ALL[*]})"; }
    echo "$c"
  done
}

cmd_install() {
  need curl "install curl (Debian: curl)" 2>/dev/null || apt_install curl
  mkdir -p "$EDA_CACHE_DIR"
  for c in $(components "$@"); do
    local t=$SECONDS
    COMPONENT=$c "${c}_install"
    (( SECONDS - t > 1 )) && COMPONENT=$c say "installed in $((SECONDS - t))s"
  done
  return 0
}

cmd_up() {
  cmd_install "$@"
  mkdir -p "$EDA_RUN_DIR"
  for c in $(components "$@"); do
    local was_running=0
    COMPONENT=$c "${c}_running" && was_running=1
    COMPONENT=$c "${c}_start"
    [ "$c" = kafka ] && COMPONENT=kafka kafka_create_topics
    if [ $was_running -eq 0 ] && [ -n "${EDA_STARTED_FILE:-}" ]; then echo "$c" >>"$EDA_STARTED_FILE"; fi
  done
  return 0
}

cmd_down() {
  local list; list=$(components "$@" | tac)
  for c in $list; do
    if COMPONENT=$c "${c}_running"; then
      COMPONENT=$c say "stopping"
      COMPONENT=$c "${c}_stop"
    fi
  done
}

cmd_status() {
  local bad=0
  printf '%-10s %-9s %s\n' COMPONENT STATE "LOG"
  for c in "${ALL[@]}"; do
    local state
    if COMPONENT=$c "${c}_healthy" 2>/dev/null; then state=healthy
    elif COMPONENT=$c "${c}_running" 2>/dev/null; then state=unhealthy; bad=1
    else state=stopped; bad=1
    fi
    printf '%-10s %-9s %s\n' "$c" "$state" "$("${c}_log")"
  done
  return $bad
}

cmd_logs() {
  local n=${LINES_TAIL:-30}
  for c in $(components "$@"); do
    local log
    for log in $("${c}_log"); do
      printf '\n==> %s: %s\n' "$c" "$log"
      if [ -f "$log" ]; then tail -n "$n" "$log"; else echo "(no log yet)"; fi
    done
  done
}

cmd_urls() {
  for c in "${ALL[@]}"; do "${c}_describe"; done
  echo "Logs             $EDA_RUN_DIR/<component>/<component>.log"
}

cmd_pids() {
  local n pid
  pg_paths
  if postgres_running; then printf 'postgres %s %s postgres\n' "$(head -n 1 "$PG_DATA/postmaster.pid")" "$PG_LOG"; fi
  for n in $(kafka_nodes); do
    kafka_node_running "$n" && printf 'kafka-%s %s %s kafka\n' "$n" "$(cat "$(kafka_node_pid "$n")")" "$(kafka_node_log "$n")"
  done
  for c in connect minio jaeger; do
    local var="${c^^}_PID"
    pid=${!var}
    pid_alive "$pid" && printf '%s %s %s %s\n' "$c" "$(cat "$pid")" "$("${c}_log")" "$c"
  done
  return 0
}

cmd_env() {
  for v in "${EDA_EXPORTED_VARS[@]}"; do printf 'export %s=%q\n' "$v" "${!v}"; done
}

cmd_clean() {
  cmd_down
  pg_paths
  [ "$PG_HOME" = "$EDA_RUN_DIR/postgres" ] || rm -rf "$(dirname "$PG_HOME")"
  rm -rf "$EDA_RUN_DIR"
  say "deleted $EDA_RUN_DIR"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  up)      shift; cmd_up "$@" ;;
  down)    shift; cmd_down "$@" ;;
  status)  shift; cmd_status ;;
  logs)    shift; cmd_logs "$@" ;;
  urls)    shift; cmd_urls ;;
  env)     shift; cmd_env ;;
  topics)  shift; COMPONENT=kafka kafka_create_topics ;;
  clean)   shift; cmd_clean ;;
  pids)    shift; cmd_pids ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
