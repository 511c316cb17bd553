"""Evaluation on a tiny fixture: an identity 'denoiser' scores exactly the noisy input."""
import math

import numpy as np
import pytest
import torch

from moe_model.data import load_cifar10, to_float
from moe_model.evaluate import evaluate_model, format_table
from moe_model.metrics import psnr_per_image, ssim_per_image


class Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x


def test_psnr_known_value():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    np.testing.assert_allclose(psnr_per_image(a, b).numpy(), [20.0, 20.0], rtol=1e-5)


def test_ssim_identical_and_different():
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32))
    np.testing.assert_allclose(ssim_per_image(x, x), 1.0)
    assert (ssim_per_image(np.clip(x + 0.3, 0, 1), x) < 0.9).all()


def test_identity_model_scores_like_the_noisy_input(fake_cifar):
    clean = to_float(load_cifar10(fake_cifar, "test")[:8])
    r = evaluate_model(Identity(), clean, sigma=0.2, protocols=("clip", "unclipped"))
    for protocol in ("clip", "unclipped"):
        rows = r["protocols"][protocol]
        assert rows["model"] == rows["noisy input"]
        p = rows["model"]["psnr"]["mean"]
        assert 12 < p < 16, p  # sigma 0.2 -> about 14 dB
    assert r["protocols"]["unclipped"]["model"]["psnr"]["mean"] == pytest.approx(-10 * math.log10(0.04), abs=0.5)
    table = format_table(r)
    assert "noisy input" in table and "unclipped" in table
