"""Tile overlap: what `moe-denoise denoise --overlap N` costs in quality and buys in time, on whole photos.

    python -m tools.overlap_tradeoff --overlaps 0 4 8 16 24 --sigmas 5 15 25 50   # the run in docs/benchmarks.md

For each of scikit-image's sample photos (the photo evaluation's protocol: `benchmarks.quality`, one noise draw per
photo scaled to every level, clipped) and each noise level (0-255 scale), denoises with the shipped blind weights
at every overlap, without the clean-input guard, and prints the PSNR against the clean photo, the tiles run and the
seconds taken (the overlaps in turn for each photo and level, so a drift of the machine's speed hits all). The
time is the denoiser's alone, in this process, on this machine: compare the columns, not across machines.
Needs the `eval` extra (scikit-image).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tools import level_255, run_tool


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import seed_number, tile_overlap

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overlaps", type=tile_overlap, nargs="+", default=[0, 8, 16, 24], help="overlaps to compare")
    parser.add_argument("--sigmas", type=level_255, nargs="+", default=[15, 25, 50], help="noise levels, 0-255 scale")
    parser.add_argument("--photos", nargs="+", default=None,
                        help="scikit-image sample photos (default: those of the photo evaluation)")
    parser.add_argument("--weights", default="blind", help="shipped weights by name, or a weights file")
    parser.add_argument("--seed", type=seed_number, default=0, help="the noise draw's seed")
    args = parser.parse_args(argv)
    # after parsing: these import torch (5 s before --help answered)
    from benchmarks.quality import PHOTOS, load_photo, noise_draw, noisy_photo
    from moe_model.baselines import psnr
    from runtime import TorchRunner, denoise_array
    from runtime.tiling import plan_tiles

    photos = {name: load_photo(name) for name in args.photos or PHOTOS}  # an unknown name before the table starts
    rows: dict[int, dict[str, list[float]]] = {o: {"psnr": [], "seconds": []} for o in args.overlaps}
    with TorchRunner(args.weights) as runner:
        header = "".join(f" | overlap {o:2d}" for o in args.overlaps)
        print(f"PSNR (dB) of the output, without the guard; {args.weights} weights, torch on this CPU")
        print(f"{'photo':10s} {'sigma':>5s} | {'input':>6s}{header}")
        # one untimed call: the process's first (allocations, the thread pool starting) was charged to the first
        # overlap of the first photo, every run
        denoise_array(np.zeros((48, 48, 3), np.float32), runner, overlap=args.overlaps[0], guard=False)
        for name, clean in photos.items():
            draw = noise_draw(name, clean.shape, args.seed)
            for sigma in args.sigmas:
                noisy = noisy_photo(clean, sigma / 255, draw)
                cells = []
                for o in args.overlaps:
                    t0 = time.perf_counter()
                    out = np.clip(denoise_array(noisy, runner, overlap=o, guard=False), 0, 1)
                    rows[o]["seconds"].append(time.perf_counter() - t0)
                    score = psnr(out, clean)
                    rows[o]["psnr"].append(score)
                    cells.append(f"{score:10.2f}")
                print(f"{name:10s} {sigma:5g} | {psnr(noisy, clean):6.2f} | " + " | ".join(cells))
    ref_o = 16 if 16 in args.overlaps else max(args.overlaps)  # the default overlap, else the most
    print(f"\nagainst overlap {ref_o}, over {len(rows[ref_o]['psnr'])} photo-levels:")
    for o in args.overlaps:
        diffs = [a - b for a, b in zip(rows[o]["psnr"], rows[ref_o]["psnr"])]
        ratios = [a / b for a, b in zip(rows[o]["seconds"], rows[ref_o]["seconds"])]
        print(f"  overlap {o:2d}: PSNR {statistics.mean(diffs):+.2f} dB on average (worst {min(diffs):+.2f}); time "
              f"{statistics.median(ratios):.2f}x (median); tiles for a 1000x1000 photo: "
              f"{plan_tiles(1000, 1000, overlap=o).count}")
    return 0


if __name__ == "__main__":
    run_tool(main)
