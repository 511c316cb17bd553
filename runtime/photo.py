"""Whole-photo helpers: denoise an image file with a tile denoiser, or make a noisy demo photo."""
from __future__ import annotations

import dataclasses
import numbers
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.errors import InputError

from .base import activated
from .guard import GuardResult, check_sigma, guard_notes, with_strength
from .images import (
    DEFAULT_MAX_PIXELS,
    JPEG_QUALITY,
    ImageHeader,
    ImageInfo,
    check_frames_kept,
    check_input_exists,
    check_memory,
    check_output_path,
    check_quality,
    check_size,
    check_writable,
    output_format,
    output_notes,
    read_header,
    read_pixels,
    to_pixels,
    to_unit,
    write_pixels,
)
from .jpeg_traces import deferred_two_scales_reason
from .tiling import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    TileFn,
    band_rows_for,
    band_working_bytes,
    batch_size_for,
    blend_whole,
    check_denoise_args,
    denoise_bands,
    guard_reusing,
    plan_tiles,
)

DENOISER_BYTES_PER_TILE = 5 << 19
"""Memory a denoiser may add while it runs, per tile of a batch (2.5 MiB: 160 MiB at 64 tiles a call, a CPU
runner's default, 640 MiB at 256, a GPU's).

Measured on the first calls at batch 256: ONNX Runtime's CPU arena grows by about 530 MB, PyTorch by 340 MB.
"""


def denoise_peak_bytes(header: ImageHeader, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                       batch_size: int = DEFAULT_BATCH_SIZE, band_rows: int | None = None) -> int:
    """The most memory :func:`denoise_file` needs for an image with this header, on top of what the process holds.

    The largest of: decoding (:attr:`ImageHeader.decode_bytes`); denoising (the input and the output
    integers, 2 x :attr:`ImageHeader.compact_bytes`, and one band's working arrays); writing (the output
    integers and the writer's copy of them: Pillow holds up to 4 bytes per pixel). Plus what the denoiser
    itself may still grow by (:data:`DENOISER_BYTES_PER_TILE` x ``batch_size``). For 8-bit RGB this is
    about 7 bytes per pixel plus a constant: 1.0 GB for 144 megapixels, then the denoiser's 640 MiB.
    """
    compact = header.compact_bytes
    wide = max(header.width, header.height)  # the upright image may be turned by its EXIF orientation
    batch_size = plan_tiles(header.height, header.width, tile, overlap).call_size(batch_size)
    # a band holds no more rows than the image has (band_rows=10**6 on a 4000x100 photo read 454 GiB)
    rows = min(band_rows, header.upright_size[1]) if band_rows else None
    work = band_working_bytes(wide, tile, overlap, batch_size, rows)
    if header.bit_depth == 16 and header.layout != "L":
        encode = compact  # pypng writes row by row; tifffile from the array (and its compressor's strips)
    else:
        encode = header.pixels * (0 if header.layout == "L" and header.bit_depth == 8 else
                                  2 if header.bit_depth == 16 else 4)
    return max(header.decode_bytes, 2 * compact + work, compact + encode) + DENOISER_BYTES_PER_TILE * batch_size


def check_file_job(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], overwrite: bool = False,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """The checks of :func:`denoise_file` that need no model, for a command to run before it loads one (torch and
    the weights take seconds: a missing input, an output in the way or a file that is no image was answered after
    them): the input exists and is an image within ``max_pixels``, and the output path can take it. Returns its
    header. The memory check, which depends on the runner's batch size, stays in :func:`denoise_file`."""
    check_input_exists(in_path)  # the first thing to fix, before what the output would replace
    check_output_path(out_path, in_path, overwrite)
    header = read_header(in_path)
    check_size(header, max_pixels)
    check_writable(out_path, header)
    check_frames_kept(out_path, header)
    return header


def denoise_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    fn: TileFn,
    overwrite: bool = False,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int | None = None,
    progress: bool | str = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    band_rows: int | None = None,
    guard: bool | GuardResult = True,
    sigma: float | None = None,
    strength: float = 1.0,
    quality: int | None = None,
) -> dict[str, Any]:
    """Denoise an image file of any size with a tile denoiser and write it in the same size, mode and bit depth.

    Returns a report: input/output paths, size, mode, bit depth, format, tile count, seconds, and any
    conversion made on reading (``notes``). See :mod:`runtime.images` for the formats and decisions.

    Memory is bounded: the image stays in the file's own integers (uint8 / uint16) and is denoised in
    horizontal bands of ``band_rows`` rows (default: about 32 MiB of working arrays each, see
    :func:`runtime.tiling.band_rows_for`), each band converted to float32 and quantised back on its own;
    the result is bit-identical to denoising the whole image at once. Before anything is decoded, an
    image over ``max_pixels`` (None: no limit), one that would need more memory than the process can get
    (:func:`denoise_peak_bytes`), or an output path that cannot hold it is refused with InputError.

    ``guard`` / ``sigma``: the clean-input guard (:mod:`runtime.guard`, on by default), which blends the input
    back in when the photo's noise level (estimated, or ``sigma`` on [0, 1] pixels) is low; the report's
    ``guard`` entry says what it decided. A :class:`runtime.guard.GuardResult` (from
    :func:`runtime.tiling.guard_for_array`) is a decision made already: it is applied as it is, as by
    :func:`runtime.tiling.denoise_array`. A JPEG's noise is read at two scales: a JPEG file's, or one whose pixels
    were JPEG-compressed before (:func:`runtime.jpeg_traces.two_scales_reason`). ``strength`` (0 to 1, default 1):
    how much of the change from the input to keep (:func:`runtime.guard.with_strength`); the report's
    ``input_weight`` is the input's weight in the result, guard and strength together. ``quality``: a JPEG or WebP
    output's (1 to 100; None: 95, and lossless for a lossless WebP's WebP output; :func:`runtime.images.write_image`).
    ``progress`` (on stderr, for photos over about 2 s): True = a bar on a terminal, a line every few seconds in a
    log file or pipe; 'bar' or 'lines' to choose; False = none.
    """
    check_denoise_args(fn, tile, guard, sigma, strength, progress)
    check_quality(quality)
    check_input_exists(in_path)  # the first thing to fix, before what the output would replace
    check_output_path(out_path, in_path, overwrite)
    batch_size = batch_size_for(fn, batch_size)  # 64 tiles a call for a runner on a CPU, else 256
    start = time.perf_counter()

    def before_decode(header: ImageHeader) -> None:
        check_writable(out_path, header)  # fail now, not after minutes of denoising
        check_frames_kept(out_path, header)
        check_memory(denoise_peak_bytes(header, tile, overlap, batch_size, band_rows), "denoising it", header)

    pixels, info = read_pixels(in_path, max_pixels=max_pixels, before_decode=before_decode)
    check_writable(out_path, info)
    plan = plan_tiles(info.height, info.width, tile, overlap)
    try:
        with activated(fn):
            result, decision, weight = _denoise_pixels(pixels, info, fn, tile, overlap, batch_size, band_rows,
                                                       progress, guard, sigma, strength)
        del pixels  # the input's integers are not needed while writing
        written = write_pixels(out_path, result, info, overwrite=overwrite, quality=quality)
    except MemoryError as e:
        raise InputError(f"ran out of memory denoising '{info.path}' ({info.width}x{info.height}); free memory or "
                         f"raise the limit, or split the image into smaller ones") from e
    report = photo_report(info, written, plan.count, time.perf_counter() - start,
                          decision.as_dict() if decision is not None else None, strength, weight)
    return {**report, "overlap": overlap, "batch_size": batch_size}


def _denoise_pixels(pixels: np.ndarray, info: ImageInfo, fn: TileFn, tile: int, overlap: int, batch_size: int,
                    band_rows: int | None, progress: bool | str, guard: bool | GuardResult, sigma: float | None,
                    strength: float) -> tuple[np.ndarray, GuardResult | None, float]:
    """The denoised image as the file's integers, band by band (float32 only one band at a time), the guard's
    decision (None: no guard) and the input's weight in the result (guard and ``strength`` together)."""
    result = np.empty_like(pixels)
    h, w, c = pixels.shape

    def rows(a: int, b: int) -> np.ndarray:
        return to_unit(pixels[a:b], info)

    decision, raw = None, None
    if isinstance(guard, GuardResult):  # a decision made already (check_denoise_args lets one through)
        decision = guard
    elif guard:
        why = None if sigma is not None else deferred_two_scales_reason(  # a given sigma is not read
            info.format, pixels, 65535.0 if info.bit_depth == 16 else 255.0)
        decision, raw = guard_reusing(rows, h, w, c, fn, tile, overlap, batch_size, band_rows, progress, sigma,
                                      why)  # JPEG took the finest detail, where the noise is read
    weight = with_strength(decision.input_weight if decision is not None else 0.0, strength)
    if raw is not None:  # the guard's own denoising of the whole photo is the result's too
        result[:] = to_pixels(blend_whole(rows(0, h), raw, weight), info)
        return result, decision, weight
    bands = denoise_bands(rows, h, w, c, fn, tile=tile, overlap=overlap, batch_size=batch_size, band_rows=band_rows,
                          progress=progress, input_weight=weight)
    for y, band in bands:
        result[y:y + len(band)] = to_pixels(band, info)
    return result, decision, weight


def photo_report(info: ImageInfo, written: Path, tiles: int, seconds: float, guard: dict[str, Any] | None,
                 strength: float, input_weight: float | None) -> dict[str, Any]:
    """What :func:`denoise_file` reports for one photo (``moe-denoise denoise --server`` reports the same):
    ``guard``: the guard's decision (``GuardResult.as_dict()``; None: no guard), ``input_weight``: the input's weight
    in the result (None: not known)."""
    fmt = output_format(written)
    return {
        "input": info.path,
        "output": str(written),
        "size": [info.width, info.height],
        "mode": info.mode,
        "layout": info.layout,
        "bit_depth": info.bit_depth,
        "format": info.format,  # the input's
        "output_format": fmt,
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "notes": list(info.notes) + output_notes(fmt, info) + guard_notes(guard),
        "guard": guard,
        "strength": float(strength),
        "input_weight": input_weight,
    }


def add_noise_to_file(
    in_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    sigma: float,
    seed: int = 0,
    overwrite: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> dict[str, Any]:
    """Write a copy of a photo with Gaussian noise of std ``sigma`` (on [0, 1] pixels) added, for demos.

    The noise is drawn with numpy's default generator from ``seed`` (the same seed gives the same
    file), added to the colour channels only (alpha is kept), clipped to [0, 1], and written in the
    input's size, mode and bit depth. Done in bands of rows (the noise drawn band after band is the
    same stream as drawn at once), so memory is about twice the file's integers.
    """
    check_sigma(sigma, estimated=False)
    sigma = abs(sigma)  # -0.0 passes as 0; numpy's normal() refuses its sign
    if not (isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0):
        raise InputError(f"seed is a whole number >= 0 (the same seed gives the same noise); got {seed!r}")
    check_input_exists(in_path)  # the first thing to fix, before what the output would replace
    check_output_path(out_path, in_path, overwrite)

    def before_decode(header: ImageHeader) -> None:
        check_writable(out_path, header)
        check_frames_kept(out_path, header)
        check_memory(max(header.decode_bytes, 2 * header.compact_bytes + band_working_bytes(header.width)),
                     "adding noise to it", header)

    pixels, info = read_pixels(in_path, max_pixels=max_pixels, before_decode=before_decode)
    rng = np.random.default_rng(seed)
    colour = 1 if info.layout in ("L", "LA") else 3
    out = np.empty_like(pixels)
    step = band_rows_for(info.width)
    for y in range(0, info.height, step):
        image = to_unit(pixels[y:y + step], info)
        noisy = image.copy()
        noise = rng.normal(0.0, sigma, size=image.shape[:2] + (colour,)).astype(np.float32)
        noisy[:, :, :colour] = np.clip(image[:, :, :colour] + noise, 0.0, 1.0)
        out[y:y + step] = to_pixels(noisy, info)
    changed = float(np.mean(np.any((out >= 128) != (pixels >= 128), axis=2))) if info.bit_depth == 1 else None
    # (a 1-bit image is written thresholded at 128, as write_image does)
    del pixels
    fmt = output_format(out_path)
    # lossy WebP (q95, 4:2:0) smoothed 31% of sigma 0.1 away: a noisy copy is a test input, its noise is its content
    info = dataclasses.replace(info, lossless=info.lossless or fmt == "WEBP")
    written = write_pixels(out_path, out, info, overwrite=overwrite)
    notes = [*info.notes, *output_notes(fmt, info)]
    if changed is not None:  # sigma 0.1 changed no pixel of a 1-bit image, and the report said nothing
        notes.append(f"a 1-bit image: the noise is rounded back to black and white, so {100 * changed:.1f}% of the "
                     f"pixels changed (a pixel flips only where the noise passes half the range)")
    if fmt == "JPEG":
        notes.append(f"JPEG is lossy: the noise in the file is not exactly sigma {sigma:g} (at quality {JPEG_QUALITY} "
                     f"its level is kept, each pixel off by a few levels); write .png for the exact noisy image")
    elif fmt == "WEBP":
        notes.append("written as lossless WebP (lossy WebP would smooth much of the noise away)")
    return {"input": info.path, "output": str(written), "size": [info.width, info.height], "mode": info.mode,
            "layout": info.layout, "bit_depth": info.bit_depth, "sigma": float(sigma), "seed": seed, "notes": notes}
