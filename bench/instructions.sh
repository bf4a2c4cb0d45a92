#!/usr/bin/env bash
# User-space instructions per proxied public request, counted by valgrind's callgrind.
#
#   bash bench/instructions.sh                 # builds, measures target/release/portcullis
#   bash bench/instructions.sh BIN_A BIN_B ... # measures each given binary in turn
#
# Requests per second on a small shared VM drift by 10-20 % from one minute to the next
# (BENCHMARKS.md), which hides a change worth a few per cent. The instruction count of the
# server's own code is the same to within about 0.1 % from run to run, so it shows such a
# change; `bench/run.sh` is still what says how fast the proxy is. Kernel time (the
# socket calls) is not counted here.
#
# Knobs: MEASURE=8 (seconds of load counted), CONNS=16, PORT_BASE=18180.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MEASURE="${MEASURE:-8}"
CONNS="${CONNS:-16}"
PORT_BASE="${PORT_BASE:-18180}"
BACKEND_PORT=$((PORT_BASE + 1))
PC_PORT=$((PORT_BASE + 3))
HOST_HDR="portal.localhost:${PC_PORT}"

log() { printf '[instructions] %s\n' "$*" >&2; }
die() { printf '[instructions] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
bench_install valgrind

BINS=("$@")
if ((${#BINS[@]} == 0)); then
    log "cargo build --release"
    cargo build --release --quiet >&2 || die "release build failed"
    BINS=("$ROOT/target/release/portcullis")
fi

WORK="$(mktemp -d /tmp/portcullis-instr.XXXXXX)"
PC_PID=""
cleanup() {
    [[ -s "$WORK/backend/nginx.pid" ]] && kill "$(cat "$WORK/backend/nginx.pid")" 2>/dev/null || true
    [[ -n "$PC_PID" ]] && kill "$PC_PID" 2>/dev/null && wait "$PC_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The same page and backend as bench/run.sh.
mkdir -p "$WORK/www" "$WORK/backend/tmp" "$WORK/pc/data"
bench_page "$WORK/www/index.html"
bench_backend_conf "$WORK/backend" "$BACKEND_PORT" "$WORK/www" >"$WORK/backend/nginx.conf"
cat >"$WORK/pc/config.toml" <<CONF
[server]
listen = "127.0.0.1:$PC_PORT"
auth_url = "http://login.localhost:$PC_PORT"
data_dir = "$WORK/pc/data"

[[app]]
id = "portal"
name = "Portal"
url = "http://portal.localhost:$PC_PORT"
upstream = "http://127.0.0.1:$BACKEND_PORT"
public_paths = ["/index.html"]
CONF
"$NGINX" -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"

load() { wrk -t2 -c"$CONNS" -d"$1" -H "Host: $HOST_HDR" "http://127.0.0.1:$PC_PORT/index.html"; }

printf '| Binary | Requests counted | Instructions | Instructions per request |\n|---|---:|---:|---:|\n'
for bin in "${BINS[@]}"; do
    [[ -x "$bin" ]] || die "$bin is not an executable"
    out="$WORK/callgrind.out"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$bin" serve -c "$WORK/pc/config.toml" >"$WORK/pc.log" 2>&1 &
    PC_PID=$!
    for _ in $(seq 1 120); do
        curl -sf -o /dev/null -H "Host: $HOST_HDR" "http://127.0.0.1:$PC_PORT/index.html" && break
        kill -0 "$PC_PID" 2>/dev/null || die "$bin did not start: $(tail -5 "$WORK/pc.log")"
        sleep 1
    done
    load 3s >/dev/null # upstream connections pooled, caches warm
    callgrind_control -z "$PC_PID" >/dev/null 2>&1
    requests=$(load "${MEASURE}s" | awk '/requests in/ {print $1}')
    callgrind_control -d "$PC_PID" >/dev/null 2>&1
    kill "$PC_PID"; wait "$PC_PID" 2>/dev/null || true
    PC_PID=""
    # The dump taken after zeroing holds exactly the measured stretch.
    dump=$(ls -t "$out".* | head -1)
    total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
    [[ -n "$total" && "$requests" -gt 0 ]] || die "no count for $bin"
    printf '| %s | %d | %d | **%d** |\n' "$bin" "$requests" "$total" "$((total / requests))"
    rm -f "$out" "$out".*
done
