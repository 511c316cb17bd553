"""Tiles per call: `moe-denoise denoise PHOTO --batch-size A` against `--batch-size B`, per backend.

    python -m tools.tile_batch_ab --runs 5 --sizes 64 256 --backends torch ort --work /tmp/tile_batch_ab

Makes one photo (scikit-image's astronaut resized to --width x --height, Gaussian noise of 25/255, PNG), then for
each backend runs the two sizes in turn (A, B, then B, A, ...: a drift of the machine's speed hits both), each as a
whole process (start-up and model loading included), and prints each size's median wall time and peak memory (the
child's maximum resident set, from the operating system's accounting) and the ratio A / B, pair by pair. Checks
that both sizes write the same bytes (the result does not depend on the batch size). The ort backend needs the
portable model that `moe-denoise export` writes. Needs the `eval` extra (scikit-image).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from . import run_tool
from .ab_timing import interleaved, pairwise, run_count, run_timed, spread


def make_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    import numpy as np
    import skimage.data
    from PIL import Image

    clean = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC), np.float64)
    noisy = clean + np.random.default_rng(seed).normal(0, 25, clean.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import positive_int

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=run_count, default=5,
                        help="timed pairs per backend (after one untimed pair); 0: compare only")
    parser.add_argument("--sizes", type=positive_int, nargs=2, default=[64, 256], metavar=("A", "B"),
                        help="tiles per call")  # 0 was refused by the child moe-denoise, after the photo was made
    parser.add_argument("--backends", nargs="+", default=["torch", "ort"], choices=["torch", "ort"])
    parser.add_argument("--width", type=positive_int, default=2000)
    parser.add_argument("--height", type=positive_int, default=1500)
    parser.add_argument("--work", type=Path, default=Path("tile_batch_ab"), help="folder for the photo and outputs")
    args = parser.parse_args(argv)
    if args.sizes[0] == args.sizes[1]:
        parser.error(f"--sizes: two different batch sizes to compare, got {args.sizes[0]} twice")
    if "ort" in args.backends:  # found after minutes of torch runs, it lost them
        from moe_base.paths import onnx_path

        if not onnx_path("portable").is_file():
            parser.error(f"--backends ort runs the portable model, and {onnx_path('portable')} does not exist: run "
                         f"'moe-denoise export' first, or leave ort out (--backends torch)")
    exe = str(Path(sys.executable).with_name("moe-denoise"))
    photo = make_photo(args.work / "photo.png", args.width, args.height)
    a, b = args.sizes
    print(f"photo: {args.width}x{args.height} RGB, noise 25/255; sizes A = {a}, B = {b}; {args.runs} timed pairs "
          f"per backend after one untimed pair")
    same_everywhere = True
    for backend in args.backends:
        outs = {s: args.work / f"{backend}_{s}.png" for s in (a, b)}
        cmd = {s: [exe, "denoise", str(photo), "-o", str(outs[s]), "--overwrite", "--no-progress", "--backend",
                   backend, "--batch-size", str(s)] for s in (a, b)}
        samples = interleaved({s: (lambda argv=cmd[s]: run_timed([argv])) for s in (a, b)}, args.runs)
        wall = {s: [w for w, _ in samples[s]] for s in (a, b)}
        peak = {s: [p for _, p in samples[s]] for s in (a, b)}
        same = outs[a].read_bytes() == outs[b].read_bytes()
        same_everywhere &= same
        print(f"\n{backend}: outputs byte-identical: {same}")
        for s in (a, b):
            if wall[s]:
                print(f"  batch {s:4d}: wall {spread(wall[s])} s; peak memory median "
                      f"{statistics.median(peak[s]):.0f} MiB")
        if wall[a]:
            print(f"  A / B wall, pair by pair: {pairwise(wall[a], wall[b])}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    run_tool(main)
