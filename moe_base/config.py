"""Model configuration: a dataclass with named presets, saved next to the weights."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .errors import InputError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the MoE denoiser. A checkpoint's JSON carries one of these so it rebuilds its model."""

    image_size: int = 32
    in_chans: int = 3
    patch_size: int = 4
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    expert_topk: tuple[int, ...] = (32, 64, 128)
    router_hidden: int = 64
    ffn_hidden: int = 256
    # residual=True: the network predicts the noise and the output is clamp(x - f(x)); False: clamp(f(x)).
    residual: bool = False
    # refine_channels > 0: a small full-resolution conv head (3 layers of 3x3 convs on [input, network output])
    # refines the ViT's per-patch prediction across patch borders; its last layer starts at zero.
    refine_channels: int = 0
    # refine_features > 0: the un-embedding also emits this many feature maps that only the refinement head reads
    refine_features: int = 0
    name: str = "custom"

    def __post_init__(self) -> None:
        problems = []
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            problems.append(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.refine_channels < 0 or self.refine_features < 0:
            problems.append(f"refine_channels and refine_features must be >= 0, got {self.refine_channels}, "
                            f"{self.refine_features}")
        if self.refine_features and not self.refine_channels:
            problems.append("refine_features needs a refinement head (refine_channels > 0)")
        if not self.expert_topk or any(int(k) < 1 for k in self.expert_topk):
            problems.append(f"expert_topk must be a non-empty list of positive ints, got {self.expert_topk}")
        if problems:
            raise InputError("invalid ModelConfig: " + "; ".join(problems))
        object.__setattr__(self, "expert_topk", tuple(int(k) for k in self.expert_topk))

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def out_chans(self) -> int:
        """Channels the un-embedding produces: the image (or noise) plus the refinement features."""
        return self.in_chans + self.refine_features

    @property
    def num_experts(self) -> int:
        return len(self.expert_topk)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["expert_topk"] = list(self.expert_topk)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """A config read from JSON (a sidecar, a manifest): InputError naming every field of the wrong kind. A
        hand-edited or damaged value ("dim": "x", "patch_size": 0, "config": "abc") ended in a TypeError or
        ZeroDivisionError traceback, or in "unknown ModelConfig fields ['a', 'b', 'c']"."""
        if not isinstance(d, dict):
            raise InputError(f"a model config is a JSON object of its fields, got {type(d).__name__} {d!r:.80}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown ModelConfig fields {unknown}; known fields: {sorted(known)}")
        bad = []
        for name, value in d.items():
            if name == "residual":
                ok = isinstance(value, bool)
            elif name == "name":
                ok = isinstance(value, str)
            elif name == "expert_topk":
                ok = isinstance(value, (list, tuple)) and all(_whole(k, 1) for k in value)
            else:  # sizes and counts: whole numbers, >= 1 except the optional refinement head's
                ok = _whole(value, 0 if name.startswith("refine_") else 1)
            if not ok:
                bad.append(f"{name} {value!r}")
        if bad:
            raise InputError(f"invalid ModelConfig: {', '.join(bad)} (expected whole numbers >= 1 for sizes, >= 0 "
                             f"for refine_channels / refine_features, a list of them for expert_topk, true/false for "
                             f"residual, text for name)")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _whole(value: Any, lo: int) -> bool:
    """``value`` is a whole number >= ``lo`` (a JSON true/false is not one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


PRESETS: dict[str, ModelConfig] = {
    # Exactly the seed project's published architecture (loads ../shared/reference/seed_checkpoint.pt).
    "seed": ModelConfig(name="seed"),
    # Same network and parameter count, trained to predict the noise (residual learning).
    "residual": ModelConfig(name="residual", residual=True),
    # Residual learning plus a 24-channel conv refinement head (+7.2k parameters, +14.6 MFLOP per image).
    "residual_refine": ModelConfig(name="residual_refine", residual=True, refine_channels=24),
    # ... and the un-embedding hands the head 8 transformer feature maps at full resolution (+18.1k parameters).
    "residual_refine_feat": ModelConfig(name="residual_refine_feat", residual=True, refine_channels=24,
                                        refine_features=8),
    # ... with a 40-channel head (+11.7k parameters, 636.7k in all; the head's 18.1 -> 42.0 MFLOP per image, 22%
    # more for the whole network): grown from the above
    # by warm start (new channels start silent, so training starts from the smaller model's function).
    "residual_refine_wide": ModelConfig(name="residual_refine_wide", residual=True, refine_channels=40,
                                        refine_features=8),
}


def get_preset(name: str) -> ModelConfig:
    """The named architecture preset; InputError listing the presets for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; available presets: {', '.join(sorted(PRESETS))}") from None
