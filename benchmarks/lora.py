"""Time and peak host memory of applying a LoRA to the real-width transformer (2 dual + 2 single blocks by default):
rank 32 on every Linear layer diffusers names, in PEFT keys, merged into the weights and removed again, and live.

    python benchmarks/lora.py                    # real widths (24 heads x 128), bf16, on the CPU
    python benchmarks/lora.py --tiny             # toy widths (the test suite runs this)
Peak RSS is the resident set above the level before each step, sampled every 5 ms (psutil). The undo record is what
a merge keeps to restore the weights bit for bit (framepack_native.lora): the LoRA's factors in float32 and the
elements where (merged - delta) does not round back to the original (index + value).
"""
import argparse
import hashlib
import resource
import sys
import threading
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import DTYPES, device_name, work_dir  # noqa: E402
from framepack_native import lora  # noqa: E402
from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig  # noqa: E402
from tests.reference import lora as ref_lora  # noqa: E402

MIB = 1 << 20


class PeakRSS:
    """The peak resident set above its level at entry, sampled on a thread, in MiB."""

    def __enter__(self):
        self.proc, self.start, self.peak, self.done = psutil.Process(), None, 0, threading.Event()
        self.start = self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mib = (self.peak - self.start) / MIB


def timed(fn):
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, mem.mib


def build(config, dtype, seed=0):
    """The transformer with N(0, 0.02) weights in `dtype`, filled tensor by tensor (no float32 copy of the whole)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = FramePackTransformer(config)
    finally:
        torch.set_default_dtype(default)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model.eval()


def fingerprints(model):
    """{name: SHA-256 of the tensor's bytes}: checks an exact restore without a second copy of the weights."""
    return {k: hashlib.sha256(v.detach().contiguous().view(torch.uint8).numpy()).hexdigest()
            for k, v in model.state_dict().items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs=2, default=(2, 2), metavar=("DUAL", "SINGLE"))
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--dtype", choices=DTYPES, default="bf16")
    parser.add_argument("--delta", type=float, default=0.002, help="typical size of a delta entry (weights: 0.02)")
    parser.add_argument("--tiny", action="store_true", help="toy widths (FramePackTransformerConfig.tiny)")
    parser.add_argument("--dir", default=None, help="where to write the LoRA file (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    blocks = dict(num_layers=args.blocks[0], num_single_layers=args.blocks[1])
    config = FramePackTransformerConfig.tiny(**blocks) if args.tiny else FramePackTransformerConfig(**blocks)
    shapes = {n: s for n, s in ref_lora.module_shapes(ref_lora.diffusers_kwargs(config)).items() if len(s) == 2}
    model = build(config, dtype)
    params = sum(p.numel() for p in model.parameters())
    factors = ref_lora.random_peft(shapes, seed=1, ranks=(args.rank,), magnitude=args.delta)
    with work_dir(args.dir, prefix="fp_lora_") as folder:
        path = ref_lora.save(folder / "lora.safetensors", {k: v.to(dtype) for k, v in factors.items()})
        del factors
        file_mib = path.stat().st_size / MIB
        model_mib = params * torch.empty((), dtype=dtype).element_size() / MIB
        before = fingerprints(model)
        print(f"device {device_name('cpu')} | torch {torch.__version__} | dtype {args.dtype} | transformer "
              f"{args.blocks[0]} dual + {args.blocks[1]} single blocks, {'toy' if args.tiny else 'real'} widths "
              f"(hidden {config.hidden_dim}): {params / 1e9:.3f} B parameters, {model_mib:.0f} MiB")
        print(f"LoRA: rank {args.rank} on {len(shapes)} Linear layers (PEFT keys), file {file_mib:.1f} MiB")
        rss_model = psutil.Process().memory_info().rss / MIB
        handle, t_merge, m_merge = timed(lambda: lora.load_lora(model, path))  # first: no freed heap to reuse yet
        touched = sum(m.module._parameters[m.name].numel() for m in handle._merged)
        fixes = sum(i.numel() for m in handle._merged for i, _ in m.fixes)
        fix_bytes = sum(i.numel() * i.element_size() + v.numel() * v.element_size()
                        for m in handle._merged for i, v in m.fixes)
        factor_bytes = sum(t.numel() * t.element_size() for u in handle._updates.values()
                           for t in (u.down, u.up, u.diff, u.bias) if t is not None)
        _, t_unload, m_unload = timed(lambda: lora.unload_lora(model))
        exact = fingerprints(model) == before
        _, t_read, m_read = timed(lambda: lora.read_lora(path, model))
        live, t_live, m_live = timed(lambda: lora.load_lora(model, path, live=True))
        linears = [model.get_submodule(name) for name in live.modules]
        _, t_weights, m_weights = timed(lambda: [m.weight.shape for m in linears])  # what one forward pays
        lora.unload_lora(model)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    rows = [("merge (load_lora)", t_merge, m_merge), ("unload (exact restore)", t_unload, m_unload),
            ("read + check the file alone", t_read, m_read), ("live: load_lora(live=True)", t_live, m_live),
            ("live: every live weight once", t_weights, m_weights)]
    print(f"{'step':32s} {'seconds':>9s} {'peak RSS above start, MiB':>27s}")
    for name, seconds, mib in rows:
        print(f"{name:32s} {seconds:9.2f} {mib:27.1f}")
    print(f"RSS with the model loaded {rss_model:.0f} MiB; process peak {peak:.0f} MiB (the model {model_mib:.0f})")
    print(f"undo record: factors {factor_bytes / MIB:.1f} MiB (float32) + fixes {fix_bytes / MIB:.1f} MiB for "
          f"{fixes} of {touched} touched elements ({100 * fixes / max(1, touched):.2f} %)")
    print(f"merge throughput {touched / t_merge / 1e6:.0f} M elements/s; unload restores every bit: {exact}")
    if not exact:
        sys.exit(1)


if __name__ == "__main__":
    main()
