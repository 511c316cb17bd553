"""The adaptive sparse-attention MoE denoiser (torch only)."""
from moe_base.config import PRESETS, ModelConfig, get_preset

from .attention import dense_attention, sparse_topk_attention
from .model import SmallViT, count_parameters

__all__ = ["ModelConfig", "PRESETS", "get_preset", "SmallViT", "count_parameters", "sparse_topk_attention",
           "dense_attention"]
