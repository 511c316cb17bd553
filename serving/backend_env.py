"""Make Triton's Python backend stub load *this* interpreter's libpython.

Triton runs each Python model instance in a stub process (``triton_python_backend_stub``, shipped by PyTriton
for Python 3.8 to 3.13) that links ``libpython3.X.so.1.0`` by its soname. The dynamic loader resolves that name
through ``LD_LIBRARY_PATH`` and then the system's library folders. When the interpreter running the server was
built outside the system packages (pyenv, conda, a hand-built Python) and the system also has a libpython of the
same minor version, the stub gets the *system's* library with the interpreter's own standard library on its
path; the mismatch fails model loading with errors such as ``AttributeError: '_thread.RLock' object has no
attribute '_recursion_count'`` (measured here: pyenv 3.11.7 over Debian's 3.11 library).

:func:`prepare` puts the running interpreter's library folder (``sysconfig.get_config_var("LIBDIR")``) first on
``LD_LIBRARY_PATH`` of this process, which the ``tritonserver`` process and its stubs inherit, when that folder
holds the shared library; otherwise it returns a hint that the server adds to its error if loading fails.
"""
from __future__ import annotations

import os
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from runtime import MissingBackendError

EXTRA_HINT = "pip install 'moe-denoise[serve]' (installs nvidia-pytriton and tritonclient)"
SYSTEM_PREFIXES = ("/usr", "/usr/local")


@dataclass(frozen=True)
class BackendEnv:
    """What :func:`prepare` found and did."""

    libdir: str | None  # the folder put first on LD_LIBRARY_PATH, or None
    shared_library: str | None  # the interpreter's libpython that the stub will load, if known
    hint: str | None  # what to do if model loading fails anyway


def _stub_versions() -> list[str]:
    import pytriton  # noqa: F401 - its location holds the stubs

    stubs = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs"
    return sorted(p.name for p in stubs.iterdir() if p.is_dir()) if stubs.is_dir() else []


def check_pytriton() -> None:
    """Raise MissingBackendError naming the extra when PyTriton (or its server) cannot run here."""
    if not sys.platform.startswith("linux"):
        raise MissingBackendError(f"the Triton server that PyTriton ships runs on Linux only; this is {sys.platform}. "
                                  f"Run 'moe-denoise serve' on Linux (x86_64 or aarch64), or serve the repository "
                                  f"from 'moe-denoise triton-repo' with NVIDIA's Triton container")
    try:
        import pytriton.triton  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as e:
        raise MissingBackendError(f"serving needs PyTriton and tritonclient, which could not be imported here ({e}). "
                                  f"Install them with: {EXTRA_HINT}") from e
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stubs = _stub_versions()
    if version not in stubs:
        raise MissingBackendError(f"PyTriton has no Python backend stub for Python {version} (it ships "
                                  f"{', '.join(stubs) or 'none'}); run the server with one of those Python versions")


def prepare(environ: os._Environ[str] | dict[str, str] | None = None) -> BackendEnv:
    """Put this interpreter's libpython folder first on LD_LIBRARY_PATH (of ``environ``, default os.environ)."""
    env = os.environ if environ is None else environ
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
    library = Path(libdir) / soname if libdir and soname else None
    if library is not None and soname.endswith((".so", ".so.1.0")) and library.is_file():
        current = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in current if p != libdir])
        return BackendEnv(libdir, str(library), None)
    prefix = os.path.realpath(sys.base_prefix)
    if prefix in SYSTEM_PREFIXES:
        return BackendEnv(None, None, None)  # the system's own interpreter: the loader finds its library
    major_minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    hint = (f"this interpreter ({sys.executable}, Python {sys.version.split()[0]} from {prefix}) has no shared "
            f"libpython{major_minor} in {libdir}, so Triton's Python backend stub loads whichever "
            f"libpython{major_minor}.so.1.0 the system has, which must be the same build. Create the virtual "
            f"environment with a Python built with --enable-shared (pyenv: PYTHON_CONFIGURE_OPTS=--enable-shared "
            f"pyenv install {sys.version.split()[0]}) or with the system's python3, or put the folder holding this "
            f"Python's libpython{major_minor}.so.1.0 first on LD_LIBRARY_PATH")
    return BackendEnv(None, None, hint)
