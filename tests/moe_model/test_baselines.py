"""The classic baselines: Gaussian blur (with the oracle width search) and BM3D."""
import sys

import numpy as np
import pytest

from moe_model.baselines import (
    DEFAULT_BLUR_GRID,
    best_gaussian_blur,
    bm3d_available,
    bm3d_batch,
    bm3d_denoise,
    gaussian_blur,
    psnr,
)

needs_bm3d = pytest.mark.skipif(not bm3d_available(), reason="the 'bm3d' package is not installed "
                                                             "(pip install 'moe-denoise[eval]')")


def smooth(h=48, w=40, colour=True, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    chans = [0.5 + 0.4 * np.sin(0.15 * xx + 0.1 * yy + rng.uniform(0, 6)) for _ in range(3 if colour else 1)]
    img = np.stack(chans, axis=-1) if colour else chans[0]
    return img.astype(np.float32)


def test_psnr_known_values():
    a = np.zeros((4, 4))
    assert psnr(a, a) == np.inf
    assert psnr(a + 0.1, a) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((3, 4)))


def test_blur_keeps_a_constant_image_and_mixes_no_channels():
    flat = np.full((20, 30, 3), 0.25)
    np.testing.assert_allclose(gaussian_blur(flat, 2.0), flat, atol=1e-12)
    img = np.zeros((20, 20, 3))
    img[:, :, 1] = 1.0
    out = gaussian_blur(img, 1.5)
    assert out[:, :, 0].max() == 0 and np.allclose(out[:, :, 1], 1.0)
    with pytest.raises(ValueError, match="HxWx3"):
        gaussian_blur(np.zeros((5, 5, 4)), 1.0)
    with pytest.raises(ValueError, match="positive"):
        gaussian_blur(img, 0.0)


def test_best_blur_beats_the_noisy_input_and_reports_its_grid():
    clean = smooth(colour=False)
    noisy = np.clip(clean + 0.2 * np.random.default_rng(1).standard_normal(clean.shape), 0, 1)
    best = best_gaussian_blur(noisy, clean)
    assert best["psnr"] > psnr(noisy, clean) + 6  # a smooth image: blurring removes most of the noise
    assert set(best["grid"]) == set(DEFAULT_BLUR_GRID) and best["psnr"] == max(best["grid"].values())
    assert best["blur_sigma"] >= 1.0  # heavy noise on a smooth image wants a wide blur
    narrow = best_gaussian_blur(clean, clean, grid=(0.5, 3.0))  # no noise: the narrowest wins, at the grid's edge
    assert narrow["blur_sigma"] == 0.5 and narrow["at_grid_edge"]
    with pytest.raises(ValueError, match="empty"):
        best_gaussian_blur(noisy, clean, grid=())


@needs_bm3d
@pytest.mark.parametrize("colour", [False, True])
def test_bm3d_denoises_gray_and_colour(colour):
    clean = smooth(colour=colour)
    noisy = clean + (25 / 255) * np.random.default_rng(2).standard_normal(clean.shape)
    out = bm3d_denoise(noisy, 25 / 255)
    assert out.shape == clean.shape
    assert psnr(out, clean) > psnr(noisy, clean) + 5


@needs_bm3d
def test_bm3d_batch_is_clipped_as_the_models_are():
    """The models' outputs are clamped to [0, 1]; BM3D's overshoot it on unclipped noise near black and white, and
    scored unclipped it lost up to 0.04 dB to that clamp alone. The batch (the CIFAR-10 path) clips them."""
    clean = np.clip(smooth(32, 32) * 1.6 - 0.3, 0, 1).transpose(2, 0, 1)[None]  # large areas at 0 and at 1
    noisy = clean + (50 / 255) * np.random.default_rng(4).standard_normal(clean.shape)
    raw = bm3d_denoise(noisy[0].transpose(1, 2, 0), 50 / 255).transpose(2, 0, 1)
    assert raw.min() < 0 or raw.max() > 1  # what BM3D gives
    out = bm3d_batch(noisy, 50 / 255)
    np.testing.assert_allclose(out[0], np.clip(raw, 0, 1), atol=1e-5)
    assert psnr(out[0], clean[0]) > psnr(raw, clean[0])


def test_bm3d_rejects_bad_input_before_running():
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        bm3d_denoise(smooth(), -0.1)
    with pytest.raises(ValueError, match="HxW"):
        bm3d_denoise(np.zeros((4, 4, 2)), 0.1)


def test_missing_bm3d_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d now raises ImportError
    assert not bm3d_available()
    with pytest.raises(ImportError, match=r"moe-denoise\[eval\].*--bm3d-images 0"):
        bm3d_denoise(smooth(), 0.1)
