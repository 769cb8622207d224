#!/usr/bin/env bash
# Bytes per span before and after compaction of span files: `llmtrace serve`
# (defaults but storage.flush_interval = 1s) fed 800k spans by
# `loadgen --rate 20000 --duration 40s --start <3 hours ago> --timeline-rate 400`,
# so they land in one past hour, which the server compacts once its flushes
# have been quiet for a minute. Prints the Parquet bytes under spans/ once
# everything acknowledged is flushed, and again after the compaction.
#
#   BIN=target/release/llmtrace scripts/bench_compaction.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/llmtrace}
work=$(mktemp -d)
cleanup() {
    [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
start=$(date -u -d '3 hours ago' +%Y-%m-%dT%H:%M:%SZ)

LLMTRACE_STORAGE_FLUSH_INTERVAL=1s LLMTRACE_LOG=info "$bin" serve --data-dir "$work/data" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q "listening" "$work/serve.log" && break; sleep 0.1; done
grpc=$(grep -m1 "listening" "$work/serve.log" | sed -E 's/.*grpc=([^ ]+).*/\1/')

"$bin" loadgen --endpoint "http://$grpc" --rate 20000 --duration 40s --start "$start" \
    --timeline-rate 400 --seed 1 --quiet >"$work/loadgen.txt" 2>"$work/loadgen.log"
cat "$work/loadgen.txt"
acked=$(sed -nE 's/^acknowledged ([0-9]+) spans.*/\1/p' "$work/loadgen.txt")
flushed() { sed -nE 's/.*flushed spans to parquet.* spans=([0-9]+).*/\1/p' "$work/serve.log" | awk '{s+=$1} END {print s+0}'; }
while (( $(flushed) < acked )); do sleep 0.2; done
sleep 2
bytes() { find "$work/data/spans" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}'; }
files() { find "$work/data/spans" -name '*.parquet' | wc -l; }
partitions() { find "$work/data/spans" -mindepth 3 -type d | wc -l; }
b0=$(bytes); f0=$(files)
# One file per partition once compacted; the server looks every few tens of seconds.
for _ in $(seq 600); do
    grep -q "compacted span files" "$work/serve.log" && (( $(files) <= $(partitions) )) && break
    sleep 1
done
b1=$(bytes); f1=$(files)
kill -TERM "$pid"; wait "$pid" || true; pid=
awk -v a="$acked" -v b0="$b0" -v b1="$b1" -v f0="$f0" -v f1="$f1" 'BEGIN {
    printf "before compaction            %d bytes in %d files, %.1f bytes/span\n", b0, f0, b0 / a
    printf "after compaction             %d bytes in %d files, %.1f bytes/span\n", b1, f1, b1 / a
}'
