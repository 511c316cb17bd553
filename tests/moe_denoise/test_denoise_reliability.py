"""moe-denoise denoise: the --reference PSNR compares the colour channels only and says so; --max-pixels and the
memory check refuse huge photos up front (exit 2, a message naming the file, nothing written)."""
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from moe_base.metrics import psnr_from_mse
from moe_denoise.cli import main
from moe_denoise.commands.denoise import reference_psnr


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def colour_psnr(a: np.ndarray, b: np.ndarray, colour: int) -> float:
    """PSNR over the first ``colour`` channels, on pixels read as the toolkit reads them (float32 / 255)."""
    def unit(x: np.ndarray) -> np.ndarray:
        return (x[..., :colour].astype(np.float32) / np.float32(255)).astype(np.float64)

    return psnr_from_mse(float(np.mean((unit(a) - unit(b)) ** 2)))


@pytest.mark.parametrize("mode, colour", [("RGBA", 3), ("LA", 1)])
def test_reliability_reference_psnr_ignores_the_untouched_alpha(tmp_path: Path, mode: str, colour: int) -> None:
    """denoise --reference on an RGBA or gray+alpha photo => the PSNR of the colour channels only (the untouched
    alpha no longer inflates it), and the report says which channels were compared"""
    rng = np.random.default_rng(0)
    channels = len(mode)
    clean = rng.integers(20, 236, (40, 50, channels), dtype=np.uint8)
    noisy = clean.copy()
    noisy[..., :colour] = np.clip(clean[..., :colour] + rng.normal(0, 12, (40, 50, colour)), 0, 255).astype(np.uint8)
    better = ((clean.astype(np.int16) + noisy) // 2).astype(np.uint8)
    better[..., -1] = clean[..., -1]  # alpha copied through, as the denoiser does
    for name, arr in (("clean", clean), ("noisy", noisy), ("better", better)):
        Image.fromarray(arr, mode).save(tmp_path / f"{name}.png")
    r = reference_psnr(tmp_path / "clean.png", tmp_path / "noisy.png", tmp_path / "better.png")
    assert r["input"] == pytest.approx(colour_psnr(noisy, clean, colour), abs=1e-9)
    assert r["output"] == pytest.approx(colour_psnr(better, clean, colour), abs=1e-9)
    assert r["input"] < colour_psnr(noisy, clean, channels) - 0.5  # what counting alpha reported
    assert r["compared"] == ("R, G, B" if colour == 3 else "gray") + " channels; alpha not compared"


def test_reliability_reference_psnr_on_rgb_says_which_channels(tmp_path: Path) -> None:
    """denoise --reference on an RGB photo => the report names the channels compared (R, G, B)"""
    rgb = np.random.default_rng(1).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    r = reference_psnr(tmp_path / "a.png", tmp_path / "a.png", tmp_path / "a.png")
    assert r == {"input": float("inf"), "output": float("inf"), "compared": "R, G, B channels"}


def test_reliability_reference_psnr_is_printed_with_the_channels(capsys, random_weights, tmp_path: Path) -> None:
    """denoise --reference, text and --json => both say which channels the PSNR compared (alpha not compared)"""
    rgba = np.random.default_rng(2).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in.png")
    code, out, err = run(capsys, "denoise", tmp_path / "in.png", "-o", tmp_path / "out.png", "--weights",
                         random_weights, "--reference", tmp_path / "in.png", "--no-progress")
    assert code == 0, err
    assert "(R, G, B channels; alpha not compared): input inf dB" in out
    code, out, _ = run(capsys, "denoise", tmp_path / "in.png", "-o", tmp_path / "out2.png", "--weights",
                       random_weights, "--reference", tmp_path / "in.png", "--no-progress", "--json")
    assert code == 0 and json.loads(out)["psnr_vs_reference"]["compared"] == "R, G, B channels; alpha not compared"

    def strict(text):  # what JavaScript's JSON.parse accepts: Infinity is not JSON
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))

    assert strict(out)["psnr_vs_reference"]["input"] is None  # identical to its reference: inf in the text
    code, out, _ = run(capsys, "denoise", tmp_path / "in.png", "-o", tmp_path / "out2.png", "--weights",
                       random_weights, "--skip-existing", "--json")
    assert code == 0 and strict(out)["skipped"] == "the output exists"  # --json: no line of plain text


def test_reliability_reference_or_input_that_is_the_output(capsys, random_weights, tmp_path: Path) -> None:
    """denoise --reference R -o R --overwrite, or IN -o IN --overwrite --reference R, which printed the PSNR of the
    output against itself (inf) or the output's as the input's => refused before any work (exit 2, the file named);
    nothing is written"""
    rng = np.random.default_rng(5)
    for name in ("clean.png", "noisy.png"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name)
    before = {n: (tmp_path / n).read_bytes() for n in ("clean.png", "noisy.png")}
    for out, what in (("clean.png", "--reference"), ("noisy.png", "the input")):
        code, _, err = run(capsys, "denoise", tmp_path / "noisy.png", "-o", tmp_path / out, "--overwrite",
                           "--reference", tmp_path / "clean.png", "--weights", random_weights, "--no-progress")
        assert code == 2 and f"{what} {tmp_path / out} is also the output" in err, err
    assert {n: (tmp_path / n).read_bytes() for n in before} == before


def test_reliability_empty_path_options(capsys, tmp_path: Path, monkeypatch) -> None:
    """An empty path (-o "$OUT" with OUT unset) was the current folder: denoise a.png -o "" --overwrite replaced a.png
    with its own output, visualize -o "" wrote into the current folder => refused by the parser (exit 2, the option
    named); nothing is written"""
    monkeypatch.chdir(tmp_path)
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    for argv, option in ((["denoise", "a.png", "-o", "", "--overwrite"], "-o/--output"),
                         (["add-noise", "a.png", "-o", " ", "--overwrite"], "-o/--output"),
                         (["visualize", "-o", ""], "-o/--out-dir"),  # (train --out-dir "": refused by its checks)
                         (["train", "--init-from", "", "--out-dir", "t"], "--init-from"),  # trained from scratch
                         (["parity", "--data-dir", ""], "--data-dir"), (["denoise", "", "-o", "b.png"], "input")):
        with pytest.raises(SystemExit) as caught:
            main(argv)
        assert caught.value.code == 2, argv
        assert f"argument {option}: an empty path" in capsys.readouterr().err, argv
    assert (tmp_path / "a.png").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def bomb_png(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
                     + chunk(b"IEND", b""))
    return path


def test_reliability_max_pixels_refuses_a_huge_photo_up_front(capsys, random_weights, tmp_path: Path) -> None:
    """denoise of a small PNG that declares 12000x12000 pixels, over --max-pixels (as input or as --reference) =>
    refused before decoding (exit 2, the file, its size, the limit and --max-pixels named); nothing written"""
    bomb = bomb_png(tmp_path / "bomb.png", 12000, 12000)  # 144 megapixels declared in a 200-byte file
    code, _, err = run(capsys, "denoise", bomb, "-o", tmp_path / "out.png", "--weights", random_weights,
                       "--max-pixels", "1e8", "--no-progress")
    assert code == 2
    assert "bomb.png" in err and "12000x12000" in err and "100,000,000" in err and "--max-pixels" in err
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png"]
    code, _, err = run(capsys, "denoise", bomb, "-o", tmp_path / "out.png", "--weights", random_weights,
                       "--reference", bomb, "--max-pixels", "1e8")
    assert code == 2 and "bomb.png" in err and not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("value", ["0", "-5", "inf", "nan", "lots"])
def test_reliability_max_pixels_must_be_a_positive_number(capsys, tmp_path: Path, value: str) -> None:
    """denoise --max-pixels 0, -5, inf, nan or a word => refused by the parser (exit 2, the option named)"""
    with pytest.raises(SystemExit) as e:
        main(["denoise", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--max-pixels", value])
    assert e.value.code == 2 and "argument --max-pixels: " in capsys.readouterr().err


def test_the_commands_default_pixel_limit_is_the_runtimes() -> None:
    from moe_denoise.commands import denoise
    from runtime import images

    assert denoise.DEFAULT_MAX_PIXELS == images.DEFAULT_MAX_PIXELS


def test_the_commands_default_jpeg_quality_is_the_runtimes() -> None:
    from moe_denoise.cli import build_parser
    from runtime import images

    parser = build_parser()
    args = parser.parse_args(["denoise", "in.png", "-o", "out.png"])
    assert args.jpeg_quality is None  # not given: the writer takes images.JPEG_QUALITY, and the help says which
    denoise = next(a for a in parser._subparsers._group_actions[0].choices["denoise"]._actions
                   if a.dest == "jpeg_quality")
    assert f"default {images.JPEG_QUALITY} " in denoise.help
