"""The tools' shared entry (tools.run_tool) and their option ranges: the toolkit's own errors end in one line and
exit code 2, not a traceback; a count, size or level out of range is refused by argparse before any work."""
import subprocess
import sys
from pathlib import Path

import pytest

import tools
from moe_base.errors import CheckpointError, ToolkitError

REPO = Path(__file__).resolve().parents[2]


def test_a_toolkit_error_is_one_line_and_exit_2(capsys):
    def refused():
        raise CheckpointError("weights file /nowhere.safetensors does not exist")

    with pytest.raises(SystemExit) as e:
        tools.run_tool(refused, "some_tool")
    assert e.value.code == 2
    assert capsys.readouterr().err == "some_tool: error: weights file /nowhere.safetensors does not exist\n"


def test_other_errors_keep_their_traceback_and_codes_pass_through():
    def bug():
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        tools.run_tool(bug, "some_tool")
    for code in (0, 1, None):
        with pytest.raises(SystemExit) as e:
            tools.run_tool(lambda code=code: code, "some_tool")
        assert e.value.code == code


def test_a_fetch_error_is_a_toolkit_error():
    from tools.trt_layer.fetch import FetchError

    assert issubclass(FetchError, ToolkitError) and issubclass(FetchError, RuntimeError)  # callers catching either


def test_a_tool_run_as_a_module_says_the_error_in_one_line(tmp_path):
    """photo_finetune's own check of --out, through the real entry: the tool's name, the message, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "tools.photo_finetune", "--photos", "coins", "--sigma", "0.1",
                           "--out", str(tmp_path / "a.pt")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("photo_finetune: error: --out must end in .safetensors") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("module, argv, said", [
    ("rewrites_ab", ["--batch", "0"], "--batch: must be >= 1, got 0"),
    ("rewrites_ab", ["--rounds", "0"], "--rounds: must be >= 1, got 0"),
    ("rewrites_ab", ["--inner", "-1"], "--inner: must be >= 1, got -1"),
    ("rewrites_ab", ["--threads", "0"], "--threads: must be >= 1, got 0"),
    ("tile_batch_ab", ["--runs", "-3"], "expected a number of runs >= 0"),
    ("tile_batch_ab", ["--width", "0"], "--width: must be >= 1, got 0"),
    ("tile_batch_ab", ["--sizes", "0", "2"], "--sizes: must be >= 1, got 0"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma", "0.1", "--batch", "0"],
     "--batch: must be >= 1"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma", "0.1", "--max-steps", "0"],
     "--max-steps: must be >= 1"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma", "-0.1"], "--sigma: expected"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma", "0"], "a noise std above 0"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma", "0.1", "--lr", "-1"],
     "--lr: expected a number > 0"),
    ("guard_noise", ["--jpeg", "0"], "expected a JPEG quality from 1 to 95, got '0'"),
    ("guard_noise", ["--jpeg", "150"], "expected a JPEG quality from 1 to 95, got '150'"),
    ("guard_noise", ["--levels", "-5"], "expected a noise std on the 0-255 scale"),
    ("overlap_tradeoff", ["--overlaps", "32"], "expected a tile overlap from 0 to 31"),
    ("overlap_tradeoff", ["--sigmas", "-25"], "expected a noise std on the 0-255 scale"),
    ("overlap_tradeoff", ["--sigmas", "256"], "from 0 to 255"),
    ("gpu_profile", ["--cpu-dry-run", "--repeats", "0"], "--repeats: must be >= 1"),
    # these four were taken by plain int / float: a traceback after the work, or a run that skipped everything
    ("overlap_tradeoff", ["--seed", "-1"], "--seed: expected a seed, a whole number from 0"),
    ("gpu_profile", ["--cpu-dry-run", "--deadline", "-5"], "--deadline: expected a number of seconds > 0"),
    ("gpu_profile", ["--cpu-dry-run", "--deadline", "nan"], "--deadline: expected a number of seconds > 0"),
    ("serving_loadtest", ["--queue-delay-us", "-5"], "--queue-delay-us: expected microseconds from 0 to 10000000"),
    ("serving_loadtest", ["--atol", "nan"], "--atol: expected a number"),
    ("serving_loadtest", ["--atol", "-1"], "--atol: expected a number > 0"),
    ("photo_finetune", ["--photos", "coins", "--out", "x.safetensors", "--sigma-max", "5"],
     "--sigma-max: 5 is over 1"),
    ("gpu_profile", ["--cpu-dry-run", "--batches", "a"], "expected comma-separated batch sizes"),
    ("gpu_profile", ["--cpu-dry-run", "--batches", "1,0"], "expected comma-separated batch sizes"),
    ("gpu_check", ["--iters", "0"], "--iters: must be >= 1"),
    ("gpu_check", ["--batch", "0"], "--batch: must be >= 1"),
    ("check_readme", ["/nonexistent.md"], "no such Markdown file: /nonexistent.md"),
])
def test_out_of_range_options_are_refused_before_any_work(module, argv, said, capsys, monkeypatch, tmp_path):
    import importlib

    monkeypatch.chdir(tmp_path)  # nothing a tool wrongly started would write lands in the repository
    tool = importlib.import_module(f"tools.{module}")
    with pytest.raises(SystemExit) as e:
        tool.main(argv)
    assert e.value.code == 2
    assert said in capsys.readouterr().err


def test_level_0_is_a_clean_photo_as_the_docs_run_it():
    """docs/evaluation.md runs 'guard_noise --levels 0 5 10 15' (what the guard reads of a clean photo): 0 is a
    level, not an error."""
    from tools import level_255

    assert [level_255(t) for t in ("0", "-0", "5", "255")] == [0.0, 0.0, 5.0, 255.0]


def test_every_tools_help_answers_without_torch():
    """A tool's --help answers without importing torch (5 s here): overlap_tradeoff, rewrites_ab and photo_finetune
    imported it before parsing. Every module of tools/ with a main() is asked, in one fresh interpreter."""
    names = sorted(p.stem for p in (REPO / "tools").glob("*.py") if "\ndef main(" in p.read_text())
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    try:\n"
            "        importlib.import_module('tools.' + name).main(['--help'])\n"
            "    except SystemExit:\n"
            "        pass\n"
            "    if 'torch' in sys.modules:\n"
            "        sys.exit('torch imported by ' + name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(names) >= 10 and {"overlap_tradeoff", "rewrites_ab", "photo_finetune"} <= set(names)


def test_a_paths_permission_is_one_line_and_other_os_errors_keep_their_traceback(capsys):
    """A tool meeting a path it may not enter, or a name too long, said it in a traceback: one line now, as
    moe-denoise says it (moe_base.errors.path_error_message); any other OSError is a bug and keeps its traceback."""
    import errno

    def refused():
        raise PermissionError(errno.EACCES, "Permission denied", "/data/photos")

    with pytest.raises(SystemExit) as e:
        tools.run_tool(refused, "some_tool")
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("some_tool: error: '/data/photos': permission denied; this user may not")

    def broken():
        raise OSError(errno.EIO, "Input/output error", "/data/photos")

    with pytest.raises(OSError, match="Input/output error"):
        tools.run_tool(broken, "some_tool")
