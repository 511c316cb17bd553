"""tools.batch_vs_loop: one command for a folder and one command per photo write the same bytes (the timing itself
is a benchmark, run by hand: docs/benchmarks.md)."""
import pytest

from tools import batch_vs_loop


def test_batch_and_loop_write_the_same_photos(tmp_path, capsys):
    pytest.importorskip("skimage.data", reason="the photo set is made from scikit-image's sample photos (eval extra)")
    assert batch_vs_loop.main(["--runs", "0", "--work", str(tmp_path), "--photos", "coins", "page"]) == 0
    out = capsys.readouterr().out
    assert "2 photos" in out and "outputs byte-identical: True" in out and "no timed runs" in out
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["coins.png", "page.png"]
