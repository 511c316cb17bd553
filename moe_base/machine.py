"""The description of this machine and its libraries, in one place: CPU, load, thread settings, library versions,
and the GPU (name, compute capability, memory, clocks) when there is one.

Used by artifact manifests, the runners' environment checks, ``moe-denoise doctor`` and the benchmark results.
Only the standard library at import; torch and nvidia-smi are asked for inside the functions.
"""
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .optional import available, optional_import

LIBRARIES = ("torch", "numpy", "onnx", "onnxruntime", "onnxruntime_extensions", "triton", "tensorrt", "polygraphy",
             "safetensors", "PIL", "skimage", "matplotlib")
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")


def too_many_threads(value: int | None) -> str | None:
    """Why ``value`` threads are refused, or None (also for None: the library's choice). A run takes at most 4x this
    machine's CPUs: more only wait their turn; thousands were refused by the OpenMP runtime, exhausted memory, or
    (torch, 100,000) ended the process with a segmentation fault."""
    most = 4 * (os.cpu_count() or 1)
    if value is None or value <= most:
        return None
    return f"this machine has {os.cpu_count()} CPUs; at most {most} threads (got {value}); more only wait their turn"


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """CPU model, logical CPUs, usable cores (affinity) and the SIMD flags that decide GEMM speed."""
    model: str | None = None
    flags: set[str] = set()
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and model is None:  # x86 / ARM spelling
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    simd = sorted(f for f in flags if f in {"avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile",
                                               "amx_bf16", "neon", "asimd", "sve"})
    return {"model": model, "logical_cpus": os.cpu_count(), "usable_cores": usable, "simd": simd,
            "machine": platform.machine()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def library_status(modules: tuple[str, ...] = LIBRARIES) -> dict[str, tuple[bool, str]]:
    """For each module: (True, version) when importable, else (False, why not)."""
    return {mod: available(mod) for mod in modules}


def library_versions(modules: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Python's and each module's version (None when not importable)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0], "moe-denoise": own_version()}
    out.update({mod: ver if ok else None for mod, (ok, ver) in library_status(modules).items()})
    return out


def own_version() -> str | None:
    """This toolkit's installed version (None when it runs from a folder that was not installed): recorded with
    every result, which the code's version decides as much as the libraries' (no record named it)."""
    from importlib import metadata

    try:
        return metadata.version("moe-denoise")
    except metadata.PackageNotFoundError:
        return None


def cuda_device(device: int = 0) -> dict[str, Any]:
    """Name, compute capability ("9.0") and memory of one CUDA device, as torch sees it (torch must see a GPU)."""
    import torch

    p = torch.cuda.get_device_properties(device)
    return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}", "memory_gib": round(p.total_memory / 2**30, 1)}


def gpu_info() -> dict[str, Any] | None:
    """GPU name, memory, compute capability and current / max clocks, or None without a CUDA GPU."""
    torch, _ = optional_import("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    info: dict[str, Any] = {**cuda_device(0), "count": torch.cuda.device_count(), "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version(),
                            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}
    info.update(nvidia_smi())
    return info


def nvidia_smi(timeout_s: float = 10.0) -> dict[str, Any]:
    """Clocks, power limit and driver from nvidia-smi (absent tool or failure: an explanatory note)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return {"clocks_note": "nvidia-smi not found; clocks not recorded"}
    fields = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit",
              "persistence_mode", "temperature.gpu")
    try:
        out = subprocess.run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=timeout_s, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return {"clocks_note": f"nvidia-smi failed: {e}"}
    values = [v.strip() for v in out.split(",")]
    if len(values) != len(fields):
        return {"clocks_note": f"unexpected nvidia-smi output {out!r}"}
    return {"nvidia_smi": dict(zip(fields, values))}


def fingerprint(threads: int | None = None) -> dict[str, Any]:
    """Everything about this machine that a benchmark number depends on."""
    thread_info: dict[str, Any] = {"requested": threads,
                                   "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
    torch, _ = optional_import("torch")
    if torch is not None:
        thread_info.update(torch_intra_op=torch.get_num_threads(), torch_inter_op=torch.get_num_interop_threads())
    return {"platform": platform.platform(), "cpu": cpu_info(), "load_average_start": load_average(),
            "threads": thread_info, "libraries": library_versions(), "gpu": gpu_info()}
