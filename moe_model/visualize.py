"""Pictures: a noisy | denoised | clean grid with per-image PSNR, and the router's per-patch routing maps."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from moe_base.fileio import atomic_write

from .metrics import psnr_per_image

# A perceptually ordered dark-blue -> teal -> yellow ramp (anchors picked by hand) for probabilities in [0, 1].
_RAMP = np.array([[13, 8, 135], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] floats (...,) -> uint8 RGB (..., 3) by linear interpolation on the ramp."""
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def psnr_label(image: torch.Tensor, clean: torch.Tensor, psnr: torch.Tensor) -> str:
    """'31.42 dB', or 'identical' for an image equal to the clean one (its PSNR is infinite: '200.00 dB' was shown,
    the clamp that keeps log10 finite)."""
    return "identical" if torch.equal(image, clean) else f"{float(psnr):.2f} dB"


def _to_pil(img: torch.Tensor, scale: int) -> Image.Image:
    arr = (img.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    pil = Image.fromarray(arr)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)


def _save_png(img: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def denoise_grid(noisy: torch.Tensor, denoised: torch.Tensor, clean: torch.Tensor, path: str | Path,
                 scale: int = 4) -> Image.Image:
    """One row per image: noisy | denoised | clean, each labelled with its PSNR against clean."""
    n, _, h, w = clean.shape
    cell_w, cell_h, label_h, pad = w * scale, h * scale, 14, 4
    header = 16
    canvas = Image.new("RGB", (3 * (cell_w + pad) + pad, header + n * (cell_h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(("noisy", "denoised", "clean")):
        draw.text((pad + c * (cell_w + pad), 2), title, fill="black")
    p_noisy, p_den = psnr_per_image(noisy, clean), psnr_per_image(denoised, clean)
    for i in range(n):
        y = header + i * (cell_h + label_h + pad)
        for c, (img, label) in enumerate(((noisy[i], psnr_label(noisy[i], clean[i], p_noisy[i])),
                                          (denoised[i], psnr_label(denoised[i], clean[i], p_den[i])), (clean[i], ""))):
            x = pad + c * (cell_w + pad)
            draw.text((x, y), label, fill="black")
            canvas.paste(_to_pil(img, scale), (x, y + label_h))
    _save_png(canvas, path)
    return canvas


def routing_maps(images: torch.Tensor, routing: list[torch.Tensor], path: str | Path, scale: int = 4) -> Image.Image:
    """Per image: the image, then for each block and expert the routing probability of each patch.

    routing: one (B, N, E) tensor per block, N = (H/p)^2 tokens in raster order. The colour scale spans the
    smallest to the largest probability in the figure (a balanced router stays near 1/E); the header gives it.
    """
    lo = min(float(r.min()) for r in routing)
    hi = max(float(r.max()) for r in routing)
    span = max(hi - lo, 1e-6)
    n, _, h, w = images.shape
    side = int(round(routing[0].shape[1] ** 0.5))
    cell = h * scale
    pad, header = 4, 42
    cols = 1 + sum(r.shape[-1] for r in routing)
    canvas = Image.new("RGB", (cols * (cell + pad) + pad, header + n * (cell + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), "image", fill="black")
    draw.text((pad, 28), f"colour: routing probability, dark {lo:.3f} -> yellow {hi:.3f}", fill="black")
    col = 1
    for b, r in enumerate(routing):
        for e in range(r.shape[-1]):
            draw.text((pad + col * (cell + pad), 2), f"block {b}", fill="black")
            draw.text((pad + col * (cell + pad), 14), f"expert {e}", fill="black")
            col += 1
    for i in range(n):
        y = header + i * (cell + pad)
        canvas.paste(_to_pil(images[i], scale), (pad, y))
        col = 1
        for r in routing:
            probs = r[i].reshape(side, side, -1).cpu().numpy()
            for e in range(probs.shape[-1]):
                tile = Image.fromarray(colormap((probs[..., e] - lo) / span)).resize((cell, cell), Image.NEAREST)
                canvas.paste(tile, (pad + col * (cell + pad), y))
                col += 1
    _save_png(canvas, path)
    return canvas
