"""Statistics of timed runs: latency percentiles, throughput and ratios against the baseline.

Pure functions over lists of seconds (no numpy needed), so they are easy to test on synthetic timings and
the same code summarises CPU wall-clock samples and CUDA-event samples.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    Raises ValueError on an empty sample or q outside [0, 100]: a percentile of nothing is a bug upstream.
    """
    if not samples:
        raise ValueError("percentile of an empty sample: no timed runs were recorded for this cell")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    xs = sorted(float(s) for s in samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one cell's per-call latencies, in milliseconds."""

    n: int
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p99: float
    max: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def latency_stats(samples_s: Sequence[float]) -> LatencyStats:
    """Summarise per-call latencies given in seconds; the result is in milliseconds."""
    if not samples_s:
        raise ValueError("latency_stats needs at least one timed sample")
    if any(not math.isfinite(s) or s < 0 for s in samples_s):
        raise ValueError(f"latency samples must be finite and >= 0 seconds; got {list(samples_s)[:5]}...")
    ms = [s * 1e3 for s in samples_s]
    mean = sum(ms) / len(ms)
    var = sum((m - mean) ** 2 for m in ms) / (len(ms) - 1) if len(ms) > 1 else 0.0
    return LatencyStats(n=len(ms), mean=mean, std=math.sqrt(var), min=min(ms), p50=percentile(ms, 50),
                        p90=percentile(ms, 90), p99=percentile(ms, 99), max=max(ms))


def throughput(batch: int, mean_latency_ms: float) -> float:
    """Images per second of steady-state runs: batch / mean latency (= total images / total time)."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if mean_latency_ms <= 0:
        raise ValueError(f"mean latency must be > 0 ms to define a throughput, got {mean_latency_ms}")
    return batch / (mean_latency_ms / 1e3)


@dataclass(frozen=True)
class Ratios:
    """A backend against the baseline in the same run and batch size.

    ``throughput`` > 1 means more images/s than the baseline; ``latency_p50`` < 1 means a lower median latency
    (it is backend p50 / baseline p50, so "1/8 of the baseline's latency" is latency_p50 <= 0.125).
    """

    throughput: float
    latency_p50: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def ratios(backend_tput: float, backend_p50_ms: float, base_tput: float, base_p50_ms: float) -> Ratios:
    """Throughput and p50-latency ratios of a backend against the baseline."""
    if base_tput <= 0 or base_p50_ms <= 0:
        raise ValueError(f"baseline throughput ({base_tput}) and p50 ({base_p50_ms} ms) must be > 0")
    return Ratios(throughput=backend_tput / base_tput, latency_p50=backend_p50_ms / base_p50_ms)


def achieved_gflops(flops_per_image: float, images_per_s: float) -> float:
    """Useful model GFLOP/s delivered at a given throughput."""
    return flops_per_image * images_per_s / 1e9


def compute_limit_images_per_s(flops_per_image: float, peak_gflops: float) -> float:
    """Images/s a backend would reach if it ran all model FLOPs at the measured GEMM peak."""
    if flops_per_image <= 0:
        raise ValueError(f"flops_per_image must be > 0, got {flops_per_image}")
    return peak_gflops * 1e9 / flops_per_image


@dataclass(frozen=True)
class PairedComparison:
    """A variant against a base timed in the same rounds: per round, variant time / base time.

    ``ratio`` is the median of the per-round ratios (< 1: the variant is faster), ``low``/``high`` a percentile
    bootstrap confidence interval of that median, ``wins`` the rounds in which the variant was faster.

    The verdict also needs the wins to pass an exact two-sided sign test at the same confidence: with few rounds the
    bootstrap interval of a median is the range of the ratios (every resample's median lies in it), so it called 2 of
    2 rounds "faster" "at 95%", which equal backends do one time in four. Below 6 rounds no verdict is possible at 95%.
    """

    n: int
    ratio: float
    low: float
    high: float
    wins: int
    confidence: float

    @property
    def verdict(self) -> str:
        signed = sign_test_p(self.wins, self.n) <= 1.0 - self.confidence
        if self.high < 1.0 and signed:
            return "faster"
        if self.low > 1.0 and signed:
            return "slower"
        return "no difference shown"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def sign_test_p(wins: int, n: int) -> float:
    """Two-sided p-value of ``wins`` rounds out of ``n`` under "either is as likely to be faster" (exact binomial)."""
    if not 0 <= wins <= n or n < 1:
        raise ValueError(f"wins must be in [0, n] with n >= 1, got {wins} of {n}")
    tail = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(tail + 1)) / 2**n)


def paired_comparison(variant: Sequence[float], base: Sequence[float], confidence: float = 0.95,
                      resamples: int = 2000, seed: int = 0) -> PairedComparison:
    """Compare per-round timings of a variant with the base's from the same rounds (same length, same order).

    Pairing removes what the rounds share (machine load drifting over the run); the bootstrap resamples rounds,
    so the interval also covers session-to-session luck when every round makes fresh sessions.
    """
    if len(variant) != len(base) or not variant:
        raise ValueError(f"paired timings need the same non-zero number of rounds; got {len(variant)} and {len(base)}")
    if any(not (math.isfinite(v) and v > 0) for v in (*variant, *base)):
        raise ValueError("paired timings must be finite and > 0")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rs = [v / b for v, b in zip(variant, base)]
    rng = random.Random(seed)
    medians = sorted(percentile([rng.choice(rs) for _ in rs], 50) for _ in range(resamples))
    tail = (1.0 - confidence) / 2 * 100
    return PairedComparison(n=len(rs), ratio=percentile(rs, 50), low=percentile(medians, tail),
                            high=percentile(medians, 100 - tail), wins=sum(r < 1.0 for r in rs),
                            confidence=confidence)


def paired_text(c: dict[str, Any]) -> str:
    """One line for a PairedComparison's dict: 'x0.962 [0.951, 0.971], faster in 44/50 rounds: faster'; an interval
    clear of 1 without a verdict says why ('... (faster in 5 of 5 rounds can be chance: sign test p = 0.06)')."""
    text = (f"x{c['ratio']:.3f} [{c['low']:.3f}, {c['high']:.3f}], faster in {c['wins']}/{c['n']} rounds: "
            f"{c['verdict']}")
    if c["verdict"] == "no difference shown" and (c["high"] < 1.0 or c["low"] > 1.0):
        side, count = ("faster", c["wins"]) if c["high"] < 1.0 else ("slower", c["n"] - c["wins"])
        text += (f" ({side} in {count} of {c['n']} rounds can be chance: sign test p = "
                 f"{sign_test_p(c['wins'], c['n']):.2f})")
    return text
