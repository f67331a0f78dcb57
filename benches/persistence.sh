#!/usr/bin/env bash
# The cost of durability (issue 3, issue 13 item 4): POST /session throughput and p99
# acknowledgement latency with the queue in memory and with the redb store (group commit:
# one commit carries every create waiting on it), the commits' p50/p99 from
# labgate_state_write_seconds, and how many creates one commit carried on average.
# Loopback only; bounded (2 x DURATION); stops what it starts. Needs wrk (apt-get install wrk).
#   benches/persistence.sh [DURATION_SECONDS] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
CONNS=${2:-16}
command -v wrk >/dev/null || { echo "persistence: needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cat > "$work/create.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/session"
LUA

run() { # $1 = label, $2 = extra [queue] lines
  local port mport
  port=$(free_port); mport=$(free_port)
  cat > "$work/labgate.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
threads = 1
grace_period = "1s"
[metrics]
listen = "127.0.0.1:$mport"
[queue]
# The highest caps labgate accepts, so the flood is not answered 429/503.
max_sessions = 1000000
max_sessions_per_client = 1000000
$2
[rate_limit]
burst = 10000
refill_every = "1us"
[[upstream]]
name = "none"
address = "127.0.0.1:9"
routes = ["/lab"]
TOML
  LABGATE_LOG=warn ./target/release/labgate serve --config "$work/labgate.toml" &
  pid=$!
  for _ in $(seq 100); do curl -fs "127.0.0.1:$port/healthz" && break; sleep 0.05; done
  local out rps p50 p99
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$work/create.lua" "http://127.0.0.1:$port")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  echo "| $1 | $rps | $p50 | $p99 |"
  curl -s "127.0.0.1:$mport/metrics" > "$work/metrics.$1"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

echo "| queue | POST /session per second (wrk -c$CONNS, ${DURATION}s, labgate threads=1) | ack p50 | ack p99 |"
echo "|---|---|---|---|"
run memory ""
run redb "state_path = \"$work/queue.redb\""

# p50/p99 of the durable write, interpolated in the histogram buckets as
# Prometheus' histogram_quantile does.
python3 - "$work/metrics.redb" <<'PY'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.match(r'labgate_state_write_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m[1] == "+Inf" else float(m[1]), float(m[2])))
total = buckets[-1][1]
created, busy = 0.0, 0.0
for line in open(sys.argv[1]):
    if line.startswith("labgate_sessions_created_total "):
        created = float(line.split()[1])
    if line.startswith("labgate_state_write_seconds_sum "):
        busy = float(line.split()[1])
def q(p):
    rank, lo, prev = p * total, 0.0, 0.0
    for le, c in buckets:
        if c >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * (rank - prev) / max(c - prev, 1)
        lo, prev = le, c
print(f"\ndurable commits: {int(total)} for {int(created)} creates ({created / max(total, 1):.1f} per commit); "
      f"commit p50 {q(0.5)*1000:.3f} ms, p99 {q(0.99)*1000:.3f} ms (histogram-interpolated); "
      f"{busy:.2f} s spent committing")
PY
