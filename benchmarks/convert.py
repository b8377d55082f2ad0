"""Peak host memory and throughput of `python -m weights_convert` on a sharded real-width FramePack transformer.

    python benchmarks/convert.py [--dual 2 --single 4] [--dir FOLDER]

The source is diffusers' HunyuanVideoFramepackTransformer3DModel layout at the real widths (24 heads x 128,
text 4096, ...) with fewer blocks, float32, sharded at 1 GB with its index, written tensor by tensor with
random values (never whole in memory), in a subprocess. The conversion runs as another; its peak RSS is its
ru_maxrss (os.wait4).
Bound (issue 8): peak RSS < 2 x the largest tensor + 300 MB. Source and result (~9 GB at the defaults) go to
a temporary folder removed at the end, or to --dir, kept and its source reused by the next run.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import work_dir  # noqa: E402
from framepack_native.weights import open_checkpoint, save_sharded  # noqa: E402


def make_source(folder, dual, single):
    from diffusers import HunyuanVideoFramepackTransformer3DModel
    config = dict(num_layers=dual, num_single_layers=single, has_image_proj=True, has_clean_x_embedder=True,
                  image_proj_dim=1152)
    with torch.device("meta"):
        model = HunyuanVideoFramepackTransformer3DModel(**config)
    specs = [(k, tuple(v.shape), torch.float32) for k, v in model.state_dict().items()]
    g = torch.Generator().manual_seed(0)
    shapes = {k: s for k, s, _ in specs}
    folder.mkdir(parents=True, exist_ok=True)
    save_sharded(folder, specs, lambda k: torch.randn(shapes[k], generator=g) * 0.02, max_shard_bytes=1024**3,
                 prefix="diffusion_pytorch_model")
    cfg = {"_class_name": "HunyuanVideoFramepackTransformer3DModel", **{k: v for k, v in model.config.items()
                                                                        if not k.startswith("_")}}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dual", type=int, default=2)
    parser.add_argument("--single", type=int, default=4)
    parser.add_argument("--dir", help="keep the files here (default: a temporary folder)")
    parser.add_argument("--make-source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_source:
        return make_source(Path(args.make_source), args.dual, args.single)
    with work_dir(args.dir, "fp_convert_bench_") as root:
        measure(root, args.dual, args.single)


def measure(root, dual, single):
    src = root / f"src_{dual}_{single}"
    if not (src / "config.json").is_file():
        # in its own process: a child forked from this one would start with this one's pages, and ru_maxrss with it
        subprocess.run([sys.executable, __file__, "--make-source", str(src), "--dual", str(dual),
                        "--single", str(single)], check=True)
    ckpt = open_checkpoint(src)
    total = sum(ckpt.nbytes(k) for k in ckpt.keys())
    largest_name = max(ckpt.keys(), key=ckpt.nbytes)
    largest = ckpt.nbytes(largest_name)
    dst = root / "dst"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "weights_convert", str(src), str(dst), "--dtype", "bf16",
                             "--overwrite"], stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    proc.stderr.close()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak (RUSAGE_CHILDREN is the max over all of them)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(stderr)
    peak = usage.ru_maxrss * 1024
    out = open_checkpoint(dst)
    out_largest = max(out.nbytes(k) for k in out.keys())
    bound = 2 * largest + 300 * 1024**2
    mib = 1024**2
    print(f"torch {torch.__version__}, CPU; source {total / 1024**3:.2f} GiB fp32 in {len(ckpt.files)} shards, "
          f"{len(ckpt)} tensors; largest source tensor {largest_name} {largest / mib:.0f} MiB; "
          f"largest native (bf16) tensor {out_largest / mib:.0f} MiB")
    print(f"convert fp32 -> bf16: {seconds:.1f} s, {total / 1024**3 / seconds:.2f} GiB/s read, "
          f"peak RSS {peak / mib:.0f} MiB, bound 2 x {largest / mib:.0f} + 300 = {bound / mib:.0f} MiB: "
          f"{'PASS' if peak < bound else 'FAIL'}")
    print(f"the converted model is {math.ceil(total / 2 / out_largest)} x its largest tensor; peak RSS includes the "
          f"converter process's interpreter, torch and the model code")


if __name__ == "__main__":
    main()
