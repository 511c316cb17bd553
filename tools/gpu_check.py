"""Device check for the sparse top-k attention kernel: one prepared run on a GPU machine (no TensorRT needed).

    python -m tools.gpu_check                 # on a CUDA machine (PyTorch, Triton; CuPy optional)
    python -m tools.gpu_check --cpu-dry-run   # here: interpreter correctness + AOT generation only

On a GPU it checks, in order (each step records its own error and the run goes on):

1. **correctness**: the Triton kernel against the masked reference (fp32 / fp16, N = 64 and 256 plus a
   non-power-of-two N, topk 32 / 64 / 128 where topk < N, a deliberate tie at the threshold);
2. **timing**: kernel vs PyTorch masked attention (and dense SDPA for scale), CUDA events, warm-up,
   synchronised, median of repeats;
3. **AOT**: the artifact built for the running GPU's compute capability, loaded from its PTX and launched
   through the CUDA driver exactly as the TensorRT plugin launches it (grid, block, dynamic shared memory,
   parameters in the order inputs, int32 extras, outputs), by ``cuLaunchKernel`` through ctypes and, if
   importable, by CuPy's ``RawModule``; also the artifact that keeps Triton's hidden scratch parameters,
   launched with null pointers for them; each output is checked against the reference;
4. **tensorrt**: if importable, engines from both ONNX flavours in fp32 and fp16 are built from the shipped
   weights, checked for parity and timed at batch 64 (compute only); otherwise the report says it was not run.

Results go to ``benchmarks/results/gpu_check.json`` (``--out``) and a summary is printed. The exit status
is 0 when every check passed. ``--cpu-dry-run`` runs what a CPU can: kernel correctness under
``TRITON_INTERPRET=1`` on tiny shapes (in a subprocess, since the interpreter must be chosen before the
kernel module is imported) and AOT artifact generation for ``--target`` (default cuda:90), no launch; its
report goes to the temporary folder unless ``--out`` says where (the committed
``benchmarks/results/gpu_check_cpu_dry_run.json`` is renewed only on purpose).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from moe_base.contract import TILE_SHAPE
from moe_base.errors import InputError
from moe_base.fileio import atomic_write_json, check_output_file
from topk_attention.launch import CudaDriver, plugin_args

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "gpu_check.json"
DEFAULT_RECORD = REPO / "build" / "trt_launch_record.json"
HEAD_DIM, NUM_HEADS = 32, 4  # the seed model: dim 128, 4 heads
SHAPES: list[tuple[int, int]] = [(n, k) for n in (64, 256) for k in (32, 64, 128) if k < n]


# -- helpers -----------------------------------------------------------------------------------------------
def _err_stats(out: Any, ref: Any, dtype: str) -> dict[str, Any]:
    """max / mean / p99 abs error, fraction beyond atol, PSNR between outputs, and the verdict."""
    import torch

    from moe_base.metrics import psnr_from_mse
    from moe_base.tolerances import get_tolerance

    err = (out.float() - ref.float()).abs().flatten()
    tol = get_tolerance("torch-triton", dtype).to_dict()
    mse = float((err ** 2).mean())
    peak = float(ref.float().abs().max())
    stats = {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
             "p99_abs": float(torch.quantile(err[:1_000_000].double(), 0.99)),
             "bad_fraction": float((err > tol["atol"]).double().mean()),
             "psnr_db": (None if mse == 0 else psnr_from_mse(mse, peak)), "tolerance": tol}  # None: equal
    stats["ok"] = stats["bad_fraction"] <= tol["max_bad_fraction"] and stats["max_abs"] <= tol["max_abs"]
    return stats


def _step(report: dict[str, Any], name: str, fn: Callable[[], Any]) -> Any:
    """Run one step; on failure record the error (the run goes on) and mark the report failed."""
    t0 = time.perf_counter()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - every failure is recorded with its traceback, then reported
        report["errors"].append({"step": name, "error": f"{type(e).__name__}: {e}",
                                 "traceback": traceback.format_exc(limit=6)})
        result = None
    report["step_seconds"][name] = round(time.perf_counter() - t0, 2)
    return result


def _versions() -> dict[str, Any]:
    from moe_base.machine import library_status

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for mod, (ok, ver) in library_status(("torch", "triton", "cupy", "onnxruntime", "tensorrt")).items():
        info[mod] = ver if ok else None
        if not ok:
            info[f"{mod}_reason"] = ver[:300]
    for tool in ("ptxas", "nvcc"):
        exe = shutil.which(tool)
        if exe:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip().splitlines()
            info[tool] = out[-1] if out else exe
        else:
            info[tool] = None
    return info


# -- correctness ---------------------------------------------------------------------------------------------
def _tie_inputs(n: int, d: int, device: str) -> tuple[Any, Any, Any, int, float]:
    """score_ij = a_i * c_j exactly; c has three equal values at ranks 5-7, so topk=5 keeps 7 keys."""
    import torch

    c = torch.tensor([9., 8., 7., 6., 5., 5., 5.] + [float(-j) for j in range(1, n - 6)])
    g = torch.Generator().manual_seed(1)
    q = torch.zeros(2, 2, n, d)
    q[..., 0] = torch.rand(2, 2, n, generator=g) + 0.5
    k = torch.randn(2, 2, n, d, generator=g)
    k[..., 0] = c
    v = torch.randn(2, 2, n, d, generator=g)
    return q.to(device), k.to(device), v.to(device), 5, 0.3


def correctness(device: str, shapes: list[tuple[int, int]], batch: int, heads: int, head_dim: int,
                extra_n: int | None) -> list[dict[str, Any]]:
    """Kernel vs the masked reference (fp32 reference on the same, possibly fp16-rounded, inputs)."""
    import torch

    from moe_model.attention import sparse_topk_attention
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    rows = []
    cases = list(shapes) + ([(extra_n, extra_n // 4)] if extra_n else [])
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for n, topk in cases:
            g = torch.Generator().manual_seed(n * 1000 + topk)
            q, k, v = (torch.randn(batch, heads, n, head_dim, generator=g).to(device, dtype) for _ in range(3))
            out = sparse_topk_attention_triton(q, k, v, topk)
            ref = sparse_topk_attention(q.float(), k.float(), v.float(), topk)
            rows.append({"case": "random", "dtype": dtype_name, "n": n, "topk": topk,
                         "shape": list(q.shape), **_err_stats(out, ref, dtype_name)})
        q, k, v, topk, scale = _tie_inputs(24, 8, device)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        out = sparse_topk_attention_triton(q, k, v, topk, scale=scale)
        ref = sparse_topk_attention(q.float(), k.float(), v.float(), topk, scale=scale)
        gather = sparse_topk_attention(q.float(), k.float(), v.float(), topk, impl="gather", scale=scale)
        row = {"case": "tie_at_threshold", "dtype": dtype_name, "n": 24, "topk": topk, "shape": list(q.shape),
               **_err_stats(out, ref, dtype_name), "max_abs_vs_gather": float((out.float() - gather).abs().max())}
        row["ok"] = row["ok"] and row["max_abs_vs_gather"] > 1e-3  # ties kept: differs from topk->gather
        rows.append(row)
    return rows


# -- timing --------------------------------------------------------------------------------------------------
def _time_cuda(fn: Callable[[], Any], warmup: int, iters: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean milliseconds per call over ``iters`` back-to-back calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    means = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        means.append(start.elapsed_time(end) / iters)
    return sorted(means)[len(means) // 2]


def timing(shapes: list[tuple[int, int]], batch: int, warmup: int, iters: int) -> list[dict[str, Any]]:
    import torch

    from moe_model.attention import dense_attention, sparse_topk_attention
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    rows = []
    for dtype_name, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        for n, topk in shapes:
            x = tuple(torch.randn(batch, NUM_HEADS, n, HEAD_DIM, device="cuda", dtype=dtype) for _ in range(3))
            with torch.inference_mode():
                t_kernel = _time_cuda(partial(sparse_topk_attention_triton, *x, topk), warmup, iters)
                t_masked = _time_cuda(partial(sparse_topk_attention, *x, topk), warmup, iters)
                t_dense = _time_cuda(partial(dense_attention, *x), warmup, iters)
                by_block_m = {bm: _time_cuda(partial(sparse_topk_attention_triton, *x, topk, block_m=bm),
                                             warmup, iters) for bm in (16, 32, 64)}  # data for tuning
            rows.append({"dtype": dtype_name, "n": n, "topk": topk, "shape": list(x[0].shape),
                         "triton_ms": t_kernel, "torch_masked_ms": t_masked, "torch_dense_sdpa_ms": t_dense,
                         "speedup_vs_masked": t_masked / t_kernel, "triton_ms_by_block_m": by_block_m})
    return rows


# -- AOT: build, and launch through the CUDA driver as the plugin does -----------------------------------------
def _launch_cupy(art: Any, args: list[tuple[str, int]], batch: int) -> dict[str, int]:
    import cupy as cp
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{art.kernel_name}.ptx"
        path.write_text(art.ptx)
        fn = cp.RawModule(path=str(path)).get_function(art.kernel_name)
        if art.needs_shared_opt_in:
            fn.max_dynamic_shared_size_bytes = art.shared_mem
        cargs = tuple(np.uint64(v) if kind == "u64" else np.int32(v) for kind, v in args)
        fn(art.grid(batch), art.block, cargs, shared_mem=art.shared_mem)
        cp.cuda.Device().synchronize()
        return {"num_regs": int(fn.num_regs), "local_bytes": int(fn.local_size_bytes)}


def aot_gpu(shapes: list[tuple[int, int]], batch: int) -> dict[str, Any]:
    import torch

    from moe_model.attention import sparse_topk_attention
    from topk_attention.aot import build_aot_artifact, check_driver
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    major, minor = torch.cuda.get_device_capability()
    target = f"cuda:{major * 10 + minor}"
    drv = CudaDriver()
    drv_version = drv.version()
    drv.ensure_context(torch.cuda.current_device())
    try:
        import cupy  # noqa: F401
        launchers = ["driver-ctypes", "cupy"]
    except Exception:  # noqa: BLE001 - cupy is optional: the ctypes driver path is the reference launch
        launchers = ["driver-ctypes"]
    rows = []
    variants = [(dt, n, k, "strip") for dt in ("fp32", "fp16") for n, k in shapes] + [("fp32", 64, 32, "keep")]
    for dtype_name, n, topk, hidden in variants:
        dtype = torch.float32 if dtype_name == "fp32" else torch.float16
        t0 = time.perf_counter()
        art = build_aot_artifact(n, HEAD_DIM, topk, dtype_name, target=target, num_heads=NUM_HEADS,
                                 hidden_params=hidden)
        row: dict[str, Any] = {"dtype": dtype_name, "n": n, "topk": topk, "hidden_params": hidden,
                               "target": target, "build_s": round(time.perf_counter() - t0, 2),
                               "ptx_version": art.ptx_version, "min_driver": art.min_driver,
                               "grid": art.grid(batch), "block": art.block, "shared_mem": art.shared_mem,
                               "params": [f"{p.name}:{p.kind}" for p in art.params], "hash": art.hash[:16],
                               "launches": {}}
        check_driver(art, drv_version)
        g = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(art.tensor_shape(batch), generator=g).to("cuda", dtype) for _ in range(3))
        ref = sparse_topk_attention(q.float(), k.float(), v.float(), topk, scale=art.scale)
        jit = sparse_topk_attention_triton(q, k, v, topk, scale=art.scale)
        for launcher in launchers:
            o = torch.full_like(q, float("nan"))
            args = plugin_args(art, {"q_ptr": q, "k_ptr": k, "v_ptr": v, "o_ptr": o}, batch)
            torch.cuda.synchronize()
            try:
                if launcher == "cupy":
                    attrs = _launch_cupy(art, args, batch)
                else:
                    attrs = drv.launch(art.ptx, art.kernel_name, art.grid(batch), art.block, art.shared_mem, args)
                stats = _err_stats(o, ref, dtype_name)
                stats["max_abs_vs_jit"] = float((o.float() - jit.float()).abs().max())
                row["launches"][launcher] = {**attrs, **stats}
            except Exception as e:  # noqa: BLE001 - recorded per launcher
                row["launches"][launcher] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        row["ok"] = all(r.get("ok") for r in row["launches"].values())
        rows.append(row)
    return {"target": target, "cuda_driver_version": drv_version, "launchers": launchers, "rows": rows}


def launch_record(path: Path, batches: tuple[int, ...] = (1, 8, 64)) -> dict[str, Any]:
    """Launch each kernel of a TensorRT launch record exactly as the record says TensorRT would.

    The record (``python -m tools.trt_layer.drive``) holds what TensorRT's own plugin layer computed from our
    plugin: the PTX, the grid / block / shared memory and the extra int32 arguments for given batch sizes. Here
    they are used as they are: arguments in TensorRT's order (input pointers, extras, output pointers), launched
    through the CUDA driver, and the output compared with the reference and the JIT kernel.
    """
    import torch

    from moe_model.attention import sparse_topk_attention
    from topk_attention.triton_kernel import sparse_topk_attention_triton

    rec = json.loads(path.read_text())
    major, minor = torch.cuda.get_device_capability()
    if rec["target"] != f"cuda:{major}{minor}":
        raise RuntimeError(f"the launch record was made for {rec['target']}, this GPU is cuda:{major}{minor}; "
                           f"make one for it: python -m tools.trt_layer.drive --version "
                           f"{rec['tensorrt_plugin_layer']} --target cuda:{major}{minor} -o {path}")
    drv = CudaDriver()
    drv.ensure_context(torch.cuda.current_device())
    rows, seen = [], set()
    for node in rec["nodes"]:
        if node["ptx_sha256"] in seen:
            continue
        seen.add(node["ptx_sha256"])
        fields = {name: values[0] for name, _, values in node["fields"]}
        topk, scale = int(fields["topk"]), float(fields["scale"])
        dtype = torch.float16 if node["input_types"][0] == "HALF" else torch.float32
        dtype_name = "fp16" if dtype == torch.float16 else "fp32"
        ptx = rec["kernels"][node["ptx_sha256"]]
        for batch in batches:
            launch = node["launch"][str(batch)]
            shape = [batch if d == "batch" else d for d in node["input_shapes"][0]]
            g = torch.Generator().manual_seed(11 + batch)
            q, k, v = (torch.randn(shape, generator=g).to("cuda", dtype) for _ in range(3))
            o = torch.full_like(q, float("nan"))
            args = ([("u64", t.data_ptr()) for t in (q, k, v)]
                    + [("i32", e["value"]) for e in launch["extras"]] + [("u64", o.data_ptr())])
            torch.cuda.synchronize()
            attrs = drv.launch(ptx, node["kernel_name"], tuple(launch["grid"]), tuple(launch["block"]),
                               launch["shared_mem"], args)
            ref = sparse_topk_attention(q.float(), k.float(), v.float(), topk, scale=scale)
            jit = sparse_topk_attention_triton(q, k, v, topk, scale=scale)
            stats = _err_stats(o, ref, dtype_name)
            stats["max_abs_vs_jit"] = float((o.float() - jit.float()).abs().max())
            rows.append({"node": node["node"], "precision": node["precision"], "batch": batch, "topk": topk,
                         "grid": launch["grid"], "block": launch["block"], "shared_mem": launch["shared_mem"],
                         "extras": launch["extras"], **attrs, **stats})
    return {"record": str(path), "tensorrt_plugin_layer": rec["tensorrt_plugin_layer"], "target": rec["target"],
            "rows": rows}


def aot_cpu(target: str, shapes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Artifacts for a named target, no GPU: build, record the contract, assemble with ptxas if present."""
    from topk_attention.aot import build_aot_artifact, ptxas_check

    rows = []
    for dtype_name in ("fp32", "fp16"):
        for n, topk in shapes:
            t0 = time.perf_counter()
            art = build_aot_artifact(n, HEAD_DIM, topk, dtype_name, target=target, num_heads=NUM_HEADS)
            row = {"dtype": dtype_name, "n": n, "topk": topk, "target": art.target,
                   "build_s": round(time.perf_counter() - t0, 2), "ptx_version": art.ptx_version,
                   "ptx_target": art.ptx_target, "min_driver": art.min_driver, "grid(batch=8)": art.grid(8),
                   "block": art.block, "shared_mem": art.shared_mem, "needs_shared_opt_in": art.needs_shared_opt_in,
                   "params": [f"{p.name}:{p.kind}" for p in art.params],
                   "hidden_params_detected": art.hidden_params_detected,
                   "hidden_params_stripped": art.hidden_params_stripped, "ptx_bytes": len(art.ptx),
                   "hash": art.hash[:16], "ok": True}
            if shutil.which("ptxas"):  # an independent assembler; rejecting the PTX raises AOTError
                log = ptxas_check(art)
                regs = [line.split(":", 1)[-1].strip() for line in log.splitlines()
                        if "registers" in line or "spill" in line]
                row["ptxas"] = " | ".join(regs)
                row["spills"] = " 0 bytes spill stores" not in log  # a performance warning, not a failure
            else:
                row["ptxas"] = "not run: ptxas not on PATH"
            rows.append(row)
    return rows


def _interp_correctness_child() -> None:
    """Runs in a subprocess with TRITON_INTERPRET=1: tiny-shape correctness, JSON on the last stdout line."""
    rows = correctness("cpu", [(24, 5), (40, 13)], batch=1, heads=2, head_dim=8, extra_n=None)
    print(json.dumps(rows))


def _interp_correctness() -> list[dict[str, Any]]:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "tools.gpu_check", "--_interp-child"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"interpreter run failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# -- TensorRT (only where it is importable) -----------------------------------------------------------------
def trt_engines(workdir: Path) -> list[dict[str, Any]]:
    """Export both ONNX flavours, build fp32 and fp16 engines, check parity, time batch 64 (compute only)."""
    import tensorrt as trt
    import torch

    from export.engine import BuildOptions, build_engine, plan_build
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model
    from runtime.trt_runner import TensorRTRunner
    from weights import DEFAULT_WEIGHTS

    model = load_model(DEFAULT_WEIGHTS)
    rows = []
    for flavor in ("plugin", "portable"):
        for precision in ("fp32", "fp16"):
            plan = plan_build(trt.__version__, precision)
            onnx_path = workdir / f"{flavor}.{plan.onnx_precision}.onnx"
            if not onnx_path.exists():
                export_onnx(model, onnx_path, ExportOptions(flavor=flavor, precision=plan.onnx_precision),
                            weights_path=DEFAULT_WEIGHTS, log=lambda s: None)
            t0 = time.perf_counter()
            res = build_engine(onnx_path, workdir / f"{flavor}.{precision}.engine",
                               BuildOptions(precision=precision, max_batch=4096, cache_dir=workdir / "cache"),
                               weights=DEFAULT_WEIGHTS, log=lambda s: None)
            build_s = time.perf_counter() - t0
            with TensorRTRunner(res.path) as r:
                x = torch.rand(64, *TILE_SHAPE, device="cuda")
                y = torch.empty_like(x)
                ms = _time_cuda(partial(r.device_call, x, y), warmup=10, iters=50)
            rows.append({"flavor": flavor, "precision": precision, "build_s": round(build_s, 1),
                         "parity": res.parity.to_dict(), "batch64_ms": ms, "images_per_s": 64 / ms * 1e3,
                         "ok": res.parity.passed})
    return rows


# -- report ------------------------------------------------------------------------------------------------
def _summary(report: dict[str, Any]) -> str:
    env = report["env"]
    head = (f"gpu_check ({report['mode']}) on {env.get('gpu', 'no GPU')}; torch {env.get('torch')}, "
            f"triton {env.get('triton')}, tensorrt: {report['tensorrt']}")
    lines = [head]
    for r in report.get("correctness") or []:
        lines.append(f"  correctness {r['case']:<17} {r['dtype']} N={r['n']:<4} k={r['topk']:<4} "
                     f"max {r['max_abs']:.2e} p99 {r['p99_abs']:.2e} bad {r['bad_fraction']:.1e} "
                     f"{'OK' if r['ok'] else 'FAIL'}")
    for r in report["timing"] if isinstance(report.get("timing"), list) else []:
        lines.append(f"  timing {r['dtype']} {tuple(r['shape'])} k={r['topk']:<4} triton {r['triton_ms']:.4f} ms  "
                     f"masked {r['torch_masked_ms']:.4f} ms  dense {r['torch_dense_sdpa_ms']:.4f} ms  "
                     f"x{r['speedup_vs_masked']:.2f}  block_m sweep "
                     + " ".join(f"{bm}:{ms:.4f}" for bm, ms in r["triton_ms_by_block_m"].items()))
    aot = report.get("aot")
    rows = aot.get("rows", []) if isinstance(aot, dict) else (aot or [])
    for r in rows:
        base = (f"  aot {r['dtype']} N={r['n']:<4} k={r['topk']:<4} PTX {r['ptx_version']} shared {r['shared_mem']} "
                f"block {tuple(r['block'])}")
        if "launches" in r:
            for name, lr in r["launches"].items():
                detail = (f"max {lr['max_abs']:.2e} vs jit {lr['max_abs_vs_jit']:.1e} regs {lr.get('num_regs')}"
                          if "max_abs" in lr else lr.get("error", ""))
                lines.append(f"{base} [{r['hidden_params']}] {name}: {detail} {'OK' if lr.get('ok') else 'FAIL'}")
        else:
            lines.append(f"{base} params {len(r['params'])} ({r['ptxas']}) {'OK' if r['ok'] else 'FAIL'}")
    tl = report.get("trt_launch")
    for r in tl["rows"] if isinstance(tl, dict) else []:
        lines.append(f"  launch as TensorRT {tl['tensorrt_plugin_layer']} says: {r['precision']} batch {r['batch']:<3} "
                     f"grid {tuple(r['grid'])} block {tuple(r['block'])} shared {r['shared_mem']} extras "
                     f"{[e['value'] for e in r['extras']]}: max {r['max_abs']:.2e} vs jit {r['max_abs_vs_jit']:.1e} "
                     f"{'OK' if r['ok'] else 'FAIL'}")
    for r in report["trt"] if isinstance(report.get("trt"), list) else []:
        lines.append(f"  tensorrt {r['flavor']:<8} {r['precision']} build {r['build_s']}s parity "
                     f"{'PASS' if r['ok'] else 'FAIL'} (max {r['parity']['max_abs']:.1e}) batch 64: "
                     f"{r['batch64_ms']:.3f} ms = {r['images_per_s']:.0f} img/s")
    for key in ("timing", "aot_launch", "trt_launch", "trt"):
        if isinstance(report.get(key), str):
            lines.append(f"  {key}: {report[key]}")
    for e in report["errors"]:
        lines.append(f"  ERROR in {e['step']}: {e['error']}")
    lines.append(f"overall: {'PASS' if report['ok'] else 'FAIL'}  ({report['total_seconds']:.1f} s)")
    return "\n".join(lines)


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every check; ``save(report)`` after each step, so that a run stopped by its time limit leaves what it did."""
    t0 = time.perf_counter()
    report: dict[str, Any] = {"mode": "cpu-dry-run" if args.cpu_dry_run else "gpu",
                              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                              "env": _versions(), "errors": [], "step_seconds": {}}
    report["tensorrt"] = (f"importable ({report['env']['tensorrt']})" if report["env"]["tensorrt"]
                          else "not importable")

    def step(key: str, name: str, fn: Callable[[], Any]) -> None:
        report[key] = _step(report, name, fn)
        failed = any(e["step"] == name for e in report["errors"])
        print(f"gpu_check: {name}: {'ERROR' if failed else 'done'} in {report['step_seconds'][name]} s", flush=True)
        if save is not None:
            save({**report, "partial": f"written after the step '{name}': the run had not finished"})

    if args.cpu_dry_run:
        step("correctness", "correctness (interpreter)", _interp_correctness)
        report["timing"] = "not run: no GPU (cpu dry run)"
        step("aot", "aot build", lambda: aot_cpu(args.target, SHAPES))
        report["aot_launch"] = "not run: no GPU (cpu dry run)"
        report["trt_launch"] = "not run: no GPU (cpu dry run)"
        report["trt"] = "not run: no GPU (cpu dry run)"
    else:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("no CUDA GPU visible to torch; run with --cpu-dry-run on a CPU machine")
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            raise SystemExit("TRITON_INTERPRET is set; unset it for the GPU run")
        torch.backends.cuda.matmul.allow_tf32 = False  # an fp32 reference, not TF32
        props = torch.cuda.get_device_properties(0)
        report["env"].update(gpu=props.name, capability=list(torch.cuda.get_device_capability()),
                             torch_cuda=torch.version.cuda)
        step("correctness", "correctness", lambda: correctness(
            "cuda", SHAPES, batch=2, heads=NUM_HEADS, head_dim=HEAD_DIM, extra_n=200))
        step("timing", "timing", lambda: timing(SHAPES, args.batch, args.warmup, args.iters))
        step("aot", "aot build + driver launch", lambda: aot_gpu(SHAPES, batch=8))
        if args.launch_record.is_file():
            step("trt_launch", "launch as TensorRT's plugin layer says",
                                         lambda: launch_record(args.launch_record))
        else:
            report["trt_launch"] = (f"not run: no launch record at {args.launch_record} (make it where the bindings "
                                    f"wheel installs: python -m tools.trt_layer.drive --version 11.4.0.106 "
                                    f"--target cuda:90 -o build/trt_launch_record.json)")
        if report["env"]["tensorrt"]:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                step("trt", "tensorrt engines", lambda: trt_engines(Path(tmp)))
        else:
            report["trt"] = "not run: tensorrt is not importable on this machine"
    aot = report.get("aot")
    aot_rows = aot.get("rows", []) if isinstance(aot, dict) else (aot or [])
    trt_rows = report["trt"] if isinstance(report.get("trt"), list) else []
    launch_rows = report["trt_launch"]["rows"] if isinstance(report.get("trt_launch"), dict) else []
    report["ok"] = (not report["errors"] and all(r["ok"] for r in report.get("correctness") or [])
                    and bool(aot_rows) and all(r["ok"] for r in aot_rows) and all(r["ok"] for r in trt_rows)
                    and all(r["ok"] for r in launch_rows))
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    return report


def dry_run_default() -> Path:
    """The dry run's report in the temporary folder, named for the user: a fixed name there was another user's
    file on a shared machine (refused, or mixed with theirs)."""
    return Path(tempfile.gettempdir()) / f"gpu_check_cpu_dry_run.{os.getuid() if hasattr(os, 'getuid') else 'user'}.json"


def main(argv: list[str] | None = None) -> int:
    from moe_denoise.commands import positive_int, whole_number

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None,
                   help=f"JSON report path (default {DEFAULT_OUT.relative_to(REPO)}; the dry run defaults to "
                        "gpu_check_cpu_dry_run.UID.json in the temporary folder, so that it leaves the committed "
                        "record alone: pass --out benchmarks/results/gpu_check_cpu_dry_run.json to renew that)")
    p.add_argument("--cpu-dry-run", action="store_true", help="no GPU: interpreter correctness + AOT build only")
    p.add_argument("--target", default="cuda:90", help="AOT target for the dry run (the GPU run uses the GPU's)")
    p.add_argument("--launch-record", type=Path, default=DEFAULT_RECORD,
                   help="launch parameters computed by TensorRT's own plugin layer (tools/trt_layer/drive.py)")
    p.add_argument("--batch", type=positive_int, default=64, help="images per timed call (x 4 heads)")
    p.add_argument("--warmup", type=lambda t: whole_number(t, 0, None, "a number of calls >= 0"), default=10,
                   help="untimed calls before each timing")
    p.add_argument("--iters", type=positive_int, default=50,
                   help="timed calls per timing (0 divided by zero in the timing step, on the lent GPU)")
    p.add_argument("--_interp-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._interp_child:
        _interp_correctness_child()
        return 0
    out = args.out or (dry_run_default() if args.cpu_dry_run else DEFAULT_OUT)
    try:  # before the first step (device time on a lent GPU), not at its first save; a folder or an unmakeable
        check_output_file(out, overwrite=True)  # place gave a traceback there
    except InputError as e:
        p.error(f"--out: {e}")

    def save(report: dict[str, Any]) -> None:  # a temporary of its own, renamed: two runs never mix their halves
        atomic_write_json(out, report)

    report = run(args, save)
    save(report)
    print(_summary(report))
    print(f"report: {out}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
