"""Identity of the sparse top-k attention plugin, shared by the ONNX graph, the TensorRT plugin and manifests."""
from __future__ import annotations

PLUGIN_NAME = "SparseTopKAttention"
PLUGIN_NAMESPACE = "moe_denoise"
PLUGIN_VERSION = "1"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
# The ONNX node: op_type = PLUGIN_NAME, domain = PLUGIN_NAMESPACE, attributes below.
# inputs q, k, v: (B, H, N, d) with the 1/sqrt(d) scale already applied to q when ``scale`` == 1.0.
# output: (B, H, N, d).
MAX_TOKENS = 1024  # the kernel keeps a whole row of scores in registers
