"""tests/extras.py: a test failing for a package of the test extra that is not installed is told apart from one
failing for another reason, so that a base install reports skips naming the package, and a full one real failures."""
import pytest

from tests import extras


@pytest.fixture
def onnx_missing(monkeypatch):
    monkeypatch.setattr(extras, "MISSING", {"onnx": "onnx", "skimage": "scikit-image"})


@pytest.mark.parametrize("text, cause", [
    ("ModuleNotFoundError: No module named 'onnx'", "onnx"),
    ("{'error': \"No module named \\'onnx\\'\"}", "onnx"),  # the repr of a report that quotes it
    ("exporting to ONNX needs the Python package 'onnx', which could not be imported here", "onnx"),
    ("the photo evaluation needs scikit-image, which is not installed: pip install 'moe-denoise[eval]'", "scikit-image"),
    ("No module named 'onnxruntime'", None),  # installed here (not in MISSING): a real failure
    ("assert 2 == 0", None),
    ("the 'onnx' model is not what its manifest says", None),  # names the package, says nothing is missing
])
def test_a_failure_is_put_down_to_a_missing_package_only_when_its_text_says_so(onnx_missing, text, cause):
    assert extras.missing_cause(text) == cause


def test_nothing_is_put_down_to_a_package_that_is_installed(monkeypatch):
    monkeypatch.setattr(extras, "MISSING", {})
    assert extras.missing_cause("ModuleNotFoundError: No module named 'onnx'") is None
    extras.skip_when_missing("exporting to ONNX needs the Python package 'onnx', which could not be imported here")


def test_a_command_that_names_a_missing_package_skips_its_test(onnx_missing):
    with pytest.raises(pytest.skip.Exception, match=r"needs onnx, which is not installed \(the test extra"):
        extras.skip_when_missing("moe-denoise export: error: exporting to ONNX needs the Python package 'onnx', which "
                                 "could not be imported here (No module named 'onnx')")


def test_the_test_extra_is_what_pyproject_says():
    """The list of the test extra's packages here is pyproject's (as pip names them), less pytest and ruff."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    names = {req.split("[")[0].split(">")[0].split("<")[0].split("=")[0].strip()
             for req in project["project"]["optional-dependencies"]["test"]}
    assert names - {"pytest", "ruff"} == set(extras.TEST_EXTRA.values())
