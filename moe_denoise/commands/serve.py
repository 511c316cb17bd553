"""moe-denoise serve: the denoiser on a real Triton Inference Server (PyTriton), until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from moe_base.errors import InputError
from moe_base.fileio import atomic_write_json, check_output_file
from runtime.base import runner_label

from . import (
    HelpFormatter,
    add_backend_args,
    add_weights_args,
    check_backend_options,
    make_runner,
    nonempty,
    path_arg,
    pixel_count,
    port_number,
    positive_int,
    queue_delay,
    tile_overlap,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the denoiser with NVIDIA Triton Inference Server (PyTriton)",
        description="Starts a Triton Inference Server (the one PyTriton ships; pip install 'moe-denoise[serve]') with "
                    "two models: 'moe_denoiser' (float32 tiles [B, 3, 32, 32] in [0, 1], dynamically batched) and "
                    "'moe_denoiser_image' (a whole photo, uint8 or uint16 [H, W, C], tiled and blended in the "
                    "server). HTTP/REST and gRPC (KServe v2 protocol), health and Prometheus metrics endpoints. "
                    "Ctrl-C, SIGTERM or SIGHUP stops it cleanly (requests in flight finish; signal serve alone, not "
                    "its process group: systemd KillMode=mixed). Send photos with "
                    "'moe-denoise denoise PHOTO -o OUT --server localhost:8000'.",
        formatter_class=HelpFormatter)
    add_backend_args(p)
    add_weights_args(p)
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on, or a host name (resolved to its IPv4 address); 0.0.0.0: every "
                        "interface; the server has no authentication")
    p.add_argument("--http-port", type=port_number, default=8000, help="HTTP/REST port (0: a free port)")
    p.add_argument("--grpc-port", type=port_number, default=8001, help="gRPC port (0: a free port)")
    p.add_argument("--metrics-port", type=port_number, default=8002, help="Prometheus metrics port (0: a free port)")
    p.add_argument("--instances", type=positive_int, default=1,
                   help="model instances of moe_denoiser, each with its own runner (on a CPU: one, with --threads)")
    p.add_argument("--max-batch", type=positive_int, default=64, help="largest batch of tiles Triton forms (and accepts)")
    p.add_argument("--queue-delay-us", type=queue_delay, default=None,
                   help="how long the dynamic batcher may hold a request waiting for others (microseconds; default "
                        "500)")
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request on its own, as sent")
    p.add_argument("--max-image-pixels", type=pixel_count, default=None,
                   help="largest photo moe_denoiser_image accepts, in pixels (default 4096*4096)")
    p.add_argument("--image-batch", type=positive_int, default=None,
                   help="tiles per runner call when denoising a photo (default: as 'denoise --batch-size', 64 for a "
                        "backend on the CPU, 256 on a GPU)")
    p.add_argument("--overlap", type=tile_overlap, default=16, help="tile overlap for photos (as 'denoise --overlap')")
    p.add_argument("--no-guard", action="store_true",
                   help="photos: turn off the clean-input guard, which blends the input back in when a photo is clean "
                        "or lightly noisy (as 'denoise --no-guard')")
    p.add_argument("--log-file", default=None, type=nonempty, help="write Triton's log here (default: a temporary file)")
    p.add_argument("--verbose", action="store_true", help="print Triton's log")
    p.add_argument("--ready-file", type=path_arg, default=None,
                   help="write the server's URLs as JSON to this file once it is ready, and remove it when the server "
                        "stops (for scripts)")
    p.add_argument("--json", action="store_true", help="print the URLs as JSON when ready")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace):
    from serving.config import DEFAULT_MAX_IMAGE_PIXELS, ServeConfig

    return ServeConfig(
        address=args.address, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
        instances=args.instances, max_batch=args.max_batch,
        queue_delay_us=500 if args.queue_delay_us is None else args.queue_delay_us,
        dynamic_batching=not args.no_dynamic_batching,
        max_image_pixels=args.max_image_pixels or DEFAULT_MAX_IMAGE_PIXELS, image_batch=args.image_batch,
        overlap=args.overlap, guard=not args.no_guard, log_verbose=1 if args.verbose else 0, log_file=args.log_file,
    ).validate()


def clear_ready_file(path: Path) -> None:
    """Remove a ready file a server wrote (one left by a server that is gone held its old URLs, which a script waiting
    for the file would read); refuse any other file there (--ready-file replaced a photo with JSON)."""
    import json

    if not path.is_file():
        return
    try:
        ours = {"urls", "runner", "config"} <= set(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, RecursionError):
        ours = False
    if not ours:
        raise InputError(f"--ready-file {path} exists and is not a ready file of 'moe-denoise serve'; choose a new "
                         f"path (it is written when the server is ready and removed when it stops)")
    path.unlink(missing_ok=True)


def run(args: argparse.Namespace) -> int:
    import json

    from serving.config import is_loopback
    from serving.server import ABANDON_AFTER_S, DenoiseServer, StartAbandoned

    if args.no_dynamic_batching and args.queue_delay_us is not None:  # it was taken, ignored, and reported as set
        raise InputError("--queue-delay-us is how long the dynamic batcher holds a request, and --no-dynamic-batching "
                         "turns the batcher off: give one of them")
    config = config_from_args(args)
    check_backend_options(args)
    if args.ready_file:  # an unwritable --ready-file fails here, before Triton starts
        if args.log_file and os.path.abspath(args.log_file) == os.path.abspath(args.ready_file):
            raise InputError(f"--log-file and --ready-file are the same file ({args.ready_file}): the ready file "
                             f"would replace Triton's log, and be removed when the server stops; give two paths")
        config.with_address_resolved().check_listenable()  # first: a second serve on the same ports removed the
        # running one's ready file
        clear_ready_file(args.ready_file)
        check_output_file(args.ready_file, overwrite=True, option="")
    probe = make_runner(args, args.weights)  # a bad --backend/--artifact/--weights fails here, before Triton starts

    def log(message: str) -> None:
        with contextlib.suppress(OSError):  # a terminal gone (SIGHUP) must not stop the stop
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    server = DenoiseServer(lambda: make_runner(args, args.weights), config, log=log)
    server.ready_file = os.path.abspath(args.ready_file) if args.ready_file else None  # its watchdog removes it if
    # serve is killed (SIGKILL): a poller found the dead server's URLs there until the next start

    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        if stopping:
            log(f"{signal.Signals(signum).name} received again: photos in progress are abandoned now")
        else:
            log(f"{signal.Signals(signum).name} received: stopping (requests in flight finish first; a photo still "
                f"in progress after {ABANDON_AFTER_S} s is abandoned, at once on a second Ctrl-C)")
        server.request_stop(abandon_now=bool(stopping))
        stopping.append(signum)

    # SIGHUP too: a terminal or ssh session closed without nohup killed serve at once, leaving its workspace
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    started = False
    # with --json, fd 1 points at stderr while the server runs, and is put back whatever happens
    with json_stdout() if args.json else contextlib.nullcontext(sys.stdout) as out:
        try:
            t0 = time.perf_counter()
            if stopping:  # a signal since the handlers went in: nothing is started for it
                log("nothing was served")
                return 128 + int(stopping[0])
            try:
                server.start()
            except StartAbandoned as e:  # Ctrl-C or SIGTERM while Triton started (a server that died is an error)
                log(f"{e}; nothing was served")
                return 128 + int(stopping[0] if stopping else signal.SIGINT)
            started = True
            if stopping:  # a signal as start() began, which starts with its stop flags cleared
                server.request_stop(abandon_now=len(stopping) > 1)
            info = {"urls": server.urls, "models": [s.name for s in server.tile_models] + ["moe_denoiser_image"],
                    "backend": args.backend, "runner": runner_label(probe), "config": server.running_config.to_dict(),
                    "startup_seconds": round(time.perf_counter() - t0, 2), "pid": os.getpid(),
                    "log": str(server.log_path) if server.log_path else None}
            if args.ready_file:
                atomic_write_json(args.ready_file, info)  # a poller never reads half of it
            if args.json:
                print(json.dumps(info, indent=2), file=out, flush=True)
                args.printed_json = True  # an error after it gets no second JSON document (cli.main)
            else:
                log(f"ready in {info['startup_seconds']}s with {info['runner']}; Ctrl-C or SIGTERM stops it. "
                    f"Try: moe-denoise denoise PHOTO -o OUT --server {server.urls['http']}")
            if not is_loopback(config.address):
                log(f"listening on {config.address}, without authentication: one HTTP request (a JSON input declaring "
                    f"a huge shape) can crash this tritonserver. Before others can reach it, expose gRPC only or put a "
                    f"proxy that limits request bodies in front, and run this under a supervisor that restarts it "
                    f"(details: 'Exposing the server' in docs/serving.md of the moe-denoise source)")
            asked = server.wait()
            if not asked:
                tail = server.log_tail()
                log("the Triton server stopped on its own: it crashed or was killed (its last words are above; one "
                    "request can crash it: see 'Exposing the server' in docs/serving.md of the moe-denoise source). This "
                    "command does not restart it: run it under a supervisor that restarts on exit code 1 (systemd "
                    "Restart=on-failure, docker --restart on-failure)"
                    + (f". Triton's log ({server.log_path}, kept) ends with:\n{tail}" if tail else ""))
                return 1
        finally:
            server.stop()
            if started and args.ready_file:
                clear_ready_file(args.ready_file)  # a poller must not find the URLs of a server that is gone
            for s, handler in previous.items():
                signal.signal(s, handler)
            if started:  # a start that failed is said by its error alone
                log("stopped" if server.unclean_stop is None else f"stopped, not cleanly: {server.unclean_stop}")
    return 0


@contextlib.contextmanager
def json_stdout() -> Iterator[TextIO]:
    """A copy of stdout for the JSON of ``serve --json``, while the real file descriptor 1 points at stderr: the
    processes tritonserver starts inherit it, and wrote lines such as 'Signal (2) received.' (or a crash's backtrace)
    after the JSON, which then did not parse."""
    try:
        real = sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        real = False
    if not real:  # stdout replaced (a caller capturing it): the JSON goes there, file descriptors untouched
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    out = os.fdopen(os.dup(saved), "w")
    try:
        yield out
    finally:
        with contextlib.suppress(OSError, ValueError):
            out.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
