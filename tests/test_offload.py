"""framepack_native.offload: offloaded runs give the same frames; blocks are swapped in one at a time."""
import torch

from framepack_native import offload
from framepack_native.demo import demo_image, demo_pipeline
from framepack_native.offload import streamed_blocks


def test_offload_gives_the_same_video():
    kw = dict(height=32, width=48, num_frames=9, latent_window_size=2, num_inference_steps=2)
    plain = demo_pipeline(seed=3)(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)
    pipe = demo_pipeline(seed=3)
    pipe.offload = True
    offloaded = pipe(demo_image(), "waves", generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain, offloaded)


class _MovedOnTo(torch.Tensor):
    """A host copy whose .to() always copies: on the CPU a real .to("cpu") returns the same tensor, which would make
    a block that was never swapped in look exactly like one that was."""

    def to(self, *args, **kwargs):
        return torch.Tensor.clone(self).as_subclass(torch.Tensor)


def test_streamed_blocks_swap_each_block_in_and_out(monkeypatch):
    host_copies = offload._host_copies
    monkeypatch.setattr(offload, "_host_copies",
                        lambda m: {t: c.clone().as_subclass(_MovedOnTo) for t, c in host_copies(m).items()})
    model = demo_pipeline(seed=1).transformer
    blocks = list(model.double_blocks) + list(model.single_blocks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen, resident = [], []
    with streamed_blocks(model, "cpu"):
        home = {p: p.data_ptr() for p in model.parameters()}   # the host copies while no block runs

        def spy(i):  # registered after the offload hooks: sees which blocks are away from home as block i runs
            def hook(module, args):
                seen.append(i)
                away = [j for j, o in enumerate(blocks) if any(p.data_ptr() != home[p] for p in o.parameters())]
                resident.append(away)
            return hook

        for i, b in enumerate(blocks):
            b.register_forward_pre_hook(spy(i))
        hooks = sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks)
        B, C, T, H, W = 1, 4, 2, 4, 6
        model(torch.randn(B, C, T, H, W), torch.tensor([500.0]), torch.randn(B, 5, 32), torch.ones(B, 5),
              torch.randn(B, 16), torch.randn(B, 16, 24), torch.arange(T), guidance=torch.tensor([6000.0]))
        back_home = all(p.data_ptr() == home[p] for p in model.parameters())
    assert seen == list(range(len(blocks)))
    assert resident == [[i] for i in range(len(blocks))]  # each block swapped in as it runs, and only it
    assert back_home  # and swapped out after
    assert hooks == 3 * len(blocks)  # ours (swap in, swap out) + the spy
    assert sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks) == len(blocks)  # ours removed
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
