"""A `llmtrace serve` process over a data dir, for the benchmark scripts:
started on free ports, asked through POST /api/v1/query, stopped cleanly."""
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request


class Server:
    def __init__(self, binary, data_dir):
        self.log = tempfile.NamedTemporaryFile(prefix="llmtrace-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data_dir, "--grpc-addr", "127.0.0.1:0",
             "--http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"],
            stderr=self.log, env={**os.environ, "LLMTRACE_LOG": "info"})
        self.api = None
        for _ in range(200):
            m = re.search(r"api=(\S+)", open(self.log.name).read())
            if m:
                self.api = m.group(1)
                return
            time.sleep(0.05)
        self.proc.kill()
        raise SystemExit(f"server did not start; see {self.log.name}")

    def query(self, sql):
        """The JSON answer of one statement."""
        req = urllib.request.Request(f"http://{self.api}/api/v1/query",
                                     data=json.dumps({"sql": sql}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.load(resp)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
