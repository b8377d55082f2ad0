"""Shared pieces of the reference harness: weight perturbation, saving, a per-run cache, error metric."""
import os
import threading
from pathlib import Path

import torch

# Reference models must not reach for a model hub, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@torch.no_grad()
def perturb_(model, seed=0, rel=0.5, floor=0.02):
    """Add Gaussian noise to every parameter and floating buffer, in place; returns the model.

    Random initialisation leaves zero projections, unit norms and zero biases that hide mapping
    bugs (a swapped scale/shift or a missing bias is invisible at zero). The noise std is
    rel * std(p), at least floor, so every tensor becomes distinct without changing its scale.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if not p.is_floating_point():
            continue
        std = p.float().std().item() if p.numel() > 1 else 0.0
        sigma = max(rel * std, floor)
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * sigma
        p.add_(noise.to(p.dtype))
    return model


def rel_l2(ours, ref):
    """Relative L2 error ||ours - ref|| / ||ref||, computed in float64."""
    ours, ref = ours.double(), ref.double()
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    return ((ours - ref).norm() / ref.norm().clamp_min(1e-30)).item()


class ReferenceStore:
    """Builds each named reference checkpoint once per pytest run and hands out its folder.

    build(path) must save a complete checkpoint into `path` (an empty folder).
    """

    def __init__(self, root):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._built = {}

    def get(self, name, build):
        with self._lock:
            if name not in self._built:
                path = self.root / name
                path.mkdir(parents=True, exist_ok=False)
                build(path)
                self._built[name] = path
            return self._built[name]
