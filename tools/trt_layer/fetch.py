"""Fetch TensorRT's own Python plugin layer (``tensorrt.plugin``) from the official bindings wheels, once per machine.

The bindings wheel (``tensorrt-cu12-bindings``, about 1.2 MB) installs from the package index on any Linux
machine; only its compiled core ``tensorrt.so`` needs libnvinfer. We keep two things from it in a cache:
``tensorrt_bindings/plugin/*.py`` (run for real over the stand-in core in ``standin/``), ``tensorrt.so`` (whose
strings say which names the real core has) and the package's ``__init__.py`` (the few names defined in Python).

    python -m tools.trt_layer.fetch            # fetch every supported version, print where they are

Cache: ``$MOE_DENOISE_CACHE/trt-plugin-layer/<version>/`` (default ``~/.cache/moe-denoise``), written atomically
(a half-fetched version is never used).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from moe_base.errors import ToolkitError

PACKAGE = "tensorrt-cu12-bindings"
# The TensorRT versions whose plugin layer the tests run against: the oldest we support and the newest.
SUPPORTED = {"oldest": "10.9.0.34", "newest": "11.4.0.106"}
# The wheel's tags: the plugin layer is pure Python, so one platform's wheel serves every machine.
WHEEL_TAGS = ["--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64"]
STANDIN = Path(__file__).resolve().parent / "standin"


class FetchError(ToolkitError, RuntimeError):
    """The wheel could not be downloaded or unpacked; the message says why (a ToolkitError: the tools' entry shows
    it as one line, not a traceback)."""


def cache_root() -> Path:
    base = Path(os.environ.get("MOE_DENOISE_CACHE", Path.home() / ".cache" / "moe-denoise"))
    return base / "trt-plugin-layer"


def layer_dir(version: str) -> Path:
    """The unpacked ``tensorrt_bindings`` folder of ``version`` (plugin/ and tensorrt.so), fetched if needed."""
    final = cache_root() / version
    if (final / "COMPLETE").is_file() and (final / "tensorrt_bindings" / "__init__.py").is_file():
        return final / "tensorrt_bindings"
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{version}.") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", *WHEEL_TAGS,
               "--disable-pip-version-check", "-q", f"{PACKAGE}=={version}", "-d", tmp]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FetchError(f"could not run pip to fetch {PACKAGE}=={version}: {e}") from e
        wheels = list(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or len(wheels) != 1:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise FetchError(f"pip download {PACKAGE}=={version} failed (exit {res.returncode}): {' | '.join(tail)}")
        stage = Path(tmp) / "stage"
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                members = [m for m in zf.namelist()
                           if (m.startswith("tensorrt_bindings/plugin/") and m.endswith(".py"))
                           or m in ("tensorrt_bindings/tensorrt.so", "tensorrt_bindings/__init__.py")]
                if not any(m.endswith("plugin/_lib.py") for m in members) or "tensorrt_bindings/tensorrt.so" not in members:
                    raise FetchError(f"{wheels[0].name} has no tensorrt_bindings/plugin package or tensorrt.so")
                zf.extractall(stage, members)
        except zipfile.BadZipFile as e:
            raise FetchError(f"{wheels[0].name} is not a valid wheel: {e}") from e
        (stage / "COMPLETE").write_text(wheels[0].name + "\n")
        if final.exists():  # a concurrent fetch finished first, or an incomplete leftover
            shutil.rmtree(final, ignore_errors=True)
        try:
            stage.rename(final)
        except OSError:
            if not (final / "COMPLETE").is_file():
                raise
    return final / "tensorrt_bindings"


def numpy_python(minimum: str = "2.4") -> str:
    """An interpreter with NumPy >= ``minimum`` and nothing else: this one if its NumPy is new enough, else a small
    virtual environment made once in the cache (the test environment may pin an older NumPy: PyTriton does)."""
    import numpy

    if tuple(int(x) for x in numpy.__version__.split(".")[:2]) >= tuple(int(x) for x in minimum.split(".")):
        return sys.executable
    venv = cache_root() / f"numpy-{minimum}"
    python = venv / "bin" / "python"
    if (venv / "COMPLETE").is_file():
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"numpy>={minimum}"]]
    for cmd in steps:
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FetchError(f"could not make an environment with NumPy >= {minimum}: {e}") from e
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise FetchError(f"could not make an environment with NumPy >= {minimum} ({' '.join(cmd[:4])}): "
                             f"{' | '.join(tail)}")
    (venv / "COMPLETE").write_text(minimum + "\n")
    return str(python)


def environment(version: str, repo: Path) -> dict[str, str]:
    """Environment in which ``import tensorrt`` is the stand-in core and ``tensorrt.plugin`` the real layer."""
    layer = layer_dir(version)
    path = os.pathsep.join([str(STANDIN), str(repo)])
    return {**os.environ, "MOE_TRT_PLUGIN_LAYER": str(layer), "MOE_TRT_PLUGIN_LAYER_VERSION": version,
            "PYTHONPATH": path + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("versions", nargs="*", default=list(SUPPORTED.values()))
    args = p.parse_args(argv)
    for v in args.versions:
        try:
            print(f"{v}: {layer_dir(v)}")
        except FetchError as e:
            print(f"{v}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
