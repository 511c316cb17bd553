"""How busy the machine was while a benchmark ran (the machine itself is described by moe_base.machine, whose
``fingerprint`` every result stores: a number means little without the machine behind it)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class CpuContention:
    """How much CPU other processes used while we ran: /proc/stat busy time minus this process's own CPU time.

    A benchmark on a machine shared with, say, a training job is noisy; this turns "the machine was busy" into a
    number recorded with the results (0 = idle apart from us, 1 = every CPU busy with other work).
    """

    def __init__(self, stat: Path = Path("/proc/stat"), children: bool = False) -> None:
        self._stat, self._children = stat, children  # children: the CPU time of child processes waited for is ours
        self._start = self._sample()

    def _sample(self) -> tuple[float, float, float, int] | None:
        try:
            lines = self._stat.read_text().splitlines()
        except OSError:
            return None
        fields = [int(v) for v in lines[0].split()[1:]]
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:3]) + sum(fields[5:8])) / hz  # user nice system + irq softirq steal
        cpus = sum(1 for ln in lines[1:] if ln.startswith("cpu"))
        t = os.times()
        own = t.user + t.system + (t.children_user + t.children_system if self._children else 0.0)
        return time.monotonic(), busy, own, cpus

    def result(self) -> dict[str, Any] | None:
        """Fractions of the machine's CPU time since construction: used by others, and by this process."""
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, cpus = end[0] - self._start[0], end[3] or 1
        own = end[2] - self._start[2]
        others = max(0.0, (end[1] - self._start[1]) - own)
        return {"seconds": round(wall, 1), "logical_cpus": cpus, "own_cpu_fraction": round(own / (wall * cpus), 3),
                "other_processes_cpu_fraction": round(min(1.0, others / (wall * cpus)), 3)}


