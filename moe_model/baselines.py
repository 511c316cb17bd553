"""Classic denoisers to measure the model against: BM3D (the ``bm3d`` package) and the best Gaussian blur.

Both work on numpy images in [0, 1] laid out HxW (gray) or HxWx3 (colour); the batch helper takes the model's
(N, 3, H, W) layout. Both are *told* what the model is not: BM3D gets the true noise level (it is not blind), and the
best blur is chosen on the clean image (an oracle: no blur width of its grid does better on that image; a width
at the edge of the grid is marked, since one beyond it may).

``bm3d`` (PyPI, the reference implementation by Mäkinen, Azzari and Foi) and SciPy (for the blur; it comes with
scikit-image) are optional: imported when first used, with an error naming the extra that installs them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from moe_base.errors import InputError, MissingBackendError
from moe_base.metrics import psnr_from_mse

DEFAULT_BLUR_GRID: tuple[float, ...] = (0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
"""Blur widths (Gaussian std in pixels) searched by :func:`best_gaussian_blur`."""

BM3D_PROFILE = "np"  # the package's default ("normal profile")


def require_bm3d() -> Any:
    try:
        import bm3d
    except ImportError as e:
        raise MissingBackendError("the BM3D baseline needs the 'bm3d' package, which is not installed: "
                          "pip install 'moe-denoise[eval]' (or pip install bm3d); or leave BM3D out of the "
                          "evaluation (moe-denoise evaluate --bm3d-images 0 --bm3d-photos none)") from e
    return bm3d


def bm3d_available() -> bool:
    """Whether the ``bm3d`` package can be imported (tests skip on this)."""
    try:
        require_bm3d()
    except MissingBackendError:
        return False
    return True


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{what} must be a numpy array; got {type(image).__name__}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(f"{what} must be HxW (gray) or HxWx3 (colour); got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InputError(f"{what} has NaN/inf values; expected finite pixels (about [0, 1])")
    return image.astype(np.float64, copy=False)


def _check_sigma(sigma: float) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) or not 0 <= sigma < np.inf:
        raise InputError(f"sigma must be a finite number >= 0 (noise std on [0, 1] pixels, e.g. 25/255); "
                         f"got {sigma!r}")
    return float(sigma)


def bm3d_denoise(noisy: np.ndarray, sigma: float, profile: str = BM3D_PROFILE) -> np.ndarray:
    """BM3D of one image, HxW (``bm3d.bm3d``) or HxWx3 (``bm3d.bm3d_rgb``: block matching on the luminance of the
    opponent colour transform), told the noise std ``sigma`` on [0, 1] pixels. Returns float64 of the same shape.

    The image is passed as is (values of unclipped noise outside [0, 1] included); ``sigma`` is the std of the
    Gaussian that was added, also for clipped noise (whose actual std is a little smaller).
    """
    z = _check_image(noisy, "noisy image")
    s = _check_sigma(sigma)
    bm3d = require_bm3d()
    out = bm3d.bm3d(z, s, profile=profile) if z.ndim == 2 else bm3d.bm3d_rgb(z, s, profile=profile)
    return np.asarray(out, dtype=np.float64).reshape(z.shape)


def bm3d_batch(noisy: np.ndarray, sigma: float, profile: str = BM3D_PROFILE, progress: bool = False,
               desc: str = "BM3D") -> np.ndarray:
    """BM3D of every image of an (N, 3, H, W) batch (colour), one image at a time. Returns float32 (N, 3, H, W),
    clipped to [0, 1] as the models' outputs are (BM3D's own overshoots it; scored unclipped, it lost up to 0.04 dB
    on unclipped noise to a clamp every model has)."""
    x = np.asarray(noisy)
    if x.ndim != 4 or x.shape[1] != 3:
        raise InputError(f"noisy batch must be (N, 3, H, W); got shape {x.shape}")
    items: Sequence[int] | Any = range(len(x))
    if progress:
        from tqdm import tqdm

        items = tqdm(items, desc=desc, unit="image", leave=False)
    out = np.empty(x.shape, dtype=np.float32)
    for i in items:
        out[i] = np.clip(bm3d_denoise(x[i].transpose(1, 2, 0), sigma, profile).transpose(2, 0, 1), 0.0, 1.0)
    return out


def gaussian_blur(image: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Blur HxW or HxWx3 with a Gaussian of std ``blur_sigma`` pixels (each channel alone, borders reflected)."""
    try:
        from scipy.ndimage import gaussian_filter
    except ImportError as e:
        raise MissingBackendError("the Gaussian-blur baseline needs SciPy, which is not installed: "
                          "pip install 'moe-denoise[eval]' (SciPy comes with scikit-image)") from e
    x = _check_image(image, "image")
    if not 0 < blur_sigma < np.inf:
        raise InputError(f"blur_sigma must be a positive number of pixels; got {blur_sigma!r}")
    widths = (blur_sigma, blur_sigma) if x.ndim == 2 else (blur_sigma, blur_sigma, 0.0)
    return gaussian_filter(x, sigma=widths, mode="reflect")


def psnr(pred: np.ndarray, target: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of one image (any shape); ``inf`` when the two are identical."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from the target's {t.shape}")
    return psnr_from_mse(float(np.mean((p - t) ** 2)), data_range)


def best_gaussian_blur(noisy: np.ndarray, clean: np.ndarray,
                       grid: Sequence[float] = DEFAULT_BLUR_GRID) -> dict[str, Any]:
    """The blur width of ``grid`` giving the best PSNR against ``clean`` (an oracle choice).

    Returns ``{"blur_sigma", "psnr", "image", "grid": {width: psnr}, "at_grid_edge"}``; ``at_grid_edge`` is true when
    the best width is the smallest or largest of the grid (the true optimum may then lie outside it).
    """
    if len(grid) == 0:
        raise InputError("the blur grid is empty; give at least one blur width in pixels, e.g. (0.5, 1, 2)")
    widths = sorted({float(w) for w in grid})
    outs = [gaussian_blur(noisy, w) for w in widths]
    scores = [psnr(np.clip(out, 0.0, 1.0), clean) for out in outs]
    i = int(np.argmax(scores))
    return {"blur_sigma": widths[i], "psnr": scores[i], "image": outs[i], "grid": dict(zip(widths, scores)),
            "at_grid_edge": len(widths) > 1 and i in (0, len(widths) - 1)}
