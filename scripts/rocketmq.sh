#!/usr/bin/env bash
# The RocketMQ name server (127.0.0.1:9876) and one broker (127.0.0.1:10911)
# for the RocketMQ tests and examples: the Rust implementation of RocketMQ
# from crates.io, installed into the tool cache once and started when not
# answering. `install` only installs; `start` installs if needed and starts.
#
# The install builds about 700 crates (10-25 minutes on 2 cores), so
# scripts/setup.sh starts it in the background first and waits for it last.
# It is built at opt-level 1 without LTO: half the build time, and fast
# enough for tests.
set -euo pipefail
cd "$(dirname "$0")/.."

export SWITCHYARD_CACHE="${SWITCHYARD_CACHE:-/var/cache/switchyard}"
ROOT="$SWITCHYARD_CACHE/tools/rocketmq"
NAMESRV="$ROOT/bin/rocketmq-namesrv-rust"
BROKER="$ROOT/bin/rocketmq-broker-rust"
HOME_DIR="$SWITCHYARD_CACHE/rocketmq-home"
VERSION=1.0.0

install() {
  [ -x "$NAMESRV" ] && [ -x "$BROKER" ] && return 0
  mkdir -p "$ROOT"
  # One install at a time: .ci/run starts one early and setup.sh another;
  # the second waits here and then finds the binaries.
  exec 9>"$ROOT/install.lock"
  flock 9
  [ -x "$NAMESRV" ] && [ -x "$BROKER" ] && return 0
  # Its own build dir, not the host's target dir.
  env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_LTO=false \
    CARGO_PROFILE_RELEASE_CODEGEN_UNITS=64 \
    cargo install --locked --root "$ROOT" --target-dir "$SWITCHYARD_CACHE/rocketmq-build" \
    "rocketmq-namesrv@$VERSION" "rocketmq-broker@$VERSION"
}

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_up() {
  for _ in $(seq 1 120); do up "$1" && return 0; sleep 0.5; done
  echo "$2 is not answering on 127.0.0.1:$1; see $HOME_DIR/*.log" >&2; return 1
}

start() {
  install
  # The broker keeps its store in memory-mapped files; a fresh one each
  # start keeps tests from seeing an earlier run's topics.
  mkdir -p "$HOME_DIR/conf"
  if ! up 9876; then
    ROCKETMQ_HOME="$HOME_DIR" setsid nohup "$NAMESRV" --bindAddress 127.0.0.1 --listenPort 9876 \
      --rocketmqHome "$HOME_DIR" --kvConfigPath "$HOME_DIR/kvConfig.json" \
      >>"$HOME_DIR/namesrv.log" 2>&1 </dev/null &
  fi
  wait_up 9876 "the RocketMQ name server"
  if ! up 10911; then
    rm -rf "$HOME_DIR/store"
    cat >"$HOME_DIR/conf/broker.properties" <<PROPS
brokerClusterName=DefaultCluster
brokerName=broker-a
brokerId=0
namesrvAddr=127.0.0.1:9876
listenPort=10911
brokerIP1=127.0.0.1
brokerIP2=127.0.0.1
haListenAddress=127.0.0.1
storePathRootDir=$HOME_DIR/store
autoCreateTopicEnable=true
PROPS
    ROCKETMQ_HOME="$HOME_DIR" setsid nohup "$BROKER" -c "$HOME_DIR/conf/broker.properties" \
      >>"$HOME_DIR/broker.log" 2>&1 </dev/null &
  fi
  wait_up 10911 "the RocketMQ broker"
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  *) echo "usage: $0 [install|start]" >&2; exit 2 ;;
esac
