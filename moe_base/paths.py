"""Where the toolkit keeps what it makes, the same from any folder: one cache folder, and the default names of
exported artifacts in it.

``MOE_DENOISE_CACHE`` sets the cache folder (default ``~/.cache/moe-denoise``; give an absolute path, since a
relative one is taken from each command's current folder): ``artifacts/`` holds exported ONNX
models and engines by default, ``engines/`` and ``timing/`` the TensorRT build caches, ``bench/`` the
benchmark's artifacts. Every command that takes an artifact also takes an explicit path.
"""
import os
from pathlib import Path


def cache_dir() -> Path:
    """``MOE_DENOISE_CACHE`` with ``~`` expanded (a quoted '~/x' made a folder named '~' here), as an absolute path
    (a relative value is taken from the current folder: :func:`cache_dir_note`); empty or unset: the default."""
    value = os.environ.get("MOE_DENOISE_CACHE", "")
    if not value.strip():  # MOE_DENOISE_CACHE= wrote artifacts/ into the current folder
        return home() / ".cache" / "moe-denoise"
    return Path.cwd() / Path(value).expanduser()  # joined, not normalised: 'link/..' means what the kernel says


def home() -> Path:
    """The user's home folder: ``HOME`` when it is an absolute path, else the account's own (an empty HOME, as
    'HOME= cmd' or some service managers leave it, put the cache at /.cache; a relative one, under each current
    folder)."""
    value = os.environ.get("HOME", "")
    if os.path.isabs(value):
        return Path(value)
    try:
        import pwd

        return Path(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):  # no account entry (a container's arbitrary uid): what Python makes of it
        return Path.home()


def cache_dir_note() -> str | None:
    """A warning when ``MOE_DENOISE_CACHE`` is relative: each folder a command runs from then has its own cache (an
    export made in one folder is not found from another)."""
    value = os.environ.get("MOE_DENOISE_CACHE", "")
    if value.strip() and not os.path.isabs(os.path.expanduser(value)):
        return (f"MOE_DENOISE_CACHE={value} is a relative path, taken from the current folder ({cache_dir()}): "
                f"commands run from other folders use other caches. Set an absolute path to have one cache")
    return None


def artifacts_dir() -> Path:
    return cache_dir() / "artifacts"


def onnx_path(flavor: str = "portable", optimize: bool = True, precision: str = "fp32",
              rewrites: tuple[str, ...] | None = None) -> Path:
    """The default path of an exported model: ``<artifacts>/moe_denoiser.<flavor>[.noopt | .<r1>+<r2>][.fp16].onnx``."""
    chosen = "" if rewrites is None else "." + ("+".join(rewrites) or "noopt")
    suffix = ("" if optimize else ".noopt") + chosen + ("" if precision == "fp32" else f".{precision}")
    return artifacts_dir() / f"moe_denoiser.{flavor}{suffix}.onnx"


def engine_path(onnx: Path, precision: str) -> Path:
    """The default engine next to its ONNX model: m.plugin.onnx or m.plugin.fp16.onnx -> m.plugin.<precision>.engine"""
    stem = onnx.name[:-len(".onnx")] if onnx.name.lower().endswith(".onnx") else onnx.name  # m.ONNX too
    for p in (".fp16", ".fp32"):
        stem = stem[:-len(p)] if stem.lower().endswith(p) else stem
    return onnx.with_name(f"{stem}.{precision}.engine")
