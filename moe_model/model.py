"""SmallViT: the adaptive sparse-attention MoE denoiser for 32x32 RGB tiles."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from moe_base.config import PRESETS, ModelConfig, get_preset
from moe_base.errors import InputError

from .attention import Impl, available_impls
from .layers import Block


class SmallViT(nn.Module):
    """Conv patch embedding -> learned positions -> MoE blocks -> transposed-conv un-embedding -> clamp.

    ``forward(x)`` returns the denoised images; ``forward(x, return_routing=True)`` also returns each
    block's routing probabilities (B, N, E) with their autograd graph (for the load-balance loss).
    The routing of the last forward pass is kept, detached, in ``last_routing`` for analysis.
    """

    def __init__(self, config: ModelConfig | str = "seed", impl: Impl = "masked") -> None:
        super().__init__()
        if not isinstance(config, (str, ModelConfig)):
            raise InputError(f"config is a preset name ({', '.join(PRESETS)}) or a ModelConfig; got "
                             f"{type(config).__name__} {config!r}. Weights are loaded with "
                             f"moe_model.checkpoint.load_model(path)")
        if impl not in available_impls():  # it was taken, and failed at the first forward
            raise InputError(f"unknown attention impl {impl!r}; expected one of {available_impls()}")
        self.config = get_preset(config) if isinstance(config, str) else config
        c = self.config
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        self.patch_embed = nn.Conv2d(c.in_chans, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.blocks = nn.ModuleList(
            Block(c.dim, c.num_heads, c.expert_topk, c.router_hidden, c.ffn_hidden, impl) for _ in range(c.depth)
        )
        self.patch_unembed = nn.ConvTranspose2d(c.dim, c.out_chans, kernel_size=c.patch_size, stride=c.patch_size)
        if c.refine_channels:
            r = c.refine_channels
            self.refine = nn.Sequential(nn.Conv2d(2 * c.in_chans + c.refine_features, r, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(r, r, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(r, c.in_chans, 3, padding=1))
            nn.init.zeros_(self.refine[-1].weight)  # starts as the identity on the ViT's output
            nn.init.zeros_(self.refine[-1].bias)
        self.last_routing: list[torch.Tensor] = []
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def set_attention_impl(self, impl: Impl) -> SmallViT:
        if impl not in available_impls():
            raise InputError(f"unknown attention impl {impl!r}; expected one of {available_impls()}")
        for blk in self.blocks:
            for expert in blk.attn.experts:
                expert.impl = impl
        return self

    def positions(self, rows: int, cols: int) -> torch.Tensor:
        """The learned positions (1, rows * cols, C) of a rows x cols grid of patches: the table itself at the size
        it was trained for (``image_size / patch_size`` a side), else the table resized bilinearly. The resized
        view adds no parameters, but the network never saw it: fine-tune before trusting it (tools.photo_finetune
        ``--view``); the shipped pipeline feeds the trained size only."""
        side = self.config.image_size // self.config.patch_size
        if (rows, cols) == (side, side):
            return self.pos_embed
        grid = self.pos_embed.transpose(1, 2).reshape(1, self.config.dim, side, side)
        grid = F.interpolate(grid, size=(rows, cols), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def check_input(self, x: Any) -> None:
        """InputError unless ``x`` is a floating-point tensor (B, in_chans, H, W) with H and W whole multiples of the
        patch size (torch's own errors named the bias's dtype, or 'expected 3 channels, but got 32')."""
        c, p = self.config.in_chans, self.config.patch_size
        if not isinstance(x, torch.Tensor):
            raise InputError(f"the model takes a torch tensor (B, {c}, H, W); got {type(x).__name__} (a numpy array: "
                             f"torch.from_numpy(x), or a runtime runner, which takes numpy)")
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % p or x.shape[3] % p or min(x.shape[2:]) < p:
            hint = (f" (channels last? x.permute(0, 3, 1, 2) gives {tuple(x.permute(0, 3, 1, 2).shape)})"
                    if x.ndim == 4 and x.shape[3] == c and x.shape[1] != c else "")
            raise InputError(f"the model takes a tensor (B, {c}, H, W) with H and W multiples of {p}; got shape "
                             f"{tuple(x.shape)}{hint}")
        if not x.is_floating_point():
            raise InputError(f"the model takes floating-point pixels on [0, 1]; got {x.dtype} (x.float() / 255 for "
                             f"8-bit values)")
        if x.dtype == torch.float64 and self.pos_embed.dtype != torch.float64:
            raise InputError(f"the model's weights are {self.pos_embed.dtype} and the input float64: pass x.float()")

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        self.check_input(x)
        b, _, h, w = x.shape
        p = self.config.patch_size
        t = self.patch_embed(x)  # (B, C, H/p, W/p)
        t = t.flatten(2).transpose(1, 2) + self.positions(t.shape[2], t.shape[3])  # (B, N, C)
        routing = []
        for blk in self.blocks:
            t, probs = blk(t)
            routing.append(probs)
        self.last_routing = [r.detach() for r in routing]
        t = t.transpose(1, 2).reshape(b, self.config.dim, h // p, w // p)  # (B, C, H/p, W/p)
        y = self.patch_unembed(t)  # (B, 3 + F, H, W): the noise estimate (residual) or the image, + features
        if self.config.refine_channels:
            y, feats = y[:, : x.shape[1]], y[:, x.shape[1] :]
            y = y + self.refine(torch.cat([x, y, feats], dim=1))
        out = torch.clamp(x - y if self.config.residual else y, 0.0, 1.0)
        return (out, routing) if return_routing else out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
