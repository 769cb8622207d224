#!/usr/bin/env python3
"""Typical report queries over a large span store: llmtrace (DataFusion) vs DuckDB
reading the same Parquet files. Prints a markdown table of median query times.

    scripts/bench_query.sh            # generates 10M spans first, then runs this

Usage: bench_query.py LLMTRACE_BIN DATA_DIR [RUNS]
Both engines are warm, as a dashboard meets them: llmtrace is a `serve` process
over DATA_DIR answering POST /api/v1/query, DuckDB one connection. Each query
runs once untimed, then RUNS times. Times are query execution only: llmtrace's
own `elapsed_ms` (planning + execution inside the engine) and, for DuckDB, the
time around execute().fetchall().
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

trace = None
QUERIES = [
    ("calls by model", "SELECT model, count(*) AS n FROM llm_calls GROUP BY model ORDER BY n DESC"),
    ("cost by day, provider, model",
     "SELECT date, provider, model, count(*) AS calls, sum(input_tokens) AS input, sum(output_tokens) AS output, "
     "sum(cost_usd) AS usd FROM llm_calls GROUP BY date, provider, model ORDER BY usd DESC"),
    ("error rate by provider and class",
     "SELECT provider, error_type, count(*) AS n FROM llm_calls WHERE status = 'error' GROUP BY provider, error_type ORDER BY n DESC"),
    ("median latency by model", "SELECT model, median(duration_ms) AS p50 FROM llm_calls GROUP BY model"),
    ("top 10 users by cost",
     "SELECT user_id, sum(cost_usd) AS usd FROM llm_calls WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY usd DESC LIMIT 10"),
    ("one trace by id", None),  # filled in below
]


server = Server(bin_, data)
llmtrace = server.query


con = duckdb.connect()
con.execute(f"CREATE VIEW spans AS SELECT * FROM read_parquet('{data}/spans/**/*.parquet', "
            "hive_partitioning=true, union_by_name=true, hive_types_autocast=false)")
con.execute("CREATE VIEW llm_calls AS SELECT * FROM spans WHERE is_llm")
trace = con.execute("SELECT trace_id FROM spans USING SAMPLE 1 ROWS").fetchone()[0]
QUERIES[-1] = ("one trace by id", f"SELECT span_name, duration_ms FROM spans WHERE trace_id = '{trace}'")
# One hour of the data by start_time: llmtrace prunes partitions from the
# time predicate, DuckDB row groups from statistics.
hour = con.execute("SELECT date_trunc('hour', max(start_time)) FROM spans").fetchone()[0]
QUERIES.append(("last hour by model (start_time)",
                f"SELECT model, count(*) AS n, sum(cost_usd) AS usd FROM llm_calls "
                f"WHERE start_time >= TIMESTAMP '{hour:%Y-%m-%d %H:%M:%S}' GROUP BY model ORDER BY n DESC"))
spans = con.execute("SELECT count(*) FROM spans").fetchone()[0]

print(f"{spans:,} spans in {data}; median of {runs} runs per query\n")
print("| query | llmtrace (DataFusion) | DuckDB | ratio |")
print("|---|---|---|---|")
for name, sql in QUERIES:
    lt, dk = [], []
    llmtrace(sql)
    con.execute(sql).fetchall()
    for _ in range(runs):
        lt.append(llmtrace(sql)["elapsed_ms"])
        t = time.perf_counter()
        con.execute(sql).fetchall()
        dk.append((time.perf_counter() - t) * 1e3)
    a, b = statistics.median(lt), statistics.median(dk)
    print(f"| {name} | {a:.0f} ms | {b:.0f} ms | {a / b:.2f}x |")
server.stop()
