"""The test extra's packages this environment lacks, and how a test that needs one is skipped with its name: a base
install (`pip install -e .` and pytest) ran the suite with 39 failures saying 'No module named' or 'needs the Python
package', where the other tests needing an extra skip. Imported by tests/conftest.py and the tests whose commands
report a missing package only in their error output."""
from __future__ import annotations

import importlib.util

import pytest

TEST_EXTRA = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxruntime_extensions": "onnxruntime-extensions",
              "skimage": "scikit-image", "scipy": "scipy", "bm3d": "bm3d", "png": "pypng", "tifffile": "tifffile",
              "matplotlib": "matplotlib", "triton": "triton", "polygraphy": "polygraphy", "tritonclient": "tritonclient",
              "pytriton": "nvidia-pytriton"}
"""The test extra's packages (module: what pip calls it)."""
MISSING = {module: dist for module, dist in TEST_EXTRA.items() if importlib.util.find_spec(module) is None}
"""Those this environment lacks (none where the README's test command installed them)."""


def missing_cause(text: str) -> str | None:
    """The missing package (as pip calls it) a failure's text names as what it could not import, if any: Python's
    'No module named', or moe-denoise's own 'needs <package> ... not installed / could not be imported', of a
    package this environment lacks."""
    low = text.lower()
    said_missing = "not installed" in low or "could not be imported" in low
    for module, dist in MISSING.items():
        if (f"no module named '{module}'" in low or f"no module named \\'{module}\\'" in low
                or (said_missing and (f"'{dist}'" in low or f"'{module}'" in low or f"needs {dist}," in low))):
            return dist
    return None


def skip_when_missing(err: str) -> None:
    """Skip the running test when a command's error output ``err`` says a package of the test extra that this
    environment lacks is needed (a command's exit code alone does not say why it failed)."""
    dist = missing_cause(err) if MISSING else None
    if dist:
        pytest.skip(f"needs {dist}, which is not installed (the test extra: pip install -e '.[test]')")
