"""Offloading applied from outside the models: whole components, or a model block by block.

The 13B transformer alone (26 GB in bf16) does not fit a 24 GB GPU, so with offload its dual / single
blocks stay on the CPU (pinned when possible) and each is copied in just before it runs and dropped after,
while the small parts (embedders, refiner, final layer) stay on the device for the duration (the idea of
FramePack's DynamicSwap, done with module hooks). The Llama text encoder is streamed the same way, layer by
layer (0.4 GB each in bf16, 13 GB in all); the small components (VAE, CLIP, SigLIP) are moved whole.

The host copies of streamed blocks live in a few large pinned buffers (`pack`): torch's caching pinned
allocator rounds every allocation up to a power of two, which would cost the 13B transformer's blocks 31.3 GiB
of host memory instead of 23.2 (24.0 in 1 GiB buffers; the Llama's layers 14.1 / 12.2 / 12.5 GiB).
"""
import contextlib
import weakref

import torch

BLOCK_LISTS = ("double_blocks", "single_blocks")
CHUNK_BYTES = 1 << 30  # a power of two: the pinned allocator gives exactly this much
ALIGN = 512            # bytes; every packed tensor starts on such a boundary

_PACKED = weakref.WeakKeyDictionary()  # model -> {tensor: its packed host copy}, reused on the next entry


def _round_up(n, multiple):
    return (n + multiple - 1) // multiple * multiple


def pack_plan(nbytes, chunk_bytes=CHUNK_BYTES):
    """(buffer sizes, [(buffer index, byte offset)] per tensor) for tensors of `nbytes` bytes.

    First fit in the given order: each tensor goes to the first buffer with room (later small tensors fill the
    ends of earlier buffers), else to a new one of chunk_bytes, or of its own size if it is larger. Then each
    chunk shrinks to the power of two that holds its contents (in practice only the last one does), so the
    pinned allocator rounds nothing up.
    """
    sizes, used, end, places = [], [], [], []
    for n in nbytes:
        b = next((i for i, size in enumerate(sizes) if used[i] + n <= size), None)
        if b is None:
            b = len(sizes)
            sizes.append(max(chunk_bytes, n))
            used.append(0)
            end.append(0)
        places.append((b, used[b]))
        end[b] = used[b] + n
        used[b] = _round_up(end[b], ALIGN)
    sizes = [1 << max(0, (e - 1).bit_length()) if size == chunk_bytes else size for size, e in zip(sizes, end)]
    return sizes, places


def pack(tensors, pin, chunk_bytes=CHUNK_BYTES, on_copy=None):
    """Host copies of `tensors` (list), contiguous views into the buffers of pack_plan, pinned if `pin`.

    on_copy(i, copy), if given, runs right after tensor i is copied: the caller can drop the original there,
    so host memory grows by about one buffer, not by a second copy of everything.
    """
    sizes, places = pack_plan([t.numel() * t.element_size() for t in tensors], chunk_bytes)
    buffers, copies = [], []
    for i, (t, (b, offset)) in enumerate(zip(tensors, places)):
        while len(buffers) <= b:  # allocated when first needed
            buffers.append(torch.empty(sizes[len(buffers)], dtype=torch.uint8, pin_memory=pin))
        n = t.numel() * t.element_size()
        copy = buffers[b][offset:offset + n].view(t.dtype).view(t.shape)
        copy.copy_(t.detach())
        copies.append(copy)
        if on_copy is not None:
            on_copy(i, copy)
    return copies


def _tensors(module):
    return list(module.parameters()) + list(module.buffers())


def _host_copies(model, blocks):
    """{tensor: host copy} for every parameter and buffer of `blocks`, each tensor left on its copy. Packed once
    per model (pinned when CUDA is there); the next entry reuses the copies if the weights still sit in them."""
    tensors = [t for b in blocks for t in _tensors(b)]
    known = _PACKED.get(model)
    if known is not None and all(t in known and t.data.data_ptr() == known[t].data_ptr() for t in tensors):
        return known

    def settle(i, copy):
        tensors[i].data = copy  # the original storage is freed here, tensor by tensor

    copies = dict(zip(tensors, pack(tensors, torch.cuda.is_available(), on_copy=settle)))
    _PACKED[model] = copies
    return copies


def host_buffers(model):
    """Sizes in bytes of the host buffers holding `model`'s streamed blocks (empty if it was never streamed)."""
    copies = _PACKED.get(model, {})
    return sorted({c.untyped_storage().data_ptr(): c.untyped_storage().nbytes() for c in copies.values()}.values())


def _swap_in(copies, device):
    def hook(module, args):
        for t in _tensors(module):
            t.data = copies[t].to(device, non_blocking=True)
    return hook


class SideStreamCopies:
    """Host-to-device copies on a side CUDA stream, each with an event: `copy(hosts)` enqueues them (returns a
    handle), `ready(handle)` makes the compute (current) stream wait for that event and returns the device tensors,
    marked as used by the compute stream so that the allocator does not reuse their memory while it still reads."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(self.device)

    def copy(self, hosts):
        with torch.cuda.stream(self.stream):
            devs = [h.to(self.device, non_blocking=True) for h in hosts]
            event = torch.cuda.Event()
            event.record(self.stream)
        return devs, event

    def ready(self, handle):
        devs, event = handle
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        for d in devs:
            d.record_stream(compute)
        return devs


class Prefetcher:
    """Forward hooks that stream `blocks` (in their forward order) with the next block's copy in flight while the
    current one computes: block i's pre-hook takes its copy (the one prefetched, else a new one), then starts block
    i + 1's (after the last: block 0's, the next call's first); its post-hook drops the device copy. At most
    MAX_PENDING copies wait at once besides the running block (a block run twice, TeaCache's probe of block 0, or a
    skipped step leave a prefetched copy waiting for its turn). `copier`: SideStreamCopies on CUDA; anything with
    copy(hosts) -> handle and ready(handle) -> tensors (the tests record the order)."""
    MAX_PENDING = 2

    def __init__(self, blocks, copies, copier):
        self.blocks, self.copies, self.copier = blocks, copies, copier
        self.post_hook = _swap_out(copies)  # the device copy dropped after the block ran, as without prefetch
        self.index = {id(b): i for i, b in enumerate(blocks)}
        self.pending = {}  # block index -> copier handle, oldest first

    def _start(self, i):
        if i not in self.pending:
            self.pending[i] = self.copier.copy([self.copies[t] for t in _tensors(self.blocks[i])])
            while len(self.pending) > self.MAX_PENDING:
                self.pending.pop(next(iter(self.pending)))

    def pre_hook(self, module, args):
        i = self.index[id(module)]
        self._start(i)
        devs = self.copier.ready(self.pending.pop(i))
        for t, d in zip(_tensors(module), devs):
            t.data = d
        self._start((i + 1) % len(self.blocks))

    def close(self):
        self.pending.clear()


def _swap_out(copies):
    def hook(module, args, out):
        for t in _tensors(module):
            t.data = copies[t]  # weights never change: drop the device copy, keep the host one
    return hook


@contextlib.contextmanager
def on_device(module, device, offload):
    """`module` on `device` inside the block; with offload, moved there on entry and back to the CPU on exit
    (also when the move or the work fails part way)."""
    try:
        if offload:
            module.to(device)
        yield module
    finally:
        if offload:
            module.to("cpu")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()


@contextlib.contextmanager
def streamed_blocks(model, device, block_lists=BLOCK_LISTS, prefetch=None):
    """Inside the block, `model` runs on `device` with only one block of its `block_lists` (names of its
    nn.ModuleList children) there at a time, plus the next one's copy in flight (prefetch); its other children stay
    on `device` for the duration. On exit, also after an error anywhere (a failed move, a block that raised), every
    block is back on its host copy, the hooks are gone and the other children are back on the CPU.
    prefetch: None (on CUDA: a Prefetcher on a side stream, so the copy of block i + 1 runs while block i computes;
    elsewhere the copy just before each block runs), False (copy each block on the compute stream just before it
    runs), or a copier for Prefetcher (see there)."""
    blocks = [b for name in block_lists for b in getattr(model, name)]
    rest = [m for name, m in model.named_children() if name not in block_lists]
    handles, copies, prefetcher = [], None, None
    try:
        copies = _host_copies(model, blocks)
        if prefetch is None and torch.device(device).type == "cuda":
            prefetch = SideStreamCopies(device)
        if prefetch:
            prefetcher = Prefetcher(blocks, copies, prefetch)
        for block in blocks:
            _swap_out(copies)(block, None, None)
            if prefetcher is None:
                handles.append(block.register_forward_pre_hook(_swap_in(copies, device)))
                handles.append(block.register_forward_hook(_swap_out(copies)))
            else:
                handles.append(block.register_forward_pre_hook(prefetcher.pre_hook))
                handles.append(block.register_forward_hook(prefetcher.post_hook))
        for m in rest:
            m.to(device)
        yield model
    finally:
        for h in handles:
            h.remove()
        if prefetcher is not None:
            prefetcher.close()  # copies in flight: dropped (the allocator frees them once their stream is done)
        if copies is not None:
            for block in blocks:  # a block whose forward raised never ran its swap-out hook
                _swap_out(copies)(block, None, None)
        for m in rest:
            m.to("cpu")
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
