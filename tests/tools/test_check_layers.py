"""The layer check passes on the repository and catches an upward import and a cycle when one is planted."""
import shutil

from tools import check_layers


def test_the_house_has_one_way_layers_and_no_cycles():
    offences, counts = check_layers.check()
    assert offences == []
    assert counts["moe_denoise"] > 0 and counts["moe_base"] == 0


def test_an_upward_import_and_a_cycle_are_found(tmp_path):
    for pkg in check_layers.ALLOWED:
        shutil.copytree(check_layers.REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "runtime" / "planted.py").write_text("def f():\n    from export.engine import build_engine\n")
    (tmp_path / "moe_base" / "a.py").write_text("from .b import x\n")
    (tmp_path / "moe_base" / "b.py").write_text("x = 1\n\ndef g():\n    from moe_base.a import x\n")
    offences, _ = check_layers.check(tmp_path)
    assert any("runtime/planted.py:2: runtime imports export.engine (up" in o for o in offences), offences
    assert any(o.startswith("import cycle: moe_base.a -> moe_base.b -> moe_base.a") for o in offences), offences


def test_an_import_under_type_checking_closes_no_cycle_but_counts_for_the_layers(tmp_path):
    for pkg in check_layers.ALLOWED:
        shutil.copytree(check_layers.REPO / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "moe_base" / "a.py").write_text("from .b import x\n")
    (tmp_path / "moe_base" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nx = 1\nif TYPE_CHECKING:\n    from moe_base.a import y\n")
    (tmp_path / "moe_model" / "typed.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from runtime.base import Runner\n")
    offences, _ = check_layers.check(tmp_path)
    assert not any(o.startswith("import cycle") for o in offences), offences
    assert any("moe_model/typed.py:3: moe_model imports runtime.base (up" in o for o in offences), offences
