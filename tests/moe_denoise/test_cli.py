"""The moe-denoise command: help on every subcommand, and each job end to end on tiny inputs."""
import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moe_base.errors import InputError
from moe_denoise.cli import COMMANDS, build_parser, main
from tests.extras import MISSING, skip_when_missing


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    if code:
        skip_when_missing(err)  # a base install without the test extra: skipped, naming the package
    return code, out, err


@pytest.mark.parametrize("command", tuple(c.replace("_", "-") for c in COMMANDS) + ("add-noise",))
def test_help_on_each_subcommand(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: moe-denoise " + command in capsys.readouterr().out


def _subparsers():
    import argparse

    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


@pytest.mark.parametrize("command", tuple(c.replace("_", "-") for c in COMMANDS) + ("add-noise",))
def test_every_option_says_what_it_does_and_its_default_once(command):
    """--help explains every option; a default is shown once, and never as 'None' or 'False' (the help says what
    happens without the option)."""
    parser = _subparsers()[command]
    unexplained = [a.option_strings or a.dest for a in parser._actions if not a.help]
    assert not unexplained, f"{command}: options without help: {unexplained}"
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    for action in parser._actions:
        shown = parser._get_formatter()._expand_help(action) if action.help else ""
        assert shown.lower().count("default:") <= 1, (command, action.option_strings, shown)


def test_help_shows_defaults_from_the_code():
    """Defaults are shown from the code, so they cannot drift: a preset's batch sizes, a train setting."""
    from moe_denoise.commands.bench import PRESETS

    sub = _subparsers()
    bench = " ".join(sub["bench"].format_help().split())
    assert f"--quick {PRESETS['quick']['repeats']}, --gpu {PRESETS['gpu']['repeats']}" in bench
    assert "(default: 1,8,64,256; --quick 1,8,64," in bench
    assert "(default: 30)" in sub["train"].format_help()


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
    assert "train" in build_parser().format_help()


def test_missing_data_dir_is_a_clear_error(capsys, random_weights, tmp_path):
    code, _, err = run(capsys, "evaluate", "--weights", random_weights, "--data-dir", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_missing_weights_is_a_clear_error(capsys, tmp_path):
    code, _, err = run(capsys, "evaluate", "--weights", tmp_path / "none.safetensors", "--data-dir", tmp_path)
    assert code == 2 and "none.safetensors: no such file" in err and "sigma20" in err


def test_train_evaluate_visualize(capsys, fake_cifar, tmp_path):
    out_dir = tmp_path / "run"
    code, out, _ = run(capsys, "train", "--data-dir", fake_cifar, "--out-dir", out_dir, "--epochs", 1,
                       "--max-train", 16, "--max-val", 8, "--batch-size", 8, "--no-progress")
    assert code == 0 and "best validation loss" in out
    side = json.loads((out_dir / "best.json").read_text())
    assert side["training"]["command"] == (f"moe-denoise train --data-dir {fake_cifar} --out-dir {out_dir} --epochs 1 "
                                           "--max-train 16 --max-val 8 --batch-size 8 --no-progress")
    weights = out_dir / "best.safetensors"
    code, out, _ = run(capsys, "evaluate", "--weights", weights, "--data-dir", fake_cifar, "--limit", 4, "--sigma", 0.2,
                       "--json")
    r = json.loads(out)
    assert code == 0 and r["num_images"] == 4 and set(r["protocols"]) == {"clip", "unclipped"}
    assert r["protocols"]["clip"]["model"]["ssim"]["mean"] > 0
    code, out, _ = run(capsys, "evaluate", "--weights", weights, "--data-dir", fake_cifar, "--limit", 4, "--sigma", 0.2,
                       "--no-ssim")
    assert code == 0 and "noisy input" in out and "PSNR" in out
    code, out, _ = run(capsys, "visualize", "--weights", weights, "--data-dir", fake_cifar, "-n", 2, "-o", tmp_path)
    assert code == 0
    for name in ("denoise_grid.png", "routing_maps.png"):
        with Image.open(tmp_path / name) as im:
            assert im.width > 100 and im.height > 100


def test_export_parity_denoise_doctor(capsys, random_weights, tmp_path):
    onnx_path = tmp_path / "m.onnx"
    code, out, err = run(capsys, "export", "--weights", random_weights, "-o", onnx_path, "--parity-images", 4)
    assert code == 0 and "PASS" in out and onnx_path.is_file() and f"wrote {onnx_path} and " in out
    assert "[1/4] writing the portable graph" in err and "[4/4] writing" in err and "[1/4]" not in out  # the steps
    # on stdout: a reader gone ('| head') or a full log file stopped the export before it wrote the model
    code, out, _ = run(capsys, "parity", "--backend", "ort", "--artifact", onnx_path, "--weights", random_weights,
                       "-n", 8, "--json")
    r = json.loads(out)
    assert code == 0 and r["passed"] and r["num_images"] == 8 and r["runner"]["backend"] == "ort"
    code, out, _ = run(capsys, "parity", "--backend", "torch", "--weights", random_weights, "-n", 4)
    assert code == 0 and "PASS" in out
    chosen = tmp_path / "fused.onnx"
    code, out, _ = run(capsys, "export", "--weights", random_weights, "-o", chosen, "--parity-images", 2,
                       "--rewrites", "fuse_qkv,rows2d", "--json")
    printed = json.loads(out)  # the manifest, with the model's path (its "onnx" section used to replace the path)
    assert code == 0 and printed["onnx"]["rewrites"] == ["fuse_qkv", "rows2d"] and printed["output"] == str(chosen)
    code, _, err = run(capsys, "export", "--weights", random_weights, "-o", tmp_path / "x.onnx", "--rewrites", "fuse")
    assert code == 2 and "unknown ['fuse']" in err and not (tmp_path / "x.onnx").exists()
    # the artifact belongs to other weights: refused, naming both
    other = tmp_path / "other.safetensors"
    other.write_bytes(random_weights.read_bytes()[:-4] + b"\0\0\0\0")
    (tmp_path / "other.json").write_text(random_weights.with_suffix(".json").read_text())
    code, _, err = run(capsys, "parity", "--backend", "ort", "--artifact", onnx_path, "--weights", other)
    assert code == 2 and f"--weights {other} was given, but --backend ort runs {onnx_path}, which was made from " \
                         f"other weights ({random_weights})" in err and "or leave --weights out" in err
    # without --weights the reference is the model the artifact was made from (not the default blind weights)
    code, out, _ = run(capsys, "parity", "--backend", "ort", "--artifact", onnx_path, "-n", 4)
    assert code == 0 and f"ort-cpu (weights {random_weights}) against PyTorch\n" in out and "PASS" in out  # once
    assert "opt-level all" in out  # named as the option (opt_level)

    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).uniform(size=(45, 77, 3)) * 255).astype(np.uint8)).save(photo)
    # the same for denoise: --weights that the ONNX model was not made from are refused, not ignored in silence
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "ignored.png", "--backend", "ort", "--artifact",
                       onnx_path, "--weights", other)
    assert code == 2 and "was made from other weights" in err and not (tmp_path / "ignored.png").exists()
    for backend, extra in (("torch", ["--weights", random_weights]), ("ort", ["--artifact", onnx_path])):
        out_png = tmp_path / f"out_{backend}.png"
        code, out, _ = run(capsys, "denoise", photo, "-o", out_png, "--backend", backend, *extra, "--no-progress")
        assert code == 0, out
        with Image.open(out_png) as im:
            assert im.size == (77, 45) and im.mode == "RGB"
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "ref.png", "--weights", random_weights,
                       "--reference", photo, "--no-progress", "--json")
    r = json.loads(out)["psnr_vs_reference"]
    assert code == 0 and r["input"] is None and r["output"] < 60  # its own reference: inf, null in strict JSON
    assert json.loads(out)["batch_size"] == 64  # a CPU backend's default, reported
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "b8.png", "--weights", random_weights,
                       "--batch-size", 8, "--overlap", 8, "--no-progress", "--json")
    report = json.loads(out)
    assert code == 0 and (report["batch_size"], report["overlap"]) == (8, 8)
    assert report["backend"]["weights"] == str(random_weights)  # which weights made the photo
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "named.png", "--weights", "blind", "--no-progress")
    assert code == 0 and "with torch-masked (weights blind) in" in out
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "ort.png", "--backend", "ort", "--artifact",
                       onnx_path, "--no-progress", "--json")
    assert code == 0 and json.loads(out)["backend"]["weights"] == str(random_weights)  # from the model's manifest
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "ref2.png", "--weights", random_weights,
                       "--reference", out_png.parent / "nope.png")
    assert code == 2 and not (tmp_path / "ref2.png").exists()
    code, _, err = run(capsys, "denoise", photo, "-o", photo, "--weights", random_weights)
    assert code == 2 and "refusing" in err
    code, out, _ = run(capsys, "doctor", "--json")
    info = json.loads(out)
    assert code == 0 and info["backends"]["ONNX Runtime CPU"]["usable"]
    assert "TensorRT engines" in info["backends"]


def test_export_default_names_say_which_rewrites():
    from moe_base.paths import artifacts_dir, onnx_path
    from moe_denoise.commands.export import parse_rewrites

    assert parse_rewrites(None) is None and parse_rewrites("all")[0] == "fuse_qkv"
    # one graph, one name: a rewrite named twice, or in another order, gave moe_denoiser.portable.fuse_qkv+fuse_qkv...
    assert parse_rewrites("rows2d,fuse_qkv,fuse_qkv") == parse_rewrites("fuse_qkv,rows2d") == ("fuse_qkv", "rows2d")
    for empty in ("", ",", " , "):  # an unset variable meant no rewrites, as --no-optimize, without a word
        with pytest.raises(InputError, match=r"names no rewrite; give some of .* or --no-optimize for none"):
            parse_rewrites(empty)
    from pathlib import Path

    from moe_base.paths import engine_path
    from moe_denoise.commands import check_output_suffix

    # an upper-case suffix was kept in the engine's name (x.ONNX.fp32.engine)
    assert [engine_path(Path(n), "fp16").name for n in ("x.ONNX", "m.plugin.FP16.onnx", "m.plugin.onnx")] == \
        ["x.fp16.engine", "m.plugin.fp16.engine", "m.plugin.fp16.engine"]
    with pytest.raises(InputError, match=r"\(e\.g\. out/model\.onnx\)"):  # was: out/.onnx.onnx
        check_output_suffix(Path("out/.onnx"), (".onnx",), "an ONNX model")
    for folder, example in ((".", "model.onnx"), ("/", "/model.onnx"), ("", "model.onnx")):  # not a ValueError
        with pytest.raises(InputError, match=rf"\(e\.g\. {re.escape(example)}\)"):
            check_output_suffix(Path(folder), (".onnx",), "an ONNX model")
    assert onnx_path("portable", True) == artifacts_dir() / "moe_denoiser.portable.onnx"
    assert onnx_path("portable", False) == artifacts_dir() / "moe_denoiser.portable.noopt.onnx"
    assert onnx_path("plugin", True, "fp16", ("fuse_qkv", "rows2d")).name == "moe_denoiser.plugin.fuse_qkv+rows2d.fp16.onnx"


def test_torch_backend_precision_and_graph_options(capsys, random_weights):
    code, out, err = run(capsys, "parity", "--backend", "torch", "--precision", "bf16", "--weights", random_weights,
                         "-n", 2)
    assert code == 0 and "PSNR" in out and "torch-gather-bf16 (weights " in out and "precision bf16" in out
    assert err.count("note: --precision bf16 on the CPU is for checking half precision's numbers") == 1  # 5x slower
    from moe_denoise.cli import build_parser
    from moe_denoise.commands import make_runner

    args = build_parser().parse_args(["serve", "--precision", "fp16", "--weights", str(random_weights)])
    make_runner(args, args.weights), make_runner(args, args.weights)  # serve: a runner per model instance
    assert capsys.readouterr().err.count("note: --precision fp16 on the CPU") == 1  # said once a command
    code, _, err = run(capsys, "parity", "--backend", "torch", "--cuda-graph", "--weights", random_weights, "-n", 2)
    assert code == 2 and "--cuda-graph captures GPU work and needs --device cuda" in err


@pytest.mark.parametrize("text, value", [("0.1", 0.1), ("0", 0.0), ("25/255", 25 / 255), ("1", 1.0), (" 5 / 255 ", 5 / 255),
                                         ("-0", 0.0), ("-0.0/255", 0.0)])
def test_noise_levels_are_read_as_numbers_or_levels_of_255(text, value):
    import math

    from moe_denoise.commands import noise_std

    assert noise_std(text) == value and not math.copysign(1.0, noise_std(text)) < 0  # -0 is 0: numpy refused its sign


@pytest.mark.parametrize("text, message", [
    ("25", "25 is over 1 (the noise std on [0, 1] pixels is at most 1); a level on the 0-255 scale is written "
           "25/255 (= 0.09804)"),
    ("1e300", "1e300 is over 1 (the noise std on [0, 1] pixels is at most 1), and over 255 it is no level on the 0-255 "
              "scale either: give a std from 0 to 1 (e.g. 0.1 or 25/255)"),  # it suggested 1e300/255 (= 3.922e+297)
    ("100/1", "a level on the 0-255 scale is written 100/255 (= 0.3922)"),  # it said 100/1/255, which is refused
    ("nan", "got 'nan'"), ("-0.1", "got '-0.1'"), ("inf", "got 'inf'"), ("1/0", "got '1/0'"), ("a/255", "got 'a/255'"),
    ("", "got ''"),
])
def test_noise_levels_out_of_range_are_refused_with_what_to_write(text, message):
    import argparse

    from moe_denoise.commands import noise_std

    with pytest.raises(argparse.ArgumentTypeError) as e:
        noise_std(text)
    assert message in str(e.value) and "noise std on [0, 1] pixels" in str(e.value)


def test_add_noise_takes_levels_of_255(capsys, tmp_path):
    """--sigma 25/255 is the same noise as --sigma 0.0980392156862745 (25 / 255 in full)"""
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src)
    code, out, _ = run(capsys, "add-noise", src, "-o", tmp_path / "a.png", "--sigma", "25/255")
    assert code == 0 and "(sigma 0.09804 = 25/255, seed 0)" in out
    assert run(capsys, "add-noise", src, "-o", tmp_path / "b.png", "--sigma", repr(25 / 255))[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "of the whole pixel range" not in out
    code, out, _ = run(capsys, "add-noise", src, "-o", tmp_path / "c.png", "--sigma", "1")  # one level meant?
    assert code == 0 and "note: sigma 1 is 100% of the whole pixel range" in out and "write --sigma 1/255" in out


def test_export_refuses_an_unsupported_opset_before_any_work(capsys, tmp_path):
    """--opset 5: refused before the weights are read (a missing weights file is not what is reported) and before
    the first step is announced; nothing written"""
    code, out, err = run(capsys, "export", "--weights", tmp_path / "absent.safetensors", "-o", tmp_path / "m.onnx",
                         "--opset", 5)
    assert code == 2 and "opset 5 is not supported; use 17..21 (LayerNormalization needs >= 17; --opset)" in err
    assert out == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["denoise", "in.png", "-o", "out.png", "--server", "localhost:1", "--timeout", "-5"],
                                  ["bench", "--quick", "--deadline", "0"], ["bench", "--batch-budget", "nan"]])
def test_durations_must_be_seconds_above_zero(capsys, argv):
    """--timeout, --deadline, --batch-budget: refused by the option's parser (a negative --deadline ran the whole
    benchmark; a negative --timeout waited for the server first)"""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and "expected a number of seconds > 0 (e.g. 60)" in capsys.readouterr().err


def test_add_noise_into_a_folder_keeps_the_photos_name(capsys, tmp_path):
    """-o an existing folder: the noisy copy goes in under the input's name (as denoise does), once; the second time
    it exists and is refused without --overwrite"""
    src = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)).save(src)
    (tmp_path / "noisy").mkdir()
    code, out, _ = run(capsys, "add-noise", src, "-o", tmp_path / "noisy", "--sigma", "5/255")
    assert code == 0 and (tmp_path / "noisy" / "photo.png").is_file() and "noisy/photo.png" in out
    code, _, err = run(capsys, "add-noise", src, "-o", tmp_path / "noisy")
    assert code == 2 and "already exists" in err


def test_add_noise_keeps_a_photos_text_metadata_or_says_it_is_left_out(capsys, tmp_path):
    """A TIFF's Artist and Copyright tags were dropped by a copy written through the same functions as denoise's,
    without a word: kept in a TIFF (into a folder, under the photo's name), and a PNG output's note names them"""
    src = tmp_path / "photo.tif"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(
        src, tiffinfo={315: "Jane Doe", 33432: "(c) 2024 Jane Doe"})
    (tmp_path / "noisy").mkdir()
    code, out, _ = run(capsys, "add-noise", src, "-o", tmp_path / "noisy", "--sigma", "5/255")
    assert code == 0 and "note:" not in out, out
    with Image.open(tmp_path / "noisy" / "photo.tif") as noisy:
        assert (noisy.tag_v2.get(315), noisy.tag_v2.get(33432)) == ("Jane Doe", "(c) 2024 Jane Doe")
    code, out, _ = run(capsys, "add-noise", src, "-o", tmp_path / "noisy.png", "--sigma", "5/255")
    assert code == 0 and ("note: PNG holds no TIFF text tags: the input's Artist and Copyright are left out (not "
                          "copied into other fields); write .tif to keep them") in out, out


@pytest.mark.parametrize("command", ["denoise", "parity"])
def test_triton_impl_off_cuda_is_refused_not_run_as_the_reference(capsys, tmp_path, command):
    """--impl triton on the CPU: refused with what to use (it ran the reference attention there, reported as
    'torch-triton', and parity passed it against itself); nothing written"""
    argv = (["denoise", tmp_path / "in.png", "-o", tmp_path / "out.png"] if command == "denoise" else
            ["parity", "--backend", "torch"])
    if command == "denoise":
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "in.png")
    code, _, err = run(capsys, *argv, "--impl", "triton", "--device", "cpu")
    assert code == 2 and "--impl triton runs the Triton kernel on CUDA only" in err and "--impl masked" in err
    assert not (tmp_path / "out.png").exists()


def test_output_reaches_a_log_line_by_line(tmp_path):
    """stdout to a file or pipe (nohup ... > log) is block-buffered by Python: a training run's epoch lines would
    show up only at the end. The command writes each line when it is printed: here the child waits, after its
    first line, until the parent has read it (and says so with a file)."""
    import os
    import subprocess
    import sys
    import threading

    seen = tmp_path / "seen"
    child = ("import pathlib, time\n"
             "import moe_denoise.commands.doctor as doctor\n"
             "def run(args):\n"
             "    print('first line')\n"
             f"    flag = pathlib.Path({str(seen)!r})\n"
             "    deadline = time.monotonic() + 60\n"
             "    while not flag.exists() and time.monotonic() < deadline:\n"
             "        time.sleep(0.05)\n"
             "    return 0\n"
             "doctor.run = run\n"
             "from moe_denoise.cli import main\n"
             "raise SystemExit(main(['doctor']))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as on a user's machine
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout=30)
    while_running = list(got)
    seen.touch()
    proc.wait(timeout=90)
    assert while_running == ["first line\n"], "the first line did not reach the pipe while the command ran"


@pytest.mark.parametrize("argv, message", [
    (["--http-port", "70000"], "argument --http-port: expected a port number from 0 to 65535 (0: a free port), "
                               "got '70000'"),
    (["--metrics-port", "x"], "argument --metrics-port: expected a port number"),
    (["--instances", "0"], "argument --instances: must be >= 1, got 0"),
    (["--image-batch", "-4"], "argument --image-batch: must be >= 1, got -4"),
])
def test_serve_options_are_checked_when_parsed_with_their_names(capsys, argv, message):
    """Before any runner is made or port touched, with the option's name (not the config field's)."""
    with pytest.raises(SystemExit) as e:
        main(["serve", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", [["serve"], ["denoise", "in.png", "-o", "out.png"]])
@pytest.mark.parametrize("value, message", [
    ("32", "argument --overlap: expected a tile overlap from 0 to 31 pixels (tiles are 32x32; 16 is the default, "
           "8 faster, 0 plain stitching), got 32"),
    ("-1", "argument --overlap: expected a tile overlap from 0 to 31 pixels"),
    ("1.5", "argument --overlap: expected a whole number of pixels from 0 to 31, got '1.5'"),
])
def test_the_tile_overlap_is_checked_when_parsed(capsys, command, value, message):
    """denoise and serve say the same, naming the option, before any file is read or runner made."""
    with pytest.raises(SystemExit) as e:
        main([*command, "--overlap", value])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly():
    """moe-denoise ... | head: when the reader goes away the command stops with 141 (what a shell shows for SIGPIPE)
    and no traceback (it printed Python's BrokenPipeError traceback)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "moe_denoise.cli", "doctor"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()


def test_an_output_that_cannot_be_written_is_said_without_a_traceback():
    """moe-denoise ... > /dev/full (or a file on a full disk) ended in an OSError traceback after the work was done."""
    import os
    import subprocess
    import sys

    if not os.path.exists("/dev/full"):
        pytest.skip("this system has no /dev/full to stand for a full disk")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "moe_denoise.cli", "doctor"], stdout=full, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "moe-denoise doctor: error: cannot write to standard output (No space left on device)" in r.stderr


def test_help_and_version_import_no_torch():
    """--version and every command's --help answer in a fraction of a second: torch (about a second to import) is
    imported by the commands that run a model, not by the parsers (train's --loss choices imported it for all)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from moe_denoise.cli import COMMANDS, main\n"
            "names = [c.replace('_', '-') for c in COMMANDS] + ['add-noise']\n"
            "for argv in [['--version'], ['--help']] + [[c, '--help'] for c in names]:\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('torch' in sys.modules, len(names))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"False {len(_subparsers())}"


def test_choices_written_out_for_a_light_help_are_the_models():
    """train --loss and evaluate --sigmas are written out in the command layer (no torch import for --help): they
    must stay those of moe_model."""
    from moe_denoise.commands import evaluate, train
    from moe_model.evaluate import DEFAULT_SIGMAS_255
    from moe_model.losses import LOSSES

    assert train.LOSSES == LOSSES and evaluate.DEFAULT_SIGMAS_255 == DEFAULT_SIGMAS_255


def test_split_choices_are_the_data_modules():
    """--split is written out in the command layer (no torch import for --help): it must stay moe_model.data's."""
    from moe_model.data import SPLITS

    for command in ("evaluate", "visualize"):
        split = next(a for a in _subparsers()[command]._actions if "--split" in a.option_strings)
        assert sorted(split.choices) == sorted(SPLITS)


def test_doctor_without_onnxruntime_says_it_is_not_installed(capsys, monkeypatch):
    """Every ONNX Runtime line names the missing package, not an empty provider list."""
    import moe_base.machine as machine

    real = machine.library_status

    def without_ort():
        return {**real(), "onnxruntime": (False, "onnxruntime not installed: pip install 'moe-denoise[onnx]'")}

    monkeypatch.setattr(machine, "library_status", without_ort)
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "onnxruntime providers: (onnxruntime not installed)" in out
    assert "torch CUDA build: None" not in out and not any(line != line.rstrip() for line in out.splitlines())
    assert "ONNX Runtime CUDA" in out and "providers []" not in out
    assert out.count("onnxruntime not installed") >= 4  # the header, CPU, CUDA and TensorRT EP lines


def test_an_artifact_whose_weights_file_changed_since_is_not_labelled_with_it(capsys, random_weights, tmp_path):
    """The label of an ONNX model's weights comes from its manifest's path and hash: once the file at that path holds
    other weights (retrained, upgraded), the line says so instead of naming the file as if it made the model."""
    import shutil

    weights = tmp_path / "w.safetensors"
    shutil.copy(random_weights, weights)
    shutil.copy(random_weights.with_suffix(".json"), tmp_path / "w.json")
    onnx_path = tmp_path / "m.onnx"
    assert run(capsys, "export", "--weights", weights, "-o", onnx_path, "--parity-images", 2)[0] == 0
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(photo)
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "a.png", "--backend", "ort", "--artifact", onnx_path)
    assert code == 0 and f"with ort-cpu (weights {weights}) in" in out
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")  # the file now holds other weights
    code, out, _ = run(capsys, "denoise", photo, "-o", tmp_path / "b.png", "--backend", "ort", "--artifact", onnx_path)
    assert code == 0 and f"(weights {weights} as it was when exported (sha256 " in out and "changed or gone" in out


@pytest.mark.parametrize("argv, message", [
    (["--sigma-max", "0.2", "--gray-share", "0.1"], "--sigma-max, --gray-share shape the noise mixture of a --blind "
                                                     "run, and this run is not blind"),
    (["--blind", "--sigma", "0.1"], "--sigma is the one noise level of a run without --blind"),
    (["--mse-floor", "1e-5"], "--mse-floor weighs images in the psnr loss, and the loss is mse"),
])
def test_train_refuses_the_noise_options_of_the_other_kind_of_run(capsys, tmp_path, argv, message):
    """Each was ignored in silence: a run without --blind trains at --sigma whatever --sigma-max says."""
    code, _, err = run(capsys, "train", "--data-dir", tmp_path / "none", "--out-dir", tmp_path / "run", *argv)
    assert code == 2 and message in err and not (tmp_path / "run").exists()


def test_add_noise_takes_negative_zero_and_refuses_a_negative_seed(capsys, tmp_path):
    """--sigma -0 ended in numpy's 'scale < 0' traceback and --seed -1 in 'expected non-negative integer' (exit 1);
    now -0 is 0, and a negative seed is refused at parse time, as is one given to the library."""
    from PIL import Image

    from moe_base.errors import InputError
    from runtime.photo import add_noise_to_file

    photo = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (100, 120, 140)).save(photo)
    assert main(["add-noise", str(photo), "-o", str(tmp_path / "z.png"), "--sigma=-0"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "z.png")), np.asarray(Image.open(photo)))
    with pytest.raises(SystemExit) as refused:
        main(["add-noise", str(photo), "-o", str(tmp_path / "s.png"), "--seed", "-1"])
    assert refused.value.code == 2 and "expected a seed, a whole number from 0 to 2147483647" in capsys.readouterr().err
    for argv in (["visualize", "--eval-seed", "99999999999999999999999"], ["evaluate", "--eval-seed", "-1"],
                 ["train", "--seed", "3000000000"]):  # the first ended in torch's 'Overflow' traceback (exit 1)
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 2 and "expected a seed, a whole number from 0 to" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"seed is a whole number >= 0 .* got -1"):
        add_noise_to_file(photo, tmp_path / "s.png", 0.1, seed=-1)
    # a photo over the limit is refused naming --max-pixels, which add-noise now has
    assert main(["add-noise", str(photo), "-o", str(tmp_path / "s.png"), "--max-pixels", "50"]) == 2
    assert "raise the limit (--max-pixels 64" in capsys.readouterr().err
    assert main(["add-noise", str(photo), "-o", str(tmp_path / "m.png"), "--max-pixels", "64"]) == 0
    assert not (tmp_path / "s.png").exists()
    add_noise_to_file(photo, tmp_path / "n.png", -0.0)  # the library too


@pytest.mark.parametrize("argv, message", [
    (["--backend", "ort", "--precision", "fp16"], "--precision applies to --backend torch, not to --backend ort"),
    (["--backend", "ort", "--device", "cuda"], "--device applies to --backend torch"),
    (["--backend", "ort", "--cuda-graph"], "--cuda-graph applies to --backend torch"),
    (["--backend", "ort", "--impl", "seed"], "--impl applies to --backend torch"),
    (["--backend", "torch", "--artifact", "m.onnx"], "--artifact applies to --backend ort or trt, but the backend is "
                                                     "torch"),
])
def test_parity_refuses_options_its_backend_ignores(capsys, argv, message):
    """parity ran these and reported PASS (--backend torch --artifact never loaded the model); denoise refused them."""
    code = main(["parity", *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_parity_counts_are_capped_and_checked_in_chunks(capsys):
    """-n / --parity-images had no upper bound: 100,000 images ran as one batch and the kernel killed the process
    (export, at 23.8 GB). Now 10,000 at most, refused at parse time, and checks run 256 images a call."""
    from moe_base.errors import InputError
    from runtime.parity import MAX_PARITY_IMAGES, PARITY_CHUNK, in_chunks, parity_inputs

    for argv in (["parity", "--backend", "ort", "-n", "10001"], ["export", "--parity-images", "100000"],
                 ["bench", "--parity-images", "10001"]):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        assert refused.value.code == 2 and f"at most {MAX_PARITY_IMAGES:,} images" in capsys.readouterr().err
    with pytest.raises(InputError, match="1 to 10,000 input images"):
        parity_inputs(MAX_PARITY_IMAGES + 1)
    x = parity_inputs(PARITY_CHUNK * 2 + 3)
    calls = []
    out = in_chunks(lambda batch: calls.append(len(batch)) or batch * 2, x)
    assert calls == [PARITY_CHUNK, PARITY_CHUNK, 3] and np.array_equal(out, x * 2)


def test_visualize_refuses_what_it_cannot_draw_and_replaces_its_pictures_together(capsys, monkeypatch, fake_cifar,
                                                                                   random_weights, tmp_path):
    """visualize drew fewer rows than -n asked past the split's end without a word, was killed by the kernel at
    --scale 100000, and an interrupted run left a new grid beside the old routing maps."""
    import moe_model.visualize

    base = ["visualize", "--weights", str(random_weights), "--data-dir", str(fake_cifar), "-o", str(tmp_path)]
    assert main([*base, "-n", "4", "--offset", "38"]) == 2  # the fake test split has 40 images
    assert "-n 4 from --offset 38 runs past the end of the test split (40 images): at most -n 2" in \
        capsys.readouterr().err
    assert main([*base, "-n", "2", "--scale", "100000"]) == 2
    assert "lower --scale or -n" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main([*base[:-1], str(tmp_path / "pics.png"), "-n", "2"]) == 2  # a folder 'pics.png' was made in silence
    assert "-o is the folder for the two PNGs" in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert main([*base, "-n", "2"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(before) == ["denoise_grid.png", "routing_maps.png"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(moe_model.visualize, "routing_maps", interrupted)
    assert main([*base, "-n", "3", "--offset", "5"]) == 130
    assert capsys.readouterr().err.strip() == ("interrupted (every file is written whole or not at all: those "
                                               "reported as written are complete)")  # not a bare 'interrupted'
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old pair, nothing half-done beside
    deep = tmp_path / "v" / "w"  # the folders it made for the pictures: removed again (they were left, empty)
    assert main([*base[:-1], str(deep), "-n", "2"]) == 130 and not (tmp_path / "v").exists()


def test_visualize_removes_a_killed_runs_staging_folder_and_names_its_real_outputs(capsys, monkeypatch, fake_cifar,
                                                                                   random_weights, tmp_path):
    """A visualize killed with kill -9 left a hidden staging folder (megabytes) that no later run removed: its name had
    no process id for the clean-up of killed writes to go by. And on a full disk the error named a file inside it,
    gone by then, instead of the picture that could not be written."""
    import errno
    import os
    import subprocess
    import sys

    base = ["visualize", "--weights", str(random_weights), "--data-dir", str(fake_cifar), "-o", str(tmp_path), "-n", "2"]
    assert main(base) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    killed = tmp_path / f".visualize.{dead}.0a1b2c3d.staging"  # what a killed run leaves now
    live = tmp_path / f".visualize.{os.getppid()}.0a1b2c3d.staging"  # a run still drawing: left alone
    for folder in (killed, live):
        folder.mkdir()
        (folder / "denoise_grid.png").write_bytes(b"half a picture")

    real = os.fsync

    def full_disk_at_the_grid(fd):
        if "denoise_grid.png" in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", full_disk_at_the_grid)
    assert main([*base, "--offset", "3"]) == 2
    err = capsys.readouterr().err
    assert f"writing {tmp_path / 'denoise_grid.png'} failed (No space left on device); nothing in {tmp_path} was " \
           f"changed" in err and ".visualize" not in err
    assert not killed.exists() and live.is_dir()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p != live} == before
    monkeypatch.undo()
    assert main([*base, "--offset", "3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p != live) == sorted(before)


def test_visualize_gives_an_image_the_noise_evaluate_gives_it_whatever_the_offset(monkeypatch, fake_cifar,
                                                                                   random_weights, tmp_path):
    """The noise was drawn for the slice shown: image 5 looked different at --offset 0 and --offset 5, and never as
    evaluate scored it."""
    import torch

    import moe_model.visualize
    from moe_model.data import fixed_noisy, load_cifar10, to_float

    shown = []

    def grid(noisy, den, clean, path, **kwargs):
        shown.append(noisy.clone())
        path.write_bytes(b"")

    monkeypatch.setattr(moe_model.visualize, "denoise_grid", grid)
    monkeypatch.setattr(moe_model.visualize, "routing_maps", lambda noisy, routing, path, **k: path.write_bytes(b""))
    base = ["visualize", "--weights", str(random_weights), "--data-dir", str(fake_cifar), "-o", str(tmp_path)]
    assert main([*base, "-n", "8"]) == 0
    assert main([*base, "-n", "3", "--offset", "5"]) == 0
    assert torch.equal(shown[1], shown[0][5:8])
    scored = fixed_noisy(to_float(load_cifar10(fake_cifar, "test")), 0.2, "clip", 1234)  # evaluate's draw
    assert torch.equal(shown[1], scored[5:8])


def test_command_line_mistakes_are_told_in_the_command_line_s_words(capsys, tmp_path):
    """'export -o /tmp' suggested '/tmp.onnx'; 'parity --backend torch --cuda-graph' on a CPU answered in
    TorchRunner's words (cuda_graph=True, device='cpu')."""
    assert main(["export", "-o", str(tmp_path)]) == 2
    assert f"-o {tmp_path} is a folder; this writes an ONNX model: give a file name ending in .onnx (e.g. " \
           f"{tmp_path / 'model.onnx'})" in capsys.readouterr().err
    assert main(["parity", "--backend", "torch", "--cuda-graph", "-n", "1"]) == 2
    err = capsys.readouterr().err
    assert "--cuda-graph captures GPU work and needs --device cuda; got --device cpu" in err and "cuda_graph=" not in err


def test_a_gray_photo_written_as_webp_is_scored_against_its_gray_reference(capsys, tmp_path):
    """WebP holds no gray: the output of a gray photo is RGB, and --reference then wrote the output and refused,
    blaming the (right) gray reference, exit 2."""
    rng = np.random.default_rng(0)
    clean = np.tile(np.linspace(40, 200, 64, dtype=np.float64), (48, 1))
    Image.fromarray(clean.astype(np.uint8)).save(tmp_path / "clean.png")
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    code, out, err = run(capsys, "denoise", tmp_path / "noisy.png", "-o", tmp_path / "out.webp", "--reference",
                         tmp_path / "clean.png", "--no-progress", "--json")
    assert code == 0, err
    r = json.loads(out)["psnr_vs_reference"]
    assert r["output"] > r["input"] and "the output's luminance" in r["compared"]
    got = np.asarray(Image.open(tmp_path / "out.webp").convert("RGB"), np.float64) @ [0.299, 0.587, 0.114]
    assert r["output"] == pytest.approx(10 * np.log10(255 ** 2 / np.mean((got - clean.astype(np.uint8)) ** 2)),
                                        abs=0.01)


def test_thread_counts_past_the_machine_and_text_given_as_weights_are_told_plainly(capsys, tmp_path):
    """--threads 100000 was refused by the OpenMP runtime or exhausted memory (the message blamed the weights); a
    text file given as weights said 'KeyError: 101'."""
    import os

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_state_dict

    for command in (["parity", "--backend", "ort"], ["evaluate"], ["bench"], ["export"], ["train"]):
        with pytest.raises(SystemExit) as refused:
            main([*command, "--threads", str(4 * os.cpu_count() + 1)])
        assert refused.value.code == 2 and f"this machine has {os.cpu_count()} CPUs" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: it is not a file torch\.save wrote \(KeyError"):
        load_state_dict(notes)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.pt: it is not a file torch\.save wrote \(EOFError: empty\)"):
        load_state_dict(tmp_path / "empty.pt")


def test_doctor_says_where_the_cache_is_and_which_weights_its_models_were_made_from(capsys, monkeypatch,
                                                                                  random_weights, tmp_path):
    """doctor said nothing of the serving extras, the cache folder or the models --backend ort / trt would run."""
    from moe_base.paths import onnx_path

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path / "cache"))
    assert run(capsys, "export", "--weights", random_weights, "-o", onnx_path("portable"),
               "--parity-images", 2)[0] == 0
    code, out, _ = run(capsys, "doctor", "--json")
    cache = json.loads(out)["cache"]
    assert code == 0 and cache["path"] == str(tmp_path / "cache") and cache["writable"]
    assert cache["default_models"]["ort"] == {"path": str(onnx_path("portable")), "exists": True,
                                              "weights": str(random_weights), "problem": None}
    assert not cache["default_models"]["trt"]["exists"] and "serving (Triton via PyTriton)" in json.loads(out)["backends"]
    code, out, _ = run(capsys, "doctor")
    assert f"--backend ort: {onnx_path('portable')} (weights {random_weights})" in out
    with open(onnx_path("portable"), "r+b") as f:  # cut short: listed as what --backend ort runs, which refused it
        size = f.seek(0, 2)
        f.truncate(1000)
    code, out, _ = run(capsys, "doctor")
    assert f"(weights {random_weights}); NOT usable: the file is 1,000 bytes but its manifest says {size:,}" in out
    assert "re-export it with: moe-denoise export --weights" in out  # the weights its manifest names
    with open(onnx_path("portable"), "ab") as f:  # its size again, bytes changed: listed as usable, runners refuse it
        f.write(b"\1" * (size - 1000))
    code, out, _ = run(capsys, "doctor")
    assert "NOT usable: its contents do not match its manifest's sha256" in out
    Path(f"{onnx_path('portable')}.manifest.json").unlink()  # what it was made from is no longer known
    code, out, _ = run(capsys, "doctor")
    assert f"--backend ort: {onnx_path('portable')} (weights unknown); NOT usable: " in out  # 'weights weights unknown'
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("MOE_DENOISE_CACHE", str(blocked / "cache"))
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "--backend ort: none yet" in out
    assert f"(NOT writable: cannot write to the folder '{blocked / 'cache'}' (Not a directory, since '{blocked}' " \
           f"cannot take it); set MOE_DENOISE_CACHE to a folder you can write to)" in out  # it gave no reason
    code, _, err = run(capsys, "export", "--weights", random_weights)  # it said 'choose a folder' of a path not chosen
    assert code == 2 and "the default output is in the cache folder: set MOE_DENOISE_CACHE to a folder you can " \
                         "write to, or pass -o" in err


def test_the_cache_variable_is_read_as_a_user_means_it(monkeypatch, tmp_path, capsys):
    """MOE_DENOISE_CACHE='~/mc' (quoted) made a folder named '~' in the current folder; an empty value wrote the cache
    into the current folder; a relative one was a different cache from every folder, said nowhere."""
    from pathlib import Path

    from moe_base.paths import cache_dir, cache_dir_note

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MOE_DENOISE_CACHE", "~/mc")
    assert cache_dir() == Path.home() / "mc" and cache_dir_note() is None
    monkeypatch.setenv("MOE_DENOISE_CACHE", " ")
    assert cache_dir() == Path.home() / ".cache" / "moe-denoise"
    monkeypatch.setenv("MOE_DENOISE_CACHE", "relcache")
    assert cache_dir() == tmp_path / "relcache" and cache_dir().is_absolute()
    monkeypatch.setenv("MOE_DENOISE_CACHE", "link/../x")  # not normalised as text: the kernel follows the link
    assert str(cache_dir()) == f"{tmp_path}/link/../x"
    monkeypatch.setenv("MOE_DENOISE_CACHE", "relcache")
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and f"note: MOE_DENOISE_CACHE=relcache is a relative path, taken from the current folder " \
                         f"({tmp_path / 'relcache'})" in out


def test_an_export_to_the_default_path_says_whose_model_it_replaced(capsys, monkeypatch, random_weights, tmp_path):
    """`export --weights sigma20` then `export` replaced the sigma20 model at the default path (what --backend ort
    runs) without a word; the default path is the export's own, so it is replaced, and now said."""
    import shutil

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other.safetensors"
    shutil.copy(random_weights, other)
    shutil.copy(random_weights.with_suffix(".json"), other.with_suffix(".json"))
    assert run(capsys, "export", "--weights", random_weights, "--parity-images", 2)[0] == 0
    code, _, err = run(capsys, "export", "--weights", random_weights, "--parity-images", 2)
    assert code == 0 and "replaced" not in err  # the same weights: nothing to say
    other.write_bytes(other.read_bytes())  # same tensors, another file: same hash, nothing to say either
    code, _, err = run(capsys, "export", "--weights", other, "--parity-images", 2)
    assert code == 0 and "replaced" not in err
    import torch

    from moe_model import SmallViT
    from moe_model.checkpoint import save_weights

    torch.manual_seed(1)
    save_weights(SmallViT("seed"), other, {"note": "other random weights"})
    code, _, err = run(capsys, "export", "--weights", other, "--parity-images", 2)
    assert code == 0 and f"note: this replaced the default export made from the weights {other} as it was when " \
                         f"exported" in err and f"--backend ort now runs {other}" in err


def test_train_leaves_no_empty_folder_says_how_to_resume_and_resumes_from_anywhere(capsys, monkeypatch, fake_cifar,
                                                                                   tmp_path):
    """A refused or interrupted run left an empty --out-dir; --out-dir '' trained into the current folder; after
    Ctrl-C only 'interrupted' was said; a run started with a relative --data-dir could not be resumed from another
    folder."""
    import shutil

    import moe_model.train as train_module

    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(fake_cifar, work / "cifar")
    monkeypatch.chdir(work)
    tiny = ["--max-train", "32", "--max-val", "16", "--batch-size", "16", "--no-progress"]
    assert main(["train", "--data-dir", "cifar", "--out-dir", "", *tiny]) == 2
    assert "--out-dir is empty" in capsys.readouterr().err and sorted(p.name for p in work.iterdir()) == ["cifar"]
    assert main(["train", "--data-dir", "cifar", "--out-dir", "r", "--init-from", "nope.pt", *tiny]) == 2
    assert not (work / "r").exists()  # refused: no empty folder left
    real = train_module.evaluate_loss
    calls = []

    def second_epoch_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate_loss", second_epoch_interrupted)
    assert main(["train", "--data-dir", "cifar", "--out-dir", "r", "--epochs", "2", *tiny]) == 130
    assert "the run after epoch 1 is kept; continue it with: moe-denoise train --resume --out-dir r" in \
        capsys.readouterr().err
    monkeypatch.undo()
    (work / "sub").mkdir()
    monkeypatch.chdir(work / "sub")
    assert main(["train", "--resume", "--out-dir", "../r", "--no-progress"]) == 0  # its --data-dir was relative
    assert "resuming ../r at epoch 2/2" in capsys.readouterr().out


def test_parity_of_a_model_exported_from_weights_without_a_sidecar(capsys, seed_ckpt, tmp_path):
    """The seed checkpoint has no JSON sidecar (export takes --preset seed): parity rebuilds the reference from the
    architecture the ONNX model's manifest records; it asked for a --preset the user had already given export."""
    onnx_path = tmp_path / "seed.onnx"
    code, _, err = run(capsys, "export", "--weights", seed_ckpt, "--preset", "seed", "-o", onnx_path,
                       "--parity-images", 2)
    assert code == 0, err
    code, out, err = run(capsys, "parity", "--backend", "ort", "--artifact", onnx_path, "-n", 4)
    assert code == 0 and "PASS" in out, err


def test_an_artifact_of_another_kind_is_told_what_it_is(capsys, random_weights, tmp_path):
    """An engine's manifest on a file given to --backend ort said 'not a readable ONNX model ... re-export it':
    now what it is and which backend runs it."""
    from moe_base.manifest import base_manifest, write_artifact

    engine = tmp_path / "m.engine"
    write_artifact(engine, b"engine bytes", base_manifest("trt-engine", engine, b"engine bytes"))
    code, _, err = run(capsys, "parity", "--backend", "ort", "--artifact", engine, "-n", 2)
    assert code == 2 and "is a TensorRT engine (its manifest says so), not an ONNX model: run it with --backend trt" \
        in err
    onnx = tmp_path / "m.onnx"
    write_artifact(onnx, b"graph bytes", base_manifest("onnx", onnx, b"graph bytes"))
    code, _, err = run(capsys, "parity", "--backend", "trt", "--artifact", onnx, "-n", 2)
    assert code == 2 and f"is an ONNX model (its manifest says so), not a TensorRT engine: build an engine from it " \
                         f"with 'moe-denoise build --onnx {onnx}'" in err


def test_an_interrupted_overwrite_of_a_finished_run_says_that_run_is_kept(monkeypatch, tmp_path):
    """train --overwrite over a finished 4-epoch run, stopped in its first epoch, said 'continue it with --resume',
    which then had nothing to continue."""
    import moe_model.train
    from moe_denoise.commands.train import interrupted_hint

    (tmp_path / "last.pt").write_bytes(b"state")
    state = {"epoch": 4, "train_config": {"epochs": 4}}
    monkeypatch.setattr(moe_model.train, "load_training_state", lambda path: state)
    # the same words for a new run stopped just after its last epoch was saved ('kept as it was' read as an old run)
    assert interrupted_hint(tmp_path) == (f"the run in {tmp_path} has finished all 4 epochs; its weights are "
                                          f"{tmp_path / 'best.safetensors'}")
    state.update(epoch=1, train_config={"epochs": 1})
    assert interrupted_hint(tmp_path).startswith(f"the run in {tmp_path} has finished all 1 epoch;")
    state.update(epoch=2, train_config={"epochs": 4})
    assert interrupted_hint(tmp_path) == (f"the run after epoch 2 is kept; continue it with: moe-denoise train "
                                          f"--resume --out-dir {tmp_path}")


@pytest.mark.parametrize("argv, message", [
    (["denoise", "in.png", "-o", "out.png", "--strength", "abc"], "argument --strength: expected a number (e.g. 0.7 or "
                                                                   "1e-3), got 'abc'"),
    (["train", "--lr", "inf"], "argument --lr: expected a number (e.g. 0.7 or 1e-3), got 'inf'"),
    (["train", "--gray-share", "nan"], "argument --gray-share: expected a number"),
    (["denoise", "in.png", "-o", "out.png", "--jpeg-quality", "high"], "argument --jpeg-quality: expected a whole "
                                                                        "number, got 'high'"),
    (["export", "--opset", "17.5"], "argument --opset: expected a whole number, got '17.5'"),
    (["evaluate", "--sigmas", "15", "abc"], "argument --sigmas: expected a noise level on the 0-255 scale (e.g. 25)"),
])
def test_a_number_option_given_a_word_says_what_it_takes(capsys, argv, message):
    """These options took argparse's own 'invalid float value: ...'; they now say what they expected, as the other
    options do (and a non-finite number, which float() reads, is refused with it)."""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["denoise", "in.png", "-o", "out.png", "--sigma", "-inf"], "argument --sigma: expected the noise std on [0, 1] "
                                                                "pixels, >= 0, as a number"),
    (["denoise", "in.png", "-o", "out.png", "--sigma", "-1e-3"], "argument --sigma: expected the noise std"),
    (["evaluate", "--sigmas", "-2.5E1"], "--sigmas takes noise levels from 0 to 255 on the 0-255 scale (got -25)"),
])
def test_a_negative_number_written_with_an_exponent_or_as_inf_is_a_value(capsys, argv, message):
    """argparse takes -5 and -0.5 for values but -1e-3 and -inf for options: they were refused as 'expected one
    argument', not with what the option takes."""
    try:
        code = main(argv)  # a refusal of the command's own checks
    except SystemExit as refused:  # the parser's
        code = refused.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "expected one argument" not in err


def test_a_negative_learning_rate_with_an_exponent_is_refused_as_such(capsys, tmp_path):
    """train --lr -1e-3 got through the command's parser but was read again by train's own probe of the options
    given, a plain argparse parser, which stopped with 'cli.py: error: ... expected one argument'."""
    code = main(["train", "--lr", "-1e-3", "--out-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--lr must be a finite number > 0 (got -0.001)" in err and "expected one argument" not in err


def test_add_noise_into_a_new_folder_written_with_a_slash(capsys, tmp_path):
    """'-o noisy/' said it could not tell the image format of 'noisy'; denoise makes such a folder, and so does
    add-noise now (and leaves none behind when the photo is refused). Into a folder a colour GIF's copy goes to .png
    (as denoise writes it: a GIF's 256 colours would undo the noise)."""
    from PIL import Image

    photo = tmp_path / "in.png"
    Image.new("RGB", (8, 8), (100, 120, 140)).save(photo)
    assert main(["add-noise", str(photo), "-o", f"{tmp_path / 'noisy'}/"]) == 0
    assert Image.open(tmp_path / "noisy" / "in.png").size == (8, 8)
    Image.new("RGB", (8, 8), (200, 30, 40)).convert("P").save(tmp_path / "palette.png")  # said, as denoise says it
    capsys.readouterr()
    assert main(["add-noise", str(tmp_path / "palette.png"), "-o", str(tmp_path / "noisy")]) == 0
    assert "note: palette 'P' image converted to 'RGB'" in capsys.readouterr().out
    for command in ("add-noise", "denoise"):  # a file where the slash asks for a folder: it was replaced, or
        assert main([command, str(photo), "-o", f"{photo}/", "--overwrite"]) == 2  # 'cannot tell the format'
        assert "names a folder, but" in capsys.readouterr().err and Image.open(photo).size == (8, 8)
    assert main(["add-noise", str(tmp_path / "gone.png"), "-o", f"{tmp_path / 'other'}/"]) == 2
    assert "no such image file" in capsys.readouterr().err and not (tmp_path / "other").exists()
    Image.new("RGB", (8, 8), (200, 30, 40)).convert("P").save(tmp_path / "colour.gif")  # its noisy copy was refused
    assert main(["add-noise", str(tmp_path / "colour.gif"), "-o", str(tmp_path / "noisy")]) == 0  # (GIF: 256 colours)
    assert "note: written as colour.gif.png, not .gif" in capsys.readouterr().out
    assert Image.open(tmp_path / "noisy" / "colour.gif.png").mode == "RGB"
    assert main(["add-noise", str(photo), "-o", f"{photo}/noisy/"]) == 2  # it said the parent 'does not exist'
    assert f"its parent '{photo}' is a file, not a folder" in capsys.readouterr().err


def test_misplaced_files_are_named_for_what_they_are(capsys, tmp_path, random_weights):
    """A folder as --artifact ('does not exist'), a torch file named .safetensors ('header too large'), a .pt cut
    short (torch's text cut mid-word) and -o named like a manifest ('x.onnx.manifest.onnx' suggested)."""
    import torch
    from safetensors.torch import load_file

    (tmp_path / "models").mkdir()
    code, _, err = run(capsys, "parity", "--backend", "ort", "--artifact", tmp_path / "models")
    assert code == 2 and "is a folder; pass the .onnx file" in err
    torch.save(load_file(str(random_weights)), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "renamed.safetensors").write_bytes(data)
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    code, _, err = run(capsys, "parity", "--backend", "torch", "--weights", tmp_path / "renamed.safetensors")
    assert code == 2 and "it is a PyTorch file (torch.save), not safetensors: rename it to .pt" in err
    code, _, err = run(capsys, "parity", "--backend", "torch", "--weights", tmp_path / "cut.pt", "--preset", "seed")
    assert code == 2 and "the file is cut short or damaged" in err
    code, _, err = run(capsys, "export", "-o", tmp_path / "x.onnx.manifest.json")
    assert code == 2 and f"(e.g. {tmp_path / 'x.onnx'})" in err


def test_reference_of_a_photo_turned_by_its_exif(capsys, tmp_path):
    """A photo stored 40 x 32 with EXIF orientation 6 (as phones write them) is read upright, 32 x 40: its upright
    clean version was refused as the wrong size, and one stored as the file is passed the check, then was refused
    after the output was written."""
    from PIL import Image

    rng = np.random.default_rng(0)
    upright = rng.integers(0, 256, (40, 32, 3)).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise: stored turned the other way
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "phone.png", exif=exif.tobytes())
    Image.fromarray(upright).save(tmp_path / "upright.png")
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "stored.png")
    common = ["denoise", tmp_path / "phone.png", "--no-progress", "--json", "--reference"]
    code, out, err = run(capsys, *common, tmp_path / "upright.png", "-o", tmp_path / "a.png")
    assert code == 0, err
    assert json.loads(out)["psnr_vs_reference"]["input"] is None  # identical pixels, compared the same way up
    code, _, err = run(capsys, *common, tmp_path / "stored.png", "-o", tmp_path / "b.png")
    assert code == 2 and "is 40x32 RGB but" in err and "is 32x40 RGB (upright, after their EXIF orientation)" in err
    assert not (tmp_path / "b.png").exists()


def test_parity_reports_a_model_that_computes_something_else_as_failing(capsys, random_weights, tmp_path):
    """parity of an ONNX model whose graph was changed (its manifest re-hashed to match) answered by how far off it
    was: a little, 'FAIL' with the numbers and exit code 1; a lot, the load-time self-check's error, exit code 2 and
    no numbers. It is reported as failing, with its numbers, however far off it is."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    from moe_base.manifest import manifest_path

    path = tmp_path / "m.onnx"
    assert run(capsys, "export", "--weights", random_weights, "-o", path, "--parity-images", 2)[0] == 0
    proto = onnx.load(str(path))
    init = next(i for i in proto.graph.initializer if i.name == "clip.max")
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) - np.float32(0.5), init.name))
    data = proto.SerializeToString()
    path.write_bytes(data)
    manifest = json.loads(manifest_path(path).read_text())
    manifest["artifact"].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    manifest_path(path).write_text(json.dumps(manifest))
    code, out, err = run(capsys, "parity", "--backend", "ort", "--artifact", path, "-n", 8)
    assert code == 1 and "FAIL" in out and "PSNR" in out, err


def test_export_help_names_the_default_path_of_chosen_rewrites(capsys, monkeypatch, tmp_path):
    """export -o's help gave the default name as moe_denoiser.<flavor>[.noopt][.fp16].onnx; with --rewrites the
    model goes to moe_denoiser.<flavor>.<r1>+<r2>[.fp16].onnx, which a reader of the help could not find."""
    from moe_base.paths import onnx_path

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ".<r1>+<r2> with --rewrites" in text
    assert onnx_path("plugin", rewrites=("fuse_qkv", "rows2d"), precision="fp16").name == \
        "moe_denoiser.plugin.fuse_qkv+rows2d.fp16.onnx"


def test_add_noise_given_two_photos_says_it_takes_one(capsys, tmp_path):
    """add-noise a.png b.png -o dir/ ended in argparse's 'unrecognized arguments: b.png' under the top-level usage."""
    code, _, err = run(capsys, "add-noise", tmp_path / "a.png", tmp_path / "b.png", "-o", f"{tmp_path / 'noisy'}/")
    assert code == 2 and "add-noise takes one photo; got 2" in err and "run it once for each photo" in err
    assert "unrecognized arguments" not in err and not (tmp_path / "noisy").exists()
    with pytest.raises(SystemExit):  # its usage shows one photo (it showed 'input [input ...]')
        run(capsys, "add-noise", "--help")
    usage = " ".join(capsys.readouterr().out.split("\n\n")[0].split())
    assert usage.endswith("[--max-pixels N] input") and "[input" not in usage


def test_ctrl_c_while_the_commands_load_is_one_line_and_130(monkeypatch, capsys):
    """Ctrl-C in the first second of any command (build_parser imports every command's module) printed a Python
    traceback: the handler that says 'interrupted' in one line was entered only after the arguments were parsed."""
    import moe_denoise.cli as cli

    def slow_import(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", slow_import)
    assert cli.main(["doctor"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert cli.main(["--debug", "doctor"]) == 130  # --debug adds the traceback, and keeps the exit code
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyboardInterrupt" in err and "interrupted" in err


def test_debug_adds_the_traceback_and_keeps_the_exit_code_and_json_gets_an_error_document(tmp_path, capsys):
    """A handled error under --debug exited 1 (Python's, for the exception re-raised) where it exits 2 without it; a
    single photo that fails under --json printed nothing on stdout (a folder run's JSON lists its failures)."""
    from moe_denoise.cli import main

    bad = tmp_path / "text.png"
    bad.write_text("not a picture")
    assert main(["--debug", "denoise", str(bad), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("moe-denoise denoise: error:")
    assert main(["denoise", str(bad), "-o", str(tmp_path / "x.png"), "--json"]) == 2
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["exit_code"] == 2 and report["command"] == "denoise" and "text.png" in report["error"]
    assert report["error"] in err and not (tmp_path / "x.png").exists()


def test_a_json_document_printed_past_sys_stdout_gets_no_second_one(monkeypatch, capfd):
    """serve --json prints its ready document on its own copy of file descriptor 1 (tritonserver's children write to
    the real one), which sys.stdout never sees: an error after it added a second JSON document, and a script's
    json.load of stdout failed. A command that printed so says it (args.printed_json), and gets none."""
    import os

    from moe_base.errors import InputError
    from moe_denoise.cli import main
    from moe_denoise.commands import serve

    def ready_then_failed(args):
        os.write(1, b'{"urls": {}}\n')  # as serve does, past sys.stdout
        args.printed_json = True
        raise InputError("the server failed after it was ready")

    monkeypatch.setattr(serve, "run", ready_then_failed)
    assert main(["serve", "--json"]) == 2
    out, err = capfd.readouterr()
    assert json.loads(out) == {"urls": {}}, out  # one document
    assert "moe-denoise serve: error: the server failed after it was ready" in err


def test_a_single_photos_path_errors_come_before_torch_and_the_weights(tmp_path):
    """denoise loaded torch and the weights (3 to 4 s here) before it found a missing input, an output in the way
    (no --overwrite), a file that is no image or an output format it cannot write: those are answered before the
    runner is made now."""
    import subprocess
    import sys

    from PIL import Image

    photo, taken, text = tmp_path / "p.png", tmp_path / "taken.png", tmp_path / "notes.png"
    Image.new("RGB", (8, 8)).save(photo)
    taken.write_bytes(b"")
    text.write_text("not a picture")
    code = ("import sys\n"
            "from moe_denoise.cli import main\n"
            "codes = [main(['denoise', *a.split('|')]) for a in sys.argv[1:]]\n"
            "print(codes, 'torch' in sys.modules)\n")
    cases = [f"{tmp_path / 'none.png'}|-o|{tmp_path / 'o1.png'}", f"{photo}|-o|{taken}",
             f"{text}|-o|{tmp_path / 'o2.png'}", f"{photo}|-o|{tmp_path / 'o3.pdf'}"]
    done = subprocess.run([sys.executable, "-c", code, *cases], capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines()[-1] == "[2, 2, 2, 2] False", done.stdout + done.stderr
    said = done.stderr.splitlines()
    assert len(said) == 4 and all(line.startswith("moe-denoise denoise: error: ") for line in said), said
    assert "no such image file" in said[0] and "exists" in said[1] and "cannot read" in said[2] and "pdf" in said[3]
    assert not any((tmp_path / f"o{i}.png").exists() for i in (1, 2))


def test_a_paths_length_and_permissions_are_said_in_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """pathlib's exists() and is_dir() raise for a name over 255 bytes, a folder that cannot be entered or a loop of
    links, and every command's checks of its paths ended in a traceback ('File name too long', exit 1). Each is one
    line now, exit 2, with the path and what to do; other OSErrors stay bugs with their traceback."""
    import errno

    from PIL import Image

    from moe_denoise.cli import main
    from moe_denoise.commands import denoise

    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    long = "a" * 260
    for argv in (["denoise", str(photo), "-o", str(tmp_path / f"{long}.png")],
                 ["denoise", str(photo), "-o", str(tmp_path / long) + "/"],
                 ["denoise", str(tmp_path / f"{long}.png"), "-o", str(tmp_path / "o.png")],
                 ["add-noise", str(photo), "-o", str(tmp_path / f"{long}.png"), "--sigma", "0.1"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"moe-denoise {argv[0]}: error: the path '") and "Traceback" not in err, err
        assert "is too long: a file or folder name can have at most 255 bytes" in err and "its longest name has 26" in err
    said = []

    def refused(args):
        said.append(args.command)
        raise PermissionError(errno.EACCES, "Permission denied", "nox/c.png")

    monkeypatch.setattr(denoise, "run", refused)
    assert main(["denoise", "x.png", "-o", "y.png", "--json"]) == 2
    out, err = capsys.readouterr()
    assert err == ("moe-denoise denoise: error: 'nox/c.png': permission denied; this user may not read, write or enter "
                   "it (a folder needs its x permission to be entered). Fix its permissions or those of the folder it "
                   "is in, or choose another path\n")
    assert json.loads(out)["exit_code"] == 2 and said == ["denoise"]

    def bug(args):
        raise OSError(errno.EIO, "Input/output error", "disk.img")

    monkeypatch.setattr(denoise, "run", bug)
    with pytest.raises(OSError, match="Input/output error"):  # not the user's to fix: a traceback
        main(["denoise", "x.png", "-o", "y.png"])

    def by_number(args):
        os.stat(987654)  # a file descriptor's number names no path: a bug, its own traceback (not a TypeError)

    import os

    monkeypatch.setattr(denoise, "run", by_number)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["denoise", "x.png", "-o", "y.png"])


def test_files_this_user_may_not_read_are_said_so():
    """Run as another user (root reads everything): a photo that may not be read was 'truncated or corrupt', a
    weights file 'No such file or directory' (safetensors' words), a folder that may not be entered a traceback."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile

    setpriv = shutil.which("setpriv")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if setpriv else []
    if os.geteuid() != 0 or not setpriv or subprocess.run([*as_nobody, sys.executable, "-c", "import moe_denoise"],
                                                          capture_output=True, cwd="/").returncode != 0:
        pytest.skip("needs root and setpriv, and this interpreter and checkout runnable as user nobody (a CI "
                    "interpreter under /root is not)")
    tmp_path = Path(tempfile.mkdtemp(prefix="moe-nobody-"))  # pytest's own folder is root's alone (0700)
    tmp_path.chmod(0o777)
    try:
        _unreadable_files_as(as_nobody, tmp_path)
    finally:
        for path in tmp_path.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(tmp_path)


def _unreadable_files_as(as_nobody: list[str], tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    from weights import DEFAULT_WEIGHTS

    photo, weights, shut = tmp_path / "p.png", tmp_path / "w.safetensors", tmp_path / "shut"
    Image.new("RGB", (8, 8)).save(photo)
    shutil.copy(DEFAULT_WEIGHTS, weights)
    shut.mkdir()
    shutil.copy(photo, shut / "q.png")
    shut.chmod(0o644)  # listed, not entered
    cases = {"photo": ([str(photo), "-o", "o1.png"], f"{photo}': permission denied"),
             "photo in a folder": ([str(shut / "q.png"), "-o", "o2.png"], f"'{shut / 'q.png'}': permission denied"),
             "folder": ([str(shut), "-o", "out/"], "permission denied")}
    photo.chmod(0o000)
    weights.chmod(0o000)
    for name, (argv, expected) in cases.items():
        done = subprocess.run([*as_nobody, sys.executable, "-m", "moe_denoise", "denoise", *argv], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr and expected in done.stderr, (name, done.stderr)
    photo.chmod(0o644)
    done = subprocess.run([*as_nobody, sys.executable, "-m", "moe_denoise", "denoise", str(photo), "-o", "o3.png",
                           "--weights", str(weights)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"could not read weights {weights}: permission denied" in done.stderr, done.stderr


def test_a_loop_of_links_as_evaluates_output_is_refused_in_one_line(tmp_path, capsys):
    """evaluate compared its outputs with its inputs through Path.resolve(), which raises RuntimeError on a loop of
    links: a traceback. The loop is refused as the other commands refuse it, before any data is read."""
    from moe_denoise.cli import main

    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "la.png").symlink_to("lb.png")
    (tmp_path / "lb.png").symlink_to("la.png")
    for option, path in (("--save-json", tmp_path / "loop"), ("--plot", tmp_path / "la.png")):
        assert main(["evaluate", "--data-dir", str(tmp_path / "no-data"), option, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"moe-denoise evaluate: error: {option}: the output '{path}' is a symbolic link") and \
            "Traceback" not in err, err


def test_reliability_export_whose_standard_output_is_gone(random_weights, tmp_path, monkeypatch):
    """export | head -c 10, or export > a full disk: its steps on standard output stopped it before it wrote the
    model (exit 141, or 1) => the steps go to standard error, as every command's progress; the model and its
    manifest are written, and only then does the closed output stop it (exit 141)"""
    import errno
    import io
    import os
    import sys

    class Gone(io.TextIOBase):
        def write(self, text):
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def fileno(self):  # the closed pipe's descriptor, which the command points at /dev/null when it stops
            return fd

    onnx_path = tmp_path / "m.onnx"
    fd = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(sys, "stdout", Gone())
    try:
        assert main(["export", "--weights", str(random_weights), "-o", str(onnx_path), "--parity-images", "2"]) == 141
    finally:
        os.close(fd)
    assert onnx_path.is_file() and onnx_path.with_name("m.onnx.manifest.json").is_file()


def test_reliability_file_name_that_is_not_utf8_to_a_strict_output(tmp_path, monkeypatch):
    """A photo named 'caf\\xe9.png' (not UTF-8: an old archive, a Samba share) with a desktop's strict UTF-8
    standard output, or 'café.png' with an ASCII one: every command that printed the path ended in a
    UnicodeEncodeError traceback (a folder's denoising half-way, an export before it wrote the model) => the name's
    bytes are printed as they are (as ls prints them), a letter the output cannot hold as its escape (\\xe9); exit 0"""
    import io
    import os
    import sys

    rng = np.random.default_rng(0)
    for encoding, name, shown in (("utf-8", b"caf\xe9", b"caf\xe9"), ("ascii", "café".encode(), b"caf\\xe9")):
        src = tmp_path / f"{os.fsdecode(name)}.png"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(src)
        out = tmp_path / f"{os.fsdecode(name)}-noisy-{encoding}.png"
        raw = io.BytesIO()
        stdout = io.TextIOWrapper(raw, encoding=encoding, errors="strict")
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["add-noise", str(src), "-o", str(out), "--sigma", "0.1", "--seed", "1"]) == 0
        stdout.flush()
        assert out.is_file() and shown + f"-noisy-{encoding}.png".encode() in raw.getvalue()


def test_reliability_standard_error_that_takes_nothing(random_weights, tmp_path, monkeypatch):
    """Standard error that cannot be written (2> a full disk, 2>/dev/full, a descriptor a wrapper script left
    read-only): the first progress line's OSError stopped a folder's denoising (evaluate and bench too) before it
    wrote anything, exit 1, its traceback lost on the same stream => the work goes on, every photo is written, and
    the exit code is the work's"""
    import errno
    import io
    import sys

    class Full(io.TextIOBase):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)).save(photos / name)
    monkeypatch.setattr(sys, "stderr", Full())
    assert main(["denoise", str(photos), "-o", str(tmp_path / "out"), "--weights", str(random_weights)]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]


def test_reliability_current_folder_removed(capsys, tmp_path, monkeypatch):
    """A command run from a folder removed (or moved away) while the shell was in it: torch failed to load ('Intel
    oneMKL FATAL ERROR: Cannot load libtorch_cpu.so', exit 2) whatever paths were given, and a relative input was
    called 'truncated or corrupt' => refused in one line (exit 2) naming the folder and saying to cd to one that
    exists; a JSON error document with --json"""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    monkeypatch.setenv("PWD", str(gone))  # what the shell says it is in
    code, out, err = run(capsys, "denoise", tmp_path / "photo.png", "-o", tmp_path / "out.png", "--json")
    assert code == 2 and f"the current folder ({gone}) no longer exists" in err and "cd to a folder" in err
    assert "Traceback" not in err and json.loads(out)["exit_code"] == 2


def test_an_argument_the_command_does_not_take_is_refused_with_its_usage_and_debug_goes_anywhere(capsys, tmp_path):
    """'add-noise ... --json' was refused with the usage of moe-denoise itself (no option of add-noise in it), and
    'denoise ... --debug' was an unrecognised argument: --debug was taken only before the command."""
    with pytest.raises(SystemExit) as e:
        main(["add-noise", str(tmp_path / "x.png"), "-o", str(tmp_path / "y.png"), "--json"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: moe-denoise add-noise" in err and "unrecognized arguments: --json" in err
    code, _, err = run(capsys, "denoise", tmp_path / "none.png", "-o", tmp_path / "o.png", "--debug")
    assert code == 2 and "Traceback" in err and "no such image file" in err
    with pytest.raises(SystemExit) as e:
        main(["--bogus"])
    assert e.value.code == 2 and "usage: moe-denoise [-h]" in capsys.readouterr().err


def test_reliability_control_characters_in_a_file_name(tmp_path, monkeypatch):
    """A photo named with an escape sequence (which coloured or moved the terminal's text from the success line) or
    a carriage return (which wrote over its own line) => on a terminal they are shown as escapes (\\x1b, \\x0d), as
    ls and cp show them; to a file or a pipe the name is written as it is"""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    src = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    name = "\x1b[31mred\x1b[0m\rfake"
    terminal, pipe = Terminal(), io.StringIO()
    for stream, shown in ((terminal, "\\x1b[31mred\\x1b[0m\\x0dfake"), (pipe, name)):
        monkeypatch.setattr(sys, "stdout", stream)
        out = tmp_path / f"{name}-{len(shown)}.png"
        assert main(["add-noise", str(src), "-o", str(out), "--sigma", "0.1"]) == 0
        assert out.is_file() and f"{shown}-{len(shown)}.png" in stream.getvalue()
    assert "\x1b" not in terminal.getvalue() and "\r" not in terminal.getvalue() and "\x1b" in pipe.getvalue()


def test_reliability_default_export_made_before_an_upgrade(capsys, tmp_path, monkeypatch):
    """The default export made before an upgrade replaced the default weights (blind, where the sigma20 specialist
    had been): --backend ort ran the old model labelled 'blind as it was when exported', --weights blind was refused
    as 'made from other weights (blind)', and triton-repo put it in a new repository without a word => named for
    what it runs (sigma20), with a note that 'moe-denoise export' makes it from today's weights (denoise, serve,
    build, triton-repo); the refusal names sigma20 and the default export to make again"""
    import shutil

    import weights

    default = tmp_path / "weights" / "moe_denoiser.safetensors"  # the default weights' file, which an upgrade replaces
    default.parent.mkdir()
    for src, dst in ((weights.SHIPPED["sigma20"], default), (weights.SHIPPED["blind"], tmp_path / "blind.safetensors")):
        shutil.copy(src, dst)
        shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    monkeypatch.setattr(weights, "DEFAULT_WEIGHTS", default)
    monkeypatch.setitem(weights.SHIPPED, "blind", default)
    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path / "cache"))
    assert run(capsys, "export", "--parity-images", 2)[0] == 0  # the old version's default export
    for name in ("safetensors", "json"):  # the upgrade
        shutil.copy(tmp_path / f"blind.{name}", default.with_suffix(f".{name}"))
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(photo)

    code, out, err = run(capsys, "denoise", photo, "-o", tmp_path / "out.png", "--backend", "ort")
    assert code == 0 and "(weights sigma20)" in out and "as it was when exported" not in out
    assert "was exported from the default weights as they were then (sigma20); the default weights have changed" in err
    assert "'moe-denoise export' makes it from today's" in err
    code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "b.png", "--backend", "ort", "--weights", "blind")
    assert code == 2 and "made from other weights (sigma20)" in err
    assert "make the default export from them (moe-denoise export --weights blind)" in err
    code, _, err = run(capsys, "triton-repo", "-o", tmp_path / "repo", "--no-server-check")
    assert code == 0 and "was exported from the default weights as they were then (sigma20)" in err

    assert run(capsys, "export", "--parity-images", 2)[0] == 0  # made again: no note
    code, out, err = run(capsys, "denoise", photo, "-o", tmp_path / "again.png", "--backend", "ort")
    assert code == 0 and "(weights blind)" in out and "note:" not in err


def test_a_missing_base_package_is_said_in_one_line_even_for_help():
    """Without numpy (a broken install, 'python -S'), even --help ended in a ModuleNotFoundError traceback: every
    command's module is imported to build the parser, and export's imports numpy."""
    import subprocess
    import sys

    script = "import sys; sys.modules['numpy'] = None\nfrom moe_denoise.cli import main\nsys.exit(main(['--help']))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "moe-denoise: error: numpy cannot be imported" in done.stderr and "pip install numpy" in done.stderr


def test_reliability_stop_after_the_command_ended(tmp_path):
    """A Ctrl-C or SIGTERM in the second or so after a command ended ('wrote ...' printed), while Python tore torch
    down, ended the process as killed by it: exit 130 or 143 with no word, for work that was done => the process
    ends at once with the command's own exit code (0)"""
    import subprocess
    import sys

    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    script = ("import os, signal, sys, time\nfrom moe_denoise.cli import main\n"
              f"sys.argv = ['moe-denoise', 'add-noise', {str(photo)!r}, '-o', {str(tmp_path / 'noisy.png')!r}]\n"
              "code = main()\n"  # run as the program: no argv given
              "os.kill(os.getpid(), signal.SIGTERM)\n"  # a stop while Python tears down
              "time.sleep(30)\n"
              "sys.exit(7)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and (tmp_path / "noisy.png").is_file(), done.stderr
    assert str(tmp_path / "noisy.png") in done.stdout


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_reliability_stop_while_torch_is_torn_down(tmp_path, signum):
    """A Ctrl-C or SIGTERM a moment after denoise said what it wrote, while torch was torn down after Python code had
    ended (finalization puts back the default action of handlers set from Python) => exit 0, the command's own
    code (it was killed by the signal: 130 or 143, for finished work)"""
    import subprocess
    import sys

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photo)
    proc = subprocess.Popen([sys.executable, "-m", "moe_denoise", "denoise", str(photo), "-o", str(tmp_path / "o.png"),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if str(tmp_path / "o.png") in line:  # said: what is left is the exit
            time.sleep(0.2)
            proc.send_signal(signum)
            break
    proc.stdout.read()
    assert proc.wait(timeout=120) == 0 and (tmp_path / "o.png").is_file(), proc.stderr.read()


def test_reliability_json_for_refusals_of_the_option_parser_and_for_a_stop(capsys, monkeypatch):
    """--json with a value an option's own type refuses ('--strength nan', a port of 99999) or an unknown option:
    exit 2 and an empty standard output, where the same kind of value refused by the command ('--strength -1') gave
    the JSON error document; and a command stopped by Ctrl-C or SIGTERM printed no document (a batch's and bench's
    own did) => the error document on standard output (for a stop with "interrupted": true and the exit code
    128 + the signal), the usage and message on standard error as before"""
    import signal

    import moe_denoise.commands.doctor as doctor

    for argv, said in ((["denoise", "p.png", "-o", "x.png", "--json", "--strength", "nan"],
                        "argument --strength: expected a number"),
                       (["doctor", "--json", "--bogus"], "unrecognized arguments: --bogus"),
                       (["serve", "--json", "--http-port", "99999"], "argument --http-port")):
        with pytest.raises(SystemExit) as refused:
            main(argv)
        out, err = capsys.readouterr()
        document = json.loads(out)
        assert refused.value.code == 2 and document["exit_code"] == 2 and document["command"] == argv[0]
        assert said in document["error"] and said in err and "usage:" in err
    with pytest.raises(SystemExit):
        main(["doctor", "--bogus"])  # without --json: no document
    assert capsys.readouterr().out == ""

    def stopped(args):
        error = KeyboardInterrupt()
        error.signum = signal.SIGTERM
        raise error

    monkeypatch.setattr(doctor, "run", stopped)
    assert main(["doctor", "--json"]) == 143
    out, err = capsys.readouterr()
    assert json.loads(out) == {"command": "doctor", "error": err.strip(), "exit_code": 143, "interrupted": True}
    assert "stopped" in err or "terminated" in err.lower()


def test_a_bar_redrawn_below_another_keeps_its_cursor_moves_on_a_terminal():
    """evaluate's BM3D bar (tqdm, below the levels' bar) moves the cursor up with ESC [ A: on a terminal the output's
    escaping of control characters printed it as the text '\\x1b[A', and each image's update on a new line. The
    cursor-up goes through; any other escape sequence is still shown as text."""
    import io

    from tqdm import tqdm

    from moe_denoise.cli import BestEffortOutput

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    stream = BestEffortOutput(screen)
    with tqdm(total=2, desc="levels", file=stream, mininterval=0) as outer:
        with tqdm(total=3, desc="BM3D", file=stream, position=1, leave=False, mininterval=0) as inner:
            for _ in range(3):
                inner.update()
        outer.update(2)
    shown = screen.getvalue()
    assert "\x1b[A" in shown and "\\x1b" not in shown
    stream.write("\x1b[31mred\x1b[0m\n")
    assert "\\x1b[31mred\\x1b[0m" in screen.getvalue()


@pytest.mark.parametrize("columns", ["40", "80"])
def test_help_never_breaks_a_path_across_lines(capsys, monkeypatch, columns):
    """--help at 80 columns broke a default path mid-word ('($MOE_D' / 'ENOISE_CACHE/artifacts/...'), which could not
    be copied from the help; at 40 columns in three places."""
    monkeypatch.setenv("COLUMNS", columns)
    for command in ("denoise", "export", "parity"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = capsys.readouterr().out
        assert "$MOE_DENOISE_CACHE/artifacts/moe_denoiser." in shown, command


def test_a_single_photo_in_a_log_says_it_began(capsys, tmp_path):
    """In a log (standard error no terminal) a single photo printed nothing until its first progress line, 30 s into
    the tiles (a 33 s run left the log empty); a folder's photos each had a start line. Now it says it began, once
    its paths are checked; --no-progress and --json leave it out."""
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    code, out, err = run(capsys, "denoise", photo, "-o", tmp_path / "o.png")
    assert code == 0 and err.splitlines()[0] == f"denoising {photo} ..." and "denoised" in out
    for quiet in ("--no-progress", "--json"):
        code, _, err = run(capsys, "denoise", photo, "-o", tmp_path / "o.png", "--overwrite", quiet)
        assert code == 0 and "denoising" not in err


def test_the_input_is_reported_as_given(capsys, tmp_path, monkeypatch):
    """The success line and --json named the input by its absolute path, the output, start and failure lines as
    given: long lines, and a log could not be searched for the path that was typed."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    code, out, _ = run(capsys, "denoise", "p.png", "-o", "o.png")
    assert code == 0 and out.startswith("denoised p.png (8x8, RGB, 8-bit)") and "-> o.png" in out
    code, out, _ = run(capsys, "denoise", "p.png", "-o", "o.png", "--overwrite", "--json")
    assert code == 0 and json.loads(out)["input"] == "p.png" and json.loads(out)["output"] == "o.png"


def test_the_impl_choices_are_the_models_and_an_unknown_one_is_refused_by_the_option(capsys):
    """'--impl foo' was refused by the runner after the weights had loaded, in words that did not name --impl; the
    option's choices are now the implementations the model has (named without importing torch, for --help)."""
    from moe_denoise.commands import IMPL_CHOICES
    from moe_model.attention import IMPLS
    from topk_attention.torch_op import IMPL_NAME

    assert IMPL_CHOICES == (*IMPLS, IMPL_NAME)
    with pytest.raises(SystemExit):
        main(["denoise", "x.png", "-o", "y.png", "--impl", "foo"])
    assert "argument --impl: invalid choice: 'foo'" in capsys.readouterr().err


def test_a_broken_install_is_told_by_the_name_pip_knows_and_a_hiding_file_is_named(tmp_path, capsys, monkeypatch):
    """An export.py in the current folder (python -m puts it first) was answered 'pip install export.onnx_export', a
    toolkit module's name; Pillow gone was a traceback ('import of PIL halted'), and would have been 'pip install PIL'."""
    import os
    import subprocess
    import sys

    from moe_denoise.cli import OWN_PACKAGES

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")

    repo = Path(__file__).resolve().parents[2]
    packages = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert set(OWN_PACKAGES) == {p.split(".")[0] for p in packages}
    (tmp_path / "export.py").write_text("x = 1\n")
    run = subprocess.run([sys.executable, "-m", "moe_denoise", "export"], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert run.returncode == 2, run.stderr
    assert f"'export' is {tmp_path / 'export.py'}, which hides moe-denoise's own 'export' package: rename that file " \
           f"or folder, or run moe-denoise from another folder" in run.stderr
    monkeypatch.setitem(sys.modules, "PIL", None)
    photo = tmp_path / "p.png"
    photo.write_bytes(b"not read")
    assert main(["denoise", str(photo), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "PIL cannot be imported" in err and "(pip install pillow)" in err and "Traceback" not in err, err


def test_a_second_value_after_an_option_given_once_per_value_says_to_repeat_it(capsys):
    """'evaluate --weights blind sigma20' was refused with argparse's bare 'unrecognized arguments: sigma20', while
    --sigmas and the photos take several values after one flag."""
    with pytest.raises(SystemExit):
        main(["evaluate", "--weights", "blind", "sigma20"])
    assert "unrecognized arguments: sigma20 (--weights takes one value; repeat it for each: --weights blind --weights " \
           "sigma20)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--no-ssim", "stray"])  # no option's value before it: no hint
    assert capsys.readouterr().err.rstrip().endswith("unrecognized arguments: stray")


def test_refusals_name_their_option_and_come_before_any_start_line(capsys, tmp_path):
    """Findings of an audit of the messages: 'denoising X ...' was printed before the refusal of --weights nope (and
    of --preset nope, which did not name --preset); '--reference nothere.png' said 'no such image file' without
    naming the option; --max-pixels 100 said '(0 megapixels)'; an unknown backend was listed as ['nope']; a damaged
    CIFAR batch's message had a double period; '--server ... --timeout 2' waited 10 s for a server not there."""
    from moe_base.errors import DatasetError
    from moe_model.data import load_cifar10

    photo = tmp_path / "p.png"
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(photo)
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--weights", tmp_path / "nope.safetensors")
    assert code == 2 and "nope.safetensors" in err and "denoising" not in err, err
    with pytest.raises(SystemExit):
        main(["denoise", str(photo), "-o", str(out), "--preset", "nope"])
    assert "argument --preset: invalid choice: 'nope'" in capsys.readouterr().err
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--reference", tmp_path / "nothere.png")
    assert code == 2 and "--reference: no such image file" in err, err
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--max-pixels", "100")
    assert code == 2 and "(0.0001 megapixels)" in err, err
    code, _, err = run(capsys, "bench", "--quick", "--backends", "nope,torch-seed", "--out-dir", tmp_path / "b")
    assert code == 2 and "unknown backend(s) nope;" in err, err
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "test_batch").write_bytes(b"x\n")
    with pytest.raises(DatasetError) as e:
        load_cifar10(tmp_path / "cifar", "test")
    assert ".." not in str(e.value), e.value
    assert not out.exists()
    pytest.importorskip("tritonclient", reason="--server needs the serve extra (tritonclient)")
    code, _, err = run(capsys, "denoise", photo, "-o", out, "--server", "localhost:1", "--timeout", "2")
    assert code == 2 and "no ready Triton server at localhost:1 after 2s" in err, err


def test_a_file_named_like_an_option_is_told_how_to_name_it(capsys, tmp_path, monkeypatch):
    """'denoise * -o out/' in a folder holding -photo.png: 'the following arguments are required: input' (the file
    exists) or 'unrecognized arguments: -photo.png', with no word of why."""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "-photo.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    for argv in (["denoise", "-photo.png", "-o", "d/"], ["denoise", "a.png", "-photo.png", "-o", "d/"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "('-photo.png' is a file here, read as an option: write ./-photo.png, or put -- after the options " \
               "and before the file names)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["denoise", "-q", "-o", "d/"])  # no such file: argparse's message alone
    assert "is a file here" not in capsys.readouterr().err


def test_doctor_names_the_features_an_extra_brings(capsys, monkeypatch):
    """doctor listed the backends alone: a base install's missing pypng, tifffile or bm3d (16-bit colour photos,
    evaluate's BM3D rows) was found only when a command needed it."""
    import sys

    monkeypatch.setitem(sys.modules, "bm3d", None)  # as in an install without the eval extra
    code, out, _ = run(capsys, "doctor", "--json")
    features = json.loads(out)["features"]
    assert code == 0 and features["evaluate: the BM3D baseline"] == {
        "usable": False, "reason": "bm3d not importable: pip install 'moe-denoise[eval]'"}
    if "png" not in MISSING:  # pypng is in the test extra
        assert features["16-bit colour PNG (read and written as 16-bit)"]["usable"]
    code, out, _ = run(capsys, "doctor")
    assert "[ ] evaluate: the BM3D baseline" in out and "pip install 'moe-denoise[eval]'" in out


def test_reliability_stop_handled_under_python_dash_m(tmp_path):
    """'python -m moe_denoise' stopped by a Ctrl-C while its model loaded said so, and then (1 run in 15 or so) died
    killed by SIGINT, not with 130: CPython 3.10 and 3.11 note a KeyboardInterrupt that leaves a nested evaluation
    (one in a library's import) and end a -m run with SIGINT when the note is set => exit with main()'s own code
    (here the note is set after main() returns, as that import had set it, so that the case is the same each run)"""
    import ctypes
    import os
    import subprocess
    import sys

    try:
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt")
    except ValueError:
        pytest.skip("this interpreter has no _Py_UnhandledKeyboardInterrupt (CPython 3.12 moved it)")
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "sitecustomize.py").write_text(
        "import ctypes\nimport moe_denoise.cli as cli\nreal = cli.main\n\n"
        "def main(argv=None):\n    code = real(argv)\n"
        "    ctypes.c_int.in_dll(ctypes.pythonapi, '_Py_UnhandledKeyboardInterrupt').value = 1\n    return code\n\n"
        "cli.main = main\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "p.png")
    done = subprocess.run([sys.executable, "-m", "moe_denoise", "add-noise", "p.png", "-o", "n.png"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{repo}"})
    assert done.returncode == 0 and (tmp_path / "n.png").is_file(), (done.returncode, done.stderr)
