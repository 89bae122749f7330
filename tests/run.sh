#!/usr/bin/env bash
# Runs the whole test suite:
#   1. Rust unit tests and the integration tests (each on SQLite and PostgreSQL);
#   2. the end-to-end tests: the gateway binary driven by the official
#      socket.io-client over WebSocket and long-polling, on SQLite, then on
#      PostgreSQL;
#   3. the cluster tests: several gateway processes behind a load balancer,
#      fanned out through Redis, fed by the example workers;
#   4. the browser tests: the examples (React, Vue, leads page) built with
#      Vite and driven in headless Chromium against the gateway binary.
# Needs: Rust, Node.js 20+ with npm, Python 3 with venv, PostgreSQL on
# 127.0.0.1:5432 (or LEADGATE_TEST_POSTGRES_URL), Redis on 127.0.0.1:6379 (or
# LEADGATE_TEST_REDIS_URL), redis-server on the PATH and Chromium at
# /usr/bin/chromium (or LEADGATE_TEST_CHROMIUM). Nothing is skipped
# when a service is missing: the run fails and says how to start it.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "tests/run.sh: '$1' is missing: $2" >&2; exit 1; }
}
need cargo "install Rust (rustup.rs)"
need node "install Node.js 20 or newer"
need npm "install npm (it comes with Node.js)"
need python3 "install Python 3"
need redis-server "install Redis (apt-get install redis-server)"
need sqlite3 "install the SQLite shell (apt-get install sqlite3)"
need psql "install the PostgreSQL client (apt-get install postgresql-client)"
chromium=${LEADGATE_TEST_CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "tests/run.sh: Chromium is missing at $chromium: install it (apt-get install chromium) or set LEADGATE_TEST_CHROMIUM" >&2; exit 1; }

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

postgres_url=${LEADGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
hostport=${postgres_url#*@}
hostport=${hostport%%/*}
if ! reachable "${hostport%%:*}" "${hostport##*:}"; then
  echo "tests/run.sh: PostgreSQL is not reachable at $hostport." >&2
  echo "  Start it: pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
  echo "  or point LEADGATE_TEST_POSTGRES_URL at a server where you may create databases." >&2
  exit 1
fi

redis_url=${LEADGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
redis_hostport=${redis_url#redis://}
redis_hostport=${redis_hostport##*@}
redis_hostport=${redis_hostport%%/*}
if ! reachable "${redis_hostport%%:*}" "${redis_hostport##*:}"; then
  echo "tests/run.sh: Redis is not reachable at $redis_hostport." >&2
  echo "  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no" >&2
  exit 1
fi

echo "==> npm ci (tests/e2e, examples/node-worker)"
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
(cd examples/node-worker && npm ci --no-audit --no-fund --loglevel=error)
echo "==> Python environment for examples/python-worker (target/python)"
if [ ! -x target/python/bin/python ]; then
  python3 -m venv target/python
fi
target/python/bin/pip install --quiet --disable-pip-version-check -r examples/python-worker/requirements.txt
export LEADGATE_TEST_PYTHON="$PWD/target/python/bin/python"

echo "==> cargo test (unit + integration, SQLite and PostgreSQL)"
cargo build --workspace --all-targets
cargo test --workspace

export LEADGATE_BIN="$PWD/target/debug/leadgate"
for backend in sqlite postgres; do
  echo "==> end-to-end tests with socket.io-client ($backend)"
  LEADGATE_TEST_BACKEND=$backend node --test --test-concurrency=2 tests/e2e/*.test.mjs
done

echo "==> cluster tests: gateway processes behind a load balancer, Redis fan-out (PostgreSQL)"
node --test --test-concurrency=1 tests/e2e/cluster/

echo "==> npm ci (examples/react-app, examples/vue-app, examples/leads-page, tests/browser)"
for dir in examples/react-app examples/vue-app examples/leads-page tests/browser; do
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
done
for backend in sqlite postgres; do
  echo "==> browser tests: the examples in headless Chromium ($backend)"
  LEADGATE_TEST_BACKEND=$backend node --test --test-concurrency=3 tests/browser/
done

echo "==> benchmark, quick run: every scenario on leadgate, bare socketioxide and the Node.js peer"
LEADGATE_BENCH_DATABASE_URL="${postgres_url%/*}/leadgate_bench" LEADGATE_BENCH_REDIS_URL="$redis_url" \
  BENCH_PROFILE=dev crates/leadgate-bench/run.sh --quick --json target/bench/quick.json
