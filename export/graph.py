"""A small helper for writing ONNX graphs by hand: named initializers, nodes, value infos."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from moe_base.optional import require


class GraphBuilder:
    """Writes an ONNX graph by hand: unique names, initializers, nodes, declared value infos, the model proto."""
    def __init__(self, opset: int, name: str = "graph") -> None:
        require("onnx", "writing an ONNX graph")  # fail early, naming the extra to install

        self.opset = opset
        self.name = name
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.domains: dict[str, int] = {}
        self.value_infos: list[Any] = []
        self._names: set[str] = set()

    def _unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, name: str, value: np.ndarray | Sequence[Any], dtype: Any = None) -> str:
        """Add an initializer and return its name."""
        from onnx import numpy_helper

        arr = np.asarray(value, dtype=dtype)
        uname = self._unique(name)
        self.initializers.append(numpy_helper.from_array(arr, uname))
        return uname

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.asarray(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, outputs: int = 1,
           domain: str = "", **attrs: Any) -> Any:
        """Add a node; returns its output name (or a list when ``outputs`` > 1)."""
        from onnx import helper

        base = name or op_type.lower()
        out_names = [self._unique(base if outputs == 1 else f"{base}_out{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names, name=self._unique(f"{base}_node"),
                                           domain=domain or None, **attrs))
        if domain:
            self.domains.setdefault(domain, 1)
        return out_names[0] if outputs == 1 else out_names

    def info(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        """Declare a value's type and shape (for outputs of custom-domain nodes, which shape inference cannot see
        through)."""
        from onnx import helper

        self.value_infos.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def model(self, inputs: list[Any], outputs: list[Any], doc: str = "", producer_version: str = "") -> Any:
        from onnx import helper

        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.initializers, doc_string=doc,
                                  value_info=self.value_infos)
        opsets = [helper.make_opsetid("", self.opset)] + [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="moe-denoise",
                                  producer_version=producer_version)
        # readable by onnxruntime >= 1.17 and TensorRT 10; yet never below what the opset needs (opset 21 came with IR
        # 10: a 21 graph at IR 9 is one the ONNX spec does not have, which onnx.checker does not notice)
        needed = helper.find_min_ir_version_for(opsets[:1], ignore_unknown=True)
        model.ir_version = max(min(model.ir_version, 9), needed)
        return model
