"""serving without a server: settings, the two models' functions, the libpython fix, URLs, metrics, error text."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from runtime import InputError
from runtime.tiling import denoise_array, denoise_array_guarded
from serving import backend_env
from serving.client import parse_metrics, parse_url, server_message
from serving.config import GUARD_OUTPUT, IMAGE_INPUTS, IMAGE_OUTPUTS, ServeConfig, is_loopback
from serving.models import (
    BATCHED_WITH_INVALID,
    ImageModel,
    PhotoOptions,
    TileModel,
    guard_from_tensor,
    image_peak_bytes,
    image_to_unit,
    unit_to_image,
)

REPO = Path(__file__).resolve().parents[2]


class ScaleRunner:
    """A stand-in runner: halves the pixels, records the batch sizes it saw."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def infer(self, feeds, check=True):
        x = feeds["noisy"]
        self.batches.append(len(x))
        return {"denoised": x * np.float32(0.5)}


class IdentityRunner(ScaleRunner):
    def infer(self, feeds, check=True):
        self.batches.append(len(feeds["noisy"]))
        return {"denoised": feeds["noisy"].copy()}


def test_import_serving_needs_no_triton_packages():
    code = ("import sys; sys.modules['pytriton'] = None; sys.modules['tritonclient'] = None; import serving, "
            "serving.config, serving.models, serving.client, serving.server, serving.repo, serving.backend_env; "
            "print(serving.TILE_MODEL)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "moe_denoiser"


def test_missing_pytriton_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytriton", None)
    monkeypatch.setitem(sys.modules, "pytriton.triton", None)
    with pytest.raises(ImportError, match=r"moe-denoise\[serve\]"):
        backend_env.check_pytriton()


def test_config_validation_and_free_ports():
    with pytest.raises(InputError, match="ports must differ"):
        ServeConfig(http_port=9000, grpc_port=9000).validate()
    with pytest.raises(InputError, match="max_batch"):
        ServeConfig(max_batch=0).validate()
    with pytest.raises(InputError, match="overlap"):
        ServeConfig(overlap=32).validate()
    cfg = ServeConfig(http_port=0, grpc_port=0, metrics_port=0).validate().with_free_ports()
    ports = {cfg.http_port, cfg.grpc_port, cfg.metrics_port}
    assert len(ports) == 3 and all(1024 <= p <= 65535 for p in ports)


def test_tile_model_batches_requests_and_splits_answers():
    runner = ScaleRunner()
    model = TileModel(runner)
    rng = np.random.default_rng(0)
    requests = [{"noisy": rng.random((b, 3, 32, 32), dtype=np.float32)} for b in (1, 3, 2)]
    answers = model(requests)
    assert runner.batches == [6]  # one runner call for the whole batch of requests
    assert [a["denoised"].shape[0] for a in answers] == [1, 3, 2]
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["denoised"], request["noisy"] * np.float32(0.5))


def test_tile_model_names_the_bad_request_and_the_batch_consequence():
    model = TileModel(ScaleRunner())
    good = np.full((1, 3, 32, 32), 0.5, np.float32)
    nan = good.copy()
    nan[0, 1, 2, 3] = np.nan
    with pytest.raises(InputError) as e:
        model([{"noisy": good}, {"noisy": nan}, {"noisy": good * 3}])
    text = str(e.value)
    assert "request 2 of 3" in text and "NaN" in text
    assert "request 3 of 3" in text and "[0, 1]" in text
    assert BATCHED_WITH_INVALID in text
    with pytest.raises(InputError) as alone:
        model([{"noisy": nan}])
    assert BATCHED_WITH_INVALID not in str(alone.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_image_model_round_trip_is_exact_with_an_identity_runner(dtype, channels):
    rng = np.random.default_rng(channels)
    top = np.iinfo(dtype).max
    pixels = rng.integers(0, top + 1, (37, 45, channels)).astype(dtype)
    model = ImageModel(IdentityRunner(), max_pixels=10_000, batch_size=7)
    (answer,) = model([{IMAGE_INPUTS[np.dtype(dtype).name]: pixels}])
    out = answer[IMAGE_OUTPUTS[np.dtype(dtype).name]]
    assert out.dtype == dtype and out.shape == pixels.shape
    np.testing.assert_array_equal(out, pixels)
    assert max(model.runner.batches) <= 7


def test_image_model_matches_local_tiling_and_quantisation():
    pixels = np.random.default_rng(1).integers(0, 256, (40, 50, 3)).astype(np.uint8)
    model = ImageModel(ScaleRunner(), max_pixels=10_000)
    (answer,) = model([{"image_u8": pixels}])
    local = denoise_array(pixels.astype(np.float32) / np.float32(255), lambda b: b * np.float32(0.5))
    expected = np.rint(np.clip(local.astype(np.float64), 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(answer["denoised_u8"], expected)


@pytest.mark.parametrize("guard", [True, False])
def test_image_model_guard_matches_local_denoise_and_can_be_turned_off(guard):
    """A lightly noisy photo: the guard blends the input back in (as 'denoise' does); serve --no-guard turns it off."""
    rng = np.random.default_rng(2)
    clean = np.linspace(0.2, 0.8, 48 * 56, dtype=np.float32).reshape(48, 56, 1)
    pixels = np.rint(np.clip(clean + 3 / 255 * rng.standard_normal(clean.shape), 0, 1) * 255).astype(np.uint8)
    (answer,) = ImageModel(ScaleRunner(), max_pixels=10_000, guard=guard)([{"image_u8": pixels}])
    unit = pixels.astype(np.float32) / np.float32(255)
    local = denoise_array(unit, lambda b: b * np.float32(0.5), guard=guard)
    np.testing.assert_array_equal(answer["denoised_u8"], np.rint(np.clip(local.astype(np.float64), 0, 1) * 255))
    unguarded = denoise_array(unit, lambda b: b * np.float32(0.5), guard=False)
    assert np.array_equal(local, unguarded) != guard  # the guard changed this photo, and only when on


class Request(dict):
    """A photo request as PyTriton hands it over: the inputs by name, and the request's parameters."""

    def __init__(self, inputs, **parameters):
        super().__init__(inputs)
        self.parameters = parameters


@pytest.mark.parametrize("parameters", [{}, {"sigma": "0.01"}, {"two_scales": True}, {"guard": False}])
def test_image_model_sends_the_guard_decision_back(parameters):
    """The photo response holds the guard's decision as a local run makes it (`denoise --server` prints it as a local
    run does): the same GuardResult, exactly, through JSON; null when the request turned the guard off."""
    rng = np.random.default_rng(3)
    clean = np.linspace(0.2, 0.8, 48 * 56, dtype=np.float32).reshape(48, 56, 1)
    pixels = np.rint(np.clip(clean + 3 / 255 * rng.standard_normal(clean.shape), 0, 1) * 255).astype(np.uint8)
    (answer,) = ImageModel(ScaleRunner(), max_pixels=10_000)([Request({"image_u8": pixels}, **parameters)])
    sent = guard_from_tensor(answer[GUARD_OUTPUT])
    local = {"guard": parameters.get("guard", True), "sigma": float(parameters["sigma"]) if "sigma" in parameters
             else None, "two_scales": bool(parameters.get("two_scales"))}
    out, decision = denoise_array_guarded(image_to_unit(pixels), lambda b: b * np.float32(0.5), **local)
    np.testing.assert_array_equal(answer["denoised_u8"], unit_to_image(out, np.uint8))
    if not local["guard"]:
        assert decision is None and sent is None
        return
    expected = decision.as_dict()
    if decision.two_scales:  # the server says why it read two scales, as a local run of a JPEG file does
        assert sent["two_scales_reason"]
        expected["two_scales_reason"] = sent["two_scales_reason"]
    assert sent == expected and sent["applied"] and sent["sigma_given"] == ("sigma" in parameters)


def test_guard_from_tensor_reads_what_was_sent_and_nothing_else():
    assert guard_from_tensor(None) is None  # a server that does not send it
    assert guard_from_tensor(np.array([b"null"], dtype=np.object_)) is None
    assert guard_from_tensor(np.array([b'{"input_weight": 0.25, "sigma_range": [0.1, 0.2]}'], dtype=np.object_)) == \
        {"input_weight": 0.25, "sigma_range": (0.1, 0.2)}


def test_image_model_takes_the_guard_options_a_request_carries():
    """Request parameters sigma, guard and strength (as `denoise --server --sigma/--no-guard/--strength` send them,
    numbers as strings): each answer is the local denoise_array with those options."""
    rng = np.random.default_rng(3)
    clean = np.linspace(0.2, 0.8, 48 * 56, dtype=np.float32).reshape(48, 56, 1)
    pixels = np.rint(np.clip(clean + 3 / 255 * rng.standard_normal(clean.shape), 0, 1) * 255).astype(np.uint8)
    unit = pixels.astype(np.float32) / np.float32(255)
    model = ImageModel(ScaleRunner(), max_pixels=10_000)
    for parameters, local in (({"sigma": "0"}, {"sigma": 0.0}), ({"guard": False}, {"guard": False}),
                              ({"guard": "false", "strength": "0.5"}, {"guard": False, "strength": 0.5}),
                              ({"sigma": "0.01", "strength": 0.25}, {"sigma": 0.01, "strength": 0.25})):
        (answer,) = model([Request({"image_u8": pixels}, **parameters)])
        expected = denoise_array(unit, lambda b: b * np.float32(0.5), **local)
        np.testing.assert_array_equal(answer["denoised_u8"], np.rint(np.clip(expected.astype(np.float64), 0, 1) * 255),
                                      err_msg=str(parameters))
    (answer,) = model([Request({"image_u8": pixels}, sigma="0")])
    np.testing.assert_array_equal(answer["denoised_u8"], pixels)  # told it is clean: given back


@pytest.mark.parametrize("parameters, message", [
    ({"sigma": "-1"}, r"'sigma' is the noise std .*\(sent: '-1'\)"),
    ({"sigma": 25}, r"'sigma' is the noise std on \[0, 1\] pixels, at most 1 .* 25/255 = 0\.09804.*\(sent: 25\)"),
    ({"strength": "lots"}, r"'strength' is how much of the denoising to keep.*\(sent: 'lots'\)"),
    ({"strength": 2}, r"'strength' is how much .*got 2\.0"),
    ({"guard": "maybe"}, r"'guard' must be true or false .*got 'maybe'"),
    ({"guard": "false", "sigma": "0.02"}, r"'sigma' is read by the clean-input guard alone .* 'guard' false turns"),
    ({"strenght": "0.5"}, r"unknown request parameter\(s\) \['strenght'\]; a photo request takes \['two_scales', "
                          r"'guard', 'sigma', 'strength'\]"),  # was ignored: denoised at full strength
])
def test_image_model_refuses_bad_request_parameters(parameters, message):
    pixels = np.zeros((8, 8, 1), np.uint8)
    with pytest.raises(InputError, match=message):
        ImageModel(ScaleRunner(), max_pixels=10_000)([Request({"image_u8": pixels}, **parameters)])


def test_image_model_takes_the_parameters_tritonclient_adds():
    pixels = np.zeros((8, 8, 1), np.uint8)
    (answer,) = ImageModel(ScaleRunner(), max_pixels=10_000)([Request({"image_u8": pixels}, binary_data_output=True,
                                                                       strength="0.5")])
    assert answer["denoised_u8"].shape == pixels.shape


def test_image_model_refuses_a_strip_whose_tiles_are_far_more_than_its_pixels_say(monkeypatch):
    """A 1-pixel-wide strip of 16,777,216 rows is within the pixel limit and needs little memory (bands of one pixel),
    but is 2.1 M tiles, 32 times a square photo of as many pixels: it held the photo model for about an hour. A
    panorama of the same pixels passes."""
    import serving.models

    monkeypatch.setattr(serving.models, "available_memory", lambda: (None, ""))
    model = ImageModel(IdentityRunner(), max_pixels=1 << 20)
    with pytest.raises(InputError, match=r"the image is 1x1048576: 131,074 tiles to denoise \(a tile steps 16 pixels, "
                                         r"so a strip .* more than 8,450, twice those of a square image of the "
                                         r"1,048,576 pixels this server takes \(--max-image-pixels\)"):
        model.check({"image_u8": np.zeros((1 << 20, 1, 1), np.uint8)})
    panorama = np.zeros((256, 4096, 1), np.uint8)
    assert model.check({"image_u8": panorama}) is panorama
    square = np.zeros((1024, 1024, 1), np.uint8)
    assert model.check({"image_u8": square}) is square


def test_a_server_without_the_guard_refuses_a_sigma_it_would_not_read():
    pixels = np.zeros((8, 8, 1), np.uint8)
    model = ImageModel(ScaleRunner(), max_pixels=10_000, guard=False)
    with pytest.raises(InputError, match=r"'sigma' is read by the clean-input guard alone, and this server runs "
                                         r"without it \(moe-denoise serve --no-guard\)"):
        model([Request({"image_u8": pixels}, sigma="0.02")])
    (answer,) = model([Request({"image_u8": pixels})])  # without sigma: denoised as before
    assert answer["denoised_u8"].shape == pixels.shape


def test_serve_no_guard_reaches_the_config():
    from moe_denoise.cli import build_parser
    from moe_denoise.commands.serve import config_from_args

    assert config_from_args(build_parser().parse_args(["serve"])).guard is True
    assert config_from_args(build_parser().parse_args(["serve", "--no-guard"])).guard is False
    # the pixel limit written as denoise's --max-pixels takes it (2e8 was refused: 'expected a whole number >= 1')
    assert config_from_args(build_parser().parse_args(["serve", "--max-image-pixels", "2e7"])).max_image_pixels == \
        20_000_000


def test_serve_refuses_an_unwritable_ready_file_before_starting(tmp_path):
    """--ready-file in a folder that cannot be made: a one-line error and exit 2, no server started."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "moe_denoise.cli", "serve", "--backend", "torch",
                        "--ready-file", str(blocker / "ready.json")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert f"cannot write to the folder '{blocker}'" in r.stderr and "Traceback" not in r.stderr
    assert "Triton" not in r.stderr and not (blocker / "ready.json").exists()


def test_image_model_refuses_bad_images():
    model = ImageModel(IdentityRunner(), max_pixels=100)
    with pytest.raises(InputError, match=r"at most 100 pixels.*--max-image-pixels"):
        model([{"image_u8": np.zeros((11, 10, 3), np.uint8)}])
    with pytest.raises(InputError, match="exactly one of the inputs"):
        model([{"image_u8": np.zeros((2, 2, 3), np.uint8), "image_u16": np.zeros((2, 2, 3), np.uint16)}])
    with pytest.raises(InputError, match="exactly one of the inputs"):
        model([{}])
    with pytest.raises(InputError, match=r"C = 1 \(gray\)"):
        model([{"image_u8": np.zeros((4, 4, 5), np.uint8)}])
    with pytest.raises(InputError, match="must hold uint16"):
        model([{"image_u16": np.zeros((4, 4, 3), np.uint8)}])


def test_image_model_refuses_a_photo_it_has_no_memory_for(monkeypatch):
    """A gray 1 x 16,777,216 photo is within the default pixel limit, and took the server past 9 GB before anything
    stopped it (bands span whole rows: memory grows with the width). It is refused up front, naming the need, the
    room and what to send instead; a photo that fits is served as before."""
    import serving.models

    monkeypatch.setattr(serving.models, "available_memory", lambda: (2 << 30, "a test's bound"))
    model = ImageModel(IdentityRunner(), max_pixels=1 << 24)
    with pytest.raises(InputError, match=r"16777216x1 \(1 channel\(s\)\): denoising it needs about 11\d\.\d\d GiB.*"
                                         r"only 2\.00 GiB more \(a test's bound\).*narrower image"):
        model.check({"image_u8": np.zeros((1, 1 << 24, 1), np.uint8)})
    assert image_peak_bytes(1, 1 << 24, 1, 16, 64) > 50 * image_peak_bytes(4096, 4096, 1, 16, 64)
    # serve --image-batch 65536 counted 65536 tiles a call for a 16-tile photo (163 GiB): at most its own tiles
    assert image_peak_bytes(40, 40, 3, 16, 65536) == image_peak_bytes(40, 40, 3, 16, 16) < 2**28
    pixels = np.zeros((256, 256, 3), np.uint8)
    assert model.check({"image_u8": pixels}) is pixels


def test_a_refusal_reaches_the_client_without_the_servers_traceback():
    """PyTriton answers a failed request with the exception formatted with its traceback: plain clients (curl) read
    the server's file paths and PyTriton's internals around the one line meant for them. The refusal they get now
    formats as that line alone; the server's own log keeps the traceback."""
    import traceback

    from serving import DenoiseServer, ServeConfig
    from serving.server import RequestRefused

    infer = DenoiseServer(IdentityRunner, ServeConfig())._as_function(TileModel(IdentityRunner()))
    with pytest.raises(RequestRefused) as caught:
        infer([{"noisy": np.full((1, 3, 32, 32), 2.0, np.float32)}])
    sent = "".join(traceback.format_exception(None, caught.value, caught.value.__traceback__))
    assert sent.startswith("serving.server.RequestRefused: request 1 of 1: input 'noisy' has values in [2, 2]")
    assert sent.count("\n") == 1 and "File " not in sent and ".py" not in sent
    assert caught.tb is not None and isinstance(caught.value, InputError)
    assert server_message(f"Model execute error: Traceback ...\n{sent}\n\nAt:\n  /tmp/x/model.py(5)") == sent.split(
        ": ", 1)[1].strip()


def test_a_stopping_server_abandons_a_photo_at_its_next_runner_call():
    """The photo model asks before each runner call whether to go on: the server says no once its stop has run
    ABANDON_AFTER_S (at once after a second Ctrl-C), and the photo ends with that message instead of being computed
    for nobody while the stopped server waits for it."""
    from serving import DenoiseServer, ServeConfig
    from serving.server import ABANDON_AFTER_S, DRAIN_S

    assert 0 < ABANDON_AFTER_S < DRAIN_S
    server = DenoiseServer(IdentityRunner, ServeConfig())
    assert server._give_up() is None
    server.request_stop()
    assert server._give_up() is None  # requests in flight get their time first
    server.request_stop(abandon_now=True)
    reason = server._give_up()
    assert "abandoned" in reason and "send it again" in reason

    asked = iter([None, None, "the server is stopping"])
    model = ImageModel(IdentityRunner(), max_pixels=1 << 20, batch_size=8, give_up=lambda: next(asked))
    with pytest.raises(InputError, match="the server is stopping"):
        model.denoise(np.zeros((200, 200, 3), np.uint8), PhotoOptions(guard=False))
    assert model.runner.batches == [8, 8]


@pytest.mark.parametrize("shape", [(1, 3000, 1), (3000, 1, 1), (150, 170, 3), (64, 64, 4), (600, 700, 3)])
def test_image_peak_bytes_bounds_what_the_photo_model_takes(shape):
    """The refusal above rests on the estimate: numpy's allocations while a photo is denoised (tracemalloc sees them)
    stay under it, for wide, tall, colour and alpha photos."""
    import tracemalloc

    model = ImageModel(IdentityRunner(), max_pixels=1 << 24, batch_size=16)
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    tracemalloc.start()
    try:
        model.denoise(pixels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert 0 < peak <= image_peak_bytes(*shape, model.overlap, model.batch_size), (peak, shape)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_unit_conversions_are_exact_inverses(dtype):
    top = np.iinfo(dtype).max
    ints = np.arange(top + 1, dtype=dtype) if dtype == "uint8" else np.arange(0, top + 1, 7, dtype=dtype)
    np.testing.assert_array_equal(unit_to_image(image_to_unit(ints), dtype), ints)


def test_prepare_puts_this_pythons_libdir_first():
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    env = {"LD_LIBRARY_PATH": f"/opt/other:{libdir}"}
    found = backend_env.prepare(env)
    if soname and (Path(libdir) / soname).is_file():
        assert env["LD_LIBRARY_PATH"].split(":") == [libdir, "/opt/other"]
        assert found.libdir == libdir and found.hint is None
    else:  # a Python without a shared libpython: nothing to put first, and a hint unless it is the system's own
        assert env["LD_LIBRARY_PATH"] == f"/opt/other:{libdir}"
        assert found.libdir is None


def test_prepare_gives_a_hint_for_a_static_python_outside_the_system(monkeypatch, tmp_path):
    real = sysconfig.get_config_var
    monkeypatch.setattr(backend_env.sysconfig, "get_config_var",
                        lambda name: str(tmp_path) if name == "LIBDIR" else real(name))
    monkeypatch.setattr(backend_env.sys, "base_prefix", str(tmp_path))
    env: dict[str, str] = {}
    found = backend_env.prepare(env)
    assert "LD_LIBRARY_PATH" not in env
    assert found.hint is not None and "--enable-shared" in found.hint and "LD_LIBRARY_PATH" in found.hint


@pytest.mark.parametrize("url,expected", [
    ("localhost:8000", ("http", "localhost:8000")),
    ("http://127.0.0.1:9000/", ("http", "127.0.0.1:9000")),
    ("grpc://localhost:8001", ("grpc", "localhost:8001")),
    ("localhost", ("http", "localhost:8000")),
    ("grpc://host", ("grpc", "host:8001")),
    ("[::1]:8000", ("http", "[::1]:8000")),
])
def test_parse_url(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["", "ftp://x:1", "http://a b:1", "127.0.0.1:39649:99"])
def test_parse_url_refuses(url):
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_url(url)


@pytest.mark.parametrize("timeout", [0, -5.0, float("nan"), float("inf"), "60", True])
def test_client_refuses_a_timeout_that_is_not_seconds(timeout):
    from serving.client import DenoiseClient

    with pytest.raises(InputError, match=r"timeout_s is the seconds to wait for an answer, a number > 0; got"):
        DenoiseClient("localhost:8000", timeout_s=timeout)


@pytest.mark.parametrize("concurrency", [0, -1, 2.5, "4", True])
def test_client_refuses_a_concurrency_that_is_not_a_count(concurrency):
    from serving.client import DenoiseClient

    with pytest.raises(InputError, match=r"concurrency is the number of HTTP connections to keep open, an integer "
                                         r">= 1; got"):
        DenoiseClient("localhost:8000", concurrency=concurrency)


def test_server_message_keeps_our_reason_not_the_traceback():
    text = ("Failed to process the request(s) for model 'moe_denoiser_0_0', message: TritonModelException: Model "
            "execute error: Traceback (most recent call last):\n  File \"x.py\", line 1\nmoe_base.errors.InputError: "
            "request 1 of 1: input 'noisy' has 1 NaN/Inf values; expected finite pixels in [0, 1]\n\n\nAt:\n  x")
    assert server_message(text) == "request 1 of 1: input 'noisy' has 1 NaN/Inf values; expected finite pixels in [0, 1]"
    assert server_message("unexpected shape") == "unexpected shape"
    # PyTriton's own failure (its helpers stopped under a request): the last line, not the server's paths
    pytriton = ("Failed to process the request(s) for model 'moe_denoiser_image_0_0', message: TritonModelException: "
                "Model execute error: Traceback (most recent call last):\n  File \"/root/.venv/lib/python3.11/site-"
                "packages/pytriton/proxy/data.py\", line 807, in get_free_blocks\n    self._connect()\n"
                "ConnectionRefusedError: [Errno 111] Connection refused\n\nAt:\n  /root/.venv/x.py(5)")
    said = server_message(pytriton)
    assert "ConnectionRefusedError: [Errno 111] Connection refused" in said and "send it again" in said
    assert "/root" not in said and "File" not in said
    other = pytriton.replace("ConnectionRefusedError: [Errno 111] Connection refused", "RuntimeError: CUDA out of memory")
    said = server_message(other)  # a failure of the model, not a stop: no advice to send it again
    assert "RuntimeError: CUDA out of memory" in said and "its log holds the whole traceback" in said
    assert "send it again" not in said and "/root" not in said


def test_parse_metrics_sums_over_reasons_per_model():
    text = "\n".join([
        "# HELP nv_inference_count Number of inferences",
        'nv_inference_count{model="moe_denoiser",version="1"} 40',
        'nv_inference_exec_count{model="moe_denoiser",version="1"} 7',
        'nv_inference_request_failure{model="moe_denoiser",reason="BACKEND",version="1"} 2',
        'nv_inference_request_failure{model="moe_denoiser",reason="REJECTED",version="1"} 1',
        'nv_inference_count{model="moe_denoiser_image",version="1"} 3',
        'nv_cpu_utilization 0.5',
    ])
    m = parse_metrics(text)
    assert m["nv_inference_count"] == {"moe_denoiser": 40.0, "moe_denoiser_image": 3.0}
    assert m["nv_inference_exec_count"] == {"moe_denoiser": 7.0}
    assert m["nv_inference_request_failure"] == {"moe_denoiser": 3.0}
    assert "nv_cpu_utilization" not in m


@pytest.mark.parametrize("sends_guard", [True, False])
def test_client_asks_for_the_guard_only_where_the_model_has_it(sends_guard):
    """A server from before the `guard` output (or another photo model) is still served: the client reads the
    model's outputs once, asks for `guard` only where it exists, and then reports no decision."""
    pytest.importorskip("tritonclient.http", reason="the client's transport (the serve extra)")
    from serving.client import DenoiseClient
    from serving.models import guard_tensor

    pixels = np.full((4, 5, 3), 7, np.uint8)
    asked: list[list[str]] = []

    class Result:
        def __init__(self, names):
            self.names = names

        def as_numpy(self, name):
            if name not in self.names:
                return None
            return ~pixels if name == "denoised_u8" else guard_tensor(None)

    class Transport:  # tritonclient.http's InferenceServerClient, as far as the photo path uses it
        metadata_calls = 0

        def get_model_metadata(self, model):
            Transport.metadata_calls += 1
            return {"outputs": [{"name": "denoised_u8"}, {"name": "denoised_u16"}]
                    + ([{"name": GUARD_OUTPUT}] if sends_guard else [])}

        def infer(self, model, inputs, outputs, **kwargs):
            names = [o.name() for o in outputs]
            asked.append(names)
            return Result(names)

    client = DenoiseClient.__new__(DenoiseClient)
    client.url, client.protocol, client.timeout_s = "localhost:8000", "http", 10.0
    client.retries, client._outputs = 0, {}
    client._closed, client._thread = False, __import__("threading").get_ident()
    client._module = __import__("tritonclient.http", fromlist=["InferInput"])
    client._client = Transport()
    for _ in range(2):
        out, decision = client.denoise_photo(pixels)
        assert np.array_equal(out, ~pixels) and decision is None
    assert asked == [["denoised_u8", GUARD_OUTPUT] if sends_guard else ["denoised_u8"]] * 2
    assert Transport.metadata_calls == 1


def test_ports_in_use_and_foreign_addresses_are_said_before_triton_starts():
    """check_listenable: a port another socket listens on, an address that does not resolve and one that is not
    this machine's are each one message naming the option to change (Triton itself only times out a minute later);
    a free port and port 0 pass."""
    import socket

    from serving.config import check_listenable

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(InputError, match=f"port {port} on 127.0.0.1 is in use .* pass --grpc-port with another"):
            ServeConfig(http_port=0, grpc_port=port, metrics_port=0).check_listenable()
    check_listenable("127.0.0.1", port, "--http-port")  # free again
    ServeConfig(http_port=0, grpc_port=0, metrics_port=0).check_listenable()
    with pytest.raises(InputError, match="--address 'nonsense.invalid' is not a name or address this machine can"):
        check_listenable("nonsense.invalid", 8000, "--http-port")
    with pytest.raises(InputError, match=r"cannot listen on 192\.0\.2\.1:8000 .* such as 127\.0\.0\.1 or 0\.0\.0\.0"):
        check_listenable("192.0.2.1", 8000, "--http-port")  # TEST-NET-1: never an address of this machine


def test_serve_on_a_port_in_use_fails_at_once_without_starting_triton():
    """moe-denoise serve with its HTTP port taken: exit 2 with the port and --http-port named, in seconds, and no
    'stopped' line for a server that never started"""
    import socket

    from serving.backend_env import check_pytriton

    try:
        check_pytriton()
    except Exception as e:  # noqa: BLE001 - any reason PyTriton cannot run here
        pytest.skip(f"PyTriton cannot run here: {e}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "moe_denoise.cli", "serve", "--backend", "torch", "--http-port",
                            str(port), "--grpc-port", "0", "--metrics-port", "0"], capture_output=True, text=True,
                           timeout=120)
    assert r.returncode == 2 and f"port {port} on 127.0.0.1 is in use" in r.stderr and "--http-port" in r.stderr
    assert "stopped" not in r.stdout and "Traceback" not in r.stderr


def test_photo_answer_says_how_the_server_denoised_it():
    """The photo model sends its settings with each photo (``settings``: runner and weights, overlap, tiles a call,
    the photo's tile count), so `denoise --server` reports what a local run does, not the client's defaults."""
    import json

    from runtime.tiling import plan_tiles
    from serving.config import SETTINGS_OUTPUT

    class Named(ScaleRunner):
        name = "scale"

        def describe(self):
            return {"backend": "scale", "weights": "/srv/private/w.safetensors", "model": "/srv/m.onnx",
                    "engine": "", "threads": 2}

    pixels = np.zeros((70, 90, 3), np.uint8)
    for runner, label in ((ScaleRunner(), None), (Named(), "scale (weights w.safetensors)")):
        (answer,) = ImageModel(runner, max_pixels=10_000, overlap=8, batch_size=16)([Request({"image_u8": pixels})])
        settings = json.loads(answer[SETTINGS_OUTPUT][0].decode())
        backend = None if label is None else {"backend": "scale", "weights": "w.safetensors", "model": "m.onnx",
                                              "engine": "", "threads": 2}  # files by name, not where the server keeps them
        assert settings == {"denoised_by": label, "backend": backend, "guard": True,
                            "overlap": 8, "batch_size": 16, "tiles": plan_tiles(70, 90, overlap=8).count}
        assert settings["tiles"] != plan_tiles(70, 90).count  # not the default overlap's count
    (answer,) = ImageModel(ScaleRunner(), max_pixels=10_000, guard=False)([Request({"image_u8": pixels})])
    assert json.loads(answer[SETTINGS_OUTPUT][0].decode())["guard"] is False


def test_check_local_says_which_settings_of_the_server_it_did_not_share():
    """Against a server started with --overlap 8 --no-guard, --check-local printed '12 of 255 levels' different and
    no reason, and refused --overlap even for its own local run (the served result equalled a matching local run)."""
    import argparse

    from moe_denoise.commands.denoise import check_remote_options, unlike_settings

    args = argparse.Namespace(overlap=16, no_guard=False, check_local=True, weights=None, batch_size=None)
    notes = unlike_settings(args, {"overlap": 8, "server_guard": False})
    assert notes[0].startswith("the server tiles with overlap 8, the local run with 16: add --overlap 8")
    assert "add --no-guard to compare like with like" in notes[1]
    args.overlap, args.no_guard = 8, True
    check_remote_options(args)  # --overlap is the local run's with --check-local
    assert unlike_settings(args, {"overlap": 8, "server_guard": False}) == []
    assert unlike_settings(args, {"overlap": None, "server_guard": None}) == []  # an older server: nothing known
    args.check_local = False
    with pytest.raises(InputError, match="--overlap 8 cannot be sent with --server"):
        check_remote_options(args)


def _one_shot_server(answer: bytes, hold_s: float = 0.0):
    """A TCP server on a free port that reads a request and answers ``answer`` (then closes), in a thread; it keeps
    the connection ``hold_s`` seconds before answering (a server busy with a photo)."""
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve():
        for _ in range(4):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                time.sleep(hold_s)
                if answer:
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def test_broken_transports_and_misuse_are_said_not_thrown():
    """The gRPC port given as HTTP, a server that closes the connection mid-request (stopped with Ctrl-C), a closed
    client and an HTTP client used from another thread each ended in a geventhttpclient/gevent traceback or hung."""
    import threading

    pytest.importorskip("tritonclient.http", reason="the client needs tritonclient[http] (the 'serve' extra)")
    from serving.client import DenoiseClient

    tiles = np.zeros((1, 3, 32, 32), np.float32)
    listener, url = _one_shot_server(b"\x00\x00\x18\x04\x00\x00\x00\x00\x00")  # an HTTP/2 (gRPC) frame
    with listener, DenoiseClient(url, timeout_s=5) as c:
        with pytest.raises(InputError, match=r"did not answer in HTTP: is that its gRPC port\? Give the HTTP port"):
            c.ready()
    listener, url = _one_shot_server(b"")  # reads the request, closes without an answer
    with listener, DenoiseClient(url, timeout_s=5) as c:
        with pytest.raises(InputError, match=r"closed the connection before answering .*it was stopped or crashed"):
            c.denoise_tiles(tiles)
        errors = []
        worker = threading.Thread(target=lambda: errors.append(pytest.raises(InputError, c.ready)))
        worker.start()
        worker.join(10)
        assert "works in the thread that made it" in str(errors[0].value)
    with pytest.raises(InputError, match="was closed; make a new one"):
        c.denoise_tiles(tiles)


def test_a_timeout_and_a_metrics_port_are_said_as_what_they_are():
    """A request that outlived --timeout read 'cannot reach a Triton server ... start one' (HTTP) or 'the server
    refused the request' (gRPC), of a server busy with the photo; the metrics port given as --server (it answers 200
    to the health checks) ended in a rapidjson traceback."""
    pytest.importorskip("tritonclient.http", reason="the client needs tritonclient[http] (the 'serve' extra)")
    from serving.client import DenoiseClient

    tiles = np.zeros((1, 3, 32, 32), np.float32)
    listener, url = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", hold_s=2.0)
    with listener, DenoiseClient(url, timeout_s=0.3) as c:
        for call, arg in ((c.denoise_tiles, tiles), (c.ready, "moe_denoiser")):
            with pytest.raises(InputError, match=r"no answer from the server at .* in time \(a request waits the "
                                                 r"timeout of 0\.3 s, .*\): raise --timeout"):
                call(arg)
    listener, url = _one_shot_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with listener, DenoiseClient(url, timeout_s=5) as c:
        with pytest.raises(InputError, match=r"answered, but not as a Triton server's API \(.*\): is that its metrics "
                                             r"port \(8002 by default\), or a proxy's error page\?"):
            c.max_batch("moe_denoiser")


def test_a_stopping_server_turns_new_work_away():
    """While Triton drains its requests in flight (Ctrl-C), it still takes new ones: they were served, then dropped
    when it exited. The model functions now refuse them with a reason once a stop was asked for."""
    from serving import DenoiseServer, ServeConfig

    server = DenoiseServer(ScaleRunner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    model = ImageModel(ScaleRunner(), max_pixels=10_000)
    infer = server._as_function(model)
    request = Request({"image_u8": np.zeros((8, 8, 1), np.uint8)})
    assert infer([request])[0]["denoised_u8"].shape == (8, 8, 1)
    server.request_stop()
    with pytest.raises(InputError, match="the server is stopping .* takes no new work"):
        infer([request])


def test_a_ready_file_left_by_a_server_is_cleared_and_any_other_file_is_refused(tmp_path):
    """--ready-file replaced a photo with JSON, and a stale one kept a dead server's URLs for a waiting script."""
    import json

    from moe_denoise.commands.serve import clear_ready_file

    stale = tmp_path / "ready.json"
    stale.write_text(json.dumps({"urls": {"http": "127.0.0.1:41869"}, "runner": "torch-masked", "config": {}}))
    clear_ready_file(stale)
    assert not stale.exists()
    clear_ready_file(stale)  # none there: nothing to do
    photo = tmp_path / "coffee.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n not json")
    with pytest.raises(InputError, match=r"--ready-file .*coffee\.png exists and is not a ready file"):
        clear_ready_file(photo)
    assert photo.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("pixels, kwargs, message", [
    (np.zeros((0, 0, 3), np.uint8), {}, r"H, W >= 1 .*got shape \[0, 0, 3\]"),
    (np.zeros((5, 0), np.uint8), {}, r"got shape \[5, 0, 1\]"),
    (np.zeros((4, 4, 3), np.uint8), {"guard": "no"}, r"guard= is True or False; got 'no'"),
    (np.zeros((4, 4, 3), np.uint8), {"two_scales": 1}, r"two_scales= is True or False; got 1"),
])
def test_a_photo_request_is_checked_before_it_is_sent(pixels, kwargs, message):
    """A 0x0 photo came back as the server's traceback; guard='no' was sent as the guard on."""
    pytest.importorskip("tritonclient.http", reason="the client needs tritonclient[http] (the 'serve' extra)")
    from serving.client import DenoiseClient

    with DenoiseClient("127.0.0.1:1") as c, pytest.raises(InputError, match=message):  # nothing listens there
        c.photo_answer(pixels, **kwargs)


def test_a_log_file_that_is_not_a_text_log_is_refused(tmp_path):
    """serve --log-file victim.png appended Triton's log into the photo."""
    from PIL import Image

    photo = tmp_path / "victim.png"
    Image.new("RGB", (4, 4)).save(photo)
    before = photo.read_bytes()
    with pytest.raises(InputError, match=r"--log-file .*victim\.png exists and is not a text log"):
        ServeConfig(log_file=str(photo)).validate()
    with pytest.raises(InputError, match="is a folder"):
        ServeConfig(log_file=str(tmp_path)).validate()
    assert photo.read_bytes() == before
    log = tmp_path / "triton.log"
    log.write_text("I1130 earlier lines\n")
    ServeConfig(log_file=str(log)).validate()  # a log goes on
    assert log.read_text() == "I1130 earlier lines\n"
    ServeConfig(log_file=str(tmp_path / "new.log")).validate()
    assert not (tmp_path / "new.log").exists()  # made when the server starts, not by a check


@pytest.mark.parametrize("where", ["/proc/moe-denoise-triton.log", "{tmp}/no/such/folder/triton.log"])
def test_a_log_file_that_cannot_be_written_is_refused(tmp_path, where):
    """serve --log-file /proc/x.log (or in a folder that does not exist) started, and Triton wrote its whole log to
    the console instead, without a word."""
    with pytest.raises(InputError, match=r"--log-file .* cannot be made \(.*\); give a file in a folder you can write"):
        ServeConfig(log_file=where.format(tmp=tmp_path)).validate()
    assert not (tmp_path / "no").exists()


def test_the_log_file_check_leaves_a_link_and_a_fifo_alone(tmp_path):
    """A --log-file that is a link to a file not made yet lost the link (the check made the target and removed the
    link); a FIFO without a reader made serve wait for ever."""
    import os

    link = tmp_path / "log.link"
    link.symlink_to(tmp_path / "not-yet.log")
    with pytest.raises(InputError, match="cannot be appended to"):
        ServeConfig(log_file=str(link)).validate()
    assert link.is_symlink() and not (tmp_path / "not-yet.log").exists()
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="cannot be appended to"):
        ServeConfig(log_file=str(fifo)).validate()


@pytest.mark.parametrize("host, expected", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("::", False),
                                            ("10.1.2.3", False), ("no-such-host.invalid", False)])
def test_only_addresses_of_this_machine_alone_count_as_loopback(host, expected):
    assert is_loopback(host) is expected


def test_workspaces_of_servers_that_no_longer_run_are_removed(tmp_path):
    """A serve killed with SIGKILL (or by the kernel, out of memory) left its 22 MB PyTriton workspace for ever; its
    name now carries the process id, and the next start removes those of processes that are gone."""
    from serving.server import WORKSPACE_PREFIX, new_workspace, remove_dead_workspaces

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{WORKSPACE_PREFIX}{gone.pid}-0"
    mine = new_workspace(tmp_path)
    assert mine.name == f"{WORKSPACE_PREFIX}{os.getpid()}-0" and not mine.exists()
    pytriton_own, other = tmp_path / "workspace_abc", tmp_path / f"{WORKSPACE_PREFIX}notapid-1"
    for folder in (dead, mine, pytriton_own, other):
        (folder / "model-store").mkdir(parents=True)
    assert new_workspace(tmp_path).name == f"{WORKSPACE_PREFIX}{os.getpid()}-1"  # a second server in the process
    assert len(new_workspace(tmp_path).name) <= len("workspace_abcdefgh")  # Unix socket paths are short
    assert remove_dead_workspaces(tmp_path) == [dead]
    assert not dead.exists() and mine.exists() and pytriton_own.exists() and other.exists()


def test_a_numpy_bool_is_taken_as_a_bool_by_the_client():
    """guard=np.bool_(False) was refused with "guard= is True or False; got False" (the local API takes it)."""
    pytest.importorskip("tritonclient.http", reason="the client needs tritonclient[http] (the 'serve' extra)")
    from serving.client import DenoiseClient

    with DenoiseClient("127.0.0.1:1") as c, pytest.raises(Exception) as e:  # nothing listens: it gets that far
        c.photo_answer(np.zeros((4, 4, 3), np.uint8), guard=np.bool_(False), two_scales=np.bool_(True))
    assert "is True or False" not in str(e.value)


def test_a_valid_request_failed_for_another_of_its_batch_is_sent_again_up_to_the_limit(monkeypatch):
    """One client sending a NaN tile in every request failed about half of the valid requests batched with it (1,400
    of 2,812 from 15 other clients), after DenoiseClient's one retry. It now sends such a request again up to
    BATCH_RETRIES times; its own invalid request is its own error, never retried."""
    import time

    import serving.client as client_module
    from serving.client import BATCH_RETRIES, DenoiseClient
    from serving.models import BATCHED_WITH_INVALID

    monkeypatch.setattr(time, "sleep", lambda s: None)
    client = DenoiseClient.__new__(DenoiseClient)
    client.retries, client._max_batches = 0, {client_module.TILE_MODEL: 64}
    tiles = np.full((2, 3, 32, 32), 0.5, np.float32)
    failures = []

    def infer(model, feeds, output):
        if len(failures) < failing:
            failures.append(1)
            raise InputError(f"request 2 of 2: input 'noisy' has 1 NaN/Inf values; ... the 1 {BATCHED_WITH_INVALID}: "
                             f"send them again")
        return feeds["noisy"] * 0.5, {}

    client._infer = infer
    for failing in (1, BATCH_RETRIES):
        failures.clear()
        client.retries = 0
        assert np.array_equal(client.denoise_tiles(tiles), tiles * 0.5) and client.retries == failing
    failing, client.retries = BATCH_RETRIES + 1, 0
    failures.clear()
    with pytest.raises(InputError, match=re.escape(BATCHED_WITH_INVALID)):
        client.denoise_tiles(tiles)
    assert client.retries == BATCH_RETRIES
    failing, client.retries = 1, 0
    failures.clear()
    bad = tiles.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        client.denoise_tiles(bad)
    assert client.retries == 0


def test_a_stop_that_ran_into_tritons_exit_timeout_is_said_and_its_python_env_removed(tmp_path, monkeypatch):
    """After dozens of refused requests tritonserver's models do not unload (PyTriton 0.7 keeps something of each):
    the stop took Triton's whole exit timeout, left its python_env_* folder in /tmp for good, and serve said
    'stopped' as after a clean stop. The log's 'Exit timeout expired' is now said, and the folders made while the
    models loaded are removed when empty (a non-empty or vanished one is left alone), unless another tritonserver
    runs here: a server starting in the same seconds made one of them, kept empty while it runs, and aborted at its
    stop when it was gone."""
    from serving import watchdog
    from serving.server import DRAIN_S, DenoiseServer

    server = DenoiseServer(lambda: None)
    assert server._exit_timeout() is None  # no log
    server.log_path = tmp_path / "tritonserver.log"
    server.log_path.write_text("I1201 model loaded\nI1201 Timeout 0: Found 1 live models\n")
    assert server._exit_timeout() is None
    server.log_path.write_text("Timeout 1: Found 1 live models\nE1201 main.cc:535] \"failed to stop server: Internal "
                               "- Exit timeout expired. Exiting immediately.\"\n")
    assert server._exit_timeout().startswith(f"tritonserver gave up waiting for its models to unload after {DRAIN_S} s")
    # an idle HTTP keep-alive connection holds the stop too: it was blamed on refused requests, none refused
    server.log_path.write_text("I1201 Timeout 2: Found 1 HTTP service connections\nI1201 Timeout 1: Found 1 HTTP "
                               "service connections\nE1201 \"failed to stop server: Internal - Exit timeout expired.\"\n")
    assert server._exit_timeout().startswith(f"tritonserver waited {DRAIN_S} s for an HTTP client's open connection")
    # Triton appends to a --log-file: an earlier run's timeout is not this run's (a clean stop read as unclean)
    from serving import ServeConfig

    server._choose_log(ServeConfig(log_file=str(server.log_path)))
    assert server._exit_timeout() is None and server.log_tail() == ""
    with open(server.log_path, "a") as log:
        log.write("I1202 this run\nE1202 \"failed to stop server: Internal - Exit timeout expired.\"\n")
    assert server._exit_timeout() is not None and server.log_tail().startswith("I1202 this run")
    empty, used, gone = tmp_path / "python_env_a", tmp_path / "python_env_b", tmp_path / "python_env_c"
    empty.mkdir()
    used.mkdir()
    (used / "x").write_text("in use")
    folders = [str(empty), str(used), str(gone)]
    monkeypatch.setattr(watchdog, "tritonservers", lambda: {12345})  # another server runs: its folder may be one
    assert watchdog.remove_empty(folders) == ([], {12345}) and empty.exists()
    monkeypatch.setattr(watchdog, "tritonservers", lambda: set())
    assert watchdog.remove_empty(folders) == ([str(empty)], set())
    assert not empty.exists() and used.exists()


def test_wrong_counts_and_tile_shapes_are_named_as_the_user_gave_them():
    """serve --max-batch 100000 said 'max_batch must be ...' (a field name, not the option); DenoiseClient given 100
    tiles of a wrong shape named the shape of its first part ([64, 2, 32, 32]), which the user never sent."""
    from serving.client import DenoiseClient

    with pytest.raises(InputError, match=r"--max-batch \(ServeConfig.max_batch\) must be an integer in \[1, 65536\]; "
                                         r"got 100000"):
        ServeConfig(max_batch=100_000).validate()
    for address in ("::1", "::"):  # passed, then failed blaming the ports (or a gaierror traceback with port 0)
        with pytest.raises(InputError, match=rf"--address {address} is an IPv6 address; serve listens on IPv4"):
            ServeConfig(address=address).validate()
    for address, host in (("127.0.0.1:8000", "127.0.0.1"), ("localhost:9000", "localhost")):  # called IPv6
        with pytest.raises(InputError, match=rf"--address {address} holds a port; give the address alone \({host}\) "
                                             rf"and the port with --http-port"):
            ServeConfig(address=address).validate()
    client = DenoiseClient.__new__(DenoiseClient)
    with pytest.raises(InputError, match=r"tiles have shape \[100, 2, 32, 32\]; expected \[B, 3, 32, 32\]"):
        client.denoise_tiles(np.zeros((100, 2, 32, 32), np.float32))


class LifecycleRunner(IdentityRunner):
    """A stand-in runner that records its activation, and counts the calls running on it when it is released."""

    def __init__(self) -> None:
        super().__init__()
        self.active, self.running, self.running_at_release = False, 0, None

    def activate(self):
        self.active = True
        return self

    def deactivate(self):
        self.running_at_release, self.active = self.running, False


def test_a_keyboard_interrupt_while_starting_releases_everything(monkeypatch):
    """start() caught Exception alone around Triton: a Ctrl-C there in library use (a notebook, 'with DenoiseServer')
    left the runners active and the log folder behind, and a second start() returned at once, serving nothing."""
    pytest.importorskip("pytriton", reason="DenoiseServer.start imports PyTriton")
    import serving.server as srv

    runners: list[LifecycleRunner] = []

    def make() -> LifecycleRunner:
        runners.append(LifecycleRunner())
        return runners[-1]

    class Interrupted:
        def __init__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(srv, "watched_triton", lambda cls, server: Interrupted)
    server = srv.DenoiseServer(make, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert runners and not any(r.active for r in runners)
    assert server._triton is None and server._log_dir is None

    def interrupted_while_tidying(home):  # between the runners and Triton: outside both blocks that release them
        raise KeyboardInterrupt

    runners.clear()
    monkeypatch.setattr(srv, "remove_dead_workspaces", interrupted_while_tidying)
    server = srv.DenoiseServer(make, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    with pytest.raises(KeyboardInterrupt):
        server.start()
    assert runners and not any(r.active for r in runners) and server._log_dir is None


def test_runners_are_released_after_the_calls_running_on_them():
    """A tritonserver that died left PyTriton's threads inside our model calls; stop() released the runners under
    them at once (a session, an engine or CUDA graphs freed under a running call). It now waits for those calls,
    and abandons a photo at its next runner call."""
    import threading
    import time

    import serving.server as srv

    runner = LifecycleRunner()
    server = srv.DenoiseServer(lambda: runner, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    server._runners.append(runner)

    started = threading.Event()

    def slow(requests):
        runner.running += 1
        started.set()
        time.sleep(0.5)  # not synchronisation: the window in which a stop that did not wait would release the runner
        runner.running -= 1
        return []

    call = threading.Thread(target=server._as_function(slow), args=([],))
    call.start()
    assert started.wait(10)  # the call is running on the runner before the stop (else it is refused: no test)
    server.stop()
    call.join()
    assert runner.running_at_release == 0 and not runner.active
    with pytest.raises(srv.RequestRefused, match="the server is stopping"):  # a RequestRefused: no traceback sent
        server._as_function(slow)([])


def test_the_log_tail_reads_the_end_of_the_log_alone(tmp_path):
    """log_tail read the whole Triton log at every stop (with --verbose it grows without bound)."""
    from serving.server import DenoiseServer

    server = DenoiseServer(lambda: None)
    server.log_path = tmp_path / "tritonserver.log"
    server.log_path.write_text("".join(f"line {i}\n" for i in range(200_000)))
    assert server.log_tail(3) == "line 199997\nline 199998\nline 199999"


def test_a_file_of_several_pages_is_not_replaced_through_a_server_either(tmp_path):
    """denoise --server onto the input itself, a 3-page TIFF, kept its first page alone; a local run refuses it. The
    refusal comes before the photo is decoded or the server asked."""
    from PIL import Image

    from serving.client import denoise_file_remote

    pages = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 20, 30)]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    before = (tmp_path / "scan.tif").read_bytes()

    class NoServer:  # never asked
        def __getattr__(self, name):
            raise AssertionError(f"the server was asked ({name})")

    with pytest.raises(InputError, match=r"has 3 frames .* would lose the other 2"):
        denoise_file_remote(tmp_path / "scan.tif", tmp_path / "scan.tif", "localhost:1", overwrite=True,
                            client=NoServer())
    assert (tmp_path / "scan.tif").read_bytes() == before


def test_tiling_here_for_a_standard_repository_is_counted_before_it_starts(tmp_path, monkeypatch):
    """Against a repository of 'moe-denoise triton-repo' the client tiles the photo itself (float copies, a band's
    working arrays), which the memory check before decoding did not count. Its count is an upper bound of what the
    tiling holds (traced), and a photo it does not fit is refused before any tile is sent."""
    import tracemalloc

    from PIL import Image

    import runtime.images
    from runtime.images import read_header
    from runtime.tiling import denoise_array_guarded
    from serving.client import denoise_file_remote, tile_here_bytes

    pixels = (np.random.default_rng(0).random((160, 360, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "p.png")
    header = read_header(tmp_path / "p.png")
    tracemalloc.start()
    image = pixels.astype(np.float32) / 255
    out, _ = denoise_array_guarded(image, lambda t: t.copy(), batch_size=64)
    result = unit_to_image(out, pixels.dtype)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.shape == pixels.shape and peak + pixels.nbytes <= tile_here_bytes(header)

    class StandardRepository:
        def wait_ready(self, timeout_s):
            pass

        def ready(self, model):
            return False  # no photo model: the client tiles

        def denoise_tiles(self, tiles, model):
            raise AssertionError("a tile was sent")

    room = tile_here_bytes(header) - 1  # room for the server path (two copies of the integers), not for tiling here
    monkeypatch.setattr(runtime.images, "available_memory", lambda: (room, "the test's limit"))
    with pytest.raises(InputError, match=r"tiling it here for the server's tile model needs about"):
        denoise_file_remote(tmp_path / "p.png", tmp_path / "out.png", "localhost:1", client=StandardRepository())


def test_a_tile_model_added_with_a_bad_name_or_count_is_refused_when_added():
    """add_tile_model took any name and max_batch=0; both failed at start, in an error that blamed the ports."""
    from serving.server import DenoiseServer

    server = DenoiseServer(lambda: None, ServeConfig(http_port=0, grpc_port=0, metrics_port=0))
    with pytest.raises(InputError, match="a model name is letters, digits"):
        server.add_tile_model("../x", dynamic_batching=False)
    with pytest.raises(InputError, match=r"max_batch\) must be an integer in \[1, 65536\]; got 0"):
        server.add_tile_model("direct", dynamic_batching=False, max_batch=0)
    server.add_tile_model("direct", dynamic_batching=False, max_batch=8)
    assert [s.name for s in server.tile_models][-1] == "direct"


def test_a_grpc_server_that_is_not_there_is_said_to_be_unreachable():
    """tritonclient.grpc reports a refused connection as an InferenceServerException (not an OSError): the client
    said the server 'has no model' or 'refused the request', where over HTTP it says it cannot reach one."""
    import socket

    pytest.importorskip("tritonclient.grpc", reason="the gRPC client is part of the serving extra")
    from serving.client import DenoiseClient

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = DenoiseClient(f"grpc://127.0.0.1:{port}", timeout_s=5)
    try:
        with pytest.raises(InputError, match=rf"cannot reach a Triton server at grpc://127.0.0.1:{port}"):
            client.max_batch("moe_denoiser")
        with pytest.raises(InputError, match="cannot reach a Triton server"):
            client.denoise_tiles(np.zeros((1, 3, 32, 32), np.float32))
    finally:
        client.close()


def test_a_signal_before_start_clears_its_flags_still_stops_serve(capsys, monkeypatch):
    """A Ctrl-C after serve's handlers were in place but before start() began was lost with the stop flags start()
    clears, and the server then served on: serve asks for the stop again once started."""
    import signal

    import serving.server
    from moe_denoise.cli import main

    class SignalledBeforeStart(serving.server.DenoiseServer):
        def start(self):
            signal.raise_signal(signal.SIGINT)  # serve's handler runs here, before the flags are cleared
            self._stopped.clear()  # as DenoiseServer.start begins (no Triton: it serves nothing)
            self._asked_to_stop = False
            self.running_config = self.config
            return self

        @property
        def urls(self):
            return {"http": "http://127.0.0.1:0"}

        def wait(self, poll_s=0.5):
            return self._stopped.wait(5.0)  # False, as if the server had died, when nothing asked for the stop

    monkeypatch.setattr(serving.server, "DenoiseServer", SignalledBeforeStart)
    assert main(["serve", "--backend", "torch", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "SIGINT received: stopping" in err and "stopped on its own" not in err and err.rstrip().endswith("stopped")

    class StoppedUncleanly(SignalledBeforeStart):  # a stop that ran into Triton's exit timeout is said, not hidden
        def stop(self):
            super().stop()
            self.unclean_stop = "tritonserver gave up waiting for its models to unload"

    monkeypatch.setattr(serving.server, "DenoiseServer", StoppedUncleanly)
    assert main(["serve", "--backend", "torch", "--threads", "1"]) == 0
    assert capsys.readouterr().err.rstrip().endswith("stopped, not cleanly: tritonserver gave up waiting for its "
                                                     "models to unload")

    class HungUpWhileServing(SignalledBeforeStart):  # a terminal or ssh session closed without nohup: serve died at
        def start(self):  # once, draining nothing, saying nothing, leaving its 22 MB workspace; it stops as on SIGTERM
            self.running_config = self.config
            return self

        def wait(self, poll_s=0.5):
            signal.raise_signal(signal.SIGHUP)  # serve's handler runs here
            return super().wait(poll_s)

    monkeypatch.setattr(serving.server, "DenoiseServer", HungUpWhileServing)
    assert main(["serve", "--backend", "torch", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "SIGHUP received: stopping" in err and err.rstrip().endswith("stopped")

    # a signal before start(): nothing is started for it (the whole server started, wrote its ready file and printed
    # its URLs, for a stop already asked)
    import time

    import moe_denoise.commands.serve as serve_cmd

    class NeverStarted(SignalledBeforeStart):
        def start(self):
            raise AssertionError("started for a stop already asked")

    real_clock, pressed = time.perf_counter, []

    def clock():  # the moment before start(): the handlers are in, the server not yet started
        if not pressed:
            pressed.append(True)
            signal.raise_signal(signal.SIGTERM)
        return real_clock()

    monkeypatch.setattr(serving.server, "DenoiseServer", NeverStarted)
    monkeypatch.setattr(serve_cmd.time, "perf_counter", clock)
    assert main(["serve", "--backend", "torch", "--threads", "1"]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.rstrip().endswith("nothing was served")


def test_no_server_names_the_address_tried_and_why(monkeypatch):
    """'--server localhost' waited 10 s and said 'no ready Triton server at localhost', the port it tried (8000)
    and the reason (nothing listening) unsaid."""
    import socket

    pytest.importorskip("tritonclient.http", reason="the client needs tritonclient[http] (the 'serve' extra)")
    from serving.client import DenoiseClient

    with socket.socket() as s:  # a port with nothing behind it once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("serving.client.parse_url", lambda url: ("http", f"127.0.0.1:{port}"))
    with DenoiseClient("localhost", timeout_s=5) as c:
        with pytest.raises(InputError, match=rf"no ready Triton server at localhost \(127\.0\.0\.1:{port}\) after "
                                             rf"0s: .*[Rr]efused"):
            c.wait_ready(timeout_s=0.3)


def test_batching_counts_refuse_a_page_or_model_they_cannot_count(monkeypatch):
    """A misspelt model, or a metrics URL without /metrics, read as 0 requests and 0 executions."""
    import serving.client
    from serving.client import batching_counts, parse_metrics

    page = 'nv_inference_count{model="moe_denoiser",version="1"} 12\nnv_inference_exec_count{model="moe_denoiser",' \
           'version="1"} 3\n'
    monkeypatch.setattr(serving.client, "read_metrics", lambda url: parse_metrics(page))
    assert batching_counts("http://h:8002/metrics", model="moe_denoiser")["executions"] == 3.0
    with pytest.raises(InputError, match="count no model 'moe_denoisr'; they count moe_denoiser"):
        batching_counts("http://h:8002/metrics", model="moe_denoisr")
    monkeypatch.setattr(serving.client, "read_metrics", lambda url: parse_metrics("<html>not metrics</html>"))
    with pytest.raises(InputError, match="holds no Triton model metrics"):
        batching_counts("http://h:8002")


def test_the_watchdog_kills_a_process_its_parent_left_and_leaves_one_stopped_in_time(tmp_path, monkeypatch):
    """serving.watchdog, with stand-ins: a parent (serve) killed outright leaves its child (tritonserver, here one that
    ignores SIGTERM) running; the watchdog kills it after the grace time and removes the empty folders named to it
    (a non-empty one stays). A child that ends while its parent runs is left alone, and the watchdog ends with it."""
    import signal
    import time

    from serving import watchdog

    def stubborn() -> subprocess.Popen:
        child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                  "signal.SIG_IGN); print('up', flush=True); time.sleep(120)"], stdout=subprocess.PIPE,
                                 text=True)
        assert child.stdout.readline() == "up\n"
        return child

    child = stubborn()
    try:  # the real thing: a watchdog process whose parent is killed
        parent = subprocess.Popen(
            [sys.executable, "-c", "import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-I', '-S', "
             f"{str(Path(watchdog.__file__))!r}, str(os.getpid()), '{child.pid}', '1']); print('watching', flush=True);"
             " time.sleep(120)"], stdout=subprocess.PIPE, text=True)
        assert parent.stdout.readline() == "watching\n"
        time.sleep(1.5)  # the watchdog runs, and waits: its parent and the child both live
        assert child.poll() is None
        parent.kill()
        parent.wait(timeout=10)
        assert child.wait(timeout=15) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()

    empty, kept = tmp_path / "python_env_a", tmp_path / "python_env_b"
    empty.mkdir()
    kept.mkdir()
    (kept / "file").write_text("x")
    monkeypatch.setattr(watchdog, "tritonservers", lambda: set())  # no other server here (remove_empty's own test)
    ready, later = tmp_path / "ready.json", tmp_path / "later.json"  # the killed serve's, and a later serve's
    ready.write_text(json.dumps({"urls": {"http": "127.0.0.1:8000"}, "pid": -1}))
    later.write_text(json.dumps({"urls": {"http": "127.0.0.1:8000"}, "pid": 4194303}))
    child = stubborn()
    try:  # in this process: a parent id that is not this process's parent is a parent gone
        assert watchdog.watch(-1, child.pid, 0.5, [str(empty), str(kept)], str(ready)) == "killed"
        assert child.wait(timeout=10) == -signal.SIGKILL and not empty.exists() and (kept / "file").exists()
        assert not ready.exists()  # a poller found the killed server's URLs there until the next start
        assert not watchdog.remove_ready(str(later), -1) and later.exists()
        assert not watchdog.remove_ready(str(tmp_path / "none.json"), -1)
    finally:
        child.kill()
        child.wait()

    stopped = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    try:  # this process is the parent, and lives: the child's own end is a normal stop
        assert watchdog.watch(os.getppid(), stopped.pid, 0.1, []) == "stopped"
    finally:
        stopped.wait()


def test_serve_checks_before_start_a_host_name_a_huge_photo_limit_and_its_own_files(tmp_path, capsys):
    """Found by probing the server: '--address localhost' never became ready (Triton bound HTTP and metrics to
    255.255.255.255 for a name); --max-image-pixels 1e30 hung the start planning tiles, deaf to Ctrl-C; a second serve
    refused for ports in use had already removed the running server's --ready-file; one path for --log-file and
    --ready-file lost Triton's log."""
    import json
    import socket

    from moe_denoise.cli import main
    from serving import ServeConfig
    from serving.config import MAX_IMAGE_PIXELS_LIMIT

    assert ServeConfig(address="localhost").with_address_resolved().address == "127.0.0.1"
    assert ServeConfig(address="0.0.0.0").with_address_resolved().address == "0.0.0.0"
    with pytest.raises(InputError, match="has no IPv4 address here"):
        ServeConfig(address="no-such-host.invalid").with_address_resolved()
    with pytest.raises(InputError, match=rf"--max-image-pixels \(ServeConfig.max_image_pixels\) must be an integer in "
                                         rf"\[1, {MAX_IMAGE_PIXELS_LIMIT}\]; got {10 ** 30}"):
        ServeConfig(max_image_pixels=10 ** 30).validate()

    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps({"urls": {}, "runner": "torch", "config": {}}))  # a running server's
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--backend", "torch", "--http-port", str(port), "--grpc-port", "0", "--metrics-port",
                     "0", "--ready-file", str(ready)]) == 2
    assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err and ready.exists()
    assert main(["serve", "--backend", "torch", "--log-file", str(tmp_path / "x.json"), "--ready-file",
                 str(tmp_path / "x.json")]) == 2
    assert "--log-file and --ready-file are the same file" in capsys.readouterr().err


def test_a_start_failure_of_no_known_kind_does_not_blame_ports_checked_free():
    """A model load that failed at PyTriton's handshake (it passed on a retry) read 'check that the ports ... are
    free': serve checks them before the start, and they were."""
    from serving.server import DenoiseServer

    said = str(DenoiseServer(lambda: None)._start_error(RuntimeError("handshake with the model proxy failed")))
    assert "handshake with the model proxy failed" in said and "were free when the start began" in said
    assert "run it again" in said and "Check that the ports" not in said


def test_the_watchdog_tells_a_group_kill_from_a_normal_stop(tmp_path, monkeypatch):
    """A SIGKILL to serve's whole process group ends tritonserver and serve together, and serve takes a moment to be
    gone: the watchdog, seeing tritonserver end while serve still looked alive, took it for a normal stop and left
    serve's ready file with the dead server's URLs (and Triton's python_env folders). It now gives serve a moment."""
    import itertools

    from serving import watchdog

    parent = 4194303
    ready = tmp_path / "ready.json"
    ready.write_text(json.dumps({"urls": {"http": "127.0.0.1:8000"}, "pid": parent}))
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # tritonserver, killed with the group
    seen = itertools.count()
    monkeypatch.setattr(watchdog.os, "getppid", lambda: parent if next(seen) < 4 else 1)  # serve, gone a moment later
    monkeypatch.setattr(watchdog, "tritonservers", lambda: set())
    assert watchdog.watch(parent, ended.pid, 0.1, [], str(ready)) == "ended" and not ready.exists()

    ready.write_text(json.dumps({"urls": {"http": "127.0.0.1:8000"}, "pid": parent}))
    monkeypatch.setattr(watchdog, "SETTLE_S", 0.3)
    monkeypatch.setattr(watchdog.os, "getppid", lambda: parent)  # serve runs on: tritonserver ended on its own
    assert watchdog.watch(parent, ended.pid, 0.1, [], str(ready)) == "stopped" and ready.exists()
