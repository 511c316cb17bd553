"""The clean-input guard: leave clean and lightly noisy photos (almost) as they are, blindly.

A denoiser trained for every noise level still changes a clean photo a little (the blind weights take the
clean gray ``camera`` photo to 35.6 dB against itself) and at light noise may take away more detail than
noise. The guard estimates the photo's noise level ``sigma`` and, when it is low (at most
:data:`GUARD_MAX_SIGMA`), returns the weight ``a`` of the input in ``a * input + (1 - a) * denoised`` that
minimises Stein's unbiased risk estimate (SURE) of that blend's mean squared error; no clean image is needed::

    SURE(a) = (1 - a)^2 |f(x) - x|^2 - n sigma^2 + 2 sigma^2 (a n + (1 - a) div f(x))
    a*      = clip(1 - sigma^2 (n - div f(x)) / |f(x) - x|^2, 0, 1)

``div f`` (how much the output follows the input) is estimated by Monte Carlo: one more denoising of
``x + eps b`` with a fixed Rademacher ``b``, ``div f ~ b . (f(x + eps b) - f(x)) / eps``. Pixels within ``eps``
of 0 or 1 are not perturbed, which leaves their share out of ``div f``: the weight then comes out lower, the
cautious side (closer to the denoiser's own output).

``sigma`` is estimated from the finest diagonal Haar coefficients ``HH`` (a clean photo has little energy
there; white noise of std ``sigma`` gives coefficients of std ``sigma``). Texture adds to ``HH`` too, so the
coefficients are taken in blocks of 16x16 pixels (64 per channel), each block's mean ``HH^2`` measured, and the
estimate read from the quietest blocks: the 10% quantile of those means, divided by the same quantile of
``chi2(64) / 64`` (what pure noise gives; Wilson and Hilferty's approximation, within 1% of the exact value).
Left out: blocks with a pixel at 0 or 1 (clipped), and blocks with more than half their coefficients at 0 (flat or
drawn areas, such as a plain background or a smooth gradient, where ``HH`` is 0; they would make a noisy photo
on them read as clean: the median rule used before read a noisy photo on a drawn gradient as noise-free). With
fewer than :data:`MIN_NOISE_BLOCKS` blocks left (an image under about 64x64 pixels, or mostly flat) it falls back
to Donoho's MAD rule, median(|HH|) / 0.6745, over the unclipped, non-flat 2x2 blocks. On scikit-image's photos
with noise of 2 to 10/255 the estimate comes within 0.7/255 of the truth (the MAD rule: up to 2/255 high, camera
at 5/255 read as 6.4/255); clipping makes it low at heavy noise, where the gate keeps the guard out (the best
weight there is 0).

Both are computed on up to :data:`SAMPLE_PIXELS` of the photo (evenly spaced windows), so the guard costs at
most two extra denoisings of that many pixels, and only for photos under the gate; the weight is one number
for the whole photo, so the banded result stays the same for every band size. Only numpy is imported here.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from moe_base.errors import InputError

GUARD_MAX_SIGMA = 20 / 255
"""Above this estimated noise level the guard does nothing (measured best weights were 0 from 15/255 up)."""
SAMPLE_PIXELS = 1 << 18
"""Pixels the guard looks at (at most): 16 windows of 128 x 128 spread over the photo, or all of a smaller one."""
WINDOW = 128
PROBE_SEED = 20261129
MAD_TO_SIGMA = 0.6745  # median(|N(0, 1)|)
NOISE_BLOCK = 8
"""Haar coefficients per side of a block of the noise estimate (16x16 pixels)."""
NOISE_QUANTILE, NOISE_QUANTILE_Z = 0.1, -1.2815515655446004  # the quantile, and the standard normal's at it
MIN_NOISE_BLOCKS = 16
"""Fewer usable blocks than this: the MAD rule over every coefficient instead."""
ZERO_DETAIL, MAX_ZERO_SHARE = 1e-6, 0.5  # |HH| under 1e-6 counts as 0 (a 16-bit step is 7.6e-6 in HH)


@dataclass(frozen=True)
class GuardResult:
    """What the guard decided for one photo (``input_weight`` is the ``a`` above)."""

    input_weight: float
    sigma: float | None  # on [0, 1] pixels: the estimate, or what the caller gave; None: no estimate possible
    sigma_given: bool
    applied: bool  # False: sigma above the gate (no extra denoising was done)
    sampled_pixels: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def haar_diagonal(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The finest diagonal Haar coefficients ``HH`` of an HxW or HxWxC float image, (H/2)x(W/2)xC, and two masks
    of the same shape: ``unclipped`` (no value of the 2x2 block at 0 or 1) and ``flat`` (four equal values)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or x.shape[0] < 2 or x.shape[1] < 2:
        raise InputError(f"the noise estimate needs an image of at least 2x2 pixels (HxW or HxWxC); got shape "
                         f"{np.shape(image)}")
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    blocks = np.stack([x[0:h:2, 0:w:2], x[0:h:2, 1:w:2], x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]])
    hh = (blocks[0] - blocks[1] - blocks[2] + blocks[3]) / 2
    return hh, ((blocks > 0) & (blocks < 1)).all(axis=0), blocks.min(axis=0) == blocks.max(axis=0)


def diagonal_details(image: np.ndarray) -> np.ndarray:
    """|HH| of :func:`haar_diagonal`, flat, from the unclipped blocks that are not flat (the median rule's input)."""
    hh, unclipped, flat = haar_diagonal(image)
    return np.abs(hh[unclipped & ~flat])


def block_energies(image: np.ndarray, block: int = NOISE_BLOCK) -> np.ndarray:
    """Mean ``HH^2`` of every ``block`` x ``block`` group of coefficients, per channel (float64, flat), of the
    groups that are unclipped and have at most half their coefficients at 0 (see the module's text)."""
    hh, unclipped, _ = haar_diagonal(image)
    rows, cols, channels = hh.shape[0] // block, hh.shape[1] // block, hh.shape[2]

    def grouped(a: np.ndarray) -> np.ndarray:
        a = a[:rows * block, :cols * block].reshape(rows, block, cols, block, channels)
        return a.transpose(0, 2, 4, 1, 3).reshape(rows, cols, channels, block * block)

    values = grouped(hh.astype(np.float64))
    usable = grouped(unclipped).all(axis=-1) & ((np.abs(values) < ZERO_DETAIL).mean(axis=-1) <= MAX_ZERO_SHARE)
    return (values ** 2).mean(axis=-1)[usable]


def chi2_mean_quantile(dof: int, z: float = NOISE_QUANTILE_Z) -> float:
    """The quantile of ``chi2(dof) / dof`` where the standard normal's is ``z`` (Wilson-Hilferty)."""
    return (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


def estimate_sigma(image: np.ndarray | list[np.ndarray]) -> float | None:
    """Noise standard deviation (on [0, 1] pixels) of an image, or of several (e.g. windows of one photo) pooled:
    from the quietest 16x16 blocks (see the module's text), or by the MAD rule when fewer than
    :data:`MIN_NOISE_BLOCKS` blocks are usable. None when no coefficient is usable (a flat or saturated image)."""
    images = image if isinstance(image, list) else [image]
    energies = np.concatenate([block_energies(im) for im in images]) if images else np.zeros(0)
    if energies.size >= MIN_NOISE_BLOCKS:
        level = np.quantile(energies, NOISE_QUANTILE) / chi2_mean_quantile(NOISE_BLOCK * NOISE_BLOCK)
        return float(math.sqrt(level))
    parts = [diagonal_details(im) for im in images]
    values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return float(np.median(values) / MAD_TO_SIGMA) if values.size else None


def sample_windows(height: int, width: int, window: int = WINDOW,
                   max_pixels: int = SAMPLE_PIXELS) -> list[tuple[int, int, int, int]]:
    """Evenly spaced ``(top, left, rows, cols)`` windows covering at most ``max_pixels`` (the whole image when
    it is that small), corners included."""
    if height * width <= max_pixels:
        return [(0, 0, height, width)]
    wh, ww = min(window, height), min(window, width)
    count = max(1, max_pixels // (wh * ww))
    ny = max(1, min(math.isqrt(count), height // wh))
    nx = max(1, min(count // ny, width // ww))

    def starts(n: int, length: int, size: int) -> list[int]:
        return [0] if n == 1 else [round(i * (length - size) / (n - 1)) for i in range(n)]

    return [(y, x, wh, ww) for y in starts(ny, height, wh) for x in starts(nx, width, ww)]


def colour_part(rows: np.ndarray) -> np.ndarray:
    """The channels that are denoised: gray (and gray+alpha) -> HxW, RGB (and RGBA) -> HxWx3."""
    return rows[:, :, 0] if rows.shape[2] in (1, 2) else rows[:, :, :3]


def check_sigma(sigma: float | None, name: str = "sigma") -> None:
    """InputError unless ``sigma`` (named ``name`` in the message, e.g. a command's ``--sigma``) is None or a
    noise level the guard can use: finite and >= 0, on [0, 1] pixels."""
    if sigma is not None and not (0.0 <= sigma < float("inf")):
        raise InputError(f"{name} is the noise std on [0, 1] pixels, >= 0 (got {sigma}); e.g. 0.02 for light noise, "
                         f"or leave it out to have it estimated")


def blend(given: np.ndarray, denoised: np.ndarray, input_weight: float) -> np.ndarray:
    """The guard's output: ``input_weight * given + (1 - input_weight) * denoised``, in float64, rounded to float32."""
    return (input_weight * given.astype(np.float64) + (1.0 - input_weight) * denoised).astype(np.float32)


def sure_input_weight(x: np.ndarray, fx: np.ndarray, fx_probe: np.ndarray, probe: np.ndarray, eps: float,
                      sigma: float) -> float:
    """The SURE-optimal input weight for one image: ``x`` the input, ``fx`` its denoised version, ``fx_probe``
    the denoised ``x + eps * probe``; float64 sums. 0 when the denoiser returned its input (nothing to blend)."""
    diff = fx.astype(np.float64) - x
    residual = float(np.sum(diff * diff))
    if residual <= 0.0:
        return 0.0
    divergence = float(np.sum(probe * (fx_probe.astype(np.float64) - fx))) / eps
    weight = 1.0 - sigma * sigma * (x.size - divergence) / residual
    return float(min(1.0, max(0.0, weight)))


def guard_weight(rows: Callable[[int, int], np.ndarray], height: int, width: int,
                 denoise: Callable[[np.ndarray], np.ndarray], sigma: float | None = None,
                 max_sigma: float = GUARD_MAX_SIGMA, max_pixels: int = SAMPLE_PIXELS) -> GuardResult:
    """The guard's decision for a photo read through ``rows(a, b)`` (float32 rows ``(b - a, width, C)``).

    ``denoise`` maps an image of the colour part's shape (HxW gray or HxWx3) to its denoised version, unclipped
    (e.g. ``runtime.tiling.denoise_array`` without the guard). ``sigma``: the noise level if known (skips the
    estimate; a user's ``--sigma``)."""
    check_sigma(sigma)
    windows = sample_windows(height, width, max_pixels=max_pixels)
    crops = [colour_part(rows(y, y + h))[:, x:x + w] for y, x, h, w in windows]
    sampled = sum(c.shape[0] * c.shape[1] for c in crops)
    given = sigma is not None
    if sigma is None:
        usable = [c for c in crops if min(c.shape[:2]) >= 2]
        sigma = estimate_sigma(usable) if usable else None
        if sigma is None:  # flat, saturated or 1 pixel wide: no basis for a blend
            return GuardResult(0.0, None, False, False, sampled)
    if sigma > max_sigma:
        return GuardResult(0.0, sigma, given, False, sampled)
    if sigma == 0.0:  # told (or measured) noise-free: the input is the best answer
        return GuardResult(1.0, sigma, given, True, sampled)
    eps = 0.1 * max(sigma, 1 / 255)
    rng = np.random.default_rng(PROBE_SEED)
    x_all, f_all, fp_all, b_all = [], [], [], []
    for crop in crops:
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        probe = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=crop.shape)
        probe[(crop <= eps) | (crop >= 1 - eps)] = 0.0  # keep x + eps b inside [0, 1]
        x_all.append(crop.ravel())
        f_all.append(np.asarray(denoise(crop), dtype=np.float32).ravel())
        fp_all.append(np.asarray(denoise(np.clip(crop + eps * probe, 0.0, 1.0)), dtype=np.float32).ravel())
        b_all.append(probe.ravel())
    weight = sure_input_weight(np.concatenate(x_all).astype(np.float64), np.concatenate(f_all),
                               np.concatenate(fp_all), np.concatenate(b_all).astype(np.float64), eps, sigma)
    return GuardResult(weight, sigma, given, True, sampled)
