"""A real headless Chromium for tests of pierce's web pages, driven by Playwright over the system's browser
(Debian's ``chromium``; Playwright's own browser download is never used).

The ``browser_page`` fixture yields a `BrowserPages`: ``await browser_page(url, auth=(user, password))``
opens ``url`` in a fresh browser context (its own cookies and credentials, HTTP basic auth answered when
``auth`` is given) and returns the Playwright `Page`; ``await browser_page.screenshot(page, name)`` saves
a PNG under ``$PIERCE_TEST_ARTIFACTS`` (default: the test's tmp_path). A script error on any page it
opened fails the test at teardown. Without a Chromium binary the test is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

#: Where to look for the browser: $PIERCE_CHROMIUM, else these names on PATH.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    given = os.environ.get("PIERCE_CHROMIUM")
    if given:
        return given
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def artifacts_dir(tmp_path: Path) -> Path:
    """``$PIERCE_TEST_ARTIFACTS`` (created when missing), else ``tmp_path``."""
    given = os.environ.get("PIERCE_TEST_ARTIFACTS")
    path = Path(given) if given else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


class BrowserPages:
    """Opens pages in one headless Chromium; see the module docstring."""

    def __init__(self, browser: Any, artifacts: Path, test_name: str) -> None:
        self.browser = browser
        self.artifacts = artifacts
        self._prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
        self._contexts: list[Any] = []
        #: Uncaught script errors of the pages opened, as "url: message".
        self.errors: list[str] = []

    async def __call__(
        self,
        url: str,
        *,
        auth: tuple[str, str] | None = None,
        width: int = 1280,
        height: int = 860,
        color_scheme: str = "light",
    ) -> Any:
        """A new page at ``url`` (loaded), in a context of its own."""
        context = await self.browser.new_context(
            http_credentials={"username": auth[0], "password": auth[1]} if auth else None,
            viewport={"width": width, "height": height},
            color_scheme=color_scheme,
        )
        self._contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        await page.goto(url)
        return page

    async def screenshot(self, page: Any, name: str, *, full_page: bool = True) -> Path:
        """Save ``page`` as ``<test>-<name>.png`` in the artifacts directory; returns the path."""
        path = self.artifacts / f"{self._prefix}-{name}.png"
        await page.screenshot(path=str(path), full_page=full_page)
        return path

    async def close(self) -> None:
        for context in self._contexts:
            await context.close()


@pytest.fixture
async def browser_page(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BrowserPages]:
    path = chromium_path()
    if path is None:
        pytest.skip(
            "no Chromium binary found (install the Debian package chromium, or set PIERCE_CHROMIUM to one)"
        )
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=["--disable-gpu"])
        pages = BrowserPages(browser, artifacts_dir(tmp_path), request.node.name)
        try:
            yield pages
        finally:
            await pages.close()
            await browser.close()
    assert not pages.errors, f"script errors on the pages: {pages.errors}"
