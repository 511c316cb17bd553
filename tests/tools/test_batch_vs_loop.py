"""tools.batch_vs_loop: one command for a folder and one command per photo write the same bytes (the timing itself
is a benchmark, run by hand: docs/benchmarks.md)."""
import shutil
from pathlib import Path

import pytest

from tools import batch_vs_loop


def test_batch_and_loop_write_the_same_photos(tmp_path, capsys):
    pytest.importorskip("skimage.data", reason="the photo set is made from scikit-image's sample photos (eval extra)")
    assert batch_vs_loop.main(["--runs", "0", "--work", str(tmp_path), "--photos", "coins", "page"]) == 0
    out = capsys.readouterr().out
    assert "2 photos" in out and "outputs byte-identical: True" in out and "no timed runs" in out
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["coins.png", "page.png"]


def copying_run_timed(commands):
    """ab_timing.run_timed with `moe-denoise denoise IN... -o OUT` done by copying: each IN a photo or every file of
    a folder (as the real command does), so what each way was given shows in what it wrote."""
    for argv in commands:
        at = argv.index("-o")
        sources, out = [Path(a) for a in argv[2:at]], Path(argv[at + 1])
        for source in sources:
            for f in (source.iterdir() if source.is_dir() else [source]):
                shutil.copy(f, out / f.name if out.is_dir() else out)
    return 1.0, 1.0


def test_the_batch_way_denoises_only_the_photos_listed(tmp_path, capsys, monkeypatch):
    pytest.importorskip("skimage.data", reason="the photo set is made from scikit-image's sample photos (eval extra)")
    monkeypatch.setattr(batch_vs_loop, "run_timed", copying_run_timed)
    assert batch_vs_loop.main(["--runs", "0", "--work", str(tmp_path), "--photos", "coins"]) == 0
    assert batch_vs_loop.main(["--runs", "0", "--work", str(tmp_path), "--photos", "camera"]) == 0
    assert "1 photos, 0.26 megapixels" in capsys.readouterr().out.splitlines()[-2]
    # coins.png, left in photos/ by the first run, was denoised by the batch way alone; it is left there, not
    # deleted with the folder (under --work ~ that was a user's own photos/)
    assert [p.name for p in (tmp_path / "batch").iterdir()] == ["camera.png"]
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["camera.png", "coins.png"]


@pytest.mark.parametrize("argv, said", [
    (["--runs", "-1"], "expected a number of runs >= 0, got '-1'"),
    (["--photos", "coins", "nosuch"], "scikit-image has no sample photo 'nosuch'"),
    (["--photos", "coins", "coins"], "coins given twice"),
])
def test_bad_options_are_refused_before_any_photo_is_made(tmp_path, capsys, argv, said):
    pytest.importorskip("skimage.data", reason="the photo set is made from scikit-image's sample photos (eval extra)")
    with pytest.raises(SystemExit) as e:
        batch_vs_loop.main([*argv, "--work", str(tmp_path / "work")])
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_a_file_as_work_folder_is_refused(tmp_path, capsys):
    pytest.importorskip("skimage.data", reason="the photo set is made from scikit-image's sample photos (eval extra)")
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        batch_vs_loop.main(["--runs", "0", "--photos", "coins", "--work", str(tmp_path / "f")])
    assert "--work: cannot write to the folder" in capsys.readouterr().err
