"""Training losses: reconstruction MSE and the router's load-balancing auxiliary loss."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def load_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """KL(u || q) / E for one block, the seed's definition.

    probs: routing probabilities (B, N, E). q = probs averaged over batch and tokens; u uniform over the E
    experts. Equals ``F.kl_div(q.log(), u, reduction="batchmean")`` on the length-E vector.
    """
    q = probs.reshape(-1, probs.shape[-1]).mean(dim=0)  # (E,)
    u = torch.full_like(q, 1.0 / q.numel())
    return F.kl_div(q.clamp_min(1e-12).log(), u, reduction="batchmean")


def total_loss(output: torch.Tensor, clean: torch.Tensor, routing: Sequence[torch.Tensor],
               aux_weight: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MSE + aux_weight x sum over blocks of the load-balance loss. Returns (total, mse, aux)."""
    mse = F.mse_loss(output, clean)
    aux = torch.stack([load_balance_loss(p) for p in routing]).sum() if routing else output.new_zeros(())
    return mse + aux_weight * aux, mse, aux


def psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else 10.0 * math.log10(1.0 / mse)
