"""The benchmark harness: parity first, then interleaved, warmed-up, steady-state timing of every backend.

Order of work (``run_benchmark``):

1. Fingerprint the machine; compute the PyTorch reference outputs (masked attention, fp32, CPU) on the fixed
   parity batch.
2. For each backend: build and activate its runner (timed: *cold start*, i.e. session creation / engine load /
   model load), run a first batch-1 inference (timed: *first inference*, which includes one-off work such as
   allocations or compilation), then check its outputs against the reference with the parity tolerance of
   (backend, precision). A backend that cannot be built or activated is *unavailable* (with the reason); one
   that fails parity is *failed-parity* and is never timed, so it can never be reported as a winner.
3. Measure the machine's GEMM peak on each device in use (the compute limit, measured in the same run).
4. For each batch size: warm-up calls for every (backend, mode) cell, then rounds; in each round every cell gets
   one turn (a few timed calls), and the order rotates from round to round. Interleaving makes drift on a
   noisy machine (thermal, a background job) hit every backend alike instead of whichever ran last.
5. Summarise: p50/p90/p99/mean latency, throughput, ratios against the baseline from the same run, achieved
   GFLOP/s and its fraction of the measured peak, peak memory per cell, the best backend per batch size.

Everything that touches hardware (timer, memory probe, GEMM peak, clock) is injected, so the same code is
tested on CPU with fakes and runs the CUDA-event method on a GPU. The harness takes runners built elsewhere
(``benchmarks.backends`` or a test); it never exports models itself.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from moe_base.contract import TILE_SHAPE
from moe_base.errors import InputError, Interrupted, NoGPUError, repeated, signals_held
from moe_base.machine import fingerprint, load_average
from moe_base.optional import available
from moe_base.tolerances import get_tolerance
from runtime.base import BaseRunner
from runtime.parity import compare, in_chunks, parity_inputs

from .env import CpuContention
from .memory import current_rss_mb, make_probe, process_threads
from .stats import (
    achieved_gflops,
    compute_limit_images_per_s,
    latency_stats,
    paired_comparison,
    paired_text,
    ratios,
    throughput,
)
from .timers import make_timer

SCHEMA_NAME = "moe-denoise/bench"
SCHEMA_VERSION = 1
MODES = ("e2e", "compute")

# A backend's device-resident call: given its active runner and a host batch, prepare the device copy (untimed)
# and return a function that runs the model on it without host copies; None when the runner cannot.


class BenchmarkInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped ``run_benchmark`` while it timed: ``doc`` is the results document of what was
    measured before (the batch size in progress keeps its complete rounds; the later ones are recorded as skipped),
    for the caller to write before it goes on as interrupted."""

    def __init__(self, doc: dict[str, Any], signum: int = 2) -> None:
        super().__init__("", signum)
        self.doc = doc


@dataclass
class BackendSpec:
    """One backend to benchmark: how to build its runner, and what to judge it by.

    ``unavailable`` set: the backend is listed with that reason and not built (e.g. no engine was given).
    ``tolerance``: the (backend, precision) key of moe_base.tolerances. ``preload``: modules imported before
    the cold start is timed, so the cold start is session creation / engine load, not a library import.
    ``fresh_each_round``: the runner is re-created (deactivated, activated, the --warmup untimed calls) before its turn in
    every round after the first, so the samples span many sessions: an ONNX Runtime CPU session keeps its speed
    for life and that speed varies from session to session, by up to 20% (see tools/rewrites_ab.py).
    ``versus``: another backend of the run this one is compared with round by round (its turn's time over the other's
    in the same round; stats.paired_comparison), for differences smaller than the spread between rounds.
    """

    name: str
    make_runner: Callable[[], BaseRunner] | None
    device: str = "cpu"
    precision: str = "fp32"
    tolerance: tuple[str, str] = ("torch", "fp32")
    baseline: bool = False
    unavailable: str | None = None
    preload: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    fresh_each_round: bool = False
    versus: str | None = None


@dataclass
class BenchSettings:
    """How much to measure. Defaults are the full CPU run; the bench command's PRESETS hold the others."""

    batches: tuple[int, ...] = (1, 8, 64, 256)
    warmup: int = 3              # untimed calls per (backend, mode) at each batch size before timing
    repeats: int = 20            # at most this many interleaved rounds per batch size
    min_repeats: int = 3         # at least this many rounds, even past the batch budget
    slot_target_s: float = 0.25  # each turn of a backend in a round times about this long (at least one call)
    max_inner: int = 20          # at most this many timed calls per turn
    batch_budget_s: float = 90.0  # no new round at a batch size once its timing took this long
    deadline_s: float | None = None  # from the start of the run: no new round or batch size starts past it
    parity_images: int = 16
    threads: int | None = None
    modes: tuple[str, ...] = ("e2e",)
    gemm_repeats: int = 10
    seed: int = 0

    def validate(self) -> None:
        """Reject settings that would produce meaningless numbers, saying what to pass instead."""
        problems = []
        if not self.batches or any(int(b) < 1 for b in self.batches):
            problems.append(f"batches must be positive integers, got {list(self.batches)}")
        twice = [int(b) for b in repeated(self.batches)]
        if twice:  # timed twice, its rows were doubled and its ratios mixed rows of the two sweeps
            problems.append(f"batches must each be given once; repeated: {twice} (in {list(self.batches)})")
        if self.warmup < 1:
            problems.append(f"warmup must be >= 1 (the first call at a new batch size does one-off work such as "
                            f"allocation or compilation), got {self.warmup}")
        if self.repeats < 1 or self.min_repeats < 1:
            problems.append(f"repeats and min_repeats must be >= 1, got {self.repeats} and {self.min_repeats}")
        if self.max_inner < 1 or not 0 < self.slot_target_s < math.inf or not 0 < self.batch_budget_s < math.inf:
            problems.append(f"max_inner must be >= 1 and slot_target_s, batch_budget_s finite seconds > 0, got "
                            f"{self.max_inner}, {self.slot_target_s} and {self.batch_budget_s}")
        if self.deadline_s is not None and not 0 < self.deadline_s < math.inf:
            problems.append(f"deadline_s must be finite seconds > 0 (or None: no deadline), got {self.deadline_s}")
        if self.parity_images < 1:
            problems.append(f"parity_images must be >= 1, got {self.parity_images}")
        unknown = sorted(set(self.modes) - set(MODES))
        if unknown or not self.modes:
            problems.append(f"modes must be a non-empty subset of {MODES}, got {list(self.modes)}")
        if problems:
            raise InputError("invalid benchmark settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["batches"], d["modes"] = list(self.batches), list(self.modes)
        d["order"] = ROUND_ORDER  # runs before it was written rotated the order only
        return d


@dataclass
class _Backend:
    """A backend during the run: its spec, its JSON record, and its runner while it is eligible for timing."""

    spec: BackendSpec
    record: dict[str, Any]
    runner: BaseRunner | None = None


@dataclass
class _Cell:
    """One (backend, mode) at one batch size: its call and the samples gathered so far."""

    backend: _Backend
    mode: str
    fn: Callable[[], Any]
    samples: list[float] = field(default_factory=list)
    turns: list[float] = field(default_factory=list)  # mean seconds per call of each complete turn, round by round
    memory: dict[str, Any] = field(default_factory=dict)
    inner: int = 1
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.backend.spec.name}/{self.mode}"


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _reason(e: BaseException) -> str:
    """An exception as a one-line reason for the report (type and first line of the message)."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# --- 1-2: reference, cold start, parity ----------------------------------------------------------------------
def _as_input(runner: BaseRunner, x: np.ndarray) -> np.ndarray:
    """The parity batch in a dtype the runner accepts (fp16-input engines get fp16)."""
    dtypes = getattr(runner, "input_dtypes", (np.dtype(np.float32),))
    return x if x.dtype in dtypes else x.astype(dtypes[0])


def prepare_backend(spec: BackendSpec, x: np.ndarray, reference_out: np.ndarray,
                    log: Callable[[str], None] = _stderr) -> _Backend:
    """Build, activate (cold start), first inference, parity. Returns the backend with a runner only if it passed."""
    record: dict[str, Any] = {
        "name": spec.name, "device": spec.device, "precision": spec.precision, "baseline": spec.baseline,
        "tolerance_key": list(spec.tolerance), "status": "unavailable", "reason": spec.unavailable,
        "notes": list(spec.notes), "describe": None, "parity": None, "cold_start": None, "memory": None,
        "modes": [], "timer": None,
    }
    backend = _Backend(spec, record)
    if spec.make_runner is None and spec.unavailable is None:
        record["reason"] = "no runner factory was given for this backend"
    if record["reason"] is not None:
        log(f"  {spec.name:<22} unavailable: {record['reason']}")
        return backend
    log(f"  {spec.name:<22} preparing: load, first inference, parity ...")  # a log's last line names one that hangs
    rss0 = current_rss_mb()
    runner = _activate(spec, record)
    if runner is None:
        log(f"  {spec.name:<22} unavailable: {record['reason']}")
        return backend
    outputs = _first_inferences(runner, x, record)
    if outputs is not None:
        rss1 = current_rss_mb()
        record["memory"] = {"rss_after_load_mb": None if rss1 is None else round(rss1, 1),
                            "load_rss_delta_mb": None if rss0 is None or rss1 is None else round(rss1 - rss0, 1)}
        _judge_parity(spec, record, reference_out, *outputs)
    if record["status"] != "ok":
        log(f"  {spec.name:<22} {record['status']}, not timed: {record['reason']}")
        runner.deactivate()
        return backend
    backend.runner = runner
    cs, parity = record["cold_start"], record["parity"]
    log(f"  {spec.name:<22} ok: load {cs['activate_ms']:.0f} ms, first inference {cs['first_infer_ms']:.1f} ms, "
        f"parity max abs {parity['max_abs']:.1e}")
    return backend


def _activate(spec: BackendSpec, record: dict[str, Any]) -> BaseRunner | None:
    """Build and activate the runner, timing the activation (the cold start); None with a reason if impossible."""
    for module in spec.preload:  # so the cold start is session creation / engine load, not a library import
        available(module)  # a missing one makes activation fail with MissingBackendError and its install hint
    try:
        runner = spec.make_runner()
        t0 = time.perf_counter()
        runner.activate()
        activate_s = time.perf_counter() - t0
    except NoGPUError as e:  # its advice (--device cpu, device='cpu') is for denoise and Python: bench has neither
        record["reason"] = (f"NoGPUError: {str(e).split('; ')[0]}; time the CPU backends, or run on a machine with an "
                            f"NVIDIA GPU (and a CUDA build of torch for the torch backends)")
        return None
    except Exception as e:  # noqa: BLE001 - any failure to build/activate means "unavailable here", with reason
        record["reason"] = _reason(e)
        return None
    record["cold_start"] = {"activate_ms": activate_s * 1e3, "first_infer_ms": None, "second_infer_ms": None,
                            "first_batch": 1}
    return runner


def _first_inferences(runner: BaseRunner, x: np.ndarray,
                      record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The first (cold) and second batch-1 calls, timed, then the parity batch. Returns (parity out, first out)."""
    try:
        x1 = _as_input(runner, x[:1])
        t0 = time.perf_counter()
        y1 = runner(x1)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        runner(x1)
        second_s = time.perf_counter() - t0
        y = in_chunks(runner, _as_input(runner, x))
    except Exception as e:  # noqa: BLE001 - reported as this backend's error; the run goes on
        record.update(status="error", reason=f"inference failed: {_reason(e)}", cold_start=None)
        return None
    record["cold_start"].update(first_infer_ms=first_s * 1e3, second_infer_ms=second_s * 1e3)
    record["describe"] = _describe(runner)
    return np.asarray(y, np.float32), np.asarray(y1, np.float32)


def _judge_parity(spec: BackendSpec, record: dict[str, Any], reference_out: np.ndarray, y: np.ndarray,
                  y1: np.ndarray) -> None:
    """Compare the parity batch and the first call's output with the reference; sets status ok or failed-parity."""
    try:
        report = compare(np.concatenate([reference_out, reference_out[:1]]), np.concatenate([y, y1]),
                         get_tolerance(*spec.tolerance), spec.name, spec.precision)
    except (InputError, KeyError, ValueError) as e:  # wrong output shape, unknown tolerance key
        record.update(status="failed-parity", reason=f"outputs could not be compared: {_reason(e)}")
        return
    record["parity"] = report.to_dict()
    if report.passed:
        record.update(status="ok", reason=None)
    else:
        record.update(status="failed-parity", reason="; ".join(report.failures))


def _describe(runner: BaseRunner) -> dict[str, Any]:
    try:
        return {k: (v if isinstance(v, (str, int, float, bool, type(None), list)) else str(v))
                for k, v in runner.describe().items()}
    except Exception as e:  # noqa: BLE001 - describe() is informational only
        return {"describe_error": _reason(e)}


# --- 4: interleaved timing -----------------------------------------------------------------------------------
def batch_input(batch: int, seed: int = 0) -> np.ndarray:
    """A deterministic batch of valid images (uniform in [0, 1)), float32 [B, 3, 32, 32]."""
    return np.random.default_rng(seed + batch).random((batch, *TILE_SHAPE), dtype=np.float32)


def _make_cells(backends: list[_Backend], batch: int, modes: tuple[str, ...], seed: int) -> list[_Cell]:
    """The (backend, mode) cells to time at ``batch``; a backend without a device-resident call has no compute cell."""
    x = batch_input(batch, seed)
    cells = []
    for b in backends:
        xb = _as_input(b.runner, x)
        for mode in modes:
            if mode == "e2e":
                cells.append(_Cell(b, mode, _e2e_call(b.runner, xb)))
            elif _has_mode(b.spec, mode):
                try:
                    fn = b.runner.device_callable(xb)
                except Exception as e:  # noqa: BLE001 - e.g. out of device memory for the input copy
                    fn = None
                    b.record["notes"].append(f"compute-only mode at batch {batch} unavailable: {_reason(e)}")
                if fn is not None:
                    cells.append(_Cell(b, mode, fn))
    return cells


def _has_mode(spec: BackendSpec, mode: str) -> bool:
    """e2e: every backend. compute (device-resident I/O): GPU backends (whose runner gives a device call, see
    ``BaseRunner.device_callable``); on CPU the host arrays are the device arrays, so it would repeat e2e."""
    return mode == "e2e" or not spec.device.startswith("cpu")


def _e2e_call(runner: BaseRunner, x: np.ndarray) -> Callable[[], Any]:
    """Host array in, host array out: what a user of the runner sees (input validation already done by parity)."""
    return lambda: runner.infer(x, check=False)


ROUND_ORDER = "order rotated, every other round reversed; with 3 or more, no backend twice in a row"


def round_order(cells: list[Any], round_index: int) -> list[Any]:
    """The order of one round (:data:`ROUND_ORDER`): each cell takes every place in turn, and each runs after the
    others in both directions, so what one cell leaves behind (a warm cache, a session torn down, a hot core) is not
    always met by the same one; rotation alone kept each cell after the same one but when it ran first (ort-cpu
    before ort-cpu-noopt, the pair compared round by round, in 4 of 5 rounds)."""
    if not cells:
        return []
    # an odd round reverses the rotation two places on, so that with three cells or more no cell runs twice in a
    # row across a round's end (reversing the same rotation began a round with the cell that ended the last)
    k = (round_index // 2 + 2 * (round_index % 2)) % len(cells)
    rotated = cells[k:] + cells[:k]
    return rotated if round_index % 2 == 0 else rotated[::-1]


PREPARE_SHARE = 0.5
"""The share of a run's --deadline after which no more backends are prepared (loaded, compiled, parity-checked): the
rest is for timing those that were."""


class _Clock:
    """Deadline bookkeeping over an injectable monotonic clock."""

    def __init__(self, deadline_s: float | None, now: Callable[[], float], start: float | None = None) -> None:
        self.now = now
        self.start = now() if start is None else start
        self.deadline = None if deadline_s is None else self.start + deadline_s

    def past_deadline(self) -> bool:
        return self.deadline is not None and self.now() > self.deadline

    def past_share(self, share: float) -> bool:
        """Whether ``share`` (0 to 1) of the time to the deadline has gone."""
        return self.deadline is not None and self.now() > self.start + share * (self.deadline - self.start)


def time_batch(cells: list[_Cell], settings: BenchSettings, timers: dict[str, Any], probes: dict[str, Any],
               clock: _Clock, log: Callable[[str], None] = _stderr,
               schedule: list[list[str]] | None = None) -> list[list[str]]:
    """Warm up, then interleaved rounds over ``cells``; fills their samples. Returns the order of each round
    (appended to ``schedule`` as they start, when given). Interrupted (Ctrl-C, SIGTERM), the round in progress is
    taken back (its turns would favour the cells that had their turn) and the interrupt goes on up: the cells keep
    the complete rounds, as at a deadline."""
    for _ in range(settings.warmup):
        for cell in cells:
            _run_guarded(cell, lambda c=cell: c.fn())
    for cell in cells:  # calls per turn from one timed warm call: each turn lasts about slot_target_s
        if cell.error is None:
            est = _run_guarded(cell, lambda c=cell: timers[c.backend.spec.device].time(c.fn))
            if est is not None:
                cell.inner = int(min(settings.max_inner, max(1, math.ceil(settings.slot_target_s / max(est, 1e-9)))))
    schedule = [] if schedule is None else schedule
    t_batch = clock.now()
    for r in range(settings.repeats):
        live = [c for c in cells if c.error is None]
        if not live:
            break
        order = round_order(live, r)
        schedule.append([c.key for c in order])
        kept = [(len(c.samples), len(c.turns), dict(c.memory)) for c in cells]
        try:
            _one_round(order, r, timers, probes, settings.warmup)
        except KeyboardInterrupt:
            for c, (n_samples, n_turns, memory) in zip(cells, kept):  # its times and its memory peaks alike
                del c.samples[n_samples:], c.turns[n_turns:]
                c.memory = memory
            schedule.pop()
            raise
        done = r + 1
        if done >= settings.min_repeats and clock.now() - t_batch > settings.batch_budget_s:
            log(f"    batch budget {settings.batch_budget_s:.0f}s used after {done} rounds")
            break
        if clock.past_deadline():
            log(f"    run deadline reached after {done} rounds at this batch size")
            break
    return schedule


def _one_round(order: list[_Cell], r: int, timers: dict[str, Any], probes: dict[str, Any], warmup: int) -> None:
    """Round ``r``: a turn for each cell in ``order``; a fresh_each_round backend is renewed first (after round 0),
    and warmed up as at the start (``warmup`` untimed calls)."""
    renewed: set[int] = set()
    for cell in order:
        if r and cell.backend.spec.fresh_each_round and id(cell.backend) not in renewed:
            renewed.add(id(cell.backend))
            _run_guarded(cell, lambda c=cell: _renew(c, warmup))
            if cell.error is not None:
                continue
        _timed_turn(cell, timers[cell.backend.spec.device], probes[cell.backend.spec.device])


def _renew(cell: _Cell, warmup: int) -> None:
    """A fresh runner (new session) for ``cell``'s backend, warmed by ``warmup`` untimed calls (--warmup: it was two
    whatever was asked)."""
    runner = cell.backend.runner
    runner.deactivate()
    runner.activate()
    for _ in range(warmup):
        cell.fn()


def _run_guarded(cell: _Cell, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` for ``cell``; an exception marks the cell as failed (it is timed no further) instead of ending the run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: reported for this cell
        cell.error = _reason(e)
        cell.backend.record["notes"].append(f"{cell.key}: {cell.error}")
        return None


def _timed_turn(cell: _Cell, timer: Any, probe: Any) -> None:
    """One turn of a cell in a round: ``inner`` timed calls, with the memory peak of the turn."""
    probe.reset()
    sample = getattr(probe, "sample", None)  # the device-wide use has no peak of its own: noted after each call
    turn = []
    for _ in range(cell.inner):
        t = _run_guarded(cell, lambda: timer.time(cell.fn))
        if t is None:
            return
        if sample is not None:  # untimed; it was read at the end of the turn alone, after scratch memory was freed
            sample()
        turn.append(float(t))
        cell.samples.append(float(t))
    cell.turns.append(sum(turn) / len(turn))
    for k, v in probe.read().items():  # the worst turn: numbers keep their maximum, labels their last value
        old = cell.memory.get(k)
        numeric = isinstance(v, (int, float)) and isinstance(old, (int, float))
        cell.memory[k] = max(old, v) if numeric else (v if v is not None or old is None else old)


# --- 5: summary ----------------------------------------------------------------------------------------------
def summarise_cell(cell: _Cell, batch: int, flops_per_image: float | None, peaks: dict[str, float]) -> dict[str, Any]:
    """One results row: latency statistics, throughput, compute-limit position, memory."""
    spec = cell.backend.spec
    row: dict[str, Any] = {"backend": spec.name, "mode": cell.mode, "batch": batch, "device": spec.device,
                           "status": "ok", "reason": None, "n_samples": len(cell.samples), "calls_per_turn": cell.inner,
                           "latency_ms": None, "throughput_ips": None, "ratio_vs_baseline": None,
                           "gflops": None, "fraction_of_peak": None, "memory": cell.memory or None}
    if cell.error is not None or not cell.samples:
        row.update(status="error", reason=cell.error or "no timed samples")
        return row
    stats = latency_stats(cell.samples)
    row["latency_ms"] = stats.to_dict()
    row["samples_ms"] = [t * 1e3 for t in cell.samples]  # every timed call, in order: the statistics can be redone
    row["turns_ms"] = [t * 1e3 for t in cell.turns]  # the mean call of each round's turn: the paired comparisons
    row["throughput_ips"] = throughput(batch, stats.mean)
    if flops_per_image:
        row["gflops"] = achieved_gflops(flops_per_image, row["throughput_ips"])
        peak = peaks.get(spec.device.split(":")[0])
        row["fraction_of_peak"] = row["gflops"] / peak if peak else None
    return row


def add_ratios(rows: list[dict[str, Any]], baseline: str | None) -> None:
    """Fill ratio_vs_baseline of every ok row from the baseline's row at the same batch and mode."""
    if baseline is None:
        return
    base = {(r["batch"], r["mode"]): r for r in rows if r["backend"] == baseline and r["status"] == "ok"}
    for r in rows:
        b = base.get((r["batch"], r["mode"]))
        if r["status"] == "ok" and b is not None:
            r["ratio_vs_baseline"] = ratios(r["throughput_ips"], r["latency_ms"]["p50"], b["throughput_ips"],
                                            b["latency_ms"]["p50"]).to_dict()


def best_per_batch(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{mode: {batch: best row summary}} by throughput, among rows that passed parity and were timed."""
    best: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        cur = best.setdefault(r["mode"], {}).get(str(r["batch"]))
        if cur is None or r["throughput_ips"] > cur["throughput_ips"]:
            best[r["mode"]][str(r["batch"])] = {
                "backend": r["backend"], "throughput_ips": r["throughput_ips"], "p50_ms": r["latency_ms"]["p50"],
                "throughput_ratio": (r["ratio_vs_baseline"] or {}).get("throughput"),
                "latency_ratio": (r["ratio_vs_baseline"] or {}).get("latency_p50")}
    return best


def cpu_targets(rows: list[dict[str, Any]], flops_per_image: float | None, peaks: dict[str, float],
                busy: str | None = None, baseline: str | None = None) -> dict[str, Any]:
    """The project's CPU targets, judged on this run: the best throughput at batch 64 >= 10x the baseline's, the
    lowest p50 latency at batch 1 <= 1/8 of the baseline's (the backend with the best throughput at batch 1 was
    taken, whose p50 need not be the lowest: a target could read 'NOT met' that a timed backend met), and the
    compute limit (images/s at the measured GEMM peak).

    A target is not judged (``met`` None, ``not_judged`` says why) on a ``busy`` machine (the reason) or when a cell
    it is read from (the chosen backend's or ``baseline``'s, at its batch) is unsteady: a 3-round run with 72% of
    the CPU taken by others read 'batch 1: 1/72 -> met' (the 2-thread baseline slowed 6x, ONNX Runtime far less),
    where the quiet run misses it."""
    out: dict[str, Any] = {}

    def judged(name: str, batch: int, backend: str, value: float, target: float, met: bool) -> None:
        cells = [r for r in rows if r["batch"] == batch and r["mode"] == "e2e" and r["backend"] in (backend, baseline)]
        shaky = [f"{r['backend']} batch {batch}" for r in cells if unsteady(r)]
        doubt = busy or (f"unsteady timings ({', '.join(shaky)})" if shaky else None)
        out[name] = {"target": target, "value": value, "backend": backend, "met": None if doubt else met}
        if doubt:
            out[name]["not_judged"] = doubt

    cpu64 = [r for r in rows if r["status"] == "ok" and r["batch"] == 64 and r["mode"] == "e2e"
             and r["device"] == "cpu"]  # among CPU rows alone: the fastest of all at 64 on a GPU dropped the target
    b64 = max(cpu64, key=lambda r: r["throughput_ips"]) if cpu64 else None
    ratio = ((b64 or {}).get("ratio_vs_baseline") or {}).get("throughput")
    if b64 and ratio is not None:
        judged("batch64_throughput_ratio", 64, b64["backend"], ratio, 10.0, ratio >= 10.0)
    b1 = [(r["ratio_vs_baseline"]["latency_p50"], r["backend"]) for r in rows
          if r["status"] == "ok" and r["batch"] == 1 and r["mode"] == "e2e" and r["device"] == "cpu"
          and (r.get("ratio_vs_baseline") or {}).get("latency_p50") is not None]
    if b1:
        value, backend = min(b1)
        judged("batch1_latency_ratio", 1, backend, value, 0.125, value <= 0.125)
    if flops_per_image and peaks.get("cpu"):
        limit = compute_limit_images_per_s(flops_per_image, peaks["cpu"])
        out["compute_limit_ips"] = limit
        if b64:
            out["batch64_fraction_of_limit"] = b64["throughput_ips"] / limit
    return out


# --- the whole run -------------------------------------------------------------------------------------------
def run_benchmark(specs: list[BackendSpec], reference: BaseRunner, settings: BenchSettings | None = None, *,
                  flops: dict[str, Any] | None = None, meta: dict[str, Any] | None = None,
                  timer_factory: Callable[[str], Any] = make_timer, probe_factory: Callable[[str], Any] = make_probe,
                  peak_fn: Callable[..., dict[str, Any]] | None = None, now: Callable[[], float] = time.monotonic,
                  log: Callable[[str], None] = _stderr, environment: dict[str, Any] | None = None,
                  model_info: dict[str, Any] | None = None, started_at: float | None = None,
                  contention_factory: Callable[[], Any] = CpuContention) -> dict[str, Any]:
    """Benchmark ``specs`` against ``reference`` (an inactive runner: the PyTorch masked fp32 CPU model).

    ``flops``: a benchmarks.flops FlopCount.to_dict() (per image) for the compute-limit columns; ``model_info``
    (config, weights) and ``meta`` (command, mode) are copied into the document. ``started_at``: a ``now()``
    reading the deadline counts from (the command's start, so exports count too; default: this call).
    ``peak_fn(device=..., threads=..., repeats=...)``: measures the GEMM peak (default: flops.measure_gemm_gflops);
    a failure is recorded, not fatal. Returns the results document (see benchmarks.report for its schema). Ctrl-C or
    SIGTERM while timing raises :class:`BenchmarkInterrupted`, which carries the document of what was measured.
    """
    settings = settings or BenchSettings()
    settings.validate()
    clock = _Clock(settings.deadline_s, now, started_at)
    names = [s.name for s in specs]
    dupes = repeated(names)
    if dupes:
        raise InputError(f"backend names must be unique; repeated: {dupes}")
    if settings.threads:
        _set_torch_threads(settings.threads)
    env = environment if environment is not None else fingerprint(settings.threads)
    contention = contention_factory()  # other processes' share of the CPU while this runs (a test's: a fixed one)
    log(f"reference: {reference.name.replace(' (reference)', '')}; parity on {settings.parity_images} images")
    x = parity_inputs(settings.parity_images, seed=settings.seed)
    with reference:
        ref_out = np.asarray(in_chunks(reference, x), np.float32)
    backends: list[_Backend] = []
    try:
        for spec in specs:  # past PREPARE_SHARE of the deadline, the rest is kept for timing: three torch.compile
            # variants (15-60 s each) used up a GPU session's deadline before anything was timed
            prepared = any(b.runner is not None for b in backends)  # one at least, however late
            if spec.unavailable is None and prepared and clock.past_share(PREPARE_SHARE):
                spec = replace(spec, unavailable=(
                    f"not prepared: {PREPARE_SHARE:.0%} of the run's --deadline ({settings.deadline_s:g} s) had passed "
                    f"before its turn, and the rest is kept for timing the backends prepared; time it in a run of "
                    f"its own (--backends {spec.name})"))
            backends.append(prepare_backend(spec, x, ref_out, log))
        live = [b for b in backends if b.runner is not None]
        peaks, peak_records = _measure_peaks({b.spec.device.split(":")[0] for b in live} | {"cpu"}, settings,
                                             peak_fn, log)
        flops_per_image = float(flops["total"]) if flops else None
        rows, schedule, paired, interrupt = _time_all(live, settings, timer_factory, probe_factory, clock,
                                                      flops_per_image, peaks, log)
        for b in live:
            b.record["modes"] = sorted({r["mode"] for r in rows if r["backend"] == b.spec.name})
    finally:
        for b in backends:
            if b.runner is not None:
                b.runner.deactivate()
    baseline = next((s.name for s in specs if s.baseline), None)
    baseline_ok = any(b.spec.baseline and b.record["status"] == "ok" for b in backends)
    add_ratios(rows, baseline if baseline_ok else None)
    best = best_per_batch(rows)
    notes = []
    if baseline is None:
        notes.append("no baseline backend in this run: ratios are not computed")
    elif not baseline_ok:
        notes.append(f"the baseline {baseline} was not timed ({_status_of(backends, baseline)}): ratios are not "
                     f"computed")
    env["load_average_end"] = load_average()
    env["process_threads"] = process_threads()
    env["contention"] = contention.result()
    busy = busy_machine_note(env)
    for note in [busy, unsteady_note(rows)]:
        if note:
            notes.append(note)
            log(note)
    if interrupt is not None:
        timed = sorted({r["batch"] for r in rows if r["status"] == "ok"})
        notes.append(f"{interrupt_reason(interrupt)} during the timing: a partial run (batch sizes timed: "
                     f"{', '.join(map(str, timed)) or 'none'}; the batch size in progress keeps its complete rounds, "
                     f"the later ones are skipped)")
    doc = {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": None, "mode": "custom",
        **(meta or {}),
        "settings": settings.to_dict(),
        "environment": env,
        "model": {"flops_per_image": flops, **(model_info or {})},
        "reference": {"name": reference.name, "backend": "torch-masked", "device": "cpu", "precision": "fp32",
                      "parity_images": settings.parity_images},
        "baseline": baseline,
        "compute_peak": peak_records,
        "backends": [b.record for b in backends],
        "results": rows,
        "paired": paired,
        "schedule": schedule,
        "best": best,
        "targets": cpu_targets(rows, flops_per_image, peaks, busy=busy and busy.split(".", 1)[0],
                               baseline=baseline if baseline_ok else None),
        "notes": notes,
    }
    if interrupt is not None:
        raise BenchmarkInterrupted(doc, getattr(interrupt, "signum", 2)) from interrupt
    return doc


UNSTEADY_MEAN_OVER_MEDIAN = 1.5


def unsteady(row: dict[str, Any]) -> bool:
    """Whether a timed cell's mean call time is over 1.5x its median: a few slow calls decide its throughput."""
    lat = row["latency_ms"] if row["status"] == "ok" else None
    return bool(lat) and lat.get("mean", 0) > UNSTEADY_MEAN_OVER_MEDIAN * lat["p50"]


def unsteady_note(rows: list[dict[str, Any]]) -> str | None:
    """A warning naming the timed cells whose mean call time (which throughput is made from: batch / mean, so that
    stalls count) is over 1.5x their median: a few slow calls decide their throughput and its ratios."""
    shaky = [r for r in rows if unsteady(r)]
    if not shaky:
        return None
    cells = "; ".join(f"{r['backend']} batch {r['batch']} ({r['mode']}): mean {r['latency_ms']['mean']:.2f} ms, "
                      f"median {r['latency_ms']['p50']:.2f} ms" for r in shaky[:6])
    more = f" and {len(shaky) - 6} more" if len(shaky) > 6 else ""
    return (f"unsteady timings: throughput is the batch over the mean call time, and in {len(shaky)} cell(s) the "
            f"mean is over {UNSTEADY_MEAN_OVER_MEDIAN}x the median, so a few slow calls decide it and its ratios "
            f"({cells}{more}); rerun with more --repeats on a quieter machine before reading them")


def busy_machine_note(env: dict[str, Any]) -> str | None:
    """A warning when other processes used >= 20% of the machine's CPU time during the run."""
    c = env.get("contention") or {}
    others = c.get("other_processes_cpu_fraction")
    if others is None or others < 0.2:
        return None
    return (f"the machine was busy: other processes used {100 * others:.0f}% of its CPU time during this run "
            f"({c.get('logical_cpus')} logical CPUs). They competed with the benchmark, so the numbers are noisy; "
            f"multi-threaded backends suffer most (each parallel region waits for its slowest, descheduled thread). "
            f"Interleaving spreads the noise "
            f"over all backends, but rerun on an idle machine before quoting them")


def _status_of(backends: list[_Backend], name: str) -> str:
    rec = next(b.record for b in backends if b.spec.name == name)
    return rec["status"] + (f": {rec['reason']}" if rec["reason"] else "")


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _measure_peaks(devices: set[str], settings: BenchSettings, peak_fn: Callable[..., dict[str, Any]] | None,
                   log: Callable[[str], None]) -> tuple[dict[str, float], dict[str, Any]]:
    """GEMM peak per device type, measured now; a failure is recorded with its reason."""
    if peak_fn is None:
        from .flops import measure_device_peak as peak_fn
    peaks: dict[str, float] = {}
    records: dict[str, Any] = {}
    for device in sorted(devices):
        try:
            rec = peak_fn(device=device, threads=settings.threads, repeats=settings.gemm_repeats)
        except Exception as e:  # noqa: BLE001 - the peak is context, not a reason to lose the run
            records[device] = {"error": _reason(e)}
            log(f"GEMM peak on {device}: not measured ({_reason(e)})")
            continue
        records[device] = rec
        peaks[device] = float(rec["gflops"])
        log(f"GEMM peak on {device}: {rec['gflops']:.1f} GFLOP/s (median {rec.get('gflops_median', 0):.1f}) "
            f"for {'x'.join(map(str, rec.get('shape', [])))}")
    return peaks, records


def _time_all(live: list[_Backend], settings: BenchSettings, timer_factory: Callable[[str], Any],
              probe_factory: Callable[[str], Any], clock: _Clock, flops_per_image: float | None,
              peaks: dict[str, float], log: Callable[[str], None]
              ) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]], KeyboardInterrupt | None]:
    """Every batch size in turn; past the deadline, the remaining batch sizes are recorded as skipped.

    Returns the result rows, the schedule, the round-by-round comparisons (``BackendSpec.versus``) and the
    interrupt that stopped the timing, if one did (Ctrl-C or SIGTERM): then the batch size in progress keeps its
    complete rounds and the rest are recorded as skipped, so that what was measured can still be written."""
    devices = {b.spec.device for b in live}
    timers = {d: timer_factory(d) for d in devices}
    probes = {d: probe_factory(d) for d in devices}
    for b in live:
        b.record["timer"] = getattr(timers[b.spec.device], "name", type(timers[b.spec.device]).__name__)
    rows: list[dict[str, Any]] = []
    paired: list[dict[str, Any]] = []
    schedule: dict[str, Any] = {}
    interrupt: KeyboardInterrupt | None = None
    for batch in settings.batches:
        if interrupt is not None:
            rows += _skipped_rows(live, settings, batch, interrupt_reason(interrupt))
            continue
        if clock.past_deadline():
            log(f"batch {batch}: skipped (run deadline of {settings.deadline_s:.0f}s reached)")
            rows += _skipped_rows(live, settings, batch, f"run deadline of {settings.deadline_s:.0f}s reached")
            continue
        cells: list[_Cell] = []
        rounds: list[list[str]] = []
        try:
            cells = _make_cells(live, batch, settings.modes, settings.seed)
            if cells:
                log(f"batch {batch}: {len(cells)} cells, up to {settings.repeats} interleaved rounds")
                schedule[str(batch)] = rounds
                time_batch(cells, settings, timers, probes, clock, log, schedule=rounds)
        except KeyboardInterrupt as e:
            interrupt = e
            log(f"batch {batch}: {interrupt_reason(e)} after {len(rounds)} complete round(s); what was measured "
                f"is kept")
            if not any(c.samples or c.error is not None for c in cells):  # a cell that failed says so, even then
                schedule.pop(str(batch), None)
                rows += _skipped_rows(live, settings, batch, interrupt_reason(e))
                continue
        try:
            with signals_held():  # a stop while the batch is summed up waits for its rows, then stops the timing
                _summarise_batch(cells, batch, flops_per_image, peaks, interrupt, rows, paired, log)
        except KeyboardInterrupt as e:
            interrupt = interrupt or e
    return rows, schedule, paired, interrupt


def _summarise_batch(cells: list[_Cell], batch: int, flops_per_image: float | None, peaks: dict[str, float],
                     interrupt: KeyboardInterrupt | None, rows: list[dict[str, Any]], paired: list[dict[str, Any]],
                     log: Callable[[str], None]) -> None:
    """The rows of one batch size's cells (those an interrupt left without a sample are skipped) and its
    round-by-round comparisons, appended to ``rows`` and ``paired`` and logged."""
    for cell in cells:
        row = summarise_cell(cell, batch, flops_per_image, peaks)
        if interrupt is not None and not cell.samples and cell.error is None:
            row.update(status="skipped", reason=interrupt_reason(interrupt))
        rows.append(row)
        if row["status"] == "ok":
            log(f"    {cell.key:<28} p50 {row['latency_ms']['p50']:9.3f} ms  {row['throughput_ips']:9.1f} img/s "
                f"(n={row['n_samples']})")
        else:
            log(f"    {cell.key:<28} {row['status']}: {row['reason']}")
    for comparison in paired_rows(cells, batch):
        paired.append(comparison)
        log(f"    {comparison['backend']} vs {comparison['versus']} ({comparison['mode']}), round by round: time "
            f"{paired_text(comparison)}")


def interrupt_reason(interrupt: BaseException) -> str:
    """How a run was stopped, for a skipped row: Ctrl-C (or a KeyboardInterrupt), SIGTERM or SIGHUP."""
    from moe_base.errors import stop_reason

    return stop_reason(interrupt)


def _skipped_rows(live: list[_Backend], settings: BenchSettings, batch: int, reason: str) -> list[dict[str, Any]]:
    """The rows of a batch size that was not timed (a deadline or an interrupt came first), with the reason."""
    return [{"backend": b.spec.name, "mode": m, "batch": batch, "device": b.spec.device, "status": "skipped",
             "reason": reason, "n_samples": 0, "calls_per_turn": 0, "latency_ms": None, "throughput_ips": None,
             "ratio_vs_baseline": None, "gflops": None, "fraction_of_peak": None, "memory": None}
            for b in live for m in settings.modes if _has_mode(b.spec, m)]


def paired_rows(cells: list[_Cell], batch: int) -> list[dict[str, Any]]:
    """Each cell whose backend names a ``versus`` against that backend's cell of the same mode, round by round.

    Turns are matched by round: both cells take one turn per round from the first, so the first n of each pair
    (n = the shorter, if one stopped on an error) were timed in the same rounds. Needs at least 2 rounds."""
    out = []
    for cell in cells:
        other_name = cell.backend.spec.versus
        other = next((c for c in cells if c.backend.spec.name == other_name and c.mode == cell.mode), None)
        if other is None:
            continue
        n = min(len(cell.turns), len(other.turns))
        if n < 2:
            continue
        c = paired_comparison(cell.turns[:n], other.turns[:n])
        out.append({"backend": cell.backend.spec.name, "versus": other_name, "mode": cell.mode, "batch": batch,
                    **c.to_dict()})
    return out
