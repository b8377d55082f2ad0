"""What checking manifest.json's SHA-256 at load costs: hashlib alone vs loading the same bytes, unchecked and checked.

    python benchmarks/checksum.py [--gib 3] [--runs 3] [--dir FOLDER] [--config real|tiny]

A real-width FramePack transformer (hidden 3072, MLP 12288, the real block shapes) with the fewest blocks that make
--gib GiB of bf16 (`--config tiny`: the tiny config's widths, for a test), written as a converted folder (component
+ manifest.json). Measured in this process, alternating,
the median of --runs, each warm (the file in the page cache) and cold (its pages dropped first with
posix_fadvise(DONTNEED), so the disk is read):
  sha256        framepack_native.files.sha256 of the file: a separate pass, as weights_convert --verify does
  load          FramePackTransformer.from_pretrained(bf16, cpu) with no manifest beside it: nothing checked
  load+check    the same with the manifest: every window hashed as it is copied, on a second thread
The added seconds for the 13B transformer (23.98 GiB of bf16) are scaled from the measured throughputs.
"""
import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import work_dir  # noqa: E402

REAL_GIB = 23.98  # the 13B FramePack transformer's bf16 weights (benchmarks/RESULTS.md, real size)


def build(root, gib, widths="real"):
    """root/transformer (config.json + model.safetensors) and root/manifest.json, random bf16 weights."""
    from framepack_native.files import sha256
    from framepack_native.models import FramePackTransformer
    from framepack_native.models.loading import FORMAT_VERSION, MANIFEST, config_json
    from framepack_native.models.transformer import FramePackTransformerConfig
    from framepack_native.weights import save_sharded

    base = FramePackTransformerConfig() if widths == "real" else FramePackTransformerConfig.tiny()

    def config(dual, single):
        return dataclasses.replace(base, num_layers=dual, num_single_layers=single, num_refiner_layers=1)

    def size(c):
        with torch.device("meta"):
            return sum(p.numel() * 2 for p in FramePackTransformer(c).state_dict().values()), FramePackTransformer(c)
    blocks = 1
    while size(config(blocks, blocks))[0] < gib * 1024**3 and blocks < 1024:
        blocks += 1
    nbytes, model = size(config(blocks, blocks))
    folder = root / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    specs = [(k, tuple(v.shape), torch.bfloat16) for k, v in state.items()]
    g = torch.Generator().manual_seed(0)
    save_sharded(folder, specs, lambda name: torch.empty(state[name].shape, dtype=torch.bfloat16).uniform_(
        -0.02, 0.02, generator=g), max_shard_bytes=100 * 1024**3)
    (folder / "config.json").write_text(json.dumps(config_json(model), indent=2))
    entry = {"class": "FramePackTransformer", "path": "transformer", "dtype": "bf16",
             "files": {f.name: sha256(f) for f in sorted(folder.iterdir())}}
    manifest = {"format": "framepack_native", "format_version": FORMAT_VERSION, "components": {"transformer": entry},
                "aux": {}, "sampling_type": "inverted_anti_drifting"}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder, blocks, nbytes


def evict(path):
    """Drop the file's pages from the page cache (clean pages only: written back first)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gib", type=float, default=3.0, help="size of the bf16 checkpoint to make")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="keep the checkpoint here (default: a temporary folder, removed)")
    parser.add_argument("--config", choices=("real", "tiny"), default="real", help="the transformer's widths")
    args = parser.parse_args()

    import framepack_native.weights as weights
    from framepack_native.files import sha256
    from framepack_native.models import FramePackTransformer
    from framepack_native.models.loading import MANIFEST

    with work_dir(args.dir, "fp_checksum_") as root:
        t0 = time.perf_counter()
        folder, blocks, nbytes = build(root, args.gib, args.config)
        weights_file = folder / "model.safetensors"
        size = weights_file.stat().st_size
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"python {platform.python_version()}; FramePackTransformer {args.config} widths, {blocks} dual + "
              f"{blocks} single blocks, bf16, {size / 1024**3:.2f} GiB in one file (written in "
              f"{time.perf_counter() - t0:.0f} s)")
        fallbacks = []
        matches = weights._Digest.matches

        def counted(self):
            fallbacks.append(self.pos is None)  # None: reads came out of file order, the file was hashed again
            return matches(self)
        weights._Digest.matches = counted
        aside = root / (MANIFEST + ".aside")

        def load(checked):
            if checked != (root / MANIFEST).is_file():
                (aside if checked else root / MANIFEST).rename(root / MANIFEST if checked else aside)
            FramePackTransformer.from_pretrained(folder, dtype=torch.bfloat16, device="cpu")

        fns = {"sha256": lambda: sha256(weights_file), "load": lambda: load(False), "load+check": lambda: load(True)}
        results = {}
        for cache in ("warm", "cold"):
            samples = {name: [] for name in fns}
            for name, fn in fns.items():  # warm-up (and the page cache filled)
                fn()
            for _ in range(args.runs):
                for name, fn in fns.items():
                    if cache == "cold":
                        evict(weights_file)
                    start = time.perf_counter()
                    fn()
                    samples[name].append(time.perf_counter() - start)
            results[cache] = {name: statistics.median(t) for name, t in samples.items()}
        assert fallbacks and not any(fallbacks), "a load read its file out of order"
        for cache, r in results.items():
            print(f"{cache}: " + ", ".join(f"{name} {t:.2f} s ({size / t / 1e9:.2f} GB/s)" for name, t in r.items()))
            added = r["load+check"] - r["load"]
            print(f"  {cache}: checking adds {added:+.2f} s to this load ({added / r['load'] * 100:+.0f}%); "
                  f"scaled to the 13B transformer's {REAL_GIB} GiB: {added * REAL_GIB * 1024**3 / size:+.1f} s "
                  f"(a separate pass would add {r['sha256'] * REAL_GIB * 1024**3 / size:.1f} s)")
        print(f"reads in file order: all {len(fallbacks)} checked loads hashed as they read, no second pass")
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
