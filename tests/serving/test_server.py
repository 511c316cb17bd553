"""A real Triton server (PyTriton's tritonserver) on 127.0.0.1 with free ports: starts, serves both models,
batches concurrent requests, refuses bad requests while serving good ones, and shuts down cleanly.

Skipped with the reason where PyTriton cannot run (not installed, not Linux, no Python backend stub for this
Python). Every wait is bounded; the whole module takes about a minute on a 2-core CPU.
"""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from runtime import InputError, MissingBackendError

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "weights" / "moe_denoiser.safetensors"
DEMO = REPO / "docs" / "images" / "chelsea_noisy.png"
MAX_PIXELS = 96 * 96

pytestmark = pytest.mark.slow


def _skip_without_pytriton() -> None:
    from serving.backend_env import check_pytriton

    try:
        check_pytriton()
    except MissingBackendError as e:
        pytest.skip(f"PyTriton cannot run here: {e}")


def torch_runner():
    from runtime.torch_runner import TorchRunner

    return TorchRunner(WEIGHTS, threads=1)


@pytest.fixture(scope="module")
def server():
    _skip_without_pytriton()
    from serving import DenoiseServer, ServeConfig

    config = ServeConfig(http_port=0, grpc_port=0, metrics_port=0, max_batch=16, queue_delay_us=20_000,
                         max_image_pixels=MAX_PIXELS, image_batch=64)
    s = DenoiseServer(torch_runner, config)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def direct():
    with torch_runner() as r:
        yield r


@pytest.fixture(scope="module")
def tiles() -> np.ndarray:
    return np.random.default_rng(0).random((24, 3, 32, 32), dtype=np.float32)


def _client(url: str):
    from serving.client import DenoiseClient

    return DenoiseClient(url, timeout_s=60)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_serves_tiles_as_the_direct_runner_computes_them(server, direct, tiles, protocol):
    url = server.urls["http"] if protocol == "http" else "grpc://" + server.urls["grpc"]
    with _client(url) as c:
        assert c.ready("moe_denoiser") and c.ready("moe_denoiser_image")
        out = c.denoise_tiles(tiles[:5])
        many = c.denoise_tiles(tiles)  # 24 tiles, over the server's max_batch of 16: sent in parts (Triton refused it)
        with pytest.raises(InputError, match="no tiles to denoise"):
            c.denoise_tiles(tiles[:0])
    assert out.shape == (5, 3, 32, 32) and out.dtype == np.float32
    assert float(np.abs(out - direct(tiles[:5])).max()) <= 1e-5
    assert many.shape == (24, 3, 32, 32) and float(np.abs(many - direct(tiles)).max()) <= 1e-5


@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint16, 3), (np.uint8, 1), (np.uint8, 4)])
def test_serves_whole_photos_as_local_tiling_computes_them(server, direct, dtype, channels):
    from runtime.tiling import denoise_array
    from serving.models import image_to_unit, unit_to_image

    top = np.iinfo(dtype).max
    pixels = np.random.default_rng(channels).integers(0, top + 1, (45, 70, channels)).astype(dtype)
    with _client(server.urls["http"]) as c:
        out = c.denoise_pixels(pixels)
        flat = c.denoise_pixels(pixels[:, :, 0]) if channels == 1 else None  # gray H x W came back H x W x 1
    local = unit_to_image(denoise_array(image_to_unit(pixels), direct, batch_size=64), dtype)
    if flat is not None:
        assert flat.shape == pixels.shape[:2] and np.array_equal(flat, out[:, :, 0])
    assert out.dtype == dtype and out.shape == pixels.shape
    assert int(np.abs(out.astype(np.int64) - local).max()) == 0
    if channels == 4:
        np.testing.assert_array_equal(out[:, :, 3], pixels[:, :, 3])  # alpha passes through


def _burst(server, tiles) -> tuple[int, int]:
    """16 one-tile requests released together; Triton's (inferences, executions) for them."""
    from serving.client import batching_counts

    before = batching_counts(server.urls["metrics"])
    barrier = threading.Barrier(16)
    answers: list[np.ndarray | Exception] = []

    def one(i: int) -> None:
        with _client(server.urls["http"]) as c:
            barrier.wait(timeout=30)
            try:
                answers.append(c.denoise_tiles(tiles[i:i + 1]))
            except InputError as e:
                answers.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(answers) == 16 and all(isinstance(a, np.ndarray) for a in answers)
    # the metrics can trail the answers on a loaded machine (7 of 16 inferences counted once, every answer in):
    # read them until the 16 are there, for a few seconds at most
    deadline = time.monotonic() + 10
    after = batching_counts(server.urls["metrics"])
    while after["inferences"] - before["inferences"] < 16 and time.monotonic() < deadline:
        time.sleep(0.2)
        after = batching_counts(server.urls["metrics"])
    return after["inferences"] - before["inferences"], after["executions"] - before["executions"]


def test_batches_concurrent_requests(server, tiles):
    # On a loaded 2-core machine 16 threads can miss one 20 ms batching window by chance, so up to three bursts
    # are sent; a server that never batches fails all three.
    seen = []
    for _ in range(3):
        inferences, executions = _burst(server, tiles)
        assert inferences == 16  # one tile per request
        seen.append(executions)
        if executions < inferences:
            break
    assert min(seen) < 16, f"Triton ran {seen} executions for 16 one-tile requests in each of {len(seen)} bursts"


def _raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    host, port = url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        conn.close()


def test_refuses_bad_requests_and_keeps_serving(server, direct, tiles):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    raw = httpclient.InferenceServerClient(server.urls["http"], network_timeout=60)

    def send(model: str, name: str, array: np.ndarray, dtype: str) -> str:
        feed = httpclient.InferInput(name, list(array.shape), dtype)
        feed.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as e:
            raw.infer(model, [feed])
        return e.value.message()

    assert "unexpected shape" in send("moe_denoiser", "noisy", tiles[:1, :, :16, :16].copy(), "FP32")
    assert "FP64" in send("moe_denoiser", "noisy", tiles[:1].astype(np.float64), "FP64")
    nan = tiles[:2].copy()
    nan[1, 2, 3, 4] = np.nan
    assert "NaN" in send("moe_denoiser", "noisy", nan, "FP32")
    assert "[0, 1]" in send("moe_denoiser", "noisy", tiles[:1] + 2, "FP32")
    too_big = np.zeros((97, 97, 3), np.uint8)
    assert f"at most {MAX_PIXELS:,} pixels" in send("moe_denoiser_image", "image_u8", too_big, "UINT8")
    header = json.dumps({"inputs": [{"name": "noisy", "shape": [1, 3, 32, 32], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 12288}}]}).encode()
    status, text = _raw_post(server.urls["http"], "/v2/models/moe_denoiser/infer", header + b"\0" * 1000,
                             {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "unexpected size" in text
    raw.close()
    with _client(server.urls["http"]) as c:  # still serving
        assert float(np.abs(c.denoise_tiles(tiles[:2]) - direct(tiles[:2])).max()) <= 1e-5
        with pytest.raises(InputError, match="NaN"):  # our client shows the reason, not PyTriton's traceback
            c.denoise_tiles(nan)


def test_denoise_command_tiles_on_the_client_for_a_server_without_the_image_model(tmp_path, direct, capsys):
    """A standard repository has no photo model: `denoise --server` then tiles here and sends batches of tiles; the
    photo and the guard's decision (made here) are the local run's."""
    _skip_without_pytriton()
    from moe_denoise.cli import main
    from runtime.images import read_image
    from serving import DenoiseServer, ServeConfig

    photo = tmp_path / "small.png"
    from PIL import Image

    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 52, 3)).astype(np.uint8)).save(photo)
    s = DenoiseServer(torch_runner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0, max_batch=8))
    s.serve_image_model = False
    with s:
        capsys.readouterr()  # the server's own log lines
        assert main(["denoise", str(photo), "-o", str(tmp_path / "remote.png"), "--server", s.urls["http"],
                     "--json"]) == 0
        served = json.loads(capsys.readouterr().out)
    capsys.readouterr()  # what stopping the server printed
    assert main(["denoise", str(photo), "-o", str(tmp_path / "local.png"), "--backend", "torch", "--threads", "1",
                 "--batch-size", "8", "--no-progress", "--json"]) == 0
    here = json.loads(capsys.readouterr().out)
    remote, local = read_image(tmp_path / "remote.png")[0], read_image(tmp_path / "local.png")[0]
    assert float(np.abs(remote - local).max()) == 0.0
    assert served["tiled_by"] == "client" and served["guard"] == here["guard"] is not None
    assert served["input_weight"] == here["input_weight"]
    assert (served["tiles"], served["overlap"], served["batch_size"]) == (here["tiles"], here["overlap"], 8)
    assert served["denoised_by"] == f"the tile model moe_denoiser on the server at {s.urls['http']}"


# --- the command line: `moe-denoise serve` in its own process, as a user runs it -------------------------------
def _session_processes(sid: int) -> list[int]:
    """Processes still in the session the server was started in (tritonserver, stubs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # field 6 of stat: session id
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def python_envs_removed():
    """A killed or crashed tritonserver leaves the empty /tmp/python_env_* folder its Python backend makes for each
    model. A test that kills one removes those that appeared while it ran (rmdir: only when empty, so a live
    server's environment is never touched), so that a test run leaves nothing in /tmp."""
    before = set(Path("/tmp").glob("python_env_*"))
    yield
    for folder in set(Path("/tmp").glob("python_env_*")) - before:
        try:
            folder.rmdir()
        except OSError:
            pass


def _wait_session_empty(sid: int, timeout_s: float = 30.0) -> list[str]:
    """Command lines of the session's processes still alive after ``timeout_s`` (children may take a moment)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = _session_processes(sid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out = []
    for pid in left:
        try:
            out.append(f"{pid}: " + Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            continue
    return out


def _start_cli(tmp_path: Path, *extra: str, env: dict[str, str] | None = None,
               stdout: Path | None = None) -> tuple[subprocess.Popen, dict]:
    """serve, started and ready; its stderr (and its stdout, unless ``stdout`` names a file for it) in serve.log."""
    ready = tmp_path / "ready.json"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moe_denoise.cli", "serve", "--backend", "torch", "--threads", "1", "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(ready), *extra],
        cwd=REPO, stdout=log if stdout is None else open(stdout, "w"), stderr=log if stdout else subprocess.STDOUT,
        start_new_session=True,
        env=None if env is None else {**os.environ, **env})
    deadline = time.monotonic() + 180
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=30)
            pytest.fail(f"moe-denoise serve did not start:\n{(tmp_path / 'serve.log').read_text()}")
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())


def _stop(proc: subprocess.Popen, sig: int, group: bool) -> int:
    if group:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does: the whole foreground group gets SIGINT
    else:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        pytest.fail("moe-denoise serve did not stop within 90 s")


def _guard_lines(printed: str) -> str:
    """The clean-input guard's and the strength's lines of a `denoise` run's text output."""
    return "\n".join(line for line in printed.splitlines() if line.startswith(("  clean-input guard", "  strength")))


def test_serve_command_denoise_server_equals_local_then_sigterm(tmp_path, capsys):
    """The done-when path: `moe-denoise serve`, then `moe-denoise denoise PHOTO --server URL -o OUT` equals the
    local `denoise` with the same backend; the output is never overwritten without --overwrite; SIGTERM stops it."""
    _skip_without_pytriton()
    from moe_denoise.cli import main
    from runtime.images import read_image

    proc, info = _start_cli(tmp_path)
    try:
        assert info["runner"] == "torch-masked (weights blind)"  # what serves, said in the ready line too
        assert "with torch-masked (weights blind);" in (tmp_path / "serve.log").read_text()
        url = info["urls"]["http"]
        remote = tmp_path / "remote.png"
        assert main(["denoise", str(DEMO), "-o", str(remote), "--server", url, "--no-progress"]) == 0
        assert main(["denoise", str(DEMO), "-o", str(remote), "--server", url]) == 2  # exists, no --overwrite
        assert main(["denoise", str(DEMO), "-o", str(remote), "--server", "grpc://" + info["urls"]["grpc"],
                     "--overwrite", "--check-local", "--backend", "torch", "--threads", "1"]) == 0
        assert "max abs difference from a local run with torch-masked (weights blind): 0 of 255 levels" in capsys.readouterr().out
        in_place = tmp_path / "in_place.png"  # the served result replaced the input before the local run read it:
        shutil.copy(DEMO, in_place)  # 34 levels 'different' between identical runs
        assert main(["denoise", str(in_place), "-o", str(in_place), "--server", url, "--overwrite", "--check-local",
                     "--backend", "torch", "--threads", "1"]) == 0
        assert "max abs difference from a local run with torch-masked (weights blind): 0 of 255 levels" in capsys.readouterr().out
        jpeg = tmp_path / "noisy.jpg"  # a noisy JPEG: the guard reads the noise at two scales, on both sides
        from PIL import Image

        smooth = 0.5 + 0.2 * np.sin(np.arange(96) / 9.0)[:, None] * np.cos(np.arange(96) / 7.0)
        noisy = np.clip(smooth + 10 / 255 * np.random.default_rng(12).standard_normal((96, 96)), 0, 1)
        Image.fromarray(np.rint(noisy * 255).astype(np.uint8)).save(jpeg, quality=70)
        assert main(["denoise", str(jpeg), "-o", str(tmp_path / "noisy.png"), "--server", "grpc://" +
                     info["urls"]["grpc"], "--check-local", "--backend", "torch", "--threads", "1"]) == 0
        served = capsys.readouterr().out
        assert "max abs difference from a local run with torch-masked (weights blind): 0 of 255 levels" in served
        # the server sends its guard decision back: the remote run prints the local run's guard line
        assert main(["denoise", str(jpeg), "-o", str(tmp_path / "noisy_here.png"), "--backend", "torch",
                     "--threads", "1"]) == 0
        assert "read at two scales" in _guard_lines(served) and _guard_lines(served) == _guard_lines(
            capsys.readouterr().out)
        # several photos into a folder; the JPEG stays JPEG, and --check-local compares it with a local run
        # written as JPEG too (against the pixels before encoding it differed by JPEG's own rounding)
        assert main(["denoise", str(DEMO), str(jpeg), "-o", str(tmp_path / "batch"), "--server", url,
                     "--check-local", "--backend", "torch", "--threads", "1", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert out.count("max abs difference from a local run with torch-masked (weights blind): 0 of 255 levels") == 2
        assert "denoised 2 of 2 photos into" in out
        assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == sorted([DEMO.name, "noisy.jpg"])
        assert main(["denoise", str(DEMO), "-o", str(tmp_path / "half.png"), "--server", url, "--strength", "0.5",
                     "--check-local", "--backend", "torch", "--threads", "1", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert "0 of 255 levels" in out
        assert main(["denoise", str(DEMO), "-o", str(tmp_path / "half_here.png"), "--strength", "0.5", "--backend",
                     "torch", "--threads", "1", "--no-progress"]) == 0
        here = capsys.readouterr().out
        assert "strength 0.5: output = 0.50 x input" in _guard_lines(out) and _guard_lines(out) == _guard_lines(here)
    finally:
        rc = _stop(proc, signal.SIGTERM, group=False)
    assert rc == 0, (tmp_path / "serve.log").read_text()
    assert _wait_session_empty(proc.pid) == []
    assert "stopped" in (tmp_path / "serve.log").read_text()
    local = tmp_path / "local.png"
    assert main(["denoise", str(DEMO), "-o", str(local), "--backend", "torch", "--threads", "1", "--no-progress"]) == 0
    a, b = read_image(remote)[0], read_image(local)[0]
    assert a.shape == b.shape and float(np.abs(a - b).max()) == 0.0


def test_serve_command_stops_on_ctrl_c(tmp_path):
    """Ctrl-C stops the server; with a large photo in progress, a second Ctrl-C abandons it at once (its client is
    told to send it again). A server stopped with a photo in progress computed it to the end for nobody: a
    2560x2560 photo kept it alive for 63 s, past Triton's own 25 s drain."""
    _skip_without_pytriton()
    from serving.client import DenoiseClient

    proc, info = _start_cli(tmp_path, "--no-dynamic-batching", "--max-image-pixels", str(1 << 21))
    assert info["config"]["dynamic_batching"] is False
    assert info["config"]["image_batch"] == 64  # the size used on a CPU (it said null)
    photo = np.random.default_rng(3).integers(0, 256, (1024, 2048, 3), dtype=np.uint8)  # 20-30 s here
    answers: list[BaseException | np.ndarray] = []

    def send() -> None:
        try:
            with DenoiseClient("grpc://" + info["urls"]["grpc"], timeout_s=120) as client:
                answers.append(client.denoise_pixels(photo))
        except BaseException as e:  # noqa: BLE001 - the test reads it
            answers.append(e)

    cpu_before = _cpu_seconds(proc.pid)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    deadline = time.monotonic() + 60
    while _cpu_seconds(proc.pid) - cpu_before < 2 and time.monotonic() < deadline:  # the photo is being denoised
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1)
    t0 = time.monotonic()
    rc = _stop(proc, signal.SIGINT, group=True)
    # a wall-clock bound in a slow integration test, kept on purpose: the bug it guards kept the server up for the
    # photo's whole computation (63 s for a large one; the rest of this one's 20-30 s), and a stop takes a few s
    assert rc == 0 and time.monotonic() - t0 < 15, (time.monotonic() - t0, (tmp_path / "serve.log").read_text())
    sender.join(timeout=30)
    assert answers and isinstance(answers[0], InputError), answers
    assert "abandoned" in str(answers[0]) or "closed the connection" in str(answers[0]), answers[0]
    assert "received again: photos in progress are abandoned now" in (tmp_path / "serve.log").read_text()
    assert _wait_session_empty(proc.pid) == []
    assert not (tmp_path / "ready.json").exists()  # it held the URLs of a server that is gone


def test_a_request_that_crashes_tritonserver_ends_serve_with_a_plain_account(tmp_path, python_envs_removed):
    """An HTTP request whose JSON body declares an enormous shape makes the tritonserver bundled with PyTriton 0.7
    abort (std::bad_alloc) before any of our code runs. serve then exits 1 at once, saying so and what to run it
    under; the model copies Triton made in the temporary folder are removed (two were left a crash) and its log is
    kept. (Should a PyTriton release refuse the request instead, the server must keep serving.)"""
    _skip_without_pytriton()
    left_before = set(_orphan_model_copies())  # by servers killed before this test (not ours to judge)
    proc, info = _start_cli(tmp_path, "--json", stdout=tmp_path / "serve.json")
    host, port = info["urls"]["http"].rsplit(":", 1)
    body = json.dumps({"inputs": [{"name": "image_u8", "shape": [10000000, 100000, 3], "datatype": "UINT8",
                                   "data": [1, 2, 3]}]})
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", "/v2/models/moe_denoiser_image/infer", body=body,
                           headers={"Content-Type": "application/json"})
        status = connection.getresponse().status
    except (OSError, http.client.HTTPException):
        status = None  # the connection died with the server
    finally:
        connection.close()
    try:
        rc = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # it survived: the request must have been refused, and serving goes on
        assert status is not None and status >= 400, status  # refused (no allocation of 3 TB can succeed)
        from serving.client import DenoiseClient

        with DenoiseClient(info["urls"]["http"]) as client:
            assert client.denoise_pixels(np.zeros((40, 40, 3), np.uint8)).shape == (40, 40, 3)
        assert _stop(proc, signal.SIGTERM, group=False) == 0
        return
    printed = (tmp_path / "serve.log").read_text()
    assert rc == 1 and "the Triton server stopped on its own: it crashed or was killed" in printed, printed
    assert "Restart=on-failure" in printed and "Exposing the server" in printed
    kept = Path(printed.split("Triton's log (", 1)[1].split(",", 1)[0])
    assert kept.is_file() and kept.stat().st_size > 0
    shutil.rmtree(kept.parent)
    assert set(_orphan_model_copies()) - left_before == set()
    assert _wait_session_empty(proc.pid) == []
    # --json: stdout holds the JSON alone (tritonserver's children wrote the crash's backtrace after it), and the
    # python_env_* folder Triton's Python backend leaves after a crash is removed, unless another tritonserver runs
    # here (this module's own server, say; then it is kept, and said): an empty one may be that server's, which
    # aborted at its stop without it
    assert json.loads((tmp_path / "serve.json").read_text())["urls"] == info["urls"]
    removed = re.findall(r"\] removed (.*), left behind by tritonserver's Python backend", printed)
    kept = re.findall(r"\] kept (.*), left behind by tritonserver's Python backend: another tritonserver runs", printed)
    assert removed or kept, printed
    for folder in (removed[0].split(", ") if removed else []):
        assert not Path(folder).exists(), printed


def test_a_tritonserver_that_dies_at_start_is_said_at_once(monkeypatch, python_envs_removed):
    """A tritonserver that cannot start (here: its libraries not found, as with PyTriton installed where it does not
    look) left serve waiting PyTriton's 120 s, deaf to Ctrl-C, and then blamed the ports. The start now ends within
    a poll of the process ending, saying so."""
    _skip_without_pytriton()
    import pytriton.triton

    from serving import DenoiseServer, ServeConfig

    monkeypatch.setattr(pytriton.triton, "get_libs_path", lambda: Path("/nonexistent/moe-denoise-test-libs"))
    server = DenoiseServer(torch_runner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    t0 = time.monotonic()
    with pytest.raises(MissingBackendError, match=r"the Triton server could not start: tritonserver exited during "
                                                  r"start-up, before it was ready") as e:
        server.start()
    # a wall-clock bound in a slow integration test, kept on purpose: the bug it guards waited PyTriton's 120 s, and
    # a start that notices the death within a poll takes seconds; 60 s leaves room for a loaded machine
    assert time.monotonic() - t0 < 60, "the death was not noticed before PyTriton's own 120 s limit"
    assert "ports" not in str(e.value)
    if "its log, " in str(e.value):  # the log it names is kept (it was removed as the start failed)
        kept = Path(str(e.value).split("its log, ", 1)[1].split(", ends with", 1)[0])
        assert kept.is_file()
        shutil.rmtree(kept.parent)
    assert server._triton is None and server._runners == []  # stopped: runners released


def test_a_stop_asked_while_triton_starts_ends_the_start(python_envs_removed, monkeypatch):
    """Ctrl-C or SIGTERM while tritonserver started did nothing until it was ready (PyTriton's wait holds its lock);
    the start now ends at the next poll with StartAbandoned (asked), which serve reports as a stop."""
    _skip_without_pytriton()
    import pytriton.models.manager

    from serving import DenoiseServer, ServeConfig
    from serving.server import StartAbandoned

    loaded: list[str] = []
    real_load = pytriton.models.manager.ModelManager.load_models

    def load_models(self) -> None:  # PyTriton loads the models once tritonserver answered 'ready'
        loaded.append("models")
        real_load(self)

    monkeypatch.setattr(pytriton.models.manager.ModelManager, "load_models", load_models)
    server = DenoiseServer(torch_runner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))

    def stop_once_triton_is_made() -> None:  # what the signal handler does, while tritonserver starts
        deadline = time.monotonic() + 120
        while server._triton is None and time.monotonic() < deadline:
            time.sleep(0.005)
        server.request_stop()

    asker = threading.Thread(target=stop_once_triton_is_made)
    asker.start()
    try:
        with pytest.raises(StartAbandoned, match="stopped \\(Ctrl-C or SIGTERM\\) before the server was ready") as e:
            server.start()
        assert e.value.asked and server._triton is None
        assert loaded == [], "the start went on to load the models: the stop was acted on only once Triton was up"
    finally:
        asker.join()
        server.stop()


def test_a_start_that_fails_after_a_stop_was_asked_is_the_stop(monkeypatch, python_envs_removed):
    """Ctrl-C in a terminal reaches tritonserver too (PyTriton starts it in serve's process group): it exits, and the
    start failed as "tritonserver exited during start-up" or "could not start ... check that the ports are free"
    (exit 2). A failure once a stop was asked is now the stop (exit 130)."""
    _skip_without_pytriton()
    import serving.server
    from serving import DenoiseServer, ServeConfig
    from serving.server import StartAbandoned

    real = serving.server.watched_triton

    def failing_after_the_stop(triton_class, server):
        class Failing(real(triton_class, server)):
            def _wait_for_server(self) -> None:
                server.request_stop()  # the signal handler's part
                raise ConnectionError("connection closed")  # tritonserver, stopped by the same Ctrl-C

        return Failing

    monkeypatch.setattr(serving.server, "watched_triton", failing_after_the_stop)
    server = DenoiseServer(torch_runner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    with pytest.raises(StartAbandoned, match="stopped \\(Ctrl-C or SIGTERM\\) before the server was ready") as e:
        server.start()
    assert e.value.asked and server._triton is None


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _orphan_model_copies() -> list[Path]:
    """tritonserver's copies of our models in the temporary folder whose PyTriton workspace is gone: left by a
    server that is no longer running (a live server's copies name a workspace that exists)."""
    import re
    import tempfile

    out = []
    for root in {Path(tempfile.gettempdir()), Path("/tmp")}:
        for folder in root.glob("folder*"):
            try:
                config = (folder / "config.pbtxt").read_text(errors="replace")
            except OSError:
                continue
            workspace = re.search(r'key: "workspace-path"\s*value\s*\{\s*string_value: "([^"]+)"', config)
            if "moe_denoiser" in config and workspace and not Path(workspace.group(1)).exists():
                out.append(folder)
    return out


@pytest.mark.parametrize("mode", ["I;16", "1", "RGBA"])
def test_remote_files_keep_mode_and_bit_depth_and_equal_local(server, direct, tmp_path, mode):
    """`denoise --server` writes the served integers as they are: a 16-bit gray, a 1-bit and an RGBA file come out
    in their own mode, equal to a local run's file."""
    from PIL import Image

    from runtime.photo import denoise_file
    from serving.client import denoise_file_remote

    rng = np.random.default_rng(7)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (40, 52)).astype(np.uint16))
    elif mode == "1":
        img = Image.fromarray(rng.integers(0, 2, (40, 52)).astype(bool))
    else:
        img = Image.fromarray(rng.integers(0, 256, (40, 52, 4)).astype(np.uint8), "RGBA")
    photo = tmp_path / "in.png"
    img.save(photo)
    report = denoise_file_remote(photo, tmp_path / "remote.png", server.urls["http"])
    denoise_file(photo, tmp_path / "local.png", direct, batch_size=64, progress=False)
    remote, local = Image.open(tmp_path / "remote.png"), Image.open(tmp_path / "local.png")
    assert remote.mode == local.mode == img.mode and report["tiled_by"] == "server"
    np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))
    here = denoise_file(photo, tmp_path / "again.png", direct, batch_size=64, progress=False)
    assert [report[k] for k in ("tiles", "overlap", "batch_size")] == [here[k] for k in ("tiles", "overlap",
                                                                                          "batch_size")]
    sent = {**direct.describe(), "weights": Path(direct.describe()["weights"]).name}  # its file by name alone
    assert report["backend"] == sent  # the server's runner, sent with the photo
    assert report["denoised_by"] == f"torch-masked (weights blind) on the server at {server.urls['http']}"


def test_remote_bad_quality_is_refused_before_the_server_is_asked(tmp_path):
    pytest.importorskip("tritonclient.http", reason="tritonclient (the 'serve' extra) is not installed")
    from serving.client import denoise_file_remote
    from serving.config import free_port

    with pytest.raises(InputError, match="quality is a JPEG"):
        denoise_file_remote(DEMO, tmp_path / "x.jpg", f"127.0.0.1:{free_port()}", quality=0)
    assert list(tmp_path.iterdir()) == []


def test_denoise_server_unreachable_says_what_to_do(tmp_path, capsys):
    pytest.importorskip("tritonclient.http", reason="tritonclient (the 'serve' extra) is not installed")
    from moe_denoise.cli import main
    from serving.config import free_port

    port = free_port()
    assert main(["denoise", str(DEMO), "-o", str(tmp_path / "x.png"), "--server", f"127.0.0.1:{port}",
                 "--timeout", "5"]) == 2
    assert "moe-denoise serve" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_check_local_asks_the_server_before_the_local_run(tmp_path, monkeypatch, capsys):
    """denoise --server URL --check-local ran the whole local denoise (minutes of CPU on a large photo) before it
    found the server was not there."""
    pytest.importorskip("tritonclient.http", reason="tritonclient (the 'serve' extra) is not installed")
    import moe_denoise.commands.denoise as denoise_cmd
    from moe_denoise.cli import main
    from serving.config import free_port

    def local_run(*args, **kwargs):
        raise AssertionError("the local run started before the server was asked")

    monkeypatch.setattr(denoise_cmd, "local_run", local_run)
    assert main(["denoise", str(DEMO), "-o", str(tmp_path / "x.png"), "--server", f"127.0.0.1:{free_port()}",
                 "--timeout", "5", "--check-local"]) == 2
    assert re.search(r"no ready Triton server at .* start one with 'moe-denoise serve'", capsys.readouterr().err)
    assert not (tmp_path / "x.png").exists()


def test_a_runner_that_cannot_start_fails_before_triton_with_its_own_message():
    _skip_without_pytriton()
    from serving import DenoiseServer, ServeConfig

    made = []

    def factory():
        if made:
            raise InputError("the ONNX model 'missing.onnx' does not exist; export one with 'moe-denoise export'")
        made.append(torch_runner())
        return made[0]

    s = DenoiseServer(factory, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    with pytest.raises(InputError, match="missing.onnx"):
        s.start()
    assert not s.is_alive() and not made[0].is_active  # the runner made before the failure was released


def test_jpeg_photos_are_read_at_two_scales_and_match_local(server, direct):
    """The guard's two-scale reading in the server: asked for by the request parameter (`denoise --server` sends
    it for a JPEG file; it changes the answer on a photo that is not JPEG, so it reached the server), and taken
    without it for pixels that were JPEG-compressed, as 'moe-denoise denoise' reads a file. Each answer is the
    local result."""
    import io

    from PIL import Image

    from runtime.tiling import denoise_array
    from serving.models import image_to_unit, unit_to_image

    rng = np.random.default_rng(12)
    smooth = np.clip(0.5 + 0.2 * np.sin(np.arange(96) / 9.0)[:, None] * np.cos(np.arange(96) / 7.0), 0, 1)
    noisy = np.clip(smooth + 10 / 255 * rng.standard_normal((96, 96)), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(noisy * 255).astype(np.uint8)).save(buffer, "JPEG", quality=70)
    was_jpeg = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))[:, :, None]
    camera = pytest.importorskip("skimage.data", reason="scikit-image (the test extra) holds the photo").camera()
    lossless = np.ascontiguousarray(camera[300:396, 100:196, None])  # clean: the guard's weight depends on the reading

    def local(pixels: np.ndarray, two_scales: bool) -> np.ndarray:
        return unit_to_image(denoise_array(image_to_unit(pixels), direct, batch_size=64, two_scales=two_scales),
                             np.uint8)

    with _client(server.urls["http"]) as c:
        asked, not_asked = c.denoise_pixels(lossless, two_scales=True), c.denoise_pixels(lossless)
        found = c.denoise_pixels(was_jpeg)
    assert np.array_equal(asked, local(lossless, True)) and np.array_equal(not_asked, local(lossless, False))
    assert not np.array_equal(asked, not_asked)  # the parameter reached the guard
    assert np.array_equal(found, local(was_jpeg, True)) and not np.array_equal(found, local(was_jpeg, False))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_photo_answer_carries_the_guard_decision(server, direct, protocol):
    """The photo model answers with its guard decision next to the photo, over both protocols: the decision a local
    run makes (exactly, through JSON), given sigma or estimated; none with the guard off."""
    from runtime.tiling import denoise_array_guarded
    from serving.models import image_to_unit, unit_to_image

    url = server.urls["http"] if protocol == "http" else "grpc://" + server.urls["grpc"]
    pixels = np.clip(np.random.default_rng(14).normal(128, 4, (40, 56, 3)), 0, 255).astype(np.uint8)
    with _client(url) as c:
        for options in ({}, {"sigma": 0.004, "strength": 0.5}, {"guard": False}):
            out, decision = c.denoise_photo(pixels, **options)
            local, local_decision = denoise_array_guarded(image_to_unit(pixels), direct, batch_size=64, **options)
            assert np.array_equal(out, unit_to_image(local, np.uint8)), options
            assert decision == (None if local_decision is None else local_decision.as_dict()), options
        assert c.denoise_photo(pixels)[1]["applied"]  # a quiet photo: the guard blended the input back in


def test_guard_options_are_request_parameters_and_match_local(server, direct):
    """The photo model's `strength`, `sigma` and `guard` parameters (sent by `denoise --server --strength/--sigma/
    --no-guard`) reach it over the protocol: each answer is the local result with those options; a strength out of
    range is refused with the reason, naming the parameter."""
    from runtime.tiling import denoise_array
    from serving.models import image_to_unit, unit_to_image

    rng = np.random.default_rng(13)
    pixels = np.clip(rng.normal(128, 30, (40, 56, 3)), 0, 255).astype(np.uint8)
    with _client(server.urls["http"]) as c:
        for strength in (0.0, 0.35, 1.0):
            local = unit_to_image(denoise_array(image_to_unit(pixels), direct, batch_size=64, strength=strength),
                                  np.uint8)
            assert np.array_equal(c.denoise_pixels(pixels, strength=strength), local), strength
        assert np.array_equal(c.denoise_pixels(pixels, strength=0.0), pixels)
        assert np.array_equal(c.denoise_pixels(pixels, sigma=0.0), pixels)  # told it is clean: given back
        unguarded = unit_to_image(denoise_array(image_to_unit(pixels), direct, batch_size=64, guard=False), np.uint8)
        assert np.array_equal(c.denoise_pixels(pixels, guard=False, strength=0.35),
                              unit_to_image(denoise_array(image_to_unit(pixels), direct, batch_size=64, guard=False,
                                                          strength=0.35), np.uint8))
        assert np.array_equal(c.denoise_pixels(pixels, guard=False), unguarded)
        for bad in (1.5, float("nan")):
            with pytest.raises(InputError, match="request parameter 'strength' is how much of the denoising"):
                c.denoise_pixels(pixels, strength=bad)


def test_a_killed_server_leaves_a_workspace_the_next_start_removes(tmp_path, python_envs_removed):
    """SIGKILL (or the kernel's out-of-memory killer) gives serve no chance to remove PyTriton's workspace, a 22 MB
    copy of Triton; each one stayed in ~/.cache/pytriton for ever. It is named after the server's process now, and
    the next start removes those whose process is gone (tritonserver itself ends with its parent)."""
    _skip_without_pytriton()
    home = Path(tempfile.mkdtemp(prefix="pth"))  # short: Triton's Unix sockets are made in the workspace
    try:
        _killed_server_run(tmp_path, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_hang_up_to_the_whole_group_stops_serve_cleanly(tmp_path):
    """A closed terminal sends SIGHUP to serve's whole process group. serve stops on it as on SIGTERM (it died at
    once); tritonserver, which sets no SIGHUP handler, would exit at once (129, draining nothing) but for PyTriton
    starting it with SIGHUP ignored (its 'sh' runs background commands so; kept across exec, by its stubs too).
    This checks that this still holds, and that the stop is serve's own, clean one."""
    _skip_without_pytriton()
    proc, _ = _start_cli(tmp_path)
    try:
        triton = [pid for pid in _session_processes(proc.pid) if "bin/tritonserver" in _text(Path(f"/proc/{pid}/cmdline"))]
        assert len(triton) == 1
        ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", _text(Path(f"/proc/{triton[0]}/status")))[1], 16)
        assert ignored & (1 << (signal.SIGHUP - 1)), "tritonserver would end on a terminal's hang-up"
    finally:
        rc = _stop(proc, signal.SIGHUP, group=True)
    printed = (tmp_path / "serve.log").read_text()
    assert rc == 0 and "SIGHUP received: stopping" in printed and printed.rstrip().endswith("stopped"), printed
    assert _wait_session_empty(proc.pid) == []


def test_a_killed_serve_with_a_grpc_request_in_flight_takes_tritonserver_with_it(tmp_path, python_envs_removed):
    """serve killed outright (SIGKILL, the out-of-memory killer) while a gRPC request is in flight: the orphaned
    tritonserver hung in its exit, holding the ports, until that client gave up (its --timeout, an hour by default).
    Its watchdog now kills it WATCHDOG_GRACE_S after serve is gone, and the client is told the connection was lost
    during the request (it was told 'cannot reach a Triton server ... start one')."""
    _skip_without_pytriton()
    from PIL import Image

    from serving.server import WATCHDOG_GRACE_S

    photo = tmp_path / "large.png"  # about 4,000 tiles: minutes on one CPU thread, so still in flight when killed
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)).save(photo)
    log = tmp_path / "triton.log"
    home = Path(tempfile.mkdtemp(prefix="pth"))  # its own: the killed server's workspace and model copies are removed
    proc, info = _start_cli(tmp_path, "--max-image-pixels", str(1024 * 1024), "--log-file", str(log), "--verbose",
                            env={"PYTRITON_HOME": str(home)})
    try:
        triton = [pid for pid in _session_processes(proc.pid) if "bin/tritonserver" in _text(Path(f"/proc/{pid}/cmdline"))]
        assert len(triton) == 1
        client = subprocess.Popen(
            [sys.executable, "-m", "moe_denoise.cli", "denoise", str(photo), "-o", str(tmp_path / "out.png"),
             "--server", f"grpc://{info['urls']['grpc']}", "--timeout", "600"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 60  # the photo reached the model (Triton's verbose log says so)
        while "model moe_denoiser_image, instance" not in _text(log) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "model moe_denoiser_image, instance" in _text(log), "the client's request never reached the model"
        proc.kill()  # serve alone, as the kernel's out-of-memory killer does: not its process group
        proc.wait(timeout=30)
        gone_by = time.monotonic() + WATCHDOG_GRACE_S + 20
        while Path(f"/proc/{triton[0]}").exists() and "Z" not in _text(Path(f"/proc/{triton[0]}/stat")).split(")")[-1][:3]:
            assert time.monotonic() < gone_by, "tritonserver outlived the serve that started it"
            time.sleep(0.5)
        out, _ = client.communicate(timeout=60)
        assert client.returncode == 2 and "closed the connection before answering" in out, out
        assert not (tmp_path / "out.png").exists()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        from serving.server import remove_dead_workspaces

        remove_dead_workspaces(home)  # and tritonserver's copies of its models in /tmp
        shutil.rmtree(home, ignore_errors=True)


def _bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _killed_server_run(tmp_path: Path, home: Path) -> None:
    from serving.server import WORKSPACE_PREFIX, remove_dead_workspaces

    # its own log file: a killed server keeps its log folder in /tmp otherwise (for the crash; kept on purpose)
    proc, _ = _start_cli(tmp_path, "--log-file", str(tmp_path / "triton.log"), env={"PYTRITON_HOME": str(home)})
    ours = list(home.glob(f"{WORKSPACE_PREFIX}{proc.pid}-*"))
    assert len(ours) == 1 and (ours[0] / "model-store").is_dir()
    watchdog = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
                and f"watchdog.py\0{proc.pid}\0".encode() in _bytes(p / "cmdline")]
    assert len(watchdog) == 1 and watchdog[0] not in _session_processes(proc.pid)  # a session of its own
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _wait_session_empty(proc.pid) == [] and ours[0].is_dir()
    gone_by = time.monotonic() + 30  # it outlived the group's SIGKILL, did its part, and ended
    while Path(f"/proc/{watchdog[0]}").exists() and "Z" not in _text(Path(f"/proc/{watchdog[0]}/stat")).split(")")[-1][:3]:
        assert time.monotonic() < gone_by, "the watchdog did not end after serve was killed"
        time.sleep(0.2)
    assert not (tmp_path / "ready.json").exists()  # removed by the watchdog: a poller found the dead server's URLs
    copies = [f for f in Path("/tmp").glob("folder*") if f'"{ours[0]}"' in _text(f / "config.pbtxt")]
    assert len(copies) == 2  # tritonserver's copies of the two models, which name the workspace: they stayed
    assert remove_dead_workspaces(home) == ours and not ours[0].exists()
    assert not any(f.exists() for f in copies)


def test_a_start_that_is_never_ready_ends_at_the_watchers_limit_not_after_a_second_wait(monkeypatch):
    """The watched wait ends after PyTriton's own limit (120 s, read from PyTriton) when tritonserver lives but never answers
    'ready'; it then called PyTriton's wait, which waited 120 s more, deaf to Ctrl-C: 240 s in all. The server
    process, the client and PyTriton's class are stood in for."""
    _skip_without_pytriton()
    import types

    import pytriton.client.utils as utils
    import pytriton.constants as constants

    import serving.server as srv

    class NeverReady:
        def is_server_ready(self) -> bool:
            return False

        def is_server_live(self) -> bool:
            return False

        def close(self) -> None:
            pass

    class PyTritonsTriton:  # what WatchedTriton overrides: PyTriton's wait, 120 s and no stop flag
        _url = "http://127.0.0.1:1"
        waited: list[str] = []

        def _wait_for_server(self) -> None:
            self.waited.append("PyTriton's own 120 s wait")

    monkeypatch.setattr(utils, "create_client_from_url", lambda url, **kwargs: NeverReady())
    monkeypatch.setattr(constants, "DEFAULT_TRITON_STARTUP_TIMEOUT_S", 0.3)  # START_TIMEOUT_S None: PyTriton's limit
    triton = srv.watched_triton(PyTritonsTriton, types.SimpleNamespace(_asked_to_stop=False))()
    triton._triton_server = types.SimpleNamespace(is_alive=lambda: True)
    with pytest.raises(TimeoutError, match="not ready after 0.3 s"):
        triton._wait_for_server()
    assert PyTritonsTriton.waited == []
