#!/usr/bin/env python3
"""Runs the hostile-input set of issue 22 against a real `llmtrace serve` and
prints, per item, `held` or `FAILED` with what was measured (status, time,
peak RSS), then `N passed, N failed`.

    scripts/hostile.sh                      # builds the release binary
    BIN=target/debug/llmtrace scripts/hostile.sh

Every item sends traffic to 127.0.0.1 only, bounded in count and time. An item
holds when the server answers it as the README's "What it answers" says, stays
alive, and answers an OTLP export right after it (within an exporter's 5 s
deadline).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = os.environ.get("BIN", "target/release/llmtrace")
MEMORY_BOUND = 512 << 20  # ingest.memory_limit's default


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data: Path, env: dict[str, str] | None = None):
        self.data = data
        self.http, self.api = free_port(), free_port()
        self.grpc = free_port()
        self.log = open(data.parent / f"serve-{time.time_ns()}.log", "w")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--data-dir", str(data), "--grpc-addr", f"127.0.0.1:{self.grpc}",
             "--http-addr", f"127.0.0.1:{self.http}", "--api-addr", f"127.0.0.1:{self.api}"],
            stderr=self.log, env={**os.environ, "LLMTRACE_LOG": "info", **(env or {})})
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.api}/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self, sig=signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def request(url: str, body: bytes | None = None, headers: dict | None = None, timeout=120.0):
    req = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def query(s: Server, sql: str, timeout=120.0):
    return request(f"http://127.0.0.1:{s.api}/api/v1/query", json.dumps({"sql": sql}).encode(),
                   {"content-type": "application/json"}, timeout)


SPAN_SEQ = [0]


def spans_json(n: int = 10, tokens: int = 10) -> bytes:
    now = time.time_ns()
    spans = []
    for _ in range(n):
        SPAN_SEQ[0] += 1
        i = SPAN_SEQ[0]
        spans.append({"traceId": f"{i:032x}", "spanId": f"{i:016x}", "name": "chat gpt-4o",
                      "startTimeUnixNano": str(now - 2_000_000), "endTimeUnixNano": str(now),
                      "attributes": [
                          {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                          {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                          {"key": "gen_ai.usage.input_tokens", "value": {"intValue": str(tokens)}}]})
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}).encode()


def export_ok(s: Server) -> bool:
    try:
        status, _, _ = request(f"http://127.0.0.1:{s.http}/v1/traces", spans_json(),
                               {"content-type": "application/json"}, timeout=5)
        return status == 200
    except OSError:
        return False


RESULTS: list[tuple[str, bool, str]] = []


def item(name: str, held: bool, detail: str) -> None:
    RESULTS.append((name, held, detail))
    print(f"{'held  ' if held else 'FAILED'} {name}: {detail}", flush=True)


def sql_items(s: Server) -> None:
    shapes = {
        "1+1+…+1 (3,000 terms)": "SELECT " + "+".join(["1"] * 3000),
        "nested parentheses (100,000)": "SELECT " + "(" * 100000 + "1" + ")" * 100000,
        "nested abs() (3,000)": "SELECT " + "abs(" * 3000 + "1" + ")" * 3000,
        "nested CASE (3,000)": "SELECT " + "CASE WHEN true THEN " * 3000 + "1" + " END" * 3000,
        "nested subqueries (3,000)": "SELECT * FROM " + "(SELECT * FROM " * 3000 + "spans" + ") t" * 3000,
        "OR chain (3,000)": "SELECT count(*) FROM spans WHERE " + " OR ".join(f"span_name = 'x{i}'" for i in range(3000)),
        "UNION chain (3,000)": " UNION ALL ".join(["SELECT 1"] * 3000),
        "regex a{1000}{1000}{1000}": "SELECT 'a' ~ 'a{1000}{1000}{1000}'",
        "repeat('a', 1e9)": "SELECT length(repeat('a', 1000000000))",
        "levenshtein of 230,000-char strings": "SELECT levenshtein(repeat('a', 230000), repeat('b', 230000))",
        "recursive CTE without end": "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
    }
    for name, sql in shapes.items():
        t = time.time()
        try:
            status, _, body = query(s, sql)
        except OSError as e:
            item(f"sql: {name}", False, f"no answer: {e}")
            continue
        took = time.time() - t
        ok = status in (400, 408, 413) and s.alive() and export_ok(s)
        item(f"sql: {name}", ok, f"{status} in {took:.2f} s: {body[:110].decode(errors='replace')}")

    before = s.rss()
    t = time.time()
    status, headers, body = query(s, "SELECT repeat('a', 1000) AS s FROM generate_series(1, 200000)")
    took = time.time() - t
    time.sleep(1)
    after = s.rss()
    ok = status == 200 and headers.get("x-llmtrace-truncated") == "true" and export_ok(s)
    item("sql: 200 MB JSON answer", ok,
         f"{status}, {len(body) >> 20} MiB sent (cut, x-llmtrace-truncated), {took:.2f} s; "
         f"RSS {before >> 20} -> {after >> 20} MiB after, peak so far {s.peak_rss() >> 20} MiB")

    # Two slow queries (one per query thread) while ingest is measured.
    slow = "SELECT count(*) FROM generate_series(1, 100000000000)"
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(query(s, slow)[0])) for _ in range(2)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    worst, all_ok = 0.0, True
    for _ in range(20):
        t = time.time()
        all_ok &= export_ok(s)
        worst = max(worst, time.time() - t)
    for th in threads:
        th.join()
    ok = all_ok and answers == [408, 408]
    item("sql: two queries past the timeout while exporting", ok,
         f"answers {answers}; 20 exports meanwhile, slowest {worst * 1000:.0f} ms")


def slow_clients(s: Server) -> None:
    socks = []
    for _ in range(4):
        c = socket.create_connection(("127.0.0.1", s.http))
        c.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: 16777216\r\n\r\n")
        socks.append(c)
    time.sleep(0.5)
    answered = sum(export_ok(s) for _ in range(10))
    for c in socks:
        c.close()
    item("ingest: 4 connections declaring 16 MiB and sending nothing", answered == 10,
         f"{answered}/10 other exports answered 200 meanwhile")


def gzip_bombs(s: Server) -> None:
    bomb = gzip.compress(b"\0" * (60 << 20), compresslevel=9)
    statuses: list = []

    def send():
        try:
            statuses.append(request(f"http://127.0.0.1:{s.http}/v1/traces", bomb,
                                    {"content-type": "application/x-protobuf", "content-encoding": "gzip"},
                                    timeout=60)[0])
        except OSError as e:
            statuses.append(str(e))
    threads = [threading.Thread(target=send) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    peak = s.peak_rss()
    ok = peak <= MEMORY_BOUND and s.alive() and export_ok(s)
    item("ingest: 20 concurrent gzip bodies of 60 MiB inflated", ok,
         f"{len(bomb) >> 10} KiB each; answers {sorted(set(map(str, statuses)))}; peak RSS {peak >> 20} MiB (bound {MEMORY_BOUND >> 20})")


def token_overflow(s: Server) -> None:
    for _ in range(2):
        request(f"http://127.0.0.1:{s.http}/v1/traces", spans_json(1, 2**63 - 2),
                {"content-type": "application/json"})
    _, _, body = request(f"http://127.0.0.1:{s.api}/api/v1/stats?window=5m")
    groups = json.loads(body).get("groups", [])
    tokens = [g.get("input_tokens") for g in groups]
    ok = all(isinstance(t, int) and t >= 0 for t in tokens) and tokens
    item("stats: token counts near i64::MAX", bool(ok), f"input_tokens {tokens}")


def damaged_files(work: Path) -> None:
    data = work / "damaged"
    s = Server(data, {"LLMTRACE_STORAGE_FLUSH_INTERVAL": "200ms"})
    for _ in range(20):
        export_ok(s)
    time.sleep(1.5)
    files = sorted((data / "spans").rglob("*.parquet"))
    if not files:
        item("files: a garbled span file", False, "no span file was written")
        s.stop()
        return
    victim = files[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 3: len(raw) // 3 + 200] = os.urandom(200)
    victim.write_bytes(bytes(raw[: len(raw) - 10]))
    status, _, body = query(s, "SELECT count(*) FROM spans")
    quarantined = list((data / "quarantine").rglob("*")) if (data / "quarantine").exists() else []
    item("files: a garbled, truncated span file", status == 200 and bool(quarantined),
         f"query {status}: {body[:80].decode(errors='replace')}; quarantine holds {len([q for q in quarantined if q.is_file()])} file(s)")

    # A write-ahead log segment garbled in its middle, after a SIGKILL.
    s.stop(signal.SIGKILL)
    s = Server(data, {"LLMTRACE_STORAGE_FLUSH_INTERVAL": "1h"})
    for _ in range(200):
        export_ok(s)
    s.stop(signal.SIGKILL)
    segments = sorted((data / "wal").glob("*.wal")) or sorted(p for p in (data / "wal").iterdir() if p.is_file() and p.stat().st_size > 4096)
    if segments:
        seg = max(segments, key=lambda p: p.stat().st_size)
        raw = bytearray(seg.read_bytes())
        raw[len(raw) // 3: len(raw) // 3 + 200] = os.urandom(200)
        seg.write_bytes(bytes(raw))
    try:
        s = Server(data)
        status, _, body = query(s, "SELECT count(*) FROM spans")
        item("files: a log segment garbled in its first third", status == 200,
             f"restarted; spans {body[:60].decode(errors='replace')}")
        s.stop(signal.SIGKILL)
        for seg in sorted(p for p in (data / "wal").iterdir() if p.is_file() and p.stat().st_size > 0)[:1]:
            raw = bytearray(seg.read_bytes())
            raw[:16] = os.urandom(16)
            seg.write_bytes(bytes(raw))
        s = Server(data)
        item("files: a log segment with a garbled header", s.alive(), "restarted")
        s.stop()
    except RuntimeError as e:
        item("files: damaged log", False, str(e))


def config_item() -> None:
    out = subprocess.run([BIN, "serve", "--data-dir", "/nonexistent/x"], capture_output=True, text=True,
                         env={**os.environ, "LLMTRACE_INGEST_MEMORY_LIMIT": "-1"}, timeout=30)
    ok = out.returncode == 2 and "memory_limit" in out.stderr and "untagged" not in out.stderr
    item("config: LLMTRACE_INGEST_MEMORY_LIMIT=-1", ok, f"exit {out.returncode}: {out.stderr.strip()[:140]}")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="llmtrace-hostile-"))
    try:
        s = Server(work / "data", {"LLMTRACE_QUERY_TIMEOUT": "10s"})
        sql_items(s)
        slow_clients(s)
        token_overflow(s)
        s.stop()
        s = Server(work / "bombs")
        gzip_bombs(s)
        s.stop()
        damaged_files(work)
        config_item()
    finally:
        if os.environ.get("KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    held = sum(1 for _, ok, _ in RESULTS if ok)
    print(f"{held} passed, {len(RESULTS) - held} failed")
    return 0 if held == len(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
