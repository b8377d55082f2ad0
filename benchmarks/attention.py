"""Triton attention (kernels.attention) vs torch's scaled_dot_product_attention backends, side by side.

    python benchmarks/attention.py                           # CUDA, bf16, B=1, 24 heads x 128, 4k-30k tokens
    python benchmarks/attention.py --lengths 4096 --dtype fp16 --head-dim 64
    python benchmarks/attention.py --device cpu --lengths 1024   # no Triton on the CPU: dispatcher vs plain SDPA

Alternating calls, median of --runs samples (each the mean of --inner calls). TFLOP/s = 4 B N Lq Lk Dh / t.
The last --pad keys are padding (batched text): "+lens" passes their valid lengths (kv_lens, the transformer's
form; the goal is <= 3% over the unpadded call), "+mask" a (B, Lk) bool key mask, as SDPA takes it.
SDPA runs on (B, N, L, Dh) transposed views, as the torch path does.
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


def median_times(fns, device, runs, inner, graph=False):
    """{name: median seconds per call}; every fn warmed up first (autotuning, compilation), then alternated.

    graph=True (CUDA): each fn's `inner` calls are captured once in a CUDA graph and the replays are timed, so
    the figure is GPU time alone, without the host's launch overhead (METHOD: many small launches).
    """
    run = timer(device)
    for fn in fns.values():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if graph and device.type == "cuda":
        graphs = {}
        for name, fn in fns.items():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # a warm-up on a side stream, as torch.cuda.graphs asks before capture
            torch.cuda.current_stream().wait_stream(stream)
            graphs[name] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[name]):
                for _ in range(inner):
                    fn()
        fns, inner_calls = {name: g.replay for name, g in graphs.items()}, inner
        for replay in fns.values():  # one untimed replay each: first-launch costs stay out of the samples
            replay()
        torch.cuda.synchronize()
        samples = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                samples[name].append(run(fn, 1) / inner_calls)
        return {name: statistics.median(t) for name, t in samples.items()}
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
    lens = mask.sum(dim=1, dtype=torch.int32)  # (B,): the mask is a valid prefix
    fns = {
        f"ours ({ours})": lambda: kernels.attention(q, k, v, backend=ours),
        f"ours ({ours}) +lens": lambda: kernels.attention(q, k, v, kv_lens=lens, backend=ours),
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
            for form in ("+lens", "+mask"):
                name = f"{ours_name} {form}"
                if name in med:
                    print(f"  padded keys, ours {form}: {100 * (med[name] / med[ours_name] - 1):+.1f}% over unpadded")
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
