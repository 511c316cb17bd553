"""moe-denoise train: the seed recipe by default, every setting overridable, resumable."""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
from pathlib import Path

from moe_base.errors import InputError, Interrupted, TrainingError

from . import HelpFormatter, add_data_args, noise_std, nonempty, number, positive_int, seed_number, thread_count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the denoiser on CIFAR-10 (resumable)",
                       description="Train on CIFAR-10 with Gaussian noise. Defaults reproduce the seed recipe: "
                                   "AdamW lr 1e-3, weight decay 1e-4, cosine schedule (per step), batch 64, MSE + "
                                   "0.01 x load-balance loss, gradient clipping 1.0, 30 epochs. Writes OUT_DIR/"
                                   "last.pt every epoch (for --resume) and OUT_DIR/best.safetensors + best.json "
                                   "(lowest validation loss). --resume --out-dir OUT_DIR continues a run with the "
                                   "settings it was started with, its device and thread count included; settings "
                                   "given with it must be the same, but for --data-dir, --device and --threads.",
                       formatter_class=HelpFormatter)
    _add_options(p)
    p.set_defaults(func=run)


LOSSES = ("mse", "psnr")  # moe_model.losses.LOSSES, written out: importing it imports torch (seconds, for --help)


def _add_options(p: argparse.ArgumentParser) -> None:
    from moe_base.config import PRESETS

    add_data_args(p)
    p.add_argument("--out-dir", default="runs/default", help="where checkpoints go")  # "" refused by validate
    p.add_argument("--preset", default="seed", choices=sorted(PRESETS), help="architecture preset")
    p.add_argument("--epochs", type=positive_int, default=30, help="passes over the training images")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per optimiser step")
    p.add_argument("--lr", type=number, default=1e-3, help="AdamW peak learning rate (cosine schedule to 0)")
    p.add_argument("--weight-decay", type=number, default=1e-4, help="AdamW weight decay")
    p.add_argument("--aux-weight", type=number, default=0.01, help="weight of the load-balance loss")
    p.add_argument("--loss", choices=LOSSES, default="mse",
                   help="mse: the seed's pixel MSE; psnr: mean per-image log-MSE (optimises the mean PSNR the "
                        "evaluation reports); the best checkpoint minimises the matching validation number")
    p.add_argument("--mse-floor", type=number, default=1e-10,
                   help="psnr loss: an image better than -10 log10(MSE_FLOOR) dB weighs as if it were at that level")
    p.add_argument("--blind", action="store_true",
                   help="blind training: each image its own noise level, uniform over [0, --sigma-max] (a share "
                        "exactly 0), clipped or not, a share gray with the same noise in every channel; "
                        "validation on the same mixture with fixed draws (--sigma is then unused)")
    p.add_argument("--sigma-max", type=noise_std, default=75 / 255,
                   help="--blind: highest noise level (std on [0, 1] pixels, or levels of 255: 75/255)")
    p.add_argument("--zero-share", type=number, default=0.05, help="--blind: share of clean (noise-free) inputs")
    p.add_argument("--unclipped-share", type=number, default=0.5,
                   help="--blind: share of images whose noisy values are not clipped to [0, 1]")
    p.add_argument("--gray-share", type=number, default=0.25,
                   help="--blind: share of images turned gray, with channel-identical noise")
    p.add_argument("--bayer-share", type=number, default=0.0,
                   help="--blind: share of the colour images given a camera's raw noise (one colour a pixel, "
                        "bilinearly demosaicked: correlated) instead of white noise")
    p.add_argument("--grad-clip", type=number, default=1.0, help="max gradient norm (0 = off)")
    p.add_argument("--sigma", type=noise_std, default=0.2, help="noise std on [0, 1] pixels, or levels of 255 (51/255)")
    p.add_argument("--seed", type=seed_number, default=0,
                   help="seed of the initial weights, the order of the images and their noise")
    p.add_argument("--eval-seed", type=seed_number, default=1234, help="seed of the fixed validation noise")
    p.add_argument("--max-train", type=positive_int, default=None, help="use only the first N training images")
    p.add_argument("--max-val", type=positive_int, default=None, help="use only the first N validation images")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ... (with --resume: "
                                                    "the run's)")
    p.add_argument("--threads", type=thread_count, default=None,
                   help="torch CPU threads (default: torch's choice; with --resume: the run's)")
    p.add_argument("--init-from", default=None, type=nonempty,
                   help="start from these weights (a file, or the name of shipped weights: blind, sigma20) instead "
                        "of a random init (fine-tuning, or a second cosine cycle)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out-dir where it stopped")
    p.add_argument("--stop-after-epoch", type=positive_int, default=None, metavar="N",
                   help="stop after epoch N, the schedule still that of --epochs (continue with --resume); for a "
                        "stage that was stopped early, such as stage B1 in docs/training.md of the moe-denoise source")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out-dir (without it, an existing run is never replaced)")
    p.add_argument("--no-progress", action="store_true",
                   help="per-epoch lines only: no bar on a terminal, no line a minute in a log")


_UNSET = object()


def given_options(args: argparse.Namespace) -> set[str]:
    """The destinations of the train options written on the command line (``args.argv``), whatever their value:
    the options are parsed again onto a namespace that already holds every destination, and argparse fills in a
    default only where a destination is missing."""
    from moe_denoise.cli import Parser

    probe = Parser(add_help=False)  # the command's kind of parser: it reads '--lr -1e-3' as the command did
    _add_options(probe)
    seen = argparse.Namespace(**dict.fromkeys(vars(args), _UNSET))
    probe.parse_known_args(args.argv[args.argv.index("train") + 1 :], namespace=seen)
    return {dest for dest, value in vars(seen).items() if value is not _UNSET}


BLIND_ONLY = ("sigma_max", "zero_share", "unclipped_share", "gray_share", "bayer_share")


def check_noise_options(given: set[str], blind: bool) -> None:
    """The noise options of the other kind of run would be ignored in silence: refused, naming the one to use."""
    if blind and "sigma" in given:
        raise InputError("--sigma is the one noise level of a run without --blind; a --blind run draws each image's "
                         "level over [0, --sigma-max]: give --sigma-max, or leave out --blind")
    wrong = [f"--{name.replace('_', '-')}" for name in BLIND_ONLY if name in given]
    if not blind and wrong:
        raise InputError(f"{', '.join(wrong)} shape the noise mixture of a --blind run, and this run is not blind "
                         f"(one level, --sigma): add --blind, or leave {'it' if len(wrong) == 1 else 'them'} out")


def interrupted_hint(out: Path) -> str:
    """What an interrupted run left: the epoch --resume continues from, or that no epoch had finished."""
    from moe_model.train import load_training_state

    if not (out / "last.pt").is_file():
        return f"no epoch had finished, so {out} holds no new run to continue"
    try:
        state = load_training_state(out / "last.pt")
        done, epochs = state.get("epoch"), (state.get("train_config") or {}).get("epochs")
    except Exception:  # noqa: BLE001 - the hint only; --resume itself says what is wrong with the file
        done = epochs = None
    if done and epochs and done >= epochs:  # a stop after the last epoch was saved, or an --overwrite stopped
        # before its first epoch (the old run is back): either way a finished run (it read 'kept as it was')
        return (f"the run in {out} has finished all {done} epoch{'s' if done != 1 else ''}; its weights are "
                f"{out / 'best.safetensors'}")
    after = f" after epoch {done}" if done else ""
    return f"the run{after} is kept; continue it with: moe-denoise train --resume --out-dir {out}"


def check_resumed_here(settings: dict, given: set[str], out: Path) -> None:
    """A run continues on the device and with the thread count it started with, unless told otherwise: said when
    this machine cannot give them (the weights of a run continued otherwise differ a little from an uninterrupted
    run's)."""
    import torch

    device, threads = str(settings.get("device") or "auto"), settings.get("threads")
    if "device" not in given and device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"the run in {out} was started on {device}, and torch sees no CUDA GPU here: continue it on "
                         f"the CPU with: moe-denoise train --resume --out-dir {shlex.quote(str(out))} --device cpu (its "
                         f"weights then differ a little from those of the run continued on {device})")
    cpus = os.cpu_count() or 1
    if "threads" not in given and isinstance(threads, int) and threads > cpus:
        print(f"note: the run started with {threads} threads and continues with them, for the weights of the run "
              f"uninterrupted; this machine has {cpus} CPUs, so it may be slower: --threads {cpus} uses fewer (the "
              f"weights then differ a little)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from moe_base.progress import progress_mode
    from moe_model.train import TrainConfig, saved_settings, train

    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    settings["data_dir"] = str(Path(settings["data_dir"]).absolute())  # --resume from another folder finds it
    given = given_options(args)
    if args.resume:  # what is not written on the command line continues as the run was started: --device and
        # --threads too (they may be given otherwise; left out, the resumed run took torch's thread count and other
        # weights than the same run uninterrupted, and a --device cpu run moved to a GPU)
        kept = given | {"out_dir"}
        settings.update({k: v for k, v in saved_settings(args.out_dir).items() if k not in kept})
        check_resumed_here(settings, given, Path(args.out_dir))
    check_noise_options(given, settings["blind"])
    from weights import SHIPPED

    init = str(settings["init_from"])
    if "init_from" in given and (not Path(init).exists() or (Path(init).is_dir() and init in SHIPPED)):
        # "blind", "sigma20": the name, also with a folder of that name here (photos in ./blind), as --weights takes it
        from runtime.torch_runner import resolve_weights

        # resumed, the run recorded the file a name stood for: the name is resolved to compare with it (a path that
        # is gone is left as given: a resumed run does not read it again)
        if not args.resume or settings["init_from"] in SHIPPED:
            settings["init_from"] = str(resolve_weights(settings["init_from"], option="--init-from"))
    elif "init_from" in given:  # recorded where it is, as --data-dir is (it was kept as typed, relative to the folder
        # the run started in: a resume naming it './x' or by its full path was refused as another setting)
        settings["init_from"] = str(Path(init).absolute())
    if "mse_floor" in given and settings["loss"] != "psnr":
        raise InputError("--mse-floor weighs images in the psnr loss, and the loss is mse: add --loss psnr, or leave "
                         "--mse-floor out")
    cfg = TrainConfig(**settings)
    cfg.validate(lambda name: "--" + name.replace("_", "-"))  # named as the options the user typed
    command = "moe-denoise " + " ".join(shlex.quote(a) for a in args.argv)
    try:  # SIGTERM comes here as Ctrl-C does (moe_denoise.cli.sigterm_as_interrupt)
        result = train(cfg, resume=args.resume, progress=progress_mode(not args.no_progress), command=command,
                       overwrite=args.overwrite, stop_after_epoch=args.stop_after_epoch)
    except KeyboardInterrupt as e:  # the epoch it stopped in (from train), then what is kept and how to go on
        raise Interrupted.said(e, "; ".join(filter(None, (str(e), interrupted_hint(Path(args.out_dir)))))) from None
    best, loss = Path(args.out_dir) / "best.safetensors", result["best_val_loss"]
    what = " (minus the PSNR in dB: --loss psnr)" if cfg.loss == "psnr" else ""
    if best.is_file():
        print(f"best validation loss {loss:.6f}{what}; weights: {best}")
    elif math.isfinite(loss):  # written at that epoch, and removed since: it is rewritten only when an epoch beats it
        raise InputError(f"{best} is missing: it was written at the epoch with the best validation loss "
                         f"({loss:.6f}{what}) and has been moved or deleted since; last.pt holds the last epoch's "
                         f"weights only. Restore it, or train again into another --out-dir")
    else:  # said as errors, on standard error (exit 2): they were printed as results, with exit 1 (a parity failure)
        raise TrainingError(f"no epoch finished with a finite validation loss (it was {loss}: the model diverged), so "
                            f"no weights were written to {best}. Train again with a lower --lr (it was {cfg.lr:g})"
                            + ("" if cfg.grad_clip else " and with --grad-clip on") + f", adding --overwrite to "
                            f"replace the run in {args.out_dir}")
    return 0
