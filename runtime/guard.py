"""The clean-input guard: leave clean and lightly noisy photos (almost) as they are, blindly.

A denoiser trained for every noise level still changes a clean photo a little (the blind weights take the
clean gray ``camera`` photo to 35.6 dB against itself) and at light noise may take away more detail than
noise. The guard estimates the photo's noise, which may vary with brightness as a camera's does (std
``sigma_i`` at pixel ``i``), and, when its root-mean-square ``sigma`` is low (at most :data:`GUARD_MAX_SIGMA`),
returns the weight ``a`` of the input in ``a * input + (1 - a) * denoised`` that minimises Stein's unbiased risk
estimate (SURE) of that blend's squared error; no clean image is needed::

    SURE(a) = (1 - a)^2 |f(x) - x|^2 - sum_i sigma_i^2 + 2 sum_i sigma_i^2 (a + (1 - a) df_i/dx_i)
    a*      = clip(1 - sum_i sigma_i^2 (1 - df_i/dx_i) / |f(x) - x|^2, 0, 1)

(with one ``sigma`` for all pixels: ``1 - sigma^2 (n - div f) / |f(x) - x|^2``). ``df_i/dx_i`` (how much the
output follows the input) is estimated by Monte Carlo: one more denoising of ``x + eps b`` with a fixed
Rademacher ``b``, ``df_i/dx_i ~ b_i (f(x + eps b) - f(x))_i / eps``, summed with the weights ``sigma_i^2``. Pixels
within ``eps`` of 0 or 1 are not perturbed, which leaves their share out: the weight then comes out lower, the
cautious side (closer to the denoiser's own output).

The noise is read from the finest diagonal Haar coefficients ``HH`` (a clean photo has little energy there;
white noise of std ``sigma`` gives coefficients of std ``sigma``). Texture adds to ``HH`` too, so the coefficients
are taken in blocks of 16x16 pixels (64 per channel), each block's mean ``HH^2`` measured, and the level read from
the quietest blocks: the 10% quantile of those means, divided by the same quantile of ``chi2(64) / 64`` (what pure
noise gives; Wilson and Hilferty's approximation, within 1% of the exact value). Left out: blocks with a pixel at
0 or 1 (clipped), and blocks with more than half their coefficients at 0 (flat or drawn areas, such as a plain
background or a smooth gradient, where ``HH`` is 0; they would make a noisy photo on them read as clean).

Noise that varies with brightness: the usable blocks are sorted by brightness into up to
:data:`MAX_NOISE_LEVELS` groups, each group's variance read as above, and the variance taken as the highest line
(in brightness) under all the groups' readings (:func:`lower_line`): texture only lifts a group's reading, so a
group of textured blocks does not lift the line, and a shot-plus-read noise (variance linear in brightness) is
followed. A pixel's ``sigma_i`` is that line at its denoised value. On pure noise the line reads about 1% low.
With fewer than :data:`MIN_NOISE_BLOCKS` blocks left (an image under about 64x64 pixels, or mostly flat) it falls
back to Donoho's MAD rule, median(|HH|) / 0.6745, over the unclipped 2x2 blocks, one level for all. Flat blocks count
there, as 0: an image mostly flat (text, a drawing) reads as noise-free. Left out, its edges alone were read, as
heavy noise (a clean page of text at 52.6/255), and the guard handed back the denoiser's output, its punctuation
partly erased. Blocks that touch 0 or 1 stay out: clipped noise reads at about half its level there, and three
ways of counting them (all, the flat ones where most are flat, the flat ones beside a drawing's lines) each read a
noisy photo beside a saturated area as (nearly) noise-free somewhere: beside a blown sky, on a white canvas, a thin
strip of detail (probes of 1,500 to 5,500 images lost up to 4.9 dB). Only an image without one unclipped block, whose
blocks at 0 or 1 are mostly flat (a drawing in pure black and white, a flat black or white image), reads as
noise-free: it gave no estimate, and came back changed. A clean page of text on pure white with gray ink or
anti-aliased letters still reads as heavy noise from its letters' edges (the denoiser's output is given).

JPEG takes away the finest detail, and with it much of the noise the estimate reads there, while the noise at
coarser scales stays: a noisy JPEG reads low. For a photo stored as JPEG, or whose pixels were JPEG-compressed
before (:func:`runtime.jpeg_traces.two_scales_reason`; the caller decides, ``two_scales``), the noise is also
read on the 2x2 means (the next scale; white noise reads the same there) and the higher reading taken at every
brightness. Not for lossless input: texture reads higher at the next scale too, and the guard would give back less
of a clean photo.

Measured (``python -m tools.guard_noise``, docs/evaluation.md): with white noise of 3 to 15/255 on scikit-image's
photos the estimate reads within 0.7/255 of the truth, with a camera-like noise (variance linear in brightness)
within 0.6/255 of its root-mean-square, and the guard's PSNR comes within 0.25 dB of the guard told the true
level. One level read from the quietest blocks of the whole photo (used before) read the darkest parts' noise and
the guard, handing back much of the noisy input, lost up to 4.5 dB against the model alone. Clipping makes the
estimate low at heavy noise, where the gate keeps the guard out (the best weight there is 0).

Both are computed on up to :data:`SAMPLE_PIXELS` of the photo (evenly spaced windows), so the guard costs at
most two extra denoisings of that many pixels, and only for photos under the gate (one for a photo sampled whole
when the caller hands its own denoising in as ``whole``, as ``runtime.tiling`` does); the weight is one number for
the whole photo, so the banded result stays the same for every band size. Only numpy is imported here.
"""
from __future__ import annotations

import math
import numbers
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
MAX_NOISE_LEVELS, BLOCKS_PER_LEVEL = 8, 64  # brightness groups of the noise profile, and their least size
ZERO_DETAIL, MAX_ZERO_SHARE = 1e-6, 0.5  # |HH| under 1e-6 counts as 0 (a 16-bit step is 7.6e-6 in HH)
IMPULSE_STEP, IMPULSE_NOTE_SHARE = 0.3, 5e-4
"""A value at 0 or 1 whose 8 neighbours all differ from it by more than IMPULSE_STEP is an isolated dot; a photo the
guard read under its gate with at least IMPULSE_NOTE_SHARE of its values such dots gets a note (:func:`guard_notes`)."""


@dataclass(frozen=True)
class GuardResult:
    """What the guard decided for one photo (``input_weight`` is the ``a`` above)."""

    input_weight: float
    sigma: float | None  # on [0, 1] pixels: the estimate (its root-mean-square over the pixels), or what the caller
    # gave; None: no estimate possible
    sigma_given: bool
    applied: bool  # False: sigma above the gate (no extra denoising was done)
    sampled_pixels: int
    sigma_range: tuple[float, float] | None = None  # the estimate's lowest and highest std over brightness
    two_scales: bool = False  # the noise was read at the finest two scales (a JPEG input); a lossless photo's pixels
    # are looked at for JPEG's traces only under the gate, so above it False may mean 'not looked at'
    two_scales_reason: str | None = None  # why, where the caller said (runtime.jpeg_traces.two_scales_reason)
    impulse_share: float = 0.0  # the share of the sampled values that are isolated black or white dots (impulse_share)

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
    blocks = np.stack(corners(x))
    hh = (blocks[0] - blocks[1] - blocks[2] + blocks[3]) / 2
    return hh, ((blocks > 0) & (blocks < 1)).all(axis=0), blocks.min(axis=0) == blocks.max(axis=0)


def diagonal_details(image: np.ndarray) -> np.ndarray:
    """|HH| of :func:`haar_diagonal`, flat (the median rule's input): of the unclipped blocks (a flat one's is 0);
    for an image without one whose blocks at 0 or 1 are mostly flat (drawn in black and white only, or flat black or
    white), those flat blocks, as 0 (see the module's text)."""
    hh, unclipped, flat = haar_diagonal(image)
    if not unclipped.any():
        saturated = flat & ~unclipped
        if np.count_nonzero(saturated) > 0.5 * saturated.size:
            return np.abs(hh[saturated])
    return np.abs(hh[unclipped])


def block_stats(image: np.ndarray, block: int = NOISE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``HH^2`` and mean pixel value of every ``block`` x ``block`` group of coefficients (2 ``block`` pixels a
    side), per channel (float64, flat), of the groups that are unclipped and have at most half their coefficients
    at 0 (see the module's text)."""
    hh, unclipped, _ = haar_diagonal(image)
    rows, cols, channels = hh.shape[0] // block, hh.shape[1] // block, hh.shape[2]

    def grouped(a: np.ndarray, size: int = block) -> np.ndarray:
        a = a[:rows * size, :cols * size].reshape(rows, size, cols, size, channels)
        return a.transpose(0, 2, 4, 1, 3).reshape(rows, cols, channels, size * size)

    values = grouped(hh.astype(np.float64))
    usable = grouped(unclipped).all(axis=-1) & ((np.abs(values) < ZERO_DETAIL).mean(axis=-1) <= MAX_ZERO_SHARE)
    pixels = np.asarray(image, dtype=np.float64)
    brightness = grouped(pixels if pixels.ndim == 3 else pixels[:, :, None], 2 * block).mean(axis=-1)
    return (values ** 2).mean(axis=-1)[usable], brightness[usable]


def chi2_mean_quantile(dof: int, z: float = NOISE_QUANTILE_Z) -> float:
    """The quantile of ``chi2(dof) / dof`` where the standard normal's is ``z`` (Wilson-Hilferty)."""
    return (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@dataclass(frozen=True)
class NoiseProfile:
    """The noise std (on [0, 1] pixels) as a function of brightness: ``sigmas[k]`` at ``levels[k]`` (increasing),
    linear in between and constant beyond. One level: the same noise everywhere."""

    levels: tuple[float, ...]
    sigmas: tuple[float, ...]

    @classmethod
    def constant(cls, sigma: float) -> NoiseProfile:
        return cls((0.5,), (float(sigma),))

    def at(self, values: np.ndarray) -> np.ndarray:
        """The std at every value of ``values`` (float64, same shape)."""
        return np.interp(np.asarray(values, dtype=np.float64), self.levels, self.sigmas)

    def rms(self, images: list[np.ndarray]) -> float:
        """The root-mean-square std over the pixels of ``images``."""
        return float(math.sqrt(np.mean(np.concatenate([self.at(im).ravel() ** 2 for im in images]))))


def estimate_noise_profile(images: list[np.ndarray], two_scales: bool = False) -> NoiseProfile | None:
    """The noise of one photo (its windows ``images``, pooled) as a function of brightness, read at the finest
    scale (:func:`scale_profile`). ``two_scales`` (a JPEG input): also at the next scale (the images' 2x2 means), the
    higher of the two taken at every brightness; white noise reads the same at both, noise whose finest detail was
    taken away (JPEG) reads low at the finest and shows at the next, and so does texture, which is why it is not
    the default. None when no coefficient is usable (images under 2 pixels wide or tall, or whose every 2x2 block
    touches 0 or 1 without most of them being flat: noise clipped everywhere)."""
    fine = scale_profile(images)
    if not two_scales or fine is None:
        return fine
    coarse = scale_profile([half(im) for im in images if min(im.shape[:2]) >= 4])
    if coarse is None:
        return fine
    levels = np.union1d(fine.levels, coarse.levels)
    sigmas = np.maximum(fine.at(levels), 2.0 * coarse.at(levels))  # a 2x2 mean halves white noise's std
    return NoiseProfile(tuple(float(v) for v in levels), tuple(float(v) for v in sigmas))


def corners(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The top-left, top-right, bottom-left and bottom-right pixels of every 2x2 block of an HxW or HxWxC array
    (an odd last row or column left out), each (H/2)x(W/2)[xC]."""
    h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
    return x[0:h:2, 0:w:2], x[0:h:2, 1:w:2], x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]


def half(image: np.ndarray) -> np.ndarray:
    """The means of the 2x2 blocks of an HxW or HxWxC image (an odd last row or column left out)."""
    a, b, c, d = corners(np.asarray(image, dtype=np.float32))
    return (a + b + c + d) / 4


def scale_profile(images: list[np.ndarray]) -> NoiseProfile | None:
    """The noise as a function of brightness from the finest diagonal details of ``images``: the usable blocks
    sorted by brightness into up to :data:`MAX_NOISE_LEVELS` groups of at least :data:`BLOCKS_PER_LEVEL`, each
    group's level from its quietest blocks, the variance the :func:`lower_line` under the groups (see the module's
    text). Fewer than :data:`MIN_NOISE_BLOCKS` usable blocks: the MAD rule's single level. None when no coefficient
    is usable (see :func:`estimate_noise_profile`)."""
    stats = [block_stats(im) for im in images]
    energies = np.concatenate([e for e, _ in stats]) if stats else np.zeros(0)
    if energies.size < MIN_NOISE_BLOCKS:
        parts = [diagonal_details(im) for im in images]
        values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return NoiseProfile.constant(float(np.median(values) / MAD_TO_SIGMA)) if values.size else None
    brightness = np.concatenate([b for _, b in stats])
    order = np.argsort(brightness, kind="stable")
    groups = np.array_split(order, max(1, min(MAX_NOISE_LEVELS, energies.size // BLOCKS_PER_LEVEL)))
    scale = chi2_mean_quantile(NOISE_BLOCK * NOISE_BLOCK)
    levels = np.array([np.median(brightness[g]) for g in groups])
    variances = np.array([np.quantile(energies[g], NOISE_QUANTILE) / scale for g in groups])
    fitted = lower_line(levels, variances)
    return NoiseProfile(tuple(float(v) for v in levels), tuple(float(math.sqrt(v)) for v in fitted))


def lower_line(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The line under every point ``(x[k], y[k])`` that lies highest (the largest sum at the ``x``), at the ``x``,
    clipped at 0. Texture only adds to a group's noise reading, so the highest line under all of them follows the
    noise's variance where it grows or falls linearly with brightness (a camera's shot and read noise); a group
    made only of textured blocks does not lift it."""
    best, best_sum = np.full_like(y, y.min()), float(y.min()) * len(y)  # the flat line under all
    tolerance = 1e-12 * max(1.0, float(y.max()))
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if x[j] - x[i] <= 1e-9:
                continue
            line = y[i] + (y[j] - y[i]) / (x[j] - x[i]) * (x - x[i])
            if (line <= y + tolerance).all() and line.sum() > best_sum:
                best, best_sum = line, float(line.sum())
    return np.maximum(best, 0.0)


def estimate_sigma(image: np.ndarray | list[np.ndarray]) -> float | None:
    """Noise standard deviation (on [0, 1] pixels) of an image, or of several (e.g. windows of one photo) pooled:
    the root-mean-square over their pixels of :func:`estimate_noise_profile`. None when no estimate is possible."""
    images = image if isinstance(image, list) else [image]
    for im in images:  # 0-255 pixels read as saturated: None came back, as for a flat image (unclipped noise may
        # take [0, 1] pixels a little past 1; past 4 they are levels of 255)
        if not isinstance(im, np.ndarray) or im.dtype.kind != "f" or (im.size and float(np.nanmax(im)) > 4.0):
            what = (f"{im.dtype} values up to {np.max(im) if im.size else 0}" if isinstance(im, np.ndarray)
                    else type(im).__name__)
            raise InputError(f"estimate_sigma takes float images on [0, 1] pixels; got {what}. Convert 8-bit pixels "
                             f"with np.asarray(image, np.float32) / 255 (16-bit: / 65535)")
    profile = estimate_noise_profile(images)
    return None if profile is None else profile.rms(images)


def impulse_share(images: list[np.ndarray]) -> float:
    """The share of the values of ``images`` (HxW or HxWxC on [0, 1]; their border pixels not counted) that are
    isolated black or white dots: at 0 or 1, all 8 neighbours more than :data:`IMPULSE_STEP` away. That is
    salt-and-pepper noise (dead or stuck pixels, transmission errors), which the model, trained on Gaussian noise,
    leaves, and which the noise estimate does not see (it leaves out blocks touching 0 or 1). Measured on
    scikit-image's sample photos: at most 1e-6 clean and at sigma 15/255, up to 0.25% at 50/255 (noise clipped at 0
    and 1: above the guard's gate), 0.08 to 0.2% at salt-and-pepper amount 0.002, 0.7 to 1.8% at 0.02."""
    dots = counted = 0
    for image in images:
        x = np.asarray(image, dtype=np.float32)
        x = x[:, :, None] if x.ndim == 2 else x
        h, w = x.shape[:2]
        if h < 3 or w < 3:
            continue
        centre = x[1:-1, 1:-1]
        isolated = (centre <= 0) | (centre >= 1)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if dy or dx:
                    isolated &= np.abs(x[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx] - centre) > IMPULSE_STEP
        dots += int(np.count_nonzero(isolated))
        counted += centre.size
    return dots / counted if counted else 0.0


def guard_notes(guard: dict[str, Any] | None) -> list[str]:
    """The notes a photo's report gets from its guard decision (``GuardResult.as_dict()``, or a server's): isolated
    black or white dots (:func:`impulse_share`) in a photo whose noise was read under the gate: the model keeps
    them, and the photo came back with them, the guard's line alone saying 'output = 1.00 x input'."""
    share = (guard or {}).get("impulse_share") or 0.0
    if not guard or not guard.get("applied") or share < IMPULSE_NOTE_SHARE:
        return []
    return [f"{share:.2%} of its values are isolated black or white dots: salt-and-pepper noise, which this model "
            f"does not remove and a median filter does (e.g. magick in.png -median 3 out.png), or fine detail of the "
            f"picture (stars, dotted lines), which a median filter would erase"]


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


def check_sigma(sigma: float | None, name: str = "sigma", *, estimated: bool = True) -> None:
    """InputError unless ``sigma`` (named ``name`` in the message, e.g. a command's ``--sigma``) is None or a
    noise level: finite, >= 0 and at most 1, on [0, 1] pixels (over 1 is a level meant on the 0-255 scale; the
    message gives the fraction). ``estimated``: None is allowed (the level is then estimated) and the message
    says so; without it None is refused."""
    if sigma is None and estimated:
        return
    tail = ", or leave it out to have it estimated" if estimated else ""
    if not (isinstance(sigma, numbers.Real) and not isinstance(sigma, bool)):  # np.array(0.1), "0.1" and True were
        # refused as if negative ('>= 0 (got array(0.1))')
        kind = f"a numpy array of shape {sigma.shape}" if isinstance(sigma, np.ndarray) else f"a {type(sigma).__name__}"
        raise InputError(f"{name} is the noise std on [0, 1] pixels, a number (e.g. 0.02 for light noise); got {kind}: "
                         f"{sigma!r}{'. float(sigma) gives the number' if isinstance(sigma, (str, np.ndarray)) else ''}"
                         f"{tail}")
    if not 0.0 <= sigma < float("inf"):
        raise InputError(f"{name} is the noise std on [0, 1] pixels, >= 0 (got {sigma!r}); e.g. 0.02 for light "
                         f"noise{tail}")
    if sigma > 255:
        raise InputError(f"{name} is the noise std on [0, 1] pixels, at most 1 (got {sigma:g}; over 255 it is no "
                         f"level on the 0-255 scale either){tail}")
    if sigma > 1:
        raise InputError(f"{name} is the noise std on [0, 1] pixels, at most 1 (got {sigma:g}): a level on the 0-255 "
                         f"scale is {sigma:g}/255 = {sigma / 255:.4g}; give that{tail}")


def check_guard_sigma(sigma: float | None, guard: bool | GuardResult, given: str | None = None,
                      guard_off: str = "guard=False") -> None:
    """InputError for a noise level nobody would read: ``sigma`` is read by the guard alone (the denoiser is
    blind: it takes no noise level), so with the guard off (``guard`` False; ``guard_off`` says how it was turned
    off, e.g. ``--no-guard``) or a decision made already (a :class:`GuardResult`) it would be ignored. ``given``
    names the level in the message (default ``sigma=...``), e.g. a command's ``--sigma 0.05``."""
    if sigma is None or guard is True:
        return
    given = given or f"sigma={sigma!r}"
    if isinstance(guard, GuardResult):
        raise InputError(f"{given} is read by the clean-input guard when it decides, and guard= is a decision made "
                         f"already (used as it is): give the sigma to guard_for_array, or pass guard=True")
    raise InputError(f"{given} is read by the clean-input guard alone (the denoiser is blind: it takes no noise "
                     f"level), and {guard_off} turns the guard off: leave one of them out")


def check_strength(strength: float, name: str = "strength") -> None:
    """InputError unless ``strength`` (named ``name`` in the message) is a number in [0, 1]."""
    if not (isinstance(strength, numbers.Real) and not isinstance(strength, (bool, np.bool_))  # True passed as 1
            and 0.0 <= strength <= 1.0):  # numbers.Real: numpy's float32 too
        raise InputError(f"{name} is how much of the denoising to keep, from 0 (the input as it is) to 1 (all of it, "
                         f"the default); got {strength!r}. E.g. 0.7 keeps some of the photo's grain")


def with_strength(input_weight: float, strength: float) -> float:
    """The input's weight in the output when only ``strength`` of the change from the input is kept: the output
    ``w x + (1 - w) f(x)`` moved back towards ``x`` becomes ``x + strength ((1 - w) (f(x) - x))``."""
    if strength == 1.0:  # exactly the weight decided (1 - (1 - w) can differ from w in the last bit)
        return input_weight
    return 1.0 - strength * (1.0 - input_weight)


def blend(given: np.ndarray, denoised: np.ndarray, input_weight: float) -> np.ndarray:
    """The guard's output: ``input_weight * given + (1 - input_weight) * denoised``, in float64, rounded to float32."""
    return (input_weight * given.astype(np.float64) + (1.0 - input_weight) * denoised).astype(np.float32)


def sure_input_weight(x: np.ndarray, fx: np.ndarray, fx_probe: np.ndarray, probe: np.ndarray, eps: float,
                      sigma: float | np.ndarray) -> float:
    """The SURE-optimal input weight for one image: ``x`` the input, ``fx`` its denoised version, ``fx_probe``
    the denoised ``x + eps * probe``; ``sigma`` the noise std, one for all pixels or one per pixel (noise that
    varies with brightness: each pixel's share of the risk and of the divergence is weighted by its variance);
    float64 sums. 0 when the denoiser returned its input (nothing to blend)."""
    diff = fx.astype(np.float64) - x
    residual = float(np.sum(diff * diff))
    if residual <= 0.0:
        return 0.0
    variance = np.broadcast_to(np.square(np.asarray(sigma, dtype=np.float64)), x.shape)
    weighted_divergence = float(np.sum(variance * probe * (fx_probe.astype(np.float64) - fx))) / eps
    weight = 1.0 - (float(np.sum(variance)) - weighted_divergence) / residual
    return float(min(1.0, max(0.0, weight)))


def guard_weight(rows: Callable[[int, int], np.ndarray], height: int, width: int,
                 denoise: Callable[[np.ndarray], np.ndarray], sigma: float | None = None,
                 max_sigma: float = GUARD_MAX_SIGMA, max_pixels: int = SAMPLE_PIXELS,
                 two_scales: bool | Callable[[], str | None] = False,
                 whole: Callable[[], np.ndarray] | None = None) -> GuardResult:
    """The guard's decision for a photo read through ``rows(a, b)`` (float32 rows ``(b - a, width, C)``).

    ``denoise`` maps an image of the colour part's shape (HxW gray or HxWx3) to its denoised version, unclipped
    (e.g. ``runtime.tiling.denoise_array`` without the guard). ``sigma``: the noise level if known, the same for
    every pixel (skips the estimate; a user's ``--sigma``). Estimated, the noise may vary with brightness
    (:func:`estimate_noise_profile`, read at two scales with ``two_scales``: for a JPEG input); the gate compares
    its root-mean-square over the sampled pixels. ``two_scales`` may be a call that says whether to, and why
    (:func:`runtime.jpeg_traces.deferred_two_scales_reason`): it is made only when the reading at one scale is under
    the gate, since the reading at two scales is the higher at every brightness and would be above it too (the
    guard stays out either way); the reason goes into the decision. ``whole``: the whole photo's colour part denoised, asked for
    (once) instead of ``denoise`` when the sample is the whole photo, so that a caller who needs that denoising
    anyway does it once."""
    check_sigma(sigma)
    windows = sample_windows(height, width, max_pixels=max_pixels)
    crops = [np.ascontiguousarray(colour_part(rows(y, y + h))[:, x:x + w], dtype=np.float32)
             for y, x, h, w in windows]
    sampled = sum(c.shape[0] * c.shape[1] for c in crops)
    dots = impulse_share(crops)
    given = sigma is not None
    deferred = callable(two_scales)
    two, reason = not deferred and bool(two_scales), None
    if sigma is None:
        usable = [c for c in crops if min(c.shape[:2]) >= 2]
        profile = estimate_noise_profile(usable, two) if usable else None
        if profile is None:  # 1 pixel wide or tall, or clipped everywhere: no basis for a blend (nor at two scales)
            return GuardResult(0.0, None, False, False, sampled, None, two, impulse_share=dots)
        if deferred and profile.rms(crops) <= max_sigma:
            reason = two_scales()  # type: ignore[operator]
            if reason:
                two = True
                profile = estimate_noise_profile(usable, True)  # not None: its finest scale read just now
        sigma = profile.rms(crops)
    else:
        profile = NoiseProfile.constant(sigma)

    def decided(weight: float, applied: bool) -> GuardResult:
        return GuardResult(weight, sigma, given, applied, sampled, (min(profile.sigmas), max(profile.sigmas)),
                           two and not given, reason or None, dots)

    if sigma > max_sigma:
        return decided(0.0, False)
    if sigma == 0.0:  # told (or measured) noise-free: the input is the best answer
        return decided(1.0, True)
    eps = 0.1 * max(sigma, 1 / 255)
    rng = np.random.default_rng(PROBE_SEED)
    x_all, f_all, fp_all, b_all, s_all = [], [], [], [], []
    for crop in crops:
        probe = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=crop.shape)
        probe[(crop <= eps) | (crop >= 1 - eps)] = 0.0  # keep x + eps b inside [0, 1]
        everything = whole is not None and len(crops) == 1 and crop.shape[:2] == (height, width)  # sampled whole
        denoised = np.asarray(whole() if everything else denoise(crop), dtype=np.float32)
        x_all.append(crop.ravel())
        f_all.append(denoised.ravel())
        fp_all.append(np.asarray(denoise(np.clip(crop + eps * probe, 0.0, 1.0)), dtype=np.float32).ravel())
        b_all.append(probe.ravel())
        s_all.append(profile.at(denoised).ravel())  # each pixel's noise, by its (denoised) brightness
    weight = sure_input_weight(np.concatenate(x_all).astype(np.float64), np.concatenate(f_all),
                               np.concatenate(fp_all), np.concatenate(b_all).astype(np.float64), eps,
                               np.concatenate(s_all))
    return decided(weight, True)
