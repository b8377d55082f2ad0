"""The FramePack transformer's weight bytes in fp8 against bf16: counted from the real config, and measured as the
peak host memory (RSS) of loading a real-width checkpoint with a few blocks.

    python benchmarks/fp8_memory.py [--dual 2] [--single 4] [--dir FOLDER] [--count-only]

Counted: the 13B config built on the meta device, bytes of every tensor in bf16; in our fp8 layout (every Linear of
the blocks E4M3 + one bf16 scale per 128 inputs; framepack_native/fp8.py); and in musubi-tuner's `--fp8_scaled`
layout (float32 scales per 64 inputs, the modulation Linear layers left in bf16), for comparison.
Measured: a native folder of the real widths (3072 hidden, MLP 12288, text 4096, ...) with --dual / --single blocks,
random bf16 weights written tensor by tensor; each step in a fresh subprocess, peak RSS = ru_maxrss (the interpreter
with torch imported, printed alongside, included):
  load-bf16       FramePackTransformer.from_pretrained(bf16 folder, bf16, cpu)
  quantize-fp8    the same with quantize="fp8" (each block weight read as float32, quantised, the float freed)
  load-fp8        the folder that quantize-fp8 saved (save_pretrained), loaded as stored
"""
import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import work_dir  # noqa: E402


def state_bytes(model):
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def counted(config):
    """(bf16 bytes, our fp8 bytes, musubi layout bytes, parameters) of the transformer of `config`."""
    from framepack_native.fp8 import block_linears, quantize_blocks
    from framepack_native.models.transformer import FramePackTransformer
    with torch.device("meta"):
        model = FramePackTransformer(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    bf16 = state_bytes(model)
    musubi = bf16
    for name, linear in block_linears(model):
        if not name.endswith("mod.lin") and not name.endswith("modulation.lin"):
            out_f, in_f = linear.weight.shape
            musubi += -linear.weight.numel() + out_f * (in_f // 64 if in_f % 64 == 0 else 1) * 4
    quantize_blocks(model)
    return bf16, state_bytes(model), musubi, params


def real_width(dual, single):
    from framepack_native.models.transformer import FramePackTransformerConfig
    return FramePackTransformerConfig(num_layers=dual, num_single_layers=single)


def write_bf16(folder, config):
    """A native bf16 folder of `config`, random weights (std 0.02) written tensor by tensor."""
    from framepack_native.models.loading import config_json
    from framepack_native.models.transformer import FramePackTransformer
    from framepack_native.weights import save_sharded
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        model = FramePackTransformer(config)
    specs = [(k, tuple(v.shape), torch.bfloat16) for k, v in model.state_dict().items()]
    g = torch.Generator().manual_seed(0)
    shapes = {k: s for k, s, _ in specs}
    save_sharded(folder, specs, lambda k: (torch.randn(shapes[k], generator=g) * 0.02).to(torch.bfloat16))
    (folder / "config.json").write_text(json.dumps(config_json(model)))


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(stage, root):
    from framepack_native.models.loading import save_pretrained
    from framepack_native.models.transformer import FramePackTransformer
    base = peak_mib()
    t0 = time.perf_counter()
    if stage == "load-bf16":
        model = FramePackTransformer.from_pretrained(root / "bf16", dtype=torch.bfloat16, device="cpu")
    elif stage == "quantize-fp8":
        model = FramePackTransformer.from_pretrained(root / "bf16", dtype=torch.bfloat16, device="cpu",
                                                     quantize="fp8")
    else:
        model = FramePackTransformer.from_pretrained(root / "fp8", dtype=torch.bfloat16, device="cpu")
    seconds = time.perf_counter() - t0
    peak = peak_mib()
    if stage == "quantize-fp8":
        save_pretrained(model, root / "fp8")
    print(json.dumps({"stage": stage, "baseline_mib": base, "peak_mib": peak, "seconds": seconds,
                      "model_mib": state_bytes(model) / 1024**2}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dual", type=int, default=2, help="dual-stream blocks of the measured checkpoint")
    parser.add_argument("--single", type=int, default=4, help="single-stream blocks of the measured checkpoint")
    parser.add_argument("--dir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--count-only", action="store_true", help="only count the 13B config's bytes")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "source":
        return write_bf16(Path(args.dir) / "bf16", real_width(args.dual, args.single))
    if args.stage:
        return child(args.stage, Path(args.dir))
    from framepack_native.models.transformer import FramePackTransformerConfig
    bf16, fp8, musubi, params = counted(FramePackTransformerConfig())
    print(f"torch {torch.__version__}; counted, the 13B config ({params / 1e9:.2f} G parameters): bf16 "
          f"{bf16 / 1024**3:.2f} GiB, fp8 {fp8 / 1024**3:.2f} GiB = {fp8 / bf16:.3f}x bf16 (goal <= 0.53x: "
          f"{'PASS' if fp8 / bf16 <= 0.53 else 'FAIL'}); musubi's --fp8_scaled layout {musubi / 1024**3:.2f} GiB "
          f"= {musubi / bf16:.3f}x")
    if args.count_only:
        return
    with work_dir(args.dir, "fp_fp8mem_") as root:
        measure(root, args)


def measure(root, args):
    config = real_width(args.dual, args.single)
    bf16, fp8, _, params = counted(config)
    print(f"measured checkpoint: real widths, {args.dual} dual + {args.single} single blocks, "
          f"{params / 1e9:.2f} G parameters: bf16 {bf16 / 1024**2:.0f} MiB, fp8 {fp8 / 1024**2:.0f} MiB counted")
    doc = root / "bf16" / "config.json"
    if not doc.is_file() or json.loads(doc.read_text())["config"] != dataclasses.asdict(config):
        subprocess.run([sys.executable, __file__, "--dir", str(root), "--dual", str(args.dual), "--single",
                        str(args.single), "--stage", "source"], check=True)  # a child: its RSS stays its own
    results = {}
    for stage in ("load-bf16", "quantize-fp8", "load-fp8"):
        out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--stage", stage],
                             capture_output=True, text=True, check=True)
        results[stage] = r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{stage:13s} peak RSS {r['peak_mib']:7.0f} MiB (interpreter+imports {r['baseline_mib']:.0f}; "
              f"above it {r['peak_mib'] - r['baseline_mib']:.0f}) for {r['model_mib']:.0f} MiB of weights, "
              f"{r['seconds']:.1f} s")
    above = {k: r["peak_mib"] - r["baseline_mib"] for k, r in results.items()}
    print(f"peak above the interpreter, fp8 / bf16: quantising at load {above['quantize-fp8'] / above['load-bf16']:.3f}x,"
          f" fp8 folder {above['load-fp8'] / above['load-bf16']:.3f}x")


if __name__ == "__main__":
    main()
