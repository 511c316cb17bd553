"""The benchmark harness with fake runners, timers and probes: parity before timing, unavailable backends,
interleaving, the results schema, the Markdown report, the GPU method by injection."""
import copy
import json
import signal

import numpy as np
import pytest

from benchmarks.backends import parse_backends
from benchmarks.harness import (
    BackendSpec,
    BenchmarkInterrupted,
    BenchSettings,
    cpu_targets,
    round_order,
    run_benchmark,
)
from benchmarks.report import markdown_report, render_plot, validate_results
from benchmarks.timers import CudaEventTimer, PerfCounterTimer, make_timer
from moe_base.errors import Interrupted, MissingBackendError, NoGPUError
from runtime.base import BaseRunner


class FakeRunner(BaseRunner):
    """A 'model' that halves its input (plus ``offset``: a wrong backend), logging each call's name."""

    backend = "fake"

    def __init__(self, name, calls, offset=0.0, fail_at_batch=None, fail_activate=None, crop=False):
        super().__init__(name=name)
        self.calls, self.offset, self.fail_at_batch, self.fail_activate = calls, offset, fail_at_batch, fail_activate
        self.crop = crop
        self.deactivated = False

    def _activate_impl(self):
        if self.fail_activate:
            raise self.fail_activate

    def _deactivate_impl(self):
        self.deactivated = True

    def _infer_impl(self, x):
        if self.fail_at_batch is not None and len(x) == self.fail_at_batch:
            raise RuntimeError(f"out of memory at batch {len(x)}")
        self.calls.append(self.name)
        y = (x * 0.5 + self.offset).astype(np.float32)
        return y[..., :16] if self.crop else y

    def device_callable(self, x):  # a device-resident call (used only for backends on a CUDA device)
        return lambda: self._infer_impl(x)


class FakeTimer:
    """Runs the call, then reports a synthetic latency: per-backend milliseconds per image, from the call log."""

    name = "fake"

    def __init__(self, calls, ms_per_image):
        self.calls, self.ms_per_image = calls, ms_per_image
        self.timed: list[str] = []
        self.batch = 1

    def time(self, fn):
        before = len(self.calls)
        out = fn()
        name = self.calls[-1] if len(self.calls) > before else "?"
        self.timed.append(name)
        if isinstance(out, dict):  # e2e: {"denoised": array}
            self.batch = len(next(iter(out.values())))
        return self.ms_per_image[name] * self.batch / 1e3


class FakeProbe:
    def reset(self):
        pass

    def read(self):
        return {"peak_rss_mb": 100.0, "peak_rss_delta_mb": 1.5, "rss_window": "cell"}


FAKE_ENV = {"platform": "test", "cpu": {"model": "fake cpu", "usable_cores": 2}, "threads": {"requested": 2},
            "libraries": {"python": "3"}, "gpu": None, "load_average_start": [0.1, 0.1, 0.1]}
FLOPS = {"total": 100_000_000, "convention": "useful", "parts": {"all": 100_000_000}}


def fake_peak(device, threads=None, repeats=1):
    return {"gflops": 50.0, "gflops_median": 45.0, "shape": [4, 4, 4], "device": device}


def settings(**kw):
    base = {"batches": (1, 4), "warmup": 1, "repeats": 3, "min_repeats": 1, "slot_target_s": 1e-9, "max_inner": 1,
            "batch_budget_s": 60.0, "parity_images": 4, "threads": None}
    base.update(kw)
    return BenchSettings(**base)


class QuietMachine:
    """CpuContention's stand-in: no other process used the CPU (the real one reads /proc/stat, and whatever else
    ran on the test machine then decided whether the targets were judged)."""

    def result(self):
        return {"other_processes_cpu_fraction": 0.0, "own_cpu_fraction": 0.5, "logical_cpus": 2}


def run(specs, calls, ms, sets=None, **kw):
    timer = FakeTimer(calls, ms)
    kw.setdefault("timer_factory", lambda device: timer)
    doc = run_benchmark(specs, FakeRunner("reference", calls), sets or settings(), flops=FLOPS,
                        meta={"command": "test", "mode": "custom"},
                        **{"probe_factory": lambda d: FakeProbe(), "contention_factory": QuietMachine, **kw},
                        peak_fn=fake_peak, environment=copy.deepcopy(FAKE_ENV), log=lambda s: None)
    return doc, timer


def spec(name, calls, baseline=False, **runner_kw):
    runners = {}

    def make():
        runners["r"] = FakeRunner(name, calls, **runner_kw)
        return runners["r"]

    s = BackendSpec(name=name, make_runner=make, baseline=baseline, tolerance=("torch", "fp32"))
    s.built = runners  # lets a test look at the runner afterwards
    return s


def by_name(doc):
    return {b["name"]: b for b in doc["backends"]}


def test_a_backend_with_wrong_outputs_fails_parity_and_is_never_timed():
    calls = []
    specs = [spec("base", calls, baseline=True), spec("wrong", calls, offset=0.05), spec("fast", calls)]
    doc, timer = run(specs, calls, {"base": 10.0, "wrong": 0.001, "fast": 1.0})
    wrong = by_name(doc)["wrong"]
    assert wrong["status"] == "failed-parity" and "max abs" in wrong["reason"]
    assert wrong["parity"]["passed"] is False and wrong["modes"] == []
    assert "wrong" not in timer.timed  # never timed, although it would have been the "fastest"
    assert calls.count("wrong") == 3  # first inference, second inference, parity batch: nothing more
    assert specs[1].built["r"].deactivated
    assert not [r for r in doc["results"] if r["backend"] == "wrong"]
    assert {v["backend"] for m in doc["best"].values() for v in m.values()} == {"fast"}
    validate_results(doc)
    md = markdown_report(doc)
    assert "**wrong**: failed-parity" in md and "FAIL" in md


def test_outputs_of_the_wrong_shape_fail_parity_without_ending_the_run():
    calls = []
    doc, timer = run([spec("base", calls, baseline=True), spec("cropped", calls, crop=True)], calls, {"base": 1.0})
    cropped = by_name(doc)["cropped"]
    assert cropped["status"] == "failed-parity" and "could not be compared" in cropped["reason"]
    assert "cropped" not in timer.timed and by_name(doc)["base"]["status"] == "ok"
    validate_results(doc)


def test_unavailable_backends_are_listed_with_their_reasons():
    calls = []

    def no_trt():
        raise MissingBackendError("the TensorRT backend needs the Python package 'tensorrt'")

    specs = [spec("base", calls, baseline=True),
             BackendSpec("trt-plugin-fp16", None, unavailable="no engine given: pass --engine"),
             BackendSpec("ort-cuda", no_trt),
             spec("bad-activate", calls, fail_activate=MissingBackendError("no CUDA GPU here"))]
    doc, timer = run(specs, calls, {"base": 10.0})
    b = by_name(doc)
    assert b["trt-plugin-fp16"] == {**b["trt-plugin-fp16"], "status": "unavailable",
                                    "reason": "no engine given: pass --engine"}
    assert b["ort-cuda"]["status"] == "unavailable" and "tensorrt" in b["ort-cuda"]["reason"]
    assert b["ort-cuda"]["reason"].startswith("MissingBackendError")
    assert b["bad-activate"]["status"] == "unavailable" and "no CUDA GPU" in b["bad-activate"]["reason"]
    assert set(timer.timed) == {"base"}
    validate_results(doc)
    md = markdown_report(doc)
    assert "**ort-cuda**: unavailable: MissingBackendError" in md and "no engine given" in md


def test_timing_interleaves_backends_round_robin_in_the_round_order():
    calls = []
    names = ["a", "b", "c"]
    specs = [spec(n, calls, baseline=n == "a") for n in names]
    doc, timer = run(specs, calls, dict.fromkeys(names, 1.0), settings(batches=(2,), repeats=4, warmup=1))
    # timed calls: 3 estimates (one per cell, in order), then 4 rounds of one call per cell: rotated every second
    # round, reversed every other one
    expected = names + ["a", "b", "c", "b", "a", "c", "b", "c", "a", "c", "b", "a"]
    assert timer.timed == expected
    assert doc["schedule"]["2"] == [[f"{n}/e2e" for n in round_order(names, r)] for r in range(4)]
    for rnd in doc["schedule"]["2"]:
        assert sorted(rnd) == ["a/e2e", "b/e2e", "c/e2e"]
    assert all(r["n_samples"] == 4 for r in doc["results"])


def test_fresh_each_round_renews_the_runner_before_its_turn_and_times_only_warm_calls():
    calls = []
    specs = [spec("a", calls, baseline=True), spec("b", calls)]
    specs[1].fresh_each_round = True
    activations = []
    runner_b = None

    def make():
        nonlocal runner_b
        runner_b = FakeRunner("b", calls)
        original = runner_b._activate_impl
        runner_b._activate_impl = lambda: (activations.append(len(calls)), original())[1]
        return runner_b

    specs[1].make_runner = make
    doc, timer = run(specs, calls, {"a": 1.0, "b": 1.0}, settings(batches=(2,), repeats=3, warmup=1))
    # one activation to start, then one per round after the first: 3 rounds -> 2 renewals
    assert len(activations) == 3
    assert sum(1 for t in timer.timed if t == "b") == 1 + 3  # the estimate and one per round
    assert by_name(doc)["b"]["status"] == "ok" and all(r["n_samples"] == 3 for r in doc["results"])
    # each renewal is warmed up by --warmup untimed calls of b, as the start is (it was two, whatever was asked)
    counts = []
    for warmup in (1, 4):
        calls.clear()
        specs = [spec("a", calls, baseline=True), spec("b", calls)]
        specs[1].fresh_each_round = True
        run(specs, calls, {"a": 1.0, "b": 1.0}, settings(batches=(2,), repeats=3, warmup=warmup))
        counts.append(calls.count("b"))
    assert counts[1] - counts[0] == (1 + 2) * (4 - 1)  # the start and the 2 renewals


def test_round_order_puts_each_cell_everywhere_and_after_each_other_both_ways():
    """Rotation alone kept each cell right after the same one unless it ran first: a carry-over from one cell (a
    warm cache, a torn-down session) always met the same neighbour, and the pair compared round by round ran in one
    order in 4 rounds of 5"""
    assert [round_order([1, 2, 3], r) for r in range(6)] == [[1, 2, 3], [2, 1, 3], [2, 3, 1], [3, 2, 1], [3, 1, 2],
                                                             [1, 3, 2]]
    assert round_order([], 3) == []
    for n in (2, 3, 4, 5):
        cells = list(range(n))
        orders = [round_order(cells, r) for r in range(2 * n)]
        assert all(sorted(o) == cells for o in orders)
        assert all({o[i] for o in orders} == set(cells) for i in range(n))  # every cell at every place
        follows = {(o[i], o[i + 1]) for o in orders for i in range(n - 1)}
        assert all((a, b) in follows and (b, a) in follows for a in cells for b in cells if (a - b) % n in (1, n - 1))
        if n >= 3:  # reversing the same rotation ran the cell that ended a round first in the next, twice in a row
            run = [c for o in orders for c in o]
            assert all(a != b for a, b in zip(run, run[1:]))


def test_ratios_compute_limit_and_targets_from_the_same_run():
    calls = []
    specs = [spec("base", calls, baseline=True), spec("fast", calls)]
    doc, _ = run(specs, calls, {"base": 10.0, "fast": 0.5}, settings(batches=(1, 64)))
    rows = {(r["backend"], r["batch"]): r for r in doc["results"]}
    fast64 = rows[("fast", 64)]
    assert fast64["latency_ms"]["p50"] == pytest.approx(32.0)
    assert fast64["throughput_ips"] == pytest.approx(2000.0)
    assert fast64["ratio_vs_baseline"]["throughput"] == pytest.approx(20.0)
    assert fast64["ratio_vs_baseline"]["latency_p50"] == pytest.approx(0.05)
    assert rows[("base", 64)]["ratio_vs_baseline"] == {"throughput": 1.0, "latency_p50": 1.0}
    assert fast64["gflops"] == pytest.approx(200.0) and fast64["fraction_of_peak"] == pytest.approx(4.0)
    assert doc["best"]["e2e"]["64"]["backend"] == "fast"
    t = doc["targets"]
    assert t["batch64_throughput_ratio"]["met"] and t["batch1_latency_ratio"]["value"] == pytest.approx(0.05)
    assert t["compute_limit_ips"] == pytest.approx(500.0)


def test_the_batch_1_latency_target_is_judged_on_the_lowest_p50():
    """It took the p50 of the backend with the best throughput at batch 1, which need not have the lowest p50 (its
    mean can be lower with a higher median): 'NOT met' could be printed when a timed backend met it"""
    def row(backend, ips, p50):
        return {"backend": backend, "batch": 1, "mode": "e2e", "device": "cpu", "status": "ok", "throughput_ips": ips,
                "latency_ms": {"p50": p50}, "ratio_vs_baseline": {"throughput": ips / 100, "latency_p50": p50 / 10}}
    rows = [row("base", 100, 10.0), row("steady", 800, 1.2), row("bursty", 900, 1.3)]
    t = cpu_targets(rows, None, {})
    assert t["batch1_latency_ratio"] == {"target": 0.125, "value": pytest.approx(0.12), "backend": "steady",
                                         "met": True}


def test_targets_are_not_judged_from_a_busy_machine_or_unsteady_cells():
    """A 3-round run with 72% of the CPU taken by other processes printed 'batch 1 latency 1/72 -> met' (the 2-thread
    baseline slowed 6x under the load, ONNX Runtime far less), where the quiet run misses the target: the verdict
    now waits for a steady run, and the report says why."""
    from benchmarks.report import _targets_lines

    def row(backend, batch, p50, mean=None):
        return {"backend": backend, "batch": batch, "mode": "e2e", "device": "cpu", "status": "ok",
                "throughput_ips": batch / (mean or p50) * 1e3, "latency_ms": {"p50": p50, "mean": mean or p50},
                "ratio_vs_baseline": {"throughput": 10.0 * (mean or p50) / p50, "latency_p50": p50 / 100}}
    steady = [row("base", 1, 100.0), row("ort", 1, 10.0), row("base", 64, 100.0), row("ort", 64, 10.0)]
    t = cpu_targets(steady, None, {}, baseline="base")
    assert t["batch1_latency_ratio"]["met"] is True and "not_judged" not in t["batch1_latency_ratio"]
    t = cpu_targets(steady, None, {}, busy="the machine was busy: others used 72%", baseline="base")
    assert t["batch1_latency_ratio"]["met"] is None and t["batch64_throughput_ratio"]["met"] is None
    assert "not judged: the machine was busy" in "\n".join(_targets_lines(t))
    shaky = [row("base", 1, 100.0, mean=400.0), row("ort", 1, 10.0), row("base", 64, 100.0), row("ort", 64, 10.0)]
    t = cpu_targets(shaky, None, {}, baseline="base")
    assert t["batch1_latency_ratio"]["met"] is None and "unsteady timings (base batch 1)" in t["batch1_latency_ratio"][
        "not_judged"]
    assert t["batch64_throughput_ratio"]["met"] is True  # its own cells were steady


def test_the_batch_64_cpu_target_stands_when_a_gpu_backend_is_faster():
    """The batch-64 CPU target took the fastest backend of any device at 64; when that ran on a GPU, the target (and
    its share of the compute limit) was left out, though a CPU backend met it."""
    def row(backend, device, ips):
        return {"backend": backend, "batch": 64, "mode": "e2e", "device": device, "status": "ok", "throughput_ips": ips,
                "latency_ms": {"p50": 64_000 / ips}, "ratio_vs_baseline": {"throughput": ips / 80,
                                                                          "latency_p50": 80 / ips}}
    rows = [row("torch-seed", "cpu", 80), row("ort-cpu", "cpu", 1000), row("torch-masked-cuda", "cuda", 30000)]
    t = cpu_targets(rows, 1e6, {"cpu": 1e12})
    assert t["batch64_throughput_ratio"] == {"target": 10.0, "value": pytest.approx(12.5), "backend": "ort-cpu",
                                             "met": True}
    assert t["batch64_fraction_of_limit"] == pytest.approx(1000 / t["compute_limit_ips"])


def test_no_ratios_when_the_baseline_failed():
    calls = []
    specs = [spec("base", calls, baseline=True, offset=1.0), spec("fast", calls)]
    doc, _ = run(specs, calls, {"base": 10.0, "fast": 0.5})
    assert all(r["ratio_vs_baseline"] is None for r in doc["results"])
    assert any("baseline base was not timed" in n for n in doc["notes"])
    validate_results(doc)


def test_an_error_during_timing_marks_that_cell_only():
    calls = []
    specs = [spec("base", calls, baseline=True), spec("flaky", calls, fail_at_batch=3)]  # parity batch is 4
    doc, _ = run(specs, calls, {"base": 1.0, "flaky": 1.0}, settings(batches=(1, 3, 2)))
    rows = {(r["backend"], r["batch"]): r for r in doc["results"]}
    assert rows[("flaky", 3)]["status"] == "error" and "out of memory" in rows[("flaky", 3)]["reason"]
    assert rows[("base", 3)]["status"] == "ok"
    assert any("out of memory" in n for n in by_name(doc)["flaky"]["notes"])
    assert rows[("flaky", 1)]["status"] == "ok" and rows[("flaky", 2)]["status"] == "ok"
    validate_results(doc)


def test_deadline_skips_the_remaining_batch_sizes():
    calls = []
    clock = iter(range(0, 10_000, 10))  # every reading of the clock is 10 s later
    doc, _ = run([spec("base", calls, baseline=True)], calls, {"base": 1.0},
                 settings(batches=(1, 2, 4), deadline_s=25.0), now=lambda: next(clock))
    status = {r["batch"]: r["status"] for r in doc["results"]}
    assert status[1] == "ok" and status[4] == "skipped"
    assert "deadline" in next(r["reason"] for r in doc["results"] if r["batch"] == 4)
    validate_results(doc)


def test_past_half_the_deadline_no_more_backends_are_prepared():
    """The deadline was read only between batch sizes: a GPU session's three torch.compile variants (15-60 s each to
    prepare) could use it up before anything was timed. Past half of it, the backends not yet prepared are listed
    as not prepared, saying why and how to time them, and those prepared are timed."""
    calls = []
    clock = iter([0] + [20] * 10_000)  # the start, then 20 s on: past half of the 30 s deadline, before its end
    specs = [spec("base", calls, baseline=True), spec("late", calls)]
    doc, _ = run(specs, calls, {"base": 1.0, "late": 1.0}, settings(batches=(1,), deadline_s=30.0),
                 now=lambda: next(clock))
    late = by_name(doc)["late"]
    assert late["status"] == "unavailable" and late["reason"].startswith("not prepared: 50% of the run's --deadline "
                                                                         "(30 s) had passed before its turn")
    assert "--backends late" in late["reason"]
    assert {r["backend"] for r in doc["results"] if r["status"] == "ok"} == {"base"}
    validate_results(doc)


class InterruptingTimer(FakeTimer):
    """A FakeTimer that is stopped by SIGTERM in its ``at``-th timed call at batch ``batch`` (the call itself ran)."""

    def __init__(self, calls, ms_per_image, at, batch=4):
        super().__init__(calls, ms_per_image)
        self.at, self.at_batch, self.stop_batch = at, 0, batch

    def time(self, fn):
        t = super().time(fn)
        if self.batch == self.stop_batch:
            self.at_batch += 1
            if self.at_batch == self.at:
                raise Interrupted("", 15)
        return t


def test_an_interrupt_during_timing_keeps_what_was_measured():
    """A bench stopped by SIGTERM (a GPU session's step limit) or Ctrl-C lost every number it had measured: the
    results were written only at the end. The interrupt now carries the document: the batch sizes done, the one in
    progress with its complete rounds only (a half round would favour the cells that had their turn), the rest
    skipped with the reason; the runners are released as on any other exit."""
    calls = []
    specs = [spec("base", calls, baseline=True), spec("other", calls)]
    # at batch 4, timed calls are: 2 estimates, round 1 (2 turns), round 2: 'other' goes first, then 'base' is stopped
    timer = InterruptingTimer(calls, {"base": 1.0, "other": 2.0}, at=6)
    with pytest.raises(BenchmarkInterrupted) as caught:
        run(specs, calls, {}, settings(batches=(1, 4, 8)), timer_factory=lambda device: timer)
    assert caught.value.signum == 15 and isinstance(caught.value, KeyboardInterrupt)
    doc = caught.value.doc
    validate_results(doc)
    rows = {(r["backend"], r["batch"]): r for r in doc["results"]}
    assert all(rows[(n, 1)]["status"] == "ok" and rows[(n, 1)]["n_samples"] == 3 for n in ("base", "other"))
    assert all(rows[(n, 4)]["status"] == "ok" and rows[(n, 4)]["n_samples"] == 1 for n in ("base", "other"))
    assert rows[("other", 4)]["ratio_vs_baseline"]["throughput"] == pytest.approx(0.5)
    assert len(doc["schedule"]["4"]) == 1 and "8" not in doc["schedule"]
    assert all(rows[(n, 8)]["status"] == "skipped" and rows[(n, 8)]["reason"] == "stopped by SIGTERM"
               for n in ("base", "other"))
    assert any("stopped by SIGTERM during the timing" in n and "batch sizes timed: 1, 4" in n for n in doc["notes"])
    assert all(s.built["r"].deactivated for s in specs)

    calls.clear()  # stopped in its first timed call at batch 4 (an estimate): nothing of batch 4 is kept
    timer = InterruptingTimer(calls, {"base": 1.0, "other": 2.0}, at=1)
    with pytest.raises(BenchmarkInterrupted) as caught:
        run(specs, calls, {}, settings(batches=(1, 4)), timer_factory=lambda device: timer)
    rows = {(r["backend"], r["batch"]): r for r in caught.value.doc["results"]}
    assert rows[("base", 1)]["status"] == "ok" and rows[("base", 4)]["status"] == "skipped"
    assert "4" not in caught.value.doc["schedule"]
    validate_results(caught.value.doc)


class GrowingProbe(FakeProbe):
    """A memory probe whose every turn peaks 10 MB higher than the one before."""

    def __init__(self):
        self.reads = 0

    def read(self):
        self.reads += 1
        return {"peak_rss_mb": 100.0 + 10 * self.reads}


def test_an_interrupted_round_takes_back_its_memory_peaks_with_its_times():
    """The round in progress at a stop was taken back from the times but not from the memory peaks: a cell kept the
    peak of a turn whose time was dropped."""
    calls = []
    specs = [spec("base", calls, baseline=True), spec("other", calls)]
    timer = InterruptingTimer(calls, {"base": 1.0, "other": 2.0}, at=6)  # round 2: 'other' has its turn, 'base' stops
    probe = GrowingProbe()
    with pytest.raises(BenchmarkInterrupted) as caught:
        run(specs, calls, {}, settings(batches=(4,)), timer_factory=lambda device: timer,
            probe_factory=lambda device: probe)
    assert probe.reads == 3  # round 1: base 110, other 120; round 2: other 130, taken back
    rows = {r["backend"]: r for r in caught.value.doc["results"]}
    assert rows["base"]["memory"]["peak_rss_mb"] == 110.0 and rows["other"]["memory"]["peak_rss_mb"] == 120.0


class SampledProbe(FakeProbe):
    """A probe of the device-wide use, which has no peak of its own (CudaMemoryProbe): sampled between calls."""

    def __init__(self):
        self.samples = 0

    def sample(self):
        self.samples += 1


def test_the_device_wide_memory_is_sampled_after_every_timed_call():
    """gpu_used_mb was reported as a peak but read once, at the end of each turn: scratch memory ONNX Runtime,
    TensorRT or cuDNN freed before the turn ended was never seen."""
    calls = []
    probe = SampledProbe()
    doc, _ = run([spec("base", calls, baseline=True)], calls, {"base": 1.0}, settings(batches=(4,), max_inner=3,
                                                                                       slot_target_s=1.0),
                 probe_factory=lambda device: probe)
    row = doc["results"][0]
    assert probe.samples == len(row["samples_ms"]) > 0


def test_a_cell_that_failed_before_a_stop_says_so_rather_than_skipped():
    """Stopped before any cell of a batch size had a sample, every cell was recorded as skipped, including one whose
    warm-up had already failed (out of memory): the run then hid the error."""
    calls = []
    specs = [spec("base", calls, baseline=True), spec("other", calls, fail_at_batch=8)]
    timer = InterruptingTimer(calls, {"base": 1.0, "other": 2.0}, at=1, batch=8)  # base's first timed call at 8
    with pytest.raises(BenchmarkInterrupted) as caught:
        run(specs, calls, {}, settings(batches=(1, 8)), timer_factory=lambda device: timer)
    rows = {(r["backend"], r["batch"]): r for r in caught.value.doc["results"]}
    assert rows[("other", 8)]["status"] == "error" and "out of memory at batch 8" in rows[("other", 8)]["reason"]
    assert rows[("base", 8)]["status"] == "skipped" and rows[("base", 8)]["reason"] == "stopped by SIGTERM"
    assert rows[("base", 1)]["status"] == "ok"
    validate_results(caught.value.doc)


def test_a_stop_while_a_batch_size_is_summed_up_keeps_its_rows():
    """Ctrl-C while a batch size's rows were being made and logged escaped as a bare KeyboardInterrupt: nothing was
    written. Now the rows are made first, then the stop goes on as one during the timing."""
    calls = []
    specs = [spec("base", calls, baseline=True), spec("other", calls)]
    said = []

    def log(line):
        said.append(line)
        if "p50" in line and len([s for s in said if "p50" in s]) == 1:
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, in the first row's log line

    with pytest.raises(BenchmarkInterrupted) as caught:
        run_benchmark(specs, FakeRunner("reference", calls), settings(batches=(1, 4)), flops=FLOPS,
                      meta={"command": "test", "mode": "custom"}, probe_factory=lambda d: FakeProbe(),
                      timer_factory=lambda d: FakeTimer(calls, {"base": 1.0, "other": 2.0}), peak_fn=fake_peak,
                      environment=copy.deepcopy(FAKE_ENV), log=log)
    rows = {(r["backend"], r["batch"]): r["status"] for r in caught.value.doc["results"]}
    assert rows == {("base", 1): "ok", ("other", 1): "ok", ("base", 4): "skipped", ("other", 4): "skipped"}
    assert caught.value.signum == 2
    validate_results(caught.value.doc)


def test_gpu_method_compute_and_e2e_modes_by_injection():
    """A backend on a (fake) CUDA device with a device-resident call gets both modes; a CPU backend only e2e."""
    calls = []
    devices = []
    gpu = spec("gpu-backend", calls)
    gpu.device = "cuda"
    cpu = spec("cpu-backend", calls, baseline=True)  # its runner's device call is ignored on a CPU
    timer = FakeTimer(calls, {"gpu-backend": 0.1, "cpu-backend": 1.0})

    def timer_factory(device):
        devices.append(device)
        return timer

    doc, _ = run([cpu, gpu], calls, {}, settings(modes=("compute", "e2e")), timer_factory=timer_factory)
    modes = {(r["backend"], r["mode"]) for r in doc["results"]}
    assert modes == {("gpu-backend", "compute"), ("gpu-backend", "e2e"), ("cpu-backend", "e2e")}
    assert set(devices) == {"cpu", "cuda"}
    assert by_name(doc)["gpu-backend"]["modes"] == ["compute", "e2e"]
    assert set(doc["compute_peak"]) == {"cpu", "cuda"}
    validate_results(doc)
    md = markdown_report(doc)
    assert "compute only (device-resident I/O)" in md and "end to end" in md


def test_results_document_matches_the_schema_and_is_plain_json():
    calls = []
    doc, _ = run([spec("base", calls, baseline=True), spec("other", calls)], calls, {"base": 2.0, "other": 1.0})
    validate_results(doc)
    again = json.loads(json.dumps(doc, allow_nan=False))
    validate_results(again)
    assert again["schema"] == "moe-denoise/bench" and again["schema_version"] == 1
    row = again["results"][0]
    assert set(row) >= {"backend", "mode", "batch", "status", "latency_ms", "throughput_ips", "ratio_vs_baseline",
                        "gflops", "fraction_of_peak", "memory", "n_samples"}
    assert set(row["latency_ms"]) == {"n", "mean", "std", "min", "p50", "p90", "p99", "max"}


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("environment"), "results.environment: missing"),
    (lambda d: d.__setitem__("schema_version", "1"), "schema_version: expected int"),
    (lambda d: d["results"][0].__setitem__("batch", 1.5), "batch: expected int"),
    (lambda d: d["results"][0]["latency_ms"].__setitem__("p50", float("nan")), "not a finite number"),
    (lambda d: d["backends"][0].__setitem__("status", "fast"), "not in"),
    (lambda d: d["backends"][1].__setitem__("status", "failed-parity"), "did not pass parity"),
    (lambda d: d["backends"][1].__setitem__("reason", None) or d["backends"][1].__setitem__("status", "error"),
     "needs a reason"),
    (lambda d: d["results"][0].__setitem__("latency_ms", None), "status ok without latency_ms"),
    (lambda d: d["backends"][0].__setitem__("baseline", 1), "baseline: expected bool"),
])
def test_schema_validation_rejects_broken_documents(mutate, message):
    calls = []
    doc, _ = run([spec("base", calls, baseline=True), spec("other", calls)], calls, {"base": 2.0, "other": 1.0})
    mutate(doc)
    with pytest.raises(ValueError, match="do not match schema") as e:
        validate_results(doc)
    assert message in str(e.value)


def test_markdown_table_renders_backends_by_batch_sizes():
    calls = []
    doc, _ = run([spec("base", calls, baseline=True), spec("fast", calls)], calls, {"base": 10.0, "fast": 1.0})
    md = markdown_report(doc)
    assert "| backend | batch 1 | batch 4 |" in md
    assert "| base (baseline) | 10.0 ms · 100/s · 1.00x | 40.0 ms · 100/s · 1.00x |" in md
    assert "| fast | 1.00 ms · 1000/s · 10.00x | 4.00 ms · 1000/s · 10.00x |" in md
    assert "| base | ok | pass (0.0e+00, inf) |" in md
    assert "1.00 MFLOP" not in md and "100.00 MFLOP per image" in md


def test_plot_is_a_png():
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'plot' extra; the CLI skips the plot without it")
    calls = []
    doc, _ = run([spec("base", calls, baseline=True), spec("fast", calls)], calls, {"base": 10.0, "fast": 1.0})
    png = render_plot(doc)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_settings_are_validated_with_clear_messages():
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        settings(warmup=0).validate()
    with pytest.raises(ValueError, match="batches must be positive"):
        settings(batches=(0,)).validate()
    with pytest.raises(ValueError, match="modes must be"):
        settings(modes=("fast",)).validate()
    for bad in (-1.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=f"deadline_s must be finite seconds > 0 .*got {bad}"):
            settings(deadline_s=bad).validate()
        with pytest.raises(ValueError, match=f"batch_budget_s finite seconds > 0, got .* and {bad}"):
            settings(batch_budget_s=bad).validate()
    calls = []
    with pytest.raises(ValueError, match="unique"):
        run([spec("a", calls), spec("a", calls)], calls, {})


def test_backend_names_are_checked():
    assert parse_backends("torch-seed,ort-cpu", ()) == ("torch-seed", "ort-cpu")
    assert parse_backends(None, ("x",)) == ("x",)
    assert "trt-plugin-fp16" in parse_backends("all", ())
    with pytest.raises(ValueError, match="unknown backend.*choose from"):
        parse_backends("torch-seed,tensorflow", ())


class FakeEvent:
    def __init__(self, log, name):
        self.log, self.name, self.t = log, name, None

    def record(self):
        self.log.append(f"record {self.name}")

    def synchronize(self):
        self.log.append(f"sync {self.name}")

    def elapsed_time(self, end):
        return 2.5  # ms


class FakeCuda:
    def __init__(self, log):
        self.log, self._n = log, 0

    def is_available(self):
        return True

    def Event(self, enable_timing):
        self._n += 1
        return FakeEvent(self.log, "start" if self._n == 1 else "end")

    def synchronize(self):
        self.log.append("device sync")


class FakeTorch:
    def __init__(self, log):
        self.cuda = FakeCuda(log)


def test_cuda_event_timer_synchronises_around_the_call():
    log = []
    timer = CudaEventTimer(FakeTorch(log))
    seconds = timer.time(lambda: log.append("work"))
    assert seconds == pytest.approx(2.5e-3)
    assert log == ["device sync", "record start", "work", "device sync", "record end", "sync end"]


def test_timer_choice_without_a_gpu():
    import torch

    assert isinstance(make_timer("cpu"), PerfCounterTimer)
    if not torch.cuda.is_available():
        assert isinstance(make_timer("cuda"), PerfCounterTimer)  # host timer: the runners' calls are synchronous
        with pytest.raises(NoGPUError, match="CUDA GPU"):
            CudaEventTimer()


def test_the_host_timer_reads_its_clock_around_the_call_and_says_seconds(monkeypatch):
    """PerfCounterTimer reads perf_counter_ns just before and just after the call, and returns seconds (a fake
    clock: 2.5 ms between its readings)."""
    import types

    import benchmarks.timers as timers

    log = []
    readings = iter([1_000, 2_501_000])

    def clock():
        log.append("clock")
        return next(readings)

    monkeypatch.setattr(timers, "time", types.SimpleNamespace(perf_counter_ns=clock))
    assert PerfCounterTimer().time(lambda: log.append("work")) == pytest.approx(2.5e-3)
    assert log == ["clock", "work", "clock"]


def test_rss_probe_sees_an_allocation_in_its_window():
    from benchmarks.memory import RssProbe, current_rss_mb

    if current_rss_mb() is None:
        pytest.skip("no /proc/self/status on this platform: the probe reports the lifetime peak instead")
    probe = RssProbe()
    probe.reset()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    block += 1
    got = probe.read()
    del block
    assert got["peak_rss_mb"] > 64
    if got["rss_window"] == "cell":
        assert got["peak_rss_delta_mb"] >= 60


def test_gpu_preset_is_one_bounded_command(tmp_path):
    """--gpu: CUDA-event method in both modes, a sweep into the thousands, and a deadline that keeps the whole
    command under 8 minutes (deadline + one batch budget + margin for setup and the report)."""
    from moe_denoise.cli import build_parser
    from moe_denoise.commands.bench import settings_from_args

    args = build_parser().parse_args(["bench", "--gpu"])
    s = settings_from_args(args, "gpu")
    assert set(s.modes) == {"compute", "e2e"} and max(s.batches) >= 4096 and 1 in s.batches
    assert s.deadline_s is not None and s.deadline_s + s.batch_budget_s + 60 <= 8 * 60
    quick = settings_from_args(build_parser().parse_args(["bench", "--quick", "--batches", "1,2"]), "quick")
    assert quick.batches == (1, 2) and quick.deadline_s is not None and quick.deadline_s < 120
    with pytest.raises(ValueError, match="--batches must be"):
        settings_from_args(build_parser().parse_args(["bench", "--batches", "0"]), "full")


def test_engine_builds_without_tensorrt_give_reasons(tmp_path):
    from moe_base.optional import available
    from moe_denoise.commands.bench import build_engines

    if available("tensorrt")[0]:
        pytest.skip("tensorrt is importable here: engine builds are exercised by the GPU command instead")
    built, failed = build_engines(("torch-masked", "trt-plugin-fp16", "trt-portable-fp32"), {}, tmp_path / "w",
                                  None, tmp_path, (1, 8), log=lambda s: None)
    assert built == {} and set(failed) == {"trt-plugin-fp16", "trt-portable-fp32"}
    assert all("cannot build an engine here" in r and "tensorrt" in r for r in failed.values())
    assert build_engines(("trt-portable-fp16",), {"trt-portable-fp16": tmp_path / "x.engine"}, tmp_path / "w", None,
                         tmp_path, (1,), log=lambda s: None) == ({}, {})


def test_engine_builds_export_their_graphs_with_the_weights_check_the_run_was_given(tmp_path, monkeypatch):
    """bench --skip-weights-check reached the ONNX exports and the torch runners, not the engine builds' own graph
    exports (TensorRT 11's fp16 graph, a trt-* graph no ort backend shares): edited weights were refused there,
    with advice to pass the option already passed."""
    import sys
    import types

    import export.engine
    from moe_denoise.commands import bench

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="11.4.0.106"))
    exported = []

    def export_graph(flavor, optimize, precision, weights, preset, cache, threads, log, verify=True):
        exported.append(verify)
        return tmp_path / f"{flavor}.{precision}.onnx"

    monkeypatch.setattr(bench, "export_graph", export_graph)
    monkeypatch.setattr(export.engine, "build_engine", lambda onnx, out, *a, **k: types.SimpleNamespace(path=out))
    for verify in (False, True):
        built, failed = bench.build_engines(("trt-plugin-fp16",), {}, tmp_path / "w", None, tmp_path, (1, 8),
                                            log=lambda s: None, verify=verify)
        assert failed == {} and set(built) == {"trt-plugin-fp16"}
    assert exported == [False, True]


def test_versus_compares_two_backends_round_by_round_and_reports_it():
    """... and the rows keep every timed call and each round's turn, so that both can be redone from the file (the
    docs said 'with every timing'; only the statistics were written)"""
    from benchmarks.stats import latency_stats, paired_comparison

    calls = []
    specs = [spec("base", calls, baseline=True), spec("opt", calls), spec("plain", calls)]
    specs[1].versus = "plain"
    # opt is 10% faster than plain in every round: a consistent gain, found and shown
    doc, _ = run(specs, calls, {"base": 5.0, "opt": 0.9, "plain": 1.0}, settings(batches=(2,), repeats=6))
    validate_results(doc)
    (c,) = doc["paired"]
    assert (c["backend"], c["versus"], c["batch"], c["mode"], c["n"], c["wins"]) == ("opt", "plain", 2, "e2e", 6, 6)
    assert c["ratio"] == pytest.approx(0.9) and c["high"] < 1.0 and c["verdict"] == "faster"
    md = markdown_report(doc)
    assert "## Round by round" in md
    assert "- opt vs plain, batch 2 (e2e): x0.900 [0.900, 0.900], faster in 6/6 rounds: faster" in md
    rows = {r["backend"]: r for r in doc["results"]}  # the written timings redo the statistics and the comparison
    assert all(len(r["samples_ms"]) == r["n_samples"] and len(r["turns_ms"]) == 6 for r in rows.values())
    assert latency_stats([t / 1e3 for t in rows["opt"]["samples_ms"]]).to_dict() == rows["opt"]["latency_ms"]
    redone = paired_comparison([t / 1e3 for t in rows["opt"]["turns_ms"]], [t / 1e3 for t in rows["plain"]["turns_ms"]])
    assert (redone.ratio, redone.low, redone.high, redone.wins) == pytest.approx((c["ratio"], c["low"], c["high"], 6))
    broken = copy.deepcopy(doc)
    broken["paired"][0]["n"] = "6"
    with pytest.raises(ValueError, match="paired.*n: expected int"):
        validate_results(broken)


def test_versus_needs_two_rounds_and_a_counterpart():
    calls = []
    specs = [spec("base", calls, baseline=True), spec("opt", calls)]
    specs[1].versus = "missing"
    doc, _ = run(specs, calls, {"base": 5.0, "opt": 1.0}, settings(batches=(2,), repeats=3))
    assert doc["paired"] == [] and "Round by round" not in markdown_report(doc)
    specs = [spec("base", calls, baseline=True), spec("opt", calls)]
    specs[1].versus = "base"
    doc, _ = run(specs, calls, {"base": 5.0, "opt": 1.0}, settings(batches=(2,), repeats=1))
    assert doc["paired"] == []  # one round is no comparison


def test_the_optimised_ort_graph_is_compared_with_the_plain_one(tmp_path):
    from benchmarks.backends import CPU_BACKENDS, BackendInputs, build_specs

    specs = {s.name: s for s in build_specs(CPU_BACKENDS, BackendInputs(weights=tmp_path / "w"), "torch-seed")}
    assert specs["ort-cpu"].versus == "ort-cpu-noopt"
    assert [n for n, s in specs.items() if s.versus] == ["ort-cpu"]


def test_cells_whose_throughput_a_few_slow_calls_decide_are_named():
    """Throughput is batch / mean call time (stalls count), p50 the median: one stall of 510 ms among calls of 9 ms
    made a baseline's throughput a quarter of what its median says, and every ratio against it 4x too large, without
    a word. The run's notes now name such cells."""
    from benchmarks.harness import unsteady_note

    def row(backend, p50, mean, status="ok"):
        return {"backend": backend, "batch": 1, "mode": "e2e", "status": status,
                "latency_ms": {"p50": p50, "mean": mean} if status == "ok" else None}

    steady = [row("torch-seed", 9.2, 9.6), row("ort-cpu", 1.0, 1.4), row("trt", None, None, "unavailable")]
    assert unsteady_note(steady) is None
    note = unsteady_note([*steady, row("torch-masked", 9.27, 38.8)])
    assert "in 1 cell(s)" in note and "torch-masked batch 1 (e2e): mean 38.80 ms, median 9.27 ms" in note
    assert "more --repeats" in note and "torch-seed" not in note


def test_a_batch_size_given_twice_is_refused():
    """--batches 1,1 timed batch 1 twice: two rows per backend at that batch in results.json, the first sweep's
    schedule overwritten by the second's, the table showing the second, and 'best' and the ratios pairing a backend's
    row of one sweep with the baseline's of the other => refused before any work, naming the repeated size"""
    from moe_denoise.cli import build_parser
    from moe_denoise.commands.bench import settings_from_args

    with pytest.raises(ValueError, match=r"batches must each be given once; repeated: \[1\]"):
        settings(batches=(1, 8, 1)).validate()
    with pytest.raises(ValueError, match=r"repeated: \[64\]"):
        settings_from_args(build_parser().parse_args(["bench", "--quick", "--batches", "64,8,64"]), "quick")
    settings(batches=(8, 1, 64)).validate()  # any order, each once


def test_the_baseline_is_the_cpu_one_when_the_gpu_one_cannot_run():
    """--backends torch-seed,torch-masked,torch-seed-cuda on a machine without a GPU: the GPU baseline was taken,
    could not run, and no ratio was computed, though torch-seed was timed"""
    from moe_denoise.commands.bench import choose_baseline

    both = ["torch-seed", "torch-masked", "torch-seed-cuda"]
    assert choose_baseline(both, "torch-seed-cuda", "torch-seed", gpu=False) == "torch-seed"
    assert choose_baseline(both, "torch-seed-cuda", "torch-seed", gpu=True) == "torch-seed-cuda"
    assert choose_baseline(["torch-seed-cuda", "ort-cuda"], "torch-seed-cuda", "torch-seed", gpu=False) == \
        "torch-seed-cuda"  # no other: its absence is said as before
    assert choose_baseline(["ort-cpu"], "torch-seed-cuda", "torch-seed", gpu=True) is None


def test_a_gpu_backend_without_a_gpu_is_told_in_bench_terms():
    """The runner's advice ('use --device cpu', device='cpu' in Python) named options bench does not have"""
    from benchmarks.harness import _activate
    from moe_base.errors import NoGPUError

    def no_gpu():
        raise NoGPUError("device 'cuda' was asked for but torch 2.x sees no CUDA GPU; use --device cpu (device='cpu' in "
                         "Python), or run on a machine with an NVIDIA GPU and a CUDA build of torch")

    record: dict = {}
    assert _activate(BackendSpec(name="torch-seed-cuda", make_runner=no_gpu, device="cuda"), record) is None
    assert record["reason"].startswith("NoGPUError: device 'cuda' was asked for but torch 2.x sees no CUDA GPU; time "
                                       "the CPU backends") and "--device" not in record["reason"]


def test_cpu_contention_can_count_waited_children_as_its_own():
    """A benchmark that times child processes (tools.wait_policy_ab) counted their CPU as other processes' work
    (100% busy on an idle machine); with children=True it is its own."""
    import subprocess
    import sys

    from benchmarks.env import CpuContention

    alone, with_children = CpuContention(), CpuContention(children=True)
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass"],
                   check=True)
    a, b = alone.result(), with_children.result()
    if a is None or b is None:
        pytest.skip("no /proc/stat here")
    child_cpu_s = (b["own_cpu_fraction"] - a["own_cpu_fraction"]) * b["seconds"] * b["logical_cpus"]
    assert child_cpu_s > 0.3, (a, b)  # the child's 0.6 s, within the rounding of the fractions and seconds
