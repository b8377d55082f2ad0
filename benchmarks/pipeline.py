"""Seconds per section over one long video, ours vs diffusers' HunyuanVideoFramepackPipeline, same weights.

    python benchmarks/pipeline.py [--sections 8] [--steps 4] [--height 64 --width 96] [--window 9]

Both run the small random-weight reference pipeline of tests/reference/pipeline.py (ours on its conversion),
float32 on the CPU, sampler Euler, one after the other in this process. A section's time runs from the end of
its first step to the end of the next section's first step: its remaining steps, its VAE decode and one
step (the same work for every section but the first, whose decode is one window instead of two). FramePack's claim: the cost of a section does not grow with the video
(the last section within 10% of the second).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import work_dir  # noqa: E402
from framepack_native import FramePackPipeline  # noqa: E402
from tests.reference.pipeline import build_pipeline, load_pipeline  # noqa: E402
from weights_convert import convert  # noqa: E402


def section_times(stamps, steps):
    firsts = stamps[::steps]
    return [b - a for a, b in zip(firsts, firsts[1:])]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--window", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with work_dir(prefix="fp_bench_pipe_") as tmp:  # both pipelines are in memory once loaded
        build_pipeline(tmp / "ref")
        convert(tmp / "ref", tmp / "native", dtype=torch.float32)
        ref = load_pipeline(tmp / "ref")
        ours = FramePackPipeline.from_pretrained(tmp / "native", dtype=torch.float32, device="cpu")
    frames = args.sections * ((args.window - 1) * 4 + 1)
    image = PIL.Image.fromarray((np.random.RandomState(0).rand(96, 128, 3) * 255).astype(np.uint8))
    common = dict(height=args.height, width=args.width, num_frames=frames, latent_window_size=args.window,
                  num_inference_steps=args.steps, guidance_scale=6.0)
    results = {}
    for name in ("diffusers", "ours"):
        stamps = []
        if name == "diffusers":
            ref.set_progress_bar_config(disable=True)

            def on_step(pipe, i, t, kwargs):
                stamps.append(time.perf_counter())
                return {}

            ref(image=image, prompt="a train crossing a bridge", generator=torch.Generator().manual_seed(0),
                output_type="pt", callback_on_step_end=on_step, **common)
        else:
            ours(image, "a train crossing a bridge", preset="diffusers", generator=torch.Generator().manual_seed(0),
                 callback=lambda e: stamps.append(time.perf_counter()) if e["kind"] == "step" else None, **common)
        results[name] = section_times(stamps, args.steps)
    print(f"device CPU, torch {torch.__version__}, float32, {args.height}x{args.width}, window {args.window}, "
          f"{args.steps} steps, {args.sections} sections ({frames} frames), inverted anti-drifting, Euler")
    print("section  diffusers_s  ours_s  ratio")
    for k, (a, b) in enumerate(zip(results["diffusers"], results["ours"]), start=1):
        print(f"{k:7d}  {a:11.3f}  {b:6.3f}  {a / b:5.2f}")
    # section 1 decodes one window, every later section two: section 2 is the first like-for-like one
    for name, times in results.items():
        base = times[1] if len(times) > 1 else times[0]
        print(f"{name}: section 1 {times[0]:.3f} s, section 2 {base:.3f} s, last measured {times[-1]:.3f} s "
              f"({times[-1] / base - 1:+.1%} vs section 2), median {statistics.median(times):.3f} s")
    print(f"median ratio diffusers/ours: {statistics.median(results['diffusers']) / statistics.median(results['ours']):.2f}")


if __name__ == "__main__":
    main()
