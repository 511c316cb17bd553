"""moe-denoise denoise / add-noise: whole photos of any size, through any backend."""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from moe_base.errors import InputError, Interrupted
from runtime.base import runner_label

from . import (
    HelpFormatter,
    add_backend_args,
    add_weights_args,
    check_backend_options,
    make_runner,
    noise_std,
    nonempty,
    number,
    path_arg,
    pixel_count,
    positive_int,
    runner_options_given,
    seconds,
    seed_number,
    tile_overlap,
    whole,
)

SERVER_TIMEOUT_S = 3600.0
DEFAULT_MAX_PIXELS = 200_000_000  # runtime.images.DEFAULT_MAX_PIXELS (not imported here: `--help` stays light)


PLAN_NOTE_AT = 500
"""From this many inputs on, a run says that it reads their headers first (it is silent for seconds otherwise)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="denoise photos of any size (tiled)",
                       description="Reads IN (PNG 8/16-bit, JPEG, TIFF, grayscale, with alpha), denoises it in 32x32 "
                                   "tiles with overlap and a smooth blending window, and writes OUT with the same size, "
                                   "mode and bit depth. The output is written atomically and never over an existing "
                                   "file (or the input) unless --overwrite is given. Several photos, or folders of "
                                   "photos, go into the folder -o under their own names, with the denoiser loaded "
                                   "once; a photo that cannot be read is reported and the others go on.",
                       formatter_class=HelpFormatter)
    from runtime.batch import FOLDER_SUFFIXES

    p.add_argument("input", type=path_arg, nargs="+",
                   help=f"the photo to denoise; or several, or folders (their {', '.join(FOLDER_SUFFIXES)} files, not "
                        f"their subfolders)")
    p.add_argument("-o", "--output", required=True, type=nonempty,
                   help="where to write the result: a file, or a folder (an existing one, or a path ending in '/'; "
                        "for several photos always a folder), created if missing; each result keeps its input's "
                        "file name")
    p.add_argument("--skip-existing", action="store_true",
                   help="leave photos whose output exists alone (resumes a stopped run: outputs are written "
                        "atomically, so one this run left is complete; an empty or cut-short file there, another "
                        "tool's, is refused before any work)")
    add_backend_args(p)
    add_weights_args(p)
    p.add_argument("--overlap", type=tile_overlap, default=16, help="tile overlap in pixels (0..31); 8 takes 0.44x the time "
                   "of 16 for 0.03 dB less on average, 0 (plain stitching) 0.24x for 0.2 dB less, 24 4.15x for 0.03 dB "
                   "more (docs/benchmarks.md of the moe-denoise source); the tiles grow as (32 / (32 - overlap))^2: 31 makes "
                   "256x those of 16")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="tiles per inference call (default: 64 for a backend on the CPU, 256 on a GPU; the result "
                        "depends on it only by float rounding)")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.add_argument("--reference", type=path_arg, default=None,
                   help="a clean version of the photo: report the PSNR of the input and of the output against it")
    p.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse photos with more pixels than this (width x height, e.g. 2e8), before decoding them; "
                        "photos that would not fit in the memory the process can get are refused too")
    p.add_argument("--sigma", type=noise_std, default=None,
                   help="the photo's noise std on [0, 1] pixels if you know it (e.g. 0.02, or 5/255): the clean-input guard "
                        "uses it instead of its own estimate")
    p.add_argument("--no-guard", action="store_true",  # 20/255: runtime.guard.GUARD_MAX_SIGMA (not imported here)
                   help="turn off the clean-input guard, which blends the input back in when the photo is clean or "
                        "only lightly noisy (estimated noise <= 20/255; a JPEG's noise is read at two scales, as JPEG "
                        "removes the finest detail: a JPEG file's, or a PNG/TIFF whose pixels were JPEG once). Under "
                        "that level the guard denoises up to 0.26 megapixels of the photo once or twice more to choose "
                        "the blend (a small photo takes up to twice as long); --no-guard skips that. See "
                        "docs/evaluation.md of the moe-denoise source")
    p.add_argument("--strength", type=number, default=1.0,
                   help="how much of the denoising to keep, 0 to 1: 1 = all of it (after the clean-input guard), "
                        "0.7 keeps some of the photo's grain, 0 gives the input back")
    p.add_argument("--jpeg-quality", type=whole, default=None, metavar="Q",  # None: runtime.images.JPEG_QUALITY
                   help="quality of JPEG and WebP outputs, 1 to 100, default 95 (JPEG with 4:4:4 chroma; lossy WebP "
                        "always with 4:2:0, half the colour resolution); lower gives smaller files and undoes more of "
                        "the denoising. Without it, a lossless WebP is written back lossless; other formats are "
                        "lossless, and refuse it")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress (a bar on a terminal; in a log, a line every 30 s of a large photo)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (no progress)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="send the photo to a running 'moe-denoise serve' (HOST:PORT or http://HOST:PORT, "
                        "grpc://HOST:PORT) instead of denoising here; the server's backend and overlap apply, "
                        "--sigma, --no-guard and --strength are sent with each photo")
    p.add_argument("--timeout", type=seconds, default=SERVER_TIMEOUT_S, help="with --server: seconds to wait for the "
                   "answer")
    p.add_argument("--check-local", action="store_true",
                   help="with --server: also denoise here with --backend (and its options) and print the largest "
                        "difference between the two results, in pixel levels (0 when the server runs the same backend)")
    p.set_defaults(func=run)

    q = sub.add_parser("add-noise", help="write a copy of a photo with Gaussian noise (for demos and tests)",
                       formatter_class=HelpFormatter)
    q.add_argument("input", type=path_arg, help="the photo (any format and mode 'denoise' reads)")
    q.add_argument("more", type=path_arg, nargs="*", help=argparse.SUPPRESS)  # refused with a message, not shown
    q.add_argument("-o", "--output", type=nonempty, required=True,
                   help="where to write the noisy copy (same size, mode and bit depth as the input); a folder (one "
                        "that exists, or a new one written with a trailing /): the copy goes in under the input's name")
    q.add_argument("--sigma", type=noise_std, default=0.1,
                   help="noise std on [0, 1] pixels, or levels of 255 (25/255 = 0.098)")
    q.add_argument("--seed", type=seed_number, default=0,
                   help="the same seed gives the same noise; the noise depends on the seed and the photo's size "
                        "alone, so give each photo of a set its own seed for independent noise")
    q.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    q.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse photos with more pixels than this (width x height), before decoding them")
    q.set_defaults(func=run_add_noise)


def run(args: argparse.Namespace) -> int:
    from runtime.guard import check_guard_sigma, check_sigma, check_strength
    from runtime.images import check_quality

    check_sigma(args.sigma, "--sigma")  # before any work, the reference included
    check_guard_sigma(args.sigma, not args.no_guard, f"--sigma {args.sigma:g}" if args.sigma is not None else None,
                      "--no-guard")
    check_backend_options(args)
    check_strength(args.strength, "--strength")
    args.strength += 0.0  # -0 is 0 (it was reported as 'strength -0')
    check_quality(args.jpeg_quality, "--jpeg-quality")  # None: 95, and a lossless WebP's WebP output lossless
    if args.server is not None:
        check_remote_options(args)
    else:
        for option, given in (("--check-local", args.check_local), ("--timeout", args.timeout != SERVER_TIMEOUT_S)):
            if given:
                raise InputError(f"{option} applies to a photo sent to a server (--server URL), and none was given: "
                                 f"add --server, or leave {option} out")
    if args.overwrite and args.skip_existing:
        from runtime.batch import CONTRADICTION

        raise InputError(CONTRADICTION)
    folder_meant = folder_asked(args.output)  # '-o denoised/': a folder, even one not made yet
    args.output = Path(args.output)
    if len(args.input) > 1 or args.input[0].is_dir():
        from runtime.batch import PHOTO_SUFFIXES

        if not folder_meant and not args.output.exists() and args.output.suffix.lower() in PHOTO_SUFFIXES:
            what = "several photos go" if len(args.input) > 1 else f"the photos of the folder '{args.input[0]}' go"
            raise InputError(f"-o {args.output} is named like a photo, but {what} into a folder (made if missing); "
                             f"give a folder, e.g. -o {args.output.with_suffix('')}/")
        return run_batch(args)
    args.input = args.input[0]
    if not (folder_meant and not args.output.exists()):
        return run_single(args)
    from runtime.batch import output_folder, plan_batch

    plan_batch([args.input], args.output, overwrite=args.overwrite)  # the same checks as for several photos
    with output_folder(args.output):
        return run_single(args)


def folder_asked(output: str) -> bool:
    """Whether ``-o`` ends with a slash (a folder, made if missing); InputError when a file stands there."""
    if not output.endswith(("/", os.sep)):
        return False
    if Path(output).exists() and not Path(output).is_dir():
        raise InputError(f"-o {output} names a folder, but '{output.rstrip('/' + os.sep)}' is a file; give a folder, "
                         f"or the file name without the trailing /")
    return True


def check_quality_used(args: argparse.Namespace, outputs: list[Path]) -> None:
    """--jpeg-quality given, and no output is JPEG or WebP: refused (it was ignored in silence, and a PNG written at
    full quality where a small file was asked for)."""
    from runtime.images import output_format

    if getattr(args, "jpeg_quality", None) is None or not outputs:
        return
    formats = {output_format(p) for p in outputs}
    if formats.isdisjoint({"JPEG", "WEBP"}):
        what = (f"{outputs[0]} is {formats.pop()}" if len(outputs) == 1 else
                f"the {len(outputs)} outputs are {', '.join(sorted(formats))}")
        raise InputError(f"--jpeg-quality sets the quality of JPEG and WebP outputs, and {what}, which is written "
                         f"lossless: leave --jpeg-quality out, or write .jpg or .webp")


def run_single(args: argparse.Namespace) -> int:
    """One photo (``args.input``) to ``args.output``, a file or a folder to write it into (under the input's name,
    or as .png when its format cannot hold the result: runtime.batch.result_path)."""
    renamed = None
    if args.output.is_dir():
        from runtime.batch import result_path

        args.output, renamed = result_path(args.input, args.output)
    check_quality_used(args, [args.output])
    if args.skip_existing and args.output.exists():
        if args.json:  # --json promises JSON on stdout
            from moe_denoise.cli import print_json

            print_json({"input": str(args.input), "output": str(args.output), "skipped": "the output exists"})
        else:
            print(f"skipped {args.input}: {args.output} exists (--skip-existing)")
        return 0
    if args.reference is not None:  # fail before minutes of denoising, not after
        from runtime.images import read_header, read_pixels

        for given, what in ((args.reference, "--reference"), (args.input, "the input")):
            if args.output.resolve() == given.resolve():  # read after the write: the output against itself
                raise InputError(f"{what} {given} is also the output (-o {args.output}): the PSNR would be read from "
                                 f"the denoised file that replaced it; write the output to another path")
        try:
            read_pixels(args.reference, max_pixels=args.max_pixels)
        except InputError as e:  # 'no such image file' did not say which of the two files
            raise InputError(f"--reference: {e}") from None
        ref, photo = read_header(args.reference), read_header(args.input)
        colour = (ref.layout in ("L", "LA"), photo.layout in ("L", "LA"))
        (rw, rh), (pw, ph) = ref.upright_size, photo.upright_size  # as read: after the EXIF orientation
        if (rw, rh) != (pw, ph) or colour[0] != colour[1]:
            raise InputError(f"--reference {args.reference} is {rw}x{rh} {ref.layout} but "
                             f"{args.input} is {pw}x{ph} {photo.layout} (upright, after their EXIF orientation); "
                             f"pass the clean version of the same photo (same size and colour channels; alpha is "
                             f"not compared)")
    def starting() -> None:  # in a log, nothing was said for the first 30 s or more (a folder names each photo)
        if progress_shown(args) == "lines":
            print(f"denoising {args.input} ...", file=sys.stderr, flush=True)

    if args.server is not None:
        starting()
        report = denoise_one(args, None, args.input, args.output)
    else:
        from runtime.photo import check_file_job

        check_file_job(args.input, args.output, args.overwrite, args.max_pixels)  # before torch and the weights
        with make_runner(args, args.weights) as runner:
            starting()  # once the settings and weights are taken ('denoising' was said before their refusal)
            report = denoise_one(args, runner, args.input, args.output)
    if renamed is not None:
        report["notes"].append(renamed)
    if args.reference is not None:
        report["psnr_vs_reference"] = reference_psnr(args.reference, args.input, args.output, args.max_pixels)
    if args.json:
        from moe_denoise.cli import print_json

        print_json(report)
    else:
        print("\n".join(report_lines(report, args)))
    return 0


def progress_shown(args: argparse.Namespace) -> str | None:
    """How this run shows its progress on stderr: 'bar' on a terminal, 'lines' in a log, None with --no-progress or
    --json (:func:`moe_base.progress.progress_mode`)."""
    from moe_base.progress import progress_mode

    return progress_mode(not (args.no_progress or args.json))


def denoise_one(args: argparse.Namespace, runner: Any, src: Path, dst: Path, client: Any = None) -> dict:
    """One photo, here with ``runner``, or on the server of --server (then ``runner``, if any, is what
    --check-local denoises with here; None: it makes its own; ``client``: the run's open client of the server,
    or None to open one for this photo)."""
    from runtime.photo import denoise_file

    if args.server is not None:
        report = run_remote(args, src, dst, runner, client)  # its denoised_by names the server's runner
    else:
        report = denoise_file(src, dst, runner, overwrite=args.overwrite, overlap=args.overlap,
                              batch_size=args.batch_size, progress=progress_shown(args),
                              max_pixels=args.max_pixels, guard=not args.no_guard, sigma=args.sigma,
                              strength=args.strength, quality=args.jpeg_quality)
        report["backend"] = runner.describe()
        report["denoised_by"] = runner_label(runner)
        if "plugin_nodes" in report["backend"]:  # the plugin graph in ONNX Runtime: slow on purpose, said once a photo
            report["notes"].append(report["backend"]["plugin_nodes"])
    report["input"] = str(src)  # as given, as the output is (it was made absolute: long lines, not greppable)
    return report


def report_lines(report: dict, args: argparse.Namespace) -> list[str]:
    """What a text run prints for one photo."""
    w, h = report["size"]
    tiles = f" ({report['tiles']} tiles)" if report["tiles"] is not None else ""  # None: a server that did not say
    layout = report.get("layout") or report["mode"]  # the channels written (Pillow's mode said RGBA for 16-bit LA)
    lines = [f"denoised {report['input']} ({w}x{h}, {layout}, {report['bit_depth']}-bit) with "
             f"{report['denoised_by']} in {report['seconds']:.1f}s{tiles} -> {report['output']}"]
    lines += [f"  note: {note}" for note in report["notes"]]
    if report.get("guard"):
        lines.append(f"  {describe_guard(report['guard'], report.get('strength', 1.0))}")
    if report.get("strength", 1.0) != 1.0:
        w = report.get("input_weight")
        lines.append(f"  strength {report['strength']:g}: " + (f"output = {w:.2f} x input + {1 - w:.2f} x denoised"
                                                                if w is not None else
                                                                f"{report['strength']:.0%} of the change kept"))
    if "check_local" in report:
        c = report["check_local"]
        lines.append(f"max abs difference from a local run with {c['backend']}: {c['max_abs_difference_levels']} of "
                     f"{c['levels']} levels ({c['pixels_different']} values differ)")
        lines += [f"  note: {note}" for note in c.get("notes", [])]
    if "psnr_vs_reference" in report:
        r = report["psnr_vs_reference"]
        lines.append(f"PSNR against {args.reference} ({r['compared']}): input {r['input']:.2f} dB, "
                     f"output {r['output']:.2f} dB")
    return lines


def run_batch(args: argparse.Namespace) -> int:
    """Several photos (or folders of them) into the folder -o, the denoiser loaded once (runtime.batch: a photo
    that cannot be denoised is reported and the others go on; exit 2 when any failed)."""
    import contextlib
    import time

    from moe_base.fileio import is_link_loop
    from runtime.batch import FOLDER_SUFFIXES, BatchRun, output_folder, plan_batch
    from runtime.images import RAW_SUFFIXES

    if args.reference is not None:
        raise InputError("--reference compares one photo with its clean version; denoise that photo on its own "
                         "to use it (several photos were given)")
    if len(args.input) >= PLAN_NOTE_AT and progress_shown(args) is not None:
        # every header is read before any work (about 2 ms a photo): 5,000 photos were 15 s of silence
        print(f"reading the headers of {len(args.input):,} inputs before any work ...", file=sys.stderr, flush=True)
    plan = plan_batch(args.input, args.output, overwrite=args.overwrite, skip_existing=args.skip_existing)
    check_quality_used(args, [dst for _, dst in plan.jobs])
    text = not args.json
    total, start = len(plan.jobs), time.perf_counter()
    client = None
    if plan.jobs and args.server is not None:  # one client for the run; a server that is not there fails once,
        from serving.client import DenoiseClient, ready_wait  # before any photo

        client = DenoiseClient(args.server, timeout_s=args.timeout)
        try:
            client.wait_ready(timeout_s=ready_wait(args.timeout))
        except BaseException:
            client.close()
            raise

    def said(i: int, report: dict) -> None:
        lines = report_lines(report, args)
        print("\n".join([f"[{i}/{total}] {lines[0]}", *lines[1:]]))

    def failed(i: int, src: Path, error: InputError) -> None:
        print(f"[{i}/{total}] failed: {src}: {error}", file=sys.stderr)

    def skipped(i: int, src: Path) -> None:
        print(f"[{i}/{total}] skipped: {src}: its output was written meanwhile (by another run?)")

    in_log = progress_shown(args) == "lines"
    number = {src: i for i, (src, _) in enumerate(plan.jobs, 1)}  # as the photo's own line numbers it

    def one(src: Path, dst: Path) -> dict:
        if in_log:  # a log's progress lines name no photo, and a photo's own line comes when it is done
            print(f"[{number[src]}/{total}] denoising {src} ...", file=sys.stderr, flush=True)
        report = denoise_one(args, runner, src, dst, client)  # runner: bound below
        note = plan.note_for(src)  # written as NAME.gif.png: its own format cannot hold the result
        if note is not None:
            report["notes"].append(note)
        return report

    batch = BatchRun(plan, one, said if text else None, failed if text else None, skipped if text else None)
    try:
        with contextlib.closing(client) if client is not None else contextlib.nullcontext(), \
                output_folder(plan.out_dir) if plan.jobs else contextlib.nullcontext(), \
                make_runner(args, args.weights) if plan.jobs and (args.server is None or args.check_local) \
                else contextlib.nullcontext() as runner:  # with --server: the runner --check-local uses
            batch.run()
    except InputError as e:  # stopped: two photos failed alike (a server gone, a full disk)
        if args.json and (batch.reports or batch.failed):  # --json promises JSON on stdout: what was done
            print_batch_json(plan, batch, start, stopped=str(e))
        raise
    except BrokenPipeError:  # '| head' closed the output: the run stops, said where the user still looks
        print(f"stopped after {len(batch.reports)} of {total} photos: the output pipe was closed; {batch.go_on()}",
              file=sys.stderr)
        raise
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM
        done = len(batch.reports)
        if args.json:
            print_batch_json(plan, batch, start, stopped=f"interrupted after {done} of {total} photos")
        raise Interrupted.said(e, f"interrupted after {done} of {total} photos; every output written is complete: "
                                  f"{batch.go_on()}" if done else
                               f"interrupted before the first of {total} photos was written; nothing was written"
                               ) from None
    found = total + len(plan.skipped)  # the photos found, those skipped included ('denoised 0 of 0 photos; 40 skipped')
    if args.json:
        print_batch_json(plan, batch, start)
    else:
        summary = batch_summary(plan, batch, start)  # skipped: outputs there at the start, and those written since
        extra = [f"{summary['skipped']} skipped (output exists)"] if summary["skipped"] else []
        if plan.ignored:
            names = [p.name + ("/" if p.is_dir() else " (a loop of links)" if is_link_loop(p) else
                               " (a link to nothing)" if p.is_symlink() and not p.exists() else "")
                     for p in plan.ignored]  # a dangling a.png was said to have the wrong ending
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""  # ', ...' hid how many (JPEGs among them)
            raws = [p.name for p in plan.ignored if p.suffix.lower() in RAW_SUFFIXES]
            raw_note = (f"; {', '.join(raws[:3])}{' and more' if len(raws) > 3 else ''}: camera raw, to develop in a "
                        f"raw converter (darktable, RawTherapee, ...) first" if raws else "")  # named on its own, it is
            # refused as raw: 'name another file to denoise it' led there
            extra.append(f"left out of the folders given: {', '.join(names[:4])}{more} "
                         f"(taken from a folder: files ending in {', '.join(FOLDER_SUFFIXES)}; name another file to "
                         f"denoise it; subfolders are not searched{raw_note})")
        print(f"denoised {summary['denoised']} of {found} photos into {plan.out_dir} in "
              f"{summary['seconds']:.1f}s" + "".join(f"; {x}" for x in extra))
    if batch.failed:
        print(f"moe-denoise denoise: error: {len(batch.failed)} of {found} photos could not be denoised ("
              f"{'said above' if text else 'listed in the JSON'}); nothing was written for them. Fix what is said "
              f"there (or remove those photos), then {batch.go_on('to denoise only those')}",
              file=sys.stderr)
        return 2
    return 0


def batch_summary(plan: Any, batch: Any, start: float) -> dict[str, Any]:
    """The counts of a run over many photos (``runtime.batch``'s plan and run), and its seconds since ``start``."""
    import time

    return {"output_dir": str(plan.out_dir), "denoised": len(batch.reports), "failed": len(batch.failed),
            "skipped": len(plan.skipped) + len(batch.skipped), "ignored": len(plan.ignored),
            "seconds": round(time.perf_counter() - start, 3)}


def print_batch_json(plan: Any, batch: Any, start: float, stopped: str | None = None) -> None:
    """The JSON document of a run over many photos; ``stopped``: why it ended early (then in its summary)."""
    from moe_denoise.cli import print_json

    summary = batch_summary(plan, batch, start)
    if stopped is not None:
        summary["stopped"] = stopped
    print_json({"summary": summary, "photos": batch.reports, "failed": batch.failed,
                "skipped": [{"input": str(s), "output": str(d)} for s, d in [*plan.skipped, *batch.skipped]],
                "ignored": [str(p) for p in plan.ignored]})


def describe_guard(guard: dict, strength: float = 1.0) -> str:
    """One line on what the clean-input guard (runtime.guard) decided (``strength``: the run's --strength)."""
    from runtime.guard import GUARD_MAX_SIGMA, guard_notes

    if guard["sigma"] is None:
        return ("clean-input guard: no noise estimate possible (an image under 2 pixels wide or tall, or noise "
                "clipped at black or white everywhere); the denoiser's output as it is")
    how = "given" if guard["sigma_given"] else "estimated"
    low, high = guard.get("sigma_range") or (guard["sigma"], guard["sigma"])
    if high - low >= 0.5 / 255:  # noise that varies with brightness: say how much
        how += f"; {low * 255:.1f} to {high * 255:.1f}/255 over the brightness range"
    if guard.get("two_scales"):
        how += f"; read at two scales, as {guard.get('two_scales_reason') or 'the input is JPEG'}"
    sigma, gate = guard["sigma"] * 255, GUARD_MAX_SIGMA * 255
    digits = 1 if math.isclose(sigma, gate) else next(  # 20.015 read '20.0', above 20
        d for d in (1, 2, 3, 4, 6) if round(sigma, d) != round(gate, d) or d == 6)
    level = f"noise {sigma:.{digits}f}/255 ({how})"
    if not guard["applied"]:
        return f"clean-input guard: {level}, above {gate:g}/255: the denoiser's output as it is"
    hint = ""
    if guard["input_weight"] >= 0.5 and not guard["sigma_given"] and strength == 1.0 and not guard_notes(guard):
        # noise the estimate misses (in one channel, in the darks, speckle) was handed back with no word of the two
        # options that denoise it (not said where they cannot help: dots they leave, a strength the user chose)
        hint = " (still noisy? denoise it with --sigma LEVEL, e.g. --sigma 15/255, or with --no-guard)"
    return f"clean-input guard: {level}: output = {guard['input_weight']:.2f} x input + " \
           f"{1 - guard['input_weight']:.2f} x denoised{hint}"


def check_remote_options(args: argparse.Namespace) -> None:
    """--server: refuse, before any photo, the options a request cannot carry."""
    if args.overlap != 16 and not args.check_local:
        raise InputError(f"--overlap {args.overlap} cannot be sent with --server: the server tiles with its own "
                         f"overlap. Start it with 'moe-denoise serve --overlap {args.overlap}' and drop --overlap here "
                         f"(with --check-local it is the local run's)")
    if args.weights is not None and not args.check_local:
        raise InputError(f"--weights {args.weights} cannot be sent with --server: the server denoises with the weights "
                         f"it was started with (its 'ready' line names them). Start it with 'moe-denoise serve "
                         f"--weights {args.weights}' and drop --weights here (with --check-local they are the local "
                         f"run's)")
    if args.check_local:
        return
    if args.batch_size is not None:
        raise InputError(f"--batch-size {args.batch_size} cannot be sent with --server: the server batches tiles as it "
                         f"was started ('moe-denoise serve --image-batch {args.batch_size}'); drop --batch-size here "
                         f"(with --check-local it is the local run's)")
    local = runner_options_given(args)
    if local:
        raise InputError(f"{', '.join(local)} choose{'s' if len(local) == 1 else ''} how a photo is denoised here, "
                         f"and with --server the server denoises it with its own runner: drop "
                         f"{'it' if len(local) == 1 else 'them'}, or add --check-local to denoise here too and compare")


def run_remote(args: argparse.Namespace, src: Path, dst: Path, local: Any = None, client: Any = None) -> dict:
    """--server: the photo goes to a running 'moe-denoise serve'; it is read and written here exactly as locally
    (``local``: the runner --check-local uses, or None to make one; ``client``: see :func:`denoise_one`)."""
    import contextlib

    from moe_base.fileio import scratch_folder
    from serving.client import denoise_file_remote

    with contextlib.ExitStack() as stack:
        here = None
        if args.check_local:  # the local run first, from the input as it is (with -o over the input, the served
            # result replaced it, and the local run denoised that: 34 levels 'different' between identical runs)
            from runtime.images import check_output_path

            check_output_path(dst, src, args.overwrite)  # a refusal first, not after the local run
            if client is None:  # a server that is not there is said before minutes of the local run, not after
                from serving.client import DenoiseClient, ready_wait

                client = stack.enter_context(DenoiseClient(args.server, timeout_s=args.timeout))
                client.wait_ready(timeout_s=ready_wait(args.timeout))
            tmp = stack.enter_context(scratch_folder("moe-denoise-check-local"))
            here = local_run(args, src, Path(tmp) / f"local{dst.suffix}", local)
        report = denoise_file_remote(src, dst, args.server, overwrite=args.overwrite, timeout_s=args.timeout,
                                     strength=args.strength, sigma=args.sigma, guard=not args.no_guard,
                                     quality=args.jpeg_quality, client=client, max_pixels=args.max_pixels)
        if here is not None:
            report["check_local"] = compare_files(dst, *here, max_pixels=args.max_pixels)
            report["check_local"]["notes"] = unlike_settings(args, report)
    return report


def unlike_settings(args: argparse.Namespace, report: dict) -> list[str]:
    """What --check-local's local run did otherwise than the server, with the options that match it: against a
    server started with --overlap 8 --no-guard it printed '12 of 255 levels' different and no reason (the served
    result equalled a matching local run exactly)."""
    notes = []
    if report.get("overlap") is not None and report["overlap"] != args.overlap:
        notes.append(f"the server tiles with overlap {report['overlap']}, the local run with {args.overlap}: add "
                     f"--overlap {report['overlap']} to compare like with like")
    if report.get("server_guard") is False and not args.no_guard:
        notes.append("the server's clean-input guard is off (it was started with --no-guard), the local run's on: "
                     "add --no-guard to compare like with like")
    return notes


def local_run(args: argparse.Namespace, src: Path, here: Path, runner: Any = None) -> tuple[Path, str]:
    """Denoise ``src`` into ``here`` as a local run writes it (same format: a JPEG output is compared as JPEG, not
    against pixels before encoding), with ``runner`` or one made from the options; ``here`` and the runner's label."""
    import contextlib

    from runtime.photo import denoise_file

    with make_runner(args, args.weights) if runner is None else contextlib.nullcontext(runner) as runner:
        denoise_file(src, here, runner, overlap=args.overlap, batch_size=args.batch_size, progress=False,
                     max_pixels=args.max_pixels, strength=args.strength, sigma=args.sigma,
                     guard=not args.no_guard, quality=args.jpeg_quality)
    return here, runner_label(runner)


def compare_files(served_path: Path, local_path: Path, backend: str, max_pixels: int | None = None) -> dict:
    """The two files' pixels compared, in levels of their bit depth (read under --max-pixels, as the photo was: a
    photo allowed past the default was refused here, after both runs)."""
    import numpy as np

    from runtime.images import read_pixels

    local, info = read_pixels(local_path, max_pixels=max_pixels)
    served = read_pixels(served_path, max_pixels=max_pixels)[0]
    diff = int(np.abs(served.astype(np.int64) - local).max())
    return {"backend": backend, "max_abs_difference_levels": diff, "levels": 65535 if info.bit_depth == 16 else 255,
            "pixels_different": int((served != local).sum())}


def reference_psnr(reference: Path, noisy: Path, denoised: Path,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, float | str]:
    """PSNR (data range 1) of the input and the output against a clean reference of the same size.

    Only the colour channels are compared (gray, or R, G, B): alpha is copied through untouched by the
    denoiser, so counting it would only dilute the error. ``compared`` says which channels were. The
    images are kept as their files' integers and compared band by band (float64 sums of squares).
    """
    import numpy as np

    from moe_base.metrics import psnr_from_mse
    from moe_model.data import LUMA
    from runtime.images import read_pixels, to_unit

    ref, ref_info = read_pixels(reference, max_pixels=max_pixels)
    colour = 1 if ref_info.layout in ("L", "LA") else 3
    compared = ("gray" if colour == 1 else "R, G, B") + (" channels; alpha not compared" if ref.shape[2] in (2, 4)
                                                         else " channels")
    out: dict[str, float | str] = {}
    for name, path in (("input", noisy), ("output", denoised)):
        img, info = read_pixels(path, max_pixels=max_pixels)
        own = 1 if info.layout in ("L", "LA") else 3
        # a gray photo's output in a format without gray (WebP) is RGB: its luminance is the gray compared (it was
        # refused after the output was written, blaming the reference)
        luminance = colour == 1 and own == 3 and name == "output"
        if img.shape[:2] != ref.shape[:2] or (own != colour and not luminance):
            raise InputError(f"--reference {reference} is {ref.shape[1]}x{ref.shape[0]} {ref_info.layout} but {path} "
                             f"is {img.shape[1]}x{img.shape[0]} {info.layout}; pass the clean version of the same "
                             f"photo (same size and colour channels; alpha is not compared)")
        if luminance:
            compared += "; the output's luminance (its format holds no gray)"
        total, step = 0.0, max(1, (4 << 20) // (ref.shape[1] * own))
        for y in range(0, ref.shape[0], step):
            a = to_unit(img[y:y + step, :, :own], info).astype(np.float64)
            if luminance:
                a = a @ np.asarray(LUMA, dtype=np.float64)[:, None]
            total += float(np.sum((a - to_unit(ref[y:y + step, :, :colour], ref_info)) ** 2))
        out[name] = psnr_from_mse(total / (ref.shape[0] * ref.shape[1] * colour))
    out["compared"] = compared
    return out


def run_add_noise(args: argparse.Namespace) -> int:
    import contextlib

    from runtime.batch import check_folder_can_be_made, output_folder, result_path
    from runtime.photo import add_noise_to_file

    given = [args.input, *args.more]
    if len(given) > 1:  # one photo a run: argparse said 'unrecognized arguments' with the top-level usage
        raise InputError(f"add-noise takes one photo; got {len(given)} ({', '.join(map(str, given[:3]))}"
                         f"{', ...' if len(given) > 3 else ''}): run it once for each photo")
    folder_meant = folder_asked(args.output)  # '-o noisy/': a folder, made if missing (as with denoise)
    args.output = Path(args.output)
    if folder_meant:
        check_folder_can_be_made(args.output)
    made = output_folder(args.output) if folder_meant and not args.output.exists() else contextlib.nullcontext()
    renamed = None
    with made:
        if args.output.is_dir():  # a folder: the copy goes in under the input's name (.png for a colour GIF), as
            args.output, renamed = result_path(args.input, args.output)  # with denoise
        r = add_noise_to_file(args.input, args.output, args.sigma, seed=args.seed, overwrite=args.overwrite,
                              max_pixels=args.max_pixels)
    print(f"wrote {r['output']} (sigma {r['sigma']:.4g} = {r['sigma'] * 255:.4g}/255, seed {r['seed']})")
    if r["sigma"] >= 0.5:  # '--sigma 1' meant as one level of 255 wrote noise of the whole range, said as '255/255'
        r["notes"].append(f"sigma {r['sigma']:g} is {r['sigma']:.0%} of the whole pixel range: most pixels clip to "
                          f"black or white; for {r['sigma']:g} level(s) of 255 write --sigma {r['sigma']:g}/255")
    for note in r["notes"] + ([renamed] if renamed else []):  # a palette made RGB, frames dropped: said as denoise
        print(f"  note: {note}")
    return 0
