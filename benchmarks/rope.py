"""Fused q/k RMSNorm + RoPE (kernels.rms_norm_rope) vs the torch reference, eager and torch.compile'd,
and a plain copy of the same bytes (the bandwidth ceiling), side by side.

    python benchmarks/rope.py                          # CUDA, bf16, B=1, 24 heads x 128, 4k-30k tokens
    python benchmarks/rope.py --device cpu --lengths 4096 --dtype fp32

x is the q slice of a fused (B, L, 3, N, Dh) projection, as in the transformer; the last --text tokens are
normalised, not rotated. GB/s counts one read and one write of x; the goals are >= 1.4x torch.compile and
>= 70% of the copy's GB/s. On CUDA each implementation is timed twice: called eagerly (host launch overhead
included; it dominates below ~20k tokens) and replayed from a CUDA graph (GPU time alone).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
from benchmarks.common import DTYPES, kernel_parser, median_times, print_header  # noqa: E402
from kernels import reference  # noqa: E402


def bench(lengths, heads=24, head_dim=128, batch=1, dtype=torch.bfloat16, device="cuda", text=256, runs=7,
          inner=10, compile=True, graph=None):
    """Time each implementation at each length; prints a table and returns rows of dicts (for gpu_check.py)."""
    device = torch.device(device)
    modes = (False, True) if device.type == "cuda" and graph is None else (bool(graph) and device.type == "cuda",)
    compiled = torch.compile(reference.rms_norm_rope, dynamic=False) if compile else None
    rows = []
    with torch.inference_mode():
        for L in lengths:
            gen = torch.Generator(device=device).manual_seed(L)
            qkv = torch.randn(batch, L, 3, heads, head_dim, generator=gen, device=device, dtype=dtype)
            x = qkv[:, :, 0]  # (B, L, N, Dh), rows strided as the transformer's q
            weight = torch.randn(head_dim, device=device, dtype=dtype)
            n_rope = L - text
            angles = torch.rand(n_rope, head_dim // 2, device=device).repeat_interleave(2, dim=-1)  # (n, Dh)
            cos, sin = angles.cos(), angles.sin()
            src, dst = x.contiguous(), torch.empty_like(x, memory_format=torch.contiguous_format)
            ours = "triton" if device.type == "cuda" else "torch"
            fns = {
                f"ours ({ours})": lambda: kernels.rms_norm_rope(x, weight, cos, sin, eps=1e-6, n_rope=n_rope,
                                                                 backend=ours),
                "torch eager": lambda: reference.rms_norm_rope(x, weight, cos, sin, 1e-6, n_rope=n_rope),
                "copy": lambda: dst.copy_(src),
            }
            if compiled is not None:
                fns["torch.compile"] = lambda: compiled(x, weight, cos, sin, 1e-6, n_rope=n_rope)
            nbytes = 2 * x.numel() * x.element_size()
            print(f"L = {L}: x ({batch}, {L}, {heads}, {head_dim}) {dtype} strided, {text} text tokens not rotated")
            for in_graph in modes:
                try:
                    med = median_times(fns, device, runs, inner, graph=in_graph)
                except RuntimeError as err:  # a capture that fails is reported, the eager figures stand
                    print(f"  CUDA graph timing failed: {str(err).splitlines()[0][:200]}")
                    continue
                ours_name, timing = next(iter(fns)), "CUDA graph" if in_graph else "eager"
                for name, t in med.items():
                    row = dict(L=L, impl=name, timing=timing, us=t * 1e6, gbps=nbytes / t / 1e9,
                               time_over_ours=t / med[ours_name])
                    rows.append(row)
                    print(f"  {timing:>10} {name:>16}: {t * 1e6:10.1f} us  {row['gbps']:8.1f} GB/s  "
                          f"time / ours {row['time_over_ours']:.2f}")
                print(f"  {timing}: ours reaches {100 * med['copy'] / med[ours_name]:.0f}% of the copy bandwidth")
            del qkv, x, src, dst
    return rows


def main():
    p = kernel_parser(__doc__.splitlines()[0], inner=10)
    p.add_argument("--text", type=int, default=256, help="trailing tokens that are normalised, not rotated")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C compiler on CPU)")
    args = p.parse_args()
    if not 0 <= args.text < min(args.lengths):
        p.error(f"--text {args.text} must be >= 0 and below every length (shortest: {min(args.lengths)})")
    print_header(args)
    bench(args.lengths, args.heads, args.head_dim, args.batch, DTYPES[args.dtype], args.device, args.text,
          args.runs, args.inner, not args.no_compile)


if __name__ == "__main__":
    main()
