"""A tiny local stand-in for the OpenAI Chat Completions API.

Only ``POST /v1/chat/completions`` is implemented, which is all the e2e tests
need. It listens on 127.0.0.1 (port 0 by default) and never talks to the
network.

Behaviour is driven by the request's ``model`` through the single table
``MODELS`` below; the tests import that table to know what token counts and
response model to expect, so no expected value is written down twice.

* a model whose entry has ``"error"`` answers with that HTTP status and an
  OpenAI-style error body (``rate-limited-model`` -> 429 RateLimitError);
* the header ``x-mock-error: 429`` forces the same error for any model;
* ``"stream": true`` answers with Server-Sent Events: a short delay, a few
  content chunks, a finish chunk and, when ``stream_options.include_usage``
  is true, a final chunk with an empty ``choices`` list and the ``usage``.

Run it alone with ``python mock_openai.py`` to poke at it by hand.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The one table of canned answers, keyed by request model.
MODELS: dict[str, dict[str, Any]] = {
    # Plain (non-streaming) chat call.
    "gpt-4o-mini": {
        "response_model": "gpt-4o-mini-2024-07-18",
        "input_tokens": 17,
        "output_tokens": 9,
        "finish_reason": "stop",
        "content": ["Hello", " from", " the", " mock", "."],
    },
    # Streaming chat call (a distinct model so tests can tell rows apart).
    "gpt-4o": {
        "response_model": "gpt-4o-2024-08-06",
        "input_tokens": 23,
        "output_tokens": 11,
        "finish_reason": "stop",
        "content": ["Streaming", " tokens", " one", " by", " one", "."],
    },
    # Always rate-limited.
    "rate-limited-model": {
        "error": {
            "status": 429,
            "type": "requests",
            "code": "rate_limit_exceeded",
            "message": (
                "Rate limit reached for rate-limited-model on requests per min "
                "(RPM): Limit 1, Used 1, Requested 1. (mock)"
            ),
        },
    },
}

PLAIN_MODEL = "gpt-4o-mini"
STREAM_MODEL = "gpt-4o"
RATE_LIMITED_MODEL = "rate-limited-model"

# Delay before the first SSE chunk, so time-to-first-token is measurable.
FIRST_CHUNK_DELAY_S = 0.15
# Delay between later SSE chunks.
CHUNK_DELAY_S = 0.01

_RATE_LIMIT_ERROR = MODELS[RATE_LIMITED_MODEL]["error"]


def _usage(entry: dict[str, Any]) -> dict[str, Any]:
    i, o = entry["input_tokens"], entry["output_tokens"]
    return {
        "prompt_tokens": i,
        "completion_tokens": o,
        "total_tokens": i + o,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class _Handler(BaseHTTPRequestHandler):
    server_version = "mock-openai/1.0"
    # HTTP/1.1 with explicit Content-Length for JSON and Connection: close for
    # SSE keeps both httpx and curl happy.
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    # -- helpers -----------------------------------------------------------
    def _send_json(self, status: int, body: dict[str, Any], extra_headers=None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra_headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, err: dict[str, Any], model: str) -> None:
        self._send_json(
            err["status"],
            {
                "error": {
                    "message": err["message"],
                    "type": err["type"],
                    "param": None,
                    "code": err["code"],
                }
            },
            {
                "x-request-id": f"req_mock_{model}",
                "retry-after": "1",
                "x-ratelimit-limit-requests": "1",
                "x-ratelimit-remaining-requests": "0",
            },
        )

    # -- routes ------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        if self.path in ("/healthz", "/"):
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"error": {"message": "not found", "type": "invalid_request_error", "param": None, "code": None}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"unknown path {self.path}", "type": "invalid_request_error", "param": None, "code": None}})
            return
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send_json(400, {"error": {"message": "bad json", "type": "invalid_request_error", "param": None, "code": None}})
            return

        model = req.get("model", "")
        stream = bool(req.get("stream"))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append(  # type: ignore[attr-defined]
                {"model": model, "stream": stream, "include_usage": include_usage}
            )

        forced = self.headers.get("x-mock-error")
        if forced == "429":
            self._send_error(_RATE_LIMIT_ERROR, model)
            return
        entry = MODELS.get(model)
        if entry is None:
            self._send_json(
                404,
                {"error": {"message": f"The model `{model}` does not exist", "type": "invalid_request_error", "param": None, "code": "model_not_found"}},
            )
            return
        if "error" in entry:
            self._send_error(entry["error"], model)
            return

        completion_id = f"chatcmpl-mock-{model}-{int(time.time() * 1000)}"
        created = int(time.time())
        if not stream:
            self._send_json(
                200,
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": entry["response_model"],
                    "system_fingerprint": "fp_mock",
                    "service_tier": "default",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(entry["content"]),
                                "refusal": None,
                            },
                            "logprobs": None,
                            "finish_reason": entry["finish_reason"],
                        }
                    ],
                    "usage": _usage(entry),
                },
            )
            return

        # Streaming.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(choices: list, usage: dict | None = None) -> None:
            body = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": entry["response_model"],
                "system_fingerprint": "fp_mock",
                "service_tier": "default",
                "choices": choices,
            }
            if include_usage:
                body["usage"] = usage
            self.wfile.write(b"data: " + json.dumps(body).encode() + b"\n\n")
            self.wfile.flush()

        time.sleep(FIRST_CHUNK_DELAY_S)
        for n, piece in enumerate(entry["content"]):
            delta: dict[str, Any] = {"content": piece}
            if n == 0:
                delta["role"] = "assistant"
            chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
            time.sleep(CHUNK_DELAY_S)
        chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": entry["finish_reason"]}])
        if include_usage:
            chunk([], _usage(entry))
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class MockOpenAI:
    """Runs the mock in a background thread: ``with MockOpenAI() as m: m.base_url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.verbose = verbose  # type: ignore[attr-defined]
        self._httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self._httpd.requests = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="mock-openai", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._httpd.lock:  # type: ignore[attr-defined]
            return list(self._httpd.requests)  # type: ignore[attr-defined]

    def start(self) -> "MockOpenAI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "MockOpenAI":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    m = MockOpenAI(port=args.port, verbose=True).start()
    print(f"mock OpenAI listening on {m.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        m.stop()
