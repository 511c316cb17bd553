"""Subcommands of ``moe-denoise``; shared argument helpers."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DATA_DIR = "../shared/data/cifar-10-batches-py"


def add_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", type=Path, default=None,
                   help="weights (.safetensors with its .json, or a PyTorch state dict .pt); default: the shipped "
                        "weights in weights/moe_denoiser.safetensors")
    p.add_argument("--preset", default=None,
                   help="architecture preset for weights without a JSON sidecar (e.g. 'seed' for the seed "
                        "checkpoint); default: read from the sidecar")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR),
                   help=f"the CIFAR-10 'cifar-10-batches-py' folder (default: {DEFAULT_DATA_DIR})")


def resolve_weights(path: Path | None) -> Path:
    if path is not None:
        return path
    from weights import DEFAULT_WEIGHTS

    if not DEFAULT_WEIGHTS.is_file():
        raise FileNotFoundError(f"the shipped weights {DEFAULT_WEIGHTS} are missing from this install; "
                                f"pass --weights PATH or reinstall the package")
    return DEFAULT_WEIGHTS


def load_model_from_args(args: argparse.Namespace, impl: str = "masked"):
    from moe_model.checkpoint import load_model

    return load_model(resolve_weights(args.weights), preset=args.preset, impl=impl)
