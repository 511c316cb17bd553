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


def test_unknown_photo_is_named():
    with pytest.raises(InputError, match="no sample photo 'cameraa'"):
        load_photos(["cameraa"])


def test_a_few_steps_write_changed_weights_and_their_settings(tmp_path, random_weights):
    from moe_model.checkpoint import load_state_dict

    out = tmp_path / "ft.safetensors"
    assert main(["--photos", "camera", "--init", str(random_weights), "--out", str(out), "--max-steps", "2",
                 "--batch", "4", "--threads", "1", "--lr", "1e-3"]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["experiment"]["steps"] == 2 and side["experiment"]["settings"]["photos"] == ["camera"]
    assert side["training"]["init_from"]["path"] == str(random_weights)
    before, after = load_state_dict(random_weights), load_state_dict(out)
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
