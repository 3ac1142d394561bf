#!/usr/bin/env bash
# Installs the guest toolchains for Python, JavaScript and C (pinned versions,
# each only if missing) into $SWITCHYARD_CACHE/tools, then builds the
# cache-update handler in each language, and the events example's Python and
# JavaScript handlers, into plugins/dist/. The Rust ones are built by
# `make plugins` with the other Rust plugins.
#
#   plugins/languages.sh           install what is missing, build the handlers
#   plugins/languages.sh tools     install what is missing, build nothing
#   plugins/languages.sh env       print the PATH line that puts the tools first
#
# A toolchain that cannot be had is named in one line on stderr and the
# script exits 1: CI fails rather than skipping a language.
set -euo pipefail
cd "$(dirname "$0")/.."

COMPONENTIZE_PY=0.25.1
ZIGLANG=0.15.2
COMPONENTIZE_JS=0.23.0
# componentize-js imports this at run time without declaring it; npm does not
# always hoist jco's copy to where it looks, so it is installed beside it.
PREVIEW2_SHIM=0.17.9
WIT_BINDGEN=0.63.0
WASM_TOOLS=1.263.0
ADAPTER=48.0.8  # the wasmtime release the host is built on

TOOLS="${SWITCHYARD_CACHE:-/var/cache/switchyard}/tools"
mkdir -p "$TOOLS"
export ZIG_GLOBAL_CACHE_DIR="$TOOLS/zig-cache"

missing() {
  echo "error: cannot install the $1 toolchain: $2" >&2
  exit 1
}

# Quiet on success; on failure the tool's own output follows the one line.
quietly() {
  local log
  log=$(mktemp)
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    return 1
  fi
  rm -f "$log"
}

install_python() {
  local want="componentize-py==$COMPONENTIZE_PY ziglang==$ZIGLANG"
  if [ "$(cat "$TOOLS/py/.installed" 2>/dev/null)" = "$want" ]; then return; fi
  command -v python3 >/dev/null || missing "Python (componentize-py, ziglang)" "python3 is not installed"
  echo "== installing componentize-py $COMPONENTIZE_PY and ziglang $ZIGLANG into $TOOLS/py"
  quietly python3 -m venv "$TOOLS/py" || missing "Python (componentize-py, ziglang)" "python3 -m venv failed (Debian: apt-get install python3-venv)"
  # shellcheck disable=SC2086
  quietly "$TOOLS/py/bin/pip" install --disable-pip-version-check $want ||
    missing "Python (componentize-py, ziglang)" "pip install $want failed"
  echo "$want" >"$TOOLS/py/.installed"
}

install_js() {
  local want="@bytecodealliance/componentize-js@$COMPONENTIZE_JS @bytecodealliance/preview2-shim@$PREVIEW2_SHIM"
  if [ "$(cat "$TOOLS/npm/.installed" 2>/dev/null)" = "$want" ]; then return; fi
  command -v npm >/dev/null || missing "JavaScript (componentize-js)" "npm is not installed (Debian: apt-get install npm)"
  echo "== installing $want into $TOOLS/npm"
  rm -rf "$TOOLS/npm"
  # shellcheck disable=SC2086
  quietly npm install --prefix "$TOOLS/npm" --no-fund --no-audit --save-exact $want ||
    missing "JavaScript (componentize-js)" "npm install $want failed"
  (cd "$TOOLS/npm" && quietly node -e "import('@bytecodealliance/componentize-js').then(() => {}, e => { console.error(e); process.exit(1) })") ||
    missing "JavaScript (componentize-js)" "componentize-js $COMPONENTIZE_JS was installed but does not load"
  echo "$want" >"$TOOLS/npm/.installed"
}

cargo_tool() {  # name version binary features...
  local name=$1 version=$2 bin=$3
  shift 3
  if "$TOOLS/bin/$bin" --version 2>/dev/null | grep -q "$version"; then return; fi
  echo "== installing $name $version into $TOOLS/bin (one-off, a few minutes)"
  quietly cargo install --locked --root "$TOOLS" "$name@$version" --no-default-features --features "$@" ||
    missing "C ($name)" "cargo install $name@$version failed"
}

# The WASI preview1-to-preview2 reactor adapter ships inside a crate; cargo
# metadata downloads and unpacks it without compiling anything.
install_adapter() {
  local file="$TOOLS/adapter/wasi_snapshot_preview1.reactor-$ADAPTER.wasm"
  [ -s "$file" ] && return
  echo "== fetching the WASI reactor adapter $ADAPTER"
  local dir="$TOOLS/adapter/fetch"
  mkdir -p "$dir/src"
  printf '[package]\nname = "fetch-adapter"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nwasi-preview1-component-adapter-provider = "=%s"\n[workspace]\n' \
    "$ADAPTER" >"$dir/Cargo.toml"
  : >"$dir/src/lib.rs"
  local manifest
  manifest=$(cargo metadata --manifest-path "$dir/Cargo.toml" --format-version 1 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "wasi-preview1-component-adapter-provider"))') ||
    missing "C (WASI adapter)" "cannot fetch the crate wasi-preview1-component-adapter-provider $ADAPTER"
  cp "$(dirname "$manifest")/artefacts/wasi_snapshot_preview1.reactor.wasm" "$file"
}

tools() {
  install_python
  install_js
  cargo_tool wit-bindgen-cli "$WIT_BINDGEN" wit-bindgen c
  cargo_tool wasm-tools "$WASM_TOOLS" wasm-tools component
  install_adapter
}

PY="$TOOLS/py/bin"
JS="$TOOLS/npm/node_modules/.bin"
BIN="$TOOLS/bin"

# build_c <source dir> <output .wasm>: bindings, compile, adapt into a component.
build_c() {
  local src=$1 out=$2 gen
  gen=$(mktemp -d)
  quietly "$BIN/wit-bindgen" c wit --world handler --out-dir "$gen"
  "$PY/python" -m ziglang cc -target wasm32-wasi -mexec-model=reactor -O2 -s -I"$gen" \
    "$src"/*.c "$gen/handler.c" "$gen/handler_component_type.o" -o "$gen/core.wasm"
  "$BIN/wasm-tools" component new "$gen/core.wasm" \
    --adapt "wasi_snapshot_preview1=$TOOLS/adapter/wasi_snapshot_preview1.reactor-$ADAPTER.wasm" -o "$out"
  rm -rf "$gen"
}

# True when $1 exists and is newer than every other file named.
fresh() {
  local out=$1 f
  shift
  [ -s "$out" ] || return 1
  for f in "$@"; do [ "$f" -nt "$out" ] && return 1; done
  return 0
}

build() {
  mkdir -p plugins/dist
  local out=plugins/dist/cache_update_py.wasm
  if ! fresh $out wit/handler.wit plugins/cache-update-py/*.py; then
    echo "== building $out"
    quietly "$PY/componentize-py" -d wit -w handler componentize -p plugins/cache-update-py app -o $out
  fi
  out=plugins/dist/cache_update_js.wasm
  if ! fresh $out wit/handler.wit plugins/cache-update-js/*.js; then
    echo "== building $out"
    quietly "$JS/componentize-js" plugins/cache-update-js/app.js -w wit -n handler -d http fetch-event -o $out
  fi
  # The events example's handlers, in Python and JavaScript.
  out=plugins/dist/welcome_email.wasm
  if ! fresh $out wit/handler.wit examples/events/plugins/welcome-email/*.py examples/events/plugins/welcome-email/wit/*.wit; then
    echo "== building $out"
    quietly "$PY/componentize-py" -d examples/events/plugins/welcome-email/wit -w welcome-email componentize -p examples/events/plugins/welcome-email app -o $out
  fi
  out=plugins/dist/profile.wasm
  if ! fresh $out wit/handler.wit examples/events/plugins/profile/*.js examples/events/plugins/profile/wit/*.wit; then
    echo "== building $out"
    quietly "$JS/componentize-js" examples/events/plugins/profile/app.js -w examples/events/plugins/profile/wit -n profile -d http fetch-event -o $out
  fi
  out=plugins/dist/cache_update_c.wasm
  if ! fresh $out wit/handler.wit plugins/cache-update-c/*.c plugins/cache-update-c/*.h; then
    echo "== building $out"
    build_c plugins/cache-update-c $out
  fi
}

case "${1:-all}" in
  tools) tools ;;
  env) echo "export PATH=\"$PY:$JS:$BIN:\$PATH\"" ;;
  all) tools && build ;;
  *) echo "usage: $0 [tools|env]" >&2; exit 2 ;;
esac
