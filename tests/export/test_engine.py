"""The TensorRT build layer without TensorRT: version planning, profiles, cache keys, the timing cache."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from export.engine import BuildOptions, cache_key, plan_build
from moe_base.errors import InputError, MissingBackendError, ParityError


def test_plan_by_tensorrt_version():
    with pytest.raises(InputError, match=r"TensorRT 10.8.0 is too old.*>= 10.9"):
        plan_build("10.8.0", "fp32")
    p10 = plan_build("10.9.0.34", "fp16")
    assert (p10.strongly_typed, p10.onnx_precision, p10.fp16_flag) == (False, "fp32", True)
    assert plan_build("10.13.2", "fp32").fp16_flag is False
    p11 = plan_build("11.1.0", "fp16")
    assert (p11.strongly_typed, p11.onnx_precision, p11.fp16_flag) == (True, "fp16", False)
    assert plan_build("11.0", "fp32").onnx_precision == "fp32"


@pytest.mark.parametrize("kw,match", [
    (dict(min_batch=0), "1 <= min <= opt <= max"),
    (dict(min_batch=8, opt_batch=4), "min 8, opt 4"),
    (dict(opt_batch=2048, max_batch=1024), "opt 2048, max 1024"),
    (dict(max_batch=100_000, opt_batch=64), "beyond"),
    (dict(precision="int8"), "int8"),
    (dict(workspace_mib=1), r"too small; use at least 64 \(--workspace-mib\)"),
])
def test_profile_validation(kw, match):
    with pytest.raises(InputError, match=match):
        BuildOptions(**kw).validate()
    BuildOptions().validate()


def test_cache_key_depends_on_every_input(tmp_path):
    base = dict(onnx_sha="a" * 64, plugin_hash="p", trt_version="10.9.0", compute_capability="9.0")
    opts = BuildOptions(cache_dir=tmp_path)
    k = cache_key(**base, opts=opts)
    assert k == cache_key(**base, opts=BuildOptions(cache_dir=tmp_path / "elsewhere"))  # location is not identity
    variants = [dict(base, onnx_sha="b" * 64), dict(base, plugin_hash=None), dict(base, trt_version="10.10.0"),
                dict(base, compute_capability="8.9")]
    keys = {cache_key(**v, opts=opts) for v in variants}
    keys |= {cache_key(**base, opts=BuildOptions(precision="fp16")), cache_key(**base, opts=BuildOptions(max_batch=512))}
    # an A100 and an A30 (both 8.0) shared engines; so did kernels compiled by two Triton releases
    keys |= {cache_key(**base, opts=opts, gpu_name="NVIDIA A30"), cache_key(**base, opts=opts, gpu_name="NVIDIA A100"),
             cache_key(**base, opts=opts, gpu_name="NVIDIA A30", kernel_compiler="triton 3.4.0")}
    assert k not in keys and len(keys) == 9


def test_build_without_tensorrt_names_the_package(tmp_path, random_weights):
    pytest.importorskip("onnx", reason="the ONNX export before the build needs onnx: pip install 'moe-denoise[onnx]'")
    pytest.importorskip("onnxruntime_extensions", reason="the plugin graph's parity check at export needs "
                                                          "onnxruntime-extensions: pip install 'moe-denoise[onnx]'")
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("tensorrt is installed here: this checks what a build says where it is not")
    from export.engine import build_engine
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    onnx_path = tmp_path / "m.onnx"
    export_onnx(load_model(random_weights), onnx_path, ExportOptions(flavor="plugin"), weights_path=random_weights,
                parity_images=2, log=lambda s: None)
    import torch

    # without a GPU that comes first: it said to install TensorRT (gigabytes), then that it needs a GPU
    said = (r"building TensorRT engines needs the Python package 'tensorrt'" if torch.cuda.is_available() else
            r"needs an NVIDIA GPU, and torch .* sees none; TensorRT is not installed here either\. Build on a machine")
    with pytest.raises(MissingBackendError, match=said):
        build_engine(onnx_path, tmp_path / "m.engine", weights=random_weights, log=lambda s: None)
    assert not (tmp_path / "m.engine").exists()


def _importable(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


# --- the timing cache (TensorRT's config is stood in for: what matters is what we do with its answers) -----------
class Cache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data


class Config:
    """IBuilderConfig's timing-cache calls: set_timing_cache answers False for data it does not accept."""

    def __init__(self, accept=lambda data: True, keeps_cache=True) -> None:
        self.accept, self.keeps_cache, self.cache = accept, keeps_cache, None

    def create_timing_cache(self, data: bytes) -> Cache:
        return Cache(bytes(data))

    def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False
        if not self.accept(cache.data):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return Cache(self.cache.data + b"+new tactics") if self.keeps_cache and self.cache else None


def test_timing_cache_is_keyed_by_tensorrt_and_gpu(tmp_path):
    from export.engine import timing_cache_path

    h200 = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    a = timing_cache_path(tmp_path, "10.9.0.34", h200)
    assert a != timing_cache_path(tmp_path, "11.4.0.106", h200)
    assert a != timing_cache_path(tmp_path, "10.9.0.34", {"name": "NVIDIA L4", "compute_capability": "8.9"})
    assert a != timing_cache_path(tmp_path, "10.9.0.34", {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"})
    assert a.parent == tmp_path / "timing" and "h200" in a.name and "sm90" in a.name


def test_a_refused_timing_cache_is_replaced_not_used(tmp_path):
    from export.engine import save_timing_cache, use_timing_cache

    path = tmp_path / "t.cache"
    path.write_bytes(b"from another GPU")
    notes = []
    cfg = Config(accept=lambda data: data != b"from another GPU")
    use_timing_cache(cfg, path, notes.append)
    assert cfg.cache.data == b"" and "does not match this TensorRT or GPU" in notes[0]
    assert save_timing_cache(cfg, path, notes.append)
    assert path.read_bytes() == b"+new tactics"
    cfg = Config()  # an accepted cache is used as it is
    use_timing_cache(cfg, path, notes.append)
    assert cfg.cache.data == b"+new tactics"


def test_no_timing_cache_after_the_build_writes_nothing(tmp_path):
    from export.engine import save_timing_cache, use_timing_cache

    path = tmp_path / "t.cache"
    notes = []
    cfg = Config(keeps_cache=False)
    use_timing_cache(cfg, path, notes.append)
    assert save_timing_cache(cfg, path, notes.append) is False
    assert not path.exists() and "no timing cache to save" in notes[-1]


@pytest.mark.parametrize("trt_version,fp16", [("10.9.0", True), ("11.4.0", False)])
def test_the_build_asks_polygraphy_for_the_profile_precision_and_workspace_of_its_options(tmp_path, monkeypatch,
                                                                                         trt_version, fp16):
    """The build's own Polygraphy calls, with TensorRT's parts faked: the loaders it imports exist, and the config
    it makes has TF32 off, the fp16 flag of the plan (TensorRT 10 only: 11 is strongly typed), the batch profile of
    the options on the network's input, and the options' workspace."""
    pytest.importorskip("polygraphy", reason="the engine build uses Polygraphy: pip install 'moe-denoise[trt]'")
    import types

    import polygraphy.backend.trt as pt

    from export.engine import _build
    from moe_base.contract import TILE_SHAPE

    trt = types.SimpleNamespace(__version__=trt_version, MemoryPoolType=types.SimpleNamespace(WORKSPACE="workspace"))
    network = types.SimpleNamespace(get_input=lambda i: types.SimpleNamespace(name="pixels"))
    config = types.SimpleNamespace(get_timing_cache=lambda: None)
    seen = {}

    def postprocess(create, fn):
        seen["create"] = create
        return lambda builder, net: config

    def engine_bytes(parsed, cfg):
        seen["built_with"] = cfg
        return lambda: b"engine"

    monkeypatch.setattr(pt, "NetworkFromOnnxPath", lambda path: lambda: ("builder", network, "parser"))
    monkeypatch.setattr(pt, "PostprocessConfig", postprocess)
    monkeypatch.setattr(pt, "EngineBytesFromNetwork", engine_bytes)
    opts = BuildOptions(precision="fp16", min_batch=2, opt_batch=100, max_batch=512, workspace_mib=256, cache_dir=tmp_path)
    data = _build(trt, tmp_path / "m.onnx", opts, plan_build(trt_version, "fp16"), {"name": "GPU"}, lambda s: None)
    assert data == b"engine" and seen["built_with"] is config
    create = seen["create"]
    assert isinstance(create, pt.CreateConfig) and create.tf32 is False and create.fp16 is fp16
    assert create.memory_pool_limits == {"workspace": 256 << 20}
    (profile,) = create.profiles
    assert list(profile) == ["pixels"]
    shapes = profile["pixels"]
    assert (shapes.min, shapes.opt, shapes.max) == ((2, *TILE_SHAPE), (100, *TILE_SHAPE), (512, *TILE_SHAPE))


def test_plugin_hash_follows_code_not_words(tmp_path, monkeypatch):
    import shutil

    import topk_attention.spec as spec

    assert len(spec.behaviour_hash()) == 32 and spec.behaviour_hash() == spec.behaviour_hash()
    copy = tmp_path / "topk_attention"
    shutil.copytree(spec.__file__.rsplit("/", 1)[0], copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(spec, "__file__", str(copy / "spec.py"))
    base = spec.behaviour_hash()
    kernel = copy / "triton_kernel.py"
    text = kernel.read_text()
    kernel.write_text(text.replace('"""Triton kernel', '"""The Triton kernel', 1) + "\n# a comment\n")
    assert spec.behaviour_hash() == base  # docstrings and comments are words
    kernel.write_text(text.replace("MAX_N = 1024", "MAX_N = 512", 1))
    assert spec.behaviour_hash() != base  # code is behaviour


def test_the_engines_parity_weights_default_to_those_the_onnx_model_names(tmp_path, random_weights):
    """build without --weights checks the engine against the weights its ONNX model was exported from (while that
    file is there unchanged), not the shipped default; given weights must be those, by hash."""
    import shutil

    from moe_base.errors import ArtifactMismatchError
    from moe_base.fileio import sha256_file
    from runtime.torch_runner import artifact_weights
    from weights import DEFAULT_WEIGHTS

    manifest = {"model": {"weights_file": str(random_weights), "weights_sha256": sha256_file(random_weights)}}
    onnx = tmp_path / "m.onnx"
    assert artifact_weights(onnx, manifest, None, "--weights") == random_weights
    copy = tmp_path / "copy.safetensors"
    shutil.copy(random_weights, copy)
    assert artifact_weights(onnx, manifest, copy, "--weights") == copy  # the same weights elsewhere on disk
    with pytest.raises(ArtifactMismatchError, match=rf"exported from weights with sha256 .*\({random_weights}\)"):
        artifact_weights(onnx, manifest, DEFAULT_WEIGHTS, "--weights")
    moved = {"model": {**manifest["model"], "weights_file": str(tmp_path / "gone.safetensors")}}
    with pytest.raises(ArtifactMismatchError, match=r"gone\.safetensors, a file no longer there\), but"):
        artifact_weights(onnx, moved, None, "--weights")  # the file it names is gone: the default differs, and it says
    from weights import SHIPPED  # an artifact moved to another checkout: its weights, shipped there, are found by hash

    specialist = {"model": {"weights_file": str(tmp_path / "elsewhere" / "moe_denoiser_sigma20.safetensors"),
                            "weights_sha256": sha256_file(SHIPPED["sigma20"])}}
    assert artifact_weights(onnx, specialist, None, "--weights") == SHIPPED["sigma20"]


# --- build_engine's own logic around TensorRT (TensorRT, the GPU, the build and the engine run are stood in for) -----
@pytest.fixture()
def fake_trt(monkeypatch, tmp_path):
    """A machine with 'TensorRT 11.4' and a GPU: the build returns fixed bytes (counted) and the engine's parity is
    what the test says. Everything else (manifests, weights, cache, messages) is build_engine's own."""
    import types

    import torch

    import moe_base.machine
    from export import engine
    from moe_base.tolerances import get_tolerance
    from runtime.parity import compare

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "11.4.0.106"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(moe_base.machine, "cuda_device",
                        lambda i=0: {"name": "Stand-in GPU", "compute_capability": "9.0"})
    state = types.SimpleNamespace(builds=0, passes=True, references=[])

    def build(*args, **kwargs):
        state.builds += 1
        return b"engine bytes %d" % state.builds

    def parity(data, manifest, out_path, reference, opts):
        state.references.append(reference)
        x = np.zeros((2, 3, 32, 32), np.float32)
        return compare(x, x + (0 if state.passes else 0.5), get_tolerance("trt", opts.precision), "trt", opts.precision)

    monkeypatch.setattr(engine, "_build", build)
    monkeypatch.setattr(engine, "_parity", parity)
    return state


@pytest.fixture(scope="module")
def portable_onnx(tmp_path_factory, random_weights):
    pytest.importorskip("onnxruntime", reason="the ONNX export before the build is parity-checked in ONNX Runtime: "
                                          "pip install 'moe-denoise[onnx]'")
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    export_onnx(load_model(random_weights), path, ExportOptions(), weights_path=random_weights, parity_images=2,
                log=lambda s: None)
    return path


def test_only_an_engine_that_passes_parity_is_cached(fake_trt, portable_onnx, random_weights, tmp_path):
    """An engine that fails parity is not kept in the engine cache (it was, and every rerun was served it as a
    cache hit, failing again); a cached engine that fails parity later is removed from the cache."""
    from export.engine import BuildOptions, build_engine

    opts = BuildOptions(cache_dir=tmp_path / "cache")
    engines = opts.cache_dir / "engines"
    fake_trt.passes = False
    for attempt in (1, 2):
        with pytest.raises(ParityError, match="does not match PyTorch"):
            build_engine(portable_onnx, tmp_path / "m.engine", opts, weights=random_weights, log=lambda s: None)
        assert fake_trt.builds == attempt  # built again: the failing engine was not cached
        assert not list(engines.glob("*.engine"))
    assert not (tmp_path / "m.engine").exists()
    fake_trt.passes = True
    first = build_engine(portable_onnx, tmp_path / "m.engine", opts, weights=random_weights, log=lambda s: None)
    again = build_engine(portable_onnx, tmp_path / "m2.engine", opts, weights=random_weights, log=lambda s: None)
    assert (first.cached, again.cached, fake_trt.builds) == (False, True, 3) and len(list(engines.glob("*.engine"))) == 1
    fake_trt.passes = False  # the cached engine now fails (a driver changed under it, say): it leaves the cache
    with pytest.raises(ParityError, match="the cached engine is removed from the cache"):
        build_engine(portable_onnx, tmp_path / "m3.engine", opts, weights=random_weights, log=lambda s: None)
    assert not list(engines.glob("*.engine")) and not (tmp_path / "m3.engine").exists()


def test_a_cache_that_cannot_be_written_costs_no_finished_engine(fake_trt, portable_onnx, random_weights, tmp_path,
                                                                   monkeypatch):
    """The caches were written before the engine and never checked up front: a cache folder that was a file, read-only
    or full failed after the whole build and parity, and no engine was written. Now a cache folder that cannot take
    files is refused before the build, and a cache write that fails afterwards is a note."""
    from export import engine
    from export.engine import BuildOptions, build_engine
    from moe_base import fileio

    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("not a folder")
    with pytest.raises(InputError, match=r"the cache folder: cannot write to the folder .*pass --cache-dir FOLDER"):
        build_engine(portable_onnx, tmp_path / "m.engine", BuildOptions(cache_dir=blocked), weights=random_weights,
                     log=lambda s: None)
    assert fake_trt.builds == 0 and not (tmp_path / "m.engine").exists()

    opts = BuildOptions(cache_dir=tmp_path / "cache")
    real = fileio.atomic_write

    def disk_full_in_the_cache(path, *args, **kwargs):
        if opts.cache_dir in Path(path).parents:
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fileio, "atomic_write", disk_full_in_the_cache)
    said = []
    result = build_engine(portable_onnx, tmp_path / "m.engine", opts, weights=random_weights, log=said.append)
    assert result.path.read_bytes() == b"engine bytes 1" and not list(opts.cache_dir.rglob("*.engine"))
    assert any("could not write the engine cache" in s and "No space left" in s for s in said), said
    assert engine._write_cache(tmp_path / "cache" / "timing" / "t.cache", b"x", "timing cache", "no matter", said.append) is False


def test_the_default_opt_batch_comes_within_the_batches_given(fake_trt, portable_onnx, random_weights, tmp_path,
                                                               capsys):
    """build --max-batch 32 was refused for the default --opt-batch 64 the user never set, by a message that named
    no option."""
    import json

    from moe_denoise.cli import main

    base = ["build", "--onnx", str(portable_onnx), "--weights", str(random_weights), "--cache-dir", str(tmp_path / "c"),
            "--json"]
    for extra, profile in ((["--max-batch", "32"], [1, 32, 32]), (["--min-batch", "128"], [128, 128, 1024]),
                           ([], [1, 64, 1024])):
        out = tmp_path / f"m{len(extra)}{extra[-1] if extra else ''}.engine"
        assert main([*base, *extra, "-o", str(out)]) == 0
        assert json.loads(capsys.readouterr().out)["profile"] == dict(zip(("min", "opt", "max"), profile))
    assert main([*base, "--opt-batch", "64", "--max-batch", "32", "-o", str(tmp_path / "x.engine")]) == 2
    assert "opt 64, max 32 (--min-batch, --opt-batch, --max-batch)" in capsys.readouterr().err


def test_a_failed_parity_gate_prints_its_report_as_json_with_json(fake_trt, portable_onnx, random_weights, tmp_path,
                                                                    capsys, monkeypatch):
    """export --json and build --json printed nothing on stdout when the parity gate failed ('parity --json' prints
    its report either way): a script reading stdout got no JSON to parse."""
    import json

    import export.pipeline
    from moe_base.tolerances import get_tolerance
    from moe_denoise.cli import main
    from runtime.parity import compare

    fake_trt.passes = False
    out = tmp_path / "m.engine"
    assert main(["build", "--onnx", str(portable_onnx), "--weights", str(random_weights), "-o", str(out),
                 "--cache-dir", str(tmp_path / "c"), "--json"]) == 1
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["written"] is False and doc["parity"]["passed"] is False and doc["output"] == str(out)
    assert doc["command"] == "build" and doc["exit_code"] == 1  # as every error document (they were missing)
    assert "does not match PyTorch" in doc["error"] and "does not match PyTorch" in captured.err and not out.exists()

    tol = get_tolerance("ort", "fp32")
    monkeypatch.setattr(export.pipeline, "run_parity",
                        lambda path, model, x, *a, **k: compare(np.zeros((2, 3, 32, 32)), np.ones((2, 3, 32, 32)), tol))
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(random_weights), "-o", str(onnx), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["written"] is False and doc["parity"]["max_abs"] == 1.0 and not onnx.exists()
    assert doc["command"] == "export" and doc["exit_code"] == 1


def test_no_gpu_is_said_before_a_cache_folder_that_cannot_be_written(portable_onnx, random_weights, tmp_path):
    """A machine without a GPU was told first to fix its cache folder, then that no build is possible there."""
    import torch

    from export.engine import BuildOptions, build_engine
    from moe_base.errors import NoGPUError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the no-GPU message is checked on one without")
    blocked = tmp_path / "cache-is-a-file"
    blocked.write_text("not a folder")
    with pytest.raises(NoGPUError, match="needs an NVIDIA GPU"):
        build_engine(portable_onnx, tmp_path / "m.engine", BuildOptions(cache_dir=blocked), weights=random_weights,
                     log=lambda s: None)


def test_build_checks_the_onnx_file_against_its_manifest(fake_trt, portable_onnx, random_weights, tmp_path):
    """A graph replaced under its old manifest was built as the old one (its cache key is the manifest's hash):
    refused before any build, as the runners refuse it; an engine given as --onnx is told what it is."""
    import shutil

    from export.engine import BuildOptions, build_engine
    from moe_base.errors import ArtifactError
    from moe_base.manifest import manifest_path

    onnx = tmp_path / "m.onnx"
    shutil.copy(portable_onnx, onnx)
    shutil.copy(manifest_path(portable_onnx), manifest_path(onnx))
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="manifest says"):
        build_engine(onnx, tmp_path / "m.engine", BuildOptions(cache_dir=tmp_path / "c"), weights=random_weights,
                     log=lambda s: None)
    built = build_engine(portable_onnx, tmp_path / "e.engine", BuildOptions(cache_dir=tmp_path / "c"),
                         weights=random_weights, log=lambda s: None)
    with pytest.raises(ArtifactError, match=r"is a TensorRT engine \(its manifest says so\), not an ONNX model"):
        build_engine(built.path, tmp_path / "x.engine", BuildOptions(cache_dir=tmp_path / "c"), log=lambda s: None)
    assert fake_trt.builds == 1


def test_build_of_a_model_from_weights_without_a_sidecar(fake_trt, tmp_path, seed_ckpt):
    """The seed checkpoint has no JSON sidecar: its ONNX model's manifest records the architecture, which rebuilds
    the parity reference (before, build failed after the build, asking for a --preset it does not have)."""
    pytest.importorskip("onnxruntime", reason="the ONNX export before the build is parity-checked in ONNX Runtime: "
                                          "pip install 'moe-denoise[onnx]'")
    from export.engine import BuildOptions, build_engine
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    onnx = tmp_path / "seed.onnx"
    export_onnx(load_model(seed_ckpt, preset="seed"), onnx, ExportOptions(), weights_path=seed_ckpt, parity_images=2,
                log=lambda s: None)
    build_engine(onnx, tmp_path / "seed.engine", BuildOptions(cache_dir=tmp_path / "c"), log=lambda s: None)
    (reference,) = fake_trt.references
    assert reference.config.name == "seed" and fake_trt.builds == 1


def test_an_fp16_build_on_tensorrt_11_names_the_export_it_needs(fake_trt, portable_onnx, random_weights, tmp_path):
    """TensorRT 11 builds fp16 from the fp16 graph: the hint names the export with the given graph's flavour (it
    said 'export --precision fp16', which writes the portable graph, and build then took the plugin one again)."""
    from export.engine import BuildOptions, build_engine

    with pytest.raises(InputError, match=r"'moe-denoise export --flavor portable --precision fp16'"):
        build_engine(portable_onnx, tmp_path / "m.engine", BuildOptions(precision="fp16", cache_dir=tmp_path / "c"),
                     weights=random_weights, log=lambda s: None)
    assert fake_trt.builds == 0


def test_a_missing_graph_for_an_fp16_build_names_both_exports(tmp_path):
    """build --precision fp16 with nothing exported suggested 'export --flavor plugin' alone, which TensorRT 11
    cannot build fp16 from."""
    from export.engine import build_engine

    with pytest.raises(InputError, match=r"m\.plugin\.fp16\.onnx does not exist; make it with: moe-denoise export -o "
                                         r".*'moe-denoise export --flavor plugin --precision fp16'"):
        build_engine(tmp_path / "m.plugin.fp16.onnx", tmp_path / "m.engine", BuildOptions(precision="fp16"))
    (tmp_path / "exported").mkdir()  # a folder was said not to exist
    with pytest.raises(InputError, match=r"ONNX model .*exported is a folder; pass the \.onnx file in it"):
        build_engine(tmp_path / "exported", tmp_path / "m.engine", BuildOptions())


def test_build_takes_the_graph_the_installed_tensorrt_builds_from(tmp_path, monkeypatch):
    """TensorRT 10 builds fp16 engines from the fp32 graph (fp16 is a builder flag): with both plugin graphs exported,
    as the README's steps leave them, 'build --precision fp16' took the fp16 graph, refused it, and asked for the fp32
    graph that was already there. TensorRT 11 builds from the graph of the precision."""
    import sys
    import types

    from moe_base.paths import onnx_path
    from moe_denoise.commands.build import default_onnx

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path))
    for precision in ("fp32", "fp16"):
        path = onnx_path("plugin", precision=precision)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"graph")
    for version, graph in (("10.9.0.34", "fp32"), ("11.4.0.106", "fp16")):
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))
        assert default_onnx("fp16") == onnx_path("plugin", precision=graph)
        assert default_onnx("fp32") == onnx_path("plugin", precision="fp32")


def test_a_file_that_appears_at_o_during_the_build_is_not_replaced_without_overwrite(fake_trt, portable_onnx,
                                                                                     random_weights, tmp_path,
                                                                                     monkeypatch):
    """As for export: build -o ENGINE without --overwrite checked ENGINE before the build only, and replaced a file
    that appeared there meanwhile."""
    from export import engine
    from moe_denoise.cli import main

    out = tmp_path / "m.engine"
    real = engine._parity

    def meanwhile(*args, **kwargs):
        out.write_bytes(b"written meanwhile")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_parity", meanwhile)
    argv = ["build", "--onnx", str(portable_onnx), "-o", str(out), "--weights", str(random_weights), "--cache-dir",
            str(tmp_path / "c")]
    assert main(argv) == 2
    assert out.read_bytes() == b"written meanwhile"
    assert main([*argv, "--overwrite"]) == 0 and out.read_bytes().startswith(b"engine bytes")


def test_an_engine_beside_the_users_onnx_model_is_not_replaced_without_overwrite(fake_trt, portable_onnx,
                                                                                 random_weights, tmp_path, capsys):
    """build --onnx X without -o replaced an existing X.fp32.engine (beside the user's model, not in the cache) in
    silence, where the same path given with -o was refused."""
    import shutil

    from moe_base.manifest import manifest_path
    from moe_denoise.cli import main

    own = tmp_path / "own"
    own.mkdir()
    onnx = own / portable_onnx.name
    shutil.copy(portable_onnx, onnx)
    shutil.copy(manifest_path(portable_onnx), manifest_path(onnx))
    engine = own / f"{onnx.stem}.fp32.engine"
    engine.write_bytes(b"precious")
    argv = ["build", "--onnx", str(onnx), "--weights", str(random_weights), "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 2 and engine.read_bytes() == b"precious"
    assert "already exists" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0 and engine.read_bytes().startswith(b"engine bytes")


def test_an_onnx_model_exported_with_skip_weights_check_can_be_built(fake_trt, random_weights, tmp_path):
    """'export --skip-weights-check' exports weights whose sidecar records another sha256 (edited on purpose). build
    then loaded them for its parity reference with the sidecar check on, after TensorRT was found, and stopped
    with 'pass --skip-weights-check', an option build does not have: such a model could not be built at all. The
    ONNX model's manifest records the weights' own sha256, which build checks them against (artifact_weights)."""
    import shutil

    from export.engine import BuildOptions, build_engine
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_base.errors import ArtifactMismatchError
    from moe_model.checkpoint import load_model, sidecar_path

    edited = tmp_path / "edited.safetensors"
    shutil.copy(random_weights, edited)
    shutil.copy(sidecar_path(random_weights), sidecar_path(edited))
    from safetensors.torch import load_file, save_file

    tensors = load_file(edited)
    first = next(iter(tensors))
    tensors[first] = tensors[first] * 1.01
    save_file(tensors, edited)
    onnx = tmp_path / "edited.onnx"
    export_onnx(load_model(edited, verify=False), onnx, ExportOptions(), weights_path=edited, parity_images=2,
                log=lambda s: None)
    built = build_engine(onnx, tmp_path / "edited.engine", BuildOptions(cache_dir=tmp_path / "c"), log=lambda s: None)
    assert built.path.is_file() and fake_trt.builds == 1
    with pytest.raises(ArtifactMismatchError):  # other weights than those it was exported from: still refused
        build_engine(onnx, tmp_path / "other.engine", BuildOptions(cache_dir=tmp_path / "c"), weights=random_weights,
                     log=lambda s: None)


def test_an_fp16_engine_is_judged_by_the_fp16_tolerance_during_the_build(monkeypatch, portable_onnx, random_weights,
                                                                          tmp_path):
    """The build's parity check loaded the new engine with its manifest, whose self-check then ran before the
    parity batch, at the fp32 bound (no tolerance is in that manifest until parity passed: 5 x 1e-4): an fp16 engine
    1e-3 from PyTorch (PSNR ~60 dB, well inside fp16's tolerance) was refused as 'does not compute the model its
    manifest describes' (exit 2, no parity report), and a cached engine that failed that way stayed in the cache.
    TensorRT, the GPU and the engine's run are stood in for; the runner's own manifest handling is the real one's."""
    import types

    import torch

    import moe_base.machine
    import runtime.trt_runner as trt_runner
    from export import engine
    from export.engine import BuildOptions, build_engine
    from export.pipeline import reference_outputs
    from moe_base.manifest import read_checked
    from moe_model.checkpoint import load_model
    from runtime.parity import self_check

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.9.0.34"  # fp16 from the fp32 graph, as a builder flag
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(moe_base.machine, "cuda_device", lambda i=0: {"name": "Stand-in", "compute_capability": "9.0"})
    monkeypatch.setattr(engine, "_build", lambda *a, **k: b"fp16 engine")
    model = load_model(random_weights)

    class StandIn(trt_runner.TensorRTRunner):
        def _activate_impl(self):  # TensorRTRunner._activate_impl's manifest steps; no TensorRT to deserialize with
            if self.check_manifest:
                self.manifest = read_checked(self.engine_path, kind="trt-engine")
                tol = self.manifest.get("tolerance") or {}
                self_check(self._infer_impl, self.manifest.get("self_check"), 5 * float(tol.get("atol", 1e-4)),
                           str(self.engine_path))

        def _infer_impl(self, x):  # an fp16 engine: 1e-3 from PyTorch
            return np.clip(reference_outputs(model, x) + 1e-3, 0, 1).astype(np.float32)

    monkeypatch.setattr(trt_runner, "TensorRTRunner", StandIn)
    result = build_engine(portable_onnx, tmp_path / "m.fp16.engine", BuildOptions(precision="fp16", cache_dir=tmp_path),
                          weights=random_weights, log=lambda s: None)
    assert result.parity.passed and result.parity.precision == "fp16"
    # the cached engine fails now (a driver changed under it, say): the parity report says so, and it leaves the cache
    monkeypatch.setattr(StandIn, "_infer_impl", lambda self, x: np.clip(reference_outputs(model, x) + 0.2, 0, 1))
    with pytest.raises(ParityError, match="the cached engine is removed from the cache"):
        build_engine(portable_onnx, tmp_path / "again.engine", BuildOptions(precision="fp16", cache_dir=tmp_path),
                     weights=random_weights, log=lambda s: None)
    assert not list((tmp_path / "engines").glob("*.engine"))


def test_the_engine_under_test_is_in_a_scratch_folder_that_the_next_build_cleans(tmp_path, monkeypatch):
    """build's engine under test was in a tempfile 'tmpXXXXXXXX' folder beside the user's engine: a build killed
    during its parity run (kill -9, the OOM killer) left it there for good, tens of MB with nothing saying whose. It
    is now '.NAME.PID.RANDOM.scratch', the next build of that engine removes a killed one's, and its own goes in any
    case."""
    import runtime.trt_runner
    from export import engine
    from moe_model import SmallViT

    left = tmp_path / ".m.engine.4194303.0badcafe.scratch"  # beyond the largest pid: a killed build's
    left.mkdir()
    (left / "m.engine").write_bytes(b"a killed build's engine")
    seen = []

    class Runner:  # TensorRT is not here: the engine's run stops at its start
        def __init__(self, path, check_manifest=True):
            seen.append(path)
            assert path.read_bytes() == b"engine bytes"

        def __enter__(self):
            raise RuntimeError("no GPU here")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(runtime.trt_runner, "TensorRTRunner", Runner)
    with pytest.raises(RuntimeError, match="no GPU here"):
        engine._parity(b"engine bytes", {"kind": "trt"}, tmp_path / "m.engine", SmallViT(), BuildOptions(parity_images=2))
    assert seen and seen[0].parent.parent == tmp_path
    assert seen[0].parent.name.startswith(f".m.engine.{os.getpid()}.") and seen[0].parent.name.endswith(".scratch")
    assert list(tmp_path.iterdir()) == []
