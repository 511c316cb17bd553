"""Weights -> checked ONNX artifact + manifest, behind a parity gate.

Order of work: load weights, write the graph, onnx.checker (full check, with shape inference), run it in ONNX
Runtime on a fixed batch against the PyTorch model, and only if parity holds move the file into place and write
its manifest. A failing export leaves nothing behind (and an existing artifact at the same path untouched).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.errors import ArtifactError, InputError, ParityError
from moe_base.fileio import scratch_folder
from moe_base.manifest import base_manifest, manifest_path, sha256_file, write_artifact
from moe_base.optional import require
from moe_base.tolerances import get_tolerance
from runtime.parity import SELF_CHECK_IMAGES, ParityReport, compare, in_chunks, parity_inputs, self_check_record
from topk_attention.spec import PLUGIN_ID, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

from .onnx_export import ExportOptions, export_graph

EXPORTER = "moe-denoise onnx writer 2"
"""Recorded in every manifest; a new number whenever the graph written changes, so that a graph of an older writer is
told apart (2: the patch embedding's Reshape names the token count, which runs an empty batch in ONNX Runtime)."""


@dataclass
class ExportResult:
    """An exported model: its path, its manifest's path, the parity report and the manifest."""
    path: Path
    manifest_path: Path
    parity: ParityReport
    manifest: dict[str, Any]


def reference_outputs(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return in_chunks(lambda batch: model(torch.from_numpy(batch)).numpy(), x)


def run_parity(onnx_path: Path, model: Any, inputs: np.ndarray, threads: int | None = None,
               precision: str = "fp32") -> ParityReport:
    """Run ``onnx_path`` in ONNX Runtime (CPU) on ``inputs`` and compare with ``model``'s outputs."""
    from runtime.ort_runner import OrtRunner

    with OrtRunner(onnx_path, check_manifest=False, threads=threads) as runner:
        out = in_chunks(runner, inputs)
    return compare(reference_outputs(model, inputs), out, get_tolerance("ort", precision), "ort", precision)


def export_onnx(model: Any, out_path: str | Path, opts: ExportOptions | None = None, weights_path: str | Path | None = None,
                parity_images: int = 32, extra_inputs: np.ndarray | None = None, threads: int | None = None,
                log: Callable[[str], None] = print, overwrite: bool = True) -> ExportResult:
    """Export ``model`` (a SmallViT) to ``out_path`` and its manifest; raises ParityError without writing on failure,
    InputError when ``overwrite`` is False and a file is at ``out_path`` when the model is written (it may have
    appeared while the graph was checked: it is kept),
    MissingBackendError before any work without onnx or onnxruntime (the parity check runs the graph in it), or
    for the plugin flavour without onnxruntime-extensions."""
    onnx = require("onnx", "exporting to ONNX")
    require("onnxruntime", "the parity check that every export passes before it is kept")
    opts = opts or ExportOptions()
    if opts.flavor == "plugin":  # its plugin nodes run in ONNX Runtime through a Python op of the extensions
        require("onnxruntime_extensions", "the parity check of a plugin-flavour export (its plugin nodes run as a "
                                          "Python op in ONNX Runtime)")
    opts.validate()  # before the first step is announced
    out_path = Path(out_path)
    t0 = time.perf_counter()
    log(f"[1/4] writing the {opts.flavor} graph ({'optimised' if opts.active_rewrites else 'not optimised'}, "
        f"{opts.precision}, opset {opts.opset})")
    graph = export_graph(model, opts)
    proto = graph.proto
    for note in graph.notes:
        log(f"      note: {note}")
    log("[2/4] onnx.checker (full check with shape inference)")
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()

    inputs = parity_inputs(parity_images)
    if extra_inputs is not None:
        inputs = np.concatenate([inputs, extra_inputs.astype(np.float32)])
    log(f"[3/4] parity gate: ONNX Runtime vs PyTorch on {len(inputs)} images")
    with scratch_folder("moe-denoise-export") as tmp:  # the graph under test: nothing is left beside the output
        candidate = Path(tmp) / out_path.name
        try:
            candidate.write_bytes(data)
        except OSError as e:  # a full or size-limited temporary folder: a traceback, as if a bug
            raise InputError(f"cannot write the graph under test ({len(data) / 2**20:.1f} MiB) to the temporary folder "
                             f"'{tmp}' ({e.strerror or e}); free space there or set TMPDIR to a folder that has it "
                             f"(nothing was written to {out_path})") from e
        try:
            report = run_parity(candidate, model, inputs, threads, opts.precision)
        except ArtifactError as e:  # it said 're-export it with moe-denoise export', from inside that export
            import onnxruntime

            raise ArtifactError(f"ONNX Runtime {onnxruntime.__version__} cannot load the exported graph (opset "
                                f"{opts.opset}), so it cannot pass the parity check; nothing was written to {out_path}. "
                                f"ONNX Runtime said: {str(e.__cause__ or e)[:500]}. Export with a lower --opset (17, the "
                                f"default, loads in every supported ONNX Runtime) or upgrade onnxruntime") from e
    if not report.passed:
        raise ParityError(f"refusing to write {out_path}: {report.headline('the exported graph')}\n"
                          f"{report.summary()}", report)

    log(f"[4/4] writing {out_path} and {manifest_path(out_path).name}")
    manifest = build_manifest(model, out_path, data, proto, opts, report, weights_path, graph.notes)
    mpath = write_artifact(out_path, data, manifest, overwrite)
    psnr = "inf" if report.psnr == float("inf") else f"{report.psnr:.1f}"
    log(f"done in {time.perf_counter() - t0:.1f}s: parity max abs {report.max_abs:.2e}, "
        f"p99 {report.p99_abs:.2e}, PSNR vs PyTorch {psnr} dB")
    return ExportResult(out_path, mpath, report, manifest)


def build_manifest(model: Any, out_path: Path, data: bytes, proto: Any, opts: ExportOptions, report: ParityReport,
                   weights_path: str | Path | None, notes: list[str]) -> dict[str, Any]:
    """The manifest of an exported model: model config and weights hash, graph facts and notes, plugin nodes,
    I/O, tolerance and parity, the self-check record, library versions."""
    from moe_base.contract import tile_shape
    from moe_base.machine import library_versions
    from moe_model.model import count_parameters

    plugin_nodes = [n.name for n in proto.graph.node if n.op_type == PLUGIN_NAME and n.domain == PLUGIN_NAMESPACE]
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]  # "batch", or the fixed size of a static graph
    shape = [batch.dim_param or batch.dim_value, *tile_shape(model.config)]
    io = {"inputs": [{"name": opts.input_name, "shape": shape, "dtype": "float32"}],
          "outputs": [{"name": opts.output_name, "shape": shape, "dtype": "float32"}]}
    m = base_manifest("onnx", out_path, data)
    m.update({
        "model": {"config": model.config.to_dict(), "parameters": count_parameters(model),
                  # absolute: a path relative to the export's folder was not found from others (parity, build and
                  # denoise, run elsewhere, then took the file for gone and the model for another's)
                  "weights_file": str(Path(weights_path).absolute()) if weights_path else None,
                  "weights_sha256": sha256_file(weights_path) if weights_path else None},
        "onnx": {"flavor": opts.flavor, "optimized": bool(opts.active_rewrites), "opset": opts.opset,
                 "ir_version": proto.ir_version, "rewrites": list(opts.active_rewrites), "notes": list(notes),
                 "nodes": len(proto.graph.node),
                 "op_types": sorted({n.op_type for n in proto.graph.node})},
        "plugin": ({"id": PLUGIN_ID, "name": PLUGIN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION,
                    "nodes": plugin_nodes} if plugin_nodes else None),
        "precision": opts.precision,
        "io": io,
        "tolerance": report.tolerance.to_dict(),
        "parity": report.to_dict(),
        "self_check": self_check_record(reference_outputs(model, parity_inputs(SELF_CHECK_IMAGES))),
        "versions": {"exporter": EXPORTER, **library_versions(("torch", "onnx", "onnxruntime"))},
    })
    return m
