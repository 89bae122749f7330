#!/usr/bin/env bash
# Benchmarks leadgate against a bare socketioxide server (what leadgate is
# built on) and the Node.js Socket.IO server it replaces, every scenario on
# all three in one run, and prints the figures side by side.
#
#   crates/leadgate-bench/run.sh            the full run (over 20 minutes)
#   crates/leadgate-bench/run.sh --quick    a short run that checks the benchmark works
#
# Then crates/leadgate-bench/redis-restart.mjs: how soon after a Redis
# restart events reach every instance again, leadgate and the peer.
#
# Needs PostgreSQL and Redis (LEADGATE_BENCH_DATABASE_URL,
# LEADGATE_BENCH_REDIS_URL) and Node.js. BENCH_PROFILE=dev uses debug builds.
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=${BENCH_PROFILE:-release}
# leadgate-bench's binaries: the benchmark and bare-socketioxide.
cargo build --profile "$profile" -p leadgate -p leadgate-bench
dir=target/$([ "$profile" = dev ] && echo debug || echo "$profile")

peer=crates/leadgate-bench/node-peer
if [ ! -d "$peer/node_modules" ] || [ "$peer/package-lock.json" -nt "$peer/node_modules" ]; then
    (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error)
fi

"$dir/leadgate-bench" --leadgate-bin "$dir/leadgate" \
    --socketioxide-bin "$dir/bare-socketioxide" "$@"

# Redis restarts: leadgate and the peer, three instances each
# (redis-restart.mjs reuses the cluster tests' process helpers).
if [ ! -d tests/e2e/node_modules ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules ]; then
    (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
rounds=5
for arg in "$@"; do [ "$arg" = --quick ] && rounds=2; done
bench_db=${LEADGATE_BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/leadgate_bench}
LEADGATE_BIN="$dir/leadgate" LEADGATE_TEST_POSTGRES_URL="${bench_db%/*}" \
    node crates/leadgate-bench/redis-restart.mjs "$rounds"
