#!/usr/bin/env bash
# The cost of durability (issue 3, issue 13 item 4): POST /session under a flood with the
# queue in memory and in the redb store (group commit: one commit carries every create
# waiting on it), in the same rounds, and next to the wall-clock figures the counts that
# do not depend on the machine's load: creates per commit, the store thread's write
# syscalls and bytes sent to disk per commit, and CPU time (labgate's per create, the
# store thread's per commit).
#
#   benches/persistence.sh [DURATION_SECONDS] [CONNECTIONS] [ROUNDS]      (10 16 3)
#
# Environment: LABGATE_BIN (the labgate to measure; default: built with cargo build
# --release), BASELINE_BIN (a second labgate, say the previous commit's, measured with
# the store in the same rounds: its row is `redb-baseline`), SERVER_CPU (0) and
# CLIENT_CPU (1) for taskset, STATE_DIR (where the redb files go; default the work
# directory, which must not be a tmpfs for the fsyncs to mean anything).
#
# Each round runs memory, redb (and redb-baseline; the two durable rows swap places every
# round) in turn, each on a fresh labgate
# (threads = 1) pinned to SERVER_CPU with wrk -t1 on CLIENT_CPU; the summary gives the
# median of the rounds and the durable/memory ratio of each round. Loopback only;
# bounded (ROUNDS x 2-3 x DURATION); every process started is stopped (benches/lib.sh).
# Needs wrk (apt-get install wrk). It prints figures and never judges them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${1:-10}
CONNS=${2:-16}
ROUNDS=${3:-3}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
STATE_DIR=${STATE_DIR:-$BENCH_WORK}
command -v wrk >/dev/null || die "needs wrk (apt-get install wrk)"
if [[ ! -x ${LABGATE_BIN:-} ]]; then
    (cd "$BENCH_ROOT" && cargo build --release --locked --quiet --bin labgate)
    LABGATE_BIN=$(cd "$BENCH_ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/labgate
fi
[[ -z ${BASELINE_BIN:-} || -x $BASELINE_BIN ]] || die "BASELINE_BIN $BASELINE_BIN is not executable"

cat >"$BENCH_WORK/create.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/session"
LUA

# cpu_ticks PID [TID]: user + system clock ticks of a process (or of one of its threads).
cpu_ticks() {
    local stat=/proc/$1/stat
    [[ -n ${2:-} ]] && stat=/proc/$1/task/$2/stat
    # Fields 14 and 15, counted after the command name's closing parenthesis.
    sed 's/^.*) //' "$stat" | awk '{print $12 + $13}'
}

# io_field PID TID NAME: one counter of /proc/PID/task/TID/io.
io_field() {
    awk -v n="$3:" '$1 == n {print $2}' "/proc/$1/task/$2/io"
}

# store_tid PID: the id of labgate's store thread (src/commit.rs names it).
store_tid() {
    local t
    for t in /proc/"$1"/task/*; do
        [[ $(cat "$t/comm" 2>/dev/null) == labgate-store ]] && { basename "$t"; return; }
    done
}

ROWS=$BENCH_WORK/rows.tsv
: >"$ROWS"
TICK=$(getconf CLK_TCK)

# point ROUND QUEUE BINARY: one fresh labgate under one flood; one line in $ROWS.
point() {
    local round=$1 queue=$2 bin=$3 port mport extra="" state="" tid=""
    port=$(free_port)
    mport=$(free_port)
    if [[ $queue != memory ]]; then
        state=$(mktemp -d "$STATE_DIR/labgate-state.XXXXXX")
        chmod 700 "$state"
        extra="state_path = \"$state/queue.redb\""
    fi
    # Nothing is forwarded: the upstream is the discard port, never dialled.
    write_labgate_config "$BENCH_WORK/flood.toml" "$port" "$mport" 9 1 "$extra"
    LABGATE_BIN=$bin start_labgate "flood-$queue" "$SERVER_CPU" "$BENCH_WORK/flood.toml" "$port"
    [[ -n $state ]] && tid=$(store_tid "$LABGATE_PID")
    local cpu0 scpu0=0 syscw0=0 wb0=0 cpu1 scpu1=0 syscw1=0 wb1=0
    cpu0=$(cpu_ticks "$LABGATE_PID")
    if [[ -n $tid ]]; then
        scpu0=$(cpu_ticks "$LABGATE_PID" "$tid")
        syscw0=$(io_field "$LABGATE_PID" "$tid" syscw)
        wb0=$(io_field "$LABGATE_PID" "$tid" write_bytes)
    fi
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency --timeout 5s \
        -s "$BENCH_WORK/create.lua" "http://127.0.0.1:$port" >"$BENCH_WORK/wrk.out"
    cpu1=$(cpu_ticks "$LABGATE_PID")
    if [[ -n $tid ]]; then
        scpu1=$(cpu_ticks "$LABGATE_PID" "$tid")
        syscw1=$(io_field "$LABGATE_PID" "$tid" syscw)
        wb1=$(io_field "$LABGATE_PID" "$tid" write_bytes)
    fi
    curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" >"$BENCH_WORK/flood.metrics"
    stop "$LABGATE_PID"
    [[ -n $state ]] && rm -rf "$state"
    local m=$BENCH_WORK/flood.metrics
    python3 - "$round" "$queue" "$(metric "$m" labgate_sessions_created_total)" \
        "$(metric "$m" labgate_state_write_seconds_count)" "$((cpu1 - cpu0))" "$((scpu1 - scpu0))" \
        "$((syscw1 - syscw0))" "$((wb1 - wb0))" "$TICK" "$BENCH_WORK/wrk.out" >>"$ROWS" <<'PY'
import re, sys
round_, queue, created, commits, cpu, scpu, syscw, wb, tick, wrk = sys.argv[1:]
created, commits, tick = int(created), int(commits), int(tick)
text = open(wrk).read()
def ms(s):
    v, unit = re.match(r"([\d.]+)(\w+)", s).groups()
    return float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1])
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M)[1])
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M)[1])
per_commit = lambda x: x / commits if commits else 0.0
print("\t".join(str(x) for x in (
    round_, queue, f"{rps:.0f}", f"{p50:.3f}", f"{p99:.3f}", created, commits,
    f"{created / commits if commits else 0:.1f}",
    f"{int(cpu) / tick * 1e6 / max(created, 1):.1f}",
    f"{per_commit(int(syscw)):.2f}", f"{per_commit(int(wb)) / 1024:.1f}",
    f"{per_commit(int(scpu) / tick * 1e6):.0f}")))
PY
    tail -1 "$ROWS" | awk -F'\t' '{printf "  round %s %-13s %7d POST/s  p50 %s ms  p99 %s ms  %s per commit\n", $1, $2, $3, $4, $5, $8}' >&2
}

flush_disk
log "persistence: $ROUNDS round(s) of ${DURATION} s, wrk -c$CONNS; labgate $LABGATE_BIN${BASELINE_BIN:+, baseline $BASELINE_BIN}; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    point "$round" memory "$LABGATE_BIN"
    # The two durable rows swap places every round, so neither always runs second.
    if [[ -n ${BASELINE_BIN:-} ]] && ((round % 2 == 0)); then
        point "$round" redb-baseline "$BASELINE_BIN"
        point "$round" redb "$LABGATE_BIN"
    else
        point "$round" redb "$LABGATE_BIN"
        [[ -n ${BASELINE_BIN:-} ]] && point "$round" redb-baseline "$BASELINE_BIN"
    fi
done
log "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$ROWS" "$CONNS" "$DURATION" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
conns, duration = sys.argv[2:4]
print(f"| round | queue | POST /session per s (wrk -c{conns}, {duration} s) | ack p50 ms | ack p99 ms "
      "| creates per commit | labgate CPU us per create | store write syscalls per commit "
      "| KiB to disk per commit | store CPU us per commit |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    durable = r[1] != "memory"
    cells = [r[0], r[1], f"{int(r[2]):,}", r[3], r[4], r[7] if durable else "",
             r[8], r[9] if durable else "", r[10] if durable else "", r[11] if durable else ""]
    print("| " + " | ".join(cells) + " |")
queues = list(dict.fromkeys(r[1] for r in rows))
by = {q: [r for r in rows if r[1] == q] for q in queues}
print()
mem = statistics.median(int(r[2]) for r in by["memory"])
for q in queues:
    med = lambda i: statistics.median(float(r[i]) for r in by[q])
    line = f"{q}: median {med(2):,.0f} POST/s, p99 {med(4):.2f} ms, labgate CPU {med(8):.1f} us per create"
    if q != "memory":
        ratios = [int(r[2]) / int(m[2]) for r, m in zip(by[q], by["memory"])]
        line += (f", {med(7):.1f} creates per commit, {med(9):.2f} write syscalls and {med(10):.1f} KiB "
                 f"to disk per commit; durable / in-memory: median {med(2) / mem:.2f}, "
                 f"per round {', '.join(f'{x:.2f}' for x in ratios)}")
    print(line)
PY
