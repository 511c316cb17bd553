"""tools.serving_loadtest without servers: the bad-request probes (against a stand-in Triton client), the option
checks made before any server starts, and how a run's results and logs are written or kept."""
import http.client
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tools import serving_loadtest

COMMITTED = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serving" / "results.json"


class RefusingClient:
    """tritonclient.http.InferenceServerClient that refuses every request, naming the model asked for."""

    def __init__(self, url, **kwargs):
        self.url = url

    def infer(self, model, inputs):
        raise RuntimeError(f"refused by stand-in server: {model} {inputs[0].name()}")

    def close(self):
        pass


class EchoClient:
    """serving.client.DenoiseClient that answers each tile with itself (the references below are the tiles)."""

    retries = 0

    def __init__(self, url, timeout_s=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def denoise_tiles(self, x):
        return x


class BadRequestConnection:
    def __init__(self, host, port, timeout=None):
        pass

    def request(self, *args, **kwargs):
        pass

    def getresponse(self):
        class Response:
            status = 400

            def read(self):
                return b"truncated body"
        return Response()

    def close(self):
        pass


def test_every_bad_request_is_probed(monkeypatch):
    pytest.importorskip("tritonclient.http", reason="the probes use tritonclient (the 'serve' extra)")
    import tritonclient.http

    import serving.client

    monkeypatch.setattr(tritonclient.http, "InferenceServerClient", RefusingClient)
    monkeypatch.setattr(serving.client, "DenoiseClient", EchoClient)
    monkeypatch.setattr(http.client, "HTTPConnection", BadRequestConnection)
    tiles = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    bad = serving_loadtest.bad_requests({"urls": {"http": "127.0.0.1:1"}}, tiles, tiles, 64, 1e-4)
    # the second case called the helper rebound to a bool by the first ('bool' object is not callable)
    assert len(bad["cases"]) == 6 and bad["all_refused"]
    assert all("refused by stand-in server" in r["message"] for name, r in bad["cases"].items()
               if not name.startswith("truncated"))
    assert bad["good_stream_during"]["ok"] > 0 and bad["good_stream_during"]["failed"] == 0


def parse_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        serving_loadtest.parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


def test_options_are_checked_before_any_server_starts(capsys, tmp_path):
    out = ["--out", str(tmp_path / "out")]
    assert serving_loadtest.parse_args(out).headline == 16
    args = serving_loadtest.parse_args(["--concurrency", "1,4", *out])
    assert args.concurrency == [1, 4] and args.headline == 4  # the largest given, not a KeyError at the report
    assert "--headline 16 is not among --concurrency 1,4" in parse_error(capsys, ["--concurrency", "1,4",
                                                                                  "--headline", "16", *out])
    for bad in ("a", "0", "1,,4", "4,4"):
        assert "--concurrency" in parse_error(capsys, ["--concurrency", bad, *out])
    for option in ("--tiles", "--threads", "--rounds"):
        assert "must be >= 1, got 0" in parse_error(capsys, [option, "0", *out])
    assert "does not exist" in parse_error(capsys, ["--render", *out])
    (tmp_path / "file").write_text("")
    assert "--out" in parse_error(capsys, ["--out", str(tmp_path / "file" / "out")])


def committed_result():
    if not COMMITTED.is_file():
        pytest.skip(f"no committed results at {COMMITTED}")
    return json.loads(COMMITTED.read_text())


def test_render_writes_the_three_files_whole(tmp_path):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib")
    committed_result()
    shutil.copy(COMMITTED, tmp_path / "results.json")
    assert serving_loadtest.main(["--render", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json", "results.md", "results.png"]  # no temporaries
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| request | refused |" in (tmp_path / "results.md").read_text()


class StandInRunner:
    def activate(self):
        pass

    def deactivate(self):
        pass

    def __call__(self, x):
        return x


def stand_in_run(monkeypatch, tmp_path, measure):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.setattr(serving_loadtest, "demo_tiles", lambda n: np.zeros((n, 3, 32, 32), np.float32))
    monkeypatch.setattr(serving_loadtest, "make_direct_runner", lambda args: StandInRunner())
    monkeypatch.setattr(serving_loadtest.tempfile, "mkdtemp", lambda prefix: str(workdir))
    monkeypatch.setattr(serving_loadtest, "measure_all", measure)
    return workdir


def test_a_clean_run_removes_its_logs_and_a_failed_one_keeps_them(monkeypatch, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib")
    result = committed_result()
    workdir = stand_in_run(monkeypatch, tmp_path, lambda *a: dict(result))
    assert serving_loadtest.main(["--tiles", "2", "--out", str(tmp_path / "out")]) == 0
    assert not workdir.exists()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == result["rows"]

    def fails_late(args, runner, tiles, refs, workdir, servers, rows):
        rows.append({"arm": "direct runner", "throughput": 1.0})
        raise RuntimeError("late failure")

    workdir = stand_in_run(monkeypatch, tmp_path, fails_late)
    with pytest.raises(RuntimeError, match="late failure"):
        serving_loadtest.main(["--tiles", "2", "--out", str(tmp_path / "out2")])
    assert f"kept in {workdir}" in capsys.readouterr().err
    assert json.loads((workdir / "results.json").read_text())["rows"] == [{"arm": "direct runner", "throughput": 1.0}]
    assert not (tmp_path / "out2").exists()
