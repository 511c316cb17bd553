"""The runner protocol: ``infer(feeds) -> outputs`` validates, chunks, then calls ``_infer_impl``.

Runners are context managers (``activate`` / ``deactivate``); ``runner(x)`` is a shortcut that takes and
returns one float array, so a runner plugs straight into ``runtime.tiling.denoise_array``.
"""
from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.contract import INPUT_NAME, OUTPUT_NAME, TILE_SHAPE
from moe_base.errors import InputError, NotActiveError


def conversion_hint(obj: Any, layout: str) -> str:
    """How to make a numpy array of what a caller passed instead (``layout``: the axes expected), for 'convert it
    with ...'."""
    kind = type(obj)
    if kind.__module__.startswith("torch") and hasattr(obj, "detach"):  # no torch import for the check
        return f"x.detach().cpu().numpy() (a torch tensor; float32, {layout})"
    if kind.__module__.startswith("PIL.") and hasattr(obj, "getbands"):
        return ("np.asarray(img, dtype=np.float32) / 255 (an 8-bit PIL image), or read the file with "
                "runtime.read_image(path), which reads every bit depth")
    return f"np.asarray(x, dtype=np.float32) ({layout})"


def validate_batch(x: Any, dtypes: tuple[np.dtype, ...] = (np.dtype(np.float32),), name: str = INPUT_NAME,
                   tile_shape: tuple[int, int, int] = TILE_SHAPE, check_range: bool = True) -> np.ndarray:
    """Check one input batch: ndarray [B, C, H, W] of an accepted dtype, finite, values in [0, 1]."""
    if not isinstance(x, np.ndarray):
        raise InputError(f"input '{name}' must be a numpy array, got {type(x).__name__}; convert it with "
                         f"{conversion_hint(x, 'B x 3 x 32 x 32')}")
    accepted = " or ".join(str(d) for d in dtypes)
    if x.dtype not in dtypes:
        raise InputError(f"input '{name}' has dtype {x.dtype}; this runner expects {accepted}. Convert with "
                         f"x.astype(np.{dtypes[0]}) (uint8 images: x.astype(np.float32) / 255)")
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(tile_shape) or x.shape[0] < 1:
        raise InputError(f"input '{name}' has shape {list(x.shape)}; expected [B, {', '.join(map(str, tile_shape))}] "
                         f"with B >= 1 (RGB tiles, channels first). For whole photos use runtime.denoise_array or "
                         f"'moe-denoise denoise', which tile them")
    if check_range:
        check_unit_range(x, f"input '{name}'")
    return x


def check_unit_range(x: np.ndarray, what: str) -> None:
    """Pixels must be finite and in [0, 1]; the error says how many are not, or the range found."""
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise InputError(f"{what} has {bad} NaN/Inf values; expected finite pixels in [0, 1]")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:  # each end with the digits that show it is outside: 1.0001 read '[0.5, 1]'
        outside = int(np.count_nonzero((x < 0.0) | (x > 1.0)))
        raise InputError(f"{what} has values in [{_shown(lo, lo < 0.0)}, {_shown(hi, hi > 1.0)}] ({outside:,} outside "
                         f"[0, 1]); expected [0, 1]. Scale 8-bit images by 1/255 and 16-bit by 1/65535, or "
                         f"np.clip(x, 0, 1)")


def _shown(value: float, outside: bool) -> str:
    """``value`` with 4 significant digits, or as many as it takes to tell an ``outside`` value from 0 or 1."""
    for digits in range(4, 18):
        text = f"{value:.{digits}g}"
        if not outside or float(text) not in (0.0, 1.0):
            return text
    return repr(value)


class BaseRunner:
    """Base of every backend. Subclasses set ``backend``/``precision`` and implement ``_infer_impl``."""

    backend: str = "base"
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME

    def __init__(self, name: str | None = None, precision: str = "fp32", max_batch: int | None = None,
                 input_dtypes: tuple[Any, ...] = (np.float32,)) -> None:
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer))
                                      or max_batch < 1):
            raise InputError(f"max_batch= is the most tiles a call takes, a whole number >= 1 (None: no limit); got "
                             f"{max_batch!r}")
        self.name = name or self.backend
        self.precision = precision
        self.max_batch = None if max_batch is None else int(max_batch)
        self.min_batch = 1  # the fewest tiles a call takes (a TensorRT engine's profile minimum); fewer are padded
        self.input_dtypes = tuple(np.dtype(d) for d in input_dtypes)
        self.is_active = False
        self._with_depth = 0  # open 'with runner:' blocks, over all threads
        self._with_owns = False  # the outermost one activated the runner (and so releases it)
        self._lifecycle = threading.RLock()

    def __getstate__(self) -> dict[str, Any]:  # a lock does not pickle; an inactive runner did and still does
        if self.is_active:  # its loaded model or session: "TypeError: cannot pickle 'module' object"
            raise TypeError(f"an active {type(self).__name__} cannot be pickled (its loaded model does not): pass it to "
                            f"other processes inactive (made outside 'with runner:'), and each process activates "
                            f"its own copy")
        state = {key: value for key, value in self.__dict__.items()  # nor does a module a released runner keeps
                 if not isinstance(value, types.ModuleType)}  # (torch): one used once could not be pickled
        state.pop("_lifecycle", None)
        return state

    def __copy__(self) -> BaseRunner:  # shares what is loaded, as copy.copy did before pickling refused active ones
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        new._lifecycle = threading.RLock()
        return new

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lifecycle = threading.RLock()

    # --- lifecycle -------------------------------------------------------------------------------------
    def activate(self) -> BaseRunner:
        with self._lifecycle:
            if not self.is_active:
                try:
                    self._activate_impl()
                except BaseException:  # a session, engine or model made before the failure is released, not kept
                    with contextlib.suppress(Exception):  # by a runner never active (deactivate skips it)
                        self._deactivate_impl()
                    raise
                self.is_active = True
        return self

    def deactivate(self) -> None:
        with self._lifecycle:
            if self.is_active:
                self._deactivate_impl()
                self.is_active = False

    def __enter__(self) -> BaseRunner:
        """Nested and concurrent ``with runner:`` blocks share one activation: the block that activated the runner
        is the one that releases it, when the last block open (in any thread) ends."""
        with self._lifecycle:
            if self._with_depth == 0:
                self._with_owns = not self.is_active
            self.activate()
            self._with_depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lifecycle:
            self._with_depth -= 1
            if self._with_depth == 0 and self._with_owns:
                self._with_owns = False
                self.deactivate()

    # --- inference -------------------------------------------------------------------------------------
    def require_active(self) -> None:
        """NotActiveError unless the runner is active (``with runner:`` or :meth:`activate`)."""
        if not self.is_active:
            raise NotActiveError(f"runner '{self.name}' is not active: use 'with runner:' or call runner.activate()")

    def infer(self, feeds: Mapping[str, np.ndarray] | np.ndarray, check: bool = True) -> dict[str, np.ndarray]:
        """Run a batch. ``feeds``: {input_name: array} or the array itself. Batches beyond ``max_batch`` are chunked."""
        self.require_active()
        if isinstance(feeds, Mapping):
            unknown = sorted(set(feeds) - {self.input_name})
            if unknown or self.input_name not in feeds:
                raise InputError(f"runner '{self.name}' takes one input named '{self.input_name}'; got "
                                 f"{sorted(feeds)}")
            x = feeds[self.input_name]
        else:
            x = feeds
        if check:
            validate_batch(x, self.input_dtypes, self.input_name)
        step = self.max_batch or len(x)
        if len(x) <= step:
            out = self._infer_at_least_min(x)
        else:
            out = np.concatenate([self._infer_at_least_min(x[i : i + step]) for i in range(0, len(x), step)])
        return {self.output_name: out}

    def _infer_at_least_min(self, x: np.ndarray) -> np.ndarray:
        """One chunk; one smaller than ``min_batch`` (an engine built for batches of 8 or more) is padded with
        copies of its last tile, whose outputs are dropped (each tile is denoised on its own)."""
        n = len(x)
        if n < self.min_batch:
            padded = np.concatenate([x, np.repeat(x[-1:], self.min_batch - n, axis=0)])
            return self._infer_impl(padded)[:n]
        return self._infer_impl(np.ascontiguousarray(x))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.infer(x)[self.output_name]

    # --- for subclasses --------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        pass

    def _deactivate_impl(self) -> None:
        pass

    def _infer_impl(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def on_gpu(self) -> bool:
        """Whether the model runs on a GPU (which wants larger batches than a CPU: runtime.tiling.batch_size_for)."""
        return False

    def device_callable(self, x: np.ndarray) -> Callable[[], Any] | None:
        """A call that runs the model once on a device-resident copy of ``x`` and leaves the output on the device
        (compute only: no host copies), for timing GPU backends. None when the runner has no such path; on a CPU
        the host arrays are the device arrays and ``runner(x)`` is already compute only."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "backend": self.backend, "precision": self.precision, "max_batch": self.max_batch}

    def __repr__(self) -> str:  # a notebook showed '<runtime.torch_runner.TorchRunner object at 0x7fae...>'
        try:
            shown = ", ".join(f"{key}={value!r}" for key, value in self.describe().items() if value is not None)
        except Exception:  # noqa: BLE001 - a repr never raises: a half-made runner still shows its name
            shown = f"name={getattr(self, 'name', '?')!r}"
        return f"{type(self).__name__}({shown}, active={getattr(self, 'is_active', False)})"


def made_from(manifest: Mapping[str, Any] | None) -> dict[str, str]:
    """{"weights": file, "weights_sha256": hash} as an artifact's manifest records the weights it was made from ({}
    when it does not), for the runners' ``describe()``: the file may have changed since; the hash says what it held."""
    model = (manifest or {}).get("model")
    if not isinstance(model, Mapping) or not model.get("weights_file"):  # none recorded (or a damaged entry)
        return {}
    return {"weights": str(model["weights_file"]), "weights_sha256": str(model.get("weights_sha256") or "")}


def artifact_made_from(artifact: str | Path) -> dict[str, str]:
    """:func:`made_from` of the manifest next to ``artifact``; {} when there is no file, no manifest, or one that
    cannot be read (the runner that loads it says what is wrong; here the weights are only unknown)."""
    from moe_base.errors import ToolkitError
    from moe_base.manifest import read_manifest

    if not Path(artifact).is_file():
        return {}
    try:
        return made_from(read_manifest(artifact, required=False))
    except ToolkitError:
        return {}


def weights_label(path: str, sha256: str | None = None, by_name: bool = False) -> str:
    """Shipped weights by their name ("blind", "sigma20"), any other weights by their path (``by_name``: by their
    file's name alone); when ``sha256`` (what an artifact's manifest recorded) no longer matches the file, says
    that the file has changed since."""
    from moe_base.fileio import holds
    from weights import SHIPPED

    resolved = Path(path).resolve()
    label = next((name for name, file in SHIPPED.items() if file.resolve() == resolved),
                 Path(path).name if by_name else path)
    if sha256 and not holds(resolved, sha256):
        shipped = next((name for name, file in SHIPPED.items() if holds(file, sha256)), None)
        if shipped is not None:  # an export of the default weights before an upgrade made other weights the default:
            return shipped  # it was labelled 'blind as it was when exported' while it ran the sigma20 specialist
        return f"{label} as it was when exported (sha256 {sha256[:12]}...; the file has changed or gone since)"
    return label


def runner_label(runner: Any, by_name: bool = False) -> str:
    """'torch-masked (weights sigma20)': the runner's name and, where it knows them, its weights (``by_name``:
    weights of the user's by their file's name, not their path)."""
    described = runner.describe()
    weights = described.get("weights")
    label = weights_label(weights, described.get("weights_sha256"), by_name) if weights else None
    name = runner.name
    if described.get("backend") == "ort" and name == f"ort-{described.get('provider')}":  # its default name: the
        # model's kind added, as torch's names have theirs (an fp16 plugin graph and the fp32 portable one were both
        # 'ort-cpu')
        precision = described.get("precision", "fp32")
        name = "-".join([name, *(["plugin"] if described.get("plugin_nodes") else []),
                         *([precision] if precision != "fp32" else [])])
    return name + (f" (weights {label})" if label else "")


@contextmanager
def activated(fn: Any) -> Iterator[Any]:
    """For the entry points that take a tile denoiser (``denoise_array``, ``denoise_file``, ``guard_for_array``): a
    runner given inactive is activated for the call and released after it, so ``denoise_array(image,
    TorchRunner("blind"))`` works; a runner already active (``with runner:`` around many calls loads it once) and
    any other callable pass through untouched."""
    if isinstance(fn, BaseRunner):  # 'with' blocks nest and overlap across threads (BaseRunner.__enter__)
        with fn:
            yield fn
    else:
        yield fn
