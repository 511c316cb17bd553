"""Running the plugin-flavoured ONNX graph in ONNX Runtime, without TensorRT.

The ``SparseTopKAttention`` nodes are served by a Python custom op (onnxruntime-extensions) that calls the
reference operator (moe_model.attention). onnxruntime-extensions serves Python ops only in its own domain
(``ai.onnx.contrib``), so the graph is re-labelled in memory (op type, inputs, outputs and attributes stay as
exported, plus ``scale_repr``: see ``relabel_for_ort``); the file on disk is untouched. This proves the wiring
(node placement, tensor layouts, attributes) that TensorRT's parser will see; it is not fast.
"""
from __future__ import annotations

import threading
from typing import Any

from moe_base.errors import ArtifactError
from moe_base.optional import require

from .spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

_REGISTERED = False
_REGISTER_LOCK = threading.Lock()


def register_reference_op() -> str:
    """Register the Python implementation once; returns the path of the extensions library for SessionOptions.

    Under a lock: two runners activated at once in two threads both registered it, and every plugin-graph session of
    the process then failed ('Conflicting with a registered kernel')."""
    global _REGISTERED
    ext = require("onnxruntime_extensions", "running the plugin-flavoured graph in ONNX Runtime")
    with _REGISTER_LOCK:
        if not _REGISTERED:
            _register_op()
            _REGISTERED = True
    return ext.get_library_path()


def _register_op() -> None:
    """The Python op serving the plugin nodes (onnxruntime-extensions keeps it for the process)."""
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    @onnx_op(op_type=PLUGIN_NAME, inputs=[PyCustomOpDef.dt_float] * 3, outputs=[PyCustomOpDef.dt_float],
             attrs={"topk": PyCustomOpDef.dt_int64, "scale": PyCustomOpDef.dt_float,
                    "plugin_namespace": PyCustomOpDef.dt_string, "plugin_version": PyCustomOpDef.dt_string,
                    "aot": PyCustomOpDef.dt_int64, "scale_repr": PyCustomOpDef.dt_string})
    def _sparse_topk_attention(q, k, v, topk=0, scale=1.0, plugin_namespace="", plugin_version="", aot=0,
                               scale_repr=""):
        import numpy as np
        import torch

        from moe_model.attention import sparse_topk_attention

        # scale_repr: the node's scale exactly (the extensions hand a FLOAT attribute over with 6 digits)
        scale = float(scale_repr) if scale_repr else float(scale)
        with torch.no_grad():
            o = sparse_topk_attention(torch.from_numpy(np.ascontiguousarray(q)), torch.from_numpy(
                np.ascontiguousarray(k)), torch.from_numpy(np.ascontiguousarray(v)), int(topk), scale=scale)
        return o.numpy()


def has_plugin_nodes(model: Any) -> bool:
    """True when ``model`` (an onnx.ModelProto) holds sparse-attention plugin nodes."""
    return any(n.op_type == PLUGIN_NAME and n.domain == PLUGIN_NAMESPACE for n in model.graph.node)


_OPTIONAL_ATTRIBUTES: dict[str, Any] = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION, "aot": 0}
"""Attributes of the plugin node that TensorRT's parser does without, given to a node that lacks them (the Python
op must have each: 'Unable to find attribute' named no node); the op does not read them."""


def relabel_for_ort(model: Any) -> Any:
    """A copy of ``model`` whose plugin nodes live in onnxruntime-extensions' domain.

    The Python op is declared for fp32 tensors; a plugin node of an fp16 graph is wrapped in Casts
    (fp16 -> fp32 -> op -> fp16) in this in-memory copy only. onnxruntime-extensions hands a FLOAT attribute to the
    Python op as text with 6 significant digits (1/sqrt(32) arrived as 0.176777), so each node also gets its scale
    exactly, as the STRING attribute ``scale_repr`` (``repr`` of the float32 value), which the op reads instead.
    """
    from onnxruntime_extensions import default_opset_domain

    onnx = require("onnx")
    m = onnx.ModelProto()
    m.CopyFrom(model)
    contrib = default_opset_domain()
    types = _value_types(m)
    taken = set(types) | {name for n in m.graph.node for name in [*n.input, *n.output]}
    as_fp32: dict[str, str] = {}  # one Cast a tensor, however many plugin inputs it feeds (q = k = v, two nodes)
    nodes = []

    def fresh(name: str) -> str:
        while name in taken:
            name += "_"
        taken.add(name)
        return name

    for node in m.graph.node:
        if node.op_type == PLUGIN_NAME and node.domain == PLUGIN_NAMESPACE:
            check_plugin_node(node)
            present = {a.name for a in node.attribute}
            scale = next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "scale")
            node.attribute.append(onnx.helper.make_attribute("scale_repr", repr(scale)))
            for name, default in _OPTIONAL_ATTRIBUTES.items():  # the Python op requires each (TensorRT does not)
                if name not in present:
                    node.attribute.append(onnx.helper.make_attribute(name, default))
            node.domain = contrib
            if types.get(node.input[0]) == onnx.TensorProto.FLOAT16:
                f32 = onnx.TensorProto.FLOAT
                for i in node.input:
                    if i not in as_fp32:
                        as_fp32[i] = fresh(f"{i}__as_fp32")
                        nodes.append(onnx.helper.make_node("Cast", [i], [as_fp32[i]], to=f32))
                out = node.output[0]
                node.input[:] = [as_fp32[i] for i in node.input]
                node.output[0] = fresh(f"{out}__fp32")
                nodes += [node, onnx.helper.make_node("Cast", [node.output[0]], [out], to=onnx.TensorProto.FLOAT16)]
                continue
        nodes.append(node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    kept = [o for o in m.opset_import if o.domain not in (PLUGIN_NAMESPACE, contrib)]
    del m.opset_import[:]
    m.opset_import.extend(kept + [onnx.helper.make_opsetid(contrib, 1)])
    return m


def check_plugin_node(node: Any) -> None:
    """ArtifactError for a plugin node whose attributes the op cannot run with: an error inside the Python op ends
    the whole process (onnxruntime-extensions aborts on it), and a missing attribute is an ONNX Runtime error that
    names no node. Graphs from 'moe-denoise export' always pass; this is for graphs made or edited by hand."""
    import math

    onnx = require("onnx")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    topk, scale = attrs.get("topk"), attrs.get("scale")
    problems = []
    if len(node.input) != 3 or len(node.output) != 1:
        problems.append(f"{len(node.input)} inputs and {len(node.output)} outputs (expected q, k, v and one output)")
    if not isinstance(topk, int) or topk < 1:
        problems.append(f"topk {topk!r} (expected an INT attribute >= 1)")
    if not isinstance(scale, float) or not math.isfinite(scale):
        problems.append(f"scale {scale!r} (expected a finite FLOAT attribute)")
    if problems:
        raise ArtifactError(f"the {PLUGIN_NAME} node '{node.name}' has {'; '.join(problems)}. 'moe-denoise export "
                            f"--flavor plugin' writes these nodes; a graph made or edited by hand must match them")


def _value_types(model: Any) -> dict[str, int]:
    """Element type of every tensor whose type shape inference can tell (plugin outputs stay unknown)."""
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in infos}
