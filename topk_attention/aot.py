"""Ahead-of-time (AOT) artifact of the sparse top-k attention kernel: PTX plus everything needed to launch it.

The TensorRT plugin's AOT implementation and the device check (``tools/gpu_check.py``) both call
``build_aot_artifact``; it needs neither TensorRT nor a GPU: Triton lowers the kernel to PTX with LLVM for a
*named* target (``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``). Triton also runs its
bundled ``ptxas`` to make a cubin on the way, which doubles as a check that the PTX assembles.

Launch contract (what the plugin does and what the device check reproduces through the CUDA driver):

- kernel parameters, in order: inputs ``q, k, v`` (device pointers), integer extras ``n_bh`` (int32,
  = batch * num_heads), outputs ``o``. That is TensorRT's AOT plugin order (inputs, extras, outputs).
- grid ``(batch * num_heads, cdiv(N, block_m), 1)``; block ``(num_warps * 32, 1, 1)``; dynamic shared
  memory ``shared_mem`` bytes (above 48 KiB the launcher must first raise the function's
  ``CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES``; ``needs_shared_opt_in`` says so).
- ``topk``, ``scale``, ``N`` and ``head_dim`` are compile-time constants (a plugin's extra arguments can
  only be 32-bit integers), so one artifact serves one (N, head_dim, topk, scale, dtype).

Two Triton quirks are handled here rather than discovered as a broken engine:

- **Hidden scratch parameters.** Recent Triton appends ``global_scratch`` and ``profile_scratch`` pointers
  to every ``.entry``. They are detected from the PTX. When the kernel needs no scratch (sizes 0 in the
  metadata) and the PTX body never reads them, they are stripped from the entry (default) so the entry is
  exactly ``inputs, extras, outputs``; with ``hidden_params="keep"`` they stay and the launcher must pass
  null pointers for them. A kernel that really uses scratch memory is refused with ``AOTError``.
- **PTX ISA version.** Triton stamps the PTX with the newest ISA its bundled ptxas knows (9.4 for
  Triton 3.9), which drivers older than that CUDA release reject when they JIT the PTX. The artifact is
  compiled for a pinned ISA (``DEFAULT_PTX_VERSION`` = 8.4, CUDA 12.4, driver >= 550.54.14) so that LLVM
  and Triton only emit instructions that ISA has; ``ptx_version=None`` takes Triton's own choice.
  ``check_driver`` compares an artifact with a driver's CUDA version and says what to do on a mismatch.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from moe_base.errors import AOTError, InputError, json_problem

from .triton_kernel import (
    KERNEL_EXTRAS,
    KERNEL_INPUTS,
    KERNEL_NAME,
    KERNEL_OUTPUTS,
    default_scale,
    kernel_config,
    kernel_supports,
    triton_cdiv,
)

SCHEMA_VERSION = 1
DEFAULT_PTX_VERSION = 84  # PTX ISA 8.4 = CUDA 12.4: every driver >= 550.54.14 can JIT it
MIN_CAPABILITY = 50  # sm_50 compiles; sm_35, cuda:20 and cuda:0 (a device index given) abort LLVM, and the process
STATIC_SHARED_LIMIT = 48 * 1024  # above this a kernel's dynamic shared memory needs an opt-in attribute

# PTX ISA version (major*10 + minor) -> CUDA toolkit release that introduced it, and the minimum Linux
# driver of that release (CUDA release notes, "CUDA Toolkit and Corresponding Driver Versions").
# A driver JIT-compiles PTX only up to the ISA of the CUDA version it supports (minor-version
# compatibility does not cover PTX). Unknown drivers are None: check_driver then uses the CUDA version only.
_PTX_TO_CUDA: dict[int, tuple[int, int]] = {
    **{70 + m: (11, m) for m in range(9)},  # 7.0..7.8 -> 11.0..11.8
    **{80 + m: (12, m) for m in range(6)},  # 8.0..8.5 -> 12.0..12.5 (12.6 also emits 8.5)
    86: (12, 8), 87: (12, 8), 88: (12, 9),  # 8.6 belongs to 12.7, which was not released: 12.8 is the first
    **{90 + m: (13, m) for m in range(10)},  # 9.m -> 13.m
}
_CUDA_MIN_DRIVER: dict[tuple[int, int], str] = {
    (11, 8): "520.61.05", (12, 0): "525.60.13", (12, 1): "530.30.02", (12, 2): "535.54.03",
    (12, 3): "545.23.06", (12, 4): "550.54.14", (12, 5): "555.42.02", (12, 6): "560.28.03",
    (12, 8): "570.26", (12, 9): "575.51.03", (13, 0): "580.65.06",
}
# Lowest PTX ISA that can target an architecture; Triton uses the arch-specific "a" targets from sm_90 on.
_MIN_PTX_FOR_ARCH: dict[int, int] = {80: 70, 86: 71, 87: 74, 89: 78, 90: 80, 100: 86, 101: 86, 103: 88,
                                     120: 87, 121: 88}

HiddenParams = Literal["strip", "keep"]


@dataclass(frozen=True)
class KernelParam:
    """One parameter of the PTX entry, in launch order."""

    name: str
    kind: str       # "input" | "extra" | "output" | "hidden"
    ptx_type: str   # ".u64" (pointer) or ".u32" (int32)
    note: str = ""  # how to fill it: "device pointer", formula of an extra, "null pointer"


@dataclass
class AOTArtifact:
    """A compiled kernel and its launch contract; JSON-serialisable, independent of TensorRT and GPUs."""

    kernel_name: str
    ptx: str
    target: str                      # "cuda:90"
    ptx_target: str                  # ".target" of the PTX, e.g. "sm_90a"
    ptx_version: str                 # ".version" of the PTX, e.g. "8.4"
    min_cuda: str | None             # CUDA version whose driver can JIT this PTX, e.g. "12.4"
    min_driver: str | None           # minimum Linux driver of that CUDA release, when known
    n: int
    head_dim: int
    num_heads: int
    topk: int
    scale: float
    dtype: str                       # "fp32" | "fp16" (inputs and output)
    block_m: int
    num_warps: int
    block: tuple[int, int, int]      # (num_warps * 32, 1, 1)
    grid_formula: tuple[str, str, str]
    grid_y: int                      # cdiv(n, block_m)
    shared_mem: int                  # dynamic shared memory bytes
    needs_shared_opt_in: bool        # shared_mem > 48 KiB: set MAX_DYNAMIC_SHARED_SIZE_BYTES first
    params: list[KernelParam]        # the PTX entry's parameters, in launch order
    extra_args: dict[str, str]       # integer extras -> formula in terms of `batch`
    hidden_params_detected: list[str]
    hidden_params_stripped: bool
    pointer_alignment: int           # the kernel assumes every pointer is a multiple of this (bytes)
    triton_version: str
    compile_options: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    hash: str = ""

    # -- launch helpers -------------------------------------------------------------------------------
    def grid(self, batch: int) -> tuple[int, int, int]:
        """Grid for a batch of ``batch`` images: (batch * num_heads, cdiv(N, block_m), 1)."""
        if batch < 1:
            raise InputError(f"batch must be >= 1, got {batch}")
        return (batch * self.num_heads, self.grid_y, 1)

    def extra_arg_values(self, batch: int) -> list[int]:
        """The integer extras in launch order for a batch (each fits in int32)."""
        n_bh = self.grid(batch)[0]  # batch * num_heads, the batch checked as the grid checks it
        if n_bh >= 2 ** 31:
            raise InputError(f"batch * num_heads = {n_bh} does not fit the int32 extra n_bh")
        return [n_bh]

    def tensor_shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, self.num_heads, self.n, self.head_dim)  # (B, H, N, d) contiguous

    # -- serialisation --------------------------------------------------------------------------------
    def compute_hash(self) -> str:
        d = self._as_dict()
        d.pop("hash", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def _as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self._as_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AOTArtifact:
        """Parse and verify (schema version, fields, hash); AOTError says what is wrong."""
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # not JSON, a number of 5,000 digits, or nested too deeply
            raise AOTError(f"AOT artifact is not valid JSON ({json_problem(e)}); rebuild it with build_aot_artifact") from e
        if not isinstance(d, dict):
            raise AOTError(f"AOT artifact JSON must be an object, got {type(d).__name__}")
        if d.get("schema_version") != SCHEMA_VERSION:
            raise AOTError(f"AOT artifact schema_version {d.get('schema_version')!r}, expected {SCHEMA_VERSION}; "
                           "rebuild it with this version of the toolkit")
        names = {f.name for f in dataclasses.fields(cls)}
        missing, unknown = names - set(d), set(d) - names
        if missing or unknown:
            raise AOTError(f"AOT artifact fields do not match: missing {sorted(missing)}, unknown {sorted(unknown)}")
        d["params"] = [KernelParam(**p) for p in d["params"]]
        for key in ("block", "grid_formula"):
            d[key] = tuple(d[key])
        art = cls(**d)
        if art.hash != art.compute_hash():
            raise AOTError("AOT artifact hash does not match its content (edited or corrupted); rebuild it")
        return art

    def save(self, path: str | Path) -> Path:
        from moe_base.fileio import atomic_write

        path = Path(path)
        atomic_write(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, path: str | Path) -> AOTArtifact:
        return cls.from_json(Path(path).read_text())


# -- PTX inspection ----------------------------------------------------------------------------------------
_ENTRY_RE = re.compile(r"\.visible\s+\.entry\s+(\w+)\s*\((.*?)\)", re.DOTALL)
_PARAM_RE = re.compile(r"\.param\s+(\.[a-z]\d+)[^,\n]*?\s(\w+)\s*(?:,|$)", re.MULTILINE)


def ptx_entry_params(ptx: str) -> tuple[str, list[tuple[str, str]]]:
    """(entry name, [(ptx type, param name), ...]) of the single ``.visible .entry`` in ``ptx``."""
    entries = _ENTRY_RE.findall(ptx)
    if len(entries) != 1:
        raise AOTError(f"expected exactly one .visible .entry in the PTX, found {len(entries)}")
    name, plist = entries[0]
    return name, [(t, n) for t, n in _PARAM_RE.findall(plist)]


def ptx_header(ptx: str) -> tuple[str, str]:
    """(".version" value, ".target" value) of a PTX module."""
    ver = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.MULTILINE)
    tgt = re.search(r"^\s*\.target\s+(\w+)", ptx, re.MULTILINE)
    if not ver or not tgt:
        raise AOTError("PTX has no .version / .target header; it is not a Triton-generated PTX module")
    return ver.group(1), tgt.group(1)


def strip_unused_params(ptx: str, names: list[str]) -> str:
    """Remove the named trailing parameters from the entry, refusing if the body reads any of them."""
    entry = _ENTRY_RE.search(ptx)
    if entry is None:
        raise AOTError("PTX has no .visible .entry; it is not a Triton-generated kernel")
    body = ptx[entry.end():]
    used = [n for n in names if re.search(rf"\b{re.escape(n)}\b", body)]
    if used:
        raise AOTError(f"hidden parameters {used} are read by the kernel body, so they cannot be stripped; "
                       "the kernel needs Triton scratch memory, which a TensorRT plugin launch cannot provide")
    plist = entry.group(2)
    kept = [line for line in plist.split("\n") if not any(re.search(rf"\b{re.escape(n)}\b", line) for n in names)]
    kept_text = "\n".join(kept).rstrip().rstrip(",")  # the new last parameter loses its comma
    start2, end2 = entry.span(2)
    return ptx[:start2] + kept_text + "\n" + ptx[end2:]


# -- versions ----------------------------------------------------------------------------------------------
def _parse_ptx_version(v: int | str) -> int:
    """84, "8.4" or "84" -> 84 (PTX ISA 6.0 to 9.9: 8 alone is not read as ISA 0.8)."""
    if isinstance(v, int) and not isinstance(v, bool):
        if not 60 <= v <= 99:
            raise InputError(f"ptx_version {v} is not a PTX ISA this kernel can use: give it as 84 or '8.4' "
                             f"(ISA 6.0 to 9.9)")
        return v
    m = re.fullmatch(r"(\d+)\.(\d)", str(v).strip()) or re.fullmatch(r"(\d)(\d)", str(v).strip())
    if not m:
        raise InputError(f"ptx_version must look like 84 or '8.4', got {v!r}")
    return int(m.group(1)) * 10 + int(m.group(2))


def min_cuda_for_ptx(ptx_version: str) -> str | None:
    """CUDA release (e.g. "12.4") whose driver can JIT PTX of ISA ``ptx_version`` ("8.4"); None if unknown."""
    cuda = _PTX_TO_CUDA.get(_parse_ptx_version(ptx_version))
    return f"{cuda[0]}.{cuda[1]}" if cuda else None


def min_driver_for_ptx(ptx_version: str) -> str | None:
    cuda = _PTX_TO_CUDA.get(_parse_ptx_version(ptx_version))
    return _CUDA_MIN_DRIVER.get(cuda) if cuda else None


def check_driver(artifact: AOTArtifact, cuda_driver_version: int) -> None:
    """Raise AOTError if a driver reporting ``cuda_driver_version`` (cuDriverGetVersion, e.g. 12040 for
    CUDA 12.4) cannot JIT the artifact's PTX; the message names both sides and the fix."""
    if artifact.min_cuda is None:
        return  # unknown ISA mapping: let the driver decide, it reports CUDA_ERROR_UNSUPPORTED_PTX_VERSION
    major, minor = (int(x) for x in artifact.min_cuda.split("."))
    have = (cuda_driver_version // 1000, (cuda_driver_version % 1000) // 10)
    if have < (major, minor):
        raise AOTError(
            f"the artifact's PTX is ISA {artifact.ptx_version}, which needs a driver for CUDA >= {artifact.min_cuda}"
            f" (Linux driver >= {artifact.min_driver or 'unknown'}); this driver supports CUDA {have[0]}.{have[1]}."
            f" Rebuild with build_aot_artifact(..., ptx_version={_cuda_to_ptx_hint(have)}) or update the driver")


def _cuda_to_ptx_hint(cuda: tuple[int, int]) -> str:
    ok = [p for p, c in _PTX_TO_CUDA.items() if c <= cuda]
    return repr(f"{max(ok) // 10}.{max(ok) % 10}") if ok else "'<none: driver too old>'"


def _parse_target(target: str) -> tuple[int, int]:
    """"cuda:90", "cuda:90:32" or "sm_90" -> (capability, warp size)."""
    m = re.fullmatch(r"cuda:(\d+)(?::(\d+))?", str(target)) or re.fullmatch(r"sm_(\d+)a?()", str(target))
    if not m:
        raise InputError(f"target must look like 'cuda:90' (or 'cuda:90:32', 'sm_90'), got {target!r}")
    capability = int(m.group(1))
    if capability < MIN_CAPABILITY:  # 'cuda:0' (a device index) made LLVM abort the whole process
        raise InputError(f"target {target!r} names compute capability {capability}: a target is the GPU's architecture "
                         f"(e.g. 'cuda:90' or 'sm_90' for an H100/H200, 'cuda:80' for an A100), not a device index; "
                         f"the kernel compiles for sm_{MIN_CAPABILITY} and newer")
    return capability, int(m.group(2) or 32)


def _dtype_name(dtype: torch.dtype | str) -> tuple[str, torch.dtype]:
    table = {"fp32": torch.float32, "float32": torch.float32, torch.float32: torch.float32,
             "fp16": torch.float16, "float16": torch.float16, torch.float16: torch.float16}
    if dtype not in table:
        raise InputError(f"dtype must be fp32 or fp16 (torch.float32 / torch.float16), got {dtype!r}")
    t = table[dtype]
    return ("fp32" if t == torch.float32 else "fp16"), t


# -- the builder -------------------------------------------------------------------------------------------
def build_aot_artifact(
    n: int,
    head_dim: int,
    topk: int,
    dtype: torch.dtype | str,
    target: str = "cuda:90",
    num_heads: int = 4,
    block_m: int | None = None,
    scale: float | None = None,
    num_warps: int | None = None,
    ptx_version: int | str | None = "auto",
    hidden_params: HiddenParams = "strip",
    pointer_alignment: int = 16,
) -> AOTArtifact:
    """Compile the kernel to PTX for ``target`` and describe how to launch it. No GPU or TensorRT needed.

    ``scale`` defaults to 1/sqrt(head_dim) (pass 1.0 when it is folded into W_q). ``ptx_version``: "auto"
    pins ``DEFAULT_PTX_VERSION`` (or the target's minimum ISA if newer), a number such as 84 or "8.4" pins
    that ISA, None lets Triton stamp its own (newest) one. ``pointer_alignment=16``
    lets Triton vectorise loads (TensorRT and CUDA allocators give >= 256-byte aligned buffers); pass 1
    if the plugin may receive unaligned views. Raises ValueError for unsupported shapes and AOTError for
    artifacts that could not be launched as the plugin launches them.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .triton_kernel import sparse_topk_attn_fwd

    dtype_name, torch_dtype = _dtype_name(dtype)
    for name, value in (("n", n), ("head_dim", head_dim), ("topk", topk), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int):  # topk 32.5 was baked into the artifact
            raise InputError(f"{name} must be a whole number (int); got {value!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale)):
        raise InputError(f"scale must be a finite number (None: 1/sqrt(head_dim)); got {scale!r}")
    ok, reason = kernel_supports(n, topk, torch_dtype)
    if not ok:
        raise InputError(f"cannot build the AOT kernel for N={n}, topk={topk}, dtype={dtype_name}: {reason}")
    if head_dim < 1 or num_heads < 1:
        raise InputError(f"head_dim and num_heads must be >= 1, got {head_dim}, {num_heads}")
    if hidden_params not in ("strip", "keep"):
        raise InputError(f"hidden_params must be 'strip' or 'keep', got {hidden_params!r}")
    if pointer_alignment not in (1, 16):
        raise InputError(f"pointer_alignment must be 1 or 16, got {pointer_alignment}")
    capability, warp_size = _parse_target(target)
    scale = default_scale(head_dim) if scale is None else float(scale)
    cfg = kernel_config(n, head_dim, block_m=block_m, num_warps=num_warps)

    options: dict[str, Any] = {"num_warps": cfg.num_warps, "num_stages": 1, "enable_fp_fusion": True}
    if ptx_version is not None:
        floor = _MIN_PTX_FOR_ARCH.get(capability)
        pv = max(DEFAULT_PTX_VERSION, floor or 0) if ptx_version == "auto" else _parse_ptx_version(ptx_version)
        if floor is not None and pv < floor:
            raise AOTError(f"PTX ISA {pv // 10}.{pv % 10} cannot target sm_{capability} (needs >= "
                           f"{floor // 10}.{floor % 10}); choose a newer ptx_version")
        options["ptx_version"] = pv

    ptr = "*" + dtype_name
    signature = dict.fromkeys(KERNEL_INPUTS, ptr) | dict.fromkeys(KERNEL_EXTRAS, "i32") \
        | dict.fromkeys(KERNEL_OUTPUTS, ptr)
    constexprs = cfg.constexprs(topk, scale)
    signature |= dict.fromkeys(constexprs, "constexpr")
    arg_names = list(sparse_topk_attn_fwd.arg_names)
    pointer_idx = [arg_names.index(p) for p in KERNEL_INPUTS + KERNEL_OUTPUTS]
    attrs = {(i,): [["tt.divisibility", 16]] for i in pointer_idx} if pointer_alignment == 16 else {}
    try:
        compiled = triton.compile(ASTSource(sparse_topk_attn_fwd, signature, constexprs, attrs),
                                  target=GPUTarget("cuda", capability, warp_size), options=options)
    except Exception as e:
        raise AOTError(f"Triton could not compile the kernel for {target} (N={n}, d={head_dim}, topk={topk}, "
                       f"{dtype_name}, options={options}): {type(e).__name__}: {e}") from e
    md = compiled.metadata
    ptx: str = compiled.asm["ptx"]

    # Hidden parameters: everything after the declared ones.
    entry_name, entry_params = ptx_entry_params(ptx)
    declared = list(KERNEL_INPUTS + KERNEL_EXTRAS + KERNEL_OUTPUTS)
    if len(entry_params) < len(declared):
        raise AOTError(f"PTX entry {entry_name} has {len(entry_params)} parameters, fewer than the "
                       f"{len(declared)} declared ({declared}); Triton specialised an argument away")
    hidden = [pname for _, pname in entry_params[len(declared):]]
    scratch = {"global_scratch_size": getattr(md, "global_scratch_size", 0) or 0,
               "profile_scratch_size": getattr(md, "profile_scratch_size", 0) or 0}
    if any(scratch.values()):
        raise AOTError(f"the compiled kernel needs Triton scratch memory {scratch}; a TensorRT plugin launch "
                       "passes only inputs, extras and outputs, so it cannot provide it. Reduce block sizes or "
                       "pin a Triton version that does not use scratch for this kernel")
    stripped = False
    if hidden and hidden_params == "strip":
        ptx = strip_unused_params(ptx, hidden)
        stripped = True
        _, entry_params = ptx_entry_params(ptx)
        if len(entry_params) != len(declared):
            raise AOTError(f"stripping hidden parameters left {len(entry_params)} entry parameters, "
                           f"expected {len(declared)}")

    kinds = ["input"] * len(KERNEL_INPUTS) + ["extra"] * len(KERNEL_EXTRAS) + ["output"] * len(KERNEL_OUTPUTS)
    params: list[KernelParam] = []
    for i, (ptx_type, _pname) in enumerate(entry_params):
        if i < len(declared):
            note = "int32: batch * num_heads" if kinds[i] == "extra" else f"device pointer, (B, H, N, d) {dtype_name}"
            params.append(KernelParam(declared[i], kinds[i], ptx_type, note))
        else:
            params.append(KernelParam(hidden[i - len(declared)], "hidden", ptx_type, "null pointer (unused)"))
    expected_types = [".u64"] * len(KERNEL_INPUTS) + [".u32"] * len(KERNEL_EXTRAS) + [".u64"] * len(KERNEL_OUTPUTS)
    got_types = [p.ptx_type for p in params[:len(declared)]]
    if got_types != expected_types:
        raise AOTError(f"PTX parameter types {got_types} differ from the plugin contract {expected_types}")

    version, ptx_target = ptx_header(ptx)
    shared = int(md.shared or 0)
    block_x = md.num_warps * warp_size
    art = AOTArtifact(
        kernel_name=entry_name, ptx=ptx, target=f"cuda:{capability}", ptx_target=ptx_target, ptx_version=version,
        min_cuda=min_cuda_for_ptx(version), min_driver=min_driver_for_ptx(version),
        n=n, head_dim=head_dim, num_heads=num_heads, topk=topk, scale=scale, dtype=dtype_name,
        block_m=cfg.block_m, num_warps=md.num_warps, block=(block_x, 1, 1),
        grid_formula=("batch * num_heads", f"cdiv(N, block_m) = {triton_cdiv(n, cfg.block_m)}", "1"),
        grid_y=triton_cdiv(n, cfg.block_m), shared_mem=shared, needs_shared_opt_in=shared > STATIC_SHARED_LIMIT,
        params=params, extra_args={"n_bh": "batch * num_heads"}, hidden_params_detected=hidden,
        hidden_params_stripped=stripped, pointer_alignment=pointer_alignment,
        triton_version=triton.__version__,
        compile_options={**options, "block_n": cfg.block_n, "block_d": cfg.block_d, "block_kv": cfg.block_kv,
                         "hidden_params": hidden_params, **scratch},
    )
    if entry_name != KERNEL_NAME:
        raise AOTError(f"PTX entry is {entry_name!r}, expected {KERNEL_NAME!r}")
    art.hash = art.compute_hash()
    return art


def ptxas_check(artifact: AOTArtifact, ptxas: str | None = None) -> str:
    """Assemble the artifact's PTX with a CUDA toolkit ``ptxas`` (an independent check of the PTX text).

    Returns ptxas's verbose log (registers, spills, shared memory). Raises InputError when no ptxas is found
    (or ``ptxas`` is not a program) and AOTError when it rejects the PTX.
    """
    exe = ptxas or shutil.which("ptxas")
    if exe is None:
        raise InputError("ptxas not found on PATH (install the CUDA toolkit, or pass ptxas=...)")
    if shutil.which(str(exe)) is None:
        raise InputError(f"ptxas={exe!r} is not a program that can be run; pass the path of the CUDA toolkit's "
                         f"ptxas (e.g. /usr/local/cuda/bin/ptxas)")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(artifact.ptx)
        cmd = [exe, "-v", f"--gpu-name={artifact.ptx_target}", str(src), "-o", str(Path(tmp) / "kernel.cubin")]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise AOTError(f"ptxas rejected the PTX (exit {res.returncode}): {res.stderr.strip()[:2000]}\n"
                       f"command: {' '.join(cmd)}")
    return res.stderr + res.stdout
