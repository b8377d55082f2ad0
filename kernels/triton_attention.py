"""Flash-attention forward in Triton over (B, L, N, Dh) tensors read in place, with an optional key mask.

Online softmax in base 2 with fp32 accumulators (Dao, "FlashAttention-2", Algorithm 1). One program per
(BLOCK_M queries, batch, head); explicit strides, so q/k/v slices of a fused projection need no copy.
Keys are limited in one of two ways: per-batch valid lengths (padded text at the end: the loop simply stops
early, so padding costs nothing and saves its share of the work), or a general bool mask (-inf added per
score: measured +22-43% on an H200, see benchmarks/RESULTS.md).
Callers go through kernels.attention, which validates shapes; this module assumes them valid.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from kernels.triton_util import INTERPRET, launcher, shared_memory_bytes

HEAD_DIMS = (64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634
# Block sizes in the interpreter: small, so that short test sequences still span several key blocks and a tail.
INTERPRET_BLOCKS = {"BLOCK_M": 32, "BLOCK_N": 16}

# (BLOCK_M, BLOCK_N, num_warps, num_stages) -> head dims it suits. Hopper (H100/H200, 227 KiB shared memory)
# runs two warpgroups over 128 rows; Ampere (A100, 163 KiB) the same or 64 rows. Chosen from ptxas reports for
# sm_90 and sm_80 (Triton 3.9) and a sweep on an H200 (Triton 3.6, bf16, L = 16384; benchmarks/RESULTS.md):
# 128x64 and 128x128 tiles over 8 warps lead (516-528 TFLOP/s at Dh = 128; ptxas reports spills for 128x128
# there, which cost less than they save; at Dh = 64 they ran at 330-391); 4 warps over 128 rows spill on sm_80
# and ran at 181 TFLOP/s on the H200 at Dh = 128 (429 at Dh = 64). The last entry is the fallback for fp32,
# short query blocks and small shared memory.
TILES = {
    (128, 64, 8, 3): (64, 128),
    (128, 64, 8, 4): (128,),
    (128, 128, 8, 3): (128,),
    (128, 64, 4, 3): (64,),
    (64, 64, 4, 2): (64, 128),
}
CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in TILES]


def _prune(configs, named_args, **kwargs):
    """Keep the configs suited to Dh whose Q tile and K/V pipeline buffers fit the device's shared memory,
    and only BLOCK_M = 64 when Lq <= 64."""
    args = {**named_args, **kwargs}
    q, head_dim, lq = args["Q"], args["HEAD_DIM"], args["Lq"]
    budget = shared_memory_bytes(q.device)
    kept = []
    for config in configs:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        suits = TILES.get((block_m, block_n, config.num_warps, config.num_stages), ())
        smem = (block_m + 2 * block_n * config.num_stages) * head_dim * q.element_size()
        if head_dim in suits and smem <= budget and (block_m <= 64 or lq > 64):
            kept.append(config)
    return kept or [configs[-1]]


@triton.jit
def _attn_block(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, cols, Lk, qk_scale,
    DTYPE: tl.constexpr, HAS_MASK: tl.constexpr, BOUNDS: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """One key block of the online softmax: updates acc (BLOCK_M, Dh), l_i and m_i (BLOCK_M,) in base 2."""
    if BOUNDS:
        in_range = cols < Lk
        k = tl.load(k_ptrs, mask=in_range[:, None], other=0.0)  # (BLOCK_N, Dh)
        v = tl.load(v_ptrs, mask=in_range[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")  # (BLOCK_M, BLOCK_N)
    else:
        qk = tl.dot(q, tl.trans(k))
    # Masked keys get -inf before the max; the mask costs one add per score and one byte per key.
    if HAS_MASK:
        if BOUNDS:
            keep = tl.load(mask_ptrs, mask=in_range, other=0) != 0
        else:
            keep = tl.load(mask_ptrs) != 0
        qk += tl.where(keep, 0.0, float("-inf"))[None, :]
    elif BOUNDS:
        qk += tl.where(in_range, 0.0, float("-inf"))[None, :]
    return online_softmax_step(acc, l_i, m_i, qk, v, qk_scale, DTYPE, HAS_MASK, IEEE, UPCAST)


@triton.jit
def online_softmax_step(
    acc, l_i, m_i, qk, v, qk_scale,
    DTYPE: tl.constexpr, ANY_ROW_EMPTY: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr,
):
    """Folds scores qk (BLOCK_M, BLOCK_N) and values v (BLOCK_N, Dh) into acc (BLOCK_M, Dh), l_i and m_i
    (BLOCK_M,): running max in base 2, rescale, exp2, p @ v. ANY_ROW_EMPTY: a row may have seen only -inf."""
    m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    if ANY_ROW_EMPTY:
        # Rows with no visible key so far keep m = -inf; subtract 0 instead so exp2 gives 0, not NaN.
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_new_safe = m_new
    p = tl.exp2(qk * qk_scale - m_new_safe[:, None])
    alpha = tl.exp2(m_i - m_new_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if IEEE:
        acc = tl.dot(p, v, acc, input_precision="ieee")
    elif UPCAST:
        # The interpreter cannot do bf16 arithmetic: compute in fp32 with p rounded as the GPU path rounds it.
        acc = tl.dot(p.to(DTYPE).to(tl.float32), v, acc)
    else:
        acc = tl.dot(p.to(DTYPE), v, acc)
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _attn_fwd_kernel(
    Q, K, V, MASK, LENS, Out,
    stride_qb, stride_ql, stride_qn, stride_qd,
    stride_kb, stride_kl, stride_kn, stride_kd,
    stride_vb, stride_vl, stride_vn, stride_vd,
    stride_mb, stride_ml,
    stride_ob, stride_ol, stride_on, stride_od,
    N, Lq, Lk, qk_scale, LQ_BUCKET, LK_BUCKET,
    HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, HAS_LENS: tl.constexpr, IEEE: tl.constexpr,
    UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Out[b, m, n] = softmax(scale * q k^T + mask) v for BLOCK_M queries of one (batch, head).

    LENS (B,) int: only keys j < LENS[b] (clamped to [0, Lk]) are attended. LQ_BUCKET / LK_BUCKET (powers of
    two of Lq / Lk) only key the autotuner; qk_scale = scale * log2(e).
    """
    pid_m = tl.program_id(0)
    pid_bn = tl.program_id(1)
    b = (pid_bn // N).to(tl.int64)
    n = (pid_bn % N).to(tl.int64)
    DTYPE = Out.dtype.element_ty

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = rows < Lq
    if HAS_LENS:
        # Keys past the batch's valid length are never read: the loops below end there.
        # Clamped in the stored dtype (int32 or int64) before the cast, so huge or negative values stay in range.
        Lk = tl.minimum(tl.maximum(tl.load(LENS + b), 0), Lk).to(tl.int32)

    q_ptrs = Q + b * stride_qb + n * stride_qn + rows.to(tl.int64)[:, None] * stride_ql + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, Dh)
    if UPCAST:
        q = q.to(tl.float32)
    k_ptrs = K + b * stride_kb + n * stride_kn + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd
    v_ptrs = V + b * stride_vb + n * stride_vn + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd
    mask_ptrs = MASK + b * stride_mb + offs_n * stride_ml

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    # Whole key blocks without bounds checks, then one masked tail block when Lk is not a multiple of BLOCK_N.
    n_full = Lk // BLOCK_N
    for _ in range(0, n_full):
        acc, l_i, m_i = _attn_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, offs_n, Lk, qk_scale,
            DTYPE, HAS_MASK, False, IEEE, UPCAST,
        )
        # Pointers advance in 64-bit, so positions past 2^31 elements are safe.
        k_ptrs += BLOCK_N * stride_kl
        v_ptrs += BLOCK_N * stride_vl
        mask_ptrs += BLOCK_N * stride_ml
    if n_full * BLOCK_N < Lk:
        acc, l_i, m_i = _attn_block(
            acc, l_i, m_i, q, k_ptrs, v_ptrs, mask_ptrs, n_full * BLOCK_N + offs_n, Lk, qk_scale,
            DTYPE, HAS_MASK, True, IEEE, UPCAST,
        )

    if HAS_MASK or HAS_LENS:
        # A row whose keys are all masked gives 0, as torch's scaled_dot_product_attention does.
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    o_ptrs = Out + b * stride_ob + n * stride_on + rows.to(tl.int64)[:, None] * stride_ol + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(DTYPE), mask=row_ok[:, None])


_attn_fwd_tuned = triton.autotune(
    configs=CONFIGS,
    key=["HEAD_DIM", "HAS_MASK", "HAS_LENS", "LQ_BUCKET", "LK_BUCKET"],
    prune_configs_by={"early_config_prune": _prune},
)(_attn_fwd_kernel)


@triton_op("framepack::attention_fwd", mutates_args=())
def attention_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_mask: Optional[torch.Tensor],
    kv_lens: Optional[torch.Tensor], scale: float,
) -> torch.Tensor:
    """Triton attention: q (B, Lq, N, Dh), k/v (B, Lk, N, Dh), kv_mask bool (B, Lk) or None, kv_lens int (B,)
    or None -> (B, Lq, N, Dh). A torch.library op, so torch.compile traces it."""
    return _attention(q, k, v, kv_mask, kv_lens, scale, traceable=True)


def attention_fwd_eager(q, k, v, kv_mask, kv_lens, scale):
    """attention_fwd without the torch.library layer, for eager calls (less launch overhead; not traceable)."""
    return _attention(q, k, v, kv_mask, kv_lens, scale, traceable=False)


def _attention(q, k, v, kv_mask, kv_lens, scale, traceable):
    B, Lq, N, Dh = q.shape
    Lk = k.shape[1]
    out = torch.empty((B, Lq, N, Dh), dtype=q.dtype, device=q.device)  # (B, Lq, N, Dh)
    if out.numel() == 0:
        return out
    has_mask, has_lens = kv_mask is not None, kv_lens is not None
    # Triton loads a bool tensor as bytes; an unused pointer gets q as a stand-in the kernel never reads.
    mask = kv_mask if has_mask else q
    mask_strides = (kv_mask.stride(0), kv_mask.stride(1)) if has_mask else (0, 0)
    lens = kv_lens.contiguous() if has_lens else q  # read as LENS[b]: one element per batch entry, no stride
    blocks = INTERPRET_BLOCKS if INTERPRET else {}

    def grid(meta):
        return (triton.cdiv(Lq, meta["BLOCK_M"]), B * N)

    launcher(_attn_fwd_tuned, traceable)[grid](
        q, k, v, mask, lens, out,
        *q.stride(), *k.stride(), *v.stride(), *mask_strides, *out.stride(),
        N, Lq, Lk, scale * LOG2E, triton.next_power_of_2(int(Lq)), triton.next_power_of_2(int(Lk)),
        HEAD_DIM=Dh, HAS_MASK=has_mask, HAS_LENS=has_lens, IEEE=q.dtype == torch.float32,
        UPCAST=INTERPRET and q.dtype == torch.bfloat16, **blocks,
    )
    return out
