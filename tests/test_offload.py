"""framepack_native.offload: offloaded runs give the same frames; blocks are swapped in one at a time."""
import pytest
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


def _transformer():
    model = demo_pipeline(seed=1).transformer
    B, C, T, H, W = 1, model.config.in_channels, 2, 4, 6
    inputs = (torch.randn(B, C, T, H, W), torch.tensor([500.0]), torch.randn(B, 5, 32), torch.ones(B, 5),
              torch.randn(B, 16), torch.randn(B, 16, 24), torch.arange(T))
    return model, ("double_blocks", "single_blocks"), lambda: model(*inputs, guidance=torch.tensor([6000.0]))


def _llama():
    model = demo_pipeline(seed=1).text_encoder
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    return model, ("layers",), lambda: model(ids, torch.ones_like(ids), hidden_state_index=-1)


@pytest.fixture
def visible_swaps(monkeypatch):
    """Host copies that a swap-in really copies (see _MovedOnTo)."""
    host_copies = offload._host_copies
    monkeypatch.setattr(offload, "_host_copies", lambda model, blocks: {
        t: c.clone().as_subclass(_MovedOnTo) for t, c in host_copies(model, blocks).items()})


@pytest.mark.parametrize("build", [_transformer, _llama], ids=["transformer", "llama"])
def test_streamed_blocks_swap_each_block_in_and_out(visible_swaps, build):
    model, lists, forward = build()
    blocks = [b for name in lists for b in getattr(model, name)]
    assert len(blocks) > 1
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen, resident = [], []
    with torch.no_grad():
        expected = forward()
        with streamed_blocks(model, "cpu", lists):
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
            streamed = forward()
            back_home = all(p.data_ptr() == home[p] for p in model.parameters())
    assert torch.equal(streamed, expected)
    assert seen == list(range(len(blocks)))
    assert resident == [[i] for i in range(len(blocks))]  # each block swapped in as it runs, and only it
    assert back_home  # and swapped out after
    assert hooks == 3 * len(blocks)  # ours (swap in, swap out) + the spy
    assert sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in blocks) == len(blocks)  # ours removed
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_offloaded_pipeline_streams_the_llama_layers(monkeypatch):
    """With offload the text encoder is streamed layer by layer (the transformer block by block), not moved whole;
    the small components are moved whole."""
    import framepack_native.pipeline as pipeline
    import framepack_native.section_loop as section_loop
    streamed, whole = [], []

    def spy(model, device, block_lists=offload.BLOCK_LISTS):
        streamed.append((type(model).__name__, tuple(block_lists)))
        return streamed_blocks(model, device, block_lists)

    def whole_spy(module, device, offload_):
        whole.append(type(module).__name__)
        return offload.on_device(module, device, offload_)

    monkeypatch.setattr(pipeline, "streamed_blocks", spy)  # the Llama encoder's, in the pipeline
    monkeypatch.setattr(section_loop, "streamed_blocks", spy)  # the transformer's, in the section loop
    monkeypatch.setattr(pipeline, "on_device", whole_spy)
    pipe = demo_pipeline(seed=3)
    pipe.offload = True
    pipe(demo_image(), "waves", height=32, width=48, num_frames=5, latent_window_size=2, num_inference_steps=1,
         generator=torch.Generator().manual_seed(0))
    assert streamed[0] == ("LlamaTextEncoder", ("layers",))
    assert set(streamed[1:]) == {("FramePackTransformer", offload.BLOCK_LISTS)}
    assert set(whole) == {"CLIPTextEncoder", "SiglipVisionEncoder", "HunyuanVideoVAE"}


def test_pack_plan_fills_whole_buffers():
    """Chunks of exactly chunk_bytes filled first fit, tensors on ALIGN boundaries, an oversized tensor alone,
    underfilled chunks shrunk to a power of two; the copies equal the originals and share the buffers."""
    chunk = 4096
    nbytes = [1000, 1000, 1000, 1000, 5000, 700, 100, 3000, 200]
    sizes, places = offload.pack_plan(nbytes, chunk)
    # four 1000 B fill chunk 0 (512 B boundaries: the 4th ends at 4072); 5000 B gets a buffer of its own; 700 B
    # opens chunk 2 and 100 B follows at 1024; 3000 B fits nowhere (chunk 2 is used to 1536): chunk 3; 200 B
    # goes back to chunk 2 at 1536, which ends at 1736 and shrinks to 2048; chunk 3 ends at 3000: stays 4096
    assert places == [(0, 0), (0, 1024), (0, 2048), (0, 3072), (1, 0), (2, 0), (2, 1024), (3, 0), (2, 1536)]
    assert sizes == [4096, 5000, 2048, 4096]
    tensors = [torch.randn(n // 4) if n % 4 == 0 else torch.randint(0, 9, (n,), dtype=torch.uint8) for n in nbytes]
    copies = offload.pack(tensors, pin=False, chunk_bytes=chunk)
    assert all(torch.equal(c, t) and c.dtype == t.dtype for c, t in zip(copies, tensors))
    assert len({c.untyped_storage().data_ptr() for c in copies}) == 4
    assert sorted({c.untyped_storage().nbytes() for c in copies}) == [2048, 4096, 5000]


def test_streaming_twice_reuses_the_packed_copies():
    model, lists, forward = _transformer()
    with torch.no_grad(), streamed_blocks(model, "cpu", lists):
        first = {n: p.data_ptr() for n, p in model.named_parameters()}
        forward()
    with torch.no_grad(), streamed_blocks(model, "cpu", lists):
        assert {n: p.data_ptr() for n, p in model.named_parameters()} == first
    streamed_bytes = sum(t.numel() * t.element_size() for name in lists for b in getattr(model, name)
                         for t in list(b.parameters()) + list(b.buffers()))
    buffers = offload.host_buffers(model)  # the demo's blocks fit one buffer, shrunk to a power of two
    assert len(buffers) == 1 and streamed_bytes <= buffers[0] < 2 * streamed_bytes


def test_an_error_inside_leaves_every_block_home_and_no_hook(visible_swaps):
    model, lists, forward = _llama()
    blocks = list(model.layers)

    def boom(module, args, out):
        raise RuntimeError("out of memory (planted)")

    with torch.no_grad(), pytest.raises(RuntimeError, match="planted"):
        with streamed_blocks(model, "cpu", lists):
            home = {p: p.data_ptr() for p in model.parameters()}
            # block 1 raises after its swap-in, before its swap-out: a stand-in for a failed forward
            blocks[1].mlp.register_forward_hook(boom)
            forward()
    assert not any(b._forward_pre_hooks or b._forward_hooks for b in blocks)  # ours removed
    assert all(p.data_ptr() == home[p] for p in model.parameters())  # block 1 too


def _kib(field):
    return int(open("/proc/self/status").read().split(f"{field}:")[1].split()[0])


def test_packing_drops_each_original_as_it_is_copied():
    """Host memory grows by about one tensor while the blocks are packed, not by a second copy of them all."""
    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.double_blocks = torch.nn.ModuleList(torch.nn.Linear(2048, 4096, bias=False) for _ in range(8))
            self.single_blocks = torch.nn.ModuleList()

    model = Blocks()  # 8 x 32 MiB of float32 weights
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # every page touched
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
    before = _kib("VmRSS")
    with streamed_blocks(model, "cpu"):
        grown = (_kib("VmHWM") - before) / 1024
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())
    assert grown < 128, f"peak grew {grown:.0f} MiB while packing 256 MiB"
