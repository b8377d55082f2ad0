"""Offloading applied from outside the models: whole components, or a model block by block.

The 13B transformer alone (26 GB in bf16) does not fit a 24 GB GPU, so with offload its dual / single
blocks stay on the CPU (pinned when possible) and each is copied in just before it runs and dropped after,
while the small parts (embedders, refiner, final layer) stay on the device for the duration (the idea of
FramePack's DynamicSwap, done with module hooks). The Llama text encoder is streamed the same way, layer by
layer (0.4 GB each in bf16, 13 GB in all), so no component needs its whole weight on the GPU.
"""
import contextlib

import torch

BLOCK_LISTS = ("double_blocks", "single_blocks")


def _host_copies(module):
    """{tensor: its host copy} of a module's parameters and buffers, pinned when CUDA is there."""
    copies = {}
    for t in list(module.parameters()) + list(module.buffers()):
        host = t.data.to("cpu")
        copies[t] = host.pin_memory() if torch.cuda.is_available() else host
    return copies


def _swap_in(copies, device):
    def hook(module, args):
        for t in list(module.parameters()) + list(module.buffers()):
            t.data = copies[t].to(device, non_blocking=True)
    return hook


def _swap_out(copies):
    def hook(module, args, out):
        for t in list(module.parameters()) + list(module.buffers()):
            t.data = copies[t]  # weights never change: drop the device copy, keep the host one
    return hook


@contextlib.contextmanager
def on_device(module, device, offload):
    """`module` on `device` inside the block; with offload, moved there on entry and back to the CPU on exit."""
    if offload:
        module.to(device)
    try:
        yield module
    finally:
        if offload:
            module.to("cpu")
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()


@contextlib.contextmanager
def streamed_blocks(model, device, block_lists=BLOCK_LISTS):
    """Inside the block, `model` runs on `device` with only one block of its `block_lists` (names of its
    nn.ModuleList children) there at a time; its other children stay on `device` for the duration."""
    rest = [m for name, m in model.named_children() if name not in block_lists]
    handles = []
    for block in (b for name in block_lists for b in getattr(model, name)):
        copies = _host_copies(block)
        _swap_out(copies)(block, None, None)
        handles.append(block.register_forward_pre_hook(_swap_in(copies, device)))
        handles.append(block.register_forward_hook(_swap_out(copies)))
    for m in rest:
        m.to(device)
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        for m in rest:
            m.to("cpu")
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
