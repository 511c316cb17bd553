"""Tiling: exactness for any image size, batching, blending without seams, channel handling, validation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from moe_base.errors import InputError
from runtime.tiling import denoise_array, plan_tiles, reflect_indices, window_1d


def identity(tiles: np.ndarray) -> np.ndarray:
    return tiles.copy()


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


@pytest.mark.parametrize("shape", [
    (45, 77, 3), (33, 100, 3), (5, 7, 3), (1, 1, 3), (1, 40, 3), (40, 1, 3), (20, 32, 3), (32, 32, 3),
    (64, 96, 3), (257, 301, 3),
])
def test_identity_gives_back_the_input(shape: tuple[int, ...]) -> None:
    image = random_image(shape)
    out = denoise_array(image, identity)
    assert out.shape == image.shape and out.dtype == np.float32
    assert np.abs(out - image).max() <= 1e-6


@pytest.mark.parametrize("overlap", [0, 4, 8, 16, 24, 31])
def test_identity_is_exact_for_every_overlap(overlap: int) -> None:
    image = random_image((45, 77, 3), seed=overlap)
    assert np.abs(denoise_array(image, identity, overlap=overlap) - image).max() <= 1e-6


def test_pointwise_function_commutes_with_tiling() -> None:
    """A per-pixel fn gives fn(image) exactly: overlapping tiles agree and the weights are normalised."""
    image = random_image((50, 70, 3), seed=1)
    out = denoise_array(image, lambda t: t ** 2 * 0.5 + 0.25)
    assert np.abs(out - (image ** 2 * 0.5 + 0.25)).max() <= 1e-6


def test_constant_denoiser_gives_a_constant_image() -> None:
    out = denoise_array(random_image((45, 77, 3)), lambda t: np.full_like(t, 0.5))
    assert np.abs(out - 0.5).max() <= 1e-6


def test_tiles_are_batched() -> None:
    calls: list[tuple[tuple[int, ...], np.dtype, bool]] = []

    def counting(tiles: np.ndarray) -> np.ndarray:
        calls.append((tiles.shape, tiles.dtype, tiles.flags["C_CONTIGUOUS"]))
        return tiles

    plan = plan_tiles(100, 150)
    denoise_array(random_image((100, 150, 3)), counting, batch_size=16)
    assert len(calls) == math.ceil(plan.count / 16) > 1
    assert [c[0][0] for c in calls[:-1]] == [16] * (len(calls) - 1)
    assert sum(c[0][0] for c in calls) == plan.count
    assert all(c[0][1:] == (3, 32, 32) and c[1] == np.float32 and c[2] for c in calls)


def test_tiles_see_the_image_content_at_the_right_place() -> None:
    """Each batch entry is a real 32x32 window of the reflect-padded image (not zeros, not transposed)."""
    image = random_image((40, 60, 3), seed=3)
    seen: list[np.ndarray] = []
    denoise_array(image, lambda t: (seen.append(t.copy()), t)[1])
    plan = plan_tiles(40, 60)
    first = np.concatenate(seen)[0]  # tile at (0, 0) of the padded image
    iy = reflect_indices(40, plan.pad_top, plan.padded_height - 40 - plan.pad_top)[:32]
    ix = reflect_indices(60, plan.pad_left, plan.padded_width - 60 - plan.pad_left)[:32]
    np.testing.assert_array_equal(first, image[iy][:, ix].transpose(2, 0, 1))


def test_reflect_indices_match_numpy_and_handle_tiny_axes() -> None:
    for length, before, after in [(5, 3, 4), (3, 7, 7), (2, 5, 6), (10, 16, 16)]:
        ref = np.pad(np.arange(length), (before, after), mode="reflect")
        np.testing.assert_array_equal(reflect_indices(length, before, after), ref)
    np.testing.assert_array_equal(reflect_indices(1, 16, 15), np.zeros(32, dtype=int))


def test_window_is_a_partition_of_unity_and_never_zero() -> None:
    for overlap in (4, 8, 16):
        w = window_1d(32, overlap)
        stride = 32 - overlap
        assert w.min() > 0
        total = np.zeros(stride * 6 + 32)
        for k in range(7):
            total[k * stride:k * stride + 32] += w
        interior = total[32:-32]
        np.testing.assert_allclose(interior, 1.0, atol=1e-12)


def test_window_has_no_kinks() -> None:
    """sin^2 ramps start and end with zero slope, so blended biases bend smoothly (a linear ramp would kink)."""
    w = window_1d(32, 16)
    assert w[0] < 0.01 and w[0] == w[-1]
    assert np.abs(np.diff(w, 2)).max() < 0.03  # a linear ramp has a slope jump of 1/16 = 0.0625


def _biased(seed: int):
    """Identity plus a random constant per tile (a denoiser whose tiles disagree slightly); returns fn, biases."""
    rng = np.random.default_rng(seed)
    biases: list[float] = []

    def fn(tiles: np.ndarray) -> np.ndarray:
        c = rng.uniform(-0.05, 0.05, size=len(tiles)).astype(np.float32)
        biases.extend(c.tolist())
        return tiles + c[:, None, None, None]

    return fn, biases


def test_no_seams_where_tiles_disagree() -> None:
    """With per-tile biases, a hard stitch jumps at tile borders; the blend changes by only ~pi/(2*16) of it.

    The bias field b = output - input is a convex mix of the tile biases. Between two tiles it moves
    along a sin^2 ramp of 16 pixels, so its largest step between neighbouring pixels is at most
    (max bias - min bias) * pi / 32 ~ 0.1 of that range, while a hard stitch steps by the full
    difference of two neighbouring tiles' biases.
    """
    yy, xx = np.mgrid[0:150, 0:200].astype(np.float32)
    smooth = 0.5 + 0.3 * np.sin(xx / 37.0) * np.cos(yy / 29.0)
    image = np.repeat(smooth[:, :, None], 3, axis=2).astype(np.float32)

    fn_hard, b_hard = _biased(0)
    hard = denoise_array(image, fn_hard, overlap=0, guard=False) - image  # the tiling alone, no clean-input guard
    fn_soft, b_soft = _biased(0)
    soft = denoise_array(image, fn_soft, overlap=16, guard=False) - image

    def max_step(field: np.ndarray) -> float:
        return float(max(np.abs(np.diff(field, axis=0)).max(), np.abs(np.diff(field, axis=1)).max()))

    spread = max(b_soft) - min(b_soft)
    assert min(b_soft) - 1e-6 <= soft.min() and soft.max() <= max(b_soft) + 1e-6  # a convex mix
    assert max_step(soft) <= spread * math.pi / 32 + 1e-6
    assert max_step(hard) > 0.02  # the hard stitch does show seams ...
    assert max_step(soft) < 0.25 * max_step(hard)  # ... and the blend removes most of them


def test_gray_is_denoised_as_rgb_and_averaged() -> None:
    image = random_image((30, 40, 1), seed=4)
    scale = np.array([0.5, 1.0, 0.0], dtype=np.float32)[None, :, None, None]
    out = denoise_array(image, lambda t: t * scale)
    assert out.shape == (30, 40, 1)
    assert np.abs(out - image * 0.5).max() <= 1e-6


def test_two_dimensional_gray_keeps_its_shape() -> None:
    image = random_image((30, 40), seed=5)
    out = denoise_array(image, identity)
    assert out.shape == (30, 40) and np.abs(out - image).max() <= 1e-6


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_passes_through_unchanged(channels: int) -> None:
    image = random_image((30, 40, channels), seed=6)
    out = denoise_array(image, lambda t: np.full_like(t, 0.25))
    np.testing.assert_array_equal(out[:, :, -1], image[:, :, -1])
    assert np.abs(out[:, :, :-1] - 0.25).max() <= 1e-6


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4, 3), dtype=np.uint8), r"got dtype uint8\. Convert with image\.astype\(np\.float32\) / 255$"),
    (np.zeros((4, 4), dtype=np.uint16), r"uint16\. Convert with image\.astype\(np\.float32\) / 65535$"),
    (np.zeros((4, 4, 3), dtype=np.float64), r"got dtype float64\. Convert with image\.astype\(np\.float32\)$"),
    (np.zeros((4, 4, 3), dtype=np.int32), r"int32\. Convert with image\.astype\(np\.float32\), scaled to"),
    (np.zeros((4, 4, 5), dtype=np.float32), r"C = 1.*got shape \(4, 4, 5\)$"),
    (np.zeros((3, 40, 50), dtype=np.float32), r"\(3, 40, 50\): channels first\? image\.transpose\(1, 2, 0\) gives "
                                              r"\(40, 50, 3\)"),
    (np.zeros((1, 4, 4, 3), dtype=np.float32), r"one image of a batch\? image\[0\] gives \(4, 4, 3\)"),
    (np.zeros((2, 4, 4, 3), dtype=np.float32), r"C = 1.*got shape \(2, 4, 4, 3\)$"),
    (np.zeros((0, 4, 3), dtype=np.float32), "no pixels"),
    (np.full((4, 4, 3), np.nan, dtype=np.float32), "NaN"),
    (np.full((4, 4, 3), 1.5, dtype=np.float32), "[0, 1]"),
    ([[0.0]], r"got list\. Convert it with np\.asarray\(x, dtype=np\.float32\) \(height x width x channels\)$"),
    (np.ma.masked_array(np.full((4, 4, 3), 5.0, np.float32), mask=True),  # its 5.0 went into the model
     r"got a MaskedArray \(its pixels are denoised as plain values\)\. Convert it with image\.filled\(value\)"),
])
def test_bad_images_are_refused_clearly(bad: object, message: str) -> None:
    with pytest.raises(InputError, match=message if message[0] != "[" else r"\[0, 1\]"):
        denoise_array(bad, identity)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # numpy's own, on making a matrix
def test_a_numpy_matrix_is_refused_clearly() -> None:
    """np.matrix ended in a bare 'TypeError: __array_prepare__ must return an ndarray'."""
    with pytest.raises(InputError, match=r"got a matrix .* Convert it with np\.asarray\(image\)$"):
        denoise_array(np.matrix(np.zeros((4, 4), np.float32)), identity)


@pytest.mark.parametrize("kwargs", [dict(overlap=32), dict(overlap=-1), dict(tile=0), dict(batch_size=0),
                                    dict(overlap=1.5)])
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(InputError):
        denoise_array(random_image((8, 8, 3)), identity, **kwargs)


def test_a_denoiser_returning_the_wrong_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="returned shape"):
        denoise_array(random_image((8, 8, 3)), lambda t: t[:, :1])
    with pytest.raises(InputError, match=r"returned None for a batch of shape \(\d+, 3, 32, 32\); it must return the "
                                         r"denoised batch"):  # it said 'returned shape ()'
        denoise_array(random_image((8, 8, 3)), lambda t: None)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sigma=np.array(0.1)), r"sigma is the noise std on \[0, 1\] pixels, a number .*; got a numpy array of shape \(\): "
                                r"array\(0\.1\)\. float\(sigma\) gives the number"),  # it was '>= 0 (got array(0.1))'
    (dict(sigma="0.1"), r"a number .*; got a str: '0\.1'\. float\(sigma\) gives the number"),
    (dict(sigma=True), r"a number .*; got a bool: True"),
    (dict(strength=True), r"strength is how much of the denoising to keep, .*; got True"),  # it passed as 1, where
    # guard=1 is refused
])
def test_settings_of_another_type_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        denoise_array(random_image((8, 8, 3)), identity, **kwargs)


def test_a_torch_tensor_or_pil_image_gets_its_own_conversion() -> None:
    """The two objects a Python user most often has instead of a numpy array, each with its conversion."""
    import torch
    from PIL import Image

    with pytest.raises(InputError, match=r"got Tensor\. Convert it with x\.detach\(\)\.cpu\(\)\.numpy\(\) \(a torch"):
        denoise_array(torch.zeros(4, 4, 3, requires_grad=True), identity)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"Convert it with np\.asarray\(img, dtype=np\.float32\) / 255 .*read_image"):
        denoise_array(Image.new("RGB", (4, 4)), identity)  # type: ignore[arg-type]


def test_progress_in_a_log_is_lines_of_tiles(capsys, monkeypatch) -> None:
    """progress='lines' (a log): 'denoising: (k of N tiles, s s)', at most one per PROGRESS_LINE_S seconds (0 here:
    one per batch), no carriage returns; the same result as without progress."""
    import runtime.tiling as tiling

    monkeypatch.setattr(tiling, "PROGRESS_MIN_TILES", 1)
    monkeypatch.setattr(tiling, "PROGRESS_LINE_S", 0.0)
    image = random_image((40, 40, 3))
    out = denoise_array(image, identity, batch_size=4, progress="lines")
    err = capsys.readouterr().err
    lines = err.splitlines()
    total = int(lines[0].split(" of ")[1].split()[0])
    assert lines[0].startswith("denoising: (4 of ") and f"({total} of {total} tiles, " in lines[-1]
    assert len(lines) == -(-total // 4) and "\r" not in err
    np.testing.assert_array_equal(out, denoise_array(image, identity, batch_size=4))


def test_the_guards_own_denoising_shows_progress(capsys, monkeypatch) -> None:
    """A clean photo's guard denoises samples of it (twice each) before the photo: 12 to 14 s of a 768x768 JPEG with
    nothing on the screen, and nothing in a log. Its samples are now counted as the tiles are ('lines' here, one a
    sample with PROGRESS_LINE_S 0); without progress, nothing."""
    import runtime.tiling as tiling

    monkeypatch.setattr(tiling, "PROGRESS_LINE_S", 0.0)
    monkeypatch.setattr(tiling, "PROGRESS_MIN_TILES", 10**9)  # the photo's own tiles: no lines
    data = pytest.importorskip("skimage.data", reason="scikit-image's sample photos: pip install scikit-image")
    clean = data.astronaut()[:128, :128].astype(np.float32) / 255  # a clean photo: the guard samples it
    out = denoise_array(clean, identity, progress="lines")
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("clean-input guard: reading the noise level: (") for line in lines), lines
    assert lines[-1].startswith(f"clean-input guard: reading the noise level: ({len(lines)} sample")
    np.testing.assert_array_equal(out, denoise_array(clean, identity))
    assert capsys.readouterr().err == ""


def test_the_batch_size_suits_where_the_denoiser_runs() -> None:
    """None: 64 tiles a call for a runner on a CPU (measured faster and leaner there), 256 on a GPU or for a plain
    function; a given size always wins; the result is the same either way."""
    from runtime.tiling import CPU_BATCH_SIZE, DEFAULT_BATCH_SIZE, batch_size_for

    class Spy:
        def __init__(self, on_gpu):
            self.on_gpu, self.sizes = on_gpu, []

        def __call__(self, batch):
            self.sizes.append(len(batch))
            return batch

    cpu, gpu = Spy(False), Spy(True)
    assert (CPU_BATCH_SIZE, DEFAULT_BATCH_SIZE) == (64, 256)
    assert [batch_size_for(cpu), batch_size_for(gpu), batch_size_for(identity), batch_size_for(cpu, 8)] == \
        [64, 256, 256, 8]
    image = random_image((200, 200, 3))  # 196 tiles: 64 + 64 + 64 + 4 on a CPU, one call on a GPU
    out_cpu = denoise_array(image, cpu, guard=False)
    out_gpu = denoise_array(image, gpu, guard=False)
    assert cpu.sizes == [64, 64, 64, 4] and gpu.sizes == [196]
    np.testing.assert_array_equal(out_cpu, out_gpu)


def test_runners_say_whether_they_run_on_a_gpu() -> None:
    from runtime import OrtRunner, TensorRTRunner, TorchRunner

    assert not TorchRunner("blind").on_gpu and TorchRunner("blind", device="cuda:1").on_gpu
    assert not OrtRunner("m.onnx").on_gpu and OrtRunner("m.onnx", provider="cuda").on_gpu
    assert TensorRTRunner("m.engine").on_gpu


def _halving_runner():
    """A runner that halves its input and counts how often it is activated and released."""
    from runtime.base import BaseRunner

    class Halving(BaseRunner):
        backend = "halving"
        activations = releases = 0

        def _activate_impl(self) -> None:
            self.activations += 1

        def _deactivate_impl(self) -> None:
            self.releases += 1

        def _infer_impl(self, x: np.ndarray) -> np.ndarray:
            return x * 0.5

    return Halving()


def test_a_runner_given_inactive_is_activated_for_the_call_and_released(tmp_path) -> None:
    """denoise_array(image, TorchRunner("blind")) works without a with-block: the entry points activate an inactive
    runner for the call and release it after; a runner already active stays active, activated once."""
    from PIL import Image

    from runtime import denoise_file
    from runtime.tiling import guard_for_array

    image = np.full((40, 50, 3), 0.8, np.float32)
    runner = _halving_runner()
    np.testing.assert_allclose(denoise_array(image, runner, guard=False), 0.4, atol=1e-6)
    guard_for_array(image, runner, sigma=0.1)
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(tmp_path / "in.png")
    denoise_file(tmp_path / "in.png", tmp_path / "out.png", runner, guard=False, progress=False)
    assert (runner.activations, runner.releases, runner.is_active) == (3, 3, False)
    assert np.asarray(Image.open(tmp_path / "out.png")).max() == 100

    with _halving_runner() as active:
        denoise_array(image, active, guard=False)
        denoise_array(image, active)
        assert (active.activations, active.releases, active.is_active) == (1, 0, True)


def test_what_is_not_a_tile_denoiser_is_named_before_any_work(tmp_path):
    """denoise_array(img, "blind") said "'str' object is not callable"; tile=64 with a runner said to use
    denoise_array (the function called); guard="no" kept the guard on."""
    from moe_base.errors import InputError
    from runtime.photo import denoise_file
    from runtime.tiling import denoise_array, guard_for_array
    from runtime.torch_runner import TorchRunner

    image = np.full((40, 40, 3), 0.5, np.float32)
    with pytest.raises(InputError, match=r"not a weights name or path; got 'blind': pass TorchRunner\('blind'\)"):
        denoise_array(image, "blind")
    with pytest.raises(InputError, match="a runner or a function of a batch; got int"):
        guard_for_array(image, 3)
    runner = TorchRunner("blind")
    with pytest.raises(InputError, match=r"tile=64: a runner's model takes 32x32 tiles; leave tile out"):
        denoise_array(image, runner, tile=64, overlap=8)
    assert not runner.is_active  # refused before the model was loaded
    with pytest.raises(InputError, match=r"guard= is True, False or a decision from guard_for_array; got 'no'"):
        denoise_array(image, lambda batch: batch, guard="no")
    with pytest.raises(InputError, match="not a weights name or path"):
        denoise_file(tmp_path / "in.png", tmp_path / "out.png", tmp_path / "w.safetensors")
    out = denoise_array(image, lambda batch: batch * 0.5, tile=64, overlap=8, guard=False)  # a function: any tile
    np.testing.assert_allclose(out, image * 0.5, atol=1e-6)


def test_numpy_scalars_are_taken_where_python_numbers_are() -> None:
    """np.float32(0.5) as strength, np.bool_ as guard and np.int64 counts were refused with messages that contradict
    themselves ('from 0 to 1; got 0.5', 'True, False ...; got False', 'a whole number >= 1; got 8'), while np.float64
    and np.int64 tile / batch_size / band_rows were taken."""
    from runtime import OrtRunner

    image = random_image((40, 50, 3))
    halve = lambda batch: batch * 0.5  # noqa: E731
    np.testing.assert_array_equal(denoise_array(image, halve, guard=np.bool_(False)),
                                  denoise_array(image, halve, guard=False))
    np.testing.assert_array_equal(denoise_array(image, halve, guard=np.bool_(True), sigma=0.01),
                                  denoise_array(image, halve, guard=True, sigma=0.01))
    np.testing.assert_array_equal(denoise_array(image, halve, strength=np.float32(0.5)),
                                  denoise_array(image, halve, strength=0.5))
    runner = _halving_runner().__class__(max_batch=np.int64(8))
    assert runner.max_batch == 8 and type(runner.max_batch) is int
    assert OrtRunner("m.onnx", threads=np.int64(2)).threads == 2


def test_a_runner_class_given_instead_of_a_runner_is_named() -> None:
    """denoise_array(image, TorchRunner) called the class with the batch as its weights: an InputError holding the
    whole batch's repr, thousands of lines of zeros."""
    from runtime import TorchRunner

    with pytest.raises(InputError, match=r"got the class TorchRunner: make one, e\.g\. TorchRunner\('blind'\)$"):
        denoise_array(np.zeros((4, 4), np.float32), TorchRunner)


def test_a_progress_typo_is_refused_on_small_images_too(tmp_path) -> None:
    """progress='bars' was checked only when a bar was made, for images of PROGRESS_MIN_TILES tiles or more: a
    script tried on small images failed on the first large photo, with a bare ValueError."""
    from PIL import Image

    from runtime.photo import denoise_file

    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(tmp_path / "in.png")
    for bad in ("bars", 1):
        with pytest.raises(InputError, match=r"progress must be True, False, 'bar' or 'lines'; got"):
            denoise_array(random_image((20, 20, 3)), identity, progress=bad)
        with pytest.raises(InputError, match=r"progress must be True, False, 'bar' or 'lines'; got"):
            denoise_file(tmp_path / "in.png", tmp_path / "out.png", identity, progress=bad)
    assert not (tmp_path / "out.png").exists()
    for good in (True, False, None, "bar", "lines"):
        denoise_array(random_image((20, 20, 3)), identity, progress=good)


def test_a_call_holds_at_most_the_tiles_the_image_has() -> None:
    plan = plan_tiles(40, 60)
    assert plan.count == 20
    assert [plan.call_size(b) for b in (1, 19, 20, 21, 100_000_000)] == [1, 19, 20, 20, 20]
