"""A real Triton Inference Server (started from Python with PyTriton) serving the denoiser.

Two models are bound, each instance with its own runner (runners are not shared between threads):

* ``moe_denoiser``: float32 tiles ``noisy`` [B, 3, 32, 32] in [0, 1] -> ``denoised``, same shape; Triton's
  dynamic batcher merges concurrent requests into batches of up to ``max_batch`` tiles, waiting at most
  ``queue_delay_us`` for more (or runs each request as sent with ``dynamic_batching=False``).
* ``moe_denoiser_image``: a whole photo, ``image_u8`` (uint8) or ``image_u16`` (uint16) [H, W, C] ->
  ``denoised_u8`` / ``denoised_u16``, and ``guard`` (the clean-input guard's decision, one JSON string); tiled,
  batched and blended in the server.

Usage::

    from serving import DenoiseServer, ServeConfig
    with DenoiseServer(lambda: OrtRunner("model.onnx"), ServeConfig(http_port=0, grpc_port=0, metrics_port=0)) as s:
        print(s.urls["http"])   # send requests with tritonclient or serving.client.DenoiseClient

PyTriton and tritonclient are imported when the server starts: ``import serving`` needs neither.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moe_base.fileio import process_alive
from runtime import InputError, MissingBackendError
from runtime.base import INPUT_NAME, OUTPUT_NAME, TILE_SHAPE

from . import backend_env
from .config import GUARD_OUTPUT, IMAGE_INPUTS, IMAGE_MODEL, IMAGE_OUTPUTS, SETTINGS_OUTPUT, TILE_MODEL, ServeConfig
from .models import ImageModel, TileModel
from .watchdog import remove_empty

RunnerFactory = Callable[[], Any]

DRAIN_S = 25
"""On Ctrl-C or SIGTERM, how long requests in flight get to finish (tritonserver's exit timeout; it was 10 s, and
a large photo on a CPU takes longer). PyTriton waits 30 s for tritonserver to exit before it kills it, so the drain
stays under that."""
WATCHDOG_GRACE_S = 10
"""When serve is gone without stopping tritonserver (SIGKILL, the out-of-memory killer), how long tritonserver gets to
end on its own before its watchdog (``serving.watchdog``) kills it. Its models ran in serve, so nothing in flight can
finish: the time is for a clean exit."""
ABANDON_AFTER_S = DRAIN_S - 5
"""A photo still being denoised this long after the stop began is abandoned at its next runner call (its client is
told to send it again): Triton gives up on it at DRAIN_S anyway, and the server, which waits for its models'
threads, computed it to the end for nobody (a 2560x2560 photo on a CPU kept a stopped server alive for 63 s)."""


class RequestRefused(InputError):
    """A request refused (bad values, a photo too large, a server stopping), as its client reads it: the message.

    PyTriton answers a failed request with the exception formatted with its traceback
    (``traceback.format_exception(None, e, e.__traceback__)``), which showed every client this server's file paths
    and PyTriton's internals around the one line meant for it. This exception's traceback reads as None from Python
    (the interpreter keeps the real one): the answer is ``serving.server.RequestRefused: <message>``. This rests on
    PyTriton 0.7 formatting the error with ``e.__traceback__``; should that change, the traceback is back, no worse."""

    @property  # type: ignore[override]
    def __traceback__(self) -> None:
        return None

    @__traceback__.setter
    def __traceback__(self, value: object) -> None:
        pass


class StartAbandoned(Exception):
    """tritonserver ended before it was ready, or a stop was asked for while it started (``asked`` says which; the
    message is the reason). :meth:`DenoiseServer.start` raises only the asked one; the other becomes a
    MissingBackendError with the end of Triton's log."""

    def __init__(self, reason: str, asked: bool) -> None:
        super().__init__(reason)
        self.asked = asked


STOPPED_AT_START = "stopped (Ctrl-C or SIGTERM) before the server was ready"
START_TIMEOUT_S: float | None = None
"""How long tritonserver gets to answer 'ready'; None: PyTriton's own limit (DEFAULT_TRITON_STARTUP_TIMEOUT_S, 120 s)."""


def watched_triton(triton_class: type, server: DenoiseServer) -> type:
    """PyTriton's ``Triton`` whose wait for readiness also watches the tritonserver process and the stop flag.

    PyTriton polls the server's HTTP endpoint for up to 120 s; a tritonserver that died at start (a library it
    cannot load, a bad option) left serve waiting those two minutes, deaf to Ctrl-C (PyTriton holds its lock the
    whole time), and then blamed the ports. Here the wait ends within a poll of the process ending, or of a stop
    being asked for, with StartAbandoned; PyTriton's own wait runs after, and finds the server ready at once. No answer
    within START_TIMEOUT_S is a TimeoutError (PyTriton's own wait would have taken as long again)."""

    class WatchedTriton(triton_class):  # type: ignore[misc, valid-type]
        def _wait_for_server(self) -> None:
            from pytriton.client.utils import create_client_from_url
            from pytriton.constants import DEFAULT_TRITON_STARTUP_TIMEOUT_S

            limit = DEFAULT_TRITON_STARTUP_TIMEOUT_S if START_TIMEOUT_S is None else START_TIMEOUT_S
            deadline = time.monotonic() + limit
            with contextlib.closing(create_client_from_url(self._url)) as client:
                while time.monotonic() < deadline:
                    with contextlib.suppress(Exception):  # noqa: BLE001 - not up yet: refused, reset, 503
                        if client.is_server_ready() and client.is_server_live():
                            break
                    if server._asked_to_stop:  # first: a terminal's Ctrl-C reaches tritonserver too, which exits
                        raise StartAbandoned(STOPPED_AT_START, asked=True)
                    process = getattr(self, "_triton_server", None)
                    if process is not None and not process.is_alive():
                        raise StartAbandoned("tritonserver exited during start-up, before it was ready", asked=False)
                    time.sleep(0.2)
                else:  # PyTriton's limit, reached here: its own wait would take as long again, deaf to Ctrl-C
                    raise TimeoutError(f"Triton Inference Server is not ready after {limit:g} s")
            super()._wait_for_server()

    return WatchedTriton


def python_envs() -> set[Path]:
    """The folders Triton's Python backend makes for its models (``python_env_*`` in the temporary folder)."""
    return {f for root in {Path(tempfile.gettempdir()), Path("/tmp")} for f in root.glob("python_env_*")}


def remove_model_copies(workspace: Path) -> list[Path]:
    """Remove the copies of our models that tritonserver makes in the temporary folder (``folderXXXXXX``, one per
    model, each naming this server's PyTriton ``workspace`` in its config.pbtxt). Triton removes them when it
    stops; a tritonserver that crashed or was killed left them, two a crash. Returns what was removed."""
    removed = []
    for root in {Path(tempfile.gettempdir()), Path("/tmp")}:
        for folder in root.glob("folder*"):
            config = folder / "config.pbtxt"
            try:
                ours = f'"{workspace}"' in config.read_text(errors="replace")
            except OSError:  # not a model copy, or another user's
                continue
            if ours:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


WORKSPACE_PREFIX = "moe-"
"""PyTriton workspaces of ``serve`` are named ``moe-<pid>-<n>`` (PyTriton's own are ``workspace_<random>``): a server
killed with SIGKILL, or by the kernel when out of memory, never removes its 22 MB copy of Triton, and the process id
in the name tells a later start which ones nobody uses any more. The name is no longer than PyTriton's: Triton's
sockets are made in the workspace, and a Unix socket's path has at most 107 bytes."""


def new_workspace(home: Path) -> Path:
    """A path for a PyTriton workspace of this process in ``home``, not taken yet (PyTriton makes the folder)."""
    return next(path for n in itertools.count() if not (path := home / f"{WORKSPACE_PREFIX}{os.getpid()}-{n}").exists())


def remove_dead_workspaces(home: Path) -> list[Path]:
    """Remove the workspaces in ``home`` of serve processes that no longer run, and tritonserver's copies of their
    models in the temporary folder (:func:`remove_model_copies`: two a killed server, which stayed); returns the
    workspaces removed. A process id used again by another process keeps its folder (never a live server's). Process
    ids are this PID namespace's: servers in other containers sharing ``home`` need a PYTRITON_HOME of their own
    (docs/serving.md)."""
    removed = []
    for folder in sorted(home.glob(f"{WORKSPACE_PREFIX}*")):
        found = re.fullmatch(rf"{re.escape(WORKSPACE_PREFIX)}(\d+)-\d+", folder.name)
        if found and folder.is_dir() and not folder.is_symlink() and not process_alive(int(found[1])):
            shutil.rmtree(folder, ignore_errors=True)
            remove_model_copies(folder)
            removed.append(folder)
    return removed


@dataclass(frozen=True)
class TileModelSpec:
    """One tile model to bind: its name and batching settings."""

    name: str
    dynamic_batching: bool
    queue_delay_us: int
    max_batch: int


class DenoiseServer:
    """Start, serve and stop a Triton server for the denoiser. A context manager; ``start``/``stop`` also work."""

    def __init__(self, runner_factory: RunnerFactory, config: ServeConfig | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.runner_factory = runner_factory
        self.config = (config or ServeConfig()).validate()
        self.log = log or (lambda message: None)
        self.tile_models = [TileModelSpec(TILE_MODEL, self.config.dynamic_batching, self.config.queue_delay_us,
                                          self.config.max_batch)]
        self.serve_image_model = True
        self._triton: Any = None
        self._runners: list[Any] = []
        self._stopped = threading.Event()
        self._abandon_at: float | None = None  # time.monotonic() from which photos in progress are abandoned
        self.running_config: ServeConfig | None = None
        self.backend_env: backend_env.BackendEnv | None = None
        self.log_path: Path | None = None
        self._log_start = 0  # where this run's lines begin in the log file
        self._log_dir: str | None = None
        self.died = False  # tritonserver ended on its own (crashed or was killed), found when stopping
        self.unclean_stop: str | None = None  # how the last stop went wrong (tritonserver's exit timeout), or None
        self._in_flight = 0  # model calls running in this process (PyTriton's threads), under _idle
        self._idle = threading.Condition()
        self._own_envs: set[Path] = set()  # Triton's Python backend folders (python_env_*) made as our models loaded
        self._serving = False  # started, and not stopped since
        self._asked_to_stop = False  # request_stop() was called (a signal, or stop())
        self._watchdog: subprocess.Popen | None = None  # serving.watchdog, while tritonserver runs
        self.ready_file: str | None = None  # serve's --ready-file (absolute), which the watchdog removes if serve is
        # killed while it holds this server's URLs (its JSON's "pid" is this process's)

    # --- configuration before start -------------------------------------------------------------------------
    def add_tile_model(self, name: str, dynamic_batching: bool, queue_delay_us: int | None = None,
                       max_batch: int | None = None) -> None:
        """Bind one more tile model (e.g. the load test's model without dynamic batching, next to the default)."""
        if self._triton is not None:
            raise RuntimeError("add models before the server starts")
        if any(spec.name == name for spec in self.tile_models) or name == IMAGE_MODEL:
            raise InputError(f"a model named '{name}' is already bound; choose another name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
            raise InputError(f"a model name is letters, digits, '_', '-' and '.' (a folder of Triton's repository); "
                             f"got {name!r}")
        spec = TileModelSpec(name, dynamic_batching,
                             self.config.queue_delay_us if queue_delay_us is None else queue_delay_us,
                             self.config.max_batch if max_batch is None else max_batch)
        # checked as serve's own options are (they failed at start, as an error blaming the ports)
        dataclasses.replace(self.config, max_batch=spec.max_batch, queue_delay_us=spec.queue_delay_us).validate()
        self.tile_models.append(spec)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def urls(self) -> dict[str, str]:
        cfg = self.running_config or self.config
        host = "127.0.0.1" if cfg.address in ("0.0.0.0", "") else cfg.address
        return {"http": f"{host}:{cfg.http_port}", "grpc": f"{host}:{cfg.grpc_port}",
                "metrics": f"http://{host}:{cfg.metrics_port}/metrics"}

    def _new_runner(self) -> Any:
        runner = self.runner_factory()
        runner.activate()
        self._runners.append(runner)
        return runner

    def start(self) -> DenoiseServer:
        """Start tritonserver, load the models and wait until they are ready (a few seconds).

        A :meth:`request_stop` meanwhile raises StartAbandoned (``asked`` True); another failure is an InputError or
        MissingBackendError saying what to do. Either way the runners are released and tritonserver stopped."""
        if self._triton is not None:
            return self
        self._stopped.clear()  # a request_stop() arriving while starting is kept: wait() then returns at once
        self._abandon_at = None
        self.died, self._asked_to_stop, self.unclean_stop, self._own_envs = False, False, None, set()
        backend_env.check_pytriton()
        self.backend_env = backend_env.prepare()
        if not self.config.log_verbose:
            logging.getLogger("pytriton").setLevel(logging.ERROR)  # a rejected request is logged in one line below
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        resolved = self.config.with_address_resolved()  # the IPv4 address Triton will bind, not a name's IPv6 one
        resolved.check_listenable()  # a port in use or a foreign address: said now, not as a timeout later
        cfg = resolved.with_free_ports()
        if cfg.address != self.config.address:
            self.log(f"listening on {cfg.address}, the IPv4 address of {self.config.address}")
        self.running_config = cfg
        self._choose_log(cfg)
        triton_config = TritonConfig(
            http_address=cfg.address, http_port=cfg.http_port, grpc_address=cfg.address, grpc_port=cfg.grpc_port,
            metrics_address=cfg.address, metrics_port=cfg.metrics_port, allow_metrics=True, allow_gpu_metrics=False,
            log_verbose=cfg.log_verbose, exit_timeout_secs=DRAIN_S, log_file=self.log_path)
        # Runners first: a bad artifact or weights file fails here with its own message, before Triton starts.
        try:
            tile_functions = {spec.name: [self._as_function(TileModel(self._new_runner()))
                                          for _ in range(cfg.instances)] for spec in self.tile_models}
            image_models = [ImageModel(self._new_runner(), cfg.max_image_pixels, cfg.overlap, cfg.image_batch,
                                       cfg.guard, give_up=self._give_up)
                            for _ in range(cfg.image_instances if self.serve_image_model else 0)]
            image_functions = [self._as_function(m) for m in image_models]
            if image_models and cfg.image_batch is None:  # the size chosen for the runner, said as it is used
                cfg.image_batch = image_models[0].batch_size
        except BaseException:
            self.stop()
            raise
        try:  # from here on, whatever stops the start releases the runners made above
            from pytriton.constants import PYTRITON_HOME

            left = remove_dead_workspaces(PYTRITON_HOME)
            if left:
                self.log(f"removed {len(left)} workspace(s) in {PYTRITON_HOME} that killed servers left behind")
            self._triton = watched_triton(Triton, self)(config=triton_config, workspace=new_workspace(PYTRITON_HOME))
            for spec in self.tile_models:
                batcher = (DynamicBatcher(max_queue_delay_microseconds=spec.queue_delay_us)
                           if spec.dynamic_batching else None)
                self._triton.bind(
                    model_name=spec.name, infer_func=tile_functions[spec.name],
                    inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=TILE_SHAPE)],
                    outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=TILE_SHAPE)],
                    config=ModelConfig(batching=True, max_batch_size=spec.max_batch, batcher=batcher), strict=True)
            if image_functions:
                self._triton.bind(
                    model_name=IMAGE_MODEL, infer_func=image_functions,
                    inputs=[Tensor(name=name, dtype=np.dtype(dt).type, shape=(-1, -1, -1), optional=True)
                            for dt, name in IMAGE_INPUTS.items()],
                    outputs=[*(Tensor(name=name, dtype=np.dtype(dt).type, shape=(-1, -1, -1))
                               for dt, name in IMAGE_OUTPUTS.items()),
                             Tensor(name=GUARD_OUTPUT, dtype=bytes, shape=(1,)),
                             Tensor(name=SETTINGS_OUTPUT, dtype=bytes, shape=(1,))],
                    config=ModelConfig(batching=False), strict=False)
            envs_before = python_envs()
            try:
                self._triton.run()
            finally:  # made while our models loaded: ours (a server loading its models in the same seconds aside)
                self._own_envs = python_envs() - envs_before
            if self._asked_to_stop:  # while the models loaded, after tritonserver answered: not served either
                raise StartAbandoned(STOPPED_AT_START, asked=True)
            self._start_watchdog()
        except Exception as e:  # noqa: BLE001 - any failure to start is reported with what to do, then re-raised
            # a stop was asked (Ctrl-C in a terminal reaches tritonserver as well, and PyTriton's model loading then
            # fails on a closed connection): the failure is the stop, not a start error blaming the ports
            error = (StartAbandoned(STOPPED_AT_START, asked=True) if self._asked_to_stop and not isinstance(e, InputError)
                     else self._start_error(e))
            if isinstance(e, StartAbandoned) and not e.asked and self.log_tail():
                self.died = True  # its log, which the error names, is kept (stop() removes a temporary log otherwise)
            self.stop()
            raise error from e
        except BaseException:  # a KeyboardInterrupt in library use: runners, tritonserver and folders released too
            self.stop()
            raise
        self._serving = True
        self.log(f"serving {', '.join(s.name for s in self.tile_models)}"
                 f"{', ' + IMAGE_MODEL if self.serve_image_model else ''} on HTTP {self.urls['http']}, "
                 f"gRPC {self.urls['grpc']}, metrics {self.urls['metrics']}")
        return self

    def _start_watchdog(self) -> None:
        """Start the process that kills tritonserver should this one be killed (``serving.watchdog``)."""
        cmd = getattr(getattr(self._triton, "_triton_server", None), "_tritonserver_running_cmd", None)
        pid = getattr(cmd, "pid", None)
        if not isinstance(pid, int):  # PyTriton's internals changed: serving goes on, unguarded
            self.log("note: tritonserver's process id is not known here, so a serve killed with SIGKILL may leave it "
                     "running")
            return
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-I", "-S", str(Path(__file__).with_name("watchdog.py")), str(os.getpid()), str(pid),
                 str(WATCHDOG_GRACE_S), *([f"--ready={self.ready_file}"] if self.ready_file else []),
                 *map(str, sorted(self._own_envs))],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)  # a SIGKILL to serve's process group leaves it to end what was left
        except OSError as e:  # no process to spare: serving goes on, unguarded
            self.log(f"note: the watchdog that ends tritonserver should serve be killed could not start ({e})")

    def _reap_watchdog(self) -> None:
        """Tritonserver has stopped and this process runs: the watchdog has nothing left to do, and is ended at once
        (it waits a moment on its own, in case this process was killed with tritonserver)."""
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is None:
            return
        watchdog.kill()
        watchdog.wait()

    def _choose_log(self, cfg: ServeConfig) -> None:
        """Where Triton logs: --log-file, else a temporary folder's file (None with --verbose: the console)."""
        self._log_start = 0
        if cfg.log_file:
            self.log_path = Path(cfg.log_file)
            # Triton appends to a --log-file: this run's lines start here (an earlier run's 'Exit timeout expired'
            # made a clean stop read as an unclean one, and a crash's tail showed an earlier run's last words)
            self._log_start = self.log_path.stat().st_size if self.log_path.is_file() else 0
        elif not cfg.log_verbose:
            self._log_dir = tempfile.mkdtemp(prefix="moe-denoise-triton-")
            self.log_path = Path(self._log_dir) / "tritonserver.log"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of Triton's log (empty when it logs to stdout)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as f:  # its end alone: with --verbose a log grows without bound
            f.seek(max(self._log_start, f.seek(0, os.SEEK_END) - 256 * lines))
            text = f.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _start_error(self, e: Exception) -> Exception:
        if isinstance(e, (InputError, MissingBackendError)) or getattr(e, "asked", False):
            return e
        if isinstance(e, StartAbandoned):  # its own output went to the console (above) or to its log
            tail = self.log_tail()
            return MissingBackendError(f"the Triton server could not start: {e} ("
                                       + (f"its log, {self.log_path}, ends with:\n{tail}\n)" if tail else
                                          "what it printed is above; --verbose shows Triton's own log)"))
        text = f"{type(e).__name__}: {e}"
        if "_recursion_count" not in text and "_recursion_count" in self.log_tail(200):
            text += " (Triton's log: AttributeError: '_thread.RLock' object has no attribute '_recursion_count')"
        hint = self.backend_env.hint if self.backend_env else None
        if "_recursion_count" in text or "libpython" in text or hint:
            extra = hint or ("Triton's Python backend stub loaded a libpython that does not match this interpreter; "
                             "put the folder of this Python's libpython first on LD_LIBRARY_PATH")
            return MissingBackendError(f"the Triton server started but could not load the models ({text[:600]}). "
                                       f"{extra}")
        return MissingBackendError(f"the Triton server could not start or load the models ({text[:600]}). Its ports "
                                   f"{self.urls['http']}, {self.urls['grpc']} and {self.urls['metrics']} were free "
                                   f"when the start began (another program may have taken one since); run it again, "
                                   f"with --verbose for Triton's log")

    def _as_function(self, model: Callable[[list[Any]], list[dict[str, np.ndarray]]]) -> Callable[[list[Any]], Any]:
        """PyTriton calls this with the list of requests of one execution (a batch when batching)."""
        def infer(requests: list[Any]) -> list[dict[str, np.ndarray]]:
            with self._idle:
                self._in_flight += 1
            try:
                return run(requests)
            finally:
                with self._idle:
                    self._in_flight -= 1
                    self._idle.notify_all()

        def run(requests: list[Any]) -> list[dict[str, np.ndarray]]:
            if self._stopped.is_set():  # Triton still takes requests while it drains: new work is turned away
                raise RequestRefused("the server is stopping (Ctrl-C or SIGTERM) and takes no new work; its requests "
                                     "in flight are finishing. Send this one to a running server")
            try:
                return model(requests)
            except InputError as e:  # the client gets the message; the server says it refused one
                self.log(f"refused: {e}")
                raise RequestRefused(str(e)) from None

        return infer

    def is_alive(self, triton: Any = None) -> bool:
        triton = triton if triton is not None else self._triton
        try:
            return triton is not None and bool(triton.is_alive())
        except Exception:  # noqa: BLE001 - a server that cannot say is not serving
            return False

    def request_stop(self, abandon_now: bool = False) -> None:
        """Make :meth:`wait` return (safe in a signal handler); then call :meth:`stop`. Photos in progress get
        ABANDON_AFTER_S to finish; ``abandon_now`` (a second Ctrl-C) ends them at their next runner call."""
        self._stopped.set()
        self._asked_to_stop = True
        now = time.monotonic()
        self._abandon_at = now if abandon_now else min(self._abandon_at or math.inf, now + ABANDON_AFTER_S)

    def _give_up(self) -> str | None:
        """The reason a photo in progress is abandoned (the server is stopping and its time is up), or None."""
        if self._abandon_at is None or time.monotonic() < self._abandon_at:
            return None
        return ("the server was stopped (Ctrl-C or SIGTERM) before this photo was finished, and it was abandoned "
                "rather than kept past the stop's time limit; send it again to a running server")

    def wait(self, poll_s: float = 0.5) -> bool:
        """Block until :meth:`request_stop` or :meth:`stop` is called, or the server dies; True if asked to stop."""
        while not self._stopped.wait(poll_s):
            if not self.is_alive():
                return False
        return True

    def stop(self) -> None:
        """Stop tritonserver (it finishes requests in flight, photos for up to ABANDON_AFTER_S), unload the models
        and release the runners."""
        if self._serving and not self._asked_to_stop and not self.is_alive():  # ended on its own, unasked
            self.died = True
        self.request_stop(abandon_now=self.died)  # no one waits for a photo of a server that died
        triton, self._triton = self._triton, None
        if triton is not None:
            workspace = getattr(getattr(triton, "_workspace", None), "path", None)
            with contextlib.suppress(Exception):  # noqa: BLE001 - shutting down: report nothing, leave nothing
                triton.stop()
            if workspace is not None:
                remove_model_copies(Path(workspace))
                shutil.rmtree(workspace, ignore_errors=True)  # PyTriton's own stop removes it, unless it failed
            self.unclean_stop = self._exit_timeout()
            left, others = remove_empty(sorted(map(str, self._own_envs)))  # a clean stop removed them already
            if left:
                self.log(f"removed {', '.join(map(str, left))}, left behind by tritonserver's Python backend")
            kept = [str(f) for f in sorted(self._own_envs) if others and f.is_dir()]
            if kept:
                self.log(f"kept {', '.join(kept)}, left behind by tritonserver's Python backend: another tritonserver "
                         f"runs here (process {min(others)}), and such an empty folder may be its")
        self._reap_watchdog()
        with self._idle:  # a tritonserver that died left PyTriton's threads in our model calls: the runners are
            # released once those end (a photo at its next runner call), not under them
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=DRAIN_S)
        while self._runners:
            runner = self._runners.pop()
            with contextlib.suppress(Exception):  # noqa: BLE001 - same
                runner.deactivate()
        self._serving = False
        if self._log_dir is not None and not self.died:  # a crash's log is kept (serve names it)
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def _exit_timeout(self) -> str | None:
        """What went wrong when tritonserver's log says it gave up waiting at its exit (for an HTTP connection, or
        for its models to unload), or None."""
        tail = "" if self.log_path is None else self.log_tail(60)
        if "Exit timeout expired" not in tail:
            return None
        connections = re.findall(r"Found (\d+) HTTP service connections", tail)
        if connections and int(connections[-1]):  # it was blamed on refused requests, none having been refused
            return (f"tritonserver waited {DRAIN_S} s for an HTTP client's open connection to close ('Found "
                    f"{connections[-1]} HTTP service connections', then 'Exit timeout expired' in its log): a client "
                    f"that keeps its connection open between requests (keep-alive) holds the stop that long. Requests "
                    f"in flight had finished")
        return (f"tritonserver gave up waiting for its models to unload after {DRAIN_S} s ('Exit timeout expired' in "
                f"its log). This follows requests the model refused: PyTriton 0.7 keeps something of each, and a model "
                f"instance that refused dozens does not unload. The requests in flight then were cut off")

    def __enter__(self) -> DenoiseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
