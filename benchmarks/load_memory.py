"""Peak host memory (RSS) of converting and loading a sharded float32 checkpoint, ours vs the usual way.

    python benchmarks/load_memory.py [--gib 2.0] [--dir FOLDER]

Each measured step runs in a fresh subprocess; its peak RSS is ru_maxrss, minus nothing (the baseline
of an interpreter with torch imported is printed alongside). Steps:
  convert-ours   python -m weights_convert-equivalent: fp32 shards -> bf16 native folder (streaming)
  load-ours      load_pretrained(bf16, cpu) of the converted folder (meta build + tensor-by-tensor)
  load-naive     safetensors.torch.load_file of each fp32 shard, cast to bf16, model.load_state_dict
Bounds from issue 2: convert < 2x largest tensor + 300 MB; load < 1.1x model size + 300 MB.
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
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import work_dir  # noqa: E402

ROWS, COLS = 4096, 8192  # one float32 tensor: 128 MiB, in the range of the transformer's largest


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    layers: int = 16


class BenchModel(nn.Module):
    config_class = BenchConfig

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(nn.Linear(COLS, ROWS) for _ in range(config.layers))


def bench_converter():
    from weights_convert import Converter, Rule
    return Converter(component="bench", native_class="__main__:BenchModel", source_classes=("BenchSource",),
                     config=lambda c: {"layers": c["num_layers"]},
                     rules=lambda c: [Rule("layers.{}.{*}", "blocks.{}.proj.{*}")])


def make_source(folder, layers):
    """A diffusers-style sharded fp32 checkpoint written tensor by tensor (never whole in memory)."""
    from framepack_native.weights import save_sharded
    folder.mkdir(parents=True, exist_ok=True)
    specs = []
    for i in range(layers):
        specs += [(f"blocks.{i}.proj.weight", (ROWS, COLS), torch.float32), (f"blocks.{i}.proj.bias", (ROWS,),
                                                                              torch.float32)]
    g = torch.Generator().manual_seed(0)
    save_sharded(folder, specs, lambda name: torch.randn(dict((s[0], s[1]) for s in specs)[name], generator=g),
                 max_shard_bytes=600 * 1024**2, prefix="diffusion_pytorch_model")
    (folder / "config.json").write_text(json.dumps({"_class_name": "BenchSource", "num_layers": layers}))


def layers_for(gib):
    """Layers of one ROWS x COLS float32 weight (+ bias) that make a source of about `gib` GiB."""
    return max(1, round(gib * 1024**3 / (ROWS * COLS * 4)))


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(stage, src, dst):
    import safetensors.torch

    import weights_convert.registry
    from framepack_native.models.loading import load_pretrained
    from weights_convert import convert
    weights_convert.registry.converters = lambda: (bench_converter(),)
    base = peak_mib()
    t0 = time.perf_counter()
    if stage == "convert-ours":
        convert(src, dst, dtype=torch.bfloat16, overwrite=True)
    elif stage == "load-ours":
        model = load_pretrained(BenchModel, dst, dtype=torch.bfloat16, device="cpu")
        assert model.layers[0].weight.dtype == torch.bfloat16
    elif stage == "load-naive":
        layers = json.loads((src / "config.json").read_text())["num_layers"]
        model = BenchModel(BenchConfig(layers)).to(torch.bfloat16)
        for shard in sorted(src.glob("*.safetensors")):
            part = safetensors.torch.load_file(shard)
            part = {k.replace("blocks.", "layers.").replace(".proj", ""): v.to(torch.bfloat16) for k, v in part.items()}
            model.load_state_dict(part, strict=False)
            del part
    print(json.dumps({"stage": stage, "baseline_mib": base, "peak_mib": peak_mib(),
                      "seconds": time.perf_counter() - t0}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=2.0, help="size of the fp32 source checkpoint")
    parser.add_argument("--dir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "source":
        return make_source(Path(args.dir) / "src", layers_for(args.gib))
    if args.stage:
        return child(args.stage, Path(args.dir) / "src", Path(args.dir) / "dst")
    with work_dir(args.dir, "fp_loadmem_") as root:
        measure(root, args.gib)


def measure(root, gib):
    src = root / "src"
    layers = layers_for(gib)
    if not (src / "config.json").is_file() or json.loads((src / "config.json").read_text())["num_layers"] != layers:
        # in a child too: a child started from a process inherits its high-water RSS into ru_maxrss
        subprocess.run([sys.executable, __file__, "--dir", str(root), "--gib", str(gib), "--stage", "source"],
                       check=True)
    src_bytes = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    largest = ROWS * COLS * 4 / 1024**2
    model_mib = layers * (ROWS * COLS + ROWS) * 2 / 1024**2
    print(f"torch {torch.__version__}, CPU; source {src_bytes / 1024**3:.2f} GiB fp32 in "
          f"{len(list(src.glob('*.safetensors')))} shards, {2 * layers} tensors, largest {largest:.0f} MiB; "
          f"bf16 model {model_mib:.0f} MiB")
    results = {}
    for stage in ("convert-ours", "load-ours", "load-naive"):
        out = subprocess.run([sys.executable, __file__, "--dir", str(root), "--stage", stage],
                             capture_output=True, text=True, check=True)
        results[stage] = json.loads(out.stdout.strip().splitlines()[-1])
    conv_bound = 2 * largest + 300
    load_bound = 1.1 * model_mib + 300
    for stage, r in results.items():
        bound = conv_bound if stage.startswith("convert") else load_bound
        verdict = "" if stage == "load-naive" else f" bound {bound:.0f} MiB: {'PASS' if r['peak_mib'] < bound else 'FAIL'}"
        print(f"{stage:13s} peak RSS {r['peak_mib']:7.0f} MiB (interpreter+imports {r['baseline_mib']:.0f}) "
              f"{r['seconds']:6.1f} s{verdict}")
    print(f"convert throughput {src_bytes / 1024**3 / results['convert-ours']['seconds']:.2f} GiB/s (fp32 read)")


if __name__ == "__main__":
    main()
