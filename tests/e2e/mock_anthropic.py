"""A tiny local stand-in for the Anthropic Messages API.

Only ``POST /v1/messages`` is implemented, which is all the e2e tests need. It
listens on 127.0.0.1 (port 0 by default) and never talks to the network.

Behaviour is driven by the request's ``model`` through the single table
``MODELS`` below; the tests import that table to know what token counts and
response model to expect, so no expected value is written down twice.

Token counts follow Anthropic's convention: the raw ``usage.input_tokens`` is
the *uncached* input only and EXCLUDES ``cache_read_input_tokens`` and
``cache_creation_input_tokens``; :func:`total_input_tokens` gives the
inclusive total that llmtrace's ``input_tokens`` column must hold.

* ``"stream": true`` answers with Server-Sent Events like the real API:
  ``message_start`` (with the input-side ``usage``), ``content_block_start``,
  ``ping``, one ``content_block_delta`` per piece of text,
  ``content_block_stop``, ``message_delta`` (``stop_reason`` and the output
  ``usage``) and ``message_stop``; a short delay comes before the first event
  so time-to-first-token is measurable;
* a model whose entry has ``"error"`` answers with that HTTP status and an
  Anthropic-style error body (``claude-rate-limited`` -> 429
  ``rate_limit_error``); the header ``x-mock-error: 429`` forces the same
  error for any model;
* prompt caching: the entries with ``"requires_cache_control": True`` are the
  cache-write and cache-read calls; they answer 400 unless some block of the
  request (system, message content or tool) carries ``cache_control``, so the
  app really sends a prompt-caching request.
* ids, as unkind as the real API's: every message gets its own id
  (``msg_01`` and 22 base62 characters, :func:`new_message_id`) and every
  answer its own ``request-id`` header (``req_01…``), also in error bodies; no
  two calls share one, however close together they come.

Run it alone with ``python mock_anthropic.py`` to poke at it by hand.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mock_http import MockHandler, MockServer, serve_until_interrupted, unique_token

# The one table of canned answers, keyed by request model. Token fields are
# exactly what the mock puts in ``usage`` (Anthropic semantics: input_tokens
# excludes the cache tokens).
MODELS: dict[str, dict[str, Any]] = {
    # Plain (non-streaming) message, no prompt caching: both cache fields are 0.
    "claude-opus-4-1": {
        "response_model": "claude-opus-4-1-20250805",
        "input_tokens": 31,
        "output_tokens": 12,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "stop_reason": "end_turn",
        "content": ["Hello", " from", " the", " mock", " Claude", "."],
    },
    # Prompt caching, first call: the long system prompt is WRITTEN to the cache.
    "claude-sonnet-4-5": {
        "response_model": "claude-sonnet-4-5-20250929",
        "input_tokens": 14,
        "output_tokens": 21,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 2051,
        "stop_reason": "end_turn",
        "content": ["Cached", " the", " system", " prompt", "."],
        "requires_cache_control": True,
    },
    # Prompt caching, second call: the same prefix is READ from the cache. The
    # same model under its dated name, only so that each call has its own
    # request model (the table's key).
    "claude-sonnet-4-5-20250929": {
        "response_model": "claude-sonnet-4-5-20250929",
        "input_tokens": 19,
        "output_tokens": 27,
        "cache_read_input_tokens": 2051,
        "cache_creation_input_tokens": 0,
        "stop_reason": "end_turn",
        "content": ["Read", " the", " system", " prompt", " from", " cache", "."],
        "requires_cache_control": True,
    },
    # Streaming message; also reads a little from the cache, so the streaming
    # code path's cache accounting is exercised too.
    "claude-haiku-4-5": {
        "response_model": "claude-haiku-4-5-20251001",
        "input_tokens": 42,
        "output_tokens": 17,
        "cache_read_input_tokens": 1024,
        "cache_creation_input_tokens": 0,
        "stop_reason": "end_turn",
        "content": ["Streaming", " tokens", " from", " the", " mock", " Claude", "."],
    },
    # A successful call to a model no price book knows: must stay unpriced.
    "acme-llm-unpriced-1": {
        "response_model": "acme-llm-unpriced-1-20990101",
        "input_tokens": 8,
        "output_tokens": 5,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "stop_reason": "max_tokens",
        "content": ["Not", " in", " any", " price", " book"],
    },
    # Always rate-limited.
    "claude-rate-limited": {
        "error": {
            "status": 429,
            "type": "rate_limit_error",
            "message": (
                "This request would exceed the rate limit for your organization of 1 "
                "requests per minute. (mock)"
            ),
        },
    },
}

PLAIN_MODEL = "claude-opus-4-1"
CACHE_WRITE_MODEL = "claude-sonnet-4-5"
CACHE_READ_MODEL = "claude-sonnet-4-5-20250929"
STREAM_MODEL = "claude-haiku-4-5"
UNPRICED_MODEL = "acme-llm-unpriced-1"
RATE_LIMITED_MODEL = "claude-rate-limited"

# ``usage.output_tokens`` in ``message_start`` (the real API reports a small
# count there too; ``message_delta`` then carries the cumulative total).
STREAM_START_OUTPUT_TOKENS = 1

# Delay before the first SSE event, so time-to-first-token is measurable.
FIRST_EVENT_DELAY_S = 0.15
# Delay between later SSE events.
EVENT_DELAY_S = 0.01

_RATE_LIMIT_ERROR = MODELS[RATE_LIMITED_MODEL]["error"]


def new_message_id() -> str:
    """A message id in the real API's shape, ``msg_01XFDUDYJgAACzvnptvVoYEL``, unique per call."""
    return "msg_01" + unique_token(22)


def total_input_tokens(entry: dict[str, Any]) -> int:
    """Input tokens inclusive of cache reads and writes (llmtrace's normalisation)."""
    return entry["input_tokens"] + entry["cache_read_input_tokens"] + entry["cache_creation_input_tokens"]


def _usage(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": entry["input_tokens"],
        "cache_creation_input_tokens": entry["cache_creation_input_tokens"],
        "cache_read_input_tokens": entry["cache_read_input_tokens"],
        "cache_creation": {
            "ephemeral_5m_input_tokens": entry["cache_creation_input_tokens"],
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": entry["output_tokens"],
        "service_tier": "standard",
    }


def _has_cache_control(req: dict[str, Any]) -> bool:
    def blocks(v: Any):
        if isinstance(v, list):
            for b in v:
                if isinstance(b, dict):
                    yield b

    if any("cache_control" in b for b in blocks(req.get("system"))):
        return True
    if any("cache_control" in b for b in blocks(req.get("tools"))):
        return True
    for msg in blocks(req.get("messages")):
        if any("cache_control" in b for b in blocks(msg.get("content"))):
            return True
    return False


class _Handler(MockHandler):
    server_version = "mock-anthropic/1.0"
    route = "/v1/messages"
    route_ignores_query = True

    # -- helpers -----------------------------------------------------------
    def new_request_id(self) -> str:
        return "req_01" + unique_token(22)

    def default_headers(self) -> dict[str, str]:
        return {"request-id": self.request_id}

    def send_client_error(self, status: int, message: str) -> None:
        err_type = "not_found_error" if status == 404 else "invalid_request_error"
        self._send_api_error(status, err_type, message)

    def _send_api_error(self, status: int, err_type: str, message: str, extra_headers=None) -> None:
        self.send_json(
            status,
            {"type": "error", "error": {"type": err_type, "message": message}, "request_id": self.request_id},
            extra_headers,
        )

    def _send_rate_limit(self, err: dict[str, Any]) -> None:
        self._send_api_error(
            err["status"],
            err["type"],
            err["message"],
            {
                "retry-after": "1",
                "anthropic-ratelimit-requests-limit": "1",
                "anthropic-ratelimit-requests-remaining": "0",
            },
        )

    # -- POST /v1/messages -------------------------------------------------
    def handle_api(self, req: dict[str, Any]) -> None:
        model = req.get("model", "")
        stream = bool(req.get("stream"))
        cache_control = _has_cache_control(req)
        self.record(model=model, stream=stream, cache_control=cache_control)

        if self.headers.get("x-mock-error") == "429":
            self._send_rate_limit(_RATE_LIMIT_ERROR)
            return
        entry = MODELS.get(model)
        if entry is None:
            self._send_api_error(404, "not_found_error", f"model: {model}")
            return
        if "error" in entry:
            self._send_rate_limit(entry["error"])
            return
        if entry.get("requires_cache_control") and not cache_control:
            self._send_api_error(
                400, "invalid_request_error", f"mock: {model} is a prompt-caching call; send a cache_control block"
            )
            return

        msg_id = new_message_id()
        if not stream:
            self.send_json(
                200,
                {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": entry["response_model"],
                    "content": [{"type": "text", "text": "".join(entry["content"])}],
                    "stop_reason": entry["stop_reason"],
                    "stop_sequence": None,
                    "usage": _usage(entry),
                },
            )
            return

        # Streaming.
        self.start_sse()

        def event(name: str, body: dict[str, Any]) -> None:
            self.write_sse(f"event: {name}\ndata: {json.dumps(body)}\n\n".encode())

        start_usage = _usage(entry)
        start_usage["output_tokens"] = STREAM_START_OUTPUT_TOKENS
        time.sleep(FIRST_EVENT_DELAY_S)
        event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": entry["response_model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        event("ping", {"type": "ping"})
        for piece in entry["content"]:
            event(
                "content_block_delta",
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
            )
            time.sleep(EVENT_DELAY_S)
        event("content_block_stop", {"type": "content_block_stop", "index": 0})
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": entry["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": entry["output_tokens"]},
            },
        )
        event("message_stop", {"type": "message_stop"})


class MockAnthropic(MockServer):
    """Runs the mock in a background thread: ``with MockAnthropic() as m: m.base_url``."""

    handler = _Handler
    thread_name = "mock-anthropic"
    # The Anthropic SDK appends /v1/messages itself.
    base_path = ""


if __name__ == "__main__":
    serve_until_interrupted(MockAnthropic, __doc__, "Anthropic")
