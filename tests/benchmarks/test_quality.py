"""Whole-photo quality across noise levels (benchmarks.quality) and the PSNR-against-sigma plot.

The photos are crops of scikit-image's samples (64x48) so that a test takes seconds; the code path is the one the
full photos take (runtime.tiling.denoise_array, gray and colour)."""
import importlib.util
import math

import numpy as np
import pytest

pytest.importorskip("skimage", reason="scikit-image is not installed (pip install 'moe-denoise[eval]'); the photo "
                                      "evaluation loads its sample photos")

from benchmarks import quality
from moe_model.baselines import bm3d_available
from moe_model.checkpoint import load_model
from moe_model.evaluate import BM3D, NOISY

CROP = (slice(200, 248), slice(200, 264))


def identity(batch):
    return batch


@pytest.fixture
def small_photos(monkeypatch):
    full = quality.load_photo
    monkeypatch.setattr(quality, "load_photo", lambda name: full(name)[CROP])


def test_load_photo_kinds_and_errors():
    cam, ast = quality.load_photo("camera"), quality.load_photo("astronaut")
    assert cam.shape == (512, 512) and ast.shape == (512, 512, 3)
    assert cam.dtype == np.float32 and 0 <= cam.min() and cam.max() <= 1
    with pytest.raises(ValueError, match="unknown photo 'nope'"):
        quality.load_photo("nope")
    with pytest.raises(ValueError, match="8-bit gray"):
        quality.load_photo("binary_blobs")  # a sample, but not a photo


def test_a_photo_that_cannot_be_loaded_is_refused_before_any_work(monkeypatch):
    """--photos camera eagle scored camera, then failed on eagle (a sample skimage downloads with pooch) with a
    traceback; file_hash (no sample, needs an argument) and duplicates were no clearer."""
    import skimage.data

    def needs_download():
        raise ModuleNotFoundError("The requested file ... requires the installation of an optional dependency, pooch")

    monkeypatch.setattr(skimage.data, "eagle", needs_download)
    scored = []
    fn = lambda batch: scored.append(len(batch)) or batch  # noqa: E731
    with pytest.raises(ValueError, match=r"skimage.data.eagle\(\) could not be loaded \(ModuleNotFoundError: .*pooch"):
        quality.evaluate_photos({"identity": fn}, ("camera", "eagle"), (25,), bm3d_names=())
    assert scored == []  # nothing was denoised before the refusal
    for name in ("file_hash", "download_all"):
        with pytest.raises(ValueError, match=f"unknown photo '{name}'"):
            quality.load_photo(name)
    with pytest.raises(ValueError, match=r"photos \['camera'\] are named more than once"):
        quality.evaluate_photos({"identity": fn}, ("camera", "moon", "camera"), (25,), bm3d_names=())
    assert scored == []


def test_noise_draw_is_fixed_per_photo_and_seed():
    a = quality.noise_draw("camera", (8, 8), 0)
    np.testing.assert_array_equal(a, quality.noise_draw("camera", (8, 8), 0))
    assert not np.array_equal(a, quality.noise_draw("moon", (8, 8), 0))
    assert not np.array_equal(a, quality.noise_draw("camera", (8, 8), 1))


def test_photo_report_every_level_and_method(small_photos, random_weights):
    models = {"identity": identity, "random": load_model(random_weights)}
    r = quality.evaluate_photos(models, ("chelsea", "camera"), (0, 25), bm3d_names=())
    assert r["methods"] == [NOISY, quality.BLUR, "identity", "random"]
    assert r["photos"]["camera"]["kind"] == "gray" and r["photos"]["chelsea"]["kind"] == "colour"
    assert r["photos"]["camera"]["size"] == [64, 48]
    for name in ("chelsea", "camera"):
        rows = r["photos"][name]["rows"]
        assert set(rows) == {"0", "25"}
        assert rows["0"][NOISY]["psnr"] == np.inf and rows["0"]["identity"]["psnr"] > 60  # clean in, clean out
        assert rows["25"]["identity"]["psnr"] == pytest.approx(rows["25"][NOISY]["psnr"], abs=0.01)
        assert rows["25"][quality.BLUR]["psnr"] > rows["25"][NOISY]["psnr"]
        assert np.isfinite(rows["25"]["random"]["psnr"]) and 0 < rows["25"]["random"]["ssim"] <= 1
    noisy_25 = r["photos"]["chelsea"]["rows"]["25"][NOISY]["psnr"]
    assert noisy_25 == pytest.approx(20 * np.log10(255 / 25), abs=0.5)  # clipping nudges it up a little
    t = r["target_level"]  # camera at sigma 0.2, scored for the target against the best blur
    assert t["photo"] == "camera" and t["sigma"] == 0.2
    assert t["rows"][quality.BLUR]["psnr"] > t["rows"][NOISY]["psnr"] + 3
    targets = {(x["weights"], x["target"].split(" ")[0]): x for x in quality.check_photo_targets(r)}
    assert not targets[("identity", "camera")]["met"]  # the identity does not beat a blur
    assert targets[("identity", "clean")]["met"] and targets[("identity", "clean")]["where"] == "chelsea sigma 0"
    assert not targets[("random", "clean")]["met"]
    text = quality.format_photo_table(r, quality.check_photo_targets(r))
    for s in ("chelsea (colour, 64x48) PSNR", "camera (gray, 64x48) SSIM", "camera at sigma 0.2", "targets",
              "blur width"):
        assert s in text, s
    # a * marks a best width at the grid's edge, and every * is explained (at sigma 0 alone it was not)
    assert "0.3*" in text and r["photos"]["camera"]["rows"]["0"][quality.BLUR]["blur_sigma"] == 0.3
    edge_above_0 = any(p["rows"]["25"][quality.BLUR]["at_grid_edge"] for p in r["photos"].values())
    assert ("* best blur width at the edge of the grid: at sigma > 0" in text) == edge_above_0
    assert edge_above_0 or "* best blur width at the edge of the grid: at sigma 0 the narrowest" in text


def test_guarded_rows_score_what_the_denoise_command_gives(small_photos, random_weights, monkeypatch):
    """With guard=True every model gets a '+ guard' row: the clean-input guard's blend of the same output, so a
    clean photo comes back (almost) as it was even from random weights, and heavy noise is left to the model.

    The row's time is the denoising it shares with the model's row plus the guard's own: timed with a clock that
    moves 1 s a reading, so every timed span is 1 s, the model's row gets 1 s a level and the guarded row 2 s."""
    import itertools
    import types

    ticks = itertools.count()
    monkeypatch.setattr(quality, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    model = load_model(random_weights)
    r = quality.evaluate_photos({"random": model}, ("chelsea",), (0, 75), bm3d_names=(), guard=True)
    assert r["methods"] == [NOISY, quality.BLUR, "random", quality.guarded_label("random")]
    rows = r["photos"]["chelsea"]["rows"]
    clean_raw, clean_guarded = rows["0"]["random"], rows["0"]["random + guard"]
    assert clean_guarded["input_weight"] > 0.9 and clean_guarded["psnr"] > clean_raw["psnr"] + 10
    assert rows["75"]["random + guard"]["input_weight"] == 0.0
    assert rows["75"]["random + guard"]["psnr"] == rows["75"]["random"]["psnr"]
    assert r["seconds"] == {"random": 2 * 1.0, "random + guard": 2 * (1.0 + 1.0)}  # two levels
    photo = quality.load_photo("chelsea")
    from runtime.tiling import denoise_array  # the blend the row scores is denoise_array's own
    out = np.clip(denoise_array(photo, quality.model_tile_fn(model)), 0, 1)
    assert quality.psnr(out, photo) == pytest.approx(clean_guarded["psnr"], abs=1e-3)


def test_gray_noise_is_one_draw_and_the_gray_path_is_taken(small_photos):
    seen = []

    def spy(batch):
        seen.append(batch)
        return batch

    r = quality.evaluate_photos({"spy": spy}, ("camera",), (25,), bm3d_names=())
    batch = np.concatenate(seen)
    np.testing.assert_array_equal(batch[:, 0], batch[:, 1])  # gray: three equal channels, noise included
    np.testing.assert_array_equal(batch[:, 0], batch[:, 2])
    assert r["photos"]["camera"]["rows"]["25"]["spy"]["psnr"] < 25


@pytest.mark.skipif(not bm3d_available(), reason="the 'bm3d' package is not installed (pip install "
                                                 "'moe-denoise[eval]')")
def test_bm3d_on_the_named_photos_only(small_photos):
    r = quality.evaluate_photos({"identity": identity}, ("camera", "chelsea"), (25,), bm3d_names=("camera",))
    cam, chel = r["photos"]["camera"], r["photos"]["chelsea"]
    assert cam["bm3d"] and not chel["bm3d"] and BM3D not in chel["rows"]["25"]
    assert cam["rows"]["25"][BM3D]["psnr"] > cam["rows"]["25"][NOISY]["psnr"] + 3
    assert BM3D in r["target_level"]["rows"] and r["seconds"][BM3D] > 0


def test_photo_arguments_are_checked():
    with pytest.raises(ValueError, match="not among the photos"):
        quality.evaluate_photos({"identity": identity}, ("camera",), (25,), bm3d_names=("moon",))
    with pytest.raises(ValueError, match="reference rows"):
        quality.evaluate_photos({NOISY: identity}, ("camera",), (25,), bm3d_names=())


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed (pip install 'moe-denoise[plot]'); no plot to draw")
def test_plot_draws_cifar_and_photo_panels(small_photos, fake_cifar, random_weights):
    from moe_model.data import load_cifar10, to_float
    from moe_model.evaluate import evaluate_across_sigmas

    photos = quality.evaluate_photos({"identity": identity}, ("camera",), (0, 25), bm3d_names=())
    cifar = evaluate_across_sigmas({"random": load_model(random_weights)},
                                   to_float(load_cifar10(fake_cifar, "test")[:2]), (0, 25), with_ssim=False)
    png = quality.render_plot(cifar, photos)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert quality.render_plot(None, photos)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="nothing to plot"):
        quality.render_plot(None, None)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib is not installed (pip install 'moe-denoise[plot]'); no plot to draw")
def test_plot_titles_name_the_split_evaluated(monkeypatch, fake_cifar, random_weights):
    """Every CIFAR-10 panel was titled 'CIFAR-10 test', whatever --split was."""
    from matplotlib.axes import Axes

    from moe_model.data import load_cifar10, to_float
    from moe_model.evaluate import evaluate_across_sigmas

    titles = []
    real = Axes.set_title
    monkeypatch.setattr(Axes, "set_title", lambda ax, title, *a, **k: (titles.append(title), real(ax, title, *a, **k))[1])
    cifar = evaluate_across_sigmas({"random": load_model(random_weights)},
                                   to_float(load_cifar10(fake_cifar, "val")[:2]), (0, 25), with_ssim=False)
    cifar["split"] = "val"  # as evaluate's report records it
    quality.render_plot(cifar, None)
    assert titles and all(t.startswith("CIFAR-10 val, 2 images") for t in titles)


def test_an_output_identical_to_the_clean_photo_is_drawn_at_the_top():
    """A model row with an infinite PSNR (the guard returned a clean photo exactly) was left out of the plot, where
    the docs promise it at the top with a triangle; the noisy input's infinity at sigma 0 stays out."""
    rows = {"0": {NOISY: {"psnr": math.inf}, "m": {"psnr": math.inf}, "j": {"psnr": None}},
            "25": {NOISY: {"psnr": 20.0}, "m": {"psnr": 30.0}, "j": {"psnr": 31.0}}}
    assert quality._curve(rows, (0, 25), NOISY, nested=False) == ([25.0], [20.0])
    assert quality._curve(rows, (0, 25), "m", nested=False) == ([0.0, 25.0], [math.inf, 30.0])
    assert quality._curve(rows, (0, 25), "j", nested=False) == ([0.0, 25.0], [math.inf, 31.0])  # from the JSON
