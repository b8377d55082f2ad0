"""FramePack's multi-scale history packing: 3D RoPE tables, replicate padding, pooled frequencies.

Source: Zhang & Agrawala, "Packing Input Frame Context in Next-Frame Prediction Models for Video Generation",
sections 3-4 (compression kernels (1,2,2), (2,4,4), (4,8,8); anti-drifting sampling, Fig. 2c); the RoPE of
HunyuanVideo (axes (t, h, w), theta 256, real-valued pairs (2i, 2i+1)).
"""
import math

import torch
import torch.nn.functional as F

HISTORY_KERNELS = {"1x": (1, 2, 2), "2x": (2, 4, 4), "4x": (4, 8, 8)}  # on the latent grid (t, h, w)
HISTORY_POOL = {"1x": 1, "2x": 2, "4x": 4}  # the same kernels on the token grid (after the 2x2 patch)


def pad_to_multiple(x, kernel):
    """Replicate-pad the end of the last three dims of x (B, C, T, H, W) up to multiples of kernel (kt, kh, kw)."""
    pads = [(-size) % k for size, k in zip(x.shape[-3:], kernel)]
    if not any(pads):
        return x
    return F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")  # (B, C, T', H', W')


def pool_rows(table, k):
    """Replicate-pad the rows of table (n, d) to a multiple of k and average each group of k rows: (ceil(n/k), d)."""
    if k == 1:
        return table
    pad = (-table.shape[0]) % k
    if pad:
        table = torch.cat((table, table[-1:].expand(pad, -1)), dim=0)  # (n', d)
    return table.unflatten(0, (-1, k)).mean(dim=1)  # (n' / k, d)


def rope_axis(positions, dim, theta):
    """cos/sin (n, dim) float32 of 1D positions (n,), each angle repeated for its pair (2i, 2i+1)."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    angles = torch.outer(positions.to(torch.float32), freqs)  # (n, dim / 2)
    return angles.cos().repeat_interleave(2, dim=1), angles.sin().repeat_interleave(2, dim=1)  # (n, dim)


def rope_table(frame_indices, height, width, axes_dim, theta, pool=1):
    """3D RoPE cos/sin (L, Dh) float32 over the token grid (frame_indices x height x width), row-major (t, h, w).

    With pool > 1 the tables are those of the full grid, replicate-padded to multiples of pool on every axis
    and average-pooled with kernel (pool, pool, pool), as diffusers' _pad_rotary_emb does for the 2x/4x history.
    Each of the three channel groups depends on one axis only, so padding and pooling are done per axis.
    frame_indices (T,); height/width: the token grid after patching; L = ceil(T/pool)*ceil(h/pool)*ceil(w/pool).
    """
    device = frame_indices.device
    axes = (frame_indices, torch.arange(height, device=device), torch.arange(width, device=device))
    cos_parts, sin_parts = [], []
    for i, (positions, dim) in enumerate(zip(axes, axes_dim)):
        cos, sin = rope_axis(positions, dim, theta)
        cos, sin = pool_rows(cos, pool), pool_rows(sin, pool)  # (n_i, dim)
        shape = [1, 1, 1, dim]
        shape[i] = cos.shape[0]
        cos_parts.append(cos.view(shape))  # (t', 1, 1, d) | (1, h', 1, d) | (1, 1, w', d)
        sin_parts.append(sin.view(shape))
    grid = torch.broadcast_shapes(*(c.shape[:3] for c in cos_parts))
    cos = torch.cat([c.expand(*grid, -1) for c in cos_parts], dim=-1)  # (T', h', w', Dh)
    sin = torch.cat([s.expand(*grid, -1) for s in sin_parts], dim=-1)  # (T', h', w', Dh)
    return cos.flatten(0, 2), sin.flatten(0, 2)  # (L, Dh)


def history_tokens(frames, height, width, scale):
    """Token count of a history of `frames` latent frames at scale "1x" | "2x" | "4x" on a (height, width) latent."""
    kt, kh, kw = HISTORY_KERNELS[scale]
    return math.ceil(frames / kt) * math.ceil(height / kh) * math.ceil(width / kw)
