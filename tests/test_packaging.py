"""The wheel holds the whole toolkit: every package folder is listed in pyproject.toml, and the shipped weights
travel as package data (a non-editable 'pip install .' was checked by hand to denoise the demo byte-identically)."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setuptools_config() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs tomllib (Python 3.11+)")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_in_the_wheel():
    listed = set(_setuptools_config()["packages"])
    tops = {p.split(".")[0] for p in listed}
    found = {".".join(init.parent.relative_to(REPO).parts) for top in tops for init in (REPO / top).rglob("__init__.py")}
    assert found - listed == set(), "package folders missing from [tool.setuptools] packages in pyproject.toml"
    assert listed - found == set(), "pyproject.toml lists packages that do not exist"


def test_the_shipped_weights_are_package_data():
    from fnmatch import fnmatch

    from weights import SHIPPED

    patterns = _setuptools_config()["package-data"]["weights"]
    for path in SHIPPED.values():
        for f in (path, path.with_suffix(".json")):
            assert f.is_file() and any(fnmatch(f.name, p) for p in patterns), f"{f.name} would not be in the wheel"
