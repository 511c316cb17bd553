"""Triton kernel for sparse top-k attention (DESIGN.md section 3), and its Python launcher.

Grid ``(B*H, cdiv(N, BLOCK_M), 1)``: one program computes ``BLOCK_M`` query rows of one (batch, head),
in two passes, and nothing of size [N, N] ever goes through global memory:

1. Pass 1 holds the whole row of scores ``S[i, :] = Q_i K^T * SCALE`` (``BLOCK_N = next_pow2(N)``
   columns, padded keys masked) in registers, as order-preserving uint32 keys. The per-row threshold
   ``t_i`` (the TOPK-th largest score, ties included) is found *exactly* by a 32-step bitwise binary
   search: the largest ``ans`` with ``count(key >= ans) >= TOPK`` is the TOPK-th largest key. No sort,
   no approximation. The row max and the softmax denominator over the kept keys come from the same row.
2. Pass 2 walks the keys in blocks of ``BLOCK_KV``, recomputes the scores (bitwise equal to pass 1,
   see ``_scores``), keeps ``key >= ans`` and accumulates ``O += P V`` with ``tl.dot`` in fp32.

Scores are an explicit fp32 FMA chain rather than ``tl.dot``: it makes the two passes agree bitwise
and keeps registers low (a ``tl.dot`` on the whole [BLOCK_M, BLOCK_N] probability tile spilled
heavily in fp32 when compiled for sm_90).

Layout: Q, K, V, O are [B, H, N, d] contiguous, viewed as (B*H) consecutive [N, d] slabs; this is the
layout the model's attention produces (after ``.contiguous()``) and the TensorRT plugin receives, and it
keeps the kernel free of stride arguments, so the JIT kernel (PyTorch custom op, tests) and the AOT PTX
(TensorRT plugin) are the very same function.

Parameter order is the TensorRT AOT plugin's: inputs (q, k, v), 32-bit integer extras (``n_bh``),
outputs (o). ``TOPK``, ``SCALE``, ``N`` and ``HEAD_DIM`` are compile-time constants because a plugin's
extra kernel arguments can only be 32-bit integers.

Triton is imported here at module level but guarded: importing this module without Triton works, and
``kernel_supports`` says why the kernel is unavailable; only launching needs Triton.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from moe_base.errors import InputError
from moe_base.optional import optional_import
from moe_model.attention import check_attention_args

# the exporter asks kernel_supports() on machines without Triton, so the module imports without it
triton, _TRITON_ERROR = optional_import("triton")
tl = triton.language if triton is not None else None

MAX_N = 1024  # a whole score row in registers: at 1024 keys, 16 rows x 8 warps = 64 registers / thread
SUPPORTED_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16)
KERNEL_NAME = "sparse_topk_attn_fwd"
# Kernel parameters in launch order (inputs, integer extras, outputs), for the AOT artifact.
KERNEL_INPUTS: tuple[str, ...] = ("q_ptr", "k_ptr", "v_ptr")
KERNEL_EXTRAS: tuple[str, ...] = ("n_bh",)
KERNEL_OUTPUTS: tuple[str, ...] = ("o_ptr",)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


@dataclass(frozen=True)
class KernelConfig:
    """Block sizes and launch shape for one (N, head_dim); shared by the JIT launcher and the AOT build."""

    n: int
    head_dim: int
    block_m: int   # query rows per program
    block_n: int   # next_pow2(N): the whole key row, held in registers in pass 1
    block_d: int   # next_pow2(head_dim), >= 16 (tl.dot minimum)
    block_kv: int  # keys per step of pass 2 (P V accumulation)
    num_warps: int

    def grid(self, n_bh: int) -> tuple[int, int, int]:
        """Programs: x = batch*heads (up to 2**31 - 1), y = blocks of queries, z = 1."""
        return (n_bh, triton_cdiv(self.n, self.block_m), 1)

    def constexprs(self, topk: int, scale: float) -> dict[str, int | float]:
        """The kernel's compile-time arguments (the AOT build and the JIT launch pass the same)."""
        return {"N": self.n, "HEAD_DIM": self.head_dim, "TOPK": topk, "SCALE": scale, "BLOCK_M": self.block_m,
                "BLOCK_N": self.block_n, "BLOCK_D": self.block_d, "BLOCK_KV": self.block_kv}


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def kernel_config(n: int, head_dim: int, block_m: int | None = None, num_warps: int | None = None,
                  block_kv: int = 32) -> KernelConfig:
    """Pick block sizes so the pass-1 key tile [BLOCK_M, BLOCK_N] is <= 64 registers per thread:
    BLOCK_N <= 128: 64 rows, 4 warps; 256: 32 rows, 4 warps; 512: 32 rows, 8 warps; 1024: 16 rows, 8 warps."""
    block_n = max(16, _next_pow2(n))
    block_d = max(16, _next_pow2(head_dim))
    if block_m is None:
        block_m = 64 if block_n <= 128 else 32 if block_n <= 512 else 16
    if num_warps is None:
        num_warps = 4 if block_n <= 256 else 8
    for name, val in (("block_m", block_m), ("block_kv", block_kv)):
        if val < 16 or val & (val - 1):
            raise InputError(f"{name} must be a power of two >= 16 (tl.dot minimum); got {val}")
    if num_warps < 1 or num_warps & (num_warps - 1):
        raise InputError(f"num_warps must be a power of two, got {num_warps}")
    return KernelConfig(n=n, head_dim=head_dim, block_m=block_m, block_n=block_n, block_d=block_d,
                        block_kv=min(block_kv, block_n), num_warps=num_warps)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def kernel_supports(n: int, topk: int, dtype: torch.dtype | str) -> tuple[bool, str]:
    """Can the Triton kernel (and so the TensorRT plugin) compute this case? (ok, reason).

    The exporter falls back to standard operators when it cannot, and reports ``reason``.
    """
    if isinstance(dtype, str):
        dtype = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
                 "float16": torch.float16}.get(dtype, dtype)  # type: ignore[arg-type]
    if dtype not in SUPPORTED_DTYPES:
        return False, f"dtype {dtype} is not supported (kernel supports float32, float16)"
    if n < 2:
        return False, f"N={n} tokens: need N >= 2 for a sparse budget"
    if n > MAX_N:
        return False, f"N={n} > {MAX_N}: the kernel holds a whole score row in registers"
    if topk < 1:
        return False, f"topk={topk} must be >= 1"
    if topk >= n:
        return False, f"topk={topk} >= N={n}: this is dense attention, use the dense path"
    if _TRITON_ERROR is not None:
        return False, _TRITON_ERROR
    return True, "ok"


if triton is not None:

    @triton.jit
    def _scores(q_ptr, k_ptr, base, offs_m, offs_n, m_ok, n_ok,
                HEAD_DIM: tl.constexpr, SCALE: tl.constexpr):
        """S = (Q K^T) * SCALE for rows offs_m, keys offs_n: (BM, BK) fp32.

        An explicit fp32 FMA chain over d = 0..HEAD_DIM-1, one rounding per step. Every score gets the
        same operation sequence whatever the tile width, so pass 2 recomputes pass 1's scores *bitwise*
        and keeps exactly the keys pass 1 selected (tl.dot gives no such guarantee across tile shapes).
        """
        s = tl.zeros((offs_m.shape[0], offs_n.shape[0]), dtype=tl.float32)  # (BM, BK)
        for dd in range(HEAD_DIM):  # a real loop: unrolled, LLVM hoists every load and spills
            qc = tl.load(q_ptr + base + offs_m * HEAD_DIM + dd, mask=m_ok, other=0.0).to(tl.float32)  # (BM,)
            kc = tl.load(k_ptr + base + offs_n * HEAD_DIM + dd, mask=n_ok, other=0.0).to(tl.float32)  # (BK,)
            s = tl.fma(qc[:, None], kc[None, :], s)
        return s * SCALE

    @triton.jit
    def _order_key(s, n_ok):
        """Order-preserving uint32 image of fp32 scores: a >= b  <=>  key(a) >= key(b) (no NaN).

        Negative floats: flip all bits; non-negative: set the sign bit; -0.0 maps like +0.0 (they are
        equal as floats). Padded keys (n_ok False) map to 0, below every finite score. Bits are flipped with
        ``^ 0xFFFFFFFF`` rather than ``~``: Triton 3.6's interpreter builds ``~x`` on uint32 from ``np.full(1, -1)``,
        which NumPy >= 2.5 rejects (seen on the GPU machine); the compiled code is the same either way.
        """
        bits = s.to(tl.uint32, bitcast=True)
        key = tl.where((bits >> 31) == 1, bits ^ 0xFFFFFFFF, bits | 0x80000000)  # not ~: see the docstring
        key = tl.where(s == 0.0, 0x80000000, key)
        return tl.where(n_ok[None, :], key, 0)

    @triton.jit
    def sparse_topk_attn_fwd(
        q_ptr, k_ptr, v_ptr,  # inputs: (B*H, N, HEAD_DIM) contiguous
        n_bh,  # integer extra: number of (batch, head) slabs; programs beyond it store nothing
        o_ptr,  # output: (B*H, N, HEAD_DIM) contiguous
        N: tl.constexpr, HEAD_DIM: tl.constexpr, TOPK: tl.constexpr, SCALE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_KV: tl.constexpr,
    ):
        pid_bh = tl.program_id(0)
        pid_m = tl.program_id(1)
        # Programs beyond n_bh read the last real slab (never out of bounds) and store nothing.
        base = tl.minimum(pid_bh, n_bh - 1).to(tl.int64) * (N * HEAD_DIM)  # int64: B*H*N*d may exceed 2**31
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BM,) query rows
        bh = pid_bh + tl.zeros((BLOCK_M,), dtype=tl.int32)  # (BM,): a vector, as the interpreter wants
        m_ok = (offs_m < N) & (bh < n_bh)

        # Pass 1: the whole score row in registers -> exact threshold, row max, softmax denominator.
        offs_n = tl.arange(0, BLOCK_N)  # (BN,) every key
        n_ok = offs_n < N
        key = _order_key(_scores(q_ptr, k_ptr, base, offs_m, offs_n, m_ok, n_ok, HEAD_DIM, SCALE), n_ok)
        # Largest `ans` with count(key >= ans) >= TOPK, built from the top bit down (32 exact steps): it is
        # the TOPK-th largest key itself, so `key >= ans` keeps the TOPK largest scores and every tie.
        ans = tl.zeros((BLOCK_M,), dtype=tl.uint32)  # (BM,)
        bit = tl.full((BLOCK_M,), 0x80000000, dtype=tl.uint32)  # (BM,)
        for _ in range(32):
            cand = ans | bit
            cnt = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)  # (BM,)
            ans = tl.where(cnt >= TOPK, cand, ans)
            bit = bit >> 1
        keep = key >= ans[:, None]  # (BM, BN); padded keys (0) are below ans since TOPK < N
        s = tl.where(keep, tl.where((key >> 31) == 1, key & 0x7FFFFFFF, key ^ 0xFFFFFFFF).to(tl.float32, bitcast=True),
                     float("-inf"))  # kept scores back from their keys (s itself is not kept live)
        row_max = tl.max(s, axis=1)  # (BM,) the row max is always kept
        inv_sum = 1.0 / tl.sum(tl.exp(s - row_max[:, None]), axis=1)  # (BM,)

        # Pass 2: recompute scores block by block (bitwise equal to pass 1) and accumulate P V in fp32.
        offs_d = tl.arange(0, BLOCK_D)  # (BD,)
        d_ok = offs_d < HEAD_DIM
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)  # (BM, BD)
        for n0 in range(0, BLOCK_N, BLOCK_KV):
            offs_kv = n0 + tl.arange(0, BLOCK_KV)  # (BKV,)
            kv_ok = offs_kv < N
            s_blk = _scores(q_ptr, k_ptr, base, offs_m, offs_kv, m_ok, kv_ok, HEAD_DIM, SCALE)  # (BM, BKV)
            keep_blk = _order_key(s_blk, kv_ok) >= ans[:, None]
            p = tl.where(keep_blk, tl.exp(s_blk - row_max[:, None]) * inv_sum[:, None], 0.0)  # (BM, BKV)
            v = tl.load(v_ptr + base + offs_kv[:, None] * HEAD_DIM + offs_d[None, :],
                        mask=kv_ok[:, None] & d_ok[None, :], other=0.0)  # (BKV, BD)
            # fp16: fp16 operands (P rounded as torch's fp16 softmax output is), fp32 accumulation
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
        tl.store(o_ptr + base + offs_m[:, None] * HEAD_DIM + offs_d[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & d_ok[None, :])


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int) -> None:
    """Validate what the kernel assumes; ValueError saying what was given and what is expected."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise InputError(f"{name} must be 4-D (B, H, N, d); got {t.ndim}-D shape {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{name} has dtype {t.dtype}; the kernel supports float32 and float16 "
                             f"(cast the inputs, or use moe_model.attention.sparse_topk_attention)")
    if not (q.shape == k.shape == v.shape):
        raise InputError(f"q, k, v must have the same shape (B, H, N, d); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"q, k, v must share one dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise InputError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if not isinstance(topk, int) or isinstance(topk, bool):
        raise InputError(f"topk must be an int, got {type(topk).__name__}")
    check_attention_args(q)  # a head size of 0: the default scale 1/sqrt(d) was a ZeroDivisionError
    ok, reason = kernel_supports(q.shape[-2], topk, q.dtype)
    if not ok:
        raise InputError(f"the Triton kernel cannot run this case: {reason}. Use "
                         f"moe_model.attention.sparse_topk_attention (the reference / dense path) instead")
    interpreted = _interpreting()
    if q.device.type != "cuda" and not interpreted:
        raise InputError(f"inputs are on device {q.device}; the Triton kernel needs CUDA tensors "
                         f"(or TRITON_INTERPRET=1 set before importing triton, to run it on the CPU)")
    if q.device.type == "cuda" and interpreted:
        raise InputError("TRITON_INTERPRET=1 is set but the inputs are CUDA tensors; the interpreter runs "
                         "on CPU tensors: move them with .cpu() or unset TRITON_INTERPRET")


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def sparse_topk_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, topk: int,
                                 scale: float | None = None, block_m: int | None = None) -> torch.Tensor:
    """Sparse top-k attention with the Triton kernel. q, k, v: (B, H, N, d) -> (B, H, N, d), q's dtype.

    ``scale`` defaults to 1/sqrt(d) (pass 1.0 when it is folded into W_q). It is baked into the kernel as
    a compile-time constant (as in the TensorRT plugin), so each distinct (scale, topk, N, d) compiles once.
    """
    if _TRITON_ERROR is not None:
        raise ImportError(_TRITON_ERROR)
    _check_inputs(q, k, v, topk)
    b, h, n, d = q.shape
    scale = default_scale(d) if scale is None else float(scale)
    if not math.isfinite(scale):
        raise InputError(f"scale must be a finite float, got {scale}")
    cfg = kernel_config(n, d, block_m=block_m)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # (B, H, N, d): the kernel has no strides
    o = torch.empty_like(q)  # (B, H, N, d)
    n_bh = b * h
    if n_bh == 0:
        return o
    sparse_topk_attn_fwd[cfg.grid(n_bh)](q, k, v, n_bh, o, **cfg.constexprs(topk, scale),
                                         num_warps=cfg.num_warps, num_stages=1, enable_fp_fusion=True)
    return o
