"""A client whose run stops on an unexpected error (a bug, not a network failure) says so and exits
with a failure status, so a supervisor restarts it, instead of ending silently with status 0."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pierce.client import app
from pierce.config import ClientConfig

pytestmark = pytest.mark.asyncio


async def test_an_unexpected_error_is_logged_and_fails_the_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_run(self: app.Client) -> None:
        raise TypeError("Expected str, got bytes")  # the fault injected: what a bug looks like

    monkeypatch.setattr(app.Client, "run", broken_run)
    config = ClientConfig(server_addr="127.0.0.1", server_port=1, token="x" * 32, state_dir=str(tmp_path))
    with caplog.at_level(logging.ERROR, logger="pierce.client"):
        assert await app.run_client(config) == 1
    crashed = [r for r in caplog.records if getattr(r, "event", None) == "client.crashed"]
    assert len(crashed) == 1 and "Expected str, got bytes" in crashed[0].getMessage()
