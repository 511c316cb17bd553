"""TensorRTRunner's CUDA graphs go through the shared bucket layer (runtime.cuda_graphs), checked without TensorRT.

On a GPU, a stand-in ``tensorrt`` module deserializes an "engine" whose execution context does what an engine
does with the addresses and stream it is given: it enqueues ``output = 0.5 * input`` on that stream, reading and
writing the device memory at those addresses. The runner's capture, bucket choice, padding, trimming, its check
before first use and the replay (no further enqueue from Python) are then the real ones.
"""
import sys
import types

import numpy as np
import pytest

from moe_base.errors import InputError
from runtime.parity import parity_inputs
from runtime.trt_runner import TensorRTRunner


class _DeviceArray:
    """A float32 device buffer at ``ptr``, seen by torch through the CUDA array interface (no copy)."""

    def __init__(self, ptr, shape):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (int(ptr), False),
                                         "version": 2, "strides": None}


class HalvingContext:
    """Tensors over the addresses and stream objects are made once per address / handle, on the first (uncaptured)
    enqueue that uses them, so nothing but the kernel launch happens while a graph is being captured."""

    def __init__(self):
        self.shape, self.addresses, self.enqueues = None, {}, 0
        self._views, self._streams = {}, {}

    def _view(self, ptr):
        import torch

        key = (ptr, self.shape)
        if key not in self._views:
            self._views[key] = torch.as_tensor(_DeviceArray(ptr, self.shape), device="cuda")
        return self._views[key]

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def execute_async_v3(self, stream_handle):
        import torch

        x, y = self._view(self.addresses["input"]), self._view(self.addresses["output"])
        if stream_handle not in self._streams:
            self._streams[stream_handle] = torch.cuda.ExternalStream(stream_handle)
        with torch.cuda.stream(self._streams[stream_handle]):
            torch.mul(x, 0.5, out=y)
        self.enqueues += 1
        return True


def fake_tensorrt(profile):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.9.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class TensorIOMode:
        INPUT, OUTPUT = "in", "out"

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("input", "output")[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_profile_shape(self, name, index):
            return tuple((b, 3, 32, 32) for b in profile)

        def create_execution_context(self):
            return HalvingContext()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine()

    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    trt.init_libnvinfer_plugins = lambda logger, namespace: True
    return trt


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "halving.engine"
    path.write_bytes(b"stand-in")
    return path


def test_bucket_options_are_checked_before_anything_loads(engine):
    with pytest.raises(InputError, match="graph_buckets must be a non-empty list of positive integers"):
        TensorRTRunner(engine, cuda_graph=True, graph_buckets=[0, 8])


@pytest.mark.gpu
def test_trt_graphs_pad_trim_chunk_and_replay(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(profile=(1, 8, 32)))
    x = parity_inputs(40)
    with TensorRTRunner(engine, check_manifest=False, cuda_graph=True) as r:
        np.testing.assert_allclose(r(x), x * 0.5, atol=1e-7)  # 40 > the profile's 32: 32 + 8
        np.testing.assert_allclose(r(x[:3]), x[:3] * 0.5, atol=1e-7)  # bucket 4, padded
        d = r.describe()
        assert d["graph_buckets"] == [1, 2, 4, 8, 16, 32] and d["graphs_captured"] == [4, 8, 32]
        assert all(c["passed"] for c in d["graph_checks"])
        enqueues = r.context.enqueues
        np.testing.assert_allclose(r(x[5:8]), x[5:8] * 0.5, atol=1e-7)  # bucket 4 again: a replay
        assert r.context.enqueues == enqueues  # no enqueue from Python: the graph ran
    with pytest.raises(InputError, match=r"\[64\] outside the batch range \[1, 32\]"):
        TensorRTRunner(engine, check_manifest=False, cuda_graph=True, graph_buckets=[8, 64]).activate()


@pytest.mark.gpu
def test_trt_graph_buckets_start_at_the_profile_minimum(engine, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(profile=(3, 8, 16)))
    x = parity_inputs(5)
    with TensorRTRunner(engine, check_manifest=False, cuda_graph=True) as r:
        assert r.describe()["graph_buckets"] == [4, 8, 16]
        np.testing.assert_allclose(r(x[:3]), x[:3] * 0.5, atol=1e-7)
        with pytest.raises(InputError, match="below the engine's profile minimum 3"):
            r(x[:2])
