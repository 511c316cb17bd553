"""moe-denoise denoise / add-noise: whole photos of any size, through any backend."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_backend_args, add_weights_args, make_runner, positive_int

DEFAULT_MAX_PIXELS = 200_000_000  # runtime.images.DEFAULT_MAX_PIXELS (not imported here: `--help` stays light)


def pixel_count(text: str) -> int:
    """argparse type: a number of pixels >= 1, written as 200000000, 2e8 or 200_000_000."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels such as 200000000 or 2e8, got {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1, got {text!r}")
    return int(value)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="denoise a photo of any size (tiled)",
                       description="Reads IN (PNG 8/16-bit, JPEG, TIFF, grayscale, with alpha), denoises it in 32x32 "
                                   "tiles with overlap and a smooth blending window, and writes OUT with the same size, "
                                   "mode and bit depth. The output is written atomically and never over an existing "
                                   "file (or the input) unless --overwrite is given.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("input", type=Path, help="the photo to denoise")
    p.add_argument("-o", "--output", type=Path, required=True, help="where to write the result")
    add_backend_args(p)
    add_weights_args(p)
    p.add_argument("--overlap", type=int, default=16, help="tile overlap in pixels (0..31); 16 = best quality, "
                                                           "8 = about 2x fewer tiles")
    p.add_argument("--batch-size", type=positive_int, default=256, help="tiles per inference call")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.add_argument("--reference", type=Path, default=None,
                   help="a clean version of the photo: report the PSNR of the input and of the output against it")
    p.add_argument("--max-pixels", type=pixel_count, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse photos with more pixels than this (width x height, e.g. 2e8), before decoding them; "
                        "photos that would not fit in the memory the process can get are refused too")
    p.add_argument("--sigma", type=float, default=None,
                   help="the photo's noise std on [0, 1] pixels if you know it (e.g. 0.02): the clean-input guard "
                        "uses it instead of its own estimate")
    p.add_argument("--no-guard", action="store_true",  # 20/255: runtime.guard.GUARD_MAX_SIGMA (not imported here)
                   help="turn off the clean-input guard, which blends the input back in when the photo is clean or "
                        "only lightly noisy (estimated noise <= 20/255; a JPEG's noise is read at two scales, as JPEG "
                        "removes the finest detail: a JPEG file's, or a PNG/TIFF whose pixels were JPEG once); see "
                        "docs/evaluation.md")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--server", default=None, metavar="URL",
                   help="send the photo to a running 'moe-denoise serve' (HOST:PORT or http://HOST:PORT, "
                        "grpc://HOST:PORT) instead of denoising here; the server's backend and overlap apply")
    p.add_argument("--timeout", type=float, default=3600.0, help="with --server: seconds to wait for the answer")
    p.add_argument("--check-local", action="store_true",
                   help="with --server: also denoise here with --backend (and its options) and print the largest "
                        "difference between the two results, in pixel levels (0 when the server runs the same backend)")
    p.set_defaults(func=run)

    q = sub.add_parser("add-noise", help="write a copy of a photo with Gaussian noise (for demos and tests)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("input", type=Path)
    q.add_argument("-o", "--output", type=Path, required=True)
    q.add_argument("--sigma", type=float, default=0.1, help="noise std on [0, 1] pixels")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--overwrite", action="store_true")
    q.set_defaults(func=run_add_noise)


def run(args: argparse.Namespace) -> int:
    from runtime.guard import check_sigma
    from runtime.photo import denoise_file

    check_sigma(args.sigma, "--sigma")  # before any work, the reference included
    if args.reference is not None:  # fail before minutes of denoising, not after
        from moe_base.errors import InputError
        from runtime.images import read_header, read_pixels

        read_pixels(args.reference, max_pixels=args.max_pixels)
        ref, photo = read_header(args.reference), read_header(args.input)
        colour = (ref.layout in ("L", "LA"), photo.layout in ("L", "LA"))
        if (ref.width, ref.height) != (photo.width, photo.height) or colour[0] != colour[1]:
            raise InputError(f"--reference {args.reference} is {ref.width}x{ref.height} {ref.layout} but "
                             f"{args.input} is {photo.width}x{photo.height} {photo.layout}; pass the clean version "
                             f"of the same photo (same size and colour channels; alpha is not compared)")
    if args.server is not None:
        report = run_remote(args)
        name = f"the server at {args.server}"
    else:
        runner = make_runner(args, args.weights)
        with runner:
            report = denoise_file(args.input, args.output, runner, overwrite=args.overwrite, overlap=args.overlap,
                                  batch_size=args.batch_size, progress=not (args.no_progress or args.json),
                                  max_pixels=args.max_pixels, guard=not args.no_guard, sigma=args.sigma)
        report["backend"] = runner.describe()
        name = runner.name
    if args.reference is not None:
        report["psnr_vs_reference"] = reference_psnr(args.reference, args.input, args.output, args.max_pixels)
    if args.json:
        from moe_denoise.cli import print_json

        print_json(report)
    else:
        w, h = report["size"]
        print(f"denoised {report['input']} ({w}x{h}, {report['mode']}, {report['bit_depth']}-bit) with "
              f"{name} in {report['seconds']:.1f}s ({report['tiles']} tiles) -> {report['output']}")
        for note in report["notes"]:
            print(f"  note: {note}")
        if report.get("guard"):
            print(f"  {describe_guard(report['guard'])}")
        if "check_local" in report:
            c = report["check_local"]
            print(f"max abs difference from a local run with {c['backend']}: {c['max_abs_difference_levels']} of "
                  f"{c['levels']} levels ({c['pixels_different']} values differ)")
        if "psnr_vs_reference" in report:
            r = report["psnr_vs_reference"]
            print(f"PSNR against {args.reference} ({r['compared']}): input {r['input']:.2f} dB, "
                  f"output {r['output']:.2f} dB")
    return 0


def describe_guard(guard: dict) -> str:
    """One line on what the clean-input guard (runtime.guard) decided."""
    from runtime.guard import GUARD_MAX_SIGMA

    if guard["sigma"] is None:
        return ("clean-input guard: no noise estimate possible (a flat or saturated image); the denoiser's output "
                "as it is")
    how = "given" if guard["sigma_given"] else "estimated"
    low, high = guard.get("sigma_range") or (guard["sigma"], guard["sigma"])
    if high - low >= 0.5 / 255:  # noise that varies with brightness: say how much
        how += f"; {low * 255:.1f} to {high * 255:.1f}/255 over the brightness range"
    if guard.get("two_scales"):
        how += f"; read at two scales, as {guard.get('two_scales_reason') or 'the input is JPEG'}"
    level = f"noise {guard['sigma'] * 255:.1f}/255 ({how})"
    if not guard["applied"]:
        return f"clean-input guard: {level}, above {GUARD_MAX_SIGMA * 255:g}/255: the denoiser's output as it is"
    return f"clean-input guard: {level}: output = {guard['input_weight']:.2f} x input + " \
           f"{1 - guard['input_weight']:.2f} x denoised"


def run_remote(args: argparse.Namespace) -> dict:
    """--server: the photo goes to a running 'moe-denoise serve'; it is read and written here exactly as locally."""
    from runtime import InputError
    from serving.client import denoise_file_remote

    if args.overlap != 16:
        raise InputError(f"--overlap {args.overlap} cannot be sent with --server: the server tiles with its own "
                         f"overlap. Start it with 'moe-denoise serve --overlap {args.overlap}' and drop --overlap here")
    if args.sigma is not None or args.no_guard:
        raise InputError("--sigma and --no-guard cannot be sent with --server: the server applies the clean-input "
                         "guard with its own estimate (unless started with 'moe-denoise serve --no-guard'). Denoise "
                         "here (drop --server) to set them")
    report = denoise_file_remote(args.input, args.output, args.server, overwrite=args.overwrite,
                                 timeout_s=args.timeout)
    if args.check_local:
        report["check_local"] = check_local(args, report)
    return report


def check_local(args: argparse.Namespace, report: dict) -> dict:
    """Denoise the input here too and compare with what the server's result became on disk, in pixel levels."""
    import numpy as np

    from runtime.images import read_image
    from runtime.jpeg_traces import two_scales_reason
    from runtime.tiling import denoise_array
    from serving.models import unit_to_image

    image, info = read_image(args.input)
    dtype = np.uint16 if info.bit_depth == 16 else np.uint8
    runner = make_runner(args, args.weights)
    with runner:
        local = unit_to_image(denoise_array(image, runner, overlap=args.overlap, batch_size=args.batch_size,
                                            two_scales=two_scales_reason(info.format, image, 1.0) is not None),
                              dtype)
    served = unit_to_image(read_image(args.output)[0], dtype)
    diff = int(np.abs(served.astype(np.int64) - local).max())
    result = {"backend": runner.name, "max_abs_difference_levels": diff, "levels": int(np.iinfo(dtype).max),
              "pixels_different": int((served != local).sum())}
    return result


def reference_psnr(reference: Path, noisy: Path, denoised: Path,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, float | str]:
    """PSNR (data range 1) of the input and the output against a clean reference of the same size.

    Only the colour channels are compared (gray, or R, G, B): alpha is copied through untouched by the
    denoiser, so counting it would only dilute the error. ``compared`` says which channels were. The
    images are kept as their files' integers and compared band by band (float64 sums of squares).
    """
    import numpy as np

    from moe_base.errors import InputError
    from moe_base.metrics import psnr_from_mse
    from runtime.images import read_pixels, to_unit

    ref, ref_info = read_pixels(reference, max_pixels=max_pixels)
    colour = 1 if ref_info.layout in ("L", "LA") else 3
    compared = ("gray" if colour == 1 else "R, G, B") + (" channels; alpha not compared" if ref.shape[2] in (2, 4)
                                                         else " channels")
    out: dict[str, float | str] = {}
    for name, path in (("input", noisy), ("output", denoised)):
        img, info = read_pixels(path, max_pixels=max_pixels)
        if img.shape[:2] != ref.shape[:2] or (1 if info.layout in ("L", "LA") else 3) != colour:
            raise InputError(f"--reference {reference} is {ref.shape[1]}x{ref.shape[0]} {ref_info.layout} but {path} "
                             f"is {img.shape[1]}x{img.shape[0]} {info.layout}; pass the clean version of the same "
                             f"photo (same size and colour channels; alpha is not compared)")
        total, step = 0.0, max(1, (4 << 20) // (ref.shape[1] * colour))
        for y in range(0, ref.shape[0], step):
            a = to_unit(img[y:y + step, :, :colour], info).astype(np.float64)
            total += float(np.sum((a - to_unit(ref[y:y + step, :, :colour], ref_info)) ** 2))
        out[name] = psnr_from_mse(total / (ref.shape[0] * ref.shape[1] * colour))
    out["compared"] = compared
    return out


def run_add_noise(args: argparse.Namespace) -> int:
    from runtime.photo import add_noise_to_file

    r = add_noise_to_file(args.input, args.output, args.sigma, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {r['output']} (sigma {r['sigma']}, seed {r['seed']})")
    return 0
