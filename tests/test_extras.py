"""tests/extras.py: a test failing for a package of the test extra that is not installed is told apart from one
failing for another reason, so that a base install reports skips naming the package, and a full one real failures."""
from pathlib import Path

import pytest

from tests import extras


@pytest.fixture
def onnx_missing(monkeypatch):
    monkeypatch.setattr(extras, "MISSING", {"onnx": "onnx", "skimage": "scikit-image"})


@pytest.mark.parametrize("text, cause", [
    ("exporting to ONNX needs the Python package 'onnx', which could not be imported here", "onnx"),
    ("the photo evaluation needs scikit-image, which is not installed: pip install 'moe-denoise[eval]'", "scikit-image"),
    ("the SSIM needs the 'skimage' package, which is not installed", "scikit-image"),
    ("ModuleNotFoundError: No module named 'onnx'", None),  # the product importing it where a base install runs
    ("exporting needs the Python package 'onnxruntime'", None),  # installed here (not in MISSING): a real failure
    ("assert 2 == 0", None),
    ("the 'onnx' model is not what its manifest says; onnx is not installed", None),  # not 'needs'
    ("assert 'TIFF' == 'PNG'; needs the Python package 'SKIMAGE'", None),  # case counts in a package name
])
def test_a_failure_is_put_down_to_a_missing_package_only_when_its_text_says_so(onnx_missing, text, cause):
    assert extras.missing_cause(text) == cause


def test_nothing_is_put_down_to_a_package_that_is_installed(monkeypatch):
    monkeypatch.setattr(extras, "MISSING", {})
    assert extras.missing_cause("exporting needs the Python package 'onnx', which could not be imported") is None
    extras.skip_when_missing("exporting to ONNX needs the Python package 'onnx', which could not be imported here")


def test_a_command_that_names_a_missing_package_skips_its_test(onnx_missing):
    with pytest.raises(pytest.skip.Exception, match=r"needs onnx, which is not installed \(the test extra"):
        extras.skip_when_missing("moe-denoise export: error: exporting to ONNX needs the Python package 'onnx', which "
                                 "could not be imported here (No module named 'onnx')")


def test_only_a_tests_own_import_of_a_missing_package_is_put_down_to_it(onnx_missing, tmp_path):
    """An ImportError the product raised (a base path importing an optional package: a bug for every base user)
    stays a failure; one a test file or a test tool raised is the test's need."""
    from tests.conftest import REPO

    def raised_in(path: Path, name: str = "onnx") -> pytest.ExceptionInfo[BaseException]:
        code = compile(f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')", str(path), "exec")
        with pytest.raises(ModuleNotFoundError) as caught:
            exec(code, {})
        return caught

    assert extras.import_cause(raised_in(REPO / "tests" / "runtime" / "test_x.py"), REPO) == "onnx"
    assert extras.import_cause(raised_in(REPO / "tools" / "trt_layer" / "drive.py"), REPO) == "onnx"
    assert extras.import_cause(raised_in(REPO / "runtime" / "images.py"), REPO) is None
    assert extras.import_cause(raised_in(REPO / "tests" / "x.py", "onnxruntime"), REPO) is None  # installed


def test_the_test_extra_is_what_pyproject_says():
    """The list of the test extra's packages here is pyproject's (as pip names them), less pytest and ruff."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    names = {req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
             for req in project["project"]["optional-dependencies"]["test"]}
    assert names - {"pytest", "ruff"} == set(extras.TEST_EXTRA.values())
