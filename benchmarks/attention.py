"""Triton attention (kernels.attention) vs torch's scaled_dot_product_attention backends, side by side.

    python benchmarks/attention.py                           # CUDA, bf16, B=1, 24 heads x 128, 4k-30k tokens
    python benchmarks/attention.py --lengths 4096 --dtype fp16 --head-dim 64
    python benchmarks/attention.py --device cpu --lengths 1024   # no Triton on the CPU: dispatcher vs plain SDPA

Alternating calls, median of --runs samples (each the mean of --inner calls). TFLOP/s = 4 B N Lq Lk Dh / t.
"+mask" runs pass a (B, Lk) key mask whose last --pad keys are False (padded text tokens); the kernel's goal
is <= 3% over its unmasked call. SDPA runs on (B, N, L, Dh) transposed views, as the torch path does.
"""
import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def timer(device):
    """fn, inner -> seconds per call (CUDA events on a GPU, perf_counter on the CPU)."""
    def run(fn, inner):
        if device.type != "cuda":
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - start) / inner
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3 / inner

    return run


def median_times(fns, device, runs, inner):
    """{name: median seconds per call}; every fn warmed up first (autotuning, compilation), then alternated."""
    run = timer(device)
    for fn in fns.values():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    samples = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            samples[name].append(run(fn, inner))
    return {name: statistics.median(t) for name, t in samples.items()}


def sdpa(backend, q, k, v, mask=None):
    """SDPA restricted to one backend (None = torch's choice) on (B, N, L, Dh) views of (B, L, N, Dh) tensors."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}.get(backend)
    attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, Lk)

    def call():
        with sdpa_kernel(chosen) if chosen is not None else contextlib.nullcontext():
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=attn_mask).transpose(1, 2)  # (B, Lq, N, Dh)
    return call


def candidates(q, k, v, mask, device):
    """The implementations to time, by name; ours is kernels.attention with the backend the device allows."""
    ours = "triton" if device.type == "cuda" else "torch"
    fns = {
        f"ours ({ours})": lambda: kernels.attention(q, k, v, backend=ours),
        f"ours ({ours}) +mask": lambda: kernels.attention(q, k, v, kv_mask=mask, backend=ours),
    }
    backends = ("flash", "cudnn", "efficient") if device.type == "cuda" else (None,)
    for backend in backends:
        name = f"sdpa {backend or 'default'}"
        fns[name] = sdpa(backend, q, k, v)
        fns[name + " +mask"] = sdpa(backend, q, k, v, mask)
    usable = {}
    for name, fn in fns.items():
        try:
            fn()
            usable[name] = fn
        except RuntimeError as err:  # a backend that does not take these inputs (flash: no mask)
            print(f"  {name}: unavailable ({str(err).splitlines()[0][:100]})")
    return usable


def bench(lengths, heads=24, head_dim=128, batch=1, dtype=torch.bfloat16, device="cuda", pad=200, runs=7,
          inner=3):
    """Time every candidate at each length; prints a table and returns rows of dicts (for gpu_check.py)."""
    device = torch.device(device)
    rows = []
    with torch.inference_mode():
        for L in lengths:
            gen = torch.Generator(device=device).manual_seed(L)
            q, k, v = (torch.randn(batch, L, heads, head_dim, generator=gen, device=device, dtype=dtype)
                       for _ in range(3))
            mask = torch.ones(batch, L, dtype=torch.bool, device=device)
            mask[:, L - pad:] = False
            flops = 4 * batch * heads * L * L * head_dim
            print(f"L = {L}: q/k/v ({batch}, {L}, {heads}, {head_dim}) {dtype}, mask: last {pad} keys padded")
            fns = candidates(q, k, v, mask, device)
            med = median_times(fns, device, runs, inner)
            ours_name = next(iter(fns))
            for name, t in med.items():
                row = dict(L=L, impl=name, ms=t * 1e3, tflops=flops / t / 1e12, time_over_ours=t / med[ours_name])
                rows.append(row)
                print(f"  {name:>26}: {t * 1e3:9.3f} ms  {row['tflops']:7.3g} TFLOP/s  "
                      f"time / ours {row['time_over_ours']:.2f}")
            masked = [n for n in med if n.startswith("ours") and n.endswith("+mask")]
            if masked:
                print(f"  padded-key overhead of ours: {100 * (med[masked[0]] / med[ours_name] - 1):+.1f}%")
            del q, k, v
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 30000])
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--pad", type=int, default=200, help="padded (masked) keys at the end of each row")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--inner", type=int, default=3)
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {name} | torch {torch.__version__} | dtype {args.dtype} | median of {args.runs} x {args.inner}")
    bench(args.lengths, args.heads, args.head_dim, args.batch, DTYPES[args.dtype], args.device, args.pad,
          args.runs, args.inner)


if __name__ == "__main__":
    main()
