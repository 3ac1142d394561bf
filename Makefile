# Switchyard: the two commands a new user needs.
#   make run    builds the example handlers and runs the quickstart on embedded backends
#   make test   builds the example handlers and runs every test
# Build output goes to $(CARGO_TARGET_DIR) when set, else ./target.

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PLUGINS_TARGET ?= $(TARGET_DIR)/plugins
PLUGINS := cache-update order-insert search-index faults noop wrong-world hostile version-a version-b record order-saga product-cache

.PHONY: plugins run test lint bench bench-brokers

plugins:
	cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release --target-dir $(PLUGINS_TARGET)
	mkdir -p plugins/dist
	for p in $(subst -,_,$(PLUGINS)); do cp $(PLUGINS_TARGET)/wasm32-wasip2/release/$$p.wasm plugins/dist/$$p.wasm; done
	plugins/languages.sh

run: plugins
	cargo run --release -- run examples/quickstart/switchyard.toml

test: plugins
	cargo test --release

# Formatting, then clippy on every target (library, binary, tests, benches)
# with warnings as errors.
lint:
	cargo fmt --all --check
	cargo clippy --release -p switchyard --all-targets -- -D warnings

bench: plugins
	cargo run --release -- bench

bench-brokers: plugins
	cargo run --release -- bench brokers
