#!/usr/bin/env bash
# Saves a PNG of the status page for the closing note of issue 15 ("who holds the lab"):
# three sessions with claimed owners and notes, an expected start per waiter (after one
# completed hold), and the viewer's own row marked "you" (/status?tag=...). Prints the
# same queue as `labgate status` shows it. Not a benchmark; nothing is committed.
#
#   benches/status_screenshot.sh [OUT.png]        (default: ./status.png)
#
# Needs headless Chromium (/usr/bin/chromium, as tests/it/status_page.rs), curl and
# python3. Uses LABGATE_BIN if set, else builds target/debug/labgate. Binds loopback
# ports chosen at run time; stops everything it started.

source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT=$(realpath -m "${1:-status.png}")
CHROMIUM=$(command -v chromium || echo /usr/bin/chromium)
[[ -x $CHROMIUM ]] || die "headless Chromium is needed (Debian: chromium; .ci/setup --test installs it)"
command -v curl >/dev/null || die "curl is needed"
if [[ ! -x ${LABGATE_BIN:-} ]]; then
    (cd "$BENCH_ROOT" && cargo build --locked --quiet --bin labgate)
    LABGATE_BIN=$BENCH_ROOT/target/debug/labgate
fi

port=$(free_port)
metrics=$(free_port)
demo=$(free_port)
sed -e "s/127.0.0.1:8080/127.0.0.1:$port/" \
    -e "s/127.0.0.1:9464/127.0.0.1:$metrics/" \
    -e "s/127.0.0.1:9181/127.0.0.1:$demo/g" \
    -e "s#/tmp/labgate-admin.sock#$BENCH_WORK/admin.sock#" \
    "$BENCH_ROOT/config/labgate.toml" >"$BENCH_WORK/labgate.toml"
start labgate 0 "$LABGATE_BIN" serve --config "$BENCH_WORK/labgate.toml"
base=http://127.0.0.1:$port
wait_http "$base/healthz" labgate

# new OWNER NOTE: opens a labelled session; prints "ID TAG".
new() {
    local body head
    body=$(python3 -c 'import json,sys; print(json.dumps({"owner": sys.argv[1], "note": sys.argv[2]}))' "$1" "$2")
    head=$(curl -s -D - -o "$BENCH_WORK/created.json" -X POST \
        -H 'Content-Type: application/json' -d "$body" "$base/session")
    python3 - "$BENCH_WORK/created.json" "$head" <<'PY'
import json, sys
tag = next(l.split(":", 1)[1].strip() for l in sys.argv[2].splitlines()
           if l.lower().startswith("x-lab-session-tag:"))
print(json.load(open(sys.argv[1]))["session_id"], tag)
PY
}

# One completed hold, so each waiter gets an expected start.
read -r first _ < <(new "nightly@ci-3" "warm-up")
sleep 10
curl -s -o /dev/null -X DELETE "$base/session/$first"

read -r _ _ < <(new "alice@lab-pc" "firmware 2.1 regression on r1")
read -r _ _ < <(new "runner@gh-7" "https://github.com/acme/rig/actions/runs/4242")
read -r mine mytag < <(new "bob@laptop" "bgp timers <try 3>")
sleep 1

"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --no-proxy-server \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$BENCH_WORK/chromium" --window-size=1000,620 \
    --screenshot="$OUT" "$base/status?tag=$mytag" >"$BENCH_WORK/chromium.log" 2>&1 ||
    { tail -5 "$BENCH_WORK/chromium.log" >&2; die "chromium failed"; }
[[ -s $OUT ]] || die "no screenshot written"
log "status page screenshot: $OUT ($(stat -c %s "$OUT") bytes; your tag $mytag)"
LAB_SESSION_ID=$mine "$LABGATE_BIN" status --url "$base"
