"""Image I/O: round trips keep size, mode and bit depth; conversions are noted; errors are clear; writes are atomic."""
from __future__ import annotations

import dataclasses
import io
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, TiffImagePlugin

from moe_base.errors import InputError
from runtime import images
from runtime.images import read_image, read_pixels, write_image
from runtime.photo import add_noise_to_file, denoise_file


def identity(tiles: np.ndarray) -> np.ndarray:
    return tiles


def rng_u8(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def rng_u16(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def png16_bytes(data: np.ndarray) -> bytes:
    """A minimal 16-bit PNG (colour type from the channel count), encoded here independently of pypng."""
    h, w, c = data.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + data[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def as_int(array: np.ndarray, bits: int) -> np.ndarray:
    return np.rint(array * (65535 if bits == 16 else 255)).astype(np.uint16 if bits == 16 else np.uint8)


def test_import_needs_only_numpy() -> None:
    code = ("import sys, runtime.tiling, runtime.images, runtime.photo; "
            "bad = [m for m in ('torch', 'PIL', 'tqdm', 'png', 'tifffile') if m in sys.modules]; "
            "sys.exit(f'imported at import time: {bad}' if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------------------ round trips


def test_rgb8_png_round_trip_through_denoise_file(tmp_path: Path) -> None:
    pixels = rng_u8((45, 77, 3))
    Image.fromarray(pixels).save(tmp_path / "in.png")
    report = denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "RGB" and out.size == (77, 45)
        np.testing.assert_array_equal(np.asarray(out), pixels)
    assert report["size"] == [77, 45] and report["bit_depth"] == 8 and report["tiles"] > 1
    jpeg = denoise_file(tmp_path / "in.png", tmp_path / "out.jpg", identity, progress=False)
    assert (jpeg["format"], jpeg["output_format"]) == ("PNG", "JPEG")  # it said PNG (the input's) alone


def test_gray16_png_keeps_every_value(tmp_path: Path) -> None:
    pixels = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    Image.fromarray(pixels).save(tmp_path / "in.png")
    array, info = read_image(tmp_path / "in.png")
    assert (info.mode, info.bit_depth, info.layout, array.shape) == ("I;16", 16, "L", (256, 256, 1))
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(out), pixels)


@pytest.mark.parametrize("channels", [3, 4, 2])
def test_colour16_png_round_trip(tmp_path: Path, channels: int) -> None:
    png = pytest.importorskip("png", reason="pypng is not installed: 16-bit colour PNG support is optional")
    pixels = rng_u16((20, 33, channels), seed=channels)
    (tmp_path / "in.png").write_bytes(png16_bytes(pixels))
    array, info = read_image(tmp_path / "in.png")
    assert info.bit_depth == 16 and info.channels == channels
    np.testing.assert_array_equal(as_int(array, 16), pixels)
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    head = (tmp_path / "out.png").read_bytes()[:26]
    assert head[24] == 16 and head[25] == {2: 4, 3: 2, 4: 6}[channels]  # IHDR: 16 bits, same colour type
    w, h, rows, _ = png.Reader(filename=str(tmp_path / "out.png")).read()
    np.testing.assert_array_equal(np.vstack([np.asarray(r) for r in rows]).reshape(h, w, channels), pixels)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_16bit_png_with_a_transparent_colour_key_keeps_its_transparency(tmp_path: Path, channels: int) -> None:
    """A 16-bit PNG's tRNS colour key was dropped without a note (its transparent part came out opaque); an 8-bit
    one's is made the alpha channel, and now a 16-bit one's too."""
    png = pytest.importorskip("png", reason="pypng is not installed: 16-bit PNG is written with it here")
    pixels = rng_u16((12, 10, channels), seed=11)
    key = (1000, 2000, 3000)[:channels]
    pixels[:4, :5] = key
    writer = png.Writer(10, 12, greyscale=channels == 1, bitdepth=16,
                        transparent=key if channels == 3 else key[0])
    with open(tmp_path / "in.png", "wb") as f:
        writer.write(f, pixels.reshape(12, -1))
    report = denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    assert any("transparent colour key converted" in n for n in report["notes"])
    w, h, rows, meta = png.Reader(filename=str(tmp_path / "out.png")).read()
    out = np.vstack([np.asarray(r) for r in rows]).reshape(h, w, channels + 1)
    assert meta["bitdepth"] == 16 and meta["alpha"]
    np.testing.assert_array_equal(out[:, :, :channels], pixels)
    expected_alpha = np.full((12, 10), 65535)
    expected_alpha[:4, :5] = 0
    np.testing.assert_array_equal(out[:, :, channels], expected_alpha)
    if channels == 3:  # a file that decodes to another size is named with the planes its header declares (it said 4)
        from runtime.images import _read_png16, read_header

        header = dataclasses.replace(read_header(tmp_path / "in.png"), width=11)
        with pytest.raises(InputError, match=r"decodes to 10x12x3, not the 11x12x3 its header declares"):
            _read_png16(tmp_path / "in.png", header)


def test_colour16_png_without_pypng_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "in.png").write_bytes(png16_bytes(rng_u16((4, 5, 3))))
    monkeypatch.setitem(sys.modules, "png", None)  # makes `import png` fail
    with pytest.raises(ImportError, match="pip install pypng"):
        read_image(tmp_path / "in.png")


def test_gray_jpeg_stays_gray(tmp_path: Path) -> None:
    pixels = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    Image.fromarray(pixels).save(tmp_path / "in.jpg", quality=95)
    denoise_file(tmp_path / "in.jpg", tmp_path / "out.jpg", identity, progress=False)
    with Image.open(tmp_path / "in.jpg") as src, Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "L" and out.size == (40, 30)
        assert np.abs(np.asarray(out, dtype=float) - np.asarray(src, dtype=float)).mean() < 1.0


def test_rgb_jpeg_keeps_icc_profile_and_quality(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xx, yy = np.meshgrid(np.linspace(0, 255, 64), np.linspace(40, 200, 48))
    smooth = np.stack([xx, yy, np.full((48, 64), 90.0)], axis=-1)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "in.jpg", quality=95, icc_profile=icc)
    denoise_file(tmp_path / "in.jpg", tmp_path / "out.jpg", identity, progress=False)
    with Image.open(tmp_path / "in.jpg") as src, Image.open(tmp_path / "out.jpg") as out:
        assert out.mode == "RGB" and out.info.get("icc_profile") == icc
        assert np.abs(np.asarray(out, dtype=float) - np.asarray(src, dtype=float)).mean() < 1.0


@pytest.mark.parametrize("mode, channels", [("RGBA", 4), ("LA", 2)])
def test_alpha_is_kept_exactly(tmp_path: Path, mode: str, channels: int) -> None:
    pixels = rng_u8((30, 41, channels), seed=2)
    Image.fromarray(pixels, mode=mode).save(tmp_path / "in.png")
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", lambda t: np.full_like(t, 0.5), progress=False)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == mode
        result = np.asarray(out)
    np.testing.assert_array_equal(result[:, :, -1], pixels[:, :, -1])
    assert np.all(np.abs(result[:, :, :-1].astype(int) - 128) <= 1)


def test_tiff16_gray_round_trip(tmp_path: Path) -> None:
    pixels = rng_u16((37, 50), seed=3)
    Image.fromarray(pixels).save(tmp_path / "in.tif")
    denoise_file(tmp_path / "in.tif", tmp_path / "out.tif", identity, progress=False)
    with Image.open(tmp_path / "out.tif") as out:
        assert out.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(out), pixels)


def test_tiff16_rgb_round_trip(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: 16-bit colour TIFF is optional")
    pixels = rng_u16((21, 34, 3), seed=4)
    tifffile.imwrite(tmp_path / "in.tif", pixels, photometric="rgb", compression="zlib")
    array, info = read_image(tmp_path / "in.tif")
    assert info.bit_depth == 16 and info.layout == "RGB"
    denoise_file(tmp_path / "in.tif", tmp_path / "out.tif", identity, progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), pixels)


@pytest.mark.parametrize("shape", [(5, 3, 3), (6, 4, 4), (7, 9, 3)])
def test_a_planar_tiff16_is_read_by_its_layout_not_guessed_from_its_shape(tmp_path: Path, shape) -> None:
    """Planar (one plane a sample) 16-bit colour TIFFs were told from the array's shape: one as many pixels wide as it
    has samples (3 for RGB, 4 for RGBA) came back with its axes swapped and its pixels scrambled, without a word."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: 16-bit colour TIFF is optional")
    pixels = rng_u16(shape, seed=7)
    tifffile.imwrite(tmp_path / "in.tif", np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate",
                     extrasamples=[2] if shape[2] == 4 else None)
    data, info = read_pixels(tmp_path / "in.tif")
    np.testing.assert_array_equal(data, pixels)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_turned_tiffs_header_gives_the_size_it_is_read_at(tmp_path: Path, bits: int) -> None:
    """Pillow gives a TIFF's size already turned upright by its EXIF orientation (5 to 8), which the header's
    upright_size turned a second time: --reference refused the right clean photo ('is 64x96 but ... is 96x64')."""
    from PIL import ImageOps

    from runtime.images import read_header

    if bits == 8:
        pixels = rng_u8((20, 30, 3), seed=8)
        Image.fromarray(pixels).save(tmp_path / "t.tif", tiffinfo={274: 6})
    else:
        tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: 16-bit colour TIFF is optional")
        pixels = rng_u16((20, 30, 3), seed=8)
        tifffile.imwrite(tmp_path / "t.tif", pixels, photometric="rgb", extratags=[(274, "H", 1, 6, False)])
    header = read_header(tmp_path / "t.tif")
    data, _ = read_pixels(tmp_path / "t.tif")
    np.testing.assert_array_equal(data, np.rot90(pixels, -1))  # orientation 6: turned a quarter clockwise
    assert (header.width, header.height, header.orientation) == (30, 20, 6)
    assert header.upright_size == (data.shape[1], data.shape[0]) == (20, 30)
    if bits == 8:
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "t.tif"))), data)


@pytest.mark.parametrize("out", ["o.png", "o.jpg", "o.tif"])
def test_a_tiff_without_a_resolution_gives_outputs_without_one(tmp_path: Path, out: str) -> None:
    """Pillow reads a TIFF with no resolution tags as 1 dpi, which the output kept: a photo placed in a document came
    out 64 inches wide. One with a resolution keeps it."""
    Image.fromarray(rng_u8((16, 16, 3), seed=9)).save(tmp_path / "none.tif")
    Image.fromarray(rng_u8((16, 16, 3), seed=9)).save(tmp_path / "300.tif", dpi=(300, 300))
    for name, dpi in (("none", None), ("300", 300)):
        denoise_file(tmp_path / f"{name}.tif", tmp_path / f"{name}.{out}", identity, progress=False)
        with Image.open(tmp_path / f"{name}.{out}") as written:
            got = written.info.get("dpi") if written.format != "TIFF" or 282 in written.tag_v2 else None  # Pillow
            # reads a TIFF without XResolution as 1 dpi
            assert (got is None or got == (0, 0)) if dpi is None else round(got[0]) == dpi, (name, got)


def test_a_gray_photo_written_as_webp_leaves_its_gray_icc_profile_out(tmp_path: Path) -> None:
    """WebP has no gray mode, so a gray photo is written as RGB; it kept its gray ICC profile, which an RGB image
    cannot use (colour management failed: 'cannot build transform'). A PNG keeps it."""
    gray_profile = b"\0" * 16 + b"GRAY" + b"\0" * 108  # an ICC header: the colour space is bytes 16-19
    Image.fromarray(rng_u8((16, 16), seed=12)).save(tmp_path / "g.png", icc_profile=gray_profile)
    report = denoise_file(tmp_path / "g.png", tmp_path / "g.webp", identity, progress=False)
    with Image.open(tmp_path / "g.webp") as webp:
        assert webp.mode == "RGB" and not webp.info.get("icc_profile")
    assert any("without its gray ICC profile" in n for n in report["notes"])
    denoise_file(tmp_path / "g.png", tmp_path / "out.png", identity, progress=False)
    with Image.open(tmp_path / "out.png") as png:
        assert png.info.get("icc_profile") == gray_profile


def test_an_output_format_that_holds_no_profile_or_resolution_says_what_it_leaves_out(tmp_path: Path) -> None:
    """BMP, TGA and PPM outputs dropped the input's ICC profile (a wide-gamut photo's colours then display otherwise),
    and WebP and TGA its resolution, without a word."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(rng_u8((16, 16, 3), seed=13)).save(tmp_path / "in.png", icc_profile=profile, dpi=(300, 300))
    expected = {"png": (False, False), "bmp": (True, False), "tga": (True, True), "webp": (False, True)}
    for suffix, (icc_note, dpi_note) in expected.items():
        notes = denoise_file(tmp_path / "in.png", tmp_path / f"out.{suffix}", identity, progress=False)["notes"]
        assert any("holds no ICC colour profile" in n for n in notes) == icc_note, (suffix, notes)
        assert any("holds no resolution: the input's 300x300 dpi is left out" in n for n in notes) == dpi_note
        with Image.open(tmp_path / f"out.{suffix}") as out:  # what the notes say is what the files hold
            assert bool(out.info.get("icc_profile")) != icc_note and bool(out.info.get("dpi")) != dpi_note


def test_a_file_of_several_pages_is_not_replaced_by_its_first(tmp_path: Path) -> None:
    """Only the first frame of a multi-page TIFF (or an animation) is read; denoised onto itself with --overwrite, it
    lost every page after the first, with a note said after the work. Refused before it now; another output is
    written, with the note."""
    from runtime.photo import add_noise_to_file

    pages = [Image.fromarray(rng_u8((8, 8, 3), seed=s)) for s in range(3)]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    before = (tmp_path / "scan.tif").read_bytes()
    with pytest.raises(InputError, match=r"has 3 frames .* would lose the other 2. Write the result to another file"):
        denoise_file(tmp_path / "scan.tif", tmp_path / "scan.tif", identity, overwrite=True, progress=False)
    with pytest.raises(InputError, match="would lose the other 2"):
        add_noise_to_file(tmp_path / "scan.tif", tmp_path / "scan.tif", sigma=0.1, overwrite=True)
    assert (tmp_path / "scan.tif").read_bytes() == before
    report = denoise_file(tmp_path / "scan.tif", tmp_path / "first.tif", identity, progress=False)
    assert any("3 frames; only the first is read" in n for n in report["notes"])


@pytest.mark.parametrize("shape", [(12, 10, 3), (12, 10), (12, 10, 3, 16)])
def test_a_pngs_gamma_and_colour_chunks_are_kept(tmp_path: Path, shape) -> None:
    """A PNG's gAMA (and cHRM, sRGB) chunks were dropped: a linear-gamma PNG without an ICC profile came back with
    other tones in a gamma-aware viewer. Kept now, for 8-bit (Pillow) and 16-bit colour (pypng) outputs."""
    png = pytest.importorskip("png", reason="pypng is not installed: the PNG with gAMA is written with it here")
    bits = 16 if len(shape) == 4 else 8
    h, w = shape[:2]
    channels = 1 if len(shape) == 2 else 3
    pixels = (rng_u16 if bits == 16 else rng_u8)((h, w, channels), seed=13)
    with open(tmp_path / "in.png", "wb") as f:
        png.Writer(w, h, greyscale=channels == 1, bitdepth=bits, gamma=1.0).write(f, pixels.reshape(h, -1))
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    with Image.open(tmp_path / "out.png") as out:
        assert out.info.get("gamma") == 1.0
    chunks = [kind for kind, _ in png.Reader(filename=str(tmp_path / "out.png")).chunks()]
    assert chunks.index(b"gAMA") < chunks.index(b"IDAT")
    w2, h2, rows, _ = png.Reader(filename=str(tmp_path / "out.png")).read()
    np.testing.assert_array_equal(np.vstack([np.asarray(r) for r in rows]).reshape(h, w, channels), pixels)


def test_tiff8_rgb_round_trip(tmp_path: Path) -> None:
    pixels = rng_u8((21, 34, 3), seed=5)
    Image.fromarray(pixels).save(tmp_path / "in.tif", compression="tiff_lzw")
    denoise_file(tmp_path / "in.tif", tmp_path / "out.tif", identity, progress=False)
    with Image.open(tmp_path / "out.tif") as out:
        assert out.mode == "RGB" and out.info.get("compression") == "tiff_lzw"
        np.testing.assert_array_equal(np.asarray(out), pixels)


def test_bilevel_image_stays_bilevel(tmp_path: Path) -> None:
    pixels = rng_u8((16, 24), seed=6) > 127
    Image.fromarray(pixels).save(tmp_path / "in.png")
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=False)
    with Image.open(tmp_path / "out.png") as out:
        assert out.mode == "1"
        np.testing.assert_array_equal(np.asarray(out), pixels)


# ------------------------------------------------------------------------------ conversions, orientation


@pytest.mark.parametrize("transparent, layout", [(False, "RGB"), (True, "RGBA")])
def test_palette_images_become_rgb_and_say_so(tmp_path: Path, transparent: bool, layout: str) -> None:
    im = Image.fromarray(rng_u8((10, 12, 3), seed=7)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    im.save(tmp_path / "in.png", **({"transparency": 0} if transparent else {}))
    array, info = read_image(tmp_path / "in.png")
    assert info.mode == "P" and info.layout == layout and "palette" in " ".join(info.notes)
    np.testing.assert_array_equal(as_int(array, 8), np.asarray(Image.open(tmp_path / "in.png").convert(layout)))


def test_cmyk_jpeg_is_read_as_rgb(tmp_path: Path) -> None:
    Image.fromarray(rng_u8((8, 9, 3))).convert("CMYK").save(tmp_path / "in.jpg")
    array, info = read_image(tmp_path / "in.jpg")
    assert info.mode == "CMYK" and info.layout == "RGB" and array.shape == (8, 9, 3) and info.notes


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_pillow(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    im = Image.fromarray(rng_u8((5, 7, 3), seed=orientation))
    exif = im.getexif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"  # Make: an ordinary tag that must survive
    im.save(tmp_path / "in.png", exif=exif)
    array, info = read_image(tmp_path / "in.png")
    with Image.open(tmp_path / "in.png") as src:
        np.testing.assert_array_equal(as_int(array, 8), np.asarray(ImageOps.exif_transpose(src)))
    assert info.orientation == orientation
    turned = [n for n in info.notes if "turned upright by its EXIF orientation" in n]  # the size may have changed
    upright = "5x7" if orientation >= 5 else "7x5"
    assert turned == [] if orientation == 1 else turned[0].startswith(
        f"turned upright by its EXIF orientation ({orientation}: stored 7x5, upright {upright})")
    write_image(tmp_path / "out.png", array, info)
    with Image.open(tmp_path / "out.png") as out:
        assert 0x0112 not in out.getexif() and out.getexif().get(0x010F) == "TestCam"
        np.testing.assert_array_equal(np.asarray(out), as_int(array, 8))  # written upright


# ---------------------------------------------------------------------------------------------- errors


TRUNCATED_PNG = png16_bytes(rng_u16((32, 32, 1)))[:1000]  # cut inside the pixel data


@pytest.mark.parametrize("content", [b"", b"not an image at all" * 10, TRUNCATED_PNG], ids=["empty", "text", "cut"])
def test_corrupt_files_are_an_input_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(InputError, match="bad.png"):
        read_image(tmp_path / "bad.png")


def test_an_empty_file_is_named_as_empty(tmp_path: Path) -> None:
    (tmp_path / "half.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"'.*half\.jpg' is empty \(0 bytes\).*did not finish"):
        read_image(tmp_path / "half.jpg")


def test_missing_file_and_directory_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such image file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="not a file"):
        read_image(tmp_path)


@pytest.mark.parametrize("mode", ["F", "I"])
def test_32_bit_images_are_refused(tmp_path: Path, mode: str) -> None:
    Image.new(mode, (4, 4)).save(tmp_path / "in.tif")
    with pytest.raises(InputError, match=f"mode '{mode}'"):
        read_image(tmp_path / "in.tif")


def test_formats_that_would_lose_data_are_refused(tmp_path: Path) -> None:
    Image.fromarray(rng_u16((4, 5))).save(tmp_path / "g16.png")
    Image.fromarray(rng_u8((4, 5, 4)), mode="RGBA").save(tmp_path / "rgba.png")
    g16, info16 = read_image(tmp_path / "g16.png")
    rgba, info_a = read_image(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="16 bits"):
        write_image(tmp_path / "out.jpg", g16, info16)
    with pytest.raises(InputError, match="alpha"):
        write_image(tmp_path / "out.jpg", rgba, info_a)
    with pytest.raises(InputError, match="extension"):
        write_image(tmp_path / "out.unknown", rgba, info_a)
    with pytest.raises(InputError, match="HxWx4"):
        write_image(tmp_path / "out.png", rgba[:, :, :3], info_a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g16.png", "rgba.png"]


def test_refuses_to_overwrite_the_input_or_an_existing_file(tmp_path: Path) -> None:
    Image.fromarray(rng_u8((6, 7, 3))).save(tmp_path / "in.png")
    (tmp_path / "taken.png").write_bytes(b"keep me")
    before = (tmp_path / "in.png").read_bytes()
    with pytest.raises(InputError, match="is the input image"):
        denoise_file(tmp_path / "in.png", tmp_path / "in.png", identity, progress=False)
    array, info = read_image(tmp_path / "in.png")
    with pytest.raises(InputError, match="already exists"):
        write_image(tmp_path / "taken.png", array, info)
    assert (tmp_path / "in.png").read_bytes() == before and (tmp_path / "taken.png").read_bytes() == b"keep me"
    write_image(tmp_path / "taken.png", array, info, overwrite=True)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "taken.png")), as_int(array, 8))


def test_overwrite_that_is_not_a_bool_replaces_nothing(tmp_path: Path) -> None:
    """overwrite='no' (or 'false' read from a config file) is a truthy string: the existing file was replaced."""
    Image.fromarray(rng_u8((6, 7, 3))).save(tmp_path / "in.png")
    (tmp_path / "taken.png").write_bytes(b"keep me")
    array, info = read_image(tmp_path / "in.png")
    for value in ("no", "false", 1, None):
        with pytest.raises(InputError, match=r"overwrite= is True .* or False; got"):
            write_image(tmp_path / "taken.png", array, info, overwrite=value)
        with pytest.raises(InputError, match=r"overwrite= is True .* or False; got"):
            denoise_file(tmp_path / "in.png", tmp_path / "taken.png", identity, overwrite=value, progress=False)
        with pytest.raises(InputError, match=r"overwrite= is True .* or False; got"):
            add_noise_to_file(tmp_path / "in.png", tmp_path / "taken.png", 0.1, overwrite=value)
    assert (tmp_path / "taken.png").read_bytes() == b"keep me"
    write_image(tmp_path / "taken.png", array, info, overwrite=np.bool_(True))  # a numpy bool is a bool
    assert (tmp_path / "taken.png").read_bytes() != b"keep me"


def test_a_channels_first_or_batched_array_is_named_as_such(tmp_path: Path) -> None:
    """A (3, H, W) array was said to be 'H x 3' (its first two axes read as the size), a (1, H, W, 3) batch 'H x 1'."""
    Image.fromarray(rng_u8((6, 7, 3))).save(tmp_path / "in.png")
    array, info = read_image(tmp_path / "in.png")
    with pytest.raises(InputError, match=r"shape \(3, 6, 7\): channels first\? array\.transpose\(1, 2, 0\) gives "
                                         r"\(6, 7, 3\)"):
        write_image(tmp_path / "out.png", array.transpose(2, 0, 1), info)
    with pytest.raises(InputError, match=r"has shape \(1, 6, 7, 3\); expected HxWx3"):
        write_image(tmp_path / "out.png", array[None], info)
    assert not (tmp_path / "out.png").exists()


def _failing_writer(f, *args, **kwargs) -> None:  # noqa: ANN001 - stands in for the Pillow writer
    f.write(b"\x89PNG half a file")
    raise OSError("disk full (simulated)")


def test_a_failing_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(rng_u8((6, 7, 3))).save(tmp_path / "in.png")
    (tmp_path / "existing.png").write_bytes(b"old contents")
    array, info = read_image(tmp_path / "in.png")
    monkeypatch.setattr(images, "_write_pillow", _failing_writer)
    with pytest.raises(InputError, match="failed.*simulated"):
        write_image(tmp_path / "new.png", array, info)
    with pytest.raises(InputError, match="failed.*simulated"):
        write_image(tmp_path / "existing.png", array, info, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.png", "in.png"]  # no temp, no new.png
    assert (tmp_path / "existing.png").read_bytes() == b"old contents"


def test_output_permissions_follow_the_umask(tmp_path: Path) -> None:
    Image.fromarray(rng_u8((6, 7, 3))).save(tmp_path / "in.png")
    array, info = read_image(tmp_path / "in.png")
    write_image(tmp_path / "out.png", array, info)
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask


# ------------------------------------------------------------------------------------------- demo noise


def test_add_noise_is_reproducible_and_keeps_the_bit_depth(tmp_path: Path) -> None:
    flat = np.full((64, 64), 32768, dtype=np.uint16)
    Image.fromarray(flat).save(tmp_path / "in.png")
    add_noise_to_file(tmp_path / "in.png", tmp_path / "a.png", sigma=0.1, seed=3)
    add_noise_to_file(tmp_path / "in.png", tmp_path / "b.png", sigma=0.1, seed=3)
    add_noise_to_file(tmp_path / "in.png", tmp_path / "c.png", sigma=0.1, seed=4)
    a, b, c = (np.asarray(Image.open(tmp_path / n)).astype(float) / 65535 for n in ("a.png", "b.png", "c.png"))
    assert Image.open(tmp_path / "a.png").mode == "I;16"
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert abs((a - 32768 / 65535).std() - 0.1) < 0.01
    with pytest.raises(InputError, match="sigma"):
        add_noise_to_file(tmp_path / "in.png", tmp_path / "d.png", sigma=-1.0)


def test_denoise_file_checks_the_output_before_denoising(tmp_path: Path) -> None:
    Image.fromarray(rng_u16((8, 9))).save(tmp_path / "in.png")
    calls: list[int] = []

    def counting(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return tiles

    with pytest.raises(InputError, match="16 bits"):
        denoise_file(tmp_path / "in.png", tmp_path / "out.jpg", counting, progress=False)
    assert calls == [] and not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("via", ["photo.png/x.png", "photo.png/deeper/x.png"])
def test_an_output_through_a_file_says_it_is_a_file(tmp_path: Path, via: str) -> None:
    """'-o photo.png/x.png' was told 'the output folder photo.png does not exist; create it first': it exists, as a
    file, and creating it cannot work."""
    (tmp_path / "photo.png").write_bytes(b"not a folder")
    with pytest.raises(InputError, match=r"goes through '.*photo\.png', which is a file, not a folder"):
        images.check_output_path(tmp_path / via, None, overwrite=False)
    with pytest.raises(InputError, match=r"does not exist; create it first \(mkdir -p \S*missing\), or write into a "
                                         r"folder that exists"):  # a missing folder is still told so, with the command
        images.check_output_path(tmp_path / "missing" / "x.png", None, overwrite=False)
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a link to nothing was called 'a file, not a folder'
    with pytest.raises(InputError, match=r"goes through '.*gone', which is a link to nothing"):
        images.check_output_path(tmp_path / "gone" / "x.png", None, overwrite=False)


def test_an_input_that_is_no_file_says_what_it_is(tmp_path: Path) -> None:
    """/dev/null was asked '(a directory?)'."""
    with pytest.raises(InputError, match="is a folder, not a file; expected an image file, such as one of the photos in "
                                         "it$"):  # a folder named photo.png was told 'such as photo.png'
        read_image(tmp_path)
    if Path("/dev/null").exists():
        with pytest.raises(InputError, match="is a device, pipe or socket, not a file"):
            read_image("/dev/null")


def _smooth_rgb(h: int = 64, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) * 2 % 256], axis=2).astype(np.uint8)


def test_add_noise_keeps_its_noise_in_a_webp_output(tmp_path: Path) -> None:
    """add-noise to .webp wrote lossy WebP (q95, 4:2:0), whose compression smoothed about 30% of the noise away in
    silence (sigma 0.1 became 0.069): a noisy test input at a known sigma was not one. WebP is now written lossless:
    the same pixels as a PNG output of the same seed."""
    Image.fromarray(_smooth_rgb()).save(tmp_path / "in.png")
    png = add_noise_to_file(tmp_path / "in.png", tmp_path / "n.png", sigma=0.1, seed=4)
    webp = add_noise_to_file(tmp_path / "in.png", tmp_path / "n.webp", sigma=0.1, seed=4)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "n.webp")), np.asarray(Image.open(tmp_path / "n.png")))
    assert images._webp_lossless(tmp_path / "n.webp") and any("lossless WebP" in n for n in webp["notes"])
    assert not any("WebP" in n for n in png["notes"])
    jpeg = add_noise_to_file(tmp_path / "in.png", tmp_path / "n.jpg", sigma=0.1, seed=4)
    assert any("JPEG is lossy" in n for n in jpeg["notes"])


def test_add_noise_says_how_much_of_a_1_bit_image_it_changed(tmp_path: Path) -> None:
    """A 1-bit image at sigma 0.1 came back with no pixel changed (the noise rounds back to black and white), and
    the report said it was written at sigma 0.1 without a word."""
    Image.fromarray(np.tile([[0, 255]], (40, 20)).astype(np.uint8)).convert("1").save(tmp_path / "bw.png")
    for sigma, expect in ((0.1, 0.0), (0.5, 15.9)):
        report = add_noise_to_file(tmp_path / "bw.png", tmp_path / f"n{sigma}.png", sigma=sigma, seed=1)
        note = next(n for n in report["notes"] if n.startswith("a 1-bit image"))
        changed = float(note.split("so ")[1].split("%")[0])
        with Image.open(tmp_path / "bw.png") as a, Image.open(tmp_path / f"n{sigma}.png") as b:
            assert b.mode == "1" and changed == pytest.approx(100 * np.mean(np.asarray(a) != np.asarray(b)), abs=0.05)
        assert changed == pytest.approx(expect, abs=3)  # P(|N(0, 0.5)| > 0.5) = 15.9%


def test_a_lossless_webp_is_written_back_lossless(tmp_path: Path) -> None:
    """A lossless WebP input came back as lossy WebP (Pillow does not report which a WebP is)."""
    Image.fromarray(_smooth_rgb()).save(tmp_path / "ll.webp", lossless=True)
    Image.fromarray(_smooth_rgb()).save(tmp_path / "lossy.webp", quality=80)
    for name, lossless in (("ll.webp", True), ("lossy.webp", False)):
        array, info = read_image(tmp_path / name)
        assert info.lossless is lossless
        write_image(tmp_path / f"out_{name}", array, info)
        assert images._webp_lossless(tmp_path / f"out_{name}") is lossless
    kept = np.asarray(Image.open(tmp_path / "out_ll.webp"))
    assert np.array_equal(kept, np.asarray(Image.open(tmp_path / "ll.webp")))
    Image.fromarray(np.dstack([_smooth_rgb(), np.full((64, 80), 200, np.uint8)])).save(
        tmp_path / "alpha.webp", lossless=True, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00")
    assert images._webp_lossless(tmp_path / "alpha.webp")  # an extended file: VP8X, then its chunks
    assert not images._webp_lossless(tmp_path / "out_lossy.webp.missing")


@pytest.mark.parametrize("lossless", [True, False])
def test_an_animated_webp_first_frame_is_written_back_as_it_was_coded(tmp_path: Path, lossless: bool) -> None:
    """An animated WebP (its first frame is read, with a note) holds its frames' images inside ANMF chunks: a
    lossless one was taken for lossy, and its first frame written back lossy."""
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(tmp_path / "anim.webp", save_all=True, append_images=frames[1:], lossless=lossless, quality=80)
    array, info = read_image(tmp_path / "anim.webp")
    assert info.lossless is lossless
    write_image(tmp_path / "out.webp", array, info)
    assert images._webp_lossless(tmp_path / "out.webp") is lossless
    if lossless:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out.webp")), np.asarray(frames[0]))


# ------------------------------------------------------------------------------------------- GIF output


def test_reliability_gif_output_of_a_colour_image_is_refused(tmp_path: Path) -> None:
    """A colour or alpha photo (RGB, RGBA, a palette GIF read as RGB) written as .gif => refused before denoising
    (GIF's 256-colour palette would requantise the result; .png suggested); nothing written"""
    Image.fromarray(rng_u8((20, 30, 3))).save(tmp_path / "in.png")
    Image.fromarray(rng_u8((20, 30, 3))).quantize(200).save(tmp_path / "pal.gif")  # read as RGB (noted)
    calls: list[int] = []

    def counting(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return tiles

    for src in ("in.png", "pal.gif"):
        with pytest.raises(InputError) as e:
            denoise_file(tmp_path / src, tmp_path / "out.gif", counting, progress=False)
        assert "GIF" in str(e.value) and "256" in str(e.value) and ".png" in str(e.value)
    array, info = read_image(tmp_path / "pal.gif")
    assert info.layout == "RGB" and "the output is RGB" in info.notes[0]
    with pytest.raises(InputError, match="GIF"):
        write_image(tmp_path / "out.gif", array, info)
    Image.fromarray(rng_u8((20, 30, 4)), mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.raises(InputError, match="GIF"):
        denoise_file(tmp_path / "rgba.png", tmp_path / "out.gif", counting, progress=False)
    assert calls == [] and not (tmp_path / "out.gif").exists()


def test_gif_output_of_a_gray_image_is_lossless(tmp_path: Path) -> None:
    """8-bit gray fits a GIF palette exactly: written, and read back unchanged."""
    gray = rng_u8((20, 30))
    Image.fromarray(gray).save(tmp_path / "in.png")
    denoise_file(tmp_path / "in.png", tmp_path / "out.gif", identity, progress=False)
    with Image.open(tmp_path / "out.gif") as im:
        np.testing.assert_array_equal(np.asarray(im.convert("L")), gray)


# --------------------------------------------------------------------------------------- BMP and WebP output


def test_reliability_bmp_output_of_an_image_with_alpha_is_refused(tmp_path: Path) -> None:
    """A photo with alpha (RGBA, gray + alpha) written as .bmp => refused before denoising (BMP readers drop the
    alpha; .png, .tif or .webp suggested); nothing written"""
    Image.fromarray(rng_u8((20, 30, 4)), mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng_u8((20, 30, 2)), mode="LA").save(tmp_path / "la.png")
    calls: list[int] = []

    def counting(tiles: np.ndarray) -> np.ndarray:
        calls.append(len(tiles))
        return tiles

    for src, layout in (("rgba.png", "RGBA"), ("la.png", "LA")):
        with pytest.raises(InputError, match=f"BMP keeps no alpha channel.*this '{layout}' image.*\\.png, \\.tif"):
            denoise_file(tmp_path / src, tmp_path / "out.bmp", counting, progress=False)
    assert calls == [] and not (tmp_path / "out.bmp").exists()
    gray = rng_u8((20, 30))  # without alpha BMP keeps the image as it is
    Image.fromarray(gray).save(tmp_path / "gray.png")
    report = denoise_file(tmp_path / "gray.png", tmp_path / "gray.bmp", identity, progress=False, guard=False)
    with Image.open(tmp_path / "gray.bmp") as im:
        assert im.mode == "L" and report["notes"] == []
        np.testing.assert_array_equal(np.asarray(im), gray)


@pytest.mark.parametrize("layout, written", [("L", "RGB"), ("LA", "RGBA")])
def test_webp_output_of_a_gray_image_is_noted(tmp_path: Path, layout: str, written: str) -> None:
    """WebP has no gray mode: a gray photo comes back as RGB(A), the gray in each channel to within a level (WebP
    stores YUV), and the report says so (with .png / .tif as the way to keep it gray); a colour photo gets no note."""
    pixels = rng_u8((24, 24, 2))[:, :, : len(layout)].squeeze()
    Image.fromarray(pixels, mode=layout).save(tmp_path / "in.png")
    report = denoise_file(tmp_path / "in.png", tmp_path / "out.webp", identity, progress=False, guard=False)
    assert report["notes"] == [f"WebP has no gray mode: the result is written as {written}, the gray in each colour "
                               f"channel (within a level: WebP stores colour as YUV); write .png or .tif to keep it "
                               f"'{layout}'"]
    with Image.open(tmp_path / "out.webp") as im:
        out = np.asarray(im).astype(int)
    assert im.mode == written and np.abs(out[:, :, :3] - out[:, :, 1:2]).max() <= 1
    Image.fromarray(rng_u8((24, 24, 3))).save(tmp_path / "rgb.png")
    assert denoise_file(tmp_path / "rgb.png", tmp_path / "rgb.webp", identity, progress=False)["notes"] == []
    noisy = add_noise_to_file(tmp_path / "in.png", tmp_path / "noisy.webp", sigma=0.1)  # lossless: every gray exact
    assert noisy["notes"][0] == (f"WebP has no gray mode: the result is written as {written}, the gray in each colour "
                                 f"channel; write .png or .tif to keep it '{layout}'")
    with Image.open(tmp_path / "noisy.webp") as im:
        out = np.asarray(im).astype(int)
    assert np.array_equal(out[:, :, 0], out[:, :, 1]) and np.array_equal(out[:, :, 1], out[:, :, 2])


def test_jpeg_quality_is_the_callers_and_checked(tmp_path: Path) -> None:
    """write_image(quality=Q) for JPEG and WebP outputs: lower Q, smaller file and further from the pixels; the default
    is 95 to the byte; a quality that is not a whole number in 1..100 is refused before anything is written."""
    rng = np.random.default_rng(5)
    smooth = np.clip(128 + 60 * np.sin(np.arange(64) / 6)[:, None, None] + rng.normal(0, 4, (64, 80, 3)), 0, 255)
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "in.png")
    array, info = read_image(tmp_path / "in.png")
    for ext in (".jpg", ".webp"):
        sizes, errors = {}, {}
        for q in (40, 95):
            out = write_image(tmp_path / f"q{q}{ext}", array, info, quality=q)
            sizes[q] = out.stat().st_size
            errors[q] = float(np.abs(read_image(out)[0] - array).mean())
        assert sizes[40] < sizes[95] and errors[40] > errors[95], (ext, sizes, errors)
        default = write_image(tmp_path / f"default{ext}", array, info)
        assert default.read_bytes() == (tmp_path / f"q95{ext}").read_bytes()
    for bad in (0, 101, 9.5, True):
        with pytest.raises(InputError, match="quality, a whole number from 1 to 100"):
            write_image(tmp_path / "bad.jpg", array, info, quality=bad)
    assert not (tmp_path / "bad.jpg").exists()


def test_values_on_another_scale_are_refused_and_a_small_overshoot_is_clipped(tmp_path: Path) -> None:
    """write_image of 0-255 (or 0-65535) floats: refused with the division to make, nothing written (they were
    clipped to a white picture); a denoiser's overshoot a little past [0, 1] is clipped as before."""
    Image.fromarray(rng_u8((20, 30, 3))).save(tmp_path / "in.png")
    image, info = read_image(tmp_path / "in.png")
    for scale, hint in ((255.0, "8-bit values? divide by 255)"), (65535.0, "divide by 255; 16-bit: by 65535)")):
        with pytest.raises(InputError, match=r"has values from [0-9.e+]+ to [0-9.e+]+; expected \[0, 1\].*" + hint[:12]):
            write_image(tmp_path / "out.png", image * np.float32(scale), info)
        assert not (tmp_path / "out.png").exists()
    with pytest.raises(InputError, match="from -2 to"):
        write_image(tmp_path / "out.png", image - np.float32(2.0), info)
    over = image.copy()
    over[0, 0] = (1.2, -0.2, 0.5)
    write_image(tmp_path / "out.png", over, info)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png"))[0, 0], (255, 0, 128))


def test_a_missing_input_is_named_before_an_existing_output(tmp_path: Path) -> None:
    """denoise_file / add_noise_to_file with a mistyped input and an output that exists: the missing input is what
    to fix first (it was refused as 'the output already exists')."""
    from runtime.photo import add_noise_to_file, denoise_file

    (tmp_path / "out.png").write_bytes(b"an earlier result")
    with pytest.raises(InputError, match="no such image file: '.*missing.png'"):
        denoise_file(tmp_path / "missing.png", tmp_path / "out.png", lambda batch: batch)
    with pytest.raises(InputError, match="no such image file: '.*missing.png'"):
        add_noise_to_file(tmp_path / "missing.png", tmp_path / "out.png", 0.1)
    assert (tmp_path / "out.png").read_bytes() == b"an earlier result"


def test_write_image_refuses_an_array_of_another_size_than_its_info(tmp_path):
    """It wrote a 50x40 array with the info of a 451x300 photo, in silence."""
    from PIL import Image

    from moe_base.errors import InputError
    from runtime.images import read_image, write_image

    Image.new("RGB", (451, 300)).save(tmp_path / "in.png")
    _, info = read_image(tmp_path / "in.png")
    with pytest.raises(InputError, match=r"the image to write is 50x40, and info describes a 451x300 image"):
        write_image(tmp_path / "out.png", np.zeros((40, 50, 3), np.float32), info)
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("name", ["x.ico", "x.icns", "x.avif", "x.blp", "x.pdf", "x.qoi", "x.pcx"])
def test_outputs_in_formats_that_change_the_image_are_refused_before_the_work(tmp_path, name):
    """Any extension Pillow could save was taken: .ico resized to 128x102, .icns to 1024x1024, .avif and .pdf
    compressed at their own quality, and .blp / .pcx / .qoi crashed after the work on some modes."""
    if Image.registered_extensions().get(Path(name).suffix) not in Image.SAVE:  # listed also for a format it only
        # reads (Pillow 11.2 reads .qoi), which is 'cannot tell which image format to write'
        pytest.skip(f"this Pillow has no {Path(name).suffix} writer, so there is nothing to refuse")
    src = tmp_path / "in.png"
    Image.fromarray(rng_u8((20, 24, 3))).save(src)
    with pytest.raises(InputError, match=r"is not an output format .* use .png, .jpg/.jpeg, .tif/.tiff, .webp, .bmp"):
        denoise_file(src, tmp_path / name, identity, progress=False)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("mode, key, layout", [("RGB", (1, 2, 3), "RGBA"), ("L", 7, "LA")])
def test_a_transparent_colour_key_comes_back_as_alpha(tmp_path, mode, key, layout):
    """A PNG whose tRNS chunk makes one colour transparent came back opaque: the hidden pixels showed."""
    pixels = rng_u8((20, 24, 3) if mode == "RGB" else (20, 24), seed=1)
    pixels[:4, :4] = key
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(pixels).save(src, transparency=key)
    report = denoise_file(src, out, identity, progress=False)
    got = np.asarray(Image.open(out))
    assert Image.open(out).mode == layout and report["layout"] == layout
    assert (got[:4, :4, -1] == 0).all() and (got[4:, 4:, -1] == 255).all()
    assert any("transparent colour key" in n for n in report["notes"])


def test_a_phones_multi_picture_jpeg_keeps_its_exif(tmp_path):
    """Phones write .jpg files Pillow opens as MPO (several pictures); their EXIF (make, model, date, GPS) was
    dropped without a word, where a plain JPEG's is kept."""
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    picture = Image.fromarray(rng_u8((20, 24, 3)))
    src, out = tmp_path / "phone.jpg", tmp_path / "out.jpg"
    picture.save(src, format="MPO", save_all=True, append_images=[picture], exif=exif.tobytes())
    assert Image.open(src).format == "MPO"
    denoise_file(src, out, identity, progress=False)
    assert Image.open(out).getexif().get(0x010F) == "PhoneMaker"


def test_a_phones_multi_picture_jpeg_is_denoised_in_place_and_a_stereo_one_is_not(tmp_path):
    """A phone's .jpg with a preview inside (MPO, two frames to Pillow) was refused in place as 'pages of a TIFF, or
    an animation'; its preview is no picture of its own. The other eye of a stereo MPO is: that one stays refused."""
    from runtime.images import _mpo_views, check_frames_kept, read_header

    picture = Image.fromarray(rng_u8((20, 24, 3)))
    phone = tmp_path / "phone.jpg"
    picture.save(phone, format="MPO", save_all=True, append_images=[picture.resize((12, 10))])
    assert Image.open(phone).n_frames == 2
    stereo = dataclasses.replace(read_header(phone), frames=2)  # what the header says of a stereo pair
    report = denoise_file(phone, phone, identity, progress=False, overwrite=True)
    assert Image.open(phone).size == (24, 20)
    assert any("1 embedded preview or auxiliary image(s) are not kept" in n for n in report["notes"])

    def entry(kind):
        return {"Attribute": {"MPType": kind}}

    class Stereo:
        n_frames = 2
        mpinfo = {0xB002: [entry("Baseline MP Primary Image"), entry("Multi-Frame Image (Disparity)")]}

    class WithPreview(Stereo):
        mpinfo = {0xB002: [entry("Baseline MP Primary Image"), entry("Large Thumbnail (VGA Equivalent)")]}

    assert (_mpo_views(Stereo()), _mpo_views(WithPreview())) == (1, 0)
    with pytest.raises(InputError, match=r"has 2 views \(a stereo, panorama or multi-angle multi-picture JPEG\)"):
        check_frames_kept(phone, stereo)


def test_files_pillow_reads_at_the_wrong_depth_or_not_at_all_are_refused_for_what_they_are(tmp_path):
    """A 16-bit PPM was cut to 8 bits in silence and a 16-bit PGM refused as '32-bit integer'; a float or 16-bit
    gray+alpha TIFF was called 'truncated or corrupt'; and this tool wrote 16-bit gray+alpha TIFFs it could not
    read back."""
    tifffile = pytest.importorskip("tifffile", reason="writing the test TIFFs needs tifffile: pip install "
                                                      "'moe-denoise[images]'")
    rng = np.random.default_rng(0)
    (tmp_path / "c16.ppm").write_bytes(b"P6\n# made here\n24 20\n65535\n"
                                       + rng.integers(0, 65536, (20, 24, 3)).astype(">u2").tobytes())
    (tmp_path / "g16.pgm").write_bytes(b"P5\n24 20\n1023\n" + rng.integers(0, 1024, (20, 24)).astype(">u2").tobytes())
    for name, maxval in (("c16.ppm", 65535), ("g16.pgm", 1023)):
        with pytest.raises(InputError, match=rf"is a 16-bit Netpbm file \(maxval {maxval}\)"):
            read_image(tmp_path / name)
    tifffile.imwrite(tmp_path / "f.tif", rng.random((20, 24, 3)).astype(np.float32), photometric="rgb")
    with pytest.raises(InputError, match="is a TIFF file whose layout Pillow cannot decode"):
        read_image(tmp_path / "f.tif")
    Image.fromarray(rng_u16((20, 24))).save(tmp_path / "g.png")
    _, info = images.read_pixels(tmp_path / "g.png")
    with pytest.raises(InputError, match=r"a 16-bit gray\+alpha TIFF cannot be read back"):  # as a 16-bit LA photo
        images.check_writable(tmp_path / "o.tif", dataclasses.replace(info, layout="LA"))


def test_a_gray_gif_is_read_as_gray_and_can_be_written_as_gif(tmp_path):
    """Pillow opens a gray GIF as a palette image: it was read as RGB, and its own format then refused for colour."""
    gray = rng_u8((20, 24))
    Image.fromarray(gray).save(tmp_path / "in.gif")
    assert Image.open(tmp_path / "in.gif").mode == "P"
    report = denoise_file(tmp_path / "in.gif", tmp_path / "out.gif", identity, progress=False)
    assert report["layout"] == "L" and any("palette image of grays read as gray" in n for n in report["notes"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.gif").convert("L")), gray)
    Image.fromarray(rng_u8((20, 24, 3))).convert("P").save(tmp_path / "colour.gif")  # colours stay colour
    assert images.read_header(tmp_path / "colour.gif").layout == "RGB"


def test_the_header_turns_a_png_as_its_decoding_does(tmp_path):
    """The size a photo has upright (what --reference is checked against) came from a PNG's eXIf chunk alone, while
    its decoding also takes an XMP tiff:Orientation: such a pair was refused as different sizes."""
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    chunks = PngImagePlugin.PngInfo()
    chunks.add_itxt("XML:com.adobe.xmp", xmp)
    Image.fromarray(rng_u8((20, 30, 3))).save(tmp_path / "turned.png", pnginfo=chunks)
    pixels, _ = images.read_pixels(tmp_path / "turned.png")
    assert pixels.shape[:2] == (30, 20)  # decoded upright
    assert images.read_header(tmp_path / "turned.png").upright_size == (20, 30)  # (width, height), the same


def test_lossless_netpbm_and_tga_outputs_keep_every_pixel(tmp_path):
    """The output formats were limited to six, which refused PPM/PGM and TGA: lossless, and written exactly."""
    for layout, shape in (("RGB", (20, 24, 3)), ("L", (20, 24))):
        pixels = rng_u8(shape)
        Image.fromarray(pixels).save(tmp_path / f"in_{layout}.png")
        for ext in (".ppm", ".pgm", ".tga") if layout == "L" else (".ppm", ".tga"):
            out = tmp_path / f"out_{layout}{ext}"
            denoise_file(tmp_path / f"in_{layout}.png", out, identity, progress=False, guard=False)
            np.testing.assert_array_equal(np.asarray(Image.open(out).convert(layout)), pixels)
    with pytest.raises(InputError, match=r"a \.pgm file holds a gray image.*write it as \.ppm"):  # a colour P6 was
        denoise_file(tmp_path / "in_RGB.png", tmp_path / "out.pgm", identity, progress=False)  # written as .pgm
    assert not (tmp_path / "out.pgm").exists()
    with pytest.raises(InputError, match="PPM/PGM keeps no alpha channel"):
        Image.fromarray(rng_u8((20, 24, 4))).save(tmp_path / "rgba.png")
        denoise_file(tmp_path / "rgba.png", tmp_path / "rgba.ppm", identity, progress=False)
    with pytest.raises(InputError, match=r"a \.pbm file holds a 1-bit black and white image, and this one is gray"):
        denoise_file(tmp_path / "in_L.png", tmp_path / "out.pbm", identity, progress=False)
    bits = rng_u8((20, 24)) > 127  # a 1-bit image goes into .pbm (it was refused there), as P4
    Image.fromarray(bits).save(tmp_path / "in_1.png")
    denoise_file(tmp_path / "in_1.png", tmp_path / "out.pbm", identity, progress=False, guard=False)
    assert (tmp_path / "out.pbm").read_bytes()[:2] == b"P4"
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.pbm")), bits)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow's own, about the broken file
def test_a_broken_tiff_is_called_broken_and_plain_16_bit_netpbm_is_refused(tmp_path):
    """A TIFF cut short was blamed on its 'layout' (convert it, it said); a plain-text 16-bit PPM was still cut to
    8 bits."""
    pytest.importorskip("tifffile", reason="telling a layout from damage needs tifffile: pip install "
                                           "'moe-denoise[images]'")
    (tmp_path / "cut.tif").write_bytes(b"II*\0" + bytes(range(40)))
    with pytest.raises(InputError, match="Is it truncated or corrupt"):
        read_image(tmp_path / "cut.tif")
    (tmp_path / "plain.ppm").write_bytes(b"P3\n2 1\n65535\n1 2 3 40000 50000 60000\n")
    with pytest.raises(InputError, match=r"is a 16-bit Netpbm file \(maxval 65535\)"):
        read_image(tmp_path / "plain.ppm")


# ------------------------------------------------------------------------------------------ text metadata

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
       b'tiff:Orientation="6"><dc:creator><rdf:Seq><rdf:li>Jane Doe</rdf:li></rdf:Seq></dc:creator>'
       b'</rdf:Description></rdf:RDF></x:xmpmeta>')


def upright_xmp(packet: bytes | None) -> bool:
    """Whether ``packet`` is :data:`XMP` as an output holds it: the creator kept, the orientation taken out (the
    output is written upright)."""
    return packet is not None and b"<rdf:li>Jane Doe</rdf:li>" in packet and b"Orientation" not in packet


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_png_chunks(png: bytes, before_idat: list[bytes], after_idat: list[bytes] = ()) -> bytes:
    """A PNG file's bytes with chunks put in before its first IDAT and after its last (before IEND)."""
    first, end = png.index(b"IDAT") - 4, png.index(b"IEND") - 4
    return png[:first] + b"".join(before_idat) + png[first:end] + b"".join(after_idat) + png[end:]


PNG_TEXT = [(b"tEXt", b"Author\0Jane Doe"), (b"tEXt", b"Description\0An astronaut"),
            (b"iTXt", b"Comment\0\0\0en\0Kommentar\0" + "Ünïcode comment".encode()),
            (b"zTXt", b"Copyright\0\0" + zlib.compress(b"(c) 2024 Jane Doe"))]


def png_text_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """The (type, data) of a PNG file's tEXt, zTXt and iTXt chunks, in order."""
    data, found, at = path.read_bytes(), [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            found.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return found


@pytest.mark.parametrize("bits", [8, 16])
def test_a_pngs_text_chunks_are_kept_as_they_were(tmp_path: Path, bits: int) -> None:
    """A PNG's tEXt, zTXt and iTXt chunks (author, description, copyright) were dropped without a word. Each is kept
    as it was: a zTXt stays compressed, an iTXt keeps its language and translated keyword, and one after the image
    data is kept too; for 8-bit (Pillow) and 16-bit colour (pypng) outputs."""
    if bits == 16:
        pytest.importorskip("png", reason="pypng is not installed: it writes 16-bit colour PNG")
        source = png16_bytes(rng_u16((12, 10, 3), seed=21))
    else:
        buffer = io.BytesIO()
        Image.fromarray(rng_u8((12, 10, 3), seed=21)).save(buffer, format="PNG")
        source = buffer.getvalue()
    chunks = [png_chunk(kind, body) for kind, body in PNG_TEXT]
    (tmp_path / "in.png").write_bytes(with_png_chunks(source, chunks[:3], chunks[3:]))
    image, info = read_image(tmp_path / "in.png")
    assert info.summary()["text"] == ["'Author' (tEXt)", "'Description' (tEXt)", "'Comment' (iTXt)",
                                      "'Copyright' (zTXt)"]
    write_image(tmp_path / "out.png", image, info)
    assert png_text_chunks(tmp_path / "out.png") == PNG_TEXT
    with Image.open(tmp_path / "out.png") as out:
        out.load()
        assert out.text == {"Author": "Jane Doe", "Description": "An astronaut", "Comment": "Ünïcode comment",
                            "Copyright": "(c) 2024 Jane Doe"}
        assert (out.text["Comment"].lang, out.text["Comment"].tkey) == ("en", "Kommentar")
    report = denoise_file(tmp_path / "in.png", tmp_path / "denoised.png", identity, progress=False)
    assert png_text_chunks(tmp_path / "denoised.png") == PNG_TEXT and report["notes"] == []


@pytest.mark.parametrize("bits", [8, 16])
def test_a_tiffs_text_tags_are_kept(tmp_path: Path, bits: int) -> None:
    """A TIFF's Artist, ImageDescription and Copyright tags (and its XMP, tag 700) were dropped without a word. Kept
    now, byte for byte (UTF-8 included), whether Pillow writes the output (8-bit, compressed through libtiff or not)
    or tifffile (16-bit colour)."""
    tags = {315: "Jäne Doe".encode(), 270: b"An astronaut", 33432: b"(c) 2024 Jane Doe"}
    if bits == 16:
        tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: it writes 16-bit colour TIFF")
        tifffile.imwrite(tmp_path / "in.tif", rng_u16((12, 10, 3), seed=22), photometric="rgb", metadata=None,
                         extratags=[(tag, 2, 0, value, True) for tag, value in tags.items()]
                         + [(700, 1, len(XMP), XMP, True)])
        compressions = [None]
    else:
        compressions = ["raw", "tiff_lzw"]
    for compression in compressions:
        if compression is not None:
            Image.fromarray(rng_u8((12, 10, 3), seed=22)).save(tmp_path / "in.tif", compression=compression,
                                                               tiffinfo={**tags, 700: XMP})
        out = tmp_path / f"out_{compression}.tif"
        report = denoise_file(tmp_path / "in.tif", out, identity, progress=False)
        assert not any("left out" in note for note in report["notes"]), report["notes"]
        with Image.open(out) as written:
            assert {tag: written.tag_v2.get(tag) for tag in tags} == {tag: v.decode("latin-1") for tag, v in
                                                                     tags.items()}, compression
            assert upright_xmp(written.info.get("xmp"))


def test_a_text_tag_cut_at_a_zero_byte_by_libtiff_is_named(tmp_path: Path) -> None:
    """libtiff, through which Pillow writes a compressed TIFF, ends a text tag at its first zero byte: a Copyright of
    'photographer\\0editor' lost 'editor' without a word. A note says so; an uncompressed output keeps it whole."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: it writes the zero byte")
    copyright_ = b"(c) photographer\0editor"
    for compression, cut in (("zlib", True), (None, False)):
        src, out = tmp_path / f"in_{compression}.tif", tmp_path / f"out_{compression}.tif"
        tifffile.imwrite(src, rng_u8((12, 10, 3), seed=24), photometric="rgb", metadata=None, compression=compression,
                         extratags=[(33432, 2, 0, copyright_, True), (315, 2, 0, b"Jane", True)])
        _, info = read_image(src)
        assert dict(info.text)["33432"] == copyright_  # read whole
        report = denoise_file(src, out, identity, progress=False)
        with Image.open(out) as written:
            kept = written.tag_v2.get(33432).encode("latin-1")
        said = [n for n in report["notes"] if "zero byte" in n]
        if cut:
            assert kept == b"(c) photographer"  # what libtiff does: the note is true
            assert said == ["the input's Copyright holds a zero byte: libtiff, which writes a compressed TIFF, ends a "
                            "text tag there, so what follows is left out"], report["notes"]
        else:
            assert kept == copyright_ and said == [], report["notes"]


def test_a_tiffs_layout_description_is_not_copied(tmp_path: Path) -> None:
    """tifffile (and ImageJ) store the file's layout in ImageDescription ('{"shape": [...]}'): copied into the output,
    it described another shape (an upright output of a rotated photo: tifffile warned on reading it)."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: it writes the shape description")
    tifffile.imwrite(tmp_path / "shaped.tif", rng_u16((12, 10, 3), seed=23), photometric="rgb")
    with Image.open(tmp_path / "shaped.tif") as im:
        assert im.tag_v2.get(270, "").startswith('{"shape"')  # what tifffile wrote
    _, info = read_image(tmp_path / "shaped.tif")
    assert "270" not in dict(info.text)
    tifffile.imwrite(tmp_path / "described.tif", rng_u16((12, 10, 3), seed=23), photometric="rgb", metadata=None,
                     description="An astronaut")
    assert dict(read_image(tmp_path / "described.tif")[1].text)["270"] == b"An astronaut"  # a person's text stays


def jpeg_with_metadata(path: Path, exif_orientation: int | None = None) -> None:
    """A JPEG holding an XMP packet, two comments (COM) and an IPTC block (APP13, as Photoshop writes it)."""
    iptc = b"Photoshop 3.0\0" + b"8BIM\x04\x04\0\0" + struct.pack(">I", 13) + b"\x1c\x02\x74\x00\x08(c) Jane\0"
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    Image.fromarray(rng_u8((12, 16, 3), seed=23)).save(
        path, xmp=XMP, comment=b"second comment", exif=exif,
        extra=b"\xff\xed" + struct.pack(">H", len(iptc) + 2) + iptc + b"\xff\xfe\x00\x0fFirst comment")


def test_a_jpegs_xmp_comments_and_iptc_are_kept(tmp_path: Path) -> None:
    """A JPEG's XMP packet (dc:creator, rights), its comments (COM) and its IPTC block (APP13: copyright, by-line)
    were dropped without a word. Each is kept in a JPEG output, the comments in their order."""
    jpeg_with_metadata(tmp_path / "in.jpg")
    image, info = read_image(tmp_path / "in.jpg")
    write_image(tmp_path / "out.jpg", image, info)
    with Image.open(tmp_path / "in.jpg") as src, Image.open(tmp_path / "out.jpg") as out:
        kept = [(kind, data) for kind, data in src.applist if kind in ("COM", "APP13")]
        assert [kind for kind, _ in kept] == ["APP13", "COM", "COM"]
        assert [(kind, data) for kind, data in out.applist if kind in ("COM", "APP13")] == kept
        assert upright_xmp(out.info["xmp"])  # no orientation in the EXIF: the XMP's turned it upright
    report = denoise_file(tmp_path / "in.jpg", tmp_path / "denoised.jpg", identity, progress=False)
    assert not any("left out" in note for note in report["notes"]), report["notes"]


@pytest.mark.parametrize("suffix", ["png", "tif", "webp", "jpg"])
def test_xmp_goes_into_every_format_that_holds_it_without_its_orientation(tmp_path: Path, suffix: str) -> None:
    """The XMP packet is the same in PNG (an iTXt chunk), JPEG (APP1), TIFF (tag 700) and WebP (an XMP chunk), so it
    goes into any of them; its tiff:Orientation is taken out, as the EXIF's is: the output is written upright, and
    the orientation kept turned it a second time when read back."""
    jpeg_with_metadata(tmp_path / "in.jpg", exif_orientation=6)
    report = denoise_file(tmp_path / "in.jpg", tmp_path / f"out.{suffix}", identity, progress=False)
    with Image.open(tmp_path / f"out.{suffix}") as out:
        assert upright_xmp(out.info.get("xmp"))
    _, info = read_image(tmp_path / f"out.{suffix}")
    assert (info.width, info.height, info.orientation) == (12, 16, 1)  # upright, and not turned again
    assert not any("XMP" in note for note in report["notes"]), report["notes"]


def test_what_an_output_format_cannot_hold_is_named_in_a_note(tmp_path: Path) -> None:
    """PNG text chunks into a JPEG, a TIFF's Artist into a PNG, a JPEG's comment into a PNG, XMP into a BMP: each
    was dropped without a word. They are not copied into another format's fields (a TIFF's Artist is no PNG
    keyword); a note names what is left out and what keeps it, and the files hold what the notes say."""
    buffer = io.BytesIO()
    Image.fromarray(rng_u8((12, 10, 3), seed=24)).save(buffer, format="PNG")
    (tmp_path / "in.png").write_bytes(with_png_chunks(buffer.getvalue(), [png_chunk(k, b) for k, b in PNG_TEXT]))
    Image.fromarray(rng_u8((12, 10, 3), seed=24)).save(tmp_path / "in.tif", tiffinfo={315: "Jane Doe",
                                                                                       33432: "(c) Jane"})
    jpeg_with_metadata(tmp_path / "in.jpg")
    expected = {
        ("in.png", "jpg"): "JPEG holds no PNG text chunks: the input's 'Author' (tEXt), 'Description' (tEXt), "
                           "'Comment' (iTXt) and 'Copyright' (zTXt) are left out (not copied into other fields); "
                           "write .png to keep them",
        ("in.tif", "png"): "PNG holds no TIFF text tags: the input's Artist and Copyright are left out (not copied "
                           "into other fields); write .tif to keep them",
        ("in.jpg", "png"): "PNG holds no JPEG comment or IPTC segments: the input's IPTC (APP13) and comment (COM) x2 "
                           "are left out (not copied into other fields); write .jpg to keep them",
        ("in.jpg", "bmp"): "BMP holds no XMP metadata: the input's XMP packet (",
    }
    for (source, suffix), note in expected.items():
        out = tmp_path / f"{source[3:]}_to.{suffix}"
        notes = denoise_file(tmp_path / source, out, identity, progress=False)["notes"]
        assert any(n.startswith(note) for n in notes), (source, suffix, notes)
        with Image.open(out) as written:
            written.load()
            assert set(getattr(written, "text", {})) <= {"XML:com.adobe.xmp"} and "comment" not in written.info
            assert not [kind for kind, _ in getattr(written, "applist", []) if kind in ("COM", "APP13")]
    assert "write .png, .tif, .jpg or .webp to keep it" in note_of(tmp_path / "in.jpg", tmp_path / "x.bmp", "XMP")


def note_of(source: Path, out: Path, word: str) -> str:
    """The note of denoising ``source`` into ``out`` that holds ``word``."""
    return next(n for n in denoise_file(source, out, identity, progress=False)["notes"] if word in n)


def test_text_metadata_past_the_limit_is_left_out_with_a_note(tmp_path: Path) -> None:
    """Text metadata is held through the work: megabytes of it would be held for nothing. What comes past
    TEXT_LIMIT (1 MiB) in all is left out, named in a note; what comes before is kept. A PNG's chunks are walked,
    and one past the limit is not read."""
    buffer = io.BytesIO()
    Image.fromarray(rng_u8((8, 8, 3), seed=25)).save(buffer, format="PNG")
    big = b"Huge\0" + b"x" * images.TEXT_LIMIT
    chunks = [png_chunk(b"tEXt", b"Author\0Jane Doe"), png_chunk(b"tEXt", big), png_chunk(b"tEXt", b"Title\0Moon")]
    (tmp_path / "in.png").write_bytes(with_png_chunks(buffer.getvalue(), chunks))
    image, info = read_image(tmp_path / "in.png")
    assert info.text == ((("tEXt", b"Author\0Jane Doe"), ("tEXt", b"Title\0Moon")))
    assert f"text metadata past 1 MiB in all is left out (a photo's are a few kilobytes): 'Huge' (tEXt) " \
           f"({len(big):,} bytes)" in info.notes
    write_image(tmp_path / "out.png", image, info)
    assert png_text_chunks(tmp_path / "out.png") == [(b"tEXt", b"Author\0Jane Doe"), (b"tEXt", b"Title\0Moon")]


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "I;16", "LA", "RGB"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_reliability_turned_tiffs_of_every_mode(tmp_path: Path, mode: str, compression: str | None) -> None:
    """An uncompressed gray, RGBA, CMYK, palette or 16-bit gray TIFF with EXIF orientation 5 to 8 (Pillow maps it
    into memory at its upright size) came out scrambled, in streaks at the stored size, exit 0 and no note (a
    palette TIFF lost its orientation while its header was read); no TIFF got the 'turned upright' note => every
    mode, compressed or not, reads as its stored pixels turned upright, with the note and its orientation"""
    from runtime.images import apply_orientation

    pixels = rng_u8((24, 36, 3), seed=3)
    source = {"L": Image.fromarray(pixels[..., 0]), "RGB": Image.fromarray(pixels),
              "RGBA": Image.fromarray(np.dstack([pixels, pixels[..., :1]])),
              "CMYK": Image.fromarray(pixels).convert("CMYK"), "P": Image.fromarray(pixels).quantize(32),
              "I;16": Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).convert("I;16"),
              "LA": Image.fromarray(pixels[..., :2], "LA")}[mode]
    options = {"compression": compression} if compression else {}
    source.save(tmp_path / "stored.tif", **options)
    stored, _ = read_pixels(tmp_path / "stored.tif")
    assert stored.shape[:2] == (24, 36)
    for orientation in (2, 5, 6, 7, 8):
        source.save(tmp_path / "turned.tif", tiffinfo={274: orientation}, **options)
        data, info = read_pixels(tmp_path / "turned.tif")
        np.testing.assert_array_equal(data, apply_orientation(stored, orientation))
        assert info.orientation == orientation and (info.width, info.height) == (data.shape[1], data.shape[0])
        assert any(f"turned upright by its EXIF orientation ({orientation}" in note for note in info.notes)
        assert images.read_header(tmp_path / "turned.tif").upright_size == (data.shape[1], data.shape[0])


@pytest.mark.parametrize("kind", ["ICO", "CUR", "ICNS"])
def test_reliability_icon_files_are_refused_before_pillow_opens_them(tmp_path: Path, kind: str, monkeypatch) -> None:
    """An ICO (also one named .png: Pillow goes by the content) or ICNS holding a tiny, highly compressed PNG of
    15000x15000 pixels: Pillow decodes it while it opens the file (ICO), or decodes one larger than its entry says
    (ICNS), with its own bomb check set aside for ours, which reads the header after: 0.9 to 3.7 GB of memory before
    the --max-pixels refusal (one attached 'photo' can take a machine) => refused by its first bytes, before Pillow
    opens it, naming the kind and what to do"""
    Image.fromarray(rng_u8((32, 32, 3))).save(tmp_path / "icon", format="ICNS" if kind == "ICNS" else "ICO")
    data = (tmp_path / "icon").read_bytes()
    disguised = tmp_path / "holiday.png"
    disguised.write_bytes(data[:2] + b"\x02" + data[3:] if kind == "CUR" else data)  # a cursor is an ICO of type 2

    def no_open(*args, **kwargs):
        raise AssertionError("Pillow was asked to open an icon file")

    monkeypatch.setattr(images._pil(), "open", no_open)
    with pytest.raises(InputError, match=rf"'{disguised}' is an icon file \({kind}: a program's icon at several "
                                         r"sizes\), not a photo; save the picture you want from it as PNG"):
        read_pixels(disguised)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_reliability_a_tga_is_read_back_not_taken_for_a_cursor(tmp_path: Path, mode: str) -> None:
    """A colour TGA as Pillow (and so moe-denoise) writes it starts 00 00 02 00, a cursor's (CUR) first bytes, and
    was refused as an icon file: denoise out.tga failed on the TGA it had just written => read, every pixel as written
    (a cursor says how many pictures it holds next, which a TGA without a colour map has as 0)"""
    source = Image.fromarray(rng_u8((5, 7, 4 if mode == "RGBA" else 3)))
    source = source.convert(mode) if mode != "RGBA" else source
    source.save(tmp_path / "a.tga")
    data, info = read_pixels(tmp_path / "a.tga")
    expected = np.asarray(source.convert({"P": "RGB"}.get(mode, mode)))
    np.testing.assert_array_equal(data.reshape(expected.shape), expected)
    assert info.format == "TGA"


def test_a_16bit_colour_tiff_whose_compression_needs_imagecodecs_names_the_package(tmp_path: Path) -> None:
    """A valid 48-bit LZW TIFF (what scanners and editors write) was refused as 'truncated or corrupt': tifffile
    decodes LZW only with the imagecodecs package, which the images extra does not install."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile is not installed: 16-bit colour TIFF is optional")
    try:
        import imagecodecs  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("imagecodecs is installed here: tifffile decodes LZW, and there is nothing to name")
    from moe_base.errors import MissingBackendError

    tifffile.imwrite(tmp_path / "plain.tif", rng_u16((8, 8, 3)), photometric="rgb")
    entry = b"\x03\x01\x03\x00\x01\x00\x00\x00\x01\x00"  # tag 259 (compression), SHORT, 1 value: 1 (none)
    data = (tmp_path / "plain.tif").read_bytes()
    assert data.count(entry) == 1
    (tmp_path / "lzw.tif").write_bytes(data.replace(entry, entry[:-2] + b"\x05\x00"))  # 5: LZW
    with pytest.raises(MissingBackendError, match=r"16-bit colour TIFF compressed with LZW, which tifffile decodes "
                                                  r"with the imagecodecs package only: pip install imagecodecs"):
        read_pixels(tmp_path / "lzw.tif")


def test_reliability_exif_left_out_of_an_output_is_said(tmp_path: Path) -> None:
    """A photo's EXIF (camera, date, copyright, exposure, GPS) written as .bmp, .ppm, .tga or .gif: left out without
    a note, where the README promises one for what an output does not keep => a note names the EXIF left out and
    the outputs that keep it"""
    exif = Image.Exif()
    exif[0x010F] = "Nikon"
    exif.get_ifd(0x8769)[0x829A] = (1, 250)  # exposure time
    exif.get_ifd(0x8825)[1] = "N"  # GPS latitude reference
    Image.fromarray(rng_u8((16, 16, 3))).save(tmp_path / "camera.jpg", exif=exif.tobytes())
    data, info = read_pixels(tmp_path / "camera.jpg")
    for fmt in ("BMP", "PPM", "TGA", "GIF"):
        assert any("the input's EXIF" in note and "write .png, .jpg, .webp or .tif to keep it" in note
                   for note in images.output_notes(fmt, info)), fmt
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        assert not any("EXIF" in note for note in images.output_notes(fmt, info)), fmt
    Image.fromarray(rng_u8((16, 16, 3))).save(tmp_path / "plain.tif")
    assert not any("EXIF" in note for note in read_pixels(tmp_path / "plain.tif")[1].notes)


@pytest.mark.parametrize("suffix", ["tif", "png", "jpg"])
def test_reliability_a_tiffs_exif_directories_go_into_the_outputs_that_hold_exif(tmp_path: Path, suffix: str) -> None:
    """A TIFF's own Exif and GPS directories (exposure, GPS) => written into a .tif, .png or .jpg output (with the
    width and height of the picture turned upright), the maker note left out with a note; they were left out of
    every output ('not carried over'), and the orientation note of such a TIFF had its sizes swapped"""
    exif = Image.Exif()
    exif.update({0x010F: "Nikon", 0x0112: 6})
    details = exif.get_ifd(0x8769)
    details.update({0x829A: TiffImagePlugin.IFDRational(1, 250), 0x9204: TiffImagePlugin.IFDRational(-2, 3),
                    0x927C: b"Nikon\x00\x02", 0xA002: 12, 0xA003: 16})
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0)})
    Image.fromarray(rng_u8((16, 12, 3))).save(tmp_path / "camera.tif", exif=exif.tobytes())
    report = denoise_file(tmp_path / "camera.tif", tmp_path / f"out.{suffix}", identity, progress=False)
    assert "turned upright by its EXIF orientation (6: stored 12x16, upright 16x12); the output is written upright, " \
           "without the orientation tag" in report["notes"]
    assert [n for n in report["notes"] if "EXIF" in n and "orientation" not in n] == [
        "the TIFF's EXIF maker note (the camera maker's own data: it points into the file it came in) is left out"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(tmp_path / f"out.{suffix}") as out:
            kept = out.getexif()
            assert out.size == (16, 12) and 0x0112 not in kept
            assert dict(kept.get_ifd(0x8769)) == {0x829A: 1 / 250, 0x9204: -2 / 3, 0xA002: 16, 0xA003: 12}
            assert dict(kept.get_ifd(0x8825)) == {1: "N", 2: (48.0, 51.0, 30.0)}
            assert kept.get(0x010F) == ("Nikon" if suffix == "tif" else None)  # a TIFF text tag: kept in a TIFF
    _, info = read_pixels(tmp_path / "camera.tif")
    assert any("the input's EXIF" in note for note in images.output_notes("BMP", info))


def camera_exif(orientation: int = 6) -> bytes:
    """A camera's EXIF: make, model, date and copyright; exposure, an interoperability directory and a maker note in
    its Exif directory; a GPS position; an orientation."""
    exif = Image.Exif()
    exif.update({0x010F: "Nikon", 0x0110: "D850", 0x0132: "2024:05:06 07:08:09", 0x8298: "(c) Ann", 0x0112: orientation})
    details = exif.get_ifd(0x8769)
    details.update({0x829A: TiffImagePlugin.IFDRational(1, 250), 0x8827: 400, 0x9003: "2024:05:06 07:08:09",
                    0x927C: b"Nikon\x00\x02\x10"})
    details[0xA005] = {1: "R98"}
    exif.get_ifd(0x8825).update({1: "N", 2: (48.0, 51.0, 30.0)})
    return exif.tobytes()


def test_reliability_a_photos_exif_goes_into_a_tiff(tmp_path: Path) -> None:
    """A camera JPEG denoised into a .tif (to edit it losslessly) => its make, model, date, copyright, exposure, GPS
    and interoperability directory are in the TIFF, without the orientation (the pixels are upright); the maker note
    (offsets into the JPEG) is left out with a note; all of the EXIF was left out with a note"""
    Image.fromarray(rng_u8((16, 12, 3))).save(tmp_path / "DSC_0001.jpg", exif=camera_exif(), quality=95)
    report = denoise_file(tmp_path / "DSC_0001.jpg", tmp_path / "out.tif", identity, progress=False)
    assert not any("the input's EXIF" in note for note in report["notes"]), report["notes"]
    assert "the EXIF's maker note (the camera maker's own data: it points into the file it came in) is left out of " \
           "the TIFF; write .png, .jpg or .webp to keep all of the EXIF" in report["notes"], report["notes"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow warns of offsets that point outside the file
        with Image.open(tmp_path / "out.tif") as out:
            exif = out.getexif()
            assert [exif.get(tag) for tag in (0x010F, 0x0110, 0x0132, 0x8298)] == ["Nikon", "D850",
                                                                                    "2024:05:06 07:08:09", "(c) Ann"]
            assert 0x0112 not in exif and out.size == (16, 12)  # stored 12x16, turned by 90 degrees
            details = exif.get_ifd(0x8769)
            assert (details[0x829A], details[0x8827], details[0x9003]) == (1 / 250, 400, "2024:05:06 07:08:09")
            assert 0x927C not in details and exif.get_ifd(0xA005) == {1: "R98"}
            assert exif.get_ifd(0x8825) == {1: "N", 2: (48.0, 51.0, 30.0)}


@pytest.mark.parametrize("suffix", ["jpg", "png", "tif"])
def test_exif_text_windows_tags_and_what_a_tiff_leaves_out(tmp_path: Path, suffix: str) -> None:
    """An Artist in UTF-8 ('Jörg', as editors write it) and a copyright with the one-byte (c) came out 'J??rg' and
    '?' in every output (Pillow reads EXIF text as Latin-1 and writes it back as ASCII); a TIFF left out Windows'
    title and rating and other first-directory tags without a word, and said the EXIF 'could not be rewritten'
    when it held only the JPEG's resolution. Text keeps its bytes, the title and rating go into a TIFF, and a
    note names what a TIFF leaves out; an EXIF of layout tags alone gets no note."""
    exif = Image.Exif()
    exif.update({0x013B: "Jörg Müller".encode(), 0x8298: b"\xa9 2024 Studio", 0x9C9B: "Titel".encode("utf-16-le"),
                 0x4746: 4, 0xC4A5: b"PrintIM0300"})
    exif.get_ifd(0x8769)[0x829D] = 4.0
    report = denoise_file(_jpeg_with(tmp_path / "in.jpg", exif.tobytes()), tmp_path / f"out.{suffix}", identity,
                          progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Image.open(tmp_path / f"out.{suffix}") as out:
            kept = out.getexif()
            assert kept[0x013B].encode("latin-1") == "Jörg Müller".encode()  # the bytes, as Pillow shows them
            assert kept[0x8298].encode("latin-1") == b"\xa9 2024 Studio"
            assert (kept[0x9C9B], kept[0x4746], kept.get_ifd(0x8769)[0x829D]) == ("Titel".encode("utf-16-le"), 4, 4.0)
    left = [note for note in report["notes"] if "EXIF" in note]
    assert left == ([] if suffix != "tif" else ["the EXIF's PrintImageMatching (not among the tags a TIFF output "
                                                "takes) is left out of the TIFF; write .png, .jpg or .webp to keep "
                                                "all of the EXIF"])
    layout = Image.Exif()
    layout.update({282: 72.0, 283: 72.0, 296: 2, 531: 1})
    _, info = read_pixels(_jpeg_with(tmp_path / "dpi.jpg", layout.tobytes()))
    assert not [note for note in images.output_notes("TIFF", info) if "EXIF" in note]


def test_exif_a_tiff_writer_cannot_take_is_left_out_with_a_note(tmp_path: Path) -> None:
    """A 16-bit colour TIFF (tifffile) and a compressed one (libtiff refuses Pillow's EXIF directories: 'Error
    setting from dictionary', after the work) are written without the EXIF, and a note says so."""
    _, info = read_pixels(_jpeg_with(tmp_path / "in.jpg", camera_exif(orientation=1)))
    lzw = dataclasses.replace(info, compression="tiff_lzw")
    assert any("this writes no EXIF into a compressed TIFF (libtiff)" in note for note in images.output_notes("TIFF", lzw))
    write_image(tmp_path / "lzw.tif", np.full((16, 12, 3), 0.5), lzw)
    with Image.open(tmp_path / "lzw.tif") as out:
        assert out.info["compression"] == "tiff_lzw" and out.getexif().get(0x010F) is None
    deep = dataclasses.replace(info, bit_depth=16)
    assert any("this writes no EXIF into a 16-bit colour TIFF (tifffile writes it)" in note
               for note in images.output_notes("TIFF", deep))


def _jpeg_with(path: Path, exif: bytes) -> Path:
    Image.fromarray(rng_u8((16, 12, 3))).save(path, exif=exif, quality=95)
    return path


def test_reliability_an_exif_too_long_for_a_jpeg_is_left_out_with_a_note(tmp_path: Path) -> None:
    """A PNG whose EXIF is over 64 KB (a maker note, an embedded preview) written as .jpg: a JPEG's APP1 segment
    holds 65,533 bytes, Pillow raised 'EXIF data is too long' after the work (a traceback, exit 1, no output) =>
    written without the EXIF, a note says so and where it is kept; .png and .webp keep it whole"""
    exif = Image.Exif()
    exif[0x010F] = "Nikon"
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"x" * 70_000  # a user comment of 70,000 letters
    Image.fromarray(rng_u8((8, 8, 3))).save(tmp_path / "big.png", exif=exif.tobytes())
    data, info = read_pixels(tmp_path / "big.png")
    assert info.exif is not None and len(info.exif) > images.JPEG_EXIF_LIMIT
    notes = images.output_notes("JPEG", info)
    assert any(f"the input's {len(info.exif):,}-byte EXIF" in note and "write .png or .webp to keep it" in note
               for note in notes), notes
    written = images.write_pixels(tmp_path / "big.jpg", data, info)
    with Image.open(written) as im:
        assert im.format == "JPEG" and not im.getexif()
    for ext in (".png", ".webp"):
        assert not any("EXIF" in note for note in images.output_notes(ext[1:].upper(), info))
        with Image.open(images.write_pixels(tmp_path / f"kept{ext}", data, info)) as im:
            assert im.getexif()[0x010F] == "Nikon"


def test_a_signed_16bit_tiff_is_named_as_what_it_holds(tmp_path: Path) -> None:
    """A signed 16-bit TIFF (a scientific camera's, a height map) was refused as '32-bit integer pixels': Pillow
    reads it as mode 'I'."""
    tifffile = pytest.importorskip("tifffile", reason="writing a signed 16-bit TIFF needs tifffile: pip install "
                                                      "'moe-denoise[images]'")
    tifffile.imwrite(tmp_path / "s.tif", np.arange(-32, 32, dtype=np.int16).reshape(8, 8) * 100)
    with pytest.raises(InputError, match=r"holds signed 16-bit integer pixels \(Pillow mode 'I'\), which have no "
                                         r"defined white or black level\. Expected 8 or 16 bits"):
        read_pixels(tmp_path / "s.tif")


def test_write_image_given_integers_says_how_to_convert(tmp_path: Path) -> None:
    """An 8-bit array given to write_image was refused without saying what to do with it."""
    Image.fromarray(rng_u8((4, 4, 3))).save(tmp_path / "a.png")
    data, info = read_pixels(tmp_path / "a.png")
    for array, how in ((data, r"divide by 255 \(or write the file's own integers with write_pixels\)$"),
                       (data > 128, r"got ndarray bool; image\.astype\(np\.float32\) gives 0\.0 and 1\.0$"),
                       (data.tolist(), r"got list; np\.asarray\(x, dtype=np\.float32\) makes one")):
        with pytest.raises(InputError, match=r"the image to write must be a float numpy array in \[0, 1\]; .*" + how):
            images.write_image(tmp_path / "b.png", array, info)


def test_write_image_given_a_header_says_what_to_give(tmp_path: Path) -> None:
    """read_header's ImageHeader as write_image's info= got past its check, then failed in the write with
    "AttributeError: 'ImageHeader' object has no attribute 'icc_profile'"."""
    Image.fromarray(rng_u8((4, 4, 3))).save(tmp_path / "a.png")
    header = images.read_header(tmp_path / "a.png")
    data, _ = read_pixels(tmp_path / "a.png")
    for write, pixels in ((images.write_image, data / 255.0), (images.write_pixels, data)):
        with pytest.raises(InputError, match=r"got ImageHeader: read_header's ImageHeader describes a file, not the "
                                             r"metadata to write; read the pixels with read_image"):
            write(tmp_path / "b.png", pixels, header)
    assert not (tmp_path / "b.png").exists()


def test_a_photo_turned_upright_by_90_degrees_has_its_exif_size_and_resolution_turned_too(tmp_path: Path) -> None:
    """A 36x24 JPEG with EXIF orientation 6 came out 24x36 and upright, but its EXIF still said 36x24 pixels
    (PixelXDimension, PixelYDimension), and a resolution of 300x150 dpi kept x and y of the image as stored."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769).update({0xA002: 36, 0xA003: 24})
    Image.fromarray(rng_u8((24, 36, 3))).save(tmp_path / "turned.jpg", exif=exif.tobytes(), dpi=(300, 150))
    data, info = read_pixels(tmp_path / "turned.jpg")
    assert data.shape[:2] == (36, 24) and info.dpi == (150, 300)
    written = Image.Exif()
    written.load(info.exif)
    assert 0x0112 not in written and written.get_ifd(0x8769)[0xA002] == 24 and written.get_ifd(0x8769)[0xA003] == 36
    write_image(tmp_path / "out.jpg", data.astype(np.float32) / 255, info)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.size == (24, 36) and out.getexif().get_ifd(0x8769)[0xA002] == 24
        assert tuple(round(v) for v in out.info["dpi"]) == (150, 300)


def test_a_cmyk_photos_profile_left_out_is_said(tmp_path: Path) -> None:
    """A CMYK JPEG with its CMYK ICC profile: the profile was dropped and the note said only 'converted without
    colour management', so nobody could tell the photo had one."""
    cmyk = Image.fromarray(rng_u8((8, 8, 3))).convert("CMYK")
    cmyk.save(tmp_path / "profiled.jpg", icc_profile=b"a CMYK profile" * 8)
    _, info = read_pixels(tmp_path / "profiled.jpg")
    assert info.icc_profile is None and any("its CMYK ICC profile (112 bytes) was not used" in n for n in info.notes)
    cmyk.save(tmp_path / "plain.jpg")
    assert not any("ICC" in n for n in read_pixels(tmp_path / "plain.jpg")[1].notes)


def test_a_png_gamma_left_out_of_another_format_is_said(tmp_path: Path) -> None:
    """A linear PNG (gAMA 1.0, no ICC profile) written as .jpg, .tif or .webp lost its gamma without a note; viewers
    then show its pixels as sRGB, visibly other. sRGB's own gamma (1/2.2) left out changes nothing and is not said."""
    from PIL.PngImagePlugin import PngInfo

    for stored, said in ((100000, True), (45455, False)):
        chunks = PngInfo()
        chunks.add(b"gAMA", stored.to_bytes(4, "big"))
        Image.fromarray(rng_u8((8, 8, 3))).save(tmp_path / "g.png", pnginfo=chunks)
        _, info = read_pixels(tmp_path / "g.png")
        for fmt in ("JPEG", "TIFF", "WEBP"):
            notes = images.output_notes(fmt, info)
            assert any("the input's PNG gamma (1, not sRGB's 1/2.2) is left out" in n for n in notes) == said, fmt
        assert not images.output_notes("PNG", info)


def test_deep_colour_jpeg2000_is_refused_not_cut_to_8_bits(tmp_path: Path) -> None:
    """A lossless 16-bit colour JPEG 2000 was read as 8-bit RGB (256 levels of 23,699) without a note; the tool
    refuses 16-bit Netpbm for the same reason. 8-bit colour JPEG 2000 still reads."""
    from PIL import features

    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no JPEG 2000 codec (openjpeg)")
    pixels = rng_u8((8, 8, 3))
    Image.fromarray(pixels).save(tmp_path / "c.jp2", irreversible=False)
    np.testing.assert_array_equal(read_pixels(tmp_path / "c.jp2")[0], pixels)
    data = bytearray((tmp_path / "c.jp2").read_bytes())
    at = data.find(b"\xff\x4f\xff\x51")  # SIZ: each component's Ssiz (bits - 1) from byte 42
    for i in range(3):
        data[at + 42 + 3 * i] = 15  # 16 bits, as a deeper encoder writes it
    (tmp_path / "deep.jp2").write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"is a 16-bit colour JPEG 2000 file, which Pillow reads at 8 bits only"):
        read_pixels(tmp_path / "deep.jp2")


def test_a_16bit_colour_png_is_closed_once_read(tmp_path: Path) -> None:
    """pypng, given a file name, opened the file and left it to the garbage collector: a ResourceWarning each read
    (python -X dev), and a file held open as long as an error raised while reading it was kept."""
    import gc
    import warnings

    png = pytest.importorskip("png", reason="pypng is not installed: 16-bit colour PNG is optional")
    with open(tmp_path / "deep.png", "wb") as f:
        png.Writer(4, 4, greyscale=False, bitdepth=16).write(f, rng_u16((4, 12)).tolist())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        data, info = read_pixels(tmp_path / "deep.png")
        gc.collect()
    assert info.bit_depth == 16 and data.shape == (4, 4, 3)
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def _tiff(path: Path, pixels: np.ndarray, **options) -> None:
    tifffile = pytest.importorskip("tifffile", reason="writing the test TIFFs needs tifffile: pip install "
                                                      "'moe-denoise[images]'")
    tifffile.imwrite(path, pixels, **options)


@pytest.mark.parametrize("head", [b"%!PS-Adobe-3.0 EPSF-3.0\n", b"\xc5\xd0\xd3\xc6" + bytes(26)])
def test_reliability_an_eps_is_refused_before_ghostscript_runs(tmp_path: Path, head: bytes, monkeypatch) -> None:
    """An EPS file given to denoise: Pillow runs Ghostscript (a PostScript interpreter) on it when one is installed,
    and its failure was a traceback; without one the valid file was called 'truncated or corrupt' => refused by its
    first bytes before Pillow opens it, saying what it is and to export a PNG"""
    eps = tmp_path / "logo.eps"
    eps.write_bytes(head + b"%%BoundingBox: 0 0 10 10\nshowpage\n")

    def no_open(*args, **kwargs):
        raise AssertionError("Pillow was asked to open an EPS file")

    monkeypatch.setattr(images._pil(), "open", no_open)
    with pytest.raises(InputError, match=r"is a PostScript \(EPS\) file, .*; export it as PNG at the size you want"):
        read_pixels(eps)


@pytest.mark.parametrize("content, kind", [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "a HEIC/HEIF photo"),
    (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "a HEIC/HEIF photo"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "a PDF document"),
    (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "an SVG drawing"),
    (b"\xff\x0a\xfa\x7f\x01\x00", "a JPEG XL image"),
])
def test_formats_pillow_cannot_read_are_named_not_called_corrupt(tmp_path: Path, content: bytes, kind: str) -> None:
    """An iPhone's HEIC photo, a PDF, an SVG or a JPEG XL image was answered 'Is it truncated or corrupt?'."""
    path = tmp_path / "IMG_0001.heic"
    path.write_bytes(content + bytes(64))
    with pytest.raises(InputError) as refused:
        read_pixels(path)
    assert str(refused.value).startswith(f"'{path}' is {kind}") and "corrupt" not in str(refused.value)
    assert "export or convert it to PNG or JPEG" in str(refused.value)


def _psd(merged: np.ndarray, layers: list[np.ndarray], *, saved_merged: bool = True,
         merged_alpha: bool = False) -> bytes:
    """An 8-bit RGB Photoshop file as Photoshop lays it out: a version-info resource saying whether the merged picture
    was saved, raw layer records (their count negative when ``merged_alpha``: the first extra channel is then the
    merged picture's transparency), and the merged picture (blank when it was not saved, as Photoshop leaves it)."""
    h, w, c = merged.shape
    out = b"8BPS" + struct.pack(">H6xHIIHH", 1, c, h, w, 8, 3) + struct.pack(">I", 0)
    info = struct.pack(">IBIII", 1, int(saved_merged), 0, 0, 1)
    info += bytes(len(info) % 2)
    resources = b"8BIM" + struct.pack(">HHI", 1057, 0, len(info)) + info
    out += struct.pack(">I", len(resources)) + resources
    records, channels = b"", b""
    for i, layer in enumerate(layers):
        records += struct.pack(">iiiiH", 0, 0, h, w, c)
        for ch in range(c):
            records += struct.pack(">hI", ch, 2 + h * w)
            channels += struct.pack(">H", 0) + layer[:, :, ch].tobytes()
        name = bytes([2]) + f"L{i}".encode()
        extra = struct.pack(">II", 0, 0) + name + bytes(-len(name) % 4)
        records += b"8BIMnorm" + bytes([255, 0, 0, 0]) + struct.pack(">I", len(extra)) + extra
    block = struct.pack(">h", -len(layers) if merged_alpha else len(layers)) + records + channels
    block += bytes(len(block) % 2)
    section = struct.pack(">I", len(block)) + block + struct.pack(">I", 0)
    out += struct.pack(">I", len(section)) + section
    shown = merged if saved_merged else np.full_like(merged, 255)
    return out + struct.pack(">H", 0) + b"".join(shown[:, :, ch].tobytes() for ch in range(c))


def test_reliability_a_photoshop_file_saved_without_its_merged_picture_is_refused(tmp_path: Path) -> None:
    """A layered Photoshop file saved with "Maximize compatibility" off (its merged picture left blank) => refused,
    saying how to save it; it was denoised into a white picture with exit 0 and only '2 frames; only the first is
    read'"""
    photo = rng_u8((24, 32, 3))
    path = tmp_path / "poster.psd"
    path.write_bytes(_psd(photo, [photo, photo[::-1].copy()], saved_merged=False))
    with pytest.raises(InputError, match=r"'.*poster.psd' is a Photoshop file saved without its merged picture "
                                         r'\("Maximize PSD and PSB File Compatibility" was off\).*export it as PNG'):
        read_pixels(path)


@pytest.mark.parametrize("version, depth, kind", [(1, 16, "a 16-bit Photoshop file"), (1, 32, "a 32-bit Photoshop file"),
                                                   (2, 8, "a Photoshop large-document (PSB) file")])
def test_photoshop_files_pillow_does_not_read_are_named(tmp_path: Path, version: int, depth: int, kind: str) -> None:
    """16-bit PSD files (common among photographers) and PSB files were refused as 'truncated or corrupt?'."""
    data = bytearray(_psd(rng_u8((8, 8, 3)), []))
    data[4:6], data[22:24] = version.to_bytes(2, "big"), depth.to_bytes(2, "big")
    path = tmp_path / "edit.psd"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as refused:
        read_pixels(path)
    assert str(refused.value).startswith(f"'{path}' is {kind}, which Pillow does not read: save or export it")
    assert "corrupt" not in str(refused.value)


def test_a_multichannel_photoshop_file_is_refused_not_read_as_its_first_channel(tmp_path: Path) -> None:
    """A multichannel PSD (colour mode 7) came back as its first channel alone, in gray, with exit 0."""
    data = bytearray(_psd(rng_u8((8, 8, 3)), []))
    data[24:26] = (7).to_bytes(2, "big")
    path = tmp_path / "spots.psd"
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"is a multichannel Photoshop file .* convert it to RGB or grayscale"):
        read_pixels(path)


def test_reliability_a_photoshop_files_saved_selection_is_not_taken_for_transparency(tmp_path: Path) -> None:
    """A flattened Photoshop file with a saved selection (a 4th channel, an alpha channel) => RGB, the selection
    left out with a note; it came out half transparent with exit 0 (Pillow takes a 4th channel for transparency).
    A layered file whose negative layer count says the channel is the merged picture's transparency keeps it"""
    photo = rng_u8((16, 20, 4))
    flat, layered = tmp_path / "flat.psd", tmp_path / "layered.psd"
    flat.write_bytes(_psd(photo, []))
    layered.write_bytes(_psd(photo, [photo], merged_alpha=True))
    pixels, info = read_pixels(flat)
    assert info.layout == "RGB" and np.array_equal(pixels, photo[:, :, :3])
    assert "the Photoshop file's extra channel is a saved selection (an alpha channel), not transparency: it is " \
           "left out; the output is RGB" in info.notes
    pixels, info = read_pixels(layered)
    assert info.layout == "RGBA" and np.array_equal(pixels, photo) and not any("selection" in n for n in info.notes)


def test_a_layered_photoshop_file_gives_its_merged_picture_and_says_the_layers_go(tmp_path: Path) -> None:
    """A layered PSD's frames are its layers, and the picture read is the merged one: the note said '2 frames; only
    the first is read'. A flat PSD (no layers) has no note."""
    photo, other = rng_u8((24, 32, 3)), rng_u8((24, 32, 3), seed=1)
    layered, flat = tmp_path / "layered.psd", tmp_path / "flat.psd"
    layered.write_bytes(_psd(photo, [other, photo]))
    flat.write_bytes(_psd(photo, []))
    pixels, info = read_pixels(layered)
    assert np.array_equal(pixels, photo)
    assert info.notes == ("the Photoshop file's 2 layers are not kept: the output holds its merged picture",)
    assert images.read_header(layered).frames == 1  # nothing to refuse to overwrite: a PSD is not written
    pixels, info = read_pixels(flat)
    assert np.array_equal(pixels, photo) and info.notes == ()


def test_reliability_a_camera_raw_is_refused_not_its_preview_denoised(tmp_path: Path) -> None:
    """A DNG (its first page a small 8-bit preview, the sensor's data in a sub-page) gave a denoised 40x30 preview
    with exit 0; a NEF/CR2/ARW laid out as a TIFF did too, with only '2 frames; only the first is read'; a DNG whose
    first page is the sensor's mosaic was told to convert it as a TIFF => refused as a camera raw, with the raw
    converters to develop it in"""
    preview = rng_u8((30, 40, 3))
    _tiff(tmp_path / "photo.dng", preview, subfiletype=1, extratags=[(50706, "B", 4, (1, 4, 0, 0), True)])
    _tiff(tmp_path / "mosaic.tif", rng_u8((30, 40)).astype(np.uint16), photometric=32803)
    full = rng_u8((60, 80, 3))
    _tiff(tmp_path / "photo.nef", preview)
    _tiff(tmp_path / "photo.nef", full, append=True)
    for name, kind in (("photo.dng", "DNG"), ("mosaic.tif", "CFA"), ("photo.nef", "NEF")):
        with pytest.raises(InputError, match=rf"is a camera raw file \({kind}\): the sensor's data, .* develop it in a "
                                             r"raw converter \(darktable, RawTherapee"):
            read_pixels(tmp_path / name)


def test_a_tiff_whose_first_page_is_a_thumbnail_is_refused_naming_it(tmp_path: Path) -> None:
    """A TIFF whose first page is a reduced-resolution copy (NewSubfileType bit 0) of the full image on page 2 gave
    the denoised thumbnail, with only '2 frames; only the first is read'."""
    _tiff(tmp_path / "scan.tif", rng_u8((30, 40, 3)), subfiletype=1)
    _tiff(tmp_path / "scan.tif", rng_u8((60, 80, 3)), append=True)
    with pytest.raises(InputError, match=r"starts with a reduced-resolution copy \(40x30\) of an image on a later page"):
        read_pixels(tmp_path / "scan.tif")
    _tiff(tmp_path / "pages.tif", rng_u8((30, 40, 3)))  # pages of equal standing: the first read, as before
    _tiff(tmp_path / "pages.tif", rng_u8((60, 80, 3)), append=True)
    assert read_pixels(tmp_path / "pages.tif")[0].shape == (30, 40, 3)


def _tiff_12bit_gray(path: Path, width: int, height: int) -> None:
    """An uncompressed gray TIFF with 12-bit samples, packed two in three bytes (neither Pillow nor tifffile writes
    one)."""
    import struct

    data = bytes([0xFF, 0xF0, 0x00] * (width * height // 2))  # pixels 4095, 0, 4095, 0, ...
    tags = [(256, 3, width), (257, 3, height), (258, 3, 12), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4),
            (277, 3, 1), (278, 3, height), (279, 4, len(data))]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + data)


def test_twelve_bit_samples_are_refused_and_twelve_bits_in_sixteen_noted(tmp_path: Path) -> None:
    """A 12-bit TIFF was read as 16-bit and written back with the same values, 16 times darker (exit 0, no note);
    12-bit data in 16-bit samples read its noise at 1.5/255 where it was 25/255 of its range, and was hardly
    denoised, without a word."""
    _tiff_12bit_gray(tmp_path / "packed.tif", 4, 2)
    with pytest.raises(InputError, match=r"holds 12-bit samples, which Pillow reads as 16-bit ones without scaling "
                                         r"them \(the output would be written 16 times darker\)"):
        read_pixels(tmp_path / "packed.tif")
    for pixels, top, bits in ((np.full((8, 8, 3), 4000, np.uint16), "4,000", 12),
                              (np.full((8, 8), 4000, np.uint16), "4,000", 12),
                              (np.full((8, 8), 5280, np.uint16), "5,280", 13)):  # 12 bits, an offset, shot noise
        _tiff(tmp_path / "twelve.tif", pixels)
        _, info = read_pixels(tmp_path / "twelve.tif")
        assert any(note.startswith(f"its values reach only {top} of 65,535 ({bits}-bit data in 16-bit samples?)")
                   for note in info.notes), info.notes
    for value in (9000, 40000, 31 * 257):  # 14 bits and more: denoised well as they are; 8-bit data x 257
        _tiff(tmp_path / "full.tif", np.full((8, 8, 3), value, np.uint16))
        assert not any("values reach only" in note for note in read_pixels(tmp_path / "full.tif")[1].notes)


def test_reliability_16bit_tiff_samples_are_read_as_what_their_tags_say(tmp_path: Path) -> None:
    """tifffile hands a 16-bit TIFF's samples over as they are: a 16-bit CMYK TIFF came out in inverted colours
    with its black taken for alpha (the picture transparent), an unspecified fourth sample was written back as alpha
    (transparent where it held 0), premultiplied alpha was taken as straight (half-transparent pixels half as
    bright), all with exit 0 => CMYK (and other kinds) and premultiplied alpha refused, saying what to convert to;
    an unspecified extra sample left out with a note"""
    rgb = (rng_u8((6, 8, 3)).astype(np.uint16) * 257)
    _tiff(tmp_path / "cmyk.tif", np.concatenate([rgb, rgb[:, :, :1]], axis=2), photometric="separated")
    with pytest.raises(InputError, match=r"is a 16-bit CMYK TIFF; 16-bit TIFFs are read as gray or RGB only: convert"):
        read_pixels(tmp_path / "cmyk.tif")
    four = np.concatenate([rgb, np.zeros((6, 8, 1), np.uint16)], axis=2)
    _tiff(tmp_path / "rgbx.tif", four, photometric="rgb", extrasamples=["unspecified"])
    data, info = read_pixels(tmp_path / "rgbx.tif")
    np.testing.assert_array_equal(data, rgb)
    assert info.layout == "RGB" and any("fourth sample is not alpha" in note for note in info.notes)
    _tiff(tmp_path / "assoc.tif", four, photometric="rgb", extrasamples=["assocalpha"])
    with pytest.raises(InputError, match=r"16-bit TIFF with premultiplied \(associated\) alpha, which is not read"):
        read_pixels(tmp_path / "assoc.tif")
    _tiff(tmp_path / "rgba.tif", four, photometric="rgb", extrasamples=["unassalpha"])
    data, info = read_pixels(tmp_path / "rgba.tif")
    assert info.layout == "RGBA" and data.shape == (6, 8, 4)


def test_a_png_named_jpg_is_said_to_be_written_as_jpeg(tmp_path: Path) -> None:
    """A PNG saved as photo.jpg, denoised into a folder: its result, named photo.jpg, was written as lossy JPEG without
    a word (a JPEG named .png is read and written as what it is)."""
    Image.fromarray(rng_u8((8, 8, 3))).save(tmp_path / "photo.jpg", format="PNG")
    _, info = read_pixels(tmp_path / "photo.jpg")
    assert info.format == "PNG"
    assert any(note.startswith("the input is a PNG file named .jpg: the result is written as the JPEG its name says")
               for note in images.output_notes("JPEG", info))
    assert not any("named .jpg" in note for note in images.output_notes("PNG", info))
    Image.fromarray(rng_u8((8, 8, 3))).save(tmp_path / "real.jpg")
    assert not any("named" in note for note in images.output_notes("JPEG", read_pixels(tmp_path / "real.jpg")[1]))
