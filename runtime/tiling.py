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

Only numpy is imported here; tqdm is imported when a progress bar is asked for.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moe_base.errors import InputError

from .base import check_unit_range

TileFn = Callable[[np.ndarray], np.ndarray]
"""A denoiser on tiles: float32 (B, 3, T, T) in [0, 1] -> float32 (B, 3, T, T)."""

DEFAULT_TILE = 32
DEFAULT_OVERLAP = 16
DEFAULT_BATCH_SIZE = 256
PROGRESS_MIN_TILES = 1024  # below this a bar would only flash by


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


def validate_image(image: object) -> np.ndarray:
    """Check an image array (HxW or HxWxC, C in 1..4, float32, finite, in [0, 1]); return it as HxWxC."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array; got {type(image).__name__}. Use np.asarray(...)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise InputError(f"image must be HxW or HxWxC with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA); "
                         f"got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image has no pixels (shape {image.shape}); expected height and width >= 1")
    if image.dtype != np.float32:
        raise InputError(f"image must be float32 with values in [0, 1]; got dtype {image.dtype}. "
                         f"Convert with image.astype(np.float32) / 255 for 8-bit data")
    check_unit_range(image, "image")
    return image


def _run_batch(fn: TileFn, batch: np.ndarray) -> np.ndarray:
    """Call the denoiser and check that it kept the batch's shape and gave finite numbers."""
    out = np.asarray(fn(batch), dtype=np.float32)
    if out.shape != batch.shape:
        raise InputError(f"the tile denoiser returned shape {out.shape} for a batch of shape {batch.shape}; "
                         f"it must return an array of the same shape")
    if not np.isfinite(out).all():
        raise InputError("the tile denoiser returned NaN/inf values; check the model and its weights")
    return out


def _blend_tiles(rgb: np.ndarray, plan: TilePlan, fn: TileFn, batch_size: int, progress: bool) -> np.ndarray:
    """Denoise the padded (3, Hp, Wp) image tile by tile; return the normalised blend, cropped to the image."""
    t = plan.tile
    windows = np.lib.stride_tricks.sliding_window_view(rgb, (t, t), axis=(1, 2))  # (3, Hp-t+1, Wp-t+1, t, t)
    w1 = window_1d(t, plan.overlap)
    w2 = np.outer(w1, w1)  # (t, t)
    acc = np.zeros(rgb.shape, dtype=np.float64)  # float64: exact to float32 rounding even at 1024 tiles/pixel
    coords = [(y, x) for y in plan.ys for x in plan.xs]
    bar = _progress_bar(len(coords), progress)
    for start in range(0, len(coords), batch_size):
        chunk = coords[start:start + batch_size]
        ys = np.fromiter((c[0] for c in chunk), dtype=np.intp, count=len(chunk))
        xs = np.fromiter((c[1] for c in chunk), dtype=np.intp, count=len(chunk))
        batch = np.ascontiguousarray(windows[:, ys, xs].transpose(1, 0, 2, 3))  # (B, 3, t, t)
        out = _run_batch(fn, batch)
        for (y, x), tile_out in zip(chunk, out):
            acc[:, y:y + t, x:x + t] += tile_out * w2
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    # The summed window is separable: sum_t wy(y - y_t) * wx(x - x_t) = (sum wy) * (sum wx).
    wy = _summed_window(w1, plan.ys, plan.padded_height)
    wx = _summed_window(w1, plan.xs, plan.padded_width)
    rows = slice(plan.pad_top, plan.pad_top + plan.height)
    cols = slice(plan.pad_left, plan.pad_left + plan.width)
    norm = np.outer(wy[rows], wx[cols])
    return (acc[:, rows, cols] / norm).astype(np.float32)


def _summed_window(w1: np.ndarray, starts: tuple[int, ...], length: int) -> np.ndarray:
    total = np.zeros(length, dtype=np.float64)
    for s in starts:
        total[s:s + len(w1)] += w1
    return total


def _progress_bar(total: int, progress: bool):  # -> tqdm | None
    if not progress or total < PROGRESS_MIN_TILES:
        return None
    from tqdm.auto import tqdm  # base dependency; imported lazily to keep `import runtime` numpy-only

    return tqdm(total=total, unit="tile", desc="denoising")


def denoise_array(
    image: np.ndarray,
    fn: TileFn,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> np.ndarray:
    """Denoise an image of any size with a tile denoiser; return an array of the same shape and dtype.

    ``image``: float32 HxW or HxWxC in [0, 1]; C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. Gray is given
    to ``fn`` as three equal channels and the mean of the three outputs is returned; alpha is not
    denoised but copied through unchanged. ``fn`` gets float32 (B, 3, tile, tile) batches with
    B <= ``batch_size``. ``overlap`` (default half a tile) trades speed for smoothness: at 16 every pixel
    is seen by 4 tiles (4x the work of plain stitching) and each tile's edges, where the denoiser sees
    the least context, get almost no weight. A tqdm bar is shown when ``progress`` is true and there
    are at least PROGRESS_MIN_TILES tiles. The output is not clipped (a denoiser may overshoot [0, 1]).
    """
    _check_settings(tile, overlap, batch_size)
    img = validate_image(image)
    h, w, c = img.shape
    gray = c in (1, 2)
    color = img[:, :, :1] if gray else img[:, :, :3]
    plan = plan_tiles(h, w, tile, overlap)
    iy = reflect_indices(h, plan.pad_top, plan.padded_height - h - plan.pad_top)
    ix = reflect_indices(w, plan.pad_left, plan.padded_width - w - plan.pad_left)
    padded = np.ascontiguousarray(color[iy][:, ix].transpose(2, 0, 1))  # (C', Hp, Wp)
    if gray:
        padded = np.repeat(padded, 3, axis=0)
    out = _blend_tiles(padded, plan, fn, batch_size, progress)  # (3, H, W)
    result = np.empty_like(img)
    if gray:
        result[:, :, 0] = out.mean(axis=0)
    else:
        result[:, :, :3] = out.transpose(1, 2, 0)
    if c in (2, 4):
        result[:, :, -1] = img[:, :, -1]
    return result.reshape(image.shape)
