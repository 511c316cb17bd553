"""The catalogue of benchmark backends: names -> BackendSpecs over the runtime's runners.

Only runtime/ runners are used here (no export/): the ONNX graphs and engines arrive as paths, and whether the
Triton kernel registered is told by the caller (the CLI imports topk_attention.torch_op, not this module).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from moe_base.errors import InputError
from runtime.base import BaseRunner

from .harness import BackendSpec

CPU_BACKENDS = ("torch-seed", "torch-masked", "torch-compile", "ort-cpu", "ort-cpu-noopt")
# PyTorch on CUDA: (impl, compile, device) of each base backend; each also comes with a CUDA graph per batch
# bucket ("-graph") and in fp16 / bf16 ("-fp16", "-bf16"; under torch.autocast, fp32 in and out), named
# <base>[-fp16|-bf16][-graph]. The Triton kernel has no bf16 (its op would run the reference), so no torch-triton-bf16.
_TORCH_CUDA_BASES: dict[str, tuple[str, bool, str]] = {
    "torch-masked-cuda": ("masked", False, "cuda"), "torch-compile-cuda": ("masked", True, "cuda"),
    "torch-triton": ("triton", False, "cuda")}
_HALF = {"torch-masked-cuda": ("fp16", "bf16"), "torch-compile-cuda": ("fp16", "bf16"), "torch-triton": ("fp16",)}
# variant -> (its base backend, precision, cuda_graph); every other PyTorch backend is fp32 without graphs
TORCH_VARIANTS: dict[str, tuple[str, str, bool]] = {
    f"{base}{'' if p == 'fp32' else '-' + p}{'-graph' if graph else ''}": (base, p, graph)
    for base in _TORCH_CUDA_BASES for p in ("fp32", *_HALF[base]) for graph in (False, True) if p != "fp32" or graph}
GRAPH_BACKENDS = tuple(n for n, (_, _, graph) in TORCH_VARIANTS.items() if graph)
HALF_BACKENDS = tuple(n for n, (_, p, _) in TORCH_VARIANTS.items() if p != "fp32")
GPU_BACKENDS = ("torch-seed-cuda", "torch-masked-cuda", "torch-compile-cuda", "torch-triton", *TORCH_VARIANTS,
                "ort-cuda", "ort-trt-ep", "trt-plugin-fp32", "trt-plugin-fp16", "trt-portable-fp32", "trt-portable-fp16")
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
# --quick: no torch.compile (its first call compiles for tens of seconds on 2 cores, more than the whole budget).
QUICK_BACKENDS = ("torch-seed", "torch-masked", "ort-cpu", "ort-cpu-noopt")
# What tools/gpu_session.sh times within its budget (each torch.compile variant compiles for 15-30 s first, twice:
# batch 1, then a dynamic batch): the baseline, eager and Triton with and without graphs, the compiled model in
# graphs, and the half-precision graphs that aim at issue 17's targets (batch 1 <= 0.3 ms with graphs; batch 4096
# >= 300,000 images/s in fp16 or bf16). torch-compile-cuda without graphs was timed in the first H200 session.
SESSION_BACKENDS = ("torch-seed-cuda", "torch-masked-cuda", "torch-masked-cuda-graph", "torch-masked-cuda-fp16-graph",
                    "torch-masked-cuda-bf16-graph", "torch-triton", "torch-triton-graph", "torch-triton-fp16-graph",
                    "torch-compile-cuda-graph", "torch-compile-cuda-fp16-graph", "torch-compile-cuda-bf16-graph")
# bench --gpu without --backends: the session's PyTorch set, then ONNX Runtime and TensorRT (built when present)
GPU_DEFAULT_BACKENDS = SESSION_BACKENDS + ("ort-cuda", "ort-trt-ep", "trt-plugin-fp32", "trt-plugin-fp16",
                                           "trt-portable-fp32", "trt-portable-fp16")
CPU_BASELINE = "torch-seed"
GPU_BASELINE = "torch-seed-cuda"

# backend -> the ONNX graph it runs: (flavour, optimised)
ONNX_GRAPHS: dict[str, tuple[str, bool]] = {
    "ort-cpu": ("portable", True), "ort-cpu-noopt": ("portable", False),
    "ort-cuda": ("portable", True), "ort-trt-ep": ("portable", True),
}
# Pairs compared round by round in the report: the optimised graph against the plain one.
VERSUS = {"ort-cpu": "ort-cpu-noopt"}
ORT_PROVIDER = {"ort-cpu": "cpu", "ort-cpu-noopt": "cpu", "ort-cuda": "cuda", "ort-trt-ep": "tensorrt"}
TORCH_IMPL = {"torch-seed": ("seed", False, "cpu"), "torch-masked": ("masked", False, "cpu"),
              "torch-compile": ("masked", True, "cpu"), "torch-seed-cuda": ("seed", False, "cuda"),
              **_TORCH_CUDA_BASES, **{n: _TORCH_CUDA_BASES[base] for n, (base, _, _) in TORCH_VARIANTS.items()}}


@dataclass
class BackendInputs:
    """What the catalogue needs to build runners: weights, thread count, and the artifacts made beforehand.

    ``onnx``: {(flavour, optimised): path} of exported graphs. ``engines``: {backend name: engine path}.
    ``triton_unavailable``: None when the Triton kernel is registered, else why not.
    """

    weights: Path
    preset: str | None = None
    threads: int | None = None
    verify: bool = True  # the weights' sha256 against their sidecar (False: bench --skip-weights-check)
    onnx: dict[tuple[str, bool], Path] = field(default_factory=dict)
    onnx_unavailable: dict[tuple[str, bool], str] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    triton_unavailable: str | None = "the Triton kernel was not registered (import topk_attention.torch_op first)"


def parse_backends(text: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    """'a,b' -> ('a', 'b'), checked against the catalogue; None or '' -> default; 'all' -> every backend."""
    if not text:
        return default
    if text.strip() == "all":
        return ALL_BACKENDS
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown or not names:
        raise InputError(f"unknown backend(s) {', '.join(unknown) if unknown else repr(text)}; choose from: "
                         f"{', '.join(ALL_BACKENDS)} (or 'all')")
    return tuple(dict.fromkeys(names))


def graphs_needed(names: tuple[str, ...]) -> set[tuple[str, bool]]:
    """The ONNX graphs the chosen backends run (so only those are exported)."""
    return {ONNX_GRAPHS[n] for n in names if n in ONNX_GRAPHS}


def build_specs(names: tuple[str, ...], inputs: BackendInputs, baseline: str | None) -> list[BackendSpec]:
    """BackendSpecs for ``names`` in that order; ``baseline`` names the one every ratio is quoted against."""
    specs = []
    for name in names:
        if name in TORCH_IMPL:
            spec = _torch_spec(name, inputs)
        elif name in ORT_PROVIDER:
            spec = _ort_spec(name, inputs)
        else:
            spec = _trt_spec(name, inputs)
        spec.baseline = name == baseline
        specs.append(spec)
    return specs


def _torch_spec(name: str, inputs: BackendInputs) -> BackendSpec:
    from runtime.torch_runner import tolerance_key  # numpy-only at import; torch is imported on activation

    impl, compile_, device = TORCH_IMPL[name]
    _, precision, graph = TORCH_VARIANTS.get(name, (name, "fp32", False))

    def make() -> BaseRunner:
        from runtime.torch_runner import TorchRunner

        # Each runner loads its own model: set_attention_impl changes the model it is called on.
        return TorchRunner(inputs.weights, preset=inputs.preset, device=device, impl=impl, compile=compile_,
                           threads=inputs.threads if device == "cpu" else None, name=name, precision=precision,
                           cuda_graph=graph, verify_weights=inputs.verify)

    unavailable = inputs.triton_unavailable if impl == "triton" else None
    notes = (["the baseline: the seed's code path, topk -> softmax -> gather V for every expert (k clipped to N, "
              "so the k >= N experts sort and gather all keys too)"] if impl == "seed" else [])
    if compile_:
        notes.append("torch.compile (inductor); the first inference includes compilation")
    if precision != "fp32":
        notes.append(f"{precision} under torch.autocast (matmuls, convolutions, attention in {precision}; LayerNorm, "
                     f"softmax and the residual in fp32), fp32 in and out")
    if graph:
        notes.append("a CUDA graph per batch bucket (powers of two up to 4096, batches padded up and trimmed, larger "
                     "ones chunked), each checked against the uncaptured model before first use; captured on first "
                     "use (untimed: at the parity batch or during warm-up); compute mode includes the copies into "
                     "the static input and out of the static output")
    return BackendSpec(name=name, make_runner=make, device=device, precision=precision,
                       tolerance=(tolerance_key(impl, compile_), precision), unavailable=unavailable,
                       preload=("torch",), notes=notes)


def _ort_spec(name: str, inputs: BackendInputs) -> BackendSpec:
    graph = ONNX_GRAPHS[name]
    provider = ORT_PROVIDER[name]
    path = inputs.onnx.get(graph)
    unavailable = None
    if path is None:
        unavailable = inputs.onnx_unavailable.get(graph, f"no {graph[0]} ONNX graph "
                                                         f"({'optimised' if graph[1] else '--no-optimize'}) was given")

    def make() -> BaseRunner:
        from runtime.ort_runner import OrtRunner

        return OrtRunner(path, provider=provider, threads=inputs.threads if provider == "cpu" else None, name=name)

    notes = [f"ONNX Runtime {provider} provider, {graph[0]} graph, {'optimised' if graph[1] else 'not optimised'}"]
    if provider == "cpu":
        notes.append("a fresh session each round: a session keeps its speed for life, and it varies from session to session")
    return BackendSpec(name=name, make_runner=make, device="cpu" if provider == "cpu" else "cuda",
                       tolerance=("ort", "fp32"), unavailable=unavailable,
                       preload=("onnxruntime", "onnx"), notes=notes, fresh_each_round=provider == "cpu",
                       versus=VERSUS.get(name))


def _trt_spec(name: str, inputs: BackendInputs) -> BackendSpec:
    precision = name.rsplit("-", 1)[-1]
    path = inputs.engines.get(name)
    unavailable = None
    if path is None and importlib.util.find_spec("tensorrt") is None:  # 'build one' was advice this machine cannot take
        unavailable = ("no engine given, and TensorRT is not installed here (no module named 'tensorrt'): TensorRT "
                       "backends need an NVIDIA GPU with TensorRT ('pip install moe-denoise[trt]'); there, build one "
                       f"with 'moe-denoise build' and pass --engine {name}=PATH")
    elif path is None:
        unavailable = f"no engine given: build one with 'moe-denoise build' and pass --engine {name}=PATH"

    def make() -> BaseRunner:
        from runtime.trt_runner import TensorRTRunner

        return TensorRTRunner(path, name=name)

    graph = "plugin" if "-plugin-" in name else "portable"
    return BackendSpec(name=name, make_runner=make, device="cuda", precision=precision,
                       tolerance=("trt", precision), unavailable=unavailable,
                       preload=("tensorrt",), notes=[f"TensorRT engine, {graph} graph, {precision}"])
