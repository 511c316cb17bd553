"""The PyTorch backend: the eager model (masked or gather attention), optionally torch.compile'd, CPU or CUDA.

Two options for low-latency GPU inference (issue 17), each usable with every ``impl`` and with ``compile``:

- ``precision="fp16"`` / ``"bf16"``: the forward runs under ``torch.autocast`` in that dtype (``half_mode=
  "autocast"``, the default: matmuls, convolutions and attention in half precision; LayerNorm, softmax and the
  residual ``x - f(x)`` in fp32, so the input image is never rounded), or on a half-precision copy of the model
  (``half_mode="cast"``: everything in half, the output rounded to it). Inputs and outputs stay fp32 at the
  interface either way. The Triton kernel (``impl="triton"``) runs fp32 and fp16; in bf16 its op falls back to
  the reference masked attention. On a CPU both precisions work too (slowly), which is how they are tested here.
- ``cuda_graph=True``: the forward captured as a CUDA graph once per batch bucket, replayed per call
  (``runtime.cuda_graphs``: padding to the bucket, trimming, chunking beyond the largest, and each graph checked
  against the uncaptured model before its first use; a failing graph raises ParityError, or with
  ``graph_fallback=True`` that bucket runs uncaptured and ``describe()`` says so).
"""
from __future__ import annotations

import copy
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.contract import TILE_SHAPE
from moe_base.errors import ArtifactMismatchError, CheckpointError, InputError, MissingBackendError, NoGPUError
from moe_base.machine import too_many_threads
from moe_base.optional import require
from moe_base.tolerances import get_tolerance

from .base import BaseRunner
from .cuda_graphs import (
    BucketedGraphs,
    capture_cuda_graph,
    check_buckets,
    check_input,
    default_buckets,
    eager_capture,
    parity_check,
)

PRECISIONS: dict[str, str | None] = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}
_FORK: dict[str, bool] = {"ran_threaded": False, "forked_with_torch": False}
"""``ran_threaded``: this process ran the model on more than one CPU thread (PyTorch's OpenMP pool is up);
``forked_with_torch``: a child forked from a process that had imported torch, whose pool may be up (a runner ran
there, or the model outside a runner, or any torch operation): see :func:`_after_fork_in_child`."""


def _after_fork_in_child() -> None:
    """A child forked (multiprocessing's 'fork', the default on Linux before Python 3.14) after its parent ran the
    model on several threads inherits PyTorch's OpenMP pool in a state it waits on forever: a Pool's workers sat at
    0% CPU with no message. Such a child runs torch on one thread, as PyTorch's own DataLoader workers do (several
    workers share the cores anyway); 'spawn' and 'forkserver' workers start fresh and keep their threads. A child of
    a process that imported torch but ran no runner (it may have run the model or torch itself: its workers hung
    too) keeps its own threads, and its runners use one."""
    _FORK["forked_with_torch"] = "torch" in sys.modules
    if _FORK["ran_threaded"]:
        import torch  # imported in the parent already

        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_after_fork_in_child)
HALF_MODES = ("autocast", "cast")
# attention impl -> key of moe_base.tolerances (torch.compile'd models use "torch-compile")
TOLERANCE_KEYS = {"seed": "torch-seed", "gather": "torch-seed", "masked": "torch", "triton": "torch-triton"}


def resolve_weights(weights: str | Path | None, option: str = "weights") -> Path:
    """The weights file to load: a path that exists as given, the name of shipped weights ("blind", "sigma20":
    ``weights.SHIPPED``, the names the commands' ``--weights`` takes; a folder of that name here is not taken for
    the path), or None for the default (blind).
    ``option`` names the argument in the messages ("--weights" on the command line)."""
    from weights import DEFAULT_WEIGHTS, SHIPPED

    if weights is not None and Path(weights).exists() and not (Path(weights).is_dir() and str(weights) in SHIPPED):
        return Path(weights)  # a folder named like shipped weights (photos in ./blind) is no weights file: the name
    chosen = DEFAULT_WEIGHTS if weights is None else SHIPPED.get(str(weights))
    if chosen is None:
        raise CheckpointError(f"{option} {weights}: no such file, and not the name of shipped weights "
                              f"({', '.join(SHIPPED)}); pass a .safetensors or .pt file, or one of those names")
    if not chosen.is_file():
        raise CheckpointError(f"the shipped weights {chosen} are missing from this install; pass a weights file "
                              f"({option} PATH) or reinstall the package")
    return chosen


def artifact_weights(artifact: str | Path, manifest: dict[str, Any] | None, weights: str | Path | None = None,
                     option: str = "weights") -> Path:
    """The weights an ONNX model or engine is checked against: ``weights`` (a file or a shipped name), which must be
    those its manifest records (the same sha256, wherever they are on disk); or, when None, the file the manifest
    names while it still holds them, else shipped weights that are those (an artifact moved to another checkout or
    machine: the manifest names the file by its absolute path), else the default (blind). ArtifactMismatchError
    names both when they differ."""
    from moe_base.fileio import holds, sha256_file
    from weights import SHIPPED

    made = (manifest or {}).get("model") or {}
    expected, source = made.get("weights_sha256"), Path(made.get("weights_file") or "")
    if weights is None and expected:
        for candidate in (source, *SHIPPED.values()):
            if holds(candidate, expected):
                return candidate
    path = resolve_weights(weights, option)
    found = sha256_file(path) if expected else None
    if expected and found != expected:
        recorded = made.get("weights_file")
        gone = ", a file no longer there" if recorded and not source.is_file() else ""
        raise ArtifactMismatchError(f"{artifact} was exported from weights with sha256 {expected[:16]}... "
                                    f"({recorded}{gone}), but {path} has {found[:16]}...; pass {option} "
                                    f"with the weights it was exported from")
    return path


def artifact_architecture(manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The architecture (ModelConfig dict) an ONNX model's or engine's manifest records for the weights it was made
    from (None when it records none): what rebuilds the reference from weights that come without a sidecar."""
    model = manifest.get("model") if isinstance(manifest, Mapping) else None
    config = model.get("config") if isinstance(model, Mapping) else None
    return dict(config) if isinstance(config, Mapping) else None


def check_runner_args(weights: Any, device: Any, threads: Any) -> None:
    """TorchRunner's arguments that failed only when it was activated, in torch's words (a TypeError for weights=123,
    every device type torch knows for device='gpu', 'set_num_threads expects a positive integer')."""
    if weights is not None and (not isinstance(weights, (str, os.PathLike)) or not str(weights)):  # '': '.', a folder
        raise InputError(f"weights= is a path to a .safetensors/.pt file or a shipped name ('blind', 'sigma20'); got "
                         f"{type(weights).__name__} {weights!r}")
    if not (isinstance(device, str) and re.fullmatch(r"cpu|cuda(:\d+)?", device)):
        raise InputError(f"device= is 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise InputError(f"threads= is a whole number >= 1 (CPU threads), or None for torch's choice; got {threads!r}")
    problem = too_many_threads(threads)  # torch ended the process at 100,000 (SIGSEGV)
    if problem:
        raise InputError(f"threads={threads}: {problem}")


def tolerance_key(impl: str, compile: bool = False) -> str:
    """The (backend) half of the tolerance-table key for a PyTorch model with this impl and compile setting."""
    return "torch-compile" if compile else TOLERANCE_KEYS.get(impl, "torch")


class TorchRunner(BaseRunner):
    """Runs the PyTorch model: the reference every other backend is compared with, on the CPU or a GPU.

    ``weights``: a .safetensors file (with its .json sidecar) or a PyTorch .pt state dict, or a shipped name
    ('blind', the default weights of the commands, or 'sigma20'); None only with ``model=``. Use it as a context
    manager (``with TorchRunner("blind") as r: out = r(tiles)``, tiles an N x 3 x 32 x 32 float32 array in [0, 1];
    whole photos go through :func:`runtime.denoise_array`),
    or call activate() and deactivate()."""

    backend = "torch"

    def __init__(self, weights: str | Path | None = None, preset: str | None = None, model: Any = None,
                 device: str = "cpu", impl: str = "masked", compile: bool = False, threads: int | None = None,
                 name: str | None = None, max_batch: int | None = None, verify_weights: bool = True,
                 precision: str = "fp32", half_mode: str = "autocast", cuda_graph: bool = False,
                 graph_buckets: Iterable[int] | None = None, graph_fallback: bool = False,
                 graph_capture: Callable[[Callable[[Any], Any], Any], Any] | None = None,
                 architecture: Mapping[str, Any] | None = None) -> None:
        """``model``: a SmallViT to run instead of weights; the runner runs a copy made when it is activated, so
        the caller's model keeps its mode, device and attention impl. ``architecture``: the model's config as a
        dict, for weights whose sidecar does not name it (and no ``preset``): :func:`artifact_architecture` of an
        artifact made from them. ``graph_buckets``: the batch sizes to capture (default: powers of two up to
        ``max_batch`` or 4096). ``graph_capture(fn, static_input) -> Captured``: how a bucket's graph is made
        (default ``runtime.cuda_graphs.capture_cuda_graph``, which needs CUDA); ``runtime.cuda_graphs.eager_capture``
        runs the same bucket layer uncaptured, on any device (how it is tested on a CPU)."""
        check_runner_args(weights, device, threads)
        if precision not in PRECISIONS:
            raise InputError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        if half_mode not in HALF_MODES:
            raise InputError(f"half_mode {half_mode!r} is not one of {', '.join(HALF_MODES)}")
        if cuda_graph and graph_capture is None and not str(device).startswith("cuda"):
            raise InputError(f"cuda_graph=True records GPU work and needs device='cuda'; got device={device!r}. "
                             f"Leave cuda_graph off on a CPU")
        if model is None and weights is None:
            raise InputError("TorchRunner needs weights= (a .safetensors/.pt path, or a shipped name: 'blind', "
                             "'sigma20') or model= (a SmallViT)")
        if model is not None and not callable(getattr(model, "set_attention_impl", None)):
            raise InputError(f"model= is a SmallViT (e.g. moe_model.checkpoint.load_model(path); the shipped files "
                             f"are weights.SHIPPED['blind'] and ['sigma20']); got "
                             f"{type(model).__name__}. Weights by file or name go to weights= ('blind', 'sigma20')")
        default_name = (f"torch-{impl}{'-compile' if compile else ''}{'' if precision == 'fp32' else '-' + precision}"
                        f"{'-graph' if cuda_graph else ''}")
        super().__init__(name=name or default_name, precision=precision, max_batch=max_batch)
        self.weights, self.preset, self.model, self.architecture = weights, preset, model, architecture
        self._given_model = model  # the caller's: never put in eval mode, moved or given another attention impl
        self.device, self.impl, self.compile = device, impl, compile
        self.threads = None if threads is None else int(threads)
        self.verify_weights = verify_weights
        self.half_mode = half_mode
        self.cuda_graph, self.graph_fallback, self.graph_capture = cuda_graph, graph_fallback, graph_capture
        self.graph_buckets = (check_buckets(graph_buckets, max_batch=max_batch) if graph_buckets is not None
                              else default_buckets(max_batch))
        self.graphs: BucketedGraphs | None = None
        self._fn = None
        # the file to load, resolved now: a name or path that is neither fails here, not when first used (None: a
        # model was given)
        self.weights_file: Path | None = resolve_weights(weights) if model is None else None

    def _activate_impl(self) -> None:
        torch = require("torch", "the PyTorch backend")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            asked = [o for o, on in (("CUDA graphs", self.cuda_graph),
                                     (f"{self.precision} precision", self.precision != "fp32")) if on]
            raise NoGPUError(f"device {self.device!r}{' with ' + ', '.join(asked) if asked else ''} was asked for but "
                             f"torch {torch.__version__} sees no CUDA GPU; use --device cpu"
                             f"{' without CUDA graphs' if self.cuda_graph else ''} (device='cpu' in Python), or run "
                             f"on a machine with an NVIDIA GPU and a CUDA build of torch")
        threads = 1 if _FORK["forked_with_torch"] else self.threads  # more may wait forever
        if threads:  # process-wide in torch: put back when the last runner that set it is released
            _THREADS.take(torch, threads)
            self._holds_threads = True
        try:
            self._load(torch)
        except BaseException:  # an activation that failed is never deactivated: give the count back now
            self._give_threads_back(torch)
            raise

    def _give_threads_back(self, torch: Any) -> None:
        if getattr(self, "_holds_threads", False):
            self._holds_threads = False
            _THREADS.give(torch)

    def _load(self, torch: Any) -> None:
        if self._given_model is not None:  # a copy (of the weights as they are now): a model the caller trains on,
            # or shares between runners of different impls or devices, stays as it was
            self.model = copy.deepcopy(self._given_model)
        elif self.model is None:
            from moe_model.checkpoint import load_model
            self.model = load_model(self.weights_file, preset=self.preset, verify=self.verify_weights,
                                    architecture=self.architecture)
        model = self.model.eval().to(self.device)
        _register_impl(self.impl)
        model.set_attention_impl(self.impl)
        self._torch = torch
        fn = model
        dtype = getattr(torch, PRECISIONS[self.precision]) if PRECISIONS[self.precision] else None
        if dtype is not None:
            if self.half_mode == "cast":  # a copy: the caller's model stays fp32
                fn = _cast_forward(copy.deepcopy(model).to(dtype), dtype)
            else:
                fn = _autocast_forward(model, dtype, torch.device(self.device).type)
        if self.compile:
            _allow_recompiles(torch)
        self._fn = torch.compile(fn) if self.compile else fn
        if self.cuda_graph:
            self.graphs = self._bucketed_graphs()

    def _bucketed_graphs(self) -> BucketedGraphs:
        torch = self._torch
        capture = self.graph_capture or capture_cuda_graph
        fn = self._fn

        def make(bucket: int) -> Any:
            return capture(fn, torch.zeros((bucket, *TILE_SHAPE), dtype=torch.float32, device=self.device))

        check = parity_check(fn, lambda b: torch.from_numpy(check_input(b)).to(self.device),
                             get_tolerance(tolerance_key(self.impl, self.compile), self.precision), self.name)
        fallback = ((lambda b: eager_capture(fn, torch.zeros((b, *TILE_SHAPE), device=self.device)))
                    if self.graph_fallback else None)
        return BucketedGraphs(make, self.graph_buckets, check=check, fallback=fallback)

    def _deactivate_impl(self) -> None:
        self._fn = None
        self.graphs = None
        self.model = None  # released (on a GPU, its memory too); the next activation loads it (or copies model=) again
        self._give_threads_back(getattr(self, "_torch", None))

    def _infer_impl(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        if not x.flags.writeable:  # torch warns of a read-only array (np.broadcast_to, a frozen input) on every call
            x = x.copy()
        if self.graphs is not None:  # host rows straight into the static input, static output rows straight back
            out = torch.empty(x.shape, dtype=torch.float32)
            self.forward_on_device(torch.from_numpy(x), out=out)
            return out.numpy()
        return self.forward_on_device(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def forward_on_device(self, x: Any, out: Any = None) -> Any:
        """The model (compiled or eager, graphed or not) on a tensor on the runner's device; the output stays there.

        With ``cuda_graph`` the rows go through the bucket's graph (``x`` may then be on any device, and ``out``,
        when given, receives the rows wherever it is). Output dtype: float32 at every precision.

        Runs in true fp32: PyTorch lets cuDNN convolutions use TF32 by default, which moves outputs past the fp32
        tolerance (docs/verification.md); TF32 is off during the call, and the caller's setting restored.
        """
        self.require_active()  # an inactive runner's was an AttributeError
        torch = self._torch
        if not _FORK["ran_threaded"] and torch.get_num_threads() > 1:
            _FORK["ran_threaded"] = True  # (a GPU run starts CPU threads too: its host copies)
        with torch.inference_mode(), _no_tf32(torch):
            if self.graphs is not None:
                return self.graphs.run(x, out=out)
            y = self._fn(x)
            if out is not None:
                out.copy_(y)
                return out
            return y

    def prepare_graphs(self, batches: Iterable[int] | None = None) -> list[int]:
        """Capture and check now the graphs that ``batches`` will use (default: every bucket); returns the buckets."""
        if self.graphs is None:
            raise InputError(f"runner '{self.name}' has no CUDA graphs: create it with cuda_graph=True and activate it")
        torch = self._torch
        with torch.inference_mode(), _no_tf32(torch):
            return self.graphs.prepare(batches)

    @property
    def on_gpu(self) -> bool:
        return str(self.device).startswith("cuda")

    def device_callable(self, x: np.ndarray) -> Callable[[], Any] | None:
        """On CUDA: the model (compiled or eager, TF32 off) on a device copy of ``x`` made once. With CUDA graphs:
        the copy into the bucket's static input, the replay and the copy of the rows out (into a buffer made once),
        which is what a caller holding device tensors pays; the graphs are captured here, untimed."""
        if not str(self.device).startswith("cuda") or self._fn is None:
            return None
        xd = self._torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if self.graphs is None:
            return lambda: self.forward_on_device(xd)
        self.prepare_graphs([len(x)])
        yd = self._torch.empty_like(xd)
        return lambda: self.forward_on_device(xd, out=yd)

    def describe(self) -> dict[str, Any]:
        d = {**super().describe(), "device": self.device, "impl": self.impl, "compile": self.compile,
             "threads": self.threads, "tf32": False, "cuda_graph": self.cuda_graph,
             "weights": str(self.weights_file or self.weights) if self.weights is not None else "(a model given)"}
        if self.precision != "fp32":
            d["half_mode"] = self.half_mode
        if self.graphs is not None:
            d.update(self.graphs.describe())
        elif self.cuda_graph:
            d["graph_buckets"] = list(self.graph_buckets)
        return d


def _register_impl(impl: str) -> None:
    """Make ``impl`` available: "triton" registers itself when topk_attention.torch_op is imported (done here)."""
    from moe_model.attention import available_impls

    if impl == "triton" and impl not in available_impls():
        try:
            import topk_attention.torch_op  # noqa: F401 - registers impl="triton"
        except Exception as e:  # noqa: BLE001 - e.g. a torch without custom-op support: said in the error below
            raise MissingBackendError(f"attention impl 'triton' could not be registered: {type(e).__name__}: {e}") from e
    if impl not in available_impls():
        raise MissingBackendError(f"attention impl {impl!r} is not available; available: {', '.join(available_impls())}")


def _allow_recompiles(torch: Any, at_least: int = 64) -> None:
    """Room for every compiled runner of one process: Dynamo compiles a code object again for each new model, dtype
    or (once) batch shape, and past its recompile limit (8 by default) it would run the rest eagerly, unannounced,
    so a 'torch-compile' backend would be timed uncompiled. Raised only, never lowered."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.6
        if hasattr(cfg, name) and getattr(cfg, name) < at_least:
            setattr(cfg, name, at_least)


def _autocast_forward(model: Any, dtype: Any, device_type: str) -> Callable[[Any], Any]:
    """fp32 in, the model under torch.autocast(dtype), fp32 out. A plain function, so torch.compile traces through
    the autocast region (Dynamo supports the context manager) and a CUDA graph records the casts with the rest."""
    import torch

    def forward(x: Any) -> Any:
        with torch.autocast(device_type, dtype=dtype):
            y = model(x)
        return y.float()

    return forward


def _cast_forward(model: Any, dtype: Any) -> Callable[[Any], Any]:
    """fp32 in, cast to ``dtype``, a ``dtype`` copy of the model, fp32 out."""

    def forward(x: Any) -> Any:
        return model(x.to(dtype)).float()

    return forward


class _SharedSetting:
    """A process-wide torch setting that runners in several threads hold at once: the first one in saves the caller's
    value, the last one out restores it. Saving and restoring per holder let holders released in another order, or
    overlapping in time, restore each other's values (a forward ran with TF32 on; the caller's setting ended off).
    A value the caller set while it was held is the caller's newer choice, and is left as it is (it was put back to
    the one saved before: a TF32 opt-in made while another thread denoised was undone)."""

    def __init__(self, get: Callable[[Any], Any], put: Callable[[Any, Any], None]) -> None:
        self.get, self.put = get, put
        self._lock = threading.Lock()
        self._holders = 0
        self._saved: Any = None
        self._held: Any = None  # the value the holders put

    def take(self, torch: Any, value: Any) -> None:
        with self._lock:
            if self._holders == 0:
                self._saved = self.get(torch)
            self._holders += 1
            self.put(torch, value)
            self._held = value

    def give(self, torch: Any) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                if self.get(torch) == self._held:
                    self.put(torch, self._saved)
                self._saved = self._held = None


def _put_cudnn_tf32(torch: Any, allowed: bool) -> None:
    torch.backends.cudnn.allow_tf32 = allowed


def _put_matmul_tf32(torch: Any, allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed


_THREADS = _SharedSetting(lambda torch: torch.get_num_threads(), lambda torch, n: torch.set_num_threads(n))
_TF32 = (_SharedSetting(lambda torch: torch.backends.cudnn.allow_tf32, _put_cudnn_tf32),  # one by one: a caller's
          _SharedSetting(lambda torch: torch.backends.cuda.matmul.allow_tf32, _put_matmul_tf32))  # change of one
# of them during a call kept the other off for good (both were restored or kept as a pair)


@contextmanager
def _no_tf32(torch: Any) -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block, the caller's settings restored after (once
    for blocks that overlap in several threads, as the server's tile and image models do: :class:`_SharedSetting`)."""
    for setting in _TF32:
        setting.take(torch, False)
    try:
        yield
    finally:
        for setting in _TF32:
            setting.give(torch)
