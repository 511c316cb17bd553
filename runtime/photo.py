"""Whole-photo helpers: denoise an image file with a tile denoiser, or make a noisy demo photo."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.errors import InputError

from .images import ImageInfo, check_output_path, check_writable, read_image, write_image
from .tiling import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE, TileFn, denoise_array, plan_tiles


def denoise_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    fn: TileFn,
    overwrite: bool = False,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> dict[str, Any]:
    """Denoise an image file of any size with a tile denoiser and write it in the same size, mode and bit depth.

    Returns a report: input/output paths, size, mode, bit depth, format, tile count, seconds, and any
    conversion made on reading (``notes``). See :mod:`runtime.images` for the formats and decisions.
    """
    check_output_path(out_path, in_path, overwrite)
    start = time.perf_counter()
    image, info = read_image(in_path)
    check_writable(out_path, info)  # fail now, not after minutes of denoising
    plan = plan_tiles(info.height, info.width, tile, overlap)
    result = denoise_array(image, fn, tile=tile, overlap=overlap, batch_size=batch_size, progress=progress)
    written = write_image(out_path, result, info, overwrite=overwrite)
    return _report(info, written, plan.count, time.perf_counter() - start)


def _report(info: ImageInfo, written: Path, tiles: int, seconds: float) -> dict[str, Any]:
    return {
        "input": info.path,
        "output": str(written),
        "size": [info.width, info.height],
        "mode": info.mode,
        "layout": info.layout,
        "bit_depth": info.bit_depth,
        "format": info.format,
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "notes": list(info.notes),
    }


def add_noise_to_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    sigma: float,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write a copy of a photo with Gaussian noise of std ``sigma`` (on [0, 1] pixels) added, for demos.

    The noise is drawn with numpy's default generator from ``seed`` (the same seed gives the same
    file), added to the colour channels only (alpha is kept), clipped to [0, 1], and written in the
    input's size, mode and bit depth.
    """
    if not (isinstance(sigma, (int, float)) and np.isfinite(sigma) and sigma >= 0):
        raise InputError(f"sigma must be a finite number >= 0 (noise std on [0, 1] pixels, e.g. 0.1); got {sigma!r}")
    check_output_path(out_path, in_path, overwrite)
    image, info = read_image(in_path)
    rng = np.random.default_rng(seed)
    colour = 1 if info.layout in ("L", "LA") else 3
    noisy = image.copy()
    noise = rng.normal(0.0, sigma, size=image.shape[:2] + (colour,)).astype(np.float32)
    noisy[:, :, :colour] = np.clip(image[:, :, :colour] + noise, 0.0, 1.0)
    written = write_image(out_path, noisy, info, overwrite=overwrite)
    return {"input": info.path, "output": str(written), "size": [info.width, info.height], "mode": info.mode,
            "bit_depth": info.bit_depth, "sigma": float(sigma), "seed": seed}
