"""The client's request inspector in a real headless Chromium: a real server and client, a local service
that counts what it is asked; a request made through the public vhost appears on the open page (no reload),
its details show its headers and body, and the page's Replay button sends it to the service again, which
the page then lists as a replay. Screenshots go to ``$PIERCE_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from helpers.http_services import web_service
from support.web import http_proxy, inspected_client, vhost_server

pytestmark = pytest.mark.browser

NAS = "nas.example.com"

#: Milliseconds the page may take to show what its poll (one a second) finds.
SHOWN_MS = 15_000


async def test_inspector_page_shows_and_replays_a_request(pierce, tmp_path: Path, browser_page) -> None:
    async with web_service("nas") as (service, seen):
        _, control, port = await vhost_server(pierce, tmp_path)
        admin, auth = await inspected_client(
            pierce, tmp_path, control, [http_proxy("nas", service, custom_domains=[NAS])]
        )
        token = auth["Authorization"].removeprefix("Bearer ")
        page = await browser_page(f"http://127.0.0.1:{admin}/inspect", auth=("admin", token))
        await page.wait_for_selector("#empty", state="visible")
        marker = await page.evaluate("() => (window.__kept = Math.random())")

        async with aiohttp.ClientSession() as http:
            headers = {"Host": NAS, "X-Test": "from-the-browser-test"}
            async with http.get(f"http://127.0.0.1:{port}/hello?n=1", headers=headers) as response:
                assert response.status == 200
                await response.read()
        assert len(seen.requests) == 1

        row = page.locator('tr.request[data-proxy="nas"]')
        await row.first.wait_for(timeout=SHOWN_MS)
        assert await row.count() == 1
        text = await row.first.inner_text()
        assert "GET" in text and "/hello?n=1" in text and "200" in text, text

        # Its details: the request's own header, the service's answer.
        await row.first.click()
        await page.wait_for_selector("#detail:not([hidden])", timeout=SHOWN_MS)
        assert "from-the-browser-test" in await page.inner_text("#request-headers")
        assert "/hello?n=1" in json.loads(await page.inner_text("#response-body"))["path"]
        await browser_page.screenshot(page, "request")

        # Replay from the page: the service is asked again and the page lists the replay.
        await row.first.locator("button.replay").click()
        replayed = page.locator('tr.request.replayed[data-proxy="nas"]')
        await replayed.first.wait_for(timeout=SHOWN_MS)
        assert len(seen.requests) == 2
        assert seen.requests[-1]["path"] == "/hello?n=1"
        assert await page.locator("tr.request").count() == 2
        await browser_page.screenshot(page, "replayed")
        assert await page.evaluate("() => window.__kept") == marker  # the same page all along
