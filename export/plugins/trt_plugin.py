"""The sparse top-k attention as a TensorRT Python plugin (``tensorrt.plugin``, TensorRT >= 10.9).

Registered as ``moe_denoise::SparseTopKAttention`` (version "1"), matching the ONNX nodes of the plugin graph
(op type, ``plugin_namespace``, ``plugin_version``, ``aot=1``). Four pieces:

  * the descriptor: the output has the shape and type of q (B, H, N, d);
  * autotune: fp32 or fp16 for all four tensors together, linear layout;
  * the AOT implementation: ``build_aot_artifact`` compiles the Triton kernel to PTX for the build GPU, with
    ``topk``, ``scale``, N and d baked in as compile-time constants (extra kernel arguments can only be 32-bit
    ints, and attributes are not serialized with AOT plugins). TensorRT launches it with the parameters
    (q, k, v, n_bh, o): inputs, integer extras, outputs; the artifact has Triton's hidden scratch pointers
    stripped and a pinned PTX ISA, or the build fails with an AOTError that says why. The engine then runs
    without Python (e.g. under trtexec);
  * a JIT implementation (the same kernel through torch), used only if a graph asks for ``aot=0``.

Nothing here runs without TensorRT; the kernel, the artifact and its launch contract are proven without it
(tests/unit/test_triton_kernel.py, tests/unit/test_aot.py, benchmarks/gpu_check.py).
"""
from __future__ import annotations

from typing import Any

from runtime._optional import require

from .spec import PLUGIN_ID

_REGISTERED = False


def register_plugin() -> None:
    """Register the plugin with TensorRT's Python plugin registry (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    trt = require("tensorrt", "the TensorRT plugin")
    trtp = require("tensorrt.plugin", "the TensorRT plugin (TensorRT >= 10.9)")

    @trtp.register(PLUGIN_ID)
    def _desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, topk: int,
              scale: float) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(PLUGIN_ID)
    def _autotune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                  outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, topk: int, scale: float,
             outputs: tuple[trtp.TensorDesc], tactic: int) -> tuple[bytes, bytes, Any, Any]:
        shape = q.shape_expr  # (B, H, N, d): B symbolic, H, N, d constants of the graph
        dims = [_constant(shape[i], name) for i, name in ((1, "heads"), (2, "tokens N"), (3, "head dim d"))]
        heads, n, d = dims
        art = build_for_current_gpu(n, d, int(topk), "fp16" if q.dtype == trt.float16 else "fp32", heads,
                                    float(scale))
        n_bh = shape[0] * shape[1]
        launch = trtp.KernelLaunchParams()
        launch.grid_x = n_bh
        launch.grid_y = art.grid_y
        launch.block_x = art.block[0]
        launch.shared_mem = art.shared_mem
        extras = trtp.SymIntExprs.from_tuple([trtp.SymInt32(n_bh)])
        return art.kernel_name.encode(), art.ptx.encode(), launch, extras

    @trtp.impl(PLUGIN_ID)
    def _jit(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, topk: int, scale: float,
             outputs: tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .triton_kernel import sparse_topk_attention_triton

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            qt, kt, vt = (torch.as_tensor(t, device="cuda") for t in (q, k, v))
            torch.as_tensor(outputs[0], device="cuda").copy_(
                sparse_topk_attention_triton(qt, kt, vt, int(topk), scale=float(scale)))

    _REGISTERED = True


def _constant(expr: Any, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"the sparse attention plugin needs a static {what} (it is compiled into the kernel); "
                         f"only the batch axis may be dynamic")
    return int(expr.constant_value())


def build_for_current_gpu(n: int, head_dim: int, topk: int, dtype: str, num_heads: int, scale: float):
    """The AOT artifact for the GPU this process builds on (compute capability from torch)."""
    import torch

    from .aot import build_aot_artifact

    major, minor = torch.cuda.get_device_capability()
    return build_aot_artifact(n=n, head_dim=head_dim, topk=topk, dtype=dtype, target=f"cuda:{major}{minor}",
                              num_heads=num_heads, scale=scale)
