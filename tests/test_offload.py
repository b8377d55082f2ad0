"""framepack_native.offload: offloaded runs give the same frames; blocks are swapped in one at a time."""
import torch

from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.offload import streamed_blocks


def test_offload_gives_the_same_video():
    kw = dict(height=32, width=48, num_frames=9, latent_window_size=2, num_inference_steps=2)
    plain = demo_pipeline(seed=3)(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)
    pipe = demo_pipeline(seed=3)
    pipe.offload = True
    offloaded = pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain, offloaded)


def test_streamed_blocks_swap_each_block_in_and_out():
    model = demo_pipeline(seed=1).transformer
    blocks = list(model.double_blocks) + list(model.single_blocks)
    seen = []
    for i, b in enumerate(blocks):
        b.register_forward_pre_hook(lambda m, a, i=i: seen.append(i))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with streamed_blocks(model, "cpu"):
        hooks = sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks)
        B, C, T, H, W = 1, 4, 2, 4, 6
        model(torch.randn(B, C, T, H, W), torch.tensor([500.0]), torch.randn(B, 5, 32), torch.ones(B, 5),
              torch.randn(B, 16), torch.randn(B, 16, 24), torch.arange(T), guidance=torch.tensor([6000.0]))
    assert seen == list(range(len(blocks)))
    assert hooks == 3 * len(blocks)  # ours (swap in, swap out) + the spy
    assert sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks) == len(blocks)  # ours removed
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
