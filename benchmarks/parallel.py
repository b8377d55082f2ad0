"""Sequence parallelism: measured compute and all_to_all time per transformer call on 1..N ranks (gloo on the CPU,
NCCL on GPUs), and a scaling model for 2 / 4 / 8 GPUs from a measured one-GPU forward.

    python benchmarks/parallel.py [--ranks 1 2 3 4] [--heads 24] [--head-dim 32] [--blocks 2 2] [--latent 16 16]
                                  [--runs 3] [--step 1.004] [--device cpu|cuda]

Measured: each rank count runs this script under torchrun (--standalone); every rank calls a FramePackTransformer
(random weights, float32 on the CPU, bf16 on CUDA) on one inverted section of --latent (height, width) latents
with 729 image-embedding and 64 text tokens; the time inside the collectives (all_to_all_single, all_gather,
broadcast; gloo and a synchronised NCCL are blocking) is summed per call, the rest is compute. Medians of --runs.
Model: T(P) = T1 * ((1 - r) / P + r) + bytes(P) / bandwidth, with T1 the one-GPU forward (--step: the H200 bf16
640 x 640 figure of benchmarks/RESULTS.md), r the share of FLOPs every rank repeats (the SigLIP + text tokens'
Linear layers: they are replicated), bytes(P) what one rank sends per forward (60 blocks x (4 all_to_all of
(L / P) x D + one text gather of Lc x D) x (P - 1) / P, bf16, plus the final gather); efficiency = T1 / (P T(P)).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REAL = dict(hidden=3072, blocks=60, image_tokens=18400, context_tokens=729 + 64)  # one 640 x 640 section
LINKS = {"NVLink 4 (H100 / H200 SXM), 450 GB/s a direction at 70 %": 450e9 * 0.7,
         "PCIe 5 x16, 64 GB/s a direction at 70 %": 64e9 * 0.7,
         "PCIe 4 x16, 32 GB/s a direction at 70 %": 32e9 * 0.7}


def flops_shares(hidden, mlp_ratio, image_tokens, context_tokens):
    """(share of a forward's FLOPs that every rank repeats, FLOPs per block) for one section."""
    tokens = image_tokens + context_tokens
    linear = 2 * tokens * (hidden * 3 * hidden + hidden * hidden + 2 * hidden * int(hidden * mlp_ratio))  # qkv,o,mlp
    attention = 4 * tokens * tokens * hidden  # q k^T and p v, every head
    replicated = linear * context_tokens / tokens  # the replicated tokens' projections and MLPs
    return replicated / (linear + attention), linear + attention


def bytes_per_rank(P, hidden, blocks, image_tokens, context_tokens):
    """bf16 bytes one rank sends in one forward (what crosses its link)."""
    if P == 1:
        return 0.0
    local = -(-image_tokens // P)
    per_block = (4 * local * hidden + context_tokens * hidden // P * (P - 1)) * 2 * (P - 1) / P
    return blocks * per_block + image_tokens * hidden * 2 * (P - 1) / P  # + the final gather of the image tokens


def scaling_model(step, mlp_ratio=4.0):
    r, _ = flops_shares(REAL["hidden"], mlp_ratio, REAL["image_tokens"], REAL["context_tokens"])
    print(f"\nscaling model: one-GPU forward T1 = {step:.3f} s (640 x 640: {REAL['image_tokens']} image + "
          f"{REAL['context_tokens']} SigLIP / text tokens, 60 blocks of 3072), replicated share r = {r:.4f}")
    print("| GPUs | compute s | bytes sent per rank | " + " | ".join(f"{name}: s / efficiency" for name in LINKS) + " |")
    for P in (2, 4, 8):
        compute = step * ((1 - r) / P + r)
        sent = bytes_per_rank(P, REAL["hidden"], REAL["blocks"], REAL["image_tokens"], REAL["context_tokens"])
        cells = []
        for bandwidth in LINKS.values():
            t = compute + sent / bandwidth
            cells.append(f"{t:.3f} / {step / (P * t):.2f}")
        print(f"| {P} | {compute:.3f} | {sent / 1e9:.2f} GB | " + " | ".join(cells) + " |")


def worker(args):
    import torch.distributed as dist

    from framepack_native import parallel
    from framepack_native.demo import _randomize_
    from framepack_native.models.transformer import FramePackTransformer, FramePackTransformerConfig
    from tests.reference.transformer import make_inputs
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    dh = args.head_dim
    axes = (dh // 4 // 2 * 2, 3 * dh // 8 // 2 * 2)
    config = FramePackTransformerConfig(num_attention_heads=args.heads, attention_head_dim=dh,
                                        num_layers=args.blocks[0], num_single_layers=args.blocks[1],
                                        num_refiner_layers=1, rope_axes_dim=(dh - 2 * axes[1], axes[1], axes[1]))
    model = _randomize_(FramePackTransformer(config), torch.Generator().manual_seed(0)).to(device, dtype).eval()
    sizes = dict(in_channels=16, text_embed_dim=config.text_embed_dim, pooled_projection_dim=768,
                 image_proj_dim=1152)
    inputs = make_inputs(sizes, text_lens=[64], frames=args.window, height=args.latent[0], width=args.latent[1],
                         image_tokens=729, seed=1)
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
    inputs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}
    if dist.get_world_size() > 1:
        model.enable_sequence_parallel()
    spent = [0.0]

    def timed(fn):
        def run(*a, **k):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*a, **k)
            if cuda:
                torch.cuda.synchronize()
            spent[0] += time.perf_counter() - t0
            return out
        return run

    for name in ("all_to_all_single", "all_gather", "broadcast"):  # as framepack_native.parallel calls them
        setattr(parallel.dist, name, timed(getattr(dist, name)))
    totals, comms = [], []
    with torch.no_grad():
        for i in range(args.runs + 1):
            spent[0] = 0.0
            dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(**inputs)
            if cuda:
                torch.cuda.synchronize()
            if i:  # the first call warms up
                totals.append(time.perf_counter() - t0)
                comms.append(spent[0])
    result = {"world": dist.get_world_size(), "total": statistics.median(totals), "comm": statistics.median(comms)}
    if dist.get_rank() == 0:
        print(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--head-dim", type=int, default=32, help="the real model: 128")
    parser.add_argument("--blocks", type=int, nargs=2, default=[2, 2], help="dual, single (the real model: 20 40)")
    parser.add_argument("--latent", type=int, nargs=2, default=[16, 16], help="latent height, width (640: 80 80)")
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--step", type=float, default=1.004, help="the one-GPU forward of the model, seconds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    print(f"torch {torch.__version__}, {args.device}; transformer {args.heads} heads x {args.head_dim}, blocks "
          f"{args.blocks[0]} + {args.blocks[1]}, latents {args.latent[0]} x {args.latent[1]} x {args.window} frames "
          f"+ history, 729 + 64 context tokens; medians of {args.runs}")
    print("| ranks | s per call | of it in collectives | compute | speed-up | efficiency |")
    one = None
    for P in args.ranks:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(P), __file__,
               "--worker", "--heads", str(args.heads), "--head-dim", str(args.head_dim), "--blocks",
               *map(str, args.blocks), "--latent", *map(str, args.latent), "--window", str(args.window), "--runs",
               str(args.runs), "--device", args.device]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if out.returncode:
            sys.exit(f"{P} ranks failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if P == 1:
            one = r["total"]
        speed = f"{one / r['total']:.2f}x" if one else "-"
        eff = f"{one / (P * r['total']):.2f}" if one else "-"
        print(f"| {P} | {r['total']:.3f} | {r['comm']:.3f} | {r['total'] - r['comm']:.3f} | {speed} | {eff} |")
    scaling_model(args.step)


if __name__ == "__main__":
    main()
