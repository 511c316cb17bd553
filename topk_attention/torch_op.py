"""``torch.ops.moe_denoise.sparse_topk_attention``: the sparse top-k attention as a PyTorch custom op.

On CUDA tensors it runs the Triton kernel (``topk_attention.triton_kernel``) when the kernel supports
the case (fp32/fp16, N <= 1024, topk < N) and the reference otherwise; on every other device it runs the
reference ``moe_model.attention.sparse_topk_attention`` (masked). A fake (meta) implementation lets
``torch.compile`` / ``torch.export`` trace through it. Importing this module also registers the op as
the attention implementation ``"triton"`` of ``moe_model.attention`` (``model.set_attention_impl("triton")``),
which makes "PyTorch with the Triton kernel" a backend the benchmarks can time against plain PyTorch.

Importing this module needs neither Triton nor a GPU: Triton is imported inside the CUDA implementation.
The op is for inference: it has no autograd formula (training runs the reference, which is differentiable).
"""
from __future__ import annotations

import torch

from moe_base.errors import InputError
from moe_model.attention import check_attention_args, check_topk, register_impl
from moe_model.attention import sparse_topk_attention as reference_sparse_topk_attention

OP_NAME = "moe_denoise::sparse_topk_attention"


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, scale: float | None) -> torch.Tensor:
    return reference_sparse_topk_attention(q, k, v, topk, impl="masked", scale=scale)


def check_op_args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, scale: float | None) -> None:
    """What the op takes, checked alike when it runs and when it is traced (torch.compile): one shape (B, H, N, d)
    for q, k and v (the Triton kernel's and the plugin's contract; the eager op took k, v of another N, which the
    traced op refused), one floating-point dtype (mixed or integer dtypes failed inside the reference on the CPU and
    passed the fake), a whole topk >= 1 and a finite scale."""
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise InputError(f"q, k, v must have one shape (B, H, N, d); got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype) or not q.dtype.is_floating_point:
        raise InputError(f"q, k, v must share one floating-point dtype; got {q.dtype}, {k.dtype}, {v.dtype} "
                         f"(cast them, e.g. .float())")
    check_topk(topk)
    check_attention_args(q, scale)


@torch.library.custom_op(OP_NAME, mutates_args=())
def sparse_topk_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int,
                             scale: float | None = None) -> torch.Tensor:
    """Sparse top-k attention. q, k, v: (B, H, N, d) -> (B, H, N, d). Default (non-CUDA): the reference."""
    check_op_args(q, k, v, topk, scale)
    return _reference(q, k, v, topk, scale).contiguous()


@sparse_topk_attention_op.register_kernel("cuda")
def _cuda_impl(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int,
               scale: float | None = None) -> torch.Tensor:
    from .triton_kernel import (  # triton imported here, lazily
        kernel_supports,
        sparse_topk_attention_triton,
    )

    check_op_args(q, k, v, topk, scale)
    ok, _reason = kernel_supports(q.shape[-2], topk, q.dtype)
    if not ok:  # dense (topk >= N), N > 1024, other dtypes, no triton: the reference (4-D: checked above)
        return _reference(q, k, v, topk, scale).contiguous()
    return sparse_topk_attention_triton(q, k, v, topk, scale=scale)


@sparse_topk_attention_op.register_fake
def _fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int, scale: float | None = None) -> torch.Tensor:
    check_op_args(q, k, v, topk, scale)
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def sparse_topk_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int,
                          scale: float | None = None) -> torch.Tensor:
    """Call the custom op (same signature as the reference, without ``impl``)."""
    check_op_args(q, k, v, topk, scale)  # before torch's schema turns a float topk into a TypeError
    return torch.ops.moe_denoise.sparse_topk_attention(q, k, v, int(topk), scale)


IMPL_NAME = "triton"
register_impl(IMPL_NAME, sparse_topk_attention)  # fn(q, k, v, topk, scale), called for topk < N only
