"""Layers of the adaptive sparse-attention MoE ViT. Names match the seed's state dict exactly."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import Impl, sparse_topk_attention


class TokenRouter(nn.Module):
    """Per-token routing probabilities over the experts: MLP dim -> hidden -> E, softmax."""

    def __init__(self, dim: int, hidden: int, num_experts: int) -> None:
        super().__init__()
        self.routing_net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, E)
        return F.softmax(self.routing_net(x), dim=-1)


class SparseAttentionExpert(nn.Module):
    """Multi-head attention that keeps only the top-k keys per query."""

    def __init__(self, dim: int, num_heads: int, topk: int, impl: Impl = "masked") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.topk = topk
        self.impl: Impl = impl
        self.W_q = nn.Linear(dim, dim)
        self.W_k = nn.Linear(dim, dim)
        self.W_v = nn.Linear(dim, dim)
        self.W_out = nn.Linear(dim, dim)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, H, N, d)
        b, n, c = t.shape
        return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, N, C)
        b, n, c = x.shape
        q, k, v = self._heads(self.W_q(x)), self._heads(self.W_k(x)), self._heads(self.W_v(x))
        o = sparse_topk_attention(q, k, v, self.topk, impl=self.impl)  # (B, H, N, d)
        return self.W_out(o.transpose(1, 2).reshape(b, n, c))


class AdaptiveAttentionMoE(nn.Module):
    """A router mixes sparse-attention experts token by token; merge_proj follows the mix."""

    def __init__(self, dim: int, num_heads: int, expert_topk: tuple[int, ...], router_hidden: int,
                 impl: Impl = "masked") -> None:
        super().__init__()
        self.router = TokenRouter(dim, router_hidden, len(expert_topk))
        self.experts = nn.ModuleList(SparseAttentionExpert(dim, num_heads, k, impl) for k in expert_topk)
        self.merge_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, C) -> (output (B, N, C), routing probabilities (B, N, E))."""
        probs = self.router(x)  # (B, N, E)
        mixed = sum(probs[..., e : e + 1] * expert(x) for e, expert in enumerate(self.experts))
        return self.merge_proj(mixed), probs


class Block(nn.Module):
    """Pre-norm transformer block: x + MoE-attention(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, expert_topk: tuple[int, ...], router_hidden: int,
                 ffn_hidden: int, impl: Impl = "masked") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = AdaptiveAttentionMoE(dim, num_heads, expert_topk, router_hidden, impl)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_hidden), nn.GELU(), nn.Linear(ffn_hidden, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, probs = self.attn(self.norm1(x))
        x = x + a
        x = x + self.ffn(self.norm2(x))
        return x, probs
