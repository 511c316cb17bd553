"""Runner protocol: input validation, chunking, lifecycle, missing backends, manifest checks."""
import json
import subprocess
import sys

import numpy as np
import pytest

from moe_base.errors import ArtifactError, ArtifactMismatchError
from moe_base.manifest import manifest_path
from moe_base.optional import require
from runtime import BaseRunner, InputError, MissingBackendError, OrtRunner, validate_batch


class Doubler(BaseRunner):
    backend = "test"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def _infer_impl(self, x):
        self.calls.append(len(x))
        return x * 0.5


GOOD = np.full((2, 3, 32, 32), 0.5, np.float32)


@pytest.mark.parametrize("bad,match", [
    ([[0.5]], r"must be a numpy array, got list; convert it with np.asarray\(x, dtype=np.float32\) \(B x 3 x 32 x 32\)"),
    (GOOD.astype(np.float64), "dtype float64; this runner expects float32"),
    (np.zeros((3, 32, 32), np.float32), r"shape \[3, 32, 32\]; expected \[B, 3, 32, 32\]"),
    (np.zeros((2, 32, 32, 3), np.float32), r"shape \[2, 32, 32, 3\]"),
    (np.zeros((0, 3, 32, 32), np.float32), "B >= 1"),
    (np.full((1, 3, 32, 32), np.nan, np.float32), "3072 NaN/Inf values"),
    (np.full((1, 3, 32, 32), 255, np.float32), r"values in \[255, 255\] \(3,072 outside \[0, 1\]\); expected \[0, 1\]"),
    (np.full((1, 3, 32, 32), -0.1, np.float32), "expected"),
])
def test_validation_errors(bad, match):
    with pytest.raises(InputError, match=match):
        validate_batch(bad)


def test_infer_feeds_names_chunking_and_lifecycle():
    r = Doubler(max_batch=3)
    with pytest.raises(RuntimeError, match="not active"):
        r.infer(GOOD)
    with r:
        x = np.full((7, 3, 32, 32), 0.5, np.float32)
        out = r.infer({"noisy": x})["denoised"]
        assert out.shape == x.shape and float(out.max()) == 0.25
        assert r.calls == [3, 3, 1]
        with pytest.raises(InputError, match=r"one input named 'noisy'; got \['image'\]"):
            r.infer({"image": x})
        np.testing.assert_array_equal(r(GOOD), GOOD * 0.5)
    assert not r.is_active


def test_a_runner_used_outside_its_activation_raises_a_toolkit_error():
    """It was a bare RuntimeError, which 'except runtime.ToolkitError' (the root of every error raised on purpose)
    let through; it is still a RuntimeError for callers that catch that."""
    import runtime

    r = Doubler()
    with pytest.raises(runtime.ToolkitError, match=r"runner 'test' is not active: use 'with runner:'"):
        r(GOOD)
    with r:
        r(GOOD)
    with pytest.raises(runtime.NotActiveError):  # after its release
        r(GOOD)
    assert issubclass(runtime.NotActiveError, RuntimeError)


def test_fp16_accepted_only_when_declared():
    with Doubler(input_dtypes=(np.float16,)) as r:
        assert r(GOOD.astype(np.float16)).dtype == np.float16
        with pytest.raises(InputError, match="expects float16"):
            r(GOOD)


def test_require_names_the_package_and_extra():
    if _has("tensorrt"):
        pytest.skip("tensorrt is installed here, so it cannot be reported missing")
    with pytest.raises(MissingBackendError, match=r"building engines needs the Python package 'tensorrt'.*moe-denoise\[trt\]"):
        require("tensorrt", "building engines")


def _has(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


def test_import_runtime_and_export_without_optional_backends():
    """`import runtime` / `import export` work with tensorrt, onnxruntime, triton and torch blocked."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'onnxruntime', 'triton', 'torch', 'cupy', 'onnx'):\n"
        "            raise ImportError('blocked for the test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import runtime, export, runtime.tiling, runtime.images, runtime.photo, moe_base.manifest\n"
        "from runtime import TorchRunner, OrtRunner\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'tensorrt', 'triton')))\n"
        "try:\n"
        "    OrtRunner('x.onnx').activate()\n"
        "except runtime.MissingBackendError as e:\n"
        "    print('MISSING', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == "[]"
    assert "MISSING" in out and "onnxruntime" in out and "moe-denoise[onnx]" in out


def test_ort_runner_refuses_bad_artifacts(tmp_path, random_weights):
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model
    from runtime.ort_runner import OrtRunner

    with pytest.raises(ArtifactError, match="does not exist"):
        OrtRunner(tmp_path / "none.onnx").activate()
    path = tmp_path / "m.onnx"
    export_onnx(load_model(random_weights), path, ExportOptions(), parity_images=4, log=lambda s: None)
    with pytest.raises(ArtifactError, match=r"m\.onnx\.manifest\.json is the manifest of m\.onnx, not the model "
                                            r"itself: pass .*m\.onnx$"):  # it said "...manifest.json.manifest.json"
        OrtRunner(tmp_path / "m.onnx.manifest.json").activate()
    with pytest.raises(InputError, match="unknown ONNX Runtime provider"):
        OrtRunner(path, provider="rocm")
    with pytest.raises(MissingBackendError, match="CUDAExecutionProvider was asked for"):
        OrtRunner(path, provider="cuda").activate()
    data = path.read_bytes()
    path.write_bytes(data[:-100])  # truncated
    with pytest.raises(ArtifactError, match="truncated"):
        OrtRunner(path).activate()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, one bit flipped
    with pytest.raises(ArtifactMismatchError, match="does not match its manifest"):
        OrtRunner(path).activate()
    path.write_bytes(data)
    m = json.loads(manifest_path(path).read_text())
    manifest_path(path).unlink()
    with pytest.raises(ArtifactError, match="has no manifest"):
        OrtRunner(path).activate()
    with OrtRunner(path, check_manifest=False, threads=1, opt_level="basic") as r:
        assert r(GOOD).shape == GOOD.shape
        # an idle session's threads stop spinning when a run returns (they would steal other work's cores)
        assert r.session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    assert m["artifact"]["bytes"] == len(data)


def test_a_model_replaced_while_its_runner_checks_it_is_not_loaded_under_the_old_manifest(tmp_path, random_weights,
                                                                                          monkeypatch):
    """The ORT runner checked the file against its manifest, then read it again to load it: an export that replaced
    the model in between had it loaded under the old manifest, and its self-check refused it ('re-export it'). The
    bytes checked are now the bytes loaded."""
    import os
    import shutil

    import torch

    import moe_base.manifest as mm
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model import SmallViT
    from moe_model.checkpoint import load_model

    torch.manual_seed(1)
    models = {"a": load_model(random_weights), "b": SmallViT("seed").eval()}
    for name, model in models.items():
        export_onnx(model, tmp_path / f"{name}.onnx", ExportOptions(), parity_images=2, log=lambda s: None)
    target = tmp_path / "m.onnx"
    shutil.copy(tmp_path / "a.onnx", target)
    shutil.copy(manifest_path(tmp_path / "a.onnx"), manifest_path(target))
    real, replaced = mm.check_artifact_file, []

    def then_an_export_replaces_it(*args, **kwargs):
        real(*args, **kwargs)
        if not replaced:  # as an export does: the model, then its manifest, each renamed into place
            replaced.append(True)
            for source, dest in ((tmp_path / "b.onnx", target), (manifest_path(tmp_path / "b.onnx"), manifest_path(target))):
                shutil.copy(source, tmp_path / "staged")
                os.replace(tmp_path / "staged", dest)

    monkeypatch.setattr(mm, "check_artifact_file", then_an_export_replaces_it)
    with OrtRunner(target) as r:
        got = r(GOOD)
    assert replaced
    monkeypatch.setattr(mm, "check_artifact_file", real)
    with OrtRunner(tmp_path / "a.onnx") as a, OrtRunner(tmp_path / "b.onnx") as b:
        np.testing.assert_array_equal(got, a(GOOD))  # the model that was checked
        assert np.abs(a(GOOD) - b(GOOD)).max() > 1e-3  # and the two models differ


def test_torch_runner(random_weights):
    from runtime.torch_runner import TorchRunner

    with pytest.raises(InputError, match="needs weights"):
        TorchRunner()
    with TorchRunner(random_weights, impl="gather", max_batch=2) as r:
        out = r(np.full((3, 3, 32, 32), 0.5, np.float32))
        assert out.shape == (3, 3, 32, 32) and out.dtype == np.float32
    with pytest.raises(MissingBackendError, match="'no-such-impl' is not available; available: masked, gather"):
        TorchRunner(random_weights, impl="no-such-impl").activate()


def test_a_read_only_batch_is_denoised_without_a_warning(random_weights):
    """A read-only batch (np.broadcast_to, a frozen array) given to a TorchRunner printed PyTorch's 'The given NumPy
    array is not writable' warning on every call."""
    import warnings

    from runtime.torch_runner import TorchRunner

    batch = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    frozen = batch.copy()
    frozen.flags.writeable = False
    with TorchRunner(random_weights) as r, warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(r(frozen), r(batch))


def test_a_model_given_to_torch_runners_is_left_as_it_was(random_weights):
    """The runner put the caller's model in eval mode and set its attention impl in place: a model being trained
    stayed in eval mode, and of two runners sharing one model both ran the impl activated last while each
    described its own (a 'masked' vs 'gather' comparison compared gather with itself)."""
    from moe_model.checkpoint import load_model
    from runtime.torch_runner import TorchRunner

    model = load_model(random_weights).train()
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    impls = lambda m: {e.impl for blk in m.blocks for e in blk.attn.experts}  # noqa: E731
    with TorchRunner(model=model, impl="masked") as masked, TorchRunner(model=model, impl="seed") as seed:
        assert impls(masked.model) == {"masked"} and impls(seed.model) == {"seed"}
        assert masked(x).shape == seed(x).shape == x.shape
    assert model.training and impls(model) == {"masked"}
    with pytest.raises(InputError, match=r"model= is a SmallViT .*got str\. Weights by file or name go to weights="):
        TorchRunner(model="blind")


def test_torch_runner_runs_in_true_fp32_and_restores_the_callers_tf32_settings(random_weights):
    """cuDNN convolutions default to TF32 in PyTorch; the runner turns it off for its calls only."""
    import torch

    from runtime.torch_runner import TorchRunner

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    seen = []
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        with TorchRunner(random_weights) as r:
            r.model.register_forward_pre_hook(lambda *_: seen.append((cudnn.allow_tf32, matmul.allow_tf32)))
            r(np.full((2, 3, 32, 32), 0.5, np.float32))
            r.forward_on_device(torch.full((2, 3, 32, 32), 0.5))
        assert seen == [(False, False), (False, False)]  # end-to-end, then the device-resident call
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_overlapping_calls_in_two_threads_keep_tf32_off_and_give_the_callers_setting_back():
    """Each call saved the TF32 flags and put back what it saved: two threads interleaving (the server's tile and
    image models do) restored each other's values, so a forward ran with TF32 on and the caller's setting ended off."""
    import threading

    import torch

    from runtime.torch_runner import _no_tf32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with _no_tf32(torch):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with _no_tf32(torch):
            b_in.set()
            a_out.wait(10)  # A has left its block; B's forward is still running
            seen["b after a left"] = (cudnn.allow_tf32, matmul.allow_tf32)

    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = True
        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert seen["b after a left"] == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_a_tf32_setting_the_caller_makes_during_a_call_is_kept():
    """A caller that opted in to TF32 (for its own work) while another thread's forward ran had it put back to the
    value saved before the call: its choice was undone. A value other than the call's own is the caller's: kept."""
    import torch

    from runtime.torch_runner import _no_tf32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
        with _no_tf32(torch):
            cudnn.allow_tf32 = matmul.allow_tf32 = True  # the caller, in another thread, mid-call
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        with _no_tf32(torch):  # and untouched, the saved value comes back
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_nested_and_overlapping_with_blocks_share_one_activation():
    """An inner 'with runner:' (a helper's) released the runner for the outer block, and a call in one thread that
    ended released the runner another thread was still using: 'runner is not active'."""
    import threading

    r = Doubler()
    with r:
        with r:
            pass
        np.testing.assert_array_equal(r(GOOD), GOOD * 0.5)  # still active after the inner block
    assert not r.is_active
    r.activate()  # activated by hand: a with block around it leaves it active
    with r:
        pass
    assert r.is_active
    r.deactivate()

    inside, leave = threading.Event(), threading.Event()

    def long_call():
        with r:
            inside.set()
            leave.wait(10)
            r(GOOD)

    t = threading.Thread(target=long_call)
    t.start()
    inside.wait(10)
    with r:  # a short call in this thread ends while the other is inside its block
        r(GOOD)
    assert r.is_active
    leave.set()
    t.join(10)
    assert not r.is_active and r.calls == [2, 2, 2]


def test_a_torch_runners_threads_are_given_back_when_it_is_released(random_weights, tmp_path):
    """TorchRunner(threads=N) set torch's process-wide thread count and left it so for the rest of the process; two
    runners released in the order they were made gave back the first one's count; a failed activation gave back
    nothing."""
    import torch

    from moe_base.errors import CheckpointError
    from runtime.torch_runner import TorchRunner

    before = torch.get_num_threads()
    one, other = (1, 3) if before != 1 else (2, 3)  # each differs from the caller's count, on any machine
    a, b = TorchRunner(random_weights, threads=one), TorchRunner(random_weights, threads=other)
    a.activate()
    assert torch.get_num_threads() == one
    b.activate()
    a.deactivate()
    b.deactivate()
    assert torch.get_num_threads() == before
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not weights")
    with pytest.raises(CheckpointError), TorchRunner(broken, threads=one, preset="seed"):
        pass
    assert torch.get_num_threads() == before


def test_psnr_from_mse_is_the_one_formula():
    from moe_base.metrics import psnr_from_mse

    assert psnr_from_mse(0.0) == float("inf")
    assert psnr_from_mse(1e-4) == pytest.approx(40.0)
    assert psnr_from_mse(4.0, peak=2.0) == pytest.approx(0.0)


def test_a_weights_file_and_a_model_file_given_to_the_wrong_backend_are_named(tmp_path, random_weights):
    """Weights to OrtRunner: 'a weights file', with the export command and --backend torch (not 'has no
    manifest, re-export it'); an ONNX model or an engine to TorchRunner: 'not weights', with the backend that runs
    it (not torch.load's unpickling error)."""
    from moe_base.errors import CheckpointError
    from runtime import OrtRunner, TorchRunner

    with pytest.raises(ArtifactError, match=r"is a weights file, not an ONNX model or a TensorRT engine: export it "
                                            r"with 'moe-denoise export --weights .*', or run it with --backend torch "
                                            r"\(--weights .*; in Python runtime\.TorchRunner\('.*'\)\)$"):
        OrtRunner(random_weights).activate()
    for name, backend, runner in (("m.onnx", "ort", "OrtRunner"), ("m.engine", "trt", "TensorRTRunner"),
                                  ("m.trt", "trt", "TensorRTRunner")):  # .trt went to torch.load
        (tmp_path / name).write_bytes(b"\x08\x07not really")
        with pytest.raises(CheckpointError, match=f"is an? .*, not weights \\(.safetensors or .pt\\)\\. To run the "
                                                  f"model itself: --backend {backend} --artifact .* \\(denoise, parity, serve; "
                                                  f"in Python runtime\\.{runner}\\('.*{name}'\\)\\)$"):
            TorchRunner(tmp_path / name).activate()
    from moe_base.manifest import SCHEMA, write_artifact

    write_artifact(tmp_path / "made.onnx", b"model", {"schema": SCHEMA, "artifact": {"sha256": "0" * 64, "bytes": 5},
                                                      "model": {"weights_file": "weights/blind.safetensors"}})
    with pytest.raises(CheckpointError, match="it was made from weights/blind.safetensors: pass that with --weights"):
        TorchRunner(tmp_path / "made.onnx").activate()


def test_the_library_takes_shipped_weights_by_name_as_the_commands_do(tmp_path, monkeypatch):
    """'sigma20' is a name the commands' --weights takes; TorchRunner takes it too (one resolve_weights for both),
    and a name that is neither a file nor shipped is told the names there are."""
    import torch

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_model
    from runtime import TorchRunner
    from weights import SHIPPED

    monkeypatch.chdir(tmp_path)  # no file of that name here
    runner = TorchRunner("sigma20")
    runner.activate()
    expected = load_model(SHIPPED["sigma20"]).state_dict()
    got = runner.model.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    with pytest.raises(CheckpointError, match=r"weights sigma25: no such file, and not the name of shipped weights "
                                              r"\(blind, sigma20\)"):
        TorchRunner("sigma25")  # refused when made (it was when first used)


def test_unreadable_weights_are_explained_without_torchs_advice(tmp_path):
    """A .pt that pickles other objects is refused as such, and torch's advice (weights_only=False: run the file's
    code) is not passed on; a file that is no pickle at all is said to be one torch.save did not write."""
    import torch

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_state_dict

    torch.save({"w": np.zeros(3)}, tmp_path / "objects.pt")
    with pytest.raises(CheckpointError) as e:
        load_state_dict(tmp_path / "objects.pt")
    assert "holds objects other than tensors, and loading those could run code (refused)" in str(e.value)
    assert "weights_only" not in str(e.value)
    (tmp_path / "text.pt").write_text("# not weights\n")
    with pytest.raises(CheckpointError, match=r"text\.pt: it is not a file torch\.save wrote \(.+\)\. Pass a "):
        load_state_dict(tmp_path / "text.pt")


def test_weights_that_do_not_fit_the_preset_name_their_own(random_weights, tmp_path):
    """--preset other than the architecture the sidecar names is refused, naming it (leave --preset out), also when
    the tensors fit: seed weights ran as 'residual' (same tensors, other computation) and scored 8.48 dB against 7.53
    without a word. Without a sidecar, torch's list of every mismatched tensor is cut to its first line and the
    presets they fit are named."""
    import shutil

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_model

    for other in ("residual_refine_wide", "residual"):  # the tensors do not fit; they do
        with pytest.raises(CheckpointError, match=r"were made for the 'seed' architecture \(their random\.json says "
                                                  rf"so\), and --preset {other} is another one: .* Leave --preset out "
                                                  r"\(preset=None in Python\)"):
            load_model(random_weights, preset=other)
    assert load_model(random_weights, preset="seed").config.name == "seed"  # the sidecar's own: fine
    bare = tmp_path / "bare.safetensors"
    shutil.copy(random_weights, bare)  # no sidecar
    with pytest.raises(CheckpointError) as e:
        load_model(bare, preset="residual_refine_wide")
    assert "do not fit the 'residual_refine_wide' architecture (" in str(e.value)
    assert "size mismatch for" not in str(e.value)


def test_a_preset_other_than_the_artifact_manifest_s_architecture_is_refused(random_weights, tmp_path):
    """parity --artifact seed.onnx --preset residual built the reference as 'residual' (the weights, the seed
    checkpoint, have no sidecar) and blamed the ONNX model: FAIL at 7.5 dB."""
    import shutil

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_model

    bare = tmp_path / "bare.safetensors"
    shutil.copy(random_weights, bare)  # no sidecar, as the seed checkpoint
    seed = load_model(random_weights).config.to_dict()  # what the manifest records
    with pytest.raises(CheckpointError, match=r"made for the 'seed' architecture \(its manifest says so\), and "
                                              r"--preset residual is another one.*Leave --preset out"):
        load_model(bare, preset="residual", architecture=seed)
    assert load_model(bare, preset="seed", architecture=seed).config.name == "seed"
    assert load_model(bare, architecture=seed).config.name == "seed"
    with pytest.raises(CheckpointError, match=r"do not fit the 'residual_refine_wide' .*; their tensors fit the "
                                              r"presets seed, residual: pass --preset seed or --preset residual "
                                              r"\(preset= in Python\), the one they were trained as .*; the seed "
                                              r"checkpoint is --preset seed$"):
        load_model(bare, preset="residual_refine_wide")


@pytest.mark.parametrize("kwargs, message", [
    ({"weights": 123}, r"weights= is a path to a \.safetensors/\.pt file or a shipped name .*got int 123"),
    ({"weights": "blind", "device": "gpu"}, r"device= is 'cpu', 'cuda' or 'cuda:N'; got 'gpu'"),
    ({"weights": "blind", "threads": -1}, r"threads= is a whole number >= 1 .*got -1"),
    ({"weights": "blind", "threads": 2.0}, r"threads= is a whole number >= 1 .*got 2\.0"),
    ({"weights": "blind", "threads": 100_000}, r"threads=100000: this machine has \d+ CPUs; at most \d+ threads"),
    ({"weights": "nope"}, r"weights nope: no such file, and not the name of shipped weights \(blind, sigma20\)"),
])
def test_torch_runner_arguments_are_checked_when_made(kwargs, message):
    """They failed only on activation, in torch's words (a TypeError, every device type torch knows, 'set_num_threads
    expects a positive integer')."""
    from moe_base.errors import ToolkitError
    from runtime.torch_runner import TorchRunner

    with pytest.raises(ToolkitError, match=message):
        TorchRunner(**kwargs)


@pytest.mark.parametrize("make, message", [
    (lambda: Doubler(max_batch=2.5), r"max_batch= is the most tiles a call takes, a whole number >= 1 .* got 2\.5"),
    (lambda: Doubler(max_batch=0), r"max_batch= .* got 0"),  # the torch runner said 'no batch bucket fits'
    (lambda: OrtRunner("m.onnx", threads=2.5), r"threads= is a whole number >= 0 .* got 2\.5"),
    (lambda: OrtRunner("m.onnx", threads="2"), r"threads= .* got '2'"),
    (lambda: OrtRunner("m.onnx", threads=100_000), r"threads=100000: this machine has \d+ CPUs"),  # ran for minutes
])
def test_runner_counts_that_are_not_whole_numbers_are_refused_when_made(make, message):
    """These reached the user as a bare TypeError from pybind or '<', or were taken (an ONNX runner with max_batch=0)."""
    with pytest.raises(InputError, match=message):
        make()


def test_a_call_below_the_runners_minimum_batch_is_padded_and_cut_back():
    """An engine built for batches of 8 or more refused the last chunk of a photo and any smaller request, which
    serve and denoise send (Triton's batcher forms batches from 1 up)."""
    r = Doubler(max_batch=16)
    r.min_batch = 8  # as a TensorRT runner sets it from its engine's profile
    x = np.random.default_rng(0).random((21, 3, 32, 32), dtype=np.float32)
    with r:
        out = r(x)
    np.testing.assert_array_equal(out, x * 0.5)
    assert r.calls == [16, 8]  # 16, then the last 5 padded to 8


def test_a_folder_named_like_shipped_weights_does_not_hide_them(tmp_path, monkeypatch):
    """--weights blind, run where a folder named 'blind' is (a folder of photos, say), was refused: 'weights file
    blind is a folder, not a file'. A folder is no weights file: the name means the shipped weights there too."""
    from pathlib import Path

    from runtime.torch_runner import resolve_weights
    from weights import SHIPPED

    monkeypatch.chdir(tmp_path)
    (tmp_path / "blind").mkdir()
    assert resolve_weights("blind") == SHIPPED["blind"]
    (tmp_path / "sigma20").write_bytes(b"a file of the user's, named so")  # a file given by its path stays that file
    assert resolve_weights("sigma20") == Path("sigma20")


def test_forward_on_device_of_an_inactive_runner_says_so(random_weights):
    """It was an AttributeError ('TorchRunner' object has no attribute '_torch'), not NotActiveError."""
    import torch

    import runtime
    from runtime.torch_runner import TorchRunner

    with pytest.raises(runtime.NotActiveError, match="is not active: use 'with runner:'"):
        TorchRunner(random_weights).forward_on_device(torch.zeros(1, 3, 32, 32))


def test_a_runner_whose_activation_fails_holds_nothing_and_one_released_holds_no_model(tmp_path, random_weights):
    """An activation that failed after the session was made (a self-check that does not match) kept the ONNX Runtime
    session for the runner's life: deactivate() skips a runner never active. A released TorchRunner kept its model
    (on a GPU, its memory), where 'released after the call' was promised."""
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model
    from runtime.ort_runner import OrtRunner
    from runtime.torch_runner import TorchRunner

    path = tmp_path / "m.onnx"
    export_onnx(load_model(random_weights), path, ExportOptions(), parity_images=2, log=lambda s: None)
    m = json.loads(manifest_path(path).read_text())
    m["self_check"]["values"][0][0] += 1.0
    manifest_path(path).write_text(json.dumps(m))
    runner = OrtRunner(path)
    with pytest.raises(ArtifactMismatchError):
        runner.activate()
    assert not runner.is_active and runner.session is None
    torch_runner = TorchRunner(random_weights)
    with torch_runner:
        first = torch_runner(GOOD)
        assert torch_runner.model is not None
    assert torch_runner.model is None
    with torch_runner:  # loaded again
        np.testing.assert_array_equal(torch_runner(GOOD), first)


def test_library_calls_with_what_is_no_path_number_or_tensor_say_so(tmp_path):
    """Documented entry points gave bare TypeErrors and AttributeErrors (read_image(None), write_image(..., None)),
    took max_pixels=-1 ('-0 megapixels') and parity_inputs(sigma=nan) (a batch of NaN), passed an empty compare, read
    weights='' as the current folder, ran any impl name as dense attention at k >= N, and SmallViT gave torch's
    errors for numpy, int, float64, channels-last and 3-D input."""
    import numpy as np
    import torch
    from PIL import Image

    from moe_base.tolerances import get_tolerance
    from moe_model import SmallViT
    from moe_model.attention import sparse_topk_attention
    from runtime import OrtRunner, TorchRunner, compare, parity_inputs, read_image, write_image
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "x.png")
    for call, message in ((lambda: read_image(None), r"the input image is a file path .* got NoneType None"),
                          (lambda: read_image(3), r"got int 3"),
                          (lambda: read_image(tmp_path / "x.png", max_pixels=-1), r"max_pixels= is .* got -1"),
                          (lambda: write_image("o.png", np.zeros((2, 2, 3)), None), r"info= is the ImageInfo"),
                          (lambda: write_image(None, np.zeros((2, 2, 3)), read_image(tmp_path / "x.png")[1]),
                           r"the output is a file path"),
                          (lambda: parity_inputs(2, sigma=float("nan")), r"sigma= is the inputs' noise std"),
                          (lambda: compare(np.zeros((0, 3)), np.zeros((0, 3)), get_tolerance("ort", "fp32")),
                           r"the outputs are empty"),
                          (lambda: TorchRunner(weights=""), r"weights= is a path .* got str ''"),
                          (lambda: OrtRunner(None), r"model= is the path of an exported \.onnx file .* got NoneType None")):
        with pytest.raises(InputError, match=message):
            call()
    q = torch.zeros(1, 1, 4, 2)
    with pytest.raises(InputError, match="unknown sparse attention impl 'nope'"):
        sparse_topk_attention(q, q, q, 4, impl="nope")  # k >= N: it ran dense attention
    with pytest.raises(InputError, match="scale must be a finite number"):
        sparse_topk_attention(q, q, q, 2, scale="1")
    model = SmallViT("seed")
    x = torch.rand(2, 3, 32, 32)
    for bad, message in ((x.numpy(), r"takes a torch tensor .* got ndarray"),
                         ((x * 255).long(), r"floating-point pixels .* got torch\.int64"),
                         (x.double(), r"pass x\.float\(\)"),
                         (x.permute(0, 2, 3, 1), r"got shape \(2, 32, 32, 3\) \(channels last\? x\.permute\(0, 3, 1, 2\)"),
                         (x[0], r"\(B, 3, H, W\) .* got shape \(3, 32, 32\)"),
                         (torch.rand(1, 3, 33, 33), r"multiples of 4; got shape \(1, 3, 33, 33\)")):
        with pytest.raises(InputError, match=message):
            model(bad)
    assert model(x).shape == x.shape


def test_loading_weights_leaves_the_callers_random_numbers_and_the_runners_are_listed(random_weights):
    """A runner's activation drew the model's random start from torch's global generator: a script that seeded torch
    and then loaded the denoiser got other random numbers. dir(runtime) lacked the runners (imported on demand)."""
    import torch

    import runtime

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with runtime.TorchRunner(random_weights):
        pass
    assert torch.equal(torch.rand(3), expected)
    assert {"TorchRunner", "OrtRunner", "TensorRTRunner", "denoise_array"} <= set(dir(runtime))


def test_an_onnx_models_label_names_its_kind():
    """An fp16 plugin graph and the fp32 portable one were both labelled 'ort-cpu' in denoise's and parity's lines
    (torch's names say their precision): the default name now carries the graph's kind; a name given is kept."""
    from runtime.base import runner_label

    class Described:
        def __init__(self, name, **described):
            self.name, self.described = name, {"backend": "ort", "provider": "cpu", **described}

        def describe(self):
            return self.described

    assert runner_label(Described("ort-cpu", precision="fp32")) == "ort-cpu"
    assert runner_label(Described("ort-cpu", precision="fp16")) == "ort-cpu-fp16"
    assert runner_label(Described("ort-cpu", precision="fp16", plugin_nodes="...")) == "ort-cpu-plugin-fp16"
    assert runner_label(Described("mine", precision="fp16")) == "mine"


def test_a_runner_shows_what_it_is_and_pickles_only_inactive(random_weights):
    """In a notebook a runner showed '<runtime.torch_runner.TorchRunner object at 0x7f...>'; pickling an active one
    (a Pool's arguments inside 'with runner:') was "TypeError: cannot pickle 'module' object", and so was pickling
    one released after use (it kept torch). Its repr is its describe(); an active one is refused saying what to do,
    and a released one pickles and gives the same results in its copy."""
    import pickle

    from runtime.tiling import denoise_array
    from runtime.torch_runner import TorchRunner

    runner = TorchRunner(random_weights)
    assert repr(runner).startswith("TorchRunner(name='torch-masked', backend='torch', precision='fp32', device='cpu'")
    assert repr(runner).endswith(f"weights={str(random_weights)!r}, active=False)")
    x = np.random.default_rng(0).random((40, 40, 3), dtype=np.float32)
    with runner:
        assert repr(runner).endswith("active=True)")
        with pytest.raises(TypeError, match=r"an active TorchRunner cannot be pickled \(its loaded model does not\): "
                                            r"pass it to other processes inactive"):
            pickle.dumps(runner)
        expected = denoise_array(x, runner)
    copy = pickle.loads(pickle.dumps(runner))
    with copy:
        np.testing.assert_array_equal(denoise_array(x, copy), expected)


@pytest.mark.parametrize("value, shown", [(1.0001, "[0.5, 1.0001] (1 outside [0, 1])"),
                                          (1 + 2 ** -23, "[0.5, 1.0000001] (1 outside [0, 1])"),
                                          (-1e-9, "[-1e-09, 0.5] (1 outside [0, 1])"), (255.0, "[0.5, 255]")])
def test_values_just_outside_0_1_are_shown_outside_it(value, shown):
    """1.0001 was refused as 'values in [0.5, 1]; expected [0, 1]', a range that reads as allowed."""
    from runtime.base import check_unit_range

    x = np.full((4, 4, 3), 0.5, np.float32)
    x[0, 0, 0] = value
    with pytest.raises(InputError) as refused:
        check_unit_range(x, "image")
    assert str(refused.value).startswith(f"image has values in {shown}")


FORKED_WORKERS = """
import multiprocessing, sys
import numpy as np
import torch
from runtime import TorchRunner, denoise_array

torch.set_num_threads(2)  # the parent's OpenMP pool is up once the model has run on two threads
x = np.random.default_rng(0).random((48, 48, 3), dtype=np.float32)

def work(threads):
    with TorchRunner(sys.argv[1], threads=threads) as r:
        return denoise_array(x, r), torch.get_num_threads()

with TorchRunner(sys.argv[1]) as r:
    expected = denoise_array(x, r)
if sys.argv[2] == "model":  # the model run by moe_model's own API, outside a runner
    from moe_model.checkpoint import load_model
    from runtime.torch_runner import _FORK

    _FORK["ran_threaded"] = False  # as if no runner had run here: the model itself ran on two threads
    with torch.inference_mode():
        load_model(sys.argv[1]).eval()(torch.from_numpy(np.zeros((8, 3, 32, 32), np.float32)))
with multiprocessing.get_context("fork").Pool(2) as pool:
    results = pool.map_async(work, [None, 2]).get(timeout=60)
assert all(np.array_equal(out, expected) for out, _ in results), "different results"
print("threads in the workers:", [n for _, n in results])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX")
@pytest.mark.parametrize("parent", ["runner", "model"])
def test_workers_forked_after_the_model_ran_finish_instead_of_waiting_forever(random_weights, tmp_path, parent):
    """multiprocessing's 'fork' (Linux's default) after the parent ran the model on several threads (in a runner,
    or through moe_model itself): each worker waited forever on PyTorch's OpenMP pool (0% CPU, no message; a Pool's
    map never returned). Their runners run torch on one thread, even when asked for more, and give the parent's
    results."""
    script = tmp_path / "workers.py"
    script.write_text(FORKED_WORKERS)
    done = subprocess.run([sys.executable, str(script), str(random_weights), parent], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "threads in the workers: [1, 1]"


def test_each_tf32_flag_a_caller_changes_during_a_call_is_kept_and_the_other_put_back():
    """The flags were restored or kept as a pair: a caller who turned on matmul TF32 alone during a call left cuDNN
    TF32 off for good, and one who turned cuDNN TF32 off had it turned back on."""
    import torch

    from runtime.torch_runner import _no_tf32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.allow_tf32, matmul.allow_tf32)
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, False  # torch's defaults
        with _no_tf32(torch):
            matmul.allow_tf32 = True
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        matmul.allow_tf32 = False
        with _no_tf32(torch):
            cudnn.allow_tf32 = True  # turned on while it was held off; matmul, untouched, comes back as it was
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, False)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def test_a_copy_of_an_active_runner_shares_its_model(random_weights):
    """copy.copy of an active runner went through pickling and was refused ('cannot be pickled'); it made a shallow
    copy sharing the loaded model before, and does again: it runs, and releasing it leaves the original active."""
    import copy

    from runtime.torch_runner import TorchRunner

    x = np.full((2, 3, 32, 32), 0.5, np.float32)
    with TorchRunner(random_weights) as runner:
        twin = copy.copy(runner)
        np.testing.assert_array_equal(twin(x), runner(x))
        assert twin.model is runner.model and twin._lifecycle is not runner._lifecycle
