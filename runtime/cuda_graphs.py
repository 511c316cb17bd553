"""CUDA graphs per batch bucket, shared by the PyTorch and TensorRT runners: buckets, padding, trimming, checks.

A CUDA graph replays fixed shapes, so a runner captures one graph per *bucket* (default: the powers of two up to
its largest batch, and that batch) and serves every batch through them:

- a batch of n rows, n <= the largest bucket, runs in the smallest bucket b >= n: its rows are copied into the
  graph's static input, rows n..b-1 are zeroed (the padding), the graph is replayed, and the first n rows of the
  static output are the result (the trimming);
- a larger batch is cut into chunks of the largest bucket, and the remainder goes to its own bucket.

Padding changes no real row: in every model this toolkit runs, rows are independent (attention within an
image, LayerNorm per token, convolutions per image); tests check it on the CPU. Zeroing the padding costs one
small memset per padded call, and makes each call's result depend on its own input only.

Each bucket's graph is captured when first needed (or ahead, with ``prepare``) and **checked before it is used**:
it is replayed on a check batch and compared with the uncaptured call on the same batch, under the tolerance of
the runner's (backend, precision) in ``moe_base.tolerances``. A graph that fails is never used. By default the
failure raises ``ParityError`` (a benchmark must not time a graph that computes something else, and a user
asked for the graph); with ``fallback=True`` the bucket runs uncaptured instead (the same static buffers, the
function called each time), a warning says so, and the reason is kept in ``fallbacks``.

What makes a bucket's "graph" is injected (``capture``): ``capture_cuda_graph`` records a real CUDA graph;
``eager_capture`` calls the function each time on the same static buffers, so the whole layer (buckets,
padding, trimming, chunking, the check and its fallback) runs, and is tested, on a CPU.

Importing this module needs only NumPy; torch is imported by the functions that use it.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from moe_base.errors import InputError, ParityError
from moe_base.tolerances import Tolerance

DEFAULT_MAX_BUCKET = 4096
CHECK_IMAGES = 16  # distinct images in a bucket's check batch (repeated to fill larger buckets)


# --- buckets ---------------------------------------------------------------------------------------------------
def default_buckets(max_batch: int | None = None, min_batch: int = 1) -> tuple[int, ...]:
    """The powers of two in [min_batch, max_batch], and max_batch itself (default 4096) when it is not one."""
    top = DEFAULT_MAX_BUCKET if max_batch is None else int(max_batch)
    if min_batch < 1 or top < min_batch:
        raise InputError(f"no batch bucket fits between min_batch={min_batch} and max_batch={top}")
    out, p = [], 1
    while p <= top:
        if p >= min_batch:
            out.append(p)
        p *= 2
    if not out or out[-1] != top:
        out.append(top)
    return tuple(out)


def check_buckets(buckets: Iterable[Any], min_batch: int = 1, max_batch: int | None = None,
                  option: str = "graph_buckets") -> tuple[int, ...]:
    """``buckets`` as a sorted tuple of distinct batch sizes in [min_batch, max_batch]; InputError naming ``option``
    otherwise (e.g. a TensorRT engine cannot replay a batch outside its optimisation profile)."""
    given = list(buckets)
    bad = [b for b in given if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1]
    if not given or bad:
        raise InputError(f"{option} must be a non-empty list of positive integers (batch sizes), got {given!r}")
    out = tuple(sorted({int(b) for b in given}))
    outside = [b for b in out if b < min_batch or (max_batch is not None and b > max_batch)]
    if outside:
        raise InputError(f"{option} {list(out)}: {outside} outside the batch range [{min_batch}, {max_batch}] this "
                         f"runner can replay; drop them or widen the range")
    return out


def bucket_for(n: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``n`` rows. Batches beyond the largest bucket are chunked first (``plan``)."""
    for b in buckets:
        if b >= n:
            return b
    raise InputError(f"a batch of {n} is larger than the largest bucket {buckets[-1]}; chunk it (plan())")


class Chunk(NamedTuple):
    start: int
    stop: int
    bucket: int


def plan(n: int, buckets: tuple[int, ...]) -> list[Chunk]:
    """How a batch of ``n`` rows runs: chunks of the largest bucket, then the remainder in its own bucket."""
    if n < 1:
        raise InputError(f"a batch needs at least one row, got {n}")
    top, chunks, start = buckets[-1], [], 0
    while n - start > top:
        chunks.append(Chunk(start, start + top, top))
        start += top
    chunks.append(Chunk(start, n, bucket_for(n - start, buckets)))
    return chunks


# --- one bucket's graph -----------------------------------------------------------------------------------------
@dataclass
class Captured:
    """One bucket: its static input and output tensors and the call that turns one into the other.

    ``captured``: True for a recorded CUDA graph, False for the uncaptured stand-in (``eager_capture``).
    ``check``: the parity report (dict) of the check made before first use.
    """

    bucket: int
    static_input: Any
    static_output: Any
    replay: Callable[[], Any]
    graph: Any = None
    captured: bool = True
    check: dict[str, Any] | None = None


def capture_cuda_graph(fn: Callable[[Any], Any], static_input: Any, *, stream: Any = None,
                       warmup: int = 2) -> Captured:
    """Record ``static_output = fn(static_input)`` as a CUDA graph.

    ``fn`` runs ``warmup`` times first, on the capture stream (lazy initialisation, cuBLAS workspaces, Triton or
    torch.compile compilation and TensorRT's first enqueue must all happen before capture), then once under
    capture. ``stream``: the stream to warm up and capture on (default: a new side stream); work that ``fn``
    enqueues must go to the current stream (TensorRT: ``torch.cuda.current_stream()``). The graph replays on
    the stream that is current when ``replay`` is called.
    """
    import torch

    device = static_input.device
    side = stream if stream is not None else torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn(static_input)
    side.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        static_output = fn(static_input)
    torch.cuda.current_stream(device).wait_stream(side)
    return Captured(int(static_input.shape[0]), static_input, static_output, graph.replay, graph=graph)


def eager_capture(fn: Callable[[Any], Any], static_input: Any) -> Captured:
    """The uncaptured stand-in of a graph: the same static buffers, ``fn`` called at each replay.

    It is the fallback of a bucket whose graph failed its check, and what lets the bucket layer run on a CPU."""
    static_output = fn(static_input).clone()

    def replay() -> None:
        static_output.copy_(fn(static_input))

    return Captured(int(static_input.shape[0]), static_input, static_output, replay, captured=False)


def check_input(bucket: int, images: int = CHECK_IMAGES) -> np.ndarray:
    """A bucket's check batch: ``runtime.parity.parity_inputs`` (varied images and edge cases) repeated to fill it."""
    from .parity import parity_inputs

    base = parity_inputs(min(bucket, images))
    return np.resize(base, (bucket, *base.shape[1:]))


def parity_check(reference: Callable[[Any], Any], make_input: Callable[[int], Any], tolerance: Tolerance,
                 what: str) -> Callable[[Captured], dict[str, Any]]:
    """A check for ``BucketedGraphs``: replay the bucket on ``make_input(bucket)`` (a tensor on the graph's device)
    and compare with ``reference`` (the uncaptured call) on the same input. Raises ParityError on failure."""
    from .parity import compare

    def check(c: Captured) -> dict[str, Any]:
        x = make_input(c.bucket)
        expected = reference(x).float().cpu().numpy()
        c.static_input.copy_(x)
        c.replay()
        got = c.static_output.float().cpu().numpy()
        report = compare(expected, got, tolerance, what, "graph")
        if not report.passed:
            raise ParityError(f"the CUDA graph of {what} for batch bucket {c.bucket} does not reproduce the uncaptured "
                              f"model: {'; '.join(report.failures)}", report)
        return {"bucket": c.bucket, "max_abs": report.max_abs, "psnr": report.to_dict()["psnr"],
                "passed": True}

    return check


# --- the bucket layer -------------------------------------------------------------------------------------------
@dataclass
class BucketedGraphs:
    """Serve batches of any size through per-bucket graphs: capture on first use, check, pad, replay, trim.

    ``capture(bucket) -> Captured`` makes a bucket's graph; ``check(captured) -> dict`` (optional) is run once
    before the graph is first used and raises ParityError when it fails; then ``fallback(bucket) -> Captured``
    (optional) gives the bucket's uncaptured stand-in, and without one the error propagates.

    A bucket's static buffers serve one call at a time: calls from several threads (a runner shared by them, as
    ``with runner:`` blocks in several threads allow) take turns, each from its copy-in to its copy-out.
    """

    capture: Callable[[int], Captured]
    buckets: tuple[int, ...]
    check: Callable[[Captured], dict[str, Any]] | None = None
    fallback: Callable[[int], Captured] | None = None
    graphs: dict[int, Captured] = field(default_factory=dict)
    fallbacks: dict[int, str] = field(default_factory=dict)
    _lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    def get(self, bucket: int) -> Captured:
        """The bucket's (checked) graph, captured now if it has not been."""
        if bucket not in self.buckets:
            raise InputError(f"{bucket} is not one of the buckets {list(self.buckets)}")
        with self._lock:  # two threads asking for a new bucket capture it once
            return self._get(bucket)

    def _get(self, bucket: int) -> Captured:
        if bucket not in self.graphs:
            c = self.capture(bucket)
            if self.check is not None:
                try:
                    c.check = self.check(c)
                except ParityError as e:
                    if self.fallback is None:
                        raise
                    self.fallbacks[bucket] = str(e)
                    warnings.warn(f"{e}; bucket {bucket} runs uncaptured instead", RuntimeWarning, stacklevel=3)
                    c = self.fallback(bucket)
            self.graphs[bucket] = c
        return self.graphs[bucket]

    def prepare(self, batches: Iterable[int] | None = None) -> list[int]:
        """Capture (and check) the buckets that ``batches`` use (default: every bucket) now. Returns them."""
        wanted = sorted({c.bucket for n in batches for c in plan(int(n), self.buckets)}) if batches is not None \
            else list(self.buckets)
        for b in wanted:
            self.get(b)
        return wanted

    def run(self, x: Any, out: Any = None) -> Any:
        """``x``: a tensor [n, ...] on any device (it is copied into the static input). Returns the n output rows in
        ``out`` when given (any device, e.g. a host tensor), else in a new tensor on the graphs' device."""
        n = int(x.shape[0])
        for start, stop, bucket in plan(n, self.buckets):
            with self._lock:  # the static buffers: another thread's rows must not land in them before ours are out
                c = self.get(bucket)
                m = stop - start
                c.static_input[:m].copy_(x[start:stop])
                if m < bucket:
                    c.static_input[m:].zero_()
                c.replay()
                if out is None:
                    import torch

                    out = torch.empty((n, *c.static_output.shape[1:]), dtype=c.static_output.dtype,
                                      device=c.static_output.device)
                out[start:stop].copy_(c.static_output[:m])
        return out

    def describe(self) -> dict[str, Any]:
        return {"graph_buckets": list(self.buckets), "buckets_ready": sorted(self.graphs),
                "graphs_captured": sorted(b for b, c in self.graphs.items() if c.captured),
                "graph_checks": [self.graphs[b].check for b in sorted(self.graphs) if self.graphs[b].check],
                "graph_fallbacks": [{"bucket": b, "reason": r} for b, r in sorted(self.fallbacks.items())]}
