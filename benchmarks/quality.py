"""Denoising quality on whole photos across noise levels, and the PSNR-against-sigma plot of a whole evaluation.

Photos are scikit-image's sample photos (``skimage.data``; public domain), denoised the way a user's photo is:
tiled by :func:`runtime.tiling.denoise_array` (gray photos go through its gray path), the output clipped to [0, 1]
as writing the photo would. The noise is clipped (``clamp(x + sigma N, 0, 1)``, the only kind a photo file can
hold; ``denoise_array`` refuses pixels outside [0, 1]); a gray photo gets one noise draw, the same in the three
channels the tiler feeds the model. One standard-normal draw per photo (from ``seed`` and the photo's name) is
scaled to every level, so the levels differ by their scale only. Reference rows: the noisy input, the best Gaussian
blur (the width of a small grid giving the best PSNR: an oracle) and BM3D (told the true sigma; slow, so only on
the photos named). Sizes are kept as the photos come (512x512, 451x300, 600x400). With ``guard``, every model
is scored twice: as it is, and with the clean-input guard (``runtime.guard``) that ``moe-denoise denoise`` applies
by default.
"""
from __future__ import annotations

import inspect
import math
import textwrap
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from moe_base.errors import InputError, MissingBackendError, repeated
from moe_base.progress import Progress
from moe_model.baselines import DEFAULT_BLUR_GRID, best_gaussian_blur, bm3d_denoise, psnr
from moe_model.evaluate import BM3D, DEFAULT_SIGMAS_255, NOISY, format_grid, format_targets, sigma_key, target_record
from runtime.guard import blend
from runtime.tiling import TileFn, denoise_array, guard_for_array

PHOTOS: dict[str, str] = {"astronaut": "colour", "chelsea": "colour", "coffee": "colour", "camera": "gray",
                          "moon": "gray"}
"""The default photos and their kind."""
DEFAULT_BM3D_PHOTOS: tuple[str, ...] = ("camera", "chelsea")
BLUR = "best Gaussian blur"
TARGET_PHOTO, TARGET_SIGMA, BLUR_MARGIN_DB = "camera", 0.2, 4.0  # issue 15: camera at 0.2 beats the blur by >= 4 dB
CLEAN_PHOTO_DB = 40.0
PLOT_TOP_DB = 50.0  # the plot's ceiling: BM3D told sigma 0 returns its input (> 100 dB), which would flatten the rest


def load_photo(name: str) -> np.ndarray:
    """``skimage.data.<name>()`` as float32 in [0, 1]: HxW for a gray photo, HxWx3 for a colour one."""
    try:
        import skimage.data
    except ImportError as e:
        raise MissingBackendError("the photo evaluation needs scikit-image, which is not installed: "
                          "pip install 'moe-denoise[eval]'") from e
    loader = getattr(skimage.data, name, None)
    if not callable(loader) or name.startswith("_") or name in NOT_SAMPLES or _needs_arguments(loader):
        raise InputError(f"unknown photo {name!r}: expected the name of a scikit-image sample photo "
                         f"(skimage.data), e.g. {', '.join(PHOTOS)}")
    try:  # a sample skimage fetches on first use needs pooch and the network: a traceback, after the other photos
        image = np.asarray(loader())
    except Exception as e:  # noqa: BLE001 - re-raised as the user's to fix, with the reason
        reason = textwrap.shorten(f"{type(e).__name__}: {e}", 300, placeholder=" ...")
        raise InputError(f"skimage.data.{name}() could not be loaded ({reason}); the samples installed with "
                         f"scikit-image need no download, e.g. {', '.join(PHOTOS)}") from e
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(f"skimage.data.{name}() is {image.dtype} {image.shape}; expected an 8-bit gray (HxW) or "
                         f"RGB (HxWx3) photo such as {', '.join(PHOTOS)}")
    return image.astype(np.float32) / 255.0


def load_photos(names: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`load_photo` of each of ``names``, all before any work; InputError for a name given twice (it was scored
    again, counted twice in the times, and the progress said "4 of 3 levels") or a photo that cannot be loaded."""
    twice = repeated(names)
    if twice:
        raise InputError(f"photos {twice} are named more than once; name each photo once")
    return {name: load_photo(name) for name in names}


NOT_SAMPLES = ("download_all",)  # callables of skimage.data that are no sample (this one downloads every sample)


def _needs_arguments(fn: Any) -> bool:
    """True for a callable that cannot be called without arguments (skimage.data.file_hash(fname), ...)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               for p in params)


def noise_draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The standard-normal draw of one photo (fixed by ``seed`` and the photo's name), float32 of ``shape``."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.standard_normal(shape, dtype=np.float32)


def noisy_photo(clean: np.ndarray, sigma: float, draw: np.ndarray) -> np.ndarray:
    """The photos' protocol: ``clean`` plus ``sigma`` (on [0, 1] pixels) times its :func:`noise_draw`, clipped."""
    return np.clip(clean + np.float32(sigma) * draw, 0.0, 1.0)


def model_tile_fn(model: Any) -> TileFn:
    """A torch model as the tile function :func:`runtime.tiling.denoise_array` calls."""
    import torch

    model.eval()
    device = next(model.parameters()).device

    def fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch).to(device)).cpu().numpy()

    return fn


def photo_ssim(pred: np.ndarray, clean: np.ndarray) -> float:
    from moe_model.metrics import ssim_per_image

    if clean.ndim == 2:
        return float(ssim_per_image(pred[None, None], clean[None, None])[0])
    return float(ssim_per_image(pred.transpose(2, 0, 1)[None], clean.transpose(2, 0, 1)[None])[0])


def _score(pred: np.ndarray, clean: np.ndarray, with_ssim: bool, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"psnr": psnr(pred, clean)}
    if with_ssim:
        row["ssim"] = photo_ssim(pred, clean)
    row.update(extra)
    return row


def guarded_label(label: str) -> str:
    """The row of ``label``'s weights with the clean-input guard (runtime.guard), as ``moe-denoise denoise`` runs."""
    return f"{label} + guard"


def _level(name: str, clean: np.ndarray, noisy: np.ndarray, sigma: float, fns: Mapping[str, TileFn],
           run_bm3d: bool, blur_grid: Sequence[float], with_ssim: bool,
           seconds: dict[str, float], guard: bool = False) -> dict[str, dict[str, Any]]:
    """Every method's row for one photo at one noise level (with ``guard``, each model's guarded row too)."""
    rows = {NOISY: _score(noisy, clean, with_ssim)}
    blur = best_gaussian_blur(noisy, clean, blur_grid)
    rows[BLUR] = _score(np.clip(blur["image"], 0, 1), clean, with_ssim, blur_sigma=blur["blur_sigma"],
                        at_grid_edge=blur["at_grid_edge"])
    if run_bm3d:
        t0 = time.perf_counter()
        out = bm3d_denoise(noisy, sigma)
        seconds[BM3D] = seconds.get(BM3D, 0.0) + time.perf_counter() - t0
        rows[BM3D] = _score(np.clip(out, 0, 1), clean, with_ssim)
    for label, fn in fns.items():
        t0 = time.perf_counter()
        out = denoise_array(noisy, fn, guard=False)
        took = time.perf_counter() - t0
        seconds[label] = seconds.get(label, 0.0) + took
        rows[label] = _score(np.clip(out, 0, 1), clean, with_ssim)
        if guard:  # the guard's decision, then its blend of this same output (what denoise_array(guard=...) does)
            t0 = time.perf_counter()
            decision = guard_for_array(noisy, fn, denoised=out)  # f(x): this output, when the guard samples it all
            blended = blend(noisy, out, decision.input_weight)
            name = guarded_label(label)  # its time: the denoising it shares plus the guard's own
            seconds[name] = seconds.get(name, 0.0) + took + time.perf_counter() - t0
            rows[name] = _score(np.clip(blended, 0, 1), clean, with_ssim, input_weight=decision.input_weight,
                                guard_sigma=decision.sigma)
    return rows


def evaluate_photos(models: Mapping[str, Any], names: Sequence[str] = tuple(PHOTOS),
                    sigmas255: Sequence[float] = DEFAULT_SIGMAS_255, bm3d_names: Sequence[str] = DEFAULT_BM3D_PHOTOS,
                    blur_grid: Sequence[float] = DEFAULT_BLUR_GRID, seed: int = 0, with_ssim: bool = True,
                    progress: bool | str = False, guard: bool = False) -> dict[str, Any]:
    """Score ``models`` (label -> torch model, or label -> tile function) on whole photos at every noise level of
    ``sigmas255`` (0-255 scale; 0 = the clean photo), with the noisy input, the best Gaussian blur and BM3D (on
    ``bm3d_names`` only) as reference rows. When ``camera`` is among ``names`` its sigma-0.2 level (issue 15's
    target against the best blur) is scored too, as ``result["target_level"]``. ``guard``: every model is also
    scored with the clean-input guard (:mod:`runtime.guard`, as ``moe-denoise denoise`` runs by default), in a
    row labelled by :func:`guarded_label`. ``progress``: True or 'bar', 'lines' (a line per level, for logs), False."""
    labels = list(models)
    clash = [x for x in labels if x in (NOISY, BM3D, BLUR)]
    if clash:
        raise InputError(f"model labels {clash} name reference rows; choose other labels")
    unknown_bm3d = [n for n in bm3d_names if n not in names]
    if unknown_bm3d:
        raise InputError(f"BM3D photos {unknown_bm3d} are not among the photos evaluated ({list(names)}); "
                         f"name photos from that list")
    bad = [s for s in sigmas255 if not 0 <= float(s) < float("inf")]
    if bad or not sigmas255:
        raise InputError(f"noise levels must be finite numbers >= 0 on the 0-255 scale (got {list(sigmas255)})")
    fns = {k: (m if callable(m) and not hasattr(m, "parameters") else model_tile_fn(m)) for k, m in models.items()}
    cleans = load_photos(names)  # every photo first: a bad name fails before any work
    seconds: dict[str, float] = {}
    photos: dict[str, Any] = {}
    target = None
    steps = Progress(len(names) * len(sigmas255) + (TARGET_PHOTO in names), "photos", "level", progress)
    for name in names:
        clean = cleans[name]
        draw = noise_draw(name, clean.shape, seed)
        entry: dict[str, Any] = {"kind": "gray" if clean.ndim == 2 else "colour",
                                 "size": [int(clean.shape[1]), int(clean.shape[0])], "bm3d": name in bm3d_names,
                                 "rows": {}}
        for s255 in (float(s) for s in sigmas255):
            noisy = noisy_photo(clean, s255 / 255.0, draw)
            entry["rows"][sigma_key(s255)] = _level(name, clean, noisy, s255 / 255.0, fns, name in bm3d_names,
                                                    blur_grid, with_ssim, seconds, guard)
            steps.step(f"{name} sigma {sigma_key(s255)}")
        if name == TARGET_PHOTO:
            noisy = noisy_photo(clean, TARGET_SIGMA, draw)
            target = {"photo": name, "sigma": TARGET_SIGMA, "protocol": "clip",
                      "rows": _level(name, clean, noisy, TARGET_SIGMA, fns, name in bm3d_names, blur_grid,
                                     with_ssim, seconds, guard)}
            steps.step(f"{name} sigma {sigma_key(TARGET_SIGMA * 255)} (the target level, {TARGET_SIGMA:g} on [0, 1])")
        photos[name] = entry
    steps.close()
    methods = [NOISY, BLUR, *([BM3D] if bm3d_names else []),
               *(x for label in labels for x in ((label, guarded_label(label)) if guard else (label,)))]
    return {"mode": "photos", "protocol": "clip", "seed": seed, "sigmas": [float(s) for s in sigmas255],
            "sigma_scale": "0-255: noise std sigma/255 on [0, 1] pixels", "methods": methods,
            "blur_grid": [float(w) for w in blur_grid], "with_ssim": with_ssim, "photos": photos,
            "target_level": target, "seconds": {k: round(v, 2) for k, v in seconds.items()}}


def check_photo_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 15's photo targets for every model: camera at sigma 0.2 beats the best blur by >= 4 dB; clean colour
    photos come out >= 40 dB against themselves (the worst photo)."""
    labels = [m for m in result["methods"] if m not in (NOISY, BLUR, BM3D)]
    out = []
    t = result.get("target_level")
    clean_colour = [(name, p["rows"][sigma_key(0)]) for name, p in result["photos"].items()
                    if p["kind"] == "colour" and sigma_key(0) in p["rows"]]
    for label in labels:
        if t:
            rows = t["rows"]
            out.append(target_record(label, f"{t['photo']} at sigma {t['sigma']}: PSNR - best Gaussian blur "
                                            f"(width {rows[BLUR]['blur_sigma']:g} px, {rows[BLUR]['psnr']:.2f} dB) "
                                            f">= {BLUR_MARGIN_DB:g} dB",
                                     rows[label]["psnr"] - rows[BLUR]["psnr"], BLUR_MARGIN_DB,
                                     f"{t['photo']} clip sigma {t['sigma']}"))
        if clean_colour:
            worst, name = min((rows[label]["psnr"], name) for name, rows in clean_colour)
            out.append(target_record(label, f"clean colour photos >= {CLEAN_PHOTO_DB:g} dB (worst photo)", worst,
                                     CLEAN_PHOTO_DB, f"{name} sigma 0"))
    return out


def format_photo_table(result: dict[str, Any], targets: Sequence[dict[str, Any]] = ()) -> str:
    keys = [sigma_key(s) for s in result["sigmas"]]
    width = max(20, *(len(m) + 2 for m in result["methods"]))
    metrics = [("psnr", "PSNR (dB)", 2)] + ([("ssim", "SSIM", 3)] if result.get("with_ssim") else [])
    out = [(f"photos (scikit-image samples), clipped noise clamp(x + sigma N, 0, 1), seed {result['seed']}; sigma on "
            f"the 0-255 scale; tiled by runtime.tiling.denoise_array, outputs clipped to [0, 1]; best Gaussian blur = "
            f"the best of widths {', '.join(f'{w:g}' for w in result['blur_grid'])} px (oracle)")]
    for name, p in result["photos"].items():
        w, h = p["size"]
        methods = [m for m in result["methods"] if p["bm3d"] or m != BM3D]
        for metric, title, digits in metrics:
            out += [""] + format_grid(f"{name} ({p['kind']}, {w}x{h}) {title}", p["rows"], result["sigmas"],
                                      methods, metric, digits, min_width=20)
        if metrics and BLUR in p["rows"][keys[0]]:
            widths = [f"{p['rows'][k][BLUR]['blur_sigma']:g}" + ("*" if p["rows"][k][BLUR]["at_grid_edge"] else "")
                      for k in keys]
            out.append(f"{'(blur width, px)':<{width}}" + "".join(f"{c:>10}" for c in widths))
    t = result.get("target_level")
    if t:
        out += ["", f"{t['photo']} at sigma {t['sigma']} (clip):"]
        for m, row in t["rows"].items():
            extra = f" (blur width {row['blur_sigma']:g} px)" if "blur_sigma" in row else ""
            ssim = f" / SSIM {row['ssim']:.3f}" if "ssim" in row else ""
            out.append(f"  {m:<22} PSNR {row['psnr']:.2f} dB{ssim}{extra}")
    if result.get("seconds"):
        out += ["", "time (s, all photos and levels): "
                + ", ".join(f"{m} {s:.1f}" for m, s in result["seconds"].items())]
    edges = {float(k) > 0 for p in result["photos"].values() for k in keys if p["rows"][k][BLUR]["at_grid_edge"]}
    if edges:  # every * is explained (at sigma 0 alone there was a * and no word on it)
        out.append("* best blur width at the edge of the grid: " + ("at sigma > 0 the best blur may lie outside it (at "
                   "sigma 0 the narrowest blur is the best, as expected)" if True in edges else
                   "at sigma 0 the narrowest blur is the best, as it must be for a clean photo"))
    if targets:
        out += ["", format_targets(targets)]
    return "\n".join(out)


# --- plot ----------------------------------------------------------------------------------------------------------
def _curve(rows_by_sigma: Mapping[str, Mapping[str, Any]], sigmas: Sequence[float], method: str,
           nested: bool) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for s in sigmas:
        row = rows_by_sigma[sigma_key(s)].get(method)
        if row is None:
            continue
        v = row["psnr"]["mean"] if nested else row["psnr"]
        if v is not None and np.isfinite(v):
            xs.append(float(s))
            ys.append(float(v))
        elif method != NOISY:  # an output identical to the clean photo (the guard returned it): drawn at the top
            xs.append(float(s))  # with the triangle, as the docs say (None: infinity read back from the JSON);
            ys.append(math.inf)  # it was left out. The noisy input's infinity at sigma 0 is left out
    return xs, ys


def render_plot(cifar: dict[str, Any] | None = None, photos: dict[str, Any] | None = None) -> bytes:
    """PNG bytes: PSNR against sigma, one panel per CIFAR-10 protocol (all images, then the BM3D subset) and per
    photo, one line per method (the same colour in every panel). The noisy input's infinite PSNR at sigma 0 is left
    out. Raises MissingBackendError (an ImportError) naming the ``plot`` extra when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingBackendError("the plot needs matplotlib, which is not installed: "
                                  "pip install 'moe-denoise[plot]'") from e
    matplotlib.use("Agg", force=False)
    import io

    import matplotlib.pyplot as plt

    panels: list[tuple[str, Mapping[str, Any], Sequence[float], Sequence[str], bool]] = []
    if cifar is not None:
        for p in cifar["protocols"]:
            panels.append((f"CIFAR-10 {cifar.get('split', 'test')}, {cifar['num_images']} images, {p}",  # 'test'
                           cifar["rows"][p], cifar["sigmas"],  # whatever --split was
                           cifar["methods"], True))
        b = cifar.get("bm3d")
        if b:
            for p in cifar["protocols"]:
                panels.append((f"CIFAR-10 BM3D subset, {b['num_images']} images, {p}", b["rows"][p],
                               cifar["sigmas"], b["methods"], True))
    if photos is not None:
        for name, ph in photos["photos"].items():
            methods = [m for m in photos["methods"] if m != BM3D or ph["bm3d"]]
            panels.append((f"{name} ({ph['kind']}, {ph['size'][0]}x{ph['size'][1]}), clip", ph["rows"],
                           photos["sigmas"], methods, False))
    if not panels:
        raise InputError("nothing to plot: give a CIFAR-10 result, a photo result or both")
    all_methods = list(dict.fromkeys(m for *_, methods, _ in panels for m in methods))
    reference = {NOISY: "0.55", BM3D: "black", BLUR: "tab:brown"}  # baselines in neutral colours, models in C0..
    guarded = {m: base for m in all_methods for base in all_methods if m == guarded_label(base)}
    models = [m for m in all_methods if m not in reference and m not in guarded]
    palette = [c for c in (f"C{i}" for i in range(10)) if c != "C5"]  # C5 is brown, the blur's
    colours = {**reference, **{m: palette[i % len(palette)] for i, m in enumerate(models)}}
    colours.update({m: colours[base] for m, base in guarded.items()})  # a guarded row: its weights' colour, dashed
    styles = {NOISY: ":", BLUR: "-.", BM3D: "--", **dict.fromkeys(guarded, (0, (4, 2)))}
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.6 * nrows), squeeze=False)
    clipped_any = False
    for ax, (title, rows, sigmas, methods, nested) in zip(axes.flat, panels):
        for m in methods:
            xs, ys = _curve(rows, sigmas, m, nested)
            shown = [min(y, PLOT_TOP_DB) for y in ys]
            ax.plot(xs, shown, linestyle=styles.get(m, "-"), marker="s" if m in guarded else "o", ms=3,
                    color=colours[m], label=m)
            over = [(x, PLOT_TOP_DB) for x, y in zip(xs, ys) if y > PLOT_TOP_DB]
            if over:
                clipped_any = True
                ax.plot(*zip(*over), "^", ms=7, color=colours[m])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("sigma (0-255 scale)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_xticks([float(s) for s in sigmas])
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    # the legend draws each line as the panels do (a guarded row's square marker was a circle there)
    handles = [plt.Line2D([], [], ls=styles.get(m, "-"), marker="s" if m in guarded else "o", ms=3, color=colours[m])
               for m in all_methods]
    names = list(all_methods)
    if clipped_any:
        handles.append(plt.Line2D([], [], ls="", marker="^", ms=7, color="grey"))
        names.append(f"above {PLOT_TOP_DB:g} dB (drawn at {PLOT_TOP_DB:g})")
    legend_cols = min(len(names), 7, max(2, int(4.2 * ncols / 1.7)))  # 7 across one 4.2-inch panel ran off both sides
    legend_rows = -(-len(names) // legend_cols)
    fig.legend(handles, names, loc="lower center", ncol=legend_cols, fontsize=8)
    fig.tight_layout(rect=(0, min(0.4, (0.06 if nrows == 1 else 0.04) * legend_rows), 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
