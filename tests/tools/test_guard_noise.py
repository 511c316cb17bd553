"""tools/guard_noise.py: the two noises it compares are what its text says."""
import numpy as np

from tools.guard_noise import noisy_versions


def test_white_and_camera_like_noise():
    clean = np.linspace(0.1, 0.9, 64 * 80, dtype=np.float32).reshape(64, 80)
    versions = noisy_versions(clean, "camera", 10)
    white, white_rms = versions["white"]
    camera, camera_rms = versions["camera"]
    assert white.shape == camera.shape == clean.shape and white_rms == 10 / 255
    std = np.sqrt((10 / 255) ** 2 / 0.5 * clean + (0.5 / 255) ** 2)
    assert camera_rms == np.sqrt(np.mean(std ** 2))
    dark, bright = clean < 0.3, clean > 0.7  # the camera-like noise grows with brightness; the white one does not
    assert np.std((camera - clean)[bright]) > 1.5 * np.std((camera - clean)[dark])
    assert np.std((white - clean)[bright]) < 1.2 * np.std((white - clean)[dark])
