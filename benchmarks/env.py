"""The environment fingerprint stored with every result: a number means little without the machine behind it.

CPU model and flags from /proc/cpuinfo, usable cores, load average (a busy machine gives noisy numbers), thread
settings, library versions, and the GPU with its clocks when there is one.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LIBRARIES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime_extensions", "triton", "tensorrt", "matplotlib")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, logical CPUs, usable cores (affinity) and the SIMD flags that decide GEMM speed."""
    model: str | None = None
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model is None:  # x86 / ARM spelling
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    simd = sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                               "amx_bf16", "neon", "asimd", "sve"})
    return {"model": model, "logical_cpus": os.cpu_count(), "usable_cores": usable, "simd": simd,
            "machine": platform.machine()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class CpuContention:
    """How much CPU other processes used while we ran: /proc/stat busy time minus this process's own CPU time.

    A benchmark on a machine shared with, say, a training job is noisy; this turns "the machine was busy" into a
    number recorded with the results (0 = idle apart from us, 1 = every CPU busy with other work).
    """

    def __init__(self, stat: Path = Path("/proc/stat")) -> None:
        self._stat = stat
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
        return time.monotonic(), busy, t.user + t.system, cpus

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


def library_versions() -> dict[str, str | None]:
    """Installed versions (None when not importable). Imports are the ones the benchmark needs anyway."""
    from runtime._optional import available

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for mod in LIBRARIES:
        ok, ver = available(mod)
        out[mod] = ver if ok else None
    return out


def gpu_info() -> dict[str, Any] | None:
    """GPU name, memory, compute capability and current / max clocks, or None without a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    info: dict[str, Any] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                            "memory_gib": round(p.total_memory / 2**30, 1), "count": torch.cuda.device_count(),
                            "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    info.update(nvidia_smi())
    return info


def nvidia_smi(timeout_s: float = 10.0) -> dict[str, Any]:
    """Clocks, power limit and driver from nvidia-smi (absent tool or failure: an explanatory note)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {"clocks_note": "nvidia-smi not found; clocks not recorded"}
    fields = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit",
              "persistence_mode", "temperature.gpu")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=timeout_s, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return {"clocks_note": f"nvidia-smi failed: {e}"}
    values = [v.strip() for v in out.split(",")]
    if len(values) != len(fields):
        return {"clocks_note": f"unexpected nvidia-smi output {out!r}"}
    return {"nvidia_smi": dict(zip(fields, values))}


def fingerprint(threads: int | None = None) -> dict[str, Any]:
    """Everything about this machine that a benchmark number depends on."""
    thread_info: dict[str, Any] = {"requested": threads,
                                   "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    try:
        import torch

        thread_info.update(torch_intra_op=torch.get_num_threads(), torch_inter_op=torch.get_num_interop_threads())
    except ImportError:
        pass
    return {"platform": platform.platform(), "cpu": cpu_info(), "load_average_start": load_average(),
            "threads": thread_info, "libraries": library_versions(), "gpu": gpu_info()}
