"""moe_base.paths: the cache folder, from any folder and any HOME."""
import os
import pwd
from pathlib import Path

import pytest

from moe_base.paths import cache_dir


@pytest.mark.parametrize("home", ["", "relative/home"])
def test_an_empty_or_relative_home_is_not_taken_for_the_home_folder(monkeypatch, home):
    """HOME= (empty, as 'HOME= cmd' and some service managers leave it) put the cache at /.cache/moe-denoise, and
    export as root wrote there; a relative HOME put one cache under each current folder. The account's own home
    folder is taken instead."""
    monkeypatch.delenv("MOE_DENOISE_CACHE", raising=False)
    monkeypatch.setenv("HOME", home)
    assert cache_dir() == Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "moe-denoise"


def test_an_absolute_home_is_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MOE_DENOISE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "moe-denoise"
