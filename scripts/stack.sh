#!/usr/bin/env bash
# Local service stack for tests and the demo: one Apache Kafka broker (KRaft, broker+controller)
# on 127.0.0.1:9092 and one Postgres on 127.0.0.1:5432 with the database itep_webhooks.
#
#   scripts/stack.sh up       start what is not running yet (idempotent; fast when already up)
#   scripts/stack.sh down     stop only what `up` started (our pid file / our data dir)
#   scripts/stack.sh status   one line per service
#
# Everything generated lives under .local/ (git-ignored):
#   .local/kafka/{libs,data,server.properties,kafka.log,kafka.pid}
#   .local/pg/{data,run,postgres.log}
#
# Needs: java 17+, mvn (first run only, jars come from Maven Central), python3 (readiness probe),
# Debian's postgresql package (installed with apt-get when missing and running as root).
#
# Environment overrides: KAFKA_VERSION, KAFKA_HEAP_OPTS, KAFKA_START_TIMEOUT (s), JAVA_HOME.
# The Kafka release, its jars and the helpers shared with scripts/cluster.sh: scripts/kafka-lib.sh.
set -euo pipefail

SCRIPT_TAG=stack
# shellcheck source=scripts/kafka-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kafka-lib.sh"

KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
K_DATA="$K_DIR/data"
K_CONF="$K_DIR/server.properties"
K_LOG="$K_DIR/kafka.log"
K_PID="$K_DIR/kafka.pid"
K_RUNNING_VERSION="$K_DIR/kafka.version"
K_CLUSTER_ID="$K_DIR/cluster.id"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"

PG_HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
PG_DB=itep_webhooks
PG_DIR="$LOCAL/pg"
PG_DATA="$PG_DIR/data"
PG_RUN="$PG_DIR/run"
PG_LOG="$PG_DIR/postgres.log"

# ---------------------------------------------------------------- Kafka

# Prints the pid of the broker that `up` started, if it is still alive; clears a stale pid file.
kafka_pid() {
    [[ -f "$K_PID" ]] || return 0
    local pid
    pid=$(<"$K_PID")
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $K_CONF"; then
        printf '%s\n' "$pid"
    else
        rm -f "$K_PID"
    fi
}

# Starts our broker in the background (does not wait for it). Sets KAFKA_STARTED=1 when it did.
KAFKA_STARTED=0
KAFKA_T0=0
kafka_start() {
    local pid
    KAFKA_T0=$(now_ms)
    pid=$(kafka_pid)
    if [[ -n "$pid" ]]; then
        local running
        running=$(cat "$K_RUNNING_VERSION" 2>/dev/null || echo '?')
        if [[ "$running" != "$KAFKA_VERSION" ]]; then
            say "kafka: note: running broker is $running, requested $KAFKA_VERSION (run down, then up)"
        fi
        if kafka_probe "$KAFKA_HOST" "$KAFKA_PORT"; then
            say "kafka: already running (pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
        else
            say "kafka: pid $pid is still starting ..."
            KAFKA_STARTED=1
        fi
        return 0
    fi
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        if kafka_probe "$KAFKA_HOST" "$KAFKA_PORT"; then
            say "kafka: a broker not started by this script answers on $KAFKA_HOST:$KAFKA_PORT; using it"
            return 0
        fi
        die "kafka: $KAFKA_HOST:$KAFKA_PORT is taken by something that does not answer as a ready Kafka broker"
    fi
    if port_open "$KAFKA_HOST" "$KAFKA_CONTROLLER_PORT"; then
        die "kafka: controller port $KAFKA_HOST:$KAFKA_CONTROLLER_PORT is taken by another process"
    fi

    kafka_fetch

    mkdir -p "$K_DATA"
    sed "s#@DATA_DIR@#$K_DATA#g" "$K_SRC/server.properties" >"$K_CONF"

    if [[ ! -f "$K_DATA/meta.properties" ]]; then
        if [[ ! -s "$K_CLUSTER_ID" ]]; then
            kafka_new_uuid >"$K_CLUSTER_ID"
        fi
        say "kafka: formatting storage (cluster id $(<"$K_CLUSTER_ID")) ..."
        kafka_java_cmd "$KAFKA_HEAP_OPTS"
        if ! "${KAFKA_JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$(<"$K_CLUSTER_ID")" -c "$K_CONF" \
            --standalone >"$K_DIR/format.log" 2>&1; then
            cat "$K_DIR/format.log" >&2
            die "kafka: formatting $K_DATA failed"
        fi
    fi

    [[ -f "$K_LOG" ]] && mv -f "$K_LOG" "$K_LOG.1"
    say "kafka: starting $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller $KAFKA_HOST:$KAFKA_CONTROLLER_PORT) ..."
    kafka_java_cmd "$KAFKA_HEAP_OPTS"
    # Not a process-group leader here, so setsid execs in place and $! is the JVM's pid.
    # fd 9 (the stack.sh lock) must not leak into the long-lived broker.
    nohup setsid "${KAFKA_JAVA_CMD[@]}" kafka.Kafka "$K_CONF" >"$K_LOG" 2>&1 </dev/null 9>&- &
    printf '%s\n' "$!" >"$K_PID"
    printf '%s\n' "$KAFKA_VERSION" >"$K_RUNNING_VERSION"
    KAFKA_STARTED=1
}

kafka_wait() {
    [[ $KAFKA_STARTED -eq 1 ]] || return 0
    local deadline pid
    deadline=$(($(date +%s) + KAFKA_START_TIMEOUT))
    pid=$(<"$K_PID")
    while :; do
        if ! alive "$pid"; then
            rm -f "$K_PID"
            tail -n 40 "$K_LOG" >&2 || true
            die "kafka: the broker exited during startup (log: $K_LOG)"
        fi
        if kafka_probe "$KAFKA_HOST" "$KAFKA_PORT"; then
            say "kafka: ready on $KAFKA_HOST:$KAFKA_PORT ($(since "$KAFKA_T0"))"
            return 0
        fi
        if (($(date +%s) >= deadline)); then
            tail -n 40 "$K_LOG" >&2 || true
            die "kafka: not ready after ${KAFKA_START_TIMEOUT}s (pid $pid still running; log: $K_LOG)"
        fi
        sleep 0.5
    done
}

kafka_stop() {
    local pid t0
    pid=$(kafka_pid)
    if [[ -z "$pid" ]]; then
        say "kafka: not running (nothing of ours to stop)"
        return 0
    fi
    t0=$(now_ms)
    say "kafka: stopping pid $pid ..."
    kafka_stop_pid kafka "$pid"
    rm -f "$K_PID" "$K_RUNNING_VERSION"
    say "kafka: stopped ($(since "$t0"))"
}

kafka_status() {
    local pid
    pid=$(kafka_pid)
    if [[ -n "$pid" ]]; then
        if kafka_probe "$KAFKA_HOST" "$KAFKA_PORT"; then
            say "kafka: running (ours, pid $pid, Kafka $(cat "$K_RUNNING_VERSION" 2>/dev/null || echo '?')) on $KAFKA_HOST:$KAFKA_PORT"
        else
            say "kafka: starting or unhealthy (ours, pid $pid) - not answering on $KAFKA_HOST:$KAFKA_PORT yet"
        fi
    elif port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        say "kafka: something not started by this script listens on $KAFKA_HOST:$KAFKA_PORT (not ours)"
    else
        say "kafka: stopped"
    fi
}

# ---------------------------------------------------------------- Postgres

# The bin dir matching our data dir's version, else the newest installed.
pg_bin() {
    if [[ -f "$PG_DATA/PG_VERSION" && -x "/usr/lib/postgresql/$(<"$PG_DATA/PG_VERSION")/bin/initdb" ]]; then
        printf '%s\n' "/usr/lib/postgresql/$(<"$PG_DATA/PG_VERSION")/bin"
        return 0
    fi
    local d
    d=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/initdb' 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$d" ]] && dirname "$d"
    return 0
}

# Runs a Postgres server tool as the postgres OS user when we are root (initdb/pg_ctl refuse root).
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# True when a Postgres accepts connections on PG_HOST:PG_PORT.
pg_answers() {
    local b
    b=$(pg_bin)
    if [[ -n "$b" && -x "$b/pg_isready" ]]; then
        "$b/pg_isready" -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        port_open "$PG_HOST" "$PG_PORT"
    fi
}

# Prints the postmaster pid of our instance (data dir under .local/pg) if it is running.
pg_pid() {
    [[ -f "$PG_DATA/postmaster.pid" ]] || return 0
    local pid
    pid=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$PG_DATA"; then
        printf '%s\n' "$pid"
    fi
    return 0
}

pg_psql() {
    local b psql=psql
    b=$(pg_bin)
    [[ -n "$b" && -x "$b/psql" ]] && psql="$b/psql"
    PGCONNECT_TIMEOUT=5 "$psql" -w -X -q -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$@"
}

pg_ensure_db() {
    local have err
    if ! have=$(pg_psql -d postgres -tAc "select 1 from pg_database where datname='$PG_DB'" 2>&1); then
        err=$(printf '%s' "$have" | tail -n 1)
        say "pg: cannot connect as $PG_USER@$PG_HOST:$PG_PORT with trust auth ($err);" \
            "make sure $PG_DB exists and set DATABASE_URL yourself"
        return 0
    fi
    if [[ "$have" != "1" ]]; then
        pg_psql -d postgres -c "create database $PG_DB" >/dev/null
        say "pg: created database $PG_DB"
    fi
}

pg_install() {
    if [[ -n "$(pg_bin)" ]]; then
        return 0
    fi
    is_root || die "pg: Postgres is not installed (no /usr/lib/postgresql/*/bin/initdb); install Debian's postgresql package (needs root)"
    say "pg: installing Debian's postgresql package (apt-get) ..."
    mkdir -p "$PG_DIR"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
        >"$PG_DIR/apt.log" 2>&1; then
        tail -n 20 "$PG_DIR/apt.log" >&2
        die "pg: apt-get install postgresql failed (log: $PG_DIR/apt.log)"
    fi
    [[ -n "$(pg_bin)" ]] || die "pg: postgresql installed but no initdb found under /usr/lib/postgresql"
}

pg_start() {
    local t0 pid b sockdir
    t0=$(now_ms)
    pid=$(pg_pid)
    if [[ -n "$pid" ]]; then
        say "pg: already running (pid $pid) on $PG_HOST:$PG_PORT"
        pg_ensure_db
        return 0
    fi
    if pg_answers; then
        say "pg: a Postgres not started by this script answers on $PG_HOST:$PG_PORT; using it"
        pg_ensure_db
        return 0
    fi
    pg_install
    # Installing the package may have created and started Debian's own cluster on 5432.
    if pg_answers; then
        say "pg: the freshly installed Debian cluster answers on $PG_HOST:$PG_PORT; using it"
        pg_ensure_db
        return 0
    fi
    if port_open "$PG_HOST" "$PG_PORT"; then
        die "pg: $PG_HOST:$PG_PORT is taken by something that is not a ready Postgres"
    fi
    if is_root; then
        id postgres >/dev/null 2>&1 || die "pg: OS user postgres is missing (it comes with Debian's postgresql-common)"
    fi

    b=$(pg_bin)
    mkdir -p "$PG_DIR" "$PG_RUN"
    if [[ ! -f "$PG_DATA/PG_VERSION" ]]; then
        say "pg: initdb $PG_DATA ($(basename "$(dirname "$b")")) ..."
        mkdir -p "$PG_DATA"
        is_root && chown -R postgres:postgres "$PG_DIR"
        chmod 700 "$PG_DATA"
        if ! as_pg "$b/initdb" -D "$PG_DATA" --auth=trust -U "$PG_USER" --encoding=UTF8 \
            --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1; then
            cat "$PG_DIR/initdb.log" >&2
            die "pg: initdb failed"
        fi
        printf "\n# Local-stack settings, rewritten by scripts/stack.sh on every start.\ninclude_if_exists = 'stack.conf'\n" \
            >>"$PG_DATA/postgresql.conf"
    fi
    # Unix socket under .local (kept off Debian's /var/run/postgresql); socket paths are
    # limited to ~107 bytes, so a very deep checkout runs TCP-only.
    sockdir="$PG_RUN"
    ((${#PG_RUN} + 16 < 100)) || sockdir=""
    cat >"$PG_DATA/stack.conf" <<EOF
listen_addresses = '$PG_HOST'
port = $PG_PORT
unix_socket_directories = '$sockdir'
max_connections = 200
EOF
    # A postmaster.pid whose process is gone (or a zombie that init has not reaped yet, which
    # postgres would still take for a live postmaster) is stale after a crash: drop it.
    if [[ -f "$PG_DATA/postmaster.pid" ]] && ! alive "$(head -n 1 "$PG_DATA/postmaster.pid")"; then
        rm -f "$PG_DATA/postmaster.pid"
    fi
    is_root && chown -R postgres:postgres "$PG_DIR"
    say "pg: starting on $PG_HOST:$PG_PORT ..."
    if ! as_pg "$b/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 60 start >/dev/null 2>&1 9>&-; then
        tail -n 30 "$PG_LOG" >&2 || true
        die "pg: pg_ctl start failed (log: $PG_LOG)"
    fi
    pg_ensure_db
    say "pg: ready on $PG_HOST:$PG_PORT ($(since "$t0"))"
}

pg_stop() {
    local pid t0
    pid=$(pg_pid)
    if [[ -z "$pid" ]]; then
        say "pg: not running (nothing of ours to stop)"
        return 0
    fi
    t0=$(now_ms)
    say "pg: stopping pid $pid ..."
    as_pg "$(pg_bin)/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >/dev/null
    say "pg: stopped ($(since "$t0"))"
}

pg_status() {
    local pid
    pid=$(pg_pid)
    if [[ -n "$pid" ]]; then
        say "pg: running (ours, pid $pid, Postgres $(<"$PG_DATA/PG_VERSION"), .local/pg/data) on $PG_HOST:$PG_PORT, db $PG_DB"
    elif pg_answers; then
        say "pg: a Postgres not started by this script answers on $PG_HOST:$PG_PORT (not ours)"
    else
        say "pg: stopped"
    fi
}

# ---------------------------------------------------------------- main

usage() { say "usage: $0 up|down|status"; }

[[ $# -eq 1 ]] || { usage >&2; exit 2; }

mkdir -p "$LOCAL"
# One stack.sh at a time per checkout.
exec 9>"$LOCAL/stack.lock"
flock -w 300 9 || die "another scripts/stack.sh is still running (lock $LOCAL/stack.lock)"

case "$1" in
    up)
        t_all=$(now_ms)
        kafka_start   # the JVM boots while Postgres starts
        pg_start
        kafka_wait
        say "stack: up ($(since "$t_all")) - KAFKA_BOOTSTRAP_SERVERS=$KAFKA_HOST:$KAFKA_PORT DATABASE_URL=postgresql://$PG_USER@$PG_HOST:$PG_PORT/$PG_DB"
        ;;
    down)
        kafka_stop
        pg_stop
        ;;
    status)
        kafka_status
        pg_status
        ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
