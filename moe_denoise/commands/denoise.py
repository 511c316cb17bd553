"""moe-denoise denoise / add-noise: whole photos of any size, through any backend."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import add_backend_args, add_weights_args, make_runner


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
    p.add_argument("--batch-size", type=int, default=256, help="tiles per inference call")
    p.add_argument("--overwrite", action="store_true", help="allow replacing an existing output file")
    p.add_argument("--reference", type=Path, default=None,
                   help="a clean version of the photo: report the PSNR of the input and of the output against it")
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
    from runtime.photo import denoise_file

    if args.reference is not None:
        from runtime.images import read_image

        read_image(args.reference)  # fail before minutes of denoising, not after
    if args.server is not None:
        report = run_remote(args)
        name = f"the server at {args.server}"
    else:
        runner = make_runner(args, args.weights)
        with runner:
            report = denoise_file(args.input, args.output, runner, overwrite=args.overwrite, overlap=args.overlap,
                                  batch_size=args.batch_size, progress=not (args.no_progress or args.json))
        report["backend"] = runner.describe()
        name = runner.name
    if args.reference is not None:
        report["psnr_vs_reference"] = reference_psnr(args.reference, args.input, args.output)
    if args.json:
        from moe_denoise.cli import print_json

        print_json(report)
    else:
        w, h = report["size"]
        print(f"denoised {report['input']} ({w}x{h}, {report['mode']}, {report['bit_depth']}-bit) with "
              f"{name} in {report['seconds']:.1f}s ({report['tiles']} tiles) -> {report['output']}")
        for note in report["notes"]:
            print(f"  note: {note}")
        if "check_local" in report:
            c = report["check_local"]
            print(f"max abs difference from a local run with {c['backend']}: {c['max_abs_difference_levels']} of "
                  f"{c['levels']} levels ({c['pixels_different']} values differ)")
        if "psnr_vs_reference" in report:
            r = report["psnr_vs_reference"]
            print(f"PSNR against {args.reference}: input {r['input']:.2f} dB, output {r['output']:.2f} dB")
    return 0


def run_remote(args: argparse.Namespace) -> dict:
    """--server: the photo goes to a running 'moe-denoise serve'; it is read and written here exactly as locally."""
    from runtime import InputError
    from serving.client import denoise_file_remote

    if args.overlap != 16:
        raise InputError(f"--overlap {args.overlap} cannot be sent with --server: the server tiles with its own "
                         f"overlap. Start it with 'moe-denoise serve --overlap {args.overlap}' and drop --overlap here")
    report = denoise_file_remote(args.input, args.output, args.server, overwrite=args.overwrite,
                                 timeout_s=args.timeout)
    if args.check_local:
        report["check_local"] = check_local(args, report)
    return report


def check_local(args: argparse.Namespace, report: dict) -> dict:
    """Denoise the input here too and compare with what the server's result became on disk, in pixel levels."""
    import numpy as np

    from runtime.images import read_image
    from runtime.tiling import denoise_array
    from serving.models import unit_to_image

    image, info = read_image(args.input)
    dtype = np.uint16 if info.bit_depth == 16 else np.uint8
    runner = make_runner(args, args.weights)
    with runner:
        local = unit_to_image(denoise_array(image, runner, overlap=args.overlap, batch_size=args.batch_size), dtype)
    served = unit_to_image(read_image(args.output)[0], dtype)
    diff = int(np.abs(served.astype(np.int64) - local).max())
    result = {"backend": runner.name, "max_abs_difference_levels": diff, "levels": int(np.iinfo(dtype).max),
              "pixels_different": int((served != local).sum())}
    return result


def reference_psnr(reference: Path, noisy: Path, denoised: Path) -> dict[str, float]:
    """PSNR (data range 1) of the input and the output against a clean reference of the same size."""
    import numpy as np

    from moe_base.errors import InputError
    from moe_base.metrics import psnr_from_mse
    from runtime.images import read_image

    ref = read_image(reference)[0]
    out = {}
    for name, path in (("input", noisy), ("output", denoised)):
        img = read_image(path)[0]
        if img.shape != ref.shape:
            raise InputError(f"--reference {reference} is {ref.shape[1]}x{ref.shape[0]}x{ref.shape[2]} but {path} is "
                             f"{img.shape[1]}x{img.shape[0]}x{img.shape[2]}; pass the clean version of the same photo")
        mse = float(np.mean((img.astype(np.float64) - ref) ** 2))
        out[name] = psnr_from_mse(mse)
    return out


def run_add_noise(args: argparse.Namespace) -> int:
    from runtime.photo import add_noise_to_file

    r = add_noise_to_file(args.input, args.output, args.sigma, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {r['output']} (sigma {r['sigma']}, seed {r['seed']})")
    return 0
