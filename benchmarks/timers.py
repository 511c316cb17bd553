"""How one call is timed: a strategy object, so the harness is the same on CPU, on GPU and in tests.

``PerfCounterTimer`` measures host wall-clock time around a call that returns when its work is done (every CPU
runner, and GPU runner calls that copy their outputs back to the host).

``CudaEventTimer`` is for GPU work that may still be queued when the call returns: it synchronises the device
before the start event (so earlier work is not billed to this call), records CUDA events around the call, and
synchronises the whole device (every stream, so an ONNX Runtime or TensorRT stream is included) before the end
event. The elapsed time between the events is measured on the GPU. Without this, a timer on an asynchronous
launch measures the launch, not the work: the classic way "PyTorch vs TensorRT" numbers go wrong.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from moe_base.errors import NoGPUError


class Timer(Protocol):
    """Times one call of ``fn`` and returns seconds. ``name`` is recorded in the results."""

    name: str

    def time(self, fn: Callable[[], Any]) -> float: ...


class PerfCounterTimer:
    """Host wall-clock time (time.perf_counter_ns) around a synchronous call."""

    name = "perf_counter"

    def time(self, fn: Callable[[], Any]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) * 1e-9


class CudaEventTimer:
    """CUDA events around the call, with device-wide synchronisation before and after it."""

    name = "cuda_events"

    def __init__(self, torch_module: Any = None) -> None:
        if torch_module is None:
            import torch as torch_module
        if not torch_module.cuda.is_available():
            raise NoGPUError("CudaEventTimer needs a CUDA GPU visible to torch; use PerfCounterTimer on CPU")
        self._torch = torch_module
        self._start = torch_module.cuda.Event(enable_timing=True)
        self._end = torch_module.cuda.Event(enable_timing=True)

    def time(self, fn: Callable[[], Any]) -> float:
        cuda = self._torch.cuda
        cuda.synchronize()
        self._start.record()
        fn()
        cuda.synchronize()  # every stream: work other libraries queued on their own streams is finished
        self._end.record()
        self._end.synchronize()
        return self._start.elapsed_time(self._end) * 1e-3


def make_timer(device: str) -> Timer:
    """The timer for a backend on ``device`` ("cpu", "cuda", "cuda:N").

    On a CUDA device without a CUDA build of torch (e.g. ONNX Runtime GPU next to CPU torch) the host timer is
    used; the runners' host-facing calls are synchronous, so it is still correct, only coarser.
    """
    if device.startswith("cuda"):
        try:
            return CudaEventTimer()
        except NoGPUError:
            return PerfCounterTimer()
    return PerfCounterTimer()
