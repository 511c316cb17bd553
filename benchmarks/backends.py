"""The catalogue of benchmark backends: names -> BackendSpecs over the runtime's runners.

Only runtime/ runners are used here (no export/): the ONNX graphs and engines arrive as paths, and whether the
Triton kernel registered is told by the caller (the CLI imports topk_attention.torch_op, not this module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from moe_base.errors import InputError
from runtime.base import BaseRunner

from .harness import BackendSpec

CPU_BACKENDS = ("torch-seed", "torch-masked", "torch-compile", "ort-cpu", "ort-cpu-noopt")
GPU_BACKENDS = ("torch-seed-cuda", "torch-masked-cuda", "torch-compile-cuda", "torch-triton", "ort-cuda",
                "ort-trt-ep", "trt-plugin-fp32", "trt-plugin-fp16", "trt-portable-fp32", "trt-portable-fp16")
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
# --quick: no torch.compile (its first call compiles for tens of seconds on 2 cores, more than the whole budget).
QUICK_BACKENDS = ("torch-seed", "torch-masked", "ort-cpu", "ort-cpu-noopt")
GPU_DEFAULT_BACKENDS = GPU_BACKENDS
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
              "torch-masked-cuda": ("masked", False, "cuda"), "torch-compile-cuda": ("masked", True, "cuda"),
              "torch-triton": ("triton", False, "cuda")}
TORCH_TOLERANCE = {"seed": "torch-seed", "gather": "torch-seed", "masked": "torch", "triton": "torch-triton"}


@dataclass
class BackendInputs:
    """What the catalogue needs to build runners: weights, thread count, and the artifacts made beforehand.

    ``onnx``: {(flavour, optimised): path} of exported graphs. ``engines``: {backend name: engine path}.
    ``triton_unavailable``: None when the Triton kernel is registered, else why not.
    """

    weights: Path
    preset: str | None = None
    threads: int | None = None
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
        raise InputError(f"unknown backend(s) {unknown or text!r}; choose from: {', '.join(ALL_BACKENDS)} (or 'all')")
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
    impl, compile_, device = TORCH_IMPL[name]

    def make() -> BaseRunner:
        from runtime.torch_runner import TorchRunner

        # Each runner loads its own model: set_attention_impl changes the model it is called on.
        return TorchRunner(inputs.weights, preset=inputs.preset, device=device, impl=impl, compile=compile_,
                           threads=inputs.threads if device == "cpu" else None, name=name)

    key = "torch-compile" if compile_ else TORCH_TOLERANCE[impl]
    unavailable = inputs.triton_unavailable if impl == "triton" else None
    notes = (["the baseline: the seed's code path, topk -> softmax -> gather V for every expert (k clipped to N, "
              "so the k >= N experts sort and gather all keys too)"] if impl == "seed" else [])
    if compile_:
        notes.append("torch.compile (inductor); the first inference includes compilation")
    return BackendSpec(name=name, make_runner=make, device=device, tolerance=(key, "fp32"), unavailable=unavailable,
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
    unavailable = None if path is not None else (
        f"no engine given: build one with 'moe-denoise build' and pass --engine {name}=PATH")

    def make() -> BaseRunner:
        from runtime.trt_runner import TensorRTRunner

        return TensorRTRunner(path, name=name)

    graph = "plugin" if "-plugin-" in name else "portable"
    return BackendSpec(name=name, make_runner=make, device="cuda", precision=precision,
                       tolerance=("trt", precision), unavailable=unavailable,
                       preload=("tensorrt",), notes=[f"TensorRT engine, {graph} graph, {precision}"])
