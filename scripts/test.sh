#!/usr/bin/env bash
# The whole test suite, as CI runs it. Starts (or installs) what the tests need: PostgreSQL and
# Redis on loopback, a Python venv with the official OpenAI, Anthropic and MCP SDKs, a Docker
# daemon of its own and llama.cpp's llama-server. Fails, never skips, when a service cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/services.sh
. scripts/lib/engines.sh

ensure_python_sdk() {
  local venv=target/sdk-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai, anthropic, mcp, opentelemetry.proto' 2>/dev/null; then
    log "creating a throwaway venv with the official OpenAI, Anthropic and MCP Python SDKs and the OTLP messages (opentelemetry-proto, for the trace receiver)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check openai anthropic mcp opentelemetry-proto
  fi
  export CORTEX_TEST_PYTHON="$PWD/$venv/bin/python"
}

ensure_browser() {
  [ -x /usr/bin/chromium ] || ensure_apt chromium
  command -v npm >/dev/null || ensure_apt nodejs npm
  (cd console-tests && npm install --no-audit --no-fund --silent)
}

# The fault tests start private redis-server and PostgreSQL (initdb) processes of their own.
ensure_apt redis-server postgresql
ensure_postgres
ensure_redis
ensure_python_sdk
ensure_browser
# The engine tests (cortex-engines): a private dockerd under target/dockerd, llama.cpp's
# llama-server built from the llama-cpp-python sdist (cached under target/llama-server; about
# 8-13 minutes on 2 cores the first time) and a Python with the `gguf` package.
ensure_dockerd
ensure_llama_server
ensure_gguf_python

log "no import cycles between modules (scripts/module-cycles.py)"
python3 scripts/module-cycles.py

log "crates import only crates below them (scripts/crate-layers.py)"
python3 scripts/crate-layers.py

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings denied)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test (storage and limiter tests run on SQLite and PostgreSQL, in-process and Redis)"
export CI="${CI:-true}"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
set +e
cargo test --workspace --locked -- --test-threads 4 2>&1 | tee "$results"
status=${PIPESTATUS[0]}
set -e

if [ "$status" = 0 ]; then
  log "browser tests of the console (Chromium via playwright-core; screenshots in artifacts/screenshots/)"
  cargo build --bins --locked -q
  set +e
  (cd console-tests && npm test) 2>&1 | tee -a "$results"
  status=${PIPESTATUS[0]}
  set -e
fi

# One closing line for the whole run: cargo prints one per test binary, node its own.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "\nSummary: %d passed, %d failed\n", p, f }' "$results"
exit "$status"
