#!/usr/bin/env bash
# Resource figures: resident memory (VmRSS) of labgate idle, with 1,000 WAITING
# sessions, and with 1,000 open keep-alive connections on top; the same for
# neops-remote-lab 1.4.0 for comparison.
#
#   benches/resources.sh [--sessions 1000] [--connections 1000]
#
# labgate runs with the shipped defaults (threads = 2) except ports, a raised rate
# limit (so one client may create the sessions) and no demo lab. Loopback only; every
# process started is stopped on exit, error or Ctrl-C (see benches/lib.sh). About 30 s.
#
# It must never assert a figure: it prints them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS=1000
CONNECTIONS=1000
while (($#)); do
    case $1 in
    --sessions) SESSIONS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $SESSIONS =~ ^[0-9]+$ ]] && ((SESSIONS >= 1 && SESSIONS <= 100000)) || die "--sessions must be 1..100000"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 10000)) ||
    die "--connections must be 1..10000"
# Each connection is a descriptor in the client and in the server.
ulimit -n $((CONNECTIONS + 1024)) 2>/dev/null ||
    die "cannot raise the open-file limit to $((CONNECTIONS + 1024)) (ulimit -n)"

need_tools
build_labgate
setup_neops

UP=$(free_port)
LG=$(free_port)
LGM=$(free_port)
NP=$(free_port)
ALL_CPUS=0-$(($(nproc) - 1))

# measure NAME PID PORT: prints the three RSS figures for one server as a table row.
measure() {
    local name=$1 pid=$2 port=$3 idle sessions conns holder
    # One request first, so lazily built state (routes, pools, metrics) is counted.
    curl -s -o /dev/null "http://127.0.0.1:$port/healthz"
    sleep 1
    idle=$(rss_kib "$pid")
    "$LOADGEN_BIN" create-sessions --addr "127.0.0.1:$port" --count "$SESSIONS" >/dev/null
    sleep 1
    sessions=$(rss_kib "$pid")
    start holder "$ALL_CPUS" "$LOADGEN_BIN" hold-connections --addr "127.0.0.1:$port" \
        --count "$CONNECTIONS" --seconds 60
    holder=$STARTED_PID
    local i
    for i in $(seq 600); do
        grep -q '^open=' "$BENCH_WORK/holder.log" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || { cat "$BENCH_WORK/holder.log" >&2; die "holder failed"; }
        sleep 0.1
    done
    grep -q '^open=' "$BENCH_WORK/holder.log" || die "$CONNECTIONS connections not open within 60 s"
    sleep 1
    conns=$(rss_kib "$pid")
    stop "$holder"
    awk -v n="$name" -v a="$idle" -v b="$sessions" -v c="$conns" \
        'BEGIN { printf "| %s | %.1f | %.1f | %.1f |\n", n, a / 1024, b / 1024, c / 1024 }'
}

write_labgate_config "$BENCH_WORK/labgate.toml" "$LG" "$LGM" "$UP" 2
start_labgate labgate "$ALL_CPUS" "$BENCH_WORK/labgate.toml" "$LG"
start_neops neops "$ALL_CPUS" "$NP"

echo
echo "Resident memory (VmRSS, MiB): idle; with $SESSIONS WAITING sessions; with those and $CONNECTIONS open keep-alive connections."
echo
echo "| server | idle | + $SESSIONS sessions | + $CONNECTIONS connections |"
echo "|---|---:|---:|---:|"
measure "labgate (threads = 2)" "$LABGATE_PID" "$LG"
measure "neops-remote-lab $NEOPS_VERSION (uvicorn)" "$NEOPS_PID" "$NP"
