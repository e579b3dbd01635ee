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
set -euo pipefail

# The one place the broker version is pinned (passed to Maven as -Dkafka.version).
KAFKA_VERSION_DEFAULT=4.1.1
KAFKA_VERSION="${KAFKA_VERSION:-$KAFKA_VERSION_DEFAULT}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"

KAFKA_HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
K_SRC="$ROOT/deploy/kafka"
K_DIR="$LOCAL/kafka"
K_LIBS="$K_DIR/libs"
K_STAMP="$K_LIBS/.fetched"
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

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

say() { printf '%s\n' "$*"; }
die() { printf 'stack: %s\n' "$*" >&2; exit 1; }
now_ms() { date +%s%3N; }
since() { local t0=$1 t1; t1=$(now_ms); printf '%d.%ds' $(((t1 - t0) / 1000)) $(((t1 - t0) % 1000 / 100)); }
is_root() { [[ $(id -u) -eq 0 ]]; }

# True while pid runs; a zombie (exited, not yet reaped by init) counts as gone.
alive() {
    local st
    kill -0 "$1" 2>/dev/null || return 1
    st=$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ "$st" != Z && "$st" != X ]]
}

# True when something accepts TCP connections on host:port.
port_open() { timeout 2 bash -c ": </dev/tcp/$1/$2" 2>/dev/null; }

# ---------------------------------------------------------------- Kafka

# Ready = the broker answers ApiVersions and a Metadata request lists at least one (unfenced)
# broker. Plain sockets, no client library needed.
kafka_probe() {
    command -v python3 >/dev/null || { port_open "$KAFKA_HOST" "$KAFKA_PORT"; return; }
    python3 - "$KAFKA_HOST" "$KAFKA_PORT" <<'PY'
import socket, struct, sys

def recvn(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf

def call(s, api_key, version, corr, body):
    client = b"stack.sh"
    msg = struct.pack(">hhih", api_key, version, corr, len(client)) + client + body
    s.sendall(struct.pack(">i", len(msg)) + msg)
    data = recvn(s, struct.unpack(">i", recvn(s, 4))[0])
    if struct.unpack(">i", data[:4])[0] != corr:
        raise ValueError("correlation id mismatch")
    return data[4:]

try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as s:
        s.settimeout(3)
        r = call(s, 18, 0, 1, b"")                     # ApiVersions v0
        err, n = struct.unpack(">hi", r[:6])
        if err:
            sys.exit(2)
        ranges = {}
        for i in range(n):
            k, lo, hi = struct.unpack(">hhh", r[6 + 6 * i:12 + 6 * i])
            ranges[k] = (lo, hi)
        lo, hi = ranges.get(3, (99, -1))                # Metadata, non-flexible v1..v8
        v = min(hi, 8)
        if v < max(lo, 1):
            sys.exit(3)
        body = struct.pack(">i", 0)                     # no topics: broker list only
        if v >= 4:
            body += b"\x00"                             # allow_auto_topic_creation
        if v >= 8:
            body += b"\x00\x00"                         # include_*_authorized_operations
        r = call(s, 3, v, 2, body)
        off = 4 if v >= 3 else 0                        # throttle_time_ms from v3
        sys.exit(0 if struct.unpack(">i", r[off:off + 4])[0] > 0 else 4)
except Exception:
    sys.exit(1)
PY
}

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

kafka_fetch() {
    local want tmp t0
    want="$KAFKA_VERSION $(sha256sum "$K_SRC/pom.xml" | cut -c1-16)"
    if [[ -f "$K_STAMP" && "$(<"$K_STAMP")" == "$want" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "kafka: mvn not found (needed once to fetch the broker jars)"
    say "kafka: fetching jars for $KAFKA_VERSION (maven) ..."
    t0=$(now_ms)
    tmp="$K_DIR/libs.tmp"
    rm -rf "$tmp"
    mkdir -p "$K_DIR"
    if ! mvn -f "$K_SRC/pom.xml" -B -q \
        -Dkafka.version="$KAFKA_VERSION" \
        -Dkafka.build.dir="$K_DIR/target" \
        -DincludeScope=runtime \
        -DoutputDirectory="$tmp" \
        dependency:copy-dependencies >"$K_DIR/fetch.log" 2>&1; then
        tail -n 30 "$K_DIR/fetch.log" >&2
        die "kafka: maven could not fetch kafka_2.13:$KAFKA_VERSION (full output: $K_DIR/fetch.log)"
    fi
    rm -rf "$K_LIBS" "$K_DIR/target"
    mv "$tmp" "$K_LIBS"
    printf '%s\n' "$want" >"$K_STAMP"
    say "kafka: $(find "$K_LIBS" -name '*.jar' | wc -l) jars in .local/kafka/libs ($(since "$t0"))"
}

# The JVM command line, as the distribution's kafka-run-class.sh would build it.
kafka_java_cmd() {
    local -a heap
    read -r -a heap <<<"$KAFKA_HEAP_OPTS"
    KAFKA_JAVA_CMD=("$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$K_SRC/log4j2.yaml"
        -cp "$K_LIBS/*")
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
        if kafka_probe; then
            say "kafka: already running (pid $pid) on $KAFKA_HOST:$KAFKA_PORT"
        else
            say "kafka: pid $pid is still starting ..."
            KAFKA_STARTED=1
        fi
        return 0
    fi
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        if kafka_probe; then
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
            # Same shape as Kafka's Uuid.randomUuid(): 16 random bytes, base64url, no padding,
            # never starting with '-'.
            python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break' >"$K_CLUSTER_ID"
        fi
        say "kafka: formatting storage (cluster id $(<"$K_CLUSTER_ID")) ..."
        kafka_java_cmd
        if ! "${KAFKA_JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$(<"$K_CLUSTER_ID")" -c "$K_CONF" \
            --standalone >"$K_DIR/format.log" 2>&1; then
            cat "$K_DIR/format.log" >&2
            die "kafka: formatting $K_DATA failed"
        fi
    fi

    [[ -f "$K_LOG" ]] && mv -f "$K_LOG" "$K_LOG.1"
    say "kafka: starting $KAFKA_VERSION on $KAFKA_HOST:$KAFKA_PORT (controller $KAFKA_HOST:$KAFKA_CONTROLLER_PORT) ..."
    kafka_java_cmd
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
        if kafka_probe; then
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
    local pid t0 i
    pid=$(kafka_pid)
    if [[ -z "$pid" ]]; then
        say "kafka: not running (nothing of ours to stop)"
        return 0
    fi
    t0=$(now_ms)
    say "kafka: stopping pid $pid ..."
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do  # controlled shutdown, up to 60 s
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "kafka: pid $pid ignored SIGTERM for 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    fi
    rm -f "$K_PID" "$K_RUNNING_VERSION"
    say "kafka: stopped ($(since "$t0"))"
}

kafka_status() {
    local pid
    pid=$(kafka_pid)
    if [[ -n "$pid" ]]; then
        if kafka_probe; then
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
