"""Denoise whole images of any size with a denoiser that only takes fixed-size square RGB tiles.

The image is cut into ``tile`` x ``tile`` tiles that overlap by ``overlap`` pixels, every tile is
denoised (in batches), and the tiles are blended back with a smooth window, so that:

* **no seams**: each tile's weight falls smoothly to almost zero at its edges, where the denoiser has
  the least context; a tile's small bias therefore fades into its neighbour's instead of jumping;
* **exactness**: the blend divides by the summed window, so a denoiser that returns its input gives
  back the input (to float32 rounding) for every image size, including images smaller than a tile;
* **borders**: the image is reflect-padded so that every pixel, the outermost included, lies inside
  full tiles with real-looking context around it.

The window is a separable *tapered cosine* (Tukey) window whose cosine ramps are exactly ``overlap``
pixels long (at most half a tile), sampled at pixel centres. Two neighbouring ramps then add up to 1
(``sin^2 + cos^2``), so the windows of a regular grid form a partition of unity and the normalisation
only corrects the image borders; with ``overlap = tile / 2`` (the default) the window is a Hann
window. Sampling at pixel centres keeps every weight > 0 (the smallest is ``sin^2(pi / (4 overlap))``,
about 0.0024 for 16), so no floor is needed to avoid dividing by zero.

**Bands** bound the memory whatever the image size: the tiles are taken in row-major order, so once
the next tile starts at row ``y`` every row above ``y`` is final. :func:`denoise_bands` keeps only the
padded input rows and the float64 sums the current batch needs, hands out finished rows in bands, and
reads its input through a row source (e.g. 8-bit rows converted on demand). The batches, the order of
the sums and the float32 rounding are those of the whole image at once, so the result is bit-identical
for every band size.

Only numpy is imported here; tqdm is imported when a progress bar is asked for.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from moe_base.contract import TILE_SHAPE
from moe_base.errors import InputError
from moe_base.progress import Progress, as_mode

from .base import BaseRunner, activated, check_unit_range, conversion_hint
from .guard import GuardResult, blend, check_guard_sigma, check_sigma, check_strength, colour_part, guard_weight, with_strength

TileFn = Callable[[np.ndarray], np.ndarray]
"""A denoiser on tiles: float32 (B, 3, T, T) in [0, 1] -> float32 (B, 3, T, T)."""

DEFAULT_TILE = 32
DEFAULT_OVERLAP = 16
DEFAULT_BATCH_SIZE = 256  # tiles per call on a GPU, and for a denoiser that does not say where it runs
CPU_BATCH_SIZE = 64  # on a CPU: faster and leaner than 256 for every CPU backend (docs/benchmarks.md)
PROGRESS_MIN_TILES = 128  # below this there is no progress at all; a bar appears after PROGRESS_DELAY_S (1,014 tiles,
# 12 to 30 s on a 2-core CPU, showed nothing under the 1,024 of before)
PROGRESS_DELAY_S = 2.0  # a bar appears once a photo has taken this long: none flashes by
PROGRESS_LINE_S = 10.0  # progress='lines': at most one line this often (30 s left a log silent for half a minute)
DEFAULT_BAND_BYTES = 32 << 20  # working memory of one band (see band_rows_for)
BAND_BYTES_PER_PIXEL = 96  # per padded pixel of a band: float64 sums, float32 rows in and out, the division


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of an ``height`` x ``width`` image go, in the coordinates of the padded image."""

    height: int
    width: int
    tile: int
    overlap: int
    pad_top: int
    pad_left: int
    padded_height: int
    padded_width: int
    ys: tuple[int, ...]  # top rows of the tiles
    xs: tuple[int, ...]  # left columns of the tiles

    @property
    def count(self) -> int:
        """Number of tiles the denoiser sees."""
        return len(self.ys) * len(self.xs)

    def call_size(self, batch_size: int) -> int:
        """Tiles one denoiser call holds at most with ``batch_size`` asked: never more than the image has (a
        batch of 100,000,000 for a 35-tile photo is 35 tiles a call, not 243 TiB of memory to plan for)."""
        return max(1, min(batch_size, self.count))


def _axis_plan(length: int, tile: int, overlap: int) -> tuple[int, int, tuple[int, ...]]:
    """(pad_before, padded_length, tile starts) along one axis.

    At least ``overlap`` pixels of padding go on both sides, so the image's outermost pixels are never
    on a tile's low-weight ramp alone; the rest of the padding needed to fill whole tiles is split
    evenly, which also centres images smaller than a tile.
    """
    stride = tile - overlap
    n = max(1, math.ceil((length + 2 * overlap - tile) / stride) + 1)
    padded = (n - 1) * stride + tile
    return (padded - length) // 2, padded, tuple(i * stride for i in range(n))


def plan_tiles(height: int, width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> TilePlan:
    """The tile grid :func:`denoise_array` uses for an image of this size (e.g. to report the tile count)."""
    _check_settings(tile, overlap, DEFAULT_BATCH_SIZE)
    if height < 1 or width < 1:
        raise InputError(f"image size {height}x{width} has no pixels; expected height and width >= 1")
    top, ph, ys = _axis_plan(height, tile, overlap)
    left, pw, xs = _axis_plan(width, tile, overlap)
    return TilePlan(height, width, tile, overlap, top, left, ph, pw, ys, xs)


def window_1d(tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP) -> np.ndarray:
    """The 1-D blending window: 1 in the middle, sin^2 ramps of ``min(overlap, tile // 2)`` pixels at both ends."""
    _check_settings(tile, overlap, DEFAULT_BATCH_SIZE)
    ramp_len = min(overlap, tile // 2)
    w = np.ones(tile, dtype=np.float64)
    if ramp_len > 0:
        ramp = np.sin(0.5 * np.pi * (np.arange(ramp_len) + 0.5) / ramp_len) ** 2
        w[:ramp_len] = ramp
        w[tile - ramp_len:] = ramp[::-1]
    return w


def reflect_indices(length: int, before: int, after: int) -> np.ndarray:
    """Source indices of a reflect padding (``d c b | a b c d | c b a``) of any width.

    Computed directly instead of with ``np.pad(mode="reflect")`` so that pads wider than the axis
    (images smaller than a tile) and 1-pixel axes (reflection of a single pixel repeats it) behave the
    same on every numpy version.
    """
    i = np.arange(-before, length + after)
    if length == 1:
        return np.zeros_like(i)
    period = 2 * (length - 1)
    i = np.mod(i, period)
    return np.where(i >= length, period - i, i)


def _check_settings(tile: int, overlap: int, batch_size: int) -> None:
    for name, value in (("tile", tile), ("overlap", overlap), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InputError(f"{name} must be an integer; got {value!r} ({type(value).__name__})")
    if tile < 1 or batch_size < 1:
        raise InputError(f"tile and batch_size must be >= 1; got tile={tile}, batch_size={batch_size}")
    if not 0 <= overlap < tile:
        raise InputError(f"overlap must be in [0, tile) = [0, {tile}); got {overlap}. "
                         f"Use {tile // 2} (half a tile) for seamless blending, 0 for plain stitching")


def check_tile_fn(fn: object, tile: int) -> None:
    """InputError unless ``fn`` is a tile denoiser that takes ``tile``-sized tiles: a weights name or path given
    where the runner belongs, anything not callable, or a runner (its model takes 32x32 tiles) with another tile."""
    if isinstance(fn, (str, os.PathLike)):
        raise InputError(f"the tile denoiser is a runner or a function of a batch, not a weights name or path; got "
                         f"{fn!r}: pass TorchRunner({str(fn)!r})")
    if not callable(fn):
        raise InputError(f"the tile denoiser is a runner or a function of a batch; got {type(fn).__name__}")
    if isinstance(fn, type) and issubclass(fn, BaseRunner):  # called with a batch, it took the batch for weights
        example = {"TorchRunner": "'blind'", "OrtRunner": "'model.onnx'", "TensorRTRunner": "'model.engine'"}
        raise InputError(f"the tile denoiser is a runner or a function of a batch; got the class {fn.__name__}: make "
                         f"one, e.g. {fn.__name__}({example.get(fn.__name__, '...')})")
    if isinstance(fn, BaseRunner) and tile != TILE_SHAPE[1]:
        raise InputError(f"tile={tile}: a runner's model takes {TILE_SHAPE[1]}x{TILE_SHAPE[2]} tiles; leave tile out "
                         f"(other sizes are for a plain function of a batch)")


def check_denoise_args(fn: object, tile: int, guard: object, sigma: float | None, strength: float,
                       progress: object = False) -> None:
    """The checks every whole-image entry point (:func:`denoise_array`, ``runtime.photo.denoise_file``) makes of
    its arguments before any work: the tile denoiser, ``guard`` (True, False or a decision: "no" is truthy and
    kept the guard on), ``strength``, ``sigma`` and a sigma nobody would read, ``progress`` (checked when a bar
    was first made: only for images of PROGRESS_MIN_TILES tiles or more, a typo passed on every small test image)."""
    check_tile_fn(fn, tile)
    as_mode(progress)
    if not isinstance(guard, (bool, np.bool_, GuardResult)):
        raise InputError(f"guard= is True, False or a decision from guard_for_array; got {guard!r}")
    check_strength(strength)
    check_sigma(sigma)
    check_guard_sigma(sigma, bool(guard) if isinstance(guard, np.bool_) else guard)  # a numpy bool: 'is True' there


def validate_image(image: object) -> np.ndarray:
    """Check an image array (HxW or HxWxC, C in 1..4, float32, finite, in [0, 1]); return it as HxWxC."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array; got {type(image).__name__}. Convert it with "
                         f"{conversion_hint(image, 'height x width x channels')}")
    if isinstance(image, (np.ma.MaskedArray, np.matrix)):  # a masked value (5.0, NaN) got past the range check and
        # into the model, a NaN then blamed on the weights; np.matrix ended in a bare TypeError
        how = ("image.filled(value) with the value its masked pixels should have" if isinstance(image, np.ma.MaskedArray)
               else "np.asarray(image)")
        raise InputError(f"image must be a plain numpy array; got a {type(image).__name__} (its pixels are denoised "
                         f"as plain values). Convert it with {how}")
    image = np.asarray(image)  # other subclasses (np.memmap) as the plain array they are
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        if image.ndim == 3 and image.shape[0] in (1, 2, 3, 4) and min(image.shape[1:]) > 4:
            hint = f": channels first? image.transpose(1, 2, 0) gives {image.shape[1:] + image.shape[:1]}"
        elif image.ndim == 4 and image.shape[0] == 1:
            hint = f": one image of a batch? image[0] gives {image.shape[1:]}"
        else:
            hint = ""
        raise InputError(f"image must be HxW or HxWxC with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA); "
                         f"got shape {image.shape}{hint}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image has no pixels (shape {image.shape}); expected height and width >= 1")
    if image.dtype != np.float32:
        how = ("image.astype(np.float32)" if np.issubdtype(image.dtype, np.floating) else
               f"image.astype(np.float32) / {np.iinfo(image.dtype).max}" if image.dtype in (np.uint8, np.uint16)
               else "image.astype(np.float32), scaled to [0, 1]")
        raise InputError(f"image must be float32 with values in [0, 1]; got dtype {image.dtype}. Convert with {how}")
    check_unit_range(image, "image")
    return image


def _run_batch(fn: TileFn, batch: np.ndarray) -> np.ndarray:
    """Call the denoiser and check that it kept the batch's shape and gave finite numbers."""
    out = fn(batch)
    if out is None:  # it said 'returned shape ()'
        raise InputError(f"the tile denoiser returned None for a batch of shape {batch.shape}; it must return the "
                         f"denoised batch, an array of the same shape (a function that changes its input in place "
                         f"still returns it)")
    out = np.asarray(out, dtype=np.float32)
    if out.shape != batch.shape:
        raise InputError(f"the tile denoiser returned shape {out.shape} for a batch of shape {batch.shape}; "
                         f"it must return an array of the same shape")
    if not np.isfinite(out).all():
        raise InputError("the tile denoiser returned NaN/inf values; check the model and its weights")
    return out


RowSource = Callable[[int, int], np.ndarray]
"""Rows ``[a, b)`` of an image as float32 ``(b - a, W, C)`` in [0, 1] (e.g. converted from 8-bit rows on demand)."""


def band_rows_for(width: int, tile: int = DEFAULT_TILE, band_bytes: int = DEFAULT_BAND_BYTES) -> int:
    """Image rows per band so that one band's working arrays take about ``band_bytes`` (at least one tile)."""
    padded = width + 2 * tile
    return max(tile, band_bytes // (BAND_BYTES_PER_PIXEL * padded))


def band_working_bytes(width: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                       batch_size: int = DEFAULT_BATCH_SIZE, band_rows: int | None = None) -> int:
    """An upper bound of the memory :func:`denoise_bands` itself holds at once for an image ``width`` wide.

    The accumulator and the padded input rows span at most one band plus the rows one batch of tiles
    covers plus a tile; the batch and the denoiser's answer are ``batch_size`` tiles each. The image
    (or its compact source) and the caller's output are not counted.
    """
    _check_settings(tile, overlap, batch_size)
    rows = band_rows or band_rows_for(width, tile)
    stride = tile - overlap
    per_row = max(1, math.ceil((width + 2 * overlap - tile) / stride) + 1)
    span = (math.ceil(batch_size / per_row) + 1) * stride + 2 * tile
    padded = width + 2 * tile
    acc_rows, input_rows = 2 * rows + span, rows + span
    return (acc_rows * 24 + input_rows * 12 + rows * (BAND_BYTES_PER_PIXEL - 36)) * padded \
        + 3 * batch_size * 3 * tile * tile * 4


def denoise_bands(
    rows: RowSource,
    height: int,
    width: int,
    channels: int,
    fn: TileFn,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    band_rows: int | None = None,
    progress: bool | str = False,
    input_weight: float = 0.0,
) -> Iterator[tuple[int, np.ndarray]]:
    """Denoise an image given row by row; yield ``(first_row, band)`` pairs, top to bottom, as bands are done.

    ``rows(a, b)`` returns image rows ``[a, b)`` as float32 ``(b - a, width, channels)`` in [0, 1]; each band
    is float32 ``(n, width, channels)`` with ``n <= band_rows`` (default: :func:`band_rows_for`). Memory is
    bounded by :func:`band_working_bytes` whatever the height. The result is bit-identical to denoising
    the whole image at once, for every band size: ``fn`` gets exactly the same batches (the tiles of the
    whole image in row-major order, cut every ``batch_size`` tiles), every pixel sums the same tile
    outputs in the same order in float64, and is normalised and rounded to float32 the same way.

    ``input_weight`` ``a`` (the clean-input guard's, :mod:`runtime.guard`): every band is
    ``a * input + (1 - a) * denoised`` (colour channels; alpha is copied as always).
    """
    _check_settings(tile, overlap, batch_size)
    if not 0.0 <= input_weight <= 1.0:
        raise InputError(f"input_weight must be in [0, 1]; got {input_weight!r}")
    if band_rows is None:
        band_rows = band_rows_for(width, tile)
    if isinstance(band_rows, bool) or not isinstance(band_rows, (int, np.integer)) or band_rows < 1:
        raise InputError(f"band_rows must be an integer >= 1; got {band_rows!r}")
    if channels not in (1, 2, 3, 4):
        raise InputError(f"channels must be 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA); got {channels!r}")
    plan = plan_tiles(height, width, tile, overlap)
    return _band_stream(rows, plan, channels, fn, batch_size, int(band_rows), progress, float(input_weight))


def _band_stream(rows: RowSource, plan: TilePlan, channels: int, fn: TileFn, batch_size: int, band_rows: int,
                 progress: bool | str, input_weight: float) -> Iterator[tuple[int, np.ndarray]]:
    t, h, w = plan.tile, plan.height, plan.width
    gray = channels in (1, 2)
    ys, xs = np.asarray(plan.ys, dtype=np.intp), np.asarray(plan.xs, dtype=np.intp)
    nx, total = len(xs), plan.count
    iy = reflect_indices(h, plan.pad_top, plan.padded_height - h - plan.pad_top)
    ix = reflect_indices(w, plan.pad_left, plan.padded_width - w - plan.pad_left)
    w1 = window_1d(t, plan.overlap)
    w2 = np.outer(w1, w1)  # (t, t)
    # The summed window is separable: sum_t wy(y - y_t) * wx(x - x_t) = (sum wy) * (sum wx).
    wy = _summed_window(w1, plan.ys, plan.padded_height)
    wx = _summed_window(w1, plan.xs, plan.padded_width)
    cols = slice(plan.pad_left, plan.pad_left + w)

    def source(a: int, b: int) -> np.ndarray:
        got = rows(a, b)
        if not isinstance(got, np.ndarray) or got.dtype != np.float32 or got.shape != (b - a, w, channels):
            raise InputError(f"the row source returned {getattr(got, 'dtype', type(got).__name__)} "
                             f"{getattr(got, 'shape', '')} for rows [{a}, {b}); expected float32 {(b - a, w, channels)}")
        return got

    def padded_rows(a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the reflect-padded colour image, (3, b - a, Wp) float32 (gray repeated 3 times)."""
        src_rows = iy[a:b]
        lo, hi = int(src_rows.min()), int(src_rows.max()) + 1
        band = source(lo, hi)
        colour = band[:, :, :1] if gray else band[:, :, :3]
        padded = np.ascontiguousarray(colour[src_rows - lo][:, ix].transpose(2, 0, 1))
        return np.repeat(padded, 3, axis=0) if gray else padded

    def finish(a: int, n: int) -> np.ndarray:
        """Padded rows [a, a + n) of the accumulator, normalised: image rows [a - pad_top, ...) as (n, W, C)."""
        norm = np.outer(wy[a:a + n], wx[cols])
        out = (acc[:, a - a0:a - a0 + n, cols] / norm).astype(np.float32)  # (3, n, W)
        result = np.empty((n, w, channels), dtype=np.float32)
        if gray:
            result[:, :, 0] = out.mean(axis=0)
        else:
            result[:, :, :3] = out.transpose(1, 2, 0)
        y = a - plan.pad_top
        if input_weight or channels in (2, 4):
            given = source(y, y + n)
            if input_weight:
                part = _colour_channels(channels)
                result[:, :, part] = blend(given[:, :, part], result[:, :, part], input_weight)
            if channels in (2, 4):
                result[:, :, -1] = given[:, :, -1]
        return result

    inp = np.zeros((3, 0, plan.padded_width), dtype=np.float32)
    in0 = in1 = 0  # padded rows held in `inp`
    acc = np.zeros((3, 0, plan.padded_width), dtype=np.float64)  # float64: exact to float32 rounding
    a0 = 0  # padded row of acc[:, 0]
    done, end = plan.pad_top, plan.pad_top + h  # next padded row to hand out; end of the image rows
    bar = _progress_bar(total, progress)
    try:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            index = np.arange(start, stop)
            by, bx = ys[index // nx], xs[index % nx]
            r0, r1 = int(by[0]), int(by[-1]) + t  # padded rows this batch reads and writes
            if r0 < in0 or r1 > in1:
                in0, in1 = r0, min(plan.padded_height, max(r1, r0 + band_rows + t))
                inp = padded_rows(in0, in1)
            windows = np.lib.stride_tricks.sliding_window_view(inp, (t, t), axis=(1, 2))
            batch = np.ascontiguousarray(windows[:, by - in0, bx].transpose(1, 0, 2, 3))  # (B, 3, t, t)
            out = _run_batch(fn, batch)
            if r1 > a0 + acc.shape[1]:  # grow the accumulator window, dropping the rows handed out
                keep = min(done, r0)
                grown = np.zeros((3, max(r1 - keep, 2 * band_rows + t), plan.padded_width), dtype=np.float64)
                kept = acc.shape[1] - (keep - a0)
                grown[:, :kept] = acc[:, keep - a0:]  # no named view: one would hold the old accumulator alive
                acc, a0 = grown, keep
            for y, x, tile_out in zip(by.tolist(), bx.tolist(), out):
                acc[:, y - a0:y - a0 + t, x:x + t] += tile_out * w2
            del windows, batch, out, tile_out  # not held while the next batch is cut, nor while a band is handed out
            if bar is not None:
                bar.step(n=stop - start)
            # Tiles come in row-major order, so no later tile touches a row above the next tile's top row.
            final = min(end, int(ys[stop // nx]) if stop < total else end)
            while final - done >= band_rows or (final == end and done < end):
                n = min(band_rows, final - done)
                yield done - plan.pad_top, finish(done, n)
                done += n
    finally:
        if bar is not None:
            bar.close()


def _summed_window(w1: np.ndarray, starts: tuple[int, ...], length: int) -> np.ndarray:
    total = np.zeros(length, dtype=np.float64)
    for s in starts:
        total[s:s + len(w1)] += w1
    return total


def _progress_bar(total: int, progress: bool | str) -> Progress | None:
    """A bar (True / 'bar') or a line every PROGRESS_LINE_S seconds ('lines', for logs) over ``total`` tiles."""
    if not progress or total < PROGRESS_MIN_TILES:
        return None
    return Progress(total, "denoising", "tile", progress, every_s=PROGRESS_LINE_S,  # tqdm: imported for a bar
                    delay_s=PROGRESS_DELAY_S)


def batch_size_for(fn: TileFn, batch_size: int | None = None) -> int:
    """``batch_size``, or when None the tiles per call that suit ``fn``: CPU_BATCH_SIZE for a runner on a CPU
    (its ``on_gpu`` is False), else DEFAULT_BATCH_SIZE. It sets speed and memory; the result moves only by float
    rounding (PyTorch's kernels sum in another order for another batch: about 1e-7, a 16-bit output's last level on
    a few values; ONNX Runtime's were bit-identical)."""
    if batch_size is not None:
        return batch_size
    return CPU_BATCH_SIZE if getattr(fn, "on_gpu", None) is False else DEFAULT_BATCH_SIZE


def denoise_array(
    image: np.ndarray,
    fn: TileFn,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    progress: bool | str = False,
    band_rows: int | None = None,
    guard: bool | GuardResult = True,
    sigma: float | None = None,
    two_scales: bool = False,
    strength: float = 1.0,
) -> np.ndarray:
    """Denoise an image of any size with a tile denoiser; return an array of the same shape and dtype.

    ``image``: float32 HxW or HxWxC in [0, 1]; C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. Gray is given
    to ``fn`` as three equal channels and the mean of the three outputs is returned; alpha is not
    denoised but copied through unchanged. ``fn`` (a runner, or any function of a batch) gets float32
    (B, 3, tile, tile) batches with B <= ``batch_size`` (default: :func:`batch_size_for`, 64 for a runner
    on a CPU, else 256). ``overlap`` (default 16, half the default tile: give it with another ``tile``)
    trades speed for smoothness: at 16 every pixel is seen by 4 tiles (4x the work of plain stitching) and
    each tile's edges, where the denoiser sees the least context, get almost no weight; 8 takes 0.44x the time
    for 0.03 dB less (docs/benchmarks.md).
    With at least PROGRESS_MIN_TILES tiles, ``progress`` True or 'bar' shows a tqdm bar, 'lines' a line every
    PROGRESS_LINE_S seconds (for logs). The output is not clipped (a denoiser may overshoot [0, 1]).

    The work goes in horizontal bands of ``band_rows`` rows (:func:`denoise_bands`), so beyond the
    image and the result only :func:`band_working_bytes` are used; the result does not depend on it.

    ``guard`` (default on): the clean-input guard of :mod:`runtime.guard` blends the input back in when the
    image's noise level (estimated, or ``sigma`` on [0, 1] pixels) is low; False: the denoiser's output as it
    is; a :class:`GuardResult` from :func:`guard_for_array`: that decision (a ``sigma`` with either, which only
    the guard deciding reads, is refused: :func:`runtime.guard.check_guard_sigma`). ``two_scales``: the guard reads the
    noise at two scales, for an image that was stored as JPEG (:func:`runtime.jpeg_traces.two_scales_reason`).
    ``strength`` (0 to 1, default 1): how much of the change from the input to keep (:func:`runtime.guard.
    with_strength`); 0 gives the input back.

    A runner given inactive is activated for this call and released after it (:func:`runtime.base.activated`);
    for many images, activate it once (``with runner:``) so that its model is loaded once.
    """
    return denoise_array_guarded(image, fn, tile, overlap, batch_size, progress, band_rows, guard, sigma, two_scales,
                                 strength)[0]


def denoise_array_guarded(
    image: np.ndarray,
    fn: TileFn,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    progress: bool | str = False,
    band_rows: int | None = None,
    guard: bool | GuardResult = True,
    sigma: float | None = None,
    two_scales: bool | str | Callable[[], str | None] | None = False,
    strength: float = 1.0,
) -> tuple[np.ndarray, GuardResult | None]:
    """:func:`denoise_array`'s result and the guard's decision (None when ``guard`` is False), for callers that
    report it (the server's photo model sends it back with the photo). ``two_scales`` may be the reason to read
    the noise at two scales, recorded in the decision (:func:`guard_reusing`)."""
    check_denoise_args(fn, tile, guard, sigma, strength, progress)
    guard = bool(guard) if isinstance(guard, np.bool_) else guard  # 'guard is True' below
    batch_size = batch_size_for(fn, batch_size)
    _check_settings(tile, overlap, batch_size)
    img = validate_image(image)
    h, w, c = img.shape
    def rows(a: int, b: int) -> np.ndarray:
        return img[a:b]

    decision = guard if isinstance(guard, GuardResult) else None
    with activated(fn):
        if guard is True:  # the image is checked already: guard_rows, not guard_for_array, which would check it again
            decision, raw = guard_reusing(rows, h, w, c, fn, tile, overlap, batch_size, band_rows, progress, sigma,
                                          two_scales)
            if raw is not None:
                weight = with_strength(decision.input_weight, strength)
                return blend_whole(img, raw, weight).reshape(image.shape), decision
        weight = with_strength(decision.input_weight if decision is not None else 0.0, strength)
        out = denoise_whole(rows, h, w, c, fn, tile, overlap, batch_size, band_rows, progress, weight)
    return out.reshape(image.shape), decision


def denoise_whole(rows: RowSource, height: int, width: int, channels: int, fn: TileFn, tile: int, overlap: int,
                  batch_size: int, band_rows: int | None, progress: bool | str,
                  input_weight: float = 0.0) -> np.ndarray:
    """:func:`denoise_bands` gathered into one float32 (height, width, channels) array."""
    result = np.empty((height, width, channels), dtype=np.float32)
    for y, band in denoise_bands(rows, height, width, channels, fn, tile, overlap, batch_size, band_rows, progress,
                                 input_weight):
        result[y:y + len(band)] = band
    return result


def guard_reusing(rows: RowSource, height: int, width: int, channels: int, fn: TileFn, tile: int, overlap: int,
                  batch_size: int, band_rows: int | None, progress: bool | str, sigma: float | None,
                  two_scales: bool | str | Callable[[], str | None] | None) -> tuple[GuardResult, np.ndarray | None]:
    """The guard's decision, and the image denoised without the guard (:func:`denoise_whole`) when the decision
    needed it: for an image the guard samples whole and under the gate, that denoising is the guard's own f(x),
    done once for both (blend it with :func:`blend_whole`); otherwise None. ``two_scales``: read the noise at two
    scales (True), or why to (:func:`runtime.jpeg_traces.two_scales_reason`'s text, recorded in the decision as
    ``two_scales_reason`` when the guard read it so), or a call that says whether and why, made only when it can
    matter (:func:`runtime.jpeg_traces.deferred_two_scales_reason`); False or None: one scale."""
    raw: list[np.ndarray] = []

    def whole() -> np.ndarray:
        raw.append(denoise_whole(rows, height, width, channels, fn, tile, overlap, batch_size, band_rows, progress))
        return colour_part(raw[0])

    decision = guard_rows(rows, height, width, fn, tile, overlap, batch_size, sigma,
                          two_scales if callable(two_scales) else bool(two_scales), whole, progress)
    if isinstance(two_scales, str) and decision.two_scales:
        decision = replace(decision, two_scales_reason=two_scales)
    return decision, (raw[0] if raw else None)


def blend_whole(image: np.ndarray, denoised: np.ndarray, input_weight: float) -> np.ndarray:
    """What :func:`denoise_bands` gives with ``input_weight`` from its output with weight 0 (``denoised``, alpha
    copied already): the colour channels blended with ``image``'s (HxWxC, float32), in place."""
    if input_weight:
        part = _colour_channels(image.shape[2])
        denoised[:, :, part] = blend(image[:, :, part], denoised[:, :, part], input_weight)
    return denoised


def _colour_channels(channels: int) -> slice:
    """The channels the denoiser changes: the gray one (of gray, gray+alpha) or R, G, B (of RGB, RGBA)."""
    return slice(0, 1) if channels in (1, 2) else slice(0, 3)


def guard_for_array(image: np.ndarray, fn: TileFn, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                    batch_size: int | None = None, sigma: float | None = None,
                    two_scales: bool = False, denoised: np.ndarray | None = None) -> GuardResult:
    """The clean-input guard's decision (:func:`runtime.guard.guard_weight`) for an image :func:`denoise_array`
    takes, with the same tiling. ``denoised``: the image's ``denoise_array(..., guard=False)`` if the caller has
    it (used as the guard's f(x) when the guard samples the whole image, instead of denoising it again)."""
    check_tile_fn(fn, tile)
    img = validate_image(image)
    whole = None if denoised is None else (lambda: colour_part(_check_denoised(denoised, img)))
    with activated(fn):
        return guard_rows(lambda a, b: img[a:b], img.shape[0], img.shape[1], fn, tile, overlap,
                          batch_size_for(fn, batch_size), sigma, two_scales, whole)


def _check_denoised(denoised: object, image: np.ndarray) -> np.ndarray:
    """``denoised`` as HxWxC: float32, finite and of ``image``'s shape. Not checked against [0, 1]: denoise_array's
    output is not clipped (a denoiser may overshoot)."""
    if isinstance(denoised, np.ndarray) and denoised.ndim == 2:
        denoised = denoised[:, :, None]
    if not isinstance(denoised, np.ndarray) or denoised.shape != image.shape or denoised.dtype != np.float32:
        given = (f"{denoised.dtype} {denoised.shape}" if isinstance(denoised, np.ndarray)
                 else type(denoised).__name__)
        raise InputError(f"denoised= must be the image's denoise_array(..., guard=False): float32 {image.shape}; "
                         f"got {given}")
    if not np.isfinite(denoised).all():
        raise InputError("denoised= has NaN or Inf values; pass the image's denoise_array(..., guard=False)")
    return denoised


def guard_rows(rows: RowSource, height: int, width: int, fn: TileFn, tile: int = DEFAULT_TILE,
               overlap: int = DEFAULT_OVERLAP, batch_size: int = DEFAULT_BATCH_SIZE,
               sigma: float | None = None, two_scales: bool | Callable[[], str | None] = False,
               whole: Callable[[], np.ndarray] | None = None, progress: bool | str = False) -> GuardResult:
    """:func:`runtime.guard.guard_weight` for an image read through a row source, tiled as :func:`denoise_bands`
    (``whole``: see there). ``progress``: the samples it denoises shown as :func:`progress_for` shows tiles (a clean
    photo's guard ran 12 to 14 s with nothing on the screen, and a log showed nothing for as long)."""
    shown = Progress(0, "clean-input guard: reading the noise level", "sample", progress, every_s=PROGRESS_LINE_S,
                     delay_s=PROGRESS_DELAY_S)

    def denoise(crop: np.ndarray) -> np.ndarray:
        out = denoise_array(crop, fn, tile, overlap, batch_size, guard=False)
        shown.step()
        return out

    with shown:
        return guard_weight(rows, height, width, denoise, sigma, two_scales=two_scales, whole=whole)

