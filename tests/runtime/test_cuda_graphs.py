"""The bucket layer of CUDA graphs (runtime.cuda_graphs) and TorchRunner's cuda_graph / precision options, on the CPU.

A bucket's "graph" is made by an injected capture function; ``eager_capture`` calls the model on the same static
buffers, so buckets, padding, trimming, chunking, the check before first use and its fallback all run here with
the CPU eager model. Real capture and replay are in test_cuda_graphs_gpu.py (marked gpu).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from moe_base.errors import InputError, MissingBackendError, NoGPUError, ParityError
from moe_base.tolerances import FP16, TOLERANCES, get_tolerance
from runtime.cuda_graphs import (
    BucketedGraphs,
    bucket_for,
    check_buckets,
    check_input,
    default_buckets,
    eager_capture,
    parity_check,
    plan,
)
from runtime.parity import compare, parity_inputs
from runtime.torch_runner import TorchRunner
from weights import DEFAULT_WEIGHTS


# --- buckets and plans ------------------------------------------------------------------------------------------
def test_default_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert default_buckets() == tuple(2**i for i in range(13))  # 1 .. 4096
    assert default_buckets(100) == (1, 2, 4, 8, 16, 32, 64, 100)  # the largest batch itself when not a power of 2
    assert default_buckets(32, min_batch=3) == (4, 8, 16, 32)  # e.g. a TensorRT profile that starts at 3
    assert default_buckets(5, min_batch=5) == (5,)
    with pytest.raises(InputError, match="no batch bucket fits"):
        default_buckets(4, min_batch=8)


@pytest.mark.parametrize("given,match", [
    ([], "non-empty list of positive integers"),
    ([0, 4], "non-empty list of positive integers"),
    ([1.5], "non-empty list of positive integers"),
    ([True], "non-empty list of positive integers"),
    ([1, 64], r"\[64\] outside the batch range \[1, 32\]"),
])
def test_bucket_lists_are_checked_and_name_the_option(given, match):
    with pytest.raises(InputError, match=f"graph_buckets.*{match}|{match}"):
        check_buckets(given, max_batch=32)


def test_bucket_choice_and_chunking():
    assert check_buckets([8, 1, 4, 8, np.int64(2)]) == (1, 2, 4, 8)
    b = (1, 2, 4, 8)
    assert [bucket_for(n, b) for n in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert plan(5, b) == [(0, 5, 8)]
    assert plan(8, b) == [(0, 8, 8)]
    assert plan(19, b) == [(0, 8, 8), (8, 16, 8), (16, 19, 4)]  # chunks of the largest, the rest in its bucket
    assert plan(5000, default_buckets()) == [(0, 4096, 4096), (4096, 5000, 1024)]
    with pytest.raises(InputError, match="larger than the largest bucket 8; chunk it"):
        bucket_for(9, b)
    with pytest.raises(InputError, match="at least one row"):
        plan(0, b)


# --- the bucket layer on a row-wise function ----------------------------------------------------------------------
def rowwise(x):
    """Each output row depends on its own input row only (as in the model)."""
    return x * 2 + x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)


def test_pad_replay_trim_and_chunk_give_the_unpadded_result():
    captured = []

    def capture(bucket):
        captured.append(bucket)
        return eager_capture(rowwise, torch.zeros(bucket, 3))

    g = BucketedGraphs(capture, (1, 2, 4))
    x = torch.rand(11, 3)
    for n in (1, 2, 3, 4, 11):  # 11 = 4 + 4 + 3 (padded to 4)
        assert torch.equal(g.run(x[:n]), rowwise(x[:n]))
    assert captured == [1, 2, 4]  # each bucket captured once, when first needed
    assert torch.equal(g.graphs[4].static_input[3], torch.zeros(3))  # the padding row of the last call was zeroed
    host = torch.empty(3, 3)
    assert g.run(x[:3], out=host) is host and torch.equal(host, rowwise(x[:3]))
    assert g.prepare([1, 9]) == [1, 4]
    with pytest.raises(InputError, match="not one of the buckets"):
        g.get(3)


def test_the_check_runs_once_per_bucket_before_first_use_and_a_failing_graph_is_never_used():
    def bad_capture(bucket):  # a "graph" that computes something else
        return eager_capture(lambda t: rowwise(t) + 1, torch.zeros(bucket, 3))

    make_input = lambda b: torch.rand(b, 3)
    check = parity_check(rowwise, make_input, get_tolerance("torch"), "test-model")
    x = torch.rand(3, 3)
    with pytest.raises(ParityError, match="CUDA graph of test-model for batch bucket 4 does not reproduce") as e:
        BucketedGraphs(bad_capture, (4,), check=check).run(x)
    assert not e.value.report.passed
    g = BucketedGraphs(bad_capture, (4,), check=check, fallback=lambda b: eager_capture(rowwise, torch.zeros(b, 3)))
    with pytest.warns(RuntimeWarning, match="bucket 4 runs uncaptured instead"):
        assert torch.equal(g.run(x), rowwise(x))
    assert g.describe()["graph_fallbacks"][0]["bucket"] == 4
    good = BucketedGraphs(lambda b: eager_capture(rowwise, torch.zeros(b, 3)), (4,), check=check)
    good.run(x)
    good.run(x)
    assert good.describe()["graph_checks"] == [{"bucket": 4, "max_abs": 0.0, "psnr": None, "passed": True}]


def test_check_batches_are_the_parity_images_repeated():
    c = check_input(40)
    assert c.shape == (40, 3, 32, 32) and c.dtype == np.float32
    np.testing.assert_array_equal(c[:16], parity_inputs(16))
    np.testing.assert_array_equal(c[16:32], c[:16])
    np.testing.assert_array_equal(check_input(3), parity_inputs(3))


# --- the PyTorch runner -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    return parity_inputs(13)


def test_runner_through_buckets_equals_the_plain_runner(random_weights, images):
    with TorchRunner(random_weights) as plain:
        expected = {n: plain(images[:n]) for n in (1, 3, 5, 13)}
    with TorchRunner(random_weights, cuda_graph=True, graph_capture=eager_capture, graph_buckets=[1, 2, 4, 8]) as r:
        for n, want in expected.items():  # 3 -> 4, 5 -> 8 (padded), 13 -> 8 + 5 (chunked, padded)
            np.testing.assert_array_equal(r(images[:n]), want)
        d = r.describe()
        assert d["cuda_graph"] and d["graph_buckets"] == [1, 2, 4, 8] and d["buckets_ready"] == [1, 4, 8]
        assert d["graphs_captured"] == []  # eager stand-ins, not CUDA graphs
        assert [c["bucket"] for c in d["graph_checks"]] == [1, 4, 8] and all(c["passed"] for c in d["graph_checks"])
        assert r.prepare_graphs([2]) == [2]
        out = torch.empty(5, 3, 32, 32)
        assert r.forward_on_device(torch.from_numpy(images[:5]), out=out) is out
        np.testing.assert_array_equal(out.numpy(), expected[5])


def test_a_runner_with_graphs_shared_by_threads_gives_each_thread_its_own_rows(random_weights, images):
    """The static buffers of a bucket are one per runner: a thread's rows copied in while another thread's replay ran
    came back as the other thread's output (117 of 120 calls wrong in a probe). Calls now take turns."""
    import threading
    import time

    def slow_capture(fn, static_input):  # a replay that takes a while, as a real one does: the race made certain
        c = eager_capture(fn, static_input)
        replay = c.replay

        def slow() -> None:
            time.sleep(0.005)
            replay()

        c.replay = slow
        return c

    batches = [images[i:i + 4] for i in range(0, 12, 4)]
    with TorchRunner(random_weights) as plain:
        expected = [plain(b) for b in batches]
    wrong: list[int] = []
    with TorchRunner(random_weights, cuda_graph=True, graph_capture=slow_capture, graph_buckets=[4]) as r:
        r.prepare_graphs()

        def work(i: int) -> None:
            for _ in range(5):
                if not np.array_equal(r(batches[i]), expected[i]):
                    wrong.append(i)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert wrong == []


def test_padding_rows_change_no_real_row_of_the_model(random_weights, images):
    """What makes padding safe: rows are independent (attention within an image, LayerNorm per token, convs)."""
    from moe_model.checkpoint import load_model

    model = load_model(random_weights).eval()
    x = torch.from_numpy(images[:5])
    junk = torch.rand(3, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_array_equal(model(torch.cat([x, junk]))[:5].numpy(), model(x).numpy())


def test_a_graph_that_fails_its_check_raises_or_falls_back_as_asked(random_weights, images):
    def broken(fn, static_input):  # e.g. a capture that misses an input copy: outputs are off
        return eager_capture(lambda t: fn(t) * 0.5, static_input)

    with TorchRunner(random_weights) as plain:
        want = plain(images[:3])
    with TorchRunner(random_weights, cuda_graph=True, graph_capture=broken, graph_buckets=[4]) as r:
        with pytest.raises(ParityError, match="bucket 4 does not reproduce the uncaptured model"):
            r(images[:3])
    with TorchRunner(random_weights, cuda_graph=True, graph_capture=broken, graph_buckets=[4],
                     graph_fallback=True) as r:
        with pytest.warns(RuntimeWarning, match="runs uncaptured instead"):
            np.testing.assert_array_equal(r(images[:3]), want)
        assert r.describe()["graph_fallbacks"][0]["bucket"] == 4


def test_options_are_checked_and_a_missing_gpu_is_named(random_weights):
    with pytest.raises(InputError, match="cuda_graph=True records GPU work and needs device='cuda'; got device='cpu'"):
        TorchRunner(random_weights, cuda_graph=True)
    with pytest.raises(InputError, match="precision 'fp8' is not one of fp32, fp16, bf16"):
        TorchRunner(random_weights, precision="fp8")
    with pytest.raises(InputError, match="half_mode 'half' is not one of autocast, cast"):
        TorchRunner(random_weights, precision="fp16", half_mode="half")
    with pytest.raises(InputError, match="graph_buckets"):
        TorchRunner(random_weights, device="cuda", cuda_graph=True, graph_buckets=[0])
    with pytest.raises(InputError, match="outside the batch range"):
        TorchRunner(random_weights, device="cuda", cuda_graph=True, graph_buckets=[64], max_batch=32)
    with TorchRunner(random_weights) as r, pytest.raises(InputError, match="has no CUDA graphs"):
        r.prepare_graphs()
    if torch.cuda.is_available():
        return  # the rest is about a machine without a GPU
    for kw, named in ((dict(cuda_graph=True), "with CUDA graphs"),
                      (dict(precision="bf16", cuda_graph=True), "with CUDA graphs, bf16 precision"),
                      (dict(precision="fp16"), "with fp16 precision")):
        with pytest.raises(NoGPUError, match=f"device 'cuda' {named} was asked for but torch .* sees no CUDA GPU"):
            TorchRunner(random_weights, device="cuda", **kw).activate()
    assert issubclass(NoGPUError, MissingBackendError)  # callers catching a missing backend still do


@pytest.mark.parametrize("precision,half_mode", [("bf16", "autocast"), ("bf16", "cast"), ("fp16", "autocast")])
def test_half_precision_is_fp32_at_the_interface_and_within_its_tolerance(precision, half_mode):
    """On the CPU (slowly, but the same code path as CUDA): the shipped weights, judged by the tolerance table."""
    from moe_model.checkpoint import load_model

    x = parity_inputs(8)
    model = load_model(DEFAULT_WEIGHTS)
    with TorchRunner(model=model) as r:
        ref = r(x)
    with TorchRunner(model=model, precision=precision, half_mode=half_mode) as r:
        out = r(x)
        assert r.describe()["half_mode"] == half_mode and r.precision == precision
    assert out.dtype == np.float32 and out.shape == x.shape
    report = compare(ref, out, get_tolerance("torch", precision), "torch", precision)
    assert report.passed, report.summary()
    assert report.max_abs > 0  # really computed in half precision
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not cast


def test_tolerance_entries_for_half_precision():
    for key in ("torch", "torch-seed", "torch-compile", "torch-triton"):
        assert get_tolerance(key, "fp16") == FP16
        bf16 = get_tolerance(key, "bf16")
        assert bf16.min_psnr == FP16.min_psnr and bf16.atol >= FP16.atol and bf16.max_abs <= FP16.max_abs
    assert ("trt", "bf16") not in TOLERANCES  # only what a backend can run


def test_triton_impl_registers_itself(random_weights):
    """impl='triton' imports topk_attention.torch_op itself, the model's experts then run through it, and (off CUDA,
    where the op runs the reference) the output is the plain runner's.

    In a fresh process, so that nothing has registered "triton" before the runner does (in the suite another test
    may have imported topk_attention.torch_op already). Equal outputs alone would not show that the impl was used,
    so the calls through the registered impl are counted."""
    code = (
        "import json, sys\n"
        "import numpy as np\n"
        "from moe_model import attention\n"
        "from runtime.parity import parity_inputs\n"
        "from runtime.torch_runner import TorchRunner\n"
        "x = parity_inputs(2)\n"
        "before = 'triton' in attention.available_impls()\n"
        "calls = []\n"
        "with TorchRunner(sys.argv[1]) as plain, TorchRunner(sys.argv[1], impl='triton') as r:\n"
        "    after = 'triton' in attention.available_impls()\n"
        "    op = attention._EXTRA_IMPLS.get('triton')\n"
        "    if op is not None:\n"
        "        attention._EXTRA_IMPLS['triton'] = lambda *a: calls.append(1) or op(*a)\n"
        "    diff = float(np.abs(r(x) - plain(x)).max())\n"
        "    impls = sorted({e.impl for b in r.model.blocks for e in b.attn.experts})\n"
        "print(json.dumps({'before': before, 'after': after, 'impls': impls, 'calls': len(calls), 'diff': diff}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(random_weights)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["before"] is False and seen["after"] is True
    assert seen["impls"] == ["triton"]
    assert seen["calls"] > 0
    assert seen["diff"] <= 1e-6
