"""Tiles per call: `moe-denoise denoise PHOTO --batch-size A` against `--batch-size B`, per backend.

    python -m tools.tile_batch_ab --runs 5 --sizes 64 256 --backends torch ort --work /tmp/tile_batch_ab

Makes one photo (scikit-image's astronaut resized to --width x --height, Gaussian noise of 25/255, PNG), then for
each backend runs the two sizes in turn (A, B, A, B, ...: a drift of the machine's speed hits both), each as a
whole process (start-up and model loading included), and prints each size's median wall time and peak memory (the
child's maximum resident set, from the operating system's accounting) and the ratio A / B, pair by pair. Checks
that both sizes write the same bytes (the result does not depend on the batch size). The ort backend needs the
portable model that `moe-denoise export` writes. Needs the `eval` extra (scikit-image).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    import numpy as np
    import skimage.data
    from PIL import Image

    clean = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.BICUBIC), np.float64)
    noisy = clean + np.random.default_rng(seed).normal(0, 25, clean.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8)).save(path)
    return path


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one whole process."""
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a full pipe would stall the child
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own accounting, reaped here
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code:
            err.seek(0)
            raise SystemExit(f"{' '.join(argv)} failed (exit {code}):\n{err.read().decode(errors='replace')}")
    return wall, usage.ru_maxrss / 1024  # Linux: kilobytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed pairs per backend (after one untimed pair)")
    parser.add_argument("--sizes", type=int, nargs=2, default=[64, 256], metavar=("A", "B"), help="tiles per call")
    parser.add_argument("--backends", nargs="+", default=["torch", "ort"], choices=["torch", "ort"])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--work", type=Path, default=Path("tile_batch_ab"), help="folder for the photo and outputs")
    args = parser.parse_args(argv)
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
        wall: dict[int, list[float]] = {a: [], b: []}
        peak: dict[int, list[float]] = {a: [], b: []}
        for run in range(args.runs + 1):  # the first pair warms the disk cache and is not counted
            for s in (a, b):
                w, p = timed(cmd[s])
                if run:
                    wall[s].append(w)
                    peak[s].append(p)
        same = outs[a].read_bytes() == outs[b].read_bytes()
        same_everywhere &= same
        print(f"\n{backend}: outputs byte-identical: {same}")
        for s in (a, b):
            if wall[s]:
                print(f"  batch {s:4d}: wall median {statistics.median(wall[s]):.1f} s (min {min(wall[s]):.1f}, max "
                      f"{max(wall[s]):.1f}); peak memory median {statistics.median(peak[s]):.0f} MiB")
        ratios = [x / y for x, y in zip(wall[a], wall[b])]
        if ratios:
            print(f"  A / B wall, pair by pair: median {statistics.median(ratios):.2f} (min {min(ratios):.2f}, "
                  f"max {max(ratios):.2f})")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    raise SystemExit(main())
