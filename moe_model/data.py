"""CIFAR-10 ("python version" folder) loading, the fixed train/validation split, and the noise protocols.

Split (fixed): the 50,000 training images in the official order; the first 45,000 are ``train``, the last
5,000 (the second half of ``data_batch_5``) are ``val``. ``test`` is ``test_batch`` and is used only for
final reporting, never to choose a checkpoint.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from moe_base.errors import DatasetError, InputError

Split = Literal["train", "val", "test"]
Protocol = Literal["clip", "unclipped"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
PROTOCOLS: tuple[str, ...] = ("clip", "unclipped")
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
NUM_VAL = 5000
DEFAULT_SIGMA = 0.2
DEFAULT_EVAL_SEED = 1234
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


def _where_to_get() -> str:
    return (f"Download CIFAR-10 (python version) from {CIFAR_URL}, extract it and pass the "
            f"'cifar-10-batches-py' folder with --data-dir.")


class _BatchUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 batch holds: dicts, lists, bytes, numbers and NumPy arrays. Anything else (a
    class, a function: how a pickle runs code) is refused before it is looked up."""

    ALLOWED = {("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def __init__(self, f: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(f, **kwargs)
        self.limit = limit  # the file's size: a real batch's pixels are in it

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a CIFAR-10 batch never holds "
                                         f"(a pickle that names code can run it: refused)")
        found = super().find_class(module, name)
        if name != "_reconstruct":
            return found

        def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:  # an array's room, filled from the file next
            size = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
            if size > self.limit:  # a 78-byte file asked for 5.8 GiB of memory, with no pixels to fill it
                raise pickle.UnpicklingError(f"it declares an array of {size:,} bytes, more than the file's "
                                             f"{self.limit:,} bytes can fill")
            return found(subtype, shape, dtype)

        return reconstruct


def _read_batch(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, os.fstat(f.fileno()).st_size, encoding="bytes").load()
    except ImportError as e:  # arrays pickled by NumPy 2 name numpy._core, which NumPy before 1.26.1 lacks: a traceback
        raise DatasetError(f"could not read CIFAR-10 batch {path}: {e} (it was saved by a newer NumPy than this one, "
                           f"{np.__version__}): upgrade NumPy (pip install 'numpy>=1.26.1'), or use the batches as "
                           f"downloaded. {_where_to_get()}") from e
    except MemoryError as e:  # a length in the file far beyond the file (bytes of 2**40): a traceback before
        raise DatasetError(f"could not read CIFAR-10 batch {path}: it declares more data than this machine's memory "
                           f"(the file is damaged, or not a batch). {_where_to_get()}") from e
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DatasetError(f"could not read CIFAR-10 batch {path}: {str(e).rstrip('.')}. Expected a pickled dict with "
                           f"b'data' (N x 3072 uint8). {_where_to_get()}") from e
    data = d.get(b"data") if isinstance(d, dict) else None
    if data is None:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DatasetError(f"{path} has no b'data' entry (found {keys}); expected a CIFAR-10 python-version "
                           f"batch. {_where_to_get()}")
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: b'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072). "
                           f"{_where_to_get()}")
    return data.reshape(-1, 3, 32, 32)


def load_cifar10(data_dir: str | Path, split: Split) -> np.ndarray:
    """Images of one split as uint8 (N, 3, 32, 32)."""
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    root = Path(data_dir)
    try:
        return _load_split(root, split)
    except OSError as e:  # a folder or batch without read permission: a traceback before
        raise DatasetError(f"CIFAR-10 folder {root}: cannot read {e.filename or root} ({e.strerror or e}); give a "
                           f"folder you can read") from None


def _load_split(root: Path, split: Split) -> np.ndarray:
    if not root.is_dir():
        where = f" ({root.resolve()})" if str(root.resolve()) != str(root) else ""
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise DatasetError(f"CIFAR-10 folder {root}{where} {what}. Expected a 'cifar-10-batches-py' folder "
                           f"holding {', '.join(TRAIN_FILES)} and {TEST_FILE}. {_where_to_get()}")
    wanted = (TEST_FILE,) if split == "test" else TRAIN_FILES
    missing = [f for f in wanted if not (root / f).is_file()]
    if missing:
        names = sorted(p.name for p in root.iterdir())
        found = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "") or "nothing"
        # the folder above the right one ('found: cifar-10-batches-py'): name it; a 'test_batch' that is a folder
        inside = next((root / n for n in names if all((root / n / f).is_file() for f in wanted)), None)
        hint = (f" Did you mean --data-dir {inside}?" if inside is not None else
                f" ({', '.join(f for f in missing if (root / f).is_dir())} is a folder, not the batch file.)"
                if any((root / f).is_dir() for f in missing) else "")
        raise DatasetError(f"CIFAR-10 folder {root} lacks {', '.join(missing)} (found: {found}).{hint} Expected "
                           f"{', '.join(TRAIN_FILES)} and {TEST_FILE}. {_where_to_get()}")
    images = np.concatenate([_read_batch(root / f) for f in wanted])
    if split == "test":
        return images
    if len(images) <= NUM_VAL:
        raise DatasetError(f"{root} holds only {len(images)} training images; need more than {NUM_VAL} "
                           f"for the train/val split")
    return images[:-NUM_VAL] if split == "train" else images[-NUM_VAL:]


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 in [0, 1]."""
    t = torch.as_tensor(images)
    return t.float().div_(255.0) if t.dtype == torch.uint8 else t.float()


def add_noise(clean: torch.Tensor, sigma: float = DEFAULT_SIGMA, protocol: Protocol = "clip",
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Gaussian noise on [0, 1] pixels. ``clip`` (the seed's): clamp(x + sigma N(0,1), 0, 1); ``unclipped``: x + sigma N."""
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown noise protocol {protocol!r}; expected one of {PROTOCOLS}")
    noisy = clean + sigma * torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    return noisy.clamp_(0.0, 1.0) if protocol == "clip" else noisy


@dataclass(frozen=True)
class BlindNoise:
    """The noise of blind training: every image gets its own level, drawn uniformly over [0, sigma_max] (a share
    exactly 0: clean input must come out unchanged), clipped to [0, 1] or not, and a share of the images are
    turned gray (luminance in all three channels) with the same noise in every channel, as a gray photo is fed.
    ``bayer_share``: a share of the colour images get a camera's raw noise instead (the level's white noise through
    :func:`demosaicked`: on one colour a pixel, spread by bilinear demosaicing); 0 keeps the draws of the recipe
    before it existed, image for image."""

    sigma_max: float = 75 / 255
    zero_share: float = 0.05
    unclipped_share: float = 0.5
    gray_share: float = 0.25
    bayer_share: float = 0.0

    def __post_init__(self) -> None:
        bad = self.problems(dataclasses.asdict(self))
        if bad:
            raise InputError("invalid blind noise: " + "; ".join(bad))

    @staticmethod
    def problems(values: dict[str, float], named: Callable[[str], str] = str) -> list[str]:
        """What is wrong with these settings (BlindNoise's fields), each named by ``named`` (the command line
        passes '--zero-share' for 'zero_share')."""
        bad = [f"{named(k)} must be in [0, 1] (got {values[k]})"
               for k in ("zero_share", "unclipped_share", "gray_share", "bayer_share") if not 0.0 <= values[k] <= 1.0]
        if not 0.0 < values["sigma_max"] < float("inf"):
            bad.append(f"{named('sigma_max')} must be > 0 (got {values['sigma_max']})")
        return bad


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what Pillow's convert("L") uses


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, H, W) with the luminance in every channel."""
    w = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True).expand_as(images).contiguous()


_GREEN = ((0.0, 0.25, 0.0), (0.25, 1.0, 0.25), (0.0, 0.25, 0.0))  # bilinear demosaicing of a Bayer mosaic
_RED_BLUE = ((0.25, 0.5, 0.25), (0.5, 1.0, 0.5), (0.25, 0.5, 0.25))


def demosaicked(images: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) images through a camera's sensor: each pixel keeps one colour's value (an RGGB mosaic shifted
    by ``phase`` (N,) in 0..3: rows by phase // 2, columns by phase % 2, as a tile may start anywhere on the
    sensor), and bilinear demosaicing fills the other two from the neighbours. Linear, so white noise comes out as
    a camera's raw noise does: correlated between neighbours and channels, rms about 0.77 of the white noise's."""
    n, _, h, w = images.shape
    rows = (torch.arange(h).view(1, h, 1) + (phase // 2).view(n, 1, 1)) % 2
    cols = (torch.arange(w).view(1, 1, w) + (phase % 2).view(n, 1, 1)) % 2
    mask = torch.stack([(rows == 0) & (cols == 0), rows != cols, (rows == 1) & (cols == 1)], dim=1).to(images.dtype)
    kernels = images.new_tensor([_RED_BLUE, _GREEN, _RED_BLUE]).unsqueeze(1)
    padded = torch.nn.functional.pad(images * mask, (1, 1, 1, 1), mode="reflect")
    return torch.nn.functional.conv2d(padded, kernels, groups=3)


def blind_noisy(clean: torch.Tensor, spec: BlindNoise,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noisy, target, sigma) for a batch of clean (N, 3, H, W) images under ``spec``; ``target`` is ``clean`` with
    the gray share turned gray, ``sigma`` (N,) the level each image got."""
    n = len(clean)
    draw = torch.rand(4, n, generator=generator)  # gray?, sigma, zero?, unclipped? (one draw each, fixed order)
    gray = (draw[0] < spec.gray_share).view(n, 1, 1, 1)
    sigma = torch.where(draw[2] < spec.zero_share, 0.0, draw[1] * spec.sigma_max)
    target = torch.where(gray, to_gray(clean), clean)
    noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
    noise = torch.where(gray, noise[:, :1].expand_as(noise), noise)
    if spec.bayer_share > 0:  # drawn after the rest, so that the other draws stay those of bayer_share = 0
        bayer = (torch.rand(n, generator=generator) < spec.bayer_share).view(n, 1, 1, 1) & ~gray
        phase = torch.randint(0, 4, (n,), generator=generator)
        noise = torch.where(bayer, demosaicked(noise, phase), noise)
    noisy = target + sigma.view(n, 1, 1, 1).to(clean.dtype) * noise
    clipped = (draw[3] >= spec.unclipped_share).view(n, 1, 1, 1)
    return torch.where(clipped, noisy.clamp(0.0, 1.0), noisy), target, sigma


def fixed_noisy(clean: torch.Tensor, sigma: float = DEFAULT_SIGMA, protocol: Protocol = "clip",
                seed: int = DEFAULT_EVAL_SEED) -> torch.Tensor:
    """Deterministic noisy copy of a whole split (same noise for every batch size and run)."""
    return add_noise(clean, sigma, protocol, torch.Generator().manual_seed(seed))
