# Shell code shared by scripts/stack.sh (one Kafka node + Postgres) and scripts/cluster.sh
# (three Kafka nodes): the pinned Kafka release, its jars, the JVM command line, the readiness
# probe and small helpers. Sourced, not run; the sourcing script sets SCRIPT_TAG (the prefix
# of `die` lines) first.
#
# Environment overrides: KAFKA_VERSION, JAVA_HOME.

# The one place the broker version is pinned (passed to Maven as -Dkafka.version).
KAFKA_VERSION_DEFAULT=4.1.1
KAFKA_VERSION="${KAFKA_VERSION:-$KAFKA_VERSION_DEFAULT}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"

K_SRC="$ROOT/deploy/kafka"
K_DIR="$LOCAL/kafka"
K_LIBS="$K_DIR/libs"
K_STAMP="$K_LIBS/.fetched"

if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi

say() { printf '%s\n' "$*"; }
die() { printf '%s: %s\n' "${SCRIPT_TAG:-kafka}" "$*" >&2; exit 1; }
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

# kafka_broker_ids HOST PORT: prints the ids of the brokers the broker on HOST:PORT lists as
# registered and unfenced, sorted, on one line ("1 2 3"); fails when it does not answer
# ApiVersions and Metadata. Plain sockets, no client library needed.
kafka_broker_ids() {
    command -v python3 >/dev/null || return 1
    python3 - "$1" "$2" <<'PY'
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
        (count,) = struct.unpack(">i", r[off:off + 4])
        off += 4
        ids = []
        for _ in range(count):                          # node_id, host, port, rack (v1+)
            (node,) = struct.unpack(">i", r[off:off + 4])
            (size,) = struct.unpack(">h", r[off + 4:off + 6])
            off += 6 + size + 4
            (size,) = struct.unpack(">h", r[off:off + 2])
            off += 2 + max(size, 0)
            ids.append(node)
        print(" ".join(str(i) for i in sorted(ids)))
except Exception:
    sys.exit(1)
PY
}

# kafka_probe HOST PORT [MIN_BROKERS] [NODE_ID]: true when the broker on HOST:PORT answers and
# lists at least MIN_BROKERS (default 1) registered, unfenced brokers, NODE_ID among them.
kafka_probe() {
    local host=$1 port=$2 min=${3:-1} node=${4:-} ids
    command -v python3 >/dev/null || { port_open "$host" "$port"; return; }
    ids=$(kafka_broker_ids "$host" "$port") || return 1
    read -r -a ids <<<"$ids"
    ((${#ids[@]} >= min && ${#ids[@]} > 0)) || return 1
    [[ -z "$node" || " ${ids[*]} " == *" $node "* ]]
}

# Fetches the broker's jars into .local/kafka/libs with Maven, once per version and pom.
kafka_libs_fetched() {
    [[ -f "$K_STAMP" && "$(<"$K_STAMP")" == "$KAFKA_VERSION $(sha256sum "$K_SRC/pom.xml" | cut -c1-16)" ]]
}

kafka_fetch() {
    local want tmp t0
    want="$KAFKA_VERSION $(sha256sum "$K_SRC/pom.xml" | cut -c1-16)"
    if kafka_libs_fetched; then
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

# kafka_java_cmd "HEAP OPTS": sets KAFKA_JAVA_CMD to the JVM command line, as the
# distribution's kafka-run-class.sh would build it.
kafka_java_cmd() {
    local -a heap
    read -r -a heap <<<"$1"
    KAFKA_JAVA_CMD=("$JAVA" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$K_SRC/log4j2.yaml"
        -cp "$K_LIBS/*")
}

# Prints a new id in the shape of Kafka's Uuid.randomUuid() (cluster and directory ids):
# 16 random bytes, base64url, no padding, never starting with '-'.
kafka_new_uuid() {
    python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

# kafka_stop_pid NAME PID: SIGTERM (a controlled shutdown), up to 60 s, then SIGKILL.
kafka_stop_pid() {
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do  # controlled shutdown, up to 60 s
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "$name: pid $pid ignored SIGTERM for 60s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    fi
}
