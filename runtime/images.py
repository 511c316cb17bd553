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
  profile is dropped), 'RGBX'/'RGBa'/'La' -> RGB/RGBA/LA; an 8-bit RGB or gray PNG with a transparent colour key
  (tRNS) -> RGBA or LA, the key as alpha.
* **Refused modes**: 32-bit integer 'I' and float 'F' images have no defined white level for a
  denoiser trained on [0, 1] pixels, and 'LAB'/'HSV' need colour management; they raise InputError.
* **Multi-frame files** (animated PNG/GIF, multi-page TIFF): the first frame is read (noted).
* **Writing** is atomic (a temporary file in the output's directory, then a rename) and never replaces
  an existing file, the input included, unless ``overwrite=True``. JPEG is written at quality 95 (or the
  caller's ``quality``) with 4:4:4 chroma; WebP at the same quality, lossy, with the 4:2:0 chroma libwebp always
  writes (half the colour resolution: PNG keeps every pixel), unless the input was a lossless WebP and no
  ``quality`` is given (then lossless; ``add-noise`` writes every WebP lossless, as lossy WebP smooths a third of
  the noise away);
  the ICC profile and DPI are kept where the output format holds them (a note says what BMP, TGA, PPM or WebP
  leave out), and a PNG's gamma and colour chunks (gAMA, cHRM, sRGB) in a PNG output.
* **Text metadata** (who made the photo, its rights, its description) is kept where the output holds it: the XMP
  packet (read from PNG, JPEG, TIFF or WebP) goes into any PNG, JPEG, TIFF or WebP output (JPEG: up to 65,504
  bytes), without its tiff:Orientation (the output is upright). Each format's own text goes into an output of that
  format only, as it was: a PNG's tEXt / zTXt / iTXt chunks (an iTXt with its language and translated keyword),
  a JPEG's comments (COM) and IPTC block (APP13), a TIFF's text tags (Artist, ImageDescription, Copyright,
  DocumentName, PageName, Make, Model, DateTime, HostComputer; IPTC, tag 33723), a GIF's comment. It is not
  mapped onto another format's fields (a TIFF's Artist is no PNG keyword): a note names what an output leaves
  out, and what a file holds past :data:`TEXT_LIMIT` (1 MiB in all; it would be held through the work). Both
  TIFF writers are covered (Pillow's tags, tifffile's for 16-bit colour); libtiff, through which Pillow writes a
  compressed TIFF, ends a text tag at its first zero byte (a Copyright of 'photographer\\0editor' keeps the first;
  a note says so).
* **Output formats**: PNG, JPEG, TIFF, WebP, BMP, GIF, 8-bit PPM/PGM (no alpha) and TGA only; the others Pillow
  can write would resize (ICO, ICNS), compress at their own quality (AVIF, PDF, MPO) or fail on some modes after the
  work (BLP, PCX, QOI). A phone's multi-picture JPEG (MPO) is read as a JPEG, its EXIF kept. A palette image whose
  colours are all grays (how Pillow opens a gray GIF) is read as gray. Refused on reading: 16-bit Netpbm (Pillow
  reads it at 8 bits) and TIFF layouts Pillow cannot decode (float colour, 16-bit gray+alpha; so 16-bit gray+alpha
  is not written as TIFF either); camera raw files (DNG, or a NEF, CR2, ARW laid out as a TIFF: their first page is
  a small preview), a TIFF that starts with a reduced-resolution copy of a later page, 9- to 15-bit TIFF samples
  (Pillow does not scale them), 16-bit TIFFs that are not gray or RGB (CMYK, Lab) or have premultiplied alpha;
  EPS by its first bytes, before Pillow would hand it to Ghostscript. HEIC, PDF, SVG and JPEG XL, which Pillow does
  not read here, are named as what they are. 16-bit data that reaches only 8,191 (12 or 13 bits) gets a note.
* **GIF output** is refused for colour and alpha (a GIF holds a 256-colour palette: the denoised result
  would be requantised, undoing much of the denoising; write PNG; where the tool names the output, a photo
  denoised into a folder, it is written as NAME.gif.png instead: ``runtime.batch.result_path``). 8-bit gray fits
  a palette exactly and is written. **BMP output** is refused for images with alpha (readers take the fourth byte
  as padding).
  **WebP** has no gray mode: a gray image is written as RGB(A), the gray in each channel (the report notes it).
* **Large images**: :func:`read_pixels` refuses, from the header and before decoding, an image over
  ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`) or one whose decoding needs more memory than the process
  can get (:func:`available_memory`: ``ulimit -v``, cgroup limit, available RAM). It keeps the file's
  integers (uint8 / uint16: 1-2 bytes per channel, not float32's 4), copied from Pillow's decoded image
  strip by strip; :func:`to_unit` / :func:`to_pixels` convert any band of rows, and
  :func:`write_pixels` writes the integers back (pypng row by row for 16-bit colour PNG). Pillow itself
  always decodes and encodes whole images, so the peak is Pillow's image plus the array (8-bit RGB:
  4 + 3 bytes per pixel).
"""
from __future__ import annotations

import io
import os
import re
import shlex
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import numpy as np

from moe_base.errors import InputError, MissingBackendError, path_error_message
from moe_base.fileio import atomic_write, check_output_file, is_link_loop, refuse_special_file
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
_TIFF_EXIF_IFDS = (34665, 34853)  # a TIFF's Exif and GPS directories
_TIFF_EXIF_FIRST = (270, 271, 272, 305, 306, 315, 33432, 0x4746, 0x4749, 0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F)
"""An EXIF's first-directory tags a TIFF output takes: description, make, model, software, date, artist, copyright,
and Windows' rating, title, comment, author, keywords and subject."""
_EXIF_LAYOUT_TAGS = {256, 257, 258, 259, 262, 273, 274, 277, 278, 279, 282, 283, 284, 296, 513, 514, 529, 530, 531,
                     532, 0x8769, 0x8825, 0xA005}  # the picture the EXIF came with (a TIFF output has its own), pointers
_INTEROP_IFD, _MAKER_NOTE = 0xA005, 0x927C
_EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x8769, 0xA002, 0xA003  # the Exif directory; its PixelX/YDimension
_EXIF_INPUTS = _EXIF_FORMATS | {"MPO"}  # a phone's multi-picture JPEG (.jpg) carries its EXIF as a JPEG does
# output formats that keep the size, mode and bit depth and honour --jpeg-quality (others: ICO/ICNS resize, AVIF,
# MPO and PDF compress at their own quality, BLP/EPS/PCX/QOI/SGI raise ValueError on some modes)
_OUTPUT_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "TGA"}  # PPM/PGM, TGA: lossless too
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
    lossless: bool = False  # a lossless WebP (VP8L); a WebP output of it is written lossless too
    png_colour: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)  # a PNG's gAMA / cHRM / sRGB chunks
    # (type, data), written back to a PNG output: without an ICC profile they are how its tones are meant
    xmp: bytes | None = field(default=None, repr=False)  # the file's XMP packet (creator, rights, ...), without
    # its tiff:Orientation (the output is upright); written into PNG, JPEG, TIFF and WebP outputs
    text: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)  # the file format's own text metadata, as
    # (kind, data): a PNG's text chunks ('tEXt', 'zTXt', 'iTXt': the chunk's data), a JPEG's comments ('COM') and
    # IPTC ('APP13'), a GIF's comment ('comment'), a TIFF's text tags (the tag number: '315'); written back into an
    # output of the same format (:data:`TEXT_HOMES`)

    @property
    def channels(self) -> int:
        return LAYOUTS[self.layout]

    def summary(self) -> dict[str, Any]:
        """JSON-friendly description (without the binary profile and EXIF)."""
        d = asdict(self)
        d["icc_profile"] = self.icc_profile is not None
        d["exif"] = self.exif is not None
        d["notes"] = list(self.notes)
        d["png_colour"] = [kind.decode() for kind, _ in self.png_colour]
        d["xmp"] = self.xmp is not None
        d["text"] = text_names(self)
        return d


def _pil():  # -> module PIL.Image
    from PIL import Image  # base dependency, imported lazily so `import runtime` stays numpy-only

    return Image


# --------------------------------------------------------------------------------------------- limits

DEFAULT_MAX_PIXELS = 200_000_000
"""Largest image read by default (width x height): above every single-shot camera sensor (about 150 megapixels).

Checked on the header, before anything is decoded, so a small file that declares a huge canvas (a
"decompression bomb") is refused at once. Pillow's own, lower bomb limit (about 179 megapixels, a warning
from 89) is set aside while :func:`read_pixels` reads, since this one replaces it. ``None``: no limit.
"""
# Bytes per pixel of Pillow's decoded image ("core") for each mode (1 for 8-bit single-band modes, 2 for
# 16-bit gray, 4 for everything else: Pillow stores RGB as RGBX and LA as L..A).
_PILLOW_CORE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
_STRIP_BYTES = 4 << 20  # Pillow's decoded image is copied into the array in strips of about this size
_PIL_LIMIT_LOCK = threading.Lock()
_READING = threading.local()  # .depth: this thread's reads under way (their bomb check is ours: check_size)


class _CallerRaised(Exception):
    """Carries an exception of read_pixels' ``before_decode`` callback past the handlers of the file's own errors."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


@contextmanager
def _pillow_checks_again() -> Iterator[None]:
    """Pillow's bomb check back for this thread inside a read (a caller's before_decode callback opened a
    900-megapixel file unchecked)."""
    depth, _READING.depth = getattr(_READING, "depth", 0), 0
    try:
        yield
    finally:
        _READING.depth = depth


def _reads_pass_bomb_check(Image: Any) -> bool:
    """Wrap (once) Pillow's decompression-bomb check so that it lets a read of this module through in the thread
    that makes it, and checks every other call as before; False when this Pillow has no such function."""
    original = getattr(Image, "_decompression_bomb_check", None)
    if original is None:
        return False
    if getattr(original, "moe_denoise_reads_pass", False):
        return True

    def check(*args: Any, **kwargs: Any) -> Any:
        if getattr(_READING, "depth", 0):
            return None
        return original(*args, **kwargs)

    check.moe_denoise_reads_pass = True  # type: ignore[attr-defined]
    with _PIL_LIMIT_LOCK:
        if not getattr(Image._decompression_bomb_check, "moe_denoise_reads_pass", False):
            Image._decompression_bomb_check = check
    return True
_PIL_LIMIT: dict[str, Any] = {"readers": 0, "saved": None}  # reads under way, and Pillow's limit before the first


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, before its pixels are decoded (size as stored, before the EXIF orientation)."""

    path: str
    format: str
    mode: str
    layout: str  # channels the array will have: 'L', 'LA', 'RGB' or 'RGBA'
    bit_depth: int  # 1, 8 or 16
    width: int
    height: int
    decoder: str = "pillow"  # 'pillow', or 'pypng' / 'tifffile' for 16-bit colour (Pillow truncates it)
    core_bytes_per_pixel: int = 0  # Pillow's decoded image (0 when pypng / tifffile decode the file)
    notes: tuple[str, ...] = ()
    orientation: int = 1  # the file's EXIF orientation: 5 to 8 swap width and height when read upright
    colour_key: tuple[int, ...] | None = None  # a 16-bit PNG's transparent colour (tRNS): made the alpha channel
    frames: int = 1  # pages of a TIFF, frames of an animation: only the first is read

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) of the image as read_pixels gives it (after the EXIF orientation)."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)

    @property
    def channels(self) -> int:
        return LAYOUTS[self.layout]

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def compact_bytes(self) -> int:
        """The decoded image as uint8 / uint16 (what :func:`read_pixels` returns)."""
        return self.pixels * self.channels * (2 if self.bit_depth == 16 else 1)

    @property
    def decode_bytes(self) -> int:
        """Peak memory of :func:`read_pixels`: Pillow's decoded image and the array it is copied into, or the
        array and its upright copy (EXIF orientation), whichever is larger."""
        return max(self.pixels * self.core_bytes_per_pixel + self.compact_bytes, 2 * self.compact_bytes)

    def describe(self) -> str:
        return (f"'{self.path}' is {self.width}x{self.height} ({self.pixels / 1e6:.3g} megapixels, {self.layout} "
                f"{self.bit_depth}-bit)")


def check_max_pixels(max_pixels: Any) -> None:
    """InputError unless ``max_pixels`` is None (no limit) or a whole number >= 1 (-1 read '-0 megapixels')."""
    if max_pixels is not None and (isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer))
                                   or max_pixels < 1):
        raise InputError(f"max_pixels= is the most pixels an image may have, a whole number >= 1, or None for no "
                         f"limit; got {max_pixels!r}")


def check_size(header: ImageHeader, max_pixels: int | None) -> None:
    """Refuse an image with more pixels than ``max_pixels`` (None: no limit; checked by :func:`check_max_pixels`),
    naming both and what to do."""
    if max_pixels is not None and header.pixels > max_pixels:
        raise InputError(f"{header.describe()}, more than the limit of {max_pixels:,} pixels "
                         f"({max_pixels / 1e6:.3g} megapixels); refusing to decode it. If the file is a real photo "
                         f"you trust, raise the limit (--max-pixels {header.pixels}, or max_pixels=...), or split "
                         f"it into smaller images")


def _proc_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """'Name: 123 kB' lines of a /proc file, in bytes (empty where /proc is absent)."""
    found: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in names and rest.split():
                    found[name] = int(rest.split()[0]) * (1024 if rest.strip().endswith("kB") else 1)
    except OSError:
        pass
    return found


def _cgroup_room() -> tuple[int, str] | None:
    """Bytes left under this process's cgroup memory limit (v2 or v1), counting inactive page cache as free."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if controllers == "":  # v2
            base, limit_f, usage_f, cache_key = Path("/sys/fs/cgroup"), "memory.max", "memory.current", "inactive_file"
        elif "memory" in controllers.split(","):
            base, limit_f, usage_f, cache_key = (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes",
                                                 "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        folder = base / rel.lstrip("/")
        while True:  # the tightest limit on the way up
            try:
                limit_text = (folder / limit_f).read_text().strip()
                usage = int((folder / usage_f).read_text())
                stat = dict(ln.split() for ln in (folder / "memory.stat").read_text().splitlines() if " " in ln)
            except (OSError, ValueError):
                limit_text = "max"
            if limit_text.isdigit() and int(limit_text) < 1 << 60:
                room = int(limit_text) - usage + int(stat.get(cache_key, 0))
                if best is None or room < best[0]:
                    best = (room, f"the memory limit of its control group {folder} ({int(limit_text) >> 20} MiB)")
            if folder == base or folder.parent == folder:
                break
            folder = folder.parent
    return best


def available_memory() -> tuple[int | None, str]:
    """(bytes this process can still get, what bounds it); (None, '') where nothing is known.

    The smallest of: the address-space limit (``ulimit -v``) less what the process maps already, the data
    limit (``ulimit -d``) less its data, its cgroup's memory limit less the cgroup's use, and the machine's
    available memory (MemAvailable + free swap).
    """
    found: list[tuple[int, str]] = []
    status = _proc_fields("/proc/self/status", ("VmSize", "VmData"))
    try:
        import resource
    except ImportError:  # not a Unix
        resource = None  # type: ignore[assignment]
    if resource is not None:
        for limit, key, what in ((resource.RLIMIT_AS, "VmSize", "address-space limit (ulimit -v)"),
                                 (resource.RLIMIT_DATA, "VmData", "data-size limit (ulimit -d)")):
            soft = resource.getrlimit(limit)[0]
            if soft != resource.RLIM_INFINITY and key in status:
                found.append((soft - status[key], f"the {what} of {soft >> 20} MiB less the {status[key] >> 20} MiB "
                                                  f"the process already maps"))
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    mem = _proc_fields("/proc/meminfo", ("MemAvailable", "SwapFree"))
    if "MemAvailable" in mem:
        found.append((mem["MemAvailable"] + mem.get("SwapFree", 0), "the memory available on this machine"))
    if not found:
        return None, ""
    return min(found)


def check_memory(needed: int, what: str, header: ImageHeader) -> None:
    """Refuse up front (InputError) when ``needed`` bytes are more than :func:`available_memory` gives."""
    room, bound = available_memory()
    if room is not None and needed > room:
        raise InputError(f"{header.describe()}: {what} needs about {needed / 2**30:.2f} GiB, but this process can "
                         f"get only {max(room, 0) / 2**30:.2f} GiB more ({bound}). Free memory or raise the limit, "
                         f"or split the image into smaller ones")


@contextmanager
def _own_pixel_limit(Image: Any):  # -> Iterator[None]
    """Pillow's decompression-bomb check set aside for this read: our check_size replaces it, on the header. (Raised
    to our limit instead, Pillow still warned on the way to our refusal, or refused first itself, without the
    --max-pixels advice.) Set aside for this thread's reads only (:func:`_reads_pass_bomb_check`): setting
    ``Image.MAX_IMAGE_PIXELS`` to None while any read ran let every other ``Image.open`` in the process through
    (a service's own upload check opened 97% of 900-megapixel bombs while a read looped in another thread), and a
    limit the caller set meanwhile was put back. Where Pillow has no such check to wrap, the limit is set aside for
    the process as before, and put back when the last read ends."""
    if _reads_pass_bomb_check(Image):
        _READING.depth = getattr(_READING, "depth", 0) + 1
        try:
            yield
        finally:
            _READING.depth -= 1
        return
    with _PIL_LIMIT_LOCK:
        if _PIL_LIMIT["readers"] == 0:
            _PIL_LIMIT["saved"] = Image.MAX_IMAGE_PIXELS
        _PIL_LIMIT["readers"] += 1
        Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        with _PIL_LIMIT_LOCK:
            _PIL_LIMIT["readers"] -= 1
            if _PIL_LIMIT["readers"] == 0:
                Image.MAX_IMAGE_PIXELS = _PIL_LIMIT["saved"]


# --------------------------------------------------------------------------------------------- reading


_ICONS = {b"\x00\x00\x01\x00": "ICO", b"\x00\x00\x02\x00": "CUR", b"icns": "ICNS"}


def _refuse_icons(p: Path) -> None:
    """InputError for an icon file (by its first bytes, whatever its name): pictures of several sizes for a program,
    not a photo, and Pillow decodes an embedded PNG of any size as it opens one (ICO), or one larger than its entry
    says (ICNS), before a header can be checked: 3.5 MB of icon took 3.6 GB, past --max-pixels."""
    with open(p, "rb") as f:
        head = f.read(6)
    if head[:4] in (b"%!PS", b"\xc5\xd0\xd3\xc6"):  # Pillow hands an EPS to Ghostscript, a PostScript interpreter,
        # if one is installed (its failure was a traceback; without one the file was called corrupt)
        raise InputError(f"'{p}' is a PostScript (EPS) file, a page description drawn at any size, not a photo's pixels; "
                         f"export it as PNG at the size you want (e.g. with Inkscape or ImageMagick) and give that")
    kind = _ICONS.get(head[:4])
    if kind in ("ICO", "CUR") and head[4:6] in (b"", b"\x00\x00"):  # no pictures: a TGA starts so (no ID, no colour
        kind = None  # map, uncompressed colour: 00 00 02 00, then a colour map of length 0), and every TGA Pillow
        # writes in colour; it was refused as a cursor, even the TGA moe-denoise had just written
    if kind:
        raise InputError(f"'{p}' is an icon file ({kind}: a program's icon at several sizes), not a photo; save the "
                         f"picture you want from it as PNG and give that instead")


def read_image(path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file into an upright float32 HxWxC array in [0, 1] and its :class:`ImageInfo`.

    The whole image is held as float32 (4 bytes per channel); :func:`read_pixels` keeps the file's
    integers (1 or 2 bytes per channel) for large photos. Files over ``max_pixels`` or that would not
    fit in the memory this process can get are refused before decoding.
    """
    def fits(header: ImageHeader) -> None:
        float_bytes = header.pixels * header.channels * 4
        check_memory(max(header.decode_bytes, header.compact_bytes + float_bytes), "reading it as float32", header)

    data, info = read_pixels(path, max_pixels=max_pixels, before_decode=fits)
    return to_unit(data, info), info


def unit_scale(info: ImageInfo | ImageHeader) -> np.float32:
    """The file's white level (255, or 65535 for 16-bit) that :func:`to_unit` divides by."""
    return np.float32(65535 if info.bit_depth == 16 else 255)


def to_unit(pixels: np.ndarray, info: ImageInfo | ImageHeader) -> np.ndarray:
    """uint8 / uint16 pixels of a file (all rows or a band) -> float32 in [0, 1], as :func:`read_image` gives them."""
    return pixels.astype(np.float32) / unit_scale(info)


def read_pixels(
    path: str | os.PathLike[str],
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    before_decode: Callable[[ImageHeader], None] | None = None,
) -> tuple[np.ndarray, ImageInfo]:
    """Read an image file into an upright HxWxC array of its own integers (uint8, or uint16 for 16-bit) and its info.

    Before decoding, the header is checked: more pixels than ``max_pixels`` (None: no limit), or more memory
    than this process can get for decoding (:attr:`ImageHeader.decode_bytes`), is refused with InputError;
    then ``before_decode(header)`` is called (e.g. to check the memory of the whole job, or the output path).
    Peak memory: Pillow's decoded image (1 to 4 bytes per pixel) plus the array, copied over in strips
    (8-bit RGB: 4 + 3 = 7 bytes per pixel), or twice the array when an EXIF orientation must be applied.
    """
    p = check_input_exists(path)
    check_max_pixels(max_pixels)  # before the header is read: -1 read '-0 megapixels', 'x' a TypeError
    if not p.is_file():
        kind = "a folder" if p.is_dir() else "a device, pipe or socket"  # /dev/null was asked '(a directory?)'
        raise InputError(f"'{p}' is {kind}, not a file; expected an image file" + (  # a folder named photo.png
            ", such as one of the photos in it" if p.is_dir() else " such as photo.png"))  # was told 'such as photo.png'
    if p.stat().st_size == 0:
        raise InputError(f"'{p}' is empty (0 bytes): not an image, perhaps a copy or download that did not finish; "
                         f"replace it with the photo")
    Image = _pil()
    try:
        _refuse_icons(p)
        with _own_pixel_limit(Image), Image.open(p) as im:
            header = _read_header(p, im)
            check_size(header, max_pixels)
            check_memory(header.decode_bytes, "decoding it", header)
            if before_decode is not None:
                try:
                    with _pillow_checks_again():  # the caller's own code: Pillow's check is not ours to set aside
                        before_decode(header)
                except _HeaderRead:  # read_header's own stop
                    raise
                except Exception as e:  # the caller's, as it is: not 'cannot read ... as an image' of this file
                    raise _CallerRaised(e) from e
            return _decode(p, im, header)
    except _CallerRaised as raised:
        raise raised.error from None
    except (InputError, MissingBackendError):
        raise
    except _HeaderRead as stop:  # read_header: the header is all that was asked for
        return stop.header  # type: ignore[return-value]
    except Image.DecompressionBombError as e:  # a frame larger than the canvas (GIF, ICO, ...)
        raise InputError(f"'{p}' holds an image larger than Pillow's safety limit ({e}); refusing to decode it") from e
    except MemoryError as e:
        raise InputError(f"ran out of memory decoding '{p}'; free memory or raise the limit, or split the image "
                         f"into smaller ones") from e
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, IndexError) as e:
        layout = _tiff_layout(p) if isinstance(e, Image.UnidentifiedImageError) else None
        if layout and layout.startswith("raw"):  # a DNG whose first page is the sensor's mosaic (as phones write)
            raise InputError(f"'{p}' is a camera raw file ({layout.split(' ', 1)[1]}): the sensor's data, not a picture "
                             f"yet; {_RAW_ADVICE}") from e
        if layout:  # a whole TIFF of a layout Pillow has no decoder for; a broken one is said to be broken below
            raise InputError(f"'{p}' is a TIFF file whose layout Pillow cannot decode ({layout} samples; such as "
                             f"float32 colour or 16-bit gray+alpha); convert it to a 16-bit PNG first (e.g. with "
                             f"ImageMagick: magick in.tif out.png)") from e
        if isinstance(e, OSError) and path_error_message(e):  # not a damaged file: one this user may not read
            raise InputError(f"cannot read '{p}': {path_error_message(e, named=False)}") from e
        kind = _unread_kind(p) if isinstance(e, Image.UnidentifiedImageError) else None
        if kind:  # an iPhone's HEIC was asked whether it was 'truncated or corrupt'
            raise InputError(f"'{p}' is {kind}") from e
        raise InputError(f"cannot read '{p}' as an image ({type(e).__name__}: {e}); expected a valid PNG, JPEG, "
                         f"TIFF or other file Pillow can decode. Is it truncated or corrupt?") from e


_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def _unread_kind(p: Path) -> str | None:
    """What a file that Pillow cannot identify is, with what to do, from its first bytes (formats people have
    that Pillow does not read here); None when it looks like none of them."""
    try:
        with open(p, "rb") as f:
            head = f.read(1024)
    except OSError:
        return None
    export = "export or convert it to PNG or JPEG (or 16-bit PNG or TIFF) and give that"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return (f"a HEIC/HEIF photo (what iPhones and many phones take), which this Pillow cannot decode: {export} (an "
                f"iPhone sends JPEG when its Camera > Formats setting is 'Most Compatible')")
    if head.startswith(b"%PDF"):
        return f"a PDF document, not an image file: {export} (e.g. a page at the resolution you want)"
    if head.lstrip().startswith((b"<svg", b"<?xml")) and b"<svg" in head:
        return f"an SVG drawing (vector graphics, drawn at any size), not a photo's pixels: {export}"
    if head.startswith(b"\xff\x0a") or head[4:12] == b"JXL \r\n\x87\n":
        return f"a JPEG XL image, which this Pillow cannot decode: {export}"
    if head.startswith(b"8BPS") and len(head) >= 26:  # Pillow reads 8-bit Photoshop files of version 1 only
        version, depth = int.from_bytes(head[4:6], "big"), int.from_bytes(head[22:24], "big")
        kind = ("a Photoshop large-document (PSB) file" if version == 2 else
                f"a {depth}-bit Photoshop file" if depth in (16, 32) else None)
        if kind:
            return (f"{kind}, which Pillow does not read: save or export it from Photoshop (or another editor) as a "
                    f"{'16-bit ' if depth >= 16 else ''}TIFF or PNG and give that")
    return None


def _tiff_layout(p: Path) -> str | None:
    """'3 x float32' for a TIFF whose first page tifffile can describe ('raw DNG' or 'raw CFA' for a camera raw),
    None when it is no TIFF, is broken, or tifffile is not installed."""
    if not _starts_as_tiff(p):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(p) as tf:
            page = tf.pages[0]
            if _DNG_VERSION in page.tags or int(page.photometric) in _RAW_PHOTOMETRIC:
                return f"raw {'DNG' if _DNG_VERSION in page.tags else 'CFA'}"
            return f"{int(page.samplesperpixel)} x {page.dtype}"
    except Exception:  # noqa: BLE001 - cut short or damaged: not a layout question
        return None


def _starts_as_tiff(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(4) in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
    except OSError:
        return False


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """What an image file's header says (layout, bit depth, size as stored), without decoding its pixels.

    Raises InputError for a missing, unreadable or unsupported file."""
    return read_pixels(path, max_pixels=None, before_decode=_stop_at_header)  # type: ignore[return-value]


class _HeaderRead(Exception):
    def __init__(self, header: ImageHeader) -> None:
        self.header = header


def _stop_at_header(header: ImageHeader) -> None:
    raise _HeaderRead(header)


def _gray_palette(im: Any) -> bool:
    """Whether every colour of a palette image's palette is a gray (R = G = B): Pillow opens a gray GIF as one."""
    palette = im.getpalette() or []
    return bool(palette) and all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))


def _netpbm_maxval(p: Path) -> int:
    """The maxval of a PGM/PPM header, binary (P5/P6) or plain (P2/P3); 255 when it cannot be read (Pillow then says
    what is wrong)."""
    with open(p, "rb") as f:
        head = f.read(512)
    tokens: list[bytes] = []
    for line in head.split(b"\n"):
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 4:
            break
    try:
        return int(tokens[3]) if tokens[0] in (b"P2", b"P3", b"P5", b"P6") else 255
    except (IndexError, ValueError):
        return 255


def _jpeg2000_depth(p: Path) -> int:
    """The most bits per sample of a JPEG 2000 file's components (its codestream's SIZ marker); 8 when it cannot be
    read (Pillow then says what is wrong)."""
    with open(p, "rb") as f:
        head = f.read(1 << 16)
    at = head.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ: length, capabilities, 8 sizes, components, then each one's
    if at < 0 or len(head) < at + 42:  # Ssiz (bits - 1, and a sign bit) and its subsampling
        return 8
    count = int.from_bytes(head[at + 40:at + 42], "big")
    sizes = head[at + 42:at + 42 + 3 * count:3]
    return max(((b & 0x7F) + 1 for b in sizes), default=8)


def _read_header(p: Path, im: Any) -> ImageHeader:
    """The layout, bit depth and size the file will decode to; refused modes raise here, before decoding."""
    fmt, mode = im.format or "?", im.mode
    orientation = _header_orientation(p, im)  # first: a palette's getpalette() loads a TIFF, which drops its tag
    maxval = _netpbm_maxval(p) if fmt == "PPM" else 255
    if maxval > 255:  # Pillow cut a 16-bit PPM to 8 bits, and took a PGM for 32-bit
        raise InputError(f"'{p}' is a 16-bit Netpbm file (maxval {maxval}), which Pillow does not read "
                         f"at its full depth; convert it to a 16-bit PNG or TIFF first (e.g. with ImageMagick: "
                         f"magick in.ppm out.png)")
    depth = _jpeg2000_depth(p) if fmt == "JPEG2000" and mode in ("RGB", "RGBA") else 8
    if depth > 8:  # Pillow reads deeper colour at 8 bits: 256 levels of 23,699, without a word
        raise InputError(f"'{p}' is a {depth}-bit colour JPEG 2000 file, which Pillow reads at 8 bits only; convert "
                         f"it to a 16-bit PNG or TIFF first (e.g. with ImageMagick: magick in.jp2 out.png)")
    notes: list[str] = []
    colour_key = None
    frames = int(getattr(im, "n_frames", 1) or 1)
    if fmt == "TIFF":
        _check_tiff_kind(p, im, frames)
    if frames > 1 and fmt == "MPO":  # a phone's JPEG with a preview (or gain map) inside: only views are pictures
        extra, frames = frames - 1, 1 + _mpo_views(im)
        if frames < extra + 1:
            notes.append(f"the multi-picture JPEG's {extra + 1 - frames} embedded preview or auxiliary image(s) are "
                         f"not kept: the output holds the photo alone")
    if fmt == "PSD":  # its frames are the layers; what is read is the merged picture, all of them together
        _check_psd(p, im)
        if frames > 1:
            notes.append(f"the Photoshop file's {frames} layers are not kept: the output holds its merged picture")
        frames = 1
    if frames > 1:
        notes.append(f"the file has {frames} {'views' if fmt == 'MPO' else 'frames'}; only the first is read")
    deep = _deep_colour_kind(p, im)
    core = 0
    if deep == "PNG":
        with open(p, "rb") as f:
            colour_type = f.read(26)[25]
        layout, bits = {4: "LA", 2: "RGB", 6: "RGBA"}[colour_type], 16
        key = im.info.get("transparency") if colour_type == 2 else None
        if isinstance(key, tuple) and len(key) == 3:  # a tRNS colour key: kept as alpha, as for 8 bits
            layout, colour_key = "RGBA", tuple(int(v) for v in key)
            notes.append("16-bit 'RGB' image with a transparent colour key converted to 'RGBA'; the output is RGBA")
    elif deep == "TIFF":
        samples = int(im.tag_v2.get(277, 1))
        if samples not in (2, 3, 4):
            raise InputError(f"'{p}' has {samples} samples per pixel; expected 16-bit gray+alpha, RGB or RGBA (2 to 4)")
        layout, bits = {2: "LA", 3: "RGB", 4: "RGBA"}[samples], 16
        layout = _tiff16_layout(p, im, layout, notes)
    elif mode == "P" and "transparency" not in im.info and _gray_palette(im):  # a gray GIF: gray, not colour
        layout, bits, core = "L", 8, 1
        notes.append("palette image of grays read as gray ('L'); the output is L")
    elif mode in ("P", "PA"):
        layout, bits, core = ("RGBA" if mode == "PA" or "transparency" in im.info else "RGB"), 8, 4 if mode == "PA" else 1
        notes.append(f"palette '{mode}' image converted to '{layout}'; the output is {layout}")
    elif mode in _REFUSED:
        tags = getattr(im, "tag_v2", {})
        bits_tag = tags.get(258, (16,))
        what = (f"holds signed {bits_tag if isinstance(bits_tag, int) else bits_tag[0]}-bit integer pixels (Pillow "
                f"mode '{mode}'), which have no defined white or black level"
                if mode == "I" and im.format == "TIFF" and tags.get(339) in (2, (2,)) else  # it said '32-bit' of int16
                f"has Pillow mode '{mode}': {_REFUSED[mode]}")
        raise InputError(f"'{p}' {what}. Expected 8 or 16 bits per channel "
                         f"(gray, gray+alpha, RGB, RGBA, palette or CMYK). Convert it first, e.g. to a 16-bit PNG")
    elif mode not in _PILLOW_MODES:
        raise InputError(f"'{p}' has Pillow mode '{mode}', which is not supported. Expected gray, gray+alpha, RGB, "
                         f"RGBA, palette or CMYK with 8 or 16 bits per channel; convert it to PNG first")
    elif mode in ("L", "RGB") and "transparency" in im.info:  # a tRNS colour key: keep it, as alpha
        layout, bits, core = ("LA" if mode == "L" else "RGBA"), 8, 4
        notes.append(f"'{mode}' image with a transparent colour key converted to '{layout}'; the output is {layout}")
    elif mode.startswith("I;16") and isinstance(im.info.get("transparency"), int):  # 16-bit gray's colour key
        layout, bits, core, colour_key = "LA", 16, 2, (int(im.info["transparency"]),)
        notes.append("16-bit gray image with a transparent colour key converted to gray+alpha; the output is LA")
    else:
        layout, bits, note = _PILLOW_MODES[mode]
        core = _PILLOW_CORE_BYTES.get(mode, 4)
        if note:
            notes.append(note)
    if fmt == "PSD" and layout in ("RGBA", "LA") and not _psd_merged_alpha(p):  # Pillow took it for transparency:
        layout = layout[:-1]  # a flattened file with a saved selection came out half transparent, exit 0
        notes.append(f"the Photoshop file's extra channel is a saved selection (an alpha channel), not transparency: "
                     f"it is left out; the output is {layout}")
    decoder = {"PNG": "pypng", "TIFF": "tifffile", None: "pillow"}[deep]
    width, height = im.size
    if fmt == "TIFF" and isinstance(im.tag_v2.get(256), int) and isinstance(im.tag_v2.get(257), int):
        width, height = im.tag_v2[256], im.tag_v2[257]  # as stored: Pillow gives a TIFF's size turned upright
        # by its EXIF orientation already, which upright_size then turned a second time
    return ImageHeader(path=str(p.resolve()), format=fmt, mode=mode, layout=layout, bit_depth=bits,
                       width=width, height=height, decoder=decoder, core_bytes_per_pixel=core, notes=tuple(notes),
                       orientation=orientation, colour_key=colour_key, frames=frames)


def _header_orientation(p: Path, im: Any) -> int:
    """The EXIF orientation, without decoding the pixels (a PNG's eXIf chunk may follow its IDAT: the chunks are
    walked, not decompressed)."""
    try:
        if im.format == "PNG" and "exif" not in im.info:
            exif_bytes = None
            with open(p, "rb") as f:
                for kind, length in _png_chunks(f):
                    if kind == b"eXIf":
                        exif_bytes = f.read(length)
                        break
                    if kind == b"IEND":
                        break
            # as Pillow's getexif() reads it after decoding: the eXIf chunk, else ImageMagick's 'Raw profile type
            # exif' text chunk; then an XMP tiff:Orientation when the EXIF has none
            raw = im.info.get("Raw profile type exif")
            if exif_bytes is None and raw:
                exif_bytes = bytes.fromhex("".join(raw.split("\n")[3:]))
            exif = _pil().Exif()
            if exif_bytes is not None:
                exif.load(exif_bytes)
            xmp = im.info.get("XML:com.adobe.xmp")
            found = re.search(r'tiff:Orientation(="|>)([0-9])', xmp) if isinstance(xmp, str) else None
            if _ORIENTATION_TAG not in exif and found:
                return int(found[2]) if int(found[2]) in range(1, 9) else 1
        else:
            exif = im.getexif()
        value = int(exif.get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a damaged EXIF block: the decoder says more when it reads the file
        return 1
    return value if value in range(1, 9) else 1


def _decode(p: Path, im: Any, header: ImageHeader) -> tuple[np.ndarray, ImageInfo]:
    """Decode an opened Pillow image into integers; 16-bit colour goes through pypng / tifffile."""
    if header.decoder == "pypng":
        data = _read_png16(p, header)
    elif header.decoder == "tifffile":
        data = _read_tiff16(p, header)
    elif header.format == "TIFF" and header.orientation in (5, 6, 7, 8):
        # Pillow maps an uncompressed one-strip TIFF (L, P, RGBA, CMYK, I;16) into memory at its upright size, which
        # scrambled one turned by its EXIF orientation (a 96x128 photo came out 128x96 in streaks, exit 0); read
        # from a file object, Pillow decodes it as stored, then turns it (as it turns every TIFF it loads)
        with open(p, "rb") as f, _pil().open(f) as again:
            data = _read_pillow(again, header)
    else:
        data = _read_pillow(im, header)
    pillow_turned = header.format == "TIFF" and header.decoder == "pillow"  # upright already (Pillow's TIFF load)
    stored = (header.height, header.width)
    if data.shape[:2] != (stored[::-1] if pillow_turned and header.orientation in (5, 6, 7, 8) else stored):
        raise InputError(f"'{p}' decodes to {data.shape[1]}x{data.shape[0]}, not the {header.width}x{header.height} "
                         f"its header declares (EXIF orientation {header.orientation}); is it corrupt? Convert it to "
                         f"PNG with another program")
    if header.colour_key is not None:  # opaque where a pixel differs from the key, transparent where it is the key
        alpha = np.any(data != np.asarray(header.colour_key, dtype=data.dtype), axis=2, keepdims=True)
        data = np.concatenate([data, alpha.astype(data.dtype) * np.iinfo(data.dtype).max], axis=2)
    notes = list(header.notes)
    if header.bit_depth == 16:
        from .guard import colour_part  # the channels that are denoised (alpha left out)

        colour = colour_part(data)
        top = int(colour.max()) if colour.size else 0
        scaled_8bit = top % 257 == 0 and not np.any(colour[::7, ::7] % 257)  # 8-bit values x 257: a dark
        # 8-bit photo, not 12-bit data (it was called '13-bit data in 16-bit samples?')
        if 0 < top <= 8191 and not scaled_8bit:  # a camera's or microscope's 12-bit data in 16-bit samples: its
            # noise, small on the 0-65535 scale, read as 1.5/255 where it was 25/255 of its own range, and was
            # hardly taken away; with an offset and shot noise its values pass 4,095 (4,187 to 5,280 measured), and
            # the note was missing
            notes.append(f"its values reach only {top:,} of 65,535 ({top.bit_length()}-bit data in 16-bit samples?): "
                         f"it is denoised as the very dark photo it then is, and noise small on the full scale is "
                         f"mostly left; scale it to the full range first (e.g. magick in.tif -auto-level out.tif) for a "
                         f"real denoising")
    exif = im.getexif()  # after the pixels: a PNG may keep its EXIF after them
    orientation = header.orientation if pillow_turned else int(exif.get(_ORIENTATION_TAG, 1) or 1)  # (Pillow took
    # a TIFF's tag out as it turned it: its 'turned upright' note was missing)
    if orientation not in range(1, 9):
        notes.append(f"invalid EXIF orientation {orientation} ignored")
        orientation = 1
    elif orientation != 1:  # a 128x96 file came back 96x128 with the tag gone, and the report said 'same size'
        h, w = data.shape[:2]
        if pillow_turned and orientation >= 5:  # Pillow turned a TIFF as it loaded: data is upright already (the
            h, w = w, h  # note said 'stored 16x12, upright 12x16' of a 12x16 file written 16x12)
        stored = f"{w}x{h}"
        upright = f"{h}x{w}" if orientation >= 5 else stored
        notes.append(f"turned upright by its EXIF orientation ({orientation}: stored {stored}, upright {upright}); "
                     f"the output is written upright, without the orientation tag")
    fmt = header.format
    keep_icc = header.mode not in ("CMYK",)
    icc = im.info.get("icc_profile") if keep_icc else None
    if not keep_icc and im.info.get("icc_profile"):  # the note said 'without colour management', not that it had one
        notes.append(f"its CMYK ICC profile ({len(im.info['icc_profile']):,} bytes) was not used for the conversion "
                     f"and is left out (an RGB image cannot use it); for exact colours, convert it to RGB with its "
                     f"profile in an editor first")
    dpi = _dpi(im.info.get("dpi"))
    if dpi and orientation in (5, 6, 7, 8):  # x and y of the image as stored: the upright one's are swapped
        dpi = (dpi[1], dpi[0])
    if fmt == "TIFF" and 282 not in im.tag_v2:  # no XResolution: Pillow says 1 dpi, which the output then claimed
        dpi = None
    compression = im.info.get("compression") if fmt == "TIFF" else None
    exif_bytes = _exif_without_orientation(exif, orientation) if fmt in _EXIF_INPUTS else None
    if fmt == "TIFF" and any(tag in im.tag_v2 for tag in _TIFF_EXIF_IFDS):  # they were left out of every output
        exif_bytes = _tiff_exif_directories(exif, orientation, notes)
    xmp, text, left_out = _text_metadata(p, im, fmt)
    notes += left_out
    im.close()  # release Pillow's decoded image before the upright copy
    data = data if pillow_turned else apply_orientation(data, orientation)
    info = ImageInfo(
        path=header.path, format=fmt, mode=header.mode, bit_depth=header.bit_depth, layout=header.layout,
        width=data.shape[1], height=data.shape[0], orientation=orientation, icc_profile=icc, exif=exif_bytes,
        dpi=dpi, compression=compression, notes=tuple(notes), png_colour=_png_colour_chunks(p) if fmt == "PNG" else (),
        lossless=fmt == "WEBP" and _webp_lossless(p), xmp=xmp, text=text,
    )
    return data, info


def _webp_lossless(p: Path) -> bool:
    """Whether a WebP file's image (an animation's first frame, the one read) is lossless (a VP8L chunk; a lossy one
    has VP8). Pillow does not say: a lossless WebP came back lossy. Reads the RIFF chunk headers only (an extended
    file's ICC, EXIF, alpha chunks first; an animation's frame holds its image's chunk after a 16-byte header)."""
    try:
        with open(p, "rb") as f:
            if f.read(12)[8:12] != b"WEBP":
                return False
            for _ in range(64):
                head = f.read(8)
                if len(head) < 8 or head[:4] == b"VP8 ":
                    return False
                if head[:4] == b"VP8L":
                    return True
                size = int.from_bytes(head[4:], "little")
                if head[:4] == b"ANMF":  # the first frame: its own chunks follow its header
                    f.seek(16, os.SEEK_CUR)
                    continue
                f.seek(size + (size & 1), os.SEEK_CUR)  # chunks are padded to an even size
    except OSError:
        pass
    return False


PNG_COLOUR_CHUNKS = (b"gAMA", b"cHRM", b"sRGB")


def _png_chunks(f: IO[bytes]) -> Iterator[tuple[bytes, int]]:
    """(type, length) of each chunk of the PNG open as ``f``, which is at the chunk's data when it is yielded; the
    walk goes on from the next chunk whatever the caller read (the chunks are walked, not decompressed)."""
    f.seek(8)  # the signature
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = int.from_bytes(head[:4], "big"), head[4:]
        data = f.tell()
        yield kind, length
        f.seek(data + length + 4)  # the data and its CRC


def _png_gamma(chunks: tuple[tuple[bytes, bytes], ...]) -> float | None:
    """The file gamma of a PNG's gAMA chunk (None: none, or an sRGB chunk, which overrides it)."""
    kinds = dict(chunks)
    if b"sRGB" in kinds or len(kinds.get(b"gAMA", b"")) != 4:
        return None
    return int.from_bytes(kinds[b"gAMA"], "big") / 100000 or None


def _png_colour_chunks(p: Path) -> tuple[tuple[bytes, bytes], ...]:
    """A PNG's gAMA, cHRM and sRGB chunks as (type, data), read from the chunks before the image data."""
    found = []
    with open(p, "rb") as f:
        for kind, length in _png_chunks(f):
            if kind in (b"IDAT", b"IEND"):
                break
            if kind in PNG_COLOUR_CHUNKS and length <= 64:
                found.append((kind, f.read(length)))
    return tuple(found)


TEXT_LIMIT = 1 << 20
"""Most bytes of text metadata (the XMP packet, text chunks, comments, text tags) kept from one file. A photo's are a
few kilobytes; what a file holds beyond this is left out with a note, so that no file makes the tool hold megabytes
of text through the work."""
XMP_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")  # the outputs an XMP packet is written into (the same packet in each)
JPEG_XMP_LIMIT = 65504  # bytes of XMP one JPEG APP1 segment holds (Pillow writes no extended XMP)
JPEG_EXIF_LIMIT = 65533  # bytes of EXIF (with its 'Exif' header) one JPEG APP1 segment holds; a PNG's or WebP's can
# be larger (a maker note, an embedded preview), and Pillow then failed the write after the work
TEXT_HOMES = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "TIFF": "TIFF", "GIF": "GIF"}
"""Input format -> the output format that holds its own text metadata (:attr:`ImageInfo.text`): each format's are
its own (a PNG's keyword chunks, a JPEG's comment segments, a TIFF's tags), kept only in an output of that format;
into another they are left out with a note rather than mapped onto what that format has."""
_XMP_KEYWORD = b"XML:com.adobe.xmp"  # a PNG's iTXt keyword for XMP
_XMP_ORIENTATION = re.compile(rb'\s*tiff:Orientation=("[0-9]*"|\'[0-9]*\')|<tiff:Orientation>[0-9]*</tiff:Orientation>')
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_PNG_EXIF_TEXT = (b"Raw profile type exif", b"Raw profile type APP1")  # ImageMagick's hex copies of the EXIF:
# left out, as the EXIF is kept as an eXIf chunk (and the copy would still hold the orientation the output drops)
_TIFF_XMP_TAG, _TIFF_IPTC_TAG = 700, 33723
_TIFF_TEXT_TAGS = {269: "DocumentName", 270: "ImageDescription", 271: "Make", 272: "Model", 285: "PageName",
                   306: "DateTime", 315: "Artist", 316: "HostComputer", 33432: "Copyright",
                   _TIFF_IPTC_TAG: "IPTC"}  # text (ASCII) tags but IPTC's, a block of bytes. Not Software (305): it
# names what wrote the file, which the output's writer is not (tifffile writes its own name there)


def _text_metadata(p: Path, im: Any, fmt: str) -> tuple[bytes | None, tuple[tuple[str, bytes], ...], list[str]]:
    """The open file's XMP packet (its tiff:Orientation removed), its format's own text metadata as (kind, data)
    (see :attr:`ImageInfo.text`), and notes naming what is left out: what comes past :data:`TEXT_LIMIT` bytes in all,
    a JPEG's extended XMP (the part of a large packet in further APP1 segments, which Pillow does not read), and a
    TIFF's IPTC block stored as numbers (its bytes would depend on the file's byte order)."""
    if fmt == "PNG":
        return _png_text(p)
    xmp: bytes | None = None
    found: list[tuple[str, bytes]] = []  # (kind, data), in the file's order
    notes: list[str] = []
    raw = im.info.get("xmp") if fmt in ("JPEG", "MPO", "WEBP", "TIFF") else None
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    if isinstance(raw, bytes) and raw:
        xmp = _XMP_ORIENTATION.sub(b"", raw)
    if fmt in ("JPEG", "MPO"):
        applist = getattr(im, "applist", [])
        extended = [len(s) for kind, s in applist if kind == "APP1" and s.startswith(b"http://ns.adobe.com/xmp/extension/")]
        if extended:
            notes.append(f"the JPEG's extended XMP ({sum(extended):,} bytes in {len(extended)} further APP1 segments) "
                         f"is left out: only its main XMP packet is read")
        found = [(kind, s) for kind, s in applist if kind == "COM" or (kind == "APP13" and s.startswith(b"Photoshop 3.0\0"))]
    elif fmt == "GIF" and isinstance(im.info.get("comment"), bytes) and im.info["comment"]:
        found = [("comment", im.info["comment"])]
    elif fmt == "TIFF":
        for tag, name in _TIFF_TEXT_TAGS.items():
            value = im.tag_v2.get(tag)
            if isinstance(value, str):  # Pillow decodes ASCII tags as Latin-1: encoded back, they are the file's bytes
                value = value.encode("latin-1", "replace")
            if tag == 270 and isinstance(value, bytes) and value.lstrip().startswith((b'{"shape"', b"ImageJ=")):
                continue  # tifffile's or ImageJ's description of the file's layout, not of the photo: copied, it
                # described another shape (an upright output: tifffile warned) and another writer's settings
            if isinstance(value, bytes) and value:
                found.append((str(tag), value))
            elif value is not None:
                notes.append(f"the TIFF's {name} tag (tag {tag}) is stored as numbers, not as bytes or text, and is "
                             f"left out")
    over: list[str] = []
    if xmp is not None and len(xmp) > TEXT_LIMIT:
        over.append(f"the XMP packet ({len(xmp):,} bytes)")
        xmp = None
    room = TEXT_LIMIT - len(xmp or b"")
    kept = []
    for kind, data in found:
        if len(data) <= room:
            kept.append((kind, data))
            room -= len(data)
        else:
            over.append(f"{_text_name(fmt, kind, data)} ({len(data):,} bytes)")
    if over:
        notes.append(_over_limit_note(over))
    return xmp, tuple(kept), notes


def _over_limit_note(over: list[str]) -> str:
    return (f"text metadata past {TEXT_LIMIT >> 20} MiB in all is left out (a photo's are a few kilobytes): "
            f"{', '.join(over)}")


def _png_text(p: Path) -> tuple[bytes | None, tuple[tuple[str, bytes], ...], list[str]]:
    """A PNG's XMP packet (its iTXt 'XML:com.adobe.xmp' chunk, its tiff:Orientation removed) and its other tEXt,
    zTXt and iTXt chunks as (type, data), wherever they are in the file, and a note naming those left out past
    :data:`TEXT_LIMIT`. The chunks are walked, and only those kept are read; their data is kept as it is (a zTXt
    stays compressed, an iTXt keeps its language and translated keyword). ImageMagick's copies of the EXIF in text
    chunks are left out: the EXIF is kept as an eXIf chunk, without the orientation those copies still hold."""
    xmp: bytes | None = None
    found: list[tuple[str, bytes]] = []
    over: list[str] = []
    room = TEXT_LIMIT
    with open(p, "rb") as f:
        for kind, length in _png_chunks(f):
            if kind == b"IEND":
                break
            if kind not in _PNG_TEXT_CHUNKS:
                continue
            keyword = f.read(min(length, 80)).split(b"\0", 1)[0]  # 1 to 79 bytes, then a zero byte
            if keyword in _PNG_EXIF_TEXT:
                continue
            if length > room:
                over.append(f"{'the XMP packet' if keyword == _XMP_KEYWORD else _text_name('PNG', kind.decode(), keyword)}"
                            f" ({length:,} bytes)")
                continue
            f.seek(-min(length, 80), os.SEEK_CUR)
            data = f.read(length)
            if keyword == _XMP_KEYWORD and kind == b"iTXt" and xmp is None:
                packet = _itxt_text(data, room)
                if packet is None:  # compressed past the room left, or damaged
                    over.append(f"the XMP packet (compressed, over {room:,} bytes or damaged)")
                    continue
                xmp = _XMP_ORIENTATION.sub(b"", packet)
                room -= len(xmp)
            else:
                found.append((kind.decode(), data))
                room -= length
    return xmp, tuple(found), [_over_limit_note(over)] if over else []


def _itxt_text(data: bytes, limit: int) -> bytes | None:
    """The text of an iTXt chunk's data (keyword, compression flag and method, language, translated keyword, text),
    inflated when compressed; None when it is damaged or inflates past ``limit`` bytes."""
    try:
        _keyword, rest = data.split(b"\0", 1)
        compressed, rest = rest[0], rest[2:]
        _language, _translated, text = rest.split(b"\0", 2)
        if not compressed:
            return text if len(text) <= limit else None
        inflate = zlib.decompressobj()
        text = inflate.decompress(text, limit + 1)
        return text if len(text) <= limit and inflate.eof else None
    except (ValueError, IndexError, zlib.error):
        return None


def _text_name(fmt: str, kind: str, data: bytes) -> str:
    """How a note names one piece of :attr:`ImageInfo.text` of a ``fmt`` file: a PNG chunk by its keyword, a TIFF tag
    by its name."""
    if TEXT_HOMES.get(fmt) == "PNG":
        keyword = data.split(b"\0", 1)[0].decode("latin-1")
        return f"'{keyword}' ({kind})"
    if kind.isdigit():
        return _TIFF_TEXT_TAGS.get(int(kind), f"tag {kind}")
    return {"COM": "comment (COM)", "APP13": "IPTC (APP13)", "comment": "comment"}.get(kind, kind)


def text_names(info: ImageInfo) -> list[str]:
    """The names of the pieces of ``info``'s text metadata, as notes give them: "'Author' (tEXt)", "Copyright",
    "comment (COM) x2" (two comments)."""
    names = [_text_name(info.format, kind, data) for kind, data in info.text]
    return [name if names.count(name) == 1 else f"{name} x{names.count(name)}" for name in dict.fromkeys(names)]


def _read_pillow(im: Any, header: ImageHeader) -> np.ndarray:
    """The integer HxWxC array of a mode Pillow decodes faithfully, converted and copied over strip by strip.

    Each strip is converted on its own (palette, CMYK, premultiplied alpha, 1-bit: per-pixel conversions,
    so the result is the same as converting the whole image), which keeps the peak at Pillow's decoded
    image plus the array instead of two or three full copies.
    """
    im.load()
    (w, h), c = im.size, header.channels - (header.colour_key is not None)  # the key's alpha is added after
    # (im.size: a TIFF turned upright by Pillow as it loads, the header's size turned)
    dtype = np.uint16 if header.bit_depth == 16 else np.uint8
    convert = header.bit_depth != 16 and im.mode != header.layout
    data = np.empty((h, w, c), dtype=dtype)
    step = max(1, _STRIP_BYTES // (4 * w))
    for y in range(0, h, step):
        strip = im.crop((0, y, w, min(h, y + step)))
        if convert:
            strip = strip.convert(header.layout)
        data[y:y + step] = _as_hwc(np.asarray(strip))
    return data


def _as_hwc(a: np.ndarray) -> np.ndarray:
    return a[:, :, None] if a.ndim == 2 else a


_TIFF_PHOTOMETRIC = {0: "inverted gray (white is 0)", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr", 8: "CIE Lab",
                     9: "ICC Lab", 10: "ITU Lab", 32803: "a camera's colour-filter mosaic (raw)",
                     34892: "linear raw"}
RAW_SUFFIXES = (".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
                ".pef", ".srw", ".3fr", ".iiq", ".erf", ".kdc", ".mrw", ".x3f", ".raw")
"""Camera raw files' endings: the sensor's data, which a raw converter develops into a picture."""
_RAW_PHOTOMETRIC = (32803, 34892)  # CFA, LinearRaw: a camera's sensor data, not a picture yet
_DNG_VERSION, _NEW_SUBFILE_TYPE, _EXTRA_SAMPLES = 50706, 254, 338
_RAW_ADVICE = ("develop it in a raw converter (darktable, RawTherapee, Lightroom, or dcraw/LibRaw) and give the "
               "16-bit TIFF or PNG it exports")


def _check_tiff_kind(p: Path, im: Any, frames: int) -> None:
    """InputError for a TIFF-like file whose first page is not the picture: a camera raw (DNG, or a NEF, CR2, ARW
    laid out as a TIFF), whose first page is a small preview (it came back as a denoised 256-pixel thumbnail, exit 0)
    or the sensor's mosaic; a first page that is a reduced-resolution copy of a later one; samples of a bit depth
    other than 1, 8 or 16 (12-bit samples were read as 16-bit and written back 16 times darker)."""
    tags = im.tag_v2
    raw = _DNG_VERSION in tags or tags.get(262) in _RAW_PHOTOMETRIC
    if raw or (frames > 1 and p.suffix.lower() in RAW_SUFFIXES):
        kind = ("DNG" if _DNG_VERSION in tags else "CFA" if tags.get(262) in _RAW_PHOTOMETRIC else p.suffix[1:].upper())
        raise InputError(f"'{p}' is a camera raw file ({kind}): the sensor's data, with at most a small preview as a "
                         f"picture; {_RAW_ADVICE}")
    if frames > 1 and int(tags.get(_NEW_SUBFILE_TYPE, 0) or 0) & 1:  # bit 0: a reduced-resolution version
        raise InputError(f"'{p}' starts with a reduced-resolution copy ({im.size[0]}x{im.size[1]}) of an image on a "
                         f"later page; denoising it would give that thumbnail. Save the full-size page as its own "
                         f"file (e.g. with ImageMagick: magick 'in.tif[1]' page.tif) and give that")
    bps = tags.get(258, (1,))
    bps = bps if isinstance(bps, tuple) else (bps,)
    odd = sorted({int(b) for b in bps if 8 < int(b) < 16})  # (1 to 7 bits Pillow scales to 8)
    if odd:
        raise InputError(f"'{p}' holds {odd[0]}-bit samples, which Pillow reads as 16-bit ones without scaling them "
                         f"(the output would be written {2 ** (16 - odd[0])} times darker); convert it to a 16-bit TIFF "
                         f"or PNG first, scaling its values to the full range (e.g. with ImageMagick: magick in.tif "
                         f"-depth 16 out.png)")


def _tiff16_layout(p: Path, im: Any, layout: str, notes: list[str]) -> str:
    """The layout a 16-bit colour TIFF read by tifffile is given, checked against what its tags say its samples are
    (tifffile hands the samples over as they are): gray or RGB only (a 16-bit CMYK TIFF came out in inverted
    colours, its black taken for alpha and the picture transparent); an extra sample that is not alpha is left out
    (it was written back as alpha: a fourth sample of 0 made the picture transparent); premultiplied alpha is
    refused (it was taken as straight alpha: half-transparent pixels came out half as bright)."""
    photometric = int(im.tag_v2.get(262, 2 if layout != "LA" else 1))
    expected = 1 if layout == "LA" else 2
    if photometric != expected:
        what = _TIFF_PHOTOMETRIC.get(photometric, f"photometric {photometric}")
        raise InputError(f"'{p}' is a 16-bit {what} TIFF; 16-bit TIFFs are read as gray or RGB only: convert it to "
                         f"16-bit RGB (e.g. with ImageMagick: magick in.tif -colorspace sRGB out.tif) and give that")
    extra = im.tag_v2.get(_EXTRA_SAMPLES, 2)
    extra = int(extra[0] if isinstance(extra, tuple) else extra)
    if layout in ("LA", "RGBA") and extra == 1:
        raise InputError(f"'{p}' is a 16-bit TIFF with premultiplied (associated) alpha, which is not read here: save "
                         f"it with straight (unassociated) alpha, or as a 16-bit PNG, and give that")
    if layout == "RGBA" and extra == 0:
        notes.append("the TIFF's fourth sample is not alpha (its extra sample is 'unspecified'): left out; the "
                     "output is RGB")
        return "RGB"
    if layout == "LA" and extra == 0:
        raise InputError(f"'{p}' is a 16-bit gray TIFF with an extra sample that is not alpha; save it as gray (one "
                         f"sample) and give that")
    return layout


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


def _read_png16(p: Path, header: ImageHeader) -> np.ndarray:
    """pypng decodes row by row: the rows go straight into the array (no list of rows, no second copy)."""
    png = require("png", f"reading the 16-bit colour PNG '{p}'")
    with open(p, "rb") as f:  # closed here: given a file name, pypng left the file to the garbage collector
        return _read_png16_from(png, f, p, header)


def _read_png16_from(png: Any, f: IO[bytes], p: Path, header: ImageHeader) -> np.ndarray:
    try:
        width, height, rows, meta = png.Reader(file=f).read()
        planes = meta["planes"]
        declared = header.channels - (header.colour_key is not None)  # a colour key's alpha is made, not stored
        if (width, height, planes) != (header.width, header.height, declared):
            raise InputError(f"'{p}' decodes to {width}x{height}x{planes}, not the {header.width}x{header.height}x"
                             f"{declared} its header declares; is it corrupt?")
        data = np.empty((height, width, planes), dtype=np.uint16)
        flat = data.reshape(height, width * planes)
        count = 0
        for count, row in enumerate(rows, start=1):
            flat[count - 1] = row
        if count != height:
            raise InputError(f"'{p}' holds {count} rows of pixels, not {height}; is it truncated?")
    except (png.Error, zlib.error) as e:
        raise InputError(f"cannot decode the 16-bit PNG '{p}' ({e}); is it truncated or corrupt?") from e
    return data


def _read_tiff16(p: Path, header: ImageHeader) -> np.ndarray:
    tifffile = require("tifffile", f"reading the 16-bit colour TIFF '{p}'")
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        try:
            data = page.asarray()
        except ValueError as e:  # LZW (what scanners and editors write), JPEG, ...: it was called 'truncated or corrupt'
            if "imagecodecs" not in str(e):
                raise
            raise MissingBackendError(f"'{p}' is a 16-bit colour TIFF compressed with {page.compression.name}, which "
                                      f"tifffile decodes with the imagecodecs package only: pip install imagecodecs "
                                      f"(or save it uncompressed, or with Deflate/ZIP)") from e
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE  # (C, H, W): the file says, not the shape
        # (a planar image as wide as its sample count, 3 or 4 pixels, was read with its axes swapped)
    if data.dtype != np.uint16:
        raise InputError(f"'{p}' holds {data.dtype} samples; expected 8- or 16-bit unsigned integers")
    if planar and data.ndim == 3:
        data = np.moveaxis(data, 0, -1)
    if data.ndim != 3 or data.shape[2] not in (2, 3, 4):
        raise InputError(f"'{p}' has an unsupported TIFF sample layout {data.shape}; expected HxWx(2|3|4)")
    if data.shape[2] > header.channels:  # an extra sample that is not alpha (_tiff16_layout): left out
        data = np.ascontiguousarray(data[:, :, :header.channels])
    if data.shape[:2] != (header.height, header.width):
        raise InputError(f"'{p}' decodes to {data.shape[1]}x{data.shape[0]}, not the {header.width}x{header.height} "
                         f"its header declares; is it corrupt?")
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


def _exif_directories(exif: Any) -> dict[int, dict[int, Any]]:
    """The Exif and GPS directories of a loaded EXIF (those it has), to be laid out anew: the interoperability
    directory as a directory of the Exif one (its pointer would point at nothing), the maker note left out (its
    offsets point into the file it came in)."""
    found = {}
    for key in _TIFF_EXIF_IFDS:
        directory = {k: v for k, v in exif.get_ifd(key).items() if k not in (_INTEROP_IFD, _MAKER_NOTE)}
        if key == _EXIF_IFD and exif.get_ifd(_INTEROP_IFD):
            directory[_INTEROP_IFD] = dict(exif.get_ifd(_INTEROP_IFD))
        if directory:
            found[key] = directory
    return found


def _tiff_exif_directories(exif: Any, orientation: int, notes: list[str]) -> bytes | None:
    """A TIFF's Exif (with interoperability) and GPS directories as an EXIF of their own (its first directory holds
    the pointers alone: the TIFF's make, model, artist, ... are its text tags, kept in a TIFF output), for the
    outputs that hold EXIF; None when Pillow cannot read them. The maker note is left out, with a note in
    ``notes``: its offsets point into the TIFF it came in."""
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's 'corrupt EXIF' warnings: what it cannot read is not kept
            own = Image.Exif()
            own.update(_exif_directories(exif))
            if _MAKER_NOTE in exif.get_ifd(_EXIF_IFD):
                notes.append("the TIFF's EXIF maker note (the camera maker's own data: it points into the file it "
                             "came in) is left out")
            if not len(own):
                return None
            loaded = Image.Exif()
            loaded.load(own.tobytes())
            return _exif_without_orientation(loaded, orientation)
    except Exception:  # noqa: BLE001 - directories Pillow cannot read or write: said, not carried
        notes.append("the TIFF's EXIF directories (exposure, lens, GPS, ...) could not be read, and are left out")
        return None


def _exif_without_orientation(exif: Any, orientation: int = 1) -> bytes | None:
    """The EXIF of the image turned upright: no orientation tag, and for a turn of 90 degrees (5 to 8) its pixel
    width and height swapped (they said 128x96 of a 96x128 output)."""
    if len(exif) == 0:
        return None
    if _ORIENTATION_TAG in exif:
        del exif[_ORIENTATION_TAG]
    _text_as_bytes(exif)
    for group in _TIFF_EXIF_IFDS:
        if group in exif:
            _text_as_bytes(exif.get_ifd(group), group)
    if orientation in (5, 6, 7, 8):
        ifd = exif.get_ifd(_EXIF_IFD)
        if _PIXEL_X in ifd and _PIXEL_Y in ifd:
            ifd[_PIXEL_X], ifd[_PIXEL_Y] = ifd[_PIXEL_Y], ifd[_PIXEL_X]
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
    if fmt is None or fmt not in Image.SAVE or fmt not in _OUTPUT_FORMATS:
        what = "cannot tell which image format to write" if fmt is None or fmt not in Image.SAVE else \
            f"{fmt} is not an output format (it would not keep the size, mode or quality)"
        raise InputError(f"{what} for '{path}' (extension '{ext}'); "
                         f"use .png, .jpg/.jpeg, .tif/.tiff, .webp, .bmp, .gif, .ppm/.pgm/.pbm or .tga")
    return fmt


_NETPBM = (".pbm", ".pgm", ".ppm")
"""Netpbm names, each holding the one before it too: a PGM reader reads a PBM (P4) and a PPM reader either (.pnm: any)."""


def _netpbm_problem(info: ImageInfo | ImageHeader, suffix: str) -> tuple[str, str] | None:
    """A Netpbm name whose readers cannot read what Pillow writes for ``info`` (a 1-bit image as P4, gray as P5,
    colour as P6): colour into .pgm or .pbm, gray into .pbm. (.pbm was refused even for a 1-bit image.)"""
    if suffix.lower() not in _NETPBM or info.layout not in ("L", "RGB"):  # .pnm; alpha is refused on its own
        return None
    need = 0 if info.bit_depth == 1 else 1 if info.layout == "L" else 2
    if _NETPBM.index(suffix.lower()) >= need:
        return None
    holds = ("1-bit black and white", "gray", "colour")
    return (f"a {suffix} file holds a {holds[_NETPBM.index(suffix.lower())]} image, and this one is {holds[need]} "
            f"('{info.layout}'{', 1-bit' if need == 0 else ''}): it would be a {('P4', 'P5', 'P6')[need]} under a "
            f"{suffix} name, which {suffix[1:].upper()} readers refuse", f"write it as {_NETPBM[need]} (or .png)")


OVERSHOOT_LIMIT = 1.5  # to_pixels clips [1 - limit, limit] to [0, 1]; values beyond are another scale, refused


def to_pixels(array: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Validate a float result (all rows or a band) and quantise it to the file's integers (clipped to [0, 1]).

    Done in row strips, so the float64 temporaries stay small whatever the image size; the values are the
    same as quantising the whole array at once (every step is per pixel).
    """
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.floating):
        dtype = getattr(array, "dtype", None)
        how = (f"; divide by {np.iinfo(dtype).max} (or write the file's own integers with write_pixels)"
               if dtype in (np.uint8, np.uint16) else
               "; image.astype(np.float32) gives 0.0 and 1.0" if dtype == np.bool_ else
               "; np.asarray(x, dtype=np.float32) makes one (HxWxC)" if not isinstance(array, np.ndarray) else
               "; image.astype(np.float32), scaled to [0, 1]")
        raise InputError(f"the image to write must be a float numpy array in [0, 1]; got "
                         f"{type(array).__name__} {dtype if dtype is not None else ''}".rstrip() + how)
    a = array[:, :, None] if array.ndim == 2 else array
    if a.ndim != 3 or a.shape[2] != info.channels:
        raise InputError(f"the image to write has shape {array.shape}; expected HxWx{info.channels} "
                         f"(layout '{info.layout}' of the image it was read as)")
    top = 65535 if info.bit_depth == 16 else 255
    out = np.empty(a.shape, dtype=np.uint16 if info.bit_depth == 16 else np.uint8)
    step = max(1, _STRIP_BYTES // max(1, a.shape[1] * a.shape[2] * 8))
    for y in range(0, a.shape[0], step):
        part = a[y:y + step]
        if not np.isfinite(part).all():
            raise InputError("the image to write has NaN/inf values; expected finite values in [0, 1]")
        low, high = (float(part.min()), float(part.max())) if part.size else (0.0, 0.0)
        if high > OVERSHOOT_LIMIT or low < -(OVERSHOOT_LIMIT - 1):  # not a denoiser's overshoot: another scale
            hint = f" (8-bit values? divide by 255{'; 16-bit: by 65535' if high > 255 else ''})" if high > 2 else ""
            raise InputError(f"the image to write has values from {low:.4g} to {high:.4g}; expected [0, 1], a little "
                             f"over at most (that is clipped){hint}")
        out[y:y + step] = np.rint(np.clip(part.astype(np.float64), 0.0, 1.0) * top)
    return out


def write_image(path: str | os.PathLike[str], array: np.ndarray, info: ImageInfo, overwrite: bool = False,
                quality: int | None = None) -> Path:
    """Write a float HxWxC array in [0, 1] in the mode and bit depth of ``info``; return the path written.

    The format follows the extension. The write is atomic, and an existing file (the input included) is
    only replaced when ``overwrite`` is True (True or False: anything else, e.g. the truthy 'no', is an
    InputError). Values a little outside [0, 1] are clipped (denoisers overshoot); beyond ``OVERSHOOT_LIMIT``
    (e.g. 0-255 values) they are refused.
    ``quality`` (1 to 100): a JPEG or WebP output's (:func:`check_quality`); other formats are lossless. None: 95,
    and a WebP output of a lossless WebP is written lossless (given, it is written lossy at that quality).
    """
    target = check_path_arg(path, "the output")
    _check_info(info)
    check_quality(quality)
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) == 3 and shape[0] == info.channels and shape[2] != info.channels:  # read as the size before
        raise InputError(f"the image to write has shape {shape}: channels first? array.transpose(1, 2, 0) gives "
                         f"{shape[1:] + shape[:1]}, the HxWx{info.channels} expected (layout '{info.layout}')")
    size = shape[:2] if len(shape) in (2, 3) else ()  # a batch (1, H, W, C): to_pixels names its shape
    if len(size) == 2 and tuple(size) != (info.height, info.width):  # it wrote a 50x40 array with 451x300's info
        raise InputError(f"the image to write is {size[1]}x{size[0]}, and info describes a {info.width}x{info.height} "
                         f"image: write with the info of the image it was made from (or dataclasses.replace(info, "
                         f"width=..., height=...) for a resized one)")
    check_output_path(target, info.path, overwrite)
    check_writable(target, info)
    return write_pixels(target, to_pixels(array, info), info, overwrite=overwrite, quality=quality)


def _check_info(info: object) -> None:
    """InputError unless ``info`` is an :class:`ImageInfo` (None said "'NoneType' object has no attribute
    'channels'"; read_header's ImageHeader got past the check, then failed with an AttributeError in the write)."""
    if not isinstance(info, ImageInfo):
        more = (": read_header's ImageHeader describes a file, not the metadata to write; read the pixels with "
                "read_image (or read_pixels) and give the ImageInfo it returns" if isinstance(info, ImageHeader) else "")
        raise InputError(f"info= is the ImageInfo read_image returned with the pixels (it says the mode and bit depth "
                         f"to write); got {type(info).__name__}{more}")


def check_quality(quality: int | None, name: str = "quality") -> None:
    """InputError unless ``quality`` (named ``name`` in the message) is a whole number from 1 to 100 or None (the
    default)."""
    if quality is None:
        return
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 1 <= quality <= 100:
        raise InputError(f"{name} is a JPEG / WebP output's quality, a whole number from 1 to 100 (default "
                         f"{JPEG_QUALITY}); got {quality!r}. Lower gives smaller files and undoes more of the "
                         f"denoising")


def write_pixels(path: str | os.PathLike[str], pixels: np.ndarray, info: ImageInfo, overwrite: bool = False,
                 quality: int | None = None) -> Path:
    """Write the file's own integers (uint8, or uint16 for 16-bit; HxWxC as :func:`read_pixels` gives them).

    Same rules as :func:`write_image`. Memory beyond ``pixels``: Pillow's image of them (up to 4 bytes per
    pixel; none for 8-bit gray), or nothing more for 16-bit colour (pypng writes row by row, tifffile from
    the array).
    """
    target = Path(path)
    _check_info(info)
    check_output_path(target, info.path, overwrite)
    fmt = check_writable(target, info)
    dtype = np.uint16 if info.bit_depth == 16 else np.uint8
    if not isinstance(pixels, np.ndarray) or pixels.dtype != dtype or pixels.ndim != 3 \
            or pixels.shape[2] != info.channels:
        raise InputError(f"the pixels to write must be {np.dtype(dtype).name} HxWx{info.channels} (layout "
                         f"'{info.layout}', {info.bit_depth}-bit); got {getattr(pixels, 'dtype', type(pixels).__name__)} "
                         f"{getattr(pixels, 'shape', '')}")
    check_quality(quality)
    atomic_write(target, _choose_writer(fmt, pixels, info, quality), overwrite)
    return target


def check_path_arg(path: Any, what: str = "the image's path") -> Path:
    """``path`` as a Path, or InputError for what is no path (None, a number: a bare TypeError from pathlib)."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"{what} is a file path (str or pathlib.Path); got {type(path).__name__} {path!r}")
    return Path(path)


def check_input_exists(path: str | os.PathLike[str]) -> Path:
    """The input image's path, or InputError when there is no file there (or what was given is no path)."""
    p = check_path_arg(path, "the input image")
    if not p.exists():
        if is_link_loop(p):  # said to be missing
            raise InputError(f"'{p}' is a symbolic link that leads back to itself (a loop of links), not an image; "
                             f"fix or remove the link")
        raise InputError(f"no such image file: '{p}'. Check the path")
    return p


def check_output_path(path: str | os.PathLike[str], source: str | os.PathLike[str] | None, overwrite: bool) -> None:
    """Before any work: refuse a missing or unwritable output folder, an output that is a folder, and an existing
    output (the input ``source`` too) unless ``overwrite`` (True or False: 'no', a truthy string, replaced files)."""
    if not isinstance(overwrite, (bool, np.bool_)):
        raise InputError(f"overwrite= is True (replace an existing output) or False; got {overwrite!r}")
    target = check_path_arg(path, "the output")
    if not target.parent.is_dir():
        through = next((a for a in target.parents if a.exists() or a.is_symlink()), None)
        if through is not None and not through.is_dir():  # 'photo.png/x.png' was told to create a folder that exists
            what = "a link to nothing" if not through.exists() else "a file, not a folder"
            raise InputError(f"the output '{target}' goes through '{through}', which is {what}; give a path in a "
                             f"folder")
        raise InputError(f"the output folder '{target.parent}' does not exist; create it first (mkdir -p "
                         f"{shlex.quote(str(target.parent))}), or write into a folder that exists")
    if target.is_dir():
        example = target / (Path(source).name if source is not None else "denoised.png")
        raise InputError(f"the output '{target}' is a folder; give a file path such as {example}")
    refuse_special_file(target)
    if target.exists() and not overwrite:
        same = source is not None and Path(source).exists() and os.path.samefile(target, source)
        what = "is the input image" if same else "already exists"
        raise InputError(f"the output '{target}' {what}; refusing to replace it. Choose another output path or "
                         f"pass --overwrite (overwrite=True in Python)")
    # the folder takes a file, and a link to nothing is not replaced unasked: found out now, not after the work
    check_output_file(target, overwrite=overwrite, option="--overwrite (overwrite=True in Python)")


_PSD_VERSION_INFO = 1057  # an image resource: its fifth byte says whether the merged picture was saved


def _psd_merged_alpha(p: Path) -> bool:
    """Whether a Photoshop file's first extra channel is its merged picture's transparency: only when its layer count
    is negative, as Photoshop writes it then; otherwise extra channels are alpha channels (saved selections). True
    when the file cannot be read that far (Pillow's reading stands)."""
    try:
        with open(p, "rb") as f:
            f.seek(26)
            for _ in range(2):  # the colour mode data, the image resources
                f.seek(int.from_bytes(f.read(4), "big"), os.SEEK_CUR)
            if int.from_bytes(f.read(4), "big") == 0 or int.from_bytes(f.read(4), "big") == 0:
                return False  # no layer and mask section, or no layer info: a flattened file
            return int.from_bytes(f.read(2), "big", signed=True) < 0
    except OSError:
        return True


def _check_psd(p: Path, im: Any) -> None:
    """InputError for a Photoshop file saved without its merged picture ("Maximize PSD and PSB File Compatibility"
    off): the picture Pillow reads in its place is blank, and was denoised into a white result with exit 0; and for
    a multichannel one (colour mode 7: spot or scientific channels), which Pillow reads as its first channel alone,
    in gray (it came back gray with exit 0)."""
    with open(p, "rb") as f:
        colour_mode = int.from_bytes(f.read(26)[24:26], "big")
    if colour_mode == 7:
        raise InputError(f"'{p}' is a multichannel Photoshop file (channels of their own, not RGB or gray), of which "
                         f"Pillow reads the first channel alone; convert it to RGB or grayscale (Photoshop: Image > "
                         f"Mode) and save it again, or export it as PNG or TIFF")
    for key, _, data in getattr(im, "resources", None) or ():
        if key == _PSD_VERSION_INFO and len(data) > 4 and data[4] == 0:
            raise InputError(f"'{p}' is a Photoshop file saved without its merged picture (\"Maximize PSD and PSB File "
                             f"Compatibility\" was off): only its layers hold the picture, and moe-denoise does not "
                             f"combine layers. Save it again with that option on, or export it as PNG or TIFF")


def _mpo_views(im: Any) -> int:
    """Images of a multi-picture JPEG besides the first that are pictures of their own (the other eye of a stereo
    photo, a panorama's or multi-angle set's frames), not a preview or an auxiliary image (a gain map)."""
    try:
        entries = (getattr(im, "mpinfo", None) or {}).get(0xB002) or []
        return sum(str(e["Attribute"]["MPType"]).startswith("Multi-Frame") for e in entries[1:])
    except (KeyError, TypeError, AttributeError):  # an MP index Pillow read oddly: every frame counts, as before
        return int(getattr(im, "n_frames", 1) or 1) - 1


def check_frames_kept(path: str | os.PathLike[str], header: ImageHeader) -> None:
    """InputError when the output ``path`` is the file ``header`` describes and that file has more frames (pages)
    than the first, which alone is read: replacing it would lose the others (said after the work, as a note)."""
    target = Path(path)
    if header.frames > 1 and target.exists() and os.path.samefile(target, header.path):
        what = ("views (a stereo, panorama or multi-angle multi-picture JPEG)" if header.format == "MPO"
                else "frames (pages of a TIFF, or an animation)")
        raise InputError(f"'{target}' has {header.frames} {what} and only the first "
                         f"is read: replacing the file with the result would lose the other {header.frames - 1}. Write "
                         f"the result to another file (nothing was written)")


def check_writable(path: str | os.PathLike[str], info: ImageInfo | ImageHeader) -> str:
    """The output format for ``path``, after checking it can hold ``info``'s mode and bit depth without loss.

    Called by :func:`write_image`, and before denoising so that a bad output path fails in seconds,
    not after the work is done. Also checks that the optional writer a 16-bit colour image needs is here.
    """
    fmt = output_format(path)
    problem = format_problem(fmt, info, Path(path).suffix)
    if problem is not None:
        raise InputError("; ".join(problem))
    if info.bit_depth == 16 and info.layout != "L":
        require("png" if fmt == "PNG" else "tifffile", f"writing a 16-bit colour {fmt}")
    return fmt


def format_problem(fmt: str, info: ImageInfo | ImageHeader, suffix: str = "") -> tuple[str, str] | None:
    """What the output format ``fmt`` (Pillow's name; the file's ``suffix`` where it says more) would lose of
    ``info``'s image, and what to write instead; None when it holds the image whole (PNG holds every layout and bit
    depth that is read)."""
    if fmt == "PPM" and _netpbm_problem(info, suffix):  # Pillow wrote a colour P6 named .pgm
        return _netpbm_problem(info, suffix)
    if fmt == "JPEG" and (info.bit_depth == 16 or info.layout in ("LA", "RGBA")):
        what = "16 bits per channel" if info.bit_depth == 16 else f"an alpha channel ('{info.layout}')"
        return f"JPEG cannot store {what}", "write the result as .png or .tif to keep it"
    if fmt == "GIF" and info.layout != "L":
        return (f"GIF holds at most 256 colours and on/off transparency: the '{info.layout}' result would be "
                f"requantised to a 256-colour palette, losing colours (and, denoised, much of the denoising)",
                "write it as .png (lossless, every colour and the alpha kept) and convert that if you need a GIF")
    if fmt == "PPM" and info.layout in ("LA", "RGBA"):
        return (f"PPM/PGM keeps no alpha channel: the alpha of this '{info.layout}' image would be lost",
                "write it as .png, .tif or .tga to keep it")
    if fmt == "BMP" and info.layout in ("LA", "RGBA"):
        return (f"BMP keeps no alpha channel (readers take a 32-bit BMP's fourth byte as padding): the alpha of this "
                f"'{info.layout}' image would be lost", "write it as .png, .tif or .webp to keep it")
    if info.bit_depth == 16 and info.layout == "LA" and fmt == "TIFF":
        return ("a 16-bit gray+alpha TIFF cannot be read back by Pillow, so not by this tool either (it wrote them)",
                "write the result as .png, which keeps 16-bit gray+alpha")
    if info.bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        return f"16-bit images can be written as PNG or TIFF only; got an output in {fmt}", "use .png or .tif"
    return None


ICC_FORMATS = ("PNG", "JPEG", "TIFF", "WEBP")  # the outputs whose files Pillow writes an ICC profile into
DPI_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")  # ... and a resolution


def output_notes(fmt: str, info: ImageInfo | ImageHeader) -> list[str]:
    """What writing ``info``'s image as ``fmt`` changes that :func:`check_writable` lets through (said in the
    report, not refused): WebP has no gray mode, so a gray image comes back as RGB(A), the gray in each channel;
    a format that holds no ICC profile, resolution or XMP leaves the input's out, and one other than the input's
    its text metadata (PNG text chunks, JPEG comments, TIFF text tags: :data:`TEXT_HOMES`). Each was dropped
    without a word."""
    notes = []
    named_jpeg = Path(info.path).suffix.lower() in (".jpg", ".jpeg", ".jpe", ".jfif")
    if fmt == "JPEG" and named_jpeg and info.format not in ("JPEG", "MPO"):  # a PNG saved as photo.jpg: its result,
        # named after it, was compressed without a word, every pixel of the lossless input kept before
        notes.append(f"the input is a {info.format} file named {Path(info.path).suffix}: the result is written as the "
                     f"JPEG its name says (lossy); write .png to keep every pixel")
    icc = getattr(info, "icc_profile", None)
    if fmt == "WEBP" and info.layout in ("L", "LA"):
        exact = "" if getattr(info, "lossless", False) else " (within a level: WebP stores colour as YUV)"
        notes.append(f"WebP has no gray mode: the result is written as {'RGBA' if info.layout == 'LA' else 'RGB'}, "
                     f"the gray in each colour channel{exact}"
                     f"{', without its gray ICC profile (which an RGB image cannot use)' if _gray_icc(icc) else ''}; "
                     f"write .png or .tif to keep it '{info.mode}'")
    elif icc and fmt not in ICC_FORMATS:
        notes.append(f"{fmt} holds no ICC colour profile: the input's is left out, and its colours may look "
                     f"different; write .png, .tif, .jpg or .webp to keep it")
    dpi = getattr(info, "dpi", None)
    if dpi and fmt not in DPI_FORMATS:
        notes.append(f"{fmt} holds no resolution: the input's {dpi[0]:.0f}x{dpi[1]:.0f} dpi is left out; write .png, "
                     f".tif or .jpg to keep it")
    gamma = _png_gamma(getattr(info, "png_colour", ()))
    if fmt != "PNG" and gamma is not None and not icc and abs(gamma - 1 / 2.2) > 0.01:  # a viewer then shows the
        # pixels as sRGB: a linear (gamma 1.0) PNG came out visibly other, without a word
        notes.append(f"the input's PNG gamma ({gamma:.5g}, not sRGB's 1/2.2) is left out: {fmt} has no such field, "
                     f"so viewers will show the pixels as sRGB and they may look different; write .png to keep it")
    exif = getattr(info, "exif", None)
    if exif and fmt == "TIFF" and _tiff_takes_exif(info):  # (it was left out of every TIFF, with a note)
        if _tiff_exif_tags(exif) is None:
            notes.append(f"the input's EXIF ({len(exif):,} bytes: camera, date, exposure, GPS, ...) is left out: "
                         f"it could not be rewritten as TIFF tags; write .png, .jpg or .webp to keep it")
        else:
            notes += _exif_left_out_of_tiff(exif)
    elif exif and fmt == "TIFF":
        why = "a 16-bit colour TIFF (tifffile writes it)" if info.bit_depth == 16 else "a compressed TIFF (libtiff)"
        notes.append(f"the input's EXIF ({len(exif):,} bytes: camera, date, exposure, GPS, ...) is left out: this "
                     f"writes no EXIF into {why}; write .png to keep it")
    elif exif and fmt not in _EXIF_FORMATS:  # camera, date, copyright, exposure, GPS: it was dropped without a word
        notes.append(f"the input's EXIF ({len(exif):,} bytes: camera, date, exposure, GPS, ...) is left out: this "
                     f"writes EXIF into PNG, JPEG, WebP and TIFF files only; write .png, .jpg, .webp or .tif to keep it")
    elif exif and fmt == "JPEG" and len(exif) > JPEG_EXIF_LIMIT:
        notes.append(f"a JPEG holds at most {JPEG_EXIF_LIMIT:,} bytes of EXIF (in one APP1 segment): the input's "
                     f"{len(exif):,}-byte EXIF (camera, date, exposure, GPS, ...) is left out; write .png or .webp to "
                     f"keep it")
    xmp = getattr(info, "xmp", None)
    if xmp and fmt not in XMP_FORMATS:
        notes.append(f"{fmt} holds no XMP metadata: the input's XMP packet ({len(xmp):,} bytes: creator, rights, "
                     f"keywords, ...) is left out; write .png, .tif, .jpg or .webp to keep it")
    elif xmp and fmt == "JPEG" and len(xmp) > JPEG_XMP_LIMIT:
        notes.append(f"a JPEG holds at most {JPEG_XMP_LIMIT:,} bytes of XMP (in one APP1 segment): the input's "
                     f"{len(xmp):,}-byte XMP packet is left out; write .png, .tif or .webp to keep it")
    text = getattr(info, "text", ())
    home = TEXT_HOMES.get(info.format, "")
    if text and home != fmt:  # text is an ImageInfo's
        names = text_names(info)  # type: ignore[arg-type]
        what = {"PNG": "PNG text chunks", "JPEG": "JPEG comment or IPTC segments", "TIFF": "TIFF text tags",
                "GIF": "GIF comment"}[home]
        one = len(names) == 1
        ext = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "GIF": ".gif"}[home]
        keep = f"; write {ext} to keep {'it' if one else 'them'}" if format_problem(home, info) is None else ""
        notes.append(f"{fmt} holds no {what}: the input's {_and(names)} {'is' if one else 'are'} left out (not copied "
                     f"into other fields){keep}")
    elif text and fmt == "TIFF" and _through_libtiff(info):  # type: ignore[arg-type]
        cut = [_text_name("TIFF", kind, data) for kind, data in text if kind != str(_TIFF_IPTC_TAG) and b"\0" in data]
        if cut:
            notes.append(f"the input's {_and(cut)} {'holds a zero byte' if len(cut) == 1 else 'hold zero bytes'}: "
                         f"libtiff, which writes a compressed TIFF, ends a text tag there, so what follows is left out")
    return notes


def _through_libtiff(info: ImageInfo) -> bool:
    """Whether a TIFF output of ``info`` is written by Pillow through libtiff: compressed (as the input was), and not
    by tifffile (16-bit colour)."""
    return (info.compression in _TIFF_LOSSLESS and info.compression != "raw"
            and not (info.bit_depth == 16 and info.layout != "L"))


def _and(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _gray_icc(profile: bytes | None) -> bool:
    """Whether an ICC profile describes gray data (its header's colour space, bytes 16-19, is 'GRAY')."""
    return bool(profile) and profile[16:20] == b"GRAY"


def _choose_writer(fmt: str, data: np.ndarray, info: ImageInfo, quality: int | None) -> Callable[[IO[bytes]], None]:
    """A function that writes ``data`` to an open binary file in ``fmt`` (already checked by check_writable)."""
    if info.bit_depth == 16 and info.layout != "L":
        return (lambda f: _write_png16(f, data, info)) if fmt == "PNG" else (lambda f: _write_tiff16(f, data, info))
    return lambda f: _write_pillow(f, fmt, data, info, quality)


def _write_pillow(f: IO[bytes], fmt: str, data: np.ndarray, info: ImageInfo, quality: int | None) -> None:
    Image = _pil()
    if info.bit_depth == 16:
        im = Image.fromarray(data[:, :, 0], mode=None)  # uint16 HxW -> 'I;16'
    else:
        im = Image.fromarray(data[:, :, 0] if info.layout == "L" else data)
        if info.bit_depth == 1:
            im = im.convert("1", dither=Image.Dither.NONE)  # threshold at 128
    im.save(f, format=fmt, **_save_options(fmt, info, quality))


def _save_options(fmt: str, info: ImageInfo, quality: int | None = None) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if info.icc_profile and not (fmt == "WEBP" and _gray_icc(info.icc_profile)):  # WebP: gray is written as RGB
        opts["icc_profile"] = info.icc_profile
    if info.dpi:
        opts["dpi"] = info.dpi
    if info.exif and fmt in _EXIF_FORMATS and not (fmt == "JPEG" and len(info.exif) > JPEG_EXIF_LIMIT):
        opts["exif"] = info.exif
    if fmt == "JPEG":
        opts.update(quality=int(quality or JPEG_QUALITY), subsampling=0)  # 4:4:4: keep the denoised chroma detail
    if fmt == "WEBP" and info.lossless and quality is None:  # every pixel kept, as the input's were
        opts["lossless"] = True
    elif fmt == "WEBP":  # a quality given is a lossy file asked for, whatever the input was
        opts["quality"] = int(quality or JPEG_QUALITY)  # Pillow's default (80) would visibly undo the denoising
    if fmt == "TIFF" and info.compression in _TIFF_LOSSLESS:
        opts["compression"] = info.compression
    if info.xmp and (fmt == "WEBP" or (fmt == "JPEG" and len(info.xmp) <= JPEG_XMP_LIMIT)):
        opts["xmp"] = info.xmp
    text = _kept_text(fmt, info)
    if fmt == "JPEG" and text:  # each comment and IPTC segment as it was (Pillow's comment= writes one comment)
        opts["extra"] = b"".join((b"\xff\xfe" if kind == "COM" else b"\xff\xed") + (len(data) + 2).to_bytes(2, "big")
                                 + data for kind, data in text)
    if fmt == "GIF" and text:
        opts["comment"] = text[0][1]
    exif_tags = _tiff_exif_tags(info.exif) if fmt == "TIFF" and info.exif and _tiff_takes_exif(info) else None
    if fmt == "TIFF" and (text or info.xmp or exif_tags):
        opts["tiffinfo"] = {**(exif_tags or {}), **_tiff_text_tags(info, text)}
    chunks = _png_chunks_to_write(info) if fmt == "PNG" else []
    if chunks:
        from PIL.PngImagePlugin import PngInfo

        opts["pnginfo"] = PngInfo()
        for kind, data in chunks:
            opts["pnginfo"].add(kind, data)
    return opts


def _kept_text(fmt: str, info: ImageInfo) -> tuple[tuple[str, bytes], ...]:
    """The pieces of ``info``'s text metadata an output in ``fmt`` holds: all, when it is their format
    (:data:`TEXT_HOMES`), else none."""
    return info.text if TEXT_HOMES.get(info.format) == fmt else ()


def _tiff_text_tags(info: ImageInfo, text: tuple[tuple[str, bytes], ...]) -> dict[int, bytes]:
    """{tag: bytes} of a TIFF output's text tags and XMP (tag 700)."""
    tags = {int(kind): data for kind, data in text}
    if info.xmp:
        tags[_TIFF_XMP_TAG] = info.xmp
    return tags


def _tiff_takes_exif(info: ImageInfo | ImageHeader) -> bool:
    """Whether a TIFF of ``info``'s image gets its EXIF: Pillow writes Exif and GPS directories into the TIFFs it
    writes itself (uncompressed); libtiff, which it compresses with, refuses them ('Error setting from dictionary'),
    and tifffile (16-bit colour) writes none."""
    compression = getattr(info, "compression", None)
    compressed = compression in _TIFF_LOSSLESS and compression != "raw"
    return not compressed and not (info.bit_depth == 16 and info.layout != "L")


def _exif_left_out_of_tiff(exif: bytes) -> list[str]:
    """A note naming what of ``exif`` a TIFF output does not take (:func:`_tiff_exif_tags`): its maker note, and
    first-directory tags besides those of :data:`_TIFF_EXIF_FIRST` and the picture's layout (they went without a
    word), if any."""
    from PIL import TiffTags

    loaded = _pil().Exif()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.load(exif)
        maker = _MAKER_NOTE in loaded.get_ifd(_EXIF_IFD)
    names = {0xC4A5: "PrintImageMatching"}  # Epson's print settings, written by many cameras; Pillow has no name
    others = sorted(names.get(key) or (TiffTags.lookup(key).name if TiffTags.lookup(key).name != "unknown" else
                                       f"tag {key:#06x}")
                    for key in loaded if key not in _TIFF_EXIF_FIRST and key not in _EXIF_LAYOUT_TAGS)
    left = (["maker note (the camera maker's own data: it points into the file it came in)"] if maker else []) + (
        [f"{', '.join(others)} (not among the tags a TIFF output takes)"] if others else [])
    if not left:
        return []
    return [f"the EXIF's {' and its '.join(left)} {'are' if maker and others or len(others) > 1 else 'is'} left out of "
            f"the TIFF; write .png, .jpg or .webp to keep all of the EXIF"]


def _text_as_bytes(values: Any, group: int | None = None) -> Any:
    """``values`` (an EXIF directory, changed in place) with its text as the bytes it was: Pillow reads EXIF text as
    Latin-1 and writes text back as ASCII, '?' for every other byte, so 'Jörg' (UTF-8, as editors write it) and
    '(c)' as one byte came back 'J??rg' and '?'. Only tags Pillow knows as text (it writes their bytes as text)."""
    from PIL import TiffTags

    for key, value in list(values.items()):
        if isinstance(value, str) and not value.isascii() and TiffTags.lookup(key, group).type == 2:
            try:
                values[key] = value.encode("latin-1")
            except UnicodeEncodeError:  # not what Pillow read: a caller's own text
                pass
    return values


@lru_cache(maxsize=8)
def _tiff_exif_tags(exif: bytes) -> dict[int, Any] | None:
    """A photo's EXIF (JPEG, PNG, WebP) as TIFF tags: its description, make, model, software, date, artist and
    copyright, and its Exif (with interoperability) and GPS directories laid out anew; None when Pillow cannot
    write them (tried on a 1x1 TIFF first: a failure after the work would lose it). The maker note is left out:
    its offsets point into the file it came in."""
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's 'corrupt EXIF' warnings: what it cannot read is not kept
            loaded = Image.Exif()
            loaded.load(exif)
            tags: dict[int, Any] = _text_as_bytes({key: loaded[key] for key in _TIFF_EXIF_FIRST if key in loaded})
            tags.update({key: _text_as_bytes(directory, key) for key, directory in _exif_directories(loaded).items()})
            Image.new("L", (1, 1)).save(io.BytesIO(), format="TIFF", tiffinfo=tags)
    except Exception:  # noqa: BLE001 - any EXIF Pillow cannot write: left out, with a note (output_notes)
        return None
    return tags  # {}: nothing a TIFF takes (a note names what is left out), not a failure


def _png_chunks_to_write(info: ImageInfo) -> list[tuple[bytes, bytes]]:
    """The chunks a PNG output gets besides its image, ICC profile, EXIF and resolution, as (type, data): the
    input PNG's gAMA / cHRM / sRGB and text chunks, and the XMP packet as an uncompressed iTXt chunk."""
    chunks = list(info.png_colour)
    if info.xmp:
        chunks.append((b"iTXt", _XMP_KEYWORD + b"\0\0\0\0\0" + info.xmp))  # flag, method, language, translated
    chunks += [(kind.encode(), data) for kind, data in _kept_text("PNG", info)]
    return chunks


class _AfterHeader:
    """A binary file that inserts ``extra`` bytes after the first ``at`` bytes written (PNG: after IHDR)."""

    def __init__(self, f: IO[bytes], extra: bytes, at: int) -> None:
        self.f, self.extra, self.at, self.count = f, extra, at, 0

    def write(self, b: bytes) -> int:
        b = bytes(b)
        if self.extra and self.count + len(b) >= self.at:
            k = self.at - self.count
            self.f.write(b[:k] + self.extra + b[k:])
            self.extra = b""
        else:
            self.f.write(b)
        self.count += len(b)
        return len(b)

    def flush(self) -> None:
        self.f.flush()


def _write_png16(f: IO[bytes], data: np.ndarray, info: ImageInfo) -> None:
    """16-bit gray+alpha / RGB / RGBA PNG via pypng, row by row, with the ICC profile and EXIF spliced in."""
    png = require("png", "writing a 16-bit colour PNG")
    h, w, c = data.shape
    kwargs: dict[str, Any] = {}
    if info.dpi:
        kwargs = dict(x_pixels_per_unit=round(info.dpi[0] / 0.0254), y_pixels_per_unit=round(info.dpi[1] / 0.0254),
                      unit_is_meter=True)
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16, **kwargs)
    extra = io.BytesIO()
    if info.icc_profile:
        png.write_chunk(extra, b"iCCP", b"icc\x00\x00" + zlib.compress(info.icc_profile))
    if info.exif:
        png.write_chunk(extra, b"eXIf", info.exif[6:] if info.exif.startswith(b"Exif\x00\x00") else info.exif)
    for kind, chunk_data in _png_chunks_to_write(info):
        png.write_chunk(extra, kind, chunk_data)
    # right after the signature (8 bytes) and IHDR (25 bytes), before IDAT
    writer.write(_AfterHeader(f, extra.getvalue(), 8 + 25), data.reshape(h, w * c))


class _Seekable:
    """The open output file without its ``name`` (a descriptor number, which tifffile takes for a path)."""

    def __init__(self, f: IO[bytes]) -> None:
        self.write, self.seek, self.tell, self.flush, self.fileno = f.write, f.seek, f.tell, f.flush, f.fileno


def _write_tiff16(f: IO[bytes], data: np.ndarray, info: ImageInfo) -> None:
    """16-bit gray+alpha / RGB / RGBA TIFF via tifffile (deflate-compressed when the input was compressed)."""
    tifffile = require("tifffile", "writing a 16-bit colour TIFF")
    c = data.shape[2]
    compressed = info.compression not in (None, "raw")
    tifffile.imwrite(
        _Seekable(f), data, photometric="minisblack" if c == 2 else "rgb",
        extrasamples=("unassalpha",) if c in (2, 4) else None,
        compression="zlib" if compressed else None, iccprofile=info.icc_profile,
        resolution=info.dpi, resolutionunit="INCH" if info.dpi else None, metadata=None,
        extratags=[_tifffile_tag(tag, data) for tag, data in _tiff_text_tags(info, _kept_text("TIFF", info)).items()],
    )


def _tifffile_tag(tag: int, data: bytes) -> tuple[int, int, int, bytes, bool]:
    """tifffile's (code, type, count, value, first page only) of a text tag or XMP: ASCII (2; tifffile counts it and
    ends it with a zero byte), XMP as BYTE (1), IPTC as UNDEFINED (7)."""
    if tag == _TIFF_XMP_TAG:
        return tag, 1, len(data), data, True
    if tag == _TIFF_IPTC_TAG:
        return tag, 7, len(data), data, True
    return tag, 2, 0, data, True
