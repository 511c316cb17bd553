"""The ONNX Runtime backend: CPU by default; CUDA / TensorRT execution providers chosen explicitly."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.contract import tile_shape
from moe_base.errors import ArtifactError, InputError, MissingBackendError, signals_held
from moe_base.machine import too_many_threads
from moe_base.manifest import make_it, read_checked_data
from moe_base.optional import require

from .base import BaseRunner, made_from
from .parity import self_check

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
OPT_LEVELS = ("disable", "basic", "extended", "all")


def session_options(ort: Any, threads: int | None = None, opt_level: str = "all") -> Any:
    """The SessionOptions every ONNX Runtime session here uses (OrtRunner and the rewrites A/B alike)."""
    so = ort.SessionOptions()
    # Worker threads keep spinning inside a run (low latency) but stop when it returns: an idle session must not
    # burn the cores other work needs (with several sessions alive, as in the benchmark, it slowed the timed one).
    so.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    return so


PLUGIN_REFERENCE_NOTE = ("the plugin graph's sparse attention runs as the Python reference op here (about 5x "
                         "slower: it checks the graph TensorRT will see; for speed use the portable graph)")


PLUGIN_CHUNK = 64
"""Tiles per ONNX Runtime call of a plugin graph (its Python op about 4 ms a tile on a CPU): how long a Ctrl-C waits."""


class OrtRunner(BaseRunner):
    """Runs an exported ONNX model. The requested provider must be the one that runs: no silent CPU fallback."""

    backend = "ort"

    def __init__(self, model: str | Path, provider: str = "cpu", threads: int | None = None,
                 opt_level: str = "all", check_manifest: bool = True, device_id: int = 0,
                 io_binding: bool | None = None, name: str | None = None, max_batch: int | None = None,
                 verify_outputs: bool = True) -> None:
        """``verify_outputs``: run the manifest's self-check at activation (a model whose outputs are not those the
        manifest recorded is refused, ArtifactMismatchError); a parity check, which compares every output, turns it
        off to report such a model as failing, with its numbers."""
        if not isinstance(model, (str, os.PathLike)) or not str(model):  # None: a TypeError from Path
            raise InputError(f"model= is the path of an exported .onnx file (what 'moe-denoise export' writes); got "
                             f"{type(model).__name__} {model!r}")
        if provider not in PROVIDERS:
            raise InputError(f"unknown ONNX Runtime provider {provider!r}; expected one of {sorted(PROVIDERS)}")
        if opt_level not in OPT_LEVELS:
            raise InputError(f"unknown graph optimisation level {opt_level!r}; expected one of {OPT_LEVELS}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer))
                                    or threads < 0):
            raise InputError(f"threads= is a whole number >= 0 (0 or None: onnxruntime's default); got {threads!r}")
        problem = too_many_threads(threads)  # 100,000 ran for minutes on 2 tiles
        if problem:
            raise InputError(f"threads={threads}: {problem}")
        super().__init__(name=name or f"ort-{provider}", max_batch=max_batch)
        self.model_path = Path(model)
        self.provider, self.threads, self.opt_level = provider, None if threads is None else int(threads), opt_level
        self.check_manifest, self.device_id, self.verify_outputs = check_manifest, device_id, verify_outputs
        self.io_binding = (provider != "cpu") if io_binding is None else io_binding
        self.manifest: dict[str, Any] | None = None
        self.session = None
        self.fixed_batch: int | None = None
        self.plugin_reference = False  # a plugin graph, whose sparse attention runs as the Python reference op

    def _activate_impl(self) -> None:
        ort = require("onnxruntime", "the ONNX Runtime backend")
        if self.model_path.is_dir():
            raise ArtifactError(f"ONNX model {self.model_path} is a folder; pass the .onnx file (e.g. "
                                f"{self.model_path / 'moe_denoiser.portable.onnx'}, what 'moe-denoise export' writes)")
        if not self.model_path.is_file():
            raise ArtifactError(f"ONNX model {self.model_path} does not exist; {make_it(self.model_path)}")
        if self.check_manifest:  # the bytes checked are the bytes loaded: an export may replace the file meanwhile
            self.manifest, data = read_checked_data(self.model_path, kind="onnx")
            self.precision = self.manifest.get("precision", self.precision)
        else:
            data = self.model_path.read_bytes()
        wanted = PROVIDERS[self.provider]
        have = ort.get_available_providers()
        if wanted not in have:
            hint = ("install onnxruntime-gpu (pip uninstall onnxruntime && pip install onnxruntime-gpu) on a machine "
                    "with an NVIDIA GPU and CUDA" if self.provider != "cpu" else "reinstall onnxruntime")
            raise MissingBackendError(f"ONNX Runtime provider {wanted} was asked for but this onnxruntime "
                                      f"{ort.__version__} offers only {have}; {hint}")
        so = session_options(ort, self.threads, self.opt_level)
        onnx = require("onnx", "loading ONNX models")
        try:
            proto = onnx.load_model_from_string(data)
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(proto, str(self.model_path.parent))  # none in ours; another tool's may have
        except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
            raise ArtifactError(f"{self.model_path} is not a readable ONNX model ({e}); re-export it") from e
        self._check_io(proto)
        from topk_attention.ort_op import has_plugin_nodes, register_reference_op, relabel_for_ort

        self.plugin_reference = has_plugin_nodes(proto)
        if self.plugin_reference:
            so.register_custom_ops_library(register_reference_op())
            proto = relabel_for_ort(proto)
        opts = [{"device_id": self.device_id}] if self.provider != "cpu" else [{}]
        try:
            self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=[wanted],
                                                provider_options=opts)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors: an inconsistent or unsupported graph
            raise ArtifactError(f"ONNX Runtime cannot load {self.model_path}: {str(e)[:500]}; re-export it with "
                                f"'moe-denoise export'") from e
        running = self.session.get_providers()
        if running[0] != wanted:
            raise MissingBackendError(f"asked for {wanted} but ONNX Runtime is running {running}; refusing to fall "
                                      f"back silently. Check the CUDA / TensorRT libraries onnxruntime needs")
        self._ort = ort
        if self.manifest:
            tol = self.manifest.get("tolerance") or {}
            self_check(self._infer_padded, self.manifest.get("self_check"), 5 * float(tol.get("atol", 1e-4)),
                       str(self.model_path), compare=self.verify_outputs)

    def _check_io(self, proto: Any) -> None:
        """One input and one output, float32 [batch, C, H, W] each, as the model's I/O contract and the manifest
        say; a fixed batch size is kept (batches are then chunked and the last chunk padded)."""
        inits = {i.name for i in proto.graph.initializer}
        inputs = [v for v in proto.graph.input if v.name not in inits]
        outputs = list(proto.graph.output)

        def describe(v: Any) -> tuple[str, int, list[Any]]:
            t = v.type.tensor_type
            return (v.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim])

        model_config = ((self.manifest or {}).get("model") or {}).get("config")
        tile = list(tile_shape(model_config))
        expected = f"one input and one output, float32 [batch, {', '.join(map(str, tile))}]"
        if len(inputs) != 1 or len(outputs) != 1:
            found = {"inputs": [describe(v) for v in inputs], "outputs": [describe(v) for v in outputs]}
            raise ArtifactError(f"{self.model_path} has {found}; expected {expected}. It is not a model exported by "
                                f"'moe-denoise export'")
        io = (self.manifest or {}).get("io") or {}
        for kind, v in (("inputs", inputs[0]), ("outputs", outputs[0])):
            name, elem, dims = describe(v)
            named = (io.get(kind) or [{}])[0].get("name")
            if elem != 1 or len(dims) != 4 or dims[1:] != tile or (named and named != name):  # 1: TensorProto.FLOAT
                raise ArtifactError(f"{self.model_path} has {kind[:-1]} {name!r} of element type {elem} and shape "
                                    f"{dims}; expected {expected}" + (f", named {named!r} as its manifest says"
                                                                      if named else "") + "; re-export it")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        batch = describe(inputs[0])[2][0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        if self.fixed_batch is not None:
            self.max_batch = min(self.max_batch or self.fixed_batch, self.fixed_batch)

    def _infer_padded(self, x: np.ndarray) -> np.ndarray:
        """``x`` in chunks the graph accepts (its fixed batch, the last chunk padded), outputs trimmed."""
        step = self.fixed_batch or len(x)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self._run(np.ascontiguousarray(chunk, dtype=np.float32))[:n])
        return np.concatenate(outs)

    def _deactivate_impl(self) -> None:
        self.session = None

    def _infer_impl(self, x: np.ndarray) -> np.ndarray:
        return self._infer_padded(x) if self.fixed_batch else self._run(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.plugin_reference:  # the plugin nodes run as a Python op, called from inside ONNX Runtime's C++:
            # Ctrl-C / SIGTERM raised in it aborted the process (SIGABRT, temporaries left), so each call holds them;
            # in chunks (a fixed-batch graph: its batch), so that a stop waits for one chunk, not a whole large batch
            step = len(x) if self.fixed_batch else PLUGIN_CHUNK
            outs = []
            for i in range(0, len(x), step):
                with signals_held():  # a stop held here is raised between chunks
                    outs.append(self._run_session(x[i:i + step]))
            return outs[0] if len(outs) == 1 else np.concatenate(outs)
        return self._run_session(x)

    def _run_session(self, x: np.ndarray) -> np.ndarray:
        if not self.io_binding:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, x)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def device_callable(self, x: np.ndarray) -> Callable[[], Any] | None:
        """On a GPU provider: ``x`` bound on the device once (I/O binding), the output bound there too. None for a
        plugin graph: its attention runs as a Python op on the host (no device-only call to time), and a Ctrl-C
        inside it must be held (see :meth:`_run`), which a bare session call does not do."""
        if self.provider == "cpu" or self.session is None or self.plugin_reference:
            return None
        value = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x), "cuda", self.device_id)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, value)
        binding.bind_output(self.output_name, "cuda", self.device_id)
        return lambda: self.session.run_with_iobinding(binding)

    @property
    def on_gpu(self) -> bool:
        return self.provider != "cpu"

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "model": str(self.model_path), "provider": self.provider, "threads": self.threads,
             "opt_level": self.opt_level, **made_from(self.manifest)}
        if self.session is not None:
            d["providers_running"] = self.session.get_providers()
        if self.plugin_reference:
            d["plugin_nodes"] = PLUGIN_REFERENCE_NOTE
        return d
