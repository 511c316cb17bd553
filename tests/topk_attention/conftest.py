"""Fixtures for the tests that run TensorRT's own plugin layer (``tensorrt.plugin`` from the bindings wheels).

The wheels are fetched once per machine into a cache (``tools/trt_layer/fetch.py``); without network access to
the package index the tests skip, saying so. Each driver run is a subprocess (the layer keeps process-wide
registries), and its report is shared by the tests of one session.
"""
import pytest

from tools.trt_layer.drive import run_in_layer
from tools.trt_layer.fetch import SUPPORTED, FetchError, layer_dir

VERSIONS = sorted(SUPPORTED.values(), key=lambda v: tuple(int(x) for x in v.split(".")))
TARGET = "cuda:90"


def fetched(version: str):
    try:
        return layer_dir(version)
    except FetchError as e:
        pytest.skip(f"TensorRT {version}'s plugin layer could not be fetched ({e}); these tests need the package "
                    f"index (pip download tensorrt-cu12-bindings=={version})")


@pytest.fixture
def fetched_layer():
    return fetched


_REPORTS: dict[str, dict] = {}


@pytest.fixture(params=VERSIONS, scope="session")
def version(request) -> str:
    fetched(request.param)
    return request.param


@pytest.fixture(scope="session")
def report(version: str) -> dict:
    """The driver's record for our plugin over ``version``'s real plugin layer."""
    if version not in _REPORTS:
        _REPORTS[version] = run_in_layer(version, ["--target", TARGET])
    rep = _REPORTS[version]
    assert rep["ok"], f"driving the plugin through TensorRT {version}'s plugin layer failed:\n" \
                      f"{rep.get('error_type')}: {rep.get('error')}\n{rep.get('traceback', '')}{rep['stderr_tail']}"
    return rep
