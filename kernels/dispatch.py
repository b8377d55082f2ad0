"""Which exact attention path a CUDA call takes: our Triton kernel or SDPA's cuDNN backend, by a measured table.

On an H200 (benchmarks/RESULTS.md, 2026-11-26) cuDNN's attention ran 1.1-1.4x our kernel at 4k-16k tokens without a
mask, while our kernel skips padded keys (kv_lens) for free and takes any mask. So for each call the dispatcher asks
the table measured on this device (`python benchmarks/attention.py --write-table`), for this dtype and head dim, at
the measured length nearest the call's key count (within a factor of 2): cuDNN where it timed faster there, our
kernel everywhere else (a mask or kv_lens, a device, dtype, head dim or length not measured, no table).

The table: kernels/attention_table.json, or the file FRAMEPACK_ATTENTION_TABLE names:
    {"format": 1, "entries": [{"device": "NVIDIA H200", "dtype": "bfloat16", "head_dim": 128, "tokens": 4096,
                               "triton_ms": 0.61, "cudnn_ms": 0.52, "torch": "2.11.0", "date": "..."}, ...]}
`attention_backend_for(q, k, ...)` says what a call would run ("triton", "cudnn" or "torch").
"""
import functools
import json
import math
import os
from pathlib import Path

TABLE_FILE = Path(__file__).with_name("attention_table.json")
TABLE_ENV = "FRAMEPACK_ATTENTION_TABLE"
TABLE_FORMAT = 1
REACH = 2.0  # a measurement speaks for lengths within this factor of its own
_tables = {}  # path -> entries, read once per process: the dispatcher asks on every attention call


def table():
    """The entries kernels.attention dispatches by: the table file's (FRAMEPACK_ATTENTION_TABLE or the shipped
    one), read on first use."""
    path = os.environ.get(TABLE_ENV) or str(TABLE_FILE)
    if path not in _tables:
        _tables[path] = load_table(path)
    return _tables[path]


def load_table(path=None):
    """The table's entries (a list of dicts), read now; [] when there is no file. ValueError naming the file if
    damaged."""
    path = Path(path or os.environ.get(TABLE_ENV) or TABLE_FILE)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not an attention table ({e})") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT or not isinstance(data.get("entries"), list):
        raise ValueError(f"{path}: not an attention table (format {TABLE_FORMAT} with a list of entries)")
    entries = []
    for i, e in enumerate(data["entries"]):
        ok = isinstance(e, dict) and isinstance(e.get("device"), str) and isinstance(e.get("dtype"), str) and all(
            isinstance(e.get(f), (int, float)) and not isinstance(e.get(f), bool) and math.isfinite(e[f]) and e[f] > 0
            for f in ("head_dim", "tokens", "triton_ms", "cudnn_ms"))
        if not ok:
            raise ValueError(f"{path}: entry {i} needs device, dtype, and head_dim, tokens, triton_ms, cudnn_ms > 0")
        entries.append(e)
    return entries


def choose_backend(device, dtype, head_dim, tokens, masked, entries):
    """'cudnn' or 'triton' for a CUDA call: cuDNN only without a mask, where the entry of this device, dtype and head
    dim measured nearest `tokens` (in ratio, within REACH; the shorter on a tie) timed cuDNN faster."""
    if masked:
        return "triton"
    near = [e for e in entries if e["device"] == device and e["dtype"] == dtype and e["head_dim"] == head_dim
            and max(tokens / e["tokens"], e["tokens"] / tokens) <= REACH]
    if not near:
        return "triton"
    best = min(near, key=lambda e: (abs(math.log(tokens / e["tokens"])), e["tokens"]))
    return "cudnn" if best["cudnn_ms"] < best["triton_ms"] else "triton"


@functools.lru_cache(maxsize=None)
def _device_name(index):
    import torch
    return torch.cuda.get_device_name(index)


def device_name(device):
    """The CUDA device's name as torch reports it ("NVIDIA H200"), cached per device."""
    if device.index is None:
        import torch
        return _device_name(torch.cuda.current_device())
    return _device_name(device.index)


def dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def attention_backend_for(q, k, v, *, kv_mask=None, kv_lens=None, scale=None, backend="auto", table=None):
    """What kernels.attention(q, k, v, ...) runs: "triton", "cudnn" or "torch" (the CPU, autograd, a forced
    backend, inputs the kernel does not take, FRAMEPACK_KERNELS=torch). table: entries (default: table())."""
    import kernels
    return kernels._attention_backend(q, k, v, kv_mask, kv_lens, scale, backend, table)
