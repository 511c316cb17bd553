"""Talk to a running denoising server: tiles, whole photos, files, readiness and Prometheus metrics.

``--server`` URLs: ``HOST:PORT`` or ``http://HOST:PORT`` (Triton's HTTP port, 8000 by default) or
``grpc://HOST:PORT`` (its gRPC port, 8001). tritonclient is imported when a client is made.
"""
from __future__ import annotations

import contextlib
import http.client
import numbers
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np

from runtime import InputError, MissingBackendError
from runtime.base import INPUT_NAME, OUTPUT_NAME, TILE_SHAPE
from runtime.images import DEFAULT_MAX_PIXELS

from .backend_env import EXTRA_HINT
from .config import (
    GUARD_OUTPUT,
    GUARD_PARAMETER,
    IMAGE_INPUTS,
    IMAGE_MODEL,
    IMAGE_OUTPUTS,
    SETTINGS_OUTPUT,
    SIGMA_PARAMETER,
    STRENGTH_PARAMETER,
    TILE_MODEL,
    TWO_SCALES_PARAMETER,
)
from .models import BATCHED_WITH_INVALID, guard_from_tensor, json_from_tensor, unit_to_image

_TRITON_DTYPES = {"float32": "FP32", "uint8": "UINT8", "uint16": "UINT16"}


def parse_url(url: str) -> tuple[str, str]:
    """('http' | 'grpc', 'host:port') from a --server URL."""
    if not isinstance(url, str) or not url.strip():
        raise InputError(f"the server URL must be HOST:PORT, http://HOST:PORT or grpc://HOST:PORT; got {url!r}")
    m = re.fullmatch(r"(?:(http|grpc)://)?(\[[^\]\s]+\]|[^/\s:\[\]]+)(?::(\d+))?/?", url.strip())
    if not m:
        raise InputError(f"cannot read the server URL {url!r}; expected HOST:PORT, http://HOST:PORT or "
                         f"grpc://HOST:PORT (e.g. localhost:8000)")
    protocol = m.group(1) or "http"
    port = m.group(3) or ("8000" if protocol == "http" else "8001")
    return protocol, f"{m.group(2)}:{port}"


def _import_client(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as e:
        raise MissingBackendError(f"talking to a Triton server needs tritonclient[{protocol}], which could not be "
                                  f"imported here ({e}). Install it with: {EXTRA_HINT}") from e
    return module


def _status(e: Any) -> str:
    """A tritonclient error's status ('StatusCode.UNAVAILABLE' from gRPC), or ''."""
    return str(e.status() or "") if callable(getattr(e, "status", None)) else ""


def _timed_out(e: Any) -> bool:
    """Whether a tritonclient error is gRPC's deadline passing (the client's timeout), not the server's answer: it
    was said as 'the server refused the request'."""
    return "DEADLINE_EXCEEDED" in _status(e) or "Deadline Exceeded" in (e.message() or "")


def _unreachable(e: Any) -> bool:
    """Whether a tritonclient error is gRPC's word for a server not there (no connection), not the server's answer:
    it was said as 'has no model' or 'refused the request', where HTTP says 'cannot reach'."""
    return "UNAVAILABLE" in _status(e) or "failed to connect" in (e.message() or "")


def _lost(e: Any) -> bool:
    """Whether a gRPC 'unavailable' error is a connection lost during the request (the server stopped or was killed
    while it worked), not one never made: it was said as 'cannot reach a Triton server ... start one'."""
    return any(word in (e.message() or "") for word in ("Stream removed", "Socket closed", "GOAWAY"))


BATCH_RETRIES = 4
"""How often :meth:`DenoiseClient.denoise_tiles` sends a valid request again that failed for another request of its
batch (Triton's dynamic batcher merged them; PyTriton reports one error for a batch)."""


READY_WAIT_S = 10.0


def ready_wait(timeout_s: float) -> float:
    """How long to wait for a server to be ready before the first photo: READY_WAIT_S, or the request timeout when it
    is shorter (a server that is not there is said at once, and '--timeout 2' waited 10 s for one)."""
    return min(READY_WAIT_S, timeout_s)


class DenoiseClient:
    """A synchronous client of one server. ``timeout_s`` bounds each request (photos take a while on a CPU)."""

    def __init__(self, url: str, timeout_s: float = 3600.0, concurrency: int = 1) -> None:
        if not (isinstance(timeout_s, numbers.Real) and not isinstance(timeout_s, bool)
                and 0 < timeout_s < float("inf")):
            raise InputError(f"timeout_s is the seconds to wait for an answer, a number > 0; got {timeout_s!r}")
        if not (isinstance(concurrency, numbers.Integral) and not isinstance(concurrency, bool) and concurrency >= 1):
            raise InputError(f"concurrency is the number of HTTP connections to keep open, an integer >= 1; got "
                             f"{concurrency!r}")
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.timeout_s = timeout_s
        self.retries = 0
        self._not_ready: str | None = None  # why the last readiness check failed
        self._outputs: dict[str, list[str]] = {}
        self._max_batches: dict[str, int] = {}  # each model's max_batch_size, asked once
        self._module = _import_client(self.protocol)
        self._thread = threading.get_ident()  # an HTTP client's connections (gevent's) belong to this thread
        self._closed = False
        if self.protocol == "http":
            self._client = self._module.InferenceServerClient(self.address, connection_timeout=10.0,
                                                              network_timeout=timeout_s, concurrency=concurrency)
        else:
            self._client = self._module.InferenceServerClient(self.address)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def _check_usable(self) -> None:
        """InputError for a client closed already (it raised gevent's LoopExit or 'connection pool closed'), or an
        HTTP client used from a thread other than the one that made it (gevent's connections hang there)."""
        if self._closed:
            raise InputError(f"this DenoiseClient of {self.url} was closed; make a new one (or use it inside its "
                             f"'with' block)")
        if self.protocol == "http" and threading.get_ident() != self._thread:
            raise InputError("an HTTP DenoiseClient works in the thread that made it (its connections are gevent's, "
                             "and hang when shared between threads): make one client per thread, or use a gRPC "
                             "client (grpc://HOST:8001), which threads may share")

    def _broken(self, e: Exception) -> InputError:
        """The transport's failure as an InputError saying what to check: a port that speaks no HTTP (the gRPC one,
        8001, given as HTTP), or a server that stopped or crashed while answering."""
        if isinstance(e, http.client.HTTPException) and "Expected HTTP" in str(e):
            return InputError(f"the server at {self.url} did not answer in HTTP: is that its gRPC port? Give the HTTP "
                              f"port (8000 by default), or grpc://HOST:PORT for gRPC")
        if isinstance(e, (http.client.HTTPException, ConnectionAbortedError)):
            return InputError(f"the server at {self.url} closed the connection before answering ({type(e).__name__}: {e}): "
                              f"it was stopped or crashed; start it again ('moe-denoise serve') and resend")
        if isinstance(e, TimeoutError):  # it was 'cannot reach a server ... start one', of a server busy with the photo
            connect = ", a connection 10 s" if self.protocol == "http" else ""
            return InputError(f"no answer from the server at {self.url} in time (a request waits the timeout of "
                              f"{self.timeout_s:g} s{connect}; a request may still be running there): raise "
                              f"--timeout (timeout_s= in Python), or check the --server URL")
        if isinstance(e, ValueError):  # an HTTP answer that is no Triton one: its metrics port answers 200 to health
            return InputError(f"the server at {self.url} answered, but not as a Triton server's API ({e}): is that "
                              f"its metrics port (8002 by default), or a proxy's error page? Give the HTTP port (8000 "
                              f"by default), or grpc://HOST:PORT for gRPC")
        return InputError(f"cannot reach a Triton server at {self.url} ({e}); start one with 'moe-denoise serve' or "
                          f"check the --server URL")

    def __enter__(self) -> DenoiseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health ---------------------------------------------------------------------------------------------
    def ready(self, model: str | None = None) -> bool:
        """True when the server (and ``model``, if given) answers ready; False if it cannot be reached."""
        from tritonclient.utils import InferenceServerException

        self._check_usable()
        try:
            if model is None:
                return bool(self._client.is_server_ready())
            return bool(self._client.is_model_ready(model))
        except http.client.HTTPException as e:
            if "Expected HTTP" in str(e):  # an answer, but not HTTP: the wrong port, not a server still starting
                raise self._broken(e) from e
            return False
        except (TimeoutError, ValueError) as e:  # no answer in time, or not Triton's: 'serves none of ...' was said
            raise self._broken(e) from e
        except InferenceServerException as e:
            if _timed_out(e):
                raise self._broken(TimeoutError(e.message())) from e
            self._not_ready = e.message()
            return False
        except OSError as e:
            self._not_ready = e.strerror or str(e)  # 'Connection refused', a name not found: said if it persists
            return False

    def wait_ready(self, timeout_s: float = 30.0, model: str | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        self._not_ready = None
        while not self.ready(model):
            if time.monotonic() > deadline:  # the address tried ('localhost' is localhost:8000) and why, if known
                tried = self.url if self.url.rstrip("/").endswith(self.address) else f"{self.url} ({self.address})"
                why = f": {self._not_ready}" if self._not_ready else ""
                raise InputError(f"no ready Triton server at {tried} after {timeout_s:.0f}s{why}; start one with "
                                 f"'moe-denoise serve' (HTTP port 8000 by default) or check the --server URL")
            time.sleep(0.2)

    def _about(self, model: str, ask: str) -> Any:
        """The server's answer to ``self._client.<ask>(model)`` (its config or metadata); InputError when it has no
        such model, a transport failure said as :meth:`_broken` says it."""
        from tritonclient.utils import InferenceServerException

        self._check_usable()
        try:
            return getattr(self._client, ask)(model)
        except InferenceServerException as e:
            if _unreachable(e):
                raise self._broken(ConnectionError(e.message())) from e
            if _timed_out(e):
                raise self._broken(TimeoutError(e.message())) from e
            raise InputError(f"the server at {self.url} has no model '{model}' ({e.message()})") from e
        except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a body that is no JSON
            raise self._broken(e) from e

    def max_batch(self, model: str) -> int:
        """The model's max_batch_size from its config on the server."""
        config = self._about(model, "get_model_config")
        if self.protocol == "http":
            return int(config.get("max_batch_size", 0))
        return int(config.config.max_batch_size)

    # --- inference ------------------------------------------------------------------------------------------
    def outputs(self, model: str) -> list[str]:
        """The names of ``model``'s outputs on the server (asked once per client and model)."""
        if model not in self._outputs:
            meta = self._about(model, "get_model_metadata")
            listed = meta.get("outputs", []) if self.protocol == "http" else meta.outputs
            self._outputs[model] = [o["name"] if isinstance(o, dict) else o.name for o in listed]
        return self._outputs[model]

    def _infer(self, model: str, inputs: dict[str, np.ndarray], output: str,
               parameters: dict[str, bool | str] | None = None,
               extra: tuple[str, ...] = ()) -> tuple[np.ndarray, dict[str, np.ndarray | None]]:
        """``output`` of one request (it must be in the answer), and the ``extra`` outputs asked for too (None where
        the answer lacks one)."""
        from tritonclient.utils import InferenceServerException

        self._check_usable()
        m = self._module
        feeds = []
        for name, array in inputs.items():
            dtype = _TRITON_DTYPES.get(array.dtype.name)
            if dtype is None:
                raise InputError(f"input '{name}' has dtype {array.dtype}; the server takes float32 tiles or "
                                 f"uint8/uint16 images")
            feed = m.InferInput(name, list(array.shape), dtype)
            if self.protocol == "http":
                feed.set_data_from_numpy(array, binary_data=True)
            else:
                feed.set_data_from_numpy(array)
            feeds.append(feed)
        outputs = [m.InferRequestedOutput(name, binary_data=True) if self.protocol == "http"
                   else m.InferRequestedOutput(name) for name in (output, *extra)]
        try:
            kwargs: dict[str, Any] = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            if parameters:
                kwargs["parameters"] = parameters
            result = self._client.infer(model, feeds, outputs=outputs, **kwargs)
        except InferenceServerException as e:
            if _unreachable(e):
                raise self._broken((ConnectionAbortedError if _lost(e) else ConnectionError)(e.message())) from e
            if _timed_out(e):
                raise self._broken(TimeoutError(e.message())) from e
            raise InputError(f"the server at {self.url} refused the request to '{model}': "
                             f"{server_message(e.message())}") from e
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise self._broken(e) from e
        out = result.as_numpy(output)
        if out is None:
            raise InputError(f"the server at {self.url} answered without the output '{output}'; is it a "
                             f"moe-denoise server ('moe-denoise serve')?")
        return out, {name: result.as_numpy(name) for name in extra}

    def denoise_tiles(self, tiles: np.ndarray, model: str = TILE_MODEL) -> np.ndarray:
        """float32 [B, 3, 32, 32] in [0, 1] -> the denoised tiles (the server checks the values).

        A valid request that Triton batched with someone else's invalid one gets that request's error (PyTriton
        reports errors per batch); it is sent again, up to BATCH_RETRIES times after a short random pause (a client
        that sends invalid tiles in every request failed half of the requests batched with it, and one retry left a
        quarter failed), and ``retries`` counts how often that happened.
        """
        if isinstance(tiles, np.ndarray) and tiles.ndim == 4 and len(tiles) == 0:
            raise InputError("no tiles to denoise (a batch of 0); send at least one [3, 32, 32] tile")
        if isinstance(tiles, np.ndarray) and tiles.ndim == 4 and tiles.shape[1:] != TILE_SHAPE:  # said before the
            # split below, whose first part's shape Triton named ([64, 2, 32, 32] for 100 tiles sent)
            raise InputError(f"tiles have shape {list(tiles.shape)}; expected [B, 3, 32, 32] (float32 in [0, 1])")
        if isinstance(tiles, np.ndarray) and tiles.ndim == 4:  # more than the server takes a call: sent in parts, as a
            most = self._max_batches.get(model)  # local runner splits them (Triton's own words were its refusal)
            if most is None:
                most = self._max_batches[model] = self.max_batch(model)
            if most > 0 and len(tiles) > most:
                return np.concatenate([self.denoise_tiles(tiles[i:i + most], model)
                                       for i in range(0, len(tiles), most)])
        feeds = {INPUT_NAME: np.ascontiguousarray(tiles)}
        for attempt in range(BATCH_RETRIES):
            try:
                return self._infer(model, feeds, OUTPUT_NAME)[0]
            except InputError as e:
                if BATCHED_WITH_INVALID not in str(e):
                    raise
                if attempt == 0:
                    from runtime.base import validate_batch

                    validate_batch(feeds[INPUT_NAME])  # ours invalid too: raises our own error instead of retrying
                self.retries += 1
                time.sleep(random.uniform(0.0, 0.02) * (attempt + 1))  # out of step with the invalid sender
        return self._infer(model, feeds, OUTPUT_NAME)[0]  # the last try: its error, whatever it is, is the caller's

    def denoise_pixels(self, pixels: np.ndarray, two_scales: bool = False, strength: float = 1.0,
                       sigma: float | None = None, guard: bool = True) -> np.ndarray:
        """uint8 / uint16 [H, W, C] -> the denoised photo, same dtype and shape, tiled and blended by the server.
        ``two_scales``: the clean-input guard reads the noise at two scales (the photo was stored as JPEG; pixels
        that were JPEG-compressed are found by the server without it); ``sigma``: the noise level the guard takes
        instead of its estimate; ``guard`` False: no guard for this photo; ``strength``: the share of the change
        from the input kept (serving.models.PhotoOptions; each is sent only when not its default)."""
        return self.denoise_photo(pixels, two_scales, strength, sigma, guard)[0]

    def denoise_photo(self, pixels: np.ndarray, two_scales: bool = False, strength: float = 1.0,
                      sigma: float | None = None,
                      guard: bool = True) -> tuple[np.ndarray, dict[str, Any] | None]:
        """:meth:`denoise_pixels`, and the guard's decision the server sent with the photo
        (``runtime.guard.GuardResult.as_dict()``; None: no guard, or a server that does not send it)."""
        return self.photo_answer(pixels, two_scales, strength, sigma, guard)[:2]

    def photo_answer(self, pixels: np.ndarray, two_scales: bool = False, strength: float = 1.0,
                     sigma: float | None = None,
                     guard: bool = True) -> tuple[np.ndarray, dict[str, Any] | None, dict[str, Any] | None]:
        """:meth:`denoise_photo`, and how the server denoised the photo (``serving.models.ImageModel.settings``:
        runner and weights, overlap, batch size, tiles; None from a server that does not send it)."""
        if not isinstance(pixels, np.ndarray) or pixels.dtype.name not in IMAGE_INPUTS:
            raise InputError(f"a photo is sent as a uint8 or uint16 array [H, W, C]; got "
                             f"{getattr(pixels, 'dtype', type(pixels).__name__)}")
        given_shape = pixels.shape  # HxW comes back HxW ("same dtype and shape")
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4) or min(pixels.shape[:2]) < 1:
            raise InputError(f"a photo is [H, W, C] with H, W >= 1 and C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 "
                             f"(RGBA); got shape {list(pixels.shape)}")  # the server's answer was a traceback
        for flag, value in (("two_scales", two_scales), ("guard", guard)):
            if not isinstance(value, (bool, np.bool_)):  # 'no' is truthy: the guard stayed on (a numpy bool is a bool)
                raise InputError(f"{flag}= is True or False; got {value!r}")
        two_scales, guard = bool(two_scales), bool(guard)
        name = pixels.dtype.name
        parameters: dict[str, bool | str] = {TWO_SCALES_PARAMETER: True} if two_scales else {}
        if not guard:
            parameters[GUARD_PARAMETER] = False
        for key, value, default in ((STRENGTH_PARAMETER, strength, 1.0), (SIGMA_PARAMETER, sigma, None)):
            if value is not None and value != default:  # a string: every protocol carries it exactly
                parameters[key] = repr(float(value))
        offered = self.outputs(IMAGE_MODEL)
        extra = tuple(output for output in (GUARD_OUTPUT, SETTINGS_OUTPUT) if output in offered)
        out, more = self._infer(IMAGE_MODEL, {IMAGE_INPUTS[name]: np.ascontiguousarray(pixels)}, IMAGE_OUTPUTS[name],
                                parameters or None, extra)
        settings = json_from_tensor(more.get(SETTINGS_OUTPUT))
        return (out.reshape(given_shape), guard_from_tensor(more.get(GUARD_OUTPUT)),
                settings if isinstance(settings, dict) else None)


def server_message(text: str | None) -> str:
    """The reason in a Triton error: our InputError's message when the model raised one, not PyTriton's traceback;
    another error's traceback (PyTriton's own, as the server stops) is cut to its last line, without the server's
    file paths."""
    text = text or "no reason given"
    found = re.findall(r"(?:InputError|RequestRefused): (.*?)(?:\n\s*\n|\n\s*At:|$)", text, flags=re.S)
    if found:
        return found[-1].strip()
    if "Traceback (most recent call last)" in text:
        last = re.findall(r"^\s*((?:\w+\.)*\w*(?:Error|Exception)\b.*)$", text.split("Traceback (most recent call last)")[-1],
                          flags=re.M)
        reason = last[-1].strip() if last else "an error in the server"
        if re.match(r"(ConnectionRefused|ConnectionReset|BrokenPipe|EOF)Error", reason):  # PyTriton's helpers gone
            return (f"the server failed while answering ({reason}); it was probably stopping (a SIGTERM to its whole "
                    f"process group stops PyTriton's helpers under a request): send it again once the server runs")
        return f"the server failed while answering ({reason}); its log holds the whole traceback"
    return text.strip()


def denoise_file_remote(in_path: str | os.PathLike[str], out_path: str | os.PathLike[str], url: str,
                        overwrite: bool = False, timeout_s: float = 3600.0, strength: float = 1.0,
                        sigma: float | None = None, guard: bool = True, quality: int | None = None,
                        client: DenoiseClient | None = None,
                        max_pixels: int | None = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """``moe-denoise denoise --server``: read a photo, have the server denoise it, write it like a local run.

    The photo is read and the result written by ``runtime.images`` exactly as ``runtime.photo.denoise_file`` does
    (same size, mode, bit depth, metadata; atomic; never over an existing file unless ``overwrite``); only the
    tiling and the runner calls happen in the server. The report is a local run's, the guard's decision included
    (made by the server, or here when the client tiles), and ``denoised_by``, ``backend``, ``overlap``,
    ``batch_size`` and ``tiles`` as the server sent them (None where an older server sent none). ``client``: an
    open client of ``url`` to use (one for a run of several photos); None: one is opened for this photo.
    ``max_pixels``: a photo over it is refused before it is decoded or sent (as locally).
    """
    from runtime.guard import with_strength
    from runtime.images import (
        check_frames_kept,
        check_input_exists,
        check_memory,
        check_output_path,
        check_quality,
        check_writable,
        read_pixels,
        to_unit,
        write_pixels,
    )
    from runtime.jpeg_traces import LOSSY_FORMATS
    from runtime.photo import photo_report

    check_quality(quality)
    check_input_exists(in_path)  # the first thing to fix, before what the output would replace
    check_output_path(out_path, in_path, overwrite)
    start = time.perf_counter()

    headers = []

    def before_decode(header: Any) -> None:  # as a local run checks, before decoding
        headers.append(header)
        check_writable(out_path, header)
        check_frames_kept(out_path, header)  # a multi-page file written over with its first page
        check_memory(max(header.decode_bytes, 2 * header.compact_bytes), "sending it and taking its result", header)

    # the file's integers, sent as they are (a float32 copy, then two float64 ones to get them back, took about 20
    # bytes a value, which the memory check did not count); the float image only where the client tiles
    pixels, info = read_pixels(in_path, max_pixels=max_pixels, before_decode=before_decode)
    reads_noise = guard and sigma is None  # the guard's estimate is wanted: how to read it matters
    with DenoiseClient(url, timeout_s=timeout_s) if client is None else contextlib.nullcontext(client) as client:
        client.wait_ready(timeout_s=ready_wait(timeout_s))
        if client.ready(IMAGE_MODEL):  # 'moe-denoise serve': the server tiles, batches and blends
            # the guard reads as runtime.photo.denoise_file does: the file's format is known only here, the
            # server finds JPEG in the pixels itself (serving.models.ImageModel.denoise)
            result, decision, settings = client.photo_answer(pixels, reads_noise and info.format in LOSSY_FORMATS,
                                                             strength, sigma, guard)
            where = "server"
        else:  # a standard repository ('moe-denoise triton-repo'): tiles from here, batched by Triton
            check_memory(tile_here_bytes(headers[0]), "tiling it here for the server's tile model", headers[0])
            result, decision, settings = _tile_here(client, to_unit(pixels, info), pixels, info.format, url,
                                                    strength, sigma, guard)
            where = "client"
    if result.shape != pixels.shape or result.dtype != pixels.dtype:
        raise InputError(f"the server at {url} returned {result.dtype} {list(result.shape)} for a {pixels.dtype} "
                         f"{list(pixels.shape)} photo; is it a moe-denoise server?")
    # the served integers are the file's (as unit_to_image quantises, the way write_image would): written as they are
    written = write_pixels(out_path, result, info, overwrite=overwrite, quality=quality)
    known = decision is not None or not guard  # a server that does not send the decision: the weight is unknown
    weight = with_strength(decision["input_weight"] if decision is not None else 0.0, strength) if known else None
    settings = settings or {}  # an older server sends none: each is then None
    report = photo_report(info, written, settings.get("tiles"), time.perf_counter() - start, decision, strength,
                          weight)
    by = settings.get("denoised_by")
    report.update(server=url, tiled_by=where, overlap=settings.get("overlap"), batch_size=settings.get("batch_size"),
                  backend=settings.get("backend"), server_guard=settings.get("guard"),
                  denoised_by=f"{by} on the server at {url}" if by else f"the server at {url}")
    return report


def tile_here_bytes(header: Any) -> int:
    """Memory of tiling a photo here (:func:`_tile_here`): its integers and the result's, its float copies (the
    image on [0, 1], the float32 result and the guard's reading of the noise: 16 bytes a value counted, 12.2 at most
    measured on 1600x1200, 4000x600 and gray 2000x2000 photos) and one band's working arrays. The check before
    decoding counted only what the server path holds."""
    from runtime.tiling import band_working_bytes

    values = header.pixels * header.channels
    return 2 * header.compact_bytes + 16 * values + band_working_bytes(max(header.width, header.height))


def _tile_here(client: DenoiseClient, image: np.ndarray, pixels: np.ndarray, file_format: str | None, url: str,
               strength: float = 1.0, sigma: float | None = None,
               guard: bool = True) -> tuple[np.ndarray, dict[str, Any] | None, dict[str, Any]]:
    """The photo (``image`` on [0, 1], ``pixels`` its file's integers) tiled here, its tiles denoised by the server's
    tile model; the guard's decision (made here), and the settings of the tiling done here (as
    ``serving.models.ImageModel.settings`` names them; the tile model's runner is the server's, not known here)."""
    from runtime.jpeg_traces import deferred_two_scales_reason
    from runtime.tiling import DEFAULT_OVERLAP, denoise_array_guarded, plan_tiles

    from .repo import TRT_MODEL

    model = next((m for m in (TILE_MODEL, TRT_MODEL) if client.ready(m)), None)
    if model is None:
        raise InputError(f"the server at {url} serves none of {IMAGE_MODEL}, {TILE_MODEL}, {TRT_MODEL}; start "
                         f"'moe-denoise serve' or load a repository from 'moe-denoise triton-repo'")
    batch = max(1, client.max_batch(model))
    why = None
    if guard and sigma is None:  # a given sigma is not read
        why = deferred_two_scales_reason(file_format, pixels, float(np.iinfo(pixels.dtype).max))
    out, decision = denoise_array_guarded(image, lambda tiles: client.denoise_tiles(tiles, model), batch_size=batch,
                                          guard=guard, sigma=sigma, two_scales=why, strength=strength)
    settings = {"denoised_by": f"the tile model {model}", "backend": None, "overlap": DEFAULT_OVERLAP,
                "batch_size": batch, "tiles": plan_tiles(image.shape[0], image.shape[1]).count}
    return unit_to_image(out, pixels.dtype), None if decision is None else decision.as_dict(), settings


# --- metrics ---------------------------------------------------------------------------------------------------
_METRIC_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$')


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text -> {metric name: {model name: value}}: model version 1, summed over other labels."""
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line.strip())
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if "model" in labels and labels.get("version", "1") == "1":
            per_model = out.setdefault(m.group(1), {})  # summed over other labels (e.g. a failure's reason)
            per_model[labels["model"]] = per_model.get(labels["model"], 0.0) + float(m.group(3))
    return out


def read_metrics(metrics_url: str, timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    """Triton's Prometheus metrics from ``metrics_url`` (see :func:`parse_metrics`)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:  # noqa: S310 - a local URL we built
            text = response.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as e:
        raise InputError(f"cannot read metrics from {metrics_url} ({e}); is the server running with metrics on?") from e
    return parse_metrics(text)


def batching_counts(metrics_url: str, model: str = TILE_MODEL) -> dict[str, float]:
    """Requests, inferences (tiles) and executions (runner calls) of ``model`` so far, from the metrics endpoint.

    More inferences than executions means Triton ran batches of more than one tile; more requests than
    executions means it merged requests (dynamic batching). ``failures`` (refused requests) count as executions
    too: with failures, compare requests + failures with executions.
    """
    m = read_metrics(metrics_url)
    counted = sorted({name for per_model in m.values() for name in per_model})
    if not counted:  # every count read 0 (a URL without /metrics, or another page)
        raise InputError(f"the page at {metrics_url} holds no Triton model metrics; give the metrics port's /metrics "
                         f"page (http://HOST:8002/metrics by default)")
    if model not in counted:  # Triton counts every model it has loaded, from 0: a misspelt name read as 0 requests
        raise InputError(f"the metrics at {metrics_url} count no model '{model}'; they count {', '.join(counted)}")
    return {
        "requests": m.get("nv_inference_request_success", {}).get(model, 0.0),
        "failures": m.get("nv_inference_request_failure", {}).get(model, 0.0),
        "inferences": m.get("nv_inference_count", {}).get(model, 0.0),
        "executions": m.get("nv_inference_exec_count", {}).get(model, 0.0),
    }
