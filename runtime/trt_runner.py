"""The TensorRT backend: runs a serialized engine built by ``moe-denoise build``.

Device buffers and the stream are torch CUDA tensors (torch is already a dependency); execution is
asynchronous (``execute_async_v3``) with one synchronisation per call. With ``cuda_graph=True`` one enqueue is
captured as a CUDA graph per batch bucket and replayed, through the same bucket layer as the PyTorch runner
(``runtime.cuda_graphs``: a batch padded up to its bucket and trimmed after, each graph checked against a plain
enqueue before its first use; buckets default to the powers of two inside the engine's profile).

Before anything is deserialized the engine file is checked against its manifest (size, hash) and the manifest
against this machine (TensorRT version, GPU compute capability), and each failure has its own error: no
TensorRT (MissingBackendError), no GPU (NoGPUError), corrupt/truncated file (ArtifactError), engine for another
TensorRT/GPU (ArtifactMismatchError), plugin not registered (PluginMissingError).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.contract import TILE_SHAPE
from moe_base.errors import ArtifactError, InputError, NoGPUError, PluginMissingError
from moe_base.machine import cuda_device
from moe_base.manifest import check_equal, make_it, read_checked_data
from moe_base.optional import require
from moe_base.tolerances import get_tolerance

from .base import BaseRunner, made_from
from .cuda_graphs import BucketedGraphs, capture_cuda_graph, check_buckets, check_input, default_buckets, parity_check
from .parity import self_check


class TensorRTRunner(BaseRunner):
    """Runs a TensorRT engine built by ``moe-denoise build`` (the sparse top-k attention as its plugin) on a GPU.

    The engine's manifest is checked against this machine (TensorRT version, GPU) before it is loaded
    (``check_manifest``); ``cuda_graph`` replays captured CUDA graphs per batch-size bucket. Needs TensorRT and a
    CUDA GPU: a MissingBackendError says what is missing."""

    backend = "trt"

    def __init__(self, engine: str | Path, device: int = 0, cuda_graph: bool = False, check_manifest: bool = True,
                 name: str | None = None, max_batch: int | None = None,
                 graph_buckets: list[int] | tuple[int, ...] | None = None, verify_outputs: bool = True) -> None:
        """``verify_outputs``: as for :class:`runtime.ort_runner.OrtRunner` (the manifest's self-check)."""
        super().__init__(name=name or "trt", max_batch=max_batch)
        self.engine_path = Path(engine)
        self.device, self.cuda_graph, self.check_manifest = device, cuda_graph, check_manifest
        self.verify_outputs = verify_outputs
        self.graph_buckets = None if graph_buckets is None else check_buckets(graph_buckets)
        self.manifest: dict[str, Any] | None = None
        self.engine = self.context = self.stream = None
        self.graphs: BucketedGraphs | None = None
        # One execution context holds the tensor addresses of one call at a time: calls from several threads
        # (one runner shared by them) take turns, from setting the addresses to reading the output back.
        self._lock = threading.Lock()

    # -- activation -------------------------------------------------------------------------------------
    def _activate_impl(self) -> None:
        if self.engine_path.is_dir():
            raise ArtifactError(f"TensorRT engine {self.engine_path} is a folder; pass the .engine file (e.g. "
                                f"{self.engine_path / 'moe_denoiser.plugin.fp32.engine'}, what 'moe-denoise build' "
                                f"writes)")
        if not self.engine_path.is_file():
            raise ArtifactError(f"TensorRT engine {self.engine_path} does not exist; {make_it(self.engine_path)}")
        data = None
        if self.check_manifest:  # truncated / replaced files stop here; the bytes checked are the bytes loaded
            self.manifest, data = read_checked_data(self.engine_path, kind="trt-engine")
            self.precision = self.manifest.get("precision", self.precision)
        torch = require("torch", "the TensorRT backend (device buffers)")
        if not torch.cuda.is_available():  # said first, as build says it: installing TensorRT would not help here
            from moe_base.optional import available

            missing = "" if available("tensorrt")[0] else "; TensorRT is not installed here either"
            raise NoGPUError(f"the TensorRT backend needs an NVIDIA GPU, but torch {torch.__version__} sees none "
                             f"(CUDA build: {torch.version.cuda}){missing}; run on a GPU machine or use --backend ort")
        trt = require("tensorrt", "the TensorRT backend")
        gpu = cuda_device(self.device)
        if self.manifest:
            built = self.manifest.get("tensorrt", {})
            check_equal("TensorRT version", built.get("version"), trt.__version__,
                        "Engines are tied to the TensorRT version that built them: rebuild with 'moe-denoise build'")
            check_equal("GPU compute capability", built.get("compute_capability"), gpu["compute_capability"],
                        f"The engine was built on {built.get('gpu')}; this is {gpu['name']}: rebuild it here")
        self._trt, self._torch, self.gpu = trt, torch, gpu
        torch.cuda.set_device(self.device)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        if data is None:
            data = self.engine_path.read_bytes()
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(data)
        if self.engine is None:
            plugin = (self.manifest or {}).get("plugin")
            if plugin and not self._plugin_registered(trt, plugin):
                raise PluginMissingError(f"{self.engine_path} uses the plugin {plugin['id']} (version "
                                         f"{plugin['version']}), which is not registered in this process and is "
                                         f"not embedded as an AOT kernel; rebuild the engine with 'moe-denoise build' "
                                         f"(the build embeds the AOT kernel), or call "
                                         f"topk_attention.trt_plugin.register_plugin() in this process before "
                                         f"loading it (importing that module registers nothing)")
            raise ArtifactError(f"TensorRT could not deserialize {self.engine_path} ({len(data)} bytes): the file is "
                                f"corrupt, truncated, or not a TensorRT {trt.__version__} engine; rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"{self.engine_path} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile_batch = (int(lo[0]), int(hi[0]))
        self.min_batch = int(lo[0])  # fewer tiles are padded up to it (BaseRunner.infer), as Triton sends any batch
        self.max_batch = min(self.max_batch or hi[0], int(hi[0]))  # larger batches are chunked
        self.stream = torch.cuda.Stream(self.device)
        if self.cuda_graph:
            self.graphs = self._bucketed_graphs()
        if self.manifest:  # the engine computes the model its manifest names (not merely a file that matches it)
            tol = self.manifest.get("tolerance") or {}
            self_check(self._infer_impl, self.manifest.get("self_check"), 5 * float(tol.get("atol", 1e-4)),
                       str(self.engine_path), compare=self.verify_outputs)

    @staticmethod
    def _plugin_registered(trt: Any, plugin: dict[str, Any]) -> bool:
        creator = trt.get_plugin_registry().get_creator(plugin["name"], plugin["version"], plugin["namespace"])
        return creator is not None

    def _deactivate_impl(self) -> None:
        self.graphs = None
        self.context = self.engine = self.stream = None

    # -- inference --------------------------------------------------------------------------------------
    def _buffers(self, batch: int) -> tuple[Any, Any]:
        torch = self._torch
        shape = (batch, *TILE_SHAPE)
        x = torch.empty(shape, dtype=torch.float32, device=f"cuda:{self.device}")
        y = torch.empty(shape, dtype=torch.float32, device=f"cuda:{self.device}")
        return x, y

    def _enqueue(self, x: Any, y: Any, stream: Any) -> None:
        ctx = self.context
        ctx.set_input_shape(self.input_name, tuple(x.shape))
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, y.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT failed to enqueue {self.engine_path} for batch {x.shape[0]}")

    def _infer_impl(self, x: np.ndarray) -> np.ndarray:
        batch = len(x)
        lo, hi = self.profile_batch
        if batch < lo:
            raise InputError(f"batch {batch} is below the engine's profile minimum {lo}; rebuild with --min-batch")
        torch = self._torch
        with self._lock, torch.cuda.stream(self.stream):
            if self.graphs is not None:  # host rows into the bucket's static input, its output rows back
                out = self.graphs.run(torch.from_numpy(x), out=torch.empty(x.shape, dtype=torch.float32))
            else:
                xb, yb = self._buffers(batch)
                xb.copy_(torch.from_numpy(x))
                self._enqueue(xb, yb, self.stream)
                out = yb.cpu()
            self.stream.synchronize()
        return out.numpy()

    def device_call(self, x: Any, y: Any) -> None:
        """Compute-only path for benchmarks: x, y are CUDA tensors already on the device; no host copies.

        The engine is enqueued on the caller's current CUDA stream, like a torch operation: it starts after the
        work that produced ``x`` there, and CUDA events recorded on that stream around the call time the engine
        itself (on a stream of its own, events would time only the enqueue, and ``x`` could be read unfinished).
        """
        import torch

        with self._lock:  # the context's addresses, as in _infer_impl
            self._enqueue(x, y, torch.cuda.current_stream(x.device))

    def device_callable(self, x: np.ndarray) -> Callable[[], Any] | None:
        """``device_call`` on CUDA copies of ``x`` made once (output buffer allocated once); None when the batch is
        outside the engine's optimisation profile (``runner(x)`` chunks such batches, a device call cannot)."""
        lo, hi = self.profile_batch
        if not lo <= len(x) <= hi:
            return None
        torch = self._torch
        xd = torch.from_numpy(np.ascontiguousarray(x)).to(f"cuda:{self.device}")
        yd = torch.empty_like(xd)
        return lambda: self.device_call(xd, yd)

    def _bucketed_graphs(self) -> BucketedGraphs:
        """The bucket layer over this engine: one captured enqueue per bucket, on the runner's stream, each checked
        against a plain enqueue of the same batch before its first use (ParityError if it differs)."""
        torch = self._torch
        lo, _ = self.profile_batch
        buckets = (check_buckets(self.graph_buckets, min_batch=lo, max_batch=self.max_batch, option="graph_buckets")
                   if self.graph_buckets is not None else default_buckets(self.max_batch, min_batch=lo))

        def capture(bucket: int) -> Any:
            xb, yb = self._buffers(bucket)

            def enqueue(x: Any) -> Any:  # TensorRT needs one regular enqueue before capture: the warm-up is one
                self._enqueue(x, yb, torch.cuda.current_stream(x.device))
                return yb

            return capture_cuda_graph(enqueue, xb, stream=self.stream, warmup=1)

        def plain(x: Any) -> Any:
            y = torch.empty_like(x)
            self._enqueue(x, y, torch.cuda.current_stream(x.device))
            return y

        check = parity_check(plain, lambda b: torch.from_numpy(check_input(b)).to(f"cuda:{self.device}"),
                             get_tolerance("trt", self.precision), self.name)
        return BucketedGraphs(capture, buckets, check=check)

    @property
    def on_gpu(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "engine": str(self.engine_path), "cuda_graph": self.cuda_graph,
             **made_from(self.manifest)}
        if self.engine is not None:
            d.update(tensorrt=self._trt.__version__, gpu=self.gpu, profile_batch=self.profile_batch)
        if self.graphs is not None:
            d.update(self.graphs.describe())
        return d
