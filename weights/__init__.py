"""The shipped trained weights and their sidecar JSON (config, sha256, the chain of training runs, metrics).

``moe_denoiser`` is the default: a blind denoiser for every noise level from 0 to 75/255, colour or gray.
``sigma20`` is the specialist for Gaussian noise of sigma 0.2 on [0, 1] pixels (the seed's protocol), kept for that
protocol. Commands take either by name (``--weights sigma20``), and so does ``runtime.TorchRunner("sigma20")``.
"""
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent
SHIPPED = {"blind": WEIGHTS_DIR / "moe_denoiser.safetensors", "sigma20": WEIGHTS_DIR / "moe_denoiser_sigma20.safetensors"}
DEFAULT_WEIGHTS = SHIPPED["blind"]
