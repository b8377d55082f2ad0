"""Fused per-head RMSNorm + HunyuanVideo's real-valued rotary embedding in Triton: one read, one write of x.

x (B, L, N, Dh) is read in place through its strides. Each program takes BLOCK_T tokens with all their heads
as one (BLOCK_T, N, Dh) tile: it normalises every head in fp32, loads the tokens' cos/sin rows once for all
heads (they are 4 bytes an element, the heads 2: per-head reloads would double the cache traffic), rotates
pairs (2i, 2i+1) of the tokens below n_rope, and writes a new tensor.
Callers go through kernels.apply_rope / kernels.rms_norm_rope, which validate shapes.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from kernels.triton_util import INTERPRET, launcher

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)
INTERPRET_BLOCKS = {"BLOCK_T": 4}

# Memory-bound: a few KiB of x per program in flight (24 heads x 128 x bf16 is 6 KiB a token), warps enough to
# issue the loads, 32-128 fp32 values of the tile per thread (BLOCK_T x 32 heads x Dh / threads).
CONFIGS = [
    triton.Config({"BLOCK_T": 1}, num_warps=4),
    triton.Config({"BLOCK_T": 2}, num_warps=4),
    triton.Config({"BLOCK_T": 2}, num_warps=8),
    triton.Config({"BLOCK_T": 4}, num_warps=4),
    triton.Config({"BLOCK_T": 4}, num_warps=8),
    triton.Config({"BLOCK_T": 8}, num_warps=8),
]


@triton.jit
def _rms_norm_rope_kernel(
    X, W, COS, SIN, Out,
    stride_xb, stride_xl, stride_xn, stride_xd,
    stride_ob, stride_ol, stride_on, stride_od,
    stride_w, stride_cl, stride_cd, stride_sl, stride_sd,
    L, N, n_rope, eps,
    HEAD_DIM: tl.constexpr, HEADS: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """Out = rope(x * rsqrt(mean(x^2) + eps) * w) for BLOCK_T tokens of batch b; HEADS = N rounded up to 2^k."""
    b = tl.program_id(1).to(tl.int64)
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    heads = tl.arange(0, HEADS)
    offs_d = tl.arange(0, HEAD_DIM)
    tok_ok = tok < L
    ok = (tok_ok[:, None] & (heads < N)[None, :])[:, :, None]  # (BLOCK_T, HEADS, 1)

    x_off = b * stride_xb + tok.to(tl.int64)[:, None, None] * stride_xl + heads[None, :, None] * stride_xn
    x = tl.load(X + x_off + offs_d[None, None, :] * stride_xd, mask=ok, other=0.0)
    x = x.to(tl.float32)  # (BLOCK_T, HEADS, Dh)
    if HAS_NORM:
        rstd = tl.rsqrt(tl.sum(x * x, 2) / HEAD_DIM + eps)  # (BLOCK_T, HEADS)
        w = tl.load(W + offs_d * stride_w).to(tl.float32)
        x = x * rstd[:, :, None] * w[None, None, :]
    if HAS_ROPE:
        # Tokens past n_rope (text) read cos = 1, sin = 0: normalised, not rotated, no branch.
        rot = (tok_ok & (tok < n_rope))[:, None]
        cos = tl.load(COS + tok[:, None] * stride_cl + offs_d[None, :] * stride_cd, mask=rot, other=1.0)
        sin = tl.load(SIN + tok[:, None] * stride_sl + offs_d[None, :] * stride_sd, mask=rot, other=0.0)
        pairs = tl.reshape(x, (BLOCK_T, HEADS, HEAD_DIM // 2, 2))
        x_even, x_odd = tl.split(pairs)  # (BLOCK_T, HEADS, Dh/2) each
        rotated = tl.reshape(tl.join(-x_odd, x_even), (BLOCK_T, HEADS, HEAD_DIM))  # (-x1, x0, -x3, x2, ...)
        x = x * cos.to(tl.float32)[:, None, :] + rotated * sin.to(tl.float32)[:, None, :]
    o_off = b * stride_ob + tok.to(tl.int64)[:, None, None] * stride_ol + heads[None, :, None] * stride_on
    tl.store(Out + o_off + offs_d[None, None, :] * stride_od, x.to(Out.dtype.element_ty), mask=ok)


_rms_norm_rope_tuned = triton.autotune(configs=CONFIGS, key=["HEAD_DIM", "HEADS", "HAS_NORM", "HAS_ROPE"])(
    _rms_norm_rope_kernel
)


@triton_op("framepack::rms_norm_rope", mutates_args=())
def rms_norm_rope_fwd(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    cos: Optional[torch.Tensor],
    sin: Optional[torch.Tensor],
    eps: float,
    n_rope: int,
) -> torch.Tensor:
    """x (B, L, N, Dh): RMSNorm with weight (Dh,) unless None, rotary by cos/sin (n_rope, Dh) unless None."""
    return _rms_norm_rope(x, weight, cos, sin, eps, n_rope, traceable=True)


def rms_norm_rope_fwd_eager(x, weight, cos, sin, eps, n_rope):
    """rms_norm_rope_fwd without the torch.library layer, for eager calls (less launch overhead; not traceable)."""
    return _rms_norm_rope(x, weight, cos, sin, eps, n_rope, traceable=False)


def _rms_norm_rope(x, weight, cos, sin, eps, n_rope, traceable):
    B, L, N, Dh = x.shape
    out = torch.empty((B, L, N, Dh), dtype=x.dtype, device=x.device)  # (B, L, N, Dh)
    if out.numel() == 0:
        return out
    has_norm = weight is not None
    has_rope = cos is not None and n_rope > 0
    # Unused pointers get x as a stand-in; the constexpr flags keep the kernel from reading them.
    w = weight if has_norm else x
    c = cos if has_rope else x
    s = sin if has_rope else x
    blocks = INTERPRET_BLOCKS if INTERPRET else {}

    def grid(meta):
        return (triton.cdiv(L, meta["BLOCK_T"]), B)

    launcher(_rms_norm_rope_tuned, traceable)[grid](
        x, w, c, s, out,
        *x.stride(), *out.stride(),
        w.stride(0) if has_norm else 0,
        c.stride(0) if has_rope else 0, c.stride(1) if has_rope else 0,
        s.stride(0) if has_rope else 0, s.stride(1) if has_rope else 0,
        L, N, n_rope, eps,
        HEAD_DIM=Dh, HEADS=triton.next_power_of_2(int(N)), HAS_NORM=has_norm, HAS_ROPE=has_rope, **blocks,
    )
    return out
