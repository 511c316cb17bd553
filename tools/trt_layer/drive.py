"""Drive our TensorRT plugin through TensorRT's own plugin layer as the ONNX parser and the builder do.

Runs in a process where ``import tensorrt`` is the stand-in core and ``tensorrt.plugin`` the real layer from
a bindings wheel (``fetch.environment``); the tests start it in a subprocess per check, since the layer keeps
process-wide registries. Steps, each as TensorRT performs them (onnx-tensorrt: ``ModelImporter.cpp`` sends an
op type with no builtin importer to ``FallbackPluginImporter``; ``onnxOpImporters.cpp`` looks the creator up
by (op type, ``plugin_version``, ``plugin_namespace``) and ``loadFields`` turns the attributes named in the
creator's field list, in that order, into fields, INT -> kINT32, FLOAT -> kFLOAT32; ``importerUtils.cpp``
``createPlugin`` asks for kSTRICT_AOT when the node has ``aot=1``):

  1. register the plugin (``topk_attention.trt_plugin.register_plugin``);
  2. for each plugin node of our plugin graph (fp32 and fp16): look up the creator, build the fields, create the
     plugin in the build phase with the node's AOT request;
  3. output types for the graph's input types, output shapes for a symbolic batch;
  4. the supported type / format combinations; ``configure_plugin`` with the graph's types; the valid tactics;
  5. the launch parameters and the extra kernel arguments (``get_launch_params``) and the kernel
     (``get_kernel``), evaluated for concrete batch sizes.

The JSON record it prints is what ``tools/gpu_check.py --launch-record`` launches on a GPU.

    python -m tools.trt_layer.drive --version 11.4.0.106 --target cuda:90 -o build/trt_launch_record.json
"""
import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

from tools import run_tool

REPO = Path(__file__).resolve().parents[2]
BATCHES = (1, 8, 64, 4096)


def _plugin_module(path: str | None) -> Any:
    """Our plugin module, or a copy of it at ``path`` (the tests' mutants), imported inside topk_attention."""
    if path is None:
        import topk_attention.trt_plugin as mod

        return mod
    spec = importlib.util.spec_from_file_location("topk_attention._trt_plugin_variant", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def plugin_nodes(precision: str) -> tuple[list[Any], dict[str, Any]]:
    """The plugin nodes of the shipped model's plugin graph and the graph's value types / shapes."""
    import onnx

    from export.onnx_export import ExportOptions, build_onnx
    from moe_model.checkpoint import load_model
    from topk_attention.spec import PLUGIN_NAMESPACE
    from weights import DEFAULT_WEIGHTS

    proto = build_onnx(load_model(DEFAULT_WEIGHTS), ExportOptions(flavor="plugin", precision=precision))
    proto = onnx.shape_inference.infer_shapes(proto)
    infos = {v.name: v for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    return [n for n in proto.graph.node if n.domain == PLUGIN_NAMESPACE], infos


def _onnx_attr(node: Any, name: str) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def fields_for(trt: Any, np: Any, creator: Any, node: Any) -> tuple[list[Any], list[str]]:
    """``loadFields``: the creator's field names, in its order, taken from the node's attributes."""
    import onnx

    fields, missing = [], []
    for f in creator.field_names:
        a = _onnx_attr(node, f.name)
        if a is None:
            missing.append(f.name)  # the parser warns and leaves it out
            continue
        if a.type == onnx.AttributeProto.INT:
            fields.append(trt.PluginField(f.name, np.array([a.i], dtype=np.int32), trt.PluginFieldType.INT32))
        elif a.type == onnx.AttributeProto.FLOAT:
            fields.append(trt.PluginField(f.name, np.array([a.f], dtype=np.float32), trt.PluginFieldType.FLOAT32))
        elif a.type == onnx.AttributeProto.STRING:
            fields.append(trt.PluginField(f.name, np.frombuffer(a.s, dtype=np.int8), trt.PluginFieldType.CHAR))
        else:
            raise ValueError(f"attribute {f.name} of type {a.type} is not one the parser turns into a field here")
    return fields, missing


def _dims(shape: Any) -> list[Any]:
    return [d.dim_param or d.dim_value for d in shape.dim]


def drive(target: str, plugin_path: str | None = None) -> dict[str, Any]:
    import numpy as np
    import onnx
    import tensorrt as trt
    import tensorrt.plugin  # noqa: F401 - the real layer under test

    from topk_attention.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    record: dict[str, Any] = {"tensorrt_plugin_layer": trt.__version__, "numpy": np.__version__, "target": target,
                              "plugin": {"name": PLUGIN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION}}
    mod = _plugin_module(plugin_path)
    registry = trt.get_plugin_registry()
    record["registered_on_import"] = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is not None
    mod.register_plugin(target)
    kernels: dict[str, Any] = {}
    nodes_out = []
    for precision in ("fp32", "fp16"):
        nodes, infos = plugin_nodes(precision)
        for node in nodes:
            version = _onnx_attr(node, "plugin_version")
            namespace = _onnx_attr(node, "plugin_namespace")
            version = version.s.decode() if version is not None else "1"
            namespace = namespace.s.decode() if namespace is not None else ""
            creator = registry.get_creator(node.op_type, version, namespace)
            if creator is None:
                raise LookupError(f"no creator registered for ({node.op_type}, {version}, {namespace})")
            fields, missing = fields_for(trt, np, creator, node)
            aot = _onnx_attr(node, "aot")
            request = (trt.QuickPluginCreationRequest.UNKNOWN if aot is None else
                       trt.QuickPluginCreationRequest.STRICT_AOT if aot.i else trt.QuickPluginCreationRequest.STRICT_JIT)
            plugin = creator.create_plugin(node.op_type, namespace, trt.PluginFieldCollection(fields),
                                           trt.TensorRTPhase.BUILD, request)
            elem = [infos[name].type.tensor_type.elem_type for name in node.input]
            shapes = [_dims(infos[name].type.tensor_type.shape) for name in node.input]
            in_types = [trt.float16 if t == onnx.TensorProto.FLOAT16 else trt.float32 for t in elem]
            out_types = plugin.get_output_data_types(in_types, [len(s) for s in shapes])

            builder = trt.IExprBuilder()
            batch = trt._symbol("batch")
            in_exprs = [trt.DimsExprs([batch if isinstance(d, str) else builder.constant(d) for d in s])
                        for s in shapes]
            out_exprs = plugin.get_output_shapes(in_exprs, [], builder)
            out_shape = [("batch" if not e.is_constant() else e.get_constant_value()) for e in out_exprs[0]]

            def dyn(shape: list[Any], dtype: Any) -> Any:
                d = trt.DynamicPluginTensorDesc()
                d.desc.dims = trt.Dims([-1 if isinstance(x, str) else x for x in shape])
                d.desc.type, d.desc.format = dtype, trt.TensorFormat.LINEAR
                d.min = trt.Dims([1 if isinstance(x, str) else x for x in shape])
                d.opt = trt.Dims([64 if isinstance(x, str) else x for x in shape])
                d.max = trt.Dims([4096 if isinstance(x, str) else x for x in shape])
                return d

            in_out = [dyn(s, t) for s, t in zip(shapes, in_types)] + [dyn(out_shape, out_types[0])]
            combos = plugin.get_supported_format_combinations(in_out, len(node.input))
            width = len(in_out)
            combinations = [[(c.type.name, c.format.name) for c in combos[i:i + width]]
                            for i in range(0, len(combos), width)]
            wanted = [(t.name, "LINEAR") for t in in_types + [out_types[0]]]
            if wanted not in combinations:
                raise ValueError(f"the plugin does not offer the graph's types {wanted}; it offers {combinations}")
            built = plugin.clone()  # the builder configures and queries a clone
            built.configure_plugin(in_out[:-1], in_out[-1:])
            tactics = built.get_valid_tactics()
            built.set_tactic(tactics[0] if tactics else 0)
            params, sym = trt.KernelLaunchParams(), trt.ISymExprs()
            built.get_launch_params(in_exprs, in_out, len(node.input), params, sym, builder)
            name, ptx = built.get_kernel([d.desc for d in in_out[:-1]], [in_out[-1].desc])

            def value(e: Any, b: int) -> int:
                return trt._evaluate(e.expr, {"batch": b})

            launch = {}
            for b in BATCHES:
                launch[str(b)] = {
                    "grid": [value(getattr(params, f"grid_{a}"), b) for a in "xyz"],
                    "block": [value(getattr(params, f"block_{a}"), b) for a in "xyz"],
                    "shared_mem": value(params.shared_mem, b),
                    "extras": [{"dtype": sym[i].dtype.name, "value": value(sym[i], b)} for i in range(len(sym))]}
            ptx_text = ptx.decode() if isinstance(ptx, bytes) else ptx
            key = hashlib.sha256(ptx_text.encode()).hexdigest()
            kernels[key] = ptx_text
            nodes_out.append({
                "node": node.name, "precision": precision, "op_type": node.op_type, "domain": node.domain,
                "creator": {"version": version, "namespace": namespace,
                            "fields": [[f.name, f.type.name] for f in creator.field_names]},
                "fields": [[f.name, f.type.name, f.data.tolist()] for f in fields], "missing_fields": missing,
                "request": request.name, "input_shapes": shapes, "input_types": [t.name for t in in_types],
                "output_types": [t.name for t in out_types], "output_shape": out_shape,
                "combinations": combinations, "tactics": list(tactics), "kernel_name": name.decode()
                if isinstance(name, bytes) else name, "ptx_sha256": key, "launch": launch})
    record["nodes"] = nodes_out
    record["kernels"] = kernels
    return record


def create_only(plugin_path: str | None = None) -> dict[str, Any]:
    """Steps 1-2 and the output types only, with the fields the parser makes of our graph's attributes
    (``topk`` INT -> int32, ``scale`` FLOAT -> float32): needs nothing but NumPy, so it can run under another
    NumPy than the test environment's (the attribute conversion of TensorRT 10.9-11.1 depends on it)."""
    import numpy as np
    import tensorrt as trt
    import tensorrt.plugin  # noqa: F401 - the real layer under test

    from topk_attention.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    mod = _plugin_module(plugin_path)
    mod.register_plugin("cuda:90")
    creator = trt.get_plugin_registry().get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    values = {"topk": (np.array([32], dtype=np.int32), trt.PluginFieldType.INT32),
              "scale": (np.array([1.0], dtype=np.float32), trt.PluginFieldType.FLOAT32)}
    fields = [trt.PluginField(f.name, *values[f.name]) for f in creator.field_names]
    plugin = creator.create_plugin(PLUGIN_NAME, PLUGIN_NAMESPACE, trt.PluginFieldCollection(fields),
                                   trt.TensorRTPhase.BUILD, trt.QuickPluginCreationRequest.STRICT_AOT)
    types = plugin.get_output_data_types([trt.float32] * 3, [4, 4, 4])
    return {"tensorrt_plugin_layer": trt.__version__, "numpy": np.__version__, "output_types": [t.name for t in types]}


def run_in_layer(version: str, args: list[str], timeout: int = 900, python: str | None = None) -> dict[str, Any]:
    """Run this driver in a subprocess over the real plugin layer of ``version`` (with another interpreter if
    given); returns its JSON report."""
    from .fetch import environment

    res = subprocess.run([python or sys.executable, "-m", "tools.trt_layer.drive", *args], cwd=REPO,
                         env=environment(version, REPO), capture_output=True, text=True, timeout=timeout, check=False)
    lines = res.stdout.strip().splitlines()
    try:
        report = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        report = {}
    report.setdefault("ok", False)
    report["returncode"] = res.returncode
    report["stderr_tail"] = res.stderr[-4000:]
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="cuda:90", help="GPU the AOT kernel is built for")
    p.add_argument("--plugin-module", default=None, help="a copy of topk_attention/trt_plugin.py to drive instead")
    p.add_argument("--version", default=None,
                   help="run in a subprocess over this TensorRT version's real plugin layer (fetched if needed); "
                        "without it, this process must already have the stand-in and the layer on its path")
    p.add_argument("--create-only", action="store_true",
                   help="registration, creation and output types only (needs nothing but NumPy)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="write the record here (JSON) and print a one-line summary instead of the record")
    args = p.parse_args(argv)
    if args.version:
        inner = (["--target", args.target] + (["--plugin-module", args.plugin_module] if args.plugin_module else [])
                 + (["--create-only"] if args.create_only else []))
        report = run_in_layer(args.version, inner)
    else:
        try:
            report = {"ok": True, **(create_only(args.plugin_module) if args.create_only
                                     else drive(args.target, args.plugin_module))}
        except Exception as e:  # noqa: BLE001 - the report carries the failure; the tests read it
            report = {"ok": False, "error_type": type(e).__name__, "error": str(e),
                      "traceback": traceback.format_exc(limit=8)}
    if args.output and report.get("ok"):
        from moe_base.fileio import atomic_write

        atomic_write(args.output, json.dumps(report, indent=1, sort_keys=True).encode())
        print(f"ok: wrote the launch record to {args.output}")
    else:  # the record itself (run_in_layer reads it from here), or the failure
        print(json.dumps(report, sort_keys=True))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    run_tool(main)
