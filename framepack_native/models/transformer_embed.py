"""FramePack transformer inputs: timestep / guidance / pooled-text conditioning, the text token refiner,
the SigLIP image projection and the multi-scale history patch embedder.

Source: HunyuanVideo (Kong et al., 2024) section 4 (token refiner, conditioning); FramePack (Zhang & Agrawala,
2025) section 3 (history compression); diffusers' transformer_hunyuan_video(_framepack).py for the numerics.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import kernels
from framepack_native.models.transformer_packing import HISTORY_KERNELS, pad_to_multiple

EPS = 1e-6


def timestep_embedding(t, dim=256, max_period=10000.0):
    """Sinusoidal embedding [cos | sin] (B, dim) float32 of t (B,), frequencies exp(-ln(max_period) * i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]  # (B, dim / 2)
    return torch.cat((angles.cos(), angles.sin()), dim=-1)  # (B, dim)


class MLPEmbedder(nn.Module):
    """Linear -> SiLU -> Linear: (B, in_dim) -> (B, D)."""

    def __init__(self, in_dim, hidden_dim):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class ImageProjection(nn.Module):
    """SigLIP features to image tokens: Linear up (x3) -> SiLU -> Linear down. (B, Li, image_dim) -> (B, Li, D)."""

    def __init__(self, image_dim, hidden_dim):
        super().__init__()
        self.up = nn.Linear(image_dim, 3 * hidden_dim)
        self.down = nn.Linear(3 * hidden_dim, hidden_dim)

    def forward(self, x):
        return self.down(F.silu(self.up(x)))


class HistoryPatchEmbed(nn.Module):
    """Clean history latents to tokens at three compressions: kernels (1,2,2), (2,4,4), (4,8,8), replicate-padded."""

    def __init__(self, in_channels, hidden_dim):
        super().__init__()
        self.proj_1x = nn.Conv3d(in_channels, hidden_dim, HISTORY_KERNELS["1x"], stride=HISTORY_KERNELS["1x"])
        self.proj_2x = nn.Conv3d(in_channels, hidden_dim, HISTORY_KERNELS["2x"], stride=HISTORY_KERNELS["2x"])
        self.proj_4x = nn.Conv3d(in_channels, hidden_dim, HISTORY_KERNELS["4x"], stride=HISTORY_KERNELS["4x"])

    def forward(self, latents, scale):
        """latents (B, C, T, H, W), scale "1x" | "2x" | "4x" -> tokens (B, L, D), L = prod(ceil(size / kernel))."""
        proj = {"1x": self.proj_1x, "2x": self.proj_2x, "4x": self.proj_4x}[scale]
        x = proj(pad_to_multiple(latents, HISTORY_KERNELS[scale]))  # (B, D, t, h, w)
        return rearrange(x, "B D t h w -> B (t h w) D")


class RefinerBlock(nn.Module):
    """Token refiner block: pre-LN self-attention and SiLU MLP over the text, residuals gated by the conditioning."""

    def __init__(self, hidden_dim, num_heads, mlp_ratio):
        super().__init__()
        mlp_dim = int(hidden_dim * mlp_ratio)
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(hidden_dim, eps=EPS)
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.proj = nn.Linear(hidden_dim, hidden_dim)
        self.norm2 = nn.LayerNorm(hidden_dim, eps=EPS)
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)
        self.gates = nn.Linear(hidden_dim, 2 * hidden_dim)

    def forward(self, x, vec, kv_lens, backend):
        """x (B, L, D), vec (B, D) = silu(conditioning), kv_lens (B,) int valid tokens or None -> (B, L, D)."""
        gate_attn, gate_mlp = self.gates(vec)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        q, k, v = rearrange(self.qkv(self.norm1(x)), "B L (K N Dh) -> K B L N Dh", K=3, N=self.num_heads)
        attn = kernels.attention(q, k, v, kv_lens=kv_lens, backend=backend)  # (B, L, N, Dh)
        x = torch.addcmul(x, gate_attn, self.proj(attn.flatten(2)))  # attn as (B, L, D)
        mlp = self.fc2(F.silu(self.fc1(self.norm2(x))))
        return torch.addcmul(x, gate_mlp, mlp)


class TokenRefiner(nn.Module):
    """HunyuanVideo's text token refiner: project the text, refine it conditioned on timestep + mean-pooled text."""

    def __init__(self, text_dim, hidden_dim, num_heads, num_layers, mlp_ratio):
        super().__init__()
        self.in_proj = nn.Linear(text_dim, hidden_dim)
        self.t_embedder = MLPEmbedder(256, hidden_dim)
        self.c_embedder = MLPEmbedder(text_dim, hidden_dim)
        self.blocks = nn.ModuleList(RefinerBlock(hidden_dim, num_heads, mlp_ratio) for _ in range(num_layers))

    def forward(self, txt, timestep, mask, backend):
        """txt (B, L, text_dim), timestep (B,), mask bool (B, L) or None (all valid) -> (B, L, D).

        mask must mark a prefix of each row (valid tokens first, padding after), as the transformer checks:
        attention reads it as the number of valid tokens. The pooled text is the mean over valid tokens,
        computed in float32 as the reference does.
        """
        if mask is None:
            pooled = txt.float().mean(dim=1)  # (B, text_dim)
        else:
            weights = mask.float()[..., None]  # (B, L, 1)
            pooled = (txt.float() * weights).sum(dim=1) / weights.sum(dim=1)  # (B, text_dim)
        t_emb = timestep_embedding(timestep).to(txt.dtype)
        vec = F.silu(self.t_embedder(t_emb) + self.c_embedder(pooled.to(txt.dtype)))  # (B, D)
        x = self.in_proj(txt)
        kv_lens = None if mask is None else mask.sum(dim=1, dtype=torch.int32)  # (B,): valid tokens come first
        for block in self.blocks:
            x = block(x, vec, kv_lens, backend)
        return x
