"""Optional packages: a missing one is named with the pip command that installs it, through this project's extra."""
import sys

import pytest

from moe_base.errors import MissingBackendError
from moe_base.optional import install_hint, require


def test_a_submodule_is_installed_as_its_package():
    assert install_hint("skimage.metrics") == "pip install 'moe-denoise[eval]' (or pip install scikit-image)"
    assert install_hint("onnx") == "pip install 'moe-denoise[onnx]' (or pip install onnx)"
    assert install_hint("tensorrt.plugin").startswith("pip install 'moe-denoise[trt]'")
    assert install_hint("somethingelse.sub") == "pip install somethingelse"


def test_require_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # as if scikit-image were not installed
    monkeypatch.delitem(sys.modules, "skimage.metrics", raising=False)
    with pytest.raises(MissingBackendError, match=r"SSIM needs the Python package 'scikit-image', which could not "
                                                  r"be imported here .* pip install 'moe-denoise\[eval\]'"):
        require("skimage.metrics", "SSIM")


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_export_without_onnx_or_onnxruntime_says_what_to_install_before_any_work(monkeypatch, tmp_path, missing):
    from export.pipeline import export_onnx
    from moe_base.config import get_preset
    from moe_model import SmallViT

    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(MissingBackendError, match=rf"needs the Python package '{missing}'.*moe-denoise\[onnx\]"):
        export_onnx(SmallViT(get_preset("seed")), tmp_path / "m.onnx", log=lambda s: None)
    assert list(tmp_path.iterdir()) == []
