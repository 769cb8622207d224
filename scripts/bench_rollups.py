#!/usr/bin/env python3
"""p99 latency by model, from rollups and from raw spans, on a warm server.

Usage: bench_rollups.py LLMTRACE_BIN DATA_DIR [RUNS]
llmtrace answers through POST /api/v1/query of a `serve` process over DATA_DIR;
times are its `elapsed_ms`, median of RUNS after one untimed run. DuckDB (warm
connection, exact quantile_disc over the raw spans) is the reference answer.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import duckdb

bin_, data = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3

log = tempfile.NamedTemporaryFile(prefix="bench-rollups-", suffix=".log", delete=False)
server = subprocess.Popen([bin_, "serve", "--data-dir", data, "--grpc-addr", "127.0.0.1:0",
                           "--http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"],
                          stderr=log, env={**os.environ, "LLMTRACE_LOG": "info"})
api = None
for _ in range(200):
    m = re.search(r"api=(\S+)", open(log.name).read())
    if m:
        api = m.group(1)
        break
    time.sleep(0.05)
if api is None:
    server.kill()
    sys.exit(f"server did not start; see {log.name}")


def ask(sql):
    req = urllib.request.Request(f"http://{api}/api/v1/query", data=json.dumps({"sql": sql}).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.load(resp)


def timed(sql):
    ask(sql)
    return statistics.median(ask(sql)["elapsed_ms"] for _ in range(runs))


con = duckdb.connect()
con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{data}/spans/**/*.parquet', "
            "hive_partitioning=true, hive_types_autocast=false)")
spans, calls, first, last = con.execute(
    "SELECT count(*), count(*) FILTER (WHERE is_llm), min(start_time), max(start_time) FROM spans").fetchone()
rollup_rows = ask("SELECT count(*) FROM rollups")["rows"][0][0]
rollup_files = sum(len(f) for _, _, f in os.walk(os.path.join(data, "rollups")))
print(f"{spans:,} spans ({calls:,} LLM calls) from {first} to {last}; "
      f"{rollup_rows:,} rollup rows in {rollup_files} files; median of {runs} runs\n")

since_day = ask("SELECT max(minute) - INTERVAL '1 day' FROM rollups")["rows"][0][0]
print("| range | rollups: hdr_merge p99 | spans: approx_percentile_cont p99 | DuckDB spans: exact quantile_disc | max p99 diff rollups vs exact |")
print("|---|---|---|---|---|")
for name, where_r, where_s in [
    ("all (30 days)", "true", "true"),
    ("last day", f"minute >= TIMESTAMP '{since_day}'", f"start_time >= TIMESTAMP '{since_day}'"),
]:
    rollups_sql = (f"SELECT model, hdr_quantile(hdr_merge(latency_ms_hist), 0.99) AS p99 FROM rollups "
                   f"WHERE {where_r} GROUP BY model ORDER BY model")
    spans_sql = (f"SELECT model, approx_percentile_cont(duration_ms, 0.99) AS p99 FROM llm_calls "
                 f"WHERE {where_s} GROUP BY model ORDER BY model")
    duck_sql = (f"SELECT model, quantile_disc(duration_ms, 0.99) AS p99 FROM spans "
                f"WHERE is_llm AND {where_s} GROUP BY model ORDER BY model")
    r = timed(rollups_sql)
    s = timed(spans_sql)
    con.execute(duck_sql).fetchall()
    t = time.perf_counter()
    exact = dict(con.execute(duck_sql).fetchall())
    d = (time.perf_counter() - t) * 1e3
    got = {row[0]: row[1] for row in ask(rollups_sql)["rows"]}
    worst = max(abs(got[m] - exact[m]) / exact[m] for m in exact if exact[m])
    print(f"| {name} | {r:.0f} ms | {s:.0f} ms | {d:.0f} ms | {worst * 100:.3f}% |")
server.terminate()
server.wait()
