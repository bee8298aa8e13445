# One place for the project's commands. `make run` and `make test` are the README's two set-up commands.
SHELL := /bin/bash
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo

.PHONY: run test model lint chat bench bench-compare bench-kernels fmt

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

## `make bench-compare MODEL=path.gguf`: this engine next to llama.cpp's llama-bench (-t 2, 3 runs,
## pp128/pp512/tg32), when llama.cpp's tools are in LLAMA_BIN or ~/.cache/llama-ref/bin.
bench-compare: model
	$(CARGO) bench -p smollm3-engine --bench compare -- $(abspath $(MODEL)) $(BENCH_ARGS)

## `make bench-kernels MODEL=path.gguf [BENCH_ARGS="2 avx512"]`: GB/s and GMAC/s of each weight kind's
## kernel (threads, instruction set: scalar|avx2|avx512).
bench-kernels: model
	$(CARGO) bench -p smollm3-engine --bench kernels -- $(abspath $(MODEL)) $(BENCH_ARGS)
