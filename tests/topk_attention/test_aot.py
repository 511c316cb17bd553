"""The AOT artifact of the sparse top-k attention kernel, generated here (CPU, no TensorRT) for sm_90."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest

pytest.importorskip("triton", reason="triton is not installed: pip install 'moe-denoise[gpu]'")
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    pytest.skip("TRITON_INTERPRET is set: the AOT build needs the compiled (not interpreted) kernel",
                allow_module_level=True)

from topk_attention.aot import (
    AOTArtifact,
    AOTError,
    build_aot_artifact,
    check_driver,
    ptx_entry_params,
    ptxas_check,
    strip_unused_params,
)


@pytest.fixture(scope="module")
def art() -> AOTArtifact:
    return build_aot_artifact(64, 32, 32, "fp32", target="cuda:90", num_heads=4)


@pytest.fixture(scope="module")
def art_keep() -> AOTArtifact:
    return build_aot_artifact(64, 32, 32, "fp32", target="cuda:90", num_heads=4, hidden_params="keep")


def test_entry_is_inputs_extras_outputs(art):
    assert art.kernel_name == "sparse_topk_attn_fwd" and art.target == "cuda:90"
    assert [(p.name, p.kind, p.ptx_type) for p in art.params] == [
        ("q_ptr", "input", ".u64"), ("k_ptr", "input", ".u64"), ("v_ptr", "input", ".u64"),
        ("n_bh", "extra", ".u32"), ("o_ptr", "output", ".u64")]
    name, params = ptx_entry_params(art.ptx)
    assert name == art.kernel_name and [t for t, _ in params] == [".u64", ".u64", ".u64", ".u32", ".u64"]


def test_hidden_scratch_params_detected_and_stripped(art, art_keep):
    # Triton 3.x appends global/profile scratch pointers; "keep" shows them, "strip" (default) drops them.
    assert art_keep.hidden_params_detected == art.hidden_params_detected
    assert len(art_keep.params) == 5 + len(art_keep.hidden_params_detected)
    assert all(p.kind == "hidden" and "null" in p.note for p in art_keep.params[5:])
    assert len(ptx_entry_params(art_keep.ptx)[1]) == len(art_keep.params)
    assert art.hidden_params_stripped == bool(art.hidden_params_detected)
    assert art.compile_options["global_scratch_size"] == 0 and art.compile_options["profile_scratch_size"] == 0


def test_strip_refuses_params_the_body_reads():
    ptx = (".version 8.4\n.target sm_90a\n.visible .entry f(\n\t.param .u64 f_param_0,\n\t.param .u64 f_param_1\n)\n"
           "{\n\tld.param.b64 %rd1, [f_param_1];\n\tret;\n}\n")
    with pytest.raises(AOTError, match="read by the kernel body"):
        strip_unused_params(ptx, ["f_param_1"])
    stripped = strip_unused_params(ptx.replace("[f_param_1]", "[f_param_0]"), ["f_param_1"])
    assert ptx_entry_params(stripped)[1] == [(".u64", "f_param_0")]


def test_launch_contract(art):
    assert art.block == (art.num_warps * 32, 1, 1)
    assert art.grid(3) == (12, -(-64 // art.block_m), 1)
    assert art.extra_arg_values(3) == [12]
    assert [p.name for p in art.params] == ["q_ptr", "k_ptr", "v_ptr", "n_bh", "o_ptr"]
    assert 0 < art.shared_mem <= 48 * 1024 and not art.needs_shared_opt_in
    assert art.topk == 32 and art.scale == pytest.approx(32 ** -0.5) and art.dtype == "fp32"


def test_ptx_version_pinned_and_driver_check(art):
    assert art.ptx_version == "8.4" and re.search(r"^\.version 8\.4$", art.ptx, re.MULTILINE)
    assert art.ptx_target == "sm_90a"
    assert art.min_cuda == "12.4" and art.min_driver == "550.54.14"
    check_driver(art, 12040)
    check_driver(art, 13000)
    with pytest.raises(AOTError, match=r"ISA 8\.4.*CUDA >= 12\.4.*supports CUDA 12\.2.*ptx_version='8\.2'"):
        check_driver(art, 12020)


def test_ptx_version_override_and_refusal():
    native = build_aot_artifact(64, 32, 32, "fp32", ptx_version=None)
    assert float(native.ptx_version) > 8.4  # Triton's own choice is newer: the reason for the pin
    with pytest.raises(AOTError, match="cannot target sm_90"):
        build_aot_artifact(64, 32, 32, "fp32", ptx_version="7.8")


def test_json_round_trip_and_tamper_detection(art, tmp_path):
    again = AOTArtifact.from_json(art.to_json())
    assert again == art and again.hash == art.hash
    path = art.save(tmp_path / "kernel.json")
    assert AOTArtifact.load(path) == art
    d = json.loads(art.to_json())
    d["topk"] = 31
    with pytest.raises(AOTError, match="hash does not match"):
        AOTArtifact.from_json(json.dumps(d))
    d = json.loads(art.to_json())
    d["schema_version"] = 99
    with pytest.raises(AOTError, match="schema_version"):
        AOTArtifact.from_json(json.dumps(d))


def test_fp16_model_shape():
    a = build_aot_artifact(256, 32, 128, "fp16", num_heads=4, scale=1.0)
    assert a.dtype == "fp16" and a.scale == 1.0 and a.grid(1) == (4, 256 // a.block_m, 1)
    assert a.hash != build_aot_artifact(256, 32, 64, "fp16", num_heads=4, scale=1.0).hash


@pytest.mark.parametrize("kwargs, err, needle", [
    ({"n": 2048, "head_dim": 32, "topk": 32, "dtype": "fp32"}, ValueError, "1024"),
    ({"n": 64, "head_dim": 32, "topk": 64, "dtype": "fp32"}, ValueError, "dense"),
    ({"n": 64, "head_dim": 32, "topk": 32, "dtype": "bf16"}, ValueError, "fp32 or fp16"),
    ({"n": 64, "head_dim": 32, "topk": 32, "dtype": "fp32", "target": "gfx942"}, ValueError, "cuda:90"),
    # below: each of these was taken (a topk of 32.5 baked into the artifact, a NaN scale into the PTX), failed
    # deep inside (n=64.0: 'float' object has no attribute 'bit_length') or aborted the process (cuda:0, in LLVM)
    ({"n": 64, "head_dim": 32, "topk": 32, "dtype": "fp32", "target": "cuda:0"}, ValueError,
     "names compute capability 0: a target is the GPU's architecture"),
    ({"n": 64, "head_dim": 32, "topk": 32.5, "dtype": "fp32"}, ValueError, "topk must be a whole number"),
    ({"n": 64, "head_dim": 32, "topk": True, "dtype": "fp32"}, ValueError, "topk must be a whole number"),
    ({"n": 64.0, "head_dim": 32, "topk": 32, "dtype": "fp32"}, ValueError, "n must be a whole number"),
    ({"n": 64, "head_dim": 32, "topk": 32, "dtype": "fp32", "scale": float("nan")}, ValueError, "finite"),
    ({"n": 64, "head_dim": 32, "topk": 32, "dtype": "fp32", "ptx_version": 8}, ValueError, "ISA 6.0 to 9.9"),
])
def test_rejects_unsupported(kwargs, err, needle):
    with pytest.raises(err, match=needle):
        build_aot_artifact(**kwargs)


def test_launch_helpers_refuse_an_empty_batch(art):
    for helper in (art.grid, art.extra_arg_values):  # extra_arg_values(0) gave [0] where grid(0) refused
        with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
            helper(0)


def test_ptxas_that_is_not_a_program_is_said(art, tmp_path):
    with pytest.raises(ValueError, match="is not a program that can be run"):  # was a raw FileNotFoundError
        ptxas_check(art, ptxas=str(tmp_path / "no-ptxas"))


def test_ptx_assembles_with_cuda_ptxas(art):
    if shutil.which("ptxas") is None:
        pytest.skip("ptxas (CUDA toolkit) is not on PATH; Triton's bundled ptxas already assembled the PTX")
    log = ptxas_check(art)
    assert "sparse_topk_attn_fwd" in log
    assert re.search(r"\b0 bytes spill stores", log), f"the kernel spills registers:\n{log}"


def test_device_check_passes_arguments_in_plugin_order(art_keep):
    """The launch contract lays out the arguments exactly so: pointers, int32 extras, null hidden pointers."""
    from topk_attention.launch import plugin_args

    class Ptr:
        def __init__(self, p: int) -> None:
            self.p = p

        def data_ptr(self) -> int:
            return self.p

    tensors = {"q_ptr": Ptr(0x1000), "k_ptr": Ptr(0x2000), "v_ptr": Ptr(0x3000), "o_ptr": Ptr(0x4000)}
    args = plugin_args(art_keep, tensors, batch=5)
    hidden = [("u64", 0)] * len(art_keep.hidden_params_detected)
    assert args == [("u64", 0x1000), ("u64", 0x2000), ("u64", 0x3000), ("i32", 20), ("u64", 0x4000)] + hidden
