"""Training (the real train()): the loss decreases, files are written, a resumed run equals an uninterrupted one."""
import json
import re

import pytest
import torch

from moe_base.errors import CheckpointError
from moe_model.checkpoint import load_model
from moe_model.train import TrainConfig, load_training_state, train


def small_config(data_dir, out_dir, **kw):
    base = dict(data_dir=str(data_dir), out_dir=str(out_dir), epochs=2, batch_size=16, max_train=32, max_val=16,
                seed=3)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_the_validation_loss(fake_cifar, tmp_path):
    result = train(small_config(fake_cifar, tmp_path / "run", epochs=3, max_train=64, lr=2e-3), progress=False,
                   log=lambda s: None)
    val = [h["val_mse"] for h in result["history"]]
    assert val[-1] < 0.9 * val[0], val  # three short epochs from a random start: clearly better
    assert result["best_val_loss"] == min(h["val_loss"] for h in result["history"])


def test_train_writes_checkpoints(fake_cifar, tmp_path):
    result = train(small_config(fake_cifar, tmp_path / "run"), progress=False, log=lambda s: None,
                   command="moe-denoise train (test)")
    assert len(result["history"]) == 2
    side = json.loads((tmp_path / "run" / "best.json").read_text())
    assert side["config"]["name"] == "seed" and side["training"]["command"] == "moe-denoise train (test)"
    assert side["metrics"]["val_loss"] == pytest.approx(result["best_val_loss"])
    model = load_model(tmp_path / "run" / "best.safetensors")
    assert model.config.name == "seed"
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_in_a_log_an_epoch_shows_its_progress_in_lines(fake_cifar, tmp_path, capsys, monkeypatch):
    """progress='lines' (stderr not a terminal): lines with the step, loss and speed, at most one per
    PROGRESS_LINE_S seconds (0 here: every step), no bar's carriage returns; False: none at all."""
    import moe_model.train as training

    monkeypatch.setattr(training, "PROGRESS_LINE_S", 0.0)
    train(small_config(fake_cifar, tmp_path / "run", epochs=1), progress="lines", log=lambda s: None)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and "\r" not in err  # 32 images in batches of 16
    assert lines[0].startswith("epoch 1/1: loss ") and " img/s (1 of 2 steps, " in lines[0]
    monkeypatch.setattr(training, "PROGRESS_LINE_S", 3600.0)  # a short run in a log: the epoch lines only
    train(small_config(fake_cifar, tmp_path / "run2", epochs=1), progress="lines", log=lambda s: None)
    train(small_config(fake_cifar, tmp_path / "run3", epochs=1), progress=False, log=lambda s: None)
    assert capsys.readouterr().err == ""


def test_blind_training_validates_on_the_mixture(fake_cifar, tmp_path):
    result = train(small_config(fake_cifar, tmp_path / "run", blind=True, loss="psnr", mse_floor=1e-5, epochs=1),
                   progress=False, log=lambda s: None)
    side = json.loads((tmp_path / "run" / "best.json").read_text())
    assert side["metrics"]["val_protocol"] == "blind" and side["training"]["settings"]["blind"] is True
    assert side["metrics"]["val_psnr"] == pytest.approx(-result["best_val_loss"])
    with pytest.raises(ValueError, match="unclipped_share must be in"):
        train(small_config(fake_cifar, tmp_path / "bad", blind=True, unclipped_share=2.0), progress=False)


def test_interrupted_and_resumed_run_equals_uninterrupted(fake_cifar, tmp_path):
    # on the CPU, where the kernels are deterministic, so "equal" can mean bit-identical
    full = train(small_config(fake_cifar, tmp_path / "a", epochs=3, device="cpu"), progress=False,
                 log=lambda s: None)
    cfg = small_config(fake_cifar, tmp_path / "b", epochs=3, device="cpu")
    part = train(cfg, progress=False, stop_after_epoch=1, log=lambda s: None)
    assert len(part["history"]) == 1
    resumed = train(cfg, resume=True, progress=False, log=lambda s: None)
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed parameters differ from the uninterrupted run"
    assert [h["val_loss"] for h in full["history"]] == [h["val_loss"] for h in resumed["history"]]


def test_resume_refuses_changed_settings_and_missing_state(fake_cifar, tmp_path):
    cfg = small_config(fake_cifar, tmp_path / "c", epochs=2)
    with pytest.raises(CheckpointError, match="--resume was given but"):
        train(cfg, resume=True, progress=False, log=lambda s: None)
    train(cfg, progress=False, stop_after_epoch=1, log=lambda s: None)
    with pytest.raises(ValueError, match="lr: saved 0.001, given 0.01"):
        train(small_config(fake_cifar, tmp_path / "c", epochs=2, lr=0.01), resume=True, progress=False,
              log=lambda s: None)


def test_resume_checks_the_state_before_reading_the_data(tmp_path, monkeypatch):
    """A --resume that cannot continue (no last.pt, or other settings) says so before the data is read (seconds
    for CIFAR-10's 50,000 images), not after."""
    import moe_model.train as train_module

    def no_data(*args, **kwargs):
        raise AssertionError("the data was read before the training state was checked")

    monkeypatch.setattr(train_module, "load_cifar10", no_data)
    with pytest.raises(CheckpointError, match="--resume was given but"):
        train(TrainConfig(data_dir=str(tmp_path / "none"), out_dir=str(tmp_path / "run")), resume=True,
              progress=False, log=lambda s: None)


def test_invalid_settings():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(data_dir="x", epochs=0).validate()
    with pytest.raises(ValueError, match="unknown preset"):
        TrainConfig(data_dir="x", preset="big").validate()
    # the blind noise's settings are named as the options too (they read 'zero_share must be in [0, 1]')
    with pytest.raises(ValueError, match=r"--zero-share must be in \[0, 1\] \(got -1\.0\); --sigma-max must be > 0"):
        TrainConfig(data_dir="x", blind=True, zero_share=-1.0, sigma_max=0.0).validate(
            lambda name: "--" + name.replace("_", "-"))


def test_a_diverged_run_names_the_loss_weights_it_raised(fake_cifar, tmp_path):
    """--weight-decay 1e30 made the loss NaN, and the advice was 'Lower --lr'."""
    from moe_base.errors import TrainingError

    with pytest.raises(TrainingError, match=r"Lower --lr, or keep --grad-clip on; and this run raised --weight-decay "
                                            r"1e\+30 above the default"):
        train(small_config(fake_cifar, tmp_path / "run", epochs=1, weight_decay=1e30), progress=False,
              log=lambda s: None)


def test_init_from_starts_at_the_given_weights(fake_cifar, tmp_path, random_weights):
    from moe_model.checkpoint import load_state_dict

    start = load_state_dict(random_weights)
    result = train(small_config(fake_cifar, tmp_path / "ft", epochs=1, lr=1e-12, init_from=str(random_weights)),
                   progress=False, log=lambda s: None)
    end = result["model"].state_dict()
    assert all(torch.allclose(end[k].cpu(), start[k], atol=1e-6) for k in start)
    side = json.loads((tmp_path / "ft" / "best.json").read_text())
    assert side["training"]["init_from"]["sha256"] and side["training"]["init_from"]["path"] == str(random_weights)
    fresh = train(small_config(fake_cifar, tmp_path / "fresh", epochs=1, lr=1e-12), progress=False,
                  log=lambda s: None)["model"].state_dict()
    assert not all(torch.allclose(fresh[k].cpu(), start[k], atol=1e-6) for k in start)


def test_init_from_a_training_state_checks_the_preset_it_records(fake_cifar, tmp_path):
    """--init-from RUN/last.pt of a residual run warm-started a seed model without a word (the same tensors, another
    computation); RUN/best.safetensors was refused. The state records its preset, and it is read."""
    from moe_base.errors import CheckpointError

    train(small_config(fake_cifar, tmp_path / "res", epochs=1, preset="residual"), progress=False, log=lambda s: None)
    with pytest.raises(CheckpointError, match=r"made for the 'residual' architecture \(the training state says so\), "
                                              r"which preset 'seed' neither is nor grows"):
        train(small_config(fake_cifar, tmp_path / "bad", epochs=1, init_from=str(tmp_path / "res" / "last.pt")),
              progress=False, log=lambda s: None)
    good = train(small_config(fake_cifar, tmp_path / "good", epochs=1, preset="residual", lr=1e-12,
                              init_from=str(tmp_path / "res" / "last.pt")), progress=False, log=lambda s: None)
    assert good["model"].config.name == "residual"


def test_init_from_is_recorded_where_it_is_and_a_resume_may_name_it_otherwise(fake_cifar, tmp_path, random_weights,
                                                                             monkeypatch, capsys):
    """--init-from was recorded as typed (relative to the folder the run started in, where --data-dir is recorded
    whole); a resume naming the same file './x' or by its full path was refused as another setting."""
    import shutil

    from moe_denoise.cli import main

    monkeypatch.chdir(tmp_path)
    shutil.copy(random_weights, tmp_path / "start.safetensors")
    shutil.copy(random_weights.with_suffix(".json"), tmp_path / "start.json")
    base = ["train", "--data-dir", str(fake_cifar), "--epochs", "2", "--batch-size", "16", "--max-train", "32",
            "--max-val", "16", "--no-progress", "--out-dir", "run"]
    assert main([*base, "--init-from", "start.safetensors", "--stop-after-epoch", "1"]) == 0
    state = load_training_state(tmp_path / "run" / "last.pt")
    assert state["train_config"]["init_from"] == str(tmp_path / "start.safetensors")
    assert main(["train", "--resume", "--out-dir", "run", "--no-progress", "--init-from", "./start.safetensors"]) == 0
    capsys.readouterr()


def test_a_full_disk_in_the_first_epoch_leaves_no_run_that_no_command_continues(fake_cifar, tmp_path, monkeypatch):
    """The best weights fit and the training state did not: best.* alone were left, --resume found no state and a new
    run found a run there (only --overwrite got out), under a message that said nothing was changed."""
    import moe_model.train as train_module
    from moe_base.errors import InputError

    def disk_full(obj, path):
        raise InputError(f"writing {path} failed (No space left on device); nothing was changed there")

    monkeypatch.setattr(train_module, "atomic_torch_save", disk_full)
    with pytest.raises(InputError, match=r"No space left.*the epoch's best weights were removed again, so nothing "
                                         r"of this run is left in "):
        train(small_config(fake_cifar, tmp_path / "run", epochs=1), progress=False, log=lambda s: None)
    assert not list((tmp_path / "run").glob("best.*"))
    monkeypatch.undo()
    train(small_config(fake_cifar, tmp_path / "run", epochs=1), progress=False, log=lambda s: None)  # not refused


def test_a_full_disk_in_a_later_epoch_says_what_was_written(fake_cifar, tmp_path, monkeypatch):
    """last.pt could not be written after an epoch that improved: the message said "nothing was changed there" while
    best.safetensors and best.json already held that epoch's weights. It now says what holds which epoch, and that
    --resume trains the epoch again (which it does)."""
    import moe_model.train as train_module
    from moe_base.errors import InputError

    real_save = train_module.atomic_torch_save
    saves = []

    def disk_full_at_second(obj, path):
        saves.append(obj["epoch"])
        if len(saves) == 2:
            raise InputError(f"writing {path} failed (No space left on device); nothing was changed there") \
                from OSError(28, "No space left on device")
        real_save(obj, path)

    for losses, written in (([1.0, 0.5], "best.safetensors and best.json in {out} were already written and hold "
                                         "epoch 2's weights \\(the best so far\\), but last.pt still holds the state "
                                         "after epoch 1"),
                            ([1.0, 2.0], "nothing in {out} was changed: last.pt still holds the state after epoch 1")):
        out = tmp_path / f"run{losses[1]}"
        val_losses = iter(losses)

        def selection_loss(val, loss, it=val_losses):  # epoch 2 improves, or does not
            return next(it)

        monkeypatch.setattr(train_module, "selection_loss", selection_loss)
        monkeypatch.setattr(train_module, "atomic_torch_save", disk_full_at_second)
        saves.clear()
        with pytest.raises(InputError) as caught:
            train(small_config(fake_cifar, out), progress=False, log=lambda s: None)
        message = str(caught.value)
        assert "nothing was changed there" not in message
        assert re.search(rf"writing {out / 'last.pt'} failed \(No space left on device\) after epoch 2; "
                         + written.format(out=out)
                         + rf"\. Free space there .*then --resume --out-dir {out} trains epoch 2 again$", message), message
        assert json.loads((out / "best.json").read_text())["training"]["epoch"] == (2 if losses[1] < 1 else 1)
        assert load_training_state(out / "last.pt")["epoch"] == 1
        monkeypatch.undo()
        result = train(small_config(fake_cifar, out), resume=True, progress=False, log=lambda s: None)
        assert [h["epoch"] for h in result["history"]] == [1, 2]  # epoch 2 trained again, as said


def test_a_training_state_that_cannot_be_read_is_not_called_damaged(tmp_path, monkeypatch):
    """A last.pt that could not be read (no permission, an I/O error) was called "not a state written by 'moe-denoise
    train' (or damaged)", with advice to start again with --overwrite, which throws the run away. It is now named as
    unreadable, with the reason and what to fix; a file that was read and is not a state keeps the old advice."""
    import errno

    state = tmp_path / "last.pt"
    torch.save({"not": "a state"}, state)
    real_load = torch.load

    def unreadable(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(CheckpointError) as caught:
        load_training_state(state)
    assert str(caught.value) == (f"cannot read the training state {state}: Permission denied. Nothing was changed; "
                                 f"make it readable (check its permissions and the disk), then run again")
    monkeypatch.setattr(torch, "load", real_load)
    with pytest.raises(CheckpointError, match="not a training state written by 'moe-denoise train'.*--overwrite"):
        load_training_state(state)
    (tmp_path / "folder.pt").mkdir()  # 'make it readable' does not fit a folder
    with pytest.raises(CheckpointError, match=r"folder.pt is a folder, not a file written by 'moe-denoise train'"):
        load_training_state(tmp_path / "folder.pt")


def test_init_from_mistakes_are_named_for_what_they_are(fake_cifar, tmp_path, random_weights):
    """--init-from best.json was called damaged weights; /dev/null 'did not exist'; the shipped sigma20 into the
    default preset was told '8 tensors do not fit', not the preset its JSON names."""
    from moe_base.errors import CheckpointError
    from moe_base.manifest import SCHEMA, write_artifact
    from weights import SHIPPED

    onnx = tmp_path / "made.onnx"
    write_artifact(onnx, b"model", {"schema": SCHEMA, "artifact": {"sha256": "0" * 64, "bytes": 5},
                                    "model": {"weights_file": str(random_weights)}})
    for init, message in ((random_weights.with_suffix(".json"),
                           rf"is the JSON sidecar of weights .*not the weights: pass {random_weights}"),
                          ("/dev/null", r"weights file /dev/null is not a regular file"),
                          (onnx, rf"--init-from {onnx} is an ONNX model, not weights; training starts from weights "
                                 rf"\(\.safetensors or \.pt\): it was made from {random_weights}, give that to "
                                 rf"--init-from$"),  # it said 'pass that with --weights', and how to run it
                          (SHIPPED["sigma20"], r"made for the 'residual_refine_wide' architecture .* Pass --preset "
                                               r"residual_refine_wide")):
        with pytest.raises(CheckpointError, match=message):
            train(small_config(fake_cifar, tmp_path / "run", epochs=1, init_from=str(init)), progress=False,
                  log=lambda s: None)


@pytest.mark.gpu
def test_resume_on_cuda_continues_the_run(fake_cifar, tmp_path):
    """On a GPU the run resumes (the saved RNG state is a CPU tensor) and lands close to the uninterrupted one."""
    full = train(small_config(fake_cifar, tmp_path / "a", epochs=2, device="cuda"), progress=False,
                 log=lambda s: None)
    cfg = small_config(fake_cifar, tmp_path / "b", epochs=2, device="cuda")
    train(cfg, progress=False, stop_after_epoch=1, log=lambda s: None)
    resumed = train(cfg, resume=True, progress=False, log=lambda s: None)
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert next(iter(b.values())).is_cuda
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a), "resumed parameters drift from the full run"
    assert len(resumed["history"]) == 2


def test_resume_on_the_command_line_needs_only_the_folder(fake_cifar, tmp_path, capsys):
    """`train --resume --out-dir D` continues a run started with other settings than the defaults (preset, lr,
    sizes) as it was started: the result equals the uninterrupted run's. Given settings are still compared, a
    default written out included, and a longer run is refused with the way to train longer."""
    from moe_denoise.cli import main

    settings = dict(preset="residual", epochs=2, batch_size=16, max_train=32, max_val=16, seed=3, lr=2e-3,
                    device="cpu")
    train(TrainConfig(data_dir=str(fake_cifar), out_dir=str(tmp_path / "a"), **settings), progress=False,
          log=lambda s: None)
    cfg = TrainConfig(data_dir=str(fake_cifar), out_dir=str(tmp_path / "b"), **settings)
    train(cfg, progress=False, stop_after_epoch=1, log=lambda s: None)
    assert main(["train", "--out-dir", str(tmp_path / "b"), "--resume", "--no-progress", "--device", "cpu"]) == 0
    assert "resuming " in capsys.readouterr().out
    a, b = (load_training_state(tmp_path / run / "last.pt") for run in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]), "the resumed run differs"
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    for argv, message in ((["--preset", "seed"], "preset: saved 'residual', given 'seed'"),
                          (["--epochs", "3"], "epochs: saved 2, given 3 (the learning-rate schedule spans")):
        assert main(["train", "--out-dir", str(tmp_path / "b"), "--resume", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and f"--resume --out-dir {tmp_path / 'b'} alone continues the run" in err
    assert main(["train", "--out-dir", str(tmp_path / "b"), "--resume", "--no-progress"]) == 0
    assert "has finished all 2 epochs; nothing to continue" in capsys.readouterr().out


def test_resume_alone_keeps_the_runs_threads_and_device(fake_cifar, tmp_path, capsys):
    """--resume alone took torch's default thread count, not the run's --threads (other weights than the same run
    uninterrupted, and 'threads: null' recorded), and a --device cpu run went 'auto' (to a GPU where there is one)."""
    from moe_denoise.cli import main

    before = torch.get_num_threads()
    try:
        cfg = small_config(fake_cifar, tmp_path / "run", threads=1, device="cpu")
        train(cfg, progress=False, stop_after_epoch=1, log=lambda s: None)
        torch.set_num_threads(2)
        assert main(["train", "--out-dir", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
        assert "device cpu, 1 thread)" in capsys.readouterr().out
        training = json.loads((tmp_path / "run" / "best.json").read_text())["training"]
        assert (training["settings"]["threads"], training["settings"]["device"]) == (1, "cpu")
        assert "moe-denoise" in training["versions"] and training["versions"]["numpy"]  # torch's alone was recorded
    finally:
        torch.set_num_threads(before)


def test_a_run_started_without_threads_or_device_resumes_with_those_it_used(fake_cifar, tmp_path, capsys):
    """A run started without --threads or --device saved 'threads: null, device: auto': resumed under another
    OMP_NUM_THREADS it took that thread count (other weights than the run uninterrupted, without a word), and a CPU
    run would resume on a GPU. What it used is saved; a run saved as a GPU's is refused on a machine without one,
    saying how to continue it on the CPU."""
    from moe_denoise.cli import main
    from moe_model.train import load_training_state

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        train(small_config(fake_cifar, tmp_path / "run", epochs=2), progress=False, stop_after_epoch=1,
              log=lambda s: None)
        state = load_training_state(tmp_path / "run" / "last.pt")
        assert (state["train_config"]["threads"], state["train_config"]["device"]) == (1, "cpu")
        torch.set_num_threads(2)
        assert main(["train", "--out-dir", str(tmp_path / "run"), "--resume", "--no-progress"]) == 0
        assert "device cpu, 1 thread)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    state["train_config"]["device"] = "cuda:1"
    torch.save(state, tmp_path / "run" / "last.pt")
    state["epoch"] = 1  # not finished
    torch.save(state, tmp_path / "run" / "last.pt")
    if not torch.cuda.is_available():
        assert main(["train", "--out-dir", str(tmp_path / "run"), "--resume", "--no-progress"]) == 2
        assert (f"the run in {tmp_path / 'run'} was started on cuda:1, and torch sees no CUDA GPU here: continue it on "
                f"the CPU with: moe-denoise train --resume --out-dir {tmp_path / 'run'} --device cpu") in \
            capsys.readouterr().err


def test_a_run_that_diverged_says_what_to_change(fake_cifar, tmp_path, capsys):
    """A run whose validation loss was never finite said only 'no epoch finished with a finite validation loss': no
    advice, and the folder it left refused the next run unless --overwrite was added."""
    from moe_denoise.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(out), "--epochs", "1", "--max-train", "8",
            "--max-val", "8", "--batch-size", "8", "--lr", "1e30", "--grad-clip", "0", "--no-progress"]
    assert main(argv) == 2  # one step: its loss is finite, and the weights after it are not
    err = capsys.readouterr().err
    assert "the model diverged" in err and "Train again with a lower --lr (it was 1e+30) and with --grad-clip on, " \
           f"adding --overwrite to replace the run in {out}" in err, err


def test_init_from_a_file_of_the_run_an_overwrite_replaces_is_refused_up_front(fake_cifar, tmp_path):
    """--overwrite --init-from OUT/best.safetensors: the old run was moved aside before the weights were read, which
    were then said not to exist (after the data had loaded)."""
    from moe_base.errors import InputError

    train(small_config(fake_cifar, tmp_path / "run", epochs=1), progress=False, log=lambda s: None)
    before = (tmp_path / "run" / "best.safetensors").read_bytes()
    cfg = small_config(fake_cifar, tmp_path / "run", epochs=1, init_from=str(tmp_path / "run" / "best.safetensors"))
    with pytest.raises(InputError, match=r"is a file of the run --overwrite replaces in .*; copy it elsewhere first"):
        train(cfg, progress=False, log=lambda s: None, overwrite=True)
    assert (tmp_path / "run" / "best.safetensors").read_bytes() == before


def test_the_record_names_the_start_weights_as_they_were_and_the_first_command(fake_cifar, tmp_path, random_weights):
    """The start weights were hashed again at every best epoch: moved after the run began, a resumed run ended after a
    whole epoch in a FileNotFoundError (losing it); replaced, its record named the other weights. The record is made
    once when the run starts and kept in last.pt; it keeps the first command and lists the ones that resumed it."""
    import shutil

    from moe_model.checkpoint import origin

    start = tmp_path / "start.safetensors"
    shutil.copy(random_weights, start)
    shutil.copy(random_weights.with_suffix(".json"), start.with_suffix(".json"))
    before = origin(start)
    cfg = small_config(fake_cifar, tmp_path / "run", epochs=3, init_from=str(start))
    train(cfg, progress=False, stop_after_epoch=1, command="moe-denoise train FIRST", log=lambda s: None)
    start.write_bytes(b"other weights")  # replaced, then gone
    train(cfg, resume=True, progress=False, stop_after_epoch=2, command="moe-denoise train --resume A",
          log=lambda s: None)
    start.unlink()
    result = train(cfg, resume=True, progress=False, command="moe-denoise train --resume B", log=lambda s: None)
    assert len(result["history"]) == 3
    best = json.loads((tmp_path / "run" / "best.json").read_text())["training"]
    state = load_training_state(tmp_path / "run" / "last.pt")
    for record in (best, state["record"]):
        assert record["init_from"] == before
        assert record["command"] == "moe-denoise train FIRST"
        assert record["resumed_with"] == ["moe-denoise train --resume A", "moe-denoise train --resume B"]


def test_a_stop_within_an_epoch_says_what_resume_does_again(fake_cifar, tmp_path, monkeypatch):
    """Stopped part-way through an epoch, a run said only that the epoch before was kept: the steps done in the
    stopped epoch are lost, and --resume does them again."""
    import moe_model.train as train_module
    from moe_base.errors import Interrupted

    real, calls = train_module.total_loss, []

    def stopping_loss(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4 + 3:  # epoch 1 has 4 steps (64 images, batch 16): stopped in the third of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "total_loss", stopping_loss)
    with pytest.raises(Interrupted, match=r"^epoch 2/3 had done 2 of 4 steps, which --resume does again$"):
        train(small_config(fake_cifar, tmp_path / "run", epochs=3, max_train=64), progress=False, log=lambda s: None)
    assert load_training_state(tmp_path / "run" / "last.pt")["epoch"] == 1
    calls.clear()  # in the first epoch nothing is kept: --resume would not do them again
    with pytest.raises(Interrupted, match=r"^epoch 1/3 had done 2 of 4 steps, lost with it$"):
        calls.extend([1] * 4)
        train(small_config(fake_cifar, tmp_path / "new", epochs=3, max_train=64), progress=False, log=lambda s: None)


def test_stop_after_epoch_on_the_command_line(fake_cifar, tmp_path, capsys):
    """Stage B1 of docs/training.md was stopped by hand after epoch 5 of 30 (its schedule is the 30 epochs'): to
    reproduce it one had to watch it. --stop-after-epoch N stops there, and --resume goes on with the same schedule."""
    from moe_denoise.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(out), "--epochs", "3", "--batch-size", "16",
            "--max-train", "32", "--max-val", "16", "--seed", "3", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--stop-after-epoch", "4"]) == 2  # past the last epoch: it was ignored in silence
    assert "--stop-after-epoch 4 is past the run's last epoch (3)" in capsys.readouterr().err
    assert main([*argv, "--stop-after-epoch", "1"]) == 0
    assert "stopping after epoch 1 as asked; continue with --resume" in capsys.readouterr().out
    state = load_training_state(out / "last.pt")
    assert state["epoch"] == 1 and state["train_config"]["epochs"] == 3
    resume = ["train", "--out-dir", str(out), "--resume", "--no-progress", "--device", "cpu"]
    assert main([*resume, "--stop-after-epoch", "1"]) == 2  # it ran epoch 2 and said it stopped 'as asked'
    assert "has done 1 epoch already; --stop-after-epoch 1 is behind it" in capsys.readouterr().err
    assert load_training_state(out / "last.pt")["epoch"] == 1
    assert main(["train", "--out-dir", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 0
    assert load_training_state(out / "last.pt")["epoch"] == 3
    whole = train(small_config(fake_cifar, tmp_path / "whole", epochs=3), progress=False, log=lambda s: None)
    assert [h["val_loss"] for h in whole["history"]] == [h["val_loss"] for h in
                                                         load_training_state(out / "last.pt")["history"]]


def test_signals_held_until_the_block_is_done():
    """The weights, their JSON and the training state are written under signals_held: a Ctrl-C between them left
    weights whose JSON named another file's hash (refused when loaded). The signal acts once the block is done."""
    import signal

    from moe_base.errors import signals_held

    done = []
    with pytest.raises(KeyboardInterrupt):
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(OSError, match="disk full"):  # a failing block's error is not hidden behind the stop
        with signals_held():
            signal.raise_signal(signal.SIGINT)
            raise OSError(28, "disk full")


def test_overwrite_keeps_the_old_run_until_the_new_one_has_saved_an_epoch(fake_cifar, tmp_path, monkeypatch):
    """--overwrite deleted the old run before the new one had saved anything: a Ctrl-C a moment after a mistaken
    --overwrite lost both. Now the old files wait aside and come back when the new run saved no epoch; once it has,
    they are gone (none of them can be mistaken for the new run's)."""
    import moe_model.train as train_module

    run = tmp_path / "run"
    train(small_config(fake_cifar, run, epochs=1), progress=False, log=lambda s: None)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert sorted(before) == ["best.json", "best.safetensors", "last.pt"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "evaluate_loss", interrupted)  # Ctrl-C at the end of the first epoch
    with pytest.raises(KeyboardInterrupt):
        train(small_config(fake_cifar, run, epochs=1, seed=9), progress=False, log=lambda s: None, overwrite=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # the old run, as it was; nothing aside
    monkeypatch.undo()
    train(small_config(fake_cifar, run, epochs=1, seed=9), progress=False, log=lambda s: None, overwrite=True)
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    assert sorted(after) == sorted(before) and after["last.pt"] != before["last.pt"]  # the new run; .replaced gone


def test_resuming_a_run_whose_best_weights_were_removed_says_so(fake_cifar, tmp_path, capsys):
    """It said 'no epoch finished with a finite validation loss', which every epoch had: best.safetensors is
    rewritten only when an epoch beats the best, so a removed one stays missing"""
    from moe_denoise.cli import main

    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(out), "--epochs", "1", "--batch-size", "16",
            "--max-train", "32", "--max-val", "16", "--no-progress", "--device", "cpu", "--loss", "psnr"]
    assert main(argv) == 0
    assert "(minus the PSNR in dB: --loss psnr); weights:" in capsys.readouterr().out
    (out / "best.safetensors").unlink()
    assert main(["train", "--out-dir", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 2
    text = capsys.readouterr().err  # an error, not a result (it was on standard output, exit 1)
    assert "best.safetensors is missing: it was written at the epoch with the best validation loss" in text
    assert "no epoch finished" not in text
    (out / "last.pt").unlink()
    (out / "last.pt").mkdir()  # it was said not to exist
    assert main(["train", "--out-dir", str(out), "--resume", "--no-progress", "--device", "cpu"]) == 2
    assert "last.pt is not a file (a folder?)" in capsys.readouterr().err


def test_init_from_takes_the_names_of_shipped_weights(fake_cifar, tmp_path, capsys):
    """--weights blind works in every command, and --init-from blind said 'no such file'"""
    from moe_denoise.cli import main
    from weights import SHIPPED

    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(out), "--epochs", "1", "--batch-size", "16",
            "--max-train", "16", "--max-val", "16", "--no-progress", "--device", "cpu", "--preset",
            "residual_refine_wide", "--lr", "1e-12"]
    assert main([*argv, "--init-from", "blind"]) == 0
    side = json.loads((out / "best.json").read_text())
    assert side["training"]["init_from"]["path"] == str(SHIPPED["blind"])
    assert main([*argv, "--init-from", "nothing-here", "--overwrite"]) == 2
    assert "--init-from nothing-here: no such file, and not the name of shipped weights" in capsys.readouterr().err
    capsys.readouterr()
    resumed = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(tmp_path / "two"), "--epochs", "2",
               "--batch-size", "16", "--max-train", "16", "--max-val", "16", "--no-progress", "--device", "cpu",
               "--preset", "residual_refine_wide", "--lr", "1e-12", "--init-from", "blind"]
    assert main([*resumed, "--stop-after-epoch", "1"]) == 0
    # the same command line with --resume: the name was compared with the file it stood for, and refused
    assert main([*resumed, "--resume"]) == 0, capsys.readouterr().err
    assert "epoch 2/2" in capsys.readouterr().out


def test_a_folder_named_like_shipped_weights_does_not_hide_them_from_init_from(fake_cifar, tmp_path, monkeypatch,
                                                                               capsys):
    """--weights blind takes the shipped weights when a folder named blind is in the current folder (photos in
    ./blind); --init-from blind took the folder and stopped with 'weights file blind is a folder, not a file'."""
    from moe_denoise.cli import main
    from weights import SHIPPED

    monkeypatch.chdir(tmp_path)
    (tmp_path / "blind").mkdir()
    out = tmp_path / "run"
    argv = ["train", "--data-dir", str(fake_cifar), "--out-dir", str(out), "--epochs", "1", "--batch-size", "16",
            "--max-train", "16", "--max-val", "16", "--no-progress", "--device", "cpu", "--preset",
            "residual_refine_wide", "--lr", "1e-12", "--init-from", "blind"]
    assert main(argv) == 0, capsys.readouterr().err
    side = json.loads((out / "best.json").read_text())
    assert side["training"]["init_from"]["path"] == str(SHIPPED["blind"])


def test_a_run_an_overwrite_left_aside_is_named_not_deleted(tmp_path):
    """--overwrite moves the old run into OUT/.replaced and puts it back when the new run stops before its first
    epoch is saved; a run killed outright (SIGKILL, out of memory) never put it back. --resume then said only that
    last.pt did not exist, a plain run was accepted, and the next --overwrite deleted the old run in silence."""
    from moe_base.errors import InputError
    from moe_model.train import REPLACED, existing_run

    aside = tmp_path / REPLACED
    aside.mkdir()
    for name in ("best.json", "best.safetensors", "last.pt"):
        (aside / name).write_text("old run")
    for resume, overwrite in ((True, False), (False, False), (False, True)):
        with pytest.raises(InputError, match=r"\.replaced holds a training run \(best\.json, best\.safetensors, "
                                             r"last\.pt\) that an --overwrite moved aside and never put back"):
            existing_run(tmp_path, resume, overwrite)
    assert sorted(p.name for p in aside.iterdir()) == ["best.json", "best.safetensors", "last.pt"]
    for name in ("best.json", "best.safetensors"):  # the new run's best weights come before its state: killed between
        (tmp_path / name).write_text("the new run, unsaved")
    with pytest.raises(InputError, match=r"never put back: .* \(the best\.safetensors, best\.json in .* are that "
                                         r"run's, without its state\)"):
        existing_run(tmp_path, False, True)  # the next --overwrite deleted the old run
    (tmp_path / "last.pt").write_text("the new run, saved")  # the new run got as far as its state: aside is stale
    assert existing_run(tmp_path, True, False) == ["last.pt", "best.safetensors", "best.json"]


def test_init_from_refuses_weights_that_do_not_match_their_json(tmp_path, random_weights):
    """train --init-from trained from weights whose sidecar records another sha256, without a word; every other
    command refuses them. train has no --skip-weights-check, so the refusal names none."""
    import shutil

    from moe_model.train import warm_start

    edited = tmp_path / "edited.safetensors"
    shutil.copy(random_weights, edited)
    side = json.loads(random_weights.with_suffix(".json").read_text())
    edited.with_suffix(".json").write_text(json.dumps({**side, "sha256": "0" * 64}))
    model = load_model(random_weights)
    with pytest.raises(CheckpointError, match=r"^--init-from: weights .*edited\.safetensors do not match the sha256") as e:
        warm_start(model, str(edited), log=lambda s: None)
    assert "skip-weights-check" not in str(e.value) and "Use the original file" in str(e.value)
    warm_start(model, str(random_weights), log=lambda s: None)  # the file as written: taken


def test_validation_psnr_std_is_the_population_std_as_evaluate_reports_it():
    import numpy as np

    from moe_model.evaluate import _stats
    from moe_model.metrics import psnr_per_image
    from moe_model.train import evaluate_loss

    class Half(torch.nn.Module):
        def forward(self, x):
            return 0.5 * x

    gen = torch.Generator().manual_seed(0)
    clean = torch.rand(5, 3, 8, 8, generator=gen)
    noisy = torch.rand(5, 3, 8, 8, generator=gen)
    val = evaluate_loss(Half(), noisy, clean, batch_size=2, device=torch.device("cpu"))
    per_image = psnr_per_image(0.5 * noisy, clean).numpy()
    assert val["psnr_std"] == pytest.approx(float(np.std(per_image)), rel=1e-5)
    assert val["psnr_std"] == pytest.approx(_stats(per_image)["std"], rel=1e-5)
    one = evaluate_loss(Half(), noisy[:1], clean[:1], batch_size=2, device=torch.device("cpu"))
    assert one["psnr_std"] == 0.0


def test_a_stop_between_the_weights_and_their_json_waits_for_the_json(tmp_path, monkeypatch):
    """save_weights holds Ctrl-C between its two writes for every caller (train held it; tools.photo_finetune did
    not, and a stop there left new weights beside the old JSON, refused when loaded)."""
    import signal

    from moe_base.config import get_preset
    from moe_model import checkpoint
    from moe_model.model import SmallViT

    model = SmallViT(get_preset("seed"))
    checkpoint.save_weights(model, tmp_path / "w.safetensors")
    real = checkpoint.atomic_write_json

    def stopped_first(path, obj, *a, **kw):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C lands after the weights, before their JSON
        return real(path, obj, *a, **kw)

    monkeypatch.setattr(checkpoint, "atomic_write_json", stopped_first)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_weights(model, tmp_path / "w.safetensors")
    assert torch.equal(load_model(tmp_path / "w.safetensors").state_dict()[next(iter(model.state_dict()))],
                       next(iter(model.state_dict().values())))  # loads: its JSON names the new weights' hash


def test_a_ctrl_c_while_the_optimizer_is_made_waits_for_it(fake_cifar, tmp_path, monkeypatch, capsys):
    """The optimizer's first use imports torch._dynamo and triton, whose native code cannot take a Ctrl-C: one that
    arrived during that import aborted the process (SIGABRT, 'terminate called after throwing an instance of
    nanobind::python_error', a 70-line traceback). It now waits until the optimizer is made, then stops the run as
    any Ctrl-C does (exit 130, nothing kept)."""
    import signal

    from moe_denoise.cli import main

    real, made = torch.optim.AdamW, []

    def adamw(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while it is being made
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    code = main(["train", "--data-dir", str(fake_cifar), "--epochs", "1", "--batch-size", "16", "--max-train", "32",
                 "--max-val", "16", "--no-progress", "--out-dir", str(tmp_path / "run")])
    assert code == 130 and len(made) == 1 and "no epoch had finished" in capsys.readouterr().err


def test_an_overwrite_stopped_before_its_first_epoch_says_the_earlier_run_is_back(fake_cifar, tmp_path, monkeypatch,
                                                                                 capsys):
    """train --overwrite stopped before its first epoch puts the earlier run back, and said only 'the run in X has
    finished all 3 epochs; its weights are X/best.safetensors', which read as the new run's."""
    from moe_denoise.cli import main

    base = ["train", "--data-dir", str(fake_cifar), "--epochs", "1", "--batch-size", "16", "--max-train", "32",
            "--max-val", "16", "--no-progress", "--out-dir", str(tmp_path / "run")]
    assert main(base) == 0
    before = (tmp_path / "run" / "best.safetensors").read_bytes()

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.optim, "AdamW", stopped)
    capsys.readouterr()
    assert main([*base, "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "the --overwrite did not happen: the new run was stopped before its first epoch was saved" in err
    assert "the run in" in err and (tmp_path / "run" / "best.safetensors").read_bytes() == before
