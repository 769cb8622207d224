"""The HTTP scaffolding the mock API servers share (``mock_openai``, ``mock_anthropic``).

A mock is a :class:`MockHandler` subclass, which answers the one JSON ``POST``
route it serves, and a :class:`MockServer` subclass, which runs it in a
background thread on 127.0.0.1 and remembers what each request asked for.
Every request gets a new :attr:`MockHandler.request_id`, and :func:`unique_token`
makes the random part of the ids the mocks hand out, so that no two calls ever
share a response or request id (real providers' ids are unique per call).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def unique_token(length: int) -> str:
    """``length`` random base62 characters (from the OS's CSPRNG, ~5.95 bits each): with the
    lengths the mocks use (22 and more, over 130 bits) unique per call, as real providers'
    response and request ids are."""
    return "".join(secrets.choice(_BASE62) for _ in range(length))


class MockHandler(BaseHTTPRequestHandler):
    """Base request handler: ``GET /`` and ``/healthz`` answer ``{"ok": true}``;
    ``POST`` to :attr:`route` with a JSON body goes to :meth:`handle_api`."""

    # HTTP/1.1 with explicit Content-Length for JSON and Connection: close for
    # SSE keeps both httpx and curl happy.
    protocol_version = "HTTP/1.1"
    # The one POST path served (without a trailing slash).
    route = ""
    # Whether a query string is ignored when matching ``route``.
    route_ignores_query = False
    # The id of the request being answered: a new one for every request (keep-alive
    # connections share a handler), made by :meth:`new_request_id`.
    request_id = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:  # type: ignore[attr-defined]
            super().log_message(format, *args)

    # -- to be provided by each mock ----------------------------------------
    def handle_api(self, req: dict[str, Any]) -> None:
        """Answers a parsed ``POST`` to :attr:`route`."""
        raise NotImplementedError

    def send_client_error(self, status: int, message: str) -> None:
        """Answers an unknown path (404) or an unparsable body (400) in the API's error format."""
        raise NotImplementedError

    def new_request_id(self) -> str:
        """A request id in the provider's shape, unique per request."""
        raise NotImplementedError

    def default_headers(self) -> dict[str, str]:
        """Headers sent on every JSON and SSE answer, after the content headers."""
        return {}

    # -- helpers -------------------------------------------------------------
    def send_json(self, status: int, body: dict[str, Any], extra_headers=None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**self.default_headers(), **(extra_headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_sse(self) -> None:
        """Sends the headers of a Server-Sent Events answer; the connection closes after it."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for k, v in self.default_headers().items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True

    def write_sse(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def record(self, **request: Any) -> None:
        """Remembers what a request asked for (``MockServer.requests``)."""
        with self.server.lock:  # type: ignore[attr-defined]
            self.server.requests.append(request)  # type: ignore[attr-defined]

    # -- routes --------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802
        self.request_id = self.new_request_id()
        if self.path in ("/healthz", "/"):
            self.send_json(200, {"ok": True})
        else:
            self.send_client_error(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        self.request_id = self.new_request_id()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0] if self.route_ignores_query else self.path
        if path.rstrip("/") != self.route:
            self.send_client_error(404, f"unknown path {self.path}")
            return
        try:
            req = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self.send_client_error(400, "bad json")
            return
        self.handle_api(req)


class MockServer:
    """Runs :attr:`handler` in a background thread: ``with MockX() as m: m.base_url``."""

    handler: type[MockHandler]
    thread_name = "mock"
    # Appended to ``http://127.0.0.1:PORT`` to make ``base_url``.
    base_path = ""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, verbose: bool = False):
        self._httpd = ThreadingHTTPServer((host, port), self.handler)
        self._httpd.daemon_threads = True
        self._httpd.verbose = verbose  # type: ignore[attr-defined]
        self._httpd.lock = threading.Lock()  # type: ignore[attr-defined]
        self._httpd.requests = []  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=self.thread_name, daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.base_path}"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._httpd.lock:  # type: ignore[attr-defined]
            return list(self._httpd.requests)  # type: ignore[attr-defined]

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_until_interrupted(server_cls: type[MockServer], doc: str, label: str) -> None:
    """``python mock_x.py [--port N]``: runs the mock in the foreground, logging requests."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    m = server_cls(port=args.port, verbose=True).start()
    print(f"mock {label} listening on {m.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        m.stop()
