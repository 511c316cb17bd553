"""Whether a photo's pixels were JPEG-compressed once, whatever file they are in now.

The clean-input guard reads a JPEG's noise at two scales (:mod:`runtime.guard`), since JPEG removes the finest
detail where the noise is read. A JPEG saved again as PNG or TIFF (an edit, a screenshot, a converter) keeps
that loss but not the format; its pixels still tell. JPEG stores each 8x8 block's DCT coefficients rounded to
multiples of a step (one step per coefficient position, from the quality's table), so taking the same 8x8 DCT
of the decoded pixels again gives values within about half a level of those multiples: the phases
``2 pi c / q`` of the coefficients ``c`` gather near 0 for the right step ``q``. On a lossless photo they spread
evenly, whatever ``q`` (their mean resultant length is about ``1 / sqrt(n)`` for ``n`` coefficients).

:func:`jpeg_quantised` takes the brightness (JPEG's luma ``Y``, which a colour JPEG keeps at full resolution),
measures the resultant length for the steps 2..:data:`MAX_STEP` at :data:`POSITIONS` (low frequencies: large
steps, and enough non-zero coefficients even at high quality), and calls the photo JPEG-compressed when at least
:data:`MIN_POSITIONS` positions gather at some step (resultant >= :data:`MIN_RESULTANT`, from at least
:data:`MIN_COEFFICIENTS` non-zero coefficients). Measured on 17 of scikit-image's sample photos: the lossless
ones, clean or with noise of 3-15/255, read at most 0.31 at any position (most under 0.15); JPEGs of quality 85 or
below, noisy or clean, at least 0.41, and at least 6 of the 8 positions over 0.5. (Three "clean" sample photos
turned out to be JPEGs once: coins, page, and immunohistochemistry, cropped off the grid; rocket and hubble, JPEG
files at quality 95-100, are not found from their pixels.) A drawn two-level picture (a
checkerboard, a silhouette) gathers at up to 4 positions. ``tests/runtime/test_jpeg_traces.py`` keeps the cases.

The grid is where JPEG put it unless the photo was cropped afterwards: the origin's grid is tried first, then the
likeliest of all 64 (:func:`likeliest_grid`), so a crop by any number of pixels is found too. At quality 90 the
steps are 2-3 and only some photos are found, at 95 and above none; there the one-scale reading is close anyway.
Resampling (a resize) removes the grid, and the photo reads as lossless.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

LOSSY_FORMATS = ("JPEG", "MPO")
"""Pillow's names of the file formats whose noise the guard reads at two scales (:func:`two_scales_reason`)."""
POSITIONS = ((0, 1), (1, 0), (1, 1), (0, 2), (2, 0), (1, 2), (2, 1), (2, 2))
MAX_STEP = 32
MIN_RESULTANT = 0.5
MIN_POSITIONS = 6
MIN_COEFFICIENTS = 100
MAX_SIDE = 1024  # the largest region examined (a centred, grid-aligned crop): ~16k blocks, some 100 ms


def _dct_matrix() -> np.ndarray:
    k = np.arange(8)
    m = np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / 16) * np.sqrt(2 / 8)
    m[0] /= np.sqrt(2)
    return m


_DCT = _dct_matrix()


def luma(pixels: np.ndarray, top: float) -> np.ndarray:
    """JPEG's Y on the 0..255 scale from an H x W x C array of the file's integers (``top``: 255 or 65535); alpha,
    the fourth or second channel, is left out."""
    x = pixels.astype(np.float64) * (255.0 / top)
    if x.ndim == 2:
        return x
    if x.shape[2] >= 3:
        return 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return x[..., 0]


def grid_resultants(y: np.ndarray, dy: int = 0, dx: int = 0, positions: tuple[tuple[int, int], ...] = POSITIONS,
                    max_step: int = MAX_STEP) -> list[float]:
    """For each of ``positions``: the largest mean resultant length over the steps 2..``max_step`` of the 8x8
    DCT coefficients on the grid starting at row ``dy``, column ``dx`` (0 where too few coefficients)."""
    y = y[dy:, dx:]
    h, w = (y.shape[0] // 8) * 8, (y.shape[1] // 8) * 8
    if h == 0 or w == 0:
        return [0.0] * len(positions)
    blocks = (y[:h, :w] - 128.0).reshape(h // 8, 8, w // 8, 8)
    coefficients = np.einsum("ui,aibj,vj->abuv", _DCT, blocks, _DCT, optimize=True)
    best = []
    for u, v in positions:
        c = coefficients[:, :, u, v].ravel()
        top = 0.0
        for q in range(2, max_step + 1):
            s = c[np.abs(c) > q / 2]  # the non-zero multiples; zeros gather at every step
            if s.size >= MIN_COEFFICIENTS:
                top = max(top, float(np.abs(np.exp(2j * np.pi / q * s).mean())))
        best.append(top)
    return best


def likeliest_grid(y: np.ndarray) -> tuple[int, int]:
    """The grid's first row and column (0..7 each) where the coefficients gather most: all 64 tried on at most
    256 x 256 pixels, at the two lowest positions and steps up to 16 (some 30 ms)."""
    y = y[:256 + 7, :256 + 7]
    scores = {(dy, dx): sum(grid_resultants(y, dy, dx, POSITIONS[:2], 16)) for dy in range(8) for dx in range(8)}
    return max(scores, key=scores.__getitem__)


def _centre_region(pixels: np.ndarray) -> np.ndarray:
    """At most MAX_SIDE x MAX_SIDE pixels around the centre, starting on a multiple of 8 (the grid stays)."""
    def start(n: int) -> int:
        return max(0, (n - MAX_SIDE) // 2) // 8 * 8

    a, b = start(pixels.shape[0]), start(pixels.shape[1])
    return pixels[a:a + MAX_SIDE, b:b + MAX_SIDE]


def jpeg_quantised(pixels: np.ndarray, top: float = 255.0) -> bool:
    """Whether the pixels (H x W x C, or H x W, on 0..``top``: the file's integers, or 1.0 for [0, 1] floats)
    carry JPEG's quantised 8x8 DCT, on the origin's grid or any other."""
    y = luma(_centre_region(pixels), top)
    if (y.shape[0] // 8) * (y.shape[1] // 8) < MIN_COEFFICIENTS:  # too few blocks to tell
        return False

    def gathers(dy: int, dx: int) -> bool:
        return sum(r >= MIN_RESULTANT for r in grid_resultants(y, dy, dx)) >= MIN_POSITIONS

    if gathers(0, 0):
        return True
    grid = likeliest_grid(y)
    return grid != (0, 0) and gathers(*grid)


def two_scales_reason(file_format: str | None, pixels: np.ndarray, top: float) -> str | None:
    """Why the guard should read this photo's noise at two scales, or None: its file is JPEG, or its pixels were
    JPEG-compressed before (:func:`jpeg_quantised`). One decision for every path (``denoise``, its ``--server``
    and ``--check-local``), so a photo is guarded the same way wherever it is denoised."""
    if file_format in LOSSY_FORMATS:
        return "the file is JPEG"
    if jpeg_quantised(pixels, top):
        return "its pixels were JPEG-compressed before"  # JPEG's 8x8 blocks, quantised
    return None


def deferred_two_scales_reason(file_format: str | None, pixels: np.ndarray, top: float) -> str | Callable[[], str | None]:
    """:func:`two_scales_reason`, its look at the pixels deferred: the reason at once for a JPEG file, else a call
    that looks, which the guard makes only when the photo's noise read at one scale is under its gate
    (:func:`runtime.guard.guard_weight`). Above it, the look (0.1 to 0.6 s a photo, most of what a noisy photo's
    guard costs) could not change what the guard does."""
    if file_format in LOSSY_FORMATS:
        return two_scales_reason(file_format, pixels, top)  # type: ignore[return-value]
    return lambda: two_scales_reason(file_format, pixels, top)
