"""The operator's definition and reference implementations (DESIGN.md section 3), as the model computes them.

They live with the model (``moe_model.attention``: training, evaluation and the parity reference use them, and the
model package sits below this one); every other implementation here is checked against ``sparse_topk_attention``
with ``impl="masked"``.
"""
from moe_model.attention import (
                                 IMPLS,
                                 available_impls,
                                 dense_attention,
                                 kth_largest,
                                 register_impl,
                                 sparse_topk_attention,
)

__all__ = ["IMPLS", "available_impls", "dense_attention", "kth_largest", "register_impl", "sparse_topk_attention"]
