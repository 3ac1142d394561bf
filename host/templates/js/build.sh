#!/usr/bin/env bash
# Builds {{crate}}.wasm with componentize-js, as installed by Switchyard's
# plugins/languages.sh (or: npm install @bytecodealliance/componentize-js@0.23.0).
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="${SWITCHYARD_TOOLS:-${SWITCHYARD_CACHE:-/var/cache/switchyard}/tools}"
export PATH="$TOOLS/npm/node_modules/.bin:$PATH"
# Without `-d http fetch-event` the component would import wasi:http.
componentize-js app.js -w wit -n handler -d http fetch-event -o {{crate}}.wasm
