#!/usr/bin/env bash
# Profiles labgate under load with valgrind's callgrind (instruction counts; works
# where `perf` is not allowed, and does not depend on the machine's load), on the
# forwarding path (c), the rejection path (d), a WAITING session's poll (f), a flood of
# POST /session with the queue in memory (create) or in the redb store (create-durable,
# group commit; the store file under the work directory), or the bare pingora proxy
# (benches/bare_pingora.rs) forwarding the same requests: the floor.
#
#   benches/profile.sh forward|reject|poll|create|create-durable|bare [--seconds 20] [--conns 16] [--out DIR]
#
# The server (threads = 1) runs under callgrind in front of an nginx upstream; counters
# are zeroed once the load starts (so start-up is not counted) and dumped before it
# stops. Prints instructions per request (all instructions of the process over the
# requests wrk completed), the top functions by own instructions, and every labgate::
# function by inclusive instructions, each as a share of the total. Loopback only; every process
# started is stopped on exit, error or Ctrl-C (see benches/lib.sh).
#
# The count per request depends on the machine's load as well as on the code: pingora's
# timer thread ticks every 10 ms whatever the request rate, so the fewer requests
# valgrind completes, the more of that each request carries (the same binary: 136,900 at
# 2,224 requests, 140,400 at 1,094). To compare two binaries, profile them at the same
# time (LABGATE_BIN=old ... & LABGATE_BIN=new ...; see docs/benchmarks.md, stop 19).
#
# It must never assert a figure: it prints them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${1:-}
[[ $MODE =~ ^(forward|reject|poll|create|create-durable|bare)$ ]] ||
    die "usage: $0 forward|reject|poll|create|create-durable|bare [--seconds N] [--conns N] [--out DIR]"
shift
SECS=20
CONNS=16
OUT=""
while (($#)); do
    case $1 in
    --seconds) SECS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) die "unknown argument $1" ;;
    esac
done
[[ $SECS =~ ^[0-9]+$ ]] && ((SECS >= 1 && SECS <= 300)) || die "--seconds must be 1..300"
[[ $CONNS =~ ^[0-9]+$ ]] && ((CONNS >= 1 && CONNS <= 1024)) || die "--conns must be 1..1024"
command -v valgrind >/dev/null || die "valgrind is needed (apt-get install valgrind)"
command -v callgrind_annotate >/dev/null || die "callgrind_annotate is needed (valgrind package)"

need_tools
build_labgate

UP=$(free_port)
LG=$(free_port)
LGM=$(free_port)
mkdir -p "$BENCH_WORK/up-tmp"
cat >"$BENCH_WORK/up.conf" <<EOF
worker_processes 1;
daemon off;
pid $BENCH_WORK/up.pid;
error_log $BENCH_WORK/up-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $BENCH_WORK/up-tmp;
    proxy_temp_path $BENCH_WORK/up-tmp;
    fastcgi_temp_path $BENCH_WORK/up-tmp;
    uwsgi_temp_path $BENCH_WORK/up-tmp;
    scgi_temp_path $BENCH_WORK/up-tmp;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type text/plain; return 200 "hello from the lab\n"; }
    }
}
EOF
start upstream 0 nginx -c "$BENCH_WORK/up.conf" -e "$BENCH_WORK/up-error.log"
wait_http "http://127.0.0.1:$UP/lab/ping" upstream

STATE_LINE=""
if [[ $MODE == create-durable ]]; then
    mkdir -p -m 700 "$BENCH_WORK/state"
    STATE_LINE="state_path = \"$BENCH_WORK/state/queue.redb\""
fi
write_labgate_config "$BENCH_WORK/labgate.toml" "$LG" "$LGM" "$UP" 1 "$STATE_LINE"
CG=$BENCH_WORK/callgrind.out
# Names uncompressed: each dump after a zeroing must be readable on its own.
CALLGRIND=(valgrind --tool=callgrind --compress-strings=no --callgrind-out-file="$CG")
if [[ $MODE == bare ]]; then
    # BARE_ARGS=--peer-options: the peer options labgate sets (see bare_pingora.rs).
    # shellcheck disable=SC2086
    start bare 1 "${CALLGRIND[@]}" "$BARE_PINGORA_BIN" --listen "127.0.0.1:$LG" \
        --upstream "127.0.0.1:$UP" --threads 1 ${BARE_ARGS:-}
    SERVER_PID=$STARTED_PID
    # Under callgrind start-up takes seconds, not milliseconds.
    wait_http "http://127.0.0.1:$LG/lab/ping" bare
    URL=http://127.0.0.1:$LG/lab/ping
    # The same request bytes as the forward mode: the floor parses, stores and forwards
    # the header too.
    HEADER=(-H "X-Session-ID: $(python3 -c 'import uuid; print(uuid.uuid4())')")
else
    start labgate 1 env LABGATE_LOG=warn "${CALLGRIND[@]}" \
        "$LABGATE_BIN" serve --config "$BENCH_WORK/labgate.toml"
    SERVER_PID=$STARTED_PID
    wait_http "http://127.0.0.1:$LG/healthz" labgate
    ACTIVE=$(new_session "$LG")
    WAITING=$(new_session "$LG")
    URL=http://127.0.0.1:$LG/lab/ping
    case $MODE in
    forward) HEADER=(-H "X-Session-ID: $ACTIVE") ;;
    reject) HEADER=(-H "X-Session-ID: $WAITING") ;;
    poll) HEADER=(); URL=http://127.0.0.1:$LG/session/$WAITING ;;
    create | create-durable)
        cat >"$BENCH_WORK/create.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/session"
LUA
        HEADER=(-s "$BENCH_WORK/create.lua")
        URL=http://127.0.0.1:$LG
        ;;
    esac
fi

log "warming up, then $SECS s of wrk -c$CONNS on the $MODE path"
taskset -c 0 wrk -t1 -c"$CONNS" -d2s "${HEADER[@]}" "$URL" >/dev/null
# taskset and env exec, so the pid is valgrind's own.
callgrind_control -z "$SERVER_PID" >/dev/null
taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" "${HEADER[@]}" "$URL" |
    tee "$BENCH_WORK/wrk.txt" | grep -E 'Requests/sec|requests in'
callgrind_control -d "$SERVER_PID" >/dev/null
if [[ $MODE == create-durable ]]; then
    # Under callgrind the threads take turns, so batches differ from a native run's.
    curl -s --max-time 30 "http://127.0.0.1:$LGM/metrics" >"$BENCH_WORK/metrics.txt"
    log "created $(metric "$BENCH_WORK/metrics.txt" labgate_sessions_created_total)," \
        "commits $(metric "$BENCH_WORK/metrics.txt" labgate_state_write_seconds_count) (whole run)"
fi
DUMP=$(ls -t "$CG".* 2>/dev/null | head -1)
[[ -n $DUMP ]] || die "callgrind wrote no dump"
if [[ -n $OUT ]]; then
    mkdir -p "$OUT"
    cp "$DUMP" "$OUT/callgrind.$MODE.out"
    log "callgrind dump copied to $OUT/callgrind.$MODE.out (callgrind_annotate it)"
fi

REQUESTS=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$BENCH_WORK/wrk.txt")
TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo
if [[ -n $REQUESTS && -n $TOTAL && $REQUESTS -gt 0 ]]; then
    echo "## $MODE: $TOTAL instructions / $REQUESTS requests = $((TOTAL / REQUESTS)) per request"
fi
echo
echo "## Top 30 functions by own instructions ($MODE path)"
callgrind_annotate --inclusive=no --threshold=100 "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | head -45 || true
echo
echo "## labgate:: functions by inclusive instructions ($MODE path)"
callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" 2>/dev/null |
    grep -E 'labgate::' | head -40 || true
