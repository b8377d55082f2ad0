"""The prefetching offload (offload.Prefetcher), on the CPU with a copier that records what it is asked: block i + 1's
copy is started before block i runs (so on a GPU it overlaps block i's compute on the side stream), every block waits
for its own copy before it runs, at most one block besides the running one is on the device (plus a copy left
waiting by a block run twice), the output equals the resident model's, and an error leaves every block at home."""
import gc
import weakref

import pytest
import torch

from framepack_native.demo import demo_pipeline
from framepack_native.offload import Prefetcher, streamed_blocks


class RecordingCopier:
    """copy(hosts) makes fresh "device" tensors (clones); ready() hands them over. Logs ("copy" | "ready", block)
    and keeps weak references to every device tensor made, to count those alive."""

    def __init__(self, blocks):
        self.log, self.made = [], []
        self.owner = {}  # id of a block's first host tensor -> block index
        self.blocks = blocks

    def block_of(self, hosts):
        for i, b in enumerate(self.blocks):
            if hosts and hosts[0].data_ptr() == self.host_ptr[i]:
                return i
        raise AssertionError("a copy of something that is not a block")

    def copy(self, hosts):
        i = self.block_of(hosts)
        devs = [h.clone() for h in hosts]
        self.made.append([weakref.ref(d) for d in devs])
        self.log.append(("copy", i))
        return i, devs

    def ready(self, handle):
        i, devs = handle
        self.log.append(("ready", i))
        return devs

    def alive_blocks(self):
        gc.collect()
        return sum(any(r() is not None for r in refs) for refs in self.made)


def _model():
    model = demo_pipeline(seed=1).transformer
    B, C, T, H, W = 1, model.config.in_channels, 2, 4, 6
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(B, C, T, H, W, generator=gen), torch.tensor([500.0]), torch.randn(B, 5, 32, generator=gen),
              torch.ones(B, 5), torch.randn(B, 16, generator=gen), torch.randn(B, 16, 24, generator=gen),
              torch.arange(T))
    return model, lambda: model(*inputs, guidance=torch.tensor([6000.0]))


@torch.no_grad()
def test_prefetch_order_memory_and_output():
    model, run = _model()
    want = run()
    blocks = list(model.double_blocks) + list(model.single_blocks)
    copier = RecordingCopier(blocks)
    seen = []  # (block index, blocks alive on the "device" while it runs)

    def watch(i):
        def hook(module, args):
            seen.append((i, copier.alive_blocks()))
        return hook
    with streamed_blocks(model, "cpu", prefetch=copier):
        copier.host_ptr = [next(iter(b.parameters())).data_ptr() for b in blocks]  # the host copies, packed now
        handles = [b.register_forward_pre_hook(watch(i)) for i, b in enumerate(blocks)]  # after the prefetcher's
        got = run()
        got2 = run()
        for h in handles:
            h.remove()
    assert torch.equal(got, want) and torch.equal(got2, want)
    n = len(blocks)
    order = [i for i, _ in seen]
    assert order == list(range(n)) * 2
    log = copier.log
    for k, i in enumerate(order):
        ready = [j for j, e in enumerate(log) if e == ("ready", i)][k // n]
        start = max(j for j, e in enumerate(log[:ready]) if e == ("copy", i))
        assert start < ready  # its own copy was started before it waits for it
        nxt = (i + 1) % n
        later = [j for j, e in enumerate(log) if e == ("copy", nxt) and j > ready]
        assert later and log[later[0] - 1] == ("ready", i)  # the next block's copy starts as soon as block i has its
    # the first block's copy of the second call was prefetched by the last block of the first: one copy per block run
    assert sum(e[0] == "copy" for e in log) == 2 * n + 1  # + block 0's copy prefetched for a third call
    assert all(alive <= 2 for _, alive in seen)  # the running block and the next one's copy
    assert copier.alive_blocks() == 0  # on exit nothing stays on the "device"
    assert [next(iter(b.parameters())).data_ptr() for b in blocks] == copier.host_ptr  # every block back home


@torch.no_grad()
def test_a_block_run_twice_keeps_the_prefetched_copy():
    """TeaCache's probe runs block 0 before the blocks: block 1's prefetched copy waits, and is used, not redone."""
    model, _ = _model()
    blocks = list(model.double_blocks) + list(model.single_blocks)
    copier = RecordingCopier(blocks)
    with streamed_blocks(model, "cpu", prefetch=copier):
        copier.host_ptr = [next(iter(b.parameters())).data_ptr() for b in blocks]
        prefetcher = next(h for h in blocks[0]._forward_pre_hooks.values() if hasattr(h, "__self__")).__self__
        assert isinstance(prefetcher, Prefetcher)
        for i in [0, 0, 1]:
            prefetcher.pre_hook(blocks[i], ())
            prefetcher.post_hook(blocks[i], (), None)
    assert copier.log == [("copy", 0), ("ready", 0), ("copy", 1), ("copy", 0), ("ready", 0), ("ready", 1),
                          ("copy", 2)]


@torch.no_grad()
def test_an_error_leaves_every_block_home():
    model, run = _model()
    blocks = list(model.double_blocks) + list(model.single_blocks)
    copier = RecordingCopier(blocks)

    def boom(module, args):
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        with streamed_blocks(model, "cpu", prefetch=copier):
            copier.host_ptr = [next(iter(b.parameters())).data_ptr() for b in blocks]
            blocks[2].register_forward_pre_hook(boom)
            run()
    assert all(not b._forward_pre_hooks or len(b._forward_pre_hooks) == (1 if b is blocks[2] else 0) for b in blocks)
    assert copier.alive_blocks() == 0
    assert [next(iter(b.parameters())).data_ptr() for b in blocks] == copier.host_ptr
