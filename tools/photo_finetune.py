"""Fine-tune weights on crops of whole photos (packages' sample photos), to measure what photo training data does.

A diagnostic for issue 15's last target (camera at sigma 0.2 >= the best Gaussian blur + 4 dB); the shipped
weights are trained on CIFAR-10 only (docs/training.md). The questions it answers:

* ``--photos camera`` with the target's own image: an oracle (the network sees the clean test photo), so an upper
  bound on what this architecture reaches on camera with ideal data. Never shipped, never a result.
* ``--photos`` other photos than the one evaluated: does photo data move the score on a photo not seen?
* ``--blind --cifar-share S --photos`` none of which the evaluation uses (``HELD_OUT_SET``): the blind recipe on
  photo crops mixed with CIFAR-10 images, a candidate for the default weights.
* ``--view 64`` with either of the first two: does a larger view than the 32 x 32 tile (the same parameters, the
  learned positions resized) lift the score? ``--score-camera`` scores camera tiled at that view.
* ``--grow ffn_hidden=768 refine_channels=96`` with the oracle: does a wider network (over the 650k budget) lift
  the ceiling? The grown network starts as the same function as ``--init`` (``moe_model.train.warm_start``).

Crops are ``TILE`` x ``TILE`` (the tiles the photo pipeline feeds; ``--view`` others), at a random place, flipped
and turned; a gray photo is fed as runtime.tiling feeds it (three equal channels, the same noise in each). Noise:
clipped Gaussian at ``--sigma`` (loss: MSE + the router's load-balance term, as training), or ``--blind``. The
result is written with its JSON (the settings, the starting weights' origin), as ``moe-denoise train`` writes;
evaluate it with ``moe-denoise evaluate --weights OUT``.

    python -m tools.photo_finetune --photos camera --sigma 0.2 --minutes 20 --out runs/oracle/camera.safetensors
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moe_base.errors import InputError
from tools import run_tool
from weights import DEFAULT_WEIGHTS

if TYPE_CHECKING:  # torch is imported where used: --help and argument errors answer without it (5 s)
    import torch

TILE = 32


# Photos that ship with installed packages and are none of the evaluation's (benchmarks.quality.PHOTOS: astronaut,
# chelsea (= cat), coffee, camera, moon): a training set for photos that leaves every evaluated photo out.
HELD_OUT_SET = ("rocket", "stereo_motorcycle", "clock", "coins", "hubble_deep_field", "immunohistochemistry",
                "retina", "brick", "grass", "gravel", "page", "text", "pywt:aero", "pywt:ascent",
                "matplotlib:grace_hopper")


def _photo(name: str) -> list[np.ndarray]:
    """One named photo (or the views of a stereo pair) as arrays: ``NAME`` from skimage.data, ``pywt:NAME`` from
    pywt.data, ``matplotlib:NAME`` from matplotlib's sample data (NAME.jpg)."""
    source, _, short = name.rpartition(":")
    if source == "pywt":
        import pywt.data

        loader = getattr(pywt.data, short, None)
    elif source == "matplotlib":
        import matplotlib.cbook
        from PIL import Image

        def loader() -> np.ndarray:
            with Image.open(matplotlib.cbook.get_sample_data(f"{short}.jpg")) as im:
                return np.asarray(im.convert("RGB"))
    else:
        import skimage.data

        loader = getattr(skimage.data, short, None)
    if loader is None or not callable(loader):
        raise InputError(f"no sample photo {name!r}; give scikit-image names (camera, rocket, coins, ...), "
                         f"pywt:aero, pywt:ascent or matplotlib:grace_hopper")
    x = loader()
    if short == "stereo_motorcycle":
        return [np.asarray(x[0]), np.asarray(x[1])]  # the two views (the third array is a disparity map)
    return [np.asarray(x)]


def load_photos(names: list[str], as_gray: bool = False) -> list[np.ndarray]:
    """Sample photos by name (:func:`_photo`), as float32 HxWx3 in [0, 1] (gray ones as three equal channels;
    ``as_gray``: colour ones too, as their BT.601 luminance)."""
    names = [n for name in names for n in (HELD_OUT_SET if name == "held-out" else (name,))]
    photos = []
    for x in (view for name in names for view in _photo(name)):
        x = x.astype(np.float32) / (65535.0 if x.dtype == np.uint16 else 255.0 if x.dtype == np.uint8 else 1.0)
        if x.ndim == 3 and as_gray:
            x = x[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        if x.ndim == 2:
            x = np.repeat(x[:, :, None], 3, axis=2)
        photos.append(np.ascontiguousarray(x[:, :, :3]))
    return photos


def crops(photos: list[np.ndarray], gray: list[bool], n: int, rng: np.random.Generator,
          size: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``size`` x ``size`` crops (N, 3, size, size), flipped and turned at random, and which are gray
    (N,)."""
    import torch

    out = np.empty((n, 3, size, size), np.float32)
    is_gray = np.empty(n, bool)
    for i in range(n):
        k = int(rng.integers(len(photos)))
        p = photos[k]
        y, x = int(rng.integers(p.shape[0] - size + 1)), int(rng.integers(p.shape[1] - size + 1))
        c = np.rot90(p[y:y + size, x:x + size], int(rng.integers(4)))
        out[i] = (c[:, ::-1] if rng.integers(2) else c).transpose(2, 0, 1)
        is_gray[i] = gray[k]
    return torch.from_numpy(out), torch.from_numpy(is_gray)


def positive_noise(text: str) -> float:
    """argparse type: --sigma, a noise std on [0, 1] pixels above 0 (0 trained on clean crops, a negative std ran)."""
    from moe_denoise.commands import noise_std

    value = noise_std(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a noise std above 0 (e.g. 0.1 or 25/255), got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import positive_int, positive_number, seed_number

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", nargs="+", required=True,
                   help="sample photos to train on (see _photo); 'held-out': HELD_OUT_SET, none of the evaluated ones")
    p.add_argument("--as-gray", action="store_true", help="train on the colour photos' luminance (gray crops)")
    p.add_argument("--init", default=str(DEFAULT_WEIGHTS),  # 'weights/...' held only in the repository's root
                   help="the weights to start from (default: the shipped blind weights)")
    p.add_argument("--out", type=Path, required=True, help="where to write the weights (.safetensors, + .json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its .json)")
    p.add_argument("--sigma", type=positive_noise, default=None,
                   help="one noise level for every crop (on [0, 1] pixels)")
    p.add_argument("--sigma-max", type=positive_noise, default=75 / 255, help="without --sigma: levels uniform in [0, this]")
    p.add_argument("--minutes", type=positive_number, default=20.0, help="train for this long (whole steps)")
    p.add_argument("--blind", action="store_true",
                   help="the blind recipe's noise (moe_model.data.BlindNoise: levels uniform in [0, --sigma-max], a "
                        "tenth clean, half unclipped, a quarter of the colour crops gray) and its loss (per-image "
                        "log-MSE, capped at 50 dB), instead of --sigma")
    p.add_argument("--cifar-share", type=float, default=0.0,
                   help="this share of every batch are CIFAR-10 training images (the first 45,000), as in training")
    p.add_argument("--data-dir", default="../shared/data/cifar-10-batches-py", help="CIFAR-10 for --cifar-share")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many steps if sooner")
    p.add_argument("--view", type=int, default=TILE,
                   help="crop side in pixels, a multiple of 4 (the patch): above 32 the network sees a larger view "
                        "than it was trained for, its positions resized (SmallViT.positions); only --score-camera "
                        "scores such weights (the pipeline tiles 32 x 32)")
    p.add_argument("--score-camera", action="store_true",
                   help="at the end, camera at sigma 0.2 (clipped; the noise of 'moe-denoise evaluate --suite "
                        "photos') tiled at --view with half-view overlap, and the best Gaussian blur's score")
    p.add_argument("--grow", nargs="+", default=[], metavar="FIELD=N",
                   help="widen --init's architecture first: ffn_hidden, refine_channels, refine_features or "
                        "router_hidden set to N (not smaller than now); the new units start so that the network "
                        "computes what --init did")
    p.add_argument("--lr", type=positive_number, default=5e-5)
    p.add_argument("--batch", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_number, default=0)
    p.add_argument("--threads", type=positive_int, default=2)
    args = p.parse_args(argv)

    import torch

    from moe_base.fileio import check_output_file
    from moe_model.checkpoint import load_model, origin, save_weights, sidecar_path
    from moe_model.data import BlindNoise, blind_noisy, load_cifar10, to_float
    from moe_model.losses import total_loss

    if args.out.suffix != ".safetensors":
        raise InputError(f"--out must end in .safetensors (its JSON goes beside it); got {args.out}")
    for path in (args.out, sidecar_path(args.out)):  # now, not after the --minutes of training it would lose
        check_output_file(path, args.overwrite)
    if (args.sigma is None) == (not args.blind):
        raise InputError("give one of --sigma (one noise level) and --blind (the blind recipe's noise)")
    if not 0.0 <= args.cifar_share < 1.0:
        raise InputError(f"--cifar-share must be in [0, 1); got {args.cifar_share}")
    if args.view < TILE or args.view % 4:
        raise InputError(f"--view must be a multiple of 4 (the patch size), at least {TILE}; got {args.view}")
    if args.view != TILE and args.cifar_share > 0:
        raise InputError(f"--cifar-share needs --view {TILE}: CIFAR-10's images are {TILE} x {TILE}")
    cifar = load_cifar10(args.data_dir, "train") if args.cifar_share > 0 else None
    n_cifar = int(round(args.batch * args.cifar_share))
    spec = BlindNoise(sigma_max=args.sigma_max, zero_share=0.1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    photos = load_photos(args.photos, args.as_gray)
    small = [f"{n} ({ph.shape[1]}x{ph.shape[0]})" for n, ph in zip(args.photos, photos) if min(ph.shape[:2]) < args.view]
    if small:  # numpy's 'high <= 0' came from the crop
        raise InputError(f"--view {args.view} is larger than photo(s) {', '.join(small)}: crops are {args.view} x "
                         f"{args.view}; choose a smaller --view or larger photos")
    gray = [bool(np.array_equal(ph[:, :, 0], ph[:, :, 1]) and np.array_equal(ph[:, :, 1], ph[:, :, 2]))
            for ph in photos]
    model = grown(load_model(args.init), args.grow, args.init)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    start, steps, recent = time.monotonic(), 0, []
    while time.monotonic() - start < args.minutes * 60 and (args.max_steps is None or steps < args.max_steps):
        clean, is_gray = crops(photos, gray, args.batch - n_cifar, rng, args.view)
        if cifar is not None:
            clean = torch.cat([clean, to_float(cifar[rng.integers(len(cifar), size=n_cifar)])])
            is_gray = torch.cat([is_gray, torch.zeros(n_cifar, dtype=torch.bool)])
        n = len(clean)
        if args.blind:  # gray photos get the gray share's noise (one draw in all channels), as the tiler feeds them
            noisy, target = torch.empty_like(clean), torch.empty_like(clean)
            for mask, share in ((is_gray, 1.0), (~is_gray, spec.gray_share)):
                if mask.any():
                    noisy[mask], target[mask], _ = blind_noisy(clean[mask], replace(spec, gray_share=share))
            clean = target
        else:
            noise = torch.randn(clean.shape)
            noise = torch.where(is_gray.view(n, 1, 1, 1), noise[:, :1].expand_as(noise), noise)
            noisy = (clean + args.sigma * noise).clamp(0.0, 1.0)
        output, routing = model(noisy, return_routing=True)
        loss, mse, _ = total_loss(output, clean, routing, kind="psnr" if args.blind else "mse", mse_floor=1e-5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        steps += 1
        recent = (recent + [float(mse.detach())])[-200:]
        if steps % 200 == 0:
            psnr = -10 * np.log10(np.mean(recent))
            print(f"step {steps}: {time.monotonic() - start:.0f}s, training PSNR (last 200 steps) {psnr:.2f} dB",
                  flush=True)
    model.eval()
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    save_weights(model, args.out, {"experiment": {"tool": "tools.photo_finetune", "command": " ".join(sys.argv),
                                                  "settings": settings, "steps": steps,
                                                  "note": "a diagnostic, not shipped weights"},
                                   "training": {"init_from": origin(args.init)}})
    print(f"wrote {args.out} after {steps} steps ({time.monotonic() - start:.0f}s)")
    if args.score_camera:
        print(score_camera(model, args.view))
    return 0


GROWABLE = ("ffn_hidden", "refine_channels", "refine_features", "router_hidden")


def grown(model: torch.nn.Module, grow: list[str], init: str) -> torch.nn.Module:
    """``model`` (loaded from ``init``) widened by ``grow`` (FIELD=N items, GROWABLE fields only, none narrower than
    now), warm-started from ``init`` so that it computes what ``init`` did; ``model`` itself when ``grow`` is empty."""
    if not grow:
        return model
    from moe_model.model import SmallViT, count_parameters
    from moe_model.train import warm_start

    sizes = {}
    for item in grow:
        field, _, value = item.partition("=")
        if field not in GROWABLE or not value.isdigit() or int(value) < getattr(model.config, field):
            raise InputError(f"--grow {item}: expected FIELD=N with FIELD one of {', '.join(GROWABLE)} and N at "
                             f"least its value now ({', '.join(f'{f}={getattr(model.config, f)}' for f in GROWABLE)})")
        sizes[field] = int(value)
    config = replace(model.config, name=f"{model.config.name}+grown", **sizes)
    wide = SmallViT(config)
    warm_start(wide, init, print)
    print(f"grown {', '.join(f'{f} {getattr(model.config, f)} -> {n}' for f, n in sizes.items())}: "
          f"{count_parameters(model):,} -> {count_parameters(wide):,} parameters")
    return wide


def score_camera(model: torch.nn.Module, view: int) -> str:
    """Camera at sigma 0.2, clipped, with the noise ``moe-denoise evaluate --suite photos`` draws (seed 0), tiled at
    ``view`` (overlap half a view): the model's PSNR and the best Gaussian blur's, as one line."""
    from benchmarks.quality import TARGET_PHOTO, TARGET_SIGMA, load_photo, model_tile_fn, noise_draw, noisy_photo
    from moe_model.baselines import DEFAULT_BLUR_GRID, best_gaussian_blur, psnr
    from runtime.tiling import denoise_array

    clean = load_photo(TARGET_PHOTO)
    noisy = noisy_photo(clean, TARGET_SIGMA, noise_draw(TARGET_PHOTO, clean.shape, 0))
    out = denoise_array(noisy, model_tile_fn(model), tile=view, overlap=view // 2, guard=False)
    blur = psnr(np.clip(best_gaussian_blur(noisy, clean, DEFAULT_BLUR_GRID)["image"], 0, 1), clean)
    got = psnr(np.clip(out, 0, 1), clean)
    return (f"{TARGET_PHOTO} at sigma {TARGET_SIGMA} (clipped), tiled at {view} x {view}: PSNR {got:.2f} dB; best "
            f"Gaussian blur {blur:.2f} dB; difference {got - blur:+.2f} dB")


if __name__ == "__main__":
    run_tool(main)
