"""The clean-input guard (runtime.guard): its noise estimate, its SURE weight against the oracle weight, its gate,
and how the tiler, the photo files and the command line apply it."""
import dataclasses
import json

import numpy as np
import pytest

from moe_base.errors import InputError
from moe_denoise.cli import main
from runtime.guard import (
    GUARD_MAX_SIGMA,
    MAD_TO_SIGMA,
    NOISE_BLOCK,
    NOISE_QUANTILE,
    chi2_mean_quantile,
    diagonal_details,
    estimate_noise_profile,
    estimate_sigma,
    guard_notes,
    guard_weight,
    impulse_share,
    lower_line,
    sample_windows,
    sure_input_weight,
)
from runtime.tiling import denoise_array, denoise_bands, guard_for_array

gaussian_filter = pytest.importorskip("scipy.ndimage", reason="the guard's tests blur with scipy: pip install -e "
                                      "'.[test]'").gaussian_filter


def texture(h=128, w=160, seed=0, detail=3.0) -> np.ndarray:
    """A random texture in [0.2, 0.8] (no noise of its own), finer for a smaller ``detail``."""
    field = gaussian_filter(np.random.default_rng(seed).standard_normal((h, w)), detail)
    return (0.5 + 0.3 * field / np.abs(field).max()).astype(np.float32)


def blur_fn(width):
    """A linear tile denoiser: Gaussian blur of every channel (its divergence is known to SURE's estimate)."""
    def fn(batch):
        return gaussian_filter(batch, (0, 0, width, width), mode="nearest").astype(np.float32)
    return fn


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.06])
def test_estimate_sigma_on_known_noise(sigma):
    flat = np.full((256, 256), 0.5, np.float32)
    noisy = flat + sigma * np.random.default_rng(1).standard_normal(flat.shape).astype(np.float32)
    assert estimate_sigma(noisy) == pytest.approx(sigma, rel=0.06)
    assert estimate_sigma(np.repeat(noisy[:, :, None], 3, axis=2)) == pytest.approx(sigma, rel=0.06)


def test_the_quiet_block_quantile_is_calibrated_on_pure_noise():
    dof = NOISE_BLOCK * NOISE_BLOCK
    draws = (np.random.default_rng(3).standard_normal((200_000, dof)) ** 2).mean(axis=1)
    assert chi2_mean_quantile(dof) == pytest.approx(np.quantile(draws, NOISE_QUANTILE), rel=0.01)
    rng = np.random.default_rng(4)
    colour = 0.5 + 0.02 * rng.standard_normal((256, 256, 3))  # independent noise per channel
    assert estimate_sigma(colour) == pytest.approx(0.02, rel=0.04)
    gray_as_rgb = np.repeat(colour[:, :, :1], 3, axis=2)  # one noise draw in three channels: the same estimate
    assert estimate_sigma(gray_as_rgb) == pytest.approx(estimate_sigma(colour[:, :, 0]), rel=0.02)


def test_texture_does_not_read_as_noise():
    """Half the photo finely textured (as grass or hair), half smooth: the median of |HH| takes the texture for
    noise, the quiet blocks do not."""
    rng = np.random.default_rng(6)
    clean = texture(256, 256, seed=2, detail=3.0)
    clean[:, :128] = 0.5 + 0.25 * np.tanh(3 * gaussian_filter(rng.standard_normal((256, 128)), 0.7))
    noisy = clean + 0.02 * rng.standard_normal(clean.shape)
    mad_rule = float(np.median(diagonal_details(noisy)) / MAD_TO_SIGMA)
    assert mad_rule > 0.025  # the rule used before this estimate: 25% too high or worse
    assert estimate_sigma(noisy) == pytest.approx(0.02, rel=0.06)


def test_a_drawn_gradient_does_not_read_as_a_clean_photo():
    """A noisy photo on a drawn left-to-right gradient (8-bit, three quarters of the image): the gradient's
    diagonal details are 0, so the median rule reads the whole as noise-free and the guard would hand back the
    noisy photo; blocks mostly at 0 are left out of the estimate."""
    canvas = np.tile(np.linspace(0.1, 0.9, 256, dtype=np.float32), (1024, 4))
    photo = texture(512, 512, seed=3) + 0.04 * np.random.default_rng(10).standard_normal((512, 512))
    canvas[256:768, 256:768] = np.clip(photo, 0, 1)
    canvas = np.round(canvas * 255) / 255
    assert float(np.median(diagonal_details(canvas)) / MAD_TO_SIGMA) < 0.01
    assert estimate_sigma(canvas) == pytest.approx(0.04, rel=0.1)


@pytest.mark.parametrize("canvas", [0.0, 1.0])
def test_a_noisy_photo_beside_a_clean_white_or_black_area_reads_its_noise(canvas: float):
    """A small noisy photo on a clean pure-white (or black) canvas, or under a blown sky (a camera clips after its
    noise, so the sky is flat at 1): the canvas's flat blocks, counted as 0, outnumbered the photo's and it read as
    noise-free (the guard gave back the noisy input: up to 4.9 dB lost) => the canvas counts only for a drawing on
    it (lines, letters along it), and the photo's noise is read"""
    photo = texture(48, 48, seed=5)  # too few 16x16 blocks of it for the quiet-block estimate: the median rule
    noisy_photo = np.clip(photo + 10 / 255 * np.random.default_rng(2).standard_normal(photo.shape), 0, 1)
    image = np.full((112, 112), canvas, np.float32)
    image[32:80, 32:80] = noisy_photo
    assert estimate_sigma(image) == pytest.approx(10 / 255, rel=0.25)
    scene = texture(64, 64, seed=6)
    scene[:28] = 1.3  # a sky brighter than the sensor takes
    blown = np.clip(scene + 10 / 255 * np.random.default_rng(3).standard_normal((64, 64)), 0, 1).astype(np.float32)
    assert (blown == 1).mean() > 0.4 and estimate_sigma(blown) == pytest.approx(10 / 255, rel=0.25)


def test_a_small_image_falls_back_to_the_median_rule():
    noisy = 0.5 + 0.05 * np.random.default_rng(9).standard_normal((40, 40))  # 20x20 coefficients: one block
    assert estimate_sigma(noisy) == pytest.approx(0.05, rel=0.15)
    assert estimate_sigma(noisy) == pytest.approx(float(np.median(diagonal_details(noisy)) / MAD_TO_SIGMA))


def test_estimate_sigma_clean_and_saturated():
    assert estimate_sigma(texture()) < 0.002  # a smooth clean image: (almost) no noise found
    assert estimate_sigma(np.ones((16, 16), np.float32)) == 0.0  # flat at 1 (or 0): noise-free, as flat at 0.5 is
    with pytest.raises(ValueError, match="at least 2x2"):
        estimate_sigma(np.zeros((1, 9), np.float32))


@pytest.mark.parametrize("detail, sigma, width", [(1.0, 0.005, 2.0), (1.0, 0.02, 1.0), (1.0, 0.03, 1.0),
                                                  (1.5, 0.03, 1.0)])
def test_sure_weight_matches_the_oracle_weight(detail, sigma, width):
    """For a linear denoiser (a blur) that takes away fine texture, the SURE weight, which never sees the clean
    image, is the weight that minimises the true error computed with the clean image (oracle weights 0.98, 0.54,
    0.32, 0.15 here; leaving the divergence out would give 0.98, 0.45, 0.18, 0)."""
    clean = texture(256, 256, seed=2, detail=detail)
    x = clean + sigma * np.random.default_rng(3).standard_normal(clean.shape)
    f = lambda im: gaussian_filter(im, width, mode="nearest")  # noqa: E731
    fx = f(x)
    probe = np.random.default_rng(4).choice([-1.0, 1.0], size=x.shape)
    eps = 0.1 * sigma
    a = sure_input_weight(x, fx, f(x + eps * probe), probe, eps, sigma)
    grid = np.linspace(0, 1, 201)
    errors = [np.mean((g * x + (1 - g) * fx - clean) ** 2) for g in grid]
    oracle = grid[int(np.argmin(errors))]
    assert abs(a - oracle) < 0.03, (a, oracle)
    assert np.mean((a * x + (1 - a) * fx - clean) ** 2) <= 1.02 * min(errors)


def brightness_dependent_noise(seed=11):
    """A photo-like image over brightness 0.15-0.85 (texture on a ramp) with noise that grows with brightness, as a
    camera's shot noise does: std sqrt(0.0006 x + 0.00002), 0.0105 at 0.15 and 0.023 at 0.85 (a separate draw from
    the texture's). Returns (clean, noisy, std per pixel)."""
    ramp = np.linspace(0.15, 0.85, 512, dtype=np.float32)[None, :]
    clean = np.clip(ramp + 0.5 * (texture(512, 512, seed=seed, detail=2.0) - 0.5), 0, 1)
    std = np.sqrt(0.0006 * clean + 0.00002)
    noisy = np.clip(clean + std * np.random.default_rng(seed + 1000).standard_normal(clean.shape), 0, 1)
    return clean, noisy.astype(np.float32), std


def test_noise_that_grows_with_brightness_is_profiled():
    clean, noisy, std = brightness_dependent_noise()
    profile = estimate_noise_profile([noisy])
    assert len(profile.levels) > 1
    for level in (0.25, 0.5, 0.75):
        assert profile.at(level) == pytest.approx(np.sqrt(0.0006 * level + 0.00002), rel=0.08), level
    assert estimate_sigma(noisy) == pytest.approx(float(np.sqrt(np.mean(std ** 2))), rel=0.05)


def test_the_guard_weight_follows_noise_that_varies_with_brightness():
    """SURE with each pixel's own variance gives the weight computed with the clean image (0.235 here); one level
    read from the quietest (darkest) blocks, as a single estimate would, gives far too much of the noisy input back
    (0.93)."""
    clean, noisy, std = brightness_dependent_noise()
    blur = blur_fn(2.0)
    denoised = denoise_array(noisy, blur, guard=False)
    grid = np.linspace(0, 1, 201)
    errors = [np.mean((g * noisy + (1 - g) * denoised - clean) ** 2) for g in grid]
    oracle = grid[int(np.argmin(errors))]
    decision = guard_for_array(noisy, blur)
    assert decision.applied and decision.sigma_range[1] > 1.5 * decision.sigma_range[0]
    assert abs(decision.input_weight - oracle) < 0.04, (decision.input_weight, oracle)
    darkest = guard_for_array(noisy, blur, sigma=float(std.min()))
    assert darkest.input_weight > oracle + 0.3


def test_lower_line_ignores_groups_lifted_by_texture():
    x = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    line = 1e-4 + 4e-4 * x
    lifted = line.copy()
    lifted[[1, 3]] *= 3  # two groups made only of textured blocks
    np.testing.assert_allclose(lower_line(x, lifted), line, rtol=1e-9)
    falling = 5e-4 - 4e-4 * x  # noise that falls with brightness is kept too
    np.testing.assert_allclose(lower_line(x, falling), falling, rtol=1e-9)
    dark_zero = lower_line(np.array([0.1, 0.2, 0.9]), np.array([1e-4, 0.0, 1e-4]))  # no variance below 0
    np.testing.assert_allclose(dark_zero, [0.0, 0.0, 1e-4], atol=1e-12)


def test_sure_weight_edge_cases():
    x = np.random.default_rng(0).random((8, 8))
    assert sure_input_weight(x, x, x, np.ones_like(x), 0.01, 0.02) == 0.0  # the denoiser returned its input
    flat = np.full((64, 64), 0.5)
    noise = 0.05 * np.random.default_rng(1).standard_normal(flat.shape)
    # a perfect denoiser of a flat image: all of the change is noise, no input is to be added back
    assert sure_input_weight(flat + noise, flat, flat, np.ones_like(flat), 0.005, 0.05) == pytest.approx(0.0, abs=0.05)


def test_the_look_for_jpeg_traces_is_made_only_under_the_gate():
    """The look at a lossless photo's pixels for JPEG's traces (0.1 to 0.6 s a photo) was made for every photo; it
    is deferred now, and made only when the noise read at one scale is under the gate: the reading at two scales is
    the higher at every brightness, so above the gate the guard stays out either way. Under it, the decision is the
    one the look's answer gives, its reason recorded."""
    rng = np.random.default_rng(5)
    image = texture()
    looks = []

    def look(answer):
        def deferred():
            looks.append(answer)
            return answer
        return deferred

    def decide(x, two_scales):
        return guard_weight(lambda a, b: x[a:b, :, None], *x.shape, lambda im: gaussian_filter(im, 1.0),
                            two_scales=two_scales)

    noisy = np.clip(image + 0.16 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)
    heavy = decide(noisy, look("why"))
    assert looks == [] and (heavy.applied, heavy.two_scales, heavy.two_scales_reason) == (False, False, None)
    assert heavy.sigma > GUARD_MAX_SIGMA
    light = np.clip(image + 0.01 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)
    read = decide(light, look("why"))
    assert looks == ["why"] and (read.applied, read.two_scales, read.two_scales_reason) == (True, True, "why")
    assert read == dataclasses.replace(decide(light, True), two_scales_reason="why")  # as told to read at two scales
    assert decide(light, look(None)) == decide(light, False) and looks == ["why", None]


def test_a_noisy_photo_file_is_not_looked_at_for_jpeg_traces(tmp_path, monkeypatch):
    """Through denoise_file: a noisy PNG (over the gate) is denoised without the look at its pixels for JPEG's
    traces, and a clean one is looked at (its guard decides under the gate)."""
    from PIL import Image

    import runtime.jpeg_traces as traces
    from runtime.photo import denoise_file

    looked = []
    monkeypatch.setattr(traces, "jpeg_quantised", lambda *a, **k: looked.append(1) or False)
    rng = np.random.default_rng(6)
    image = texture(96, 96)
    for name, std, expected in (("noisy", 0.16, []), ("clean", 0.0, [1])):
        pixels = np.clip(np.round((image + std * rng.standard_normal(image.shape)) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        looked.clear()
        report = denoise_file(tmp_path / f"{name}.png", tmp_path / f"{name}_out.png", blur_fn(1.0), progress=False)
        assert looked == expected and report["guard"]["applied"] == bool(expected), (name, report["guard"])


def test_the_gate_and_the_given_sigma():
    image = texture()
    calls = []

    def spy(im):
        calls.append(im.shape)
        return im

    above = guard_weight(lambda a, b: image[a:b, :, None], *image.shape, spy, sigma=GUARD_MAX_SIGMA * 1.5)
    assert (above.applied, above.input_weight, above.sigma_given, calls) == (False, 0.0, True, [])
    zero = guard_weight(lambda a, b: image[a:b, :, None], *image.shape, spy, sigma=0.0)
    assert (zero.applied, zero.input_weight, calls) == (True, 1.0, [])
    with pytest.raises(ValueError, match="sigma"):
        guard_weight(lambda a, b: image[a:b, :, None], *image.shape, spy, sigma=-0.1)
    with pytest.raises(ValueError, match=r"at most 1 \(got 25\): a level on the 0-255 scale is 25/255 = 0\.09804"):
        guard_weight(lambda a, b: image[a:b, :, None], *image.shape, spy, sigma=25.0)
    told = guard_weight(lambda a, b: image[a:b, :, None], *image.shape, spy, sigma=np.float32(0.0))  # numpy's too
    assert (told.applied, told.input_weight, calls) == (True, 1.0, [])
    one_wide = np.full((64, 1, 1), 0.5, np.float32)  # no 2x2 block: no estimate
    none = guard_weight(lambda a, b: one_wide[a:b], 64, 1, spy)
    assert (none.sigma, none.applied, none.input_weight) == (None, False, 0.0)


def test_sample_windows_bounded_and_inside():
    assert sample_windows(300, 400) == [(0, 0, 300, 400)]
    wins = sample_windows(3000, 5000)
    assert sum(h * w for _, _, h, w in wins) <= 1 << 18 and len(wins) == 16
    assert all(0 <= y and y + h <= 3000 and 0 <= x and x + w <= 5000 for y, x, h, w in wins)
    corners = {(y, x) for y, x, _, _ in wins}
    assert {(0, 0), (0, 5000 - 128), (3000 - 128, 0), (3000 - 128, 5000 - 128)} <= corners
    assert any(1000 <= y <= 2000 and 1500 <= x <= 3500 for y, x in corners)  # the middle is looked at too
    strip = sample_windows(100, 9000)  # a panorama strip: windows as tall as the image, spread along it
    assert all(y == 0 and h == 100 and w == 128 and x + w <= 9000 for y, x, h, w in strip)
    assert 2 <= len(strip) and sum(h * w for _, _, h, w in strip) <= 1 << 18 and strip[-1][1] == 9000 - 128


def test_flat_areas_do_not_read_as_a_clean_photo():
    """A noisy photo on a flat drawn background (three quarters of the image): the flat blocks are left out of
    the estimate, which then measures the photo's noise, so the guard does not hand back the noisy input."""
    canvas = np.full((1024, 1024), 0.5, np.float32)
    photo = texture(512, 512, seed=7) + 0.1 * np.random.default_rng(8).standard_normal((512, 512))
    canvas[256:768, 256:768] = np.clip(photo, 0, 1)
    canvas = np.round(canvas * 255) / 255  # as an 8-bit file holds it
    assert estimate_sigma(canvas) == pytest.approx(0.1, rel=0.1)
    decision = guard_for_array(canvas.astype(np.float32), blur_fn(1.0))
    assert decision.sigma == pytest.approx(0.1, rel=0.1) and not decision.applied and decision.input_weight == 0.0
    assert estimate_sigma(np.full((64, 64), 0.5, np.float32)) == 0.0  # all flat: noise-free, handed back


def test_clean_text_and_drawings_read_as_noise_free():
    """A clean page of text (few usable blocks: most are flat) fell back to the median rule over its non-flat 2x2
    blocks alone, its letters' edges, and read as 52.6/255 of noise: the guard gave the denoiser's output, its
    punctuation partly erased. Flat blocks count in the median rule (as 0); noise on the same page still reads."""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (320, 240), (250, 250, 250))
    draw = ImageDraw.Draw(page)
    for i in range(8):
        draw.text((10, 10 + 14 * i), f"Quarterly report line {i}: revenue up 12%", fill=(20, 20, 20))
    clean = np.asarray(page, np.float32) / 255
    assert estimate_sigma(clean) == 0.0
    decision = guard_for_array(clean, blur_fn(1.0))
    assert decision.applied and decision.input_weight == 1.0
    noisy = np.clip(clean + 10 / 255 * np.random.default_rng(3).standard_normal(clean.shape), 0, 1)
    present = float((noisy - clean).std())  # 7.6/255: the noise left after clipping at 1 (a third of the background)
    assert estimate_sigma(noisy.astype(np.float32)) == pytest.approx(present, rel=0.2)


@pytest.mark.parametrize("background, ink", [(255, 0), (0, 255)])
def test_reliability_clean_pages_in_pure_black_and_white_read_as_noise_free(background: int, ink: int):
    """A clean page of text drawn in pure black and white only: every block touches 0 or 1 and was left out of the
    estimate as clipped, so it gave no estimate at all, and denoise gave the denoiser's output: colons erased,
    letters gone gray => read as noise-free and given back as it is; noise on the same page still reads as noise"""
    from PIL import Image, ImageDraw

    page = Image.new("RGB", (320, 240), (background,) * 3)
    draw = ImageDraw.Draw(page)
    for i in range(8):
        draw.text((10, 10 + 14 * i), f"Quarterly report line {i}: revenue up 12%", fill=(ink,) * 3)
    clean = (np.asarray(page, np.float32) > 127).astype(np.float32)  # pure black and white (a fax, a bitmap font)
    assert estimate_sigma(clean) == 0.0
    np.testing.assert_array_equal(denoise_array(clean, blur_fn(1.0)), clean)
    noisy = np.clip(clean + 10 / 255 * np.random.default_rng(3).standard_normal(clean.shape), 0, 1)
    assert estimate_sigma(noisy.astype(np.float32)) > float((noisy - clean).std())  # 5.8/255 left after clipping


def test_noise_clipped_at_0_or_1_does_not_pull_the_estimate_below_the_noise_elsewhere():
    """A small noisy image with large areas at 1 and 0 (a line drawing, a product shot on white, a blown sky) beside
    detail: counting its blocks that touch 0 or 1, whose clipped noise reads at about half its level, took the
    estimate under the noise the image carries (14.4/255 for 16.8), and the guard blended the noisy input back in:
    a noisy line drawing lost 3 dB, a product shot 4 dB => those blocks count only where they are clean (mostly
    flat), and the estimate is at least the noise present"""
    rng = np.random.default_rng(4)
    clean = np.ones((64, 64), np.float32)  # 64x64: too few 16x16 blocks, the median rule
    clean[:, 32:] = 0.5 + 0.2 * np.tanh(3 * gaussian_filter(rng.standard_normal((64, 32)), 2))
    clean[:8] = 0.0
    assert estimate_sigma(clean) < 1.5 / 255  # clean: (almost) noise-free
    for level in (10, 20):
        noisy = np.clip(clean + level / 255 * np.random.default_rng(1).standard_normal(clean.shape), 0, 1)
        present = float((noisy - clean).std())
        assert present < estimate_sigma(noisy.astype(np.float32)) < level / 255 * 1.05


@pytest.mark.parametrize("level", [0.0, 1.0])
def test_a_flat_black_or_white_image_comes_back_as_it_is(level: float):
    """A flat 16-bit image at 0 (or 65535) got 'no noise estimate possible' and came back changed (up to 25 levels
    of 65535), where a flat gray one came back exact."""
    flat = np.full((24, 24, 3), level, np.float32)
    np.testing.assert_array_equal(denoise_array(flat, blur_fn(1.0)), flat)
    np.testing.assert_array_equal(denoise_array(flat, lambda batch: batch * 0.9 + 0.05), flat)


def test_guard_leaves_a_clean_photo_and_keeps_the_denoiser_on_a_noisy_one():
    clean = np.repeat(texture(96, 128)[:, :, None], 3, axis=2)
    blur = blur_fn(1.2)
    raw = denoise_array(clean, blur, guard=False)
    guarded = denoise_array(clean, blur)
    assert np.abs(guarded - clean).max() < 0.25 * np.abs(raw - clean).max()  # clean in: (almost) clean out
    noisy = np.clip(clean + 0.15 * np.random.default_rng(5).standard_normal(clean.shape), 0, 1).astype(np.float32)
    decision = guard_for_array(noisy, blur)
    assert not decision.applied and decision.input_weight == 0.0
    np.testing.assert_array_equal(denoise_array(noisy, blur), denoise_array(noisy, blur, guard=False))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_the_blend_is_the_same_for_every_band_size_and_alpha_is_copied(channels):
    rng = np.random.default_rng(6)
    image = rng.random((70, 90, channels)).astype(np.float32)
    blur = blur_fn(1.0)
    a = 0.3
    whole = denoise_array(image, blur, guard=False)
    expected = whole.copy()
    colour = slice(0, 1) if channels in (1, 2) else slice(0, 3)
    expected[:, :, colour] = (a * image[:, :, colour].astype(np.float64) + (1 - a) * whole[:, :, colour]).astype(
        np.float32)
    for band_rows in (7, 33, 200):
        out = np.empty_like(image)
        for y, band in denoise_bands(lambda p, q: image[p:q], 70, 90, channels, blur, band_rows=band_rows,
                                     input_weight=a):
            out[y:y + len(band)] = band
        np.testing.assert_array_equal(out, expected)
    if channels in (2, 4):
        np.testing.assert_array_equal(expected[:, :, -1], image[:, :, -1])
    with pytest.raises(ValueError, match="input_weight"):
        next(denoise_bands(lambda p, q: image[p:q], 70, 90, channels, blur, input_weight=1.5))


def test_denoise_command_reports_the_guard_and_takes_sigma(tmp_path, capsys, random_weights):
    from PIL import Image

    photo = tmp_path / "clean.png"
    Image.fromarray((texture(64, 80) * 255).round().astype(np.uint8)).save(photo)
    out = tmp_path / "out.png"
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["guard"]["applied"] and not report["guard"]["sigma_given"]
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--overwrite",
                 "--sigma", "0"]) == 0
    text = capsys.readouterr().out
    assert "noise 0.0/255 (given): output = 1.00 x input" in text
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(photo)))  # told: noise-free
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--overwrite",
                 "--no-guard", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["guard"] is None
    for argv in (["--sigma", "-0.1"], ["--sigma", "-0.02", "--server", "localhost:1"]):  # with --server too:
        with pytest.raises(SystemExit) as refused:  # refused here, by the option's parser, before any request
            main(["denoise", str(photo), "-o", str(out), "--overwrite", *argv])
        assert refused.value.code == 2 and "argument --sigma: expected the noise std" in capsys.readouterr().err


def test_the_report_line_says_when_the_noise_varies_with_brightness():
    from moe_denoise.commands.denoise import describe_guard

    varying = {"sigma": 7 / 255, "sigma_given": False, "applied": True, "input_weight": 0.25,
               "sigma_range": (3 / 255, 10 / 255)}
    assert "3.0 to 10.0/255 over the brightness range" in describe_guard(varying)
    assert "brightness" not in describe_guard({**varying, "sigma_range": (6.9 / 255, 7.1 / 255)})
    assert "brightness" not in describe_guard({**varying, "sigma_range": None, "sigma_given": True})


def test_a_guard_that_kept_most_of_the_input_names_the_options_that_denoise_it():
    """Noise the estimate misses (in one colour channel, in the darks, speckle) was handed back unchanged with the
    line alone, '1.00 x input': the line now names --sigma and --no-guard when the guard kept half or more of an
    estimated photo, and not when the level was given or the guard kept little."""
    from moe_denoise.commands.denoise import describe_guard

    kept = {"sigma": 0.5 / 255, "sigma_given": False, "applied": True, "input_weight": 0.98, "sigma_range": None}
    hint = " (still noisy? denoise it with --sigma LEVEL, e.g. --sigma 15/255, or with --no-guard)"
    assert describe_guard(kept).endswith("output = 0.98 x input + 0.02 x denoised" + hint)
    assert describe_guard({**kept, "input_weight": 0.5}).endswith(hint)
    assert "still noisy" not in describe_guard({**kept, "sigma_given": True})
    assert "still noisy" not in describe_guard({**kept, "input_weight": 0.3})
    assert "still noisy" not in describe_guard({**kept, "sigma": 25 / 255, "applied": False})
    assert "still noisy" not in describe_guard(kept, strength=0.0)  # the user chose to keep the input
    assert "still noisy" not in describe_guard({**kept, "impulse_share": 0.01})  # dots: --sigma cannot help, a note
    # names a median filter


def test_isolated_black_and_white_dots_are_counted_and_lines_are_not():
    """impulse_share counts the values at 0 or 1 whose 8 neighbours all differ by more than 0.3: salt and pepper
    dots; a 1-pixel line, a dot on a like background and the border are not such dots."""
    x = np.repeat(texture(64, 80)[:, :, None], 3, axis=2)
    assert impulse_share([x]) == 0.0
    dotted = x.copy()
    dotted[10, 10, 0], dotted[20, 30, 2], dotted[40, 50] = 1.0, 0.0, 1.0  # 1 + 1 + 3 values
    dotted[30, 5:60, 1] = 0.0  # a line: each pixel has two neighbours like it
    dotted[0, 40] = 1.0  # on the border: not counted
    assert impulse_share([dotted]) == 5 / (62 * 78 * 3)
    assert impulse_share([dotted[:, :, 0], np.zeros((2, 40))]) == 2 / (62 * 78)  # gray; too small to count


def test_reliability_salt_and_pepper_noise_gets_a_note_naming_a_median_filter(tmp_path, capsys, random_weights):
    """A photo with salt-and-pepper noise (dots at black and white) => a note saying the model does not remove
    them and a median filter does; the noise estimate leaves out blocks touching 0 or 1, read the photo as clean,
    and it came back with its dots and the guard's line alone"""
    from PIL import Image

    rng = np.random.default_rng(3)
    photo = np.repeat(texture(96, 96)[:, :, None], 3, axis=2)
    dots = rng.random(photo.shape[:2]) < 0.01
    photo[dots] = rng.integers(0, 2, (int(dots.sum()), 1)).astype(np.float32)
    Image.fromarray((photo * 255).round().astype(np.uint8)).save(tmp_path / "dots.png")
    Image.fromarray((texture(96, 96) * 255).round().astype(np.uint8)).save(tmp_path / "clean.png")
    for name, noted in (("dots.png", True), ("clean.png", False)):
        assert main(["denoise", str(tmp_path / name), "-o", str(tmp_path / f"out_{name}"), "--weights",
                     str(random_weights), "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        notes = [n for n in report["notes"] if "isolated black or white dots: salt-and-pepper noise, which" in n]
        assert bool(notes) == noted and report["guard"]["applied"], report
        assert not notes or ("a median filter does (e.g. magick in.png -median 3 out.png), or fine detail of the "
                             "picture (stars, dotted lines), which a median filter would erase") in notes[0]
    assert guard_notes({**report["guard"], "impulse_share": 0.01, "applied": False}) == []  # noise above the gate
    assert guard_notes(None) == [] and guard_notes({"applied": True}) == []  # no guard; a server without the count


def test_two_scales_read_the_noise_jpeg_took_the_finest_detail_of():
    """Noise that lost its finest detail (JPEG at quality 70) reads low at the finest scale; at two scales it reads
    near the noise's level. White noise reads the same either way."""
    import io

    from PIL import Image

    rng = np.random.default_rng(13)
    clean = texture(256, 256, seed=14, detail=4.0)
    noisy = np.clip(clean + 10 / 255 * rng.standard_normal(clean.shape), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(noisy * 255).astype(np.uint8)).save(buffer, "JPEG", quality=70)
    jpeg = np.asarray(Image.open(io.BytesIO(buffer.getvalue())), dtype=np.float32) / 255
    fine = estimate_noise_profile([jpeg]).rms([jpeg])
    both = estimate_noise_profile([jpeg], two_scales=True).rms([jpeg])
    assert fine < 0.6 * both and both == pytest.approx(8 / 255, rel=0.35)
    white = np.rint(noisy * 255).astype(np.float32) / 255
    assert estimate_noise_profile([white], two_scales=True).rms([white]) == pytest.approx(
        estimate_noise_profile([white]).rms([white]), rel=0.1)


def test_a_jpeg_file_or_a_jpeg_saved_as_png_is_guarded_at_two_scales(tmp_path, capsys, random_weights):
    """A JPEG file, and the same JPEG's pixels saved as PNG (cropped by 3 and 5 pixels), are read at two scales,
    each with its reason; the lossless original is read at one."""
    from PIL import Image

    pixels = np.rint(np.clip(texture(128, 128, seed=15) + 0.02 * np.random.default_rng(16).standard_normal(
        (128, 128)), 0, 1) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", quality=80)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    Image.open(tmp_path / "photo.jpg").crop((5, 3, 128, 128)).save(tmp_path / "was-jpeg.png")
    expected = {"photo.jpg": "the file is JPEG", "was-jpeg.png": "its pixels were JPEG-compressed before",
                "photo.png": None}
    for name, reason in expected.items():
        assert main(["denoise", str(tmp_path / name), "-o", str(tmp_path / f"out-{name}.png"), "--weights",
                     str(random_weights), "--no-progress", "--json"]) == 0
        guard = json.loads(capsys.readouterr().out)["guard"]
        assert guard["two_scales"] == (reason is not None), name
        assert (guard["two_scales_reason"] or "").startswith(reason or ""), name
    assert main(["denoise", str(tmp_path / "was-jpeg.png"), "-o", str(tmp_path / "out.png"), "--weights",
                 str(random_weights), "--no-progress"]) == 0
    assert "read at two scales, as its pixels were JPEG-compressed before" in capsys.readouterr().out


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_a_small_photo_is_denoised_once_for_the_guard_and_the_result(channels, tmp_path):
    """A photo the guard samples whole: its own f(x) is the result's denoising, so the tiles go through the model
    twice (f(x) and the probe), not three times, and the result is the one the separate decision gives."""
    from PIL import Image

    from runtime.images import read_image
    from runtime.photo import denoise_file
    from runtime.tiling import plan_tiles

    rng = np.random.default_rng(channels)
    image = np.repeat(texture(80, 96, seed=channels)[:, :, None], channels, axis=2)
    image[:, :, : 3 if channels >= 3 else 1] += 0.01 * rng.standard_normal((80, 96, 3 if channels >= 3 else 1))
    image = np.clip(image, 0, 1).astype(np.float32)
    calls = []
    blur = blur_fn(1.0)

    def counted(batch):
        calls.append(len(batch))
        return blur(batch)

    decision = guard_for_array(image, blur)
    assert decision.applied and 0 < decision.input_weight < 1
    once = denoise_array(image, counted)
    np.testing.assert_array_equal(once, denoise_array(image, blur, guard=decision))
    assert sum(calls) == 2 * plan_tiles(80, 96).count
    pixels = np.rint(image * 255).astype(np.uint8)  # the file path does the same
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode).save(tmp_path / "in.png")
    calls.clear()
    report = denoise_file(tmp_path / "in.png", tmp_path / "out.png", counted, progress=False)
    assert report["guard"]["applied"] and sum(calls) == 2 * plan_tiles(80, 96).count
    unit = read_image(tmp_path / "in.png")[0]
    expected = np.rint(np.clip(denoise_array(unit, blur), 0, 1) * 255)
    np.testing.assert_array_equal(np.rint(read_image(tmp_path / "out.png")[0] * 255), expected.reshape(
        read_image(tmp_path / "out.png")[0].shape))


def test_strength_keeps_that_share_of_the_change_from_the_input():
    """denoise_array(strength=s) = x + s (default output - x), with or without the guard; 0 gives x back, 1 the
    default output to the bit; out-of-range strengths are refused."""
    rng = np.random.default_rng(21)
    image = np.clip(texture(70, 90)[:, :, None] + 0.02 * rng.standard_normal((70, 90, 3)), 0, 1).astype(np.float32)
    blur = blur_fn(1.0)
    for guard in (True, False):
        full = denoise_array(image, blur, guard=guard)
        np.testing.assert_array_equal(denoise_array(image, blur, guard=guard, strength=1.0), full)
        np.testing.assert_array_equal(denoise_array(image, blur, guard=guard, strength=0.0), image)
        half = denoise_array(image, blur, guard=guard, strength=0.5)
        np.testing.assert_allclose(half, image + 0.5 * (full.astype(np.float64) - image), atol=2e-7)
        assert 0 < np.abs(half - image).max() < np.abs(full - image).max()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength is how much of the denoising to keep"):
            denoise_array(image, blur, strength=bad)


def test_denoise_command_takes_strength(tmp_path, capsys, random_weights):
    """--strength: the report says the blend; 0 writes the input's pixels back; out of range is refused (exit 2);
    --overlap with --server is refused before any photo of several (a request cannot carry it)"""
    from PIL import Image

    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(22)
    noisy = np.clip(texture(48, 64) + 0.15 * rng.standard_normal((48, 64)), 0, 1)
    Image.fromarray((noisy * 255).round().astype(np.uint8)).save(photo)
    out = tmp_path / "out.png"
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--strength", "0.25",
                 "--no-progress"]) == 0
    assert "strength 0.25: output = 0.75 x input + 0.25 x denoised" in capsys.readouterr().out
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--strength", "0",
                 "--overwrite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["strength"] == 0.0 and report["input_weight"] == 1.0
    assert main(["denoise", str(photo), "-o", str(out), "--weights", str(random_weights), "--strength=-0",
                 "--overwrite", "--no-progress"]) == 0
    assert "strength 0: output = 1.00 x input" in capsys.readouterr().out  # it said 'strength -0'
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(photo)))
    assert main(["denoise", str(photo), "-o", str(out), "--overwrite", "--strength", "2"]) == 2
    assert "--strength is how much of the denoising to keep" in capsys.readouterr().err
    assert main(["denoise", str(photo), str(photo), "-o", str(tmp_path / "many"), "--overlap", "8", "--server",
                 "localhost:1"]) == 2
    assert "cannot be sent with --server" in capsys.readouterr().err and not (tmp_path / "many").exists()
    assert main(["denoise", str(photo), "-o", str(tmp_path / "w.png"), "--weights", "sigma20", "--server",
                 "localhost:1"]) == 2  # the server's own weights would be used: refused, not ignored
    err = capsys.readouterr().err
    assert "--weights sigma20 cannot be sent with --server" in err and "moe-denoise serve --weights sigma20" in err
    # the server batches and denoises with its own settings: these were ignored in silence (the report said 64)
    assert main(["denoise", str(photo), "-o", str(tmp_path / "b.png"), "--batch-size", "7", "--server",
                 "localhost:1"]) == 2
    assert "--batch-size 7 cannot be sent with --server" in capsys.readouterr().err
    assert main(["denoise", str(photo), "-o", str(tmp_path / "t.png"), "--backend", "ort", "--threads", "1",
                 "--server", "localhost:1"]) == 2
    assert "--backend, --threads choose how a photo is denoised here" in capsys.readouterr().err
    assert main(["denoise", str(photo), "-o", str(tmp_path / "m.png"), "--max-pixels", "100", "--server",
                 "localhost:1"]) == 2  # the limit holds before a photo is read and sent (it was sent anyway)
    err = capsys.readouterr().err
    assert "--max-pixels" in err and "cannot reach" not in err
    assert main(["denoise", str(photo), "-o", str(tmp_path / "s.png"), "--no-guard", "--sigma", "0.05"]) == 2
    assert "--sigma 0.05 is read by the clean-input guard alone" in capsys.readouterr().err  # it was ignored
    for option in (["--check-local"], ["--timeout", "5"]):  # only --server reads them: they were ignored
        assert main(["denoise", str(photo), "-o", str(tmp_path / "c.png"), *option]) == 2
        assert f"{option[0]} applies to a photo sent to a server" in capsys.readouterr().err


def test_a_sigma_nobody_reads_is_refused_by_the_library_too(tmp_path):
    """``sigma`` is read by the guard alone: with the guard off, or a decision made already, the library ignored it
    (the command line and the server refused it; one check, runtime.guard.check_guard_sigma, now serves all)."""
    from PIL import Image

    from moe_base.errors import InputError
    from runtime.photo import denoise_file

    image = texture(32, 40)
    blur = blur_fn(1.0)
    with pytest.raises(InputError, match=r"sigma=0\.05 is read by the clean-input guard alone .* guard=False turns"):
        denoise_array(image, blur, guard=False, sigma=0.05)
    decision = guard_for_array(image, blur)
    with pytest.raises(InputError, match=r"guard= is a decision made already .* give the sigma to guard_for_array"):
        denoise_array(image, blur, guard=decision, sigma=0.05)
    with pytest.raises(InputError, match=r"sigma is the noise std on \[0, 1\] pixels, at most 1"):
        denoise_array(image, blur, guard=False, sigma=25)  # a bad level is named as bad first
    Image.fromarray((image * 255).astype(np.uint8)).save(tmp_path / "in.png")
    with pytest.raises(InputError, match=r"sigma=0\.05 is read by the clean-input guard alone"):
        denoise_file(tmp_path / "in.png", tmp_path / "out.png", blur, guard=False, sigma=0.05, progress=False)
    assert not (tmp_path / "out.png").exists()
    expected = decision.input_weight * image + (1 - decision.input_weight) * denoise_array(image, blur, guard=False)
    np.testing.assert_allclose(denoise_array(image, blur, guard=decision), expected, atol=1e-6)  # no sigma: as before


@pytest.mark.parametrize("image", [np.full((16, 16), 128, np.uint8), np.full((16, 16, 3), 200.0, np.float32),
                                   [np.zeros((8, 8), np.float32), np.full((8, 8), 65535, np.uint16)]])
def test_pixels_on_another_scale_are_refused_rather_than_estimated_as_none(image):
    """estimate_sigma of an 8-bit image gave None, as for a flat one: every value past 1 reads as saturated."""
    with pytest.raises(InputError, match=r"estimate_sigma takes float images on \[0, 1\] pixels; got .* / 255"):
        estimate_sigma(image)


def test_denoise_file_applies_a_decision_given_as_denoise_array_does(tmp_path):
    """denoise_file's check lets a GuardResult through (its message names one: 'a decision from guard_for_array');
    it was then taken as guard=True and a new decision made, the one given dropped without a word."""
    import dataclasses

    from PIL import Image

    from runtime.images import read_image
    from runtime.photo import denoise_file

    rng = np.random.default_rng(7)
    photo = np.clip(np.repeat(texture(64, 80)[:, :, None], 3, axis=2) + 0.15 * rng.standard_normal((64, 80, 3)), 0, 1)
    Image.fromarray(np.rint(photo * 255).astype(np.uint8)).save(tmp_path / "in.png")
    image, _ = read_image(tmp_path / "in.png")
    blur = blur_fn(1.2)
    decision = guard_for_array(image, blur)
    assert decision.input_weight == 0.0  # noisy: the guard's own decision keeps the denoiser
    keep_input = dataclasses.replace(decision, input_weight=1.0)
    np.testing.assert_array_equal(denoise_array(image, blur, guard=keep_input), image)
    report = denoise_file(tmp_path / "in.png", tmp_path / "out.png", blur, guard=keep_input, progress=False)
    assert report["input_weight"] == 1.0 and report["guard"] == keep_input.as_dict()
    np.testing.assert_array_equal(read_image(tmp_path / "out.png")[0], image)


def test_a_denoised_image_that_overshoots_is_taken_as_the_guards_f_of_x():
    """guard_for_array(denoised=) asks for denoise_array's output, which is not clipped; it was checked as an image in
    [0, 1], so a denoiser that overshoots had its own output refused ('expected [0, 1]'). A wrong shape ended in a
    numpy broadcast error inside SURE's estimate."""
    image = texture(48, 56)
    noisy = np.clip(image + 0.03 * np.random.default_rng(5).standard_normal(image.shape), 0, 1).astype(np.float32)

    def overshoots(batch):
        return (2 * gaussian_filter(batch, (0, 0, 1.0, 1.0), mode="nearest") - 0.5).astype(np.float32)

    den = denoise_array(noisy, overshoots, guard=False)
    assert den.min() < 0 or den.max() > 1
    assert guard_for_array(noisy, overshoots, denoised=den) == guard_for_array(noisy, overshoots)
    with pytest.raises(InputError, match=r"denoised= must be the image's denoise_array.*float32 \(48, 56, 1\); got "
                                         r"float32 \(48, 55, 1\)"):
        guard_for_array(noisy, overshoots, denoised=den[:, :55])
    with pytest.raises(InputError, match="denoised= has NaN"):
        guard_for_array(noisy, overshoots, denoised=np.full_like(den, np.nan))


def test_the_report_line_never_reads_the_gate_for_a_level_above_it():
    """A level just above the gate (20.015/255) was printed 'noise 20.0/255 ..., above 20/255'."""
    from moe_denoise.commands.denoise import describe_guard
    from runtime.guard import GUARD_MAX_SIGMA

    gate = GUARD_MAX_SIGMA * 255
    above = {"sigma": (gate + 0.015) / 255, "sigma_given": False, "applied": False}
    assert f"noise {gate + 0.015:.2f}/255 (estimated), above {gate:g}/255" in describe_guard(above)
    assert "noise 7.0/255" in describe_guard({**above, "sigma": 7 / 255})
    assert f"noise {gate:.1f}/255 " in describe_guard({**above, "sigma": GUARD_MAX_SIGMA})  # not 20.000000
