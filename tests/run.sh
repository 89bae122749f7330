#!/usr/bin/env bash
# Runs the whole test suite:
#   1. Rust unit tests and the integration tests (each on SQLite and PostgreSQL);
#   2. the end-to-end tests: the gateway binary driven by the official
#      socket.io-client over WebSocket and long-polling, on SQLite, then on
#      PostgreSQL.
# Needs: Rust, Node.js 20+ with npm, PostgreSQL on 127.0.0.1:5432 (or
# LEADGATE_TEST_POSTGRES_URL). Nothing is skipped when a service is missing:
# the run fails and says how to start it.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "tests/run.sh: '$1' is missing: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup.rs)"
need node "install Node.js 20 or newer"
need npm "install npm (it comes with Node.js)"

postgres_url=${LEADGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
hostport=${postgres_url#*@}
hostport=${hostport%%/*}
if ! (exec 3<>"/dev/tcp/${hostport%%:*}/${hostport##*:}") 2>/dev/null; then
  echo "tests/run.sh: PostgreSQL is not reachable at $hostport." >&2
  echo "  Start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
  echo "  or point LEADGATE_TEST_POSTGRES_URL at a server where you may create databases." >&2
  exit 1
fi

echo "==> npm ci (tests/e2e)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

echo "==> cargo test (unit + integration, SQLite and PostgreSQL)"
cargo build --workspace --all-targets
cargo test --workspace

export LEADGATE_BIN="$PWD/target/debug/leadgate"
for backend in sqlite postgres; do
  echo "==> end-to-end tests with socket.io-client ($backend)"
  LEADGATE_TEST_BACKEND=$backend node --test --test-concurrency=2 tests/e2e/*.test.mjs
done
