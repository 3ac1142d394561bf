#!/usr/bin/env bash
# Builds {{crate}}.wasm: C bindings from wit-bindgen, compiled by zig for
# wasm32-wasi as a reactor, then adapted into a WASI 0.2 component. The tools
# are the ones Switchyard's plugins/languages.sh installs.
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="${SWITCHYARD_TOOLS:-${SWITCHYARD_CACHE:-/var/cache/switchyard}/tools}"
export PATH="$TOOLS/bin:$TOOLS/py/bin:$PATH"
export ZIG_GLOBAL_CACHE_DIR="$TOOLS/zig-cache"
mkdir -p gen
wit-bindgen c wit --world handler --out-dir gen >/dev/null
python -m ziglang cc -target wasm32-wasi -mexec-model=reactor -O2 -s -Igen \
  app.c gen/handler.c gen/handler_component_type.o -o gen/core.wasm
wasm-tools component new gen/core.wasm \
  --adapt wasi_snapshot_preview1="$TOOLS/adapter/wasi_snapshot_preview1.reactor-48.0.8.wasm" -o {{crate}}.wasm
