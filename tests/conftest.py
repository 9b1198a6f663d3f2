from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from support.procs import PierceProcess

StartPierce = Callable[..., Awaitable[PierceProcess]]


@pytest.fixture
async def pierce() -> AsyncIterator[StartPierce]:
    """Start real pierce processes; every one is stopped when the test ends, pass or fail."""
    started: list[PierceProcess] = []

    async def start(*args: str, env: dict[str, str] | None = None) -> PierceProcess:
        proc = await PierceProcess.start(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        await proc.stop()
