"""moe-denoise bench --quick through the CLI on a tiny sweep: exports, parity, timing, the three result files."""
import json

import pytest

from benchmarks.backends import QUICK_BACKENDS
from benchmarks.report import validate_results
from moe_base.errors import InputError
from moe_denoise.cli import main

pytest.importorskip("onnxruntime", reason="the quick benchmark's ONNX Runtime backends need the 'onnx' extra")


@pytest.fixture
def restore_torch_threads():
    """The bench sets torch's global thread count; give the rest of the test session its setting back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_quick_bench_on_a_tiny_sweep(capsys, random_weights, tmp_path, restore_torch_threads):
    out_dir = tmp_path / "results"
    code = main(["bench", "--quick", "--weights", str(random_weights), "--batches", "1,2", "--repeats", "2",
                 "--warmup", "1", "--parity-images", "4", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
                 "--out-dir", str(out_dir), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "reference: torch-masked; parity on 4 images" in err  # it said 'torch-masked (reference)' after 'reference:'

    printed = json.loads(out)
    on_disk = json.loads((out_dir / "results.json").read_text())
    validate_results(on_disk)
    assert printed["results"] == on_disk["results"]
    assert on_disk["mode"] == "quick" and on_disk["baseline"] == "torch-seed"
    assert on_disk["command"].startswith("moe-denoise bench --quick")
    assert [b["name"] for b in on_disk["backends"]] == list(QUICK_BACKENDS)
    for b in on_disk["backends"]:
        assert b["status"] == "ok", (b["name"], b["reason"])
        assert b["parity"]["passed"] and b["cold_start"]["activate_ms"] > 0
    cells = {(r["backend"], r["batch"]) for r in on_disk["results"] if r["status"] == "ok"}
    assert cells == {(n, b) for n in QUICK_BACKENDS for b in (1, 2)}
    base = [r for r in on_disk["results"] if r["backend"] == "torch-seed"]
    assert all(r["ratio_vs_baseline"] == {"throughput": 1.0, "latency_p50": 1.0} for r in base)
    assert on_disk["compute_peak"]["cpu"]["gflops"] > 0
    assert abs(on_disk["model"]["flops_per_image"]["total"] / 1e6 - 86.7) < 0.3
    assert on_disk["environment"]["threads"]["requested"] == 1
    assert any("--quick mode" in n and "torch-compile" in n for n in on_disk["notes"])

    md = (out_dir / "results.md").read_text()
    assert "| backend | batch 1 | batch 2 |" in md and "torch-seed (baseline)" in md
    png = out_dir / "results.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists() and "plot skipped" in err
    else:
        assert png.read_bytes()[:4] == b"\x89PNG"

    # a second run reuses the exported graphs instead of exporting again
    code = main(["bench", "--quick", "--weights", str(random_weights), "--batches", "1", "--repeats", "1",
                 "--warmup", "1", "--parity-images", "2", "--threads", "1", "--backends", "torch-seed,ort-cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "again"), "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "ONNX graph (cached)" in err and "exporting" not in err
    assert "| backend | batch 1 |" in out and not (tmp_path / "again" / "results.png").exists()
    # again into the first run's folder, without a plot: the first run's results.png is not left beside new numbers
    code = main(["bench", "--quick", "--weights", str(random_weights), "--batches", "1", "--repeats", "1",
                 "--warmup", "1", "--parity-images", "2", "--threads", "1", "--backends", "torch-seed,ort-cpu",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out_dir), "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 0 and not png.exists(), err


def test_bench_rejects_bad_options_clearly(capsys, random_weights, tmp_path):
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed,tf-lite",
                 "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown backend" in err and "choose from" in err and "Traceback" not in err
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "", "--out-dir", str(tmp_path)])
    assert code == 2 and "--backends '' names no backend" in capsys.readouterr().err  # it ran the default set
    code = main(["bench", "--weights", str(random_weights), "--batches", "1,x", "--out-dir", str(tmp_path)])
    assert code == 2 and "--batches must be comma-separated integers" in capsys.readouterr().err
    # a huge batch ended in a numpy MemoryError traceback after the parity step; '' ran the preset's sizes and
    # '1,,8' dropped the empty item, in silence
    for batches in ("3000000", "", "1,,8"):
        code = main(["bench", "--weights", str(random_weights), "--batches", batches, "--out-dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and "--batches must be" in err and "Traceback" not in err, (batches, err)
    code = main(["bench", "--weights", str(random_weights), "--engine", "trt-plugin-fp16=/nonexistent.engine",
                 "--out-dir", str(tmp_path)])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"an engine")
    code = main(["bench", "--quick", "--weights", str(random_weights), "--engine", f"trt-plugin-fp16={engine}",
                 "--out-dir", str(tmp_path)])  # --quick times no trt-* backend: the engine would be ignored
    assert code == 2 and "not among the backends this run times" in capsys.readouterr().err
    code = main(["bench", "--quick", "--weights", str(random_weights), "--build-engines", "--out-dir", str(tmp_path)])
    assert code == 2 and "--build-engines builds the engines of the trt-* backends, and this run times none" in \
        capsys.readouterr().err  # it was ignored in silence
    assert not (tmp_path / "results.json").exists()


def test_bench_checks_its_folders_before_any_work_and_fails_when_nothing_was_timed(capsys, random_weights, tmp_path,
                                                                                    monkeypatch):
    """An --out-dir or --cache-dir that is a file was found only after every backend had been timed (the table lost);
    a run that timed nothing wrote an empty table and exited 0, which a script reads as success."""
    import benchmarks.harness

    def no_timing(*args, **kwargs):
        raise AssertionError("timed before the folders were checked")

    note = tmp_path / "notes.txt"
    note.write_text("mine")
    monkeypatch.setattr(benchmarks.harness, "run_benchmark", no_timing)
    for option in ("--out-dir", "--cache-dir"):
        code = main(["bench", "--quick", "--weights", str(random_weights), option, str(note)])
        assert code == 2 and f"{option} '{note}' is a file" in capsys.readouterr().err
    assert note.read_text() == "mine"
    (tmp_path / "out" / "results.png").mkdir(parents=True)  # someone's folder where the plot goes: it was removed
    (tmp_path / "out" / "results.png" / "mine.txt").write_text("mine")  # with all it held, after the timing
    code = main(["bench", "--quick", "--weights", str(random_weights), "--out-dir", str(tmp_path / "out")])
    assert code == 2 and f"'{tmp_path / 'out' / 'results.png'}' is a folder, where this writes its results.png" in \
        capsys.readouterr().err
    assert (tmp_path / "out" / "results.png" / "mine.txt").read_text() == "mine"
    monkeypatch.undo()
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "trt-plugin-fp32",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "r"), "--no-plot"])
    out, err = capsys.readouterr()
    assert code == 1 and "error: no backend was timed (trt-plugin-fp32: no engine given" in err
    assert "trt-plugin-fp32" in out and (tmp_path / "r" / "results.json").is_file()  # the reasons are still written
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()}
    (tmp_path / "r" / "results.json").write_text('{"an earlier run": "with its measurements"}')
    earlier["results.json"] = (tmp_path / "r" / "results.json").read_bytes()
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "trt-plugin-fp32",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "r"), "--no-plot"])
    out, err = capsys.readouterr()  # a run that measured nothing replaced them ('bench --gpu' without a GPU)
    assert code == 1 and f"nothing written: the results already in {tmp_path / 'r'} are as they were" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir()} == earlier and "wrote" not in out


def test_reliability_bench_interrupted(capsys, random_weights, tmp_path, monkeypatch, restore_torch_threads):
    """bench stopped by SIGTERM (a GPU session's step limit) or Ctrl-C during the timing, which lost every number it
    had measured (the results were written only at the end) => the batch sizes timed are written (the one in progress
    with its complete rounds, the later ones marked skipped) and the command exits 143 (130) saying where; stopped
    before any batch size was timed, nothing is written and an earlier run's results in --out-dir are left as they
    were"""
    import benchmarks.harness
    from moe_base.errors import Interrupted

    real = benchmarks.harness.time_batch
    batches_started = []

    def stopped_at(n, signum):
        def time_batch(cells, *args, **kwargs):
            batches_started.append(len(cells))
            if len(batches_started) == n:
                raise Interrupted("", signum)
            return real(cells, *args, **kwargs)
        return time_batch

    out_dir = tmp_path / "results"
    argv = ["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed", "--batches", "1,2",
            "--repeats", "1", "--warmup", "1", "--parity-images", "2", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out_dir), "--no-plot"]
    monkeypatch.setattr(benchmarks.harness, "time_batch", stopped_at(2, 15))
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 143, err
    doc = json.loads((out_dir / "results.json").read_text())
    validate_results(doc)
    status = {r["batch"]: (r["status"], r["reason"]) for r in doc["results"]}
    assert status == {1: ("ok", None), 2: ("skipped", "stopped by SIGTERM")}
    assert f"stopped by SIGTERM: a partial run; what was timed before it is in {out_dir / 'results.json'}" in err
    assert "| backend | batch 1 | batch 2 |" in out and (out_dir / "results.md").is_file()

    before = (out_dir / "results.json").read_bytes()
    batches_started.clear()
    monkeypatch.setattr(benchmarks.harness, "time_batch", stopped_at(1, 2))
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 130 and "interrupted (Ctrl-C) before any batch size was timed; nothing written" in err
    assert (out_dir / "results.json").read_bytes() == before


def test_reliability_bench_stopped_while_writing(capsys, random_weights, tmp_path, monkeypatch, restore_torch_threads):
    """bench stopped by SIGTERM after the timing, while its results were written: a stop while the plot was drawn lost
    the whole finished run (nothing written), and one between two writes left the new results.json beside an earlier
    run's results.md and results.png => the stop waits for the three files, which all come from this run, and the
    command exits 143 saying they were written"""
    import signal

    import benchmarks.report
    from moe_denoise.commands import bench

    out_dir = tmp_path / "results"
    argv = ["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed", "--batches", "1",
            "--repeats", "1", "--warmup", "1", "--parity-images", "2", "--threads", "1",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out_dir)]
    out_dir.mkdir()
    for name in ("results.json", "results.md", "results.png"):
        (out_dir / name).write_text("an earlier run")

    def stopped_while_drawn(doc):
        signal.raise_signal(signal.SIGTERM)
        return b"\x89PNG drawn"

    monkeypatch.setattr(benchmarks.report, "render_plot", stopped_while_drawn)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM while the results were written; they were written whole" in err
    doc = json.loads((out_dir / "results.json").read_text())
    assert [r["status"] for r in doc["results"]] == ["ok"]
    assert "| torch-seed (baseline) |" in (out_dir / "results.md").read_text()
    assert (out_dir / "results.png").read_bytes() == b"\x89PNG drawn"

    real = bench._write_staged

    def stopped_between(path, data, *args, **kwargs):
        if path.name == "results.md":
            signal.raise_signal(signal.SIGTERM)
        return real(path, data, *args, **kwargs)

    monkeypatch.setattr(benchmarks.report, "render_plot", lambda doc: b"\x89PNG second")
    monkeypatch.setattr(bench, "_write_staged", stopped_between)
    assert main(argv + ["--repeats", "2"]) == 143
    capsys.readouterr()
    assert json.loads((out_dir / "results.json").read_text())["settings"]["repeats"] == 2
    assert "up to 2 interleaved rounds" in (out_dir / "results.md").read_text()
    assert (out_dir / "results.png").read_bytes() == b"\x89PNG second"


def test_reliability_bench_write_that_fails(capsys, random_weights, tmp_path, monkeypatch, restore_torch_threads):
    """bench whose results cannot all be written (the disk fills up, or a file size limit, while results.png is
    written), which left the new results.json and results.md beside the earlier run's results.png under a message
    that said nothing was changed, and left a new --out-dir behind => exit 2 naming the file and the reason; the
    earlier run's three files are unchanged and no temporary is left; a new --out-dir is removed again; a failure
    while the files are moved into place names the ones already replaced"""
    import errno
    import os

    import benchmarks.report
    from moe_denoise.commands.bench import write_results

    def full_disk_at(name):
        real = os.fsync

        def fsync(fd):  # the file being flushed, whatever its temporary name
            if name in os.path.basename(os.readlink(f"/proc/self/fd/{fd}")):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)
        return fsync

    out_dir = tmp_path / "results"
    monkeypatch.setattr(benchmarks.report, "render_plot", lambda doc: b"\x89PNG first")
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed", "--batches", "1",
                 "--repeats", "1", "--warmup", "1", "--parity-images", "2", "--threads", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out_dir)])
    assert code == 0, capsys.readouterr().err
    names = ["results.json", "results.md", "results.png"]
    first = {name: (out_dir / name).read_bytes() for name in names}
    doc = json.loads(first["results.json"])
    doc["notes"].append("the second run")
    monkeypatch.setattr(benchmarks.report, "render_plot", lambda doc: b"\x89PNG second")

    monkeypatch.setattr(os, "fsync", full_disk_at("results.png"))
    with pytest.raises(InputError, match=f"writing {out_dir / 'results.png'} failed \\(No space left on device\\); "
                                         f"nothing in {out_dir} was changed"):
        write_results(doc, out_dir)
    assert {name: (out_dir / name).read_bytes() for name in names} == first
    assert sorted(p.name for p in out_dir.iterdir()) == names  # no temporary left

    monkeypatch.setattr(os, "fsync", full_disk_at("results.json"))
    with pytest.raises(InputError, match="No space left on device"):
        write_results(doc, tmp_path / "new" / "dir")
    assert not (tmp_path / "new").exists()

    monkeypatch.undo()
    monkeypatch.setattr(benchmarks.report, "render_plot", lambda doc: b"\x89PNG second")
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("results.md"):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(InputError, match="already replaced: results.json;"):
        write_results(doc, out_dir)
    assert (out_dir / "results.md").read_bytes() == first["results.md"]
    assert sorted(p.name for p in out_dir.iterdir()) == names


def test_bench_skip_weights_check_runs_edited_weights(capsys, random_weights, tmp_path, restore_torch_threads):
    """bench --skip-weights-check was passed to nothing: weights whose sidecar records another sha256 were refused,
    by a message that named --skip-weights-check."""
    import json
    import shutil

    edited = tmp_path / "edited.safetensors"
    shutil.copy(random_weights, edited)
    side = json.loads(random_weights.with_suffix(".json").read_text())
    edited.with_suffix(".json").write_text(json.dumps({**side, "sha256": "0" * 64}))
    argv = ["bench", "--quick", "--weights", str(edited), "--batches", "1", "--repeats", "1", "--warmup", "1",
            "--parity-images", "2", "--threads", "1", "--backends", "torch-seed,torch-masked", "--no-plot",
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out")]
    assert main(argv) == 2 and "--skip-weights-check" in capsys.readouterr().err
    code = main([*argv, "--skip-weights-check"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "results.json").is_file()


def test_a_deadline_reached_before_any_timing_is_named_as_the_cause(capsys, random_weights, tmp_path,
                                                                    restore_torch_threads):
    """--deadline shorter than the setup (exports, parity) ended with 'no backend was timed (see the table)', the
    table saying 'skipped' in every cell: the deadline, which counts from the command's start, is now named."""
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed", "--batches", "1",
                 "--repeats", "1", "--warmup", "1", "--parity-images", "2", "--threads", "1", "--deadline", "0.001",
                 "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "r"), "--no-plot"])
    err = capsys.readouterr().err
    assert code == 1 and "no backend was timed (--deadline 0.001s was reached before the first batch size" in err
    assert "raise it" in err


def test_bench_of_torch_backends_needs_no_cache_folder_and_takes_a_folder_name_that_is_not_utf8(
        capsys, random_weights, tmp_path, monkeypatch, restore_torch_threads):
    """Two refusals of a good run: with a cache folder that cannot be written (HOME read-only), a run of torch
    backends alone, which exports nothing, was refused for '--cache-dir', an option never given; and an --out-dir
    whose name is not UTF-8 (an old archive's folder) failed the whole run at its last step, nothing written
    (results.md holds the command line, and its text was encoded strictly). A default folder that cannot be written
    is said as one, with MOE_DENOISE_CACHE."""
    import os

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MOE_DENOISE_CACHE", str(blocker / "cache"))
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "ort-cpu", "--batches", "1",
                 "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "--cache-dir (not given: its default is in the cache folder; set MOE_DENOISE_CACHE" in err

    out_dir = tmp_path / os.fsdecode(b"r\xe9sultats")
    code = main(["bench", "--quick", "--weights", str(random_weights), "--backends", "torch-seed", "--batches", "1",
                 "--repeats", "1", "--warmup", "1", "--parity-images", "2", "--threads", "1", "--no-plot",
                 "--out-dir", str(out_dir), "--json"])  # (its table on stdout holds the name's bytes too: capsys
    out, err = capsys.readouterr()  # cannot decode them)
    assert code == 0, err
    assert b"r\xe9sultats" in (out_dir / "results.md").read_bytes()
    assert str(out_dir) in json.loads((out_dir / "results.json").read_text())["command"] == json.loads(out)["command"]


def test_a_cached_graph_of_an_older_graph_writer_is_exported_again(random_weights, tmp_path):
    """bench reused a cached graph whenever its manifest matched the file: after an upgrade it timed the graph an
    older version wrote (one that an empty batch stops in ONNX Runtime) as this version's."""
    from export.pipeline import EXPORTER, export_onnx
    from moe_base.manifest import manifest_path
    from moe_denoise.commands.bench import _cached_graph_ok
    from moe_model.checkpoint import load_model

    path = tmp_path / "moe_denoiser.portable.onnx"
    export_onnx(load_model(random_weights), path, parity_images=2, weights_path=random_weights, log=lambda s: None)
    assert _cached_graph_ok(path)
    manifest = json.loads(manifest_path(path).read_text())
    assert manifest["versions"]["exporter"] == EXPORTER
    manifest["versions"]["exporter"] = "moe-denoise onnx writer 1"
    manifest_path(path).write_text(json.dumps(manifest))
    assert not _cached_graph_ok(path)
