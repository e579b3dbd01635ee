#!/usr/bin/env bash
# Local three-node Apache Kafka cluster for cluster tests and fault drills: the release of
# scripts/stack.sh (same jars in .local/kafka/libs), three processes each combined broker and
# controller (a KRaft quorum of three), on loopback ports apart from the one-node stack:
#
#   node 1: broker 127.0.0.1:19092, controller 127.0.0.1:19192
#   node 2: broker 127.0.0.1:19093, controller 127.0.0.1:19193
#   node 3: broker 127.0.0.1:19094, controller 127.0.0.1:19194
#
#   scripts/cluster.sh up        start the nodes not running; wait until 3 brokers are registered
#   scripts/cluster.sh down      stop every node this script started (SIGTERM, all at once)
#   scripts/cluster.sh status    one line per node, and the brokers the cluster lists
#   scripts/cluster.sh stop N    SIGTERM node N (controlled shutdown) and wait for its exit
#   scripts/cluster.sh kill N    SIGKILL node N (a crash)
#   scripts/cluster.sh start N   start node N again; wait until it is registered
#   scripts/cluster.sh pid N     print node N's pid (nothing when it is not running)
#
# Everything generated lives under .local/cluster/ (git-ignored): cluster.id,
# initial-controllers, kafka.version and per node <N>/{data,server.properties,kafka.log,kafka.pid}.
# Broker settings: deploy/kafka/cluster.properties (replication factor 3, min.insync.replicas
# 2, unclean leader election off). Postgres is not part of it: `make up` runs that.
#
# Environment overrides: KAFKA_VERSION, CLUSTER_HEAP_OPTS, CLUSTER_START_TIMEOUT (s), JAVA_HOME.
set -euo pipefail

SCRIPT_TAG=cluster
# shellcheck source=scripts/kafka-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kafka-lib.sh"

C_HOST=127.0.0.1
C_NODES=(1 2 3)
C_DIR="$LOCAL/cluster"
C_CLUSTER_ID="$C_DIR/cluster.id"
C_INITIAL="$C_DIR/initial-controllers"
C_RUNNING_VERSION="$C_DIR/kafka.version"
CLUSTER_HEAP_OPTS="${CLUSTER_HEAP_OPTS:--Xms128m -Xmx384m}"
CLUSTER_START_TIMEOUT="${CLUSTER_START_TIMEOUT:-120}"

broker_port() { printf '%d\n' $((19091 + $1)); }
controller_port() { printf '%d\n' $((19191 + $1)); }
node_dir() { printf '%s\n' "$C_DIR/$1"; }
node_conf() { printf '%s\n' "$C_DIR/$1/server.properties"; }
node_pid_file() { printf '%s\n' "$C_DIR/$1/kafka.pid"; }
node_log() { printf '%s\n' "$C_DIR/$1/kafka.log"; }
node_data() { printf '%s\n' "$C_DIR/$1/data"; }

bootstrap_servers() {
    local n out=()
    for n in "${C_NODES[@]}"; do out+=("$C_HOST:$(broker_port "$n")"); done
    (IFS=,; printf '%s\n' "${out[*]}")
}

controller_servers() {
    local n out=()
    for n in "${C_NODES[@]}"; do out+=("$C_HOST:$(controller_port "$n")"); done
    (IFS=,; printf '%s\n' "${out[*]}")
}

# Prints the pid of node N if this script started it and it still runs; clears a stale file.
node_pid() {
    local file pid
    file=$(node_pid_file "$1")
    [[ -f "$file" ]] || return 0
    pid=$(<"$file")
    if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" \
        && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "kafka.Kafka $(node_conf "$1")"; then
        printf '%s\n' "$pid"
    else
        rm -f "$file"
    fi
}

check_node_arg() {
    [[ "${1:-}" =~ ^[123]$ ]] || { usage >&2; exit 2; }
}

# The brokers the cluster lists, as seen from the first node that answers ("1 2 3").
registered_brokers() {
    local n ids
    for n in "${C_NODES[@]}"; do
        if ids=$(kafka_broker_ids "$C_HOST" "$(broker_port "$n")" 2>/dev/null); then
            printf '%s\n' "$ids"
            return 0
        fi
    done
    return 1
}

# Formats the three nodes' storage once, for a quorum of all three (KIP-853 dynamic quorum):
# one cluster id, a directory id per node, and the same --initial-controllers value on each.
format_cluster() {
    local n formatted=() missing=() voters=() pids=() failed=0
    for n in "${C_NODES[@]}"; do
        if [[ -f "$(node_data "$n")/meta.properties" ]]; then formatted+=("$n"); else missing+=("$n"); fi
    done
    ((${#missing[@]} > 0)) || return 0
    if ((${#formatted[@]} > 0)); then
        die "node(s) ${missing[*]} have no data while node(s) ${formatted[*]} do: a node cannot" \
            "rejoin the quorum with a fresh log; run scripts/cluster.sh down, remove .local/cluster and run up again"
    fi
    kafka_new_uuid >"$C_CLUSTER_ID"
    for n in "${C_NODES[@]}"; do
        voters+=("$n@$C_HOST:$(controller_port "$n"):$(kafka_new_uuid)")
    done
    (IFS=,; printf '%s\n' "${voters[*]}") >"$C_INITIAL"
    say "cluster: formatting 3 nodes (cluster id $(<"$C_CLUSTER_ID"), initial controllers $(<"$C_INITIAL")) ..."
    kafka_java_cmd "$CLUSTER_HEAP_OPTS"
    for n in "${C_NODES[@]}"; do
        "${KAFKA_JAVA_CMD[@]}" kafka.tools.StorageTool format -t "$(<"$C_CLUSTER_ID")" \
            -c "$(node_conf "$n")" --initial-controllers "$(<"$C_INITIAL")" \
            >"$(node_dir "$n")/format.log" 2>&1 9>&- &
        pids+=("$!")
    done
    for n in "${C_NODES[@]}"; do
        if ! wait "${pids[$((n - 1))]}"; then
            cat "$(node_dir "$n")/format.log" >&2
            failed=1
        fi
    done
    ((failed == 0)) || die "formatting failed (logs: .local/cluster/<node>/format.log)"
}

write_conf() {
    local n=$1
    mkdir -p "$(node_data "$n")"
    sed -e "s#@NODE_ID@#$n#g" \
        -e "s#@PORT@#$(broker_port "$n")#g" \
        -e "s#@CONTROLLER_PORT@#$(controller_port "$n")#g" \
        -e "s#@CONTROLLERS@#$(controller_servers)#g" \
        -e "s#@DATA_DIR@#$(node_data "$n")#g" \
        "$K_SRC/cluster.properties" >"$(node_conf "$n")"
}

# Starts node N in the background (does not wait). Prints nothing when it already runs.
launch_node() {
    local n=$1 pid log
    pid=$(node_pid "$n")
    [[ -z "$pid" ]] || return 0
    if port_open "$C_HOST" "$(broker_port "$n")" || port_open "$C_HOST" "$(controller_port "$n")"; then
        die "kafka-$n: port $(broker_port "$n") or $(controller_port "$n") is taken by a process this script did not start"
    fi
    [[ -f "$(node_data "$n")/meta.properties" ]] \
        || die "kafka-$n: not formatted (run scripts/cluster.sh up)"
    log=$(node_log "$n")
    [[ -f "$log" ]] && mv -f "$log" "$log.1"
    kafka_java_cmd "$CLUSTER_HEAP_OPTS"
    # Not a process-group leader here, so setsid execs in place and $! is the JVM's pid.
    # fd 8 and 9 (the locks) must not leak into the long-lived broker.
    nohup setsid "${KAFKA_JAVA_CMD[@]}" kafka.Kafka "$(node_conf "$n")" >"$log" 2>&1 </dev/null 8>&- 9>&- &
    printf '%s\n' "$!" >"$(node_pid_file "$n")"
    say "kafka-$n: starting (pid $!) on $C_HOST:$(broker_port "$n"), controller $C_HOST:$(controller_port "$n")"
}

# wait_nodes MIN NODE...: until every NODE answers on its broker port listing at least MIN
# brokers, itself among them.
wait_nodes() {
    local min=$1 deadline n pid pending
    shift
    deadline=$(($(date +%s) + CLUSTER_START_TIMEOUT))
    while :; do
        pending=()
        for n in "$@"; do
            pid=$(node_pid "$n")
            if [[ -z "$pid" ]]; then
                tail -n 40 "$(node_log "$n")" >&2 || true
                die "kafka-$n: exited during startup (log: $(node_log "$n"))"
            fi
            kafka_probe "$C_HOST" "$(broker_port "$n")" "$min" "$n" || pending+=("$n")
        done
        ((${#pending[@]} == 0)) && return 0
        if (($(date +%s) >= deadline)); then
            die "kafka-${pending[0]}: not registered after ${CLUSTER_START_TIMEOUT}s (brokers listed: $(registered_brokers || echo none); logs: .local/cluster/<node>/kafka.log)"
        fi
        sleep 0.5
    done
}

fetch_jars() {
    kafka_libs_fetched && return 0
    # The one-node stack fetches into the same place: one fetch at a time.
    exec 8>"$LOCAL/stack.lock"
    flock -w 300 8 || die "another scripts/stack.sh is still running (lock $LOCAL/stack.lock)"
    kafka_fetch
    exec 8>&-
}

cluster_up() {
    local t0 n running=()
    t0=$(now_ms)
    for n in "${C_NODES[@]}"; do [[ -n "$(node_pid "$n")" ]] && running+=("$n"); done
    if ((${#running[@]} == 3)) && kafka_probe "$C_HOST" "$(broker_port 1)" 3; then
        say "cluster: already running (3 brokers) - KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
        return 0
    fi
    if [[ -f "$C_RUNNING_VERSION" && "$(<"$C_RUNNING_VERSION")" != "$KAFKA_VERSION" ]] \
        && ((${#running[@]} > 0)); then
        say "cluster: note: running nodes are Kafka $(<"$C_RUNNING_VERSION"), requested $KAFKA_VERSION (run down, then up)"
    fi
    fetch_jars
    for n in "${C_NODES[@]}"; do write_conf "$n"; done
    format_cluster
    for n in "${C_NODES[@]}"; do launch_node "$n"; done
    printf '%s\n' "$KAFKA_VERSION" >"$C_RUNNING_VERSION"
    wait_nodes 3 "${C_NODES[@]}"
    say "cluster: up ($(since "$t0")) - 3 brokers, KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
}

cluster_down() {
    local t0 n pid pids=() names=()
    t0=$(now_ms)
    for n in "${C_NODES[@]}"; do
        pid=$(node_pid "$n")
        [[ -n "$pid" ]] || continue
        pids+=("$pid")
        names+=("$n")
    done
    if ((${#pids[@]} == 0)); then
        say "cluster: not running (nothing of ours to stop)"
        return 0
    fi
    say "cluster: stopping node(s) ${names[*]} (pids ${pids[*]}) ..."
    # All at once: one by one, the last node would wait for a quorum that is gone.
    for n in "${!pids[@]}"; do kafka_stop_pid "kafka-${names[$n]}" "${pids[$n]}" & done
    wait
    for n in "${names[@]}"; do rm -f "$(node_pid_file "$n")"; done
    rm -f "$C_RUNNING_VERSION"
    say "cluster: stopped ($(since "$t0"))"
}

cluster_status() {
    local n pid ids
    for n in "${C_NODES[@]}"; do
        pid=$(node_pid "$n")
        if [[ -n "$pid" ]]; then
            if kafka_probe "$C_HOST" "$(broker_port "$n")" 1 "$n"; then
                say "kafka-$n: running (ours, pid $pid, Kafka $(cat "$C_RUNNING_VERSION" 2>/dev/null || echo '?')) on $C_HOST:$(broker_port "$n"), controller $C_HOST:$(controller_port "$n")"
            else
                say "kafka-$n: starting or unhealthy (ours, pid $pid) - not registered on $C_HOST:$(broker_port "$n") yet"
            fi
        elif port_open "$C_HOST" "$(broker_port "$n")"; then
            say "kafka-$n: something not started by this script listens on $C_HOST:$(broker_port "$n") (not ours)"
        else
            say "kafka-$n: stopped"
        fi
    done
    if ids=$(registered_brokers); then
        read -r -a ids <<<"$ids"
        say "cluster: ${#ids[@]} broker(s) registered (${ids[*]}) - KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_servers)"
    else
        say "cluster: no broker answers"
    fi
}

node_stop() {
    local n=$1 pid t0
    pid=$(node_pid "$n")
    if [[ -z "$pid" ]]; then
        say "kafka-$n: not running"
        return 0
    fi
    t0=$(now_ms)
    say "kafka-$n: stopping pid $pid (SIGTERM) ..."
    kafka_stop_pid "kafka-$n" "$pid"
    rm -f "$(node_pid_file "$n")"
    say "kafka-$n: stopped ($(since "$t0"))"
}

node_kill() {
    local n=$1 pid i
    pid=$(node_pid "$n")
    if [[ -z "$pid" ]]; then
        say "kafka-$n: not running"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
    rm -f "$(node_pid_file "$n")"
    say "kafka-$n: killed pid $pid (SIGKILL)"
}

node_start() {
    local n=$1 t0
    t0=$(now_ms)
    if [[ -n "$(node_pid "$n")" ]]; then
        say "kafka-$n: already running (pid $(node_pid "$n"))"
        return 0
    fi
    fetch_jars
    write_conf "$n"
    launch_node "$n"
    wait_nodes 1 "$n"
    say "kafka-$n: registered ($(since "$t0")); brokers listed: $(registered_brokers || echo none)"
}

usage() { say "usage: $0 up|down|status|stop N|kill N|start N|pid N   (N: 1, 2 or 3)"; }

[[ $# -ge 1 && $# -le 2 ]] || { usage >&2; exit 2; }

mkdir -p "$C_DIR"
# One cluster.sh at a time per checkout (kill N does not wait for a running `up`).
if [[ "$1" != kill && "$1" != pid && "$1" != status ]]; then
    exec 9>"$C_DIR/cluster.lock"
    flock -w 300 9 || die "another scripts/cluster.sh is still running (lock $C_DIR/cluster.lock)"
fi

case "$1" in
    up) [[ $# -eq 1 ]] || { usage >&2; exit 2; }; cluster_up ;;
    down) [[ $# -eq 1 ]] || { usage >&2; exit 2; }; cluster_down ;;
    status) [[ $# -eq 1 ]] || { usage >&2; exit 2; }; cluster_status ;;
    stop) check_node_arg "${2:-}"; node_stop "$2" ;;
    kill) check_node_arg "${2:-}"; node_kill "$2" ;;
    start) check_node_arg "${2:-}"; node_start "$2" ;;
    pid) check_node_arg "${2:-}"; node_pid "$2" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
