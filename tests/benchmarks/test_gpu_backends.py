"""The CUDA-graph and half-precision backends of the benchmark catalogue: names, specs, tolerances, availability."""
import pytest
import torch

from benchmarks.backends import (
    ALL_BACKENDS,
    GPU_BACKENDS,
    GPU_BASELINE,
    GPU_DEFAULT_BACKENDS,
    GRAPH_BACKENDS,
    HALF_BACKENDS,
    SESSION_BACKENDS,
    TORCH_IMPL,
    TORCH_VARIANTS,
    BackendInputs,
    build_specs,
    parse_backends,
)
from benchmarks.harness import prepare_backend
from moe_base.tolerances import get_tolerance
from runtime.parity import parity_inputs


def test_names_follow_base_precision_graph():
    assert set(GRAPH_BACKENDS) == {"torch-masked-cuda-graph", "torch-masked-cuda-fp16-graph",
                                   "torch-masked-cuda-bf16-graph", "torch-compile-cuda-graph",
                                   "torch-compile-cuda-fp16-graph", "torch-compile-cuda-bf16-graph",
                                   "torch-triton-graph", "torch-triton-fp16-graph"}
    assert set(HALF_BACKENDS) == {"torch-masked-cuda-fp16", "torch-masked-cuda-bf16", "torch-compile-cuda-fp16",
                                  "torch-compile-cuda-bf16", "torch-triton-fp16", *(
                                      n for n in GRAPH_BACKENDS if "-fp16-" in n or "-bf16-" in n)}
    for name, (base, precision, graph) in TORCH_VARIANTS.items():
        assert name == base + ("" if precision == "fp32" else f"-{precision}") + ("-graph" if graph else "")
        assert TORCH_IMPL[name] == TORCH_IMPL[base] and TORCH_IMPL[name][2] == "cuda"
    assert not any("triton-bf16" in n for n in ALL_BACKENDS)  # the kernel has no bf16
    assert len(set(ALL_BACKENDS)) == len(ALL_BACKENDS)
    assert set(TORCH_VARIANTS) <= set(GPU_BACKENDS)
    assert parse_backends(",".join(SESSION_BACKENDS), ()) == SESSION_BACKENDS
    assert SESSION_BACKENDS[0] == GPU_BASELINE and set(SESSION_BACKENDS) <= set(GPU_DEFAULT_BACKENDS)


def test_specs_carry_precision_tolerance_and_graph_option():
    inputs = BackendInputs(weights="blind", triton_unavailable=None)
    specs = {s.name: s for s in build_specs(tuple(TORCH_VARIANTS), inputs, baseline=None)}
    assert specs["torch-compile-cuda-bf16-graph"].tolerance == ("torch-compile", "bf16")
    assert specs["torch-triton-fp16-graph"].tolerance == ("torch-triton", "fp16")
    assert specs["torch-masked-cuda-graph"].tolerance == ("torch", "fp32")
    for name, spec in specs.items():
        _, precision, graph = TORCH_VARIANTS[name]
        assert spec.device == "cuda" and spec.precision == precision
        get_tolerance(*spec.tolerance)  # every key is in the one table
        assert any("CUDA graph" in n for n in spec.notes) == graph
        assert any("autocast" in n for n in spec.notes) == (precision != "fp32")
        runner = spec.make_runner()  # built, not activated
        assert (runner.name, runner.precision, runner.cuda_graph, runner.device) == (name, precision, graph, "cuda")
    down = build_specs(("torch-triton-fp16-graph",), BackendInputs(weights="w", triton_unavailable="no triton"), None)
    assert down[0].unavailable == "no triton"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU reports")
def test_without_a_gpu_the_new_backends_are_unavailable_with_the_reason(random_weights):
    x = parity_inputs(2)
    spec = build_specs(("torch-compile-cuda-fp16-graph",), BackendInputs(weights=random_weights), None)[0]
    backend = prepare_backend(spec, x, x, log=lambda s: None)
    assert backend.runner is None and backend.record["status"] == "unavailable"
    assert "NoGPUError" in backend.record["reason"] and "CUDA graphs, fp16 precision" in backend.record["reason"]


def test_the_gpu_preset_sweeps_to_4096():
    from moe_denoise.cli import build_parser
    from moe_denoise.commands.bench import settings_from_args

    s = settings_from_args(build_parser().parse_args(["bench", "--gpu", "--batches", "1,4096"]), "gpu")
    assert s.batches == (1, 4096)
    assert 4096 in settings_from_args(build_parser().parse_args(["bench", "--gpu"]), "gpu").batches


def test_an_engine_backend_without_tensorrt_says_it_cannot_be_built_here(monkeypatch):
    """Without TensorRT, bench advised "build one with 'moe-denoise build'", which cannot run on that machine."""
    import importlib.util

    real = importlib.util.find_spec
    for installed in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, on=installed: (real("json") if on else None) if name == "tensorrt"
                            else real(name))
        spec = build_specs(("trt-plugin-fp16",), BackendInputs(weights="w"), None)[0]
        if installed:
            assert spec.unavailable.startswith("no engine given: build one with 'moe-denoise build'")
        else:
            assert "TensorRT is not installed here (no module named 'tensorrt')" in spec.unavailable
            assert "--engine trt-plugin-fp16=PATH" in spec.unavailable
