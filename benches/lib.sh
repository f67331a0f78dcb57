# Shared helpers for the benchmark scripts in benches/ (sourced, not run).
#
# Owns process lifecycle and fixtures for the scripts: free loopback ports, starting a
# server pinned to a CPU and remembering its pid, stopping every such process on exit
# (normal end, error or Ctrl-C), the labgate/nginx/neops configs and the builds. It must
# never bind anything but 127.0.0.1 and never stop a process it did not start.

set -euo pipefail

BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_WORK=$(mktemp -d /tmp/labgate-bench.XXXXXX)
BENCH_PIDS=()
# Where the neops-remote-lab venv lives; kept between runs so pip runs once.
NEOPS_VENV=${NEOPS_VENV:-$HOME/.cache/labgate-bench/neops-venv}
NEOPS_VERSION=1.4.0

bench_cleanup() {
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        # Bounded: 50 x 0.1 s, then SIGKILL.
        local i
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    BENCH_PIDS=()
    if [[ ${BENCH_KEEP_WORK:-0} == 1 ]]; then
        echo "work directory kept: $BENCH_WORK" >&2
    else
        rm -rf "$BENCH_WORK"
    fi
}
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# A free TCP port on 127.0.0.1 (the kernel picks it; the tiny window before the server
# binds it is acceptable for a benchmark).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# start NAME CPU CMD...: runs CMD pinned to CPU in the background, logs to
# $BENCH_WORK/NAME.log, remembers the pid; sets STARTED_PID.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$BENCH_WORK/$name.log" 2>&1 &
    STARTED_PID=$!
    BENCH_PIDS+=("$STARTED_PID")
}

# stop PID: stops one process started by `start` and forgets it.
stop() {
    local pid=$1 i keep=()
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for i in "${BENCH_PIDS[@]}"; do
        [[ $i == "$pid" ]] || keep+=("$i")
    done
    BENCH_PIDS=("${keep[@]}")
}

# wait_http URL NAME: waits (at most 30 s) until URL answers anything over HTTP.
wait_http() {
    local url=$1 name=$2 i
    for i in $(seq 300); do
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        sleep 0.1
    done
    tail -20 "$BENCH_WORK/$name.log" >&2 || true
    die "$name did not answer at $url within 30 s"
}

# rss_kib PID: resident set size of a process in KiB.
rss_kib() {
    awk '/^VmRSS:/ {print $2}' "/proc/$1/status"
}

# measure_memory NAME PID PORT SESSIONS CONNECTIONS: resident memory of one server as a
# table row: idle (after one request, so lazily built state is counted), with SESSIONS
# WAITING sessions, with those and CONNECTIONS open keep-alive connections; then the two
# figures those make: KiB per session and KiB per connection (each difference over its
# count). The row's columns: | NAME | idle | + sessions | + connections | per session |
# per connection |, MiB and KiB.
measure_memory() {
    local name=$1 pid=$2 port=$3 n_sessions=$4 n_conns=$5 idle sessions conns holder i
    curl -s -o /dev/null "http://127.0.0.1:$port/healthz"
    sleep 1
    idle=$(rss_kib "$pid")
    "$LOADGEN_BIN" create-sessions --addr "127.0.0.1:$port" --count "$n_sessions" >/dev/null ||
        die "$name: creating $n_sessions sessions failed"
    sleep 1
    sessions=$(rss_kib "$pid")
    start holder "$(all_cpus)" "$LOADGEN_BIN" hold-connections --addr "127.0.0.1:$port" \
        --count "$n_conns" --seconds 60
    holder=$STARTED_PID
    for i in $(seq 600); do
        grep -q '^open=' "$BENCH_WORK/holder.log" 2>/dev/null && break
        kill -0 "$holder" 2>/dev/null || { cat "$BENCH_WORK/holder.log" >&2; die "holder failed"; }
        sleep 0.1
    done
    grep -q '^open=' "$BENCH_WORK/holder.log" || die "$n_conns connections not open within 60 s"
    sleep 1
    conns=$(rss_kib "$pid")
    stop "$holder"
    awk -v n="$name" -v a="$idle" -v b="$sessions" -v c="$conns" -v s="$n_sessions" -v k="$n_conns" \
        'BEGIN { printf "| %s | %.1f | %.1f | %.1f | %.2f | %.1f |\n", n, a / 1024, b / 1024, c / 1024, (b - a) / s, (c - b) / k }'
}

# The header of measure_memory's rows.
memory_header() {
    echo "| server | idle MiB | + $1 sessions MiB | + $2 connections MiB | KiB per session | KiB per connection |"
    echo "|---|---:|---:|---:|---:|---:|"
}

# all_cpus: every CPU, for taskset (a process that is not measured for speed).
all_cpus() {
    echo "0-$(($(nproc) - 1))"
}

need_tools() {
    local missing=()
    command -v nginx >/dev/null || missing+=(nginx)
    command -v wrk >/dev/null || missing+=(wrk)
    command -v taskset >/dev/null || missing+=(util-linux)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        log "installing from Debian: ${missing[*]}"
        local sudo=()
        [[ $(id -u) == 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    command -v python3 >/dev/null || die "python3 is needed (ports, the summary table)"
}

# Builds labgate (release), the load client and the bare pingora proxy; sets LABGATE_BIN,
# LOADGEN_BIN and BARE_PINGORA_BIN. The target directory is cargo's (CARGO_TARGET_DIR
# if set). With all three already set in the environment (say, LABGATE_BIN pointing at
# a `--profile production` build), nothing is built.
build_labgate() {
    if [[ -x ${LABGATE_BIN:-} && -x ${LOADGEN_BIN:-} && -x ${BARE_PINGORA_BIN:-} ]]; then
        log "using the prebuilt $LABGATE_BIN, $LOADGEN_BIN and $BARE_PINGORA_BIN"
        return
    fi
    log "building labgate --release, the load client and the bare pingora proxy"
    (cd "$BENCH_ROOT" && cargo build --release --locked --quiet --bin labgate)
    local dir
    dir=$(cd "$BENCH_ROOT" && cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    LABGATE_BIN=$dir/release/labgate
    local bins
    bins=$(cd "$BENCH_ROOT" && cargo bench --locked --quiet --no-run --bench loadgen \
        --bench bare_pingora --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])')
    LOADGEN_BIN=$(awk '$1 == "loadgen" {print $2}' <<<"$bins")
    BARE_PINGORA_BIN=$(awk '$1 == "bare_pingora" {print $2}' <<<"$bins")
    [[ -x $LABGATE_BIN && -x $LOADGEN_BIN && -x $BARE_PINGORA_BIN ]] ||
        die "build did not produce labgate, loadgen and bare_pingora"
}

# start_bare_pingora NAME CPU PORT UPSTREAM_PORT: the bare pingora proxy (threads = 1).
start_bare_pingora() {
    start "$1" "$2" "$BARE_PINGORA_BIN" --listen "127.0.0.1:$3" --upstream "127.0.0.1:$4" --threads 1
    wait_http "http://127.0.0.1:$3/lab/ping" "$1"
}

# write_labgate_config FILE PORT METRICS_PORT UPSTREAM_PORT THREADS [EXTRA_QUEUE_LINES]
# Timeouts of an hour so nothing is reaped during a run; every cap that would answer a
# benchmark's load with 429/503 at its highest allowed value: sessions (a POST flood
# creates hundreds of thousands from one address), connections (1,000 idle keep-alive
# connections, 128 from one address) and the POST /session rate limit (10,000 burst,
# refilled every microsecond).
# The open-file limit every bench sets at least: labgate's budget for the config below
# (max_connections 1100 x 8 + pools + base: 9,377 with threads = 2) fits under it.
BENCH_NOFILE=10000

write_labgate_config() {
    cat >"$1" <<EOF
[server]
listen = ["127.0.0.1:$2"]
threads = $5
max_connections = 1100
max_connections_per_client = 1100

[metrics]
listen = "127.0.0.1:$3"

[queue]
active_timeout = "1h"
waiting_timeout = "1h"
max_sessions = 1000000
max_sessions_per_client = 1000000
${6:-}

[rate_limit]
burst = 10000
refill_every = "1us"

[[upstream]]
name = "lab"
address = "127.0.0.1:$4"
routes = ["/lab"]
EOF
}

# nginx_conf FILE NAME SERVER_BLOCK...: an nginx config (one worker, no access log, temp
# files in the work dir, client connections kept open for the whole point).
nginx_conf() {
    local file=$1 name=$2
    shift 2
    mkdir -p "$BENCH_WORK/$name-tmp"
    cat >"$file" <<EOF
worker_processes 1;
daemon off;
pid $BENCH_WORK/$name.pid;
error_log $BENCH_WORK/$name-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $BENCH_WORK/$name-tmp;
    proxy_temp_path $BENCH_WORK/$name-tmp;
    fastcgi_temp_path $BENCH_WORK/$name-tmp;
    uwsgi_temp_path $BENCH_WORK/$name-tmp;
    scgi_temp_path $BENCH_WORK/$name-tmp;
    # Keep client connections open for the whole point, as labgate does.
    keepalive_requests 100000000;
    $*
}
EOF
}

# start_nginx_upstream NAME CPU PORT: nginx answering every request with a fixed 19-byte
# `200` (the lab behind every proxy, and the "nginx static return 200" row).
start_nginx_upstream() {
    nginx_conf "$BENCH_WORK/$1.conf" "$1" "
    server {
        listen 127.0.0.1:$3;
        location / { default_type text/plain; return 200 \"hello from the lab\\n\"; }
    }"
    start "$1" "$2" nginx -c "$BENCH_WORK/$1.conf" -e "$BENCH_WORK/$1-error.log"
    wait_http "http://127.0.0.1:$3/lab/ping" "$1"
}

# start_nginx_proxy NAME CPU PORT UPSTREAM_PORT: nginx as a plain reverse proxy as
# commonly deployed: HTTP/1.1 keep-alive pool to the upstream (pingora pools upstream
# connections too) and the X-Forwarded-* headers labgate sets.
start_nginx_proxy() {
    nginx_conf "$BENCH_WORK/$1.conf" "$1" "
    upstream lab { server 127.0.0.1:$4; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$3;
        location /lab {
            proxy_pass http://lab;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }"
    start "$1" "$2" nginx -c "$BENCH_WORK/$1.conf" -e "$BENCH_WORK/$1-error.log"
    wait_http "http://127.0.0.1:$3/lab/ping" "$1"
}

# wrk's text report on stdin -> one tab-separated line: the given fields (system,
# connections, round), then req/s, p50 us, p99 us, non-2xx answers, socket errors.
PARSE_WRK=$(cat <<'PY'
import re, sys
text = sys.stdin.read()
unit = {"us": 1.0, "ms": 1e3, "s": 1e6}
def pct(p):
    m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % p, text, re.M)
    return float(m.group(1)) * unit[m.group(2)] if m else float("nan")
m = re.search(r"Requests/sec:\s+([\d.]+)", text)
if not m:
    sys.exit("wrk printed no Requests/sec line:\n" + text)
rps = float(m.group(1))
m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
non2xx = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
sock = sum(int(x) for x in m.groups()) if m else 0
print("\t".join(map(str, [*sys.argv[1:], rps, pct(50), pct(99), non2xx, sock])))
PY
)

# start_labgate NAME CPU CONFIG PORT: sets LABGATE_PID. Logs at warn: like nginx with
# access_log off, the measurement is of the proxy, not of writing access lines.
start_labgate() {
    start "$1" "$2" env LABGATE_LOG=warn "$LABGATE_BIN" serve --config "$3"
    LABGATE_PID=$STARTED_PID
    wait_http "http://127.0.0.1:$4/healthz" "$1"
}

# flush_disk: writes back every dirty page (sync) and says how many there were, so a
# durable point's fdatasyncs do not queue behind a build's writeback (a fresh release
# build leaves hundreds of MiB dirty: the first durable rounds after one ran at half speed).
flush_disk() {
    local dirty
    dirty=$(awk '/^Dirty:/ {print $2}' /proc/meminfo)
    sync
    log "sync: ${dirty:-?} KiB were dirty"
}

# metric FILE NAME: the sum of every series of one metric in a /metrics text (0 if none).
metric() {
    awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d", s }' "$1"
}

# new_session PORT: POST /session, prints the session id.
new_session() {
    curl -s --max-time 5 -X POST "http://127.0.0.1:$1/session" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])'
}

# Finds a Python >= 3.12 (PATH, then pyenv); prints its path or nothing. Each candidate
# is run once: a pyenv shim exists for every version but fails for inactive ones.
find_python312() {
    local c
    for c in python3.12 python3.13 "$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python3; do
        if "$c" -c 'import sys; assert sys.version_info >= (3, 12)' 2>/dev/null; then
            command -v "$c"
            return
        fi
    done
}

# Creates the neops-remote-lab venv once; sets NEOPS_PY and NEOPS_NOTE.
setup_neops() {
    local py
    py=$(find_python312)
    if [[ ! -x $NEOPS_VENV/bin/python ]] ||
        ! "$NEOPS_VENV/bin/python" -c "import importlib.metadata as m; assert m.version('neops-remote-lab') == '$NEOPS_VERSION'" 2>/dev/null; then
        log "creating the neops-remote-lab $NEOPS_VERSION venv in $NEOPS_VENV"
        rm -rf "$NEOPS_VENV"
        mkdir -p "$(dirname "$NEOPS_VENV")"
        if [[ -n $py ]]; then
            "$py" -m venv "$NEOPS_VENV"
            "$NEOPS_VENV/bin/pip" install -q "neops-remote-lab==$NEOPS_VERSION"
        else
            # It declares Python >= 3.12; without one, install it into the default
            # python3 anyway and say so in the output.
            python3 -m venv "$NEOPS_VENV"
            "$NEOPS_VENV/bin/pip" install -q --ignore-requires-python "neops-remote-lab==$NEOPS_VERSION"
        fi
    fi
    NEOPS_PY=$NEOPS_VENV/bin/python
    NEOPS_NOTE="neops-remote-lab $NEOPS_VERSION on $("$NEOPS_PY" -c 'import platform; print("Python", platform.python_version())'), uvicorn $("$NEOPS_PY" -c 'import uvicorn; print(uvicorn.__version__)')"
}

# start_neops NAME CPU PORT: runs its own CLI (python -m neops_remote_lab), which
# refuses to start without a `netlab` on PATH: a fake one that only answers `version`
# is put first on PATH. Its single-instance lock goes to our work dir. Sets NEOPS_PID.
start_neops() {
    mkdir -p "$BENCH_WORK/fakebin" "$BENCH_WORK/neops-tmp"
    cat >"$BENCH_WORK/fakebin/netlab" <<'EOF'
#!/bin/sh
# Fake netlab for benchmarks: the session API never starts a lab.
echo "netlab version 0.0.0 (fake, for benchmarks)"
EOF
    chmod +x "$BENCH_WORK/fakebin/netlab"
    start "$1" "$2" env -C "$BENCH_WORK/neops-tmp" PATH="$BENCH_WORK/fakebin:$PATH" \
        TMPDIR="$BENCH_WORK/neops-tmp" \
        "$NEOPS_PY" -m neops_remote_lab --host 127.0.0.1 --port "$3" --log-level WARNING
    NEOPS_PID=$STARTED_PID
    wait_http "http://127.0.0.1:$3/healthz" "$1"
}
