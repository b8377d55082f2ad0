"""Gaussian noise drawn the way diffusers' randn_tensor draws it, so a shared generator gives the same numbers."""
import torch


def randn(shape, generator, device, dtype=torch.float32):
    """Normal noise of `shape` on `device`: drawn on the CPU when the generator lives there, then moved.

    generator: None, a torch.Generator, or a list with one per batch element (each draws its own row).
    """
    gens = generator if isinstance(generator, list) else [generator]
    rand_device = "cpu" if gens[0] is not None and gens[0].device.type == "cpu" else device
    if len(gens) == 1:
        return torch.randn(shape, generator=gens[0], device=rand_device, dtype=dtype).to(device)
    if len(gens) != shape[0]:
        raise ValueError(f"{len(gens)} generators for a batch of {shape[0]}")
    rows = [torch.randn((1, *shape[1:]), generator=g, device=rand_device, dtype=dtype) for g in gens]
    return torch.cat(rows).to(device)  # (B, ...)
