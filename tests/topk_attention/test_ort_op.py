"""The plugin-flavoured graph: custom nodes wired as the TensorRT plugin expects, run in ONNX Runtime with the
node served by the reference operator, and checked against PyTorch."""
import numpy as np
import pytest
import torch

from export.onnx_export import ExportOptions, build_onnx
from export.pipeline import export_onnx
from moe_base.tolerances import get_tolerance
from moe_model import ModelConfig, SmallViT
from moe_model.checkpoint import load_model
from runtime.ort_runner import OrtRunner
from runtime.parity import compare, parity_inputs
from topk_attention.spec import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

onnx = pytest.importorskip("onnx", reason="the plugin graph is written with onnx: pip install 'moe-denoise[onnx]' (or "
                                           "the test extra)")
pytest.importorskip("onnxruntime_extensions", reason="the plugin graph runs in ORT through onnxruntime-extensions")


def plugin_nodes(proto):
    return [n for n in proto.graph.node if n.op_type == PLUGIN_NAME]


@pytest.mark.parametrize("optimize", [True, False])
def test_plugin_graph_structure(random_weights, optimize):
    model = load_model(random_weights)
    proto = build_onnx(model, ExportOptions(flavor="plugin", optimize=optimize))
    onnx.checker.check_model(proto, full_check=True)
    nodes = plugin_nodes(proto)
    assert len(nodes) == 2  # the k = 32 expert of each block; k = 64 and 128 are dense at N = 64
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert n.domain == PLUGIN_NAMESPACE
        assert attrs["plugin_namespace"] == PLUGIN_NAMESPACE.encode() and attrs["plugin_version"] == PLUGIN_VERSION.encode()
        assert attrs["topk"] == 32 and attrs["aot"] == 1
        assert attrs["scale"] == pytest.approx(1.0 if optimize else 1 / np.sqrt(32))
    assert "TopK" not in {n.op_type for n in proto.graph.node}  # no standard-op sparse path left
    assert any(o.domain == PLUGIN_NAMESPACE for o in proto.opset_import)


def test_plugin_graph_parity_in_onnxruntime(random_weights, tmp_path, capsys):
    model = load_model(random_weights)
    path = tmp_path / "plugin.onnx"
    result = export_onnx(model, path, ExportOptions(flavor="plugin"), weights_path=random_weights, parity_images=8,
                         log=lambda s: None)
    assert result.manifest["plugin"]["id"] == f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
    assert len(result.manifest["plugin"]["nodes"]) == 2
    x = parity_inputs(12, seed=9)
    with OrtRunner(path) as runner:
        out = runner(x)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    report = compare(ref, out, get_tolerance("ort", "fp32"))
    assert report.passed and report.mean_abs < 1e-6, report.summary()
    # the runner says its plugin nodes run as the slow Python reference (its label alone said 'ort-cpu'), and
    # denoise passes that on as a note
    from PIL import Image

    from moe_denoise.cli import main
    from runtime.ort_runner import PLUGIN_REFERENCE_NOTE

    assert runner.describe()["plugin_nodes"] == PLUGIN_REFERENCE_NOTE
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    assert main(["denoise", str(photo), "-o", str(tmp_path / "out.png"), "--backend", "ort", "--artifact", str(path),
                 "--no-progress", "--json"]) == 0
    import json

    assert PLUGIN_REFERENCE_NOTE in json.loads(capsys.readouterr().out)["notes"]


def test_patch_size_2_makes_every_expert_sparse():
    torch.manual_seed(0)
    model = SmallViT(ModelConfig(patch_size=2, name="p2")).eval()  # N = 256: k = 32, 64, 128 all < N
    proto = build_onnx(model, ExportOptions(flavor="plugin"))
    assert len(plugin_nodes(proto)) == 6
    import onnxruntime as ort

    from topk_attention.ort_op import register_reference_op, relabel_for_ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(register_reference_op())
    session = ort.InferenceSession(relabel_for_ort(proto).SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = parity_inputs(2)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    report = compare(ref, session.run(None, {"noisy": x})[0], get_tolerance("ort", "fp32"))
    assert report.passed, report.summary()


@pytest.mark.parametrize("attrs, found", [({"topk": 0, "scale": 1.0}, "topk 0"), ({"topk": 4}, "scale None"),
                                          ({"topk": 4, "scale": float("inf")}, "scale inf")])
def test_a_hand_made_plugin_node_the_op_cannot_run_is_refused_before_the_session(attrs, found):
    """An error inside the Python op aborted the whole process (onnxruntime-extensions: 'terminate called after
    throwing pybind11::error_already_set'), and a missing scale was ORT's 'Unable to find attribute': refused when
    the graph is prepared for ONNX Runtime, naming the node."""
    from moe_base.errors import ArtifactError
    from topk_attention.ort_op import relabel_for_ort

    node = onnx.helper.make_node(PLUGIN_NAME, ["q", "k", "v"], ["o"], name="hand_made", domain=PLUGIN_NAMESPACE,
                                 plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION, aot=1, **attrs)
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 8, 4]) for n in "qkvo"]
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", io[:3], io[3:]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17),
                                                  onnx.helper.make_opsetid(PLUGIN_NAMESPACE, 1)])
    with pytest.raises(ArtifactError, match=rf"the {PLUGIN_NAME} node 'hand_made' has {found}"):
        relabel_for_ort(model)


@pytest.mark.parametrize("scale", [1 / np.sqrt(32), 0.123456789, 0.0123456789])
def test_the_plugin_node_runs_with_its_scale_exactly(scale):
    """onnxruntime-extensions gives a FLOAT attribute to the Python op as text with 6 significant digits: the node's
    scale 1/sqrt(32) ran as 0.176777, off by 2e-6 relative (7e-6 max abs on logits of about 10, which grows with
    them), in the plugin graph of 'export --no-optimize'. The op now computes what the reference computes, bitwise."""
    import onnxruntime as ort

    from moe_model.attention import sparse_topk_attention
    from topk_attention.ort_op import register_reference_op, relabel_for_ort

    shape = [2, 2, 16, 8]
    node = onnx.helper.make_node(PLUGIN_NAME, ["q", "k", "v"], ["o"], name="n", domain=PLUGIN_NAMESPACE, topk=5,
                                 scale=float(scale), plugin_namespace=PLUGIN_NAMESPACE, plugin_version=PLUGIN_VERSION,
                                 aot=1)
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in "qkvo"]
    model = onnx.helper.make_model(onnx.helper.make_graph([node], "g", io[:3], io[3:]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17),
                                                  onnx.helper.make_opsetid(PLUGIN_NAMESPACE, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(register_reference_op())
    session = ort.InferenceSession(relabel_for_ort(model).SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal(shape).astype(np.float32) * 10 for _ in range(3))
    out = session.run(None, {"q": q, "k": k, "v": v})[0]
    ref = sparse_topk_attention(*(torch.from_numpy(x) for x in (q, k, v)), 5, scale=float(np.float32(scale)))
    np.testing.assert_array_equal(out, ref.numpy())


def test_shared_fp16_inputs_and_a_node_without_its_optional_attributes_run_in_onnxruntime():
    """An fp16 plugin node reading one tensor as q, k and v (or two nodes reading it: graphs merged by onnxsim) got
    one Cast a use, all named 'x__as_fp32': a duplicate name ONNX Runtime refused. A node without 'aot',
    'plugin_version' or 'plugin_namespace' (TensorRT's parser does without) failed with 'Unable to find attribute
    'aot'', naming no node."""
    import onnxruntime as ort

    from moe_model.attention import sparse_topk_attention
    from topk_attention.ort_op import register_reference_op, relabel_for_ort

    shape = [1, 2, 8, 4]
    first = onnx.helper.make_node(PLUGIN_NAME, ["x", "x", "x"], ["a"], name="first", domain=PLUGIN_NAMESPACE, topk=3,
                                  scale=0.5)
    second = onnx.helper.make_node(PLUGIN_NAME, ["x", "a", "x"], ["b"], name="second", domain=PLUGIN_NAMESPACE,
                                   topk=2, scale=0.25, plugin_namespace=PLUGIN_NAMESPACE,
                                   plugin_version=PLUGIN_VERSION, aot=1)
    io = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT16, shape) for n in ("x", "b")]
    a_info = onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT16, shape)
    model = onnx.helper.make_model(onnx.helper.make_graph([first, second], "g", io[:1], io[1:], value_info=[a_info]),
                                   opset_imports=[onnx.helper.make_opsetid("", 17),
                                                  onnx.helper.make_opsetid(PLUGIN_NAMESPACE, 1)])
    relabelled = relabel_for_ort(model)
    outputs = [o for n in relabelled.graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))
    so = ort.SessionOptions()
    so.register_custom_ops_library(register_reference_op())
    session = ort.InferenceSession(relabelled.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float16)
    got = session.run(None, {"x": x})[0]
    xt = torch.from_numpy(x.astype(np.float32))
    a = sparse_topk_attention(xt, xt, xt, 3, scale=0.5).half().float()
    want = sparse_topk_attention(xt, a, xt, 2, scale=0.25).half().numpy()
    np.testing.assert_array_equal(got, want)


def test_the_reference_op_is_registered_once_when_threads_race(monkeypatch, in_threads):
    """Two runners activated at once in two threads both registered the op: every plugin-graph session of the process
    then failed ('Conflicting with a registered kernel'), reported as an artifact to re-export."""
    import time

    import topk_attention.ort_op as ort_op

    registered = []
    monkeypatch.setattr(ort_op, "_REGISTERED", False)
    monkeypatch.setattr(ort_op, "_register_op", lambda: (time.sleep(0.05), registered.append(1)))
    assert in_threads(ort_op.register_reference_op, 4) == [] and registered == [1]


@pytest.fixture(scope="module")
def plugin_graph(random_weights, tmp_path_factory):
    """A plugin-flavoured ONNX model of the random weights, exported once for the tests below."""
    path = tmp_path_factory.mktemp("plugin") / "plugin.onnx"
    export_onnx(load_model(random_weights), path, ExportOptions(flavor="plugin"), weights_path=random_weights,
                parity_images=2, log=lambda s: None)
    return path


def run_in_child(script: str, path, timeout: int):
    """``script`` run by a new Python from the repository root with ``path`` as its argument (a Ctrl-C there stays
    there)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    return subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, cwd=repo,
                          timeout=timeout)


CTRL_C_IN_THE_OP = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
import moe_model.attention as attention
real, pressed = attention.sparse_topk_attention, []
def pressing_ctrl_c(*args, **kwargs):  # Ctrl-C arrives while the plugin node's Python op runs inside ONNX Runtime
    if not pressed:
        pressed.append(1)
        signal.raise_signal(signal.SIGINT)
    return real(*args, **kwargs)
attention.sparse_topk_attention = pressing_ctrl_c
from runtime.ort_runner import OrtRunner
from runtime.parity import parity_inputs
try:
    with OrtRunner(sys.argv[1]) as runner:
        runner(parity_inputs(4))
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
print("not interrupted")
"""


def test_ctrl_c_inside_the_plugin_op_stops_the_run_cleanly(plugin_graph):
    """A Ctrl-C or SIGTERM that reached Python while the plugin graph's Python op ran inside ONNX Runtime raised
    through its C++ frames: 'terminate called after throwing pybind11::error_already_set', SIGABRT, no message, and
    the export's temporary folder left behind (export --flavor plugin, parity / denoise --backend ort on a plugin
    graph). The run now finishes the call it is in, then stops as Ctrl-C stops it."""
    done = run_in_child(CTRL_C_IN_THE_OP, plugin_graph, timeout=300)
    assert (done.returncode, done.stdout.strip()) == (130, "interrupted"), done.stderr[-2000:]


CTRL_C_IN_A_LARGE_BATCH = """
import os, signal, sys
import numpy as np
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
import moe_model.attention as attention
real, rows = attention.sparse_topk_attention, []
def pressing_ctrl_c(q, *args, **kwargs):  # Ctrl-C (three times) while the first plugin op of the run computes
    if not rows:
        for _ in range(3):
            signal.raise_signal(signal.SIGINT)
    rows.append(int(q.shape[0]))
    return real(q, *args, **kwargs)
from runtime.ort_runner import OrtRunner
from runtime.parity import parity_inputs
with OrtRunner(sys.argv[1], check_manifest=False) as runner:
    x = np.resize(parity_inputs(8), (1024, 3, 32, 32)).astype(np.float32)
    attention.sparse_topk_attention = pressing_ctrl_c
    try:
        runner(x)
    except KeyboardInterrupt:
        attention.sparse_topk_attention = real
        rows_seen = sum(rows)
        rows.clear()
        attention.sparse_topk_attention = lambda q, *a, **k: (rows.append(int(q.shape[0])), real(q, *a, **k))[1]
        runner._run_session(x)  # the whole batch, for its count of rows
        print(rows_seen, sum(rows))
        sys.exit(130)
print("not interrupted")
"""


def test_ctrl_c_during_a_large_plugin_batch_stops_it_before_the_whole_batch_is_computed(plugin_graph):
    """The plugin graph's call holds Ctrl-C / SIGTERM until it returns: one call of a large batch (denoise
    --batch-size 4096, or runner(x) on many tiles; about 4 ms a tile on a CPU) could not be stopped at all, however
    often Ctrl-C was pressed, until every tile was computed. The call runs in chunks, each held on its own: a stop
    comes after the chunk it arrives in."""
    done = run_in_child(CTRL_C_IN_A_LARGE_BATCH, plugin_graph, timeout=600)
    assert done.returncode == 130, (done.stdout, done.stderr[-2000:])
    seen, whole = map(int, done.stdout.split())
    assert seen <= whole // 4, f"{seen} of the batch's {whole} attention rows were computed after the Ctrl-C"


def test_a_plugin_graph_offers_no_device_only_call(plugin_graph):
    """bench's compute-only path (device_callable, on a GPU provider) ran the session bare: a Ctrl-C inside the plugin
    graph's Python op aborted the process there. Its attention runs on the host anyway: no device-only call."""
    with OrtRunner(plugin_graph) as runner:
        assert runner.plugin_reference
        runner.provider = "cuda"  # as on a GPU machine: the path that binds the input on the device
        assert runner.device_callable(parity_inputs(2)) is None
