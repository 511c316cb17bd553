"""The TensorRT runner without TensorRT: its distinct errors, checked before anything is deserialized."""
import sys
import types

import pytest

from moe_base.errors import ArtifactError, ArtifactMismatchError, MissingBackendError, NoGPUError, PluginMissingError
from moe_base.manifest import base_manifest, write_artifact
from runtime.trt_runner import TensorRTRunner


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


def test_no_tensorrt(tmp_path, monkeypatch, fake_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as when it is not installed
    with pytest.raises(MissingBackendError, match="the TensorRT backend needs the Python package 'tensorrt'"):
        TensorRTRunner(engine_file(tmp_path)).activate()


def test_neither_tensorrt_nor_a_gpu_names_the_gpu_first(tmp_path, monkeypatch):
    """On a machine without both, --backend trt said to install TensorRT (gigabytes, and of no use there); build
    already said first that a GPU is needed. The runner says it as build does."""
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NoGPUError, match="needs an NVIDIA GPU.*TensorRT is not installed here either"):
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
                                                 r"topk_attention.trt_plugin.register_plugin\(\)"):
        TensorRTRunner(engine_file(tmp_path)).activate()
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(registered=True))
    with pytest.raises(ArtifactError, match="could not deserialize") as e:
        TensorRTRunner(engine_file(tmp_path)).activate()
    assert not isinstance(e.value, PluginMissingError)
    with pytest.raises(ArtifactError, match="could not deserialize"):
        TensorRTRunner(engine_file(tmp_path, plugin=None)).activate()


def test_parity_cli_trt_without_an_engine_says_how_to_build_one(capsys, random_weights, tmp_path, monkeypatch):
    from moe_denoise.cli import main

    monkeypatch.setenv("MOE_DENOISE_CACHE", str(tmp_path))
    assert main(["parity", "--backend", "trt", "--weights", str(random_weights)]) == 2
    err = capsys.readouterr().err
    assert "moe_denoiser.plugin.fp32.engine does not exist" in err and "moe-denoise build" in err


def test_calls_from_several_threads_each_get_their_own_output(monkeypatch):
    """One execution context holds the tensor addresses of one call: a thread that set its addresses while another
    thread's call was between setting its own and executing made that call run on the wrong tensors, and read back
    an output never written (no error). Calls now take turns. The engine is replaced by a context that computes
    output = input + 1 on the tensors at the addresses it was given, on the CPU."""
    import contextlib
    import threading
    import time

    import numpy as np
    import torch

    tensors: dict[int, torch.Tensor] = {}

    class SlowContext:  # a context whose calls take a while, as a real one's do: the race made near certain
        def __init__(self) -> None:
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape):
            pass

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr
            time.sleep(0.002)

        def execute_async_v3(self, stream_handle):
            tensors[self.addresses["output"]].copy_(tensors[self.addresses["input"]] + 1)
            return True

    class Stream:
        cuda_stream = 0

        def synchronize(self):
            pass

    def cpu_buffers(batch):
        x, y = torch.empty(batch, 3, 32, 32), torch.empty(batch, 3, 32, 32)
        tensors[x.data_ptr()], tensors[y.data_ptr()] = x, y
        return x, y

    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    runner = TensorRTRunner("unused.engine", check_manifest=False)
    runner.context, runner.stream, runner._torch, runner.profile_batch = SlowContext(), Stream(), torch, (1, 64)
    runner.input_name, runner.output_name = "input", "output"
    monkeypatch.setattr(runner, "_buffers", cpu_buffers)
    wrong: list[int] = []

    def work(i: int) -> None:
        x = np.full((2, 3, 32, 32), float(i), np.float32)
        for _ in range(5):
            if not np.array_equal(runner._infer_impl(x), x + 1):
                wrong.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
