"""Long videos in constant device memory: for each length, the peak device memory, the host memory and the time of
every section (the section engine, issue 14). The demo model (random weights) unless --model is given.

    python benchmarks/long_video.py                                  # CPU, demo model, 5 / 30 / 60 / 120 s
    python benchmarks/long_video.py --model DIR --device cuda --offload --height 640 --width 640
Device memory: torch.cuda.max_memory_allocated on CUDA, the resident set on the CPU (where host and device are one).
Host memory: the resident set at each section, against the bytes of the uint8 frames kept so far.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import device_name  # noqa: E402

MIB = 2**20


def run(pipe, image, seconds, args, device):
    """One generation; returns per-section rows (seconds, RSS MiB, device peak MiB, frame bytes MiB)."""
    rows, last = [], [time.perf_counter()]
    proc = psutil.Process()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def on_event(e):
        if e["kind"] != "section":
            return
        now = time.perf_counter()
        peak = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None
        frames = e["frames_so_far"] * args.height * args.width * 3 / MIB
        rows.append((now - last[0], proc.memory_info().rss / MIB, peak, frames))
        last[0] = now

    pipe(image, "waves roll toward the shore", seconds=seconds, height=args.height, width=args.width,
         latent_window_size=args.window, num_inference_steps=args.steps, output_type="uint8",
         generator=torch.Generator().manual_seed(0), callback=on_event)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a converted folder (default: the demo model, random weights)")
    parser.add_argument("--seconds", type=float, nargs="+", default=(5, 30, 60, 120))
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--offload", action="store_true")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.model:
        from framepack_native import FramePackPipeline
        pipe = FramePackPipeline.from_pretrained(args.model, device=device, offload=args.offload)
    else:
        from framepack_native.demo import demo_pipeline
        pipe = demo_pipeline(device=args.device)
    from framepack_native.demo import demo_image
    image = demo_image()
    print(f"device {device_name(device)}, torch {torch.__version__}, {args.height}x{args.width}, window {args.window}, "
          f"{args.steps} steps, official preset, output uint8, {'model ' + args.model if args.model else 'demo model'}")
    print("seconds  sections  frames_MiB  rss_first_MiB  rss_last_MiB  rss_growth_MiB  device_peak_MiB  "
          "s/section_2  s/section_last  last/2nd")
    for seconds in args.seconds:
        rows = run(pipe, image, seconds, args, device)
        times = [r[0] for r in rows]
        second = times[1] if len(times) > 1 else times[0]
        peak = max(r[2] for r in rows) if rows[0][2] is not None else max(r[1] for r in rows)
        print(f"{seconds:7g}  {len(rows):8d}  {rows[-1][3]:10.1f}  {rows[0][1]:13.1f}  {rows[-1][1]:12.1f}  "
              f"{rows[-1][1] - rows[0][1]:14.1f}  {peak:15.1f}  {second:11.3f}  {times[-1]:14.3f}  "
              f"{times[-1] / second:8.2f}")
        sys.stdout.flush()
        if len(times) > 2:
            print(f"         section times: median {statistics.median(times[1:]):.3f} s, min {min(times[1:]):.3f}, "
                  f"max {max(times[1:]):.3f}")


if __name__ == "__main__":
    main()
