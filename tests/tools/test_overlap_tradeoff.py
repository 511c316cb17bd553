"""tools.overlap_tradeoff: each overlap is scored against the clean photo and compared with the default (16); the
timing itself is a benchmark (benchmarks/results/photos/overlap_tradeoff.txt)."""
import re

import pytest

from tools import overlap_tradeoff


def test_overlaps_are_scored_and_compared_with_the_default(capsys):
    pytest.importorskip("skimage.data", reason="the photos are scikit-image's sample photos (eval extra)")
    assert overlap_tradeoff.main(["--photos", "camera", "--sigmas", "25", "--overlaps", "8", "16"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"camera +25 \| +([\d.]+) \| +([\d.]+) \| +([\d.]+)", out)
    assert row, out
    noisy, at8, at16 = map(float, row.groups())
    assert noisy < 21 and at8 > noisy + 5 and at16 > noisy + 5  # sigma 25/255 is about 20.6 dB; both denoise
    assert "overlap 16: PSNR +0.00 dB on average" in out
    tiles = dict(map(int, m) for m in re.findall(r"overlap +(\d+): .*1000x1000 photo: (\d+)", out))
    assert tiles == {8: 42 * 42, 16: 64 * 64}  # stride 24 and 16 over 1000 pixels and the padding on both sides


def test_the_first_timed_call_is_not_the_processes_first(monkeypatch, capsys):
    """The process's first denoise (allocations, the thread pool starting) was charged to the first overlap of the
    first photo in every run: one untimed call now comes before the first clock reading."""
    pytest.importorskip("skimage.data", reason="the photos are scikit-image's sample photos (eval extra)")
    import time
    import types

    import benchmarks.quality
    import runtime

    events = []
    real_call = runtime.denoise_array
    monkeypatch.setattr(runtime, "denoise_array", lambda *a, **k: (events.append("call"), real_call(*a, **k))[1])
    monkeypatch.setattr(overlap_tradeoff, "time", types.SimpleNamespace(
        perf_counter=lambda: (events.append("clock"), time.perf_counter())[1]))
    full = benchmarks.quality.load_photo
    monkeypatch.setattr(benchmarks.quality, "load_photo", lambda name: full(name)[:40, :40])
    assert overlap_tradeoff.main(["--photos", "camera", "--sigmas", "25", "--overlaps", "8"]) == 0
    assert events[:3] == ["call", "clock", "call"]
