"""The server's dashboard in a real headless Chromium: a real `pierce server` with ``[web]`` behind HTTP basic
auth, a real client whose proxy appears on the open page, and a transfer whose bytes move the page's
counters and its chart, all without a reload. Screenshots go to ``$PIERCE_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.dashboard import WEB_PASSWORD, WEB_USER, start_proxies, start_web_server, tcp_proxy
from support.streams import CHUNK, tcp_server

from pierce import __version__

pytestmark = pytest.mark.browser

#: Milliseconds the page may take to show what a state event (one every 2 s) carries.
SHOWN_MS = 15_000


async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A service that reads everything and answers nothing."""
    with contextlib.suppress(ConnectionError):
        while await reader.read(CHUNK):
            pass
    writer.close()


@pytest.fixture
async def service() -> AsyncIterator[str]:
    async with tcp_server(sink) as addr:
        yield addr


async def send_until(port: int, stop: asyncio.Event) -> int:
    """Send bytes through the proxy at ``port`` until ``stop``; how many were sent."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    chunk = bytes(64 * 1024)
    sent = 0
    while not stop.is_set():
        writer.write(chunk)
        await writer.drain()
        sent += len(chunk)
        await asyncio.sleep(0.05)  # a steady trickle, so the transfer outlasts a few state events
    writer.close()
    return sent


async def value(page: Any, selector: str) -> int:
    return int(await page.get_attribute(selector, "data-value"))


async def grows(page: Any, selector: str, above: int) -> int:
    """Wait until ``selector``'s data-value exceeds ``above``; returns the new value."""
    await page.wait_for_function(
        "([sel, above]) => Number(document.querySelector(sel)?.dataset.value) > above",
        arg=[selector, above],
        timeout=SHOWN_MS,
    )
    return await value(page, selector)


async def test_dashboard_shows_a_proxy_and_its_traffic_live(
    pierce, tmp_path: Path, service: str, browser_page
) -> None:
    _, port, base = await start_web_server(pierce, tmp_path, user=WEB_USER, password=WEB_PASSWORD)

    # Without the credentials the browser gets 401 and no page.
    stranger = await browser_page("about:blank")
    assert (await stranger.request.get(base + "/")).status == 401

    page = await browser_page(base + "/", auth=(WEB_USER, WEB_PASSWORD))
    await page.wait_for_selector("#status[data-state=live]", timeout=SHOWN_MS)
    assert await page.is_visible("#empty-proxies")
    assert await page.text_content("#version") == __version__
    await page.evaluate("window.pierceTestMark = 1")  # gone if the page reloads

    client, ports = await start_proxies(pierce, tmp_path, port, [tcp_proxy("watched", service)])
    row = "tr.proxy[data-proxy=watched]"
    await page.wait_for_selector(f".proxy-group[data-type=tcp] {row}[data-status=online]", timeout=SHOWN_MS)
    assert await page.text_content(f"{row} td.urls") == f"port {ports['watched']}"
    assert await page.is_hidden("#empty-proxies")
    await page.wait_for_selector("tr.client[data-client-id=web-test]", timeout=SHOWN_MS)
    client_row = "tr.client[data-client-id=web-test]"
    assert await page.text_content(f"{client_row} td.version") == __version__
    assert await page.text_content(f"{client_row} td.path") == "relay"
    assert await page.text_content(f"{client_row} td.proxies") == "watched"
    assert await page.text_content("#total-clients") == "1"

    # A transfer runs: the counter moves, twice, while it is still running.
    stop = asyncio.Event()
    transfer = asyncio.ensure_future(send_until(ports["watched"], stop))
    try:
        first = await grows(page, f"{row} td.bytes-in", 0)
        second = await grows(page, f"{row} td.bytes-in", first)
        assert not transfer.done()
        assert await grows(page, "#total-in", 0) >= second
        await page.wait_for_selector(f"{row} .rate .in:not(:empty)", timeout=SHOWN_MS)
    finally:
        stop.set()
        sent = await transfer
    assert second <= sent

    # The chart shows the traffic: the selected proxy's, and the row's sparkline.
    await page.wait_for_selector("#traffic:not([hidden]) #chart[data-proxy=watched]", timeout=SHOWN_MS)
    await page.wait_for_function(
        "() => Number(document.querySelector('#chart').dataset.points) > 0 && "
        "Number(document.querySelector('tr.proxy[data-proxy=watched] svg.spark').dataset.points) > 0",
        timeout=SHOWN_MS,
    )
    assert await page.get_attribute("#chart path.line-in", "d")
    await page.click("#chart-range button[data-range='60']")
    assert await page.get_attribute("#chart-range button[data-range='60']", "aria-pressed") == "true"
    assert int(await page.get_attribute("#chart", "data-points")) > 0
    assert await page.evaluate("window.pierceTestMark") == 1  # never reloaded
    await browser_page.screenshot(page, "dashboard")

    # The same page at a phone's width, in the dark: nothing wider than the screen.
    narrow = await browser_page(base + "/", auth=(WEB_USER, WEB_PASSWORD), width=390, color_scheme="dark")
    await narrow.wait_for_selector(f"{row} td.bytes-in", timeout=SHOWN_MS)
    assert await narrow.evaluate("document.documentElement.scrollWidth") <= 390
    # This page opened after the transfer: its chart has the traffic from the history the server keeps.
    await narrow.wait_for_function(
        "() => Number(document.querySelector('tr.proxy[data-proxy=watched] svg.spark').dataset.points) > 0",
        timeout=SHOWN_MS,
    )
    await browser_page.screenshot(narrow, "dashboard-narrow-dark")

    # The client leaves: its proxy stays listed, offline, and the client row goes.
    await client.stop()
    await page.wait_for_selector(f"{row}[data-status=offline]", timeout=SHOWN_MS)
    await page.wait_for_selector(client_row, state="detached", timeout=SHOWN_MS)
    assert await page.is_visible("#empty-clients")
    assert await page.evaluate("window.pierceTestMark") == 1
