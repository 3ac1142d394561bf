#!/usr/bin/env bash
# Everything the tests need, on a fresh machine: the wasm target, the
# Python, JavaScript and C handler toolchains, Chromium and playwright-core
# for the dashboard's browser test, the services on their usual
# ports (started with the machine's own commands when not answering), a
# Kafka-protocol broker (tansu) and the RocketMQ name server and broker,
# installed into the tool cache once.
# `make test` runs it first; so does `.ci/run`, through `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

export SWITCHYARD_CACHE="${SWITCHYARD_CACHE:-/var/cache/switchyard}"
mkdir -p "$SWITCHYARD_CACHE"

# The RocketMQ install is the longest (10-25 minutes on 2 cores the first
# time); it builds in the background while the rest is set up.
mkdir -p "$SWITCHYARD_CACHE/logs"
RMQ_LOG="$SWITCHYARD_CACHE/logs/rocketmq-install.log"
scripts/rocketmq.sh install >"$RMQ_LOG" 2>&1 &
RMQ_INSTALL=$!

echo "== toolchain"
rustup target add wasm32-wasip2
cargo --version

echo "== handler toolchains (Python, JavaScript, C)"
plugins/languages.sh tools

echo "== browser (Chromium and playwright-core, for the dashboard test)"
# Debian's Chromium, driven by playwright-core from npm (which downloads no
# browser of its own); the module is kept in the tool cache.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
NODE_TOOLS="$SWITCHYARD_CACHE/node"
if [ ! -d "$NODE_TOOLS/node_modules/playwright-core" ]; then
  mkdir -p "$NODE_TOOLS"
  npm install --prefix "$NODE_TOOLS" --no-audit --no-fund --loglevel=error playwright-core@1.64.1
fi

echo "== services"
# The tests need PostgreSQL, MariaDB, Redis, NATS with JetStream and RabbitMQ
# on their usual ports (and Kafka, below); start any that is not answering,
# with the machine's own commands.
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() {
  for _ in $(seq 1 120); do up "$1" && return 0; sleep 0.5; done
  echo "$2 is not answering on 127.0.0.1:$1" >&2; return 1
}
up 6379 || redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
up 4222 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
up 5672 || rabbitmq-server -detached
up 5432 || pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
up 3306 || start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
wait_up 6379 Redis
wait_up 4222 NATS
wait_up 5672 RabbitMQ
wait_up 5432 PostgreSQL
wait_up 3306 MariaDB
# RabbitMQ listens before its app is fully up; wait until it answers.
for _ in $(seq 1 60); do rabbitmqctl -q await_startup >/dev/null 2>&1 && break; sleep 1; done

echo "== Kafka (tansu)"
# The Kafka tests run against tansu, a Kafka-protocol broker, keeping its data
# in memory. Installing it takes 6-10 minutes on 2 cores, so it is cached.
# Without the `dynostore` feature its memory engine is missing and it exits.
TANSU="$SWITCHYARD_CACHE/tools/bin/tansu"
if [ ! -x "$TANSU" ]; then
  # Its own temporary build dir, not the host's target dir.
  env -u CARGO_TARGET_DIR cargo install tansu --features dynostore --locked --root "$SWITCHYARD_CACHE/tools"
fi
if ! up 9092; then
  setsid nohup "$TANSU" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >>"$SWITCHYARD_CACHE/tansu.log" 2>&1 < /dev/null &
fi
wait_up 9092 "Kafka (tansu)"

echo "== RocketMQ (name server and broker)"
# The broker refuses every write once its disk is 75% full (its
# diskMaxUsedSpaceRatio), which the tests would only show as failed sends.
USED=$(df --output=pcent "$SWITCHYARD_CACHE" | tail -1 | tr -dc 0-9)
if [ "${USED:-0}" -ge 75 ]; then
  echo "the disk holding $SWITCHYARD_CACHE is ${USED}% full; the RocketMQ broker refuses messages past 75%: free some space first" >&2
  exit 1
fi
if ! wait "$RMQ_INSTALL"; then
  tail -30 "$RMQ_LOG" >&2
  echo "installing RocketMQ failed; the whole log is $RMQ_LOG" >&2
  exit 1
fi
scripts/rocketmq.sh start
