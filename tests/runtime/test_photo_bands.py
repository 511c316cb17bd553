"""Large photos: banded denoising gives the unbanded result bit for bit, memory stays bounded, and what cannot fit
(too many pixels, not enough memory) is refused before anything is decoded or written."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moe_base.errors import InputError
from runtime import images, photo
from runtime.images import read_image, read_pixels, to_pixels, write_image
from runtime.photo import add_noise_to_file, denoise_file, denoise_peak_bytes
from runtime.tiling import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    band_working_bytes,
    denoise_array,
    denoise_bands,
    plan_tiles,
    reflect_indices,
    validate_image,
    window_1d,
)

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ the unbanded algorithm, as it was before bands


def unbanded(image, fn, tile=DEFAULT_TILE, overlap=DEFAULT_OVERLAP, batch_size=DEFAULT_BATCH_SIZE):
    """runtime.tiling.denoise_array before banding (commit 47828a1), kept verbatim as the reference."""
    img = validate_image(image)
    h, w, c = img.shape
    gray = c in (1, 2)
    color = img[:, :, :1] if gray else img[:, :, :3]
    plan = plan_tiles(h, w, tile, overlap)
    iy = reflect_indices(h, plan.pad_top, plan.padded_height - h - plan.pad_top)
    ix = reflect_indices(w, plan.pad_left, plan.padded_width - w - plan.pad_left)
    padded = np.ascontiguousarray(color[iy][:, ix].transpose(2, 0, 1))
    if gray:
        padded = np.repeat(padded, 3, axis=0)
    t = plan.tile
    windows = np.lib.stride_tricks.sliding_window_view(padded, (t, t), axis=(1, 2))
    w1 = window_1d(t, plan.overlap)
    w2 = np.outer(w1, w1)
    acc = np.zeros(padded.shape, dtype=np.float64)
    coords = [(y, x) for y in plan.ys for x in plan.xs]
    for start in range(0, len(coords), batch_size):
        chunk = coords[start:start + batch_size]
        ys = np.fromiter((q[0] for q in chunk), dtype=np.intp, count=len(chunk))
        xs = np.fromiter((q[1] for q in chunk), dtype=np.intp, count=len(chunk))
        batch = np.ascontiguousarray(windows[:, ys, xs].transpose(1, 0, 2, 3))
        out = np.asarray(fn(batch), dtype=np.float32)
        for (y, x), tile_out in zip(chunk, out):
            acc[:, y:y + t, x:x + t] += tile_out * w2

    def summed(starts, length):
        total = np.zeros(length, dtype=np.float64)
        for s in starts:
            total[s:s + len(w1)] += w1
        return total

    wy, wx = summed(plan.ys, plan.padded_height), summed(plan.xs, plan.padded_width)
    rows = slice(plan.pad_top, plan.pad_top + plan.height)
    cols = slice(plan.pad_left, plan.pad_left + plan.width)
    out = (acc[:, rows, cols] / np.outer(wy[rows], wx[cols])).astype(np.float32)
    result = np.empty_like(img)
    if gray:
        result[:, :, 0] = out.mean(axis=0)
    else:
        result[:, :, :3] = out.transpose(1, 2, 0)
    if c in (2, 4):
        result[:, :, -1] = img[:, :, -1]
    return result.reshape(image.shape)


def nonlinear(batch: np.ndarray) -> np.ndarray:
    """A denoiser whose answer depends on the whole batch: different batch cuts would show."""
    return np.tanh(3 * batch - 1.3 + batch.mean(axis=(1, 2, 3), keepdims=True) * np.float32(0.1 * len(batch)))


def recording(fn):
    seen: list[np.ndarray] = []

    def wrapped(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return fn(batch)

    return wrapped, seen


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def random_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# ------------------------------------------------------------------------------------------ bit-identical


@pytest.mark.parametrize("shape, overlap, batch_size", [
    ((150, 97, 3), 16, 256), ((150, 97, 3), 16, 7), ((203, 64, 4), 8, 33), ((77, 130, 1), 16, 16),
    ((90, 45, 2), 0, 5), ((5, 7, 3), 16, 256), ((1, 40, 3), 16, 3), ((300, 33), 12, 64),
])
@pytest.mark.parametrize("band_rows", [1, 7, 32, 100000])
def test_reliability_banded_result_equals_unbanded(shape, overlap, batch_size, band_rows) -> None:
    """A photo denoised in bands of 1, 7, 32 or all rows (gray, RGB, alpha; any overlap and batch size) =>
    bit-identical to the unbanded result, and the denoiser is given the very same batches"""
    image = random_image(shape, seed=sum(shape))
    fn_old, seen_old = recording(nonlinear)
    fn_new, seen_new = recording(nonlinear)
    expected = unbanded(image, fn_old, overlap=overlap, batch_size=batch_size)
    got = denoise_array(image, fn_new, overlap=overlap, batch_size=batch_size, band_rows=band_rows)
    assert same_bits(got, expected)
    assert len(seen_new) == len(seen_old) and all(same_bits(a, b) for a, b in zip(seen_new, seen_old))


def test_bands_come_in_order_and_at_most_band_rows_high() -> None:
    """Bands come top to bottom, at most band_rows high, and join up to the unbanded result."""
    image = random_image((203, 50, 3), seed=1)
    bands = list(denoise_bands(lambda a, b: image[a:b], 203, 50, 3, nonlinear, band_rows=16))
    assert [y for y, _ in bands] == list(range(0, 203, 16))
    assert all(len(band) == min(16, 203 - y) for y, band in bands)
    assert same_bits(np.concatenate([b for _, b in bands]), unbanded(image, nonlinear))


def test_reliability_band_memory_does_not_grow_with_height() -> None:
    """A photo 8 times taller, denoised in bands => working memory grows by under 32 bytes a row (the plan's row
    indexes and weights; a float32 copy of a row is 768 bytes), below band_working_bytes and below one float32 copy
    of the image"""
    def peak(height: int) -> int:
        pixels = np.random.default_rng(0).integers(0, 256, (height, 64, 3), dtype=np.uint8)
        out = np.empty_like(pixels)
        tracemalloc.start()
        for y, band in denoise_bands(lambda a, b: pixels[a:b].astype(np.float32) / np.float32(255), height, 64, 3,
                                     lambda t: t, batch_size=16, band_rows=32):
            out[y:y + len(band)] = np.rint(band * 255)
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used

    small, tall = peak(512), peak(4096)
    assert tall - small < (4096 - 512) * 32
    assert tall < band_working_bytes(64, batch_size=16, band_rows=32)
    assert tall < 4096 * 64 * 3 * 4  # less than one float32 copy of the image


@pytest.mark.parametrize(("height", "width", "batch"), [(400, 4000, 64), (700, 1000, 64)])
def test_band_memory_stays_under_its_bound_on_wide_photos(height: int, width: int, batch: int) -> None:
    """At the default band height, a view of the accumulator kept the old one alive after each growth, and the last
    batch stayed while the next was cut: 1.23 and 1.15 times band_working_bytes, the 'upper bound' that serve's and
    denoise's memory checks rest on (the caller's band and the source rows included here)."""
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = np.empty_like(pixels)
    tracemalloc.start()
    try:
        for y, band in denoise_bands(lambda a, b: pixels[a:b].astype(np.float32) / np.float32(255), height, width, 3,
                                     lambda t: t.copy(), batch_size=batch):
            out[y:y + len(band)] = np.rint(band * 255)
        used = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(out, pixels)
    assert used < band_working_bytes(width, batch_size=batch)


def test_reliability_denoise_file_equals_the_unbanded_pipeline(tmp_path: Path) -> None:
    """denoise_file, which keeps the file's integers and works in bands of 8 rows => writes the same
    bytes as read, unbanded denoise, write (RGB, RGBA, gray)"""
    for layout, shape in (("RGB", (83, 61, 3)), ("RGBA", (40, 70, 4)), ("L", (66, 31))):
        pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
        src = tmp_path / f"in_{layout}.png"
        Image.fromarray(pixels, layout).save(src)
        image, info = read_image(src)
        write_image(tmp_path / f"old_{layout}.png", unbanded(image, nonlinear), info)
        denoise_file(src, tmp_path / f"new_{layout}.png", nonlinear, progress=False, band_rows=8)
        assert (tmp_path / f"new_{layout}.png").read_bytes() == (tmp_path / f"old_{layout}.png").read_bytes()


def test_add_noise_in_bands_is_the_same_draw(tmp_path: Path, monkeypatch) -> None:
    """add-noise drawn band by band is the same noise as drawn at once (same seed, same file)."""
    pixels = np.random.default_rng(3).integers(0, 65536, (70, 41, 3), dtype=np.uint16)
    src = tmp_path / "in.tif"
    import tifffile

    tifffile.imwrite(src, pixels, photometric="rgb")
    monkeypatch.setattr(photo, "band_rows_for", lambda width: 9)
    add_noise_to_file(src, tmp_path / "noisy.tif", 0.1, seed=5)
    image, info = read_image(src)  # the whole-image formula of before
    rng = np.random.default_rng(5)
    noisy = image.copy()
    noisy[:, :, :3] = np.clip(image + rng.normal(0.0, 0.1, size=image.shape).astype(np.float32), 0.0, 1.0)
    np.testing.assert_array_equal(read_pixels(tmp_path / "noisy.tif")[0], to_pixels(noisy, info))


def test_read_pixels_keeps_the_files_integers(tmp_path: Path, monkeypatch) -> None:
    """Decoded as uint8 / uint16 (1-2 bytes per channel, not 4), strip by strip, equal to Pillow's whole decode."""
    monkeypatch.setattr(images, "_STRIP_BYTES", 50 * 4 * 7)  # strips of 7 rows
    rng = np.random.default_rng(4)
    cases = {
        "rgb.png": Image.fromarray(rng.integers(0, 256, (300, 50, 3), dtype=np.uint8)),
        "gray16.png": Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16)),
        "pal.gif": Image.fromarray(rng.integers(0, 256, (300, 50, 3), dtype=np.uint8)).quantize(64),
        "cmyk.jpg": Image.fromarray(rng.integers(0, 256, (300, 50, 4), dtype=np.uint8), "CMYK"),
        "bits.png": Image.fromarray(rng.integers(0, 2, (301, 50), dtype=np.uint8).astype(bool)),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        pixels, info = read_pixels(tmp_path / name)
        with Image.open(tmp_path / name) as ref:
            mode = {"P": "RGB", "CMYK": "RGB", "1": "L"}.get(ref.mode, ref.mode)
            expected = np.asarray(ref.convert(mode) if mode != ref.mode else ref)
        assert pixels.dtype == (np.uint16 if info.bit_depth == 16 else np.uint8), name
        np.testing.assert_array_equal(pixels.reshape(expected.shape), expected.astype(pixels.dtype), err_msg=name)


# ------------------------------------------------------------------------------------------ refused up front


def png_header_only(path: Path, width: int, height: int, colour_type: int = 2) -> Path:
    """A tiny PNG that declares a huge canvas (a 'decompression bomb'): header, a little zlib data, IEND."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def counting_denoiser():
    calls: list[int] = []

    def fn(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch

    return fn, calls


def test_reliability_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    """A 200-byte PNG declaring 12000x12000 pixels (144 megapixels) with max_pixels 100 megapixels, or 20000x20000
    under the default 200 => refused before decoding (InputError naming the file, its size, the limit and
    --max-pixels); the denoiser is never called and no file is written"""
    bomb = png_header_only(tmp_path / "bomb.png", 12000, 12000)  # 144 megapixels in 200 bytes
    fn, calls = counting_denoiser()
    with pytest.raises(InputError) as e:
        denoise_file(bomb, tmp_path / "out.png", fn, progress=False, max_pixels=100_000_000)
    msg = str(e.value)
    assert "bomb.png" in msg and "12000x12000" in msg and "(144 megapixels" in msg and "100,000,000" in msg
    assert "--max-pixels" in msg
    assert calls == [] and sorted(os.listdir(tmp_path)) == ["bomb.png"]
    with pytest.raises(InputError, match="limit of 200,000,000 pixels"):  # the default limit
        read_image(png_header_only(tmp_path / "big.png", 20000, 20000))


def test_reliability_pillows_bomb_limit_gives_way_to_ours(tmp_path: Path, monkeypatch, recwarn) -> None:
    """A 180-megapixel PNG, over Pillow's own bomb limit but within max_pixels => its header is
    read without Pillow's DecompressionBombError or warning, and Pillow's limit is put back"""
    bomb = png_header_only(tmp_path / "b.png", 15000, 12000)  # 180 megapixels: over Pillow's limit, within ours
    monkeypatch.setattr(images, "available_memory", lambda: (None, ""))
    headers = []

    def stop(header: images.ImageHeader) -> None:
        headers.append(header)
        raise InputError("stopped before decoding")

    with pytest.raises(InputError, match="stopped before decoding"):
        read_pixels(bomb, before_decode=stop)
    assert headers[0].pixels == 180_000_000 and headers[0].layout == "RGB"
    assert not [w for w in recwarn if "decompression" in str(w.message).lower()]
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # Pillow's limit is put back


def test_a_callers_before_decode_callback_has_pillows_bomb_check(tmp_path: Path) -> None:
    """The read's own bomb check (check_size) stood in for Pillow's inside the caller's callback too: an Image.open
    of a 900-megapixel header made there went through."""
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "a.png")
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)

    def opens_a_bomb(header: images.ImageHeader) -> None:
        Image.open(bomb).close()

    with pytest.raises(Image.DecompressionBombError):
        read_pixels(tmp_path / "a.png", before_decode=opens_a_bomb)


def test_reads_run_side_by_side_and_leave_pillows_bomb_limit_to_the_other_threads(tmp_path: Path, in_threads) -> None:
    """Pillow's bomb limit was set aside through each read under a lock held through the decode: every read in the
    process waited for the one before. Then it was set aside (None) for the whole process while any read ran: a
    service's own Image.open let 97% of 900-megapixel bombs through while a read looped in another thread, and a
    limit it set meanwhile was put back. Now two reads meet inside their decodes, Pillow's limit is never changed,
    and a bomb opened in another thread while they read is refused by Pillow."""
    import threading

    pillows = Image.MAX_IMAGE_PIXELS
    Image.fromarray(np.zeros((8, 9, 3), np.uint8)).save(tmp_path / "a.png")
    bomb = png_header_only(tmp_path / "bomb.png", 30000, 30000)  # 900 megapixels: Pillow refuses it
    meet = threading.Barrier(3, timeout=10)
    seen = []

    def both_inside(header: images.ImageHeader) -> None:
        seen.append(Image.MAX_IMAGE_PIXELS)
        meet.wait()  # the second read waited for the first's lock: the barrier broke
        meet.wait()  # the third thread has tried its bomb

    def other_thread() -> None:
        meet.wait()
        try:
            Image.open(bomb).close()
            seen.append("the bomb was opened")
        except Image.DecompressionBombError:
            seen.append("refused")
        finally:
            meet.wait()

    caller = threading.Thread(target=other_thread)
    caller.start()
    errors = in_threads(lambda: read_pixels(tmp_path / "a.png", before_decode=both_inside), 2)
    caller.join(20)
    assert errors == [] and seen == [pillows, pillows, "refused"]
    assert Image.MAX_IMAGE_PIXELS == pillows


def test_reliability_more_than_the_memory_available_is_refused(tmp_path: Path, monkeypatch) -> None:
    """A photo that needs more memory than the process can get => refused before decoding (InputError
    naming the file, its size, the memory needed and what bounds it); the denoiser is never called, nothing written"""
    src = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(src)
    monkeypatch.setattr(images, "available_memory", lambda: (10_000, "the test's limit"))
    fn, calls = counting_denoiser()
    with pytest.raises(InputError) as e:
        denoise_file(src, tmp_path / "out.png", fn, progress=False)
    msg = str(e.value)
    assert "in.png" in msg and "64x64" in msg and "needs about" in msg and "the test's limit" in msg
    assert calls == [] and not (tmp_path / "out.png").exists()


def test_reliability_a_real_address_space_limit_refuses_up_front(tmp_path: Path) -> None:
    """A 168-megapixel photo under a real ulimit -v of 1 GiB above the process's size => refused
    with a message naming the address-space limit (exit 2 in the test's process), not a MemoryError; nothing written"""
    bomb = png_header_only(tmp_path / "huge.png", 14000, 12000)  # 168 megapixels: ~1.2 GB of uint8 RGB, 0.7 GB Pillow
    code = textwrap.dedent(f"""
        import resource, sys
        from moe_base.errors import InputError
        from runtime.photo import denoise_file
        size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (1 << 30), resource.RLIM_INFINITY))
        try:
            denoise_file({str(bomb)!r}, {str(tmp_path / 'out.png')!r}, lambda t: t, progress=False)
        except InputError as e:
            print(e)
            sys.exit(2)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "huge.png" in done.stdout and "address-space limit (ulimit -v)" in done.stdout
    assert sorted(os.listdir(tmp_path)) == ["huge.png"]


def test_peak_estimate_for_a_large_rgb_photo() -> None:
    """What the README states: 8-bit RGB needs about 7 bytes per pixel plus the denoiser's reserve."""
    header = images.ImageHeader(path="x.png", format="PNG", mode="RGB", layout="RGB", bit_depth=8, width=12000,
                                height=12000, core_bytes_per_pixel=4)
    reserve = photo.DENOISER_BYTES_PER_TILE * DEFAULT_BATCH_SIZE
    peak = denoise_peak_bytes(header) - reserve
    assert 7 * 144e6 <= peak <= 7.5 * 144e6


def test_peak_estimate_counts_no_more_tiles_a_call_than_the_photo_has() -> None:
    """--batch-size 100000000 on a 35-tile photo was refused as needing 243 TiB ('split the image'): a call holds at
    most the photo's tiles, so any larger batch size needs what the tile count needs."""
    header = images.ImageHeader(path="x.png", format="PNG", mode="RGB", layout="RGB", bit_depth=8, width=77,
                                height=45, core_bytes_per_pixel=4)
    tiles = plan_tiles(45, 77, DEFAULT_TILE, DEFAULT_OVERLAP).count
    assert denoise_peak_bytes(header, batch_size=100_000_000) == denoise_peak_bytes(header, batch_size=tiles) < 2**30
    assert denoise_peak_bytes(header, batch_size=1) < denoise_peak_bytes(header, batch_size=tiles)
    # so for bands: a band holds at most the image's rows (band_rows=10**6 on a 4000x100 photo read 454 GiB)
    strip = images.ImageHeader(path="x.png", format="PNG", mode="RGB", layout="RGB", bit_depth=8, width=4000,
                               height=100, core_bytes_per_pixel=4)
    assert denoise_peak_bytes(strip, band_rows=10**6) == denoise_peak_bytes(strip, band_rows=100) < 2**30
