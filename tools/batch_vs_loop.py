"""Many photos: one `moe-denoise denoise FOLDER -o OUT` against one `moe-denoise denoise PHOTO -o OUT` per photo.

    python -m tools.batch_vs_loop --runs 3 --work /tmp/batch_vs_loop

Makes the photo set (scikit-image's sample photos with Gaussian noise of 5 to 25/255, as PNG), then runs the two
ways in turn (loop, batch, then batch, loop, ...: a drift of the machine's speed hits both), each as whole processes
(start-up and model loading included), and prints each way's median wall time and their ratio, pair by pair.
Checks first that both write the same bytes for every photo. Needs the `eval` extra (scikit-image).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from . import run_tool
from .ab_timing import interleaved, pairwise, run_count, run_timed, spread

PHOTOS = ("astronaut", "chelsea", "coffee", "camera", "moon", "rocket", "coins", "page")
LEVELS = (5, 10, 15, 25)


def make_photos(folder: Path, names: tuple[str, ...] = PHOTOS, seed: int = 1) -> list[Path]:
    """The noisy photos in ``folder`` (made if missing; other files there are left alone: the batch way is given
    these photos by name, as the loop is)."""
    import numpy as np
    import skimage.data
    from PIL import Image

    from moe_base.errors import InputError

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, name in enumerate(names):
        clean = np.asarray(getattr(skimage.data, name)())
        if not (clean.ndim == 2 or (clean.ndim == 3 and clean.shape[2] == 3)):
            raise InputError(f"scikit-image's '{name}' is not a grey or RGB photo (shape {clean.shape}); choose "
                             f"others, e.g. {' '.join(PHOTOS)}")
        clean = clean.astype(np.float64)
        noisy = np.clip(clean + rng.normal(0, LEVELS[i % len(LEVELS)], clean.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{name}.png")
        Image.fromarray(noisy).save(paths[-1])
    return paths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=run_count, default=3,
                        help="timed pairs (after one untimed pair); 0: compare only")
    parser.add_argument("--work", type=Path, default=Path("batch_vs_loop"),
                        help="folder for the photos and outputs (its loop/ and batch/ are replaced; photos/ gets the noisy "
                             "photos, beside what is there)")
    parser.add_argument("--photos", nargs="+", default=list(PHOTOS), help="scikit-image sample photos to use")
    args = parser.parse_args(argv)
    import skimage.data

    unknown = [n for n in args.photos if n.startswith("_") or not callable(getattr(skimage.data, n, None))]
    if unknown:
        parser.error(f"--photos: scikit-image has no sample photo {', '.join(map(repr, unknown))}; give names of "
                     f"skimage.data, e.g. {' '.join(PHOTOS)}")
    twice = sorted({n for n in args.photos if args.photos.count(n) > 1})
    if twice:
        parser.error(f"--photos: {', '.join(twice)} given twice; the batch way would denoise it once, the loop twice")
    from moe_base.errors import InputError
    from moe_base.fileio import check_folder_takes_files

    try:
        check_folder_takes_files(args.work)
    except InputError as e:
        parser.error(f"--work: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exe = str(Path(sys.executable).with_name("moe-denoise"))
    photos = make_photos(args.work / "photos", tuple(args.photos))
    loop_dir, batch_dir = args.work / "loop", args.work / "batch"
    for d in (loop_dir, batch_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    common = ["--overwrite", "--no-progress"]
    loop = [[exe, "denoise", str(p), "-o", str(loop_dir / p.name), *common] for p in photos]
    # the photos by name, not their folder: a photo an earlier run left there was denoised by the batch way alone
    # (more work than the loop, a wrong count); emptying the folder first removed a user's 'photos' under --work ~
    batch = [[exe, "denoise", *map(str, photos), "-o", f"{batch_dir}{os.sep}", *common]]
    samples = interleaved({"loop": lambda: run_timed(loop), "batch": lambda: run_timed(batch)}, args.runs)
    times = {k: [wall for wall, _ in v] for k, v in samples.items()}
    same = all((loop_dir / p.name).read_bytes() == (batch_dir / p.name).read_bytes() for p in photos)
    pixels = 0
    from PIL import Image

    for p in photos:
        with Image.open(p) as im:
            pixels += im.width * im.height
    print(f"{len(photos)} photos, {pixels / 1e6:.2f} megapixels; outputs byte-identical: {same}")
    if not args.runs:
        print("no timed runs (--runs 0): the outputs were only compared")
        return 0 if same else 1
    for k in ("loop", "batch"):
        print(f"{k:5s}: {spread(times[k])} s, {args.runs} runs")
    print(f"batch / loop, pair by pair: {pairwise(times['batch'], times['loop'])}")
    return 0 if same else 1


if __name__ == "__main__":
    run_tool(main)
