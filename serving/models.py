"""What the two served models compute, as plain functions of numpy arrays (no Triton import here).

``TileModel``: a batch of requests, each float32 tiles [b, 3, 32, 32] in [0, 1], is checked request by
request, run through the runner as one batch, and split back into one response per request.

``ImageModel``: one request holds a whole photo, uint8 or uint16 [H, W, C] (C = 1 gray, 2 gray+alpha, 3 RGB,
4 RGBA), of any size up to a pixel limit. It is converted to [0, 1] exactly as ``runtime.images.read_image``
converts a file, tiled and blended by ``runtime.tiling.denoise_array`` (its tiles batched into runner calls),
and quantised back exactly as ``runtime.images.write_image`` quantises. So a photo denoised through the server
is the photo ``moe-denoise denoise`` writes with the same runner and settings; the settings a request may carry
(the guard's ``sigma`` and ``guard``, ``strength``, ``two_scales``) are :class:`PhotoOptions`. The response holds
the guard's decision next to the photo (``guard``: ``runtime.guard.GuardResult.as_dict()`` as JSON, ``null`` with
no guard) and how the server denoised it (``settings``: :meth:`ImageModel.settings` as JSON: runner and weights,
overlap, batch size, tiles), so a remote run reports what a local one does.

Triton checks the name, dtype, shape and byte size of every input before a request is queued, so a wrong
shape, a wrong dtype or a truncated body never reaches these functions; they check the values (NaN, range)
and the image limits.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime import InputError
from runtime.base import INPUT_NAME, OUTPUT_NAME, TILE_SHAPE, runner_label, validate_batch
from runtime.guard import GuardResult, check_guard_sigma, check_sigma, check_strength
from runtime.images import available_memory
from runtime.jpeg_traces import deferred_two_scales_reason
from runtime.photo import DENOISER_BYTES_PER_TILE
from runtime.tiling import band_working_bytes, batch_size_for, denoise_array_guarded, plan_tiles

from .config import (
    GUARD_OUTPUT,
    GUARD_PARAMETER,
    IMAGE_INPUTS,
    IMAGE_OUTPUTS,
    SETTINGS_OUTPUT,
    SIGMA_PARAMETER,
    STRENGTH_PARAMETER,
    TWO_SCALES_PARAMETER,
)

_TOP = {"uint8": 255, "uint16": 65535}
BATCHED_WITH_INVALID = "valid request(s) batched with the invalid one(s) fail too"  # clients may retry on this


def _bad_request_message(problems: list[tuple[int, str]], total: int) -> str:
    listed = "; ".join(f"request {i + 1} of {total}: {msg}" for i, msg in problems)
    if total == 1:
        return listed
    good = total - len(problems)
    return (f"{listed}. Triton ran these {total} requests as one batch and reports one error for a batch, so "
            f"the {good} {BATCHED_WITH_INVALID}: send them again")


class TileModel:
    """Requests of float32 tiles -> one runner call -> one response per request."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        arrays: list[np.ndarray] = []
        problems: list[tuple[int, str]] = []
        for i, request in enumerate(requests):
            x = request.get(INPUT_NAME) if hasattr(request, "get") else request[INPUT_NAME]
            try:
                arrays.append(validate_batch(x, name=INPUT_NAME, tile_shape=TILE_SHAPE))
            except InputError as e:
                problems.append((i, str(e)))
        if problems:
            raise InputError(_bad_request_message(problems, len(requests)))
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        out = self.runner.infer({INPUT_NAME: batch}, check=False)[OUTPUT_NAME]
        ends = np.cumsum([len(a) for a in arrays])[:-1]
        return [{OUTPUT_NAME: part} for part in np.split(out, ends)]


def image_to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 HxWxC -> float32 in [0, 1], the conversion ``read_image`` applies to a file."""
    return pixels.astype(np.float32) / np.float32(_TOP[pixels.dtype.name])


def unit_to_image(x: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """float [0, 1] -> uint8 / uint16, rounded and clipped as ``write_image`` quantises before writing."""
    name = np.dtype(dtype).name
    return np.rint(np.clip(x.astype(np.float64), 0.0, 1.0) * _TOP[name]).astype(name)


@dataclass(frozen=True)
class PhotoOptions:
    """What a photo request asks of the clean-input guard, from its parameters (all optional): ``two_scales`` (bool;
    sent by ``moe-denoise denoise --server`` for a JPEG file, whose format only the client knows; pixels that were
    JPEG-compressed are found here without it), ``guard`` (bool; false turns the guard off for this photo),
    ``sigma`` (the photo's noise std on [0, 1] pixels, instead of the estimate) and ``strength`` (the share of the
    change from the input kept, 0 to 1). Numbers may come as numbers or as strings such as "0.7" (a string is exact
    on both protocols)."""
    two_scales: bool = False
    guard: bool = True
    sigma: float | None = None
    strength: float = 1.0


def _parameter(parameters: Mapping[str, Any], name: str, default: float | None,
               check: Callable[[Any, str], None]) -> float | None:
    """A number parameter (a number, or a string holding one), checked by ``check`` (runtime.guard's checks)."""
    given = parameters.get(name, default)
    try:
        value = given if given is None else float(given)
    except (TypeError, ValueError):
        value = float("nan")  # refused by the check, with the parameter's meaning
    try:
        check(value, f"the request parameter '{name}'")
    except InputError as e:
        raise InputError(f"{e} (sent: {given!r})") from None
    return value


def _flag(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    """A yes/no parameter: a bool, or the strings "true" / "false" (any case)."""
    given = parameters.get(name, default)
    if isinstance(given, bool):
        return given
    if isinstance(given, str) and given.strip().lower() in ("true", "false"):
        return given.strip().lower() == "true"
    raise InputError(f"the request parameter '{name}' must be true or false (a bool, or the string \"true\" or "
                     f"\"false\"); got {given!r}")


PHOTO_PARAMETERS = (TWO_SCALES_PARAMETER, GUARD_PARAMETER, SIGMA_PARAMETER, STRENGTH_PARAMETER)
TRITON_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size", "classification", "headers",
                               "priority", "timeout", "sequence_id", "sequence_start", "sequence_end"})
"""Request parameters Triton and its clients may pass along (tritonclient sends ``binary_data_output``): left alone."""


def photo_options(request: Any) -> PhotoOptions:
    """A request's :class:`PhotoOptions`, or InputError naming the parameter, what was sent and what is taken (an
    unknown parameter too: a misspelt 'strenght' was ignored, and the photo denoised at full strength)."""
    parameters = getattr(request, "parameters", None) or {}
    unknown = sorted(str(k) for k in parameters if k not in PHOTO_PARAMETERS and k not in TRITON_PARAMETERS)
    if unknown:
        raise InputError(f"unknown request parameter(s) {unknown}; a photo request takes {list(PHOTO_PARAMETERS)} "
                         f"(each optional)")
    options = PhotoOptions(two_scales=_flag(parameters, TWO_SCALES_PARAMETER, False),
                           guard=_flag(parameters, GUARD_PARAMETER, True),
                           sigma=_parameter(parameters, SIGMA_PARAMETER, None, check_sigma),
                           strength=float(_parameter(parameters, STRENGTH_PARAMETER, 1.0, check_strength)))
    check_guard_sigma(options.sigma, options.guard, f"the request parameter '{SIGMA_PARAMETER}'",
                      f"'{GUARD_PARAMETER}' false")
    return options


def image_peak_bytes(height: int, width: int, channels: int, overlap: int, batch_size: int) -> int:
    """An upper bound of the memory :meth:`ImageModel.denoise` takes for one photo, beyond the request's pixels:
    per value, the float32 image, the denoised whole and its blend (4 bytes each), two float64 arrays while it is
    quantised (8 each) and the answer's integers (up to 2); one band's working arrays
    (:func:`runtime.tiling.band_working_bytes`, which grow with the width), and what the runner may grow by
    (:data:`runtime.photo.DENOISER_BYTES_PER_TILE` a tile of a call)."""
    values = height * width * channels
    batch_size = plan_tiles(height, width, overlap=overlap).call_size(batch_size)
    return (values * (3 * 4 + 2 * 8 + 2) + band_working_bytes(width, overlap=overlap, batch_size=batch_size)
            + DENOISER_BYTES_PER_TILE * batch_size)


class ImageModel:
    """One whole photo per request, tiled and blended with the runner; same dtype out as in. ``guard``: apply the
    clean-input guard (``runtime.guard``) with its own noise estimate, as ``moe-denoise denoise`` does.
    ``give_up``: asked before each runner call; a reason it returns ends the photo with that message (a server
    that is stopping abandons a photo it cannot finish in time, instead of computing it for nobody)."""

    def __init__(self, runner: Any, max_pixels: int, overlap: int = 16, batch_size: int | None = None,
                 guard: bool = True, give_up: Callable[[], str | None] | None = None) -> None:
        self.runner = runner
        self.give_up = give_up  # asked before every runner call: a reason ends the photo (the server is stopping)
        self.max_pixels = max_pixels
        self.overlap = overlap
        side = math.isqrt(max_pixels)  # panoramas pass; strips a few pixels wide do not (planned once, not a request)
        self.max_tiles = 2 * plan_tiles(side, side, overlap=overlap).count
        self.batch_size = batch_size_for(runner, batch_size)  # None: 64 tiles a call on a CPU, 256 on a GPU
        self.guard = guard
        described = runner.describe() if hasattr(runner, "describe") else None
        self.denoised_by = (runner_label(runner, by_name=True) if described is not None
                            else getattr(runner, "name", None))
        self.backend = None if described is None else without_folders(described)

    def settings(self, pixels: np.ndarray) -> dict[str, Any]:
        """How this server denoises ``pixels``, as a local run's report says it: ``denoised_by`` (the runner and
        its weights, e.g. "torch-masked (weights blind)"; None for a plain function), ``backend`` (the runner's
        ``describe()``, its files by name: :func:`without_folders`), ``overlap``, ``batch_size`` (tiles a runner
        call), ``tiles`` (the photo's count) and ``guard`` (False: started with --no-guard; --check-local could not
        tell why a guarded local run differed)."""
        return {"denoised_by": self.denoised_by, "backend": self.backend, "overlap": self.overlap, "guard": self.guard,
                "batch_size": self.batch_size, "tiles": plan_tiles(pixels.shape[0], pixels.shape[1],
                                                                   overlap=self.overlap).count}

    def _tiles(self, batch: np.ndarray) -> np.ndarray:
        reason = self.give_up() if self.give_up is not None else None
        if reason:
            raise InputError(reason)
        return self.runner.infer({INPUT_NAME: batch}, check=False)[OUTPUT_NAME]

    def check(self, request: Mapping[str, np.ndarray]) -> np.ndarray:
        """The request's pixels, or InputError saying what is wrong with them."""
        given = [name for name in IMAGE_INPUTS.values() if name in request]
        if len(given) != 1:
            raise InputError(f"send exactly one of the inputs {sorted(IMAGE_INPUTS.values())} (uint8 or uint16 "
                             f"pixels, [H, W, C]); got {sorted(request) or 'none'}")
        pixels = request[given[0]]
        expected = next(k for k, v in IMAGE_INPUTS.items() if v == given[0])
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.dtype(expected):
            raise InputError(f"input '{given[0]}' must hold {expected} pixels; got "
                             f"{getattr(pixels, 'dtype', type(pixels).__name__)}")
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4) or min(pixels.shape[:2]) < 1:
            raise InputError(f"input '{given[0]}' has shape {list(pixels.shape)}; expected [H, W, C] with H, W >= 1 "
                             f"and C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)")
        h, w, c = pixels.shape
        if h * w > self.max_pixels:
            raise InputError(f"the image is {w}x{h} = {h * w:,} pixels; this server takes at most "
                             f"{self.max_pixels:,} pixels per image (moe-denoise serve --max-image-pixels). Send a "
                             f"smaller image, crop it into parts, or restart the server with a higher limit")
        needed = image_peak_bytes(h, w, c, self.overlap, self.batch_size)
        room, bound = available_memory()
        if room is not None and needed > room:  # a 1 x 16,777,216 photo, within the pixel limit, took 9 GB and more
            raise InputError(f"the image is {w}x{h} ({c} channel(s)): denoising it needs about {needed / 2**30:.2f} GiB "
                             f"(the server works in bands of whole rows, so a very wide image costs the most), and this "
                             f"server can get only {max(room, 0) / 2**30:.2f} GiB more ({bound}). Send a smaller or "
                             f"narrower image, or crop it into parts")
        most = self.max_tiles
        tiles = plan_tiles(h, w, overlap=self.overlap).count
        if tiles > most:  # a 16,777,216 x 1 strip, within the pixel limit, was 2.1 M tiles: an hour of a CPU
            raise InputError(f"the image is {w}x{h}: {tiles:,} tiles to denoise (a tile steps {TILE_SHAPE[-1] - self.overlap} "
                             f"pixels, so a strip a few pixels wide or tall costs far more than its pixels), more than "
                             f"{most:,}, twice those of a square image of the {self.max_pixels:,} pixels this server "
                             f"takes (--max-image-pixels). Send a less narrow image, or crop it into parts")
        return pixels

    def options(self, request: Any) -> PhotoOptions:
        """The request's :class:`PhotoOptions`, or InputError: also for a ``sigma`` this server would not read."""
        options = photo_options(request)
        if options.sigma is not None and not self.guard:
            raise InputError(f"the request parameter '{SIGMA_PARAMETER}' is read by the clean-input guard alone, and "
                             f"this server runs without it (moe-denoise serve --no-guard): leave '{SIGMA_PARAMETER}' "
                             f"out, or use a server started without --no-guard")
        return options

    def denoise(self, pixels: np.ndarray,
                options: PhotoOptions = PhotoOptions()) -> tuple[np.ndarray, GuardResult | None]:
        """The photo as ``moe-denoise denoise`` with the same options denoises its file, and the guard's decision
        (None: no guard): the guard (unless this server or the request turned it off) reads a JPEG's noise at two
        scales, asked (``options.two_scales``) or found in the pixels (runtime.jpeg_traces), or takes
        ``options.sigma``; ``options.strength`` of the change is kept (runtime.guard.with_strength)."""
        image = image_to_unit(pixels)
        guard = self.guard and options.guard
        reason = None
        if guard and options.sigma is None:  # a given sigma is not read
            reason = deferred_two_scales_reason("JPEG" if options.two_scales else None, pixels,
                                                float(_TOP[pixels.dtype.name]))
        out, decision = denoise_array_guarded(image, self._tiles, overlap=self.overlap, batch_size=self.batch_size,
                                              guard=guard, sigma=options.sigma, two_scales=reason,
                                              strength=options.strength)
        return unit_to_image(out, pixels.dtype), decision

    def __call__(self, requests: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        checked: list[tuple[np.ndarray, PhotoOptions]] = []
        problems: list[tuple[int, str]] = []
        for i, request in enumerate(requests):
            try:
                checked.append((self.check(request), self.options(request)))
            except InputError as e:
                problems.append((i, str(e)))
        if problems:
            raise InputError(_bad_request_message(problems, len(requests)))
        answers = []
        for pixels, options in checked:
            out, decision = self.denoise(pixels, options)
            answers.append({IMAGE_OUTPUTS[pixels.dtype.name]: out, GUARD_OUTPUT: guard_tensor(decision),
                            SETTINGS_OUTPUT: json_tensor(self.settings(pixels))})
        return answers


PATH_ENTRIES = ("weights", "model", "engine")  # the runners' describe() entries that hold a file's path


def without_folders(described: Mapping[str, Any]) -> dict[str, Any]:
    """A runner's ``describe()`` with its files (weights, ONNX model, engine) named without their folders: what a
    server tells its clients says which file it runs (the sha256 beside it says what it held), not where the
    server keeps its files."""
    return {k: Path(v).name if k in PATH_ENTRIES and isinstance(v, str) and v and not v.startswith("(") else v
            for k, v in described.items()}


def json_tensor(value: Any) -> np.ndarray:
    """``value`` as a response output: one JSON string (bytes)."""
    return np.array([json.dumps(value).encode()], dtype=np.object_)


def json_from_tensor(value: np.ndarray | None) -> Any:
    """What :func:`json_tensor` sent (None: nothing sent)."""
    if value is None or np.size(value) != 1:
        return None
    item = np.asarray(value).reshape(-1)[0]
    return json.loads(item.decode() if isinstance(item, bytes) else str(item))


def guard_tensor(decision: GuardResult | None) -> np.ndarray:
    """The guard's decision as the response's ``guard`` output: one JSON string (bytes), ``null`` for no guard."""
    return json_tensor(None if decision is None else decision.as_dict())


def guard_from_tensor(value: np.ndarray | None) -> dict[str, Any] | None:
    """The decision :func:`guard_tensor` sent, as ``GuardResult.as_dict()`` gives it (None: no guard, or none sent)."""
    decision = json_from_tensor(value)
    if isinstance(decision, dict) and isinstance(decision.get("sigma_range"), list):
        decision["sigma_range"] = tuple(decision["sigma_range"])  # as as_dict() gives it
    return decision if isinstance(decision, dict) else None
