"""Training losses: reconstruction MSE and the router's load-balancing auxiliary loss."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from moe_base.errors import InputError


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """KL(u || q) / E for one block, the seed's definition.

    probs: routing probabilities (B, N, E). q = probs averaged over batch and tokens; u uniform over the E
    experts. Equals ``F.kl_div(q.log(), u, reduction="batchmean")`` on the length-E vector.
    """
    q = probs.reshape(-1, probs.shape[-1]).mean(dim=0)  # (E,)
    u = torch.full_like(q, 1.0 / q.numel())
    return F.kl_div(q.clamp_min(1e-12).log(), u, reduction="batchmean")


LOSSES = ("mse", "psnr")


def reconstruction_loss(output: torch.Tensor, clean: torch.Tensor, kind: str = "mse",
                        mse_floor: float = 1e-10) -> torch.Tensor:
    """``mse``: the seed's pixel MSE. ``psnr``: per-image MSE weighted by 1 / (that image's MSE), weights
    normalised to mean 1 and not differentiated: its gradient is the gradient of mean_i log(MSE_i), i.e. of the
    mean per-image PSNR the evaluation reports, at the scale of the MSE loss (so ``aux_weight`` keeps its meaning).
    ``mse_floor`` caps the weight: an image already better than -10 log10(mse_floor) dB counts as if it were at
    that level (in blind training, clean inputs would otherwise take the whole batch's gradient).
    """
    if kind == "mse":
        return F.mse_loss(output, clean)
    if kind == "psnr":
        per_image = ((output - clean) ** 2).flatten(1).mean(dim=1)  # (B,)
        w = 1.0 / per_image.detach().clamp_min(mse_floor)
        return (per_image * (w / w.mean())).mean()
    raise InputError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def total_loss(output: torch.Tensor, clean: torch.Tensor, routing: Sequence[torch.Tensor],
               aux_weight: float = 0.01, kind: str = "mse",
               mse_floor: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """reconstruction + aux_weight x sum over blocks of the load-balance loss. Returns (total, reconstruction, aux)."""
    mse = reconstruction_loss(output, clean, kind, mse_floor)
    aux = torch.stack([load_balance_loss(p) for p in routing]).sum() if routing else output.new_zeros(())
    return mse + aux_weight * aux, mse, aux
