"""How the clean-input guard reads and handles two kinds of noise on scikit-image's photos.

White noise (one std for every pixel, the evaluation's draw) and camera-like noise (variance linear in
brightness, ``a x + (0.5/255)^2``, ``a`` set so that mid-gray gets the named std), both clipped to [0, 1]; with
``--jpeg Q ...``, also the white-noise photo saved as 8-bit JPEG at each quality ``Q`` and read back; with
``--bayer`` (colour photos), a camera's raw noise: white noise of the named std on one colour per pixel (an RGGB
Bayer mosaic), then bilinear demosaicing, which spreads it over neighbours and channels (correlated noise, rms
below the named std), scored against the clean photo mosaicked and demosaicked the same way. For each
photo and level: the noise's true root-mean-square std, the guard's estimate and its range over brightness, the
input weight, and the PSNR of the noisy input, the model alone, the guard as ``moe-denoise denoise`` applies it
(``scales``: it reads the noise at two scales for a JPEG file and for pixels that were JPEG-compressed,
:func:`runtime.jpeg_traces.two_scales_reason`; with ``--as-png`` the JPEG versions are taken as PNG files holding
the same pixels), the guard with the other reading (``other``), and the guard told the true root-mean-square (one
level for all pixels). Run from the repository root::

    python -m tools.guard_noise [--photos camera coffee astronaut] [--levels 3 6 10 15] [--jpeg 85 70] [--as-png]
                                [--bayer] [--weights blind]

About 10 minutes on the 2-core CPU with the defaults; prints a table (docs/evaluation.md quotes it).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from tools import level_255, run_tool


def noisy_versions(clean: np.ndarray, name: str, level255: float,
                   jpeg: tuple[int, ...] = ()) -> dict[str, tuple[np.ndarray, float]]:
    """``{"white": (noisy, rms std), "camera": (noisy, rms std), "jpegQ": ...}`` for one photo at one level (on the
    0-255 scale); ``jpegQ``: the white-noise photo, 8-bit, through JPEG at quality Q (its rms: the white noise's)."""
    from benchmarks.quality import noise_draw

    draw = noise_draw(name, clean.shape, 0)
    white = np.clip(clean + level255 / 255 * draw, 0, 1).astype(np.float32)
    std = np.sqrt((level255 / 255) ** 2 / 0.5 * clean + (0.5 / 255) ** 2)
    camera = np.clip(clean + std * draw, 0, 1).astype(np.float32)
    versions = {"white": (white, level255 / 255), "camera": (camera, float(np.sqrt(np.mean(std ** 2))))}
    for quality in jpeg:
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.rint(white * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
        versions[f"jpeg{quality}"] = (decoded, level255 / 255)
    return versions


def demosaicked(image: np.ndarray) -> np.ndarray:
    """An HxWx3 image sampled through an RGGB Bayer mosaic and bilinearly demosaicked, as blind training's
    ``--bayer-share`` draws it (:func:`moe_model.data.demosaicked`, mosaic phase 0)."""
    import torch

    from moe_model.data import demosaicked as through_sensor

    batch = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64)).permute(2, 0, 1)[None]
    return through_sensor(batch, torch.zeros(1, dtype=torch.long))[0].permute(1, 2, 0).numpy()


def bayer_version(clean: np.ndarray, name: str, level255: float) -> tuple[np.ndarray, float, np.ndarray]:
    """(noisy, its rms noise, its clean reference): white noise of std ``level255``/255 before demosaicing."""
    from benchmarks.quality import noise_draw

    reference = np.clip(demosaicked(clean.astype(np.float64)), 0, 1)
    noisy = np.clip(demosaicked(clean + level255 / 255 * noise_draw(name, clean.shape, 0)), 0, 1)
    return noisy.astype(np.float32), float(np.sqrt(np.mean((noisy - reference) ** 2))), reference.astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from moe_denoise.commands import whole_number

    p.add_argument("--photos", nargs="+", default=["camera", "coffee", "astronaut"],
                   help="photos of benchmarks.quality (scikit-image's sample photos)")
    p.add_argument("--levels", nargs="+", type=level_255, default=[3, 6, 10, 15], help="std at mid-gray, 0-255 scale")
    p.add_argument("--jpeg", nargs="*", type=lambda t: whole_number(t, 1, 95, "a JPEG quality from 1 to 95"),
                   default=[], help="also the white-noise photo through JPEG at these "
                   "qualities (1-95)")
    p.add_argument("--as-png", action="store_true", help="take the JPEG versions as PNG files holding the same pixels "
                   "(the two-scale reading then rests on finding JPEG in the pixels)")
    p.add_argument("--bayer", action="store_true", help="also raw-like noise through a Bayer mosaic and demosaicing "
                   "(colour photos)")
    p.add_argument("--weights", default="blind", help="weights by name or path (default: the blind weights)")
    args = p.parse_args(argv)

    from benchmarks.quality import load_photo, model_tile_fn
    from moe_denoise.commands import resolve_weights
    from moe_model.baselines import psnr
    from moe_model.checkpoint import load_model
    from runtime.guard import blend
    from runtime.jpeg_traces import two_scales_reason
    from runtime.tiling import denoise_array, guard_for_array

    fn = model_tile_fn(load_model(resolve_weights(Path(args.weights))))
    t0 = time.perf_counter()
    print(f"{'photo':<10} {'noise':<7} {'level':>5} {'rms':>6} {'scales':>6} {'estimate':>9} {'range':>11} "
          f"{'weight':>6} | {'input':>6} {'model':>6} {'guard':>6} {'other':>6} {'told rms':>8}  (std on the 0-255 "
          f"scale, PSNR in dB)")
    for name in args.photos:
        clean = load_photo(name)
        for level in args.levels:
            rows = [(kind, noisy, rms, clean) for kind, (noisy, rms) in
                    noisy_versions(clean, name, level, tuple(args.jpeg)).items()]
            if args.bayer and clean.ndim == 3:
                rows.append(("bayer", *bayer_version(clean, name, level)))
            for kind, noisy, rms, reference in rows:
                out = denoise_array(noisy, fn, guard=False)
                file_format = "JPEG" if kind.startswith("jpeg") and not args.as_png else "PNG"
                two = two_scales_reason(file_format, noisy, 1.0) is not None  # as 'denoise' decides for the file
                guard, other = (guard_for_array(noisy, fn, two_scales=t, denoised=out) for t in (two, not two))
                told = guard_for_array(noisy, fn, sigma=rms, denoised=out)
                scores = [psnr(noisy, reference), psnr(np.clip(out, 0, 1), reference)] + [
                    psnr(np.clip(blend(noisy, out, d.input_weight), 0, 1), reference) for d in (guard, other, told)]
                low, high = guard.sigma_range or (float("nan"), float("nan"))
                estimate = float("nan") if guard.sigma is None else guard.sigma * 255
                print(f"{name:<10} {kind:<7} {level:>5g} {rms * 255:>6.2f} {1 + two:>6} {estimate:>9.2f} "
                      f"{low * 255:>5.1f}-{high * 255:<5.1f} {guard.input_weight:>6.2f} | "
                      + " ".join(f"{v:>6.2f}" for v in scores[:4]) + f" {scores[4]:>8.2f}", flush=True)
    print(f"({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    run_tool(main)
