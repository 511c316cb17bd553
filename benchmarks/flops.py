"""Model FLOPs from the architecture config, and the machine's measured fp32 GEMM rate.

Together they say where a backend sits against the compute limit: achieved GFLOP/s = FLOPs per image x
images/s, as a fraction of what the machine's matmul reaches in the same run.

Counting convention (``useful`` FLOPs): 2 FLOPs per multiply-accumulate of every linear / convolution layer and
attention matmul; attention scores Q K^T over all N keys (needed to find the top-k), the attention-weighted sum
over min(k, N) keys (a top-k expert only needs its k kept values). Element-wise work (LayerNorm, softmax, GELU,
biases, the router's mixing) is not counted: under 1% of the total here. For the seed architecture this gives
86.56 MFLOP per image. ``dense`` counts the attention-weighted sum over all N keys too, which
is what the masked formulation and a FLOP profiler see (87.61 MFLOP for the seed).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The shape of the model's fused Q/K/V projection at batch 64: (64 images x 64 tokens) x dim 128 -> 3 x 3 x 128.
GEMM_SHAPE = (4096, 128, 1152)
# On a GPU that shape is too small to fill the device; the same projection at batch 4096 is measured too.
GPU_GEMM_SHAPES = (GEMM_SHAPE, (4096 * 64, 128, 1152))


@dataclass(frozen=True)
class FlopCount:
    """FLOPs per image, by part of the network. ``total`` is the sum of ``parts``."""

    parts: dict[str, int]
    convention: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "convention": self.convention, "parts": dict(self.parts)}


def model_flops(config: Any, convention: str = "useful") -> FlopCount:
    """FLOPs for one image through the model described by ``config`` (a moe_model ModelConfig).

    ``convention``: "useful" (top-k experts' value sums over k keys) or "dense" (over all N keys).
    """
    if convention not in ("useful", "dense"):
        raise ValueError(f"unknown FLOP convention {convention!r}; expected 'useful' or 'dense'")
    c = config
    n, dim, heads, hd = c.num_tokens, c.dim, c.num_heads, c.head_dim
    patch_in = c.in_chans * c.patch_size**2
    mac = {
        "patch_embed": n * patch_in * dim,
        "router": c.depth * n * (dim * c.router_hidden + c.router_hidden * c.num_experts),
        "expert_qkv": c.depth * c.num_experts * n * 3 * dim * dim,
        "attention_scores": c.depth * c.num_experts * heads * n * n * hd,
        "attention_values": c.depth * sum(heads * n * (n if convention == "dense" else min(k, n)) * hd
                                          for k in c.expert_topk),
        "expert_out": c.depth * c.num_experts * n * dim * dim,
        "merge_proj": c.depth * n * dim * dim,
        "ffn": c.depth * n * 2 * dim * c.ffn_hidden,
        "patch_unembed": n * dim * patch_in * getattr(c, "out_chans", c.in_chans) // c.in_chans,
    }
    r, f = getattr(c, "refine_channels", 0), getattr(c, "refine_features", 0)
    if r:  # three 3x3 convs at full resolution: [x, y, features] -> r -> r -> 3
        mac["refine"] = c.image_size**2 * 9 * ((2 * c.in_chans + f) * r + r * r + r * c.in_chans)
    return FlopCount(parts={k: 2 * v for k, v in mac.items()}, convention=convention)


def gemm_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) matmul."""
    return 2 * m * k * n


def measure_gemm_gflops(shape: tuple[int, int, int] = GEMM_SHAPE, device: str = "cpu", dtype: str = "float32",
                        repeats: int = 10, warmup: int = 2, timer: Any = None,
                        threads: int | None = None) -> dict[str, Any]:
    """Time a torch matmul of ``shape`` (m, k, n) and return its best and median GFLOP/s.

    The *best* of the repeats is the machine's reachable peak (noise only ever slows a run down); the median
    is reported next to it so a noisy measurement is visible. ``timer`` is a benchmarks.timers Timer
    (default: the right one for ``device``).
    """
    import torch

    from .stats import percentile
    from .timers import make_timer

    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if threads:
        torch.set_num_threads(threads)
    timer = timer or make_timer(device)
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen).to(device=device, dtype=getattr(torch, dtype))
    b = torch.randn(k, n, generator=gen).to(device=device, dtype=getattr(torch, dtype))
    out = torch.empty(m, n, device=device, dtype=getattr(torch, dtype))
    run: Callable[[], None] = lambda: torch.matmul(a, b, out=out)
    for _ in range(warmup):
        run()
    samples = [timer.time(run) for _ in range(repeats)]
    flops = gemm_flops(m, k, n)
    rates = sorted(flops / s / 1e9 for s in samples if s > 0)
    if not rates:
        raise RuntimeError(f"the GEMM timer returned no positive durations ({samples}); cannot measure a peak")
    return {"device": device, "dtype": dtype, "shape": list(shape), "flops": flops, "repeats": repeats,
            "threads": torch.get_num_threads() if device == "cpu" else None, "timer": timer.name,
            "gflops": rates[-1], "gflops_median": percentile(rates, 50),
            "samples_ms": [round(s * 1e3, 4) for s in samples]}


def measure_device_peak(device: str = "cpu", threads: int | None = None, repeats: int = 10) -> dict[str, Any]:
    """The GEMM peak of a device type: the model's projection shape on CPU; on CUDA also the batch-4096 shape,
    keeping the faster (the small one underfills a large GPU). All measured shapes are kept in ``shapes``."""
    shapes = GPU_GEMM_SHAPES if device.startswith("cuda") else (GEMM_SHAPE,)
    runs = [measure_gemm_gflops(shape, device=device, repeats=repeats, threads=threads) for shape in shapes]
    best = max(runs, key=lambda r: r["gflops"])
    return {**best, "shapes": [{"shape": r["shape"], "gflops": r["gflops"], "gflops_median": r["gflops_median"]}
                               for r in runs]}
