"""Evaluation on a tiny fixture: an identity 'denoiser' scores exactly the noisy input; the across-sigma report,
its targets and the BM3D rows (skipped with the reason when the bm3d package is missing)."""
import math

import numpy as np
import pytest
import torch

from moe_model.baselines import bm3d_available
from moe_model.checkpoint import load_model
from moe_model.data import load_cifar10, to_float
from moe_model.evaluate import (
    BM3D,
    NOISY,
    PSNR_CAP_DB,
    check_targets,
    evaluate_across_sigmas,
    evaluate_model,
    format_sigma_table,
    format_table,
    format_targets,
    psnr_values,
    sigma_key,
    subset_indices,
)
from moe_model.metrics import psnr_per_image, ssim_per_image


class Identity(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x


def test_psnr_known_value():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    np.testing.assert_allclose(psnr_per_image(a, b).numpy(), [20.0, 20.0], rtol=1e-5)


def test_ssim_identical_and_different():
    x = np.random.default_rng(0).uniform(size=(2, 3, 32, 32))
    np.testing.assert_allclose(ssim_per_image(x, x), 1.0)
    assert (ssim_per_image(np.clip(x + 0.3, 0, 1), x) < 0.9).all()


def test_identity_model_scores_like_the_noisy_input(fake_cifar):
    clean = to_float(load_cifar10(fake_cifar, "test")[:8])
    r = evaluate_model(Identity(), clean, sigma=0.2, protocols=("clip", "unclipped"))
    for protocol in ("clip", "unclipped"):
        rows = r["protocols"][protocol]
        assert rows["model"] == rows["noisy input"]
        p = rows["model"]["psnr"]["mean"]
        assert 12 < p < 16, p  # sigma 0.2 -> about 14 dB
    assert r["protocols"]["unclipped"]["model"]["psnr"]["mean"] == pytest.approx(-10 * math.log10(0.04), abs=0.5)
    table = format_table(r)
    assert "noisy input" in table and "unclipped" in table
    lines = format_table(r, "seed_checkpoint_long").splitlines()  # a long label kept the columns apart
    ends = {line.index(" +- ") + 9 for line in lines[2:]} | {lines[1].index("PSNR (dB)") + len("PSNR (dB)")}
    assert len(ends) == 1 and any("seed_checkpoint_long" in line for line in lines)


def test_the_clean_input_of_sigma_0_reads_clean_in_the_table(fake_cifar):
    """evaluate --sigma 0: the noisy-input row (the clean image itself) read 'inf +- 0.00', where the across-sigma
    report says 'clean'; its columns stay in line with the model's row."""
    clean = to_float(load_cifar10(fake_cifar, "test")[:4])
    lines = format_table(evaluate_model(Identity(), clean, sigma=0.0, protocols=("clip",), with_ssim=False)).splitlines()
    assert lines[2].split()[:3] == ["clip", "noisy", "input"] and lines[2].split()[3] == "clean" and "inf" not in lines[2]
    assert lines[3].split()[1:3] == ["model", "clean"]  # the identity gives back the clean image too
    assert len({len(line.rstrip()) for line in lines[2:]}) == 1


# --- across noise levels ---------------------------------------------------------------------------------------------
SIGMAS = (0, 5, 15, 25, 50, 75)


def test_subset_indices_spread_over_the_split():
    assert subset_indices(1000, 4) == [0, 250, 500, 750]
    assert subset_indices(3, 8) == [0, 1, 2]  # never more than the split holds
    with pytest.raises(ValueError, match="at least one"):
        subset_indices(10, 0)


def test_psnr_values_infinite_only_for_identical_images():
    a = torch.zeros(2, 3, 4, 4)
    b = a.clone()
    b[1] += 0.1
    p = psnr_values(b, a)
    assert p[0] == np.inf and p[1] == pytest.approx(20.0, abs=1e-6)


def test_noisy_input_psnr_matches_the_analytic_value(fake_cifar):
    """Unclipped noise of std s gives PSNR -10 log10(s^2) (3072 pixels per image: about 0.1 dB spread per image);
    clipping can only bring the noisy image closer to the clean one."""
    clean = to_float(load_cifar10(fake_cifar, "test")[:16])
    r = evaluate_across_sigmas({}, clean, SIGMAS, with_ssim=False, seed_protocol=False)
    for s in SIGMAS[1:]:
        unclipped = r["rows"]["unclipped"][sigma_key(s)][NOISY]["psnr"]["mean"]
        assert unclipped == pytest.approx(20 * math.log10(255 / s), abs=0.1), s
        assert r["rows"]["clip"][sigma_key(s)][NOISY]["psnr"]["mean"] >= unclipped - 0.02
    assert r["rows"]["clip"]["0"][NOISY]["psnr"]["mean"] == np.inf  # sigma 0: the clean image itself


def test_across_sigma_report_has_every_sigma_protocol_and_model(fake_cifar, random_weights):
    clean = to_float(load_cifar10(fake_cifar, "test")[:6])
    models = {"identity": Identity(), "random": load_model(random_weights)}
    r = evaluate_across_sigmas(models, clean, SIGMAS)
    assert r["methods"] == [NOISY, "identity", "random"] and r["num_images"] == 6
    for protocol in ("clip", "unclipped"):
        assert list(r["rows"][protocol]) == [sigma_key(s) for s in SIGMAS]
        for s in SIGMAS:
            rows = r["rows"][protocol][sigma_key(s)]
            assert set(rows) == {NOISY, "identity", "random"}
            assert rows["identity"] == rows[NOISY]  # the identity scores exactly its input
            assert 0 < rows["random"]["ssim"]["mean"] < 1 and np.isfinite(rows["random"]["psnr"]["mean"])
    assert r["rows"]["clip"]["0"] == r["rows"]["unclipped"]["0"]  # sigma 0 is the same image in both protocols
    assert r["seed_protocol"]["rows"]["identity"]["psnr"]["mean"] == pytest.approx(14.8, abs=1.0)
    table = format_sigma_table(r, check_targets(r))
    for text in ("[clip] PSNR", "[unclipped] SSIM", "identity", "random", "seed protocol", "targets", "clean",
                 *(f"sigma {s}" for s in SIGMAS)):
        assert text in table, text


def test_targets_read_off_the_report(fake_cifar, random_weights):
    clean = to_float(load_cifar10(fake_cifar, "test")[:4])
    r = evaluate_across_sigmas({"identity": Identity(), "random": load_model(random_weights)}, clean, (0, 25),
                               protocols=("clip",), with_ssim=False)
    t = {(x["weights"], x["target"].split(" ")[0]): x for x in check_targets(r)}
    assert t[("identity", "clean")]["met"]  # the identity leaves the clean image alone: infinite PSNR
    # never worse than the input, on the clip protocol alone: partly (it read 'met' with the unclipped one not run)
    identity = t[("identity", "output")]
    assert identity["met"] is None and identity["margin"] == 0.0 and "without the unclipped protocol" in identity["target"]
    assert not t[("random", "clean")]["met"] and t[("random", "clean")]["margin"] < -10  # random weights wreck it
    assert not t[("identity", "seed")]["met"]  # 14.8 dB is far below 25.1
    assert all(x["margin"] == x["measured"] - x["threshold"] for x in t.values() if np.isfinite(x["margin"]))
    both = evaluate_across_sigmas({"identity": Identity()}, clean, (0, 25), with_ssim=False)
    output = next(x for x in check_targets(both) if x["target"].startswith("output"))
    assert output["met"] is True and "without" not in output["target"]


class FirstImageOnly(torch.nn.Module):
    """Returns its first image as it came and mid-gray for the others: one perfect image, the rest wrecked."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        out = torch.full_like(x, 0.5)
        out[0] = x[0]
        return out


def test_one_perfect_image_does_not_make_a_mean_infinite(fake_cifar):
    """A model that returns one clean image exactly (infinite PSNR) and wrecks the others scored a mean of inf at
    sigma 0, and the clean-input target (>= 40 dB) was met by that one image. Each image counts at most 100 dB."""
    clean = to_float(load_cifar10(fake_cifar, "test")[:8])
    r = evaluate_across_sigmas({"first": FirstImageOnly()}, clean, (0, 25), protocols=("clip",), with_ssim=False,
                               seed_protocol=False)
    psnr = r["rows"]["clip"]["0"]["first"]["psnr"]
    others = psnr_values(torch.full_like(clean[1:], 0.5), clean[1:])
    assert psnr["max"] == PSNR_CAP_DB and psnr["mean"] == pytest.approx((PSNR_CAP_DB + others.sum()) / 8)
    assert np.isfinite(psnr["std"])
    target = next(x for x in check_targets(r) if x["weights"] == "first" and x["target"].startswith("clean"))
    assert not target["met"]
    assert r["rows"]["clip"]["0"][NOISY]["psnr"]["mean"] == np.inf  # every image perfect: still "clean"


def test_labels_must_not_take_the_reference_rows_names(fake_cifar):
    clean = to_float(load_cifar10(fake_cifar, "test")[:2])
    with pytest.raises(ValueError, match="reference rows"):
        evaluate_across_sigmas({NOISY: Identity()}, clean, (0,))
    with pytest.raises(ValueError, match="0-255 scale"):
        evaluate_across_sigmas({"m": Identity()}, clean, (-5,))
    with pytest.raises(ValueError, match="BM3D image indices"):
        evaluate_across_sigmas({"m": Identity()}, clean, (0,), bm3d_indices=[5])


def test_the_paired_difference_to_bm3d_has_the_sample_standard_error_and_counts_ties_as_no_win():
    """The report prints model - BM3D as mean +- standard error, and the wins. Differences 0, +1, -1 dB have mean 0,
    sample variance (0 + 1 + 1) / 2 = 1, so a standard error of 1 / sqrt(3) (the population variance, 2/3, would
    give 0.47); one image is won, the tie is not. One image has no standard error."""
    from moe_model.evaluate import _paired

    d = _paired(np.array([30.0, 31.0, 29.0]), np.array([30.0, 30.0, 30.0]))
    assert d["n"] == 3 and d["wins"] == 1
    assert d["mean"] == pytest.approx(0.0, abs=1e-12) and d["se"] == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(_paired(np.array([31.0]), np.array([30.0]))["se"])


@pytest.mark.skipif(not bm3d_available(), reason="the 'bm3d' package is not installed (pip install "
                                                 "'moe-denoise[eval]'); BM3D rows cannot be measured")
def test_bm3d_rows_on_the_subset_improve_on_the_noisy_input(fake_cifar):
    clean = to_float(load_cifar10(fake_cifar, "test")[:5])
    r = evaluate_across_sigmas({"identity": Identity()}, clean, (25,), protocols=("clip",), bm3d_indices=[0, 3],
                               seed_protocol=False)
    b = r["bm3d"]
    assert b["indices"] == [0, 3] and b["num_images"] == 2 and b["methods"] == [NOISY, BM3D, "identity"]
    rows = b["rows"]["clip"]["25"]
    assert rows[BM3D]["psnr"]["mean"] > rows[NOISY]["psnr"]["mean"] + 3  # about 20 dB in, > 23 dB out
    assert rows[BM3D]["ssim"]["mean"] > rows[NOISY]["ssim"]["mean"]
    diff = b["model_minus_bm3d_psnr"]["clip"]["25"]["identity"]
    assert diff["n"] == 2 and diff["wins"] == 0
    assert diff["mean"] == pytest.approx(rows["identity"]["psnr"]["mean"] - rows[BM3D]["psnr"]["mean"], abs=1e-9)
    assert r["seconds"][BM3D] > 0
    target = next(x for x in check_targets(r) if x["target"].startswith("beats BM3D"))
    assert not target["met"] and target["where"] == "clip sigma 25"
    # it read as judged at all three levels, and on one protocol
    assert target["target"].endswith("; judged without sigma 15, 50 and the unclipped protocol (not run)")
    # a model that beats BM3D on the levels run has not met a target of three levels: 'met' was true on 25 alone
    beats = {"rows": {}, "methods": [NOISY, "m"], "bm3d": {"model_minus_bm3d_psnr": {"clip": {"25": {"m": {"mean": 1.5}}},
                                                                         "unclipped": {"25": {"m": {"mean": 2.0}}}}}}
    target = next(x for x in check_targets(beats) if x["target"].startswith("beats BM3D"))
    assert target["met"] is None and target["margin"] == 1.5
    assert "  partly m: beats BM3D at sigma 15, 25, 50" in format_targets([target])


def test_the_single_sigma_evaluation_writes_progress_lines_to_a_log(capsys, monkeypatch):
    """'evaluate --sigma 0.2 > log' (the README's seed-protocol command) wrote no progress to a log: its batches had
    a bar on a terminal only. In a log a line now comes at most every 10 s, naming the batches done."""
    import itertools

    import moe_base.progress
    from moe_model.evaluate import denoise_batched

    class Same(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # where the batches go: the model's device

        def forward(self, x):
            return x

    clock = itertools.count(0.0, 6.0)  # 6 s a batch
    monkeypatch.setattr(moe_base.progress.time, "perf_counter", lambda: next(clock))
    noisy = torch.rand(8, 3, 4, 4)
    torch.testing.assert_close(denoise_batched(Same(), noisy, batch_size=2, progress="lines", desc="evaluate (clip)"),
                               noisy)
    lines = capsys.readouterr().err.splitlines()
    assert 1 <= len(lines) <= 3, lines  # at most one each 10 s over 4 batches of 6 s, not one a batch
    assert all(line.startswith("evaluate (clip): (") and " of 4 batches, " in line for line in lines), lines
