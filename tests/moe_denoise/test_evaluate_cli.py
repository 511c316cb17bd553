"""moe-denoise evaluate: the across-sigma report (default), several weights, photos, plot, and the one-sigma table."""
import importlib.util
import json

import pytest

from moe_denoise.cli import build_parser, main
from tests.extras import skip_when_missing


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if code:
        skip_when_missing(err)  # a base install without the test extra: skipped, naming the package
    return code, out, err


def test_across_sigma_report_for_two_weights(capsys, fake_cifar, random_weights, tmp_path):
    saved = tmp_path / "out" / "report.json"
    code, out, _ = run(capsys, "evaluate", "--weights", random_weights, "--label", "a", "--weights", random_weights,
                       "--label", "b", "--data-dir", fake_cifar, "--limit", 4, "--sigmas", 0, 25, "--bm3d-images",
                       0, "--no-ssim", "--threads", 1, "--save-json", saved, "--json")
    assert code == 0
    r = json.loads(out)
    assert r == json.loads(saved.read_text())
    assert [w["label"] for w in r["weights"]] == ["a", "b"] and r["weights"][0]["preset"] == "seed"
    c = r["cifar"]
    assert c["num_images"] == 4 and c["sigmas"] == [0, 25] and c["bm3d"] is None and r["photos"] is None
    assert c["rows"]["clip"]["25"]["a"] == c["rows"]["clip"]["25"]["b"]  # the same weights score the same
    assert c["rows"]["unclipped"]["0"]["noisy input"]["psnr"]["mean"] is None  # infinite: the clean image itself
    assert {t["weights"] for t in r["targets"]} == {"a", "b"}
    # what it takes to make the report again: which weights (by hash), the command, threads and versions
    from moe_base.fileio import sha256_file

    assert r["weights"][0]["sha256"] == sha256_file(random_weights) and r["threads"] == 1
    assert r["command"].startswith("moe-denoise evaluate --weights") and r["versions"]["torch"]
    assert set(r["versions"]) >= {"moe-denoise", "torch", "numpy", "skimage", "bm3d"}


def test_table_is_the_default_output(capsys, fake_cifar, random_weights):
    code, out, _ = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 3,
                       "--sigmas", 0, 50, "--protocol", "clip", "--bm3d-images", 0, "--no-ssim")
    assert code == 0
    assert "[clip] PSNR (dB), all 3 images" in out and "sigma 50" in out and "random" in out
    assert "[unclipped]" not in out and "quality targets (the project's, set for the blind weights" in out
    assert "note: the CIFAR-10 targets are set on the whole test split; these were measured on its first 3 images " \
           "(--limit): indicative only" in out


def test_single_sigma_keeps_the_old_table_and_json(capsys, fake_cifar, random_weights):
    code, out, _ = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 4,
                       "--sigma", 0.2, "--json")
    r = json.loads(out)
    assert code == 0 and r["num_images"] == 4 and r["sigma"] == 0.2 and set(r["protocols"]) == {"clip", "unclipped"}
    assert r["protocols"]["clip"]["model"]["ssim"]["mean"] > 0 and r["weights"] == str(random_weights)
    from moe_base.fileio import sha256_file  # it recorded neither the weights' hash, the command nor any version

    assert r["weights_sha256"] == sha256_file(random_weights) and r["command"].endswith("--sigma 0.2 --json")
    assert r["versions"]["torch"] and "moe-denoise" in r["versions"] and r["threads"] >= 1
    code, out, _ = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 4,
                       "--sigma", 0.2, "--no-ssim", "--label", "mine")
    assert code == 0 and "sigma 0.2" in out and "noisy input" in out
    assert "clip       mine" in out and " model " not in out  # --label was in the JSON only: every table said 'model'


@pytest.mark.parametrize("argv, message", [
    (["--preset", "seed", "--preset", "seed"], "--preset was given 2 times for 1 --weights; give it once per "
                                               "--weights, in the same order (use 'auto' for a preset read from"),
    (["--label", "a", "--label", "b"], "--label was given 2 times for 1 --weights; give it once per --weights, in "
                                       "the same order\n"),
    (["--label", "x", "--weights", "W", "--label", "x"], "share the label(s) ['x']"),
    (["--sigma", "0.2", "--plot", "p.png"], "cannot be combined with --plot"),
    (["--sigma", "0.2", "--sigmas", "5", "15"], "cannot be combined with --sigmas;"),  # it was ignored in silence
    (["--sigma", "0.2", "--bm3d-images", "4"], "cannot be combined with --bm3d-images;"),
    (["--photos", "camera"], "--suite photos or --suite all"),
    (["--photo-seed", "5"], "--photo-seed and --no-guard are about the photos"),  # it was ignored in silence
    (["--suite", "photos", "--limit", "4"], "--limit takes the first N CIFAR-10 images"),
    (["--suite", "photos", "--bm3d-images", "4", "--split", "val", "--eval-seed", "1"],  # ignored in silence
     "--bm3d-images, --split, --eval-seed, --data-dir are about the CIFAR-10 images, and --suite photos scores none"),
    (["--sigmas", "25", "15", "25"], "--sigmas names 25 more than once"),
    (["--sigmas", "25", "25.0000001"], "--sigmas names 25 more than once (levels are told apart to 6 significant"),
    (["--suite", "photos", "--protocol", "clip"], "--protocol, --data-dir are about the CIFAR-10 images"),  # ignored
    (["--sigmas", "-5"], "0-255 scale"),
    (["--sigmas", "15", "300"], "from 0 to 255 on the 0-255 scale (got 300)"),  # it ran for minutes
    (["--sigmas", "0", "0.1", "0.2"], "0.1 0.2 are under one level of 255; for noise std 0.1 0.2 on [0, 1] pixels write "
                                      "--sigmas 25.5 51"),
    (["--sigmas", "1e-9"], "1e-09 is under one level of 255; give levels from 1 to 255 (0: clean input, no noise)"),  # was
    # told to write 2.55e-07, which was refused in turn
    (["--sigmas", "0.001", "0.5"], "0.001 0.5 are under one level of 255; give levels from 1 to 255"),
    (["--bm3d-images", "-1"], "--bm3d-images must be >= 0"),
    (["--suite", "photos", "--bm3d-photos", "camera", "camera"], "--bm3d-photos names camera more than once"),
    (["--suite", "photos", "--bm3d-photos", "none", "camera"], "'none' (no BM3D on the photos) stands alone"),
    (["--label", ""], "--label is empty"),
    (["--weights", "W", "--preset", "seed"], "--preset was given once for 2 --weights"),  # 'given 1 times'
])
def test_bad_arguments_are_clear_errors(capsys, fake_cifar, random_weights, argv, message):
    argv = [random_weights if a == "W" else a for a in argv]
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, *argv)
    assert code == 2 and message in err and "Traceback" not in err and out == ""


@pytest.mark.parametrize("level, message", [
    ("25/255", "argument --sigmas: levels here are on the 0-255 scale: for 25/255 write 25"),  # --sigma's form; it was
    # 'expected a number (e.g. 0.7 or 1e-3)', two examples --sigmas refuses
    ("0.1/1", "argument --sigmas: levels here are on the 0-255 scale: for 0.1/1 write 25.5"),
    ("abc", "argument --sigmas: expected a noise level on the 0-255 scale (e.g. 25), got 'abc'"),
])
def test_sigmas_written_otherwise_get_the_level_to_write(capsys, level, message):
    with pytest.raises(SystemExit) as stop:
        run(capsys, "evaluate", "--sigmas", "15", level)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None or importlib.util.find_spec("matplotlib") is None,
                    reason="needs scikit-image (photos) and matplotlib (plot): pip install 'moe-denoise[eval,plot]'")
def test_photos_suite_with_plot(capsys, monkeypatch, fake_cifar, random_weights, tmp_path):
    from benchmarks import quality

    full = quality.load_photo
    monkeypatch.setattr(quality, "load_photo", lambda name: full(name)[:40, :56])  # small crops: seconds, not minutes
    plot = tmp_path / "psnr.png"
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 2,
                         "--suite", "all", "--photos", "camera", "astronaut", "--bm3d-photos", "none", "--bm3d-images",
                         0, "--sigmas", 0, 15, "--no-ssim", "--plot", plot)
    assert code == 0 and plot.read_bytes()[:4] == b"\x89PNG"
    # stderr is no terminal here, as in a log: a line per noise level, no bar
    lines = err.splitlines()
    assert lines[0].startswith("CIFAR-10: clip sigma 0 (1 of 4 levels, ") and "\r" not in err
    assert [x.split(" (")[0] for x in lines if x.startswith("photos:")] == [
        "photos: camera sigma 0", "photos: camera sigma 15", "photos: camera sigma 51",
        "photos: astronaut sigma 0", "photos: astronaut sigma 15"]
    assert "(5 of 5 levels, 100%, " in lines[-1] and lines[-1].endswith(" s)")
    assert "camera (gray, 56x40) PSNR" in out and "astronaut (colour, 56x40)" in out and "camera at sigma 0.2" in out
    assert "== CIFAR-10 test split" in out and f"plot written to {plot}" in out


def test_missing_bm3d_fails_before_any_work(capsys, monkeypatch, fake_cifar, random_weights):
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # import bm3d now raises ImportError
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--bm3d-images", 2)
    assert code == 2 and "moe-denoise[eval]" in err and "--bm3d-images 0" in err and out == ""


def test_suite_all_refuses_a_photo_before_the_cifar_work(capsys, monkeypatch, fake_cifar, random_weights):
    """--suite all scored every CIFAR-10 level (10 minutes in the documented run), then refused a photo name that
    --suite photos refuses before any work (unknown, given twice, or a sample that needs a download)"""
    import moe_model.evaluate

    def cifar_work(*args, **kwargs):
        raise AssertionError("the CIFAR-10 suite ran before the photos were checked")

    monkeypatch.setattr(moe_model.evaluate, "evaluate_across_sigmas", cifar_work)
    for photos, message in ((["camera", "nosuch"], "unknown photo 'nosuch'"),
                            (["camera", "camera"], "photos ['camera'] are named more than once")):
        code, out, err = run(capsys, "evaluate", "--suite", "all", "--weights", random_weights, "--data-dir",
                             fake_cifar, "--bm3d-images", 0, "--photos", *photos)
        assert code == 2 and message in err and out == ""


def test_outputs_are_checked_before_any_work_and_never_replaced_without_overwrite(capsys, monkeypatch, fake_cifar,
                                                                                  random_weights, tmp_path):
    """--plot and --save-json were written after the whole run: an unwritable path lost the run, and an existing
    file (a text file given by mistake) was replaced in silence, a PNG written under any name."""
    import moe_model.checkpoint

    def no_work(*args, **kwargs):
        raise AssertionError("the weights were loaded before the outputs were checked")

    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    monkeypatch.setattr(moe_model.checkpoint, "load_model", no_work)
    for argv, message in ((["--save-json", mine], f"--save-json: the output '{mine}' already exists"),
                          (["--plot", mine], "--plot writes a PNG image; give a path ending in .png"),
                          (["--plot", tmp_path / "p.png", "--save-json", tmp_path / "p.png"], "both name"),
                          (["--plot", tmp_path], "--plot writes a PNG image")):
        code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, *argv)
        assert code == 2 and message in err and out == "", err
    assert mine.read_text() == "mine"
    monkeypatch.undo()
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 2,
                         "--sigmas", 25, "--bm3d-images", 0, "--no-ssim", "--save-json", mine, "--overwrite")
    assert code == 0 and json.loads(mine.read_text())["cifar"]["num_images"] == 2


def test_a_report_file_that_appears_during_the_run_is_not_replaced(capsys, monkeypatch, fake_cifar, random_weights,
                                                                    tmp_path):
    """--save-json was checked before the run, then written with replacement: a file made meanwhile (a second
    evaluation with the same --save-json) was replaced in silence."""
    import moe_denoise.commands.evaluate as evaluate_cmd

    report = tmp_path / "r.json"
    real = evaluate_cmd._emit

    def someone_writes_first(args, *rest):
        report.write_text('{"mine": 1}')
        return real(args, *rest)

    monkeypatch.setattr(evaluate_cmd, "_emit", someone_writes_first)
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 2,
                         "--sigmas", 25, "--bm3d-images", 0, "--no-ssim", "--save-json", report)
    assert code == 2 and "already exists; refusing to replace it" in err and report.read_text() == '{"mine": 1}'
    assert "The results are printed above" in err and "noisy input" in out  # the run's results are not lost


def test_labels_that_name_rows_of_the_report_are_refused_before_any_work(capsys, fake_cifar, random_weights):
    """A --label 'a + guard' beside a model 'a' took the place of a's guarded photo row with the other model's
    numbers (27.94 dB shown where a's was 29.35); a reserved label was refused only after the CIFAR-10 part."""
    common = ["--data-dir", fake_cifar, "--limit", 2, "--sigmas", 25, "--bm3d-images", 0, "--no-ssim"]
    code, _, err = run(capsys, "evaluate", "--weights", random_weights, "--label", "a", "--weights", random_weights,
                       "--label", "a + guard", *common)
    assert code == 2 and "the label(s) ['a + guard'] name rows of the report" in err
    code, out, err = run(capsys, "evaluate", "--suite", "all", "--weights", random_weights, "--label",
                         "best Gaussian blur", *common, "--photos", "camera", "--bm3d-photos", "none")
    assert code == 2 and "the label(s) ['best Gaussian blur'] name rows" in err and out == ""


def test_evaluate_takes_skip_weights_check_as_its_refusal_advises(capsys, fake_cifar, random_weights, tmp_path):
    """evaluate refused edited weights with 'pass --skip-weights-check', an option it did not have."""
    import shutil

    edited = tmp_path / "edited.safetensors"
    shutil.copy(random_weights, edited)
    side = json.loads(random_weights.with_suffix(".json").read_text())
    edited.with_suffix(".json").write_text(json.dumps({**side, "sha256": "0" * 64}))
    argv = ["evaluate", "--weights", edited, "--data-dir", fake_cifar, "--limit", 2, "--sigmas", 25, "--bm3d-images",
            0, "--no-ssim", "--threads", 1]
    code, _, err = run(capsys, *argv)
    assert code == 2 and "--skip-weights-check" in err
    code, out, err = run(capsys, *argv, "--skip-weights-check")
    assert code == 0, err


def test_shipped_weights_are_labelled_by_the_name_given(random_weights):
    """'--weights blind' was labelled 'moe_denoiser' (its file), and no --weights 'shipped', where two are shipped."""
    from moe_denoise.commands.evaluate import weights_specs

    def labels(*argv):
        return [s["label"] for s in weights_specs(build_parser().parse_args(["evaluate", *map(str, argv)]))]

    assert labels() == ["blind"]
    assert labels("--weights", "blind", "--weights", "sigma20") == ["blind", "sigma20"]
    assert labels("--weights", random_weights) == [random_weights.stem]
    assert labels("--weights", "sigma20", "--label", "mine") == ["mine"]


def test_what_would_lose_the_run_or_the_weights_is_refused_before_any_work(capsys, monkeypatch, fake_cifar,
                                                                          random_weights, tmp_path):
    """--plot without matplotlib was found after the whole run, which was lost (table and --save-json too); and
    '--save-json x.json --overwrite' beside x.safetensors replaced the weights' sidecar, leaving them unusable."""
    import sys

    import moe_model.checkpoint

    def no_work(*args, **kwargs):
        raise AssertionError("the weights were loaded before the outputs were checked")

    monkeypatch.setattr(moe_model.checkpoint, "load_model", no_work)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--plot",
                         tmp_path / "p.png")
    assert code == 2 and "--plot needs the Python package 'matplotlib'" in err and out == ""
    sidecar = random_weights.with_suffix(".json")
    before = sidecar.read_bytes()
    for target, what in ((sidecar, "the sidecar of the weights"), (random_weights, "the weights file")):
        code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--save-json",
                             target, "--overwrite")
        assert code == 2 and f"is {what}" in err and "which this run reads" in err and out == ""
    assert sidecar.read_bytes() == before
    from weights import SHIPPED

    shipped = SHIPPED["blind"].with_suffix(".json")  # no --weights: the shipped default's sidecar
    code, out, err = run(capsys, "evaluate", "--data-dir", fake_cifar, "--save-json", shipped, "--overwrite")
    assert code == 2 and "is the sidecar of the weights" in err


def test_a_screen_that_cannot_be_written_loses_no_file(capsys, monkeypatch, fake_cifar, random_weights, tmp_path):
    """'evaluate ... --json --save-json e.json | head' (the reader gone before a 115 KB JSON was printed) or
    '> /dev/full' lost --save-json and --plot: they were written after the printing, which failed."""
    import os
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: a write raises BrokenPipeError (Python ignores SIGPIPE)
    saved = tmp_path / "e.json"
    with open(write_end, "w", buffering=1) as gone:
        monkeypatch.setattr(sys, "stdout", gone)
        code = main(["evaluate", "--weights", str(random_weights), "--data-dir", str(fake_cifar), "--limit", "2",
                     "--sigmas", "25", "--protocol", "clip", "--bm3d-images", "0", "--no-ssim", "--json",
                     "--save-json", str(saved)])
        monkeypatch.undo()
    assert code == 141 and json.loads(saved.read_text())["cifar"]["num_images"] == 2


def test_progress_goes_to_stderr_with_json_too(capsys, fake_cifar, random_weights):
    """--json turned off the progress lines, on stderr: a 20-minute '--json > report.json' ran in silence."""
    import shlex

    argv = ["evaluate", "--weights", str(random_weights), "--data-dir", str(fake_cifar), "--limit", "2", "--sigmas",
            "-0", "25", "--protocol", "clip", "--bm3d-images", "0", "--no-ssim", "--json", "--label", "my model"]
    code, out, err = run(capsys, *argv)
    assert code == 0 and "CIFAR-10: clip sigma 25 (2 of 2 levels" in err
    report = json.loads(out)
    assert report["cifar"]["sigmas"] == [0, 25]  # -0 was reported as 'sigma -0'
    assert shlex.split(report["command"]) == ["moe-denoise", *argv]  # '--label my model' could not be run again


def test_table_columns_hold_long_levels():
    """'sigma 12.75sigma 127.5': the columns were 10 characters wide, whatever the level."""
    from moe_model.evaluate import format_grid

    rows = {k: {"m": {"psnr": {"mean": 30.0}}} for k in ("12.75", "127.5")}
    header = format_grid("t", rows, [12.75, 127.5], ["m"], "psnr", 2)[1]
    assert header.split()[1:] == ["sigma", "12.75", "sigma", "127.5"]


@pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                    reason="needs scikit-image (photos): pip install 'moe-denoise[eval]'")
def test_a_stop_during_the_photos_keeps_the_cifar_part(capsys, monkeypatch, fake_cifar, random_weights, tmp_path):
    """--suite all stopped during the photos lost the finished CIFAR-10 part (minutes of work): nothing printed or
    saved. It is now printed and written, and the command stops with 130 saying so."""
    from benchmarks import quality

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quality, "evaluate_photos", stopped)
    saved = tmp_path / "e.json"
    code, out, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", fake_cifar, "--limit", 2,
                         "--suite", "all", "--photos", "camera", "--bm3d-photos", "none", "--bm3d-images", 0,
                         "--sigmas", 25, "--protocol", "clip", "--no-ssim", "--save-json", saved)
    assert code == 130 and "== CIFAR-10 test split" in out and "photos were not scored" in out
    assert f"the CIFAR-10 results are printed above and written to {saved}" in err
    report = json.loads(saved.read_text())
    assert report["cifar"]["num_images"] == 2 and report["photos"] is None and "interrupted" in report


def test_evaluate_writes_every_file_before_it_says_so(tmp_path, monkeypatch):
    """evaluate --plot P --save-json J | head -1: the table fit in the pipe, the plot was written, and its 'plot
    written to' line, printed between the two writes, met the closed pipe: the JSON report was never written."""
    import argparse
    import errno
    import io
    import sys

    from moe_denoise.commands.evaluate import _write_outputs

    class Gone(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    args = argparse.Namespace(plot=tmp_path / "p.png", save_json=tmp_path / "r.json", overwrite=False)
    monkeypatch.setattr(sys, "stdout", Gone())
    with pytest.raises(BrokenPipeError):
        _write_outputs(args, {"rows": []}, b"\x89PNG plot", quiet=False)
    assert (tmp_path / "p.png").read_bytes() == b"\x89PNG plot" and json.loads((tmp_path / "r.json").read_text())


def test_a_missing_data_folder_is_said_before_a_missing_bm3d(capsys, tmp_path, monkeypatch, random_weights):
    """Without bm3d, 'evaluate --data-dir nonexist' asked to install bm3d first; the data folder's error came only
    once that download was done."""
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # as in an install without the eval extra
    code, _, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", tmp_path / "nonexist",
                       "--sigmas", 25)
    assert code == 2 and "CIFAR-10 folder" in err and "does not exist" in err and "bm3d" not in err, err
