"""Read photos into float arrays and write them back in the same size, mode and bit depth.

``read_image`` gives a float32 HxWxC array in [0, 1] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) and an
:class:`ImageInfo` holding what ``write_image`` needs to write the result back the way it came.

Decisions (each one is what a person denoising a photo would expect):

* **Orientation**: the EXIF orientation is applied on reading, so the denoiser works on the upright
  photo, and the output is written upright with its EXIF orientation tag removed (the other EXIF tags
  are kept for JPEG, PNG and WebP outputs). ``ImageInfo.orientation`` records the original value.
* **Bit depth**: 8-bit and 16-bit per channel are kept. Pillow reads 16-bit gray PNG/TIFF ('I;16')
  itself but silently truncates 16-bit *colour* PNG and TIFF to 8 bits, so those are read and written
  with ``pypng`` (PNG) and ``tifffile`` (TIFF): optional packages, imported only for such files, with
  an error naming the package when it is missing. 1-bit images are read as gray and thresholded back.
* **Converted modes** (recorded in ``ImageInfo.notes``, written back in the converted mode): palette
  'P'/'PA' -> RGB or RGBA (RGBA when the palette has transparency; re-quantising a denoised image would
  undo the denoising), 'CMYK'/'YCbCr' -> RGB (Pillow's conversion, no colour management; the CMYK ICC
  profile is dropped), 'RGBX'/'RGBa'/'La' -> RGB/RGBA/LA.
* **Refused modes**: 32-bit integer 'I' and float 'F' images have no defined white level for a
  denoiser trained on [0, 1] pixels, and 'LAB'/'HSV' need colour management; they raise InputError.
* **Multi-frame files** (animated PNG/GIF, multi-page TIFF): the first frame is read (noted).
* **Writing** is atomic (a temporary file in the output's directory, then a rename) and never replaces
  an existing file, the input included, unless ``overwrite=True``. JPEG is written at quality 95 with
  4:4:4 chroma; the ICC profile and DPI are kept.
"""
from __future__ import annotations

import io
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from moe_base.errors import InputError, MissingBackendError
from moe_base.fileio import atomic_write
from moe_base.optional import require

JPEG_QUALITY = 95
LAYOUTS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
# Pillow mode -> (layout of the array, bits per channel, note); modes read through Pillow directly.
_PILLOW_MODES: dict[str, tuple[str, int, str | None]] = {
    "1": ("L", 1, None),
    "L": ("L", 8, None),
    "LA": ("LA", 8, None),
    "La": ("LA", 8, "premultiplied 'La' converted to 'LA'"),
    "I;16": ("L", 16, None),
    "I;16L": ("L", 16, None),
    "I;16B": ("L", 16, None),
    "I;16N": ("L", 16, None),
    "RGB": ("RGB", 8, None),
    "RGBA": ("RGBA", 8, None),
    "RGBX": ("RGB", 8, "'RGBX' converted to 'RGB'"),
    "RGBa": ("RGBA", 8, "premultiplied 'RGBa' converted to 'RGBA'"),
    "CMYK": ("RGB", 8, "'CMYK' converted to 'RGB' without colour management; the output is RGB"),
    "YCbCr": ("RGB", 8, "'YCbCr' converted to 'RGB'; the output is RGB"),
}
_REFUSED = {
    "I": "32-bit integer pixels have no defined white level",
    "F": "32-bit float pixels have no defined white level",
    "LAB": "Lab colour needs colour management to convert to RGB",
    "HSV": "HSV images are not photos in a standard colour space",
}
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP"}  # formats whose EXIF is a separate blob we can carry over
_TIFF_LOSSLESS = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageInfo:
    """What a file was, and what :func:`write_image` needs to write a result back the same way."""

    path: str  # absolute path of the file read
    format: str  # Pillow's format name: 'PNG', 'JPEG', 'TIFF', ...
    mode: str  # Pillow's mode of the file: 'RGB', 'I;16', 'P', 'CMYK', ... ('RGB' also for 48-bit files)
    bit_depth: int  # bits per channel of the file and of the output: 1, 8 or 16
    layout: str  # channels of the array and of the output: 'L', 'LA', 'RGB' or 'RGBA'
    width: int  # of the upright image (after the EXIF orientation is applied)
    height: int
    orientation: int = 1  # the file's EXIF orientation (1 = stored upright)
    icc_profile: bytes | None = field(default=None, repr=False)
    exif: bytes | None = field(default=None, repr=False)  # the file's EXIF without the orientation tag
    dpi: tuple[float, float] | None = None
    compression: str | None = None  # TIFF compression of the file, reused when writing TIFF
    notes: tuple[str, ...] = ()  # conversions made on reading

    @property
    def channels(self) -> int:
        return LAYOUTS[self.layout]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (without the binary profile and EXIF)."""
        d = asdict(self)
        d["icc_profile"] = self.icc_profile is not None
        d["exif"] = self.exif is not None
        d["notes"] = list(self.notes)
        return d


def _pil():  # -> module PIL.Image
    from PIL import Image  # base dependency, imported lazily so `import runtime` stays numpy-only

    return Image


# --------------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file into an upright float32 HxWxC array in [0, 1] and its :class:`ImageInfo`."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such image file: '{p}'. Check the path")
    if not p.is_file():
        raise InputError(f"'{p}' is not a file (a directory?); expected an image file such as photo.png")
    Image = _pil()
    try:
        with Image.open(p) as im:
            return _read_opened(p, im)
    except (InputError, MissingBackendError):
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"'{p}' is larger than Pillow's safety limit ({e}). If you trust the file, raise "
                         f"PIL.Image.MAX_IMAGE_PIXELS before reading it") from e
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError) as e:
        raise InputError(f"cannot read '{p}' as an image ({type(e).__name__}: {e}); expected a valid PNG, JPEG, "
                         f"TIFF or other file Pillow can decode. Is it truncated or corrupt?") from e


def _read_opened(p: Path, im: Any) -> tuple[np.ndarray, ImageInfo]:
    """Decode an opened Pillow image; 16-bit colour goes through pypng / tifffile."""
    fmt, mode = im.format or "?", im.mode
    notes: list[str] = []
    if getattr(im, "n_frames", 1) > 1:
        notes.append(f"the file has {im.n_frames} frames; only the first is read")
    deep = _deep_colour_kind(p, im)
    if deep is not None:
        data = _read_png16(p) if deep == "PNG" else _read_tiff16(p)
        layout, bits = {2: "LA", 3: "RGB", 4: "RGBA"}[data.shape[2]], 16
    else:
        data, layout, bits = _read_pillow(p, im, notes)
    exif = im.getexif()
    orientation = int(exif.get(_ORIENTATION_TAG, 1) or 1)
    if orientation not in range(1, 9):
        notes.append(f"invalid EXIF orientation {orientation} ignored")
        orientation = 1
    data = apply_orientation(data, orientation)
    array = data.astype(np.float32) / np.float32(65535 if bits == 16 else 255)
    keep_icc = mode not in ("CMYK",)
    info = ImageInfo(
        path=str(p.resolve()), format=fmt, mode=mode, bit_depth=bits, layout=layout,
        width=data.shape[1], height=data.shape[0], orientation=orientation,
        icc_profile=im.info.get("icc_profile") if keep_icc else None,
        exif=_exif_without_orientation(exif) if fmt in _EXIF_FORMATS else None,
        dpi=_dpi(im.info.get("dpi")), compression=im.info.get("compression") if fmt == "TIFF" else None,
        notes=tuple(notes),
    )
    return array, info


def _read_pillow(p: Path, im: Any, notes: list[str]) -> tuple[np.ndarray, str, int]:
    """(integer HxWxC array, layout, bits per channel) for the modes Pillow decodes faithfully."""
    mode = im.mode
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in im.info
        target = "RGBA" if has_alpha else "RGB"
        notes.append(f"palette '{mode}' image converted to '{target}'; the output is {target}")
        return _as_hwc(np.asarray(im.convert(target))), target, 8
    if mode in _REFUSED:
        raise InputError(f"'{p}' has Pillow mode '{mode}': {_REFUSED[mode]}. Expected 8 or 16 bits per channel "
                         f"(gray, gray+alpha, RGB, RGBA, palette or CMYK). Convert it first, e.g. to a 16-bit PNG")
    if mode not in _PILLOW_MODES:
        raise InputError(f"'{p}' has Pillow mode '{mode}', which is not supported. Expected gray, gray+alpha, RGB, "
                         f"RGBA, palette or CMYK with 8 or 16 bits per channel; convert it to PNG first")
    layout, bits, note = _PILLOW_MODES[mode]
    if note:
        notes.append(note)
    if bits == 16:
        return _as_hwc(np.asarray(im).astype(np.uint16)), layout, 16
    if mode != layout:
        im = im.convert(layout)
    return _as_hwc(np.asarray(im)), layout, bits


def _as_hwc(a: np.ndarray) -> np.ndarray:
    return a[:, :, None] if a.ndim == 2 else a


def _deep_colour_kind(p: Path, im: Any) -> str | None:
    """'PNG' / 'TIFF' for 16-bit-per-channel files with more than one channel (Pillow truncates them)."""
    if im.format == "PNG":
        with open(p, "rb") as f:
            head = f.read(26)
        # signature (8) + IHDR length (4) + b'IHDR' (4) + width (4) + height (4) + bit depth + colour type
        if len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6):
            return "PNG"
    if im.format == "TIFF":
        bps = im.tag_v2.get(258, (1,))
        bps = bps if isinstance(bps, tuple) else (bps,)
        if int(im.tag_v2.get(277, 1)) > 1 and max(bps) == 16:
            return "TIFF"
    return None


def _read_png16(p: Path) -> np.ndarray:
    png = require("png", f"reading the 16-bit colour PNG '{p}'")
    try:
        width, height, rows, meta = png.Reader(filename=str(p)).read()
        data = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows])
    except (png.Error, zlib.error) as e:
        raise InputError(f"cannot decode the 16-bit PNG '{p}' ({e}); is it truncated or corrupt?") from e
    return data.reshape(height, width, meta["planes"])


def _read_tiff16(p: Path) -> np.ndarray:
    tifffile = require("tifffile", f"reading the 16-bit colour TIFF '{p}'")
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        data = page.asarray()
        samples = int(page.samplesperpixel)
    if data.dtype != np.uint16:
        raise InputError(f"'{p}' holds {data.dtype} samples; expected 8- or 16-bit unsigned integers")
    if data.ndim == 3 and data.shape[0] == samples and data.shape[2] != samples:  # planar (C, H, W)
        data = np.moveaxis(data, 0, -1)
    if data.ndim != 3 or data.shape[2] not in (2, 3, 4):
        raise InputError(f"'{p}' has an unsupported TIFF sample layout {data.shape}; expected HxWx(2|3|4)")
    return data


def apply_orientation(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an HxWxC array stored with EXIF ``orientation`` (1..8) upright (as ImageOps.exif_transpose)."""
    ops: dict[int, Callable[[np.ndarray], np.ndarray]] = {
        1: lambda x: x,
        2: lambda x: x[:, ::-1],  # mirrored horizontally
        3: lambda x: x[::-1, ::-1],  # rotated 180
        4: lambda x: x[::-1],  # mirrored vertically
        5: lambda x: x.swapaxes(0, 1),  # transposed
        6: lambda x: np.rot90(x, -1),  # needs 90 degrees clockwise
        7: lambda x: x[::-1, ::-1].swapaxes(0, 1),  # transversed
        8: lambda x: np.rot90(x, 1),  # needs 90 degrees counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](a))


def _exif_without_orientation(exif: Any) -> bytes | None:
    if len(exif) == 0:
        return None
    if _ORIENTATION_TAG in exif:
        del exif[_ORIENTATION_TAG]
    return exif.tobytes() if len(exif) else None


def _dpi(value: Any) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


# --------------------------------------------------------------------------------------------- writing


def output_format(path: str | os.PathLike[str]) -> str:
    """Pillow's format name for an output path, from its extension (.png, .jpg, .tif, ...)."""
    Image = _pil()
    Image.init()
    ext = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise InputError(f"cannot tell which image format to write for '{path}' (extension '{ext}'); "
                         f"use .png, .jpg/.jpeg or .tif/.tiff")
    return fmt


def _to_integers(array: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Validate the float result and quantise it to the file's bit depth (values clipped to [0, 1])."""
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"the image to write must be a float numpy array in [0, 1]; got "
                         f"{type(array).__name__} {getattr(array, 'dtype', '')}")
    a = array[:, :, None] if array.ndim == 2 else array
    if a.ndim != 3 or a.shape[2] != info.channels:
        raise InputError(f"the image to write has shape {array.shape}; expected HxWx{info.channels} "
                         f"(layout '{info.layout}' of the image it was read as)")
    if not np.isfinite(a).all():
        raise InputError("the image to write has NaN/inf values; expected finite values in [0, 1]")
    top = 65535 if info.bit_depth == 16 else 255
    dtype = np.uint16 if info.bit_depth == 16 else np.uint8
    return np.rint(np.clip(a.astype(np.float64), 0.0, 1.0) * top).astype(dtype)


def write_image(path: str | os.PathLike[str], array: np.ndarray, info: ImageInfo, overwrite: bool = False) -> Path:
    """Write a float HxWxC array in [0, 1] in the mode and bit depth of ``info``; return the path written.

    The format follows the extension. The write is atomic, and an existing file (the input included) is
    only replaced when ``overwrite`` is true. Values outside [0, 1] are clipped (denoisers overshoot).
    """
    target = Path(path)
    check_output_path(target, info.path, overwrite)
    fmt = check_writable(target, info)
    data = _to_integers(array, info)
    writer = _choose_writer(fmt, data, info)
    atomic_write(target, writer, overwrite)
    return target


def check_output_path(path: str | os.PathLike[str], source: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Refuse a missing output folder, or an existing output (the input ``source`` too) unless ``overwrite``."""
    target = Path(path)
    if not target.parent.is_dir():
        raise InputError(f"the output folder '{target.parent}' does not exist; create it first")
    if target.exists() and not overwrite:
        same = source is not None and Path(source).exists() and os.path.samefile(target, source)
        what = "is the input image" if same else "already exists"
        raise InputError(f"the output '{target}' {what}; refusing to replace it. Choose another output path or "
                         f"pass overwrite=True (--overwrite)")


def check_writable(path: str | os.PathLike[str], info: ImageInfo) -> str:
    """The output format for ``path``, after checking it can hold ``info``'s mode and bit depth without loss.

    Called by :func:`write_image`, and before denoising so that a bad output path fails in seconds,
    not after the work is done. Also checks that the optional writer a 16-bit colour image needs is here.
    """
    fmt = output_format(path)
    if fmt == "JPEG" and (info.bit_depth == 16 or info.layout in ("LA", "RGBA")):
        what = "16 bits per channel" if info.bit_depth == 16 else f"an alpha channel ('{info.layout}')"
        raise InputError(f"JPEG cannot store {what}; write the result as .png or .tif to keep it")
    if info.bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise InputError(f"16-bit images can be written as PNG or TIFF only; got an output in {fmt}. Use .png or .tif")
    if info.bit_depth == 16 and info.layout != "L":
        require("png" if fmt == "PNG" else "tifffile", f"writing a 16-bit colour {fmt}")
    return fmt


def _choose_writer(fmt: str, data: np.ndarray, info: ImageInfo) -> Callable[[IO[bytes]], None]:
    """A function that writes ``data`` to an open binary file in ``fmt`` (already checked by check_writable)."""
    if info.bit_depth == 16 and info.layout != "L":
        return (lambda f: _write_png16(f, data, info)) if fmt == "PNG" else (lambda f: _write_tiff16(f, data, info))
    return lambda f: _write_pillow(f, fmt, data, info)


def _write_pillow(f: IO[bytes], fmt: str, data: np.ndarray, info: ImageInfo) -> None:
    Image = _pil()
    if info.bit_depth == 16:
        im = Image.fromarray(data[:, :, 0], mode=None)  # uint16 HxW -> 'I;16'
    else:
        im = Image.fromarray(data[:, :, 0] if info.layout == "L" else data)
        if info.bit_depth == 1:
            im = im.convert("1", dither=Image.Dither.NONE)  # threshold at 128
    im.save(f, format=fmt, **_save_options(fmt, info))


def _save_options(fmt: str, info: ImageInfo) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if info.icc_profile:
        opts["icc_profile"] = info.icc_profile
    if info.dpi:
        opts["dpi"] = info.dpi
    if info.exif and fmt in _EXIF_FORMATS:
        opts["exif"] = info.exif
    if fmt == "JPEG":
        opts.update(quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep the denoised chroma detail
    if fmt == "WEBP":
        opts["quality"] = JPEG_QUALITY  # Pillow's default (80) would visibly undo the denoising
    if fmt == "TIFF" and info.compression in _TIFF_LOSSLESS:
        opts["compression"] = info.compression
    return opts


def _write_png16(f: IO[bytes], data: np.ndarray, info: ImageInfo) -> None:
    """16-bit gray+alpha / RGB / RGBA PNG via pypng, with the ICC profile and EXIF spliced in."""
    png = require("png", "writing a 16-bit colour PNG")
    h, w, c = data.shape
    kwargs: dict[str, Any] = {}
    if info.dpi:
        kwargs = dict(x_pixels_per_unit=round(info.dpi[0] / 0.0254), y_pixels_per_unit=round(info.dpi[1] / 0.0254),
                      unit_is_meter=True)
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16, **kwargs)
    buf = io.BytesIO()
    writer.write(buf, data.reshape(h, w * c))
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    extra = []
    if info.icc_profile:
        extra.append((b"iCCP", b"icc\x00\x00" + zlib.compress(info.icc_profile)))
    if info.exif:
        exif = info.exif[6:] if info.exif.startswith(b"Exif\x00\x00") else info.exif
        extra.append((b"eXIf", exif))
    png.write_chunks(f, chunks[:1] + extra + chunks[1:])  # right after IHDR, before IDAT


def _write_tiff16(f: IO[bytes], data: np.ndarray, info: ImageInfo) -> None:
    """16-bit gray+alpha / RGB / RGBA TIFF via tifffile (deflate-compressed when the input was compressed)."""
    tifffile = require("tifffile", "writing a 16-bit colour TIFF")
    c = data.shape[2]
    compressed = info.compression not in (None, "raw")
    buf = io.BytesIO()  # tifffile wants a named file or a buffer, not a bare descriptor
    tifffile.imwrite(
        buf, data, photometric="minisblack" if c == 2 else "rgb",
        extrasamples=("unassalpha",) if c in (2, 4) else None,
        compression="zlib" if compressed else None, iccprofile=info.icc_profile,
        resolution=info.dpi, resolutionunit="INCH" if info.dpi else None, metadata=None,
    )
    f.write(buf.getvalue())
