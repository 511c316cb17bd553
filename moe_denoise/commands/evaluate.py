"""moe-denoise evaluate: PSNR / SSIM per image on a CIFAR-10 split, both noise protocols."""
from __future__ import annotations

import argparse

from . import add_data_args, add_weights_args, load_model_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="PSNR / SSIM of a model on a CIFAR-10 split",
                       description="Per-image PSNR and SSIM (data_range 1, scikit-image SSIM), mean +- std over "
                                   "the split, under the seed protocol (clip: clamp(x + sigma N, 0, 1)) and the "
                                   "unclipped protocol (x + sigma N), with the noisy input as a reference row. "
                                   "The noise is fixed by --eval-seed.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_weights_args(p)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--sigma", type=float, default=0.2)
    p.add_argument("--protocol", default="both", choices=["clip", "unclipped", "both"])
    p.add_argument("--eval-seed", type=int, default=1234)
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-ssim", action="store_true", help="skip SSIM (no scikit-image needed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from moe_model.data import load_cifar10, to_float
    from moe_model.evaluate import evaluate_model, format_table

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1 (got {args.limit})")
    model = load_model_from_args(args)
    clean = to_float(load_cifar10(args.data_dir, args.split)[: args.limit])
    protocols = ("clip", "unclipped") if args.protocol == "both" else (args.protocol,)
    result = evaluate_model(model, clean, sigma=args.sigma, protocols=protocols, eval_seed=args.eval_seed,
                            batch_size=args.batch_size, with_ssim=not args.no_ssim, progress=not args.json)
    result.update(split=args.split, weights=str(args.weights or "shipped"), preset=model.config.name)
    if args.json:
        from moe_denoise.cli import print_json

        print_json(result)
    else:
        print(f"weights: {result['weights']} (preset '{result['preset']}'), split: {args.split}")
        print(format_table(result))
    return 0
