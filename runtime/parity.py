"""Parity of a backend's outputs against the PyTorch reference outputs."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moe_base.contract import TILE_SHAPE
from moe_base.errors import InputError
from moe_base.metrics import psnr_from_mse
from moe_base.tolerances import Tolerance

REFERENCE_BROKEN = "the reference (the PyTorch model's output) has NaN or Inf values: check the weights"


@dataclass
class ParityReport:
    """The comparison of a backend's outputs with PyTorch's: max / mean / p99 error, PSNR, share beyond tolerance,
    and the verdict against the tolerance."""
    backend: str
    precision: str
    num_images: int
    max_abs: float
    mean_abs: float
    p99_abs: float
    psnr: float            # dB, backend output vs reference output (inf when identical)
    bad_fraction: float    # fraction of pixels with |diff| > tolerance.atol
    tolerance: Tolerance
    passed: bool
    failures: list[str] = field(default_factory=list)

    @property
    def reference_broken(self) -> bool:
        """The PyTorch reference itself is not finite: nothing was compared, the weights are to blame."""
        return REFERENCE_BROKEN in self.failures

    def headline(self, what: str) -> str:
        """Why ``what`` (an exported graph, an engine) is refused: it differs from PyTorch, or PyTorch is broken."""
        if self.reference_broken:
            return (f"the PyTorch model itself gives NaN or Inf on the parity images, so {what} cannot be checked: "
                    f"the weights are broken (retrain, or restore them)")
        return f"{what} does not match PyTorch"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["psnr"] = None if self.psnr == math.inf else self.psnr  # None: identical; -inf (NaN/Inf outputs) is kept
        d["identical"] = self.psnr == math.inf  # strict JSON holds neither inf: this tells identical from broken
        return d

    def summary(self) -> str:
        psnr = f"{self.psnr}" if math.isinf(self.psnr) else f"{self.psnr:.1f}"  # 'inf' identical, '-inf' broken
        t = self.tolerance
        lines = [
            f"parity {self.backend}/{self.precision} vs PyTorch on {self.num_images} images: "
            f"{'PASS' if self.passed else 'FAIL'}",
            f"  max abs  {self.max_abs:.3e}   (limit {t.max_abs:.0e})",
            f"  mean abs {self.mean_abs:.3e}",
            f"  p99 abs  {self.p99_abs:.3e}",
            f"  PSNR     {psnr} dB (limit >= {t.min_psnr:.0f} dB)",
            f"  pixels beyond {t.atol:.0e}: {self.bad_fraction:.2e} (limit {t.max_bad_fraction:.0e})",
        ]
        lines += [f"  failed: {f}" for f in self.failures]
        return "\n".join(lines)


def compare(reference: np.ndarray, output: np.ndarray, tolerance: Tolerance, backend: str = "?",
            precision: str = "fp32") -> ParityReport:
    """Compare two output batches (same shape) and judge them against ``tolerance``."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise InputError(f"parity: output shape {out.shape} differs from the reference shape {ref.shape}")
    if ref.size == 0:  # it passed, with a NaN PSNR: nothing was compared
        raise InputError(f"parity: the outputs are empty (shape {ref.shape}); there is nothing to compare")
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN, told below as not finite: no warning
        diff = np.abs(out - ref)
    ref_finite = bool(np.isfinite(ref).all())  # a NaN compares False with every limit: such a check passed, at NaN
    finite = bool(np.isfinite(out).all()) and ref_finite
    if not finite:
        diff = np.where(np.isfinite(diff), diff, np.inf)
    mse = float(np.mean(diff**2)) if finite else float("inf")
    psnr = psnr_from_mse(mse) if finite else float("-inf")
    report = ParityReport(
        backend=backend, precision=precision, num_images=int(ref.shape[0]) if ref.ndim else 1,
        max_abs=float(diff.max()), mean_abs=float(diff.mean()),
        # no interpolation between infinities (inf - inf warned 'invalid value' and gave NaN)
        p99_abs=float(np.percentile(diff, 99, method="linear" if finite else "higher")), psnr=psnr,
        bad_fraction=float(np.mean(diff > tolerance.atol)),
        tolerance=tolerance, passed=True,
    )
    if not ref_finite:
        report.failures.append(REFERENCE_BROKEN)
    elif not finite:
        report.failures.append("output has NaN or Inf values")
    if report.max_abs > tolerance.max_abs:
        report.failures.append(f"max abs {report.max_abs:.3e} > {tolerance.max_abs:.0e}")
    if report.bad_fraction > tolerance.max_bad_fraction:
        report.failures.append(f"{report.bad_fraction:.2e} of pixels beyond {tolerance.atol:.0e} "
                               f"(allowed {tolerance.max_bad_fraction:.0e})")
    if report.psnr < tolerance.min_psnr:
        report.failures.append(f"PSNR {report.psnr:.1f} dB < {tolerance.min_psnr:.0f} dB")
    report.passed = not report.failures
    return report


MAX_PARITY_IMAGES = 10_000  # 12 KB an input; a check of more adds time, not confidence (CIFAR-10's test split is 10,000)
PARITY_CHUNK = 256  # images a runner call in a parity check: memory stays flat however many images are checked


def parity_inputs(num: int = 32, seed: int = 0, sigma: float = 0.2) -> np.ndarray:
    """A fixed, self-contained parity batch (no dataset needed): half smooth 'natural-like' images with
    clipped Gaussian noise, a quarter uniform random images, and edge cases (flat, black/white, stripes).
    1 to :data:`MAX_PARITY_IMAGES` of them."""
    if not 1 <= num <= MAX_PARITY_IMAGES:
        raise InputError(f"a parity check takes 1 to {MAX_PARITY_IMAGES:,} input images (got {num:,}); more adds time "
                         f"and memory, not confidence")
    if not (isinstance(sigma, numbers.Real) and 0.0 <= sigma <= 1.0):  # NaN gave a batch of NaN
        raise InputError(f"sigma= is the inputs' noise std on [0, 1] pixels, from 0 to 1; got {sigma!r}")
    rng = np.random.default_rng(seed)
    c, h, w = TILE_SHAPE
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    images = []
    for i in range(num):
        kind = i % 8
        if kind < 4:  # smooth random field + edges, noisy like the task's inputs
            f = sum(rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (rng.uniform(0.5, 3) * xx * rng.choice([-1, 1])
                    + rng.uniform(0.5, 3) * yy + rng.uniform(0, 1)))[None] for _ in range(3))
            img = np.clip(0.5 + f + rng.uniform(-0.2, 0.2, (c, 1, 1)), 0, 1)
            img = np.where((xx > rng.uniform(0.2, 0.8))[None], img, img * 0.5)
            img = np.clip(img + sigma * rng.standard_normal(img.shape), 0, 1)
        elif kind < 6:
            img = rng.uniform(0, 1, TILE_SHAPE)
        elif kind == 6:
            img = np.full(TILE_SHAPE, rng.choice([0.0, 1.0, rng.uniform()]))
        else:
            img = np.broadcast_to(((xx * rng.integers(2, 16)) % 1 > 0.5).astype(float), TILE_SHAPE)
        images.append(img)
    return np.stack(images).astype(np.float32)


def in_chunks(fn: Any, x: np.ndarray, chunk: int = PARITY_CHUNK) -> np.ndarray:
    """``fn`` (a batch -> batch function) over ``x`` ``chunk`` images a call, the outputs concatenated: a parity
    check of thousands of images in the memory of a few hundred (one call of 2,000 peaked at 3.7 GB)."""
    return np.concatenate([fn(x[i:i + chunk]) for i in range(0, len(x), chunk)])


SELF_CHECK_IMAGES = 2
SELF_CHECK_POSITIONS = 64
SELF_CHECK_IMAGES_MAX = 64  # a record asking for more is not one this toolkit wrote


def self_check_record(outputs: np.ndarray) -> dict[str, Any]:
    """What an artifact's manifest keeps of the reference outputs for ``parity_inputs(SELF_CHECK_IMAGES)``: the
    values at fixed positions, enough to tell this model from another graph with the same inputs and outputs."""
    flat = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    pos = np.random.default_rng(0).choice(flat.shape[1], SELF_CHECK_POSITIONS, replace=False)
    return {"images": len(outputs), "positions": [int(p) for p in pos],
            "values": np.round(flat[:, pos], 6).tolist()}


def self_check(run: Any, record: dict[str, Any] | None, atol: float, what: str, compare: bool = True) -> None:
    """Run ``run`` (batch -> outputs) on the self-check images and compare with the manifest's ``record``.

    Raises ArtifactMismatchError when the outputs are not the model's (mean difference beyond ``atol``): an
    artifact whose file and manifest agree but whose graph computes something else. No record: nothing to check.
    ``compare=False``: the record is only checked to be the toolkit's (for a parity check, which compares more).
    """
    if not record:
        return
    from moe_base.errors import ArtifactError, ArtifactMismatchError

    try:  # a record edited by hand reached the user as a Python traceback
        images, positions = int(record["images"]), np.asarray(record["positions"], dtype=int)
        values = np.asarray(record["values"], dtype=np.float64)
        if not (1 <= images <= SELF_CHECK_IMAGES_MAX and positions.ndim == 1 and values.shape == (images, len(positions))
                and ((positions >= 0) & (positions < int(np.prod(TILE_SHAPE)))).all() and np.isfinite(values).all()):
            raise ValueError("sizes")
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"the manifest of {what} has a self_check entry that is not the toolkit's (images, "
                            f"positions within a tile, a value per image and position); re-export the artifact") from None
    if not compare:
        return
    out = np.asarray(run(parity_inputs(images)), dtype=np.float64).reshape(images, -1)
    diff = float(np.mean(np.abs(out[:, positions] - values)))
    if not diff <= atol:
        digits = next(n for n in (3, 6, 9, 17) if f"{diff:.{n}g}" != f"{atol:.{n}g}")  # never "0.0005 (allowed 0.0005)"
        raise ArtifactMismatchError(f"{what} does not compute the model its manifest describes: on the manifest's "
                                    f"check images its outputs differ from the recorded ones by {diff:.{digits}g} on "
                                    f"average (allowed {atol:.{digits}g}). Re-export the artifact from the weights you "
                                    f"mean to run")
