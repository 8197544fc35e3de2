# Shell helpers shared by the benchmark scripts (sourced, not run).

stop_pid() { # PID SECONDS: TERM, wait (bounded), then KILL
  local pid=$1 i
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < $2 * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}
wait_port() { # PORT PID SECONDS NAME LOG
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then
      echo "$4 exited before listening on $1; last log lines:" >&2; tail -30 "$5" >&2; return 1
    fi
    sleep 0.1
  done
  echo "$4 not listening on $1 after $3 s; last log lines:" >&2; tail -30 "$5" >&2; return 1
}

# A private RabbitMQ node on RABBIT_PORT (with DIST_PORT, EPMD_PORT) under $TMP/rabbit: our
# own epmd (foreground, so its PID is ours to stop), then the node with `detached` set,
# which makes the start script exec the VM, so $! is the broker process. Needs EPMD and
# RABBITMQ_SERVER; sets EPMD_PID and RABBIT_PID. RABBIT_EXTRA_CONF, if set, is appended to
# its rabbitmq.conf.
start_rabbit() {
  R="$TMP/rabbit"
  mkdir -p "$R"/{mnesia,log,home}
  echo '[].' > "$R/enabled_plugins"
  cat > "$R/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBIT_PORT
loopback_users.guest = true
log.console = false
log.file.level = warning
${RABBIT_EXTRA_CONF:-}
CONF
  : > "$R/rabbitmq-env.conf"
  setsid "$EPMD" -port "$EPMD_PORT" -address 127.0.0.1 > "$TMP/epmd.log" 2>&1 < /dev/null &
  EPMD_PID=$!
  wait_port "$EPMD_PORT" "$EPMD_PID" 10 epmd "$TMP/epmd.log"
  echo "starting RabbitMQ on 127.0.0.1:$RABBIT_PORT ..." >&2
  (
    cd "$R"
    export HOME="$R/home" RABBITMQ_CONF_ENV_FILE="$R/rabbitmq-env.conf"
    export RABBITMQ_NODENAME="benchrabbit$RABBIT_PORT@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$RABBIT_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT" ERL_EPMD_PORT="$EPMD_PORT" ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE="$R/mnesia" RABBITMQ_LOG_BASE="$R/log"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$R/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$R/rabbitmq.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$R/advanced.config"
    export RABBITMQ_PID_FILE="$R/beam.pid" detached=true
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    unset NOTIFY_SOCKET
    exec setsid "$RABBITMQ_SERVER" > "$R/stdout.log" 2>&1 < /dev/null
  ) &
  RABBIT_PID=$!
  wait_port "$RABBIT_PORT" "$RABBIT_PID" 120 rabbitmq-server "$R/stdout.log"
}
