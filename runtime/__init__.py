"""Runners (PyTorch, ONNX Runtime, TensorRT) behind one interface, parity checks, tiling and image I/O.

Importing this package needs only NumPy: each backend is imported when it is asked for, and a missing one
raises MissingBackendError naming what to install. The errors runners raise are re-exported here.
"""
from moe_base.errors import (
    ArtifactError,
    ArtifactMismatchError,
    InputError,
    MissingBackendError,
    NoGPUError,
    NotActiveError,
    ParityError,
    PluginMissingError,
    ToolkitError,
)

from .base import BaseRunner, validate_batch
from .images import read_image, write_image
from .parity import ParityReport, compare, parity_inputs
from .photo import denoise_file
from .tiling import denoise_array

__all__ = ["BaseRunner", "validate_batch", "TorchRunner", "OrtRunner", "TensorRTRunner", "ParityReport", "compare",
           "parity_inputs", "denoise_array", "denoise_file", "read_image", "write_image", "ToolkitError",
           "InputError", "MissingBackendError", "NoGPUError", "ArtifactError", "ArtifactMismatchError",
           "PluginMissingError", "ParityError", "NotActiveError"]


def __getattr__(name: str):  # the runner modules are imported when a runner is asked for
    if name == "TorchRunner":
        from .torch_runner import TorchRunner

        return TorchRunner
    if name == "OrtRunner":
        from .ort_runner import OrtRunner

        return OrtRunner
    if name == "TensorRTRunner":
        from .trt_runner import TensorRTRunner

        return TensorRTRunner
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")


def __dir__() -> list[str]:  # the runners imported on demand are listed too (a REPL's completion lacked them)
    return sorted({*globals(), *__all__})
