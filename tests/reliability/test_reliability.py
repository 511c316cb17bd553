"""The reliability suite: hostile and careless input, through the command line as a user meets it.

Every test is one case; its docstring reads "<case> => <expected outcome>", and docs/reliability.md is generated
from these docstrings (tools/reliability_table.py; a test keeps the file in step). Each asserts the exact outcome:
exit code 2 and a message naming the file and what to do, no file created or changed, no code run from a file.
"""
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_denoise.cli import main
from tests.moe_base.test_fileio import HOLD_LOCK


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


class Payload:
    """Unpickling this creates ``marker``: how a pickle runs code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def cifar_copy(fake_cifar, tmp_path):
    return shutil.copytree(fake_cifar, tmp_path / "cifar")


TINY = ["--max-train", "16", "--max-val", "8", "--batch-size", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture
def run_dir(cifar_copy, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "train", "--data-dir", cifar_copy, "--out-dir", out, *TINY)
    assert code == 0, err
    return out


# --- code execution -------------------------------------------------------------------------------------------
def test_reliability_planted_training_state(capsys, cifar_copy, run_dir, tmp_path):
    """A last.pt with a code-running pickle in a run folder, then train --resume => refused (exit 2, the file and
    what to do named); the code never runs"""
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker)}, run_dir / "last.pt")
    code, _, err = cli(capsys, "train", "--data-dir", cifar_copy, "--out-dir", run_dir, "--resume", *TINY)
    assert code == 2 and "last.pt" in err and "without --resume" in err and "could run code (refused)" in err
    assert "weights_only=False" not in err and not marker.exists()  # torch's advice to run it is not passed on


@pytest.mark.parametrize("command", ["train", "parity", "visualize"])
def test_reliability_planted_cifar_batch(capsys, cifar_copy, tmp_path, command):
    """A CIFAR-10 batch replaced by a code-running pickle, read by train / parity / visualize => refused (exit 2,
    the batch file named); the code never runs"""
    marker = tmp_path / "pwned"
    for name in ("data_batch_5", "test_batch"):
        (cifar_copy / name).write_bytes(pickle.dumps({b"data": Payload(marker)}))
    args = {"train": ["train", "--out-dir", tmp_path / "run", *TINY],
            "parity": ["parity", "--backend", "torch", "-n", "2"],
            "visualize": ["visualize", "-n", "2", "-o", tmp_path / "pics"]}[command]
    code, _, err = cli(capsys, *args, "--data-dir", cifar_copy)
    assert code == 2 and ("data_batch_5" in err or "test_batch" in err) and "never holds" in err
    assert not marker.exists()


# --- data loss ------------------------------------------------------------------------------------------------
def test_reliability_train_into_an_existing_run(capsys, cifar_copy, run_dir):
    """train without --resume into a folder that holds a run => refused (exit 2, --resume / --overwrite offered);
    the run's files are unchanged"""
    before = snapshot(run_dir)
    code, _, err = cli(capsys, "train", "--data-dir", cifar_copy, "--out-dir", run_dir, *TINY)
    assert code == 2 and "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run_dir) == before


def test_reliability_two_trainings_in_one_folder_at_once(capsys, cifar_copy, run_dir, tmp_path):
    """A second train (or train --resume) into a --out-dir that another live run is writing => refused (exit 2, the
    other process named); both ran before, each reporting its own best weights while the folder held the other's"""
    import subprocess
    import sys

    from moe_base.fileio import LOCK_NAME

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for folder, extra in ((fresh, ()), (run_dir, ("--resume",))):
        other = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder / LOCK_NAME)], stdout=subprocess.PIPE,
                                 text=True)  # another run holds the folder's lock, as train takes it
        try:
            assert other.stdout.readline().strip() == "held"
            before = snapshot(folder)
            code, _, err = cli(capsys, "train", "--data-dir", cifar_copy, "--out-dir", folder, *TINY, *extra)
            assert code == 2 and f"another training run (process {other.pid}) is writing {folder} now" in err, err
            assert snapshot(folder) == before
        finally:
            other.kill()
            other.wait()


def test_reliability_refused_commands_leave_no_folders(capsys, monkeypatch, tmp_path):
    """export -o q/r/m.onnx, evaluate --save-json x/y/r.json, bench --out-dir b/c, visualize --out-dir v/w and
    train --out-dir t/u/v refused for another reason (weights or data that are not there) => nothing is left: the
    folders they name were made before the refusal, and stayed empty"""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for argv in (["export", "--weights", "nonexist", "-o", "q/r/m.onnx"],
                 ["evaluate", "--data-dir", "nonexist", "--save-json", "x/y/r.json"],
                 ["bench", "--weights", "nonexist", "--out-dir", "b/c"],
                 ["visualize", "--data-dir", "nonexist", "--out-dir", "v/w"],
                 ["train", "--data-dir", "nonexist", "--out-dir", "t/u/v"]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and "nonexist" in err, (argv, err)
        assert list(work.iterdir()) == [], argv


def test_reliability_export_over_an_existing_file(capsys, random_weights, tmp_path):
    """export -o onto an existing (unrelated) file => refused (exit 2, --overwrite offered); the file is unchanged"""
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    target = tmp_path / "notes.onnx"
    target.write_text("my notes")
    code, _, err = cli(capsys, "export", "--weights", random_weights, "-o", target)
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert target.read_text() == "my notes"


def test_reliability_artifact_whose_manifest_cannot_be_written(capsys, random_weights, tmp_path):
    """export / build -o where a folder stands at the manifest's path (OUT.manifest.json), or a manifest write that
    fails (the disk fills up) => refused before any work (exit 2, the folder named); a new artifact whose manifest
    could not be written is removed again (the model was left without one)"""
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    from moe_base.manifest import manifest_path, write_artifact

    for command in ("export", "build"):
        target = tmp_path / ("m.onnx" if command == "export" else "m.engine")
        manifest_path(target).mkdir()
        code, _, err = cli(capsys, command, "--weights", random_weights, "-o", target)
        assert code == 2 and f"'{manifest_path(target)}' is a folder, where the manifest of" in err, err
        assert not target.exists()
    import moe_base.manifest
    from moe_base.errors import InputError

    def disk_full(path, value):
        raise InputError(f"writing {path} failed (No space left on device); nothing was changed there")

    target = tmp_path / "x.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(moe_base.manifest, "atomic_write_json", disk_full)
        with pytest.raises(InputError, match="No space left"):
            write_artifact(target, b"graph", {"kind": "onnx"})
    assert not target.exists() and not manifest_path(target).exists()


@pytest.mark.parametrize("command, name, expected", [
    ("export", "notes.txt", "this writes an ONNX model; give a name ending in .onnx (e.g. "),
    ("build", "model.onnx", "this writes a TensorRT engine; give a name ending in .engine or .plan or .trt (e.g. "),
])
def test_reliability_output_named_for_another_kind_of_file(capsys, tmp_path, command, name, expected):
    """export / build -o with a name for another kind of file (even with --overwrite) => refused before any work
    (exit 2), with the name to use; a file already there is unchanged"""
    target = tmp_path / name
    target.write_text("my file")
    code, _, err = cli(capsys, command, "-o", target, "--overwrite")
    assert code == 2 and expected in err
    assert target.read_text() == "my file"


def test_reliability_build_over_an_existing_file(capsys, tmp_path):
    """build -o onto an existing file => refused before anything else (exit 2); the file is unchanged"""
    target = tmp_path / "notes.engine"
    target.write_text("my notes")
    code, _, err = cli(capsys, "build", "--onnx", tmp_path / "m.onnx", "-o", target)
    assert code == 2 and "already exists" in err and target.read_text() == "my notes"


def test_reliability_killed_write_leaves_no_temporary(tmp_path):
    """A write killed half-way leaves a hidden temporary beside its target => the next write of that target
    removes it (a live writer's temporary is left alone)"""
    from moe_base.fileio import atomic_write

    target = tmp_path / "photo.png"
    dead = tmp_path / ".photo.png.4194303.x1.tmp"  # beyond the largest pid: no such process
    dead.write_bytes(b"half a photo")
    live = tmp_path / f".photo.png.{os.getpid()}.x2.tmp"
    live.write_bytes(b"being written")
    atomic_write(target, b"the photo")
    assert target.read_bytes() == b"the photo" and not dead.exists() and live.exists()


# --- garbage out with exit 0 ----------------------------------------------------------------------------------
def test_reliability_damaged_weights(capsys, random_weights, tmp_path):
    """Weights with bytes flipped inside the tensor data => refused (exit 2, sha256 mismatch and
    --skip-weights-check named); with --skip-weights-check they run, knowingly"""
    bad = tmp_path / "bad.safetensors"
    data = bytearray(random_weights.read_bytes())
    for i in range(len(data) - 2000, len(data)):
        data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    shutil.copy(random_weights.with_suffix(".json"), bad.with_suffix(".json"))
    code, _, err = cli(capsys, "parity", "--backend", "torch", "--weights", bad, "-n", "2")
    assert code == 2 and "sha256" in err and "--skip-weights-check" in err and "bad.safetensors" in err
    assert "killed between writing it and its JSON (--resume that run" in err  # the weights and JSON: two writes
    code, _, _ = cli(capsys, "parity", "--backend", "torch", "--weights", bad, "-n", "2", "--skip-weights-check")
    assert code == 0


@pytest.fixture
def exported(random_weights, tmp_path_factory):
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(load_model(random_weights), path, parity_images=2, weights_path=random_weights, log=lambda s: None)
    return path


def graph_with_manifest(exported, tmp_path, proto):
    """``proto`` saved with a copy of ``exported``'s manifest, its artifact entry made to match the new file."""
    from moe_base.manifest import manifest_path, sha256_bytes

    data = proto.SerializeToString()
    path = tmp_path / "foreign.onnx"
    path.write_bytes(data)
    m = json.loads(manifest_path(exported).read_text())
    m["artifact"].update(sha256=sha256_bytes(data), bytes=len(data), file=path.name)
    manifest_path(path).write_text(json.dumps(m))
    return path


def test_reliability_foreign_graph_with_a_matching_manifest(capsys, exported, tmp_path):
    """An Identity graph with the model's names and shapes, given a manifest that matches its bytes => refused at
    load by denoise (exit 2: it does not compute the model its manifest describes); nothing is written. parity
    reports it as failing, with its numbers (exit 1)"""
    import onnx
    from onnx import TensorProto, helper

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 3, 32, 32]) for n in ("noisy", "denoised")]
    proto = helper.make_model(helper.make_graph([helper.make_node("Identity", ["noisy"], ["denoised"])], "g",
                                               [io[0]], [io[1]]), opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    path = graph_with_manifest(exported, tmp_path, proto)
    from PIL import Image

    photo = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (120, 90, 60)).save(photo)
    code, _, err = cli(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort", "--artifact", path)
    assert code == 2 and "does not compute the model its manifest describes" in err
    assert not (tmp_path / "out.png").exists()
    code, out, _ = cli(capsys, "parity", "--backend", "ort", "--artifact", path, "-n", "2")
    assert code == 1 and "FAIL" in out


@pytest.mark.parametrize("change", ["shape", "dtype", "rank", "name"])
def test_reliability_graph_inputs_outside_the_contract(capsys, exported, tmp_path, change):
    """A graph whose input has another shape, dtype, rank or name than the model's I/O contract and manifest
    => refused at load with what was found and what was expected (exit 2), not an ONNX Runtime traceback"""
    import onnx

    proto = onnx.load(str(exported))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if change == "shape":
        dims[2].dim_value = 16
    elif change == "dtype":
        proto.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    elif change == "rank":
        del dims[3]
    else:
        for node in proto.graph.node:
            node.input[:] = ["x" if i == "noisy" else i for i in node.input]
        proto.graph.input[0].name = "x"
    path = graph_with_manifest(exported, tmp_path, proto)
    code, _, err = cli(capsys, "parity", "--backend", "ort", "--artifact", path, "-n", "2")
    assert code == 2 and "expected one input and one output, float32 [batch, 3, 32, 32]" in err


def edited_copy(exported, tmp_path, edit):
    """A copy of ``exported`` whose manifest has ``edit`` applied (its artifact entry still matches the file)."""
    from moe_base.manifest import manifest_path

    path = tmp_path / "edited.onnx"
    shutil.copy(exported, path)
    m = json.loads(manifest_path(exported).read_text())
    edit(m)
    manifest_path(path).write_text(json.dumps(m))
    return path


MANIFEST_EDITS = {
    "precision int8": lambda m: m.update(precision="int8"),
    "precision bf16 (no ONNX or engine has it)": lambda m: m.update(precision="bf16"),
    "io a string": lambda m: m.update(io="x"),
    "model config a list": lambda m: m["model"].update(config=[1, 2]),
    "image_size a string": lambda m: m["model"]["config"].update(image_size="32"),
    "atol a word": lambda m: m.update(tolerance={**m["tolerance"], "atol": "abc"}),
    "self_check images a word": lambda m: m["self_check"].update(images="x"),
    "self_check position outside a tile": lambda m: m["self_check"]["positions"].__setitem__(0, 10**6),
    "self_check value not a number": lambda m: m["self_check"]["values"][0].__setitem__(0, float("nan")),
    "io inputs a string": lambda m: m["io"].update(inputs="x"),
    "weights_sha256 a number": lambda m: m["model"].update(weights_sha256=5),
}


@pytest.mark.parametrize("edit", list(MANIFEST_EDITS))
def test_reliability_manifest_fields_edited_by_hand(capsys, exported, tmp_path, edit):
    """An artifact manifest whose precision, io, model config, tolerance or self-check was edited by hand (the file
    it describes unchanged) => refused at load (exit 2, re-export named); each was a Python traceback (exit 1)"""
    path = edited_copy(exported, tmp_path, MANIFEST_EDITS[edit])
    code, _, err = cli(capsys, "parity", "--backend", "ort", "--artifact", path, "-n", "2")
    assert code == 2 and "re-export" in err and "Traceback" not in err, err


def test_reliability_stop_between_an_artifact_and_its_manifest(tmp_path, monkeypatch):
    """SIGTERM arriving between the writes of a replaced artifact and of its manifest => both are written, then the
    stop goes on: the new model stood beside its old manifest, refused until exported again"""
    import signal

    import moe_base.manifest as mm

    target = tmp_path / "m.onnx"
    mm.write_artifact(target, b"old", mm.base_manifest("onnx", target, b"old"))
    real = mm.atomic_write_json

    def write_json(*args, **kwargs):
        signal.raise_signal(signal.SIGTERM)  # arrives between the two writes
        return real(*args, **kwargs)

    def stop(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(mm, "atomic_write_json", write_json)
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            mm.write_artifact(target, b"newer", mm.base_manifest("onnx", target, b"newer"))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert mm.read_checked(target, kind="onnx", settle_s=0)["artifact"]["bytes"] == len(b"newer")


def test_reliability_export_of_weights_for_other_tiles(capsys, tmp_path):
    """export of weights made for 16x16 tiles => refused before any work (exit 2, the tile shape named and --backend
    torch offered); it failed after the export with 're-export it', naming a temporary file already gone"""
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    from moe_base.config import ModelConfig
    from moe_model.checkpoint import save_weights
    from moe_model.model import SmallViT

    weights = tmp_path / "c16.safetensors"
    save_weights(SmallViT(ModelConfig(image_size=16)), weights)
    code, _, err = cli(capsys, "export", "--weights", weights, "-o", tmp_path / "c16.onnx")
    assert code == 2 and "are for 3x16x16 tiles" in err and "--backend torch" in err
    assert not (tmp_path / "c16.onnx").exists()


def test_reliability_code_running_pickle_named_without_torchs_advice(tmp_path):
    """A .pt whose pickle would run a program (os.system), loaded as weights => refused as code, the reason kept;
    torch 2.13's text passed on its advice to load it with weights_only=False and cut the reason off"""
    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_state_dict

    class System:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"x": System()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as refused:
        load_state_dict(tmp_path / "evil.pt")
    assert "could run code (refused" in str(refused.value) and "weights_only" not in str(refused.value)


def test_reliability_fixed_batch_graph_is_chunked(exported, tmp_path):
    """A graph exported with a fixed batch of 7 => batches of any size run (chunked, the last chunk padded) and
    give the dynamic graph's outputs"""
    import onnx

    from runtime import OrtRunner, parity_inputs

    proto = onnx.load(str(exported))
    for v in (proto.graph.input[0], proto.graph.output[0]):
        v.type.tensor_type.shape.dim[0].dim_value = 7
    path = graph_with_manifest(exported, tmp_path, proto)
    x = parity_inputs(10)
    with OrtRunner(path) as fixed, OrtRunner(exported) as dynamic:
        np.testing.assert_allclose(fixed(x), dynamic(x), atol=1e-6)
        assert fixed.max_batch == 7


@pytest.mark.parametrize("manifest", ["[1, 2]", '{"schema": "moe-denoise/manifest/1"}'])
def test_reliability_manifest_without_an_artifact_entry(capsys, exported, manifest):
    """A manifest that is not a mapping, or lacks its artifact entry => refused (exit 2, re-export named), not a
    KeyError"""
    from moe_base.manifest import manifest_path

    manifest_path(exported).write_text(manifest)
    code, _, err = cli(capsys, "parity", "--backend", "ort", "--artifact", exported, "-n", "2")
    assert code == 2 and "re-export" in err


# --- a message where a traceback was ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", os.urandom(512), b"not a dict"])
def test_reliability_corrupt_training_state(capsys, cifar_copy, run_dir, content):
    """A last.pt that is empty, truncated, random or not a training state, then train --resume => refused
    (exit 2, the file and what to do named)"""
    if content == b"not a dict":
        torch.save([1, 2, 3], run_dir / "last.pt")
    else:
        (run_dir / "last.pt").write_bytes(content)
    code, _, err = cli(capsys, "train", "--data-dir", cifar_copy, "--out-dir", run_dir, "--resume", *TINY)
    assert code == 2 and "last.pt" in err and "--resume" in err


@pytest.mark.parametrize("command", ["export", "train", "visualize", "evaluate", "bench"])
@pytest.mark.parametrize("how", ["read-only", "under-a-file"])
def test_reliability_output_folder_that_cannot_be_written(capsys, random_weights, cifar_copy, tmp_path, command, how):
    """An output folder that cannot be written (read-only, or a path through a file; export, train, visualize,
    evaluate --save-json, bench --out-dir) => refused before any work (exit 2, the folder named; evaluate and bench
    used to find it only after the whole run)"""
    if how == "read-only" and os.geteuid() == 0:
        pytest.skip("root can write to read-only folders, so the refusal cannot be shown as root")
    base = tmp_path / "out"
    if how == "read-only":
        base.mkdir()
        base.chmod(0o555)
    else:
        base.write_text("a file, not a folder")
    args = {"export": ["export", "--weights", random_weights, "-o", base / "m.onnx"],
            "train": ["train", "--data-dir", cifar_copy, "--out-dir", base / "run", *TINY],
            "visualize": ["visualize", "--weights", random_weights, "--data-dir", cifar_copy, "-o", base / "pics"],
            "evaluate": ["evaluate", "--weights", random_weights, "--data-dir", cifar_copy, "--sigmas", "25",
                         "--bm3d-images", "0", "--save-json", base / "report.json"],  # found after the run, once
            "bench": ["bench", "--quick", "--weights", random_weights, "--out-dir", base / "results"]}  # after timing
    try:
        code, _, err = cli(capsys, *args[command])
    finally:
        if how == "read-only":
            base.chmod(0o755)
    assert code == 2 and "cannot write" in err, err
    assert (list(base.iterdir()) == []) if how == "read-only" else base.read_text() == "a file, not a folder"


@pytest.mark.parametrize("argv,message", [
    (["train", "--max-train", "0"], "must be >= 1"),
    (["train", "--max-train", "-5"], "must be >= 1"),
    (["train", "--max-val", "0"], "must be >= 1"),
    (["train", "--threads", "-1"], "must be >= 1"),
    (["train", "--device", "bogus"], "not a device"),
    (["train", "--lr", "inf"], "argument --lr: expected a number (e.g. 0.7 or 1e-3), got 'inf'"),
    (["train", "--lr", "-1"], "--lr must be a finite number > 0"),  # named as typed (it said lr)
    (["parity", "--backend", "torch", "--threads", "-1"], "must be >= 1"),
    (["parity", "--backend", "torch", "--device", "bogus"], "expected cpu, cuda or cuda:N"),
])
def test_reliability_bad_settings(capsys, cifar_copy, tmp_path, argv, message):
    """A setting out of its range (counts below 1, negative threads, an unknown device, an infinite learning rate)
    => refused with the allowed range (exit 2), before any work"""
    extra = ["--data-dir", cifar_copy, "--out-dir", tmp_path / "run"] if argv[0] == "train" else []
    try:
        code, _, err = cli(capsys, *argv, *extra)
    except SystemExit as e:  # argparse's own refusal
        code, err = e.code, capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "run").exists()


def test_reliability_diverging_training_stops(cifar_copy, tmp_path):
    """Training whose loss becomes NaN or infinite => stops with a TrainingError naming the epoch, the learning
    rate and what was kept; no best-weights path is claimed that was never written"""
    from moe_base.errors import TrainingError
    from moe_model.train import TrainConfig, train

    cfg = TrainConfig(data_dir=str(cifar_copy), out_dir=str(tmp_path / "run"), epochs=1, batch_size=8, max_train=16,
                      max_val=8, lr=1e30, grad_clip=0.0)
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf).*no weights were written.*Lower --lr"):
        train(cfg, progress=False, log=lambda s: None)
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_reliability_weights_without_their_sidecar(capsys, random_weights, tmp_path):
    """Weights without their JSON sidecar and without --preset => refused (exit 2) naming the presets whose
    tensors fit, instead of a size-mismatch dump"""
    bare = tmp_path / "bare.safetensors"
    shutil.copy(random_weights, bare)
    code, _, err = cli(capsys, "parity", "--backend", "torch", "--weights", bare, "-n", "2")
    assert code == 2 and "--preset" in err and "seed" in err and "size mismatch" not in err


def test_reliability_missing_onnx_for_build(capsys, tmp_path):
    """build --onnx of a file that does not exist => 'does not exist' (exit 2), not 'has no manifest'"""
    code, _, err = cli(capsys, "build", "--onnx", tmp_path / "missing.onnx")
    assert code == 2 and "does not exist" in err and "manifest" not in err


def test_reliability_weights_the_artifact_was_not_made_from(capsys, exported, tmp_path):
    """denoise --backend ort --weights W, where the ONNX model was exported from other weights, or with an option of
    the torch backend (--preset, --precision, --device, --cuda-graph, --impl), or --artifact without --backend ort => refused
    before any work (exit 2: the weights the model was made from named and how to export W; what sets the option for
    an ONNX model; --backend ort); all were ignored in silence (--artifact alone ran the PyTorch default)"""
    from PIL import Image

    photo = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (120, 90, 60)).save(photo)
    code, _, err = cli(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort", "--artifact",
                       exported, "--weights", "sigma20")
    assert code == 2 and "--weights sigma20 was given" in err and "moe-denoise export --weights sigma20" in err
    assert not (tmp_path / "out.png").exists()
    code, _, err = cli(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort", "--artifact",
                       exported, "--preset", "seed")  # the ONNX model carries its architecture: --preset ignored
    assert code == 2 and "--preset applies to --backend torch, not to --backend ort" in err
    assert not (tmp_path / "out.png").exists()
    code, _, err = cli(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort", "--artifact",
                       exported, "--impl", "gather")
    assert code == 2 and "--impl applies to --backend torch, not to --backend ort" in err
    code, _, err = cli(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--artifact", exported)  # no --backend
    assert code == 2 and "--artifact applies to --backend ort or trt, but the backend is torch" in err
    assert not (tmp_path / "out.png").exists()


def test_reliability_no_manifest_message_names_real_options(capsys, exported):
    """An artifact without its manifest => the message says to re-export and names no option that does not exist"""
    from moe_base.manifest import manifest_path

    manifest_path(exported).unlink()
    code, _, err = cli(capsys, "parity", "--backend", "ort", "--artifact", exported, "-n", "2")
    assert code == 2 and "has no manifest" in err and "--no-manifest-check" not in err


@pytest.fixture
def photo(tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("command", ["denoise", "add-noise"])
def test_reliability_photo_output_that_cannot_be_written(capsys, photo, tmp_path, command):
    """denoise / add-noise to an output in a folder that cannot be written (a path through a file) => refused
    before any work (exit 2, the folder named); nothing is written"""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, command, photo, "-o", blocker / "out.png", "--overwrite")
    assert code == 2 and "a-file" in err and blocker.read_text() == "not a folder"


@pytest.mark.parametrize("name", ["b" * 235 + ".png", "é" * 125 + ".png"])  # 239 and 254 bytes: names that fit
def test_reliability_photo_output_with_a_long_name(capsys, photo, tmp_path, name):
    """denoise -o a file name of 235 to 255 bytes (a non-ASCII letter counting 2) => written (its hidden temporary's
    name, 16 to 22 bytes longer, is shortened: the photo was denoised, then 'cannot write ... choose a folder you
    can write to', or that was said before the work for a name over 239 bytes)"""
    out = tmp_path / name
    code, _, err = cli(capsys, "denoise", photo, "-o", out, "--no-progress")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([photo.name, name])  # no temporary left


def test_reliability_photo_output_that_is_a_folder(capsys, photo, tmp_path):
    """denoise -o an existing folder => the result goes into it under the photo's name (as cp does; a colour GIF's as
    NAME.gif.png); a file of that name there is refused without --overwrite (exit 2, untouched) and replaced with it"""
    folder = tmp_path / "results"
    folder.mkdir()
    code, _, err = cli(capsys, "denoise", photo, "-o", folder, "--no-progress")
    assert code == 0, err
    assert [p.name for p in folder.iterdir()] == [photo.name]
    first = (folder / photo.name).read_bytes()
    (folder / photo.name).write_bytes(b"mine")
    code, _, err = cli(capsys, "denoise", photo, "-o", folder, "--no-progress")
    assert code == 2 and "already exists" in err and (folder / photo.name).read_bytes() == b"mine"
    code, _, err = cli(capsys, "denoise", photo, "-o", folder, "--overwrite", "--no-progress")
    assert code == 0 and (folder / photo.name).read_bytes() == first


def test_reliability_reference_of_another_size(capsys, photo, tmp_path):
    """denoise --reference with a photo of another size => refused before the output is written (exit 2)"""
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(ref)
    out = tmp_path / "out.png"
    code, _, err = cli(capsys, "denoise", photo, "-o", out, "--reference", ref)
    assert code == 2 and "ref.png" in err and not out.exists()


def test_reliability_export_with_a_long_name(capsys, random_weights, tmp_path):
    """export -o a name of 241 bytes (its manifest's name, 14 bytes longer, is 255) => written with its manifest (the
    export ran, then failed on the manifest's temporary); a name whose manifest's would be over 255 bytes is refused
    before any work (exit 2, the longest name that fits said)"""
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    out = tmp_path / ("m" * 236 + ".onnx")
    code, _, err = cli(capsys, "export", "--weights", random_weights, "-o", out, "--parity-images", "2")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.name + ".manifest.json"])
    longer = tmp_path / ("n" * 237 + ".onnx")
    code, _, err = cli(capsys, "export", "--weights", random_weights, "-o", longer, "--parity-images", "2")
    assert code == 2 and "(256 bytes)" in err and "choose a name of at most 241 bytes" in err
    assert not longer.exists() and len(list(tmp_path.iterdir())) == 2


def _advised(err):
    """The command an error tells the user to run ('... with: moe-denoise CMD ARGS (...)'), as argv for main."""
    import shlex

    command = err.split("with: moe-denoise ", 1)[1].split(" (", 1)[0].split("\n", 1)[0]
    return shlex.split(command)


@pytest.mark.parametrize("where", ["own path", "cache default"])
def test_reliability_damaged_or_missing_model_and_the_advice_given(capsys, photo, random_weights, tmp_path,
                                                                   monkeypatch, where):
    """An exported model of one's own (-o) truncated, or missing, then run with --backend ort => refused (exit 2) with
    the command that makes that file again, which run as printed makes it, and the photo is then denoised (the advice
    was plain 'moe-denoise export', which writes the cache's default model: the same error came back); the same for
    the cache's default fp16 plugin graph"""
    pytest.importorskip("onnx", reason="export needs the onnx extra")
    from moe_base.paths import onnx_path

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path / "cache"))
    if where == "own path":
        model, made = tmp_path / "my model.onnx", ["--weights", random_weights, "-o", tmp_path / "my model.onnx"]
    else:
        model, made = onnx_path("plugin", precision="fp16"), ["--weights", random_weights, "--flavor", "plugin",
                                                               "--precision", "fp16"]
    code, _, err = cli(capsys, "export", *made, "--parity-images", "2")
    assert code == 0, err
    model.write_bytes(model.read_bytes()[:1000])
    run = ["denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort", "--artifact", model, "--no-progress"]
    code, _, err = cli(capsys, *run)
    assert code == 2 and "the file is truncated or was replaced; re-export it with: moe-denoise export" in err, err
    advice = _advised(err)
    assert ("-o" in advice) == (where == "own path") and "--weights" in advice, advice  # from the manifest
    code, _, err = cli(capsys, *advice, "--parity-images", "2")
    assert code == 0, err
    code, _, err = cli(capsys, *run)
    assert code == 0 and (tmp_path / "out.png").is_file(), err
    model.unlink()
    Path(f"{model}.manifest.json").unlink()
    code, _, err = cli(capsys, *run, "--overwrite")
    assert code == 2 and "does not exist; make it with: moe-denoise export" in err, err
    code, _, err = cli(capsys, *_advised(err), *([] if where == "own path" else ["--weights", random_weights]),
                       "--parity-images", "2")
    assert code == 0 and model.is_file(), err


# --- Triton model repository ----------------------------------------------------------------------------------
@pytest.fixture
def triton_repo(capsys, exported, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2",
                        reason="triton-repo needs tritonclient[grpc] (the 'serve' extra)")
    out = tmp_path / "repo"
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", out, "--no-server-check")
    assert code == 0, err
    (out / "my_other_model" / "1").mkdir(parents=True)
    (out / "my_other_model" / "config.pbtxt").write_text('name: "my_other_model"\n')
    return out


def staging_left(folder):
    return [p.name for f in (folder, folder.parent) for p in f.iterdir() if p.name.endswith(".staging")]


def test_reliability_triton_repo_refused_by_tritonserver(capsys, exported, triton_repo, monkeypatch):
    """triton-repo --overwrite of a repository whose new configs tritonserver rejects => refused (exit 2, Triton's
    reason shown); the repository is unchanged, no staging folder is left"""
    import serving.repo

    monkeypatch.setattr(serving.repo, "pytriton_available", lambda: True)
    monkeypatch.setattr(serving.repo, "check_with_tritonserver", lambda repo, models, timeout_s=60.0: {
        m: {"verdict": "rejected", "detail": "planted: max_batch_size must be >= 0"} for m in models})
    before = snapshot(triton_repo)
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", triton_repo, "--overwrite", "--max-batch", "8")
    assert code == 2 and "planted" in err and "nothing was written" in err
    assert snapshot(triton_repo) == before and staging_left(triton_repo) == []


def test_reliability_triton_repo_interrupted_copy(capsys, exported, triton_repo, monkeypatch):
    """triton-repo --overwrite interrupted while copying the model (the disk fills up) => exit 2 with the reason;
    the repository is unchanged, no staging folder is left"""
    def full_disk(src, dst, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    before = snapshot(triton_repo)
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", triton_repo, "--overwrite", "--max-batch", "8")
    monkeypatch.undo()
    assert code == 2 and "No space left" in err and "nothing was written" in err
    assert snapshot(triton_repo) == before and staging_left(triton_repo) == []


def test_reliability_triton_repo_model_replaced_while_copied(capsys, exported, triton_repo, monkeypatch):
    """triton-repo whose ONNX model is replaced (an export writing it) between its check and its copy: the
    repository got the new model beside the manifest and config of the one checked, exit 0 => the copy is checked
    against the manifest; refused (exit 2: changed while it was being copied, run again); the repository is
    unchanged, no staging folder is left"""
    real = shutil.copyfile

    def replaced_meanwhile(src, dst, *a, **k):
        real(src, dst, *a, **k)
        with open(dst, "ab") as f:  # what the copy read: another model's bytes
            f.write(b"another model")

    monkeypatch.setattr(shutil, "copyfile", replaced_meanwhile)
    before = snapshot(triton_repo)
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", triton_repo, "--overwrite", "--max-batch", "8",
                       "--no-server-check")
    monkeypatch.undo()
    assert code == 2 and "changed while it was being copied" in err and "nothing was written" in err
    assert snapshot(triton_repo) == before and staging_left(triton_repo) == []


def test_reliability_triton_repo_overwrite_keeps_other_models(capsys, exported, triton_repo, tmp_path):
    """triton-repo --overwrite into a repository that also holds a model of the user's => our model and README are
    replaced, the user's model is kept; a staging folder a killed run left in it or beside it is removed"""
    for dead in (tmp_path / ".repo.4194303.x1.staging", triton_repo / ".moe-denoise.4194303.x2.staging"):
        (dead / "moe_denoiser").mkdir(parents=True)  # beyond the largest pid: its writer is gone
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", triton_repo, "--overwrite", "--max-batch", "8",
                       "--no-server-check")
    assert code == 0, err
    assert "max_batch_size: 8" in (triton_repo / "moe_denoiser" / "config.pbtxt").read_text()
    assert (triton_repo / "my_other_model" / "config.pbtxt").read_text() == 'name: "my_other_model"\n'
    assert sorted(p.name for p in triton_repo.iterdir()) == ["README.md", "moe_denoiser", "my_other_model"]
    assert staging_left(triton_repo) == []


def test_reliability_triton_repo_into_an_existing_folder(capsys, exported, tmp_path):
    """triton-repo -o an existing empty folder (a team's setgid folder, or one a container mounted already) => filled,
    not replaced: its inode, mode, owner and group stay (it was replaced by a new folder, and the container saw a
    deleted one); a staging folder a killed run left in it does not make it 'not empty'"""
    pytest.importorskip("tritonclient.grpc.model_config_pb2",
                        reason="triton-repo needs tritonclient[grpc] (the 'serve' extra)")
    out = tmp_path / "models"
    out.mkdir()
    out.chmod(0o2770)
    (out / ".moe-denoise.4194303.x1.staging").mkdir()  # beyond the largest pid: its writer is gone
    before = out.stat()
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", out, "--no-server-check")
    assert code == 0, err
    after = out.stat()
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "moe_denoiser"] and staging_left(out) == []


def test_reliability_triton_repo_output_is_a_file(capsys, exported, tmp_path):
    """triton-repo -o an existing file => refused (exit 2: a repository is a folder); the file is untouched"""
    pytest.importorskip("tritonclient.grpc.model_config_pb2",
                        reason="triton-repo needs tritonclient[grpc] (the 'serve' extra)")
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    code, _, err = cli(capsys, "triton-repo", "--onnx", exported, "-o", target, "--overwrite")
    assert code == 2 and "is a file" in err and target.read_text() == "my notes"


@pytest.mark.parametrize("sigma, message", [
    ("nan", "expected the noise std on [0, 1] pixels, >= 0"), ("-0.1", "expected the noise std on [0, 1] pixels"),
    ("inf", "expected the noise std on [0, 1] pixels"), ("1/0", "e.g. 25/255); got '1/0'"),
    ("25", "25 is over 1 (the noise std on [0, 1] pixels is at most 1); a level on the 0-255 scale is written "
           "25/255 (= 0.09804)"),
])
@pytest.mark.parametrize("command", ["denoise", "add-noise"])
def test_reliability_an_impossible_noise_level(capsys, photo, tmp_path, sigma, message, command):
    """denoise / add-noise --sigma that is not a noise level (NaN, negative, infinite, a division by zero) or is one
    meant on the 0-255 scale (25) => refused before any work (exit 2, the allowed range and an example given; for
    25 the fraction to write); no output written"""
    out = tmp_path / "out.png"
    with pytest.raises(SystemExit) as refused:
        cli(capsys, command, photo, "-o", out, "--sigma", sigma)
    err = capsys.readouterr().err
    assert refused.value.code == 2 and "argument --sigma: " in err and message in err and not out.exists()


@pytest.mark.parametrize("text, said", [("[" * 200000 + "]" * 200000, "it is nested too deeply to be read"),
                                        ('{"sha256": ' + "1" * 5000 + "}", "it holds a number of thousands of digits"),
                                        (b"\xff\xfe{}", "'utf-8' codec can't decode byte 0xff")])
def test_reliability_hostile_json_beside_weights_or_a_model(capsys, tmp_path, random_weights, text, said):
    """A weights sidecar (X.json) or a model's manifest nested 200,000 deep, holding a number of 5,000 digits, or
    not UTF-8: denoise, parity and triton-repo ended in a RecursionError or ValueError traceback (exit 1; the
    ValueError's advice was to call sys.set_int_max_str_digits) => refused (exit 2) naming the file and what is
    wrong with it"""
    from PIL import Image

    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    weights = tmp_path / "w.safetensors"
    shutil.copy(random_weights, weights)
    sidecar = tmp_path / "w.json"
    sidecar.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = cli(capsys, "denoise", photo, "-o", tmp_path / "o.png", "--weights", weights)
    assert code == 2 and f"sidecar {sidecar} is not valid JSON: {said}" in err and "Traceback" not in err
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    (tmp_path / "m.onnx.manifest.json").write_bytes(sidecar.read_bytes())
    code, out, err = cli(capsys, "triton-repo", "--onnx", model, "-o", tmp_path / "repo")
    assert code == 2 and f"m.onnx.manifest.json is unreadable: {said}" in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "repo").exists()


def test_reliability_a_small_torch_file_that_expands_to_gigabytes(tmp_path):
    """A .pt of 0.1 MB whose records are deflated zeros (torch.save stores them uncompressed), as --weights or a
    run's last.pt: torch expanded them all before anything was checked (a 3 MB file took 3.4 GB for 18 s) =>
    refused before any record is read, with both sizes; a file torch.save wrote still loads"""
    import zipfile

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_state_dict
    from moe_model.train import load_training_state

    torch.save({"w": torch.zeros(4)}, tmp_path / "plain.pt")
    assert list(load_state_dict(tmp_path / "plain.pt")) == ["w"]
    with zipfile.ZipFile(tmp_path / "plain.pt") as plain, \
            zipfile.ZipFile(tmp_path / "last.pt", "w", zipfile.ZIP_DEFLATED) as bomb:
        for info in plain.infolist():
            bomb.writestr(info.filename, plain.read(info.filename))
        with bomb.open(plain.infolist()[0].filename.split("/")[0] + "/data/padding", "w") as f:
            for _ in range(100):
                f.write(bytes(2**20))
    assert (tmp_path / "last.pt").stat().st_size < 2**20
    said = r"its records expand to 0\.1 GiB from a file of 0\.1 MiB \(compressed: torch\.save stores them as they are\)"
    with pytest.raises(CheckpointError, match=said):
        load_state_dict(tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=said):
        load_training_state(tmp_path / "last.pt")
