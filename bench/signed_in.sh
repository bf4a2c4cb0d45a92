#!/usr/bin/env bash
# Signed-in traffic through Portcullis against nginx proxy_pass (which checks nothing), to
# the same static nginx backend; then scale (1 / 10,000 / 100,000 live sessions), a flood
# of wrong-password sign-ins, and 5,000 idle keep-alive connections.
#
#   bash bench/signed_in.sh
#
# Knobs: ROUNDS=3 DURATION=10 (seconds) SCALE="1 10000 100000" IDLE=5000 SKIP_BUILD=1
#        PORT_BASE=18180 KEEP_WORK=1
# Writes bench/results-signed-in.md and prints the same markdown.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
SCALE="${SCALE:-1 10000 100000}"
IDLE="${IDLE:-5000}"
PORT_BASE="${PORT_BASE:-18180}"
BACKEND_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
PC_PORT=$((PORT_BASE + 3))
HOST_HDR="portal.localhost:${PC_PORT}"
CLIENT="python3 $ROOT/bench/session_client.py"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
bench_install python3
[[ -n "${SKIP_BUILD:-}" ]] || cargo build --release --quiet >&2 || die "release build failed"
BIN="$ROOT/target/release/portcullis"
# What was built, read now: the tree may change while the rounds run.
PC_REV="$(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- src Cargo.toml Cargo.lock .cargo || echo ' + uncommitted changes to the code')"
[[ -z "${SKIP_BUILD:-}" ]] || PC_REV="$PC_REV (SKIP_BUILD: binary not rebuilt)"
# Room for the idle connections (and their counterparts in this shell's children).
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d /tmp/portcullis-signed-in.XXXXXX)"
PC_PID=""
cleanup() {
    local rc=$?
    for f in "$WORK"/backend/nginx.pid "$WORK"/front/nginx.pid; do
        [[ -s "$f" ]] && kill "$(cat "$f")" 2>/dev/null || true
    done
    [[ -n "$PC_PID" ]] && kill "$PC_PID" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ -n "${KEEP_WORK:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$WORK"/{www,backend/tmp,front/tmp,pc}
bench_page "$WORK/www/index.html"
bench_backend_conf "$WORK/backend" "$BACKEND_PORT" "$WORK/www" >"$WORK/backend/nginx.conf"
bench_front_conf "$WORK/front" "$NGINX_PORT" "$BACKEND_PORT" >"$WORK/front/nginx.conf"
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -e "$WORK/backend/error.log"
"$NGINX" -p "$WORK/front" -c "$WORK/front/nginx.conf" -e "$WORK/front/error.log"

# Only /static/* is public: /index.html needs a signed-in session. The sign-in rate limit
# is lifted so the flood below reaches Argon2 (as attempts from many addresses would).
# header_read_timeout is also how long an idle keep-alive connection is kept (10 s by
# default); 60 s lets the idle connections of part D outlast the measurement.
pc_config() { # data_dir
    cat <<EOF
[server]
listen = "127.0.0.1:$PC_PORT"
auth_url = "http://login.localhost:$PC_PORT"
data_dir = "$1"
header_read_timeout = "60s"

[security]
login_rate_per_minute = 100000000

[[app]]
id = "portal"
name = "Portal"
url = "http://portal.localhost:$PC_PORT"
upstream = "http://127.0.0.1:$BACKEND_PORT"
public_paths = ["/static/*"]
EOF
}
wait_port() {
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    die "nothing listens on $1"
}
start_pc() { # config
    RUST_LOG=warn "$BIN" serve -c "$1" >>"$WORK/pc/portcullis.log" 2>&1 &
    PC_PID=$!
    wait_port "$PC_PORT"
}
stop_pc() {
    kill -TERM "$PC_PID" 2>/dev/null || true
    wait "$PC_PID" 2>/dev/null || true
    PC_PID=""
}
wait_port "$BACKEND_PORT"; wait_port "$NGINX_PORT"

# ---------------------------------------------------------------- one real sign-in
pc_config "$WORK/pc/data" >"$WORK/pc/config.toml"
start_pc "$WORK/pc/config.toml"
LINK=$("$BIN" user add bench --email bench@example.com --app portal -c "$WORK/pc/config.toml" | tail -1)
log "signing in through the pages (activation, enrolment, next code: up to 30 s)"
TOKEN=$($CLIENT signin "$PC_PORT" "$LINK")
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_HDR" -H "Cookie: portcullis-app=$TOKEN" "http://127.0.0.1:$PC_PORT/index.html")
[[ "$code" == 200 ]] || die "signed-in request answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_HDR" "http://127.0.0.1:$PC_PORT/index.html")
[[ "$code" == 401 ]] || die "request without a session answered $code, not 401"

# ---------------------------------------------------------------- measuring
PC_CPU_PIDS() { echo "$PC_PID"; }
FRONT_PIDS() { pgrep -P "$(cat "$WORK/front/nginx.pid")" | tr '\n' ' '; }
TICK=$(getconf CLK_TCK)
cpu_of() { local s=0 f; for p in $1; do read -r -a f <"/proc/$p/stat"; s=$((s + f[13] + f[14])); done; echo "$s"; }
# run_wrk NAME PORT PIDS CONNS SECONDS [wrk args...] -> "rps p50 p99 cpu_us_per_req"
run_wrk() {
    local name=$1 port=$2 pids=$3 conns=$4 secs=$5; shift 5
    local c0 c1 out
    c0=$(cpu_of "$pids")
    out=$(wrk -t2 -c"$conns" -d"${secs}s" --latency -H "Host: $HOST_HDR" "$@" "http://127.0.0.1:$port/index.html")
    c1=$(cpu_of "$pids")
    echo "$out" >"$WORK/wrk-$name.txt"
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then die "$name: $(grep -E 'Non-2xx|Socket errors' <<<"$out")"; fi
    awk -v c0="$c0" -v c1="$c1" -v tick="$TICK" '
        /Requests\/sec/ {rps=$2} /requests in/ {n=$1}
        $1=="50%" {p50=$2} $1=="99%" {p99=$2}
        function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
        END { printf "%.0f %.3f %.3f %.1f\n", rps, ms(p50), ms(p99), (c1-c0)/tick*1e6/n }' <<<"$out"
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

REPORT="$WORK/report.md"
{
    echo "## Signed-in requests — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Machine: $(nproc) vCPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -sr); $("$NGINX" -v 2>&1 | sed 's/.*version: //'); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); Portcullis $PC_REV. Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
} >"$REPORT"

log "A: signed-in, one session, $ROUNDS rounds of ${DURATION}s, alternating"
echo "### A. One session, wrk -c64, alternating rounds" >>"$REPORT"
echo >>"$REPORT"
echo "| Round | Front | req/s | p50 ms | p99 ms | front CPU µs/req |" >>"$REPORT"
echo "|---|---|---:|---:|---:|---:|" >>"$REPORT"
: >"$WORK/a-nginx"; : >"$WORK/a-pc"
run_wrk warm "$PC_PORT" "$PC_PID" 64 3 -H "Cookie: portcullis-app=$TOKEN" >/dev/null
run_wrk warm "$NGINX_PORT" "$(FRONT_PIDS)" 64 3 -H "Cookie: portcullis-app=$TOKEN" >/dev/null
for r in $(seq 1 "$ROUNDS"); do
    order="nginx pc"; ((r % 2 == 0)) && order="pc nginx"
    for f in $order; do
        if [[ $f == nginx ]]; then res=$(run_wrk "a-nginx-$r" "$NGINX_PORT" "$(FRONT_PIDS)" 64 "$DURATION" -H "Cookie: portcullis-app=$TOKEN")
        else res=$(run_wrk "a-pc-$r" "$PC_PORT" "$PC_PID" 64 "$DURATION" -H "Cookie: portcullis-app=$TOKEN"); fi
        echo "$res" >>"$WORK/a-$f"
        log "A round $r $f: $res"
        read -r rps p50 p99 cpu <<<"$res"
        echo "| $r | $([[ $f == pc ]] && echo Portcullis || echo nginx) | $rps | $p50 | $p99 | $cpu |" >>"$REPORT"
    done
done
col() { awk -v c="$2" '{print $c}' "$1" | median; }
N_RPS=$(col "$WORK/a-nginx" 1); P_RPS=$(col "$WORK/a-pc" 1)
N_P99=$(col "$WORK/a-nginx" 3); P_P99=$(col "$WORK/a-pc" 3)
{
    echo
    echo "Medians: nginx $N_RPS req/s, p50 $(col "$WORK/a-nginx" 2) ms, p99 $N_P99 ms, $(col "$WORK/a-nginx" 4) µs CPU/req; Portcullis $P_RPS req/s, p50 $(col "$WORK/a-pc" 2) ms, p99 $P_P99 ms, $(col "$WORK/a-pc" 4) µs CPU/req."
    echo "**Throughput ratio $(awk -v a="$P_RPS" -v b="$N_RPS" 'BEGIN{printf "%.2f", a/b}')×, p99 ratio $(awk -v a="$P_P99" -v b="$N_P99" 'BEGIN{printf "%.2f", a/b}')×** (Portcullis / nginx; targets ≥ 1.0× and ≤ 1.2×)."
    echo
} >>"$REPORT"

# ---------------------------------------------------------------- scale
log "B: scale"
{
    echo "### B. Live sessions in the store"
    echo
    echo "Two loads per store size, on a fresh server: *one* — all requests carry one session's cookie while the"
    echo "others merely exist; *rotating* — every request carries the next session's cookie (bench/rotate.lua),"
    echo "so each of the N sessions is used every N/(req/s) seconds: the worst case for the in-memory cache."
    echo "Before measuring *rotating*, a warm-up pass sends about one request per session, so what is measured"
    echo "is the steady state: every session has had its once-a-minute last-seen write since the server started."
    echo "Peak RSS (VmHWM) is read after *one* and again after *rotating*."
    echo
    echo "| Live sessions | one: req/s | one: p99 ms | one: peak RSS MiB | rotating: req/s | rotating: p50 ms | rotating: p99 ms | rotating: CPU µs/req | rotating: peak RSS MiB | rotating vs 1 session |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
} >>"$REPORT"
stop_pc
"$BIN" store export -c "$WORK/pc/config.toml" >"$WORK/export.jsonl" 2>/dev/null
BASE_RPS=""
for n in $SCALE; do
    d="$WORK/pc/data-$n"
    mkdir -p "$d" && chmod 700 "$d"
    cp -a "$WORK/pc/data/secret.key" "$WORK/pc/data/signing-keys" "$d/"
    pc_config "$d" >"$WORK/pc/config-$n.toml"
    $CLIENT seed $((n - 1)) "$WORK/tokens-$n.txt" <"$WORK/export.jsonl" >"$WORK/import-$n.jsonl"
    echo "$TOKEN" >>"$WORK/tokens-$n.txt"
    "$BIN" store import -c "$WORK/pc/config-$n.toml" <"$WORK/import-$n.jsonl" >/dev/null
    start_pc "$WORK/pc/config-$n.toml"
    one=$(run_wrk "b-one-$n" "$PC_PORT" "$PC_PID" 64 "$DURATION" -H "Cookie: portcullis-app=$TOKEN")
    one_hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$PC_PID/status")
    # About one request per session, at the ~10,000 req/s of the slowest case.
    TOKENS="$WORK/tokens-$n.txt" run_wrk "warm-$n" "$PC_PORT" "$PC_PID" 64 $((3 + n / 10000)) -s "$ROOT/bench/rotate.lua" >/dev/null
    res=$(TOKENS="$WORK/tokens-$n.txt" run_wrk "b-$n" "$PC_PORT" "$PC_PID" 64 "$DURATION" -s "$ROOT/bench/rotate.lua")
    hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$PC_PID/status")
    read -r rps p50 p99 cpu <<<"$res"
    read -r one_rps _ one_p99 _ <<<"$one"
    [[ -n "$BASE_RPS" ]] || BASE_RPS=$rps
    log "B $n sessions: one $one, peak RSS $one_hwm MiB; rotating $res, peak RSS $hwm MiB"
    echo "| $n | $one_rps | $one_p99 | $one_hwm | $rps | $p50 | $p99 | $cpu | $hwm | $(awk -v a="$rps" -v b="$BASE_RPS" 'BEGIN{printf "%.2f×", a/b}') |" >>"$REPORT"
    FIRST_CONFIG="${FIRST_CONFIG:-$WORK/pc/config-$n.toml}"
    stop_pc
done
echo >>"$REPORT"

# ---------------------------------------------------------------- flood
log "C: proxied p99 during 50 concurrent wrong-password sign-ins"
start_pc "$FIRST_CONFIG"
quiet=$(run_wrk c-quiet "$PC_PORT" "$PC_PID" 16 "$DURATION" -H "Cookie: portcullis-app=$TOKEN")
CSRF=$($CLIENT csrf "$PC_PORT")
ORIGIN="http://login.localhost:$PC_PORT" CSRF="$CSRF" wrk -t1 -c50 -d"$((DURATION + 4))s" --timeout 30s -H "Host: login.localhost:$PC_PORT" -s "$ROOT/bench/flood.lua" \
    "http://127.0.0.1:$PC_PORT/.portcullis/login" >"$WORK/wrk-flood.txt" &
FLOOD=$!
sleep 2
busy=$(run_wrk c-flood "$PC_PORT" "$PC_PID" 16 "$DURATION" -H "Cookie: portcullis-app=$TOKEN")
wait "$FLOOD"
flood_rps=$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-flood.txt")
flood_n=$(awk '/requests in/ {print $1}' "$WORK/wrk-flood.txt")
flood_bad=$(grep -E "Non-2xx|Socket errors" "$WORK/wrk-flood.txt" | xargs || true)
# A wrong password is answered 401 with the sign-in page; anything else would be a fault.
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: login.localhost:$PC_PORT" -H "Origin: http://login.localhost:$PC_PORT" \
    -H "Cookie: portcullis-csrf=${CSRF%% *}" --data "csrf=${CSRF#* }&rd=&username=nobody-here&password=wrong-password-123" \
    "http://127.0.0.1:$PC_PORT/.portcullis/login")
[[ "$code" == 401 ]] || die "a wrong-password sign-in answered $code, not 401"
[[ "$flood_bad" == "Non-2xx or 3xx responses: $flood_n" ]] || die "flood: $flood_bad of $flood_n"
flood_bad="each answered 401 \"do not match\", as checked with curl"
read -r _ _ qp99 _ <<<"$quiet"; read -r brps _ bp99 _ <<<"$busy"
log "C quiet: $quiet; during flood: $busy; flood: $flood_rps sign-ins/s ($flood_bad)"
{
    echo "### C. Sign-in flood (wrk -c50 POSTing wrong passwords for an unknown name; proxied load wrk -c16)"
    echo
    echo "| | req/s | p50 ms | p99 ms | CPU µs/req |"
    echo "|---|---:|---:|---:|---:|"
    echo "| quiet | $(tr ' ' '|' <<<"$quiet" | sed 's/|/ | /g') |"
    echo "| during the flood | $(tr ' ' '|' <<<"$busy" | sed 's/|/ | /g') |"
    echo
    echo "Flood: $flood_rps sign-in attempts/s answered ($flood_bad). **p99 during the flood / quiet p99 = $(awk -v a="$bp99" -v b="$qp99" 'BEGIN{printf "%.2f", a/b}')×** (goal ≤ 2×)."
    echo
} >>"$REPORT"

# ---------------------------------------------------------------- idle connections
log "D: $IDLE idle keep-alive connections"
$CLIENT idle "$PC_PORT" "$IDLE" "$((DURATION + 4))" >"$WORK/idle.txt" 2>"$WORK/idle.err" &
IDLER=$!
for _ in $(seq 1 300); do grep -q "now idle" "$WORK/idle.err" 2>/dev/null && break; sleep 0.1; done
sleep 1
open_conns=$(ss -Htn state established "( sport = :$PC_PORT )" | wc -l)
during=$(run_wrk d-idle "$PC_PORT" "$PC_PID" 64 "$DURATION" -H "Cookie: portcullis-app=$TOKEN")
wait "$IDLER"
read -r served alive <"$WORK/idle.txt"
hwm=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$PC_PID/status")
log "D: $open_conns established while measuring; $during; idle connections served $served, answering afterwards $alive; peak RSS $hwm MiB"
{
    echo "### D. $IDLE idle keep-alive connections held open while wrk -c64 runs"
    echo
    echo "Established connections to Portcullis while measuring: $open_conns. Signed-in service for the others: $(awk '{printf "%s req/s, p50 %s ms, p99 %s ms", $1, $2, $3}' <<<"$during"). Idle connections that had been served: $served; still answering after $((DURATION + 4)) s idle: $alive. Peak RSS $hwm MiB."
    echo
} >>"$REPORT"
stop_pc

cp "$REPORT" "$ROOT/bench/results-signed-in.md"
cat "$REPORT"
