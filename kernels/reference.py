"""Plain torch implementations of the kernels: the CPU path and the test oracle."""
import torch
import torch.nn.functional as F


def attention(q, k, v, kv_mask=None, scale=None):
    """Softmax attention without causal mask.

    q (B, Lq, N, Dh), k/v (B, Lk, N, Dh); kv_mask bool (B, Lk), True = attend. Returns (B, Lq, N, Dh).
    """
    mask = None if kv_mask is None else kv_mask[:, None, None, :]  # (B, 1, 1, Lk)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )  # (B, N, Lq, Dh)
    return out.transpose(1, 2)  # (B, Lq, N, Dh)


def apply_rope(x, cos, sin):
    """HunyuanVideo's real-valued rotary embedding: pairs (2i, 2i+1) rotated by the angle in cos/sin.

    x (B, L, N, Dh); cos/sin (L, Dh) float32, each angle repeated for both members of its pair.
    Computed in float32, returned in x.dtype.
    """
    xf = x.float()
    x_even, x_odd = xf[..., 0::2], xf[..., 1::2]
    rotated = torch.stack((-x_odd, x_even), dim=-1).flatten(-2)  # (B, L, N, Dh)
    out = xf * cos[None, :, None, :] + rotated * sin[None, :, None, :]
    return out.to(x.dtype)


def rms_norm(x, weight, eps):
    """RMSNorm over the last dim, in float32; x (..., Dh), weight (Dh,)."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight.float()).to(x.dtype)


def rms_norm_rope(x, weight, cos, sin, eps, n_rope=None):
    """Per-head RMSNorm of x (B, L, N, Dh), then rotary on the first n_rope tokens (cos/sin (n_rope, Dh)).

    n_rope=None rotates all L tokens. Tokens past n_rope (text) are normalised but not rotated.
    """
    out = rms_norm(x, weight, eps)
    n = x.shape[1] if n_rope is None else n_rope
    if n == 0:
        return out
    head = apply_rope(out[:, :n], cos, sin)
    return torch.cat((head, out[:, n:]), dim=1)  # (B, L, N, Dh)
