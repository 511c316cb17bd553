"""The thin TensorRT layer, without TensorRT: version planning, profiles, cache keys, and the runner's
distinct errors (the TensorRT calls themselves are faked here and exercised for real in tests/gpu)."""
import sys
import types

import pytest

from export.engine import BuildOptions, cache_key, plan_build, plugin_hash
from runtime.errors import (ArtifactError, ArtifactMismatchError, InputError, MissingBackendError, NoGPUError,
                            PluginMissingError)
from runtime.manifest import base_manifest, write_artifact
from runtime.trt_runner import TensorRTRunner


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
    (dict(workspace_mib=1), "too small"),
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
    assert k not in keys and len(keys) == 6
    assert len(plugin_hash()) == 32 and plugin_hash() == plugin_hash()


def test_build_without_tensorrt_names_the_package(tmp_path, random_weights):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime_extensions", reason="the plugin graph's parity check at export needs "
                                                          "onnxruntime-extensions: pip install 'moe-denoise[onnx]'")
    if "tensorrt" in sys.modules or _importable("tensorrt"):
        pytest.skip("tensorrt is installed here")
    from export.engine import build_engine
    from export.onnx_export import ExportOptions
    from export.pipeline import export_onnx
    from moe_model.checkpoint import load_model

    onnx_path = tmp_path / "m.onnx"
    export_onnx(load_model(random_weights), onnx_path, ExportOptions(flavor="plugin"), weights_path=random_weights,
                parity_images=2, log=lambda s: None)
    with pytest.raises(MissingBackendError, match=r"building TensorRT engines needs the Python package 'tensorrt'"):
        build_engine(onnx_path, tmp_path / "m.engine", log=lambda s: None)
    assert not (tmp_path / "m.engine").exists()


def _importable(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


# --- the runner's errors -----------------------------------------------------------------------------------
def engine_file(tmp_path, data=b"\x01engine-bytes" * 10, **manifest):
    path = tmp_path / "m.engine"
    m = base_manifest("trt-engine", path, data)
    m.update({"precision": "fp32", "tensorrt": {"version": "10.9.0", "compute_capability": "9.0", "gpu": "H200"},
              "plugin": {"id": "moe_denoise::SparseTopKAttention", "name": "SparseTopKAttention",
                         "namespace": "moe_denoise", "version": "1"}})
    m.update(manifest)
    write_artifact(path, data, m)
    return path


class FakeTRT(types.ModuleType):
    """Just enough of the tensorrt module for the runner's checks; deserialization always fails."""

    __version__ = "10.9.0"

    def __init__(self, registered=False):
        super().__init__("tensorrt")
        self.registered = registered

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        outer = self

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, data):
                return None

        class Registry:
            def get_creator(self, name, version, namespace):
                return object() if outer.registered else None

        self.Logger, self.Runtime = Logger, Runtime
        self.get_plugin_registry = lambda: Registry()
        self.init_libnvinfer_plugins = lambda logger, ns: True


@pytest.fixture
def fake_gpu(monkeypatch):
    import torch

    props = types.SimpleNamespace(name="Fake H200", major=9, minor=0, total_memory=141 * 2**30)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i=0: props)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)


def test_missing_and_truncated_engine_files(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist.*moe-denoise build"):
        TensorRTRunner(tmp_path / "none.engine").activate()
    path = engine_file(tmp_path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ArtifactError, match="truncated"):
        TensorRTRunner(path).activate()


def test_no_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(MissingBackendError, match="the TensorRT backend needs the Python package 'tensorrt'"):
        TensorRTRunner(engine_file(tmp_path)).activate()


def test_no_gpu(tmp_path, monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NoGPUError, match="needs an NVIDIA GPU"):
        TensorRTRunner(engine_file(tmp_path)).activate()


def test_engine_for_other_tensorrt_or_gpu(tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    path = engine_file(tmp_path, tensorrt={"version": "10.12.0", "compute_capability": "9.0", "gpu": "H200"})
    with pytest.raises(ArtifactMismatchError, match="TensorRT version mismatch.*'10.12.0'.*'10.9.0'"):
        TensorRTRunner(path).activate()
    path = engine_file(tmp_path, tensorrt={"version": "10.9.0", "compute_capability": "8.7", "gpu": "Orin"})
    with pytest.raises(ArtifactMismatchError, match="compute capability mismatch.*'8.7'.*'9.0'.*built on Orin"):
        TensorRTRunner(path).activate()


def test_missing_plugin_vs_corrupt_engine(tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(registered=False))
    with pytest.raises(PluginMissingError, match=r"moe_denoise::SparseTopKAttention.*call "
                                                 r"export.plugins.trt_plugin.register_plugin\(\)"):
        TensorRTRunner(engine_file(tmp_path)).activate()
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(registered=True))
    with pytest.raises(ArtifactError, match="could not deserialize") as e:
        TensorRTRunner(engine_file(tmp_path)).activate()
    assert not isinstance(e.value, PluginMissingError)
    with pytest.raises(ArtifactError, match="could not deserialize"):
        TensorRTRunner(engine_file(tmp_path, plugin=None)).activate()


def test_parity_cli_trt_needs_an_engine(capsys, random_weights):
    from moe_denoise.cli import main

    assert main(["parity", "--backend", "trt", "--weights", str(random_weights)]) == 2
    assert "--artifact ENGINE" in capsys.readouterr().err


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


def test_polygraphy_api_used_by_the_build_exists():
    pytest.importorskip("polygraphy", reason="the engine build uses Polygraphy: pip install 'moe-denoise[trt]'")
    from polygraphy.backend.trt import (CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath,  # noqa: F401
                                        PostprocessConfig, Profile)
    from polygraphy.exception import PolygraphyException  # noqa: F401
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        profile = Profile().add("input", (1, 3, 32, 32), (64, 3, 32, 32), (1024, 3, 32, 32))
        CreateConfig(tf32=False, fp16=True, profiles=[profile], memory_pool_limits={})
