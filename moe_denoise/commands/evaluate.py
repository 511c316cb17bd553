"""moe-denoise evaluate: PSNR / SSIM across noise levels (CIFAR-10 and whole photos), or at one sigma (--sigma)."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import time
from pathlib import Path
from typing import Any

from moe_base.errors import InputError, ToolkitError, repeated
from moe_base.progress import progress_mode

from . import (
    DEFAULT_DATA_DIR,
    HelpFormatter,
    add_data_args,
    add_split_arg,
    level_255,
    noise_std,
    path_arg,
    positive_int,
    resolve_weights,
    seed_number,
    thread_count,
    whole,
)

SUITES = ("cifar", "photos", "all")
# moe_model.evaluate.DEFAULT_SIGMAS_255, written out: importing it imports torch (seconds, for --help)
DEFAULT_SIGMAS_255 = (0, 5, 15, 25, 50, 75)
BM3D_IMAGES = 16
EVAL_SEED, BATCH_SIZE = 1234, 256


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="PSNR / SSIM across noise levels (CIFAR-10, photos), against BM3D and other weights",
        description="Default: the across-noise-level report. Every --weights (several allowed, with --label and "
                    "--preset per weights) is scored on the CIFAR-10 split at every --sigmas level (0-255 scale; 0 = "
                    "the clean image itself) under the clipped (clamp(x + sigma N, 0, 1)) and unclipped (x + sigma N) "
                    "protocols, with the noisy input and BM3D (on --bm3d-images evenly spaced images, told the true "
                    "sigma) as reference rows, the seed protocol (sigma 0.2, clipped) and the project's quality targets. "
                    "--suite photos/all does the same on whole photos (scikit-image samples, tiled, clipped noise) "
                    "with the best Gaussian blur as a further baseline. --sigma S gives the one-level table of "
                    "earlier versions (the seed's report: --sigma 0.2). Per-image PSNR and SSIM (data_range 1, "
                    "scikit-image), mean over images; the noise is fixed by --eval-seed / --photo-seed.",
        formatter_class=HelpFormatter)
    p.add_argument("--weights", type=path_arg, action="append", default=None,
                   help="weights (.safetensors with its .json, or a PyTorch .pt state dict); repeat to compare "
                        "several; shipped weights by name too ('blind', 'sigma20'); default: the shipped default (blind)")
    p.add_argument("--preset", action="append", default=None,
                   help="architecture preset for weights without a JSON sidecar (e.g. 'seed'); once for one "
                        "--weights, else once per --weights in order ('auto' = read the sidecar)")
    p.add_argument("--label", action="append", default=None,
                   help="name of each --weights in the report, once per --weights in order; default: the name of "
                        "shipped weights (blind, sigma20; blind with no --weights), else the file name")
    p.add_argument("--skip-weights-check", action="store_true",
                   help="use weights whose sha256 differs from the one their JSON sidecar records (damaged or "
                        "edited files are refused without it)")
    add_data_args(p)
    add_split_arg(p)
    p.add_argument("--sigma", type=noise_std, default=None,
                   help="one noise level (std on [0, 1] pixels, or levels of 255 such as 51/255): the single-sigma table "
                        "of earlier versions (--sigma 0.2 is the seed's report) instead of the across-sigma report")
    p.add_argument("--sigmas", type=level_255, nargs="+", default=list(DEFAULT_SIGMAS_255),
                   help="noise levels of the across-sigma report, on the 0-255 scale (std sigma/255 on [0, 1])")
    p.add_argument("--protocol", default="both", choices=["clip", "unclipped", "both"],
                   help="noise clipped to [0, 1] (clamp(x + sigma N, 0, 1), as photos are saved), not clipped, or both")
    p.add_argument("--eval-seed", type=seed_number, default=EVAL_SEED, help="seed of the fixed noise on the CIFAR-10 images")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images of the split")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help="images per inference call")
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM")
    p.add_argument("--suite", default="cifar", choices=SUITES,
                   help="across-sigma report on CIFAR-10, on whole photos, or both")
    p.add_argument("--bm3d-images", type=whole, default=BM3D_IMAGES,
                   help="CIFAR-10 images BM3D runs on (evenly spaced over the split; about 2 s per image and level "
                        "on one CPU core); 0 = no BM3D")
    p.add_argument("--photos", nargs="+", default=None,
                   help="scikit-image sample photos (skimage.data names); default: astronaut chelsea coffee "
                        "(colour) camera moon (gray)")
    p.add_argument("--bm3d-photos", nargs="+", default=None,
                   help="photos BM3D runs on (about 15-40 s per photo and level); 'none' = no BM3D; default: "
                        "camera chelsea")
    p.add_argument("--photo-seed", type=seed_number, default=0, help="seed of the photos' noise")
    p.add_argument("--no-guard", action="store_true",
                   help="photos: score each weights only as they are, without the extra '<label> + guard' row (the "
                        "clean-input guard that 'moe-denoise denoise' applies by default)")
    p.add_argument("--plot", type=path_arg, default=None, help="write a PNG of PSNR against sigma here (needs "
                                                           "matplotlib: the 'plot' extra)")
    p.add_argument("--save-json", type=path_arg, default=None, help="also write the JSON report to this file")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --plot / --save-json files (never done without it)")
    p.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.set_defaults(func=run)


# --- arguments -----------------------------------------------------------------------------------------------------
def _per_weights(values: list[str] | None, n: int, option: str) -> list[str | None]:
    if not values:
        return [None] * n
    if len(values) == n:
        return list(values)
    auto = " (use 'auto' for a preset read from the sidecar)" if option == "--preset" else ""
    times = "once" if len(values) == 1 else f"{len(values)} times"  # 'given 1 times'
    raise InputError(f"{option} was given {times} for {n} --weights; give it once per --weights, "
                     f"in the same order{auto}")


def weights_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """(label, path, preset) of every model asked for, checked before anything is loaded."""
    from weights import SHIPPED

    paths = args.weights or [None]
    presets = _per_weights(args.preset, len(paths), "--preset")
    labels = _per_weights(args.label, len(paths), "--label")
    specs = []
    for path, preset, label in zip(paths, presets, labels):
        resolved = resolve_weights(path)
        # shipped weights are labelled by the name the user gave ('--weights blind' was labelled moe_denoiser)
        name = "blind" if path is None else str(path)
        default_label = name if SHIPPED.get(name) == resolved else resolved.stem
        specs.append({"label": label or default_label, "path": str(resolved),
                      "preset": None if preset in (None, "auto") else preset})
    names = [s["label"] for s in specs]
    dupes = repeated(names)
    if dupes:
        raise InputError(f"two --weights would share the label(s) {dupes}; name each with --label")
    from benchmarks.quality import BLUR, guarded_label
    from moe_model.evaluate import BM3D, NOISY

    # before any work (a reserved label was refused after the CIFAR-10 part), and a label that is another's
    # '<label> + guard' row, which took that row's place in the photo table with the other model's numbers
    clash = [n for n in names if n in (NOISY, BM3D, BLUR) or any(n == guarded_label(m) for m in names)]
    if clash:
        raise InputError(f"the label(s) {clash} name rows of the report (the references {NOISY!r}, {BM3D!r} and "
                         f"{BLUR!r}, and '<label> + guard' for each model with the clean-input guard); choose other "
                         f"--label names")
    return specs


def _check_outputs(args: argparse.Namespace) -> None:
    """--plot and --save-json, before any work: files that can be written, replaced only with --overwrite (a run
    of minutes lost at the end to an unwritable path, or a file replaced in silence, was what happened)."""
    from moe_base.fileio import check_output_file

    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise InputError(f"--plot writes a PNG image; give a path ending in .png (got '{args.plot}')")
    if args.plot is not None:  # found after the whole run, which was then lost (table, JSON and all)
        from moe_base.optional import require

        require("matplotlib", "--plot")
    inputs = {}  # what the run reads: '--save-json x.json --overwrite' beside x.safetensors replaced its sidecar
    for given in args.weights or [None]:  # None: the shipped default, whose sidecar is as easily named
        try:
            path = resolve_weights(given)
        except ToolkitError:  # said where the weights are loaded, in its turn
            continue
        if path.is_file():
            inputs.update({path.resolve(): "the weights file", path.with_suffix(".json").resolve():
                           f"the sidecar of the weights {path.name} (their architecture and record)"})
    def real(path: Path) -> Path:  # Path.resolve() raised RuntimeError on a loop of links (a traceback); said below
        return Path(os.path.realpath(path))

    if args.plot is not None and args.save_json is not None and real(args.plot) == real(args.save_json):
        raise InputError(f"--plot and --save-json both name '{args.plot}'; give two paths")
    for option, path in (("--plot", args.plot), ("--save-json", args.save_json)):
        if path is not None and real(path) in inputs:
            raise InputError(f"{option} '{path}' is {inputs[real(path)]}, which this run reads: writing there "
                             f"would destroy it. Give another path")
        if path is not None:
            try:
                check_output_file(path, args.overwrite)
            except InputError as e:
                raise InputError(f"{option}: {e}") from None


def _check_args(args: argparse.Namespace) -> None:
    _check_outputs(args)
    if args.bm3d_images < 0:
        raise InputError(f"--bm3d-images must be >= 0 (got {args.bm3d_images}); 0 leaves BM3D out")
    bad = [s for s in args.sigmas if not (math.isfinite(s) and 0 <= s <= 255)]
    if bad:  # 300 ran for minutes: noise with a std of 1.2 times the whole range of the pixels
        raise InputError(f"--sigmas takes noise levels from 0 to 255 on the 0-255 scale (got "
                         f"{' '.join(f'{s:g}' for s in bad)}); e.g. --sigmas 0 15 25")
    tiny = [s for s in args.sigmas if 0 < s < 1]
    if tiny:  # [0, 1]-pixel levels given where 0-255 ones are meant: minutes of BM3D on noise under one 8-bit step
        given = " ".join(f"{s:g}" for s in tiny)
        meant = [f"{s * 255:.6g}" for s in tiny if s * 255 >= 1]  # 1e-9 was told to write 2.55e-07, refused in turn
        advice = (f"for noise std {given} on [0, 1] pixels write --sigmas {' '.join(meant)}" if len(meant) == len(tiny)
                  else "give levels from 1 to 255 (0: clean input, no noise)")
        raise InputError(f"--sigmas takes noise levels on the 0-255 scale, and {given} "
                         f"{'is' if len(tiny) == 1 else 'are'} under one level of 255; {advice}")
    args.sigmas = [abs(s) for s in args.sigmas]  # -0 was reported as 'sigma -0' (--sigma takes it as 0 already)
    from moe_model.evaluate import sigma_key

    twice = repeated([sigma_key(s) for s in args.sigmas])  # 25 and 25.0000001 shared the report's key '25'
    if twice:
        raise InputError(f"--sigmas names {' '.join(twice)} more than once (levels are told apart to 6 significant "
                         f"digits); give each level once")
    if args.bm3d_photos:  # 'camera camera' was taken; 'none camera' refused as 'none' not being a photo evaluated
        lowered = [n.lower() for n in args.bm3d_photos]
        if "none" in lowered and len(lowered) > 1:
            raise InputError(f"--bm3d-photos {' '.join(args.bm3d_photos)}: 'none' (no BM3D on the photos) stands "
                             f"alone; give it or photo names")
        if repeated(args.bm3d_photos):
            raise InputError(f"--bm3d-photos names {', '.join(repeated(args.bm3d_photos))} more than once; give each "
                             f"photo once")
    if any(label is not None and not label.strip() for label in args.label or []):  # '' became the default label
        raise InputError("--label is empty; give each --weights a name, or leave --label out for the default")
    if args.suite == "cifar" and (args.photos or args.bm3d_photos or args.no_guard or args.photo_seed != 0):
        raise InputError("--photos, --bm3d-photos, --photo-seed and --no-guard are about the photos of --suite photos "
                         "or --suite all; add one of those (the default suite is cifar)")
    if args.suite == "photos" and args.limit is not None:
        raise InputError("--limit takes the first N CIFAR-10 images, and --suite photos scores no CIFAR-10 image: use "
                         "--photos NAME ... to score fewer photos, or --suite all")
    if args.suite == "photos":  # each was ignored in silence
        cifar_only = [o for o, given in (("--bm3d-images", args.bm3d_images != BM3D_IMAGES),
                                         ("--split", args.split != "test"), ("--eval-seed", args.eval_seed != EVAL_SEED),
                                         ("--batch-size", args.batch_size != BATCH_SIZE),
                                         ("--protocol", args.protocol != "both"),  # photos: always clipped, as saved
                                         ("--data-dir", Path(args.data_dir) != Path(DEFAULT_DATA_DIR))) if given]
        if cifar_only:
            raise InputError(f"{', '.join(cifar_only)} {'is' if len(cifar_only) == 1 else 'are'} about the CIFAR-10 "
                             f"images, and --suite photos scores none: leave {'it' if len(cifar_only) == 1 else 'them'} "
                             f"out, or use --suite all (the photos' options: --photos, --bm3d-photos, --photo-seed)")
    if args.sigma is not None:
        other = [o for o, given in (("--plot", args.plot), ("--suite photos/all", args.suite != "cifar"),
                                    ("--photos", args.photos), ("--bm3d-photos", args.bm3d_photos),
                                    ("--sigmas", list(args.sigmas) != list(DEFAULT_SIGMAS_255)),
                                    ("--bm3d-images", args.bm3d_images != BM3D_IMAGES)) if given]
        if other:
            raise InputError(f"--sigma gives the single-level table and cannot be combined with {', '.join(other)}; "
                             f"leave --sigma out for the across-sigma report")


def _bm3d_photos(args: argparse.Namespace, photos: list[str]) -> list[str]:
    from benchmarks.quality import DEFAULT_BM3D_PHOTOS

    if args.bm3d_photos is None:
        return [n for n in DEFAULT_BM3D_PHOTOS if n in photos]
    if [n.lower() for n in args.bm3d_photos] == ["none"]:
        return []
    return list(args.bm3d_photos)


def _emit(args: argparse.Namespace, report: Any, text: str, plot_png: bytes | None = None) -> None:
    """Print the report, then write --plot and --save-json: a file that cannot be written (one that appeared during
    the run, without --overwrite) then loses nothing, since the results are on the screen already; and a screen that
    cannot be written (the reader of a pipe gone: '| head' of a 115 KB JSON, or /dev/full) loses no file."""
    from moe_denoise.cli import json_safe, print_json

    safe = json_safe(report)
    try:
        if args.json:
            print_json(safe)
        else:
            print(text)
    except OSError as e:  # BrokenPipeError among them: the files first, then the command says what failed
        _write_outputs(args, safe, plot_png, quiet=True)
        raise e from None
    _write_outputs(args, safe, plot_png, quiet=args.json)


def _write_outputs(args: argparse.Namespace, safe: Any, plot_png: bytes | None, quiet: bool) -> None:
    from moe_base.fileio import atomic_write, atomic_write_json

    writes = []  # (what, path, write it)
    if args.plot is not None and plot_png is not None:
        writes.append(("plot", args.plot, lambda: atomic_write(args.plot, plot_png, overwrite=args.overwrite)))
    if args.save_json is not None:
        writes.append(("JSON report", args.save_json,
                       lambda: atomic_write_json(args.save_json, safe, overwrite=args.overwrite)))
    problems, written = [], []
    for what, path, write in writes:  # all written before any is said: a reader gone ('| head -1') after the first
        try:  # line lost the JSON report
            write()
        except InputError as e:
            problems.append(str(e))
            continue
        written.append(f"{what} written to {path}")
    if not quiet:
        for line in written:
            print(line)
    if problems:
        raise InputError(f"{'; '.join(problems)}. The results are printed above")


# --- run -----------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    import torch

    from moe_base.fileio import sha256_file
    from moe_model.checkpoint import load_model

    _check_args(args)
    specs = weights_specs(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = {}
    for s in specs:
        model = load_model(s["path"], preset=s["preset"], verify=not args.skip_weights_check)
        s["preset"] = model.config.name
        s["parameters"] = sum(p.numel() for p in model.parameters())
        s["sha256"] = sha256_file(s["path"])  # which weights: a path retrained in place told two reports apart by none
        models[s["label"]] = model
    if args.sigma is not None:
        return _run_single_sigma(args, specs, models)
    return _run_across_sigmas(args, specs, models)


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What a report needs to be made again: the command, the thread count and the versions of the toolkit and of
    the libraries its numbers depend on (the single-level report recorded none of them, the other no versions)."""
    from moe_base.machine import library_versions

    return {"command": shlex.join(["moe-denoise", *(getattr(args, "argv", []) or [])]), "threads": torch_threads(),
            "versions": library_versions(("torch", "numpy", "skimage", "bm3d"))}


def _load_split(args: argparse.Namespace):
    from moe_model.data import load_cifar10, to_float

    return to_float(load_cifar10(args.data_dir, args.split)[: args.limit])


def _protocols(args: argparse.Namespace) -> tuple[str, ...]:
    from moe_model.data import PROTOCOLS

    return PROTOCOLS if args.protocol == "both" else (args.protocol,)


def _run_single_sigma(args: argparse.Namespace, specs: list[dict[str, Any]], models: dict[str, Any]) -> int:
    """The table of earlier versions, one per weights; the JSON of one weights is unchanged, of several a list."""
    from moe_model.evaluate import evaluate_model, format_table

    clean = _load_split(args)
    protocols = _protocols(args)
    results, texts = [], []
    for s in specs:
        result = evaluate_model(models[s["label"]], clean, sigma=args.sigma, protocols=protocols,
                                eval_seed=args.eval_seed, batch_size=args.batch_size, with_ssim=not args.no_ssim,
                                progress=progress_mode())  # a bar, or lines in a log
        weights = s["path"]
        result.update(split=args.split, weights=weights, weights_sha256=s["sha256"], preset=s["preset"],
                      label=s["label"], **provenance(args))
        results.append(result)
        texts.append(f"weights: {weights} (preset '{s['preset']}'), split: {args.split}\n" + format_table(result, s["label"]))
    _emit(args, results[0] if len(results) == 1 else results, "\n\n".join(texts))
    return 0


def _run_across_sigmas(args: argparse.Namespace, specs: list[dict[str, Any]], models: dict[str, Any]) -> int:
    from moe_model.evaluate import check_targets, evaluate_across_sigmas, format_sigma_table, subset_indices

    progress = progress_mode()  # bars on a terminal, a line per level in a log; on stderr, so --json too (it was
    # silent for a 20-minute '--json > report.json')
    protocols = _protocols(args)
    photos = list(args.photos) if args.photos else None
    bm3d_wanted = args.suite != "photos" and args.bm3d_images > 0
    if args.suite != "cifar":
        from benchmarks.quality import PHOTOS

        photos = photos or list(PHOTOS)
        bm3d_wanted = bm3d_wanted or bool(_bm3d_photos(args, photos))
    if args.suite == "all":  # a photo that cannot be loaded fails now, not after the CIFAR-10 minutes
        from benchmarks.quality import load_photos

        load_photos(photos)
    # the data first: a folder that is not there was said only after the user installed bm3d, which was asked first
    clean = _load_split(args) if args.suite in ("cifar", "all") else None
    if bm3d_wanted:
        from moe_model.baselines import require_bm3d

        require_bm3d()  # fail now, not after minutes of work
    start = time.perf_counter()
    report: dict[str, Any] = {"weights": specs, "split": args.split, "cifar": None, "photos": None, "targets": [],
                              **provenance(args)}
    texts = ["weights: " + "; ".join(f"{s['label']} = {s['path']} (preset '{s['preset']}', {s['parameters']:,} "
                                     f"parameters)" for s in specs)]
    if args.suite in ("cifar", "all"):
        t0 = time.perf_counter()
        idx = subset_indices(len(clean), args.bm3d_images) if args.bm3d_images > 0 else None
        cifar = evaluate_across_sigmas(models, clean, args.sigmas, protocols, args.eval_seed, args.batch_size,
                                       with_ssim=not args.no_ssim, bm3d_indices=idx, progress=progress)
        cifar.update(split=args.split, wall_seconds=round(time.perf_counter() - t0, 1))
        targets = check_targets(cifar)
        report["cifar"] = cifar
        report["targets"] += targets
        texts += ["", f"== CIFAR-10 {args.split} split ({cifar['wall_seconds']:.0f} s)",
                  format_sigma_table(cifar, targets)]
        if args.limit is not None and targets:  # "MISSED" on 4 images read as a verdict
            report["targets_note"] = (f"the CIFAR-10 targets are set on the whole {args.split} split; these were "
                                      f"measured on its first {cifar['num_images']} images (--limit): indicative only")
            texts.append(f"note: {report['targets_note']}")
    if args.suite in ("photos", "all"):
        from benchmarks.quality import check_photo_targets, evaluate_photos, format_photo_table

        t0 = time.perf_counter()
        try:
            result = evaluate_photos(models, photos, args.sigmas, _bm3d_photos(args, photos), seed=args.photo_seed,
                                     with_ssim=not args.no_ssim, progress=progress, guard=not args.no_guard)
        except KeyboardInterrupt as e:
            if report["cifar"] is None:
                raise
            _emit_cifar_part(args, report, texts, e, start)
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        targets = check_photo_targets(result)
        report["photos"] = result
        report["targets"] += targets
        texts += ["", f"== photos ({result['wall_seconds']:.0f} s)", format_photo_table(result, targets)]
    if args.plot is not None:
        from benchmarks.quality import render_plot

        png = render_plot(report["cifar"], report["photos"])  # written by _emit, after the report is printed
        report["plot"] = str(args.plot)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    texts.append(f"total {report['wall_seconds']:.0f} s")
    _emit(args, report, "\n".join(texts), png if args.plot is not None else None)
    return 0


def _emit_cifar_part(args: argparse.Namespace, report: dict[str, Any], texts: list[str], stop: BaseException,
                     start: float) -> None:
    """--suite all stopped during the photos: the finished CIFAR-10 part (minutes of work) is printed and written
    (--save-json, --plot) before the command stops; it was lost with the rest."""
    from moe_base.errors import Interrupted, signals_held, stop_reason

    how = stop_reason(stop)
    report["interrupted"] = f"{how} during the photos: the CIFAR-10 part is whole, the photos were not scored"
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    texts += ["", f"note: {report['interrupted']}"]
    with signals_held():  # a second Ctrl-C waits for the files
        png = None
        if args.plot is not None:
            from benchmarks.quality import render_plot

            png = render_plot(report["cifar"], None)
            report["plot"] = str(args.plot)
        _emit(args, report, "\n".join(texts), png)
    saved = f" and written to {args.save_json}" if args.save_json is not None else ""
    raise Interrupted.said(stop, f"{how} during the photos: the CIFAR-10 results are printed above{saved}; run "
                                 f"--suite photos for the photos") from None


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()
