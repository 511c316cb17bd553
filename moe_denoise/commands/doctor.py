"""moe-denoise doctor: what is installed, which backends work here, and why not the others."""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from moe_base.optional import installed

from . import HelpFormatter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="versions, GPU, and which backends are usable here",
                       description="Reports Python, torch, onnx, onnxruntime (and its providers), tensorrt, triton, "
                                   "CUDA and the GPU, then which backends can run here and why not the others.",
                       formatter_class=HelpFormatter)
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.set_defaults(func=run)


def gather() -> dict[str, Any]:
    from moe_base.machine import gpu_info, library_status

    info: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                            "packages": {}, "backends": {}}
    for mod, (ok, ver) in library_status().items():
        info["packages"][mod] = ver if ok else None
        if not ok:
            info.setdefault("missing", {})[mod] = ver
    gpu: dict[str, Any] = {"cuda_available": False}
    if info["packages"]["torch"]:
        import torch

        gpu["torch_cuda_build"] = torch.version.cuda
        found = gpu_info()
        if found:
            gpu.update(cuda_available=True, **found)
    info["gpu"] = gpu
    providers = []
    if info["packages"]["onnxruntime"]:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    info["onnxruntime_providers"] = providers
    miss = info.get("missing", {})

    def backend(name: str, ok: bool, why: str) -> None:
        info["backends"][name] = {"usable": ok, "reason": why}

    backend("torch (CPU)", bool(info["packages"]["torch"]), "ok" if info["packages"]["torch"] else miss.get("torch", ""))
    backend("torch (CUDA)", gpu["cuda_available"], "ok" if gpu["cuda_available"] else "torch sees no CUDA GPU")
    tri = bool(info["packages"]["triton"]) and gpu["cuda_available"]
    backend("torch + Triton kernel", tri, "ok" if tri else ("triton not installed: pip install 'moe-denoise[gpu]'"
                                                            if not info["packages"]["triton"] else "needs a CUDA GPU "
                                                            "(the kernel runs on CPU only under TRITON_INTERPRET=1, "
                                                            "for tests)"))
    backend("ONNX Runtime CPU", "CPUExecutionProvider" in providers,
            "ok" if providers else "onnxruntime not installed: pip install 'moe-denoise[onnx]'")
    for prov, label in (("CUDAExecutionProvider", "ONNX Runtime CUDA"), ("TensorrtExecutionProvider",
                                                                         "ONNX Runtime TensorRT EP")):
        backend(label, prov in providers, "ok" if prov in providers else
                f"{prov} not in this onnxruntime's providers {providers}: install onnxruntime-gpu on a GPU machine"
                if info["packages"]["onnxruntime"] else "onnxruntime not installed: on a GPU machine, pip install "
                "onnxruntime-gpu")
    trt_ok = bool(info["packages"]["tensorrt"]) and gpu["cuda_available"]
    backend("TensorRT engines", trt_ok, "ok" if trt_ok else
            "no CUDA GPU" if info["packages"]["tensorrt"] else
            miss.get("tensorrt", "") if installed("tensorrt") else  # installed, and its import fails: why
            "tensorrt not installed (pip install 'moe-denoise[trt]' on a Linux machine with an NVIDIA GPU)")
    plug = bool(info["packages"]["onnxruntime_extensions"]) and bool(providers)
    backend("plugin graph in ONNX Runtime (reference op)", plug, "ok" if plug else
            "needs onnxruntime and onnxruntime-extensions: pip install 'moe-denoise[onnx]'")
    serving = [m for m in ("pytriton", "tritonclient") if not installed(m)]
    backend("serving (Triton via PyTriton)", not serving, "ok" if not serving else
            f"{' and '.join(serving)} not installed: pip install 'moe-denoise[serve]' (Linux; it pins NumPy < 2)")
    info["features"] = features()
    info["cache"] = cache_status()
    return info


FEATURES = (  # what a base install lacks besides the backends: (feature, modules, extra); doctor named none of them
    ("16-bit colour PNG (read and written as 16-bit)", ("png",), "images"),
    ("16-bit colour TIFF (read and written as 16-bit)", ("tifffile",), "images"),
    ("evaluate: SSIM and the photos suite", ("skimage",), "eval"),
    ("evaluate: the BM3D baseline", ("bm3d",), "eval"),
    ("bench and evaluate plots", ("matplotlib",), "plot"),
)


def features() -> dict[str, dict[str, Any]]:
    """Each optional feature outside the backends: usable here, or the extra that brings it."""
    from moe_base.optional import available

    out = {}
    for name, modules, extra in FEATURES:
        missing = [m for m in modules if not available(m)[0]]
        out[name] = {"usable": not missing, "reason": "ok" if not missing else
                     f"{', '.join(missing)} not importable: pip install 'moe-denoise[{extra}]'"}
    return out


def cache_status() -> dict[str, Any]:
    """The cache folder ($MOE_DENOISE_CACHE), whether it can be written, and the models 'moe-denoise export' and
    'build' left there by default (with the weights each was made from): what --backend ort / trt would run."""
    from moe_base.errors import InputError
    from moe_base.fileio import check_output_file
    from moe_base.paths import cache_dir, cache_dir_note, engine_path, onnx_path
    from runtime.base import artifact_made_from, weights_label

    root = cache_dir()
    try:  # as the commands that write there check it: a file in it, or where it would be made
        check_output_file(root / ".doctor-probe", overwrite=True)
        writable, why = True, None
    except InputError as e:
        writable, why = False, str(e).removesuffix("; choose a folder you can write to")
    models = {}
    portable, plugin = onnx_path("portable"), onnx_path("plugin")
    for kind, path in (("ort", portable), ("trt", engine_path(plugin, "fp32"))):
        made = artifact_made_from(path)
        weights = weights_label(made["weights"], made["weights_sha256"]) if made else "unknown"
        models[kind] = {"path": str(path), "exists": path.is_file(), "weights": weights if path.is_file() else None,
                        "problem": artifact_problem(path) if path.is_file() else None}
    return {"path": str(root), "writable": writable, "not_writable_because": why, "default_models": models,
            "note": cache_dir_note()}


def artifact_problem(path: Path) -> str | None:
    """Why the runner would refuse the artifact at ``path``, as its manifest, size and sha256 tell (no loading), or
    None: a truncated model was listed as what --backend ort runs, and so was one with a byte changed (a 2.4 MB
    model hashes in milliseconds)."""
    from moe_base.errors import ToolkitError
    from moe_base.fileio import sha256_file
    from moe_base.manifest import read_manifest, remake

    try:
        manifest = read_manifest(path)
        size, expected = path.stat().st_size, manifest["artifact"]["bytes"]
        if size != expected:
            return (f"the file is {size:,} bytes but its manifest says {expected:,} (damaged, or replaced by hand); "
                    f"{remake(path, manifest)}")
        if sha256_file(path) != manifest["artifact"]["sha256"]:
            return f"its contents do not match its manifest's sha256 (damaged, or replaced by hand); {remake(path, manifest)}"
    except ToolkitError as e:
        return str(e)
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    return None


def broken_import(module: str) -> str:
    """'installed, but importing it fails: ImportError: libnvonnxparser.so.11: ...' for an installed module."""
    import importlib

    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - what failed is the report
        return f"installed, but importing it fails: {type(e).__name__}: {e}"
    return "installed"


def run(args: argparse.Namespace) -> int:
    info = gather()
    if args.json:
        from moe_denoise.cli import print_json

        print_json(info)
        return 0
    print(f"python       {info['python']} on {info['platform']}")
    for mod, ver in info["packages"].items():
        print(f"{mod:<24} {ver or (broken_import(mod) if installed(mod) else 'not installed')}")
    g = info["gpu"]
    print(f"GPU          {g.get('name', 'none')}" + (f" (compute {g['compute_capability']}, {g['memory_gib']} GiB)"
                                                     if g["cuda_available"] else ""))
    providers = (", ".join(info["onnxruntime_providers"]) or "none") if info["packages"]["onnxruntime"] \
        else "(onnxruntime not installed)"  # words, not a Python list and None
    print(f"torch CUDA build: {g.get('torch_cuda_build') or 'none (a CPU-only build)'}; onnxruntime providers: "
          f"{providers}")
    for title in ("backends", "features"):  # each usable, or why not
        print(f"\n{title}:")
        for name, b in info[title].items():
            print(f"  [{'x' if b['usable'] else ' '}] {name:<44} {'' if b['usable'] else b['reason']}".rstrip())
    c = info["cache"]
    print(f"\ncache        {c['path']} " + ("(writable)" if c["writable"] else
                                              f"(NOT writable: {c['not_writable_because']}; set MOE_DENOISE_CACHE "
                                              f"to a folder you can write to)"))
    if c.get("note"):
        print(f"  note: {c['note']}")
    for kind, m in c["default_models"].items():
        what = (f"{m['path']} (weights {m['weights']})" + (f"; NOT usable: {m['problem']}" if m["problem"] else "")
                if m["exists"] else
                f"none yet ({'moe-denoise export' if kind == 'ort' else 'moe-denoise export --flavor plugin, then build'})")
        print(f"  --backend {kind}: {what}")
    return 0
