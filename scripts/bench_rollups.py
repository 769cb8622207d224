#!/usr/bin/env python3
"""p99 latency by model, from rollups and from raw spans, on a warm server.

Usage: bench_rollups.py LLMTRACE_BIN DATA_DIR [RUNS]
llmtrace answers through POST /api/v1/query of a `serve` process over DATA_DIR;
times are its `elapsed_ms`, median of RUNS after one untimed run. DuckDB (warm
connection, exact quantile_disc over the raw spans) is the reference answer.
"""
import os
import statistics
import sys
import time

import duckdb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llmtrace_server import Server  # noqa: E402

bin_, data = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 3

server = Server(bin_, data)
ask = server.query


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
server.stop()
