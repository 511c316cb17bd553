"""The Triton sparse top-k attention kernel against the masked reference, its launcher's input checks, and
the torch custom op.

Kernel runs on the CPU use Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) *before*
the kernel module is imported, since ``@triton.jit`` picks interpreter or compiler at decoration time.
Other test modules import the compiled kernel (the AOT tests need it), so the interpreted cases run in
one subprocess with the variable set, and report JSON that the tests below check one by one.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# Runs under TRITON_INTERPRET=1; prints {case: {...}} as JSON on its last line.
_INTERP_SCRIPT = r"""
import json, math, os, torch
assert os.environ.get("TRITON_INTERPRET") == "1"
from topk_attention import triton_kernel as tk
from moe_model.attention import sparse_topk_attention as ref

torch.manual_seed(0)
out = {"kernel_type": type(tk.sparse_topk_attn_fwd).__name__}

def err(a, b):
    return float((a.float() - b.float()).abs().max())

def case(name, b, h, n, d, topk, dtype=torch.float32):
    q, k, v = (torch.randn(b, h, n, d).to(dtype) for _ in range(3))
    o = tk.sparse_topk_attention_triton(q, k, v, topk)
    out[name] = {"err": err(o, ref(q.float(), k.float(), v.float(), topk)), "dtype": str(o.dtype),
                 "shape": list(o.shape)}

case("fp32_n24", 1, 2, 24, 8, 5)
case("fp32_n40", 2, 1, 40, 16, 13)
case("fp16_n40_d12", 1, 2, 40, 12, 7, torch.float16)
case("fp32_n17_top1", 1, 1, 17, 8, 1)
case("fp32_n17_top16", 1, 1, 17, 8, 16)

# A deliberate tie at the threshold: score_ij = a_i * c_j exactly (other dims are zero in q), and c has
# three equal values at rank 5..7, so topk=5 keeps 7 keys in every row.
n, d, topk = 24, 8, 5
c = torch.tensor([9., 8., 7., 6., 5., 5., 5.] + [float(-j) for j in range(1, n - 6)])
q = torch.zeros(1, 1, n, d); q[..., 0] = torch.rand(n) + 0.5
k = torch.randn(1, 1, n, d); k[..., 0] = c
v = torch.randn(1, 1, n, d)
o = tk.sparse_topk_attention_triton(q, k, v, topk, scale=0.3)
out["tie"] = {"err_masked": err(o, ref(q, k, v, topk, scale=0.3)),
              "diff_gather": err(o, ref(q, k, v, topk, impl="gather", scale=0.3))}

# Scale folded into q (as the exporter does): scale=1.0 on q / sqrt(d) equals the default scale.
q, k, v = (torch.randn(1, 2, 40, 16) for _ in range(3))
o = tk.sparse_topk_attention_triton(q / math.sqrt(16), k, v, 9, scale=1.0)
out["scale_folded"] = {"err": err(o, ref(q, k, v, 9))}

# The n_bh extra: programs with pid >= n_bh must not write (the grid may be larger than the work).
# q, k, v hold exactly n_bh slabs (surplus programs must not read past them); o has one spare slab.
n_bh, n, d, topk = 2, 24, 8, 5
q, k, v = (torch.randn(n_bh, n, d) for _ in range(3))
o = torch.full((n_bh + 1, n, d), 123.0)
cfg = tk.kernel_config(n, d)
tk.sparse_topk_attn_fwd[cfg.grid(n_bh + 2)](q, k, v, n_bh, o, **cfg.constexprs(topk, 1 / math.sqrt(d)),
                                           num_warps=cfg.num_warps)
out["guard"] = {"untouched": bool((o[-1] == 123.0).all()),
                "err": err(o[:-1], ref(q[:, None], k[:, None], v[:, None], topk)[:, 0])}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def interp() -> dict:
    pytest.importorskip("triton", reason="triton is not installed: pip install 'moe-denoise[gpu]'")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", _INTERP_SCRIPT], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert res.returncode == 0, f"interpreter run failed:\n{res.stderr[-4000:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_interpreter_is_really_used(interp):
    assert interp["kernel_type"] == "InterpretedFunction"


@pytest.mark.parametrize("name", ["fp32_n24", "fp32_n40", "fp32_n17_top1", "fp32_n17_top16"])
def test_fp32_matches_reference_for_non_power_of_two_n(interp, name):
    assert interp[name]["dtype"] == "torch.float32"
    assert interp[name]["err"] < 1e-5, interp[name]


def test_fp16_matches_fp32_reference(interp):
    r = interp["fp16_n40_d12"]
    assert r["dtype"] == "torch.float16" and r["shape"] == [1, 2, 40, 12]
    assert r["err"] < 5e-3, r


def test_ties_at_threshold_are_all_kept(interp):
    r = interp["tie"]
    assert r["err_masked"] < 1e-5, r
    assert r["diff_gather"] > 1e-3, f"the tie did not matter, so the test proves nothing: {r}"


def test_scale_folded_into_q(interp):
    assert interp["scale_folded"]["err"] < 1e-5, interp["scale_folded"]


def test_extra_n_bh_guards_surplus_programs(interp):
    assert interp["guard"]["untouched"], "a program beyond n_bh wrote its slab"
    assert interp["guard"]["err"] < 1e-5, interp["guard"]


# -- in-process: support table and input validation (no kernel launch) -----------------------------------
def test_kernel_supports_reasons():
    pytest.importorskip("triton", reason="without triton every shape is refused for that: pip install 'moe-denoise[gpu]'")
    from topk_attention.triton_kernel import kernel_supports

    assert kernel_supports(256, 32, torch.float16) == (True, "ok")
    assert kernel_supports(1024, 1023, "fp32")[0]
    for args, needle in [((64, 64, torch.float32), "dense"), ((2048, 32, torch.float32), "1024"),
                         ((64, 32, torch.bfloat16), "dtype"), ((64, 0, torch.float32), "topk")]:
        ok, reason = kernel_supports(*args)
        assert not ok and needle in reason, (args, reason)


@pytest.mark.parametrize("make, needle", [
    (lambda: (torch.randn(2, 24, 8),) * 3 + (5,), "4-D"),
    (lambda: (torch.randn(1, 1, 24, 8, dtype=torch.float64),) * 3 + (5,), "float64"),
    (lambda: (torch.randn(1, 1, 24, 8),) * 3 + (24,), "topk=24 >= N=24"),
    (lambda: (torch.randn(1, 1, 1100, 8),) * 3 + (5,), "N=1100 > 1024"),
    (lambda: (torch.randn(1, 1, 24, 8), torch.randn(1, 1, 24, 8), torch.randn(1, 1, 20, 8), 5), "same shape"),
    (lambda: (torch.randn(1, 1, 24, 0),) * 3 + (5,), "head size d >= 1"),  # was a ZeroDivisionError
])
def test_launcher_rejects_bad_inputs(make, needle):
    pytest.importorskip("triton", reason="triton is not installed")
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    with pytest.raises(ValueError, match=needle.replace("(", r"\(")):
        sparse_topk_attention_triton(*make())


def test_launcher_rejects_cpu_tensors_without_interpreter(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(1, 1, 24, 8)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        sparse_topk_attention_triton(x, x, x, 5)


# -- the torch custom op ---------------------------------------------------------------------------------
def test_custom_op_cpu_is_the_reference_and_registers_triton_impl():
    from moe_model.attention import available_impls, sparse_topk_attention
    from topk_attention import torch_op

    assert "triton" in available_impls()
    q, k, v = (torch.randn(1, 2, 24, 8) for _ in range(3))
    torch.testing.assert_close(torch_op.sparse_topk_attention(q, k, v, 5), sparse_topk_attention(q, k, v, 5))
    torch.testing.assert_close(sparse_topk_attention(q, k, v, 5, impl="triton"), sparse_topk_attention(q, k, v, 5))
    torch.testing.assert_close(torch_op.sparse_topk_attention(q, k, v, 30), sparse_topk_attention(q, k, v, 30))


def test_the_custom_op_checks_its_arguments_alike_eager_and_traced():
    """k, v of another N ran eagerly and failed when traced (the fake checked shapes, the kernel did not); topk 3.5
    was truncated to 3 and True taken as 1. Both ways now refuse them, naming what was given."""
    from moe_base.errors import InputError
    from topk_attention import torch_op

    q, kv = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 6, 4)
    for call in (lambda: torch_op.sparse_topk_attention(q, kv, kv, 3),
                 lambda: torch.ops.moe_denoise.sparse_topk_attention(q, kv, kv, 3, None),
                 lambda: torch.compile(torch_op.sparse_topk_attention, backend="eager")(q, kv, kv, 3)):
        with pytest.raises(Exception, match=r"q, k, v must have one shape \(B, H, N, d\); got \(1, 2, 8, 4\), "
                                            r"\(1, 2, 6, 4\)"):
            call()
    for topk in (3.5, True, 0):
        with pytest.raises(InputError, match=rf"topk .* must be a whole number >= 1; got {topk}"):
            torch_op.sparse_topk_attention(q, q, q, topk)


def test_the_compiled_op_runs_every_topk_it_is_given():
    """torch.compile traces a topk that changed between calls as a symbol (automatic dynamic), and the op's fake
    refused it ('topk ... must be a whole number >= 1; got s53'): a compiled op ran only the first topk it met."""
    from topk_attention import torch_op

    q, k, v = (torch.randn(1, 2, 24, 8) for _ in range(3))
    compiled = torch.compile(torch_op.sparse_topk_attention, backend="eager")
    for topk in (5, 7, 9, 30):  # 30 >= N: the dense path, decided when the op runs
        torch.testing.assert_close(compiled(q, k, v, topk), torch_op.sparse_topk_attention(q, k, v, topk))
    traced = torch.compile(torch_op.sparse_topk_attention, backend="eager", dynamic=True)
    torch.testing.assert_close(traced(q, k, v, 3), torch_op.sparse_topk_attention(q, k, v, 3))


def test_custom_op_passes_opcheck():
    from topk_attention import torch_op  # noqa: F401 - registers the op

    q = torch.randn(1, 2, 24, 8)
    torch.library.opcheck(torch.ops.moe_denoise.sparse_topk_attention.default, (q, q, q, 5, None))


def test_the_custom_op_refuses_mixed_or_integer_dtypes_alike_eager_and_traced():
    """q fp32 with k fp16 (or integer tensors) was torch's 'expected m1 and m2 to have the same dtype' from inside the
    reference on the CPU, an InputError from the Triton launcher on CUDA, and passed the fake, which promised q's
    dtype: refused by name, with what was given, everywhere."""
    from moe_base.errors import InputError
    from topk_attention import torch_op

    q = torch.randn(1, 2, 8, 4)
    for args in ((q, q.half(), q), (q, q, q.double()), (q.long(), q.long(), q.long())):
        got = ", ".join(str(t.dtype) for t in args)
        for call in (lambda a: torch_op.sparse_topk_attention(*a, 3),
                     lambda a: torch.ops.moe_denoise.sparse_topk_attention(*a, 3, None),
                     lambda a: torch.compile(torch_op.sparse_topk_attention, backend="eager")(*a, 3)):
            with pytest.raises(Exception, match=rf"q, k, v must share one floating-point dtype; got {got}"):
                call(args)
    with pytest.raises(InputError, match="one floating-point dtype"):
        torch_op.sparse_topk_attention(q, q.half(), q, 3)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):  # one float dtype still runs
        assert torch_op.sparse_topk_attention(q.to(dtype), q.to(dtype), q.to(dtype), 3).dtype == dtype


def test_torch_op_import_does_not_import_triton():
    code = ("import sys\nimport topk_attention.torch_op\n"
            "print('triton' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "False"


# -- GPU -------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n, topk", [(64, 32), (256, 32), (256, 128), (200, 50)])
def test_kernel_on_gpu_matches_reference(dtype, n, topk):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        pytest.skip("TRITON_INTERPRET is set; the GPU test needs the compiled kernel")
    from moe_model.attention import sparse_topk_attention
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 32, device="cuda", dtype=dtype) for _ in range(3))
    o = sparse_topk_attention_triton(q, k, v, topk)
    r = sparse_topk_attention(q.float(), k.float(), v.float(), topk)
    err = (o.float() - r).abs()
    if dtype == torch.float32:
        assert (err > 1e-4).float().mean().item() <= 1e-3 and err.max().item() < 2e-2, err.max().item()
    else:
        assert err.max().item() < 2e-2, err.max().item()
