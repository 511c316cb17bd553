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


def behaviour_hash() -> str:
    """A hash of what decides the plugin's behaviour: the code of its identity, kernel, AOT recipe and TensorRT
    registration, as syntax trees without docstrings (comments and formatting are not in the tree), so editing
    words changes nothing and editing code changes the hash (and so the engine cache key)."""
    import ast
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for name in ("spec.py", "triton_kernel.py", "aot.py", "trt_plugin.py"):
        tree = ast.parse((Path(__file__).parent / name).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(name.encode() + ast.dump(tree, include_attributes=False).encode())
    return h.hexdigest()[:32]
