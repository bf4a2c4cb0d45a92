#!/usr/bin/env bash
# Portcullis vs nginx as a reverse proxy in front of the same static nginx backend.
#
#   bash bench/run.sh
#
# Environment knobs (all optional):
#   ROUNDS=10       rounds per front for the ~1 KiB file
#   BIG_ROUNDS=2    rounds per front for the 64 KiB file
#   DURATION=3s     wrk duration per round (small file); BIG_DURATION=5s for the big one
#   CONNS=64        wrk connections; THREADS=2 wrk threads
#   INFO_LOG=1      also measure Portcullis once with the default `info` access logging
#   MAX_LOAD=1.0    wait (up to LOAD_WAIT=120 s) for the 1-minute load average to drop below this
#   SKIP_BUILD=1    use the existing target/release/portcullis
#   PORT_BASE=18080 backend = PORT_BASE+1, nginx front = +2, Portcullis = +3
#   FRONT_WORKERS=  worker processes of the nginx front and worker threads of Portcullis
#                   (tokio's TOKIO_WORKER_THREADS); unset, each runs one per core, its default
#
# Writes bench/results-latest.md and prints the same markdown to stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ROUNDS="${ROUNDS:-10}"
BIG_ROUNDS="${BIG_ROUNDS:-2}"
DURATION="${DURATION:-3s}"
BIG_DURATION="${BIG_DURATION:-5s}"
CONNS="${CONNS:-64}"
THREADS="${THREADS:-2}"
INFO_LOG="${INFO_LOG:-1}"
MAX_LOAD="${MAX_LOAD:-1.0}"
LOAD_WAIT="${LOAD_WAIT:-120}"
PORT_BASE="${PORT_BASE:-18080}"
BACKEND_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
PC_PORT=$((PORT_BASE + 3))
HOST_HDR="portal.localhost:${PC_PORT}"
NCPU="$(nproc)"
LOAD_AT_LAUNCH="$(cut -d' ' -f1-3 /proc/loadavg)"   # before our own build adds to it

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- prerequisites
# shellcheck source=bench/common.sh
source "$ROOT/bench/common.sh"
bench_install
command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"

for p in "$BACKEND_PORT" "$NGINX_PORT" "$PC_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p is already in use; set PORT_BASE to something else"
    fi
done

# ---------------------------------------------------------------- build
if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "cargo build --release"
    cargo build --release --quiet >&2 || die "release build failed"
fi
BIN="$ROOT/target/release/portcullis"
[[ -x "$BIN" ]] || die "$BIN missing"
# What was built, read now: the tree may change while the rounds run. (With SKIP_BUILD the
# binary may be older than this; the report says so.)
PC_REV="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock .cargo 2>/dev/null)" ]]; then
    PC_REV="$PC_REV + uncommitted changes"
fi
[[ -z "${SKIP_BUILD:-}" ]] || PC_REV="$PC_REV (SKIP_BUILD: binary not rebuilt)"

# ---------------------------------------------------------------- temp dir + cleanup
WORK="$(mktemp -d /tmp/portcullis-bench.XXXXXX)"
PIDS=()
cleanup() {
    local rc=$?
    for f in "$WORK"/backend/nginx.pid "$WORK"/front/nginx.pid; do
        [[ -s "$f" ]] && kill "$(cat "$f")" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    sleep 0.3
    if [[ -n "${KEEP_WORK:-}" ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- content
mkdir -p "$WORK/www/static" "$WORK/backend" "$WORK/front" "$WORK/pc/data"
bench_page "$WORK/www/index.html"
head -c 65536 /dev/urandom >"$WORK/www/static/big.bin"
SMALL_BYTES=$(stat -c %s "$WORK/www/index.html")

# ---------------------------------------------------------------- nginx configs
bench_backend_conf "$WORK/backend" "$BACKEND_PORT" "$WORK/www" >"$WORK/backend/nginx.conf"
bench_front_conf "$WORK/front" "$NGINX_PORT" "$BACKEND_PORT" >"$WORK/front/nginx.conf"
# The backend's worker_processes is deliberately 1: it is shared by both fronts and
# pinned nowhere; see BENCHMARKS.md.

cat >"$WORK/pc/config.toml" <<EOF
[server]
listen = "127.0.0.1:$PC_PORT"
auth_url = "http://login.localhost:$PC_PORT"
data_dir = "$WORK/pc/data"

[password]
argon2_memory_kib = 19456

[[app]]
id = "portal"
name = "Portal"
url = "http://portal.localhost:$PC_PORT"
upstream = "http://127.0.0.1:$BACKEND_PORT"
public_paths = ["/index.html", "/static/*"]
EOF

# ---------------------------------------------------------------- start
wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    die "$what did not start listening on $port"
}

mkdir -p "$WORK/backend/tmp" "$WORK/front/tmp"
"$NGINX" -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" -t -q \
    || die "backend nginx config invalid"
"$NGINX" -e "$WORK/backend/error.log" -p "$WORK/backend" -c "$WORK/backend/nginx.conf"
"$NGINX" -e "$WORK/front/error.log" -p "$WORK/front" -c "$WORK/front/nginx.conf"
wait_port "$BACKEND_PORT" "backend nginx"
wait_port "$NGINX_PORT" "front nginx"

PC_PID=""
start_portcullis() { # $1 = RUST_LOG value
    env RUST_LOG="$1" ${FRONT_WORKERS:+TOKIO_WORKER_THREADS="$FRONT_WORKERS"} \
        "$BIN" serve -c "$WORK/pc/config.toml" >"$WORK/pc/portcullis-$1.log" 2>&1 &
    PC_PID=$!
    PIDS+=("$PC_PID")
    wait_port "$PC_PORT" "portcullis (RUST_LOG=$1; log: $(tail -5 "$WORK/pc/portcullis-$1.log" 2>/dev/null))"
}
stop_portcullis() {
    [[ -n "$PC_PID" ]] || return 0
    kill -TERM "$PC_PID" 2>/dev/null || true
    wait "$PC_PID" 2>/dev/null || true
    PC_PID=""
    for _ in $(seq 1 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PC_PORT") 2>/dev/null || return 0
        sleep 0.1
    done
}
start_portcullis warn

# ---------------------------------------------------------------- sanity checks
check_front() { # name port path expected_bytes
    local name=$1 port=$2 path=$3 want=$4 out code size
    out=$(curl -s -o "$WORK/check.body" -w '%{http_code} %{size_download}' \
        -H "Host: $HOST_HDR" "http://127.0.0.1:$port$path") || die "$name: curl failed"
    read -r code size <<<"$out"
    [[ "$code" == 200 ]] || die "$name $path answered $code, not 200: $(head -c 300 "$WORK/check.body")"
    [[ "$size" == "$want" ]] || die "$name $path returned $size bytes, expected $want"
    cmp -s "$WORK/check.body" "$WORK/www$path" || die "$name $path: body differs from the file"
}
for path in /index.html /static/big.bin; do
    want=$(stat -c %s "$WORK/www$path")
    check_front backend "$BACKEND_PORT" "$path" "$want"
    check_front nginx "$NGINX_PORT" "$path" "$want"
    check_front portcullis "$PC_PORT" "$path" "$want"
done
log "all three answer 200 with the right bodies"

# ---------------------------------------------------------------- machine + load
loadavg() { cut -d' ' -f1 /proc/loadavg; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
waited=0
while awk -v l="$(loadavg)" -v m="$MAX_LOAD" 'BEGIN{exit !(l>m)}' && ((waited < LOAD_WAIT)); do
    ((waited == 0)) && log "load average $(loadavg) > $MAX_LOAD; waiting up to ${LOAD_WAIT}s for it to drop"
    sleep 5
    waited=$((waited + 5))
done
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"
if awk -v l="$(loadavg)" -v m="$MAX_LOAD" 'BEGIN{exit !(l>m)}'; then
    LOAD_NOTE="still above $MAX_LOAD after waiting ${waited}s — figures may be noisy"
else
    LOAD_NOTE="waited ${waited}s"
fi
log "load average before: $LOAD_BEFORE; at start of measuring: $LOAD_START ($LOAD_NOTE)"

CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)"
[[ -n "$CPU_MODEL" ]] || CPU_MODEL="$(lscpu 2>/dev/null | awk -F: '/Model name/{gsub(/^ +/,"",$2);print $2;exit}')"
KERNEL="$(uname -srm)"
NGINX_VER="$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')"
WRK_VER="$( (wrk -v 2>&1 || true) | head -1 | awk '{print $1, $2}')"
RUSTC_VER="$(rustc -V)"

# ---------------------------------------------------------------- measuring
# wrk --latency output → "rps p50_ms p99_ms non2xx errors"
to_ms() { # "812.00us" / "1.23ms" / "1.02s" → milliseconds
    awk -v v="$1" 'BEGIN{
        if (v ~ /us$/) { sub(/us$/,"",v); printf "%.3f", v/1000 }
        else if (v ~ /ms$/) { sub(/ms$/,"",v); printf "%.3f", v }
        else if (v ~ /m$/) { sub(/m$/,"",v); printf "%.3f", v*60000 }
        else if (v ~ /s$/) { sub(/s$/,"",v); printf "%.3f", v*1000 }
        else { printf "nan" } }'
}
parse_wrk() { # file
    local f=$1 rps p50 p99 non2xx errs
    rps=$(awk '/^Requests\/sec:/{print $2}' "$f")
    p50=$(awk '$1=="50%"{print $2}' "$f")
    p99=$(awk '$1=="99%"{print $2}' "$f")
    non2xx=$(awk '/Non-2xx or 3xx responses:/{print $NF}' "$f")
    errs=$(awk '/Socket errors:/{s=0; for(i=3;i<=NF;i++) if($i ~ /^[0-9]+,?$/){gsub(",","",$i); s+=$i}; print s}' "$f")
    [[ -n "$rps" && -n "$p50" && -n "$p99" ]] || die "could not parse wrk output $f: $(cat "$f")"
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") ${non2xx:-0} ${errs:-0}"
}
run_wrk() { # label port path duration → echoes parsed line; saves raw output
    local label=$1 port=$2 path=$3 dur=$4 out
    out="$WORK/wrk-$label.txt"
    wrk -t"$THREADS" -c"$CONNS" -d"$dur" --latency -H "Host: $HOST_HDR" \
        "http://127.0.0.1:$port$path" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    local parsed; parsed=$(parse_wrk "$out")
    read -r _ _ _ n e <<<"$parsed"
    if [[ "$n" != 0 ]]; then die "$label: $n non-2xx/3xx responses — not a valid run"; fi
    if [[ "$e" != 0 ]]; then die "$label: $e socket errors — not a valid run ($(grep 'Socket errors' "$out"))"; fi
    # Every response must also have been 200 specifically (not a 3xx).
    local code; code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_HDR" "http://127.0.0.1:$port$path")
    [[ "$code" == 200 ]] || die "$label: after the run $path answers $code"
    # CPU ticks used by this subshell's children (wrk, the awk parsers, curl).
    times >"$WORK/times-$label.txt"   # a builtin with a redirect: no subshell, so it sees wrk
    local kids; kids=$(tail -1 "$WORK/times-$label.txt" | awk '{ for (i=1;i<=2;i++) { split($i,a,/[ms]/); t+=a[1]*60+a[2] } } END{ printf "%d", t*100 }')
    echo "$parsed $kids"
}

# How busy the machine was with OTHER work during a round (e.g. someone compiling): all
# busy CPU time in /proc/stat minus what our nginx processes, Portcullis and wrk used,
# in CPUs (0 = quiet, $NCPU = every core busy elsewhere). Steal time is reported apart.
CLK_TCK=$(getconf CLK_TCK)
cpu_stat() { awk '/^cpu /{ busy=$2+$3+$4+$7+$8; all=0; for(i=2;i<=NF;i++) all+=$i; print busy, $9, all }' /proc/stat; }
our_pids() {
    local m
    for m in "$(cat "$WORK/backend/nginx.pid")" "$(cat "$WORK/front/nginx.pid")" ${PC_PID:-}; do
        echo "$m"; ps -o pid= --ppid "$m" 2>/dev/null || true
    done
}
our_ticks() { # utime+stime of all our long-running processes (all threads)
    local t=0 pid
    for pid in $(our_pids); do
        [[ -r /proc/$pid/stat ]] || continue
        t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$t"
}
front_ticks() { # nginx | portcullis | backend → utime+stime of those processes
    local pids pid t=0
    if [[ $1 == nginx || $1 == backend ]]; then
        local dir=front; [[ $1 == backend ]] && dir=backend
        pids="$(cat "$WORK/$dir/nginx.pid") $(ps -o pid= --ppid "$(cat "$WORK/$dir/nginx.pid")")"
    else
        pids="$PC_PID"
    fi
    for pid in $pids; do
        [[ -r /proc/$pid/stat ]] || continue
        t=$((t + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
    done
    echo "$t"
}
# other_cpu "busy0 steal0 all0" ours0 "busy1 steal1 all1" ours1 wrk_ticks → "other_cpus steal_pct"
other_cpu() {
    awk -v a="$1" -v o0="$2" -v b="$3" -v o1="$4" -v w="$5" -v n="$NCPU" -v hz="$CLK_TCK" 'BEGIN{
        split(a,x," "); split(b,y," ")
        busy=y[1]-x[1]; steal=y[2]-x[2]; all=y[3]-x[3]
        wall=all/n; w=w*hz/100
        other=(busy-(o1-o0)-w)/wall; if (other<0) other=0
        printf "%.2f %.1f", other, 100*steal/all }'
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{ if (NR%2) print a[(NR+1)/2]; else printf "%.10g\n", (a[NR/2]+a[NR/2+1])/2 }'; }

declare -A RPS P50 P99 CPU BACKEND_CPU
# Each round's figures by front, so that the two fronts can be compared round by round:
# the two runs of a round follow each other within seconds, in the same phase of the
# machine as far as anything here can arrange it (BENCHMARKS.md, "Why pair the rounds").
declare -A ROUND_RPS ROUND_P99
ROWS=()   # per-round markdown rows, in the order run
OTHERS=() # CPUs busy with other work, per round
measure_set() { # set_name path rounds duration
    local set=$1 path=$2 rounds=$3 dur=$4 r front port parsed rps p50 p99
    log "warm-up for $set ($path)"
    wrk -t"$THREADS" -c"$CONNS" -d3s -H "Host: $HOST_HDR" "http://127.0.0.1:$NGINX_PORT$path" >/dev/null
    wrk -t"$THREADS" -c"$CONNS" -d3s -H "Host: $HOST_HDR" "http://127.0.0.1:$PC_PORT$path" >/dev/null
    for r in $(seq 1 "$rounds"); do
        # Alternate which front goes first in each round as well.
        local order=(nginx portcullis)
        ((r % 2 == 0)) && order=(portcullis nginx)
        for front in "${order[@]}"; do
            port=$NGINX_PORT; [[ $front == portcullis ]] && port=$PC_PORT
            local c0 o0 c1 o1 wt other steal
            local f0 f1 b0 b1 nreq cpu_us backend_us
            c0=$(cpu_stat); o0=$(our_ticks); f0=$(front_ticks "$front"); b0=$(front_ticks backend)
            parsed=$(run_wrk "$set-$front-$r" "$port" "$path" "$dur")
            c1=$(cpu_stat); o1=$(our_ticks); f1=$(front_ticks "$front"); b1=$(front_ticks backend)
            nreq=$(awk '/requests in/{print $1}' "$WORK/wrk-$set-$front-$r.txt")
            cpu_us=$(awk -v t=$((f1 - f0)) -v n="$nreq" -v hz="$CLK_TCK" 'BEGIN{ printf "%.1f", t*1e6/hz/n }')
            backend_us=$(awk -v t=$((b1 - b0)) -v n="$nreq" -v hz="$CLK_TCK" 'BEGIN{ printf "%.1f", t*1e6/hz/n }')
            CPU[$set,$front]+="$cpu_us "
            BACKEND_CPU[$set,$front]+="$backend_us "
            read -r rps p50 p99 _ _ wt <<<"$parsed"
            read -r other steal <<<"$(other_cpu "$c0" "$o0" "$c1" "$o1" "$wt")"
            OTHERS+=("$other")
            RPS[$set,$front]+="$rps "; P50[$set,$front]+="$p50 "; P99[$set,$front]+="$p99 "
            ROUND_RPS[$set,$front,$r]=$rps; ROUND_P99[$set,$front,$r]=$p99
            ROWS+=("| $set | $r | $front | $(printf '%.0f' "$rps") | $p50 | $p99 | $cpu_us | $backend_us | $other | $steal | $(cut -d' ' -f1 /proc/loadavg) |")
            log "$set round $r $front: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, front CPU ${cpu_us} µs/req, backend CPU ${backend_us} µs/req; other work ${other} CPUs, steal ${steal}%"
            sleep 1
        done
    done
}

STARTED_AT="$(date -u '+%Y-%m-%d %H:%M UTC')"
# Reference: the backend alone, so one can see it is not what limits the fronts.
wrk -t"$THREADS" -c"$CONNS" -d3s -H "Host: $HOST_HDR" "http://127.0.0.1:$BACKEND_PORT/index.html" >/dev/null
BACKEND_ROW="$(run_wrk "small-backend" "$BACKEND_PORT" /index.html "$DURATION")"
log "backend direct (reference): $BACKEND_ROW"
measure_set small /index.html "$ROUNDS" "$DURATION"
SETS=(small)
if ((BIG_ROUNDS > 0)); then
    measure_set big /static/big.bin "$BIG_ROUNDS" "$BIG_DURATION"
    SETS+=(big)
fi
LOAD_END="$(cut -d' ' -f1-3 /proc/loadavg)"

# Portcullis with the default `info` logging (one access-log line per request, to a file).
INFO_ROW=""
if [[ "$INFO_LOG" == 1 ]]; then
    stop_portcullis
    start_portcullis info
    check_front portcullis "$PC_PORT" /index.html "$SMALL_BYTES"
    wrk -t"$THREADS" -c"$CONNS" -d3s -H "Host: $HOST_HDR" "http://127.0.0.1:$PC_PORT/index.html" >/dev/null
    parsed=$(run_wrk "small-portcullis-info" "$PC_PORT" /index.html "$DURATION")
    read -r rps p50 p99 _ _ <<<"$parsed"
    INFO_ROW="$rps $p50 $p99"
    log "small portcullis RUST_LOG=info: $rps req/s, p50 ${p50} ms, p99 ${p99} ms"
    stop_portcullis
fi

# ---------------------------------------------------------------- report
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.2f", a/b }'; }
exact_ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ printf "%.6f", a/b }'; }
RESULT="$WORK/results.md"
{
    echo "# Portcullis vs nginx — results of \`bash bench/run.sh\`"
    echo
    echo "Run started $STARTED_AT; Portcullis at $PC_REV (RUST_LOG=warn)."
    echo
    echo "| Machine | |"
    echo "|---|---|"
    echo "| CPUs (nproc) | $NCPU |"
    echo "| Workers of each front | ${FRONT_WORKERS:-one per core, the default of both} |"
    echo "| CPU | $CPU_MODEL |"
    echo "| Kernel | $KERNEL |"
    echo "| nginx | $NGINX_VER |"
    echo "| wrk | $WRK_VER |"
    echo "| rustc | $RUSTC_VER |"
    echo "| Load average (1/5/15 min) when the script started (before building) | $LOAD_AT_LAUNCH |"
    echo "| Load average after building, servers idle | $LOAD_BEFORE |"
    echo "| Load average at start of measuring | $LOAD_START ($LOAD_NOTE) |"
    echo "| Load average at end (includes the benchmark itself: wrk + 4 nginx processes + Portcullis) | $LOAD_END |"
    echo "| CPUs busy with other work during the rounds (median / max of $NCPU) | $(median "${OTHERS[@]}") / $(printf '%s\n' "${OTHERS[@]}" | sort -g | tail -1) |"
    echo
    echo "wrk -t$THREADS -c$CONNS --latency, keep-alive; small = /index.html (${SMALL_BYTES} B) ${DURATION} × $ROUNDS rounds per front;"
    echo "big = /static/big.bin (65536 B) ${BIG_DURATION} × $BIG_ROUNDS rounds per front. Fronts alternate within each round."
    echo "Backend CPU µs/req: for the small file the backend does the same work per request for either front, so a"
    echo "round in which it costs clearly more ran in a slower phase of the machine (on a shared VM both fronts have"
    echo "such rounds). For the big file it differs by front: how a front reads changes how often the backend is woken."
    echo
    echo "## Medians"
    echo
    echo "| File | Front | req/s | p50 ms | p99 ms | front CPU µs/req | backend CPU µs/req | throughput ratio (Portcullis/nginx) | p99 ratio (Portcullis/nginx) |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    for set in "${SETS[@]}"; do
        n_rps=$(median ${RPS[$set,nginx]}); p_rps=$(median ${RPS[$set,portcullis]})
        n_p50=$(median ${P50[$set,nginx]}); p_p50=$(median ${P50[$set,portcullis]})
        n_p99=$(median ${P99[$set,nginx]}); p_p99=$(median ${P99[$set,portcullis]})
        echo "| $set | nginx | $(printf '%.0f' "$n_rps") | $n_p50 | $n_p99 | $(printf "%.1f" "$(median ${CPU[$set,nginx]})") | $(printf "%.1f" "$(median ${BACKEND_CPU[$set,nginx]})") | | |"
        echo "| $set | Portcullis | $(printf '%.0f' "$p_rps") | $p_p50 | $p_p99 | $(printf "%.1f" "$(median ${CPU[$set,portcullis]})") | $(printf "%.1f" "$(median ${BACKEND_CPU[$set,portcullis]})") | **$(ratio "$p_rps" "$n_rps")×** | **$(ratio "$p_p99" "$n_p99")×** |"
        if [[ $set == small ]]; then
            SMALL_TP=$(ratio "$p_rps" "$n_rps"); SMALL_P99=$(ratio "$p_p99" "$n_p99")
            SMALL_N_RPS=$n_rps
        fi
    done
    if [[ -n "$INFO_ROW" ]]; then
        read -r rps p50 p99 <<<"$INFO_ROW"
        echo "| small | Portcullis, RUST_LOG=info (1 run) | $(printf '%.0f' "$rps") | $p50 | $p99 | | | $(ratio "$rps" "$SMALL_N_RPS")× | |"
    fi
    read -r rps p50 p99 _ _ <<<"$BACKEND_ROW"
    echo "| small | (reference) backend nginx direct, no proxy (1 run) | $(printf '%.0f' "$rps") | $p50 | $p99 | | | | |"
    echo
    echo "## Round by round"
    echo
    echo "Each round runs both fronts one after the other (which goes first alternates), so the two runs of a"
    echo "round meet the same phase of the machine far more often than runs rounds apart: the ratio within each"
    echo "round, and the median of those, compare the fronts like for like. The medians above compare each"
    echo "front's median round, which may come from different phases."
    echo
    echo "| File | Round | nginx req/s | Portcullis req/s | throughput ratio | nginx p99 ms | Portcullis p99 ms | p99 ratio |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for set in "${SETS[@]}"; do
        local_rounds=$ROUNDS; [[ $set == big ]] && local_rounds=$BIG_ROUNDS
        tp_ratios=(); p99_ratios=()
        for r in $(seq 1 "$local_rounds"); do
            n_rps=${ROUND_RPS[$set,nginx,$r]}; p_rps=${ROUND_RPS[$set,portcullis,$r]}
            n_p99=${ROUND_P99[$set,nginx,$r]}; p_p99=${ROUND_P99[$set,portcullis,$r]}
            # Unrounded for the medians and the verdict; rounded only where shown.
            tp_ratios+=("$(exact_ratio "$p_rps" "$n_rps")"); p99_ratios+=("$(exact_ratio "$p_p99" "$n_p99")")
            echo "| $set | $r | $(printf '%.0f' "$n_rps") | $(printf '%.0f' "$p_rps") | $(ratio "$p_rps" "$n_rps")× | $n_p99 | $p_p99 | $(ratio "$p_p99" "$n_p99")× |"
        done
        tp_sorted=$(printf '%.2f\n' "${tp_ratios[@]}" | sort -g | paste -sd' ')
        echo "| $set | **median** | | | **$(printf '%.2f' "$(median "${tp_ratios[@]}")")×** (of $tp_sorted) | | | **$(printf '%.2f' "$(median "${p99_ratios[@]}")")×** |"
        if [[ $set == small ]]; then
            PAIRED_TP_EXACT=$(median "${tp_ratios[@]}"); PAIRED_P99_EXACT=$(median "${p99_ratios[@]}")
            PAIRED_TP=$(printf '%.2f' "$PAIRED_TP_EXACT"); PAIRED_P99=$(printf '%.2f' "$PAIRED_P99_EXACT")
        fi
    done
    echo
    verdict="MET"
    awk -v t="$PAIRED_TP_EXACT" -v p="$PAIRED_P99_EXACT" 'BEGIN{exit !(t>=0.9 && p<=1.5)}' || verdict="NOT MET"
    echo "Target for this stage (small file): throughput ≥ 0.90× nginx and p99 ≤ 1.5× nginx, judged round by round"
    echo "(the medians of the rounds' ratios) — **$verdict** ($PAIRED_TP×, $PAIRED_P99×). The ratios of the two fronts'"
    echo "median rounds are $SMALL_TP× and $SMALL_P99×."
    echo
    echo "## Every round"
    echo
    echo "| File | Round | Front | req/s | p50 ms | p99 ms | front CPU µs/req | backend CPU µs/req | CPUs busy with other work | steal % | 1-min load avg after |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
} >"$RESULT"

cp "$RESULT" "$ROOT/bench/results-latest.md"
cat "$RESULT"
log "written to bench/results-latest.md"
