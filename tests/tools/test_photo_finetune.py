"""tools.photo_finetune: a few steps on photo crops change the weights and write them with their settings."""
import json

import numpy as np
import pytest
import torch

from moe_base.errors import InputError
from tools.photo_finetune import crops, load_photos, main

pytest.importorskip("skimage.data", reason="the sample photos come from scikit-image (the test extra)")


def test_crops_are_tiles_of_the_photos_with_gray_marked():
    photos = load_photos(["camera", "astronaut"])
    assert photos[1].shape[2] == 3 and not np.array_equal(photos[1][:, :, 0], photos[1][:, :, 1])
    assert np.array_equal(load_photos(["astronaut"], as_gray=True)[0][:, :, 0], load_photos(["astronaut"], True)[0][:, :, 2])
    batch, gray = crops(photos, [True, False], 16, np.random.default_rng(0))
    assert batch.shape == (16, 3, 32, 32) and batch.dtype == torch.float32
    assert 0 < int(gray.sum()) < 16
    for tile, g in zip(batch, gray):
        assert bool(torch.equal(tile[0], tile[1])) == bool(g)


def test_a_larger_view_trains_on_larger_crops_and_scores_camera_tiled_at_it(tmp_path, random_weights, capsys):
    batch, _ = crops(load_photos(["coins"]), [True], 2, np.random.default_rng(0), size=64)
    assert batch.shape == (2, 3, 64, 64)
    out = tmp_path / "view.safetensors"
    assert main(["--photos", "coins", "--sigma", "0.2", "--view", "64", "--init", str(random_weights), "--out",
                 str(out), "--max-steps", "1", "--batch", "2", "--threads", "1", "--score-camera"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("camera at sigma 0.2 (clipped), tiled at 64 x 64: PSNR ") and "best Gaussian blur 24.20 dB" in line


def test_unknown_photo_is_named():
    with pytest.raises(InputError, match="no sample photo 'cameraa'"):
        load_photos(["cameraa"])


def test_a_few_steps_write_changed_weights_and_their_settings(tmp_path, random_weights):
    from moe_model.checkpoint import load_state_dict

    out = tmp_path / "ft.safetensors"
    assert main(["--photos", "camera", "--sigma", "0.2", "--init", str(random_weights), "--out", str(out), "--max-steps", "2",
                 "--batch", "4", "--threads", "1", "--lr", "1e-3"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["experiment"]["steps"] == 2 and side["experiment"]["settings"]["photos"] == ["camera"]
    assert side["training"]["init_from"]["path"] == str(random_weights)
    before, after = load_state_dict(random_weights), load_state_dict(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_held_out_set_leaves_every_evaluated_photo_out():
    """The photos a candidate for the default weights may train on share no pixels with the evaluation's photos."""
    from benchmarks.quality import PHOTOS, load_photo
    from tools.photo_finetune import HELD_OUT_SET

    held_out = load_photos(["held-out"])
    assert len(held_out) == len(HELD_OUT_SET) + 1  # the stereo pair gives two views
    for name in PHOTOS:
        evaluated = load_photo(name)
        evaluated = evaluated if evaluated.ndim == 3 else np.repeat(evaluated[:, :, None], 3, axis=2)
        assert not any(p.shape == evaluated.shape and np.allclose(p, evaluated, atol=2 / 255) for p in held_out), name


def test_blind_steps_mix_cifar_images_in(tmp_path, random_weights, cifar_dir):
    out = tmp_path / "blind.safetensors"
    assert main(["--photos", "coins", "pywt:aero", "--blind", "--cifar-share", "0.5", "--data-dir", str(cifar_dir),
                 "--init", str(random_weights), "--out", str(out), "--max-steps", "2", "--batch", "4",
                 "--threads", "1"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["experiment"]["settings"]["cifar_share"] == 0.5


@pytest.mark.parametrize("argv, message", [
    (["--photos", "coins"], "give one of --sigma"),
    (["--photos", "coins", "--sigma", "0.1", "--blind"], "give one of --sigma"),
    (["--photos", "coins", "--blind", "--cifar-share", "1"], "--cifar-share must be in"),
    (["--photos", "pywt:nothing", "--sigma", "0.1"], "no sample photo 'pywt:nothing'"),
    (["--photos", "coins", "--sigma", "0.1", "--view", "30"], "--view must be a multiple of 4"),
    (["--photos", "coins", "--sigma", "0.1", "--view", "16"], "at least 32"),
    (["--photos", "coins", "--blind", "--view", "64", "--cifar-share", "0.5"], "--cifar-share needs --view 32"),
])
def test_contradictory_or_unknown_settings_are_refused(tmp_path, argv, message):
    with pytest.raises(InputError, match=message):
        main([*argv, "--out", str(tmp_path / "x.safetensors")])


def test_grown_network_starts_as_the_function_it_grew_from(random_weights, capsys):
    """--grow: wider feed-forward layers and a new (or wider) refinement head, more parameters, the same outputs;
    a field that cannot grow, a smaller size or no number is refused with the sizes now."""
    from moe_model.checkpoint import load_model
    from moe_model.model import count_parameters
    from tools.photo_finetune import grown

    small = load_model(random_weights).eval()
    wide = grown(load_model(random_weights), ["ffn_hidden=512", "refine_channels=16"], str(random_weights)).eval()
    assert (wide.config.ffn_hidden, wide.config.refine_channels) == (512, 16)
    assert count_parameters(wide) > count_parameters(small)
    batch = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(batch), small(batch), atol=1e-6, rtol=0)
    assert "parameters" in capsys.readouterr().out
    for bad in ("dim=256", "ffn_hidden=100", "ffn_hidden=lots"):
        with pytest.raises(InputError, match=f"--grow {bad}: expected FIELD=N .* \\(ffn_hidden=256, "):
            grown(load_model(random_weights), [bad], str(random_weights))


def test_the_output_is_checked_before_training(tmp_path, random_weights, monkeypatch):
    """An --out that cannot be written, or one that exists (without --overwrite), is refused before the photos are
    loaded: it was found after the --minutes of training, or the old weights were replaced without a word."""
    import tools.photo_finetune as tool

    def no_training(*args, **kwargs):
        raise AssertionError("the photos were loaded: training was about to start")

    base = ["--photos", "coins", "--sigma", "0.1", "--init", str(random_weights), "--max-steps", "1", "--batch", "2",
            "--threads", "1"]
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(tool, "load_photos", no_training)
    with pytest.raises(InputError, match="is a file, not a folder|cannot write to the folder"):
        main([*base, "--out", str(tmp_path / "a_file" / "g.safetensors")])
    old = tmp_path / "old.safetensors"
    old.write_bytes(b"earlier weights")
    with pytest.raises(InputError, match="already exists; refusing to replace it.*--overwrite"):
        main([*base, "--out", str(old)])
    old.unlink()
    old.with_suffix(".json").write_text("{}")  # the sidecar alone is someone's too
    with pytest.raises(InputError, match="old.json' already exists"):
        main([*base, "--out", str(old)])
    monkeypatch.undo()
    assert main([*base, "--out", str(old), "--overwrite"]) == 0
    assert json.loads(old.with_suffix(".json").read_text())["experiment"]["steps"] == 1


def test_a_view_larger_than_a_photo_is_named(tmp_path, random_weights):
    """--view 400 on coins (384x303) ended in numpy's 'ValueError: high <= 0' from the crop."""
    with pytest.raises(InputError, match=r"--view 400 is larger than photo\(s\) coins \(384x303\)"):
        main(["--photos", "coins", "--sigma", "0.1", "--view", "400", "--init", str(random_weights), "--max-steps", "1",
              "--out", str(tmp_path / "ft.safetensors")])
    assert not (tmp_path / "ft.safetensors").exists()
