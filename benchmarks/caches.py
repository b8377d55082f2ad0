"""Block caches side by side: transformer evaluations and seconds per section for none / TeaCache / MagCache, and the
frames' PSNR against the exact run at the same seed (issue 16). The demo model (random weights) unless --model.

    python benchmarks/caches.py                                   # CPU, demo model, 64 x 96, 25 steps, 3 sections
    python benchmarks/caches.py --model DIR --device cuda --height 640 --width 640
Official preset (UniPC, distilled guidance 10, cfg 1: one transformer call per step). "evaluations" counts the steps
whose blocks ran (calls of the last single-stream block); a section's time runs from the previous section event to
its own (its steps and its VAE decode; the first also the encoders); "transformer" is the time inside the
transformer's forward. Each cache goes through the pipeline's cache= option.
"""
import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import device_name  # noqa: E402
from framepack_native.caches import MagCacheConfig, TeaCacheConfig  # noqa: E402

CACHES = {"none": None, "teacache 0.15": TeaCacheConfig(0.15), "magcache 0.1/K2/0.25": MagCacheConfig(),
          "magcache 0.15/K4/0.2": MagCacheConfig(0.15, 4, 0.2)}


def psnr(a, b):
    """Peak signal-to-noise ratio of frames in [0, 1], dB (inf when equal)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def generate(pipe, image, config, args):
    """frames (B, F, 3, H, W), per-section (seconds, transformer seconds, evaluations, calls)."""
    transformer, forward = pipe.transformer, pipe.transformer.forward
    stats = {"calls": 0, "evaluations": 0, "seconds": 0.0}
    state = {}

    def timed(*a, **k):
        state.setdefault("call", (a, k))  # the section's first call, for per_call()
        stats["calls"] += 1
        start = time.perf_counter()
        out = forward(*a, **k)
        stats["seconds"] += time.perf_counter() - start
        return out

    hook = transformer.single_blocks[-1].register_forward_pre_hook(
        lambda m, a: stats.__setitem__("evaluations", stats["evaluations"] + 1))
    rows, last = [], [time.perf_counter()]

    def on_event(e):
        if e["kind"] == "section":
            now = time.perf_counter()
            rows.append((now - last[0], stats["seconds"], stats["evaluations"], stats["calls"]))
            stats.update(calls=0, evaluations=0, seconds=0.0)
            last[0] = now

    transformer.forward = timed
    try:
        frames = pipe(image, "waves roll toward the shore", height=args.height, width=args.width,
                      seconds=args.seconds, num_inference_steps=args.steps, callback=on_event,
                      generator=torch.Generator().manual_seed(args.seed), cache=config)
    finally:
        del transformer.forward
        hook.remove()
    return frames, rows, state["call"]


def per_call(transformer, call, repeats=20):
    """(seconds of a call whose blocks run, of one whose blocks are skipped): the minimum of `repeats` calls each,
    less sensitive to other load on the host than a whole section's time."""
    from framepack_native.magcache import MagCache
    a, k = call
    k = {n: v for n, v in k.items() if n not in ("cache", "teacache")}
    cache = MagCache((False,) + (True,) * repeats)
    with torch.no_grad():
        transformer(*a, **k, cache=cache)  # the computed step the skips reuse
        times = {}
        for name, extra in (("computed", {}), ("skipped", {"cache": cache})):
            best = math.inf
            for _ in range(repeats):
                start = time.perf_counter()
                transformer(*a, **k, **extra)
                best = min(best, time.perf_counter() - start)
            times[name] = best
    return times["computed"], times["skipped"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a converted folder (default: the demo pipeline)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--seconds", type=float, default=4.0, help="official length: 4 s = 3 sections of window 9")
    p.add_argument("--seed", type=int, default=31337)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    from framepack_native.demo import demo_image, demo_pipeline
    if args.model is None:
        pipe = demo_pipeline(device=device)
    else:
        from framepack_native import FramePackPipeline
        pipe = FramePackPipeline.from_pretrained(args.model, dtype=dtype, device=device)
    image = demo_image()
    generate(pipe, image, None, argparse.Namespace(**{**vars(args), "seconds": 1.0, "steps": 2}))  # warm-up
    frames, times, counts = {}, {name: [] for name in CACHES}, {}
    for _ in range(args.repeats):  # the caches alternate, so a load change on a shared host hits all of them
        for name, config in CACHES.items():
            frames[name], rows, call = generate(pipe, image, config, args)
            times[name] += rows[1:] or rows  # section 1 also runs the encoders
            counts[name] = [(r[2], r[3]) for r in rows]  # the same every repeat: the frames are
    print(f"device {device_name(device)}, torch {torch.__version__}, {args.dtype}, "
          f"{'demo model' if args.model is None else args.model}, {args.height} x {args.width}, window 9, "
          f"{args.steps} steps, {len(counts['none'])} sections, {pipe.sampling_type}, official preset (UniPC, "
          f"cfg 1), seed {args.seed}, {args.repeats} repeats")
    t_run, t_skip = per_call(pipe.transformer, call)
    print(f"one transformer call (min of 20): blocks run {t_run * 1e3:.2f} ms, blocks skipped {t_skip * 1e3:.2f} ms")
    print("| cache | evaluations / section | skipped | s / section, median (min) | transformer s / section, median "
          "(min) | transformer x vs none (medians) | from the per-call minima: s / section, x vs none | PSNR vs "
          "exact, dB |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(r[1] for r in times["none"])
    model_base = args.steps * t_run
    for name, rows in times.items():
        evals = "/".join(str(e) for e in sorted({e for e, _ in counts[name]}))
        calls, skipped = sum(c for _, c in counts[name]), sum(c - e for e, c in counts[name])
        sec, tr = [r[0] for r in rows], [r[1] for r in rows]
        model = ((calls - skipped) * t_run + skipped * t_skip) / len(counts[name])
        print(f"| {name} | {evals} of {counts[name][0][1]} | {skipped} of {calls} | {statistics.median(sec):.3f} "
              f"({min(sec):.3f}) | {statistics.median(tr):.3f} ({min(tr):.3f}) | {base / statistics.median(tr):.2f} | "
              f"{model:.3f}, {model_base / model:.2f} | {psnr(frames[name], frames['none']):.2f} |")


if __name__ == "__main__":
    main()
