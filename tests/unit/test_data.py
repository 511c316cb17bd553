"""CIFAR-10 loading, the split, noise protocols."""
import pickle

import numpy as np
import pytest
import torch

from moe_model.data import DatasetError, add_noise, fixed_noisy, load_cifar10, to_float


def test_loader_on_synthetic_pickles(fake_cifar):
    train, val, test = (load_cifar10(fake_cifar, s) for s in ("train", "val", "test"))
    assert train.shape == (50, 3, 32, 32) and val.shape == (5000, 3, 32, 32) and test.shape == (40, 3, 32, 32)
    assert train.dtype == np.uint8
    # the split is the official order: val is the tail of the training batches
    with open(fake_cifar / "data_batch_5", "rb") as f:
        last = pickle.load(f, encoding="bytes")[b"data"].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(val[-len(last):], last)
    x = to_float(test)
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1


def test_missing_and_malformed_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*cifar-10-python.tar.gz"):
        load_cifar10(tmp_path / "nope", "test")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"lacks \['test_batch'\].*found: \['readme.txt'\]"):
        load_cifar10(tmp_path / "d", "test")
    (tmp_path / "d" / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match="could not read"):
        load_cifar10(tmp_path / "d", "test")
    with open(tmp_path / "d" / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8)}, f)
    with pytest.raises(DatasetError, match=r"expected uint8 \(N, 3072\)"):
        load_cifar10(tmp_path / "d", "test")
    with pytest.raises(ValueError, match="unknown split"):
        load_cifar10(tmp_path / "d", "holdout")


def test_noise_protocols():
    clean = torch.full((4, 3, 32, 32), 0.5)
    g = torch.Generator().manual_seed(0)
    clipped = add_noise(clean, 0.2, "clip", g)
    assert 0 <= float(clipped.min()) and float(clipped.max()) <= 1
    raw = add_noise(torch.zeros(64, 3, 32, 32), 0.2, "unclipped", torch.Generator().manual_seed(0))
    assert float(raw.min()) < 0 and abs(float(raw.std()) - 0.2) < 0.01
    torch.testing.assert_close(fixed_noisy(clean, seed=3), fixed_noisy(clean, seed=3))
    assert not torch.equal(fixed_noisy(clean, seed=3), fixed_noisy(clean, seed=4))
    with pytest.raises(ValueError, match="unknown noise protocol"):
        add_noise(clean, 0.2, "poisson")
