"""tools.rewrites_ab: the variants it times, its input check, and one tiny interleaved run."""
import json

import pytest

from export.onnx_export import DEFAULT_REWRITES
from tools import rewrites_ab


def test_variants_cover_plain_full_alone_and_left_out():
    v = rewrites_ab.variants(["fuse_qkv"], ["fold_scale,rows2d"])
    assert v["none (--no-optimize)"] == ()
    assert v["default"] == DEFAULT_REWRITES
    assert v["only fuse_qkv"] == ("fuse_qkv",)
    assert "default but fuse_qkv" not in v  # not in the default set: nothing to leave out
    assert v["fold_scale,rows2d"] == ("fold_scale", "rows2d")
    v = rewrites_ab.variants(["fold_scale"], [])
    assert "fold_scale" not in v["default but fold_scale"]
    assert len(v["default but fold_scale"]) == len(DEFAULT_REWRITES) - 1


def test_unknown_rewrite_in_a_set_is_refused_with_the_known_ones():
    with pytest.raises(SystemExit, match=r"unknown rewrites \['bogus'\]; known: .*fuse_qkv"):
        rewrites_ab.variants([], ["fold_scale,bogus"])


def test_tiny_run_times_every_variant(capsys, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is the optional 'onnx' extra")
    monkeypatch.chdir(tmp_path)  # the default --weights was 'weights/...', found from the repository's root alone
    rewrites_ab.main(["--batch", "1", "--rounds", "2", "--inner", "1",
                      "--rewrites", "fold_scale", "--json", str(tmp_path / "ab.json")])
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "ab.json").read_text())
    assert [g["graph"] for g in saved["graphs"]][:2] == ["none (--no-optimize)", "default"]
    assert all(len(g["round_ms"]) == 2 for g in saved["graphs"])
    assert "vs_plain" not in saved["graphs"][0] and saved["graphs"][1]["vs_plain"]["n"] == 2
    assert "a fresh session per graph and round" in out
    for name in ("none (--no-optimize)", "default", "only fold_scale", "default but fold_scale"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert float(line[32:].split()[0]) > 0  # p50 in ms
        assert ("[" in line) == (name != "none (--no-optimize)")  # each graph against the plain one


def test_an_unwritable_json_is_refused_before_any_timing(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded: timing was about to start")

    monkeypatch.setattr("moe_model.checkpoint.load_model", no_model)  # main imports it after parsing
    (tmp_path / "a_file").write_text("")
    for path in (tmp_path, tmp_path / "a_file" / "ab.json"):
        with pytest.raises(SystemExit) as e:
            rewrites_ab.main(["--json", str(path)])
        assert e.value.code == 2 and "--json: " in capsys.readouterr().err
