"""The sparse top-k attention as a TensorRT Python plugin (``tensorrt.plugin``, TensorRT >= 10.9).

Registered as ``moe_denoise::SparseTopKAttention`` (version "1"), matching the ONNX nodes of the plugin graph
(op type, ``plugin_namespace``, ``plugin_version``, ``aot=1``). Four pieces:

  * the descriptor: the output has the shape and type of q (B, H, N, d);
  * autotune: fp32 or fp16 for all four tensors together, linear layout;
  * the AOT implementation: ``build_aot_artifact`` compiles the Triton kernel to PTX for the build GPU, with
    ``topk``, ``scale``, N and d baked in as compile-time constants (extra kernel arguments can only be 32-bit
    ints, and attributes are not serialized with AOT plugins). TensorRT launches it with the parameters
    (q, k, v, n_bh, o): inputs, integer extras, outputs. The engine then runs without Python (e.g. under
    trtexec);
  * a JIT implementation (the same kernel through torch), used only if a graph asks for ``aot=0``.

Rules TensorRT's plugin layer imposes, each checked against that layer's own code (tools/trt_layer,
tests/topk_attention/test_trt_*.py):

  * annotations must be real objects: ``tensorrt.plugin`` reads them with ``inspect.signature`` and compares
    classes, so this module must not use ``from __future__ import annotations`` (strings would be refused);
  * the AOT function's return annotation names ``KernelLaunchParams`` and ``SymIntExprs`` exactly;
  * the attributes are declared as one-element NumPy arrays (``topk``: int32, ``scale``: float32), the types the
    ONNX parser gives an INT / FLOAT attribute. TensorRT 10.9-11.1 turn a scalar attribute into a Python
    number with ``int(array)``, which NumPy >= 2.4 refuses for a 1-d array; arrays are passed through as they
    are on every version, and indexed here.

Nothing here runs without TensorRT; the kernel, the artifact and its launch contract are proven without it
(tests/topk_attention/test_triton_kernel.py, tests/topk_attention/test_aot.py, tools/gpu_check.py).
"""
import threading
from typing import Any

from moe_base.errors import InputError
from moe_base.optional import require

from .spec import PLUGIN_ID

_REGISTERED: dict[str, Any] = {}
_REGISTER_LOCK = threading.Lock()


def register_plugin(target: str | None = None) -> None:
    """Register the plugin with TensorRT's Python plugin registry (once per process).

    ``target`` is the GPU the AOT kernel is compiled for ("cuda:90"); None means the GPU this process builds
    on (its compute capability, read from torch when TensorRT asks for the kernel). Importing this module
    registers nothing: an engine build with the plugin graph must call this first (``build_engine`` does).
    Raises MissingBackendError without TensorRT, InputError when called again with another target.
    """
    with _REGISTER_LOCK:  # two builds at once both registered: TensorRT refuses a second registration
        if _REGISTERED:
            if _REGISTERED["target"] != target:
                raise InputError(f"the plugin is already registered for target {_REGISTERED['target']!r} in this "
                                 f"process; cannot register it again for {target!r}")
            return
        trt = require("tensorrt", "the TensorRT plugin")
        trtp = require("tensorrt.plugin", "the TensorRT plugin (TensorRT >= 10.9)")
        import numpy as np
        import numpy.typing as npt

        Int32 = npt.NDArray[np.int32]  # noqa: N806 - the attribute types, as the ONNX parser gives them
        Float32 = npt.NDArray[np.float32]  # noqa: N806

        @trtp.register(PLUGIN_ID)
        def _desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, topk: Int32,
                  scale: Float32) -> trtp.TensorDesc:
            return q.like()

        @trtp.autotune(PLUGIN_ID)
        def _autotune(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                      outputs: tuple[trtp.TensorDesc]) -> list[trtp.AutoTuneCombination]:
            return [trtp.AutoTuneCombination("FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16", "LINEAR")]

        @trtp.aot_impl(PLUGIN_ID)
        def _aot(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, topk: Int32, scale: Float32,
                 outputs: tuple[trtp.TensorDesc], tactic: int
                 ) -> tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
            shape = q.shape_expr  # (B, H, N, d): B symbolic, H, N, d constants of the graph
            heads, n, d = (_constant(shape[i], name) for i, name in ((1, "heads"), (2, "tokens N"), (3, "head dim d")))
            art = build_artifact(n, d, _scalar(topk, int), "fp16" if q.dtype == trt.float16 else "fp32", heads,
                                 _scalar(scale, float), target)
            n_bh = shape[0] * shape[1]
            launch = trtp.KernelLaunchParams()
            launch.grid_x = n_bh
            launch.grid_y = art.grid_y
            launch.block_x = art.block[0]
            launch.shared_mem = art.shared_mem
            extras = trtp.SymIntExprs.from_tuple([trtp.SymInt32(n_bh)])
            return art.kernel_name.encode(), art.ptx.encode(), launch, extras

        @trtp.impl(PLUGIN_ID)
        def _jit(q: trtp.Tensor, k: trtp.Tensor, v: trtp.Tensor, topk: Int32, scale: Float32,
                 outputs: tuple[trtp.Tensor], stream: int) -> None:
            import torch

            from .triton_kernel import sparse_topk_attention_triton

            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                qt, kt, vt = (torch.as_tensor(t, device="cuda") for t in (q, k, v))
                torch.as_tensor(outputs[0], device="cuda").copy_(
                    sparse_topk_attention_triton(qt, kt, vt, _scalar(topk, int), scale=_scalar(scale, float)))

        _REGISTERED["target"] = target


def _scalar(value: Any, kind: type) -> Any:
    """A plugin attribute (a one-element array, or a number) as a Python int / float."""
    import numpy as np

    arr = np.asarray(value).reshape(-1)
    if arr.size != 1:
        raise InputError(f"plugin attribute must hold one value, got {arr.size}: {arr!r}")
    return kind(arr[0])


def _constant(expr: Any, what: str) -> int:
    if not expr.is_constant:
        raise InputError(f"the sparse attention plugin needs a static {what} (it is compiled into the kernel); "
                         f"only the batch axis may be dynamic")
    return int(expr.constant_value())


def build_artifact(n: int, head_dim: int, topk: int, dtype: str, num_heads: int, scale: float,
                   target: str | None = None):
    """The AOT artifact TensorRT gets: for ``target`` ("cuda:90"), or for this process's GPU when None."""
    from .aot import build_aot_artifact

    if target is None:
        import torch

        major, minor = torch.cuda.get_device_capability()
        target = f"cuda:{major}{minor}"
    return build_aot_artifact(n=n, head_dim=head_dim, topk=topk, dtype=dtype, target=target,
                              num_heads=num_heads, scale=scale)
