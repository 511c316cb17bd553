"""ONNX -> TensorRT engine, with an optimisation profile for the batch axis, a persistent timing cache, an
engine cache, a manifest, atomic writes, a progress line per stage, and a parity check that must pass before
the engine is kept.

TensorRT 10 (>= 10.9) and 11 differ in how fp16 is asked for:
  * 10.x: networks are weakly typed by default; fp16 is a builder flag (``BuilderFlag.FP16``) on the fp32 graph.
  * 11.x: networks are always strongly typed; fp16 comes from the graph's own types, so an fp16 build parses
    the fp16 ONNX graph (fp32 I/O, LayerNorm and softmax in fp32) that ``moe-denoise export --precision fp16``
    writes. ``plan_build`` picks the path from the installed version.
This layer is thin on purpose: the graph, the plugin's kernel and its AOT artifact are proven without TensorRT
(see the README's verification table); what is here runs only where TensorRT is installed.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moe_base.contract import TILE_SHAPE
from moe_base.errors import BuildError, InputError, NoGPUError, ParityError
from moe_base.manifest import base_manifest, make_it, read_checked, write_artifact
from moe_base.optional import require
from moe_base.paths import cache_dir
from runtime.parity import ParityReport
from runtime.torch_runner import artifact_architecture, artifact_weights
from topk_attention.spec import behaviour_hash

MIN_TRT = (10, 9)


DEFAULT_OPT_BATCH = 64  # the batch TensorRT tunes its kernels for, unless told another


@dataclass
class BuildOptions:
    """How an engine is built: precision, the batch profile (min / opt / max), workspace, caches, parity batch.
    ``opt_batch`` None: DEFAULT_OPT_BATCH brought within ``min_batch`` and ``max_batch`` (a max of 32 was refused
    for an opt nobody set)."""
    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 1024
    workspace_mib: int = 2048
    cache_dir: Path = field(default_factory=cache_dir)
    use_engine_cache: bool = True
    parity_images: int = 64

    def __post_init__(self) -> None:
        if self.opt_batch is None:
            self.opt_batch = min(max(DEFAULT_OPT_BATCH, self.min_batch), self.max_batch)

    def validate(self) -> None:
        if self.precision not in ("fp32", "fp16"):
            raise InputError(f"precision {self.precision!r} is not supported; use fp32 or fp16")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise InputError(f"the batch profile must satisfy 1 <= min <= opt <= max; got min {self.min_batch}, "
                             f"opt {self.opt_batch}, max {self.max_batch} (--min-batch, --opt-batch, --max-batch)")
        if self.max_batch > 65536:
            raise InputError(f"max batch {self.max_batch} is beyond what this toolkit builds (65536); tile work "
                             f"into smaller batches (the runner chunks larger ones; --max-batch)")
        if self.workspace_mib < 64:
            raise InputError(f"workspace of {self.workspace_mib} MiB is too small; use at least 64 (--workspace-mib)")

    @property
    def profile(self) -> dict[str, int]:
        return {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch}


def parse_version(v: str) -> tuple[int, int]:
    parts = v.split(".")
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


@dataclass(frozen=True)
class BuildPlan:
    """What the installed TensorRT needs: which ONNX precision to parse and which flags to set."""

    trt_version: tuple[int, int]
    strongly_typed: bool
    onnx_precision: str
    fp16_flag: bool


def plan_build(trt_version: str, precision: str) -> BuildPlan:
    """What the installed TensorRT needs for ``precision``: the ONNX graph's precision and the builder flags.

    InputError for a TensorRT older than 10.9."""
    v = parse_version(trt_version)
    if v < MIN_TRT:
        raise InputError(f"TensorRT {trt_version} is too old: this toolkit needs >= {MIN_TRT[0]}.{MIN_TRT[1]} "
                         f"(Python plugins with AOT kernels); upgrade tensorrt")
    if v[0] >= 11:  # always strongly typed: precision is in the graph
        return BuildPlan(v, True, precision, False)
    return BuildPlan(v, False, "fp32", precision == "fp16")


def cache_key(onnx_sha: str, plugin_hash: str | None, trt_version: str, compute_capability: str,
              opts: BuildOptions, gpu_name: str = "", kernel_compiler: str | None = None) -> str:
    """The engine cache key: everything that decides the engine (graph, plugin code and the Triton that compiles
    its kernel, TensorRT, the GPU model and its compute capability, precision, profile), not where files live.
    (GPUs of one compute capability, an A100 and an A30, shared engines tuned on the other, as the timing cache,
    keyed by the GPU's name, does not.)"""
    key = {"onnx": onnx_sha, "plugin": plugin_hash, "tensorrt": trt_version, "cc": compute_capability,
           "precision": opts.precision, "profile": opts.profile}
    if gpu_name:
        key["gpu"] = gpu_name
    if kernel_compiler:
        key["kernel_compiler"] = kernel_compiler
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _triton_version() -> str | None:
    """The Triton that compiles the plugin's AOT kernel (its PTX is in the engine), or None where it is missing."""
    try:
        import triton
    except ImportError:
        return None
    return f"triton {triton.__version__}"


@dataclass
class EngineResult:
    """A built (or cached) engine: its path, manifest, parity report, and whether it came from the cache."""
    path: Path
    manifest: dict[str, Any]
    parity: ParityReport
    cached: bool


def build_engine(onnx_path: str | Path, out_path: str | Path, opts: BuildOptions | None = None,
                 weights: str | Path | None = None, log: Callable[[str], None] = print,
                 overwrite: bool = True) -> EngineResult:
    """Build (or fetch from the engine cache) an engine for ``onnx_path``; keep it only if parity passes.
    ``overwrite=False``: a file at ``out_path`` when the engine is written (one that appeared during the build) is
    kept, and InputError raised."""
    opts = opts or BuildOptions()
    opts.validate()
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    if not onnx_path.is_file():
        fp16 = (" (for an fp16 engine TensorRT 11 needs the fp16 graph: 'moe-denoise export --flavor plugin "
                "--precision fp16'; TensorRT 10 builds it from the fp32 one)") if opts.precision == "fp16" else ""
        if onnx_path.is_dir():  # it said the folder does not exist
            raise InputError(f"ONNX model {onnx_path} is a folder; pass the .onnx file in it (what 'moe-denoise "
                             f"export' writes, e.g. {onnx_path / 'moe_denoiser.plugin.onnx'})")
        raise InputError(f"ONNX model {onnx_path} does not exist; {make_it(onnx_path)}{fp16}")
    onnx_manifest = read_checked(onnx_path, kind="onnx")  # a replaced graph under an old manifest would hit its cache
    # the weights the ONNX model was exported from (by its manifest's hash), given or found: checked before minutes
    # of building
    ref_weights = artifact_weights(onnx_path, onnx_manifest, weights, "--weights")
    torch = require("torch")
    if not torch.cuda.is_available():  # said first: installing TensorRT (gigabytes) would not have helped
        from moe_base.optional import available

        missing = "" if available("tensorrt")[0] else "; TensorRT is not installed here either"
        raise NoGPUError(f"building a TensorRT engine needs an NVIDIA GPU, and torch {torch.__version__} sees none"
                         f"{missing}. Build on a machine with an NVIDIA GPU, a CUDA build of torch and TensorRT (pip "
                         f"install 'moe-denoise[trt]'); the engine then runs only on that GPU model")
    trt = require("tensorrt", "building TensorRT engines")
    check_cache_dir(opts.cache_dir, opts.use_engine_cache)  # after what no folder fixes, before minutes of building
    from moe_base.machine import cuda_device

    gpu = cuda_device(0)
    plan = plan_build(trt.__version__, opts.precision)
    graph_precision = onnx_manifest.get("precision", "fp32")
    if graph_precision != plan.onnx_precision:
        flavor = (onnx_manifest.get("onnx") or {}).get("flavor", "plugin")
        raise InputError(f"TensorRT {trt.__version__} builds {opts.precision} engines from a {plan.onnx_precision} "
                         f"ONNX graph, but {onnx_path} is {graph_precision}. Export one with 'moe-denoise export "
                         f"--flavor {flavor} --precision {plan.onnx_precision}'")
    from moe_model.checkpoint import load_model

    # the parity reference, loaded before minutes of building (weights without a sidecar: the manifest's architecture).
    # Their sha256 is the one the ONNX model's manifest records (artifact_weights checked it): their sidecar's is not
    # checked again, since weights exported with --skip-weights-check would be refused here, and build has no such
    # option; without a recorded hash the sidecar's check stands
    recorded = bool((onnx_manifest.get("model") or {}).get("weights_sha256"))
    reference = load_model(ref_weights, architecture=artifact_architecture(onnx_manifest), verify=not recorded)
    uses_plugin = bool(onnx_manifest.get("plugin"))
    p_hash = behaviour_hash() if uses_plugin else None
    key = cache_key(onnx_manifest["artifact"]["sha256"], p_hash, trt.__version__, gpu["compute_capability"], opts,
                    gpu_name=gpu["name"], kernel_compiler=_triton_version() if uses_plugin else None)
    cached = opts.cache_dir / "engines" / f"{key}.engine"
    t0 = time.perf_counter()

    hit = opts.use_engine_cache and cached.is_file()
    if hit:
        log(f"[1/3] engine cache hit {cached.name} (same ONNX, plugin and its Triton, TensorRT, GPU, precision, "
            f"profile)")
        data = cached.read_bytes()
    else:
        if uses_plugin:
            from topk_attention.trt_plugin import register_plugin

            register_plugin()
        data = _build(trt, onnx_path, opts, plan, gpu, log)
    manifest = base_manifest("trt-engine", out_path, data)
    manifest.update({
        "onnx": {"file": str(onnx_path), "sha256": onnx_manifest["artifact"]["sha256"],
                 "flavor": onnx_manifest["onnx"]["flavor"], "precision": graph_precision},
        "model": onnx_manifest.get("model"),
        "plugin": onnx_manifest.get("plugin") and {**onnx_manifest["plugin"], "hash": p_hash, "aot": True},
        "precision": opts.precision,
        "profile": opts.profile,
        "tensorrt": {"version": trt.__version__, "strongly_typed": plan.strongly_typed, "fp16_flag": plan.fp16_flag,
                     "gpu": gpu["name"], "compute_capability": gpu["compute_capability"]},
        "cache_key": key,
        "io": onnx_manifest.get("io"),
        "self_check": onnx_manifest.get("self_check"),
    })
    log("[3/3] parity against PyTorch")
    report = _parity(data, manifest, out_path, reference, opts)
    if not report.passed:
        if hit:  # a cached engine that fails is not offered again
            cached.unlink(missing_ok=True)
        raise ParityError(f"refusing to keep the engine for {onnx_path}: {report.headline('it')}"
                          f"{' (the cached engine is removed from the cache)' if hit else ''}\n{report.summary()}",
                          report)
    manifest["tolerance"] = report.tolerance.to_dict()
    manifest["parity"] = report.to_dict()
    write_artifact(out_path, data, manifest, overwrite)
    log(f"wrote {out_path} ({len(data) / 2**20:.1f} MiB) in {time.perf_counter() - t0:.1f}s")
    if opts.use_engine_cache and not hit:  # only an engine that passed parity is cached; after the engine is written
        _write_cache(cached, data, "engine cache", "the next build of the same engine builds it again", log)
    return EngineResult(out_path, manifest, report, hit)


def check_cache_dir(folder: Path, engines: bool = True) -> None:
    """InputError, before any build, when the cache folder (engines, timing caches) cannot be written: a cache that
    failed only after the build lost the finished engine with it."""
    from moe_base.fileio import check_folder_takes_files

    for sub in ("engines", "timing") if engines else ("timing",):
        try:
            check_folder_takes_files(folder / sub)
        except InputError as e:
            raise InputError(f"the cache folder: {e}; pass --cache-dir FOLDER (or set MOE_DENOISE_CACHE) to a folder "
                             f"you can write to") from None


def _write_cache(path: Path, data: bytes, what: str, without: str, log: Callable[[str], None]) -> bool:
    """Write a cache file; a failure (a full disk) is a note, not the end of a build whose result is already safe."""
    from moe_base.fileio import atomic_write

    try:
        atomic_write(path, data)
    except (OSError, InputError) as e:
        log(f"      could not write the {what} {path} ({e}); {without}")
        return False
    return True


def timing_cache_path(cache_dir: Path, trt_version: str, gpu: dict[str, Any]) -> Path:
    """The timing cache of one TensorRT version on one GPU model: tactic timings do not carry across either."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(gpu.get("name", "gpu"))).strip("-").lower() or "gpu"
    cc = str(gpu.get("compute_capability", "unknown")).replace(".", "")
    return cache_dir / "timing" / f"trt{trt_version}-sm{cc}-{slug}.cache"


def use_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> None:
    """Give ``config`` the cache in ``path`` (empty if absent); a cache TensorRT refuses is replaced, not used."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    log(f"      timing cache {path} does not match this TensorRT or GPU: starting an empty one (it is replaced "
        f"after the build)")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise BuildError("TensorRT refused an empty timing cache; this TensorRT build cannot cache tactic timings")


def save_timing_cache(config: Any, path: Path, log: Callable[[str], None]) -> bool:
    """Write the config's timing cache to ``path`` atomically; False (and a note) when the build kept none or it
    could not be written."""
    cache = config.get_timing_cache()
    if cache is None:
        log(f"      no timing cache to save to {path} (the builder kept none)")
        return False
    return _write_cache(path, bytes(memoryview(cache.serialize())), "timing cache",
                        "the next build times its tactics again", log)


def _build(trt: Any, onnx_path: Path, opts: BuildOptions, plan: BuildPlan, gpu: dict[str, Any],
           log: Callable[[str], None]) -> bytes:
    """Parse and build with Polygraphy's loaders (NVIDIA's, tested against every TensorRT release): the network
    from the ONNX file, the builder config with the batch profile, TF32 off for fp32, the fp16 flag on TensorRT 10.
    The timing cache stays ours: Polygraphy ignores whether TensorRT accepted a cache, and keys its file by path
    only, while ours is keyed by TensorRT version and GPU, and a refused cache is replaced."""
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineBytesFromNetwork,
        NetworkFromOnnxPath,
        PostprocessConfig,
        Profile,
    )
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    timing = timing_cache_path(opts.cache_dir, trt.__version__, gpu)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        log(f"[1/3] parsing {onnx_path}")
        try:
            builder, network, parser = NetworkFromOnnxPath(str(onnx_path))()
        except PolygraphyException as e:
            raise InputError(f"TensorRT's ONNX parser rejected {onnx_path}: {e}") from e
        def batch(b: int) -> tuple[int, ...]:
            return (b, *TILE_SHAPE)

        profile = Profile().add(network.get_input(0).name, batch(opts.min_batch), batch(opts.opt_batch),
                                batch(opts.max_batch))
        config = PostprocessConfig(
            CreateConfig(tf32=False, fp16=plan.fp16_flag, profiles=[profile],
                         memory_pool_limits={trt.MemoryPoolType.WORKSPACE: opts.workspace_mib << 20}),
            lambda _builder, _network, cfg: use_timing_cache(cfg, timing, log))(builder, network)
        log(f"[2/3] building ({opts.precision}, batch profile {opts.profile}, timing cache {timing})")
        try:
            data = EngineBytesFromNetwork((builder, network, parser), config)()
        except PolygraphyException as e:
            raise BuildError(f"TensorRT failed to build an engine from {onnx_path}: {e}") from e
    save_timing_cache(config, timing, log)
    return bytes(memoryview(data))


def _parity(data: bytes, manifest: dict[str, Any], out_path: Path, reference: Any,
            opts: BuildOptions) -> ParityReport:
    """Write the engine to a temp file, run it and ``reference`` (the PyTorch model) on the parity batch, compare.

    The runner does not read the manifest (as export's parity run does not): its self-check would run first, at the
    fp32 bound whatever the precision (the manifest has no tolerance until parity passed), and answer a failing
    engine with ArtifactMismatchError instead of this report (a failing cached engine then stayed cached)."""
    from moe_base.fileio import scratch_folder
    from moe_base.tolerances import get_tolerance
    from runtime.parity import compare, in_chunks, parity_inputs
    from runtime.trt_runner import TensorRTRunner

    x = parity_inputs(opts.parity_images)
    with scratch_folder(out_path.name, out_path.parent if out_path.parent.exists() else None) as tmp:
        tmp_engine = Path(tmp) / out_path.name
        write_artifact(tmp_engine, data, manifest)
        with TensorRTRunner(tmp_engine, check_manifest=False) as runner:
            out = in_chunks(runner, x)
    from export.pipeline import reference_outputs

    ref = reference_outputs(reference, x)
    return compare(ref, out, get_tolerance("trt", opts.precision), "trt", opts.precision)
