"""tools/gpu_session.sh: its CPU dry run (every step, the files each reports) and its budget; tools/gpu_profile.py's
reading of kernel names and its verdicts."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.backends import SESSION_BACKENDS
from tests.extras import MISSING
from tools.gpu_profile import bound, category

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "gpu_session.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="the session script needs bash and coreutils' timeout")


def run_session(tmp_path, *args, **env):
    """The script with torch seeing no GPU (CUDA_VISIBLE_DEVICES empty), on any machine: these tests check what
    it does and reports where there is none (the dry run's skips and unavailable backends, the GPU run's fast
    failures); on a machine with a GPU the GPU run would really start."""
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": "", **env}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)


def test_dry_run_runs_the_steps_on_the_cpu_and_reports_their_files(tmp_path):
    """Tiny settings (the kernel dry run of gpu_check is left out: it has its own --cpu-dry-run and takes ~30 s)."""
    out = tmp_path / "session"
    res = run_session(tmp_path, "--dry-run", str(out), GPU_SESSION_STEPS="pytest,bench,profile",
                      PYTEST_TARGETS="tests/runtime/test_cuda_graphs_gpu.py", PROFILE_BATCHES="1")
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "DRY RUN on the CPU" in res.stdout and "every step passed" in res.stdout
    session = json.loads((out / "session.json").read_text())
    assert session["mode"] == "cpu-dry-run" and session["ok"]
    steps = {s["name"]: s for s in session["steps"]}
    assert list(steps) == ["gpu_check", "pytest", "bench", "profile"]
    assert steps["gpu_check"]["skipped"] and steps["gpu_check"]["exit_code"] is None
    assert steps["pytest"]["files"] == ["pytest.log"] and steps["pytest"]["exit_code"] == 0
    assert steps["bench"]["files"][:2] == ["results.json", "results.md"] and "bench.log" in steps["bench"]["files"]
    assert steps["profile"]["files"] == ["profile.json", "profile.md", "profile.log"]
    import tarfile

    # the device tool returns at most 8 files: every file is in session.tgz, and six stay beside it
    plain = sorted(p.name for p in out.iterdir() if p.is_file())
    assert plain == ["profile.json", "profile.md", "results.json", "results.md", "session.json", "session.tgz"]
    assert session["complete"] and not any(tmp_path.glob("gpu_session_work.*"))  # its work folder is removed
    assert "gpu_session: pytest: exit 0" in res.stdout and "passed" in res.stdout.split("gpu_session: pytest:")[1]
    with tarfile.open(out / "session.tgz") as tar:
        packed = set(tar.getnames())
        pytest_log = tar.extractfile("pytest.log").read().decode()
    plot = set() if "matplotlib" in MISSING else {"results.png"}  # the bench's plot needs matplotlib (test extra)
    assert {"pytest.log", "bench.log", "profile.log", "session.json"} | plot <= packed
    assert "needs a CUDA GPU" in pytest_log  # the GPU tests skip with their reason
    results = json.loads((out / "results.json").read_text())
    status = {b["name"]: b for b in results["backends"]}
    assert status["torch-masked"]["status"] == "ok"  # timed on the CPU
    for name in SESSION_BACKENDS:  # the GPU session's backends: listed, with the reason they cannot run here
        assert status[name]["status"] == "unavailable" and "NoGPUError" in status[name]["reason"]
    profile = json.loads((out / "profile.json").read_text())
    assert profile["mode"] == "cpu-dry-run" and {r["batch"] for r in profile["rows"]} == {1}
    assert len(profile["rows"]) == 2 and all(r["bound"] and r["kernels_per_call"] > 0 for r in profile["rows"])
    source = Path(profile["targets"]["source"])  # judged from the bench's file of this run (no GPU rows), in the
    assert source.name == "results.json" and source.parent.name.startswith("gpu_session_work.")  # steps' folder
    assert "## Targets (issue 17)" in (out / "profile.md").read_text()


def test_dry_run_defaults_to_a_temporary_folder(tmp_path):
    before = {p.name for p in (REPO / "benchmarks" / "results" / "gpu").iterdir()}
    res = run_session(tmp_path, "--dry-run", GPU_SESSION_STEPS="none")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    session = json.loads((tmp_path / "gpu_session_dry_run" / "session.json").read_text())
    assert [s["skipped"] for s in session["steps"]] == [True] * 4
    assert {p.name for p in (REPO / "benchmarks" / "results" / "gpu").iterdir()} == before


def test_the_gpu_run_fits_in_the_timeout_its_header_gives():
    """The GPU branch's step limits (defaults), 10 s for each step to be killed and the 60 s check of the interpreter
    fit in the timeout_s the header tells the device tool (it said 540 and counted the limits alone: 565 s at worst,
    and a run stopped from outside lost files)."""
    text = SCRIPT.read_text()
    timeout_s = int(re.search(r'command "tools/gpu_session.sh", timeout_s (\d+)', text).group(1))
    gpu_branch = text[text.index("else\n    step \"gpu_check\""):]
    limits = {k: int(v) for k, v in re.findall(r"\$\{(GPU_CHECK_S|PYTEST_S|BENCH_S|PROFILE_S):-(\d+)\}", gpu_branch)}
    assert set(limits) == {"GPU_CHECK_S", "PYTEST_S", "BENCH_S", "PROFILE_S"}
    assert sum(limits.values()) + 10 * len(limits) + 60 + 30 <= timeout_s <= 600  # 30 s: the header and the packing
    deadline = int(re.search(r"BENCH_DEADLINE_S:-(\d+)", gpu_branch).group(1))
    assert deadline + 30 <= limits["BENCH_S"]  # the last round and the report fit after the deadline
    assert "4096" in re.search(r"BENCH_BATCHES:-([\d,]+)", gpu_branch).group(1).split(",")[:2]  # a target, early


def test_the_gpu_test_files_are_those_holding_gpu_and_trt_tests():
    """The test step runs the files that hold GPU- and TensorRT-marked tests (collecting all 1,500 tests took 19 s,
    and one module failing to import on the GPU machine would have cancelled them all): the list is that set."""
    listed = set(re.search(r'GPU_TESTS="([^"]*)"', SCRIPT.read_text()).group(1).split())
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                          "gpu or trt", "tests"], cwd=REPO, capture_output=True, text=True, timeout=300)
    found = {line.split("::")[0] for line in res.stdout.splitlines() if "::" in line}
    assert found and found == listed, (found, listed)


@pytest.mark.parametrize("env, message", [
    ({"GPU_SESSION_STEPS": "gpu-check,bench"}, "names 'gpu-check', which is no step; give some of gpu_check, pytest"),
    ({"GPU_CHECK_S": "4m"}, "GPU_CHECK_S=4m is not a whole number of seconds (e.g. 240, not 4m)"),
])
def test_a_step_name_or_limit_that_is_not_one_stops_the_script_before_any_step(tmp_path, env, message):
    """'GPU_SESSION_STEPS=gpu-check,bench' skipped the kernel check and said 'every step passed' (exit 0); a limit of
    '4m' ran, then broke the summary (no session.json, no session.tgz), and the run still said it passed."""
    res = run_session(tmp_path, "--dry-run", str(tmp_path / "s"), **env)
    assert res.returncode == 2 and message in res.stderr, res.stdout[-2000:] + res.stderr[-2000:]
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("name,cat", [
    ("void at::native::sbtopk::gatherTopK<float, unsigned int, 2, false>(at::cuda::detail::TensorInfo)", "top-k"),
    ("void at::native::mbtopk::radixFindKthValues<float, unsigned int, unsigned int, 2>(...)", "top-k"),
    ("sparse_topk_attn_fwd", "top-k"),
    ("sm90_xmma_gemm_f32f32_f32f32_f32_tn_n_tilesize128x128x32_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
     "gemm"),
    ("nvjet_tst_64x8_64x16_4x1_v_bz_TNT", "gemm"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x64x64", "convolution"),
    ("fmha_cutlassF_f32_aligned_64x64_rf_sm80(PyTorchMemEffAttention::AttentionKernel)", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>>", "attention"),
    ("triton_poi_fused_add_native_layer_norm_0", "memory-bound"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "memory-bound"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float>", "memory-bound"),
    ("Memcpy DtoD (Device -> Device)", "memory-bound"),
    ("aten::topk", "top-k"), ("aten::addmm", "gemm"), ("aten::mkldnn_convolution", "convolution"),
])
def test_kernel_names_fall_into_their_categories(name, cat):
    assert category(name) == cat


def test_verdicts():
    assert bound(300.0, 100.0, 150, {"memory-bound": 0.6})[0] == "launches"  # idle 2/3 of the call
    assert bound(300.0, 290.0, 150, {"memory-bound": 0.6})[0] == "launches"  # 150 kernels of ~2 us each
    name, why = bound(10_000.0, 9_500.0, 200, {"top-k": 0.45, "memory-bound": 0.35, "gemm": 0.2})
    assert name == "top-k kernel" and "45%" in why
    assert bound(10_000.0, 9_500.0, 200, {"memory-bound": 0.5, "gemm": 0.3})[0] == "memory traffic"
    assert bound(10_000.0, 9_500.0, 200, {"convolution": 0.5, "gemm": 0.3})[0].startswith("arithmetic")


def test_the_gpu_run_on_a_machine_without_a_gpu_fails_each_step_fast_and_says_why(tmp_path):
    """The GPU branch's own command lines (the dry run uses others): each parses and its step fails at once, saying
    why, here where torch sees no GPU; the test step fails too (its tests would all skip and read as passed)."""
    import tarfile

    out = tmp_path / "gpu"
    res = run_session(tmp_path, str(out), BENCH_S="60", PROFILE_S="60", PYTEST_TARGETS="tests/runtime/test_cuda_graphs_gpu.py")
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-2000:]
    session = json.loads((out / "session.json").read_text())
    assert session["mode"] == "gpu" and not session["ok"]
    assert all(s["exit_code"] not in (0, None, 124, 137) for s in session["steps"]), session["steps"]  # none timed out
    with tarfile.open(out / "session.tgz") as tar:
        logs = {name: tar.extractfile(name).read().decode() for name in tar.getnames() if name.endswith(".log")}
    assert "no CUDA GPU visible to torch" in logs["gpu_check.log"]
    assert "torch sees no CUDA GPU: every GPU test would skip" in logs["pytest.log"]
    assert "no backend was timed" in logs["bench.log"]


def test_a_bound_measured_on_another_backend_says_so():
    """profile.md credited the bound of the profiled backend (fp32, say) to the fastest one (fp16) without a word."""
    from tools.gpu_profile import markdown

    doc = {"mode": "gpu", "env": {}, "created_utc": "now", "rows": [], "targets": {
        "source": "results.json",
        "batch4096_images_per_s": {"value": 1.419e5, "backend": "torch-compile-cuda-fp16-graph", "met": False,
                                   "bound": "arithmetic", "why": "GEMMs",
                                   "profiled_backend": "torch-masked-cuda-graph"}}}
    assert ("missed; bound: arithmetic (GEMMs; bound measured on torch-masked-cuda-graph, not on "
            "torch-compile-cuda-fp16-graph)") in markdown(doc)
    doc["targets"]["batch4096_images_per_s"]["profiled_backend"] = "torch-compile-cuda-fp16-graph"
    assert "missed; bound: arithmetic (GEMMs)" in markdown(doc)


def run_script(script, cwd, *args, **env):
    env = {**os.environ, "PYTHON": sys.executable, **env}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(REPO / "tools" / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=240)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--dry-run", "--help"]])
def test_help_prints_the_usage_and_runs_nothing(tmp_path, args):
    res = run_script("gpu_session.sh", tmp_path, *args, GPU_SESSION_STEPS="none", TMPDIR=str(tmp_path))
    assert res.returncode == 0 and res.stderr == ""
    assert res.stdout.startswith("Every GPU check of the project") and "tools/gpu_session.sh [--dry-run] [OUT_DIR]" in res.stdout
    assert "PYTHON" in res.stdout and "== gpu_check" not in res.stdout
    assert list(tmp_path.iterdir()) == []  # '--help' was taken as OUT_DIR and made there


@pytest.mark.parametrize("args", [["--bogus"], ["--dry-run", "--out", "x"], ["a", "b"]])
def test_an_unknown_option_or_a_second_folder_is_refused(tmp_path, args):
    res = run_script("gpu_session.sh", tmp_path, *args, GPU_SESSION_STEPS="none", TMPDIR=str(tmp_path))
    assert res.returncode == 2 and "--help says more" in res.stderr and "== gpu_check" not in res.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_relative_out_dir_is_the_callers(tmp_path):
    res = run_script("gpu_session.sh", tmp_path, "--dry-run", "rel", GPU_SESSION_STEPS="none", TMPDIR=str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert (tmp_path / "rel" / "session.json").is_file() and not (REPO / "rel").exists()
    assert f"-> {tmp_path / 'rel'};" in res.stdout and f"({tmp_path / 'rel'}," in res.stdout  # the absolute path


def test_a_relative_python_is_the_callers_as_out_dir_is(tmp_path):
    """PYTHON=.venv/bin/python was looked up from the repository root (the script moves there), while a relative
    OUT_DIR was the caller's: the same spelling meant two folders."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "py").write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")  # a link loses the venv
    (tmp_path / "bin" / "py").chmod(0o755)
    res = run_script("gpu_session.sh", tmp_path, "--dry-run", "rel", PYTHON="bin/py", GPU_SESSION_STEPS="none",
                     TMPDIR=str(tmp_path))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert (tmp_path / "rel" / "session.json").is_file()


def test_an_interpreter_without_the_steps_modules_stops_before_any_step(tmp_path):
    bare = tmp_path / "bare-python"  # the same Python without its site-packages: no torch, PIL, ...
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    res = run_script("gpu_session.sh", tmp_path, "--dry-run", str(tmp_path / "out"), PYTHON=str(bare),
                     TMPDIR=str(tmp_path))
    assert res.returncode == 2
    assert "cannot import: torch (ModuleNotFoundError" in res.stderr and "PIL (" in res.stderr
    assert "set PYTHON to one that has them" in res.stderr
    assert "== gpu_check" not in res.stdout and not (tmp_path / "out").exists()


def test_gpu_train_on_a_machine_without_a_gpu_names_device_cpu_and_writes_where_asked(tmp_path):
    """torch is made to see no GPU (CUDA_VISIBLE_DEVICES empty), so that on a machine with one the train does not
    run."""
    res = run_script("gpu_train.sh", tmp_path, "rel", TMPDIR=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 1 and "set DEVICE=cpu" in res.stderr
    assert f"writing to {tmp_path / 'rel'}" in res.stdout and (tmp_path / "rel" / "train.log").is_file()
    assert not (REPO / "rel").exists()


def test_gpu_train_removes_its_probe_folder_when_the_probe_fails(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    res = run_script("gpu_train.sh", tmp_path, "out", DEVICE="cpu", DATA="no-such-data", TMPDIR=str(tmp))
    assert res.returncode == 1
    assert "no-such-data" in (tmp_path / "out" / "train.log").read_text()  # the caller's relative DATA, resolved
    assert list(tmp.iterdir()) == []  # the probe's mktemp folder was left on every failure
