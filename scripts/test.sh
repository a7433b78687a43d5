#!/usr/bin/env bash
# The whole test suite, as CI runs it. Starts (or installs) what the tests need: PostgreSQL and
# Redis on loopback, a Python venv with the official OpenAI SDK. Fails, never skips, when a
# service cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_apt() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

ensure_postgres() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return; fi
  ensure_apt postgresql postgresql-client
  log "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -h 127.0.0.1 -p 5432
  # The tests expect trust auth on loopback and a database named test.
  psql -h 127.0.0.1 -U postgres -tc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then return; fi
  ensure_apt redis-server redis-tools
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 ping 2>/dev/null | grep -q PONG && break; sleep 0.2; done
  redis-cli -h 127.0.0.1 ping | grep -q PONG
}

ensure_python_sdk() {
  local venv=target/sdk-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import openai, mcp' 2>/dev/null; then
    log "creating a throwaway venv with the official OpenAI and MCP Python SDKs"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check openai mcp
  fi
  export CORTEX_TEST_PYTHON="$PWD/$venv/bin/python"
}

ensure_browser() {
  [ -x /usr/bin/chromium ] || ensure_apt chromium
  command -v npm >/dev/null || ensure_apt nodejs npm
  (cd console-tests && npm install --no-audit --no-fund --silent)
}

ensure_postgres
ensure_redis
ensure_python_sdk
ensure_browser

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
