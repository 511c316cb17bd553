"""tools.gpu_profile without a GPU: its output folder is checked before the first backend, and none is made for a
run that stops at once."""
import pytest

from tools import gpu_profile


def test_an_unusable_out_dir_is_refused_before_any_backend(tmp_path, monkeypatch, capsys):
    def no_backends(*args, **kwargs):
        raise AssertionError("the profile started")

    monkeypatch.setattr(gpu_profile, "run", no_backends)
    (tmp_path / "a_file").write_text("")
    for out_dir in (tmp_path / "a_file", tmp_path / "a_file" / "below"):
        with pytest.raises(SystemExit) as e:
            gpu_profile.main(["--cpu-dry-run", "--out-dir", str(out_dir)])
        assert e.value.code == 2
        assert "--out-dir: cannot write to the folder" in capsys.readouterr().err


def test_no_folder_is_made_when_the_run_stops_at_once(tmp_path, monkeypatch):
    def no_gpu(args):
        raise SystemExit("no CUDA GPU visible to torch; use --cpu-dry-run on a CPU machine")

    monkeypatch.setattr(gpu_profile, "run", no_gpu)
    with pytest.raises(SystemExit, match="no CUDA GPU"):
        gpu_profile.main(["--out-dir", str(tmp_path / "profile")])
    assert not (tmp_path / "profile").exists()


def test_the_report_names_the_backends_the_deadline_cut():
    """profile.md showed an empty table and no reason when --deadline cut every backend (the reason was in the
    JSON alone); in a GPU session, backends it cut vanished from the page without a word."""
    doc = {"mode": "gpu", "env": {"gpu": "H200", "torch": "2.11"}, "created_utc": "now", "rows": [],
           "skipped": [{"backend": "torch-masked-cuda", "reason": "deadline of 35s reached"}], "targets": {}}
    assert "Not profiled: torch-masked-cuda (deadline of 35s reached)." in gpu_profile.markdown(doc)
    assert "Not profiled" not in gpu_profile.markdown({**doc, "skipped": []})
