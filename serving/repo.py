"""A standard Triton model repository for a full Triton deployment (NVIDIA's container, KServe and the like).

Layout written by :func:`write_repository`::

    OUT/
      README.md                         how to serve it, what each model needs
      moe_denoiser/                     the portable ONNX on Triton's onnxruntime backend
        config.pbtxt
        1/model.onnx
        model.onnx.manifest.json        the toolkit's manifest (model hash, opset, parity), for the record
      moe_denoiser_trt/                 only when an engine is given: the engine on Triton's tensorrt backend
        config.pbtxt
        1/model.plan
        model.plan.manifest.json

Both models take the tensors of ``moe-denoise serve``'s ``moe_denoiser`` (``noisy`` float32 [B, 3, 32, 32] in
[0, 1] -> ``denoised``), so ``serving.client.DenoiseClient`` and ``moe-denoise denoise --server`` talk to either
(photos are then tiled by the client). The whole-photo model of ``moe-denoise serve`` runs our Python code and is
not part of a standard repository. Every ``config.pbtxt`` is parsed with Triton's own protobuf schema
(``tritonclient``'s ``model_config_pb2``, from the ``serve`` extra), then read by the ``tritonserver`` PyTriton
ships, which applies Triton's own config checks (:func:`check_with_tritonserver`).

The repository is written into a hidden staging folder beside ``OUT`` (inside it when ``OUT`` is a mount point such
as a docker volume: on the same file system either way; Triton would take one inside any other folder for a model)
and checked there; only then are
its models and README renamed into ``OUT`` (``--overwrite`` replaces those, removes this toolkit's other model when
an earlier run wrote it and this one does not, and keeps any other model ``OUT`` holds), so a refused config, a
failed copy or an interruption before the renames leaves ``OUT`` as it was. An existing ``OUT`` is filled, never
replaced: its owner, mode and inode stay (a container that mounted it before sees the models), and one that cannot
be written to is refused.
"""
from __future__ import annotations

import json
import numbers
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moe_base.fileio import is_staging_folder, publish_folder, sha256_file, staging_folder
from moe_base.manifest import make_it, read_checked
from runtime import InputError, MissingBackendError
from runtime.base import INPUT_NAME, OUTPUT_NAME, TILE_SHAPE

from .config import TILE_MODEL

TRT_MODEL = f"{TILE_MODEL}_trt"


LIMITS = {"max_batch": 65536, "instances": 64, "trt_instances": 64}  # the most each setting takes (as 'serve')


@dataclass(frozen=True)
class RepoSettings:
    max_batch: int = 64
    queue_delay_us: int = 500
    instances: int = 1
    onnx_kind: str = "KIND_CPU"  # KIND_GPU runs ONNX Runtime's CUDA provider in Triton's GPU container
    trt_instances: int = 1

    def validate(self) -> RepoSettings:
        # the bounds 'serve' has: 100000 instances passed tritonserver's config check, and a max_batch past int32
        # failed in the protobuf parse with the whole config text
        for name, top in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= top:
                raise InputError(f"{name} must be an integer in [1, {top}]; got {value!r}")  # np.int64 is Integral
        if not isinstance(self.queue_delay_us, int) or self.queue_delay_us < 0:
            raise InputError(f"queue_delay_us must be an integer >= 0; got {self.queue_delay_us!r}")
        if self.queue_delay_us > MAX_QUEUE_DELAY_US:
            raise InputError(f"queue delay {self.queue_delay_us:,} us is over {MAX_QUEUE_DELAY_US // 1_000_000} s "
                             f"(the most a request would wait for others to batch with); a few hundred to a few "
                             f"thousand microseconds is usual (default 500)")
        if self.onnx_kind not in ("KIND_CPU", "KIND_GPU"):
            raise InputError(f"onnx_kind must be KIND_CPU or KIND_GPU; got {self.onnx_kind!r}")
        return self


MAX_QUEUE_DELAY_US = 10_000_000  # 10 s


def schema_available() -> bool:
    """Whether Triton's ModelConfig protobuf schema (tritonclient[grpc]) can be imported here."""
    try:
        from google.protobuf import text_format  # noqa: F401
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def model_config_text(name: str, backend: str, max_batch: int, queue_delay_us: int, instances: int, kind: str,
                      comment: str = "") -> str:
    """config.pbtxt of a tile model: I/O of the toolkit's contract, dynamic batching, one instance group."""
    dims = ", ".join(str(d) for d in TILE_SHAPE)
    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return (
        f"{head}"
        f'name: "{name}"\n'
        f'backend: "{backend}"\n'
        f"max_batch_size: {max_batch}\n"
        f"input [\n"
        f'  {{ name: "{INPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims} ] }}\n'
        f"]\n"
        f"output [\n"
        f'  {{ name: "{OUTPUT_NAME}", data_type: TYPE_FP32, dims: [ {dims} ] }}\n'
        f"]\n"
        f"dynamic_batching {{\n"
        f"  max_queue_delay_microseconds: {queue_delay_us}\n"
        f"}}\n"
        f"instance_group [\n"
        f"  {{ count: {instances}, kind: {kind} }}\n"
        f"]\n"
    )


def parse_model_config(text: str) -> Any:
    """Parse config.pbtxt text with Triton's ModelConfig protobuf schema; InputError on any error."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise MissingBackendError(f"checking a Triton model config needs tritonclient[grpc] ({e}); install it with "
                                  f"pip install 'moe-denoise[serve]'") from e
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        raise InputError(f"the model config does not parse with Triton's schema: {e}\n{text}") from e
    return config


_BACKEND_ABSENT = re.compile(r"failed to load '([\w.-]+)' version \d+: Invalid argument: unable to find backend library "
                             r"for backend '(\w+)'")
_REJECTED = re.compile(r"Poll failed for model directory '([\w.-]+)': (.*?)\"?$", re.M)


def check_with_tritonserver(repo: Path, models: list[str], timeout_s: float = 60.0) -> dict[str, dict[str, str]]:
    """Have a real ``tritonserver`` (the one PyTriton ships) read each model's config, with Triton's own checks.

    That build has only the Python backend, so a config Triton accepts stops at "unable to find backend library"
    (verdict ``accepted``); a config it rejects stops earlier with Triton's reason (verdict ``rejected``).
    Raises MissingBackendError when PyTriton is not installed.
    """
    try:
        from pytriton.triton import TRITONSERVER_DIST_DIR
        from pytriton.utils.distribution import get_libs_path
    except ImportError as e:
        raise MissingBackendError(f"checking a repository with tritonserver needs PyTriton ({e}); install it with "
                                  f"pip install 'moe-denoise[serve]'") from e
    binary = Path(TRITONSERVER_DIST_DIR) / "bin" / "tritonserver"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(get_libs_path()), env.get("LD_LIBRARY_PATH")) if p)
    cmd = [str(binary), f"--model-repository={Path(repo).resolve()}",
           f"--backend-directory={Path(TRITONSERVER_DIST_DIR) / 'backends'}", "--model-control-mode=explicit",
           "--allow-http=false", "--allow-grpc=false", "--allow-metrics=false", "--exit-on-error=true",
           *[f"--load-model={m}" for m in models]]
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace",
                             timeout=timeout_s)  # a folder name that is not UTF-8 appears in its log
    except subprocess.TimeoutExpired as e:
        raise InputError(f"tritonserver did not finish reading {repo} within {timeout_s:.0f}s") from e
    log = run.stdout + run.stderr
    verdicts: dict[str, dict[str, str]] = {}
    for m in _BACKEND_ABSENT.finditer(log):
        verdicts[m.group(1)] = {"verdict": "accepted", "detail": f"config accepted; the '{m.group(2)}' backend is "
                                                                 f"not in PyTriton's tritonserver, so not loaded"}
    for m in _REJECTED.finditer(log):
        verdicts[m.group(1)] = {"verdict": "rejected", "detail": m.group(2).strip()}
    for name in models:
        verdicts.setdefault(name, {"verdict": "unknown", "detail": log.strip()[-600:]})
    return verdicts


def _manifest(path: Path, kind: str) -> dict[str, Any]:
    m = Path(f"{path}.manifest.json")
    if path.is_dir():  # it said the folder does not exist
        raise InputError(f"the {kind} '{path}' is a folder; pass the file in it ("
                         + ("a .onnx file 'moe-denoise export' wrote)" if kind == "ONNX model"
                            else "an .engine file 'moe-denoise build' wrote)"))
    if not path.is_file():
        raise InputError(f"the {kind} '{path}' does not exist; {make_it(path)}")
    if not m.is_file():
        raise InputError(f"the {kind} '{path}' has no manifest '{m.name}' next to it; the toolkit writes one with "
                         f"every artifact ('moe-denoise export' / 'moe-denoise build'): use such an artifact")
    # a malformed manifest is said here, not as a KeyError; an engine given as the ONNX model (or back) is told so;
    # the file is checked against its manifest (size, sha256) as the runners check it: a replaced or truncated model
    # was packaged, to fail only when Triton loaded it
    onnx = kind == "ONNX model"
    return read_checked(path, kind="onnx" if onnx else "trt-engine",
                        other_kind_hint=f"pass it with {'--engine' if onnx else '--onnx'}")  # not the runners' --backend


def _check_io(manifest: dict[str, Any], path: Path) -> None:
    io = manifest.get("io") or {}
    names = ([i.get("name") for i in io.get("inputs", [])], [o.get("name") for o in io.get("outputs", [])])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise InputError(f"'{path}' has inputs {names[0]} and outputs {names[1]}; expected ['{INPUT_NAME}'] and "
                         f"['{OUTPUT_NAME}'] (the toolkit's contract). Re-export it with this toolkit")


def check_onnx(path: Path) -> dict[str, Any]:
    manifest = _manifest(path, "ONNX model")
    flavor = (manifest.get("onnx") or {}).get("flavor")
    if flavor != "portable":
        raise InputError(f"'{path}' is the '{flavor}' ONNX flavour; Triton's onnxruntime backend needs the portable "
                         f"one (standard operators only): 'moe-denoise export --flavor portable'")
    _check_io(manifest, path)
    batch = (((manifest.get("io") or {}).get("inputs") or [{}])[0].get("shape") or [None])[0]
    if isinstance(batch, int):  # Triton batches requests along a dynamic first axis (max_batch_size > 0)
        raise InputError(f"'{path}' was exported with a fixed batch of {batch} (its manifest's input shape); Triton's "
                         f"dynamic batching needs a dynamic batch axis: export it with the default dynamic batch")
    return manifest


def check_engine(path: Path, max_batch: int) -> dict[str, Any]:
    manifest = _manifest(path, "TensorRT engine")
    _check_io(manifest, path)
    plugin = manifest.get("plugin")
    if plugin and not plugin.get("aot"):
        raise InputError(f"'{path}' uses the TensorRT plugin '{plugin.get('name', plugin)}' without an AOT "
                         f"implementation inside the engine; Triton would need the plugin library. Build the engine "
                         f"from the plugin ONNX with this toolkit's 'moe-denoise build' (AOT plugin)")
    low = int((manifest.get("profile") or {}).get("min", 1))
    if low > 1:  # Triton's dynamic batcher sends any batch from 1 up: the engine would refuse those under its minimum
        raise InputError(f"'{path}' takes batches of {low} tiles or more (its profile's min), but Triton's dynamic "
                         f"batcher sends batches from 1 tile up, which the engine would refuse while serving; build "
                         f"an engine with 'moe-denoise build --min-batch 1'")
    top = int((manifest.get("profile") or {}).get("max", 0))
    if top and max_batch > top:
        raise InputError(f"--max-batch {max_batch} exceeds the engine's batch profile (max {top}); pass --max-batch "
                         f"{top} or build an engine with a larger profile ('moe-denoise build --max-batch')")
    return manifest


def pytriton_available() -> bool:
    try:
        import pytriton.triton  # noqa: F401
    except ImportError:
        return False
    return True


def write_repository(out_dir: Path, onnx: Path | None, engine: Path | None = None,
                     settings: RepoSettings | None = None, overwrite: bool = False,
                     validate: bool | None = None, server_check: bool | None = None) -> dict[str, Any]:
    """Write the repository; return a report (models, files, the TensorRT version an engine needs).

    ``validate``: parse every config with Triton's protobuf schema first; None: when tritonclient[grpc] is installed
    (the report's ``checks`` says when it was not: writing the text needs no Triton package). ``server_check``:
    then have PyTriton's ``tritonserver`` read the repository (:func:`check_with_tritonserver`); None: when
    PyTriton is installed.
    A config that either refuses is an InputError and the report says which check ran. Nothing reaches
    ``out_dir`` until every file is written and checked (see the module's docstring).
    """
    s = (settings or RepoSettings()).validate()
    out_dir = Path(out_dir)
    if onnx is None and engine is None:
        raise InputError("give an ONNX model (--onnx) and/or a TensorRT engine (--engine) to put in the repository")
    if out_dir.is_symlink() and not out_dir.exists():  # found after the work, as a failed move
        raise InputError(f"'{out_dir}' is a symbolic link to '{os.readlink(out_dir)}', which does not exist; make "
                         f"that folder, remove the link, or give another folder's path (nothing was written)")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"'{out_dir}' is a file; a Triton model repository is a folder: give a new folder's path")
    if out_dir.exists() and not overwrite and any(not is_staging_folder(p) for p in out_dir.iterdir()):  # a killed run's staging
        raise InputError(f"'{out_dir}' exists and is not empty; choose a new folder or pass --overwrite to replace "
                         f"the models in it")
    plans: list[tuple[str, Path, str, str, dict[str, Any], str]] = []
    if onnx is not None:
        onnx = Path(onnx)
        m = check_onnx(onnx)
        text = model_config_text(
            TILE_MODEL, "onnxruntime", s.max_batch, s.queue_delay_us, s.instances, s.onnx_kind,
            comment=f"moe-denoise portable ONNX ({m.get('precision', 'fp32')}, opset "
                    f"{(m.get('onnx') or {}).get('opset')}), weights sha256 "
                    f"{((m.get('model') or {}).get('weights_sha256') or '?')[:16]}")  # None: exported without weights_path
        plans.append((TILE_MODEL, onnx, "model.onnx", text, m, "onnxruntime"))
    trt_version = None
    if engine is not None:
        engine = Path(engine)
        m = check_engine(engine, s.max_batch)
        trt = m.get("tensorrt") or {}
        trt_version = trt.get("version")
        text = model_config_text(
            TRT_MODEL, "tensorrt", s.max_batch, s.queue_delay_us, s.trt_instances, "KIND_GPU",
            comment=f"moe-denoise TensorRT engine ({m.get('precision')}), built with TensorRT {trt_version} for "
                    f"{trt.get('gpu')} (compute capability {trt.get('compute_capability')});\nthe Triton server "
                    f"must run TensorRT {trt_version} on a GPU of that compute capability.")
        plans.append((TRT_MODEL, engine, "model.plan", text, m, "tensorrt"))
    if validate is None:
        validate = schema_available()
    if validate:
        for _, _, _, text, _, _ in plans:
            parse_model_config(text)
    report: dict[str, Any] = {"repository": str(out_dir.resolve()), "models": [], "tensorrt_version": trt_version}
    with staging_folder(out_dir) as staging:  # written and checked there; moved into place only when complete
        for name, src, filename, text, manifest, backend in plans:
            try:
                (staging / name / "1").mkdir(parents=True)
                shutil.copyfile(src, staging / name / "1" / filename)
                (staging / name / "config.pbtxt").write_text(text, encoding="utf-8")
                (staging / name / f"{filename}.manifest.json").write_text(
                    json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            except OSError as e:
                raise InputError(f"writing the model '{name}' failed ({e.strerror or e}), so nothing was written to "
                                 f"{out_dir}; free some space or choose another folder") from e
            if sha256_file(staging / name / "1" / filename) != manifest["artifact"]["sha256"]:  # checked, then copied:
                # an export replacing it in between put its model beside the manifest and config of the one checked
                raise InputError(f"{src} changed while it was being copied (an export writing it now?), so nothing "
                                 f"was written to {out_dir}; run again when it is done")
            report["models"].append({"name": name, "backend": backend, "file": str(out_dir / name / "1" / filename),
                                     "config": str(out_dir / name / "config.pbtxt"), "source": str(src)})
        report["checks"] = (["parsed with Triton's model_config protobuf schema"] if validate else
                            ["not checked against Triton's schema: tritonclient[grpc] is not installed (pip install "
                             "'moe-denoise[serve]' to have it checked)"])
        if server_check is None:
            server_check = pytriton_available()
        if server_check:
            verdicts = check_with_tritonserver(staging, [m["name"] for m in report["models"]])
            report["tritonserver_check"] = verdicts
            bad = {k: v for k, v in verdicts.items() if v["verdict"] != "accepted"}
            if bad:
                raise InputError(f"tritonserver did not accept the generated config(s), so nothing was written to "
                                 f"{out_dir}: {bad}")
            report["checks"].append("read by tritonserver (PyTriton's build): every config accepted, models not "
                                    "loaded (that build has no onnxruntime / tensorrt backend)")
        # this toolkit's other model, written by an earlier run (--onnx and --engine then, only one now): Triton
        # would go on serving it, maybe with other weights, while the new README no longer names it
        written = {m["name"] for m in report["models"]}
        stale = [name for name, filename in ((TILE_MODEL, "model.onnx"), (TRT_MODEL, "model.plan"))
                 if name not in written and overwrite and (out_dir / name / f"{filename}.manifest.json").is_file()]
        report["removed"] = []
        (staging / "README.md").write_text(repository_readme(report, s), encoding="utf-8",
                                              errors="surrogateescape")  # a path's bytes that are not UTF-8, as they are
        publish_folder(staging, out_dir, [*(m["name"] for m in report["models"]), "README.md"], overwrite)
        for name in stale:  # after the new models are in place; one rename each, removed with the staging folder
            try:
                os.rename(out_dir / name, staging / f".removed.{name}")
            except OSError as e:
                raise InputError(f"the new models are in {out_dir}, but the earlier run's {name} there could not be "
                                 f"removed ({e.strerror or e}): Triton would serve it too; remove "
                                 f"{out_dir / name} by hand") from e
            report["removed"].append(str(out_dir / name))
    return report


def repository_readme(report: dict[str, Any], s: RepoSettings) -> str:
    names = [m["name"] for m in report["models"]]
    # a CPU-only repository runs without the NVIDIA container runtime, which '--gpus all' demands of the host
    gpus = " --gpus all" if TRT_MODEL in names or s.onnx_kind == "KIND_GPU" else ""
    lines = [
        "# moe-denoise Triton model repository",
        "",
        "Written by `moe-denoise triton-repo`. Models: " + ", ".join(f"`{n}`" for n in names) + ". Each takes "
        f"`{INPUT_NAME}` float32 [B, 3, 32, 32] in [0, 1] (B <= {s.max_batch}) and returns `{OUTPUT_NAME}` of the "
        f"same shape, with dynamic batching (queue delay {s.queue_delay_us} us).",
        "",
        "Serve it with NVIDIA's Triton container (replace `<xx.yy>` with a release whose TensorRT matches the engine, "
        "if there is one):",
        "",
        "```bash",
        f"docker run --rm{gpus} -p 8000:8000 -p 8001:8001 -p 8002:8002 \\",
        "    -v \"$PWD\":/models nvcr.io/nvidia/tritonserver:<xx.yy>-py3 tritonserver --model-repository=/models",
        "moe-denoise denoise photo.png -o photo.denoised.png --server localhost:8000   # tiles sent by the client",
        "```",
        "",
    ]
    if report.get("tensorrt_version"):
        lines += [f"`{TRT_MODEL}` is a TensorRT engine built with TensorRT {report['tensorrt_version']}: the container "
                  f"must ship exactly that TensorRT version and run on a GPU of the compute capability in its "
                  f"config.pbtxt comment (engines are not portable across either). Its sparse-attention plugin is "
                  f"compiled into the engine (AOT), so no plugin library is loaded.", ""]
    checks = report.get("checks") or ["none"]
    lines += ["Checks made when it was written: " + "; ".join(checks) + ". The models were not loaded and served by a "
              "full Triton server there (that needs Triton's onnxruntime / tensorrt backends, e.g. NVIDIA's container).",
              ""]
    return "\n".join(lines)
