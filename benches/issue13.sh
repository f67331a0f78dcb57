#!/usr/bin/env bash
# Issue 13's figures in one run: forwarding (nginx proxy, bare pingora, labgate), the
# local answers (labgate's 423 and GET /session/{id} against nginx's static `return
# 200`), durable against in-memory POST /session under a flood, and resident memory,
# each labgate figure for the default allocator and for jemalloc (`--features
# jemalloc`), then the ratios the issue's targets name.
#
#   benches/issue13.sh [--seconds 5] [--rounds 3] [--conns "1 16 128"] [--out FILE]
#                      [--sessions 10000] [--connections 1000] [--no-jemalloc]
#   QUICK=1 benches/issue13.sh        1 s per point, 1 round: checks it works end to end
#
# Environment: PROFILE (cargo profile of every server built here: `production`, the
# default, `release`, or `dev` to check the script only), SERVER_CPU (0) and CLIENT_CPU (1) for taskset, STATE_DIR (where
# the durable queue's redb files go; default: the work directory, which must not be a
# tmpfs for the fsyncs to mean anything), _RJEM_MALLOC_CONF (jemalloc's options, e.g.
# `dirty_decay_ms:1000`, for the jemalloc builds only: their symbols are prefixed). With LABGATE_BIN, BARE_PINGORA_BIN and
# LOADGEN_BIN (and, unless --no-jemalloc, LABGATE_JEMALLOC_BIN and
# BARE_PINGORA_JEMALLOC_BIN) all set to binaries, nothing is built.
#
# Forwarding and local answers: every forwarding row (nginx proxy, bare pingora, labgate)
# gets the same request, X-Session-ID included; bare pingora also runs with --answer, a
# 423 written in request_filter, as pingora's floor for labgate's local answers.
# Every server on SERVER_CPU, wrk -t1 on CLIENT_CPU, labgate
# and bare pingora with threads = 1, labgate with LABGATE_LOG=warn, nginx one worker with
# access_log off; each round runs every system at every connection count in turn (so a
# slow moment hits all systems alike); the tables give the median of the rounds.
# POST flood: wrk -c16 with a POST /session script against a fresh labgate (threads = 1)
# per point, the queue in memory and in redb (queue.state_path, group commit); every cap
# that would answer 429/503 is raised, and any non-201 answer is counted and printed.
# Memory: a fresh labgate (shipped threads = 2) per binary: VmRSS idle, with --sessions
# WAITING sessions, with --connections idle keep-alive connections on top.
#
# Bounded: the default run is 12 systems x 3 counts x 3 rounds x 5 s (9 min), the flood
# 2 x 3 x 5 s, memory about 20 s per binary: under 11 minutes after the builds. Loopback
# only; every process started is stopped on exit, error or Ctrl-C (benches/lib.sh).
# It must never assert a figure: it prints them (docs/benchmarks.md, "Issue 13 in one run").

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECONDS_PER_POINT=5
ROUNDS=3
CONNS="1 16 128"
OUT=""
SESSIONS=10000
CONNECTIONS=1000
JEMALLOC=1
FLOOD_CONNS=16
if [[ ${QUICK:-0} == 1 ]]; then
    SECONDS_PER_POINT=1
    ROUNDS=1
fi
PROFILE=${PROFILE:-production}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}

while (($#)); do
    case $1 in
    --seconds) SECONDS_PER_POINT=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --sessions) SESSIONS=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --no-jemalloc) JEMALLOC=0; shift ;;
    -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ $SECONDS_PER_POINT =~ ^[0-9]+$ ]] && ((SECONDS_PER_POINT >= 1 && SECONDS_PER_POINT <= 30)) ||
    die "--seconds must be 1..30"
[[ $ROUNDS =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 9)) || die "--rounds must be 1..9"
for c in $CONNS; do
    [[ $c =~ ^[0-9]+$ ]] && ((c >= 1 && c <= 1024)) || die "--conns: each count must be 1..1024"
done
[[ $SESSIONS =~ ^[0-9]+$ ]] && ((SESSIONS >= 1 && SESSIONS <= 100000)) || die "--sessions must be 1..100000"
[[ $CONNECTIONS =~ ^[0-9]+$ ]] && ((CONNECTIONS >= 1 && CONNECTIONS <= 10000)) ||
    die "--connections must be 1..10000"
[[ $PROFILE =~ ^(production|release|dev)$ ]] || die "PROFILE must be production, release or dev (dev: to check the script only)"
(($(nproc) >= 2)) || die "needs at least 2 CPUs (servers and load generator on different cores)"
[[ $SERVER_CPU != "$CLIENT_CPU" ]] || die "SERVER_CPU and CLIENT_CPU must differ"
# The load client's connections, and labgate's open-file budget for the bench config
# (`labgate check` prints it; it refuses to start when the hard limit is below it).
NOFILE=$((CONNECTIONS + 1024 > BENCH_NOFILE ? CONNECTIONS + 1024 : BENCH_NOFILE))
ulimit -n "$NOFILE" 2>/dev/null || die "cannot raise the open-file limit to $NOFILE (ulimit -n)"
# A flood creates sessions at up to ~100k/s into a queue capped at 1,000,000
# (queue.max_sessions' maximum): 8 s keeps it under the cap.
FLOOD_SECONDS=$((SECONDS_PER_POINT < 8 ? SECONDS_PER_POINT : 8))
STATE_DIR=${STATE_DIR:-$BENCH_WORK}
VARIANTS=(default)
((JEMALLOC)) && VARIANTS+=(jemalloc)

need_tools

# ------------------------------------------------------------------ builds

# build_variant VARIANT: labgate, the bare pingora proxy (and, for `default`, the load
# client) in $PROFILE, with `--features jemalloc` for `jemalloc`; copied into the work
# directory, since the next build with other features writes the same paths.
build_variant() {
    local variant=$1 features=() targets=(--bin labgate --bench bare_pingora) bins
    [[ $variant == jemalloc ]] && features=(--features jemalloc)
    [[ $variant == default ]] && targets+=(--bench loadgen)
    log "building ${targets[*]} (--profile $PROFILE ${features[*]})"
    bins=$(cd "$BENCH_ROOT" && cargo build --locked --profile "$PROFILE" "${features[@]}" \
        "${targets[@]}" --message-format=json-render-diagnostics |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
    mkdir -p "$BENCH_WORK/bin"
    local name path
    while read -r name path; do
        cp "$path" "$BENCH_WORK/bin/$name-$variant"
    done <<<"$bins"
    [[ -x $BENCH_WORK/bin/labgate-$variant && -x $BENCH_WORK/bin/bare_pingora-$variant ]] ||
        die "the $variant build did not produce labgate and bare_pingora"
}

prebuilt=1
for v in LABGATE_BIN BARE_PINGORA_BIN LOADGEN_BIN; do
    [[ -x ${!v:-} ]] || prebuilt=0
done
if ((JEMALLOC)); then
    for v in LABGATE_JEMALLOC_BIN BARE_PINGORA_JEMALLOC_BIN; do
        [[ -x ${!v:-} ]] || prebuilt=0
    done
fi
if ((prebuilt)); then
    log "using the prebuilt binaries from the environment"
    BUILD_NOTE="prebuilt binaries (LABGATE_BIN=$LABGATE_BIN)"
else
    for v in "${VARIANTS[@]}"; do
        build_variant "$v"
    done
    LABGATE_BIN=$BENCH_WORK/bin/labgate-default
    BARE_PINGORA_BIN=$BENCH_WORK/bin/bare_pingora-default
    LOADGEN_BIN=$BENCH_WORK/bin/loadgen-default
    LABGATE_JEMALLOC_BIN=$BENCH_WORK/bin/labgate-jemalloc
    BARE_PINGORA_JEMALLOC_BIN=$BENCH_WORK/bin/bare_pingora-jemalloc
    BUILD_NOTE="cargo --profile $PROFILE"
fi
[[ -x $LOADGEN_BIN ]] || die "no load client ($LOADGEN_BIN)"
declare -A LABGATE_OF=([default]=$LABGATE_BIN [jemalloc]=${LABGATE_JEMALLOC_BIN:-})
declare -A BARE_OF=([default]=$BARE_PINGORA_BIN [jemalloc]=${BARE_PINGORA_JEMALLOC_BIN:-})

flush_disk
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
START=$(date +%s)
n_conns=$(wc -w <<<"$CONNS")
n_systems=$((2 + 5 * ${#VARIANTS[@]}))
log "measuring: forwarding $((n_systems * n_conns * ROUNDS * SECONDS_PER_POINT)) s," \
    "flood $((2 * ROUNDS * FLOOD_SECONDS)) s, memory ~$((20 * ${#VARIANTS[@]})) s (load average $LOAD_BEFORE)"

RESULTS=$BENCH_WORK/results.tsv
FLOODS=$BENCH_WORK/floods.tsv
MEMORY=$BENCH_WORK/memory.md
: >"$RESULTS"
: >"$FLOODS"

# ------------------------------------------------------------------ forwarding, local answers

UP=$(free_port)
PX=$(free_port)
log "starting the nginx upstream, the nginx proxy, bare pingora and labgate (CPU $SERVER_CPU)"
start_nginx_upstream upstream "$SERVER_CPU" "$UP"
start_nginx_proxy proxy "$SERVER_CPU" "$PX" "$UP"
declare -A BP_PORT BA_PORT LG_PORT ACTIVE WAITING
for v in "${VARIANTS[@]}"; do
    BP_PORT[$v]=$(free_port)
    BARE_PINGORA_BIN=${BARE_OF[$v]} start_bare_pingora "bare-$v" "$SERVER_CPU" "${BP_PORT[$v]}" "$UP"
    # The same binary answering every request itself: pingora's floor for a local answer.
    BA_PORT[$v]=$(free_port)
    start "answer-$v" "$SERVER_CPU" "${BARE_OF[$v]}" --listen "127.0.0.1:${BA_PORT[$v]}" \
        --upstream "127.0.0.1:$UP" --threads 1 --answer
    wait_http "http://127.0.0.1:${BA_PORT[$v]}/lab/ping" "answer-$v"
    LG_PORT[$v]=$(free_port)
    write_labgate_config "$BENCH_WORK/labgate-$v.toml" "${LG_PORT[$v]}" "$(free_port)" "$UP" 1
    LABGATE_BIN=${LABGATE_OF[$v]} start_labgate "labgate-$v" "$SERVER_CPU" "$BENCH_WORK/labgate-$v.toml" "${LG_PORT[$v]}"
    ACTIVE[$v]=$(new_session "${LG_PORT[$v]}")
    WAITING[$v]=$(new_session "${LG_PORT[$v]}")
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Session-ID: ${ACTIVE[$v]}" "http://127.0.0.1:${LG_PORT[$v]}/lab/ping") == 200 ]] ||
        die "labgate ($v) does not forward for the ACTIVE session"
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H "X-Session-ID: ${WAITING[$v]}" "http://127.0.0.1:${LG_PORT[$v]}/lab/ping") == 423 ]] ||
        die "labgate ($v) does not answer 423 to the WAITING session"
done

# wrk_point SYSTEM CONNS ROUND URL [HEADER]: one wrk run, one line in $RESULTS.
wrk_point() {
    local sys=$1 conns=$2 round=$3 url=$4 header=${5:-} out
    local args=(-t1 -c"$conns" -d"${SECONDS_PER_POINT}s" --latency --timeout 5s)
    [[ -n $header ]] && args+=(-H "$header")
    out=$(taskset -c "$CLIENT_CPU" wrk "${args[@]}" "$url")
    python3 -c "$PARSE_WRK" "$sys" "$conns" "$round" <<<"$out" >>"$RESULTS"
    tail -1 "$RESULTS" | awk -F'\t' '{printf "  %-14s c=%-4s round %s: %9.0f req/s  p50 %7.0f us  p99 %7.0f us  non-2xx %s  socket errors %s\n", $1, $2, $3, $4, $5, $6, $7, $8}' >&2
}

for round in $(seq "$ROUNDS"); do
    for c in $CONNS; do
        # Every forwarding row sends the same request, X-Session-ID included: the proxies
        # that do not look at it still parse, store and forward it.
        same="X-Session-ID: ${ACTIVE[default]}"
        wrk_point static "$c" "$round" "http://127.0.0.1:$UP/lab/ping"
        wrk_point nginx "$c" "$round" "http://127.0.0.1:$PX/lab/ping" "$same"
        for v in "${VARIANTS[@]}"; do
            lg=http://127.0.0.1:${LG_PORT[$v]}
            wrk_point "pingora-$v" "$c" "$round" "http://127.0.0.1:${BP_PORT[$v]}/lab/ping" "$same"
            wrk_point "answer-$v" "$c" "$round" "http://127.0.0.1:${BA_PORT[$v]}/lab/ping" "X-Session-ID: ${WAITING[$v]}"
            wrk_point "forward-$v" "$c" "$round" "$lg/lab/ping" "X-Session-ID: ${ACTIVE[$v]}"
            wrk_point "423-$v" "$c" "$round" "$lg/lab/ping" "X-Session-ID: ${WAITING[$v]}"
            wrk_point "poll-$v" "$c" "$round" "$lg/session/${WAITING[$v]}"
        done
    done
done

# ------------------------------------------------------------------ POST /session flood

cat >"$BENCH_WORK/create.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/session"
LUA

# flood_point QUEUE ROUND: a fresh labgate (threads = 1; queue in `memory` or `redb`),
# wrk -c$FLOOD_CONNS POSTing sessions, then its /metrics; one line in $FLOODS.
flood_point() {
    local queue=$1 round=$2 port mport extra="" out state
    port=$(free_port)
    mport=$(free_port)
    if [[ $queue == redb ]]; then
        state=$(mktemp -d "$STATE_DIR/labgate-state.XXXXXX")
        chmod 700 "$state"
        extra="state_path = \"$state/queue.redb\""
    fi
    write_labgate_config "$BENCH_WORK/flood.toml" "$port" "$mport" "$UP" 1 "$extra"
    start_labgate "flood-$queue" "$SERVER_CPU" "$BENCH_WORK/flood.toml" "$port"
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$FLOOD_CONNS" -d"${FLOOD_SECONDS}s" --latency \
        --timeout 5s -s "$BENCH_WORK/create.lua" "http://127.0.0.1:$port")
    curl -s --max-time 5 "http://127.0.0.1:$mport/metrics" >"$BENCH_WORK/flood.metrics"
    stop "$LABGATE_PID"
    [[ -n ${state:-} ]] && rm -rf "$state"
    local m=$BENCH_WORK/flood.metrics rejected
    # Why labgate refused creates, if it did: reason=count pairs.
    rejected=$(awk '/^labgate_session_create_rejected_total\{/ { match($1, /reason="[^"]*"/);
        r = substr($1, RSTART + 8, RLENGTH - 9); if ($2 > 0) { printf "%s%s=%d", sep, r, $2; sep = "," } }' "$m")
    python3 -c "$PARSE_WRK" "$queue" "$FLOOD_CONNS" "$round" <<<"$out" |
        tr -d '\n' >>"$FLOODS"
    printf '\t%s\t%s\t%s\n' "$(metric "$m" labgate_sessions_created_total)" \
        "$(metric "$m" labgate_state_write_seconds_count)" "${rejected:--}" >>"$FLOODS"
    tail -1 "$FLOODS" | awk -F'\t' '{printf "  flood %-6s round %s: %9.0f POST/s  p50 %7.0f us  p99 %7.0f us  non-201 %s  created %s  commits %s  refused %s\n", $1, $3, $4, $5, $6, $7 + $8, $9, $10, $11}' >&2
}

for round in $(seq "$ROUNDS"); do
    flood_point memory "$round"
    flood_point redb "$round"
done

# ------------------------------------------------------------------ memory

{
    memory_header "$SESSIONS" "$CONNECTIONS"
    for v in "${VARIANTS[@]}"; do
        port=$(free_port)
        write_labgate_config "$BENCH_WORK/mem.toml" "$port" "$(free_port)" "$UP" 2
        LABGATE_BIN=${LABGATE_OF[$v]} start_labgate "mem-$v" "$(all_cpus)" "$BENCH_WORK/mem.toml" "$port"
        measure_memory "labgate $v (threads = 2)" "$LABGATE_PID" "$port" "$SESSIONS" "$CONNECTIONS"
        stop "$LABGATE_PID"
    done
} >"$MEMORY"

# ------------------------------------------------------------------ report

report() {
    python3 - "$RESULTS" "$FLOODS" "$MEMORY" <<'PY'
import statistics, sys
from collections import defaultdict
results, floods, memory = sys.argv[1:4]
runs = defaultdict(list)
for line in open(results):
    s, c, rnd, rps, p50, p99, bad, sock = line.rstrip("\n").split("\t")
    runs[(s, int(c))].append((float(rps), float(p50), float(p99), int(bad), int(sock)))
conns = sorted({c for _, c in runs})
variants = [v for v in ("default", "jemalloc") if any(s == f"forward-{v}" for s, _ in runs)]
def med(s, c, i=0):
    v = [r[i] for r in runs.get((s, c), [])]
    return statistics.median(v) if v else float("nan")
def errors(s, c):
    # The 423 rows answer 423 by design: wrk counts those as non-2xx, not as errors.
    rs = runs.get((s, c), [])
    return sum(r[4] for r in rs) + (0 if s.startswith(("423-", "answer-")) else sum(r[3] for r in rs))
labels = {"static": "nginx static `return 200`", "nginx": "nginx reverse proxy"}
for v in variants:
    labels.update({
        f"pingora-{v}": f"bare pingora proxy ({v})",
        f"answer-{v}": f"bare pingora local 423 ({v})",
        f"forward-{v}": f"labgate forwarding, ACTIVE ({v})",
        f"423-{v}": f"labgate 423 to WAITING ({v})",
        f"poll-{v}": f"labgate GET /session/{{id}} ({v})",
    })
nrounds = max(len(r) for r in runs.values())
print(f"Forwarding and local answers: median of {nrounds} round(s); requests/s, latency in ms.")
print()
print("| system | " + " | ".join(f"c={c} req/s | p99" for c in conns) + " | errors |")
print("|---|" + "---:|---:|" * len(conns) + "---:|")
for s, label in labels.items():
    cells = " | ".join(f"{med(s, c):,.0f} | {med(s, c, 2) / 1000:.2f}" for c in conns)
    print(f"| {label} | {cells} | {sum(errors(s, c) for c in conns)} |")
print()
def ratio(a, b, c):
    x, y = med(a, c), med(b, c)
    return f"{x / y:.2f}" if y == y and y > 0 else "n/a"
rows = []
for v in variants:
    rows += [
        (f"labgate / bare pingora ({v})", f"forward-{v}", f"pingora-{v}", ">= 0.95 at every count"),
        (f"labgate / nginx proxy ({v})", f"forward-{v}", "nginx", ">= 0.6 at 16"),
        (f"bare pingora / nginx proxy ({v})", f"pingora-{v}", "nginx", "(the floor)"),
        (f"423 / nginx static ({v})", f"423-{v}", "static", ">= 0.6"),
        (f"423 / bare pingora local 423 ({v})", f"423-{v}", f"answer-{v}", "(labgate's share)"),
        (f"bare pingora local 423 / nginx static ({v})", f"answer-{v}", "static", "(the floor)"),
        (f"poll / nginx static ({v})", f"poll-{v}", "static", ">= 0.6"),
    ]
if len(variants) == 2:
    rows += [
        ("labgate jemalloc / default", "forward-jemalloc", "forward-default", "(allocator)"),
        ("bare pingora jemalloc / default", "pingora-jemalloc", "pingora-default", "(allocator)"),
        ("423 jemalloc / default", "423-jemalloc", "423-default", "(allocator)"),
    ]
print("Issue 13's ratios (requests/s over requests/s, same run):")
print()
print("| ratio | " + " | ".join(f"c={c}" for c in conns) + " | target |")
print("|---|" + "---:|" * len(conns) + "---|")
for label, a, b, target in rows:
    print(f"| {label} | " + " | ".join(ratio(a, b, c) for c in conns) + f" | {target} |")
print()

fl = defaultdict(list)
for line in open(floods):
    q, c, rnd, rps, p50, p99, bad, sock, created, commits, refused = line.rstrip("\n").split("\t")
    fl[q].append(dict(rps=float(rps), p50=float(p50), p99=float(p99), bad=int(bad) + int(sock),
                      created=int(created), commits=int(commits), refused=refused, c=c))
if fl:
    c = next(iter(fl.values()))[0]["c"]
    print(f"POST /session flood (wrk -c{c}, labgate threads = 1), median of {len(fl['memory'])} round(s):")
    print()
    print("| queue | POST /session per s | ack p50 ms | ack p99 ms | non-201 answers | creates per commit | refused (reason=count) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for q, label in (("memory", "in memory"), ("redb", "durable (redb, group commit)")):
        rs = fl.get(q, [])
        if not rs:
            continue
        m = lambda k: statistics.median(r[k] for r in rs)
        per = "" if q == "memory" else f"{sum(r['created'] for r in rs) / max(sum(r['commits'] for r in rs), 1):.1f}"
        refused = ",".join(sorted({r["refused"] for r in rs} - {"-"})) or "none"
        print(f"| {label} | {m('rps'):,.0f} | {m('p50') / 1000:.3f} | {m('p99') / 1000:.3f} | "
              f"{sum(r['bad'] for r in rs)} | {per} | {refused} |")
    if fl.get("memory") and fl.get("redb"):
        r = statistics.median(x["rps"] for x in fl["redb"]) / statistics.median(x["rps"] for x in fl["memory"])
        print()
        print(f"durable / in-memory POST /session: {r:.2f} (target >= 0.5)")
    if any(r["bad"] for rs in fl.values() for r in rs):
        print()
        print("WARNING: some POST /session answers were not 201: the flood figures above count them.")
    print()
print(open(memory).read().rstrip())
PY
}

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
STATE_FS=$(df --output=fstype "$STATE_DIR" | tail -1 | tr -d ' ')
{
    echo
    echo "## Issue 13 in one run ($(date '+%Y-%m-%d %H:%M'), $(($(date +%s) - START)) s)"
    echo
    echo "labgate $(cd "$BENCH_ROOT" && git describe --always --dirty 2>/dev/null || echo '?'), $BUILD_NOTE;" \
        "$(nginx -v 2>&1 | sed 's/^nginx version: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2);" \
        "$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)); servers on CPU $SERVER_CPU," \
        "wrk -t1 on CPU $CLIENT_CPU; ${SECONDS_PER_POINT} s per point (flood ${FLOOD_SECONDS} s);" \
        "load average $LOAD_BEFORE before, $LOAD_AFTER after; durable queue on $STATE_FS${_RJEM_MALLOC_CONF:+; jemalloc options _RJEM_MALLOC_CONF=$_RJEM_MALLOC_CONF}."
    echo
    report
} | tee "${OUT:-/dev/null}"
if [[ -n $OUT ]]; then
    cp "$RESULTS" "${OUT%.md}.tsv"
    cp "$FLOODS" "${OUT%.md}.floods.tsv"
    log "report written to $OUT, raw runs to ${OUT%.md}.tsv and ${OUT%.md}.floods.tsv"
fi
