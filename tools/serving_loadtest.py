"""Load test of `moe-denoise serve` on 127.0.0.1, next to the direct runner, in one run.

What it does (every loop bounded in time and in requests; nothing but 127.0.0.1 is contacted):

1. starts two servers exactly as a user would, `moe-denoise serve` with dynamic batching and
   `moe-denoise serve --no-dynamic-batching`, same backend and settings, on free ports;
2. cuts tiles from the demo photo and computes the direct runner's output for each of them (the reference);
3. in rounds (the order rotated each round, so drift of the shared host hits every arm alike) measures, for each
   concurrency C in --concurrency: the direct runner at batch C (a loop of runner calls in this process), and each
   server with C clients in a closed loop, one tile per request, over gRPC: throughput, p50/p90/p99 latency,
   errors, and every response compared with the direct runner's output for its tile (wrong = beyond --atol;
   lost = no answer);
4. sends bad requests (wrong shape, wrong dtype, NaN, values outside [0, 1], an image over the pixel limit, a
   truncated body) to the batching server while a stream of good requests runs, and records the answer to each;
5. stops both servers with SIGTERM and checks that they exit cleanly;
6. writes results.json, results.md and results.png (with the exact command) to --out.

Run:  .venv/bin/python tools/serving_loadtest.py --backend ort --artifact /tmp/moe.onnx --threads 1
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime.base import INPUT_NAME, OUTPUT_NAME  # noqa: E402

DEMO = ROOT / "docs" / "images" / "chelsea_noisy.png"
DYN, NODYN, DIRECT = "server, dynamic batching", "server, no dynamic batching", "direct runner"


# --------------------------------------------------------------------------------------------- servers
def start_server(args: argparse.Namespace, dynamic: bool, workdir: Path) -> tuple[subprocess.Popen, dict[str, Any]]:
    """`moe-denoise serve` in a child process on free ports; returns it and its ready-file (URLs, config)."""
    tag = "dyn" if dynamic else "nodyn"
    ready = workdir / f"ready-{tag}.json"
    cmd = [sys.executable, "-m", "moe_denoise.cli", "serve", "--backend", args.backend,
           "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--max-batch", str(args.max_batch),
           "--queue-delay-us", str(args.queue_delay_us), "--max-image-pixels", str(args.max_image_pixels),
           "--ready-file", str(ready), "--log-file", str(workdir / f"triton-{tag}.log")]
    if args.artifact:
        cmd += ["--artifact", str(args.artifact)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not dynamic:
        cmd.append("--no-dynamic-batching")
    log = open(workdir / f"serve-{tag}.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + args.startup_timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_server(proc)
            raise RuntimeError(f"`{' '.join(cmd)}` did not become ready:\n{(workdir / f'serve-{tag}.log').read_text()}")
        time.sleep(0.2)
    return proc, json.loads(ready.read_text())


def stop_server(proc: subprocess.Popen, timeout_s: float = 60.0) -> dict[str, Any]:
    """SIGTERM, then wait; a clean stop is exit code 0 within the timeout."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
        return {"clean": False, "exit_code": rc, "seconds": round(time.monotonic() - t0, 2)}
    return {"clean": rc == 0, "exit_code": rc, "seconds": round(time.monotonic() - t0, 2)}


# --------------------------------------------------------------------------------------------- data
def demo_tiles(n: int, seed: int = 0) -> np.ndarray:
    """n random 32x32 RGB crops of the noisy demo photo, float32 [n, 3, 32, 32] in [0, 1]."""
    from runtime.images import read_image

    image = read_image(DEMO)[0][:, :, :3]
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, image.shape[0] - 32, n)
    xs = rng.integers(0, image.shape[1] - 32, n)
    return np.ascontiguousarray(np.stack([image[y:y + 32, x:x + 32].transpose(2, 0, 1) for y, x in zip(ys, xs)]))


def latency_stats(lat_s: list[float]) -> dict[str, float | None]:
    if not lat_s:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    a = np.asarray(lat_s) * 1e3
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


# --------------------------------------------------------------------------------------------- direct runner
def measure_direct(runner: Any, tiles: np.ndarray, batch: int, duration_s: float, max_calls: int) -> dict[str, Any]:
    n = len(tiles)
    runner(tiles[:batch])  # warm this batch size
    lat: list[float] = []
    i = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < duration_s and len(lat) < max_calls:
        idx = np.arange(i, i + batch) % n
        i += batch
        x = tiles[idx]
        t = time.perf_counter()
        runner(x)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    return {"tiles": len(lat) * batch, "requests": len(lat), "seconds": wall,
            "throughput": len(lat) * batch / wall, **latency_stats(lat), "errors": 0, "wrong": 0, "lost": 0}


# --------------------------------------------------------------------------------------------- server load
async def _load(url: str, model: str, tiles: np.ndarray, refs: np.ndarray, concurrency: int, duration_s: float,
                max_requests: int, atol: float, timeout_s: float) -> dict[str, Any]:
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    n = len(tiles)
    lat: list[float] = []
    errors: dict[str, int] = {}
    state = {"next": 0, "sent": 0, "ok": 0, "wrong": 0, "lost": 0, "max_abs": 0.0}
    stop_at = time.perf_counter() + duration_s

    async def one(k: int) -> None:
        x = tiles[k % n:k % n + 1]
        inp = grpcclient.InferInput(INPUT_NAME, [1, 3, 32, 32], "FP32")
        inp.set_data_from_numpy(x)
        out = [grpcclient.InferRequestedOutput(OUTPUT_NAME)]
        t = time.perf_counter()
        try:
            result = await client.infer(model, [inp], outputs=out, client_timeout=timeout_s)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind, none stops the test
            key = type(e).__name__ + ": " + str(e).splitlines()[0][:120]
            errors[key] = errors.get(key, 0) + 1
            if "Deadline" in str(e) or "timeout" in str(e).lower():
                state["lost"] += 1
            return
        lat.append(time.perf_counter() - t)
        y = result.as_numpy(OUTPUT_NAME)
        if y is None or y.shape != x.shape:
            state["lost"] += 1
            return
        diff = float(np.abs(y - refs[k % n:k % n + 1]).max())
        state["max_abs"] = max(state["max_abs"], diff)
        if not diff <= atol:
            state["wrong"] += 1
        else:
            state["ok"] += 1

    async def worker() -> None:
        while time.perf_counter() < stop_at and state["sent"] < max_requests:
            k = state["next"]
            state["next"] += 1
            state["sent"] += 1
            await one(k)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    await client.close()
    n_err = sum(errors.values())
    return {"tiles": len(lat), "requests": state["sent"], "seconds": wall, "throughput": len(lat) / wall,
            **latency_stats(lat), "errors": n_err, "error_kinds": errors, "wrong": state["wrong"],
            "lost": state["lost"], "checked": state["ok"] + state["wrong"], "max_abs_diff": state["max_abs"]}


def measure_server(url: str, model: str, tiles: np.ndarray, refs: np.ndarray, concurrency: int, duration_s: float,
                   max_requests: int, atol: float) -> dict[str, Any]:
    return asyncio.run(_load(url, model, tiles, refs, concurrency, duration_s, max_requests, atol, timeout_s=60.0))


# --------------------------------------------------------------------------------------------- bad requests
def _error_text(e: Exception) -> str:
    from serving.client import server_message

    message = e.message() if hasattr(e, "message") else str(e)
    return server_message(message)[:300]


def bad_requests(info: dict[str, Any], tiles: np.ndarray, refs: np.ndarray, max_pixels: int,
                 atol: float) -> dict[str, Any]:
    """Each bad request while a good stream runs; every bad one must get an error, the good ones their answers."""
    import http.client
    import threading

    import tritonclient.http as httpclient

    from serving.config import IMAGE_INPUTS, IMAGE_MODEL, TILE_MODEL

    host, port = info["urls"]["http"].rsplit(":", 1)
    good = {"ok": 0, "failed": 0, "wrong": 0}
    stop = threading.Event()

    def good_stream() -> None:
        from serving.client import DenoiseClient

        with DenoiseClient(info["urls"]["http"], timeout_s=60) as c:
            k = 0
            while not stop.is_set() and k < 5000:
                x = tiles[k % len(tiles):k % len(tiles) + 1]
                try:
                    y = c.denoise_tiles(x)
                    ok = float(np.abs(y - refs[k % len(tiles):k % len(tiles) + 1]).max()) <= atol
                    good["ok" if ok else "wrong"] += 1
                except Exception:  # noqa: BLE001 - counted
                    good["failed"] += 1
                k += 1
            good["retried_after_batched_with_invalid"] = c.retries

    def refused(model: str, name: str, array: np.ndarray, dtype: str, timeout: float | None = None) -> tuple[bool, str]:
        """(True, the server's reason) when the server refuses the request, (False, "accepted") otherwise."""
        c = httpclient.InferenceServerClient(info["urls"]["http"], **({"network_timeout": timeout} if timeout else {}))
        inp = httpclient.InferInput(name, list(array.shape), dtype)
        inp.set_data_from_numpy(array)
        try:
            c.infer(model, [inp])
            return False, "accepted"
        except Exception as e:  # noqa: BLE001 - the error is what we want to see
            return True, _error_text(e)
        finally:
            c.close()

    def tile_request(array: np.ndarray, dtype: str) -> tuple[bool, str]:
        return refused(TILE_MODEL, INPUT_NAME, array, dtype)

    def image_request(pixels: np.ndarray) -> tuple[bool, str]:
        return refused(IMAGE_MODEL, IMAGE_INPUTS[pixels.dtype.name], pixels, "UINT8", timeout=120)

    def truncated_body() -> tuple[bool, str]:
        header = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": [1, 3, 32, 32], "datatype": "FP32",
                                         "parameters": {"binary_data_size": 3 * 32 * 32 * 4}}]}).encode()
        body = header + tiles[:1].tobytes()[:1000]  # 1000 of the 12288 bytes the header announces
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", f"/v2/models/{TILE_MODEL}/infer", body=body,
                     headers={"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        text = r.read().decode(errors="replace")
        conn.close()
        return r.status >= 400, f"HTTP {r.status}: {text[:200]}"

    nan = tiles[:2].copy()
    nan[1, 0, 5, 5] = np.nan
    side = int(np.sqrt(max_pixels)) + 1
    cases = {
        "wrong shape ([1, 3, 16, 16])": lambda: tile_request(tiles[:1, :, :16, :16].copy(), "FP32"),
        "wrong dtype (FP64)": lambda: tile_request(tiles[:1].astype(np.float64), "FP64"),
        "NaN in the pixels": lambda: tile_request(nan, "FP32"),
        "values outside [0, 1]": lambda: tile_request(tiles[:1] * 3.0, "FP32"),
        f"image over the limit ({side}x{side} > {max_pixels:,} pixels)":
            lambda: image_request(np.zeros((side, side, 3), np.uint8)),
        "truncated body (1000 of 12288 bytes)": truncated_body,
    }
    thread = threading.Thread(target=good_stream)
    thread.start()
    results = {}
    try:
        time.sleep(0.5)
        for name, fn in cases.items():
            # not ``refused, message = fn()``: that rebinds the helper above, and the next case called a bool
            was_refused, message = fn()
            results[name] = {"refused": was_refused, "message": message}
            time.sleep(0.2)
    finally:
        stop.set()
        thread.join(timeout=60)
    return {"cases": results, "good_stream_during": good,
            "all_refused": all(r["refused"] for r in results.values())}


# --------------------------------------------------------------------------------------------- report
def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds per (arm, concurrency)."""
    out: dict[str, Any] = {}
    for arm in (DIRECT, DYN, NODYN):
        out[arm] = {}
        for c in sorted({r["concurrency"] for r in rows}):
            rs = [r for r in rows if r["arm"] == arm and r["concurrency"] == c]
            if not rs:
                continue
            med = {k: float(np.median([r[k] for r in rs])) for k in ("throughput", "p50_ms", "p90_ms", "p99_ms")
                   if all(r.get(k) is not None for r in rs)}
            med.update({k: int(sum(r.get(k, 0) for r in rs)) for k in ("requests", "tiles", "errors", "wrong", "lost")})
            med["rounds"] = len(rs)
            out[arm][str(c)] = med
    return out


def write_report(out_dir: Path, result: dict[str, Any]) -> None:
    """results.json, results.md and results.png, each written atomically: --out defaults to the committed results,
    and a run stopped while writing must leave them whole (old or new), not cut short."""
    from moe_base.fileio import atomic_write, atomic_write_json

    atomic_write_json(out_dir / "results.json", result)
    s = result["summary"]
    conc = result["settings"]["concurrency"]
    lines = [
        "# Serving load test: `moe-denoise serve` (Triton via PyTriton) vs the direct runner",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Backend `{result['settings']['backend']}` ({result['settings']['threads']} thread(s) per runner), "
        f"{result['settings']['rounds']} rounds of {result['settings']['duration_s']} s per measurement, medians "
        f"over rounds; host: {result['host']['cpus']} CPUs, {result['host']['platform']}; started "
        f"{result['started']}. Server requests: one 32x32 tile each, over gRPC on 127.0.0.1, C clients in a closed "
        f"loop. Direct runner: runner calls of batch C in the load-test process. Dynamic batching: max batch "
        f"{result['settings']['max_batch']}, queue delay {result['settings']['queue_delay_us']} us.",
        "",
        "| C (concurrency / direct batch) | arm | tiles/s | p50 ms | p90 ms | p99 ms | requests | errors | wrong | lost |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in conc:
        for arm in (DIRECT, DYN, NODYN):
            r = s[arm].get(str(c))
            if r is None:
                continue
            lines.append(f"| {c} | {arm} | {r['throughput']:.1f} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                         f"{r['p99_ms']:.2f} | {r['requests']} | {r['errors']} | {r['wrong']} | {r['lost']} |")
    h = result["headline"]
    lines += [
        "",
        f"**At concurrency {h['concurrency']}**: the server with dynamic batching serves {h['dyn_throughput']:.1f} "
        f"tiles/s = **{h['ratio_dyn_vs_direct']:.0%} of the direct runner at batch {h['concurrency']}** "
        f"({h['direct_throughput']:.1f} tiles/s; target >= 70%), and {h['ratio_dyn_vs_nodyn']:.2f}x the server "
        f"without dynamic batching ({h['nodyn_throughput']:.1f} tiles/s). Per round: "
        + ", ".join(f"{x:.0%}" for x in h["ratio_dyn_vs_direct_per_round"]) + ".",
        f"Responses checked against the direct runner: {h['checked']} checked, {h['wrong']} wrong (beyond "
        f"{result['settings']['atol']}), {h['lost']} lost, {h['errors']} errors; largest difference "
        f"{h['max_abs_diff']:.2e}.",
        f"Batching seen in Triton's metrics (dynamic-batching server, whole run): {result['metrics_dyn']}.",
        "",
        "## Bad requests (sent to the batching server while a stream of good requests ran)",
        "",
        "| request | refused | the server's answer |",
        "|---|---|---|",
    ]
    for name, r in result["bad_requests"]["cases"].items():
        lines.append(f"| {name} | {'yes' if r['refused'] else '**no**'} | {r['message'].replace('|', '/')[:220]} |")
    g = result["bad_requests"]["good_stream_during"]
    lines += ["", f"Good requests sent meanwhile (serving.client.DenoiseClient, one tile each): {g['ok']} answered "
                  f"correctly, {g['wrong']} wrong, {g['failed']} failed; "
                  f"{g.get('retried_after_batched_with_invalid', 0)} had been batched with the NaN request, got its "
                  f"error and were answered when sent again (PyTriton reports errors per batch, not per request). "
                  f"Shutdown (SIGTERM): {result['shutdown']}.", ""]
    atomic_write(out_dir / "results.md", "\n".join(lines).encode("utf-8", "surrogateescape"))
    atomic_write(out_dir / "results.png", lambda f: plot(f, result))


def plot(path: Any, result: dict[str, Any]) -> None:
    """The throughput and latency figure, as PNG, to ``path`` (a file name or an open binary file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    conc = result["settings"]["concurrency"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, style in ((DIRECT, "k--o"), (DYN, "b-o"), (NODYN, "r-s")):
        cs = [c for c in conc if str(c) in s[arm]]
        a1.plot(cs, [s[arm][str(c)]["throughput"] for c in cs], style, label=arm)
        if arm != DIRECT:
            a2.plot(cs, [s[arm][str(c)]["p50_ms"] for c in cs], style, label=f"{arm} p50")
            a2.plot(cs, [s[arm][str(c)]["p99_ms"] for c in cs], style, alpha=0.4, label=f"{arm} p99")
    for a in (a1, a2):
        a.set_xscale("log", base=2)
        a.set_xticks(conc, [str(c) for c in conc])
        a.grid(alpha=0.3)
    a1.set_ylim(bottom=0)
    a1.set_xlabel("concurrency (server) / batch (direct runner)")
    a1.set_ylabel("tiles / s")
    a1.set_title(f"throughput, {result['settings']['backend']} backend")
    a1.legend(fontsize=8)
    a2.set_xlabel("concurrency")
    a2.set_ylabel("latency per request, ms")
    a2.set_yscale("log")
    a2.set_title("server latency")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def make_direct_runner(args: argparse.Namespace) -> Any:
    from moe_denoise.commands import add_backend_args, add_weights_args, make_runner

    p = argparse.ArgumentParser()
    add_backend_args(p)
    add_weights_args(p)
    argv = ["--backend", args.backend] + (["--artifact", str(args.artifact)] if args.artifact else []) + \
        (["--threads", str(args.threads)] if args.threads else [])
    ns = p.parse_args(argv)
    return make_runner(ns, ns.weights)


def concurrency_list(text: str) -> list[int]:
    """argparse type: comma-separated concurrencies, each >= 1, none twice (e.g. 1,4,16)."""
    try:
        values = [int(c) for c in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers >= 1 (e.g. 1,4,16), got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"a concurrency is given twice in {text!r}; give each once")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, checked here: a bad one was found only after every measurement (a --headline not among
    --concurrency raised KeyError at the report, and nothing was written) or silently changed (--threads 0 ran the
    servers with their default thread count)."""
    from moe_denoise.commands import positive_int, positive_number, queue_delay, seconds

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="ort", choices=["torch", "ort", "trt"])
    p.add_argument("--artifact", type=Path, default=None)
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 4, 16, 64], help="e.g. 1,4,16,64")
    p.add_argument("--duration", type=seconds, default=8.0, help="seconds per measurement")
    p.add_argument("--rounds", type=positive_int, default=3)
    p.add_argument("--max-requests", type=positive_int, default=20000, help="cap on requests per measurement")
    p.add_argument("--max-batch", type=positive_int, default=64)
    p.add_argument("--queue-delay-us", type=queue_delay, default=500)
    p.add_argument("--max-image-pixels", type=positive_int, default=4096 * 4096)
    p.add_argument("--tiles", type=positive_int, default=512, help="distinct tiles sent (cycled)")
    p.add_argument("--atol", type=positive_number, default=1e-4, help="largest accepted |server - direct| per pixel")
    p.add_argument("--headline", type=positive_int, default=None,
                   help="the concurrency the summary sentence is about, one of --concurrency (default: 16 when it "
                        "is among them, else the largest)")
    p.add_argument("--startup-timeout", type=seconds, default=180.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serving")
    p.add_argument("--render", action="store_true", help="only re-render results.md and results.png from results.json")
    args = p.parse_args(argv)
    if args.headline is None:
        args.headline = 16 if 16 in args.concurrency else max(args.concurrency)
    elif args.headline not in args.concurrency:
        p.error(f"--headline {args.headline} is not among --concurrency {','.join(map(str, args.concurrency))}; "
                f"give one of them (or add it to --concurrency)")
    if args.render and not (args.out / "results.json").is_file():
        p.error(f"--render reads {args.out / 'results.json'}, which does not exist; give the --out of a finished run")
    if not args.render:
        from moe_base.errors import InputError
        from moe_base.fileio import check_folder_takes_files

        try:  # before the servers start and the rounds run, not when the results are written
            check_folder_takes_files(args.out, "results.json")
        except InputError as e:
            p.error(f"--out: {e}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        write_report(args.out, json.loads((args.out / "results.json").read_text()))
        return 0
    command = "python tools/serving_loadtest.py " + " ".join(sys.argv[1:] if argv is None else argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")

    tiles = demo_tiles(args.tiles)
    runner = make_direct_runner(args)
    runner.activate()
    refs = np.concatenate([runner(tiles[i:i + 1]) for i in range(len(tiles))])  # each tile alone: batch 1
    print(f"reference outputs for {len(tiles)} tiles computed", flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="serving-loadtest-"))  # the servers' logs; removed after a clean run
    servers: dict[str, tuple[subprocess.Popen, dict[str, Any]]] = {}
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] | None = None
    try:
        result = measure_all(args, runner, tiles, refs, workdir, servers, rows)
        result["command"], result["started"] = command, started
        write_report(args.out, result)
    except BaseException:
        from moe_base.fileio import atomic_write_json

        # the measurements of a run that failed late are not lost with it, and the logs say why it failed
        with contextlib.suppress(Exception):
            atomic_write_json(workdir / "results.json", result if result is not None else {"rows": rows})
        print(f"serving_loadtest: the server logs and the measurements so far (results.json) are kept in {workdir}",
              file=sys.stderr, flush=True)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    print((args.out / "results.md").read_text())
    return 0


def measure_all(args: argparse.Namespace, runner: Any, tiles: np.ndarray, refs: np.ndarray, workdir: Path,
                servers: dict[str, tuple[subprocess.Popen, dict[str, Any]]],
                rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Start the servers, run the rounds and the bad requests, stop the servers: the result (less the command).
    ``rows`` is filled as the measurements are made, so a caller still has them when this fails."""
    conc = args.concurrency
    try:
        servers[DYN] = start_server(args, True, workdir)
        servers[NODYN] = start_server(args, False, workdir)
        print("servers ready: " + ", ".join(f"{k} {v[1]['urls']['grpc']}" for k, v in servers.items()), flush=True)
        arms = [DIRECT, DYN, NODYN]
        for r in range(args.rounds):
            order = arms[r % 3:] + arms[:r % 3]
            for c in conc:
                for arm in order:
                    if arm == DIRECT:
                        m = measure_direct(runner, tiles, c, args.duration, args.max_requests)
                    else:
                        m = measure_server(servers[arm][1]["urls"]["grpc"], "moe_denoiser", tiles, refs, c,
                                           args.duration, args.max_requests, args.atol)
                    m.update(arm=arm, concurrency=c, round=r)
                    rows.append(m)
                    print(f"round {r} C={c:3d} {arm:30s} {m['throughput']:8.1f} tiles/s  p50 {m['p50_ms']:.2f} ms  "
                          f"p99 {m['p99_ms']:.2f} ms  errors {m['errors']} wrong {m['wrong']} lost {m['lost']}",
                          flush=True)
        from serving.client import batching_counts

        metrics_dyn = batching_counts(servers[DYN][1]["urls"]["metrics"])
        metrics_nodyn = batching_counts(servers[NODYN][1]["urls"]["metrics"])
        bad = bad_requests(servers[DYN][1], tiles, refs, args.max_image_pixels, args.atol)
        print(f"bad requests: {json.dumps(bad, indent=1)}", flush=True)
    finally:
        shutdown = {arm: stop_server(proc) for arm, (proc, _) in servers.items()}
        runner.deactivate()
    summary = summarize(rows)
    h = args.headline
    per_round = []
    for r in range(args.rounds):
        d = [x for x in rows if x["round"] == r and x["concurrency"] == h]
        by = {x["arm"]: x["throughput"] for x in d}
        if DIRECT in by and DYN in by:
            per_round.append(by[DYN] / by[DIRECT])
    server_rows = [x for x in rows if x["arm"] != DIRECT]
    headline = {
        "concurrency": h,
        "direct_throughput": summary[DIRECT][str(h)]["throughput"],
        "dyn_throughput": summary[DYN][str(h)]["throughput"],
        "nodyn_throughput": summary[NODYN][str(h)]["throughput"],
        "ratio_dyn_vs_direct": summary[DYN][str(h)]["throughput"] / summary[DIRECT][str(h)]["throughput"],
        "ratio_dyn_vs_nodyn": summary[DYN][str(h)]["throughput"] / summary[NODYN][str(h)]["throughput"],
        "ratio_dyn_vs_direct_per_round": per_round,
        "checked": sum(x["checked"] for x in server_rows),
        "wrong": sum(x["wrong"] for x in server_rows),
        "lost": sum(x["lost"] for x in server_rows),
        "errors": sum(x["errors"] for x in server_rows),
        "max_abs_diff": max(x["max_abs_diff"] for x in server_rows),
    }
    return {
        "settings": {"backend": args.backend, "artifact": str(args.artifact) if args.artifact else None,
                     "threads": args.threads, "concurrency": conc, "duration_s": args.duration, "rounds": args.rounds,
                     "max_batch": args.max_batch, "queue_delay_us": args.queue_delay_us, "tiles": args.tiles,
                     "atol": args.atol, "max_image_pixels": args.max_image_pixels, "protocol": "grpc",
                     "request": "one tile [1, 3, 32, 32] float32"},
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                 "load_average_at_end": os.getloadavg()},
        "versions": _versions(),
        "rows": rows, "summary": summary, "headline": headline, "metrics_dyn": metrics_dyn,
        "metrics_nodyn": metrics_nodyn, "bad_requests": bad, "shutdown": shutdown,
    }


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("nvidia-pytriton", "tritonclient", "onnxruntime", "torch", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
