"""Experiment: the attention kernel with its Q/K/V/O tiles moved by Hopper's bulk tensor copy engine (TMA, through
Triton's device-side tensor descriptors), timed beside the shipped kernel and SDPA's cuDNN and flash backends.

Not used by the library: kernels/triton_attention.py is the shipped kernel. This file exists so that one GPU
call decides whether the TMA variant earns its place (issue 7: attention >= 0.85x cuDNN, which the shipped
FA2-style kernel misses at 4k-16k tokens on an H200, 0.70-0.78x; benchmarks/RESULTS.md).

    python benchmarks/attention_variants.py                          # CUDA (Hopper), bf16, B=1, 24 x 128
    TRITON_INTERPRET=1 python benchmarks/attention_variants.py --smoke   # CPU interpreter, correctness only

Writes $OUT/attention_variants.json when OUT is set. Same math as the shipped kernel (online softmax in base 2,
fp32 accumulators, keys limited by per-batch lengths); the difference is only how tiles reach shared memory:
one descriptor per (batch, head) and tensor-core-friendly bulk copies instead of per-thread pointer loads.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from benchmarks.attention import sdpa  # noqa: E402
from benchmarks.common import median_times, rel_l2  # noqa: E402
from kernels.triton_attention import LOG2E, online_softmax_step  # noqa: E402
from kernels.triton_util import INTERPRET  # noqa: E402

TILES = [(128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 3), (128, 64, 8, 4), (128, 128, 8, 4)]


@triton.jit
def _tma_block(acc, l_i, m_i, q, k_desc, v_desc, start, offs_n, Lk, qk_scale,
               DTYPE: tl.constexpr, BOUNDS: tl.constexpr, UPCAST: tl.constexpr):
    """One key block of the online softmax, its K/V tiles loaded through the descriptors."""
    k = k_desc.load([start, 0])  # (BLOCK_N, Dh); rows past the view's end come in as 0
    v = v_desc.load([start, 0])
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    qk = tl.dot(q, tl.trans(k))  # (BLOCK_M, BLOCK_N)
    if BOUNDS:
        qk += tl.where(start + offs_n < Lk, 0.0, float("-inf"))[None, :]
    return online_softmax_step(acc, l_i, m_i, qk, v, qk_scale, DTYPE, False, False, UPCAST)


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _attn_fwd_tma(
    Q, K, V, LENS, Out,
    stride_qb, stride_ql, stride_qn, stride_kb, stride_kl, stride_kn,
    stride_vb, stride_vl, stride_vn, stride_ob, stride_ol, stride_on,
    N, Lq, Lk, qk_scale,
    HEAD_DIM: tl.constexpr, HAS_LENS: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """As kernels.triton_attention._attn_fwd_kernel (no bool mask), tiles through tensor descriptors.

    Each (batch, head) slice of q/k/v/out is a 2D (L, Dh) view with row stride stride_*l and unit stride in Dh.
    """
    pid_m = tl.program_id(0)
    pid_bn = tl.program_id(1)
    b = (pid_bn // N).to(tl.int64)
    n = (pid_bn % N).to(tl.int64)
    DTYPE = Out.dtype.element_ty
    Lk_all = Lk
    if HAS_LENS:
        Lk = tl.minimum(tl.maximum(tl.load(LENS + b), 0), Lk).to(tl.int32)

    q_desc = tl.make_tensor_descriptor(Q + b * stride_qb + n * stride_qn, shape=[Lq, HEAD_DIM],
                                       strides=[stride_ql, 1], block_shape=[BLOCK_M, HEAD_DIM])
    k_desc = tl.make_tensor_descriptor(K + b * stride_kb + n * stride_kn, shape=[Lk_all, HEAD_DIM],
                                       strides=[stride_kl, 1], block_shape=[BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(V + b * stride_vb + n * stride_vn, shape=[Lk_all, HEAD_DIM],
                                       strides=[stride_vl, 1], block_shape=[BLOCK_N, HEAD_DIM])
    o_desc = tl.make_tensor_descriptor(Out + b * stride_ob + n * stride_on, shape=[Lq, HEAD_DIM],
                                       strides=[stride_ol, 1], block_shape=[BLOCK_M, HEAD_DIM])

    q = q_desc.load([pid_m * BLOCK_M, 0])  # (BLOCK_M, Dh); rows past Lq come in as 0
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)

    # Whole key blocks without bounds work, then one tail block with -inf past Lk (as the shipped kernel).
    n_full = Lk // BLOCK_N
    for i in range(0, n_full):
        acc, l_i, m_i = _tma_block(acc, l_i, m_i, q, k_desc, v_desc, i * BLOCK_N, offs_n, Lk, qk_scale,
                                   DTYPE, False, UPCAST)
    if n_full * BLOCK_N < Lk:
        acc, l_i, m_i = _tma_block(acc, l_i, m_i, q, k_desc, v_desc, n_full * BLOCK_N, offs_n, Lk, qk_scale,
                                   DTYPE, True, UPCAST)

    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # no key at all: 0
    o_desc.store([pid_m * BLOCK_M, 0], (acc / l_i[:, None]).to(DTYPE))  # rows past Lq are not written


def _allocator(size, alignment, stream):
    """Scratch for device-side tensor descriptors (Triton asks for it when a kernel builds descriptors)."""
    return torch.empty(size, dtype=torch.int8, device="cuda" if torch.cuda.is_available() else "cpu")


def attention_tma(q, k, v, kv_lens=None, tile=(128, 128, 8, 3)):
    """q (B, Lq, N, Dh), k/v (B, Lk, N, Dh) with unit stride in Dh and 16-byte aligned rows -> (B, Lq, N, Dh)."""
    B, Lq, N, Dh = q.shape
    block_m, block_n, warps, stages = tile
    if INTERPRET:
        block_m, block_n = 32, 16
    triton.set_allocator(_allocator)
    out = torch.empty((B, Lq, N, Dh), dtype=q.dtype, device=q.device)
    extra = {} if INTERPRET else dict(num_warps=warps, num_stages=stages)
    _attn_fwd_tma[(triton.cdiv(Lq, block_m), B * N)](
        q, k, v, q if kv_lens is None else kv_lens.contiguous(), out,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        N, Lq, k.shape[1], Dh**-0.5 * LOG2E,
        HEAD_DIM=Dh, HAS_LENS=kv_lens is not None, UPCAST=INTERPRET and q.dtype == torch.bfloat16,
        BLOCK_M=block_m, BLOCK_N=block_n, **extra,
    )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU interpreter, toy shapes, correctness only")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    p.add_argument("--pad", type=int, default=200, help="padded keys at the end (kv_lens runs)")
    args = p.parse_args()
    if args.smoke != INTERPRET:
        sys.exit("run on a CUDA machine without TRITON_INTERPRET, or with --smoke and TRITON_INTERPRET=1")
    device = torch.device("cpu" if args.smoke else "cuda")
    heads, lengths, dtype = (2, [37, 70], torch.float16) if args.smoke else (24, args.lengths, torch.bfloat16)
    results = {"device": "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name(), "rows": []}
    with torch.inference_mode():
        for L in lengths:
            gen = torch.Generator(device=device).manual_seed(L)
            qkv = torch.randn(1, L, 3, heads, 128, generator=gen, device=device, dtype=dtype)
            q, k, v = qkv.unbind(2)  # strided views of a fused projection, as in the transformer
            pad = min(args.pad, L // 4)
            lens = torch.tensor([L - pad], dtype=torch.int32, device=device)
            ref = kernels.attention(q.float(), k.float(), v.float(), backend="torch")
            ref_lens = kernels.attention(q.float(), k.float(), v.float(), kv_lens=lens, backend="torch")
            fns = {"shipped": lambda: kernels.attention(q, k, v, backend="triton"),
                   "shipped +lens": lambda: kernels.attention(q, k, v, kv_lens=lens, backend="triton")}
            for tile in TILES[:1] if args.smoke else TILES:
                for form, kw in (("", {}), (" +lens", {"kv_lens": lens})):
                    name = f"tma {tile}{form}"
                    try:
                        err = rel_l2(attention_tma(q, k, v, tile=tile, **kw), ref_lens if kw else ref)
                        results["rows"].append(dict(L=L, impl=name, err=err))
                        print(f"L {L} {name}: rel. L2 {err:.2e}", flush=True)
                        fns[name] = lambda tile=tile, kw=kw: attention_tma(q, k, v, tile=tile, **kw)
                    except Exception as exc:  # noqa: BLE001 - a variant that does not build is a result
                        results["rows"].append(dict(L=L, impl=name, error=str(exc).splitlines()[0][:300]))
                        print(f"L {L} {name}: {results['rows'][-1]['error']}", flush=True)
            if args.smoke:
                continue
            fns["sdpa cudnn"] = sdpa("cudnn", q, k, v)
            fns["sdpa flash"] = sdpa("flash", q, k, v)
            med = median_times(fns, device, runs=7, inner=3)
            flops = 4 * heads * L * L * 128
            for name, t in med.items():
                row = dict(L=L, impl=name, ms=t * 1e3, tflops=flops / t / 1e12, cudnn_over=med["sdpa cudnn"] / t)
                results["rows"].append(row)
                print(f"L {L} {name:>28}: {t * 1e3:8.3f} ms {row['tflops']:6.0f} TFLOP/s  "
                      f"{row['cudnn_over']:.2f}x cuDNN", flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "attention_variants.json").write_text(json.dumps(results, indent=1))
    errors = [r for r in results["rows"] if r.get("err", 0) > 2e-2]
    if errors:
        sys.exit(f"variants off the reference: {errors}")


if __name__ == "__main__":
    main()
