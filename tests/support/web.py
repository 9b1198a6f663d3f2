"""curl, the real browser of the web-proxy tests."""

from __future__ import annotations

import asyncio


async def curl(*args: str) -> tuple[int, str, str]:
    """Run curl; returns (exit code, stdout, stderr)."""
    pipe = asyncio.subprocess.PIPE
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "30", *args, stdout=pipe, stderr=pipe
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")
