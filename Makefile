# One place for the project's commands. `make run` and `make test` are the README's two set-up commands.
SHELL := /bin/bash
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo

.PHONY: run test model lint chat bench fmt

## Fetch the default model and chat with it in the terminal.
run: model
	$(CARGO) run --release --bin smollm3 -- chat --model $(MODEL)

## Everything CI checks: formatting, lints, and the whole test suite (fetches the test model).
test: model lint
	$(CARGO) test --workspace --all-targets --no-fail-fast

model:
	@bash models/fetch.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## `make bench MODEL=path.gguf`: this engine's speed as JSON (see doc/benchmarks.md).
bench: model
	$(CARGO) run --release --bin smollm3 -- bench --model $(MODEL) --json
