#!/usr/bin/env bash
# An example crawler. It takes "Sync" requests from the crawl_requests
# table, "crawls" by reading fixture files, and reports the leads with
# `leadgate leads import`, which upserts them and announces them to every
# gateway (through Redis, or, without Redis, by the database alone).
#
#   LEADGATE_DATABASE_URL=… [LEADGATE_REDIS_URL=…] examples/crawler/crawl.sh [--once]
#
# A real crawler does the same three steps in any language: claim a request
# (see README "Crawlers"), upsert into the leads table, publish
# {"type":"leads_updated","provider":…} on <prefix>leads.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
leadgate=${LEADGATE:-leadgate}
fixtures=${CRAWLER_FIXTURES:-$here/fixtures}
once=${1:-}

while true; do
  request=$("$leadgate" leads claim --worker "example-crawler@$(hostname)")
  if [ -z "$request" ]; then
    [ "$once" = "--once" ] && exit 0
    sleep 1
    continue
  fi
  id=$(sed -n 's/.*"request_id":\([0-9]*\).*/\1/p' <<<"$request")
  provider=$(sed -n 's/.*"provider":"\([^"]*\)".*/\1/p' <<<"$request")
  if [ -n "$provider" ]; then
    providers=("$provider")
  else
    # A request for every provider: crawl each one we have data for.
    providers=()
    for file in "$fixtures"/*.json; do providers+=("$(basename "$file" .json)"); done
  fi
  for p in "${providers[@]}"; do
    if [ ! -f "$fixtures/$p.json" ]; then
      echo "crawler: no data for provider $p" >&2
      continue
    fi
    "$leadgate" leads import "$fixtures/$p.json" --provider "$p" --request "$id"
  done
done
