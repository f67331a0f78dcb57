#!/usr/bin/env bash
# Device tunnel figures (issue 11): a bulk transfer to a sink device through a labgate
# tunnel against the same transfer over a direct TCP connection, in the same run; and
# resident memory (VmRSS) per idle tunnel.
#
#   benches/tunnels.sh [--mib 1024] [--tunnels 1000]
#
# labgate (release, threads = 2) allows one device, the sink the load client serves on
# a free loopback port. Loopback only; every process started is stopped on exit, error
# or Ctrl-C (see benches/lib.sh). It must never assert a figure: it prints them.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MIB=1024
TUNNELS=1000
while (($#)); do
    case $1 in
    --mib) MIB=$2; shift 2 ;;
    --tunnels) TUNNELS=$2; shift 2 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $MIB =~ ^[0-9]+$ ]] && ((MIB >= 1 && MIB <= 16384)) || die "--mib must be 1..16384"
[[ $TUNNELS =~ ^[0-9]+$ ]] && ((TUNNELS >= 1 && TUNNELS <= 1024)) ||
    die "--tunnels must be 1..1024 (tunnels.max_per_session)"
# Each tunnel is up to five descriptors in labgate (client and device sockets, a
# duplicate of each held by the cut registry so the turn's end can shut them, and the
# client socket's duplicate for its keepalive lookup) and two in the load client.
NOFILE=$((5 * TUNNELS + 1024 > BENCH_NOFILE ? 5 * TUNNELS + 1024 : BENCH_NOFILE))
ulimit -n "$NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $NOFILE"

build_labgate

UP=$(free_port)
LG=$(free_port)
LGM=$(free_port)
SINK=$(free_port)
ALL_CPUS=0-$(($(nproc) - 1))

write_labgate_config "$BENCH_WORK/labgate.toml" "$LG" "$LGM" "$UP" 2
cat >>"$BENCH_WORK/labgate.toml" <<TOML

[tunnels]
max_per_session = 1024

[[tunnels.device]]
name = "sink"
address = "127.0.0.1"
ports = [$SINK]
TOML
start_labgate labgate "$ALL_CPUS" "$BENCH_WORK/labgate.toml" "$LG"

log "sending $MIB MiB direct, then through a tunnel"
result=$("$LOADGEN_BIN" tunnel-throughput --addr "127.0.0.1:$LG" --sink-port "$SINK" --mib "$MIB")
echo
echo "Throughput, $MIB MiB to a sink device on loopback (MiB/s): $result"

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
