"""tools.tile_batch_ab: two batch sizes write the same bytes, and the report has each size's time and memory (the
timing itself is a benchmark, run by hand: docs/benchmarks.md)."""
import pytest

from tools import tile_batch_ab


def test_two_batch_sizes_write_the_same_photo_and_are_reported(tmp_path, capsys):
    pytest.importorskip("skimage.data", reason="the photo is made from scikit-image's astronaut (eval extra)")
    assert tile_batch_ab.main(["--runs", "1", "--sizes", "8", "64", "--backends", "torch", "--width", "96",
                               "--height", "64", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "photo: 96x64 RGB" in out and "torch: outputs byte-identical: True" in out
    assert "batch    8: wall median" in out and "batch   64: wall median" in out and "MiB" in out
    assert "A / B wall, pair by pair: median" in out


def test_a_failing_command_is_reported_with_its_error(tmp_path, monkeypatch, capsys):
    pytest.importorskip("skimage.data", reason="the photo is made from scikit-image's astronaut (eval extra)")
    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path / "empty"))  # no exported model for --backend ort
    argv = ["--runs", "0", "--sizes", "8", "64", "--backends", "torch", "ort", "--width", "40", "--height", "40",
            "--work", str(tmp_path / "work")]
    with pytest.raises(SystemExit):  # said before the torch runs, which it lost when found after them
        tile_batch_ab.main(argv)
    assert "run 'moe-denoise export' first" in capsys.readouterr().err and not (tmp_path / "work").exists()
    model = tmp_path / "empty" / "artifacts" / "moe_denoiser.portable.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not a model")  # and without its manifest: the denoise command refuses it
    with pytest.raises(SystemExit, match=r"failed \(exit 2\):\n.*manifest"):
        tile_batch_ab.main(argv[:6] + argv[7:])  # ort alone
