"""The shipped trained weights (``moe_denoiser.safetensors``) and their sidecar JSON (config, metrics)."""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = WEIGHTS_DIR / "moe_denoiser.safetensors"
