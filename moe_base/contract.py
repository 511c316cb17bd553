"""The model's I/O contract, shared by the exporter, every runner and the server: tensor names and tile shape.

A model takes a batch of noisy tiles, float32 [B, C, H, W] in [0, 1], and returns the denoised tiles in the same
shape. C, H and W come from the model's config (``in_chans``, ``image_size``); every shipped preset uses RGB
32 x 32 tiles, which is ``TILE_SHAPE``.
"""
from typing import Any

from .config import ModelConfig

INPUT_NAME = "noisy"
OUTPUT_NAME = "denoised"


def tile_shape(config: ModelConfig | dict[str, Any] | None = None) -> tuple[int, int, int]:
    """(C, H, W) of one tile for ``config`` (a ModelConfig, its dict as stored in manifests, or the default)."""
    if config is None:
        config = ModelConfig()
    elif isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    return (config.in_chans, config.image_size, config.image_size)


TILE_SHAPE = tile_shape()
