#!/usr/bin/env bash
# Device tunnel figures (issue 11): a bulk transfer to a sink device through a labgate
# tunnel against the same transfer over a direct TCP connection, in the same run, with
# labgate's CPU time per GiB relayed; and resident memory (VmRSS) per idle tunnel.
#
#   benches/tunnels.sh [--mib 1024] [--tunnels 1000] [--rounds 1]
#
# The transfer runs twice per round. Pinned, as benches/issue13.sh pins: labgate alone
# on SERVER_CPU (0) with threads = 1, the load client and the sink on CLIENT_CPU (1).
# Unpinned: labgate with the shipped threads = 2 and everything on every CPU. Wall-clock
# MiB/s on a shared VM is noisy; labgate's CPU seconds per GiB (utime + stime from
# /proc/PID/stat around the leg) barely depends on the machine's load. The idle tunnels
# are held against the unpinned labgate. labgate allows one device, the sink the load
# client serves on a free loopback port. Loopback only; every process started is
# stopped on exit, error or Ctrl-C (see benches/lib.sh). It never asserts a figure: it
# prints them. LABGATE_BIN, LOADGEN_BIN and BARE_PINGORA_BIN skip the build.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIB=1024
TUNNELS=1000
ROUNDS=1
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
while (($#)); do
    case $1 in
    --mib) MIB=$2; shift 2 ;;
    --tunnels) TUNNELS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $MIB =~ ^[0-9]+$ ]] && ((MIB >= 1 && MIB <= 16384)) || die "--mib must be 1..16384"
[[ $TUNNELS =~ ^[0-9]+$ ]] && ((TUNNELS >= 1 && TUNNELS <= 1024)) ||
    die "--tunnels must be 1..1024 (tunnels.max_per_session)"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 20)) || die "--rounds must be 1..20"
(($(nproc) >= 2)) || die "needs at least 2 CPUs (labgate and the load client on different cores)"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || die "SERVER_CPU and CLIENT_CPU must differ"
# Each tunnel is up to eight descriptors in labgate (client and device sockets, a
# duplicate of each held by the cut registry so the turn's end can shut them or for the
# client's keepalive, and a raw tunnel's two pipes while bytes move) and two in the
# load client.
NOFILE=$((8 * TUNNELS + 1024 > BENCH_NOFILE ? 8 * TUNNELS + 1024 : BENCH_NOFILE))
ulimit -n "$NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $NOFILE"

build_labgate

UP=$(free_port)
SINK=$(free_port)
ALL_CPUS=$(all_cpus)
TICKS=$(getconf CLK_TCK)

# labgate_config FILE PORT METRICS_PORT THREADS: the bench config plus the sink device.
labgate_config() {
    write_labgate_config "$1" "$2" "$3" "$UP" "$4"
    cat >>"$1" <<TOML

[tunnels]
max_per_session = 1024

[[tunnels.device]]
name = "sink"
address = "127.0.0.1"
ports = [$SINK]
TOML
}

# cpu_ticks PID: user + system CPU time of a process, in clock ticks. The fields after
# the command name, which is in parentheses and may hold spaces.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{print $12 + $13}' <<<"$stat"
}

# leg NAME CPUS LEG: one transfer by the load client on CPUS; prints "MiB/s labgate-ticks
# client-cpu-seconds" (the client: the load client's sender and sink together).
leg() {
    local before after out rate client
    before=$(cpu_ticks "$LABGATE_PID")
    out=$(taskset -c "$2" "$LOADGEN_BIN" tunnel-throughput --addr "127.0.0.1:$LG" \
        --sink-port "$SINK" --mib "$MIB" --leg "$3") || die "$1: the $3 transfer failed"
    after=$(cpu_ticks "$LABGATE_PID")
    read -r rate client <<<"$out"
    echo "${rate#mib_s=} $((after - before)) ${client#client_cpu_s=}"
}

# run_mode NAME LABGATE_CPUS THREADS CLIENT_CPUS: starts labgate, runs ROUNDS rounds of
# both legs, appends one row per round to $BENCH_WORK/rows, leaves labgate running
# (LABGATE_PID) on LG.
run_mode() {
    local name=$1 round direct tunnel raw
    LG=$(free_port)
    LGM=$(free_port)
    labgate_config "$BENCH_WORK/labgate-$name.toml" "$LG" "$LGM" "$3"
    start_labgate "labgate-$name" "$2" "$BENCH_WORK/labgate-$name.toml" "$LG"
    for round in $(seq "$ROUNDS"); do
        log "$name, round $round: $MIB MiB direct, through a WebSocket tunnel, through a raw one"
        direct=$(leg "$name" "$4" direct)
        tunnel=$(leg "$name" "$4" tunnel)
        raw=$(leg "$name" "$4" raw)
        echo "$name $round $direct $tunnel $raw" >>"$BENCH_WORK/rows"
    done
}

: >"$BENCH_WORK/rows"
run_mode pinned "$SERVER_CPU" 1 "$CLIENT_CPU"
stop "$LABGATE_PID"
run_mode unpinned "$ALL_CPUS" 2 "$ALL_CPUS"

echo
echo "Throughput, $MIB MiB to a sink device on loopback, $(nproc) CPUs; pinned: labgate" \
    "(threads = 1) on CPU $SERVER_CPU, load client and sink on CPU $CLIENT_CPU; unpinned:" \
    "labgate (threads = 2) and the client on every CPU. WebSocket: the tunnel as websocat" \
    "speaks it; raw: Upgrade: labgate-tcp, spliced (docs/tunnel-protocol.md). CPU s/GiB:" \
    "labgate's utime + stime during that leg (during the direct leg in parentheses: labgate idle)."
echo
echo "Client CPU s/GiB: the load client's own (sender and sink in one process) per leg:" \
    "direct / WebSocket / raw."
echo
echo "| run | round | direct MiB/s | WebSocket MiB/s | WebSocket / direct | labgate CPU s/GiB | raw MiB/s | raw / direct | labgate CPU s/GiB | client CPU s/GiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
awk -v t="$TICKS" -v mib="$MIB" '{
    g = mib / 1024
    printf "| %s | %d | %d | %d | %.2f | %.3f (%.3f) | %d | %.2f | %.3f | %.2f / %.2f / %.2f |\n",
        $1, $2, $3, $6, $6 / $3, $7 / t / g, $4 / t / g,
        $9, $9 / $3, $10 / t / g, $5 / g, $8 / g, $11 / g }' "$BENCH_WORK/rows"
echo

idle=$(rss_kib "$LABGATE_PID")
start holder "$ALL_CPUS" "$LOADGEN_BIN" hold-tunnels --addr "127.0.0.1:$LG" \
    --sink-port "$SINK" --count "$TUNNELS" --seconds 60
holder=$STARTED_PID
for _ in $(seq 600); do
    grep -q '^open=' "$BENCH_WORK/holder.log" 2>/dev/null && break
    kill -0 "$holder" 2>/dev/null || { cat "$BENCH_WORK/holder.log" >&2; die "holder failed"; }
    sleep 0.1
done
grep -q '^open=' "$BENCH_WORK/holder.log" || die "$TUNNELS tunnels not open within 60 s"
sleep 1
held=$(rss_kib "$LABGATE_PID")
stop "$holder"
awk -v a="$idle" -v b="$held" -v n="$TUNNELS" 'BEGIN {
    printf "Resident memory: %.1f MiB idle, %.1f MiB with %d idle tunnels: %.1f KiB per tunnel\n",
        a / 1024, b / 1024, n, (b - a) / n }'
