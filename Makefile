# Switchyard: the two commands a new user needs.
#   make run    builds the quickstart's three handlers and runs it on embedded backends
#   make test   installs and starts what the tests need (scripts/setup.sh),
#               builds every example handler and runs every test
# Build output goes to $(CARGO_TARGET_DIR) when set, else ./target.

TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)
PLUGINS_TARGET ?= $(TARGET_DIR)/plugins
PLUGINS := cache-update order-insert search-index faults noop wrong-world hostile version-a version-b record order-saga http-call product-cache row-sync article-index shop-saga

QUICKSTART := cache-update order-insert search-index

.PHONY: setup plugins quickstart-plugins run test lint bench bench-brokers

setup:
	scripts/setup.sh

plugins:
	cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release --target-dir $(PLUGINS_TARGET)
	mkdir -p plugins/dist
	for p in $(subst -,_,$(PLUGINS)); do cp $(PLUGINS_TARGET)/wasm32-wasip2/release/$$p.wasm plugins/dist/$$p.wasm; done
	plugins/languages.sh

# Only the Rust handlers the quickstart uses: no other toolchain is needed.
quickstart-plugins:
	rustup target add wasm32-wasip2
	cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release --target-dir $(PLUGINS_TARGET) $(addprefix -p ,$(QUICKSTART))
	mkdir -p plugins/dist
	for p in $(subst -,_,$(QUICKSTART)); do cp $(PLUGINS_TARGET)/wasm32-wasip2/release/$$p.wasm plugins/dist/$$p.wasm; done

run: quickstart-plugins
	cargo run --release -- run examples/quickstart/switchyard.toml

test: setup plugins
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
