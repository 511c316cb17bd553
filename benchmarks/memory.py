"""Peak memory during a stretch of work, without psutil.

Host: Linux keeps the process's peak resident set (``VmHWM`` in /proc/self/status) and lets the process reset it
by writing "5" to /proc/self/clear_refs, so the peak of each timed cell can be read on its own. Where that is not
possible (not Linux, /proc read-only) the lifetime peak from ``resource.getrusage`` is reported and marked so.

GPU: torch's allocator peak (``torch.cuda.max_memory_allocated``, reset per cell), which covers PyTorch backends,
plus the device-wide used memory (``torch.cuda.mem_get_info``), which also sees ONNX Runtime's and TensorRT's own
allocations.
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path
from typing import Any, Protocol

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


class MemoryProbe(Protocol):
    """``reset()`` starts a measurement window; ``read()`` returns the peaks (MiB) seen since."""

    def reset(self) -> None: ...

    def read(self) -> dict[str, Any]: ...


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_rss_mb() -> float | None:
    """Resident set size now, MiB (None where /proc is unavailable)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def lifetime_peak_rss_mb() -> float:
    """Peak resident set size of the whole process so far, MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


class RssProbe:
    """Peak host RSS per window via VmHWM + clear_refs; falls back to the lifetime peak (``windowed`` False)."""

    def __init__(self) -> None:
        self.windowed = self._try_reset()
        self._start_rss: float | None = None

    @staticmethod
    def _try_reset() -> bool:
        if _status_kib("VmHWM") is None:
            return False
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def reset(self) -> None:
        if self.windowed:
            self.windowed = self._try_reset()
        self._start_rss = current_rss_mb()

    def read(self) -> dict[str, Any]:
        hwm = _status_kib("VmHWM") if self.windowed else None
        peak = hwm / 1024 if hwm is not None else lifetime_peak_rss_mb()
        delta = peak - self._start_rss if (self.windowed and self._start_rss is not None) else None
        return {"peak_rss_mb": round(peak, 1), "peak_rss_delta_mb": None if delta is None else round(delta, 1),
                "rss_window": "cell" if self.windowed else "process lifetime"}


class CudaMemoryProbe:
    """torch allocator peak and device-wide used memory on one CUDA device, plus the host RSS probe."""

    def __init__(self, device: str = "cuda", torch_module: Any = None) -> None:
        if torch_module is None:
            import torch as torch_module
        self._torch = torch_module
        self._device = torch_module.device(device)
        self._host = RssProbe()
        self._used_start = 0.0
        self._used_peak = 0.0

    def _used_mb(self) -> float:
        free, total = self._torch.cuda.mem_get_info(self._device)
        return (total - free) / 2**20

    def reset(self) -> None:
        self._host.reset()
        self._torch.cuda.synchronize(self._device)
        self._torch.cuda.reset_peak_memory_stats(self._device)
        self._used_start = self._used_peak = self._used_mb()

    def sample(self) -> None:
        """Note the device-wide use now (called between timed calls: mem_get_info has no peak of its own)."""
        self._used_peak = max(self._used_peak, self._used_mb())

    def read(self) -> dict[str, Any]:
        self.sample()
        return {**self._host.read(),
                "gpu_torch_peak_mb": round(self._torch.cuda.max_memory_allocated(self._device) / 2**20, 1),
                "gpu_used_mb": round(self._used_peak, 1),
                "gpu_used_delta_mb": round(self._used_peak - self._used_start, 1)}


def make_probe(device: str) -> MemoryProbe:
    """The probe for a backend on ``device``: host RSS on CPU, host RSS + GPU memory on CUDA."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return CudaMemoryProbe(device)
    return RssProbe()


def process_threads() -> int | None:
    """Threads in this process now (from /proc), to record next to the configured thread counts."""
    count = _status_kib("Threads")  # the same "Name: value" parsing; this field is a plain count
    if count is not None:
        return count
    tasks = Path("/proc/self/task")
    return len(os.listdir(tasks)) if tasks.is_dir() else None
