"""tools.gpu_check without a GPU: its report path is checked before the first step (device time on a lent GPU)."""
import pytest

from tools import gpu_check


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_an_unwritable_report_path_is_refused_before_any_step(tmp_path, monkeypatch, capsys, where):
    def no_steps(*args, **kwargs):
        raise AssertionError("a step ran")

    monkeypatch.setattr(gpu_check, "run", no_steps)
    (tmp_path / "a_file").write_text("")
    out = tmp_path if where == "folder" else tmp_path / "a_file" / "report.json"
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--cpu-dry-run", "--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--out: " in err and ("is a folder" if where == "folder" else "a_file") in err
