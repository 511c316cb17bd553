"""tools/guard_noise.py: the two noises it compares are what its text says."""
import numpy as np
import pytest

from tools.guard_noise import noisy_versions


def test_white_and_camera_like_noise():
    """The camera-like noise's stated rms is the noise the photo carries, measured (over 80k pixels its estimate is
    within about 0.3 %; 1 % allowed), and mid-gray gets the named std; the noise grows with brightness, the white
    noise's does not."""
    clean = np.linspace(0.1, 0.9, 256 * 320, dtype=np.float32).reshape(256, 320)
    versions = noisy_versions(clean, "camera", 10)
    white, white_rms = versions["white"]
    camera, camera_rms = versions["camera"]
    assert white.shape == camera.shape == clean.shape and white_rms == 10 / 255
    noise = camera.astype(np.float64) - clean
    assert np.sqrt(np.mean(noise ** 2)) == pytest.approx(camera_rms, rel=0.01)
    mid = np.abs(clean - 0.5) < 0.05
    assert np.std(noise[mid]) == pytest.approx(10 / 255, rel=0.05)
    dark, bright = clean < 0.3, clean > 0.7  # the camera-like noise grows with brightness; the white one does not
    assert np.std((camera - clean)[bright]) > 1.5 * np.std((camera - clean)[dark])
    assert np.std((white - clean)[bright]) < 1.2 * np.std((white - clean)[dark])


def test_jpeg_versions_are_the_white_noise_photo_compressed():
    clean = np.linspace(0.1, 0.9, 64 * 80, dtype=np.float32).reshape(64, 80)
    versions = noisy_versions(clean, "camera", 10, jpeg=(90, 50))
    white = versions["white"][0]
    for quality in (90, 50):
        decoded, rms = versions[f"jpeg{quality}"]
        assert decoded.shape == clean.shape and rms == 10 / 255
        assert 0 < np.abs(decoded - white).mean() < 10 / 255  # the same photo, with JPEG's losses
    assert np.abs(versions["jpeg50"][0] - white).mean() > np.abs(versions["jpeg90"][0] - white).mean()


def test_bayer_version_is_demosaicked_raw_noise():
    from tools.guard_noise import bayer_version, demosaicked

    flat = np.full((32, 40, 3), 0.5)
    np.testing.assert_allclose(demosaicked(flat)[1:-1, 1:-1], 0.5)  # bilinear demosaicing keeps a flat colour
    rng = np.random.default_rng(3)
    clean = np.clip(0.5 + 0.1 * rng.standard_normal((64, 80, 3)), 0, 1)
    noisy, rms, reference = bayer_version(clean, "coffee", 10)
    np.testing.assert_allclose(reference, np.clip(demosaicked(clean), 0, 1), atol=1e-6)
    noise = (noisy - reference).astype(np.float64)
    assert 0.4 * 10 / 255 < rms < 0.9 * 10 / 255  # spread over neighbours: below the raw std
    g = noise[:, :, 1]
    assert np.corrcoef(g[:, :-1].ravel(), g[:, 1:].ravel())[0, 1] > 0.2  # neighbours share it: correlated noise
