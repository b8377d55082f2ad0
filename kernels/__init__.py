"""Kernels of the hot path: attention and rotary embedding.

Each op has a torch reference (kernels.reference) and a dispatcher taking backend="auto"|"torch"|"triton".
"auto" picks Triton for CUDA tensors when it imports, torch otherwise.
"""
from kernels import reference

BACKENDS = ("auto", "torch", "triton")


def _check_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; expected one of {BACKENDS}")


def attention(q, k, v, *, kv_mask=None, scale=None, backend="auto"):
    """Attention over (B, L, N, Dh) tensors; kv_mask bool (B, Lk), True = attend. Returns (B, Lq, N, Dh)."""
    _check_backend(backend)
    if backend == "triton":
        raise RuntimeError("the Triton attention kernel is not built yet; use backend='torch'")
    return reference.attention(q, k, v, kv_mask=kv_mask, scale=scale)


def apply_rope(x, cos, sin, *, backend="auto"):
    """Rotate pairs (2i, 2i+1) of x (B, L, N, Dh) by cos/sin (L, Dh) float32. Returns x.dtype."""
    _check_backend(backend)
    if backend == "triton":
        raise RuntimeError("the Triton RoPE kernel is not built yet; use backend='torch'")
    return reference.apply_rope(x, cos, sin)


def rms_norm_rope(x, weight, cos, sin, *, eps, n_rope=None, backend="auto"):
    """q/k RMSNorm (weight (Dh,)) + rotary on the first n_rope tokens of x (B, L, N, Dh); cos/sin (n_rope, Dh)."""
    _check_backend(backend)
    if backend == "triton":
        raise RuntimeError("the Triton RMSNorm+RoPE kernel is not built yet; use backend='torch'")
    return reference.rms_norm_rope(x, weight, cos, sin, eps, n_rope=n_rope)
