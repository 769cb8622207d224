"""The mock providers give every answer its own ids, as the real APIs do.

llmtrace counts two LLM spans with the same response id and overlapping times as one call,
whatever trace they are in, so a mock that handed two calls the same id (say, ids made from
the clock's milliseconds) would make the e2e suite see calls merged that never were one.
Here many calls hit each mock at the same moment, streamed and not, succeeding and
rate-limited: no two may share a response id or a request id, and the ids have the
providers' real shapes.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import mock_anthropic
import mock_openai

CALLS_PER_KIND = 40
# Calls in flight at once (the mocks' listen backlog is small).
CONCURRENCY = 8

ANTHROPIC_MESSAGE_ID = re.compile(r"^msg_01[0-9A-Za-z]{22}$")
ANTHROPIC_REQUEST_ID = re.compile(r"^req_01[0-9A-Za-z]{22}$")
OPENAI_COMPLETION_ID = re.compile(r"^chatcmpl-[0-9A-Za-z]{29}$")
OPENAI_REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def sse_data(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for line in raw.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


def all_at_once(fn, bodies: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        return list(pool.map(fn, bodies))


def test_anthropic_mock_ids_are_unique_per_call(mock_anthropic_server):
    url = f"{mock_anthropic_server.base_url}/v1/messages"
    msgs = [{"role": "user", "content": "hi"}]
    plain = {"model": mock_anthropic.PLAIN_MODEL, "max_tokens": 16, "messages": msgs}
    stream = {"model": mock_anthropic.STREAM_MODEL, "max_tokens": 16, "messages": msgs, "stream": True}
    limited = {"model": mock_anthropic.RATE_LIMITED_MODEL, "max_tokens": 16, "messages": msgs}
    answers = all_at_once(lambda b: post(url, b), [plain, stream, limited] * CALLS_PER_KIND)

    message_ids, request_ids = [], []
    for status, headers, raw in answers:
        request_ids.append(headers.get("request-id"))
        if status == 429:
            assert json.loads(raw)["request_id"] == headers.get("request-id")
        elif headers.get("content-type") == "text/event-stream":
            starts = [e for e in sse_data(raw) if e["type"] == "message_start"]
            message_ids.append(starts[0]["message"]["id"])
        else:
            assert status == 200, raw
            message_ids.append(json.loads(raw)["id"])

    assert len(message_ids) == 2 * CALLS_PER_KIND
    assert all(ANTHROPIC_MESSAGE_ID.match(i) for i in message_ids), message_ids
    assert len(set(message_ids)) == len(message_ids), "two messages share an id"
    assert len(request_ids) == 3 * CALLS_PER_KIND
    assert all(ANTHROPIC_REQUEST_ID.match(i or "") for i in request_ids), request_ids
    assert len(set(request_ids)) == len(request_ids), "two answers share a request-id"


def test_openai_mock_ids_are_unique_per_call(mock_openai_server):
    url = f"{mock_openai_server.base_url}/chat/completions"
    msgs = [{"role": "user", "content": "hi"}]
    plain = {"model": mock_openai.PLAIN_MODEL, "messages": msgs}
    stream = {"model": mock_openai.STREAM_MODEL, "messages": msgs, "stream": True,
              "stream_options": {"include_usage": True}}
    limited = {"model": mock_openai.RATE_LIMITED_MODEL, "messages": msgs}
    answers = all_at_once(lambda b: post(url, b), [plain, stream, limited] * CALLS_PER_KIND)

    completion_ids, request_ids = [], []
    for status, headers, raw in answers:
        request_ids.append(headers.get("x-request-id"))
        if status == 429:
            continue
        if headers.get("content-type") == "text/event-stream":
            chunk_ids = {c["id"] for c in sse_data(raw)}
            assert len(chunk_ids) == 1, "the chunks of one stream carry one id"
            completion_ids.append(chunk_ids.pop())
        else:
            assert status == 200, raw
            completion_ids.append(json.loads(raw)["id"])

    assert len(completion_ids) == 2 * CALLS_PER_KIND
    assert all(OPENAI_COMPLETION_ID.match(i) for i in completion_ids), completion_ids
    assert len(set(completion_ids)) == len(completion_ids), "two completions share an id"
    assert len(request_ids) == 3 * CALLS_PER_KIND
    assert all(OPENAI_REQUEST_ID.match(i or "") for i in request_ids), request_ids
    assert len(set(request_ids)) == len(request_ids), "two answers share an x-request-id"
