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


def test_a_plugin_export_without_the_extensions_says_so_before_any_work(monkeypatch, tmp_path):
    """It failed at step 3 of 4, after writing and checking the graph."""
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_base.config import get_preset
    from moe_model import SmallViT

    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)
    steps = []
    with pytest.raises(MissingBackendError, match=r"plugin-flavour export .* needs the Python package "
                                                  r"'onnxruntime-extensions'"):
        export_onnx(SmallViT(get_preset("seed")), tmp_path / "m.onnx", ExportOptions(flavor="plugin"), log=steps.append)
    assert steps == [] and list(tmp_path.iterdir()) == []


def test_an_installed_package_that_fails_to_import_is_not_called_missing(monkeypatch, tmp_path, capsys):
    """TensorRT's wheel without its system libraries raised ImportError on import, and doctor said 'not installed',
    build 'Install it with pip install'; now: installed, importing it fails, and why."""
    from moe_base.optional import installed, optional_import
    from moe_denoise.cli import main

    broken = tmp_path / "tensorrt"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('libnvonnxparser.so.11: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    assert installed("tensorrt") and not installed("no_such_module_here")
    assert "tensorrt is installed but cannot be imported (ImportError: libnvonnxparser" in optional_import("tensorrt")[1]
    assert "no_such_module_here is not importable" in optional_import("no_such_module_here")[1]
    with pytest.raises(MissingBackendError, match=r"which is installed but cannot be imported here \(ImportError: "
                                                  r"libnvonnxparser.so.11.*Reinstall it with"):
        require("tensorrt", "building TensorRT engines")
    with pytest.raises(MissingBackendError, match="which is installed but cannot be imported"):
        require("tensorrt.plugin", "the plugin layer")  # a submodule of the broken package: the same words
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "tensorrt                 installed, but importing it fails: ImportError: libnvonnxparser.so.11" in out
    assert "tensorrt is installed but cannot be imported" in out  # the TensorRT engines line says why


@pytest.mark.parametrize("look", ["require", "optional_import"])
def test_ctrl_c_during_an_import_is_a_stop_not_a_broken_install(monkeypatch, look):
    """Ctrl-C while onnxruntime's compiled module initialised came back as 'ImportError: initialization failed'
    (pybind11 wraps the KeyboardInterrupt): export said onnxruntime's install was broken, to be reinstalled, and
    exited 2 instead of 130."""
    import importlib

    from moe_base import optional
    from moe_base.errors import Interrupted

    def interrupted_import(name, package=None):
        try:
            raise Interrupted("", 15)  # SIGTERM, as the command line raises it (Ctrl-C: KeyboardInterrupt)
        except KeyboardInterrupt as stop:
            raise ImportError("initialization failed") from stop

    monkeypatch.setattr(importlib, "import_module", interrupted_import)
    with pytest.raises(Interrupted):
        getattr(optional, look)("onnxruntime")
