#!/usr/bin/env bash
# Resource figures: resident memory (VmRSS) of labgate idle, with 10,000 WAITING
# sessions, and with 1,000 open keep-alive connections on top, and what those make per
# session and per connection; the same for neops-remote-lab 1.4.0 for comparison.
#
#   benches/resources.sh [--sessions 10000] [--connections 1000] [--no-neops]
#
# labgate runs with the shipped defaults (threads = 2) except ports and the caps that
# would refuse the load (benches/lib.sh, write_labgate_config). With
# LABGATE_JEMALLOC_BIN set (a `--features jemalloc` build), that binary gets a row too.
# Loopback only; every process started is stopped on exit, error or Ctrl-C (see
# benches/lib.sh). About 30 s.
#
# It must never assert a figure: it prints them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SESSIONS=10000
CONNECTIONS=1000
NEOPS=1
while (($#)); do
    case $1 in
    --sessions) SESSIONS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-neops) NEOPS=0; shift ;;
    -h | --help) sed -n '2,14p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $SESSIONS =~ ^[0-9]+$ ]] && ((SESSIONS >= 1 && SESSIONS <= 100000)) || die "--sessions must be 1..100000"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 10000)) ||
    die "--connections must be 1..10000"
# Each connection is a descriptor in the client and in the server.
# The load client's connections, and labgate's open-file budget for the bench config
# (`labgate check` prints it; it refuses to start when the hard limit is below it).
NOFILE=$((CONNECTIONS + 1024 > BENCH_NOFILE ? CONNECTIONS + 1024 : BENCH_NOFILE))
ulimit -n "$NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $NOFILE (ulimit -n)"

need_tools
build_labgate
((NEOPS)) && setup_neops

UP=$(free_port)
NP=$(free_port)

# labgate_row NAME BINARY: one labgate (threads = 2) started, measured, stopped.
labgate_row() {
    local lg lgm
    lg=$(free_port)
    lgm=$(free_port)
    write_labgate_config "$BENCH_WORK/labgate-mem.toml" "$lg" "$lgm" "$UP" 2
    LABGATE_BIN=$2 start_labgate labgate-mem "$(all_cpus)" "$BENCH_WORK/labgate-mem.toml" "$lg"
    measure_memory "$1" "$LABGATE_PID" "$lg" "$SESSIONS" "$CONNECTIONS"
    stop "$LABGATE_PID"
}

echo
echo "Resident memory (VmRSS): idle; with $SESSIONS WAITING sessions; with those and $CONNECTIONS open keep-alive connections."
echo
memory_header "$SESSIONS" "$CONNECTIONS"
labgate_row "labgate (threads = 2)" "$LABGATE_BIN"
if [[ -n ${LABGATE_JEMALLOC_BIN:-} ]]; then
    labgate_row "labgate (threads = 2), jemalloc" "$LABGATE_JEMALLOC_BIN"
fi
if ((NEOPS)); then
    start_neops neops "$(all_cpus)" "$NP"
    measure_memory "neops-remote-lab $NEOPS_VERSION (uvicorn)" "$NEOPS_PID" "$NP" "$SESSIONS" "$CONNECTIONS"
fi
