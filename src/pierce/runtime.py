"""Process-level plumbing shared by every long-running command: event loop, limits, signals."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one: every relayed connection holds several fds."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
ALLOCATOR_THRESHOLD = 8 * 1024 * 1024


def tune_allocator() -> None:
    """Keep the per-read buffers of TLS and HTTP on the heap (glibc).

    Every TLS read in asyncio and uvloop allocates a 256 KiB buffer and frees it at once, and bulk
    transfers make megabyte-sized ones. With glibc's default thresholds such blocks are often mapped and
    unmapped, or the heap trimmed, per read: syscalls and page faults per record (a third of the HTTP
    proxy's request rate on a 2-CPU machine). Fixed 8 MiB thresholds keep them on the heap; the relay maps
    its own megabyte buffers directly (`pierce.relay`), so they still go back to the system when a
    transfer ends. Users' own ``MALLOC_*`` settings win.
    """
    if sys.platform != "linux" or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, ALLOCATOR_THRESHOLD)
    mallopt(_M_TRIM_THRESHOLD, ALLOCATOR_THRESHOLD)


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (glibc ``malloc_trim``; elsewhere nothing).

    The fixed thresholds above keep freed blocks on the heap, and a storm of short connections
    leaves it fragmented, so the process would keep the storm's peak for good. A few milliseconds.
    """
    if sys.platform != "linux":
        return
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed, on the standard loop otherwise."""
    raise_fd_limit()
    tune_allocator()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def wait_for_stop_signal() -> signal.Signals:
    """Return when SIGINT or SIGTERM arrives (Ctrl-C on Windows raises KeyboardInterrupt instead)."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[signal.Signals] = loop.create_future()
    signals = [signal.SIGINT, signal.SIGTERM]
    installed = []

    def on_signal(sig: signal.Signals) -> None:
        if not stopped.done():
            stopped.set_result(sig)

    for sig in signals:
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows
            pass
    try:
        if not installed and sys.platform == "win32":  # pragma: no cover
            await asyncio.Event().wait()
        return await stopped
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
