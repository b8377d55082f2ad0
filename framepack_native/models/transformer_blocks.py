"""HunyuanVideo's DiT blocks: dual-stream (separate image/text weights, joint attention) and single-stream
(fused QKV + MLP-in, fused attention-out + MLP-out), adaLN-Zero modulation, q/k RMSNorm, RoPE on image tokens.

Source: HunyuanVideo (Kong et al., 2024) section 4.1 and Flux's MMDiT blocks; diffusers'
HunyuanVideoTransformerBlock / HunyuanVideoSingleTransformerBlock for the numerics (eps 1e-6, tanh GELU).
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

import kernels
from framepack_native.fp8 import linear_rows
from framepack_native.parallel import joint_attention

EPS = 1e-6


class ModulationOut(NamedTuple):
    shift: torch.Tensor  # (B, 1, D)
    scale: torch.Tensor  # (B, 1, D)
    gate: torch.Tensor  # (B, 1, D)


class Modulation(nn.Module):
    """adaLN parameters from the conditioning: (B, D) -> `count` ModulationOut(shift, scale, gate)."""

    def __init__(self, hidden_dim, count):
        super().__init__()
        self.count = count
        self.lin = nn.Linear(hidden_dim, 3 * count * hidden_dim)

    def forward(self, vec):
        chunks = self.lin(vec)[:, None].chunk(3 * self.count, dim=-1)  # 3 * count x (B, 1, D)
        return [ModulationOut(*chunks[3 * i: 3 * i + 3]) for i in range(self.count)]


def gelu_tanh(x):
    """tanh GELU; in place when autograd is off (x is then a scratch activation: one large allocation less)."""
    if torch.is_grad_enabled():
        return F.gelu(x, approximate="tanh")
    return torch.ops.aten.gelu_(x, approximate="tanh")


def modulate(x, mod):
    """LayerNorm (no affine, eps 1e-6) of x (B, L, D), then x * (1 + scale) + shift."""
    return torch.addcmul(mod.shift, F.layer_norm(x, x.shape[-1:], eps=EPS), 1 + mod.scale)


class MLP(nn.Module):
    """Linear -> tanh GELU -> Linear."""

    def __init__(self, hidden_dim, mlp_dim):
        super().__init__()
        self.fc1 = nn.Linear(hidden_dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, hidden_dim)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class QKVAttention(nn.Module):
    """Fused QKV projection with per-head q/k RMSNorm, and the output projection of one stream."""

    def __init__(self, hidden_dim, num_heads, head_dim):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_dim, 3 * hidden_dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=EPS)
        self.proj = nn.Linear(hidden_dim, hidden_dim)

    def qkv_heads(self, x, cos, sin, n_rope, backend):
        """x (B, L, D) -> q, k, v (B, L, N, Dh); q/k normalised, the first n_rope tokens rotated by cos/sin."""
        q, k, v = rearrange(self.qkv(x), "B L (K N Dh) -> K B L N Dh", K=3, N=self.num_heads)
        q = kernels.rms_norm_rope(q, self.norm_q.weight, cos, sin, eps=EPS, n_rope=n_rope, backend=backend)
        k = kernels.rms_norm_rope(k, self.norm_k.weight, cos, sin, eps=EPS, n_rope=n_rope, backend=backend)
        return q, k, v


class DoubleStreamBlock(nn.Module):
    """Dual-stream block: image and text keep their own weights and attend jointly over [image, text]."""

    def __init__(self, hidden_dim, num_heads, head_dim, mlp_dim):
        super().__init__()
        self.img_mod = Modulation(hidden_dim, 2)
        self.txt_mod = Modulation(hidden_dim, 2)
        self.img_attn = QKVAttention(hidden_dim, num_heads, head_dim)
        self.txt_attn = QKVAttention(hidden_dim, num_heads, head_dim)
        self.img_mlp = MLP(hidden_dim, mlp_dim)
        self.txt_mlp = MLP(hidden_dim, mlp_dim)

    def forward(self, img, txt, vec, cos, sin, kv_lens, backend, probe=False, sp=None, n_img_all=None):
        """img (B, Li, D), txt (B, Lt, D), vec (B, D) = silu(conditioning), cos/sin (Li, Dh), kv_lens (B,) int
        valid keys of the joint sequence (None: all). probe: return only the modulated img (B, Li, D), TeaCache's
        test (a call of the block, so that offload hooks bring its weights). sp: a parallel.SequenceParallel, img
        and cos / sin then this rank's tokens of n_img_all (framepack_native.parallel)."""
        n_img = img.shape[1]
        img_mod1, img_mod2 = self.img_mod(vec)
        if probe:
            return modulate(img, img_mod1)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.qkv_heads(modulate(img, img_mod1), cos, sin, n_img, backend)
        txt_q, txt_k, txt_v = self.txt_attn.qkv_heads(modulate(txt, txt_mod1), cos[:0], sin[:0], 0, backend)
        img_attn, txt_attn = joint_attention((img_q, img_k, img_v), (txt_q, txt_k, txt_v), kv_lens, backend, sp,
                                             n_img_all)  # (B, Li, N, Dh), (B, Lt, N, Dh)
        img = torch.addcmul(img, img_mod1.gate, self.img_attn.proj(img_attn.flatten(2)))
        txt = torch.addcmul(txt, txt_mod1.gate, self.txt_attn.proj(txt_attn.flatten(2)))
        img = torch.addcmul(img, img_mod2.gate, self.img_mlp(modulate(img, img_mod2)))
        txt = torch.addcmul(txt, txt_mod2.gate, self.txt_mlp(modulate(txt, txt_mod2)))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Single-stream block over the joint [image, text] sequence: one Linear makes q, k, v and the MLP input,
    one Linear maps [attention, GELU(MLP)] back, run in parallel (ViT-22B style)."""

    def __init__(self, hidden_dim, num_heads, head_dim, mlp_dim):
        super().__init__()
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.mlp_dim = mlp_dim
        self.modulation = Modulation(hidden_dim, 1)
        self.linear1 = nn.Linear(hidden_dim, 3 * hidden_dim + mlp_dim)
        self.norm_q = nn.RMSNorm(head_dim, eps=EPS)
        self.norm_k = nn.RMSNorm(head_dim, eps=EPS)
        self.linear2 = nn.Linear(hidden_dim + mlp_dim, hidden_dim)

    def forward(self, x, vec, cos, sin, n_img, kv_lens, backend, rows=None, sp=None, n_img_all=None):
        """x (B, L, D) with the n_img image tokens first, vec (B, D), cos/sin (n_img, Dh), kv_lens (B,) or None
        -> (B, L, D); with rows (a slice of image tokens), (B, R, D): only those rows' outputs (keys from all).
        sp: a parallel.SequenceParallel, the n_img image tokens then this rank's of n_img_all."""
        D = self.hidden_dim
        (mod,) = self.modulation(vec)
        if rows is not None:
            return self._forward_rows(x, mod, cos, sin, n_img, kv_lens, backend, rows)
        h = self.linear1(modulate(x, mod))  # (B, L, 3D + M): [q | k | v | mlp]
        q, k, v = rearrange(h[..., :3 * D], "B L (K N Dh) -> K B L N Dh", K=3, N=self.num_heads)
        q = kernels.rms_norm_rope(q, self.norm_q.weight, cos, sin, eps=EPS, n_rope=n_img, backend=backend)
        k = kernels.rms_norm_rope(k, self.norm_k.weight, cos, sin, eps=EPS, n_rope=n_img, backend=backend)
        if sp is None:
            attn = kernels.attention(q, k, v, kv_lens=kv_lens, backend=backend)  # (B, L, N, Dh)
        else:
            attn = torch.cat(joint_attention((q[:, :n_img], k[:, :n_img], v[:, :n_img]),
                                             (q[:, n_img:], k[:, n_img:], v[:, n_img:]), kv_lens, backend, sp,
                                             n_img_all), dim=1)
        if torch.is_grad_enabled():
            y = torch.cat((attn.flatten(2), F.gelu(h[..., 3 * D:], approximate="tanh")), dim=-1)  # (B, L, D + M)
        else:
            # Inference: [attention | GELU(mlp)] is assembled in h's [v | mlp] columns (v is consumed by now),
            # which saves a (B, L, D + M) concatenation; linear2 reads the strided view without a copy.
            y = h[..., 2 * D:]  # (B, L, D + M), row stride 3D + M
            y[..., :D].unflatten(-1, (self.num_heads, -1)).copy_(attn)  # (B, L, N, Dh)
            gelu_tanh(y[..., D:])
        return torch.addcmul(x, mod.gate, self.linear2(y))

    def _forward_rows(self, x, mod, cos, sin, n_img, kv_lens, backend, rows):
        """forward for image rows `rows` only, x (B, L, D) -> (B, R, D); linear1 split by its [q | k | v | mlp] rows."""
        D, linear1 = self.hidden_dim, self.linear1
        xm = modulate(x, mod)  # (B, L, D)
        k, v = rearrange(linear_rows(linear1, xm, D, 3 * D), "B L (K N Dh) -> K B L N Dh", K=2, N=self.num_heads)
        k = kernels.rms_norm_rope(k, self.norm_k.weight, cos, sin, eps=EPS, n_rope=n_img, backend=backend)
        xr = xm[:, rows]  # (B, R, D)
        q = rearrange(linear_rows(linear1, xr, 0, D), "B R (N Dh) -> B R N Dh", N=self.num_heads)
        q = kernels.rms_norm_rope(q, self.norm_q.weight, cos[rows], sin[rows], eps=EPS, backend=backend)
        attn = kernels.attention(q, k, v, kv_lens=kv_lens, backend=backend)  # (B, R, N, Dh)
        mlp = gelu_tanh(linear_rows(linear1, xr, 3 * D, None))  # (B, R, M)
        y = torch.cat((attn.flatten(2), mlp), dim=-1)  # (B, R, D + M)
        return torch.addcmul(x[:, rows], mod.gate, self.linear2(y))


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) + Linear to the patch values (B, L, pt*p*p*C), in the Linear's dtype."""

    def __init__(self, hidden_dim, patch_values):
        super().__init__()
        self.modulation = nn.Linear(hidden_dim, 2 * hidden_dim)
        self.linear = nn.Linear(hidden_dim, patch_values)

    def forward(self, x, vec):
        shift, scale = self.modulation(vec)[:, None].chunk(2, dim=-1)  # (B, 1, D) each
        x = torch.addcmul(shift, F.layer_norm(x, x.shape[-1:], eps=EPS), 1 + scale)
        # a float32 Linear (the official app's high_quality_fp32_output_for_inference) gets float32 input
        return self.linear(x.to(self.linear.weight.dtype))
