"""Weights on disk: safetensors + a JSON sidecar (config, training settings, metrics), written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from moe_base.config import ModelConfig, get_preset
from moe_base.errors import CheckpointError
from moe_base.fileio import atomic_write, atomic_write_json, sha256_file

from .model import SmallViT


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: SmallViT, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """``path`` (.safetensors) + ``path.json`` with the model config and ``meta``."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save(tensors, metadata={"format": "pt"}))
    sidecar = {"config": model.config.to_dict(), "sha256": sha256_file(path), **(meta or {})}
    atomic_write_json(sidecar_path(path), sidecar)


def origin(path: str | Path) -> dict[str, Any]:
    """Where weights came from: their hash, and (from their JSON) the training that made them and its own origin,
    so a warm-started run's JSON carries the whole chain of commands that reproduces it."""
    side = read_sidecar(path) or {}
    out: dict[str, Any] = {"path": str(path), "sha256": sha256_file(path)}
    if "training" in side:
        out["training"] = {k: side["training"][k] for k in ("command", "settings", "epoch") if k in side["training"]}
    if "init_from" in side.get("training", {}):
        out["init_from"] = side["training"]["init_from"]
    return out


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist; pass a .safetensors file written by "
                              f"'moe-denoise train' or a PyTorch state dict (.pt)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise CheckpointError(f"could not read weights {path}: {e}") from e
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]  # a training-state checkpoint
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} holds a {type(sd).__name__}, expected a state dict")
    return sd


def read_sidecar(path: str | Path) -> dict[str, Any] | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"sidecar {side} is not valid JSON: {e}") from e


def load_model(path: str | Path, preset: str | None = None, impl: str = "masked") -> SmallViT:
    """Rebuild a model from weights. The config comes from ``preset`` if given, else the JSON sidecar, else 'seed'."""
    sd = load_state_dict(path)
    if preset is not None:
        config = get_preset(preset)
    else:
        side = read_sidecar(path)
        config = ModelConfig.from_dict(side["config"]) if side and "config" in side else get_preset("seed")
    model = SmallViT(config, impl=impl)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights {path} do not fit the '{config.name}' architecture: {e}") from e
    return model.eval()
