"""Timing two ways of doing the same job, side by side, as whole processes (the tools' A/B benchmarks).

The ways run in turn (A, B, then B, A, ...: a drift of the machine's speed hits both, and an after-effect of one way
on the next, such as the page cache or the heat it leaves, falls on each alike), after one untimed round that
warms the disk cache; each is summarised as its median with min and max, and the two compared pair by pair.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


# Runs one command and writes "wall_seconds peak_kib" to stdout. A child's peak resident memory as Linux reports it
# (ru_maxrss) includes the memory of the process it was spawned from (the parent's address space is its own until
# exec), so a large parent would floor every reading; this small process stands between.
_REAPER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t0
print(wall, usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_timed(commands: Sequence[Sequence[str]]) -> tuple[float, float]:
    """Run the commands one after another: their wall seconds together and the largest peak resident memory (MiB)
    of any of them, from the operating system's accounting (Linux). A failing command stops the benchmark with its
    error."""
    wall, peak = 0.0, 0.0
    for argv in commands:
        with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the child
            proc = subprocess.run([sys.executable, "-c", _REAPER, *argv], stdout=subprocess.PIPE, stderr=err)
            if proc.returncode:
                err.seek(0)
                raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                                 f"{err.read().decode(errors='replace')}")
        seconds, kib = proc.stdout.split()
        wall += float(seconds)
        peak = max(peak, int(kib) / 1024)
    return wall, peak


def run_count(text: str) -> int:
    """argparse type: --runs, the timed rounds of :func:`interleaved`, a whole number >= 0 (0: the untimed round
    alone, to compare outputs)."""
    from moe_denoise.commands import whole_number

    return whole_number(text, 0, None, "a number of runs >= 0")


def interleaved(ways: dict[str, Callable[[], T]], runs: int) -> dict[str, list[T]]:
    """Each way's results over ``runs`` timed rounds, the ways taking turns within a round, in reverse order every
    other round (in one order, B always ran right after A); one more round first, not kept."""
    if runs < 0:  # range(runs + 1) ran nothing, and the caller then compared outputs never written
        raise ValueError(f"runs must be >= 0 (0: the untimed round only), got {runs}")
    results: dict[str, list[T]] = {name: [] for name in ways}
    for run in range(runs + 1):
        order = list(ways.items())
        for name, way in order if run % 2 == 0 else reversed(order):
            result = way()
            if run:
                results[name].append(result)
    return results


def spread(values: Sequence[float], fmt: str = ".1f") -> str:
    """'median 21.1 (min 20.3, max 22.0)'."""
    return (f"median {statistics.median(values):{fmt}} (min {min(values):{fmt}}, max {max(values):{fmt}})")


def pairwise(numerators: Sequence[float], denominators: Sequence[float]) -> str:
    """The ratio of each timed round's two results, summarised: 'median 0.79 (min 0.76, max 0.80)'."""
    return spread([a / b for a, b in zip(numerators, denominators)], ".2f")
