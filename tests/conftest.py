from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator

# Every event logged in tests (here and in the pierce processes they start) must be in the catalogue;
# set before anything imports pierce.logs.
os.environ["PIERCE_STRICT_EVENTS"] = "1"
# No process a test starts may fall back to the user's own state directory (pinned certificates, tokens):
# a default for the whole run, under a fresh temporary directory; tests that need their own set it.
if "PIERCE_STATE_DIR" not in os.environ:
    import tempfile

    os.environ["PIERCE_STATE_DIR"] = tempfile.mkdtemp(prefix="pierce-test-state-")

import pytest
from support.browser import browser_page  # noqa: F401  (a fixture for any test that opens a web page)
from support.procs import PierceProcess

StartPierce = Callable[..., Awaitable[PierceProcess]]

#: ``PIERCE_TEST_NO_SKIP=1`` (set by .ci/run): a skipped test fails the run, with the skip's reason, so a
#: missing tool or privilege cannot hide a test behind a green run.
NO_SKIP = os.environ.get("PIERCE_TEST_NO_SKIP", "") not in ("", "0")


def _no_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (NO_SKIP and report.skipped) or hasattr(report, "wasxfail"):  # an xfail is no skip
        return
    longrepr = report.longrepr
    reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped, and PIERCE_TEST_NO_SKIP=1 forbids skips: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None]:
    outcome = yield
    _no_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None]:
    """Module-level skips (``pytest.skip(allow_module_level=True)``, a module-level importorskip)."""
    outcome = yield
    _no_skip(outcome.get_result())


@pytest.fixture
async def pierce(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StartPierce]:
    """Start real pierce processes; every one is stopped when the test ends, pass or fail.

    Unless a test says otherwise, the processes of one test share a state directory of that test
    (never the user's own, which would keep certificates pinned by earlier tests).
    """
    started: list[PierceProcess] = []
    state = tmp_path_factory.mktemp("state")

    async def start(
        *args: str, env: dict[str, str] | None = None, json_logs: bool = True, prefix: tuple[str, ...] = ()
    ) -> PierceProcess:
        env = {"PIERCE_STATE_DIR": str(state), **(env or {})}
        proc = await PierceProcess.start(*args, env=env, json_logs=json_logs, prefix=prefix)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        await proc.stop()
