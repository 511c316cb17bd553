"""CUDA-graph capture and replay, and fp16 / bf16 execution, of the PyTorch runner on a GPU (skipped without one).

tools/gpu_session.sh runs these on a lent GPU. The reference is the fp32 model on the CPU, as in the benchmark's
parity gate; each half-precision result is judged by its entry in the one tolerance table.
"""
import numpy as np
import pytest

from moe_base.tolerances import get_tolerance
from runtime.cuda_graphs import check_input
from runtime.parity import compare, parity_inputs
from runtime.torch_runner import TorchRunner, tolerance_key
from weights import DEFAULT_WEIGHTS

pytestmark = pytest.mark.gpu
W = DEFAULT_WEIGHTS


@pytest.fixture(scope="module")
def reference():
    x = parity_inputs(16)
    with TorchRunner(W) as r:  # fp32, CPU: the benchmark's reference
        return x, r(x)


def judged(want, got, impl="masked", compile=False, precision="fp32"):
    report = compare(want, got, get_tolerance(tolerance_key(impl, compile), precision), impl, precision)
    assert report.passed, report.summary()
    return report


def test_graphs_replay_every_bucket_path_and_match_the_uncaptured_model(reference):
    x, want = reference
    big = check_input(5000)  # 4096 + 904 (padded to 1024)
    with TorchRunner(W, device="cuda") as plain, TorchRunner(W, device="cuda", cuda_graph=True) as g:
        for n in (1, 3, 16):  # 3 is padded to 4
            judged(plain(x[:n]), g(x[:n]))
        judged(plain(big), g(big))
        judged(want, g(x))
        d = g.describe()
        assert d["graphs_captured"] == [1, 4, 16, 1024, 4096] and d["graph_fallbacks"] == []
        assert [c["bucket"] for c in d["graph_checks"]] == [1, 4, 16, 1024, 4096]
        a, b = g(x[:4]), g(x[4:8])  # a replay reads the new input, not the captured one
        judged(plain(x[4:8]), b)
        assert not np.allclose(a, b)
        fn = g.device_callable(x[:8])  # the compute-only call of the benchmark: output stays on the GPU
        y = fn()
        assert y.is_cuda and tuple(y.shape) == (8, 3, 32, 32)
        judged(plain(x[:8]), y.cpu().numpy())


@pytest.mark.parametrize("impl,precision,half_mode", [
    ("masked", "fp16", "autocast"), ("masked", "bf16", "autocast"), ("masked", "bf16", "cast"),
    ("triton", "fp16", "autocast"), ("triton", "fp32", "autocast"),
])
def test_half_precision_and_triton_graphs_pass_parity_against_the_fp32_reference(reference, impl, precision,
                                                                                 half_mode):
    x, want = reference
    with TorchRunner(W, device="cuda", impl=impl, precision=precision, half_mode=half_mode, cuda_graph=True,
                     graph_buckets=[1, 16]) as r:
        judged(want, r(x), impl, precision=precision)
        judged(want[:1], r(x[:1]), impl, precision=precision)
        assert r.describe()["graphs_captured"] == [1, 16]
    with TorchRunner(W, device="cuda", impl=impl, precision=precision, half_mode=half_mode) as r:  # no graph
        judged(want, r(x), impl, precision=precision)


def test_compiled_half_precision_graph(reference):
    """torch.compile (inductor) captured per bucket, in bf16: compiles twice (batch 16, then a dynamic batch)."""
    x, want = reference
    with TorchRunner(W, device="cuda", compile=True, precision="bf16", cuda_graph=True, graph_buckets=[4, 16]) as r:
        judged(want, r(x), compile=True, precision="bf16")
        judged(want[:3], r(x[:3]), compile=True, precision="bf16")
        assert r.describe()["graphs_captured"] == [4, 16]
