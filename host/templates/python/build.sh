#!/usr/bin/env bash
# Builds {{crate}}.wasm with componentize-py, as installed by Switchyard's
# plugins/languages.sh (or put componentize-py on PATH: pip install componentize-py==0.25.1).
set -euo pipefail
cd "$(dirname "$0")"
TOOLS="${SWITCHYARD_TOOLS:-${SWITCHYARD_CACHE:-/var/cache/switchyard}/tools}"
export PATH="$TOOLS/py/bin:$PATH"
componentize-py -d wit -w handler componentize app -o {{crate}}.wasm
