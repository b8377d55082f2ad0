"""Fused per-head RMSNorm + HunyuanVideo's real-valued rotary embedding in Triton: one read, one write of x.

x (B, L, N, Dh) is read in place through its strides; each program normalises BLOCK_R (token, head) rows
in fp32, rotates pairs (2i, 2i+1) of the rows whose token is below n_rope, and writes a new tensor.
Callers go through kernels.apply_rope / kernels.rms_norm_rope, which validate shapes.
"""
import torch
import triton
import triton.language as tl
from torch.library import triton_op

from kernels.triton_util import INTERPRET, launcher

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
HEAD_DIMS = (16, 32, 64, 128, 256)
INTERPRET_BLOCKS = {"BLOCK_R": 16}

# Memory-bound: enough rows in flight per program to cover DRAM latency, a few warps to issue the loads.
CONFIGS = [
    triton.Config({"BLOCK_R": 16}, num_warps=4),
    triton.Config({"BLOCK_R": 32}, num_warps=4),
    triton.Config({"BLOCK_R": 64}, num_warps=8),
    triton.Config({"BLOCK_R": 128}, num_warps=8),
]


@triton.jit
def _rms_norm_rope_kernel(
    X, W, COS, SIN, Out,
    stride_xb, stride_xl, stride_xn, stride_xd,
    stride_ob, stride_ol, stride_on, stride_od,
    stride_w, stride_cl, stride_cd, stride_sl, stride_sd,
    N, LN, n_rope, eps,
    HEAD_DIM: tl.constexpr, HAS_NORM: tl.constexpr, HAS_ROPE: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Out = rope(x * rsqrt(mean(x^2) + eps) * w) over rows r = l * N + n of batch b; LN = L * N."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < LN
    tok = rows // N
    head = rows % N
    offs_d = tl.arange(0, HEAD_DIM)

    x_rows = b * stride_xb + tok.to(tl.int64) * stride_xl + head.to(tl.int64) * stride_xn
    x = tl.load(X + x_rows[:, None] + offs_d[None, :] * stride_xd, mask=row_ok[:, None], other=0.0)
    x = x.to(tl.float32)  # (BLOCK_R, Dh)
    if HAS_NORM:
        rstd = tl.rsqrt(tl.sum(x * x, 1) / HEAD_DIM + eps)
        w = tl.load(W + offs_d * stride_w).to(tl.float32)
        x = x * rstd[:, None] * w[None, :]
    if HAS_ROPE:
        # Tokens past n_rope (text) read cos = 1, sin = 0: normalised, not rotated, no branch.
        rot = row_ok & (tok < n_rope)
        cos = tl.load(COS + tok[:, None] * stride_cl + offs_d[None, :] * stride_cd, mask=rot[:, None], other=1.0)
        sin = tl.load(SIN + tok[:, None] * stride_sl + offs_d[None, :] * stride_sd, mask=rot[:, None], other=0.0)
        x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_R, HEAD_DIM // 2, 2)))  # (BLOCK_R, Dh/2) each
        rotated = tl.reshape(tl.join(-x_odd, x_even), (BLOCK_R, HEAD_DIM))  # (-x1, x0, -x3, x2, ...)
        x = x * cos.to(tl.float32) + rotated * sin.to(tl.float32)
    o_rows = b * stride_ob + tok.to(tl.int64) * stride_ol + head.to(tl.int64) * stride_on
    tl.store(Out + o_rows[:, None] + offs_d[None, :] * stride_od, x.to(Out.dtype.element_ty), mask=row_ok[:, None])


_rms_norm_rope_tuned = triton.autotune(configs=CONFIGS, key=["HEAD_DIM", "HAS_NORM", "HAS_ROPE"])(
    _rms_norm_rope_kernel
)


@triton_op("framepack::rms_norm_rope", mutates_args=())
def rms_norm_rope_fwd(
    x: torch.Tensor,
    weight: torch.Tensor | None,
    cos: torch.Tensor | None,
    sin: torch.Tensor | None,
    eps: float,
    n_rope: int,
) -> torch.Tensor:
    """x (B, L, N, Dh): RMSNorm with weight (Dh,) unless None, rotary by cos/sin (n_rope, Dh) unless None."""
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
        return (triton.cdiv(L * N, meta["BLOCK_R"]), B)

    launcher(_rms_norm_rope_tuned)[grid](
        x, w, c, s, out,
        *x.stride(), *out.stride(),
        w.stride(0) if has_norm else 0,
        c.stride(0) if has_rope else 0, c.stride(1) if has_rope else 0,
        s.stride(0) if has_rope else 0, s.stride(1) if has_rope else 0,
        N, L * N, n_rope, eps,
        HEAD_DIM=Dh, HAS_NORM=has_norm, HAS_ROPE=has_rope, **blocks,
    )
    return out
