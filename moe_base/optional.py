"""Optional heavy dependencies, imported only when a backend is asked for.

``require("tensorrt")`` returns the module or raises MissingBackendError naming the pip package / extra.
"""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import MissingBackendError

# module -> (pip package, extra of this project that installs it)
PACKAGES: dict[str, tuple[str, str | None]] = {
    "torch": ("torch", None),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxruntime_extensions": ("onnxruntime-extensions", "onnx"),
    "triton": ("triton", "gpu"),
    "tensorrt": ("tensorrt", "trt"),
    "skimage": ("scikit-image", "eval"),
    "matplotlib": ("matplotlib", "plot"),
    "cupy": ("cupy-cuda12x", None),
    "polygraphy": ("polygraphy", "trt"),
    "png": ("pypng", "images"),
    "tifffile": ("tifffile", "images"),
}


def install_hint(module: str) -> str:
    """The pip command that installs ``module`` (through this project's extra when it has one)."""
    top = module.split(".")[0]  # "skimage.metrics" is installed as scikit-image
    package, extra = PACKAGES.get(top, (top, None))
    if top == "tensorrt":
        return ("pip install 'moe-denoise[trt]' (TensorRT wheels exist for Linux x86_64/aarch64 with an NVIDIA "
                "driver; on Jetson use the JetPack TensorRT)")
    if extra:
        return f"pip install 'moe-denoise[{extra}]' (or pip install {package})"
    return f"pip install {package}"


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise MissingBackendError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        _reraise_stop(e)
        what, top = purpose or "this operation", module.split(".")[0]
        package = PACKAGES.get(top, (top,))[0]
        if _broken(module, e):
            raise MissingBackendError(f"{what} needs the Python package '{package}', which is installed but cannot be "
                                      f"imported here ({type(e).__name__}: {e}): its install is broken or incomplete "
                                      f"(a system library it needs is missing?). Reinstall it with: "
                                      f"{install_hint(module)}") from e
        raise MissingBackendError(f"{what} needs the Python package '{package}', which "
                                  f"could not be imported here ({e}). Install it with: {install_hint(module)}") from e


def _reraise_stop(e: BaseException) -> None:
    """A Ctrl-C or SIGTERM that arrived while a compiled module was being initialised comes back from the import as
    "ImportError: initialization failed" (pybind11 wraps it); it is the stop, raised as such, not a broken install
    (which the message then told the user to reinstall)."""
    stop = e.__cause__ if isinstance(e.__cause__, KeyboardInterrupt) else e.__context__
    if isinstance(stop, KeyboardInterrupt):
        raise stop


def _broken(module: str, e: BaseException) -> bool:
    """The module is there, and importing it failed for another reason than its own absence."""
    top = module.split(".")[0]  # tensorrt.plugin: whether tensorrt is there (finding a submodule imports it)
    return installed(top) and not (isinstance(e, ModuleNotFoundError) and e.name in (module, top))


def optional_import(module: str) -> tuple[ModuleType | None, str | None]:
    """(module, None) if importable, else (None, why not and how to install it): for code that must define
    things at import time whether or not the package is there (e.g. a Triton kernel's decorator)."""
    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - any import failure means unavailable; the reason is reported
        _reraise_stop(e)
        if _broken(module, e):
            return None, (f"{module} is installed but cannot be imported ({type(e).__name__}: {e}); its install is "
                          f"broken or incomplete (a system library it needs is missing?): reinstall it with "
                          f"{install_hint(module)}")
        return None, f"{module} is not importable ({type(e).__name__}: {e}); install it with {install_hint(module)}"


def installed(module: str) -> bool:
    """Whether ``module`` is there to import (found on the path), whether or not importing it works."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, or a module without a spec
        return False


def available(module: str) -> tuple[bool, str]:
    """(True, version) if importable, else (False, reason)."""
    mod, why = optional_import(module)
    if mod is None:
        return False, why or ""
    version = getattr(mod, "__version__", None)
    if version is None:  # bm3d has none: its distribution's
        from importlib import metadata

        try:
            version = metadata.version(module)
        except (metadata.PackageNotFoundError, ValueError):
            version = "unknown version"
    return True, str(version)
