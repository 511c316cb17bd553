"""Serving: the denoiser behind a real NVIDIA Triton Inference Server, its client, and Triton model repositories.

The layer above ``runtime``: a Triton server started from Python with PyTriton (``serving.server``), the two models
it serves (``serving.models``: tiles with dynamic batching, and whole photos tiled in the server), a client
(``serving.client``), the libpython fix for Triton's Python backend stub (``serving.backend_env``) and the writer of
a standard model repository for a full Triton deployment (``serving.repo``). Nothing imports this package except
the command line.

``import serving`` needs numpy only; PyTriton and tritonclient (``pip install 'moe-denoise[serve]'``) are imported
when a server starts or a client is made, and a missing one is a MissingBackendError naming that extra.
"""
from .config import IMAGE_INPUTS, IMAGE_MODEL, IMAGE_OUTPUTS, TILE_MODEL, ServeConfig, free_port

__all__ = ["IMAGE_INPUTS", "IMAGE_MODEL", "IMAGE_OUTPUTS", "TILE_MODEL", "ServeConfig", "free_port", "DenoiseServer",
           "DenoiseClient"]


def __getattr__(name: str):  # lazy, so that importing the package stays light
    if name == "DenoiseServer":
        from .server import DenoiseServer

        return DenoiseServer
    if name == "DenoiseClient":
        from .client import DenoiseClient

        return DenoiseClient
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
