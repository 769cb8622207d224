#!/usr/bin/env bash
# Overload test: offered load far above what the server can take, on its
# default configuration (write-ahead log on, fsync always). Shows that
#   - the server answers the excess with retry hints (HTTP 503 + Retry-After,
#     gRPC UNAVAILABLE + RetryInfo), counted as `overloaded` in /metrics,
#   - its resident memory stays under its bound (512 MiB with the defaults),
#   - it loses nothing it acknowledged: after a graceful stop, the spans in
#     Parquet are exactly the acknowledged ones (count and distinct ids).
#
#   scripts/overload.sh                    # 60 s, 3 senders x 32 connections
#   DURATION=120s SENDERS=4 scripts/overload.sh
#
# Environment: DURATION, SENDERS (loadgen processes, alternating grpc and
# http-proto), CONNECTIONS (per sender), BATCH (spans per request),
# BOUND_MIB (the RSS bound checked, default 512), BIN (skip the build),
# EXTRA_ENV (LLMTRACE_* settings for the server, space separated), KEEP=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION=${DURATION:-60s}
SENDERS=${SENDERS:-3}
CONNECTIONS=${CONNECTIONS:-32}
BATCH=${BATCH:-1000}
BOUND_MIB=${BOUND_MIB:-512}

if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/llmtrace}
work=$(mktemp -d)
cleanup() {
    [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null || true
    [[ -n "${sampler:-}" ]] && kill "$sampler" 2>/dev/null || true
    if [[ "${KEEP:-0}" == 1 ]]; then echo "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# shellcheck disable=SC2086
env ${EXTRA_ENV:-} LLMTRACE_LOG=info "$bin" serve --data-dir "$work/data" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q "listening" "$work/serve.log" && break; sleep 0.1; done
line=$(grep -m1 "listening" "$work/serve.log")
grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
http=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")
api=$(sed -E 's/.*api=([^ ]+).*/\1/' <<<"$line")

( while kill -0 "$pid" 2>/dev/null; do
    awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null; sleep 0.2
  done ) >"$work/rss.samples" &
sampler=$!

senders=()
for i in $(seq "$SENDERS"); do
    if (( i % 2 == 1 )); then proto=grpc; endpoint="http://$grpc"; else proto=http-proto; endpoint="http://$http"; fi
    "$bin" loadgen --endpoint "$endpoint" --protocol "$proto" --rate 0 --duration "$DURATION" \
        --connections "$CONNECTIONS" --batch "$BATCH" --seed "$i" --quiet \
        >"$work/loadgen.$i.txt" 2>"$work/loadgen.$i.log" &
    senders+=($!)
done
for s in "${senders[@]}"; do wait "$s"; done

metrics=$(curl -sf "http://$api/metrics")
overloaded=$(sed -nE 's/^llmtrace_export_requests_rejected_total\{reason="overloaded"\} ([0-9]+)/\1/p' <<<"$metrics")
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill "$sampler" 2>/dev/null || true; sampler=
kill -TERM "$pid"; wait "$pid"; pid=

acked=0; failed=0; requests=0
for i in $(seq "$SENDERS"); do
    a=$(sed -nE 's/^acknowledged ([0-9]+) spans.*/\1/p' "$work/loadgen.$i.txt")
    r=$(sed -nE 's/^sent [0-9]+ spans in ([0-9]+) requests.*/\1/p' "$work/loadgen.$i.txt")
    f=$(sed -nE 's/^acknowledged .*\(([0-9]+) failed requests\)/\1/p' "$work/loadgen.$i.txt")
    acked=$((acked + a)); requests=$((requests + r)); failed=$((failed + ${f:-0}))
done
read -r stored distinct < <(LLMTRACE_QUERY_MEMORY_LIMIT=8GiB "$bin" query --data-dir "$work/data" --format csv \
    "SELECT count(*), count(DISTINCT trace_id || span_id) FROM spans" | tail -1 | tr ',' ' ')
rss_mib=$((rss_kib / 1024))
p50=$(sort -n "$work/rss.samples" | awk '{v[NR]=$1} END {printf "%d", v[int(NR/2)+1]/1024}')

echo "offered                $SENDERS senders x $CONNECTIONS connections, $BATCH spans per request, $DURATION"
echo "requests               $requests sent, $overloaded refused as overloaded (server), $failed failed (loadgen)"
echo "spans acknowledged     $acked"
echo "spans stored           $stored ($distinct distinct)"
echo "server RSS             peak $rss_mib MiB, median $p50 MiB (bound $BOUND_MIB MiB)"
# What the clients were told, once per distinct reason.
grep -h "^failure: " "$work"/loadgen.*.txt | cut -c1-160 | sort | uniq -c | head -5 || true

status=0
(( stored == acked && distinct == acked )) || { echo "FAIL: stored spans differ from acknowledged ones"; status=1; }
(( rss_mib <= BOUND_MIB )) || { echo "FAIL: peak RSS above the bound"; status=1; }
(( overloaded > 0 )) || echo "note: the server never refused a request; offer more load to test the bound"
exit $status
