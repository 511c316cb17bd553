"""The seed's published checkpoint loads strictly and reproduces the seed's own outputs."""
import numpy as np
import torch

from moe_model import SmallViT


def test_seed_checkpoint_reproduces_reference(seed_ckpt, seed_outputs):
    sd = torch.load(seed_ckpt, map_location="cpu", weights_only=True)
    model = SmallViT("seed").eval()
    model.load_state_dict(sd, strict=True)
    ref = np.load(seed_outputs)
    for impl in ("masked", "gather", "seed"):
        model.set_attention_impl(impl)
        with torch.no_grad():
            out, routing = model(torch.from_numpy(ref["input"]), return_routing=True)
        err = np.abs(out.numpy() - ref["output"])
        assert err.max() <= 1e-4 and np.median(err) <= 1e-6, (impl, err.max(), np.median(err))
        for b in range(2):
            np.testing.assert_allclose(routing[b].numpy(), ref[f"routing_block{b}"], atol=1e-5)
