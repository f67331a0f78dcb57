#!/usr/bin/env bash
# Profiles labgate under load with valgrind's callgrind (instruction counts; works
# where `perf` is not allowed), on the forwarding path (c) or the rejection path (d).
#
#   benches/profile.sh forward|reject [--seconds 20] [--conns 16] [--out DIR]
#
# labgate (threads = 1) runs under callgrind in front of an nginx upstream; counters are
# zeroed once the load starts (so start-up is not counted) and dumped before it stops.
# Prints the top functions by own instructions, and every labgate:: function by
# inclusive instructions, each as a share of the total. Loopback only; every process
# started is stopped on exit, error or Ctrl-C (see benches/lib.sh).
#
# It must never assert a figure: it prints them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${1:-}
[[ $MODE == forward || $MODE == reject ]] || die "usage: $0 forward|reject [--seconds N] [--conns N] [--out DIR]"
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

write_labgate_config "$BENCH_WORK/labgate.toml" "$LG" "$LGM" "$UP" 1
CG=$BENCH_WORK/callgrind.out
start labgate 1 env LABGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$CG" \
    "$LABGATE_BIN" serve --config "$BENCH_WORK/labgate.toml"
LABGATE_PID=$STARTED_PID
# Under callgrind start-up takes seconds, not milliseconds.
wait_http "http://127.0.0.1:$LG/healthz" labgate

ACTIVE=$(new_session "$LG")
WAITING=$(new_session "$LG")
SID=$ACTIVE
[[ $MODE == reject ]] && SID=$WAITING

log "warming up, then $SECS s of wrk -c$CONNS on the $MODE path"
taskset -c 0 wrk -t1 -c"$CONNS" -d2s -H "X-Session-ID: $SID" "http://127.0.0.1:$LG/lab/ping" >/dev/null
callgrind_control -z "$LABGATE_PID" >/dev/null
taskset -c 0 wrk -t1 -c"$CONNS" -d"${SECS}s" -H "X-Session-ID: $SID" "http://127.0.0.1:$LG/lab/ping" |
    tee "$BENCH_WORK/wrk.txt" | grep -E 'Requests/sec|requests in'
callgrind_control -d "$LABGATE_PID" >/dev/null
DUMP=$(ls -t "$CG".* 2>/dev/null | head -1)
[[ -n $DUMP ]] || die "callgrind wrote no dump"
if [[ -n $OUT ]]; then
    mkdir -p "$OUT"
    cp "$DUMP" "$OUT/callgrind.$MODE.out"
    log "callgrind dump copied to $OUT/callgrind.$MODE.out (callgrind_annotate it)"
fi

echo
echo "## Top 30 functions by own instructions ($MODE path)"
callgrind_annotate --inclusive=no --threshold=100 "$DUMP" 2>/dev/null | sed -n '/^Ir/,$p' | head -45 || true
echo
echo "## labgate:: functions by inclusive instructions ($MODE path)"
callgrind_annotate --inclusive=yes --threshold=100 "$DUMP" 2>/dev/null |
    grep -E 'labgate::' | head -40 || true
