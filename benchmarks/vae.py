"""VAE decode: time and peak memory, ours (HunyuanVideoVAE) vs diffusers' AutoencoderKLHunyuanVideo, same weights,
same latents, same tiling settings, side by side.

    python benchmarks/vae.py                                   # CPU: real config, 33 frames of 64x64, fp32
    python benchmarks/vae.py --dtype bf16
    python benchmarks/vae.py --device cuda --dtype bf16 --height 640 --width 640      # the GPU target
    python benchmarks/vae.py --device cuda --dtype bf16 --height 640 --width 640 --tiling

Time: both models in this process, alternating, median of --runs after one warm-up each; wall clock, and
on the CPU also the process CPU time (less sensitive to other jobs on a shared machine).
Peak memory: CUDA: max_memory_allocated during one decode minus the allocation before it (weights excluded).
CPU: each model decodes once in a fresh subprocess that loads only its own model; the peak is VmHWM after the
decode minus VmRSS before it (the high-water mark is reset through /proc/self/clear_refs first). The children
run with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors leave the resident set (glibc would otherwise keep
freed heap memory, and RSS would measure the allocator's history rather than the live tensors).
Random weights (diffusers' init, seed 0): speed and memory do not depend on the values.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.reference.vae import VAE_REAL, VAE_TINY  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CONFIGS = {"real": VAE_REAL, "tiny": VAE_TINY}


def latents(args, config):
    """The latents both models decode: (1, C, (frames - 1) // 4 + 1, height / 8, width / 8), seed 1."""
    shape = (1, config["latent_channels"], (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    return torch.randn(shape, generator=torch.Generator().manual_seed(1))


def set_tiling(model, args):
    if args.tiling:
        model.enable_tiling()


def decode_ref(model, z):
    return model.decode(z).sample


def decode_ours(model, z):
    return model.decode(z)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def save_models(folder, args):
    """diffusers save_pretrained + weights_convert, so the subprocesses load the same weights."""
    import weights_convert
    from diffusers import AutoencoderKLHunyuanVideo
    torch.manual_seed(0)
    AutoencoderKLHunyuanVideo(**CONFIGS[args.config]).save_pretrained(folder / "ref")
    weights_convert.convert(folder / "ref", folder / "native")


def load(which, folder, dtype, device):
    if which == "ref":
        from diffusers import AutoencoderKLHunyuanVideo
        return AutoencoderKLHunyuanVideo.from_pretrained(folder / "ref", torch_dtype=dtype).to(device).eval()
    from framepack_native.models.vae import HunyuanVideoVAE
    return HunyuanVideoVAE.from_pretrained(folder / "native", dtype=dtype, device=device)


def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def cpu_peak_child(args):
    """Subprocess body: load one model, decode once, print the peak RSS growth in MiB as JSON."""
    folder, dtype = Path(args.folder), DTYPES[args.dtype]
    model = load(args.child, folder, dtype, "cpu")
    set_tiling(model, args)
    z = latents(args, CONFIGS[args.config]).to(dtype)
    fn = decode_ref if args.child == "ref" else decode_ours
    Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    with torch.no_grad():
        fn(model, z)
    print(json.dumps({"peak_mib": (status_kib("VmHWM") - before) / 1024}))


def cpu_peak(which, folder, args):
    cmd = [sys.executable, __file__, "--child", which, "--folder", str(folder), "--config", args.config,
           "--dtype", args.dtype, "--frames", str(args.frames), "--height", str(args.height),
           "--width", str(args.width), "--threads", str(args.threads)] + (["--tiling"] if args.tiling else [])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def cuda_peak(fn, model, z):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        fn(model, z)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--config", default="real", choices=sorted(CONFIGS))
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiling", action="store_true", help="enable_tiling() with diffusers' defaults on both")
    p.add_argument("--child", choices=["ref", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return cpu_peak_child(args)

    from tests.reference.common import rel_l2
    dtype, device = DTYPES[args.dtype], args.device
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        save_models(folder, args)
        ref, ours = load("ref", folder, dtype, device), load("ours", folder, dtype, device)
        for m in (ref, ours):
            set_tiling(m, args)
        z = latents(args, CONFIGS[args.config]).to(device=device, dtype=dtype)
        runs = {"diffusers": (decode_ref, ref), "ours": (decode_ours, ours)}
        times = {name: [] for name in runs}
        cpu = {name: [] for name in runs}
        with torch.no_grad():
            outs = {name: fn(m, z) for name, (fn, m) in runs.items()}  # warm-up
            for _ in range(args.runs):
                for name, (fn, m) in runs.items():
                    sync(device)
                    t, c = time.perf_counter(), time.process_time()
                    fn(m, z)
                    sync(device)
                    times[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - c)
        err = rel_l2(outs["ours"].float().cpu(), outs["diffusers"].float().cpu())
        del outs
        if device == "cuda":
            peaks = {name: cuda_peak(fn, m, z) for name, (fn, m) in runs.items()}
        else:
            del ref, ours
            peaks = {"diffusers": cpu_peak("ref", folder, args), "ours": cpu_peak("ours", folder, args)}

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {name}; torch {torch.__version__}; dtype {args.dtype}; config {args.config}")
    print(f"latents {tuple(z.shape)} -> video (1, 3, {(z.shape[2] - 1) * 4 + 1}, {args.height}, {args.width}); "
          f"tiling: {'enable_tiling() defaults' if args.tiling else 'off'} (frame-wise decoding on, as diffusers)")
    med = {n: statistics.median(times[n]) for n in runs}
    med_cpu = {n: statistics.median(cpu[n]) for n in runs}
    for n in runs:
        extra = f", CPU time {med_cpu[n]:8.3f} s" if device == "cpu" else ""
        print(f"{n:>9}: median {med[n]:8.3f} s over {args.runs} runs (min {min(times[n]):.3f}){extra}, "
              f"peak memory {peaks[n]:8.0f} MiB")
    extra = f" (CPU time {med_cpu['diffusers'] / med_cpu['ours']:.2f}x)" if device == "cpu" else ""
    print(f"speed-up (diffusers / ours): {med['diffusers'] / med['ours']:.2f}x{extra}; peak memory ours / diffusers: "
          f"{peaks['ours'] / peaks['diffusers']:.2f}; output rel. L2 ours vs diffusers: {err:.2e}")


if __name__ == "__main__":
    main()
