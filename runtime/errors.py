"""Typed errors of the runtime. Each message says what was given, what was expected and what to do."""
from __future__ import annotations


class RuntimeToolkitError(Exception):
    """Base class of the toolkit's runtime errors."""


class InputError(RuntimeToolkitError, ValueError):
    """An input (array, image, file, setting) is not what the runner or function accepts."""


class MissingBackendError(RuntimeToolkitError, ImportError):
    """A backend was asked for but its package (or hardware) is not available here."""


class NoGPUError(MissingBackendError):
    """A GPU backend was asked for on a machine where no CUDA GPU is visible."""


class ArtifactMismatchError(RuntimeToolkitError, ValueError):
    """An artifact's manifest does not match this environment (versions, GPU, plugin, model)."""


class ArtifactError(RuntimeToolkitError, ValueError):
    """An artifact file is missing, truncated or corrupt."""


class PluginMissingError(ArtifactError):
    """An engine needs a TensorRT plugin that is not registered in this process."""


class ParityError(RuntimeToolkitError):
    """A backend's outputs differ from the PyTorch reference by more than the tolerance."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report
