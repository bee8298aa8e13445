# One place for the project's commands. `make run` and `make test` are the README's two set-up commands.
SHELL := /bin/bash
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian/Ubuntu packages: WebKitGTK + tray for the app, Xvfb + WebKitWebDriver for its end-to-end test, a D-Bus
# daemon for the single-instance test's own session bus, xwininfo + ImageMagick's import for the damaged-database
# test (it finds the native dialog's window and saves the screen).
APT_PACKAGES := libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev libxdo-dev libssl-dev \
	pkg-config build-essential file xvfb webkit2gtk-driver dbus-daemon x11-utils imagemagick
TAURI_DRIVER_VERSION := 2.1.0
# CI builds a fresh clone once: incremental caches there only cost disk (gigabytes) and time.
ifeq ($(CI),true)
export CARGO_INCREMENTAL := 0
endif

.PHONY: run test test-openai test-browser test-aarch64 check-other-os deps ui model lint fmt chat bench bench-api bench-compare bench-speculative bench-kernels deb tauri-driver llama-server build-cuda deb-cuda check-cuda

## Fetch the default model and every build dependency, then start the desktop app with that model.
run: deps ui model
	SMOLLM3_MODEL=$(MODEL) $(CARGO) run -p notso-smollm3

## Everything CI checks: formatting, lints, the whole test suite, the app's end-to-end test, the
## engine's ARM kernels (test-aarch64), and the CUDA code's lints where nvcc is installed (check-cuda).
test: deps ui model tauri-driver llama-server lint
	LLAMA_SERVER=$(LLAMA_REF)/bin/llama-server $(CARGO) test --workspace --all-targets --no-fail-fast
	$(MAKE) test-openai test-browser test-aarch64 check-other-os check-cuda
	@du -sh target 2>/dev/null | sed 's/^/disk used by the build: /'

## `smollm3 serve` driven by the official `openai` Python client, pinned with its dependencies in
## crates/server/tests/openai/requirements.txt and installed into a venv under target/.
OPENAI_VENV := target/openai-venv
test-openai: model
	$(CARGO) build --bin smollm3
	@python3 -c 'import ensurepip' 2>/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q python3-venv; }
	@test -x $(OPENAI_VENV)/bin/python || python3 -m venv $(OPENAI_VENV)
	$(OPENAI_VENV)/bin/pip install -q --disable-pip-version-check -r crates/server/tests/openai/requirements.txt
	SMOLLM3_BIN=$(abspath target/debug/smollm3) SMOLLM3_TEST_MODEL=$(abspath $(MODEL)) \
	  $(OPENAI_VENV)/bin/python crates/server/tests/openai/test_openai.py

## The chat UI of `smollm3 serve` in headless Chromium (Debian's `chromium`) through playwright-core,
## pinned in crates/server/tests/browser/package-lock.json.
BROWSER_TESTS := crates/server/tests/browser
test-browser: model ui
	$(CARGO) build --bin smollm3
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	cd $(BROWSER_TESTS) && npm ci --no-audit --no-fund --loglevel=error
	SMOLLM3_BIN=$(abspath target/debug/smollm3) SMOLLM3_TEST_MODEL=$(abspath $(MODEL)) \
	  CHROMIUM=$$(command -v chromium) node --test $(BROWSER_TESTS)/test.mjs

## The engine (its SIMD dispatch and memory mapping differ per platform) passes clippy for macOS on ARM
## and for Windows; skipped, with a warning, where rustup cannot add those targets.
# Succeeds when rustup has target $(1), adding it if need be.
HAS_RUST_TARGET = { rustup target list --installed 2>/dev/null | grep -qx $(1) || rustup target add $(1); }
OTHER_OS := aarch64-apple-darwin x86_64-pc-windows-msvc
check-other-os:
	@for t in $(OTHER_OS); do \
	  if ! $(call HAS_RUST_TARGET,$$t); then \
	    echo "WARNING: $$t not checked: rustup could not add it" >&2; \
	  else \
	    $(CARGO) clippy -p smollm3-engine --target $$t --all-targets -- -D warnings || exit 1; \
	  fi; \
	done

## The engine on 64-bit ARM: lints for that target, then its unit tests (every NEON kernel bit for
## bit against the portable definitions) cross-compiled and run under QEMU. Skipped, with a
## warning, only where rustup cannot add the target (no rustup, or its server unreachable).
AARCH64 := aarch64-unknown-linux-gnu
AARCH64_ENV := CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
	CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
test-aarch64: model
	@if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then \
	  echo "installing qemu-user and the aarch64 cross compiler"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
	    qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross; \
	fi
	@if ! $(call HAS_RUST_TARGET,$(AARCH64)); then \
	  echo "WARNING: test-aarch64 skipped: rustup could not add $(AARCH64)" >&2; \
	else \
	  set -e; \
	  $(AARCH64_ENV) $(CARGO) clippy -p smollm3-engine --target $(AARCH64) --all-targets -- -D warnings; \
	  $(AARCH64_ENV) $(CARGO) test -p smollm3-engine --target $(AARCH64) --lib; \
	fi

## System packages, installed only when missing.
deps:
	@if ! pkg-config --exists webkit2gtk-4.1 ayatana-appindicator3-0.1 || ! command -v Xvfb >/dev/null \
	    || ! command -v WebKitWebDriver >/dev/null || ! command -v dbus-daemon >/dev/null \
	    || ! command -v xwininfo >/dev/null || ! command -v import >/dev/null; then \
	  echo "installing system packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(APT_PACKAGES); \
	fi

## The UI's pinned third-party assets (npm lockfile) + our files -> ui/dist; the icon set from icons/icon.svg.
ui: ui/node_modules/.package-lock.json icons/gen/icon.png
	node ui/build.mjs

ui/node_modules/.package-lock.json: ui/package.json ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund --loglevel=error

icons/gen/icon.png: icons/icon.svg ui/node_modules/.package-lock.json
	ui/node_modules/.bin/tauri icon icons/icon.svg -o icons/gen >/dev/null
	rm -rf icons/gen/android icons/gen/ios

## The WebDriver proxy the end-to-end test drives the app through.
tauri-driver:
	@command -v tauri-driver >/dev/null || $(CARGO) install --locked tauri-driver@$(TAURI_DRIVER_VERSION)

model:
	@bash models/fetch.sh

## llama.cpp's own OpenAI-compatible server, the remote endpoint of the tests (crates/cli/tests/llama_server.rs):
## built from the llama.cpp that the PyPI package llama-cpp-python vendors (pinned), into $(LLAMA_REF) (shared with
## the reference tools). About 10 minutes on 2 cores the first time; nothing afterwards.
LLAMA_REF ?= $(HOME)/.cache/llama-ref
LLAMA_CPP_PYTHON := 0.3.36
llama-server:
	@test -x $(LLAMA_REF)/bin/llama-server || { set -e; mkdir -p $(LLAMA_REF); cd $(LLAMA_REF); \
	  python3 -m pip install -q cmake ninja scikit-build-core; \
	  [ -f llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz ] || python3 -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
	    -d . llama-cpp-python==$(LLAMA_CPP_PYTHON); \
	  [ -d src ] || { tar xzf llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz \
	    && mv llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp src && rm -rf llama_cpp_python-$(LLAMA_CPP_PYTHON); }; \
	  [ -f build/build.ninja ] || python3 -m cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
	    -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF; \
	  python3 -m ninja -C build llama-server; \
	  mkdir -p bin && cp build/bin/* bin/; }

lint: ui
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Terminal chat with the engine alone.
chat: model
	$(CARGO) run --bin smollm3 -- chat --model $(MODEL)

## `make bench MODEL=path.gguf`: this engine's speed as JSON (see doc/benchmarks.md).
bench: model
	$(CARGO) run --release --bin smollm3 -- bench --model $(MODEL) --json

## `make bench-compare MODEL=path.gguf`: this engine next to llama.cpp's llama-bench (-t 2, 3 runs,
## pp128/pp512/tg32), when llama.cpp's tools are in LLAMA_BIN or ~/.cache/llama-ref/bin, then the decode
## in alternating pairs (BENCH_ARGS="--pairs N --neighbour memory --pairs-only"; see doc/benchmarks.md).
bench-compare: model
	$(CARGO) bench -p smollm3-engine --bench compare -- $(abspath $(MODEL)) $(BENCH_ARGS)

## `make bench-speculative MODEL=path.gguf`: decode tok/s with and without n-gram drafts on fixed tasks
## (BENCH_ARGS="--gen N --reps N --fixed K"; see doc/benchmarks.md).
bench-speculative: model
	$(CARGO) bench -p smollm3-engine --bench speculative -- $(abspath $(MODEL)) $(BENCH_ARGS)

## `make bench-api [MODEL=path.gguf]`: time to first token and tokens/s through the OpenAI-compatible API
## against the in-process path (BENCH_ARGS="--rounds N --tokens N"; see doc/benchmarks.md).
bench-api: model
	$(CARGO) bench -p smollm3-server --bench api_overhead -- $(abspath $(MODEL)) $(BENCH_ARGS)

## `make bench-kernels MODEL=path.gguf [BENCH_ARGS="2 avx512"]`: GB/s and GMAC/s of each weight kind's
## kernel (threads, instruction set: scalar|avx2|avx512).
bench-kernels: model
	$(CARGO) bench -p smollm3-engine --bench kernels -- $(abspath $(MODEL)) $(BENCH_ARGS)

## The Debian package (target/release/bundle/deb/).
deb: deps ui
	cd src-tauri && ../ui/node_modules/.bin/tauri build --bundles deb

## The CUDA build (doc/engine.md, "Build variants"): the CLI as always (it links no CUDA library and starts
## everywhere) and `smollm3-cuda-runner`, the engine built with Candle's `cuda` feature, side by side in
## $(CUDA_DIST). Needs nvcc on PATH (a CUDA toolkit; without one, `source` the env.sh that
## ../shared/tools/gpu/setup-cuda-toolkit.sh writes) and the GPUs' compute capability (CUDA_COMPUTE_CAP: 90 for
## the H100/H200, 89 for the RTX 40xx, 86 for the RTX 30xx). The runner has its own target dir, so the plain
## build's CPU-only runner (what the tests start) and the CUDA one never overwrite each other. ~15-50 minutes
## the first time on 2 cores (nvcc compiles Candle's kernels), seconds after a Rust change.
CUDA_COMPUTE_CAP ?= 90
CUDA_TARGET := target/cuda
CUDA_DIST := target/cuda-dist
HOST_TRIPLE = $(shell rustc -vV | sed -n 's/^host: //p')
NEED_NVCC = @command -v nvcc >/dev/null || { echo "$@ needs nvcc on PATH: install a CUDA toolkit, or source the env.sh of ../shared/tools/gpu/setup-cuda-toolkit.sh" >&2; exit 1; }
build-cuda:
	$(NEED_NVCC)
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR=$(CUDA_TARGET) \
	  $(CARGO) build --release -p smollm3-engine --features cuda --bin smollm3-cuda-runner
	$(CARGO) build --release --bin smollm3
	mkdir -p $(CUDA_DIST)
	cp target/release/smollm3 $(CUDA_TARGET)/release/smollm3-cuda-runner $(CUDA_DIST)/

## The .deb of the CUDA build: the default package plus smollm3-cuda-runner beside the app (/usr/bin), as
## Tauri's externalBin (src-tauri/binaries/NAME-$(HOST_TRIPLE)); written to $(CUDA_DIST) as *-cuda.deb. It depends
## on no NVIDIA package: without the driver the app starts and its device list says why CUDA is unavailable.
deb-cuda: build-cuda deps ui
	mkdir -p src-tauri/binaries
	cp $(CUDA_DIST)/smollm3-cuda-runner src-tauri/binaries/smollm3-cuda-runner-$(HOST_TRIPLE)
	cd src-tauri && ../ui/node_modules/.bin/tauri build --bundles deb \
	  --config '{"bundle":{"externalBin":["binaries/smollm3-cuda-runner"]}}'
	for f in target/release/bundle/deb/*.deb; do mv "$$f" "$(CUDA_DIST)/$$(basename "$$f" .deb)-cuda.deb"; done
	ls -l $(CUDA_DIST)/*-cuda.deb

## Keeps the CUDA code compiling without a GPU: `cargo clippy` of the engine and its runner with `cuda`, in the
## release profile of build-cuda's target dir, so Candle's kernels compiled by nvcc for one serve the other
## (the first run compiles them). Runs only where nvcc is installed (make test calls it and says when it skips).
check-cuda:
	@if ! command -v nvcc >/dev/null; then \
	  echo "WARNING: check-cuda skipped: no nvcc on PATH (see doc/engine.md, Build variants)" >&2; \
	else \
	  CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) CARGO_TARGET_DIR=$(CUDA_TARGET) \
	    $(CARGO) clippy --release -p smollm3-engine --features cuda --all-targets -- -D warnings; \
	fi
