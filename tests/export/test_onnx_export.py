"""Export -> ONNX Runtime round trips, each rewrite on its own, manifest, parity gate."""
import json
import os

import numpy as np
import pytest
import torch

from export.onnx_export import DEFAULT_REWRITES, REWRITES, ExportOptions, build_onnx
from export.pipeline import export_onnx
from moe_base.errors import ParityError
from moe_base.manifest import manifest_path, read_manifest
from moe_base.tolerances import get_tolerance
from moe_model import SmallViT
from moe_model.checkpoint import load_model
from runtime.ort_runner import OrtRunner
from runtime.parity import compare, parity_inputs

onnx = pytest.importorskip("onnx",
                            reason="exporting needs onnx: pip install 'moe-denoise[onnx]' (or the test extra)")


@pytest.fixture(scope="module")
def model(random_weights):
    return load_model(random_weights)


@pytest.fixture(scope="module")
def inputs():
    return parity_inputs(16, seed=5)


def torch_out(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def ort_out(proto, x):
    import onnxruntime as ort

    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"noisy": x})[0]


def assert_exact(out, ref):
    report = compare(ref, out, get_tolerance("ort", "fp32"))
    assert report.passed, report.summary()
    assert report.p99_abs < 2e-6 and report.mean_abs < 1e-6, report.summary()


@pytest.mark.parametrize("optimize", [False, True])
def test_portable_round_trip(model, inputs, optimize):
    proto = build_onnx(model, ExportOptions(optimize=optimize))
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"Expand", "GatherElements", "Gather", "ScatterElements"}, ops
    assert "TopK" in ops and all(n.domain in ("", None) for n in proto.graph.node)
    topk_nodes = [n for n in proto.graph.node if n.op_type == "TopK"]
    assert len(topk_nodes) == 2  # one sparse expert (k = 32 < N = 64) per block; k = 64, 128 are dense
    assert_exact(ort_out(proto, inputs), torch_out(model, inputs))


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
@pytest.mark.parametrize("opset", [17, 18, 19, 20, 21])
def test_every_offered_opset_exports_a_valid_graph(model, inputs, opset, flavor):
    """export --opset takes 17 to 21: each gives a graph the ONNX checker accepts at that opset (ReduceMin took its
    axes as an attribute, which opset 18 dropped: 18 to 21 failed), and the portable one runs exactly."""
    proto = build_onnx(model, ExportOptions(opset=opset, flavor=flavor))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {opset}
    # the IR version the opset came with, at least (opset 21 was written at IR 9; the checker does not notice)
    assert proto.ir_version >= onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)])
    if flavor == "portable":
        onnx.checker.check_model(proto, full_check=True)
        assert_exact(ort_out(proto, inputs), torch_out(model, inputs))
    else:  # the plugin node is not an ONNX operator: the checker cannot know its shape
        onnx.checker.check_model(proto)


def test_a_fixed_batch_export_says_so_in_its_manifest(model, random_weights, tmp_path):
    """ExportOptions(dynamic_batch=False) wrote a [1, 3, 32, 32] graph whose manifest said ["batch", 3, 32, 32];
    triton-repo then packaged it for dynamic batching. The manifest now has the graph's own first axis, and
    triton-repo refuses a fixed batch."""
    from moe_base.errors import InputError
    from serving.repo import check_onnx

    fixed, dynamic = tmp_path / "fixed.onnx", tmp_path / "dynamic.onnx"
    for path, dyn in ((fixed, False), (dynamic, True)):
        export_onnx(model, path, ExportOptions(dynamic_batch=dyn), weights_path=random_weights, parity_images=2,
                    log=lambda s: None)
    io = read_manifest(fixed)["io"]
    assert io["inputs"][0]["shape"] == io["outputs"][0]["shape"] == [1, 3, 32, 32]
    assert read_manifest(dynamic)["io"]["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    with pytest.raises(InputError, match="exported with a fixed batch of 1"):
        check_onnx(fixed)
    assert check_onnx(dynamic)


@pytest.mark.parametrize("options", [dict(), dict(rewrites=()), dict(rewrites=tuple(REWRITES)), dict(opset=18)])
def test_dynamic_batch(model, options):
    proto = build_onnx(model, ExportOptions(**options))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for b in (1, 3):
        assert ort_out(proto, parity_inputs(b)).shape == (b, 3, 32, 32)


def ort_version() -> tuple[int, ...]:
    import onnxruntime

    return tuple(int(part) for part in onnxruntime.__version__.split(".")[:2])


@pytest.mark.skipif(ort_version() < (1, 32), reason="ONNX Runtime before 1.32 cannot run an empty batch of this graph "
                    "(up to 1.30 the process dies of SIGFPE in a zero-size Reshape, 1.31 refuses a broadcast); the "
                    "runners here never send one (a batch must have B >= 1)")
@pytest.mark.parametrize("options", [dict(), dict(rewrites=()), dict(rewrites=tuple(REWRITES)), dict(opset=18)])
def test_an_empty_batch_runs_in_onnx_runtime(model, options):
    """An empty batch runs too, in ONNX Runtime alone (a direct user's or Triton's): the patch embedding's Reshape to
    [0, C, -1] left -1 undefined when the batch copied was 0 (every opset, unless rows2d reshaped it otherwise)."""
    proto = build_onnx(model, ExportOptions(**options))
    assert ort_out(proto, np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
def test_each_rewrite_alone_is_exact(model, inputs, rewrite):
    plain = build_onnx(model, ExportOptions(rewrites=()))
    rewritten = build_onnx(model, ExportOptions(rewrites=(rewrite,)))
    assert len(rewritten.graph.node) != len(plain.graph.node)  # the rewrite really changed the graph
    assert_exact(ort_out(rewritten, inputs), ort_out(plain, inputs))
    assert_exact(ort_out(rewritten, inputs), torch_out(model, inputs))


def test_merge_fold_algebra_needs_probabilities_summing_to_one():
    """merge(sum_e p_e (o_e W_e^T + b_e)) == sum_e p_e o_e (W_m W_e)^T + p @ (W_m b_e + b_m) iff sum_e p_e = 1."""
    rng = np.random.default_rng(0)
    e, c, n = 3, 8, 5
    o = rng.normal(size=(e, n, c))
    w, b = rng.normal(size=(e, c, c)), rng.normal(size=(e, c))
    wm, bm = rng.normal(size=(c, c)), rng.normal(size=c)
    for p, should_match in ((rng.dirichlet(np.ones(e), size=n), True), (rng.uniform(size=(n, e)), False)):
        direct = sum(p[:, i : i + 1] * (o[i] @ w[i].T + b[i]) for i in range(e)) @ wm.T + bm
        cat = np.concatenate([p[:, i : i + 1] * o[i] for i in range(e)], axis=1)
        folded = cat @ np.concatenate([wm @ w[i] for i in range(e)], axis=1).T + p @ np.stack([wm @ b[i] + bm
                                                                                                for i in range(e)])
        assert np.allclose(direct, folded, atol=1e-10) == should_match


def test_kv_bias_fold_algebra():
    """Top-k masked attention with keys K + b_k and values V + b_v equals the same attention on K, V plus b_v:
    the key bias shifts each query's scores by a constant (q . b_k), which keeps the top-k set and the softmax;
    softmax rows sum to 1, so the value bias comes out whole. A query bias has no such property."""
    rng = np.random.default_rng(1)
    n, d, k = 16, 8, 5
    q, key, v = rng.normal(size=(3, n, d))
    bq, bk, bv = rng.normal(size=(3, d))

    def attn(q, key, v):
        s = q @ key.T
        s = np.where(s < np.sort(s, axis=-1)[:, -k:][:, :1], -np.inf, s)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ v

    assert np.allclose(attn(q, key + bk, v + bv), attn(q, key, v) + bv, atol=1e-12)
    assert not np.allclose(attn(q + bq, key, v), attn(q, key, v), atol=1e-3)


def test_optimised_graph_is_smaller(model):
    assert len(build_onnx(model, ExportOptions()).graph.node) < len(build_onnx(model, ExportOptions(optimize=False)).graph.node)


def test_an_export_without_rewrites_is_said_and_recorded_as_not_optimised(model, tmp_path):
    """--rewrites '' (no rewrite) logged 'writing the portable graph (optimised, ...)' and recorded optimized: true
    beside rewrites: []."""
    lines: list[str] = []
    result = export_onnx(model, tmp_path / "m.onnx", ExportOptions(rewrites=()), parity_images=2, log=lines.append)
    assert result.manifest["onnx"]["rewrites"] == [] and result.manifest["onnx"]["optimized"] is False
    assert "(not optimised, fp32" in lines[0]
    default = export_onnx(model, tmp_path / "d.onnx", ExportOptions(), parity_images=2, log=lambda s: None)
    assert default.manifest["onnx"]["optimized"] is True


def test_export_writes_artifact_and_manifest(model, random_weights, tmp_path):
    out = tmp_path / "m.onnx"
    result = export_onnx(model, out, ExportOptions(), weights_path=random_weights, parity_images=8, log=lambda s: None)
    m = json.loads(manifest_path(out).read_text())
    assert m == read_manifest(out) == result.manifest
    assert m["kind"] == "onnx" and m["onnx"]["flavor"] == "portable" and m["onnx"]["opset"] == 17
    assert m["onnx"]["rewrites"] == list(DEFAULT_REWRITES)
    assert m["model"]["config"]["name"] == "seed" and m["model"]["parameters"] == 599_689
    assert len(m["model"]["weights_sha256"]) == 64 and len(m["artifact"]["sha256"]) == 64
    assert m["io"]["inputs"][0]["name"] == "noisy" and m["io"]["outputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert m["parity"]["passed"] and m["parity"]["num_images"] == 8 and m["tolerance"]["atol"] == 1e-4
    assert {"torch", "onnx", "onnxruntime", "exporter"} <= set(m["versions"])
    assert m["plugin"] is None
    with OrtRunner(out) as r:
        np.testing.assert_allclose(r(parity_inputs(4)), torch_out(model, parity_inputs(4)), atol=1e-4)


def test_parity_gate_refuses_a_corrupted_weight(model, tmp_path, monkeypatch):
    import export.pipeline as pipeline

    real = pipeline.export_graph

    def corrupted(m, opts):
        graph = real(m, opts)
        init = next(i for i in graph.proto.graph.initializer if "ffn.2.weight" in i.name)
        arr = onnx.numpy_helper.to_array(init).copy()
        arr[0, 0] += 0.5  # one wrong weight, as an exporter bug would produce
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return graph

    monkeypatch.setattr(pipeline, "export_graph", corrupted)
    out = tmp_path / "bad.onnx"
    out.write_bytes(b"previous artifact")  # an older artifact at the same path must survive
    with pytest.raises(ParityError, match="refusing to write") as info:
        export_onnx(model, out, ExportOptions(), parity_images=8, log=lambda s: None)
    assert not info.value.report.passed and "max abs" in str(info.value)
    assert out.read_bytes() == b"previous artifact" and not manifest_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]  # no temp files left


def test_seed_checkpoint_exports_and_matches_reference(seed_ckpt, seed_outputs, tmp_path):
    model = load_model(seed_ckpt, preset="seed")
    ref = np.load(seed_outputs)
    proto = build_onnx(model, ExportOptions())
    err = np.abs(ort_out(proto, ref["input"]) - ref["output"])
    assert err.max() <= 1e-4 and np.median(err) <= 1e-6


def test_residual_preset_exports(inputs):
    torch.manual_seed(0)
    model = SmallViT("residual").eval()
    assert_exact(ort_out(build_onnx(model, ExportOptions()), inputs), torch_out(model, inputs))


@pytest.mark.parametrize("flavor", ["portable", "plugin"])
def test_fp16_graph_keeps_io_fp32_and_norms_softmax_in_fp32(model, inputs, random_weights, tmp_path, flavor):
    from onnx import TensorProto

    if flavor == "plugin":  # the plugin node runs in ONNX Runtime through onnxruntime-extensions ([onnx] extra)
        pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed: "
                                                              "pip install 'moe-denoise[onnx]'")

    result = export_onnx(model, tmp_path / "h.onnx", ExportOptions(precision="fp16", flavor=flavor),
                         weights_path=random_weights, parity_images=8, log=lambda s: None)
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    for node in proto.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
    big = [i for i in proto.graph.initializer if len(i.dims) == 2 and min(i.dims) >= 64]
    assert big and all(i.data_type == TensorProto.FLOAT16 for i in big)  # GEMM weights are fp16
    assert result.manifest["precision"] == "fp16" and result.manifest["tolerance"]["min_psnr"] == 40.0
    with OrtRunner(result.path) as r:
        report = compare(torch_out(model, inputs), r(inputs), get_tolerance("ort", "fp16"))
    assert report.passed and report.psnr > 60, report.summary()


@pytest.mark.parametrize("preset", ["residual_refine", "residual_refine_feat"])
@pytest.mark.parametrize("optimize", [False, True])
def test_refine_preset_exports(inputs, optimize, preset):
    torch.manual_seed(0)
    model = SmallViT(preset).eval()
    torch.nn.init.normal_(model.refine[-1].weight, std=0.05)  # a non-trivial head
    assert_exact(ort_out(build_onnx(model, ExportOptions(optimize=optimize)), inputs), torch_out(model, inputs))


def test_a_file_that_appears_at_o_during_the_export_is_not_replaced_without_overwrite(random_weights, tmp_path,
                                                                                      monkeypatch):
    """'--overwrite: replace an existing file at -o (never done without it)': the check ran before the export, and a
    file another run (or the user) put at -o while the graph was checked was replaced in silence."""
    import export.pipeline as pipeline
    from moe_denoise.cli import main

    out = tmp_path / "m.onnx"
    real = pipeline.run_parity

    def meanwhile(*args, **kwargs):
        out.write_bytes(b"written meanwhile")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_parity", meanwhile)
    assert main(["export", "--weights", str(random_weights), "-o", str(out), "--parity-images", "2"]) == 2
    assert out.read_bytes() == b"written meanwhile" and not manifest_path(out).exists()
    assert main(["export", "--weights", str(random_weights), "-o", str(out), "--parity-images", "2",
                 "--overwrite"]) == 0
    assert read_manifest(out)["model"]["weights_file"] == str(random_weights)


def test_weights_given_by_a_relative_path_are_found_from_any_folder(random_weights, tmp_path, monkeypatch):
    """export --weights w.safetensors recorded 'w.safetensors' in the manifest: from any other folder, parity (and
    build) took the file for gone, compared the model with the shipped default and refused it ('pass --weights with
    the weights it was exported from'), and denoise said the weights had changed since."""
    import shutil

    from moe_denoise.cli import main
    from moe_model.checkpoint import sidecar_path

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(random_weights, project / "w.safetensors")
    shutil.copy(sidecar_path(random_weights), sidecar_path(project / "w.safetensors"))
    out = tmp_path / "m.onnx"
    monkeypatch.chdir(project)
    assert main(["export", "--weights", "w.safetensors", "-o", str(out), "--parity-images", "2"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["parity", "--backend", "ort", "--artifact", str(out), "-n", "2"]) == 0


def test_a_temporary_folder_that_cannot_take_the_graph_is_said_in_one_line(random_weights, tmp_path, monkeypatch,
                                                                            capsys):
    """The graph under test is written to the temporary folder for the parity run: a full /tmp (or a file-size
    limit) ended the export with an OSError traceback (exit 1), as if a bug."""
    import errno
    from pathlib import Path

    import export.pipeline as pipeline
    from moe_denoise.cli import main

    real = Path.write_bytes

    def full(self, data):
        if self.parent != tmp_path:  # the candidate, in the temporary folder
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(pipeline.Path, "write_bytes", full)
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(random_weights), "-o", str(out), "--parity-images", "2"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "TMPDIR" in err and "Traceback" not in err and not out.exists()


def test_the_graph_under_test_is_in_a_scratch_folder_that_a_killed_exports_next_run_removes(model, tmp_path,
                                                                                           monkeypatch):
    """The parity run's copy of the graph was in a tempfile 'tmpXXXXXXXX' folder: an export killed during its parity
    check (kill -9, the OOM killer) left it in the temporary folder for good. It is now a named scratch folder; the
    next export removes the ones killed exports left, and its own."""
    import tempfile

    import export.pipeline as pipeline

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    left = scratch / ".moe-denoise-export.4194303.0badcafe.scratch"  # beyond the largest pid: killed
    left.mkdir()
    (left / "m.onnx").write_bytes(b"a killed export's graph")
    seen = []
    real = pipeline.run_parity

    def parity(candidate, *args, **kwargs):
        seen.append(candidate)
        assert candidate.exists()
        return real(candidate, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_parity", parity)
    export_onnx(model, tmp_path / "m.onnx", ExportOptions(), parity_images=2, log=lambda s: None)
    assert seen and seen[0].parent.name.startswith(f".moe-denoise-export.{os.getpid()}.")
    assert list(scratch.iterdir()) == []


def test_a_graph_this_onnx_runtime_cannot_load_is_said_as_such_by_export(model, tmp_path, monkeypatch):
    """export --opset 21 with ONNX Runtime 1.17 ('Opset 21 is under development') failed with 'ONNX Runtime cannot
    load /tmp/.../m.onnx ...; re-export it with moe-denoise export', from inside that export."""
    import onnxruntime

    from moe_base.errors import ArtifactError

    def refuse(*args, **kwargs):
        raise RuntimeError("Opset 21 is under development and support for this is limited")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    out = tmp_path / "m.onnx"
    with pytest.raises(ArtifactError) as e:
        export_onnx(model, out, ExportOptions(opset=21), parity_images=2, log=lambda s: None)
    said = str(e.value)
    assert f"ONNX Runtime {onnxruntime.__version__} cannot load the exported graph (opset 21)" in said
    assert "Opset 21 is under development" in said and "lower --opset" in said and "re-export" not in said
    assert not out.exists()
