"""The sparse top-k attention operator: masked == gather, ties, dense path, registry."""
import math

import pytest
import torch

from moe_model.attention import available_impls, dense_attention, register_impl, sparse_topk_attention


def rand_qkv(b=2, h=3, n=20, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g, dtype=torch.float64) for _ in range(3)]


def explicit_reference(q, k, v, topk):
    """Loop-level definition from DESIGN.md section 3, one row at a time."""
    out = torch.empty_like(q)
    scale = 1 / math.sqrt(q.shape[-1])
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in q.shape[:3]]):
        b, h, i = idx.tolist()
        s = (k[b, h] @ q[b, h, i]) * scale  # (N,)
        t = torch.sort(s, descending=True).values[topk - 1]
        keep = s >= t
        p = torch.softmax(torch.where(keep, s, torch.tensor(-math.inf, dtype=s.dtype)), dim=0)
        out[b, h, i] = p @ v[b, h]
    return out


@pytest.mark.parametrize("topk", [1, 5, 19])
def test_masked_matches_explicit_definition(topk):
    q, k, v = rand_qkv(b=1, h=2, n=20)
    torch.testing.assert_close(sparse_topk_attention(q, k, v, topk), explicit_reference(q, k, v, topk))


@pytest.mark.parametrize("n,topk", [(64, 32), (20, 7), (33, 1)])
def test_masked_equals_gather_on_random_inputs(n, topk):
    q, k, v = rand_qkv(n=n, seed=n)
    a = sparse_topk_attention(q, k, v, topk, impl="masked")
    b = sparse_topk_attention(q, k, v, topk, impl="gather")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_tie_at_threshold_keeps_every_tied_key():
    # one query, 4 keys with scores (before scale) 3, 2, 2, 0 and k = 2: keys 1 and 2 tie at the threshold.
    q = torch.tensor([[[[1.0, 0.0]]]], dtype=torch.float64)  # (1, 1, 1, 2)
    k = torch.tensor([[[[3.0, 0.0], [2.0, 5.0], [2.0, -5.0], [0.0, 1.0]]]], dtype=torch.float64)
    v = torch.tensor([[[[1.0], [10.0], [100.0], [1000.0]]]], dtype=torch.float64)
    q = q.expand(1, 1, 4, 2).contiguous()  # N = 4 queries (all the same)
    s = torch.tensor([3.0, 2.0, 2.0]) / math.sqrt(2)
    p = torch.softmax(s, 0)
    expected = p[0] * 1 + p[1] * 10 + p[2] * 100  # both tied keys kept
    masked = sparse_topk_attention(q, k, v, 2, impl="masked")
    torch.testing.assert_close(masked[0, 0, :, 0], expected.double().expand(4))
    gather = sparse_topk_attention(q, k, v, 2, impl="gather")  # keeps exactly 2 keys: differs on the tie
    assert not torch.allclose(gather, masked)


@pytest.mark.parametrize("impl", ["masked", "gather"])
@pytest.mark.parametrize("topk", [20, 64, 128])
def test_dense_path_when_k_at_least_n(impl, topk):
    q, k, v = rand_qkv(n=20)
    dense = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
    torch.testing.assert_close(sparse_topk_attention(q, k, v, topk, impl=impl), dense)
    torch.testing.assert_close(dense_attention(q, k, v), dense)


def test_sparse_differs_from_dense_when_k_below_n():
    q, k, v = rand_qkv(n=20)
    assert not torch.allclose(sparse_topk_attention(q, k, v, 5), dense_attention(q, k, v))


def test_unknown_impl_and_registry():
    q, k, v = rand_qkv(n=8)
    with pytest.raises(ValueError, match="unknown sparse attention impl 'nope'"):
        sparse_topk_attention(q, k, v, 3, impl="nope")
    with pytest.raises(ValueError, match="built-in"):
        register_impl("masked", lambda *a: None)
    calls = []
    register_impl("test-impl", lambda q, k, v, topk, scale: calls.append((topk, scale)) or torch.zeros_like(q))
    assert "test-impl" in available_impls()
    out = sparse_topk_attention(q, k, v, 3, impl="test-impl")
    assert calls == [(3, 1 / math.sqrt(8))] and float(out.abs().sum()) == 0.0
    sparse_topk_attention(q, k, v, 8, impl="test-impl")  # k >= N: dense path, the plug-in is not called
    assert len(calls) == 1


@pytest.mark.parametrize("topk", [5, 20, 64])
def test_seed_code_path_gathers_even_when_k_reaches_n(topk, monkeypatch):
    """impl='seed' is the seed's exact path: top-k + gather for every expert (k clipped to N), never the dense
    shortcut; mathematically it still equals the operator."""
    q, k, v = rand_qkv(n=20)
    called = []
    monkeypatch.setattr("moe_model.attention.dense_attention", lambda *a, **kw: called.append(1))
    out = sparse_topk_attention(q, k, v, topk, impl="seed")
    assert not called
    ref = sparse_topk_attention(q, k, v, topk, impl="gather") if topk < 20 else \
        torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("impl", ["masked", "gather", "seed"])
@pytest.mark.parametrize("topk, found", [(0, "got 0"), (-1, "got -1"), (3.5, "got 3.5"), (True, "got True"),
                                         (None, "got None")])
def test_a_topk_that_is_not_a_count_of_keys_is_refused_by_name(impl, topk, found):
    """topk 0 was an IndexError from amin (masked) or all zeros (gather, seed), -1 torch's 'selected index k out of
    range', 3.5 a float topk passed on: each is now an InputError naming topk."""
    from moe_base.errors import InputError

    q, k, v = rand_qkv()
    with pytest.raises(InputError, match=rf"topk \(the keys each query keeps\) must be a whole number >= 1; {found}"):
        sparse_topk_attention(q, k, v, topk, impl=impl)


def test_a_head_size_of_zero_or_an_infinite_scale_is_refused():
    from moe_base.errors import InputError

    q = torch.zeros(1, 2, 8, 0)
    with pytest.raises(InputError, match=r"head size d >= 1; got q of shape \(1, 2, 8, 0\)"):  # ZeroDivisionError
        sparse_topk_attention(q, q, q, 4)
    with pytest.raises(InputError, match="head size"):
        dense_attention(q, q, q)
    q, k, v = rand_qkv()
    with pytest.raises(InputError, match="scale must be a finite number"):
        sparse_topk_attention(q, k, v, 4, scale=float("nan"))
    assert sparse_topk_attention(q, k, v, 4, scale=0.5).shape == q.shape  # a finite scale still runs
