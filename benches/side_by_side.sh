#!/usr/bin/env bash
# Side-by-side proxy benchmark: labgate against the direct path, nginx as a plain
# reverse proxy and the neops-remote-lab server, in one run on this machine.
#
#   benches/side_by_side.sh [--seconds 10] [--reps 3] [--conns "1 16 128"] [--out FILE]
#
# Systems (every server on CPU $SERVER_CPU, wrk / the load client on CPU $CLIENT_CPU):
#   (a) direct    wrk -> nginx upstream (1 worker, fixed 200 answer): the limit
#   (b) nginx     wrk -> nginx reverse proxy (1 worker) -> the same upstream: the peer
#   (p) pingora   wrk -> bare pingora 0.9 proxy (benches/bare_pingora.rs, threads = 1,
#                 only `upstream_peer`) -> the same upstream: pingora's own floor
#   (c) labgate   wrk -> labgate (threads = 1), ACTIVE session -> the same upstream
#   (d) labgate   wrk -> labgate answering 423 to a WAITING session (never forwarded)
#   (f) labgate   wrk -> labgate answering GET /session/{id} (a WAITING session's poll)
#   (e) session API loop (POST /session, GET /session/{id}, DELETE) on labgate and on
#       neops-remote-lab 1.4.0 (its own CLI, uvicorn, a fake `netlab` on PATH)
# Each repetition runs every system at every connection count, systems alternating, so
# drift on a shared machine hits all of them alike; the table reports the median of
# the repetitions. Loopback only; every process started is stopped on exit, error or
# Ctrl-C (see benches/lib.sh). Default run: 8 systems x 3 counts x 3 reps x 10 s,
# about 13 minutes plus builds.
#
# It must never assert a figure: it prints them (docs/benchmarks.md holds a real run).

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_POINT=10
REPS=3
CONNS="1 16 128"
OUT=""
SERVER_CPU=${SERVER_CPU:-1}
CLIENT_CPU=${CLIENT_CPU:-0}

while (($#)); do
    case $1 in
    --seconds) SECONDS_PER_POINT=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $SECONDS_PER_POINT =~ ^[0-9]+$ ]] && ((SECONDS_PER_POINT >= 1 && SECONDS_PER_POINT <= 60)) ||
    die "--seconds must be 1..60"
[[ $REPS =~ ^[0-9]+$ ]] && ((REPS >= 1 && REPS <= 9)) || die "--reps must be 1..9"
for c in $CONNS; do
    [[ $c =~ ^[0-9]+$ ]] && ((c >= 1 && c <= 1024)) || die "--conns: each count must be 1..1024"
done
(($(nproc) >= 2)) || die "needs at least 2 CPUs (servers and load generator on different cores)"

need_tools
build_labgate
setup_neops

UP=$(free_port)
PX=$(free_port)
BP=$(free_port)
LG=$(free_port)
LGM=$(free_port)
NP=$(free_port)

# ------------------------------------------------------------------ servers

write_labgate_config "$BENCH_WORK/labgate.toml" "$LG" "$LGM" "$UP" 1

log "starting nginx upstream, nginx proxy, bare pingora, labgate and neops-remote-lab (CPU $SERVER_CPU)"
start_nginx_upstream upstream "$SERVER_CPU" "$UP"
start_nginx_proxy proxy "$SERVER_CPU" "$PX" "$UP"
start_bare_pingora bare_pingora "$SERVER_CPU" "$BP" "$UP"
start_labgate labgate "$SERVER_CPU" "$BENCH_WORK/labgate.toml" "$LG"
start_neops neops "$SERVER_CPU" "$NP"

ACTIVE=$(new_session "$LG")
WAITING=$(new_session "$LG")
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Session-ID: $ACTIVE" "http://127.0.0.1:$LG/lab/ping") == 200 ]] ||
    die "labgate does not forward for the ACTIVE session"
[[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Session-ID: $WAITING" "http://127.0.0.1:$LG/lab/ping") == 423 ]] ||
    die "labgate does not answer 423 to the WAITING session"

# ------------------------------------------------------------------ measurement

RESULTS=$BENCH_WORK/results.tsv
: >"$RESULTS"

# The load client's `key=value` line -> the same columns.
PARSE_LOOP=$(cat <<'PY'
import sys
kv = dict(f.split("=") for f in sys.stdin.read().split())
print("\t".join(map(str, [*sys.argv[1:4], kv["rps"], kv["p50_us"], kv["p99_us"], kv["errors"], 0])))
PY
)

# wrk_point SYSTEM CONNS REP URL [HEADER]: one wrk run, one line in $RESULTS.
wrk_point() {
    local sys=$1 conns=$2 rep=$3 url=$4 header=${5:-} out
    local args=(-t1 -c"$conns" -d"${SECONDS_PER_POINT}s" --latency --timeout 5s)
    [[ -n $header ]] && args+=(-H "$header")
    out=$(taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$url")
    python3 -c "$PARSE_WRK" "$sys" "$conns" "$rep" <<<"$out" >>"$RESULTS"
    tail -1 "$RESULTS" | awk -F'\t' '{printf "  %-12s c=%-4s rep %s: %10.0f req/s  p50 %8.0f us  p99 %8.0f us  non-2xx %s  socket errors %s\n", $1, $2, $3, $4, $5, $6, $7, $8}' >&2
}

# loop_point SYSTEM PORT CONNS REP: the session API loop, one line in $RESULTS.
loop_point() {
    local sys=$1 port=$2 conns=$3 rep=$4 out
    out=$(taskset -c "$CLIENT_CPU" "$LOADGEN_BIN" session-loop --addr "127.0.0.1:$port" \
        --connections "$conns" --seconds "$SECONDS_PER_POINT")
    python3 -c "$PARSE_LOOP" "$sys" "$conns" "$rep" <<<"$out" >>"$RESULTS"
    tail -1 "$RESULTS" | awk -F'\t' '{printf "  %-12s c=%-4s rep %s: %10.0f req/s  p50 %8.0f us  p99 %8.0f us  errors %s\n", $1, $2, $3, $4, $5, $6, $7}' >&2
}

n_conns=$(wc -w <<<"$CONNS")
log "measuring: $REPS reps x $n_conns connection counts x 8 systems x ${SECONDS_PER_POINT}s"
for rep in $(seq "$REPS"); do
    for c in $CONNS; do
        wrk_point a_direct "$c" "$rep" "http://127.0.0.1:$UP/lab/ping"
        wrk_point b_nginx "$c" "$rep" "http://127.0.0.1:$PX/lab/ping"
        wrk_point p_pingora "$c" "$rep" "http://127.0.0.1:$BP/lab/ping"
        wrk_point c_labgate "$c" "$rep" "http://127.0.0.1:$LG/lab/ping" "X-Session-ID: $ACTIVE"
        wrk_point d_labgate423 "$c" "$rep" "http://127.0.0.1:$LG/lab/ping" "X-Session-ID: $WAITING"
        wrk_point f_poll "$c" "$rep" "http://127.0.0.1:$LG/session/$WAITING"
        loop_point e_labgate "$LG" "$c" "$rep"
        loop_point e_neops "$NP" "$c" "$rep"
    done
done

# ------------------------------------------------------------------ report

report() {
    python3 - "$RESULTS" "$SECONDS_PER_POINT" "$REPS" "$NEOPS_NOTE" <<'PY'
import statistics, sys
from collections import defaultdict
path, secs, reps, neops = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
runs = defaultdict(list)
for line in open(path):
    sys_, c, rep, rps, p50, p99, bad, sock = line.rstrip("\n").split("\t")
    runs[(sys_, int(c))].append((float(rps), float(p50), float(p99), int(bad), int(sock)))
def med(sys_, c, i):
    v = [r[i] for r in runs.get((sys_, c), [])]
    return statistics.median(v) if v else float("nan")
names = {
    "a_direct": "(a) direct to upstream",
    "b_nginx": "(b) nginx reverse proxy",
    "p_pingora": "(p) bare pingora proxy",
    "c_labgate": "(c) labgate, ACTIVE session",
    "d_labgate423": "(d) labgate, 423 to WAITING",
    "f_poll": "(f) labgate, GET /session/{id}",
    "e_labgate": "(e) session loop, labgate",
    "e_neops": "(e) session loop, neops-remote-lab",
}
conns = sorted({c for _, c in runs})
def ms(us):
    return f"{us / 1000:.3f}"
print(f"Medians of {reps} runs of {secs} s each; servers on one core, load generator on the other.")
print(f"(e): {neops}.")
print()
print("| system | connections | requests/s | p50 ms | p99 ms | errors |")
print("|---|---:|---:|---:|---:|---:|")
for s, label in names.items():
    for c in conns:
        if (s, c) not in runs:
            continue
        bad = sum(r[3] for r in runs[(s, c)]) + sum(r[4] for r in runs[(s, c)])
        # (d) answers 423 by design: wrk counts those as non-2xx; they are not errors.
        if s == "d_labgate423":
            bad = sum(r[4] for r in runs[(s, c)])
        print(f"| {label} | {c} | {med(s, c, 0):,.0f} | {ms(med(s, c, 1))} | {ms(med(s, c, 2))} | {bad} |")
print()
print("| connections | c/b req/s | c/b p99 | c/p req/s | p/b req/s | c/a req/s | d/c req/s "
      "| d/a req/s | f/a req/s | (e) labgate/neops req/s |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in conns:
    r = lambda s: med(s, c, 0)
    p99 = lambda s: med(s, c, 2)
    print(f"| {c} | {r('c_labgate') / r('b_nginx'):.2f} | {p99('c_labgate') / p99('b_nginx'):.2f} "
          f"| {r('c_labgate') / r('p_pingora'):.2f} | {r('p_pingora') / r('b_nginx'):.2f} "
          f"| {r('c_labgate') / r('a_direct'):.2f} | {r('d_labgate423') / r('c_labgate'):.2f} "
          f"| {r('d_labgate423') / r('a_direct'):.2f} | {r('f_poll') / r('a_direct'):.2f} "
          f"| {r('e_labgate') / r('e_neops'):.1f} |")
print()
print("(c/b p99 is labgate's p99 latency over nginx's: below 1 means labgate's tail is shorter.)")
PY
}

echo
report | tee "${OUT:-/dev/null}"
if [[ -n $OUT ]]; then
    cp "$RESULTS" "${OUT%.md}.tsv"
    log "table written to $OUT, raw runs to ${OUT%.md}.tsv"
fi
