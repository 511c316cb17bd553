"""SmallViT: shapes, gradients, parameter count, routing, load-balance loss, presets."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from moe_model import ModelConfig, SmallViT, count_parameters, get_preset
from moe_model.layers import AdaptiveAttentionMoE, Block, SparseAttentionExpert, TokenRouter
from moe_model.losses import load_balance_loss, total_loss


def test_seed_preset_architecture():
    m = SmallViT("seed")
    assert count_parameters(m) == 599_689
    c = m.config
    assert (c.patch_size, c.dim, c.depth, c.num_heads, c.expert_topk, c.num_tokens) == (4, 128, 2, 4, (32, 64, 128), 64)
    assert count_parameters(SmallViT("residual")) == 599_689  # same budget, residual learning


def test_layer_shapes():
    x = torch.randn(2, 64, 128)
    assert TokenRouter(128, 64, 3)(x).shape == (2, 64, 3)
    assert SparseAttentionExpert(128, 4, 32)(x).shape == (2, 64, 128)
    out, probs = AdaptiveAttentionMoE(128, 4, (32, 64, 128), 64)(x)
    assert out.shape == (2, 64, 128) and probs.shape == (2, 64, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 64))
    y, p = Block(128, 4, (32, 64, 128), 64, 256)(x)
    assert y.shape == x.shape and p.shape == (2, 64, 3)


@pytest.mark.parametrize("preset", ["seed", "residual"])
def test_forward_range_routing_and_gradients(preset):
    torch.manual_seed(0)
    m = SmallViT(preset)
    x = torch.rand(3, 3, 32, 32)
    out, routing = m(x, return_routing=True)
    assert out.shape == x.shape and float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    assert len(routing) == 2 and all(r.shape == (3, 64, 3) for r in routing)
    assert all(torch.equal(a, b.detach()) for a, b in zip(m.last_routing, routing))  # kept for analysis
    loss, mse, aux = total_loss(out, x, routing)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without finite gradients: {missing}"
    assert m.blocks[0].attn.router.routing_net[0].weight.grad.abs().sum() > 0  # the aux loss reaches the router


def test_positions_are_the_table_at_the_trained_size_and_resized_beyond_it():
    """A larger view (tools.photo_finetune --view) resizes the learned positions; the trained size uses the table."""
    torch.manual_seed(0)
    m = SmallViT("residual_refine_wide").eval()
    assert m.positions(8, 8) is m.pos_embed
    wide = m.positions(16, 12)
    assert wide.shape == (1, 16 * 12, 128)
    with torch.no_grad():  # resizing keeps a constant table constant
        m.pos_embed.fill_(0.5)
        assert torch.allclose(m.positions(16, 16), torch.full((1, 256, 128), 0.5))
        x = torch.rand(2, 3, 64, 48)
        out, routing = m(x, return_routing=True)
    assert out.shape == x.shape and all(r.shape == (2, 16 * 12, 3) for r in routing)
    assert count_parameters(m) == count_parameters(SmallViT("residual_refine_wide"))  # no new parameters


def test_load_balance_loss_known_values():
    uniform = torch.full((2, 5, 3), 1 / 3)
    assert float(load_balance_loss(uniform)) == pytest.approx(0.0, abs=1e-7)
    # q = (0.5, 0.25, 0.25) everywhere: KL(u||q)/E = (1/3) sum_e (1/3) log((1/3)/q_e) / 3
    q = torch.tensor([0.5, 0.25, 0.25])
    probs = q.expand(4, 7, 3)
    expected = sum((1 / 3) * math.log((1 / 3) / qe) for qe in q.tolist()) / 3
    assert float(load_balance_loss(probs)) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(load_balance_loss(probs), F.kl_div(q.log(), torch.full((3,), 1 / 3),
                                                                  reduction="batchmean"))


def test_config_round_trip_and_errors():
    c = get_preset("residual")
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig(dim=130)
    with pytest.raises(ValueError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"dimension": 3})


@pytest.mark.parametrize("sidecar, message", [
    ([1], "holds a JSON list, not the object"),  # AttributeError: 'list' object has no attribute 'get'
    ({"sha256": 5}, "records sha256 5, not a hash (hex text): it was edited or damaged. Restore it, or pass "
                    "--skip-weights-check (verify_weights=False for a runner, verify=False for load_model, in Python)"),
    # TypeError: 'int' object is not subscriptable
    ({"config": "abc"}, "is a JSON object of its fields, got str"),  # "unknown ModelConfig fields ['a', 'b', 'c']"
    ({"config": {"dim": "x"}}, "invalid ModelConfig: dim 'x'"),  # TypeError: not all arguments converted
    ({"config": {"patch_size": 0}}, "invalid ModelConfig: patch_size 0"),  # ZeroDivisionError
    ({"config": {"residual": "no"}}, "invalid ModelConfig: residual 'no'"),  # taken as true
])
def test_a_damaged_sidecar_is_refused_in_words(tmp_path, random_weights, sidecar, message):
    """A sidecar that is valid JSON but not what 'train' writes ended in tracebacks of every kind."""
    import json
    import shutil

    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import load_model

    weights = tmp_path / "w.safetensors"
    shutil.copy(random_weights, weights)
    (tmp_path / "w.json").write_text(json.dumps(sidecar))
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(weights)
    if isinstance(sidecar, dict) and "config" in sidecar:  # with --preset too, the file named
        with pytest.raises(CheckpointError, match=re.escape("the config in " + str(tmp_path / "w.json"))):
            load_model(weights, preset="seed")


def test_reliability_a_sidecar_config_far_larger_than_its_tensors(tmp_path, random_weights):
    """A weights sidecar whose config is dim 40000, ffn_hidden 40000, depth 20 (hostile or damaged; its sha256 still
    the tensors'): the model was built from it before any tensor was compared, 6.5 GB of memory, then a RuntimeError
    traceback (exit 1) => refused in words (the tensors do not fit, the presets they fit named), having built nothing
    but a shape-only (meta) model"""
    import json
    import shutil

    from moe_base.errors import CheckpointError
    from moe_model import checkpoint
    from moe_model.checkpoint import load_model

    weights = tmp_path / "w.safetensors"
    shutil.copy(random_weights, weights)
    side = json.loads((random_weights.parent / "random.json").read_text())
    side["config"].update(dim=40000, ffn_hidden=40000, depth=20)
    (tmp_path / "w.json").write_text(json.dumps(side))
    built = []

    class Watched(SmallViT):
        def __init__(self, config, **kwargs):
            built.append((config.dim, torch.empty(0).device.type))  # the device models are being made on
            super().__init__(config, **kwargs)

    real = checkpoint.SmallViT
    checkpoint.SmallViT = Watched
    try:
        with pytest.raises(CheckpointError, match=r"w\.safetensors do not fit the 'seed' architecture \(.*their "
                                                  r"tensors fit the presets seed, residual"):
            load_model(weights)
    finally:
        checkpoint.SmallViT = real
    assert [device for dim, device in built if dim == 40000] == ["meta"]  # (the presets named are built to compare)


def test_a_model_is_refused_when_made_with_an_unknown_impl_or_config():
    """SmallViT(impl='nope') was made and failed at its first forward; SmallViT(123) ended in an AttributeError."""
    from moe_base.errors import InputError

    with pytest.raises(InputError, match=r"unknown attention impl 'nope'; expected one of \('masked', 'gather'"):
        SmallViT("seed", impl="nope")
    with pytest.raises(InputError, match=r"config is a preset name \(.*seed.*\) or a ModelConfig; got int 123"):
        SmallViT(123)


def test_masked_and_gather_models_agree():
    torch.manual_seed(1)
    m = SmallViT("seed").eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        a = m(x)
        b = m.set_attention_impl("gather")(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown attention impl"):
        m.set_attention_impl("fast")


def test_refine_preset_budget_and_identity_start(tmp_path):
    from moe_model.checkpoint import save_weights
    from moe_model.train import warm_start

    torch.manual_seed(0)
    m = SmallViT("residual_refine").eval()
    assert count_parameters(m) <= 650_000
    base = SmallViT("residual").eval()
    x = torch.rand(2, 3, 32, 32)
    save_weights(base, tmp_path / "base.safetensors")
    warm_start(m, str(tmp_path / "base.safetensors"), lambda s: None)
    with torch.no_grad():
        torch.testing.assert_close(m(x), base(x))  # the head's last layer starts at zero
        torch.nn.init.normal_(m.refine[-1].weight, std=0.1)
        assert not torch.allclose(m(x), base(x))
    save_weights(m, tmp_path / "refine.safetensors")
    with pytest.raises(Exception, match="made for the 'residual_refine' architecture .* Pass --preset residual_refine"):
        warm_start(base, str(tmp_path / "refine.safetensors"), lambda s: None)  # a larger model into a smaller one
    (tmp_path / "refine.json").unlink()  # without the JSON that names it: its tensors do not fit
    with pytest.raises(Exception, match="do not fit"):
        warm_start(base, str(tmp_path / "refine.safetensors"), lambda s: None)


def test_warm_start_refuses_weights_of_another_architecture_with_the_same_tensors(tmp_path):
    """'seed' and 'residual' share every tensor shape but not the function: --init-from a residual run into the
    default preset (seed) was taken without a word, the model starting from weights that computed something else."""
    from moe_base.errors import CheckpointError
    from moe_model.checkpoint import save_weights
    from moe_model.train import warm_start

    torch.manual_seed(0)
    save_weights(SmallViT("residual"), tmp_path / "residual.safetensors")
    with pytest.raises(CheckpointError, match="made for the 'residual' architecture.*--preset residual"):
        warm_start(SmallViT("seed"), str(tmp_path / "residual.safetensors"), lambda s: None)
    warm_start(SmallViT("residual"), str(tmp_path / "residual.safetensors"), lambda s: None)  # its own: taken
    warm_start(SmallViT("residual_refine"), str(tmp_path / "residual.safetensors"), lambda s: None)  # grown: taken


def test_psnr_loss_has_the_gradient_of_mean_log_mse():
    from moe_model.losses import reconstruction_loss

    torch.manual_seed(0)
    clean = torch.rand(5, 3, 8, 8)
    out1 = (clean + torch.randn_like(clean) * torch.tensor([0.01, 0.05, 0.1, 0.2, 0.3])[:, None, None, None])
    out1.requires_grad_(True)
    reconstruction_loss(out1, clean, "psnr").backward()
    out2 = out1.detach().clone().requires_grad_(True)
    ((out2 - clean) ** 2).flatten(1).mean(1).log().mean().backward()
    g1, g2 = out1.grad.flatten(), out2.grad.flatten()
    cos = torch.dot(g1, g2) / (g1.norm() * g2.norm())
    assert cos > 0.9999  # same direction, MSE-like scale
    out3 = out1.detach().clone().requires_grad_(True)
    reconstruction_loss(out3, clean, "mse").backward()
    g3 = out3.grad.flatten()
    assert torch.dot(g3, g2) / (g3.norm() * g2.norm()) < 0.9  # plain MSE weights the noisiest image most
    with pytest.raises(ValueError, match="unknown loss"):
        reconstruction_loss(out1, clean, "l1")


def _grow(small_preset: str, big_preset: str, tmp_path) -> tuple[SmallViT, SmallViT, str]:
    """A small model with a trained-looking head, saved, and a bigger one warm-started from it (+ the log line)."""
    from moe_model.checkpoint import save_weights
    from moe_model.train import warm_start

    torch.manual_seed(0)
    small = SmallViT(small_preset).eval()
    torch.nn.init.normal_(small.refine[-1].weight, std=0.05)
    path = tmp_path / "small.safetensors"
    save_weights(small, path)
    big = SmallViT(big_preset).eval()
    assert count_parameters(big) <= 650_000
    log = []
    warm_start(big, str(path), log.append)
    return small, big, log[0]


def test_growing_to_refine_features_keeps_the_function(tmp_path):
    small, big, log = _grow("residual_refine", "residual_refine_feat", tmp_path)
    assert "grown: patch_unembed.bias, patch_unembed.weight, refine.0.weight" in log
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x))
        assert big.refine[0].weight[:, 6:].abs().sum() == 0  # new inputs start silent ...
        assert big.patch_unembed.weight[:, 3:].abs().sum() > 0  # ... fed by freshly initialised features


def test_widening_the_head_keeps_the_function_and_the_new_channels_live(tmp_path):
    """Growing a hidden layer in both dimensions: old outputs ignore the new inputs (same function), new outputs
    keep fresh weights (so they get gradients at once instead of waiting on a zero layer behind them)."""
    small, big, log = _grow("residual_refine_feat", "residual_refine_wide", tmp_path)
    assert "refine.2.weight" in log and "refine.4.weight" in log
    x = torch.rand(3, 3, 32, 32)
    old = small.config.refine_channels
    with torch.no_grad():
        torch.testing.assert_close(big(x), small(x))
        assert big.refine[2].weight[:old, old:].abs().sum() == 0  # old channels do not read new ones
        assert big.refine[2].weight[old:].abs().sum() > 0  # new channels are live
        assert big.refine[4].weight[:, old:].abs().sum() == 0  # and silent at the output until trained
    big.train()
    big(x).sum().backward()
    assert big.refine[4].weight.grad[:, old:].abs().sum() > 0  # the silent weights learn from the first step


def test_the_grid_labels_an_image_equal_to_the_clean_one_as_identical():
    """visualize --sigma 0 labelled the noisy column '200.00 dB' (the clamp that keeps log10 finite)"""
    from moe_model.metrics import psnr_per_image
    from moe_model.visualize import psnr_label

    clean = torch.rand(2, 3, 8, 8)
    other = clean.clone()
    other[1, 0, 0, 0] += 0.1
    p = psnr_per_image(other, clean)
    assert psnr_label(other[0], clean[0], p[0]) == "identical"
    assert psnr_label(other[1], clean[1], p[1]) == f"{float(p[1]):.2f} dB" and float(p[1]) < 100
