"""Our TensorRT plugin, driven through TensorRT's own plugin layer (10.9 and the newest we support) as the ONNX
parser and the builder drive it: registration, creator lookup, fields, creation with strict AOT, output types and
shapes, format combinations, configuration, launch parameters and kernel. Plus three mutants of our plugin module
that reintroduce the defects this layer found, each of which must fail here."""
import re

import numpy as np
import pytest

from tools.trt_layer.drive import BATCHES, REPO, run_in_layer
from topk_attention.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

pytest.importorskip("onnx", reason="the layer is driven with an ONNX graph: pip install 'moe-denoise[onnx]' (or the "
                              "test extra)")
TARGET = "cuda:90"


def test_registration_creation_and_shapes(report):
    assert report["registered_on_import"] is False  # importing the module registers nothing; register_plugin() does
    assert report["plugin"] == {"name": PLUGIN_NAME, "namespace": PLUGIN_NAMESPACE, "version": PLUGIN_VERSION}
    assert {n["precision"] for n in report["nodes"]} == {"fp32", "fp16"}
    for node in report["nodes"]:
        assert node["creator"]["fields"] == [["topk", "INT32"], ["scale", "FLOAT32"]]
        assert node["missing_fields"] == []
        assert node["request"] == "STRICT_AOT"
        assert node["output_shape"] == node["input_shapes"][0] == ["batch", 4, 64, 32]
        want = "HALF" if node["precision"] == "fp16" else "FLOAT"
        assert node["input_types"] == [want] * 3 and node["output_types"] == [want]
        assert [[want, "LINEAR"]] * 4 in node["combinations"]
        assert node["kernel_name"] == "sparse_topk_attn_fwd"


@pytest.fixture(scope="module")
def artifacts():
    """The artifacts build_aot_artifact makes directly, to compare with what TensorRT's layer asked for."""
    pytest.importorskip("triton", reason="the AOT artifact is compiled by Triton: pip install 'moe-denoise[gpu]'")
    from topk_attention.aot import build_aot_artifact

    cache = {}

    def get(dtype: str, topk: int, scale: float):
        key = (dtype, topk, scale)
        if key not in cache:
            cache[key] = build_aot_artifact(64, 32, topk, dtype, target=TARGET, num_heads=4, scale=scale)
        return cache[key]

    return get


def test_launch_parameters_are_the_artifacts(report, artifacts):
    for node in report["nodes"]:
        fields = {name: values[0] for name, _, values in node["fields"]}
        art = artifacts("fp16" if node["precision"] == "fp16" else "fp32", int(fields["topk"]),
                        float(np.float32(fields["scale"])))
        assert report["kernels"][node["ptx_sha256"]] == art.ptx
        for batch in BATCHES:
            launch = node["launch"][str(batch)]
            assert tuple(launch["grid"]) == art.grid(batch)
            assert tuple(launch["block"]) == art.block
            assert launch["shared_mem"] == art.shared_mem
            assert [e["value"] for e in launch["extras"]] == art.extra_arg_values(batch)
            assert [e["dtype"] for e in launch["extras"]] == ["INT32"] * len(art.extra_arg_values(batch))


SOURCE = (REPO / "topk_attention" / "trt_plugin.py").read_text()
DOCSTRING_END = SOURCE.index('"""', 3) + 3
MUTANTS = {
    # defect 1: string annotations, which TensorRT's validator does not evaluate
    "future-annotations": (SOURCE[:DOCSTRING_END] + "\nfrom __future__ import annotations\n" + SOURCE[DOCSTRING_END:],
                           {"10.9": r"issubclass\(\) arg 1 must be a class",
                            "11": r"TensorDescs args should come first"}),
    # defect 2: an AOT return annotation that is not (str|bytes, str|bytes, KernelLaunchParams, SymIntExprs)
    "any-return": (SOURCE.replace("tuple[bytes, bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]",
                                  "tuple[bytes, bytes, Any, Any]"),
                   {"10.9": r"Argument at index 2 of return annotation", "11": r"Argument at index 2 of return"}),
    # defect 3: scalar attributes, which TensorRT 10.9-11.1 convert with int(array) (refused by NumPy >= 2.4)
    "scalar-attributes": (SOURCE.replace("Int32 = npt.NDArray[np.int32]", "Int32 = int")
                          .replace("Float32 = npt.NDArray[np.float32]", "Float32 = float"),
                          {"10.9": r"only 0-dimensional arrays can be converted", "11": None}),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_each_fix_is_needed(mutant, version, tmp_path, numpy_python):
    source, expected = MUTANTS[mutant]
    assert source != SOURCE, f"the mutant {mutant} no longer applies: update the test with the module"
    path = tmp_path / "trt_plugin_mutant.py"
    path.write_text(source)
    want = expected["10.9" if version.startswith("10.") else "11"]
    args, python = ["--target", TARGET, "--plugin-module", str(path)], None
    if mutant == "scalar-attributes":  # the defect shows with NumPy >= 2.4, whatever NumPy the tests run with
        args.append("--create-only")
        python = numpy_python("2.4")
    rep = run_in_layer(version, args, python=python)
    if want is None:  # TensorRT 11.4 indexes one-element arrays itself: this mutant passes there
        assert rep["ok"], rep.get("error")
    else:
        assert not rep["ok"] and re.search(want, rep.get("error", "")), rep


@pytest.fixture(scope="session")
def numpy_python():
    from tools.trt_layer.fetch import FetchError
    from tools.trt_layer.fetch import numpy_python as make

    def get(minimum: str) -> str:
        try:
            return make(minimum)
        except FetchError as e:
            pytest.skip(f"no interpreter with NumPy >= {minimum} could be made ({e}); it needs the package index")

    return get


def test_creation_under_numpy_2_4(version, numpy_python):
    """Our plugin is created with the parser's int32 / float32 fields under NumPy >= 2.4 (which refuses int() of a
    one-element array, as TensorRT 10.9-11.1 use it), whichever NumPy the test environment has."""
    rep = run_in_layer(version, ["--create-only"], python=numpy_python("2.4"))
    assert rep["ok"], rep
    assert tuple(int(x) for x in rep["numpy"].split(".")[:2]) >= (2, 4) and rep["output_types"] == ["FLOAT"]


def test_fetch_failure_is_a_skip_with_the_reason(monkeypatch, tmp_path, fetched_layer):
    from tools.trt_layer import fetch

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path))
    monkeypatch.setattr(fetch, "PACKAGE", "tensorrt-cu12-bindings-does-not-exist")
    with pytest.raises(pytest.skip.Exception, match="could not be fetched.*pip download"):
        fetched_layer("10.9.0.34")
    assert not list((tmp_path / "trt-plugin-layer").glob("10.9.0.34"))  # nothing half-written stays


def test_the_plugin_is_registered_once_when_builds_race(monkeypatch, in_threads):
    """Two engine builds at once in two threads both reached TensorRT's registration (a check, then a set after four
    decorators, with no lock): TensorRT refuses a second registration of the id. TensorRT's layer is stood in for."""
    import time
    import types

    import topk_attention.trt_plugin as trt_plugin

    registered = []

    def register(plugin_id):
        time.sleep(0.05)  # the window two threads met in
        registered.append(plugin_id)
        return lambda f: f

    trtp = types.SimpleNamespace(register=register, autotune=lambda i: (lambda f: f),
                                 aot_impl=lambda i: (lambda f: f), impl=lambda i: (lambda f: f),
                                 TensorDesc=object, Tensor=object, AutoTuneCombination=object,
                                 KernelLaunchParams=object, SymIntExprs=object)
    modules = {"tensorrt": types.SimpleNamespace(), "tensorrt.plugin": trtp}
    monkeypatch.setattr(trt_plugin, "require", lambda name, *args, **kwargs: modules[name])
    monkeypatch.setattr(trt_plugin, "_REGISTERED", {})
    assert in_threads(lambda: trt_plugin.register_plugin(TARGET), 4) == [] and len(registered) == 1
