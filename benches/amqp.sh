#!/usr/bin/env bash
# AMQP broker benchmark: RabbitMQ (Debian package rabbitmq-server) against the broker
# embedded in session-store, same client (`bench amqp`, lapin), interleaved rounds.
#
#   benches/amqp.sh
#
# Builds release, starts a private RabbitMQ node (own node name, epmd port and state under a
# temp dir) and our session-store, both on free 127.0.0.1 ports, runs REPS rounds of each
# scenario (RabbitMQ then ours, scenario by scenario; after each latency pair, `bench wakeup`,
# the machine's own wake-up latency at the same rate), prints a markdown table of medians and
# stops both brokers and epmd on exit (also on Ctrl-C or failure). Raw result lines are kept
# in target/bench/amqp-<time>.txt.
#
# Environment:
#   REPS=3         rounds per scenario and broker
#   SECONDS=10     measured seconds per run (plus 1 s warm-up)
#   SCENARIOS="transient ack confirm-persistent fanout3 latency"   (also: stream)
#   SETTLE=10      seconds to let a freshly booted RabbitMQ go idle before measuring
#   PUBLISHERS=1   publishing tasks (own channels, one connection) in the throughput scenarios
#   ACK_WINDOW=1   acks a manually acking consumer keeps in flight (1: each ack awaited)
#   BUILD=0        use the release binaries already built instead of running cargo build
#   STORE_AMQP_THREADS=1   the broker's threads (session-store's --amqp-threads)
#   TLS=0          1: clients connect over amqps (RabbitMQ's listeners.ssl, our --amqps-bind)
#                  with a throwaway CA and certificate made by openssl for this run
set -euo pipefail
# stop_pid, wait_port, start_rabbit
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Bash counts SECONDS up by itself: take the caller's value, if any, before it moves.
SECS=$(printenv SECONDS || echo 10)
unset SECONDS
REPS="${REPS:-3}"
SCENARIOS="${SCENARIOS:-transient ack confirm-persistent fanout3 latency}"
SETTLE="${SETTLE:-10}"
PUBLISHERS="${PUBLISHERS:-1}"
ACK_WINDOW="${ACK_WINDOW:-1}"
TLS="${TLS:-0}"
[[ "$TLS" =~ ^[01]$ ]] || { echo "TLS must be 0 or 1" >&2; exit 2; }
[[ "$REPS" =~ ^[1-9][0-9]*$ ]] || { echo "REPS must be a positive integer" >&2; exit 2; }
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "SECONDS must be a positive integer" >&2; exit 2; }
[[ "$PUBLISHERS" =~ ^[1-9][0-9]*$ ]] || { echo "PUBLISHERS must be a positive integer" >&2; exit 2; }
[[ "$ACK_WINDOW" =~ ^[1-9][0-9]*$ ]] || { echo "ACK_WINDOW must be a positive integer" >&2; exit 2; }
for s in $SCENARIOS; do
  case "$s" in
    transient | ack | confirm-persistent | fanout3 | latency | stream) ;;
    *) echo "unknown scenario '$s' in SCENARIOS" >&2; exit 2 ;;
  esac
done
RABBITMQ_SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
[ -x "$RABBITMQ_SERVER" ] || { echo "needs $RABBITMQ_SERVER (apt-get install rabbitmq-server)" >&2; exit 2; }
EPMD=$(command -v epmd || ls /usr/lib/erlang/erts-*/bin/epmd 2>/dev/null | head -1 || true)
[ -n "$EPMD" ] || { echo "needs epmd (comes with rabbitmq-server's Erlang)" >&2; exit 2; }

cd "$(dirname "$0")/.."
if [ "${BUILD:-1}" != 0 ]; then
  echo "building release binaries ..." >&2
  cargo build --release -p session-store -p bench >&2
fi
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
BENCH="$TARGET_DIR/release/bench"
STORE="$TARGET_DIR/release/session-store"
[ -x "$BENCH" ] && [ -x "$STORE" ] || { echo "no release binaries in $TARGET_DIR/release" >&2; exit 2; }
mkdir -p "$TARGET_DIR/bench"
RESULTS="$TARGET_DIR/bench/amqp-$(date +%Y%m%d-%H%M%S).txt"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/amqp-bench.XXXXXX")
EPMD_PID= RABBIT_PID= OURS_PID=
cleanup() {
  stop_pid "$OURS_PID" 5
  stop_pid "$RABBIT_PID" 30
  stop_pid "$EPMD_PID" 5
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Six distinct free loopback ports: RabbitMQ AMQP, its distribution port, epmd, ours, and
# both brokers' amqps listeners.
read -r RABBIT_PORT DIST_PORT EPMD_PORT OURS_PORT RABBIT_TLS_PORT OURS_TLS_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')

OURS_TLS=() SCHEME=amqp RABBIT_URL_PORT=$RABBIT_PORT OURS_URL_PORT=$OURS_PORT BENCH_TLS=()
if [ "$TLS" = 1 ]; then
  command -v openssl > /dev/null || { echo "TLS=1 needs openssl" >&2; exit 2; }
  T="$TMP/tls" && mkdir -p "$T"
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=amqp bench CA" -keyout "$T/ca.key" \
    -out "$T/ca.pem" 2> /dev/null
  openssl req "${ec[@]}" -subj "/CN=127.0.0.1" -keyout "$T/server.key" -out "$T/server.csr" 2> /dev/null
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$T/ext"
  openssl x509 -req -in "$T/server.csr" -CA "$T/ca.pem" -CAkey "$T/ca.key" -CAcreateserial \
    -days 2 -extfile "$T/ext" -out "$T/server.pem" 2> /dev/null
  RABBIT_EXTRA_CONF="listeners.ssl.default = 127.0.0.1:$RABBIT_TLS_PORT
ssl_options.certfile = $T/server.pem
ssl_options.keyfile = $T/server.key"
  OURS_TLS=(--amqps-bind "127.0.0.1:$OURS_TLS_PORT" --amqp-tls-cert "$T/server.pem" --amqp-tls-key "$T/server.key")
  SCHEME=amqps RABBIT_URL_PORT=$RABBIT_TLS_PORT OURS_URL_PORT=$OURS_TLS_PORT
  BENCH_TLS=(--tls-ca "$T/ca.pem")
fi

start_rabbit
[ "$TLS" = 0 ] || wait_port "$RABBIT_TLS_PORT" "$RABBIT_PID" 60 rabbitmq-server "$R/stdout.log"

echo "starting session-store (AMQP on 127.0.0.1:$OURS_PORT) ..." >&2
setsid "$STORE" --bind 127.0.0.1:0 --amqp-bind "127.0.0.1:$OURS_PORT" --amqp-data-dir "$TMP/ours-data" \
  "${OURS_TLS[@]}" > "$TMP/ours.log" 2>&1 < /dev/null &
OURS_PID=$!
wait_port "$OURS_PORT" "$OURS_PID" 30 session-store "$TMP/ours.log"
[ "$TLS" = 0 ] || wait_port "$OURS_TLS_PORT" "$OURS_PID" 30 session-store "$TMP/ours.log"
echo "letting RabbitMQ settle for $SETTLE s ..." >&2
sleep "$SETTLE"

rss_mb() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo 0; }
{
  echo "# $(date -Is) REPS=$REPS SECONDS=$SECS SCENARIOS=\"$SCENARIOS\" PUBLISHERS=$PUBLISHERS ACK_WINDOW=$ACK_WINDOW STORE_AMQP_THREADS=${STORE_AMQP_THREADS:-1} TLS=$TLS $(nproc) CPUs"
  echo "# rabbitmq $(dpkg-query -W -f '${Version}' rabbitmq-server 2>/dev/null || echo '?'), ours $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- session-store 2>/dev/null || echo '+dirty')"
  echo "target=rabbit start_rss_mb=$(rss_mb "$RABBIT_PID")"
  echo "target=ours start_rss_mb=$(rss_mb "$OURS_PID")"
} | tee "$RESULTS" >&2

run_one() { # TARGET PORT PID SCENARIO REP
  local line
  echo "== rep $5/$REPS $4 on $1" >&2
  if ! kill -0 "$3" 2>/dev/null; then
    line="scenario=$4 error=\"broker process $3 is not running\""
  else
    line=$(timeout $((SECS + 90)) "$BENCH" amqp --url "$SCHEME://guest:guest@127.0.0.1:$2/%2f" \
      --scenario "$4" --seconds "$SECS" --broker-pid "$3" "${BENCH_TLS[@]}" \
      --publishers "$PUBLISHERS" --ack-window "$ACK_WINDOW" | tail -1) || true
    [ -n "$line" ] || line="scenario=$4 error=\"bench printed nothing (exit or timeout)\""
  fi
  echo "target=$1 rep=$5 $line" | tee -a "$RESULTS" >&2
}
run_floor() { # REP: the machine's wake-up latency at the same rate, no broker involved
  local line
  echo "== rep $1/$REPS wake-up floor" >&2
  line=$(timeout $((SECS + 30)) "$BENCH" wakeup --seconds "$SECS" | tail -1) ||
    line="scenario=wakeup error=\"bench wakeup failed\""
  echo "target=floor rep=$1 $line" | tee -a "$RESULTS" >&2
}
for rep in $(seq 1 "$REPS"); do
  for s in $SCENARIOS; do
    run_one rabbit "$RABBIT_URL_PORT" "$RABBIT_PID" "$s" "$rep"
    run_one ours "$OURS_URL_PORT" "$OURS_PID" "$s" "$rep"
    [ "$s" != latency ] || run_floor "$rep"
  done
done

echo "raw results: $RESULTS" >&2
python3 - "$RESULTS" "$SCENARIOS" "$REPS" "$PUBLISHERS" "$ACK_WINDOW" "$TLS" <<'PY'
import shlex, statistics, sys

path, scenarios, reps = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
publishers, ack_window, tls = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "1"
runs, errors, start_rss = {}, [], {}
for line in open(path):
    if line.startswith("#"):
        continue
    kv = dict(t.split("=", 1) for t in shlex.split(line) if "=" in t)
    if "start_rss_mb" in kv:
        start_rss[kv["target"]] = kv["start_rss_mb"]
        continue
    if "error" in kv:
        errors.append(f"{kv['target']} {kv['scenario']} rep {kv['rep']}: {kv['error']}")
        continue
    runs.setdefault((kv["target"], kv["scenario"]), []).append(kv)

def med(target, scenario, key):
    vals = [float(r[key]) for r in runs.get((target, scenario), []) if key in r]
    return statistics.median(vals) if vals else None

def fmt(v):
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"

def ratio(a, b):
    return "n/a" if a is None or b is None or a == 0 else f"{b / a:.2f}"

def note(target, scenario):
    ok = len(runs.get((target, scenario), []))
    return "" if ok == reps else f" ({ok}/{reps} ok)"

metrics = [("rate msg/s ↑", "rate"), ("p50 µs ↓", "p50_us"), ("p99 µs ↓", "p99_us"),
           ("p99.9 µs ↓", "p999_us"), ("broker CPU µs/msg ↓", "cpu_us_per_msg")]
print()
print("| scenario | metric | RabbitMQ median | ours median | ours/RabbitMQ |")
print("| --- | --- | --- | --- | --- |")
for s in scenarios:
    for label, key in metrics:
        if key.startswith("p") and key.endswith("_us") and s != "latency":
            continue
        r, o = med("rabbit", s, key), med("ours", s, key)
        print(f"| {s} | {label} | {fmt(r)}{note('rabbit', s)} | {fmt(o)}{note('ours', s)} | {ratio(r, o)} |")
    ri, oi = med("rabbit", s, "rss_idle_mb"), med("ours", s, "rss_idle_mb")
    rp, op = med("rabbit", s, "rss_peak_mb"), med("ours", s, "rss_peak_mb")
    print(f"| {s} | broker RSS MB idle / peak ↓ | {fmt(ri)} / {fmt(rp)} | {fmt(oi)} / {fmt(op)} "
          f"| {ratio(ri, oi)} / {ratio(rp, op)} |")
floor = runs.get(("floor", "wakeup"), [])
if floor:
    p = lambda key: fmt(statistics.median(float(r[key]) for r in floor))
    print()
    print(f"Wake-up floor of this machine at the latency rate (`bench wakeup`, a loopback "
          f"ping-pong between two threads, no broker): p50 {p('p50_us')} µs, p99 "
          f"{p('p99_us')} µs, p99.9 {p('p999_us')} µs.")
print()
print(f"Broker RSS right after start: RabbitMQ {start_rss.get('rabbit', '?')} MB, "
      f"ours {start_rss.get('ours', '?')} MB. Medians of {reps} interleaved reps; rate is "
      "confirmed/s for confirm-persistent and deliveries/s otherwise; CPU is the broker's "
      "utime+stime over the measured window per counted message. "
      f"{publishers} publishing task(s) in the throughput scenarios; manual-ack consumers "
      f"keep up to {ack_window} ack(s) in flight."
      + (" Every client connected over amqps (TLS)." if tls else ""))
if errors:
    print()
    print("Failed runs (n/a above):")
    for e in errors:
        print(f"- {e}")
PY
