"""moe-denoise bench: PyTorch vs ONNX Runtime vs TensorRT, parity-checked, interleaved, with warm-up.

Three presets: the full CPU run (default), ``--quick`` (under two minutes on a 2-core CPU: batches 1, 8, 64, no
torch.compile, fewer rounds) and ``--gpu`` (one command of under 8 minutes on a GPU machine: CUDA events,
compute-only and end-to-end, batches up to 4096). Explicit options override the preset's values.

This module is the only part of the benchmark that touches export/: it exports the ONNX graphs the chosen
backends need into a cache folder keyed by the weights' hash, and registers the Triton kernel for torch-triton.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from moe_base.errors import InputError, Interrupted

from . import HelpFormatter, add_weights_args, parity_count, path_arg, positive_int, resolve_weights, seconds, thread_count

PRESETS: dict[str, dict[str, Any]] = {
    "full": {"batches": (1, 8, 64, 256), "warmup": 3, "repeats": 20, "min_repeats": 3, "slot_target_s": 0.25,
             "max_inner": 20, "batch_budget_s": 90.0, "deadline_s": None, "parity_images": 16, "gemm_repeats": 10,
             "modes": ("e2e",), "out_dir": "results"},
    "quick": {"batches": (1, 8, 64), "warmup": 2, "repeats": 5, "min_repeats": 2, "slot_target_s": 0.1,
              "max_inner": 10, "batch_budget_s": 12.0, "deadline_s": 75.0, "parity_images": 8, "gemm_repeats": 5,
              "modes": ("e2e",), "out_dir": "results-quick"},
    "gpu": {"batches": (1, 8, 64, 256, 1024, 4096), "warmup": 5, "repeats": 15, "min_repeats": 3,
            "slot_target_s": 0.05, "max_inner": 50, "batch_budget_s": 40.0, "deadline_s": 360.0, "parity_images": 16,
            "gemm_repeats": 20, "modes": ("compute", "e2e"), "out_dir": "results-gpu"},
}


def _per_preset(key: str, fmt: str = "{}") -> str:
    """An option's defaults in each preset, for its help: '(default: 20; --quick 5, --gpu 15)'."""
    def show(v: Any) -> str:
        return "none" if v is None else ",".join(map(str, v)) if isinstance(v, tuple) else fmt.format(v)
    return (f"(default: {show(PRESETS['full'][key])}; --quick {show(PRESETS['quick'][key])}, "
            f"--gpu {show(PRESETS['gpu'][key])})")


def register(sub: argparse._SubParsersAction) -> None:
    from benchmarks.backends import ALL_BACKENDS, QUICK_BACKENDS

    p = sub.add_parser(
        "bench", help="benchmark the backends (parity-checked, interleaved, warmed up)",
        description="Checks every backend against the PyTorch reference (past half of --deadline, no more are "
                    "prepared: the rest is for timing), then times them interleaved (round robin, "
                    "rotating) after warm-up, over a batch sweep; writes results.json, results.md and results.png. "
                    f"Backends: {', '.join(ALL_BACKENDS)}. Unavailable ones are listed with the reason. --quick: "
                    f"{', '.join(QUICK_BACKENDS)} at batches 1,8,64 (torch.compile left out: it compiles for longer "
                    "than the quick budget). --gpu: the GPU backends with CUDA events, compute-only and end-to-end.",
        formatter_class=HelpFormatter)
    add_weights_args(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a quick look: under two minutes on a 2-core CPU")
    mode.add_argument("--gpu", action="store_true", help="the GPU run: CUDA events, compute-only + end-to-end, "
                                                          "batches up to 4096, a deadline of "
                                                          f"{PRESETS['gpu']['deadline_s']:.0f} s of timing")
    p.add_argument("--backends", default=None, help="comma-separated backend names, or 'all' (default: per preset)")
    p.add_argument("--batches", default=None, help="comma-separated batch sizes " + _per_preset("batches"))
    p.add_argument("--threads", type=thread_count, default=None,
                   help="CPU threads for torch and ONNX Runtime (default: the usable cores)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="interleaved rounds per batch size, at most " + _per_preset("repeats"))
    p.add_argument("--warmup", type=positive_int, default=None,
                   help="untimed warm-up calls per backend and batch size " + _per_preset("warmup"))
    p.add_argument("--parity-images", type=parity_count, default=None,
                   help="images in the parity check before timing " + _per_preset("parity_images"))
    p.add_argument("--batch-budget", type=seconds, default=None,
                   help="seconds of timing per batch size after which no new round starts "
                        + _per_preset("batch_budget_s", "{:g}"))
    p.add_argument("--deadline", type=seconds, default=None,
                   help="seconds from the command's start after which no new round or batch size starts (the last "
                        "round and the report follow; past half of it, no more backends are prepared) "
                        + _per_preset("deadline_s", "{:g}"))
    p.add_argument("--engine", action="append", default=[], metavar="NAME=PATH",
                   help="a TensorRT engine for a trt-* backend, e.g. trt-plugin-fp16=engines/x.engine (repeatable)")
    p.add_argument("--build-engines", action=argparse.BooleanOptionalAction, default=None,
                   help="build the trt-* engines not given with --engine (needs TensorRT and a GPU; default: on "
                        "with --gpu). Engines are cached, so a second run skips the builds")
    p.add_argument("--cache-dir", type=path_arg, default=None,
                   help="where the ONNX graphs (and engines) are exported to (default: $MOE_DENOISE_CACHE/bench, "
                        "the cache being ~/.cache/moe-denoise unless set)")
    p.add_argument("--out-dir", type=path_arg, default=None,
                   help="results folder (default: $MOE_DENOISE_CACHE/bench/results, results-quick with --quick, "
                        "results-gpu with --gpu; those committed with the moe-denoise source are in its benchmarks/results)")
    p.add_argument("--no-plot", action="store_true", help="skip results.png")
    p.add_argument("--json", action="store_true", help="print the results document as JSON instead of the table")
    p.set_defaults(func=run)


MAX_BENCH_BATCH = 65536  # tiles a call: 805 MB of input alone; 3,000,000 ended in a numpy MemoryError traceback


def _int_list(text: str, what: str) -> tuple[int, ...]:
    try:  # an empty item ('', '1,,8') was dropped in silence, and '' meant the preset's sizes
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers like 1,8,64; got {text!r}") from None
    if not values or any(v < 1 or v > MAX_BENCH_BATCH for v in values):
        raise InputError(f"{what} must be whole numbers from 1 to {MAX_BENCH_BATCH:,} like 1,8,64; got {text!r}")
    return values


def _engines(items: list[str]) -> dict[str, Path]:
    from benchmarks.backends import GPU_BACKENDS

    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.startswith("trt-") or name not in GPU_BACKENDS:
            trt = [b for b in GPU_BACKENDS if b.startswith("trt-")]
            raise InputError(f"--engine expects NAME=PATH with NAME one of {', '.join(trt)}; got {item!r}")
        if not Path(path).is_file():
            raise InputError(f"--engine {name}: {path} does not exist; build it with 'moe-denoise build'")
        out[name] = Path(path)
    return out


def settings_from_args(args: argparse.Namespace, preset: str) -> Any:
    """BenchSettings from the preset, overridden by explicit options."""
    from benchmarks.harness import BenchSettings

    p = dict(PRESETS[preset])
    p.pop("out_dir")
    if args.batches is not None:
        p["batches"] = _int_list(args.batches, "--batches")
    for opt, key in (("repeats", "repeats"), ("warmup", "warmup"), ("parity_images", "parity_images"),
                     ("batch_budget", "batch_budget_s"), ("deadline", "deadline_s")):
        if getattr(args, opt) is not None:
            p[key] = getattr(args, opt)
    if args.repeats is not None:
        p["min_repeats"] = min(p["min_repeats"], args.repeats)
    p["threads"] = args.threads if args.threads is not None else _usable_cores()
    if p["threads"] < 1:
        raise InputError(f"--threads must be >= 1, got {p['threads']}")
    settings = BenchSettings(**p)
    settings.validate()
    return settings


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def export_graphs(graphs: set[tuple[str, bool]], weights: Path, preset: str | None, cache: Path, threads: int | None,
                  log: Any, verify: bool = True) -> tuple[dict[tuple[str, bool], Path], dict[tuple[str, bool], str]]:
    """Export each needed graph into ``cache/<weights hash>/`` unless a matching one is there already.

    Returns ({graph: path}, {graph: why it is unavailable}): an export that fails makes its backends unavailable
    with the reason instead of ending the run.
    """
    paths: dict[tuple[str, bool], Path] = {}
    failed: dict[tuple[str, bool], str] = {}
    for flavor, optimize in sorted(graphs):
        try:
            paths[(flavor, optimize)] = export_graph(flavor, optimize, "fp32", weights, preset, cache, threads, log,
                                                     verify)
        except Exception as e:  # noqa: BLE001 - reported as the reason its backends are unavailable
            failed[(flavor, optimize)] = f"exporting the {flavor} graph failed: {type(e).__name__}: {e}"
            log(failed[(flavor, optimize)])
    return paths, failed


def export_graph(flavor: str, optimize: bool, precision: str, weights: Path, preset: str | None, cache: Path,
                 threads: int | None, log: Any, verify: bool = True) -> Path:
    """One ONNX graph in ``cache/<weights hash>/``: reused when its manifest matches, else exported (parity-gated)."""
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_base.fileio import sha256_file
    from moe_model.checkpoint import load_model

    suffix = ("" if optimize else ".noopt") + ("" if precision == "fp32" else f".{precision}")
    out = cache / sha256_file(weights)[:16] / f"moe_denoiser.{flavor}{suffix}.onnx"
    if _cached_graph_ok(out):
        log(f"ONNX graph (cached): {out}")
        return out
    log(f"exporting {out} ...")
    export_onnx(load_model(weights, preset=preset, verify=verify), out, ExportOptions(flavor=flavor, optimize=optimize,
                                                                       precision=precision),
                weights_path=weights, threads=threads, log=lambda s: None)
    return out


def build_engines(names: tuple[str, ...], given: dict[str, Path], weights: Path, preset: str | None, cache: Path,
                  batches: tuple[int, ...], log: Any, verify: bool = True) -> tuple[dict[str, Path], dict[str, str]]:
    """Build the engines of the trt-* backends in ``names`` that were not given, through export.engine. ``verify``
    False: their graphs are exported from weights whose sidecar hash is not checked (--skip-weights-check).

    Returns ({backend: engine}, {backend: why not}). Without TensorRT or a GPU every one gets that reason, so the
    GPU command still runs everything else. The profile covers the batch sweep (bigger batches are chunked).
    """
    wanted = [n for n in names if n.startswith("trt-") and n not in given]
    if not wanted:
        return {}, {}
    try:
        from export.engine import BuildOptions, build_engine, plan_build
        from moe_base.optional import require

        trt = require("tensorrt", "building TensorRT engines")
    except Exception as e:  # noqa: BLE001 - no TensorRT here: the reason goes into the report
        return {}, {n: f"cannot build an engine here: {type(e).__name__}: {e}" for n in wanted}
    built: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for name in wanted:
        flavor = "plugin" if "-plugin-" in name else "portable"
        precision = name.rsplit("-", 1)[-1]
        try:
            plan = plan_build(trt.__version__, precision)
            onnx = export_graph(flavor, True, plan.onnx_precision, weights, preset, cache, None, log, verify)
            out = onnx.with_name(f"{onnx.stem}.{precision}.engine")
            opts = BuildOptions(precision=precision, min_batch=1, max_batch=min(max(batches), 65536))
            log(f"building {out} (TensorRT {trt.__version__}) ...")
            built[name] = build_engine(onnx, out, opts, weights=weights, log=lambda s: None).path
        except Exception as e:  # noqa: BLE001 - this engine's backend becomes unavailable with the reason
            failed[name] = f"engine build failed: {type(e).__name__}: {e}"
            log(f"{name}: {failed[name]}")
    return built, failed


def _cached_graph_ok(path: Path) -> bool:
    """A cached graph is reused only if its manifest exists, its hash matches the file, and this version's graph
    writer wrote it (after an upgrade, the graph of an older writer was timed as this version's)."""
    from export.pipeline import EXPORTER
    from moe_base.manifest import check_artifact_file, read_manifest

    if not path.is_file():
        return False
    try:
        manifest = read_manifest(path)
        check_artifact_file(path, manifest)
    except Exception:  # noqa: BLE001 - any mismatch or damage: export it again
        return False
    return (manifest.get("versions") or {}).get("exporter") == EXPORTER


def _triton_status(names: tuple[str, ...]) -> str | None:
    """None if the Triton kernel is registered for torch-triton, else why not."""
    if "torch-triton" not in names:
        return None
    try:
        import topk_attention.torch_op  # noqa: F401 - registers impl="triton"
    except Exception as e:  # noqa: BLE001 - e.g. no triton, no CUDA
        return f"the Triton kernel could not be registered: {type(e).__name__}: {e}"
    return None


def choose_baseline(names: list[str], gpu_baseline: str, cpu_baseline: str, gpu: bool | None = None) -> str | None:
    """The backend the ratios are taken against: the GPU baseline when it is asked for and a GPU is here (``gpu``:
    None to ask torch), else the CPU baseline if asked for. A GPU baseline that could not run took every ratio with
    it, though the CPU baseline was timed beside it."""
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if gpu_baseline in names and (gpu or cpu_baseline not in names):
        return gpu_baseline
    return cpu_baseline if cpu_baseline in names else None


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    from benchmarks.backends import (
        CPU_BACKENDS,
        CPU_BASELINE,
        GPU_BASELINE,
        GPU_DEFAULT_BACKENDS,
        QUICK_BACKENDS,
        BackendInputs,
        build_specs,
        graphs_needed,
        parse_backends,
    )
    from benchmarks.flops import model_flops
    from benchmarks.harness import BenchmarkInterrupted, interrupt_reason, run_benchmark
    from moe_base.fileio import sha256_file
    from moe_base.paths import cache_dir
    from moe_model.checkpoint import load_model
    from runtime.torch_runner import TorchRunner

    preset = "quick" if args.quick else "gpu" if args.gpu else "full"
    settings = settings_from_args(args, preset)
    default = {"quick": QUICK_BACKENDS, "gpu": GPU_DEFAULT_BACKENDS, "full": CPU_BACKENDS}[preset]
    if args.backends is not None and not args.backends.strip(", "):  # an unset $BACKENDS ran the whole default set
        raise InputError(f"--backends {args.backends!r} names no backend; give comma-separated names or 'all', or leave "
                         f"--backends out for the preset's ({', '.join(default)})")
    names = parse_backends(args.backends, default)
    engines = _engines(args.engine)
    unused = sorted(set(engines) - set(names))
    if unused:
        raise InputError(f"--engine {', '.join(unused)}: {'that backend is' if len(unused) == 1 else 'those backends are'}"
                         f" not among the backends this run times ({', '.join(names)}); add "
                         f"{'it' if len(unused) == 1 else 'them'} to --backends, or leave the --engine out")
    if args.build_engines and not any(n.startswith("trt-") for n in names):  # it was ignored in silence
        raise InputError(f"--build-engines builds the engines of the trt-* backends, and this run times none "
                         f"({', '.join(names)}); add trt-* backends to --backends, or leave --build-engines out")
    out_dir = args.out_dir or cache_dir() / "bench" / PRESETS[preset]["out_dir"]
    work = args.cache_dir or cache_dir() / "bench"
    building = args.build_engines if args.build_engines is not None else preset == "gpu"
    check_folder(out_dir, "--out-dir", "the results (results.json, results.md, results.png)",  # before any work
                 given=args.out_dir is not None)
    if graphs_needed(names) or building:  # a run of torch backends alone exports nothing: its refusal named
        check_folder(work, "--cache-dir", "the ONNX graphs and engines", given=args.cache_dir is not None)  # a
        # --cache-dir never given, for files never written
    weights = resolve_weights(args.weights)
    log = _log
    verify = not args.skip_weights_check  # it was passed to nothing: the run was refused, naming this option
    model = load_model(weights, preset=args.preset, verify=verify)  # fails early, with the checkpoint's message
    onnx, onnx_failed = export_graphs(graphs_needed(names), weights, args.preset, work, settings.threads, log,
                                      verify)
    engine_failed: dict[str, str] = {}
    if building:
        built, engine_failed = build_engines(names, engines, weights, args.preset, work, settings.batches,
                                             log, verify)
        engines = {**engines, **built}
    inputs = BackendInputs(weights=weights, preset=args.preset, threads=settings.threads, verify=verify, onnx=onnx,
                           onnx_unavailable=onnx_failed, engines=engines, triton_unavailable=_triton_status(names))
    baseline = choose_baseline(names, GPU_BASELINE, CPU_BASELINE)
    specs = build_specs(names, inputs, baseline)
    for spec in specs:
        if spec.name in engine_failed:
            spec.unavailable = engine_failed[spec.name]
    reference = TorchRunner(weights, preset=args.preset, impl="masked", device="cpu", threads=settings.threads,
                            name="torch-masked (reference)", verify_weights=verify)
    interrupted = None
    try:
        doc = run_benchmark(
            specs, reference, settings, flops=model_flops(model.config).to_dict(),
            meta={"command": shlex.join(["moe-denoise", *getattr(args, "argv", sys.argv[1:])]), "mode": preset},
            model_info={"config": model.config.to_dict(), "weights": str(weights),
                        "weights_sha256": sha256_file(weights)},
            log=log, started_at=started)
    except BenchmarkInterrupted as e:  # a step limit or Ctrl-C: what was measured is written, not lost
        doc, interrupted = e.doc, e
        if not any(r["status"] == "ok" for r in doc["results"]):
            raise Interrupted.said(e, f"{interrupt_reason(e)} before any batch size was timed; nothing written "
                                      f"(results already in {out_dir} are as they were)") from None
    if preset == "quick":
        left_out = [n for n in CPU_BACKENDS if n not in names]
        doc["notes"].append(f"--quick mode: batches {list(settings.batches)}, at most {settings.repeats} rounds, "
                            f"backends left out: {', '.join(left_out) or 'none'}")
    timed = any(r["status"] == "ok" for r in doc["results"])
    keep = not timed and (out_dir / "results.json").exists()  # an earlier run's measurements are not replaced by
    # a run that measured nothing ('bench --gpu' without a GPU replaced results-gpu with one 'unavailable' row)
    try:
        written = [] if keep else write_results(doc, out_dir, plot=not args.no_plot, log=log)
    except KeyboardInterrupt as e:  # held while the files were written: they are whole, say so
        raise Interrupted.said(e, f"{interrupt_reason(e)} while the results were written; they were written whole, "
                                  f"in {out_dir}") from None
    if args.json:
        from moe_denoise.cli import print_json

        print_json(doc)
    else:
        from benchmarks.report import markdown_report

        print(markdown_report(doc))
        if written:
            print("wrote " + ", ".join(str(p) for p in written))
    if interrupted is not None:
        raise Interrupted.said(interrupted, f"{interrupt_reason(interrupted)}: a partial run; what was timed before "
                                            f"it is in {written[0]} (the rest is marked skipped); rerun the command "
                                            f"to measure every batch size")
    if not timed:  # a script must not read an empty table as success
        reasons = "; ".join(f"{b['name']}: {b['reason']}" for b in doc["backends"] if b.get("reason"))
        skipped = {r.get("reason") for r in doc["results"] if r["status"] == "skipped"}
        if not reasons and any("deadline" in (why or "") for why in skipped):  # every backend ready, none timed
            reasons = (f"--deadline {settings.deadline_s:g}s was reached before the first batch size was timed; it counts "
                       f"from the command's start, exports and the parity check included: raise it")
        kept = f"; nothing written: the results already in {out_dir} are as they were" if keep else ""
        log(f"moe-denoise bench: error: no backend was timed ({reasons or 'see the table'}){kept}")
        return 1
    return 0


def check_folder(folder: Path, option: str, holds: str, given: bool = True) -> None:
    """InputError unless ``folder`` is a folder (made when written to) that can be written to: found before any
    work, not after minutes of timing. ``given``: whether the user gave ``option``; the message of a default folder
    (in the cache folder) says so, and how to choose another."""
    from moe_base.fileio import check_output_file

    label = option if given else (f"{option} (not given: its default is in the cache folder; set MOE_DENOISE_CACHE "
                                  f"to a folder you can write to, or pass {option})")
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{label} '{folder}' is a file; {holds} go into a folder: give a folder path")
    try:
        check_output_file(folder / "results.json", overwrite=True)  # probes a file there (or where it would be made)
    except InputError as e:
        raise InputError(f"{label}: {e}") from None
    for name in RESULT_FILES if option == "--out-dir" else ():  # refused now, not after the timing
        if (folder / name).is_dir():
            raise InputError(f"{label}: '{folder / name}' is a folder, where this writes its {name}; move it away, "
                             f"or choose another {option}")


RESULT_FILES = ("results.json", "results.md", "results.png")


def write_results(doc: dict[str, Any], out_dir: Path, plot: bool = True, log: Any = print) -> list[Path]:
    """Validate the document, then write results.json, results.md and (with matplotlib) results.png, so that the
    three in ``out_dir`` always come from one run; a results.png of an earlier run that this one does not replace is
    removed (it was left beside the new numbers).

    All three are written whole into a hidden staging folder in ``out_dir`` first, and only then renamed into place:
    written one after the other, a write that failed (a full disk, a file size limit) left the new results.json and
    results.md beside the earlier run's results.png, under a message that said nothing was changed. A failure while
    staging now changes nothing there; one of the renames (which do not write data) names the files it already
    replaced. A staging folder that a killed run left is removed by the next run, and an --out-dir that this write
    made is removed again when nothing could be written into it.

    Ctrl-C and SIGTERM wait until the three are written: a stop while the plot was drawn lost the whole finished run,
    and one between two writes left a new results.json beside an earlier run's results.md and results.png."""
    import json

    from benchmarks.report import markdown_report, render_plot, validate_results
    from moe_base.errors import MissingBackendError, signals_held
    from moe_base.fileio import first_missing, not_written, publish_folder, remove_if_empty, staging_for_files

    validate_results(doc)
    with signals_held():
        png = None
        if plot:
            try:
                png = render_plot(doc)
            except MissingBackendError as e:
                log(f"plot skipped: {e}")
        contents = {"results.json": (json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n").encode(),
                    "results.md": markdown_report(doc).encode("utf-8", "surrogateescape")}  # a path's bytes as they
        # are: an --out-dir or --engine name that is not UTF-8 failed the whole run at its last step, nothing written
        if png is not None:
            contents["results.png"] = png
        made = first_missing(out_dir)
        try:
            with staging_for_files(out_dir, "results") as staging:
                for name, data in contents.items():
                    try:
                        _write_staged(staging / name, data, like=out_dir / name)
                    except OSError as e:
                        raise not_written(out_dir / name, e, "results") from e
                publish_folder(staging, out_dir, list(contents))
        except InputError:
            remove_if_empty(out_dir, made)  # an --out-dir this write made, left empty
            raise
        old_plot = out_dir / "results.png"
        if png is None and old_plot.is_file():
            old_plot.unlink()
            log(f"removed {old_plot}: it plotted an earlier run, and this one drew no plot")
    return [out_dir / name for name in contents]


def _write_staged(path: Path, data: bytes, like: Path) -> None:
    """Write ``data`` to the new file ``path`` and flush it to the disk, with the permissions of the file ``like``
    that it will replace when there is one (a private results file stays private, as atomic_write keeps them)."""
    with open(path, "xb") as f:
        with contextlib.suppress(OSError):  # nothing to replace (or it cannot be read): the usual permissions
            os.fchmod(f.fileno(), os.stat(like).st_mode & 0o7777)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
