"""The seed's published checkpoint loads strictly and reproduces the seed's own outputs."""
import numpy as np
import torch

from moe_model import SmallViT

NOISY_TEST_IMAGES = 12  # seed_outputs.npz: 12 noisy CIFAR-10 test images, then 4 uniform-random images


def flipped_patches(err: np.ndarray, patch: int, atol: float) -> set[tuple[int, int, int]]:
    """(image, patch row, patch column) of every value beyond ``atol``."""
    n, _, y, x = np.nonzero(err > atol)
    return set(zip(n.tolist(), (y // patch).tolist(), (x // patch).tolist()))


def test_seed_checkpoint_reproduces_reference(seed_ckpt, seed_outputs):
    """To 1e-4 on the noisy test images (ordinary inputs). On the uniform-random images a near-tie at the top-k
    threshold may flip one query's selected key on another CPU's arithmetic (DESIGN.md: "can move a single pixel by
    ~1e-4"): what that moves is one patch, the query's token (seen on an AVX-512 Xeon: 45 values of one 4x4 patch of
    random image 12, up to 2.6e-4, in all three implementations alike); at most two such patches, each under 1e-3."""
    sd = torch.load(seed_ckpt, map_location="cpu", weights_only=True)
    model = SmallViT("seed").eval()
    model.load_state_dict(sd, strict=True)
    ref = np.load(seed_outputs)
    patch = model.config.patch_size
    for impl in ("masked", "gather", "seed"):
        model.set_attention_impl(impl)
        with torch.no_grad():
            out, routing = model(torch.from_numpy(ref["input"]), return_routing=True)
        err = np.abs(out.numpy() - ref["output"])
        assert err[:NOISY_TEST_IMAGES].max() <= 1e-4 and np.median(err) <= 1e-6, (impl, err.max(), np.median(err))
        flipped = flipped_patches(err, patch, 1e-4)
        assert len(flipped) <= 2 and err.max() <= 1e-3, (impl, sorted(flipped), err.max())
        outside = err.copy()
        for n, py, px in flipped:  # everything outside the flipped patches reproduces to 1e-5
            outside[n, :, py * patch:(py + 1) * patch, px * patch:(px + 1) * patch] = 0
        assert outside.max() <= 1e-5, (impl, outside.max())
        for b in range(2):
            np.testing.assert_allclose(routing[b].numpy(), ref[f"routing_block{b}"], atol=1e-5)
