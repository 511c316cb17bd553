"""Benchmark statistics on synthetic timings, and the model FLOP count behind the compute-limit columns."""
import math

import numpy as np
import pytest

from benchmarks.flops import GEMM_SHAPE, gemm_flops, measure_gemm_gflops, model_flops
from benchmarks.stats import (
    achieved_gflops,
    compute_limit_images_per_s,
    latency_stats,
    percentile,
    ratios,
    throughput,
)
from moe_base.config import ModelConfig, get_preset


@pytest.mark.parametrize("q", [0, 1, 10, 50, 90, 99, 99.9, 100])
@pytest.mark.parametrize("n", [1, 2, 7, 100, 1001])
def test_percentile_matches_numpy_linear_interpolation(q, n):
    samples = np.random.default_rng(n).lognormal(size=n).tolist()
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)), rel=1e-12)


def test_percentile_rejects_empty_and_out_of_range():
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        percentile([1.0], 101)


def test_latency_stats_on_known_samples():
    samples_s = [i / 1000 for i in range(1, 101)]  # 1 .. 100 ms
    st = latency_stats(samples_s)
    assert st.n == 100 and st.min == pytest.approx(1) and st.max == pytest.approx(100)
    assert st.mean == pytest.approx(50.5) and st.p50 == pytest.approx(50.5)
    assert st.p90 == pytest.approx(90.1) and st.p99 == pytest.approx(99.01)
    assert st.std == pytest.approx(float(np.std(np.arange(1, 101), ddof=1)))
    assert set(st.to_dict()) == {"n", "mean", "std", "min", "p50", "p90", "p99", "max"}


def test_latency_stats_outlier_moves_p99_not_p50():
    st = latency_stats([0.010] * 99 + [1.0])
    assert st.p50 == pytest.approx(10.0) and st.p99 > 10.0 and st.max == pytest.approx(1000.0)


def test_latency_stats_rejects_bad_samples():
    with pytest.raises(ValueError, match="at least one"):
        latency_stats([])
    with pytest.raises(ValueError, match="finite"):
        latency_stats([0.1, float("nan")])
    with pytest.raises(ValueError, match="finite"):
        latency_stats([-0.1])


def test_throughput_is_batch_over_mean_latency():
    assert throughput(64, 100.0) == pytest.approx(640.0)
    assert throughput(1, 2.0) == pytest.approx(500.0)
    with pytest.raises(ValueError, match="batch"):
        throughput(0, 1.0)
    with pytest.raises(ValueError, match="latency"):
        throughput(8, 0.0)


def test_ratios_against_the_baseline():
    r = ratios(backend_tput=700.0, backend_p50_ms=2.0, base_tput=70.0, base_p50_ms=20.0)
    assert r.throughput == pytest.approx(10.0) and r.latency_p50 == pytest.approx(0.1)
    assert r.to_dict() == {"throughput": r.throughput, "latency_p50": r.latency_p50}
    with pytest.raises(ValueError, match="baseline"):
        ratios(1.0, 1.0, 0.0, 1.0)


def test_compute_limit_matches_the_issue_example():
    # 75 GFLOP/s and 86.7 MFLOP per image: about 865 images/s (the issue rounds to 850).
    limit = compute_limit_images_per_s(86.7e6, 75.0)
    assert limit == pytest.approx(865.05, rel=1e-3)
    assert achieved_gflops(86.7e6, limit) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        compute_limit_images_per_s(0, 75.0)


def test_seed_config_needs_about_86_7_mflop_per_image():
    count = model_flops(get_preset("seed"))
    assert abs(count.total / 1e6 - 86.7) < 0.3, count.to_dict()
    assert count.total == sum(count.parts.values())
    # the residual preset is the same network
    assert model_flops(get_preset("residual")).total == count.total


def test_useful_count_saves_only_the_sparse_experts_value_sums():
    cfg = get_preset("seed")  # N = 64: only the k = 32 expert is sparse
    dense, useful = model_flops(cfg, "dense"), model_flops(cfg, "useful")
    saved = dense.total - useful.total
    assert saved == cfg.depth * 2 * cfg.num_heads * cfg.num_tokens * (64 - 32) * cfg.head_dim
    # patch size 2: N = 256, all three experts sparse
    cfg2 = ModelConfig(patch_size=2)
    assert model_flops(cfg2, "dense").total - model_flops(cfg2, "useful").total == \
        cfg2.depth * 2 * cfg2.num_heads * 256 * sum(256 - k for k in cfg2.expert_topk) * cfg2.head_dim
    with pytest.raises(ValueError, match="convention"):
        model_flops(cfg, "peak")


def test_dense_count_equals_torch_flop_counter(monkeypatch):
    """An independent count: torch's FlopCounterMode over a forward pass (masked attention computes the dense
    attention-weighted sum, so it is the dense convention). CPU SDPA kernels are invisible to the counter, so the
    dense experts' attention is swapped for the same maths in plain matmuls."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from moe_model import SmallViT, attention

    def math_attention(q, k, v, scale=None):
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v

    monkeypatch.setattr(attention, "dense_attention", math_attention)
    for cfg in (get_preset("seed"), ModelConfig(depth=1, dim=64, num_heads=2, expert_topk=(8, 100), ffn_hidden=96)):
        model = SmallViT(cfg).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            model(torch.rand(1, 3, 32, 32))
        assert counter.get_total_flops() == model_flops(cfg, "dense").total, cfg


def test_gemm_measurement_with_an_injected_timer():
    class FixedTimer:
        name = "fixed"

        def __init__(self):
            self.calls = 0

        def time(self, fn):
            fn()
            self.calls += 1
            return 0.002 if self.calls % 2 else 0.004

    timer = FixedTimer()
    rec = measure_gemm_gflops((64, 32, 16), repeats=4, warmup=1, timer=timer)
    assert timer.calls == 4
    assert rec["gflops"] == pytest.approx(gemm_flops(64, 32, 16) / 0.002 / 1e9)  # the best repeat
    assert rec["gflops_median"] == pytest.approx((gemm_flops(64, 32, 16) / 0.002 + gemm_flops(64, 32, 16) / 0.004)
                                                 / 2 / 1e9)
    assert rec["shape"] == [64, 32, 16] and rec["timer"] == "fixed" and len(rec["samples_ms"]) == 4
    # the GEMM it stands for: the seed model's Q, K and V projections of every expert, fused, at batch 64
    from moe_base.config import get_preset

    seed = get_preset("seed")
    tokens = (seed.image_size // seed.patch_size) ** 2
    assert GEMM_SHAPE == (64 * tokens, seed.dim, 3 * len(seed.expert_topk) * seed.dim)
    with pytest.raises(ValueError, match="repeats"):
        measure_gemm_gflops((4, 4, 4), repeats=0, timer=timer)


def test_paired_comparison_sees_a_consistent_small_gain_through_large_shared_noise():
    from benchmarks.stats import paired_comparison

    # rounds drift by +-30% (machine load), the variant is always 2% faster than the base of its round
    base = [10.0 * (1.0 + 0.3 * ((i * 7) % 11 - 5) / 5) for i in range(30)]
    c = paired_comparison([0.98 * b for b in base], base)
    assert c.n == 30 and c.wins == 30
    assert abs(c.ratio - 0.98) < 1e-12 and c.high < 1.0 and c.verdict == "faster"
    assert c.to_dict()["verdict"] == "faster"


def test_paired_comparison_does_not_call_a_coin_flip_a_win():
    from benchmarks.stats import paired_comparison

    base = [10.0] * 20
    variant = [9.0 if i % 2 else 11.0 for i in range(20)]  # faster in half the rounds, slower in the other half
    c = paired_comparison(variant, base)
    assert c.low < 1.0 < c.high and c.verdict == "no difference shown" and c.wins == 10
    slower = paired_comparison([12.0] * 5 + [11.0] * 5, [10.0] * 10)
    assert slower.verdict == "slower" and slower.wins == 0


def test_paired_comparison_gives_no_verdict_on_too_few_rounds():
    """With n rounds the bootstrap interval of a median is the range of the ratios, so 2 of 2, 3 of 3 ... rounds on
    the same side of 1 were called "faster" (or "slower") "at 95%": two equal backends are, one time in four at 2
    rounds, one in eight at 3 (bench --quick has at most 5 rounds, and may stop at 2) => a verdict also needs an
    exact sign test on the rounds won at the same confidence, so at least 6 rounds; the line says why there is none"""
    from benchmarks.stats import paired_comparison, paired_text

    for n in (2, 3, 4, 5):
        c = paired_comparison([0.97 + 0.001 * i for i in range(n)], [1.0] * n)
        assert c.high < 1.0 and c.wins == n and c.verdict == "no difference shown"
        slower = paired_comparison([1.0] * n, [0.97 + 0.001 * i for i in range(n)])
        assert slower.low > 1.0 and slower.verdict == "no difference shown"
    assert "(faster in 5 of 5 rounds can be chance: sign test p = 0.06)" in paired_text(c.to_dict())
    # the slower side counts the rounds lost ('0 of 5 rounds can be chance' was said of 5 slower rounds)
    assert "(slower in 5 of 5 rounds can be chance: sign test p = 0.06)" in paired_text(slower.to_dict())
    six = paired_comparison([0.97 + 0.001 * i for i in range(6)], [1.0] * 6)
    assert six.verdict == "faster" and "chance" not in paired_text(six.to_dict())
    from benchmarks.stats import sign_test_p

    assert sign_test_p(6, 6) == pytest.approx(2 / 64) and sign_test_p(0, 6) == pytest.approx(2 / 64)
    assert sign_test_p(10, 20) == 1.0 and sign_test_p(15, 20) == pytest.approx(2 * 21700 / 2**20)


@pytest.mark.parametrize("variant, base, match", [([], [], "non-zero"), ([1.0], [1.0, 2.0], "same"),
                                                  ([1.0, float("nan")], [1.0, 1.0], "finite"),
                                                  ([1.0, 0.0], [1.0, 1.0], "> 0")])
def test_paired_comparison_refuses_bad_timings(variant, base, match):
    from benchmarks.stats import paired_comparison

    with pytest.raises(ValueError, match=match):
        paired_comparison(variant, base)
