#!/usr/bin/env bash
# Runs the whole test suite:
#   1. Rust unit tests and the integration tests (each on SQLite and PostgreSQL);
#   2. the end-to-end tests: the gateway binary driven by the official
#      socket.io-client over WebSocket and long-polling, on SQLite, then on
#      PostgreSQL;
#   3. the cluster tests: several gateway processes behind nginx (deploy/nginx.conf),
#      fanned out through Redis, fed by the example workers, and the
#      deployment files (docker-compose config, the Dockerfile's build);
#   4. the browser tests: the examples (React, Vue, leads page) built with
#      Vite and driven in headless Chromium against the gateway binary.
# Needs Rust, Node.js 20+ with npm, Python 3, PostgreSQL and Redis, as the
# README describes. Everything else it sets up itself: the Debian packages
# it is missing (Chromium, the sqlite3 and psql shells, nginx, docker-compose,
# redis-server, python3-venv), PostgreSQL and Redis on this machine if they
# are not running, and the npm and Python packages. Where it cannot (no
# root, no apt-get), it stops with the command to run. Nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "tests/run.sh: '$1' is missing: $2" >&2; exit 1; }
}
need cargo "install Rust (https://rustup.rs)"
need node "install Node.js 20 or newer"
need npm "install npm (it comes with Node.js)"
need python3 "install Python 3"

# System packages: command or file -> Debian package.
chromium=${LEADGATE_TEST_CHROMIUM:-/usr/bin/chromium}
missing=()
[ -x "$chromium" ] || missing+=(chromium)
sqlite3 --version >/dev/null 2>&1 || missing+=(sqlite3)
psql --version >/dev/null 2>&1 || missing+=(postgresql-client)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# (docker-compose only parses the compose file here: not the Docker engine
# it recommends.)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  install=(apt-get install -y -qq "${missing[@]}")
  [[ " ${missing[*]} " != *" docker-compose "* ]] || install+=(docker.io-)
  if [ "$(id -u)" = 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo); else sudo=(none); fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "${sudo[0]:-}" = none ]; then
    echo "tests/run.sh: missing ${missing[*]}; install them and run again:" >&2
    echo "  sudo apt-get update && sudo ${install[*]}" >&2
    [ -x "$chromium" ] || echo "  (or point LEADGATE_TEST_CHROMIUM at a Chromium)" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]} (apt-get)"
  # Debian starts a freshly installed nginx or redis-server as a service;
  # the tests start their own, so the package scripts are told not to.
  own_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
    own_policy=true
  fi
  "${sudo[@]}" apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${install[@]}" >/dev/null; then
    # apt installs nothing while installed packages have unmet dependencies
    # (a package removed by hand, say); it says to repair them first.
    echo "==> apt-get could not install; repairing unmet dependencies (apt-get -f install) and trying again"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -f install -y -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive "${sudo[@]}" "${install[@]}" >/dev/null || status=$?
  fi
  if $own_policy; then "${sudo[@]}" rm -f /usr/sbin/policy-rc.d; fi
  [ "${status:-0}" = 0 ] || { echo "tests/run.sh: could not install ${missing[*]}" >&2; exit 1; }
fi
[ -x "$chromium" ] || { echo "tests/run.sh: no Chromium at $chromium (set LEADGATE_TEST_CHROMIUM)" >&2; exit 1; }

reachable() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
local_host() { [ "$1" = 127.0.0.1 ] || [ "$1" = localhost ]; }
wait_for() {
  for _ in $(seq 1 100); do reachable "$1" "$2" && return 0; sleep 0.1; done
  return 1
}

postgres_url=${LEADGATE_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
hostport=${postgres_url#*@}
hostport=${hostport%%/*}
pg_host=${hostport%%:*} pg_port=${hostport##*:}
if ! reachable "$pg_host" "$pg_port"; then
  if local_host "$pg_host" && command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ] && [ "$(id -u)" = 0 ]; then
    echo "==> starting PostgreSQL (pg_ctlcluster)"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | tail -1)" main start
    wait_for "$pg_host" "$pg_port" || true
  fi
  if ! reachable "$pg_host" "$pg_port"; then
    echo "tests/run.sh: PostgreSQL is not reachable at $hostport." >&2
    echo "  Start it: sudo pg_ctlcluster --skip-systemctl-redirect \$(ls /etc/postgresql) main start" >&2
    echo "  or point LEADGATE_TEST_POSTGRES_URL at a server where you may create databases." >&2
    exit 1
  fi
fi

redis_url=${LEADGATE_TEST_REDIS_URL:-redis://127.0.0.1:6379}
redis_hostport=${redis_url#redis://}
redis_hostport=${redis_hostport##*@}
redis_hostport=${redis_hostport%%/*}
redis_host=${redis_hostport%%:*} redis_port=${redis_hostport##*:}
if ! reachable "$redis_host" "$redis_port"; then
  if local_host "$redis_host"; then
    echo "==> starting Redis on port $redis_port (in-memory, nothing kept on disk)"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
      --dir /tmp --logfile "/tmp/leadgate-test-redis-$redis_port.log"
    wait_for "$redis_host" "$redis_port" || true
  fi
  if ! reachable "$redis_host" "$redis_port"; then
    echo "tests/run.sh: Redis is not reachable at $redis_hostport." >&2
    echo "  Start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no" >&2
    exit 1
  fi
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

echo "==> cluster tests: gateway processes behind nginx, Redis fan-out, the deployment files (PostgreSQL)"
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

echo "==> leads benchmark, quick run: pages by index and by SQL (checked to agree), lead views refreshed after a crawl"
LEADGATE_BENCH_REDIS_URL="$redis_url" target/debug/leadgate-bench leads --quick \
  --postgres "$postgres_url" --leadgate-bin target/debug/leadgate
