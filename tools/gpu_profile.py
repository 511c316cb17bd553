"""What bounds the PyTorch backends at batch 1 and at batch 4096: launches, memory traffic or the top-k kernel.

    python -m tools.gpu_profile --out-dir OUT     # on a GPU (step 4 of tools/gpu_session.sh), beside OUT/results.json
    python -m tools.gpu_profile --cpu-dry-run --out-dir /tmp/prof    # the same code on the CPU, tiny, for CI

For each backend (benchmark names, built by ``benchmarks.backends``) and batch size, the compute-only call (the
runner's ``device_callable``, as the benchmark times it) is timed (CUDA events, p50 of a few calls after
warm-up), then one call is recorded with ``torch.profiler`` (CPU and CUDA activities). From that call's kernels:

- ``busy``: the sum of kernel times; ``kernels``: how many; ``idle``: 1 - busy / p50, the share of the call in
  which the GPU runs nothing (it waits for launches from the host, or between the nodes of a graph);
- the kernel time by category: ``top-k`` (torch.topk's radix-select kernels, or the fused Triton kernel),
  ``memory-bound`` (elementwise, reductions, softmax, LayerNorm, copies, inductor's fused pointwise and
  reduction kernels: each reads and writes whole tensors and does little arithmetic), ``gemm``,
  ``convolution``, ``attention`` (SDPA), ``other``;
- the **bound**: ``launches`` when the GPU idles for more than half the call, or its kernels average under
  4 us (a fixed cost per kernel dominates: fewer, fused kernels are the cure); else the largest category, named
  ``top-k kernel``, ``memory traffic`` or ``arithmetic (gemm/convolution/attention)``.

The targets of issue 17 are judged from the benchmark's ``results.json`` in the same folder when it is there
(step 3 of the session): batch 1 p50 <= 0.3 ms for a CUDA-graph backend, batch 4096 >= 300,000 images/s for an
fp16/bf16 one (compute mode); each target gets the bound measured here for the backend that came closest.
Writes ``profile.json`` (after every backend, so a time limit keeps what was done) and ``profile.md``.

``--cpu-dry-run``: the CPU eager model and the same model through the bucket layer with eager stand-ins of the
graphs (``runtime.cuda_graphs.eager_capture``), at batches 1 and 4, CPU activities only: the code path and the
files, not a statement about any GPU.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# the backends the targets judge first (fp16 graphs: batch 4096; graphs: batch 1), eager last: under --deadline
# (35 s in a GPU session) the ones cut are the least telling
GPU_BACKENDS = ("torch-compile-cuda-fp16-graph", "torch-triton-fp16-graph", "torch-masked-cuda-graph",
                "torch-masked-cuda")
GPU_BATCHES = (1, 4096)
TARGET_BATCH1_MS = 0.3
TARGET_BATCH4096_IPS = 300_000.0
# kernel-name patterns, first match wins (GPU kernel names, and aten op names for the CPU dry run)
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("top-k", r"topk|radix|sort|kth|withink|gathertopk|sparse_topk"),
    ("attention", r"sdpa|flash|fmha|attention|efficient_attn"),
    ("convolution", r"conv|fprop|dgrad|wgrad|winograd|implicit_gemm|cudnn"),
    ("gemm", r"gemm|cutlass|xmma|cublas|nvjet|matmul|aten::mm$|aten::addmm|aten::bmm|aten::linear"),
    ("memory-bound", r"elementwise|vectorized|reduce|softmax|norm|copy|memcpy|memset|fill|masked|where|cat|index|"
                     r"triton_|unrolled|clamp|add|mul|sub|div|gelu|relu|sum|amin|amax|mean|transpose|contiguous|"
                     r"to_copy|clone|empty"),
)
BOUND_NAMES = {"top-k": "top-k kernel", "memory-bound": "memory traffic", "gemm": "arithmetic (gemm/convolution/attention)",
               "convolution": "arithmetic (gemm/convolution/attention)",
               "attention": "arithmetic (gemm/convolution/attention)", "other": "other kernels"}


def category(name: str) -> str:
    low = name.lower()
    for cat, pattern in CATEGORIES:
        if re.search(pattern, low):
            return cat
    return "other"


def bound(p50_us: float, busy_us: float, kernels: int, shares: dict[str, float]) -> tuple[str, str]:
    """(bound, why) from one call's numbers: launches, or the category with the most kernel time."""
    idle = max(0.0, 1.0 - busy_us / p50_us) if p50_us > 0 else 0.0
    mean_us = busy_us / kernels if kernels else 0.0
    if kernels and (idle > 0.5 or mean_us < 4.0):
        return "launches", (f"the GPU is idle {100 * idle:.0f}% of the call and its {kernels} kernels average "
                            f"{mean_us:.1f} us: the call costs the launches (or graph nodes), not the work in them")
    if not shares:
        return "unknown", "no kernel times were recorded"
    top = max(shares, key=shares.get)
    return BOUND_NAMES[top], (f"{top} kernels take {100 * shares[top]:.0f}% of the kernel time; the GPU is idle "
                              f"{100 * idle:.0f}% of the call")


# --- recording ---------------------------------------------------------------------------------------------------
def kernel_times(prof: Any, device: str) -> list[tuple[str, float]]:
    """(name, microseconds) of every device kernel, memcpy and memset of the profiled region (CPU: aten ops' self
    times, which partition the time without double counting nested ops)."""
    if device == "cpu":
        return [(e.key, float(e.self_cpu_time_total) / e.count) for e in prof.key_averages()
                if e.self_cpu_time_total > 0 for _ in range(e.count)]
    out = []
    try:  # the raw events: kernels replayed by a CUDA graph are there even when no CPU op launched them
        for e in prof.profiler.kineto_results.events():
            kind = str(e.activity_type()).lower()  # kernel, gpu_memcpy, gpu_memset; not gpu_user_annotation ranges
            if "cuda" in str(e.device_type()).lower() and any(k in kind for k in ("kernel", "memcpy", "memset")):
                out.append((e.name(), e.duration_ns() / 1e3))
    except AttributeError:
        out = []
    if not out:
        out = [(e.name, e.time_range.elapsed_us()) for e in prof.events()
               if "cuda" in str(e.device_type).lower() and not e.name.startswith("##")]
    return out


def profile_call(fn: Callable[[], Any], device: str, calls: int) -> list[tuple[str, float]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    if device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
    return kernel_times(prof, device)


def measure(label: str, fn: Callable[[], Any], batch: int, device: str, repeats: int, calls: int = 3) -> dict[str, Any]:
    """p50 of ``repeats`` timed calls, then ``calls`` profiled calls summarised per call."""
    from benchmarks.stats import latency_stats
    from benchmarks.timers import make_timer

    timer = make_timer(device)
    for _ in range(3):
        fn()
    p50_ms = latency_stats([timer.time(fn) for _ in range(repeats)]).p50  # ms
    kernels = profile_call(fn, device, calls)
    busy_us = sum(t for _, t in kernels) / calls
    by_cat: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    for name, t in kernels:
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + t / calls
        by_name.setdefault(name, []).append(t)
    shares = {c: t / busy_us for c, t in sorted(by_cat.items(), key=lambda kv: -kv[1])} if busy_us > 0 else {}
    n = round(len(kernels) / calls)
    name, why = bound(p50_ms * 1e3, busy_us, n, shares)
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:10]
    return {"backend": label, "batch": batch, "device": device, "p50_ms": p50_ms,
            "images_per_s": batch / (p50_ms / 1e3) if p50_ms > 0 else None, "kernels_per_call": n,
            "kernel_us_per_call": busy_us, "gpu_idle_fraction": (max(0.0, 1 - busy_us / (p50_ms * 1e3))
                                                                   if p50_ms > 0 else None),
            "category_shares": shares, "bound": name, "why": why,
            "top_kernels": [{"name": k[:160], "category": category(k), "us_per_call": sum(v) / calls,
                             "launches_per_call": len(v) / calls} for k, v in top]}


# --- the run -------------------------------------------------------------------------------------------------------
def runners(names: tuple[str, ...], dry_run: bool) -> list[tuple[str, Callable[[], Any]]]:
    """(label, factory of an inactive runner) per backend."""
    from weights import DEFAULT_WEIGHTS

    if dry_run:
        from runtime.cuda_graphs import eager_capture
        from runtime.torch_runner import TorchRunner

        return [("torch-masked", lambda: TorchRunner(DEFAULT_WEIGHTS, threads=2)),
                ("torch-masked (bucket layer, eager stand-in graphs)",
                 lambda: TorchRunner(DEFAULT_WEIGHTS, threads=2, cuda_graph=True, graph_capture=eager_capture))]
    from benchmarks.backends import BackendInputs, build_specs, parse_backends

    specs = build_specs(parse_backends(",".join(names), GPU_BACKENDS),
                        BackendInputs(weights=DEFAULT_WEIGHTS, triton_unavailable=None), baseline=None)
    return [(s.name, s.make_runner) for s in specs]


def targets(results_path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 17's targets from the benchmark's results (compute mode), each with the bound profiled here."""
    from benchmarks.backends import GRAPH_BACKENDS, HALF_BACKENDS

    if not results_path.is_file():
        return {"source": None, "note": f"no benchmark results at {results_path}: targets not judged"}
    doc = json.loads(results_path.read_text())
    ok = [r for r in doc.get("results", []) if r.get("status") == "ok" and r.get("mode") == "compute"]
    out: dict[str, Any] = {"source": str(results_path), "gpu": (doc.get("environment") or {}).get("gpu")}
    b1 = [r for r in ok if r["batch"] == 1 and r["backend"] in GRAPH_BACKENDS]
    b4096 = [r for r in ok if r["batch"] == 4096 and r["backend"] in HALF_BACKENDS]
    if b1:
        best = min(b1, key=lambda r: r["latency_ms"]["p50"])
        out["batch1_p50_ms"] = {"target": TARGET_BATCH1_MS, "value": best["latency_ms"]["p50"],
                                "backend": best["backend"], "met": best["latency_ms"]["p50"] <= TARGET_BATCH1_MS}
    if b4096:
        best = max(b4096, key=lambda r: r["throughput_ips"])
        out["batch4096_images_per_s"] = {"target": TARGET_BATCH4096_IPS, "value": best["throughput_ips"],
                                         "backend": best["backend"],
                                         "met": best["throughput_ips"] >= TARGET_BATCH4096_IPS}
    for key, batch in (("batch1_p50_ms", 1), ("batch4096_images_per_s", 4096)):
        t = out.get(key)
        if t is None:
            out[key] = {"note": "no such row in the benchmark (not timed, failed parity, or past its deadline)"}
            continue
        same = [r for r in rows if r["batch"] == batch and r["backend"] == t["backend"]]
        near = same or [r for r in rows if r["batch"] == batch and "graph" in r["backend"]]
        if near:
            t["bound"], t["why"], t["profiled_backend"] = near[0]["bound"], near[0]["why"], near[0]["backend"]
    return out


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# What bounds the PyTorch backends ({doc['mode']})", "",
             f"- {doc['env'].get('gpu') or 'no GPU'}; torch {doc['env'].get('torch')}; created {doc['created_utc']}",
             "- p50: compute-only call (device-resident input and output), "
             f"{'CUDA events' if doc['mode'] == 'gpu' else 'host clock'}; kernel time and categories from "
             "torch.profiler over 3 calls; idle = 1 - kernel time / p50", "",
             "| backend | batch | p50 ms | images/s | kernels | kernel us | GPU idle | top-k | memory-bound | gemm | "
             "conv | attention | bound |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['backend']} | {r['batch']} | error: {r['error']} |||||||||||")
            continue
        s = r["category_shares"]
        pct = [f"{100 * s.get(c, 0):.0f}%" for c in ("top-k", "memory-bound", "gemm", "convolution", "attention")]
        idle = "-" if r["gpu_idle_fraction"] is None else f"{100 * r['gpu_idle_fraction']:.0f}%"
        lines.append(f"| {r['backend']} | {r['batch']} | {r['p50_ms']:.3f} | {r['images_per_s']:.0f} | "
                     f"{r['kernels_per_call']} | {r['kernel_us_per_call']:.0f} | {idle} | {' | '.join(pct)} | "
                     f"{r['bound']} |")
    if doc.get("skipped"):  # backends cut by --deadline vanished from the table without a word
        lines += ["", "Not profiled: " + "; ".join(f"{x['backend']} ({x['reason']})" for x in doc["skipped"]) + "."]
    lines += ["", "## Why", ""]
    lines += [f"- **{r['backend']}**, batch {r['batch']}: {r['bound']}: {r['why']}" for r in doc["rows"] if "why" in r]
    lines += ["", "## Targets (issue 17)", ""]
    t = doc.get("targets") or {}
    if not t.get("source"):
        lines.append(f"- {t.get('note', 'not judged')}")
    for key, label in (("batch1_p50_ms", "batch 1 p50 <= 0.3 ms (CUDA graph)"),
                       ("batch4096_images_per_s", "batch 4096 >= 300,000 images/s (fp16/bf16)")):
        v = t.get(key)
        if not v:
            continue
        if "value" not in v:
            lines.append(f"- {label}: {v['note']}")
            continue
        measured_on = v.get("profiled_backend")
        where = f"; bound measured on {measured_on}, not on {v['backend']}" if measured_on not in (None, v["backend"]) \
            else ""
        verdict = "met" if v["met"] else f"missed; bound: {v.get('bound', 'not profiled')} ({v.get('why', '')}{where})"
        lines.append(f"- {label}: {v['value']:.4g} by {v['backend']}: {verdict}")
    lines += ["", "## Largest kernels per call", ""]
    for r in doc["rows"]:
        if r.get("top_kernels"):
            lines.append(f"- {r['backend']}, batch {r['batch']}: " + "; ".join(
                f"{k['name'][:60]} ({k['category']}, {k['us_per_call']:.1f} us x{k['launches_per_call']:.0f})"
                for k in r["top_kernels"][:5]))
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    from moe_base.fileio import atomic_write, atomic_write_json

    paths = [out_dir / "profile.json", out_dir / "profile.md"]
    atomic_write_json(paths[0], doc)
    atomic_write(paths[1], markdown(doc).encode("utf-8", "surrogateescape"))
    return paths


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch; use --cpu-dry-run on a CPU machine")
    device = "cpu" if dry else "cuda"
    batches = args.batches if args.batches else ((1, 4) if dry else GPU_BATCHES)
    names = tuple(n for n in (args.backends or ",".join(GPU_BACKENDS)).split(",") if n)
    t0 = time.monotonic()
    doc: dict[str, Any] = {
        "mode": "cpu-dry-run" if dry else "gpu", "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": {"torch": torch.__version__, "gpu": None if dry else torch.cuda.get_device_name()},
        "batches": list(batches), "rows": [], "skipped": []}
    for label, make in runners(names, dry):
        if args.deadline and time.monotonic() - t0 > args.deadline:
            doc["skipped"].append({"backend": label, "reason": f"deadline of {args.deadline:.0f}s reached"})
            continue
        try:
            runner = make().activate()
        except Exception as e:  # noqa: BLE001 - recorded for this backend; the others still run
            doc["rows"].append({"backend": label, "batch": None, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        try:
            for batch in batches:
                x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
                try:
                    fn = (runner.device_callable(x) if device == "cuda" else None) or (lambda r=runner, x=x: r(x))
                    row = measure(label, fn, batch, device, repeats=args.repeats or (5 if dry else 20 if batch <= 64 else 8))
                except Exception as e:  # noqa: BLE001 - e.g. out of memory at the largest batch
                    row = {"backend": label, "batch": batch, "error": f"{type(e).__name__}: {e}"[:300]}
                doc["rows"].append(row)
                print(f"{label} batch {batch}: " + (row.get("error") or f"p50 {row['p50_ms']:.3f} ms, "
                      f"{row['kernels_per_call']} kernels, bound: {row['bound']}"), flush=True)
        finally:
            runner.deactivate()
            if device == "cuda":
                torch.cuda.empty_cache()
        doc["targets"] = targets(args.out_dir / "results.json", [r for r in doc["rows"] if "bound" in r])
        write(doc, args.out_dir)
    doc["targets"] = targets(args.out_dir / "results.json", [r for r in doc["rows"] if "bound" in r])
    doc["seconds"] = round(time.monotonic() - t0, 1)
    return doc


def batch_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated batch sizes >= 1 ('a' was a traceback, 0 two error rows and exit 1)."""
    try:
        values = tuple(int(b) for b in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes >= 1 (e.g. 1,4096), got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import positive_int, seconds

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out-dir", type=Path, required=True,  # its default was the committed first session's folder,
                   # whose old results.json it then judged the targets by
                   help="where profile.json / profile.md go (and where the bench's results.json is read for the "
                        "targets): tools/gpu_session.sh gives its own")
    p.add_argument("--cpu-dry-run", action="store_true", help="no GPU: the CPU model, eager stand-in graphs")
    p.add_argument("--backends", default=None, help=f"comma-separated benchmark backends (default {','.join(GPU_BACKENDS)})")
    p.add_argument("--batches", type=batch_list, default=None,
                   help="comma-separated batch sizes (default 1,4096; dry run 1,4)")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed calls per batch (default 20, 8 above batch 64; dry run 5)")
    p.add_argument("--deadline", type=seconds, default=None, help="seconds after which no further backend starts")
    args = p.parse_args(argv)
    from moe_base.errors import InputError
    from moe_base.fileio import check_folder_takes_files

    try:  # before the first backend, not as a traceback from mkdir; no folder is made before the GPU check
        check_folder_takes_files(args.out_dir, "profile.json")
    except InputError as e:
        p.error(f"--out-dir: {e}")
    doc = run(args)
    paths = write(doc, args.out_dir)
    print(markdown(doc))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0 if doc["rows"] and not any("error" in r for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
