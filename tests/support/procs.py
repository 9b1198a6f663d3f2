"""Real `pierce` processes for tests: start, read their JSON log events, stop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

Event = dict[str, Any]

#: Environment that makes a pierce process report every module it imports (`PierceProcess.imported`).
IMPORT_TIME = {"PYTHONPROFILEIMPORTTIME": "1"}


class PierceProcess:
    """A running ``python -m pierce --json-logs ...``; its stderr events are collected as they come
    (started with ``json_logs=False``: its plain log lines, in `other_lines`)."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str]) -> None:
        self.proc = proc
        self.argv = argv
        self.events: list[Event] = []
        self.other_lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls,
        *args: str,
        env: dict[str, str] | None = None,
        json_logs: bool = True,
        prefix: tuple[str, ...] = (),
    ) -> PierceProcess:
        """``prefix``: a command the process runs under (``prlimit --nofile=64:64 --``, ...)."""
        argv = [*prefix, sys.executable, "-m", "pierce", *(["--json-logs"] if json_logs else []), *args]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        return cls(proc, argv)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            text = line.decode(errors="replace").rstrip("\n")
            async with self._changed:
                try:
                    doc = json.loads(text)
                except ValueError:
                    self.other_lines.append(text)
                else:
                    if isinstance(doc, dict):
                        self.events.append(doc)
                    else:
                        self.other_lines.append(text)
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def matching(self, name: str, pred: Callable[[Event], bool] | None = None) -> list[Event]:
        return [e for e in self.events if e.get("event") == name and (pred is None or pred(e))]

    async def wait_event(
        self, name: str, pred: Callable[[Event], bool] | None = None, *, count: int = 1, timeout: float = 15
    ) -> list[Event]:
        """Wait until ``count`` events named ``name`` (matching ``pred``) have been logged."""

        def ready() -> bool:
            return len(self.matching(name, pred)) >= count or self._reader.done()

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(ready)
        found = self.matching(name, pred)
        if len(found) < count:
            raise AssertionError(
                f"process exited (rc={self.proc.returncode}) before {count} {name!r} events; "
                f"events={self.events[-20:]} other={self.other_lines[-20:]}"
            )
        return found

    async def wait_until(self, ready: Callable[[], bool], *, timeout: float = 15) -> None:
        """Wait until ``ready()`` (called each time an event or line comes) is true."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: ready() or self._reader.done())
        if not ready():
            raise AssertionError(
                f"process exited (rc={self.proc.returncode}); events={self.events[-20:]} "
                f"other={self.other_lines[-20:]}"
            )

    async def wait_line(self, pred: Callable[[str], bool], *, timeout: float = 15) -> str:
        """Wait for a line that is not a JSON event (a plain log line) matching ``pred``."""

        def found() -> str | None:
            return next((line for line in self.other_lines if pred(line)), None)

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: found() is not None or self._reader.done())
        line = found()
        if line is None:
            raise AssertionError(
                f"process exited (rc={self.proc.returncode}); lines={self.other_lines[-20:]}"
            )
        return line

    async def listening(self, count: int = 1) -> list[str]:
        """The bound addresses of the first ``count`` map rules, in order."""
        return [e["listen"] for e in await self.wait_event("map.listening", count=count)]

    async def wait_exit(self, timeout: float = 15) -> int:
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
            await self._reader
        return rc

    async def stop(self) -> int | None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        return self.proc.returncode

    def imported(self) -> set[str]:
        """The modules the process has imported so far, when it was started with
        ``PYTHONPROFILEIMPORTTIME=1`` (`IMPORT_TIME`): CPython writes an ``import time:`` line to stderr
        for each module as it is first imported."""
        names = set()
        for line in self.other_lines:
            if line.startswith("import time:"):
                name = line.rpartition("|")[2].strip()
                if name != "imported package":  # the header line
                    names.add(name)
        return names

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))


def host_port(text: str) -> tuple[str, int]:
    """'127.0.0.1:80' / '[::1]:80' -> (host, port)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def pierce_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``python -m pierce ARGS`` to completion (``env`` on top of this process's environment):
    (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pierce",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
