#!/usr/bin/env bash
# Fills a fresh data dir with loadgen spans through a release `serve`, for the
# query benchmarks. Usage: make_store.sh BIN DATA_DIR SPANS [loadgen flags...]
set -euo pipefail
bin=$1 data=$2 spans=$3
shift 3
LLMTRACE_LOG=info "$bin" serve --data-dir "$data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
    --api-addr 127.0.0.1:0 2>"$data.log" &
pid=$!
for _ in $(seq 100); do grep -q listening "$data.log" 2>/dev/null && break; sleep 0.1; done
grpc=$(sed -nE 's/.*grpc=([^ ]+).*/\1/p' "$data.log" | head -1)
"$bin" loadgen --endpoint "http://$grpc" --rate 0 --spans "$spans" --duration 2h --seed 1 --quiet "$@"
kill -TERM "$pid"; wait "$pid"
echo "data in $data"
