"""CIFAR-10 loading, the split, noise protocols."""
import pickle
import re

import numpy as np
import pytest
import torch

from moe_base.errors import DatasetError
from moe_model.data import BlindNoise, add_noise, blind_noisy, fixed_noisy, load_cifar10, to_float, to_gray


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
    (tmp_path / "x.png").write_bytes(b"x")  # a file: it was said not to exist
    with pytest.raises(DatasetError, match=r"x\.png is a file, not a folder\. Expected"):
        load_cifar10(tmp_path / "x.png", "test")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"lacks test_batch \(found: readme.txt\)"):
        load_cifar10(tmp_path / "d", "test")
    for i in range(9):  # a crowded folder: the first names and how many more
        (tmp_path / "d" / f"z{i}.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"found: readme.txt, z0.txt, .*, z6.txt and 2 more\)"):
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


def test_the_folder_above_the_batches_is_pointed_to_the_right_one(fake_cifar, tmp_path):
    """--data-dir data (the folder above cifar-10-batches-py) said 'found: cifar-10-batches-py' and no more, and a
    folder named test_batch was listed as found while the file was said to be missing."""
    with pytest.raises(DatasetError, match=rf"Did you mean --data-dir {re.escape(str(fake_cifar))}\?"):
        load_cifar10(fake_cifar.parent, "test")
    (tmp_path / "test_batch").mkdir()
    with pytest.raises(DatasetError, match=r"\(test_batch is a folder, not the batch file\.\)"):
        load_cifar10(tmp_path, "test")


def test_an_unreadable_folder_or_sidecar_is_said_not_a_traceback(fake_cifar, random_weights, monkeypatch):
    """A CIFAR-10 folder or a weights sidecar without read permission ended in a PermissionError traceback (exit 1).
    (Root reads everything, so the operating system's refusal is stood in for.)"""
    import pathlib

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import read_sidecar

    real = pathlib.Path.is_file
    blocked = {str(fake_cifar / "test_batch"), str(random_weights.with_suffix(".json"))}

    def is_file(self):
        if str(self) in blocked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(pathlib.Path, "is_file", is_file)
    with pytest.raises(DatasetError, match=r"cannot read .*test_batch \(Permission denied\); give a folder you can"):
        load_cifar10(fake_cifar, "test")
    with pytest.raises(CheckpointError, match=r"sidecar .*\.json cannot be read \(Permission denied\)"):
        read_sidecar(random_weights)


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


def test_blind_noise_mixture():
    clean = torch.rand(4000, 3, 8, 8)
    spec = BlindNoise(sigma_max=0.3, zero_share=0.1, unclipped_share=0.5, gray_share=0.25)
    noisy, target, sigma = blind_noisy(clean, spec, torch.Generator().manual_seed(0))
    gray = (target[:, 0] == target[:, 1]).flatten(1).all(dim=1) & (target[:, 1] == target[:, 2]).flatten(1).all(1)
    assert 0.2 < gray.float().mean() < 0.3
    torch.testing.assert_close(target[gray], to_gray(clean[gray]))
    torch.testing.assert_close(target[~gray], clean[~gray])
    # gray images carry the same noise in every channel; colour images independent noise
    assert torch.equal(noisy[gray][:, 0], noisy[gray][:, 1])
    assert not torch.equal(noisy[~gray & (sigma > 0)][:, 0], noisy[~gray & (sigma > 0)][:, 1])
    assert 0.07 < (sigma == 0).float().mean() < 0.13 and torch.equal(noisy[sigma == 0], target[sigma == 0])
    assert float(sigma.max()) <= 0.3 and 0.12 < float(sigma[sigma > 0].mean()) < 0.18
    outside = ((noisy < 0) | (noisy > 1)).flatten(1).any(dim=1)
    assert 0.3 < outside.float().mean() < 0.5  # about half the images are unclipped, most of those leave [0, 1]
    # the noise of an image that left [0, 1] (so was not clipped) matches its level
    ratio = (noisy - target)[outside].flatten(1).std(dim=1) / sigma[outside]
    assert 0.9 < float(ratio.median()) < 1.1


def test_blind_noise_leaves_the_unclipped_share_unclipped():
    """unclipped_share (train's --unclipped-share) is the share of images whose noise is not clipped to [0, 1].

    A lopsided share tells it from its complement: at 0.5, the default, clipping the wrong images gives the same
    statistics. The same seed gives the same draws at every share, so with share 1.0 (nothing clipped) the images
    that can leave [0, 1] are known; at 0.2 about a fifth of those do, and at 0.0 none."""
    clean = torch.rand(4000, 3, 8, 8)

    def outside(share: float) -> torch.Tensor:
        spec = BlindNoise(sigma_max=0.3, unclipped_share=share)
        noisy, _, _ = blind_noisy(clean, spec, torch.Generator().manual_seed(0))
        return ((noisy < 0) | (noisy > 1)).flatten(1).any(dim=1)

    can_leave = outside(1.0)
    assert float(can_leave.float().mean()) > 0.8  # all but the zero-level share and a few faint levels
    left = outside(0.2)
    assert not (left & ~can_leave).any()
    assert 0.17 < float(left[can_leave].float().mean()) < 0.23
    assert not outside(0.0).any()


def test_blind_noise_is_reproducible_and_validated():
    clean = torch.rand(8, 3, 4, 4)
    a = blind_noisy(clean, BlindNoise(), torch.Generator().manual_seed(3))
    b = blind_noisy(clean, BlindNoise(), torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="gray_share must be in"):
        BlindNoise(gray_share=1.5)
    with pytest.raises(ValueError, match="sigma_max must be > 0"):
        BlindNoise(sigma_max=0)


def test_bayer_share_gives_colour_images_demosaicked_noise_and_leaves_the_rest_alone():
    from moe_model.data import demosaicked

    clean = torch.rand(2000, 3, 8, 8)
    base = blind_noisy(clean, BlindNoise(), torch.Generator().manual_seed(5))
    zero = blind_noisy(clean, BlindNoise(bayer_share=0.0), torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(base, zero))  # the recipe before bayer_share, draw for draw
    spec = BlindNoise(unclipped_share=1.0, zero_share=0.0, bayer_share=0.5)
    noisy, target, sigma = blind_noisy(clean, spec, torch.Generator().manual_seed(5))
    before = blind_noisy(clean, BlindNoise(unclipped_share=1.0, zero_share=0.0), torch.Generator().manual_seed(5))
    torch.testing.assert_close(target, before[1])
    torch.testing.assert_close(sigma, before[2])
    noise = (noisy - target) / sigma.view(-1, 1, 1, 1)
    changed = (noisy != before[0]).flatten(1).any(dim=1)
    gray = (target[:, 0] == target[:, 1]).flatten(1).all(dim=1)
    assert not changed[gray].any()  # gray images keep their channel-identical white noise
    assert 0.4 < changed[~gray].float().mean() < 0.6
    # the changed ones carry correlated noise: horizontal neighbours in the green channel correlate
    g = noise[changed][:, 1]
    assert float(torch.corrcoef(torch.stack([g[:, :, :-1].flatten(), g[:, :, 1:].flatten()]))[0, 1]) > 0.2
    g = noise[~changed & ~gray][:, 1]
    assert abs(float(torch.corrcoef(torch.stack([g[:, :, :-1].flatten(), g[:, :, 1:].flatten()]))[0, 1])) < 0.05
    # one colour a pixel survives demosaicing unchanged (its own site), for every phase
    white = torch.randn(4, 3, 6, 6)
    out = demosaicked(white, torch.arange(4))
    torch.testing.assert_close(out[0, 0, 0, 0], white[0, 0, 0, 0])  # phase 0: red at (0, 0)
    torch.testing.assert_close(out[3, 0, 1, 1], white[3, 0, 1, 1])  # phase 3: red at (1, 1)
    torch.testing.assert_close(out[1, 1, 0, 0], white[1, 1, 0, 0])  # phase 1: green at (0, 0)
    with pytest.raises(ValueError, match="bayer_share must be in"):
        BlindNoise(bayer_share=-0.1)


def test_a_batch_saved_by_a_newer_numpy_than_this_one_is_said_as_such(tmp_path, monkeypatch):
    """Arrays pickled by NumPy 2 name numpy._core, which NumPy before 1.26.1 lacks: reading such a batch (a CIFAR-10
    copy saved again) ended train and evaluate in a ModuleNotFoundError traceback."""
    import sys

    from moe_model.data import _read_batch

    data = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=3)
    # NumPy 1 writes numpy.core, NumPy 2 numpy._core: the file is made as NumPy 2 writes it, under either
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in data or b"cnumpy._core.multiarray\n_reconstruct\n" in data
    path = tmp_path / "data_batch_1"
    path.write_bytes(data.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    assert _read_batch(path).shape == (2, 3, 32, 32)  # this NumPy has numpy._core
    monkeypatch.setitem(sys.modules, "numpy._core", None)  # as NumPy 1.26.0 and before: no such module
    monkeypatch.setitem(sys.modules, "numpy._core.multiarray", None)
    with pytest.raises(DatasetError, match=r"saved by a newer NumPy than this one, .*pip install 'numpy>=1.26.1'"):
        _read_batch(path)


def test_reliability_a_batch_file_that_declares_far_more_than_it_holds(tmp_path):
    """A CIFAR-10 batch of 101 bytes that declares a (2000000, 3072) array (an array's room, which NumPy's
    unpickling makes before filling it from the file), or a string of 2**40 bytes: train and evaluate asked for
    5.8 GiB (or a TiB) and ended in a MemoryError traceback, exit 1 (where memory sufficed, train ran on
    uninitialised memory) => refused before the allocation (the array's size and the file's named), or said to
    declare more than memory holds; a real batch still reads"""
    import resource

    from moe_model.data import _read_batch

    class Room:  # what a hostile file can say with the names the reader admits
        def __reduce__(self):
            core = np._core if int(np.__version__.split(".")[0]) >= 2 else np.core  # NumPy 2 deprecates np.core
            return core.multiarray._reconstruct, (np.ndarray, (2000000, 3072), b"B")

    big = tmp_path / "data_batch_1"
    big.write_bytes(pickle.dumps({b"data": Room()}, protocol=4))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DatasetError, match=r"declares an array of 6,144,000,000 bytes, more than the file's 1\d\d "
                                           r"bytes can fill"):
        _read_batch(big)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB: nothing of the 5.8 GiB
    big.write_bytes(b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"x")  # BINBYTES8 of 2**40 bytes
    with pytest.raises(DatasetError, match="declares more data than this machine's memory"):
        _read_batch(big)
    big.write_bytes(pickle.dumps({b"data": np.full((3, 3072), 7, np.uint8)}, protocol=4))
    assert _read_batch(big).shape == (3, 3, 32, 32) and int(_read_batch(big).max()) == 7
