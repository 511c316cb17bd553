"""The PyTorch backend: the eager model (masked or gather attention), optionally torch.compile'd, CPU or CUDA."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.errors import InputError, MissingBackendError
from moe_base.optional import require

from .base import BaseRunner


class TorchRunner(BaseRunner):
    backend = "torch"

    def __init__(self, weights: str | Path | None = None, preset: str | None = None, model: Any = None,
                 device: str = "cpu", impl: str = "masked", compile: bool = False, threads: int | None = None,
                 name: str | None = None, max_batch: int | None = None, verify_weights: bool = True) -> None:
        super().__init__(name=name or f"torch-{impl}{'-compile' if compile else ''}", max_batch=max_batch)
        if model is None and weights is None:
            raise InputError("TorchRunner needs weights= (a .safetensors/.pt path) or model= (a SmallViT)")
        self.weights, self.preset, self.model = weights, preset, model
        self.device, self.impl, self.compile, self.threads = device, impl, compile, threads
        self.verify_weights = verify_weights
        self._fn = None

    def _activate_impl(self) -> None:
        torch = require("torch", "the PyTorch backend")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise MissingBackendError(f"device {self.device!r} was asked for but torch {torch.__version__} sees no "
                                      f"CUDA GPU; use device='cpu'")
        if self.threads:
            torch.set_num_threads(self.threads)
        if self.model is None:
            from moe_model.checkpoint import load_model

            self.model = load_model(self.weights, preset=self.preset, verify=self.verify_weights)
        model = self.model.eval().to(self.device)
        from moe_model.attention import available_impls

        if self.impl not in available_impls():
            hint = (" (the Triton kernel registers itself when topk_attention.torch_op is imported; the "
                    "moe-denoise CLI does that for --backend torch-triton)" if self.impl == "triton" else "")
            raise MissingBackendError(f"attention impl {self.impl!r} is not available; available: "
                                      f"{', '.join(available_impls())}{hint}")
        model.set_attention_impl(self.impl)
        self._fn = torch.compile(model) if self.compile else model
        self._torch = torch

    def _deactivate_impl(self) -> None:
        self._fn = None

    def _infer_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        return self.forward_on_device(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def forward_on_device(self, x: Any) -> Any:
        """The model (compiled or eager) on a tensor already on the runner's device; the output stays there.

        Runs in true fp32: PyTorch lets cuDNN convolutions use TF32 by default, which moves outputs past the fp32
        tolerance (docs/verification.md); TF32 is off during the call, and the caller's setting restored.
        """
        torch = self._torch
        with torch.inference_mode(), _no_tf32(torch):
            return self._fn(x)

    def device_callable(self, x: np.ndarray) -> Callable[[], Any] | None:
        """On CUDA: the model (compiled or eager, TF32 off) on a device copy of ``x`` made once."""
        if not str(self.device).startswith("cuda") or self._fn is None:
            return None
        xd = self._torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return lambda: self.forward_on_device(xd)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "impl": self.impl, "compile": self.compile,
                "threads": self.threads, "tf32": False}


@contextmanager
def _no_tf32(torch: Any) -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block, the caller's settings restored after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved
