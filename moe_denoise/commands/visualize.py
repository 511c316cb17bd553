"""moe-denoise visualize: a denoising grid and routing maps as PNGs."""
from __future__ import annotations

import argparse
from pathlib import Path

from moe_base.errors import InputError

from . import (
    HelpFormatter,
    add_data_args,
    add_split_arg,
    add_weights_args,
    load_model_from_args,
    noise_std,
    path_arg,
    positive_int,
    seed_number,
    whole,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("visualize", help="PNG grid noisy | denoised | clean and PNG routing maps",
                       description="Writes OUT_DIR/denoise_grid.png (noisy | denoised | clean with per-image PSNR) "
                                   "and OUT_DIR/routing_maps.png (per block and expert, the routing probability "
                                   "of each patch).",
                       formatter_class=HelpFormatter)
    add_weights_args(p)
    add_data_args(p)
    add_split_arg(p)
    p.add_argument("-n", "--num-images", type=positive_int, default=8, help="images in the grid (one row each)")
    p.add_argument("--offset", type=whole, default=0,
                   help="index of the first image (each image gets the noise evaluate gives it, whatever the offset)")
    p.add_argument("--sigma", type=noise_std, default=0.2, help="noise std on [0, 1] pixels, or levels of 255 (51/255)")
    p.add_argument("--eval-seed", type=seed_number, default=1234, help="seed of the fixed noise")
    p.add_argument("--scale", type=positive_int, default=4, help="pixel upscaling of each 32x32 image")
    p.add_argument("-o", "--out-dir", type=path_arg, default=Path("."), help="folder for the two PNGs (replaced if there)")
    p.set_defaults(func=run)


MAX_PICTURE_PIXELS = 100_000_000  # the routing maps, the larger picture: about 300 MB in memory as RGB


def picture_pixels(rows: int, columns: int, scale: int) -> int:
    """The pixels of ``rows`` x ``columns`` upscaled 32x32 cells (the pictures' labels and padding left out)."""
    return rows * columns * (32 * scale) ** 2


def run(args: argparse.Namespace) -> int:
    import torch

    from moe_base.fileio import check_output_file, first_missing, not_written, publish_folder, remove_if_empty, staging_for_files
    from moe_model.data import fixed_noisy, load_cifar10, to_float
    from moe_model.visualize import denoise_grid, routing_maps

    if args.offset < 0:
        raise InputError(f"--offset must be >= 0 (got {args.offset})")
    if args.out_dir.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff") and not args.out_dir.is_dir():
        raise InputError(f"-o is the folder for the two PNGs (denoise_grid.png, routing_maps.png), and "
                         f"'{args.out_dir}' is named like a picture (a folder of that name would be made for them); give a "
                         f"folder, e.g. -o {args.out_dir.with_suffix('')}/")
    grid, maps = args.out_dir / "denoise_grid.png", args.out_dir / "routing_maps.png"
    for path in (grid, maps):
        check_output_file(path, overwrite=True)  # pictures are replaced; a folder that cannot be written is not
    model = load_model_from_args(args)
    columns = 1 + model.config.depth * len(model.config.expert_topk)  # the routing maps: the image, block x expert
    pixels = picture_pixels(args.num_images, columns, args.scale)
    if pixels > MAX_PICTURE_PIXELS:
        raise InputError(f"-n {args.num_images} at --scale {args.scale} makes routing maps of about "
                         f"{pixels / 1e6:,.0f} million pixels; at most "
                         f"{MAX_PICTURE_PIXELS / 1e6:.0f} million: lower --scale or -n")
    images = load_cifar10(args.data_dir, args.split)
    if args.offset >= len(images):
        raise InputError(f"--offset {args.offset} is past the end of the {args.split} split ({len(images)} images): "
                         f"give an --offset from 0 to {len(images) - 1}")
    if args.offset + args.num_images > len(images):  # it drew fewer rows than asked, without a word
        raise InputError(f"-n {args.num_images} from --offset {args.offset} runs past the end of the {args.split} "
                         f"split ({len(images)} images): at most -n {len(images) - args.offset} from there")
    # image k gets the noise evaluate gives it, whatever --offset: the split's noise is drawn from its first image
    # (noise drawn for the slice alone changed with --offset, and an image never looked as evaluate scored it)
    end = args.offset + args.num_images
    noisy = fixed_noisy(to_float(images[:end]), args.sigma, "clip", args.eval_seed)[args.offset :]
    clean = to_float(images[args.offset : end])
    with torch.no_grad():
        den, routing = model(noisy, return_routing=True)
    # both pictures are drawn first and then put in place together: an interrupted run leaves the old pair, not a
    # new grid beside old maps. The staging folder's name carries the process id, so that the next visualize into
    # this folder removes one that a killed run left (a tempfile folder without it stayed for good, megabytes each)
    made = first_missing(args.out_dir)  # removed again when stopped while drawing (an empty folder was left)
    try:
        with staging_for_files(args.out_dir, "visualize") as staging:  # makes --out-dir, checked above
            for path, draw in ((grid, lambda to: denoise_grid(noisy, den, clean, to, scale=args.scale)),
                               (maps, lambda to: routing_maps(noisy, routing, to, scale=args.scale))):
                try:
                    draw(staging / path.name)
                except InputError as e:  # a failed write: its message named the staging folder, removed by now
                    if not isinstance(e.__cause__, OSError):
                        raise
                    raise not_written(path, e.__cause__, "pictures") from e
            publish_folder(staging, args.out_dir, [grid.name, maps.name])
    except BaseException:
        remove_if_empty(args.out_dir, made)
        raise
    print(f"wrote {grid} and {maps}")
    return 0
