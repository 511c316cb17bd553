"""Runners (PyTorch, ONNX Runtime, TensorRT) behind one interface, parity checks, tiling and image I/O.

Importing this package needs only numpy: each backend is imported when it is asked for, and a missing one
raises MissingBackendError naming what to install.
"""
from moe_base.errors import (
    ArtifactError,
    ArtifactMismatchError,
    InputError,
    MissingBackendError,
    ParityError,
    ToolkitError,
)
from moe_base.tolerances import TOLERANCES, Tolerance, get_tolerance

from .base import BaseRunner, validate_batch
from .parity import ParityReport, compare, parity_inputs

__all__ = ["BaseRunner", "validate_batch", "ArtifactError", "ArtifactMismatchError", "InputError",
           "MissingBackendError", "ParityError", "ToolkitError", "ParityReport", "compare", "parity_inputs",
           "TOLERANCES", "Tolerance", "get_tolerance", "TorchRunner", "OrtRunner"]


def __getattr__(name: str):  # lazy: the runner modules are cheap, but keep `import runtime` minimal
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
