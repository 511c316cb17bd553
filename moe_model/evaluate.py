"""Evaluation on a CIFAR-10 split: per-image PSNR and SSIM (data_range 1), mean +- std, both noise protocols."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .data import DEFAULT_EVAL_SEED, DEFAULT_SIGMA, PROTOCOLS, fixed_noisy
from .metrics import psnr_per_image, ssim_per_image


@torch.no_grad()
def denoise_batched(model: torch.nn.Module, noisy: torch.Tensor, batch_size: int = 256,
                    progress: bool = False, desc: str = "denoise") -> torch.Tensor:
    device = next(model.parameters()).device
    outs = []
    starts = range(0, len(noisy), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for i in starts:
        outs.append(model(noisy[i : i + batch_size].to(device)).cpu())
    return torch.cat(outs)


def _stats(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(np.min(values)),
            "max": float(np.max(values))}


def evaluate_model(model: torch.nn.Module, clean: torch.Tensor, sigma: float = DEFAULT_SIGMA,
                   protocols: Sequence[str] = PROTOCOLS, eval_seed: int = DEFAULT_EVAL_SEED,
                   batch_size: int = 256, with_ssim: bool = True, progress: bool = False) -> dict[str, Any]:
    """Score ``model`` on clean images (N, 3, H, W) in [0, 1]. Returns per protocol the noisy-input and model rows.

    Std is the population std over images (numpy's default), the same convention as the seed's report.
    """
    model.eval()
    result: dict[str, Any] = {"num_images": len(clean), "sigma": sigma, "eval_seed": eval_seed, "protocols": {}}
    for protocol in protocols:
        noisy = fixed_noisy(clean, sigma, protocol, eval_seed)
        den = denoise_batched(model, noisy, batch_size, progress, desc=f"evaluate ({protocol})")
        rows = {}
        for name, pred in (("noisy input", noisy), ("model", den)):
            row = {"psnr": _stats(psnr_per_image(pred, clean).numpy())}
            if with_ssim:
                row["ssim"] = _stats(ssim_per_image(pred.numpy(), clean.numpy()))
            rows[name] = row
        result["protocols"][protocol] = rows
    return result


def format_table(result: dict[str, Any], label: str = "model") -> str:
    lines = [f"{result['num_images']} images, sigma {result['sigma']}, eval seed {result['eval_seed']}",
             f"{'protocol':<10} {'row':<14} {'PSNR (dB)':>16} {'SSIM':>16}"]
    for protocol, rows in result["protocols"].items():
        for name, row in rows.items():
            p = row["psnr"]
            s = row.get("ssim")
            ssim = f"{s['mean']:.3f} +- {s['std']:.3f}" if s else "-"
            lines.append(f"{protocol:<10} {label if name == 'model' else name:<14} "
                         f"{p['mean']:>7.2f} +- {p['std']:<5.2f} {ssim:>16}")
    return "\n".join(lines)
