"""The test extra's packages this environment lacks, and how a test that needs one is skipped with its name: a base
install (`pip install -e .` and pytest) ran the suite with 39 failures saying 'No module named' or 'needs the Python
package', where the other tests needing an extra skip. Imported by tests/conftest.py and the tests whose commands
report a missing package only in their error output."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

TEST_EXTRA = {"onnx": "onnx", "onnxruntime": "onnxruntime", "onnxruntime_extensions": "onnxruntime-extensions",
              "skimage": "scikit-image", "scipy": "scipy", "bm3d": "bm3d", "png": "pypng", "tifffile": "tifffile",
              "matplotlib": "matplotlib", "triton": "triton", "polygraphy": "polygraphy", "tritonclient": "tritonclient",
              "pytriton": "nvidia-pytriton"}
"""The test extra's packages (module: what pip calls it)."""
MISSING = {module: dist for module, dist in TEST_EXTRA.items() if importlib.util.find_spec(module) is None}
"""Those this environment lacks (none where the README's test command installed them)."""


def missing_cause(text: str) -> str | None:
    """The missing package (as pip calls it) that moe-denoise's own words for a feature without its package name in
    ``text`` ('needs the Python package X', 'needs X, which is not installed'), if this environment lacks it. A bare
    'No module named' does not count: product code importing an optional package where a base install runs says
    that too, and that is the bug a base install's run is there to find (it was reported as a skip)."""
    for module, dist in MISSING.items():
        for name in {module, dist}:
            quoted = re.escape(name)
            if (re.search(rf"needs the Python package '{quoted}'", text)
                    or re.search(rf"needs (?:the )?'?{quoted}'?(?: package)?, which is not installed", text, re.I)):
                return dist
    return None


def import_cause(excinfo: pytest.ExceptionInfo[BaseException], repo: Path) -> str | None:
    """The missing package an ImportError names when the test's own code raised it (a file under tests/ or tools/ is
    the last of the repository's files on its way), if this environment lacks it; None for one the product raised."""
    error = excinfo.value
    top = (getattr(error, "name", None) or "").split(".")[0]
    if not isinstance(error, ImportError) or top not in MISSING:
        return None
    ours = [Path(str(entry.path)) for entry in excinfo.traceback if Path(str(entry.path)).is_relative_to(repo)]
    return MISSING[top] if ours and ours[-1].relative_to(repo).parts[0] in ("tests", "tools") else None


def skip_reason(dist: str) -> str:
    """Why a test that needs ``dist`` (as pip calls it) is skipped here."""
    return f"needs {dist}, which is not installed (the test extra: pip install -e '.[test]')"


def skip_when_missing(err: str) -> None:
    """Skip the running test when a command's error output ``err`` says a package of the test extra that this
    environment lacks is needed (a command's exit code alone does not say why it failed)."""
    dist = missing_cause(err) if MISSING else None
    if dist:
        pytest.skip(skip_reason(dist))
