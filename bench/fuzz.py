#!/usr/bin/env python3
"""Fuzz every decoder that reads bytes from the network or a file, for a time budget.

    python3 bench/fuzz.py --target all --seconds 60
    python3 bench/fuzz.py --target stun --target sni --seconds 300

The targets are the harnesses of ``tests/support/fuzz_targets.py`` (the suite runs the same ones with
hypothesis and a bounded number of examples): frames, chunks, stun, http, sni, proxy_protocol, natpmp,
pcp, p2p_offer, mux, punch, datagrams, config, frp_import, known_hosts, pake_verifier. Each runs in a
process of its own, one after another, under atheris (libFuzzer, coverage-guided; ``pip install -e
'.[fuzz]'``), seeded with the target's valid inputs (and, for the config formats, generated documents)
and a dictionary of its keywords. Without atheris the command says so and runs the hypothesis engine
instead: the suite's strategies, generated without end for the same budget (no coverage feedback),
labelled ``hypothesis`` in the results.

A crash is any error but the module's own documented ones, or a broken bound (an assertion of the
harness). Each distinct crash (error type and the innermost pierce frame) is written to
``--crashes DIR/TARGET/`` as the input (``crash-SHA1``) and its traceback (``crash-SHA1.txt``); fuzzing
carries on after a crash. The exit status is 1 when any target crashed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

#: Generated documents added to the seed corpus of a target that has a structured generator.
STRUCTURED_SEEDS = 200
MAX_LEN = 16384


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


class Recorder:
    """Counts executions, keeps distinct crashes on disk, and ends the run when the budget is spent."""

    def __init__(self, target: str, engine: str, seconds: float, crashes: Path, stats: Path) -> None:
        self.target = target
        self.engine = engine
        self.seconds = seconds
        self.dir = crashes / target
        self.stats = stats
        self.start = time.monotonic()
        self.executions = 0
        self.crashes: dict[str, str] = {}
        self._next_stats = self.start

    def crashed(self, data: bytes, exc: BaseException) -> None:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if "/pierce/" in f.filename or "fuzz_targets" in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        key = f"{type(exc).__name__} at {where}"
        if key in self.crashes:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = "crash-" + hashlib.sha1(data).hexdigest()
        (self.dir / name).write_bytes(data)
        text = "".join(traceback.format_exception(exc))
        (self.dir / f"{name}.txt").write_text(f"{key}\ninput: {data[:200]!r}\n\n{text}")
        self.crashes[key] = str(self.dir / name)
        print(f"[{self.target}] crash: {key} -> {self.dir / name}", file=sys.stderr, flush=True)

    def tick(self) -> bool:
        """Count one execution; True once the budget is spent (stats are written then, and every 2 s)."""
        self.executions += 1
        if self.executions & 0xFF:
            return False
        now = time.monotonic()
        done = now - self.start >= self.seconds
        if done or now >= self._next_stats:
            self._next_stats = now + 2
            self.write()
        return done

    def write(self) -> None:
        elapsed = time.monotonic() - self.start
        stats = {
            "target": self.target,
            "engine": self.engine,
            "seconds": round(elapsed, 1),
            "executions": self.executions,
            "per_second": round(self.executions / elapsed) if elapsed else 0,
            "crashes": self.crashes,
        }
        self.stats.write_text(json.dumps(stats))


def run_child(args: argparse.Namespace) -> None:
    """One target in this process, until the budget is spent; then exit at once (libFuzzer never returns)."""
    recorder = Recorder(args.child, args.engine, args.seconds, Path(args.crashes), Path(args.stats))
    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["pierce", "support"]):
            from support import fuzz_targets

            target = fuzz_targets.TARGETS[args.child]
            seeds = target.seeds()
            for seed in seeds:  # imports (and so instruments) every module the harness reaches
                target.check(seed)
    else:
        from support import fuzz_targets

        target = fuzz_targets.TARGETS[args.child]
        seeds = target.seeds()

    def one(data: bytes) -> None:
        try:
            target.check(data)
        except Exception as exc:
            recorder.crashed(data, exc)
        if recorder.tick():
            recorder.write()
            os._exit(0)

    if args.engine == "atheris":
        import random

        work = Path(tempfile.mkdtemp(prefix=f"pierce-fuzz-{args.child}-"))
        corpus = work / "corpus"
        corpus.mkdir()
        rng = random.Random(0)
        extra = [target.structured(rng) for _ in range(STRUCTURED_SEEDS)] if target.structured else []
        for i, seed in enumerate([*seeds, *extra]):
            (corpus / f"seed-{i}").write_bytes(seed)
        argv = [
            sys.argv[0],
            str(corpus),
            f"-max_len={MAX_LEN}",
            "-rss_limit_mb=2048",
            "-timeout=20",
            f"-max_total_time={int(args.seconds) + 60}",
            f"-artifact_prefix={work}/",
            "-print_final_stats=0",
        ]
        words = fuzz_targets.tokens(target)
        if words:
            dictionary = work / "dict"
            dictionary.write_text("".join(f'"{_escape(w)}"\n' for w in words))
            argv.append(f"-dict={dictionary}")
        atheris.Setup(argv, one)
        atheris.Fuzz()
    else:
        from hypothesis import HealthCheck, Phase, given, settings

        @settings(
            max_examples=10**9,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(fuzz_targets.inputs(target))
        def loop(data: bytes) -> None:
            one(data)

        loop()
    recorder.write()


def _escape(word: bytes) -> str:
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in b'"\\' else f"\\x{b:02x}" for b in word)


def main() -> int:
    if "--child" in sys.argv:  # before anything imports pierce, so that atheris instruments it
        child = argparse.ArgumentParser()
        for option in ("--child", "--seconds", "--engine", "--crashes", "--stats"):
            child.add_argument(option, type=float if option == "--seconds" else str)
        run_child(child.parse_args())
        return 0
    from support.fuzz_targets import TARGETS

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", action="append", help=f"all, or one of: {', '.join(TARGETS)}")
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target (default 60)")
    parser.add_argument("--engine", choices=["atheris", "hypothesis"], help="default: atheris when installed")
    parser.add_argument(
        "--crashes", default="fuzz-crashes", help="where crashing inputs go (default ./fuzz-crashes)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    names = args.target or ["all"]
    if "all" in names:
        names = list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; targets: all, {', '.join(TARGETS)}")
    engine = args.engine or ("atheris" if have_atheris() else "hypothesis")
    if engine == "atheris" and not have_atheris():
        parser.error("atheris is not installed: pip install -e '.[fuzz]' (or --engine hypothesis)")
    if engine == "hypothesis" and not have_atheris():
        print(
            "atheris is not installed here: running the hypothesis engine instead (random generation from the"
            " suite's strategies, no coverage feedback)",
            file=sys.stderr,
        )
    results: list[dict[str, Any]] = []
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as stats:
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child", name,
                "--seconds", str(args.seconds),
                "--engine", engine,
                "--crashes", str(Path(args.crashes).resolve()),
                "--stats", stats.name,
            ]  # fmt: skip
            # libFuzzer's own banner and progress lines go to stderr; keep them out of the way.
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                result = json.loads(Path(stats.name).read_text())
            except (OSError, ValueError):
                result = {"target": name, "engine": engine, "seconds": 0, "executions": 0, "per_second": 0}
                result["crashes"] = {f"process ended with status {proc.returncode}": ""}
            if proc.returncode != 0 and not result["crashes"]:
                tail = proc.stderr.strip().splitlines()[-5:]
                result["crashes"] = {f"process ended with status {proc.returncode}: {' / '.join(tail)}": ""}
        results.append(result)
        if not args.json:
            found = ", ".join(result["crashes"]) or "none"
            print(
                f"{name:15} {result['engine']:10} {result['seconds']:7.1f} s"
                f" {result['executions']:>11,} execs {result['per_second']:>8,}/s  crashes: {found}",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
