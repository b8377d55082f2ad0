"""Triton attention (kernels.attention) vs torch's scaled_dot_product_attention backends, side by side.

    python benchmarks/attention.py                           # CUDA, bf16, B=1, 24 heads x 128, 4k-30k tokens
    python benchmarks/attention.py --lengths 4096 --dtype fp16 --head-dim 64
    python benchmarks/attention.py --device cpu --lengths 1024   # no Triton on the CPU: dispatcher vs plain SDPA
    python benchmarks/attention.py --write-table                 # CUDA: this device's row of kernels/dispatch.py

Alternating calls, median of --runs samples (each the mean of --inner calls). TFLOP/s = 4 B N Lq Lk Dh / t.
The last --pad keys are padding (batched text): "+lens" passes their valid lengths (kv_lens, the transformer's
form; the goal is <= 3% over the unpadded call), "+mask" a (B, Lk) bool key mask, as SDPA takes it.
SDPA runs on (B, N, L, Dh) transposed views, as the torch path does.
"""
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kernels  # noqa: E402
import kernels.dispatch  # noqa: E402
from benchmarks.common import DTYPES, kernel_parser, median_times, print_header  # noqa: E402

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
    if device.type == "cuda":  # what the dispatcher picks from the table (kernels/dispatch.py)
        picked = kernels.dispatch.attention_backend_for(q, k, v)
        fns[f"ours (auto: {picked})"] = lambda: kernels.attention(q, k, v)
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


def table_entries(rows, device, dtype, head_dim):
    """kernels/dispatch.py's table entries from bench()'s rows: our Triton kernel and SDPA's cuDNN, unmasked."""
    import datetime
    by = {(r["L"], r["impl"]): r["ms"] for r in rows}
    entries = []
    for L in sorted({r["L"] for r in rows}):
        if (L, "ours (triton)") in by and (L, "sdpa cudnn") in by:
            entries.append({"device": device, "dtype": str(dtype).removeprefix("torch."), "head_dim": head_dim,
                            "tokens": L, "triton_ms": by[L, "ours (triton)"], "cudnn_ms": by[L, "sdpa cudnn"],
                            "torch": torch.__version__, "date": datetime.date.today().isoformat()})
    return entries


def write_table(path, entries):
    """Merge `entries` into the table at `path` (replacing those of the same device, dtype, head dim, length)."""
    import json

    from framepack_native.files import write_text_atomic
    from kernels import dispatch
    key = ("device", "dtype", "head_dim", "tokens")
    old = dispatch.load_table(path) if Path(path).exists() else []
    new = {tuple(e[k] for k in key): e for e in old + entries}
    write_text_atomic(path, json.dumps({"format": dispatch.TABLE_FORMAT, "entries": list(new.values())}, indent=1))


def main():
    p = kernel_parser(__doc__.splitlines()[0], inner=3)
    p.add_argument("--pad", type=int, default=200, help="padded (masked) keys at the end of each row")
    p.add_argument("--write-table", metavar="FILE", nargs="?", const=str(kernels.dispatch.TABLE_FILE),
                   help="merge the Triton / cuDNN times into the dispatcher's table (default kernels/"
                        "attention_table.json)")
    args = p.parse_args()
    print_header(args)
    rows = bench(args.lengths, args.heads, args.head_dim, args.batch, DTYPES[args.dtype], args.device, args.pad,
                 args.runs, args.inner)
    if args.write_table:
        entries = table_entries(rows, torch.cuda.get_device_name(args.device), DTYPES[args.dtype], args.head_dim)
        write_table(args.write_table, entries)
        print(f"wrote {len(entries)} entries to {args.write_table}")


if __name__ == "__main__":
    main()
