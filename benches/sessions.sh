#!/usr/bin/env bash
# Session-mode benchmark: the demo topology (session-store with its embedded broker, three
# demo-app nodes, the lb) measured through the load balancer with `bench sessions`, one
# configuration after another, interleaved over rounds.
#
#   benches/sessions.sh
#
# Configurations, each a fresh topology on free 127.0.0.1 ports:
#   local            sessions in each node's memory; the LB pins clients (--affinity cookie)
#   shared-nocache   sessions in the store, every request reads it (--no-near-cache)
#   shared           sessions in the store, read through each node's near-cache, kept
#                    coherent by events from the store's embedded AMQP broker
#   jwt              sessions in a signed token cookie
#   shared-rabbitmq  as shared, events through a private RabbitMQ node (only when the Debian
#                    package rabbitmq-server is installed; skipped with a note otherwise)
#   shared-light     as shared, but paced at LIGHT_RATE requests/s over LIGHT_CONNECTIONS
#                    connections, so the machine is not saturated: its invalidation lag and
#                    latencies are the event path's own, not CPU queueing (its req/s is the
#                    pace, not comparable with the others)
# The LB balances round-robin without affinity except for `local`.
#
# Builds release once, prints a markdown table of medians (and ratios against `local`) at
# the end, and stops every process it started on exit (also on Ctrl-C or failure). Raw result
# lines are kept in target/bench/sessions-<time>.txt, node and LB logs in a temp dir that is
# removed on exit (KEEP_LOGS=1 keeps it).
#
# Environment:
#   REPS=3            rounds; each round runs every configuration once
#   SECONDS=10        measured seconds per run (after WARMUP)
#   WARMUP=2          unmeasured seconds of load first (logins, cache fill)
#   CONNECTIONS=32    keep-alive client connections (one virtual user each)
#   LIGHT_RATE=1000 LIGHT_CONNECTIONS=4   the pace and connections of shared-light
#   WRITE_RATIO=0.1   share of requests that are POST /cart
#   CONFIGS="local shared-nocache shared jwt shared-rabbitmq shared-light"
#   SETTLE=10         seconds to let a freshly booted RabbitMQ go idle before measuring
#   BUILD=0           use the release binaries already built instead of running cargo build
#   THREADS           runtime worker threads of each topology process; by default, as
#                     `demo-app up` gives them: the cores divided among the five, at least one
set -euo pipefail
# stop_pid, wait_port, start_rabbit
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bash counts SECONDS up by itself: take the caller's value, if any, before it moves.
SECS=$(printenv SECONDS || echo 10)
unset SECONDS
REPS="${REPS:-3}"
WARMUP="${WARMUP:-2}"
CONNECTIONS="${CONNECTIONS:-32}"
WRITE_RATIO="${WRITE_RATIO:-0.1}"
LIGHT_CONNECTIONS="${LIGHT_CONNECTIONS:-4}"
LIGHT_RATE="${LIGHT_RATE:-1000}"
CONFIGS="${CONFIGS:-local shared-nocache shared jwt shared-rabbitmq shared-light}"
SETTLE="${SETTLE:-10}"
THREADS="${THREADS:-$(( $(nproc) / 5 > 1 ? $(nproc) / 5 : 1 ))}"
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || { echo "THREADS must be a positive integer" >&2; exit 2; }
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "REPS must be a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "SECONDS must be a positive integer" >&2; exit 2; }
[[ "$WARMUP" =~ ^[0-9]+$ ]] || { echo "WARMUP must be a whole number of seconds" >&2; exit 2; }
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || { echo "CONNECTIONS must be a positive integer" >&2; exit 2; }
[[ "$LIGHT_CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || { echo "LIGHT_CONNECTIONS must be a positive integer" >&2; exit 2; }
[[ "$LIGHT_RATE" =~ ^[1-9][0-9]*$ ]] || { echo "LIGHT_RATE must be a positive integer" >&2; exit 2; }
for c in $CONFIGS; do
  case "$c" in
    local | shared-nocache | shared | jwt | shared-rabbitmq | shared-light) ;;
    *) echo "unknown configuration '$c' in CONFIGS" >&2; exit 2 ;;
  esac
done

NOTES=()
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
EPMD=
if [[ " $CONFIGS " == *" shared-rabbitmq "* ]]; then
  EPMD=$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -1 || true)
  if [ ! -x "$RABBITMQ_SERVER" ] || [ -z "$EPMD" ]; then
    NOTES+=("shared-rabbitmq skipped: needs $RABBITMQ_SERVER and epmd (apt-get install rabbitmq-server)")
    CONFIGS=$(echo " $CONFIGS " | sed 's/ shared-rabbitmq / /' | xargs)
  fi
fi
[ -n "$CONFIGS" ] || { echo "no configuration left to run" >&2; exit 2; }

cd "$(dirname "$0")/.."
if [ "${BUILD:-1}" != 0 ]; then
  echo "building release binaries ..." >&2
  cargo build --release -p bench -p demo-app -p session-store -p lb >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BENCH="$TARGET_DIR/release/bench"
DEMO="$TARGET_DIR/release/demo-app"
STORE="$TARGET_DIR/release/session-store"
LB="$TARGET_DIR/release/lb"
for b in "$BENCH" "$DEMO" "$STORE" "$LB"; do
  [ -x "$b" ] || { echo "no release binary $b (run without BUILD=0)" >&2; exit 2; }
done
mkdir -p "$TARGET_DIR/bench"
RESULTS="$TARGET_DIR/bench/sessions-$(date +%Y%m%d-%H%M%S).txt"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/sessions-bench.XXXXXX")
TOPO_PIDS=()
EPMD_PID= RABBIT_PID=
stop_topology() { # LB first, then the nodes, the store last
  local i
  for ((i = ${#TOPO_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${TOPO_PIDS[$i]}" 5; done
  TOPO_PIDS=()
}
cleanup() {
  stop_topology
  stop_pid "$RABBIT_PID" 30
  stop_pid "$EPMD_PID" 5
  wait 2>/dev/null || true
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() { # N: N distinct free loopback ports on one line
  python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
' "$1"
}


# Secrets every node (and the LB) agree on, for this run only; children inherit them through
# the environment, never the command line.
secret() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
SESSION_COOKIE_KEYS=$(secret) JWT_SECRET=$(secret) LB_COOKIE_KEY=$(secret)
export SESSION_COOKIE_KEYS JWT_SECRET LB_COOKIE_KEY
export RUST_LOG="${RUST_LOG:-warn}"

RABBIT_URL=
if [[ " $CONFIGS " == *" shared-rabbitmq "* ]]; then
  read -r RABBIT_PORT DIST_PORT EPMD_PORT < <(free_ports 3)
  start_rabbit
  RABBIT_URL="amqp://guest:guest@127.0.0.1:$RABBIT_PORT/%2f"
  echo "letting RabbitMQ settle for $SETTLE s ..." >&2
  sleep "$SETTLE"
fi

LB_URL= NODE_URLS= CPU_PIDS=
start_topology() { # CONFIG RUN: store + broker, three nodes, the LB; sets LB_URL, NODE_URLS, CPU_PIDS
  local config=$1 dir="$TMP/$2" mode affinity=none events sp ap lp i
  local extra=() backends=() ports
  mkdir -p "$dir"
  read -r sp ap lp ports < <(free_ports 6) # the last three: the nodes
  events="amqp://guest:guest@127.0.0.1:$ap/%2f"
  case "$config" in
    local) mode=local affinity=cookie ;;
    shared-nocache) mode=shared extra=(--no-near-cache) ;;
    shared | shared-light) mode=shared ;;
    shared-rabbitmq) mode=shared events=$RABBIT_URL ;;
    jwt) mode=jwt ;;
  esac
  TOKIO_WORKER_THREADS=$THREADS setsid "$STORE" --bind "127.0.0.1:$sp" --amqp-bind "127.0.0.1:$ap" --amqp-no-persist \
    --no-amqp-management > "$dir/store.log" 2>&1 < /dev/null &
  TOPO_PIDS+=($!)
  CPU_PIDS="store=$!"
  [ "$config" != shared-rabbitmq ] || CPU_PIDS+=",rabbitmq=$RABBIT_PID"
  wait_port "$sp" "$!" 30 session-store "$dir/store.log" || return 1
  wait_port "$ap" "${TOPO_PIDS[-1]}" 30 "session-store (AMQP)" "$dir/store.log" || return 1
  NODE_URLS=
  i=0
  for np in $ports; do
    i=$((i + 1))
    TOKIO_WORKER_THREADS=$THREADS setsid "$DEMO" serve --listen "127.0.0.1:$np" --node-id "app$i" --session-mode "$mode" \
      --store-url "redis://127.0.0.1:$sp" --events-url "$events" "${extra[@]}" \
      > "$dir/app$i.log" 2>&1 < /dev/null &
    TOPO_PIDS+=($!)
    CPU_PIDS+=",apps=$!"
    wait_port "$np" "$!" 30 "app$i" "$dir/app$i.log" || return 1
    backends+=(--backend "app$i=http://127.0.0.1:$np")
    NODE_URLS+="${NODE_URLS:+,}http://127.0.0.1:$np"
  done
  TOKIO_WORKER_THREADS=$THREADS setsid "$LB" --listen "127.0.0.1:$lp" "${backends[@]}" --affinity "$affinity" \
    > "$dir/lb.log" 2>&1 < /dev/null &
  TOPO_PIDS+=($!)
  CPU_PIDS+=",lb=$!"
  wait_port "$lp" "$!" 30 lb "$dir/lb.log" || return 1
  LB_URL="http://127.0.0.1:$lp"
}

LOAD_NOTE="load $(cut -d' ' -f1-3 /proc/loadavg) before the first run"
{
  echo "# $(date -Is) REPS=$REPS SECONDS=$SECS WARMUP=$WARMUP CONNECTIONS=$CONNECTIONS LIGHT_CONNECTIONS=$LIGHT_CONNECTIONS LIGHT_RATE=$LIGHT_RATE WRITE_RATIO=$WRITE_RATIO THREADS=$THREADS CONFIGS=\"$CONFIGS\" $(nproc) CPUs, $LOAD_NOTE"
  echo "# ours $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- session-layer demo-app session-store lb 2>/dev/null || echo '+dirty')${RABBIT_URL:+, rabbitmq $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?')}"
  for n in "${NOTES[@]}"; do echo "# note: $n"; done
} | tee "$RESULTS" >&2

run=0
run_one() { # CONFIG REP
  local line pace=(--connections "$CONNECTIONS")
  [ "$1" != shared-light ] || pace=(--connections "$LIGHT_CONNECTIONS" --rate "$LIGHT_RATE")
  run=$((run + 1))
  echo "== rep $2/$REPS $1" >&2
  # A second try on fresh ports, should another process have taken one meanwhile.
  if ! start_topology "$1" "$run-$1" && ! { stop_topology; start_topology "$1" "$run-$1-retry"; }; then
    line="error=\"the topology did not start\""
  else
    line=$(timeout $((SECS + WARMUP + 90)) "$BENCH" sessions --url "$LB_URL" \
      --node-urls "$NODE_URLS" "${pace[@]}" --seconds "$SECS" \
      --warmup "$WARMUP" --write-ratio "$WRITE_RATIO" --cpu-pids "$CPU_PIDS" | tail -1) || true
    [ -n "$line" ] || line="error=\"bench printed nothing (exit or timeout)\""
  fi
  stop_topology
  echo "config=$1 rep=$2 load1=$(cut -d' ' -f1 /proc/loadavg) $line" | tee -a "$RESULTS" >&2
}
run_floor() { # REP: the machine's wake-up latency at the paced rate, no topology involved
  local line
  echo "== rep $1/$REPS wake-up floor" >&2
  line=$(timeout $((SECS + 30)) "$BENCH" wakeup --rate "$LIGHT_RATE" --seconds "$SECS" | tail -1) ||
    line="error=\"bench wakeup failed\""
  echo "config=floor rep=$1 $line" | tee -a "$RESULTS" >&2
}
for rep in $(seq 1 "$REPS"); do
  for c in $CONFIGS; do
    run_one "$c" "$rep"
    [ "$c" != shared-light ] || run_floor "$rep"
  done
done

echo "raw results: $RESULTS" >&2
python3 - "$RESULTS" "$CONFIGS" "$REPS" <<'PY'
import shlex, statistics, sys

path, configs, reps = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
runs, failed, notes, floor = {}, [], [], []
for line in open(path):
    if line.startswith("# note: "):
        notes.append(line[len("# note: "):].strip())
    if line.startswith("#"):
        continue
    kv = dict(t.split("=", 1) for t in shlex.split(line) if "=" in t)
    if kv.get("scenario") == "wakeup":
        floor.append(kv)
        continue
    if "error" in kv or "rps" not in kv:
        failed.append(f"{kv.get('config')} rep {kv.get('rep')}: {kv.get('error', line.strip())}")
        continue
    runs.setdefault(kv["config"], []).append(kv)

def med(config, key):
    vals = []
    for r in runs.get(config, []):
        try:
            vals.append(float(r[key]))
        except (KeyError, ValueError):
            pass
    return statistics.median(vals) if vals else None

def total(config, key):
    return sum(int(r.get(key, 0)) for r in runs.get(config, []))

def num(v, digits=0):
    return "–" if v is None else f"{v:,.{digits}f}"

def ms(v):
    return "–" if v is None else f"{v / 1000:.2f}"

base = med("local", "rps")
print()
print("| configuration | req/s ↑ | vs local | p50 ms ↓ | p99 ms ↓ | write p50 / p99 ms ↓ "
      "| errors / lost | Cookie B/req ↓ | near-cache hit ratio | inval. lag p50 / p99 µs ↓ "
      "| evictions / updates |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for c in configs:
    ok = len(runs.get(c, []))
    if ok == 0:
        print(f"| {c} | failed ({reps} of {reps}) | | | | | | | | | |")
        continue
    rps = med(c, "rps")
    ratio = "–" if base in (None, 0) else f"{rps / base:.2f}"
    if c == "shared-light":
        ratio = f"(paced at {runs[c][0].get('rate', '?')})"
    name = c if ok == reps else f"{c} ({ok}/{reps} ok)"
    hit = med(c, "hit_ratio")
    lag = "–" if med(c, "lag_p99_us") is None else \
        f"{num(med(c, 'lag_p50_us'))} / {num(med(c, 'lag_p99_us'))}"
    print(f"| {name} | {num(rps)} | {ratio} | {ms(med(c, 'p50_us'))} | {ms(med(c, 'p99_us'))} "
          f"| {ms(med(c, 'write_p50_us'))} / {ms(med(c, 'write_p99_us'))} "
          f"| {total(c, 'errors')} / {total(c, 'lost')} | {num(med(c, 'cookie_bytes'))} "
          f"| {'–' if hit is None else f'{hit:.3f}'} | {lag} "
          f"| {num(med(c, 'evictions'))} / {num(med(c, 'updates'))} |")
print()
print(f"Medians of {reps} interleaved reps (errors / lost: totals over the reps). Write: "
      "`POST /cart` alone; the other latencies cover every request. Cookie B/req: mean size of the Cookie header the client sends (session cookie or "
      "JWT, plus the LB's affinity cookie in `local`). Lag: event publish → receipt on a "
      "node (when it evicts or updates its copy), p50 of the median node, p99 of the worst node, over each "
      "node's latest 4,096 events; evictions (copy dropped) and updates (copy replaced by the "
      "state a write event carried) summed over the nodes in the measured window.")
if floor:
    p = lambda key: num(statistics.median(float(r[key]) for r in floor))
    print()
    print(f"Wake-up floor of this machine at {floor[0].get('rate', '?')}/s (`bench wakeup`, a "
          f"loopback ping-pong between two threads, no topology): p50 {p('p50_us')} µs, "
          f"p99 {p('p99_us')} µs, p99.9 {p('p999_us')} µs.")
print()
print("Where the CPU goes (µs of CPU per request, medians; `cores` is everything measured "
      "together, in cores busy over the window; `local ÷ total` is how many requests this "
      "configuration serves per CPU-second relative to local — steadier than req/s when "
      "other work shares the machine):")
print()
parts = [("lb", "lb"), ("apps", "3 nodes"), ("store", "store + broker"),
         ("rabbitmq", "RabbitMQ"), ("bench", "load generator")]
parts = [p for p in parts if any(f"cpu_{p[0]}_us_per_req" in r for rs in runs.values() for r in rs)]
print("| configuration | " + " | ".join(label for _, label in parts)
      + " | total | local ÷ total | cores |")
print("| --- |" + " --- |" * (len(parts) + 3))
totals = {}
for c in configs:
    if runs.get(c):
        totals[c] = sum(med(c, f"cpu_{key}_us_per_req") or 0.0 for key, _ in parts)
for c in configs:
    if c not in totals:
        continue
    cells = [num(med(c, f"cpu_{key}_us_per_req"), 1) for key, _ in parts]
    eff = "–" if not totals.get("local") or not totals[c] else f"{totals['local'] / totals[c]:.2f}"
    print(f"| {c} | " + " | ".join(cells)
          + f" | {totals[c]:.1f} | {eff} | {num(med(c, 'cpu_cores'), 2)} |")
print()
for n in notes:
    print(f"Note: {n}.")
if failed:
    print()
    print("Failed runs:")
    for f in failed:
        print(f"- {f}")
PY
