"""Shared fixtures and failure reporting for the llmtrace e2e tests."""

from __future__ import annotations

import json

import pytest

# harness holds assertions shared by the test modules; keep pytest's detailed messages for them.
pytest.register_assert_rewrite("harness")

from mock_anthropic import MockAnthropic
from mock_openai import MockOpenAI


@pytest.fixture(scope="session")
def mock_openai_server():
    with MockOpenAI() as server:
        yield server


@pytest.fixture(scope="session")
def mock_anthropic_server():
    with MockAnthropic() as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed test, attach llmtrace's log and what the app sent to the report."""
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        lt = getattr(value, "llmtrace", None)
        if lt is not None:
            rep.sections.append((f"llmtrace log ({lt.log_path})", lt.log_tail(200)))
        app = getattr(value, "app", None)
        if isinstance(app, dict):
            shown = {k: v for k, v in app.items() if k != "stderr"}
            rep.sections.append(("app output (spans as sent)", json.dumps(shown, indent=1, default=str)))
            if app.get("stderr"):
                rep.sections.append(("app stderr", app["stderr"][-4000:]))
