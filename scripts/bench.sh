#!/usr/bin/env bash
# End-to-end ingest benchmark: a release `llmtrace serve` fed by `llmtrace loadgen`
# at full speed (--rate 0) for a fixed number of spans. Reports
#   - acknowledged spans per second (wall clock),
#   - spans per CPU-second of the server (utime+stime from /proc/PID/stat),
#   - peak RSS of the server (VmHWM),
#   - bytes per span on disk (Parquet under spans/),
#   - time from the last acknowledgement to the last span being in Parquet.
#
#   scripts/bench.sh                       # 2M spans over gRPC
#   SPANS=5000000 PROTOCOL=http-proto scripts/bench.sh
#
# Environment: SPANS, PROTOCOL (grpc|http-proto|http-json), CONNECTIONS, BATCH,
# SEED, FLUSH_INTERVAL (server's storage.flush_interval), KEEP=1 keeps the data dir,
# POOL (loadgen's --pool: distinct requests replayed; the default 128 repeats
# every value but ids and times each ~26k spans, which flatters dictionaries).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SPANS=${SPANS:-2000000}
PROTOCOL=${PROTOCOL:-grpc}
CONNECTIONS=${CONNECTIONS:-4}
BATCH=${BATCH:-200}
SEED=${SEED:-1}
FLUSH_INTERVAL=${FLUSH_INTERVAL:-10s}

command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install time)" >&2; exit 2; }
# BIN=path skips the build and uses that binary.
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet --bin llmtrace
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/llmtrace}
work=$(mktemp -d)
cleanup() {
    [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null || true
    if [[ "${KEEP:-0}" == 1 ]]; then echo "data kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

LLMTRACE_STORAGE_FLUSH_INTERVAL=$FLUSH_INTERVAL LLMTRACE_LOG=info "$bin" serve --data-dir "$work/data" \
    --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --api-addr 127.0.0.1:0 2>"$work/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q "listening" "$work/serve.log" && break; sleep 0.1; done
line=$(grep -m1 "listening" "$work/serve.log")
grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
http=$(sed -E 's/.*http=([^ ]+).*/\1/' <<<"$line")
endpoint="http://$grpc"; [[ "$PROTOCOL" == grpc ]] || endpoint="http://$http"

tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
cpu0=$(cpu)
# Resident memory every half second, to show it levels off under sustained load.
( while kill -0 "$pid" 2>/dev/null; do awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null; sleep 0.5; done ) >"$work/rss.samples" &
sampler=$!

/usr/bin/time -f "%e %U %S" -o "$work/loadgen.time" \
    "$bin" loadgen --endpoint "$endpoint" --protocol "$PROTOCOL" --rate 0 --spans "$SPANS" \
    --duration 1h --connections "$CONNECTIONS" --batch "$BATCH" --seed "$SEED" --pool "${POOL:-128}" --quiet >"$work/loadgen.txt" 2>"$work/loadgen.log"
t_ack=$(date +%s.%N)
cat "$work/loadgen.txt"
acked=$(sed -nE 's/^acknowledged ([0-9]+) spans.*/\1/p' "$work/loadgen.txt")
elapsed=$(sed -nE 's/^sent [0-9]+ spans in [0-9]+ requests over ([0-9.]+) s/\1/p' "$work/loadgen.txt")

# Wait until the server's flushes account for every acknowledged span.
flushed() { sed -nE 's/.*flushed spans to parquet.* spans=([0-9]+).*/\1/p' "$work/serve.log" | awk '{s+=$1} END {print s+0}'; }
while (( $(flushed) < acked )); do sleep 0.05; done
t_parquet=$(date +%s.%N)
cpu1=$(cpu)
rss_kib=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
kill "$sampler" 2>/dev/null || true
rss_quarters=$(awk '{v[NR]=$1} END {for (q=1; q<=4; q++) printf "%d ", v[int(NR*q/4)]/1024}' "$work/rss.samples")
kill -TERM "$pid"; wait "$pid"; pid=

bytes=$(find "$work/data/spans" -name '*.parquet' -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$work/data/spans" -name '*.parquet' | wc -l)
read -r lg_wall lg_user lg_sys <"$work/loadgen.time"

awk -v acked="$acked" -v elapsed="$elapsed" -v c0="$cpu0" -v c1="$cpu1" -v tck="$tck" \
    -v rss="$rss_kib" -v bytes="$bytes" -v files="$files" -v ta="$t_ack" -v tp="$t_parquet" \
    -v lu="$lg_user" -v ls="$lg_sys" -v proto="$PROTOCOL" -v flush="$FLUSH_INTERVAL" -v quarters="$rss_quarters" 'BEGIN {
    cpu = (c1 - c0) / tck
    printf "protocol                     %s\n", proto
    printf "spans acknowledged           %d\n", acked
    printf "wall throughput              %.0f spans/s\n", acked / elapsed
    printf "server CPU                   %.2f s (%.0f spans per CPU-second)\n", cpu, acked / cpu
    printf "loadgen CPU                  %.2f s\n", lu + ls
    printf "server peak RSS              %.0f MiB (RSS at 1/4, 2/4, 3/4, end of run: %s MiB)\n", rss / 1024, quarters
    printf "on disk                      %d bytes in %d files, %.1f bytes/span\n", bytes, files, bytes / acked
    printf "last ack -> in Parquet       %.2f s (flush_interval %s)\n", tp - ta, flush
}'
