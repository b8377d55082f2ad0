"""What the benchmark scripts share: dtype names, the device's name, timing (alternating medians, CUDA events,
CUDA-graph replays), the argument set of the kernel benchmarks and their scratch folders. The error measure is the
tests' rel_l2."""
import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tests.reference.common import rel_l2  # noqa: F401 - re-exported: one relative error for tests and benchmarks

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@contextlib.contextmanager
def work_dir(path=None, prefix="fp_bench_"):
    """The folder a benchmark writes its checkpoints to: `path` as given (kept, so a second run reuses what it
    can), or with None a temporary folder removed at the end, also on an error or Ctrl-C (GBs each)."""
    if path is not None:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def timer(device):
    """fn, inner -> seconds per call (CUDA events on a GPU, perf_counter on the CPU)."""
    def run(fn, inner):
        if device.type != "cuda":
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - start) / inner
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end) / 1e3 / inner

    return run


def median_times(fns, device, runs, inner, graph=False):
    """{name: median seconds per call}; every fn warmed up first (autotuning, compilation), then alternated.

    graph=True (CUDA): each fn's `inner` calls are captured once in a CUDA graph and the replays are timed, so
    the figure is GPU time alone, without the host's launch overhead (METHOD: many small launches).
    """
    run = timer(device)
    for fn in fns.values():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if graph and device.type == "cuda":
        graphs = {}
        for name, fn in fns.items():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fn()  # a warm-up on a side stream, as torch.cuda.graphs asks before capture
            torch.cuda.current_stream().wait_stream(stream)
            graphs[name] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graphs[name]):
                for _ in range(inner):
                    fn()
        fns, inner_calls = {name: g.replay for name, g in graphs.items()}, inner
        for replay in fns.values():  # one untimed replay each: first-launch costs stay out of the samples
            replay()
        torch.cuda.synchronize()
        samples = {name: [] for name in fns}
        for _ in range(runs):
            for name, fn in fns.items():
                samples[name].append(run(fn, 1) / inner_calls)
        return {name: statistics.median(t) for name, t in samples.items()}
    samples = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            samples[name].append(run(fn, inner))
    return {name: statistics.median(t) for name, t in samples.items()}


def device_name(device):
    """'NVIDIA H200' for a CUDA device, 'CPU, 2 threads' otherwise."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def kernel_parser(description, inner):
    """The arguments benchmarks/attention.py and benchmarks/rope.py share: device, dtype, shapes, repetitions."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 30000])
    p.add_argument("--heads", type=int, default=24)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--inner", type=int, default=inner)
    return p


def print_header(args):
    print(f"device {device_name(args.device)} | torch {torch.__version__} | dtype {args.dtype} | "
          f"median of {args.runs} x {args.inner}")
