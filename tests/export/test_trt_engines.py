"""TensorRT engines for real: build from both ONNX flavours, fp32 and fp16, run, parity, errors.

Runs only where TensorRT and a CUDA GPU exist (skipped with the reason elsewhere). Nothing in this file has run
on the machines this project was developed on: none had TensorRT (see the README's verification table).
"""
import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.trt]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, random_weights):
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    model = load_model(random_weights)
    out = {}
    root = tmp_path_factory.mktemp("onnx")
    for flavor in ("portable", "plugin"):
        for precision in ("fp32", "fp16"):
            path = root / f"{flavor}.{precision}.onnx"
            export_onnx(model, path, ExportOptions(flavor=flavor, precision=precision), weights_path=random_weights,
                        parity_images=8, log=lambda s: None)
            out[flavor, precision] = path
    return out


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_run_and_parity(exported, tmp_path, random_weights, flavor, precision):
    import tensorrt as trt

    from export.engine import BuildOptions, build_engine, plan_build
    from moe_base.tolerances import get_tolerance
    from runtime.parity import compare, parity_inputs
    from runtime.trt_runner import TensorRTRunner

    plan = plan_build(trt.__version__, precision)
    onnx_path = exported[flavor, plan.onnx_precision]
    opts = BuildOptions(precision=precision, min_batch=1, opt_batch=8, max_batch=32, cache_dir=tmp_path / "cache")
    result = build_engine(onnx_path, tmp_path / "m.engine", opts, weights=random_weights, log=lambda s: None)
    assert result.parity.passed and not result.cached
    assert result.manifest["tensorrt"]["version"] == trt.__version__
    again = build_engine(onnx_path, tmp_path / "m2.engine", opts, weights=random_weights, log=lambda s: None)
    assert again.cached  # same ONNX, plugin, TensorRT, GPU, precision, profile
    x = parity_inputs(40)  # beyond the profile's max 32: chunked
    with TensorRTRunner(result.path) as r:
        out = r(x)
    with TensorRTRunner(result.path, cuda_graph=True) as r:
        out_graph = r(x[:8])
    import torch

    from moe_model.checkpoint import load_model

    with torch.inference_mode():
        ref = load_model(random_weights)(torch.from_numpy(x)).numpy()
    assert compare(ref, out, get_tolerance("trt", precision)).passed
    np.testing.assert_allclose(out_graph, out[:8], atol=1e-6)
