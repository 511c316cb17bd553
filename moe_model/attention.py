"""The sparse top-k attention operator (DESIGN.md section 3) and its reference implementations.

For one head with queries Q [N, d], keys K [N, d], values V [N, d] and a budget k:

    S   = Q K^T / sqrt(d)
    t_i = k-th largest value of row S_i
    P_i = softmax over {j : S_ij >= t_i}      (-inf elsewhere)
    O   = P V

``masked`` is the definition above and the reference every other implementation is checked against.
``gather`` is the seed project's formulation (topk -> softmax over the k values -> gather V), kept for
tests: it materialises a [B, H, N, k, d] tensor. The two agree except on exact ties at the threshold, where
``masked`` keeps every tied key. When k >= N both are dense attention, and both take the dense path.
``seed`` is the seed's code path exactly as it ran: the gather formulation for *every* expert, with k clipped to
N (so the k = 64 and k = 128 experts at N = 64 sort and gather all keys instead of taking the dense path). It is
the naive baseline of the benchmarks; mathematically it equals dense attention when k >= N.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F

from moe_base.errors import InputError

Impl = str
IMPLS: tuple[str, ...] = ("masked", "gather", "seed")
# Further implementations (e.g. the Triton kernel, registered by topk_attention.torch_op) plug in here:
# fn(q, k, v, topk, scale) -> (B, H, N, d), called only for topk < N.
_EXTRA_IMPLS: dict[str, Callable[..., torch.Tensor]] = {}


def register_impl(name: str, fn: Callable[..., torch.Tensor]) -> None:
    """Make ``impl=name`` available to sparse_topk_attention and the model's set_attention_impl."""
    if name in IMPLS:
        raise InputError(f"{name!r} is a built-in implementation and cannot be replaced")
    _EXTRA_IMPLS[name] = fn


def available_impls() -> tuple[str, ...]:
    """The attention implementations a model can use: the built-in ones and those registered (e.g. "triton")."""
    return IMPLS + tuple(sorted(_EXTRA_IMPLS))


def check_topk(topk: int) -> None:
    """InputError naming topk for what the implementations would meet as an IndexError (0), a RuntimeError
    (negative), a silent truncation (3.5) or zeros (the gather path with 0). A torch.SymInt (torch.compile traces
    a topk that changed between calls as a symbol) is a whole number; its value is checked like an int's."""
    whole = isinstance(topk, torch.SymInt) or (not isinstance(topk, bool) and isinstance(topk, numbers.Integral))
    if not whole or topk < 1:
        raise InputError(f"topk (the keys each query keeps) must be a whole number >= 1; got {topk!r}")


def check_attention_args(q: torch.Tensor, scale: float | None = None) -> None:
    """InputError for a head size of 0 (a ZeroDivisionError in 1/sqrt(d)) or a scale that is not finite."""
    if q.ndim < 2 or q.shape[-1] < 1:
        raise InputError(f"q, k, v are (B, H, N, d) with a head size d >= 1; got q of shape {tuple(q.shape)}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale)):  # '1' was a bare TypeError
        raise InputError(f"scale must be a finite number (None: 1/sqrt(d)); got {scale!r}")


def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain softmax attention. q, k, v: (B, H, N, d) -> (B, H, N, d)."""
    check_attention_args(q, scale=scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def kth_largest(scores: torch.Tensor, topk: int) -> torch.Tensor:
    """Per-row threshold: the topk-th largest value along the last axis, keepdim. (..., N) -> (..., 1)."""
    return scores.topk(topk, dim=-1, sorted=False).values.amin(dim=-1, keepdim=True)  # no sort needed


def sparse_topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    topk: int,
    impl: Impl = "masked",
    scale: float | None = None,
) -> torch.Tensor:
    """Sparse top-k attention. q, k, v: (B, H, N, d); returns (B, H, N, d).

    ``scale`` defaults to 1/sqrt(d); pass 1.0 when it is already folded into q. ``topk``: a whole number >= 1.
    """
    check_topk(topk)
    check_attention_args(q, scale)
    if impl not in IMPLS and impl not in _EXTRA_IMPLS:  # before the dense shortcut, which ran any name at k >= N
        raise InputError(f"unknown sparse attention impl {impl!r}; expected one of {available_impls()}")
    n = k.shape[-2]
    if impl == "seed":  # the seed's code path: top-k + gather for every expert, k clipped to N
        impl, topk = "gather", min(topk, n)
    elif topk >= n:  # every key is kept: this *is* dense attention
        return dense_attention(q, k, v, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if impl in _EXTRA_IMPLS:
        return _EXTRA_IMPLS[impl](q, k, v, topk, scale)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, N, N)
    if impl == "masked":
        thresh = kth_largest(scores, topk)  # (B, H, N, 1)
        scores = scores.masked_fill(scores < thresh, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v
    # impl == "gather" (the names were checked above)
    top_vals, top_idx = scores.topk(topk, dim=-1)  # (B, H, N, k)
    probs = torch.softmax(top_vals, dim=-1)
    b, h, nq, d = q.shape
    v_exp = v.unsqueeze(2).expand(b, h, nq, n, d)  # (B, H, N, N, d) view
    idx = top_idx.unsqueeze(-1).expand(b, h, nq, topk, d)
    v_sel = torch.gather(v_exp, 3, idx)  # (B, H, N, k, d) materialised
    return (probs.unsqueeze(-1) * v_sel).sum(dim=3)
