"""Image-quality metrics: PSNR (torch) and SSIM (scikit-image, optional extra), both with data_range 1."""
from __future__ import annotations

import numpy as np
import torch

from moe_base.optional import require


def psnr_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (B,) PSNR in dB."""
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def ssim_per_image(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor,
                   data_range: float = 1.0) -> np.ndarray:
    """(B, C, H, W) -> (B,) SSIM via skimage.metrics.structural_similarity (Gaussian-free 7x7 default window)."""
    structural_similarity = require("skimage.metrics", "SSIM").structural_similarity
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return np.array([structural_similarity(t[i], p[i], channel_axis=0, data_range=data_range)
                     for i in range(len(p))])
