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
* ids, as unkind as the real API's: every completion gets its own id
  (``chatcmpl-`` and 29 base62 characters, :func:`new_completion_id`) and
  every answer its own ``x-request-id`` header (``req_`` and 32 hex digits);
  no two calls share one, however close together they come.

Run it alone with ``python mock_openai.py`` to poke at it by hand.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from mock_http import MockHandler, MockServer, serve_until_interrupted, unique_token

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


def new_completion_id() -> str:
    """A completion id in the real API's shape, ``chatcmpl-CQ7fN2kYd8LrTz4wPb1XsVh9mEa3u``,
    unique per call."""
    return "chatcmpl-" + unique_token(29)


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


class _Handler(MockHandler):
    server_version = "mock-openai/1.0"
    route = "/v1/chat/completions"

    # -- helpers -----------------------------------------------------------
    def new_request_id(self) -> str:
        return "req_" + uuid.uuid4().hex

    def default_headers(self) -> dict[str, str]:
        return {"x-request-id": self.request_id}

    def send_client_error(self, status: int, message: str, code: str | None = None) -> None:
        self.send_json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})

    def _send_error(self, err: dict[str, Any]) -> None:
        self.send_json(
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
                "retry-after": "1",
                "x-ratelimit-limit-requests": "1",
                "x-ratelimit-remaining-requests": "0",
            },
        )

    # -- POST /v1/chat/completions -----------------------------------------
    def handle_api(self, req: dict[str, Any]) -> None:
        model = req.get("model", "")
        stream = bool(req.get("stream"))
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        self.record(model=model, stream=stream, include_usage=include_usage)

        forced = self.headers.get("x-mock-error")
        if forced == "429":
            self._send_error(_RATE_LIMIT_ERROR)
            return
        entry = MODELS.get(model)
        if entry is None:
            self.send_client_error(404, f"The model `{model}` does not exist", "model_not_found")
            return
        if "error" in entry:
            self._send_error(entry["error"])
            return

        completion_id = new_completion_id()
        created = int(time.time())
        if not stream:
            self.send_json(
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
        self.start_sse()

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
            self.write_sse(b"data: " + json.dumps(body).encode() + b"\n\n")

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
        self.write_sse(b"data: [DONE]\n\n")


class MockOpenAI(MockServer):
    """Runs the mock in a background thread: ``with MockOpenAI() as m: m.base_url``."""

    handler = _Handler
    thread_name = "mock-openai"
    base_path = "/v1"


if __name__ == "__main__":
    serve_until_interrupted(MockOpenAI, __doc__, "OpenAI")
